//! IPv6 security group integration tests: dual-stack VMs on two hosts, configured from the
//! router's advertisements through filtered ports, with Neutron's default group (egress
//! IPv4 and IPv6 anywhere, ingress IPv4 and IPv6 from the group itself) and a web group.
//!
//! As in `sg.rs`, every refusal is shown twice: the traffic gets no answer within a bounded
//! wait (and the server behind a refused port logs no such peer), and the drop counter of
//! the host that must refuse it rises. Every admission is an answered connection or echo.
//! Changes of the running cloud are awaited until every agent's maps (the IPv6 remote trie
//! included) equal the compile of the new state (`Cloud::apply_state`): nothing sleeps.
//!
//! One cloud serves every check: each check looks at its own ports, flows and counter
//! deltas, and the one that changes the state (removing a rule) comes last.
//!
//! Needs root, bpffs, tcpdump, socat, python3-scapy and the built agent; fails with a clear
//! message otherwise. Run with `--test-threads=1`.

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::ipv6::SLAAC_DEADLINE;
use dvr_tests::sg::{Outcome, Proto, expect_probes, rule_in, rule_out, served, sg_conntrack};
use dvr_tests::{
    Cloud, Counters, SecurityGroup, SecurityGroupRule, Topology, TraceProbe, VmSpec,
    require_preconditions,
};
use serde_json::Value;

use Proto::Tcp;

fn v6(mut r: SecurityGroupRule) -> SecurityGroupRule {
    r.ethertype = "IPv6".into();
    r
}

/// Hosts h1 and h2; network `a` (172.26.1.0/24 + fd00:66:1::/64, slaac) and `b`
/// (172.26.2.0/24 + fd00:66:2::/64, slaac) on router r1. Groups: `default` as
/// Neutron creates it; `web`: IPv6 TCP 8080, IPv4 TCP 8081, IPv6 echo requests (`icmp`
/// type 128 on an IPv6 rule), IPv6 TCP 7100 and 7200, from anywhere; `sg-out`: egress only
/// (IPv4 and IPv6). VMs: `srv` (a, h2; default + web), `m1` (a, h1; default), `out` (a, h1;
/// sg-out), `pb` (b, h2; unfiltered: a routed destination).
fn cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 3661, "172.26.1.0/24")
        .ipv6("a", "fd00:66:1::/64", Some("slaac"));
    t.network("b", 3662, "172.26.2.0/24")
        .ipv6("b", "fd00:66:2::/64", Some("slaac"));
    t.router("r1", &["a", "b"]);
    t.security_group(SecurityGroup::new(
        "default",
        vec![
            rule_out("d-eg4"),
            v6(rule_out("d-eg6")),
            rule_in("d-in4").remote_group("default"),
            v6(rule_in("d-in6")).remote_group("default"),
        ],
    ))
    .security_group(SecurityGroup::new(
        "web",
        vec![
            v6(rule_in("w-http6").tcp(8080, 8080)),
            rule_in("w-http4").tcp(8081, 8081),
            v6(rule_in("w-echo6").icmp_type(128)),
            v6(rule_in("w-7100").tcp(7100, 7100)),
            v6(rule_in("w-7200").tcp(7200, 7200)),
        ],
    ))
    .security_group(SecurityGroup::new(
        "sg-out",
        vec![rule_out("o-eg4"), v6(rule_out("o-eg6"))],
    ));
    t.vm(VmSpec::new("srv", "a", "h2").security_groups(&["default", "web"]))
        .vm(VmSpec::new("m1", "a", "h1").security_groups(&["default"]))
        .vm(VmSpec::new("out", "a", "h1").security_groups(&["sg-out"]))
        .vm(VmSpec::new("pb", "b", "h2"));
    t.build()
}

/// The IPv6 flows of `vm`'s zone from or to `peer` on TCP/UDP port `port` (either side).
fn flows6(c: &Cloud, vm: &str, peer: Ipv6Addr, port: u64) -> Result<Vec<Value>> {
    let peer = peer.to_string();
    Ok(sg_conntrack(c, vm)?
        .into_iter()
        .filter(|e| {
            (e["src"].as_str() == Some(&peer) || e["dst"].as_str() == Some(&peer))
                && (e["dport"].as_u64() == Some(port) || e["sport"].as_u64() == Some(port))
        })
        .collect())
}

