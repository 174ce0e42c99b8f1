//! IPv4 + L4 parse shared by the NAT paths: addresses, ports (ICMP echo id in both), TCP
//! flags, fragment position. L4 fields are read with bpf_skb_load_bytes at the variable
//! offset the IHL gives, so no variable-offset packet pointer reaches the verifier.
use aya_ebpf::programs::TcContext;
use dvr_common::stats::Stat;

use crate::{
    packet::{ETH_LEN, IPPROTO_ICMP, Ipv4Hdr, be16, ptr_at},
    verdict::Verdict,
};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// IPv4 header offsets (from the start of the frame).
pub const IP_CSUM_OFF: usize = ETH_LEN + 10;
pub const IP_SADDR_OFF: usize = ETH_LEN + 12;
pub const IP_DADDR_OFF: usize = ETH_LEN + 16;

#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// ICMP type (ICMP only).
    pub icmp_type: u8,
    /// A fragment other than the first: no L4 header.
    pub later_fragment: bool,
    pub l4_off: usize,
    pub tot_len: u16,
}

impl Flow {
    /// ICMP destination unreachable / time exceeded / parameter problem: carries the header
    /// of the packet it reports.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && !self.later_fragment
            && matches!(
                self.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
            )
    }
}

/// Ports of a tuple at `off` (TCP/UDP: source, destination; ICMP echo: id twice).
#[inline(always)]
pub fn ports(ctx: &TcContext, proto: u8, off: usize) -> Result<(u16, u16, u8), Verdict> {
    let bad = |_| Verdict::drop(Stat::DropMalformed);
    match proto {
        IPPROTO_TCP => {
            let b: [u8; 14] = ctx.load(off).map_err(bad)?;
            Ok((
                u16::from_ne_bytes([b[0], b[1]]),
                u16::from_ne_bytes([b[2], b[3]]),
                b[13],
            ))
        }
        IPPROTO_UDP => {
            let b: [u8; 4] = ctx.load(off).map_err(bad)?;
            Ok((
                u16::from_ne_bytes([b[0], b[1]]),
                u16::from_ne_bytes([b[2], b[3]]),
                0,
            ))
        }
        IPPROTO_ICMP => {
            let b: [u8; 8] = ctx.load(off).map_err(bad)?;
            if b[0] == ICMP_ECHO_REQUEST || b[0] == ICMP_ECHO_REPLY {
                let id = u16::from_ne_bytes([b[4], b[5]]);
                Ok((id, id, 0))
            } else {
                Ok((0, 0, 0))
            }
        }
        _ => Ok((0, 0, 0)),
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Flow, Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = (ip.ver_ihl & 0x0f) as usize * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    let later_fragment = be16(ip.frag) & 0x1fff != 0;
    let l4_off = ETH_LEN + ihl;
    let mut f = Flow {
        saddr: u32::from_ne_bytes(ip.saddr),
        daddr: u32::from_ne_bytes(ip.daddr),
        sport: 0,
        dport: 0,
        proto: ip.proto,
        tcp_flags: 0,
        icmp_type: 0,
        later_fragment,
        l4_off,
        tot_len: be16(ip.tot_len),
    };
    if !later_fragment {
        let (s, d, flags) = ports(ctx, f.proto, l4_off)?;
        f.sport = s;
        f.dport = d;
        f.tcp_flags = flags;
        if f.proto == IPPROTO_ICMP {
            let t: [u8; 1] = ctx
                .load(l4_off)
                .map_err(|_| Verdict::drop(Stat::DropMalformed))?;
            f.icmp_type = t[0];
        }
    }
    Ok(f)
}
