//! SNAT high availability integration tests (docs/HA.md): an HA router whose centralized SNAT
//! role is elected through etcd among two `dvr_snat` hosts, sa (priority 200) and sb (100).
//! Each test builds its own cloud: a compute host h1 with a VM v1 without a floating IP, sa,
//! sb, the external namespace (upstream router 10.5.0.1, "internet host" 198.51.100.10) and
//! etcd in the underlay; the agents run on `--etcd`.
//!
//! What is asserted is observable from outside the agents: bytes and hashes of TCP transfers,
//! the client address:port the external server and a capture on `br-ext` saw (and from which
//! host's `ext0` each packet came), ping replies, `dvrctl ha` (the holder in etcd),
//! `dvrctl show ha|conntrack|stats --json`, ARP replies on the external network, the exit
//! status and message of `dvrctl apply|failover` and of the agent, and the fences in the
//! hosts' pinned maps, sampled every 10 ms in a thread so that "never two active hosts" is
//! checked all along. Figures (failover time, lost pings, longest gap) are printed.
//!
//! Needs root, bpffs, tcpdump, socat, arping, python3-scapy, etcd and the built agent
//! (`cargo build -p dvr-userspace`); fails with a clear message otherwise. Run with
//! `--test-threads=1`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dvr_common::stats::Stat;
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::ha::max_sample_interval;
use dvr_tests::state::HaHost;
use dvr_tests::{
    ArpingResult, BgPing, Capture, Cloud, Counters, EXT, FenceSample, FenceSampler, INTERNET_HOST,
    PacedReport, PacedTransfer, Packet, PingGaps, Topology, VmSpec, ping_gaps,
    require_etcd_preconditions, tcp_sources,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;
/// The first election after start: agents connect, sa (rank 0) creates the key.
const ELECTION: Duration = Duration::from_secs(15);
/// A failover is expected within about a second (docs/HA.md: beats every 100 ms, fence
/// 350 ms, detection 350 ms); this bounds the waits, the figures are printed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);
/// The longest ping gap a failover may cause (generous; the actual one is printed).
const MAX_GAP: Duration = Duration::from_secs(3);
/// Background pings: 50 echoes a second.
const PING_INTERVAL: Duration = Duration::from_millis(20);
/// How often the fences are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long a returned host is watched for pre-emption.
const NO_PREEMPTION_WINDOW: Duration = Duration::from_secs(2);

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

/// h1 (VM v1 on network "a", VNI `vni`, 172.24.`octet`.0/24), the SNAT hosts sa and sb, the
/// external network; router r1 HA over sa (200) and sb (100), its csnat port bound to sa.
fn ha_topology(vni: u32, octet: u8) -> Topology {
    let mut t = Topology::new();
    t.host("h1").snat_host("sa").snat_host("sb").external();
    t.network("a", vni, &format!("172.24.{octet}.0/24"));
    t.router("r1", &["a"])
        .ha_hosts("r1", &[("sa", 200), ("sb", 100)]);
    t.vm(VmSpec::new("v1", "a", "h1"));
    t
}

/// [`ha_topology`] built (after the preconditions are checked), etcd started and the state
/// applied, agents on `--etcd`; returns once sa has won the first election, serves r1 (its
/// fence, not sb's, is live) and SNAT through it answers: the cloud, r1's external address and
/// the MACs of sa's and sb's `ext0`.
fn ha_cloud(vni: u32, octet: u8) -> Result<(Cloud, Ipv4Addr, String, String)> {
    ha_cloud_with(vni, octet, |_| {})
}

/// [`ha_cloud`] with `more` added to the topology.
fn ha_cloud_with(
    vni: u32,
    octet: u8,
    more: impl FnOnce(&mut Topology),
) -> Result<(Cloud, Ipv4Addr, String, String)> {
    require_etcd_preconditions();
    let mut t = ha_topology(vni, octet);
    more(&mut t);
    let mut c = t.build_without_agents()?;
    let url = c.start_etcd()?;
    let out = c.etcd_apply()?;
    eprintln!("etcd at {url}: {out}");
    c.agents_use_etcd()?;
    let t0 = Instant::now();
    c.start_agents()?;
    let elected = c
        .wait_ha_holder("r1", "sa", ELECTION)
        .context("sa (priority 200) must win the first election over sb (100)")?;
    wait_until("sa's fence to be active", WAIT, |why| {
        let f = c.fence("sa", "r1")?;
        *why = format!("{f:?}");
        Ok(f.active().then_some(()))
    })?;
    let sb = c.fence("sb", "r1")?;
    ensure!(
        !sb.active(),
        "sb must not be active while sa holds r1: {sb:?}"
    );
    c.ping_ok("v1", INTERNET_HOST, 2)
        .context("SNAT through sa before any failure")?;
    eprintln!(
        "sa elected for r1 {:?} after the agents started; holders {:?}",
        elected.saturating_duration_since(t0),
        c.ha_holders()?
    );
    let gw = c.router_external_ip("r1")?;
    let (sa_mac, sb_mac) = (c.ext_mac("sa")?, c.ext_mac("sb")?);
    Ok((c, gw, sa_mac, sb_mac))
}

/// Samples r1's fences on sa and sb (in that order) every [`SAMPLE_EVERY`]; returns once sa's
/// has been seen active.
fn sample_r1(c: &Cloud) -> Result<FenceSampler> {
    let sampler = c.sample_fences("r1", &["sa", "sb"], SAMPLE_EVERY)?;
    sampler.wait_active("sa", true, WAIT)?;
    Ok(sampler)
}

/// How sb took r1 over from sa after a failure at t0.
struct Takeover {
    /// sb's first active sample.
    sb_on: Instant,
    /// When, after t0, sa's fence lapsed, sb's became active and `dvrctl ha` named sb.
    sa_off: Duration,
    sb_active: Duration,
    sb_holder: Duration,
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sa's fence lapsed at +{:?}, sb active at +{:?}, dvrctl ha names sb at +{:?}",
            self.sa_off, self.sb_active, self.sb_holder
        )
    }
}

