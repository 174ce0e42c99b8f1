//! Conntrack policy in user space: flow state from the TCP flags each direction has seen,
//! idle timeouts per protocol and state, and the sweep that expires idle flows and purges
//! flows of floating IPs this host no longer serves, and security group flows of ports gone
//! or no longer admitted by their port's rules (the re-check after a policy change). Both
//! directions of a flow always go together. IPv6 security group flows (`DVR_CT6`) are swept
//! the same way; their other direction is the reversed key.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use dvr_common::{
    nat::{
        CT_PAT, CT_SG, CT_SG_INGRESS, CT_SG_REPLY, CtEntry, CtKey, CtKey6, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    sg::{SG_EGRESS, SG_INGRESS, SgRemote6Key, SgRemoteKey, SgRule, SgRuleKey},
};

use crate::{
    clock,
    compile::{SgRemotes, sg_admit},
    maps::{HostMaps, MapsError},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

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
        (IPPROTO_ICMP | IPPROTO_ICMPV6, _) => t.icmp,
        _ => t.other,
    }
}

/// What one sweep removed (flows, i.e. pairs of entries).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    /// Translated flows of a FIP mapping or SNAT address no longer served here.
    pub purged: usize,
    /// Security group flows no rule of their port admits any more, or of a port gone.
    pub sg_purged: usize,
}

/// What this host translates for: floating IP mappings (`fip -> fixed`) and router
/// external IPs it does port-address translation for (all network order); and the security
/// group policies of its ports, against which tracked flows are re-checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Owned {
    pub fips: BTreeMap<u32, u32>,
    pub snat_ips: BTreeSet<u32>,
    pub sg: Arc<SgOwned>,
}

/// The stateful security group policies this host applies, as last written to the maps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SgOwned {
    /// Conntrack zone (`SG_ZONE | tap ifindex`) of each port with a stateful policy -> the
    /// policy id.
    pub zones: BTreeMap<u32, u32>,
    pub remote: BTreeMap<(u32, SgRemoteKey), u32>,
    pub remote6: BTreeMap<(u32, SgRemote6Key), u32>,
    pub rules: BTreeMap<(u32, SgRuleKey), SgRule>,
}

impl SgOwned {
    /// Whether the port of a security group flow still admits it: its original direction
    /// (`k`, kind `kind`, `port_be` what the rules matched: the destination port or ICMP
    /// type and code, which the datapath keeps in the entry's `fixed_be`) is looked up as the
    /// datapath would.
    pub fn admits(&self, k: &CtKey, kind: u8, port_be: u16) -> bool {
        let (s, d) = (k.saddr_be, k.daddr_be);
        self.admits_in(&self.remote, k.zone, kind, k.proto, port_be, (s, d))
    }

    /// [`SgOwned::admits`] for an IPv6 flow's original direction.
    pub fn admits6(&self, k: &CtKey6, kind: u8, port_be: u16) -> bool {
        let (s, d) = (k.saddr, k.daddr);
        self.admits_in(&self.remote6, k.zone, kind, k.proto, port_be, (s, d))
    }

    /// [`SgOwned::admits`] over the remote trie of the flow's family; `(saddr, daddr)` its
    /// original direction's addresses.
    fn admits_in<R: SgRemotes>(
        &self,
        remote: &R,
        zone: u32,
        kind: u8,
        proto: u8,
        port_be: u16,
        (saddr, daddr): (R::Addr, R::Addr),
    ) -> bool {
        let Some(&policy) = self.zones.get(&zone) else {
            return false;
        };
        let (dir, remote_ip) = if kind & CT_SG_INGRESS != 0 {
            (SG_INGRESS, saddr)
        } else {
            (SG_EGRESS, daddr)
        };
        sg_admit(remote, &self.rules, policy, dir, proto, port_be, remote_ip).is_some()
    }
}

/// True for a security group entry (either direction): its kind says so, and its zone is
/// a port's (`SG_ZONE | ifindex`), which no NAT entry ever uses.
pub fn is_sg(k: &CtKey, e: &CtEntry) -> bool {
    e.kind & (CT_SG | CT_SG_REPLY) != 0 || k.zone & dvr_common::sg::SG_ZONE != 0
}

