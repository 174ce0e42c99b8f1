//! East-west integration tests: real traffic between VM namespaces through dvr-agents, one per
//! host namespace, over a VXLAN underlay on a Linux bridge. Each test builds its own cloud and
//! asserts what can be observed from outside the agent: ping results and reply TTLs, packets
//! captured in VMs and on the underlay, `dvrctl` counters, the agent's exit status and output.
//!
//! Needs root, bpffs, tcpdump, socat, arping, python3-scapy and the built agent
//! (`cargo build -p dvr-userspace`); fails with a clear message otherwise. Run with
//! `--test-threads=1`.
//!
//! Negative assertions ("X sees nothing") use sentinels instead of sleeps: after the traffic
//! that must not arrive, a legitimate packet is sent along the same path and awaited; anything
//! that was going to arrive would have arrived before it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::{
    ArpFrame, Cloud, Packet, Topology, UNDERLAY_DEV, UdpFrame, VmSpec, all_ttl, cmd, exec_ok,
    not_sentinel, require_preconditions,
};

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

// ---- same subnet ------------------------------------------------------------------------------

#[test]
fn same_subnet_on_one_host() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1");
    t.network("a", 1101, "192.168.1.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1"));
    let mut c = t.build()?;

    let p = c.ping_ok("v1", c.ip("v2")?, 3)?;
    ensure!(
        all_ttl(&p.ttls, 64),
        "same-subnet reply TTL must be 64 (not routed): {:?}",
        p.ttls
    );
    c.ping_ok("v2", c.ip("v1")?, 3)?;
    let r = c.tcp_transfer("v1", "v2", 5001, MIB)?;
    eprintln!(
        "TCP v1 -> v2 (same host): {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    ensure!(
        c.stat("h1", Stat::TxLocal.as_str())? > 0,
        "tx_local stayed 0 after local delivery"
    );
    Ok(())
}

#[test]
fn same_subnet_across_hosts_uses_the_network_vni() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 1201, "192.168.1.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let (h1, h2) = (c.host("h1")?.clone(), c.host("h2")?.clone());

    let cap = c.capture_uplink("h1", "udp port 4789")?;
    let p = c.ping_ok("v1", v2.ip, 3)?;
    ensure!(
        all_ttl(&p.ttls, 64),
        "same-subnet reply TTL must be 64: {:?}",
        p.ttls
    );
    let r = c.tcp_transfer("v1", "v2", 5001, MIB)?;
    eprintln!(
        "TCP v1 -> v2 (across hosts): {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    let r = c.tcp_transfer("v2", "v1", 5002, MIB)?;
    eprintln!(
        "TCP v2 -> v1 (across hosts): {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    let packets = cap.stop()?;

    ensure!(!packets.is_empty(), "nothing on h1's underlay link");
    let wrong: Vec<_> = packets.iter().filter(|p| p.vni() != Some(1201)).collect();
    ensure!(
        wrong.is_empty(),
        "VXLAN packets with a VNI other than 1201: {wrong:#?}"
    );
    let req: Vec<_> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_request() && p.has_ips(&s(v1.ip), &s(v2.ip)))
        .collect();
    ensure!(
        req.len() == 3,
        "want 3 encapsulated echo requests on the underlay, got {}: {packets:#?}",
        req.len()
    );
    for p in &req {
        ensure!(
            p.inner_eth() == Some((v1.mac.clone(), v2.mac.clone())),
            "inner Ethernet must be VM to VM: {p}"
        );
        ensure!(p.inner_ttl() == Some(64), "inner TTL must stay 64: {p}");
        ensure!(
            p.contains(&format!("{}.", h1.tunnel_ip))
                && p.contains(&format!("> {}.4789", h2.tunnel_ip)),
            "outer must be h1 -> h2:4789: {p}"
        );
    }
    let rep: Vec<_> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_reply() && p.has_ips(&s(v2.ip), &s(v1.ip)))
        .collect();
    ensure!(
        rep.len() == 3,
        "want 3 encapsulated echo replies, got {}",
        rep.len()
    );
    for p in &rep {
        ensure!(
            p.inner_eth() == Some((v2.mac.clone(), v1.mac.clone())),
            "reply inner Ethernet: {p}"
        );
    }
    ensure!(
        c.stat("h1", Stat::TxTunnel.as_str())? > 0,
        "tx_tunnel of h1 stayed 0"
    );
    ensure!(
        c.stat("h2", Stat::RxTunnel.as_str())? > 0,
        "rx_tunnel of h2 stayed 0"
    );
    // Every unicast frame for the tunnel was encapsulated by the datapath itself, but for
    // the GSO ones (TCP), left to the device.
    let (tx, enc, dev) = (
        c.stat("h1", Stat::TxTunnel.as_str())?,
        c.stat("h1", Stat::TxEncap.as_str())?,
        c.stat("h1", Stat::TxEncapDevice.as_str())?,
    );
    ensure!(
        enc + dev == tx && enc >= 3,
        "h1: tx_tunnel {tx}, tx_encap {enc}, tx_encap_device {dev}: want the 3 echo requests \
         at least in BPF, the rest through the device"
    );
    // The echo requests (not GSO) were decapsulated on h2's underlay NIC.
    let decap = c.stat("h2", Stat::RxDecap.as_str())?;
    ensure!(
        decap >= 3,
        "h2: rx_decap {decap}, want at least the 3 echo requests"
    );
    Ok(())
}

/// The MAC of `dev` in namespace `ns`.
fn link_mac(ns: &str, dev: &str) -> Result<String> {
    let out = cmd::run_ok("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link show")?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no MAC of {dev} in {ns}"))
}

