//! Test bed for the DVR agent: multi-host clouds in network namespaces with real traffic.
//!
//! - [`Topology`] describes hosts, networks, routers and VMs; [`Topology::build`] creates them,
//!   writes the Neutron-shaped state file, starts one `dvr-agent` per host and waits until each
//!   agent has attached all its local taps. The resulting [`Cloud`] offers traffic helpers
//!   ([`Cloud::ping`], [`Cloud::arping`], [`Cloud::tcp_transfer`], scapy frames), captures
//!   ([`Capture`]), counters ([`Cloud::stats`]) and state changes ([`Cloud::update_state`],
//!   [`Cloud::add_vm_later`]). Dropping it removes everything it made, also on panic.
//! - [`Topology::external`] adds the external network (upstream router, internet host, `ext0`
//!   per host) and [`Topology::fip`] floating IPs; [`external`] has their helpers
//!   ([`Cloud::associate`], [`Cloud::conntrack`], [`Cloud::fips`], captures on `br-ext`, ...).
//! - [`Topology::snat_host`] and [`Topology::no_external_host`] add the `dvr_snat` network node
//!   (with centralized SNAT ports for every router) and `dvr_no_external` hosts;
//!   [`Topology::vip`] unbound VIP ports; [`snat`] has their helpers ([`Cloud::show_snat`],
//!   [`Cloud::vips`], ...) and [`keepalived`] runs keepalived in VMs to move a VIP.
//! - [`lifecycle`]: killing and restarting agents ([`Cloud::kill_agent`],
//!   [`Cloud::restart_agent`]), their `applied` log lines, pins and TCX links, and background
//!   traffic that runs across a restart ([`Cloud::ping_bg`], [`Cloud::start_paced_transfer`]).
//! - [`etcd`]: etcd in the underlay namespace, agents on `--etcd`, `dvrctl apply|hosts`,
//!   single-key writes from the underlay namespace (`EtcdWriter`).
//! - [`neutron`]: a real neutron-server (Neutron 29 and this repository's ML2 driver) on the
//!   cloud's etcd, its API ([`NeutronApi`]), agents that register themselves, and VMs
//!   plugged from the ports Neutron bound ([`Cloud::plug_port`]).
//! - [`ha`]: HA routers over two `dvr_snat` hosts ([`Topology::ha_hosts`]), the election
//!   (`dvrctl ha|failover`), the fences ([`Cloud::fence`], [`FenceSampler`]) and failures to
//!   inject (links down, cut from etcd).
//! - [`inspect`]: `dvrctl trace` ([`Cloud::trace`]), `dvrctl monitor` ([`Cloud::spawn_monitor`])
//!   and the agents' Prometheus endpoint ([`Cloud::scrape_metrics`]).
//! - [`sg`]: security groups ([`Topology::security_group`], [`VmSpec::security_groups`],
//!   [`VmSpec::admin_state_up`]), changes of a running cloud awaited until every agent
//!   enforces them ([`Cloud::apply_state`]), and probes that tell answered, refused and
//!   dropped traffic apart ([`Cloud::probe`], [`Cloud::sg_server`], [`Cloud::start_ticker`]).
//! - [`Counters`] snapshots counters for deltas.
//! - [`packet`]: a builder for raw frames (ARP, IPv4 with ICMP/TCP/UDP, IPv6 with ICMPv6 and
//!   UDP, valid checksums), and [`fixture`] the harness that runs them through the programs
//!   (BPF_PROG_TEST_RUN), for the packet fixture tables (`tests/fixtures.rs`,
//!   `tests/fixtures6.rs`).
//! - [`pins`]: pinned BPF maps made by hand in a bpffs directory removed on drop.
//! - [`pmtu`]: path MTU helpers: a namespace's cached path MTU and its flush, a route's
//!   advertised MSS, UDP datagrams with DF clear checked byte for byte at the receiver, and
//!   the ICMP errors `ping` prints.
//! - [`require_preconditions`] makes a test that cannot run here fail with a clear message:
//!   these tests never pass by skipping.
//!
//! Names are unique per process (`dvrt-<pid>-<n>-<role>` namespaces, `h1-<pid>-<n>` agent host
//! names), so test binaries may run side by side; within one binary, run with
//! `--test-threads=1` (two cores, and each test runs several agents).

pub mod bench;
pub mod capture;
pub mod cloud;
pub mod cmd;
pub mod counters;
pub mod etcd;
pub mod external;
pub mod external6;
pub mod fixture;
pub mod ha;
pub mod inspect;
pub mod ipv6;
pub mod keepalived;
pub mod lifecycle;
pub mod neutron;
pub mod packet;
pub mod pins;
pub mod pmtu;
pub mod sg;
pub mod snat;
pub mod state;

use std::path::Path;

use anyhow::{Result, bail};

