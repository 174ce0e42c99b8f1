//! Networks and their subnets, and the addresses ports and routers hold on them.

use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::check::{Known, Ref, Report, ip_in};
use super::parse::{
    Element, Mac, Reader, conv_bool, conv_id, conv_ip, conv_ra_mode, conv_string, conv_u32,
};
use super::table::{HashMap, Table};
use crate::ndp::RaMode;

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

/// A Neutron IPv4 subnet (`ip_version` 4; the IPv6 ones are [`Subnet6`]s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    /// No host bits set.
    pub cidr: Ipv4Net,
    pub gateway_ip: Option<Ipv4Addr>,
}

/// A Neutron IPv6 subnet (`ip_version` 6). IPv4 and IPv6 subnets share one id space (the
/// state's `subnets` list) and may sit on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet6 {
    pub id: String,
    pub network_id: String,
    /// No host bits set.
    pub cidr: Ipv6Net,
    pub gateway_ip: Option<Ipv6Addr>,
    /// `ipv6_ra_mode`: what the router advertises for the subnet (`None`: no advertisement
    /// from the router).
    pub ra_mode: Option<RaMode>,
    /// `ipv6_address_mode`: how hosts get their addresses.
    pub address_mode: Option<RaMode>,
}

impl Subnet6 {
    /// Neutron's "auto address" subnet (`ipv6_utils.is_auto_address_subnet`): either mode is
    /// `slaac` or `dhcpv6-stateless`, so hosts take the EUI-64 address of their MAC and
    /// Neutron assigns exactly that to every port but a router's.
    pub fn is_auto_address(&self) -> bool {
        let auto = |m: Option<RaMode>| matches!(m, Some(RaMode::Slaac | RaMode::Dhcpv6Stateless));
        auto(self.ra_mode) || auto(self.address_mode)
    }

    /// The EUI-64 address of `mac` in this subnet's /64 (RFC 4291 appendix A).
    pub fn eui64(&self, mac: Mac) -> Ipv6Addr {
        eui64(self.cidr, mac)
    }
}

/// The modified EUI-64 address of `mac` in the first 64 bits of `net`.
pub fn eui64(net: Ipv6Net, mac: Mac) -> Ipv6Addr {
    let mut b = net.network().octets();
    b[8..].copy_from_slice(&dvr_common::ip6::link_local(mac)[8..]);
    Ipv6Addr::from(b)
}

/// One entry of `fixed_ips` (of a port, or of a router's `external_fixed_ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip: Ipv4Addr,
}

/// One IPv6 entry of `fixed_ips` (its subnet is a [`Subnet6`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp6 {
    pub subnet_id: String,
    pub ip: Ipv6Addr,
}

/// A `fixed_ips`-shaped list split by address family, with where each entry sat in the
/// list (errors name `fixed_ips[i]` by the position in the state).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct FixedIps {
    pub(super) v4: Vec<FixedIp>,
    pub(super) v6: Vec<FixedIp6>,
    pub(super) pos: FixedIpPos,
}

/// Positions in the state's list of the IPv4 and the IPv6 entries, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FixedIpPos {
    v4: Vec<usize>,
    v6: Vec<usize>,
}