/// A host that does VXLAN in BPF (h1) and one that leaves it to the VXLAN device both ways
/// (`--tunnel-encap device --tunnel-decap device`, h2) carry one network's traffic both
/// ways, and what h1 puts on the wire is standard VXLAN: UDP to 4789 from a source port in
/// 49152-65535, outer MACs of the two uplinks, the network's VNI, the VMs' frame inside;
/// h1 decapsulates h2's echo requests itself. With forwarding off on h1's VXLAN device the
/// FIB helper refuses, and h1 falls back to the device (counted).
#[test]
fn bpf_and_device_encapsulating_hosts_talk() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.host_agent_args(
        "h2",
        &["--tunnel-encap", "device", "--tunnel-decap", "device"],
    );
    t.network("a", 1251, "192.168.1.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let (h1, h2) = (c.host("h1")?.clone(), c.host("h2")?.clone());
    let (mac1, mac2) = (
        link_mac(&h1.ns, UNDERLAY_DEV)?,
        link_mac(&h2.ns, UNDERLAY_DEV)?,
    );

    let cap = c.capture_uplink("h1", "udp port 4789")?;
    c.ping_ok("v1", v2.ip, 3)?;
    c.ping_ok("v2", v1.ip, 3)?;
    for (from, to, port) in [("v1", "v2", 5011), ("v2", "v1", 5012)] {
        let r = c.tcp_transfer(from, to, port, MIB)?;
        eprintln!(
            "TCP {from} -> {to} (bpf / device hosts): {} bytes in {:?}",
            r.bytes, r.elapsed
        );
    }
    let packets = cap.stop()?;
    let from_h1: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.contains(&format!("{}.", h1.tunnel_ip))
                && p.contains(&format!("> {}.4789", h2.tunnel_ip))
        })
        .collect();
    ensure!(
        !from_h1.is_empty(),
        "nothing from h1 to h2:4789 on the underlay: {packets:#?}"
    );
    for p in &from_h1 {
        ensure!(p.vni() == Some(1251), "VNI must be 1251: {p}");
        ensure!(
            p.outer_eth() == Some((mac1.clone(), mac2.clone())),
            "outer Ethernet must be h1's uplink to h2's ({mac1} > {mac2}): {p}"
        );
    }
    // v1's echo requests, encapsulated in BPF: the source port from the flow hash.
    let req: Vec<_> = from_h1
        .iter()
        .filter(|p| p.is_icmp_echo_request() && p.has_ips(&s(v1.ip), &s(v2.ip)))
        .collect();
    for p in &req {
        let sport = p
            .to_string()
            .split_whitespace()
            .find_map(|w| {
                w.strip_prefix(&format!("{}.", h1.tunnel_ip))
                    .map(str::to_string)
            })
            .and_then(|w| w.trim_end_matches(':').parse::<u16>().ok())
            .with_context(|| format!("no outer UDP source port in {p}"))?;
        ensure!(
            sport >= 49152,
            "outer UDP source port {sport} outside 49152-65535: {p}"
        );
    }
    let req = req.len();
    ensure!(req == 3, "want v1's 3 echo requests from h1, got {req}");
    ensure!(
        from_h1.iter().all(|p| p.inner_eth().is_some()),
        "a frame from h1 without an inner Ethernet header"
    );
    let (tx1, enc1, dev1) = (
        c.stat("h1", Stat::TxTunnel.as_str())?,
        c.stat("h1", Stat::TxEncap.as_str())?,
        c.stat("h1", Stat::TxEncapDevice.as_str())?,
    );
    ensure!(
        enc1 + dev1 == tx1 && enc1 >= 3,
        "h1: tx_tunnel {tx1}, tx_encap {enc1}, tx_encap_device {dev1}: want all but GSO in BPF"
    );
    let (tx2, enc2) = (
        c.stat("h2", Stat::TxTunnel.as_str())?,
        c.stat("h2", Stat::TxEncap.as_str())?,
    );
    ensure!(
        tx2 > 0 && enc2 == 0,
        "h2 (device): tx_tunnel {tx2}, tx_encap {enc2}: want all through the device"
    );
    let (decap1, decap2) = (
        c.stat("h1", Stat::RxDecap.as_str())?,
        c.stat("h2", Stat::RxDecap.as_str())?,
    );
    ensure!(
        decap1 >= 3 && decap2 == 0,
        "rx_decap: h1 {decap1} (want v2's 3 echo requests at least), h2 {decap2} (want 0)"
    );

    // Forwarding off on h1's VXLAN device: the FIB helper refuses; the device takes over.
    exec_ok(
        &h1.ns,
        &["sysctl", "-q", "-w", "net.ipv4.conf.dvr-vx.forwarding=0"],
    )?;
    c.ping_ok("v1", v2.ip, 2)?;
    let dev1_off = c.stat("h1", Stat::TxEncapDevice.as_str())?;
    ensure!(
        dev1_off >= dev1 + 2,
        "h1: tx_encap_device {dev1} -> {dev1_off} after 2 echo requests with forwarding off"
    );
    ensure!(
        c.stat("h1", Stat::TxEncap.as_str())? == enc1,
        "h1 still encapsulated in BPF with forwarding off on dvr-vx"
    );
    Ok(())
}

// ---- cross subnet -----------------------------------------------------------------------------

fn two_subnet_topology(vni_a: u32, vni_b: u32) -> Topology {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", vni_a, "192.168.1.0/24")
        .network("b", vni_b, "192.168.2.0/24");
    t.router("r1", &["a", "b"]);
    t
}

