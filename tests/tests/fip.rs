//! Floating IP integration tests: real traffic between an external namespace (the upstream
//! router 10.5.0.1 and an "internet host" 198.51.100.10 behind it, on bridge `br-ext`) and VM
//! namespaces, through dvr-agents that serve floating IPs on each host's `ext0`. Each test
//! builds its own cloud and asserts what can be observed from outside the agent: replies and
//! their TTLs and sources, the peer address servers see, packets captured in VMs, on `br-ext`
//! and on the underlay, `dvrctl show stats|fips|conntrack --json`.
//!
//! Needs root, bpffs, tcpdump, socat, arping, python3-scapy and the built agent
//! (`cargo build -p dvr-userspace`); fails with a clear message otherwise. Run with
//! `--test-threads=1`.
//!
//! Negative assertions use sentinels instead of sleeps: after the traffic that must not arrive,
//! legitimate traffic is sent along the same path and awaited (or a counter that only the
//! dropped packets move is awaited).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dvr_common::stats::Stat;
use dvr_tests::TraceProbe;
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::sg::rule_in;
use dvr_tests::{
    Cloud, Counters, EXT, EXT_GATEWAY, INTERNET_HOST, Packet, SecurityGroup, Topology, VmSpec,
    all_ttl, not_sentinel, require_preconditions,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

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

/// Crafted Ethernet/IPv4/UDP frames sent from the external namespace's `br-ext` to `dst_mac`.
fn ext_udp_frames(
    c: &Cloud,
    dst_mac: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    count: u32,
) -> Result<()> {
    c.scapy_at(
        EXT,
        &format!(
            "sendp(Ether(dst='{dst_mac}')/IP(src='{src}', dst='{dst}', ttl=64)/UDP(sport={sport}, \
             dport={dport})/Raw(b'dvr-tests'), iface='br-ext', count={count})"
        ),
    )
    .map(|_| ())
}

/// One router "r1" over network "a" (and "b" if `two_nets`), hosts h1 and h2, the external
/// network.
fn base_topology(vni: u32, third_octet: u8, two_nets: bool) -> Topology {
    let mut t = Topology::new();
    t.host("h1").host("h2").external();
    t.network("a", vni, &format!("192.168.{third_octet}.0/24"));
    if two_nets {
        t.network("b", vni + 1, &format!("192.168.{}.0/24", third_octet + 1));
        t.router("r1", &["a", "b"]);
    } else {
        t.router("r1", &["a"]);
    }
    t
}

// ---- inbound ----------------------------------------------------------------------------------

#[test]
fn external_host_reaches_a_vm_through_its_fip() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3101, 101, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let v1 = c.vm("v1")?.clone();
    let fip = c.fip_ip("f1")?;
    let gw_mac = c.gateway_mac("a")?;
    let before = Counters::take(&c, &["h1", "h2"])?;

    let at_v1 = c.capture_vm("v1", "icmp")?;
    let p = c.ping_with(EXT, fip, 3, &["-I", &s(INTERNET_HOST)])?;
    ensure!(
        p.all_answered(),
        "ping 198.51.100.10 -> FIP {fip}:\n{}",
        p.output
    );
    ensure!(
        all_ttl(&p.ttls, 63),
        "reply TTL must be 63 (one routing hop on the VM's host): {:?}",
        p.ttls
    );
    ensure!(
        p.reply_from.iter().all(|f| *f == s(fip)),
        "replies must come from the FIP {fip}: {:?}",
        p.reply_from
    );
    let p = c.ping(EXT, fip, 2)?;
    ensure!(
        p.all_answered(),
        "ping 10.5.0.1 -> FIP {fip}:\n{}",
        p.output
    );

    let req = at_v1.wait_for_count("echo requests from 198.51.100.10", 3, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(INTERNET_HOST), &s(v1.ip))
    })?;
    for p in &req {
        ensure!(
            p.outer_eth() == Some((gw_mac.clone(), v1.mac.clone())),
            "v1 must receive from its gateway MAC {gw_mac}: {p}"
        );
        ensure!(
            p.ttls() == vec![63],
            "DNATed request must arrive with TTL 63: {p}"
        );
    }
    at_v1.wait_for_count("echo requests from 10.5.0.1", 2, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(EXT_GATEWAY), &s(v1.ip))
    })?;
    let packets = at_v1.stop()?;
    let fip_seen: Vec<_> = packets.iter().filter(|p| p.contains(&s(fip))).collect();
    ensure!(
        fip_seen.is_empty(),
        "the VM must never see its FIP: {fip_seen:#?}"
    );

    // UDP round trip: the VM's server sees the real source, the client sees the FIP answer.
    let server = c.udp_echo_server("v1", 7001)?;
    let r = c.udp_request(EXT, fip, 7001, b"dvr-fip-udp", Some(INTERNET_HOST), 3)?;
    ensure!(
        r.from == SocketAddrV4::new(fip, 7001) && r.payload == b"dvr-fip-udp",
        "UDP reply must come from {fip}:7001 with the payload: {r:?}"
    );
    ensure!(
        r.tries == 1,
        "the first datagram must be answered, took {} tries",
        r.tries
    );
    let seen = server.stdout();
    ensure!(
        seen.contains(&format!("peer {INTERNET_HOST}:")),
        "the VM's UDP server must see 198.51.100.10 as source: {seen}"
    );

    // 10 MiB over TCP, content checked; the VM's listener sees the real client address.
    let rep = c.tcp_transfer_to(EXT, "v1", fip, 5001, 10 * MIB, Some(INTERNET_HOST))?;
    eprintln!(
        "TCP 198.51.100.10 -> FIP {fip} (v1): {} bytes in {:?}",
        rep.bytes, rep.elapsed
    );
    ensure!(
        rep.peer.map(|p| *p.ip()) == Some(INTERNET_HOST),
        "the VM must see the external client's address 198.51.100.10, saw {:?}",
        rep.peer
    );
    let rep = c.tcp_transfer_to(EXT, "v1", fip, 5002, MIB, None)?;
    ensure!(
        rep.peer.map(|p| *p.ip()) == Some(EXT_GATEWAY),
        "the VM must see 10.5.0.1 as client address, saw {:?}",
        rep.peer
    );

    let dnat = before.delta(&c, "h1", Stat::FipDnat)?;
    ensure!(dnat >= 5, "fip_dnat of h1 grew by {dnat} (< 5)");
    let h2 = before.delta(&c, "h2", Stat::FipDnat)?;
    ensure!(
        h2 == 0,
        "h2 does not serve the FIP, yet its fip_dnat grew by {h2}"
    );
    Ok(())
}

