//! Header rewrites (layer: net): TTL and IPv6 hop limit decrement, address and port translation with the IPv4
//! and L4 checksum updates (through the skb checksum helpers, which also handle
//! CHECKSUM_PARTIAL packets from veth and taps), and the translation of ICMP errors whose
//! quoted header belongs to a translated flow. Maps: reads and writes DVR_CT (through
//! `conntrack`, for ICMP errors). Verdicts: drop_ttl_exceeded, drop_icmp_error_no_flow,
//! drop_malformed.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use dvr_common::{csum, nat::CtEntry, stats::Stat};

use crate::{
    base::{
        packet::{
            ETH_LEN, ICMP_CSUM_OFF, ICMP_ECHO_ID_OFF, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF,
            IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, Ipv6Hdr, TCP_CSUM_OFF, UDP_CSUM_OFF,
            be16, ptr_at,
        },
        verdict::Verdict,
    },
    net::{conntrack, flow::Flow},
};

/// Which address (and port) of a packet a translation rewrites: the source (SNAT, packets
/// from a VM) or the destination (DNAT, packets towards a VM).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Src,
    Dst,
}

/// Whether a path decrements the TTL: `Keep` when the sending host already routed the
/// packet (it crossed the router once).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Decrement,
    Keep,
}

#[inline(always)]
fn malformed<T>(_: T) -> Verdict {
    Verdict::drop(Stat::DropMalformed)
}

/// Decrement the TTL when `ttl` says so (see [`ttl_decrement`]).
#[inline(always)]
pub fn ttl(ctx: &TcContext, ttl: Ttl) -> Result<(), Verdict> {
    match ttl {
        Ttl::Decrement => ttl_decrement(ctx),
        Ttl::Keep => Ok(()),
    }
}

/// Decrement TTL (the packet is routed). TTL <= 1 is dropped.
#[inline(always)]
pub fn ttl_decrement(ctx: &TcContext) -> Result<(), Verdict> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since; Ipv4Hdr is all bytes.
    let ip = unsafe { &mut *ip };
    if ip.ttl <= 1 {
        return Err(Verdict::drop(Stat::DropTtlExceeded));
    }
    let (word, check) = csum::ttl_decrement(u16::from_be_bytes([ip.ttl, ip.proto]), be16(ip.check));
    ip.ttl = word.to_be_bytes()[0];
    ip.check = check.to_be_bytes();
    Ok(())
}

/// Decrement the IPv6 hop limit (the packet is routed); no checksum covers it. A hop limit
/// <= 1 is dropped (drop_ttl_exceeded), which the caller may answer.
#[inline(always)]
pub fn hop_limit_decrement(ctx: &TcContext) -> Result<(), Verdict> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since; Ipv6Hdr is all bytes.
    let ip = unsafe { &mut *ip };
    if ip.hop_limit <= 1 {
        return Err(Verdict::drop(Stat::DropTtlExceeded));
    }
    ip.hop_limit -= 1;
    Ok(())
}