#[test]
fn cross_subnet_on_one_host_is_routed_locally() -> Result<()> {
    require_preconditions();
    let mut t = two_subnet_topology(1301, 1302);
    // v3/v4 make both networks span both hosts, so a wrong tunnel send would be possible.
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h1"))
        .vm(VmSpec::new("v3", "a", "h2"))
        .vm(VmSpec::new("v4", "b", "h2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let (gw_a, gw_b) = (c.gateway_mac("a")?, c.gateway_mac("b")?);

    let under = c.capture_underlay("")?;
    let at_v2 = c.capture_vm("v2", "icmp")?;
    let at_v1 = c.capture_vm("v1", "icmp")?;
    let p = c.ping_ok("v1", v2.ip, 3)?;
    ensure!(
        all_ttl(&p.ttls, 63),
        "reply TTL must be 63 (one routing hop each way): {:?}",
        p.ttls
    );
    let req = at_v2.wait_for_count("echo requests from v1", 3, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(v1.ip), &s(v2.ip))
    })?;
    for p in &req {
        ensure!(
            p.outer_eth() == Some((gw_b.clone(), v2.mac.clone())),
            "v2 must see the echo from its gateway MAC {gw_b}: {p}"
        );
        ensure!(
            p.ttls() == vec![63],
            "routed request must arrive with TTL 63: {p}"
        );
    }
    let rep = at_v1.wait_for_count("echo replies at v1", 3, WAIT, |p| p.is_icmp_echo_reply())?;
    for p in &rep {
        ensure!(
            p.outer_eth() == Some((gw_a.clone(), v1.mac.clone())),
            "v1 must see the reply from its gateway MAC {gw_a}: {p}"
        );
    }
    let r = c.tcp_transfer("v1", "v2", 5001, MIB)?;
    eprintln!(
        "TCP v1 -> v2 (routed, same host): {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    c.wait_underlay_sentinel(&under, "h1", "h2")?;
    let packets = under.stop()?;
    let leaked = not_sentinel(&packets);
    ensure!(
        leaked.is_empty(),
        "routing between VMs of one host must not touch the underlay: {leaked:#?}"
    );
    ensure!(
        c.stat("h1", Stat::Routed.as_str())? >= 6,
        "routed counter of h1 below 6"
    );
    Ok(())
}

#[test]
fn cross_subnet_across_hosts_routes_on_the_source_host() -> Result<()> {
    require_preconditions();
    let mut t = two_subnet_topology(1401, 1402);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build()?;
    let (v1, v2) = (c.vm("v1")?.clone(), c.vm("v2")?.clone());
    let (h1, h2) = (c.host("h1")?.clone(), c.host("h2")?.clone());
    let (gw_a, gw_b) = (c.gateway_mac("a")?, c.gateway_mac("b")?);

    let under = c.capture_uplink("h1", "udp port 4789")?;
    let at_v2 = c.capture_vm("v2", "icmp")?;
    let at_v1 = c.capture_vm("v1", "icmp")?;
    let p = c.ping_ok("v1", v2.ip, 3)?;
    ensure!(
        all_ttl(&p.ttls, 63),
        "reply TTL must be 63 (routed once, on each source host): {:?}",
        p.ttls
    );

    let req = at_v2.wait_for_count("echo requests at v2", 3, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(v1.ip), &s(v2.ip))
    })?;
    for p in &req {
        ensure!(
            p.outer_eth() == Some((gw_b.clone(), v2.mac.clone())),
            "v2 must see the echo from its gateway MAC {gw_b}: {p}"
        );
        ensure!(p.ttls() == vec![63], "request TTL at v2: {p}");
    }
    let rep = at_v1.wait_for_count("echo replies at v1", 3, WAIT, |p| p.is_icmp_echo_reply())?;
    for p in &rep {
        ensure!(
            p.outer_eth() == Some((gw_a.clone(), v1.mac.clone())),
            "v1 must see the reply from its gateway MAC {gw_a}: {p}"
        );
    }

    let packets = under
        .wait_for_count("encapsulated echo replies", 3, WAIT, |p| {
            p.is_icmp_echo_reply()
        })
        .map(|_| ())
        .and_then(|()| under.stop())?;
    let req: Vec<_> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_request() && p.has_ips(&s(v1.ip), &s(v2.ip)))
        .collect();
    ensure!(
        req.len() == 3,
        "want 3 echo requests on h1's underlay, got {}: {packets:#?}",
        req.len()
    );
    for p in &req {
        ensure!(
            p.vni() == Some(1402),
            "request must travel in the destination network's VNI 1402: {p}"
        );
        ensure!(
            p.inner_eth() == Some((h1.dvr_mac.clone(), v2.mac.clone())),
            "inner source MAC must be h1's DVR MAC {}: {p}",
            h1.dvr_mac
        );
        ensure!(
            p.inner_ttl() == Some(63),
            "request was routed on h1: inner TTL 63: {p}"
        );
    }
    let rep: Vec<_> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_reply() && p.has_ips(&s(v2.ip), &s(v1.ip)))
        .collect();
    ensure!(
        rep.len() == 3,
        "want 3 echo replies on h1's underlay, got {}",
        rep.len()
    );
    for p in &rep {
        ensure!(p.vni() == Some(1401), "reply must travel in VNI 1401: {p}");
        ensure!(
            p.inner_eth() == Some((h2.dvr_mac.clone(), v1.mac.clone())),
            "reply inner source MAC must be h2's DVR MAC {}: {p}",
            h2.dvr_mac
        );
        ensure!(
            p.inner_ttl() == Some(63),
            "reply was routed on h2: inner TTL 63: {p}"
        );
    }
    let r = c.tcp_transfer("v1", "v2", 5001, MIB)?;
    eprintln!(
        "TCP v1 -> v2 (routed, across hosts): {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    ensure!(
        c.stat("h1", Stat::Routed.as_str())? >= 3,
        "routed counter of h1 below 3"
    );
    ensure!(
        c.stat("h2", Stat::Routed.as_str())? >= 3,
        "routed counter of h2 below 3"
    );
    Ok(())
}

