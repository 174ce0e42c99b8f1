//! IPv6 beside IPv4: the same choice of entries as `route` and `port` make for IPv4, from
//! the IPv6 addresses of the state (`endpoints6`, `routes6`, `gw_by_ip6`, `port_security6`),
//! the router advertisement of each served network (`ra`), and the `gw_by_mac` entry of a
//! router interface port with only IPv6 addresses. (`fdb`'s `gw_mac6` is filled by `l2`
//! with the other FDB fields.)
//!
//! The *IPv6 routers of H* are the routers of H (see `route`) and the routers with an IPv6
//! distributed interface on a served network; an *IPv6-routed network* is a tenant network
//! with an IPv6 interface of one of them.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use dvr_common::ip6::{
    Ip6Key, RA_PREFIX_MAX, ROUTE6_KEY_PREFIX_BITS, Route6, Route6Key, RouterIface6,
    SEC6_KEY_PREFIX_BITS, Sec6Key, link_local,
};
use dvr_common::port::{SEC_IP_ALLOWED, SEC_MAC_ONLY};
use dvr_common::route::{Endpoint, RouterIface};

use super::context::{Compiler, Iface6, Networks, network_mtu, router_flags};
use super::entries::{MapEntries, fdb_key, fnv1a32};
use super::error::CompileError;
use super::route::{MyRouters, routed_vm_ports};
use crate::model::{Mac, Port};
use crate::ndp::{RaParams, RaPrefix, ra_frame};

/// The IPv6 routers of this host and the networks they route over IPv6.
pub(super) struct MyRouters6<'s> {
    /// Router ids.
    pub(super) mine: HashSet<&'s str>,
    /// Network ids.
    pub(super) routed: HashSet<&'s str>,
}

impl<'s> MyRouters6<'s> {
    /// `mine`: the routers of this host (IPv4's, `route::MyRouters`).
    pub(super) fn of(c: &Compiler<'s>, mine: &HashSet<&'s str>) -> Result<Self, CompileError> {
        let ifaces = c.ifaces6.iter().map(|i| (i.router_id, i.network_id));
        let MyRouters { mine, routed } = MyRouters::with(c, mine.clone(), ifaces)?;
        Ok(MyRouters6 { mine, routed })
    }
}

/// Every IPv6 map's entries. `present`: (port, tap ifindex, VNI) of the local VM ports whose
/// tap exists.
pub(super) fn add_ip6(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    networks: &Networks<'_>,
    routers: &MyRouters6<'_>,
    present: &[(&Port, u32, u32)],
) -> Result<(), CompileError> {
    add_endpoints6(&mut out.endpoints6, c, networks, &routers.routed);
    add_routes6(out, c, &routers.mine);
    add_extra_routes6(out, c, networks, routers);
    add_ra(&mut out.ra, c)?;
    for &(port, ifindex, _) in present {
        if port.port_security_enabled {
            add_port_security6(&mut out.port_security6, port, ifindex);
        }
    }
    Ok(())
}

/// `endpoints6`: every IPv6 fixed IP of the located VM ports of the IPv6-routed networks
/// (as `endpoints`: fixed IPs only, not allowed address pairs).
fn add_endpoints6(
    endpoints6: &mut BTreeMap<Ip6Key, Endpoint>,
    c: &Compiler<'_>,
    networks: &Networks<'_>,
    routed: &HashSet<&str>,
) {
    for (vni, port, endpoint) in routed_vm_ports(c, networks, routed) {
        for fixed in &port.fixed_ips6 {
            endpoints6.insert(ip6_key(vni, fixed.ip), endpoint);
        }
    }
}

