//! Driven by a real Neutron (issue 15): neutron-server 29 with this repository's ML2 driver
//! writes the cloud to etcd; the agents register themselves and report port status; the
//! tests play Nova's part (ports with `binding:host_id`, then the VM's tap) and build every
//! other resource through the API.
//!
//! - `a_cloud_built_through_the_api_forwards_as_neutron_says`: hosts h1, h2 (`dvr`), snat
//!   (`dvr_snat`) and nx (`dvr_no_external`) register; networks a and b (IPv4 and SLAAC
//!   IPv6), the flat external network, a distributed router with a gateway and interfaces on
//!   both. Ports bind (`vif_type` tap) only on hosts with a live agent and go ACTIVE once
//!   plugged. Routed east-west over IPv4 and IPv6; a VM without a floating IP leaves as the
//!   router's gateway address through the SNAT host the election chose; floating IPs served
//!   on the port's host, centrally for the `dvr_no_external` host and for a VIP (an unbound
//!   port a VM holds): each VM leaves as its FIP, and the outside reaches them only while an
//!   ICMP rule added through the API exists. API-to-datapath figures (ports created and
//!   deleted, a FIP associated and disassociated) are printed. With no periodic resync, etcd
//!   ends holding Neutron's resources value for value: the hooks alone carried every change.
//! - `restarts_of_neutron_and_etcd_and_a_killed_agent_leave_nothing_stale`: drift made in
//!   etcd behind the plugin's back is repaired by the periodic resync; traffic keeps flowing
//!   while neutron-server is down, drift made meanwhile is repaired by the new leader's
//!   resync; a change made while etcd is down reaches etcd after etcd is back; a killed
//!   agent's port goes DOWN in Neutron, forwarding goes on, and it comes back ACTIVE with the
//!   agent. After each, etcd holds exactly Neutron's resources and every host's maps equal a
//!   compile of etcd's state.
//! - `snat_is_placed_on_every_registered_snat_host_and_fails_over`: with one `dvr_snat` host
//!   registered the router's `ha_hosts` is that host, which the election makes the SNAT
//!   host; a second one registering is added by the plugin (the first keeps the role); the
//!   first one's agent killed, the second is elected and the VM leaves through it.
//!
//! Needs root, bpffs, etcd, the built agent and the Neutron venv (`cargo xtask setup`); run
//! with `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use dvr_common::l2::FdbKey;
use dvr_common::route::IpKey;
use dvr_tests::bench::percentile;
use dvr_tests::etcd::EtcdWriter;
use dvr_tests::neutron::{fixed_ip, id_of as id};
use dvr_tests::{
    Cloud, EXT, INTERNET_HOST, Topology, neutron_venv, require_etcd_preconditions, wait_until,
};
use dvr_userspace::maps::HostMaps;
use dvr_userspace::model::parse_mac;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// How long a change made through the API may take to reach a datapath in the waits (the
/// figures are printed; the target is under one second).
const API_TO_DATAPATH: Duration = Duration::from_secs(10);
const KIB: usize = 1024;
/// The periodic resync of the test that makes drift behind the plugin's back (seconds).
const RESYNC_SECS: u32 = 2;
/// Samples per kind of change in the API-to-datapath figures.
const LATENCY_SAMPLES: usize = 20;

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

