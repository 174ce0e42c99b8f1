//! Neutron-shaped router state and its validation.
//!
//! The state file is one JSON object with the lists `networks`, `subnets`, `ports`, `routers`,
//! `floatingips`, `hosts`, `security_groups`, `security_group_rules` and `address_groups`,
//! each element shaped like the Neutron API object of that name
//! (same field names, e.g. `provider:segmentation_id`, `binding:host_id`). A missing list is
//! empty and unknown fields are ignored, so a dump of the Neutron API can be used as is.
//!
//! Each element is read field by field from its JSON value ([`crate::json`]) rather than through a
//! derived `Deserialize`, so that every missing or ill-typed field is reported with the element
//! id and the field path (`port 5b3c…: field `fixed_ips[1].ip_address`: ...`), and all of them
//! are reported at once. After parsing, the state uses strong types (`Ipv4Addr`, `Ipv4Net`,
//! `[u8; 6]` MACs) and a [`State`] only exists if the whole state validated: the compiler can
//! rely on every reference resolving.
//!
//! IPv6 sits beside IPv4 rather than inside it, so that the IPv4 types and every path that
//! uses them stay as they were: the `subnets` list holds both families (one id space), read
//! into [`Subnet`]s and [`Subnet6`]s by `ip_version`; a port's `fixed_ips` and
//! `allowed_address_pairs` and a gateway's `external_fixed_ips` are split by address family
//! into `fixed_ips` / `fixed_ips6`, `allowed_address_pairs` / `allowed_address_pairs6` and
//! `external_fixed_ips` / `external_fixed_ips6`; errors still name an entry by its position
//! in the state's list. Floating IPs are IPv4 only.
//!
//! One file per resource family holds its types, how one element is read and the checks
//! about it: `network` (networks, subnets, fixed IPs), `host`, `router`, `port`,
//! `floatingip`, `security_group` (groups, rules, address groups); above `port` and
//! `router`, `extra_routes` (a router's `routes` against its ports). Below them: `parse` (the
//! field reader), `check` (what the checks share), `table` (objects of one kind by id) and
//! `error`. This file holds [`State`] and runs the
//! parsing and the checks in order.

mod check;
mod error;
mod extra_routes;
mod floatingip;
mod host;
mod network;
mod parse;
mod port;
mod router;
mod security_group;
mod table;

use std::path::Path;

pub use error::{FieldError, StateError};
pub use floatingip::FloatingIp;
pub use host::{AgentMode, Host, check_ifname, check_tunnel_ip};
pub use network::{
    DEFAULT_MTU, FixedIp, FixedIp6, NETWORK_TYPE_VXLAN, Network, Subnet, Subnet6, VNI_MAX, eui64,
};
pub use parse::{Mac, format_mac, parse_mac};
pub use port::{
    AddressPair, AddressPair6, OWNER_COMPUTE_PREFIX, OWNER_FLOATINGIP_AGENT_GATEWAY,
    OWNER_HA_ROUTER_REPLICATED_INTERFACE, OWNER_NETWORK_PREFIX, OWNER_ROUTER_CENTRALIZED_SNAT,
    OWNER_ROUTER_GATEWAY, OWNER_ROUTER_INTERFACE, OWNER_ROUTER_INTERFACE_DISTRIBUTED, Port,
};
pub use router::{ExternalGateway, ExtraRoute, HaHost, Router};
pub use security_group::{
    AddressGroup, Direction, Ethertype, PROTO_DCCP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, PortMatch, Remote, SecurityGroup, SecurityGroupRule,
    has_ports, is_icmp,
};

#[cfg(test)]
pub(crate) use error::display_lines;

use check::{Known, Report};
use floatingip::FipRefs;
use network::AnySubnet;
use port::PortRefs;
use table::Table;

/// A validated state with its id indexes.
///
/// Only [`State::from_json`] and [`State::load`] build one, so every reference in it (a port's
/// network, a fixed IP's subnet, a bound port's host, ...) resolves.
#[derive(Debug, Clone, Default)]
pub struct State {
    networks: Table<Network>,
    subnets: Table<Subnet>,
    /// The IPv6 subnets (same `subnets` list and id space as the IPv4 ones).
    subnets6: Table<Subnet6>,
    ports: Table<Port>,
    routers: Table<Router>,
    floatingips: Table<FloatingIp>,
    hosts: Table<Host>,
    /// Every rule merged into its group.
    security_groups: Table<SecurityGroup>,
    address_groups: Table<AddressGroup>,
    /// Per network index: subnet indexes, in state order.
    subnets_by_network: Vec<Vec<usize>>,
    /// Per network index: IPv6 subnet indexes, in state order.
    subnets6_by_network: Vec<Vec<usize>>,
    /// Per network index: port indexes, in state order.
    ports_by_network: Vec<Vec<usize>>,
}

