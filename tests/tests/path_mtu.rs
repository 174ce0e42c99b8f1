//! Path MTU integration tests: each network's `mtu` is honoured where the datapath delivers a
//! packet into it. Real traffic between VM namespaces (and the external namespace) through the
//! agents of their hosts; a VM's link MTU is its network's.
//!
//! - `east_west_into_a_smaller_mtu_network` (networks `a` mtu 1450 and `b` mtu 1400 on one
//!   router, VMs on two hosts): `ping -M do` of 1450 bytes from `a` to `b` is answered with
//!   "Frag needed and DF set (mtu = 1400)" from `a`'s gateway and leaves the sender's kernel
//!   with path MTU 1400, while 1400 bytes pass; `tracepath` finds `pmtu 1400`; a 1448-byte UDP
//!   datagram with DF clear arrives intact (the datapath fragments it); a TCP sender whose peer
//!   advertises a too large MSS still delivers 1 MiB intact. Counters `icmp_frag_needed` and
//!   `fragmented`.
//! - `ipv6_into_a_smaller_mtu_network_gets_packet_too_big` (the same networks dual-stack):
//!   `ping -6 -M do` of 1450 bytes is answered with "Packet too big: mtu=1400" from `a`'s IPv6
//!   gateway; 1400 bytes pass. Counter `icmp_too_big`.
//! - `external_to_a_fip_on_a_smaller_mtu_network` (external link MTU 1500, the VM's network
//!   1450): `ping -M do` of 1500 bytes to the floating IP is answered with "mtu = 1450" from the
//!   floating IP itself; 1450 bytes pass; UDP datagrams with DF clear of 1500 bytes (cut in two
//!   by the datapath) and 4028 bytes (fragmented by the sender, its 1500-byte fragments cut
//!   again) arrive intact in the VM; a 1 MiB TCP transfer from outside to a VM that advertises
//!   MSS 1460 arrives intact. Counters `icmp_frag_needed` and `fragmented`.
//!
//! - `snat_replies_longer_than_the_vm_network_are_answered_from_the_router_external_ip` (a VM
//!   without a floating IP behind its router's SNAT host, advertising MSS 1460 on its 1450
//!   network): a 1 MiB download from the external network arrives intact; the SNAT host
//!   answers the server's 1500-byte segments from the router's external IP, and the server
//!   learns path MTU 1450 towards it. Counter `icmp_frag_needed` on the SNAT host.
//! - `out_to_an_external_network_with_a_smaller_mtu` (the external network's mtu lowered to
//!   1400 in the state): a 1450-byte `ping -M do` to the internet host is answered with
//!   "mtu = 1400" from the VM's gateway, on its compute host, both when steered to SNAT and
//!   out through a floating IP; IPv6 north-south gets packet too big with 1400 likewise.
//! - `a_network_too_large_for_the_underlay_is_named_in_a_warning`: a network with mtu 1480
//!   (+ 50 bytes of VXLAN > the 1500-byte underlay) is named in one agent warning; a 1450
//!   network is not.
//!
//! Before each large-packet probe the sender's cached path MTU is flushed, so the packet leaves
//! at the link MTU and meets the datapath (not the sender's own fragmentation or refusal).
//!
//! Needs root, bpffs, tcpdump, socat, python3-scapy, tracepath and the built agent; fails with a
//! clear message otherwise. Run with `--test-threads=1`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd::wait_until;
use dvr_tests::cmd::{self, exec_with_deadline};
use dvr_tests::ipv6::SLAAC_DEADLINE;
use dvr_tests::pmtu::{Fragment, icmp_errors, local_mtu_errors, mtu_in, reassembled};
use dvr_tests::{
    Capture, Cloud, Counters, EXT, INTERNET_HOST, Topology, TraceProbe, VmSpec,
    require_preconditions,
};

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(5);
/// `tracepath -m 4` over one routed hop with every probe answered takes well under a second.
const TRACEPATH_DEADLINE: Duration = Duration::from_secs(20);

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

