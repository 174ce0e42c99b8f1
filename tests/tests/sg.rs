//! Security group integration tests (issue 12): real traffic between VM namespaces (and the
//! external namespace) through dvr-agents whose ports carry Neutron security groups. Each test
//! builds its own cloud and asserts what can be observed from outside the agent: which
//! connections and datagrams are answered, the peer address a server saw, packets captured in
//! VMs, `dvrctl show stats --json` drop counters (`drop_sg_ingress`, `drop_sg_egress`,
//! `drop_port_down`, `drop_spoof_ip`) and the agents' `applied` / `refused` log lines.
//!
//! A refused probe is a bounded wait (a connection or datagram unanswered within
//! [`PROBE_TIMEOUT`] while the server listens on that port) backed by positive evidence: the
//! drop counter of the host that must drop it grew by at least one per refused probe, and the
//! server saw nothing. Probes of one check run at once, so a check costs one timeout.
//!
//! Needs root, bpffs, tcpdump, socat, python3-scapy and the built agent (`cargo build -p
//! dvr-userspace`); fails with a clear message otherwise. Run with `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::sg::{server_hits, unix_secs};
use dvr_tests::{
    Bg, Cloud, Counters, EXT, INTERNET_HOST, Packet, Probe, ProbeReport, RuleSpec,
    SecurityGroupSpec, Topology, UdpFrame, VmSpec, require_preconditions,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);
/// How long a probe waits for an answer (a dropped TCP SYN is retransmitted once in it).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

/// Probes `dst` from `from` (source `bind` if given): each of `admitted` must be answered by
/// server `server_name`, each of `dropped` must time out without reaching the server, and
/// counter `stat` of `host` must grow by at least one per dropped probe.
#[expect(clippy::too_many_arguments, reason = "one call names a whole check")]
fn check(
    c: &Cloud,
    server: &Bg,
    server_name: &str,
    from: &str,
    dst: Ipv4Addr,
    bind: Option<Ipv4Addr>,
    admitted: &[Probe],
    dropped: &[Probe],
    (host, stat): (&str, Stat),
) -> Result<ProbeReport> {
    let before = Counters::take(c, &[host])?;
    let hits_before = server_hits(&server.stdout()).len();
    let all: Vec<Probe> = admitted.iter().chain(dropped).copied().collect();
    let r = c.probe(from, dst, &all, bind, PROBE_TIMEOUT)?;
    r.expect(server_name, admitted, dropped)?;
    if !dropped.is_empty() {
        let n = u64::try_from(dropped.len())?;
        let grew = before.wait_delta(c, host, stat, n).with_context(|| {
            format!(
                "{from} -> {dst}: {dropped:?} timed out, but {host}'s {} did not grow by {n}",
                stat.as_str()
            )
        })?;
        eprintln!(
            "{from} -> {dst}: admitted {admitted:?}, dropped {dropped:?} ({host} {} +{grew})",
            stat.as_str()
        );
    } else {
        eprintln!("{from} -> {dst}: admitted {admitted:?}");
    }
    let hits = server_hits(&server.stdout());
    let leaked: Vec<_> = hits[hits_before.min(hits.len())..]
        .iter()
        .filter(|(p, _)| dropped.contains(p))
        .collect();
    ensure!(
        leaked.is_empty(),
        "server {server_name} saw probes that timed out: {leaked:?}"
    );
    Ok(r)
}

/// Waits until `stat` of `host` grew by at least `n` since `before`; names `what` on failure.
fn dropped_as(c: &Cloud, before: &Counters, host: &str, stat: Stat, what: &str) -> Result<u64> {
    before
        .wait_delta(c, host, stat, 1)
        .with_context(|| format!("{what}: {host}'s {} did not grow", stat.as_str()))
}

/// The group every client VM gets: egress to anywhere (Neutron's default egress rule), no
/// ingress rule.
fn egress_all(name: &str) -> SecurityGroupSpec {
    SecurityGroupSpec::new(name).rule(RuleSpec::egress("all"))
}

// ---- rules by protocol, port, range and remote --------------------------------------------------

const C1: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 10);
const C2: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 11);

