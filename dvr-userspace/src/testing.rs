//! Test support shared by several modules' unit tests: the model's fixture state and JSON
//! editing helpers, and the compile tests' fixtures (hosts, taps, expected entries).
//! Only built for tests (`#[cfg(test)]` in lib.rs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dvr_common::l2::{FdbEntry, FdbKey, FloodSet};
use dvr_common::nat::{FIP_LOCAL, FIP_REMOTE, FIP_UNASSOCIATED, FipEntry};
use dvr_common::route::{Endpoint, RouteKey};
use dvr_common::snat::{SnatRouter, SnatSteer};
use serde_json::{Value, json};

use crate::compile::{Compiled, compile, fnv1a32};
use crate::model::{FieldError, Mac, State, StateError, display_lines};
use crate::scope::Store;

// ---------------------------------------------------------------------------------------------
// The model's fixture state and how tests edit it.

/// Two hosts; one DVR router with interfaces on subnet1 (net1) and subnet2 (net2) and a
/// gateway on the external network; VM1 (net1) and VM2 (net2) on host-a, VM3 (net1) on
/// host-b; a DHCP port, a SNAT port and a floating IP; VM1 carries security group sg1 (all
/// egress, everything from its members, SSH from anywhere), the other ports name no
/// `security_groups`. Unknown fields are sprinkled in.
pub(crate) const FIXTURE: &str = r#"{
  "generated_by": "test",
  "networks": [
    {"id": "net1", "name": "private-1", "provider:network_type": "vxlan",
     "provider:segmentation_id": 1001, "router:external": false, "mtu": 1450,
     "status": "ACTIVE", "tenant_id": "t1", "shared": false},
    {"id": "net2", "name": "private-2", "provider:network_type": "vxlan",
     "provider:segmentation_id": 1002},
    {"id": "ext", "name": "public", "provider:network_type": "flat",
     "provider:physical_network": "physnet1", "provider:segmentation_id": null,
     "router:external": true, "mtu": 1500}
  ],
  "subnets": [
    {"id": "subnet1", "network_id": "net1", "cidr": "10.0.1.0/24", "gateway_ip": "10.0.1.1",
     "ip_version": 4, "enable_dhcp": true, "allocation_pools": [{"start": "10.0.1.2", "end": "10.0.1.254"}]},
    {"id": "subnet2", "network_id": "net2", "cidr": "10.0.2.0/24", "gateway_ip": "10.0.2.1",
     "ip_version": 4},
    {"id": "ext-subnet", "network_id": "ext", "cidr": "203.0.113.0/24",
     "gateway_ip": "203.0.113.1", "ip_version": 4}
  ],
  "ports": [
    {"id": "vm1", "network_id": "net1", "mac_address": "fa:16:3e:00:00:01",
     "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.10"}],
     "device_owner": "compute:nova", "device_id": "instance-1", "binding:host_id": "host-a",
     "binding:vif_type": "ovs", "security_groups": ["sg1"]},
    {"id": "vm2", "network_id": "net2", "mac_address": "fa:16:3e:00:00:02",
     "fixed_ips": [{"subnet_id": "subnet2", "ip_address": "10.0.2.20"}],
     "device_owner": "compute:nova", "device_id": "instance-2", "binding:host_id": "host-a"},
    {"id": "vm3", "network_id": "net1", "mac_address": "fa:16:3e:00:00:03",
     "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.30"}],
     "device_owner": "compute:az1", "device_id": "instance-3", "binding:host_id": "host-b"},
    {"id": "rif1", "network_id": "net1", "mac_address": "fa:16:3e:00:01:01",
     "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.1"}],
     "device_owner": "network:router_interface_distributed", "device_id": "router1",
     "binding:host_id": ""},
    {"id": "rif2", "network_id": "net2", "mac_address": "fa:16:3e:00:01:02",
     "fixed_ips": [{"subnet_id": "subnet2", "ip_address": "10.0.2.1"}],
     "device_owner": "network:router_interface_distributed", "device_id": "router1"},
    {"id": "snat1", "network_id": "net1", "mac_address": "fa:16:3e:00:02:01",
     "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.5"}],
     "device_owner": "network:router_centralized_snat", "device_id": "router1",
     "binding:host_id": "host-b"},
    {"id": "dhcp1", "network_id": "net1", "mac_address": "fa:16:3e:00:03:01",
     "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.2"}],
     "device_owner": "network:dhcp", "device_id": "dhcp-host-b", "binding:host_id": "host-b"},
    {"id": "rgw1", "network_id": "ext", "mac_address": "fa:16:3e:00:04:01",
     "fixed_ips": [{"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"}],
     "device_owner": "network:router_gateway", "device_id": "router1",
     "binding:host_id": "host-b"}
  ],
  "routers": [
    {"id": "router1", "name": "r1", "distributed": true, "ha": false, "admin_state_up": true,
     "external_gateway_info": {"network_id": "ext", "enable_snat": true,
       "external_fixed_ips": [{"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"}]}}
  ],
  "floatingips": [
    {"id": "fip1", "floating_ip_address": "203.0.113.50", "floating_network_id": "ext",
     "router_id": "router1", "port_id": "vm1", "fixed_ip_address": "10.0.1.10",
     "status": "ACTIVE"}
  ],
  "hosts": [
    {"name": "host-a", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1",
     "dvr_mac": "fa:16:3f:00:00:0a"},
    {"name": "host-b", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.2",
     "dvr_mac": "fa:16:3f:00:00:0b", "external_interface": "eth1", "rack": 7}
  ],
  "security_groups": [
    {"id": "sg1", "name": "default", "stateful": true, "tenant_id": "t1",
     "security_group_rules": [
       {"id": "sg1-egress", "security_group_id": "sg1", "direction": "egress",
        "ethertype": "IPv4", "protocol": null, "port_range_min": null, "port_range_max": null,
        "remote_ip_prefix": null, "remote_group_id": null},
       {"id": "sg1-members", "direction": "ingress", "ethertype": "IPv4",
        "remote_group_id": "sg1"},
       {"id": "sg1-ssh", "direction": "ingress", "protocol": "tcp", "port_range_min": 22,
        "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}
     ]}
  ]
}"#;

