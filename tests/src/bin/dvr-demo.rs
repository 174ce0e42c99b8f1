//! dvr-demo: builds a small cloud (3 hosts, 1 distributed router, 2 subnets, 4 VMs) in network
//! namespaces, runs one dvr-agent per host, pings within a subnet and across subnets between
//! hosts, and reports per step what it saw (result, reply TTL, VNIs on the underlay). Prints
//! `dvrctl show routes` and `show stats` of one host, tears everything down and exits non-zero
//! if any step failed. Needs root; run `cargo build -p dvr-userspace` first.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use dvr_tests::{Cloud, Topology, VmSpec, check_preconditions, cmd};

struct Step {
    from: String,
    to: String,
    expect_ttl: u8,
    expect_vni: u32,
}

fn main() -> ExitCode {
    match run() {
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

fn run() -> Result<bool> {
    check_preconditions(true)?;
    let mut topo = Topology::new();
    topo.host("h1").host("h2").host("h3");
    topo.network("web", 1001, "192.168.11.0/24")
        .network("db", 1002, "192.168.12.0/24");
    topo.router("r1", &["web", "db"]);
    topo.vm(VmSpec::new("web1", "web", "h1"))
        .vm(VmSpec::new("web2", "web", "h2"))
        .vm(VmSpec::new("db1", "db", "h2"))
        .vm(VmSpec::new("db2", "db", "h3"));
    println!("dvr-demo: building 3 hosts, router r1 with subnets web (VNI 1001) and db (VNI 1002)");
    let mut cloud = topo.build().context("building the cloud")?;
    cloud.dump_logs_on_drop = false;
    for h in cloud.hosts() {
        println!(
            "  host {:<3} agent --host {:<18} netns {:<24} tunnel {} dvr mac {}",
            h.name, h.agent_name, h.ns, h.tunnel_ip, h.dvr_mac
        );
    }
    for v in cloud.vms() {
        println!(
            "  vm   {:<5} {:<15} mac {} on {:<3} tap {}",
            v.name, v.ip, v.mac, v.host, v.tap
        );
    }

    let steps = [
        Step {
            from: "web1".into(),
            to: "web2".into(),
            expect_ttl: 64,
            expect_vni: 1001,
        },
        Step {
            from: "web1".into(),
            to: "db1".into(),
            expect_ttl: 63,
            expect_vni: 1002,
        },
        Step {
            from: "web1".into(),
            to: "db2".into(),
            expect_ttl: 63,
            expect_vni: 1002,
        },
        Step {
            from: "db2".into(),
            to: "web2".into(),
            expect_ttl: 63,
            expect_vni: 1001,
        },
    ];
    println!(
        "\n{:<6} {:<6} {:<16} {:<8} {:<10} {:<22} verdict",
        "from", "to", "to ip", "result", "reply ttl", "request VNI on wire"
    );
    let mut ok = true;
    for s in &steps {
        let (line, good) = match step(&cloud, s) {
            Ok(r) => r,
            Err(e) => (format!("{:<6} {:<6} error: {e:#}", s.from, s.to), false),
        };
        println!("{line}");
        ok &= good;
    }

    for (what, args) in [("routes", ["show", "routes"]), ("stats", ["show", "stats"])] {
        println!(
            "\n$ dvrctl --host {} show {what}",
            cloud.host("h1")?.agent_name
        );
        let out = cloud.dvrctl("h1", &args)?;
        print!("{}", cmd::text(&out));
        ok &= out.status.success();
    }
    drop(cloud);
    println!(
        "\ndvr-demo: torn down (namespaces left: {:?})",
        dvr_tests::own_namespaces()?
    );
    Ok(ok)
}

fn step(cloud: &Cloud, s: &Step) -> Result<(String, bool)> {
    let from_host = cloud.vm(&s.from)?.host.clone();
    let to_ip: Ipv4Addr = cloud.ip(&s.to)?;
    let cap = cloud.capture_uplink(&from_host, "udp port 4789")?;
    let ping = cloud.ping(&s.from, to_ip, 3)?;
    let packets = cap.stop()?;
    let from_ip = cloud.ip(&s.from)?.to_string();
    let to_s = to_ip.to_string();
    let mut vnis: Vec<u32> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_request() && p.has_ips(&from_ip, &to_s))
        .filter_map(|p| p.vni())
        .collect();
    vnis.dedup();
    let ttl = ping.ttls.first().map_or("-".to_string(), |t| t.to_string());
    let good = ping.all_answered()
        && ping.ttls.iter().all(|t| *t == s.expect_ttl)
        && vnis == vec![s.expect_vni];
    let line = format!(
        "{:<6} {:<6} {:<16} {:<8} {:<10} {:<22} {}",
        s.from,
        s.to,
        to_s,
        format!("{}/{}", ping.received, ping.transmitted),
        ttl,
        format!("{vnis:?}"),
        if good {
            "ok".to_string()
        } else {
            format!("FAIL (want ttl {} vni {})", s.expect_ttl, s.expect_vni)
        }
    );
    Ok((line, good))
}
