//! Security group integration tests (issue 12): real traffic between VM namespaces on hosts
//! run by their own agents, filtered by the groups of the Neutron-shaped state.
//!
//! Every refusal is shown twice: the traffic gets no answer within a bounded wait (and the
//! server behind a refused port logs no peer), and the drop counter of the host that must
//! refuse it (`drop_sg_ingress` where the packet is delivered, `drop_sg_egress` where the VM
//! sends it, `drop_port_down`) rises. Every admission is an answered connection, datagram or
//! echo. State changes of a running cloud are awaited until every agent's maps equal the
//! compile of the new state (`Cloud::apply_state`), so nothing here sleeps.
//!
//! Needs root, bpffs, tcpdump, socat, python3-scapy and the built agent; fails with a clear
//! message otherwise. Run with `--test-threads=1`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::sg::{
    APPLY_DEADLINE, Applied, Outcome, PROBE_WAIT, Proto, Ticker, expect_probes, expect_served,
    rule_in, rule_out, served, sg_conntrack,
};
use dvr_tests::{
    Cloud, Counters, EXT, INTERNET_HOST, SecurityGroup, Topology, UdpFrame, VmSpec,
    require_preconditions,
};
use serde_json::{Value, json};

/// One echo request with this reply timeout.
const PING_WAIT: Duration = Duration::from_millis(1000);

use Proto::{Tcp, Udp};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// After a change that `applied`: the flow of `cut` carried its last line at most 1 s after
/// every agent applied it (and was alive up to the change), while `kept` still carries lines
/// 1.5 s after it. Prints the figures under `what`.
fn expect_cut_and_kept(
    what: &str,
    cut: &Ticker,
    kept: &mut Ticker,
    applied: &Applied,
) -> Result<()> {
    let t_applied = applied.applied_epoch();
    kept.wait_echo_after(t_applied + 1.5, Duration::from_secs(5))
        .with_context(|| format!("{what}: the flow that stays admitted: {}", kept.output()))?;
    let last = cut.last().unwrap_or(0.0);
    let (from_applied, from_write) = (last - t_applied, last - applied.written_epoch());
    eprintln!(
        "{what}: applied {:?} after the write; cut flow's last line {from_applied:+.3} s from \
         applied ({from_write:+.3} s from the write); kept flow's last {:+.3} s",
        applied.took(),
        kept.last().unwrap_or(0.0) - t_applied
    );
    ensure!(
        from_applied < 1.0,
        "{what}: the flow no rule admits any more must stop within 1 s of the change being \
         applied; its last line came {from_applied:.3} s after:\n{}",
        cut.output()
    );
    ensure!(
        from_write > -0.5,
        "{what}: the cut flow was not alive when the change was written (last line \
         {from_write:+.3} s from the write):\n{}",
        cut.output()
    );
    Ok(())
}

// ---- rules by protocol, port, range and prefix --------------------------------------------

/// Ingress rules admit exactly what they name and nothing else, and the admitted traffic's
/// replies leave a port with no egress rule (stateful). The server `srv` (h2) carries one
/// group: TCP 8080, TCP 9000-9010, UDP 7000-7001, TCP 5000 from 172.24.1.10 (a plain address),
/// ICMP echo requests (type 8) from 172.24.1.0/28, TCP 9500 by a rule of the top-level
/// `security_group_rules` list and TCP 9600 from address group `ag-c1` (172.24.1.8/30). From
/// `c1` (172.24.1.10, h1): TCP 8080, 9000, 9010, 9500 and 9600 and UDP 7000 and 7001 are
/// answered; TCP 8081, 8999 and 9011 and UDP 7002 (all with a listener) get nothing back and
/// their listener sees no peer. TCP 5000, TCP 9600 and echo requests are answered for c1 and
/// refused for `c2` (172.24.1.40, outside the prefixes); an ICMP timestamp request (type 13)
/// from c1 is refused. Each refusal moves h2's `drop_sg_ingress`, and h2's `drop_sg_egress`
/// stays put (replies need no egress rule).
#[test]
fn ingress_rules_admit_by_protocol_port_range_and_prefix_and_refuse_the_rest() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8101, "172.24.1.0/24");
    t.security_group(SecurityGroup::new(
        "sg-srv",
        vec![
            rule_in("r-http").tcp(8080, 8080),
            rule_in("r-range").tcp(9000, 9010),
            rule_in("r-udp").udp(7000, 7001),
            rule_in("r-c1").tcp(5000, 5000).prefix("172.24.1.10"),
            rule_in("r-ping").icmp_type(8).prefix("172.24.1.0/28"),
            rule_in("r-ag")
                .tcp(9600, 9600)
                .remote_address_group("ag-c1"),
        ],
    ))
    .security_group_rule(rule_in("r-top").tcp(9500, 9500).in_group("sg-srv"))
    .address_group("ag-c1", &["172.24.1.8/30"]);
    t.vm(VmSpec::new("c1", "a", "h1").ip(ip("172.24.1.10")))
        .vm(VmSpec::new("c2", "a", "h1").ip(ip("172.24.1.40")))
        .vm(VmSpec::new("srv", "a", "h2")
            .ip(ip("172.24.1.20"))
            .security_groups(&["sg-srv"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let server = c.sg_server(
        "srv",
        &[8080, 8081, 8999, 9000, 9010, 9011, 5000, 9500, 9600],
        &[7000, 7001, 7002],
    )?;

    let before = Counters::take(&c, &["h2"])?;
    let refused = expect_probes(
        &c,
        "c1",
        srv,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Tcp, 8081, Outcome::Timeout),
            (Tcp, 8999, Outcome::Timeout),
            (Tcp, 9000, Outcome::Answered),
            (Tcp, 9010, Outcome::Answered),
            (Tcp, 9011, Outcome::Timeout),
            (Udp, 7000, Outcome::Answered),
            (Udp, 7001, Outcome::Answered),
            (Udp, 7002, Outcome::Timeout),
            (Tcp, 5000, Outcome::Answered),
            (Tcp, 9500, Outcome::Answered),
            (Tcp, 9600, Outcome::Answered),
        ],
    )?;
    let refused2 = expect_probes(
        &c,
        "c2",
        srv,
        &[
            (Tcp, 5000, Outcome::Timeout),
            (Tcp, 9600, Outcome::Timeout),
            (Tcp, 8080, Outcome::Answered),
        ],
    )?;
    let dropped = before.wait_delta(&c, "h2", Stat::DropSgIngress, refused + refused2)?;
    expect_served(
        &server.stdout(),
        &[
            (Tcp, 8080),
            (Tcp, 9000),
            (Tcp, 9010),
            (Udp, 7000),
            (Udp, 7001),
        ],
        &[(Tcp, 8081), (Tcp, 8999), (Tcp, 9011), (Udp, 7002)],
    )?;
    for port in [5000, 9600] {
        let peers = served(&server.stdout(), Tcp, port);
        ensure!(
            peers == vec!["172.24.1.10".to_string()],
            "TCP {port} must be served for c1 only: {peers:?}"
        );
    }

    // ICMP: echo requests from inside 172.24.1.0/28 only, and only type 8.
    ensure!(
        c.ping_once("c1", srv, PING_WAIT)?,
        "c1 (inside 172.24.1.0/28) must get echo replies"
    );
    let before_ping = Counters::take(&c, &["h2"])?;
    ensure!(
        !c.ping_once("c2", srv, PING_WAIT)?,
        "c2 (outside 172.24.1.0/28) must get no echo reply"
    );
    before_ping.wait_delta(&c, "h2", Stat::DropSgIngress, 1)?;
    let before_ts = Counters::take(&c, &["h2"])?;
    let out = c.scapy(
        "c1",
        &format!(
            "r = sr1(IP(dst='{srv}')/ICMP(type=13), timeout=1)\nprint('answered' if r else 'none')"
        ),
    )?;
    let ts = dvr_tests::cmd::stdout(&out);
    ensure!(
        ts.contains("none"),
        "an ICMP timestamp request (type 13) must be refused: {ts}"
    );
    before_ts.wait_delta(&c, "h2", Stat::DropSgIngress, 1)?;
    ensure!(
        before.delta(&c, "h2", Stat::DropSgEgress)? == 0,
        "replies of admitted traffic must leave srv without an egress rule: drop_sg_egress \
         moved {}",
        before.delta(&c, "h2", Stat::DropSgEgress)?
    );
    eprintln!(
        "refused {} probes, drop_sg_ingress +{dropped}; echo from c2 and timestamp from c1 \
         refused",
        refused + refused2
    );
    Ok(())
}

