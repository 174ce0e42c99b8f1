//! `dvrctl show sg [--port ID] [--state FILE] [--json]`: each local port's security group
//! settings (from `DVR_LOCAL_PORTS`) and its compiled policy read back from the pinned
//! `DVR_SG_REMOTE`, `DVR_SG_REMOTE6` and `DVR_SG_RULES`: per remote prefix (IPv4, then
//! IPv6) the class of rules that names it,
//! per class what each rule admits (direction, protocol, ports or ICMP type/code). With a
//! state, hashes become port ids, group ids and rule ids.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde::Serialize;

use super::{
    fmt_mac, ip_be,
    names::{Names, port_label, rule_label},
    proto_name, render,
};
use crate::{
    compile::fnv1a32,
    maps::{HostMaps, MapsError},
};
use dvr_common::{
    port::{LocalPort, PORT_FLAG_DOWN, PORT_FLAG_SECURITY, PORT_FLAG_SG, PORT_FLAG_SG_STATELESS},
    sg::{
        SG_EGRESS, SG_INGRESS, SG_REMOTE_PREFIX_BITS, SG_RULE_ANY_PORT_BITS,
        SG_RULE_ANY_PROTO_BITS, SG_RULE_FULL_BITS, SgRemoteKey, SgRule, SgRuleKey,
    },
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// `LPM (prefix length, key) -> value`, as the maps are read and compiled.
pub type Remotes = BTreeMap<(u32, SgRemoteKey), u32>;
pub type Rules = BTreeMap<(u32, SgRuleKey), SgRule>;
/// `DVR_SG_REMOTE6` as read.
pub type Remotes6 = BTreeMap<(u32, dvr_common::sg::SgRemote6Key), u32>;

#[derive(Debug, Serialize)]
pub struct SgView {
    pub ports: Vec<PortRow>,
    pub policies: Vec<PolicyView>,
    pub classes: Vec<ClassView>,
}

#[derive(Debug, Serialize)]
pub struct PortRow {
    pub ifindex: u32,
    /// The port's id (with a state), else its hash.
    pub port: String,
    pub port_id_hash: String,
    pub vni: u32,
    pub mac: String,
    pub port_security: bool,
    /// `stateful`, `stateless` or `off` (not filtered).
    pub security_groups: &'static str,
    /// `admin_state_up: false`: nothing in or out.
    pub down: bool,
    pub policy: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub policy: String,
    /// Its security group ids (with a state naming a port that carries the set).
    pub groups: Option<Vec<String>>,
    /// The local ports with it.
    pub ports: Vec<String>,
    /// Remote prefixes, most general first, and the class of rules that names them.
    pub remotes: Vec<RemoteRow>,
}

#[derive(Debug, Serialize)]
pub struct RemoteRow {
    pub prefix: String,
    pub class: String,
}

#[derive(Debug, Serialize)]
pub struct ClassView {
    pub class: String,
    pub rules: Vec<RuleRow>,
}

#[derive(Debug, Serialize)]
pub struct RuleRow {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// `any`, or the protocol's name (its number when it has none).
    pub protocol: String,
    /// `any`; a port or range (`8000-8080`, adjacent blocks of one rule merged); for ICMP
    /// `type T` or `type T code C`.
    pub ports: String,
    /// Trie entries behind the row (a range is split into aligned blocks).
    pub blocks: usize,
    pub rule_hash: String,
    /// The rule's id (with a state), else its hash.
    pub rule: String,
    /// What the rule admits, from the state.
    pub summary: Option<String>,
}

/// `stateful`, `stateless` or `off` for a port's flags.
pub fn sg_mode(flags: u32) -> &'static str {
    if flags & PORT_FLAG_SG == 0 {
        "off"
    } else if flags & PORT_FLAG_SG_STATELESS != 0 {
        "stateless"
    } else {
        "stateful"
    }
}

pub fn direction_name(dir: u8) -> &'static str {
    match dir {
        SG_INGRESS => "ingress",
        SG_EGRESS => "egress",
        _ => "?",
    }
}

/// The local port `id` names: an ifindex, a tap name (resolved by `tap_ifindex`), a port id
/// or the hash of one (as `show ports` prints it).
pub fn match_port(
    local_ports: &BTreeMap<u32, LocalPort>,
    id: &str,
    tap_ifindex: Option<u32>,
) -> Option<u32> {
    let hash = fnv1a32(id);
    let by_ifindex = id
        .parse::<u32>()
        .ok()
        .filter(|i| local_ports.contains_key(i));
    by_ifindex
        .or(tap_ifindex.filter(|i| local_ports.contains_key(i)))
        .or_else(|| {
            local_ports.iter().find_map(|(ifx, p)| {
                (p.port_id == hash || format!("{:08x}", p.port_id) == id).then_some(*ifx)
            })
        })
}

