//! Centralized SNAT integration tests: VMs without a floating IP reach the external network
//! through the router's SNAT host (`agent_mode: dvr_snat`), which port-address translates them
//! to the router's gateway IP; `dvr_no_external` hosts whose floating IPs are served on the
//! SNAT host; a keepalived VIP with a floating IP. Each test builds its own cloud (compute
//! hosts h1, h2 and the SNAT host hs, plus the external namespace with the upstream router
//! 10.5.0.1 and the "internet host" 198.51.100.10) and asserts what can be observed from
//! outside the agent: replies, the peer addresses servers see, captures on `br-ext`, in VMs and
//! on the underlay, `dvrctl show stats|snat|vips|fips|conntrack --json`, the agent's log.
//!
//! Needs root, bpffs, tcpdump, socat, arping, python3-scapy, keepalived and the built agent
//! (`cargo build -p dvr-userspace`); fails with a clear message otherwise. Run with
//! `--test-threads=1`.
//!
//! Negative assertions use sentinels instead of sleeps: after the traffic that must not arrive,
//! legitimate traffic is sent along the same path and awaited (or a counter that only the
//! dropped packets move is awaited).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::external::Bg;
use dvr_tests::snat::{busiest, icmp_echo_id};
use dvr_tests::{
    ArpFrame, Cloud, Counters, EXT, EXT_GATEWAY, INTERNET_HOST, KeepalivedConf, Packet, Topology,
    VmSpec, all_ttl, require_preconditions,
};
use dvr_userspace::compile::fnv1a32;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

/// The non-zero counters of `host` (for failure messages).
fn nonzero(c: &Cloud, host: &str) -> BTreeMap<String, u64> {
    c.stats(host)
        .map(|m| m.into_iter().filter(|(_, v)| *v > 0).collect())
        .unwrap_or_default()
}

/// Compute hosts h1 and h2, the SNAT host hs, the external network, network "a" (VNI `vni`,
/// 172.20.`octet`.0/24) and, with `two_nets`, "b" (`vni` + 1, 172.20.(`octet` + 1).0/24), both
/// on router r1.
fn base_topology(vni: u32, octet: u8, two_nets: bool) -> Topology {
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("hs").external();
    t.network("a", vni, &format!("172.20.{octet}.0/24"));
    if two_nets {
        t.network("b", vni + 1, &format!("172.20.{}.0/24", octet + 1));
        t.router("r1", &["a", "b"]);
    } else {
        t.router("r1", &["a"]);
    }
    t
}

/// A threaded TCP echo server: prints "listening", then "peer <ip>:<port>" per connection.
const PEER_ECHO_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1024)
print("listening", flush=True)
lock = threading.Lock()
def serve(c, a):
    with lock:
        print("peer %s:%d" % a, flush=True)
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"#;

/// Opens `argv[4]` TCP connections to `argv[1]:argv[2]` (bound to source ports `argv[3]` + i,
/// or any when 0), checks one echo on each, prints "conn <i> <local port>" and "ready <n>" (or
/// "error <i> <reason>" and exits 1); then for each stdin line echoes once more on every
/// connection and prints "echoed <ok>"; at EOF closes them and prints "closed".
const MULTI_CLIENT: &str = r#"
import socket, sys
dst, port, sport0, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
def echo(s, msg):
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = s.recv(100)
        if not d:
            break
        got += d
    return got == msg
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport0:
        s.bind(("0.0.0.0", sport0 + i))
    s.settimeout(timeout)
    try:
        s.connect((dst, port))
        if not echo(s, b"hello %d\n" % i):
            raise OSError("echo mismatch")
    except OSError as e:
        print("error", i, e, flush=True)
        sys.exit(1)
    socks.append(s)
    print("conn", i, s.getsockname()[1], flush=True)
print("ready", len(socks), flush=True)
for line in sys.stdin:
    ok = 0
    for i, s in enumerate(socks):
        try:
            ok += echo(s, b"again %d\n" % i)
        except OSError as e:
            print("echo error", i, e, flush=True)
    print("echoed", ok, flush=True)
for s in socks:
    s.close()
print("closed", flush=True)
"#;

/// The "peer ip:port" lines of [`PEER_ECHO_SERVER`] (or the UDP echo server).
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

/// Starts [`PEER_ECHO_SERVER`] in the external namespace on `port`.
fn peer_echo_server(c: &mut Cloud, port: u16) -> Result<Bg> {
    let mut bg = c.spawn_python(EXT, PEER_ECHO_SERVER, &[&port.to_string()])?;
    bg.wait_stdout("listening", WAIT, |o| o.contains("listening"))?;
    c.wait_listening(EXT, false, port, WAIT)?;
    Ok(bg)
}

/// Starts [`MULTI_CLIENT`] in `vm` (in the background).
fn multi_client(
    c: &mut Cloud,
    vm: &str,
    dst: Ipv4Addr,
    port: u16,
    sport0: u16,
    n: usize,
) -> Result<Bg> {
    c.spawn_python(
        vm,
        MULTI_CLIENT,
        &[
            &s(dst),
            &port.to_string(),
            &sport0.to_string(),
            &n.to_string(),
        ],
    )
}

/// Waits until a [`MULTI_CLIENT`] printed "ready <n>".
fn wait_ready(bg: &mut Bg, n: usize, deadline: Duration) -> Result<()> {
    let want = format!("ready {n}");
    bg.wait_stdout(&want.clone(), deadline, move |o| o.contains(&want))?;
    Ok(())
}

// ---- outbound through the SNAT host -----------------------------------------------------------