// ---- remote groups ------------------------------------------------------------------------

/// `remote_group_id` admits the members of a group wherever their ports are, and follows
/// membership while the agents run. `srv` (h2) admits TCP 6000 and echo requests from members
/// of `sg-client`; `m1` (h1) is a member, `m2` (h1) and `m3` (h2, srv's own host) are in
/// `sg-other`. m1 is answered, m2 and m3 refused (`drop_sg_ingress` on h2: tunnelled and local
/// deliveries alike). Then m2 joins `sg-client`: once every agent applied it m2 is answered,
/// also from 172.24.2.200, its allowed address pair (members are every fixed IP and allowed
/// address pair of the group's ports); m1 leaves: m1 is refused, and its established TCP
/// connection (a line every 100 ms) stops within 1 s of the change while m2's goes on. A port
/// that comes while the agents run (m4, h1, in `sg-client`) is answered once its tap is
/// served.
#[test]
fn remote_group_admits_members_across_hosts_and_follows_membership_changes() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8201, "172.24.2.0/24");
    t.security_group(SecurityGroup::new(
        "sg-srv",
        vec![
            rule_in("r-members")
                .tcp(6000, 6000)
                .remote_group("sg-client"),
            rule_in("r-members-ping")
                .icmp_type(8)
                .remote_group("sg-client"),
        ],
    ))
    .security_group(SecurityGroup::new(
        "sg-client",
        vec![rule_out("r-client-out")],
    ))
    .security_group(SecurityGroup::new(
        "sg-other",
        vec![rule_out("r-other-out")],
    ));
    t.vm(VmSpec::new("m1", "a", "h1").security_groups(&["sg-client"]))
        .vm(VmSpec::new("m2", "a", "h1")
            .allowed_pair(ip("172.24.2.200"), None)
            .security_groups(&["sg-other"]))
        .vm(VmSpec::new("m3", "a", "h2").security_groups(&["sg-other"]))
        .vm(VmSpec::new("srv", "a", "h2").security_groups(&["sg-srv"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let server = c.sg_server("srv", &[6000], &[])?;

    let member = |c: &Cloud, vm: &str, admitted: bool| -> Result<()> {
        let before = Counters::take(c, &["h2"])?;
        let want = if admitted {
            Outcome::Answered
        } else {
            Outcome::Timeout
        };
        expect_probes(c, vm, srv, &[(Tcp, 6000, want)])?;
        let pinged = c.ping_once(vm, srv, PING_WAIT)?;
        ensure!(
            pinged == admitted,
            "{vm}: echo reply {pinged}, want {admitted}"
        );
        if !admitted {
            before.wait_delta(c, "h2", Stat::DropSgIngress, 2)?;
        }
        Ok(())
    };
    member(&c, "m1", true).context("m1, a member")?;
    member(&c, "m2", false).context("m2, not a member")?;
    member(&c, "m3", false).context("m3, not a member, on srv's host")?;

    let joined = c.set_security_groups("m2", Some(&["sg-client"]))?;
    eprintln!(
        "m2 joined sg-client: applied on every host after {:?}",
        joined.took()
    );
    member(&c, "m2", true).context("m2 after joining")?;
    c.exec_vm(
        "m2",
        &["ip", "addr", "add", "172.24.2.200/24", "dev", "eth0"],
    )?;
    c.ping_ok("m2", srv, 2)
        .and_then(|_| {
            let r = c.ping_with("m2", srv, 2, &["-I", "172.24.2.200"])?;
            ensure!(r.all_answered(), "{}", r.output);
            Ok(())
        })
        .context("m2 from its allowed address pair 172.24.2.200")?;
    member(&c, "m1", true).context("m1 still a member")?;

    let every = Duration::from_millis(100);
    let mut t1 = c.start_ticker("m1", srv, 6000, every)?;
    let mut t2 = c.start_ticker("m2", srv, 6000, every)?;
    let now = dvr_tests::sg::epoch(std::time::SystemTime::now());
    for t in [&mut t1, &mut t2] {
        t.wait_echo_after(now, Duration::from_secs(2))?;
    }
    let left = c.set_security_groups("m1", Some(&["sg-other"]))?;
    expect_cut_and_kept("m1 left sg-client", &t1, &mut t2, &left)?;
    t1.stop()?;
    t2.stop()?;
    member(&c, "m1", false).context("m1 after leaving")?;
    member(&c, "m2", true).context("m2 still a member")?;

    // A port that comes: srv's host admits its address as a member.
    c.add_vm_later(VmSpec::new("m4", "a", "h1").security_groups(&["sg-client"]))?;
    c.wait_port_attached("m4", APPLY_DEADLINE)?;
    c.wait_applied(APPLY_DEADLINE)?;
    member(&c, "m4", true).context("m4, a member added while running")?;
    let m4 = c.ip("m4")?.to_string();
    ensure!(
        served(&server.stdout(), Tcp, 6000).contains(&m4),
        "srv must have served m4 ({m4}) on TCP 6000: {}",
        server.stdout()
    );
    Ok(())
}

// ---- stateful groups ----------------------------------------------------------------------

/// A stateful group with only egress rules: the VM's own connections get their replies,
/// related ICMP errors reach it, new inbound connections and unrelated ICMP errors do not.
/// `out` (h1, network a) may send TCP, UDP and ICMP anywhere and receives nothing by rule;
/// `peer` (h2, a) and `peerb` (h2, network b behind router r1) are unfiltered. Observed: TCP
/// 8080 and UDP 7000 to peer answered, echo replies received; UDP to a closed port of peer
/// ends in "connection refused" (the port unreachable passed as related); a TTL-1 datagram
/// to peerb is answered by time exceeded from a's gateway, and out's echo request to that
/// gateway is answered (the router answers on out's host); peer's TCP connection and echo
/// request to out get nothing (`drop_sg_ingress` on h1, out's listener sees no peer); a port
/// unreachable forged by peer about a flow out never had is dropped (`drop_sg_ingress`).
#[test]
fn stateful_egress_only_group_gets_replies_and_related_errors_but_no_new_inbound() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8301, "172.24.3.0/24")
        .network("b", 8302, "172.24.4.0/24");
    t.router("r1", &["a", "b"]);
    t.security_group(SecurityGroup::new(
        "sg-out",
        vec![
            rule_out("r-tcp").protocol("tcp"),
            rule_out("r-udp").protocol("udp"),
            rule_out("r-icmp").protocol("icmp"),
        ],
    ));
    t.vm(VmSpec::new("out", "a", "h1").security_groups(&["sg-out"]))
        .vm(VmSpec::new("peer", "a", "h2"))
        .vm(VmSpec::new("peerb", "b", "h2"));
    let mut c = t.build()?;
    let (out_ip, peer, peerb) = (c.ip("out")?, c.ip("peer")?, c.ip("peerb")?);
    let _peer_server = c.sg_server("peer", &[8080], &[7000])?;
    let out_server = c.sg_server("out", &[8080], &[])?;

    // Replies of out's own connections.
    let before = Counters::take(&c, &["h1"])?;
    expect_probes(
        &c,
        "out",
        peer,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Udp, 7000, Outcome::Answered),
            // Related: nothing listens on UDP 7009 of peer, whose port unreachable reaches out.
            (Udp, 7009, Outcome::Refused),
        ],
    )?;
    ensure!(
        c.ping_once("out", peer, PING_WAIT)?,
        "out must get the reply to its echo request"
    );
    ensure!(
        before.delta(&c, "h1", Stat::DropSgIngress)? == 0,
        "replies and related errors must pass: drop_sg_ingress moved on h1 ({:?})",
        before.moved(&c, "h1")?
    );

    // Related: time exceeded from the gateway for a datagram whose TTL runs out at the router.
    let gw_a = c.network("a")?.gateway;
    let out = c.scapy(
        "out",
        &format!(
            "r = sr1(IP(dst='{peerb}', ttl=1)/UDP(sport=40001, dport=33434), timeout=2)\n\
             print('none' if r is None else 'reply %s %d' % (r[IP].src, r[ICMP].type if ICMP in r else -1))"
        ),
    )?;
    let te = dvr_tests::cmd::stdout(&out);
    // The router's own answers (echo replies from the gateway, made on out's host) pass too.
    ensure!(
        c.ping_once("out", gw_a, PING_WAIT)?,
        "out must get the gateway {gw_a}'s echo reply"
    );
    ensure!(
        te.contains(&format!("reply {gw_a} 11")),
        "a TTL-1 datagram from out to {peerb} must be answered by time exceeded (type 11) from \
         the gateway {gw_a}: {te}"
    );

    // New inbound connections are refused.
    let before = Counters::take(&c, &["h1"])?;
    let refused = expect_probes(&c, "peer", out_ip, &[(Tcp, 8080, Outcome::Timeout)])?;
    ensure!(
        !c.ping_once("peer", out_ip, PING_WAIT)?,
        "peer's echo request to out must be refused"
    );
    before.wait_delta(&c, "h1", Stat::DropSgIngress, refused + 1)?;
    expect_served(&out_server.stdout(), &[], &[(Tcp, 8080)])?;

    // An ICMP error about a flow out never had is no related traffic.
    let before = Counters::take(&c, &["h1"])?;
    c.scapy(
        "peer",
        &format!(
            "send(IP(src='{peer}', dst='{out_ip}')/ICMP(type=3, code=3)/IP(src='{out_ip}', dst='{peer}')/UDP(sport=1111, dport=2222))"
        ),
    )?;
    before.wait_delta(&c, "h1", Stat::DropSgIngress, 1)?;
    eprintln!(
        "replies, port unreachable and time exceeded from {gw_a} reached out; inbound TCP, echo \
         and a forged port unreachable were dropped on h1"
    );
    Ok(())
}

