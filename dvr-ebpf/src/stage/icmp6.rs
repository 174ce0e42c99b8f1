//! ICMPv6 answered by the router (stage, leaf), back out of the interface the packet came
//! from: echo requests to a router interface address; "time exceeded" when a VM's packet
//! would leave the router with hop limit 0, from the gateway of the VM's own subnet (as the
//! qrouter namespace answers traceroute); "packet too big" with the next network's MTU
//! when a packet does not fit it (routers never fragment IPv6). An error quotes the
//! packet's IPv6 header and what follows up to [`QUOTE_MAX`] bytes: the packet is turned
//! into the error in place (headers pushed in front of it, its tail cut). Never an error
//! about an ICMPv6 error, nor to `::` or a multicast source (RFC 4443 2.4 (e)), and within
//! the router's ICMP rate (`base::ratelimit`). Maps: DVR_ICMP_RL (through
//! `base::ratelimit`). Verdicts: icmp_echo_reply, icmp_time_exceeded, icmp_too_big,
//! drop_router_local, drop_ttl_exceeded and drop_frag_needed (not answered),
//! drop_redirect, drop_malformed.
use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    cty::c_void,
    helpers::{bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use dvr_common::{csum, ip6::Ip6, stats::Stat};

use crate::{
    base::{
        packet::{
            ETH_LEN, ETH_P_IPV6, Eth, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_TIME_EXCEEDED,
            IP6_HDR_LEN, IPPROTO_ICMPV6, Ipv6Hdr, be16, ptr_at,
        },
        ratelimit,
        verdict::{Verdict, redirect},
    },
    net::flow6::Flow6,
};

/// ICMPv6 packet too big (RFC 4443 3.2).
const ICMP6_PACKET_TOO_BIG: u8 = 2;

/// Hop limit of the packets the router sends.
const REPLY_HOP_LIMIT: u8 = 64;
/// Most bytes of the offending packet a time exceeded quotes: its IPv6 header and 64 more,
/// room for a few extension headers and the ports.
const QUOTE_MAX: usize = IP6_HDR_LEN + 64;
/// The ICMPv6 header of an error: type, code, checksum, 4 unused bytes.
const ERR_ICMP_LEN: usize = 8;
/// Ethernet, IPv6 and ICMPv6 headers of the error, before the quote.
const ERR_HDR_LEN: usize = ETH_LEN + IP6_HDR_LEN + ERR_ICMP_LEN;

#[inline(always)]
fn malformed<T>(_: T) -> Verdict {
    Verdict::drop(Stat::DropMalformed)
}

/// Answer an ICMPv6 echo request `f` to a router interface address, back out of tap
/// `ifindex`; anything else to the router is drop_router_local.
#[inline(always)]
pub fn echo_reply(ctx: &TcContext, f: &Flow6, ifindex: u32) -> Result<Verdict, Verdict> {
    if f.fragment || f.icmp6() != Some(ICMP6_ECHO_REQUEST) || f.icmp_code != 0 {
        return Err(Verdict::drop(Stat::DropRouterLocal));
    }
    let h: [u8; 4] = ctx.load(f.l4_off).map_err(malformed)?;
    let check = csum::replace16(
        be16([h[2], h[3]]),
        u16::from_be_bytes([ICMP6_ECHO_REQUEST, 0]),
        u16::from_be_bytes([ICMP6_ECHO_REPLY, 0]),
    )
    .to_be_bytes();
    ctx.store(f.l4_off, &[ICMP6_ECHO_REPLY, h[1], check[0], check[1]], 0)
        .map_err(malformed)?;
    // Re-derived after the store. Swapping the addresses leaves the pseudo header's sum
    // unchanged, and no checksum covers the hop limit.
    let eth = Eth::at(ctx)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since; Ipv6Hdr is all bytes.
    let ip = unsafe { &mut *ip };
    core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
    ip.hop_limit = REPLY_HOP_LIMIT;
    let (src, dst) = (eth.src(), eth.dst());
    eth.set_src(dst);
    eth.set_dst(src);
    Ok(redirect(ifindex, Stat::IcmpEchoReply))
}

/// Answer packet `f` from `src`, back out of `ifindex` (the interface it came in on), with
/// ICMPv6 time exceeded (hop limit exceeded in transit) when `mtu` is 0, else packet too
/// big with that MTU. One call site per pipeline: each call of the function is verified
/// anew.
#[inline(always)]
pub fn answer(ctx: &TcContext, f: &Flow6, ifindex: u32, src: &Ip6, mtu: u32) -> Verdict {
    let sent = error(ctx, f, src, mtu);
    match (sent, mtu == 0) {
        (true, true) => redirect(ifindex, Stat::IcmpTimeExceeded),
        (true, false) => redirect(ifindex, Stat::IcmpTooBig),
        (false, true) => Verdict::drop(Stat::DropTtlExceeded),
        (false, false) => Verdict::drop(Stat::DropFragNeeded),
    }
}

/// Turn packet `f` into an ICMPv6 error from `src`: packet too big with MTU `mtu`, or time
/// exceeded when `mtu` is 0. False when it is not answered (the frame is then dropped as
/// it may be half rewritten). A BPF-to-BPF call with its own stack frame (see
/// `entry::tap::program`), returning a plain flag: a `Verdict` would be returned through
/// memory, and BPF calls take at most five register arguments.
#[inline(never)]
fn error(ctx: &TcContext, f: &Flow6, src: &Ip6, mtu: u32) -> bool {
    let unanswered = false;
    if f.is_icmp6_error() || f.src_unspecified || f.saddr[0] == 0xff {
        return unanswered;
    }
    if !ratelimit::icmp_error_allowed() {
        return unanswered;
    }
    let Ok(eth) = ctx.load::<[u8; ETH_LEN]>(0) else {
        return unanswered;
    };
    let mut qlen = f.ip_len();
    let avail = (ctx.len() as usize).saturating_sub(ETH_LEN);
    if qlen > avail {
        qlen = avail;
    }
    if qlen > QUOTE_MAX {
        qlen = QUOTE_MAX;
    }
    if qlen < IP6_HDR_LEN {
        return unanswered;
    }
    // The quote's sum, 8 bytes at a time, before the packet changes (a quote-sized buffer
    // would not fit in the stack frame).
    let mut qsum = 0u32;
    let mut rem = qlen;
    for i in 0..QUOTE_MAX / 8 {
        if rem == 0 {
            break;
        }
        // 1 to 8 bytes, as the verifier sees it from `rem` itself.
        let n = if rem < 8 { rem } else { 8 };
        // Zero past `n`: the sum of the whole chunk is its first `n` bytes' sum.
        let mut chunk = [0u8; 8];
        // SAFETY: the helper writes `n` (1 to 8) bytes into `chunk`, on our stack.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                (ETH_LEN + i * 8) as u32,
                chunk.as_mut_ptr() as *mut c_void,
                n as u32,
            )
        };
        if ret != 0 {
            return unanswered;
        }
        qsum += csum::sum(&chunk);
        rem -= n;
    }
    let icmp_len = ERR_ICMP_LEN + qlen;
    // Room for the error's IPv6 and ICMPv6 headers between the Ethernet header and the
    // offending packet, which becomes the quote; then the quote cut to `qlen`.
    // SAFETY: plain helper calls on our skb.
    let grown = unsafe {
        bpf_skb_adjust_room(
            ctx.skb.skb as *mut _,
            (IP6_HDR_LEN + ERR_ICMP_LEN) as i32,
            BPF_ADJ_ROOM_MAC,
            0,
        )
    };
    if grown != 0 {
        return unanswered;
    }
    // SAFETY: as above.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (ERR_HDR_LEN + qlen) as u32, 0) } != 0 {
        return unanswered;
    }
    let Ok(hdr) = ptr_at::<[u8; ERR_HDR_LEN]>(ctx, 0) else {
        return unanswered;
    };
    // SAFETY: bounds-checked by ptr_at after the resize; a byte array has no alignment.
    let hdr = unsafe { &mut *hdr };
    *hdr = [0; ERR_HDR_LEN];
    hdr[0..6].copy_from_slice(&eth[6..12]);
    hdr[6..12].copy_from_slice(&eth[0..6]);
    hdr[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = ETH_LEN;
    hdr[ip] = 0x60;
    hdr[ip + 4..ip + 6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    hdr[ip + 6] = IPPROTO_ICMPV6;
    hdr[ip + 7] = REPLY_HOP_LIMIT;
    hdr[ip + 8..ip + 24].copy_from_slice(src);
    hdr[ip + 24..ip + 40].copy_from_slice(&f.saddr);
    let icmp = ip + IP6_HDR_LEN;
    if mtu == 0 {
        hdr[icmp] = ICMP6_TIME_EXCEEDED;
    } else {
        hdr[icmp] = ICMP6_PACKET_TOO_BIG;
        hdr[icmp + 4..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
    }
    // The pseudo header (both addresses as they now sit in the header, length, protocol),
    // the ICMPv6 header and the quote. Summed from the packet once written: address values
    // kept across the helper calls above did not fit in the stack frame.
    let sum = csum::sum(&hdr[ip + 8..ip + 40])
        + icmp_len as u32
        + IPPROTO_ICMPV6 as u32
        + csum::sum(&hdr[icmp..])
        + qsum;
    hdr[icmp + 2..icmp + 4].copy_from_slice(&(!csum::fold(sum)).to_be_bytes());
    true
}
