//! Conntrack policy in user space: flow state from the TCP flags each direction has seen,
//! idle timeouts per protocol and state, and the sweep that expires idle flows and purges
//! flows of floating IPs this host no longer serves. Both directions of a flow always go
//! together.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use dvr_common::nat::{CT_PAT, CtEntry, CtKey, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use crate::{
    clock,
    maps::{HostMaps, MapsError},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;

/// Idle timeouts (Cilium's defaults, shorter for TCP established than Linux's 5 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_syn: Duration,
    pub tcp_fin: Duration,
    pub udp: Duration,
    pub icmp: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(21_600),
            tcp_syn: Duration::from_secs(60),
            tcp_fin: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    SynSent,
    Established,
    FinWait,
    Closed,
    /// Any non-TCP flow.
    Open,
}

impl FlowState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::Established => "established",
            Self::FinWait => "fin_wait",
            Self::Closed => "closed",
            Self::Open => "open",
        }
    }
}

/// State of a flow from the TCP flags seen in each direction.
pub fn state(proto: u8, flags_a: u8, flags_b: u8) -> FlowState {
    if proto != IPPROTO_TCP {
        return FlowState::Open;
    }
    let both = flags_a | flags_b;
    if both & TCP_RST != 0 || (flags_a & TCP_FIN != 0 && flags_b & TCP_FIN != 0) {
        FlowState::Closed
    } else if both & TCP_FIN != 0 {
        FlowState::FinWait
    } else if flags_a & TCP_ACK != 0 && flags_b & TCP_ACK != 0 {
        FlowState::Established
    } else if both & TCP_SYN != 0 {
        FlowState::SynSent
    } else {
        // Picked up mid-stream (e.g. after a restart) with one direction seen so far.
        FlowState::Established
    }
}

pub fn timeout(proto: u8, st: FlowState, t: &Timeouts) -> Duration {
    match (proto, st) {
        (IPPROTO_TCP, FlowState::Established) => t.tcp_established,
        (IPPROTO_TCP, FlowState::SynSent) => t.tcp_syn,
        (IPPROTO_TCP, _) => t.tcp_fin,
        (IPPROTO_UDP, _) => t.udp,
        (IPPROTO_ICMP, _) => t.icmp,
        _ => t.other,
    }
}

/// What one sweep removed (flows, i.e. pairs of entries).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    pub purged: usize,
}

/// What this host translates for: floating IP mappings (`fip -> fixed`) and router
/// external IPs it does port-address translation for (all network order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owned {
    pub fips: BTreeMap<u32, u32>,
    pub snat_ips: BTreeSet<u32>,
}

/// Which entries to delete: idle past their timeout, or translated for something this host
/// no longer owns (a FIP mapping it does not serve, a router it no longer SNATs). Pure.
pub fn plan_sweep(
    entries: &BTreeMap<CtKey, CtEntry>,
    now: u64,
    t: &Timeouts,
    owned: &Owned,
) -> (Vec<CtKey>, Swept) {
    let mut doomed = Vec::new();
    let mut swept = Swept::default();
    for (k, e) in entries {
        let peer_key = k.peer(e);
        let peer = entries.get(&peer_key);
        // Visit each pair once: from its lower key, or alone when the peer is gone.
        if peer.is_some() && peer_key < *k {
            continue;
        }
        let stale = if e.kind & CT_PAT != 0 {
            !owned.snat_ips.contains(&e.fip_be)
        } else {
            owned.fips.get(&e.fip_be) != Some(&e.fixed_be)
        };
        let last = peer.map_or(e.last_seen_ns, |p| p.last_seen_ns.max(e.last_seen_ns));
        let st = state(k.proto, e.tcp_flags, peer.map_or(0, |p| p.tcp_flags));
        let idle = Duration::from_nanos(now.saturating_sub(last));
        let expired = idle > timeout(k.proto, st, t);
        if stale || expired {
            doomed.push(*k);
            if peer.is_some() {
                doomed.push(peer_key);
            }
            if stale {
                swept.purged += 1;
            } else {
                swept.expired += 1;
            }
        }
    }
    (doomed, swept)
}

