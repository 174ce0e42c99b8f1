//! Agent lifecycle and control plane integration tests: agents killed (`kill -9`) or stopped
//! (SIGTERM) and restarted under live traffic, exact reconciliation of what changed while an
//! agent was down, how fast a state file change is applied, etcd as the cluster store
//! (`dvrctl apply`, `--etcd`, liveness leases, etcd outages), `dvrctl trace` checked against
//! real packets, `dvrctl monitor`, the Prometheus endpoint and `dvr-agent --uninstall`.
//!
//! Each test builds its own cloud and asserts what can be observed from outside the agent:
//! ping results, bytes and hashes of TCP transfers, what receivers and captures saw, `dvrctl`
//! counters and views, the pins and TCX links the kernel reports, etcd keys, the agents' logs.
//!
//! Needs root, bpffs, tcpdump, socat, arping, python3-scapy, the built agent
//! (`cargo build -p dvr-userspace`) and for the cluster tests etcd (`/usr/bin/etcd`,
//! `/usr/bin/etcdctl`); fails with a clear message otherwise. Run with `--test-threads=1`.
//!
//! Negative assertions use sentinels instead of sleeps: after the traffic that must not arrive,
//! legitimate traffic is sent along the same path and awaited.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::etcd::{ALIVE_PREFIX, PREFIX};
use dvr_tests::state::{SecurityGroup, SecurityGroupRule};
use dvr_tests::{
    Cloud, Counters, EXT, EXT_GATEWAY, INTERNET_HOST, OutputKind, Packet, Tcx, Topology, Trace,
    TraceProbe, UdpFrame, VmSpec, require_etcd_preconditions, require_preconditions,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;
/// Interval of the background pings: 50 echoes a second.
const PING_INTERVAL: Duration = Duration::from_millis(20);

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

/// A UDP packet `src.sport > dst.dport` (tcpdump -nn spelling).
fn udp_flow(p: &Packet, src: Ipv4Addr, sport: Option<u16>, dst: Ipv4Addr, dport: u16) -> bool {
    let from = match sport {
        Some(sp) => format!("{src}.{sp} > "),
        None => format!("{src}."),
    };
    p.contains("UDP") && p.contains(&from) && p.contains(&format!(" > {dst}.{dport}:"))
}

/// The "peer ip:port" lines of a UDP sink.
fn peers(out: &str) -> Vec<SocketAddrV4> {
    out.lines()
        .filter_map(|l| {
            l.strip_prefix("peer ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// What the kernel has attached through TCX to every interface the agent of `host` pinned a
/// link for: interface name -> programs and links.
fn tcx_by_iface(c: &Cloud, host: &str) -> Result<BTreeMap<String, Tcx>> {
    let mut out = BTreeMap::new();
    for pin in c.link_pins(host)? {
        let link = pin
            .rsplit_once('@')
            .map_or(pin.as_str(), |(n, _)| n)
            .to_string();
        // `<tap>:out` is the link of the tap's egress hook (`dvr_tap_out`).
        let tcx = match link.strip_suffix(":out") {
            Some(iface) => c.tcx(host, iface, "egress")?,
            None => c.tcx_ingress(host, &link)?,
        };
        out.insert(link, tcx);
    }
    Ok(out)
}

// ---- hitless restart --------------------------------------------------------------------------

#[test]
fn agents_killed_or_stopped_and_restarted_under_traffic_lose_nothing() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("hs").external();
    t.network("a", 6101, "172.22.1.0/24")
        .network("b", 6102, "172.22.2.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"))
        .fip("f2", Some("v2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.ip("v1")?, c.ip("v2")?);
    let fip = c.fip_ip("f2")?;
    let router_ip = c.router_external_ip("r1")?;
    let hosts = ["h1", "h2", "hs"];

    c.ping_ok("v1", v2, 1)?;
    c.ping_ok("v1", INTERNET_HOST, 1)?;
    c.ping_with(EXT, fip, 1, &["-I", &s(INTERNET_HOST)])?;
    let mut pins = BTreeMap::new();
    let mut tcx = BTreeMap::new();
    for h in hosts {
        let want = c.expected_link_pins(h)?;
        let have = c.link_pins(h)?;
        ensure!(
            have == want,
            "{h}: links pinned under {}/links: {have:?}, expected {want:?}",
            c.pin_dir(h)?.display()
        );
        let attached = tcx_by_iface(&c, h)?;
        for (iface, x) in &attached {
            ensure!(
                x.prog_ids.len() == 1 && x.link_ids.len() == 1 && x.link_ids[0] != 0,
                "{h}/{iface}: expected one program attached through a TCX link: {x:?}"
            );
        }
        pins.insert(h, have);
        tcx.insert(h, attached);
    }

    // Pings at 50/s and paced TCP transfers: east-west routed across hosts (h1 -> h2),
    // inbound through the floating IP on h2, outbound through SNAT on hs.
    const PINGS: u32 = 750;
    let mut pings = vec![
        ("east-west", c.ping_bg("v1", v2, PINGS, PING_INTERVAL, &[])?),
        (
            "fip",
            c.ping_bg(EXT, fip, PINGS, PING_INTERVAL, &["-I", &s(INTERNET_HOST)])?,
        ),
        (
            "snat",
            c.ping_bg("v1", INTERNET_HOST, PINGS, PING_INTERVAL, &[])?,
        ),
    ];
    let pace = Duration::from_secs(12);
    let mut transfers = vec![
        (
            "east-west",
            c.start_paced_transfer("v1", "v2", v2, 7101, 4 * MIB, pace, None)?,
        ),
        (
            "fip",
            c.start_paced_transfer(EXT, "v2", fip, 7102, 4 * MIB, pace, Some(INTERNET_HOST))?,
        ),
        (
            "snat",
            c.start_paced_transfer("v1", EXT, INTERNET_HOST, 7103, 4 * MIB, pace, None)?,
        ),
    ];
    for (what, p) in &mut pings {
        p.wait_replies(25, WAIT)
            .with_context(|| format!("{what} ping before the restart"))?;
    }
    let before = Counters::take(&c, &hosts)?;

    let at_kill: Vec<usize> = pings.iter().map(|(_, p)| p.replies()).collect();
    let rx_at_kill: Vec<u64> = transfers.iter().map(|(_, x)| x.received_so_far()).collect();
    let t_down = Instant::now();
    let st = c.kill_agent("h1")?;
    ensure!(st.signal() == Some(9), "h1's agent: {st} after SIGKILL");
    let st = c.stop_agent("h2")?;
    ensure!(st.success(), "h2's agent exited with {st} on SIGTERM");
    let st = c.kill_agent("hs")?;
    ensure!(st.signal() == Some(9), "hs's agent: {st} after SIGKILL");

    // No agent runs anywhere: the pinned datapath must keep forwarding by itself.
    for h in hosts {
        ensure!(
            c.link_pins(h)? == pins[h],
            "{h}: link pins changed when the agent went: {:?}",
            c.link_pins(h)?
        );
        ensure!(
            tcx_by_iface(&c, h)? == tcx[h],
            "{h}: TCX attachments changed when the agent went"
        );
    }
    for (what, p) in &mut pings {
        let n = p.replies();
        p.wait_replies(n + 50, WAIT)
            .with_context(|| format!("{what} ping while no agent runs"))?;
    }
    for (what, x) in &mut transfers {
        let n = x.received_so_far();
        x.wait_received(n + 256 * 1024, WAIT)
            .with_context(|| format!("{what} transfer while no agent runs"))?;
    }
    let no_agents_for = t_down.elapsed();
    let at_restart: Vec<usize> = pings.iter().map(|(_, p)| p.replies()).collect();
    let rx_at_restart: Vec<u64> = transfers.iter().map(|(_, x)| x.received_so_far()).collect();

    let mut restart_took = BTreeMap::new();
    for h in hosts {
        // The pinned counters are adopted, not reset, by the new agent.
        for (id, v) in c.stats(h)? {
            let base = before.base(h, stat_by_name(&id)?);
            ensure!(
                v >= base,
                "{h}: counter {id} went back from {base} to {v} when the agent restarted"
            );
        }
        restart_took.insert(h, c.restart_agent(h)?);
    }
    let restarted_after = t_down.elapsed();
    for (what, p) in &mut pings {
        let n = p.replies();
        p.wait_replies(n + 50, WAIT)
            .with_context(|| format!("{what} ping after the restart"))?;
    }

    for (what, p) in pings {
        let r = p.finish()?;
        eprintln!(
            "{what} ping: {}/{} answered ({} lost) across the restart",
            r.received,
            r.transmitted,
            r.transmitted.saturating_sub(r.received)
        );
        ensure!(
            r.transmitted == PINGS && r.received == r.transmitted,
            "{what} ping lost {} of {} echoes while the agents were killed and restarted",
            r.transmitted.saturating_sub(r.received),
            r.transmitted
        );
    }
    for (what, x) in transfers {
        let r = x.finish()?;
        eprintln!(
            "{what} TCP: {} bytes intact (sha256 {}) in {:?}, peer {:?}",
            r.bytes, r.sha256, r.elapsed, r.peer
        );
        let want_peer = match what {
            "east-west" => v1,
            "fip" => INTERNET_HOST,
            _ => router_ip,
        };
        ensure!(
            r.peer.map(|p| *p.ip()) == Some(want_peer),
            "{what} transfer: the listener saw {:?}, expected {want_peer}",
            r.peer
        );
    }
    eprintln!(
        "no agent ran for {no_agents_for:?}; all restarted {restarted_after:?} after the first \
         kill ({restart_took:?}); echoes answered while no agent ran: {:?}; bytes received \
         meanwhile: {:?}",
        at_kill
            .iter()
            .zip(&at_restart)
            .map(|(a, b)| b - a)
            .collect::<Vec<_>>(),
        rx_at_kill
            .iter()
            .zip(&rx_at_restart)
            .map(|(a, b)| b - a)
            .collect::<Vec<_>>()
    );

    for h in hosts {
        // The counters went on from where they were.
        let key = match h {
            "h1" => Stat::Routed,
            "h2" => Stat::FipDnat,
            _ => Stat::SnatOut,
        };
        let d = before.delta(&c, h, key)?;
        ensure!(
            d >= 100,
            "{h}: {} grew by only {d} across the restart",
            key.as_str()
        );
        // Nothing changed while the agent was away: adopting the maps writes nothing.
        let applied = c.applied_lines(h)?;
        eprintln!(
            "{h}: restarted agent's applied lines: {:#?}",
            applied.iter().map(|a| &a.line).collect::<Vec<_>>()
        );
        if c.vms().iter().any(|v| v.host == h) {
            ensure!(
                !applied.is_empty(),
                "{h}: the restarted agent logged no applied line (it adopts its taps):\n{}",
                c.agent_log(h)?
            );
        }
        if let Some(first) = applied.first() {
            ensure!(
                first.upserted == 0 && first.deleted == 0,
                "{h}: the restarted agent's first applied line must show upserted=0 deleted=0: {}",
                first.line
            );
        }
        // Same pins, same links, new programs: the new agent swapped its programs into the
        // pinned links (BPF_LINK_UPDATE), the links were never detached.
        ensure!(
            c.link_pins(h)? == pins[h],
            "{h}: link pins after the restart: {:?}, before: {:?}",
            c.link_pins(h)?,
            pins[h]
        );
        let now = tcx_by_iface(&c, h)?;
        for (iface, old) in &tcx[h] {
            let new = now
                .get(iface)
                .with_context(|| format!("{h}/{iface}: nothing attached after the restart"))?;
            ensure!(
                new.link_ids == old.link_ids && new.prog_ids.len() == 1,
                "{h}/{iface}: TCX link changed across the restart: {old:?} -> {new:?}"
            );
            ensure!(
                new.prog_ids != old.prog_ids,
                "{h}/{iface}: the restarted agent did not swap its program in: {old:?} -> {new:?}"
            );
        }
    }
    Ok(())
}

/// The [`Stat`] with this `dvrctl show stats` id.
fn stat_by_name(id: &str) -> Result<Stat> {
    Stat::ALL
        .iter()
        .copied()
        .find(|s| s.as_str() == id)
        .with_context(|| format!("unknown counter {id}"))
}

// ---- exact reconciliation ---------------------------------------------------------------------

#[test]
fn fip_deleted_while_agents_were_down_is_gone_after_restart() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").external();
    t.network("a", 6201, "172.22.21.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"))
        .fip("f2", Some("v2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.ip("v1")?, c.ip("v2")?);
    let fip = c.fip_ip("f1")?;
    let fip2 = c.fip_ip("f2")?;
    let h1_mac = c.ext_mac("h1")?;
    let h2_mac = c.ext_mac("h2")?;

    // Flows through f1: UDP and ICMP conntrack entries on h1.
    let server = c.udp_echo_server("v1", 7201)?;
    c.udp_request(EXT, fip, 7201, b"before", Some(INTERNET_HOST), 3)?;
    c.ping_ok(EXT, fip, 2)?;
    let ct = c.conntrack_for("h1", "f1")?;
    ensure!(
        ct.len() >= 4,
        "h1 must track the UDP and ICMP flows through {fip} (two entries each): {ct:?}"
    );
    drop(server);

    for h in ["h1", "h2"] {
        let st = c.stop_agent(h)?;
        ensure!(st.success(), "agent of {h} exited with {st} on SIGTERM");
    }
    c.delete_fip("f1")?;
    // With no agent running, the datapath still serves what it last had.
    let a = c.arping_ext(fip, 1, 3)?;
    ensure!(
        a.reply_macs == vec![h1_mac.clone()],
        "while the agents are down h1 still answers ARP for {fip}:\n{}",
        a.output
    );

    for h in ["h1", "h2"] {
        c.restart_agent(h)?;
    }
    // The first pass of the new agents is exact: no waiting for a later reconcile.
    for h in ["h1", "h2"] {
        let e = c.fip_entry(h, "f1")?;
        ensure!(
            e.is_none(),
            "{h}: show fips still lists the deleted {fip}: {e:?}"
        );
    }
    let ct = c.conntrack_for("h1", "f1")?;
    ensure!(
        ct.is_empty(),
        "h1 still tracks flows of the deleted {fip} after the restart: {ct:?}"
    );
    eprintln!(
        "h1 after restart: {}",
        c.agent_log("h1")?
            .lines()
            .filter(|l| l.contains("purged") || l.contains("applied"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let a = c.arping_ext(fip, 3, 3)?;
    ensure!(
        a.reply_macs.is_empty(),
        "ARP for the deleted {fip} is still answered after the restart:\n{}",
        a.output
    );
    // Sentinel: the other floating IP is answered over the same bridge.
    let a = c.arping_ext(fip2, 1, 3)?;
    ensure!(
        a.reply_macs == vec![h2_mac],
        "ARP for {fip2} (still associated, on h2):\n{}",
        a.output
    );

    // A neighbour with a stale ARP entry still sends to h1's ext0: the datapath must not
    // translate it any more. It hands it to the host stack (ext_pass), whose kernel has no such
    // address and does not forward: dropped there (IpInAddrErrors).
    let probe = TraceProbe::udp("ext0", EXT_GATEWAY, 41201, fip, 7201);
    let tr = c.trace("h1", &probe)?;
    ensure!(
        tr.verdict == Stat::ExtPass.as_str() && tr.output_kind()? == Some(OutputKind::HostStack),
        "trace of a packet to the deleted {fip} on h1:\n{}",
        tr.render()
    );
    let at_v1 = c.capture_vm("v1", "udp")?;
    let before = Counters::take(&c, &["h1"])?;
    let addr_errors = in_addr_errors(&c, "h1")?;
    c.scapy_at(
        EXT,
        &format!(
            "sendp(Ether(dst='{h1_mac}')/IP(src='{EXT_GATEWAY}', dst='{fip}')/UDP(sport=41201, \
             dport=7201)/Raw(b'stale'), iface='br-ext', count=3)"
        ),
    )?;
    let passed = before.wait_delta(&c, "h1", Stat::ExtPass, 3)?;
    wait_until("h1's kernel to drop 3 packets", WAIT, |why| {
        let n = in_addr_errors(&c, "h1")?;
        *why = format!("IpInAddrErrors {addr_errors} -> {n}");
        Ok((n >= addr_errors + 3).then_some(()))
    })?;
    ensure!(
        before.delta(&c, "h1", Stat::FipDnat)? == 0,
        "h1 still translated packets to the deleted {fip}"
    );
    // Sentinel: an east-west datagram reaches v1 after the packets from outside.
    let sink = c.udp_sink("v1", 7202)?;
    c.udp_send("v2", v1, 7202, 41202)?;
    at_v1.wait_for("the east-west sentinel", WAIT, |p| {
        udp_flow(p, v2, Some(41202), v1, 7202)
    })?;
    drop(sink);
    let leaked: Vec<Packet> = at_v1
        .stop()?
        .into_iter()
        .filter(|p| p.contains("41201"))
        .collect();
    ensure!(
        leaked.is_empty(),
        "packets to the deleted {fip} reached v1: {leaked:#?}"
    );
    eprintln!(
        "packets to the deleted {fip}: ext_pass +{passed} on h1, dropped by h1's kernel \
         (IpInAddrErrors +3), none translated"
    );
    Ok(())
}

/// `IpInAddrErrors` of the host's kernel (packets for an address it does not have and does not
/// forward).
fn in_addr_errors(c: &Cloud, host: &str) -> Result<u64> {
    let out = c.exec_host(host, &["cat", "/proc/net/snmp"])?;
    let text = cmd::stdout(&out);
    let mut ip_lines = text.lines().filter(|l| l.starts_with("Ip: "));
    let (Some(names), Some(values)) = (ip_lines.next(), ip_lines.next()) else {
        bail!("no Ip lines in /proc/net/snmp of {host}: {text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InAddrErrors")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no InAddrErrors in /proc/net/snmp of {host}"))
}

// ---- state file latency -----------------------------------------------------------------------

#[test]
fn state_file_change_is_applied_within_100ms() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").external();
    t.network("a", 6301, "172.22.31.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"));
    let mut c = t.build()?;

    // One dvrctl round trip, to tell the agent's share of a measurement from the observer's.
    let probe = Instant::now();
    c.fips("h1")?;
    let dvrctl_took = probe.elapsed();

    // Up to three measurements, each a new floating IP written to the state file and timed
    // from the write's completion until `show fips` lists it. Two cores are shared by the
    // agent, this test and its dvrctl polls: one sample may include a scheduler stall that has
    // nothing to do with the agent, so the best of three is asserted (each is printed).
    let mut samples = Vec::new();
    for attempt in 1..=3 {
        let name = format!("f{attempt}");
        let ip = c.add_fip(&name, Some("v1"))?;
        let written = Instant::now();
        let want = s(ip);
        let took = loop {
            let listed = c
                .fips("h1")?
                .iter()
                .any(|e| e["fip"] == want.as_str() && e["kind"] == "local");
            if listed {
                break written.elapsed();
            }
            ensure!(
                written.elapsed() < Duration::from_secs(5),
                "floating IP {ip} not applied 5 s after the state file was written; agent \
                 log:\n{}",
                c.agent_log("h1")?
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        eprintln!("attempt {attempt}: {ip} listed {took:?} after the write");
        samples.push(took);
        if took < Duration::from_millis(100) {
            break;
        }
    }
    let best = samples.iter().min().copied().unwrap_or(Duration::MAX);
    eprintln!(
        "state file -> map: samples {samples:?}, best {best:?} (one dvrctl call {dvrctl_took:?})"
    );
    ensure!(
        best < Duration::from_millis(100),
        "a state file change took {best:?} (best of {samples:?}) to show in the maps; expected \
         under 100 ms (the agent polls every 20 ms)"
    );
    Ok(())
}

// ---- etcd -------------------------------------------------------------------------------------

/// Three hosts with external NICs, network "a" (VNI `vni`, 172.22.`octet`.0/24) on r1, one VM
/// per host, floating IPs f1 on v1 (h1) and f2 on v2 (h2); every VM in a security group like
/// Neutron's default one (egress any, ingress from its members) plus a top-level rule that
/// admits any ingress (so the FIP checks pass), which must travel through etcd like the rest;
/// etcd in the underlay, the state applied with `dvrctl apply`, agents on `--etcd`.
fn cluster(vni: u32, octet: u8) -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2").host("h3").external();
    t.network("a", vni, &format!("172.22.{octet}.0/24"));
    t.router("r1", &["a"]);
    t.security_group(SecurityGroup::new(
        "sg-default",
        vec![
            SecurityGroupRule::egress("sgd-out"),
            SecurityGroupRule::ingress("sgd-self").remote_group("sg-default"),
        ],
    ))
    .security_group_rule(SecurityGroupRule::ingress("sgd-in-any").in_group("sg-default"));
    t.vm(VmSpec::new("v1", "a", "h1").security_groups(&["sg-default"]))
        .vm(VmSpec::new("v2", "a", "h2").security_groups(&["sg-default"]))
        .vm(VmSpec::new("v3", "a", "h3").security_groups(&["sg-default"]))
        .fip("f1", Some("v1"))
        .fip("f2", Some("v2"));
    let mut c = t.build_without_agents()?;
    let url = c.start_etcd()?;
    let out = c.etcd_apply()?;
    eprintln!("etcd at {url}: {out}");
    c.agents_use_etcd()?;
    c.start_agents()?;
    Ok(c)
}

#[test]
fn cluster_apply_validates_moves_a_fip_and_tracks_liveness() -> Result<()> {
    require_etcd_preconditions();
    let mut c = cluster(6401, 41)?;
    let fip = c.fip_ip("f1")?;

    // One key per resource, each holding the resource as given.
    let want = c.expected_etcd_keys()?;
    let have = c.etcd_state_keys()?;
    ensure!(
        have.keys().collect::<Vec<_>>() == want.keys().collect::<Vec<_>>(),
        "etcd keys {:?}, expected {:?}",
        have.keys(),
        want.keys()
    );
    for (k, v) in &want {
        let stored: Value = serde_json::from_str(&have[k].value)
            .with_context(|| format!("{k} holds no JSON: {}", have[k].value))?;
        ensure!(&stored == v, "{k} holds {stored}, expected {v}");
    }
    eprintln!("etcd holds {} state keys under {PREFIX}", have.len());

    let rows = wait_until("all three agents alive", WAIT, |why| {
        let rows = c.etcd_hosts()?;
        *why = format!("{rows:?}");
        Ok((rows.len() == 3 && rows.iter().all(|r| r.alive)).then_some(rows))
    })?;
    for h in ["h1", "h2", "h3"] {
        let info = c.host(h)?;
        let row = rows
            .iter()
            .find(|r| r.host == info.agent_name)
            .with_context(|| format!("no row for {h} in {rows:?}"))?;
        ensure!(
            row.agent_mode == "dvr"
                && row.tunnel_ip == s(info.tunnel_ip)
                && row.lease_ttl_s.is_some_and(|t| (1..=5).contains(&t)),
            "dvrctl hosts row of {h}: {row:?}"
        );
    }
    eprintln!("dvrctl hosts: {rows:?}");

    // An invalid file changes nothing, not even its valid parts (f1 moved to v3).
    let v3 = c.vm("v3")?.clone();
    let mut bad = c.state().clone();
    let f1_id = c.fip_info("f1")?.id.clone();
    if let Some(f) = bad.floatingip_mut(&f1_id) {
        f["port_id"] = v3.port_id.clone().into();
        f["fixed_ip_address"] = s(v3.ip).into();
    }
    let subnet = c.network("a")?.subnet_id.clone();
    if let Some(sn) = bad.subnet_mut(&subnet) {
        sn.cidr = "172.22.41.0/33".into();
    }
    let bad_path = c.temp_dir().join("invalid-state.json");
    std::fs::write(&bad_path, serde_json::to_vec_pretty(&bad)?)?;
    let (rev_before, keys_before) = c.etcd_get(PREFIX)?;
    let out = c.etcd_apply_file(&bad_path)?;
    let text = cmd::text(&out);
    ensure!(
        !out.status.success(),
        "dvrctl apply of an invalid file succeeded: {text}"
    );
    ensure!(
        text.contains(&subnet) && text.contains("cidr"),
        "dvrctl apply must name the subnet {subnet} and its cidr: {text}"
    );
    let (rev_after, keys_after) = c.etcd_get(PREFIX)?;
    let state_only = |m: &BTreeMap<String, dvr_tests::etcd::EtcdKv>| {
        m.iter()
            .filter(|(k, _)| !k.starts_with(ALIVE_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    ensure!(
        state_only(&keys_before) == state_only(&keys_after),
        "an invalid dvrctl apply changed etcd"
    );
    eprintln!(
        "invalid apply refused ({}): {}; etcd revision {rev_before} -> {rev_after}",
        out.status,
        text.trim()
    );
    c.wait_fip_kind("h1", "f1", Some("local"), WAIT)?;

    // Move f1 from v1 (h1) to v3 (h3) through etcd.
    c.associate("f1", "v3")?;
    let applied = c.etcd_apply()?;
    ensure!(
        applied.contains("1 written") && applied.contains("0 deleted"),
        "moving one floating IP must write exactly one key: {applied}"
    );
    let t0 = Instant::now();
    c.wait_fip_kind("h3", "f1", Some("local"), WAIT)?;
    let on_h3 = t0.elapsed();
    c.wait_fip_kind("h1", "f1", Some("remote"), WAIT)?;
    let off_h1 = t0.elapsed();
    let h2 = c.wait_fip_kind("h2", "f1", Some("remote"), WAIT)?;
    ensure!(
        h2["remote"] == s(c.host("h3")?.tunnel_ip).as_str(),
        "h2 must see f1 on h3: {h2}"
    );
    let a = c.arping_ext(fip, 3, 3)?;
    let h3_mac = c.ext_mac("h3")?;
    ensure!(
        !a.reply_macs.is_empty() && a.reply_macs.iter().all(|m| *m == h3_mac),
        "ARP for {fip} must be answered by h3's ext0 ({h3_mac}) only:\n{}",
        a.output
    );
    let p = c.ping_with(EXT, fip, 3, &["-I", &s(INTERNET_HOST)])?;
    ensure!(p.all_answered(), "ping {fip} after the move:\n{}", p.output);
    eprintln!("f1 moved through etcd: local on h3 after {on_h3:?}, gone from h1 after {off_h1:?}");

    // A stopped agent's lease runs out.
    let st = c.stop_agent("h2")?;
    ensure!(st.success(), "agent of h2 exited with {st} on SIGTERM");
    let stopped = Instant::now();
    let row = wait_until("h2 to show as not alive", Duration::from_secs(8), |why| {
        let row = c.etcd_host_row("h2")?;
        *why = format!("{row:?}");
        Ok(row.filter(|r| !r.alive))
    })?;
    let gone_after = stopped.elapsed();
    for h in ["h1", "h3"] {
        let r = c.etcd_host_row(h)?;
        ensure!(
            r.as_ref().is_some_and(|r| r.alive),
            "{h} must still be alive: {r:?}"
        );
    }
    eprintln!("h2 not alive {gone_after:?} after SIGTERM: {row:?}");
    Ok(())
}

#[test]
fn etcd_outage_keeps_forwarding_and_agents_resync_when_it_returns() -> Result<()> {
    require_etcd_preconditions();
    let mut c = cluster(6501, 51)?;
    let hosts = ["h1", "h2", "h3"];
    let (v1, v3) = (c.ip("v1")?, c.ip("v3")?);
    let fip = c.fip_ip("f1")?;
    c.ping_ok("v1", v3, 1)?;
    c.ping_ok(EXT, fip, 1)?;

    const PINGS: u32 = 600;
    let mut pings = vec![
        (
            "fip",
            c.ping_bg(EXT, fip, PINGS, PING_INTERVAL, &["-I", &s(INTERNET_HOST)])?,
        ),
        ("east-west", c.ping_bg("v3", v1, PINGS, PING_INTERVAL, &[])?),
    ];
    for (what, p) in &mut pings {
        p.wait_replies(25, WAIT)
            .with_context(|| format!("{what} ping before the outage"))?;
    }

    let down = Instant::now();
    let st = c.stop_etcd()?;
    eprintln!("etcd stopped ({st})");
    for h in hosts {
        c.wait_agent_log(h, "etcd unreachable", Duration::from_secs(10))?;
    }
    let noticed = down.elapsed();
    for (what, p) in &mut pings {
        let n = p.replies();
        p.wait_replies(n + 50, WAIT)
            .with_context(|| format!("{what} ping while etcd is down"))?;
    }
    for h in hosts {
        ensure!(c.agent_running(h)?, "agent of {h} exited without etcd");
    }

    // Back on the same data; a change is applied right away.
    let restart = Instant::now();
    c.start_etcd()?;
    let healthy = restart.elapsed();
    let outage = down.elapsed();
    c.disassociate("f2")?;
    let applied = c.etcd_apply()?;
    let t0 = Instant::now();
    for h in hosts {
        c.wait_agent_log(h, "etcd back", Duration::from_secs(10))?;
    }
    let resynced = restart.elapsed();
    for h in hosts {
        c.wait_fip_kind(h, "f2", Some("unassociated"), Duration::from_secs(10))?;
    }
    let change_seen = t0.elapsed();
    let a = c.arping_ext(c.fip_ip("f2")?, 2, 2)?;
    ensure!(
        a.reply_macs.is_empty(),
        "ARP for the disassociated f2 is still answered:\n{}",
        a.output
    );
    let rows = wait_until("all agents alive again", Duration::from_secs(10), |why| {
        let rows = c.etcd_hosts()?;
        *why = format!("{rows:?}");
        Ok(rows.iter().all(|r| r.alive).then_some(rows))
    })?;

    for (what, p) in pings {
        let r = p.finish()?;
        eprintln!(
            "{what} ping: {}/{} answered across the etcd outage",
            r.received, r.transmitted
        );
        ensure!(
            r.transmitted == PINGS && r.received == r.transmitted,
            "{what} ping lost {} of {} echoes across the etcd outage",
            r.transmitted.saturating_sub(r.received),
            r.transmitted
        );
    }
    eprintln!(
        "etcd down for {outage:?}; agents logged it within {noticed:?}; etcd healthy \
         {healthy:?} after its restart, every agent logged \"etcd back\" within {resynced:?} of \
         it; `{applied}`: f2 unassociated everywhere {change_seen:?} after the apply; hosts \
         {rows:?}"
    );
    Ok(())
}

// ---- trace vs reality -------------------------------------------------------------------------

/// Counters that ARP and neighbour upkeep move on their own (gateway probes, gratuitous ARP):
/// not part of what a traced packet does.
const BACKGROUND: [Stat; 4] = [
    Stat::ArpReply,
    Stat::ExtArpReply,
    Stat::ExtNeighLearned,
    Stat::ExtPass,
];

/// Waits until the verdict counter of trace `tr` on `host` grew by `n`, then checks that it
/// and the counters the trace says it bumps besides are the only ones (besides
/// [`BACKGROUND`]) that moved, each by exactly `n`.
fn only_moved(c: &Cloud, before: &Counters, host: &str, tr: &Trace, n: u64) -> Result<()> {
    let verdict = tr.verdict.as_str();
    let stat = stat_by_name(verdict)?;
    before
        .wait_delta(c, host, stat, n)
        .with_context(|| format!("{host}: the traced verdict {verdict} did not move"))?;
    let moved: BTreeMap<String, u64> = before
        .moved(c, host)?
        .into_iter()
        .filter(|(k, _)| BACKGROUND.iter().all(|b| b.as_str() != k))
        .collect();
    let want: BTreeMap<String, u64> = std::iter::once(verdict)
        .chain(tr.also.iter().map(String::as_str))
        .map(|k| (k.to_string(), n))
        .collect();
    ensure!(
        moved == want,
        "{host}: the packet moved {moved:?}; the trace said {verdict} (also {:?}) x{n}",
        tr.also
    );
    Ok(())
}

fn expect_trace(
    tr: &Trace,
    verdict: Stat,
    output: Option<OutputKind>,
    out_ips: Option<(Ipv4Addr, Ipv4Addr)>,
    out_macs: Option<(&str, &str)>,
) -> Result<()> {
    ensure!(
        tr.verdict == verdict.as_str() && tr.drop == verdict.is_drop(),
        "trace verdict {} (drop {}), expected {}:\n{}",
        tr.verdict,
        tr.drop,
        verdict.as_str(),
        tr.render()
    );
    ensure!(
        tr.output_kind()? == output,
        "trace output {:?}, expected {output:?}:\n{}",
        tr.output,
        tr.render()
    );
    if let Some((src, dst)) = out_ips {
        ensure!(
            tr.out_src.as_deref() == Some(s(src).as_str())
                && tr.out_dst.as_deref() == Some(s(dst).as_str()),
            "trace out {:?} -> {:?}, expected {src} -> {dst}:\n{}",
            tr.out_src,
            tr.out_dst,
            tr.render()
        );
    }
    if let Some((src, dst)) = out_macs {
        ensure!(
            tr.out_src_mac.as_deref() == Some(src) && tr.out_dst_mac.as_deref() == Some(dst),
            "trace out MACs {:?} -> {:?}, expected {src} -> {dst}:\n{}",
            tr.out_src_mac,
            tr.out_dst_mac,
            tr.render()
        );
    }
    Ok(())
}

#[test]
fn trace_predicts_what_real_packets_do() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("hs").external();
    t.network("a", 6601, "172.22.61.0/24")
        .network("b", 6602, "172.22.62.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"))
        .fip("f2", Some("v2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let (h1, h2, hs) = (
        c.host("h1")?.clone(),
        c.host("h2")?.clone(),
        c.host("hs")?.clone(),
    );
    let (gw_a, gw_b) = (c.gateway_mac("a")?, c.gateway_mac("b")?);
    let csnat = c.csnat("a")?.clone();
    let fip = c.fip_ip("f2")?;
    let router_ip = c.router_external_ip("r1")?;
    let v2_tap = c.tap_ifindex("v2")?;
    let hs_ext = c.host_ifindex("hs", "ext0")?;
    let upstream_mac = c.ext_bridge_mac()?;
    let hs_mac = c.ext_mac("hs")?;
    // Neighbours resolved before anything is counted.
    c.ping_ok("v1", v2.ip, 1)?;
    c.ping_ok(EXT, fip, 1)?;
    c.ping_ok("v1", INTERNET_HOST, 1)?;

    // 1. Routed across hosts: v1 (h1) -> v2 (h2).
    let mut sink = c.udp_sink("v2", 6001)?;
    let tr = c.trace(
        "h1",
        &TraceProbe::udp(&v1.tap, v1.ip, 41001, v2.ip, 6001).macs(&v1.mac, &gw_a),
    )?;
    expect_trace(
        &tr,
        Stat::Routed,
        Some(OutputKind::Tunnel {
            remote: h2.tunnel_ip,
            vni: 6602,
        }),
        Some((v1.ip, v2.ip)),
        Some((&h1.dvr_mac, &v2.mac)),
    )?;
    let tr2 = c.trace(
        "h2",
        &TraceProbe::udp("dvr-vx", v1.ip, 41001, v2.ip, 6001)
            .macs(&h1.dvr_mac, &v2.mac)
            .tunnel(6602, h1.tunnel_ip),
    )?;
    expect_trace(
        &tr2,
        Stat::RxTunnel,
        Some(OutputKind::Tap(v2_tap)),
        Some((v1.ip, v2.ip)),
        Some((&gw_b, &v2.mac)),
    )?;
    let under = c.capture_uplink("h1", "udp port 4789")?;
    let at_v2 = c.capture_vm("v2", "udp")?;
    let before = Counters::take(&c, &["h1", "h2", "hs"])?;
    c.udp_send("v1", v2.ip, 6001, 41001)?;
    let p = under.wait_for("the routed datagram on the underlay", WAIT, |p| {
        udp_flow(p, v1.ip, Some(41001), v2.ip, 6001)
    })?;
    ensure!(
        p.vni() == Some(6602)
            && p.contains(&format!(" > {}.4789:", h2.tunnel_ip))
            && p.inner_eth() == Some((h1.dvr_mac.clone(), v2.mac.clone())),
        "on the underlay: {p}"
    );
    let p = at_v2.wait_for("the routed datagram in v2", WAIT, |p| {
        udp_flow(p, v1.ip, Some(41001), v2.ip, 6001)
    })?;
    ensure!(
        p.outer_eth() == Some((gw_b.clone(), v2.mac.clone())),
        "in v2: {p}"
    );
    sink.wait_stdout("the routed datagram", WAIT, |o| !peers(o).is_empty())?;
    ensure!(
        peers(&sink.stdout()) == vec![SocketAddrV4::new(v1.ip, 41001)],
        "v2's sink saw {:?}",
        peers(&sink.stdout())
    );
    only_moved(&c, &before, "h1", &tr, 1)?;
    only_moved(&c, &before, "h2", &tr2, 1)?;
    eprintln!(
        "routed: h1 {} -> {:?}, h2 {} -> {:?}",
        tr.verdict, tr.output, tr2.verdict, tr2.output
    );

    // 2. Inbound through the floating IP on h2.
    let mut sink_b = c.udp_sink("v2", 6002)?;
    let tr = c.trace(
        "h2",
        &TraceProbe::udp("ext0", EXT_GATEWAY, 41002, fip, 6002),
    )?;
    expect_trace(
        &tr,
        Stat::FipDnat,
        Some(OutputKind::Tap(v2_tap)),
        Some((EXT_GATEWAY, v2.ip)),
        Some((&gw_b, &v2.mac)),
    )?;
    let before = Counters::take(&c, &["h1", "h2", "hs"])?;
    c.udp_send(EXT, fip, 6002, 41002)?;
    let p = at_v2.wait_for("the datagram to the FIP in v2", WAIT, |p| {
        udp_flow(p, EXT_GATEWAY, Some(41002), v2.ip, 6002)
    })?;
    ensure!(
        p.outer_eth() == Some((gw_b.clone(), v2.mac.clone())),
        "in v2: {p}"
    );
    sink_b.wait_stdout("the datagram to the FIP", WAIT, |o| !peers(o).is_empty())?;
    ensure!(
        peers(&sink_b.stdout()) == vec![SocketAddrV4::new(EXT_GATEWAY, 41002)],
        "v2's sink saw {:?}",
        peers(&sink_b.stdout())
    );
    only_moved(&c, &before, "h2", &tr, 1)?;
    eprintln!("fip inbound: h2 {} -> {:?}", tr.verdict, tr.output);

    // 3. Outbound through SNAT: steered on h1, translated on hs.
    let mut sink_ext = c.udp_sink(EXT, 6003)?;
    let tr = c.trace(
        "h1",
        &TraceProbe::udp(&v1.tap, v1.ip, 41003, INTERNET_HOST, 6003).macs(&v1.mac, &gw_a),
    )?;
    expect_trace(
        &tr,
        Stat::SnatSteered,
        Some(OutputKind::Tunnel {
            remote: hs.tunnel_ip,
            vni: 6601,
        }),
        Some((v1.ip, INTERNET_HOST)),
        Some((&h1.dvr_mac, &csnat.mac)),
    )?;
    let tr2 = c.trace(
        "hs",
        &TraceProbe::udp("dvr-vx", v1.ip, 41003, INTERNET_HOST, 6003)
            .macs(&h1.dvr_mac, &csnat.mac)
            .tunnel(6601, h1.tunnel_ip),
    )?;
    expect_trace(
        &tr2,
        Stat::SnatOut,
        Some(OutputKind::Ext(hs_ext)),
        Some((router_ip, INTERNET_HOST)),
        Some((&hs_mac, &upstream_mac)),
    )?;
    let at_hs_ext = c.capture_ext_port("hs", "udp port 6003")?;
    let before = Counters::take(&c, &["h1", "h2", "hs"])?;
    c.udp_send("v1", INTERNET_HOST, 6003, 41003)?;
    let p = under.wait_for("the steered datagram on the underlay", WAIT, |p| {
        udp_flow(p, v1.ip, Some(41003), INTERNET_HOST, 6003)
    })?;
    ensure!(
        p.vni() == Some(6601)
            && p.contains(&format!(" > {}.4789:", hs.tunnel_ip))
            && p.inner_eth() == Some((h1.dvr_mac.clone(), csnat.mac.clone())),
        "on the underlay: {p}"
    );
    let p = at_hs_ext.wait_for("the translated datagram on hs's ext0", WAIT, |p| {
        udp_flow(p, router_ip, None, INTERNET_HOST, 6003)
    })?;
    ensure!(
        p.outer_eth() == Some((hs_mac.clone(), upstream_mac.clone())),
        "on hs's ext0: {p}"
    );
    sink_ext.wait_stdout("the translated datagram", WAIT, |o| !peers(o).is_empty())?;
    let seen = peers(&sink_ext.stdout());
    ensure!(
        seen.len() == 1 && *seen[0].ip() == router_ip,
        "the external sink saw {seen:?}; the trace said source {router_ip}"
    );
    only_moved(&c, &before, "h1", &tr, 1)?;
    only_moved(&c, &before, "hs", &tr2, 1)?;
    eprintln!(
        "snat: h1 {} -> {:?}, hs {} -> {:?}, seen from {}",
        tr.verdict, tr.output, tr2.verdict, tr2.output, seen[0]
    );

    // 4. A spoofed source IP from v1: dropped on h1.
    let spoof = Ipv4Addr::new(172, 22, 61, 99);
    let tr = c.trace(
        "h1",
        &TraceProbe::udp(&v1.tap, spoof, 41004, v2.ip, 6001).macs(&v1.mac, &gw_a),
    )?;
    expect_trace(&tr, Stat::DropSpoofIp, None, None, None)?;
    ensure!(
        tr.out_src.is_none() && tr.out_dst.is_none(),
        "a dropped packet has no output addresses:\n{}",
        tr.render()
    );
    let before = Counters::take(&c, &["h1", "h2", "hs"])?;
    c.send_udp_frame(
        "v1",
        &UdpFrame {
            src_mac: v1.mac.clone(),
            dst_mac: gw_a.clone(),
            src_ip: spoof,
            dst_ip: v2.ip,
            sport: 41004,
            dport: 6001,
            count: 1,
        },
    )?;
    only_moved(&c, &before, "h1", &tr, 1)?;
    // Sentinel: a legitimate datagram from v1 arrives after the spoofed one would have.
    c.udp_send("v1", v2.ip, 6001, 41005)?;
    at_v2.wait_for("the sentinel datagram", WAIT, |p| {
        udp_flow(p, v1.ip, Some(41005), v2.ip, 6001)
    })?;
    let leaked: Vec<Packet> = at_v2
        .stop()?
        .into_iter()
        .filter(|p| p.contains(&s(spoof)))
        .collect();
    ensure!(
        leaked.is_empty(),
        "the spoofed datagram reached v2: {leaked:#?}"
    );
    eprintln!("spoofed: h1 {}", tr.verdict);
    Ok(())
}

// ---- monitor ----------------------------------------------------------------------------------

#[test]
fn monitor_reports_each_dropped_spoofed_packet() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1");
    t.network("a", 6701, "172.22.71.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let tap = c.tap_ifindex("v1")?;
    let spoof = Ipv4Addr::new(172, 22, 71, 99);

    // The ring buffer is pinned: events of earlier drops wait there for the next reader.
    let old = c.drain_monitor("h1", Duration::from_millis(300))?;
    eprintln!("{} earlier events drained", old.len());
    let mut mon = c.spawn_monitor("h1", Some(3), Duration::from_secs(10))?;
    let before = Counters::take(&c, &["h1"])?;
    c.send_udp_frame(
        "v1",
        &UdpFrame {
            src_mac: v1.mac.clone(),
            dst_mac: v2.mac.clone(),
            src_ip: spoof,
            dst_ip: v2.ip,
            sport: 41701,
            dport: 6701,
            count: 3,
        },
    )?;
    let status = mon.wait_exit(Duration::from_secs(15))?;
    let out = mon.stdout();
    ensure!(
        status.is_some_and(|s| s.success()),
        "dvrctl monitor did not end cleanly ({status:?}): {out} {}",
        mon.stderr()
    );
    let events = dvr_tests::inspect::parse_monitor(&out)?;
    ensure!(
        events.len() == 3,
        "dvrctl monitor --count 3 printed {} events:\n{out}",
        events.len()
    );
    for e in &events {
        ensure!(
            e.reason == Stat::DropSpoofIp.as_str()
                && e.src == Some(spoof.into())
                && e.dst == Some(v2.ip.into())
                && e.src_mac == v1.mac
                && e.dst_mac == v2.mac
                && e.ifindex == tap
                && e.proto == 17
                && e.ethertype == "0x0800",
            "unexpected event {e:?} (spoofed {spoof} -> {} from {} on tap#{tap})",
            v2.ip,
            v1.mac
        );
    }
    ensure!(
        events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "events out of order: {events:?}"
    );
    let d = before.wait_delta(&c, "h1", Stat::DropSpoofIp, 3)?;
    ensure!(d == 3, "drop_spoof_ip grew by {d}, monitor saw 3");
    eprintln!("monitor: {events:?}");
    Ok(())
}

// ---- metrics ----------------------------------------------------------------------------------

#[test]
fn metrics_endpoint_reports_counters_taps_fips_and_reconciles() -> Result<()> {
    require_preconditions();
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9465);
    let mut t = Topology::new();
    t.host("h1").host("h2").external();
    t.network("a", 6801, "172.22.81.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1"))
        .vm(VmSpec::new("v3", "a", "h2"))
        .fip("f1", Some("v1"));
    t.agent_args(&["--metrics", &addr.to_string()]);
    let mut c = t.build()?;
    let fip = c.fip_ip("f1")?;
    c.ping_ok("v1", c.ip("v2")?, 3)?;
    c.ping_ok("v1", c.ip("v3")?, 3)?;
    c.ping_ok(EXT, fip, 3)?;

    let stats_before = c.stats("h1")?;
    let m = c.scrape_metrics("h1", addr)?;
    let stats_after = c.stats("h1")?;
    let name = c.host("h1")?.agent_name.clone();
    for stat in Stat::ALL {
        let id = stat.as_str();
        let kind = if stat.is_drop() { "drop" } else { "forward" };
        let v = m.value(
            "dvr_packets_total",
            &[("host", name.as_str()), ("kind", kind), ("reason", id)],
        )?;
        let (lo, hi) = (stats_before[id] as f64, stats_after[id] as f64);
        ensure!(
            lo <= v && v <= hi,
            "dvr_packets_total{{reason={id}}} = {v}, dvrctl show stats said {lo}..{hi}"
        );
    }
    for (reason, min) in [("tx_local", 6.0), ("tx_tunnel", 3.0), ("fip_dnat", 3.0)] {
        let v = m.value("dvr_packets_total", &[("reason", reason)])?;
        ensure!(
            v >= min,
            "dvr_packets_total{{reason={reason}}} = {v} after the pings"
        );
    }
    let taps = m.value("dvr_taps_attached", &[])?;
    let fips = m.value("dvr_fips_served", &[])?;
    let reconciles = m.value("dvr_reconciles_total", &[])?;
    let ct = m.value("dvr_conntrack_entries", &[])?;
    ensure!(taps == 2.0, "h1 has 2 VMs; dvr_taps_attached = {taps}");
    ensure!(fips == 1.0, "h1 serves f1; dvr_fips_served = {fips}");
    ensure!(reconciles >= 1.0, "dvr_reconciles_total = {reconciles}");
    ensure!(
        ct >= 2.0,
        "the FIP ping is tracked in both directions; dvr_conntrack_entries = {ct}"
    );
    ensure!(
        m.value("dvr_reconcile_seconds_last", &[])? > 0.0,
        "dvr_reconcile_seconds_last must be the duration of a real pass"
    );

    let m2 = c.scrape_metrics("h2", addr)?;
    ensure!(
        m2.value("dvr_taps_attached", &[])? == 1.0 && m2.value("dvr_fips_served", &[])? == 0.0,
        "h2 has 1 VM and serves no FIP:\n{}",
        m2.text
    );
    // A new floating IP on h2 shows in its gauges, with one more reconcile.
    let r0 = m2.value("dvr_reconciles_total", &[])?;
    c.add_fip("f2", Some("v3"))?;
    c.wait_fip_kind("h2", "f2", Some("local"), WAIT)?;
    let m3 = wait_until("h2's metrics to count f2", WAIT, |why| {
        let m = c.scrape_metrics("h2", addr)?;
        let f = m.value("dvr_fips_served", &[])?;
        *why = format!("dvr_fips_served {f}");
        Ok((f == 1.0).then_some(m))
    })?;
    let r1 = m3.value("dvr_reconciles_total", &[])?;
    ensure!(
        r1 > r0,
        "dvr_reconciles_total {r0} -> {r1} after a state change"
    );
    eprintln!(
        "h1: taps {taps}, fips {fips}, reconciles {reconciles}, conntrack {ct}, tx_local {}; \
         h2 reconciles {r0} -> {r1}",
        m.value("dvr_packets_total", &[("reason", "tx_local")])?
    );
    Ok(())
}

// ---- uninstall --------------------------------------------------------------------------------

#[test]
fn uninstall_removes_every_link_pin_and_device_and_nothing_else() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").external();
    t.network("a", 6901, "172.22.91.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .vm(VmSpec::new("v3", "a", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let (v2, v3) = (c.ip("v2")?, c.ip("v3")?);
    let fip = c.fip_ip("f1")?;
    c.ping_ok("v1", v2, 1)?;
    c.ping_ok("v2", v3, 1)?;
    c.ping_ok(EXT, fip, 1)?;

    let map_names: BTreeSet<String> = dvr_userspace::maps::NAMES
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut links = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    let mut attached = BTreeMap::new();
    for h in ["h1", "h2"] {
        ensure!(
            c.map_pins(h)? == map_names,
            "{h}: maps pinned in {}: {:?}, expected {map_names:?}",
            c.pin_dir(h)?.display(),
            c.map_pins(h)?
        );
        ensure!(
            c.link_pins(h)? == c.expected_link_pins(h)?,
            "{h}: link pins {:?}, expected {:?}",
            c.link_pins(h)?,
            c.expected_link_pins(h)?
        );
        let tcx = tcx_by_iface(&c, h)?;
        ensure!(tcx.values().all(|x| x.prog_ids.len() == 1), "{h}: {tcx:?}");
        attached.insert(h, tcx);
        links.insert(h, c.host_links(h)?);
        addrs.insert(h, host_addrs(&c, h)?);
        let st = c.stop_agent(h)?;
        ensure!(st.success(), "agent of {h} exited with {st} on SIGTERM");
    }

    for (i, h) in ["h1", "h2"].into_iter().enumerate() {
        let out = c.uninstall_agent(h)?;
        ensure!(
            out.status.success(),
            "dvr-agent --uninstall --host {h} failed ({}): {}",
            out.status,
            cmd::text(&out).trim()
        );
        eprintln!("{h}: {}", cmd::text(&out).trim());
        let pins = c.pin_dir(h)?;
        ensure!(!pins.exists(), "{} still exists", pins.display());
        let mut want = links[h].clone();
        ensure!(want.remove("dvr-vx"), "{h} had no dvr-vx before");
        ensure!(
            c.host_links(h)? == want,
            "{h}: links after uninstall {:?}, expected exactly the ones before minus dvr-vx: {want:?}",
            c.host_links(h)?
        );
        ensure!(
            host_addrs(&c, h)? == addrs[h],
            "{h}: addresses changed: {:?} -> {:?}",
            addrs[h],
            host_addrs(&c, h)?
        );
        for link in attached[h].keys().filter(|i| *i != "dvr-vx") {
            let x = match link.strip_suffix(":out") {
                Some(iface) => c.tcx(h, iface, "egress")?,
                None => c.tcx_ingress(h, link)?,
            };
            let iface = link;
            ensure!(
                x.prog_ids.is_empty() && x.link_ids.is_empty(),
                "{h}/{iface}: still attached after uninstall: {x:?}"
            );
        }
        ensure!(
            dvr_tests::cloud::bpffs_root().is_dir(),
            "the shared bpffs root must stay"
        );
        if i == 0 {
            // h2 is untouched: its pins, attachments and local forwarding stay.
            ensure!(
                c.link_pins("h2")? == c.expected_link_pins("h2")?
                    && tcx_by_iface(&c, "h2")? == attached["h2"],
                "uninstalling h1 touched h2"
            );
            c.ping_ok("v2", v3, 2)
                .context("h2 must keep forwarding after h1's uninstall")?;
            let p = c.ping("v1", v2, 2)?;
            ensure!(
                p.received == 0,
                "v1 still reaches v2 through h1:\n{}",
                p.output
            );
            let p = c.ping(EXT, fip, 2)?;
            ensure!(
                p.received == 0,
                "the FIP on h1 still answers:\n{}",
                p.output
            );
        } else {
            let p = c.ping("v2", v3, 2)?;
            ensure!(
                p.received == 0,
                "v2 still reaches v3 after h2's uninstall:\n{}",
                p.output
            );
        }
    }
    Ok(())
}

/// `ip -4 -o addr` lines of a host's namespace (interface and address).
fn host_addrs(c: &Cloud, host: &str) -> Result<BTreeSet<String>> {
    let out = c.exec_host(host, &["ip", "-4", "-o", "addr", "show"])?;
    ensure!(
        out.status.success(),
        "ip addr in {host}: {}",
        cmd::text(&out)
    );
    Ok(cmd::stdout(&out)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{} {}", w.get(1)?, w.get(3)?))
        })
        .collect())
}
