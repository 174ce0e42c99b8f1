//! Routing inside the routers of this host: their interfaces on served networks
//! (`gw_by_mac`, `gw_by_ip`), their subnets (`routes`) and the VM ports on the networks
//! they route (`endpoints`).
//!
//! The *routers of H* are the routers with a distributed interface on a served network,
//! and the routers H does SNAT for; a *routed network* is a tenant network with an
//! interface of a router of H.
//!
//! A router's extra `routes` ([`Router::routes`], validated by the model) are `routes`
//! entries too, with the next hop's network and address: the datapath takes the longest
//! prefix over the connected subnets and the extra routes, and delivers to the port holding
//! the next hop (its fixed IP, or else an allowed address pair holding it: `endpoints` gets
//! an entry for it), here or across the tunnel. A connected subnet wins over an extra
//! route to the same prefix; of several next hops for one destination (Neutron's ECMP) the
//! first listed is used.
//!
//! A router with `admin_state_up: false` keeps its entries, its interfaces flagged
//! [`ROUTER_DOWN`]: the datapath drops (and counts) what its VMs send to it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use dvr_common::route::{Endpoint, IpKey, ROUTE_KEY_PREFIX_BITS, Route, RouteKey, RouterIface};

use super::context::{Compiler, Iface, Networks, network_mtu, router_flags};
use super::entries::{MapEntries, be, fdb_key, fnv1a32};
use super::error::CompileError;
use crate::model::{ExternalGateway, Port, Router, State};

/// The routers of this host and the networks they route.
pub(super) struct MyRouters<'s> {
    /// Router ids.
    pub(super) mine: HashSet<&'s str>,
    /// Network ids.
    pub(super) routed: HashSet<&'s str>,
}

impl<'s> MyRouters<'s> {
    /// `snat_here`: the routers this host does SNAT for.
    pub(super) fn of(
        c: &Compiler<'s>,
        snat_here: &[(&'s Router, &'s ExternalGateway)],
    ) -> Result<Self, CompileError> {
        let mine = snat_here.iter().map(|(r, _)| r.id.as_str()).collect();
        let ifaces = c.ifaces.iter().map(|i| (i.router_id, i.network_id));
        Self::with(c, mine, ifaces)
    }

    /// `mine` and the routers with an interface on a served network, and the networks
    /// their interfaces are on. `ifaces`: (router, network) of each interface of one
    /// family.
    pub(super) fn with(
        c: &Compiler<'s>,
        mut mine: HashSet<&'s str>,
        ifaces: impl Iterator<Item = (&'s str, &'s str)> + Clone,
    ) -> Result<Self, CompileError> {
        mine.extend(
            ifaces
                .clone()
                .filter(|&(_, network)| c.served.contains(network))
                .map(|(router, _)| router),
        );
        let routed = ifaces
            .filter(|&(router, _)| mine.contains(router))
            .map(|(_, network)| network)
            .collect();
        check_router_ids(&mine)?;
        Ok(MyRouters { mine, routed })
    }
}

/// The located VM ports of the `routed` networks, each with its VNI and the `endpoints`
/// value of its addresses.
pub(super) fn routed_vm_ports<'a>(
    c: &'a Compiler<'_>,
    networks: &'a Networks<'_>,
    routed: &'a HashSet<&str>,
) -> impl Iterator<Item = (u32, &'a Port, Endpoint)> {
    networks
        .list
        .iter()
        .filter(|(net, _)| routed.contains(net.id.as_str()))
        .flat_map(move |&(net, vni)| {
            networks.vm_ports(&net.id).iter().filter_map(move |&port| {
                let (ifindex, tunnel_ip_host) = c.location(port)?;
                let endpoint = Endpoint {
                    mac: port.mac,
                    _pad: [0; 2],
                    ifindex,
                    tunnel_ip_host,
                };
                Some((vni, port, endpoint))
            })
        })
}

