//! Connection tracking (layer: net): the key of a flow direction, accounting a packet to a
//! tracked direction, and creating both directions of a new flow; for IPv4 (`DVR_CT`) and,
//! security group flows only, IPv6 (`DVR_CT6`, whose other direction is always the reversed
//! key: nothing is translated). Maps: reads and writes DVR_CT, DVR_CT6. Verdicts:
//! drop_ct_insert.
use aya_ebpf::bindings::BPF_NOEXIST;
use dvr_common::{
    ip6::Ip6,
    nat::{CT_SG, CT_SG_REPLY, CtEntry, CtKey, CtKey6},
    stats::Stat,
};

use crate::{
    base::{
        clock,
        maps::{DVR_CT, DVR_CT6},
        verdict::Verdict,
    },
    net::{flow::Flow, flow6::Flow6},
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

#[inline(always)]
pub fn key6(zone: u32, saddr: &Ip6, daddr: &Ip6, sport: u16, dport: u16, proto: u8) -> CtKey6 {
    CtKey6 {
        zone,
        saddr: *saddr,
        daddr: *daddr,
        sport_be: sport,
        dport_be: dport,
        proto,
        _pad: [0; 3],
    }
}

/// The key of IPv6 packet `f` as seen in `zone`.
#[inline(always)]
pub fn flow_key6(zone: u32, f: &Flow6) -> CtKey6 {
    key6(zone, &f.saddr, &f.daddr, f.sport, f.dport, f.proto)
}

/// As [`track`], in `DVR_CT6`, for a packet of `len` bytes with TCP flags `tcp_flags`;
/// returns the entry's kind.
#[inline(always)]
pub fn track6(k: &CtKey6, len: u64, tcp_flags: u8) -> Option<u8> {
    let e = DVR_CT6.get_ptr_mut(k)?;
    // SAFETY: as in `track`.
    unsafe {
        (*e).last_seen_ns = clock::coarse_ns();
        (*e).packets += 1;
        (*e).bytes += len;
        (*e).tcp_flags |= tcp_flags;
        Some((*e).kind)
    }
}

/// Create both directions of a new IPv6 flow at `k` (this packet, `len` bytes with TCP
/// flags `tcp_flags`) and its reversed key, which goes in first (as in [`create`]): `kind`
/// with `CT_SG_REPLY` there, `kind` with `CT_SG` here, both with `fixed_be` and the rule id
/// (`_reserved`). One entry and one key on the stack (`k` is reversed in place for the
/// first insert): the caller's frame must stay small (see `sg::check6`).
#[inline(always)]
pub fn create6(
    k: &mut CtKey6,
    kind: u8,
    fixed_be: u32,
    rule_id: u32,
    tcp_flags: u8,
    len: u64,
) -> Result<(), Verdict> {
    let t = clock::coarse_ns();
    let mut e = CtEntry {
        peer_zone: k.zone,
        kind: kind | CT_SG_REPLY,
        fixed_be,
        _reserved: rule_id,
        created_ns: t,
        last_seen_ns: t,
        ..Default::default()
    };
    k.reverse();
    let peer = insert6(k, &e);
    k.reverse();
    peer?;
    e.kind = kind | CT_SG;
    e.tcp_flags = tcp_flags;
    e.packets = 1;
    e.bytes = len;
    insert6(k, &e)
}

/// Insert a new entry; one another CPU created meanwhile (-EEXIST) is as good as ours.
#[inline(always)]
fn insert6(k: &CtKey6, e: &CtEntry) -> Result<(), Verdict> {
    match DVR_CT6.insert(k, e, BPF_NOEXIST as u64) {
        Err(err) if err != -17 => Err(Verdict::drop(Stat::DropCtInsert)),
        _ => Ok(()),
    }
}

/// Whether `k` is a tracked IPv6 direction (no accounting).
#[inline(always)]
pub fn tracked6(k: &CtKey6) -> bool {
    DVR_CT6.get_ptr(k).is_some()
}

/// Delete both directions of the IPv6 flow whose entry sits at `k` (reversed on return).
#[inline(always)]
pub fn remove_flow6(k: &mut CtKey6) {
    let _ = DVR_CT6.remove(&*k);
    k.reverse();
    let _ = DVR_CT6.remove(&*k);
}