impl State {
    /// Read and validate a state file.
    pub fn load(path: impl AsRef<Path>) -> Result<State, StateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        State::from_json(&text)
    }

    /// Parse and validate a state. All problems are reported together.
    pub fn from_json(text: &str) -> Result<State, StateError> {
        let root = crate::json::Value::parse(text)?;
        let crate::json::Value::Object(root) = root else {
            return Err(StateError::Shape(
                "the top level is not a JSON object".into(),
            ));
        };
        let mut errors = Vec::new();
        let networks = parse::list::<Network>(&root, &mut errors)?;
        let subnets = parse::list::<AnySubnet>(&root, &mut errors)?;
        let (subnets4, subnets6) = AnySubnet::split(subnets.table);
        let ports = parse::list::<Port>(&root, &mut errors)?;
        let routers = parse::list::<Router>(&root, &mut errors)?;
        let floatingips = parse::list::<FloatingIp>(&root, &mut errors)?;
        let hosts = parse::list::<Host>(&root, &mut errors)?;
        let sg = security_group::parse_lists(&root, &mut errors)?;
        let mut state = State {
            networks: networks.table,
            subnets: subnets4,
            subnets6,
            ports: ports.table,
            routers: routers.table,
            floatingips: floatingips.table,
            hosts: hosts.table,
            security_groups: sg.groups.table,
            address_groups: sg.address_groups.table,
            subnets_by_network: Vec::new(),
            subnets6_by_network: Vec::new(),
            ports_by_network: Vec::new(),
        };
        state.index_by_network();
        // Nothing refers to floating IPs, so the ones that did not parse need no note.
        let broken = Broken {
            networks: networks.broken,
            subnets: subnets.broken,
            ports: ports.broken,
            routers: routers.broken,
            hosts: hosts.broken,
            security_groups: sg.groups.broken,
            address_groups: sg.address_groups.broken,
        };
        state.validate(&broken, &mut errors);
        if errors.is_empty() {
            Ok(state)
        } else {
            Err(StateError::Invalid(errors))
        }
    }

    /// Every family's checks, in a fixed order (so errors come in a stable order).
    fn validate(&self, broken: &Broken, errors: &mut Vec<FieldError>) {
        let mut out = Report::new(errors);
        let networks = Known::new(&self.networks, &broken.networks);
        let subnets = Known::new(&self.subnets, &broken.subnets);
        let subnets6 = Known::new(&self.subnets6, &broken.subnets);
        let ports = Known::new(&self.ports, &broken.ports);
        let routers = Known::new(&self.routers, &broken.routers);
        let hosts = Known::new(&self.hosts, &broken.hosts);
        let groups = Known::new(&self.security_groups, &broken.security_groups);
        let address_groups = Known::new(&self.address_groups, &broken.address_groups);
        host::check_hosts(&mut out, self.hosts.items());
        network::check_networks(&mut out, self.networks.items());
        network::check_subnets(
            &mut out,
            self.subnets.items(),
            networks,
            &self.subnets_by_network,
        );
        network::check_subnets6(
            &mut out,
            self.subnets6.items(),
            networks,
            &self.subnets6_by_network,
        );
        let port_refs = PortRefs {
            networks,
            subnets,
            subnets6,
            routers,
            hosts,
        };
        port::check_ports(&mut out, self.ports.items(), port_refs);
        router::check_routers(&mut out, self.routers.items(), networks, subnets, subnets6);
        router::check_ha_hosts(&mut out, self.routers.items(), hosts);
        let route_refs = extra_routes::RouteRefs {
            ports,
            subnets,
            subnets6,
        };
        extra_routes::check_routes(&mut out, self.routers.items(), route_refs);
        port::check_snat_ports(&mut out, self.ports.items(), routers, hosts);
        let fip_refs = FipRefs {
            networks,
            subnets,
            subnets_by_network: &self.subnets_by_network,
            ports,
            routers,
        };
        floatingip::check_floatingips(&mut out, self.floatingips.items(), fip_refs);
        let sgs = self.security_groups.items();
        security_group::check_rules(&mut out, sgs, groups, address_groups);
        security_group::check_port_groups(&mut out, self.ports.items(), groups);
    }

    pub fn networks(&self) -> &[Network] {
        self.networks.items()
    }
    pub fn subnets(&self) -> &[Subnet] {
        self.subnets.items()
    }
    /// The IPv6 subnets, in state order.
    pub fn subnets6(&self) -> &[Subnet6] {
        self.subnets6.items()
    }
    pub fn ports(&self) -> &[Port] {
        self.ports.items()
    }
    pub fn routers(&self) -> &[Router] {
        self.routers.items()
    }
    pub fn floatingips(&self) -> &[FloatingIp] {
        self.floatingips.items()
    }
    pub fn hosts(&self) -> &[Host] {
        self.hosts.items()
    }
    pub fn security_groups(&self) -> &[SecurityGroup] {
        self.security_groups.items()
    }
    pub fn address_groups(&self) -> &[AddressGroup] {
        self.address_groups.items()
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id)
    }
    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnets.get(id)
    }
    /// An IPv6 subnet by id.
    pub fn subnet6(&self, id: &str) -> Option<&Subnet6> {
        self.subnets6.get(id)
    }
    pub fn port(&self, id: &str) -> Option<&Port> {
        self.ports.get(id)
    }
    pub fn router(&self, id: &str) -> Option<&Router> {
        self.routers.get(id)
    }
    pub fn floatingip(&self, id: &str) -> Option<&FloatingIp> {
        self.floatingips.get(id)
    }
    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }
    pub fn security_group(&self, id: &str) -> Option<&SecurityGroup> {
        self.security_groups.get(id)
    }
    pub fn address_group(&self, id: &str) -> Option<&AddressGroup> {
        self.address_groups.get(id)
    }

    /// The subnets of a network, in state order.
    pub fn subnets_on_network<'a>(
        &'a self,
        network_id: &str,
    ) -> impl Iterator<Item = &'a Subnet> + use<'a> {
        self.by_network(&self.subnets_by_network, network_id)
            .filter_map(|&i| self.subnets.at(i))
    }

    /// The IPv6 subnets of a network, in state order.
    pub fn subnets6_on_network<'a>(
        &'a self,
        network_id: &str,
    ) -> impl Iterator<Item = &'a Subnet6> + use<'a> {
        self.by_network(&self.subnets6_by_network, network_id)
            .filter_map(|&i| self.subnets6.at(i))
    }

    /// The ports of a network, in state order.
    pub fn ports_on_network<'a>(
        &'a self,
        network_id: &str,
    ) -> impl Iterator<Item = &'a Port> + use<'a> {
        self.by_network(&self.ports_by_network, network_id)
            .filter_map(|&i| self.ports.at(i))
    }

    fn by_network<'a>(
        &self,
        lists: &'a [Vec<usize>],
        network_id: &str,
    ) -> std::slice::Iter<'a, usize> {
        self.networks
            .index(network_id)
            .and_then(|n| lists.get(n))
            .map_or([].iter(), |l| l.iter())
    }

    fn index_by_network(&mut self) {
        self.subnets_by_network = vec![Vec::new(); self.networks.len()];
        self.subnets6_by_network = vec![Vec::new(); self.networks.len()];
        self.ports_by_network = vec![Vec::new(); self.networks.len()];
        for (i, s) in self.subnets6.items().iter().enumerate() {
            if let Some(list) = self
                .networks
                .index(&s.network_id)
                .and_then(|n| self.subnets6_by_network.get_mut(n))
            {
                list.push(i);
            }
        }
        for (i, s) in self.subnets.items().iter().enumerate() {
            if let Some(list) = self
                .networks
                .index(&s.network_id)
                .and_then(|n| self.subnets_by_network.get_mut(n))
            {
                list.push(i);
            }
        }
        for (i, p) in self.ports.items().iter().enumerate() {
            if let Some(list) = self
                .networks
                .index(&p.network_id)
                .and_then(|n| self.ports_by_network.get_mut(n))
            {
                list.push(i);
            }
        }
    }
}