/// Removing a rule ends the established flows it admitted within one second of the agents
/// applying it, while a connection admitted by a rule that stays goes on. `srv` (h2) admits
/// TCP 7100 (rule r-a), TCP 7200 (rule r-b) and UDP 7300 (rule r-c); `cl` (h1, unfiltered)
/// keeps one TCP connection each to 7100 and 7200, exchanging a line every 100 ms, and one
/// UDP flow to 7300 whose original side is silent: cl sent one datagram, srv pushes a line
/// every 100 ms back (only the agent's re-check of tracked flows can end it, no packet of cl
/// is checked again). r-a and r-c are removed together: the last line on 7100 and on 7300
/// arrives no later than 1 s after every agent applied the change (the figures are
/// printed), the 7200 connection still receives echoes 1.5 s after it, h2 counts the cut
/// flows' packets as security group drops, srv's conntrack zone keeps the 7200 flow and
/// neither the 7100 nor the 7300 one, and a new connection to 7100 is refused. The same holds
/// for egress rules, checked at the sending tap: `ce` (h1) may send TCP 7200 (r-ce-7200) and
/// 7400 (r-ce-7400, which srv admits by r-d); with r-ce-7400 removed, ce's connection to 7400
/// stops within 1 s (h1 counts `drop_sg_egress`) while its connection to 7200 goes on.
#[test]
fn rule_removal_cuts_its_established_flows_within_1s_and_another_survives() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8401, "172.24.5.0/24");
    t.security_group(SecurityGroup::new(
        "sg-srv",
        vec![
            rule_in("r-a").tcp(7100, 7100),
            rule_in("r-b").tcp(7200, 7200),
            rule_in("r-c").udp(7300, 7300),
            rule_in("r-d").tcp(7400, 7400),
        ],
    ))
    .security_group(SecurityGroup::new(
        "sg-ce",
        vec![
            rule_out("r-ce-7200").tcp(7200, 7200),
            rule_out("r-ce-7400").tcp(7400, 7400),
        ],
    ));
    t.vm(VmSpec::new("cl", "a", "h1"))
        .vm(VmSpec::new("ce", "a", "h1").security_groups(&["sg-ce"]))
        .vm(VmSpec::new("srv", "a", "h2").security_groups(&["sg-srv"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let every = Duration::from_millis(100);
    let _server = c.sg_server("srv", &[7100, 7200, 7400], &[])?;
    let _pusher = c.push_server("srv", 7300, every)?;
    let mut cut = c.start_ticker("cl", srv, 7100, every)?;
    let mut kept = c.start_ticker("cl", srv, 7200, every)?;
    let mut silent = c.start_push_client("cl", srv, 7300)?;
    let flows = |c: &Cloud, port: u64| -> Result<usize> {
        Ok(sg_conntrack(c, "srv")?
            .iter()
            .filter(|e| e["dport"].as_u64() == Some(port) || e["sport"].as_u64() == Some(port))
            .count())
    };
    for port in [7100, 7200, 7300] {
        ensure!(
            flows(&c, port)? > 0,
            "the {port} flow must be tracked in srv's zone: {:?}",
            sg_conntrack(&c, "srv")?
        );
    }
    // All alive right before the change.
    let now = dvr_tests::sg::epoch(std::time::SystemTime::now());
    for t in [&mut cut, &mut kept, &mut silent] {
        t.wait_echo_after(now, Duration::from_secs(2))?;
    }

    let before = Counters::take(&c, &["h2"])?;
    let applied = c.edit_security_group("sg-srv", |g| {
        g.security_group_rules
            .retain(|r| r.id != "r-a" && r.id != "r-c");
    })?;
    let t_applied = applied.applied_epoch();
    // The surviving connection is observed past the 1 s window, so the window was watched
    // while traffic flowed.
    kept.wait_echo_after(t_applied + 1.5, Duration::from_secs(5))
        .with_context(|| format!("the 7200 connection: {}", kept.output()))?;
    eprintln!(
        "rules r-a and r-c removed: agents applied {:?} after the write; 7200 echoes continue \
         (last {:+.3} s from applied)",
        applied.took(),
        kept.last().unwrap_or(0.0) - t_applied
    );
    for (what, t) in [("TCP 7100", &cut), ("UDP 7300 (silent client)", &silent)] {
        let last = t.last().unwrap_or(0.0);
        let from_applied = last - t_applied;
        let from_write = last - applied.written_epoch();
        eprintln!(
            "{what}: last line {from_applied:+.3} s from applied ({from_write:+.3} s from the \
             write)"
        );
        ensure!(
            from_applied < 1.0,
            "{what} must stop within 1 s of the change being applied; its last line came \
             {from_applied:.3} s after:\n{}",
            t.output()
        );
        ensure!(
            from_write > -0.5,
            "{what} was not alive when the rule went (last line {from_write:+.3} s from the \
             write):\n{}",
            t.output()
        );
    }
    let sg_drops = before.delta(&c, "h2", Stat::DropSgIngress)?
        + before.delta(&c, "h2", Stat::DropSgEgress)?;
    ensure!(
        sg_drops > 0,
        "the cut flows' packets must be dropped by security groups on h2: {:?}",
        before.moved(&c, "h2")?
    );
    ensure!(
        flows(&c, 7100)? == 0 && flows(&c, 7300)? == 0 && flows(&c, 7200)? > 0,
        "after the cut srv's zone must hold the 7200 flow and no 7100 or 7300 flow: {:?}",
        sg_conntrack(&c, "srv")?
    );
    expect_probes(
        &c,
        "cl",
        srv,
        &[
            (Tcp, 7100, Outcome::Timeout),
            (Tcp, 7200, Outcome::Answered),
        ],
    )?;
    for t in [&mut cut, &mut kept, &mut silent] {
        t.stop()?;
    }

    // An egress rule of the sending port.
    let mut e_cut = c.start_ticker("ce", srv, 7400, every)?;
    let mut e_kept = c.start_ticker("ce", srv, 7200, every)?;
    let now = dvr_tests::sg::epoch(std::time::SystemTime::now());
    for t in [&mut e_cut, &mut e_kept] {
        t.wait_echo_after(now, Duration::from_secs(2))?;
    }
    let before = Counters::take(&c, &["h1"])?;
    let applied = c.edit_security_group("sg-ce", |g| {
        g.security_group_rules.retain(|r| r.id != "r-ce-7400");
    })?;
    expect_cut_and_kept(
        "egress rule r-ce-7400 removed",
        &e_cut,
        &mut e_kept,
        &applied,
    )?;
    before
        .wait_delta(&c, "h1", Stat::DropSgEgress, 1)
        .context("ce's packets on the cut connection must count in h1's drop_sg_egress")?;
    expect_probes(
        &c,
        "ce",
        srv,
        &[
            (Tcp, 7400, Outcome::Timeout),
            (Tcp, 7200, Outcome::Answered),
        ],
    )?;
    e_cut.stop()?;
    e_kept.stop()?;
    Ok(())
}

/// An agent restart keeps security groups enforced and their tracked flows: `cl` (h1, egress
/// rules only) keeps a TCP connection to `srv` (h2, TCP 7200 in only) exchanging a line every
/// 100 ms while both agents are killed (`kill -9`) and restarted. The connection never stalls
/// for 1 s (the pinned maps and conntrack carry on, and the restarted agents' re-check of the
/// flows they adopt keeps it), and afterwards TCP 7200 is answered while TCP 7100 is still
/// refused (`drop_sg_ingress` on h2).
#[test]
fn agent_restart_keeps_groups_enforced_and_tracked_flows_alive() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8451, "172.24.15.0/24");
    t.security_group(SecurityGroup::new(
        "sg-srv",
        vec![rule_in("r-7200").tcp(7200, 7200)],
    ))
    .security_group(SecurityGroup::new("sg-cl", vec![rule_out("r-cl-out")]));
    t.vm(VmSpec::new("cl", "a", "h1").security_groups(&["sg-cl"]))
        .vm(VmSpec::new("srv", "a", "h2").security_groups(&["sg-srv"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let _server = c.sg_server("srv", &[7100, 7200], &[])?;
    let mut ticker = c.start_ticker("cl", srv, 7200, Duration::from_millis(100))?;
    let t0 = dvr_tests::sg::epoch(std::time::SystemTime::now());
    ticker.wait_echo_after(t0, Duration::from_secs(2))?;

    for h in ["h1", "h2"] {
        c.kill_agent(h)?;
    }
    ticker
        .wait_echo_after(
            dvr_tests::sg::epoch(std::time::SystemTime::now()),
            Duration::from_secs(2),
        )
        .context("the connection while no agent runs")?;
    for h in ["h1", "h2"] {
        let took = c.restart_agent(h)?;
        eprintln!("agent of {h} restarted in {took:?}");
    }
    c.wait_applied(APPLY_DEADLINE)?;
    let restarted = dvr_tests::sg::epoch(std::time::SystemTime::now());
    ticker
        .wait_echo_after(restarted + 1.5, Duration::from_secs(5))
        .with_context(|| format!("the connection after the restart: {}", ticker.output()))?;
    let times: Vec<f64> = ticker.times().into_iter().filter(|t| *t >= t0).collect();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    eprintln!(
        "{} echoes across the restart, longest gap {:.3} s",
        times.len(),
        gap
    );
    ensure!(
        gap < 1.0,
        "the tracked connection stalled {gap:.3} s across the agent restart:\n{}",
        ticker.output()
    );
    ticker.stop()?;
    let before = Counters::take(&c, &["h2"])?;
    expect_probes(
        &c,
        "cl",
        srv,
        &[
            (Tcp, 7200, Outcome::Answered),
            (Tcp, 7100, Outcome::Timeout),
        ],
    )?;
    before.wait_delta(&c, "h2", Stat::DropSgIngress, 1)?;
    Ok(())
}

// ---- stateless groups ---------------------------------------------------------------------

/// A stateless group (`stateful: false`) checks every packet against its own direction's
/// rules and tracks nothing. `srv` (h2) admits TCP 8080 and UDP 7000 in and nothing out:
/// `cl`'s datagram to UDP 7000 reaches srv's server but the echo is dropped on the way out,
/// as is the SYN-ACK of TCP 8080 (`drop_sg_egress` on h2); srv's zone holds no conntrack
/// entry. With an egress rule to cl's address added, both are answered, still with nothing
/// tracked, and TCP 8081 (no ingress rule) stays refused (`drop_sg_ingress`).
#[test]
fn stateless_group_needs_a_rule_for_the_replies_and_tracks_nothing() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8501, "172.24.6.0/24");
    t.security_group(
        SecurityGroup::new(
            "sg-sl",
            vec![
                rule_in("r-tcp").tcp(8080, 8080),
                rule_in("r-udp").udp(7000, 7000),
            ],
        )
        .stateless(),
    );
    t.vm(VmSpec::new("cl", "a", "h1").ip(ip("172.24.6.50")))
        .vm(VmSpec::new("srv", "a", "h2").security_groups(&["sg-sl"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let server = c.sg_server("srv", &[8080, 8081], &[7000])?;

    let before = Counters::take(&c, &["h2"])?;
    let refused = expect_probes(
        &c,
        "cl",
        srv,
        &[(Tcp, 8080, Outcome::Timeout), (Udp, 7000, Outcome::Timeout)],
    )?;
    before.wait_delta(&c, "h2", Stat::DropSgEgress, refused)?;
    expect_served(&server.stdout(), &[(Udp, 7000)], &[(Tcp, 8080)])?;
    ensure!(
        before.delta(&c, "h2", Stat::DropSgIngress)? == 0,
        "the requests themselves are admitted: drop_sg_ingress moved ({:?})",
        before.moved(&c, "h2")?
    );
    let ct = sg_conntrack(&c, "srv")?;
    ensure!(ct.is_empty(), "a stateless port tracks nothing: {ct:?}");

    let applied = c.edit_security_group("sg-sl", |g| {
        g.security_group_rules
            .push(rule_out("r-back").prefix("172.24.6.50/32"));
    })?;
    eprintln!("egress rule added, applied after {:?}", applied.took());
    let before = Counters::take(&c, &["h2"])?;
    let refused = expect_probes(
        &c,
        "cl",
        srv,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Udp, 7000, Outcome::Answered),
            (Tcp, 8081, Outcome::Timeout),
        ],
    )?;
    before.wait_delta(&c, "h2", Stat::DropSgIngress, refused)?;
    expect_served(&server.stdout(), &[(Tcp, 8080)], &[(Tcp, 8081)])?;
    let ct = sg_conntrack(&c, "srv")?;
    ensure!(ct.is_empty(), "a stateless port tracks nothing: {ct:?}");
    Ok(())
}

// ---- port fields --------------------------------------------------------------------------

/// `port_security_enabled: false` means no filtering and no anti-spoofing. `v` (h1) starts
/// with port security and `security_groups: []` (only base traffic): peer's TCP 8080 to it is
/// refused (`drop_sg_ingress` on h1), its echo request to peer too (`drop_sg_egress`), and a
/// datagram it sends from 172.24.7.99 (not its address) is dropped as spoofed
/// (`drop_spoof_ip`) before peer's sink. With port security turned off while the agents run:
/// TCP 8080 is answered, the echo too, and the spoofed datagram reaches peer's sink with
/// source 172.24.7.99.
#[test]
fn port_security_disabled_means_no_filtering_and_spoofed_sources_pass() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8601, "172.24.7.0/24");
    t.vm(VmSpec::new("v", "a", "h1").security_groups(&[]))
        .vm(VmSpec::new("peer", "a", "h2"));
    let mut c = t.build()?;
    let (v, peer) = (c.ip("v")?, c.ip("peer")?);
    let _server = c.sg_server("v", &[8080], &[])?;
    let mut sink = c.udp_sink("peer", 7000)?;
    let spoofed = UdpFrame {
        src_mac: c.vm("v")?.mac.clone(),
        dst_mac: c.vm("peer")?.mac.clone(),
        src_ip: ip("172.24.7.99"),
        dst_ip: peer,
        sport: 4444,
        dport: 7000,
        count: 1,
    };

    let before = Counters::take(&c, &["h1"])?;
    expect_probes(&c, "peer", v, &[(Tcp, 8080, Outcome::Timeout)])?;
    before.wait_delta(&c, "h1", Stat::DropSgIngress, 1)?;
    ensure!(
        !c.ping_once("v", peer, PING_WAIT)?,
        "v with no group must not reach peer"
    );
    before.wait_delta(&c, "h1", Stat::DropSgEgress, 1)?;
    c.send_udp_frame("v", &spoofed)?;
    before.wait_delta(&c, "h1", Stat::DropSpoofIp, 1)?;
    ensure!(
        !sink.stdout().contains("172.24.7.99"),
        "the spoofed datagram must not reach peer: {}",
        sink.stdout()
    );

    let applied = c.set_port_security("v", false)?;
    eprintln!("port security off, applied after {:?}", applied.took());
    expect_probes(&c, "peer", v, &[(Tcp, 8080, Outcome::Answered)])?;
    ensure!(
        c.ping_once("v", peer, PING_WAIT)?,
        "v without port security must reach peer"
    );
    c.send_udp_frame("v", &spoofed)?;
    sink.wait_stdout("the spoofed datagram", Duration::from_secs(5), |o| {
        o.contains("peer 172.24.7.99:4444")
    })?;
    Ok(())
}

