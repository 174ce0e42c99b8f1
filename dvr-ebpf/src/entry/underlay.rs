//! Entry pipeline for frames on the underlay NIC (TC ingress), where the agent decapsulates
//! VXLAN in BPF (`--tunnel-decap bpf`): a frame `base::vxlan::decap` takes (for this host's
//! tunnel address, not GSO) loses its outer headers, is counted rx_decap and goes through
//! the tunnel pipeline (`tunnel`) with the VNI and sender of its outer headers, as if the
//! VXLAN device had received it. Everything else (the host's own traffic, GSO VXLAN frames,
//! which keep UDP tunnel GRO in the device) passes on to the host stack, uncounted.
//! Maps: reads DVR_HOST_CONFIG (and those of `tunnel`). Verdicts: rx_decap, drop_decap,
//! those of `tunnel`.
use aya_ebpf::{
    bindings::{__sk_buff, tcx_action_base::TCX_NEXT},
    programs::TcContext,
};
use dvr_common::stats::Stat;

use super::{count, finish, finish_deferred, tunnel};
use crate::base::{maps::DVR_HOST_CONFIG, verdict::Verdict, vxlan};

#[inline(always)]
pub fn program(ctx: &TcContext) -> i32 {
    let Some(cfg) = DVR_HOST_CONFIG.get(0) else {
        return TCX_NEXT;
    };
    if cfg.ready == 0 {
        return TCX_NEXT;
    }
    match decap(ctx.skb.skb, cfg.tunnel_ip_host) {
        NOT_TAKEN => TCX_NEXT,
        BROKEN => finish(ctx, Err(Verdict::drop(Stat::DropDecap))),
        d => {
            count(Stat::RxDecap);
            let (vni, remote) = ((d >> 32) as u32 & VNI_MASK, d as u32);
            finish_deferred(ctx, tunnel::pipeline_decapped(ctx.skb.skb, vni, remote))
        }
    }
}

/// [`decap`]'s answers besides a taken frame's `TAKEN | vni << 32 | sender`: one register,
/// what a BPF-to-BPF call returns.
const NOT_TAKEN: u64 = 0;
const BROKEN: u64 = 1;
const TAKEN: u64 = 1 << 63;
const VNI_MASK: u32 = 0x00ff_ffff;

/// `base::vxlan::decap` in a BPF-to-BPF call of its own, so that its frame (the outer
/// headers it reads) is not stacked on the tunnel pipeline's.
#[inline(never)]
fn decap(skb: *mut __sk_buff, local_host: u32) -> u64 {
    let ctx = TcContext::new(skb);
    match vxlan::decap(&ctx, local_host) {
        Ok(None) => NOT_TAKEN,
        Ok(Some(d)) => TAKEN | (u64::from(d.vni & VNI_MASK) << 32) | u64::from(d.remote_host),
        Err(()) => BROKEN,
    }
}
