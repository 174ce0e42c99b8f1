//! Ports: VM ports, the ports routers and Neutron's services hold (told apart by
//! `device_owner`), their addresses and allowed address pairs.

use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::check::{Known, Ref, Report, is_multicast};
use super::host::{AgentMode, Host};
use super::network::{
    FamilySubnet, FixedIp, FixedIp6, FixedIpAt, FixedIpPos, NETWORK_TYPE_VXLAN, Network, Subnet,
    Subnet6, fixed_ip_inside, fixed_ip_subnet, read_fixed_ips,
};
use super::parse::{
    Element, Mac, Reader, conv_bool, conv_id, conv_mac, conv_pair_prefix, conv_string, format_mac,
};
use super::router::Router;
use super::table::HashMap;

/// `device_owner` of a DVR router interface port (one per router and subnet, same MAC and IP
/// on every host).
pub const OWNER_ROUTER_INTERFACE_DISTRIBUTED: &str = "network:router_interface_distributed";
/// `device_owner` of a legacy (centralized) router's interface port.
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
/// `device_owner` of an HA router's interface port.
pub const OWNER_HA_ROUTER_REPLICATED_INTERFACE: &str = "network:ha_router_replicated_interface";
/// `device_owner` of the centralized SNAT port of a DVR router (on the `dvr_snat` host).
pub const OWNER_ROUTER_CENTRALIZED_SNAT: &str = "network:router_centralized_snat";
/// `device_owner` of a router's port on its external network.
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
/// `device_owner` of a host's port on an external network (Neutron's "FIP agent gateway",
/// `fg-` device): `device_id` (and usually `binding:host_id`) is the host name.
pub const OWNER_FLOATINGIP_AGENT_GATEWAY: &str = "network:floatingip_agent_gateway";
/// `device_owner` prefix of Nova instance ports (`compute:<availability zone>`).
pub const OWNER_COMPUTE_PREFIX: &str = "compute:";
/// `device_owner` prefix of the ports Neutron's own services hold (`network:dhcp`, router
/// interfaces, SNAT and gateway ports, ...).
pub const OWNER_NETWORK_PREFIX: &str = "network:";

/// One entry of a port's `allowed_address_pairs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPair {
    /// The allowed source prefix; a plain address is a /32. May have host bits set, as
    /// Neutron accepts them; users take `net.network()`.
    pub net: Ipv4Net,
    /// The allowed source MAC (the port's own MAC when the pair does not name one).
    pub mac: Mac,
}

/// One IPv6 entry of a port's `allowed_address_pairs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPair6 {
    /// The allowed source prefix; a plain address is a /128. May have host bits set, as
    /// Neutron accepts them; users take `net.network()`.
    pub net: Ipv6Net,
    /// The allowed source MAC (the port's own MAC when the pair does not name one).
    pub mac: Mac,
}

impl AddressPair {
    /// True when the pair allows `ip` as a source: an exact address, or a prefix holding it
    /// (host bits of the prefix ignored, as Neutron does).
    pub fn allows(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(&ip)
    }
}

/// A Neutron port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub mac: Mac,
    /// The IPv4 entries of `fixed_ips`.
    pub fixed_ips: Vec<FixedIp>,
    /// The IPv6 entries of `fixed_ips`.
    pub fixed_ips6: Vec<FixedIp6>,
    /// Where each IPv4 and IPv6 entry sat in the state's `fixed_ips` (for error paths).
    pub(super) fixed_ip_pos: FixedIpPos,
    pub device_owner: String,
    pub device_id: String,
    /// `binding:host_id`, `None` when unbound (absent, null or "").
    pub host_id: Option<String>,
    /// The IPv4 entries of `allowed_address_pairs`.
    pub allowed_address_pairs: Vec<AddressPair>,
    /// The IPv6 entries of `allowed_address_pairs`.
    pub allowed_address_pairs6: Vec<AddressPair6>,
    pub port_security_enabled: bool,
    /// `security_groups`: the ids of the port's security groups, as listed. `None` when the
    /// state does not name the field (or it is `null`): a hand-written state whose ports are
    /// not filtered (Neutron always sends it; `[]` means filtered by no rule at all).
    pub security_groups: Option<Vec<String>>,
    /// `admin_state_up` (default true): false lets nothing in or out of the port.
    pub admin_state_up: bool,
}

impl Port {
    /// A Nova instance port (`device_owner` `compute:*`).
    pub fn is_compute(&self) -> bool {
        self.device_owner.starts_with(OWNER_COMPUTE_PREFIX)
    }

    /// A VM port: a compute port bound to a host. Only these are endpoints in the datapath.
    pub fn is_vm(&self) -> bool {
        self.is_compute() && self.host_id.is_some()
    }

    /// A DVR router interface (`network:router_interface_distributed`).
    pub fn is_distributed_interface(&self) -> bool {
        self.device_owner == OWNER_ROUTER_INTERFACE_DISTRIBUTED
    }

    /// A port Neutron gives a subnet's `gateway_ip` rather than an automatic address
    /// (its `ROUTER_INTERFACE_OWNERS_SNAT`): a router interface of any kind, or a DVR
    /// router's centralized SNAT port.
    pub fn is_router_interface(&self) -> bool {
        matches!(
            self.device_owner.as_str(),
            OWNER_ROUTER_INTERFACE_DISTRIBUTED
                | OWNER_ROUTER_INTERFACE
                | OWNER_HA_ROUTER_REPLICATED_INTERFACE
                | OWNER_ROUTER_CENTRALIZED_SNAT
        )
    }

    /// A router's centralized SNAT port (`network:router_centralized_snat`): one per subnet
    /// with an interface, bound to the router's SNAT host.
    pub fn is_centralized_snat(&self) -> bool {
        self.device_owner == OWNER_ROUTER_CENTRALIZED_SNAT
    }

    /// A host's port on an external network (`network:floatingip_agent_gateway`).
    pub fn is_floatingip_agent_gateway(&self) -> bool {
        self.device_owner == OWNER_FLOATINGIP_AGENT_GATEWAY
    }