/// The external NIC's XDP program (`--ext-xdp native`, the default; test clouds give every
/// veth peer NAPI and whole checksums, `--xdp-veth-peers`): h1 answers ARP for its FIPs and
/// translates the UDP of v1 (no security groups) in XDP, counted xdp_ext besides
/// ext_arp_reply and fip_dnat, and v1 receives exactly what TC would have given it (its
/// fixed IP, the real source, TTL 63, from its gateway MAC), with the flow in conntrack;
/// v2 has a security group, so its packets pass to TC, whose rules still hold (a port it
/// does not open is refused). h2 runs with `--ext-xdp off`: no XDP link, the same service;
/// so does h1's next agent, which takes the program off `ext0`.
#[test]
fn external_nic_xdp_serves_arp_and_the_fips_of_ports_without_security_groups() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3111, 111, false);
    t.host_agent_args("h2", &["--ext-xdp", "off"]);
    t.security_group(SecurityGroup::new(
        "sg-udp",
        vec![rule_in("r-udp").udp(7102, 7102)],
    ));
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1").security_groups(&["sg-udp"]))
        .vm(VmSpec::new("v3", "a", "h2"))
        .fip("f1", Some("v1"))
        .fip("f2", Some("v2"))
        .fip("f3", Some("v3"));
    let mut c = t.build()?;
    let v1 = c.vm("v1")?.clone();
    let (f1, f2, f3) = (c.fip_ip("f1")?, c.fip_ip("f2")?, c.fip_ip("f3")?);
    let gw_mac = c.gateway_mac("a")?;
    let pins = |host: &str| -> Result<bool> {
        Ok(c.link_pins(host)?
            .iter()
            .any(|p| p.starts_with("ext0:xdp@")))
    };
    ensure!(
        pins("h1")?,
        "h1 must hold its XDP link pin: {:?}",
        c.link_pins("h1")?
    );
    ensure!(
        !pins("h2")?,
        "h2 runs --ext-xdp off: {:?}",
        c.link_pins("h2")?
    );

    // v1: ARP and UDP in XDP.
    let start = Counters::take(&c, &["h1", "h2"])?;
    let at_v1 = c.capture_vm("v1", "udp port 7101")?;
    let _s1 = c.udp_echo_server("v1", 7101)?;
    for n in 0..3u16 {
        let r = c.udp_request(EXT, f1, 7101, b"dvr-xdp", Some(INTERNET_HOST), 3)?;
        ensure!(
            r.from == SocketAddrV4::new(f1, 7101) && r.payload == b"dvr-xdp",
            "request {n}: the reply must come from {f1}:7101: {r:?}"
        );
    }
    let got = at_v1.wait_for_count("UDP from 198.51.100.10", 3, WAIT, |p| {
        udp_flow(p, INTERNET_HOST, None, v1.ip, 7101)
    })?;
    for p in &got {
        ensure!(
            p.outer_eth() == Some((gw_mac.clone(), v1.mac.clone())) && p.ttls() == vec![63],
            "v1 must receive from its gateway MAC {gw_mac} with TTL 63: {p}"
        );
    }
    let xdp = start.delta(&c, "h1", Stat::XdpExt)?;
    let arp = start.delta(&c, "h1", Stat::ExtArpReply)?;
    let dnat = start.delta(&c, "h1", Stat::FipDnat)?;
    ensure!(
        arp >= 1 && dnat >= 3 && xdp == dnat + arp,
        "h1: the ARP reply and 3 datagrams in XDP: xdp_ext +{xdp}, ext_arp_reply +{arp}, \
         fip_dnat +{dnat}"
    );
    let ct = c.conntrack_for("h1", "f1")?;
    ensure!(
        ct.iter().any(|e| e["proto"] == "udp"
            && e["src"] == s(INTERNET_HOST).as_str()
            && e["dst"] == s(f1).as_str()
            && e["dport"] == 7101
            && e["nat"] == "dnat"
            && e["nat_ip"] == s(v1.ip).as_str()),
        "the flow XDP translated must be in conntrack: {ct:?}"
    );

    // v2 (a security group): ARP may be answered in XDP, the packets are TC's.
    let _s2 = c.udp_echo_server("v2", 7102)?;
    let before = Counters::take(&c, &["h1"])?;
    for n in 0..3u16 {
        let r = c.udp_request(EXT, f2, 7102, b"dvr-tc", Some(INTERNET_HOST), 3)?;
        ensure!(
            r.from == SocketAddrV4::new(f2, 7102),
            "request {n}: the reply must come from {f2}:7102: {r:?}"
        );
    }
    ensure!(
        c.udp_request(EXT, f2, 7103, b"refused", Some(INTERNET_HOST), 1)
            .is_err(),
        "v2's group does not open UDP 7103"
    );
    wait_until("h1 to refuse UDP 7103 for v2", WAIT, |why| {
        let d = before.delta(&c, "h1", Stat::DropSgIngress)?;
        *why = format!("drop_sg_ingress +{d}");
        Ok((d >= 1).then_some(()))
    })?;
    let xdp = before.delta(&c, "h1", Stat::XdpExt)?;
    let arp = before.delta(&c, "h1", Stat::ExtArpReply)?;
    let dnat = before.delta(&c, "h1", Stat::FipDnat)?;
    ensure!(
        dnat >= 3 && xdp <= arp,
        "h1: v2's datagrams in TC, only ARP replies in XDP: fip_dnat +{dnat}, xdp_ext +{xdp}, \
         ext_arp_reply +{arp}"
    );

    // dvrctl trace says which FIP packets XDP serves.
    for (host, fip, port, want) in [
        ("h1", f1, 7101, true),
        ("h1", f2, 7102, false),
        ("h2", f3, 7104, false),
    ] {
        let t = c.trace(
            host,
            &TraceProbe::udp("ext0", INTERNET_HOST, 40000, fip, port),
        )?;
        ensure!(
            t.verdict == "fip_dnat" && t.also.iter().any(|a| a == "xdp_ext") == want,
            "trace on {host} of UDP to {fip}:{port}: fip_dnat, xdp_ext in `also` {want}: {t:?}"
        );
    }

    // h2 without XDP serves v3's FIP all the same, in TC.
    let _s3 = c.udp_echo_server("v3", 7104)?;
    answered_in_tc(&c, "h2", &start, f3, 7104)?;

    // h1's next agent runs with --ext-xdp off: the program leaves ext0 with its pin, and TC
    // serves v1's FIP.
    c.stop_agent("h1")?;
    c.agent_args
        .extend(["--ext-xdp".to_string(), "off".to_string()]);
    c.restart_agent("h1")?;
    let ns = c.host("h1")?.ns.clone();
    wait_until("h1's XDP program and pin to go", WAIT, |why| {
        let link = cmd::text(&cmd::run_ok(
            "ip",
            &["-n", &ns, "-d", "link", "show", "ext0"],
        )?);
        let pins = c.link_pins("h1")?;
        *why = format!("{link}\npins {pins:?}");
        Ok(
            (!link.contains("prog/xdp") && !pins.iter().any(|p| p.starts_with("ext0:xdp@")))
                .then_some(()),
        )
    })?;
    answered_in_tc(&c, "h1", &Counters::take(&c, &["h1"])?, f1, 7101)?;
    Ok(())
}

