//! Security groups: the rules that say what a port may send and receive, grouped; the
//! address groups a rule may name as its remote; and which groups a port carries.
//!
//! State shape (the Neutron API's):
//! - `security_groups`: `[{id, name, stateful (default true), security_group_rules: [rule]}]`.
//! - `security_group_rules` (optional, as `GET /v2.0/security-group-rules` returns them):
//!   `[rule]`, each naming its group in `security_group_id`; merged into that group after
//!   its nested rules. A rule id appears once in the whole state.
//! - `address_groups`: `[{id, name, addresses: ["10.0.0.0/24", "2001:db8::/64", ...]}]`.
//! - rule: `id`, `direction` (`ingress` | `egress`), `ethertype` (`IPv4` | `IPv6`, default
//!   IPv4), `protocol` (absent, `null`, `"any"` or 0: any; a name Neutron knows; a number
//!   0-255, as an integer or a string), `port_range_min` / `port_range_max` (tcp, udp, sctp,
//!   udplite, dccp: ports, min alone is one port; icmp, icmpv6: ICMP type and code), at most
//!   one of `remote_ip_prefix` (CIDR or address of the rule's family; host bits dropped),
//!   `remote_group_id`, `remote_address_group_id`. A nested rule may name its group in
//!   `security_group_id` too.
//! - ports: `security_groups` (group ids; absent or `null`: the port is not filtered),
//!   `admin_state_up` (read in `port`); a port without port security takes no groups, and
//!   one port's groups are all stateful or all stateless ([`check_port_groups`]).
//!
//! IPv6 rules are validated and kept; the compiler only uses the IPv4 ones for now.

use std::collections::hash_map::Entry;

use ipnet::IpNet;

use super::check::{Known, Ref, Report};
use super::error::{FieldError, StateError};
use super::parse::{
    self, Element, Parsed, Reader, conv_bool, conv_id, conv_ip_prefix, conv_string, describe, id_of,
};
use super::port::Port;
use super::table::HashMap;
use crate::json::{Number, Object, Value};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_DCCP: u8 = 33;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_UDPLITE: u8 = 136;

/// The protocol names Neutron accepts (neutron-lib `IP_PROTOCOL_MAP`), lower case.
const PROTOCOL_NAMES: &[(&str, u8)] = &[
    ("ah", 51),
    ("dccp", PROTO_DCCP),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", PROTO_ICMP),
    ("icmpv6", PROTO_ICMPV6),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", PROTO_ICMPV6),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", PROTO_SCTP),
    ("tcp", PROTO_TCP),
    ("udp", PROTO_UDP),
    ("udplite", PROTO_UDPLITE),
    ("vrrp", 112),
];

/// Names Neutron refuses on an IPv4 rule.
const IPV6_ONLY_NAMES: &[&str] = &[
    "icmpv6",
    "ipv6-encap",
    "ipv6-frag",
    "ipv6-icmp",
    "ipv6-nonxt",
    "ipv6-opts",
    "ipv6-route",
];

/// True for the protocols whose rules take a destination port range.
pub fn has_ports(proto: u8) -> bool {
    matches!(
        proto,
        PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_UDPLITE | PROTO_DCCP
    )
}

/// True for ICMP and ICMPv6, whose rules take a type and code.
pub fn is_icmp(proto: u8) -> bool {
    matches!(proto, PROTO_ICMP | PROTO_ICMPV6)
}

/// A Neutron security group with its rules (nested and top-level ones merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: Option<String>,
    /// `stateful` (default true): replies of admitted connections pass without a rule.
    pub stateful: bool,
    /// Nested rules in order, then the top-level rules naming the group, in order.
    pub rules: Vec<SecurityGroupRule>,
}

/// Which way a rule looks: at traffic delivered to the port, or sent by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ethertype {
    Ipv4,
    Ipv6,
}

/// Whose addresses a rule admits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Remote {
    /// No remote field: every address of the rule's family.
    Any,
    /// `remote_ip_prefix`, of the rule's family, host bits cleared.
    Prefix(IpNet),
    /// `remote_group_id`: the fixed IPs and allowed address pairs of every port carrying it.
    Group(String),
    /// `remote_address_group_id`: the addresses of that address group.
    AddressGroup(String),
}

/// A rule's port (or ICMP type/code) match, as the compiler needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMatch {
    /// Any port, or a protocol without ports (or any protocol).
    Any,
    /// Destination ports `min..=max`.
    Range { min: u16, max: u16 },
    /// ICMP type, and code when given.
    Icmp { icmp_type: u8, code: Option<u8> },
}

/// A Neutron security group rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRule {
    pub id: String,
    /// The group it belongs to.
    pub group_id: String,
    pub direction: Direction,
    pub ethertype: Ethertype,
    /// IP protocol number; `None` for any (absent, null, `"any"` or 0). `"icmp"` on an IPv6
    /// rule is ICMPv6 (58), as Neutron stores it.
    pub protocol: Option<u8>,
    /// Ports of a port protocol (both set, or neither: a lone `port_range_min` is one port),
    /// or an ICMP type (min) and code (max, only with a type), each validated to its range.
    pub port_range_min: Option<u16>,
    pub port_range_max: Option<u16>,
    pub remote: Remote,
}

