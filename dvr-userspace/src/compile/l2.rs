//! Layer 2 on the tenant networks this host serves (`fdb`, `flood`), and the other hosts
//! (`dvr_macs`, `tunnel_peers`).

use std::collections::{BTreeMap, HashMap};

use dvr_common::l2::{FLOOD_MAX_LOCAL, FLOOD_MAX_REMOTE, FdbEntry, FdbKey, FloodSet, MacKey};

use super::context::{Compiler, Networks};
use super::entries::{MapEntries, fdb_key};
use super::error::CompileError;
use crate::model::{Network, Port};

/// `fdb` and `flood` of every served network. `vip_flood`: network id -> extra remote flood
/// targets (see [`super::vip`]).
pub(super) fn add_served_networks(
    out: &mut MapEntries,
    c: &Compiler<'_>,
    networks: &Networks<'_>,
    vip_flood: &HashMap<&str, Vec<u32>>,
) -> Result<(), CompileError> {
    for &(net, vni) in &networks.list {
        if !c.served.contains(net.id.as_str()) {
            continue;
        }
        let ports = networks.vm_ports(&net.id);
        add_fdb(&mut out.fdb, c, ports, vni);
        let extra = vip_flood
            .get(net.id.as_str())
            .map_or(&[][..], Vec::as_slice);
        out.flood.insert(vni, flood_set(c, net, vni, ports, extra)?);
    }
    Ok(())
}

/// Every host's DVR MAC, and the tunnel ips of the other hosts.
pub(super) fn add_hosts(out: &mut MapEntries, c: &Compiler<'_>) {
    for h in c.state.hosts() {
        let tunnel = u32::from(h.tunnel_ip);
        out.dvr_macs.insert(
            MacKey {
                mac: h.dvr_mac,
                _pad: [0; 2],
            },
            tunnel,
        );
        if h.name != c.host {
            out.tunnel_peers.insert(tunnel, 1);
        }
    }
}

/// FDB entries of one served network: every VM port's MAC, then allowed-pair MACs that are
/// no port's own MAC (a port's own MAC always wins).
fn add_fdb(fdb: &mut BTreeMap<FdbKey, FdbEntry>, c: &Compiler<'_>, ports: &[&Port], vni: u32) {
    let mut located = Vec::with_capacity(ports.len());
    for &port in ports {
        let Some((ifindex, tunnel_ip_host)) = c.location(port) else {
            continue;
        };
        let gw_mac = port
            .fixed_ips
            .iter()
            .find_map(|f| c.gw_mac_of_subnet(&f.subnet_id))
            .unwrap_or([0; 6]);
        let gw_mac6 = port
            .fixed_ips6
            .iter()
            .find_map(|f| c.gw_mac6_of_subnet(&f.subnet_id))
            .unwrap_or([0; 6]);
        let entry = FdbEntry {
            ifindex,
            tunnel_ip_host,
            gw_mac,
            gw_mac6,
            _pad: [0; 4],
        };
        fdb.insert(fdb_key(vni, port.mac), entry);
        located.push((port, entry));
    }
    for (port, entry) in located {
        let pair_macs = port
            .allowed_address_pairs
            .iter()
            .map(|p| p.mac)
            .chain(port.allowed_address_pairs6.iter().map(|p| p.mac));
        for mac in pair_macs {
            if mac != port.mac {
                fdb.entry(fdb_key(vni, mac)).or_insert(entry);
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
    use crate::compile::{compile, fnv1a32};
    use crate::testing::*;
    use serde_json::json;

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
        let err = compile(&state, "host-a", None, &every_tap);
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
}
