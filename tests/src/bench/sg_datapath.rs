//! Packet rate through security groups: 64-byte UDP frames east-west (a VM on `c1`, subnet
//! a -> a VM on `c2`, subnet b, [`super::measure::udp_rate`]) to a receiving port whose one
//! security group has 1 rule or 1,000 rules, and, for reference, with no groups at all.
//!
//! The receiving port's group ([`recv_rules`], all ingress, IPv4):
//! - 1 rule: any protocol from the sender's subnet (192.168.1.0/24). It admits the measured
//!   flow, iperf3's TCP control connection and the connectivity checks.
//! - 1,000 rules: that rule, 499 udp rules with distinct two-port ranges (4702-4703 ...
//!   5698-5699) from the sender's subnet, one of which (5200-5201) admits the measured flow
//!   (iperf3's port 5201: in the eBPF datapath the longest match of the rule trie), and 500
//!   tcp rules, each one port from its own `/24` of 10.0.0.0/8.
//!
//! The sending port has no `security_groups` (not filtered), so only the receiver's check
//! differs between the variants. The variants are measured interleaved (no groups, 1 rule,
//! 1,000 rules, then again), each run a fresh iperf3 flow, and the figure of a variant is the
//! median of its runs.
//!
//! - **eBPF**: a cloud of two compute hosts built with the test bed's [`Topology`] and one
//!   agent each; a variant is a state file with the group (`Cloud::write_raw_state`), and it
//!   is measured once `c2`'s pinned `DVR_SG_REMOTE` and `DVR_SG_RULES` hold exactly what the
//!   state compiles to (compiled here with the agent's library) and the receiving tap's port
//!   entry carries the policy. Checked per run: `drop_sg_ingress` on `c2` did not move (the
//!   measured flow was admitted, not partly dropped). Ingress rules are checked in the tap's
//!   TCX egress program `dvr_tap_out`, on every packet (the original direction is re-checked
//!   per packet, so the rule lookups are paid by every datagram, not only the first). With
//!   the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`, while this part runs) each
//!   run also gives that program's nanoseconds per packet ([`SgRate::prog_ns`]): the cost
//!   the rules add, without the noise of a packet rate on a shared 2-core machine.
//! - **namespace**: the baseline cloud ([`NeutronDvr`]) with what Neutron's iptables firewall
//!   (the `iptables_hybrid` driver's chains, see [`neutron_filter`]) programs for the
//!   receiving port on `c2`: `bridge-nf-call-iptables=1` in the host namespace (the tap is on
//!   a Linux bridge, as the hybrid driver's `qbr`), conntrack zones in `raw`, and in `filter`
//!   the per-port chain `neutron-openvswi-i<port>`: `RELATED,ESTABLISHED -j RETURN` first,
//!   DHCP, the rules (the measured flow's first, any-protocol rule last: the worst place for
//!   a new connection), `INVALID -j DROP`, fallback `DROP`; plus its egress chains. No
//!   ipset: the rules name prefixes, not remote groups. "No groups" is the baseline as the
//!   main table measures it (`bridge-nf-call-iptables=0`). As in Neutron, established
//!   traffic returns at the chain's first rule, so the rule count only costs the first
//!   packet of each connection there; checked per run: that first rule counted the flow.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use dvr_common::port::PORT_FLAG_SG;
use dvr_userspace::{compile, maps::HostMaps, model};
use serde_json::{Value, json};

use super::baseline::{NeutronDvr, Spec, iptables_restore};
use super::check::check_path;
use super::measure::udp_rate;
use super::{Datapath, PathEnds, PathKind, bail_if_interrupted, median};
use crate::cmd::{exec_ok, wait_until};
use crate::{Cloud, Topology, VmSpec};

/// Rule counts measured; 0 stands for a port without security groups.
pub const VARIANTS: [usize; 3] = [0, 1, 1000];
/// The receiving port's group.
const RECV_GROUP: &str = "sgb-recv-0000-4000-8000-000000000001";
/// iperf3's port, which the 1,000-rule group admits by a udp range.
const MEASURED_PORT: u16 = super::measure::IPERF_PORT;

/// The UDP rate of one variant on one datapath.
#[derive(Clone, Debug)]
pub struct SgRate {
    pub datapath: Datapath,
    /// 0: no security groups.
    pub rules: usize,
    /// kpps received per run, or why not measured.
    pub result: Result<Vec<f64>, String>,
    /// eBPF: nanoseconds per run of the receiving tap's `dvr_tap_out` (where ingress rules
    /// are checked), per UDP run, from the kernel's BPF run-time statistics.
    pub prog_ns: Vec<f64>,
}

