//! IPv6 north-south integration tests: dual-stack VMs on a compute host (h1) and on the
//! router's SNAT host (hs) reach an IPv6 host beyond the external network's upstream router
//! and are reached from it, routed through hs with their own addresses (no NAT), as
//! Neutron's snat namespace does. The external namespace routes the tenant prefix via the
//! router's external IPv6 address ([`Topology::external_ipv6`]).
//!
//! Observed from outside the agent: ping and TCP results in both directions, captures on
//! hs's and h1's bridge ports in the external namespace (what leaves each host's external
//! interface, with which addresses) and on the underlay (VNI, inner MACs), the upstream
//! router's neighbour entry for the router's external address, and `dvrctl` counters.
//!
//! Needs root, bpffs, tcpdump, socat, python3-scapy and the built agent; fails with a clear
//! message otherwise. Run with `--test-threads=1`.

use std::time::Duration;

use anyhow::{Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd;
use dvr_tests::external6::INTERNET_HOST6;
use dvr_tests::ipv6::SLAAC_DEADLINE;
use dvr_tests::{Cloud, Counters, EXT, INTERNET_HOST, Topology, VmSpec, require_preconditions};

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

/// Compute host h1, SNAT host hs, the dual-stack external network, network "a"
/// (10.71.1.0/24 + fd00:71:1::/64, slaac) on router r1; v1 on h1, vs on hs.
fn cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").snat_host("hs").external_ipv6();
    t.network("a", 3701, "10.71.1.0/24")
        .ipv6("a", "fd00:71:1::/64", Some("slaac"));
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("vs", "a", "hs"));
    let c = t.build()?;
    for vm in ["v1", "vs"] {
        c.wait_ipv6_ready(vm, SLAAC_DEADLINE)?;
    }
    Ok(c)
}