pub(crate) fn fixture_value() -> Value {
    match serde_json::from_str(FIXTURE) {
        Ok(v) => v,
        Err(e) => panic!("fixture is not JSON: {e}"),
    }
}

pub(crate) fn state_of(v: &Value) -> State {
    match State::from_json(&v.to_string()) {
        Ok(s) => s,
        Err(e) => panic!("state does not validate:\n{e}"),
    }
}

/// The element of `list` whose `key` is `id`, for editing.
pub(crate) fn elem<'a>(v: &'a mut Value, list: &str, key: &str, id: &str) -> &'a mut Value {
    let found = v[list]
        .as_array_mut()
        .and_then(|items| items.iter_mut().find(|e| e[key] == id));
    match found {
        Some(e) => e,
        None => panic!("no {list} element with {key} {id}"),
    }
}

pub(crate) fn push(v: &mut Value, list: &str, item: Value) {
    match v[list].as_array_mut() {
        Some(items) => items.push(item),
        None => panic!("{list} is not a list"),
    }
}

/// The fixture after `edit`: the errors it produces (panics if it validates).
pub(crate) fn errors_after(edit: impl FnOnce(&mut Value)) -> Vec<FieldError> {
    let mut v = fixture_value();
    edit(&mut v);
    match State::from_json(&v.to_string()) {
        Ok(_) => panic!("edited fixture validated"),
        Err(StateError::Invalid(errors)) => errors,
        Err(e) => panic!("not a validation error: {e}"),
    }
}

/// Asserts one error is about `kind id`, `field`, with `text` in its message, and that its
/// Display line names the object and field.
#[track_caller]
pub(crate) fn assert_error(errors: &[FieldError], kind: &str, id: &str, field: &str, text: &str) {
    let found = errors
        .iter()
        .find(|e| e.kind == kind && e.id == id && e.field == field && e.message.contains(text));
    match found {
        Some(e) => {
            let line = e.to_string();
            assert!(
                line.starts_with(&format!("{kind} {id}: field `{field}`: ")),
                "{line}"
            );
        }
        None => panic!(
            "no error `{kind} {id}: field `{field}`: ...{text}...` among:\n{}",
            display_lines(errors)
        ),
    }
}

