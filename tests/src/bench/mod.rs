//! Benchmarks: this project's eBPF datapath against the namespace datapath Neutron DVR builds,
//! and against the machine's upper bound (two namespaces joined by one veth pair).
//!
//! `cargo xtask bench` runs `dvr-bench` (`src/bin/dvr-bench.rs`), which uses this module:
//!
//! - [`ebpf`]: the cloud of the benchmark built with the test bed's [`crate::Topology`] (two
//!   compute hosts, a `dvr_snat` host, the external network, router `r1` on subnets `a` and
//!   `b`, VMs with and without floating IPs), one `dvr-agent` per host.
//! - [`baseline`]: the same cloud built the way Neutron DVR builds it, with no agent and no
//!   BPF: `qrouter`, `fip` and `snat` namespaces, Linux bridges and VXLAN devices, iptables,
//!   policy routing and proxy ARP. See its module docs for the exact layout.
//! - [`veth`]: the upper bound, two namespaces joined by one veth pair.
//! - [`floor`]: per path, the eBPF cloud's topology with a program that only redirects to a
//!   fixed interface (with the tunnel metadata where the path is tunnelled): the fastest any
//!   BPF datapath can be there.
//! - [`check`]: the connectivity checks every datapath passes before it is timed (ping, and
//!   TCP and UDP exchanges that also check the source address the server sees).
//! - [`measure`]: iperf3 TCP throughput (median of several runs), 64-byte-frame UDP packet
//!   rate (iperf3, frames received per second) and request/response latency (sockperf
//!   ping-pong, full round trip, p50/p99).
//! - [`bpf_stats`]: on the eBPF datapath, each BPF program's runs per packet and ns per run
//!   (`kernel.bpf_stats_enabled`) over one more UDP run of each path.
//! - [`control`]: control-plane timings: programming 1,000 to 50,000 floating IPs (and their
//!   ports) into a host, and the latency of one floating IP change.
//! - [`sg_control`]: security groups in the control plane: 10,000 ports in groups of 1,000
//!   members with 20 rules each, compiled and written for one host, and one rule change.
//! - [`sg_datapath`]: the UDP packet rate to a port whose group has 1 rule vs 1,000 rules,
//!   on both datapaths (the namespace one with Neutron's iptables firewall chains).
//! - [`report`]: the table, `results.json` and the SVG chart.
//! - [`scale`]: the cluster control plane at 10,000 to 100,000 ports (`dvr-bench scale`):
//!   agent start, memory, change latency and CPU per change, with etcd and with a file.
//! - [`verifier`]: the verifier instruction count of each BPF program (`dvr-bench verifier`).
//!
//! Every namespace, process and pin is owned by a guard that removes it on drop, also when a
//! step fails; every command runs under a deadline.

pub mod baseline;
pub mod bpf_stats;
pub mod check;
pub mod control;
pub mod ebpf;
pub mod floor;
pub mod measure;
pub mod netns;
pub mod report;
pub mod scale;
pub mod sg_control;
pub mod sg_datapath;
pub mod verifier;
pub mod veth;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};

/// A measured path through the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    /// VM on subnet `a`, compute host 1 -> VM on subnet `b`, compute host 2 (routed on the
    /// source host, VXLAN between hosts).
    EastWest,
    /// The external namespace -> a VM's floating IP (DNAT on the VM's host).
    ExtToFip,
    /// A VM with a floating IP -> the internet host (SNAT to the floating IP on its host).
    FipToExt,
    /// A VM without a floating IP -> the internet host, through the SNAT host.
    Snat,
    /// The upper bound: two namespaces joined by one veth pair.
    VethPair,
}

impl PathKind {
    /// The four router paths, in report order.
    pub const ROUTED: [PathKind; 4] = [
        PathKind::EastWest,
        PathKind::ExtToFip,
        PathKind::FipToExt,
        PathKind::Snat,
    ];

    /// The `path` value in `results.json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PathKind::EastWest => "east-west",
            PathKind::ExtToFip => "ext-to-fip",
            PathKind::FipToExt => "fip-to-ext",
            PathKind::Snat => "snat",
            PathKind::VethPair => "veth-pair",
        }
    }
}

/// Which datapath carried the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Datapath {
    Ebpf,
    Namespace,
    Veth,
    /// [`floor`]: redirects only.
    Floor,
}

impl Datapath {
    /// The `datapath` value in `results.json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Datapath::Ebpf => "ebpf",
            Datapath::Namespace => "namespace",
            Datapath::Veth => "veth",
            Datapath::Floor => "floor",
        }
    }
}

/// Where one path starts and ends in one cloud.
#[derive(Clone, Debug)]
pub struct PathEnds {
    pub path: PathKind,
    /// Namespace of the client (iperf3 -c, sockperf ping-pong, the check's sender).
    pub client_ns: String,
    /// Namespace of the server.
    pub server_ns: String,
    /// The address the client sends to (a fixed IP, a floating IP or the internet host).
    pub dst: Ipv4Addr,
    /// The source address the server must see (the client's fixed IP, its floating IP, the
    /// router's external address, ...).
    pub seen_src: Ipv4Addr,
    /// The address the servers bind to: `0.0.0.0`, or the destination itself where the server
    /// namespace has several addresses (the external namespace: a UDP reply from `0.0.0.0`
    /// would leave from the address nearest the client, 10.5.0.1, and miss the NAT state of a
    /// flow sent to 198.51.100.10).
    pub listen: Ipv4Addr,
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub tcp_runs: u32,
    pub tcp_seconds: u32,
    pub udp_runs: u32,
    pub udp_seconds: u32,
    pub latency_seconds: u32,
    /// Floating IP counts for the control-plane timing.
    pub fip_counts: &'static [usize],
    /// Floating IP changes timed per datapath (alternately associate and disassociate).
    pub fip_changes: usize,
    /// Security group rule changes timed ([`sg_control`]).
    pub sg_changes: usize,
    /// UDP runs per rule count and datapath ([`sg_datapath`]; `udp_seconds` each).
    pub sg_udp_runs: u32,
}

impl Settings {
    /// The full pass: a few minutes on a 2-core machine.
    pub const FULL: Settings = Settings {
        tcp_runs: 3,
        tcp_seconds: 5,
        udp_runs: 3,
        udp_seconds: 3,
        latency_seconds: 5,
        fip_counts: &[1_000, 10_000, 50_000],
        fip_changes: 40,
        sg_changes: 200,
        sg_udp_runs: 5,
    };

    /// `--quick`: one short pass of everything but 50,000 FIPs.
    pub const QUICK: Settings = Settings {
        tcp_runs: 2,
        tcp_seconds: 2,
        udp_runs: 1,
        udp_seconds: 2,
        latency_seconds: 2,
        fip_counts: &[1_000, 10_000],
        fip_changes: 10,
        sg_changes: 50,
        sg_udp_runs: 2,
    };
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag that [`bail_if_interrupted`] turns into an error between steps,
/// so the guards of the running step tear everything down instead of the process dying with
/// namespaces, agents and pins left behind.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Fails once SIGINT or SIGTERM has arrived.
pub fn bail_if_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with an error) when interrupted.
pub fn sleep_interruptible(d: Duration) -> Result<()> {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        bail_if_interrupted()?;
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    bail_if_interrupted()
}

/// Removes `dvrb-<pid>-*` entries of `dir` whose process is gone: pin directories and temp
/// dirs of a run that was killed before its guards ran. Only names of this shape.
pub fn reap_stale_dirs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("dvrb-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("dvr-bench: removing stale {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The `p`th percentile (0..=100) of a non-empty list, nearest rank.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }
}
