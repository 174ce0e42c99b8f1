//! IPv6 integration tests (issue 13): dual-stack VMs in network namespaces that configure
//! themselves from the router's advertisements like real guests (`accept_ra`, SLAAC), and
//! real IPv6 traffic between them through the agents of their hosts.
//!
//! Observed from outside the agent: what each VM configured (address, default router, MTU),
//! ping and TCP results and reply hop limits, packets captured in VMs and on the underlay
//! (VNI, inner MACs and hop limits), the neighbour entries VMs learned, and `dvrctl`
//! counters. Negative assertions use sentinels: after the frame that must not arrive, a
//! legitimate one is sent along the same path and awaited.
//!
//! Needs root, bpffs, tcpdump, socat, python3-scapy and the built agent; fails with a clear
//! message otherwise. Run with `--test-threads=1`.

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::ipv6::SLAAC_DEADLINE;
use dvr_tests::{
    Cloud, Counters, Packet, Topology, TraceProbe, VmSpec, all_ttl, require_preconditions,
};

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

/// Hosts h1 and h2; networks `a` (10.61.1.0/24 + fd00:61:1::/64, mtu 1400) and `b`
/// (10.61.2.0/24 + fd00:61:2::/64), both slaac, on router r1; v1 (a, h1), v2 (a, h2),
/// v3 (b, h1), v4 (b, h2).
fn dual_stack_cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 3601, "10.61.1.0/24")
        .ipv6("a", "fd00:61:1::/64", Some("slaac"))
        .network_mtu("a", 1400);
    t.network("b", 3602, "10.61.2.0/24")
        .ipv6("b", "fd00:61:2::/64", Some("slaac"));
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "a", "h2"))
        .vm(VmSpec::new("v3", "b", "h1"))
        .vm(VmSpec::new("v4", "b", "h2"));
    let c = t.build()?;
    for vm in ["v1", "v2", "v3", "v4"] {
        c.wait_ipv6_ready(vm, SLAAC_DEADLINE)?;
    }
    Ok(c)
}

fn s6(ip: Ipv6Addr) -> String {
    ip.to_string()
}