/// Hosts h1 and h2; router r1 over `a` (10.<o>.1.0/24, mtu 1450) and `b` (10.<o>.2.0/24,
/// mtu 1400), with IPv6 subnets fd00:<o>:1::/64 and fd00:<o>:2::/64 (slaac) if `v6`; VM `va`
/// in `a` on h1, `vb` in `b` on h2.
fn two_mtu_cloud(vni: u32, o: u8, v6: bool) -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", vni, &format!("10.{o}.1.0/24"))
        .network_mtu("a", 1450);
    t.network("b", vni + 1, &format!("10.{o}.2.0/24"))
        .network_mtu("b", 1400);
    if v6 {
        t.ipv6("a", &format!("fd00:{o}:1::/64"), Some("slaac"))
            .ipv6("b", &format!("fd00:{o}:2::/64"), Some("slaac"));
    }
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("va", "a", "h1"))
        .vm(VmSpec::new("vb", "b", "h2"));
    let c = t.build()?;
    if v6 {
        for vm in ["va", "vb"] {
            c.wait_ipv6_ready(vm, SLAAC_DEADLINE)?;
        }
    }
    Ok(c)
}

/// Checks `ping -M do` output: no echo answered, at least one ICMP error from `from` naming
/// `mtu` with `what` in its text, no error from anyone else, and any local refusals at `mtu`.
fn expect_mtu_errors(out: &str, received: u32, from: &str, what: &str, mtu: u32) -> Result<()> {
    let errs = icmp_errors(out);
    ensure!(
        received == 0,
        "no echo longer than the MTU {mtu} may be answered:\n{out}"
    );
    ensure!(
        errs.iter()
            .any(|e| e.from == from && e.mtu == Some(mtu) && e.text.contains(what)),
        "ping must print \"From {from} ... {what} ... mtu {mtu}\":\n{out}"
    );
    ensure!(
        errs.iter().all(|e| e.from == from && e.mtu == Some(mtu)),
        "every ICMP error must come from {from} with mtu {mtu}: {errs:?}"
    );
    let local = local_mtu_errors(out);
    ensure!(
        local.iter().all(|m| *m == mtu),
        "local \"message too long\" errors must name mtu {mtu}: {local:?}"
    );
    Ok(())
}

/// Waits until `cap` (in the receiving VM) has seen a whole datagram of `ip_payload` bytes
/// (UDP header included) in `pieces` fragments, and checks that none is longer than `mtu` or
/// has DF set.
fn wait_fragments(
    cap: &Capture,
    ip_payload: u32,
    pieces: usize,
    mtu: u32,
) -> Result<Vec<Fragment>> {
    let frags = wait_until(
        &format!("the receiver's capture to hold all fragments of {ip_payload} bytes"),
        WAIT,
        |why| {
            let p = cap.packets();
            *why = format!(
                "{:?}",
                p.iter().filter_map(Fragment::of).collect::<Vec<_>>()
            );
            Ok(reassembled(&p, ip_payload))
        },
    )?;
    ensure!(
        frags.iter().all(|f| f.len <= mtu && !f.df),
        "every fragment must fit the MTU {mtu} and have DF clear: {frags:?}"
    );
    ensure!(
        frags.len() == pieces,
        "{ip_payload} bytes must arrive in {pieces} fragments: {frags:?}"
    );
    Ok(frags)
}

