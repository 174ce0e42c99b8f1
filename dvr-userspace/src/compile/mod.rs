//! (validated state, host, election view) -> the exact map entries that host needs. Pure: no
//! kernel access; the only view of the host is `ifindex_of`, which says which taps exist, and
//! the only view of the HA election is the [`HaRuntime`] the agent passes in.
//!
//! Terms used in this module, for a host H:
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
//! One module per map family, as in `dvr_common`: `port` (local ports, port security),
//! `l2` (fdb, flood, DVR MACs, tunnel peers), `route` (gateways, routes, endpoints),
//! `ip6` (the IPv6 endpoints, routes, gateways, port security and router advertisements),
//! `snat` (centralized SNAT), `fip` (floating IPs and the external side), `vip`
//! (VIP candidates), `ha` (the election view and HA roles) and `sg` (security group
//! policies, with `sg_lookup` the check the datapath makes on them); each states its rules.
//! `context` holds what they share, `entries` the desired map contents. [`compile`] runs
//! them in order.
//!
//! Runs in time linear in the state (plus sorting): every lookup goes through an index built
//! once, so states with 100,000 ports compile quickly.

mod context;
mod entries;
mod error;
mod fip;
mod ha;
mod ip6;
mod l2;
mod port;
mod route;
mod sg;
mod sg_lookup;
mod snat;
mod vip;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use dvr_common::config::HostConfig;

pub use entries::{MapEntries, fnv1a32};
pub use error::CompileError;
pub use fip::External;
pub use ha::{HaCandidate, HaRole, HaRuntime};
pub use port::tap_name;
pub use sg::{sg_class_id, sg_policy_id};
pub use sg_lookup::{
    SgRemotes, icmp_port_be, sg_admit, sg_class, sg_class6, sg_entries_canonical,
    sg_remote6_canonical, sg_rule,
};

use crate::model::{Host, State};
use context::{Compiler, Networks};
use entries::be;
use fip::ExtSide;
use ip6::MyRouters6;
use port::LocalPorts;
use route::MyRouters;
use snat::Csnat;
use vip::Vips;

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

/// Compile the entries of `host`. `ha` is the election view (etcd mode; `None` with a state
/// file: HA routers are then served statically by their most preferred candidate).
/// `ifindex_of(tap name)` is the ifindex of a tap that exists.
pub fn compile(
    state: &State,
    host: &str,
    ha: Option<&HaRuntime>,
    ifindex_of: &dyn Fn(&str) -> Option<u32>,
) -> Result<Compiled, CompileError> {
    let me = state
        .host(host)
        .ok_or_else(|| CompileError::UnknownHost { host: host.into() })?;
    let local = LocalPorts::of(state, &me.name, ifindex_of)?;
    let c = Compiler::new(state, ha, me, local.ifindex, local.served);
    let csnat = Csnat::of(&c);
    let vips = Vips::of(&c);
    let snat_here = snat::routers_served_here(&c, &csnat);
    let routers = MyRouters::of(&c, &snat_here)?;
    let routers6 = MyRouters6::of(&c, &routers.mine)?;
    let routed_any: HashSet<&str> = routers.routed.union(&routers6.routed).copied().collect();
    let networks = Networks::of(&c, &routed_any);

    let mut out = MapEntries::default();
    port::add_local_ports(&mut out, &local.present);
    sg::add_security_groups(&mut out, state, &local.present)?;
    let vip_flood = vip::vip_flood_targets(&c, &csnat, &vips);
    l2::add_served_networks(&mut out, &c, &networks, &vip_flood)?;
    route::add_endpoints(&mut out.endpoints, &c, &networks, &routers.routed);
    l2::add_hosts(&mut out, &c);
    route::add_routes(&mut out, &c, &routers.mine);
    route::add_extra_routes(&mut out, &c, &networks, &routers.routed, &routers.mine);
    ip6::add_ip6(&mut out, &c, &networks, &routers6, &local.present)?;
    snat::add_snat_steer(&mut out.snat_steer, &c, &csnat);
    vip::add_vip_candidates(&mut out.vip_cand, &c, &csnat, &vips);
    let ext = ExtSide::of(state, me);
    let snat_ids: HashSet<&str> = snat_here.iter().map(|(r, _)| r.id.as_str()).collect();
    let (served_fips, mut gateways) =
        fip::add_floating_ips(&mut out, &c, ext.as_ref(), &vips, &routers.mine, &snat_ids)?;
    let snat_router_names =
        snat::add_snat_routers(&mut out, &c, &csnat, &snat_here, &mut gateways)?;
    let external = ext.map(|ext| fip::add_external(&mut out, &c, ext, &routers.mine, gateways));
    if let Some((map, entries, capacity)) = out.over_capacity() {
        return Err(CompileError::Capacity {
            host: host.to_string(),
            map,
            entries,
            capacity,
        });
    }

    Ok(Compiled {
        config: host_config(me, external.as_ref()),
        taps: local.taps,
        entries: out,
        external,
        served_fips,
        snat_router_names,
        ha: ha::ha_roles(state, host, || fip::central_fips(&c, &vips)),
    })
}