/// A UDP request from 198.51.100.10 to `fip`:`port` is answered from there, and `host`,
/// which runs without XDP, translated it in TC: fip_dnat grew since `since`, xdp_ext did
/// not.
fn answered_in_tc(c: &Cloud, host: &str, since: &Counters, fip: Ipv4Addr, port: u16) -> Result<()> {
    let r = c.udp_request(EXT, fip, port, b"dvr-tc", Some(INTERNET_HOST), 3)?;
    ensure!(
        r.from == SocketAddrV4::new(fip, port),
        "reply from {fip}:{port}: {r:?}"
    );
    let (xdp, dnat) = (
        since.delta(c, host, Stat::XdpExt)?,
        since.delta(c, host, Stat::FipDnat)?,
    );
    ensure!(
        xdp == 0 && dnat >= 1,
        "{host} runs without XDP: xdp_ext +{xdp} (want 0), fip_dnat +{dnat}"
    );
    Ok(())
}

// ---- outbound ---------------------------------------------------------------------------------

#[test]
fn vm_with_a_fip_reaches_external_hosts_as_its_fip() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3111, 111, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let v1 = c.vm("v1")?.clone();
    let fip = c.fip_ip("f1")?;
    let h1_mac = c.ext_mac("h1")?;
    let upstream_mac = c.ext_bridge_mac()?;
    let gw_mac = c.gateway_mac("a")?;
    let before = Counters::take(&c, &["h1"])?;

    let under = c.capture_underlay("")?;
    let at_ext = c.capture_ext("icmp")?;
    let at_v1 = c.capture_vm("v1", "icmp")?;
    for dst in [INTERNET_HOST, EXT_GATEWAY] {
        let p = c.ping_ok("v1", dst, 3)?;
        ensure!(
            all_ttl(&p.ttls, 63),
            "reply TTL from {dst} must be 63 (one routing hop): {:?}",
            p.ttls
        );
        ensure!(
            p.reply_from.iter().all(|f| *f == s(dst)),
            "replies must come from {dst}: {:?}",
            p.reply_from
        );
        let req = at_ext.wait_for_count(&format!("echo requests FIP -> {dst}"), 3, WAIT, |p| {
            p.is_icmp_echo_request() && p.has_ips(&s(fip), &s(dst))
        })?;
        for p in &req {
            ensure!(
                p.outer_eth() == Some((h1_mac.clone(), upstream_mac.clone())),
                "SNATed request must go from h1's ext0 {h1_mac} to the gateway's MAC \
                 {upstream_mac}: {p}"
            );
            ensure!(
                p.ttls() == vec![63],
                "SNATed request must leave with TTL 63: {p}"
            );
        }
    }
    let rep = at_v1.wait_for_count("echo replies at v1", 6, WAIT, Packet::is_icmp_echo_reply)?;
    for p in &rep {
        ensure!(
            p.outer_eth() == Some((gw_mac.clone(), v1.mac.clone())),
            "replies must reach v1 from its gateway MAC {gw_mac}: {p}"
        );
    }
    let ext_packets = at_ext.stop()?;
    let leaked: Vec<_> = ext_packets
        .iter()
        .filter(|p| p.contains(&s(v1.ip)))
        .collect();
    ensure!(
        leaked.is_empty(),
        "the fixed IP must never appear on the external network: {leaked:#?}"
    );

    for (dst, port) in [(INTERNET_HOST, 5101), (EXT_GATEWAY, 5102)] {
        let rep = c.tcp_transfer_to("v1", EXT, dst, port, 2 * MIB, None)?;
        eprintln!(
            "TCP v1 -> {dst} via FIP: {} bytes in {:?}",
            rep.bytes, rep.elapsed
        );
        ensure!(
            rep.peer.map(|p| *p.ip()) == Some(fip),
            "the external server must see the FIP {fip} as client, saw {:?}",
            rep.peer
        );
    }

    c.wait_underlay_sentinel(&under, "h1", "h2")?;
    let packets = under.stop()?;
    let leaked = not_sentinel(&packets);
    ensure!(
        leaked.is_empty(),
        "north-south traffic of h1 must not touch the underlay: {leaked:#?}"
    );
    let snat = before.delta(&c, "h1", Stat::FipSnat)?;
    ensure!(snat >= 6, "fip_snat of h1 grew by {snat} (< 6)");
    at_v1.stop()?;
    Ok(())
}

