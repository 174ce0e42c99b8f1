//! The cluster control plane at cloud scale (issue 17): `dvr-bench scale`, run by
//! `cargo xtask bench --scale`.
//!
//! Per size (ports; hosts = ports / 100, networks = ports / 50, as the 100,000
//! ports on 1,000 hosts and 2,000 networks), a generated cloud ([`generate`]) is added to a
//! one-host test bed: the real host `h1` (an agent, one VM) holds, in the state, about 100
//! ports of the generated cloud too (their taps do not exist: the agent compiles them and
//! waits for the taps, as for VMs still booting), and every other host exists only in the
//! state. Each generated network has a distributed router interface, a centralized SNAT port
//! and 47 VM ports on 5 hosts; a router serves 10 networks and is a tenant with one security
//! group (egress, ingress from its own members, ssh), which all its VM ports are in; every
//! 10th VM port has a floating IP.
//!
//! Measured, with etcd and then with a state file:
//! - `dvrctl apply` of the whole cloud into an empty etcd (etcd mode);
//! - agent start to its "ready" log line, and its resident memory then (VmRSS, and the peak
//!   VmHWM);
//! - a relevant change: a VM port added (etcd: one put; file: the file rewritten) on a
//!   network where `h1` has ports, until its FDB entry is in `h1`'s pinned map (p50/p99
//!   over the runs); with etcd also a floating IP associated to a port of a router of `h1`
//!   (its `FIP_REMOTE` entry);
//! - the agent's CPU time per irrelevant change: VM ports added on a network of another
//!   tenant, then one relevant change as a barrier; the agent's threads' CPU time
//!   (`/proc/PID/task/*/schedstat`, ns) over the batch, less the barrier's (the mean CPU of
//!   a relevant change), divided by the batch size.
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::etcd::EtcdWriter;
use anyhow::{Context, Result, anyhow, bail, ensure};
use dvr_common::l2::FdbKey;
use dvr_userspace::maps::HostMaps;
use serde_json::{Value, json};

use crate::cloud::{Cloud, Topology, VmSpec};

/// The VNI of generated network `n`.
const VNI_BASE: u32 = 20_000;
/// VM ports per generated network.
const VMS_PER_NET: usize = 47;
/// Networks per generated router (tenant).
const NETS_PER_ROUTER: usize = 10;
/// Hosts a network's VM ports are spread over.
const HOSTS_PER_NET: usize = 5;
/// Generated networks holding ports of the real host `h1`: networks 0..LOCAL_NETS, one
/// router's.
const LOCAL_NETS: usize = 10;
/// How long the agent gets to become ready, and a change to land.
const READY_DEADLINE: Duration = Duration::from_secs(300);
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// The shape of one generated cloud.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub ports: usize,
    pub hosts: usize,
    pub networks: usize,
}

impl Shape {
    pub fn of(ports: usize) -> Shape {
        Shape {
            ports,
            hosts: (ports / 100).max(HOSTS_PER_NET * 2),
            networks: (ports / 50).max(NETS_PER_ROUTER * 2),
        }
    }
}

/// Figures of one source mode at one size.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ModeFigures {
    pub mode: String,
    /// `dvrctl apply` of the whole cloud (etcd only), seconds.
    pub apply_s: Option<f64>,
    pub ready_s: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    /// Resources in the cloud and in h1's view (from the agent's "ready" line).
    #[serde(default)]
    pub cloud_resources: usize,
    #[serde(default)]
    pub view_resources: usize,
    pub relevant_p50_ms: f64,
    pub relevant_p99_ms: f64,
    pub relevant_runs: usize,
    pub fip_p50_ms: Option<f64>,
    pub fip_p99_ms: Option<f64>,
    /// Agent CPU per relevant change, and per irrelevant change, milliseconds.
    pub relevant_cpu_ms: f64,
    pub irrelevant_cpu_ms: f64,
    pub irrelevant_runs: usize,
}