/// Ingress rules admit exactly what they name, routed across hosts: TCP 8080 and the range
/// 9000-9010 (both edges in, 8081/8999/9011 out), UDP 5353 and the range 6000-6009 (6009 in,
/// 5354 and 6010 out), ICMP echo requests (a timestamp request is dropped and never reaches
/// the server), TCP 7000 only from `remote_ip_prefix` c1/32 and UDP 6500 only from an address
/// group holding c2. Refused probes count in the receiving host's `drop_sg_ingress`. The
/// server's group has no egress rule: its own new ping is dropped at its tap
/// (`drop_sg_egress`), while its replies above passed as replies.
#[test]
fn rules_admit_by_protocol_port_range_and_remote() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4601, "10.61.1.0/24")
        .network("b", 4602, "10.61.2.0/24");
    t.router("r1", &["a", "b"]);
    t.address_group("admins", &[&format!("{C2}/32")]);
    t.security_group(egress_all("client"));
    t.security_group(
        SecurityGroupSpec::new("server")
            .rule(RuleSpec::ingress("http").tcp(8080, 8080))
            .rule(RuleSpec::ingress("range").tcp(9000, 9010))
            .rule(RuleSpec::ingress("dns").udp(5353, 5353))
            .rule(RuleSpec::ingress("udp-range").udp(6000, 6009))
            .rule(RuleSpec::ingress("ping").icmp_type(8, Some(0)))
            .rule(
                RuleSpec::ingress("admin")
                    .tcp(7000, 7000)
                    .remote_ip_prefix(&format!("{C1}/32")),
            )
            .rule(
                RuleSpec::ingress("admins")
                    .udp(6500, 6500)
                    .remote_address_group("admins"),
            ),
    );
    t.vm(VmSpec::new("srv", "b", "h2").security_groups(&["server"]))
        .vm(VmSpec::new("c1", "a", "h1")
            .ip(C1)
            .security_groups(&["client"]))
        .vm(VmSpec::new("c2", "a", "h1")
            .ip(C2)
            .security_groups(&["client"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    use Probe::{Tcp, Udp};
    let ports = [
        Tcp(8080),
        Tcp(8081),
        Tcp(8999),
        Tcp(9000),
        Tcp(9010),
        Tcp(9011),
        Tcp(7000),
        Udp(5353),
        Udp(5354),
        Udp(6009),
        Udp(6010),
        Udp(6500),
    ];
    let server = c.port_server("srv", "srv", &ports)?;
    let ingress = ("h2", Stat::DropSgIngress);

    let r = check(
        &c,
        &server,
        "srv",
        "c1",
        srv,
        None,
        &[
            Tcp(8080),
            Tcp(9000),
            Tcp(9010),
            Tcp(7000),
            Udp(5353),
            Udp(6009),
        ],
        &[
            Tcp(8081),
            Tcp(8999),
            Tcp(9011),
            Udp(5354),
            Udp(6010),
            Udp(6500),
        ],
        ingress,
    )?;
    ensure!(
        r.peer(Tcp(8080)) == Some(C1),
        "srv must see c1's fixed IP as the peer: {:?}",
        r.outcome(Tcp(8080))?
    );
    // remote_ip_prefix c1/32 refuses c2; the address group admits c2 only.
    check(
        &c,
        &server,
        "srv",
        "c2",
        srv,
        None,
        &[Tcp(8080), Udp(6500)],
        &[Tcp(7000)],
        ingress,
    )?;

    // ICMP: echo requests (type 8 code 0) are admitted and their replies pass; a timestamp
    // request (type 13) is dropped before srv.
    c.ping_ok("c1", srv, 2)
        .context("ping c1 -> srv (icmp type 8 admitted)")?;
    let at_srv = c.capture_vm("srv", "icmp[icmptype] == 13 or icmp[icmptype] == 8")?;
    let before = Counters::take(&c, &["h2"])?;
    let c1_mac = c.vm("c1")?.mac.clone();
    let gw_a = c.gateway_mac("a")?;
    c.scapy(
        "c1",
        &format!(
            "sendp(Ether(src='{c1_mac}', dst='{gw_a}')/IP(src='{C1}', dst='{srv}', ttl=64)/ICMP(type=13, id=4242), iface='eth0')"
        ),
    )?;
    dropped_as(
        &c,
        &before,
        "h2",
        Stat::DropSgIngress,
        "ICMP timestamp request c1 -> srv",
    )?;
    // Sentinel: an admitted echo request along the same path reaches srv after it.
    c.ping_ok("c1", srv, 1)?;
    at_srv.wait_for("the sentinel echo request", WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(C1), &s(srv))
    })?;
    let leaked: Vec<Packet> = at_srv
        .stop()?
        .into_iter()
        .filter(|p| !p.is_icmp_echo_request() && !p.is_icmp_echo_reply())
        .collect();
    ensure!(
        leaked.is_empty(),
        "ICMP type 13 (no rule) reached srv: {leaked:#?}"
    );

    // srv has no egress rule: its own new echo request is dropped at its tap.
    let before = Counters::take(&c, &["h2"])?;
    ensure!(
        !c.ping_once("srv", C1, Duration::from_millis(800))?,
        "srv (no egress rule) must not reach c1 with a new ping"
    );
    dropped_as(&c, &before, "h2", Stat::DropSgEgress, "ping srv -> c1")?;
    Ok(())
}

// ---- remote groups ------------------------------------------------------------------------------

/// `remote_group_id` follows membership cloud-wide while the agents run: db (h2) admits TCP
/// 5432 from members of group "app" only. app1 (h1, in "app") gets in, oth (h1, not in it) is
/// dropped at db's tap; oth joins "app" -> admitted; app1 leaves it -> dropped while oth still
/// gets in; a VM added later in "app" (h1) gets in once its port exists.
#[test]
fn remote_group_membership_follows_ports_while_running() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4611, "10.61.11.0/24");
    t.security_group(egress_all("app"));
    t.security_group(egress_all("other"));
    t.security_group(
        SecurityGroupSpec::new("db")
            .rule(RuleSpec::ingress("sql").tcp(5432, 5432).remote_group("app")),
    );
    t.vm(VmSpec::new("db", "a", "h2").security_groups(&["db"]))
        .vm(VmSpec::new("app1", "a", "h1").security_groups(&["app"]))
        .vm(VmSpec::new("oth", "a", "h1").security_groups(&["other"]));
    let mut c = t.build()?;
    let db = c.ip("db")?;
    let sql = [Probe::Tcp(5432)];
    let server = c.port_server("db", "db", &sql)?;
    let ingress = ("h2", Stat::DropSgIngress);

    check(&c, &server, "db", "app1", db, None, &sql, &[], ingress)?;
    check(&c, &server, "db", "oth", db, None, &[], &sql, ingress)?;

    let a = c.apply_and_wait(&["h1", "h2"], |c| {
        c.set_port_groups("oth", Some(&["other", "app"]))
    })?;
    eprintln!(
        "oth joined app: applied on h2 {:.0} ms after the write",
        (unix_secs(a.host("h2")?) - unix_secs(a.written)) * 1e3
    );
    check(&c, &server, "db", "oth", db, None, &sql, &[], ingress)
        .context("oth after joining app")?;

    c.apply_and_wait(&["h1", "h2"], |c| {
        c.set_port_groups("app1", Some(&["other"]))
    })?;
    check(&c, &server, "db", "app1", db, None, &[], &sql, ingress)
        .context("app1 after leaving app")?;
    check(&c, &server, "db", "oth", db, None, &sql, &[], ingress).context("oth, still in app")?;

    // A port that comes: in the state first (h2 admits its address), then its tap (h1).
    c.apply_and_wait(&["h2"], |c| {
        c.add_vm_later(VmSpec::new("late", "a", "h1").security_groups(&["app"]))
            .map(|_| ())
    })?;
    c.wait_port_attached("late", WAIT)?;
    let r = check(&c, &server, "db", "late", db, None, &sql, &[], ingress)
        .context("a VM added in app while running")?;
    ensure!(
        r.peer(Probe::Tcp(5432)) == Some(c.ip("late")?),
        "db must see late's address: {:?}",
        r.outcome(Probe::Tcp(5432))?
    );
    Ok(())
}

