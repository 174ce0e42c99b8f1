//! Clocks (layer: base). Maps: none. Verdicts: none.
use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// Coarse monotonic clock (CLOCK_MONOTONIC_COARSE): cheap, and precise enough for idle
/// timeouts measured in seconds (conntrack, learned neighbours and VIPs, event rate limit).
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Precise monotonic clock (CLOCK_MONOTONIC): what the agent writes the HA fence against;
/// a fence is ~350 ms and the coarse clock may lag by a tick.
#[inline(always)]
pub fn precise_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}