/// Figures of one size.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SizeFigures {
    pub ports: usize,
    pub hosts: usize,
    pub networks: usize,
    pub resources: usize,
    pub state_bytes: usize,
    pub modes: Vec<ModeFigures>,
}

/// Generated MAC `n` (its low 24 bits under `fa:16:3e`).
fn mac_bytes(n: usize) -> [u8; 6] {
    let [_, a, b, c] = (n as u32).to_be_bytes();
    [0xfa, 0x16, 0x3e, a, b, c]
}

fn mac(n: usize) -> String {
    dvr_userspace::model::format_mac(&mac_bytes(n))
}

fn host_name(g: usize) -> String {
    format!("g{g}")
}

/// The subnet prefix (first three octets) of generated network `n`.
fn prefix(n: usize) -> String {
    format!("10.{}.{}", 64 + n / 256, n % 256)
}

/// The host of VM port `j` of network `n`: five hosts per network; `me` takes one of the
/// five on the first [`LOCAL_NETS`] networks.
fn vm_host(shape: &Shape, n: usize, j: usize, me: &str) -> String {
    let slot = j % HOSTS_PER_NET;
    if n < LOCAL_NETS && slot == 0 {
        return me.to_string();
    }
    host_name((n * HOSTS_PER_NET + slot) % shape.hosts)
}

