//! dvr-agent: one per host, run inside the host's network namespace.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use dvr_userspace::{agent, maps::DEFAULT_BPFFS_ROOT};

/// Compile Neutron router state into BPF maps for one host and keep them reconciled.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// This host's name (as in the state's `hosts` list).
    #[arg(long)]
    host: String,
    /// Router state as JSON in Neutron API shapes; watched for changes.
    #[arg(long)]
    state: PathBuf,
    /// bpffs directory holding one pin directory per host.
    #[arg(long, default_value = DEFAULT_BPFFS_ROOT)]
    bpffs: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    agent::install_signal_handlers();
    let agent = agent::Agent::start(&args.host, &args.state, &args.bpffs)
        .with_context(|| format!("dvr-agent for host {} not started", args.host))?;
    agent.run().context("dvr-agent stopped with an error")
}
