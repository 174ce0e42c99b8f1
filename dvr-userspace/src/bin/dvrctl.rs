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
    /// State file (as the agent reads it): `show` and `trace` then name ports and security
    /// group rules by their ids instead of the hashes the maps hold.
    #[arg(long, global = true)]
    state: Option<PathBuf>,
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
        /// `show sg`: only this port (port id, its hash, tap name or ifindex).
        #[arg(long)]
        port: Option<String>,
    },
    /// What the datapath of `--host` would do with a packet, step by step, from the live maps.
    Trace {
        /// Interface it arrives on: a tap, `dvr-vx` (then give --vni and --remote) or the
        /// external interface.
        #[arg(long = "in")]
        iface: String,
        /// Source address, IPv4 or IPv6 (then --dst too).
        #[arg(long)]
        src: std::net::IpAddr,
        #[arg(long)]
        dst: std::net::IpAddr,
        /// tcp, udp or icmp (echo, ICMPv6 echo for IPv6 addresses; --sport is the id).
        #[arg(long, default_value = "icmp")]
        proto: String,
        #[arg(long, default_value_t = 40000)]
        sport: u16,
        #[arg(long, default_value_t = 80)]
        dport: u16,
        #[arg(long)]
        src_mac: Option<String>,
        #[arg(long)]
        dst_mac: Option<String>,
        #[arg(long)]
        vni: Option<u32>,
        #[arg(long)]
        remote: Option<std::net::Ipv4Addr>,
        /// TTL, or hop limit for IPv6.
        #[arg(long, default_value_t = 64)]
        ttl: u8,
        /// Length of the IP packet in bytes (what is held against each network's MTU).
        #[arg(long, default_value_t = 84)]
        len: u16,
        /// IPv4 don't-fragment flag (IPv6 is never fragmented by a router).
        #[arg(long)]
        df: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stream drop events of `--host` with their reasons (rate-limited in the datapath).
    Monitor {
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
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
    /// HA routers: their candidates and the host elected to serve them.
    Ha {
        #[arg(long)]
        etcd: String,
        #[arg(long)]
        json: bool,
    },
    /// Move an HA router's role to HOST: the active host first streams its conntrack to
    /// HOST; returns once HOST serves the router.
    Failover {
        router: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        etcd: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
    },
}

/// The ids behind the maps' hashes, from `--state`.
fn names(state: Option<&std::path::Path>) -> anyhow::Result<Option<ctl::names::Names>> {
    state
        .map(|p| ctl::names::Names::load(p).map_err(|e| anyhow!(e)))
        .transpose()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Show { what, json, port } => {
            let host = args.host.ok_or_else(|| anyhow!("show needs --host NAME"))?;
            let maps = HostMaps::open(&host_dir(&args.bpffs, &host))
                .with_context(|| format!("host {host}"))?;
            let names = names(args.state.as_deref())?;
            let port = match port {
                None => None,
                Some(_) if what != Subject::Sg => anyhow::bail!("--port goes with `show sg`"),
                Some(id) => {
                    let ports = maps.local_ports.read().context("reading maps")?;
                    let tap = ctl::trace::attached_ifindex(&maps, &id);
                    Some(
                        ctl::sg::match_port(&ports, &id, tap)
                            .ok_or_else(|| anyhow!("no local port {id} on host {host}"))?,
                    )
                }
            };
            let opts = show::ShowOpts {
                json,
                port,
                names: names.as_ref(),
            };
            let out = show::show_with(&maps, what, &opts).context("reading maps")?;
            print!("{out}");
            if json {
                println!();
            }
        }
        Cmd::Trace {
            iface,
            src,
            dst,
            proto,
            sport,
            dport,
            src_mac,
            dst_mac,
            vni,
            remote,
            ttl,
            len,
            df,
            json,
        } => {
            let host = args
                .host
                .ok_or_else(|| anyhow!("trace needs --host NAME"))?;
            let maps = HostMaps::open(&host_dir(&args.bpffs, &host))
                .with_context(|| format!("host {host}"))?;
            let mac = |m: Option<String>, what: &str| -> anyhow::Result<Option<[u8; 6]>> {
                m.map(|s| {
                    dvr_userspace::model::parse_mac(&s)
                        .ok_or_else(|| anyhow!("--{what}: not a MAC: {s}"))
                })
                .transpose()
            };
            use std::net::{IpAddr, Ipv4Addr};
            let (src4, dst4, v6) = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => (s, d, None),
                (IpAddr::V6(src), IpAddr::V6(dst)) => (
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    Some(ctl::trace::Addrs6 { src, dst }),
                ),
                _ => anyhow::bail!("--src {src} and --dst {dst}: one address family, please"),
            };
            let proto = match (proto.as_str(), v6.is_some()) {
                ("icmp", false) => 1,
                ("icmp", true) => 58,
                ("tcp", _) => 6,
                ("udp", _) => 17,
                (other, _) => anyhow::bail!("--proto {other}: use tcp, udp or icmp"),
            };
            let probe = ctl::trace::Probe {
                iface,
                src: src4,
                dst: dst4,
                v6,
                proto,
                sport,
                dport,
                src_mac: mac(src_mac, "src-mac")?,
                dst_mac: mac(dst_mac, "dst-mac")?,
                vni,
                remote,
                ttl,
                len,
                df,
            };
            let names = names(args.state.as_deref())?;
            let t =
                ctl::trace::trace_named(&maps, probe, names.as_ref()).context("reading maps")?;
            if json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                print!("{}", ctl::trace::render(&t));
            }
        }
        Cmd::Monitor {
            json,
            count,
            timeout,
        } => {
            let host = args
                .host
                .ok_or_else(|| anyhow!("monitor needs --host NAME"))?;
            let timeout = timeout.map(std::time::Duration::from_secs_f64);
            ctl::monitor::monitor(&host_dir(&args.bpffs, &host), json, count, timeout)
                .with_context(|| format!("host {host}"))?;
        }
        Cmd::Apply { file, etcd } => println!(
            "{}",
            ctl::apply::apply(&file, &etcd).map_err(|e| anyhow!(e))?
        ),
        Cmd::Ha { etcd, json } => {
            print!("{}", ctl::ha::ha(&etcd, json).map_err(|e| anyhow!(e))?);
            if json {
                println!();
            }
        }
        Cmd::Failover {
            router,
            to,
            etcd,
            timeout,
        } => println!(
            "{}",
            ctl::ha::failover(
                &etcd,
                &router,
                &to,
                std::time::Duration::from_secs_f64(timeout)
            )
            .map_err(|e| anyhow!(e))?
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
