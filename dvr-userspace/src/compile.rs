//! (validated state, host) -> the exact map entries that host needs. Pure: no kernel access;
//! the only view of the host is `ifindex_of`, which says which taps exist.
//!
//! Terms used below, for a host H:
//! - *tenant network*: a non-external VXLAN network; its VNI is its segmentation id.
//! - *VM port*: a `compute:*` port bound to a host, on a tenant network. No other port is an
//!   endpoint (DHCP, router and SNAT ports are served elsewhere or by the datapath itself).
//! - *local VM port*: a VM port bound to H. Its tap is `tap_name(port id)`.
//! - *served network*: a tenant network with a local VM port.
//! - *router of H*: a router with a distributed interface on a served network, or a router
//!   H does SNAT for.
//! - *routed network*: a tenant network with an interface of a router of H.
//! - H *has external* when it names an `external_interface` and is `dvr` or `dvr_snat`.
//!   Its *external networks* are those of its `network:floatingip_agent_gateway` ports
//!   (`binding:host_id` or `device_id` H), or every `router:external` network if it has none.
//! - A router's *SNAT host* is the host its `network:router_centralized_snat` ports are bound
//!   to (validation: one `dvr_snat` host with an external interface; unbound ones are ignored).
//!   H *does SNAT for* a router with an `external_gateway_info` whose SNAT host is H, when H
//!   has external.
//!
//! Centralized SNAT, for H:
//! - Steering (`snat_steer`): every distributed interface on a served network of a router
//!   with an `external_gateway_info` and a csnat port on the interface's subnet points at the
//!   SNAT host (tunnel ip, 0 when it is H) and that csnat port's MAC. No csnat port, no entry.
//! - Routers H does SNAT for: their csnat ports (`snat_routers`) and external addresses
//!   (`snat_ips`) map to the router's `external_fixed_ips[0]` and the gateway of its subnet,
//!   which `ext_neigh` learns. `SNAT_ENABLED` follows `enable_snat` in both maps and steering.
//!
//! Floating IPs, for H (a FIP is *associated* when it has a port; its fixed IP is
//! `fixed_ip_address` or the port's first; its router is `router_id` or the router with a
//! distributed interface on the fixed IP's subnet, and without one it counts as unassociated):
//! - LOCAL: the port is a VM port of H, H has external and the tap exists. DNAT/SNAT here.
//! - CENTRAL: the port is a VM port of a `dvr_no_external` host and H does SNAT for the
//!   router. ARP and NAT here, the VM reached over the tunnel (`tunnel_ip_host`).
//! - REMOTE: the port is a VM port of another host that has external, and the router is a
//!   router of H: traffic from H's VMs to the FIP is steered inside the router (hairpin).
//!   Whether H has external or not. Central FIPs are never REMOTE: traffic to them from a
//!   VM of the router takes the external path through the SNAT host.
//! - CENTRAL | VIP: the port is a VIP port (below) and H does SNAT for the router. ARP and
//!   NAT here; the VM that holds the VIP is the one the datapath learned (`VIP_LOC`).
//! - Otherwise, only if H has external and the FIP is on one of its external networks:
//!   unassociated ones are dropped (`FIP_UNASSOCIATED`), others are known but not served.
//!   VIP FIPs are never REMOTE (like other central ones).
//!
//! VIPs (addresses keepalived moves between VMs):
//! - A *VIP* is a fixed IP of an unbound port that no service owns ([`Port::may_be_vip`]), on
//!   a tenant network, on a subnet with a distributed router interface (the *VIP's router*),
//!   that at least one VM port of the same network allows in its `allowed_address_pairs`
//!   (exact address or a prefix holding it). Those VM ports are its *candidates*, each with
//!   the MAC of the pair (the port's own MAC when the pair names none). A FIP of another
//!   unbound port is not a VIP FIP and stays known but not served.
//! - `vip_cand`, on the VIP's router's SNAT host and on hosts serving the VIP's network: one
//!   entry per candidate (VNI, VIP, MAC) -> its tap (local; skipped while the tap is absent)
//!   or its host's tunnel ip. Two candidates with one pair MAC (a shared VRRP MAC) share a
//!   key: the first in state order wins.
//! - Flooding: the SNAT host serving a VIP FIP must see the broadcast ARP of the VIP's holder,
//!   so it is a remote flood target of the VIP's network on every host serving that network.
//!
//! Runs in time linear in the state (plus sorting): every lookup goes through an index built
//! once, so states with 100,000 ports compile quickly.

use std::collections::btree_map::Entry as BEntry;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use dvr_common::config::HostConfig;
use dvr_common::l2::{FLOOD_MAX_LOCAL, FLOOD_MAX_REMOTE, FdbEntry, FdbKey, FloodSet, MacKey};
use dvr_common::nat::{
    FIP_CENTRAL, FIP_HA, FIP_LOCAL, FIP_REMOTE, FIP_UNASSOCIATED, FIP_VIP, FipEntry, FipSrc,
    VipCandidate, VipKey,
};
use dvr_common::port::{
    LocalPort, PORT_FLAG_SECURITY, SEC_IP_ALLOWED, SEC_KEY_PREFIX_BITS, SEC_MAC_ONLY, SecKey,
};
use dvr_common::route::{Endpoint, IpKey, ROUTE_KEY_PREFIX_BITS, Route, RouteKey, RouterIface};
use dvr_common::snat::{SNAT_ENABLED, SNAT_HA, SnatRouter, SnatSteer};

use crate::model::{
    AgentMode, ExternalGateway, FloatingIp, Host, Mac, Network, Port, Router, State, Subnet,
};

/// Why a host's entries could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("host {host}: not in the state's hosts")]
    UnknownHost { host: String },
    #[error(
        "network {network} (vni {vni}): {count} {what} flood targets on host {host}, the \
         datapath holds at most {max}"
    )]
    FloodOverflow {
        network: String,
        vni: u32,
        host: String,
        /// `local` (taps) or `remote` (hosts).
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("routers {first} and {second}: both hash to router id {hash:#010x} (fnv1a32)")]
    RouterIdCollision {
        first: String,
        second: String,
        hash: u32,
    },
    #[error("ports {first} and {second}: both have tap name {tap}")]
    TapNameCollision {
        first: String,
        second: String,
        tap: String,
    },
    /// A floating IP served here has no next hop on its external network.
    #[error(
        "floatingip {floatingip}: field `floating_ip_address`: no subnet of network {network} \
         with a gateway contains {address}"
    )]
    FipNoGateway {
        floatingip: String,
        network: String,
        address: Ipv4Addr,
    },
    /// The floating IP's `router_id` names a router without an interface on the subnet of
    /// the fixed IP, so there is no gateway MAC to translate with.
    #[error(
        "floatingip {floatingip}: field `router_id`: router {router} has no distributed \
         interface on subnet {subnet} of fixed IP {fixed}"
    )]
    FipRouterNotOnSubnet {
        floatingip: String,
        router: String,
        subnet: String,
        fixed: Ipv4Addr,
    },
    /// This host does SNAT for a router whose gateway has no address to translate to.
    #[error(
        "router {router}: field `external_gateway_info.external_fixed_ips`: empty, but host \
         {host} does SNAT for the router and needs its external address"
    )]
    SnatNoExternalIp { router: String, host: String },
    /// This host does SNAT for a router whose external address has no next hop.
    #[error(
        "router {router}: field `external_gateway_info.external_fixed_ips[0].subnet_id`: subnet \
         {subnet} of external address {address} has no gateway_ip, needed as the SNAT next hop"
    )]
    SnatNoGateway {
        router: String,
        subnet: String,
        address: Ipv4Addr,
    },
}

/// Everything one host's datapath needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// `tunnel_ifindex` is 0: the agent fills it in.
    pub config: HostConfig,
    /// Tap name -> port id for every local VM port, whether its tap exists yet or not: the
    /// taps the agent attaches to.
    pub taps: BTreeMap<String, String>,
    pub entries: MapEntries,
    /// The external side, when the host has external.
    pub external: Option<External>,
    /// Floating IP -> fixed IP (or VIP) of every FIP served here (`FIP_LOCAL` and
    /// `FIP_CENTRAL`).
    pub served_fips: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Router id hash -> router id of every router this host does SNAT for (for logs).
    pub snat_router_names: BTreeMap<u32, String>,
    /// The HA routers this host is a candidate for, in state order (docs/HA.md).
    pub ha: Vec<HaRole>,
}

/// An HA router as one of its candidate hosts sees it: what the election and the conntrack
/// sync need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaRole {
    pub router_id: String,
    /// `fnv1a32(router_id)`: the key of the datapath's fence map.
    pub router_hash: u32,
    /// Candidates, most preferred first.
    pub candidates: Vec<HaCandidate>,
    /// The router's external address: port-address translated flows carry it.
    pub ext_ip: Option<Ipv4Addr>,
    /// Floating -> fixed IP of the FIPs served wherever the router is elected
    /// (`dvr_no_external` ports and VIPs).
    pub central_fips: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaCandidate {
    pub host: String,
    pub priority: u32,
    pub tunnel_ip: Ipv4Addr,
}

/// A host's external side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// `hosts[].external_interface`.
    pub iface: String,
    /// This host's address on the external network (first fixed IP of its
    /// `network:floatingip_agent_gateway` port), if it has one.
    pub fg_ip: Option<Ipv4Addr>,
    /// External gateways whose MAC the datapath learns (the keys of `ext_neigh`).
    pub gateways: BTreeSet<Ipv4Addr>,
}

/// Desired contents of every agent-written map. LPM keys carry their prefix length.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MapEntries {
    /// Tap ifindex -> port.
    pub local_ports: BTreeMap<u32, LocalPort>,
    /// (LPM prefix length, key) -> `SEC_*` flags.
    pub port_security: BTreeMap<(u32, SecKey), u32>,
    pub fdb: BTreeMap<FdbKey, FdbEntry>,
    /// VNI -> flood set.
    pub flood: BTreeMap<u32, FloodSet>,
    /// DVR MAC -> tunnel ip (host order).
    pub dvr_macs: BTreeMap<MacKey, u32>,
    /// Tunnel ip (host order) -> 1.
    pub tunnel_peers: BTreeMap<u32, u32>,
    pub gw_by_mac: BTreeMap<FdbKey, RouterIface>,
    pub gw_by_ip: BTreeMap<IpKey, RouterIface>,
    /// (LPM prefix length, key) -> route.
    pub routes: BTreeMap<(u32, RouteKey), Route>,
    pub endpoints: BTreeMap<IpKey, Endpoint>,
    /// Floating IP (network order) -> entry.
    pub fips: BTreeMap<u32, FipEntry>,
    /// (VNI, fixed IP) of a local port -> its floating IP.
    pub fip_src: BTreeMap<IpKey, FipSrc>,
    /// External gateway IPs (network order); the datapath learns their MACs.
    pub ext_neigh: BTreeSet<u32>,
    /// (LPM prefix length, network address in network order) -> router id: tenant subnets
    /// of H's routers, unreachable directly from the external network.
    pub ext_deny: BTreeMap<(u32, u32), u32>,
    /// (VNI, router interface MAC) on a served network -> where the router's SNAT is.
    pub snat_steer: BTreeMap<FdbKey, SnatSteer>,
    /// (VNI, csnat port MAC) of the routers this host does SNAT for -> the router.
    pub snat_routers: BTreeMap<FdbKey, SnatRouter>,
    /// External address (network order) of the routers this host does SNAT for -> the router.
    pub snat_ips: BTreeMap<u32, SnatRouter>,
    /// (VNI, VIP, candidate MAC) -> where that candidate port is: the ports allowed to claim
    /// a VIP, on the VIP's router's SNAT host and on hosts serving the VIP's network.
    pub vip_cand: BTreeMap<VipKey, VipCandidate>,
}

/// The tap Nova/os-vif creates for a port: `tap` + the first 11 characters of the port id
/// (14 characters, within IFNAMSIZ).
pub fn tap_name(port_id: &str) -> String {
    let mut name = String::with_capacity(14);
    name.push_str("tap");
    name.extend(port_id.chars().take(11));
    name
}

/// 32-bit FNV-1a of the UTF-8 bytes: the stable short id of routers and ports.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// An IPv4 address in network byte order, as `*_be` fields hold it.
fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn fdb_key(vni: u32, mac: Mac) -> FdbKey {
    FdbKey {
        vni,
        mac,
        _pad: [0; 2],
    }
}

fn sec_key(ifindex: u32, mac: Mac, ip: Ipv4Addr) -> SecKey {
    SecKey {
        ifindex_be: ifindex.to_be(),
        mac,
        _pad: [0; 2],
        ip_be: be(ip),
    }
}

/// A DVR router interface on a tenant network.
struct Iface<'s> {
    port: &'s Port,
    router_id: &'s str,
    subnet: &'s Subnet,
    network_id: &'s str,
    vni: u32,
    ip: Ipv4Addr,
}

impl Iface<'_> {
    fn router_iface(&self) -> RouterIface {
        RouterIface {
            router_id: fnv1a32(self.router_id),
            ip_be: be(self.ip),
            mac: self.port.mac,
            _pad: [0; 2],
        }
    }
}

/// Where a VM port is, seen from the compiling host: `(ifindex, tunnel ip host order)`.
/// `None` for a local port whose tap does not exist (it gets no entries yet).
type Location = Option<(u32, u32)>;

struct Compiler<'s> {
    host: &'s str,
    /// Tunnel ip (host order) per host name.
    tunnel_of: HashMap<&'s str, u32>,
    /// Existing local taps: port id -> ifindex.
    local_ifindex: HashMap<&'s str, u32>,
    /// Subnet id -> (router id, interface MAC) of the distributed interface on it.
    iface_of_subnet: HashMap<&'s str, (&'s str, Mac)>,
}

impl<'s> Compiler<'s> {
    fn location(&self, port: &'s Port) -> Location {
        let host = port.host_id.as_deref()?;
        if host == self.host {
            self.local_ifindex
                .get(port.id.as_str())
                .map(|&ifindex| (ifindex, 0))
        } else {
            self.tunnel_of.get(host).map(|&tunnel| (0, tunnel))
        }
    }
}

/// The VNI of a network that is a tenant network.
fn vni_of(state: &State, network_id: &str) -> Option<u32> {
    state.network(network_id).and_then(Network::tenant_vni)
}