    /// A port that may carry a VIP: unbound (no `binding:host_id`) and held by no service:
    /// not a Neutron service port (`network:*`: router interfaces are unbound too, and a
    /// `0.0.0.0/0` address pair must not turn the gateway into a VIP) and not an instance port
    /// waiting for its binding (`compute:*`). Keepalived VIP ports are created this way, with
    /// an empty `device_owner`. It is a VIP only if VMs list its address in their allowed
    /// address pairs (decided by the compiler).
    pub fn may_be_vip(&self) -> bool {
        self.host_id.is_none()
            && !self.is_compute()
            && !self.device_owner.starts_with(OWNER_NETWORK_PREFIX)
    }

    /// A port owned by a router: its `device_id` is the router id.
    pub fn is_router_owned(&self) -> bool {
        matches!(
            self.device_owner.as_str(),
            OWNER_ROUTER_INTERFACE_DISTRIBUTED
                | OWNER_ROUTER_CENTRALIZED_SNAT
                | OWNER_ROUTER_GATEWAY
        )
    }
}

impl Element for Port {
    const KIND: &'static str = "port";
    const LIST: &'static str = "ports";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let network_id = r.req("network_id", conv_id);
        let mac = r.req("mac_address", conv_mac);
        let fixed = read_fixed_ips(r, "fixed_ips", true);
        let device_owner = r.opt("device_owner", conv_string).unwrap_or_default();
        let device_id = r.opt("device_id", conv_string).unwrap_or_default();
        let host_id = r.opt_nonempty("binding:host_id");
        let mut allowed_address_pairs = Vec::new();
        let mut allowed_address_pairs6 = Vec::new();
        for (path, pair) in r.list("allowed_address_pairs", false) {
            let mut pr = r.child(&path, pair);
            let net = pr.req("ip_address", conv_pair_prefix);
            let pair_mac = pr.opt("mac_address", conv_mac);
            match (net, pair_mac.or(mac)) {
                (Some(IpNet::V4(net)), Some(mac)) => {
                    allowed_address_pairs.push(AddressPair { net, mac });
                }
                (Some(IpNet::V6(net)), Some(mac)) => {
                    allowed_address_pairs6.push(AddressPair6 { net, mac });
                }
                _ => {}
            }
        }
        let port_security_enabled = r.opt("port_security_enabled", conv_bool).unwrap_or(true);
        let security_groups = r.opt_list("security_groups", conv_id);
        let admin_state_up = r.opt("admin_state_up", conv_bool).unwrap_or(true);
        Some(Port {
            id: id?,
            network_id: network_id?,
            mac: mac?,
            fixed_ips: fixed.v4,
            fixed_ips6: fixed.v6,
            fixed_ip_pos: fixed.pos,
            device_owner,
            device_id,
            host_id,
            allowed_address_pairs,
            allowed_address_pairs6,
            port_security_enabled,
            security_groups,
            admin_state_up,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// What the port checks look up.
#[derive(Clone, Copy)]
pub(super) struct PortRefs<'s> {
    pub(super) networks: Known<'s, Network>,
    pub(super) subnets: Known<'s, Subnet>,
    pub(super) subnets6: Known<'s, Subnet6>,
    pub(super) routers: Known<'s, Router>,
    pub(super) hosts: Known<'s, Host>,
}

/// A port's network, subnets and host exist; MACs are unicast and unique per network,
/// fixed IPs inside their subnet and unique in it; a router's port names an existing router
/// and holds one address; a router has one distributed interface per network and a subnet
/// the interface of one router; compute ports are on VXLAN tenant networks (or external).
pub(super) fn check_ports(out: &mut Report<'_>, ports: &[Port], refs: PortRefs<'_>) {
    let mut checks = PortChecks {
        out,
        refs,
        seen: Seen::default(),
    };
    for p in ports {
        checks.port(p);
    }
}

/// Where a port's `fixed_ips[at]` problems go.
fn fixed_ip_at(p: &Port, at: usize) -> FixedIpAt<'_> {
    FixedIpAt {
        kind: "port",
        id: &p.id,
        prefix: format!("fixed_ips[{at}]"),
    }
}

/// What the port checks remember from the ports before.
#[derive(Default)]
struct Seen<'s> {
    /// (network, MAC) -> port.
    macs: HashMap<(usize, Mac), &'s str>,
    /// (subnet, address) -> port; the address's family says whether the index is of an IPv4
    /// or an IPv6 subnet.
    ips: HashMap<(usize, IpAddr), &'s str>,
    /// (router, network) -> (subnet, port) and subnet -> (router, port), for DVR interfaces.
    iface_by_router_net: HashMap<(usize, usize), (usize, &'s str)>,
    iface_by_subnet: HashMap<usize, (usize, &'s str)>,
    /// (router, network) -> port, IPv6 subnet -> (router, port), for DVR interfaces with
    /// IPv6 addresses.
    iface6_by_router_net: HashMap<(usize, usize), &'s str>,
    iface6_by_subnet: HashMap<usize, (usize, &'s str)>,
    /// Network -> (router, port, IPv6 subnet) of the first interface on an IPv6 subnet with
    /// `ipv6_ra_mode`: the router that advertises on the network.
    ra_by_network: HashMap<usize, (usize, &'s str, usize)>,
}

struct PortChecks<'s, 'o, 'e> {
    out: &'o mut Report<'e>,
    refs: PortRefs<'s>,
    seen: Seen<'s>,
}

impl<'s> PortChecks<'s, '_, '_> {
    fn error(&mut self, p: &Port, field: &str, message: impl Into<String>) {
        self.out.error("port", &p.id, field, message);
    }

    fn port(&mut self, p: &'s Port) {
        let net = self.network(p);
        self.mac(p, net);
        let first_subnet = self.fixed_ips(p);
        let subnets6 = self.fixed_ips6(p);
        if let Some(host) = &p.host_id
            && let Ref::Missing = self.refs.hosts.resolve(host)
        {
            let message = format!("host {host} is not in hosts");
            self.error(p, "binding:host_id", message);
        }
        let router = self.router(p);
        if p.is_distributed_interface()
            && p.fixed_ips.len() == 1
            && let (Some(r), Some(si), Some(net)) = (router, first_subnet, net)
            && self
                .refs
                .subnets
                .table
                .at(si)
                .is_some_and(|s| s.network_id == p.network_id)
        {
            self.distributed_interface(p, r, si, net);
        }
        if p.is_distributed_interface()
            && let (Some(r), Some(net)) = (router, net)
        {
            self.distributed_interface6(p, r, &subnets6, net);
        }
        if p.is_compute()
            && let Some(n) = net.and_then(|n| self.refs.networks.table.at(n))
            && !n.external
            && n.network_type != NETWORK_TYPE_VXLAN
        {
            let message = format!(
                "compute port on {} network {}: this datapath carries tenant networks over \
                 VXLAN only",
                n.network_type, n.id
            );
            self.error(p, "network_id", message);
        }
    }

    /// The index of the port's network.
    fn network(&mut self, p: &Port) -> Option<usize> {
        match self.refs.networks.resolve(&p.network_id) {
            Ref::Found(n) => Some(n),
            Ref::Broken => None,
            Ref::Missing => {
                let message = format!("network {} does not exist", p.network_id);
                self.error(p, "network_id", message);
                None
            }
        }
    }

    /// Unicast, and unique on the network (`net`).
    fn mac(&mut self, p: &'s Port, net: Option<usize>) {
        let mac_text = || format_mac(&p.mac);
        if is_multicast(&p.mac) || p.mac == [0; 6] {
            let message = format!("MAC {} is not a unicast MAC", mac_text());
            self.error(p, "mac_address", message);
        }
        if let Some(net) = net {
            match self.seen.macs.entry((net, p.mac)) {
                Entry::Occupied(o) => {
                    let message = format!(
                        "duplicate MAC {} on network {}: also port {}",
                        mac_text(),
                        p.network_id,
                        o.get()
                    );
                    self.error(p, "mac_address", message);
                }
                Entry::Vacant(v) => {
                    v.insert(&p.id);
                }
            }
        }
    }

    /// Each on an existing subnet of the port's network, inside it, and unique in it.
    /// Returns the index of the first one's subnet.
    fn fixed_ips(&mut self, p: &'s Port) -> Option<usize> {
        let (subnets, other) = (self.refs.subnets, self.refs.subnets6);
        let mut first_subnet = None;
        for (i, fip) in p.fixed_ips.iter().enumerate() {
            let at = fixed_ip_at(p, p.fixed_ip_pos.v4(i));
            let subnet = fixed_ip_subnet(self.out, &at, &fip.subnet_id, fip.ip, subnets, other);
            let Some((si, sub)) = subnet else {
                continue;
            };
            if i == 0 {
                first_subnet = Some(si);
            }
            // On a subnet of another network, the address is still checked (as it always
            // was for IPv4; the IPv6 entries stop there).
            self.on_port_network(p, &at, sub);
            if fixed_ip_inside(self.out, &at, sub, fip.ip) {
                self.unique_ip(p, &at, (si, fip.ip.into()), sub);
            }
        }
        first_subnet
    }

    /// The IPv6 entries, as [`Self::fixed_ips`]; on an auto-address subnet (slaac or
    /// dhcpv6-stateless) a port other than a router's holds the EUI-64 address of its MAC.
    /// Returns the IPv6 subnet indexes, in order.
    fn fixed_ips6(&mut self, p: &'s Port) -> Vec<usize> {
        let (subnets, other) = (self.refs.subnets6, self.refs.subnets);
        let mut found = Vec::new();
        for (i, fip) in p.fixed_ips6.iter().enumerate() {
            let at = fixed_ip_at(p, p.fixed_ip_pos.v6(i));
            let subnet = fixed_ip_subnet(self.out, &at, &fip.subnet_id, fip.ip, subnets, other);
            let Some((si, sub)) = subnet else {
                continue;
            };
            if !self.on_port_network(p, &at, sub) || !fixed_ip_inside(self.out, &at, sub, fip.ip) {
                continue;
            }
            found.push(si);
            if sub.is_auto_address() && !p.is_router_interface() {
                let eui64 = sub.eui64(p.mac);
                if fip.ip != eui64 {
                    let message = format!(
                        "{} is not {eui64}, the EUI-64 address of the port's MAC {} in \
                         subnet {} ({}): on a slaac or dhcpv6-stateless subnet Neutron \
                         assigns exactly that",
                        fip.ip,
                        format_mac(&p.mac),
                        sub.id,
                        sub.cidr
                    );
                    self.error(p, &at.ip_field(), message);
                }
            }
            self.unique_ip(p, &at, (si, fip.ip.into()), sub);
        }
        found
    }

    /// True when the subnet `sub` of a fixed IP is on the port's network; reports it
    /// otherwise.
    fn on_port_network(&mut self, p: &Port, at: &FixedIpAt<'_>, sub: &impl FamilySubnet) -> bool {
        let on = sub.network_id() == p.network_id;
        if !on {
            let message = format!(
                "subnet {} is on network {}, not on the port's network {}",
                sub.id(),
                sub.network_id(),
                p.network_id
            );
            self.error(p, &at.subnet_field(), message);
        }
        on
    }

    /// The fixed IP `ip` of subnet `sub` (`ip.0` its index) is held by no port before, and
    /// not listed twice by this one.
    fn unique_ip(
        &mut self,
        p: &'s Port,
        at: &FixedIpAt<'_>,
        ip: (usize, IpAddr),
        sub: &impl FamilySubnet,
    ) {
        let other = match self.seen.ips.entry(ip) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                v.insert(&p.id);
                return;
            }
        };
        let message = if other == p.id {
            format!("{} is listed twice", ip.1)
        } else {
            format!(
                "duplicate IP {} in subnet {}: also port {other}",
                ip.1,
                sub.id()
            )
        };
        self.error(p, &at.ip_field(), message);
    }

    /// A router's port names an existing router and holds one address. Returns the
    /// router's index.
    fn router(&mut self, p: &Port) -> Option<usize> {
        if !p.is_router_owned() {
            return None;
        }
        let mut router = None;
        match self.refs.routers.resolve(&p.device_id) {
            Ref::Found(r) => router = Some(r),
            Ref::Broken => {}
            Ref::Missing if p.device_id.is_empty() => {
                let message = format!("a {} port needs the router id", p.device_owner);
                self.error(p, "device_id", message);
            }
            Ref::Missing => {
                let message = format!("router {} does not exist", p.device_id);
                self.error(p, "device_id", message);
            }
        }
        if p.fixed_ips6.is_empty() && p.fixed_ips.len() != 1 {
            let message = format!(
                "a {} port needs exactly one fixed IP, has {}",
                p.device_owner,
                p.fixed_ips.len()
            );
            self.error(p, "fixed_ips", message);
        } else if p.fixed_ips.len() > 1 {
            // Neutron: a router port has at most one IPv4 address, and any number of IPv6
            // ones (a router's IPv6 subnets of one network share one port).
            let message = format!(
                "a {} port holds at most one IPv4 fixed IP, has {}",
                p.device_owner,
                p.fixed_ips.len()
            );
            self.error(p, "fixed_ips", message);
        }
        router
    }

    /// Router `r`'s distributed interface on subnet `si` of network `net`: the router's
    /// only one on the network, and the subnet's only router.
    fn distributed_interface(&mut self, p: &'s Port, r: usize, si: usize, net: usize) {
        let field = format!("fixed_ips[{}].subnet_id", p.fixed_ip_pos.v4(0));
        let field = field.as_str();
        let (subnets, routers) = (self.refs.subnets, self.refs.routers);
        let subnet_id = subnets.table.at(si).map_or("", |s| s.id.as_str());
        match self.seen.iface_by_router_net.entry((r, net)) {
            Entry::Occupied(o) => {
                let (other_subnet, other_port) = *o.get();
                let message = if other_subnet == si {
                    format!(
                        "router {} has two interfaces on subnet {subnet_id}: also port {other_port}",
                        p.device_id
                    )
                } else {
                    let other_id = subnets.table.at(other_subnet).map_or("", |s| s.id.as_str());
                    format!(
                        "router interface on two subnets of one network: router {} already \
                         has port {other_port} on subnet {other_id} of network {}",
                        p.device_id, p.network_id
                    )
                };
                self.error(p, field, message);
            }
            Entry::Vacant(v) => {
                v.insert((si, &p.id));
            }
        }
        match self.seen.iface_by_subnet.entry(si) {
            Entry::Occupied(o) => {
                let (other_router, other_port) = *o.get();
                if other_router != r {
                    let other_id = routers.table.at(other_router).map_or("", |r| r.id.as_str());
                    let message = format!(
                        "subnet {subnet_id} already has a distributed interface of router \
                         {other_id} (port {other_port}); interfaces of two routers on one \
                         subnet are not supported"
                    );
                    self.error(p, field, message);
                }
            }
            Entry::Vacant(v) => {
                v.insert((r, &p.id));
            }
        }
    }
}

impl<'s> PortChecks<'s, '_, '_> {
    /// Router `r`'s distributed interface with IPv6 addresses on subnets `subnets6` of
    /// network `net`: the router's only IPv6 interface port on the network (Neutron puts a
    /// router's IPv6 subnets of one network on one port), each subnet the interface of one
    /// router, and the network's advertising subnets (`ipv6_ra_mode`) on one router.
    fn distributed_interface6(&mut self, p: &'s Port, r: usize, subnets6: &[usize], net: usize) {
        if subnets6.is_empty() {
            return;
        }
        let (subnets, routers) = (self.refs.subnets6, self.refs.routers);
        let router_id = |r: usize| routers.table.at(r).map_or("", |r| r.id.as_str());
        let subnet_id = |si: usize| subnets.table.at(si).map_or("", |s| s.id.as_str());
        let field = |k: usize| format!("fixed_ips[{}].subnet_id", p.fixed_ip_pos.v6(k));
        match self.seen.iface6_by_router_net.entry((r, net)) {
            Entry::Occupied(o) => {
                let message = format!(
                    "router {} already has IPv6 interface port {} on network {}: a router's \
                     IPv6 subnets of one network share one port",
                    p.device_id,
                    o.get(),
                    p.network_id
                );
                self.error(p, &field(0), message);
                return;
            }
            Entry::Vacant(v) => {
                v.insert(&p.id);
            }
        }
        for (k, &si) in subnets6.iter().enumerate() {
            match self.seen.iface6_by_subnet.entry(si) {
                Entry::Occupied(o) => {
                    let (other_router, other_port) = *o.get();
                    if other_router != r {
                        let message = format!(
                            "subnet {} already has a distributed interface of router {} (port \
                             {other_port}); interfaces of two routers on one subnet are not \
                             supported",
                            subnet_id(si),
                            router_id(other_router)
                        );
                        self.error(p, &field(k), message);
                        continue;
                    }
                }
                Entry::Vacant(v) => {
                    v.insert((r, &p.id));
                }
            }
            if subnets.table.at(si).is_some_and(|s| s.ra_mode.is_some()) {
                match self.seen.ra_by_network.entry(net) {
                    Entry::Occupied(o) => {
                        let (other_router, other_port, other_subnet) = *o.get();
                        if other_router != r {
                            let message = format!(
                                "network {} already has router advertisements from router {} \
                                 (port {other_port}, subnet {}): the subnets with ipv6_ra_mode \
                                 of one network must be on one router",
                                p.network_id,
                                router_id(other_router),
                                subnet_id(other_subnet)
                            );
                            self.error(p, &field(k), message);
                        }
                    }
                    Entry::Vacant(v) => {
                        v.insert((r, &p.id, si));
                    }
                }
            }
        }
    }
}

/// Centralized SNAT ports: those of one router are bound to one host (the router's SNAT
/// host), a `dvr_snat` host with an external interface, and there is at most one per
/// subnet. An unbound one is not scheduled yet and binds the router to no host.
pub(super) fn check_snat_ports(
    out: &mut Report<'_>,
    ports: &[Port],
    routers: Known<'_, Router>,
    hosts: Known<'_, Host>,
) {
    const HOST: &str = "binding:host_id";
    // router -> (SNAT host, first port bound there); (router, subnet) -> port.
    let mut host_of_router: HashMap<&str, (&str, &str)> = HashMap::default();
    let mut by_subnet: HashMap<(&str, &str), &str> = HashMap::default();
    for p in ports.iter().filter(|p| p.is_centralized_snat()) {
        // A missing router is reported with the port's other router checks.
        if !routers.table.contains(&p.device_id) {
            continue;
        }
        let router = p.device_id.as_str();
        if let [fixed] = p.fixed_ips.as_slice() {
            match by_subnet.entry((router, fixed.subnet_id.as_str())) {
                Entry::Occupied(o) => {
                    let message = format!(
                        "router {router} has two centralized SNAT ports on subnet {}: also \
                         port {}",
                        fixed.subnet_id,
                        o.get()
                    );
                    let field = format!("fixed_ips[{}].subnet_id", p.fixed_ip_pos.v4(0));
                    out.error("port", &p.id, &field, message);
                }
                Entry::Vacant(v) => {
                    v.insert(&p.id);
                }
            }
        }
        let Some(host) = p.host_id.as_deref() else {
            continue;
        };
        // An HA router's csnat ports are served where it is elected, not where bound.
        if routers.table.get(router).is_some_and(Router::is_ha_managed) {
            continue;
        }
        if let Some(h) = hosts.table.get(host) {
            let problem = match (h.agent_mode, &h.external_interface) {
                (AgentMode::DvrSnat, Some(_)) => None,
                (AgentMode::DvrSnat, None) => Some(format!(
                    "host {host} is dvr_snat but has no external_interface"
                )),
                (mode, _) => Some(format!("host {host} is agent_mode {mode}")),
            };
            if let Some(problem) = problem {
                let message = format!(
                    "{problem}: a {OWNER_ROUTER_CENTRALIZED_SNAT} port needs a dvr_snat host \
                     with an external_interface"
                );
                out.error("port", &p.id, HOST, message);
            }
        }
        match host_of_router.entry(router) {
            Entry::Occupied(o) => {
                let (other_host, other_port) = *o.get();
                if other_host != host {
                    let message = format!(
                        "router {router} has its centralized SNAT ports on two hosts: port \
                         {other_port} on host {other_host}, this one on host {host}"
                    );
                    out.error("port", &p.id, HOST, message);
                }
            }
            Entry::Vacant(v) => {
                v.insert((host, &p.id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{State, display_lines};
    use crate::testing::*;
    use serde_json::Value;
    use std::net::Ipv6Addr;

    #[test]
    fn port_network_must_exist() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["network_id"] = "nope".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "network_id",
            "network nope does not exist",
        );
    }

    #[test]
    fn port_mac_valid_unicast() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["mac_address"] = "zz:16:3e:00:00:01".into();
            elem(v, "ports", "id", "vm2")["mac_address"] = "ff:ff:ff:ff:ff:ff".into();
            elem(v, "ports", "id", "vm3")["mac_address"] = "01:00:5e:00:00:01".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "mac_address",
            "invalid MAC \"zz:16:3e:00:00:01\"",
        );
        assert_error(&errors, "port", "vm2", "mac_address", "not a unicast MAC");
        assert_error(&errors, "port", "vm3", "mac_address", "not a unicast MAC");
    }

    #[test]
    fn port_mac_unique_within_network() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["mac_address"] = "fa:16:3e:00:00:01".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "mac_address",
            "duplicate MAC fa:16:3e:00:00:01 on network net1: also port vm1",
        );
        // The same MAC on another network is allowed.
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm2")["mac_address"] = "fa:16:3e:00:00:01".into();
        state_of(&v);
    }

