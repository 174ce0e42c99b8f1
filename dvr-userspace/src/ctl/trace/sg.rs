//! The trace's counterpart of `dvr-ebpf/src/stage/sg.rs`: the security group decision for
//! one packet of a port, as the datapath takes it, pure (over the two tries as read and the
//! conntrack entries the walk looked up) so that unit tests cover it; one [`check`] for IPv4
//! and IPv6, what differs between them in [`Family`]. `stage.rs` and `v6.rs` turn the
//! decision into a step and a verdict.
use std::collections::BTreeMap;

use dvr_common::{
    ip6::Ip6,
    nat::{CT_SG_INGRESS, CT_SG_REPLY, CtEntry, CtKey, CtKey6},
    port::{LocalPort, PORT_FLAG_SG_STATELESS},
    sg::{SG_EGRESS, SG_INGRESS, SG_ZONE},
    stats::Stat,
};

use crate::{
    compile::{SgRemotes, icmp_port_be, sg_admit},
    ctl::sg::{Rules, direction_name},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;
const IPPROTO_ICMPV6: u8 = 58;

/// The packet as the check sees it, of either family (`A`: [`Family`]; addresses and ports
/// in network order; for ICMP(v6) echo the identifier in both port slots, as conntrack keys
/// hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Packet<A = u32> {
    pub(super) saddr: A,
    pub(super) daddr: A,
    pub(super) proto: u8,
    pub(super) sport_be: u16,
    pub(super) dport_be: u16,
    /// ICMP(v6) type and code (ICMP(v6) only).
    pub(super) icmp: (u8, u8),
    /// The tuple an ICMP(v6) error quotes: (saddr, daddr, sport, dport, proto).
    pub(super) quoted: Option<(A, A, u16, u16, u8)>,
}

/// An IPv6 packet as the check sees it.
pub(super) type Packet6 = Packet<Ip6>;

/// What the families' checks (`stage::sg::check` and `check6`) do differently: addresses
/// `u32` (network order) or `Ip6`.
pub(super) trait Family: Copy {
    /// ICMP or ICMPv6.
    const ICMP: u8;
    /// Whether an ICMP(v6) error may pass by its own tuple's entry: IPv4 looks it up,
    /// IPv6 passes an error by the flow it quotes only.
    const ERROR_BY_OWN_TUPLE: bool;
    /// The conntrack key (`DVR_CT` or `DVR_CT6`).
    type Key;
    /// The key of tuple (saddr, daddr, sport, dport, proto) in `zone`.
    fn key(zone: u32, t: (Self, Self, u16, u16, u8)) -> Self::Key;
    /// Base traffic, always allowed, in direction `dir`.
    fn is_base(p: &Packet<Self>, dir: u8) -> bool;
    fn is_icmp_error(p: &Packet<Self>) -> bool;
}

impl Family for u32 {
    const ICMP: u8 = IPPROTO_ICMP;
    const ERROR_BY_OWN_TUPLE: bool = true;
    type Key = CtKey;

    fn key(
        zone: u32,
        (saddr_be, daddr_be, sport_be, dport_be, proto): (u32, u32, u16, u16, u8),
    ) -> CtKey {
        CtKey {
            zone,
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 3],
        }
    }

    /// DHCP client to server leaving the VM, server to client reaching it.
    fn is_base(p: &Packet, dir: u8) -> bool {
        is_udp_between(p, dir, 68, 67)
    }

    fn is_icmp_error(p: &Packet) -> bool {
        p.proto == IPPROTO_ICMP
            && matches!(
                p.icmp.0,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
            )
    }
}

impl Family for Ip6 {
    const ICMP: u8 = IPPROTO_ICMPV6;
    const ERROR_BY_OWN_TUPLE: bool = false;
    type Key = CtKey6;

    fn key(
        zone: u32,
        (saddr, daddr, sport_be, dport_be, proto): (Ip6, Ip6, u16, u16, u8),
    ) -> CtKey6 {
        CtKey6 {
            zone,
            saddr,
            daddr,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 3],
        }
    }

    /// `stage::sg::is_base6`: neighbour discovery and multicast listener discovery
    /// (redirects towards the VM too), DHCPv6 client to server leaving the VM, server to
    /// client reaching it.
    fn is_base(p: &Packet6, dir: u8) -> bool {
        match p.icmp6() {
            Some(130..=136 | 143) => return true,
            Some(137) => return dir == SG_INGRESS,
            _ => {}
        }
        is_udp_between(p, dir, 546, 547)
    }

    /// Types 1-4 (`stage::sg::is_icmp6_error`).
    fn is_icmp_error(p: &Packet6) -> bool {
        matches!(p.icmp6(), Some(1..=4))
    }
}

