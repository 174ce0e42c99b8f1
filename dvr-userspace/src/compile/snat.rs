//! Centralized SNAT: steering from compute hosts (`snat_steer`) and the routers the SNAT
//! host serves (`snat_routers`, `snat_ips`).
//!
//! A router's *SNAT host* is the host its `network:router_centralized_snat` ports are bound
//! to (validation: one `dvr_snat` host with an external interface; unbound ones are ignored);
//! for an HA router, the host the election view names ([`super::ha`]). H *does SNAT for* a
//! router with an `external_gateway_info` whose SNAT host is H, when H has external.
//!
//! For H:
//! - Steering (`snat_steer`): every distributed interface on a served network of a router
//!   with an `external_gateway_info` and a csnat port on the interface's subnet points at the
//!   SNAT host (tunnel ip, 0 when it is H) and that csnat port's MAC. No csnat port, no entry.
//! - Routers H does SNAT for: their csnat ports (`snat_routers`) and external addresses
//!   (`snat_ips`) map to the router's `external_fixed_ips[0]` and the gateway of its subnet,
//!   which `ext_neigh` learns. `SNAT_ENABLED` follows `enable_snat` in both maps and steering.
//! - IPv6 north-south (routed, never translated, whatever `enable_snat` says), for a router
//!   with an IPv6 `external_fixed_ips` address: steering entries carry `SNAT_ROUTED6`, and
//!   the router's IPv6 interfaces on served networks steer too, to the router's csnat port
//!   on the same network (of either family: Neutron makes one per interface port). The SNAT
//!   host gets `snat6` (the first IPv6 external address and its subnet's gateway as next
//!   hop), `snat_ips6` (that address, with the router's `snat_ips` value), `ext_route6`
//!   (each IPv6 subnet of the router) and the next hop as an `ext_neigh6` key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use dvr_common::ip6::{Addr6, Snat6};
use dvr_common::l2::FdbKey;
use dvr_common::snat::{SNAT_ENABLED, SNAT_HA, SNAT_ROUTED6, SnatRouter, SnatSteer};

use super::context::{Compiler, network_mtu, vni_of};
use super::entries::{MapEntries, be, fdb_key, fnv1a32};
use super::error::CompileError;
use super::ha::{fenced, ha_serving, ha_target};
use crate::model::{ExternalGateway, Host, Port, Router, State};

/// The routers' bound centralized SNAT ports.
pub(super) struct Csnat<'s> {
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
    pub(super) fn of(c: &Compiler<'s>) -> Self {
        let (state, me) = (c.state, c.host);
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
                Some(r) => ha_target(c.ha, r),
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
                && !ha_serving(c.ha, r, me)
            {
                csnat.inactive.insert(router);
            }
        }
        csnat
    }

    /// True when this host (`me`) does the centralized work of `router`.
    pub(super) fn serves(&self, router: &str, me: &str) -> bool {
        self.host_of.get(router) == Some(&me) && !self.inactive.contains(router)
    }

    /// The steering of router `router_id`'s traffic to csnat port `port` on its SNAT host:
    /// tunnel 0 on that host itself; `None` when it has none or its tunnel is unknown.
    fn steer_to(
        &self,
        c: &Compiler<'_>,
        router_id: &str,
        port: &Port,
        gw: &ExternalGateway,
    ) -> Option<SnatSteer> {
        let &snat_host = self.host_of.get(router_id)?;
        let tunnel_ip_host = if snat_host == c.host {
            0
        } else {
            *c.tunnel_of.get(snat_host)?
        };
        Some(SnatSteer {
            tunnel_ip_host,
            router_id: fnv1a32(router_id),
            csnat_mac: port.mac,
            ext_mtu: network_mtu(c.state, &gw.network_id),
            flags: steer_flags(gw),
        })
    }

    /// The host that serves a router's central FIPs: its SNAT host, when the router has a
    /// gateway and the host has external (as `snat_here` on that host).
    pub(super) fn central_host(&self, state: &'s State, router_id: &str) -> Option<&'s Host> {
        state.router(router_id)?.external_gateway.as_ref()?;
        let host = state.host(self.host_of.get(router_id)?)?;
        host.has_external().then_some(host)
    }
}

