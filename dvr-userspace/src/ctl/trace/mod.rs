//! `dvrctl trace`: what the datapath would do with a packet, step by step, from the live
//! maps of a host (like ovn-trace). Read-only: nothing is sent and no map is written. The
//! walk mirrors the layers of `dvr-ebpf`: [`entry`] holds the three pipelines (tap, tunnel
//! and external ingress), [`stage`] the feature stages they call (security, route, fip,
//! snat, ha: the names of `dvr-ebpf/src/stage/`), [`net`] what those build on (route
//! lookup, conntrack, L2 delivery). The integration tests check its verdicts against what
//! real packets did.
mod entry;
mod net;
mod stage;

use std::net::Ipv4Addr;

use serde::Serialize;

use super::fmt_mac;
use crate::maps::{HostMaps, MapsError};
use dvr_common::{Mac, stats::Stat};

/// The packet to trace.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Interface it arrives on: a tap, the tunnel device or the external interface.
    pub iface: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 1 (ICMP echo), 6 or 17.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub src_mac: Option<Mac>,
    pub dst_mac: Option<Mac>,
    /// Tunnel metadata, for packets arriving on the tunnel device.
    pub vni: Option<u32>,
    pub remote: Option<Ipv4Addr>,
    pub ttl: u8,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub stage: &'static str,
    pub what: String,
}

#[derive(Debug, Serialize)]
pub struct Trace {
    pub steps: Vec<Step>,
    /// The counter the packet would bump (`dvrctl show stats` id).
    pub verdict: &'static str,
    pub drop: bool,
    /// Where it would go: `tap#N`, `tunnel <host> vni <v>`, `ext#N`, `host stack`, or null.
    pub output: Option<String>,
    /// The packet as it would leave.
    pub out_src: Option<String>,
    pub out_dst: Option<String>,
    pub out_src_mac: Option<String>,
    pub out_dst_mac: Option<String>,
}

/// The walk's state: the maps, the steps so far and the packet as it is now (stages
/// rewrite its addresses as the datapath would).
struct Walk<'a> {
    m: &'a HostMaps,
    steps: Vec<Step>,
    p: Probe,
}

/// Where a walk ends: the counter it bumps, and where and how the packet leaves.
struct Out {
    stat: Stat,
    output: Option<String>,
    src_mac: Option<Mac>,
    dst_mac: Option<Mac>,
}

fn out(stat: Stat, output: impl Into<String>, src_mac: Mac, dst_mac: Mac) -> Out {
    Out {
        stat,
        output: Some(output.into()),
        src_mac: Some(src_mac),
        dst_mac: Some(dst_mac),
    }
}

fn drop(stat: Stat) -> Out {
    Out {
        stat,
        output: None,
        src_mac: None,
        dst_mac: None,
    }
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn in_prefix(ip: u32, net: u32, plen: u32) -> bool {
    let mask = if plen == 0 {
        0
    } else {
        u32::MAX << (32 - plen.min(32))
    };
    (u32::from_be(ip) & mask) == (u32::from_be(net) & mask)
}

/// ifindex of an interface the agent attached to, from its link pin `<iface>@<ifindex>`.
pub fn attached_ifindex(maps: &HostMaps, iface: &str) -> Option<u32> {
    let rd = std::fs::read_dir(maps.dir.join("links")).ok()?;
    rd.flatten().find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        let (name, ifx) = n.rsplit_once('@')?;
        (name == iface).then(|| ifx.parse().ok()).flatten()
    })
}

impl Walk<'_> {
    fn step(&mut self, stage: &'static str, what: impl Into<String>) {
        self.steps.push(Step {
            stage,
            what: what.into(),
        });
    }
}

/// Trace `p` through the maps of a host.
pub fn trace(maps: &HostMaps, p: Probe) -> Result<Trace, MapsError> {
    let mut w = Walk {
        m: maps,
        steps: Vec::new(),
        p,
    };
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
    Ok(Trace {
        steps: w.steps,
        verdict: o.stat.as_str(),
        drop: o.stat.is_drop(),
        output: o.output,
        out_src: (!o.stat.is_drop()).then(|| w.p.src.to_string()),
        out_dst: (!o.stat.is_drop()).then(|| w.p.dst.to_string()),
        out_src_mac: o.src_mac.map(fmt_mac),
        out_dst_mac: o.dst_mac.map(fmt_mac),
    })
}

/// Human rendering.
pub fn render(t: &Trace) -> String {
    let mut s = String::new();
    for (i, st) in t.steps.iter().enumerate() {
        s.push_str(&format!("{:>2}. {:<14} {}\n", i + 1, st.stage, st.what));
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
