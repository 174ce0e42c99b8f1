//! Randomised clouds: every host's view compiles to the host's entries as the whole cloud
//! does, and validating a change by its neighbourhood refuses exactly what validating the
//! whole state refuses.
use std::collections::HashSet;

use serde_json::{Value, json};

use super::*;
use crate::compile::compile;
use crate::testing::assert_view_compiles_alike;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const HOSTS: usize = 6;
const NETS: usize = 6;
const ROUTERS: usize = 3;

fn host_name(h: usize) -> String {
    format!("h{h}")
}

/// A random valid cloud: hosts of every agent mode (two dvr_snat with external, floating IP
/// agent gateway ports on some), tenant networks (some dual-stack) on DVR routers (one HA,
/// some without gateway), centralized SNAT ports, VMs with security groups naming remote
/// groups, unbound VIP ports with listing VMs, floating IPs (associated, unassociated, with
/// and without router_id), and extra routes.
fn cloud(seed: u64) -> Value {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let modes = [
        "dvr_snat",
        "dvr_snat",
        "dvr",
        "dvr",
        "dvr_no_external",
        "dvr",
    ];
    let hosts: Vec<Value> = (0..HOSTS)
        .map(|h| {
            let mut v = json!({"name": host_name(h), "agent_mode": modes[h],
                "tunnel_ip": format!("192.0.2.{}", h + 1),
                "dvr_mac": format!("fa:16:3f:00:00:{:02x}", h + 1)});
            if modes[h] != "dvr_no_external" && (h < 2 || r.chance(70)) {
                v["external_interface"] = "eth1".into();
            }
            v
        })
        .collect();
    let mut networks = vec![json!({"id": "ext", "provider:network_type": "flat",
        "router:external": true, "mtu": 1500})];
    let mut subnets = vec![json!({"id": "ext-sub", "network_id": "ext",
        "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1", "ip_version": 4})];
    let mut ports = Vec::new();
    let mut mac = 0u32;
    let mut next_mac = || {
        mac += 1;
        format!("fa:16:3e:00:{:02x}:{:02x}", mac / 256, mac % 256)
    };
    for (h, host) in hosts.iter().enumerate() {
        if host.get("external_interface").is_some() && r.chance(50) {
            // Some unbound: found by device_id, as Neutron sets it.
            let bound = if r.chance(50) {
                host_name(h)
            } else {
                String::new()
            };
            ports.push(json!({"id": format!("fg-{h}"), "network_id": "ext",
                "mac_address": next_mac(), "device_owner": "network:floatingip_agent_gateway",
                "device_id": host_name(h), "binding:host_id": bound,
                "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": format!("203.0.113.{}", 200 + h)}]}));
        }
    }
    let mut routers = Vec::new();
    for i in 0..ROUTERS {
        let mut rt = json!({"id": format!("r{i}"), "admin_state_up": r.chance(90)});
        if i == 0 || r.chance(60) {
            rt["external_gateway_info"] = json!({"network_id": "ext", "enable_snat": r.chance(80),
                "external_fixed_ips": [{"subnet_id": "ext-sub", "ip_address": format!("203.0.113.{}", 10 + i)}]});
        }
        if i == 2 && rt.get("external_gateway_info").is_some() {
            rt["ha"] = true.into();
            rt["ha_hosts"] = json!([{"host": "h0", "priority": 2}, {"host": "h1", "priority": 1}]);
        }
        routers.push(rt);
    }
    let groups = ["sg-a", "sg-b", "sg-c"];
    let security_groups: Vec<Value> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let remote = groups[(i + 1) % groups.len()];
            json!({"id": g, "security_group_rules": [
                {"id": format!("{g}-out"), "direction": "egress"},
                {"id": format!("{g}-self"), "direction": "ingress", "remote_group_id": g},
                {"id": format!("{g}-other"), "direction": "ingress", "protocol": "tcp",
                 "port_range_min": 80, "port_range_max": 80, "remote_group_id": remote}]})
        })
        .collect();
    let security_group_rules = vec![json!({"id": "sep-1", "security_group_id": "sg-a",
        "direction": "ingress", "protocol": "udp", "remote_group_id": "sg-c"})];
    let mut fips = Vec::new();
    let mut vms: Vec<(String, String, String)> = Vec::new();
    for n in 0..NETS {
        let net = format!("n{n}");
        networks.push(json!({"id": net, "provider:network_type": "vxlan",
            "provider:segmentation_id": 100 + n, "mtu": 1450}));
        let sub = format!("s{n}");
        subnets.push(
            json!({"id": sub, "network_id": net, "cidr": format!("10.{n}.0.0/24"),
            "gateway_ip": format!("10.{n}.0.1"), "ip_version": 4}),
        );
        let dual = r.chance(40);
        if dual {
            subnets.push(json!({"id": format!("s{n}v6"), "network_id": net,
                "cidr": format!("fd00:{n}::/64"), "gateway_ip": format!("fd00:{n}::1"),
                "ip_version": 6, "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}));
        }
        let router = if r.chance(85) {
            Some(r.below(ROUTERS))
        } else {
            None
        };
        if let Some(ri) = router {
            let mut fixed = vec![json!({"subnet_id": sub, "ip_address": format!("10.{n}.0.1")})];
            if dual {
                fixed.push(
                    json!({"subnet_id": format!("s{n}v6"), "ip_address": format!("fd00:{n}::1")}),
                );
            }
            ports.push(json!({"id": format!("rif-{n}"), "network_id": net, "mac_address": next_mac(),
                "device_owner": "network:router_interface_distributed", "device_id": format!("r{ri}"),
                "fixed_ips": fixed}));
            if routers[ri].get("external_gateway_info").is_some() {
                let snat_host = if ri == 2 {
                    None
                } else {
                    Some(host_name(ri % 2))
                };
                let mut p = json!({"id": format!("csnat-{n}"), "network_id": net,
                    "mac_address": next_mac(), "device_owner": "network:router_centralized_snat",
                    "device_id": format!("r{ri}"),
                    "fixed_ips": [{"subnet_id": sub, "ip_address": format!("10.{n}.0.2")}]});
                if let Some(h) = snat_host {
                    p["binding:host_id"] = h.into();
                }
                ports.push(p);
            }
        }
        let count = 1 + r.below(5);
        for i in 0..count {
            let id = format!("vm-{n}-{i}");
            let ip = format!("10.{n}.0.{}", 10 + i);
            let host = host_name(r.below(HOSTS));
            let mut p = json!({"id": id, "network_id": net, "mac_address": next_mac(),
                "device_owner": "compute:nova", "device_id": format!("inst-{n}-{i}"),
                "binding:host_id": host,
                "fixed_ips": [{"subnet_id": sub, "ip_address": ip}]});
            if r.chance(70) {
                p["security_groups"] = json!([groups[r.below(groups.len())]]);
            }
            if r.chance(20) {
                p["allowed_address_pairs"] = json!([{"ip_address": format!("10.{n}.0.250")}]);
            }
            ports.push(p);
            vms.push((id, ip, net.clone()));
        }
        if r.chance(40) {
            ports.push(
                json!({"id": format!("vip-{n}"), "network_id": net, "mac_address": next_mac(),
                "fixed_ips": [{"subnet_id": sub, "ip_address": format!("10.{n}.0.250")}]}),
            );
        }
        if let Some(ri) = router.filter(|_| r.chance(40)) {
            let i = routers.len().min(ri);
            if let Some(rt) = routers.get_mut(i) {
                rt["routes"] = json!([{"destination": format!("172.16.{n}.0/24"),
                    "nexthop": format!("10.{n}.0.10")}]);
            }
        }
    }
    for (k, (port, ip, net)) in vms.iter().enumerate() {
        let n: usize = net.trim_start_matches('n').parse().unwrap_or(0);
        let routed = ports.iter().any(|p| p["id"] == format!("rif-{n}"));
        if !r.chance(35) {
            continue;
        }
        let mut f = json!({"id": format!("fip-{k}"), "floating_network_id": "ext",
            "floating_ip_address": format!("203.0.113.{}", 50 + k)});
        if routed {
            f["port_id"] = port.as_str().into();
            f["fixed_ip_address"] = ip.as_str().into();
            if r.chance(50) {
                let rif = ports.iter().find(|p| p["id"] == format!("rif-{n}"));
                f["router_id"] = rif.map_or(Value::Null, |p| p["device_id"].clone());
            }
        }
        fips.push(f);
    }
    json!({"hosts": hosts, "networks": networks, "subnets": subnets, "ports": ports,
        "routers": routers, "floatingips": fips, "security_groups": security_groups,
        "security_group_rules": security_group_rules})
}

/// The clouds that validate (a random draw may break a rule, e.g. routes via a port that
/// is not there, or a router gateway on an HA router without ports).
fn valid_clouds() -> Vec<Value> {
    (1..=60u64)
        .map(cloud)
        .filter(|v| match State::from_json(&v.to_string()) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("{e}");
                false
            }
        })
        .collect()
}