/// UDP from `client` to `server` leaving the VM (egress), from server to client reaching it.
fn is_udp_between<A>(p: &Packet<A>, dir: u8, client: u16, server: u16) -> bool {
    let (client, server) = (client.to_be(), server.to_be());
    p.proto == IPPROTO_UDP
        && match dir {
            SG_EGRESS => p.sport_be == client && p.dport_be == server,
            _ => p.sport_be == server && p.dport_be == client,
        }
}

impl<A: Family> Packet<A> {
    /// What a rule's port range matches: the destination port, or ICMP(v6) type and code.
    fn port_be(&self) -> u16 {
        if self.proto == A::ICMP {
            icmp_port_be(self.icmp.0, self.icmp.1)
        } else {
            self.dport_be
        }
    }
}

impl Packet6 {
    fn icmp6(&self) -> Option<u8> {
        (self.proto == IPPROTO_ICMPV6).then_some(self.icmp.0)
    }
}

/// The conntrack zone of the port on tap `ifindex`.
pub(super) fn zone(ifindex: u32) -> u32 {
    SG_ZONE | ifindex
}

/// The key of the packet's own direction in the port's zone (`net::conntrack::flow_key`,
/// `DVR_CT6`).
pub(super) fn flow_key<A: Family>(ifindex: u32, p: &Packet<A>) -> A::Key {
    A::key(
        zone(ifindex),
        (p.saddr, p.daddr, p.sport_be, p.dport_be, p.proto),
    )
}

/// The key of the packet an ICMP(v6) error quotes, in the port's zone.
pub(super) fn quoted_key<A: Family>(ifindex: u32, p: &Packet<A>) -> Option<A::Key> {
    Some(A::key(zone(ifindex), p.quoted?))
}

/// What the check decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// DHCP between the VM's client and a server: base traffic, always allowed.
    Base,
    /// A stateless port: the rule of its direction that admits it, if any.
    Stateless(Option<u32>),
    /// A rule admits it (stateful). `new_flow`: its flow is not tracked yet, so both
    /// conntrack entries are created (never for an ICMP error).
    Admitted { rule: u32, new_flow: bool },
    /// No rule admits it, but it is the reply of a tracked flow, admitted by `rule` in
    /// direction `flow_dir`.
    Reply { rule: u32, flow_dir: u8 },
    /// No rule admits it any more, and it is the original direction of a tracked flow
    /// (admitted by `rule`): the flow ends here, both entries deleted.
    Revoked { rule: u32 },
    /// An ICMP error about a packet of a tracked flow of the port.
    Related,
    /// No rule admits it.
    Refused,
}

impl Decision {
    pub(super) fn passes(self) -> bool {
        !matches!(
            self,
            Decision::Stateless(None) | Decision::Revoked { .. } | Decision::Refused
        )
    }
}

/// The check of packet `p` of the port `port` on tap `ifindex` (its flags carry
/// `PORT_FLAG_SG`) in direction `dir` (`SG_EGRESS` at the tap, `SG_INGRESS` where it is
/// delivered), over the remote trie of its family (`stage::sg::check`, `check6`: conntrack
/// in `DVR_CT` or `DVR_CT6`). `ct` is the conntrack entry at a key, if any.
pub(super) fn check<A: Family, R: SgRemotes<Addr = A>>(
    port: &LocalPort,
    ifindex: u32,
    dir: u8,
    p: &Packet<A>,
    remotes: &R,
    rules: &Rules,
    ct: &dyn Fn(&A::Key) -> Option<CtEntry>,
) -> Decision {
    if A::is_base(p, dir) {
        return Decision::Base;
    }
    let remote = if dir == SG_EGRESS { p.daddr } else { p.saddr };
    let admitted = sg_admit(
        remotes,
        rules,
        port.policy,
        dir,
        p.proto,
        p.port_be(),
        remote,
    )
    .map(|r| r.rule_id);
    let error = A::is_icmp_error(p);
    decide(
        port.flags & PORT_FLAG_SG_STATELESS != 0,
        admitted,
        error,
        || {
            if error && !A::ERROR_BY_OWN_TUPLE {
                None
            } else {
                ct(&flow_key(ifindex, p))
            }
        },
        || quoted_key(ifindex, p).and_then(|k| ct(&k)).is_some(),
    )
}

