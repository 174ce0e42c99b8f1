//! dvrctl: inspect a host's live datapath maps from any namespace.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dvr_userspace::{
    ctl::show::{self, Subject},
    maps::{DEFAULT_BPFFS_ROOT, HostMaps, host_dir},
};

#[derive(Parser)]
#[command(version, about = "Inspect the eBPF DVR datapath of a host")]
struct Args {
    /// Host whose pinned maps to read.
    #[arg(long)]
    host: String,
    /// bpffs directory holding one pin directory per host.
    #[arg(long, default_value = DEFAULT_BPFFS_ROOT)]
    bpffs: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print live map contents or counters.
    Show {
        #[arg(value_enum)]
        what: Subject,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = host_dir(&args.bpffs, &args.host);
    let maps = HostMaps::open(&dir).with_context(|| format!("host {}", args.host))?;
    match args.cmd {
        Cmd::Show { what, json } => {
            let out = show::show(&maps, what, json).context("reading maps")?;
            print!("{out}");
            if json {
                println!();
            }
        }
    }
    Ok(())
}
