//! VIPs, addresses keepalived moves between VMs: which addresses are VIPs, their
//! candidates (`vip_cand`), and the flood targets a VIP FIP adds.
//!
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

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use dvr_common::nat::{VipCandidate, VipKey};

use super::context::{Compiler, FipTarget, vni_of};
use super::entries::be;
use super::snat::Csnat;
use crate::model::{Mac, Port};

/// A VIP (see the module doc).
pub(super) struct Vip<'s> {
    ip: Ipv4Addr,
    network_id: &'s str,
    vni: u32,
    /// The router with the distributed interface on the VIP's subnet.
    router_id: &'s str,
    /// (candidate VM port, MAC it holds the VIP with), in state order, each once.
    candidates: Vec<(&'s Port, Mac)>,
}

/// Every VIP of the state.
pub(super) struct Vips<'s> {
    list: Vec<Vip<'s>>,
    /// (unbound port id, address) -> index in `list`.
    by_port_ip: HashMap<(&'s str, Ipv4Addr), usize>,
}

impl<'s> Vips<'s> {
    /// Linear in ports and address pairs, plus (prefix pairs x VIP addresses) per network.
    pub(super) fn of(c: &Compiler<'s>) -> Self {
        let (state, iface_of_subnet) = (c.state, &c.iface_of_subnet);
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
    pub(super) fn get(&self, port: &Port, ip: Ipv4Addr) -> Option<&Vip<'s>> {
        self.by_port_ip
            .get(&(port.id.as_str(), ip))
            .and_then(|&i| self.list.get(i))
    }
}

/// Network id -> tunnel ips (host order) of the other hosts serving a VIP FIP of a VIP on
/// that network: they learn the VIP's location from its holder's broadcast ARP.
pub(super) fn vip_flood_targets<'s>(
    c: &Compiler<'s>,
    csnat: &Csnat<'s>,
    vips: &Vips<'s>,
) -> HashMap<&'s str, Vec<u32>> {
    let mut targets: HashMap<&str, Vec<u32>> = HashMap::new();
    for fip in c.state.floatingips() {
        let Some(t) = FipTarget::of(c, fip) else {
            continue;
        };
        let Some(vip) = vips.get(t.port, t.fixed) else {
            continue;
        };
        let Some(host) = csnat.central_host(c.state, t.router_id) else {
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
pub(super) fn add_vip_candidates(
    cand: &mut BTreeMap<VipKey, VipCandidate>,
    c: &Compiler<'_>,
    csnat: &Csnat<'_>,
    vips: &Vips<'_>,
) {
    for vip in &vips.list {
        let snat_host = csnat.serves(vip.router_id, c.host);
        if !snat_host && !c.served.contains(vip.network_id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::fnv1a32;
    use crate::testing::*;
    use dvr_common::nat::{FIP_CENTRAL, FIP_VIP, FipEntry, FipSrc};
    use dvr_common::route::IpKey;
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

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
                mtu: 1450,
                ext_mtu: 1450,
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
                flags: 0,
                ext_mtu: 1450,
                _pad: [0; 2],
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
}