impl SgRate {
    pub fn kpps(&self) -> Option<f64> {
        self.result.as_ref().ok().and_then(|v| median(v))
    }
    pub fn prog_ns(&self) -> Option<f64> {
        self.result
            .as_ref()
            .ok()
            .and_then(|_| median(&self.prog_ns))
    }
}

/// One ingress rule of the receiving group, in a form both datapaths are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `None`: any protocol.
    pub proto: Option<&'static str>,
    pub ports: Option<(u16, u16)>,
    pub remote: String,
}

/// The receiving group's `n` rules (see the module docs; none for 0); `client_subnet` is the
/// sender's subnet. The any-protocol rule is first.
pub fn recv_rules(n: usize, client_subnet: &str) -> Vec<Rule> {
    if n == 0 {
        return Vec::new();
    }
    let mut v = vec![Rule {
        proto: None,
        ports: None,
        remote: client_subnet.to_string(),
    }];
    if n <= 1 {
        return v;
    }
    for k in 1..n.div_ceil(2) {
        let lo = 4700 + 2 * k as u16;
        v.push(Rule {
            proto: Some("udp"),
            ports: Some((lo, lo + 1)),
            remote: client_subnet.to_string(),
        });
    }
    for k in n.div_ceil(2)..n {
        v.push(Rule {
            proto: Some("tcp"),
            ports: Some((10_000 + k as u16, 10_000 + k as u16)),
            remote: format!("10.{}.{}.0/24", k >> 8, k & 255),
        });
    }
    v
}

fn rule_json(i: usize, r: &Rule) -> Value {
    let mut v = json!({
        "id": format!("sgb-rule-{i:05}"),
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": r.proto,
        "remote_ip_prefix": r.remote,
    });
    if let Some((lo, hi)) = r.ports {
        v["port_range_min"] = json!(lo);
        v["port_range_max"] = json!(hi);
    }
    v
}

/// `base` (a state as JSON) with the receiving port `port_id` in a group of `rules` rules
/// (none: unchanged, the port without security groups).
pub fn state_with_group(base: &Value, port_id: &str, rules: &[Rule]) -> Result<Value> {
    let mut v = base.clone();
    if rules.is_empty() {
        return Ok(v);
    }
    let port = v["ports"]
        .as_array_mut()
        .and_then(|ps| ps.iter_mut().find(|p| p["id"] == port_id))
        .ok_or_else(|| anyhow!("no port {port_id} in the state"))?;
    port["security_groups"] = json!([RECV_GROUP]);
    v["security_groups"] = json!([{
        "id": RECV_GROUP,
        "name": "bench-receiver",
        "stateful": true,
        "security_group_rules": rules.iter().enumerate().map(|(i, r)| rule_json(i, r)).collect::<Vec<_>>(),
    }]);
    Ok(v)
}

/// How one datapath puts a variant in place and checks a run.
trait Variants {
    /// Puts the variant of `rules` rules in place and checks it is.
    fn apply(&mut self, rules: usize) -> Result<()>;
    /// Just before a measured run.
    fn start(&mut self) -> Result<()>;
    /// Just after: checks the run; the program's cost per packet where known.
    fn finish(&mut self, rules: usize) -> Result<Option<f64>>;
}

/// Measures every variant on one datapath, interleaved (see the module docs).
fn interleaved(
    datapath: Datapath,
    ends: &PathEnds,
    runs: u32,
    seconds: u32,
    dir: &Path,
    v: &mut dyn Variants,
) -> Vec<SgRate> {
    let mut out: Vec<SgRate> = VARIANTS
        .iter()
        .map(|&rules| SgRate {
            datapath,
            rules,
            result: Ok(Vec::new()),
            prog_ns: Vec::new(),
        })
        .collect();
    for run in 0..runs {
        for rate in out.iter_mut() {
            if bail_if_interrupted().is_err() {
                return out;
            }
            if rate.result.is_err() {
                continue;
            }
            let r = (|| {
                v.apply(rate.rules)?;
                if run == 0 {
                    check_path(ends).context("connectivity check")?;
                }
                v.start()?;
                let kpps = udp_rate(ends, 1, seconds, dir)?;
                let ns = v.finish(rate.rules)?;
                Ok::<_, anyhow::Error>((kpps, ns))
            })();
            match r {
                Ok((kpps, ns)) => {
                    let k = kpps.first().copied().unwrap_or_default();
                    let cost = ns.map_or(String::new(), |ns| {
                        format!(", dvr_tap_out {ns:.0} ns/packet")
                    });
                    println!(
                        "  {:<10} {:>5} rules  run {}: {k:.1} kpps{cost}",
                        datapath.as_str(),
                        rate.rules,
                        run + 1,
                    );
                    if let Ok(samples) = rate.result.as_mut() {
                        samples.extend(kpps);
                    }
                    rate.prog_ns.extend(ns);
                }
                Err(e) => {
                    println!(
                        "  {:<10} {:>5} rules  FAILED: {e:#}",
                        datapath.as_str(),
                        rate.rules
                    );
                    rate.result = Err(format!("{e:#}"));
                }
            }
        }
    }
    out
}