/// `gw_by_ip6` (each interface address and the port's link-local address) and `gw_by_mac`
/// of the IPv6 interfaces on served networks; `routes6` of the IPv6 subnets of the IPv6
/// routers of this host.
fn add_routes6(out: &mut MapEntries, c: &Compiler<'_>, mine: &HashSet<&str>) {
    for iface in &c.ifaces6 {
        let router_id = fnv1a32(iface.router_id);
        let mac = iface.port.mac;
        if c.served.contains(iface.network_id) {
            let addresses = iface
                .subnets
                .iter()
                .map(|&(_, ip)| ip.octets())
                .chain([link_local(mac)]);
            for ip in addresses {
                out.gw_by_ip6.insert(
                    Ip6Key { vni: iface.vni, ip },
                    RouterIface6 {
                        router_id,
                        mac,
                        _pad: [0; 2],
                        ip,
                    },
                );
            }
            // A port with an IPv4 address too already has its entry (with that address).
            out.gw_by_mac
                .entry(fdb_key(iface.vni, mac))
                .or_insert(RouterIface {
                    router_id,
                    ip_be: 0,
                    mac,
                    flags: router_flags(c.state, iface.router_id),
                });
        }
        if mine.contains(iface.router_id) {
            for &(subnet, ip) in &iface.subnets {
                let key = Route6Key {
                    router_id_be: router_id.to_be(),
                    ip: subnet.cidr.network().octets(),
                };
                let route = Route6 {
                    vni: iface.vni,
                    gw_mac: mac,
                    mtu: network_mtu(c.state, iface.network_id),
                    gw_ip: ip.octets(),
                    nexthop: [0; 16],
                };
                let prefix = ROUTE6_KEY_PREFIX_BITS + u32::from(subnet.cidr.prefix_len());
                out.routes6.insert((prefix, key), route);
            }
        }
    }
}

/// `routes6` of the IPv6 extra routes of the IPv6 routers of this host, and `endpoints6`
/// for their next hops that are an allowed address pair rather than a fixed IP (as
/// `route::add_extra_routes` for IPv4). Runs after [`add_routes6`] and [`add_endpoints6`].
fn add_extra_routes6(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    networks: &Networks<'_>,
    routers: &MyRouters6<'_>,
) {
    let mine = c.state.routers().iter();
    for router in mine.filter(|r| routers.mine.contains(r.id.as_str())) {
        for extra in &router.routes {
            let (IpNet::V6(dest), IpAddr::V6(nexthop)) = (extra.destination, extra.nexthop) else {
                continue;
            };
            let found = c
                .ifaces6
                .iter()
                .filter(|i| i.router_id == router.id)
                .find_map(|i| {
                    let on = i.subnets.iter().find(|(s, _)| s.cidr.contains(&nexthop))?;
                    Some((i, on.1))
                });
            let Some((iface, gw_ip)) = found else {
                continue;
            };
            let key = Route6Key {
                router_id_be: fnv1a32(&router.id).to_be(),
                ip: dest.network().octets(),
            };
            let route = Route6 {
                vni: iface.vni,
                gw_mac: iface.port.mac,
                mtu: network_mtu(c.state, iface.network_id),
                gw_ip: gw_ip.octets(),
                nexthop: nexthop.octets(),
            };
            let prefix = ROUTE6_KEY_PREFIX_BITS + u32::from(dest.prefix_len());
            out.routes6.entry((prefix, key)).or_insert(route);
            let hop = ip6_key(iface.vni, nexthop);
            if out.endpoints6.contains_key(&hop) {
                continue;
            }
            let holder = routed_vm_ports(c, networks, &routers.routed).find(|(vni, port, _)| {
                *vni == iface.vni
                    && port
                        .allowed_address_pairs6
                        .iter()
                        .any(|p| p.net.contains(&nexthop))
            });
            if let Some((_, _, endpoint)) = holder {
                out.endpoints6.insert(hop, endpoint);
            }
        }
    }
}

/// `ra`: the router advertisement of each served network whose router interface has IPv6
/// subnets with `ipv6_ra_mode` (the model allows one such router per network).
fn add_ra(
    ra: &mut BTreeMap<u32, dvr_common::ip6::RaFrame>,
    c: &Compiler<'_>,
) -> Result<(), CompileError> {
    for iface in &c.ifaces6 {
        if !c.served.contains(iface.network_id) {
            continue;
        }
        let Some(params) = ra_params(c, iface)? else {
            continue;
        };
        ra.insert(iface.vni, ra_frame(&params));
    }
    Ok(())
}