#[test]
fn east_west_into_a_smaller_mtu_network() -> Result<()> {
    require_preconditions();
    let mut c = two_mtu_cloud(3701, 71, false)?;
    let gw_a = c.network("a")?.gateway;
    let gw_b = c.network("b")?.gateway;
    let a_cidr = c.network("a")?.cidr.to_string();
    let b = c.ip("vb")?;
    let b_ip = IpAddr::V4(b);
    c.ping_ok("va", b, 2)?;
    c.flush_pmtu("va", b_ip)?;

    // DF set, 1450 bytes (the sender's link MTU) into a 1400 network.
    let before = Counters::take(&c, &["h1", "h2"])?;
    let p = c.ping_with("va", b, 3, &["-M", "do", "-s", "1422"])?;
    eprintln!("ping -M do -s 1422 va -> vb:\n{}", p.output);
    expect_mtu_errors(
        &p.output,
        p.received,
        &s(gw_a),
        "Frag needed and DF set",
        1400,
    )?;
    let cached = c.cached_pmtu("va", b_ip)?;
    ensure!(
        cached == Some(1400),
        "va's kernel must have learned path MTU 1400 towards {b}, has {cached:?}"
    );
    let sent = before.wait_delta(&c, "h1", Stat::IcmpFragNeeded, 1)?;
    eprintln!("h1 icmp_frag_needed +{sent}");
    // dvrctl trace predicts both: answered with DF, fragmented without.
    let (tap, gw_mac) = (
        c.vm("va")?.tap.clone(),
        c.network("a")?.gateway_mac.clone().unwrap_or_default(),
    );
    let probe = TraceProbe::udp(&tap, c.ip("va")?, 40000, b, 9).dst_mac(&gw_mac);
    let trace =
        |df: bool| -> Result<String> { Ok(c.trace("h1", &probe.clone().size(1450, df))?.render()) };
    let with_df = trace(true)?;
    ensure!(
        with_df.contains("ICMP fragmentation needed (mtu 1400)") && with_df.contains(&s(gw_a)),
        "dvrctl trace --len 1450 --df: answered from {gw_a} with mtu 1400:\n{with_df}"
    );
    let without = trace(false)?;
    ensure!(
        without.contains("sent as 2 fragments"),
        "dvrctl trace --len 1450: two fragments:\n{without}"
    );
    // 1400 bytes fit.
    let p = c.ping_with("va", b, 3, &["-M", "do", "-s", "1372"])?;
    ensure!(
        p.all_answered(),
        "1400-byte echoes with DF must pass into the 1400 network:\n{}",
        p.output
    );
    let h1 = before.moved(&c, "h1")?;
    let h2 = before.moved(&c, "h2")?;
    eprintln!("counters moved: h1 {h1:?} h2 {h2:?}");
    ensure!(
        !h1.contains_key(Stat::DropFragNeeded.as_str()),
        "every too long echo must be answered (3 of them, far below the rate limit): h1 {h1:?}"
    );

    // tracepath finds the path MTU from the datapath's answer.
    c.flush_pmtu("va", b_ip)?;
    let before = Counters::take(&c, &["h1"])?;
    let out = exec_with_deadline(
        &c.vm("va")?.ns,
        &["tracepath", "-n", "-m", "4", &s(b)],
        TRACEPATH_DEADLINE,
    )?;
    let tp = cmd::text(&out);
    eprintln!("tracepath -n -m 4 {b}:\n{tp}");
    ensure!(
        tp.lines()
            .any(|l| l.contains(&s(gw_a)) && l.contains("pmtu 1400")),
        "tracepath must learn pmtu 1400 from {gw_a}:\n{tp}"
    );
    let resume = tp.lines().find(|l| l.contains("Resume:")).and_then(mtu_in);
    ensure!(
        resume == Some(1400) && tp.contains("reached"),
        "tracepath must reach {b} with pmtu 1400:\n{tp}"
    );
    before.wait_delta(&c, "h1", Stat::IcmpFragNeeded, 1)?;

    // UDP with DF clear: 1448 bytes leave va unfragmented and are cut for the 1400 network.
    c.flush_pmtu("va", b_ip)?;
    let before = Counters::take(&c, &["h1", "h2"])?;
    let mut rx = c.udp_digest_receiver("vb", b, 7101)?;
    let a = c.ip("va")?;
    let at_vb = c.capture_vm("vb", &format!("udp and src host {a}"))?;
    let tries = c.udp_no_df_arrives(&mut rx, "va", b, 7101, 1420, 3)?;
    let frags = wait_fragments(&at_vb, 1428, 2, 1400)?;
    eprintln!("vb received the 1448-byte datagram as {frags:?}");
    let (f1, f2) = (
        before.delta(&c, "h1", Stat::Fragmented)?,
        before.delta(&c, "h2", Stat::Fragmented)?,
    );
    eprintln!(
        "1420-byte UDP va -> vb arrived after {tries} datagram(s); fragmented h1 +{f1} h2 \
         +{f2}; receiver: {}",
        rx.stdout().trim()
    );
    ensure!(
        f1 + f2 >= 1,
        "the datagram must have been fragmented by the datapath (fragmented on h1 or h2)"
    );
    ensure!(
        c.cached_pmtu("va", b_ip)?.is_none(),
        "a datagram without DF must not draw an ICMP error (va learned a path MTU)"
    );
    rx.stop()?;

    // TCP whose receiver advertises MSS 1410 (1450-byte segments) into the 1400 network.
    c.flush_pmtu("va", b_ip)?;
    c.route_advmss("vb", &a_cidr, gw_b, 1410)?;
    let before = Counters::take(&c, &["h1"])?;
    let rep = c.tcp_transfer("va", "vb", 5101, MIB)?;
    let frag_needed = before.wait_delta(&c, "h1", Stat::IcmpFragNeeded, 1)?;
    let cached = c.cached_pmtu("va", b_ip)?;
    eprintln!(
        "TCP va -> vb (vb advertises MSS 1410): {} bytes intact in {:?}; h1 icmp_frag_needed \
         +{frag_needed}; va path MTU {cached:?}",
        rep.bytes, rep.elapsed
    );
    ensure!(
        cached == Some(1400),
        "the TCP sender must have learned path MTU 1400, has {cached:?}"
    );
    Ok(())
}