// ---- stateful -----------------------------------------------------------------------------------

/// UDP to `argv[1]:argv[2]` on a connected socket: prints "sport N", then "refused" when an
/// ICMP port unreachable arrives (ECONNREFUSED), "timeout" or "data".
const UDP_CLOSED_PORT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
print("sport", s.getsockname()[1], flush=True)
s.send(b"dvr-tests")
s.settimeout(3)
try:
    s.recv(100)
    print("data")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#;

/// Stateful groups: `out` (h1) has only an egress rule and `peer` (h2, routed) only ingress
/// rules, yet TCP, UDP and ping from out to peer are answered (the replies pass in both
/// directions without a rule). A new connection or ping into out (from an unfiltered VM) is
/// dropped at out's tap (`drop_sg_ingress`), and peer cannot open one itself
/// (`drop_sg_egress` on h2). Related ICMP errors: UDP from out to a closed port gets the port
/// unreachable back through out's group (ECONNREFUSED, seen at out), while a forged port
/// unreachable quoting a flow out never sent is dropped and never seen at out.
#[test]
fn stateful_groups_pass_replies_and_related_errors_but_not_new_inbound() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4621, "10.62.1.0/24")
        .network("b", 4622, "10.62.2.0/24");
    t.router("r1", &["a", "b"]);
    t.security_group(egress_all("egress-only"));
    t.security_group(
        SecurityGroupSpec::new("ingress-only")
            .rule(RuleSpec::ingress("tcp").tcp(8000, 8000))
            .rule(RuleSpec::ingress("udp").udp(8001, 8001))
            .rule(RuleSpec::ingress("icmp").protocol("icmp")),
    );
    t.vm(VmSpec::new("out", "a", "h1").security_groups(&["egress-only"]))
        .vm(VmSpec::new("peer", "b", "h2").security_groups(&["ingress-only"]))
        // No security_groups key: not filtered.
        .vm(VmSpec::new("open", "a", "h2"));
    let mut c = t.build()?;
    let (out, peer, open) = (c.ip("out")?, c.ip("peer")?, c.ip("open")?);
    use Probe::{Tcp, Udp};
    let peer_server = c.port_server("peer", "peer", &[Tcp(8000), Udp(8001)])?;
    let out_server = c.port_server("out", "out", &[Tcp(8000)])?;

    // Replies of out's connections pass without ingress rules at out and egress rules at peer.
    check(
        &c,
        &peer_server,
        "peer",
        "out",
        peer,
        None,
        &[Tcp(8000), Udp(8001)],
        &[],
        ("h2", Stat::DropSgIngress),
    )?;
    let before = Counters::take(&c, &["h1", "h2"])?;
    c.ping_ok("out", peer, 2)
        .context("ping out -> peer (replies without rules)")?;
    for (h, st) in [("h1", Stat::DropSgIngress), ("h2", Stat::DropSgEgress)] {
        ensure!(
            before.delta(&c, h, st)? == 0,
            "replies to out were dropped ({h} {} grew)",
            st.as_str()
        );
    }

    // New inbound connections to out are refused.
    check(
        &c,
        &out_server,
        "out",
        "open",
        out,
        None,
        &[],
        &[Tcp(8000)],
        ("h1", Stat::DropSgIngress),
    )?;
    let before = Counters::take(&c, &["h1"])?;
    ensure!(
        !c.ping_once("open", out, Duration::from_millis(800))?,
        "a new ping into out (egress rules only) was answered"
    );
    dropped_as(&c, &before, "h1", Stat::DropSgIngress, "ping open -> out")?;
    // peer (ingress rules only) cannot start anything itself.
    let before = Counters::take(&c, &["h2"])?;
    ensure!(
        !c.ping_once("peer", out, Duration::from_millis(800))?,
        "peer (ingress rules only) opened a ping to out"
    );
    dropped_as(&c, &before, "h2", Stat::DropSgEgress, "ping peer -> out")?;

    // Related ICMP errors. First a forged port unreachable quoting a flow out never sent.
    let at_out = c.capture_vm("out", "icmp")?;
    let before = Counters::take(&c, &["h1"])?;
    let (open_mac, out_mac) = (c.vm("open")?.mac.clone(), c.vm("out")?.mac.clone());
    c.scapy(
        "open",
        &format!(
            "sendp(Ether(src='{open_mac}', dst='{out_mac}')/IP(src='{open}', dst='{out}', ttl=64)/ICMP(type=3, code=3)/IP(src='{out}', dst='{open}', ttl=64)/UDP(sport=33333, dport=9999)/Raw(b'dvr-test'), iface='eth0')"
        ),
    )?;
    dropped_as(
        &c,
        &before,
        "h1",
        Stat::DropSgIngress,
        "an unrelated port unreachable to out",
    )?;
    // Then the real one: UDP from out to a closed port of open.
    let o = c.python("out", UDP_CLOSED_PORT, &[&s(open), "9"], WAIT + WAIT)?;
    let o = cmd::text(&o);
    ensure!(
        o.contains("refused"),
        "UDP from out to the closed port {open}:9 must fail with ECONNREFUSED (the related \
         port unreachable passes out's group): {o}"
    );
    let sport: u16 = o
        .lines()
        .find_map(|l| l.strip_prefix("sport ")?.trim().parse().ok())
        .context("no source port printed")?;
    let quote = format!("{out}.{sport} > {open}.9:");
    at_out.wait_for("the related port unreachable at out", WAIT, |p| {
        p.contains("unreachable") && p.contains(&quote)
    })?;
    let packets = at_out.stop()?;
    let forged: Vec<_> = packets.iter().filter(|p| p.contains("33333")).collect();
    ensure!(
        forged.is_empty(),
        "the unrelated port unreachable reached out: {forged:#?}"
    );
    ensure!(
        server_hits(&out_server.stdout()).is_empty(),
        "out's server saw a connection"
    );
    Ok(())
}