/// Waits until sa's fence has lapsed, sb's is active and `dvrctl ha` names sb (each within
/// [`FAILOVER_DEADLINE`]) after a failure at `t0`.
fn wait_takeover(c: &Cloud, sampler: &FenceSampler, t0: Instant) -> Result<Takeover> {
    let sa_off = sampler.wait_active("sa", false, FAILOVER_DEADLINE)?;
    let sb_on = sampler.wait_active("sb", true, FAILOVER_DEADLINE)?;
    let holder = c.wait_ha_holder("r1", "sb", FAILOVER_DEADLINE)?;
    Ok(Takeover {
        sb_on,
        sa_off: sa_off.saturating_duration_since(t0),
        sb_active: sb_on.saturating_duration_since(t0),
        sb_holder: holder.saturating_duration_since(t0),
    })
}

/// Waits until sa's agent is alive in etcd again, then until the sampler has watched
/// [`NO_PREEMPTION_WINDOW`] beyond that; returns when sa was alive again.
fn sa_back_and_watched(c: &Cloud, sampler: &FenceSampler) -> Result<Instant> {
    let back = wait_until(
        "sa's agent to be alive in etcd again",
        Duration::from_secs(20),
        |why| {
            let row = c.etcd_host_row("sa")?;
            *why = format!("{row:?}");
            Ok(row.filter(|r| r.alive).map(|_| Instant::now()))
        },
    )?;
    sampler.wait(
        &format!("{NO_PREEMPTION_WINDOW:?} of samples after sa came back"),
        NO_PREEMPTION_WINDOW + WAIT,
        |x| x.at >= back + NO_PREEMPTION_WINDOW,
    )?;
    Ok(back)
}

/// The conntrack row of `host` that port-address translates `v1`'s TCP flow to
/// `INTERNET_HOST:port` for r1 (outbound direction), if any.
fn pat_flow(c: &Cloud, host: &str, src: Ipv4Addr, port: u16) -> Result<Option<Value>> {
    Ok(c.pat_flows(host, "r1")?
        .into_iter()
        .find(|e| e["proto"] == "tcp" && e["src"] == s(src).as_str() && e["dport"] == port))
}

/// Waits until `host` holds the PAT entry of `v1`'s TCP flow to `port`; with `want_port`,
/// one translating to that external port (a copy streamed from the active host).
fn wait_pat_flow(
    c: &Cloud,
    host: &str,
    port: u16,
    want_port: Option<u64>,
    deadline: Duration,
) -> Result<u64> {
    let v1 = c.ip("v1")?;
    wait_until(
        &format!("{host} to hold the PAT entry of v1's flow to port {port} ({want_port:?})"),
        deadline,
        |why| {
            let e = pat_flow(c, host, v1, port)?;
            *why = format!("{e:?}");
            Ok(e.and_then(|e| e["nat_port"].as_u64())
                .filter(|p| want_port.is_none_or(|w| w == *p)))
        },
    )
}