/// Router1 of `v` with `routes` (its extra routes) set.
pub(crate) fn with_routes(v: &mut Value, routes: Value) {
    elem(v, "routers", "id", "router1")["routes"] = routes;
}

/// The fixture plus host-c (`dvr_snat`), with router1's `ha` and `ha_hosts` set.
pub(crate) fn with_ha(v: &mut Value, ha: bool, hosts: Value) {
    push(
        v,
        "hosts",
        serde_json::json!({"name": "host-c", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.3",
                           "dvr_mac": "fa:16:3f:00:00:0c", "external_interface": "eth1"}),
    );
    let r = elem(v, "routers", "id", "router1");
    r["ha"] = ha.into();
    r["ha_hosts"] = hosts;
}

/// The fixture made dual-stack: net1 also carries the IPv6 subnet `subnet6a` (fd00:1::/64,
/// slaac) and net2 `subnet6b` (fd00:2::/64, dhcpv6-stateful), each with an IPv6-only
/// interface port of router1 (`rif6a`, `rif6b`: Neutron gives a router's IPv6 subnets their
/// own port); VM1 and VM3 hold the EUI-64 addresses of their MACs, VM2 a chosen one, and
/// VM1 an IPv6 allowed address pair.
pub(crate) fn dual_stack_value() -> Value {
    let mut v = fixture_value();
    for (id, net, cidr, gateway, mode) in [
        ("subnet6a", "net1", "fd00:1::/64", "fd00:1::1", "slaac"),
        (
            "subnet6b",
            "net2",
            "fd00:2::/64",
            "fd00:2::1",
            "dhcpv6-stateful",
        ),
    ] {
        push(
            &mut v,
            "subnets",
            json!({"id": id, "network_id": net, "cidr": cidr, "gateway_ip": gateway,
                "ip_version": 6, "ipv6_ra_mode": mode, "ipv6_address_mode": mode}),
        );
    }
    for (id, net, sub, ip, mac) in [
        (
            "rif6a",
            "net1",
            "subnet6a",
            "fd00:1::1",
            "fa:16:3e:00:06:01",
        ),
        (
            "rif6b",
            "net2",
            "subnet6b",
            "fd00:2::1",
            "fa:16:3e:00:06:02",
        ),
    ] {
        push(
            &mut v,
            "ports",
            json!({"id": id, "network_id": net, "mac_address": mac,
                "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
                "device_owner": "network:router_interface_distributed", "device_id": "router1"}),
        );
    }
    let add_ip = |v: &mut Value, port: &str, sub: &str, ip: &str| {
        if let Some(list) = elem(v, "ports", "id", port)["fixed_ips"].as_array_mut() {
            list.push(json!({"subnet_id": sub, "ip_address": ip}));
        }
    };
    add_ip(&mut v, "vm1", "subnet6a", "fd00:1::f816:3eff:fe00:1");
    add_ip(&mut v, "vm3", "subnet6a", "fd00:1::f816:3eff:fe00:3");
    add_ip(&mut v, "vm2", "subnet6b", "fd00:2::20");
    elem(&mut v, "ports", "id", "vm1")["allowed_address_pairs"] = json!([
        {"ip_address": "fd00:1::100"},
        {"ip_address": "fd00:9::/64", "mac_address": "fa:16:3e:aa:00:06"}
    ]);
    v
}

// ---------------------------------------------------------------------------------------------
// Compile fixtures: the model fixture's hosts and taps, the floating IP, SNAT and HA states
// built on one another, and the entries they compile to.