// ---- ARP --------------------------------------------------------------------------------------

#[test]
fn arp_for_a_fip_is_answered_only_by_its_host() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3121, 121, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"))
        .fip("f2", Some("v2"));
    let c = t.build()?;
    let (f1, f2) = (c.fip_ip("f1")?, c.fip_ip("f2")?);
    let (m1, m2) = (c.ext_mac("h1")?, c.ext_mac("h2")?);
    let before = Counters::take(&c, &["h1", "h2"])?;

    let cap = c.capture_ext("arp")?;
    let a1 = c.arping_ext(f1, 3, 5)?;
    ensure!(
        a1.reply_macs.len() >= 3 && a1.reply_macs.iter().all(|m| *m == m1),
        "ARP for {f1} (served by h1) must be answered by h1's ext0 {m1} only:\n{}",
        a1.output
    );
    // Sentinel for h2: it answers for its own FIP after it has seen the requests for f1.
    let a2 = c.arping_ext(f2, 3, 5)?;
    ensure!(
        a2.reply_macs.len() >= 3 && a2.reply_macs.iter().all(|m| *m == m2),
        "ARP for {f2} (served by h2) must be answered by h2's ext0 {m2} only:\n{}",
        a2.output
    );
    cap.wait_for_count("h2's replies for f2", 3, WAIT, |p| {
        p.arp_replies().iter().any(|(ip, _)| *ip == s(f2))
    })?;
    let packets = cap.stop()?;
    let replies: Vec<(String, String, Option<String>)> = packets
        .iter()
        .flat_map(|p| {
            let src = p.outer_eth().map(|e| e.0);
            p.arp_replies()
                .into_iter()
                .map(move |(ip, mac)| (ip, mac, src.clone()))
        })
        .collect();
    let for_ip = |ip: Ipv4Addr| -> Vec<&(String, String, Option<String>)> {
        replies.iter().filter(|r| r.0 == s(ip)).collect()
    };
    let (r1, r2) = (for_ip(f1), for_ip(f2));
    ensure!(
        r1.iter()
            .all(|(_, mac, src)| *mac == m1 && src.as_deref() == Some(m1.as_str())),
        "every ARP reply for {f1} must be h1's ({m1}): {r1:?}"
    );
    ensure!(
        r2.iter()
            .all(|(_, mac, src)| *mac == m2 && src.as_deref() == Some(m2.as_str())),
        "every ARP reply for {f2} must be h2's ({m2}): {r2:?}"
    );
    let d1 = before.delta(&c, "h1", Stat::ExtArpReply)?;
    let d2 = before.delta(&c, "h2", Stat::ExtArpReply)?;
    ensure!(
        d1 == u64::try_from(r1.len())? && d2 == u64::try_from(r2.len())?,
        "ext_arp_reply must count exactly each host's own replies: h1 +{d1} (replies for f1: \
         {}), h2 +{d2} (replies for f2: {})",
        r1.len(),
        r2.len()
    );
    Ok(())
}

// ---- hairpin ----------------------------------------------------------------------------------

#[test]
fn vms_of_the_same_router_reach_a_vm_through_its_fip() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3131, 131, true);
    // v2: same host, same subnet; v3: other host, other subnet of the same router.
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1"))
        .vm(VmSpec::new("v3", "b", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let (v1, v2, v3) = (c.ip("v1")?, c.ip("v2")?, c.ip("v3")?);
    let fip = c.fip_ip("f1")?;
    let before = Counters::take(&c, &["h1", "h2"])?;

    let at_ext = c.capture_ext_any("icmp or tcp")?;
    let at_v1 = c.capture_vm("v1", "icmp")?;
    for (vm, ip) in [("v2", v2), ("v3", v3)] {
        let p = c.ping(vm, fip, 3)?;
        ensure!(
            p.all_answered(),
            "hairpin ping {vm} -> FIP {fip}:\n{}",
            p.output
        );
        ensure!(
            p.reply_from.iter().all(|f| *f == s(fip)),
            "hairpin replies to {vm} must come from the FIP {fip}: {:?}",
            p.reply_from
        );
        at_v1.wait_for_count(&format!("echo requests from {vm}"), 3, WAIT, |p| {
            p.is_icmp_echo_request() && p.has_ips(&s(ip), &s(v1))
        })?;
    }
    for (vm, ip, port) in [("v2", v2, 5201), ("v3", v3, 5202)] {
        let rep = c.tcp_transfer_to(vm, "v1", fip, port, MIB, None)?;
        eprintln!(
            "TCP {vm} -> FIP {fip} (hairpin): {} bytes in {:?}",
            rep.bytes, rep.elapsed
        );
        ensure!(
            rep.peer.map(|p| *p.ip()) == Some(ip),
            "v1 must see {vm}'s fixed IP {ip} as client, saw {:?}",
            rep.peer
        );
    }
    let hairpin_ct: Vec<Value> = c
        .conntrack_for("h1", "f1")?
        .into_iter()
        .filter(|e| e["hairpin"] == true)
        .collect();
    ensure!(
        !hairpin_ct.is_empty(),
        "h1's conntrack has no hairpin entry for {fip}: {:?}",
        c.conntrack("h1")?
    );
    let hairpin =
        before.delta(&c, "h1", Stat::FipHairpin)? + before.delta(&c, "h2", Stat::FipHairpin)?;
    ensure!(hairpin > 0, "fip_hairpin of h1 and h2 did not grow");

    // Hairpin stays inside the router: nothing of it crossed br-ext. Sentinel: an external
    // ping to the FIP crosses h1's bridge port.
    let p = c.ping_with(EXT, fip, 1, &["-I", &s(INTERNET_HOST)])?;
    ensure!(p.all_answered(), "sentinel ping to {fip}:\n{}", p.output);
    at_ext.wait_for("the sentinel echo reply", WAIT, |p| {
        p.is_icmp_echo_reply() && p.has_ips(&s(fip), &s(INTERNET_HOST))
    })?;
    let packets = at_ext.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| !p.contains(&s(INTERNET_HOST)))
        .collect();
    ensure!(
        leaked.is_empty(),
        "hairpin traffic must not cross the external network: {leaked:#?}"
    );
    at_v1.stop()?;
    Ok(())
}