fn fdb_key(vni: u32, mac: &str) -> Result<FdbKey> {
    Ok(FdbKey {
        vni,
        mac: parse_mac(mac).ok_or_else(|| anyhow!("bad MAC {mac}"))?,
        _pad: [0; 2],
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn a_cloud_built_through_the_api_forwards_as_neutron_says() -> Result<()> {
    let mut t = Topology::new();
    t.host("h1")
        .host("h2")
        .snat_host("snat")
        .no_external_host("nx")
        .external();
    let mut c = cloud(&t)?;
    let api = c.neutron();

    let ext = c.neutron_external_network()?;
    let a = c.neutron_network("a", "172.24.11.0/24", Some("fd00:24:11::/64"))?;
    let b = c.neutron_network("b", "172.24.12.0/24", Some("fd00:24:12::/64"))?;
    let router = c.neutron_router("r1", Some(&ext), &[&a, &b])?;
    let rid = id(&router)?.to_string();
    ensure!(
        router["distributed"] == true,
        "a distributed router: {router}"
    );
    let gw_ip: Ipv4Addr = router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
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

    let v1 = c.boot("v1", "h1", "a", WAIT)?;
    c.boot("v2", "h2", "b", WAIT)?;
    c.boot("v3", "h2", "a", WAIT)?;

    // The router's centralized role, placed by the plugin on the only dvr_snat host.
    let stored = c
        .etcd_json(&format!("/dvr/v1/routers/{rid}"))?
        .ok_or_else(|| anyhow!("router {rid} not in etcd"))?;
    let snat_agent = c.host("snat")?.agent_name.clone();
    ensure!(
        stored["ha"] == true && stored["ha_hosts"][0]["host"] == snat_agent.as_str(),
        "router {rid} placed on {snat_agent}: {stored}"
    );
    let holder = c.snat_holder(&rid, WAIT)?;
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

    // Floating IPs: v1's served on h1; v4's (on a dvr_no_external host) and a VIP's (an
    // unbound port that v3 holds) served centrally on the SNAT host. Each VM leaves as its
    // FIP; inbound, they answer once a rule admits ICMP, and no longer once it is deleted.
    let v4 = c.boot("v4", "nx", "b", WAIT)?;
    let vip_ip = Ipv4Addr::new(172, 24, 11, 200);
    let vip = api.create(
        "port",
        json!({"network_id": a.network["id"], "name": "vip",
               "fixed_ips": [{"subnet_id": a.subnet["id"], "ip_address": vip_ip.to_string()}]}),
    )?;
    api.update(
        "port",
        &c.vm("v3")?.port_id.clone(),
        json!({"allowed_address_pairs": [{"ip_address": vip_ip.to_string()}]}),
    )?;
    let mut fips = Vec::new();
    for (who, port) in [("v1", &v1), ("v4", &v4), ("vip", &vip)] {
        let fip = api.create(
            "floatingip",
            json!({"floating_network_id": ext["id"], "port_id": port["id"]}),
        )?;
        let ip: Ipv4Addr = fip["floating_ip_address"]
            .as_str()
            .ok_or_else(|| anyhow!("no address in {fip}"))?
            .parse()?;
        fips.push((who, ip));
    }
    // v3 takes the VIP (what keepalived does) and announces it.
    let vip_cidr = format!("{vip_ip}/24");
    c.exec_vm("v3", &["ip", "addr", "add", &vip_cidr, "dev", "eth0"])?;
    let v3_mac = c.vm("v3")?.mac.clone();
    let snat = c.host("snat")?.name.clone();
    wait_until(
        "the SNAT host to see v3 holding the VIP",
        API_TO_DATAPATH,
        |why| {
            let vip_s = vip_ip.to_string();
            c.exec_vm("v3", &["arping", "-U", "-c", "1", "-I", "eth0", &vip_s])?;
            let rows = c.vips(&snat)?;
            *why = format!("{rows:?}");
            Ok(rows
                .iter()
                .any(|r| r["vip"] == vip_s.as_str() && r["holder_mac"] == v3_mac.as_str())
                .then_some(()))
        },
    )?;
    for (vm, port) in [("v1", 5402), ("v4", 5403)] {
        let want = fips.iter().find(|(w, _)| *w == vm).map(|(_, ip)| *ip);
        let seen = wait_until(
            &format!("{vm} to leave as its FIP"),
            API_TO_DATAPATH,
            |why| {
                let rep = c.tcp_transfer_to(vm, EXT, INTERNET_HOST, port, 64 * KIB, None)?;
                *why = format!("seen as {:?}", rep.peer);
                Ok(rep.peer.filter(|p| Some(*p.ip()) == want))
            },
        )?;
        eprintln!("dvr-tests: {vm} seen by the internet host as {seen}");
    }
    for (who, ip) in &fips {
        ensure!(
            !c.ping_once(EXT, *ip, Duration::from_millis(300))?,
            "the default group admits no ICMP from outside to {who}'s FIP {ip}"
        );
    }
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
    for (who, ip) in &fips {
        wait_until(
            &format!("the outside to ping {who}'s FIP {ip}"),
            API_TO_DATAPATH,
            |_| {
                c.ping_once(EXT, *ip, Duration::from_millis(200))
                    .map(|ok| ok.then_some(()))
            },
        )?;
        eprintln!(
            "dvr-tests: ICMP rule added through the API: {who}'s FIP {ip} answers after {}",
            ms(start.elapsed())
        );
    }
    api.delete(&format!("/security-group-rules/{}", id(&rule)?))?;
    for (who, ip) in &fips {
        wait_until(
            &format!("{who}'s FIP {ip} to stop answering"),
            API_TO_DATAPATH,
            |_| {
                c.ping_once(EXT, *ip, Duration::from_millis(200))
                    .map(|ok| (!ok).then_some(()))
            },
        )?;
    }

    // API to datapath. Ports created and deleted on h2 reach h1's FDB (h1 serves network
    // a); a FIP associated with v2 and disassociated reaches h2's `fip_src`. Each sample
    // is timed from the request; the API's own answer time is reported beside.
    let vni = c.network("a")?.vni;
    let mut samples: Vec<(&str, Duration, Duration)> = Vec::new();
    let h2 = c.host("h2")?.agent_name.clone();
    let h1_maps = HostMaps::open(&c.pin_dir("h1")?)?;
    for i in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        let p = api.create(
            "port",
            json!({"network_id": a.network["id"], "binding:host_id": h2,
                   "device_owner": "compute:nova", "device_id": format!("vm-lat-{i}")}),
        )?;
        let answered = start.elapsed();
        let key = fdb_key(vni, p["mac_address"].as_str().unwrap_or_default())?;
        wait_until("a new port in h1's FDB", API_TO_DATAPATH, |_| {
            Ok(h1_maps.fdb.get(&key)?.map(|_| ()))
        })?;
        samples.push(("port create", answered, start.elapsed()));
        let start = Instant::now();
        api.delete(&format!("/ports/{}", id(&p)?))?;
        let answered = start.elapsed();
        wait_until("a deleted port gone from h1's FDB", API_TO_DATAPATH, |_| {
            Ok(h1_maps.fdb.get(&key)?.is_none().then_some(()))
        })?;
        samples.push(("port delete", answered, start.elapsed()));
    }
    let v2 = c.vm("v2")?.clone();
    let src_key = IpKey {
        vni: c.network("b")?.vni,
        ip_be: u32::from_ne_bytes(v2.ip.octets()),
    };
    let h2_maps = HostMaps::open(&c.pin_dir("h2")?)?;
    let f2 = api.create("floatingip", json!({ "floating_network_id": ext["id"] }))?;
    let f2_id = id(&f2)?.to_string();
    for _ in 0..LATENCY_SAMPLES {
        for (what, port) in [
            ("FIP associate", json!(v2.port_id)),
            ("FIP disassociate", Value::Null),
        ] {
            let start = Instant::now();
            api.update("floatingip", &f2_id, json!({ "port_id": port }))?;
            let answered = start.elapsed();
            let want = !port.is_null();
            wait_until(&format!("{what} in h2's fip_src"), API_TO_DATAPATH, |_| {
                Ok((h2_maps.fip_src.get(&src_key)?.is_some() == want).then_some(()))
            })?;
            samples.push((what, answered, start.elapsed()));
        }
    }
    for what in [
        "port create",
        "port delete",
        "FIP associate",
        "FIP disassociate",
    ] {
        let ms_of = |pick: fn(&(&str, Duration, Duration)) -> Duration| -> Vec<f64> {
            samples
                .iter()
                .filter(|s| s.0 == what)
                .map(|s| pick(s).as_secs_f64() * 1000.0)
                .collect()
        };
        let (total, api_only) = (ms_of(|s| s.2), ms_of(|s| s.1));
        let p = |v: &[f64], q: f64| format!("{:.1} ms", percentile(v, q).unwrap_or_default());
        eprintln!(
            "dvr-tests: API to datapath, {what}: p50 {} p99 {} ({} samples; the API \
             answered at p50 {} p99 {})",
            p(&total, 50.0),
            p(&total, 99.0),
            total.len(),
            p(&api_only, 50.0),
            p(&api_only, 99.0),
        );
    }
    for h in ["h1", "h2", "snat", "nx"] {
        let n = c.etcd_map_differences(h)?;
        ensure!(n == 0, "{h}'s maps differ from etcd's state in {n} entries");
    }
    // Every change reached etcd through the driver's hooks (no periodic resync runs here):
    // etcd holds Neutron's resources value for value, and no write failed.
    let diff = etcd_values_match_neutron(&c)?;
    ensure!(
        diff.is_empty(),
        "etcd differs from Neutron:\n{}",
        diff.join("\n")
    );
    let log = c.neutron_log()?;
    ensure!(
        !log.contains("ERROR networking_dvr_ebpf"),
        "the driver logged errors"
    );
    Ok(())
}

/// The API's kinds, as (etcd kind, URL path, JSON key).
const API_KINDS: [(&str, &str, &str); 8] = [
    ("networks", "networks", "networks"),
    ("subnets", "subnets", "subnets"),
    ("ports", "ports", "ports"),
    ("routers", "routers", "routers"),
    ("floatingips", "floatingips", "floatingips"),
    ("security_groups", "security-groups", "security_groups"),
    (
        "security_group_rules",
        "security-group-rules",
        "security_group_rules",
    ),
    ("address_groups", "address-groups", "address_groups"),
];

/// Where etcd's value of each resource differs from what the API shows (ignoring what the
/// plugin adds: a router's SNAT placement, a group's nested rules), and what either lacks.
fn etcd_values_match_neutron(c: &Cloud) -> Result<Vec<String>> {
    let api = c.neutron();
    let state = c.etcd_state()?;
    let mut out = Vec::new();
    for (kind, path, key) in API_KINDS {
        let listed = api.get(&format!("/{path}"))?;
        let want: BTreeMap<&str, &Value> = listed[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["id"].as_str()?, r)))
            .collect();
        let have: BTreeMap<&str, &Value> = state[kind]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["id"].as_str()?, r)))
            .collect();
        for (id, w) in &want {
            let Some(h) = have.get(id) else {
                out.push(format!("{kind}/{id}: not in etcd"));
                continue;
            };
            for (field, value) in w.as_object().into_iter().flatten() {
                let added = matches!(
                    (kind, field.as_str()),
                    ("routers", "ha" | "ha_hosts") | ("security_groups", "security_group_rules")
                );
                if !added && h.get(field) != Some(value) {
                    out.push(format!(
                        "{kind}/{id}.{field}: Neutron {value}, etcd {:?}",
                        h.get(field)
                    ));
                }
            }
        }
        out.extend(
            have.keys()
                .filter(|id| !want.contains_key(*id))
                .map(|id| format!("{kind}/{id}: stale in etcd")),
        );
    }
    Ok(out)
}

