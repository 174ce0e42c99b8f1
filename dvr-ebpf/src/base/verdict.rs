//! How a pipeline ends (layer: base): the TCX action to return and the one counter to bump,
//! and `redirect`, the one place a frame is sent out of an interface. Maps: none (the
//! verdict is counted by `entry::finish`). Verdicts: any; `redirect` yields its `stat` or
//! drop_redirect.
use aya_ebpf::{
    bindings::tcx_action_base::{TCX_DROP, TCX_NEXT, TCX_REDIRECT},
    helpers::bpf_redirect,
};
use dvr_common::stats::Stat;

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

    /// Delivered as `stat` says, but as fragments: the program's entry sends them
    /// (`net::frag::send_pending`, from a shallow stack) after counting `stat`.
    #[inline(always)]
    pub fn fragment(stat: Stat) -> Self {
        Self {
            stat,
            action: ACT_FRAGMENT,
        }
    }

    /// Sent into the tunnel, counted as `stat`, once the program's entry has encapsulated
    /// it (`net::encap::send_pending`, from a shallow stack).
    #[inline(always)]
    pub fn encap(stat: Stat) -> Self {
        Self {
            stat,
            action: ACT_ENCAP,
        }
    }

    /// Answered with an ICMP error that the program's entry builds and counts
    /// (`stage::icmp::send_pending`); not counted before.
    #[inline(always)]
    pub fn icmp_error() -> Self {
        Self {
            stat: Stat::DropFragNeeded,
            action: ACT_ICMP,
        }
    }

    /// Already redirected by a helper of its own (`bpf_redirect_neigh`), counted as `stat`.
    #[inline(always)]
    pub fn redirected(stat: Stat) -> Self {
        Self {
            stat,
            action: TCX_REDIRECT,
        }
    }

    /// Leave the frame to the next TCX program or the host stack, counted as `stat`.
    #[inline(always)]
    pub fn pass(stat: Stat) -> Self {
        Self {
            stat,
            action: TCX_NEXT,
        }
    }
}

/// Not a TCX action: "fragment, then redirect" (see [`Verdict::fragment`]); never returned
/// to the kernel.
pub const ACT_FRAGMENT: i32 = 0x4652;
/// Not a TCX action: "answer with the ICMP error noted" (see [`Verdict::icmp_error`]);
/// never returned to the kernel.
pub const ACT_ICMP: i32 = 0x4943;

/// Not a TCX action: "encapsulate for the tunnel, then redirect" (see [`Verdict::encap`]);
/// never returned to the kernel.
pub const ACT_ENCAP: i32 = 0x454e;

/// A pipeline ends either way with a verdict: `Err` only means "stopped early".
#[inline(always)]
pub fn settle(r: Result<Verdict, Verdict>) -> Verdict {
    match r {
        Ok(v) | Err(v) => v,
    }
}

/// Send the frame out of `ifindex` (`bpf_redirect`, no flags: egress). Counted as `stat`
/// when the helper returns TC_ACT_REDIRECT (== TCX_REDIRECT), else as drop_redirect.
#[inline(always)]
pub fn redirect(ifindex: u32, stat: Stat) -> Verdict {
    // SAFETY: bpf_redirect takes two integers and touches no memory of ours; it only records
    // the target on the per-CPU redirect state, which the kernel acts on after we return.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret == TCX_REDIRECT as i64 {
        Verdict {
            stat,
            action: TCX_REDIRECT,
        }
    } else {
        Verdict::drop(Stat::DropRedirect)
    }
}
