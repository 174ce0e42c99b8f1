//! The parsed packet (layer: net): the IPv4 header and L4 tuple of a frame, parsed once by
//! the entry program and passed down to every stage: addresses, ports (ICMP echo id in
//! both), TCP flags, ICMP type, fragment position. L4 fields are read with
//! bpf_skb_load_bytes at the variable offset the IHL gives, so no variable-offset packet
//! pointer reaches the verifier. Maps: none. Verdicts: drop_malformed (from `require`).
//!
//! Parsing never fails by itself: how far it got is kept in [`Parsed`], and each entry or
//! stage `require`s what it uses at the point where the pipeline has always checked it, so
//! a malformed packet is dropped (or passed on) exactly where and as it always was.
use aya_ebpf::programs::{TcContext, XdpContext};
use dvr_common::stats::Stat;

use crate::base::{
    packet::{
        ETH_LEN, ICMP_DEST_UNREACH, ICMP_ECHO_ID_OFF, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_HDR_LEN, ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, IP_HDR_LEN, IP_MF_OFFSET, IP_OFFSET,
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, TCP_FLAGS_OFF, TCP_HDR_LEN, be16, ptr_at,
    },
    verdict::Verdict,
};

/// How much of an IPv4 packet could be parsed; each level includes the ones before.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Parsed {
    /// No IPv4 header within the linear data: no field below is set.
    Nothing,
    /// The fixed IPv4 header is there: addresses, protocol, length, fragment position.
    Header,
    /// ... and it is version 4 with a valid IHL: `l4_off` is right.
    Ip,
    /// ... and the L4 tuple (ports, TCP flags, ICMP type) was read, or the packet is a
    /// later fragment that has none.
    L4,
}

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
    pub parsed: Parsed,
}

impl Flow {
    /// Parse the IPv4 packet after the Ethernet header (whatever the ethertype says: the
    /// caller decides what it trusts).
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Flow {
        let mut f = Flow {
            saddr: 0,
            daddr: 0,
            sport: 0,
            dport: 0,
            proto: 0,
            tcp_flags: 0,
            icmp_type: 0,
            later_fragment: false,
            l4_off: 0,
            tot_len: 0,
            parsed: Parsed::Nothing,
        };
        let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return f;
        };
        // SAFETY: bounds-checked by ptr_at; Ipv4Hdr is all bytes (no alignment).
        let ip = unsafe { &*ip };
        let ihl = (ip.vihl & 0x0f) as usize * 4;
        f.saddr = u32::from_ne_bytes(ip.src_addr);
        f.daddr = u32::from_ne_bytes(ip.dst_addr);
        f.proto = ip.proto;
        f.tot_len = be16(ip.tot_len);
        f.later_fragment = be16(ip.frags) & IP_OFFSET != 0;
        f.l4_off = ETH_LEN + ihl;
        f.parsed = Parsed::Header;
        if ip.vihl >> 4 != 4 || ihl < IP_HDR_LEN {
            return f;
        }
        f.parsed = Parsed::Ip;
        if !f.later_fragment {
            let Ok((s, d, flags, icmp_type)) = ports(ctx, f.proto, f.l4_off) else {
                return f;
            };
            f.sport = s;
            f.dport = d;
            f.tcp_flags = flags;
            f.icmp_type = icmp_type;
        }
        f.parsed = Parsed::L4;
        f
    }

    /// For the external NIC's XDP program: the flow of a plain TCP or UDP packet, whole in
    /// the frame's first buffer (no IP options, not a fragment, TTL > 1, the frame at least
    /// as long as the IP length says, the L4 header's checksum within it); `None` for
    /// anything else, which is left to [`Flow::parse`] in TC. Ports, TCP flags and
    /// checksums sit at fixed offsets here.
    #[inline(always)]
    pub fn parse_simple(ctx: &XdpContext) -> Option<Flow> {
        const L4: usize = ETH_LEN + IP_HDR_LEN;
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok()?;
        // SAFETY: bounds-checked by ptr_at; Ipv4Hdr is all bytes (no alignment).
        let ip = unsafe { &*ip };
        let tot_len = be16(ip.tot_len);
        if ip.vihl != 0x45
            || ip.ttl <= 1
            || be16(ip.frags) & IP_MF_OFFSET != 0
            || (tot_len as usize) < IP_HDR_LEN
            || ctx.data() + ETH_LEN + tot_len as usize > ctx.data_end()
        {
            return None;
        }
        let (sport, dport, tcp_flags) = match ip.proto {
            IPPROTO_TCP => {
                let b: *const [u8; TCP_HDR_LEN] = ptr_at(ctx, L4).ok()?;
                // SAFETY: bounds-checked by ptr_at; a byte array.
                let b = unsafe { &*b };
                (
                    u16::from_ne_bytes([b[0], b[1]]),
                    u16::from_ne_bytes([b[2], b[3]]),
                    b[TCP_FLAGS_OFF],
                )
            }
            IPPROTO_UDP => {
                let b: *const [u8; 8] = ptr_at(ctx, L4).ok()?;
                // SAFETY: as above.
                let b = unsafe { &*b };
                (
                    u16::from_ne_bytes([b[0], b[1]]),
                    u16::from_ne_bytes([b[2], b[3]]),
                    0,
                )
            }
            _ => return None,
        };
        Some(Flow {
            saddr: u32::from_ne_bytes(ip.src_addr),
            daddr: u32::from_ne_bytes(ip.dst_addr),
            sport,
            dport,
            proto: ip.proto,
            tcp_flags,
            icmp_type: 0,
            later_fragment: false,
            l4_off: L4,
            tot_len,
            parsed: Parsed::L4,
        })
    }

    /// `Err(drop_malformed)` unless the packet was parsed up to `level`.
    #[inline(always)]
    pub fn require(&self, level: Parsed) -> Result<(), Verdict> {
        if self.parsed >= level {
            Ok(())
        } else {
            Err(Verdict::drop(Stat::DropMalformed))
        }
    }

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

