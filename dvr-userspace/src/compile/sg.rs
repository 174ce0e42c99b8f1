//! Security groups (`dvr_common::sg`): the policy and flags of the local ports
//! (`local_ports`), the remote prefixes of each policy (`sg_remote`) and what each class of
//! rules admits (`sg_rules`).
//!
//! Rules:
//! - A local port (tap present) with port security and a `security_groups` key has the
//!   policy of its sorted, deduplicated group set: id fnv1a32 of the ids joined with `,`,
//!   `PORT_FLAG_SG`, and `PORT_FLAG_SG_STATELESS` when its groups are stateless. Without the
//!   key or without port security the port is not filtered. `admin_state_up: false` sets
//!   `PORT_FLAG_DOWN` whatever the port security.
//! - The remote prefixes of an IPv4 rule: its `remote_ip_prefix`; for `remote_group_id`
//!   every fixed IP (/32) and allowed-address-pair prefix of every port in the state that
//!   carries the group (any host, bound or not); for `remote_address_group_id` its IPv4
//!   addresses; without a remote `0.0.0.0/0`. A group without members names no prefix, so its
//!   rules admit nothing. IPv6 rules (`sg_remote6`) the same way with IPv6 prefixes: the
//!   members' IPv6 fixed IPs (/128) and IPv6 allowed address pairs, the address group's IPv6
//!   addresses, `::/0` without a remote. A class holds rules of one ethertype only, so an
//!   IPv4 rule never admits IPv6 nor the other way round.
//! - Per policy, every prefix `p` its rules name gets the class of the rules naming a prefix
//!   that contains `p` (all such prefixes nest, so the longest match for an address is the
//!   class of exactly the rules whose remote holds it). Class id: fnv1a32 of the sorted rule
//!   ids joined with `,`.
//! - Per class, once: each rule's (direction, protocol, port block or ICMP type/code) key;
//!   when two rules of a class give the same key the smaller rule id (hash) is kept.
//! - A policy or class id shared by two different sets is an error.
//!
//! Cost: group membership is indexed in one pass over the ports, each distinct policy and
//! class is compiled once, and a prefix finds its class with at most 33 hash lookups, so
//! the work is linear in ports plus the entries written.

use std::collections::btree_map::Entry as BEntry;
use std::collections::{BTreeMap, HashMap as StdHashMap};

use dvr_common::port::{PORT_FLAG_DOWN, PORT_FLAG_SG, PORT_FLAG_SG_STATELESS};
use dvr_common::sg::{
    SG_EGRESS, SG_INGRESS, SG_REMOTE_PREFIX_BITS, SG_RULE_ANY_PORT_BITS, SG_RULE_ANY_PROTO_BITS,
    SgRemote6Key, SgRemoteKey, SgRule, SgRuleKey, port_blocks,
};
use ipnet::IpNet;

use super::entries::{MapEntries, fnv1a32};
use super::error::CompileError;
use super::sg_lookup::icmp_port_be;
use crate::model::{Direction, Ethertype, Port, PortMatch, Remote, SecurityGroupRule, State};

/// Hash maps keyed by what the compile step builds itself: foldhash, as the model's indexes.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// A prefix as (network, host order, host bits clear; length): `u32` for IPv4, `u128` for
/// IPv6.
type Prefix<A> = (A, u8);

/// What differs between the IPv4 and IPv6 compile of a policy.
trait Family: Copy + Ord + std::hash::Hash + std::ops::BitAnd<Output = Self> {
    const ETHERTYPE: Ethertype;
    /// `0.0.0.0/0` or `::/0`.
    const ANY: Self;
    /// The prefix of `net` when it is of this family.
    fn prefix(net: &IpNet) -> Option<Prefix<Self>>;
    /// The port's addresses of this family (fixed IPs as host prefixes, allowed pairs).
    fn members(port: &Port, out: &mut Vec<Prefix<Self>>);
    /// The host-order netmask of a prefix length.
    fn netmask(len: u8) -> Self;
    /// The `sg_remote` / `sg_remote6` entry of `prefix` in `policy`.
    fn put(out: &mut MapEntries, policy: u32, prefix: Prefix<Self>, class: u32);
}

impl Family for u32 {
    const ETHERTYPE: Ethertype = Ethertype::Ipv4;
    const ANY: Self = 0;

    fn prefix(net: &IpNet) -> Option<Prefix<Self>> {
        match net {
            IpNet::V4(n) => Some((u32::from(n.network()), n.prefix_len())),
            IpNet::V6(_) => None,
        }
    }

    fn members(port: &Port, out: &mut Vec<Prefix<Self>>) {
        out.extend(port.fixed_ips.iter().map(|f| (u32::from(f.ip), 32)));
        out.extend(
            port.allowed_address_pairs
                .iter()
                .map(|p| (u32::from(p.net.network()), p.net.prefix_len())),
        );
    }