/// Expire and purge in the live map.
pub fn sweep(maps: &mut HostMaps, t: &Timeouts, owned: &Owned) -> Result<Swept, MapsError> {
    let entries = maps.ct.read()?;
    let (doomed, swept) = plan_sweep(&entries, clock::conntrack_now_ns(), t, owned);
    for k in &doomed {
        maps.ct.del(k)?;
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvr_common::nat::{CT_DNAT, CT_SNAT};

    fn pair(fip: u32, fixed: u32, seen: u64, fa: u8, fb: u8) -> BTreeMap<CtKey, CtEntry> {
        let k = CtKey {
            zone: 0,
            saddr_be: 7,
            daddr_be: fip,
            sport_be: 1,
            dport_be: 2,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: fixed,
            fip_be: fip,
            fixed_be: fixed,
            peer_zone: 101,
            kind: CT_DNAT,
            tcp_flags: fa,
            last_seen_ns: seen,
            ..Default::default()
        };
        let pk = k.peer(&e);
        let pe = CtEntry {
            nat_ip_be: fip,
            peer_zone: 0,
            kind: CT_SNAT,
            tcp_flags: fb,
            ..e
        };
        BTreeMap::from([(k, e), (pk, pe)])
    }

    #[test]
    fn tcp_states() {
        assert_eq!(state(IPPROTO_TCP, TCP_SYN, 0), FlowState::SynSent);
        assert_eq!(
            state(IPPROTO_TCP, TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK),
            FlowState::Established
        );
        assert_eq!(
            state(IPPROTO_TCP, TCP_ACK | TCP_FIN, TCP_ACK),
            FlowState::FinWait
        );
        assert_eq!(state(IPPROTO_TCP, TCP_FIN, TCP_FIN), FlowState::Closed);
        assert_eq!(state(IPPROTO_TCP, TCP_ACK, TCP_RST), FlowState::Closed);
        assert_eq!(state(IPPROTO_UDP, 0, 0), FlowState::Open);
    }

    #[test]
    fn idle_flows_expire_as_pairs_by_state() {
        let t = Timeouts::default();
        let served = Owned {
            fips: BTreeMap::from([(10, 20)]),
            ..Default::default()
        };
        let sec = 1_000_000_000;
        let est = pair(10, 20, 0, TCP_ACK, TCP_ACK);
        assert!(
            plan_sweep(&est, 100 * sec, &t, &served).0.is_empty(),
            "established lives long"
        );
        let syn = pair(10, 20, 0, TCP_SYN, 0);
        let (d, s) = plan_sweep(&syn, 61 * sec, &t, &served);
        assert_eq!(
            (d.len(), s.expired),
            (2, 1),
            "both directions of an unanswered SYN go"
        );
        let closed = pair(10, 20, 0, TCP_FIN | TCP_ACK, TCP_FIN | TCP_ACK);
        assert_eq!(plan_sweep(&closed, 11 * sec, &t, &served).0.len(), 2);
    }

    #[test]
    fn port_translated_flows_live_as_long_as_their_router_is_snatted_here() {
        let t = Timeouts::default();
        let mut flows = pair(10, 20, 0, TCP_ACK, TCP_ACK);
        for e in flows.values_mut() {
            e.kind |= CT_PAT;
        }
        let owned = Owned {
            snat_ips: BTreeSet::from([10]),
            ..Default::default()
        };
        assert!(plan_sweep(&flows, 0, &t, &owned).0.is_empty());
        let (d, s) = plan_sweep(&flows, 0, &t, &Owned::default());
        assert_eq!((d.len(), s.purged), (2, 1));
    }

    #[test]
    fn flows_of_unserved_or_remapped_fips_are_purged() {
        let t = Timeouts::default();
        let flows = pair(10, 20, 0, TCP_ACK, TCP_ACK);
        let (d, s) = plan_sweep(&flows, 0, &t, &Owned::default());
        assert_eq!((d.len(), s.purged), (2, 1));
        let remapped = Owned {
            fips: BTreeMap::from([(10, 21)]),
            ..Default::default()
        };
        let (d, _) = plan_sweep(&flows, 0, &t, &remapped);
        assert_eq!(d.len(), 2, "FIP now maps to another fixed IP");
    }
}
