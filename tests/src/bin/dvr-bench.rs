//! dvr-bench: this project's eBPF datapath against Neutron DVR's namespace datapath and the
//! machine's upper bound (one veth pair), in network namespaces. See `dvr_tests::bench`.
//!
//! ```text
//! dvr-bench [--quick] [--out DIR] [--skip verifier,veth,ebpf,floor,namespace,control,sg] [--fips N,..] [--hold S] [--agent-args ARGS] [--xdp-veths]
//! dvr-bench verifier [OBJECT]
//! dvr-bench scale [--sizes N,..] [--runs N] [--modes etcd,file] [--quick] [--out DIR]
//! dvr-bench scale [--out DIR] --from-json FILE
//! ```
//!
//! Builds each cloud, runs the same connectivity checks on every path, measures TCP
//! throughput, 64-byte UDP packet rate and request/response latency per path, then the
//! control-plane timings, then the security group part (`sg`: 10,000 ports in groups of
//! 1,000 members compiled and written, one rule change, and the UDP rate to a port with 1
//! vs 1,000 rules on both datapaths, `dvr_tests::bench::sg_control` and `sg_datapath`);
//! prints one table and writes `DIR/results.json` and
//! `DIR/results.svg` (DIR defaults to `bench`). Exits non-zero if anything failed (what
//! could be measured is still written). Needs root, bpffs, iperf3, sockperf, iptables and
//! the agent binaries (`$DVR_BIN_DIR`, else next to this binary). `cargo xtask bench` builds
//! and runs it.
//!
//! `dvr-bench verifier` only prints the verifier instruction count of each BPF program (of
//! the embedded object, or of the `dvr` object file OBJECT) and exits: see
//! `dvr_tests::bench::verifier`. A full run records the same counts first.
//!
//! `dvr-bench scale` only measures the cluster control plane at cloud scale (10,000, 50,000
//! and 100,000 ports by default) and writes `DIR/scale.json` and `DIR/scale.svg`: see
//! `dvr_tests::bench::scale`.
//!
//! `--skip` leaves parts out, `--fips` replaces the FIP counts of the control-plane timing,
//! `--hold S` keeps each cloud S seconds after its measurements (namespaces printed) for
//! inspection, `--agent-args ARGS` runs the eBPF cloud's agents with ARGS too (e.g.
//! `--tunnel-decap device`, to measure the VXLAN device's receive path; written as `ebpf`).
//! `--xdp-veths` readies the veth peers of the eBPF and floor clouds for XDP (GRO on; the
//! external bridge's ports send whole checksums, without transmit checksum offload) and
//! runs the agents with `--xdp-veth-peers`, so the external interface's XDP program
//! serves the floating IPs (by default, as the agent does with a veth, TC serves them). SIGINT/SIGTERM stop the run between steps and tear everything down.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use dvr_tests::bench::baseline::{NeutronDvr, Spec};
use dvr_tests::bench::check::check_path;
use dvr_tests::bench::measure::measure_path;
use dvr_tests::bench::report::{FipChange, Report, Row};
use dvr_tests::bench::sg_control::SgCloud;
use dvr_tests::bench::{
    Datapath, PathEnds, Settings, bail_if_interrupted, bpf_stats, control, ebpf, floor,
    install_signal_handlers, percentile, scale, sg_control, sg_datapath, verifier, veth,
};
use dvr_tests::cmd::{find_in_path, run_with_deadline, stdout};
use dvr_tests::{check_preconditions, locate_bins};
use serde_json::json;

/// Tools the benchmarks run, beyond the test bed's.
const BENCH_TOOLS: &[&str] = &[
    "iperf3",
    "sockperf",
    "iptables-restore",
    "iptables-save",
    "ebtables",
    "bridge",
    "taskset",
];

/// The parts `--skip` can leave out, in run order.
const PARTS: &[&str] = &[
    "verifier",
    "veth",
    "ebpf",
    "floor",
    "namespace",
    "control",
    "sg",
];