#[test]
fn ipv6_north_south_is_routed_through_the_snat_host_without_nat() -> Result<()> {
    require_preconditions();
    let mut c = cloud()?;
    let (v1, vs) = (c.ip6("v1")?, c.ip6("vs")?);
    let ext6 = c.router_ext6("r1")?;
    let csnat_mac = c.csnat("a")?.mac.clone();
    let h1_dvr = c.host("h1")?.dvr_mac.to_lowercase();
    let base = Counters::take(&c, &["h1", "hs"])?;

    // Outbound from the compute host: over the tunnel to hs, out of hs's external NIC with
    // v1's own address.
    let at_hs = c.capture_ext_port("hs", "ip6 and icmp6")?;
    let at_h1 = c.capture_ext_port("h1", "ip6 and icmp6")?;
    let ul = c.capture_underlay("udp")?;
    let p = c.ping6_ok("v1", INTERNET_HOST6, 3)?;
    eprintln!(
        "v1 -> {INTERNET_HOST6}: {}/{} answered, hop limits {:?}",
        p.received, p.transmitted, p.ttls
    );
    let req = at_hs.wait_for("v1's echo request leaving hs's external NIC", WAIT, |p| {
        p.is_icmp6_echo_request() && p.has_ips(&v1.to_string(), &INTERNET_HOST6.to_string())
    })?;
    eprintln!("on hs's external port: {req}");
    let hop = req.hop_limits();
    ensure!(
        hop.first() == Some(&63),
        "routed once (hop limit 64 -> 63), not twice: {req}"
    );
    let steered = ul.wait_for("v1's echo request over the tunnel to hs", WAIT, |p| {
        p.is_icmp6_echo_request() && p.contains(&v1.to_string())
    })?;
    eprintln!("on the underlay: {steered}");
    ensure!(steered.vni() == Some(3701), "in a's VNI: {steered}");
    ensure!(
        steered.inner_eth() == Some((h1_dvr.clone(), csnat_mac.clone())),
        "from h1's DVR MAC {h1_dvr} to the csnat port {csnat_mac}: {steered}"
    );

    // Outbound from the SNAT host's own VM.
    c.ping6_ok("vs", INTERNET_HOST6, 3)?;
    at_hs.wait_for("vs's echo request leaving hs's external NIC", WAIT, |p| {
        p.is_icmp6_echo_request() && p.has_ips(&vs.to_string(), &INTERNET_HOST6.to_string())
    })?;

    // TCP both ways, VM-initiated and external-initiated.
    let r = c.tcp_transfer_to("v1", EXT, INTERNET_HOST6, 5701, MIB, None)?;
    eprintln!(
        "TCP v1 -> {INTERNET_HOST6}: {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    let r = c.tcp_transfer_to("vs", EXT, INTERNET_HOST6, 5702, MIB, None)?;
    eprintln!(
        "TCP vs -> {INTERNET_HOST6}: {} bytes in {:?}",
        r.bytes, r.elapsed
    );

    // Inbound: the external side initiates (its route for fd00:71:1::/64 is via r1's
    // external IPv6 address, which only hs answers for).
    let p = c.ping6_ok(EXT, v1, 3)?;
    eprintln!(
        "ext -> v1: {}/{} answered, hop limits {:?}",
        p.received, p.transmitted, p.ttls
    );
    c.ping6_ok(EXT, vs, 3)?;
    let r = c.tcp_transfer_to(EXT, "v1", v1, 5703, MIB, None)?;
    eprintln!("TCP ext -> v1: {} bytes in {:?}", r.bytes, r.elapsed);
    let r = c.tcp_transfer_to(EXT, "vs", vs, 5704, MIB, None)?;
    eprintln!("TCP ext -> vs: {} bytes in {:?}", r.bytes, r.elapsed);

    // Nothing of the tenant's IPv6 left h1's external NIC.
    let leaked: Vec<String> = at_h1
        .packets()
        .iter()
        .filter(|p| p.contains(&v1.to_string()))
        .map(|p| p.to_string())
        .collect();
    ensure!(
        leaked.is_empty(),
        "v1's IPv6 must not leave h1 directly: {leaked:?}"
    );

    // The upstream router resolves r1's external IPv6 address to hs's external MAC: with
    // its entry flushed, the next packet to the tenant prefix makes it solicit, and hs
    // answers (h1, on the same external network, does not).
    let hs_mac = c.ext_mac("hs")?;
    let ns = c.ext_ns()?;
    cmd::exec_ok(&ns, &["ip", "-6", "neigh", "flush", "dev", "br-ext"])?;
    c.ping6_ok(EXT, v1, 1)?;
    base.wait_delta(&c, "hs", Stat::ExtNdAdvert, 1)?;
    let out = cmd::exec_ok(&ns, &["ip", "-6", "neigh", "show", &ext6.to_string()])?;
    let neigh = cmd::stdout(&out);
    eprintln!("upstream neighbour entry for {ext6}: {}", neigh.trim());
    ensure!(
        neigh.contains(&hs_mac) && !neigh.contains("FAILED"),
        "{ext6} must resolve to hs's external MAC {hs_mac}: {neigh}"
    );

    for (host, stat) in [
        ("hs", Stat::RoutedOut),
        ("hs", Stat::RoutedIn),
        ("hs", Stat::ExtNdAdvert),
        ("h1", Stat::SnatSteered),
    ] {
        let d = base.delta(&c, host, stat)?;
        eprintln!("{host} {}: +{d}", stat.as_str());
        ensure!(d > 0, "{host} {} must rise", stat.as_str());
    }
    let d = base.delta(&c, "h1", Stat::ExtNdAdvert)?;
    ensure!(
        d == 0,
        "h1 must not answer for r1's external IPv6 address: +{d}"
    );

    // IPv4 SNAT in the same cloud keeps working.
    c.ping_ok("v1", INTERNET_HOST, 3)?;
    c.ping_ok("vs", INTERNET_HOST, 3)?;
    Ok(())
}