/// What `iface`'s advertisement says, `None` when none of its subnets has `ipv6_ra_mode`.
fn ra_params(c: &Compiler<'_>, iface: &Iface6<'_>) -> Result<Option<RaParams>, CompileError> {
    let prefixes: Vec<RaPrefix> = iface
        .subnets
        .iter()
        .filter_map(|&(subnet, _)| {
            Some(RaPrefix {
                net: subnet.cidr,
                mode: subnet.ra_mode?,
            })
        })
        .collect();
    if prefixes.is_empty() {
        return Ok(None);
    }
    if prefixes.len() > RA_PREFIX_MAX {
        return Err(CompileError::RaPrefixes {
            network: iface.network_id.into(),
            router: iface.router_id.into(),
            count: prefixes.len(),
            max: RA_PREFIX_MAX,
        });
    }
    let Some(network) = c.state.network(iface.network_id) else {
        return Ok(None);
    };
    Ok(Some(RaParams {
        router_mac: iface.port.mac,
        mtu: network.mtu,
        prefixes,
    }))
}

fn ip6_key(vni: u32, ip: Ipv6Addr) -> Ip6Key {
    Ip6Key {
        vni,
        ip: ip.octets(),
    }
}

fn sec6_key(ifindex: u32, mac: Mac, ip: [u8; 16]) -> Sec6Key {
    Sec6Key {
        ifindex_be: ifindex.to_be(),
        mac,
        _pad: [0; 2],
        ip,
    }
}