#[test]
fn ipv6_into_a_smaller_mtu_network_gets_packet_too_big() -> Result<()> {
    require_preconditions();
    let c = two_mtu_cloud(3711, 72, true)?;
    let gw6_a = c.network6("a")?.gateway;
    let b6 = c.ip6("vb")?;
    c.ping6_ok("va", b6, 2)?;
    c.flush_pmtu("va", IpAddr::V6(b6))?;

    let before = Counters::take(&c, &["h1", "h2"])?;
    // 1402 + 8 + 40 = 1450 bytes.
    let p = c.ping6("va", b6, 3, &["-M", "do", "-s", "1402"])?;
    eprintln!("ping -6 -M do -s 1402 va -> vb:\n{}", p.output);
    expect_mtu_errors(
        &p.output,
        p.received,
        &gw6_a.to_string(),
        "Packet too big",
        1400,
    )?;
    let cached = c.cached_pmtu("va", IpAddr::V6(b6))?;
    ensure!(
        cached == Some(1400),
        "va's kernel must have learned path MTU 1400 towards {b6}, has {cached:?}"
    );
    let sent = before.wait_delta(&c, "h1", Stat::IcmpTooBig, 1)?;
    let tap = c.vm("va")?.tap.clone();
    let gw_mac = c
        .network6("a")?
        .gateway_mac
        .clone()
        .or(c.network("a")?.gateway_mac.clone())
        .unwrap_or_default();
    let probe = TraceProbe::udp(&tap, c.ip6("va")?, 40000, b6, 9)
        .dst_mac(&gw_mac)
        .size(1450, false);
    let traced = c.trace("h1", &probe)?.render();
    ensure!(
        traced.contains(&format!("ICMPv6 packet too big (mtu 1400) from {gw6_a}")),
        "dvrctl trace --len 1450 predicts packet too big from {gw6_a}:\n{traced}"
    );
    let p = c.ping6("va", b6, 3, &["-M", "do", "-s", "1352"])?;
    ensure!(
        p.all_answered(),
        "1400-byte IPv6 echoes must pass into the 1400 network:\n{}",
        p.output
    );
    eprintln!(
        "h1 icmp_too_big +{sent}; counters moved: h1 {:?} h2 {:?}",
        before.moved(&c, "h1")?,
        before.moved(&c, "h2")?
    );
    Ok(())
}

