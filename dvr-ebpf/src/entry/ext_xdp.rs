//! Entry pipeline of the external NIC's XDP program (native XDP, in front of `ext`, the TC
//! program on the same NIC): the frames that need nothing but a lookup and a rewrite are
//! finished here, before the kernel builds a socket buffer for them: ARP requests this
//! host answers (`ext_arp::xdp`, sent back out of the NIC by a redirect to it: `XDP_TX` on
//! a veth only reaches a peer that runs an XDP program of its own), and plain TCP/UDP
//! packets to a floating IP whose port is here without security groups
//! (`fip::inbound_xdp`, redirected to its tap). Everything else (`XDP_PASS`) reaches the TC
//! program untouched, which handles it as it would without XDP; nothing is dropped here.
//! Frames finished here are counted with their verdict and as xdp_ext; passed frames are
//! counted by TC.
//! Maps: reads DVR_HOST_CONFIG, DVR_SNAT_IPS (and those of the stages).
//! Verdicts: ext_arp_reply, fip_dnat.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use dvr_common::stats::Stat;

use super::count;
use crate::{
    base::{
        maps::{DVR_HOST_CONFIG, DVR_SNAT_IPS},
        packet::{ETH_P_ARP, ETH_P_IP, Eth},
    },
    net::flow::Flow,
    stage::{ext_arp, fip},
};

#[inline(always)]
pub fn program(ctx: &XdpContext) -> u32 {
    match run(ctx) {
        Some((action, stat)) => {
            count(stat);
            count(Stat::XdpExt);
            action
        }
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn run(ctx: &XdpContext) -> Option<(u32, Stat)> {
    let cfg = DVR_HOST_CONFIG.get(0)?;
    if cfg.ready == 0 {
        return None;
    }
    match Eth::at(ctx).ok()?.proto() {
        ETH_P_ARP => {
            let stat = ext_arp::xdp(ctx, cfg)?;
            // SAFETY: the context pointer is valid for the program's run; a plain helper call.
            let action = unsafe { bpf_redirect((*ctx.ctx).ingress_ifindex, 0) } as u32;
            Some((action, stat))
        }
        ETH_P_IP => {
            let f = Flow::parse_simple(ctx)?;
            // SAFETY: read-only use of an agent-written hash value.
            if unsafe { DVR_SNAT_IPS.get(&f.daddr) }.is_some() {
                return None;
            }
            fip::inbound_xdp(ctx, &f)
        }
        _ => None,
    }
}