/// The routers this host does SNAT for, in state order.
pub(super) fn routers_served_here<'s>(
    c: &Compiler<'s>,
    csnat: &Csnat<'s>,
) -> Vec<(&'s Router, &'s ExternalGateway)> {
    if !c.me.has_external() {
        return Vec::new();
    }
    c.state
        .routers()
        .iter()
        .filter(|r| r.admin_state_up && csnat.serves(&r.id, c.host))
        .filter_map(|r| Some((r, r.external_gateway.as_ref()?)))
        .collect()
}

/// `snat_routers` and `snat_ips` of the routers this host does SNAT for (`snat_here`).
/// Adds their next hops to `gateways`; returns router id hash -> router id.
pub(super) fn add_snat_routers(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    csnat: &Csnat<'_>,
    snat_here: &[(&Router, &ExternalGateway)],
    gateways: &mut BTreeSet<Ipv4Addr>,
) -> Result<BTreeMap<u32, String>, CompileError> {
    let mut names = BTreeMap::new();
    for &(router, gw) in snat_here {
        let gateway = add_snat_router(out, c, csnat, router, gw)?;
        gateways.insert(gateway);
        names.insert(fnv1a32(&router.id), router.id.clone());
    }
    Ok(names)
}

fn snat_flags(gw: &ExternalGateway) -> u32 {
    if gw.enable_snat { SNAT_ENABLED } else { 0 }
}

/// The flags of a steering entry: also whether IPv6 north-south is routed.
fn steer_flags(gw: &ExternalGateway) -> u32 {
    let v6 = if gw.external_fixed_ips6.is_empty() {
        0
    } else {
        SNAT_ROUTED6
    };
    snat_flags(gw) | v6
}

/// Steering of non-FIP external traffic: each interface on a served network of a router with
/// a gateway, whose subnet has a csnat port, points at the router's SNAT host.
pub(super) fn add_snat_steer(
    steer: &mut BTreeMap<FdbKey, SnatSteer>,
    c: &Compiler<'_>,
    csnat: &Csnat<'_>,
) {
    for iface in c.ifaces.iter().filter(|i| c.served.contains(i.network_id)) {
        let Some(gw) = c
            .state
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
        let Some(to) = csnat.steer_to(c, iface.router_id, port, gw) else {
            continue;
        };
        steer.insert(fdb_key(iface.vni, iface.port.mac), to);
    }
    add_snat_steer6(steer, c, csnat);
}

/// Steering of a router's IPv6 north-south traffic from its IPv6 interfaces on served
/// networks: to its csnat port on the same network (IPv6 interfaces have their own port).
fn add_snat_steer6(steer: &mut BTreeMap<FdbKey, SnatSteer>, c: &Compiler<'_>, csnat: &Csnat<'_>) {
    for iface in c.ifaces6.iter().filter(|i| c.served.contains(i.network_id)) {
        let Some(gw) = c
            .state
            .router(iface.router_id)
            .and_then(|r| r.external_gateway.as_ref())
            .filter(|gw| !gw.external_fixed_ips6.is_empty())
        else {
            continue;
        };
        let Some(port) = csnat
            .ports_of
            .get(iface.router_id)
            .into_iter()
            .flatten()
            .find(|p| p.network_id == iface.network_id)
        else {
            continue;
        };
        let Some(to) = csnat.steer_to(c, iface.router_id, port, gw) else {
            continue;
        };
        // A port with IPv4 addresses too already steers (to the same host).
        steer
            .entry(fdb_key(iface.vni, iface.port.mac))
            .or_insert(to);
    }
}

/// `snat_routers` and `snat_ips` of one router this host does SNAT for. Returns the next hop
/// on the external network, whose MAC the datapath learns.
fn add_snat_router(
    out: &mut MapEntries,
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
    let next_hop = c
        .state
        .subnet(&ext.subnet_id)
        .and_then(|s| s.gateway_ip)
        .ok_or_else(|| CompileError::SnatNoGateway {
            router: router.id.clone(),
            subnet: ext.subnet_id.clone(),
            address: ext.ip,
        })?;
    let ha = if fenced(c.ha, c.state, &router.id) {
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
        if let Some(vni) = vni_of(c.state, &port.network_id) {
            out.snat_routers.insert(fdb_key(vni, port.mac), value);
        }
    }
    out.snat_ips.insert(value.ext_ip_be, value);
    add_snat_router6(out, c, router, gw, value)?;
    Ok(next_hop)
}