// ---- gateway ----------------------------------------------------------------------------------

#[test]
fn gateway_arp_and_ping_are_answered_on_the_host() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 1501, "192.168.1.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let c = t.build()?;
    let gw = c.network("a")?.gateway;
    let gw_mac = c.gateway_mac("a")?;
    let before: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| c.stats(h))
        .collect::<Result<_>>()?;

    let under = c.capture_underlay("")?;
    for vm in ["v1", "v2"] {
        let a = c.arping(vm, gw, 2, 4)?;
        ensure!(
            a.reply_macs.len() >= 2,
            "arping {vm} -> gateway {gw}: {}",
            a.output
        );
        ensure!(
            a.reply_macs.iter().all(|m| *m == gw_mac),
            "gateway ARP must answer {gw_mac}: {}",
            a.output
        );
        c.ping_ok(vm, gw, 3)?;
    }
    c.wait_underlay_sentinel(&under, "h1", "h2")?;
    let packets = under.stop()?;
    let leaked = not_sentinel(&packets);
    ensure!(
        leaked.is_empty(),
        "gateway ARP/ping must be answered on the host, nothing on the underlay: {leaked:#?}"
    );

    for (i, h) in ["h1", "h2"].iter().enumerate() {
        let after = c.stats(h)?;
        let d = |id: Stat| {
            after
                .get(id.as_str())
                .copied()
                .unwrap_or(0)
                .saturating_sub(before[i].get(id.as_str()).copied().unwrap_or(0))
        };
        ensure!(
            d(Stat::ArpReply) >= 2,
            "{h}: arp_reply grew by {} (< 2)",
            d(Stat::ArpReply)
        );
        ensure!(
            d(Stat::IcmpEchoReply) >= 3,
            "{h}: icmp_echo_reply grew by {} (< 3)",
            d(Stat::IcmpEchoReply)
        );
    }
    Ok(())
}

// ---- broadcast scope --------------------------------------------------------------------------

#[test]
fn broadcast_reaches_only_hosts_and_vms_of_its_network() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").host("h3");
    t.network("a", 1601, "192.168.31.0/24")
        .network("b", 1602, "192.168.32.0/24");
    t.vm(VmSpec::new("a1", "a", "h1"))
        .vm(VmSpec::new("a2", "a", "h2"))
        .vm(VmSpec::new("b3", "b", "h3"));
    let c = t.build()?;
    let a1 = c.vm("a1")?.clone();
    let unused = Ipv4Addr::new(192, 168, 31, 99);
    let flooded_before = c.stat("h1", Stat::Flooded.as_str())?;

    let up2 = c.capture_uplink("h2", "udp port 4789")?;
    let up3 = c.capture_uplink("h3", "")?;
    let at_a2 = c.capture_vm("a2", "arp")?;
    let at_b3 = c.capture_vm("b3", "")?;
    let a = c.arping("a1", unused, 1, 1)?;
    ensure!(
        a.reply_macs.is_empty(),
        "nobody owns {unused}, yet ARP was answered: {}",
        a.output
    );

    let (target, sender) = (s(unused), s(a1.ip));
    let who_has = |p: &Packet| p.is_arp_request(&target, &sender);
    at_a2.wait_for("the ARP request at a2", WAIT, who_has)?;
    let p = up2.wait_for("the flooded ARP on h2's underlay", WAIT, |p| who_has(p))?;
    ensure!(
        p.vni() == Some(1601),
        "flood must use network a's VNI 1601: {p}"
    );
    ensure!(
        p.inner_eth() == Some((a1.mac.clone(), "ff:ff:ff:ff:ff:ff".into())),
        "flooded frame must be a1's broadcast: {p}"
    );

    // h3 hosts only network b: the flood must not go there. The sentinel to h3 follows the
    // flood on the same link; anything sent to h3 before it was captured before it.
    c.wait_underlay_sentinel(&up3, "h1", "h3")?;
    let at_h3 = up3.stop()?;
    let leaked = not_sentinel(&at_h3);
    ensure!(
        leaked.is_empty(),
        "network a's broadcast reached h3 (which has no port on a): {leaked:#?}"
    );
    let at_b3 = at_b3.stop()?;
    ensure!(
        at_b3.is_empty(),
        "a VM on network b saw traffic: {at_b3:#?}"
    );
    up2.stop()?;
    at_a2.stop()?;
    ensure!(
        c.stat("h1", Stat::Flooded.as_str())? > flooded_before,
        "flooded counter of h1 did not grow"
    );
    Ok(())
}

// ---- tenants ----------------------------------------------------------------------------------

