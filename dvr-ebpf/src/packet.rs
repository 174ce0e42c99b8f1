//! All raw packet access: header layouts (byte arrays only, so nothing unaligned is read as
//! a wider integer and no Rust enum is ever read from packet memory) and bounds-checked
//! pointers into the packet.
use aya_ebpf::programs::TcContext;
use dvr_common::{Mac, stats::Stat};

use crate::verdict::Verdict;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;

#[repr(C)]
pub struct EthHdr {
    pub dst: Mac,
    pub src: Mac,
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: Mac,
    pub spa: [u8; 4],
    pub tha: Mac,
    pub tpa: [u8; 4],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

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

#[inline(always)]
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
