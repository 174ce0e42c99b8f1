//! dvr-demo: the datapath's whole story on a small cloud in network namespaces: three hosts
//! (h1, h2 `dvr`; snat `dvr_snat`), the external network with an upstream router and an
//! "internet host", one distributed router with a gateway and the subnets web and db, VMs
//! web1 (h1, with a floating IP), web2 (h2) and db1 (h2, none).
//!
//! It shows, per step, what the receiver saw: switched and routed east-west (reply TTL, the
//! VNI on the underlay), the floating IP reached from outside, web1 leaving as its floating
//! IP, db1 leaving through the SNAT host as the router's gateway address; then a `dvrctl
//! trace` of each of those paths through the live maps. Tears everything down and exits
//! non-zero if any step failed.
//!
//! `--neutron` builds the same cloud through a real neutron-server's API (Neutron 29 with
//! this repository's ML2 driver, on etcd; the agents register themselves), as the
//! integration tests do. Needs root; `cargo xtask demo [--neutron]` builds and sets up first.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use dvr_tests::neutron::id_of;
use dvr_tests::{
    Cloud, EXT, EXT_IFACE, INTERNET_HOST, Topology, TraceProbe, VmSpec, check_preconditions,
    cloud::VXLAN_DEV, cmd,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// What the steps need to know of the cloud, however it was built.
struct Story {
    fip: Ipv4Addr,
    gateway: Ipv4Addr,
    /// Gateway MAC of each subnet (the router's distributed interface).
    web_gw_mac: String,
    db_gw_mac: String,
    /// The router's centralized SNAT port on db (what h2 steers db1's traffic to).
    db_csnat_mac: String,
}

fn main() -> ExitCode {
    let neutron = std::env::args().skip(1).any(|a| a == "--neutron");
    match run(neutron) {
        Ok(true) => {
            println!("\ndvr-demo: all steps passed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\ndvr-demo: some steps FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dvr-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn topology(neutron: bool) -> Topology {
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("snat").external();
    if !neutron {
        t.network("web", 1001, "192.168.11.0/24")
            .network("db", 1002, "192.168.12.0/24");
        t.router("r1", &["web", "db"]);
        t.vm(VmSpec::new("web1", "web", "h1"))
            .vm(VmSpec::new("web2", "web", "h2"))
            .vm(VmSpec::new("db1", "db", "h2"));
        t.fip("f1", Some("web1"));
    }
    t
}

fn run(neutron: bool) -> Result<bool> {
    check_preconditions(true)?;
    let t = topology(neutron);
    let (mut c, story) = if neutron {
        println!("dvr-demo: building the cloud through neutron-server's API");
        let mut c = t.build_without_agents().context("building the hosts")?;
        c.dump_logs_on_drop = false;
        let story = through_neutron(&mut c)?;
        (c, story)
    } else {
        println!("dvr-demo: building the cloud from a state file");
        let mut c = t.build().context("building the cloud")?;
        c.dump_logs_on_drop = false;
        let story = Story {
            fip: c.fip_ip("f1")?,
            gateway: c.router_external_ip("r1")?,
            web_gw_mac: c.gateway_mac("web")?,
            db_gw_mac: c.gateway_mac("db")?,
            db_csnat_mac: c.csnat("db")?.mac.clone(),
        };
        (c, story)
    };
    describe(&c, &story)?;
    let ok = steps(&mut c, &story)?;
    let ok = traces(&c, &story)? && ok;
    drop(c);
    println!(
        "\ndvr-demo: torn down (namespaces left: {:?})",
        dvr_tests::own_namespaces()?
    );
    Ok(ok)
}

/// The same cloud made through the API: agents that register themselves, then neutron-server,
/// then networks, router, ports (bound by the ML2 driver, plugged as Nova would), a floating
/// IP and an ICMP rule so that the outside may ping it.
fn through_neutron(c: &mut Cloud) -> Result<Story> {
    c.start_registered_agents(WAIT)?;
    c.start_neutron()?;
    let api = c.neutron();
    let ext = c.neutron_external_network()?;
    let web = c.neutron_network("web", "192.168.11.0/24", None)?;
    let db = c.neutron_network("db", "192.168.12.0/24", None)?;
    let router = c.neutron_router("r1", Some(&ext), &[&web, &db])?;
    let web1 = c.boot("web1", "h1", "web", WAIT)?;
    c.boot("web2", "h2", "web", WAIT)?;
    c.boot("db1", "h2", "db", WAIT)?;
    let fip = api.create(
        "floatingip",
        json!({"floating_network_id": ext["id"], "port_id": web1["id"]}),
    )?;
    api.create(
        "security_group_rule",
        json!({"security_group_id": web1["security_groups"][0], "direction": "ingress",
               "ethertype": "IPv4", "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}),
    )?;
    let holder = c.snat_holder(id_of(&router)?, WAIT)?;
    println!("  router r1's SNAT role elected on {holder}");
    let ports = api.list("port")?;
    let mac_of = |owner: &str, net: &Value| -> Result<String> {
        ports
            .values()
            .find(|p| p["device_owner"] == owner && p["network_id"] == net["id"])
            .and_then(|p| p["mac_address"].as_str())
            .map(str::to_lowercase)
            .ok_or_else(|| anyhow!("no {owner} port on {}", net["name"]))
    };
    let addr = |v: &Value| -> Result<Ipv4Addr> {
        v.as_str()
            .ok_or_else(|| anyhow!("no address"))?
            .parse()
            .context("an IPv4 address")
    };
    Ok(Story {
        fip: addr(&fip["floating_ip_address"])?,
        gateway: addr(&router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"])?,
        web_gw_mac: mac_of("network:router_interface_distributed", &web.network)?,
        db_gw_mac: mac_of("network:router_interface_distributed", &db.network)?,
        db_csnat_mac: mac_of("network:router_centralized_snat", &db.network)?,
    })
}

fn describe(c: &Cloud, s: &Story) -> Result<()> {
    for h in c.hosts() {
        println!(
            "  host {:<4} agent --host {:<18} tunnel {} dvr mac {}",
            h.name, h.agent_name, h.tunnel_ip, h.dvr_mac
        );
    }
    for name in ["web", "db"] {
        let n = c.network(name)?;
        println!("  net  {name:<4} VNI {:<5} {}", n.vni, n.cidr);
    }
    for v in c.vms() {
        println!(
            "  vm   {:<5} {:<15} mac {} on {:<4} tap {}",
            v.name, v.ip, v.mac, v.host, v.tap
        );
    }
    println!(
        "  web1's floating IP {}; router r1's gateway address {}",
        s.fip, s.gateway
    );
    Ok(())
}

fn verdict(good: bool) -> &'static str {
    if good { "ok" } else { "FAIL" }
}

/// The traffic steps; true if all passed.
fn steps(c: &mut Cloud, s: &Story) -> Result<bool> {
    let mut ok = true;
    println!("\n-- east-west (ping, 3 packets)");
    let (web, db) = (c.network("web")?.vni, c.network("db")?.vni);
    for (from, to, ttl, vni, what) in [
        ("web1", "web2", 64, web, "same subnet, across hosts"),
        ("web1", "db1", 63, db, "routed on h1, delivered on db's VNI"),
        ("db1", "web1", 63, web, "routed on h2"),
    ] {
        let good = match ping_step(c, from, to, ttl, vni) {
            Ok((line, good)) => {
                println!("  {from:<5} -> {to:<5} {line}  ({what}) {}", verdict(good));
                good
            }
            Err(e) => {
                println!("  {from:<5} -> {to:<5} error: {e:#}");
                false
            }
        };
        ok &= good;
    }

    println!("\n-- north-south");
    let ping = c.ping(EXT, s.fip, 3)?;
    let good = ping.all_answered();
    println!(
        "  outside -> web1's FIP {}: {}/{} answered {}",
        s.fip,
        ping.received,
        ping.transmitted,
        verdict(good)
    );
    ok &= good;
    for (vm, port, want, how) in [
        ("web1", 5501, s.fip, "its floating IP (DNAT/SNAT on h1)"),
        (
            "db1",
            5502,
            s.gateway,
            "the router's gateway (SNAT on the SNAT host)",
        ),
    ] {
        let seen = c
            .tcp_transfer_to(vm, EXT, INTERNET_HOST, port, 64 * 1024, None)
            .map(|r| r.peer.map(|p| *p.ip()));
        let good = matches!(seen, Ok(Some(ip)) if ip == want);
        println!(
            "  {vm:<5} -> internet host {INTERNET_HOST}: seen as {seen:?}, want {want}, {how} {}",
            verdict(good)
        );
        ok &= good;
    }
    Ok(ok)
}

/// One ping with the reply TTL and the VNI of the requests on the sender's uplink.
fn ping_step(c: &Cloud, from: &str, to: &str, ttl: u8, vni: u32) -> Result<(String, bool)> {
    let from_host = c.vm(from)?.host.clone();
    let to_ip = c.ip(to)?;
    let cap = c.capture_uplink(&from_host, "udp port 4789")?;
    let ping = c.ping(from, to_ip, 3)?;
    let packets = cap.stop()?;
    let (from_s, to_s) = (c.ip(from)?.to_string(), to_ip.to_string());
    let mut vnis: Vec<u32> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_request() && p.has_ips(&from_s, &to_s))
        .filter_map(|p| p.vni())
        .collect();
    vnis.dedup();
    let good = ping.all_answered() && ping.ttls.iter().all(|t| *t == ttl) && vnis == vec![vni];
    Ok((
        format!(
            "{to_s:<15} {}/{} ttl {:?} VNI on the wire {vnis:?} (want ttl {ttl}, VNI {vni})",
            ping.received,
            ping.transmitted,
            ping.ttls.first()
        ),
        good,
    ))
}

/// `dvrctl trace` of each path, as an operator would run it.
fn traces(c: &Cloud, s: &Story) -> Result<bool> {
    let (web1, db1) = (c.vm("web1")?.clone(), c.vm("db1")?.clone());
    let (h2_tunnel, h2_dvr_mac) = (c.host("h2")?.tunnel_ip, c.host("h2")?.dvr_mac.clone());
    let db_vni = c.network("db")?.vni;
    let cases = [
        (
            "h1",
            "web1 -> db1, routed east-west",
            TraceProbe::udp(&web1.tap, web1.ip, 40000, db1.ip, 53).dst_mac(&s.web_gw_mac),
        ),
        (
            "h1",
            "web1 -> the internet host, leaving as its floating IP",
            TraceProbe::udp(&web1.tap, web1.ip, 40000, INTERNET_HOST, 53).dst_mac(&s.web_gw_mac),
        ),
        (
            "h1",
            "the internet host pings web1's floating IP, arriving on ext0",
            TraceProbe {
                proto: "icmp".into(),
                sport: None,
                dport: None,
                ..TraceProbe::udp(EXT_IFACE, INTERNET_HOST, 0, s.fip, 0)
            },
        ),
        (
            "h2",
            "db1 -> the internet host, steered to the SNAT host",
            TraceProbe::udp(&db1.tap, db1.ip, 40000, INTERNET_HOST, 53).dst_mac(&s.db_gw_mac),
        ),
        (
            "snat",
            "db1 -> the internet host, from the tunnel: port-address translation",
            TraceProbe::udp(VXLAN_DEV, db1.ip, 40000, INTERNET_HOST, 53)
                .macs(&h2_dvr_mac, &s.db_csnat_mac)
                .tunnel(db_vni, h2_tunnel),
        ),
    ];
    let mut ok = true;
    for (host, what, probe) in cases {
        let args = probe.cli_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        println!(
            "\n-- {what}\n$ dvrctl --host {} {}",
            c.host(host)?.agent_name,
            args.join(" ")
        );
        let out = c.dvrctl(host, &refs)?;
        let text = cmd::text(&out);
        print!("{text}");
        ok &= out.status.success() && !text.contains("=> DROP");
    }
    Ok(ok)
}