    fn netmask(len: u8) -> Self {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    fn put(out: &mut MapEntries, policy: u32, (net, len): Prefix<Self>, class: u32) {
        let key = SgRemoteKey {
            policy,
            ip_be: net.to_be(),
        };
        out.sg_remote
            .insert((SG_REMOTE_PREFIX_BITS + u32::from(len), key), class);
    }
}

impl Family for u128 {
    const ETHERTYPE: Ethertype = Ethertype::Ipv6;
    const ANY: Self = 0;

    fn prefix(net: &IpNet) -> Option<Prefix<Self>> {
        match net {
            IpNet::V6(n) => Some((u128::from(n.network()), n.prefix_len())),
            IpNet::V4(_) => None,
        }
    }

    fn members(port: &Port, out: &mut Vec<Prefix<Self>>) {
        out.extend(port.fixed_ips6.iter().map(|f| (u128::from(f.ip), 128)));
        out.extend(
            port.allowed_address_pairs6
                .iter()
                .map(|p| (u128::from(p.net.network()), p.net.prefix_len())),
        );
    }

    fn netmask(len: u8) -> Self {
        u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
    }

    fn put(out: &mut MapEntries, policy: u32, (net, len): Prefix<Self>, class: u32) {
        let key = SgRemote6Key {
            policy,
            ip: net.to_be_bytes(),
        };
        out.sg_remote6
            .insert((SG_REMOTE_PREFIX_BITS + u32::from(len), key), class);
    }
}

/// The policy id of a set of group ids (sorted, deduplicated).
pub fn sg_policy_id(groups: &[&str]) -> u32 {
    fnv1a32(&groups.join(","))
}

/// The class id of a set of rule ids (sorted).
pub fn sg_class_id(rules: &[&str]) -> u32 {
    fnv1a32(&rules.join(","))
}

/// One distinct group set of the local ports.
struct Policy<'s> {
    /// Sorted, deduplicated.
    groups: Vec<&'s str>,
    /// The first port with it (for errors).
    port: &'s str,
}

/// Flags and policies of the local ports whose tap exists (their `local_ports` entries
/// were added by `port::add_local_ports`), and `sg_remote` / `sg_rules` for their policies.
pub(super) fn add_security_groups(
    out: &mut MapEntries,
    state: &State,
    present: &[(&Port, u32, u32)],
) -> Result<(), CompileError> {
    let mut policies: BTreeMap<u32, Policy> = BTreeMap::new();
    for &(port, ifindex, _) in present {
        let Some(local) = out.local_ports.get_mut(&ifindex) else {
            continue;
        };
        if !port.admin_state_up {
            local.flags |= PORT_FLAG_DOWN;
        }
        let Some(ids) = port
            .security_groups
            .as_ref()
            .filter(|_| port.port_security_enabled)
        else {
            continue;
        };
        let mut groups: Vec<&str> = ids.iter().map(String::as_str).collect();
        groups.sort_unstable();
        groups.dedup();
        let id = sg_policy_id(&groups);
        // Validation keeps one port's groups all stateful or all stateless.
        let stateless = groups
            .iter()
            .any(|g| state.security_group(g).is_some_and(|g| !g.stateful));
        match policies.entry(id) {
            BEntry::Occupied(o) if o.get().groups != groups => {
                return Err(CompileError::SgPolicyCollision {
                    first_port: o.get().port.into(),
                    first: o.get().groups.join(","),
                    second_port: port.id.clone(),
                    second: groups.join(","),
                    hash: id,
                });
            }
            BEntry::Occupied(_) => {}
            BEntry::Vacant(v) => {
                v.insert(Policy {
                    groups,
                    port: &port.id,
                });
            }
        }
        local.flags |= PORT_FLAG_SG;
        if stateless {
            local.flags |= PORT_FLAG_SG_STATELESS;
        }
        local.policy = id;
    }
    // One set of classes for both families: a class is a set of rules of one ethertype, so
    // the IPv4 and IPv6 classes of the shared rule trie never meet (and a hash collision
    // between them is refused as any other).
    let mut classes = Classes::default();
    let members = Members::<u32>::index(state, policies.values());
    for (&id, policy) in &policies {
        add_policy(out, state, &members, &mut classes, id, &policy.groups)?;
    }
    let members = Members::<u128>::index(state, policies.values());
    for (&id, policy) in &policies {
        add_policy(out, state, &members, &mut classes, id, &policy.groups)?;
    }
    Ok(())
}

/// The member prefixes (of family `A`) of the groups the policies' rules of that family
/// name as `remote_group_id`.
struct Members<'s, A> {
    of_group: HashMap<&'s str, Vec<Prefix<A>>>,
}