struct Args {
    quick: bool,
    out: PathBuf,
    skip: BTreeSet<String>,
    /// Keep each cloud this long after its paths were checked and measured (for inspection).
    hold: Option<std::time::Duration>,
    /// `--fips`: FIP counts for the control-plane timing instead of the pass's.
    fips: Option<Vec<usize>>,
    /// `--agent-args`: extra arguments for every agent of the eBPF cloud.
    agent_args: Vec<String>,
    /// `--xdp-veths`: the eBPF and floor clouds' veth peers readied for XDP, so the
    /// external interface's XDP program runs.
    xdp_veths: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("bench"),
        skip: BTreeSet::new(),
        hold: None,
        fips: None,
        agent_args: Vec::new(),
        xdp_veths: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--out" => {
                a.out = it
                    .next()
                    .ok_or_else(|| anyhow!("--out needs a directory"))?
                    .into()
            }
            "--skip" => {
                let v = it.next().ok_or_else(|| anyhow!("--skip needs a list"))?;
                for s in v.split(',') {
                    if !PARTS.contains(&s) {
                        bail!("--skip: unknown part {s:?} ({})", PARTS.join(", "));
                    }
                    a.skip.insert(s.to_string());
                }
            }
            "--agent-args" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow!("--agent-args needs a list"))?;
                a.agent_args = v.split_whitespace().map(str::to_string).collect();
            }
            "--xdp-veths" => a.xdp_veths = true,
            "--hold" => {
                let v = it.next().ok_or_else(|| anyhow!("--hold needs seconds"))?;
                a.hold = Some(std::time::Duration::from_secs(v.parse().context("--hold")?));
            }
            "--fips" => {
                let v = it.next().ok_or_else(|| anyhow!("--fips needs a list"))?;
                let counts = v
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("--fips: a comma-separated list of counts")?;
                a.fips = Some(counts);
            }
            "-h" | "--help" => {
                println!(
                    "dvr-bench [--quick] [--out DIR] [--skip verifier,veth,ebpf,floor,namespace,control,sg] [--fips N,..] [--hold SECONDS] [--agent-args ARGS] [--xdp-veths]\n\
                     dvr-bench verifier [OBJECT]\n\
                     eBPF DVR vs Neutron DVR's namespace datapath vs one veth pair; writes \
                     DIR/results.json and DIR/results.svg (default DIR: bench). `verifier`: only \
                     the verified instruction count of each BPF program"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

/// `dvr-bench verifier [OBJECT]`: the verifier's instruction counts, nothing else.
fn verifier_only(object: Option<String>) -> ExitCode {
    let counts = match object {
        Some(path) => std::fs::read(&path)
            .with_context(|| format!("reading {path}"))
            .and_then(|bytes| verifier::counts(&bytes)),
        None => verifier::embedded(),
    };
    match counts {
        Ok(c) => {
            print!("{}", verifier::table(&c));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dvr-bench verifier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dvr-bench scale [--sizes N,..] [--runs N] [--modes etcd,file] [--out DIR]`: the
/// cluster control plane at cloud scale (`dvr_tests::bench::scale`); writes DIR/scale.json
/// and DIR/scale.svg. `--from-json FILE` (after `--out`) only renders an earlier run's.
fn scale_only(args: &[String]) -> Result<()> {
    let mut sizes = vec![10_000, 50_000, 100_000];
    let mut runs = 50;
    let mut modes = vec!["etcd".to_string(), "file".to_string()];
    let mut out = PathBuf::from("bench");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => {
                sizes = value()?
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("--sizes: a comma-separated list of port counts")?
            }
            "--runs" => runs = value()?.parse().context("--runs")?,
            "--modes" => modes = value()?.split(',').map(str::to_string).collect(),
            "--out" => out = value()?.into(),
            "--quick" => sizes = vec![10_000],
            "--from-json" => {
                // Only render the table and chart of an earlier run.
                let path = PathBuf::from(value()?);
                let figures: Vec<scale::SizeFigures> = serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| path.display().to_string())?,
                )?;
                std::fs::write(out.join("scale.svg"), scale::svg(&figures))?;
                println!("{}", scale::table(&figures));
                return Ok(());
            }
            other => bail!("scale: unknown argument {other:?}"),
        }
    }
    preconditions()?;
    dvr_tests::require_etcd_preconditions();
    let modes: Vec<&str> = modes.iter().map(String::as_str).collect();
    let mut figures = Vec::new();
    for &ports in &sizes {
        bail_if_interrupted()?;
        eprintln!("dvr-bench scale: {ports} ports ({modes:?})");
        let f = scale::run_size(ports, runs, &modes)
            .with_context(|| format!("the {ports}-port cloud"))?;
        eprintln!("{}", scale::table(std::slice::from_ref(&f)));
        figures.push(f);
    }
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("scale.json"), serde_json::to_vec_pretty(&figures)?)?;
    std::fs::write(out.join("scale.svg"), scale::svg(&figures))?;
    println!("{}", scale::table(&figures));
    println!(
        "written: {} and {}",
        out.join("scale.json").display(),
        out.join("scale.svg").display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    match argv.next().as_deref() {
        Some("verifier") => return verifier_only(argv.next()),
        Some("scale") => {
            install_signal_handlers();
            let rest: Vec<String> = argv.collect();
            return match scale_only(&rest) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dvr-bench scale: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dvr-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    install_signal_handlers();
    match run(&args) {
        Ok(report) => {
            println!("\n{}", report.table());
            println!(
                "written: {} and {}",
                args.out.join("results.json").display(),
                args.out.join("results.svg").display()
            );
            let failed = !report.failures.is_empty()
                || report.rows.iter().any(|r| r.result.is_err())
                || report.sg_rates.iter().any(|r| r.result.is_err());
            if failed {
                println!("dvr-bench: some steps FAILED (see above)");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("dvr-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn preconditions() -> Result<()> {
    check_preconditions(true)?;
    let missing: Vec<&str> = BENCH_TOOLS
        .iter()
        .copied()
        .filter(|t| find_in_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the benchmarks cannot run here: not in PATH: {} (cargo xtask setup installs them)",
            missing.join(", ")
        );
    }
    // check_preconditions has deleted the namespaces of dead runs; the pins and temp dirs
    // a killed run left (`dvrb-<pid>-...`) go here.
    for dir in [dvr_tests::cloud::bpffs_root(), std::env::temp_dir()] {
        dvr_tests::bench::reap_stale_dirs(&dir);
    }
    Ok(())
}

fn first_line(program: &str, args: &[&str]) -> String {
    run_with_deadline(program, args, std::time::Duration::from_secs(10))
        .map(|o| {
            let t = stdout(&o);
            let t = if t.trim().is_empty() {
                dvr_tests::cmd::stderr(&o)
            } else {
                t
            };
            t.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

fn environment(args: &Args) -> Result<serde_json::Value> {
    let bins = locate_bins()?;
    let agent_build = if bins.agent.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    Ok(json!({
        "date": first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "kernel": first_line("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "quick": args.quick,
        "agent": bins.agent.display().to_string(),
        "agent_build": agent_build,
        "bench_build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "iperf3": first_line("iperf3", &["--version"]),
        "sockperf": first_line("sockperf", &["--version"]),
        "iptables": first_line("iptables-restore", &["--version"]),
    }))
}

fn run(args: &Args) -> Result<Report> {
    preconditions()?;
    let s = if args.quick {
        Settings::QUICK
    } else {
        Settings::FULL
    };
    let logs = std::env::temp_dir().join(format!("dvrb-{}-logs", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let mut report = Report {
        environment: environment(args)?,
        ..Report::default()
    };
    println!(
        "dvr-bench: {} pass; agent {} build; load {}",
        if args.quick { "quick" } else { "full" },
        report.environment["agent_build"].as_str().unwrap_or("?"),
        report.environment["loadavg_at_start"]
            .as_str()
            .unwrap_or("?")
    );
    let started = Instant::now();
    let result = run_parts(args, &s, &logs, &mut report);
    let _ = std::fs::remove_dir_all(&logs);
    if let Err(e) = result {
        report.failures.push(format!("{e:#}"));
    }
    report.environment["seconds"] = json!(started.elapsed().as_secs());
    report.write(&args.out)?;
    Ok(report)
}

fn run_parts(args: &Args, s: &Settings, logs: &Path, report: &mut Report) -> Result<()> {
    let skip = |p: &str| args.skip.contains(p);
    if !skip("verifier") {
        section("verifier: instructions walked per BPF program");
        match verifier::embedded() {
            Ok(c) => {
                print!("{}", verifier::table(&c));
                report.verifier = c;
            }
            Err(e) => report.failures.push(format!("verifier counts: {e:#}")),
        }
    }
    if !skip("veth") {
        section("upper bound: one veth pair");
        match veth::build() {
            Ok(v) => measure_all(
                report,
                Datapath::Veth,
                std::slice::from_ref(&v.ends),
                s,
                logs,
                String::new,
            ),
            Err(e) => report.failures.push(format!("veth pair: {e:#}")),
        }
    }
    bail_if_interrupted()?;
    if !skip("ebpf") {
        section("eBPF datapath (dvr-agent)");
        if !args.agent_args.is_empty() {
            println!("  agents run with {}", args.agent_args.join(" "));
        }
        if args.xdp_veths {
            println!("  veth peers readied for XDP (--xdp-veth-peers): XDP on ext0");
        }
        match ebpf::build(&args.agent_args, args.xdp_veths) {
            Ok(mut cloud) => {
                let paths = ebpf::paths(&cloud)?;
                measure_all(report, Datapath::Ebpf, &paths, s, logs, || {
                    ebpf::agent_logs(&cloud)
                });
                bail_if_interrupted()?;
                println!("  FIP change latency: {} changes", s.fip_changes);
                match ebpf::fip_change_latency(&mut cloud, s.fip_changes) {
                    Ok(v) => {
                        let agent = ebpf::agent_side_ms(&cloud, v.len());
                        println!(
                            "  agent side (state read -> maps written): p50 {:.2} ms, p99 {:.2} ms over {} changes",
                            percentile(&agent, 50.0).unwrap_or_default(),
                            percentile(&agent, 99.0).unwrap_or_default(),
                            agent.len()
                        );
                        report.fip_change.push(fip_change(Datapath::Ebpf, v))
                    }
                    Err(e) => report.failures.push(format!(
                        "eBPF FIP change latency: {e:#}\n{}",
                        ebpf::agent_logs(&cloud)
                    )),
                }
                hold(args, &cloud.namespaces().join(" "))?;
            }
            Err(e) => report.failures.push(format!("eBPF cloud: {e:#}")),
        }
    }
    bail_if_interrupted()?;
    if !skip("floor") {
        section("floor: the same topology, redirect-only BPF");
        match floor::build(args.xdp_veths) {
            Ok(mut f) => {
                for p in f.paths()? {
                    bail_if_interrupted()?;
                    match f.prepare(p.path) {
                        Ok(()) => measure_all(
                            report,
                            Datapath::Floor,
                            std::slice::from_ref(&p),
                            s,
                            logs,
                            String::new,
                        ),
                        Err(e) => report
                            .failures
                            .push(format!("floor, {}: setting up: {e:#}", p.path.as_str())),
                    }
                }
                hold(args, &f.cloud.namespaces().join(" "))?;
            }
            Err(e) => report.failures.push(format!("floor cloud: {e:#}")),
        }
    }
    bail_if_interrupted()?;
    if !skip("namespace") {
        section("namespace datapath (Neutron DVR layout)");
        match NeutronDvr::build(Spec::bench()?) {
            Ok(mut nd) => {
                let paths = nd.paths()?;
                measure_all(report, Datapath::Namespace, &paths, s, logs, String::new);
                bail_if_interrupted()?;
                println!("  FIP change latency: {} changes", s.fip_changes);
                match nd.fip_change_latency(s.fip_changes) {
                    Ok(v) => report.fip_change.push(fip_change(Datapath::Namespace, v)),
                    Err(e) => report
                        .failures
                        .push(format!("namespace FIP change latency: {e:#}")),
                }
                hold(args, &nd.namespaces().join(" "))?;
            }
            Err(e) => report.failures.push(format!("namespace cloud: {e:#}")),
        }
    }
    bail_if_interrupted()?;
    if !skip("control") {
        section("control plane: programming N FIPs into one host");
        for &n in args.fips.as_deref().unwrap_or(s.fip_counts) {
            for dp in [Datapath::Ebpf, Datapath::Namespace] {
                bail_if_interrupted()?;
                let r = match dp {
                    Datapath::Ebpf => control::ebpf(n),
                    _ => control::namespace(n, logs),
                };
                match r {
                    Ok(t) => {
                        let steps: Vec<String> = t
                            .steps
                            .iter()
                            .map(|(k, v)| format!("{k} {v:.3}s"))
                            .collect();
                        println!(
                            "  {n:>6} FIPs {:<10} {:>8.3} s  ({})",
                            dp.as_str(),
                            t.seconds,
                            steps.join(", ")
                        );
                        report.control.push(t);
                    }
                    Err(e) => report
                        .failures
                        .push(format!("control plane, {n} FIPs, {}: {e:#}", dp.as_str())),
                }
            }
        }
    }
    bail_if_interrupted()?;
    if !skip("sg") {
        security_groups(s, logs, report)?;
    }
    Ok(())
}

/// The `sg` part: the control-plane timing, then the packet rates on each datapath.
fn security_groups(s: &Settings, logs: &Path, report: &mut Report) -> Result<()> {
    report.sg_ran = true;
    let cloud = SgCloud {
        changes: s.sg_changes,
        ..SgCloud::ISSUE
    };
    section(&format!(
        "security groups, control plane: {} ports, {} groups, {} rules each, {} on the host; {} rule changes",
        cloud.ports,
        cloud.groups,
        sg_control::RULES_PER_GROUP,
        cloud.local_ports,
        cloud.changes
    ));
    match sg_control::run(&cloud) {
        Ok(c) => {
            println!(
                "  parse+validate {:.3} s, compile {:.3} s, map writes {:.3} s ({} entries; DVR_SG_REMOTE {}, DVR_SG_RULES {})",
                c.parse_s, c.compile_s, c.write_s, c.upserted, c.sg_remote, c.sg_rules
            );
            println!(
                "  rule change (compile + map writes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                percentile(&c.change_ms, 50.0).unwrap_or_default(),
                percentile(&c.change_ms, 99.0).unwrap_or_default(),
                c.change_ms.iter().copied().fold(0.0, f64::max)
            );
            report.sg_control = Some(c);
        }
        Err(e) => report
            .failures
            .push(format!("security groups, control plane: {e:#}")),
    }
    for dp in [Datapath::Ebpf, Datapath::Namespace] {
        bail_if_interrupted()?;
        section(&format!(
            "security groups, data path ({}): UDP rate to a port with 0 / 1 / 1000 rules, {} runs each",
            dp.as_str(),
            s.sg_udp_runs
        ));
        let r = match dp {
            Datapath::Ebpf => sg_datapath::ebpf(s.sg_udp_runs, s.udp_seconds, logs),
            _ => sg_datapath::namespace(s.sg_udp_runs, s.udp_seconds, logs),
        };
        match r {
            Ok(rates) => report.sg_rates.extend(rates),
            Err(e) => report.failures.push(format!(
                "security groups, data path, {}: {e:#}",
                dp.as_str()
            )),
        }
    }
    Ok(())
}

/// `--hold`: keeps the current cloud for inspection.
fn hold(args: &Args, namespaces: &str) -> Result<()> {
    if let Some(d) = args.hold {
        println!("  holding for {d:?}; namespaces: {namespaces}");
        dvr_tests::bench::sleep_interruptible(d)?;
    }
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn fip_change(datapath: Datapath, samples_ms: Vec<f64>) -> FipChange {
    FipChange {
        datapath,
        p50_ms: percentile(&samples_ms, 50.0).unwrap_or_default(),
        p99_ms: percentile(&samples_ms, 99.0).unwrap_or_default(),
        samples_ms,
    }
}

/// Checks, then measures, every path; a path that fails its checks is reported and skipped.
fn measure_all(
    report: &mut Report,
    datapath: Datapath,
    paths: &[PathEnds],
    s: &Settings,
    logs: &Path,
    diagnostics: impl Fn() -> String,
) {
    for p in paths {
        if bail_if_interrupted().is_err() {
            return;
        }
        let result = check_path(p).context("connectivity check").and_then(|()| {
            println!("  {:<10} checks passed; measuring", p.path.as_str());
            let mut f = measure_path(p, s, logs).context("measuring")?;
            if datapath == Datapath::Ebpf {
                f.bpf = bpf_stats::measure(p, s.udp_seconds, logs).context("BPF run statistics")?;
                for c in &f.bpf {
                    println!(
                        "  {:<10} {:<12} {:>6.2} runs/packet {:>7.1} ns/run",
                        p.path.as_str(),
                        c.program,
                        c.runs_per_packet,
                        c.ns_per_run
                    );
                }
            }
            Ok(f)
        });
        let result = match result {
            Ok(f) => {
                println!(
                    "  {:<10} TCP {:.2} Gbit/s (runs {:?}), UDP {:.1} kpps, p50 {:.1} us, p99 {:.1} us",
                    p.path.as_str(),
                    f.tcp_gbps,
                    f.tcp_runs
                        .iter()
                        .map(|v| (v * 100.0).round() / 100.0)
                        .collect::<Vec<_>>(),
                    f.udp_kpps,
                    f.p50_us,
                    f.p99_us
                );
                Ok(f)
            }
            Err(e) => {
                let d = diagnostics();
                println!("  {:<10} FAILED: {e:#}\n{d}", p.path.as_str());
                Err(format!("{e:#}"))
            }
        };
        report.rows.push(Row {
            path: p.path,
            datapath,
            result,
        });
    }
}
