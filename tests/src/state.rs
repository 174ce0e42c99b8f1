//! The Neutron-shaped state file the agents read, as the test bed writes it.
//!
//! Field names follow the Neutron API (`provider:segmentation_id`, `binding:host_id`, ...).
//! Values are kept as strings where the agent validates them, so tests can write invalid data
//! (a bad CIDR, a gateway outside its subnet) through the same types.
//!
//! Security groups (issue 12): the top-level `security_groups` (rules nested),
//! `security_group_rules` and `address_groups` lists are written only when a test has some, and
//! a port's `security_groups` and `admin_state_up` keys only when a test set them
//! ([`State::port_extras`]), so the states of tests that never use them are unchanged (a port
//! without a `security_groups` key is not filtered).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const OWNER_COMPUTE: &str = "compute:nova";
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface_distributed";
/// `device_owner` of a host's port on the external network (Neutron's `fg-` device).
pub const OWNER_FIP_AGENT_GATEWAY: &str = "network:floatingip_agent_gateway";
/// `device_owner` of a router's centralized SNAT port (Neutron's `sg-` device), one per
/// subnet of the router, bound to its SNAT host.
pub const OWNER_ROUTER_CENTRALIZED_SNAT: &str = "network:router_centralized_snat";
/// `device_owner` of an unbound VIP port (keepalived's address, created by the user).
pub const OWNER_NONE: &str = "";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub networks: Vec<Network>,
    pub subnets: Vec<Subnet>,
    pub ports: Vec<Port>,
    pub routers: Vec<Router>,
    pub floatingips: Vec<serde_json::Value>,
    pub hosts: Vec<Host>,
    /// `GET /v2.0/security-groups`, rules nested; not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroup>,
    /// `GET /v2.0/security-group-rules`: rules merged into their group by
    /// `security_group_id`; not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group_rules: Option<Vec<SecurityGroupRule>>,
    /// `GET /v2.0/address-groups`; not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_groups: Option<Vec<AddressGroup>>,
    /// Port fields of the security group feature, by port id, merged into the port objects by
    /// [`State::to_value`] (the form every state file is written in). Kept apart from [`Port`]
    /// so that code building ports field by field (the benchmarks) is unchanged.
    #[serde(skip)]
    pub port_extras: BTreeMap<String, PortExtras>,
}

/// A port's security group fields; `None` leaves the key out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortExtras {
    /// `security_groups` (group ids). Absent: the port is not filtered (a hand-written legacy
    /// state); `Some(vec![])`: filtered, only base traffic (ARP, DHCP) passes.
    pub security_groups: Option<Vec<String>>,
    /// `admin_state_up` (absent: true).
    pub admin_state_up: Option<bool>,
}

/// A security group with its rules, as `GET /v2.0/security-groups` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    /// False: every packet is checked against its own direction's rules, nothing is tracked.
    pub stateful: bool,
    pub security_group_rules: Vec<SecurityGroupRule>,
}

/// A security group rule with every field Neutron returns (`null` for unset ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    /// Required in the top-level list; nested rules carry it too, as Neutron's do.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `null` (any), a name (`tcp`, `udp`, `icmp`, ...) or a number, kept as JSON so tests
    /// can write either form (or a bad one).
    pub protocol: Value,
    /// Ports (tcp/udp/...) or the ICMP type; `i64` so tests can write out-of-range values.
    pub port_range_min: Option<i64>,
    /// Ports (tcp/udp/...) or the ICMP code.
    pub port_range_max: Option<i64>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    pub remote_address_group_id: Option<String>,
}

/// An address group, as `GET /v2.0/address-groups` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressGroup {
    pub id: String,
    pub name: String,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    #[serde(rename = "provider:network_type")]
    pub network_type: String,
    /// `None` (written as `null`) for the flat external network.
    #[serde(rename = "provider:segmentation_id")]
    pub segmentation_id: Option<u32>,
    /// Only flat/vlan networks have one (`public` for the external network).
    #[serde(
        rename = "provider:physical_network",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub physical_network: Option<String>,
    #[serde(rename = "router:external")]
    pub router_external: bool,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub cidr: String,
    pub gateway_ip: String,
    pub ip_version: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    pub mac_address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub mac_address: String,
    pub fixed_ips: Vec<FixedIp>,
    pub device_owner: String,
    pub device_id: String,
    /// Empty for router interface ports (Neutron leaves DVR interfaces unbound).
    #[serde(rename = "binding:host_id")]
    pub binding_host_id: String,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub port_security_enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Router {
    pub id: String,
    pub distributed: bool,
    pub ha: bool,
    /// `null` without an external network; else `{"network_id", "enable_snat",
    /// "external_fixed_ips"}`.
    pub external_gateway_info: Option<serde_json::Value>,
    /// The `dvr_snat` hosts that may hold an HA router's centralized role (docs/HA.md);
    /// absent (not written) for other routers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ha_hosts: Vec<HaHost>,
}

/// One entry of a router's `ha_hosts`: a host (by agent name) and its priority (higher wins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HaHost {
    pub host: String,
    pub priority: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub agent_mode: String,
    pub tunnel_ip: String,
    pub dvr_mac: String,
    /// The host's NIC on the external network (`ext0`), absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_interface: Option<String>,
}

impl State {
    pub fn port_mut(&mut self, id: &str) -> Option<&mut Port> {
        self.ports.iter_mut().find(|p| p.id == id)
    }
    pub fn subnet_mut(&mut self, id: &str) -> Option<&mut Subnet> {
        self.subnets.iter_mut().find(|s| s.id == id)
    }
    pub fn network_mut(&mut self, id: &str) -> Option<&mut Network> {
        self.networks.iter_mut().find(|n| n.id == id)
    }
    pub fn router_mut(&mut self, id: &str) -> Option<&mut Router> {
        self.routers.iter_mut().find(|r| r.id == id)
    }
    /// The floating IP object with this id.
    pub fn floatingip_mut(&mut self, id: &str) -> Option<&mut serde_json::Value> {
        self.floatingips.iter_mut().find(|f| f["id"] == id)
    }
    /// The security group with this id.
    pub fn security_group_mut(&mut self, id: &str) -> Option<&mut SecurityGroup> {
        self.security_groups.iter_mut().find(|g| g.id == id)
    }
    /// The security group fields of port `id` (created empty: every key absent).
    pub fn port_extras_mut(&mut self, id: &str) -> &mut PortExtras {
        self.port_extras.entry(id.to_string()).or_default()
    }
    /// The whole state as a JSON value, as it is written to the state file (with
    /// [`State::port_extras`] merged into the ports), also for tests that write shapes the types
    /// cannot express.
    pub fn to_value(&self) -> anyhow::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if self.port_extras.is_empty() {
            return Ok(v);
        }
        let ports = v
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| anyhow::anyhow!("state has no ports list"))?;
        for p in ports {
            let Some(extras) = p["id"].as_str().and_then(|id| self.port_extras.get(id)) else {
                continue;
            };
            let extras = extras.clone();
            if let Some(groups) = extras.security_groups {
                p["security_groups"] = groups.into();
            }
            if let Some(up) = extras.admin_state_up {
                p["admin_state_up"] = up.into();
            }
        }
        Ok(v)
    }
}
