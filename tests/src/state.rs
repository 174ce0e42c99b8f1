//! The Neutron-shaped state file the agents read, as the test bed writes it.
//!
//! Field names follow the Neutron API (`provider:segmentation_id`, `binding:host_id`, ...).
//! Values are kept as strings where the agent validates them, so tests can write invalid data
//! (a bad CIDR, a gateway outside its subnet) through the same types.

use serde::{Deserialize, Serialize};

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
    /// The whole state as a JSON value, for tests that write shapes the types cannot express.
    pub fn to_value(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }
}