#[test]
fn overlapping_tenants_are_isolated() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a21", 2101, "192.168.21.0/24")
        .network("a22", 2102, "192.168.22.0/24")
        .network("b21", 2201, "192.168.21.0/24")
        .network("b22", 2202, "192.168.22.0/24");
    t.router("ra", &["a21", "a22"])
        .router("rb", &["b21", "b22"]);
    let ip21 = Ipv4Addr::new(192, 168, 21, 10);
    let ip22 = Ipv4Addr::new(192, 168, 22, 10);
    t.vm(VmSpec::new("ta1", "a21", "h1").ip(ip21))
        .vm(VmSpec::new("ta2", "a22", "h2").ip(ip22))
        .vm(VmSpec::new("tb1", "b21", "h1").ip(ip21))
        .vm(VmSpec::new("tb2", "b22", "h2").ip(ip22));
    let c = t.build()?;
    let macs_a: Vec<String> = [
        c.vm("ta1")?.mac.clone(),
        c.vm("ta2")?.mac.clone(),
        c.gateway_mac("a21")?,
        c.gateway_mac("a22")?,
    ]
    .into();
    let macs_b: Vec<String> = [
        c.vm("tb1")?.mac.clone(),
        c.vm("tb2")?.mac.clone(),
        c.gateway_mac("b21")?,
        c.gateway_mac("b22")?,
    ]
    .into();

    let under = c.capture_uplink("h1", "udp port 4789")?;
    let caps = ["ta1", "ta2", "tb1", "tb2"].map(|v| c.capture_vm(v, "icmp"));
    let [ta1, ta2, tb1, tb2] = caps;
    let (ta1, ta2, tb1, tb2) = (ta1?, ta2?, tb1?, tb2?);

    // Tenant A first, then tenant B: B's captures must hold only B's 3 echoes.
    let pa = c.ping_ok("ta1", ip22, 3)?;
    ensure!(all_ttl(&pa.ttls, 63), "tenant A reply TTL: {:?}", pa.ttls);
    let pb = c.ping_ok("tb1", ip22, 3)?;
    ensure!(all_ttl(&pb.ttls, 63), "tenant B reply TTL: {:?}", pb.ttls);
    tb2.wait_for_count(
        "tenant B echo requests at tb2",
        3,
        WAIT,
        Packet::is_icmp_echo_request,
    )?;
    ta2.wait_for_count(
        "tenant A echo requests at ta2",
        3,
        WAIT,
        Packet::is_icmp_echo_request,
    )?;

    // (VM, its capture, the gateway MAC it must receive from, the other tenant's MACs)
    for (name, cap, gw, foreign) in [
        ("ta2", ta2, c.gateway_mac("a22")?, &macs_b),
        ("tb2", tb2, c.gateway_mac("b22")?, &macs_a),
        ("ta1", ta1, c.gateway_mac("a21")?, &macs_b),
        ("tb1", tb1, c.gateway_mac("b21")?, &macs_a),
    ] {
        let packets = cap.stop()?;
        let requests: Vec<_> = packets
            .iter()
            .filter(|p| p.is_icmp_echo_request())
            .collect();
        let replies: Vec<_> = packets.iter().filter(|p| p.is_icmp_echo_reply()).collect();
        let inbound: Vec<_> = if name.ends_with('2') {
            requests.clone()
        } else {
            replies.clone()
        };
        ensure!(
            inbound.len() == 3,
            "{name} must see exactly its own tenant's 3 echoes, saw {}: {packets:#?}",
            inbound.len()
        );
        for p in &inbound {
            ensure!(
                p.outer_eth().map(|e| e.0) == Some(gw.clone()),
                "{name} must receive from its own gateway MAC {gw}: {p}"
            );
        }
        let foreign_seen: Vec<_> = packets
            .iter()
            .filter(|p| foreign.iter().any(|m| p.contains(m)))
            .collect();
        ensure!(
            foreign_seen.is_empty(),
            "{name} saw the other tenant's MACs: {foreign_seen:#?}"
        );
    }
    let packets = under.stop()?;
    let count = |vni: u32| {
        packets
            .iter()
            .filter(|p| p.vni() == Some(vni) && p.is_icmp_echo_request())
            .count()
    };
    ensure!(
        count(2102) == 3 && count(2202) == 3,
        "echo requests per VNI on h1's underlay: 2102: {}, 2202: {} (want 3 each)",
        count(2102),
        count(2202)
    );
    ensure!(
        count(2101) == 0 && count(2201) == 0,
        "requests must travel in the destination VNI"
    );
    Ok(())
}

// ---- port security ----------------------------------------------------------------------------

const AAP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 41, 200);
const FOREIGN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 41, 99);
const SPOOF_MAC: &str = "fa:16:3e:de:ad:01";

/// va (h1, port security, allowed pair .200), vb (h2, the receiver), vc (h1, port security off).
fn spoof_cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 2301, "192.168.41.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("va", "a", "h1").allowed_pair(AAP_IP, None))
        .vm(VmSpec::new("vb", "a", "h2"))
        .vm(VmSpec::new("vc", "a", "h1").port_security(false));
    t.build()
}

/// A UDP frame to vb (port 40000) with the given source addresses.
fn udp(c: &Cloud, src_mac: &str, src_ip: Ipv4Addr, sport: u16) -> Result<UdpFrame> {
    let vb = c.vm("vb")?;
    Ok(UdpFrame {
        src_mac: src_mac.into(),
        dst_mac: vb.mac.clone(),
        src_ip,
        dst_ip: vb.ip,
        sport,
        dport: 40000,
        count: 1,
    })
}

fn udp_from(p: &Packet, ip: Ipv4Addr, sport: u16) -> bool {
    p.contains(&format!("{ip}.{sport} > "))
}

