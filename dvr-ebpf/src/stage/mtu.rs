//! Path MTU (stage): whether a packet fits the MTU of the network it is about to be
//! delivered into (see `dvr_common::frag`). Called where a packet enters another network:
//! routing on the source host (`route`, `route6`), a VM's packet out through its floating
//! IP or steered to SNAT (`route`), a floating IP's inbound packet and an SNAT reply
//! (`fip`, `snat`, on the external interface), IPv6 routed in from outside (`north6`).
//! Too long with DF set (IPv4): answered with ICMP fragmentation needed with that MTU from
//! the router address the sender used, out of the interface it came in on ([`check4`]);
//! IPv6 too long at all ([`exceeds6`]): the pipeline ends ([`too_big6`]) and its caller
//! answers with packet too big (`icmp6::answer`, [`icmp6_error`]) from the address it
//! knows. Too long without DF: fragmented once delivered ([`deliver4`]). A GSO packet is measured by the segments it will be cut into (as the kernel's
//! `skb_gso_validate_network_len`); one whose segments do not fit and may not carry DF is
//! not fragmented (`drop_frag_failed`). A route without an MTU (0) fits everything.
//!
//! Calls `icmp`, `net::frag`, `net::encap`. Maps: those of the callees. Verdicts: icmp_frag_needed,
//! fragmented, drop_frag_needed, drop_frag_failed, drop_malformed.
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use dvr_common::{config::HostConfig, stats::Stat};

use crate::{
    base::{
        packet::{ETH_LEN, IP_HDR_LEN, IP6_HDR_LEN, IPPROTO_TCP, be16},
        verdict::Verdict,
    },
    net::{encap, flow6::Flow6, frag},
    stage::icmp,
};

/// The "don't fragment" flag of the IPv4 `frags` word.
const IP_DF: u16 = 0x4000;
/// UDP header length: the L4 header of a UDP GSO segment.
const UDP_HDR_LEN: u32 = 8;

/// The `__sk_buff.cb` word that carries [`check4`]'s finding to [`deliver4`]: the MTU to
/// fragment for, 0 when the packet fits. In the packet's control block rather than in a
/// value the pipeline carries, so the verifier does not walk the delivery twice (fits /
/// fragments); `check4` writes it on every path that reaches `deliver4`.
const CB_FRAGMENT: usize = 0;

/// The IPv4 packet against MTU `mtu`. Too long with DF: `Err` with the ICMP error sent
/// from `src_ip_be` out of `back_ifindex`; without DF: noted for [`deliver4`].
#[inline(always)]
pub fn check4(ctx: &TcContext, mtu: u16, back_ifindex: u32, src_ip_be: u32) -> Result<(), Verdict> {
    let fragment = exceeds4(ctx, mtu, back_ifindex, src_ip_be)?;
    // SAFETY: the context pointer is valid for the program's run; cb is ours in TC.
    unsafe { (*ctx.skb.skb).cb[CB_FRAGMENT] = if fragment { u32::from(mtu) } else { 0 } };
    Ok(())
}

/// Whether the packet needs fragments for `mtu` (see [`check4`]).
#[inline(always)]
fn exceeds4(ctx: &TcContext, mtu: u16, back_ifindex: u32, src_ip_be: u32) -> Result<bool, Verdict> {
    if mtu == 0 {
        return Ok(false);
    }
    let hdr = ctx.load::<[u8; IP_HDR_LEN]>(ETH_LEN).map_err(malformed)?;
    let ihl = u32::from(hdr[0] & 0x0f) * 4;
    let df = be16([hdr[6], hdr[7]]) & IP_DF != 0;
    let gso = gso_size(ctx);
    let len = if gso != 0 {
        let l4 = if hdr[9] == IPPROTO_TCP {
            tcp_hdr_len(ctx, ETH_LEN as u32 + ihl)?
        } else {
            UDP_HDR_LEN
        };
        ihl + l4 + gso
    } else {
        u32::from(be16([hdr[2], hdr[3]]))
    };
    if len <= u32::from(mtu) {
        return Ok(false);
    }
    if df {
        return Err(icmp::frag_needed(back_ifindex, src_ip_be, mtu));
    }
    if gso != 0 {
        return Err(Verdict::drop(Stat::DropFragFailed));
    }
    Ok(true)
}

