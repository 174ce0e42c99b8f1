//! Networks and their subnets, and the addresses ports and routers hold on them.

use std::collections::hash_map::Entry;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use super::check::{Known, Ref, Report, ip_in};
use super::parse::{Element, Reader, conv_bool, conv_id, conv_ipv4, conv_string, conv_u32};
use super::table::HashMap;

/// The only tenant network type this datapath carries.
pub const NETWORK_TYPE_VXLAN: &str = "vxlan";
/// Largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;
/// Network MTU when the state does not say (Neutron's default for VXLAN on a 1500 underlay).
pub const DEFAULT_MTU: u32 = 1450;

/// A Neutron network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    pub name: Option<String>,
    /// `provider:network_type`: `vxlan`, `flat`, `vlan`, `local`, ...
    pub network_type: String,
    /// `provider:physical_network` (flat and vlan networks).
    pub physical_network: Option<String>,
    /// `provider:segmentation_id`: the VNI of a VXLAN network.
    pub segmentation_id: Option<u32>,
    /// `router:external`.
    pub external: bool,
    pub mtu: u32,
}

impl Network {
    /// True for the networks this datapath carries between hosts: internal VXLAN networks.
    pub fn is_tenant(&self) -> bool {
        !self.external && self.network_type == NETWORK_TYPE_VXLAN
    }

    /// The VNI of a tenant network, `None` for any other network.
    pub fn tenant_vni(&self) -> Option<u32> {
        if self.is_tenant() {
            self.segmentation_id
        } else {
            None
        }
    }
}

/// A Neutron IPv4 subnet (IPv6 subnets are rejected by validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    /// No host bits set.
    pub cidr: Ipv4Net,
    pub gateway_ip: Option<Ipv4Addr>,
}

/// One entry of `fixed_ips` (of a port, or of a router's `external_fixed_ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip: Ipv4Addr,
}

