//! Self tests of the test bed: namespace/link creation and teardown, the state file, and the
//! capture parser against real kernel VXLAN traffic. No dvr-agent involved. Needs root.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_tests::{Topology, VmSpec, cmd, exec_ok, own_namespaces, require_testbed_preconditions};

fn topology() -> Topology {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 1001, "192.168.1.0/24")
        .network("b", 1002, "192.168.2.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h1").ip(Ipv4Addr::new(192, 168, 2, 50)))
        .vm(VmSpec::new("v3", "a", "h2")
            .allowed_pair(Ipv4Addr::new(192, 168, 1, 200), None)
            .port_security(true));
    t
}

#[test]
fn testbed_builds_and_tears_down() -> Result<()> {
    require_testbed_preconditions();
    let before = own_namespaces()?;
    let cloud = topology().build_without_agents()?;
    let dir = cloud.temp_dir().to_path_buf();
    let listed = own_namespaces()?;
    for ns in cloud.namespaces() {
        ensure!(
            listed.contains(ns),
            "namespace {ns} missing from `ip netns list`"
        );
    }
    ensure!(
        cloud.namespaces().len() == 1 + 2 + 3,
        "want underlay + 2 hosts + 3 VMs: {:?}",
        cloud.namespaces()
    );

    for v in cloud.vms() {
        ensure!(
            v.tap.len() <= 15 && v.tap.starts_with("tap"),
            "bad tap name {}",
            v.tap
        );
        ensure!(
            v.tap == format!("tap{}", &v.port_id[..11]),
            "tap {} does not match port {}",
            v.tap,
            v.port_id
        );
        let host_ns = &cloud.host(&v.host)?.ns;
        let tap = cmd::stdout(&exec_ok(
            host_ns,
            &["ip", "-o", "link", "show", "dev", &v.tap],
        )?);
        ensure!(
            tap.contains("mtu 1450") && tap.contains("UP"),
            "tap {}: {tap}",
            v.tap
        );
        let eth = cmd::stdout(&exec_ok(
            &v.ns,
            &["ip", "-o", "link", "show", "dev", "eth0"],
        )?);
        ensure!(
            eth.contains(&v.mac) && eth.contains("mtu 1450"),
            "eth0 of {}: {eth}",
            v.name
        );
        let addr = cmd::stdout(&exec_ok(
            &v.ns,
            &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
        )?);
        ensure!(
            addr.contains(&format!("{}/24", v.ip)),
            "eth0 of {}: {addr}",
            v.name
        );
        let gw = cloud.network(&v.network)?.gateway;
        let route = cmd::stdout(&exec_ok(&v.ns, &["ip", "route", "show", "default"])?);
        ensure!(
            route.contains(&format!("default via {gw} dev eth0")),
            "route of {}: {route}",
            v.name
        );
        let v6 = cmd::stdout(&exec_ok(
            &v.ns,
            &["sysctl", "-n", "net.ipv6.conf.eth0.disable_ipv6"],
        )?);
        ensure!(v6.trim() == "1", "IPv6 not disabled on {}", v.name);
        let lo = cmd::stdout(&exec_ok(&v.ns, &["ip", "-o", "link", "show", "dev", "lo"])?);
        ensure!(lo.contains("UP"), "lo down in {}", v.name);
    }
    for h in cloud.hosts() {
        let ul = cmd::stdout(&exec_ok(
            &h.ns,
            &["ip", "-o", "-4", "addr", "show", "dev", "ul0"],
        )?);
        ensure!(
            ul.contains(&format!("{}/24", h.tunnel_ip)),
            "ul0 of {}: {ul}",
            h.name
        );
        let port = cmd::stdout(&exec_ok(
            cloud.underlay_ns(),
            &["ip", "-o", "link", "show", "dev", &h.uplink],
        )?);
        ensure!(
            port.contains("master br0"),
            "{} not on br0: {port}",
            h.uplink
        );
    }

    // The state file is the Neutron shape, with the cloud's objects.
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(cloud.state_path())?)?;
    ensure!(
        raw["networks"][0]["provider:segmentation_id"] == 1001,
        "{raw}"
    );
    ensure!(
        raw["networks"][0]["provider:network_type"] == "vxlan",
        "{raw}"
    );
    ensure!(
        raw["routers"][0]["external_gateway_info"].is_null(),
        "{raw}"
    );
    let ports = raw["ports"].as_array().context("ports")?;
    ensure!(
        ports.len() == 2 + 3,
        "2 router interfaces + 3 VM ports: {}",
        ports.len()
    );
    let ri: Vec<_> = ports
        .iter()
        .filter(|p| p["device_owner"] == "network:router_interface_distributed")
        .collect();
    ensure!(ri.len() == 2, "router interfaces: {ri:?}");
    ensure!(
        ri.iter()
            .all(|p| p["device_id"] == cloud.router_id("r1").unwrap_or_default()),
        "{ri:?}"
    );
    ensure!(
        ri.iter()
            .any(|p| p["fixed_ips"][0]["ip_address"] == "192.168.1.1"),
        "{ri:?}"
    );
    let v3 = ports
        .iter()
        .find(|p| {
            p["id"]
                == cloud
                    .vm("v3")
                    .map(|v| v.port_id.clone())
                    .unwrap_or_default()
        })
        .context("v3 port")?;
    ensure!(
        v3["binding:host_id"] == cloud.host("h2")?.agent_name.as_str(),
        "{v3}"
    );
    ensure!(
        v3["allowed_address_pairs"][0]["ip_address"] == "192.168.1.200",
        "{v3}"
    );
    ensure!(raw["hosts"][1]["tunnel_ip"] == "192.0.2.12", "{raw}");

    drop(cloud);
    let after = own_namespaces()?;
    ensure!(
        after == before,
        "namespaces leaked: {after:?} (before: {before:?})"
    );
    ensure!(!dir.exists(), "temp dir {} left behind", dir.display());
    Ok(())
}