/// Compile the entries of `host`. `ifindex_of(tap name)` is the ifindex of a tap that exists.
pub fn compile(
    state: &State,
    host: &str,
    ifindex_of: &dyn Fn(&str) -> Option<u32>,
) -> Result<Compiled, CompileError> {
    let me = state
        .host(host)
        .ok_or_else(|| CompileError::UnknownHost { host: host.into() })?;
    let host: &str = &me.name;
    let mut out = MapEntries::default();

    let tunnel_of: HashMap<&str, u32> = state
        .hosts()
        .iter()
        .map(|h| (h.name.as_str(), u32::from(h.tunnel_ip)))
        .collect();

    // Local VM ports, their taps, and the networks they make served.
    let mut taps: BTreeMap<String, String> = BTreeMap::new();
    let mut local_ifindex: HashMap<&str, u32> = HashMap::new();
    let mut served: HashSet<&str> = HashSet::new();
    let mut local_ports: Vec<(&Port, u32, u32)> = Vec::new();
    for port in state.ports() {
        if !port.is_vm() || port.host_id.as_deref() != Some(host) {
            continue;
        }
        // A VM on a non-tenant (external) network is not this datapath's: no tap attach.
        let Some(vni) = vni_of(state, &port.network_id) else {
            continue;
        };
        let tap = tap_name(&port.id);
        let ifindex = ifindex_of(&tap);
        match taps.entry(tap) {
            BEntry::Occupied(o) => {
                return Err(CompileError::TapNameCollision {
                    first: o.get().clone(),
                    second: port.id.clone(),
                    tap: o.key().clone(),
                });
            }
            BEntry::Vacant(v) => {
                v.insert(port.id.clone());
            }
        }
        served.insert(&port.network_id);
        if let Some(ifindex) = ifindex {
            local_ifindex.insert(&port.id, ifindex);
            local_ports.push((port, ifindex, vni));
        }
    }
    // DVR router interfaces on tenant networks.
    let ifaces: Vec<Iface> = state
        .ports()
        .iter()
        .filter(|p| p.is_distributed_interface())
        .filter_map(|port| {
            let [fixed] = port.fixed_ips.as_slice() else {
                return None;
            };
            Some(Iface {
                port,
                router_id: &port.device_id,
                subnet: state.subnet(&fixed.subnet_id)?,
                network_id: &port.network_id,
                vni: vni_of(state, &port.network_id)?,
                ip: fixed.ip,
            })
        })
        .collect();
    let gw_mac_of_subnet: HashMap<&str, Mac> = ifaces
        .iter()
        .map(|i| (i.subnet.id.as_str(), i.port.mac))
        .collect();
    let c = Compiler {
        host,
        tunnel_of,
        local_ifindex,
        iface_of_subnet: ifaces
            .iter()
            .map(|i| (i.subnet.id.as_str(), (i.router_id, i.port.mac)))
            .collect(),
    };
    let csnat = Csnat::of(state, host);
    let vips = Vips::of(state, &c.iface_of_subnet);
    // Routers this host does SNAT for, in state order.
    let snat_here: Vec<(&Router, &ExternalGateway)> = if me.has_external() {
        state
            .routers()
            .iter()
            .filter(|r| csnat.serves(&r.id, host))
            .filter_map(|r| Some((r, r.external_gateway.as_ref()?)))
            .collect()
    } else {
        Vec::new()
    };
    let mut my_routers: HashSet<&str> = ifaces
        .iter()
        .filter(|i| served.contains(i.network_id))
        .map(|i| i.router_id)
        .collect();
    my_routers.extend(snat_here.iter().map(|(r, _)| r.id.as_str()));
    let routed: HashSet<&str> = ifaces
        .iter()
        .filter(|i| my_routers.contains(i.router_id))
        .map(|i| i.network_id)
        .collect();
    check_router_ids(&my_routers)?;

    // VM ports of the networks this host needs to know about, by network.
    let mut vm_ports: HashMap<&str, Vec<&Port>> = HashMap::new();
    for port in state.ports() {
        let net = port.network_id.as_str();
        if port.is_vm() && (served.contains(net) || routed.contains(net)) {
            vm_ports.entry(net).or_default().push(port);
        }
    }
    // Served and routed networks in state order, with their VNIs.
    let networks: Vec<(&Network, u32)> = state
        .networks()
        .iter()
        .filter_map(|n| Some((n, n.tenant_vni()?)))
        .filter(|(n, _)| served.contains(n.id.as_str()) || routed.contains(n.id.as_str()))
        .collect();

    // Local ports and port security.
    for &(port, ifindex, vni) in &local_ports {
        let flags = if port.port_security_enabled {
            PORT_FLAG_SECURITY
        } else {
            0
        };
        out.local_ports.insert(
            ifindex,
            LocalPort {
                vni,
                flags,
                mac: port.mac,
                _pad: [0; 2],
                port_id: fnv1a32(&port.id),
            },
        );
        if port.port_security_enabled {
            add_port_security(&mut out.port_security, port, ifindex);
        }
    }

    let vip_flood = vip_flood_targets(state, &c, &csnat, &vips);
    for &(net, vni) in &networks {
        let ports = vm_ports.get(net.id.as_str()).map_or(&[][..], Vec::as_slice);
        if served.contains(net.id.as_str()) {
            add_fdb(&mut out.fdb, &c, ports, vni, &gw_mac_of_subnet);
            let extra = vip_flood
                .get(net.id.as_str())
                .map_or(&[][..], Vec::as_slice);
            out.flood
                .insert(vni, flood_set(&c, net, vni, ports, extra)?);
        }
        if routed.contains(net.id.as_str()) {
            for &port in ports {
                let Some((ifindex, tunnel_ip_host)) = c.location(port) else {
                    continue;
                };
                for fixed in &port.fixed_ips {
                    out.endpoints.insert(
                        IpKey {
                            vni,
                            ip_be: be(fixed.ip),
                        },
                        Endpoint {
                            mac: port.mac,
                            _pad: [0; 2],
                            ifindex,
                            tunnel_ip_host,
                        },
                    );
                }
            }
        }
    }

    for h in state.hosts() {
        let tunnel = u32::from(h.tunnel_ip);
        out.dvr_macs.insert(
            MacKey {
                mac: h.dvr_mac,
                _pad: [0; 2],
            },
            tunnel,
        );
        if h.name != host {
            out.tunnel_peers.insert(tunnel, 1);
        }
    }

    for iface in &ifaces {
        if served.contains(iface.network_id) {
            let value = iface.router_iface();
            out.gw_by_mac
                .insert(fdb_key(iface.vni, iface.port.mac), value);
            out.gw_by_ip.insert(
                IpKey {
                    vni: iface.vni,
                    ip_be: be(iface.ip),
                },
                value,
            );
        }
        if my_routers.contains(iface.router_id) {
            let cidr = iface.subnet.cidr;
            let key = RouteKey {
                router_id_be: fnv1a32(iface.router_id).to_be(),
                ip_be: be(cidr.network()),
            };
            let route = Route {
                vni: iface.vni,
                gw_ip_be: be(iface.ip),
                gw_mac: iface.port.mac,
                _pad: [0; 2],
            };
            out.routes.insert(
                (ROUTE_KEY_PREFIX_BITS + u32::from(cidr.prefix_len()), key),
                route,
            );
        }
    }

    add_snat_steer(&mut out.snat_steer, state, &c, &csnat, &ifaces, &served);
    add_vip_candidates(&mut out.vip_cand, &c, &csnat, &vips, &served);
    let snat_ids: HashSet<&str> = snat_here.iter().map(|(r, _)| r.id.as_str()).collect();
    let ext = ExtSide::of(state, me);
    let (served_fips, mut gateways) = add_floating_ips(
        &mut out,
        state,
        &c,
        ext.as_ref(),
        &vips,
        &my_routers,
        &snat_ids,
    )?;
    let mut snat_router_names = BTreeMap::new();
    for &(router, gw) in &snat_here {
        let gateway = add_snat_router(&mut out, state, &c, &csnat, router, gw)?;
        gateways.insert(gateway);
        snat_router_names.insert(fnv1a32(&router.id), router.id.clone());
    }
    let external = ext.map(|ext| {
        add_ext_deny(&mut out.ext_deny, state, &ifaces, &my_routers);
        gateways.extend(ext.fg_gateway);
        out.ext_neigh = gateways.iter().map(|&gw| be(gw)).collect();
        External {
            iface: ext.iface.into(),
            fg_ip: ext.fg_ip,
            gateways,
        }
    });

    let config = HostConfig {
        tunnel_ifindex: 0,
        tunnel_ip_host: u32::from(me.tunnel_ip),
        dvr_mac: me.dvr_mac,
        ready: 1,
        _pad: 0,
        ext_ifindex: 0,
        fg_ip_be: external.as_ref().and_then(|e| e.fg_ip).map_or(0, be),
        ext_mac: [0; 6],
        _pad2: [0; 2],
        snat_port_min: 0,
        snat_port_max: 0,
    };
    let ha = ha_roles(state, host, &c, &vips);
    Ok(Compiled {
        config,
        taps,
        entries: out,
        external,
        served_fips,
        snat_router_names,
        ha,
    })
}

/// The routers' bound centralized SNAT ports.
struct Csnat<'s> {
    /// (router id, subnet id) -> the router's csnat port on that subnet.
    on_subnet: HashMap<(&'s str, &'s str), &'s Port>,
    /// Router id -> its SNAT host (validation: all its bound csnat ports share one): for an
    /// HA router, the elected host (docs/HA.md), which compute hosts steer to.
    host_of: HashMap<&'s str, &'s str>,
    /// Router id -> its csnat ports, in state order.
    ports_of: HashMap<&'s str, Vec<&'s Port>>,
    /// HA routers steered to this host that it does not serve (yet, or any more): no role.
    inactive: HashSet<&'s str>,
}

impl<'s> Csnat<'s> {
    fn of(state: &'s State, me: &str) -> Self {
        let mut csnat = Csnat {
            on_subnet: HashMap::new(),
            host_of: HashMap::new(),
            ports_of: HashMap::new(),
            inactive: HashSet::new(),
        };
        for port in state.ports().iter().filter(|p| p.is_centralized_snat()) {
            let router = port.device_id.as_str();
            let ha = state.router(router).filter(|r| r.is_ha_managed());
            // Unbound: not scheduled yet, so no SNAT host serves this subnet (an HA
            // router's ports are served where it is elected, bound or not).
            let host = match ha {
                Some(r) => state.ha_target(r),
                None => port.host_id.as_deref(),
            };
            let (Some(host), [fixed]) = (host, port.fixed_ips.as_slice()) else {
                continue;
            };
            csnat
                .on_subnet
                .entry((router, fixed.subnet_id.as_str()))
                .or_insert(port);
            csnat.host_of.entry(router).or_insert(host);
            csnat.ports_of.entry(router).or_default().push(port);
            if let Some(r) = ha
                && host == me
                && !state.ha_serving(r, me)
            {
                csnat.inactive.insert(router);
            }
        }
        csnat
    }

    /// True when this host (`me`) does the centralized work of `router`.
    fn serves(&self, router: &str, me: &str) -> bool {
        self.host_of.get(router) == Some(&me) && !self.inactive.contains(router)
    }
}

fn snat_flags(gw: &ExternalGateway) -> u32 {
    if gw.enable_snat { SNAT_ENABLED } else { 0 }
}

/// Steering of non-FIP external traffic: each interface on a served network of a router with
/// a gateway, whose subnet has a csnat port, points at the router's SNAT host.
fn add_snat_steer(
    steer: &mut BTreeMap<FdbKey, SnatSteer>,
    state: &State,
    c: &Compiler<'_>,
    csnat: &Csnat<'_>,
    ifaces: &[Iface<'_>],
    served: &HashSet<&str>,
) {
    for iface in ifaces.iter().filter(|i| served.contains(i.network_id)) {
        let Some(gw) = state
            .router(iface.router_id)
            .and_then(|r| r.external_gateway.as_ref())
        else {
            continue;
        };
        let Some(port) = csnat
            .on_subnet
            .get(&(iface.router_id, iface.subnet.id.as_str()))
        else {
            continue;
        };
        let Some(&snat_host) = csnat.host_of.get(iface.router_id) else {
            continue;
        };
        let tunnel_ip_host = if snat_host == c.host {
            0
        } else {
            match c.tunnel_of.get(snat_host) {
                Some(&tunnel) => tunnel,
                None => continue,
            }
        };
        steer.insert(
            fdb_key(iface.vni, iface.port.mac),
            SnatSteer {
                tunnel_ip_host,
                router_id: fnv1a32(iface.router_id),
                csnat_mac: port.mac,
                _pad: [0; 2],
                flags: snat_flags(gw),
            },
        );
    }
}

/// `snat_routers` and `snat_ips` of one router this host does SNAT for. Returns the next hop
/// on the external network, whose MAC the datapath learns.
fn add_snat_router(
    out: &mut MapEntries,
    state: &State,
    c: &Compiler<'_>,
    csnat: &Csnat<'_>,
    router: &Router,
    gw: &ExternalGateway,
) -> Result<Ipv4Addr, CompileError> {
    let ext = gw
        .external_fixed_ips
        .first()
        .ok_or_else(|| CompileError::SnatNoExternalIp {
            router: router.id.clone(),
            host: c.host.into(),
        })?;
    let next_hop = state
        .subnet(&ext.subnet_id)
        .and_then(|s| s.gateway_ip)
        .ok_or_else(|| CompileError::SnatNoGateway {
            router: router.id.clone(),
            subnet: ext.subnet_id.clone(),
            address: ext.ip,
        })?;
    let ha = if fenced(state, &router.id) {
        SNAT_HA
    } else {
        0
    };
    let value = SnatRouter {
        router_id: fnv1a32(&router.id),
        ext_ip_be: be(ext.ip),
        ext_gw_ip_be: be(next_hop),
        flags: snat_flags(gw) | ha,
    };
    for port in csnat.ports_of.get(router.id.as_str()).into_iter().flatten() {
        if let Some(vni) = vni_of(state, &port.network_id) {
            out.snat_routers.insert(fdb_key(vni, port.mac), value);
        }
    }
    out.snat_ips.insert(value.ext_ip_be, value);
    Ok(next_hop)
}

/// The HA routers `host` is a candidate for.
fn ha_roles(state: &State, host: &str, c: &Compiler<'_>, vips: &Vips<'_>) -> Vec<HaRole> {
    let mine: Vec<&Router> = state
        .routers()
        .iter()
        .filter(|r| r.is_ha_managed() && r.ha_hosts.iter().any(|h| h.host == host))
        .collect();
    if mine.is_empty() {
        return Vec::new();
    }
    let mut central: HashMap<&str, BTreeMap<Ipv4Addr, Ipv4Addr>> = HashMap::new();
    for fip in state.floatingips() {
        let Some(t) = FipTarget::of(state, fip, &c.iface_of_subnet) else {
            continue;
        };
        let bound_no_external = t
            .port
            .host_id
            .as_deref()
            .filter(|_| t.port.is_vm())
            .and_then(|h| state.host(h))
            .is_some_and(|h| h.agent_mode == AgentMode::DvrNoExternal);
        if bound_no_external || vips.get(t.port, t.fixed).is_some() {
            central
                .entry(t.router_id)
                .or_default()
                .insert(fip.floating_ip_address, t.fixed);
        }
    }
    mine.into_iter()
        .map(|r| HaRole {
            router_id: r.id.clone(),
            router_hash: fnv1a32(&r.id),
            candidates: r
                .ha_candidates()
                .into_iter()
                .filter_map(|h| {
                    Some(HaCandidate {
                        host: h.host.clone(),
                        priority: h.priority,
                        tunnel_ip: state.host(&h.host)?.tunnel_ip,
                    })
                })
                .collect(),
            ext_ip: r
                .external_gateway
                .as_ref()
                .and_then(|g| g.external_fixed_ips.first())
                .map(|f| f.ip),
            central_fips: central.remove(r.id.as_str()).unwrap_or_default(),
        })
        .collect()
}

/// True when the datapath must check the HA fence for `router_id`'s centralized work: an
/// HA router whose role is elected (etcd mode).
fn fenced(state: &State, router_id: &str) -> bool {
    state.ha_runtime().is_some() && state.router(router_id).is_some_and(Router::is_ha_managed)
}

/// A VIP (see the module doc).
struct Vip<'s> {
    ip: Ipv4Addr,
    network_id: &'s str,
    vni: u32,
    /// The router with the distributed interface on the VIP's subnet.
    router_id: &'s str,
    /// (candidate VM port, MAC it holds the VIP with), in state order, each once.
    candidates: Vec<(&'s Port, Mac)>,
}

/// Every VIP of the state.
struct Vips<'s> {
    list: Vec<Vip<'s>>,
    /// (unbound port id, address) -> index in `list`.
    by_port_ip: HashMap<(&'s str, Ipv4Addr), usize>,
}

impl<'s> Vips<'s> {
    /// Linear in ports and address pairs, plus (prefix pairs x VIP addresses) per network.
    fn of(state: &'s State, iface_of_subnet: &HashMap<&str, (&'s str, Mac)>) -> Self {
        let mut list: Vec<Vip<'s>> = Vec::new();
        // Addresses of unbound ports that may be VIPs, by network and by (network, address):
        // fixed IPs are unique per subnet and subnets of a network do not overlap.
        let mut on_network: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_net_ip: HashMap<(&str, Ipv4Addr), usize> = HashMap::new();
        let mut port_ip: Vec<(&'s str, Ipv4Addr)> = Vec::new();
        for port in state.ports().iter().filter(|p| p.may_be_vip()) {
            let Some(vni) = vni_of(state, &port.network_id) else {
                continue;
            };
            for fixed in &port.fixed_ips {
                let Some(&(router_id, _)) = iface_of_subnet.get(fixed.subnet_id.as_str()) else {
                    continue;
                };
                let i = list.len();
                list.push(Vip {
                    ip: fixed.ip,
                    network_id: &port.network_id,
                    vni,
                    router_id,
                    candidates: Vec::new(),
                });
                port_ip.push((&port.id, fixed.ip));
                on_network.entry(&port.network_id).or_default().push(i);
                by_net_ip.insert((&port.network_id, fixed.ip), i);
            }
        }
        for port in state.ports().iter().filter(|p| p.is_vm()) {
            let net = port.network_id.as_str();
            let Some(indexes) = on_network.get(net) else {
                continue;
            };
            for pair in &port.allowed_address_pairs {
                // An exact address is one lookup; a prefix is checked against every VIP.
                let matching: &[usize] = if pair.net.prefix_len() == 32 {
                    by_net_ip
                        .get(&(net, pair.net.addr()))
                        .map_or(&[], std::slice::from_ref)
                } else {
                    indexes
                };
                for &i in matching {
                    let Some(vip) = list.get_mut(i) else {
                        continue;
                    };
                    if pair.allows(vip.ip)
                        && !vip
                            .candidates
                            .iter()
                            .any(|&(p, mac)| p.id == port.id && mac == pair.mac)
                    {
                        vip.candidates.push((port, pair.mac));
                    }
                }
            }
        }
        // Only addresses some VM may hold are VIPs.
        let mut vips = Vips {
            list: Vec::new(),
            by_port_ip: HashMap::new(),
        };
        for (vip, key) in list.into_iter().zip(port_ip) {
            if !vip.candidates.is_empty() {
                vips.by_port_ip.insert(key, vips.list.len());
                vips.list.push(vip);
            }
        }
        vips
    }

    /// The VIP at `ip` of `port`, if that is one.
    fn get(&self, port: &Port, ip: Ipv4Addr) -> Option<&Vip<'s>> {
        self.by_port_ip
            .get(&(port.id.as_str(), ip))
            .and_then(|&i| self.list.get(i))
    }
}

