//! How a pipeline ends: the TCX action to return and the one counter to bump.
use aya_ebpf::bindings::tcx_action_base::{TCX_DROP, TCX_REDIRECT};
use dvr_common::stats::Stat;

use crate::maps::DVR_STATS;

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

/// Count the verdict once and turn it into the program's return code.
#[inline(always)]
pub fn finish(v: Verdict) -> i32 {
    if let Some(c) = DVR_STATS.get_ptr_mut(v.stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
    v.action
}
