//! Hosts that register themselves in etcd (issue 15's first step): `dvr-agent --tunnel-ip IP
//! --agent-mode MODE` writes its host entry, with a DVR MAC allocated once from `fa:16:3f`.
//!
//! - `an_agent_registers_its_host_and_keeps_its_dvr_mac`: the cloud's state goes to etcd
//!   without h2's host entry; h2's agent writes it (tunnel IP and mode from its flags, a DVR
//!   MAC under `fa:16:3f` other than h1's, reserved under `/dvr/v1/dvr-macs/`), h1 learns
//!   h2's DVR MAC, v2's port is then bound on h2 (written as Neutron would, once h2 lives)
//!   and v1 reaches v2 across the hosts. h2's agent restarted keeps the MAC; the entry
//!   deleted is written again by the running agent with the same MAC, and traffic still
//!   flows.
//! - `a_port_is_up_in_etcd_while_its_tap_is_attached_and_its_agent_lives`: each VM's port
//!   has `/dvr/status/<host>/<port>` (ACTIVE, under its agent's lease) once its tap is
//!   attached; the key goes when the tap is deleted, and when the agent stops (its lease
//!   runs out), what Neutron's port status is to follow.
//!
//! Needs root, bpffs, etcd and the built agent; run with `--test-threads=1`.

use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use dvr_common::l2::MacKey;
use dvr_tests::cmd::wait_until;
use dvr_tests::{Cloud, Topology, VmSpec, require_etcd_preconditions};
use dvr_userspace::maps::HostMaps;
use dvr_userspace::model::parse_mac;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const H2_TUNNEL: &str = "192.0.2.12";

/// `host`'s entry in etcd, if any.
fn entry(c: &Cloud, host: &str) -> Result<Option<Value>> {
    c.etcd_json(&format!("/dvr/v1/hosts/{host}"))
}

fn wait_entry(c: &Cloud, host: &str) -> Result<Value> {
    wait_until(&format!("{host}'s entry in etcd"), WAIT, |_| entry(c, host))
}

#[test]
fn an_agent_registers_its_host_and_keeps_its_dvr_mac() -> Result<()> {
    require_etcd_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 6731, "172.23.95.0/24")
        .network("b", 6732, "172.23.96.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    t.host_agent_args("h2", &["--tunnel-ip", H2_TUNNEL, "--agent-mode", "dvr"]);
    let mut c = t.build_without_agents()?;
    ensure!(
        c.host("h2")?.tunnel_ip.to_string() == H2_TUNNEL,
        "the test bed gives h2 {H2_TUNNEL}"
    );
    let (h1, h2) = (
        c.host("h1")?.agent_name.clone(),
        c.host("h2")?.agent_name.clone(),
    );
    // The state without h2 (its entry and the port bound to it): h2's agent writes its
    // entry, then the port is bound there, as Neutron binds ports on hosts whose agent lives.
    let mut state = serde_json::to_value(c.state())?;
    let list = |v: &mut Value, k: &str| -> Result<Vec<Value>> {
        v[k].as_array()
            .cloned()
            .ok_or_else(|| anyhow!("no list {k}"))
    };
    let ports = list(&mut state, "ports")?;
    let (on_h2, others): (Vec<Value>, Vec<Value>) = ports
        .into_iter()
        .partition(|p| p["binding:host_id"] == h2.as_str());
    state["ports"] = others.into();
    let hosts = list(&mut state, "hosts")?;
    state["hosts"] = hosts
        .into_iter()
        .filter(|h| h["name"] != h2.as_str())
        .collect::<Vec<_>>()
        .into();
    let path = c.temp_dir().join("without-h2.json");
    std::fs::write(&path, serde_json::to_vec(&state)?)?;
    c.start_etcd()?;
    let out = c.etcd_apply_file(&path)?;
    ensure!(out.status.success(), "dvrctl apply: {out:?}");
    c.agents_use_etcd()?;
    c.start_agent("h1")?;
    c.wait_agent_ready("h1", WAIT)?;
    c.start_agent("h2")?;
    let e = wait_entry(&c, &h2)?;
    let mac = e["dvr_mac"].as_str().unwrap_or_default().to_string();
    ensure!(
        e["tunnel_ip"] == H2_TUNNEL && e["agent_mode"] == "dvr" && mac.starts_with("fa:16:3f:"),
        "h2's entry: {e}"
    );
    let h1_mac = entry(&c, &h1)?.map(|v| v["dvr_mac"].clone());
    ensure!(
        h1_mac != Some(mac.clone().into()),
        "h2 took h1's DVR MAC {mac}"
    );
    let (_, reserved) = c.etcd_get(&format!("/dvr/v1/dvr-macs/{mac}"))?;
    ensure!(
        reserved.values().any(|kv| kv.value == h2),
        "{mac} reserved for h2: {reserved:?}"
    );
    let w = c.etcd_writer()?;
    for p in &on_h2 {
        let id = p["id"].as_str().unwrap_or_default();
        w.put(&format!("/dvr/v1/ports/{id}"), &p.to_string())?;
    }
    c.wait_agent_ready("h2", WAIT)?;
    let key = MacKey {
        mac: parse_mac(&mac).ok_or_else(|| anyhow!("bad MAC {mac}"))?,
        _pad: [0; 2],
    };
    wait_until("h1 to know h2's DVR MAC", WAIT, |_| {
        let maps = HostMaps::open(&c.pin_dir("h1")?)?;
        Ok(maps.dvr_macs.get(&key)?)
    })?;
    c.ping_ok("v1", c.ip("v2")?, 2)?;

    // Restarted, the agent keeps its MAC.
    c.stop_agent("h2")?;
    c.start_agent("h2")?;
    c.wait_agent_ready("h2", WAIT)?;
    let again = wait_entry(&c, &h2)?;
    ensure!(again["dvr_mac"] == mac.as_str(), "after a restart: {again}");

    // Deleted (the state is then invalid: v2's port is bound to no host): written again by
    // the running agent, same MAC.
    w.delete(&format!("/dvr/v1/hosts/{h2}"))?;
    let back = wait_until("h2's entry written again", WAIT, |why| {
        let e = entry(&c, &h2)?;
        *why = format!("{e:?}");
        Ok(e.filter(|e| e["dvr_mac"] == mac.as_str()))
    })?;
    ensure!(back["tunnel_ip"] == H2_TUNNEL, "{back}");
    ensure!(
        c.agent_log("h2")?.contains("registering it again"),
        "h2's agent says it wrote its entry again"
    );
    c.ping_ok("v1", c.ip("v2")?, 2)?;
    Ok(())
}