pub(crate) const IFX_VM1: u32 = 11;
pub(crate) const IFX_VM2: u32 = 12;
pub(crate) const IFX_VM3: u32 = 21;
pub(crate) const TUN_A: u32 = 0xc000_0201; // 192.0.2.1
pub(crate) const TUN_B: u32 = 0xc000_0202; // 192.0.2.2
pub(crate) const DVR_MAC_A: Mac = [0xfa, 0x16, 0x3f, 0, 0, 0x0a];
pub(crate) const DVR_MAC_B: Mac = [0xfa, 0x16, 0x3f, 0, 0, 0x0b];
pub(crate) const MAC_VM1: Mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
pub(crate) const MAC_VM2: Mac = [0xfa, 0x16, 0x3e, 0, 0, 2];
pub(crate) const MAC_VM3: Mac = [0xfa, 0x16, 0x3e, 0, 0, 3];
pub(crate) const MAC_RIF1: Mac = [0xfa, 0x16, 0x3e, 0, 1, 1];
pub(crate) const MAC_RIF2: Mac = [0xfa, 0x16, 0x3e, 0, 1, 2];
pub(crate) const VNI1: u32 = 1001;
pub(crate) const VNI2: u32 = 1002;

/// Taps that exist: the fixture's VM taps on both hosts.
pub(crate) fn all_taps(tap: &str) -> Option<u32> {
    match tap {
        "tapvm1" => Some(IFX_VM1),
        "tapvm2" => Some(IFX_VM2),
        "tapvm3" => Some(IFX_VM3),
        _ => None,
    }
}

/// An address in network byte order, as `*_be` fields hold it.
pub(crate) fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_ne_bytes([a, b, c, d])
}

pub(crate) fn compiled(v: &Value, host: &str, taps: &dyn Fn(&str) -> Option<u32>) -> Compiled {
    let full = match compile(&state_of(v), host, None, taps) {
        Ok(c) => c,
        Err(e) => panic!("compile {host}: {e}"),
    };
    assert_view_compiles_alike(v, host, taps, &full);
    full
}

/// Compiling `host`'s view of `v` (what the agent compiles in a cluster) gives `full`.
#[track_caller]
pub(crate) fn assert_view_compiles_alike(
    v: &Value,
    host: &str,
    taps: &dyn Fn(&str) -> Option<u32>,
    full: &Compiled,
) {
    let store = match Store::of_doc(&v.to_string()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let view = store.view(host);
    let state = match State::from_json(&store.doc(&view)) {
        Ok(s) => s,
        Err(e) => panic!("{host}'s view does not validate:\n{e}"),
    };
    match compile(&state, host, None, taps) {
        Ok(c) => assert!(
            c == *full,
            "{host}'s view ({} of {} resources) compiles differently:\n{}",
            view.len(),
            store.len(),
            compiled_diff(full, &c)
        ),
        Err(e) => panic!("{host}'s view does not compile: {e}"),
    }
}

/// Which parts of two compiles differ (for a failing comparison).
fn compiled_diff(a: &Compiled, b: &Compiled) -> String {
    let (ea, eb) = (format!("{:#?}", a), format!("{:#?}", b));
    let (la, lb): (Vec<&str>, Vec<&str>) = (ea.lines().collect(), eb.lines().collect());
    let only_a: Vec<&&str> = la.iter().filter(|l| !lb.contains(l)).take(30).collect();
    let only_b: Vec<&&str> = lb.iter().filter(|l| !la.contains(l)).take(30).collect();
    format!("full only: {only_a:#?}\nview only: {only_b:#?}")
}

pub(crate) fn fdb(ifindex: u32, tunnel_ip_host: u32, gw_mac: Mac) -> FdbEntry {
    FdbEntry {
        ifindex,
        tunnel_ip_host,
        gw_mac,
        gw_mac6: [0; 6],
        _pad: [0; 4],
    }
}

pub(crate) fn endpoint(mac: Mac, ifindex: u32, tunnel_ip_host: u32) -> Endpoint {
    Endpoint {
        mac,
        _pad: [0; 2],
        ifindex,
        tunnel_ip_host,
    }
}

pub(crate) fn flood(local: &[u32], remote: &[u32]) -> FloodSet {
    let mut set = FloodSet::default();
    set.local[..local.len()].copy_from_slice(local);
    set.remote[..remote.len()].copy_from_slice(remote);
    set.n_local = local.len() as u32;
    set.n_remote = remote.len() as u32;
    set
}

pub(crate) fn route_key(prefix: u32, router: &str, net_be: u32) -> (u32, RouteKey) {
    (
        prefix,
        RouteKey {
            router_id_be: fnv1a32(router).to_be(),
            ip_be: net_be,
        },
    )
}

// Floating IPs: external network 10.5.0.0/16 (gateway 10.5.0.1); router r1 on n1
// (192.168.1.0/24) and n2 (192.168.2.0/24); host-a and host-b have external "ext0" and fg
// ports 10.5.1.1 / 10.5.1.2; host-c is dvr_no_external. FIPs: 10.5.2.1 -> vma (host-a,
// explicit router and fixed IP), 10.5.2.2 -> vmb (host-b, both inferred), 10.5.2.3
// unassociated, 10.5.2.4 -> vmc (host-c).
pub(crate) const IFX_VMA: u32 = 31;
pub(crate) const IFX_VMB: u32 = 32;
pub(crate) const IFX_VMC: u32 = 33;
pub(crate) const TUN_C: u32 = 0xc000_0203; // 192.0.2.3
pub(crate) const FVNI1: u32 = 2001;
pub(crate) const FVNI2: u32 = 2002;
pub(crate) const MAC_VMA: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0a];
pub(crate) const MAC_VMB: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0b];
pub(crate) const MAC_R1N1: Mac = [0xfa, 0x16, 0x3e, 0, 1, 0x11];
pub(crate) const MAC_R1N2: Mac = [0xfa, 0x16, 0x3e, 0, 1, 0x12];

