//! Conntrack policy in user space: flow state from the TCP flags each direction has seen,
//! idle timeouts per protocol and state, and the sweep that expires idle flows and purges
//! flows of floating IPs this host no longer serves and security group flows of ports it no
//! longer filters. Both directions of a flow always go together.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use dvr_common::{
    nat::{CT_PAT, CT_SG, CT_SG_REPLY, CtEntry, CtKey, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    port::{LocalPort, PORT_FLAG_SG, PORT_FLAG_SG_STATELESS},
    sg::SG_ZONE,
};

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
    /// Translated flows of a FIP mapping or SNAT address no longer served here.
    pub purged: usize,
    /// Security group flows of a port no longer filtered here (gone, or its tap recreated).
    pub sg_purged: usize,
}

/// What this host owns flows for: floating IP mappings (`fip -> fixed`) and router
/// external IPs it does port-address translation for (all network order), and the
/// conntrack zones of the local ports whose security groups it tracks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owned {
    pub fips: BTreeMap<u32, u32>,
    pub snat_ips: BTreeSet<u32>,
    /// `SG_ZONE | tap ifindex` of every local port with stateful security groups.
    pub sg_zones: BTreeSet<u32>,
}

/// The conntrack zones of the ports of `local_ports` (the compiled `DVR_LOCAL_PORTS`) whose
/// security group flows the datapath tracks: `PORT_FLAG_SG` without
/// `PORT_FLAG_SG_STATELESS` (a stateless port tracks nothing, so entries left from when
/// its groups were stateful are purged rather than kept for nothing).
pub fn sg_zones<'a>(
    local_ports: impl IntoIterator<Item = (&'a u32, &'a LocalPort)>,
) -> BTreeSet<u32> {
    local_ports
        .into_iter()
        .filter(|(_, p)| p.flags & (PORT_FLAG_SG | PORT_FLAG_SG_STATELESS) == PORT_FLAG_SG)
        .map(|(ifindex, _)| SG_ZONE | ifindex)
        .collect()
}

/// True for a security group entry (either direction): its kind says so, and its zone is
/// a port's (`SG_ZONE | ifindex`), which no NAT entry ever uses.
pub fn is_sg(k: &CtKey, e: &CtEntry) -> bool {
    e.kind & (CT_SG | CT_SG_REPLY) != 0 || k.zone & SG_ZONE != 0
}

/// Which entries to delete: idle past their timeout, or kept for something this host no
/// longer owns (a FIP mapping it does not serve, a router it no longer SNATs, a port whose
/// security group flows it no longer tracks). Pure.
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
        let sg = is_sg(k, e);
        let stale = if sg {
            !owned.sg_zones.contains(&k.zone)
        } else if e.kind & CT_PAT != 0 {
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
            if stale && sg {
                swept.sg_purged += 1;
            } else if stale {
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

    /// Both entries of a security group flow of the port on tap `ifindex`: the VM (10) to
    /// 20, TCP 1 -> 2, admitted by rule 0xabcd.
    fn sg_pair(ifindex: u32, seen: u64, fa: u8, fb: u8) -> BTreeMap<CtKey, CtEntry> {
        let k = CtKey {
            zone: SG_ZONE | ifindex,
            saddr_be: 10,
            daddr_be: 20,
            sport_be: 1,
            dport_be: 2,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: 10,
            peer_zone: k.zone,
            kind: CT_SG,
            tcp_flags: fa,
            _reserved: 0xabcd,
            last_seen_ns: seen,
            ..Default::default()
        };
        let pk = k.peer(&e);
        let pe = CtEntry {
            nat_ip_be: 20,
            kind: CT_SG_REPLY,
            tcp_flags: fb,
            ..e
        };
        assert_eq!(pk.peer(&pe), k, "the reply's peer is the original");
        BTreeMap::from([(k, e), (pk, pe)])
    }

    #[test]
    fn sg_zones_are_the_tracked_ports() {
        let port = |flags| LocalPort {
            flags,
            ..Default::default()
        };
        let ports = BTreeMap::from([
            (3, port(PORT_FLAG_SG)),
            (4, port(PORT_FLAG_SG | PORT_FLAG_SG_STATELESS)),
            (5, port(0)),
            (6, port(PORT_FLAG_SG | dvr_common::port::PORT_FLAG_DOWN)),
        ]);
        assert_eq!(sg_zones(&ports), BTreeSet::from([SG_ZONE | 3, SG_ZONE | 6]));
    }

    #[test]
    fn sg_flows_of_served_ports_are_kept_and_expire_by_timeouts() {
        let t = Timeouts::default();
        let sec = 1_000_000_000;
        // No FIP or SNAT address served: the entries translate nothing and must not be
        // purged for it.
        let owned = Owned {
            sg_zones: BTreeSet::from([SG_ZONE | 5]),
            ..Default::default()
        };
        let est = sg_pair(5, 0, TCP_ACK, TCP_ACK);
        assert_eq!(
            plan_sweep(&est, 100 * sec, &t, &owned),
            (Vec::new(), Swept::default())
        );
        let syn = sg_pair(5, 0, TCP_SYN, 0);
        let (d, s) = plan_sweep(&syn, 61 * sec, &t, &owned);
        assert_eq!(d.len(), 2, "both directions");
        assert_eq!(
            s,
            Swept {
                expired: 1,
                ..Default::default()
            }
        );
        // A lone direction (its peer already gone) expires too.
        let mut lone = sg_pair(5, 0, TCP_SYN, TCP_SYN | TCP_ACK);
        lone.pop_first();
        assert_eq!(plan_sweep(&lone, 61 * sec, &t, &owned).0.len(), 1);
    }

    #[test]
    fn sg_flows_of_ports_no_longer_tracked_are_purged_and_nat_flows_untouched() {
        let t = Timeouts::default();
        let mut flows = sg_pair(5, 0, TCP_ACK, TCP_ACK);
        flows.extend(sg_pair(6, 0, TCP_ACK, TCP_ACK));
        flows.extend(pair(10, 20, 0, TCP_ACK, TCP_ACK));
        let owned = Owned {
            fips: BTreeMap::from([(10, 20)]),
            sg_zones: BTreeSet::from([SG_ZONE | 6]),
            ..Default::default()
        };
        let (d, s) = plan_sweep(&flows, 0, &t, &owned);
        assert_eq!(
            s,
            Swept {
                sg_purged: 1,
                ..Default::default()
            }
        );
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|k| k.zone == SG_ZONE | 5), "{d:?}");
        // Nothing served at all: every flow goes, each counted where it belongs.
        let (d, s) = plan_sweep(&flows, 0, &t, &Owned::default());
        assert_eq!(d.len(), 6);
        assert_eq!((s.purged, s.sg_purged, s.expired), (1, 2, 0));
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
