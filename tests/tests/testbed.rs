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

/// The external network: the external namespace (bridge, upstream router, internet host), one
/// `ext0` per host on the bridge, the Neutron-shaped external objects in the state (accepted by
/// the agent's model), the floating IP edits, and a teardown without leaks.
#[test]
fn external_testbed_builds_and_tears_down() -> Result<()> {
    require_testbed_preconditions();
    let before = own_namespaces()?;
    let mut t = topology();
    t.external();
    t.fip("f1", Some("v1")).fip("f2", None);
    let mut cloud = t.build_without_agents()?;
    let dir = cloud.temp_dir().to_path_buf();
    ensure!(
        cloud.namespaces().len() == 1 + 1 + 2 + 3,
        "want underlay + external + 2 hosts + 3 VMs: {:?}",
        cloud.namespaces()
    );
    let ext = cloud.external_info()?.clone();
    let br = cmd::stdout(&exec_ok(
        &ext.ns,
        &["ip", "-o", "-4", "addr", "show", "dev", "br-ext"],
    )?);
    ensure!(br.contains("10.5.0.1/16"), "br-ext: {br}");
    let inet = cmd::stdout(&exec_ok(
        &ext.ns,
        &["ip", "-o", "-4", "addr", "show", "dev", "lo"],
    )?);
    ensure!(inet.contains("198.51.100.10/32"), "lo: {inet}");
    let fwd = cmd::stdout(&exec_ok(&ext.ns, &["sysctl", "-n", "net.ipv4.ip_forward"])?);
    ensure!(
        fwd.trim() == "1",
        "ip_forward in the external namespace: {fwd}"
    );

    for (i, h) in cloud.hosts().iter().enumerate() {
        let x = h.ext.clone().context("host without ext")?;
        ensure!(
            x.fg_ip == Ipv4Addr::new(10, 5, 1, 11 + u8::try_from(i)?),
            "{}: fg ip {}",
            h.name,
            x.fg_ip
        );
        let link = cmd::stdout(&exec_ok(
            &h.ns,
            &["ip", "-o", "link", "show", "dev", "ext0"],
        )?);
        ensure!(
            link.contains(&x.mac) && link.contains("mtu 1500") && link.contains("UP"),
            "ext0 of {}: {link}",
            h.name
        );
        let addr = cmd::stdout(&exec_ok(
            &h.ns,
            &["ip", "-o", "-4", "addr", "show", "dev", "ext0"],
        )?);
        ensure!(
            addr.trim().is_empty(),
            "ext0 of {} has an address: {addr}",
            h.name
        );
        let port = cmd::stdout(&exec_ok(
            &ext.ns,
            &["ip", "-o", "link", "show", "dev", &x.bridge_port],
        )?);
        ensure!(
            port.contains("master br-ext") && port.contains("UP"),
            "{} not on br-ext: {port}",
            x.bridge_port
        );
    }

    // L2 through br-ext: a temporary address on h2's ext0, pinged from the upstream router.
    let h2 = cloud.host("h2")?.clone();
    exec_ok(
        &h2.ns,
        &["ip", "addr", "add", "10.5.1.12/16", "dev", "ext0"],
    )?;
    exec_ok(&ext.ns, &["ping", "-n", "-c", "1", "-W", "2", "10.5.1.12"])?;
    exec_ok(
        &h2.ns,
        &["ip", "addr", "del", "10.5.1.12/16", "dev", "ext0"],
    )?;

    // A gratuitous ARP from h1's ext0 as the agent sends them, parsed from a hex capture on
    // br-ext; and the upstream router's reply to an ARP request, parsed from tcpdump's text.
    let h1 = cloud.host("h1")?.clone();
    let h1_mac = cloud.ext_mac("h1")?;
    let cap = cloud.capture_ext_hex("arp")?;
    cloud.scapy_at(
        "h1",
        &format!(
            "sendp(Ether(src='{h1_mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{h1_mac}', \
             psrc='10.5.2.200', hwdst='00:00:00:00:00:00', pdst='10.5.2.200'), iface='ext0')"
        ),
    )?;
    let garp = cap.wait_for("the gratuitous ARP", Duration::from_secs(5), |p| {
        p.arp().is_some_and(|a| a.is_gratuitous())
    })?;
    let a = garp.arp().context("no ARP fields")?;
    ensure!(
        a.sha == h1_mac
            && a.spa == Ipv4Addr::new(10, 5, 2, 200)
            && garp.outer_eth().map(|e| e.0) == Some(h1_mac.clone())
            && garp.is_arp_request("10.5.2.200", "10.5.2.200"),
        "{garp}"
    );
    exec_ok(
        &h1.ns,
        &["ip", "addr", "add", "10.5.1.11/16", "dev", "ext0"],
    )?;
    exec_ok(
        &h1.ns,
        &["arping", "-c", "1", "-w", "3", "-I", "ext0", "10.5.0.1"],
    )?;
    exec_ok(
        &h1.ns,
        &["ip", "addr", "del", "10.5.1.11/16", "dev", "ext0"],
    )?;
    let reply = cap.wait_for("the gateway's ARP reply", Duration::from_secs(5), |p| {
        !p.arp_replies().is_empty()
    })?;
    ensure!(
        reply.arp_replies()[0].0 == "10.5.0.1"
            && reply.arp().is_some_and(|a| a.op == 2 && a.tha == h1_mac),
        "{reply}"
    );
    cap.stop()?;

    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(cloud.state_path())?)?;
    let net = raw["networks"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["router:external"] == true))
        .context("no external network in the state")?
        .clone();
    ensure!(
        net["provider:network_type"] == "flat"
            && net["provider:physical_network"] == "public"
            && net["provider:segmentation_id"].is_null()
            && net["mtu"] == 1500
            && net["id"] == ext.network_id.as_str(),
        "{net}"
    );
    let sub = raw["subnets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == ext.subnet_id.as_str()))
        .context("no external subnet")?;
    ensure!(
        sub["cidr"] == "10.5.0.0/16" && sub["gateway_ip"] == "10.5.0.1",
        "{sub}"
    );
    let fg: Vec<_> = raw["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .filter(|p| p["device_owner"] == "network:floatingip_agent_gateway")
        .cloned()
        .collect();
    ensure!(fg.len() == 2, "one fg port per host: {fg:?}");
    for h in cloud.hosts() {
        let x = h.ext.clone().context("ext")?;
        let p = fg
            .iter()
            .find(|p| p["binding:host_id"] == h.agent_name.as_str())
            .with_context(|| format!("no fg port for {}", h.name))?;
        ensure!(
            p["device_id"] == h.agent_name.as_str()
                && p["network_id"] == ext.network_id.as_str()
                && p["mac_address"] == x.mac.as_str()
                && p["fixed_ips"][0]["ip_address"] == x.fg_ip.to_string().as_str()
                && p["fixed_ips"][0]["subnet_id"] == ext.subnet_id.as_str(),
            "{p}"
        );
    }
    ensure!(
        raw["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().all(|h| h["external_interface"] == "ext0")),
        "{}",
        raw["hosts"]
    );
    let gw = &raw["routers"][0]["external_gateway_info"];
    ensure!(
        gw["network_id"] == ext.network_id.as_str()
            && gw["enable_snat"] == true
            && gw["external_fixed_ips"][0]["ip_address"] == "10.5.3.1",
        "{gw}"
    );
    let router = cloud.router_id("r1")?.to_string();
    let fips = raw["floatingips"]
        .as_array()
        .context("floatingips")?
        .clone();
    let v1 = cloud.vm("v1")?.clone();
    ensure!(
        fips.len() == 2
            && fips[0]["floating_ip_address"] == "10.5.2.1"
            && fips[0]["port_id"] == v1.port_id.as_str()
            && fips[0]["fixed_ip_address"] == v1.ip.to_string().as_str()
            && fips[0]["router_id"] == router.as_str()
            && fips[0]["floating_network_id"] == ext.network_id.as_str()
            && fips[1]["floating_ip_address"] == "10.5.2.2"
            && fips[1]["port_id"].is_null()
            && fips[1]["fixed_ip_address"].is_null(),
        "{fips:?}"
    );
    let text = std::fs::read_to_string(cloud.state_path())?;
    dvr_userspace::model::State::from_json(&text)
        .map_err(|e| anyhow::anyhow!("the agent's model rejects the state: {e}"))?;

    // Floating IP edits rewrite the state file like Neutron would.
    cloud.associate("f1", "v3")?;
    cloud.disassociate("f1")?;
    cloud.associate("f2", "v2")?;
    cloud.delete_fip("f1")?;
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(cloud.state_path())?)?;
    let fips = raw["floatingips"]
        .as_array()
        .context("floatingips")?
        .clone();
    let v2 = cloud.vm("v2")?.clone();
    ensure!(
        fips.len() == 1
            && fips[0]["floating_ip_address"] == "10.5.2.2"
            && fips[0]["port_id"] == v2.port_id.as_str()
            && fips[0]["fixed_ip_address"] == "192.168.2.50",
        "{fips:?}"
    );
    let text = std::fs::read_to_string(cloud.state_path())?;
    dvr_userspace::model::State::from_json(&text)
        .map_err(|e| anyhow::anyhow!("the agent's model rejects the edited state: {e}"))?;

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
fn snat_testbed_writes_modes_csnat_ports_and_vips() -> Result<()> {
    require_testbed_preconditions();
    let before = own_namespaces()?;
    let vip = Ipv4Addr::new(192, 168, 1, 100);
    let mut t = Topology::new();
    t.host("h1")
        .no_external_host("hn")
        .snat_host("hs")
        .external()
        .host_agent_args("hs", &["--snat-ports", "40000-40003"]);
    t.network("a", 1001, "192.168.1.0/24")
        .network("b", 1002, "192.168.2.0/24")
        .network("c", 1003, "192.168.3.0/24");
    t.router("r1", &["a", "b"])
        .router("r2", &["c"])
        .enable_snat("r2", false);
    t.vip("vip", "a", vip)
        .vm(VmSpec::new("v1", "a", "h1").allowed_pair(vip, None))
        .vm(VmSpec::new("v2", "a", "hn").allowed_pair(vip, None))
        .vm(VmSpec::new("v3", "c", "hn"))
        .fip("f2", Some("v2"))
        .fip_on_vip("fv", "vip");
    let cloud = t.build_without_agents()?;
    let dir = cloud.temp_dir().to_path_buf();
    ensure!(
        cloud.host("hn")?.ext.is_none()
            && cloud.host("hs")?.ext.is_some()
            && cloud.host("hs")?.agent_args == ["--snat-ports", "40000-40003"]
            && cloud.host("h1")?.agent_args.is_empty(),
        "hn has no ext0 attachment, hs has one and its own agent args: {:?}",
        cloud.hosts()
    );
    let link = cmd::exec(
        &cloud.host("hn")?.ns,
        &["ip", "link", "show", "dev", "ext0"],
    )?;
    ensure!(!link.status.success(), "hn must have no ext0");
    ensure!(cloud.snat_host()? == "hs", "hs is the SNAT host");

    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(cloud.state_path())?)?;
    let host = |name: &str| -> Result<serde_json::Value> {
        let agent = cloud.host(name)?.agent_name.clone();
        raw["hosts"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == agent.as_str()))
            .cloned()
            .with_context(|| format!("no host {name} in the state"))
    };
    let (h1, hn, hs) = (host("h1")?, host("hn")?, host("hs")?);
    ensure!(
        h1["agent_mode"] == "dvr"
            && h1["external_interface"] == "ext0"
            && hn["agent_mode"] == "dvr_no_external"
            && hn.get("external_interface").is_none()
            && hs["agent_mode"] == "dvr_snat"
            && hs["external_interface"] == "ext0",
        "host modes: {h1} {hn} {hs}"
    );
    let ports = raw["ports"].as_array().context("ports")?;
    let csnat: Vec<_> = ports
        .iter()
        .filter(|p| p["device_owner"] == "network:router_centralized_snat")
        .collect();
    ensure!(
        csnat.len() == 3,
        "one csnat port per router subnet: {csnat:?}"
    );
    for (net, router, ip) in [
        ("a", "r1", "192.168.1.2"),
        ("b", "r1", "192.168.2.2"),
        ("c", "r2", "192.168.3.2"),
    ] {
        let n = cloud.network(net)?;
        let info = cloud.csnat(net)?;
        let p = csnat
            .iter()
            .find(|p| p["id"] == info.port_id.as_str())
            .with_context(|| format!("no csnat port for {net}"))?;
        ensure!(
            p["network_id"] == n.network_id.as_str()
                && p["mac_address"] == info.mac.as_str()
                && p["device_id"] == cloud.router_id(router)?
                && p["binding:host_id"] == cloud.host("hs")?.agent_name.as_str()
                && p["fixed_ips"][0]["subnet_id"] == n.subnet_id.as_str()
                && p["fixed_ips"][0]["ip_address"] == ip
                && info.ip.to_string() == ip
                && info.host == "hs",
            "csnat port of {net}: {p} ({info:?})"
        );
    }
    let gw = |i: usize| raw["routers"][i]["external_gateway_info"].clone();
    ensure!(
        gw(0)["enable_snat"] == true
            && gw(1)["enable_snat"] == false
            && cloud.router_external_ip("r1")? == Ipv4Addr::new(10, 5, 3, 1)
            && cloud.router_external_ip("r2")? == Ipv4Addr::new(10, 5, 3, 2),
        "{} {}",
        gw(0),
        gw(1)
    );
    let info = cloud.vip_info("vip")?;
    let p = ports
        .iter()
        .find(|p| p["id"] == info.port_id.as_str())
        .context("no VIP port")?;
    ensure!(
        p["device_owner"] == ""
            && p["binding:host_id"] == ""
            && p["fixed_ips"][0]["ip_address"] == "192.168.1.100"
            && p["network_id"] == cloud.network("a")?.network_id.as_str(),
        "VIP port: {p}"
    );
    for vm in ["v1", "v2"] {
        let id = cloud.vm(vm)?.port_id.clone();
        let p = ports
            .iter()
            .find(|p| p["id"] == id.as_str())
            .context("VM port")?;
        ensure!(
            p["allowed_address_pairs"][0]["ip_address"] == "192.168.1.100",
            "{vm} lists the VIP: {p}"
        );
    }
    let fv = raw["floatingips"]
        .as_array()
        .and_then(|f| {
            f.iter().find(|f| {
                f["id"]
                    == cloud
                        .fip_info("fv")
                        .map(|i| i.id.clone())
                        .unwrap_or_default()
                        .as_str()
            })
        })
        .context("no fv")?;
    ensure!(
        fv["port_id"] == info.port_id.as_str()
            && fv["fixed_ip_address"] == "192.168.1.100"
            && fv["router_id"] == cloud.router_id("r1")?,
        "{fv}"
    );
    let text = std::fs::read_to_string(cloud.state_path())?;
    dvr_userspace::model::State::from_json(&text)
        .map_err(|e| anyhow::anyhow!("the agent's model rejects the state: {e}"))?;

    // A dvr_snat host needs the external network; unknown names are reported.
    let mut bad = Topology::new();
    bad.snat_host("hs");
    let e = bad
        .build_without_agents()
        .err()
        .context("dvr_snat without external")?;
    ensure!(
        format!("{e:#}").contains("needs the external network"),
        "{e:#}"
    );
    let mut bad = Topology::new();
    bad.host("h1").host_agent_args("hx", &["-v"]);
    let e = bad
        .build_without_agents()
        .err()
        .context("args for an undefined host")?;
    ensure!(format!("{e:#}").contains("undefined host hx"), "{e:#}");

    drop(cloud);
    let after = own_namespaces()?;
    ensure!(
        after == before,
        "namespaces leaked: {after:?} (before: {before:?})"
    );
    ensure!(!dir.exists(), "temp dir {} left behind", dir.display());
    Ok(())
}