// ---- moving -----------------------------------------------------------------------------------

/// What the TCP service behind `fip:port` answers to a client in the external namespace ("" if
/// the connection fails).
fn who_answers(c: &Cloud, fip: Ipv4Addr, port: u16) -> Result<String> {
    c.tcp_banner(EXT, fip, port, Duration::from_secs(1))
}

#[test]
fn fip_moved_to_another_host_follows_and_the_old_host_forgets_it() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3141, 141, false);
    // f2 on v3 (h1) is the sentinel that h1 still answers ARP for what it serves.
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .vm(VmSpec::new("v3", "a", "h1"))
        .fip("f1", Some("v1"))
        .fip("f2", Some("v3"));
    let mut c = t.build()?;
    let (f1, f2) = (c.fip_ip("f1")?, c.fip_ip("f2")?);
    let (m1, m2) = (c.ext_mac("h1")?, c.ext_mac("h2")?);

    let mut servers = Vec::new();
    for vm in ["v1", "v2"] {
        servers.push(c.spawn(
            vm,
            &[
                "socat",
                "TCP4-LISTEN:7100,reuseaddr,fork",
                &format!("SYSTEM:echo {vm}"),
            ],
        )?);
        c.wait_listening(vm, false, 7100, WAIT)?;
    }
    let udp = c.udp_echo_server("v1", 7101)?;
    let first = who_answers(&c, f1, 7100)?;
    ensure!(
        first == "v1",
        "before the move {f1} must reach v1, got {first:?}"
    );
    c.udp_request(EXT, f1, 7101, b"before-move", Some(INTERNET_HOST), 3)?;
    let ct = c.conntrack_for("h1", "f1")?;
    ensure!(
        !ct.is_empty(),
        "h1 must track the flows through {f1} before the move: {:?}",
        c.conntrack("h1")?
    );
    drop(udp);

    let garp = c.capture_ext_hex("arp")?;
    c.associate("f1", "v2")?;
    c.wait_fip_kind("h2", "f1", Some("local"), WAIT)?;
    let moved_at = Instant::now();
    wait_until(
        &format!("{f1} to reach v2 after the move"),
        Duration::from_secs(10),
        |why| {
            let got = who_answers(&c, f1, 7100)?;
            *why = format!("answered {got:?}");
            Ok((got == "v2").then_some(()))
        },
    )?;
    eprintln!(
        "traffic to {f1} reached v2 {:?} after h2 listed it",
        moved_at.elapsed()
    );
    let garps = garp.wait_for_count("3 gratuitous ARPs for f1 from h2", 3, WAIT, |p| {
        p.arp()
            .is_some_and(|a| a.is_gratuitous() && a.spa == f1 && a.sha == m2)
            && p.outer_eth().map(|e| e.0) == Some(m2.clone())
    })?;
    eprintln!("{} gratuitous ARPs for {f1} from h2", garps.len());
    let packets = garp.stop()?;
    let from_h1: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.arp()
                .is_some_and(|a| a.is_gratuitous() && a.spa == f1 && a.sha == m1)
        })
        .collect();
    ensure!(
        from_h1.is_empty(),
        "h1 must not announce {f1} after the move: {from_h1:#?}"
    );

    // h1 no longer answers ARP for f1. h1 keeps f1 as "remote" (its router has v3 on h1).
    c.wait_fip_kind("h1", "f1", Some("remote"), WAIT)?;
    let before = Counters::take(&c, &["h1", "h2"])?;
    let cap = c.capture_ext("arp")?;
    let a = c.arping_ext(f1, 3, 5)?;
    ensure!(
        !a.reply_macs.is_empty() && a.reply_macs.iter().all(|m| *m == m2),
        "after the move only h2 ({m2}) may answer ARP for {f1}:\n{}",
        a.output
    );
    let s2 = c.arping_ext(f2, 2, 4)?;
    ensure!(
        s2.reply_macs.len() >= 2 && s2.reply_macs.iter().all(|m| *m == m1),
        "h1 must still answer for {f2}:\n{}",
        s2.output
    );
    cap.wait_for_count("h1's replies for f2", 2, WAIT, |p| {
        p.arp_replies().iter().any(|(ip, _)| *ip == s(f2))
    })?;
    let packets = cap.stop()?;
    let h1_for_f1: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.arp_replies()
                .iter()
                .any(|(ip, mac)| *ip == s(f1) && *mac == m1)
        })
        .collect();
    ensure!(
        h1_for_f1.is_empty(),
        "h1 answered ARP for {f1} after the move: {h1_for_f1:#?}"
    );
    let replies_f2 = packets
        .iter()
        .filter(|p| p.arp_replies().iter().any(|(ip, _)| *ip == s(f2)))
        .count();
    let d1 = before.delta(&c, "h1", Stat::ExtArpReply)?;
    ensure!(
        d1 == u64::try_from(replies_f2)?,
        "h1's ext_arp_reply grew by {d1}, but it sent {replies_f2} replies (all for {f2})"
    );

    c.wait_conntrack_gone("h1", "f1", WAIT)?;
    drop(servers);
    Ok(())
}

