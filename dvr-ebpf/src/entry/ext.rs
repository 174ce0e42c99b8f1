//! Entry pipeline for frames from the external network (TC ingress on the host's external
//! interface): ARP (`ext_arp` stage: proxy ARP and gateway learning), and for IPv4: parse,
//! then replies to a router's external IP (`snat::reply`) or traffic to a floating IP
//! (`fip::inbound`). Everything else is the host's own business and passes on.
//! Maps: reads DVR_HOST_CONFIG, DVR_SNAT_IPS (and those of the stages).
//! Verdicts: ext_pass, those of the stages, drop_not_ready, drop_malformed.
use aya_ebpf::programs::TcContext;
use dvr_common::{config::HostConfig, stats::Stat};

use crate::{
    base::{
        maps::{DVR_HOST_CONFIG, DVR_SNAT_IPS},
        packet::{ETH_P_ARP, ETH_P_IP, Eth},
        verdict::Verdict,
    },
    net::flow::{Flow, Parsed},
    stage::{ext_arp, fip, snat},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let cfg = DVR_HOST_CONFIG
        .get(0)
        .ok_or(Verdict::drop(Stat::DropNotReady))?;
    if cfg.ready == 0 {
        return Err(Verdict::pass(Stat::ExtPass));
    }
    match Eth::at(ctx)?.proto() {
        ETH_P_ARP => ext_arp::stage(ctx, cfg),
        ETH_P_IP => ipv4(ctx, cfg),
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