/// One (direction, protocol, port match) of a class as a row, before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    AnyProto,
    AnyPort,
    /// First and last port of a block.
    Ports(u16, u16),
    Icmp(u8, Option<u8>),
    /// A prefix length the compiler does not write.
    Other(u32),
}

fn entry_match(plen: u32, k: &SgRuleKey) -> Match {
    match plen {
        SG_RULE_ANY_PROTO_BITS => Match::AnyProto,
        SG_RULE_ANY_PORT_BITS => Match::AnyPort,
        p if p > SG_RULE_ANY_PORT_BITS
            && p <= SG_RULE_FULL_BITS
            && matches!(k.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) =>
        {
            let [t, c] = k.port_be.to_ne_bytes();
            match p - SG_RULE_ANY_PORT_BITS {
                8 => Match::Icmp(t, None),
                16 => Match::Icmp(t, Some(c)),
                _ => Match::Other(p),
            }
        }
        p if p > SG_RULE_ANY_PORT_BITS && p <= SG_RULE_FULL_BITS => {
            let first = u16::from_be(k.port_be);
            let size = 1u32 << (SG_RULE_FULL_BITS - p);
            Match::Ports(first, (u32::from(first) + size - 1).min(65535) as u16)
        }
        p => Match::Other(p),
    }
}

fn class_rows(entries: &[(u32, SgRuleKey, SgRule)], names: Option<&Names>) -> Vec<RuleRow> {
    // (dir, proto, match, rule, blocks), sorted so that a rule's blocks are adjacent.
    let mut items: Vec<(u8, u8, Match, u32)> = entries
        .iter()
        .map(|(plen, k, r)| {
            let proto = if *plen == SG_RULE_ANY_PROTO_BITS {
                0
            } else {
                k.proto
            };
            (k.dir, proto, entry_match(*plen, k), r.rule_id)
        })
        .collect();
    items.sort();
    let mut merged: Vec<(u8, u8, Match, u32, usize)> = Vec::new();
    for (dir, proto, m, rule) in items {
        if let Some(last) = merged.last_mut()
            && let (Match::Ports(lo, hi), Match::Ports(a, b)) = (last.2, m)
            && (last.0, last.1, last.3) == (dir, proto, rule)
            && u32::from(hi) + 1 == u32::from(a)
        {
            last.2 = Match::Ports(lo, b);
            last.4 += 1;
            continue;
        }
        merged.push((dir, proto, m, rule, 1));
    }
    merged
        .into_iter()
        .map(|(dir, proto, m, rule, blocks)| RuleRow {
            direction: direction_name(dir),
            protocol: if m == Match::AnyProto {
                "any".into()
            } else {
                proto_name(proto)
            },
            ports: match m {
                Match::AnyProto | Match::AnyPort => "any".into(),
                Match::Ports(lo, hi) if lo == hi => lo.to_string(),
                Match::Ports(lo, hi) => format!("{lo}-{hi}"),
                Match::Icmp(t, None) => format!("type {t}"),
                Match::Icmp(t, Some(c)) => format!("type {t} code {c}"),
                Match::Other(p) => format!("prefix length {p}"),
            },
            blocks,
            rule_hash: format!("{rule:08x}"),
            rule: rule_label(names, rule),
            summary: names.and_then(|n| n.rule(rule)).map(|r| r.summary.clone()),
        })
        .collect()
}

/// The entries of a remote trie (IPv4 or IPv6) whose key `addr` accepts, as (address it
/// reads, prefix length, class), sorted.
fn remotes_of<K, A: Ord>(
    trie: &BTreeMap<(u32, K), u32>,
    addr: impl Fn(&K) -> Option<A>,
) -> Vec<(A, u32, u32)> {
    let mut rs: Vec<(A, u32, u32)> = trie
        .iter()
        .filter_map(|((plen, k), class)| {
            Some((addr(k)?, plen.saturating_sub(SG_REMOTE_PREFIX_BITS), *class))
        })
        .collect();
    rs.sort();
    rs
}