pub(crate) fn fip_fixture() -> Value {
    let vm = |id: &str, net: &str, sub: &str, ip: &str, mac: &str, host: &str| {
        json!({"id": id, "network_id": net, "mac_address": mac,
            "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
            "device_owner": "compute:nova", "binding:host_id": host})
    };
    json!({
        "networks": [
            {"id": "ext", "provider:network_type": "flat", "provider:physical_network": "physnet1",
             "router:external": true},
            {"id": "n1", "provider:network_type": "vxlan", "provider:segmentation_id": FVNI1},
            {"id": "n2", "provider:network_type": "vxlan", "provider:segmentation_id": FVNI2}
        ],
        "subnets": [
            {"id": "ext-sub", "network_id": "ext", "cidr": "10.5.0.0/16", "gateway_ip": "10.5.0.1", "ip_version": 4},
            {"id": "s1", "network_id": "n1", "cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1", "ip_version": 4},
            {"id": "s2", "network_id": "n2", "cidr": "192.168.2.0/24", "gateway_ip": "192.168.2.1", "ip_version": 4}
        ],
        "routers": [
            {"id": "r1", "external_gateway_info": {"network_id": "ext",
                "external_fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.0.10"}]}}
        ],
        "ports": [
            {"id": "r1-n1", "network_id": "n1", "mac_address": "fa:16:3e:00:01:11",
             "fixed_ips": [{"subnet_id": "s1", "ip_address": "192.168.1.1"}],
             "device_owner": "network:router_interface_distributed", "device_id": "r1"},
            {"id": "r1-n2", "network_id": "n2", "mac_address": "fa:16:3e:00:01:12",
             "fixed_ips": [{"subnet_id": "s2", "ip_address": "192.168.2.1"}],
             "device_owner": "network:router_interface_distributed", "device_id": "r1"},
            {"id": "fg-a", "network_id": "ext", "mac_address": "fa:16:3e:00:02:0a",
             "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.1.1"}],
             "device_owner": "network:floatingip_agent_gateway", "device_id": "host-a",
             "binding:host_id": "host-a"},
            // Unbound: found by its device_id, as Neutron sets it.
            {"id": "fg-b", "network_id": "ext", "mac_address": "fa:16:3e:00:02:0b",
             "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.1.2"}],
             "device_owner": "network:floatingip_agent_gateway", "device_id": "host-b"},
            vm("vma", "n1", "s1", "192.168.1.10", "fa:16:3e:00:00:0a", "host-a"),
            vm("vmb", "n2", "s2", "192.168.2.20", "fa:16:3e:00:00:0b", "host-b"),
            vm("vmc", "n1", "s1", "192.168.1.30", "fa:16:3e:00:00:0c", "host-c")
        ],
        "floatingips": [
            {"id": "fip-a", "floating_ip_address": "10.5.2.1", "floating_network_id": "ext",
             "router_id": "r1", "port_id": "vma", "fixed_ip_address": "192.168.1.10"},
            {"id": "fip-b", "floating_ip_address": "10.5.2.2", "floating_network_id": "ext",
             "port_id": "vmb"},
            {"id": "fip-u", "floating_ip_address": "10.5.2.3", "floating_network_id": "ext"},
            {"id": "fip-c", "floating_ip_address": "10.5.2.4", "floating_network_id": "ext",
             "router_id": "r1", "port_id": "vmc"}
        ],
        "hosts": [
            {"name": "host-a", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1",
             "dvr_mac": "fa:16:3f:00:00:0a", "external_interface": "ext0"},
            {"name": "host-b", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.2",
             "dvr_mac": "fa:16:3f:00:00:0b", "external_interface": "ext0"},
            // Names an interface, but the mode wins.
            {"name": "host-c", "agent_mode": "dvr_no_external", "tunnel_ip": "192.0.2.3",
             "dvr_mac": "fa:16:3f:00:00:0c", "external_interface": "ext0"}
        ]
    })
}