#[test]
fn ipv6_security_groups_filter_statefully_like_ipv4() -> Result<()> {
    require_preconditions();
    let mut c = cloud()?;

    // ---- SLAAC through filtered ports: RS, RA, NS, NA and MLD are base traffic. --------
    for vm in ["srv", "m1", "out"] {
        let l = c.wait_ipv6_ready(vm, SLAAC_DEADLINE)?;
        eprintln!("{vm}: configured {l:?}");
    }
    let (srv6, m16, out6) = (c.ip6("srv")?, c.ip6("m1")?, c.ip6("out")?);
    let (srv4, out4) = (c.ip("srv")?, c.ip("out")?);
    let server = c.sg_server("srv", &[8080, 8081, 9000, 7100, 7200], &[])?;

    // ---- Members of the default group reach each other over IPv6 (any protocol). -------
    let p = c.ping6_ok("m1", srv6, 3)?;
    eprintln!("m1 -> srv ping6: {}/{}", p.received, p.transmitted);
    let p = c.ping6_ok("srv", m16, 3)?;
    eprintln!("srv -> m1 ping6: {}/{}", p.received, p.transmitted);
    expect_probes(
        &c,
        "m1",
        srv6,
        &[
            (Tcp, 9000, Outcome::Answered),
            (Tcp, 7100, Outcome::Answered),
        ],
    )?;
    let report = c.tcp_transfer_to("m1", "srv", srv6, 5001, 256 * 1024, None)?;
    eprintln!("m1 -> srv TCP over IPv6: {report:?}");

    // ---- From outside the group: only what a rule admits, each family by its own rules. --
    let before = Counters::take(&c, &["h1", "h2"])?;
    let mut refused = expect_probes(
        &c,
        "out",
        srv6,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Tcp, 9000, Outcome::Timeout),
            // The IPv4 rule w-http4 does not admit IPv6.
            (Tcp, 8081, Outcome::Timeout),
        ],
    )?;
    refused += expect_probes(
        &c,
        "out",
        srv4,
        &[
            (Tcp, 8081, Outcome::Answered),
            // The IPv6 rule w-http6 does not admit IPv4.
            (Tcp, 8080, Outcome::Timeout),
            (Tcp, 9000, Outcome::Timeout),
        ],
    )?;
    let drops = before.wait_delta(&c, "h2", Stat::DropSgIngress, refused)?;
    eprintln!("{refused} refused probes from out: drop_sg_ingress +{drops} on h2");
    ensure!(
        before.delta(&c, "h1", Stat::DropSgIngress)? == 0,
        "the answers to out's admitted connections must reach it although its group has no \
         ingress rule (stateful): drop_sg_ingress moved on h1 ({:?})",
        before.moved(&c, "h1")?
    );
    let log = server.stdout();
    let out_peers = [out6.to_string(), out4.to_string()];
    for port in [9000, 8081, 8080] {
        let peers = served(&log, Tcp, port);
        let admitted = match port {
            8080 => Some(out6.to_string()),
            8081 => Some(out4.to_string()),
            _ => None,
        };
        for p in &peers {
            ensure!(
                !out_peers.contains(p) || admitted.as_ref() == Some(p),
                "srv served {p} on TCP {port}, which no rule admits from it; log:\n{log}"
            );
        }
        if let Some(a) = admitted {
            ensure!(
                peers.contains(&a),
                "srv must have served {a} on TCP {port}; log:\n{log}"
            );
        }
    }
    // out's admitted IPv6 connection is tracked in its own zone (egress rule o-eg6) and in
    // srv's (ingress rule w-http6).
    let tracked = flows6(&c, "out", srv6, 8080)?;
    eprintln!("out's zone, flow to [{srv6}]:8080: {tracked:?}");
    ensure!(
        tracked
            .iter()
            .any(|e| e["sg"] == "original" && e["sg_direction"] == "egress")
            && tracked.iter().any(|e| e["sg"] == "reply"),
        "out's IPv6 connection to srv:8080 must be tracked (original and reply) in out's zone: \
         {:?}",
        sg_conntrack(&c, "out")?
    );
    ensure!(
        flows6(&c, "srv", out6, 8080)?
            .iter()
            .any(|e| e["sg"] == "original" && e["sg_direction"] == "ingress"),
        "srv's zone must track out's connection as admitted by an ingress rule: {:?}",
        sg_conntrack(&c, "srv")?
    );

    // ---- ICMPv6: the typed rule admits echo requests only; replies come back by state. ----
    let before = Counters::take(&c, &["h1", "h2"])?;
    let p = c.ping6_ok("out", srv6, 3)?;
    eprintln!(
        "out -> srv ping6 (w-echo6, reply by state): {}/{}",
        p.received, p.transmitted
    );
    c.scapy(
        "out",
        &format!(
            "send(IPv6(dst='{srv6}')/ICMPv6EchoReply(id=4242, seq=1))\n\
             send(IPv6(dst='{srv6}')/ICMPv6NIQueryNOOP())"
        ),
    )?;
    let drops = before.wait_delta(&c, "h2", Stat::DropSgIngress, 2)?;
    eprintln!("unsolicited echo reply and node information query from out: h2 +{drops}");
    ensure!(
        before.delta(&c, "h1", Stat::DropSgIngress)? == 0,
        "out's echo replies must pass by state: {:?}",
        before.moved(&c, "h1")?
    );
    // srv may send (default egress) but out admits nothing new inbound.
    let before = Counters::take(&c, &["h1"])?;
    let p = c.ping6("srv", out6, 2, &[])?;
    ensure!(
        p.received == 0,
        "srv's echo requests to out must be refused: {}",
        p.output
    );
    let drops = before.wait_delta(&c, "h1", Stat::DropSgIngress, 2)?;
    eprintln!("srv -> out ping6 refused: drop_sg_ingress +{drops} on h1");

    // ---- Related ICMPv6 errors: time exceeded for out's own echo request and datagram (to --
    // pb, across the router, hop limit 1) passes; a forged error about a flow out never had
    // does not.
    let before = Counters::take(&c, &["h1"])?;
    let gw6 = c.network6("a")?.gateway;
    let gw_ll = c.network6("a")?.gateway_link_local()?;
    let pb6 = c.ip6("pb")?;
    let r = c.ping6("out", pb6, 1, &["-t", "1"])?;
    eprintln!("out's hop limit 1 echo request: {}", r.output.trim());
    ensure!(
        r.output.contains("Time exceeded"),
        "ping -t 1 from out across the router must be answered by time exceeded:\n{}\n\
         counters moved on h1: {:?}",
        r.output,
        before.moved(&c, "h1")?
    );
    let out = c.scapy(
        "out",
        &format!("r = sr1(IPv6(src='{out6}', dst='{pb6}', hlim=1)/UDP(sport=40001, dport=33434), timeout=3)\n\
         print('none' if r is None else 'reply %s %d' % (r[IPv6].src, r[IPv6].payload.type))"),
    )?;
    let te = dvr_tests::cmd::stdout(&out);
    eprintln!("out's hop limit 1 datagram: {te}");
    ensure!(
        te.contains("reply") && te.trim_end().ends_with(" 3"),
        "a hop-limit-1 datagram from out across the router must be answered by time exceeded \
         (type 3) from the router ({gw6} or {gw_ll}): {te}; counters moved on h1: {:?}",
        before.moved(&c, "h1")?
    );
    ensure!(
        before.delta(&c, "h1", Stat::DropSgIngress)? == 0,
        "the related time exceeded must pass: {:?}",
        before.moved(&c, "h1")?
    );
    let before = Counters::take(&c, &["h1"])?;
    c.scapy(
        "srv",
        &format!(
            "send(IPv6(dst='{out6}')/ICMPv6DestUnreach(code=4)/IPv6(src='{out6}', dst='{srv6}')/UDP(sport=1111, dport=2222))"
        ),
    )?;
    before
        .wait_delta(&c, "h1", Stat::DropSgIngress, 1)
        .with_context(|| {
            format!(
                "a forged error must be dropped at out; moved on h1: {:?}",
                before.moved(&c, "h1")
            )
        })?;
    eprintln!("forged destination unreachable about no flow of out: dropped on h1");

    // ---- dvrctl trace makes the same IPv6 checks: out's TCP to m1 (same host) leaves by ---
    // out's egress rule and is refused at m1's tap; out's TCP to srv:8080 leaves.
    let (vout, vm1, vsrv) = (
        c.vm("out")?.clone(),
        c.vm("m1")?.clone(),
        c.vm("srv")?.clone(),
    );
    let tcp6 = |dst: Ipv6Addr, dport: u16, dst_mac: &str| TraceProbe {
        proto: "tcp".into(),
        ..TraceProbe::udp(&vout.tap, out6, 40123, dst, dport).macs(&vout.mac, dst_mac)
    };
    let steps = |t: &dvr_tests::Trace| -> Vec<String> {
        t.steps
            .iter()
            .map(|s| format!("{}: {}", s.stage, s.what))
            .collect()
    };
    let tr = c.trace("h1", &tcp6(m16, 9000, &vm1.mac))?;
    let st = steps(&tr);
    eprintln!("trace out -> [{m16}]:9000 on h1: {} {st:#?}", tr.verdict);
    ensure!(
        tr.drop
            && tr.verdict == "drop_sg_ingress"
            && st.iter().any(|s| s.contains("egress: admitted by rule"))
            && st.iter().any(|s| s.contains("no rule admits it")),
        "trace of out's IPv6 TCP to m1:9000 must pass out's egress rule and be refused at \
         m1's tap: {} {st:#?}",
        tr.verdict
    );
    let tr = c.trace("h1", &tcp6(srv6, 8080, &vsrv.mac))?;
    let st = steps(&tr);
    eprintln!("trace out -> [{srv6}]:8080 on h1: {} {st:#?}", tr.verdict);
    ensure!(
        !tr.drop && st.iter().any(|s| s.contains("egress: admitted by rule")),
        "trace of out's IPv6 TCP to srv:8080 must leave by out's egress rule: {} {st:#?}",
        tr.verdict
    );

    // ---- Removing a rule cuts its established IPv6 flow; another one goes on. -----------
    let every = Duration::from_millis(100);
    let mut cut = c.start_ticker("out", srv6, 7100, every)?;
    let mut kept = c.start_ticker("out", srv6, 7200, every)?;
    ensure!(
        !flows6(&c, "srv", out6, 7100)?.is_empty(),
        "the 7100 flow must be tracked in srv's zone: {:?}",
        sg_conntrack(&c, "srv")?
    );
    let now = dvr_tests::sg::epoch(std::time::SystemTime::now());
    for t in [&mut cut, &mut kept] {
        t.wait_echo_after(now, Duration::from_secs(2))?;
    }
    let before = Counters::take(&c, &["h2"])?;
    let applied = c.edit_security_group("web", |g| {
        g.security_group_rules.retain(|r| r.id != "w-7100");
    })?;
    let t_applied = applied.applied_epoch();
    kept.wait_echo_after(t_applied + 1.5, Duration::from_secs(5))
        .with_context(|| format!("the 7200 connection: {}", kept.output()))?;
    let last = cut.last().unwrap_or(0.0);
    let (from_applied, from_write) = (last - t_applied, last - applied.written_epoch());
    eprintln!(
        "rule w-7100 removed: applied {:?} after the write; the 7100 flow's last line \
         {from_applied:+.3} s from applied ({from_write:+.3} s from the write); 7200's last \
         {:+.3} s",
        applied.took(),
        kept.last().unwrap_or(0.0) - t_applied
    );
    ensure!(
        from_applied < 1.0,
        "the IPv6 flow no rule admits any more must stop within 1 s of the change being \
         applied; its last line came {from_applied:.3} s after:\n{}",
        cut.output()
    );
    ensure!(
        from_write > -0.5,
        "the cut flow was not alive when the change was written ({from_write:+.3} s):\n{}",
        cut.output()
    );
    let drops = before.wait_delta(&c, "h2", Stat::DropSgIngress, 1)?;
    eprintln!("the cut flow's packets: drop_sg_ingress +{drops} on h2");
    ensure!(
        flows6(&c, "srv", out6, 7100)?.is_empty() && !flows6(&c, "srv", out6, 7200)?.is_empty(),
        "after the cut srv's zone must hold the 7200 flow and no 7100 flow: {:?}",
        sg_conntrack(&c, "srv")?
    );
    expect_probes(
        &c,
        "out",
        srv6,
        &[
            (Tcp, 7100, Outcome::Timeout),
            (Tcp, 7200, Outcome::Answered),
        ],
    )?;
    cut.stop()?;
    kept.stop()?;
    Ok(())
}