// ---- rule removal -------------------------------------------------------------------------------

/// Accepts TCP connections on the ports in `argv[1..]`; prints "listening" once bound, then
/// "accepted <port> <peer ip>", one "recv <port> <unix time> <line>" per line received and
/// "eof <port> <time>" / "error <port> <time> <reason>" at the end of a connection.
const STREAM_SERVER: &str = r#"
import socket, sys, threading, time
lock = threading.Lock()
def out(*a):
    with lock:
        print(*a, flush=True)
def serve(c, port):
    buf = b""
    try:
        while True:
            d = c.recv(4096)
            if not d:
                out("eof", port, "%.6f" % time.time())
                return
            buf += d
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                out("recv", port, "%.6f" % time.time(), line.decode().replace(" ", "_"))
    except OSError as e:
        out("error", port, "%.6f" % time.time(), str(e).replace(" ", "_"))
def accept(s, port):
    while True:
        c, a = s.accept()
        out("accepted", port, a[0])
        threading.Thread(target=serve, args=(c, port), daemon=True).start()
socks = []
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(p)))
    s.listen(8)
    socks.append((s, int(p)))
for s, p in socks:
    threading.Thread(target=accept, args=(s, p), daemon=True).start()
out("listening")
while True:
    time.sleep(3600)
"#;

/// Opens one TCP connection to `argv[1]` per port in `argv[3..]` ("connected <port>") and
/// sends "line <n>" on each every `argv[2]` seconds until stopped ("error <port> <reason>"
/// when a send fails).
const STREAM_CLIENT: &str = r#"
import socket, sys, threading, time
dst, interval = sys.argv[1], float(sys.argv[2])
def run(s, port):
    i = 0
    while True:
        try:
            s.sendall(b"line %d\n" % i)
        except OSError as e:
            print("error", port, str(e).replace(" ", "_"), flush=True)
            return
        i += 1
        time.sleep(interval)
socks = []
for p in sys.argv[3:]:
    s = socket.create_connection((dst, int(p)), timeout=5)
    s.settimeout(None)
    print("connected", p, flush=True)
    socks.append((s, int(p)))
for s, p in socks:
    threading.Thread(target=run, args=(s, p), daemon=True).start()
while True:
    time.sleep(3600)
"#;

/// The receive times of each port's lines in [`STREAM_SERVER`]'s output.
fn received(out: &str) -> BTreeMap<u16, Vec<f64>> {
    let mut m: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
    for l in out.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first() != Some(&"recv") {
            continue;
        }
        if let (Some(Ok(port)), Some(Ok(t))) = (
            w.get(1).map(|p| p.parse::<u16>()),
            w.get(2).map(|t| t.parse::<f64>()),
        ) {
            m.entry(port).or_default().push(t);
        }
    }
    m
}

/// Removing a rule cuts the established connection it admitted within one second of the agent
/// applying the change, while a connection admitted by a rule that stays goes on: srv (h2)
/// admits TCP 6001 ("cut") and 6002 ("keep"); cli (h1) sends a line every 100 ms on one
/// connection to each. After "cut" is removed, the last line on 6001 arrives at most 1 s after
/// the agent's `applied` line (and lines arrived until the change), lines on 6002 keep
/// arriving for 2 s more, and cli's retransmissions on 6001 count in h2's `drop_sg_ingress`.
#[test]
fn removing_a_rule_cuts_its_connections_within_a_second_and_keeps_the_others() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4631, "10.61.31.0/24");
    t.security_group(egress_all("client"));
    t.security_group(
        SecurityGroupSpec::new("server")
            .rule(RuleSpec::ingress("cut").tcp(6001, 6001))
            .rule(RuleSpec::ingress("keep").tcp(6002, 6002)),
    );
    t.vm(VmSpec::new("srv", "a", "h2").security_groups(&["server"]))
        .vm(VmSpec::new("cli", "a", "h1").security_groups(&["client"]));
    let mut c = t.build()?;
    let srv = c.ip("srv")?;
    let mut server = c.spawn_python("srv", STREAM_SERVER, &["6001", "6002"])?;
    server.wait_stdout("listening", WAIT, |o| o.contains("listening"))?;
    let mut client = c.spawn_python("cli", STREAM_CLIENT, &[&s(srv), "0.1", "6001", "6002"])?;
    client.wait_stdout("both connections", WAIT, |o| {
        o.contains("connected 6001") && o.contains("connected 6002")
    })?;
    server.wait_stdout("5 lines on each connection", WAIT, |o| {
        let r = received(o);
        [6001, 6002]
            .iter()
            .all(|p| r.get(p).is_some_and(|v| v.len() >= 5))
    })?;

    let before = Counters::take(&c, &["h2"])?;
    let applied = c.apply_and_wait(&["h2"], |c| c.remove_rule("server", "cut"))?;
    let t_written = unix_secs(applied.written);
    let t_applied = unix_secs(applied.host("h2")?);
    // 6002 goes on for 2 s after the change was applied.
    server.wait_stdout("lines on 6002 for 2 s after the change", WAIT + WAIT, |o| {
        received(o)
            .get(&6002)
            .is_some_and(|v| v.iter().any(|t| *t > t_applied + 2.0))
    })?;
    let out = server.stdout();
    let r = received(&out);
    let cut = r.get(&6001).cloned().unwrap_or_default();
    let kept = r.get(&6002).cloned().unwrap_or_default();
    let last_cut = cut.iter().copied().fold(f64::MIN, f64::max);
    let kept_after = kept.iter().filter(|t| **t > t_applied).count();
    eprintln!(
        "rule removed: written -> applied {:.0} ms; last line on 6001 {:+.0} ms after applied \
         ({} lines in all); 6002 got {kept_after} lines after applied",
        (t_applied - t_written) * 1e3,
        (last_cut - t_applied) * 1e3,
        cut.len()
    );
    ensure!(
        cut.iter().any(|t| *t >= t_written - 0.5),
        "6001 carried no line in the 0.5 s before the change (last at {last_cut:.3}, change \
         written at {t_written:.3}): it was not alive when the rule went"
    );
    ensure!(
        last_cut <= t_applied + 1.0,
        "6001 (its rule removed) still carried a line {:.0} ms after the agent applied the \
         change (at most 1 s)",
        (last_cut - t_applied) * 1e3
    );
    ensure!(
        kept_after >= 10,
        "6002 (its rule kept) got only {kept_after} lines in the 2 s after the change"
    );
    let grew = before
        .wait_delta(&c, "h2", Stat::DropSgIngress, 1)
        .context(
            "cli's retransmissions on the cut connection must count in h2's drop_sg_ingress",
        )?;
    eprintln!("h2 drop_sg_ingress +{grew}");
    ensure!(
        client.try_wait()?.is_none(),
        "the client exited: {}",
        client.stdout()
    );
    Ok(())
}