/// When a sample from `since` on first satisfied `pred`, relative to `since`.
fn first_since(
    samples: &[FenceSample],
    since: Instant,
    pred: impl Fn(&FenceSample) -> bool,
) -> Option<Duration> {
    samples
        .iter()
        .find(|x| x.at >= since && pred(x))
        .map(|x| x.at.saturating_duration_since(since))
}

/// "N fence samples, longest interval D".
fn sampling(samples: &[FenceSample]) -> String {
    format!(
        "{} fence samples, longest interval {:?}",
        samples.len(),
        max_sample_interval(samples)
    )
}

/// Samples in which both hosts (indexes 0 and 1) were active.
fn overlaps(samples: &[FenceSample]) -> Vec<&FenceSample> {
    samples.iter().filter(|x| x.active_count() > 1).collect()
}

/// The distinct source address:port and source MACs of the capture's packets to
/// `INTERNET_HOST:port`.
fn flow_sources(packets: &[Packet], port: u16) -> (BTreeSet<SocketAddrV4>, BTreeSet<String>) {
    let src = tcp_sources(packets, INTERNET_HOST, port);
    (
        src.iter().map(|(a, _)| *a).collect(),
        src.into_iter().map(|(_, m)| m).collect(),
    )
}

/// `show ha` of `host` says it serves r1.
fn shows_active(c: &Cloud, host: &str) -> Result<Value> {
    let row = c
        .ha_fence_row(host, "r1")?
        .with_context(|| format!("{host}'s show ha has no row for r1: {:?}", c.show_ha(host)))?;
    ensure!(
        row["active"] == true && row["remaining_ms"].as_f64().is_some_and(|m| m > 0.0),
        "{host}'s show ha must say it serves r1: {row}"
    );
    Ok(row)
}

/// `show ha` of `host` says it does not serve r1 (no row, or active false).
fn shows_standby(c: &Cloud, host: &str) -> Result<Option<Value>> {
    let row = c.ha_fence_row(host, "r1")?;
    ensure!(
        row.as_ref().is_none_or(|r| r["active"] == false),
        "{host}'s show ha must not say it serves r1: {row:?}"
    );
    Ok(row)
}

/// Neither sa nor sb (samples: sa, sb) was ever active while the other was.
fn never_both_active(samples: &[FenceSample]) -> Result<()> {
    let both = overlaps(samples);
    ensure!(
        both.is_empty(),
        "sa and sb were both active in {} of {} samples, first {:?}",
        both.len(),
        samples.len(),
        both.first()
    );
    Ok(())
}

/// From `sb_on` (sb's first active sample) on: never both active, sa never active again (no
/// pre-emption, no fence extended past its revocation), sb never lapsed. Samples: sa, sb.
fn sb_kept_the_role(samples: &[FenceSample], sb_on: Instant) -> Result<()> {
    never_both_active(samples)?;
    let later: Vec<&FenceSample> = samples.iter().filter(|x| x.at >= sb_on).collect();
    let sa_again = later.iter().filter(|x| x.active(0)).count();
    let sb_lost = later.iter().filter(|x| !x.active(1)).count();
    let first = |pred: &dyn Fn(&FenceSample) -> bool| {
        later
            .iter()
            .find(|x| pred(x))
            .map(|x| (x.at.saturating_duration_since(sb_on), x.fences.clone()))
    };
    ensure!(
        sa_again == 0 && sb_lost == 0,
        "after sb took over, sa was active again in {sa_again} and sb inactive in {sb_lost} of \
         {} samples (first: sa active {:?}, sb inactive {:?} after sb took over)",
        later.len(),
        first(&|x| x.active(0)),
        first(&|x| !x.active(1))
    );
    Ok(())
}

/// Only sb's ext0 (`sb_mac`) answered the ARP requests for the router's address `gw`.
fn only_sb_answers_arp(arp: &ArpingResult, gw: Ipv4Addr, sb_mac: &str) -> Result<()> {
    ensure!(
        !arp.reply_macs.is_empty() && arp.reply_macs.iter().all(|m| *m == sb_mac),
        "ARP for the router's address {gw} must be answered by sb's ext0 ({sb_mac}) only:\n{}",
        arp.output
    );
    Ok(())
}