/// Writes, behind the plugin's back, a port Neutron does not have: a copy of `like` with id
/// `stale_id`, MAC fa:16:3e:5e:5e:0`n` and address .(249 + `n`) of `like`'s subnet.
fn write_stale_port(w: &EtcdWriter, like: &Value, stale_id: &str, n: u8) -> Result<()> {
    let (ip, subnet) = fixed_ip(like, false).ok_or_else(|| anyhow!("no IPv4 in {like}"))?;
    let IpAddr::V4(ip) = ip else {
        return Err(anyhow!("not IPv4: {ip}"));
    };
    let [a, b, c, _] = ip.octets();
    let mut stale = like.clone();
    stale["id"] = json!(stale_id);
    stale["mac_address"] = json!(format!("fa:16:3e:5e:5e:{n:02x}"));
    stale["fixed_ips"] = json!([{"subnet_id": subnet,
                                 "ip_address": Ipv4Addr::new(a, b, c, 249 + n).to_string()}]);
    w.put(&format!("/dvr/v1/ports/{stale_id}"), &stale.to_string())
}

fn wait_consistent(c: &Cloud, hosts: &[&str], what: &str) -> Result<()> {
    wait_until(&format!("etcd to equal Neutron {what}"), WAIT, |why| {
        let diff = etcd_values_match_neutron(c)?;
        *why = diff.join("; ");
        Ok(diff.is_empty().then_some(()))
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
    require_neutron()?;
    let mut t = Topology::new();
    t.host("h1").host("h2");
    let mut c = t.build_without_agents()?;
    c.start_registered_agents(WAIT)?;
    c.start_neutron_resyncing(RESYNC_SECS)?;
    let api = c.neutron();
    let a = c.neutron_network("a", "172.24.21.0/24", None)?;
    let b = c.neutron_network("b", "172.24.22.0/24", None)?;
    c.neutron_router("r2", None, &[&a, &b])?;
    let v1 = c.boot("v1", "h1", "a", WAIT)?;
    let v2 = c.boot("v2", "h2", "b", WAIT)?;
    c.ping_ok("v1", c.ip("v2")?, 2)?;
    let hosts = ["h1", "h2"];
    wait_consistent(&c, &hosts, "at the start")?;

    // Drift made in etcd behind the plugin's back (a key deleted, a stale key written) is
    // repaired by the periodic resync.
    let w = c.etcd_writer()?;
    let v1_key = format!("/dvr/v1/ports/{}", id(&v1)?);
    w.delete(&v1_key)?;
    write_stale_port(&w, &v1, "stale-port-written-by-hand", 2)?;
    let start = Instant::now();
    wait_consistent(&c, &hosts, "after drift while it runs")?;
    eprintln!(
        "dvr-tests: drift in etcd repaired by the periodic resync ({RESYNC_SECS} s) after {}",
        ms(start.elapsed())
    );
    let log = c.neutron_log()?;
    // (v1's port may come back through its status instead: h1's agent withdraws the status
    // of a port gone from the state, the driver sets it DOWN and so writes it again.)
    ensure!(
        log.contains("resync deleted ports/stale-port-written-by-hand"),
        "the periodic resync deleted the stale key"
    );

    // neutron-server down: forwarding goes on; drift made in etcd meanwhile is repaired by
    // the resync of the leader elected after its restart.
    c.stop_neutron()?;
    c.ping_ok("v1", c.ip("v2")?, 3)?;
    let v2_key = format!("/dvr/v1/ports/{}", id(&v2)?);
    w.delete(&v2_key)?;
    write_stale_port(&w, &v1, "stale-port-of-a-deleted-vm", 1)?;
    c.start_neutron_resyncing(RESYNC_SECS)?;
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

fn ha_host_names(r: &Value) -> Vec<String> {
    let mut names: Vec<String> = r["ha_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["host"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn snat_is_placed_on_every_registered_snat_host_and_fails_over() -> Result<()> {
    require_neutron()?;
    let mut t = Topology::new();
    t.host("h1").snat_host("s1").snat_host("s2").external();
    let mut c = t.build_without_agents()?;
    c.start_registered_agent("h1", WAIT)?;
    c.start_registered_agent("s1", WAIT)?;
    c.start_neutron()?;
    let ext = c.neutron_external_network()?;
    let a = c.neutron_network("a", "172.24.31.0/24", None)?;
    let router = c.neutron_router("r3", Some(&ext), &[&a])?;
    let rid = id(&router)?.to_string();
    let gw_ip: Ipv4Addr = router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .ok_or_else(|| anyhow!("router {rid} has no gateway address"))?
        .parse()?;
    c.boot("v1", "h1", "a", WAIT)?;
    let (s1, s2) = (
        c.host("s1")?.agent_name.clone(),
        c.host("s2")?.agent_name.clone(),
    );
    let r = c
        .etcd_json(&format!("/dvr/v1/routers/{rid}"))?
        .ok_or_else(|| anyhow!("router {rid} not in etcd"))?;
    ensure!(
        r["ha"] == true && ha_host_names(&r) == vec![s1.clone()],
        "with one SNAT host registered: {r}"
    );
    ensure!(c.snat_holder(&rid, WAIT)? == s1, "s1 holds the SNAT role");
    let seen = c
        .tcp_transfer_to("v1", EXT, INTERNET_HOST, 5411, 64 * KIB, None)?
        .peer;
    ensure!(
        seen.map(|p| *p.ip()) == Some(gw_ip),
        "v1 leaves as the gateway {gw_ip} via s1: seen as {seen:?}"
    );

    // A second SNAT host registers: the plugin adds it to the router's candidates; s1 keeps
    // the role (no pre-emption).
    c.start_registered_agent("s2", WAIT)?;
    let mut both = vec![s1.clone(), s2.clone()];
    both.sort();
    let start = Instant::now();
    let r = wait_until("router with both SNAT hosts in etcd", WAIT, |why| {
        let r = c.etcd_json(&format!("/dvr/v1/routers/{rid}"))?;
        *why = format!("{r:?}");
        Ok(r.filter(|r| ha_host_names(r) == both))
    })?;
    eprintln!(
        "dvr-tests: s2 registered; router candidates {:?} in etcd after {}",
        ha_host_names(&r),
        ms(start.elapsed())
    );
    ensure!(c.snat_holder(&rid, WAIT)? == s1, "s1 keeps the SNAT role");

    // s1's agent dies: its fence runs out, s2 is elected and v1 leaves through it.
    c.kill_agent("s1")?;
    let start = Instant::now();
    wait_until("s2 to hold the SNAT role", WAIT, |why| {
        let h = c.snat_holder(&rid, WAIT)?;
        *why = h.clone();
        Ok((h == s2).then_some(()))
    })?;
    eprintln!(
        "dvr-tests: s1 killed; s2 elected after {}",
        ms(start.elapsed())
    );
    let seen = wait_until("v1 to leave via s2", WAIT, |why| {
        let rep = c.tcp_transfer_to("v1", EXT, INTERNET_HOST, 5412, 64 * KIB, None);
        *why = format!("{:?}", rep.as_ref().map(|r| r.peer));
        Ok(rep.ok().and_then(|r| r.peer))
    })?;
    ensure!(
        *seen.ip() == gw_ip,
        "v1 leaves as the gateway {gw_ip} via s2: seen as {seen}"
    );
    for h in ["h1", "s2"] {
        let n = c.etcd_map_differences(h)?;
        ensure!(n == 0, "{h}'s maps differ from etcd's state in {n} entries");
    }
    Ok(())
}