/// The eBPF cloud: two compute hosts, router r1 on subnets a and b, v1 on c1 (a), v2 on c2
/// (b).
fn ebpf_cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("c1").host("c2");
    t.network("a", 101, "192.168.1.0/24")
        .network("b", 102, "192.168.2.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "c1"))
        .vm(VmSpec::new("v2", "b", "c2"));
    let mut cloud = t.build().context("building the eBPF cloud")?;
    cloud.dump_logs_on_drop = false;
    Ok(cloud)
}

/// Run time and run count of every loaded program named `name`, by program id.
fn prog_stats(name: &str) -> Result<BTreeMap<u32, (u64, u64)>> {
    let mut m = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let p = p.context("listing BPF programs")?;
        if p.name_as_str() == Some(name) {
            let ns = u64::try_from(p.run_time().as_nanos())?;
            m.insert(p.id(), (ns, p.run_count()));
        }
    }
    Ok(m)
}

/// The eBPF side: state files for the agents, c2's maps and counters, the program's cost.
struct Ebpf<'c> {
    cloud: &'c Cloud,
    base: Value,
    port_id: String,
    subnet: String,
    host: String,
    ifindex: u32,
    maps: HostMaps,
    drops_before: u64,
    stats_before: BTreeMap<u32, (u64, u64)>,
    /// Keeps the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`) while it lives.
    stats: Option<std::os::fd::OwnedFd>,
}

impl Ebpf<'_> {
    fn drops(&self) -> Result<u64> {
        self.cloud.stat("c2", "drop_sg_ingress")
    }
}

impl Variants for Ebpf<'_> {
    fn apply(&mut self, rules: usize) -> Result<()> {
        let v = state_with_group(&self.base, &self.port_id, &recv_rules(rules, &self.subnet))?;
        // The entries the agent must write, compiled here with its library.
        let st = model::State::from_json(&v.to_string()).context("variant state rejected")?;
        let ifindex = self.ifindex;
        let want =
            compile::compile(&st, &self.host, None, &|_| Some(ifindex)).context("compile")?;
        let want_port = want
            .entries
            .local_ports
            .get(&ifindex)
            .copied()
            .ok_or_else(|| anyhow!("the compiled state has no port entry for v2's tap"))?;
        ensure!(
            (want_port.flags & PORT_FLAG_SG != 0) == (rules > 0),
            "v2's compiled port entry has flags {:#x} for {rules} rules",
            want_port.flags
        );
        self.cloud.write_raw_state(&v)?;
        let maps = &self.maps;
        wait_until(
            &format!("c2's agent to apply the {rules}-rule group"),
            Duration::from_secs(20),
            |why| {
                let port = maps.local_ports.get(&ifindex)?;
                let remote = maps.sg_remote.read()?;
                let rules_now = maps.sg_rules.read()?;
                *why = format!(
                    "port entry {port:?}, {} of {} DVR_SG_REMOTE and {} of {} DVR_SG_RULES entries",
                    remote.len(),
                    want.entries.sg_remote.len(),
                    rules_now.len(),
                    want.entries.sg_rules.len()
                );
                Ok((port == Some(want_port)
                    && remote == want.entries.sg_remote
                    && rules_now == want.entries.sg_rules)
                    .then_some(()))
            },
        )
    }

    fn start(&mut self) -> Result<()> {
        self.drops_before = self.drops()?;
        if self.stats.is_some() {
            self.stats_before = prog_stats("dvr_tap_out")?;
        }
        Ok(())
    }

    fn finish(&mut self, rules: usize) -> Result<Option<f64>> {
        let dropped = self.drops()?.saturating_sub(self.drops_before);
        ensure!(
            dropped == 0,
            "c2 counted {dropped} drop_sg_ingress during the {rules}-rule run: the measured \
             flow was not (only) admitted"
        );
        if self.stats.is_none() {
            return Ok(None);
        }
        // The receiving tap's program is the one that ran the most during the flood (the
        // sender's tap only sees iperf3's few replies).
        let busiest = prog_stats("dvr_tap_out")?
            .into_iter()
            .filter_map(|(id, (ns, n))| {
                let (ns0, n0) = self.stats_before.get(&id).copied().unwrap_or_default();
                Some((n.checked_sub(n0)?, ns.checked_sub(ns0)?))
            })
            .max();
        Ok(busiest
            .filter(|(n, _)| *n > 0)
            .map(|(n, ns)| ns as f64 / n as f64))
    }
}

