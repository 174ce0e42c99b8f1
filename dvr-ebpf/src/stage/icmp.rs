//! ICMP answered by the router (stage, leaf), back out of the interface the packet came
//! from: echo requests to a router interface address; "time exceeded" when a VM's packet
//! would leave the router with TTL 0 (traceroute's first hop answers from the VM's gateway,
//! as Neutron's qrouter does); "fragmentation needed" with the next network's MTU when a
//! packet with DF set does not fit it. An error is the frame rewritten in place, cut to the
//! IP header plus the 8 bytes it quotes, within the router's ICMP rate
//! (`base::ratelimit`). Maps: DVR_ICMP_RL (through `base::ratelimit`). Verdicts:
//! icmp_echo_reply, icmp_time_exceeded, icmp_frag_needed, drop_router_local,
//! drop_ip_fragment, drop_ttl_exceeded and drop_frag_needed (not answered: rate, options, a
//! later fragment, or an ICMP error), drop_redirect, drop_malformed.
use aya_ebpf::{helpers::bpf_skb_change_tail, programs::TcContext};
use dvr_common::{csum, stats::Stat};

use crate::base::{
    maps::DVR_SCRATCH,
    packet::{
        ETH_LEN, ETH_P_IP, Eth, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_HDR_LEN, ICMP_TIME_EXCEEDED, IP_HDR_LEN, IP_MF_OFFSET, IP_OFFSET, IPPROTO_ICMP,
        IcmpHdr, Ipv4Hdr, be16, ptr_at,
    },
    ratelimit,
    verdict::{Verdict, redirect},
};

/// "Fragmentation needed and DF set", the code of destination unreachable (RFC 1191).
const ICMP_FRAG_NEEDED: u8 = 4;

/// TTL of the packets the router sends.
const REPLY_TTL: u8 = 64;
/// IPv4 header (no options) + ICMP header + quoted IPv4 header + 8 bytes.
const ERR_LEN: usize = IP_HDR_LEN + ICMP_HDR_LEN + IP_HDR_LEN + 8;

/// Answer an ICMP echo request to a router interface address, back out of tap `ifindex`.
/// (`Err` only means "stopped early", as for a pipeline.)
#[inline(always)]
pub fn echo_reply(ctx: &TcContext, ifindex: u32) -> Result<Verdict, Verdict> {
    let eth = Eth::at(ctx)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since; Ipv4Hdr is all bytes.
    let ip = unsafe { &mut *ip };
    if ip.proto != IPPROTO_ICMP {
        return Err(Verdict::drop(Stat::DropRouterLocal));
    }
    if be16(ip.frags) & IP_MF_OFFSET != 0 {
        return Err(Verdict::drop(Stat::DropIpFragment));
    }
    // Only option-less headers are answered: the ICMP header then sits at a constant offset.
    if ip.vihl != 0x45 {
        return Err(Verdict::drop(Stat::DropRouterLocal));
    }
    let icmp: *mut IcmpHdr = ptr_at(ctx, ETH_LEN + IP_HDR_LEN)?;
    // SAFETY: bounds-checked just above; IcmpHdr is all bytes.
    let icmp = unsafe { &mut *icmp };
    if icmp.kind != ICMP_ECHO_REQUEST || icmp.code != 0 {
        return Err(Verdict::drop(Stat::DropRouterLocal));
    }
    icmp.kind = ICMP_ECHO_REPLY;
    let check = csum::replace16(
        be16(icmp.check),
        u16::from_be_bytes([ICMP_ECHO_REQUEST, 0]),
        u16::from_be_bytes([ICMP_ECHO_REPLY, 0]),
    );
    icmp.check = check.to_be_bytes();
    // Swapping addresses leaves both checksums unchanged (one's complement sums commute);
    // the fresh TTL needs an update.
    core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new = u16::from_be_bytes([REPLY_TTL, ip.proto]);
    ip.check = csum::replace16(be16(ip.check), old, new).to_be_bytes();
    ip.ttl = REPLY_TTL;
    let (src, dst) = (eth.src(), eth.dst());
    eth.set_src(dst);
    eth.set_dst(src);
    Ok(redirect(ifindex, Stat::IcmpEchoReply))
}

/// Answer the frame on tap `ifindex` with ICMP time exceeded from `gw_ip_be` (deferred:
/// see [`send_pending`]).
#[inline(always)]
pub fn time_exceeded(ifindex: u32, gw_ip_be: u32) -> Verdict {
    request(ifindex, gw_ip_be, ICMP_TIME_EXCEEDED, 0, 0)
}