/// The IPv6 north-south entries of one router this host serves (`value`: its `snat_ips`
/// value): nothing without an IPv6 external address.
fn add_snat_router6(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    router: &Router,
    gw: &ExternalGateway,
    value: SnatRouter,
) -> Result<(), CompileError> {
    let Some(ext) = gw.external_fixed_ips6.first() else {
        return Ok(());
    };
    let next_hop = c
        .state
        .subnet6(&ext.subnet_id)
        .and_then(|s| s.gateway_ip)
        .ok_or_else(|| CompileError::SnatNoGateway6 {
            router: router.id.clone(),
            subnet: ext.subnet_id.clone(),
            address: ext.ip,
        })?;
    out.snat6.insert(
        value.router_id,
        Snat6 {
            ext_ip: ext.ip.octets(),
            next_hop: next_hop.octets(),
        },
    );
    out.snat_ips6.insert(
        Addr6 {
            ip: ext.ip.octets(),
        },
        value,
    );
    out.ext_neigh6.insert(Addr6 {
        ip: next_hop.octets(),
    });
    for iface in c.ifaces6.iter().filter(|i| i.router_id == router.id) {
        for (subnet, _) in &iface.subnets {
            let prefix = Addr6 {
                ip: subnet.cidr.network().octets(),
            };
            out.ext_route6
                .insert((u32::from(subnet.cidr.prefix_len()), prefix), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::testing::*;
    use dvr_common::nat::{FIP_CENTRAL, FIP_REMOTE, FipEntry, FipSrc};
    use dvr_common::route::IpKey;
    use serde_json::{Value, json};

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
            mtu: 1450,
            ext_mtu: 1450,
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
            ext_mtu: 1450,
            _pad: [0; 2],
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
        assert_eq!(e.snat_steer, r1n1_steers_to(0, SNAT_ENABLED));
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
        assert_eq!(s.entries.snat_steer, r1n1_steers_to(0, 0));
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
        // No csnat port at all: no SNAT anywhere, and nobody serves host-n's FIP (host-s,
        // no longer r1's SNAT host, does not even know it).
        if let Some(p) = v["ports"].as_array_mut() {
            p.retain(|p| p["id"] != "r1-snat1");
        }
        let a = compiled(&v, "host-a", &snat_taps);
        assert!(a.entries.snat_steer.is_empty());
        let s = compiled(&v, "host-s", &snat_taps);
        assert!(s.entries.snat_routers.is_empty() && s.entries.snat_ips.is_empty());
        assert!(s.snat_router_names.is_empty() && s.served_fips.is_empty());
        assert!(s.entries.routes.is_empty());
        assert_eq!(s.entries.fips.get(&ip(10, 5, 2, 7)), None);
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
        let err = compile(&state_of(&v), "host-s", None, &snat_taps);
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
        let err = compile(&state, "host-s", None, &snat_taps);
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
        let a = compile(&state, "host-a", None, &snat_taps);
        assert_eq!(a.map(|c| c.entries.snat_steer.len()), Ok(1));
    }

    /// snat_fixture_with_vms plus IPv6: n1's IPv6 subnet fd00:1::/64 on its own r1
    /// interface port, the external IPv6 subnet 2001:db8:5::/64 (gateway ::1) and r1's
    /// external IPv6 address 2001:db8:5::101.
    const MAC_R1N1V6: dvr_common::Mac = [0xfa, 0x16, 0x3e, 0, 1, 0x61];
    fn snat6_fixture() -> Value {
        let mut v = snat_fixture_with_vms();
        push(
            &mut v,
            "subnets",
            json!({"id": "s1v6", "network_id": "n1", "cidr": "fd00:1::/64",
                "gateway_ip": "fd00:1::1", "ip_version": 6}),
        );
        push(
            &mut v,
            "subnets",
            json!({"id": "ext-sub6", "network_id": "ext", "cidr": "2001:db8:5::/64",
                "gateway_ip": "2001:db8:5::1", "ip_version": 6}),
        );
        push(
            &mut v,
            "ports",
            json!({"id": "r1-n1v6", "network_id": "n1", "mac_address": "fa:16:3e:00:01:61",
                "fixed_ips": [{"subnet_id": "s1v6", "ip_address": "fd00:1::1"}],
                "device_owner": "network:router_interface_distributed", "device_id": "r1"}),
        );
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"]["external_fixed_ips"] = json!([
            {"subnet_id": "ext-sub", "ip_address": "10.5.3.1"},
            {"subnet_id": "ext-sub6", "ip_address": "2001:db8:5::101"}
        ]);
        v
    }

    fn a6(s: &str) -> Addr6 {
        Addr6 {
            ip: s
                .parse::<std::net::Ipv6Addr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
                .octets(),
        }
    }

    #[test]
    fn ipv6_north_south_is_steered_from_the_ipv6_interface_to_the_csnat_port() {
        let v = snat6_fixture();
        let flags = SNAT_ENABLED | SNAT_ROUTED6;
        let a = compiled(&v, "host-a", &snat_taps);
        assert_eq!(
            a.entries.snat_steer,
            BTreeMap::from([
                (fdb_key(FVNI1, MAC_R1N1), steer(TUN_S, MAC_CSNAT1, flags)),
                (fdb_key(FVNI1, MAC_R1N1V6), steer(TUN_S, MAC_CSNAT1, flags)),
            ])
        );
        // Only the SNAT host routes IPv6 in and out.
        assert!(a.entries.snat6.is_empty() && a.entries.snat_ips6.is_empty());
        assert!(a.entries.ext_route6.is_empty() && a.entries.ext_neigh6.is_empty());
        // enable_snat: false does not matter for IPv6.
        let mut v = snat6_fixture();
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"]["enable_snat"] = json!(false);
        let a = compiled(&v, "host-a", &snat_taps);
        assert_eq!(
            a.entries
                .snat_steer
                .get(&fdb_key(FVNI1, MAC_R1N1V6))
                .map(|s| s.flags),
            Some(SNAT_ROUTED6)
        );
        // No IPv6 external address: the IPv6 interface does not steer, IPv4 lacks the flag.
        let mut v = snat6_fixture();
        elem(&mut v, "routers", "id", "r1")["external_gateway_info"]["external_fixed_ips"] =
            json!([{"subnet_id": "ext-sub", "ip_address": "10.5.3.1"}]);
        let a = compiled(&v, "host-a", &snat_taps);
        assert_eq!(a.entries.snat_steer, r1n1_steers_to(TUN_S, SNAT_ENABLED));
    }

    #[test]
    fn snat_host_routes_the_routers_ipv6() {
        let c = compiled(&snat6_fixture(), "host-s", &snat_taps);
        let e = &c.entries;
        let r1 = snat_r1(SNAT_ENABLED);
        assert_eq!(
            e.snat6,
            BTreeMap::from([(
                fnv1a32("r1"),
                Snat6 {
                    ext_ip: a6("2001:db8:5::101").ip,
                    next_hop: a6("2001:db8:5::1").ip,
                }
            )])
        );
        assert_eq!(e.snat_ips6, BTreeMap::from([(a6("2001:db8:5::101"), r1)]));
        assert_eq!(e.ext_route6, BTreeMap::from([((64, a6("fd00:1::")), r1)]));
        assert_eq!(e.ext_neigh6, BTreeSet::from([a6("2001:db8:5::1")]));
        // vms is local: the SNAT host steers to itself.
        assert_eq!(
            e.snat_steer.get(&fdb_key(FVNI1, MAC_R1N1V6)),
            Some(&steer(0, MAC_CSNAT1, SNAT_ENABLED | SNAT_ROUTED6))
        );
        // The router's IPv6 routes, for the source check and inbound delivery.
        assert_eq!(e.routes6.len(), 1);
    }

    #[test]
    fn ipv6_next_hop_without_gateway_names_router_and_subnet() {
        let mut v = snat6_fixture();
        elem(&mut v, "subnets", "id", "ext-sub6")["gateway_ip"] = Value::Null;
        let err = compile(&state_of(&v), "host-s", None, &snat_taps);
        assert!(
            matches!(&err, Err(CompileError::SnatNoGateway6 { router, subnet, .. })
                if router == "r1" && subnet == "ext-sub6"),
            "{err:?}"
        );
    }
}