/// `admin_state_up: false` lets nothing in or out of a port, whatever its groups, and
/// `true` restores it. `d` (h1, unfiltered) and `peer` (h2) ping each other; with d down,
/// neither echo request gets an answer and h1 counts `drop_port_down` for each direction
/// (d's request at its tap, peer's where it would be delivered to d), while `u` (h1) still
/// reaches peer; with d up again both are answered.
#[test]
fn admin_state_down_lets_nothing_in_or_out_and_up_restores() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8701, "172.24.8.0/24");
    t.vm(VmSpec::new("d", "a", "h1"))
        .vm(VmSpec::new("u", "a", "h1"))
        .vm(VmSpec::new("peer", "a", "h2"));
    let mut c = t.build()?;
    let (d, peer) = (c.ip("d")?, c.ip("peer")?);
    c.ping_ok("d", peer, 2)?;
    c.ping_ok("peer", d, 2)?;

    let down = c.set_admin_state_up("d", false)?;
    eprintln!("d down, applied after {:?}", down.took());
    let before = Counters::take(&c, &["h1"])?;
    ensure!(
        !c.ping_once("d", peer, PING_WAIT)?,
        "d is down: nothing out"
    );
    let out_drops = before.wait_delta(&c, "h1", Stat::DropPortDown, 1)?;
    let before = Counters::take(&c, &["h1"])?;
    ensure!(!c.ping_once("peer", d, PING_WAIT)?, "d is down: nothing in");
    let in_drops = before.wait_delta(&c, "h1", Stat::DropPortDown, 1)?;
    c.ping_ok("u", peer, 1)
        .context("another port of d's host must be unaffected")?;

    let up = c.set_admin_state_up("d", true)?;
    eprintln!(
        "drop_port_down +{out_drops} out, +{in_drops} in; d up again, applied after {:?}",
        up.took()
    );
    c.ping_ok("d", peer, 2)?;
    c.ping_ok("peer", d, 2)?;
    Ok(())
}