impl<'s, A: Family> Members<'s, A> {
    /// One pass over every port of the state.
    fn index<'p>(state: &'s State, policies: impl Iterator<Item = &'p Policy<'s>>) -> Self
    where
        's: 'p,
    {
        let mut of_group: HashMap<&'s str, Vec<Prefix<A>>> = HashMap::default();
        for policy in policies {
            for rule in policy_rules(state, &policy.groups, A::ETHERTYPE) {
                if let Remote::Group(g) = &rule.remote {
                    of_group.entry(g.as_str()).or_default();
                }
            }
        }
        if of_group.is_empty() {
            return Members { of_group };
        }
        for port in state.ports() {
            let Some(groups) = &port.security_groups else {
                continue;
            };
            for g in groups {
                let Some(list) = of_group.get_mut(g.as_str()) else {
                    continue;
                };
                A::members(port, list);
            }
        }
        for list in of_group.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        Members { of_group }
    }

    fn prefixes(&self, group: &str) -> &[Prefix<A>] {
        self.of_group.get(group).map_or(&[][..], Vec::as_slice)
    }
}

/// The rules of one ethertype of a set of groups, group by group.
fn policy_rules<'s, 'g>(
    state: &'s State,
    groups: &'g [&'s str],
    ethertype: Ethertype,
) -> impl Iterator<Item = &'s SecurityGroupRule> + use<'s, 'g> {
    groups
        .iter()
        .filter_map(|g| state.security_group(g))
        .flat_map(|g| &g.rules)
        .filter(move |r| r.ethertype == ethertype)
}

/// Calls `each` with every remote prefix of a rule of family `A`.
fn remote_prefixes<A: Family>(
    rule: &SecurityGroupRule,
    state: &State,
    members: &Members<'_, A>,
    mut each: impl FnMut(Prefix<A>),
) {
    match &rule.remote {
        Remote::Any => each((A::ANY, 0)),
        Remote::Prefix(net) => A::prefix(net).into_iter().for_each(each),
        Remote::Group(g) => members.prefixes(g).iter().copied().for_each(each),
        Remote::AddressGroup(a) => state
            .address_group(a)
            .into_iter()
            .flat_map(|a| &a.addresses)
            .filter_map(A::prefix)
            .for_each(each),
    }
}

/// `sg_remote` (IPv4) or `sg_remote6` (IPv6) of one policy, and `sg_rules` of the classes
/// first seen in it.
fn add_policy<'s, A: Family>(
    out: &mut MapEntries,
    state: &'s State,
    members: &Members<'_, A>,
    classes: &mut Classes<'s>,
    policy: u32,
    groups: &[&'s str],
) -> Result<(), CompileError> {
    let rules: Vec<&SecurityGroupRule> = policy_rules(state, groups, A::ETHERTYPE).collect();
    // Prefix -> indexes of the rules naming it.
    let mut named: HashMap<Prefix<A>, Vec<usize>> = HashMap::default();
    for (i, rule) in rules.iter().enumerate() {
        remote_prefixes(rule, state, members, |p| {
            let list = named.entry(p).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        });
    }
    let mut prefixes: Vec<Prefix<A>> = named.keys().copied().collect();
    prefixes.sort_unstable();
    // The prefix lengths in use (a few: /0, /24, /32, ...): the only ones a containing
    // prefix can have.
    let mut lens: Vec<u8> = prefixes.iter().map(|&(_, l)| l).collect();
    lens.sort_unstable();
    lens.dedup();
    // Rule index set -> class, for this policy.
    let mut class_of: HashMap<Vec<usize>, u32> = HashMap::default();
    for (net, len) in prefixes {
        // The rules naming this prefix or one containing it.
        let mut set: Vec<usize> = lens
            .iter()
            .take_while(|&&l| l <= len)
            .filter_map(|&l| named.get(&(net & A::netmask(l), l)))
            .flatten()
            .copied()
            .collect();
        set.sort_unstable();
        set.dedup();
        let class = match class_of.get(&set) {
            Some(&class) => class,
            None => {
                let class = classes.intern(out, set.iter().filter_map(|&i| rules.get(i)))?;
                class_of.insert(set, class);
                class
            }
        };
        A::put(out, policy, (net, len), class);
    }
    Ok(())
}

/// The classes compiled so far, shared by all policies.
#[derive(Default)]
struct Classes<'s> {
    /// Sorted rule ids -> class id.
    by_rules: HashMap<Vec<&'s str>, u32>,
    /// Class id -> its rule ids joined (to tell a collision).
    by_id: HashMap<u32, String>,
}

