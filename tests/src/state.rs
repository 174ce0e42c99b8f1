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
    /// Security groups with their rules nested (`GET /v2.0/security-groups`); not written
    /// when empty, so states without groups are as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroup>,
    /// Top-level rules (`GET /v2.0/security-group-rules`), each naming its group in
    /// `security_group_id`; not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_rules: Vec<SecurityGroupRule>,
    /// Address groups a rule may name in `remote_address_group_id`; not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address_groups: Vec<AddressGroup>,
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
    /// IPv6 subnets: `slaac`, `dhcpv6-stateless`, `dhcpv6-stateful`; not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_ra_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address_mode: Option<String>,
}

impl Subnet {
    /// An IPv4 subnet.
    pub fn v4(id: &str, network_id: &str, cidr: &str, gateway_ip: &str) -> Subnet {
        Subnet {
            id: id.into(),
            network_id: network_id.into(),
            cidr: cidr.into(),
            gateway_ip: gateway_ip.into(),
            ip_version: 4,
            ipv6_ra_mode: None,
            ipv6_address_mode: None,
        }
    }
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
    /// The port's security group ids. `None`: the key is not written and the port is not
    /// filtered (a hand-written state; every test that sets no groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    /// `admin_state_up`; `None`: not written (the agent's default, true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
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
    /// The router's `admin_state_up`; `None`: not written (up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    /// The router's extra `routes` (`{"destination", "nexthop"}`); absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<serde_json::Value>,
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

/// A security group as `GET /v2.0/security-groups` returns it, rules nested.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    /// `false`: a stateless group (every packet against its own direction's rules).
    pub stateful: bool,
    pub security_group_rules: Vec<SecurityGroupRule>,
}

impl SecurityGroup {
    /// A stateful group named like its id, with `rules`.
    pub fn new(id: &str, rules: Vec<SecurityGroupRule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            stateful: true,
            security_group_rules: rules,
        }
    }

    /// The same group without state (`"stateful": false`).
    pub fn stateless(mut self) -> SecurityGroup {
        self.stateful = false;
        self
    }
}

/// A security group rule as the Neutron API shapes it. Protocol and port fields are JSON
/// values so that tests can write what the agent must refuse (a port of 70000, a protocol
/// name it does not know, a number as a string).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    /// Required for top-level rules; optional (and then equal to the group's) when nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group_id: Option<String>,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `null` (any), a name or a number.
    pub protocol: serde_json::Value,
    pub port_range_min: serde_json::Value,
    pub port_range_max: serde_json::Value,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address_group_id: Option<String>,
}

impl SecurityGroupRule {
    fn new(id: &str, direction: &str) -> SecurityGroupRule {
        SecurityGroupRule {
            id: id.into(),
            security_group_id: None,
            direction: direction.into(),
            ethertype: "IPv4".into(),
            protocol: serde_json::Value::Null,
            port_range_min: serde_json::Value::Null,
            port_range_max: serde_json::Value::Null,
            remote_ip_prefix: None,
            remote_group_id: None,
            remote_address_group_id: None,
        }
    }

    /// An IPv4 ingress rule admitting any protocol from anywhere (narrow it with the other
    /// methods).
    pub fn ingress(id: &str) -> SecurityGroupRule {
        SecurityGroupRule::new(id, "ingress")
    }

    /// An IPv4 egress rule admitting any protocol to anywhere.
    pub fn egress(id: &str) -> SecurityGroupRule {
        SecurityGroupRule::new(id, "egress")
    }

    /// `protocol` as given (a name such as `"tcp"`, or a number).
    pub fn protocol(mut self, protocol: impl Into<serde_json::Value>) -> SecurityGroupRule {
        self.protocol = protocol.into();
        self
    }

    /// TCP destination ports `min..=max`.
    pub fn tcp(self, min: u16, max: u16) -> SecurityGroupRule {
        self.protocol("tcp").ports(min, max)
    }

    /// UDP destination ports `min..=max`.
    pub fn udp(self, min: u16, max: u16) -> SecurityGroupRule {
        self.protocol("udp").ports(min, max)
    }

    /// ICMP of `icmp_type` (any code).
    pub fn icmp_type(mut self, icmp_type: u8) -> SecurityGroupRule {
        self.protocol = "icmp".into();
        self.port_range_min = icmp_type.into();
        self
    }

    /// `port_range_min` and `port_range_max`.
    pub fn ports(mut self, min: u16, max: u16) -> SecurityGroupRule {
        self.port_range_min = min.into();
        self.port_range_max = max.into();
        self
    }

    /// `remote_ip_prefix` (a CIDR or an address).
    pub fn prefix(mut self, prefix: &str) -> SecurityGroupRule {
        self.remote_ip_prefix = Some(prefix.into());
        self
    }

    /// `remote_group_id`.
    pub fn remote_group(mut self, group: &str) -> SecurityGroupRule {
        self.remote_group_id = Some(group.into());
        self
    }

    /// `remote_address_group_id`.
    pub fn remote_address_group(mut self, group: &str) -> SecurityGroupRule {
        self.remote_address_group_id = Some(group.into());
        self
    }

    /// `security_group_id` (for a top-level rule).
    pub fn in_group(mut self, group: &str) -> SecurityGroupRule {
        self.security_group_id = Some(group.into());
        self
    }
}

/// An address group (`GET /v2.0/address-groups`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressGroup {
    pub id: String,
    pub name: String,
    pub addresses: Vec<String>,
}

impl State {
    /// The security group with this id.
    pub fn security_group_mut(&mut self, id: &str) -> Option<&mut SecurityGroup> {
        self.security_groups.iter_mut().find(|g| g.id == id)
    }
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