/// The status key of `vm`'s port on its host, if any.
fn port_status(c: &Cloud, vm: &str) -> Result<Option<(Value, i64)>> {
    let v = c.vm(vm)?;
    let host = c.host(&v.host)?.agent_name.clone();
    let (_, kvs) = c.etcd_get(&format!("/dvr/status/{host}/{}", v.port_id))?;
    kvs.values()
        .next()
        .map(|kv| Ok((serde_json::from_str(&kv.value)?, kv.lease)))
        .transpose()
}

#[test]
fn a_port_is_up_in_etcd_while_its_tap_is_attached_and_its_agent_lives() -> Result<()> {
    require_etcd_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 6741, "172.23.97.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let mut c = t.build_without_agents()?;
    c.start_agents_on_etcd()?;
    for vm in ["v1", "v2"] {
        let (v, lease) = wait_until(&format!("{vm}'s port status"), WAIT, |_| {
            port_status(&c, vm)
        })?;
        ensure!(
            v["status"] == "ACTIVE" && v["port_id"] == c.vm(vm)?.port_id.as_str() && lease != 0,
            "{vm}: {v} (lease {lease})"
        );
    }
    // v1's tap goes: its port is no longer up; v2's stays.
    let (ns, tap) = (c.host("h1")?.ns.clone(), c.vm("v1")?.tap.clone());
    dvr_tests::cmd::run_ok("ip", &["-n", &ns, "link", "del", &tap])?;
    wait_until("v1's port status gone with its tap", WAIT, |why| {
        let s = port_status(&c, "v1")?;
        *why = format!("{s:?}");
        Ok(s.is_none().then_some(()))
    })?;
    ensure!(port_status(&c, "v2")?.is_some(), "v2 is still up");
    // h2's agent stops: its status keys go with its lease.
    c.stop_agent("h2")?;
    wait_until("v2's port status gone with h2's agent", WAIT, |why| {
        let s = port_status(&c, "v2")?;
        *why = format!("{s:?}");
        Ok(s.is_none().then_some(()))
    })?;
    Ok(())
}
