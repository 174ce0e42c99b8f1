//! Connection tracking (layer: net): the key of a flow direction, accounting a packet to a
//! tracked direction, and creating both directions of a new flow. Maps: reads and writes
//! DVR_CT. Verdicts: drop_ct_insert.
use aya_ebpf::bindings::BPF_NOEXIST;
use dvr_common::{
    nat::{CtEntry, CtKey},
    stats::Stat,
};

use crate::{
    base::{clock, maps::DVR_CT, verdict::Verdict},
    net::flow::Flow,
};

#[inline(always)]
pub fn key(zone: u32, saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        zone,
        saddr_be: saddr,
        daddr_be: daddr,
        sport_be: sport,
        dport_be: dport,
        proto,
        _pad: [0; 3],
    }
}

/// The key of `f` as seen in `zone`.
#[inline(always)]
pub fn flow_key(zone: u32, f: &Flow) -> CtKey {
    key(zone, f.saddr, f.daddr, f.sport, f.dport, f.proto)
}

/// Look a direction up and account the packet to it; returns a copy of the entry.
#[inline(always)]
pub fn track(k: &CtKey, f: &Flow) -> Option<CtEntry> {
    let e = DVR_CT.get_ptr_mut(k)?;
    // SAFETY: map value pointer from a successful lookup; concurrent updates from other
    // CPUs may interleave, which only makes the counters approximate.
    unsafe {
        (*e).last_seen_ns = clock::coarse_ns();
        (*e).packets += 1;
        (*e).bytes += f.tot_len as u64;
        (*e).tcp_flags |= f.tcp_flags;
        Some(*e)
    }
}

/// Create both directions of a new flow. The reverse entry goes in first, so a reply can
/// never find half a flow; an entry another CPU created meanwhile is kept.
#[inline(always)]
pub fn create(
    k: &CtKey,
    e: &CtEntry,
    peer: &CtKey,
    peer_e: &CtEntry,
    f: &Flow,
) -> Result<(), Verdict> {
    let t = clock::coarse_ns();
    let mut pe = *peer_e;
    pe.created_ns = t;
    pe.last_seen_ns = t;
    let mut fe = *e;
    fe.created_ns = t;
    fe.last_seen_ns = t;
    fe.packets = 1;
    fe.bytes = f.tot_len as u64;
    // -EEXIST (17) means another CPU won the race: its entry is as good as ours.
    for (kk, vv) in [(peer, &pe), (k, &fe)] {
        if let Err(err) = DVR_CT.insert(kk, vv, BPF_NOEXIST as u64) {
            if err != -17 {
                return Err(Verdict::drop(Stat::DropCtInsert));
            }
        }
    }
    Ok(())
}

/// Replace the entry at `k` (a stale one from a previous mapping, or none) with a new
/// flow: `e` for this direction, `peer_e` for the reply.
#[inline(always)]
pub fn replace(k: &CtKey, e: &CtEntry, peer_e: &CtEntry, f: &Flow) -> Result<(), Verdict> {
    let peer = k.peer(e);
    let _ = DVR_CT.remove(k);
    create(k, e, &peer, peer_e, f)
}

/// Delete both directions of the flow whose entry `e` sits at `k`.
#[inline(always)]
pub fn remove_flow(k: &CtKey, e: &CtEntry) {
    let peer = k.peer(e);
    let _ = DVR_CT.remove(&peer);
    let _ = DVR_CT.remove(k);
}