// ---- stateless ----------------------------------------------------------------------------------

/// Stateless groups (`stateful: false`) track nothing: srv's stateless group admits TCP 7100
/// inbound, so cli's SYN reaches srv (seen on its eth0), but srv's SYN-ACK has no egress rule
/// and is dropped at srv's tap (`drop_sg_egress` on h2): no connection. Once an egress rule for
/// TCP is added, the same connection is answered; 7101 (no ingress rule) stays dropped
/// (`drop_sg_ingress`).
#[test]
fn stateless_groups_need_a_rule_for_replies() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4641, "10.61.41.0/24");
    t.security_group(egress_all("client"));
    t.security_group(
        SecurityGroupSpec::new("sl")
            .stateless()
            .rule(RuleSpec::ingress("in").tcp(7100, 7100)),
    );
    t.vm(VmSpec::new("srv", "a", "h2").security_groups(&["sl"]))
        .vm(VmSpec::new("cli", "a", "h1").security_groups(&["client"]));
    let mut c = t.build()?;
    let (srv, cli) = (c.ip("srv")?, c.ip("cli")?);
    use Probe::Tcp;
    let server = c.port_server("srv", "srv", &[Tcp(7100), Tcp(7101)])?;

    let at_srv = c.capture_vm("srv", "tcp port 7100")?;
    check(
        &c,
        &server,
        "srv",
        "cli",
        srv,
        None,
        &[],
        &[Tcp(7100)],
        ("h2", Stat::DropSgEgress),
    )
    .context("the reply of a stateless group without egress rule")?;
    at_srv.wait_for("cli's SYN at srv (admitted inbound)", WAIT, |p| {
        p.contains(&format!("{cli}.")) && p.contains(&format!(" > {srv}.7100:"))
    })?;
    at_srv.stop()?;
    check(
        &c,
        &server,
        "srv",
        "cli",
        srv,
        None,
        &[],
        &[Tcp(7101)],
        ("h2", Stat::DropSgIngress),
    )?;

    c.apply_and_wait(&["h2"], |c| {
        c.add_rule("sl", RuleSpec::egress("replies").protocol("tcp"))
    })?;
    check(
        &c,
        &server,
        "srv",
        "cli",
        srv,
        None,
        &[Tcp(7100)],
        &[Tcp(7101)],
        ("h2", Stat::DropSgIngress),
    )
    .context("after adding the egress rule for replies")?;
    Ok(())
}

// ---- port security off --------------------------------------------------------------------------

const FOREIGN: Ipv4Addr = Ipv4Addr::new(10, 61, 51, 99);

/// `port_security_enabled: false` (with `security_groups: []`, as Neutron sends it) means no
/// anti-spoofing and no filtering: `free` (h1) sends a UDP datagram from a foreign source
/// address and dst (h2) receives it, and a TCP connection into free on any port is answered.
/// `guard` (h1, port security on, no group) is the contrast: the same spoofed datagram counts
/// in `drop_spoof_ip`, its own datagram in `drop_sg_egress`, neither reaches dst, and a
/// connection into it is dropped (`drop_sg_ingress`).
#[test]
fn port_security_disabled_allows_spoofing_and_no_filtering() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4651, "10.61.51.0/24");
    t.security_group(
        SecurityGroupSpec::new("open")
            .rule(RuleSpec::ingress("in"))
            .rule(RuleSpec::egress("out")),
    );
    t.vm(VmSpec::new("free", "a", "h1")
        .port_security(false)
        .security_groups(&[]))
        .vm(VmSpec::new("guard", "a", "h1").security_groups(&[]))
        .vm(VmSpec::new("dst", "a", "h2").security_groups(&["open"]));
    let mut c = t.build()?;
    let free = c.vm("free")?.clone();
    let guard = c.vm("guard")?.clone();
    let dst = c.vm("dst")?.clone();
    let frame = |src_mac: &str, src_ip: Ipv4Addr, sport: u16| UdpFrame {
        src_mac: src_mac.into(),
        dst_mac: dst.mac.clone(),
        src_ip,
        dst_ip: dst.ip,
        sport,
        dport: 40000,
        count: 1,
    };
    let from = |p: &Packet, ip: Ipv4Addr, sport: u16| p.contains(&format!("{ip}.{sport} > "));

    let at_dst = c.capture_vm("dst", "udp port 40000")?;
    let before = Counters::take(&c, &["h1"])?;
    c.send_udp_frame("free", &frame(&free.mac, FOREIGN, 40001))?;
    at_dst.wait_for("free's datagram from a foreign address", WAIT, |p| {
        from(p, FOREIGN, 40001)
    })?;
    for st in [Stat::DropSpoofIp, Stat::DropSgEgress] {
        ensure!(
            before.delta(&c, "h1", st)? == 0,
            "free (port security off) had a packet counted in {}",
            st.as_str()
        );
    }
    c.send_udp_frame("guard", &frame(&guard.mac, FOREIGN, 40002))?;
    dropped_as(
        &c,
        &before,
        "h1",
        Stat::DropSpoofIp,
        "guard's spoofed datagram",
    )?;
    c.send_udp_frame("guard", &frame(&guard.mac, guard.ip, 40003))?;
    dropped_as(
        &c,
        &before,
        "h1",
        Stat::DropSgEgress,
        "guard's datagram (no egress rule)",
    )?;
    // Sentinel: free's next datagram arrives after anything guard sent.
    c.send_udp_frame("free", &frame(&free.mac, free.ip, 40004))?;
    at_dst.wait_for("the sentinel from free", WAIT, |p| from(p, free.ip, 40004))?;
    let leaked: Vec<_> = at_dst
        .stop()?
        .into_iter()
        .filter(|p| from(p, FOREIGN, 40002) || from(p, guard.ip, 40003))
        .collect();
    ensure!(
        leaked.is_empty(),
        "guard's datagrams reached dst: {leaked:#?}"
    );

    use Probe::Tcp;
    let free_server = c.port_server("free", "free", &[Tcp(4444)])?;
    let guard_server = c.port_server("guard", "guard", &[Tcp(4444)])?;
    check(
        &c,
        &free_server,
        "free",
        "dst",
        free.ip,
        None,
        &[Tcp(4444)],
        &[],
        ("h1", Stat::DropSgIngress),
    )
    .context("into free (no filtering)")?;
    check(
        &c,
        &guard_server,
        "guard",
        "dst",
        guard.ip,
        None,
        &[],
        &[Tcp(4444)],
        ("h1", Stat::DropSgIngress),
    )
    .context("into guard (port security on, no group)")?;
    Ok(())
}