#[test]
fn dual_stack_vms_configure_from_router_advertisements_and_route_east_west() -> Result<()> {
    require_preconditions();
    let mut c = dual_stack_cloud()?;

    // What each VM learned from the advertisements of its own host's router.
    for (vm, net, mtu) in [
        ("v1", "a", 1400),
        ("v2", "a", 1400),
        ("v3", "b", 1450),
        ("v4", "b", 1450),
    ] {
        let l = c.learned6(vm)?;
        let n6 = c.network6(net)?;
        let want_addr = format!("{}/64", c.ip6(vm)?);
        eprintln!("{vm}: learned {l:?}");
        ensure!(
            l.addresses.contains(&want_addr),
            "{vm} must configure its EUI-64 address {want_addr} by SLAAC: {l:?}"
        );
        ensure!(
            l.default_via == Some(n6.gateway_link_local()?),
            "{vm}'s default router must be the router's link-local address {}: {l:?}",
            n6.gateway_link_local()?
        );
        ensure!(
            l.mtu == mtu,
            "{vm} must take the network MTU {mtu} from the advertisement: {l:?}"
        );
    }

    // Same subnet across hosts, routed on one host and routed across hosts.
    let (v1, v2, v3, v4) = (c.ip6("v1")?, c.ip6("v2")?, c.ip6("v3")?, c.ip6("v4")?);
    let p = c.ping6_ok("v1", v2, 3)?;
    ensure!(
        all_ttl(&p.ttls, 64),
        "same subnet: not routed: {:?}",
        p.ttls
    );
    let p = c.ping6_ok("v1", v3, 3)?;
    ensure!(
        all_ttl(&p.ttls, 63),
        "routed once on h1: hop limit 63: {:?}",
        p.ttls
    );

    let gw6_b = c
        .network6("b")?
        .gateway_mac
        .clone()
        .context("b has an IPv6 router port")?;
    let gw6_a = c
        .network6("a")?
        .gateway_mac
        .clone()
        .context("a has an IPv6 router port")?;
    let h1 = c.host("h1")?.clone();
    let m4 = c.vm("v4")?.mac.clone();
    let under = c.capture_uplink("h1", "udp port 4789")?;
    let at_v4 = c.capture_vm("v4", "icmp6")?;
    let p = c.ping6_ok("v1", v4, 3)?;
    ensure!(
        all_ttl(&p.ttls, 63),
        "routed once, on each source host: {:?}",
        p.ttls
    );
    let req = at_v4.wait_for_count("echo requests at v4", 3, WAIT, |p| {
        p.is_icmp6_echo_request() && p.has_ips(&s6(v1), &s6(v4))
    })?;
    for p in &req {
        ensure!(
            p.outer_eth() == Some((gw6_b.clone(), m4.clone())),
            "v4 must see the echo from b's IPv6 gateway MAC {gw6_b}: {p}"
        );
        ensure!(p.hop_limits() == vec![63], "hop limit at v4: {p}");
    }
    let packets = under
        .wait_for_count("encapsulated echo replies", 3, WAIT, |p| {
            p.is_icmp6_echo_reply()
        })
        .map(|_| ())
        .and_then(|()| under.stop())?;
    let req: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.is_icmp6_echo_request() && p.has_ips(&s6(v1), &s6(v4)))
        .collect();
    ensure!(
        req.len() == 3,
        "want 3 echo requests on h1's underlay: {packets:#?}"
    );
    for p in &req {
        ensure!(p.vni() == Some(3602), "request in b's VNI 3602: {p}");
        ensure!(
            p.inner_eth() == Some((h1.dvr_mac.clone(), m4.clone())),
            "inner source MAC must be h1's DVR MAC: {p}"
        );
        ensure!(
            p.hop_limits() == vec![63],
            "routed on h1: hop limit 63: {p}"
        );
    }
    for p in packets.iter().filter(|p| p.is_icmp6_echo_reply()) {
        ensure!(p.vni() == Some(3601), "reply in a's VNI 3601: {p}");
    }
    let r = c.tcp_transfer_to("v1", "v4", v4, 5601, MIB, None)?;
    eprintln!(
        "TCP over IPv6 v1 -> v4 (routed across hosts): {} bytes in {:?}",
        r.bytes, r.elapsed
    );
    ensure!(
        c.stat("h1", Stat::Routed.as_str())? >= 6,
        "routed counter of h1"
    );

    // dvrctl trace follows the same packet through h1's live maps: routed into b's VNI
    // towards h2, with h1's DVR MAC; a forged source stops at port security.
    let tap1 = c.vm("v1")?.tap.clone();
    let t = c.trace("h1", &TraceProbe::udp(&tap1, v1, 40000, v4, 5601))?;
    eprintln!("trace v1 -> v4: {t:?}");
    let h2_ip = c.host("h2")?.tunnel_ip;
    ensure!(
        t.verdict == Stat::Routed.as_str()
            && t.output.as_deref() == Some(&format!("tunnel {h2_ip} vni 3602")[..])
            && t.out_src_mac.as_deref() == Some(&h1.dvr_mac[..])
            && t.out_dst_mac.as_deref() == Some(&m4[..]),
        "trace of v1 -> v4 on h1: {t:?}"
    );
    let forged: Ipv6Addr = "fd00:61:1::bad".parse()?;
    let t = c.trace("h1", &TraceProbe::udp(&tap1, forged, 40000, v4, 5601))?;
    ensure!(
        t.verdict == Stat::DropSpoofIp.as_str(),
        "trace of a forged IPv6 source: {t:?}"
    );

    // IPv4 in the same state is unaffected.
    let p = c.ping_ok("v1", c.ip("v4")?, 3)?;
    ensure!(all_ttl(&p.ttls, 63), "IPv4 routed: {:?}", p.ttls);
    c.tcp_transfer("v4", "v1", 5602, MIB)?;

    // The gateway's addresses are answered on the host: its link-local and global address
    // resolve to the IPv6 router port's MAC with the router flag, echo is answered, and no
    // neighbour discovery for them crosses the tunnel.
    let gw_a = c.network6("a")?.gateway;
    let gw_a_ll = c.network6("a")?.gateway_link_local()?;
    let base = Counters::take(&c, &["h1", "h2"])?;
    c.exec_vm("v1", &["ip", "-6", "neigh", "flush", "dev", "eth0"])?;
    let under = c.capture_uplink("h1", "udp port 4789")?;
    let p = c.ping6_ok("v1", gw_a, 2)?;
    ensure!(
        p.reply_from.iter().all(|f| f == &s6(gw_a)),
        "echo answered by the gateway address: {:?}",
        p.reply_from
    );
    c.ping6_ok("v1", gw_a_ll, 1).or_else(|_| {
        // A link-local destination needs the interface.
        c.ping6("v1", gw_a_ll, 1, &["-I", "eth0"]).and_then(|r| {
            ensure!(r.all_answered(), "{}", r.output);
            Ok(r)
        })
    })?;
    for addr in [gw_a, gw_a_ll] {
        let n = c.neigh6("v1", addr)?;
        ensure!(
            n == Some((gw6_a.clone(), true)),
            "v1's neighbour entry for {addr} must be {gw6_a} with the router flag: {n:?}"
        );
    }
    ensure!(
        base.delta(&c, "h1", Stat::NdAdvert)? >= 1,
        "h1 answered the solicitations (nd_advert)"
    );
    // Sentinel: a routed echo to v2's host crosses the underlay after the solicitations.
    c.ping6_ok("v1", v2, 1)?;
    let packets = under
        .wait_for("the sentinel echo on the underlay", WAIT, |p| {
            p.is_icmp6_echo_request() && p.has_ips(&s6(v1), &s6(v2))
        })
        .map(|_| ())
        .and_then(|()| under.stop())?;
    let leaked: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.contains(&s6(gw_a)) || p.contains(&s6(gw_a_ll)))
        .filter(|p| p.contains("neighbor"))
        .collect();
    ensure!(
        leaked.is_empty(),
        "neighbour discovery for the gateway crossed the tunnel: {leaked:#?}"
    );

    // A router solicitation is answered at once by the datapath, back to the soliciting
    // tap only: v3 solicits (as a guest does when its link comes up) and receives the
    // advertisement of b's router within the wait, long before any unsolicited one.
    let base = Counters::take(&c, &["h1"])?;
    let v3 = c.vm("v3")?.clone();
    let v3_ll = dvr_tests::ipv6::eui64(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), &v3.mac)?;
    let gw6_b_ll = c.network6("b")?.gateway_link_local()?;
    let at_v3 = c.capture_vm("v3", "icmp6 and ip6[40] == 134")?;
    c.scapy(
        "v3",
        &format!(
            "sendp(Ether(src={mac:?}, dst='33:33:00:00:00:02')/IPv6(src={ll:?}, dst='ff02::2', hlim=255)/ICMPv6ND_RS()/ICMPv6NDOptSrcLLAddr(lladdr={mac:?}), iface='eth0')",
            mac = v3.mac,
            ll = s6(v3_ll)
        ),
    )?;
    c.wait_stat_at_least(
        "h1",
        Stat::RaSent.as_str(),
        base.base("h1", Stat::RaSent) + 1,
        WAIT,
    )?;
    at_v3.wait_for("the solicited advertisement at v3", WAIT, |p| {
        p.contains("router advertisement") && p.contains(&s6(gw6_b_ll))
    })?;
    // A guest that loses its configuration (link down and up) configures again.
    c.exec_vm("v3", &["ip", "link", "set", "eth0", "down"])?;
    c.exec_vm("v3", &["ip", "link", "set", "eth0", "up"])?;
    c.wait_ipv6_ready("v3", SLAAC_DEADLINE)?;

    // Hop limit 1: time exceeded from the VM's gateway (traceroute's first hop).
    let base = Counters::take(&c, &["h1"])?;
    let r = c.ping6("v1", v4, 1, &["-t", "1"])?;
    ensure!(
        r.output.contains(&format!("From {gw_a}")) && r.output.contains("Time exceeded"),
        "ping -t 1 must be answered with time exceeded from {gw_a}:\n{}",
        r.output
    );
    ensure!(
        base.delta(&c, "h1", Stat::IcmpTimeExceeded)? >= 1,
        "icmp_time_exceeded counted on h1"
    );
    Ok(())
}

