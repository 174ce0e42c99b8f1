//! The cluster control plane with a large state (issue 17), with etcd.
//!
//! - `a_snapshot_larger_than_the_grpc_default_is_read_in_pages`: a real two-host cloud plus
//!   12,000 filler ports (unbound, on a network of their own, each with a 400-byte
//!   description as Neutron ports may have) is written with `dvrctl apply`: more than 4 MiB
//!   of values, which one unpaged range read cannot return to a client with gRPC's default
//!   limit (issue 17 measured the refusal at 51,000 ports). `dvrctl apply` (which reads the
//!   stored state first) succeeds again with nothing to change, both agents become ready,
//!   traffic flows between the real VMs, and each agent's maps equal a compile of the real
//!   cloud (the filler ports are nowhere, so they add no entry).
//! - `a_change_on_a_network_without_local_ports_writes_nothing_there`: a VM added on network
//!   b (on h2) changes h2's maps and nothing of h1's (which has ports only on network a and
//!   no router to b), and h1 logs no apply. (Relevance of writes; the agent still parses and
//!   compiles the whole state for every change, which issue 17's incremental state is for.)
//!
//! Needs root, bpffs, etcd and the built agent; run with `--test-threads=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_common::l2::{FdbEntry, FdbKey, FloodSet};
use dvr_common::port::LocalPort;
use dvr_common::route::{Endpoint, IpKey};
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::{Cloud, Topology, VmSpec, require_etcd_preconditions};
use dvr_userspace::maps::HostMaps;
use serde_json::{Value, json};

const FILLER_PORTS: usize = 12_000;
const WAIT: Duration = Duration::from_secs(20);

/// `v`'s list `key`, for appending.
fn list<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Vec<Value>> {
    v[key]
        .as_array_mut()
        .with_context(|| format!("the state has no list {key}"))
}

#[test]
fn a_snapshot_larger_than_the_grpc_default_is_read_in_pages() -> Result<()> {
    require_etcd_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 6501, "172.23.51.0/24")
        .network("b", 6502, "172.23.52.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build_without_agents()?;
    let url = c.start_etcd()?;

    let mut big = serde_json::to_value(c.state())?;
    list(&mut big, "networks")?.push(json!({
        "id": "filler-net", "name": "filler", "provider:network_type": "vxlan",
        "provider:segmentation_id": 6599, "router:external": false, "mtu": 1450}));
    list(&mut big, "subnets")?.push(json!({
        "id": "filler-sub", "network_id": "filler-net", "cidr": "10.250.0.0/16",
        "gateway_ip": "10.250.0.1", "ip_version": 4}));
    let description = "x".repeat(400);
    let mut bytes = 0;
    let ports = list(&mut big, "ports")?;
    for i in 0..FILLER_PORTS {
        let port = json!({
            "id": format!("filler-port-{i:05}"), "network_id": "filler-net",
            "mac_address": format!("fa:16:3e:fe:{:02x}:{:02x}", i / 256, i % 256),
            "fixed_ips": [{"subnet_id": "filler-sub",
                "ip_address": format!("10.250.{}.{}", 1 + i / 250, 1 + i % 250)}],
            "device_owner": "compute:nova", "device_id": format!("filler-vm-{i}"),
            "binding:host_id": "", "description": description});
        bytes += port.to_string().len();
        ports.push(port);
    }
    ensure!(
        bytes > 4 << 20,
        "the filler must exceed gRPC's 4 MiB default: {bytes} bytes"
    );
    let path = std::env::temp_dir().join(format!("dvr-scale-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&big)?)?;
    let apply = |what: &str| -> Result<String> {
        let out = c.etcd_apply_file(&path)?;
        ensure!(
            out.status.success(),
            "dvrctl apply ({what}) failed ({}): {}",
            out.status,
            cmd::text(&out).trim()
        );
        Ok(cmd::text(&out).trim().to_string())
    };
    let first = apply("first");
    let again = apply("again, reading the stored state back in pages");
    let _ = std::fs::remove_file(&path);
    eprintln!(
        "etcd at {url}: {bytes} bytes of filler; apply: {}; again: {}",
        first?,
        again.as_deref().unwrap_or("")
    );
    let again = again?;
    ensure!(
        again.contains(": 0 written, 0 deleted"),
        "applying the same state again changes nothing: {again}"
    );

    c.agents_use_etcd()?;
    c.start_agents()?;
    let v2 = c.ip("v2")?;
    wait_until("v1 to reach v2 through r1", WAIT, |_| {
        Ok(c.ping_once("v1", v2, Duration::from_millis(500))?
            .then_some(()))
    })?;
    for h in ["h1", "h2"] {
        let maps = HostMaps::open(&c.pin_dir(h)?)?;
        let want = c.compiled_entries(h)?;
        ensure!(
            maps.fdb.read()? == want.fdb
                && maps.endpoints.read()? == want.endpoints
                && maps.routes.read()? == want.routes
                && maps.local_ports.read()? == want.local_ports,
            "{h}: the maps read from the paged snapshot differ from a compile of the cloud"
        );
        let log = c.agent_log(h)?;
        ensure!(
            !log.contains("etcd unreachable"),
            "{h}: the agent must read the snapshot at once:\n{log}"
        );
    }
    Ok(())
}

/// The maps of a host that a port or network change could touch.
#[derive(Debug, PartialEq)]
struct PortMaps {
    fdb: BTreeMap<FdbKey, FdbEntry>,
    endpoints: BTreeMap<IpKey, Endpoint>,
    local_ports: BTreeMap<u32, LocalPort>,
    flood: BTreeMap<u32, FloodSet>,
}

/// [`PortMaps`] as `host`'s datapath holds them.
fn port_maps(c: &Cloud, host: &str) -> Result<PortMaps> {
    let maps = HostMaps::open(&c.pin_dir(host)?)?;
    Ok(PortMaps {
        fdb: maps.fdb.read()?,
        endpoints: maps.endpoints.read()?,
        local_ports: maps.local_ports.read()?,
        flood: maps.flood.read()?,
    })
}

#[test]
fn a_change_on_a_network_without_local_ports_writes_nothing_there() -> Result<()> {
    require_etcd_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 6511, "172.23.61.0/24")
        .network("b", 6512, "172.23.62.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build_without_agents()?;
    c.start_agents_on_etcd()?;
    let before = port_maps(&c, "h1")?;
    let h1_log = c.agent_log("h1")?.lines().count();
    let h2_before = port_maps(&c, "h2")?;

    // A VM comes up on network b, on h2: h1 serves no port of b and routes nothing to it.
    c.add_vm_later(VmSpec::new("v3", "b", "h2"))?;
    c.etcd_apply()?;
    c.wait_port_attached("v3", WAIT)?;
    let h2_after = port_maps(&c, "h2")?;
    ensure!(
        h2_after != h2_before,
        "h2 serves network b: its maps take the new port"
    );
    c.ping_ok("v2", c.ip("v3")?, 2)?;
    let after = port_maps(&c, "h1")?;
    ensure!(
        after == before,
        "h1 has no port on network b: its maps must not change"
    );
    let log = c.agent_log("h1")?;
    let new_lines: Vec<&str> = log.lines().skip(h1_log).collect();
    ensure!(
        !new_lines.iter().any(|l| l.contains(" applied ")),
        "h1 applies nothing for a change on network b: {new_lines:?}"
    );
    Ok(())
}