/// The view of `local_ports`, `remotes` and `rules` (map contents), of every port or only
/// of the port on tap `only`. Pure.
pub fn view(
    local_ports: &BTreeMap<u32, LocalPort>,
    remotes: &Remotes,
    remotes6: &Remotes6,
    rules: &Rules,
    only: Option<u32>,
    names: Option<&Names>,
) -> SgView {
    let shown: Vec<(u32, &LocalPort)> = local_ports
        .iter()
        .filter(|(i, _)| only.is_none_or(|o| o == **i))
        .map(|(i, p)| (*i, p))
        .collect();
    let ports = shown
        .iter()
        .map(|&(ifindex, p)| PortRow {
            ifindex,
            port: port_label(names, p.port_id),
            port_id_hash: format!("{:08x}", p.port_id),
            vni: p.vni,
            mac: fmt_mac(p.mac),
            port_security: p.flags & PORT_FLAG_SECURITY != 0,
            security_groups: sg_mode(p.flags),
            down: p.flags & PORT_FLAG_DOWN != 0,
            policy: (p.flags & PORT_FLAG_SG != 0).then(|| format!("{:08x}", p.policy)),
        })
        .collect();
    // Policies: those of the shown ports, and (for the whole host) any left in the trie.
    let mut policy_ids: BTreeSet<u32> = shown
        .iter()
        .filter(|(_, p)| p.flags & PORT_FLAG_SG != 0)
        .map(|(_, p)| p.policy)
        .collect();
    if only.is_none() {
        policy_ids.extend(remotes.keys().map(|(_, k)| k.policy));
        policy_ids.extend(remotes6.keys().map(|(_, k)| k.policy));
    }
    let mut class_ids = BTreeSet::new();
    let policies = policy_ids
        .into_iter()
        .map(|policy| {
            let rs = remotes_of(remotes, |k| {
                (k.policy == policy).then(|| u32::from_be(k.ip_be))
            });
            let rs6 = remotes_of(remotes6, |k| {
                (k.policy == policy).then(|| u128::from_be_bytes(k.ip))
            });
            class_ids.extend(rs.iter().map(|r| r.2).chain(rs6.iter().map(|r| r.2)));
            PolicyView {
                policy: format!("{policy:08x}"),
                groups: names.and_then(|n| n.policy(policy)).map(<[String]>::to_vec),
                ports: shown
                    .iter()
                    .filter(|(_, p)| p.flags & PORT_FLAG_SG != 0 && p.policy == policy)
                    .map(|(_, p)| port_label(names, p.port_id))
                    .collect(),
                remotes: rs
                    .into_iter()
                    .map(|(net, plen, class)| RemoteRow {
                        prefix: format!("{}/{plen}", ip_be(net.to_be())),
                        class: format!("{class:08x}"),
                    })
                    .chain(rs6.into_iter().map(|(net, plen, class)| RemoteRow {
                        prefix: format!("{}/{plen}", std::net::Ipv6Addr::from(net)),
                        class: format!("{class:08x}"),
                    }))
                    .collect(),
            }
        })
        .collect();
    if only.is_none() {
        class_ids.extend(rules.keys().map(|(_, k)| k.class));
    }
    let mut by_class: BTreeMap<u32, Vec<(u32, SgRuleKey, SgRule)>> = BTreeMap::new();
    for ((plen, k), r) in rules {
        if class_ids.contains(&k.class) {
            by_class.entry(k.class).or_default().push((*plen, *k, *r));
        }
    }
    let classes = class_ids
        .into_iter()
        .map(|class| ClassView {
            class: format!("{class:08x}"),
            rules: by_class
                .get(&class)
                .map_or_else(Vec::new, |e| class_rows(e, names)),
        })
        .collect();
    SgView {
        ports,
        policies,
        classes,
    }
}