#[test]
fn testbed_cleans_up_after_a_panic() -> Result<()> {
    require_testbed_preconditions();
    let before = own_namespaces()?;
    let r = std::panic::catch_unwind(|| {
        let cloud = topology().build_without_agents();
        assert!(cloud.is_ok(), "build failed: {cloud:?}");
        panic!("deliberate panic with a live cloud");
    });
    ensure!(r.is_err(), "the closure should have panicked");
    let after = own_namespaces()?;
    ensure!(after == before, "namespaces leaked after panic: {after:?}");
    Ok(())
}

#[test]
fn testbed_rejects_bad_topologies_without_leaking() -> Result<()> {
    require_testbed_preconditions();
    let before = own_namespaces()?;
    let mut t = topology();
    t.vm(VmSpec::new("bad", "a", "h9"));
    let err = t
        .build_without_agents()
        .err()
        .context("VM on unknown host accepted")?;
    ensure!(format!("{err:#}").contains("h9"), "{err:#}");
    ensure!(
        own_namespaces()? == before,
        "namespaces leaked after a failed build"
    );
    Ok(())
}

/// The capture helpers against plain kernel VXLAN between two host namespaces: VNI, inner MACs,
/// TTLs, and the sentinel ordering used by the negative assertions.
#[test]
fn capture_parses_kernel_vxlan() -> Result<()> {
    require_testbed_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    let cloud = t.build_without_agents()?;
    let h1 = cloud.host("h1")?.clone();
    let h2 = cloud.host("h2")?.clone();
    // 198.51.100.0/24 (TEST-NET-2) lives only on these two devices, inside our namespaces.
    for (h, peer, addr) in [(&h1, &h2, "198.51.100.1/24"), (&h2, &h1, "198.51.100.2/24")] {
        let remote = peer.tunnel_ip.to_string();
        exec_ok(
            &h.ns,
            &[
                "ip", "link", "add", "vxt", "type", "vxlan", "id", "4242", "remote", &remote,
                "dstport", "4789", "dev", "ul0",
            ],
        )?;
        exec_ok(&h.ns, &["ip", "addr", "add", addr, "dev", "vxt"])?;
        exec_ok(&h.ns, &["ip", "link", "set", "vxt", "up"])?;
    }
    let vxt1 = cmd::stdout(&exec_ok(&h1.ns, &["cat", "/sys/class/net/vxt/address"])?)
        .trim()
        .to_string();
    let vxt2 = cmd::stdout(&exec_ok(&h2.ns, &["cat", "/sys/class/net/vxt/address"])?)
        .trim()
        .to_string();

    let uplink = cloud.capture_uplink("h1", "")?;
    let any = cloud.capture_underlay("udp port 4789")?;
    exec_ok(
        &h1.ns,
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "198.51.100.2",
        ],
    )?;
    let (s, d) = cloud.underlay_sentinel("h1", "h2")?;
    uplink.wait_for("sentinel", Duration::from_secs(5), |p| {
        p.is_icmp_echo_request() && p.has_ips(&s.to_string(), &d.to_string()) && !p.is_vxlan()
    })?;
    let packets = uplink.stop()?;
    let any_packets = any.stop()?;

    let req: Vec<_> = packets
        .iter()
        .filter(|p| p.is_vxlan() && p.is_icmp_echo_request())
        .collect();
    ensure!(
        req.len() == 2,
        "want 2 encapsulated echo requests, got {}:\n{packets:#?}",
        req.len()
    );
    for p in &req {
        ensure!(p.vni() == Some(4242), "vni: {p}");
        ensure!(
            p.inner_eth() == Some((vxt1.clone(), vxt2.clone())),
            "inner eth: {p}"
        );
        ensure!(p.ttls() == vec![64, 64], "ttls: {p}");
        ensure!(p.has_ips("198.51.100.1", "198.51.100.2"), "ips: {p}");
        ensure!(
            p.has_ips(&s.to_string(), &format!("{d}.4789")) || p.contains(&format!("> {d}.4789")),
            "outer: {p}"
        );
    }
    let rep: Vec<_> = packets
        .iter()
        .filter(|p| p.is_vxlan() && p.is_icmp_echo_reply())
        .collect();
    ensure!(
        rep.len() == 2
            && rep
                .iter()
                .all(|p| p.inner_eth() == Some((vxt2.clone(), vxt1.clone()))),
        "{rep:#?}"
    );
    // -i any sees each packet on both bridge ports.
    ensure!(
        any_packets
            .iter()
            .filter(|p| p.is_icmp_echo_request())
            .count()
            == 4,
        "{any_packets:#?}"
    );
    Ok(())
}