#[test]
fn vms_without_fip_reach_outside_as_the_router_gateway_ip() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(4101, 1, true);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let gw = c.router_external_ip("r1")?;
    let hs = c.host("hs")?.clone();
    let hs_mac = c.ext_mac("hs")?;
    let upstream_mac = c.ext_bridge_mac()?;
    let (csnat_a, csnat_b) = (c.csnat("a")?.clone(), c.csnat("b")?.clone());
    let router_hash = format!("{:08x}", fnv1a32(c.router_id("r1")?));

    // The agents' view: hs translates for r1; h1 and h2 steer to hs, to the csnat MACs.
    let row = c
        .snat_row("hs", "r1")?
        .context("hs lists no SNAT row for r1")?;
    ensure!(
        row["router_id"] == router_hash.as_str()
            && row["enabled"] == true
            && row["next_hop"] == s(EXT_GATEWAY).as_str(),
        "hs's SNAT row for r1 must name router {router_hash}, enabled, next hop 10.5.0.1: {row}"
    );
    for (h, vm, net, csnat) in [("h1", &v1, "a", &csnat_a), ("h2", &v2, "b", &csnat_b)] {
        let vni = c.network(net)?.vni;
        let gw_mac = c.gateway_mac(net)?;
        let rows = c.snat_steering(h)?;
        ensure!(
            rows.iter().any(|r| r["vni"] == vni
                && r["gateway_mac"] == gw_mac.as_str()
                && r["snat_host"] == s(hs.tunnel_ip).as_str()
                && r["csnat_mac"] == csnat.mac.as_str()
                && r["router_id"] == router_hash.as_str()
                && r["enabled"] == true),
            "{h} must steer {}'s network {net} (VNI {vni}) to hs {} at csnat MAC {}: {rows:?}",
            vm.name,
            hs.tunnel_ip,
            csnat.mac
        );
    }
    let before = Counters::take(&c, &["h1", "h2", "hs"])?;

    let under = c.capture_uplink("hs", "udp port 4789")?;
    let at_ext = c.capture_ext("icmp")?;
    let mut echoes = 0;
    for vm in ["v1", "v2"] {
        for dst in [INTERNET_HOST, EXT_GATEWAY] {
            let p = c.ping_ok(vm, dst, 3)?;
            echoes += 3;
            ensure!(
                p.reply_from.iter().all(|f| *f == s(dst)),
                "{vm}: replies must come from {dst}: {:?}",
                p.reply_from
            );
            ensure!(
                all_ttl(&p.ttls, 63),
                "{vm}: reply TTL from {dst} must be 63 (one routing hop, on hs): {:?}",
                p.ttls
            );
        }
    }
    let req = at_ext.wait_for_count("12 echo requests from the gateway IP", 12, WAIT, |p| {
        p.is_icmp_echo_request() && p.contains(&format!("{gw} > "))
    })?;
    for p in &req {
        ensure!(
            p.outer_eth() == Some((hs_mac.clone(), upstream_mac.clone())),
            "SNATed requests must leave hs's ext0 {hs_mac} to the upstream MAC {upstream_mac}: {p}"
        );
        ensure!(
            p.ttls() == vec![63],
            "SNATed requests leave with TTL 63: {p}"
        );
    }
    let ext_packets = at_ext.stop()?;
    let leaked: Vec<_> = ext_packets
        .iter()
        .filter(|p| p.contains(&s(v1.ip)) || p.contains(&s(v2.ip)))
        .collect();
    ensure!(
        leaked.is_empty(),
        "fixed IPs must never appear on the external network: {leaked:#?}"
    );
    let other_sources: Vec<_> = ext_packets
        .iter()
        .filter(|p| p.is_icmp_echo_request() && !p.contains(&format!("{gw} > ")))
        .collect();
    ensure!(
        other_sources.is_empty(),
        "the external network must see only the gateway IP {gw} as source: {other_sources:#?}"
    );

    // The underlay at hs: steered frames come from the VM's host with the VM network's VNI,
    // the csnat MAC as inner destination and the host's DVR MAC as inner source; replies go
    // from hs straight to the VM's host, to the VM's MAC.
    let packets = under.stop()?;
    for (vm, host, net, csnat) in [(&v1, "h1", "a", &csnat_a), (&v2, "h2", "b", &csnat_b)] {
        let h = c.host(host)?;
        let vni = c.network(net)?.vni;
        let steered: Vec<&Packet> = packets
            .iter()
            .filter(|p| p.is_icmp_echo_request() && p.contains(&format!("{} > ", vm.ip)))
            .collect();
        ensure!(
            steered.len() == 6,
            "want 6 steered echo requests of {} on hs's uplink, saw {}: {steered:#?}",
            vm.name,
            steered.len()
        );
        for p in &steered {
            ensure!(
                p.contains(&format!("{}.", h.tunnel_ip))
                    && p.contains(&format!(" > {}.4789: VXLAN", hs.tunnel_ip)),
                "steered frames of {} must go {} -> {}:4789: {p}",
                vm.name,
                h.tunnel_ip,
                hs.tunnel_ip
            );
            ensure!(
                p.vni() == Some(vni),
                "steered frames of {} must carry VNI {vni}: {p}",
                vm.name
            );
            ensure!(
                p.inner_eth() == Some((h.dvr_mac.clone(), csnat.mac.clone())),
                "steered frames of {} must go from {host}'s DVR MAC {} to the csnat MAC {}: {p}",
                vm.name,
                h.dvr_mac,
                csnat.mac
            );
        }
        let replies: Vec<&Packet> = packets
            .iter()
            .filter(|p| p.is_icmp_echo_reply() && p.contains(&format!(" > {}: ICMP", vm.ip)))
            .collect();
        ensure!(
            replies.len() == 6,
            "want 6 echo replies for {} from hs on the underlay, saw {}: {replies:#?}",
            vm.name,
            replies.len()
        );
        for p in &replies {
            ensure!(
                p.contains(&format!("{}.", hs.tunnel_ip))
                    && p.contains(&format!(" > {}.4789: VXLAN", h.tunnel_ip))
                    && p.vni() == Some(vni)
                    && p.inner_eth().map(|e| e.1) == Some(vm.mac.clone()),
                "replies for {} must go from hs straight to {host} ({}) with VNI {vni} to its \
                 MAC {}: {p}",
                vm.name,
                h.tunnel_ip,
                vm.mac
            );
        }
    }

    // TCP with content checked; the servers see the gateway IP.
    for (vm, dst, port) in [("v1", INTERNET_HOST, 5301), ("v2", EXT_GATEWAY, 5302)] {
        let rep = c.tcp_transfer_to(vm, EXT, dst, port, 2 * MIB, None)?;
        eprintln!(
            "TCP {vm} -> {dst}:{port} via SNAT: {} bytes in {:?}, server saw {:?}",
            rep.bytes, rep.elapsed, rep.peer
        );
        ensure!(
            rep.peer.map(|p| *p.ip()) == Some(gw),
            "the external server must see the gateway IP {gw} as client of {vm}, saw {:?}",
            rep.peer
        );
    }

    let n = u64::try_from(echoes)?;
    let steered1 = before.delta(&c, "h1", Stat::SnatSteered)?;
    let steered2 = before.delta(&c, "h2", Stat::SnatSteered)?;
    let out = before.delta(&c, "hs", Stat::SnatOut)?;
    let back = before.delta(&c, "hs", Stat::SnatIn)?;
    eprintln!("snat_steered h1 +{steered1} h2 +{steered2}; hs snat_out +{out} snat_in +{back}");
    ensure!(
        steered1 >= n / 2 && steered2 >= n / 2,
        "snat_steered must count every steered packet: h1 +{steered1}, h2 +{steered2} (>= {})",
        n / 2
    );
    ensure!(
        out >= steered1 + steered2 && back >= n,
        "hs must translate every steered packet out (snat_out +{out} >= {}) and the replies back \
         (snat_in +{back} >= {n})",
        steered1 + steered2
    );
    let hs_steered = before.delta(&c, "hs", Stat::SnatSteered)?;
    ensure!(hs_steered == 0, "hs steered {hs_steered} packets itself");
    Ok(())
}

// ---- port-address translation -----------------------------------------------------------------