/// Ids of objects that failed to parse, per kind: references to them are not reported again
/// as "does not exist".
struct Broken {
    networks: table::HashSet<String>,
    subnets: table::HashSet<String>,
    ports: table::HashSet<String>,
    routers: table::HashSet<String>,
    hosts: table::HashSet<String>,
    security_groups: table::HashSet<String>,
    address_groups: table::HashSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use std::net::Ipv4Addr;

    #[test]
    fn fixture_is_valid() {
        let s = state_of(&fixture_value());
        assert_eq!(s.networks().len(), 3);
        assert_eq!(s.subnets().len(), 3);
        assert_eq!(s.ports().len(), 8);
        assert_eq!(s.routers().len(), 1);
        assert_eq!(s.floatingips().len(), 1);
        assert_eq!(s.hosts().len(), 2);
        let vm1 = s.port("vm1");
        assert_eq!(vm1.map(|p| p.mac), Some([0xfa, 0x16, 0x3e, 0, 0, 1]));
        assert_eq!(vm1.map(Port::is_vm), Some(true));
        assert!(vm1.is_some_and(|p| p.port_security_enabled));
        assert_eq!(s.port("rif1").and_then(|p| p.host_id.clone()), None);
        assert_eq!(s.network("net1").and_then(Network::tenant_vni), Some(1001));
        assert_eq!(s.network("ext").and_then(Network::tenant_vni), None);
        assert_eq!(s.network("net2").map(|n| n.mtu), Some(DEFAULT_MTU));
        assert_eq!(
            s.host("host-b").map(|h| h.agent_mode),
            Some(AgentMode::DvrSnat)
        );
        assert_eq!(
            s.host("host-b").map(|h| h.tunnel_ip),
            Some(Ipv4Addr::new(192, 0, 2, 2))
        );
        let on_net1: Vec<&str> = s.ports_on_network("net1").map(|p| p.id.as_str()).collect();
        assert_eq!(on_net1, ["vm1", "vm3", "rif1", "snat1", "dhcp1"]);
        let subnets: Vec<&str> = s
            .subnets_on_network("net2")
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(subnets, ["subnet2"]);
        let gw = s.router("router1").and_then(|r| r.external_gateway.clone());
        assert_eq!(
            gw.map(|g| (g.enable_snat, g.external_fixed_ips.len())),
            Some((true, 1))
        );
    }