impl FixedIpPos {
    /// The list position of the `i`th IPv4 entry.
    pub(super) fn v4(&self, i: usize) -> usize {
        self.v4.get(i).copied().unwrap_or(i)
    }
    /// The list position of the `i`th IPv6 entry.
    pub(super) fn v6(&self, i: usize) -> usize {
        self.v6.get(i).copied().unwrap_or(i)
    }
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

/// An element of the state's `subnets` list: IPv4 or IPv6 by its `ip_version`.
#[derive(Debug, Clone)]
pub(super) enum AnySubnet {
    V4(Subnet),
    V6(Subnet6),
}

impl AnySubnet {
    /// The IPv4 and the IPv6 subnets, each in state order.
    pub(super) fn split(all: Table<AnySubnet>) -> (Table<Subnet>, Table<Subnet6>) {
        let (mut v4, mut v6) = (Table::default(), Table::default());
        for s in all.into_items() {
            match s {
                AnySubnet::V4(s) => v4.push(s.id.clone(), s),
                AnySubnet::V6(s) => v6.push(s.id.clone(), s),
            }
        }
        (v4, v6)
    }
}

impl Element for AnySubnet {
    const KIND: &'static str = "subnet";
    const LIST: &'static str = "subnets";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let network_id = r.req("network_id", conv_id);
        let ip_version = r.req("ip_version", conv_u32);
        let cidr_text = r.req("cidr", conv_string);
        let cidr = match (ip_version, cidr_text) {
            (Some(4 | 6), Some(text)) => match text.parse::<IpNet>() {
                Ok(net) if net.trunc() != net => {
                    r.error("cidr", format!("{text} has host bits set"));
                    None
                }
                Ok(net) => Some(net),
                Err(_) => {
                    r.error("cidr", format!("invalid CIDR {text:?}"));
                    None
                }
            },
            (Some(other), _) if other != 4 && other != 6 => {
                r.error("ip_version", format!("must be 4 or 6, got {other}"));
                None
            }
            _ => None,
        };
        let gateway_ip = r.opt("gateway_ip", conv_ip);
        let ra_mode = r.opt("ipv6_ra_mode", conv_ra_mode);
        let address_mode = r.opt("ipv6_address_mode", conv_ra_mode);
        let (id, network_id) = (id?, network_id?);
        match (ip_version?, cidr?) {
            (4, IpNet::V4(cidr)) => {
                for field in ["ipv6_ra_mode", "ipv6_address_mode"] {
                    if r.present(field).is_some() {
                        r.error(field, "only an IPv6 subnet (ip_version 6) has one");
                    }
                }
                let gateway_ip = gateway_of::<Subnet>(r, gateway_ip);
                Some(AnySubnet::V4(Subnet {
                    id,
                    network_id,
                    cidr,
                    gateway_ip,
                }))
            }
            (6, IpNet::V6(cidr)) => {
                let gateway_ip = gateway_of::<Subnet6>(r, gateway_ip);
                Some(AnySubnet::V6(Subnet6 {
                    id,
                    network_id,
                    cidr,
                    gateway_ip,
                    ra_mode,
                    address_mode,
                }))
            }
            (version, cidr) => {
                let family = if cidr.addr().is_ipv6() {
                    "IPv6"
                } else {
                    "IPv4"
                };
                let message =
                    format!("ip_version {version} does not agree with the {family} cidr {cidr}");
                r.error("ip_version", message);
                None
            }
        }
    }

    fn key(&self) -> &str {
        match self {
            AnySubnet::V4(s) => &s.id,
            AnySubnet::V6(s) => &s.id,
        }
    }
}

/// A subnet's `gateway_ip` when it is of `S`'s family; one of the other family is reported.
fn gateway_of<S: FamilySubnet>(r: &mut Reader<'_, '_>, gw: Option<IpAddr>) -> Option<S::Addr> {
    let gw = gw?;
    let own = S::addr_of(gw);
    if own.is_none() {
        let message = format!("{gw} is {}, the subnet is {}", S::OTHER_FAMILY, S::FAMILY);
        r.error("gateway_ip", message);
    }
    own
}

