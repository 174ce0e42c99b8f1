//! All raw packet access (layer: base): header layouts, protocol numbers and bounds-checked
//! pointers into the linear packet data. The layouts are network-types' (Ethernet, ARP,
//! IPv4, IPv6; TCP, UDP and ICMP field offsets), with one exception: ICMP is bounds-checked on
//! its 4 common bytes only (see [`IcmpHdr`]). No Rust enum is ever read from packet memory:
//! protocol fields are compared as raw integers. Maps: none. Verdicts: drop_malformed.
use core::mem::offset_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use dvr_common::{Mac, stats::Stat};
pub use network_types::{
    arp::ArpHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
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

pub use dvr_common::csum::IPPROTO_ICMPV6;

/// IPv6 extension headers walked by `net::flow6` (RFC 8200 section 4): hop-by-hop options,
/// routing, fragment, destination options.
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DSTOPTS: u8 = 60;
/// Fragment offset bits of the fragment header's offset word.
pub const IP6_OFFSET: u16 = 0xfff8;

/// IPv6 header fields, as offsets from the start of the frame.
pub const IP6_HDR_LEN: usize = Ipv6Hdr::LEN;
pub const IP6_L4_OFF: usize = ETH_LEN + IP6_HDR_LEN;

/// ICMPv6 types (RFC 4443, 4861, 2710, 3810): errors are below 128.
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
pub const ICMP6_INFO_MIN: u8 = 128;
pub const MLD_QUERY: u8 = 130;
pub const MLD_REPORT: u8 = 131;
pub const MLD_DONE: u8 = 132;
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
pub const MLD2_REPORT: u8 = 143;
/// Neighbour discovery options: source and target link-layer address (RFC 4861 4.6.1).
pub const ND_OPT_SOURCE_LL: u8 = 1;
pub const ND_OPT_TARGET_LL: u8 = 2;
/// Neighbour advertisement flags (the first byte after the checksum).
pub const ND_NA_ROUTER: u8 = 0x80;
pub const ND_NA_SOLICITED: u8 = 0x40;
pub const ND_NA_OVERRIDE: u8 = 0x20;
/// The hop limit every neighbour discovery message carries (RFC 4861 7.1).
pub const ND_HOP_LIMIT: u8 = 255;
/// All nodes on the link, and its Ethernet multicast address (RFC 2464 7).
pub const IP6_ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const MAC_ALL_NODES: Mac = [0x33, 0x33, 0, 0, 0, 1];

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
/// The TCP header without options.
pub const TCP_HDR_LEN: usize = TcpHdr::LEN;
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

/// A context whose packet has linear data between two addresses: TC's socket buffer, or
/// XDP's buffer (its first fragment).
pub trait Linear {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Linear for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Linear for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A pointer to a `T` at `off` bytes into the packet, after checking it lies within the
/// linear data. Re-derive pointers after any helper that may move packet data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Linear, off: usize) -> Result<*mut T, Verdict> {
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
    pub fn at(ctx: &impl Linear) -> Result<Self, Verdict> {
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

/// An IPv6 address as two words, read from where it sits: comparing words keeps 2 values
/// live where comparing bytes kept 16, which did not fit in the BPF stack frame once
/// spilled (and `==` on arrays emits a `bcmp` call).
#[inline(always)]
pub fn ip6_words(a: &[u8; 16]) -> (u64, u64) {
    let p = a.as_ptr() as *const u64;
    // SAFETY: `a` is 16 readable bytes; unaligned reads need no alignment.
    unsafe { (p.read_unaligned(), p.add(1).read_unaligned()) }
}

/// Two IPv6 addresses are equal.
#[inline(always)]
pub fn ip6_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    ip6_words(a) == ip6_words(b)
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