#[test]
fn spoofed_source_mac_is_dropped() -> Result<()> {
    require_preconditions();
    let c = spoof_cloud()?;
    let va = c.vm("va")?.clone();
    let base = c.stat("h1", Stat::DropSpoofMac.as_str())?;
    let at_vb = c.capture_vm("vb", "udp")?;
    c.send_udp_frame("va", &udp(&c, SPOOF_MAC, va.ip, 40001)?)?;
    c.wait_stat_at_least("h1", Stat::DropSpoofMac.as_str(), base + 1, WAIT)?;
    // Sentinel: the same frame with va's own MAC must arrive.
    c.send_udp_frame("va", &udp(&c, &va.mac, va.ip, 40002)?)?;
    at_vb.wait_for("the legitimate frame", WAIT, |p| udp_from(p, va.ip, 40002))?;
    let packets = at_vb.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| udp_from(p, va.ip, 40001))
        .collect();
    ensure!(
        leaked.is_empty(),
        "frame with a foreign source MAC reached vb: {leaked:#?}"
    );
    Ok(())
}

#[test]
fn spoofed_source_ip_is_dropped() -> Result<()> {
    require_preconditions();
    let c = spoof_cloud()?;
    let va = c.vm("va")?.clone();
    let vc_ip = c.ip("vc")?;
    let base = c.stat("h1", Stat::DropSpoofIp.as_str())?;
    let at_vb = c.capture_vm("vb", "udp")?;
    // An unused address and another VM's address.
    c.send_udp_frame("va", &udp(&c, &va.mac, FOREIGN_IP, 40001)?)?;
    c.send_udp_frame("va", &udp(&c, &va.mac, vc_ip, 40001)?)?;
    c.wait_stat_at_least("h1", Stat::DropSpoofIp.as_str(), base + 2, WAIT)?;
    c.send_udp_frame("va", &udp(&c, &va.mac, va.ip, 40002)?)?;
    at_vb.wait_for("the legitimate packet", WAIT, |p| udp_from(p, va.ip, 40002))?;
    let packets = at_vb.stop()?;
    let leaked: Vec<_> = packets.iter().filter(|p| p.contains(".40001 > ")).collect();
    ensure!(
        leaked.is_empty(),
        "packets with a foreign source IP reached vb: {leaked:#?}"
    );
    Ok(())
}

#[test]
fn spoofed_arp_sender_is_dropped() -> Result<()> {
    require_preconditions();
    let c = spoof_cloud()?;
    let va = c.vm("va")?.clone();
    let target = Ipv4Addr::new(192, 168, 41, 98);
    let base = c.stat("h1", Stat::DropSpoofArp.as_str())?;
    let at_vb = c.capture_vm("vb", "arp")?;
    let arp = |sender_ip| ArpFrame {
        eth_src: va.mac.clone(),
        sender_mac: va.mac.clone(),
        sender_ip,
        target_ip: target,
        count: 1,
    };
    c.send_arp_request("va", &arp(FOREIGN_IP))?;
    c.wait_stat_at_least("h1", Stat::DropSpoofArp.as_str(), base + 1, WAIT)?;
    c.send_arp_request("va", &arp(va.ip))?;
    at_vb.wait_for("the legitimate ARP request", WAIT, |p| {
        p.is_arp_request(&s(target), &s(va.ip))
    })?;
    let packets = at_vb.stop()?;
    let leaked: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.arp_requests()
                .iter()
                .any(|(_, sender)| *sender == s(FOREIGN_IP))
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "ARP with a foreign sender IP reached vb: {leaked:#?}"
    );
    Ok(())
}

#[test]
fn allowed_address_pair_is_accepted() -> Result<()> {
    require_preconditions();
    let c = spoof_cloud()?;
    let vb_ip = c.ip("vb")?;
    exec_ok(
        &c.vm("va")?.ns,
        &["ip", "addr", "add", &format!("{AAP_IP}/24"), "dev", "eth0"],
    )?;
    let before_ip = c.stat("h1", Stat::DropSpoofIp.as_str())?;
    let before_arp = c.stat("h1", Stat::DropSpoofArp.as_str())?;
    let at_vb = c.capture_vm("vb", "icmp")?;
    let p = c.ping_with("va", vb_ip, 3, &["-I", &s(AAP_IP)])?;
    ensure!(
        p.all_answered(),
        "ping from the allowed-pair address {AAP_IP}: {}",
        p.output
    );
    at_vb.wait_for_count("echo requests from the allowed pair", 3, WAIT, |p| {
        p.is_icmp_echo_request() && p.has_ips(&s(AAP_IP), &s(vb_ip))
    })?;
    at_vb.stop()?;
    ensure!(
        c.stat("h1", Stat::DropSpoofIp.as_str())? == before_ip,
        "allowed pair traffic counted as drop_spoof_ip"
    );
    ensure!(
        c.stat("h1", Stat::DropSpoofArp.as_str())? == before_arp,
        "allowed pair ARP counted as drop_spoof_arp"
    );
    Ok(())
}

#[test]
fn port_security_disabled_delivers_foreign_source_ip() -> Result<()> {
    require_preconditions();
    let c = spoof_cloud()?;
    let vc = c.vm("vc")?.clone();
    let before = c.stat("h1", Stat::DropSpoofIp.as_str())?;
    let at_vb = c.capture_vm("vb", "udp")?;
    c.send_udp_frame("vc", &udp(&c, &vc.mac, FOREIGN_IP, 40003)?)?;
    at_vb.wait_for("the foreign-source packet from vc", WAIT, |p| {
        udp_from(p, FOREIGN_IP, 40003)
    })?;
    at_vb.stop()?;
    ensure!(
        c.stat("h1", Stat::DropSpoofIp.as_str())? == before,
        "drop_spoof_ip grew for a port without port security"
    );
    Ok(())
}

// ---- dynamics ---------------------------------------------------------------------------------