#[test]
fn every_hosts_view_compiles_as_the_whole_cloud() {
    let clouds = valid_clouds();
    assert!(
        clouds.len() >= 30,
        "only {} random clouds validate",
        clouds.len()
    );
    let taps = |t: &str| Some(crate::compile::fnv1a32(t));
    let mut smaller = 0;
    for v in &clouds {
        let Ok(state) = State::from_json(&v.to_string()) else {
            continue;
        };
        for h in 0..HOSTS {
            let host = host_name(h);
            let Ok(full) = compile(&state, &host, None, &taps) else {
                continue;
            };
            assert_view_compiles_alike(v, &host, &taps, &full);
            let store = Store::of_doc(&v.to_string()).unwrap_or_default();
            if store.view(&host).len() < store.len() {
                smaller += 1;
            }
        }
    }
    assert!(smaller > 0, "no view was smaller than its cloud");
}

/// One random edit of one resource: a field set to a value taken from another resource of
/// the cloud (so collisions and dangling references are likely), or the resource deleted.
fn mutate(v: &Value, r: &mut Rng) -> (String, Option<Value>) {
    let kinds = KINDS;
    let kind = kinds[r.below(kinds.len())];
    let list = v[kind].as_array().cloned().unwrap_or_default();
    let Some(item) = list.get(r.below(list.len())).cloned() else {
        return (String::new(), None);
    };
    let id_field = if kind == "hosts" { "name" } else { "id" };
    let id = item[id_field].as_str().unwrap_or_default().to_string();
    let key = key(kind, &id);
    if r.chance(15) {
        return (key, None);
    }
    let mut item = item;
    let pick = |r: &mut Rng, kind: &str, field: &str| -> Value {
        let l = v[kind].as_array().cloned().unwrap_or_default();
        l.get(r.below(l.len()))
            .map_or(Value::Null, |o| o[field].clone())
    };
    match kind {
        "ports" => match r.below(5) {
            0 => item["mac_address"] = pick(r, "ports", "mac_address"),
            1 => item["fixed_ips"] = pick(r, "ports", "fixed_ips"),
            2 => item["network_id"] = pick(r, "networks", "id"),
            3 => item["binding:host_id"] = json!(format!("h{}", r.below(HOSTS + 1))),
            _ => item["security_groups"] = json!(["sg-x"]),
        },
        "subnets" => match r.below(2) {
            0 => item["cidr"] = pick(r, "subnets", "cidr"),
            _ => item["network_id"] = pick(r, "networks", "id"),
        },
        "networks" => match r.below(2) {
            0 => item["provider:segmentation_id"] = pick(r, "networks", "provider:segmentation_id"),
            _ => item["router:external"] = json!(r.chance(50)),
        },
        "floatingips" => match r.below(3) {
            0 => item["floating_ip_address"] = pick(r, "floatingips", "floating_ip_address"),
            1 => item["port_id"] = pick(r, "ports", "id"),
            _ => item["router_id"] = pick(r, "routers", "id"),
        },
        "hosts" => match r.below(3) {
            0 => item["tunnel_ip"] = pick(r, "hosts", "tunnel_ip"),
            1 => item["dvr_mac"] = pick(r, "hosts", "dvr_mac"),
            _ => item["agent_mode"] = json!("dvr"),
        },
        "routers" => match r.below(2) {
            0 => item["ha"] = json!(r.chance(50)),
            _ => item["external_gateway_info"] = pick(r, "routers", "external_gateway_info"),
        },
        "security_groups" => {
            item["security_group_rules"] = json!([{"id": "sep-1", "remote_group_id": "sg-b"}]);
        }
        _ => item["remote_group_id"] = json!(["sg-a", "sg-z"][r.below(2)]),
    }
    (key, Some(item))
}