pub(crate) fn fip_taps(tap: &str) -> Option<u32> {
    match tap {
        "tapvma" => Some(IFX_VMA),
        "tapvmb" => Some(IFX_VMB),
        "tapvmc" => Some(IFX_VMC),
        _ => None,
    }
}

pub(crate) fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

pub(crate) fn fip_vma_local() -> FipEntry {
    FipEntry {
        fixed_ip_be: ip(192, 168, 1, 10),
        vni: FVNI1,
        router_id: fnv1a32("r1"),
        ifindex: IFX_VMA,
        tunnel_ip_host: 0,
        port_mac: MAC_VMA,
        gw_mac: MAC_R1N1,
        flags: FIP_LOCAL,
        mtu: 1450,
        ext_mtu: 1450,
    }
}

pub(crate) fn fip_vmb_remote() -> FipEntry {
    FipEntry {
        fixed_ip_be: ip(192, 168, 2, 20),
        vni: FVNI2,
        router_id: fnv1a32("r1"),
        ifindex: 0,
        tunnel_ip_host: TUN_B,
        port_mac: MAC_VMB,
        gw_mac: MAC_R1N2,
        flags: FIP_REMOTE,
        mtu: 1450,
        ext_mtu: 1450,
    }
}

pub(crate) fn fip_unassociated() -> FipEntry {
    FipEntry {
        flags: FIP_UNASSOCIATED,
        ..FipEntry::default()
    }
}

/// Known here, served elsewhere (or nowhere).
pub(crate) fn fip_known(fixed_ip_be: u32, vni: u32) -> FipEntry {
    FipEntry {
        fixed_ip_be,
        vni,
        router_id: fnv1a32("r1"),
        mtu: 1450,
        ext_mtu: 1450,
        ..FipEntry::default()
    }
}

pub(crate) fn both_tenant_subnets() -> BTreeMap<(u32, u32), u32> {
    BTreeMap::from([
        ((24, ip(192, 168, 1, 0)), fnv1a32("r1")),
        ((24, ip(192, 168, 2, 0)), fnv1a32("r1")),
    ])
}