#[test]
fn vm_added_after_agent_start_works_within_one_second() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 2401, "192.168.51.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let mut c = t.build()?;
    c.ping_ok("v1", c.ip("v2")?, 1)?;

    // The probing VMs retransmit ARP every 50 ms instead of every second: an ARP sent before the
    // tap is attached would otherwise delay the next try by the kernel's 1 s retransmit timer
    // and measure the guest, not the agent.
    for vm in ["v1", "v2"] {
        exec_ok(
            &c.vm(vm)?.ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.neigh.eth0.retrans_time_ms=50",
            ],
        )?;
    }

    let late = c.add_vm_later(VmSpec::new("v3", "a", "h1"))?;
    let v3 = c.ip("v3")?;
    let limit = Duration::from_secs(1);
    let (mut from_v1, mut from_v2) = (None, None);
    while late.tap_up_at.elapsed() <= limit && (from_v1.is_none() || from_v2.is_none()) {
        if from_v1.is_none() && c.ping_once("v1", v3, Duration::from_millis(100))? {
            from_v1 = Some(late.tap_up_at.elapsed());
        }
        if from_v2.is_none() && c.ping_once("v2", v3, Duration::from_millis(100))? {
            from_v2 = Some(late.tap_up_at.elapsed());
        }
    }
    eprintln!(
        "late VM v3: reachable from v1 (same host) after {from_v1:?}, from v2 (other host) after \
         {from_v2:?} (since its tap came up)"
    );
    let in_time = |t: Option<Duration>| t.is_some_and(|t| t <= limit);
    ensure!(
        in_time(from_v1) && in_time(from_v2),
        "late VM v3 not reachable within {limit:?} of its tap coming up (from v1 (same host): \
         {from_v1:?}, from v2 (other host): {from_v2:?}); h1 ports: {:?}",
        c.show_ports("h1")
    );
    c.wait_port_attached("v3", WAIT)?;
    Ok(())
}

// ---- validation -------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    state: serde_json::Value,
    /// stderr must name one of these ids ...
    ids: Vec<String>,
    /// ... and one of these field names.
    fields: &'static [&'static str],
}

#[test]
fn invalid_state_at_start_is_rejected_naming_object_and_field() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1");
    t.network("a", 2501, "192.168.61.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1"));
    let mut c = t.build_without_agents()?;
    let base = c.state().clone();
    let net = c.network("a")?.clone();
    let (p1, p2) = (c.vm("v1")?.port_id.clone(), c.vm("v2")?.port_id.clone());
    let host_name = c.host("h1")?.agent_name.clone();

    let edit = |f: &dyn Fn(&mut dvr_tests::State)| -> Result<serde_json::Value> {
        let mut st = base.clone();
        f(&mut st);
        st.to_value()
    };
    let v1_ip = c.ip("v1")?.to_string();
    let cases = vec![
        Case {
            name: "bad CIDR",
            state: edit(&|st| st.subnets[0].cidr = "192.168.61.0/33".into())?,
            ids: vec![net.subnet_id.clone()],
            fields: &["cidr"],
        },
        Case {
            name: "gateway outside subnet",
            state: edit(&|st| st.subnets[0].gateway_ip = "192.168.99.1".into())?,
            ids: vec![net.subnet_id.clone()],
            fields: &["gateway_ip"],
        },
        Case {
            name: "duplicate fixed IP",
            state: edit(&|st| {
                if let Some(p) = st.port_mut(&p2) {
                    p.fixed_ips[0].ip_address = v1_ip.clone();
                }
            })?,
            ids: vec![p1.clone(), p2.clone()],
            fields: &["ip_address", "fixed_ips"],
        },
        Case {
            name: "unknown network reference",
            state: edit(&|st| {
                if let Some(p) = st.port_mut(&p1) {
                    p.network_id = "deadbeef-0000-4000-8000-000000000000".into();
                }
            })?,
            ids: vec![p1.clone()],
            fields: &["network_id"],
        },
        Case {
            name: "unknown subnet reference",
            state: edit(&|st| {
                if let Some(p) = st.port_mut(&p1) {
                    p.fixed_ips[0].subnet_id = "deadbeef-0000-4000-8000-000000000001".into();
                }
            })?,
            ids: vec![p1.clone()],
            fields: &["subnet_id", "fixed_ips"],
        },
        Case {
            name: "VNI collision",
            state: edit(&|st| {
                let mut n = st.networks[0].clone();
                n.id = "c0111de0-0000-4000-8000-000000000002".into();
                n.name = "collides".into();
                st.networks.push(n);
            })?,
            ids: vec![
                net.network_id.clone(),
                "c0111de0-0000-4000-8000-000000000002".into(),
            ],
            fields: &["segmentation_id"],
        },
        Case {
            name: "bad MAC",
            state: edit(&|st| {
                if let Some(p) = st.port_mut(&p1) {
                    p.mac_address = "fa:16:3e:zz:00:01".into();
                }
            })?,
            ids: vec![p1.clone()],
            fields: &["mac_address"],
        },
        Case {
            name: "bad tunnel IP",
            state: edit(&|st| st.hosts[0].tunnel_ip = "192.0.2.300".into())?,
            ids: vec![host_name.clone()],
            fields: &["tunnel_ip"],
        },
    ];

    let mut failures = Vec::new();
    for case in cases {
        let run = c.run_agent_to_exit("h1", &case.state, Duration::from_secs(10))?;
        let stderr = run.stderr.clone();
        let verdict = match run.status {
            None => Some("still running after 10 s".to_string()),
            Some(st) if st.success() => Some(format!("exited successfully ({st})")),
            Some(_) if !case.ids.iter().any(|id| stderr.contains(id.as_str())) => {
                Some(format!("stderr names none of the ids {:?}", case.ids))
            }
            Some(_) if !case.fields.iter().any(|f| stderr.contains(f)) => {
                Some(format!("stderr names none of the fields {:?}", case.fields))
            }
            Some(_) => None,
        };
        eprintln!(
            "{:<28} {:?} -> {}",
            case.name,
            run.status,
            if verdict.is_none() { "ok" } else { "FAIL" }
        );
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("    stderr: {line}");
        }
        if let Some(v) = verdict {
            failures.push(format!(
                "{}: {v}\n  stderr: {}\n  stdout: {}",
                case.name,
                stderr.trim(),
                run.stdout.trim()
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} invalid state(s) not rejected properly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn bad_update_keeps_last_good_state_then_next_good_one_applies() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 2601, "192.168.71.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let mut c = t.build()?;
    let v2 = c.ip("v2")?;
    c.ping_ok("v1", v2, 2)?;

    let mut bad = c.state().to_value()?;
    bad["subnets"][0]["cidr"] = "192.168.71.0/33".into();
    c.write_raw_state(&bad)?;
    for h in ["h1", "h2"] {
        c.wait_agent_log(h, "refused", WAIT)
            .with_context(|| format!("agent of {h} did not log 'refused' for a bad state"))?;
        ensure!(
            c.agent_running(h)?,
            "agent of {h} exited on a bad state file"
        );
    }
    c.ping_ok("v1", v2, 3)
        .context("forwarding must continue on the last good state")?;

    // A later good file (with a new VM on h2) is applied.
    c.add_vm_later(VmSpec::new("v3", "a", "h2"))?;
    let v3 = c.ip("v3")?;
    let start = Instant::now();
    cmd::wait_until("v3 reachable from v1 after a good update", WAIT, |why| {
        let ok = c.ping_once("v1", v3, Duration::from_millis(200))?;
        *why = format!("ping v1 -> {v3} failed");
        Ok(ok.then_some(()))
    })?;
    eprintln!(
        "good state after a bad one applied: v3 reachable after {:?}",
        start.elapsed()
    );
    for h in ["h1", "h2"] {
        ensure!(c.agent_running(h)?, "agent of {h} exited");
    }
    Ok(())
}

// ---- agent surface ----------------------------------------------------------------------------

#[test]
fn dvrctl_stats_json_lists_every_counter() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1");
    t.network("a", 2701, "192.168.81.0/24")
        .network("b", 2702, "192.168.82.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"));
    let c = t.build()?;
    let stats = c.stats("h1")?;
    let missing: Vec<_> = Stat::ALL
        .iter()
        .map(|s| s.as_str())
        .filter(|id| !stats.contains_key(*id))
        .collect();
    ensure!(
        missing.is_empty(),
        "show stats --json lacks {missing:?}: {stats:?}"
    );
    let ports = c.show_ports("h1")?;
    let v1 = c.vm("v1")?;
    ensure!(
        ports.len() == 1
            && ports[0].ifindex == c.tap_ifindex("v1")?
            && ports[0].vni == 2701
            && ports[0].mac == v1.mac
            && ports[0].port_security,
        "show ports --json: {ports:?}"
    );
    let routes = cmd::text(&c.dvrctl("h1", &["show", "routes"])?);
    ensure!(
        routes.contains("192.168.81.0/24") && routes.contains("192.168.82.0/24"),
        "show routes lacks the router's subnets:\n{routes}"
    );
    Ok(())
}