// ---- admin state --------------------------------------------------------------------------------

/// `admin_state_up: false` lets nothing in or out of the port: after the change, down's ping
/// to peer (h2) and peer's ping to down go unanswered and both count in h1's
/// `drop_port_down` (the tap's ingress and egress), while `up` on the same host keeps
/// reaching peer; back to true, down answers again. All three ports admit everything.
#[test]
fn admin_state_down_passes_nothing_and_is_counted() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4661, "10.61.61.0/24");
    t.security_group(
        SecurityGroupSpec::new("all")
            .rule(RuleSpec::ingress("in"))
            .rule(RuleSpec::egress("out")),
    );
    t.vm(VmSpec::new("down", "a", "h1").security_groups(&["all"]))
        .vm(VmSpec::new("up", "a", "h1").security_groups(&["all"]))
        .vm(VmSpec::new("peer", "a", "h2").security_groups(&["all"]));
    let mut c = t.build()?;
    let (down, peer) = (c.ip("down")?, c.ip("peer")?);
    c.ping_ok("down", peer, 1)?;
    c.ping_ok("peer", down, 1)?;

    c.apply_and_wait(&["h1"], |c| c.set_admin_state_up("down", false))?;
    let before = Counters::take(&c, &["h1"])?;
    ensure!(
        !c.ping_once("down", peer, Duration::from_millis(800))?,
        "a port with admin_state_up false reached peer"
    );
    dropped_as(&c, &before, "h1", Stat::DropPortDown, "ping down -> peer")?;
    let before = Counters::take(&c, &["h1"])?;
    ensure!(
        !c.ping_once("peer", down, Duration::from_millis(800))?,
        "peer reached a port with admin_state_up false"
    );
    dropped_as(&c, &before, "h1", Stat::DropPortDown, "ping peer -> down")?;
    c.ping_ok("up", peer, 1)
        .context("another port of the same host must be unaffected")?;

    c.apply_and_wait(&["h1"], |c| c.set_admin_state_up("down", true))?;
    let start = Instant::now();
    wait_until("down to answer peer again", WAIT, |why| {
        let ok = c.ping_once("peer", down, Duration::from_millis(300))?;
        *why = "ping peer -> down unanswered".into();
        Ok(ok.then_some(()))
    })?;
    c.ping_ok("down", peer, 1)?;
    eprintln!(
        "admin_state_up true again: down answers after {:?}",
        start.elapsed()
    );
    Ok(())
}

// ---- floating IPs and SNAT ----------------------------------------------------------------------

/// North-south traffic meets the fixed port's groups. Inbound through floating IP f1 (web on
/// h1): from the internet host, TCP 8080 and 8082 (`remote_ip_prefix` 198.51.100.10/32) are
/// answered and web sees the external source (the rules see the address after DNAT, with the
/// original source), 8081 is dropped at web's tap (`drop_sg_ingress` on h1); from the upstream
/// router's address 10.5.0.1, 8082 is dropped. Outbound through centralized SNAT (cli on h1,
/// no FIP, SNAT host hs): TCP 8443 (egress rule) reaches the internet host as the router's
/// gateway IP, 8444 is dropped at cli's tap before SNAT (`drop_sg_egress` on h1).
#[test]
fn floating_ip_inbound_and_snat_outbound_are_filtered_at_the_fixed_port() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").snat_host("hs").external();
    t.network("a", 4671, "10.61.71.0/24");
    t.router("r1", &["a"]);
    t.security_group(
        SecurityGroupSpec::new("web")
            .rule(RuleSpec::ingress("http").tcp(8080, 8080))
            .rule(
                RuleSpec::ingress("admin")
                    .tcp(8082, 8082)
                    .remote_ip_prefix(&format!("{INTERNET_HOST}/32")),
            ),
    );
    t.security_group(
        SecurityGroupSpec::new("https-out").rule(RuleSpec::egress("https").tcp(8443, 8443)),
    );
    t.vm(VmSpec::new("web", "a", "h1").security_groups(&["web"]))
        .vm(VmSpec::new("cli", "a", "h1").security_groups(&["https-out"]))
        .fip("f1", Some("web"));
    let mut c = t.build()?;
    let fip = c.fip_ip("f1")?;
    use Probe::Tcp;
    let web = c.port_server("web", "web", &[Tcp(8080), Tcp(8081), Tcp(8082)])?;
    let ingress = ("h1", Stat::DropSgIngress);
    let r = check(
        &c,
        &web,
        "web",
        EXT,
        fip,
        Some(INTERNET_HOST),
        &[Tcp(8080), Tcp(8082)],
        &[Tcp(8081)],
        ingress,
    )
    .context("internet host -> FIP")?;
    ensure!(
        r.peer(Tcp(8082)) == Some(INTERNET_HOST),
        "web must see the internet host as the peer: {:?}",
        r.outcome(Tcp(8082))?
    );
    check(
        &c,
        &web,
        "web",
        EXT,
        fip,
        None,
        &[Tcp(8080)],
        &[Tcp(8082)],
        ingress,
    )
    .context("upstream router 10.5.0.1 -> FIP (outside the admin prefix)")?;

    let inet = c.port_server(EXT, "inet", &[Tcp(8443), Tcp(8444)])?;
    let r = check(
        &c,
        &inet,
        "inet",
        "cli",
        INTERNET_HOST,
        None,
        &[Tcp(8443)],
        &[Tcp(8444)],
        ("h1", Stat::DropSgEgress),
    )
    .context("cli -> internet through SNAT")?;
    let gw = c.router_external_ip("r1")?;
    ensure!(
        r.peer(Tcp(8443)) == Some(gw),
        "the internet host must see the router's gateway IP {gw} (SNAT): {:?}",
        r.outcome(Tcp(8443))?
    );
    Ok(())
}

