//! The three traffic measurements of one path, with the tools run in the path's namespaces.
//!
//! - TCP throughput: `iperf3 -c DST -t T`, one stream, [`Settings::tcp_runs`] runs; the
//!   median of the receiver's rate.
//! - UDP packet rate: `iperf3 -u -b 0 -l 22`, i.e. as fast as the sender can, with 22-byte
//!   payloads, so every frame on the wire is 64 bytes without FCS (14 Ethernet + 20 IPv4 + 8
//!   UDP + 22); the rate is datagrams the server *received* per second (sent minus lost),
//!   median over [`Settings::udp_runs`] runs.
//! - Request/response latency: `sockperf ping-pong -m 64 --full-rtt` (UDP, one message in
//!   flight, 64-byte messages): p50 and p99 of the round trip in microseconds. Client and
//!   server are pinned to the same CPU (`taskset`): the whole path (veth, bridge, VXLAN, TC,
//!   netfilter) then runs on that CPU in the sender's softirq and the CPU never idles
//!   between request and reply. Unpinned, every round trip pays for waking a halted vCPU
//!   (about 60 us on this VM, more than the datapath itself); busy polling instead makes
//!   the two spinning processes compete with the agents and ksoftirqd for the two cores
//!   (multi-millisecond p99 outliers). So the figures are the datapath's latency plus two
//!   context switches and the socket calls.
//!
//! One tool at a time (the machine has two cores: client and server each get one).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde::Serialize;
use serde_json::Value;

use super::netns::{spawn_in, wait_listening};
use super::{PathEnds, Settings, bail_if_interrupted, median};
use crate::cmd::{exec_with_deadline, text};

pub const IPERF_PORT: u16 = 5201;
pub const SOCKPERF_PORT: u16 = 11111;
/// UDP payload for 64-byte frames.
pub const UDP_PAYLOAD: u32 = 22;
/// sockperf message size.
pub const RR_MSG: u32 = 64;

/// The figures of one path on one datapath.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub tcp_gbps: f64,
    pub udp_kpps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Every TCP run (Gbit/s) and UDP run (kpps), for the record.
    pub tcp_runs: Vec<f64>,
    pub udp_runs: Vec<f64>,
    /// eBPF only: what each BPF program cost per packet in one more UDP run
    /// ([`super::bpf_stats`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf: Vec<super::bpf_stats::ProgramCost>,
}

/// Measures one path (which must have passed [`super::check::check_path`]). `dir` holds the
/// servers' logs.
pub fn measure_path(ends: &PathEnds, s: &Settings, dir: &Path) -> Result<Figures> {
    let tag = ends.path.as_str();
    let mut f = Figures::default();
    let listen = ends.listen.to_string();
    {
        let port = IPERF_PORT.to_string();
        let mut server = spawn_in(
            &ends.server_ns,
            &["iperf3", "-s", "-B", &listen, "-p", &port],
            dir,
            &format!("iperf3-{tag}"),
        )?;
        wait_listening(&ends.server_ns, false, IPERF_PORT, &mut server)?;
        for _ in 0..s.tcp_runs {
            bail_if_interrupted()?;
            let v = iperf3(ends, &["-t", &s.tcp_seconds.to_string()], s.tcp_seconds)?;
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .ok_or_else(|| anyhow!("iperf3 TCP JSON without end.sum_received: {v}"))?;
            f.tcp_runs.push(bps / 1e9);
        }
        for _ in 0..s.udp_runs {
            bail_if_interrupted()?;
            f.udp_runs.push(udp_run(ends, s.udp_seconds)?);
        }
        server.guard.stop(Duration::from_secs(3))?;
    }
    f.tcp_gbps = median(&f.tcp_runs).unwrap_or_default();
    f.udp_kpps = median(&f.udp_runs).unwrap_or_default();
    bail_if_interrupted()?;
    let (p50, p99) = sockperf(ends, s.latency_seconds, dir)?;
    f.p50_us = p50;
    f.p99_us = p99;
    Ok(f)
}

/// The UDP packet rate alone: `runs` iperf3 runs of `seconds` against a server started for
/// them; kpps received in each run.
pub fn udp_rate(ends: &PathEnds, runs: u32, seconds: u32, dir: &Path) -> Result<Vec<f64>> {
    let listen = ends.listen.to_string();
    let port = IPERF_PORT.to_string();
    let mut server = spawn_in(
        &ends.server_ns,
        &["iperf3", "-s", "-B", &listen, "-p", &port],
        dir,
        &format!("iperf3-udp-{}", ends.path.as_str()),
    )?;
    wait_listening(&ends.server_ns, false, IPERF_PORT, &mut server)?;
    let mut v = Vec::new();
    for _ in 0..runs {
        bail_if_interrupted()?;
        v.push(udp_run(ends, seconds)?);
    }
    server.guard.stop(Duration::from_secs(3))?;
    Ok(v)
}