/// Answer the frame with ICMP fragmentation needed (next-hop MTU `mtu`) from `src_ip_be`,
/// back out of `ifindex`, the interface it came in on (deferred: see [`send_pending`]).
#[inline(always)]
pub fn frag_needed(ifindex: u32, src_ip_be: u32, mtu: u16) -> Verdict {
    request(ifindex, src_ip_be, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)
}

/// Note the ICMP error in the per-CPU scratch and end with [`Verdict::icmp_error`].
#[inline(always)]
fn request(ifindex: u32, src_ip_be: u32, kind: u8, code: u8, mtu: u16) -> Verdict {
    let Some(s) = DVR_SCRATCH.get_ptr_mut(0) else {
        return Verdict::drop(unanswered(kind));
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    unsafe {
        (*s).out_ifindex = ifindex;
        (*s).icmp_src_be = src_ip_be;
        (*s).icmp_type = kind;
        (*s).icmp_code = code;
        (*s).mtu = mtu;
    }
    Verdict::icmp_error()
}

/// How an ICMP error of type `kind` is counted when it is sent, and when it cannot be.
#[inline(always)]
fn counted(kind: u8) -> (Stat, Stat) {
    if kind == ICMP_TIME_EXCEEDED {
        (Stat::IcmpTimeExceeded, Stat::DropTtlExceeded)
    } else {
        (Stat::IcmpFragNeeded, Stat::DropFragNeeded)
    }
}

#[inline(always)]
fn unanswered(kind: u8) -> Stat {
    counted(kind).1
}

/// Build and send the ICMP error a stage asked for ([`request`]). A BPF-to-BPF function
/// called by the entry points, whose stack frames are shallow.
#[inline(never)]
pub fn send_pending(ctx: &TcContext) -> Verdict {
    let Some(s) = DVR_SCRATCH.get_ptr_mut(0) else {
        return Verdict::drop(Stat::DropFragNeeded);
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let e = unsafe {
        IcmpError {
            kind: (*s).icmp_type,
            code: (*s).icmp_code,
            mtu: (*s).mtu,
            ifindex: (*s).out_ifindex,
            src_ip_be: (*s).icmp_src_be,
        }
    };
    let (sent, unanswered) = counted(e.kind);
    if error(ctx, &e) {
        redirect(e.ifindex, sent)
    } else {
        Verdict::drop(unanswered)
    }
}

/// An ICMP error: its type and code, the MTU it reports (0: none), where it goes and
/// whose address it is from.
struct IcmpError {
    kind: u8,
    code: u8,
    mtu: u16,
    ifindex: u32,
    src_ip_be: u32,
}

/// Turn the frame into ICMP error `e` about it, MACs swapped. False when it is not
/// answered.
#[inline(always)]
fn error(ctx: &TcContext, e: &IcmpError) -> bool {
    let unanswered = false;
    let Ok(eth) = ctx.load::<[u8; ETH_LEN]>(0) else {
        return unanswered;
    };
    let Ok(orig) = ctx.load::<[u8; IP_HDR_LEN + 8]>(ETH_LEN) else {
        return unanswered;
    };
    // Only option-less headers are quoted; never answer an ICMP error with one (RFC 1122),
    // nor a later fragment (RFC 1812 4.3.2.7).
    if orig[0] != 0x45
        || (orig[9] == IPPROTO_ICMP && orig[20] != ICMP_ECHO_REPLY && orig[20] != ICMP_ECHO_REQUEST)
        || be16([orig[6], orig[7]]) & IP_OFFSET != 0
    {
        return unanswered;
    }
    if !ratelimit::icmp_error_allowed() {
        return unanswered;
    }
    let mut out = [0u8; ERR_LEN];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(ERR_LEN as u16).to_be_bytes());
    out[8] = REPLY_TTL;
    out[9] = IPPROTO_ICMP;
    out[12..16].copy_from_slice(&e.src_ip_be.to_ne_bytes());
    out[16..20].copy_from_slice(&orig[12..16]);
    let ip_csum = csum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    out[20] = e.kind;
    out[21] = e.code;
    out[26..28].copy_from_slice(&e.mtu.to_be_bytes());
    out[28..56].copy_from_slice(&orig);
    let icmp_csum = csum::checksum(&out[20..]);
    out[22..24].copy_from_slice(&icmp_csum.to_be_bytes());
    let mut hdr = [0u8; ETH_LEN];
    hdr[0..6].copy_from_slice(&eth[6..12]);
    hdr[6..12].copy_from_slice(&eth[0..6]);
    hdr[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    // SAFETY: plain helper call; shrinks (or grows) the linear packet to the error's size.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (ETH_LEN + ERR_LEN) as u32, 0) } != 0 {
        return unanswered;
    }
    ctx.store(0, &hdr, 0).is_ok() && ctx.store(ETH_LEN, &out, 0).is_ok()
}