/// Hosts h1 and h2, network `a` (dual stack, slaac) on router r1; va and vc on h1, vb on h2.
fn spoof_cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 3611, "10.61.11.0/24")
        .ipv6("a", "fd00:61:11::/64", Some("slaac"));
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("va", "a", "h1"))
        .vm(VmSpec::new("vb", "a", "h2"))
        .vm(VmSpec::new("vc", "a", "h1"));
    let c = t.build()?;
    for vm in ["va", "vb", "vc"] {
        c.wait_ipv6_ready(vm, SLAAC_DEADLINE)?;
    }
    Ok(c)
}

/// A scapy line that sends one IPv6/UDP datagram from `src` to `dst` (port `dport`) with
/// `va`'s MAC to `dst_mac`.
fn udp6(src_mac: &str, dst_mac: &str, src: &str, dst: Ipv6Addr, dport: u16) -> String {
    format!(
        "sendp(Ether(src={src_mac:?}, dst={dst_mac:?})/IPv6(src={src:?}, dst={:?})/UDP(sport=40000, dport={dport})/Raw(b'dvr-tests'), iface='eth0')",
        dst.to_string()
    )
}

#[test]
fn ipv6_port_security_ra_guard_and_nd_spoofing() -> Result<()> {
    require_preconditions();
    let c = spoof_cloud()?;
    let (va, vb) = (c.vm("va")?.clone(), c.vm("vb")?.clone());
    let (ip_a, ip_b, ip_c) = (c.ip6("va")?, c.ip6("vb")?, c.ip6("vc")?);
    let va_ll = dvr_tests::ipv6::eui64(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), &va.mac)?;

    // A forged IPv6 source (an unused address, and vc's) is dropped; va's own global and
    // link-local sources pass.
    let base = Counters::take(&c, &["h1"])?;
    let at_vb = c.capture_vm("vb", "udp")?;
    for src in ["fd00:61:11::dead".to_string(), s6(ip_c)] {
        c.scapy("va", &udp6(&va.mac, &vb.mac, &src, ip_b, 41001))?;
    }
    c.wait_stat_at_least(
        "h1",
        Stat::DropSpoofIp.as_str(),
        base.base("h1", Stat::DropSpoofIp) + 2,
        WAIT,
    )?;
    c.scapy("va", &udp6(&va.mac, &vb.mac, &s6(ip_a), ip_b, 41002))?;
    at_vb.wait_for("va's own source", WAIT, |p| p.contains(".41002"))?;
    let packets = at_vb.stop()?;
    let leaked: Vec<&Packet> = packets.iter().filter(|p| p.contains(".41001")).collect();
    ensure!(leaked.is_empty(), "forged sources reached vb: {leaked:#?}");

    // A neighbour advertisement claiming vb's address is dropped (NA spoofing); one for
    // va's own address passes.
    let base = Counters::take(&c, &["h1"])?;
    let at_vb = c.capture_vm("vb", "icmp6")?;
    let na = |target: Ipv6Addr| {
        format!(
            "sendp(Ether(src={mac:?}, dst='33:33:00:00:00:01')/IPv6(src={ll:?}, dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt={t:?}, R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr={mac:?}), iface='eth0')",
            mac = va.mac,
            ll = s6(va_ll),
            t = s6(target)
        )
    };
    c.scapy("va", &na(ip_b))?;
    c.wait_stat_at_least(
        "h1",
        Stat::DropSpoofNd.as_str(),
        base.base("h1", Stat::DropSpoofNd) + 1,
        WAIT,
    )?;
    c.scapy("va", &na(ip_a))?;
    at_vb.wait_for("va's advertisement of its own address", WAIT, |p| {
        p.contains(&format!("tgt is {ip_a}"))
    })?;
    let packets = at_vb.stop()?;
    let spoofed: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.contains(&format!("tgt is {ip_b}")))
        .collect();
    ensure!(
        spoofed.is_empty(),
        "the spoofed NA reached vb: {spoofed:#?}"
    );
    if let Some((mac, _)) = c.neigh6("vc", ip_b)? {
        ensure!(mac == vb.mac, "vc's neighbour entry for vb poisoned: {mac}");
    }

    // A router advertisement from a VM is dropped (RA guard): no VM of the network takes
    // va as a router.
    let base = Counters::take(&c, &["h1"])?;
    let at_vb = c.capture_vm("vb", "icmp6")?;
    c.scapy(
        "va",
        &format!(
            "sendp(Ether(src={mac:?}, dst='33:33:00:00:00:01')/IPv6(src={ll:?}, dst='ff02::1', hlim=255)/ICMPv6ND_RA(routerlifetime=1800)/ICMPv6NDOptSrcLLAddr(lladdr={mac:?})/ICMPv6NDOptPrefixInfo(prefix='fd00:6666::', prefixlen=64), iface='eth0')",
            mac = va.mac,
            ll = s6(va_ll)
        ),
    )?;
    c.wait_stat_at_least(
        "h1",
        Stat::DropRaGuard.as_str(),
        base.base("h1", Stat::DropRaGuard) + 1,
        WAIT,
    )?;
    // Sentinel: va's own advertisement of its address arrives after the RA would have.
    c.scapy("va", &na(ip_a))?;
    at_vb.wait_for("the sentinel NA", WAIT, |p| {
        p.contains(&format!("tgt is {ip_a}"))
    })?;
    let packets = at_vb.stop()?;
    let ras: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.contains("router advertisement") && p.contains(&va.mac))
        .collect();
    ensure!(ras.is_empty(), "va's RA reached vb: {ras:#?}");
    for vm in ["vb", "vc"] {
        let l = c.learned6(vm)?;
        ensure!(
            !l.addresses.iter().any(|a| a.starts_with("fd00:6666")),
            "{vm} configured the rogue prefix: {l:?}"
        );
        ensure!(
            l.default_via != Some(va_ll),
            "{vm} took va as its router: {l:?}"
        );
    }

    // IPv4 between the same VMs still passes.
    c.ping_ok("va", c.ip("vb")?, 2)?;
    Ok(())
}

