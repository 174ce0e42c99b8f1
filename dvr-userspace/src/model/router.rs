//! Routers: their external gateway, their extra routes and, for HA routers, the hosts that
//! may hold their centralized role.

use std::collections::hash_map::Entry;
use std::net::IpAddr;

use ipnet::IpNet;

use super::check::{Known, Report};
use super::host::{AgentMode, Host};
use super::network::{
    FamilySubnet, FixedIp, FixedIp6, FixedIpAt, FixedIpPos, Network, Subnet, Subnet6,
    check_external_network, fixed_ip_inside, fixed_ip_subnet, read_fixed_ips,
};
use super::parse::{
    Element, Reader, conv_bool, conv_cidr, conv_id, conv_ip, conv_string, conv_u32, describe,
};
use super::table::HashMap;
use crate::json::Value;

/// A router's `external_gateway_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalGateway {
    pub network_id: String,
    pub enable_snat: bool,
    /// The IPv4 entries of `external_fixed_ips`.
    pub external_fixed_ips: Vec<FixedIp>,
    /// The IPv6 entries of `external_fixed_ips`.
    pub external_fixed_ips6: Vec<FixedIp6>,
    /// Where each entry sat in the state's `external_fixed_ips` (for error paths).
    pub(super) fixed_ip_pos: FixedIpPos,
}

/// A Neutron router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    pub name: Option<String>,
    pub external_gateway: Option<ExternalGateway>,
    pub distributed: bool,
    pub ha: bool,
    /// `ha_hosts`: the `dvr_snat` hosts that may hold the router's centralized role, as
    /// listed (see [`Router::ha_candidates`] for the order of preference).
    pub ha_hosts: Vec<HaHost>,
    /// `routes`: the extra routes, as listed (absent or `null`: none). Validated: each
    /// next hop of its destination's family, on a subnet the router has an interface on
    /// and not an address of the router; a route listed twice refused.
    pub routes: Vec<ExtraRoute>,
    /// `admin_state_up` (default true): false stops the router: it routes nothing, serves
    /// no floating IP and no SNAT, and its conntrack entries go.
    pub admin_state_up: bool,
}

/// One entry of a router's `routes` (Neutron's extra routes): frames to `destination` go
/// to `nexthop`, an address on one of the router's subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraRoute {
    /// IPv4 or IPv6, without host bits.
    pub destination: IpNet,
    /// Of the destination's family.
    pub nexthop: IpAddr,
}

/// One entry of a router's `ha_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaHost {
    pub host: String,
    /// Higher is preferred; ties go to the host name that sorts first.
    pub priority: u32,
}

impl Router {
    /// True when the router's centralized role is elected among `ha_hosts` (docs/HA.md);
    /// otherwise it is where its csnat ports are bound.
    pub fn is_ha_managed(&self) -> bool {
        self.ha && !self.ha_hosts.is_empty()
    }

    /// `ha_hosts`, most preferred first.
    pub fn ha_candidates(&self) -> Vec<&HaHost> {
        let mut c: Vec<&HaHost> = self.ha_hosts.iter().collect();
        c.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.host.cmp(&b.host))
        });
        c
    }
}