impl SecurityGroupRule {
    /// The rule's port match (validation guarantees the ranges).
    pub fn port_match(&self) -> PortMatch {
        match (self.protocol, self.port_range_min) {
            (Some(p), Some(min)) if has_ports(p) => PortMatch::Range {
                min,
                max: self.port_range_max.unwrap_or(min),
            },
            (Some(p), Some(t)) if is_icmp(p) => match u8::try_from(t) {
                Ok(icmp_type) => PortMatch::Icmp {
                    icmp_type,
                    code: self.port_range_max.and_then(|c| u8::try_from(c).ok()),
                },
                Err(_) => PortMatch::Any,
            },
            _ => PortMatch::Any,
        }
    }
}

/// A Neutron address group: a named set of prefixes (host bits cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressGroup {
    pub id: String,
    pub name: Option<String>,
    pub addresses: Vec<IpNet>,
}

impl Element for SecurityGroup {
    const KIND: &'static str = "security_group";
    const LIST: &'static str = "security_groups";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let stateful = r.opt("stateful", conv_bool).unwrap_or(true);
        let group = id.as_deref().unwrap_or_default();
        let mut rules = Vec::new();
        for (path, obj) in r.list("security_group_rules", false) {
            // A rule with an id is reported as itself; without, as a field of its group.
            let rule = match id_of(obj) {
                Some(rule_id) => read_rule(
                    &mut r.nested(SecurityGroupRule::KIND, &rule_id, obj),
                    Some(group),
                ),
                None => read_rule(&mut r.child(&path, obj), Some(group)),
            };
            rules.extend(rule);
        }
        Some(SecurityGroup {
            id: id?,
            name,
            stateful,
            rules,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// The elements of the top-level `security_group_rules` list.
impl Element for SecurityGroupRule {
    const KIND: &'static str = "security_group_rule";
    const LIST: &'static str = "security_group_rules";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        read_rule(r, None)
    }

    fn key(&self) -> &str {
        &self.id
    }
}

impl Element for AddressGroup {
    const KIND: &'static str = "address_group";
    const LIST: &'static str = "address_groups";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let addresses = r
            .opt_list("addresses", conv_ip_prefix)
            .unwrap_or_default()
            .into_iter()
            .map(|net| net.trunc())
            .collect();
        Some(AddressGroup {
            id: id?,
            name,
            addresses,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// Reads one rule: top-level (`group` is `None`: `security_group_id` is required) or nested
/// in the group `group` (`""` when the group has no id).
fn read_rule(r: &mut Reader<'_, '_>, group: Option<&str>) -> Option<SecurityGroupRule> {
    let id = r.req("id", conv_id);
    let group_id = match group {
        None => r.req("security_group_id", conv_id),
        Some(group) => match r.opt("security_group_id", conv_id) {
            Some(named) if !group.is_empty() && named != group => {
                let message =
                    format!("the rule is nested in security group {group} but names {named}");
                r.error("security_group_id", message);
                None
            }
            _ => Some(group.to_owned()),
        },
    };
    let direction = r.req("direction", conv_direction);
    let ethertype = match r.present("ethertype") {
        None => Some(Ethertype::Ipv4),
        Some(_) => r.opt("ethertype", conv_ethertype),
    };
    let protocol = read_protocol(r, ethertype);
    let (port_range_min, port_range_max) = read_ports(r, protocol.as_ref());
    let protocol = protocol.map(|p| p.number);
    let remote = read_remote(r, ethertype);
    Some(SecurityGroupRule {
        id: id?,
        group_id: group_id?,
        direction: direction?,
        ethertype: ethertype?,
        protocol: protocol?,
        port_range_min,
        port_range_max,
        remote: remote?,
    })
}

fn conv_direction(v: &Value) -> Result<Direction, String> {
    match conv_string(v)?.as_str() {
        "ingress" => Ok(Direction::Ingress),
        "egress" => Ok(Direction::Egress),
        other => Err(format!(
            "unknown direction {other:?} (expected ingress or egress)"
        )),
    }
}

/// `IPv4` or `IPv6`, in any case (as Neutron accepts it).
fn conv_ethertype(v: &Value) -> Result<Ethertype, String> {
    let s = conv_string(v)?;
    if s.eq_ignore_ascii_case("ipv4") {
        Ok(Ethertype::Ipv4)
    } else if s.eq_ignore_ascii_case("ipv6") {
        Ok(Ethertype::Ipv6)
    } else {
        Err(format!("unknown ethertype {s:?} (expected IPv4 or IPv6)"))
    }
}

/// A rule's protocol as read.
struct Protocol {
    /// `None` for any.
    number: Option<u8>,
    /// How the state spells it, for messages.
    label: String,
}

/// The rule's protocol, `None` after an error.
fn read_protocol(r: &mut Reader<'_, '_>, ethertype: Option<Ethertype>) -> Option<Protocol> {
    const FIELD: &str = "protocol";
    let Some(v) = r.present(FIELD) else {
        return Some(Protocol {
            number: None,
            label: "any".into(),
        });
    };
    let (number, name) = match v {
        Value::Number(Number::Unsigned(n)) => (u8::try_from(*n).ok(), None),
        Value::String(s) => {
            let lower = s.to_ascii_lowercase();
            let number = if lower == "any" {
                Some(0)
            } else if let Some(&(_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == lower) {
                Some(n)
            } else if !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_digit()) {
                lower.parse::<u8>().ok()
            } else {
                None
            };
            (number, Some(lower))
        }
        _ => (None, None),
    };
    let Some(number) = number else {
        let message = format!(
            "unknown protocol {} (expected any, a name such as tcp, udp or icmp, or a number \
             0-255)",
            describe(v)
        );
        r.error(FIELD, message);
        return None;
    };
    let label = name.clone().unwrap_or_else(|| number.to_string());
    let name = name.as_deref();
    let number = match ethertype {
        Some(Ethertype::Ipv4) if name.is_some_and(|n| IPV6_ONLY_NAMES.contains(&n)) => {
            let message = format!("protocol {label} is IPv6 only, the rule's ethertype is IPv4");
            r.error(FIELD, message);
            return None;
        }
        // Neutron stores `icmp` on an IPv6 rule as ICMPv6.
        Some(Ethertype::Ipv6) if name == Some("icmp") => PROTO_ICMPV6,
        _ => number,
    };
    Some(Protocol {
        number: (number != 0).then_some(number),
        label,
    })
}

/// A port, ICMP type or code: an integer, or a string of digits (Neutron converts both).
fn conv_range_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(Number::Unsigned(n)) => Ok(*n),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is out of range")),
        other => Err(format!(
            "expected a non-negative integer, got {}",
            describe(other)
        )),
    }
}

/// `port_range_min` / `port_range_max` checked against the protocol (`None` when the
/// protocol did not read).
fn read_ports(r: &mut Reader<'_, '_>, protocol: Option<&Protocol>) -> (Option<u16>, Option<u16>) {
    const MIN: &str = "port_range_min";
    const MAX: &str = "port_range_max";
    let has_min = r.present(MIN).is_some();
    let has_max = r.present(MAX).is_some();
    let min = r.opt(MIN, conv_range_value);
    let max = r.opt(MAX, conv_range_value);
    let Some(Protocol { number, label }) = protocol else {
        return (None, None);
    };
    let protocol = *number;
    if !has_min && !has_max {
        return (None, None);
    }
    let (limit, min_what, max_what) = match protocol {
        Some(p) if has_ports(p) => (u64::from(u16::MAX), "port", "port"),
        Some(p) if is_icmp(p) => (u64::from(u8::MAX), "ICMP type", "ICMP code"),
        _ => {
            let field = if has_min { MIN } else { MAX };
            let message = format!(
                "protocol {label} has no ports (only tcp, udp, sctp, udplite and dccp rules take \
                 a port range, icmp and icmpv6 rules a type and code)"
            );
            r.error(field, message);
            return (None, None);
        }
    };
    let mut in_range = |field: &str, what: &str, value: Option<u64>| -> Option<u16> {
        let value = value?;
        match u16::try_from(value).ok().filter(|&v| u64::from(v) <= limit) {
            Some(v) => Some(v),
            None => {
                r.error(field, format!("{what} {value} is outside 0..={limit}"));
                None
            }
        }
    };
    let min = in_range(MIN, min_what, min);
    let max = in_range(MAX, max_what, max);
    if !has_min {
        let message = if protocol.is_some_and(is_icmp) {
            "an ICMP code needs an ICMP type in port_range_min"
        } else {
            "set without port_range_min"
        };
        r.error(MAX, message);
        return (None, None);
    }
    match (min, max) {
        (Some(lo), Some(hi)) if has_ports_or_none(protocol) && hi < lo => {
            r.error(MAX, format!("{hi} is below port_range_min {lo}"));
            (None, None)
        }
        // A lone port_range_min is one port.
        (Some(lo), None) if has_ports_or_none(protocol) => (Some(lo), Some(lo)),
        other => other,
    }
}

fn has_ports_or_none(protocol: Option<u8>) -> bool {
    protocol.is_some_and(has_ports)
}

/// At most one remote field; a prefix of the rule's family.
fn read_remote(r: &mut Reader<'_, '_>, ethertype: Option<Ethertype>) -> Option<Remote> {
    const FIELDS: [&str; 3] = [
        "remote_ip_prefix",
        "remote_group_id",
        "remote_address_group_id",
    ];
    let prefix = r.opt(FIELDS[0], conv_ip_prefix);
    let group = r.opt_nonempty(FIELDS[1]);
    let address_group = r.opt_nonempty(FIELDS[2]);
    let set = [prefix.is_some(), group.is_some(), address_group.is_some()];
    let mut named = FIELDS.iter().zip(set).filter(|(_, s)| *s).map(|(f, _)| *f);
    if let Some(first) = named.next() {
        let others: Vec<&str> = named.collect();
        for field in &others {
            let message = format!(
                "only one of remote_ip_prefix, remote_group_id and remote_address_group_id may \
                 be set (also {first})"
            );
            r.error(field, message);
        }
        if !others.is_empty() {
            return None;
        }
    }
    if let Some(net) = prefix {
        let family = match net {
            IpNet::V4(_) => Ethertype::Ipv4,
            IpNet::V6(_) => Ethertype::Ipv6,
        };
        if let Some(ethertype) = ethertype
            && family != ethertype
        {
            let (is, rule) = match family {
                Ethertype::Ipv4 => ("IPv4", "IPv6"),
                Ethertype::Ipv6 => ("IPv6", "IPv4"),
            };
            let message = format!("{net} is {is}, the rule's ethertype is {rule}");
            r.error(FIELDS[0], message);
            return None;
        }
        return Some(Remote::Prefix(net.trunc()));
    }
    Some(match (group, address_group) {
        (Some(g), _) => Remote::Group(g),
        (_, Some(a)) => Remote::AddressGroup(a),
        (None, None) => Remote::Any,
    })
}

/// The parsed security group lists: groups with every rule merged in, and address groups.
pub(super) struct Lists {
    pub(super) groups: Parsed<SecurityGroup>,
    pub(super) address_groups: Parsed<AddressGroup>,
}

/// Reads `security_groups`, `security_group_rules` and `address_groups`, and merges the
/// top-level rules into their groups.
pub(super) fn parse_lists(
    root: &Object<'_>,
    errors: &mut Vec<FieldError>,
) -> Result<Lists, StateError> {
    let mut groups = parse::list::<SecurityGroup>(root, errors)?;
    let rules = parse::list::<SecurityGroupRule>(root, errors)?;
    let address_groups = parse::list::<AddressGroup>(root, errors)?;
    merge_rules(&mut groups, rules.table.into_items(), errors);
    Ok(Lists {
        groups,
        address_groups,
    })
}

/// Top-level rules join their group; a rule id is used once in the whole state.
fn merge_rules(
    groups: &mut Parsed<SecurityGroup>,
    top_level: Vec<SecurityGroupRule>,
    errors: &mut Vec<FieldError>,
) {
    const KIND: &str = SecurityGroupRule::KIND;
    let mut out = Report::new(errors);
    // Rule id -> the group it is nested in.
    let mut nested: HashMap<String, String> = HashMap::default();
    for g in groups.table.items() {
        for rule in &g.rules {
            match nested.entry(rule.id.clone()) {
                Entry::Occupied(o) => {
                    let message = format!("duplicate id (also in security group {})", o.get());
                    out.error(KIND, &rule.id, "id", message);
                }
                Entry::Vacant(v) => {
                    v.insert(g.id.clone());
                }
            }
        }
    }
    // Duplicates within the top-level list were reported (and dropped) by the parser.
    for rule in top_level {
        if let Some(group) = nested.get(&rule.id) {
            let message =
                format!("duplicate id (also in security group {group}'s security_group_rules)");
            out.error(KIND, &rule.id, "id", message);
            continue;
        }
        match groups.table.get_mut(&rule.group_id) {
            Some(g) => g.rules.push(rule),
            None if groups.broken.contains(&rule.group_id) => {}
            None => {
                let message = format!("security group {} does not exist", rule.group_id);
                out.error(KIND, &rule.id, "security_group_id", message);
            }
        }
    }
}

/// A rule's remote group and remote address group exist.
pub(super) fn check_rules(
    out: &mut Report<'_>,
    groups: &[SecurityGroup],
    known_groups: Known<'_, SecurityGroup>,
    address_groups: Known<'_, AddressGroup>,
) {
    for rule in groups.iter().flat_map(|g| &g.rules) {
        let (field, what, missing) = match &rule.remote {
            Remote::Group(id) => (
                "remote_group_id",
                "security group",
                matches!(known_groups.resolve(id), Ref::Missing).then_some(id),
            ),
            Remote::AddressGroup(id) => (
                "remote_address_group_id",
                "address group",
                matches!(address_groups.resolve(id), Ref::Missing).then_some(id),
            ),
            Remote::Any | Remote::Prefix(_) => continue,
        };
        if let Some(id) = missing {
            let message = format!("{what} {id} does not exist");
            out.error(SecurityGroupRule::KIND, &rule.id, field, message);
        }
    }
}

/// A port's groups exist; a port without port security has none; a port's groups are all
/// stateful or all stateless.
pub(super) fn check_port_groups(
    out: &mut Report<'_>,
    ports: &[Port],
    groups: Known<'_, SecurityGroup>,
) {
    const FIELD: &str = "security_groups";
    for p in ports {
        let Some(list) = &p.security_groups else {
            continue;
        };
        if !p.port_security_enabled && !list.is_empty() {
            out.error(
                "port",
                &p.id,
                FIELD,
                "port_security_enabled is false: a port without port security takes no \
                 security groups",
            );
        }
        let mut stateful: Option<&str> = None;
        let mut stateless: Option<&str> = None;
        for (i, id) in list.iter().enumerate() {
            match groups.resolve(id) {
                Ref::Found(n) => {
                    if let Some(g) = groups.table.at(n) {
                        let slot = if g.stateful {
                            &mut stateful
                        } else {
                            &mut stateless
                        };
                        slot.get_or_insert(&g.id);
                    }
                }
                Ref::Broken => {}
                Ref::Missing => {
                    let message = format!("security group {id} does not exist");
                    out.error("port", &p.id, &format!("{FIELD}[{i}]"), message);
                }
            }
        }
        if let (Some(a), Some(b)) = (stateful, stateless) {
            let message = format!(
                "mixes stateful and stateless security groups: {a} is stateful, {b} is stateless"
            );
            out.error("port", &p.id, FIELD, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{State, display_lines};
    use crate::testing::*;
    use serde_json::{Value, json};

    fn net(s: &str) -> IpNet {
        match s.parse() {
            Ok(n) => n,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    /// The fixture with a second (stateless) group, an address group, and top-level rules
    /// for both groups.
    fn with_groups() -> Value {
        let mut v = fixture_value();
        push(
            &mut v,
            "security_groups",
            json!({"id": "sg2", "name": "udp", "stateful": false, "security_group_rules": [
                {"id": "sg2-dns", "direction": "ingress", "protocol": 17, "port_range_min": 53},
            ]}),
        );
        v["address_groups"] = json!([
            {"id": "ag1", "name": "office", "addresses": ["198.51.100.7/24", "2001:db8::1/64", "192.0.2.9"]}
        ]);
        v["security_group_rules"] = json!([
            {"id": "top-web", "security_group_id": "sg1", "direction": "ingress",
             "ethertype": "IPv4", "protocol": "6", "port_range_min": "8000", "port_range_max": 8080,
             "remote_address_group_id": "ag1"},
            {"id": "top-ping", "security_group_id": "sg1", "direction": "ingress",
             "protocol": "ICMP", "port_range_min": 8, "remote_ip_prefix": "10.0.1.77/24"},
            {"id": "top-v6", "security_group_id": "sg1", "direction": "ingress",
             "ethertype": "ipv6", "protocol": "icmp", "port_range_min": 128, "port_range_max": 0,
             "remote_ip_prefix": "2001:db8::/32"},
            {"id": "top-any", "security_group_id": "sg2", "direction": "egress", "protocol": "any"},
            {"id": "top-gre", "security_group_id": "sg2", "direction": "egress", "protocol": "gre",
             "remote_group_id": "sg1"}
        ]);
        v
    }

    fn group(s: &State, id: &str) -> SecurityGroup {
        match s.security_group(id) {
            Some(g) => g.clone(),
            None => panic!("no security group {id}"),
        }
    }

    fn rule(g: &SecurityGroup, id: &str) -> SecurityGroupRule {
        match g.rules.iter().find(|r| r.id == id) {
            Some(r) => r.clone(),
            None => panic!("no rule {id} in {}", g.id),
        }
    }

    #[test]
    fn groups_parse_and_top_level_rules_merge() {
        let s = state_of(&with_groups());
        let sg1 = group(&s, "sg1");
        assert_eq!((sg1.name.as_deref(), sg1.stateful), (Some("default"), true));
        let ids: Vec<&str> = sg1.rules.iter().map(|r| r.id.as_str()).collect();
        // Nested first, then the top-level ones in list order.
        assert_eq!(
            ids,
            [
                "sg1-egress",
                "sg1-members",
                "sg1-ssh",
                "top-web",
                "top-ping",
                "top-v6"
            ]
        );
        assert!(sg1.rules.iter().all(|r| r.group_id == "sg1"));
        assert_eq!(
            rule(&sg1, "sg1-egress"),
            SecurityGroupRule {
                id: "sg1-egress".into(),
                group_id: "sg1".into(),
                direction: Direction::Egress,
                ethertype: Ethertype::Ipv4,
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote: Remote::Any,
            }
        );
        assert_eq!(
            rule(&sg1, "sg1-members").remote,
            Remote::Group("sg1".into())
        );
        let ssh = rule(&sg1, "sg1-ssh");
        assert_eq!(
            (ssh.protocol, ssh.port_match(), ssh.remote),
            (
                Some(PROTO_TCP),
                PortMatch::Range { min: 22, max: 22 },
                Remote::Prefix(net("0.0.0.0/0"))
            )
        );
        let web = rule(&sg1, "top-web");
        assert_eq!(
            (web.protocol, web.port_match(), web.remote),
            (
                Some(PROTO_TCP),
                PortMatch::Range {
                    min: 8000,
                    max: 8080
                },
                Remote::AddressGroup("ag1".into())
            )
        );
        // Host bits of a remote prefix are dropped; a type without a code is any code.
        let ping = rule(&sg1, "top-ping");
        assert_eq!(
            (ping.protocol, ping.port_match(), ping.remote),
            (
                Some(PROTO_ICMP),
                PortMatch::Icmp {
                    icmp_type: 8,
                    code: None
                },
                Remote::Prefix(net("10.0.1.0/24"))
            )
        );
        // IPv6 rules are kept; `icmp` on them is ICMPv6.
        let v6 = rule(&sg1, "top-v6");
        assert_eq!(
            (v6.ethertype, v6.protocol, v6.port_match(), v6.remote),
            (
                Ethertype::Ipv6,
                Some(PROTO_ICMPV6),
                PortMatch::Icmp {
                    icmp_type: 128,
                    code: Some(0)
                },
                Remote::Prefix(net("2001:db8::/32"))
            )
        );
        let sg2 = group(&s, "sg2");
        assert!(!sg2.stateful);
        let ids: Vec<&str> = sg2.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["sg2-dns", "top-any", "top-gre"]);
        // A lone port_range_min is one port.
        let dns = rule(&sg2, "sg2-dns");
        assert_eq!(
            (dns.protocol, dns.port_range_min, dns.port_range_max),
            (Some(PROTO_UDP), Some(53), Some(53))
        );
        assert_eq!(rule(&sg2, "top-any").protocol, None);
        let gre = rule(&sg2, "top-gre");
        assert_eq!((gre.protocol, gre.port_match()), (Some(47), PortMatch::Any));
        let ag = s.address_group("ag1").map(|a| a.addresses.clone());
        assert_eq!(
            ag,
            Some(vec![
                net("198.51.100.0/24"),
                net("2001:db8::/64"),
                net("192.0.2.9/32")
            ])
        );
        assert_eq!(s.security_groups().len(), 2);
        assert_eq!(s.address_groups().len(), 1);
    }

    #[test]
    fn protocols_by_name_and_number() {
        let cases: [(Value, Option<u8>); 9] = [
            (Value::Null, None),
            ("any".into(), None),
            (0.into(), None),
            ("0".into(), None),
            ("tcp".into(), Some(6)),
            ("UDP".into(), Some(17)),
            ("112".into(), Some(112)),
            (255.into(), Some(255)),
            ("vrrp".into(), Some(112)),
        ];
        for (protocol, expected) in cases {
            let mut v = fixture_value();
            v["security_group_rules"] = json!([{"id": "r", "security_group_id": "sg1",
                "direction": "egress", "protocol": protocol.clone()}]);
            let s = state_of(&v);
            assert_eq!(
                rule(&group(&s, "sg1"), "r").protocol,
                expected,
                "{protocol}"
            );
        }
    }

    #[test]
    fn ports_carry_their_groups_and_admin_state() {
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm3")["security_groups"] = json!([]);
        elem(&mut v, "ports", "id", "vm3")["admin_state_up"] = false.into();
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = Value::Null;
        let s = state_of(&v);
        let port = |id: &str| match s.port(id) {
            Some(p) => (p.security_groups.clone(), p.admin_state_up),
            None => panic!("no port {id}"),
        };
        assert_eq!(port("vm1"), (Some(vec!["sg1".to_owned()]), true));
        assert_eq!(port("vm2"), (None, true));
        assert_eq!(port("vm3"), (Some(vec![]), false));
        assert_eq!(port("rif1"), (None, true));
    }

    /// The errors of the fixture with `rule` added to sg1's nested rules.
    fn nested_rule_errors(rule: Value) -> Vec<FieldError> {
        errors_after(|v| {
            match v["security_groups"][0]["security_group_rules"].as_array_mut() {
                Some(rules) => rules.push(rule),
                None => panic!("sg1 has no rule list"),
            };
        })
    }

    #[track_caller]
    fn assert_rule_error(rule: Value, field: &str, text: &str) {
        let errors = nested_rule_errors(rule);
        assert_error(&errors, "security_group_rule", "r", field, text);
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn rule_field_errors_name_the_rule_and_field() {
        let r = |extra: Value| {
            let mut rule = json!({"id": "r", "direction": "ingress"});
            if let (Some(obj), Value::Object(extra)) = (rule.as_object_mut(), extra) {
                obj.extend(extra);
            }
            rule
        };
        assert_rule_error(json!({"id": "r"}), "direction", "missing");
        assert_rule_error(
            r(json!({"direction": "inbound"})),
            "direction",
            "unknown direction \"inbound\" (expected ingress or egress)",
        );
        assert_rule_error(
            r(json!({"ethertype": "IPv5"})),
            "ethertype",
            "unknown ethertype \"IPv5\"",
        );
        assert_rule_error(
            r(json!({"protocol": "tcpp"})),
            "protocol",
            "unknown protocol a string \"tcpp\"",
        );
        assert_rule_error(
            r(json!({"protocol": 256})),
            "protocol",
            "unknown protocol a number 256",
        );
        assert_rule_error(
            r(json!({"protocol": "ipv6-icmp"})),
            "protocol",
            "protocol ipv6-icmp is IPv6 only, the rule's ethertype is IPv4",
        );
        assert_rule_error(
            r(json!({"security_group_id": "sg9"})),
            "security_group_id",
            "the rule is nested in security group sg1 but names sg9",
        );
    }

    #[test]
    fn port_range_errors() {
        let r = |protocol: &str, min: Value, max: Value| {
            json!({"id": "r", "direction": "ingress", "protocol": protocol,
                   "port_range_min": min, "port_range_max": max})
        };
        assert_rule_error(
            r("tcp", 81.into(), 80.into()),
            "port_range_max",
            "80 is below port_range_min 81",
        );
        assert_rule_error(
            r("udp", 70000.into(), Value::Null),
            "port_range_min",
            "port 70000 is outside 0..=65535",
        );
        assert_rule_error(
            r("udp", 1.into(), 65536.into()),
            "port_range_max",
            "port 65536 is outside 0..=65535",
        );
        assert_rule_error(
            r("tcp", Value::Null, 80.into()),
            "port_range_max",
            "set without port_range_min",
        );
        assert_rule_error(
            r("tcp", "eighty".into(), Value::Null),
            "port_range_min",
            "expected a non-negative integer, got a string \"eighty\"",
        );
        assert_rule_error(
            r("tcp", (-1).into(), Value::Null),
            "port_range_min",
            "expected a non-negative integer, got a number -1",
        );
        assert_rule_error(
            r("icmp", 256.into(), Value::Null),
            "port_range_min",
            "ICMP type 256 is outside 0..=255",
        );
        assert_rule_error(
            r("icmp", 3.into(), 256.into()),
            "port_range_max",
            "ICMP code 256 is outside 0..=255",
        );
        assert_rule_error(
            r("icmp", Value::Null, 4.into()),
            "port_range_max",
            "an ICMP code needs an ICMP type in port_range_min",
        );
        assert_rule_error(
            r("gre", 1.into(), 2.into()),
            "port_range_min",
            "protocol gre has no ports",
        );
        assert_rule_error(
            r("any", Value::Null, 2.into()),
            "port_range_max",
            "protocol any has no ports",
        );
        // Any ICMP code is below or above any type: no order between the two.
        let mut v = fixture_value();
        v["security_group_rules"] = json!([{"id": "r", "security_group_id": "sg1",
            "direction": "ingress", "protocol": "icmp", "port_range_min": 3, "port_range_max": 1}]);
        state_of(&v);
    }

    #[test]
    fn remote_errors() {
        let r = |extra: Value| {
            let mut rule = json!({"id": "r", "direction": "ingress"});
            if let (Some(obj), Value::Object(extra)) = (rule.as_object_mut(), extra) {
                obj.extend(extra);
            }
            rule
        };
        assert_rule_error(
            r(json!({"remote_ip_prefix": "10.0.0.0/33"})),
            "remote_ip_prefix",
            "invalid address or CIDR \"10.0.0.0/33\"",
        );
        assert_rule_error(
            r(json!({"remote_ip_prefix": "2001:db8::/64"})),
            "remote_ip_prefix",
            "2001:db8::/64 is IPv6, the rule's ethertype is IPv4",
        );
        assert_rule_error(
            r(json!({"ethertype": "IPv6", "remote_ip_prefix": "10.0.0.1"})),
            "remote_ip_prefix",
            "10.0.0.1/32 is IPv4, the rule's ethertype is IPv6",
        );
        assert_rule_error(
            r(json!({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "sg1"})),
            "remote_group_id",
            "only one of remote_ip_prefix, remote_group_id and remote_address_group_id may be \
             set (also remote_ip_prefix)",
        );
        assert_rule_error(
            r(json!({"remote_group_id": "sg9"})),
            "remote_group_id",
            "security group sg9 does not exist",
        );
        assert_rule_error(
            r(json!({"remote_address_group_id": "ag9"})),
            "remote_address_group_id",
            "address group ag9 does not exist",
        );
        // Two remote fields, both wrong in themselves: one error per extra field.
        let errors = nested_rule_errors(r(json!({"remote_ip_prefix": "10.0.0.0/8",
            "remote_group_id": "sg1", "remote_address_group_id": "ag1"})));
        assert_error(
            &errors,
            "security_group_rule",
            "r",
            "remote_address_group_id",
            "only one of",
        );
        assert_eq!(errors.len(), 2, "{}", display_lines(&errors));
    }

    #[test]
    fn rule_without_id_is_reported_on_its_group() {
        let errors = nested_rule_errors(json!({"direction": "sideways"}));
        assert_error(
            &errors,
            "security_group",
            "sg1",
            "security_group_rules[3].id",
            "missing",
        );
        assert_error(
            &errors,
            "security_group",
            "sg1",
            "security_group_rules[3].direction",
            "unknown direction",
        );
        assert_eq!(errors.len(), 2, "{}", display_lines(&errors));
    }

    #[test]
    fn top_level_rule_errors() {
        let errors = errors_after(|v| {
            v["security_group_rules"] = json!([
                {"id": "r1", "security_group_id": "sg9", "direction": "egress"},
                {"id": "r2", "direction": "egress"},
                {"id": "r3", "security_group_id": "sg1", "direction": "egress"},
                {"id": "r3", "security_group_id": "sg1", "direction": "ingress"},
                {"id": "sg1-ssh", "security_group_id": "sg1", "direction": "egress"}
            ]);
        });
        assert_error(
            &errors,
            "security_group_rule",
            "r1",
            "security_group_id",
            "security group sg9 does not exist",
        );
        assert_error(
            &errors,
            "security_group_rule",
            "r2",
            "security_group_id",
            "missing",
        );
        assert_error(
            &errors,
            "security_group_rule",
            "r3",
            "id",
            "duplicate id (also security_group_rules[2])",
        );
        assert_error(
            &errors,
            "security_group_rule",
            "sg1-ssh",
            "id",
            "duplicate id (also in security group sg1's security_group_rules)",
        );
        assert_eq!(errors.len(), 4, "{}", display_lines(&errors));
    }

    #[test]
    fn nested_rule_ids_are_unique_across_groups() {
        let errors = errors_after(|v| {
            push(
                v,
                "security_groups",
                json!({"id": "sg2", "security_group_rules": [
                    {"id": "sg1-ssh", "direction": "egress"}]}),
            );
        });
        assert_error(
            &errors,
            "security_group_rule",
            "sg1-ssh",
            "id",
            "duplicate id (also in security group sg1)",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
        // A rule of a group that did not parse is not reported again as orphaned.
        let errors = errors_after(|v| {
            push(
                v,
                "security_groups",
                json!({"id": "sg2", "stateful": "yes"}),
            );
            v["security_group_rules"] = json!([
                {"id": "r1", "security_group_id": "sg2", "direction": "egress"}]);
        });
        assert_error(
            &errors,
            "security_group",
            "sg2",
            "stateful",
            "expected a boolean",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn address_group_errors() {
        let errors = errors_after(|v| {
            v["address_groups"] = json!([
                {"id": "ag1", "addresses": ["10.0.0.0/8", "10.0.0.300", 7]},
                {"id": "ag2", "addresses": "10.0.0.0/8"}
            ]);
        });
        assert_error(
            &errors,
            "address_group",
            "ag1",
            "addresses[1]",
            "invalid address or CIDR \"10.0.0.300\"",
        );
        assert_error(
            &errors,
            "address_group",
            "ag1",
            "addresses[2]",
            "expected a string",
        );
        assert_error(
            &errors,
            "address_group",
            "ag2",
            "addresses",
            "expected a list",
        );
        assert_eq!(errors.len(), 3, "{}", display_lines(&errors));
    }

    #[test]
    fn port_group_errors() {
        let errors = errors_after(|v| {
            push(
                v,
                "security_groups",
                json!({"id": "sg2", "stateful": false}),
            );
            elem(v, "ports", "id", "vm1")["security_groups"] = json!(["sg1", "sg9"]);
            let vm2 = elem(v, "ports", "id", "vm2");
            vm2["security_groups"] = json!(["sg1"]);
            vm2["port_security_enabled"] = false.into();
            elem(v, "ports", "id", "vm3")["security_groups"] = json!(["sg1", "sg2", "sg1"]);
            elem(v, "ports", "id", "rif1")["security_groups"] = json!(["sg1", 7]);
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "security_groups[1]",
            "security group sg9 does not exist",
        );
        assert_error(
            &errors,
            "port",
            "vm2",
            "security_groups",
            "port_security_enabled is false: a port without port security takes no security \
             groups",
        );
        assert_error(
            &errors,
            "port",
            "vm3",
            "security_groups",
            "mixes stateful and stateless security groups: sg1 is stateful, sg2 is stateless",
        );
        assert_error(
            &errors,
            "port",
            "rif1",
            "security_groups[1]",
            "expected a string",
        );
        assert_eq!(errors.len(), 4, "{}", display_lines(&errors));
        // No port security with an empty list (what Neutron sends) is fine.
        let mut v = fixture_value();
        let vm2 = elem(&mut v, "ports", "id", "vm2");
        vm2["security_groups"] = json!([]);
        vm2["port_security_enabled"] = false.into();
        state_of(&v);
    }

    #[test]
    fn error_text_names_kind_id_and_field() {
        let mut v = fixture_value();
        v["security_group_rules"] = json!([{"id": "r7", "security_group_id": "sg1",
            "direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}]);
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = json!(["nope"]);
        let text = match State::from_json(&v.to_string()) {
            Ok(_) => panic!("validated"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "security_group_rule r7: field `port_range_max`: 80 is below port_range_min 90",
                "port vm2: field `security_groups[0]`: security group nope does not exist",
            ]
        );
    }
}