/// What a local port with port security may send from IPv6 sources, as `port`'s
/// `add_port_security` for IPv4: its MAC with its IPv6 fixed IPs and its EUI-64 link-local
/// address (neighbour discovery and router solicitations come from it), and its IPv6
/// allowed address pairs. The MAC-only entries (prefix 96) let duplicate address detection
/// (source `::`) pass the MAC check; an IP grant on the same key wins over them.
fn add_port_security6(sec: &mut BTreeMap<(u32, Sec6Key), u32>, port: &Port, ifindex: u32) {
    let unspecified = [0; 16];
    let addresses = port
        .fixed_ips6
        .iter()
        .map(|f| f.ip.octets())
        .chain([link_local(port.mac)]);
    for ip in addresses {
        sec.insert(
            (SEC6_KEY_PREFIX_BITS + 128, sec6_key(ifindex, port.mac, ip)),
            SEC_IP_ALLOWED,
        );
    }
    sec.entry((
        SEC6_KEY_PREFIX_BITS,
        sec6_key(ifindex, port.mac, unspecified),
    ))
    .or_insert(SEC_MAC_ONLY);
    for pair in &port.allowed_address_pairs6 {
        sec.entry((
            SEC6_KEY_PREFIX_BITS,
            sec6_key(ifindex, pair.mac, unspecified),
        ))
        .or_insert(SEC_MAC_ONLY);
        let prefix = SEC6_KEY_PREFIX_BITS + u32::from(pair.net.prefix_len());
        sec.insert(
            (
                prefix,
                sec6_key(ifindex, pair.mac, pair.net.network().octets()),
            ),
            SEC_IP_ALLOWED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Compiled, compile};
    use crate::ndp::RaMode;
    use crate::testing::*;
    use dvr_common::l2::FdbEntry;
    use serde_json::{Value, json};

    const MAC_RIF6A: Mac = [0xfa, 0x16, 0x3e, 0, 6, 1];
    const MAC_RIF6B: Mac = [0xfa, 0x16, 0x3e, 0, 6, 2];
    const MAC_PAIR6: Mac = [0xfa, 0x16, 0x3e, 0xaa, 0, 6];

    fn a6(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
            .octets()
    }

    fn key(vni: u32, text: &str) -> Ip6Key {
        Ip6Key { vni, ip: a6(text) }
    }

    fn r1(mac: Mac, ip: [u8; 16]) -> RouterIface6 {
        RouterIface6 {
            router_id: fnv1a32("router1"),
            mac,
            _pad: [0; 2],
            ip,
        }
    }

    fn route6(net: &str, vni: u32, gw_mac: Mac, gw: &str) -> ((u32, Route6Key), Route6) {
        (
            (
                32 + 64,
                Route6Key {
                    router_id_be: fnv1a32("router1").to_be(),
                    ip: a6(net),
                },
            ),
            Route6 {
                vni,
                gw_mac,
                mtu: 1450,
                gw_ip: a6(gw),
                nexthop: [0; 16],
            },
        )
    }

    fn ra(mac: Mac, net: &str, mode: RaMode) -> dvr_common::ip6::RaFrame {
        ra_frame(&RaParams {
            router_mac: mac,
            mtu: 1450,
            prefixes: vec![RaPrefix {
                net: net.parse().unwrap_or_default(),
                mode,
            }],
        })
    }

    fn with6(mut entry: FdbEntry, gw_mac6: Mac) -> FdbEntry {
        entry.gw_mac6 = gw_mac6;
        entry
    }

    fn compile_err(v: &Value, host: &str) -> Option<CompileError> {
        compile(&state_of(v), host, None, &all_taps).err()
    }

    const VM1: &str = "fd00:1::f816:3eff:fe00:1";
    const VM3: &str = "fd00:1::f816:3eff:fe00:3";
    const VM2: &str = "fd00:2::20";

    #[test]
    fn host_a_dual_stack() {
        let c = compiled(&dual_stack_value(), "host-a", &all_taps);
        let e = &c.entries;
        assert_eq!(
            e.endpoints6,
            BTreeMap::from([
                (key(VNI1, VM1), endpoint(MAC_VM1, IFX_VM1, 0)),
                (key(VNI1, VM3), endpoint(MAC_VM3, 0, TUN_B)),
                (key(VNI2, VM2), endpoint(MAC_VM2, IFX_VM2, 0)),
            ])
        );
        assert_eq!(
            e.routes6,
            BTreeMap::from([
                route6("fd00:1::", VNI1, MAC_RIF6A, "fd00:1::1"),
                route6("fd00:2::", VNI2, MAC_RIF6B, "fd00:2::1"),
            ])
        );
        let ll_a = link_local(MAC_RIF6A);
        let ll_b = link_local(MAC_RIF6B);
        assert_eq!(
            e.gw_by_ip6,
            BTreeMap::from([
                (key(VNI1, "fd00:1::1"), r1(MAC_RIF6A, a6("fd00:1::1"))),
                (
                    Ip6Key {
                        vni: VNI1,
                        ip: ll_a
                    },
                    r1(MAC_RIF6A, ll_a)
                ),
                (key(VNI2, "fd00:2::1"), r1(MAC_RIF6B, a6("fd00:2::1"))),
                (
                    Ip6Key {
                        vni: VNI2,
                        ip: ll_b
                    },
                    r1(MAC_RIF6B, ll_b)
                ),
            ])
        );
        assert_eq!(ll_a, a6("fe80::f816:3eff:fe00:601"));
        let iface_v6 = |mac: Mac| RouterIface {
            router_id: fnv1a32("router1"),
            ip_be: 0,
            mac,
            flags: 0,
        };
        assert_eq!(
            e.gw_by_mac.get(&fdb_key(VNI1, MAC_RIF6A)),
            Some(&iface_v6(MAC_RIF6A))
        );
        assert_eq!(
            e.gw_by_mac.get(&fdb_key(VNI2, MAC_RIF6B)),
            Some(&iface_v6(MAC_RIF6B))
        );
        assert_eq!(
            e.ra,
            BTreeMap::from([
                (VNI1, ra(MAC_RIF6A, "fd00:1::/64", RaMode::Slaac)),
                (VNI2, ra(MAC_RIF6B, "fd00:2::/64", RaMode::Dhcpv6Stateful)),
            ])
        );
        let sec = |ifx: u32, mac: Mac, ip: [u8; 16]| sec6_key(ifx, mac, ip);
        assert_eq!(
            e.port_security6,
            BTreeMap::from([
                ((224, sec(IFX_VM1, MAC_VM1, a6(VM1))), SEC_IP_ALLOWED),
                (
                    (224, sec(IFX_VM1, MAC_VM1, link_local(MAC_VM1))),
                    SEC_IP_ALLOWED
                ),
                (
                    (224, sec(IFX_VM1, MAC_VM1, a6("fd00:1::100"))),
                    SEC_IP_ALLOWED
                ),
                ((96, sec(IFX_VM1, MAC_VM1, [0; 16])), SEC_MAC_ONLY),
                ((96, sec(IFX_VM1, MAC_PAIR6, [0; 16])), SEC_MAC_ONLY),
                (
                    (96 + 64, sec(IFX_VM1, MAC_PAIR6, a6("fd00:9::"))),
                    SEC_IP_ALLOWED
                ),
                ((224, sec(IFX_VM2, MAC_VM2, a6(VM2))), SEC_IP_ALLOWED),
                (
                    (224, sec(IFX_VM2, MAC_VM2, link_local(MAC_VM2))),
                    SEC_IP_ALLOWED
                ),
                ((96, sec(IFX_VM2, MAC_VM2, [0; 16])), SEC_MAC_ONLY),
            ])
        );
        // The FDB carries the IPv6 gateway MAC of each port's subnet; the IPv6 pair's own
        // MAC is where the port is.
        let vm1 = with6(fdb(IFX_VM1, 0, MAC_RIF1), MAC_RIF6A);
        assert_eq!(
            e.fdb,
            BTreeMap::from([
                (fdb_key(VNI1, MAC_VM1), vm1),
                (
                    fdb_key(VNI1, MAC_VM3),
                    with6(fdb(0, TUN_B, MAC_RIF1), MAC_RIF6A)
                ),
                (fdb_key(VNI1, MAC_PAIR6), vm1),
                (
                    fdb_key(VNI2, MAC_VM2),
                    with6(fdb(IFX_VM2, 0, MAC_RIF2), MAC_RIF6B)
                ),
            ])
        );
        assert_ipv4_unchanged(&c, "host-a");
    }

    /// The IPv4 entries of the dual-stack state are the IPv4 fixture's.
    #[track_caller]
    fn assert_ipv4_unchanged(c: &Compiled, host: &str) {
        let v4 = compiled(&fixture_value(), host, &all_taps).entries;
        let e = &c.entries;
        assert_eq!(e.endpoints, v4.endpoints);
        assert_eq!(e.routes, v4.routes);
        assert_eq!(e.gw_by_ip, v4.gw_by_ip);
        assert_eq!(e.port_security, v4.port_security);
        assert_eq!(e.local_ports, v4.local_ports);
        assert_eq!(e.flood, v4.flood);
        for (k, v) in &v4.gw_by_mac {
            assert_eq!(e.gw_by_mac.get(k), Some(v));
        }
        for (k, v) in &v4.fdb {
            assert_eq!(e.fdb.get(k).map(|f| with6(*f, [0; 6])), Some(*v));
        }
    }

    #[test]
    fn host_b_routes_both_and_advertises_on_net1_only() {
        let c = compiled(&dual_stack_value(), "host-b", &all_taps);
        let e = &c.entries;
        assert_eq!(
            e.routes6
                .keys()
                .map(|(p, k)| (*p, k.ip))
                .collect::<Vec<_>>(),
            [(96, a6("fd00:1::")), (96, a6("fd00:2::"))]
        );
        assert_eq!(
            e.endpoints6.get(&key(VNI2, VM2)),
            Some(&endpoint(MAC_VM2, 0, TUN_A))
        );
        assert_eq!(
            e.endpoints6.get(&key(VNI1, VM3)),
            Some(&endpoint(MAC_VM3, IFX_VM3, 0))
        );
        // net2 is routed but not served on B.
        assert!(e.gw_by_ip6.keys().all(|k| k.vni == VNI1));
        assert_eq!(e.gw_by_ip6.len(), 2);
        assert_eq!(e.ra.keys().copied().collect::<Vec<_>>(), [VNI1]);
        assert!(!e.gw_by_mac.contains_key(&fdb_key(VNI2, MAC_RIF6B)));
        assert_eq!(
            e.port_security6.keys().map(|(p, _)| *p).collect::<Vec<_>>(),
            [96, 224, 224]
        );
        assert_ipv4_unchanged(&c, "host-b");
    }

    #[test]
    fn ipv6_only_interfaces_make_the_router_this_hosts() {
        let mut v = dual_stack_value();
        if let Some(ports) = v["ports"].as_array_mut() {
            ports.retain(|p| p["id"] != "rif1" && p["id"] != "rif2");
        }
        let e = compiled(&v, "host-a", &all_taps).entries;
        assert!(e.routes.is_empty() && e.endpoints.is_empty() && e.gw_by_ip.is_empty());
        assert_eq!(e.routes6.len(), 2);
        assert_eq!(e.endpoints6.len(), 3);
        assert_eq!(
            e.gw_by_mac.keys().copied().collect::<Vec<_>>(),
            [fdb_key(VNI1, MAC_RIF6A), fdb_key(VNI2, MAC_RIF6B)]
        );
        // No IPv6 subnet, no IPv6 entries; no ra_mode, no advertisement.
        let e = compiled(&fixture_value(), "host-a", &all_taps).entries;
        assert!(e.routes6.is_empty() && e.gw_by_ip6.is_empty() && e.ra.is_empty());
        assert_eq!(
            e.port_security6.len(),
            4,
            "link-local and MAC-only per port"
        );
        let mut v = dual_stack_value();
        elem(&mut v, "subnets", "id", "subnet6b")["ipv6_ra_mode"] = Value::Null;
        let e = compiled(&v, "host-a", &all_taps).entries;
        assert_eq!(e.ra.keys().copied().collect::<Vec<_>>(), [VNI1]);
    }

    #[test]
    fn advertisement_prefixes_past_the_frame_name_the_network() {
        let mut v = dual_stack_value();
        for n in 3..=(2 + RA_PREFIX_MAX) {
            let sub = format!("subnet6-{n}");
            push(
                &mut v,
                "subnets",
                json!({"id": sub, "network_id": "net1", "cidr": format!("fd00:{n}::/64"),
                    "ip_version": 6, "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}),
            );
            if let Some(list) = elem(&mut v, "ports", "id", "rif6a")["fixed_ips"].as_array_mut() {
                list.push(json!({"subnet_id": sub, "ip_address": format!("fd00:{n}::1")}));
            }
        }
        let err = compile_err(&v, "host-a");
        assert_eq!(
            err,
            Some(CompileError::RaPrefixes {
                network: "net1".into(),
                router: "router1".into(),
                count: RA_PREFIX_MAX + 1,
                max: RA_PREFIX_MAX
            })
        );
        assert_eq!(
            err.map(|e| e.to_string()),
            Some(format!(
                "network net1: router router1 advertises {} IPv6 subnets with ipv6_ra_mode on \
                 it, a router advertisement holds at most {RA_PREFIX_MAX}",
                RA_PREFIX_MAX + 1
            ))
        );
        // A host without ports on net1 does not build its advertisement.
        push(
            &mut v,
            "hosts",
            json!({"name": "host-c", "agent_mode": "dvr", "tunnel_ip": "192.0.2.3",
                "dvr_mac": "fa:16:3f:00:00:0c"}),
        );
        assert_eq!(compile_err(&v, "host-c"), None);
    }
}
