//! What every step of one host's compile reads: the host's view of the state, built once
//! ([`Compiler`]), and the lookups several map families share (router interfaces, where a
//! VM port is, what a floating IP resolves to).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::CompileError;
use dvr_common::route::ROUTER_DOWN;

use super::ha::HaRuntime;
use crate::model::{FloatingIp, Host, Mac, Network, Port, State, Subnet, Subnet6};

/// The VNI of a network that is a tenant network.
pub(super) fn vni_of(state: &State, network_id: &str) -> Option<u32> {
    state.network(network_id).and_then(Network::tenant_vni)
}

/// The `mtu` of a network, as the datapath holds it (capped to 16 bits).
pub(super) fn network_mtu(state: &State, network_id: &str) -> u16 {
    let mtu = state.network(network_id).map_or(0, |n| n.mtu);
    u16::try_from(mtu).unwrap_or(u16::MAX)
}

/// `RouterIface::flags` of a router.
pub(super) fn router_flags(state: &State, router_id: &str) -> u16 {
    if state.router(router_id).is_some_and(|r| !r.admin_state_up) {
        ROUTER_DOWN
    } else {
        0
    }
}

/// A DVR router interface on a tenant network.
pub(super) struct Iface<'s> {
    pub(super) port: &'s Port,
    pub(super) router_id: &'s str,
    pub(super) subnet: &'s Subnet,
    pub(super) network_id: &'s str,
    pub(super) vni: u32,
    pub(super) ip: Ipv4Addr,
}

/// A DVR router interface port with IPv6 addresses, on a tenant network (a router's IPv6
/// subnets of one network share one port; the model checks it).
pub(super) struct Iface6<'s> {
    pub(super) port: &'s Port,
    pub(super) router_id: &'s str,
    pub(super) network_id: &'s str,
    pub(super) vni: u32,
    /// Its IPv6 subnets and its address on each, in `fixed_ips` order.
    pub(super) subnets: Vec<(&'s Subnet6, Ipv6Addr)>,
}

/// Where a VM port is, seen from the compiling host: `(ifindex, tunnel ip host order)`.
/// `None` for a local port whose tap does not exist (it gets no entries yet).
pub(super) type Location = Option<(u32, u32)>;

/// The compiling host's view of the state.
pub(super) struct Compiler<'s> {
    pub(super) state: &'s State,
    /// The election view (etcd mode); `None` with a state file.
    pub(super) ha: Option<&'s HaRuntime>,
    /// The compiling host.
    pub(super) me: &'s Host,
    /// `me.name`.
    pub(super) host: &'s str,
    /// Tunnel ip (host order) per host name.
    pub(super) tunnel_of: HashMap<&'s str, u32>,
    /// Existing local taps: port id -> ifindex.
    pub(super) local_ifindex: HashMap<&'s str, u32>,
    /// Served networks: tenant networks with a local VM port.
    pub(super) served: HashSet<&'s str>,
    /// DVR router interfaces on tenant networks, in state order.
    pub(super) ifaces: Vec<Iface<'s>>,
    /// Subnet id -> (router id, interface MAC) of the distributed interface on it.
    pub(super) iface_of_subnet: HashMap<&'s str, (&'s str, Mac)>,
    /// DVR router interface ports with IPv6 addresses on tenant networks, in state order.
    pub(super) ifaces6: Vec<Iface6<'s>>,
    /// IPv6 subnet id -> (router id, interface MAC) of the distributed interface on it.
    pub(super) iface6_of_subnet: HashMap<&'s str, (&'s str, Mac)>,
}