/// Human rendering: the ports, then each policy's prefixes, then each class's rules.
pub fn render_view(v: &SgView) -> String {
    let mut s = render(
        false,
        &v.ports,
        &[
            "PORT",
            "IFINDEX",
            "VNI",
            "MAC",
            "PORT-SECURITY",
            "SG",
            "ADMIN",
            "POLICY",
        ],
        |r| {
            vec![
                r.port.clone(),
                r.ifindex.to_string(),
                r.vni.to_string(),
                r.mac.clone(),
                r.port_security.to_string(),
                r.security_groups.to_string(),
                if r.down { "down" } else { "up" }.to_string(),
                r.policy.clone().unwrap_or_else(|| "-".into()),
            ]
        },
    );
    for p in &v.policies {
        let _ = write!(s, "\npolicy {}", p.policy);
        if let Some(g) = &p.groups {
            let _ = write!(
                s,
                "  groups {}",
                if g.is_empty() {
                    "(none)".to_string()
                } else {
                    g.join(",")
                }
            );
        }
        if !p.ports.is_empty() {
            let _ = write!(s, "  ports {}", p.ports.join(","));
        }
        s.push('\n');
        if p.remotes.is_empty() {
            s.push_str("  no remote prefix: no rule admits anything (base traffic only)\n");
            continue;
        }
        for line in render(false, &p.remotes, &["REMOTE", "CLASS"], |r| {
            vec![r.prefix.clone(), r.class.clone()]
        })
        .lines()
        {
            let _ = writeln!(s, "  {line}");
        }
    }
    for c in &v.classes {
        let _ = writeln!(s, "\nclass {}", c.class);
        for line in render(
            false,
            &c.rules,
            &["DIRECTION", "PROTOCOL", "PORTS", "RULE", "ADMITS"],
            |r| {
                vec![
                    r.direction.to_string(),
                    r.protocol.clone(),
                    r.ports.clone(),
                    r.rule.clone(),
                    r.summary.clone().unwrap_or_default(),
                ]
            },
        )
        .lines()
        {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// `show sg` from the live maps: every local port, or only the one on tap `only`.
pub fn show(
    maps: &HostMaps,
    only: Option<u32>,
    names: Option<&Names>,
    json: bool,
) -> Result<String, MapsError> {
    let v = view(
        &maps.local_ports.read()?,
        &maps.sg_remote.read()?,
        &maps.sg_remote6.read()?,
        &maps.sg_rules.read()?,
        only,
        names,
    );
    Ok(if json {
        serde_json::to_string(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    } else {
        render_view(&v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::sg_policy_id, model::State, testing::*};
    use serde_json::json;

    /// vm1 (host-a) carries `web`, vm2 (host-a) no group at all (`[]`), vm3 (host-b) `web`.
    fn sg_state() -> serde_json::Value {
        let mut v = fixture_value();
        v["security_groups"] = json!([{"id": "web", "security_group_rules": [
            {"id": "r-http", "direction": "ingress", "protocol": "tcp",
             "port_range_min": 8000, "port_range_max": 8080},
            {"id": "r-ssh", "direction": "ingress", "protocol": "tcp",
             "port_range_min": 22, "remote_group_id": "web"},
            {"id": "r-ping", "direction": "ingress", "protocol": "icmp",
             "port_range_min": 8, "remote_ip_prefix": "10.0.0.0/8"},
            {"id": "r-out", "direction": "egress"},
        ]}]);
        elem(&mut v, "ports", "id", "vm1")["security_groups"] = json!(["web"]);
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = json!([]);
        elem(&mut v, "ports", "id", "vm3")["security_groups"] = json!(["web"]);
        v
    }

    fn sg_view(only: Option<u32>, with_names: bool) -> SgView {
        let v = sg_state();
        let c = compiled(&v, "host-a", &all_taps);
        let state: State = state_of(&v);
        let names = Names::of(&state);
        let e = &c.entries;
        view(
            &e.local_ports,
            &e.sg_remote,
            &e.sg_remote6,
            &e.sg_rules,
            only,
            with_names.then_some(&names),
        )
    }

    #[test]
    fn ports_policies_and_classes_read_back() {
        let v = sg_view(None, true);
        let vm1 = v
            .ports
            .iter()
            .find(|p| p.port == "vm1")
            .unwrap_or_else(|| panic!("{v:?}"));
        assert_eq!(vm1.ifindex, IFX_VM1);
        assert_eq!(vm1.security_groups, "stateful");
        assert!(!vm1.down);
        let web = format!("{:08x}", sg_policy_id(&["web"]));
        assert_eq!(vm1.policy.as_deref(), Some(web.as_str()));
        let vm2 = v
            .ports
            .iter()
            .find(|p| p.port == "vm2")
            .unwrap_or_else(|| panic!("{v:?}"));
        let empty = format!("{:08x}", sg_policy_id(&[]));
        assert_eq!(vm2.policy.as_deref(), Some(empty.as_str()));

        let p = v
            .policies
            .iter()
            .find(|p| p.policy == web)
            .unwrap_or_else(|| panic!("{v:?}"));
        assert_eq!(p.groups.as_deref(), Some(&["web".to_owned()][..]));
        assert_eq!(p.ports, ["vm1"]);
        let prefixes: Vec<&str> = p.remotes.iter().map(|r| r.prefix.as_str()).collect();
        // Most general first; the members of `web` are vm1 and vm3 (10.0.1.10, 10.0.1.30).
        assert_eq!(
            prefixes,
            ["0.0.0.0/0", "10.0.0.0/8", "10.0.1.10/32", "10.0.1.30/32"]
        );
        let e = v
            .policies
            .iter()
            .find(|p| p.policy == empty)
            .unwrap_or_else(|| panic!("{v:?}"));
        assert!(e.remotes.is_empty(), "no rule: nothing compiled");

        // The class of a member address holds all four rules; the 8000-8080 range is one
        // row of three blocks.
        let member = &p.remotes[2].class;
        let c = v
            .classes
            .iter()
            .find(|c| &c.class == member)
            .unwrap_or_else(|| panic!("{v:?}"));
        let rows: Vec<(&str, &str, &str, &str, usize)> = c
            .rules
            .iter()
            .map(|r| {
                (
                    r.direction,
                    r.protocol.as_str(),
                    r.ports.as_str(),
                    r.rule.as_str(),
                    r.blocks,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("ingress", "icmp", "type 8", "r-ping", 1),
                ("ingress", "tcp", "22", "r-ssh", 1),
                ("ingress", "tcp", "8000-8080", "r-http", 3),
                ("egress", "any", "any", "r-out", 1),
            ]
        );
        assert_eq!(
            c.rules[1].summary.as_deref(),
            Some("ingress tcp 22 from group web")
        );
        let text = render_view(&v);
        assert!(text.contains("policy "), "{text}");
        assert!(text.contains("8000-8080"), "{text}");
        assert!(text.contains("no rule admits anything"), "{text}");
    }

    #[test]
    fn one_port_shows_only_its_policy_and_hashes_without_a_state() {
        let v = sg_view(Some(IFX_VM2), false);
        assert_eq!(v.ports.len(), 1);
        assert_eq!(v.ports[0].port, format!("{:08x}", fnv1a32("vm2")));
        assert_eq!(v.policies.len(), 1);
        assert!(v.policies[0].groups.is_none());
        assert!(v.classes.is_empty());
        let v = sg_view(Some(IFX_VM1), false);
        assert_eq!(v.policies.len(), 1);
        assert!(!v.classes.is_empty());
        assert!(
            v.classes
                .iter()
                .flat_map(|c| &c.rules)
                .all(|r| r.rule == r.rule_hash)
        );
    }

    #[test]
    fn ports_are_found_by_ifindex_tap_id_or_hash() {
        let c = compiled(&sg_state(), "host-a", &all_taps);
        let lp = &c.entries.local_ports;
        assert_eq!(match_port(lp, &IFX_VM1.to_string(), None), Some(IFX_VM1));
        assert_eq!(match_port(lp, "tapvm1", Some(IFX_VM1)), Some(IFX_VM1));
        assert_eq!(match_port(lp, "vm2", None), Some(IFX_VM2));
        assert_eq!(
            match_port(lp, &format!("{:08x}", fnv1a32("vm2")), None),
            Some(IFX_VM2)
        );
        assert_eq!(match_port(lp, "vm3", None), None, "on host-b");
    }

    #[test]
    fn ipv6_prefixes_and_icmpv6_rules_read_back() {
        let mut v = sg_state();
        if let Some(rules) = v["security_groups"][0]["security_group_rules"].as_array_mut() {
            rules.push(
                json!({"id": "r-ping6", "direction": "ingress", "ethertype": "IPv6",
                "protocol": "ipv6-icmp", "port_range_min": 128, "remote_ip_prefix": "fd00::/8"}),
            );
        }
        let c = compiled(&v, "host-a", &all_taps);
        let e = &c.entries;
        let view = view(
            &e.local_ports,
            &e.sg_remote,
            &e.sg_remote6,
            &e.sg_rules,
            Some(IFX_VM1),
            None,
        );
        let remotes: Vec<&str> = view.policies[0]
            .remotes
            .iter()
            .map(|r| r.prefix.as_str())
            .collect();
        assert!(remotes.contains(&"fd00::/8"), "{remotes:?}");
        assert!(remotes.contains(&"0.0.0.0/0"), "{remotes:?}");
        let rows: Vec<(&str, &str)> = view
            .classes
            .iter()
            .flat_map(|c| &c.rules)
            .map(|r| (r.protocol.as_str(), r.ports.as_str()))
            .collect();
        assert!(rows.contains(&("icmpv6", "type 128")), "{rows:?}");
        assert!(render_view(&view).contains("fd00::/8"));
    }
}