#[test]
fn external_to_a_fip_on_a_smaller_mtu_network() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").external();
    t.network("a", 3721, "10.73.1.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1")).fip("f1", Some("v1"));
    let mut c = t.build()?;
    let fip = c.fip_ip("f1")?;
    let fip_ip = IpAddr::V4(fip);
    let v1 = c.ip("v1")?;
    let gw = c.network("a")?.gateway;
    ensure!(
        c.network("a")?.mtu == 1450,
        "network a must have the default mtu 1450"
    );
    c.ping_ok(EXT, fip, 2)?;
    c.flush_pmtu(EXT, fip_ip)?;

    // DF set, 1500 bytes (the external link MTU) to a VM on a 1450 network.
    let before = Counters::take(&c, &["h1"])?;
    let p = c.ping_with(EXT, fip, 3, &["-M", "do", "-s", "1472"])?;
    eprintln!("ping -M do -s 1472 ext -> FIP {fip}:\n{}", p.output);
    expect_mtu_errors(
        &p.output,
        p.received,
        &s(fip),
        "Frag needed and DF set",
        1450,
    )?;
    let cached = c.cached_pmtu(EXT, fip_ip)?;
    ensure!(
        cached == Some(1450),
        "the external namespace must have learned path MTU 1450 towards {fip}, has {cached:?}"
    );
    let sent = before.wait_delta(&c, "h1", Stat::IcmpFragNeeded, 1)?;
    let p = c.ping_with(EXT, fip, 3, &["-M", "do", "-s", "1422"])?;
    ensure!(
        p.all_answered(),
        "1450-byte echoes with DF must pass to the FIP:\n{}",
        p.output
    );
    eprintln!(
        "h1 icmp_frag_needed +{sent}; counters moved: {:?}",
        before.moved(&c, "h1")?
    );

    // UDP with DF clear: a 1500-byte datagram (cut in two by the datapath) and a 4028-byte one
    // (fragmented by the sender at 1500; its two full fragments cut again).
    c.flush_pmtu(EXT, fip_ip)?;
    let before = Counters::take(&c, &["h1"])?;
    let mut rx = c.udp_digest_receiver("v1", v1, 7201)?;
    let at_v1 = c.capture_vm("v1", &format!("udp and dst host {v1}"))?;
    let t1 = c.udp_no_df_arrives(&mut rx, EXT, fip, 7201, 1472, 3)?;
    let frags = wait_fragments(&at_v1, 1480, 2, 1450)?;
    eprintln!("v1 received the 1500-byte datagram as {frags:?}");
    let t2 = c.udp_no_df_arrives(&mut rx, EXT, fip, 7201, 4000, 3)?;
    let frags = wait_fragments(&at_v1, 4008, 5, 1450)?;
    eprintln!("v1 received the 4028-byte datagram as {frags:?}");
    let frag = before.wait_delta(&c, "h1", Stat::Fragmented, 3)?;
    eprintln!(
        "UDP ext -> FIP: 1472 bytes after {t1} datagram(s), 4000 bytes after {t2}; h1 \
         fragmented +{frag}; receiver: {}",
        rx.stdout().trim()
    );
    ensure!(
        c.cached_pmtu(EXT, fip_ip)?.is_none(),
        "datagrams without DF must not draw an ICMP error (the external namespace learned a \
         path MTU)"
    );
    rx.stop()?;

    // TCP into a VM that advertises MSS 1460 (1500-byte segments from outside).
    c.flush_pmtu(EXT, fip_ip)?;
    c.route_advmss("v1", "default", gw, 1460)?;
    let before = Counters::take(&c, &["h1"])?;
    let rep = c.tcp_transfer_to(EXT, "v1", fip, 5201, MIB, None)?;
    let frag_needed = before.wait_delta(&c, "h1", Stat::IcmpFragNeeded, 1)?;
    let cached = c.cached_pmtu(EXT, fip_ip)?;
    eprintln!(
        "TCP ext -> FIP {fip} (v1 advertises MSS 1460): {} bytes intact in {:?}; h1 \
         icmp_frag_needed +{frag_needed}; external path MTU {cached:?}",
        rep.bytes, rep.elapsed
    );
    ensure!(
        cached == Some(1450),
        "the TCP sender must have learned path MTU 1450, has {cached:?}"
    );
    Ok(())
}

#[test]
fn snat_replies_longer_than_the_vm_network_are_answered_from_the_router_external_ip() -> Result<()>
{
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").snat_host("hs").external();
    t.network("a", 3731, "10.74.1.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"));
    let mut c = t.build()?;
    let ext_ip = c.router_external_ip("r1")?;
    let gw = c.network("a")?.gateway;
    wait_until("v1 to reach the internet host through SNAT", WAIT, |_| {
        Ok(
            c.ping_once("v1", INTERNET_HOST, Duration::from_millis(500))?
                .then_some(()),
        )
    })?;
    // v1 advertises MSS 1460 on its 1450 network: the server's 1500-byte segments (DF) reach
    // the SNAT host, which answers from the router's external IP, the address the server
    // talks to.
    c.route_advmss("v1", "default", gw, 1460)?;
    c.flush_pmtu(EXT, IpAddr::V4(ext_ip))?;
    let before = Counters::take(&c, &["hs"])?;
    c.tcp_download(EXT, "v1", INTERNET_HOST, 5301, MIB)?;
    let sent = before.wait_delta(&c, "hs", Stat::IcmpFragNeeded, 1)?;
    let cached = c.cached_pmtu(EXT, IpAddr::V4(ext_ip))?;
    eprintln!(
        "TCP download through SNAT (v1 advertises MSS 1460): 1 MiB intact; hs \
         icmp_frag_needed +{sent}; the server's path MTU to {ext_ip}: {cached:?}; hs moved {:?}",
        before.moved(&c, "hs")?
    );
    ensure!(
        cached == Some(1450),
        "the server must have learned path MTU 1450 towards the router's external IP {ext_ip}, \
         has {cached:?}"
    );
    Ok(())
}