    #[test]
    fn port_fixed_ip_subnet_exists_and_is_on_the_network() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["fixed_ips"][0]["subnet_id"] = "nope".into();
            elem(v, "ports", "id", "vm3")["fixed_ips"][0]["subnet_id"] = "subnet2".into();
            elem(v, "ports", "id", "vm3")["fixed_ips"][0]["ip_address"] = "10.0.2.30".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "fixed_ips[0].subnet_id",
            "subnet nope does not exist",
        );
        assert_error(
            &errors,
            "port",
            "vm3",
            "fixed_ips[0].subnet_id",
            "subnet subnet2 is on network net2, not on the port's network net1",
        );
    }

    #[test]
    fn port_fixed_ip_inside_subnet() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["fixed_ips"][0]["ip_address"] = "10.0.2.10".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "fixed_ips[0].ip_address",
            "10.0.2.10 is outside subnet subnet1 (10.0.1.0/24)",
        );
    }

    #[test]
    fn port_fixed_ip_unique_in_subnet() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["fixed_ips"][0]["ip_address"] = "10.0.1.10".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "fixed_ips[0].ip_address",
            "duplicate IP 10.0.1.10 in subnet subnet1: also port vm1",
        );
    }

    #[test]
    fn port_allowed_address_pairs_parse() {
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm1")["allowed_address_pairs"] = serde_json::json!([
            {"ip_address": "10.0.1.100"},
            {"ip_address": "192.168.0.0/16", "mac_address": "fa:16:3e:aa:bb:cc"}
        ]);
        let s = state_of(&v);
        let pairs = s
            .port("vm1")
            .map(|p| p.allowed_address_pairs.clone())
            .unwrap_or_default();
        assert_eq!(
            pairs,
            [
                AddressPair {
                    net: Ipv4Net::from(Ipv4Addr::new(10, 0, 1, 100)),
                    mac: [0xfa, 0x16, 0x3e, 0, 0, 1]
                },
                AddressPair {
                    net: Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).unwrap_or_default(),
                    mac: [0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]
                },
            ]
        );
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["allowed_address_pairs"] = serde_json::json!([
                {"ip_address": "10.0.1.300"},
                {"ip_address": "10.0.1.0/24", "mac_address": "nope"}
            ]);
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "allowed_address_pairs[0].ip_address",
            "invalid IPv4 address or CIDR \"10.0.1.300\"",
        );
        assert_error(
            &errors,
            "port",
            "vm1",
            "allowed_address_pairs[1].mac_address",
            "invalid MAC \"nope\"",
        );
    }

    #[test]
    fn address_pair_allows_its_address_or_prefix() {
        let pair = |net: &str| AddressPair {
            net: net.parse().unwrap_or_default(),
            mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
        };
        let vip = Ipv4Addr::new(10, 0, 1, 100);
        assert!(pair("10.0.1.100/32").allows(vip));
        assert!(!pair("10.0.1.101/32").allows(vip));
        assert!(pair("10.0.1.100/30").allows(vip));
        assert!(pair("10.0.1.103/30").allows(vip), "host bits are ignored");
        assert!(!pair("10.0.1.104/30").allows(vip));
        assert!(pair("0.0.0.0/0").allows(vip));
    }

    #[test]
    fn may_be_vip_is_unbound_and_unowned() {
        let mut v = fixture_value();
        let vip = serde_json::json!({"id": "vip", "network_id": "net1",
            "mac_address": "fa:16:3e:00:09:01",
            "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.100"}]});
        push(&mut v, "ports", vip);
        elem(&mut v, "ports", "id", "vm3")["binding:host_id"] = "".into();
        let s = state_of(&v);
        let may = |id: &str| s.port(id).map(Port::may_be_vip);
        assert_eq!(may("vip"), Some(true));
        // Bound, an instance port waiting for its binding, a router interface.
        assert_eq!(may("vm1"), Some(false));
        assert_eq!(may("vm3"), Some(false));
        assert_eq!(may("rif1"), Some(false));
    }

    #[test]
    fn port_binding_host_must_be_known() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["binding:host_id"] = "host-z".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "binding:host_id",
            "host host-z is not in hosts",
        );
        // Unbound is fine.
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm3")["binding:host_id"] = "".into();
        assert_eq!(state_of(&v).port("vm3").map(Port::is_vm), Some(false));
    }

    #[test]
    fn router_port_needs_router_and_one_fixed_ip() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "rif1")["device_id"] = "router9".into();
            elem(v, "ports", "id", "snat1")["device_id"] = "".into();
            let gw = elem(v, "ports", "id", "rgw1");
            gw["fixed_ips"] = serde_json::json!([
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.11"}
            ]);
            elem(v, "ports", "id", "rif2")["fixed_ips"] = serde_json::json!([]);
        });
        assert_error(
            &errors,
            "port",
            "rif1",
            "device_id",
            "router router9 does not exist",
        );
        assert_error(&errors, "port", "snat1", "device_id", "needs the router id");
        assert_error(
            &errors,
            "port",
            "rgw1",
            "fixed_ips",
            "needs exactly one fixed IP, has 2",
        );
        assert_error(
            &errors,
            "port",
            "rif2",
            "fixed_ips",
            "needs exactly one fixed IP, has 0",
        );
    }

    #[test]
    fn router_interface_on_two_subnets_of_one_network() {
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet1b", "network_id": "net1", "cidr": "10.0.11.0/24", "ip_version": 4}),
            );
            push(
                v,
                "ports",
                serde_json::json!({"id": "rif1b", "network_id": "net1", "mac_address": "fa:16:3e:00:01:0b",
                    "fixed_ips": [{"subnet_id": "subnet1b", "ip_address": "10.0.11.1"}],
                    "device_owner": "network:router_interface_distributed", "device_id": "router1"}),
            );
        });
        assert_error(
            &errors,
            "port",
            "rif1b",
            "fixed_ips[0].subnet_id",
            "router interface on two subnets of one network: router router1 already has port rif1 on subnet subnet1 of network net1",
        );
    }

    #[test]
    fn one_subnet_with_interfaces_of_two_routers() {
        let errors = errors_after(|v| {
            push(v, "routers", serde_json::json!({"id": "router2"}));
            push(
                v,
                "ports",
                serde_json::json!({"id": "rif3", "network_id": "net1", "mac_address": "fa:16:3e:00:01:03",
                    "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.3"}],
                    "device_owner": "network:router_interface_distributed", "device_id": "router2"}),
            );
        });
        assert_error(
            &errors,
            "port",
            "rif3",
            "fixed_ips[0].subnet_id",
            "subnet subnet1 already has a distributed interface of router router1 (port rif1)",
        );
    }

    #[test]
    fn compute_port_needs_vxlan_tenant_network() {
        let errors = errors_after(|v| {
            let net = elem(v, "networks", "id", "net2");
            net["provider:network_type"] = "vlan".into();
            net["provider:physical_network"] = "physnet1".into();
        });
        assert_error(
            &errors,
            "port",
            "vm2",
            "network_id",
            "compute port on vlan network net2: this datapath carries tenant networks over VXLAN only",
        );
        // A compute port directly on the external network is not the datapath's business.
        let mut v = fixture_value();
        push(
            &mut v,
            "ports",
            serde_json::json!({"id": "vm-ext", "network_id": "ext", "mac_address": "fa:16:3e:00:05:01",
                "fixed_ips": [{"subnet_id": "ext-subnet", "ip_address": "203.0.113.77"}],
                "device_owner": "compute:nova", "binding:host_id": "host-a"}),
        );
        state_of(&v);
    }

    #[test]
    fn dual_stack_ports_parse() {
        let s = state_of(&dual_stack_value());
        let vm1 = s.port("vm1");
        assert_eq!(vm1.map(|p| p.fixed_ips.len()), Some(1));
        assert_eq!(
            vm1.map(|p| p.fixed_ips6.clone()),
            Some(vec![FixedIp6 {
                subnet_id: "subnet6a".into(),
                ip: "fd00:1::f816:3eff:fe00:1"
                    .parse()
                    .unwrap_or(Ipv6Addr::UNSPECIFIED)
            }])
        );
        let pairs6 = vm1.map(|p| p.allowed_address_pairs6.clone());
        assert_eq!(
            pairs6,
            Some(vec![
                AddressPair6 {
                    net: "fd00:1::100/128".parse().unwrap_or_default(),
                    mac: [0xfa, 0x16, 0x3e, 0, 0, 1]
                },
                AddressPair6 {
                    net: "fd00:9::/64".parse().unwrap_or_default(),
                    mac: [0xfa, 0x16, 0x3e, 0xaa, 0, 6]
                },
            ])
        );
        assert!(vm1.is_some_and(|p| p.allowed_address_pairs.is_empty()));
        let rif6a = s.port("rif6a");
        assert_eq!(
            rif6a.map(|p| (
                p.fixed_ips.len(),
                p.fixed_ips6.len(),
                p.is_router_interface()
            )),
            Some((0, 1, true))
        );
        // A router interface may hold one IPv4 address and IPv6 ones (Neutron, by port).
        let mut v = dual_stack_value();
        if let Some(list) = elem(&mut v, "ports", "id", "rif1")["fixed_ips"].as_array_mut() {
            list.push(serde_json::json!({"subnet_id": "subnet6a", "ip_address": "fd00:1::2"}));
        }
        if let Some(ports) = v["ports"].as_array_mut() {
            ports.retain(|p| p["id"] != "rif6a");
        }
        state_of(&v);
    }

    #[test]
    fn ipv6_fixed_ip_errors() {
        let errors = errors_after(|v| {
            *v = dual_stack_value();
            let vm1 = elem(v, "ports", "id", "vm1");
            // An IPv6 entry first: the IPv4 one is still named by its own position.
            vm1["fixed_ips"] = serde_json::json!([
                {"subnet_id": "subnet6a", "ip_address": "fd00:1::f816:3eff:fe00:1"},
                {"subnet_id": "subnet6a", "ip_address": "10.0.1.10"},
                {"subnet_id": "subnet1", "ip_address": "fd00:1::5"}
            ]);
            elem(v, "ports", "id", "vm3")["fixed_ips"] = serde_json::json!([
                {"subnet_id": "subnet6a", "ip_address": "fd00:1::33"},
                {"subnet_id": "subnet6a", "ip_address": "fd00:2::3"},
                {"subnet_id": "subnet6b", "ip_address": "fd00:2::3"}
            ]);
            elem(v, "ports", "id", "vm2")["fixed_ips"] = serde_json::json!([
                {"subnet_id": "subnet6b", "ip_address": "fd00:2::1"}
            ]);
        });
        let expect = [
            (
                "vm1",
                "fixed_ips[1].ip_address",
                "10.0.1.10 is an IPv4 address, subnet subnet6a is IPv6",
            ),
            (
                "vm1",
                "fixed_ips[2].ip_address",
                "fd00:1::5 is an IPv6 address, subnet subnet1 is IPv4",
            ),
            (
                "vm3",
                "fixed_ips[0].ip_address",
                "fd00:1::33 is not fd00:1::f816:3eff:fe00:3, the EUI-64 address of the port's \
                 MAC fa:16:3e:00:00:03 in subnet subnet6a (fd00:1::/64): on a slaac or \
                 dhcpv6-stateless subnet Neutron assigns exactly that",
            ),
            (
                "vm3",
                "fixed_ips[1].ip_address",
                "fd00:2::3 is outside subnet subnet6a (fd00:1::/64)",
            ),
            (
                "vm3",
                "fixed_ips[2].subnet_id",
                "subnet subnet6b is on network net2, not on the port's network net1",
            ),
            // rif6b comes later in the state.
            (
                "rif6b",
                "fixed_ips[0].ip_address",
                "duplicate IP fd00:2::1 in subnet subnet6b: also port vm2",
            ),
        ];
        for (id, field, text) in expect {
            assert_error(&errors, "port", id, field, text);
        }
        assert_eq!(errors.len(), expect.len(), "{}", display_lines(&errors));
        // A stateful subnet takes any address inside it; a router port the gateway.
        let mut v = dual_stack_value();
        elem(&mut v, "ports", "id", "vm2")["fixed_ips"] = serde_json::json!([
            {"subnet_id": "subnet6b", "ip_address": "fd00:2::abcd"}
        ]);
        state_of(&v);
        // dhcpv6-stateless as address mode alone makes a subnet auto-address too.
        let errors = errors_after(|v| {
            *v = dual_stack_value();
            let b = elem(v, "subnets", "id", "subnet6b");
            b["ipv6_ra_mode"] = Value::Null;
            b["ipv6_address_mode"] = "dhcpv6-stateless".into();
        });
        assert_error(
            &errors,
            "port",
            "vm2",
            "fixed_ips[1].ip_address",
            "fd00:2::20 is not fd00:2::f816:3eff:fe00:2, the EUI-64 address",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn ipv6_address_pairs_parse() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["allowed_address_pairs"] = serde_json::json!([
                {"ip_address": "fd00::/129"},
                {"ip_address": "fd00::zz"}
            ]);
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "allowed_address_pairs[0].ip_address",
            "invalid IPv6 address or CIDR \"fd00::/129\"",
        );
        assert_error(
            &errors,
            "port",
            "vm1",
            "allowed_address_pairs[1].ip_address",
            "invalid IPv6 address or CIDR \"fd00::zz\"",
        );
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["fixed_ips"][0]["ip_address"] = "fd00::zz".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "fixed_ips[0].ip_address",
            "invalid IPv6 address \"fd00::zz\"",
        );
    }

    #[test]
    fn ipv6_router_interfaces() {
        let rif = |id: &str, router: &str, net: &str, sub: &str, ip: &str, mac: &str| {
            serde_json::json!({"id": id, "network_id": net, "mac_address": mac,
                "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
                "device_owner": "network:router_interface_distributed", "device_id": router})
        };
        let errors = errors_after(|v| {
            *v = dual_stack_value();
            push(v, "routers", serde_json::json!({"id": "router2"}));
            // A second IPv6 port of router1 on net1, on a new subnet.
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet6c", "network_id": "net1", "cidr": "fd00:3::/64",
                    "ip_version": 6, "ipv6_ra_mode": "slaac"}),
            );
            push(
                v,
                "ports",
                rif(
                    "rif6c",
                    "router1",
                    "net1",
                    "subnet6c",
                    "fd00:3::1",
                    "fa:16:3e:00:06:03",
                ),
            );
            // router2 on subnet6b, which router1 already has.
            push(
                v,
                "ports",
                rif(
                    "rif6d",
                    "router2",
                    "net2",
                    "subnet6b",
                    "fd00:2::2",
                    "fa:16:3e:00:06:04",
                ),
            );
            // router2 advertising on net1 on its own subnet.
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet6e", "network_id": "net1", "cidr": "fd00:5::/64",
                    "ip_version": 6, "ipv6_ra_mode": "dhcpv6-stateful"}),
            );
            push(
                v,
                "ports",
                rif(
                    "rif6e",
                    "router2",
                    "net1",
                    "subnet6e",
                    "fd00:5::1",
                    "fa:16:3e:00:06:05",
                ),
            );
        });
        let expect = [
            (
                "rif6c",
                "fixed_ips[0].subnet_id",
                "router router1 already has IPv6 interface port rif6a on network net1: a \
                 router's IPv6 subnets of one network share one port",
            ),
            (
                "rif6d",
                "fixed_ips[0].subnet_id",
                "subnet subnet6b already has a distributed interface of router router1 (port \
                 rif6b); interfaces of two routers on one subnet are not supported",
            ),
            (
                "rif6e",
                "fixed_ips[0].subnet_id",
                "network net1 already has router advertisements from router router1 (port \
                 rif6a, subnet subnet6a): the subnets with ipv6_ra_mode of one network must be \
                 on one router",
            ),
        ];
        for (id, field, text) in expect {
            assert_error(&errors, "port", id, field, text);
        }
        assert_eq!(errors.len(), expect.len(), "{}", display_lines(&errors));
        let errors = errors_after(|v| {
            *v = dual_stack_value();
            elem(v, "ports", "id", "rgw1")["fixed_ips"] = serde_json::json!([
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.11"},
                {"subnet_id": "subnet6a", "ip_address": "fd00:1::9"}
            ]);
        });
        assert_error(
            &errors,
            "port",
            "rgw1",
            "fixed_ips",
            "a network:router_gateway port holds at most one IPv4 fixed IP, has 2",
        );
    }

    /// The error text of a state that does not validate.
    fn error_text(v: &Value) -> String {
        match State::from_json(&v.to_string()) {
            Ok(_) => panic!("validated"),
            Err(e) => e.to_string(),
        }
    }

    fn snat2_on(host: &str) -> Value {
        serde_json::json!({"id": "snat2", "network_id": "net2", "mac_address": "fa:16:3e:00:02:02",
            "fixed_ips": [{"subnet_id": "subnet2", "ip_address": "10.0.2.5"}],
            "device_owner": "network:router_centralized_snat", "device_id": "router1",
            "binding:host_id": host})
    }

    #[test]
    fn centralized_snat_ports_of_a_router_share_one_host() {
        let errors = errors_after(|v| {
            push(
                v,
                "hosts",
                serde_json::json!({"name": "host-s", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.3",
                    "dvr_mac": "fa:16:3f:00:00:0c", "external_interface": "eth1"}),
            );
            push(v, "ports", snat2_on("host-s"));
        });
        assert_error(
            &errors,
            "port",
            "snat2",
            "binding:host_id",
            "router router1 has its centralized SNAT ports on two hosts: port snat1 on host \
             host-b, this one on host host-s",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
        // Both on host-b is the normal case.
        let mut v = fixture_value();
        push(&mut v, "ports", snat2_on("host-b"));
        let s = state_of(&v);
        assert_eq!(s.port("snat2").map(Port::is_centralized_snat), Some(true));
        // Unbound (not scheduled yet) binds the router to no host.
        let mut v = fixture_value();
        push(&mut v, "ports", snat2_on(""));
        state_of(&v);
        // The same on the compile fixture: on two dvr_snat hosts.
        let mut v = snat_fixture();
        elem(&mut v, "ports", "id", "r1-snat2")["binding:host_id"] = "host-b".into();
        assert_eq!(
            error_text(&v),
            "port r1-snat2: field `binding:host_id`: router r1 has its centralized SNAT ports \
             on two hosts: port r1-snat1 on host host-s, this one on host host-b"
        );
    }

    #[test]
    fn centralized_snat_port_needs_a_dvr_snat_host_with_external() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "snat1")["binding:host_id"] = "host-a".into();
        });
        assert_error(
            &errors,
            "port",
            "snat1",
            "binding:host_id",
            "host host-a is agent_mode dvr: a network:router_centralized_snat port needs a \
             dvr_snat host with an external_interface",
        );
        let errors = errors_after(|v| {
            elem(v, "hosts", "name", "host-b")["external_interface"] = Value::Null;
        });
        assert_error(
            &errors,
            "port",
            "snat1",
            "binding:host_id",
            "host host-b is dvr_snat but has no external_interface",
        );
        // No csnat port at all is fine: the router simply has no SNAT.
        let mut v = fixture_value();
        if let Some(ports) = v["ports"].as_array_mut() {
            ports.retain(|p| p["id"] != "snat1");
        }
        state_of(&v);
        // All of a router's csnat ports on a dvr host: one error each.
        let mut v = snat_fixture();
        for id in ["r1-snat1", "r1-snat2"] {
            elem(&mut v, "ports", "id", id)["binding:host_id"] = "host-a".into();
        }
        let text = error_text(&v);
        assert!(
            text.starts_with(
                "port r1-snat1: field `binding:host_id`: host host-a is agent_mode dvr: a \
                 network:router_centralized_snat port needs a dvr_snat host with an \
                 external_interface"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        // On a dvr_no_external host.
        let mut v = snat_fixture();
        elem(&mut v, "ports", "id", "r1-snat1")["binding:host_id"] = "host-n".into();
        assert!(error_text(&v).contains("host host-n is agent_mode dvr_no_external"));
    }

    #[test]
    fn one_centralized_snat_port_per_router_and_subnet() {
        let errors = errors_after(|v| {
            let mut dup = snat2_on("host-b");
            dup["network_id"] = "net1".into();
            dup["fixed_ips"] =
                serde_json::json!([{"subnet_id": "subnet1", "ip_address": "10.0.1.6"}]);
            push(v, "ports", dup);
        });
        assert_error(
            &errors,
            "port",
            "snat2",
            "fixed_ips[0].subnet_id",
            "router router1 has two centralized SNAT ports on subnet subnet1: also port snat1",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }
}