/// `base` (the test bed's state) plus a generated cloud of `shape` (module doc), `me`
/// being the real host's name in the state.
pub fn generate(base: &Value, shape: &Shape, me: &str) -> Result<Value> {
    let mut v = base.clone();
    let mut push = |list: &str, item: Value| -> Result<()> {
        if v.get(list).is_none() {
            v[list] = json!([]);
        }
        v[list]
            .as_array_mut()
            .ok_or_else(|| anyhow!("the state's {list} is not a list"))?
            .push(item);
        Ok(())
    };
    for g in 0..shape.hosts {
        let mode = if g.is_multiple_of(10) {
            "dvr_snat"
        } else {
            "dvr"
        };
        push(
            "hosts",
            json!({"name": host_name(g), "agent_mode": mode,
            "tunnel_ip": format!("10.250.{}.{}", g / 250, g % 250 + 1),
            "dvr_mac": format!("fa:16:3f:{:02x}:{:02x}:e1", g / 256, g % 256),
            "external_interface": "eth1"}),
        )?;
    }
    push(
        "networks",
        json!({"id": "gext", "name": "gext", "provider:network_type": "flat",
        "provider:physical_network": "gphys", "provider:segmentation_id": null,
        "router:external": true, "mtu": 1500}),
    )?;
    push(
        "subnets",
        json!({"id": "gext-s", "network_id": "gext", "cidr": "100.64.0.0/10",
        "gateway_ip": "100.64.0.1", "ip_version": 4}),
    )?;
    let routers = shape.networks.div_ceil(NETS_PER_ROUTER);
    let snat_hosts = shape.hosts.div_ceil(10);
    for r in 0..routers {
        let ip = format!("100.64.{}.{}", 1 + r / 250, r % 250 + 1);
        push(
            "routers",
            json!({"id": format!("gr{r}"), "distributed": true,
            "external_gateway_info": {"network_id": "gext", "enable_snat": true,
                "external_fixed_ips": [{"subnet_id": "gext-s", "ip_address": ip}]}}),
        )?;
        push(
            "security_groups",
            json!({"id": format!("gsg{r}"), "stateful": true,
            "security_group_rules": [
                {"id": format!("gsg{r}-out"), "direction": "egress", "ethertype": "IPv4"},
                {"id": format!("gsg{r}-in"), "direction": "ingress", "ethertype": "IPv4",
                 "remote_group_id": format!("gsg{r}")},
                {"id": format!("gsg{r}-ssh"), "direction": "ingress", "ethertype": "IPv4",
                 "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                 "remote_ip_prefix": "0.0.0.0/0"}]}),
        )?;
    }
    let mut m = 0x10_0000usize;
    let mut vm = 0usize;
    for n in 0..shape.networks {
        let (r, p) = (n / NETS_PER_ROUTER, prefix(n));
        let snat_host = host_name((r % snat_hosts) * 10);
        push(
            "networks",
            json!({"id": format!("gn{n}"), "provider:network_type": "vxlan",
            "provider:segmentation_id": VNI_BASE + n as u32, "router:external": false,
            "mtu": 1450}),
        )?;
        push(
            "subnets",
            json!({"id": format!("gs{n}"), "network_id": format!("gn{n}"),
            "cidr": format!("{p}.0/24"), "gateway_ip": format!("{p}.1"), "ip_version": 4}),
        )?;
        m += 1;
        push(
            "ports",
            json!({"id": format!("grif{n}"), "network_id": format!("gn{n}"),
            "mac_address": mac(m), "device_owner": "network:router_interface_distributed",
            "device_id": format!("gr{r}"),
            "fixed_ips": [{"subnet_id": format!("gs{n}"), "ip_address": format!("{p}.1")}]}),
        )?;
        m += 1;
        push(
            "ports",
            json!({"id": format!("gsnat{n}"), "network_id": format!("gn{n}"),
            "mac_address": mac(m), "device_owner": "network:router_centralized_snat",
            "device_id": format!("gr{r}"), "binding:host_id": snat_host,
            "fixed_ips": [{"subnet_id": format!("gs{n}"), "ip_address": format!("{p}.2")}]}),
        )?;
        for j in 0..VMS_PER_NET {
            m += 1;
            let id = format!("gvm{n}-{j}");
            let ip = format!("{p}.{}", 10 + j);
            push(
                "ports",
                json!({"id": id, "network_id": format!("gn{n}"),
                "mac_address": mac(m), "device_owner": "compute:nova",
                "device_id": format!("ginst{n}-{j}"),
                "binding:host_id": vm_host(shape, n, j, me),
                "security_groups": [format!("gsg{r}")],
                "fixed_ips": [{"subnet_id": format!("gs{n}"), "ip_address": ip}]}),
            )?;
            if vm.is_multiple_of(10) {
                let k = vm / 10;
                push(
                    "floatingips",
                    json!({"id": format!("gfip{k}"),
                    "floating_network_id": "gext", "router_id": format!("gr{r}"),
                    "floating_ip_address": format!("100.{}.{}.{}", 65 + k / 62_500, (k / 250) % 250, k % 250 + 1),
                    "port_id": id, "fixed_ip_address": ip}),
                )?;
            }
            vm += 1;
        }
    }
    Ok(v)
}

/// A VM port added on network `n` (bound to a generated host), number `i`, and the FDB key
/// it gives on hosts that serve `n`.
fn probe_port(n: usize, i: usize, shape: &Shape) -> (String, Value, FdbKey) {
    let m = 0xe0_0000 + n * 256 + i;
    let p = prefix(n);
    let id = format!("probe{n}-{i}");
    let port = json!({"id": id, "network_id": format!("gn{n}"), "mac_address": mac(m),
        "device_owner": "compute:nova", "device_id": format!("probe-inst{n}-{i}"),
        "binding:host_id": host_name((n * HOSTS_PER_NET + 1) % shape.hosts),
        "security_groups": [format!("gsg{}", n / NETS_PER_ROUTER)],
        "fixed_ips": [{"subnet_id": format!("gs{n}"), "ip_address": format!("{p}.{}", 100 + i)}]});
    let key = FdbKey {
        vni: VNI_BASE + n as u32,
        mac: mac_bytes(m),
        _pad: [0; 2],
    };
    (id, port, key)
}

/// Wait (polling every 200 µs) until `present` says yes; the time it took.
fn wait_for(
    what: &str,
    deadline: Duration,
    mut present: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if present()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("{what}: not there after {deadline:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The CPU time of every thread of `pid`, nanoseconds.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// VmRSS and VmHWM of `pid`, MiB.
fn rss_mb(pid: u32) -> Result<(f64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    super::percentile(&v, p).unwrap_or(0.0)
}

/// How changes reach the agent.
enum Channel {
    /// Puts through one etcd connection (in the underlay namespace's thread).
    Etcd(EtcdWriter),
    /// The whole state file rewritten, with `state` kept up to date.
    File(Value),
}

impl Channel {
    /// Add (or replace) resource `kind` `value`.
    fn put(&mut self, c: &Cloud, kind: &str, id: &str, value: &Value) -> Result<()> {
        match self {
            Channel::Etcd(w) => w.put(&format!("/dvr/v1/{kind}/{id}"), &value.to_string()),
            Channel::File(state) => {
                let list = state[kind]
                    .as_array_mut()
                    .ok_or_else(|| anyhow!("no list {kind}"))?;
                list.retain(|o| o["id"] != id);
                list.push(value.clone());
                let tmp = c.state_path().with_extension("tmp");
                fs::write(&tmp, serde_json::to_vec(state)?)?;
                fs::rename(&tmp, c.state_path())?;
                Ok(())
            }
        }
    }
}

/// Run the measurements of one mode on a cloud whose agent is not started yet.
fn measure(
    c: &mut Cloud,
    shape: &Shape,
    mut ch: Channel,
    mode: &str,
    runs: usize,
) -> Result<ModeFigures> {
    let mut f = ModeFigures {
        mode: mode.into(),
        ..ModeFigures::default()
    };
    let start = Instant::now();
    c.start_agent("h1")?;
    let pid = c.agent_pid("h1")?;
    wait_for("agent ready", READY_DEADLINE, || {
        Ok(c.agent_log("h1")?.contains("dvr_userspace::agent: ready"))
    })
    .with_context(|| c.agent_log("h1").unwrap_or_default())?;
    f.ready_s = start.elapsed().as_secs_f64();
    let log = c.agent_log("h1")?;
    let figure = |name: &str| -> usize {
        log.lines()
            .find(|l| l.contains("dvr_userspace::agent: ready"))
            .and_then(|l| l.split(&format!(" {name}=")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (f.cloud_resources, f.view_resources) = (figure("resources"), figure("view"));
    (f.rss_mb, f.peak_rss_mb) = rss_mb(pid)?;
    let maps = HostMaps::open(&c.pin_dir("h1")?)?;
    // Relevant: a VM port on network 0..LOCAL_NETS, where h1 has ports.
    let mut lat = Vec::new();
    let cpu0 = cpu_ns(pid)?;
    for i in 0..runs {
        let (id, port, key) = probe_port(i % LOCAL_NETS, i / LOCAL_NETS, shape);
        ch.put(c, "ports", &id, &port)?;
        let t = Instant::now();
        wait_for(&format!("FDB entry of {id} on h1"), CHANGE_DEADLINE, || {
            Ok(maps.fdb.get(&key)?.is_some())
        })?;
        lat.push(t.elapsed());
    }
    let relevant_cpu = (cpu_ns(pid)? - cpu0) as f64 / runs.max(1) as f64;
    f.relevant_cpu_ms = relevant_cpu / 1e6;
    f.relevant_p50_ms = percentile_ms(&lat, 50.0);
    f.relevant_p99_ms = percentile_ms(&lat, 99.0);
    f.relevant_runs = runs;
    // A FIP of a port of h1's router gr0, on another host: FIP_REMOTE on h1 (etcd only:
    // a file rewrite is measured above).
    if let Channel::Etcd(_) = ch {
        let mut fl = Vec::new();
        for i in 0..runs {
            // A VM of network n not on h1 (slot 0 of five is h1's) and without a FIP.
            let (n, k) = (i % LOCAL_NETS, i / LOCAL_NETS);
            let j = 1 + 5 * (k / 4) + k % 4;
            if j >= VMS_PER_NET || (n * VMS_PER_NET + j).is_multiple_of(10) {
                continue;
            }
            let port = format!("gvm{n}-{j}");
            let addr = format!("100.127.{}.{}", i / 250, i % 250 + 1);
            let fip = json!({"id": format!("probe-fip{i}"), "floating_network_id": "gext",
                "router_id": "gr0", "floating_ip_address": addr, "port_id": port});
            let ip: std::net::Ipv4Addr = addr.parse()?;
            let key = u32::from_ne_bytes(ip.octets());
            ch.put(c, "floatingips", &format!("probe-fip{i}"), &fip)?;
            let t = Instant::now();
            wait_for(&format!("FIP {addr} on h1"), CHANGE_DEADLINE, || {
                Ok(maps.fips.get(&key)?.is_some())
            })?;
            fl.push(t.elapsed());
        }
        f.fip_p50_ms = Some(percentile_ms(&fl, 50.0));
        f.fip_p99_ms = Some(percentile_ms(&fl, 99.0));
    }
    // Irrelevant: ports on the last network (another tenant, no port of h1), then a barrier.
    let batch = if mode == "etcd" { 150 } else { 3 };
    let far = shape.networks - 1;
    let cpu0 = cpu_ns(pid)?;
    for i in 0..batch {
        let (id, port, _) = probe_port(far, i, shape);
        ch.put(c, "ports", &id, &port)?;
    }
    let (id, port, key) = probe_port(0, 120, shape);
    ch.put(c, "ports", &id, &port)?;
    wait_for("the barrier's FDB entry on h1", CHANGE_DEADLINE, || {
        Ok(maps.fdb.get(&key)?.is_some())
    })?;
    let spent = (cpu_ns(pid)? - cpu0) as f64 - relevant_cpu;
    f.irrelevant_cpu_ms = (spent / batch as f64 / 1e6).max(0.0);
    f.irrelevant_runs = batch;
    ensure!(
        c.agent_log("h1")?.matches(" WARN ").count() < 50,
        "the agent warned: {}",
        c.agent_log("h1").unwrap_or_default()
    );
    c.stop_agent("h1")?;
    // The next mode starts from a host without pins, as this one did.
    c.uninstall_agent("h1")?;
    Ok(f)
}

/// One size: the cloud in etcd, then in a state file.
pub fn run_size(ports: usize, runs: usize, modes: &[&str]) -> Result<SizeFigures> {
    let shape = Shape::of(ports);
    let mut t = Topology::new();
    t.host("h1");
    t.network("a", 7001, "172.23.71.0/24");
    t.vm(VmSpec::new("v1", "a", "h1"));
    let mut c = t.build_without_agents()?;
    let me = c.host("h1")?.agent_name.clone();
    let big = generate(&serde_json::to_value(c.state())?, &shape, &me)?;
    let text = serde_json::to_vec(&big)?;
    let mut out = SizeFigures {
        ports,
        hosts: shape.hosts,
        networks: shape.networks,
        resources: dvr_userspace::source::KINDS
            .iter()
            .map(|k| big[*k].as_array().map_or(0, Vec::len))
            .sum(),
        state_bytes: text.len(),
        modes: Vec::new(),
    };
    let path = c.temp_dir().join("scale-state.json");
    fs::write(&path, &text)?;
    if modes.contains(&"etcd") {
        c.start_etcd()?;
        let t0 = Instant::now();
        let applied = c.etcd_apply_file(&path)?;
        ensure!(
            applied.status.success(),
            "dvrctl apply: {}",
            crate::cmd::text(&applied)
        );
        let apply_s = t0.elapsed().as_secs_f64();
        c.agents_use_etcd()?;
        let writer = c.etcd_writer()?;
        let mut f = measure(&mut c, &shape, Channel::Etcd(writer), "etcd", runs)?;
        f.apply_s = Some(apply_s);
        out.modes.push(f);
    }
    if modes.contains(&"file") {
        fs::write(c.state_path(), &text)?;
        c.agents_use_file();
        let f = measure(&mut c, &shape, Channel::File(big), "file", runs.min(10))?;
        out.modes.push(f);
    }
    let _ = fs::remove_file(Path::new(&path));
    Ok(out)
}

/// The table printed and put in the README.
pub fn table(sizes: &[SizeFigures]) -> String {
    let mut s = String::from(
        "| ports | hosts | networks | source | view of h1 | apply | ready | RSS (peak) | relevant port p50 / p99 | relevant FIP p50 / p99 | CPU per relevant change | CPU per irrelevant change |\n\
         |---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for z in sizes {
        for m in &z.modes {
            let apply = m.apply_s.map_or("-".into(), |a| format!("{a:.1} s"));
            let fip = match (m.fip_p50_ms, m.fip_p99_ms) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1} ms"),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} of {} | {} | {:.2} s | {:.0} MB ({:.0}) | {:.1} / {:.1} ms | {} | {:.2} ms | {:.3} ms |\n",
                z.ports,
                z.hosts,
                z.networks,
                m.mode,
                m.view_resources,
                m.cloud_resources,
                apply,
                m.ready_s,
                m.rss_mb,
                m.peak_rss_mb,
                m.relevant_p50_ms,
                m.relevant_p99_ms,
                fip,
                m.relevant_cpu_ms,
                m.irrelevant_cpu_ms
            ));
        }
    }
    s
}

/// Four panels (ready, resident memory, relevant change p99, CPU per irrelevant change),
/// one bar per size and source, each with issue 17's target as a dashed line; the two
/// timing panels on a log scale (the file source is two orders of magnitude slower).
pub fn svg(sizes: &[SizeFigures]) -> String {
    type Pick = fn(&ModeFigures) -> f64;
    let panels: [(&str, Pick, f64, bool); 4] = [
        ("agent start to ready, s", |m| m.ready_s, 5.0, false),
        ("resident memory, MB", |m| m.rss_mb, 200.0, false),
        (
            "relevant port change p99, ms (log)",
            |m| m.relevant_p99_ms,
            20.0,
            true,
        ),
        (
            "agent CPU per irrelevant change, ms (log)",
            |m| m.irrelevant_cpu_ms,
            1.0,
            true,
        ),
    ];
    let (pw, ph, top) = (300.0, 220.0, 40.0);
    let width = pw * panels.len() as f64 + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">dvr-agent at cloud scale (one host's agent; hosts = ports/100, networks = ports/50): etcd (blue), state file (orange), target (dashed)</text>\n",
        ph + top + 50.0
    );
    for (p, (title, pick, target, log)) in panels.iter().enumerate() {
        let x0 = 10.0 + p as f64 * pw;
        let bars: Vec<(String, &str, f64)> = sizes
            .iter()
            .flat_map(|z| {
                z.modes
                    .iter()
                    .map(move |m| (format!("{}k", z.ports / 1000), m.mode.as_str(), pick(m)))
            })
            .collect();
        let max = bars.iter().map(|b| b.2).fold(*target, f64::max).max(1e-9);
        let floor = 0.1;
        let height = |v: f64| -> f64 {
            let frac = if *log {
                ((v.max(floor) / floor).log10() / (max / floor).log10()).clamp(0.0, 1.0)
            } else {
                v / max
            };
            frac * (ph - 40.0)
        };
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\">{title}</text>\n",
            x0 + 10.0,
            top
        ));
        let bw = (pw - 40.0) / bars.len().max(1) as f64;
        for (i, (label, mode, v)) in bars.iter().enumerate() {
            let h = height(*v);
            let x = x0 + 20.0 + i as f64 * bw;
            let y = top + ph - h;
            let color = if *mode == "etcd" {
                "#4878cf"
            } else {
                "#e8862a"
            };
            out.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
                bw * 0.8,
                x + bw * 0.4,
                y - 3.0,
                if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") },
                x + bw * 0.4,
                top + ph + 14.0
            ));
        }
        let ty = top + ph - height(*target);
        out.push_str(&format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#c03030\" stroke-dasharray=\"4 3\"/>\n",
            x0 + 15.0,
            x0 + pw - 15.0
        ));
    }
    out.push_str("</svg>\n");
    out
}
