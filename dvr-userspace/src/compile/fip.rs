//! Floating IPs (`fips`, `fip_src`) and the external side of a host that has external
//! (`ext_neigh`, `ext_deny`).
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
//! - CENTRAL | VIP: the port is a VIP port ([`super::vip`]) and H does SNAT for the router.
//!   ARP and NAT here; the VM that holds the VIP is the one the datapath learned (`VIP_LOC`).
//! - Otherwise, only if H has external and the FIP is on one of its external networks:
//!   unassociated ones are dropped (`FIP_UNASSOCIATED`); those whose port is bound to H or
//!   whose router is a router of H are known but not served (dropped as `fip not here`).
//!   FIPs of other hosts' ports on other routers are no business of H (as in Neutron, whose
//!   FIP namespaces hold their host's FIPs): a large cloud's FIP changes reach the hosts
//!   they concern, and every host with external only for (un)allocations.
//!   VIP FIPs are never REMOTE (like other central ones).
//!
//! An HA router's central FIPs carry `FIP_HA` while its role is elected (see [`super::ha`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use dvr_common::nat::{
    FIP_CENTRAL, FIP_HA, FIP_LOCAL, FIP_REMOTE, FIP_ROUTER_DOWN, FIP_UNASSOCIATED, FIP_VIP,
    FipEntry, FipSrc,
};
use dvr_common::route::{IpKey, ROUTER_DOWN};

use super::context::{Compiler, FipTarget, network_mtu, router_flags};
use super::entries::{MapEntries, be, fnv1a32};
use super::error::CompileError;
use super::ha::fenced;
use super::vip::Vips;
use crate::model::{AgentMode, FloatingIp, Host, Port, State};

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

/// The external side of a host that has external.
pub(super) struct ExtSide<'s> {
    iface: &'s str,
    /// Ids of the host's external networks.
    networks: HashSet<&'s str>,
    /// First fixed IP of the host's first floating IP agent gateway port that has one.
    fg_ip: Option<Ipv4Addr>,
    /// Gateway of that fixed IP's subnet.
    fg_gateway: Option<Ipv4Addr>,
}