#[test]
fn two_hundred_flows_through_one_gateway_ip_get_distinct_ports() -> Result<()> {
    require_preconditions();
    const VMS: usize = 10;
    const PER_VM: usize = 20;
    const PORT: u16 = 7500;
    // Every VM uses the same 20 source ports: each original port collides ten times.
    const SPORT0: u16 = 40100;
    let mut t = base_topology(4111, 11, true);
    for i in 0..VMS {
        let net = if i < VMS / 2 { "a" } else { "b" };
        let host = if i % 2 == 0 { "h1" } else { "h2" };
        t.vm(VmSpec::new(&format!("v{i}"), net, host));
    }
    let mut c = t.build()?;
    let gw = c.router_external_ip("r1")?;
    let server = peer_echo_server(&mut c, PORT)?;

    let start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..VMS {
        clients.push(multi_client(
            &mut c,
            &format!("v{i}"),
            INTERNET_HOST,
            PORT,
            SPORT0,
            PER_VM,
        )?);
    }
    for bg in &mut clients {
        wait_ready(bg, PER_VM, Duration::from_secs(60))?;
    }
    eprintln!(
        "{} connections from {VMS} VMs established in {:?}",
        VMS * PER_VM,
        start.elapsed()
    );

    let seen = peers(&server.stdout());
    ensure!(
        seen.len() == VMS * PER_VM,
        "the server must see {} connections, saw {}",
        VMS * PER_VM,
        seen.len()
    );
    let sources: BTreeSet<Ipv4Addr> = seen.iter().map(|p| *p.ip()).collect();
    ensure!(
        sources == BTreeSet::from([gw]),
        "every connection must come from the gateway IP {gw}: {sources:?}"
    );
    let ports: BTreeSet<u16> = seen.iter().map(SocketAddrV4::port).collect();
    ensure!(
        ports.len() == VMS * PER_VM,
        "no two flows may share an external port: {} distinct of {}",
        ports.len(),
        seen.len()
    );
    let kept = ports
        .iter()
        .filter(|p| (SPORT0..SPORT0 + PER_VM as u16).contains(p))
        .count();
    eprintln!(
        "200 connections, 200 distinct external ports ({kept} kept their original port, range \
         {}..={})",
        ports.first().copied().unwrap_or(0),
        ports.last().copied().unwrap_or(0)
    );

    let flows: Vec<Value> = c
        .pat_flows("hs", "r1")?
        .into_iter()
        .filter(|e| e["proto"] == "tcp" && e["dst"] == s(INTERNET_HOST).as_str())
        .collect();
    let ct_ports: BTreeSet<u16> = flows
        .iter()
        .filter_map(|e| e["nat_port"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    ensure!(
        flows.len() == VMS * PER_VM && ct_ports == ports,
        "hs's conntrack must show {} PAT mappings with the ports the server saw: {} entries, \
         {} ports, same set: {}",
        VMS * PER_VM,
        flows.len(),
        ct_ports.len(),
        ct_ports == ports
    );
    // The reply direction of each mapping: from the server to the gateway IP's port.
    let replies: BTreeSet<u16> = c
        .conntrack("hs")?
        .into_iter()
        .filter(|e| {
            e["proto"] == "tcp"
                && e["nat"] == "dnat"
                && e["pat"] == true
                && e["src"] == s(INTERNET_HOST).as_str()
                && e["sport"] == PORT
                && e["dst"] == s(gw).as_str()
        })
        .filter_map(|e| e["dport"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    ensure!(
        replies == ports,
        "hs must track the reply direction of every mapping: {} reply entries, same ports: {}",
        replies.len(),
        replies == ports
    );
    let row = c.snat_row("hs", "r1")?.context("no SNAT row for r1")?;
    let dst = format!("{INTERNET_HOST}:{PORT}/tcp");
    ensure!(
        row["flows"].as_u64() == Some(u64::try_from(VMS * PER_VM)?)
            && busiest(&row)?.first() == Some(&(dst.clone(), u64::try_from(VMS * PER_VM)?)),
        "show snat must count {} flows, busiest destination {dst}: {row}",
        VMS * PER_VM
    );

    // Every connection still carries data both ways.
    for bg in &mut clients {
        bg.write_stdin(b"echo\n")?;
    }
    for bg in &mut clients {
        let want = format!("echoed {PER_VM}");
        bg.wait_stdout(&want.clone(), Duration::from_secs(20), move |o| {
            o.contains(&want)
        })?;
    }
    for bg in &mut clients {
        bg.close_stdin();
    }
    for bg in &mut clients {
        bg.wait_stdout("closed", Duration::from_secs(20), |o| o.contains("closed"))?;
    }
    Ok(())
}

/// Sends `argv[3]` ICMP echo requests with id `argv[2]` to `argv[1]` from a raw socket, 200 ms
/// apart, payload "dvr-tests-<argv[4]>", and prints "reply id <id> seq <seq> payload <p>" for
/// each echo reply from the destination, then "sent <n> got <distinct seqs with our id>".
const ICMP_FIXED_ID: &str = r#"
import socket, struct, sys, time
dst, ident, count, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return (~s) & 0xffff
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
r.settimeout(0.05)
payload = ("dvr-tests-%s" % tag).encode()
got = set()
deadline = time.time() + 10
sent = 0
next_send = time.time()
while time.time() < deadline and len(got) < count:
    if sent < count and time.time() >= next_send:
        sent += 1
        h = struct.pack("!BBHHH", 8, 0, 0, ident, sent) + payload
        r.sendto(struct.pack("!BBHHH", 8, 0, csum(h), ident, sent) + payload, (dst, 0))
        next_send = time.time() + 0.2
    try:
        d, a = r.recvfrom(2048)
    except socket.timeout:
        continue
    ihl = (d[0] & 0xf) * 4
    t, code, _, rid, seq = struct.unpack("!BBHHH", d[ihl:ihl + 8])
    if t == 0 and a[0] == dst:
        print("reply id %d seq %d payload %s" % (rid, seq, d[ihl + 8:].decode(errors="replace")), flush=True)
        if rid == ident:
            got.add(seq)
print("sent %d got %d" % (sent, len(got)), flush=True)
"#;

#[test]
fn icmp_echo_with_one_id_from_several_vms_gets_distinct_ids() -> Result<()> {
    require_preconditions();
    const ID: u16 = 40000;
    const COUNT: usize = 5;
    let mut t = base_topology(4121, 21, false);
    let vms = ["v1", "v2", "v3", "v4"];
    for (i, vm) in vms.iter().enumerate() {
        t.vm(VmSpec::new(vm, "a", if i % 2 == 0 { "h1" } else { "h2" }));
    }
    let mut c = t.build()?;
    let gw = c.router_external_ip("r1")?;

    let at_ext = c.capture_ext("icmp")?;
    let mut pingers = Vec::new();
    for vm in vms {
        pingers.push((
            vm,
            c.spawn_python(
                vm,
                ICMP_FIXED_ID,
                &[&s(INTERNET_HOST), &ID.to_string(), &COUNT.to_string(), vm],
            )?,
        ));
    }
    for (vm, bg) in &mut pingers {
        let out = bg.wait_stdout("its summary", Duration::from_secs(20), |o| {
            o.contains("sent ")
        })?;
        let want = format!("sent {COUNT} got {COUNT}");
        ensure!(
            out.contains(&want),
            "{vm} must get a reply to each of its {COUNT} echoes with id {ID}: {out}"
        );
        let replies: Vec<&str> = out.lines().filter(|l| l.starts_with("reply ")).collect();
        let own = format!("reply id {ID} seq ");
        let tag = format!("payload dvr-tests-{vm}");
        ensure!(
            replies.len() == COUNT
                && replies
                    .iter()
                    .all(|l| l.starts_with(&own) && l.ends_with(&tag)),
            "{vm} must receive exactly its own {COUNT} replies, with its id {ID} restored: \
             {replies:#?}"
        );
    }
    let all = vms.len() * COUNT;
    let req = at_ext.wait_for_count("every echo request from the gateway IP", all, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(gw), &s(INTERNET_HOST))
    })?;
    let rep = at_ext.wait_for_count("every echo reply to the gateway IP", all, WAIT, |p| {
        p.is_icmp_echo_reply() && p.has_ips(&s(INTERNET_HOST), &s(gw))
    })?;
    let mut per_id: BTreeMap<u16, usize> = BTreeMap::new();
    for p in &req {
        let id = icmp_echo_id(p).with_context(|| format!("no echo id in {p}"))?;
        *per_id.entry(id).or_default() += 1;
    }
    eprintln!("external ids (id: requests): {per_id:?}");
    ensure!(
        per_id.len() == vms.len() && per_id.values().all(|n| *n == COUNT),
        "{} VMs pinging with id {ID} must show as {} distinct ids with {COUNT} requests each \
         outside: {per_id:?}",
        vms.len(),
        vms.len()
    );
    let reply_ids: BTreeSet<u16> = rep.iter().filter_map(icmp_echo_id).collect();
    ensure!(
        reply_ids == per_id.keys().copied().collect(),
        "the replies must carry the translated ids {per_id:?}: {reply_ids:?}"
    );
    at_ext.stop()?;
    let icmp: Vec<Value> = c
        .pat_flows("hs", "r1")?
        .into_iter()
        .filter(|e| e["proto"] == "icmp")
        .collect();
    let ct_ids: BTreeSet<u64> = icmp.iter().filter_map(|e| e["nat_port"].as_u64()).collect();
    ensure!(
        icmp.len() == vms.len()
            && ct_ids
                == per_id
                    .keys()
                    .map(|k| u64::from(*k))
                    .collect::<BTreeSet<_>>(),
        "hs's conntrack must hold one ICMP PAT mapping per VM with the ids seen outside: {icmp:?}"
    );
    Ok(())
}

// ---- conntrack timeouts -----------------------------------------------------------------------

/// Sends `argv[4]` datagrams from one socket bound to `argv[3]` to `argv[1]:argv[2]`, 500 ms
/// apart, each awaited (1 s), printing "reply <i> <ip>:<port>" or "lost <i>"; exits right
/// after the last reply.
const UDP_STEADY: &str = r#"
import socket, sys, time
dst, port, sport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
s.settimeout(1.0)
for i in range(n):
    s.sendto(b"steady %d" % i, (dst, port))
    try:
        d, a = s.recvfrom(100)
        print("reply %d %s:%d" % (i, a[0], a[1]), flush=True)
    except socket.timeout:
        print("lost %d" % i, flush=True)
    if i < n - 1:
        time.sleep(0.5)
"#;

#[test]
fn snat_conntrack_entries_expire_after_their_protocol_timeout_but_not_while_active() -> Result<()> {
    require_preconditions();
    const PORT: u16 = 7401;
    const SPORT: u16 = 45001;
    let mut t = base_topology(4131, 31, false);
    // ICMP gets a longer timeout than UDP: the timeouts are per protocol.
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .host_agent_args(
            "hs",
            &[
                "--ct-timeout-udp",
                "2",
                "--ct-timeout-icmp",
                "5",
                "--ct-gc-interval-ms",
                "200",
            ],
        );
    let mut c = t.build()?;
    let gw = c.router_external_ip("r1")?;
    // The echo server's socket is bound to 0.0.0.0: its replies come from the address of
    // the route back (10.5.0.1 on br-ext), so the flow goes to that address.
    let server = c.udp_echo_server(EXT, PORT)?;
    let pat = |c: &Cloud, proto: &str| -> Result<Vec<Value>> {
        let ip = s(gw);
        Ok(c.conntrack("hs")?
            .into_iter()
            .filter(|e| e["proto"] == proto && e["pat"] == true)
            .filter(|e| e["nat_ip"] == ip.as_str() || e["fip"] == ip.as_str())
            .collect())
    };
    let udp = |c: &Cloud| pat(c, "udp");

    // Active for 4.5 s (> the 2 s timeout): one mapping throughout.
    let out = c.python(
        "v1",
        UDP_STEADY,
        &[&s(EXT_GATEWAY), &PORT.to_string(), &SPORT.to_string(), "10"],
        Duration::from_secs(30),
    )?;
    let last_packet = Instant::now();
    // One echo right after: its entries must outlive the UDP ones.
    c.ping_ok("v1", EXT_GATEWAY, 1)?;
    let echo_at = Instant::now();
    let o = cmd::text(&out);
    let replies = o.lines().filter(|l| l.starts_with("reply ")).count();
    ensure!(
        replies == 10 && o.lines().all(|l| !l.starts_with("lost")),
        "every datagram of the steady flow must be answered: {o}\nserver: {}\nhs stats: {:?}\nh1 \
         stats: {:?}\nhs conntrack: {:?}",
        server.stdout(),
        nonzero(&c, "hs"),
        nonzero(&c, "h1"),
        c.conntrack("hs")
    );
    let seen = peers(&server.stdout());
    let distinct: BTreeSet<SocketAddrV4> = seen.iter().copied().collect();
    ensure!(
        seen.len() == 10 && distinct.len() == 1 && distinct.iter().all(|p| *p.ip() == gw),
        "an active flow keeps one mapping past the 2 s timeout: the server saw {distinct:?} ({} \
         datagrams)",
        seen.len()
    );
    let ct = udp(&c)?;
    let v1 = s(c.ip("v1")?);
    ensure!(
        ct.len() == 2
            && ct.iter().any(|e| e["nat"] == "snat"
                && e["src"] == v1.as_str()
                && e["sport"] == SPORT
                && e["dst"] == s(EXT_GATEWAY).as_str()
                && e["nat_port"].as_u64() == distinct.first().map(|p| u64::from(p.port())))
            && ct
                .iter()
                .any(|e| e["nat"] == "dnat" && e["src"] == s(EXT_GATEWAY).as_str()),
        "one UDP flow must be two PAT entries on hs right after the exchange: {ct:?}"
    );

    wait_until(
        "the UDP PAT entries to expire",
        Duration::from_secs(10),
        |why| {
            let left = udp(&c)?;
            *why = format!("{left:?}");
            Ok(left.is_empty().then_some(()))
        },
    )?;
    let gone_after = last_packet.elapsed();
    eprintln!(
        "SNAT UDP entries gone {gone_after:?} after the last packet (timeout 2 s, GC 200 ms)"
    );
    // The last packet was a little before the script exited (its exit and `ip netns exec`).
    if gone_after < Duration::from_millis(1800) {
        bail!("UDP entries vanished after {gone_after:?}, before the 2 s timeout");
    }
    if gone_after > Duration::from_secs(4) {
        bail!("UDP entries lingered {gone_after:?} (timeout 2 s, GC every 200 ms)");
    }
    let icmp = pat(&c, "icmp")?;
    ensure!(
        icmp.len() == 2,
        "the ICMP flow (timeout 5 s) must outlive the UDP one (2 s): {icmp:?}"
    );
    wait_until(
        "the ICMP PAT entries to expire",
        Duration::from_secs(15),
        |why| {
            let left = pat(&c, "icmp")?;
            *why = format!("{left:?}");
            Ok(left.is_empty().then_some(()))
        },
    )?;
    let icmp_gone = echo_at.elapsed();
    eprintln!("SNAT ICMP entries gone {icmp_gone:?} after the echo (timeout 5 s)");
    if icmp_gone < Duration::from_millis(4800) || icmp_gone > Duration::from_secs(8) {
        bail!("ICMP entries expired {icmp_gone:?} after the echo, want about 5 s");
    }
    let row = c.snat_row("hs", "r1")?.context("no SNAT row")?;
    ensure!(
        row["flows"] == 0,
        "show snat must count no flows now: {row}"
    );

    // The same source again: a fresh mapping works.
    let r = c.udp_request("v1", EXT_GATEWAY, PORT, b"again", None, 3)?;
    ensure!(
        r.from == SocketAddrV4::new(EXT_GATEWAY, PORT) && r.payload == b"again",
        "a new flow after the expiry must work: {r:?}"
    );
    ensure!(udp(&c)?.len() == 2, "the new flow must be tracked again");
    Ok(())
}

// ---- exhaustion -------------------------------------------------------------------------------

#[test]
fn exhausted_port_range_refuses_new_flows_keeps_old_ones_and_other_destinations() -> Result<()> {
    require_preconditions();
    const PORT: u16 = 7600;
    let mut t = base_topology(4141, 41, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .host_agent_args("hs", &["--snat-ports", "40000-40003"]);
    let mut c = t.build()?;
    let gw = c.router_external_ip("r1")?;
    let router_uuid = c.router_id("r1")?.to_string();
    let range = 40000..=40003u16;
    let server = peer_echo_server(&mut c, PORT)?;

    // Fill the range for 198.51.100.10:7600/tcp: two connections from each VM.
    let mut held = Vec::new();
    for vm in ["v1", "v2"] {
        let mut bg = multi_client(&mut c, vm, INTERNET_HOST, PORT, 0, 2)?;
        wait_ready(&mut bg, 2, Duration::from_secs(20))?;
        held.push(bg);
    }
    let seen = peers(&server.stdout());
    let ports: BTreeSet<u16> = seen.iter().map(SocketAddrV4::port).collect();
    ensure!(
        seen.len() == 4
            && seen.iter().all(|p| *p.ip() == gw)
            && ports.len() == 4
            && ports.iter().all(|p| range.contains(p)),
        "4 connections must use the 4 ports 40000-40003 of {gw}: {seen:?}"
    );
    let before = Counters::take(&c, &["hs"])?;

    // A fifth flow to the same destination is refused.
    let out = c.python(
        "v1",
        MULTI_CLIENT,
        &[&s(INTERNET_HOST), &PORT.to_string(), "0", "1", "2"],
        Duration::from_secs(20),
    )?;
    let o = cmd::text(&out);
    ensure!(
        !out.status.success() && o.contains("error 0"),
        "a fifth connection to {INTERNET_HOST}:{PORT} must fail with the range full: {o}"
    );
    let refused = before.wait_delta(&c, "hs", Stat::DropSnatExhausted, 1)?;
    let row = c.snat_row("hs", "r1")?.context("no SNAT row")?;
    let dst = format!("{INTERNET_HOST}:{PORT}/tcp");
    ensure!(
        row["exhausted"].as_u64().is_some_and(|n| n >= refused)
            && row["flows"] == 4
            && busiest(&row)?.first() == Some(&(dst.clone(), 4)),
        "show snat must count the refused packets (drop_snat_exhausted +{refused}) and 4 flows \
         to {dst}: {row}"
    );
    ensure!(
        peers(&server.stdout()).len() == 4,
        "the refused flow must not reach the server"
    );
    c.wait_agent_log("hs", "SNAT port range exhausted", WAIT)?;
    let log = c.agent_log("hs")?;
    let line = log
        .lines()
        .find(|l| l.contains("SNAT port range exhausted"))
        .context("no exhaustion line")?;
    ensure!(
        line.contains("WARN") && line.contains(&format!("router={router_uuid}")),
        "the exhaustion warning must name router {router_uuid}: {line}"
    );
    eprintln!(
        "refused: drop_snat_exhausted +{refused}, show snat exhausted {}; log: {line}",
        row["exhausted"]
    );

    // Existing flows keep working.
    for bg in &mut held {
        bg.write_stdin(b"echo\n")?;
        bg.wait_stdout("both connections echoed", WAIT, |o| o.contains("echoed 2"))?;
    }
    // Another destination has its own range.
    for (dst, port) in [(EXT_GATEWAY, PORT), (INTERNET_HOST, PORT + 1)] {
        let _other = if port == PORT {
            None
        } else {
            Some(peer_echo_server(&mut c, port)?)
        };
        let out = c.python(
            "v1",
            MULTI_CLIENT,
            &[&s(dst), &port.to_string(), "0", "1", "5"],
            Duration::from_secs(20),
        )?;
        let o = cmd::text(&out);
        ensure!(
            out.status.success() && o.contains("ready 1"),
            "a flow to another destination {dst}:{port} must work with the range full for \
             {INTERNET_HOST}:{PORT}: {o}"
        );
    }
    let flows = c.pat_flows("hs", "r1")?;
    let other: Vec<&Value> = flows
        .iter()
        .filter(|e| {
            e["dst"] == s(EXT_GATEWAY).as_str()
                || (e["dst"] == s(INTERNET_HOST).as_str() && e["dport"] == PORT + 1)
        })
        .collect();
    ensure!(
        other.iter().all(|e| e["nat_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .is_some_and(|p| range.contains(&p))),
        "flows to other destinations use the same range: {other:?}"
    );
    for bg in &mut held {
        bg.close_stdin();
        bg.wait_stdout("closed", WAIT, |o| o.contains("closed"))?;
    }
    Ok(())
}

// ---- enable_snat false ------------------------------------------------------------------------

#[test]
fn router_without_snat_gives_no_outbound_access() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("hs").external();
    t.network("a", 4151, "172.20.51.0/24")
        .network("b", 4152, "172.20.52.0/24");
    t.router("r1", &["a"])
        .router("r2", &["b"])
        .enable_snat("r2", false);
    t.vm(VmSpec::new("va", "a", "h1"))
        .vm(VmSpec::new("vb", "b", "h1"))
        .vm(VmSpec::new("vb2", "b", "h2"));
    let mut c = t.build()?;
    let (va, vb) = (c.ip("va")?, c.ip("vb")?);
    let (gw1, gw2) = (c.router_external_ip("r1")?, c.router_external_ip("r2")?);
    let vni_b = c.network("b")?.vni;
    let rows = c.snat_steering("h1")?;
    ensure!(
        rows.iter()
            .any(|r| r["vni"] == vni_b && r["enabled"] == false),
        "h1 must list r2's steering as disabled: {rows:?}"
    );
    let row = c
        .snat_row("hs", "r2")?
        .context("hs lists no SNAT row for r2")?;
    ensure!(
        row["enabled"] == false,
        "r2's SNAT must show disabled: {row}"
    );
    let before = Counters::take(&c, &["h1", "hs"])?;

    let at_ext = c.capture_ext("")?;
    let p = c.ping("vb", INTERNET_HOST, 3)?;
    ensure!(
        p.received == 0,
        "a VM of a router without SNAT got replies from outside:\n{}",
        p.output
    );
    c.udp_send("vb", INTERNET_HOST, 9100, 41100)?;
    let dropped = before.wait_delta(&c, "h1", Stat::DropSnatDisabled, 4)?;
    let steered = before.delta(&c, "h1", Stat::SnatSteered)?;
    ensure!(
        steered == 0,
        "nothing of vb may be steered to the SNAT host (snat_steered +{steered})"
    );
    // Sentinel: va's router has SNAT; its echo crosses br-ext after anything of vb's would.
    c.ping_ok("va", INTERNET_HOST, 1)?;
    at_ext.wait_for("va's SNATed echo (sentinel)", WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(gw1), &s(INTERNET_HOST))
    })?;
    let packets = at_ext.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.contains(&s(vb)) || p.contains(&s(gw2)) || p.contains(".9100") || p.contains(&s(va))
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "nothing of r2's VMs may reach br-ext: {leaked:#?}"
    );
    let hs_dropped = before.delta(&c, "hs", Stat::DropSnatDisabled)?;
    ensure!(
        hs_dropped == 0,
        "the compute host drops; hs must see nothing (drop_snat_disabled +{hs_dropped} on hs)"
    );
    eprintln!("drop_snat_disabled on h1 +{dropped}, snat_steered +0");

    // Enabling SNAT at run time opens the way, with r2's own gateway IP.
    c.set_enable_snat("r2", true)?;
    wait_until("h1 to steer r2's network again", WAIT, |why| {
        let rows = c.snat_steering("h1")?;
        *why = format!("{rows:?}");
        Ok(rows
            .iter()
            .any(|r| r["vni"] == vni_b && r["enabled"] == true)
            .then_some(()))
    })?;
    wait_until("hs to translate for r2", WAIT, |why| {
        let row = c.snat_row("hs", "r2")?;
        *why = format!("{row:?}");
        Ok(row.filter(|r| r["enabled"] == true).map(|_| ()))
    })?;
    let rep = c.tcp_transfer_to("vb", EXT, INTERNET_HOST, 5501, MIB, None)?;
    ensure!(
        rep.peer.map(|p| *p.ip()) == Some(gw2),
        "with SNAT enabled vb must leave as r2's gateway IP {gw2}: {:?}",
        rep.peer
    );
    Ok(())
}

// ---- ARP for the gateway IP -------------------------------------------------------------------

#[test]
fn arp_for_the_router_gateway_ip_is_answered_only_by_the_snat_hosts_ext0() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(4161, 61, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("vs", "a", "hs"));
    let c = t.build()?;
    let gw = c.router_external_ip("r1")?;
    let hs_mac = c.ext_mac("hs")?;
    let net_gw = c.network("a")?.gateway;
    let before = Counters::take(&c, &["h1", "h2", "hs"])?;

    let cap = c.capture_ext_hex("arp")?;
    let a = c.arping_ext(gw, 3, 5)?;
    ensure!(
        a.reply_macs.len() >= 3 && a.reply_macs.iter().all(|m| *m == hs_mac),
        "ARP for the gateway IP {gw} must be answered by hs's ext0 {hs_mac} only:\n{}",
        a.output
    );
    cap.wait_for_count("3 replies for the gateway IP", 3, WAIT, |p| {
        p.arp_replies().iter().any(|(ip, _)| *ip == s(gw))
    })?;
    // Sentinel for h1 and h2: h1's fg address is answered after the requests for gw.
    let fg1 = c.fg_ip("h1")?;
    let a1 = c.arping_ext(fg1, 1, 3)?;
    ensure!(
        a1.reply_macs.len() == 1,
        "h1 must answer ARP for its fg address {fg1}:\n{}",
        a1.output
    );
    cap.wait_for("h1's reply for its fg address", WAIT, |p| {
        p.arp_replies().iter().any(|(ip, _)| *ip == s(fg1))
    })?;
    let packets = cap.stop()?;
    let for_gw: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.arp_replies().iter().any(|(ip, _)| *ip == s(gw)))
        .collect();
    for p in &for_gw {
        let arp = p.arp().with_context(|| format!("no ARP fields in {p}"))?;
        ensure!(
            arp.sha == hs_mac && p.outer_eth().map(|e| e.0) == Some(hs_mac.clone()),
            "every ARP reply for {gw} must be hs's ({hs_mac}): {p}"
        );
    }
    ensure!(
        for_gw.len() == a.reply_macs.len(),
        "one reply per request: {} replies on br-ext, arping saw {}",
        for_gw.len(),
        a.reply_macs.len()
    );
    let d_hs = before.delta(&c, "hs", Stat::ExtArpReply)?;
    let d_h2 = before.delta(&c, "h2", Stat::ExtArpReply)?;
    let d_h1 = before.delta(&c, "h1", Stat::ExtArpReply)?;
    ensure!(
        d_hs == u64::try_from(for_gw.len())? && d_h2 == 0 && d_h1 == 1,
        "ext_arp_reply must count exactly the replies: hs +{d_hs} (want {}), h1 +{d_h1} (want 1, \
         its fg address), h2 +{d_h2} (want 0)",
        for_gw.len()
    );

    // Only on ext0: VMs asking for the gateway IP inside the tenant network get no answer,
    // also on the SNAT host; their own gateway answers (sentinel).
    for vm in ["vs", "v1"] {
        let at_vm = c.capture_vm(vm, "arp")?;
        let r = c.arping(vm, gw, 2, 2)?;
        ensure!(
            r.reply_macs.is_empty(),
            "{vm}: ARP for the external gateway IP {gw} inside the tenant network was answered:\n{}",
            r.output
        );
        let sent = c.arping(vm, net_gw, 1, 3)?;
        ensure!(
            sent.reply_macs.len() == 1,
            "{vm}: its subnet gateway {net_gw} must answer:\n{}",
            sent.output
        );
        at_vm.wait_for("the gateway's reply (sentinel)", WAIT, |p| {
            p.arp_replies().iter().any(|(ip, _)| *ip == s(net_gw))
        })?;
        let seen = at_vm.stop()?;
        let answered: Vec<_> = seen
            .iter()
            .filter(|p| p.arp_replies().iter().any(|(ip, _)| *ip == s(gw)))
            .collect();
        ensure!(
            answered.is_empty(),
            "{vm} saw ARP replies for {gw}: {answered:#?}"
        );
    }
    Ok(())
}