/// A paced TCP transfer from v1 to `INTERNET_HOST:port` through r1, its packets captured on
/// br-ext.
struct Flow {
    port: u16,
    cap: Capture,
    xfer: PacedTransfer,
    /// The external port r1's PAT gave the flow.
    ext_port: u64,
    /// How long the standby took to hold the copy of the flow's PAT entry after the active
    /// host's was seen.
    copied: Duration,
}

/// Starts a [`Flow`] of `bytes` to `port` paced over `secs` seconds; returns once `flowing`
/// bytes have arrived through `active` and the flow's conntrack entry has been streamed to
/// `standby` (before anything fails; sync every 200 ms).
fn start_synced_flow(
    c: &mut Cloud,
    (active, standby): (&str, &str),
    port: u16,
    bytes: usize,
    secs: u64,
    flowing: u64,
) -> Result<Flow> {
    let cap = c.capture_ext(&format!(
        "tcp and dst host {INTERNET_HOST} and dst port {port}"
    ))?;
    let pace = Duration::from_secs(secs);
    let mut xfer = c.start_paced_transfer("v1", EXT, INTERNET_HOST, port, bytes, pace, None)?;
    xfer.wait_received(flowing, Duration::from_secs(10))
        .with_context(|| format!("transfer flowing through {active}"))?;
    let ext_port = wait_pat_flow(c, active, port, None, WAIT)?;
    let synced = Instant::now();
    wait_pat_flow(c, standby, port, Some(ext_port), WAIT)
        .with_context(|| format!("{active} must stream the flow's conntrack entry to {standby}"))?;
    Ok(Flow {
        port,
        cap,
        xfer,
        ext_port,
        copied: synced.elapsed(),
    })
}

/// What a failover under a [`Flow`] and a background ping left.
struct Outcome {
    rep: PacedReport,
    gaps: PingGaps,
    samples: Vec<FenceSample>,
    /// The flow's distinct source address:port and source MACs on br-ext.
    sources: BTreeSet<SocketAddrV4>,
    macs: BTreeSet<String>,
}

impl Flow {
    /// Ends the transfer across the `failover` (as messages name it), the ping, the fence
    /// sampler and the capture, in that order.
    fn finish(self, failover: &str, ping: BgPing, sampler: FenceSampler) -> Result<Outcome> {
        let rep = self
            .xfer
            .finish()
            .with_context(|| format!("the transfer across the {failover}"))?;
        let p = ping.finish()?;
        let samples = sampler.stop()?;
        let packets = self.cap.stop()?;
        let (sources, macs) = flow_sources(&packets, self.port);
        Ok(Outcome {
            rep,
            gaps: ping_gaps(&p.output, PING_INTERVAL),
            samples,
            sources,
            macs,
        })
    }
}

impl Outcome {
    /// Prints the ping's figures; `across` follows the interval.
    fn print_ping(&self, across: &str) {
        let g = &self.gaps;
        eprintln!(
            "ping v1 -> {INTERNET_HOST} every {PING_INTERVAL:?}{across}: {}/{} answered, {} lost, \
             longest gap {:?}",
            g.received, g.transmitted, g.lost, g.longest_gap
        );
    }

    /// The flow kept the source `want` (r1's address, the port PAT gave it) for the server and
    /// on br-ext, and left through the ext0 of `before` and then of `after` (name, MAC). `whom`
    /// and `note` complete the first two messages.
    fn ensure_one_source(
        &self,
        want: SocketAddrV4,
        (whom, note): (&str, &str),
        (before, before_mac): (&str, &str),
        (after, after_mac): (&str, &str),
    ) -> Result<()> {
        ensure!(
            self.rep.peer == Some(want),
            "the server must see {whom}{want}, saw {:?}",
            self.rep.peer
        );
        ensure!(
            self.sources == BTreeSet::from([want]),
            "every packet of the flow must come from {want}{note}, br-ext saw {:?}",
            self.sources
        );
        ensure!(
            self.macs.contains(before_mac) && self.macs.contains(after_mac),
            "the flow must leave through {before}'s ext0 ({before_mac}) before and {after}'s \
             ({after_mac}) after: {:?}",
            self.macs
        );
        Ok(())
    }

    /// The `failover` (as the message names it) silenced the ping for less than [`MAX_GAP`].
    fn ensure_short_gap(&self, failover: &str) -> Result<()> {
        ensure!(
            self.gaps.longest_gap < MAX_GAP,
            "the {failover} silenced the ping for {:?} (bound {MAX_GAP:?})",
            self.gaps.longest_gap
        );
        Ok(())
    }
}