impl<'s> Compiler<'s> {
    /// `local_ifindex` and `served` come from the host's local VM ports.
    pub(super) fn new(
        state: &'s State,
        ha: Option<&'s HaRuntime>,
        me: &'s Host,
        local_ifindex: HashMap<&'s str, u32>,
        served: HashSet<&'s str>,
    ) -> Self {
        let tunnel_of: HashMap<&str, u32> = state
            .hosts()
            .iter()
            .map(|h| (h.name.as_str(), u32::from(h.tunnel_ip)))
            .collect();
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
        let iface_of_subnet = ifaces
            .iter()
            .map(|i| (i.subnet.id.as_str(), (i.router_id, i.port.mac)))
            .collect();
        let ifaces6: Vec<Iface6> = state
            .ports()
            .iter()
            .filter(|p| p.is_distributed_interface() && !p.fixed_ips6.is_empty())
            .filter_map(|port| {
                let subnets = port
                    .fixed_ips6
                    .iter()
                    .filter_map(|f| Some((state.subnet6(&f.subnet_id)?, f.ip)))
                    .collect();
                Some(Iface6 {
                    port,
                    router_id: &port.device_id,
                    network_id: &port.network_id,
                    vni: vni_of(state, &port.network_id)?,
                    subnets,
                })
            })
            .collect();
        let iface6_of_subnet = ifaces6
            .iter()
            .flat_map(|i| {
                i.subnets
                    .iter()
                    .map(move |(s, _)| (s.id.as_str(), (i.router_id, i.port.mac)))
            })
            .collect();
        Compiler {
            state,
            ha,
            me,
            host: &me.name,
            tunnel_of,
            local_ifindex,
            served,
            ifaces,
            iface_of_subnet,
            ifaces6,
            iface6_of_subnet,
        }
    }

    pub(super) fn location(&self, port: &'s Port) -> Location {
        let host = port.host_id.as_deref()?;
        if host == self.host {
            self.local_ifindex
                .get(port.id.as_str())
                .map(|&ifindex| (ifindex, 0))
        } else {
            self.tunnel_of.get(host).map(|&tunnel| (0, tunnel))
        }
    }

    /// The MAC of the distributed router interface on a subnet.
    pub(super) fn gw_mac_of_subnet(&self, subnet_id: &str) -> Option<Mac> {
        self.iface_of_subnet.get(subnet_id).map(|&(_, mac)| mac)
    }

    /// The MAC of the distributed router interface on an IPv6 subnet.
    pub(super) fn gw_mac6_of_subnet(&self, subnet_id: &str) -> Option<Mac> {
        self.iface6_of_subnet.get(subnet_id).map(|&(_, mac)| mac)
    }
}

/// The tenant networks this host needs to know about (served or routed, see the module
/// doc), in state order with their VNIs, and their VM ports.
pub(super) struct Networks<'s> {
    pub(super) list: Vec<(&'s Network, u32)>,
    /// Network id -> its VM ports, in state order.
    vm_ports: HashMap<&'s str, Vec<&'s Port>>,
}

impl<'s> Networks<'s> {
    pub(super) fn of(c: &Compiler<'s>, routed: &HashSet<&str>) -> Self {
        let needed = |net: &str| c.served.contains(net) || routed.contains(net);
        let mut vm_ports: HashMap<&str, Vec<&Port>> = HashMap::new();
        for port in c.state.ports() {
            let net = port.network_id.as_str();
            if port.is_vm() && needed(net) {
                vm_ports.entry(net).or_default().push(port);
            }
        }
        let list = c
            .state
            .networks()
            .iter()
            .filter_map(|n| Some((n, n.tenant_vni()?)))
            .filter(|(n, _)| needed(n.id.as_str()))
            .collect();
        Networks { list, vm_ports }
    }

    /// The VM ports of a network this host needs, in state order.
    pub(super) fn vm_ports(&self, network_id: &str) -> &[&'s Port] {
        self.vm_ports.get(network_id).map_or(&[][..], Vec::as_slice)
    }
}

/// An associated floating IP with everything it resolves to.
pub(super) struct FipTarget<'s> {
    pub(super) port: &'s Port,
    pub(super) fixed: Ipv4Addr,
    pub(super) subnet_id: &'s str,
    pub(super) vni: u32,
    pub(super) router_id: &'s str,
    /// MAC of the router's distributed interface on the fixed IP's subnet.
    gw_mac: Option<Mac>,
}

impl<'s> FipTarget<'s> {
    /// `None` when the FIP counts as unassociated: no port, no fixed IP, a port off any tenant
    /// network, or no router.
    pub(super) fn of(c: &Compiler<'s>, fip: &'s FloatingIp) -> Option<Self> {
        let state = c.state;
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
        let iface = c.iface_of_subnet.get(subnet_id).copied();
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

    pub(super) fn gw_mac(&self, fip: &FloatingIp) -> Result<Mac, CompileError> {
        self.gw_mac
            .ok_or_else(|| CompileError::FipRouterNotOnSubnet {
                floatingip: fip.id.clone(),
                router: self.router_id.into(),
                subnet: self.subnet_id.into(),
                fixed: self.fixed,
            })
    }
}