impl<'s> Classes<'s> {
    /// The id of the class of `rules`; its `sg_rules` entries are written the first time.
    fn intern<'r>(
        &mut self,
        out: &mut MapEntries,
        rules: impl Iterator<Item = &'r &'s SecurityGroupRule>,
    ) -> Result<u32, CompileError>
    where
        's: 'r,
    {
        let mut rules: Vec<&'s SecurityGroupRule> = rules.copied().collect();
        rules.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&'s str> = rules.iter().map(|r| r.id.as_str()).collect();
        if let Some(&class) = self.by_rules.get(&ids) {
            return Ok(class);
        }
        let joined = ids.join(",");
        let class = fnv1a32(&joined);
        if let Some(first) = self.by_id.get(&class) {
            return Err(CompileError::SgClassCollision {
                first: first.clone(),
                second: joined,
                hash: class,
            });
        }
        for rule in &rules {
            add_rule(&mut out.sg_rules, class, rule);
        }
        self.by_id.insert(class, joined);
        self.by_rules.insert(ids, class);
        Ok(class)
    }
}

/// The `sg_rules` entries of one rule in one class.
fn add_rule(out: &mut BTreeMap<(u32, SgRuleKey), SgRule>, class: u32, rule: &SecurityGroupRule) {
    let dir = match rule.direction {
        Direction::Ingress => SG_INGRESS,
        Direction::Egress => SG_EGRESS,
    };
    let value = SgRule {
        rule_id: fnv1a32(&rule.id),
    };
    let mut put = |bits: u32, proto: u8, port_be: u16| {
        let key = SgRuleKey {
            class,
            dir,
            proto,
            port_be,
        };
        out.entry((bits, key))
            .and_modify(|v| {
                if value.rule_id < v.rule_id {
                    *v = value;
                }
            })
            .or_insert(value);
    };
    let Some(proto) = rule.protocol else {
        put(SG_RULE_ANY_PROTO_BITS, 0, 0);
        return;
    };
    match rule.port_match() {
        PortMatch::Any => put(SG_RULE_ANY_PORT_BITS, proto, 0),
        PortMatch::Range { min, max } => port_blocks(min, max, |start, bits| {
            put(SG_RULE_ANY_PORT_BITS + bits, proto, start.to_be());
        }),
        PortMatch::Icmp {
            icmp_type,
            code: None,
        } => put(SG_RULE_ANY_PORT_BITS + 8, proto, icmp_port_be(icmp_type, 0)),
        PortMatch::Icmp {
            icmp_type,
            code: Some(code),
        } => put(
            SG_RULE_ANY_PORT_BITS + 16,
            proto,
            icmp_port_be(icmp_type, code),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Compiled, compile, sg_admit, sg_entries_canonical};
    use crate::testing::*;
    use dvr_common::port::PORT_FLAG_SECURITY;
    use serde_json::{Value, json};

    fn key(class: u32, dir: u8, proto: u8, port_be: u16) -> SgRuleKey {
        SgRuleKey {
            class,
            dir,
            proto,
            port_be,
        }
    }

    fn rule_value(id: &str) -> SgRule {
        SgRule {
            rule_id: fnv1a32(id),
        }
    }

    fn flags_and_policy(c: &Compiled, ifindex: u32) -> Option<(u32, u32)> {
        c.entries
            .local_ports
            .get(&ifindex)
            .map(|p| (p.flags, p.policy))
    }

    #[test]
    fn fixture_entries() {
        // vm1 carries sg1: egress anything, ingress anything from its members (vm1 alone) and
        // SSH from anywhere. vm2 names no groups: not filtered.
        let c = compiled(&fixture_value(), "host-a", &all_taps);
        let policy = fnv1a32("sg1");
        assert_eq!(
            flags_and_policy(&c, IFX_VM1),
            Some((PORT_FLAG_SECURITY | PORT_FLAG_SG, policy))
        );
        assert_eq!(flags_and_policy(&c, IFX_VM2), Some((PORT_FLAG_SECURITY, 0)));
        let everywhere = sg_class_id(&["sg1-egress", "sg1-ssh"]);
        let members = sg_class_id(&["sg1-egress", "sg1-members", "sg1-ssh"]);
        assert_eq!(
            c.entries.sg_remote,
            BTreeMap::from([
                ((32, SgRemoteKey { policy, ip_be: 0 }), everywhere),
                (
                    (
                        64,
                        SgRemoteKey {
                            policy,
                            ip_be: ip(10, 0, 1, 10)
                        }
                    ),
                    members
                ),
            ])
        );
        let ssh = 22u16.to_be();
        assert_eq!(
            c.entries.sg_rules,
            BTreeMap::from([
                (
                    (40, key(everywhere, SG_EGRESS, 0, 0)),
                    rule_value("sg1-egress")
                ),
                (
                    (64, key(everywhere, SG_INGRESS, 6, ssh)),
                    rule_value("sg1-ssh")
                ),
                (
                    (40, key(members, SG_EGRESS, 0, 0)),
                    rule_value("sg1-egress")
                ),
                (
                    (40, key(members, SG_INGRESS, 0, 0)),
                    rule_value("sg1-members")
                ),
                (
                    (64, key(members, SG_INGRESS, 6, ssh)),
                    rule_value("sg1-ssh")
                ),
            ])
        );
        // host-b has no filtered port: nothing.
        let b = compiled(&fixture_value(), "host-b", &all_taps);
        assert!(b.entries.sg_remote.is_empty() && b.entries.sg_rules.is_empty());
    }

    #[test]
    fn flags_follow_port_security_groups_and_admin_state() {
        let mut v = fixture_value();
        push(
            &mut v,
            "security_groups",
            json!({"id": "sg2", "stateful": false, "security_group_rules": []}),
        );
        push(
            &mut v,
            "security_groups",
            json!({"id": "sg3", "stateful": false}),
        );
        elem(&mut v, "ports", "id", "vm1")["admin_state_up"] = false.into();
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = json!(["sg3", "sg2", "sg3"]);
        elem(&mut v, "ports", "id", "vm3")["security_groups"] = json!([]);
        let c = compiled(&v, "host-a", &all_taps);
        assert_eq!(
            flags_and_policy(&c, IFX_VM1),
            Some((
                PORT_FLAG_SECURITY | PORT_FLAG_SG | PORT_FLAG_DOWN,
                fnv1a32("sg1")
            ))
        );
        // Sorted and deduplicated: the policy of "sg2,sg3".
        assert_eq!(
            flags_and_policy(&c, IFX_VM2),
            Some((
                PORT_FLAG_SECURITY | PORT_FLAG_SG | PORT_FLAG_SG_STATELESS,
                fnv1a32("sg2,sg3")
            ))
        );
        assert_eq!(sg_policy_id(&["sg2", "sg3"]), fnv1a32("sg2,sg3"));
        // An empty set is filtered (by no rule: only base traffic passes), and stateful.
        let b = compiled(&v, "host-b", &all_taps);
        assert_eq!(
            flags_and_policy(&b, IFX_VM3),
            Some((PORT_FLAG_SECURITY | PORT_FLAG_SG, fnv1a32("")))
        );
        assert!(b.entries.sg_remote.is_empty());
        // No port security: no filtering, but down is down.
        let vm1 = elem(&mut v, "ports", "id", "vm1");
        vm1["port_security_enabled"] = false.into();
        vm1["security_groups"] = json!([]);
        let c = compiled(&v, "host-a", &all_taps);
        assert_eq!(flags_and_policy(&c, IFX_VM1), Some((PORT_FLAG_DOWN, 0)));
    }

    #[test]
    fn ports_with_one_group_set_share_a_policy() {
        let mut v = fixture_value();
        push(
            &mut v,
            "security_groups",
            json!({"id": "sg2", "security_group_rules": [
                {"id": "sg2-web", "direction": "ingress", "protocol": "tcp", "port_range_min": 80,
                 "remote_ip_prefix": "10.0.0.0/8"}]}),
        );
        elem(&mut v, "ports", "id", "vm1")["security_groups"] = json!(["sg2", "sg1"]);
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = json!(["sg1", "sg2", "sg1"]);
        let c = compiled(&v, "host-a", &all_taps);
        let policy = fnv1a32("sg1,sg2");
        assert_eq!(flags_and_policy(&c, IFX_VM1).map(|f| f.1), Some(policy));
        assert_eq!(flags_and_policy(&c, IFX_VM2).map(|f| f.1), Some(policy));
        assert!(c.entries.sg_remote.keys().all(|(_, k)| k.policy == policy));
        // 0/0 (egress, ssh), 10/8 (+ web), the members vm1 and vm2 (+ members).
        let prefixes: Vec<(u32, u32)> = c
            .entries
            .sg_remote
            .keys()
            .map(|(len, k)| (*len, k.ip_be))
            .collect();
        assert_eq!(
            prefixes,
            [
                (32, 0),
                (40, ip(10, 0, 0, 0)),
                (64, ip(10, 0, 1, 10)),
                (64, ip(10, 0, 2, 20))
            ]
        );
        let web = sg_class_id(&["sg1-egress", "sg1-ssh", "sg2-web"]);
        let members = sg_class_id(&["sg1-egress", "sg1-members", "sg1-ssh", "sg2-web"]);
        assert_eq!(
            c.entries.sg_remote.get(&(
                40,
                SgRemoteKey {
                    policy,
                    ip_be: ip(10, 0, 0, 0)
                }
            )),
            Some(&web)
        );
        assert_eq!(
            c.entries.sg_remote.get(&(
                64,
                SgRemoteKey {
                    policy,
                    ip_be: ip(10, 0, 2, 20)
                }
            )),
            Some(&members)
        );
    }

    /// The `sg_rules` keys (bits, proto, port bytes) of a group of one rule.
    fn rule_keys(rule: Value) -> Vec<(u32, u8, u8, [u8; 2])> {
        let mut v = fixture_value();
        let mut rule = rule;
        rule["id"] = "r".into();
        rule["direction"] = "ingress".into();
        v["security_groups"] = json!([{"id": "sg1", "security_group_rules": [rule]}]);
        let c = compiled(&v, "host-a", &all_taps);
        let class = sg_class_id(&["r"]);
        assert!(c.entries.sg_rules.values().all(|r| *r == rule_value("r")));
        c.entries
            .sg_rules
            .keys()
            .map(|&(bits, k)| {
                assert_eq!((k.class, k.dir), (class, SG_INGRESS));
                (bits, k.dir, k.proto, k.port_be.to_ne_bytes())
            })
            .collect()
    }

    #[test]
    fn rule_keys_by_protocol_ports_and_icmp() {
        let i = SG_INGRESS;
        assert_eq!(rule_keys(json!({})), [(40, i, 0, [0, 0])]);
        assert_eq!(rule_keys(json!({"protocol": "udp"})), [(48, i, 17, [0, 0])]);
        assert_eq!(rule_keys(json!({"protocol": "gre"})), [(48, i, 47, [0, 0])]);
        // 79..=81: 79 alone, then 80-81 (a block of two).
        assert_eq!(
            rule_keys(json!({"protocol": "tcp", "port_range_min": 79, "port_range_max": 81})),
            [(63, i, 6, [0, 80]), (64, i, 6, [0, 79])]
        );
        assert_eq!(
            rule_keys(json!({"protocol": "tcp", "port_range_min": 0, "port_range_max": 65535})),
            [(48, i, 6, [0, 0])]
        );
        assert_eq!(
            rule_keys(json!({"protocol": "sctp", "port_range_min": 1024, "port_range_max": 2047})),
            [(54, i, 132, [4, 0])]
        );
        // ICMP: the type in the first port byte, the code in the second.
        assert_eq!(rule_keys(json!({"protocol": "icmp"})), [(48, i, 1, [0, 0])]);
        assert_eq!(
            rule_keys(json!({"protocol": "icmp", "port_range_min": 8})),
            [(56, i, 1, [8, 0])]
        );
        assert_eq!(
            rule_keys(json!({"protocol": 1, "port_range_min": 3, "port_range_max": 4})),
            [(64, i, 1, [3, 4])]
        );
    }

    #[test]
    fn equal_keys_keep_the_smaller_rule_id() {
        let mut v = fixture_value();
        v["security_groups"] = json!([{"id": "sg1", "security_group_rules": [
            {"id": "a", "direction": "egress", "protocol": "tcp", "port_range_min": 80},
            {"id": "b", "direction": "egress", "protocol": "tcp", "port_range_min": 80,
             "port_range_max": 81}
        ]}]);
        let c = compiled(&v, "host-a", &all_taps);
        let class = sg_class_id(&["a", "b"]);
        let smaller = rule_value("a").rule_id.min(rule_value("b").rule_id);
        assert_eq!(
            c.entries
                .sg_rules
                .get(&(63, key(class, SG_EGRESS, 6, 80u16.to_be())))
                .map(|r| r.rule_id),
            Some(fnv1a32("b"))
        );
        assert_eq!(
            c.entries
                .sg_rules
                .get(&(64, key(class, SG_EGRESS, 6, 80u16.to_be())))
                .map(|r| r.rule_id),
            Some(smaller)
        );
    }

    #[test]
    fn remote_group_without_members_names_nothing_and_families_stay_apart() {
        let mut v = fixture_value();
        v["security_groups"] = json!([
            {"id": "sg1", "security_group_rules": [
                {"id": "from-lonely", "direction": "ingress", "remote_group_id": "lonely"},
                {"id": "v6", "direction": "ingress", "ethertype": "IPv6"},
                {"id": "v6-office", "direction": "ingress", "ethertype": "IPv6",
                 "remote_address_group_id": "office"},
                {"id": "v4-office", "direction": "ingress", "remote_address_group_id": "office"}
            ]},
            {"id": "lonely"}
        ]);
        v["address_groups"] =
            json!([{"id": "office", "addresses": ["2001:db8::/64", "192.0.2.0/24"]}]);
        let c = compiled(&v, "host-a", &all_taps);
        let policy = fnv1a32("sg1");
        assert_eq!(
            c.entries.sg_remote,
            BTreeMap::from([(
                (
                    56,
                    SgRemoteKey {
                        policy,
                        ip_be: ip(192, 0, 2, 0)
                    }
                ),
                sg_class_id(&["v4-office"])
            )])
        );
        // The IPv6 rules: `::/0` (v6) and the address group's IPv6 prefix (v6 + v6-office),
        // in classes of their own.
        let v6_any = sg_class_id(&["v6"]);
        let v6_office = sg_class_id(&["v6", "v6-office"]);
        let mut db8 = [0u8; 16];
        db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(
            c.entries.sg_remote6,
            BTreeMap::from([
                (
                    (
                        32,
                        SgRemote6Key {
                            policy,
                            ip: [0; 16]
                        }
                    ),
                    v6_any
                ),
                ((32 + 64, SgRemote6Key { policy, ip: db8 }), v6_office),
            ])
        );
        // One key per class: v6 and v6-office give the same key (ingress, any protocol) in
        // their shared class, which keeps one.
        assert_eq!(c.entries.sg_rules.len(), 3);
        assert!(
            c.entries.sg_rules.keys().all(|(_, k)| [
                sg_class_id(&["v4-office"]),
                v6_any,
                v6_office
            ]
            .contains(&k.class))
        );
    }

    #[test]
    fn policy_and_class_collisions_are_errors() {
        // The first fnv1a32 collision among "g0", "g1", ... (a birthday search).
        let (a, b) = ("g115728".to_owned(), "g2169004".to_owned());
        assert_eq!(fnv1a32(&a), fnv1a32(&b));
        let mut v = fixture_value();
        push(&mut v, "security_groups", json!({"id": a}));
        push(&mut v, "security_groups", json!({"id": b}));
        elem(&mut v, "ports", "id", "vm1")["security_groups"] = json!([a]);
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = json!([b]);
        let err = compile(&state_of(&v), "host-a", None, &all_taps);
        assert_eq!(
            err,
            Err(CompileError::SgPolicyCollision {
                first_port: "vm1".into(),
                first: a.clone(),
                second_port: "vm2".into(),
                second: b.clone(),
                hash: fnv1a32(&a)
            })
        );
        // Rules a (from 10/8) and b (from 20/8) are each alone in a class.
        let mut v = fixture_value();
        v["security_groups"] = json!([{"id": "sg1", "security_group_rules": [
            {"id": a, "direction": "ingress", "remote_ip_prefix": "10.0.0.0/8"},
            {"id": b, "direction": "ingress", "remote_ip_prefix": "20.0.0.0/8"}
        ]}]);
        let err = compile(&state_of(&v), "host-a", None, &all_taps);
        let text = err.as_ref().err().map(ToString::to_string);
        assert_eq!(
            err,
            Err(CompileError::SgClassCollision {
                first: a.clone(),
                second: b.clone(),
                hash: fnv1a32(&a)
            })
        );
        assert_eq!(
            text,
            Some(format!(
                "security group rule sets [{a}] and [{b}]: both hash to class id {:#010x} \
                 (fnv1a32)",
                fnv1a32(&a)
            ))
        );
    }

    /// A cloud of `ports` VM ports on 10 hosts and networks of 100; 10 groups `app0..9` of 20
    /// rules (half of them from the remote group `members`), every port in one app group and
    /// the first 1,000 also in `members`.
    fn cloud(ports: u32) -> Value {
        let hosts: Vec<Value> = (0..10)
            .map(|h| json!({"name": format!("h{h}"), "agent_mode": "dvr",
                "tunnel_ip": format!("10.255.0.{}", h + 1), "dvr_mac": format!("fa:16:3f:00:00:{:02x}", h + 1)}))
            .collect();
        // 100 ports a network: 10 of them on each host (the flood set holds 64 local taps).
        let nets = ports.div_ceil(100);
        let networks: Vec<Value> = (0..nets)
            .map(|n| json!({"id": format!("n{n}"), "provider:network_type": "vxlan", "provider:segmentation_id": n + 1}))
            .collect();
        let subnets: Vec<Value> = (0..nets)
            .map(|n| {
                json!({"id": format!("s{n}"), "network_id": format!("n{n}"),
                "cidr": format!("10.{}.{}.0/24", n / 256, n % 256), "ip_version": 4})
            })
            .collect();
        let port_list: Vec<Value> = (0..ports)
            .map(|g| {
                let (n, i) = (g / 100, g % 100);
                let mut groups = vec![format!("app{}", g % 10)];
                if g < 1000 {
                    groups.push("members".into());
                }
                json!({"id": format!("p{g}"), "network_id": format!("n{n}"),
                    "mac_address": format!("fa:16:3e:{:02x}:{:02x}:{i:02x}", n / 256, n % 256),
                    "fixed_ips": [{"subnet_id": format!("s{n}"),
                        "ip_address": format!("10.{}.{}.{}", n / 256, n % 256, i + 2)}],
                    "device_owner": "compute:nova", "binding:host_id": format!("h{}", (g / 10) % 10),
                    "security_groups": groups})
            })
            .collect();
        let mut groups: Vec<Value> = (0..10)
            .map(|k| {
                let rules: Vec<Value> = (0..20u32)
                    .map(|j| {
                        let id = format!("app{k}-r{j}");
                        match j % 4 {
                            0 => json!({"id": id, "direction": "ingress", "protocol": "tcp",
                                "port_range_min": 1000 + j, "remote_group_id": "members"}),
                            1 => json!({"id": id, "direction": "ingress", "protocol": "udp",
                                "port_range_min": 2000 + j, "port_range_max": 2100 + j,
                                "remote_ip_prefix": format!("172.16.{j}.0/24")}),
                            2 => json!({"id": id, "direction": "ingress", "protocol": "icmp",
                                "port_range_min": j}),
                            _ => json!({"id": id, "direction": "egress", "protocol": "tcp",
                                "port_range_min": 3000 + j, "remote_group_id": "members"}),
                        }
                    })
                    .collect();
                json!({"id": format!("app{k}"), "security_group_rules": rules})
            })
            .collect();
        groups.push(json!({"id": "members", "security_group_rules": [
            {"id": "members-in", "direction": "ingress", "remote_group_id": "members"}]}));
        json!({"hosts": hosts, "networks": networks, "subnets": subnets, "ports": port_list,
            "security_groups": groups})
    }

    #[test]
    fn ten_thousand_ports_with_a_thousand_member_group() {
        let state = state_of(&cloud(10_000));
        let every_tap = |tap: &str| Some(fnv1a32(tap));
        let start = std::time::Instant::now();
        let c = match compile(&state, "h0", None, &every_tap) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let e = &c.entries;
        eprintln!(
            "security groups: 10,000 ports x 20 rules, remote group of 1,000: compiled for h0 \
             ({} local ports, {} sg_remote, {} sg_rules entries) in {:?}",
            e.local_ports.len(),
            e.sg_remote.len(),
            e.sg_rules.len(),
            start.elapsed()
        );
        assert_eq!(e.local_ports.len(), 1000);
        // 20 policies: {appK} and {appK, members}; each names the 1,000 members, five /24s
        // and (with members' own rule) nothing more.
        let policies: std::collections::BTreeSet<u32> =
            e.local_ports.values().map(|p| p.policy).collect();
        assert_eq!(policies.len(), 20);
        assert_eq!(e.sg_remote.len(), 20 * (1000 + 5 + 1));
        assert!(sg_entries_canonical(&e.sg_remote, &e.sg_rules));
        let admit = |policy: &str, dir: u8, proto: u8, port: u16, from: u32| {
            sg_admit(
                &e.sg_remote,
                &e.sg_rules,
                fnv1a32(policy),
                dir,
                proto,
                port.to_be(),
                from,
            )
            .map(|r| r.rule_id)
        };
        let member = ip(10, 0, 7, 59); // p757, in members
        let stranger = ip(10, 0, 17, 59); // p1757, not
        let r = |id: &str| Some(fnv1a32(id));
        // TCP 1004 from members only (app3's rule 4), for both of app3's policies.
        for policy in ["app3", "app3,members"] {
            assert_eq!(admit(policy, SG_INGRESS, 6, 1004, member), r("app3-r4"));
            assert_eq!(admit(policy, SG_INGRESS, 6, 1004, stranger), None);
            assert_eq!(admit(policy, SG_EGRESS, 6, 3007, member), r("app3-r7"));
            assert_eq!(admit(policy, SG_EGRESS, 6, 3007, stranger), None);
        }
        // Anything from members only with the members group itself.
        assert_eq!(
            admit("app3,members", SG_INGRESS, 17, 9, member),
            r("members-in")
        );
        assert_eq!(admit("app3", SG_INGRESS, 17, 9, member), None);
        assert_eq!(admit("app3", SG_INGRESS, 6, 1005, member), None);
        assert_eq!(admit("app3,members", SG_INGRESS, 6, 1005, stranger), None);
        // UDP 2005..=2105 from 172.16.5.0/24.
        let lan = ip(172, 16, 5, 200);
        assert_eq!(admit("app3", SG_INGRESS, 17, 2105, lan), r("app3-r5"));
        assert_eq!(admit("app3", SG_INGRESS, 17, 2106, lan), None);
        assert_eq!(admit("app3", SG_INGRESS, 17, 2105, ip(172, 16, 6, 1)), None);
        // ICMP type 6 from anywhere (app3's rule 6).
        let icmp6 = u16::from_be_bytes([6, 0]);
        assert_eq!(admit("app3", SG_INGRESS, 1, icmp6, stranger), r("app3-r6"));
    }
}