// ---- unplanned failover -----------------------------------------------------------------------

#[test]
fn failover_keeps_established_tcp() -> Result<()> {
    let (mut c, gw, sa_mac, sb_mac) = ha_cloud(7101, 1)?;
    const PORT: u16 = 5701;
    const BYTES: usize = 6 * MIB;

    let mut flow = start_synced_flow(&mut c, ("sa", "sb"), PORT, BYTES, 12, MIB as u64)?;
    let ext_port = flow.ext_port;
    eprintln!(
        "flow v1 -> {INTERNET_HOST}:{PORT} as {gw}:{ext_port} on sa; copy on sb within {:?}",
        flow.copied
    );

    let mut ping = c.ping_bg("v1", INTERNET_HOST, 500, PING_INTERVAL, &[])?;
    ping.wait_replies(25, WAIT)
        .context("ping before the failure")?;
    let sampler = sample_r1(&c)?;

    // sa dies: unreachable for etcd, sb, h1 and the external network.
    let received_before = flow.xfer.received_so_far();
    let t0 = Instant::now();
    c.set_host_links("sa", false)?;
    let takeover = wait_takeover(&c, &sampler, t0)?;
    flow.xfer
        .wait_received(received_before + 2 * 65536, Duration::from_secs(20))
        .context("the transfer must go on through sb")?;
    let resumed = t0.elapsed();

    let o = flow.finish("failover", ping, sampler)?;
    let rep = &o.rep;
    eprintln!("sa down at t0: {takeover}, transfer moving again by +{resumed:?}");
    o.print_ping("");
    eprintln!(
        "transfer: {} bytes intact (sha256 {}) in {:?}; server saw {:?}; br-ext saw sources \
         {:?} from MACs {:?} (sa {sa_mac}, sb {sb_mac}); {}",
        rep.bytes,
        rep.sha256,
        rep.elapsed,
        rep.peer,
        o.sources,
        o.macs,
        sampling(&o.samples)
    );

    let want = SocketAddrV4::new(gw, u16::try_from(ext_port)?);
    ensure!(
        rep.bytes == BYTES as u64,
        "received {} of {BYTES} bytes",
        rep.bytes
    );
    o.ensure_one_source(
        want,
        (
            "the router's external address ",
            " (same port before and after the failover)",
        ),
        ("sa", &sa_mac),
        ("sb", &sb_mac),
    )?;
    sb_kept_the_role(&o.samples, takeover.sb_on)?;
    ensure!(
        c.ha_holder("r1")?.as_deref() == Some("sb"),
        "sb must hold r1: {:?}",
        c.ha_holders()?
    );
    let row = shows_active(&c, "sb")?;
    o.ensure_short_gap("failover")?;
    eprintln!("sb's show ha: {row}");
    // Back up for an orderly teardown (sa's agent exits on SIGTERM either way).
    c.set_host_links("sa", true)?;
    Ok(())
}

// ---- central floating IPs ---------------------------------------------------------------------

