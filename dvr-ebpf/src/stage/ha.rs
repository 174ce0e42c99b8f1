//! SNAT HA fence (stage, leaf; docs/HA.md): an HA router's centralized role (PAT and its
//! central FIPs) is served on this host only while the agent keeps
//! `DVR_HA_FENCE[router_id]` in the future, so a host cut off from etcd, or whose agent
//! died, stops serving by itself at most one fence period after its last accepted beat.
//! Entries without `SNAT_HA` / `FIP_HA` are never fenced. Maps: reads DVR_HA_FENCE.
//! Verdicts: drop_snat_standby.
use dvr_common::{
    nat::{FIP_HA, FipEntry, FipSrc},
    snat::{SNAT_HA, SnatRouter, fence_active},
    stats::Stat,
};

use crate::base::{clock, maps::DVR_HA_FENCE, verdict::Verdict};

/// Whether this host holds the live fence of `router_id`, on the precise clock (what the
/// agent writes against), not the coarse one conntrack uses.
#[inline(always)]
fn fenced_in(router_id: u32) -> bool {
    // SAFETY: read-only copy of an agent-written u64 (a single aligned store).
    match unsafe { DVR_HA_FENCE.get(&router_id) } {
        Some(until) => fence_active(Some(*until), clock::precise_ns()),
        None => false,
    }
}

/// True when router `r` is served here: not HA, or HA with a live fence.
#[inline(always)]
pub fn serves_router(r: &SnatRouter) -> bool {
    r.flags & SNAT_HA == 0 || fenced_in(r.router_id)
}

/// True when central FIP `fip` is served here: not HA, or its router's fence is live.
#[inline(always)]
pub fn serves_fip(fip: &FipEntry) -> bool {
    fip.flags & FIP_HA == 0 || fenced_in(fip.router_id)
}

/// `Err(drop_snat_standby)` unless router `r` is served here.
#[inline(always)]
pub fn check_router(r: &SnatRouter) -> Result<(), Verdict> {
    if serves_router(r) {
        Ok(())
    } else {
        Err(Verdict::drop(Stat::DropSnatStandby))
    }
}

/// `Err(drop_snat_standby)` when a VM sends through a central FIP of an HA router this host
/// does not serve now.
#[inline(always)]
pub fn check_fip_src(src: &FipSrc) -> Result<(), Verdict> {
    if src.flags & FIP_HA == 0 || fenced_in(src.router_id) {
        Ok(())
    } else {
        Err(Verdict::drop(Stat::DropSnatStandby))
    }
}