/// The `fixed_ips`-shaped list `field` of the object `r` reads. A missing list is empty
/// unless `required`.
/// Entries of either family: the checks match each against its subnet's.
pub(super) fn read_fixed_ips(r: &mut Reader<'_, '_>, field: &str, required: bool) -> FixedIps {
    let mut out = FixedIps::default();
    for (i, (path, obj)) in r.list(field, required).into_iter().enumerate() {
        let mut f = r.child(&path, obj);
        let subnet_id = f.req("subnet_id", conv_id);
        let ip = f.req("ip_address", conv_ip);
        match (subnet_id, ip) {
            (Some(subnet_id), Some(IpAddr::V4(ip))) => {
                out.v4.push(FixedIp { subnet_id, ip });
                out.pos.v4.push(i);
            }
            (Some(subnet_id), Some(IpAddr::V6(ip))) => {
                out.v6.push(FixedIp6 { subnet_id, ip });
                out.pos.v6.push(i);
            }
            _ => {}
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

/// What the checks do alike for an IPv4 [`Subnet`] and an IPv6 [`Subnet6`].
pub(super) trait FamilySubnet {
    /// The family, as messages name it ("IPv4"), and the other one.
    const FAMILY: &'static str;
    const OTHER_FAMILY: &'static str;
    type Addr: Copy + Ord + fmt::Display;
    type Net: Copy + fmt::Display;
    fn id(&self) -> &str;
    fn network_id(&self) -> &str;
    /// No host bits set.
    fn cidr(&self) -> Self::Net;
    fn contains(&self, ip: Self::Addr) -> bool;
    /// The first and the last address of the block, and its prefix length.
    fn first(&self) -> Self::Addr;
    fn last(&self) -> Self::Addr;
    fn prefix_len(&self) -> u8;
    /// `ip` when it is of this family.
    fn addr_of(ip: IpAddr) -> Option<Self::Addr>;
}

impl FamilySubnet for Subnet {
    const FAMILY: &'static str = "IPv4";
    const OTHER_FAMILY: &'static str = "IPv6";
    type Addr = Ipv4Addr;
    type Net = Ipv4Net;
    fn id(&self) -> &str {
        &self.id
    }
    fn network_id(&self) -> &str {
        &self.network_id
    }
    fn cidr(&self) -> Ipv4Net {
        self.cidr
    }
    fn contains(&self, ip: Ipv4Addr) -> bool {
        ip_in(&self.cidr, ip)
    }
    fn first(&self) -> Ipv4Addr {
        self.cidr.network()
    }
    fn last(&self) -> Ipv4Addr {
        self.cidr.broadcast()
    }
    fn prefix_len(&self) -> u8 {
        self.cidr.prefix_len()
    }
    fn addr_of(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

impl FamilySubnet for Subnet6 {
    const FAMILY: &'static str = "IPv6";
    const OTHER_FAMILY: &'static str = "IPv4";
    type Addr = Ipv6Addr;
    type Net = Ipv6Net;
    fn id(&self) -> &str {
        &self.id
    }
    fn network_id(&self) -> &str {
        &self.network_id
    }
    fn cidr(&self) -> Ipv6Net {
        self.cidr
    }
    fn contains(&self, ip: Ipv6Addr) -> bool {
        self.cidr.contains(&ip)
    }
    fn first(&self) -> Ipv6Addr {
        self.cidr.network()
    }
    fn last(&self) -> Ipv6Addr {
        self.cidr.broadcast()
    }
    fn prefix_len(&self) -> u8 {
        self.cidr.prefix_len()
    }
    fn addr_of(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }
}

/// Where the problems of one `fixed_ips`-shaped entry go: object `kind id`, fields
/// `{prefix}.subnet_id` and `{prefix}.ip_address`.
pub(super) struct FixedIpAt<'a> {
    pub(super) kind: &'static str,
    pub(super) id: &'a str,
    pub(super) prefix: String,
}

impl FixedIpAt<'_> {
    pub(super) fn subnet_field(&self) -> String {
        format!("{}.subnet_id", self.prefix)
    }

    pub(super) fn ip_field(&self) -> String {
        format!("{}.ip_address", self.prefix)
    }
}

/// The subnet of a fixed IP `ip` of `S`'s family: its index and the subnet. Reports a
/// missing subnet, or one of the other family (`other`); `None` then, and for a subnet that
/// did not parse.
pub(super) fn fixed_ip_subnet<'s, S: FamilySubnet, O>(
    out: &mut Report<'_>,
    at: &FixedIpAt<'_>,
    subnet_id: &str,
    ip: S::Addr,
    subnets: Known<'s, S>,
    other: Known<'_, O>,
) -> Option<(usize, &'s S)> {
    match subnets.resolve(subnet_id) {
        Ref::Found(si) => subnets.table.at(si).map(|sub| (si, sub)),
        Ref::Broken => None,
        Ref::Missing if other.table.contains(subnet_id) => {
            let message = format!(
                "{ip} is an {} address, subnet {subnet_id} is {}",
                S::FAMILY,
                S::OTHER_FAMILY
            );
            out.error(at.kind, at.id, &at.ip_field(), message);
            None
        }
        Ref::Missing => {
            let message = format!("subnet {subnet_id} does not exist");
            out.error(at.kind, at.id, &at.subnet_field(), message);
            None
        }
    }
}

/// True when `ip` is inside `sub`; reports it otherwise.
pub(super) fn fixed_ip_inside<S: FamilySubnet>(
    out: &mut Report<'_>,
    at: &FixedIpAt<'_>,
    sub: &S,
    ip: S::Addr,
) -> bool {
    let inside = sub.contains(ip);
    if !inside {
        let message = format!("{ip} is outside subnet {} ({})", sub.id(), sub.cidr());
        out.error(at.kind, at.id, &at.ip_field(), message);
    }
    inside
}

/// What the subnet checks of both families share: a subnet's network exists (then
/// `each` checks the rest of the subnet), and the subnets of one network do not overlap.
/// `by_network`: per network index, its subnet indexes.
fn check_subnets_of<S: FamilySubnet>(
    out: &mut Report<'_>,
    subnets: &[S],
    networks: Known<'_, Network>,
    by_network: &[Vec<usize>],
    mut each: impl FnMut(&mut Report<'_>, &S),
) {
    for sub in subnets {
        if let Ref::Missing = networks.resolve(sub.network_id()) {
            let message = format!("network {} does not exist", sub.network_id());
            out.error("subnet", sub.id(), "network_id", message);
        }
        each(out, sub);
    }
    // Overlapping subnets on one network would make an address ambiguous. CIDR blocks are
    // nested or disjoint, so after sorting by start address (widest first), a block
    // overlaps an earlier one exactly when it starts before the furthest end seen so far.
    for on_network in by_network {
        let mut sorted: Vec<&S> = on_network.iter().filter_map(|&i| subnets.get(i)).collect();
        sorted.sort_by_key(|s| (s.first(), s.prefix_len()));
        let mut widest: Option<&S> = None;
        for sub in sorted {
            match widest {
                Some(w) if sub.first() <= w.last() => {
                    let message = format!(
                        "{} overlaps subnet {} ({}) on the same network",
                        sub.cidr(),
                        w.id(),
                        w.cidr()
                    );
                    out.error("subnet", sub.id(), "cidr", message);
                }
                _ => widest = Some(sub),
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
    check_subnets_of(out, subnets, networks, by_network, |out, sub| {
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
    });
}

/// An IPv6 subnet's network exists, its gateway is inside it, its modes follow Neutron's
/// rules (equal when both are set; `slaac` and `dhcpv6-stateless` need a /64), and the IPv6
/// subnets of one network do not overlap. `by_network`: per network index, its IPv6 subnet
/// indexes.
pub(super) fn check_subnets6(
    out: &mut Report<'_>,
    subnets: &[Subnet6],
    networks: Known<'_, Network>,
    by_network: &[Vec<usize>],
) {
    check_subnets_of(out, subnets, networks, by_network, |out, sub| {
        if let Some(gw) = sub.gateway_ip
            && !sub.cidr.contains(&gw)
        {
            let message = format!("gateway_ip {gw} is outside cidr {}", sub.cidr);
            out.error("subnet", &sub.id, "gateway_ip", message);
        }
        if let (Some(ra), Some(addr)) = (sub.ra_mode, sub.address_mode)
            && ra != addr
        {
            let message = format!(
                "{} differs from ipv6_ra_mode {}: when both are set they must be equal",
                addr.as_str(),
                ra.as_str()
            );
            out.error("subnet", &sub.id, "ipv6_address_mode", message);
        }
        let auto = [
            ("ipv6_ra_mode", sub.ra_mode),
            ("ipv6_address_mode", sub.address_mode),
        ]
        .into_iter()
        .find(|(_, m)| matches!(m, Some(RaMode::Slaac | RaMode::Dhcpv6Stateless)));
        if let Some((field, Some(mode))) = auto
            && sub.cidr.prefix_len() != 64
        {
            let message = format!(
                "{} is a /{}: {field} {} needs a /64 prefix",
                sub.cidr,
                sub.cidr.prefix_len(),
                mode.as_str()
            );
            out.error("subnet", &sub.id, "cidr", message);
        }
    });
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
    use crate::model::{State, StateError, Subnet6, display_lines};
    use crate::ndp::RaMode;
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
    fn dual_stack_subnets_share_the_list_and_the_networks() {
        let s = state_of(&dual_stack_value());
        assert_eq!(s.subnets().len(), 3);
        assert_eq!(s.subnets6().len(), 2);
        let on_net1: Vec<&str> = s
            .subnets_on_network("net1")
            .map(|x| x.id.as_str())
            .collect();
        assert_eq!(on_net1, ["subnet1"]);
        let on_net1: Vec<&str> = s
            .subnets6_on_network("net1")
            .map(|x| x.id.as_str())
            .collect();
        assert_eq!(on_net1, ["subnet6a"]);
        let a = s.subnet6("subnet6a");
        assert_eq!(
            a.map(|a| (a.cidr.to_string(), a.gateway_ip.map(|g| g.to_string()))),
            Some(("fd00:1::/64".into(), Some("fd00:1::1".into())))
        );
        assert_eq!(
            a.map(|a| (a.ra_mode, a.address_mode, a.is_auto_address())),
            Some((Some(RaMode::Slaac), Some(RaMode::Slaac), true))
        );
        let b = s.subnet6("subnet6b");
        assert_eq!(b.map(Subnet6::is_auto_address), Some(false));
        assert!(s.subnet("subnet6a").is_none() && s.subnet6("subnet1").is_none());
        // Several IPv6 subnets on one network, no mode at all.
        let mut v = dual_stack_value();
        push(
            &mut v,
            "subnets",
            serde_json::json!({"id": "subnet6c", "network_id": "net1", "cidr": "fd00:3::/48",
                "ip_version": 6, "gateway_ip": null, "ipv6_ra_mode": null}),
        );
        let s = state_of(&v);
        assert_eq!(s.subnets6_on_network("net1").count(), 2);
        // One id space: an IPv6 subnet may not reuse an IPv4 subnet's id.
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet1", "network_id": "net1", "cidr": "fd00:1::/64",
                    "ip_version": 6}),
            );
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "id",
            "duplicate id (also subnets[0])",
        );
    }

    #[test]
    fn subnet6_fields() {
        let sub6 = |id: &str, extra: Value| {
            let mut s = serde_json::json!({"id": id, "network_id": "net1", "ip_version": 6});
            if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), extra) {
                s.extend(extra);
            }
            s
        };
        let errors = errors_after(|v| {
            for s in [
                sub6("h", serde_json::json!({"cidr": "fd00:1::1/64"})),
                sub6(
                    "g",
                    serde_json::json!({"cidr": "fd00:2::/64", "gateway_ip": "fd00:3::1"}),
                ),
                sub6(
                    "g4",
                    serde_json::json!({"cidr": "fd00:4::/64", "gateway_ip": "10.0.1.1"}),
                ),
                sub6(
                    "m",
                    serde_json::json!({"cidr": "fd00:5::/64", "ipv6_ra_mode": "slaac",
                    "ipv6_address_mode": "dhcpv6-stateful"}),
                ),
                sub6(
                    "p",
                    serde_json::json!({"cidr": "fd00:6::/56",
                    "ipv6_address_mode": "dhcpv6-stateless"}),
                ),
                sub6(
                    "u",
                    serde_json::json!({"cidr": "fd00:7::/64", "ipv6_ra_mode": "radvd"}),
                ),
                sub6("c4", serde_json::json!({"cidr": "10.9.0.0/24"})),
                sub6("o", serde_json::json!({"cidr": "fd00:2::/80"})),
            ] {
                push(v, "subnets", s);
            }
            elem(v, "subnets", "id", "subnet2")["ipv6_ra_mode"] = "slaac".into();
        });
        let expect = [
            ("h", "cidr", "fd00:1::1/64 has host bits set"),
            (
                "g",
                "gateway_ip",
                "gateway_ip fd00:3::1 is outside cidr fd00:2::/64",
            ),
            ("g4", "gateway_ip", "10.0.1.1 is IPv4, the subnet is IPv6"),
            (
                "m",
                "ipv6_address_mode",
                "dhcpv6-stateful differs from ipv6_ra_mode slaac: when both are set they must \
                 be equal",
            ),
            (
                "p",
                "cidr",
                "fd00:6::/56 is a /56: ipv6_address_mode dhcpv6-stateless needs a /64 prefix",
            ),
            (
                "u",
                "ipv6_ra_mode",
                "unknown mode \"radvd\" (expected slaac, dhcpv6-stateless or dhcpv6-stateful)",
            ),
            (
                "c4",
                "ip_version",
                "ip_version 6 does not agree with the IPv4 cidr 10.9.0.0/24",
            ),
            (
                "o",
                "cidr",
                "fd00:2::/80 overlaps subnet g (fd00:2::/64) on the same network",
            ),
            (
                "subnet2",
                "ipv6_ra_mode",
                "only an IPv6 subnet (ip_version 6) has one",
            ),
        ];
        for (id, field, text) in expect {
            assert_error(&errors, "subnet", id, field, text);
        }
        // Nothing else: the ports on the broken subnet2 are not reported again.
        assert_eq!(errors.len(), expect.len(), "{}", display_lines(&errors));
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