// ---- dvr_no_external ----------------------------------------------------------------------------

#[test]
fn dvr_no_external_host_routes_locally_and_its_fip_is_served_on_the_snat_host() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1")
        .no_external_host("hn")
        .snat_host("hs")
        .external();
    t.network("a", 4171, "172.20.71.0/24")
        .network("b", 4172, "172.20.72.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("vn", "a", "hn"))
        .vm(VmSpec::new("vn2", "b", "hn"))
        .vm(VmSpec::new("v1", "a", "h1"))
        .fip("fn", Some("vn"));
    let mut c = t.build()?;
    let (vn, vn2, v1) = (c.ip("vn")?, c.ip("vn2")?, c.ip("v1")?);
    let fip = c.fip_ip("fn")?;
    let gw = c.router_external_ip("r1")?;
    let hs_mac = c.ext_mac("hs")?;

    let link = c.exec_host("hn", &["ip", "link", "show", "dev", "ext0"])?;
    ensure!(
        !link.status.success(),
        "a dvr_no_external host must have no ext0"
    );
    ensure!(
        c.host("hn")?.ext.is_none()
            && c.state().hosts.iter().any(|h| h.name
                == c.host("hn")
                    .map(|x| x.agent_name.clone())
                    .unwrap_or_default()
                && h.agent_mode == "dvr_no_external"
                && h.external_interface.is_none()),
        "hn must be dvr_no_external without external_interface in the state"
    );
    let entry = c.wait_fip_kind("hs", "fn", Some("central"), WAIT)?;
    ensure!(
        entry["fixed_ip"] == s(vn).as_str(),
        "hs must serve fn centrally for vn: {entry}"
    );
    let on_hn = c.fip_entry("hn", "fn")?;
    ensure!(
        on_hn
            .as_ref()
            .is_none_or(|e| e["kind"] != "local" && e["kind"] != "central"),
        "hn has no external interface and must not serve fn: {on_hn:?}"
    );

    // East-west keeps working, routed locally on hn: nothing of it on the underlay.
    let under = c.capture_underlay("")?;
    let p = c.ping_ok("vn", vn2, 3)?;
    ensure!(
        all_ttl(&p.ttls, 63),
        "vn -> vn2 is routed once: {:?}",
        p.ttls
    );
    c.wait_underlay_sentinel(&under, "hn", "hs")?;
    let packets = under.stop()?;
    let leaked: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.contains(&format!("{vn} > {vn2}")) || p.contains(&format!("{vn2} > {vn}")))
        .collect();
    ensure!(
        leaked.is_empty(),
        "routing between vn and vn2 on hn must not touch the underlay: {leaked:#?}"
    );
    c.ping_ok("vn", v1, 2)?;

    let before = Counters::take(&c, &["hs", "hn"])?;
    // Inbound: through hs; vn sees the real source.
    let arp = c.arping_ext(fip, 2, 4)?;
    ensure!(
        arp.reply_macs.len() >= 2 && arp.reply_macs.iter().all(|m| *m == hs_mac),
        "ARP for fn {fip} must be answered by hs's ext0 {hs_mac} only:\n{}",
        arp.output
    );
    let at_vn = c.capture_vm("vn", "icmp")?;
    let p = c.ping_with(EXT, fip, 3, &["-I", &s(INTERNET_HOST)])?;
    ensure!(
        p.all_answered() && p.reply_from.iter().all(|f| *f == s(fip)),
        "ping 198.51.100.10 -> fn {fip} (vn on hn, served on hs):\n{}",
        p.output
    );
    at_vn.wait_for_count("echo requests with the real source", 3, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(INTERNET_HOST), &s(vn))
    })?;
    at_vn.stop()?;
    let rep = c.tcp_transfer_to(EXT, "vn", fip, 5701, 2 * MIB, Some(INTERNET_HOST))?;
    eprintln!(
        "TCP 198.51.100.10 -> fn {fip} (vn on hn): {} bytes in {:?}",
        rep.bytes, rep.elapsed
    );
    ensure!(
        rep.peer.map(|p| *p.ip()) == Some(INTERNET_HOST),
        "vn must see the external client 198.51.100.10, saw {:?}",
        rep.peer
    );
    let dnat = before.delta(&c, "hs", Stat::FipDnat)?;
    ensure!(dnat >= 3, "hs's fip_dnat grew by {dnat} (< 3)");

    // Outbound: vn leaves as its FIP (through hs), not as the gateway IP.
    let at_ext = c.capture_ext("icmp")?;
    let p = c.ping_ok("vn", INTERNET_HOST, 3)?;
    ensure!(
        p.reply_from.iter().all(|f| *f == s(INTERNET_HOST)),
        "{:?}",
        p.reply_from
    );
    let req = at_ext.wait_for_count("vn's echo requests from fn", 3, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(fip), &s(INTERNET_HOST))
    })?;
    for p in &req {
        ensure!(
            p.outer_eth().map(|e| e.0) == Some(hs_mac.clone()),
            "vn's traffic must leave hs's ext0 {hs_mac}: {p}"
        );
    }
    let packets = at_ext.stop()?;
    let wrong: Vec<_> = packets
        .iter()
        .filter(|p| p.contains(&s(vn)) || p.contains(&format!("{gw} > ")))
        .collect();
    ensure!(
        wrong.is_empty(),
        "vn must leave as its FIP {fip}, never as {vn} or the gateway IP {gw}: {wrong:#?}"
    );
    let rep = c.tcp_transfer_to("vn", EXT, INTERNET_HOST, 5702, MIB, None)?;
    ensure!(
        rep.peer.map(|p| *p.ip()) == Some(fip),
        "the external server must see vn as its FIP {fip}, saw {:?}",
        rep.peer
    );
    let snat = before.delta(&c, "hs", Stat::FipSnat)?;
    ensure!(snat >= 3, "hs's fip_snat grew by {snat} (< 3)");
    let no_ext = before.delta(&c, "hn", Stat::DropNoExternal)?;
    ensure!(
        no_ext == 0,
        "hn dropped {no_ext} packets for lack of external"
    );
    Ok(())
}