/// A `dvr_no_external` host's VM has its floating IP served by r1's elected host: when sa
/// dies the FIP is answered by sb (ARP from sb's ext0 only, pings from outside answered again,
/// the VM reaches outside as its FIP).
#[test]
fn central_fip_moves_with_the_role() -> Result<()> {
    let (mut c, _gw, sa_mac, sb_mac) = ha_cloud_with(7401, 4, |t| {
        t.no_external_host("hn");
        t.vm(VmSpec::new("vn", "a", "hn"));
        t.fip("fn", Some("vn"));
    })?;
    let fip = c.fip_ip("fn")?;
    c.wait_fip_kind("sa", "fn", Some("central"), WAIT)
        .context("sa, elected, must serve vn's FIP centrally")?;
    let arp = c.arping_ext(fip, 2, 5)?;
    ensure!(
        !arp.reply_macs.is_empty() && arp.reply_macs.iter().all(|m| *m == sa_mac),
        "before the failure only sa's ext0 ({sa_mac}) may answer ARP for the FIP {fip}:\n{}",
        arp.output
    );
    let sampler = sample_r1(&c)?;
    let mut ping = c.ping_bg(EXT, fip, 400, PING_INTERVAL, &[])?;
    ping.wait_replies(25, WAIT)
        .context("outside -> central FIP through sa")?;

    let t0 = Instant::now();
    c.set_host_links("sa", false)?;
    let takeover = wait_takeover(&c, &sampler, t0)?;
    let before = ping.replies();
    ping.wait_replies(before + 25, Duration::from_secs(20))
        .context("outside -> central FIP must be answered again, through sb")?;
    let answered_again = t0.elapsed();
    let p = ping.finish()?;
    let gaps = ping_gaps(&p.output, PING_INTERVAL);
    let samples = sampler.stop()?;
    eprintln!(
        "sa down at t0: {takeover}; 25 more pings to the central FIP {fip} answered by +{answered_again:?}; {}/{} answered, {} lost, longest gap {:?}; {}",
        gaps.received,
        gaps.transmitted,
        gaps.lost,
        gaps.longest_gap,
        sampling(&samples)
    );
    sb_kept_the_role(&samples, takeover.sb_on)?;
    let arp = c.arping_ext(fip, 2, 5)?;
    ensure!(
        !arp.reply_macs.is_empty() && arp.reply_macs.iter().all(|m| *m == sb_mac),
        "after the failover only sb's ext0 ({sb_mac}) may answer ARP for the FIP {fip}:\n{}",
        arp.output
    );
    // Outbound: the VM is seen outside as its FIP, leaving through sb.
    let cap = c.capture_ext(&format!("icmp and src host {fip}"))?;
    c.ping_ok("vn", INTERNET_HOST, 2)
        .context("vn -> outside through sb")?;
    let pkts = cap.stop()?;
    let texts: Vec<&str> = pkts.iter().map(|p| p.text.as_str()).collect();
    ensure!(
        pkts.iter()
            .any(|p| p.contains("echo request") && p.contains(&sb_mac)),
        "vn's echoes must leave as {fip} from sb's ext0 ({sb_mac}): {texts:?}"
    );
    ensure!(
        gaps.longest_gap < MAX_GAP,
        "the failover silenced the central FIP for {:?} (bound {MAX_GAP:?})",
        gaps.longest_gap
    );
    c.set_host_links("sa", true)?;
    Ok(())
}

// ---- partition from etcd ----------------------------------------------------------------------

#[test]
fn partition_never_two_active() -> Result<()> {
    let (mut c, gw, sa_mac, sb_mac) = ha_cloud(7201, 2)?;
    let sampler = sample_r1(&c)?;

    // sa loses etcd; VXLAN (and conntrack sync) to the other hosts still works.
    let t0 = Instant::now();
    c.block_etcd("sa")?;
    c.underlay_sentinel("sa", "sb")
        .context("the underlay must keep working while sa is cut from etcd")?;
    let takeover = wait_takeover(&c, &sampler, t0)?;
    eprintln!("sa cut from etcd at t0: {takeover}");
    let sa_row = shows_standby(&c, "sa")?;
    shows_active(&c, "sb")?;

    // SNAT works through sb while sa is still cut off, and across the partition's end.
    let mut ping = c.ping_bg("v1", INTERNET_HOST, 250, PING_INTERVAL, &[])?;
    ping.wait_replies(25, WAIT)
        .context("SNAT through sb while sa is partitioned")?;
    c.unblock_etcd("sa")?;
    let healed = Instant::now();
    // No pre-emption: watch sa for a while with sb healthy.
    let back = sa_back_and_watched(&c, &sampler)?;
    let holder_after = c.ha_holder("r1")?;
    eprintln!(
        "partition healed at +{:?}; sa alive in etcd {:?} later; holder {holder_after:?} \
         {NO_PREEMPTION_WINDOW:?} after that; sa's show ha during the partition {sa_row:?}",
        healed.saturating_duration_since(t0),
        back.saturating_duration_since(healed)
    );
    sb_kept_the_role(&sampler.samples(), takeover.sb_on)?;
    ensure!(
        holder_after.as_deref() == Some("sb"),
        "sb must still hold r1 {NO_PREEMPTION_WINDOW:?} after sa came back (no pre-emption): \
         {holder_after:?}"
    );
    shows_standby(&c, "sa")?;
    let p = ping.finish()?;
    let after = c.ping("v1", INTERNET_HOST, 5)?;
    let gaps = ping_gaps(&p.output, PING_INTERVAL);
    eprintln!(
        "ping through sb across the heal: {}/{} answered, longest gap {:?}; afterwards {}/{}",
        gaps.received, gaps.transmitted, gaps.longest_gap, after.received, after.transmitted,
    );
    ensure!(
        p.all_answered() && after.all_answered(),
        "SNAT through sb must work throughout after the failover: {}/{} then {}/{} \
         answered:\n{}",
        p.received,
        p.transmitted,
        after.received,
        after.transmitted,
        p.output
    );

    // The standby does not answer ARP for the router's address.
    let arp = c.arping_ext(gw, 3, 3)?;
    let samples = sampler.stop()?;
    eprintln!(
        "ARP for {gw} answered by {:?} (sa {sa_mac}, sb {sb_mac}); {}",
        arp.reply_macs,
        sampling(&samples)
    );
    only_sb_answers_arp(&arp, gw, &sb_mac)?;
    sb_kept_the_role(&samples, takeover.sb_on)
}