/// Whether the flow of entry `e` at `k` (peer `peer` at `peer_key`) is one this host no
/// longer owns.
fn stale(k: &CtKey, e: &CtEntry, peer_key: &CtKey, peer: Option<&CtEntry>, owned: &Owned) -> bool {
    if e.kind & (CT_SG | CT_SG_REPLY) != 0 {
        let orig = if e.kind & CT_SG != 0 {
            Some((k, e))
        } else {
            peer.map(|p| (peer_key, p))
        };
        return match orig {
            Some((ok, oe)) => !owned.sg.admits(ok, oe.kind, oe.fixed_be as u16),
            // Half a flow: keep it while its port is filtered here; it expires.
            None => !owned.sg.zones.contains_key(&k.zone),
        };
    }
    if e.kind & CT_PAT != 0 {
        !owned.snat_ips.contains(&e.fip_be)
    } else {
        owned.fips.get(&e.fip_be) != Some(&e.fixed_be)
    }
}

/// Which entries to delete: idle past their timeout, or kept for something this host no
/// longer owns (a FIP mapping it does not serve, a router it no longer SNATs, a security
/// group flow its port's rules no longer admit or of a port gone). Pure.
pub fn plan_sweep(
    entries: &BTreeMap<CtKey, CtEntry>,
    now: u64,
    t: &Timeouts,
    owned: &Owned,
) -> (Vec<CtKey>, Swept) {
    plan(
        entries,
        now,
        t,
        |k, e| k.peer(e),
        |k| k.proto,
        |k, e, peer_key, peer| (stale(k, e, peer_key, peer, owned), is_sg(k, e)),
    )
}

/// [`plan_sweep`] for `DVR_CT6` (security group flows only).
pub fn plan_sweep6(
    entries: &BTreeMap<CtKey6, CtEntry>,
    now: u64,
    t: &Timeouts,
    owned: &Owned,
) -> (Vec<CtKey6>, Swept) {
    plan(
        entries,
        now,
        t,
        |k, _| k.reversed(),
        |k| k.proto,
        |k, e, peer_key, peer| {
            let orig = if e.kind & CT_SG != 0 {
                Some((k, e))
            } else {
                peer.map(|p| (peer_key, p))
            };
            let stale = match orig {
                Some((ok, oe)) => !owned.sg.admits6(ok, oe.kind, oe.fixed_be as u16),
                None => !owned.sg.zones.contains_key(&k.zone),
            };
            (stale, true)
        },
    )
}