/// Rewrite the source or destination address to `new` (network order as read), updating
/// the IPv4 header checksum and the TCP/UDP pseudo-header checksum.
#[inline(always)]
pub fn rewrite_addr(ctx: &TcContext, f: &Flow, dir: Dir, new: u32) -> Result<(), Verdict> {
    let old = match dir {
        Dir::Src => f.saddr,
        Dir::Dst => f.daddr,
    };
    if !f.later_fragment {
        match f.proto {
            IPPROTO_TCP => ctx
                .l4_csum_replace(
                    f.l4_off + TCP_CSUM_OFF,
                    old as u64,
                    new as u64,
                    (BPF_F_PSEUDO_HDR | 4) as u64,
                )
                .map_err(malformed)?,
            IPPROTO_UDP => ctx
                .l4_csum_replace(
                    f.l4_off + UDP_CSUM_OFF,
                    old as u64,
                    new as u64,
                    (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4) as u64,
                )
                .map_err(malformed)?,
            _ => {}
        }
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
        .map_err(malformed)?;
    let off = match dir {
        Dir::Src => IP_SADDR_OFF,
        Dir::Dst => IP_DADDR_OFF,
    };
    ctx.store(off, &new, 0).map_err(malformed)
}

/// For the external NIC's XDP program: decrement the TTL of the plain TCP or UDP packet
/// `f` (`Flow::parse_simple`) and translate its destination to `new` (network order as
/// read), updating the checksums in place (no skb helpers in XDP; the packet came from the
/// wire, so its checksums are whole). `false`, with nothing changed, when the TTL is <= 1
/// (left to TC, which answers it).
#[inline(always)]
pub fn dnat_simple(ctx: &XdpContext, f: &Flow, new: u32) -> bool {
    let l4_csum = match f.proto {
        IPPROTO_TCP => f.l4_off + TCP_CSUM_OFF,
        _ => f.l4_off + UDP_CSUM_OFF,
    };
    let (Ok(ip), Ok(c)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
        ptr_at::<[u8; 2]>(ctx, l4_csum),
    ) else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at; both are all bytes, and do not overlap (the IPv4
    // header has no options here).
    let (ip, c) = unsafe { (&mut *ip, &mut *c) };
    if ip.ttl <= 1 {
        return false;
    }
    let (word, check) = csum::ttl_decrement(u16::from_be_bytes([ip.ttl, ip.proto]), be16(ip.check));
    ip.ttl = word.to_be_bytes()[0];
    let (old, new_h) = (u32::from_be(f.daddr), u32::from_be(new));
    ip.check = csum::replace32(check, old, new_h).to_be_bytes();
    ip.dst_addr = new.to_ne_bytes();
    let l4 = be16(*c);
    // A UDP checksum of 0 says there is none (RFC 768); a computed 0 is sent as 0xffff.
    if !(f.proto == IPPROTO_UDP && l4 == 0) {
        let n = csum::replace32(l4, old, new_h);
        *c = if n == 0 && f.proto == IPPROTO_UDP {
            0xffff
        } else {
            n
        }
        .to_be_bytes();
    }
    true
}

/// Rewrite the source or destination port (ICMP echo: the identifier) to `new` (network
/// order as read), updating the L4 checksum. Ports are not in the pseudo header.
#[inline(always)]
pub fn rewrite_port(ctx: &TcContext, f: &Flow, dir: Dir, new: u16) -> Result<(), Verdict> {
    let old = match dir {
        Dir::Src => f.sport,
        Dir::Dst => f.dport,
    };
    if old == new {
        return Ok(());
    }
    let port = match dir {
        Dir::Src => 0,
        Dir::Dst => 2,
    };
    let (csum_off, port_off, flags) = match f.proto {
        IPPROTO_TCP => (f.l4_off + TCP_CSUM_OFF, f.l4_off + port, 2u64),
        IPPROTO_UDP => (
            f.l4_off + UDP_CSUM_OFF,
            f.l4_off + port,
            (BPF_F_MARK_MANGLED_0 | 2) as u64,
        ),
        IPPROTO_ICMP => (f.l4_off + ICMP_CSUM_OFF, f.l4_off + ICMP_ECHO_ID_OFF, 2u64),
        _ => return Ok(()),
    };
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, flags)
        .map_err(malformed)?;
    ctx.store(port_off, &new, 0).map_err(malformed)
}

/// Translate an ICMP error whose quoted packet belongs to a tracked flow. `Dir::Dst`: the
/// error travels towards the VM (outer destination and quoted source are the floating IP);
/// `Dir::Src`: it leaves the VM (outer source and quoted destination are the fixed IP).
/// Returns the flow entry that matched.
#[inline(always)]
pub fn icmp_error(ctx: &TcContext, f: &Flow, zone: u32, dir: Dir) -> Result<CtEntry, Verdict> {
    let q = f.quoted(ctx)?;
    let (ih, inner, inner_l4, proto) = (q.ip, q.ip_off, q.l4_off, q.proto);
    let (isrc, idst, isport, idport) = (q.saddr, q.daddr, q.sport, q.dport);
    // The quoted packet went the other way: its reply direction is what we track here.
    let k = conntrack::key(zone, idst, isrc, idport, isport, proto);
    let e = conntrack::track(&k, f).ok_or(Verdict::drop(Stat::DropIcmpErrorNoFlow))?;
    let new = e.nat_ip_be;
    let (outer_off, inner_addr_off, old) = match dir {
        Dir::Dst => (IP_DADDR_OFF, inner + 12, isrc),
        Dir::Src => (IP_SADDR_OFF, inner + 16, idst),
    };
    let icmp_csum = f.l4_off + ICMP_CSUM_OFF;
    // Outer header: the ICMP checksum does not cover it.
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
        .map_err(malformed)?;
    ctx.store(outer_off, &new, 0).map_err(malformed)?;
    // Quoted address, then the quoted header's own checksum; the ICMP checksum covers both.
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 4)
        .map_err(malformed)?;
    ctx.store(inner_addr_off, &new, 0).map_err(malformed)?;
    let old_c = u16::from_be_bytes([ih[10], ih[11]]);
    let new_c = csum::replace32(old_c, u32::from_be(old), u32::from_be(new));
    replace_word(ctx, icmp_csum, inner + 10, old_c, new_c)?;
    // Port-address translated flows: the quoted port (or echo id) is translated back too.
    let new_port = e.nat_port_be;
    let (port_off, old_port) = match proto {
        IPPROTO_TCP | IPPROTO_UDP if dir == Dir::Dst => (inner_l4, isport),
        IPPROTO_TCP | IPPROTO_UDP => (inner_l4 + 2, idport),
        _ => (inner_l4 + ICMP_ECHO_ID_OFF, isport),
    };
    if new_port != 0 && new_port != old_port && proto != 0 {
        let (o, n) = (u16::from_be(old_port), u16::from_be(new_port));
        replace_word(ctx, icmp_csum, port_off, o, n)?;
        if proto == IPPROTO_UDP {
            if let Ok(c) = ctx.load::<[u8; 2]>(inner_l4 + UDP_CSUM_OFF) {
                let old_u = u16::from_be_bytes(c);
                if old_u != 0 {
                    let nu = csum::replace16(old_u, o, n);
                    replace_word(
                        ctx,
                        icmp_csum,
                        inner_l4 + UDP_CSUM_OFF,
                        old_u,
                        if nu == 0 { 0xffff } else { nu },
                    )?;
                }
            }
        }
    }
    if proto == IPPROTO_UDP {
        // The quoted UDP checksum covers the quoted addresses through its pseudo header.
        if let Ok(c) = ctx.load::<[u8; 2]>(inner_l4 + UDP_CSUM_OFF) {
            let old_u = u16::from_be_bytes(c);
            if old_u != 0 {
                let mut new_u = csum::replace32(old_u, u32::from_be(old), u32::from_be(new));
                if new_u == 0 {
                    new_u = 0xffff;
                }
                replace_word(ctx, icmp_csum, inner_l4 + UDP_CSUM_OFF, old_u, new_u)?;
            }
        }
    }
    Ok(e)
}

/// Store a 16-bit checksum field inside the ICMP payload and fold the change into the
/// ICMP checksum at `icmp_csum`.
#[inline(always)]
fn replace_word(
    ctx: &TcContext,
    icmp_csum: usize,
    off: usize,
    old: u16,
    new: u16,
) -> Result<(), Verdict> {
    let (o, n) = (
        u16::from_ne_bytes(old.to_be_bytes()),
        u16::from_ne_bytes(new.to_be_bytes()),
    );
    ctx.l4_csum_replace(icmp_csum, o as u64, n as u64, 2)
        .map_err(malformed)?;
    ctx.store(off, &new.to_be_bytes(), 0).map_err(malformed)
}
