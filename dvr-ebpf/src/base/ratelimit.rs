//! The rate of the ICMP errors the router sends (layer: base): one per-CPU token bucket
//! (`dvr_common::frag::ICMP_PER_SEC`, burst `ICMP_BURST`) for time exceeded, fragmentation
//! needed and packet too big, as Linux limits its own. Maps: uses DVR_ICMP_RL. Verdicts:
//! none.
use dvr_common::{
    events::take_token_at,
    frag::{ICMP_BURST, ICMP_PER_SEC},
};

use crate::base::{clock, maps::DVR_ICMP_RL};

/// Whether one more ICMP error may be sent now (and take its token).
#[inline(always)]
pub fn icmp_error_allowed() -> bool {
    let Some(rl) = DVR_ICMP_RL.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    take_token_at(
        unsafe { &mut *rl },
        clock::coarse_ns(),
        ICMP_PER_SEC,
        ICMP_BURST,
    )
}