// ---- bad input ----------------------------------------------------------------------------------

/// One invalid security group state: what to change in the good state and what the refusal
/// must name.
struct BadCase {
    name: &'static str,
    /// Each must appear in the refusal (the offending object's id).
    ids: Vec<String>,
    /// One of these must appear in the refusal (the field).
    fields: &'static [&'static str],
    state: Value,
}

/// A rule object of group `group` (Neutron shape), admitting TCP `port`.
fn rule_json(id: &str, group: &str, port: u16) -> Value {
    json!({
        "id": id, "security_group_id": group, "direction": "ingress", "ethertype": "IPv4",
        "protocol": "tcp", "port_range_min": port, "port_range_max": port,
        "remote_ip_prefix": null, "remote_group_id": null, "remote_address_group_id": null,
    })
}

/// Bad security group input is refused as a whole, naming the object and the field, and
/// changes nothing: a running cloud (srv on h2 admitting TCP 8080 from cli on h1) is sent
/// states that each add a valid rule admitting 8081 plus one mistake (port out of range, max
/// below min, unknown protocol or direction, bad prefix, missing remote group / address group /
/// rule group, two remotes, ICMP code without type, ports without a protocol, duplicate rule
/// id, a port naming a missing group, groups on a port without port security, stateful and
/// stateless groups mixed, a non-boolean admin_state_up). Both agents log a refusal naming the
/// rule or port id and the field and keep running; afterwards 8080 is still admitted and 8081
/// still dropped (`drop_sg_ingress`); then the valid rule alone is applied and 8081 admitted.
#[test]
fn bad_security_group_input_is_refused_naming_id_and_field() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4681, "10.61.81.0/24");
    t.security_group(egress_all("client"));
    t.security_group(SecurityGroupSpec::new("web").rule(RuleSpec::ingress("http").tcp(8080, 8080)));
    t.vm(VmSpec::new("srv", "a", "h2").security_groups(&["web"]))
        .vm(VmSpec::new("cli", "a", "h1").security_groups(&["client"]));
    let mut c = t.build()?;
    let srv_ip = c.ip("srv")?;
    use Probe::Tcp;
    let server = c.port_server("srv", "srv", &[Tcp(8080), Tcp(8081)])?;
    let ingress = ("h2", Stat::DropSgIngress);
    check(
        &c,
        &server,
        "srv",
        "cli",
        srv_ip,
        None,
        &[Tcp(8080)],
        &[Tcp(8081)],
        ingress,
    )?;

    let web = c.sg_id("web")?;
    let http = c.rule_id("web", "http")?;
    let srv_port = c.vm("srv")?.port_id.clone();
    let cli_port = c.vm("cli")?.port_id.clone();
    let good = c.state().to_value()?;
    let group_index = good["security_groups"]
        .as_array()
        .and_then(|g| g.iter().position(|g| g["id"] == web.as_str()))
        .context("web not in the state")?;
    let port_index = |id: &str| -> Result<usize> {
        good["ports"]
            .as_array()
            .and_then(|p| p.iter().position(|p| p["id"] == id))
            .with_context(|| format!("port {id} not in the state"))
    };
    let (srv_i, cli_i) = (port_index(&srv_port)?, port_index(&cli_port)?);
    // The good state plus the valid rule admitting 8081, edited by `f`.
    let bad = |f: &dyn Fn(&mut Value)| -> Value {
        let mut v = good.clone();
        if let Some(rules) =
            v["security_groups"][group_index]["security_group_rules"].as_array_mut()
        {
            rules.push(rule_json("sgt-extra-8081", &web, 8081));
        }
        f(&mut v);
        v
    };
    // The good state plus the valid rule and rule `id` (TCP 9000) edited by `edit`.
    let with_rule = |id: &str, edit: &dyn Fn(&mut Value)| -> Value {
        let mut r = rule_json(id, &web, 9000);
        edit(&mut r);
        bad(&|v: &mut Value| {
            if let Some(rules) =
                v["security_groups"][group_index]["security_group_rules"].as_array_mut()
            {
                rules.push(r.clone());
            }
        })
    };
    let cases = vec![
        BadCase {
            name: "port out of range",
            ids: vec!["sgt-bad-min".into()],
            fields: &["port_range_min"],
            state: with_rule("sgt-bad-min", &|r| {
                r["port_range_min"] = 70000.into();
                r["port_range_max"] = 70000.into();
            }),
        },
        BadCase {
            name: "max below min",
            ids: vec!["sgt-bad-order".into()],
            fields: &["port_range_max"],
            state: with_rule("sgt-bad-order", &|r| {
                r["port_range_min"] = 90.into();
                r["port_range_max"] = 80.into();
            }),
        },
        BadCase {
            name: "unknown protocol",
            ids: vec!["sgt-bad-proto".into()],
            fields: &["protocol"],
            state: with_rule("sgt-bad-proto", &|r| r["protocol"] = "bogus".into()),
        },
        BadCase {
            name: "unknown direction",
            ids: vec!["sgt-bad-dir".into()],
            fields: &["direction"],
            state: with_rule("sgt-bad-dir", &|r| r["direction"] = "sideways".into()),
        },
        BadCase {
            name: "bad remote prefix",
            ids: vec!["sgt-bad-prefix".into()],
            fields: &["remote_ip_prefix"],
            state: with_rule("sgt-bad-prefix", &|r| {
                r["remote_ip_prefix"] = "10.0.0.0/33".into();
            }),
        },
        BadCase {
            name: "missing remote group",
            ids: vec!["sgt-bad-rgroup".into()],
            fields: &["remote_group_id"],
            state: with_rule("sgt-bad-rgroup", &|r| {
                r["remote_group_id"] = "no-such-group".into();
            }),
        },
        BadCase {
            name: "missing address group",
            ids: vec!["sgt-bad-ag".into()],
            fields: &["remote_address_group_id"],
            state: with_rule("sgt-bad-ag", &|r| {
                r["remote_address_group_id"] = "no-such-address-group".into();
            }),
        },
        BadCase {
            name: "two remotes",
            ids: vec!["sgt-bad-two".into()],
            fields: &["remote_group_id", "remote_ip_prefix"],
            state: {
                let web = web.clone();
                bad(&move |v: &mut Value| {
                    let mut r = rule_json("sgt-bad-two", &web, 9000);
                    r["remote_ip_prefix"] = "10.0.0.0/8".into();
                    r["remote_group_id"] = web.clone().into();
                    if let Some(rules) =
                        v["security_groups"][group_index]["security_group_rules"].as_array_mut()
                    {
                        rules.push(r);
                    }
                })
            },
        },
        BadCase {
            name: "ICMP code without type",
            ids: vec!["sgt-bad-icmp".into()],
            fields: &["port_range_max"],
            state: with_rule("sgt-bad-icmp", &|r| {
                r["protocol"] = "icmp".into();
                r["port_range_min"] = Value::Null;
                r["port_range_max"] = 0.into();
            }),
        },
        BadCase {
            name: "ports without a protocol",
            ids: vec!["sgt-bad-any".into()],
            fields: &["port_range_min"],
            state: with_rule("sgt-bad-any", &|r| r["protocol"] = Value::Null),
        },
        BadCase {
            name: "duplicate rule id",
            ids: vec![http.clone()],
            fields: &["`id`"],
            state: {
                let (web, http) = (web.clone(), http.clone());
                bad(&move |v: &mut Value| {
                    v["security_group_rules"] = json!([rule_json(&http, &web, 9001)]);
                })
            },
        },
        BadCase {
            name: "top-level rule of a missing group",
            ids: vec!["sgt-bad-orphan".into()],
            fields: &["security_group_id"],
            state: bad(&|v: &mut Value| {
                v["security_group_rules"] =
                    json!([rule_json("sgt-bad-orphan", "no-such-group", 9002)]);
            }),
        },
        BadCase {
            name: "port names a missing group",
            ids: vec![srv_port.clone()],
            fields: &["security_groups"],
            state: {
                let web = web.clone();
                bad(&move |v: &mut Value| {
                    v["ports"][srv_i]["security_groups"] = json!([web, "no-such-group"]);
                })
            },
        },
        BadCase {
            name: "groups without port security",
            ids: vec![cli_port.clone()],
            fields: &["security_groups", "port_security_enabled"],
            state: bad(&|v: &mut Value| {
                v["ports"][cli_i]["port_security_enabled"] = false.into();
            }),
        },
        BadCase {
            name: "stateful and stateless mixed",
            ids: vec![srv_port.clone()],
            fields: &["security_groups"],
            state: {
                let web = web.clone();
                bad(&move |v: &mut Value| {
                    if let Some(g) = v["security_groups"].as_array_mut() {
                        g.push(
                            json!({"id": "sgt-stateless", "name": "sl", "stateful": false,
                                      "security_group_rules": []}),
                        );
                    }
                    v["ports"][srv_i]["security_groups"] = json!([web, "sgt-stateless"]);
                })
            },
        },
        BadCase {
            name: "admin_state_up not a boolean",
            ids: vec![srv_port.clone()],
            fields: &["admin_state_up"],
            state: bad(&|v: &mut Value| {
                v["ports"][srv_i]["admin_state_up"] = "down".into();
            }),
        },
    ];

    let start = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        let refusals = match c.refused_after(&["h1", "h2"], |c| c.write_raw_state(&case.state)) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e:#}", case.name));
                continue;
            }
        };
        for (h, text) in &refusals {
            let missing_ids: Vec<_> = case
                .ids
                .iter()
                .filter(|id| !text.contains(id.as_str()))
                .collect();
            let has_field = case.fields.iter().any(|f| text.contains(f));
            let verdict = if !missing_ids.is_empty() {
                Some(format!("does not name {missing_ids:?}"))
            } else if !has_field {
                Some(format!("names none of the fields {:?}", case.fields))
            } else {
                None
            };
            eprintln!(
                "{:<34} {h}: {}",
                case.name,
                if verdict.is_none() {
                    "refused, ok"
                } else {
                    "FAIL"
                }
            );
            if let Some(v) = verdict {
                failures.push(format!("{} ({h}): the refusal {v}:\n{text}", case.name));
            }
        }
    }
    eprintln!(
        "{} bad states refused in {:?}",
        cases.len(),
        start.elapsed()
    );
    if !failures.is_empty() {
        bail!(
            "{} bad state(s) not refused properly:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    // Nothing changed: the rule in the refused states did not apply.
    check(
        &c,
        &server,
        "srv",
        "cli",
        srv_ip,
        None,
        &[Tcp(8080)],
        &[Tcp(8081)],
        ingress,
    )
    .context("after the refused states")?;
    // The agents keep serving: a valid change applies.
    c.apply_and_wait(&["h2"], |c| {
        c.add_rule("web", RuleSpec::ingress("extra").tcp(8081, 8081))
    })?;
    check(
        &c,
        &server,
        "srv",
        "cli",
        srv_ip,
        None,
        &[Tcp(8080), Tcp(8081)],
        &[],
        ingress,
    )
    .context("after a valid change following the refused ones")?;
    Ok(())
}