// Centralized SNAT: fip_fixture plus host-s (dvr_snat, external "ext0", fg port
// 10.5.1.4) holding r1's csnat ports on s1 and s2, host-n (dvr_no_external) with vmn on
// n1 and FIP 10.5.2.7, and r1's gateway address 10.5.3.1.
pub(crate) const TUN_S: u32 = 0xc000_0204; // 192.0.2.4
pub(crate) const TUN_N: u32 = 0xc000_0205; // 192.0.2.5
pub(crate) const IFX_VMS: u32 = 34;
pub(crate) const MAC_CSNAT1: Mac = [0xfa, 0x16, 0x3e, 0, 3, 0x11];
pub(crate) const MAC_CSNAT2: Mac = [0xfa, 0x16, 0x3e, 0, 3, 0x12];
pub(crate) const MAC_VMC: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0c];
pub(crate) const MAC_VMN: Mac = [0xfa, 0x16, 0x3e, 0, 0, 0x0e];

pub(crate) fn snat_fixture() -> Value {
    let mut v = fip_fixture();
    elem(&mut v, "routers", "id", "r1")["external_gateway_info"] = json!({"network_id": "ext",
        "enable_snat": true,
        "external_fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.3.1"}]});
    push(
        &mut v,
        "hosts",
        json!({"name": "host-s", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.4",
            "dvr_mac": "fa:16:3f:00:00:0d", "external_interface": "ext0"}),
    );
    push(
        &mut v,
        "hosts",
        json!({"name": "host-n", "agent_mode": "dvr_no_external", "tunnel_ip": "192.0.2.5",
            "dvr_mac": "fa:16:3f:00:00:0e"}),
    );
    for (id, net, sub, ip, mac) in [
        ("r1-snat1", "n1", "s1", "192.168.1.5", "fa:16:3e:00:03:11"),
        ("r1-snat2", "n2", "s2", "192.168.2.5", "fa:16:3e:00:03:12"),
    ] {
        push(
            &mut v,
            "ports",
            json!({"id": id, "network_id": net, "mac_address": mac,
                "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
                "device_owner": "network:router_centralized_snat", "device_id": "r1",
                "binding:host_id": "host-s"}),
        );
    }
    push(
        &mut v,
        "ports",
        json!({"id": "fg-s", "network_id": "ext", "mac_address": "fa:16:3e:00:02:0d",
            "fixed_ips": [{"subnet_id": "ext-sub", "ip_address": "10.5.1.4"}],
            "device_owner": "network:floatingip_agent_gateway", "device_id": "host-s",
            "binding:host_id": "host-s"}),
    );
    push(
        &mut v,
        "ports",
        json!({"id": "vmn", "network_id": "n1", "mac_address": "fa:16:3e:00:00:0e",
            "fixed_ips": [{"subnet_id": "s1", "ip_address": "192.168.1.40"}],
            "device_owner": "compute:nova", "binding:host_id": "host-n"}),
    );
    push(
        &mut v,
        "floatingips",
        json!({"id": "fip-n", "floating_ip_address": "10.5.2.7", "floating_network_id": "ext",
            "port_id": "vmn"}),
    );
    v
}

pub(crate) fn snat_taps(tap: &str) -> Option<u32> {
    if tap == "tapvms" {
        Some(IFX_VMS)
    } else {
        fip_taps(tap)
    }
}

pub(crate) fn steer(tunnel_ip_host: u32, csnat_mac: Mac, flags: u32) -> SnatSteer {
    SnatSteer {
        tunnel_ip_host,
        router_id: fnv1a32("r1"),
        csnat_mac,
        ext_mtu: 1450,
        flags,
    }
}

/// `snat_steer` when only r1's interface on net1 steers, to `tunnel_ip_host` (0: this host).
pub(crate) fn r1n1_steers_to(tunnel_ip_host: u32, flags: u32) -> BTreeMap<FdbKey, SnatSteer> {
    let key = FdbKey {
        vni: FVNI1,
        mac: MAC_R1N1,
        _pad: [0; 2],
    };
    BTreeMap::from([(key, steer(tunnel_ip_host, MAC_CSNAT1, flags))])
}

pub(crate) fn snat_r1(flags: u32) -> SnatRouter {
    SnatRouter {
        router_id: fnv1a32("r1"),
        ext_ip_be: ip(10, 5, 3, 1),
        ext_gw_ip_be: ip(10, 5, 0, 1),
        flags,
    }
}