/// The eBPF datapath's rates (see the module docs).
pub fn ebpf(runs: u32, seconds: u32, dir: &Path) -> Result<Vec<SgRate>> {
    let cloud = ebpf_cloud()?;
    let ends = PathEnds {
        path: PathKind::EastWest,
        client_ns: cloud.vm("v1")?.ns.clone(),
        server_ns: cloud.vm("v2")?.ns.clone(),
        dst: cloud.ip("v2")?,
        seen_src: cloud.ip("v1")?,
        listen: Ipv4Addr::UNSPECIFIED,
    };
    let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            println!("  BPF run-time statistics unavailable ({e}); rates only");
            None
        }
    };
    let mut v = Ebpf {
        cloud: &cloud,
        base: cloud.state().to_value()?,
        port_id: cloud.vm("v2")?.port_id.clone(),
        subnet: cloud.network("a")?.cidr.to_string(),
        host: cloud.host("c2")?.agent_name.clone(),
        ifindex: u32::try_from(cloud.tap_ifindex("v2")?)?,
        maps: HostMaps::open(&cloud.pin_dir("c2")?).context("opening c2's pinned maps")?,
        drops_before: 0,
        stats_before: BTreeMap::new(),
        stats,
    };
    let out = interleaved(Datapath::Ebpf, &ends, runs, seconds, dir, &mut v);
    drop(v);
    if out.iter().any(|r| r.result.is_err()) {
        println!("{}", super::ebpf::agent_logs(&cloud));
    }
    Ok(out)
}

/// The namespace side: the firewall of the receiving port in c2's host namespace.
struct Namespace {
    host_ns: String,
    tap: String,
    uplink: String,
    ip: Ipv4Addr,
    mac: String,
    subnet: String,
    file: std::path::PathBuf,
}

impl Variants for Namespace {
    fn apply(&mut self, rules: usize) -> Result<()> {
        let text = neutron_filter(
            &self.tap,
            &self.uplink,
            self.ip,
            &self.mac,
            &recv_rules(rules, &self.subnet),
        );
        fs::write(&self.file, text)?;
        iptables_restore(&self.host_ns, &self.file, false)?;
        exec_ok(
            &self.host_ns,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.bridge.bridge-nf-call-iptables={}", u8::from(rules > 0)),
            ],
        )?;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, rules: usize) -> Result<Option<f64>> {
        if rules == 0 {
            return Ok(None);
        }
        let chain = format!("neutron-openvswi-i{}", &self.tap[3..]);
        let out = exec_ok(&self.host_ns, &["iptables-save", "-c", "-t", "filter"])?;
        let save = String::from_utf8_lossy(&out.stdout);
        let packets = established_packets(&save, &chain)
            .ok_or_else(|| anyhow!("no RELATED,ESTABLISHED rule in {chain}:\n{save}"))?;
        ensure!(
            packets > 1000,
            "{chain}'s RELATED,ESTABLISHED rule counted {packets} packets: the firewall did \
             not see the flow (bridge-nf-call-iptables?)"
        );
        Ok(None)
    }
}