// ---- disassociation ---------------------------------------------------------------------------

/// A TCP client that sends 64 bytes every 20 ms and prints "rx <total>" whenever echoed bytes
/// arrive.
const STREAM_CLIENT: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind((sys.argv[3], 0))
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
s.setblocking(False)
print("connected", flush=True)
total = 0
while True:
    try:
        s.send(b"x" * 64)
    except BlockingIOError:
        pass
    except OSError as e:
        print("send error", e, flush=True)
        break
    try:
        d = s.recv(65536)
        if not d:
            print("eof", flush=True)
            break
        total += len(d)
        print("rx", total, flush=True)
    except BlockingIOError:
        pass
    except OSError as e:
        print("recv error", e, flush=True)
        break
    time.sleep(0.02)
"#;

fn last_rx(out: &str) -> u64 {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("rx ")?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn disassociating_a_fip_mid_connection_purges_conntrack_and_drops() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3151, 151, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let fip = c.fip_ip("f1")?;

    let _echo = c.spawn("v1", &["socat", "TCP4-LISTEN:7200,reuseaddr", "PIPE"])?;
    c.wait_listening("v1", false, 7200, WAIT)?;
    let mut client = c.spawn_python(EXT, STREAM_CLIENT, &[&s(fip), "7200", &s(INTERNET_HOST)])?;
    client.wait_stdout("640 bytes echoed", Duration::from_secs(10), |o| {
        last_rx(o) >= 640
    })?;
    let ct = c.conntrack_for("h1", "f1")?;
    ensure!(
        ct.iter()
            .filter(|e| e["proto"] == "tcp" && e["state"] == "established")
            .count()
            == 2,
        "the streaming connection must show as two established entries: {ct:?}"
    );

    let before = Counters::take(&c, &["h1"])?;
    c.disassociate("f1")?;
    c.wait_fip_kind("h1", "f1", Some("unassociated"), WAIT)?;
    c.wait_conntrack_gone("h1", "f1", WAIT)?;
    // The client keeps sending; its segments to the FIP are now dropped. Once two are, nothing
    // more may be echoed back while two more are dropped.
    before.wait_delta(&c, "h1", Stat::DropFipUnassociated, 2)?;
    let mark = last_rx(&client.stdout());
    let d = c.wait_stat_at_least(
        "h1",
        Stat::DropFipUnassociated.as_str(),
        before.base("h1", Stat::DropFipUnassociated) + 4,
        Duration::from_secs(20),
    )?;
    let now = last_rx(&client.stdout());
    ensure!(
        now == mark,
        "the connection still got data after the disassociation: {mark} -> {now} bytes \
         (drop_fip_unassociated at {d})"
    );
    let ct = c.conntrack_for("h1", "f1")?;
    ensure!(
        ct.is_empty(),
        "conntrack entries for {fip} came back: {ct:?}"
    );

    // New packets to the FIP are dropped and counted.
    let base = c.stat("h1", Stat::DropFipUnassociated.as_str())?;
    let p = c.ping_with(EXT, fip, 2, &["-I", &s(INTERNET_HOST)])?;
    ensure!(
        p.received == 0,
        "ping to the disassociated {fip} was answered:\n{}",
        p.output
    );
    c.wait_stat_at_least("h1", Stat::DropFipUnassociated.as_str(), base + 2, WAIT)?;
    client.stop()?;
    Ok(())
}

#[test]
fn deleted_fip_is_forgotten_by_arp_conntrack_and_forwarding() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3211, 211, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let v1 = c.ip("v1")?;
    let v2 = c.ip("v2")?;
    let fip = c.fip_ip("f1")?;

    let server = c.udp_echo_server("v1", 7500)?;
    c.udp_request(EXT, fip, 7500, b"before-delete", Some(INTERNET_HOST), 3)?;
    ensure!(
        !c.conntrack_for("h1", "f1")?.is_empty(),
        "h1 must track the UDP flow through {fip}: {:?}",
        c.conntrack("h1")?
    );
    drop(server);

    c.delete_fip("f1")?;
    for h in ["h1", "h2"] {
        c.wait_fip_kind(h, "f1", None, WAIT)?;
    }
    c.wait_conntrack_gone("h1", "f1", WAIT)?;
    let a = c.arping_ext(fip, 2, 2)?;
    ensure!(
        a.reply_macs.is_empty(),
        "ARP for the deleted {fip} was answered:\n{}",
        a.output
    );
    let at_v1 = c.capture_vm("v1", "icmp")?;
    let p = c.ping_with(EXT, fip, 2, &["-I", &s(INTERNET_HOST)])?;
    ensure!(
        p.received == 0,
        "ping to the deleted {fip} was answered:\n{}",
        p.output
    );
    // Sentinel: an east-west echo from v2 reaches v1 after anything sent from outside.
    c.ping_ok("v2", v1, 1)?;
    at_v1.wait_for("the east-west sentinel", WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(v2), &s(v1))
    })?;
    let packets = at_v1.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| p.contains(&s(INTERNET_HOST)))
        .collect();
    ensure!(
        leaked.is_empty(),
        "traffic to the deleted {fip} reached v1: {leaked:#?}"
    );
    Ok(())
}

// ---- ICMP errors ------------------------------------------------------------------------------

/// UDP to a closed port on a connected socket: prints "sport N", then "refused" when the
/// port-unreachable arrives (ECONNREFUSED), "timeout" or "data".
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

