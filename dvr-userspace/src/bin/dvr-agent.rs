//! dvr-agent: one per host, run inside the host's network namespace.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use dvr_userspace::{
    agent, attach::LoadOptions, conntrack::Timeouts, maps::DEFAULT_BPFFS_ROOT,
    source::register::Registration,
};

/// Compile Neutron router state into BPF maps for one host and keep them reconciled.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// This host's name (as in the state's `hosts` list).
    #[arg(long)]
    host: String,
    /// Router state as JSON in Neutron API shapes; watched for changes.
    #[arg(long, required_unless_present_any = ["uninstall", "etcd"], conflicts_with = "etcd")]
    state: Option<PathBuf>,
    /// Take the state from etcd instead (e.g. http://192.0.2.254:2379): snapshot, then watch.
    #[arg(long)]
    etcd: Option<String>,
    /// Register this host in etcd with this tunnel (underlay) address: the agent writes its
    /// host entry itself, with a DVR MAC allocated once (docs in `source/register.rs`).
    #[arg(long, requires = "etcd")]
    tunnel_ip: Option<std::net::Ipv4Addr>,
    /// With --tunnel-ip: dvr, dvr_snat or dvr_no_external.
    #[arg(long, default_value = "dvr", requires = "tunnel_ip")]
    agent_mode: String,
    /// With --tunnel-ip: the NIC on the external network.
    #[arg(long, requires = "tunnel_ip")]
    external_interface: Option<String>,
    /// Remove every program, link, pin and device the agent made on this host, then exit.
    #[arg(long)]
    uninstall: bool,
    /// bpffs directory holding one pin directory per host.
    #[arg(long, default_value = DEFAULT_BPFFS_ROOT)]
    bpffs: PathBuf,
    /// Conntrack capacity in entries (two per flow); the least recently used go first.
    #[arg(long, default_value_t = dvr_common::nat::CT_MAX)]
    ct_max: u32,
    /// Idle timeout of established TCP flows, seconds.
    #[arg(long, default_value_t = 21_600)]
    ct_timeout_tcp: u64,
    /// Idle timeout of TCP flows not yet established, seconds.
    #[arg(long, default_value_t = 60)]
    ct_timeout_tcp_syn: u64,
    /// Idle timeout of closing or reset TCP flows, seconds.
    #[arg(long, default_value_t = 10)]
    ct_timeout_tcp_fin: u64,
    /// Idle timeout of UDP flows, seconds.
    #[arg(long, default_value_t = 60)]
    ct_timeout_udp: u64,
    /// Idle timeout of ICMP flows, seconds.
    #[arg(long, default_value_t = 30)]
    ct_timeout_icmp: u64,
    /// How often idle conntrack entries are expired, milliseconds.
    #[arg(long, default_value_t = 1000)]
    ct_gc_interval_ms: u64,
    /// Port-address translation range on a SNAT host, `MIN-MAX` (inclusive).
    #[arg(long, default_value = "32768-60999", value_parser = parse_range)]
    snat_ports: (u16, u16),
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9465), path /metrics.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Bytes per second the conntrack sync of HA routers may send (docs/HA.md).
    #[arg(long, default_value_t = 4_000_000)]
    ct_sync_rate: u64,
    /// Unsolicited IPv6 router advertisements on the taps: at a random interval between
    /// MIN and MAX seconds (radvd's MinRtrAdvInterval and MaxRtrAdvInterval; Neutron's
    /// defaults). Router solicitations are answered at once whatever this says.
    #[arg(long, default_value = "30-100", value_parser = parse_range)]
    ra_interval: (u16, u16),
    /// How frames for other hosts enter the tunnel: `bpf` (VXLAN-encapsulated by the
    /// datapath, straight out of the underlay NIC) or `device` (through the VXLAN device).
    /// The wire format is the same: hosts of both kinds talk to each other.
    #[arg(long, default_value = "bpf", value_parser = agent::TunnelMode::parse)]
    tunnel_encap: agent::TunnelMode,
    /// How VXLAN frames from other hosts are received: `bpf` (decapsulated by the datapath
    /// on the NIC holding this host's tunnel address, except GSO frames) or `device` (all
    /// through the VXLAN device, with UDP tunnel GRO).
    #[arg(long, default_value = "bpf", value_parser = agent::TunnelMode::parse)]
    tunnel_decap: agent::TunnelMode,
    /// XDP on the external interface: `native` (in the driver, in front of the TC program:
    /// proxy ARP replies and the floating IPs of ports without security groups are served
    /// before the kernel builds a socket buffer; where the driver has no native XDP, the
    /// TC program serves everything, as with `off`) or `off`.
    #[arg(long, default_value = "native", value_parser = parse_ext_xdp, action = clap::ArgAction::Set)]
    ext_xdp: bool,
    /// The peers of this host's veth interfaces (an external interface or taps that are
    /// veth pairs) have GRO on (or an XDP program), so the kernel runs NAPI for them and
    /// they take frames sent from XDP. Without it, XDP is not attached to a veth external
    /// interface, and only tun/tap devices (what hypervisors give VMs) get floating-IP
    /// packets straight from the external interface's XDP.
    #[arg(long)]
    xdp_veth_peers: bool,
}

fn parse_ext_xdp(s: &str) -> Result<bool, String> {
    match s {
        "native" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: expected native or off")),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected MIN-MAX"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

impl Args {
    fn options(&self) -> agent::Options {
        let s = Duration::from_secs;
        agent::Options {
            load: LoadOptions {
                ct_max: self.ct_max,
            },
            timeouts: Timeouts {
                tcp_established: s(self.ct_timeout_tcp),
                tcp_syn: s(self.ct_timeout_tcp_syn),
                tcp_fin: s(self.ct_timeout_tcp_fin),
                udp: s(self.ct_timeout_udp),
                icmp: s(self.ct_timeout_icmp),
                other: s(self.ct_timeout_udp),
            },
            gc_interval: Duration::from_millis(self.ct_gc_interval_ms.max(10)),
            snat_ports: self.snat_ports,
            metrics: self.metrics,
            ct_sync_rate: self.ct_sync_rate,
            ra_interval: agent::RaInterval {
                min: s(u64::from(self.ra_interval.0)),
                max: s(u64::from(self.ra_interval.1)),
            },
            tunnel_encap: self.tunnel_encap,
            tunnel_decap: self.tunnel_decap,
            ext_xdp: self.ext_xdp,
            xdp_veth_peers: self.xdp_veth_peers,
        }
    }
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
    if args.uninstall {
        let removed = dvr_userspace::attach::uninstall(&args.bpffs, &args.host)
            .with_context(|| format!("uninstall for host {}", args.host))?;
        for r in &removed {
            println!("removed {r}");
        }
        if removed.is_empty() {
            println!("nothing to remove for host {}", args.host);
        }
        return Ok(());
    }
    let source = match (&args.state, &args.etcd) {
        (Some(p), _) => dvr_userspace::source::SourceSpec::File(p.clone()),
        (None, Some(u)) => {
            let reg = match args.tunnel_ip {
                Some(ip) => Some(
                    Registration::new(&args.agent_mode, ip, args.external_interface.as_deref())
                        .map_err(anyhow::Error::msg)?,
                ),
                None => None,
            };
            dvr_userspace::source::SourceSpec::Etcd(u.clone(), reg)
        }
        (None, None) => anyhow::bail!("one of --state FILE or --etcd URL is required"),
    };
    let agent = agent::Agent::start(&args.host, &source, &args.bpffs, args.options())
        .with_context(|| format!("dvr-agent for host {} not started", args.host))?;
    agent.run().context("dvr-agent stopped with an error")
}