// ---- planned failover -------------------------------------------------------------------------

#[test]
fn manual_failover_back() -> Result<()> {
    let (mut c, gw, sa_mac, sb_mac) = ha_cloud(7301, 3)?;
    let sampler = sample_r1(&c)?;

    // sa's agent stops (SIGTERM): its datapath stays, but its fence must lapse.
    let t0 = Instant::now();
    let st = c.stop_agent("sa")?;
    ensure!(st.success(), "agent of sa exited with {st} on SIGTERM");
    let takeover = wait_takeover(&c, &sampler, t0)?;
    eprintln!("sa's agent stopped at t0: {takeover}");
    c.ping_ok("v1", INTERNET_HOST, 3)
        .context("SNAT through sb after sa's agent stopped")?;
    // sa's datapath still holds r1's entries (nobody removed them) but its fence has lapsed:
    // it refuses frames for the router and does not answer ARP for its address.
    let before = Counters::take(&c, &["sa"])?;
    c.scapy_at(
        EXT,
        &format!(
            "sendp(Ether(dst={sa_mac:?})/IP(src={:?}, dst={:?})/UDP(sport=53, dport=40999)/Raw(b'x'), iface='br-ext', count=5)",
            s(INTERNET_HOST),
            s(gw)
        ),
    )?;
    let refused = before.wait_delta(&c, "sa", Stat::DropSnatStandby, 5)?;
    let arp = c.arping_ext(gw, 3, 3)?;
    eprintln!(
        "sa without agent: drop_snat_standby +{refused} for 5 frames to {gw} sent to its ext0; \
         ARP for {gw} answered by {:?} (sa {sa_mac}, sb {sb_mac})",
        arp.reply_macs
    );
    only_sb_answers_arp(&arp, gw, &sb_mac)?;

    // sa comes back as a standby and stays one.
    let restart = c.restart_agent("sa")?;
    sa_back_and_watched(&c, &sampler)?;
    let holder_back = c.ha_holder("r1")?;
    eprintln!(
        "sa's agent restarted in {restart:?}; holder {holder_back:?} {NO_PREEMPTION_WINDOW:?} \
         after it was alive again"
    );
    sb_kept_the_role(&sampler.samples(), takeover.sb_on)?;
    ensure!(
        holder_back.as_deref() == Some("sb"),
        "sb must keep r1 after sa's agent came back (no pre-emption): {holder_back:?}"
    );
    shows_standby(&c, "sa")?;

    // A TCP connection through sb, its entry streamed to sa.
    const PORT: u16 = 5703;
    const BYTES: usize = 4 * MIB;
    let mut flow = start_synced_flow(&mut c, ("sb", "sa"), PORT, BYTES, 10, 512 * 1024)?;
    let ext_port = flow.ext_port;
    let mut ping = c.ping_bg("v1", INTERNET_HOST, 400, PING_INTERVAL, &[])?;
    ping.wait_replies(25, WAIT)
        .context("ping before the failover")?;

    // Planned failover back to sa.
    let received_before = flow.xfer.received_so_far();
    let tf = Instant::now();
    let out = c.ha_failover("r1", "sa")?;
    let took = tf.elapsed();
    ensure!(
        out.status.success(),
        "dvrctl failover r1 --to sa failed ({}) after {took:?}: {}",
        out.status,
        cmd::text(&out).trim()
    );
    let holder_now = c.ha_holder("r1")?;
    ensure!(
        holder_now.as_deref() == Some("sa"),
        "dvrctl failover exited 0, so sa must hold r1: {holder_now:?}"
    );
    sampler.wait("sa active and sb not", WAIT, |x| {
        x.active(0) && !x.active(1)
    })?;
    shows_active(&c, "sa")?;
    flow.xfer
        .wait_received(received_before + 2 * 65536, Duration::from_secs(20))
        .context("the transfer must go on through sa")?;
    let o = flow.finish("planned failover", ping, sampler)?;
    let rep = &o.rep;
    eprintln!(
        "dvrctl failover r1 --to sa took {took:?} ({}); sb's fence off at +{:?}, sa active at \
         +{:?}",
        cmd::text(&out).trim(),
        first_since(&o.samples, tf, |x| !x.active(1)),
        first_since(&o.samples, tf, |x| x.active(0)),
    );
    o.print_ping(" across the planned failover");
    eprintln!(
        "transfer: {} bytes intact in {:?}; server saw {:?}; br-ext saw {:?} from {:?} (sa \
         {sa_mac}, sb {sb_mac}); {}",
        rep.bytes,
        rep.elapsed,
        rep.peer,
        o.sources,
        o.macs,
        sampling(&o.samples)
    );

    o.ensure_one_source(
        SocketAddrV4::new(gw, u16::try_from(ext_port)?),
        ("", ""),
        ("sb", &sb_mac),
        ("sa", &sa_mac),
    )?;
    never_both_active(&o.samples)?;
    o.ensure_short_gap("planned failover")?;
    Ok(())
}