/// Deliver as `v` says (a redirect to `out`, when it is one), as fragments when
/// [`check4`] found the packet needs them.
#[inline(always)]
pub fn deliver4(ctx: &TcContext, v: Verdict, out: u32) -> Verdict {
    // SAFETY: the context pointer is valid for the program's run.
    let mtu = unsafe { (*ctx.skb.skb).cb[CB_FRAGMENT] };
    if mtu == 0 {
        return v;
    }
    // Fragments are cut from the inner packet: through the VXLAN device, not encapsulated here.
    frag::request(encap::through_device(ctx, v, out), out, mtu as u16)
}

/// The `__sk_buff.cb` word that carries an IPv6 packet's next MTU from [`too_big6`] to
/// [`icmp6_error`] (see [`CB_FRAGMENT`] for why not a value).
const CB_TOO_BIG6: usize = 1;

/// End an IPv6 pipeline that found the packet too long for `mtu`: answered by the
/// pipeline's one ICMPv6 error ([`icmp6_error`]).
#[inline(always)]
pub fn too_big6(ctx: &TcContext, mtu: u16) -> Verdict {
    // SAFETY: the context pointer is valid for the program's run; cb is ours in TC.
    unsafe { (*ctx.skb.skb).cb[CB_TOO_BIG6] = u32::from(mtu) };
    Verdict::drop(Stat::DropFragNeeded)
}

/// The ICMPv6 error an IPv6 pipeline's verdict `v` calls for: `Some(0)` for time
/// exceeded, `Some(mtu)` for packet too big ([`too_big6`]), `None` for none.
#[inline(always)]
pub fn icmp6_error(ctx: &TcContext, v: &Verdict) -> Option<u32> {
    match v.stat {
        Stat::DropTtlExceeded => Some(0),
        // SAFETY: the context pointer is valid for the program's run.
        Stat::DropFragNeeded => Some(unsafe { (*ctx.skb.skb).cb[CB_TOO_BIG6] }),
        _ => None,
    }
}

/// The interface a delivery to a port leaves by: its local tap `ifindex`, or the tunnel
/// when the port is remote (0).
#[inline(always)]
pub fn out_ifindex(ifindex: u32, cfg: &HostConfig) -> u32 {
    if ifindex != 0 {
        ifindex
    } else {
        cfg.tunnel_ifindex
    }
}

/// Whether the IPv6 packet `f` is longer than MTU `mtu` (never for 0).
#[inline(always)]
pub fn exceeds6(ctx: &TcContext, f: &Flow6, mtu: u16) -> Result<bool, Verdict> {
    if mtu == 0 {
        return Ok(false);
    }
    let tcp = u32::from(f.proto == IPPROTO_TCP);
    match longer6(
        ctx.skb.skb,
        f.l4_off as u32,
        u32::from(f.payload_len),
        tcp,
        u32::from(mtu),
    ) {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Verdict::drop(Stat::DropMalformed)),
    }
}

/// [`exceeds6`]'s measure as a BPF-to-BPF function: inlined, its branches multiplied the
/// states the verifier walks through the rest of the IPv6 pipeline. 0: fits, 1: longer,
/// 2: malformed.
#[inline(never)]
fn longer6(skb: *mut __sk_buff, l4_off: u32, payload_len: u32, tcp: u32, mtu: u32) -> u32 {
    let ctx = TcContext::new(skb);
    let gso = gso_size(&ctx);
    let len = if gso != 0 {
        let l4 = if tcp != 0 {
            match tcp_hdr_len(&ctx, l4_off) {
                Ok(n) => n,
                Err(_) => return 2,
            }
        } else {
            UDP_HDR_LEN
        };
        l4_off.saturating_sub(ETH_LEN as u32) + l4 + gso
    } else {
        IP6_HDR_LEN as u32 + payload_len
    };
    u32::from(len > mtu)
}

/// The segment payload size of a GSO packet, 0 for any other.
#[inline(always)]
fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// The length of the TCP header at `at` (its data offset).
#[inline(always)]
fn tcp_hdr_len(ctx: &TcContext, at: u32) -> Result<u32, Verdict> {
    let b = ctx.load::<u8>(at as usize + 12).map_err(malformed)?;
    Ok(u32::from(b >> 4) * 4)
}

fn malformed<T>(_: T) -> Verdict {
    Verdict::drop(Stat::DropMalformed)
}
