//! The benchmark report: a text table, `results.json` and an SVG chart of the same figures.
//!
//! `results.json`:
//!
//! ```json
//! {
//!   "results": [{"path": "east-west", "datapath": "ebpf", "tcp_gbps": 9.1, "udp_kpps": 310.2,
//!                "p50_us": 21.3, "p99_us": 40.2, "tcp_runs": [...], "udp_runs": [...]}, ...],
//!   "control_plane": [{"fips": 1000, "datapath": "ebpf", "seconds": 0.01, "steps": {...}}, ...],
//!   "fip_change": [{"datapath": "ebpf", "changes": 40, "p50_ms": 21.0, "p99_ms": 30.1}, ...],
//!   "verifier": [{"program": "dvr_tap", "verified_insns": 151000}, ...],
//!   "security_groups": {
//!     "control_plane": {"ports": 10000, "groups": 10, "rules_per_group": 20,
//!                       "group_members": 1000, "local_ports": 1000, "policies": 10,
//!                       "parse_s": 0.05, "compile_s": 0.02, "write_s": 0.1, "seconds": 0.17,
//!                       "entries_written": 60000, "sg_remote_entries": 50000,
//!                       "sg_rules_entries": 1200},
//!     "rule_change": {"changes": 200, "p50_ms": 20.0, "p99_ms": 25.0, "max_ms": 30.0,
//!                     "compile_p50_ms": ..., "write_p50_ms": ..., "parse_p50_ms": ..., ...},
//!     "udp": [{"datapath": "ebpf", "rules": 0, "udp_kpps": 190.0, "udp_runs": [...]}, ...],
//!     "udp_ratio_1000_to_1": {"ebpf": 0.99, "namespace": 1.0}
//!   },
//!   "environment": {...}
//! }
//! ```
//!
//! `security_groups` is null when the `sg` part did not run; its `control_plane` and
//! `rule_change` are null when that timing failed, and `udp` rates of 0 rules are the port
//! without security groups.
//!
//! `path` is `east-west`, `ext-to-fip`, `fip-to-ext`, `snat` or `veth-pair` (the upper bound,
//! datapath `veth`); a path that failed its checks has null figures and an `error`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::control::CpTiming;
use super::measure::Figures;
use super::sg_control::SgControl;
use super::sg_datapath::{SgRate, VARIANTS};
use super::verifier::{self, Count};
use super::{Datapath, PathKind};

/// One path on one datapath: its figures, or why it was not measured.
#[derive(Clone, Debug)]
pub struct Row {
    pub path: PathKind,
    pub datapath: Datapath,
    pub result: Result<Figures, String>,
}

/// FIP change latency of one datapath.
#[derive(Clone, Debug)]
pub struct FipChange {
    pub datapath: Datapath,
    pub samples_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub control: Vec<CpTiming>,
    pub fip_change: Vec<FipChange>,
    /// Verified instruction count of each BPF program.
    pub verifier: Vec<Count>,
    /// Whether the `sg` part ran, its control-plane timing and its packet rates.
    pub sg_ran: bool,
    pub sg_control: Option<SgControl>,
    pub sg_rates: Vec<SgRate>,
    /// Steps that failed outside a path (a cloud that did not build, a timing that failed).
    pub failures: Vec<String>,
    pub environment: Value,
}

impl Report {
    fn figures(&self, path: PathKind, dp: Datapath) -> Option<&Figures> {
        self.rows
            .iter()
            .find(|r| r.path == path && r.datapath == dp)
            .and_then(|r| r.result.as_ref().ok())
    }