/// The decision once the rules were looked up, for either family (`stage::sg::check` and
/// `check6` after their lookups): `admitted` by which rule, `error` an ICMP(v6) error,
/// `tracked` the entry at the packet's own key, `related` whether an error quotes a
/// tracked flow.
fn decide(
    stateless: bool,
    admitted: Option<u32>,
    error: bool,
    tracked: impl FnOnce() -> Option<CtEntry>,
    related: impl FnOnce() -> bool,
) -> Decision {
    if stateless {
        return Decision::Stateless(admitted);
    }
    let tracked = tracked();
    if let Some(rule) = admitted {
        return Decision::Admitted {
            rule,
            new_flow: tracked.is_none() && !error,
        };
    }
    match tracked {
        Some(e) if e.kind & CT_SG_REPLY != 0 => Decision::Reply {
            rule: e._reserved,
            flow_dir: if e.kind & CT_SG_INGRESS != 0 {
                SG_INGRESS
            } else {
                SG_EGRESS
            },
        },
        Some(e) => Decision::Revoked { rule: e._reserved },
        None if error => match related() {
            true => Decision::Related,
            false => Decision::Refused,
        },
        None => Decision::Refused,
    }
}

/// The entries a stateful admission of an IPv6 packet creates (`conntrack::create6`).
pub(super) fn new_flow6(
    ifindex: u32,
    dir: u8,
    p: &Packet6,
    rule: u32,
) -> BTreeMap<CtKey6, CtEntry> {
    use dvr_common::nat::CT_SG;
    let k = flow_key(ifindex, p);
    let flag = if dir == SG_INGRESS { CT_SG_INGRESS } else { 0 };
    let e = CtEntry {
        fixed_be: u32::from(p.port_be()),
        peer_zone: k.zone,
        kind: CT_SG | flag,
        _reserved: rule,
        ..Default::default()
    };
    let pe = CtEntry {
        kind: CT_SG_REPLY | flag,
        ..e
    };
    BTreeMap::from([(k.reversed(), pe), (k, e)])
}

/// The entries a stateful admission creates for a new flow (`stage::sg::check`): the
/// original direction with the rule, the reply.
pub(super) fn new_flow(ifindex: u32, dir: u8, p: &Packet, rule: u32) -> BTreeMap<CtKey, CtEntry> {
    use dvr_common::nat::CT_SG;
    let k = flow_key(ifindex, p);
    let flag = if dir == SG_INGRESS { CT_SG_INGRESS } else { 0 };
    let e = CtEntry {
        nat_ip_be: p.saddr,
        peer_zone: k.zone,
        kind: CT_SG | flag,
        _reserved: rule,
        ..Default::default()
    };
    let pe = CtEntry {
        nat_ip_be: p.daddr,
        kind: CT_SG_REPLY | flag,
        ..e
    };
    BTreeMap::from([(k.peer(&e), pe), (k, e)])
}

/// The counter of a refusal in direction `dir`.
pub(super) fn refused(dir: u8) -> Stat {
    if dir == SG_EGRESS {
        Stat::DropSgEgress
    } else {
        Stat::DropSgIngress
    }
}

