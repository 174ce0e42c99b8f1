//! Driven by a real Neutron (issue 15): neutron-server 29 with this repository's ML2 driver
//! writes the cloud to etcd; the agents register themselves and report port status; the
//! tests play Nova's part (ports with `binding:host_id`, then the VM's tap) and build every
//! other resource through the API.
//!
//! - `a_cloud_built_through_the_api_forwards_as_neutron_says`: hosts h1, h2 (`dvr`) and snat
//!   (`dvr_snat`) register; networks a and b (IPv4 and SLAAC IPv6), the flat external network,
//!   a distributed router with a gateway and interfaces on both. Ports bind (`vif_type` tap)
//!   only on hosts with a live agent and go ACTIVE once plugged. Routed east-west over IPv4
//!   and IPv6, a floating IP in both directions (the internet host sees the FIP), a VM
//!   without one leaving as the router's gateway address through the SNAT host the election
//!   chose, and an ICMP rule added and removed through the API. Ports created and deleted
//!   through the API reach a remote host's FDB: p50/p99 printed.
//! - `restarts_of_neutron_and_etcd_and_a_killed_agent_leave_nothing_stale`: traffic keeps
//!   flowing while neutron-server is down, drift made in etcd meanwhile (a deleted key, a
//!   stale key) is repaired by the resync after its restart; a change made while etcd is down
//!   reaches the datapath after etcd is back; a killed agent's ports go DOWN in Neutron,
//!   forwarding goes on, and come back ACTIVE with the agent. After each, etcd holds exactly
//!   Neutron's resources and every host's maps equal a compile of etcd's state.
//!
//! Needs root, bpffs, etcd, the built agent and the Neutron venv (`cargo xtask setup`); run
//! with `--test-threads=1`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use dvr_common::l2::FdbKey;
use dvr_tests::neutron::fixed_ip;
use dvr_tests::{
    Cloud, EXT, INTERNET_HOST, NeutronApi, Topology, neutron_venv, require_etcd_preconditions,
    wait_until,
};
use dvr_userspace::maps::HostMaps;
use dvr_userspace::model::parse_mac;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// How long a change made through the API may take to reach a datapath in the waits (the
/// figures are printed; the target is under one second).
const API_TO_DATAPATH: Duration = Duration::from_secs(10);
const KIB: usize = 1024;

fn require_neutron() -> Result<()> {
    require_etcd_preconditions();
    neutron_venv().map(|_| ())
}

/// Builds the namespaces, starts self-registering agents on etcd, then neutron-server.
fn cloud(t: &Topology) -> Result<Cloud> {
    require_neutron()?;
    let mut c = t.build_without_agents()?;
    c.start_registered_agents(WAIT)?;
    c.start_neutron()?;
    Ok(c)
}

struct Net {
    network: Value,
    subnet: Value,
    subnet6: Option<Value>,
}