/// The namespace datapath's rates (see the module docs).
pub fn namespace(runs: u32, seconds: u32, dir: &Path) -> Result<Vec<SgRate>> {
    let nd = NeutronDvr::build(Spec::bench()?).context("building the namespace cloud")?;
    let ends = nd
        .paths()?
        .into_iter()
        .find(|p| p.path == PathKind::EastWest)
        .ok_or_else(|| anyhow!("no east-west path"))?;
    let vm = |n: &str| nd.spec.vms.iter().find(|v| v.name == n).cloned();
    let net = |n: &str| nd.spec.nets.iter().find(|x| x.name == n).cloned();
    let v1 = vm("v1").ok_or_else(|| anyhow!("no VM v1"))?;
    let v2 = vm("v2").ok_or_else(|| anyhow!("no VM v2"))?;
    let subnet = net(&v1.net)
        .ok_or_else(|| anyhow!("no network {}", v1.net))?
        .cidr
        .to_string();
    let vni = net(&v2.net)
        .ok_or_else(|| anyhow!("no network {}", v2.net))?
        .vni;
    let host_ns = nd
        .hosts
        .iter()
        .find(|h| h.spec.name == v2.host)
        .map(|h| h.ns.clone())
        .ok_or_else(|| anyhow!("no host {}", v2.host))?;
    let mut v = Namespace {
        host_ns,
        tap: format!("tap{}", v2.name),
        uplink: format!("vx-{vni}"),
        ip: v2.ip,
        mac: v2.mac.clone(),
        subnet,
        file: nd.temp_dir().join("sg-filter.rules"),
    };
    Ok(interleaved(
        Datapath::Namespace,
        &ends,
        runs,
        seconds,
        dir,
        &mut v,
    ))
}

/// The packet counter of the `RELATED,ESTABLISHED` rule of `chain` in `iptables-save -c`
/// output (`[packets:bytes] -A chain ...`).
fn established_packets(save: &str, chain: &str) -> Option<u64> {
    let needle = format!("-A {chain} ");
    save.lines()
        .find(|l| l.contains(&needle) && l.contains("RELATED,ESTABLISHED"))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(':').next())
        .and_then(|n| n.parse().ok())
}

