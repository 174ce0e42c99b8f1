//! `cargo xtask`: the project's build and test entry points.
//!
//! - `setup`: install what building and testing need (nightly rust-src, bpf-linker, Debian
//!   test tools) and mount bpffs. Only what is missing, so a second run is a quick no-op.
//! - `build-ebpf`: build the BPF object through `dvr-userspace/build.rs` (aya-build) and
//!   copy it to `target/bpf/dvr.o` for bpftool.
//! - `layers`: the module graph of the datapath and the agent, floor by floor; fails on
//!   any import circle.
//! - `test`: the layer check, unit tests, then the root-only multi-host integration tests.
//! - `demo`: run the namespace demo.
//! - `bench`: the benchmarks: eBPF datapath vs Neutron DVR's namespace datapath vs one veth
//!   pair, and control-plane timings (release build; results in `bench/`); `--scale`: the
//!   cluster control plane at 10,000 to 100,000 ports instead.
mod layers;
mod run;
mod setup;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::run::{Env, cargo};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo the eBPF DVR"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install missing build and test dependencies and mount bpffs (needs root to install).
    Setup,
    /// Build the BPF object (via dvr-userspace's build script) and copy it to target/bpf/dvr.o.
    BuildEbpf,
    /// Print the module layers of dvr-ebpf and dvr-userspace; fail on any import circle.
    Layers,
    /// Run setup, the layer check, the unit tests, then the integration tests (needs root).
    Test {
        /// Passed to the integration test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run setup, build, then run the multi-host demo in network namespaces (needs root).
    Demo {
        /// Passed to dvr-demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run setup, build (release), then benchmark the eBPF datapath against Neutron DVR's
    /// namespace datapath and one veth pair; writes bench/results.json and bench/results.svg
    /// (needs root).
    Bench {
        /// A short pass (a few minutes): fewer and shorter runs, no 50,000-FIP timing.
        #[arg(long)]
        quick: bool,
        /// Measure debug builds of the agent and the benchmark instead of release builds.
        #[arg(long)]
        debug: bool,
        /// Only the cluster control plane at cloud scale (10,000 to 100,000 ports, with etcd
        /// and with a state file): writes bench/scale.json and bench/scale.svg. With --quick,
        /// 10,000 ports only.
        #[arg(long)]
        scale: bool,
        /// Passed to dvr-bench (e.g. `--skip control`, `--fips 1000,10000`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = Env::new()?;
    match cli.command {
        Command::Setup => setup::all(&env),
        Command::BuildEbpf => build_ebpf(&env),
        Command::Layers => layers::run(&env.root),
        Command::Test { args } => test(&env, &args),
        Command::Demo { args } => demo(&env, &args),
        Command::Bench {
            quick,
            debug,
            scale,
            args,
        } => bench(&env, quick, debug, scale, &args),
    }
}

/// Host packages, i.e. everything but the no_std BPF crate (built by aya-build) and the
/// root-only integration tests.
const HOST_UNIT: [&str; 5] = [
    "--workspace",
    "--exclude",
    "dvr-ebpf",
    "--exclude",
    "dvr-tests",
];

fn build_ebpf(env: &Env) -> anyhow::Result<()> {
    setup::toolchain(env)?;
    env.run(cargo(env).args(["build", "--package", "dvr-userspace"]))?;
    let object = newest_object(&env.target_dir.join("debug").join("build"))?;
    let dest_dir = env.target_dir.join("bpf");
    std::fs::create_dir_all(&dest_dir).with_context(|| format!("create {}", dest_dir.display()))?;
    let dest = dest_dir.join("dvr.o");
    std::fs::copy(&object, &dest)
        .with_context(|| format!("copy {} to {}", object.display(), dest.display()))?;
    println!("BPF object: {}", dest.display());
    Ok(())
}

/// The `dvr` object aya-build left in `dvr-userspace-*/out/` of the last build: there can be
/// several such directories (one per build-script configuration), so take the newest.
fn newest_object(build_dir: &Path) -> anyhow::Result<PathBuf> {
    let entries =
        std::fs::read_dir(build_dir).with_context(|| format!("list {}", build_dir.display()))?;
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", build_dir.display()))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("dvr-userspace-")
        {
            continue;
        }
        let candidate = entry.path().join("out").join("dvr");
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        let mtime = meta
            .modified()
            .with_context(|| format!("mtime of {}", candidate.display()))?;
        if newest.as_ref().is_none_or(|(t, _)| mtime > *t) {
            newest = Some((mtime, candidate));
        }
    }
    let Some((_, object)) = newest else {
        bail!(
            "no dvr-userspace-*/out/dvr under {}: did the build run?",
            build_dir.display()
        );
    };
    let bytes = std::fs::read(&object).with_context(|| format!("read {}", object.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!(
            "{} is not an ELF object ({} bytes): was it built with AYA_BUILD_SKIP=1?",
            object.display(),
            bytes.len()
        );
    }
    Ok(object)
}

fn test(env: &Env, args: &[String]) -> anyhow::Result<()> {
    setup::all(env)?;
    let venv = setup::neutron_venv_dir(env);
    layers::run(&env.root)?;
    env.run(cargo(env).args(["build", "--bins"]).args(HOST_UNIT))?;
    env.run(cargo(env).args(["build", "--package", "dvr-tests", "--tests", "--bins"]))?;
    let mut tally = run::Tally::default();
    let result = (|| {
        env.run_tests(cargo(env).arg("test").args(HOST_UNIT), &mut tally)?;
        env.run_tests(
            env.command(venv.join("bin").join("python"))
                .arg(env.root.join("neutron-plugin/tests/run.py")),
            &mut tally,
        )?;
        // Setup has mounted bpffs if we are root.
        require_root("integration tests need root")?;
        env.run_tests(
            cargo(env)
                .args(["test", "--package", "dvr-tests", "--", "--test-threads=1"])
                .args(args)
                .env("DVR_BIN_DIR", env.bin_dir())
                .env("DVR_NEUTRON_VENV", &venv),
            &mut tally,
        )
    })();
    // One closing line over every test binary, unit and integration alike.
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    result
}

fn demo(env: &Env, args: &[String]) -> anyhow::Result<()> {
    setup::all(env)?;
    env.run(cargo(env).args(["build", "--bins", "--workspace", "--exclude", "dvr-ebpf"]))?;
    require_root("the demo needs root")?;
    let demo = env.bin_dir().join("dvr-demo");
    env.run(
        env.command(&demo)
            .args(args)
            .env("DVR_BIN_DIR", env.bin_dir())
            .env("DVR_NEUTRON_VENV", setup::neutron_venv_dir(env)),
    )
}

/// Builds the agent and `dvr-bench` (release unless `debug`: the agent's per-packet work is
/// in BPF either way, but its control plane and the in-process compile/reconcile timing are
/// user-space code) and runs the benchmarks with results in `<root>/bench/`.
fn bench(env: &Env, quick: bool, debug: bool, scale: bool, args: &[String]) -> anyhow::Result<()> {
    setup::all(env)?;
    let profile: &[&str] = if debug { &[] } else { &["--release"] };
    env.run(
        cargo(env)
            .args(["build", "--package", "dvr-userspace", "--bins"])
            .args(profile),
    )?;
    env.run(
        cargo(env)
            .args(["build", "--package", "dvr-tests", "--bin", "dvr-bench"])
            .args(profile),
    )?;
    require_root("the benchmarks need root")?;
    let bin_dir = env.target_dir.join(if debug { "debug" } else { "release" });
    let mut cmd = env.command(bin_dir.join("dvr-bench"));
    if scale {
        cmd.arg("scale");
    }
    cmd.arg("--out").arg(env.root.join("bench"));
    if quick {
        cmd.arg("--quick");
    }
    env.run(cmd.args(args).env("DVR_BIN_DIR", &bin_dir))
}

fn require_root(message: &str) -> anyhow::Result<()> {
    if !run::is_root()? {
        bail!(
            "{message}: it creates network namespaces, veths and VXLAN devices and loads \
             BPF programs; run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask ...`)"
        );
    }
    Ok(())
}
