//! `dvrctl trace`: what the datapath would do with a packet, step by step, from the live
//! maps of a host (like ovn-trace). Read-only: nothing is sent and no map is written. The
//! walk mirrors the layers of `dvr-ebpf`, each calling only downwards: [`entry`] holds the
//! pipelines (tap, tunnel and external ingress, and `tap_out` where a packet is delivered
//! to a local tap), [`stage`] the feature stages they call (security, sg, route, fip, snat,
//! ha: the names of `dvr-ebpf/src/stage/`, with the security group decision itself in
//! [`sg`]), [`net`] what those build on (route lookup, conntrack, L2 delivery) and [`walk`]
//! the walk's state. The integration tests check its verdicts against what real packets did.
mod entry;
mod net;
mod north6;
mod sg;
mod stage;
mod v6;
mod walk;

use dvr_common::{
    config::{HOST_DECAP_BPF, HOST_ENCAP_BPF, HostConfig},
    port::{PORT_FLAG_DOWN, PORT_FLAG_SG},
    stats::Stat,
};
use serde::Serialize;

use super::{fmt_mac, names::Names};
use crate::maps::{HostMaps, MapsError};
use walk::Walk;
pub use walk::{Addrs6, Probe, Step, attached_ifindex};

#[derive(Debug, Serialize)]
pub struct Trace {
    pub steps: Vec<Step>,
    /// The counter the packet would bump (`dvrctl show stats` id).
    pub verdict: &'static str,
    /// Counters of steps it would bump besides (`tx_encap`, `rx_decap`: VXLAN done in BPF).
    pub also: Vec<&'static str>,
    pub drop: bool,
    /// Where it would go: `tap#N`, `tunnel <host> vni <v>`, `ext#N`, `host stack`, or null.
    pub output: Option<String>,
    /// The packet as it would leave.
    pub out_src: Option<String>,
    pub out_dst: Option<String>,
    pub out_src_mac: Option<String>,
    pub out_dst_mac: Option<String>,
}

/// Trace `p` through the maps of a host.
pub fn trace(maps: &HostMaps, p: Probe) -> Result<Trace, MapsError> {
    trace_named(maps, p, None)
}

/// Trace `p` through the maps of a host, naming ports and rules by the ids in `names`.
pub fn trace_named(maps: &HostMaps, p: Probe, names: Option<&Names>) -> Result<Trace, MapsError> {
    let mut w = Walk::new(maps, p, names);
    let cfg = maps.read_config()?;
    let tunnel = crate::attach::TUNNEL_DEV;
    let is_ext =
        cfg.ext_ifindex != 0 && attached_ifindex(maps, &w.p.iface) == Some(cfg.ext_ifindex);
    let o = if w.p.iface == tunnel {
        w.tunnel()?
    } else if is_ext {
        w.ext()?
    } else {
        w.tap()?
    };
    let o = w.tap_out(o)?;
    let mut also = Vec::new();
    if is_ext && in_xdp(maps, &w.p, &o, &cfg)? {
        w.steps.insert(
            0,
            Step {
                stage: "xdp",
                what: "served by the external NIC's XDP program, before any socket buffer \
                       (a plain TCP/UDP packet for a port without security groups whose tap \
                       takes XDP frames)"
                    .into(),
            },
        );
        also.push(Stat::XdpExt.as_str());
    }
    // A frame from another host, not GSO (as a traced packet is), is decapsulated on the
    // underlay NIC where the agent does that; one for another host is encapsulated here.
    if w.p.iface == tunnel && cfg.flags & HOST_DECAP_BPF != 0 {
        w.steps.insert(
            0,
            Step {
                stage: "underlay",
                what: "VXLAN decapsulated on the underlay NIC, then the tunnel pipeline".into(),
            },
        );
        also.push(Stat::RxDecap.as_str());
    }
    let to_tunnel = o
        .output
        .as_deref()
        .is_some_and(|s| s.starts_with("tunnel "));
    if to_tunnel && !o.stat.is_drop() && cfg.flags & HOST_ENCAP_BPF != 0 {
        w.steps.push(Step {
            stage: "encap",
            what: "VXLAN-encapsulated here and sent out of the underlay NIC (if the FIB helper \
                   routes the peer from dvr-vx; else through dvr-vx)"
                .into(),
        });
        also.push(Stat::TxEncap.as_str());
    }
    Ok(Trace {
        steps: w.steps,
        verdict: o.stat.as_str(),
        also,
        drop: o.stat.is_drop(),
        output: o.output,
        out_src: (!o.stat.is_drop()).then(|| match w.p.v6 {
            Some(a) => a.src.to_string(),
            None => w.p.src.to_string(),
        }),
        out_dst: (!o.stat.is_drop()).then(|| match w.p.v6 {
            Some(a) => a.dst.to_string(),
            None => w.p.dst.to_string(),
        }),
        out_src_mac: o.src_mac.map(fmt_mac),
        out_dst_mac: o.dst_mac.map(fmt_mac),
    })
}

/// Whether the external NIC's XDP program finishes `p` (`fip::inbound_xdp`): a plain TCP or
/// UDP IPv4 packet whose floating IP delivers it to a local tap in DVR_XDP_TAPS, without
/// security groups, with the XDP program attached.
fn in_xdp(maps: &HostMaps, p: &Probe, o: &walk::Out, cfg: &HostConfig) -> Result<bool, MapsError> {
    let (Some(tap), Stat::FipDnat, None, 6 | 17, 2..) = (o.tap(), o.stat, p.v6, p.proto, p.ttl)
    else {
        return Ok(false);
    };
    if !crate::attach::xdp_pinned(&maps.dir, &p.iface, cfg.ext_ifindex) {
        return Ok(false);
    }
    Ok(maps.xdp_taps.get(&tap)?.is_some()
        && maps
            .local_ports
            .get(&tap)?
            .is_some_and(|port| port.flags & (PORT_FLAG_SG | PORT_FLAG_DOWN) == 0))
}

/// Human rendering.
pub fn render(t: &Trace) -> String {
    let mut s = String::new();
    for (i, st) in t.steps.iter().enumerate() {
        s.push_str(&format!("{:>2}. {:<14} {}\n", i + 1, st.stage, st.what));
    }
    if !t.also.is_empty() {
        s.push_str(&format!("   also counted: {}\n", t.also.join(", ")));
    }
    if t.drop {
        s.push_str(&format!("=> DROP ({})\n", t.verdict));
    } else {
        s.push_str(&format!(
            "=> {} via {} : {} -> {} [{} -> {}]\n",
            t.verdict,
            t.output.as_deref().unwrap_or("-"),
            t.out_src.as_deref().unwrap_or("-"),
            t.out_dst.as_deref().unwrap_or("-"),
            t.out_src_mac.as_deref().unwrap_or("-"),
            t.out_dst_mac.as_deref().unwrap_or("-"),
        ));
    }
    s
}