#[test]
fn icmp_port_unreachable_comes_back_through_the_fip() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3161, 161, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let c = t.build()?;
    let v1 = c.ip("v1")?;
    let fip = c.fip_ip("f1")?;
    let before = Counters::take(&c, &["h1"])?;

    for (i, dst) in [INTERNET_HOST, EXT_GATEWAY].into_iter().enumerate() {
        let at_v1 = c.capture_vm("v1", "icmp")?;
        let out = c.python(
            "v1",
            UDP_CLOSED_PORT,
            &[&s(dst), "9"],
            Duration::from_secs(10),
        )?;
        let o = cmd::text(&out);
        ensure!(
            o.contains("refused"),
            "UDP from v1 to the closed port {dst}:9 must fail with ECONNREFUSED: {o}"
        );
        let sport: u16 = o
            .lines()
            .find_map(|l| l.strip_prefix("sport ")?.trim().parse().ok())
            .context("no source port printed")?;
        let err = at_v1.wait_for("the port unreachable at v1", WAIT, |p| {
            p.contains("unreachable")
        })?;
        ensure!(
            err.has_ips(&s(dst), &s(v1)),
            "the ICMP error must be addressed to v1's fixed IP {v1}: {err}"
        );
        ensure!(
            err.contains(&format!("{v1}.{sport} > {dst}.9:")),
            "the quoted header must be v1's own datagram {v1}.{sport} > {dst}.9: {err}"
        );
        ensure!(
            !err.contains(&s(fip)),
            "the FIP must not appear in the translated ICMP error: {err}"
        );
        let n = before.wait_delta(&c, "h1", Stat::FipIcmpError, u64::try_from(i)? + 1)?;
        eprintln!("port unreachable from {dst} translated (fip_icmp_error +{n})");
        at_v1.stop()?;
    }
    Ok(())
}

// ---- security ---------------------------------------------------------------------------------

#[test]
fn external_packets_to_fixed_ips_or_unassociated_fips_are_dropped() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3171, 171, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"))
        .fip("fu", None);
    let c = t.build()?;
    let v1 = c.ip("v1")?;
    let (fip, fu) = (c.fip_ip("f1")?, c.fip_ip("fu")?);
    let h1 = c.host_ext("h1")?.clone();
    let ext_ns = c.ext_ns()?;
    c.wait_fip_kind("h1", "fu", Some("unassociated"), WAIT)?;
    let before = Counters::take(&c, &["h1"])?;

    let at_v1 = c.capture_vm("v1", "")?;
    // Crafted to h1's ext0 MAC, straight at the fixed IP.
    ext_udp_frames(&c, &h1.mac, INTERNET_HOST, v1, 40001, 9000, 3)?;
    let n = before.wait_delta(&c, "h1", Stat::DropExtToFixedIp, 3)?;
    // A router upstream that routes the tenant subnet to h1.
    cmd::exec_ok(
        &ext_ns,
        &[
            "ip",
            "neigh",
            "replace",
            &s(h1.fg_ip),
            "lladdr",
            &h1.mac,
            "dev",
            "br-ext",
            "nud",
            "permanent",
        ],
    )?;
    cmd::exec_ok(
        &ext_ns,
        &[
            "ip",
            "route",
            "add",
            &format!("{v1}/32"),
            "via",
            &s(h1.fg_ip),
            "dev",
            "br-ext",
        ],
    )?;
    let p = c.ping(EXT, v1, 2)?;
    ensure!(
        p.received == 0,
        "the fixed IP {v1} answered from outside:\n{}",
        p.output
    );
    let n2 = before.wait_delta(&c, "h1", Stat::DropExtToFixedIp, n + 2)?;
    eprintln!("drop_ext_to_fixed_ip +{n2}");

    // Unassociated FIP: nobody answers ARP, crafted packets are dropped and counted.
    let a = c.arping_ext(fu, 2, 2)?;
    ensure!(
        a.reply_macs.is_empty(),
        "ARP for the unassociated {fu} was answered:\n{}",
        a.output
    );
    ext_udp_frames(&c, &h1.mac, INTERNET_HOST, fu, 40002, 9001, 3)?;
    before.wait_delta(&c, "h1", Stat::DropFipUnassociated, 3)?;

    // Sentinel: the same crafted frame to v1's FIP arrives (translated).
    ext_udp_frames(&c, &h1.mac, INTERNET_HOST, fip, 40003, 9002, 1)?;
    at_v1.wait_for("the frame to the FIP", WAIT, |p| {
        udp_flow(p, INTERNET_HOST, Some(40003), v1, 9002)
    })?;
    let packets = at_v1.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.contains(".40001 > ")
                || p.contains(".40002 > ")
                || p.is_icmp_echo_request()
                || p.contains(&s(EXT_GATEWAY))
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "packets from outside to the fixed IP or the unassociated FIP reached v1: {leaked:#?}"
    );
    Ok(())
}

#[test]
fn vm_sending_with_another_ports_fip_as_source_is_dropped() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3181, 181, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("vc", "a", "h1").port_security(false))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let c = t.build()?;
    let fip = c.fip_ip("f1")?;
    let vc = c.vm("vc")?.clone();
    let gw_mac = c.gateway_mac("a")?;
    let before = Counters::take(&c, &["h1"])?;

    let at_ext = c.capture_ext_any("udp")?;
    c.send_udp_frame(
        "vc",
        &dvr_tests::UdpFrame {
            src_mac: vc.mac.clone(),
            dst_mac: gw_mac,
            src_ip: fip,
            dst_ip: INTERNET_HOST,
            sport: 40011,
            dport: 9011,
            count: 3,
        },
    )?;
    before.wait_delta(&c, "h1", Stat::DropFipSpoof, 3)?;
    // Sentinel: v1's own datagram leaves through the same ext0, translated to the FIP.
    c.udp_send("v1", INTERNET_HOST, 9012, 40012)?;
    at_ext.wait_for("v1's datagram from its FIP", WAIT, |p| {
        udp_flow(p, fip, Some(40012), INTERNET_HOST, 9012)
    })?;
    let packets = at_ext.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| p.contains(".40011 > ") || p.contains(&s(vc.ip)))
        .collect();
    ensure!(
        leaked.is_empty(),
        "datagrams spoofing {fip} from vc reached the external network: {leaked:#?}"
    );
    Ok(())
}