    #[test]
    fn empty_and_missing_lists() {
        let s = match State::from_json("{}") {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert!(s.ports().is_empty() && s.hosts().is_empty());
        assert!(matches!(State::from_json("[]"), Err(StateError::Shape(_))));
        assert!(matches!(
            State::from_json(r#"{"ports": 3}"#),
            Err(StateError::Shape(_))
        ));
        assert!(matches!(State::from_json("{"), Err(StateError::Json(_))));
    }

    #[test]
    fn load_reports_path() {
        let err = State::load("/nonexistent/dvr-state.json");
        assert!(matches!(&err, Err(StateError::Read { .. })));
        assert!(
            err.err()
                .is_some_and(|e| e.to_string().contains("/nonexistent/dvr-state.json"))
        );
    }

    #[test]
    fn display_is_one_line_per_error() {
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm1")["mac_address"] = "zz:00".into();
        elem(&mut v, "hosts", "name", "host-a")["agent_mode"] = "legacy".into();
        let text = match State::from_json(&v.to_string()) {
            Ok(_) => panic!("validated"),
            Err(e) => e.to_string(),
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "port vm1: field `mac_address`: invalid MAC \"zz:00\"",
                "host host-a: field `agent_mode`: unknown agent_mode \"legacy\" (expected dvr, \
                 dvr_snat or dvr_no_external)",
            ]
        );
    }

    #[test]
    fn defaults_apply() {
        let state = State::from_json(
            r#"{"networks": [{"id": "n", "provider:network_type": "vxlan", "provider:segmentation_id": 7}],
                "subnets": [{"id": "s", "network_id": "n", "cidr": "10.9.0.0/16", "ip_version": 4}],
                "ports": [{"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01",
                           "fixed_ips": [{"subnet_id": "s", "ip_address": "10.9.0.5"}]}],
                "routers": [{"id": "r"}]}"#,
        );
        let s = match state {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let n = s.network("n");
        assert_eq!(
            n.map(|n| (n.external, n.mtu, n.name.is_none())),
            Some((false, DEFAULT_MTU, true))
        );
        let p = s.port("p");
        assert_eq!(
            p.map(|p| (
                p.device_owner.as_str(),
                p.device_id.as_str(),
                p.host_id.is_none(),
                p.port_security_enabled
            )),
            Some(("", "", true, true))
        );
        let r = s.router("r");
        assert_eq!(
            r.map(|r| (r.distributed, r.ha, r.external_gateway.is_none())),
            Some((true, false, true))
        );
        assert_eq!(s.subnet("s").and_then(|s| s.gateway_ip), None);
    }
}