/// What Neutron's `iptables_hybrid` firewall driver writes for one port (tap `tap`, address
/// `ip`, MAC `mac`, ingress `rules`) on a host whose tenant bridge is fed by `uplink`, as one
/// `iptables-restore` input for the `raw` and `filter` tables. No rules: empty tables (the
/// port without security groups). The ingress rules come in reverse order, so the one
/// admitting anything from the sender's subnet is last.
pub fn neutron_filter(tap: &str, uplink: &str, ip: Ipv4Addr, mac: &str, rules: &[Rule]) -> String {
    let mut s = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if rules.is_empty() {
        s.push_str("COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        return s;
    }
    let p = &tap[3..];
    let (i, o, sp) = (
        format!("neutron-openvswi-i{p}"),
        format!("neutron-openvswi-o{p}"),
        format!("neutron-openvswi-s{p}"),
    );
    // Conntrack zones: one per network, for the port and the bridge's other side.
    let _ = write!(
        s,
        ":neutron-openvswi-PREROUTING - [0:0]\n\
         -A PREROUTING -j neutron-openvswi-PREROUTING\n\
         -A neutron-openvswi-PREROUTING -m physdev --physdev-in {uplink} -j CT --zone 4097\n\
         -A neutron-openvswi-PREROUTING -m physdev --physdev-in {tap} -j CT --zone 4097\n\
         COMMIT\n"
    );
    let _ = write!(
        s,
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :neutron-filter-top - [0:0]\n:neutron-openvswi-FORWARD - [0:0]\n\
         :neutron-openvswi-INPUT - [0:0]\n:neutron-openvswi-OUTPUT - [0:0]\n\
         :neutron-openvswi-local - [0:0]\n:neutron-openvswi-sg-chain - [0:0]\n\
         :neutron-openvswi-sg-fallback - [0:0]\n:{i} - [0:0]\n:{o} - [0:0]\n:{sp} - [0:0]\n\
         -A INPUT -j neutron-openvswi-INPUT\n\
         -A FORWARD -j neutron-filter-top\n\
         -A FORWARD -j neutron-openvswi-FORWARD\n\
         -A OUTPUT -j neutron-filter-top\n\
         -A OUTPUT -j neutron-openvswi-OUTPUT\n\
         -A neutron-filter-top -j neutron-openvswi-local\n\
         -A neutron-openvswi-FORWARD -m physdev --physdev-out {tap} --physdev-is-bridged -j neutron-openvswi-sg-chain\n\
         -A neutron-openvswi-FORWARD -m physdev --physdev-in {tap} --physdev-is-bridged -j neutron-openvswi-sg-chain\n\
         -A neutron-openvswi-INPUT -m physdev --physdev-in {tap} --physdev-is-bridged -j {o}\n\
         -A neutron-openvswi-sg-chain -m physdev --physdev-out {tap} --physdev-is-bridged -j {i}\n\
         -A neutron-openvswi-sg-chain -m physdev --physdev-in {tap} --physdev-is-bridged -j {o}\n\
         -A neutron-openvswi-sg-chain -j ACCEPT\n\
         -A neutron-openvswi-sg-fallback -j DROP\n\
         -A {i} -m state --state RELATED,ESTABLISHED -j RETURN\n\
         -A {i} -d {ip}/32 -p udp -m udp --sport 67 --dport 68 -j RETURN\n\
         -A {i} -d 255.255.255.255/32 -p udp -m udp --sport 67 --dport 68 -j RETURN\n"
    );
    for r in rules.iter().rev() {
        let mut line = format!("-A {i} -s {}", r.remote);
        if let Some(proto) = r.proto {
            let _ = write!(line, " -p {proto} -m {proto}");
            if let Some((lo, hi)) = r.ports {
                if lo == hi {
                    let _ = write!(line, " --dport {lo}");
                } else {
                    let _ = write!(line, " --dport {lo}:{hi}");
                }
            }
        }
        let _ = writeln!(s, "{line} -j RETURN");
    }
    let _ = write!(
        s,
        "-A {i} -m state --state INVALID -j DROP\n\
         -A {i} -j neutron-openvswi-sg-fallback\n\
         -A {o} -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN\n\
         -A {o} -j {sp}\n\
         -A {o} -p udp -m udp --sport 68 --dport 67 -j RETURN\n\
         -A {o} -p udp -m udp --sport 67 --dport 68 -j DROP\n\
         -A {o} -m state --state RELATED,ESTABLISHED -j RETURN\n\
         -A {o} -m state --state INVALID -j DROP\n\
         -A {o} -j neutron-openvswi-sg-fallback\n\
         -A {sp} -s {ip}/32 -m mac --mac-source {mac} -j RETURN\n\
         -A {sp} -j DROP\n\
         COMMIT\n"
    );
    s
}

/// The measured port is in the 1,000-rule group's udp ranges.
const _: () = assert!(MEASURED_PORT >= 4702 && MEASURED_PORT <= 5699);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_chains() {
        let one = recv_rules(1, "192.168.1.0/24");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].proto, None);
        let many = recv_rules(1000, "192.168.1.0/24");
        assert_eq!(many.len(), 1000);
        // Distinct, and exactly one udp range holds iperf3's port.
        let mut keys: Vec<String> = many.iter().map(|r| format!("{r:?}")).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 1000);
        let admitting: Vec<&Rule> = many
            .iter()
            .filter(|r| {
                r.proto == Some("udp")
                    && r.ports
                        .is_some_and(|(lo, hi)| (lo..=hi).contains(&MEASURED_PORT))
            })
            .collect();
        assert_eq!(admitting.len(), 1);
        let f = neutron_filter(
            "tapv2",
            "vx-102",
            Ipv4Addr::new(192, 168, 2, 10),
            "fa:16:3e:02:01:0a",
            &many,
        );
        assert_eq!(f.matches("-A neutron-openvswi-iv2 -s ").count(), 1000);
        assert!(f.contains("-s 192.168.1.0/24 -p udp -m udp --dport 5200:5201 -j RETURN\n"));
        assert!(f.contains("-s 10.3.231.0/24 -p tcp -m tcp --dport 10999 -j RETURN\n"));
        // The any-protocol rule is the chain's last rule.
        let last = f
            .lines()
            .rfind(|l| l.starts_with("-A neutron-openvswi-iv2 -s "));
        assert_eq!(
            last,
            Some("-A neutron-openvswi-iv2 -s 192.168.1.0/24 -j RETURN")
        );
        assert_eq!(
            established_packets(
                "[123:456] -A neutron-openvswi-iv2 -m state --state RELATED,ESTABLISHED -j RETURN",
                "neutron-openvswi-iv2"
            ),
            Some(123)
        );
        let v = state_with_group(&json!({"ports": [{"id": "p1"}, {"id": "p2"}]}), "p2", &one)
            .unwrap_or_default();
        assert_eq!(v["ports"][1]["security_groups"][0], RECV_GROUP);
        assert!(v["ports"][0].get("security_groups").is_none());
        assert_eq!(
            v["security_groups"][0]["security_group_rules"][0]["remote_ip_prefix"],
            "192.168.1.0/24"
        );
    }
}