#[test]
fn a_network_too_large_for_the_underlay_is_named_in_a_warning() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 3741, "10.75.1.0/24").network_mtu("a", 1480);
    t.network("b", 3742, "10.75.2.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("va", "a", "h1"))
        .vm(VmSpec::new("vb", "b", "h2"));
    let c = t.build()?;
    let a = c.network("a")?.network_id.clone();
    let b = c.network("b")?.network_id.clone();
    c.wait_agent_log("h1", "exceeds the underlay's MTU", WAIT)?;
    let log = c.agent_log("h1")?;
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("exceeds the underlay's MTU"))
        .collect();
    ensure!(
        warned.len() == 1 && warned[0].contains(&a) && warned[0].contains("mtu=1480"),
        "one warning, naming network a ({a}) and its mtu 1480: {warned:?}"
    );
    ensure!(
        !warned[0].contains(&b),
        "network b (mtu 1450) fits a 1500-byte underlay: {warned:?}"
    );
    Ok(())
}

#[test]
fn out_to_an_external_network_with_a_smaller_mtu() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").snat_host("hs").external_ipv6();
    t.network("a", 3751, "10.76.1.0/24")
        .ipv6("a", "fd00:76:1::/64", Some("slaac"));
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h1"))
        .fip("f2", Some("v2"));
    let mut c = t.build()?;
    for vm in ["v1", "v2"] {
        c.wait_ipv6_ready(vm, SLAAC_DEADLINE)?;
    }
    let gw = c.network("a")?.gateway;
    let gw6 = c
        .network("a")?
        .v6
        .as_ref()
        .map(|v| v.gateway)
        .ok_or_else(|| anyhow::anyhow!("network a has no IPv6 subnet"))?;
    for vm in ["v1", "v2"] {
        wait_until(&format!("{vm} to reach the internet host"), WAIT, |_| {
            Ok(c.ping_once(vm, INTERNET_HOST, Duration::from_millis(500))?
                .then_some(()))
        })?;
    }
    // The external network's mtu drops to 1400 (its links stay at 1500: only the state says
    // so, as when an operator lowers it for an underlay the test bed does not have).
    c.update_state(|st| {
        for n in st.networks.iter_mut().filter(|n| n.router_external) {
            n.mtu = 1400;
        }
    })?;
    let before = Counters::take(&c, &["h1"])?;
    // v1 has no floating IP: steered to SNAT, answered before it leaves h1.
    wait_until("h1 to hold the external mtu 1400", WAIT, |why| {
        c.flush_pmtu("v1", IpAddr::V4(INTERNET_HOST))?;
        let p = c.ping_with("v1", INTERNET_HOST, 1, &["-M", "do", "-s", "1422"])?;
        *why = p.output.clone();
        Ok(icmp_errors(&p.output)
            .iter()
            .any(|e| e.mtu == Some(1400))
            .then_some(p))
    })
    .and_then(|p| {
        eprintln!("ping -M do -s 1422 v1 -> internet (SNAT):\n{}", p.output);
        expect_mtu_errors(&p.output, p.received, &s(gw), "Frag needed", 1400)
    })?;
    // v2 goes out through its floating IP.
    c.flush_pmtu("v2", IpAddr::V4(INTERNET_HOST))?;
    let p = c.ping_with("v2", INTERNET_HOST, 2, &["-M", "do", "-s", "1422"])?;
    eprintln!("ping -M do -s 1422 v2 -> internet (FIP):\n{}", p.output);
    expect_mtu_errors(&p.output, p.received, &s(gw), "Frag needed", 1400)?;
    let p = c.ping_with("v2", INTERNET_HOST, 2, &["-M", "do", "-s", "1372"])?;
    ensure!(
        p.all_answered(),
        "1400 bytes fit the external network:\n{}",
        p.output
    );
    // IPv6 north-south from v1: packet too big from its gateway.
    let dst6 = IpAddr::V6(dvr_tests::external6::INTERNET_HOST6);
    c.flush_pmtu("v1", dst6)?;
    let out = exec_with_deadline(
        &c.vm("v1")?.ns,
        &[
            "ping",
            "-6",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1402",
            &dst6.to_string(),
        ],
        Duration::from_secs(10),
    )?;
    let text = cmd::stdout(&out);
    eprintln!("ping -6 -M do -s 1402 v1 -> internet:\n{text}");
    expect_mtu_errors(&text, 0, &gw6.to_string(), "Packet too big", 1400)?;
    let moved = before.moved(&c, "h1")?;
    eprintln!("h1 moved {moved:?}");
    ensure!(
        moved
            .get(Stat::IcmpFragNeeded.as_str())
            .copied()
            .unwrap_or(0)
            >= 2
            && moved.get(Stat::IcmpTooBig.as_str()).copied().unwrap_or(0) >= 1,
        "h1 answers for both families: {moved:?}"
    );
    Ok(())
}
