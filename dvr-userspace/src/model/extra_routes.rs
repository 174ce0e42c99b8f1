//! A router's extra `routes` against the ports it holds: each next hop on a subnet the
//! router has an interface on, and not one of its own addresses. Above `port` and `router`
//! (the port checks look routers up, so this cannot live in `router`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::check::{Known, Report};
use super::network::{Subnet, Subnet6};
use super::port::Port;
use super::router::{Router, family};
use super::table::HashMap;

/// What the extra route checks look up.
#[derive(Clone, Copy)]
pub(super) struct RouteRefs<'s> {
    pub(super) ports: Known<'s, Port>,
    pub(super) subnets: Known<'s, Subnet>,
    pub(super) subnets6: Known<'s, Subnet6>,
}

/// A router's subnets (those of its interface ports) and addresses (of every port it
/// holds: interfaces, centralized SNAT ports, gateway).
#[derive(Default)]
struct Connected<'s> {
    /// (subnet id, cidr), in port order.
    subnets: Vec<(&'s str, IpNet)>,
    /// (address, port id).
    addresses: Vec<(IpAddr, &'s str)>,
}

/// `routes`: each next hop on a subnet the router has an interface on, and not an address
/// of the router (Neutron's `_validate_routes_nexthop`: "the nexthop is not connected with
/// router", "the nexthop is used by router"). A next hop on the gateway's external subnet
/// is refused: the route must reach a port on a tenant network.
pub(super) fn check_routes(out: &mut Report<'_>, routers: &[Router], refs: RouteRefs<'_>) {
    if routers.iter().all(|r| r.routes.is_empty()) {
        return;
    }
    // A port or subnet that did not parse may be one of a router's: its subnets are not
    // all known, and the state is refused anyway.
    let complete = !refs.ports.any_broken() && !refs.subnets.any_broken();
    let mut by_router: HashMap<&str, Connected<'_>> = HashMap::default();
    for r in routers.iter().filter(|r| !r.routes.is_empty()) {
        by_router.insert(&r.id, Connected::default());
    }
    for p in refs.ports.table.items() {
        let Some(c) = by_router.get_mut(p.device_id.as_str()) else {
            continue;
        };
        if !p.is_router_interface() && !p.is_router_owned() {
            continue;
        }
        let interface = p.is_router_interface() && !p.is_centralized_snat();
        for f in &p.fixed_ips {
            c.addresses.push((IpAddr::V4(f.ip), &p.id));
            let sub = refs.subnets.table.get(&f.subnet_id);
            if let (true, Some(sub)) = (interface, sub) {
                c.subnets.push((&sub.id, IpNet::V4(sub.cidr)));
            }
        }
        for f in &p.fixed_ips6 {
            c.addresses.push((IpAddr::V6(f.ip), &p.id));
            let sub = refs.subnets6.table.get(&f.subnet_id);
            if let (true, Some(sub)) = (interface, sub) {
                c.subnets.push((&sub.id, IpNet::V6(sub.cidr)));
            }
        }
    }
    for r in routers {
        let Some(c) = by_router.get(r.id.as_str()) else {
            continue;
        };
        for (i, route) in r.routes.iter().enumerate() {
            let field = format!("routes[{i}].nexthop");
            let hop = route.nexthop;
            if !c.subnets.iter().any(|(_, net)| net.contains(&hop)) {
                if complete {
                    let message = not_connected(hop, &c.subnets);
                    out.error("router", &r.id, &field, message);
                }
            } else if let Some((_, port)) = c.addresses.iter().find(|(ip, _)| *ip == hop) {
                let message = format!("{hop} is an address of the router itself (port {port})");
                out.error("router", &r.id, &field, message);
            }
        }
    }
}

/// Why next hop `hop` is refused when on none of the router's subnets: the subnets of its
/// family it could have been on.
fn not_connected(hop: IpAddr, subnets: &[(&str, IpNet)]) -> String {
    let same: Vec<String> = subnets
        .iter()
        .filter(|(_, net)| net.addr().is_ipv4() == hop.is_ipv4())
        .map(|(id, net)| format!("{id} {net}"))
        .collect();
    if same.is_empty() {
        format!(
            "{hop} is not on a subnet of the router's interfaces (it has no {} interface)",
            family(hop)
        )
    } else {
        format!(
            "{hop} is not on a subnet of the router's interfaces ({})",
            same.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::model::display_lines;
    use crate::testing::*;
    use serde_json::json;

    #[test]
    fn route_nexthop_on_a_subnet_of_the_router() {
        // Outside every subnet; on the gateway's external subnet (the gateway port is the
        // router's but not an interface); on a subnet the router has no interface on; IPv6
        // on a router without IPv6 interfaces.
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                json!({"id": "subnet3", "network_id": "net2", "cidr": "10.0.3.0/24",
                       "ip_version": 4}),
            );
            with_routes(
                v,
                json!([
                    {"destination": "10.99.0.0/24", "nexthop": "10.9.9.9"},
                    {"destination": "10.98.0.0/24", "nexthop": "203.0.113.20"},
                    {"destination": "10.97.0.0/24", "nexthop": "10.0.3.7"},
                    {"destination": "fd00:99::/64", "nexthop": "fd00:1::30"}
                ]),
            );
        });
        let on = "is not on a subnet of the router's interfaces";
        let subnets = "(subnet1 10.0.1.0/24, subnet2 10.0.2.0/24)";
        let expected = [
            ("routes[0].nexthop", format!("10.9.9.9 {on} {subnets}")),
            ("routes[1].nexthop", format!("203.0.113.20 {on} {subnets}")),
            ("routes[2].nexthop", format!("10.0.3.7 {on} {subnets}")),
            (
                "routes[3].nexthop",
                format!("fd00:1::30 {on} (it has no IPv6 interface)"),
            ),
        ];
        for (field, message) in &expected {
            assert_error(&errors, "router", "router1", field, message);
        }
        assert_eq!(errors.len(), expected.len(), "{}", display_lines(&errors));
        // IPv6: the subnets of the router's IPv6 interfaces are listed.
        let errors = errors_after(|v| {
            *v = dual_stack_value();
            with_routes(
                v,
                json!([{"destination": "fd00:99::/64", "nexthop": "fd00:3::30"}]),
            );
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "routes[0].nexthop",
            "fd00:3::30 is not on a subnet of the router's interfaces (subnet6a fd00:1::/64, \
             subnet6b fd00:2::/64)",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn route_nexthop_not_the_routers_own_address() {
        let errors = errors_after(|v| {
            *v = dual_stack_value();
            with_routes(
                v,
                json!([
                    {"destination": "10.99.0.0/24", "nexthop": "10.0.1.1"},
                    {"destination": "10.98.0.0/24", "nexthop": "10.0.2.1"},
                    {"destination": "10.97.0.0/24", "nexthop": "10.0.1.5"},
                    {"destination": "fd00:99::/64", "nexthop": "fd00:2::1"}
                ]),
            );
        });
        let expected = [
            (
                "routes[0].nexthop",
                "10.0.1.1 is an address of the router itself (port rif1)",
            ),
            (
                "routes[1].nexthop",
                "10.0.2.1 is an address of the router itself (port rif2)",
            ),
            (
                "routes[2].nexthop",
                "10.0.1.5 is an address of the router itself (port snat1)",
            ),
            (
                "routes[3].nexthop",
                "fd00:2::1 is an address of the router itself (port rif6b)",
            ),
        ];
        for (field, message) in expected {
            assert_error(&errors, "router", "router1", field, message);
        }
        assert_eq!(errors.len(), expected.len(), "{}", display_lines(&errors));
        // The display line names the router and the field.
        let line = errors.first().map(ToString::to_string);
        assert_eq!(
            line.as_deref(),
            Some(
                "router router1: field `routes[0].nexthop`: 10.0.1.1 is an address of the \
                 router itself (port rif1)"
            )
        );
    }

    #[test]
    fn route_check_quiet_when_a_port_is_broken() {
        // rif2 does not parse, so router1's subnets are not all known: only rif2's own
        // error is reported, not the next hop on its subnet.
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "rif2")["mac_address"] = "zz".into();
            with_routes(
                v,
                json!([{"destination": "10.99.0.0/24", "nexthop": "10.0.2.20"}]),
            );
        });
        assert_error(&errors, "port", "rif2", "mac_address", "invalid MAC");
        assert!(
            errors.iter().all(|e| e.kind != "router"),
            "{}",
            display_lines(&errors)
        );
    }
}