impl Element for Router {
    const KIND: &'static str = "router";
    const LIST: &'static str = "routers";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let external_gateway = match r.present("external_gateway_info") {
            None => None,
            Some(Value::Object(gw)) => {
                let mut g = r.child("external_gateway_info.", gw);
                let network_id = g.req("network_id", conv_id);
                let enable_snat = g.opt("enable_snat", conv_bool).unwrap_or(true);
                let fixed = read_fixed_ips(&mut g, "external_fixed_ips", false);
                network_id.map(|network_id| ExternalGateway {
                    network_id,
                    enable_snat,
                    external_fixed_ips: fixed.v4,
                    external_fixed_ips6: fixed.v6,
                    fixed_ip_pos: fixed.pos,
                })
            }
            Some(other) => {
                let message = format!("expected an object or null, got {}", describe(other));
                r.error("external_gateway_info", message);
                None
            }
        };
        let distributed = r.opt("distributed", conv_bool).unwrap_or(true);
        let ha = r.opt("ha", conv_bool).unwrap_or(false);
        let mut ha_hosts = Vec::new();
        for (path, obj) in r.list("ha_hosts", false) {
            let mut h = r.child(&path, obj);
            let host = h.req("host", conv_id);
            let priority = h.req("priority", conv_u32);
            if let (Some(host), Some(priority)) = (host, priority) {
                ha_hosts.push(HaHost { host, priority });
            }
        }
        let routes = read_routes(r);
        let admin_state_up = r.opt("admin_state_up", conv_bool).unwrap_or(true);
        Some(Router {
            id: id?,
            name,
            external_gateway,
            distributed,
            ha,
            ha_hosts,
            routes,
            admin_state_up,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

pub(super) fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// `routes`: each entry a CIDR `destination` and a `nexthop` of its family. Neutron refuses
/// a route listed twice, and accepts several next hops for one destination (ECMP): they
/// are kept, in order (how the datapath uses them is the compile step's business).
fn read_routes(r: &mut Reader<'_, '_>) -> Vec<ExtraRoute> {
    let mut routes = Vec::new();
    // (Destination, next hop) -> where it was first listed.
    let mut seen: HashMap<(IpNet, IpAddr), String> = HashMap::default();
    for (path, obj) in r.list("routes", false) {
        let mut e = r.child(&path, obj);
        let destination = e.req("destination", conv_cidr);
        let nexthop = e.req("nexthop", conv_ip);
        let (Some(destination), Some(nexthop)) = (destination, nexthop) else {
            continue;
        };
        let dest_family = family(destination.addr());
        if family(nexthop) != dest_family {
            let message = format!(
                "{nexthop} is an {} address, destination {destination} is {dest_family}",
                family(nexthop)
            );
            e.error("nexthop", message);
            continue;
        }
        let here = path.trim_end_matches('.');
        match seen.entry((destination, nexthop)) {
            Entry::Occupied(first) => {
                let at = first.get();
                let message =
                    format!("route to {destination} via {nexthop} is listed twice (also {at})");
                e.error("destination", message);
            }
            Entry::Vacant(slot) => {
                slot.insert(here.to_owned());
                routes.push(ExtraRoute {
                    destination,
                    nexthop,
                });
            }
        }
    }
    routes
}

/// A gateway is on an external network, its addresses on subnets of that network.
pub(super) fn check_routers(
    out: &mut Report<'_>,
    routers: &[Router],
    networks: Known<'_, Network>,
    subnets: Known<'_, Subnet>,
    subnets6: Known<'_, Subnet6>,
) {
    for r in routers {
        let Some(gw) = &r.external_gateway else {
            continue;
        };
        check_external_network(
            out,
            networks,
            "router",
            &r.id,
            "external_gateway_info.network_id",
            &gw.network_id,
        );
        let pos = &gw.fixed_ip_pos;
        let v6 = gw.external_fixed_ips6.iter().enumerate();
        let v6 = v6.map(|(i, f)| (pos.v6(i), f.subnet_id.as_str(), f.ip));
        check_gateway_ips(out, r, gw, v6, subnets6, subnets);
        let v4 = gw.external_fixed_ips.iter().enumerate();
        let v4 = v4.map(|(i, f)| (pos.v4(i), f.subnet_id.as_str(), f.ip));
        check_gateway_ips(out, r, gw, v4, subnets, subnets6);
    }
}

/// The gateway's `external_fixed_ips` of `S`'s family, as (position in the list, subnet id,
/// address): each on an existing subnet of the gateway network, and inside it.
fn check_gateway_ips<'a, S: FamilySubnet, O>(
    out: &mut Report<'_>,
    r: &Router,
    gw: &ExternalGateway,
    fixed_ips: impl Iterator<Item = (usize, &'a str, S::Addr)>,
    subnets: Known<'_, S>,
    other: Known<'_, O>,
) {
    for (at, subnet_id, ip) in fixed_ips {
        let at = FixedIpAt {
            kind: "router",
            id: &r.id,
            prefix: format!("external_gateway_info.external_fixed_ips[{at}]"),
        };
        let Some((_, sub)) = fixed_ip_subnet(out, &at, subnet_id, ip, subnets, other) else {
            continue;
        };
        if sub.network_id() != gw.network_id {
            let message = format!(
                "subnet {} is on network {}, not on the gateway network {}",
                sub.id(),
                sub.network_id(),
                gw.network_id
            );
            out.error("router", &r.id, &at.subnet_field(), message);
        } else {
            fixed_ip_inside(out, &at, sub, ip);
        }
    }
}

/// `ha_hosts`: only with `ha: true`, distinct `dvr_snat` hosts with an external interface.
/// One is enough: the Neutron plugin lists every SNAT host of the cloud, which may be one,
/// and the role then moves to a second host as soon as it registers.
pub(super) fn check_ha_hosts(out: &mut Report<'_>, routers: &[Router], hosts: Known<'_, Host>) {
    for r in routers.iter().filter(|r| !r.ha_hosts.is_empty()) {
        if !r.ha {
            let message = "only an HA router (ha: true) has ha_hosts";
            out.error("router", &r.id, "ha_hosts", message);
            continue;
        }
        let mut seen: HashMap<&str, usize> = HashMap::default();
        for (i, c) in r.ha_hosts.iter().enumerate() {
            let field = format!("ha_hosts[{i}].host");
            if let Some(first) = seen.insert(&c.host, i) {
                let message = format!("host {} is listed twice (also ha_hosts[{first}])", c.host);
                out.error("router", &r.id, &field, message);
                continue;
            }
            let problem = match hosts.table.get(&c.host) {
                None if hosts.is_broken(&c.host) => None,
                None => Some(format!("host {} does not exist", c.host)),
                Some(h) => match (h.agent_mode, &h.external_interface) {
                    (AgentMode::DvrSnat, Some(_)) => None,
                    (AgentMode::DvrSnat, None) => Some(format!(
                        "host {} is dvr_snat but has no external_interface",
                        c.host
                    )),
                    (mode, _) => Some(format!(
                        "host {} is agent_mode {mode}, not dvr_snat",
                        c.host
                    )),
                },
            };
            if let Some(message) = problem {
                out.error("router", &r.id, &field, message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExtraRoute;
    use crate::model::display_lines;
    use crate::testing::*;
    use serde_json::{Value, json};

    /// The fixture's router1 with `routes`: the errors, each checked to be about
    /// `routes[..]` of router1, with the whole message as given.
    #[track_caller]
    fn route_errors(routes: Value) -> Vec<(String, String)> {
        let errors = errors_after(|v| with_routes(v, routes));
        errors
            .iter()
            .map(|e| {
                assert!(
                    e.kind == "router" && e.id == "router1" && e.field.starts_with("routes"),
                    "{}",
                    display_lines(&errors)
                );
                (e.field.clone(), e.message.clone())
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, m)| ((*f).to_owned(), (*m).to_owned()))
            .collect()
    }

    fn route(destination: &str, nexthop: &str) -> ExtraRoute {
        match (destination.parse(), nexthop.parse()) {
            (Ok(destination), Ok(nexthop)) => ExtraRoute {
                destination,
                nexthop,
            },
            _ => panic!("bad route {destination} via {nexthop}"),
        }
    }

    #[test]
    fn routes_absent_or_null_are_none() {
        let s = state_of(&fixture_value());
        assert_eq!(s.router("router1").map(|r| r.routes.len()), Some(0));
        let mut v = fixture_value();
        with_routes(&mut v, Value::Null);
        let s = state_of(&v);
        assert_eq!(s.router("router1").map(|r| r.routes.len()), Some(0));
        let mut v = fixture_value();
        with_routes(&mut v, json!([]));
        let s = state_of(&v);
        assert_eq!(s.router("router1").map(|r| r.routes.len()), Some(0));
    }

    #[test]
    fn routes_accepted_as_listed() {
        let mut v = dual_stack_value();
        // To VMs' subnets behind VM3 and VM2, a default route, a destination equal to a
        // connected subnet (the longest prefix wins), an IPv6 one; unknown fields ignored.
        with_routes(
            &mut v,
            json!([
                {"destination": "10.99.0.0/24", "nexthop": "10.0.1.30", "comment": "x"},
                {"destination": "10.98.0.0/16", "nexthop": "10.0.2.20"},
                {"destination": "0.0.0.0/0", "nexthop": "10.0.1.30"},
                {"destination": "10.0.2.0/24", "nexthop": "10.0.1.30"},
                {"destination": "10.99.0.7/32", "nexthop": "10.0.1.30"},
                {"destination": "fd00:99::/64", "nexthop": "fd00:2::20"},
                {"destination": "::/0", "nexthop": "fd00:1::f816:3eff:fe00:3"}
            ]),
        );
        let s = state_of(&v);
        let routes = s.router("router1").map(|r| r.routes.clone());
        assert_eq!(
            routes,
            Some(vec![
                route("10.99.0.0/24", "10.0.1.30"),
                route("10.98.0.0/16", "10.0.2.20"),
                route("0.0.0.0/0", "10.0.1.30"),
                route("10.0.2.0/24", "10.0.1.30"),
                route("10.99.0.7/32", "10.0.1.30"),
                route("fd00:99::/64", "fd00:2::20"),
                route("::/0", "fd00:1::f816:3eff:fe00:3"),
            ])
        );
        // The next hop need not be a port's address (the port is resolved when compiled).
        let mut v = fixture_value();
        with_routes(
            &mut v,
            json!([{"destination": "10.99.0.0/24", "nexthop": "10.0.1.200"}]),
        );
        state_of(&v);
    }

    #[test]
    fn route_fields_parse() {
        let errors = route_errors(json!([
            {"destination": "10.99.0.1/24", "nexthop": "10.0.1.30"},
            {"destination": "10.99.0.1", "nexthop": "10.0.1.30"},
            {"destination": "10.99.0.0/33", "nexthop": "10.0.1.30"},
            {"destination": "fd00:99::1/64", "nexthop": "fd00:1::30"},
            {"destination": 7, "nexthop": "10.0.1.30"},
            {"destination": "10.97.0.0/24", "nexthop": "10.0.1.300"},
            {"destination": "10.97.0.0/24", "nexthop": "fd00::1::2"},
            {"nexthop": "10.0.1.30"},
            {"destination": "10.96.0.0/24", "nexthop": null},
            "10.95.0.0/24"
        ]));
        assert_eq!(
            errors,
            pairs(&[
                // The list reader reports entries that are not objects first.
                (
                    "routes[9]",
                    "expected an object, got a string \"10.95.0.0/24\""
                ),
                (
                    "routes[0].destination",
                    "10.99.0.1/24 has host bits set (the network is 10.99.0.0/24)"
                ),
                ("routes[1].destination", "invalid CIDR \"10.99.0.1\""),
                ("routes[2].destination", "invalid CIDR \"10.99.0.0/33\""),
                (
                    "routes[3].destination",
                    "fd00:99::1/64 has host bits set (the network is fd00:99::/64)"
                ),
                ("routes[4].destination", "expected a string, got a number 7"),
                ("routes[5].nexthop", "invalid IPv4 address \"10.0.1.300\""),
                ("routes[6].nexthop", "invalid IPv6 address \"fd00::1::2\""),
                ("routes[7].destination", "missing"),
                ("routes[8].nexthop", "missing"),
            ])
        );
        let errors = route_errors(json!({"destination": "10.99.0.0/24"}));
        assert_eq!(
            errors,
            pairs(&[("routes", "expected a list, got an object")])
        );
    }

    #[test]
    fn route_nexthop_of_the_destination_family() {
        let errors = route_errors(json!([
            {"destination": "10.99.0.0/24", "nexthop": "fd00:1::30"},
            {"destination": "fd00:99::/64", "nexthop": "10.0.1.30"}
        ]));
        assert_eq!(
            errors,
            pairs(&[
                (
                    "routes[0].nexthop",
                    "fd00:1::30 is an IPv6 address, destination 10.99.0.0/24 is IPv4"
                ),
                (
                    "routes[1].nexthop",
                    "10.0.1.30 is an IPv4 address, destination fd00:99::/64 is IPv6"
                ),
            ])
        );
    }

    #[test]
    fn route_destinations_unique() {
        let errors = route_errors(json!([
            {"destination": "10.99.0.0/24", "nexthop": "10.0.1.30"},
            {"destination": "10.98.0.0/24", "nexthop": "10.0.1.30"},
            {"destination": "10.99.0.0/24", "nexthop": "10.0.1.30"},
            {"destination": "10.99.0.0/24", "nexthop": "10.0.2.20"}
        ]));
        assert_eq!(
            errors,
            pairs(&[
                (
                    "routes[2].destination",
                    "route to 10.99.0.0/24 via 10.0.1.30 is listed twice (also routes[0])"
                ),
                // routes[3]: a second next hop for 10.99.0.0/24 is ECMP, accepted.
            ])
        );
    }

    #[test]
    fn router_gateway_network_exists_and_is_external() {
        let errors = errors_after(|v| {
            elem(v, "routers", "id", "router1")["external_gateway_info"]["network_id"] =
                "net1".into();
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.network_id",
            "network net1 is not external",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[0].subnet_id",
            "not on the gateway network net1",
        );
        let errors = errors_after(|v| {
            elem(v, "routers", "id", "router1")["external_gateway_info"]["network_id"] =
                "nope".into();
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.network_id",
            "network nope does not exist",
        );
        // No gateway at all is fine.
        let mut v = fixture_value();
        elem(&mut v, "routers", "id", "router1")["external_gateway_info"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn router_external_fixed_ip_subnet_and_address() {
        let errors = errors_after(|v| {
            let gw = &mut elem(v, "routers", "id", "router1")["external_gateway_info"];
            gw["external_fixed_ips"] = serde_json::json!([
                {"subnet_id": "nope", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet", "ip_address": "198.51.100.10"}
            ]);
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[0].subnet_id",
            "subnet nope does not exist",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[1].ip_address",
            "198.51.100.10 is outside subnet ext-subnet",
        );
    }

    #[test]
    fn router_external_fixed_ips6() {
        let ext6 = serde_json::json!({"id": "ext-subnet6", "network_id": "ext",
            "cidr": "2001:db8::/64", "ip_version": 6, "gateway_ip": "2001:db8::1"});
        let mut v = fixture_value();
        push(&mut v, "subnets", ext6.clone());
        elem(&mut v, "routers", "id", "router1")["external_gateway_info"]["external_fixed_ips"] = serde_json::json!([
            {"subnet_id": "ext-subnet6", "ip_address": "2001:db8::10"},
            {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"}
        ]);
        let s = state_of(&v);
        let gw = s.router("router1").and_then(|r| r.external_gateway.clone());
        assert_eq!(
            gw.map(|g| (g.external_fixed_ips.len(), g.external_fixed_ips6.len())),
            Some((1, 1))
        );
        let errors = errors_after(|v| {
            push(v, "subnets", ext6);
            let gw = &mut elem(v, "routers", "id", "router1")["external_gateway_info"];
            gw["external_fixed_ips"] = serde_json::json!([
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet6", "ip_address": "2001:db9::10"},
                {"subnet_id": "ext-subnet", "ip_address": "2001:db8::11"},
                {"subnet_id": "ext-subnet6", "ip_address": "203.0.113.12"}
            ]);
        });
        let f =
            |i: usize, what: &str| format!("external_gateway_info.external_fixed_ips[{i}].{what}");
        assert_error(
            &errors,
            "router",
            "router1",
            &f(1, "ip_address"),
            "2001:db9::10 is outside subnet ext-subnet6 (2001:db8::/64)",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            &f(2, "ip_address"),
            "2001:db8::11 is an IPv6 address, subnet ext-subnet is IPv4",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            &f(3, "ip_address"),
            "203.0.113.12 is an IPv4 address, subnet ext-subnet6 is IPv6",
        );
        assert_eq!(errors.len(), 3, "{}", crate::model::display_lines(&errors));
    }

    #[test]
    fn one_ha_host_is_enough() {
        let mut v = crate::testing::fixture_value();
        with_ha(
            &mut v,
            true,
            serde_json::json!([{"host": "host-c", "priority": 1}]),
        );
        let state = crate::model::State::from_json(&v.to_string());
        assert!(state.is_ok(), "{:?}", state.err());
    }

    #[test]
    fn bad_ha_hosts_name_router_and_field() {
        let e = errors_after(|v| {
            with_ha(
                v,
                false,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-c", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts", "only an HA router");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-a", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].host", "not dvr_snat");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-b", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].host", "listed twice");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "nowhere", "priority": -2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].priority", "unsigned");
    }
}
