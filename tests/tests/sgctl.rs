//! `dvrctl show sg`, `show conntrack` and `trace` against running agents with a security
//! group: what they say about a port, a flow and a packet is what the datapath does with
//! real traffic.
//!
//! Needs root, bpffs, tcpdump, socat, arping, python3-scapy and the built agent
//! (`cargo build -p dvr-userspace`); fails with a clear message otherwise. Run with
//! `--test-threads=1`.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_tests::{
    Cloud, SecurityGroup, SecurityGroupRule, Topology, VmSpec, cmd::text, require_preconditions,
};
use serde_json::{Value, json};

const PING_WAIT: Duration = Duration::from_millis(1000);

fn dvrctl_out(c: &Cloud, host: &str, args: &[&str]) -> Result<String> {
    let out = c.dvrctl(host, args)?;
    ensure!(
        out.status.success(),
        "dvrctl {args:?}: {}",
        text(&out).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `dvrctl ARGS --json`, after printing the text form (the test's log shows both).
fn dvrctl_json(c: &Cloud, host: &str, args: &[&str]) -> Result<Value> {
    eprintln!(
        "$ dvrctl {}\n{}",
        args.join(" "),
        dvrctl_out(c, host, args)?
    );
    let mut a = args.to_vec();
    a.push("--json");
    let out = dvrctl_out(c, host, &a)?;
    serde_json::from_str(&out).with_context(|| format!("dvrctl {a:?}: not JSON: {out}"))
}

/// `dvrctl trace` of an ICMP echo (id `id`) from `src` to `dst`.
fn trace_echo(
    c: &Cloud,
    host: &str,
    iface: &str,
    (src, src_mac): (Ipv4Addr, &str),
    (dst, dst_mac): (Ipv4Addr, &str),
    id: u16,
    extra: &[&str],
) -> Result<Value> {
    let (src, dst, id) = (src.to_string(), dst.to_string(), id.to_string());
    let mut args = vec![
        "trace",
        "--in",
        iface,
        "--src",
        &src,
        "--dst",
        &dst,
        "--proto",
        "icmp",
        "--sport",
        &id,
        "--src-mac",
        src_mac,
        "--dst-mac",
        dst_mac,
    ];
    args.extend_from_slice(extra);
    dvrctl_json(c, host, &args)
}

/// The trace's steps, `stage: what` each.
fn steps(tr: &Value) -> Vec<String> {
    tr["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}: {}",
                s["stage"].as_str().unwrap_or(""),
                s["what"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn has_step(tr: &Value, needle: &str) -> bool {
    steps(tr).iter().any(|s| s.contains(needle))
}

#[test]
fn show_sg_conntrack_and_trace_match_real_traffic() -> Result<()> {
    require_preconditions();
    let ip = |d| Ipv4Addr::new(172, 22, 71, d);
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 6701, "172.22.71.0/24");
    // v1 admits echo requests from v3 only and sends DNS only; v2 and v3 are not filtered.
    t.security_group(SecurityGroup::new(
        "sg-ping",
        vec![
            SecurityGroupRule::ingress("r-ping-v3")
                .icmp_type(8)
                .prefix("172.22.71.12/32"),
            SecurityGroupRule::egress("r-dns").udp(53, 53),
        ],
    ));
    t.vm(VmSpec::new("v1", "a", "h1")
        .ip(ip(10))
        .security_groups(&["sg-ping"]))
        .vm(VmSpec::new("v2", "a", "h1").ip(ip(11)))
        .vm(VmSpec::new("v3", "a", "h2").ip(ip(12)));
    let c = t.build()?;
    let (v1, v2, v3) = (
        c.vm("v1")?.clone(),
        c.vm("v2")?.clone(),
        c.vm("v3")?.clone(),
    );
    let h2 = c.host("h2")?.clone();
    let v1_tap = c.tap_ifindex("v1")?;
    let state = c.state_path().to_string_lossy().into_owned();
    let named = ["--state", state.as_str()];

    // show sg: v1 filtered and stateful, its policy with both rules by id.
    let mut args = vec!["show", "sg", "--port", v1.port_id.as_str()];
    args.extend_from_slice(&named);
    let view = dvrctl_json(&c, "h1", &args)?;
    ensure!(
        view["ports"][0]["port"] == v1.port_id.as_str()
            && view["ports"][0]["security_groups"] == "stateful"
            && view["policies"][0]["groups"] == json!(["sg-ping"]),
        "show sg: {view}"
    );
    let rules: Vec<&str> = view["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["rule"].as_str())
        .collect();
    ensure!(
        rules.contains(&"r-ping-v3") && rules.contains(&"r-dns"),
        "show sg rules {rules:?}: {view}"
    );

    // trace: v3's echo (over the tunnel) admitted at v1's tap by r-ping-v3; v2's echo (same
    // host) refused there; v1's own echo to v3 refused at its tap (no egress rule).
    let vni = ["--vni", "6701", "--remote", &h2.tunnel_ip.to_string()].map(str::to_owned);
    let mut extra: Vec<&str> = vni.iter().map(String::as_str).collect();
    extra.extend_from_slice(&named);
    let tr = trace_echo(
        &c,
        "h1",
        "dvr-vx",
        (v3.ip, &v3.mac),
        (v1.ip, &v1.mac),
        7,
        &extra,
    )?;
    ensure!(
        tr["verdict"] == "rx_tunnel"
            && tr["output"] == format!("tap#{v1_tap}").as_str()
            && has_step(&tr, "admitted by rule r-ping-v3"),
        "trace v3 -> v1: {tr}"
    );
    let tr = trace_echo(
        &c,
        "h1",
        &v2.tap,
        (v2.ip, &v2.mac),
        (v1.ip, &v1.mac),
        7,
        &named,
    )?;
    ensure!(
        tr["verdict"] == "drop_sg_ingress" && has_step(&tr, "no rule admits it (drop_sg_ingress)"),
        "trace v2 -> v1: {tr}"
    );
    let tr = trace_echo(
        &c,
        "h1",
        &v1.tap,
        (v1.ip, &v1.mac),
        (v3.ip, &v3.mac),
        7,
        &named,
    )?;
    ensure!(
        tr["verdict"] == "drop_sg_egress"
            && has_step(&tr, "no rule admits it (drop_sg_egress)")
            && has_step(&tr, &format!("port {}, vni 6701", v1.port_id)),
        "trace v1 -> v3: {tr}"
    );

    // Reality: the same three echoes; the refused ones are counted where the trace said.
    let (in_before, out_before) = (
        c.stat("h1", "drop_sg_ingress")?,
        c.stat("h1", "drop_sg_egress")?,
    );
    c.ping_ok("v3", v1.ip, 1)?;
    ensure!(
        !c.ping_once("v2", v1.ip, PING_WAIT)?,
        "v2 reached v1 although no rule admits it"
    );
    ensure!(
        !c.ping_once("v1", v3.ip, PING_WAIT)?,
        "v1 reached v3 although no egress rule admits it"
    );
    let (in_after, out_after) = (
        c.stat("h1", "drop_sg_ingress")?,
        c.stat("h1", "drop_sg_egress")?,
    );
    ensure!(
        in_after > in_before && out_after > out_before,
        "drop_sg_ingress {in_before} -> {in_after}, drop_sg_egress {out_before} -> {out_after}"
    );

    // show conntrack: v3's echo is tracked in v1's zone, admitted by r-ping-v3, both ways.
    let mut args = vec!["show", "conntrack"];
    args.extend_from_slice(&named);
    let ct = dvrctl_json(&c, "h1", &args)?;
    let flows: Vec<&Value> = ct
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["sg_ifindex"] == json!(v1_tap) && e["sg_rule"] == "r-ping-v3")
        .collect();
    let orig = flows
        .iter()
        .find(|e| {
            e["sg"] == "original" && e["sg_direction"] == "ingress" && e["src"] == v3.ip.to_string()
        })
        .with_context(|| format!("no original entry of v3's echo in sg:{v1_tap}: {ct}"))?;
    ensure!(
        flows.iter().any(|e| e["sg"] == "reply"),
        "no reply entry in sg:{v1_tap}: {ct}"
    );
    // trace: v1's answer to that echo (its id) leaves as the reply of the tracked flow,
    // though no egress rule admits it.
    let id = orig["sport"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("echo id")?;
    let tr = trace_echo(
        &c,
        "h1",
        &v1.tap,
        (v1.ip, &v1.mac),
        (v3.ip, &v3.mac),
        id,
        &named,
    )?;
    ensure!(
        !tr["drop"].as_bool().unwrap_or(true)
            && has_step(&tr, "reply of a tracked flow (reply entry in zone")
            && has_step(&tr, "admitted by ingress rule r-ping-v3")
            && steps(&tr).iter().all(|s| !s.contains("  ")),
        "trace of v1's echo reply: {tr}"
    );
    Ok(())
}