// ---- floating IPs and SNAT ----------------------------------------------------------------

/// Traffic through a floating IP is filtered by the fixed port's ingress rules (after DNAT),
/// SNAT'd traffic by the sending port's egress rules (before SNAT), on the VM's host. `vf`
/// (h1, floating IP f1) admits TCP 8080 in, and TCP 8082 from 198.51.100.10/32 only; `vs`
/// (h1, no floating IP, router r1 with SNAT on `hs`) may send TCP 80 to 198.51.100.10 only.
/// From the external namespace: f1:8080 is answered, f1:8081 gets nothing (vf's listener sees
/// no peer, h1 counts `drop_sg_ingress`); f1:8082 is answered from 198.51.100.10 (vf sees that
/// source: the rules match the original external source after DNAT) and refused from the
/// upstream router's 10.5.0.1. Established connections through the floating IP follow rule
/// removal like east-west ones: with r-fip-http removed, the external client's connection to
/// f1:8080 stops within 1 s while its connection to f1:8083 (another rule) goes on.
/// From vs: 198.51.100.10:80 is answered (the server sees the router's SNAT address),
/// :81 gets nothing (the external listener sees no peer, h1 counts `drop_sg_egress`).
#[test]
fn floating_ip_inbound_and_snat_outbound_are_filtered_by_the_fixed_ports_rules() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").snat_host("hs").external();
    t.network("a", 8801, "172.24.9.0/24");
    t.router("r1", &["a"]);
    t.security_group(SecurityGroup::new(
        "sg-fip",
        vec![
            rule_in("r-fip-http").tcp(8080, 8080),
            rule_in("r-fip-admin")
                .tcp(8082, 8082)
                .prefix(&format!("{INTERNET_HOST}/32")),
            rule_in("r-fip-keep").tcp(8083, 8083),
        ],
    ))
    .security_group(SecurityGroup::new(
        "sg-snat",
        vec![
            rule_out("r-web")
                .tcp(80, 80)
                .prefix(&format!("{INTERNET_HOST}/32")),
        ],
    ));
    t.vm(VmSpec::new("vf", "a", "h1").security_groups(&["sg-fip"]))
        .vm(VmSpec::new("vs", "a", "h1").security_groups(&["sg-snat"]));
    t.fip("f1", Some("vf"));
    let mut c = t.build()?;
    let f1 = c.fip_ip("f1")?;
    let vf_server = c.sg_server("vf", &[8080, 8081, 8082, 8083], &[])?;
    let ext_server = c.sg_server(EXT, &[80, 81], &[])?;

    let before = Counters::take(&c, &["h1"])?;
    let refused = expect_probes(
        &c,
        EXT,
        f1,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Tcp, 8081, Outcome::Timeout),
        ],
    )?;
    let in_drops = before.wait_delta(&c, "h1", Stat::DropSgIngress, refused)?;
    expect_served(&vf_server.stdout(), &[(Tcp, 8080)], &[(Tcp, 8081)])?;

    // The ingress rules see the original source: 8082 admits the internet host only.
    let got = c.probe_from(EXT, INTERNET_HOST, f1, &[(Tcp, 8082)], PROBE_WAIT)?;
    ensure!(
        got.get(&(Tcp, 8082)) == Some(&Outcome::Answered),
        "f1:8082 from {INTERNET_HOST} (inside the rule's prefix): {got:?}"
    );
    let peers = served(&vf_server.stdout(), Tcp, 8082);
    ensure!(
        peers == vec![INTERNET_HOST.to_string()],
        "vf must see {INTERNET_HOST} on 8082 (DNAT keeps the source): {peers:?}"
    );
    let before = Counters::take(&c, &["h1"])?;
    // The external namespace's own address on br-ext, 10.5.0.1, is outside the prefix.
    expect_probes(&c, EXT, f1, &[(Tcp, 8082, Outcome::Timeout)])?;
    before.wait_delta(&c, "h1", Stat::DropSgIngress, 1)?;
    ensure!(
        served(&vf_server.stdout(), Tcp, 8082).len() == 1,
        "vf served 8082 to a source outside the prefix: {}",
        vf_server.stdout()
    );

    let before = Counters::take(&c, &["h1"])?;
    let refused = expect_probes(
        &c,
        "vs",
        INTERNET_HOST,
        &[(Tcp, 80, Outcome::Answered), (Tcp, 81, Outcome::Timeout)],
    )?;
    let out_drops = before.wait_delta(&c, "h1", Stat::DropSgEgress, refused)?;
    let log = ext_server.stdout();
    expect_served(&log, &[(Tcp, 80)], &[(Tcp, 81)])?;
    let snat_ip = c.router_external_ip("r1")?.to_string();
    let peers = served(&log, Tcp, 80);
    ensure!(
        peers.iter().all(|p| *p == snat_ip),
        "the external server must see vs as the router's SNAT address {snat_ip}: {peers:?}"
    );
    eprintln!(
        "FIP {f1}: 8080 answered, 8081 refused (drop_sg_ingress +{in_drops}); SNAT: 80 answered \
         from {snat_ip}, 81 refused (drop_sg_egress +{out_drops})"
    );

    // Established connections through the floating IP and rule removal.
    let every = Duration::from_millis(100);
    let mut cut = c.start_ticker(EXT, f1, 8080, every)?;
    let mut kept = c.start_ticker(EXT, f1, 8083, every)?;
    let now = dvr_tests::sg::epoch(std::time::SystemTime::now());
    for t in [&mut cut, &mut kept] {
        t.wait_echo_after(now, Duration::from_secs(2))?;
    }
    let before = Counters::take(&c, &["h1"])?;
    let applied = c.edit_security_group("sg-fip", |g| {
        g.security_group_rules.retain(|r| r.id != "r-fip-http");
    })?;
    expect_cut_and_kept("r-fip-http removed (through f1)", &cut, &mut kept, &applied)?;
    let sg_drops = before.delta(&c, "h1", Stat::DropSgIngress)?
        + before.delta(&c, "h1", Stat::DropSgEgress)?;
    ensure!(
        sg_drops > 0,
        "the cut connection's packets must be dropped by security groups on h1: {:?}",
        before.moved(&c, "h1")?
    );
    cut.stop()?;
    kept.stop()?;
    Ok(())
}