/// `endpoints`: every fixed IP of the located VM ports of the routed networks.
pub(super) fn add_endpoints(
    endpoints: &mut BTreeMap<IpKey, Endpoint>,
    c: &Compiler<'_>,
    networks: &Networks<'_>,
    routed: &HashSet<&str>,
) {
    for (vni, port, endpoint) in routed_vm_ports(c, networks, routed) {
        for fixed in &port.fixed_ips {
            let key = IpKey {
                vni,
                ip_be: be(fixed.ip),
            };
            endpoints.insert(key, endpoint);
        }
    }
}

/// `gw_by_mac` and `gw_by_ip` of the interfaces on served networks, `routes` of the subnets
/// of the routers of this host.
pub(super) fn add_routes(out: &mut MapEntries, c: &Compiler<'_>, mine: &HashSet<&str>) {
    for iface in &c.ifaces {
        if c.served.contains(iface.network_id) {
            let value = router_iface(c.state, iface);
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
        if mine.contains(iface.router_id) {
            let cidr = iface.subnet.cidr;
            let key = RouteKey {
                router_id_be: fnv1a32(iface.router_id).to_be(),
                ip_be: be(cidr.network()),
            };
            let route = route_via(c.state, iface);
            out.routes.insert(
                (ROUTE_KEY_PREFIX_BITS + u32::from(cidr.prefix_len()), key),
                route,
            );
        }
    }
}

/// A route delivering into the network of `iface` (no next hop yet).
fn route_via(state: &State, iface: &Iface<'_>) -> Route {
    Route {
        vni: iface.vni,
        gw_ip_be: be(iface.ip),
        gw_mac: iface.port.mac,
        mtu: network_mtu(state, iface.network_id),
        nexthop_be: 0,
    }
}

/// `routes` of the extra routes (IPv4) of the routers of this host, and `endpoints` for
/// their next hops that are an allowed address pair rather than a fixed IP. Runs after
/// [`add_routes`] and [`add_endpoints`].
pub(super) fn add_extra_routes(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    networks: &Networks<'_>,
    routed: &HashSet<&str>,
    mine: &HashSet<&str>,
) {
    for router in c
        .state
        .routers()
        .iter()
        .filter(|r| mine.contains(r.id.as_str()))
    {
        for extra in &router.routes {
            let (IpNet::V4(dest), IpAddr::V4(nexthop)) = (extra.destination, extra.nexthop) else {
                continue;
            };
            let Some(iface) = c
                .ifaces
                .iter()
                .find(|i| i.router_id == router.id && i.subnet.cidr.contains(&nexthop))
            else {
                continue;
            };
            let key = RouteKey {
                router_id_be: fnv1a32(&router.id).to_be(),
                ip_be: be(dest.network()),
            };
            let route = Route {
                nexthop_be: be(nexthop),
                ..route_via(c.state, iface)
            };
            out.routes
                .entry((ROUTE_KEY_PREFIX_BITS + u32::from(dest.prefix_len()), key))
                .or_insert(route);
            let hop = IpKey {
                vni: iface.vni,
                ip_be: be(nexthop),
            };
            if out.endpoints.contains_key(&hop) {
                continue;
            }
            let holder = routed_vm_ports(c, networks, routed).find(|(vni, port, _)| {
                *vni == iface.vni
                    && port
                        .allowed_address_pairs
                        .iter()
                        .any(|p| p.net.contains(&nexthop))
            });
            if let Some((_, _, endpoint)) = holder {
                out.endpoints.insert(hop, endpoint);
            }
        }
    }
}

fn router_iface(state: &State, iface: &Iface<'_>) -> RouterIface {
    RouterIface {
        router_id: fnv1a32(iface.router_id),
        ip_be: be(iface.ip),
        mac: iface.port.mac,
        flags: router_flags(state, iface.router_id),
    }
}

/// Router ids are 32-bit hashes in the datapath: two routers of one host must not share one.
pub(super) fn check_router_ids(routers: &HashSet<&str>) -> Result<(), CompileError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::testing::*;
    use dvr_common::nat::FIP_ROUTER_DOWN;
    use dvr_common::route::ROUTER_DOWN;
    use serde_json::{Value, json};

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
    fn extra_routes_go_to_their_next_hops_connected_subnets_first() {
        let mut v = fixture_value();
        elem(&mut v, "routers", "id", "router1")["routes"] = json!([
            {"destination": "10.99.0.0/24", "nexthop": "10.0.2.20"},
            // ECMP: the first listed next hop is used.
            {"destination": "10.99.0.0/24", "nexthop": "10.0.2.21"},
            // A connected subnet wins over an extra route to the same prefix.
            {"destination": "10.0.1.0/24", "nexthop": "10.0.2.20"},
            // A next hop held as an allowed address pair (of vm1).
            {"destination": "10.98.0.0/16", "nexthop": "10.0.1.50"}
        ]);
        elem(&mut v, "networks", "id", "net2")["mtu"] = 1400.into();
        elem(&mut v, "ports", "id", "vm1")["allowed_address_pairs"] =
            json!([{"ip_address": "10.0.1.48/29"}]);
        let e = compiled(&v, "host-a", &all_taps).entries;
        let via_vm2 = Route {
            vni: VNI2,
            gw_ip_be: ip(10, 0, 2, 1),
            gw_mac: MAC_RIF2,
            mtu: 1400,
            nexthop_be: ip(10, 0, 2, 20),
        };
        assert_eq!(
            e.routes.get(&route_key(56, "router1", ip(10, 99, 0, 0))),
            Some(&via_vm2)
        );
        assert_eq!(
            e.routes
                .get(&route_key(56, "router1", ip(10, 0, 1, 0)))
                .map(|r| (r.vni, r.nexthop_be, r.mtu)),
            Some((VNI1, 0, 1450))
        );
        assert_eq!(
            e.routes
                .get(&route_key(48, "router1", ip(10, 98, 0, 0)))
                .map(|r| (r.vni, r.nexthop_be)),
            Some((VNI1, ip(10, 0, 1, 50)))
        );
        let vm1 = e.endpoints.get(&IpKey {
            vni: VNI1,
            ip_be: ip(10, 0, 1, 10),
        });
        let hop = e.endpoints.get(&IpKey {
            vni: VNI1,
            ip_be: ip(10, 0, 1, 50),
        });
        assert!(vm1.is_some() && hop == vm1, "{hop:?} {vm1:?}");
        // No other address of the pair becomes an endpoint.
        assert_eq!(e.endpoints.len(), 4);
    }

    #[test]
    fn a_router_administratively_down_is_flagged_and_serves_no_snat() {
        let mut v = fixture_value();
        elem(&mut v, "routers", "id", "router1")["admin_state_up"] = false.into();
        let a = compiled(&v, "host-a", &all_taps).entries;
        assert!(!a.gw_by_mac.is_empty());
        assert!(a.gw_by_mac.values().all(|g| g.flags == ROUTER_DOWN));
        assert!(
            a.fips.values().all(|f| f.flags & FIP_ROUTER_DOWN != 0),
            "{:?}",
            a.fips
        );
        let b = compiled(&v, "host-b", &all_taps).entries;
        assert!(b.snat_routers.is_empty() && b.snat_ips.is_empty());
        elem(&mut v, "routers", "id", "router1")["admin_state_up"] = true.into();
        let a = compiled(&v, "host-a", &all_taps).entries;
        assert!(a.gw_by_mac.values().all(|g| g.flags == 0));
        let b = compiled(&v, "host-b", &all_taps).entries;
        assert!(!b.snat_routers.is_empty());
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
        let err = compile(&state, "host-b", None, &all_taps);
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
        assert!(compile(&state, "host-a", None, &all_taps).is_ok());
    }
}