/// The host that serves a router's central FIPs: its SNAT host, when the router has a
/// gateway and the host has external (as `snat_here` on that host).
fn central_host<'s>(state: &'s State, csnat: &Csnat<'s>, router_id: &str) -> Option<&'s Host> {
    state.router(router_id)?.external_gateway.as_ref()?;
    let host = state.host(csnat.host_of.get(router_id)?)?;
    host.has_external().then_some(host)
}

/// Network id -> tunnel ips (host order) of the other hosts serving a VIP FIP of a VIP on
/// that network: they learn the VIP's location from its holder's broadcast ARP.
fn vip_flood_targets<'s>(
    state: &'s State,
    c: &Compiler<'_>,
    csnat: &Csnat<'s>,
    vips: &Vips<'s>,
) -> HashMap<&'s str, Vec<u32>> {
    let mut targets: HashMap<&str, Vec<u32>> = HashMap::new();
    for fip in state.floatingips() {
        let Some(t) = FipTarget::of(state, fip, &c.iface_of_subnet) else {
            continue;
        };
        let Some(vip) = vips.get(t.port, t.fixed) else {
            continue;
        };
        let Some(host) = central_host(state, csnat, t.router_id) else {
            continue;
        };
        if host.name != c.host {
            targets
                .entry(vip.network_id)
                .or_default()
                .push(u32::from(host.tunnel_ip));
        }
    }
    targets
}

/// `vip_cand`: the candidates of every VIP whose router this host is the SNAT host of, or
/// whose network it serves.
fn add_vip_candidates(
    cand: &mut BTreeMap<VipKey, VipCandidate>,
    c: &Compiler<'_>,
    csnat: &Csnat<'_>,
    vips: &Vips<'_>,
    served: &HashSet<&str>,
) {
    for vip in &vips.list {
        let snat_host = csnat.serves(vip.router_id, c.host);
        if !snat_host && !served.contains(vip.network_id) {
            continue;
        }
        for &(port, mac) in &vip.candidates {
            let Some((ifindex, tunnel_ip_host)) = c.location(port) else {
                continue;
            };
            let key = VipKey {
                vni: vip.vni,
                ip_be: be(vip.ip),
                mac,
                _pad: [0; 2],
            };
            cand.entry(key).or_insert(VipCandidate {
                ifindex,
                tunnel_ip_host,
            });
        }
    }
}

/// The external side of a host that has external.
struct ExtSide<'s> {
    iface: &'s str,
    /// Ids of the host's external networks.
    networks: HashSet<&'s str>,
    /// First fixed IP of the host's first floating IP agent gateway port that has one.
    fg_ip: Option<Ipv4Addr>,
    /// Gateway of that fixed IP's subnet.
    fg_gateway: Option<Ipv4Addr>,
}

impl<'s> ExtSide<'s> {
    fn of(state: &'s State, me: &'s Host) -> Option<Self> {
        if !me.has_external() {
            return None;
        }
        let iface = me.external_interface.as_deref()?;
        let host = me.name.as_str();
        // Neutron sets `device_id` to the host name; `binding:host_id` may be unset.
        let fg_ports: Vec<&Port> = state
            .ports()
            .iter()
            .filter(|p| {
                p.is_floatingip_agent_gateway()
                    && (p.host_id.as_deref() == Some(host) || p.device_id == host)
            })
            .collect();
        let networks: HashSet<&str> = if fg_ports.is_empty() {
            state
                .networks()
                .iter()
                .filter(|n| n.external)
                .map(|n| n.id.as_str())
                .collect()
        } else {
            fg_ports.iter().map(|p| p.network_id.as_str()).collect()
        };
        let fg = fg_ports.iter().find_map(|p| p.fixed_ips.first());
        Some(ExtSide {
            iface,
            networks,
            fg_ip: fg.map(|f| f.ip),
            fg_gateway: fg
                .and_then(|f| state.subnet(&f.subnet_id))
                .and_then(|s| s.gateway_ip),
        })
    }
}

/// An associated floating IP with everything it resolves to.
struct FipTarget<'s> {
    port: &'s Port,
    fixed: Ipv4Addr,
    subnet_id: &'s str,
    vni: u32,
    router_id: &'s str,
    /// MAC of the router's distributed interface on the fixed IP's subnet.
    gw_mac: Option<Mac>,
}

impl FipTarget<'_> {
    /// `None` when the FIP counts as unassociated: no port, no fixed IP, a port off any tenant
    /// network, or no router.
    fn of<'s>(
        state: &'s State,
        fip: &'s FloatingIp,
        iface_of_subnet: &HashMap<&str, (&'s str, Mac)>,
    ) -> Option<FipTarget<'s>> {
        let port = state.port(fip.port_id.as_deref()?)?;
        let fixed = fip
            .fixed_ip_address
            .or_else(|| port.fixed_ips.first().map(|f| f.ip))?;
        let subnet_id = port
            .fixed_ips
            .iter()
            .find(|f| f.ip == fixed)?
            .subnet_id
            .as_str();
        let vni = vni_of(state, &port.network_id)?;
        let iface = iface_of_subnet.get(subnet_id).copied();
        let router_id = fip.router_id.as_deref().or(iface.map(|(r, _)| r))?;
        Some(FipTarget {
            port,
            fixed,
            subnet_id,
            vni,
            router_id,
            gw_mac: iface.filter(|&(r, _)| r == router_id).map(|(_, mac)| mac),
        })
    }

    fn gw_mac(&self, fip: &FloatingIp) -> Result<Mac, CompileError> {
        self.gw_mac
            .ok_or_else(|| CompileError::FipRouterNotOnSubnet {
                floatingip: fip.id.clone(),
                router: self.router_id.into(),
                subnet: self.subnet_id.into(),
                fixed: self.fixed,
            })
    }
}

/// The next hop of a floating IP's outbound traffic: the gateway of the floating network's
/// subnet that holds the address.
fn ext_gateway(state: &State, fip: &FloatingIp) -> Result<Ipv4Addr, CompileError> {
    state
        .subnets_on_network(&fip.floating_network_id)
        .filter(|s| s.cidr.contains(&fip.floating_ip_address))
        .find_map(|s| s.gateway_ip)
        .ok_or_else(|| CompileError::FipNoGateway {
            floatingip: fip.id.clone(),
            network: fip.floating_network_id.clone(),
            address: fip.floating_ip_address,
        })
}

/// `fips` and `fip_src` (see the module doc). Returns the FIPs served here (floating ->
/// fixed) and the external gateways they use.
fn add_floating_ips(
    out: &mut MapEntries,
    state: &State,
    c: &Compiler<'_>,
    ext: Option<&ExtSide<'_>>,
    vips: &Vips<'_>,
    my_routers: &HashSet<&str>,
    snat_here: &HashSet<&str>,
) -> Result<(BTreeMap<Ipv4Addr, Ipv4Addr>, BTreeSet<Ipv4Addr>), CompileError> {
    let mut served = BTreeMap::new();
    let mut gateways = BTreeSet::new();
    for fip in state.floatingips() {
        let fip_be = be(fip.floating_ip_address);
        let on_my_external =
            ext.is_some_and(|e| e.networks.contains(fip.floating_network_id.as_str()));
        let Some(t) = FipTarget::of(state, fip, &c.iface_of_subnet) else {
            if on_my_external {
                let entry = FipEntry {
                    flags: FIP_UNASSOCIATED,
                    ..FipEntry::default()
                };
                out.fips.insert(fip_be, entry);
            }
            continue;
        };
        let base = FipEntry {
            fixed_ip_be: be(t.fixed),
            vni: t.vni,
            router_id: fnv1a32(t.router_id),
            ..FipEntry::default()
        };
        let bound_to = t.port.host_id.as_deref().filter(|_| t.port.is_vm());
        let local_ifindex = match bound_to {
            Some(h) if h == c.host && ext.is_some() => {
                c.local_ifindex.get(t.port.id.as_str()).copied()
            }
            _ => None,
        };
        // A port of a dvr_no_external host, on a router this host does SNAT for (which
        // implies this host has external).
        let central_from = bound_to
            .filter(|_| snat_here.contains(t.router_id))
            .filter(|&h| {
                state
                    .host(h)
                    .is_some_and(|h| h.agent_mode == AgentMode::DvrNoExternal)
            })
            .and_then(|h| c.tunnel_of.get(h).copied());
        // A VIP's, on a router this host does SNAT for: located by the datapath.
        let central_vip = snat_here.contains(t.router_id) && vips.get(t.port, t.fixed).is_some();
        let serving_peer = bound_to
            .filter(|&h| h != c.host && my_routers.contains(t.router_id))
            .and_then(|h| state.host(h))
            .filter(|h| h.has_external());
        let central_ha = if fenced(state, t.router_id) {
            FIP_HA
        } else {
            0
        };
        let served_here = match (local_ifindex, central_from) {
            (Some(ifindex), _) => Some(FipEntry {
                ifindex,
                flags: FIP_LOCAL,
                ..base
            }),
            (None, Some(tunnel_ip_host)) => Some(FipEntry {
                tunnel_ip_host,
                flags: FIP_CENTRAL | central_ha,
                ..base
            }),
            (None, None) if central_vip => Some(FipEntry {
                flags: FIP_CENTRAL | FIP_VIP | central_ha,
                ..base
            }),
            (None, None) => None,
        };
        if let Some(entry) = served_here {
            let entry = FipEntry {
                port_mac: t.port.mac,
                gw_mac: t.gw_mac(fip)?,
                ..entry
            };
            let ext_gw = ext_gateway(state, fip)?;
            out.fips.insert(fip_be, entry);
            out.fip_src.insert(
                IpKey {
                    vni: t.vni,
                    ip_be: be(t.fixed),
                },
                FipSrc {
                    fip_be,
                    ext_gw_ip_be: be(ext_gw),
                    router_id: base.router_id,
                    flags: entry.flags & FIP_HA,
                },
            );
            gateways.insert(ext_gw);
            served.insert(fip.floating_ip_address, t.fixed);
        } else if let Some(peer) = serving_peer {
            let entry = FipEntry {
                tunnel_ip_host: u32::from(peer.tunnel_ip),
                port_mac: t.port.mac,
                gw_mac: t.gw_mac(fip)?,
                flags: FIP_REMOTE,
                ..base
            };
            out.fips.insert(fip_be, entry);
        } else if on_my_external {
            // Served elsewhere (on another host, centrally on the router's SNAT host, or
            // nowhere when a dvr_no_external host's or a VIP's router has none), or its tap is
            // not here yet, or its port is unbound and no VIP: known, so its traffic is
            // counted rather than treated as unknown.
            out.fips.insert(fip_be, base);
        }
    }
    Ok((served, gateways))
}

