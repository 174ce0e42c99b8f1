//! dvrctl: inspect a host's live datapath maps from any namespace, and feed a cluster.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use dvr_userspace::{
    ctl::{
        self,
        show::{self, Subject},
    },
    maps::{DEFAULT_BPFFS_ROOT, HostMaps, host_dir},
};

#[derive(Parser)]
#[command(
    version,
    about = "Inspect the eBPF DVR datapath of a host, and feed a cluster's state"
)]
struct Args {
    /// Host whose pinned maps to read (for `show`).
    #[arg(long, global = true)]
    host: Option<String>,
    /// bpffs directory holding one pin directory per host.
    #[arg(long, global = true, default_value = DEFAULT_BPFFS_ROOT)]
    bpffs: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print live map contents or counters of `--host`.
    Show {
        #[arg(value_enum)]
        what: Subject,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate a state file and write it to etcd, one key per resource, changing only what
    /// differs.
    Apply {
        file: PathBuf,
        #[arg(long)]
        etcd: String,
    },
    /// Hosts of the stored state and whether their agents are alive.
    Hosts {
        #[arg(long)]
        etcd: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Show { what, json } => {
            let host = args.host.ok_or_else(|| anyhow!("show needs --host NAME"))?;
            let maps = HostMaps::open(&host_dir(&args.bpffs, &host))
                .with_context(|| format!("host {host}"))?;
            let out = show::show(&maps, what, json).context("reading maps")?;
            print!("{out}");
            if json {
                println!();
            }
        }
        Cmd::Apply { file, etcd } => println!(
            "{}",
            ctl::apply::apply(&file, &etcd).map_err(|e| anyhow!(e))?
        ),
        Cmd::Hosts { etcd, json } => {
            print!(
                "{}",
                ctl::hosts::hosts(&etcd, json).map_err(|e| anyhow!(e))?
            );
            if json {
                println!();
            }
        }
    }
    Ok(())
}