/// A tenant network (VXLAN, VNI chosen by Neutron) with an IPv4 subnet and, if `cidr6`, a
/// SLAAC IPv6 subnet; adopted by the test bed as `name`.
fn network(c: &mut Cloud, name: &str, cidr: &str, cidr6: Option<&str>) -> Result<Net> {
    let api = c.neutron();
    let network = api.create("network", json!({ "name": name }))?;
    let id = network["id"].clone();
    let subnet = api.create(
        "subnet",
        json!({"network_id": id, "cidr": cidr, "ip_version": 4, "enable_dhcp": false}),
    )?;
    let subnet6 = cidr6
        .map(|cidr6| {
            api.create(
                "subnet",
                json!({"network_id": id, "cidr": cidr6, "ip_version": 6,
                       "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}),
            )
        })
        .transpose()?;
    let network = api.show("network", network["id"].as_str().unwrap_or_default())?;
    c.adopt_network(name, &network, &subnet, subnet6.as_ref())?;
    Ok(Net {
        network,
        subnet,
        subnet6,
    })
}

/// The flat external network on the test bed's `br-ext` (10.5.0.0/16 via 10.5.0.1);
/// floating IPs and router gateways from 10.5.2.1-10.5.2.250.
fn external_network(api: &NeutronApi) -> Result<Value> {
    let ext = api.create(
        "network",
        json!({"name": "public", "router:external": true,
               "provider:network_type": "flat", "provider:physical_network": "public"}),
    )?;
    api.create(
        "subnet",
        json!({"network_id": ext["id"], "cidr": "10.5.0.0/16", "ip_version": 4,
               "gateway_ip": "10.5.0.1", "enable_dhcp": false,
               "allocation_pools": [{"start": "10.5.2.1", "end": "10.5.2.250"}]}),
    )?;
    Ok(ext)
}

fn id(v: &Value) -> Result<&str> {
    v["id"].as_str().ok_or_else(|| anyhow!("no id in {v}"))
}

/// Nova's part: a port bound on `host`, checked bound as a tap, the VM plugged, and the port
/// ACTIVE in Neutron (the agent reported it).
fn boot(c: &mut Cloud, vm: &str, host: &str, net_name: &str, net: &Net) -> Result<Value> {
    let api = c.neutron();
    let agent = c.host(host)?.agent_name.clone();
    let port = api.create(
        "port",
        json!({"network_id": net.network["id"], "name": vm, "binding:host_id": agent,
               "device_owner": "compute:nova", "device_id": format!("vm-{vm}")}),
    )?;
    ensure!(
        port["binding:vif_type"] == "tap",
        "{vm}'s port is bound as a tap on {agent}: {port}"
    );
    c.plug_port(vm, host, net_name, &port)?;
    let took = api.wait_port_status(id(&port)?, "ACTIVE", WAIT)?;
    eprintln!("dvr-tests: {vm}'s port ACTIVE {took:?} after its tap came up");
    Ok(port)
}

fn fdb_key(vni: u32, mac: &str) -> Result<FdbKey> {
    Ok(FdbKey {
        vni,
        mac: parse_mac(mac).ok_or_else(|| anyhow!("bad MAC {mac}"))?,
        _pad: [0; 2],
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Waits until the router's centralized role is held (`ha/<router>` in etcd); the holder.
fn snat_holder(c: &Cloud, router: &str) -> Result<String> {
    wait_until(
        &format!("router {router}'s SNAT role elected"),
        WAIT,
        |_| {
            let (_, kvs) = c.etcd_get(&format!("/dvr/v1/ha/{router}"))?;
            Ok(kvs.values().next().and_then(|kv| {
                serde_json::from_str::<Value>(&kv.value).ok()?["host"]
                    .as_str()
                    .map(str::to_string)
            }))
        },
    )
}

#[test]
fn a_cloud_built_through_the_api_forwards_as_neutron_says() -> Result<()> {
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("snat").external();
    let mut c = cloud(&t)?;
    let api = c.neutron();

    let ext = external_network(&api)?;
    let a = network(&mut c, "a", "172.24.11.0/24", Some("fd00:24:11::/64"))?;
    let b = network(&mut c, "b", "172.24.12.0/24", Some("fd00:24:12::/64"))?;
    let router = api.create(
        "router",
        json!({"name": "r1", "external_gateway_info": {"network_id": ext["id"]}}),
    )?;
    let rid = id(&router)?.to_string();
    ensure!(
        router["distributed"] == true,
        "a distributed router: {router}"
    );
    for net in [&a, &b] {
        for s in std::iter::once(&net.subnet).chain(net.subnet6.as_ref()) {
            api.call(
                "PUT",
                &format!("/routers/{rid}/add_router_interface"),
                Some(&json!({ "subnet_id": s["id"] })),
            )?;
        }
    }
    let gw_ip: Ipv4Addr = api.show("router", &rid)?["external_gateway_info"]["external_fixed_ips"]
        [0]["ip_address"]
        .as_str()
        .ok_or_else(|| anyhow!("router {rid} has no gateway address"))?
        .parse()?;

    // A host without a live agent gets no binding.
    let nowhere = api.create(
        "port",
        json!({"network_id": a.network["id"], "binding:host_id": "no-agent-here",
               "device_owner": "compute:nova", "device_id": "vm-nowhere"}),
    )?;
    ensure!(
        nowhere["binding:vif_type"] == "binding_failed",
        "a port on a host without an agent fails to bind: {nowhere}"
    );
    api.delete(&format!("/ports/{}", id(&nowhere)?))?;

    let v1 = boot(&mut c, "v1", "h1", "a", &a)?;
    boot(&mut c, "v2", "h2", "b", &b)?;
    boot(&mut c, "v3", "h2", "a", &a)?;

    // The router's centralized role, placed by the plugin on the only dvr_snat host.
    let stored: Value = serde_json::from_str(
        &c.etcd_get(&format!("/dvr/v1/routers/{rid}"))?
            .1
            .values()
            .next()
            .ok_or_else(|| anyhow!("router {rid} not in etcd"))?
            .value,
    )?;
    let snat_agent = c.host("snat")?.agent_name.clone();
    ensure!(
        stored["ha"] == true && stored["ha_hosts"][0]["host"] == snat_agent.as_str(),
        "router {rid} placed on {snat_agent}: {stored}"
    );
    let holder = snat_holder(&c, &rid)?;
    ensure!(holder == snat_agent, "SNAT role held by {holder}");

    // Routed east-west, IPv4 and IPv6, across hosts (default group: members reach members).
    let r = c.ping_ok("v1", c.ip("v2")?, 3)?;
    eprintln!("dvr-tests: v1 -> v2 {:?}", r.reply_from);
    for vm in ["v1", "v2"] {
        c.wait_ipv6_ready(vm, WAIT)?;
    }
    let v2_ip6 = c.ip6("v2")?;
    ensure!(
        fixed_ip(&api.show("port", &c.vm("v2")?.port_id)?, true).map(|(ip, _)| ip)
            == Some(IpAddr::V6(v2_ip6)),
        "v2 configured Neutron's IPv6 address {v2_ip6} from the router advertisements"
    );
    c.ping6_ok("v1", v2_ip6, 3)?;

    // A VM without a floating IP leaves as the router's gateway address via the SNAT host.
    let rep = c.tcp_transfer_to("v3", EXT, INTERNET_HOST, 5401, 64 * KIB, None)?;
    let seen = rep.peer.map(|p| *p.ip());
    ensure!(
        seen == Some(gw_ip),
        "v3 seen by the internet host as {seen:?}, want the gateway {gw_ip}"
    );

    // A floating IP on v1: outbound as the FIP; inbound once a rule admits it.
    let fip = api.create(
        "floatingip",
        json!({"floating_network_id": ext["id"], "port_id": v1["id"]}),
    )?;
    let fip_ip: Ipv4Addr = fip["floating_ip_address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address in {fip}"))?
        .parse()?;
    let rep = wait_until("v1 to leave as its FIP", API_TO_DATAPATH, |why| {
        let rep = c.tcp_transfer_to("v1", EXT, INTERNET_HOST, 5402, 64 * KIB, None)?;
        *why = format!("seen as {:?}", rep.peer);
        Ok(rep.peer.filter(|p| *p.ip() == fip_ip))
    })?;
    eprintln!("dvr-tests: v1 seen by the internet host as {rep}");
    ensure!(
        !c.ping_once(EXT, fip_ip, Duration::from_millis(500))?,
        "the default group admits no ICMP from outside to {fip_ip}"
    );
    let sg = v1["security_groups"][0]
        .as_str()
        .ok_or_else(|| anyhow!("v1 has no security group: {v1}"))?
        .to_string();
    let rule = api.create(
        "security_group_rule",
        json!({"security_group_id": sg, "direction": "ingress", "ethertype": "IPv4",
               "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}),
    )?;
    let start = Instant::now();
    wait_until("the outside to ping v1's FIP", API_TO_DATAPATH, |_| {
        c.ping_once(EXT, fip_ip, Duration::from_millis(200))
            .map(|ok| ok.then_some(()))
    })?;
    eprintln!(
        "dvr-tests: ICMP rule added through the API: FIP {fip_ip} answers after {}",
        ms(start.elapsed())
    );
    api.delete(&format!("/security-group-rules/{}", id(&rule)?))?;
    wait_until("v1's FIP to stop answering", API_TO_DATAPATH, |_| {
        c.ping_once(EXT, fip_ip, Duration::from_millis(200))
            .map(|ok| (!ok).then_some(()))
    })?;

    // API to datapath: ports created and deleted on h2 reach h1's FDB (h1 serves network a).
    let vni = c.network("a")?.vni;
    let (mut created, mut deleted) = (Vec::new(), Vec::new());
    let h2 = c.host("h2")?.agent_name.clone();
    for i in 0..12 {
        let start = Instant::now();
        let p = api.create(
            "port",
            json!({"network_id": a.network["id"], "binding:host_id": h2,
                   "device_owner": "compute:nova", "device_id": format!("vm-lat-{i}")}),
        )?;
        let key = fdb_key(vni, p["mac_address"].as_str().unwrap_or_default())?;
        let maps = HostMaps::open(&c.pin_dir("h1")?)?;
        wait_until("a new port in h1's FDB", API_TO_DATAPATH, |_| {
            Ok(maps.fdb.get(&key)?.map(|_| ()))
        })?;
        created.push(start.elapsed());
        let start = Instant::now();
        api.delete(&format!("/ports/{}", id(&p)?))?;
        wait_until("a deleted port gone from h1's FDB", API_TO_DATAPATH, |_| {
            Ok(maps.fdb.get(&key)?.is_none().then_some(()))
        })?;
        deleted.push(start.elapsed());
    }
    for (what, mut d) in [("port create", created), ("port delete", deleted)] {
        d.sort();
        eprintln!(
            "dvr-tests: API to datapath, {what}: p50 {} p99 {} max {} ({} samples)",
            ms(percentile(&d, 0.5)),
            ms(percentile(&d, 0.99)),
            ms(d[d.len() - 1]),
            d.len()
        );
    }
    for h in ["h1", "h2", "snat"] {
        let n = c.etcd_map_differences(h)?;
        ensure!(n == 0, "{h}'s maps differ from etcd's state in {n} entries");
    }
    Ok(())
}

/// Every resource id Neutron lists and every id in etcd, by kind: equal when nothing is
/// missing or stale.
fn etcd_matches_neutron(c: &Cloud) -> Result<Option<String>> {
    let api = c.neutron();
    let state = c.etcd_state()?;
    for (kind, path) in [
        ("networks", "network"),
        ("subnets", "subnet"),
        ("ports", "port"),
        ("routers", "router"),
        ("floatingips", "floatingip"),
        ("security_groups", "security-group"),
        ("security_group_rules", "security-group-rule"),
    ] {
        let api_kind = path.replace('-', "_");
        let plural = format!("{api_kind}s");
        let listed = api.get(&format!("/{path}s"))?;
        let mut want: Vec<&str> = listed[&plural]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str())
            .collect();
        let mut have: Vec<&str> = state[kind]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str())
            .collect();
        want.sort_unstable();
        have.sort_unstable();
        if want != have {
            return Ok(Some(format!("{kind}: Neutron {want:?}, etcd {have:?}")));
        }
    }
    Ok(None)
}

fn wait_consistent(c: &Cloud, hosts: &[&str], what: &str) -> Result<()> {
    wait_until(&format!("etcd to equal Neutron {what}"), WAIT, |why| {
        let diff = etcd_matches_neutron(c)?;
        *why = format!("{diff:?}");
        Ok(diff.is_none().then_some(()))
    })?;
    for h in hosts {
        wait_until(
            &format!("{h}'s maps to equal etcd's state {what}"),
            WAIT,
            |why| {
                let n = c.etcd_map_differences(h)?;
                *why = format!("{n} entries differ");
                Ok((n == 0).then_some(()))
            },
        )?;
    }
    Ok(())
}

#[test]
fn restarts_of_neutron_and_etcd_and_a_killed_agent_leave_nothing_stale() -> Result<()> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    let mut c = cloud(&t)?;
    let api = c.neutron();
    let a = network(&mut c, "a", "172.24.21.0/24", None)?;
    let b = network(&mut c, "b", "172.24.22.0/24", None)?;
    let router = api.create("router", json!({ "name": "r2" }))?;
    let rid = id(&router)?.to_string();
    for net in [&a, &b] {
        api.call(
            "PUT",
            &format!("/routers/{rid}/add_router_interface"),
            Some(&json!({ "subnet_id": net.subnet["id"] })),
        )?;
    }
    let v1 = boot(&mut c, "v1", "h1", "a", &a)?;
    let v2 = boot(&mut c, "v2", "h2", "b", &b)?;
    c.ping_ok("v1", c.ip("v2")?, 2)?;
    let hosts = ["h1", "h2"];
    wait_consistent(&c, &hosts, "at the start")?;

    // neutron-server down: forwarding goes on; drift made in etcd meanwhile is repaired by
    // the resync after its restart.
    c.stop_neutron()?;
    c.ping_ok("v1", c.ip("v2")?, 3)?;
    let w = c.etcd_writer()?;
    let v2_key = format!("/dvr/v1/ports/{}", id(&v2)?);
    w.delete(&v2_key)?;
    let mut stale = v1.clone();
    stale["id"] = json!("stale-port-of-a-deleted-vm");
    stale["mac_address"] = json!("fa:16:3e:5e:5e:01");
    stale["fixed_ips"] = json!([{"subnet_id": a.subnet["id"], "ip_address": "172.24.21.250"}]);
    w.put(
        "/dvr/v1/ports/stale-port-of-a-deleted-vm",
        &stale.to_string(),
    )?;
    c.start_neutron()?;
    wait_consistent(&c, &hosts, "after neutron-server restarted")?;
    c.ping_ok("v1", c.ip("v2")?, 2)?;
    let log = c.neutron_log()?;
    ensure!(
        log.contains("resync deleted ports/stale-port-of-a-deleted-vm")
            && log.contains(&format!("resync put ports/{}", id(&v2)?)),
        "the resync repaired both ways"
    );

    // etcd down: forwarding goes on; a network created meanwhile (its write fails) reaches
    // etcd once etcd is back (the plugin's leader resyncs on etcd's new raft term).
    drop(w);
    c.stop_etcd()?;
    c.ping_ok("v1", c.ip("v2")?, 3)?;
    let late = api.create("network", json!({ "name": "made-while-etcd-was-down" }))?;
    c.start_etcd()?;
    let start = Instant::now();
    wait_until("the network made while etcd was down in etcd", WAIT, |_| {
        let (_, kvs) = c.etcd_get(&format!("/dvr/v1/networks/{}", id(&late)?))?;
        Ok((!kvs.is_empty()).then_some(()))
    })?;
    eprintln!(
        "dvr-tests: a network created while etcd was down reached etcd {} after etcd restarted",
        ms(start.elapsed())
    );
    wait_consistent(&c, &hosts, "after etcd restarted")?;
    c.ping_ok("v1", c.ip("v2")?, 2)?;

    // A killed agent: its port goes DOWN in Neutron, forwarding goes on; restarted, ACTIVE.
    c.kill_agent("h2")?;
    let down = api.wait_port_status(id(&v2)?, "DOWN", WAIT)?;
    eprintln!("dvr-tests: v2's port DOWN {down:?} after its agent was killed");
    c.ping_ok("v1", c.ip("v2")?, 3)?;
    c.restart_agent("h2")?;
    api.wait_port_status(id(&v2)?, "ACTIVE", WAIT)?;
    wait_consistent(&c, &hosts, "after h2's agent restarted")?;
    c.ping_ok("v1", c.ip("v2")?, 2)
        .context("v1 reaches v2 after everything")?;
    Ok(())
}
