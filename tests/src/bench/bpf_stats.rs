//! What each BPF program of the eBPF datapath costs per packet, from the kernel's BPF run
//! statistics (`kernel.bpf_stats_enabled`): the runs and run time of every `dvr_*` program
//! (summed over the hosts' agents) during one extra UDP run of a path.
//!
//! The statistics cost some nanoseconds per run themselves, so the timed runs of
//! [`super::measure`] are made with them off, and this run comes after them with them on;
//! the setting is restored afterwards (also on error).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use serde_json::Value;

use super::PathEnds;
use super::measure::udp_rate;
use crate::cmd::run_with_deadline;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The datapath's programs are named `dvr_*` (see `dvr-ebpf/src/main.rs`).
const PROGRAM_PREFIX: &str = "dvr_";

/// One program's cost over a UDP run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProgramCost {
    pub program: String,
    /// Runs during the UDP run (every host's instance).
    pub runs: u64,
    /// Runs per UDP packet the server received.
    pub runs_per_packet: f64,
    /// Mean run time.
    pub ns_per_run: f64,
}

/// Run count and run time (ns) per program name, summed over every loaded instance.
fn snapshot() -> Result<BTreeMap<String, (u64, u64)>> {
    let out = run_with_deadline("bpftool", &["-j", "prog", "show"], Duration::from_secs(20))?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool -j prog show")?;
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in v.as_array().ok_or_else(|| anyhow!("bpftool: not a list"))? {
        let Some(name) = p["name"].as_str().filter(|n| n.starts_with(PROGRAM_PREFIX)) else {
            continue;
        };
        let e = sums.entry(name.to_string()).or_default();
        e.0 += p["run_cnt"].as_u64().unwrap_or(0);
        e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(sums)
}

/// Turns the statistics on and puts the old setting back when dropped.
struct StatsOn {
    old: String,
}

impl StatsOn {
    fn new() -> Result<StatsOn> {
        let old =
            fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(StatsOn {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.old) {
            eprintln!("bench: restoring {STATS_SYSCTL} to {}: {e}", self.old);
        }
    }
}

/// The cost of every `dvr_*` program during one UDP run of `seconds` on `ends`, most runs
/// first.
pub fn measure(ends: &PathEnds, seconds: u32, dir: &Path) -> Result<Vec<ProgramCost>> {
    let on = StatsOn::new()?;
    let before = snapshot()?;
    let kpps = udp_rate(ends, 1, seconds, dir)?
        .first()
        .copied()
        .unwrap_or_default();
    let after = snapshot()?;
    drop(on);
    let packets = kpps * 1000.0 * f64::from(seconds);
    let mut costs: Vec<ProgramCost> = after
        .iter()
        .filter_map(|(name, &(runs, ns))| {
            let (runs0, ns0) = before.get(name).copied().unwrap_or_default();
            let runs = runs.saturating_sub(runs0);
            (runs > 0).then(|| ProgramCost {
                program: name.clone(),
                runs,
                runs_per_packet: if packets > 0.0 {
                    runs as f64 / packets
                } else {
                    0.0
                },
                ns_per_run: ns.saturating_sub(ns0) as f64 / runs as f64,
            })
        })
        .collect();
    costs.sort_by_key(|c| std::cmp::Reverse(c.runs));
    Ok(costs)
}