    fn upper_bound(&self) -> Option<&Figures> {
        self.figures(PathKind::VethPair, Datapath::Veth)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<11} {:<10} {:>11} {:>10} {:>9} {:>9}",
            "path", "datapath", "TCP Gbit/s", "UDP kpps", "p50 us", "p99 us"
        );
        let line =
            |s: &mut String, path: &str, dp: &str, f: Option<&Figures>, err: Option<&str>| match (
                f, err,
            ) {
                (Some(f), _) => {
                    let _ = writeln!(
                        s,
                        "{path:<11} {dp:<10} {:>11.2} {:>10.1} {:>9.1} {:>9.1}",
                        f.tcp_gbps, f.udp_kpps, f.p50_us, f.p99_us
                    );
                }
                (None, Some(e)) => {
                    let _ = writeln!(s, "{path:<11} {dp:<10} not measured: {e}");
                }
                (None, None) => {}
            };
        let ratio = |s: &mut String, label: &str, a: Option<&Figures>, b: Option<&Figures>| {
            if let (Some(a), Some(b)) = (a, b) {
                let r = |x: f64, y: f64| {
                    if y > 0.0 {
                        format!("{:.2}x", x / y)
                    } else {
                        "-".into()
                    }
                };
                let _ = writeln!(
                    s,
                    "{:<11} {label:<10} {:>11} {:>10} {:>9} {:>9}",
                    "",
                    r(a.tcp_gbps, b.tcp_gbps),
                    r(a.udp_kpps, b.udp_kpps),
                    r(a.p50_us, b.p50_us),
                    r(a.p99_us, b.p99_us)
                );
            }
        };
        for r in self.rows.iter().filter(|r| r.path == PathKind::VethPair) {
            line(
                &mut s,
                r.path.as_str(),
                r.datapath.as_str(),
                r.result.as_ref().ok(),
                r.result.as_ref().err().map(String::as_str),
            );
        }
        for path in PathKind::ROUTED {
            let mut first = true;
            for dp in [Datapath::Ebpf, Datapath::Namespace, Datapath::Floor] {
                if let Some(r) = self
                    .rows
                    .iter()
                    .find(|r| r.path == path && r.datapath == dp)
                {
                    let p = if first { path.as_str() } else { "" };
                    first = false;
                    line(
                        &mut s,
                        p,
                        dp.as_str(),
                        r.result.as_ref().ok(),
                        r.result.as_ref().err().map(String::as_str),
                    );
                }
            }
            let e = self.figures(path, Datapath::Ebpf);
            ratio(
                &mut s,
                "ebpf/ns",
                e,
                self.figures(path, Datapath::Namespace),
            );
            ratio(&mut s, "ebpf/veth", e, self.upper_bound());
            ratio(&mut s, "ebpf/floor", e, self.figures(path, Datapath::Floor));
        }
        let _ = writeln!(
            s,
            "(TCP and UDP: higher is better; latency: lower is better, so a ratio < 1 favours eBPF)"
        );
        if !self.control.is_empty() {
            let _ = writeln!(
                s,
                "\ncontrol plane: programming N FIPs and their ports into one host (seconds)"
            );
            let _ = writeln!(
                s,
                "{:>8} {:>10} {:>10} {:>9}",
                "FIPs", "ebpf", "namespace", "ns/ebpf"
            );
            let mut counts: Vec<usize> = self.control.iter().map(|c| c.fips).collect();
            counts.sort_unstable();
            counts.dedup();
            for n in counts {
                let get = |dp: Datapath| {
                    self.control
                        .iter()
                        .find(|c| c.fips == n && c.datapath == dp.as_str())
                        .map(|c| c.seconds)
                };
                let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
                let (e, ns) = (get(Datapath::Ebpf), get(Datapath::Namespace));
                let r = match (e, ns) {
                    (Some(e), Some(ns)) if e > 0.0 => format!("{:.1}x", ns / e),
                    _ => "-".into(),
                };
                let _ = writeln!(s, "{n:>8} {:>10} {:>10} {r:>9}", cell(e), cell(ns));
            }
        }
        if !self.fip_change.is_empty() {
            let _ = writeln!(s, "\none FIP change, state change to datapath ready (ms)");
            for c in &self.fip_change {
                let _ = writeln!(
                    s,
                    "{:<10} p50 {:>8.2}  p99 {:>8.2}  ({} changes)",
                    c.datapath.as_str(),
                    c.p50_ms,
                    c.p99_ms,
                    c.samples_ms.len()
                );
            }
        }
        self.bpf_table(&mut s);
        self.sg_table(&mut s);
        if !self.verifier.is_empty() {
            let _ = writeln!(s, "\nverifier: instructions walked per BPF program");
            s.push_str(&verifier::table(&self.verifier));
        }
        for f in &self.failures {
            let _ = writeln!(s, "FAILED: {f}");
        }
        s
    }

    /// What each BPF program cost per packet on each path (eBPF rows with statistics).
    fn bpf_table(&self, s: &mut String) {
        let rows: Vec<(PathKind, &Figures)> = PathKind::ROUTED
            .iter()
            .filter_map(|&p| Some((p, self.figures(p, Datapath::Ebpf)?)))
            .filter(|(_, f)| !f.bpf.is_empty())
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\nBPF programs per UDP packet (one more run with kernel.bpf_stats_enabled)"
        );
        let _ = writeln!(
            s,
            "{:<11} {:<13} {:>12} {:>10} {:>12}",
            "path", "program", "runs/packet", "ns/run", "ns/packet"
        );
        for (path, f) in rows {
            // Programs that ran for almost no packet (ARP, iperf3's control connection) are
            // in results.json only.
            for c in f.bpf.iter().filter(|c| c.runs_per_packet >= 0.01) {
                let _ = writeln!(
                    s,
                    "{:<11} {:<13} {:>12.2} {:>10.1} {:>12.1}",
                    path.as_str(),
                    c.program,
                    c.runs_per_packet,
                    c.ns_per_run,
                    c.runs_per_packet * c.ns_per_run
                );
            }
        }
    }

    /// The security group part of the table.
    fn sg_table(&self, s: &mut String) {
        if let Some(c) = &self.sg_control {
            let _ = writeln!(
                s,
                "\nsecurity groups, control plane: {} ports in {} groups of {} members, {} rules \
                 each; {} ports on the host ({} policies)",
                c.ports, c.groups, c.group_members, c.rules_per_group, c.local_ports, c.policies
            );
            let _ = writeln!(s, "  parse+validate {:>8.3} s", c.parse_s);
            let _ = writeln!(
                s,
                "  compile        {:>8.3} s  (DVR_SG_REMOTE {} entries, DVR_SG_RULES {})",
                c.compile_s, c.sg_remote, c.sg_rules
            );
            let _ = writeln!(
                s,
                "  map writes     {:>8.3} s  ({} entries, all maps)",
                c.write_s, c.upserted
            );
            let _ = writeln!(
                s,
                "  total          {:>8.3} s",
                c.parse_s + c.compile_s + c.write_s
            );
            let p = |v: &[f64], q: f64| super::percentile(v, q).unwrap_or_default();
            let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "one rule change, compile + map writes (ms): p50 {:.2}  p99 {:.2}  max {:.2}  ({} changes)",
                p(&c.change_ms, 50.0),
                p(&c.change_ms, 99.0),
                max(&c.change_ms),
                c.change_ms.len()
            );
            let _ = writeln!(
                s,
                "  of which compile p50 {:.2} / p99 {:.2}, map writes p50 {:.2} / p99 {:.2}; \
                 parsing the changed state (not included) p50 {:.2} / p99 {:.2}",
                p(&c.change_compile_ms, 50.0),
                p(&c.change_compile_ms, 99.0),
                p(&c.change_write_ms, 50.0),
                p(&c.change_write_ms, 99.0),
                p(&c.change_parse_ms, 50.0),
                p(&c.change_parse_ms, 99.0),
            );
        }
        if self.sg_rates.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\nsecurity groups, data path: UDP kpps east-west to a port whose group has N rules"
        );
        let _ = writeln!(
            s,
            "{:<10} {:>10} {:>10} {:>11} {:>8}",
            "datapath", "no groups", "1 rule", "1000 rules", "1000/1"
        );
        for dp in [Datapath::Ebpf, Datapath::Namespace] {
            let rates: Vec<&SgRate> = self.sg_rates.iter().filter(|r| r.datapath == dp).collect();
            if rates.is_empty() {
                continue;
            }
            let cell = |n: usize| {
                rates
                    .iter()
                    .find(|r| r.rules == n)
                    .and_then(|r| r.kpps())
                    .map_or("-".into(), |v| format!("{v:.1}"))
            };
            let ratio = self.sg_ratio(dp).map_or("-".into(), |r| format!("{r:.3}x"));
            let _ = writeln!(
                s,
                "{:<10} {:>10} {:>10} {:>11} {:>8}",
                dp.as_str(),
                cell(0),
                cell(1),
                cell(1000),
                ratio
            );
            let ns = |n: usize| {
                rates
                    .iter()
                    .find(|r| r.rules == n)
                    .and_then(|r| r.prog_ns())
            };
            if ns(1).is_some() || ns(1000).is_some() {
                let cell = |n: usize| ns(n).map_or("-".into(), |v| format!("{v:.0}"));
                let ratio = self
                    .sg_prog_ratio()
                    .filter(|_| dp == Datapath::Ebpf)
                    .map_or("-".into(), |r| format!("{r:.3}x"));
                let _ = writeln!(
                    s,
                    "{:<10} {:>10} {:>10} {:>11} {:>8}",
                    "  ns/pkt",
                    cell(0),
                    cell(1),
                    cell(1000),
                    ratio
                );
            }
            for r in rates {
                if let Err(e) = &r.result {
                    let _ = writeln!(s, "  {} rules not measured: {e}", r.rules);
                }
            }
        }
        let _ = writeln!(
            s,
            "(1000/1: the 1,000-rule figure over the 1-rule one, median of the rounds' ratios; \
             the target is within 10%. \
             ns/pkt: run time of the receiving tap's dvr_tap_out, where ingress rules are \
             checked, per packet, from the kernel's BPF statistics)"
        );
    }

    /// The 1,000-rule rate over the 1-rule rate of a datapath: the median of the per-round
    /// ratios (the variants are measured in rounds, so a ratio compares runs made under the
    /// same load), or the ratio of the medians when the rounds do not pair up.
    pub fn sg_ratio(&self, dp: Datapath) -> Option<f64> {
        let runs = |n: usize| {
            self.sg_rates
                .iter()
                .find(|r| r.datapath == dp && r.rules == n)
                .and_then(|r| r.result.as_ref().ok())
                .map(Vec::as_slice)
        };
        paired_ratio(runs(1)?, runs(1000)?)
    }

    /// The 1,000-rule cost of `dvr_tap_out` per packet over the 1-rule cost (as
    /// [`Report::sg_ratio`]).
    pub fn sg_prog_ratio(&self) -> Option<f64> {
        let runs = |n: usize| {
            self.sg_rates
                .iter()
                .find(|r| r.datapath == Datapath::Ebpf && r.rules == n && r.result.is_ok())
                .map(|r| r.prog_ns.as_slice())
        };
        paired_ratio(runs(1)?, runs(1000)?)
    }

    fn sg_json(&self) -> Value {
        if !self.sg_ran {
            return Value::Null;
        }
        let control = self.sg_control.as_ref().map(|c| {
            json!({
                "ports": c.ports,
                "groups": c.groups,
                "rules_per_group": c.rules_per_group,
                "group_members": c.group_members,
                "local_ports": c.local_ports,
                "policies": c.policies,
                "parse_s": round(c.parse_s, 4),
                "compile_s": round(c.compile_s, 4),
                "write_s": round(c.write_s, 4),
                "seconds": round(c.parse_s + c.compile_s + c.write_s, 4),
                "entries_written": c.upserted,
                "sg_remote_entries": c.sg_remote,
                "sg_rules_entries": c.sg_rules,
            })
        });
        let change = self
            .sg_control
            .as_ref()
            .filter(|c| !c.change_ms.is_empty())
            .map(|c| {
                let p = |v: &[f64], q: f64| round(super::percentile(v, q).unwrap_or_default(), 3);
                json!({
                    "changes": c.change_ms.len(),
                    "p50_ms": p(&c.change_ms, 50.0),
                    "p99_ms": p(&c.change_ms, 99.0),
                    "max_ms": round(c.change_ms.iter().copied().fold(0.0, f64::max), 3),
                    "compile_p50_ms": p(&c.change_compile_ms, 50.0),
                    "compile_p99_ms": p(&c.change_compile_ms, 99.0),
                    "write_p50_ms": p(&c.change_write_ms, 50.0),
                    "write_p99_ms": p(&c.change_write_ms, 99.0),
                    "parse_p50_ms": p(&c.change_parse_ms, 50.0),
                    "parse_p99_ms": p(&c.change_parse_ms, 99.0),
                    "entries_written": c.change_upserted,
                    "entries_deleted": c.change_deleted,
                    "samples_ms": c.change_ms.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
                })
            });
        let udp: Vec<Value> = self
            .sg_rates
            .iter()
            .map(|r| match &r.result {
                Ok(v) => json!({
                    "datapath": r.datapath.as_str(),
                    "rules": r.rules,
                    "udp_kpps": r.kpps().map(|k| round(k, 1)),
                    "udp_runs": v.iter().map(|k| round(*k, 1)).collect::<Vec<_>>(),
                    "dvr_tap_out_ns_per_packet": r.prog_ns().map(|k| round(k, 1)),
                    "dvr_tap_out_ns_runs": r.prog_ns.iter().map(|k| round(*k, 1)).collect::<Vec<_>>(),
                }),
                Err(e) => json!({
                    "datapath": r.datapath.as_str(),
                    "rules": r.rules,
                    "udp_kpps": null,
                    "error": e,
                }),
            })
            .collect();
        let ratios: serde_json::Map<String, Value> = [Datapath::Ebpf, Datapath::Namespace]
            .iter()
            .filter_map(|&dp| Some((dp.as_str().to_string(), json!(round(self.sg_ratio(dp)?, 4)))))
            .collect();
        json!({
            "control_plane": control,
            "rule_change": change,
            "udp": udp,
            "udp_ratio_1000_to_1": ratios,
            "dvr_tap_out_ratio_1000_to_1": self.sg_prog_ratio().map(|r| round(r, 4)),
        })
    }

    pub fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .rows
            .iter()
            .map(|r| match &r.result {
                Ok(f) => json!({
                    "path": r.path.as_str(),
                    "datapath": r.datapath.as_str(),
                    "tcp_gbps": round(f.tcp_gbps, 3),
                    "udp_kpps": round(f.udp_kpps, 1),
                    "p50_us": round(f.p50_us, 2),
                    "p99_us": round(f.p99_us, 2),
                    "tcp_runs": f.tcp_runs.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
                    "udp_runs": f.udp_runs.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
                    "bpf_programs": f.bpf.iter().map(|c| json!({
                        "program": c.program,
                        "runs": c.runs,
                        "runs_per_packet": round(c.runs_per_packet, 3),
                        "ns_per_run": round(c.ns_per_run, 1),
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => json!({
                    "path": r.path.as_str(),
                    "datapath": r.datapath.as_str(),
                    "tcp_gbps": null, "udp_kpps": null, "p50_us": null, "p99_us": null,
                    "error": e,
                }),
            })
            .collect();
        let control: Vec<Value> = self
            .control
            .iter()
            .map(|c| {
                let steps: serde_json::Map<String, Value> = c
                    .steps
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(round(*v, 4))))
                    .collect();
                json!({
                    "fips": c.fips,
                    "datapath": c.datapath,
                    "seconds": round(c.seconds, 4),
                    "steps": steps,
                })
            })
            .collect();
        let changes: Vec<Value> = self
            .fip_change
            .iter()
            .map(|c| {
                json!({
                    "datapath": c.datapath.as_str(),
                    "changes": c.samples_ms.len(),
                    "p50_ms": round(c.p50_ms, 3),
                    "p99_ms": round(c.p99_ms, 3),
                    "samples_ms": c.samples_ms.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "results": results,
            "control_plane": control,
            "fip_change": changes,
            "verifier": self
                .verifier
                .iter()
                .map(|c| json!({"program": c.program, "verified_insns": c.verified_insns}))
                .collect::<Vec<_>>(),
            "security_groups": self.sg_json(),
            "failures": self.failures,
            "environment": self.environment,
        })
    }

    /// Writes `results.json` and `results.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&self.to_json())?;
        fs::write(dir.join("results.json"), json + "\n")
            .with_context(|| format!("writing {}/results.json", dir.display()))?;
        fs::write(dir.join("results.svg"), self.svg())
            .with_context(|| format!("writing {}/results.svg", dir.display()))?;
        Ok(())
    }

    /// Four bar panels (TCP, UDP, p50, p99: eBPF and namespace per path, the veth upper bound
    /// as a dashed line), the control-plane timings (log scale) and the FIP change latency.
    pub fn svg(&self) -> String {
        const W: f64 = 1000.0;
        const PW: f64 = 470.0;
        const PH: f64 = 230.0;
        // A fourth row for the security group part when it ran.
        let h = if self.sg_ran { 1110 } else { 850 };
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" \
             viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"20\" y=\"28\" font-size=\"18\" font-weight=\"bold\">eBPF DVR vs Neutron \
             DVR namespace datapath</text>\n"
        );
        legend(&mut s, 520.0, 14.0);
        let env = &self.environment;
        let _ = writeln!(
            s,
            "<text x=\"20\" y=\"44\" font-size=\"11\" fill=\"#555\">{}</text>",
            esc(&format!(
                "{} pass, {}, kernel {}, {} CPUs, agent {} build",
                if env["quick"].as_bool() == Some(true) {
                    "quick"
                } else {
                    "full"
                },
                env["date"].as_str().unwrap_or("?"),
                env["kernel"].as_str().unwrap_or("?"),
                env["cpus"],
                env["agent_build"].as_str().unwrap_or("?"),
            ))
        );
        type Pick = fn(&Figures) -> f64;
        let has_floor = self.rows.iter().any(|r| r.datapath == Datapath::Floor);
        let panels: [(&str, Pick); 4] = [
            ("TCP throughput, Gbit/s (higher is better)", |f| f.tcp_gbps),
            (
                "UDP 64-byte frames, kpps received (higher is better)",
                |f| f.udp_kpps,
            ),
            ("request/response p50, us (lower is better)", |f| f.p50_us),
            ("request/response p99, us (lower is better)", |f| f.p99_us),
        ];
        for (i, (title, pick)) in panels.iter().enumerate() {
            let x = 20.0 + (i % 2) as f64 * (PW + 20.0);
            let y = 56.0 + (i / 2) as f64 * (PH + 30.0);
            let groups: Vec<Group<'_>> = PathKind::ROUTED
                .iter()
                .map(|&p| {
                    (
                        p.as_str(),
                        [Datapath::Ebpf, Datapath::Floor, Datapath::Namespace]
                            .iter()
                            .filter(|&&dp| dp != Datapath::Floor || has_floor)
                            .map(|&dp| (dp, self.figures(p, dp).map(pick)))
                            .collect(),
                    )
                })
                .collect();
            bar_panel(
                &mut s,
                x,
                y,
                PW,
                PH,
                title,
                &groups,
                self.upper_bound().map(pick),
                false,
            );
        }
        // Control plane.
        let mut counts: Vec<usize> = self.control.iter().map(|c| c.fips).collect();
        counts.sort_unstable();
        counts.dedup();
        let labels: Vec<String> = counts.iter().map(|n| format!("{n} FIPs")).collect();
        let groups: Vec<Group<'_>> = counts
            .iter()
            .zip(&labels)
            .map(|(&n, l)| {
                (
                    l.as_str(),
                    [Datapath::Ebpf, Datapath::Namespace]
                        .iter()
                        .map(|&dp| {
                            (
                                dp,
                                self.control
                                    .iter()
                                    .find(|c| c.fips == n && c.datapath == dp.as_str())
                                    .map(|c| c.seconds),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        let y = 56.0 + 2.0 * (PH + 30.0);
        bar_panel(
            &mut s,
            20.0,
            y,
            PW,
            PH,
            "programming N FIPs into a host, seconds (log scale)",
            &groups,
            None,
            true,
        );
        let changes: Vec<Group<'_>> = ["p50", "p99"]
            .iter()
            .map(|&q| {
                (
                    q,
                    [Datapath::Ebpf, Datapath::Namespace]
                        .iter()
                        .map(|&dp| {
                            let c = self.fip_change.iter().find(|c| c.datapath == dp);
                            (dp, c.map(|c| if q == "p50" { c.p50_ms } else { c.p99_ms }))
                        })
                        .collect(),
                )
            })
            .collect();
        bar_panel(
            &mut s,
            20.0 + PW + 20.0,
            y,
            PW,
            PH,
            "one FIP change until the datapath is ready, ms",
            &changes,
            None,
            false,
        );
        if self.sg_ran {
            self.sg_svg(&mut s, 56.0 + 3.0 * (PH + 30.0), PW, PH);
        }
        s.push_str("</svg>\n");
        s
    }
}

impl Report {
    /// The security group row of the chart: UDP rate per rule count, rule change latency.
    fn sg_svg(&self, s: &mut String, y: f64, pw: f64, ph: f64) {
        let labels = ["no groups", "1 rule", "1000 rules"];
        let rates: Vec<Group<'_>> = VARIANTS
            .iter()
            .zip(labels)
            .map(|(&n, l)| {
                (
                    l,
                    [Datapath::Ebpf, Datapath::Namespace]
                        .iter()
                        .map(|&dp| {
                            let r = self
                                .sg_rates
                                .iter()
                                .find(|r| r.datapath == dp && r.rules == n);
                            (dp, r.and_then(SgRate::kpps))
                        })
                        .collect(),
                )
            })
            .collect();
        bar_panel(
            s,
            20.0,
            y,
            pw,
            ph,
            "security groups: UDP kpps to a port whose group has N rules",
            &rates,
            None,
            false,
        );
        let c = self.sg_control.as_ref();
        let q = |f: fn(&[f64]) -> Option<f64>| c.and_then(|c| f(&c.change_ms));
        let change: Vec<Group<'_>> = vec![
            (
                "p50",
                vec![(Datapath::Ebpf, q(|v| super::percentile(v, 50.0)))],
            ),
            (
                "p99",
                vec![(Datapath::Ebpf, q(|v| super::percentile(v, 99.0)))],
            ),
            (
                "max",
                vec![(Datapath::Ebpf, q(|v| v.iter().copied().reduce(f64::max)))],
            ),
        ];
        bar_panel(
            s,
            20.0 + pw + 20.0,
            y,
            pw,
            ph,
            "security groups: one rule change (compile + map writes), ms",
            &change,
            None,
            false,
        );
    }
}

/// `many / one`: the median of the ratios of runs made in the same round when both have one
/// run per round, else the ratio of their medians.
fn paired_ratio(one: &[f64], many: &[f64]) -> Option<f64> {
    if one.len() == many.len() && one.iter().all(|v| *v > 0.0) {
        let r: Vec<f64> = one.iter().zip(many).map(|(a, b)| b / a).collect();
        return super::median(&r);
    }
    let (a, b) = (super::median(one)?, super::median(many)?);
    (a > 0.0).then(|| b / a)
}

/// One group of bars: its label and one optional value per datapath.
type Group<'a> = (&'a str, Vec<(Datapath, Option<f64>)>);

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn color(dp: Datapath) -> &'static str {
    match dp {
        Datapath::Ebpf => "#2b8cbe",
        Datapath::Namespace => "#e6550d",
        Datapath::Veth => "#636363",
        Datapath::Floor => "#31a354",
    }
}

fn legend(s: &mut String, x: f64, y: f64) {
    let items = [
        (Datapath::Ebpf, "eBPF"),
        (Datapath::Floor, "floor"),
        (Datapath::Namespace, "namespace (Neutron DVR)"),
    ];
    let mut cx = x;
    for (dp, label) in items {
        let _ = writeln!(
            s,
            "<rect x=\"{cx}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{label}</text>",
            color(dp),
            cx + 16.0,
            y + 11.0
        );
        cx += 16.0 + 7.0 * label.len() as f64 + 14.0;
    }
    let _ = writeln!(
        s,
        "<line x1=\"{cx}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-dasharray=\"5,3\" \
         stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">veth pair</text>",
        y + 6.0,
        cx + 20.0,
        y + 6.0,
        color(Datapath::Veth),
        cx + 24.0,
        y + 11.0
    );
}

/// One panel of grouped bars with value labels; `reference` is drawn as a dashed line.
#[expect(
    clippy::too_many_arguments,
    reason = "a drawing primitive: position, size, data"
)]
fn bar_panel(
    s: &mut String,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: &str,
    groups: &[Group<'_>],
    reference: Option<f64>,
    log: bool,
) {
    let _ = writeln!(
        s,
        "<g><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"none\" \
         stroke=\"#ccc\"/><text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>",
        x + 8.0,
        y + 16.0,
        esc(title)
    );
    let values = groups
        .iter()
        .flat_map(|(_, v)| v.iter().filter_map(|(_, v)| *v))
        .chain(reference);
    let max = values.clone().fold(0.0f64, f64::max);
    let min_pos = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    if max <= 0.0 || groups.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"#999\">no data</text></g>",
            x + w / 2.0 - 25.0,
            y + h / 2.0
        );
        return;
    }
    let (top, bottom) = (y + 30.0, y + h - 28.0);
    let plot_h = bottom - top - 14.0;
    // Log scale: one decade below the smallest value to just above the largest.
    let lo = if log {
        (min_pos / 10.0).log10().floor()
    } else {
        0.0
    };
    let hi = if log {
        max.log10().ceil().max(lo + 1.0)
    } else {
        max * 1.1
    };
    let scale = |v: f64| -> f64 {
        let frac = if log {
            (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo)
        } else {
            v / hi
        };
        frac.clamp(0.0, 1.0) * plot_h
    };
    let gw = (w - 20.0) / groups.len() as f64;
    let bw = (gw - 30.0) / 2.0;
    for (gi, (label, bars)) in groups.iter().enumerate() {
        let gx = x + 10.0 + gi as f64 * gw;
        for (bi, (dp, v)) in bars.iter().enumerate() {
            let bx = gx + 15.0 + bi as f64 * bw;
            match v {
                Some(v) => {
                    let bh = scale(*v);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" \
                         fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
                         font-size=\"10\">{}</text>",
                        bottom - bh,
                        bw - 4.0,
                        color(*dp),
                        bx + (bw - 4.0) / 2.0,
                        bottom - bh - 3.0,
                        fmt_value(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" \
                         fill=\"#999\">n/a</text>",
                        bx + (bw - 4.0) / 2.0,
                        bottom - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + gw / 2.0,
            bottom + 16.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#333\"/>",
        x + 10.0,
        x + w - 10.0
    );
    if let Some(r) = reference {
        let ry = bottom - scale(r);
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ry:.1}\" x2=\"{}\" y2=\"{ry:.1}\" stroke=\"{}\" \
             stroke-dasharray=\"5,3\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\" \
             text-anchor=\"end\" font-size=\"11\" fill=\"{}\">veth pair: {}</text>",
            x + 10.0,
            x + w - 10.0,
            color(Datapath::Veth),
            x + w - 8.0,
            y + 16.0,
            color(Datapath::Veth),
            fmt_value(r)
        );
    }
    s.push_str("</g>\n");
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(x: f64) -> Figures {
        Figures {
            tcp_gbps: x,
            udp_kpps: 100.0 * x,
            p50_us: 10.0 / x,
            p99_us: 20.0 / x,
            tcp_runs: vec![x],
            udp_runs: vec![100.0 * x],
            bpf: Vec::new(),
        }
    }

    #[test]
    fn table_json_and_svg() {
        let mut r = Report::default();
        r.rows.push(Row {
            path: PathKind::VethPair,
            datapath: Datapath::Veth,
            result: Ok(figures(4.0)),
        });
        r.rows.push(Row {
            path: PathKind::EastWest,
            datapath: Datapath::Ebpf,
            result: Ok(Figures {
                bpf: vec![crate::bench::bpf_stats::ProgramCost {
                    program: "dvr_tap".into(),
                    runs: 1000,
                    runs_per_packet: 1.0,
                    ns_per_run: 150.0,
                }],
                ..figures(2.0)
            }),
        });
        r.rows.push(Row {
            path: PathKind::EastWest,
            datapath: Datapath::Namespace,
            result: Ok(figures(1.0)),
        });
        r.rows.push(Row {
            path: PathKind::EastWest,
            datapath: Datapath::Floor,
            result: Ok(figures(2.5)),
        });
        r.rows.push(Row {
            path: PathKind::Snat,
            datapath: Datapath::Ebpf,
            result: Err("ping failed".into()),
        });
        r.control.push(CpTiming {
            fips: 1000,
            datapath: "ebpf",
            seconds: 0.01,
            steps: vec![],
        });
        r.control.push(CpTiming {
            fips: 1000,
            datapath: "namespace",
            seconds: 0.5,
            steps: vec![],
        });
        let t = r.table();
        assert!(t.contains("ebpf/ns"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
        assert!(t.contains("0.50x"), "{t}");
        assert!(t.contains("not measured: ping failed"), "{t}");
        assert!(t.contains("50.0x"), "{t}");
        assert!(t.contains("ebpf/floor"), "{t}");
        assert!(t.contains("0.80x"), "{t}");
        assert!(
            t.contains("east-west   dvr_tap               1.00      150.0        150.0"),
            "{t}"
        );
        let j = r.to_json();
        assert_eq!(j["results"][1]["path"], "east-west");
        assert_eq!(j["results"][1]["tcp_gbps"], 2.0);
        assert_eq!(j["results"][1]["bpf_programs"][0]["ns_per_run"], 150.0);
        assert_eq!(j["results"][3]["datapath"], "floor");
        assert!(j["results"][4]["tcp_gbps"].is_null());
        assert_eq!(j["control_plane"][1]["seconds"], 0.5);
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(r.to_json()["security_groups"].is_null());
    }

    #[test]
    fn paired_ratios() {
        assert_eq!(
            paired_ratio(&[100.0, 50.0, 80.0], &[90.0, 50.0, 40.0]),
            Some(0.9)
        );
        assert_eq!(paired_ratio(&[100.0, 60.0], &[80.0]), Some(1.0));
        assert_eq!(paired_ratio(&[], &[80.0]), None);
    }

    #[test]
    fn security_group_part() {
        let rate = |datapath, rules, kpps: f64, ns: Option<f64>| SgRate {
            datapath,
            rules,
            result: Ok(vec![kpps]),
            prog_ns: ns.into_iter().collect(),
        };
        let r = Report {
            sg_ran: true,
            sg_control: Some(SgControl {
                ports: 10_000,
                groups: 10,
                group_members: 1000,
                rules_per_group: 20,
                local_ports: 1000,
                policies: 10,
                parse_s: 0.04,
                compile_s: 0.03,
                write_s: 0.1,
                sg_remote: 50_000,
                sg_rules: 1_000,
                change_ms: vec![1.0, 2.0, 3.0],
                change_compile_ms: vec![0.5; 3],
                change_write_ms: vec![0.5; 3],
                change_parse_ms: vec![4.0; 3],
                ..SgControl::default()
            }),
            sg_rates: vec![
                rate(Datapath::Ebpf, 0, 100.0, Some(80.0)),
                rate(Datapath::Ebpf, 1, 100.0, Some(100.0)),
                rate(Datapath::Ebpf, 1000, 95.0, Some(150.0)),
                rate(Datapath::Namespace, 1, 80.0, None),
                SgRate {
                    datapath: Datapath::Namespace,
                    rules: 1000,
                    result: Err("iptables-restore failed".into()),
                    prog_ns: Vec::new(),
                },
            ],
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("DVR_SG_REMOTE 50000 entries"), "{t}");
        assert!(t.contains("max 3.00"), "{t}");
        assert!(t.contains("0.950x"), "{t}");
        assert!(t.contains("1.500x"), "{t}");
        assert!(
            t.contains("1000 rules not measured: iptables-restore failed"),
            "{t}"
        );
        let j = r.to_json();
        let sg = &j["security_groups"];
        assert_eq!(sg["control_plane"]["sg_remote_entries"], 50_000);
        assert_eq!(sg["rule_change"]["max_ms"], 3.0);
        assert_eq!(sg["udp_ratio_1000_to_1"]["ebpf"], 0.95);
        assert!(sg["udp_ratio_1000_to_1"].get("namespace").is_none());
        assert_eq!(sg["dvr_tap_out_ratio_1000_to_1"], 1.5);
        assert_eq!(sg["udp"][4]["error"], "iptables-restore failed");
        assert!(r.svg().contains("height=\"1110\""));
    }
}