/// One host; networks `s` (dhcpv6-stateless) and `f` (dhcpv6-stateful) on router r1; vs on
/// s, vf on f; the agent advertises unsolicited every second.
#[test]
fn advertisement_flags_follow_the_ra_mode_and_repeat_unsolicited() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").agent_args(&["--ra-interval", "1-1"]);
    t.network("s", 3621, "10.61.21.0/24")
        .ipv6("s", "fd00:61:21::/64", Some("dhcpv6-stateless"));
    t.network("f", 3622, "10.61.22.0/24")
        .ipv6("f", "fd00:61:22::/64", Some("dhcpv6-stateful"));
    t.router("r1", &["s", "f"]);
    t.vm(VmSpec::new("vs", "s", "h1"))
        .vm(VmSpec::new("vf", "f", "h1"));
    let c = t.build()?;
    // dhcpv6-stateless: the prefix is autonomous, the VM configures its EUI-64 address.
    let l = c.wait_ipv6_ready("vs", SLAAC_DEADLINE)?;
    eprintln!("vs (dhcpv6-stateless): {l:?}");
    // dhcpv6-stateful: no autonomous prefix, so nothing but the address DHCPv6 would give
    // (set by hand here), and the router as default route.
    let l = c.wait_ipv6_ready("vf", SLAAC_DEADLINE)?;
    eprintln!("vf (dhcpv6-stateful): {l:?}");
    let want = format!("{}/64", c.ip6("vf")?);
    ensure!(
        l.addresses == vec![want.clone()],
        "vf must hold only {want}, no SLAAC address: {l:?}"
    );
    ensure!(
        l.default_via == Some(c.network6("f")?.gateway_link_local()?),
        "vf's default router: {l:?}"
    );

    // The flags on the wire, and the unsolicited advertisements: at least three in 3.5 s
    // (the initial ones alone are 2 s apart).
    let gw_s = c
        .network6("s")?
        .gateway_mac
        .clone()
        .context("s has a router")?;
    let gw_f = c
        .network6("f")?
        .gateway_mac
        .clone()
        .context("f has a router")?;
    let at_vs = c.capture_vm("vs", "icmp6 and ip6[40] == 134")?;
    let at_vf = c.capture_vm("vf", "icmp6 and ip6[40] == 134")?;
    let ras_s = at_vs.wait_for_count(
        "3 advertisements at vs",
        3,
        Duration::from_millis(3500),
        |p| p.contains("router advertisement"),
    )?;
    let ras_f = at_vf.wait_for_count(
        "3 advertisements at vf",
        3,
        Duration::from_millis(3500),
        |p| p.contains("router advertisement"),
    )?;
    for p in &ras_s {
        ensure!(
            p.outer_eth().map(|(s, _)| s) == Some(gw_s.clone())
                && p.contains("Flags [other stateful]")
                && p.contains("mtu option"),
            "dhcpv6-stateless advertisement: O flag, from s's router port {gw_s}: {p}"
        );
    }
    for p in &ras_f {
        ensure!(
            p.outer_eth().map(|(s, _)| s) == Some(gw_f.clone()) && p.contains("Flags [managed]"),
            "dhcpv6-stateful advertisement: M flag, from f's router port {gw_f}: {p}"
        );
    }
    Ok(())
}