/// The packet an ICMP error quotes: its IPv4 header and tuple (ports as in [`Flow`]: ICMP
/// echo id in both).
#[derive(Clone, Copy)]
pub struct Quoted {
    /// The quoted IPv4 header as it sits in the packet.
    pub ip: [u8; IP_HDR_LEN],
    /// Offset of the quoted IPv4 header and of its L4 header in the frame.
    pub ip_off: usize,
    pub l4_off: usize,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Flow {
    /// The packet this ICMP error (`is_icmp_error`) quotes.
    #[inline(always)]
    pub fn quoted(&self, ctx: &TcContext) -> Result<Quoted, Verdict> {
        let bad = |_| Verdict::drop(Stat::DropMalformed);
        let ip_off = self.l4_off + ICMP_HDR_LEN;
        let ih: [u8; IP_HDR_LEN] = ctx.load(ip_off).map_err(bad)?;
        let ihl = (ih[0] & 0x0f) as usize * 4;
        if ih[0] >> 4 != 4 || ihl < IP_HDR_LEN {
            return Err(Verdict::drop(Stat::DropMalformed));
        }
        let proto = ih[9];
        let l4_off = ip_off + ihl;
        let (sport, dport) = match proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                let p: [u8; 4] = ctx.load(l4_off).map_err(bad)?;
                (
                    u16::from_ne_bytes([p[0], p[1]]),
                    u16::from_ne_bytes([p[2], p[3]]),
                )
            }
            IPPROTO_ICMP => {
                let p: [u8; 8] = ctx.load(l4_off).map_err(bad)?;
                let id = u16::from_ne_bytes([p[ICMP_ECHO_ID_OFF], p[ICMP_ECHO_ID_OFF + 1]]);
                (id, id)
            }
            _ => (0, 0),
        };
        Ok(Quoted {
            ip: ih,
            ip_off,
            l4_off,
            saddr: u32::from_ne_bytes([ih[12], ih[13], ih[14], ih[15]]),
            daddr: u32::from_ne_bytes([ih[16], ih[17], ih[18], ih[19]]),
            sport,
            dport,
            proto,
        })
    }
}

/// Ports of a tuple at `off` (TCP/UDP: source, destination; ICMP echo: id twice), the TCP
/// flags and the ICMP type. (Also the TCP and UDP part of `flow6`.)
#[inline(always)]
pub(super) fn ports(ctx: &TcContext, proto: u8, off: usize) -> Result<(u16, u16, u8, u8), Verdict> {
    let bad = |_| Verdict::drop(Stat::DropMalformed);
    match proto {
        IPPROTO_TCP => {
            let b: [u8; TCP_FLAGS_OFF + 1] = ctx.load(off).map_err(bad)?;
            Ok((
                u16::from_ne_bytes([b[0], b[1]]),
                u16::from_ne_bytes([b[2], b[3]]),
                b[TCP_FLAGS_OFF],
                0,
            ))
        }
        IPPROTO_UDP => {
            let b: [u8; 4] = ctx.load(off).map_err(bad)?;
            Ok((
                u16::from_ne_bytes([b[0], b[1]]),
                u16::from_ne_bytes([b[2], b[3]]),
                0,
                0,
            ))
        }
        IPPROTO_ICMP => {
            let b: [u8; 8] = ctx.load(off).map_err(bad)?;
            if b[0] == ICMP_ECHO_REQUEST || b[0] == ICMP_ECHO_REPLY {
                let id = u16::from_ne_bytes([b[ICMP_ECHO_ID_OFF], b[ICMP_ECHO_ID_OFF + 1]]);
                Ok((id, id, 0, b[0]))
            } else {
                Ok((0, 0, 0, b[0]))
            }
        }
        _ => Ok((0, 0, 0, 0)),
    }
}