impl<'s> ExtSide<'s> {
    pub(super) fn of(state: &'s State, me: &'s Host) -> Option<Self> {
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
pub(super) fn add_floating_ips(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    ext: Option<&ExtSide<'_>>,
    vips: &Vips<'_>,
    my_routers: &HashSet<&str>,
    snat_here: &HashSet<&str>,
) -> Result<(BTreeMap<Ipv4Addr, Ipv4Addr>, BTreeSet<Ipv4Addr>), CompileError> {
    let mut served = BTreeMap::new();
    let mut gateways = BTreeSet::new();
    let state = c.state;
    for fip in state.floatingips() {
        let fip_be = be(fip.floating_ip_address);
        let on_my_external =
            ext.is_some_and(|e| e.networks.contains(fip.floating_network_id.as_str()));
        // Whether the FIP is any of H's business beyond its address: its port is bound to H
        // or its router is one of H's. Others are left to the hosts they concern, so that a
        // host holds (and recompiles for) only its share of a large cloud's FIPs.
        let concerns_me = |port: Option<&crate::model::Port>, router: Option<&str>| {
            port.is_some_and(|p| p.host_id.as_deref() == Some(c.host))
                || router.is_some_and(|r| my_routers.contains(r))
        };
        let Some(t) = FipTarget::of(c, fip) else {
            let port = fip.port_id.as_deref().and_then(|p| state.port(p));
            if on_my_external
                && (fip.port_id.is_none() || concerns_me(port, fip.router_id.as_deref()))
            {
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
            mtu: network_mtu(state, &t.port.network_id),
            ext_mtu: network_mtu(state, &fip.floating_network_id),
            ..FipEntry::default()
        };
        let down = if router_flags(state, t.router_id) & ROUTER_DOWN != 0 {
            FIP_ROUTER_DOWN
        } else {
            0
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
        let central_ha = if fenced(c.ha, state, t.router_id) {
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
                flags: entry.flags | down,
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
                    ext_mtu: base.ext_mtu,
                    _pad: [0; 2],
                },
            );
            gateways.insert(ext_gw);
            served.insert(fip.floating_ip_address, t.fixed);
        } else if let Some(peer) = serving_peer {
            let entry = FipEntry {
                tunnel_ip_host: u32::from(peer.tunnel_ip),
                port_mac: t.port.mac,
                gw_mac: t.gw_mac(fip)?,
                flags: FIP_REMOTE | down,
                ..base
            };
            out.fips.insert(fip_be, entry);
        } else if on_my_external && concerns_me(Some(t.port), Some(t.router_id)) {
            // Served elsewhere (on another host, centrally on the router's SNAT host, or
            // nowhere when a dvr_no_external host's or a VIP's router has none), or its tap is
            // not here yet, or its port is unbound and no VIP: known, so its traffic is
            // counted rather than treated as unknown.
            out.fips.insert(fip_be, base);
        }
    }
    Ok((served, gateways))
}

/// The external side: `ext_deny`, and `ext_neigh` from `gateways` (the next hops of the FIPs
/// and SNAT routers served here) and the gateway of the host's own external address.
pub(super) fn add_external(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    ext: ExtSide<'_>,
    my_routers: &HashSet<&str>,
    mut gateways: BTreeSet<Ipv4Addr>,
) -> External {
    add_ext_deny(&mut out.ext_deny, c, my_routers);
    gateways.extend(ext.fg_gateway);
    out.ext_neigh = gateways.iter().map(|&gw| be(gw)).collect();
    External {
        iface: ext.iface.into(),
        fg_ip: ext.fg_ip,
        gateways,
    }
}

/// Every subnet of every routed network, with the router that owns it (the router with an
/// interface on that subnet, else the router of H on that network). Tenants may reuse a
/// prefix; the key holds no router, so the first router in state order names it.
fn add_ext_deny(
    deny: &mut BTreeMap<(u32, u32), u32>,
    c: &Compiler<'_>,
    my_routers: &HashSet<&str>,
) {
    for iface in c.ifaces.iter().filter(|i| my_routers.contains(i.router_id)) {
        for sub in c.state.subnets_on_network(iface.network_id) {
            let router = c
                .iface_of_subnet
                .get(sub.id.as_str())
                .map_or(iface.router_id, |&(r, _)| r);
            deny.entry((u32::from(sub.cidr.prefix_len()), be(sub.cidr.network())))
                .or_insert_with(|| fnv1a32(router));
        }
    }
}

/// Router id -> floating -> fixed IP of its FIPs that are served wherever the router's
/// centralized role is: those of `dvr_no_external` hosts' VM ports, and VIP FIPs.
pub(super) fn central_fips<'s>(
    c: &Compiler<'s>,
    vips: &Vips<'s>,
) -> HashMap<&'s str, BTreeMap<Ipv4Addr, Ipv4Addr>> {
    let state = c.state;
    let mut central: HashMap<&str, BTreeMap<Ipv4Addr, Ipv4Addr>> = HashMap::new();
    for fip in state.floatingips() {
        let Some(t) = FipTarget::of(c, fip) else {
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
    central
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::testing::*;
    use serde_json::{Value, json};

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
                    flags: 0,
                    ext_mtu: 1450,
                    _pad: [0; 2],
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
                mtu: 1450,
                ext_mtu: 1450,
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
        // FIP (host-b's port, r1's address) is no business of host-a's, though host-a has
        // external on the FIP's network.
        let mut v = fip_fixture();
        elem(&mut v, "ports", "id", "vma")["binding:host_id"] = "host-c".into();
        let c = compiled(&v, "host-a", &fip_taps);
        assert_eq!(c.entries.fips.get(&ip(10, 5, 2, 2)), None);
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
        let err = compile(&state_of(&v), "host-a", None, &fip_taps);
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
        assert!(compile(&state_of(&v), "host-c", None, &fip_taps).is_ok());
    }

    #[test]
    fn fip_router_without_interface_on_subnet_names_the_floatingip() {
        let mut v = fip_fixture();
        push(&mut v, "routers", json!({"id": "r2"}));
        elem(&mut v, "floatingips", "id", "fip-a")["router_id"] = "r2".into();
        let err = compile(&state_of(&v), "host-a", None, &fip_taps);
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
}