// ---- VIP with keepalived ----------------------------------------------------------------------

/// Connects to `argv[1]:argv[2]` over and over (250 ms connect timeout, at most every 50 ms)
/// and prints "<unix time> <banner or -: error>" per try, until it has seen banner `argv[3]` 5
/// times in a row or `argv[4]` seconds passed.
const BANNER_POLLER: &str = r#"
import socket, sys, time
dst, port, want, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
end = time.time() + limit
streak = 0
while time.time() < end and streak < 5:
    t = time.time()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.25)
    try:
        s.connect((dst, port))
        s.settimeout(1.0)
        d = b""
        while True:
            x = s.recv(100)
            if not x:
                break
            d += x
        b = d.decode().strip()
    except OSError as e:
        b = "-:" + str(e).replace(" ", "_")
    s.close()
    print("%.3f %s" % (t, b), flush=True)
    streak = streak + 1 if b == want else 0
    time.sleep(max(0.0, 0.05 - (time.time() - t)))
"#;

fn unix_secs(t: SystemTime) -> Result<f64> {
    Ok(t.duration_since(UNIX_EPOCH)?.as_secs_f64())
}

#[test]
fn keepalived_vip_with_a_fip_follows_the_master_within_3s() -> Result<()> {
    require_preconditions();
    const PORT: u16 = 7700;
    let vip_ip = Ipv4Addr::new(172, 20, 81, 100);
    let mut t = base_topology(4181, 81, false);
    t.vip("vip", "a", vip_ip)
        .vm(VmSpec::new("v1", "a", "h1").allowed_pair(vip_ip, None))
        .vm(VmSpec::new("v2", "a", "h2").allowed_pair(vip_ip, None))
        // Not allowed the VIP; no port security, so its claims reach the VIP learning.
        .vm(VmSpec::new("v3", "a", "h2").port_security(false))
        .fip_on_vip("fv", "vip");
    let mut c = t.build()?;
    let (v1, v2, v3) = (
        c.vm("v1")?.clone(),
        c.vm("v2")?.clone(),
        c.vm("v3")?.clone(),
    );
    let fip = c.fip_ip("fv")?;
    let h2_ip = c.host("h2")?.tunnel_ip;
    let entry = c.wait_fip_kind("hs", "fv", Some("central"), WAIT)?;
    eprintln!("hs serves fv: {entry}");

    let mut banners = Vec::new();
    for vm in ["v1", "v2"] {
        banners.push(c.spawn(
            vm,
            &[
                "socat",
                &format!("TCP4-LISTEN:{PORT},reuseaddr,fork"),
                &format!("SYSTEM:echo {vm}"),
            ],
        )?);
        c.wait_listening(vm, false, PORT, WAIT)?;
    }
    let conf = |master: bool, me: &dvr_tests::Vm, peer: &dvr_tests::Vm| KeepalivedConf {
        virtual_router_id: 81,
        priority: if master { 150 } else { 100 },
        master,
        vip: vip_ip,
        prefix: 24,
        src: me.ip,
        peers: vec![peer.ip],
    };
    let mut k1 = c.start_keepalived("v1", &conf(true, &v1, &v2))?;
    c.wait_vm_address("v1", vip_ip, true, Duration::from_secs(10))
        .with_context(|| format!("keepalived in v1:\n{}", k1.log_text()))?;
    let k2 = c.start_keepalived("v2", &conf(false, &v2, &v1))?;
    wait_until(
        "keepalived in v2 to be BACKUP",
        Duration::from_secs(10),
        |why| {
            let log = k2.log_text();
            *why = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            Ok(log.contains("Entering BACKUP STATE").then_some(()))
        },
    )?;
    ensure!(
        !c.vm_has_address("v2", vip_ip)?,
        "the backup must not hold the VIP:\n{}",
        k2.log_text()
    );

    let row = c
        .wait_vip_holder("hs", "vip", "v1", Duration::from_secs(10))
        .with_context(|| format!("keepalived in v1:\n{}", k1.log_text()))?;
    let candidates: Vec<String> = row["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_lowercase))
        .collect();
    ensure!(
        candidates.len() == 2
            && [&v1.mac, &v2.mac]
                .iter()
                .all(|m| candidates.iter().any(|x| x.starts_with(m.as_str()))),
        "hs must list v1 and v2 (not v3) as candidates of the VIP: {row}"
    );
    wait_until("fv to reach v1", Duration::from_secs(10), |why| {
        let b = c.tcp_banner(EXT, fip, PORT, Duration::from_secs(1))?;
        *why = format!("answered {b:?}");
        Ok((b == "v1").then_some(()))
    })?;

    // v3 is not allowed the VIP: its gratuitous ARPs for it move nothing, on its own host
    // (from the tap), on h1 and on hs (from the tunnel).
    let before = Counters::take(&c, &["hs"])?;
    let tunnel_in = |c: &Cloud| -> Result<u64> {
        Ok(before.delta(c, "hs", Stat::Flooded)? + before.delta(c, "hs", Stat::DropNoLocalPort)?)
    };
    let at_v1 = c.capture_vm("v1", "arp")?;
    c.send_arp_request(
        "v3",
        &ArpFrame {
            eth_src: v3.mac.clone(),
            sender_mac: v3.mac.clone(),
            sender_ip: vip_ip,
            target_ip: vip_ip,
            count: 2,
        },
    )?;
    // Sentinels: both reached v1 through h1, and hs took both from the tunnel.
    at_v1.wait_for_count("v3's two claims, flooded to v1", 2, WAIT, |p| {
        p.arp().is_some_and(|a| a.sha == v3.mac && a.spa == vip_ip)
            || p.contains(&format!("{} > ff:ff:ff:ff:ff:ff", v3.mac))
    })?;
    at_v1.stop()?;
    wait_until("hs to take v3's claims from the tunnel", WAIT, |why| {
        let n = tunnel_in(&c)?;
        *why = format!("flooded + drop_no_local_port on hs: +{n}");
        Ok((n >= 2).then_some(()))
    })?;
    for h in ["h1", "h2", "hs"] {
        let row = c.vip_row(h, "vip")?;
        ensure!(
            row.as_ref()
                .is_some_and(|r| r["holder_mac"] == v1.mac.as_str()),
            "{h} must still see v1 holding the VIP after v3's claims: {row:?}"
        );
    }
    let b = c.tcp_banner(EXT, fip, PORT, Duration::from_secs(1))?;
    ensure!(
        b == "v1",
        "fv must still reach v1 after v3's claims, got {b:?}"
    );

    let mut poller = c.spawn_python(
        EXT,
        BANNER_POLLER,
        &[&s(fip), &PORT.to_string(), "v2", "20"],
    )?;
    poller.wait_stdout("a v1 answer", WAIT, |o| {
        o.lines().any(|l| l.ends_with(" v1"))
    })?;
    let stopped_at = k1.terminate()?;
    let t0 = unix_secs(stopped_at)?;
    let exited = k1.wait_exit(Duration::from_secs(5))?;
    ensure!(
        exited.is_some(),
        "keepalived in v1 did not exit on SIGTERM:\n{}",
        k1.log_text()
    );
    poller.wait_exit(Duration::from_secs(30))?;
    let out = poller.stdout();
    let tries: Vec<(f64, String)> = out
        .lines()
        .filter_map(|l| {
            let (t, b) = l.split_once(' ')?;
            Some((t.parse().ok()?, b.to_string()))
        })
        .collect();
    let first_v2 = tries
        .iter()
        .find(|(t, b)| *t >= t0 && b == "v2")
        .map(|(t, _)| *t)
        .with_context(|| {
            format!(
                "fv never reached v2 after stopping v1's keepalived; tries:\n{out}\nkeepalived \
                 in v2:\n{}\nhs vips: {:?}",
                k2.log_text(),
                c.vips("hs")
            )
        })?;
    let took = first_v2 - t0;
    let last_v1 = tries
        .iter()
        .filter(|(_, b)| b == "v1")
        .map(|(t, _)| *t)
        .fold(f64::NEG_INFINITY, f64::max);
    eprintln!(
        "VIP failover: fv answered by v2 {took:.3} s after SIGTERM to v1's keepalived (last v1 \
         answer {:.3} s before the SIGTERM; {} tries)",
        t0 - last_v1,
        tries.len()
    );
    ensure!(
        tries.iter().all(|(t, b)| *t < first_v2 || b == "v2"),
        "after v2 answered, every try must reach v2:\n{out}"
    );
    ensure!(
        took <= 3.0,
        "fv must reach the new master within 3 s, took {took:.3} s:\n{out}"
    );
    let row = c.wait_vip_holder("hs", "vip", "v2", WAIT)?;
    ensure!(
        row["holder_host"] == s(h2_ip).as_str(),
        "hs must locate the VIP on h2 ({h2_ip}): {row}"
    );
    c.wait_vm_address("v1", vip_ip, false, WAIT)?;
    k1.stop()?;
    Ok(())
}