impl Element for Network {
    const KIND: &'static str = "network";
    const LIST: &'static str = "networks";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let network_type = r.req("provider:network_type", conv_string);
        let physical_network = r.opt_nonempty("provider:physical_network");
        let segmentation_id = r.opt("provider:segmentation_id", conv_u32);
        let external = r.opt("router:external", conv_bool).unwrap_or(false);
        let mtu = r.opt("mtu", conv_u32).unwrap_or(DEFAULT_MTU);
        Some(Network {
            id: id?,
            name,
            network_type: network_type?,
            physical_network,
            segmentation_id,
            external,
            mtu,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

impl Element for Subnet {
    const KIND: &'static str = "subnet";
    const LIST: &'static str = "subnets";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let network_id = r.req("network_id", conv_id);
        let ip_version = r.req("ip_version", conv_u32);
        let cidr_text = r.req("cidr", conv_string);
        let mut cidr = None;
        let mut gateway_ip = None;
        match ip_version {
            Some(6) => r.error(
                "ip_version",
                "ip_version 6 is not supported by this datapath",
            ),
            Some(4) => {
                if let Some(text) = cidr_text {
                    match text.parse::<IpNet>() {
                        Ok(IpNet::V4(net)) if net.trunc() != net => {
                            r.error("cidr", format!("{text} has host bits set"));
                        }
                        Ok(IpNet::V4(net)) => cidr = Some(net),
                        Ok(IpNet::V6(_)) => r.error(
                            "ip_version",
                            format!("ip_version 4 does not agree with the IPv6 cidr {text}"),
                        ),
                        Err(_) => r.error("cidr", format!("invalid CIDR {text:?}")),
                    }
                }
                gateway_ip = r.opt("gateway_ip", conv_ipv4);
            }
            Some(other) => r.error("ip_version", format!("must be 4 or 6, got {other}")),
            None => {}
        }
        Some(Subnet {
            id: id?,
            network_id: network_id?,
            cidr: cidr?,
            gateway_ip,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// The `fixed_ips`-shaped list `field` of the object `r` reads. A missing list is empty
/// unless `required`.
pub(super) fn read_fixed_ips(r: &mut Reader<'_, '_>, field: &str, required: bool) -> Vec<FixedIp> {
    let mut out = Vec::new();
    for (path, obj) in r.list(field, required) {
        let mut f = r.child(&path, obj);
        let subnet_id = f.req("subnet_id", conv_id);
        let ip = f.req("ip_address", conv_ipv4);
        if let (Some(subnet_id), Some(ip)) = (subnet_id, ip) {
            out.push(FixedIp { subnet_id, ip });
        }
    }
    out
}

/// VXLAN networks need a VNI in range; segmentation ids do not collide.
pub(super) fn check_networks(out: &mut Report<'_>, networks: &[Network]) {
    type SegKey<'a> = (&'a str, Option<&'a str>, u32);
    let mut segments: HashMap<SegKey<'_>, &str> = HashMap::default();
    for n in networks {
        const FIELD: &str = "provider:segmentation_id";
        if n.network_type == NETWORK_TYPE_VXLAN {
            match n.segmentation_id {
                Some(1..=VNI_MAX) => {}
                Some(other) => {
                    let message = format!("VXLAN segmentation id {other} is outside 1..={VNI_MAX}");
                    out.error("network", &n.id, FIELD, message);
                }
                None => out.error("network", &n.id, FIELD, "a vxlan network needs one"),
            }
        }
        let Some(seg) = n.segmentation_id else {
            continue;
        };
        // VLAN ids are per physical network; VNIs have no physical network.
        let key = (n.network_type.as_str(), n.physical_network.as_deref(), seg);
        match segments.entry(key) {
            Entry::Occupied(o) => {
                let what = if n.network_type == NETWORK_TYPE_VXLAN {
                    "VNI"
                } else {
                    "segment"
                };
                let message = format!(
                    "{what} collision: {} segmentation id {seg} is also network {}'s",
                    n.network_type,
                    o.get()
                );
                out.error("network", &n.id, FIELD, message);
            }
            Entry::Vacant(v) => {
                v.insert(&n.id);
            }
        }
    }
}

/// A subnet's network exists, its gateway is a host address inside it, and the subnets of
/// one network do not overlap. `by_network`: per network index, its subnet indexes.
pub(super) fn check_subnets(
    out: &mut Report<'_>,
    subnets: &[Subnet],
    networks: Known<'_, Network>,
    by_network: &[Vec<usize>],
) {
    for sub in subnets {
        if let Ref::Missing = networks.resolve(&sub.network_id) {
            let message = format!("network {} does not exist", sub.network_id);
            out.error("subnet", &sub.id, "network_id", message);
        }
        if let Some(gw) = sub.gateway_ip {
            let cidr = sub.cidr;
            if !ip_in(&cidr, gw) {
                let message = format!("gateway_ip {gw} is outside cidr {cidr}");
                out.error("subnet", &sub.id, "gateway_ip", message);
            } else if cidr.prefix_len() <= 30 && gw == cidr.network() {
                let message = format!("gateway_ip {gw} is the network address of {cidr}");
                out.error("subnet", &sub.id, "gateway_ip", message);
            } else if cidr.prefix_len() <= 30 && gw == cidr.broadcast() {
                let message = format!("gateway_ip {gw} is the broadcast address of {cidr}");
                out.error("subnet", &sub.id, "gateway_ip", message);
            }
        }
    }
    // Overlapping subnets on one network would make an address ambiguous. CIDR blocks are
    // nested or disjoint, so after sorting by start address (widest first), a block
    // overlaps an earlier one exactly when it starts before the furthest end seen so far.
    for on_network in by_network {
        let mut sorted: Vec<&Subnet> = on_network.iter().filter_map(|&i| subnets.get(i)).collect();
        sorted.sort_by_key(|s| (s.cidr.network(), s.cidr.prefix_len()));
        let mut widest: Option<&Subnet> = None;
        for sub in sorted {
            match widest {
                Some(w) if sub.cidr.network() <= w.cidr.broadcast() => {
                    let message = format!(
                        "{} overlaps subnet {} ({}) on the same network",
                        sub.cidr, w.id, w.cidr
                    );
                    out.error("subnet", &sub.id, "cidr", message);
                }
                _ => widest = Some(sub),
            }
        }
    }
}

/// Checks that `network_id` names an external network; reports on `kind id: field`
/// otherwise.
pub(super) fn check_external_network(
    out: &mut Report<'_>,
    networks: Known<'_, Network>,
    kind: &'static str,
    id: &str,
    field: &str,
    network_id: &str,
) {
    match networks.resolve(network_id) {
        Ref::Found(n) => {
            if networks.table.at(n).is_some_and(|n| !n.external) {
                let message = format!("network {network_id} is not external (router:external)");
                out.error(kind, id, field, message);
            }
        }
        Ref::Broken => {}
        Ref::Missing => {
            out.error(
                kind,
                id,
                field,
                format!("network {network_id} does not exist"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{State, StateError, display_lines};
    use crate::testing::*;
    use serde_json::Value;

    #[test]
    fn vxlan_needs_segmentation_id_in_range() {
        let errors = errors_after(|v| {
            elem(v, "networks", "id", "net1")["provider:segmentation_id"] = Value::Null;
            elem(v, "networks", "id", "net2")["provider:segmentation_id"] = 16_777_216.into();
        });
        assert_error(
            &errors,
            "network",
            "net1",
            "provider:segmentation_id",
            "needs one",
        );
        assert_error(
            &errors,
            "network",
            "net2",
            "provider:segmentation_id",
            "outside 1..=16777215",
        );
        let errors = errors_after(|v| {
            elem(v, "networks", "id", "net2")["provider:segmentation_id"] = 0.into();
        });
        assert_error(
            &errors,
            "network",
            "net2",
            "provider:segmentation_id",
            "outside",
        );
    }

    #[test]
    fn vni_collision_names_both_networks() {
        let errors = errors_after(|v| {
            elem(v, "networks", "id", "net2")["provider:segmentation_id"] = 1001.into();
        });
        assert_error(
            &errors,
            "network",
            "net2",
            "provider:segmentation_id",
            "VNI collision: vxlan segmentation id 1001 is also network net1's",
        );
    }

    #[test]
    fn vlan_ids_are_per_physical_network() {
        let mut v = fixture_value();
        for (id, physnet) in [("vlan-a", "physnet1"), ("vlan-b", "physnet2")] {
            push(
                &mut v,
                "networks",
                serde_json::json!({"id": id, "provider:network_type": "vlan",
                    "provider:physical_network": physnet, "provider:segmentation_id": 100,
                    "router:external": true}),
            );
        }
        state_of(&v);
        elem(&mut v, "networks", "id", "vlan-b")["provider:physical_network"] = "physnet1".into();
        let errors = match State::from_json(&v.to_string()) {
            Err(StateError::Invalid(errors)) => errors,
            other => panic!("{other:?}"),
        };
        assert_error(
            &errors,
            "network",
            "vlan-b",
            "provider:segmentation_id",
            "also network vlan-a's",
        );
    }

    #[test]
    fn subnet_network_must_exist() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet2")["network_id"] = "nope".into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "network_id",
            "network nope does not exist",
        );
        // The port on subnet2 is now on a subnet of another network.
        assert_error(
            &errors,
            "port",
            "vm2",
            "fixed_ips[0].subnet_id",
            "is on network nope",
        );
    }

    #[test]
    fn subnet_cidr_parses_without_host_bits() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet1")["cidr"] = "10.0.1.1/24".into();
            elem(v, "subnets", "id", "subnet2")["cidr"] = "10.0.2.0/33".into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "cidr",
            "10.0.1.1/24 has host bits set",
        );
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "cidr",
            "invalid CIDR \"10.0.2.0/33\"",
        );
        // Ports on the broken subnets are not reported again.
        assert_eq!(errors.len(), 2, "{}", display_lines(&errors));
    }

    #[test]
    fn subnet_ipv6_rejected() {
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet6", "network_id": "net1", "cidr": "fd00::/64",
                    "gateway_ip": "fd00::1", "ip_version": 6}),
            );
        });
        assert_error(
            &errors,
            "subnet",
            "subnet6",
            "ip_version",
            "ip_version 6 is not supported by this datapath",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn subnet_ip_version_agrees_with_cidr() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet2")["cidr"] = "fd00::/64".into();
            elem(v, "subnets", "id", "subnet1")["ip_version"] = 5.into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "ip_version",
            "does not agree with the IPv6 cidr fd00::/64",
        );
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "ip_version",
            "must be 4 or 6, got 5",
        );
    }

    #[test]
    fn subnet_gateway_inside_and_not_network_or_broadcast() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet1")["gateway_ip"] = "10.0.9.1".into();
            elem(v, "subnets", "id", "subnet2")["gateway_ip"] = "10.0.2.255".into();
            elem(v, "subnets", "id", "ext-subnet")["gateway_ip"] = "203.0.113.0".into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "gateway_ip",
            "10.0.9.1 is outside cidr 10.0.1.0/24",
        );
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "gateway_ip",
            "broadcast address",
        );
        assert_error(
            &errors,
            "subnet",
            "ext-subnet",
            "gateway_ip",
            "network address",
        );
        // null gateway is fine
        let mut v = fixture_value();
        elem(&mut v, "subnets", "id", "subnet1")["gateway_ip"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn subnets_of_one_network_do_not_overlap() {
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet1b", "network_id": "net1", "cidr": "10.0.1.128/25", "ip_version": 4}),
            );
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1b",
            "cidr",
            "overlaps subnet subnet1",
        );
        // The same range on another network is fine (tenants reuse ranges).
        let mut v = fixture_value();
        push(
            &mut v,
            "networks",
            serde_json::json!({"id": "net3", "provider:network_type": "vxlan", "provider:segmentation_id": 3}),
        );
        push(
            &mut v,
            "subnets",
            serde_json::json!({"id": "subnet3", "network_id": "net3", "cidr": "10.0.1.0/24", "ip_version": 4}),
        );
        state_of(&v);
    }
}
