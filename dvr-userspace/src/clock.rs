//! Every clock the agent reads, in one place. Each reading names what it is compared with,
//! because the datapath uses two kernel clocks and mixing them up shifts a deadline by the
//! difference between them:
//!
//! - [`conntrack_now_ns`]: CLOCK_MONOTONIC_COARSE, what the datapath stamps conntrack
//!   entries with (`bpf_ktime_get_coarse_ns`);
//! - [`fence_now_ns`]: CLOCK_MONOTONIC, what the datapath compares the HA fences
//!   (`DVR_HA_FENCE`) with (`bpf_ktime_get_ns`).
//!
//! Durations and deadlines that never leave user space use [`std::time::Instant`].

/// Current time on the clock the datapath stamps conntrack entries with
/// (`bpf_ktime_get_coarse_ns` = CLOCK_MONOTONIC_COARSE).
pub fn conntrack_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Now on the clock of `DVR_HA_FENCE` values: CLOCK_MONOTONIC in ns, what the datapath's
/// `bpf_ktime_get_ns()` reads (not the coarse clock conntrack timestamps use).
pub fn fence_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Now on clock `id`, in nanoseconds.
fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