/// The trace line of decision `d` for the port on tap `ifindex` in direction `dir`;
/// `rule` names a rule by its id hash.
pub(super) fn describe(
    d: Decision,
    dir: u8,
    ifindex: u32,
    stateless: bool,
    rule: &dyn Fn(u32) -> String,
) -> String {
    let zone = format!("sg:{ifindex}");
    let refused = refused(dir).as_str();
    let what = match d {
        Decision::Base if dir == SG_EGRESS => {
            "DHCP client to server (or IPv6 neighbour discovery): base traffic, always allowed"
                .to_string()
        }
        Decision::Base => {
            "DHCP server to client (or IPv6 neighbour discovery): base traffic, always allowed"
                .to_string()
        }
        Decision::Stateless(Some(r)) => format!("admitted by {}", rule(r)),
        Decision::Admitted {
            rule: r,
            new_flow: true,
        } => format!(
            "admitted by {}; a new flow, tracked in zone {zone}",
            rule(r)
        ),
        Decision::Admitted { rule: r, .. } => {
            format!("admitted by {}; tracked flow in zone {zone}", rule(r))
        }
        Decision::Reply { rule: r, flow_dir } => format!(
            "no {} rule admits it, but it is the reply of a tracked flow (reply entry in \
             zone {zone}) admitted by {} {}: passes",
            direction_name(dir),
            direction_name(flow_dir),
            rule(r)
        ),
        Decision::Revoked { rule: r } => format!(
            "no rule admits it any more: the tracked flow it opened (admitted by {}) ends \
             here, both entries deleted ({refused})",
            rule(r),
        ),
        Decision::Related => {
            "ICMP error about a tracked flow of the port (related): passes".to_string()
        }
        Decision::Stateless(None) | Decision::Refused => {
            format!("no rule admits it ({refused})")
        }
    };
    let mode = if stateless { " (stateless)" } else { "" };
    if dir == SG_EGRESS {
        format!("egress{mode}: {what}")
    } else {
        format!("ingress at tap#{ifindex}{mode}: {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::fnv1a32, ctl::sg::Remotes};
    use dvr_common::{
        port::PORT_FLAG_SG,
        sg::{SG_REMOTE_PREFIX_BITS, SG_RULE_ANY_PORT_BITS, SgRemoteKey, SgRule, SgRuleKey},
    };

    const IFX: u32 = 9;
    const POLICY: u32 = 77;
    const VM: u32 = u32::from_ne_bytes([10, 0, 0, 5]);
    const PEER: u32 = u32::from_ne_bytes([10, 0, 0, 9]);

    /// Policy 77: egress TCP 443 to anywhere (rule `out-https`), ingress TCP 22 from
    /// 10.0.0.0/8 (rule `in-ssh`), ingress ICMP echo from anywhere (rule `in-ping`).
    fn tries() -> (Remotes, Rules) {
        let remote = |plen, ip: [u8; 4], class| {
            (
                (
                    SG_REMOTE_PREFIX_BITS + plen,
                    SgRemoteKey {
                        policy: POLICY,
                        ip_be: u32::from_ne_bytes(ip),
                    },
                ),
                class,
            )
        };
        let rule = |class, dir, proto, bits, port_be, id: &str| {
            (
                (
                    SG_RULE_ANY_PORT_BITS + bits,
                    SgRuleKey {
                        class,
                        dir,
                        proto,
                        port_be,
                    },
                ),
                SgRule {
                    rule_id: fnv1a32(id),
                },
            )
        };
        let mut rules = Rules::new();
        for class in [1, 2] {
            rules.extend([
                rule(class, SG_EGRESS, 6, 16, 443u16.to_be(), "out-https"),
                rule(class, SG_INGRESS, 1, 8, icmp_port_be(8, 0), "in-ping"),
            ]);
        }
        rules.extend([rule(2, SG_INGRESS, 6, 16, 22u16.to_be(), "in-ssh")]);
        (
            BTreeMap::from([remote(0, [0; 4], 1), remote(8, [10, 0, 0, 0], 2)]),
            rules,
        )
    }

    fn port(flags: u32) -> LocalPort {
        LocalPort {
            flags: PORT_FLAG_SG | flags,
            policy: POLICY,
            ..Default::default()
        }
    }

    fn tcp(src: u32, sport: u16, dst: u32, dport: u16) -> Packet {
        Packet {
            saddr: src,
            daddr: dst,
            proto: 6,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            icmp: (0, 0),
            quoted: None,
        }
    }

    fn decide(flags: u32, dir: u8, p: &Packet, ct: &BTreeMap<CtKey, CtEntry>) -> Decision {
        let (r, u) = tries();
        check(&port(flags), IFX, dir, p, &r, &u, &|k| ct.get(k).copied())
    }

    #[test]
    fn rules_admit_by_direction_port_and_remote() {
        let none = BTreeMap::new();
        let out = tcp(VM, 40000, u32::from_ne_bytes([192, 0, 2, 1]), 443);
        assert_eq!(
            decide(0, SG_EGRESS, &out, &none),
            Decision::Admitted {
                rule: fnv1a32("out-https"),
                new_flow: true
            }
        );
        let out80 = tcp(VM, 40000, PEER, 80);
        assert_eq!(decide(0, SG_EGRESS, &out80, &none), Decision::Refused);
        let ssh = tcp(PEER, 40000, VM, 22);
        assert_eq!(
            decide(0, SG_INGRESS, &ssh, &none),
            Decision::Admitted {
                rule: fnv1a32("in-ssh"),
                new_flow: true
            }
        );
        let ssh_far = tcp(u32::from_ne_bytes([192, 0, 2, 1]), 40000, VM, 22);
        assert_eq!(decide(0, SG_INGRESS, &ssh_far, &none), Decision::Refused);
        assert!(!Decision::Refused.passes());
        let ping = Packet {
            proto: 1,
            icmp: (8, 0),
            sport_be: 7,
            dport_be: 7,
            ..ssh_far
        };
        assert!(decide(0, SG_INGRESS, &ping, &none).passes());
        // Stateless: the same rules, nothing tracked.
        assert_eq!(
            decide(PORT_FLAG_SG_STATELESS, SG_EGRESS, &out80, &none),
            Decision::Stateless(None)
        );
        assert_eq!(
            decide(PORT_FLAG_SG_STATELESS, SG_INGRESS, &ssh, &none),
            Decision::Stateless(Some(fnv1a32("in-ssh")))
        );
    }

    #[test]
    fn dhcp_is_base_traffic_in_its_direction_only() {
        let none = BTreeMap::new();
        let bcast = u32::MAX;
        let discover = Packet {
            proto: 17,
            ..tcp(0, 68, bcast, 67)
        };
        assert_eq!(decide(0, SG_EGRESS, &discover, &none), Decision::Base);
        assert_eq!(decide(0, SG_INGRESS, &discover, &none), Decision::Refused);
        let offer = Packet {
            proto: 17,
            ..tcp(PEER, 67, VM, 68)
        };
        assert_eq!(decide(0, SG_INGRESS, &offer, &none), Decision::Base);
    }

    #[test]
    fn replies_related_errors_and_revoked_flows() {
        // The VM opened 443 to PEER: the reply passes by the flow, not by a rule.
        let out = tcp(VM, 40000, PEER, 443);
        let flow = new_flow(IFX, SG_EGRESS, &out, fnv1a32("out-https"));
        let reply = tcp(PEER, 443, VM, 40000);
        assert_eq!(
            decide(0, SG_INGRESS, &reply, &flow),
            Decision::Reply {
                rule: fnv1a32("out-https"),
                flow_dir: SG_EGRESS
            }
        );
        assert_eq!(
            decide(0, SG_EGRESS, &out, &flow),
            Decision::Admitted {
                rule: fnv1a32("out-https"),
                new_flow: false
            }
        );
        // A port unreachable from PEER about the VM's packet: related.
        let unreach = Packet {
            proto: 1,
            icmp: (3, 3),
            sport_be: 0,
            dport_be: 0,
            quoted: Some((VM, PEER, 40000u16.to_be(), 443u16.to_be(), 6)),
            ..reply
        };
        assert_eq!(decide(0, SG_INGRESS, &unreach, &flow), Decision::Related);
        assert_eq!(
            decide(0, SG_INGRESS, &unreach, &BTreeMap::new()),
            Decision::Refused
        );
        // An egress flow to port 80 tracked from before its rule went: it ends.
        let out80 = tcp(VM, 40000, PEER, 80);
        let old = new_flow(IFX, SG_EGRESS, &out80, 0xdead);
        assert_eq!(
            decide(0, SG_EGRESS, &out80, &old),
            Decision::Revoked { rule: 0xdead }
        );
        // Its reply still finds the reply entry (the datapath passes it until the
        // original direction's next packet or the agent's re-check ends the flow).
        let reply80 = tcp(PEER, 80, VM, 40000);
        assert!(decide(0, SG_INGRESS, &reply80, &old).passes());
        // Flows of another port's zone are not this port's.
        let other = new_flow(IFX + 1, SG_EGRESS, &out, fnv1a32("out-https"));
        assert_eq!(decide(0, SG_INGRESS, &reply, &other), Decision::Refused);
    }

    #[test]
    fn descriptions_name_the_rule_and_read_as_one_line() {
        let rule = |r: u32| format!("rule {r:x}");
        let say = |d, dir, stateless| describe(d, dir, 7, stateless, &rule);
        assert_eq!(
            say(
                Decision::Admitted {
                    rule: 0xab,
                    new_flow: true
                },
                SG_INGRESS,
                false
            ),
            "ingress at tap#7: admitted by rule ab; a new flow, tracked in zone sg:7"
        );
        assert_eq!(
            say(Decision::Refused, SG_EGRESS, false),
            "egress: no rule admits it (drop_sg_egress)"
        );
        assert_eq!(
            say(Decision::Stateless(None), SG_INGRESS, true),
            "ingress at tap#7 (stateless): no rule admits it (drop_sg_ingress)"
        );
        assert_eq!(
            say(
                Decision::Reply {
                    rule: 0xcd,
                    flow_dir: SG_INGRESS
                },
                SG_EGRESS,
                false
            ),
            "egress: no egress rule admits it, but it is the reply of a tracked flow (reply \
             entry in zone sg:7) admitted by ingress rule cd: passes"
        );
        assert_eq!(
            say(Decision::Revoked { rule: 0xef }, SG_EGRESS, false),
            "egress: no rule admits it any more: the tracked flow it opened (admitted by rule \
             ef) ends here, both entries deleted (drop_sg_egress)"
        );
        // Every decision is one line with single spaces.
        for d in [
            Decision::Base,
            Decision::Stateless(Some(1)),
            Decision::Admitted {
                rule: 1,
                new_flow: false,
            },
            Decision::Related,
        ] {
            for dir in [SG_EGRESS, SG_INGRESS] {
                let t = say(d, dir, false);
                assert!(!t.contains("  ") && !t.contains('\n'), "{t:?}");
            }
        }
    }

    /// Policy 77 for IPv6: egress TCP 443 to anywhere (`out-https6`), ingress ICMPv6 echo
    /// requests from fd00::/8 (`in-ping6`); the IPv4 tries of [`tries`] beside it.
    fn decide6(flags: u32, dir: u8, p: &Packet6, ct: &BTreeMap<CtKey6, CtEntry>) -> Decision {
        use dvr_common::sg::SgRemote6Key;
        let (_, mut rules) = tries();
        let mut fd = [0u8; 16];
        fd[0] = 0xfd;
        let remotes6 = BTreeMap::from([
            (
                (
                    SG_REMOTE_PREFIX_BITS,
                    SgRemote6Key {
                        policy: POLICY,
                        ip: [0; 16],
                    },
                ),
                61,
            ),
            (
                (
                    SG_REMOTE_PREFIX_BITS + 8,
                    SgRemote6Key {
                        policy: POLICY,
                        ip: fd,
                    },
                ),
                62,
            ),
        ]);
        for (class, dir, proto, bits, port_be, id) in [
            (61, SG_EGRESS, 6, 16, 443u16.to_be(), "out-https6"),
            (62, SG_EGRESS, 6, 16, 443u16.to_be(), "out-https6"),
            (62, SG_INGRESS, 58, 8, icmp_port_be(128, 0), "in-ping6"),
        ] {
            rules.insert(
                (
                    SG_RULE_ANY_PORT_BITS + bits,
                    SgRuleKey {
                        class,
                        dir,
                        proto,
                        port_be,
                    },
                ),
                SgRule {
                    rule_id: fnv1a32(id),
                },
            );
        }
        check(&port(flags), IFX, dir, p, &remotes6, &rules, &|k| {
            ct.get(k).copied()
        })
    }

    const VM6: Ip6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    const PEER6: Ip6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    const FAR6: Ip6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn pkt6(saddr: Ip6, daddr: Ip6, proto: u8, sport: u16, dport: u16) -> Packet6 {
        Packet6 {
            saddr,
            daddr,
            proto,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            icmp: (0, 0),
            quoted: None,
        }
    }

    #[test]
    fn ipv6_rules_state_related_errors_and_base_traffic() {
        let none = BTreeMap::new();
        let out = pkt6(VM6, FAR6, 6, 40000, 443);
        let d = decide6(0, SG_EGRESS, &out, &none);
        assert_eq!(
            d,
            Decision::Admitted {
                rule: fnv1a32("out-https6"),
                new_flow: true
            }
        );
        let flow = new_flow6(IFX, SG_EGRESS, &out, fnv1a32("out-https6"));
        // The reply passes by state; a new connection from there does not.
        let reply = pkt6(FAR6, VM6, 6, 443, 40000);
        assert!(matches!(
            decide6(0, SG_INGRESS, &reply, &flow),
            Decision::Reply {
                flow_dir: SG_EGRESS,
                ..
            }
        ));
        assert_eq!(
            decide6(0, SG_INGRESS, &pkt6(FAR6, VM6, 6, 443, 40001), &flow),
            Decision::Refused
        );
        // An IPv4 rule never admits IPv6: TCP 22 from anywhere is IPv4's in-ssh only.
        assert_eq!(
            decide6(0, SG_INGRESS, &pkt6(PEER6, VM6, 6, 40000, 22), &none),
            Decision::Refused
        );
        // ICMPv6 echo requests from fd00::/8 only; other types refused.
        let ping = Packet6 {
            icmp: (128, 0),
            ..pkt6(PEER6, VM6, 58, 7, 7)
        };
        assert_eq!(
            decide6(0, SG_INGRESS, &ping, &none),
            Decision::Admitted {
                rule: fnv1a32("in-ping6"),
                new_flow: true
            }
        );
        let far_ping = Packet6 {
            saddr: FAR6,
            ..ping
        };
        assert_eq!(decide6(0, SG_INGRESS, &far_ping, &none), Decision::Refused);
        let info = Packet6 {
            icmp: (139, 0),
            ..pkt6(PEER6, VM6, 58, 0, 0)
        };
        assert_eq!(decide6(0, SG_INGRESS, &info, &none), Decision::Refused);
        // Errors: related when they quote the tracked flow; never by their own tuple.
        let error = Packet6 {
            icmp: (1, 4),
            quoted: Some((VM6, FAR6, 40000u16.to_be(), 443u16.to_be(), 6)),
            ..pkt6(FAR6, VM6, 58, 0, 0)
        };
        assert_eq!(decide6(0, SG_INGRESS, &error, &flow), Decision::Related);
        let mut own = BTreeMap::new();
        own.insert(
            flow_key(IFX, &error),
            CtEntry {
                kind: CT_SG_REPLY,
                ..Default::default()
            },
        );
        let forged = Packet6 {
            quoted: Some((VM6, FAR6, 1u16.to_be(), 2u16.to_be(), 17)),
            ..error
        };
        assert_eq!(decide6(0, SG_INGRESS, &forged, &own), Decision::Refused);
        // Base: neighbour discovery both ways, redirects only towards the VM, DHCPv6.
        for (t, dir) in [
            (133, SG_EGRESS),
            (135, SG_EGRESS),
            (136, SG_INGRESS),
            (134, SG_INGRESS),
            (137, SG_INGRESS),
            (143, SG_EGRESS),
        ] {
            let nd = Packet6 {
                icmp: (t, 0),
                ..pkt6(FAR6, FAR6, 58, 0, 0)
            };
            assert_eq!(decide6(0, dir, &nd, &none), Decision::Base, "type {t}");
        }
        let redirect_out = Packet6 {
            icmp: (137, 0),
            ..pkt6(VM6, FAR6, 58, 0, 0)
        };
        assert_eq!(
            decide6(0, SG_EGRESS, &redirect_out, &none),
            Decision::Refused
        );
        let solicit = pkt6(VM6, FAR6, 17, 546, 547);
        assert_eq!(decide6(0, SG_EGRESS, &solicit, &none), Decision::Base);
        let server_in_vm = pkt6(VM6, FAR6, 17, 547, 546);
        assert_eq!(
            decide6(0, SG_EGRESS, &server_in_vm, &none),
            Decision::Refused
        );
        // Stateless.
        assert_eq!(
            decide6(PORT_FLAG_SG_STATELESS, SG_INGRESS, &reply, &flow),
            Decision::Stateless(None)
        );
    }
}