// ---- validation -------------------------------------------------------------------------------

#[test]
fn invalid_ha_hosts_are_refused_naming_router_and_field() -> Result<()> {
    require_etcd_preconditions();
    let mut c = ha_topology(7401, 4).build_without_agents()?;
    c.start_etcd()?;
    let applied = c
        .etcd_apply()
        .context("the valid HA state must be accepted")?;
    eprintln!("valid HA state applied: {applied}");
    let rid = c.router_id("r1")?.to_string();
    let name = |h: &str| -> Result<String> { Ok(c.host(h)?.agent_name.clone()) };
    let (sa, sb, h1) = (name("sa")?, name("sb")?, name("h1")?);
    let hosts = |list: &[(&str, u32)]| -> Vec<HaHost> {
        list.iter()
            .map(|(h, p)| HaHost {
                host: h.to_string(),
                priority: *p,
            })
            .collect()
    };
    let cases: Vec<(&str, Vec<HaHost>, bool)> = vec![
        (
            "a dvr host among ha_hosts",
            hosts(&[(sa.as_str(), 200), (h1.as_str(), 100)]),
            true,
        ),
        (
            "the same host twice",
            hosts(&[(sa.as_str(), 200), (sa.as_str(), 100)]),
            true,
        ),
        (
            "an unknown host",
            hosts(&[(sa.as_str(), 200), ("no-such-host", 100)]),
            true,
        ),
        (
            "ha_hosts without ha",
            hosts(&[(sa.as_str(), 200), (sb.as_str(), 100)]),
            false,
        ),
    ];

    let mut failures = Vec::new();
    for (i, (what, list, ha)) in cases.into_iter().enumerate() {
        let mut bad = c.state().clone();
        let r = bad.router_mut(&rid).context("r1 not in the state")?;
        r.ha = ha;
        r.ha_hosts = list;
        let st = bad.to_value()?;
        let path = c.temp_dir().join(format!("bad-ha-{i}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&st)?)?;

        let keys_before = c.etcd_state_keys()?;
        let out = c.etcd_apply_file(&path)?;
        let apply_text = cmd::text(&out);
        let keys_after = c.etcd_state_keys()?;
        let run = c.run_agent_to_exit("sa", &st, Duration::from_secs(10))?;
        eprintln!(
            "{what}: dvrctl apply {} -> {}; agent {:?} -> {}",
            out.status,
            apply_text.trim(),
            run.status,
            run.stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        );
        let names = |t: &str| t.contains(&rid) && t.contains("ha_hosts");
        if out.status.success() || !names(&apply_text) {
            failures.push(format!(
                "{what}: dvrctl apply must fail naming router {rid} and ha_hosts ({}): {}",
                out.status,
                apply_text.trim()
            ));
        }
        if keys_before != keys_after {
            failures.push(format!("{what}: a refused dvrctl apply changed etcd"));
        }
        match run.status {
            Some(st) if !st.success() && names(&run.stderr) => {}
            other => failures.push(format!(
                "{what}: the agent must exit with an error naming router {rid} and ha_hosts \
                 ({other:?}): {}",
                run.stderr.trim()
            )),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} invalid ha_hosts case(s) not refused properly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