// ---- conntrack --------------------------------------------------------------------------------

/// Connects from `argv[3]:argv[4]` to `argv[1]:argv[2]`, exchanges one echo, prints "ready",
/// holds the connection until stdin closes, then closes it and prints "closed".
const HELD_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[3], int(sys.argv[4])))
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"hello")
d = s.recv(100)
print("ready", d.decode(), flush=True)
sys.stdin.read()
s.close()
print("closed", flush=True)
"#;

fn find_entry<'a>(
    entries: &'a [Value],
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e["src"] == src && e["sport"] == sport && e["dst"] == dst && e["dport"] == dport)
}

#[test]
fn conntrack_shows_both_directions_of_a_tcp_flow() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3191, 191, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"));
    let mut c = t.build()?;
    let v1 = c.ip("v1")?;
    let fip = c.fip_ip("f1")?;

    let _echo = c.spawn("v1", &["socat", "TCP4-LISTEN:7300,reuseaddr", "PIPE"])?;
    c.wait_listening("v1", false, 7300, WAIT)?;
    let mut client = c.spawn_python(
        EXT,
        HELD_CLIENT,
        &[&s(fip), "7300", &s(INTERNET_HOST), "41000"],
    )?;
    client.wait_stdout("the echo", WAIT, |o| o.contains("ready hello"))?;

    let ct: Vec<Value> = c
        .conntrack_for("h1", "f1")?
        .into_iter()
        .filter(|e| e["proto"] == "tcp")
        .collect();
    ensure!(ct.len() == 2, "one TCP flow must be two entries: {ct:?}");
    let inbound = find_entry(&ct, &s(INTERNET_HOST), 41000, &s(fip), 7300)
        .with_context(|| format!("no entry 198.51.100.10:41000 -> {fip}:7300: {ct:?}"))?;
    let outbound = find_entry(&ct, &s(v1), 7300, &s(INTERNET_HOST), 41000)
        .with_context(|| format!("no entry {v1}:7300 -> 198.51.100.10:41000: {ct:?}"))?;
    let vni = c.network("a")?.vni;
    for (e, zone, nat, nat_ip) in [
        (inbound, 0, "dnat", s(v1)),
        (outbound, u64::from(vni), "snat", s(fip)),
    ] {
        ensure!(
            e["zone"] == zone
                && e["nat"] == nat
                && e["nat_ip"] == nat_ip.as_str()
                && e["fip"] == s(fip).as_str()
                && e["fixed"] == s(v1).as_str()
                && e["hairpin"] == false
                && e["state"] == "established"
                && e["packets"].as_u64().is_some_and(|n| n >= 2)
                && e["bytes"].as_u64().is_some_and(|n| n > 0),
            "want zone {zone}, {nat} to {nat_ip}, fip {fip}, fixed {v1}, established, >= 2 \
             packets: {e}"
        );
    }

    client.close_stdin();
    client.wait_stdout("the close", WAIT, |o| o.contains("closed"))?;
    wait_until("the flow to leave the established state", WAIT, |why| {
        let ct: Vec<Value> = c
            .conntrack_for("h1", "f1")?
            .into_iter()
            .filter(|e| e["proto"] == "tcp")
            .collect();
        *why = format!("{ct:?}");
        Ok(ct
            .iter()
            .all(|e| e["state"] == "fin_wait" || e["state"] == "closed")
            .then_some(()))
    })?;
    Ok(())
}

#[test]
fn conntrack_udp_entries_expire_after_the_udp_timeout() -> Result<()> {
    require_preconditions();
    let mut t = base_topology(3201, 201, false);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .fip("f1", Some("v1"))
        .agent_args(&["--ct-timeout-udp", "2", "--ct-gc-interval-ms", "200"]);
    let mut c = t.build()?;
    let v1 = c.ip("v1")?;
    let fip = c.fip_ip("f1")?;

    let _server = c.udp_echo_server("v1", 7400)?;
    let r = c.udp_request(EXT, fip, 7400, b"ct", Some(INTERNET_HOST), 3)?;
    let last_packet = Instant::now();
    ensure!(r.from == SocketAddrV4::new(fip, 7400), "{r:?}");
    let ct: Vec<Value> = c
        .conntrack_for("h1", "f1")?
        .into_iter()
        .filter(|e| e["proto"] == "udp")
        .collect();
    ensure!(
        ct.len() == 2
            && ct.iter().any(|e| e["src"] == s(INTERNET_HOST).as_str()
                && e["dst"] == s(fip).as_str()
                && e["dport"] == 7400
                && e["nat"] == "dnat")
            && ct.iter().any(|e| e["src"] == s(v1).as_str()
                && e["sport"] == 7400
                && e["dst"] == s(INTERNET_HOST).as_str()
                && e["nat"] == "snat"),
        "one UDP flow must be two entries right after the exchange: {ct:?}"
    );

    wait_until(
        "the UDP entries to expire",
        Duration::from_secs(10),
        |why| {
            let left: Vec<Value> = c
                .conntrack_for("h1", "f1")?
                .into_iter()
                .filter(|e| e["proto"] == "udp")
                .collect();
            *why = format!("{left:?}");
            Ok(left.is_empty().then_some(()))
        },
    )?;
    let gone_after = last_packet.elapsed();
    eprintln!("UDP entries gone {gone_after:?} after the last packet (timeout 2 s, GC 200 ms)");
    if gone_after < Duration::from_millis(1500) {
        bail!("UDP entries vanished after {gone_after:?}, before the 2 s timeout");
    }
    Ok(())
}
