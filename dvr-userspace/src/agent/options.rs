//! The agent's tunables beyond its state, and the intervals of its loop.
use std::time::Duration;

use crate::{attach::LoadOptions, conntrack::Timeouts};

/// How often the periodic work runs (ARP for the external gateways, conntrack GC), and how
/// often interfaces are listed when link notifications are not available.
pub const POLL: Duration = Duration::from_millis(100);
/// How often the state source and link notifications are looked at: a written state file
/// or a new tap is applied well within 100 ms.
pub const STATE_POLL: Duration = Duration::from_millis(20);
/// How often the agent reads every map back instead of trusting what it wrote last, so an
/// entry changed or removed by hand is repaired.
pub const FULL_READ_INTERVAL: Duration = Duration::from_secs(30);
/// How often interfaces are listed even though no link notification said they changed: a
/// safety net under the notifications.
pub const RESCAN: Duration = Duration::from_secs(10);

/// Tunables of the agent beyond its state.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub load: LoadOptions,
    pub timeouts: Timeouts,
    /// How often idle conntrack entries are expired.
    pub gc_interval: Duration,
    /// Port-address translation range (inclusive).
    pub snat_ports: (u16, u16),
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Byte rate limit of the HA conntrack sync, per host.
    pub ct_sync_rate: u64,
    /// Interval of unsolicited IPv6 router advertisements on the taps.
    pub ra_interval: super::ra::RaInterval,
    /// How frames enter the tunnel (`--tunnel-encap`).
    pub tunnel_encap: TunnelMode,
    /// How frames leave the tunnel (`--tunnel-decap`).
    pub tunnel_decap: TunnelMode,
    /// Native XDP in front of the TC program on the external NIC (`--ext-xdp native`):
    /// proxy ARP and the floating IPs of ports without security groups are served there.
    pub ext_xdp: bool,
    /// The peers of this host's veth interfaces (a veth external NIC, veth taps) run NAPI
    /// (`--xdp-veth-peers`: GRO on, or an XDP program), so they take frames XDP sends them.
    /// NICs and tun/tap devices always do.
    pub xdp_veth_peers: bool,
}

/// Who does VXLAN: the datapath or the VXLAN collect_md device. The frames on the wire are
/// the same either way, so hosts of every kind talk to each other.
///
/// - Encapsulation (`--tunnel-encap`), `Bpf`: frames for other hosts are encapsulated by
///   the datapath and sent straight out of the underlay NIC (`HOST_ENCAP_BPF`); the agent
///   turns forwarding on for the VXLAN device, which the FIB helper needs. Frames it cannot
///   do that for go through the device.
/// - Decapsulation (`--tunnel-decap`), `Bpf`: the underlay program, on the NIC that holds
///   the host's tunnel address, decapsulates the VXLAN frames that are not GSO; GSO ones
///   (and all with `Device`) are received by the device, with UDP tunnel GRO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelMode {
    #[default]
    Bpf,
    /// Through the VXLAN collect_md device.
    Device,
}

impl TunnelMode {
    /// The `--tunnel-encap` / `--tunnel-decap` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "bpf" => Ok(Self::Bpf),
            "device" => Ok(Self::Device),
            other => Err(format!("{other:?}: expected bpf or device")),
        }
    }

    /// The `HostConfig::flags` bits it stands for as the encapsulation mode.
    pub fn encap_flags(self) -> u8 {
        match self {
            Self::Bpf => dvr_common::config::HOST_ENCAP_BPF,
            Self::Device => 0,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            timeouts: Timeouts::default(),
            gc_interval: Duration::from_secs(1),
            snat_ports: (
                dvr_common::snat::SNAT_PORT_MIN,
                dvr_common::snat::SNAT_PORT_MAX,
            ),
            metrics: None,
            ct_sync_rate: 4_000_000,
            ra_interval: super::ra::RaInterval::default(),
            tunnel_encap: TunnelMode::default(),
            tunnel_decap: TunnelMode::default(),
            ext_xdp: true,
            xdp_veth_peers: false,
        }
    }
}
