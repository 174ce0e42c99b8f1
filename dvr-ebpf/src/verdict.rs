//! How a pipeline ends: the TCX action to return and the one counter to bump.
use aya_ebpf::bindings::tcx_action_base::{TCX_DROP, TCX_REDIRECT};
use dvr_common::stats::Stat;

use aya_ebpf::programs::TcContext;
use dvr_common::events::{DropEvent, take_token};

use crate::{
    maps::{DVR_EVENTS, DVR_EVENTS_RL, DVR_STATS},
    packet::{ETH_LEN, ETH_P_IP, EthHdr, Ipv4Hdr, be16, ptr_at},
};

/// Put a drop event on the ring, within the per-CPU rate limit (a full ring loses the
/// event, never the verdict).
#[inline(always)]
fn report(ctx: &TcContext, stat: Stat) {
    let Some(rl) = DVR_EVENTS_RL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    if !take_token(unsafe { &mut *rl }, crate::nat::now()) {
        return;
    }
    let mut ev = DropEvent {
        ts_ns: crate::nat::now(),
        // SAFETY: the context pointer is valid for the program's run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        reason: stat as u32,
        len: ctx.len(),
        ..Default::default()
    };
    if let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) {
        // SAFETY: bounds-checked by ptr_at.
        unsafe {
            ev.src_mac = (*eth).src;
            ev.dst_mac = (*eth).dst;
            ev.ethertype = be16((*eth).proto);
        }
        if ev.ethertype == ETH_P_IP {
            if let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
                // SAFETY: bounds-checked by ptr_at.
                unsafe {
                    ev.proto = (*ip).proto;
                    ev.saddr_be = u32::from_ne_bytes((*ip).saddr);
                    ev.daddr_be = u32::from_ne_bytes((*ip).daddr);
                }
            }
        }
    }
    let _ = DVR_EVENTS.output::<DropEvent>(&ev, 0);
}

#[derive(Clone, Copy)]
pub struct Verdict {
    pub stat: Stat,
    pub action: i32,
}

impl Verdict {
    #[inline(always)]
    pub fn drop(stat: Stat) -> Self {
        Self {
            stat,
            action: TCX_DROP,
        }
    }

    /// The result of `bpf_redirect`: TC_ACT_REDIRECT on success (== TCX_REDIRECT),
    /// TC_ACT_SHOT otherwise.
    #[inline(always)]
    pub fn redirect(stat: Stat, ret: i64) -> Self {
        if ret == TCX_REDIRECT as i64 {
            Self {
                stat,
                action: TCX_REDIRECT,
            }
        } else {
            Self::drop(Stat::DropRedirect)
        }
    }
}

/// A pipeline ends either way with a verdict: `Err` only means "stopped early".
#[inline(always)]
pub fn settle(r: Result<Verdict, Verdict>) -> Verdict {
    match r {
        Ok(v) | Err(v) => v,
    }
}

/// Count the verdict once, report a drop to `dvrctl monitor`, and turn the verdict into
/// the program's return code.
#[inline(always)]
pub fn finish(ctx: &TcContext, v: Verdict) -> i32 {
    if v.stat.is_drop() {
        report(ctx, v.stat);
    }
    if let Some(c) = DVR_STATS.get_ptr_mut(v.stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
    v.action
}