pub use capture::{Arp, Capture, Packet};
pub use cloud::{
    AgentPort, AgentRun, AgentSource, ArpFrame, ArpingResult, Cidr, Cloud, HostInfo, LateVm,
    NetInfo, PingResult, Topology, TransferReport, UNDERLAY_DEV, UdpFrame, Vm, VmSpec, locate_bins,
    scapy_python,
};
pub use cmd::{exec, exec_ok, wait_until};
pub use counters::{COUNTER_WAIT, Counters, not_sentinel};
pub use etcd::{HostRow, require_etcd_preconditions};
pub use external::{
    Bg, EXT, EXT_GATEWAY, EXT_IFACE, ExternalInfo, FipInfo, HostExt, INTERNET_HOST, UdpReply,
};
pub use ha::{Fence, FenceSample, FenceSampler, HaHolder, PingGaps, ping_gaps, tcp_sources};
pub use inspect::{DropEvent, Metrics, OutputKind, Trace, TraceProbe};
pub use keepalived::{Keepalived, KeepalivedConf};
pub use lifecycle::{AppliedLine, BgPing, PacedReport, PacedTransfer, Tcx};
pub use neutron::{NeutronApi, neutron_venv};
pub use sg::{Applied, Outcome, Proto, SecurityGroup, SecurityGroupRule, Ticker};
pub use snat::{CsnatInfo, HostMode, VipInfo};
pub use state::State;

/// Tools the test bed runs.
pub const REQUIRED_TOOLS: &[&str] = &[
    "ip", "tcpdump", "socat", "arping", "ping", "nsenter", "ss", "sysctl",
];

/// Checks everything the multi-host tests need, collecting every problem: running as root, a
/// bpffs at `/sys/fs/bpf` (mounted here if missing), the tools, python3 with scapy, and (when
/// `with_agent`) the `dvr-agent` and `dvrctl` binaries.
pub fn check_preconditions(with_agent: bool) -> Result<()> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems
            .push("not running as root: network namespaces, TC and bpffs need root".to_string());
    }
    for tool in REQUIRED_TOOLS {
        if cmd::find_in_path(tool).is_none() {
            problems.push(format!("`{tool}` not found in PATH"));
        }
    }
    if problems.is_empty()
        && let Err(e) = ensure_bpffs()
    {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = scapy_python() {
        problems.push(format!("{e:#}"));
    }
    if with_agent && let Err(e) = locate_bins() {
        problems.push(format!("{e:#}"));
    }
    if !problems.is_empty() {
        bail!(
            "this test cannot run here:\n  - {}",
            problems.join("\n  - ")
        );
    }
    reap_stale_namespaces();
    Ok(())
}

/// [`check_preconditions`] with the agent binaries, panicking with the reasons: a test that
/// cannot run must fail, never skip.
pub fn require_preconditions() {
    if let Err(e) = check_preconditions(true) {
        panic!("{e:#}");
    }
}

/// [`check_preconditions`] without the agent binaries (test-bed self tests).
pub fn require_testbed_preconditions() {
    if let Err(e) = check_preconditions(false) {
        panic!("{e:#}");
    }
}

fn bpffs_mounted(at: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&at) && f.get(2) == Some(&"bpf")
            })
        })
        .unwrap_or(false)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there. The mount is left in place: it is shared
/// system state (other tests and agents use it), like on any host that runs BPF programs.
pub fn ensure_bpffs() -> Result<()> {
    const AT: &str = "/sys/fs/bpf";
    if bpffs_mounted(AT) {
        return Ok(());
    }
    if !Path::new(AT).is_dir() {
        bail!("{AT} does not exist: no bpffs mount point");
    }
    let out = cmd::run_with_deadline("mount", &["-t", "bpf", "bpf", AT], cmd::DEFAULT_DEADLINE)?;
    if !out.status.success() || !bpffs_mounted(AT) {
        bail!(
            "bpffs is not mounted at {AT} and `mount -t bpf bpf {AT}` failed: {}",
            cmd::text(&out).trim()
        );
    }
    Ok(())
}

/// Deletes namespaces named `dvrt-<pid>-...` whose process no longer exists: left-overs of a
/// test run that was killed before its drops ran. Only names of this test bed's shape.
pub fn reap_stale_namespaces() {
    let Ok(out) = cmd::run_with_deadline("ip", &["netns", "list"], cmd::DEFAULT_DEADLINE) else {
        return;
    };
    for line in cmd::stdout(&out).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("dvrt-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("dvr-tests: deleting stale namespace {name} of dead process {pid}");
            let _ = cmd::ip(&["netns", "del", name]);
        }
    }
}

/// Namespaces of this process that still exist (for leak checks).
pub fn own_namespaces() -> Result<Vec<String>> {
    let out = cmd::run_ok("ip", &["netns", "list"])?;
    let prefix = format!("{}-", cloud::ns_prefix());
    Ok(cmd::stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect())
}

/// True when every TTL seen equals `want` (and at least one was seen).
pub fn all_ttl(ttls: &[u8], want: u8) -> bool {
    !ttls.is_empty() && ttls.iter().all(|t| *t == want)
}
