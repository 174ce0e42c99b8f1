//! Entry pipeline for frames from the external network (TC ingress on the host's external
//! interface): ARP (`ext_arp` stage: proxy ARP and gateway learning), and for IPv4: parse,
//! then replies to a router's external IP (`snat::reply`) or traffic to a floating IP
//! (`fip::inbound`). For IPv6: neighbour discovery (`ext_nd`), echo requests to a router's
//! external IPv6 address (`icmp6`), packets into a tenant prefix served here (`north6`).
//! Everything else is the host's own business and passes on.
//! Maps: reads DVR_HOST_CONFIG, DVR_SNAT_IPS, DVR_SNAT_IPS6, DVR_EXT_ROUTE6 (and those of
//! the stages).
//! Verdicts: ext_pass, those of the stages, drop_not_ready, drop_malformed.
use aya_ebpf::{bindings::__sk_buff, maps::lpm_trie::Key, programs::TcContext};
use dvr_common::{config::HostConfig, ip6::Addr6, stats::Stat};

use super::{finish, finish_deferred};
use crate::{
    base::{
        maps::{DVR_EXT_ROUTE6, DVR_HOST_CONFIG, DVR_SNAT_IPS, DVR_SNAT_IPS6},
        packet::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Eth},
        verdict::Verdict,
    },
    net::{
        flow::{Flow, Parsed},
        flow6::Flow6,
    },
    stage::{ext_arp, ext_nd, fip, ha, icmp6, north6, snat},
};

/// The whole program for one frame: the pipeline, its verdict counted once, then the
/// fragments a floating IP's or an SNAT reply's delivery may ask for.
#[inline(always)]
pub fn program(ctx: &TcContext) -> i32 {
    finish_deferred(ctx, pipeline(ctx.skb.skb))
}

/// The pipeline in a BPF-to-BPF call of its own, so that the fragmenter's frame is not
/// stacked on its frame.
#[inline(never)]
fn pipeline(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    finish(&ctx, run(&ctx))
}

#[inline(always)]
fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let cfg = DVR_HOST_CONFIG
        .get(0)
        .ok_or(Verdict::drop(Stat::DropNotReady))?;
    if cfg.ready == 0 {
        return Err(Verdict::pass(Stat::ExtPass));
    }
    match Eth::at(ctx)?.proto() {
        ETH_P_ARP => ext_arp::stage(ctx, cfg),
        ETH_P_IP => ipv4(ctx, cfg),
        ETH_P_IPV6 => ipv6(ctx, cfg),
        _ => Ok(Verdict::pass(Stat::ExtPass)),
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    let f = Flow::parse(ctx);
    f.require(Parsed::Header)?;
    // SAFETY: read-only use of an agent-written hash value.
    if let Some(r) = unsafe { DVR_SNAT_IPS.get(&f.daddr) } {
        return snat::reply(ctx, &f, r, cfg);
    }
    fip::inbound(ctx, &f, cfg)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    let f = Flow6::parse(ctx);
    if f.require(Parsed::Header).is_err() {
        return Ok(Verdict::pass(Stat::ExtPass));
    }
    if f.is_nd() {
        return ext_nd::stage(ctx, &f, cfg);
    }
    let dst = Addr6 { ip: f.daddr };
    // SAFETY: read-only use of an agent-written hash value.
    if let Some(r) = unsafe { DVR_SNAT_IPS6.get(&dst) } {
        ha::check_router(r)?;
        // Back out of the interface the request came in on.
        return icmp6::echo_reply(ctx, &f, cfg.ext_ifindex);
    }
    if let Some(r) = DVR_EXT_ROUTE6.get(&Key::new(128, dst)) {
        return Ok(north6::inbound(ctx, &f, r, cfg));
    }
    Ok(Verdict::pass(Stat::ExtPass))
}
