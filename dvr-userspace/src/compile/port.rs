//! The compiling host's own VM ports: their taps (`local_ports`) and what they may send
//! (`port_security`).
//!
//! A *local VM port* is a VM port bound to this host, on a tenant network; its tap is
//! [`tap_name`]`(port id)`. The networks of local VM ports are the *served* networks.

use std::collections::btree_map::Entry as BEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use dvr_common::port::{
    LocalPort, PORT_FLAG_SECURITY, SEC_IP_ALLOWED, SEC_KEY_PREFIX_BITS, SEC_MAC_ONLY, SecKey,
};

use super::context::vni_of;
use super::entries::{MapEntries, be, fnv1a32};
use super::error::CompileError;
use crate::model::{Mac, Port, State};

/// The local VM ports of one host.
pub(super) struct LocalPorts<'s> {
    /// Tap name -> port id for every local VM port, whether its tap exists yet or not.
    pub(super) taps: BTreeMap<String, String>,
    /// Existing local taps: port id -> ifindex.
    pub(super) ifindex: HashMap<&'s str, u32>,
    /// The networks of the local VM ports.
    pub(super) served: HashSet<&'s str>,
    /// (port, tap ifindex, VNI) of the local VM ports whose tap exists, in state order.
    pub(super) present: Vec<(&'s Port, u32, u32)>,
}

impl<'s> LocalPorts<'s> {
    /// The VM ports bound to `host`; `ifindex_of(tap name)` is the ifindex of a tap that
    /// exists.
    pub(super) fn of(
        state: &'s State,
        host: &str,
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Self, CompileError> {
        let mut local = LocalPorts {
            taps: BTreeMap::new(),
            ifindex: HashMap::new(),
            served: HashSet::new(),
            present: Vec::new(),
        };
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
            match local.taps.entry(tap) {
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
            local.served.insert(&port.network_id);
            if let Some(ifindex) = ifindex {
                local.ifindex.insert(&port.id, ifindex);
                local.present.push((port, ifindex, vni));
            }
        }
        Ok(local)
    }
}

/// `local_ports` and `port_security` of the local VM ports whose tap exists.
pub(super) fn add_local_ports(out: &mut MapEntries, present: &[(&Port, u32, u32)]) {
    for &(port, ifindex, vni) in present {
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
                policy: 0,
            },
        );
        if port.port_security_enabled {
            add_port_security(&mut out.port_security, port, ifindex);
        }
    }
}

/// The tap Nova/os-vif creates for a port: `tap` + the first 11 characters of the port id
/// (14 characters, within IFNAMSIZ).
pub fn tap_name(port_id: &str) -> String {
    let mut name = String::with_capacity(14);
    name.push_str("tap");
    name.extend(port_id.chars().take(11));
    name
}

fn sec_key(ifindex: u32, mac: Mac, ip: Ipv4Addr) -> SecKey {
    SecKey {
        ifindex_be: ifindex.to_be(),
        mac,
        _pad: [0; 2],
        ip_be: be(ip),
    }
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

#[cfg(test)]
mod tests {
    use super::super::entries::fdb_key;
    use super::*;
    use crate::compile::compile;
    use crate::testing::*;
    use serde_json::json;

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
        let err = compile(&state_of(&v), "host-a", None, &all_taps);
        assert!(
            matches!(err, Err(CompileError::TapNameCollision { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn port_security_disabled() {
        let mut v = fixture_value();
        let vm1 = elem(&mut v, "ports", "id", "vm1");
        vm1["port_security_enabled"] = false.into();
        // Neutron refuses groups on a port without port security.
        vm1["security_groups"] = json!([]);
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
}