/// The host's datapath settings the state decides; the agent fills in the rest.
fn host_config(me: &Host, external: Option<&External>) -> HostConfig {
    HostConfig {
        tunnel_ifindex: 0,
        tunnel_ip_host: u32::from(me.tunnel_ip),
        dvr_mac: me.dvr_mac,
        ready: 1,
        flags: 0,
        ext_ifindex: 0,
        fg_ip_be: external.and_then(|e| e.fg_ip).map_or(0, be),
        ext_mac: [0; 6],
        _pad2: [0; 2],
        snat_port_min: 0,
        snat_port_max: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::entries::fdb_key;
    use super::*;
    use crate::model::Mac;
    use crate::testing::*;
    use dvr_common::l2::MacKey;
    use dvr_common::port::{
        LocalPort, PORT_FLAG_SECURITY, PORT_FLAG_SG, SEC_IP_ALLOWED, SEC_MAC_ONLY, SecKey,
    };
    use dvr_common::route::{IpKey, Route, RouterIface};
    use serde_json::{Value, json};

    fn router1(ip_be: u32, mac: Mac) -> RouterIface {
        RouterIface {
            router_id: fnv1a32("router1"),
            ip_be,
            mac,
            flags: 0,
        }
    }

    #[test]
    fn unknown_host_is_an_error() {
        let state = state_of(&fixture_value());
        assert_eq!(
            compile(&state, "host-z", None, &all_taps),
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
                flags: 0,
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
                        flags: PORT_FLAG_SECURITY | PORT_FLAG_SG,
                        mac: MAC_VM1,
                        _pad: [0; 2],
                        port_id: fnv1a32("vm1"),
                        policy: fnv1a32("sg1")
                    }
                ),
                (
                    IFX_VM2,
                    LocalPort {
                        vni: VNI2,
                        flags: PORT_FLAG_SECURITY,
                        mac: MAC_VM2,
                        _pad: [0; 2],
                        port_id: fnv1a32("vm2"),
                        policy: 0
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
                        mtu: 1450,
                        nexthop_be: 0,
                    }
                ),
                (
                    route_key(56, "router1", ip(10, 0, 2, 0)),
                    Route {
                        vni: VNI2,
                        gw_ip_be: ip(10, 0, 2, 1),
                        gw_mac: MAC_RIF2,
                        mtu: 1450,
                        nexthop_be: 0,
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
        // *_be fields hold the address bytes in packet order; *_host fields the integer.
        assert_eq!(ip(10, 0, 1, 10).to_ne_bytes(), [10, 0, 1, 10]);
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
    fn scales_to_100k_ports() {
        // 1,000 networks of 100 VM ports on 50 hosts, one router per 10 networks; each
        // network's ports on 5 hosts (a host with ports on every network would need 100,000
        // FDB entries, past the map's capacity, and is refused: see `over_capacity`).
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
                    "device_owner": "compute:nova", "binding:host_id": format!("h{}", (n % 10) * 5 + p % 5)}));
            }
        }
        let v = json!({"networks": networks, "subnets": subnets, "ports": ports, "routers": routers, "hosts": hosts});
        let start = std::time::Instant::now();
        let state = state_of(&v);
        let every_tap = |tap: &str| Some(fnv1a32(tap));
        let c = match compile(&state, "h0", None, &every_tap) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(state.ports().len(), 101_000);
        assert_eq!(c.taps.len(), 2000);
        assert_eq!(c.entries.flood.len(), 100);
        // Generous even for an unoptimised build on a slow machine; quadratic would take minutes.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
    }
}