/// The agent lifecycle: SIGTERM exits 0 and leaves the datapath in place (pinned maps and
/// links keep forwarding), a restarted agent adopts it, and `dvr-agent --uninstall` removes the
/// pins, the programs and the tunnel device.
#[test]
fn sigterm_keeps_forwarding_restart_adopts_and_uninstall_removes() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 2801, "192.168.91.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"));
    let mut c = t.build()?;
    let v2 = c.ip("v2")?;
    c.ping_ok("v1", v2, 1)?;
    let pins = c.pin_dir("h1")?;
    ensure!(
        pins.is_dir() && std::fs::read_dir(&pins)?.next().is_some(),
        "no pins under {}",
        pins.display()
    );
    for h in ["h1", "h2"] {
        let status = c.stop_agent(h)?;
        ensure!(
            status.success(),
            "agent of {h} exited with {status} on SIGTERM"
        );
    }
    ensure!(
        pins.is_dir(),
        "a stopped agent must leave its pins for a hitless restart: {} is gone",
        pins.display()
    );
    c.ping_ok("v1", v2, 3)
        .context("forwarding must continue while the agents are stopped")?;

    c.start_agent("h1")?;
    c.wait_agent_ready("h1", WAIT)?;
    c.ping_ok("v1", v2, 3)
        .context("forwarding after the agent restarted")?;
    let status = c.stop_agent("h1")?;
    ensure!(
        status.success(),
        "restarted agent exited with {status} on SIGTERM"
    );

    let out = c.uninstall_agent("h1")?;
    ensure!(
        out.status.success(),
        "dvr-agent --uninstall failed ({}): {}",
        out.status,
        cmd::text(&out).trim()
    );
    ensure!(
        !pins.exists(),
        "dvr-agent --uninstall left {} behind",
        pins.display()
    );
    let dev = c.exec_host("h1", &["ip", "link", "show", "dev", "dvr-vx"])?;
    ensure!(
        !dev.status.success(),
        "dvr-agent --uninstall left dvr-vx in h1: {}",
        cmd::text(&dev)
    );
    let p = c.ping("v1", v2, 2)?;
    ensure!(
        p.received == 0,
        "v1 still reaches v2 after h1's datapath was uninstalled:\n{}",
        p.output
    );
    Ok(())
}
