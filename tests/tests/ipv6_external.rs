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

use anyhow::{Context, Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd;
use dvr_tests::external6::INTERNET_HOST6;
use dvr_tests::ipv6::SLAAC_DEADLINE;
use dvr_tests::{
    Cloud, Counters, EXT, INTERNET_HOST, Topology, TraceProbe, VmSpec, require_etcd_preconditions,
    require_preconditions,
};

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

    // The router's external IPv6 address answers echo (on hs).
    let p = c.ping6_ok(EXT, ext6, 2)?;
    eprintln!("ext -> {ext6}: {}/{} answered", p.received, p.transmitted);

    for (host, stat) in [
        ("hs", Stat::IcmpEchoReply),
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

    // dvrctl trace follows the same paths through the live maps.
    let tap1 = c.vm("v1")?.tap.clone();
    let (h1_ip, hs_ip) = (c.host("h1")?.tunnel_ip, c.host("hs")?.tunnel_ip);
    let t = c.trace(
        "h1",
        &TraceProbe::udp(&tap1, v1, 40000, INTERNET_HOST6, 5701),
    )?;
    eprintln!(
        "trace on h1 v1 -> internet host: {} {:?}",
        t.verdict, t.output
    );
    ensure!(
        t.verdict == Stat::SnatSteered.as_str()
            && t.output.as_deref() == Some(&format!("tunnel {hs_ip} vni 3701")[..])
            && t.out_dst_mac.as_deref() == Some(&csnat_mac[..]),
        "trace of v1 -> internet host on h1: {t:?}"
    );
    let from_h1 = TraceProbe::udp("dvr-vx", v1, 40000, INTERNET_HOST6, 5701)
        .macs(&h1_dvr, &csnat_mac)
        .tunnel(3701, h1_ip);
    let t = c.trace("hs", &from_h1)?;
    eprintln!("trace on hs from the tunnel: {} {:?}", t.verdict, t.output);
    ensure!(
        t.verdict == Stat::RoutedOut.as_str(),
        "trace of v1's packet on hs: {t:?}"
    );
    let t = c.trace(
        "hs",
        &TraceProbe::udp("ext0", INTERNET_HOST6, 5701, v1, 40000),
    )?;
    eprintln!(
        "trace on hs from the external network: {} {:?}",
        t.verdict, t.output
    );
    ensure!(
        t.verdict == Stat::RoutedIn.as_str()
            && t.output.as_deref() == Some(&format!("tunnel {h1_ip} vni 3701")[..]),
        "trace of the reply on hs: {t:?}"
    );

    // IPv4 SNAT in the same cloud keeps working.
    c.ping_ok("v1", INTERNET_HOST, 3)?;
    c.ping_ok("vs", INTERNET_HOST, 3)?;
    Ok(())
}

/// An HA router r1 elected among sa (priority 200) and sb (100) through etcd: IPv6
/// north-south goes through sa, and after a planned failover to sb through sb, in both
/// directions (the upstream router learns sb's MAC for r1's external IPv6 address from sb's
/// unsolicited advertisement: its entry pointed at sa).
#[test]
fn ipv6_north_south_follows_an_ha_failover() -> Result<()> {
    require_etcd_preconditions();
    let mut t = Topology::new();
    t.host("h1").snat_host("sa").snat_host("sb").external_ipv6();
    t.network("a", 3711, "10.71.11.0/24")
        .ipv6("a", "fd00:71:11::/64", Some("slaac"));
    t.router("r1", &["a"])
        .ha_hosts("r1", &[("sa", 200), ("sb", 100)]);
    t.vm(VmSpec::new("v1", "a", "h1"));
    let mut c = t.build_without_agents()?;
    c.start_agents_on_etcd()?;
    c.wait_ha_holder("r1", "sa", Duration::from_secs(15))
        .context("sa must win the first election")?;
    c.wait_ipv6_ready("v1", SLAAC_DEADLINE)?;
    let v1 = c.ip6("v1")?;
    let ext6 = c.router_ext6("r1")?;
    let (sa_mac, sb_mac) = (c.ext_mac("sa")?, c.ext_mac("sb")?);

    let at_sa = c.capture_ext_port("sa", "ip6 and icmp6")?;
    wait_ping6(&c, "v1", INTERNET_HOST6, "v1 -> internet host through sa")?;
    at_sa.wait_for("v1's echo request leaving sa", WAIT, |p| {
        p.is_icmp6_echo_request() && p.has_ips(&v1.to_string(), &INTERNET_HOST6.to_string())
    })?;
    c.ping6_ok(EXT, v1, 2)
        .context("external -> v1 through sa")?;
    let neigh = upstream_neigh(&c, &ext6.to_string())?;
    ensure!(neigh.contains(&sa_mac), "{ext6} at sa ({sa_mac}): {neigh}");

    let out = c.ha_failover("r1", "sb")?;
    ensure!(
        out.status.success(),
        "dvrctl failover r1 --to sb: {}",
        cmd::text(&out).trim()
    );
    c.wait_ha_holder("r1", "sb", WAIT)?;
    let at_sb = c.capture_ext_port("sb", "ip6 and icmp6")?;
    wait_ping6(&c, "v1", INTERNET_HOST6, "v1 -> internet host through sb")?;
    at_sb.wait_for("v1's echo request leaving sb", WAIT, |p| {
        p.is_icmp6_echo_request() && p.has_ips(&v1.to_string(), &INTERNET_HOST6.to_string())
    })?;
    // Inbound: the upstream's entry for r1's external address moved to sb.
    let neigh = cmd::wait_until(
        &format!("the upstream router's entry for {ext6} to name sb ({sb_mac})"),
        WAIT,
        |why| {
            let n = upstream_neigh(&c, &ext6.to_string())?;
            *why = n.clone();
            Ok(n.contains(&sb_mac).then_some(n))
        },
    )?;
    eprintln!(
        "after the failover: upstream neighbour entry {}",
        neigh.trim()
    );
    c.ping6_ok(EXT, v1, 3)
        .context("external -> v1 through sb after the failover")?;
    let r = c.tcp_transfer_to(EXT, "v1", v1, 5711, MIB, None)?;
    eprintln!(
        "TCP ext -> v1 through sb: {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    Ok(())
}

/// Pings until one ping of 2 is fully answered (a role move or a next hop still being
/// learned may lose the first).
fn wait_ping6(c: &Cloud, from: &str, dst: std::net::Ipv6Addr, what: &str) -> Result<()> {
    cmd::wait_until(what, WAIT, |why| {
        let r = c.ping6(from, dst, 2, &[])?;
        *why = r.output.clone();
        Ok(r.all_answered().then_some(()))
    })
}

/// The external namespace's neighbour entry for `ip`.
fn upstream_neigh(c: &Cloud, ip: &str) -> Result<String> {
    let out = cmd::exec_ok(&c.ext_ns()?, &["ip", "-6", "neigh", "show", ip])?;
    Ok(cmd::stdout(&out))
}