// ---- bad input ----------------------------------------------------------------------------

/// Invalid security group input is refused as a whole, naming the object and the field, and
/// changes nothing: for each bad state written to the running cloud, both agents log a
/// refusal naming the rule (or port) id and the field, keep running, and their maps still
/// equal the last good state's compile; srv keeps admitting TCP 8080 and refusing 8081 (one
/// bad state would have admitted it). A good state written afterwards (a rule for 8081) is
/// applied.
#[test]
fn bad_security_group_input_is_refused_naming_id_and_field_and_changes_nothing() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 8901, "172.24.10.0/24");
    t.security_group(SecurityGroup::new(
        "sg-srv",
        vec![rule_in("r-http").tcp(8080, 8080)],
    ))
    .security_group(SecurityGroup::new("sg-cl", vec![rule_out("r-cl-out")]))
    .security_group(SecurityGroup::new("sg-sl", vec![rule_out("r-sl-out")]).stateless());
    t.vm(VmSpec::new("cl", "a", "h1").security_groups(&["sg-cl"]))
        .vm(VmSpec::new("srv", "a", "h2").security_groups(&["sg-srv"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let srv_port = c.vm("srv")?.port_id.clone();
    let cl_port = c.vm("cl")?.port_id.clone();
    let _server = c.sg_server("srv", &[8080, 8081], &[])?;
    expect_probes(
        &c,
        "cl",
        srv,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Tcp, 8081, Outcome::Timeout),
        ],
    )?;

    let good = c.state().to_value()?;
    let index = |list: &str, id: &str| -> Result<usize> {
        good[list]
            .as_array()
            .and_then(|a| a.iter().position(|o| o["id"] == id))
            .with_context(|| format!("no {id} in {list}"))
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    let srv_g = index("security_groups", "sg-srv")?;
    let (srv_p, cl_p) = (index("ports", &srv_port)?, index("ports", &cl_port)?);
    let add_rule = move |rule: Value| -> Edit {
        Box::new(move |v: &mut Value| {
            if let Some(rules) = v["security_groups"][srv_g]["security_group_rules"].as_array_mut()
            {
                rules.push(rule.clone());
            }
        })
    };
    let cases: Vec<(&str, Vec<&str>, Edit)> = vec![
        (
            "port range max below min (would admit 8081)",
            vec!["r-bad-range", "port_range_max"],
            add_rule(
                json!({"id": "r-bad-range", "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": 8081, "port_range_max": 8000}),
            ),
        ),
        (
            "port out of range",
            vec!["r-bad-port", "port_range_min"],
            add_rule(
                json!({"id": "r-bad-port", "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": 70000, "port_range_max": 70000}),
            ),
        ),
        (
            "unknown protocol",
            vec!["r-bad-proto", "protocol"],
            add_rule(json!({"id": "r-bad-proto", "direction": "ingress", "protocol": "bogus"})),
        ),
        (
            "ports on a protocol without ports",
            vec!["r-gre-ports", "port_range_min"],
            add_rule(
                json!({"id": "r-gre-ports", "direction": "ingress", "protocol": "gre",
                "port_range_min": 1}),
            ),
        ),
        (
            "unknown direction",
            vec!["r-bad-dir", "direction"],
            add_rule(json!({"id": "r-bad-dir", "direction": "inbound", "protocol": "tcp"})),
        ),
        (
            "two remotes",
            vec!["r-two-remotes", "remote_group_id"],
            add_rule(json!({"id": "r-two-remotes", "direction": "ingress",
                "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "sg-cl"})),
        ),
        (
            "IPv6 prefix on an IPv4 rule",
            vec!["r-v6-prefix", "remote_ip_prefix"],
            add_rule(
                json!({"id": "r-v6-prefix", "direction": "ingress", "ethertype": "IPv4",
                "remote_ip_prefix": "2001:db8::/64"}),
            ),
        ),
        (
            "unknown remote group",
            vec!["r-ghost-group", "remote_group_id"],
            add_rule(json!({"id": "r-ghost-group", "direction": "ingress",
                "remote_group_id": "sg-ghost"})),
        ),
        (
            "top-level rule of an unknown group",
            vec!["r-orphan", "security_group_id"],
            Box::new(|v: &mut Value| {
                v["security_group_rules"] = json!([{"id": "r-orphan",
                    "security_group_id": "sg-ghost", "direction": "ingress", "protocol": "tcp",
                    "port_range_min": 8081}]);
            }),
        ),
        (
            "unknown address group",
            vec!["r-ghost-ag", "remote_address_group_id"],
            add_rule(json!({"id": "r-ghost-ag", "direction": "ingress",
                "remote_address_group_id": "ag-ghost"})),
        ),
        (
            "ICMP code without a type",
            vec!["r-icmp-code", "port_range_max"],
            add_rule(
                json!({"id": "r-icmp-code", "direction": "ingress", "protocol": "icmp",
                "port_range_max": 0}),
            ),
        ),
        (
            "a top-level rule reusing a nested rule's id",
            vec!["r-http", "`id`"],
            Box::new(|v: &mut Value| {
                v["security_group_rules"] = json!([{"id": "r-http",
                    "security_group_id": "sg-srv", "direction": "ingress", "protocol": "tcp",
                    "port_range_min": 8081}]);
            }),
        ),
        (
            "port naming an unknown group",
            vec![srv_port.as_str(), "security_groups"],
            Box::new(move |v: &mut Value| {
                v["ports"][srv_p]["security_groups"] = json!(["sg-srv", "sg-ghost"]);
            }),
        ),
        (
            "groups on a port without port security",
            vec![cl_port.as_str(), "security_groups"],
            Box::new(move |v: &mut Value| {
                v["ports"][cl_p]["port_security_enabled"] = json!(false);
            }),
        ),
        (
            "stateful and stateless groups on one port",
            vec![cl_port.as_str(), "security_groups"],
            Box::new(move |v: &mut Value| {
                v["ports"][cl_p]["security_groups"] = json!(["sg-cl", "sg-sl"]);
            }),
        ),
        (
            "admin_state_up not a boolean",
            vec![srv_port.as_str(), "admin_state_up"],
            Box::new(move |v: &mut Value| {
                v["ports"][srv_p]["admin_state_up"] = json!("down");
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (what, needles, edit) in &cases {
        let mut bad = good.clone();
        edit(&mut bad);
        let before: Vec<usize> = ["h1", "h2"]
            .iter()
            .map(|h| c.refused_lines(h).map(|l| l.len()))
            .collect::<Result<_>>()?;
        c.write_raw_state(&bad)?;
        for (h, n) in ["h1", "h2"].iter().zip(before) {
            let line = c.wait_refused(h, n, Duration::from_secs(5))?;
            let missing: Vec<&&str> = needles.iter().filter(|n| !line.contains(**n)).collect();
            eprintln!("{what}: {h}: {}", line.trim());
            if !missing.is_empty() {
                failures.push(format!(
                    "{what}: {h}'s refusal does not name {missing:?}: {line}"
                ));
            }
            ensure!(c.agent_running(h)?, "{what}: the agent of {h} exited");
            if let Some(diff) = c.port_maps_differ(h)? {
                failures.push(format!("{what}: {h}'s maps changed: {diff}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} problem(s) with refused states:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let before = Counters::take(&c, &["h2"])?;
    let refused = expect_probes(
        &c,
        "cl",
        srv,
        &[
            (Tcp, 8080, Outcome::Answered),
            (Tcp, 8081, Outcome::Timeout),
        ],
    )?;
    before.wait_delta(&c, "h2", Stat::DropSgIngress, refused)?;

    // The next good state is applied (update_state writes the cloud's own state again).
    let start = Instant::now();
    c.edit_security_group("sg-srv", |g| {
        g.security_group_rules
            .push(rule_in("r-8081").tcp(8081, 8081));
    })?;
    expect_probes(&c, "cl", srv, &[(Tcp, 8081, Outcome::Answered)])?;
    eprintln!(
        "{} bad states refused; a good one applied after {:?}",
        cases.len(),
        start.elapsed()
    );
    Ok(())
}
