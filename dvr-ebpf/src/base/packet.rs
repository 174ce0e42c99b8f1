//! All raw packet access (layer: base): header layouts, protocol numbers and bounds-checked
//! pointers into the linear packet data. The layouts are network-types' (Ethernet, ARP,
//! IPv4; TCP, UDP and ICMP field offsets), with one exception: ICMP is bounds-checked on
//! its 4 common bytes only (see [`IcmpHdr`]). No Rust enum is ever read from packet memory:
//! protocol fields are compared as raw integers. Maps: none. Verdicts: drop_malformed.
use core::mem::offset_of;

use aya_ebpf::programs::TcContext;
use dvr_common::{Mac, stats::Stat};
pub use network_types::{arp::ArpHdr, ip::Ipv4Hdr};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::base::verdict::Verdict;

pub const ETH_LEN: usize = EthHdr::LEN;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const ARP_HTYPE_ETHERNET: u16 = 1;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// IPv4 header fields, as offsets from the start of the frame.
pub const IP_CSUM_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, check);
pub const IP_SADDR_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, src_addr);
pub const IP_DADDR_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, dst_addr);
/// Minimum IPv4 header length (no options).
pub const IP_HDR_LEN: usize = Ipv4Hdr::LEN;
/// More-fragments flag and fragment offset bits of the IPv4 `frags` word.
pub const IP_MF_OFFSET: u16 = 0x3fff;
/// Fragment offset bits of the IPv4 `frags` word.
pub const IP_OFFSET: u16 = 0x1fff;

/// L4 fields, as offsets from the start of their header.
pub const TCP_CSUM_OFF: usize = offset_of!(TcpHdr, check);
/// The flags byte: the second byte of the data offset / flags word.
pub const TCP_FLAGS_OFF: usize = offset_of!(TcpHdr, window) - 1;
pub const UDP_CSUM_OFF: usize = offset_of!(UdpHdr, check);
pub const ICMP_CSUM_OFF: usize = offset_of!(Icmpv4Hdr, check);
/// Echo identifier (the rest-of-header word starts with it); the quoted header of an ICMP
/// error follows the 8-byte ICMP header.
pub const ICMP_ECHO_ID_OFF: usize = offset_of!(Icmpv4Hdr, data);
pub const ICMP_HDR_LEN: usize = Icmpv4Hdr::LEN;

/// The ICMP fields every message type shares. (network-types' `Icmpv4Hdr` also covers the
/// 4 type-specific bytes; bounds-checking those would change which truncated echo requests
/// the router answers.)
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
}

/// A pointer to a `T` at `off` bytes into the packet, after checking it lies within the
/// linear data. Re-derive pointers after any helper that may move packet data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*mut T, Verdict> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    Ok((start + off) as *mut T)
}

/// The frame's Ethernet header, bounds-checked. network-types' `EthHdr` holds the
/// ethertype as a `u16`, and the frame need not be 2-byte aligned: so no reference to the
/// header is ever formed, its fields are read and written through raw field pointers (the
/// ethertype unaligned). Re-derive (`Eth::at`) after any helper that may move packet data.
#[derive(Clone, Copy)]
pub struct Eth(*mut EthHdr);

impl Eth {
    #[inline(always)]
    pub fn at(ctx: &TcContext) -> Result<Self, Verdict> {
        Ok(Self(ptr_at(ctx, 0)?))
    }

    /// The ethertype, host order.
    #[inline(always)]
    pub fn proto(self) -> u16 {
        // SAFETY: bounds-checked by `at`; an unaligned read through a field pointer.
        u16::from_be(unsafe { (&raw const (*self.0).ether_type).read_unaligned() })
    }

    #[inline(always)]
    pub fn src(self) -> Mac {
        // SAFETY: bounds-checked by `at`; a byte array has no alignment.
        unsafe { (&raw const (*self.0).src_addr).read() }
    }

    #[inline(always)]
    pub fn dst(self) -> Mac {
        // SAFETY: as in `src`.
        unsafe { (&raw const (*self.0).dst_addr).read() }
    }

    #[inline(always)]
    pub fn set_src(self, mac: Mac) {
        // SAFETY: as in `src`.
        unsafe { (&raw mut (*self.0).src_addr).write(mac) }
    }

    #[inline(always)]
    pub fn set_dst(self, mac: Mac) {
        // SAFETY: as in `src`.
        unsafe { (&raw mut (*self.0).dst_addr).write(mac) }
    }
}

/// True for an ARP packet about IPv4 addresses over Ethernet (the only kind answered).
#[inline(always)]
pub fn arp_is_ethernet_ipv4(arp: &ArpHdr) -> bool {
    be16(arp.htype) == ARP_HTYPE_ETHERNET
        && be16(arp.ptype) == ETH_P_IP
        && arp.hlen == 6
        && arp.plen == 4
}

/// Turn the ARP request in place into its reply, "`ip` is at `mac`", addressed to the asker.
#[inline(always)]
pub fn arp_reply_in_place(eth: Eth, arp: &mut ArpHdr, mac: Mac, ip: [u8; 4]) {
    eth.set_dst(eth.src());
    eth.set_src(mac);
    arp.oper = ARP_REPLY.to_be_bytes();
    arp.tha = arp.sha;
    arp.tpa = arp.spa;
    arp.sha = mac;
    arp.spa = ip;
}

#[inline(always)]
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
