//! Entry pipelines (top layer), one per program: identify where the frame comes from,
//! parse it once (`net::flow::Flow`) and run the stages. `finish` counts the verdict once,
//! reports a drop and turns the verdict into the program's return code (here and not in
//! `base::verdict`, because reporting reads the packet, whose accessors return verdicts).
//! Maps: writes DVR_STATS (and DVR_EVENTS through `base::events`).
pub mod ext;
pub mod ext_xdp;
pub mod tap;
pub mod tap_out;
pub mod tunnel;
pub mod underlay;

use aya_ebpf::programs::TcContext;
use dvr_common::stats::Stat;

use crate::{
    base::{
        events,
        maps::DVR_STATS,
        verdict::{ACT_ENCAP, ACT_FRAGMENT, ACT_ICMP, Verdict, settle},
    },
    net::{encap, frag},
    stage::icmp,
};

/// Count the verdict once, report a drop to `dvrctl monitor`, and turn the verdict into
/// the program's return code.
#[inline(always)]
pub fn finish(ctx: &TcContext, r: Result<Verdict, Verdict>) -> i32 {
    let v = settle(r);
    // Counted when it is sent (`finish_deferred`).
    if v.action == ACT_ICMP {
        return v.action;
    }
    if v.stat.is_drop() {
        events::report(ctx, v.stat);
    }
    count(v.stat);
    v.action
}

/// Count `stat` once: a verdict ([`finish`]), or a step counted besides it.
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(c) = DVR_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// After [`finish`] at the top of a program, the work a stage deferred to here, where the
/// stack is shallow (see `dvr_common::frag`): a verdict that asked for fragments
/// ([`Verdict::fragment`], counted as what it was) has them sent and counted (fragmented
/// or drop_frag_failed); an ICMP error ([`Verdict::icmp_error`]) is built, sent and
/// counted; a frame for the tunnel ([`Verdict::encap`], counted as what it was) is
/// encapsulated and sent, counted as tx_encap (or tx_encap_device, drop_encap).
#[inline(always)]
pub fn finish_deferred(ctx: &TcContext, action: i32) -> i32 {
    match action {
        ACT_FRAGMENT => finish(ctx, Ok(frag::send_pending(ctx))),
        ACT_ICMP => finish(ctx, Ok(icmp::send_pending(ctx))),
        ACT_ENCAP => finish(ctx, Ok(encap::send_pending(ctx))),
        _ => action,
    }
}

/// As [`finish`], for a program that only filters what another program already counted:
/// drops are counted and reported, passes are not.
#[inline(always)]
pub fn finish_filter(ctx: &TcContext, r: Result<Verdict, Verdict>) -> i32 {
    let v = settle(r);
    if v.stat.is_drop() {
        return finish(ctx, Ok(v));
    }
    v.action
}
