//! The ids behind the hashes the maps hold (`LocalPort.port_id`, `LocalPort.policy`,
//! `SgRule.rule_id` and the rule id a security group conntrack entry keeps), taken from a
//! state document (`dvrctl --state FILE`), so that `show` and `trace` can name ports and
//! rules by their UUIDs. Without a state they print the hashes.
use std::{collections::BTreeMap, path::Path};

use crate::{
    compile::{fnv1a32, sg_policy_id},
    model::{Direction, Ethertype, PortMatch, Remote, SecurityGroupRule, State},
};

use super::proto_name;

/// A security group rule, as a trace or a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleName {
    /// The rule's UUID.
    pub id: String,
    /// Its security group's id.
    pub group: String,
    /// What it admits, e.g. `ingress tcp 22 from group web`.
    pub summary: String,
}

#[derive(Debug, Default, Clone)]
pub struct Names {
    /// fnv1a32(port id) -> port id, for every port of the state.
    ports: BTreeMap<u32, String>,
    /// Policy id -> its sorted group ids, for every group set a port of the state carries.
    policies: BTreeMap<u32, Vec<String>>,
    /// fnv1a32(rule id) -> the rule.
    rules: BTreeMap<u32, RuleName>,
}

impl Names {
    pub fn of(state: &State) -> Self {
        let mut n = Names::default();
        for port in state.ports() {
            n.ports.insert(fnv1a32(&port.id), port.id.clone());
            if let Some(groups) = &port.security_groups {
                let mut g: Vec<&str> = groups.iter().map(String::as_str).collect();
                g.sort_unstable();
                g.dedup();
                n.policies
                    .entry(sg_policy_id(&g))
                    .or_insert_with(|| g.iter().map(|s| (*s).to_owned()).collect());
            }
        }
        for group in state.security_groups() {
            for rule in &group.rules {
                n.rules.insert(
                    fnv1a32(&rule.id),
                    RuleName {
                        id: rule.id.clone(),
                        group: group.id.clone(),
                        summary: describe_rule(rule),
                    },
                );
            }
        }
        n
    }

    /// Names from the state file at `path` (validated as the agent would).
    pub fn load(path: &Path) -> Result<Self, String> {
        let state = State::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::of(&state))
    }

    /// The port's id, if the state names it.
    pub fn port(&self, hash: u32) -> Option<&str> {
        self.ports.get(&hash).map(String::as_str)
    }

    /// The group ids of a policy, if a port of the state carries that set.
    pub fn policy(&self, id: u32) -> Option<&[String]> {
        self.policies.get(&id).map(Vec::as_slice)
    }

    pub fn rule(&self, hash: u32) -> Option<&RuleName> {
        self.rules.get(&hash)
    }
}

/// The port's id from `names`, else its hash in hex.
pub fn port_label(names: Option<&Names>, hash: u32) -> String {
    names
        .and_then(|n| n.port(hash))
        .map_or_else(|| format!("{hash:08x}"), str::to_owned)
}

/// The rule's id from `names`, else its hash in hex.
pub fn rule_label(names: Option<&Names>, hash: u32) -> String {
    names
        .and_then(|n| n.rule(hash))
        .map_or_else(|| format!("{hash:08x}"), |r| r.id.clone())
}

/// What a rule admits, in one line: `ingress tcp 8000-8080 from 10.0.0.0/8`.
pub fn describe_rule(r: &SecurityGroupRule) -> String {
    let mut s = r.direction.as_str().to_owned();
    if r.ethertype == Ethertype::Ipv6 {
        s.push_str(" IPv6");
    }
    s.push(' ');
    s.push_str(&r.protocol.map_or_else(|| "any".to_owned(), proto_name));
    match r.port_match() {
        PortMatch::Any => {}
        PortMatch::Range { min, max } if min == max => s.push_str(&format!(" {min}")),
        PortMatch::Range { min, max } => s.push_str(&format!(" {min}-{max}")),
        PortMatch::Icmp { icmp_type, code } => {
            s.push_str(&format!(" type {icmp_type}"));
            if let Some(c) = code {
                s.push_str(&format!(" code {c}"));
            }
        }
    }
    s.push_str(match r.direction {
        Direction::Ingress => " from ",
        Direction::Egress => " to ",
    });
    match &r.remote {
        Remote::Any => s.push_str("any"),
        Remote::Prefix(p) => s.push_str(&p.to_string()),
        Remote::Group(g) => s.push_str(&format!("group {g}")),
        Remote::AddressGroup(g) => s.push_str(&format!("address group {g}")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use serde_json::json;

    #[test]
    fn names_ports_policies_and_rules_from_the_state() {
        let mut v = fixture_value();
        v["security_groups"] = json!([{"id": "web", "security_group_rules": [
            {"id": "r-ssh", "direction": "ingress", "protocol": "tcp", "port_range_min": 22,
             "remote_group_id": "web"},
            {"id": "r-ping", "direction": "ingress", "protocol": "icmp", "port_range_min": 8,
             "remote_ip_prefix": "10.0.0.0/8"},
            {"id": "r-out", "direction": "egress"},
            {"id": "r-range", "direction": "ingress", "protocol": "udp",
             "port_range_min": 1000, "port_range_max": 2000, "remote_address_group_id": "ag"},
        ]}, {"id": "db"}]);
        v["address_groups"] = json!([{"id": "ag", "addresses": ["192.0.2.0/24"]}]);
        elem(&mut v, "ports", "id", "vm1")["security_groups"] = json!(["web", "db", "web"]);
        let state = State::from_json(&v.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let n = Names::of(&state);
        assert_eq!(n.port(fnv1a32("vm1")), Some("vm1"));
        assert_eq!(port_label(Some(&n), 7), "00000007");
        assert_eq!(
            n.policy(sg_policy_id(&["db", "web"])),
            Some(&["db".to_owned(), "web".to_owned()][..])
        );
        let r = |id: &str| n.rule(fnv1a32(id)).map(|r| r.summary.as_str());
        assert_eq!(r("r-ssh"), Some("ingress tcp 22 from group web"));
        assert_eq!(r("r-ping"), Some("ingress icmp type 8 from 10.0.0.0/8"));
        assert_eq!(r("r-out"), Some("egress any to any"));
        assert_eq!(
            r("r-range"),
            Some("ingress udp 1000-2000 from address group ag")
        );
        assert_eq!(rule_label(Some(&n), fnv1a32("r-out")), "r-out");
        assert_eq!(rule_label(None, 0xab), "000000ab");
    }
}