/// Every subnet of every routed network, with the router that owns it (the router with an
/// interface on that subnet, else the router of H on that network). Tenants may reuse a
/// prefix; the key holds no router, so the first router in state order names it.
fn add_ext_deny(
    deny: &mut BTreeMap<(u32, u32), u32>,
    state: &State,
    ifaces: &[Iface<'_>],
    my_routers: &HashSet<&str>,
) {
    let router_of_subnet: HashMap<&str, &str> = ifaces
        .iter()
        .map(|i| (i.subnet.id.as_str(), i.router_id))
        .collect();
    for iface in ifaces.iter().filter(|i| my_routers.contains(i.router_id)) {
        for sub in state.subnets_on_network(iface.network_id) {
            let router = router_of_subnet
                .get(sub.id.as_str())
                .copied()
                .unwrap_or(iface.router_id);
            deny.entry((u32::from(sub.cidr.prefix_len()), be(sub.cidr.network())))
                .or_insert_with(|| fnv1a32(router));
        }
    }
}

/// Router ids are 32-bit hashes in the datapath: two routers of one host must not share one.
fn check_router_ids(routers: &HashSet<&str>) -> Result<(), CompileError> {
    let mut sorted: Vec<&str> = routers.iter().copied().collect();
    sorted.sort_unstable();
    let mut by_hash: HashMap<u32, &str> = HashMap::with_capacity(sorted.len());
    for router in sorted {
        let hash = fnv1a32(router);
        match by_hash.entry(hash) {
            Entry::Occupied(o) => {
                return Err(CompileError::RouterIdCollision {
                    first: (*o.get()).into(),
                    second: router.into(),
                    hash,
                });
            }
            Entry::Vacant(v) => {
                v.insert(router);
            }
        }
    }
    Ok(())
}

/// What a local port with port security may send: its MAC with its fixed IPs, and its
/// allowed address pairs. A MAC-only entry (prefix 96) lets ARP probes and DHCP (source
/// 0.0.0.0) pass the MAC check; an IP grant on the same key wins over it.
fn add_port_security(sec: &mut BTreeMap<(u32, SecKey), u32>, port: &Port, ifindex: u32) {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    for fixed in &port.fixed_ips {
        sec.insert(
            (
                SEC_KEY_PREFIX_BITS + 32,
                sec_key(ifindex, port.mac, fixed.ip),
            ),
            SEC_IP_ALLOWED,
        );
    }
    sec.entry((SEC_KEY_PREFIX_BITS, sec_key(ifindex, port.mac, unspecified)))
        .or_insert(SEC_MAC_ONLY);
    for pair in &port.allowed_address_pairs {
        sec.entry((SEC_KEY_PREFIX_BITS, sec_key(ifindex, pair.mac, unspecified)))
            .or_insert(SEC_MAC_ONLY);
        let prefix = SEC_KEY_PREFIX_BITS + u32::from(pair.net.prefix_len());
        sec.insert(
            (prefix, sec_key(ifindex, pair.mac, pair.net.network())),
            SEC_IP_ALLOWED,
        );
    }
}

/// FDB entries of one served network: every VM port's MAC, then allowed-pair MACs that are
/// no port's own MAC (a port's own MAC always wins).
fn add_fdb(
    fdb: &mut BTreeMap<FdbKey, FdbEntry>,
    c: &Compiler<'_>,
    ports: &[&Port],
    vni: u32,
    gw_mac_of_subnet: &HashMap<&str, Mac>,
) {
    let mut located = Vec::with_capacity(ports.len());
    for &port in ports {
        let Some((ifindex, tunnel_ip_host)) = c.location(port) else {
            continue;
        };
        let gw_mac = port
            .fixed_ips
            .iter()
            .find_map(|f| gw_mac_of_subnet.get(f.subnet_id.as_str()).copied())
            .unwrap_or([0; 6]);
        let entry = FdbEntry {
            ifindex,
            tunnel_ip_host,
            gw_mac,
            _pad: [0; 2],
        };
        fdb.insert(fdb_key(vni, port.mac), entry);
        located.push((port, entry));
    }
    for (port, entry) in located {
        for pair in &port.allowed_address_pairs {
            if pair.mac != port.mac {
                fdb.entry(fdb_key(vni, pair.mac)).or_insert(entry);
            }
        }
    }
}

/// Who gets broadcast on one served network: local taps, the other hosts with VM ports, and
/// `extra_remote` (tunnel ips, host order: SNAT hosts serving a VIP FIP of the network).
fn flood_set(
    c: &Compiler<'_>,
    net: &Network,
    vni: u32,
    ports: &[&Port],
    extra_remote: &[u32],
) -> Result<FloodSet, CompileError> {
    let mut local: Vec<u32> = Vec::new();
    let mut remote: Vec<u32> = extra_remote.to_vec();
    for &port in ports {
        match c.location(port) {
            Some((0, tunnel)) => remote.push(tunnel),
            Some((ifindex, _)) => local.push(ifindex),
            None => {}
        }
    }
    for v in [&mut local, &mut remote] {
        v.sort_unstable();
        v.dedup();
    }
    let overflow = |what, count, max| CompileError::FloodOverflow {
        network: net.id.clone(),
        vni,
        host: c.host.into(),
        what,
        count,
        max,
    };
    if local.len() > FLOOD_MAX_LOCAL {
        return Err(overflow("local", local.len(), FLOOD_MAX_LOCAL));
    }
    if remote.len() > FLOOD_MAX_REMOTE {
        return Err(overflow("remote", remote.len(), FLOOD_MAX_REMOTE));
    }
    let mut set = FloodSet::default();
    for (slot, &ifindex) in set.local.iter_mut().zip(&local) {
        *slot = ifindex;
    }
    for (slot, &tunnel) in set.remote.iter_mut().zip(&remote) {
        *slot = tunnel;
    }
    // Both are bounded by the array lengths checked above.
    set.n_local = local.len() as u32;
    set.n_remote = remote.len() as u32;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{elem, fixture_value, push, state_of};
    use serde_json::{Value, json};

    const IFX_VM1: u32 = 11;
    const IFX_VM2: u32 = 12;
    const IFX_VM3: u32 = 21;
    const TUN_A: u32 = 0xc000_0201; // 192.0.2.1
    const TUN_B: u32 = 0xc000_0202; // 192.0.2.2
    const DVR_MAC_A: Mac = [0xfa, 0x16, 0x3f, 0, 0, 0x0a];
    const DVR_MAC_B: Mac = [0xfa, 0x16, 0x3f, 0, 0, 0x0b];
    const MAC_VM1: Mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
    const MAC_VM2: Mac = [0xfa, 0x16, 0x3e, 0, 0, 2];
    const MAC_VM3: Mac = [0xfa, 0x16, 0x3e, 0, 0, 3];
    const MAC_RIF1: Mac = [0xfa, 0x16, 0x3e, 0, 1, 1];
    const MAC_RIF2: Mac = [0xfa, 0x16, 0x3e, 0, 1, 2];
    const VNI1: u32 = 1001;
    const VNI2: u32 = 1002;

    /// Taps that exist: the fixture's VM taps on both hosts.
    fn all_taps(tap: &str) -> Option<u32> {
        match tap {
            "tapvm1" => Some(IFX_VM1),
            "tapvm2" => Some(IFX_VM2),
            "tapvm3" => Some(IFX_VM3),
            _ => None,
        }
    }

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        be(Ipv4Addr::new(a, b, c, d))
    }

    fn compiled_state(st: &State, host: &str) -> Compiled {
        match compile(st, host, &snat_taps) {
            Ok(c) => c,
            Err(e) => panic!("compile {host}: {e}"),
        }
    }

    fn compiled(v: &Value, host: &str, taps: &dyn Fn(&str) -> Option<u32>) -> Compiled {
        match compile(&state_of(v), host, taps) {
            Ok(c) => c,
            Err(e) => panic!("compile {host}: {e}"),
        }
    }

    fn fdb(ifindex: u32, tunnel_ip_host: u32, gw_mac: Mac) -> FdbEntry {
        FdbEntry {
            ifindex,
            tunnel_ip_host,
            gw_mac,
            _pad: [0; 2],
        }
    }

    fn endpoint(mac: Mac, ifindex: u32, tunnel_ip_host: u32) -> Endpoint {
        Endpoint {
            mac,
            _pad: [0; 2],
            ifindex,
            tunnel_ip_host,
        }
    }

    fn router1(ip_be: u32, mac: Mac) -> RouterIface {
        RouterIface {
            router_id: fnv1a32("router1"),
            ip_be,
            mac,
            _pad: [0; 2],
        }
    }

    fn flood(local: &[u32], remote: &[u32]) -> FloodSet {
        let mut set = FloodSet::default();
        set.local[..local.len()].copy_from_slice(local);
        set.remote[..remote.len()].copy_from_slice(remote);
        set.n_local = local.len() as u32;
        set.n_remote = remote.len() as u32;
        set
    }

    fn route_key(prefix: u32, router: &str, net_be: u32) -> (u32, RouteKey) {
        (
            prefix,
            RouteKey {
                router_id_be: fnv1a32(router).to_be(),
                ip_be: net_be,
            },
        )
    }

    #[test]
    fn fnv1a32_known_vectors() {
        assert_eq!(fnv1a32(""), 0x811c_9dc5);
        assert_eq!(fnv1a32("a"), 0xe40c_292c);
        assert_eq!(fnv1a32("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn tap_name_is_nova_convention() {
        assert_eq!(
            tap_name("5b3c7f0e-1d2a-4c6b-9e8f-0a1b2c3d4e5f"),
            "tap5b3c7f0e-1d"
        );
        assert_eq!(tap_name("vm1"), "tapvm1");
        assert_eq!(tap_name("5b3c7f0e-1d2a").len(), 14);
    }

    #[test]
    fn unknown_host_is_an_error() {
        let state = state_of(&fixture_value());
        assert_eq!(
            compile(&state, "host-z", &all_taps),
            Err(CompileError::UnknownHost {
                host: "host-z".into()
            })
        );
    }

    #[test]
    fn host_a_every_map() {
        let c = compiled(&fixture_value(), "host-a", &all_taps);
        assert_eq!(
            c.config,
            HostConfig {
                tunnel_ifindex: 0,
                tunnel_ip_host: TUN_A,
                dvr_mac: DVR_MAC_A,
                ready: 1,
                _pad: 0,
                ext_ifindex: 0,
                fg_ip_be: 0,
                ext_mac: [0; 6],
                _pad2: [0; 2],
                snat_port_min: 0,
                snat_port_max: 0,
            }
        );
        assert_eq!(
            c.taps,
            BTreeMap::from([
                ("tapvm1".into(), "vm1".into()),
                ("tapvm2".into(), "vm2".into())
            ])
        );
        let e = &c.entries;
        assert_eq!(
            e.local_ports,
            BTreeMap::from([
                (
                    IFX_VM1,
                    LocalPort {
                        vni: VNI1,
                        flags: PORT_FLAG_SECURITY,
                        mac: MAC_VM1,
                        _pad: [0; 2],
                        port_id: fnv1a32("vm1")
                    }
                ),
                (
                    IFX_VM2,
                    LocalPort {
                        vni: VNI2,
                        flags: PORT_FLAG_SECURITY,
                        mac: MAC_VM2,
                        _pad: [0; 2],
                        port_id: fnv1a32("vm2")
                    }
                ),
            ])
        );
        let sec = |ifx: u32, mac: Mac, ip_be: u32| SecKey {
            ifindex_be: ifx.to_be(),
            mac,
            _pad: [0; 2],
            ip_be,
        };
        assert_eq!(
            e.port_security,
            BTreeMap::from([
                (
                    (128, sec(IFX_VM1, MAC_VM1, ip(10, 0, 1, 10))),
                    SEC_IP_ALLOWED
                ),
                ((96, sec(IFX_VM1, MAC_VM1, 0)), SEC_MAC_ONLY),
                (
                    (128, sec(IFX_VM2, MAC_VM2, ip(10, 0, 2, 20))),
                    SEC_IP_ALLOWED
                ),
                ((96, sec(IFX_VM2, MAC_VM2, 0)), SEC_MAC_ONLY),
            ])
        );
        assert_eq!(
            e.fdb,
            BTreeMap::from([
                (fdb_key(VNI1, MAC_VM1), fdb(IFX_VM1, 0, MAC_RIF1)),
                (fdb_key(VNI1, MAC_VM3), fdb(0, TUN_B, MAC_RIF1)),
                (fdb_key(VNI2, MAC_VM2), fdb(IFX_VM2, 0, MAC_RIF2)),
            ])
        );
        assert_eq!(
            e.flood,
            BTreeMap::from([
                (VNI1, flood(&[IFX_VM1], &[TUN_B])),
                (VNI2, flood(&[IFX_VM2], &[]))
            ])
        );
        assert_eq!(
            e.dvr_macs,
            BTreeMap::from([
                (
                    MacKey {
                        mac: DVR_MAC_A,
                        _pad: [0; 2]
                    },
                    TUN_A
                ),
                (
                    MacKey {
                        mac: DVR_MAC_B,
                        _pad: [0; 2]
                    },
                    TUN_B
                ),
            ])
        );
        assert_eq!(e.tunnel_peers, BTreeMap::from([(TUN_B, 1)]));
        assert_eq!(
            e.gw_by_mac,
            BTreeMap::from([
                (fdb_key(VNI1, MAC_RIF1), router1(ip(10, 0, 1, 1), MAC_RIF1)),
                (fdb_key(VNI2, MAC_RIF2), router1(ip(10, 0, 2, 1), MAC_RIF2)),
            ])
        );
        assert_eq!(
            e.gw_by_ip,
            BTreeMap::from([
                (
                    IpKey {
                        vni: VNI1,
                        ip_be: ip(10, 0, 1, 1)
                    },
                    router1(ip(10, 0, 1, 1), MAC_RIF1)
                ),
                (
                    IpKey {
                        vni: VNI2,
                        ip_be: ip(10, 0, 2, 1)
                    },
                    router1(ip(10, 0, 2, 1), MAC_RIF2)
                ),
            ])
        );
        assert_eq!(
            e.routes,
            BTreeMap::from([
                (
                    route_key(56, "router1", ip(10, 0, 1, 0)),
                    Route {
                        vni: VNI1,
                        gw_ip_be: ip(10, 0, 1, 1),
                        gw_mac: MAC_RIF1,
                        _pad: [0; 2]
                    }
                ),
                (
                    route_key(56, "router1", ip(10, 0, 2, 0)),
                    Route {
                        vni: VNI2,
                        gw_ip_be: ip(10, 0, 2, 1),
                        gw_mac: MAC_RIF2,
                        _pad: [0; 2]
                    }
                ),
            ])
        );
        // DHCP, SNAT and router ports are never endpoints.
        assert_eq!(
            e.endpoints,
            BTreeMap::from([
                (
                    IpKey {
                        vni: VNI1,
                        ip_be: ip(10, 0, 1, 10)
                    },
                    endpoint(MAC_VM1, IFX_VM1, 0)
                ),
                (
                    IpKey {
                        vni: VNI1,
                        ip_be: ip(10, 0, 1, 30)
                    },
                    endpoint(MAC_VM3, 0, TUN_B)
                ),
                (
                    IpKey {
                        vni: VNI2,
                        ip_be: ip(10, 0, 2, 20)
                    },
                    endpoint(MAC_VM2, IFX_VM2, 0)
                ),
            ])
        );
    }

    #[test]
    fn byte_orders() {
        // *_be fields hold the address bytes in packet order; *_host fields the integer.
        assert_eq!(ip(10, 0, 1, 10).to_ne_bytes(), [10, 0, 1, 10]);
        let c = compiled(&fixture_value(), "host-a", &all_taps);
        assert_eq!(c.config.tunnel_ip_host, 0xc000_0201);
        let route = c
            .entries
            .routes
            .keys()
            .next()
            .map(|(_, k)| k.router_id_be.to_ne_bytes());
        assert_eq!(route, Some(fnv1a32("router1").to_be_bytes()));
    }

    #[test]
    fn host_b_routes_the_router_and_sees_vm2_on_a() {
        let c = compiled(&fixture_value(), "host-b", &all_taps);
        let e = &c.entries;
        assert_eq!(c.config.tunnel_ip_host, TUN_B);
        assert_eq!(c.taps, BTreeMap::from([("tapvm3".into(), "vm3".into())]));
        // net1 is served on B, so router1 is B's, and both its subnets are routed.
        assert_eq!(
            e.routes.keys().copied().collect::<Vec<_>>(),
            [
                route_key(56, "router1", ip(10, 0, 1, 0)),
                route_key(56, "router1", ip(10, 0, 2, 0))
            ]
        );
        assert_eq!(
            e.endpoints.get(&IpKey {
                vni: VNI2,
                ip_be: ip(10, 0, 2, 20)
            }),
            Some(&endpoint(MAC_VM2, 0, TUN_A))
        );
        assert_eq!(
            e.endpoints.get(&IpKey {
                vni: VNI1,
                ip_be: ip(10, 0, 1, 30)
            }),
            Some(&endpoint(MAC_VM3, IFX_VM3, 0))
        );
        // net2 is routed but not served on B: no L2 state for it.
        assert_eq!(e.flood.keys().copied().collect::<Vec<_>>(), [VNI1]);
        assert_eq!(e.flood.get(&VNI1), Some(&flood(&[IFX_VM3], &[TUN_A])));
        assert!(e.fdb.keys().all(|k| k.vni == VNI1));
        assert_eq!(
            e.fdb.get(&fdb_key(VNI1, MAC_VM1)),
            Some(&fdb(0, TUN_A, MAC_RIF1))
        );
        assert_eq!(
            e.gw_by_mac.keys().copied().collect::<Vec<_>>(),
            [fdb_key(VNI1, MAC_RIF1)]
        );
        assert_eq!(e.tunnel_peers, BTreeMap::from([(TUN_A, 1)]));
        assert_eq!(e.local_ports.keys().copied().collect::<Vec<_>>(), [IFX_VM3]);
    }

    #[test]
    fn missing_tap_gets_no_entries_but_is_listed() {
        let only_vm1 = |tap: &str| (tap == "tapvm1").then_some(IFX_VM1);
        let c = compiled(&fixture_value(), "host-a", &only_vm1);
        let e = &c.entries;
        assert_eq!(c.taps.get("tapvm2").map(String::as_str), Some("vm2"));
        assert_eq!(e.local_ports.keys().copied().collect::<Vec<_>>(), [IFX_VM1]);
        assert!(
            e.port_security
                .keys()
                .all(|(_, k)| k.ifindex_be == IFX_VM1.to_be())
        );
        assert_eq!(e.fdb.get(&fdb_key(VNI2, MAC_VM2)), None);
        assert_eq!(
            e.endpoints.get(&IpKey {
                vni: VNI2,
                ip_be: ip(10, 0, 2, 20)
            }),
            None
        );
        // net2 is still served: its gateway answers, its flood set is empty.
        assert_eq!(e.flood.get(&VNI2), Some(&flood(&[], &[])));
        assert!(e.gw_by_ip.contains_key(&IpKey {
            vni: VNI2,
            ip_be: ip(10, 0, 2, 1)
        }));
        // Remote taps are none of this host's business.
        let none = |_: &str| None;
        let c = compiled(&fixture_value(), "host-b", &none);
        assert_eq!(
            c.entries.fdb.get(&fdb_key(VNI1, MAC_VM1)),
            Some(&fdb(0, TUN_A, MAC_RIF1))
        );
        assert_eq!(c.entries.fdb.get(&fdb_key(VNI1, MAC_VM3)), None);
    }

    #[test]
    fn port_security_disabled() {
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm1")["port_security_enabled"] = false.into();
        let c = compiled(&v, "host-a", &all_taps);
        assert!(
            c.entries
                .port_security
                .keys()
                .all(|(_, k)| k.ifindex_be != IFX_VM1.to_be())
        );
        assert_eq!(c.entries.port_security.len(), 2);
        assert_eq!(
            c.entries.local_ports.get(&IFX_VM1).map(|p| p.flags),
            Some(0)
        );
    }

    #[test]
    fn allowed_address_pairs() {
        let mut v = fixture_value();
        let pair_mac: Mac = [0xfa, 0x16, 0x3e, 0xaa, 0, 1];
        elem(&mut v, "ports", "id", "vm1")["allowed_address_pairs"] = json!([
            {"ip_address": "10.0.1.100"},
            {"ip_address": "192.168.0.0/16", "mac_address": "fa:16:3e:aa:00:01"},
            {"ip_address": "0.0.0.0/0"}
        ]);
        let c = compiled(&v, "host-a", &all_taps);
        let sec = |mac: Mac, ip_be: u32| SecKey {
            ifindex_be: IFX_VM1.to_be(),
            mac,
            _pad: [0; 2],
            ip_be,
        };
        let vm1: BTreeMap<(u32, SecKey), u32> = c
            .entries
            .port_security
            .iter()
            .filter(|((_, k), _)| k.ifindex_be == IFX_VM1.to_be())
            .map(|(k, v)| (*k, *v))
            .collect();
        assert_eq!(
            vm1,
            BTreeMap::from([
                ((128, sec(MAC_VM1, ip(10, 0, 1, 10))), SEC_IP_ALLOWED),
                ((128, sec(MAC_VM1, ip(10, 0, 1, 100))), SEC_IP_ALLOWED),
                ((96 + 16, sec(pair_mac, ip(192, 168, 0, 0))), SEC_IP_ALLOWED),
                ((96, sec(pair_mac, 0)), SEC_MAC_ONLY),
                // 0.0.0.0/0 lands on the MAC-only key of the port MAC: the IP grant wins.
                ((96, sec(MAC_VM1, 0)), SEC_IP_ALLOWED),
            ])
        );
        // The pair MAC is reachable where the port is, locally and from host-b.
        assert_eq!(
            c.entries.fdb.get(&fdb_key(VNI1, pair_mac)),
            Some(&fdb(IFX_VM1, 0, MAC_RIF1))
        );
        let b = compiled(&v, "host-b", &all_taps);
        assert_eq!(
            b.entries.fdb.get(&fdb_key(VNI1, pair_mac)),
            Some(&fdb(0, TUN_A, MAC_RIF1))
        );
    }

    #[test]
    fn overlapping_tenants_get_disjoint_keys() {
        let mut v: Value = json!({
            "networks": [
                {"id": "red-net", "provider:network_type": "vxlan", "provider:segmentation_id": 10},
                {"id": "blue-net", "provider:network_type": "vxlan", "provider:segmentation_id": 20}
            ],
            "subnets": [
                {"id": "red-sub", "network_id": "red-net", "cidr": "192.168.21.0/24", "gateway_ip": "192.168.21.1", "ip_version": 4},
                {"id": "blue-sub", "network_id": "blue-net", "cidr": "192.168.21.0/24", "gateway_ip": "192.168.21.1", "ip_version": 4}
            ],
            "routers": [{"id": "red-router"}, {"id": "blue-router"}],
            "ports": [],
            "hosts": [{"name": "h", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1", "dvr_mac": "fa:16:3f:00:00:01"}]
        });
        for (color, n) in [("red", 1u8), ("blue", 2)] {
            push(
                &mut v,
                "ports",
                json!({"id": format!("{color}-rif"), "network_id": format!("{color}-net"),
                "mac_address": format!("fa:16:3e:00:0{n}:01"),
                "fixed_ips": [{"subnet_id": format!("{color}-sub"), "ip_address": "192.168.21.1"}],
                "device_owner": "network:router_interface_distributed", "device_id": format!("{color}-router")}),
            );
            push(
                &mut v,
                "ports",
                json!({"id": format!("{color}-vm"), "network_id": format!("{color}-net"),
                "mac_address": format!("fa:16:3e:00:0{n}:05"),
                "fixed_ips": [{"subnet_id": format!("{color}-sub"), "ip_address": "192.168.21.5"}],
                "device_owner": "compute:nova", "binding:host_id": "h"}),
            );
        }
        let taps = |tap: &str| match tap {
            "tapred-vm" => Some(1),
            "tapblue-vm" => Some(2),
            _ => None,
        };
        let e = compiled(&v, "h", &taps).entries;
        assert_eq!(e.routes.len(), 2);
        assert_eq!(e.gw_by_ip.len(), 2);
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(
            e.endpoints.keys().copied().collect::<Vec<_>>(),
            [
                IpKey {
                    vni: 10,
                    ip_be: ip(192, 168, 21, 5)
                },
                IpKey {
                    vni: 20,
                    ip_be: ip(192, 168, 21, 5)
                }
            ]
        );
        let red = e
            .routes
            .get(&route_key(56, "red-router", ip(192, 168, 21, 0)));
        let blue = e
            .routes
            .get(&route_key(56, "blue-router", ip(192, 168, 21, 0)));
        assert_eq!(red.map(|r| r.vni), Some(10));
        assert_eq!(blue.map(|r| r.vni), Some(20));
    }

    #[test]
    fn router_id_collision_names_both() {
        // fnv1a32("r66999") == fnv1a32("r916676") == 0x6fbed7e2.
        assert_eq!(fnv1a32("r66999"), fnv1a32("r916676"));
        let mut v = fixture_value();
        push(&mut v, "routers", json!({"id": "r66999"}));
        push(&mut v, "routers", json!({"id": "r916676"}));
        for (id, router, subnet, net, cidr, gw, vm_ip) in [
            (
                "rif-x",
                "r66999",
                "sx",
                "nx",
                "10.8.1.0/24",
                "10.8.1.1",
                "10.8.1.5",
            ),
            (
                "rif-y",
                "r916676",
                "sy",
                "ny",
                "10.8.2.0/24",
                "10.8.2.1",
                "10.8.2.5",
            ),
        ] {
            let vni = if net == "nx" { 31 } else { 32 };
            push(
                &mut v,
                "networks",
                json!({"id": net, "provider:network_type": "vxlan", "provider:segmentation_id": vni}),
            );
            push(
                &mut v,
                "subnets",
                json!({"id": subnet, "network_id": net, "cidr": cidr, "ip_version": 4}),
            );
            push(
                &mut v,
                "ports",
                json!({"id": id, "network_id": net, "mac_address": format!("fa:16:3e:08:00:{vni}"),
                "fixed_ips": [{"subnet_id": subnet, "ip_address": gw}],
                "device_owner": "network:router_interface_distributed", "device_id": router}),
            );
            push(
                &mut v,
                "ports",
                json!({"id": format!("vm-{net}"), "network_id": net, "mac_address": format!("fa:16:3e:09:00:{vni}"),
                "fixed_ips": [{"subnet_id": subnet, "ip_address": vm_ip}],
                "device_owner": "compute:nova", "binding:host_id": "host-b"}),
            );
        }
        let state = state_of(&v);
        let err = compile(&state, "host-b", &all_taps);
        assert_eq!(
            err,
            Err(CompileError::RouterIdCollision {
                first: "r66999".into(),
                second: "r916676".into(),
                hash: 0x6fbe_d7e2
            })
        );
        assert!(
            err.err()
                .is_some_and(|e| e.to_string().contains("r66999 and r916676"))
        );
        // host-a has no port on those networks: the routers are not its, it compiles.
        assert!(compile(&state, "host-a", &all_taps).is_ok());
    }

    #[test]
    fn flood_overflow_names_the_network() {
        let mut v = fixture_value();
        for i in 0..=FLOOD_MAX_LOCAL {
            push(
                &mut v,
                "ports",
                json!({"id": format!("many-{i}"), "network_id": "net2",
                "mac_address": format!("fa:16:3e:07:{:02x}:{:02x}", i / 256, i % 256),
                "fixed_ips": [{"subnet_id": "subnet2", "ip_address": format!("10.0.2.{}", 100 + i)}],
                "device_owner": "compute:nova", "binding:host_id": "host-a"}),
            );
        }
        let state = state_of(&v);
        let every_tap = |tap: &str| Some(fnv1a32(tap));
        let err = compile(&state, "host-a", &every_tap);
        assert!(
            matches!(&err, Err(CompileError::FloodOverflow { network, what: "local", count, .. })
                if network == "net2" && *count == FLOOD_MAX_LOCAL + 2),
            "{err:?}"
        );
        assert!(
            err.err()
                .is_some_and(|e| e.to_string().starts_with("network net2 (vni 1002)"))
        );
    }

    #[test]
    fn tap_name_collision_is_an_error() {
        let mut v = fixture_value();
        push(
            &mut v,
            "ports",
            json!({"id": "vm1-longer-id-0", "network_id": "net1", "mac_address": "fa:16:3e:00:00:61",
            "fixed_ips": [], "device_owner": "compute:nova", "binding:host_id": "host-a"}),
        );
        push(
            &mut v,
            "ports",
            json!({"id": "vm1-longer-id-1", "network_id": "net1", "mac_address": "fa:16:3e:00:00:62",
            "fixed_ips": [], "device_owner": "compute:nova", "binding:host_id": "host-a"}),
        );
        let err = compile(&state_of(&v), "host-a", &all_taps);
        assert!(
            matches!(err, Err(CompileError::TapNameCollision { .. })),
            "{err:?}"
        );
    }

    // Floating IPs: external network 10.5.0.0/16 (gateway 10.5.0.1); router r1 on n1
    // (192.168.1.0/24) and n2 (192.168.2.0/24); host-a and host-b have external "ext0" and fg
    // ports 10.5.1.1 / 10.5.1.2; host-c is dvr_no_external. FIPs: 10.5.2.1 -> vma (host-a,
    // explicit router and fixed IP), 10.5.2.2 -> vmb (host-b, both inferred), 10.5.2.3
    // unassociated, 10.5.2.4 -> vmc (host-c).
    const IFX_VMA: u32 = 31;
    const IFX_VMB: u32 = 32;
    const IFX_VMC: u32 = 33;
    const TUN_C: u32 = 0xc000_0203; // 192.0.2.3
    const FVNI1: u32 = 2001;
    const FVNI2: u32 = 2002;
    const MAC_VMA: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0a];
    const MAC_VMB: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0b];
    const MAC_R1N1: Mac = [0xfa, 0x16, 0x3e, 0, 1, 0x11];
    const MAC_R1N2: Mac = [0xfa, 0x16, 0x3e, 0, 1, 0x12];

    fn fip_fixture() -> Value {
        let vm = |id: &str, net: &str, sub: &str, ip: &str, mac: &str, host: &str| {
            json!({"id": id, "network_id": net, "mac_address": mac,
                "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
                "device_owner": "compute:nova", "binding:host_id": host})
        };
        json!({
            "networks": [
                {"id": "ext", "provider:network_type": "flat", "provider:physical_network": "physnet1",
                 "router:external": true},
                {"id": "n1", "provider:network_type": "vxlan", "provider:segmentation_id": FVNI1},
                {"id": "n2", "provider:network_type": "vxlan", "provider:segmentation_id": FVNI2}
            ],
            "subnets": [
                {"id": "ext-sub", "network_id": "ext", "cidr": "10.5.0.0/16", "gateway_ip": "10.5.0.1", "ip_version": 4},
                {"id": "s1", "network_id": "n1", "cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1", "ip_version": 4},
                {"id": "s2", "network_id": "n2", "cidr": "192.168.2.0/24", "gateway_ip": "192.168.2.1", "ip_version": 4}
            ],
            "routers": [
                {"id": "r1", "external_gateway_info": {"network_id": "ext",
                    "external_fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.0.10"}]}}
            ],
            "ports": [
                {"id": "r1-n1", "network_id": "n1", "mac_address": "fa:16:3e:00:01:11",
                 "fixed_ips": [{"subnet_id": "s1", "ip_address": "192.168.1.1"}],
                 "device_owner": "network:router_interface_distributed", "device_id": "r1"},
                {"id": "r1-n2", "network_id": "n2", "mac_address": "fa:16:3e:00:01:12",
                 "fixed_ips": [{"subnet_id": "s2", "ip_address": "192.168.2.1"}],
                 "device_owner": "network:router_interface_distributed", "device_id": "r1"},
                {"id": "fg-a", "network_id": "ext", "mac_address": "fa:16:3e:00:02:0a",
                 "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.1.1"}],
                 "device_owner": "network:floatingip_agent_gateway", "device_id": "host-a",
                 "binding:host_id": "host-a"},
                // Unbound: found by its device_id, as Neutron sets it.
                {"id": "fg-b", "network_id": "ext", "mac_address": "fa:16:3e:00:02:0b",
                 "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.1.2"}],
                 "device_owner": "network:floatingip_agent_gateway", "device_id": "host-b"},
                vm("vma", "n1", "s1", "192.168.1.10", "fa:16:3e:00:00:0a", "host-a"),
                vm("vmb", "n2", "s2", "192.168.2.20", "fa:16:3e:00:00:0b", "host-b"),
                vm("vmc", "n1", "s1", "192.168.1.30", "fa:16:3e:00:00:0c", "host-c")
            ],
            "floatingips": [
                {"id": "fip-a", "floating_ip_address": "10.5.2.1", "floating_network_id": "ext",
                 "router_id": "r1", "port_id": "vma", "fixed_ip_address": "192.168.1.10"},
                {"id": "fip-b", "floating_ip_address": "10.5.2.2", "floating_network_id": "ext",
                 "port_id": "vmb"},
                {"id": "fip-u", "floating_ip_address": "10.5.2.3", "floating_network_id": "ext"},
                {"id": "fip-c", "floating_ip_address": "10.5.2.4", "floating_network_id": "ext",
                 "router_id": "r1", "port_id": "vmc"}
            ],
            "hosts": [
                {"name": "host-a", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1",
                 "dvr_mac": "fa:16:3f:00:00:0a", "external_interface": "ext0"},
                {"name": "host-b", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.2",
                 "dvr_mac": "fa:16:3f:00:00:0b", "external_interface": "ext0"},
                // Names an interface, but the mode wins.
                {"name": "host-c", "agent_mode": "dvr_no_external", "tunnel_ip": "192.0.2.3",
                 "dvr_mac": "fa:16:3f:00:00:0c", "external_interface": "ext0"}
            ]
        })
    }

    fn fip_taps(tap: &str) -> Option<u32> {
        match tap {
            "tapvma" => Some(IFX_VMA),
            "tapvmb" => Some(IFX_VMB),
            "tapvmc" => Some(IFX_VMC),
            _ => None,
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    fn fip_vma_local() -> FipEntry {
        FipEntry {
            fixed_ip_be: ip(192, 168, 1, 10),
            vni: FVNI1,
            router_id: fnv1a32("r1"),
            ifindex: IFX_VMA,
            tunnel_ip_host: 0,
            port_mac: MAC_VMA,
            gw_mac: MAC_R1N1,
            flags: FIP_LOCAL,
        }
    }

    fn fip_vmb_remote() -> FipEntry {
        FipEntry {
            fixed_ip_be: ip(192, 168, 2, 20),
            vni: FVNI2,
            router_id: fnv1a32("r1"),
            ifindex: 0,
            tunnel_ip_host: TUN_B,
            port_mac: MAC_VMB,
            gw_mac: MAC_R1N2,
            flags: FIP_REMOTE,
        }
    }

    fn fip_unassociated() -> FipEntry {
        FipEntry {
            flags: FIP_UNASSOCIATED,
            ..FipEntry::default()
        }
    }

    /// Known here, served elsewhere (or nowhere).
    fn fip_known(fixed_ip_be: u32, vni: u32) -> FipEntry {
        FipEntry {
            fixed_ip_be,
            vni,
            router_id: fnv1a32("r1"),
            ..FipEntry::default()
        }
    }

    fn both_tenant_subnets() -> BTreeMap<(u32, u32), u32> {
        BTreeMap::from([
            ((24, ip(192, 168, 1, 0)), fnv1a32("r1")),
            ((24, ip(192, 168, 2, 0)), fnv1a32("r1")),
        ])
    }

    #[test]
    fn fip_host_a_local_remote_unassociated_elsewhere() {
        let c = compiled(&fip_fixture(), "host-a", &fip_taps);
        let e = &c.entries;
        assert_eq!(
            e.fips,
            BTreeMap::from([
                (ip(10, 5, 2, 1), fip_vma_local()),
                (ip(10, 5, 2, 2), fip_vmb_remote()),
                (ip(10, 5, 2, 3), fip_unassociated()),
                (ip(10, 5, 2, 4), fip_known(ip(192, 168, 1, 30), FVNI1)),
            ])
        );
        assert_eq!(
            e.fip_src,
            BTreeMap::from([(
                IpKey {
                    vni: FVNI1,
                    ip_be: ip(192, 168, 1, 10)
                },
                FipSrc {
                    fip_be: ip(10, 5, 2, 1),
                    ext_gw_ip_be: ip(10, 5, 0, 1),
                    router_id: fnv1a32("r1"),
                    flags: 0
                }
            )])
        );
        assert_eq!(e.ext_neigh, BTreeSet::from([ip(10, 5, 0, 1)]));
        assert_eq!(e.ext_deny, both_tenant_subnets());
        assert_eq!(
            c.served_fips,
            BTreeMap::from([(v4(10, 5, 2, 1), v4(192, 168, 1, 10))])
        );
        assert_eq!(
            c.external,
            Some(External {
                iface: "ext0".into(),
                fg_ip: Some(v4(10, 5, 1, 1)),
                gateways: BTreeSet::from([v4(10, 5, 0, 1)]),
            })
        );
        assert_eq!(c.config.fg_ip_be, ip(10, 5, 1, 1));
        assert_eq!(c.config.fg_ip_be.to_ne_bytes(), [10, 5, 1, 1]);
        assert_eq!((c.config.ext_ifindex, c.config.ext_mac), (0, [0; 6]));
    }

    #[test]
    fn fip_host_b_mirrors_host_a() {
        let c = compiled(&fip_fixture(), "host-b", &fip_taps);
        let e = &c.entries;
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 2)),
            Some(&FipEntry {
                fixed_ip_be: ip(192, 168, 2, 20),
                vni: FVNI2,
                router_id: fnv1a32("r1"),
                ifindex: IFX_VMB,
                tunnel_ip_host: 0,
                port_mac: MAC_VMB,
                gw_mac: MAC_R1N2,
                flags: FIP_LOCAL,
            })
        );
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 1)),
            Some(&FipEntry {
                ifindex: 0,
                tunnel_ip_host: TUN_A,
                flags: FIP_REMOTE,
                ..fip_vma_local()
            })
        );
        assert_eq!(e.fips.get(&ip(10, 5, 2, 3)), Some(&fip_unassociated()));
        assert_eq!(e.fips.len(), 4);
        assert_eq!(
            e.fip_src.keys().copied().collect::<Vec<_>>(),
            [IpKey {
                vni: FVNI2,
                ip_be: ip(192, 168, 2, 20)
            }]
        );
        assert_eq!(
            c.served_fips,
            BTreeMap::from([(v4(10, 5, 2, 2), v4(192, 168, 2, 20))])
        );
        // fg-b is found through its device_id.
        assert_eq!(c.external.and_then(|x| x.fg_ip), Some(v4(10, 5, 1, 2)));
        assert_eq!(e.ext_deny, both_tenant_subnets());
    }

    #[test]
    fn fip_dvr_no_external_host_only_steers_remote() {
        let c = compiled(&fip_fixture(), "host-c", &fip_taps);
        let e = &c.entries;
        assert_eq!(c.external, None);
        assert_eq!(c.config.fg_ip_be, 0);
        // host-c's router r1 has FIPs served on host-a and host-b; its own VM's is served
        // nowhere, and unassociated ones are none of its business.
        assert_eq!(
            e.fips,
            BTreeMap::from([
                (
                    ip(10, 5, 2, 1),
                    FipEntry {
                        ifindex: 0,
                        tunnel_ip_host: TUN_A,
                        flags: FIP_REMOTE,
                        ..fip_vma_local()
                    }
                ),
                (ip(10, 5, 2, 2), fip_vmb_remote()),
            ])
        );
        assert!(e.fip_src.is_empty());
        assert!(e.ext_neigh.is_empty());
        assert!(e.ext_deny.is_empty());
        assert!(c.served_fips.is_empty());
        // host-a and host-b do not serve host-c's FIP either.
        let a = compiled(&fip_fixture(), "host-a", &fip_taps);
        assert_eq!(
            a.entries.fips.get(&ip(10, 5, 2, 4)).map(|f| f.flags),
            Some(0)
        );
        assert_ne!(TUN_C, TUN_A);
    }

    #[test]
    fn fip_remote_needs_a_router_of_this_host() {
        // Without vma, host-a has no port on r1's networks: r1 is not its router, and vmb's
        // FIP is only known (host-a still has external on the FIP's network).
        let mut v = fip_fixture();
        elem(&mut v, "ports", "id", "vma")["binding:host_id"] = "host-c".into();
        let c = compiled(&v, "host-a", &fip_taps);
        assert_eq!(
            c.entries.fips.get(&ip(10, 5, 2, 2)),
            Some(&fip_known(ip(192, 168, 2, 20), FVNI2))
        );
        assert!(c.entries.ext_deny.is_empty());
        assert!(c.served_fips.is_empty());
        // fg-a's gateway is still learned.
        assert_eq!(c.entries.ext_neigh, BTreeSet::from([ip(10, 5, 0, 1)]));
    }

    #[test]
    fn fip_tap_absent_is_not_local_and_not_served() {
        let no_vma = |tap: &str| if tap == "tapvma" { None } else { fip_taps(tap) };
        let c = compiled(&fip_fixture(), "host-a", &no_vma);
        let e = &c.entries;
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 1)),
            Some(&fip_known(ip(192, 168, 1, 10), FVNI1))
        );
        assert!(e.fip_src.is_empty());
        assert!(c.served_fips.is_empty());
        // Still the router's host: hairpin and deny entries stay.
        assert_eq!(e.fips.get(&ip(10, 5, 2, 2)), Some(&fip_vmb_remote()));
        assert_eq!(e.ext_deny, both_tenant_subnets());
        assert_eq!(e.ext_neigh, BTreeSet::from([ip(10, 5, 0, 1)]));
    }

    #[test]
    fn fip_external_networks_default_to_all_and_follow_fg_ports() {
        let mut v = fip_fixture();
        push(
            &mut v,
            "networks",
            json!({"id": "ext2", "provider:network_type": "flat", "provider:physical_network": "physnet2", "router:external": true}),
        );
        push(
            &mut v,
            "subnets",
            json!({"id": "ext2-sub", "network_id": "ext2", "cidr": "10.6.0.0/16", "gateway_ip": "10.6.0.1", "ip_version": 4}),
        );
        push(
            &mut v,
            "floatingips",
            json!({"id": "fip-u2", "floating_ip_address": "10.6.2.3", "floating_network_id": "ext2"}),
        );
        // host-a's fg port is on ext only: ext2's FIPs are not its.
        let c = compiled(&v, "host-a", &fip_taps);
        assert!(!c.entries.fips.contains_key(&ip(10, 6, 2, 3)));
        // Without fg ports every external network is host-a's, and it has no address there.
        let fips = v["ports"].as_array_mut().map(|p| {
            p.retain(|p| p["device_owner"] != "network:floatingip_agent_gateway");
        });
        assert!(fips.is_some());
        let c = compiled(&v, "host-a", &fip_taps);
        assert_eq!(
            c.entries.fips.get(&ip(10, 6, 2, 3)),
            Some(&fip_unassociated())
        );
        assert_eq!(c.config.fg_ip_be, 0);
        assert_eq!(
            c.external,
            Some(External {
                iface: "ext0".into(),
                fg_ip: None,
                gateways: BTreeSet::from([v4(10, 5, 0, 1)]),
            })
        );
    }

    #[test]
    fn fip_without_router_counts_as_unassociated() {
        // n3 has no router interface and fip-3 names no router: nothing to translate with.
        let mut v = fip_fixture();
        push(
            &mut v,
            "networks",
            json!({"id": "n3", "provider:network_type": "vxlan", "provider:segmentation_id": 2003}),
        );
        push(
            &mut v,
            "subnets",
            json!({"id": "s3", "network_id": "n3", "cidr": "192.168.3.0/24", "ip_version": 4}),
        );
        push(
            &mut v,
            "ports",
            json!({"id": "vm3", "network_id": "n3", "mac_address": "fa:16:3e:00:00:33",
                "fixed_ips": [{"subnet_id": "s3", "ip_address": "192.168.3.30"}],
                "device_owner": "compute:nova", "binding:host_id": "host-a"}),
        );
        push(
            &mut v,
            "floatingips",
            json!({"id": "fip-3", "floating_ip_address": "10.5.2.30", "floating_network_id": "ext", "port_id": "vm3"}),
        );
        let taps = |tap: &str| {
            if tap == "tapvm3" {
                Some(40)
            } else {
                fip_taps(tap)
            }
        };
        let c = compiled(&v, "host-a", &taps);
        assert_eq!(
            c.entries.fips.get(&ip(10, 5, 2, 30)),
            Some(&fip_unassociated())
        );
        assert!(!c.served_fips.contains_key(&v4(10, 5, 2, 30)));
    }

    #[test]
    fn fip_without_external_gateway_names_the_floatingip() {
        let mut v = fip_fixture();
        elem(&mut v, "subnets", "id", "ext-sub")["gateway_ip"] = Value::Null;
        let err = compile(&state_of(&v), "host-a", &fip_taps);
        assert_eq!(
            err,
            Err(CompileError::FipNoGateway {
                floatingip: "fip-a".into(),
                network: "ext".into(),
                address: v4(10, 5, 2, 1),
            })
        );
        assert_eq!(
            err.err().map(|e| e.to_string()),
            Some(
                "floatingip fip-a: field `floating_ip_address`: no subnet of network ext with a \
                 gateway contains 10.5.2.1"
                    .into()
            )
        );
        // host-c serves nothing, so it needs no gateway.
        assert!(compile(&state_of(&v), "host-c", &fip_taps).is_ok());
    }

    #[test]
    fn fip_router_without_interface_on_subnet_names_the_floatingip() {
        let mut v = fip_fixture();
        push(&mut v, "routers", json!({"id": "r2"}));
        elem(&mut v, "floatingips", "id", "fip-a")["router_id"] = "r2".into();
        let err = compile(&state_of(&v), "host-a", &fip_taps);
        assert_eq!(
            err,
            Err(CompileError::FipRouterNotOnSubnet {
                floatingip: "fip-a".into(),
                router: "r2".into(),
                subnet: "s1".into(),
                fixed: v4(192, 168, 1, 10),
            })
        );
        assert!(err.err().is_some_and(|e| {
            e.to_string()
                .starts_with("floatingip fip-a: field `router_id`: router r2")
        }));
    }

    // Centralized SNAT: fip_fixture plus host-s (dvr_snat, external "ext0", fg port
    // 10.5.1.4) holding r1's csnat ports on s1 and s2, host-n (dvr_no_external) with vmn on
    // n1 and FIP 10.5.2.7, and r1's gateway address 10.5.3.1.
    const TUN_S: u32 = 0xc000_0204; // 192.0.2.4
    const TUN_N: u32 = 0xc000_0205; // 192.0.2.5
    const IFX_VMS: u32 = 34;
    const MAC_CSNAT1: Mac = [0xfa, 0x16, 0x3e, 0, 3, 0x11];
    const MAC_CSNAT2: Mac = [0xfa, 0x16, 0x3e, 0, 3, 0x12];
    const MAC_VMC: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0c];
    const MAC_VMN: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0e];

    fn snat_fixture() -> Value {
        let mut v = fip_fixture();
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"] = json!({"network_id": "ext",
            "enable_snat": true,
            "external_fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.3.1"}]});
        push(
            &mut v,
            "hosts",
            json!({"name": "host-s", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.4",
                "dvr_mac": "fa:16:3f:00:00:0d", "external_interface": "ext0"}),
        );
        push(
            &mut v,
            "hosts",
            json!({"name": "host-n", "agent_mode": "dvr_no_external", "tunnel_ip": "192.0.2.5",
                "dvr_mac": "fa:16:3f:00:00:0e"}),
        );
        for (id, net, sub, ip, mac) in [
            ("r1-snat1", "n1", "s1", "192.168.1.5", "fa:16:3e:00:03:11"),
            ("r1-snat2", "n2", "s2", "192.168.2.5", "fa:16:3e:00:03:12"),
        ] {
            push(
                &mut v,
                "ports",
                json!({"id": id, "network_id": net, "mac_address": mac,
                    "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
                    "device_owner": "network:router_centralized_snat", "device_id": "r1",
                    "binding:host_id": "host-s"}),
            );
        }
        push(
            &mut v,
            "ports",
            json!({"id": "fg-s", "network_id": "ext", "mac_address": "fa:16:3e:00:02:0d",
                "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.1.4"}],
                "device_owner": "network:floatingip_agent_gateway", "device_id": "host-s",
                "binding:host_id": "host-s"}),
        );
        push(
            &mut v,
            "ports",
            json!({"id": "vmn", "network_id": "n1", "mac_address": "fa:16:3e:00:00:0e",
                "fixed_ips": [{"subnet_id": "s1", "ip_address": "192.168.1.40"}],
                "device_owner": "compute:nova", "binding:host_id": "host-n"}),
        );
        push(
            &mut v,
            "floatingips",
            json!({"id": "fip-n", "floating_ip_address": "10.5.2.7", "floating_network_id": "ext",
                "port_id": "vmn"}),
        );
        v
    }

    /// snat_fixture with vms, a VM of host-s on n1.
    fn snat_fixture_with_vms() -> Value {
        let mut v = snat_fixture();
        push(
            &mut v,
            "ports",
            json!({"id": "vms", "network_id": "n1", "mac_address": "fa:16:3e:00:00:0d",
                "fixed_ips": [{"subnet_id": "s1", "ip_address": "192.168.1.50"}],
                "device_owner": "compute:nova", "binding:host_id": "host-s"}),
        );
        v
    }

    fn snat_taps(tap: &str) -> Option<u32> {
        if tap == "tapvms" {
            Some(IFX_VMS)
        } else {
            fip_taps(tap)
        }
    }

    fn steer(tunnel_ip_host: u32, csnat_mac: Mac, flags: u32) -> SnatSteer {
        SnatSteer {
            tunnel_ip_host,
            router_id: fnv1a32("r1"),
            csnat_mac,
            _pad: [0; 2],
            flags,
        }
    }

    fn snat_r1(flags: u32) -> SnatRouter {
        SnatRouter {
            router_id: fnv1a32("r1"),
            ext_ip_be: ip(10, 5, 3, 1),
            ext_gw_ip_be: ip(10, 5, 0, 1),
            flags,
        }
    }

    /// snat_fixture with r1 HA on host-s (priority 200) and host-t (100).
    fn ha_fixture() -> Value {
        let mut v = snat_fixture();
        push(
            &mut v,
            "hosts",
            json!({"name": "host-t", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.6",
                "dvr_mac": "fa:16:3f:00:00:0f", "external_interface": "ext0"}),
        );
        let r = elem(&mut v, "routers", "id", "r1");
        r["ha"] = json!(true);
        r["ha_hosts"] =
            json!([{"host": "host-t", "priority": 100}, {"host": "host-s", "priority": 200}]);
        v
    }

    #[test]
    fn ha_router_role_follows_the_election() {
        const TUN_T: u32 = 0xc000_0206;
        let v = ha_fixture();
        let with = |holder: Option<&str>, active_here: bool| {
            let mut st = state_of(&v);
            st.set_ha_runtime(Some(crate::model::HaRuntime {
                holders: holder
                    .map(|h| BTreeMap::from([("r1".to_string(), h.to_string())]))
                    .unwrap_or_default(),
                active_here: if active_here {
                    BTreeSet::from(["r1".to_string()])
                } else {
                    BTreeSet::new()
                },
            }));
            st
        };
        // State file: the preferred candidate serves, without a fence.
        let s = compiled(&v, "host-s", &snat_taps);
        assert_eq!(
            s.entries.snat_ips,
            BTreeMap::from([(ip(10, 5, 3, 1), snat_r1(SNAT_ENABLED))])
        );
        assert!(
            compiled(&v, "host-t", &snat_taps)
                .entries
                .snat_ips
                .is_empty()
        );
        // etcd: host-t elected. It serves with the fence flag, central FIPs included;
        // host-s (preferred, not elected) serves nothing; compute hosts steer to host-t.
        let st = with(Some("host-t"), true);
        let t = compiled_state(&st, "host-t");
        assert_eq!(
            t.entries.snat_ips,
            BTreeMap::from([(ip(10, 5, 3, 1), snat_r1(SNAT_ENABLED | SNAT_HA))])
        );
        assert_eq!(t.entries.snat_routers.len(), 2);
        let Some(central) = t.entries.fips.get(&ip(10, 5, 2, 7)) else {
            panic!("no central FIP on host-t")
        };
        assert_eq!(central.flags, FIP_CENTRAL | FIP_HA);
        let src = t.entries.fip_src.get(&IpKey {
            vni: FVNI1,
            ip_be: ip(192, 168, 1, 40),
        });
        assert_eq!(src.map(|s| s.flags), Some(FIP_HA), "{src:?}");
        assert_eq!(t.ha.len(), 1);
        assert_eq!(
            t.ha[0]
                .candidates
                .iter()
                .map(|c| c.host.as_str())
                .collect::<Vec<_>>(),
            ["host-s", "host-t"]
        );
        assert_eq!(t.ha[0].ext_ip, Some(Ipv4Addr::new(10, 5, 3, 1)));
        assert_eq!(
            t.ha[0].central_fips,
            BTreeMap::from([
                // fip_fixture's VIP FIP, and host-n's (dvr_no_external) FIP.
                (Ipv4Addr::new(10, 5, 2, 4), Ipv4Addr::new(192, 168, 1, 30)),
                (Ipv4Addr::new(10, 5, 2, 7), Ipv4Addr::new(192, 168, 1, 40))
            ])
        );
        let s = compiled_state(&with(Some("host-t"), false), "host-s");
        assert!(s.entries.snat_ips.is_empty() && s.entries.snat_routers.is_empty());
        assert!(
            !s.entries.fips.contains_key(&ip(10, 5, 2, 7))
                || s.entries.fips[&ip(10, 5, 2, 7)].flags & FIP_CENTRAL == 0
        );
        assert_eq!(s.ha.len(), 1, "host-s is still a candidate");
        let a = compiled_state(&with(Some("host-t"), false), "host-a");
        assert_eq!(
            a.entries.snat_steer,
            BTreeMap::from([(
                fdb_key(FVNI1, MAC_R1N1),
                steer(TUN_T, MAC_CSNAT1, SNAT_ENABLED)
            )])
        );
        assert!(a.ha.is_empty(), "host-a is no candidate");
        // Nobody elected yet: nobody serves; compute hosts steer to the preferred one.
        let s = compiled_state(&with(None, false), "host-s");
        assert!(s.entries.snat_ips.is_empty());
        let a = compiled_state(&with(None, false), "host-a");
        assert_eq!(
            a.entries.snat_steer,
            BTreeMap::from([(
                fdb_key(FVNI1, MAC_R1N1),
                steer(TUN_S, MAC_CSNAT1, SNAT_ENABLED)
            )])
        );
    }

    #[test]
    fn snat_steering_on_compute_hosts_points_at_the_snat_host() {
        let v = snat_fixture();
        // host-a serves n1 only (vma), host-b n2 only (vmb), host-n n1 only (vmn).
        for (host, key) in [
            ("host-a", fdb_key(FVNI1, MAC_R1N1)),
            ("host-n", fdb_key(FVNI1, MAC_R1N1)),
            ("host-b", fdb_key(FVNI2, MAC_R1N2)),
        ] {
            let c = compiled(&v, host, &snat_taps);
            let csnat = if key.vni == FVNI1 {
                MAC_CSNAT1
            } else {
                MAC_CSNAT2
            };
            assert_eq!(
                c.entries.snat_steer,
                BTreeMap::from([(key, steer(TUN_S, csnat, SNAT_ENABLED))]),
                "{host}"
            );
            assert!(c.entries.snat_routers.is_empty(), "{host}");
            assert!(c.entries.snat_ips.is_empty(), "{host}");
            assert!(c.snat_router_names.is_empty(), "{host}");
        }
        // host-n's FIP is served centrally: host-n needs nothing for it, host-a knows it.
        let n = compiled(&v, "host-n", &snat_taps);
        assert!(!n.entries.fips.contains_key(&ip(10, 5, 2, 7)));
        assert!(n.entries.fip_src.is_empty() && n.served_fips.is_empty());
        let a = compiled(&v, "host-a", &snat_taps);
        assert_eq!(
            a.entries.fips.get(&ip(10, 5, 2, 7)),
            Some(&fip_known(ip(192, 168, 1, 40), FVNI1))
        );
        assert_eq!(
            a.config.snat_port_min..=a.config.snat_port_max,
            0..=0,
            "the agent fills the PAT range"
        );
    }

    #[test]
    fn snat_host_without_vms_serves_the_router() {
        let c = compiled(&snat_fixture(), "host-s", &snat_taps);
        let e = &c.entries;
        assert!(c.taps.is_empty());
        // No served network: no steering, no L2 state.
        assert!(e.snat_steer.is_empty());
        assert!(e.fdb.is_empty() && e.flood.is_empty() && e.gw_by_mac.is_empty());
        assert_eq!(
            e.snat_routers,
            BTreeMap::from([
                (fdb_key(FVNI1, MAC_CSNAT1), snat_r1(SNAT_ENABLED)),
                (fdb_key(FVNI2, MAC_CSNAT2), snat_r1(SNAT_ENABLED)),
            ])
        );
        assert_eq!(
            e.snat_ips,
            BTreeMap::from([(ip(10, 5, 3, 1), snat_r1(SNAT_ENABLED))])
        );
        assert_eq!(
            c.snat_router_names,
            BTreeMap::from([(fnv1a32("r1"), "r1".to_string())])
        );
        // r1 is host-s's router: its routes and every endpoint of its networks.
        assert_eq!(
            e.routes.keys().copied().collect::<Vec<_>>(),
            [
                route_key(56, "r1", ip(192, 168, 1, 0)),
                route_key(56, "r1", ip(192, 168, 2, 0))
            ]
        );
        assert_eq!(
            e.endpoints,
            BTreeMap::from([
                (
                    IpKey {
                        vni: FVNI1,
                        ip_be: ip(192, 168, 1, 10)
                    },
                    endpoint(MAC_VMA, 0, TUN_A)
                ),
                (
                    IpKey {
                        vni: FVNI1,
                        ip_be: ip(192, 168, 1, 30)
                    },
                    endpoint(MAC_VMC, 0, TUN_C)
                ),
                (
                    IpKey {
                        vni: FVNI1,
                        ip_be: ip(192, 168, 1, 40)
                    },
                    endpoint(MAC_VMN, 0, TUN_N)
                ),
                (
                    IpKey {
                        vni: FVNI2,
                        ip_be: ip(192, 168, 2, 20)
                    },
                    endpoint(MAC_VMB, 0, TUN_B)
                ),
            ])
        );
        assert!(e.ext_neigh.contains(&ip(10, 5, 0, 1)));
        assert_eq!(e.ext_deny, both_tenant_subnets());
        // Central FIPs: host-n's and host-c's (both dvr_no_external).
        let central_n = FipEntry {
            fixed_ip_be: ip(192, 168, 1, 40),
            vni: FVNI1,
            router_id: fnv1a32("r1"),
            ifindex: 0,
            tunnel_ip_host: TUN_N,
            port_mac: MAC_VMN,
            gw_mac: MAC_R1N1,
            flags: FIP_CENTRAL,
        };
        assert_eq!(e.fips.get(&ip(10, 5, 2, 7)), Some(&central_n));
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 4)),
            Some(&FipEntry {
                fixed_ip_be: ip(192, 168, 1, 30),
                tunnel_ip_host: TUN_C,
                port_mac: MAC_VMC,
                ..central_n
            })
        );
        // FIPs served on dvr hosts stay REMOTE (r1 is host-s's router).
        assert_eq!(e.fips.get(&ip(10, 5, 2, 2)), Some(&fip_vmb_remote()));
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 1)).map(|f| f.flags),
            Some(FIP_REMOTE)
        );
        assert_eq!(e.fips.get(&ip(10, 5, 2, 3)), Some(&fip_unassociated()));
        let src = |fip_be| FipSrc {
            fip_be,
            ext_gw_ip_be: ip(10, 5, 0, 1),
            router_id: fnv1a32("r1"),
            flags: 0,
        };
        assert_eq!(
            e.fip_src,
            BTreeMap::from([
                (
                    IpKey {
                        vni: FVNI1,
                        ip_be: ip(192, 168, 1, 30)
                    },
                    src(ip(10, 5, 2, 4))
                ),
                (
                    IpKey {
                        vni: FVNI1,
                        ip_be: ip(192, 168, 1, 40)
                    },
                    src(ip(10, 5, 2, 7))
                ),
            ])
        );
        assert_eq!(
            c.served_fips,
            BTreeMap::from([
                (v4(10, 5, 2, 4), v4(192, 168, 1, 30)),
                (v4(10, 5, 2, 7), v4(192, 168, 1, 40)),
            ])
        );
        assert_eq!(c.external.and_then(|x| x.fg_ip), Some(v4(10, 5, 1, 4)));
    }

    #[test]
    fn snat_host_with_a_local_vm_steers_to_itself() {
        let c = compiled(&snat_fixture_with_vms(), "host-s", &snat_taps);
        let e = &c.entries;
        // n1 is served here (vms): its interface steers to this host; n2 is not served.
        assert_eq!(
            e.snat_steer,
            BTreeMap::from([(fdb_key(FVNI1, MAC_R1N1), steer(0, MAC_CSNAT1, SNAT_ENABLED))])
        );
        assert_eq!(e.snat_routers.len(), 2);
        assert_eq!(
            e.endpoints.get(&IpKey {
                vni: FVNI1,
                ip_be: ip(192, 168, 1, 50)
            }),
            Some(&endpoint([0xfa, 0x16, 0x3e, 0, 0, 0x0d], IFX_VMS, 0))
        );
        // Other hosts see host-s as the SNAT host whether or not it has VMs.
        let a = compiled(&snat_fixture_with_vms(), "host-a", &snat_taps);
        assert_eq!(
            a.entries.snat_steer.get(&fdb_key(FVNI1, MAC_R1N1)),
            Some(&steer(TUN_S, MAC_CSNAT1, SNAT_ENABLED))
        );
    }

    #[test]
    fn snat_disabled_keeps_entries_without_the_flag() {
        let mut v = snat_fixture_with_vms();
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"]["enable_snat"] = false.into();
        let s = compiled(&v, "host-s", &snat_taps);
        assert_eq!(
            s.entries.snat_steer,
            BTreeMap::from([(fdb_key(FVNI1, MAC_R1N1), steer(0, MAC_CSNAT1, 0))])
        );
        assert!(s.entries.snat_routers.values().all(|r| *r == snat_r1(0)));
        assert_eq!(s.entries.snat_routers.len(), 2);
        assert_eq!(s.entries.snat_ips.get(&ip(10, 5, 3, 1)), Some(&snat_r1(0)));
        // FIPs do not depend on enable_snat.
        assert_eq!(
            s.entries.fips.get(&ip(10, 5, 2, 7)).map(|f| f.flags),
            Some(FIP_CENTRAL)
        );
        let b = compiled(&v, "host-b", &snat_taps);
        assert_eq!(
            b.entries.snat_steer.get(&fdb_key(FVNI2, MAC_R1N2)),
            Some(&steer(TUN_S, MAC_CSNAT2, 0))
        );
    }

    #[test]
    fn snat_needs_csnat_ports_and_a_gateway() {
        // No csnat port on s2: no steering for n2; host-s still does SNAT for r1 through s1.
        let mut v = snat_fixture();
        if let Some(p) = v["ports"].as_array_mut() {
            p.retain(|p| p["id"] != "r1-snat2");
        }
        let b = compiled(&v, "host-b", &snat_taps);
        assert!(b.entries.snat_steer.is_empty());
        let s = compiled(&v, "host-s", &snat_taps);
        assert_eq!(
            s.entries.snat_routers.keys().copied().collect::<Vec<_>>(),
            [fdb_key(FVNI1, MAC_CSNAT1)]
        );
        // No csnat port at all: no SNAT anywhere, and nobody serves host-n's FIP.
        if let Some(p) = v["ports"].as_array_mut() {
            p.retain(|p| p["id"] != "r1-snat1");
        }
        let a = compiled(&v, "host-a", &snat_taps);
        assert!(a.entries.snat_steer.is_empty());
        let s = compiled(&v, "host-s", &snat_taps);
        assert!(s.entries.snat_routers.is_empty() && s.entries.snat_ips.is_empty());
        assert!(s.snat_router_names.is_empty() && s.served_fips.is_empty());
        assert!(s.entries.routes.is_empty());
        assert_eq!(
            s.entries.fips.get(&ip(10, 5, 2, 7)),
            Some(&fip_known(ip(192, 168, 1, 40), FVNI1))
        );
        // A router without external_gateway_info neither steers nor is SNATed.
        let mut v = snat_fixture_with_vms();
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"] = Value::Null;
        for host in ["host-a", "host-s"] {
            let c = compiled(&v, host, &snat_taps);
            assert!(c.entries.snat_steer.is_empty(), "{host}");
            assert!(c.entries.snat_routers.is_empty(), "{host}");
        }
    }

    #[test]
    fn snat_router_next_hop_is_the_gateway_of_its_address_subnet() {
        let mut v = snat_fixture();
        push(
            &mut v,
            "subnets",
            json!({"id": "ext-sub2", "network_id": "ext", "cidr": "10.6.0.0/16", "gateway_ip": "10.6.0.1", "ip_version": 4}),
        );
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"]["external_fixed_ips"] =
            json!([{"subnet_id": "ext-sub2", "ip_address": "10.6.0.10"}]);
        let c = compiled(&v, "host-s", &snat_taps);
        let r = SnatRouter {
            ext_ip_be: ip(10, 6, 0, 10),
            ext_gw_ip_be: ip(10, 6, 0, 1),
            ..snat_r1(SNAT_ENABLED)
        };
        assert_eq!(c.entries.snat_ips, BTreeMap::from([(ip(10, 6, 0, 10), r)]));
        assert_eq!(
            c.entries.ext_neigh,
            BTreeSet::from([ip(10, 5, 0, 1), ip(10, 6, 0, 1)])
        );
        assert_eq!(
            c.external.map(|x| x.gateways),
            Some(BTreeSet::from([v4(10, 5, 0, 1), v4(10, 6, 0, 1)]))
        );
        elem(&mut v, "subnets", "id", "ext-sub2")["gateway_ip"] = Value::Null;
        let err = compile(&state_of(&v), "host-s", &snat_taps);
        assert_eq!(
            err,
            Err(CompileError::SnatNoGateway {
                router: "r1".into(),
                subnet: "ext-sub2".into(),
                address: v4(10, 6, 0, 10),
            })
        );
        assert!(err.err().is_some_and(|e| e.to_string().starts_with(
            "router r1: field `external_gateway_info.external_fixed_ips[0].subnet_id`: subnet ext-sub2"
        )));
    }

    #[test]
    fn snat_router_without_external_address_names_router_and_field() {
        let mut v = snat_fixture();
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"]["external_fixed_ips"] =
            json!([]);
        let state = state_of(&v);
        let err = compile(&state, "host-s", &snat_taps);
        assert_eq!(
            err,
            Err(CompileError::SnatNoExternalIp {
                router: "r1".into(),
                host: "host-s".into(),
            })
        );
        assert!(
            err.err().is_some_and(|e| e
                .to_string()
                .starts_with("router r1: field `external_gateway_info.external_fixed_ips`: empty"))
        );
        // Steering does not need the address.
        let a = compile(&state, "host-a", &snat_taps);
        assert_eq!(a.map(|c| c.entries.snat_steer.len()), Ok(1));
    }

    #[test]
    fn snat_ports_validate_against_hosts() {
        let errors = |v: &Value| match State::from_json(&v.to_string()) {
            Ok(_) => panic!("validated"),
            Err(e) => e.to_string(),
        };
        // On two dvr_snat hosts.
        let mut v = snat_fixture();
        elem(&mut v, "ports", "id", "r1-snat2")["binding:host_id"] = "host-b".into();
        assert_eq!(
            errors(&v),
            "port r1-snat2: field `binding:host_id`: router r1 has its centralized SNAT ports \
             on two hosts: port r1-snat1 on host host-s, this one on host host-b"
        );
        // All on a dvr host.
        let mut v = snat_fixture();
        for id in ["r1-snat1", "r1-snat2"] {
            elem(&mut v, "ports", "id", id)["binding:host_id"] = "host-a".into();
        }
        let text = errors(&v);
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
        assert!(errors(&v).contains("host host-n is agent_mode dvr_no_external"));
    }

    // VIPs: snat_fixture plus the unbound port "vip" 192.168.2.100 on n2 (r1's subnet s2)
    // with FIP 10.5.2.9, held in turn by vmb (host-b, exact address, its own MAC) and vma2
    // (host-a, n2, a /30 with an explicit MAC); and the unbound port "novip" 192.168.2.120
    // that no VM lists, with FIP 10.5.2.10.
    const IFX_VMA2: u32 = 35;
    const MAC_VMA2: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x1a];
    const MAC_VIP: Mac = [0xfa, 0x16, 0x3e, 0, 9, 1];
    const MAC_VIP_PAIR: Mac = [0xfa, 0x16, 0x3e, 0, 9, 0x1a];

    fn vip_fixture() -> Value {
        let mut v = snat_fixture();
        for (id, ip, mac) in [
            ("vip", "192.168.2.100", "fa:16:3e:00:09:01"),
            ("novip", "192.168.2.120", "fa:16:3e:00:09:02"),
        ] {
            push(
                &mut v,
                "ports",
                json!({"id": id, "network_id": "n2", "mac_address": mac,
                    "fixed_ips": [{"subnet_id": "s2", "ip_address": ip}], "device_owner": ""}),
            );
        }
        elem(&mut v, "ports", "id", "vmb")["allowed_address_pairs"] =
            json!([{"ip_address": "192.168.2.100"}]);
        push(
            &mut v,
            "ports",
            json!({"id": "vma2", "network_id": "n2", "mac_address": "fa:16:3e:00:00:1a",
                "fixed_ips": [{"subnet_id": "s2", "ip_address": "192.168.2.10"}],
                "device_owner": "compute:nova", "binding:host_id": "host-a",
                "allowed_address_pairs": [
                    {"ip_address": "192.168.2.100/30", "mac_address": "fa:16:3e:00:09:1a"}]}),
        );
        for (id, fip, port) in [
            ("fip-v", "10.5.2.9", "vip"),
            ("fip-nv", "10.5.2.10", "novip"),
        ] {
            push(
                &mut v,
                "floatingips",
                json!({"id": id, "floating_ip_address": fip, "floating_network_id": "ext",
                    "port_id": port}),
            );
        }
        v
    }

    fn vip_taps(tap: &str) -> Option<u32> {
        if tap == "tapvma2" {
            Some(IFX_VMA2)
        } else {
            snat_taps(tap)
        }
    }

    fn vip_key(ip_be: u32, mac: Mac) -> VipKey {
        VipKey {
            vni: FVNI2,
            ip_be,
            mac,
            _pad: [0; 2],
        }
    }

    fn vip_cand(ifindex: u32, tunnel_ip_host: u32) -> VipCandidate {
        VipCandidate {
            ifindex,
            tunnel_ip_host,
        }
    }

    #[test]
    fn vip_fip_is_served_centrally_on_the_snat_host() {
        let c = compiled(&vip_fixture(), "host-s", &vip_taps);
        let e = &c.entries;
        let vip_be = ip(192, 168, 2, 100);
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 9)),
            Some(&FipEntry {
                fixed_ip_be: vip_be,
                vni: FVNI2,
                router_id: fnv1a32("r1"),
                ifindex: 0,
                tunnel_ip_host: 0,
                port_mac: MAC_VIP,
                gw_mac: MAC_R1N2,
                flags: FIP_CENTRAL | FIP_VIP,
            })
        );
        assert_eq!(
            e.fip_src.get(&IpKey {
                vni: FVNI2,
                ip_be: vip_be
            }),
            Some(&FipSrc {
                fip_be: ip(10, 5, 2, 9),
                ext_gw_ip_be: ip(10, 5, 0, 1),
                router_id: fnv1a32("r1"),
                flags: 0
            })
        );
        assert_eq!(
            c.served_fips.get(&v4(10, 5, 2, 9)),
            Some(&v4(192, 168, 2, 100))
        );
        // Both candidates, over the tunnel: host-s serves no VM of n2.
        assert_eq!(
            e.vip_cand,
            BTreeMap::from([
                (vip_key(vip_be, MAC_VMB), vip_cand(0, TUN_B)),
                (vip_key(vip_be, MAC_VIP_PAIR), vip_cand(0, TUN_A)),
            ])
        );
        assert!(!e.flood.contains_key(&FVNI2));
        // An unbound port no VM lists is no VIP: its FIP stays known and not served.
        assert_eq!(
            e.fips.get(&ip(10, 5, 2, 10)),
            Some(&fip_known(ip(192, 168, 2, 120), FVNI2))
        );
        assert!(!e.fip_src.contains_key(&IpKey {
            vni: FVNI2,
            ip_be: ip(192, 168, 2, 120)
        }));
        assert!(!c.served_fips.contains_key(&v4(10, 5, 2, 10)));
        // The rest of host-s's FIPs is unchanged.
        let before = compiled(&snat_fixture(), "host-s", &snat_taps);
        for (fip, entry) in &before.entries.fips {
            assert_eq!(e.fips.get(fip), Some(entry), "{fip:#x}");
        }
        assert_eq!(e.fips.len(), before.entries.fips.len() + 2);
    }

    #[test]
    fn vip_candidates_and_flooding_on_compute_hosts() {
        let v = vip_fixture();
        let vip_be = ip(192, 168, 2, 100);
        let a = compiled(&v, "host-a", &vip_taps);
        assert_eq!(
            a.entries.vip_cand,
            BTreeMap::from([
                (vip_key(vip_be, MAC_VMB), vip_cand(0, TUN_B)),
                (vip_key(vip_be, MAC_VIP_PAIR), vip_cand(IFX_VMA2, 0)),
            ])
        );
        // vma2 holds the VIP with its pair's MAC, not its own.
        assert!(!a.entries.vip_cand.contains_key(&vip_key(vip_be, MAC_VMA2)));
        // host-s must see the holder's broadcast ARP.
        assert_eq!(
            a.entries.flood.get(&FVNI2),
            Some(&flood(&[IFX_VMA2], &[TUN_B, TUN_S]))
        );
        // n1 has no VIP: its flood set is untouched.
        assert_eq!(
            a.entries.flood.get(&FVNI1),
            Some(&flood(&[IFX_VMA], &[TUN_C, TUN_N]))
        );
        // Known on host-a, never REMOTE: the VIP FIP is host-s's.
        assert_eq!(
            a.entries.fips.get(&ip(10, 5, 2, 9)),
            Some(&fip_known(vip_be, FVNI2))
        );
        assert!(!a.served_fips.contains_key(&v4(10, 5, 2, 9)));
        let b = compiled(&v, "host-b", &vip_taps);
        assert_eq!(
            b.entries.vip_cand,
            BTreeMap::from([
                (vip_key(vip_be, MAC_VMB), vip_cand(IFX_VMB, 0)),
                (vip_key(vip_be, MAC_VIP_PAIR), vip_cand(0, TUN_A)),
            ])
        );
        assert_eq!(
            b.entries.flood.get(&FVNI2),
            Some(&flood(&[IFX_VMB], &[TUN_A, TUN_S]))
        );
        assert_eq!(
            b.entries.fips.get(&ip(10, 5, 2, 9)).map(|f| f.flags),
            Some(0)
        );
        // host-c and host-n serve only n1 and are not r1's SNAT host.
        for host in ["host-c", "host-n"] {
            let c = compiled(&v, host, &vip_taps);
            assert!(c.entries.vip_cand.is_empty(), "{host}");
            assert!(!c.entries.fips.contains_key(&ip(10, 5, 2, 9)), "{host}");
            assert!(
                c.entries
                    .flood
                    .values()
                    .all(|f| f.n_remote == 0 || !f.remote[..f.n_remote as usize].contains(&TUN_S)),
                "{host}"
            );
        }
    }

    #[test]
    fn vip_candidate_with_absent_tap_is_skipped() {
        let no_vma2 = |tap: &str| {
            if tap == "tapvma2" {
                None
            } else {
                vip_taps(tap)
            }
        };
        let a = compiled(&vip_fixture(), "host-a", &no_vma2);
        let vip_be = ip(192, 168, 2, 100);
        assert_eq!(
            a.entries.vip_cand,
            BTreeMap::from([(vip_key(vip_be, MAC_VMB), vip_cand(0, TUN_B))])
        );
        // host-a still serves n2 (the tap is listed): the SNAT host stays a flood target.
        assert_eq!(
            a.entries.flood.get(&FVNI2),
            Some(&flood(&[], &[TUN_B, TUN_S]))
        );
    }

    #[test]
    fn vip_without_fip_has_candidates_but_no_flood_target() {
        let mut v = vip_fixture();
        if let Some(f) = v["floatingips"].as_array_mut() {
            f.retain(|f| f["id"] != "fip-v");
        }
        let a = compiled(&v, "host-a", &vip_taps);
        assert_eq!(a.entries.vip_cand.len(), 2);
        assert_eq!(
            a.entries.flood.get(&FVNI2),
            Some(&flood(&[IFX_VMA2], &[TUN_B]))
        );
        let s = compiled(&v, "host-s", &vip_taps);
        assert_eq!(s.entries.vip_cand.len(), 2);
        assert!(s.served_fips.keys().all(|f| *f != v4(10, 5, 2, 9)));
    }

    #[test]
    fn snat_host_never_floods_to_itself() {
        // host-s with its own VM on n2: its candidates' ARP reaches it through the flood sets
        // of host-a and host-b; it never floods to itself.
        let mut v = vip_fixture();
        push(
            &mut v,
            "ports",
            json!({"id": "vms2", "network_id": "n2", "mac_address": "fa:16:3e:00:00:2d",
                "fixed_ips": [{"subnet_id": "s2", "ip_address": "192.168.2.50"}],
                "device_owner": "compute:nova", "binding:host_id": "host-s"}),
        );
        let taps = |tap: &str| {
            if tap == "tapvms2" {
                Some(36)
            } else {
                vip_taps(tap)
            }
        };
        let s = compiled(&v, "host-s", &taps);
        assert_eq!(
            s.entries.flood.get(&FVNI2),
            Some(&flood(&[36], &[TUN_A, TUN_B]))
        );
        let a = compiled(&v, "host-a", &taps);
        assert_eq!(
            a.entries.flood.get(&FVNI2),
            Some(&flood(&[IFX_VMA2], &[TUN_B, TUN_S]))
        );
    }

    #[test]
    fn vip_needs_an_unowned_unbound_port_a_router_interface_and_a_listing_vm() {
        // A VM allowing everything makes every unowned unbound address of its network a VIP,
        // but never the router's interface or csnat port (both unbound or service-owned).
        let mut v = vip_fixture();
        elem(&mut v, "ports", "id", "vmb")["allowed_address_pairs"] =
            json!([{"ip_address": "0.0.0.0/0"}]);
        let s = compiled(&v, "host-s", &vip_taps);
        let ips: BTreeSet<u32> = s.entries.vip_cand.keys().map(|k| k.ip_be).collect();
        assert_eq!(
            ips,
            BTreeSet::from([ip(192, 168, 2, 100), ip(192, 168, 2, 120)])
        );
        assert_eq!(
            s.entries.fips.get(&ip(10, 5, 2, 10)).map(|f| f.flags),
            Some(FIP_CENTRAL | FIP_VIP)
        );
        // A VM on another network listing the address is no candidate.
        let mut v = vip_fixture();
        elem(&mut v, "ports", "id", "vmb")["allowed_address_pairs"] = json!([]);
        elem(&mut v, "ports", "id", "vma2")["allowed_address_pairs"] = json!([]);
        elem(&mut v, "ports", "id", "vma")["allowed_address_pairs"] =
            json!([{"ip_address": "192.168.2.100"}]);
        let s = compiled(&v, "host-s", &vip_taps);
        assert!(s.entries.vip_cand.is_empty());
        assert_eq!(
            s.entries.fips.get(&ip(10, 5, 2, 9)),
            Some(&fip_known(ip(192, 168, 2, 100), FVNI2))
        );
        // A subnet without a router interface has no VIPs.
        let mut v = vip_fixture();
        if let Some(p) = v["ports"].as_array_mut() {
            p.retain(|p| p["id"] != "r1-n2");
        }
        for host in ["host-s", "host-a"] {
            let c = compiled(&v, host, &vip_taps);
            assert!(c.entries.vip_cand.is_empty(), "{host}");
        }
    }

    #[test]
    fn scales_to_100k_ports() {
        // 1,000 networks of 100 VM ports on 50 hosts, one router per 10 networks.
        let mut networks = Vec::new();
        let mut subnets = Vec::new();
        let mut ports = Vec::new();
        let mut routers = Vec::new();
        let hosts: Vec<Value> = (0..50)
            .map(|h| json!({"name": format!("h{h}"), "agent_mode": "dvr",
                "tunnel_ip": format!("10.255.0.{}", h + 1), "dvr_mac": format!("fa:16:3f:00:00:{:02x}", h + 1)}))
            .collect();
        for n in 0..1000u32 {
            let (b2, b3) = (n / 256, n % 256);
            networks.push(json!({"id": format!("n{n}"), "provider:network_type": "vxlan", "provider:segmentation_id": n + 1}));
            subnets.push(json!({"id": format!("s{n}"), "network_id": format!("n{n}"), "cidr": format!("10.{b2}.{b3}.0/24"), "ip_version": 4}));
            if n % 10 == 0 {
                routers.push(json!({"id": format!("r{}", n / 10)}));
            }
            ports.push(json!({"id": format!("rif{n}"), "network_id": format!("n{n}"), "mac_address": format!("fa:16:3e:ff:{b2:02x}:{b3:02x}"),
                "fixed_ips": [{"subnet_id": format!("s{n}"), "ip_address": format!("10.{b2}.{b3}.1")}],
                "device_owner": "network:router_interface_distributed", "device_id": format!("r{}", n / 10)}));
            for p in 0..100u32 {
                ports.push(json!({"id": format!("p{n}-{p}"), "network_id": format!("n{n}"),
                    "mac_address": format!("fa:16:3e:{:02x}:{b2:02x}:{b3:02x}", p),
                    "fixed_ips": [{"subnet_id": format!("s{n}"), "ip_address": format!("10.{b2}.{b3}.{}", p + 10)}],
                    "device_owner": "compute:nova", "binding:host_id": format!("h{}", (n * 7 + p) % 50)}));
            }
        }
        let v = json!({"networks": networks, "subnets": subnets, "ports": ports, "routers": routers, "hosts": hosts});
        let start = std::time::Instant::now();
        let state = state_of(&v);
        let every_tap = |tap: &str| Some(fnv1a32(tap));
        let c = match compile(&state, "h0", &every_tap) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(state.ports().len(), 101_000);
        assert_eq!(c.taps.len(), 2000);
        assert_eq!(c.entries.flood.len(), 1000);
        // Generous even for an unoptimised build on a slow machine; quadratic would take minutes.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
    }
}