/// `v` with the resource at `key` replaced (or deleted).
fn edited(v: &Value, key: &str, new: Option<&Value>) -> Value {
    let mut v = v.clone();
    let Some((kind, id)) = split(key) else {
        return v;
    };
    let id_field = if kind == "hosts" { "name" } else { "id" };
    if let Some(list) = v[kind].as_array_mut() {
        list.retain(|o| o[id_field] != id);
        if let Some(new) = new {
            list.push(new.clone());
        }
    }
    v
}

#[test]
fn a_change_is_refused_by_its_neighbourhood_exactly_when_by_the_whole_state() {
    let clouds = valid_clouds();
    let mut r = Rng(7);
    let (mut refused, mut accepted) = (0, 0);
    for v in clouds.iter().take(30) {
        let mut store = Store::of_doc(&v.to_string()).unwrap_or_default();
        let mut current = v.clone();
        for _ in 0..60 {
            let (key, new) = mutate(&current, &mut r);
            if key.is_empty() {
                continue;
            }
            let next = edited(&current, &key, new.as_ref());
            let whole = State::from_json(&next.to_string());
            let value = new.as_ref().map(|n| n.to_string().into_boxed_str());
            let old = store.get(&key).map(|s| s.to_string().into_boxed_str());
            store.set(&key, value, u64::MAX);
            let part = store.check([key.as_str()]);
            assert_eq!(
                part.is_ok(),
                whole.is_ok(),
                "{key} -> {new:?}\nneighbourhood: {:?}\nwhole: {:?}",
                part.err().map(|e| e.to_string()),
                whole.err().map(|e| e.to_string())
            );
            if whole.is_ok() {
                accepted += 1;
                current = next;
            } else {
                refused += 1;
                store.set(&key, old, u64::MAX);
            }
            store.settle();
        }
    }
    assert!(
        refused > 50 && accepted > 50,
        "refused {refused}, accepted {accepted}"
    );
}

#[test]
fn a_value_of_another_id_or_not_json_is_refused_naming_the_key() {
    let mut store = Store::of_doc(&crate::testing::fixture_value().to_string()).unwrap_or_default();
    store.set("ports/vm1", Some("{\"id\": \"vm9\"}".into()), 0);
    store.set("hosts/host-a", Some("{nope".into()), 0);
    let e = store
        .check(["ports/vm1", "hosts/host-a"])
        .err()
        .map(|e| e.to_string());
    let e = e.unwrap_or_default();
    assert!(
        e.contains("port vm1: the value at key /dvr/v1/ports/vm1 holds id \"vm9\""),
        "{e}"
    );
    assert!(
        e.contains("host host-a: the value at key /dvr/v1/hosts/host-a is not JSON"),
        "{e}"
    );
}

#[test]
fn the_neighbourhood_of_a_port_is_its_network_not_the_cloud() {
    let v = cloud(3);
    let store = Store::of_doc(&v.to_string()).unwrap_or_default();
    let n: HashSet<Key> = store.neighbourhood(["ports/vm-0-0"]);
    assert!(n.contains("networks/n0") && n.contains("subnets/s0"));
    assert!(!n.iter().any(|k| k.starts_with("ports/vm-5-")), "{n:?}");
}