/// One 64-byte-frame UDP flood of `seconds` to a running iperf3 server; kpps received.
fn udp_run(ends: &PathEnds, seconds: u32) -> Result<f64> {
    let v = iperf3(
        ends,
        &[
            "-u",
            "-b",
            "0",
            "-l",
            &UDP_PAYLOAD.to_string(),
            "-t",
            &seconds.to_string(),
        ],
        seconds,
    )?;
    udp_kpps(&v)
}

/// One iperf3 client run to the path's server; its JSON report.
fn iperf3(ends: &PathEnds, extra: &[&str], seconds: u32) -> Result<Value> {
    let dst = ends.dst.to_string();
    let port = IPERF_PORT.to_string();
    let mut args = vec!["iperf3", "-c", &dst, "-p", &port, "-J"];
    args.extend_from_slice(extra);
    let out = exec_with_deadline(
        &ends.client_ns,
        &args,
        Duration::from_secs(u64::from(seconds) + 20),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON: {}", text(&out).trim()))?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("iperf3 {extra:?} to {dst}: {e}");
    }
    ensure!(
        out.status.success(),
        "iperf3 {extra:?} to {dst} failed ({})",
        out.status
    );
    Ok(v)
}

/// Datagrams received per second (thousands) from an iperf3 UDP client report.
pub fn udp_kpps(v: &Value) -> Result<f64> {
    let r = &v["end"]["sum_received"];
    let packets = r["packets"].as_f64();
    let lost = r["lost_packets"].as_f64();
    let secs = r["seconds"].as_f64();
    match (packets, lost, secs) {
        (Some(p), Some(l), Some(s)) if s > 0.0 => Ok((p - l).max(0.0) / s / 1e3),
        _ => Err(anyhow!("iperf3 UDP JSON without end.sum_received: {r}")),
    }
}

/// sockperf ping-pong for `seconds`; (p50, p99) round trip in microseconds.
fn sockperf(ends: &PathEnds, seconds: u32, dir: &Path) -> Result<(f64, f64)> {
    let port = SOCKPERF_PORT.to_string();
    let cpu = latency_cpu();
    let mut server = spawn_in(
        &ends.server_ns,
        &[
            "taskset",
            "-c",
            &cpu,
            "sockperf",
            "server",
            "-i",
            &ends.listen.to_string(),
            "-p",
            &port,
        ],
        dir,
        &format!("sockperf-{}", ends.path.as_str()),
    )?;
    wait_listening(&ends.server_ns, true, SOCKPERF_PORT, &mut server)?;
    let dst = ends.dst.to_string();
    let out = exec_with_deadline(
        &ends.client_ns,
        &[
            "taskset",
            "-c",
            &cpu,
            "sockperf",
            "ping-pong",
            "-i",
            &dst,
            "-p",
            &port,
            "-m",
            &RR_MSG.to_string(),
            "-t",
            &seconds.to_string(),
            "--full-rtt",
        ],
        Duration::from_secs(u64::from(seconds) + 20),
    )?;
    server.guard.stop(Duration::from_secs(3))?;
    let t = text(&out);
    ensure!(
        out.status.success(),
        "sockperf ping-pong to {dst} failed ({}): {}",
        out.status,
        t.trim()
    );
    parse_sockperf(&t).ok_or_else(|| anyhow!("no percentiles in sockperf output:\n{t}"))
}

/// The CPU the latency test runs on: the last one.
fn latency_cpu() -> String {
    std::thread::available_parallelism()
        .map_or(0, |n| n.get() - 1)
        .to_string()
}

/// (p50, p99) from sockperf's "---> percentile 50.000 =    5.634" lines.
pub fn parse_sockperf(out: &str) -> Option<(f64, f64)> {
    let pct = |want: &str| {
        out.lines().find_map(|l| {
            let rest = l.split("percentile ").nth(1)?;
            let (p, v) = rest.split_once('=')?;
            (p.trim() == want).then(|| v.trim().parse::<f64>().ok())?
        })
    };
    Some((pct("50.000")?, pct("99.000")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockperf_and_iperf3() {
        let out = "sockperf: ---> <MAX> observation = 15983.375
sockperf: ---> percentile 99.999 = 5725.250
sockperf: ---> percentile 99.000 =   15.266
sockperf: ---> percentile 50.000 =    5.634
sockperf: ---> <MIN> observation =    4.526";
        assert_eq!(parse_sockperf(out), Some((5.634, 15.266)));
        assert_eq!(parse_sockperf("nothing"), None);
        let v: Value = serde_json::json!({"end": {"sum_received": {
            "packets": 1000.0, "lost_packets": 200.0, "seconds": 2.0}}});
        assert!((udp_kpps(&v).unwrap_or_default() - 0.4).abs() < 1e-9);
    }
}
