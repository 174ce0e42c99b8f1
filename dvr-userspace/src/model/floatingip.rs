//! Floating IPs: an address of an external network, translated to a port's fixed IP.

use std::collections::hash_map::Entry;
use std::net::Ipv4Addr;

use super::check::{Known, Ref, Report, ip_in};
use super::network::{Network, Subnet, check_external_network};
use super::parse::{Element, Reader, conv_fip_ipv4, conv_id};
use super::port::Port;
use super::router::Router;
use super::table::HashMap;

/// A Neutron floating IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub floating_ip_address: Ipv4Addr,
    pub floating_network_id: String,
    pub router_id: Option<String>,
    pub port_id: Option<String>,
    pub fixed_ip_address: Option<Ipv4Addr>,
}

impl Element for FloatingIp {
    const KIND: &'static str = "floatingip";
    const LIST: &'static str = "floatingips";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let floating_ip_address = r.req("floating_ip_address", conv_fip_ipv4);
        let floating_network_id = r.req("floating_network_id", conv_id);
        let router_id = r.opt_nonempty("router_id");
        let port_id = r.opt_nonempty("port_id");
        let fixed_ip_address = r.opt("fixed_ip_address", conv_fip_ipv4);
        Some(FloatingIp {
            id: id?,
            floating_ip_address: floating_ip_address?,
            floating_network_id: floating_network_id?,
            router_id,
            port_id,
            fixed_ip_address,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// What the floating IP checks look up.
pub(super) struct FipRefs<'s> {
    pub(super) networks: Known<'s, Network>,
    pub(super) subnets: Known<'s, Subnet>,
    /// Per network index: its subnet indexes.
    pub(super) subnets_by_network: &'s [Vec<usize>],
    pub(super) ports: Known<'s, Port>,
    pub(super) routers: Known<'s, Router>,
}

/// A floating IP is an address of a subnet of its external network, unique; it names an
/// existing router and port, and one fixed IP of that port has at most one floating IP.
pub(super) fn check_floatingips(out: &mut Report<'_>, fips: &[FloatingIp], refs: FipRefs<'_>) {
    let FipRefs {
        networks,
        subnets,
        subnets_by_network,
        ports,
        routers,
    } = refs;
    let mut by_address: HashMap<Ipv4Addr, &str> = HashMap::default();
    // (port, fixed IP) -> floating IP: one translation per address.
    let mut by_fixed: HashMap<(&str, Ipv4Addr), &str> = HashMap::default();
    for f in fips {
        check_external_network(
            out,
            networks,
            "floatingip",
            &f.id,
            "floating_network_id",
            &f.floating_network_id,
        );
        let address = f.floating_ip_address;
        if let Ref::Found(n) = networks.resolve(&f.floating_network_id) {
            let inside = subnets_by_network
                .get(n)
                .into_iter()
                .flatten()
                .filter_map(|&i| subnets.table.at(i))
                .any(|sub| ip_in(&sub.cidr, address));
            if !inside {
                let message = format!(
                    "{address} is outside every subnet of network {}",
                    f.floating_network_id
                );
                out.error("floatingip", &f.id, "floating_ip_address", message);
            }
        }
        match by_address.entry(address) {
            Entry::Occupied(o) => {
                let message = format!("duplicate address {address}: also floatingip {}", o.get());
                out.error("floatingip", &f.id, "floating_ip_address", message);
            }
            Entry::Vacant(v) => {
                v.insert(&f.id);
            }
        }
        if let Some(port_id) = &f.port_id
            && let Some(port) = ports.table.get(port_id)
            && let Some(fixed) = f
                .fixed_ip_address
                .or_else(|| port.fixed_ips.first().map(|x| x.ip))
        {
            match by_fixed.entry((&port.id, fixed)) {
                Entry::Occupied(o) => {
                    let field = if f.fixed_ip_address.is_some() {
                        "fixed_ip_address"
                    } else {
                        "port_id"
                    };
                    let message = format!(
                        "port {port_id} fixed IP {fixed} already has floatingip {}",
                        o.get()
                    );
                    out.error("floatingip", &f.id, field, message);
                }
                Entry::Vacant(v) => {
                    v.insert(&f.id);
                }
            }
        }
        if let Some(router_id) = &f.router_id
            && let Ref::Missing = routers.resolve(router_id)
        {
            let message = format!("router {router_id} does not exist");
            out.error("floatingip", &f.id, "router_id", message);
        }
        let Some(port_id) = &f.port_id else { continue };
        match ports.table.get(port_id) {
            Some(port) => {
                if let Some(fixed) = f.fixed_ip_address
                    && !port.fixed_ips.iter().any(|x| x.ip == fixed)
                {
                    let message = format!("port {port_id} has no fixed IP {fixed}");
                    out.error("floatingip", &f.id, "fixed_ip_address", message);
                }
            }
            None if ports.is_broken(port_id) => {}
            None => {
                let message = format!("port {port_id} does not exist");
                out.error("floatingip", &f.id, "port_id", message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::display_lines;
    use crate::testing::*;
    use serde_json::Value;

    #[test]
    fn floatingip_references() {
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_network_id"] = "net1".into();
            f["router_id"] = "router9".into();
            f["port_id"] = "vm9".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_network_id",
            "network net1 is not external",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "router_id",
            "router router9 does not exist",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "port_id",
            "port vm9 does not exist",
        );
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_network_id"] = "nope".into();
            f["fixed_ip_address"] = "10.0.1.11".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_network_id",
            "network nope does not exist",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "fixed_ip_address",
            "port vm1 has no fixed IP 10.0.1.11",
        );
        // Unassociated floating IP.
        let mut v = fixture_value();
        let f = elem(&mut v, "floatingips", "id", "fip1");
        f["router_id"] = Value::Null;
        f["port_id"] = Value::Null;
        f["fixed_ip_address"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn floatingip_addresses_parse() {
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_ip_address"] = "203.0.113".into();
            f["fixed_ip_address"] = "x".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_ip_address",
            "invalid IPv4 address \"203.0.113\"",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "fixed_ip_address",
            "invalid IPv4 address \"x\"",
        );
    }

    #[test]
    fn floatingip_is_ipv4_only() {
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_ip_address"] = "2001:db8::50".into();
            f["fixed_ip_address"] = "fd00:1::5".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_ip_address",
            "\"2001:db8::50\" is IPv6: floating IPs are IPv4 only (IPv6 is routed without NAT)",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "fixed_ip_address",
            "\"fd00:1::5\" is IPv6: floating IPs are IPv4 only",
        );
        // A dual-stack port keeps its IPv4 floating IP.
        state_of(&dual_stack_value());
    }

    #[test]
    fn floatingip_address_inside_its_network() {
        let errors = errors_after(|v| {
            elem(v, "floatingips", "id", "fip1")["floating_ip_address"] = "198.51.100.5".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_ip_address",
            "198.51.100.5 is outside every subnet of network ext",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn floatingip_address_unique() {
        let errors = errors_after(|v| {
            push(
                v,
                "floatingips",
                serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.50", "floating_network_id": "ext"}),
            );
        });
        assert_error(
            &errors,
            "floatingip",
            "fip2",
            "floating_ip_address",
            "duplicate address 203.0.113.50: also floatingip fip1",
        );
    }

    #[test]
    fn one_floatingip_per_port_fixed_ip() {
        // fip2 names no fixed IP: it takes vm1's first, which fip1 already translates.
        let errors = errors_after(|v| {
            push(
                v,
                "floatingips",
                serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.51", "floating_network_id": "ext",
                    "port_id": "vm1"}),
            );
        });
        assert_error(
            &errors,
            "floatingip",
            "fip2",
            "port_id",
            "port vm1 fixed IP 10.0.1.10 already has floatingip fip1",
        );
        let errors = errors_after(|v| {
            push(
                v,
                "floatingips",
                serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.51", "floating_network_id": "ext",
                    "port_id": "vm1", "fixed_ip_address": "10.0.1.10"}),
            );
        });
        assert_error(
            &errors,
            "floatingip",
            "fip2",
            "fixed_ip_address",
            "port vm1 fixed IP 10.0.1.10 already has floatingip fip1",
        );
        // Another fixed IP of the same port may have its own.
        let mut v = fixture_value();
        push(
            &mut v,
            "subnets",
            serde_json::json!({"id": "subnet1b", "network_id": "net1", "cidr": "10.0.11.0/24", "ip_version": 4}),
        );
        elem(&mut v, "ports", "id", "vm1")["fixed_ips"] = serde_json::json!([
            {"subnet_id": "subnet1", "ip_address": "10.0.1.10"},
            {"subnet_id": "subnet1b", "ip_address": "10.0.11.10"}
        ]);
        push(
            &mut v,
            "floatingips",
            serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.51", "floating_network_id": "ext",
                "port_id": "vm1", "fixed_ip_address": "10.0.11.10"}),
        );
        state_of(&v);
    }
}