/// The sweep over one table: `peer` names a direction's other one, `stale` says whether
/// a flow (entry, peer) is no longer owned and whether it is a security group flow.
fn plan<K: Ord + Copy>(
    entries: &BTreeMap<K, CtEntry>,
    now: u64,
    t: &Timeouts,
    peer_of: impl Fn(&K, &CtEntry) -> K,
    proto: impl Fn(&K) -> u8,
    stale: impl Fn(&K, &CtEntry, &K, Option<&CtEntry>) -> (bool, bool),
) -> (Vec<K>, Swept) {
    let mut doomed = Vec::new();
    let mut swept = Swept::default();
    for (k, e) in entries {
        let peer_key = peer_of(k, e);
        let peer = entries.get(&peer_key);
        // Visit each pair once: from its lower key, or alone when the peer is gone.
        if peer.is_some() && peer_key < *k {
            continue;
        }
        let (stale, sg) = stale(k, e, &peer_key, peer);
        let last = peer.map_or(e.last_seen_ns, |p| p.last_seen_ns.max(e.last_seen_ns));
        let st = state(proto(k), e.tcp_flags, peer.map_or(0, |p| p.tcp_flags));
        let idle = Duration::from_nanos(now.saturating_sub(last));
        let expired = idle > timeout(proto(k), st, t);
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
    let entries6 = maps.ct6.read()?;
    let (doomed6, swept6) = plan_sweep6(&entries6, clock::conntrack_now_ns(), t, owned);
    for k in &doomed6 {
        maps.ct6.del(k)?;
    }
    Ok(Swept {
        expired: swept.expired + swept6.expired,
        purged: swept.purged,
        sg_purged: swept.sg_purged + swept6.sg_purged,
    })
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

    /// Both entries of a security group flow `src:1000 -> dst:dport` (UDP) in `zone`,
    /// admitted in `dir_flag` (0: egress, `CT_SG_INGRESS`).
    fn sg_pair(
        zone: u32,
        src: u32,
        dst: u32,
        dport: u16,
        dir_flag: u8,
    ) -> BTreeMap<CtKey, CtEntry> {
        let k = CtKey {
            zone,
            saddr_be: src,
            daddr_be: dst,
            sport_be: 1000u16.to_be(),
            dport_be: dport.to_be(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: src,
            fixed_be: u32::from(dport.to_be()),
            peer_zone: zone,
            kind: CT_SG | dir_flag,
            ..Default::default()
        };
        let pk = k.peer(&e);
        let pe = CtEntry {
            nat_ip_be: dst,
            kind: CT_SG_REPLY | dir_flag,
            ..e
        };
        BTreeMap::from([(k, e), (pk, pe)])
    }

    /// Policy 7 on zone `zone`: egress UDP 53 to anywhere, ingress UDP 53 from anywhere.
    fn dns_policy(zone: u32) -> SgOwned {
        use dvr_common::sg::{SG_REMOTE_PREFIX_BITS, SG_RULE_ANY_PORT_BITS};
        let rule = |dir| {
            (
                (
                    SG_RULE_ANY_PORT_BITS + 16,
                    SgRuleKey {
                        class: 5,
                        dir,
                        proto: IPPROTO_UDP,
                        port_be: 53u16.to_be(),
                    },
                ),
                SgRule { rule_id: 1 },
            )
        };
        SgOwned {
            zones: BTreeMap::from([(zone, 7)]),
            remote: BTreeMap::from([(
                (
                    SG_REMOTE_PREFIX_BITS,
                    SgRemoteKey {
                        policy: 7,
                        ip_be: 0,
                    },
                ),
                5,
            )]),
            remote6: BTreeMap::new(),
            rules: BTreeMap::from([rule(SG_EGRESS), rule(SG_INGRESS)]),
        }
    }

    #[test]
    fn security_group_flows_live_while_their_rules_admit_them() {
        let t = Timeouts::default();
        let zone = dvr_common::sg::SG_ZONE | 4;
        let owned = |sg: SgOwned| Owned {
            sg: Arc::new(sg),
            ..Default::default()
        };
        let admitted = owned(dns_policy(zone));
        for flow in [
            sg_pair(zone, 10, 20, 53, 0),
            sg_pair(zone, 20, 10, 53, CT_SG_INGRESS),
        ] {
            assert!(
                plan_sweep(&flow, 0, &t, &admitted).0.is_empty(),
                "no FIP needed"
            );
        }
        // The egress rule goes: the egress flow ends (both entries), the ingress one stays.
        let mut no_egress = dns_policy(zone);
        no_egress.rules.retain(|(_, k), _| k.dir == SG_INGRESS);
        let no_egress = owned(no_egress);
        let (d, s) = plan_sweep(&sg_pair(zone, 10, 20, 53, 0), 0, &t, &no_egress);
        assert_eq!((d.len(), s.sg_purged, s.purged), (2, 1, 0));
        assert!(
            plan_sweep(&sg_pair(zone, 20, 10, 53, CT_SG_INGRESS), 0, &t, &no_egress)
                .0
                .is_empty()
        );
        // Another port (zone) or a port gone: purged.
        let (d, _) = plan_sweep(&sg_pair(zone + 1, 10, 20, 53, 0), 0, &t, &admitted);
        assert_eq!(d.len(), 2);
        // A flow to another port number is no longer admitted.
        assert_eq!(
            plan_sweep(&sg_pair(zone, 10, 20, 54, 0), 0, &t, &admitted)
                .0
                .len(),
            2
        );
        // Idle flows expire as any other.
        assert_eq!(
            plan_sweep(&sg_pair(zone, 10, 20, 53, 0), 61_000_000_000, &t, &admitted)
                .1
                .expired,
            1
        );
    }

    #[test]
    fn security_group_and_nat_purges_are_counted_apart() {
        let t = Timeouts::default();
        let zone = dvr_common::sg::SG_ZONE | 4;
        let mut flows = sg_pair(zone, 10, 20, 54, 0);
        flows.extend(sg_pair(zone, 10, 20, 53, 0));
        flows.extend(pair(30, 40, 0, TCP_ACK, TCP_ACK));
        let owned = Owned {
            sg: Arc::new(dns_policy(zone)),
            ..Default::default()
        };
        // UDP 54 is not admitted, UDP 53 is; the FIP flow's mapping is not served.
        let (d, s) = plan_sweep(&flows, 0, &t, &owned);
        assert_eq!(
            s,
            Swept {
                expired: 0,
                purged: 1,
                sg_purged: 1
            }
        );
        assert_eq!(d.len(), 4);
        assert!(!d.iter().any(|k| k.dport_be == 53u16.to_be()), "{d:?}");
        // Half a flow (its original direction already gone) stays while its port is
        // filtered here, and goes with the port.
        let mut half = sg_pair(zone, 10, 20, 54, 0);
        half.retain(|_, e| e.kind & CT_SG_REPLY != 0);
        assert!(plan_sweep(&half, 0, &t, &owned).0.is_empty());
        let (d, s) = plan_sweep(&half, 0, &t, &Owned::default());
        assert_eq!((d.len(), s.sg_purged), (1, 1));
        assert!(is_sg(
            half.keys().next().unwrap_or(&CtKey::default()),
            &CtEntry::default()
        ));
    }

    #[test]
    fn ipv6_security_group_flows_are_rechecked_and_expire() {
        use dvr_common::sg::{SG_REMOTE_PREFIX_BITS, SG_RULE_ANY_PORT_BITS};
        let t = Timeouts::default();
        let zone = dvr_common::sg::SG_ZONE | 4;
        let k = CtKey6 {
            zone,
            saddr: [0xfd; 16],
            daddr: [0x20; 16],
            sport_be: 1000u16.to_be(),
            dport_be: 53u16.to_be(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let e = CtEntry {
            fixed_be: u32::from(53u16.to_be()),
            peer_zone: zone,
            kind: CT_SG,
            ..Default::default()
        };
        let pe = CtEntry {
            kind: CT_SG_REPLY,
            ..e
        };
        let flow = BTreeMap::from([(k, e), (k.reversed(), pe)]);
        // Policy 7: egress UDP 53 to ::/0 (class 5). The IPv4 trie alone admits nothing.
        let mut sg = dns_policy(zone);
        let owned = |sg: &SgOwned| Owned {
            sg: Arc::new(sg.clone()),
            ..Default::default()
        };
        let (d, s) = plan_sweep6(&flow, 0, &t, &owned(&sg));
        assert_eq!((d.len(), s.sg_purged), (2, 1), "no IPv6 remote: purged");
        sg.remote6.insert(
            (
                SG_REMOTE_PREFIX_BITS,
                SgRemote6Key {
                    policy: 7,
                    ip: [0; 16],
                },
            ),
            5,
        );
        assert!(plan_sweep6(&flow, 0, &t, &owned(&sg)).0.is_empty());
        // Idle: expired as a pair.
        let (d, s) = plan_sweep6(&flow, 61_000_000_000, &t, &owned(&sg));
        assert_eq!((d.len(), s.expired), (2, 1));
        // The rule goes: purged.
        sg.rules.retain(|(_, k), _| k.dir == SG_INGRESS);
        sg.rules.insert(
            (
                SG_RULE_ANY_PORT_BITS + 16,
                SgRuleKey {
                    class: 5,
                    dir: SG_EGRESS,
                    proto: IPPROTO_UDP,
                    port_be: 54u16.to_be(),
                },
            ),
            SgRule { rule_id: 2 },
        );
        let (d, s) = plan_sweep6(&flow, 0, &t, &owned(&sg));
        assert_eq!((d.len(), s.sg_purged), (2, 1));
        assert_eq!(timeout(IPPROTO_ICMPV6, FlowState::Open, &t), t.icmp);
    }
}
