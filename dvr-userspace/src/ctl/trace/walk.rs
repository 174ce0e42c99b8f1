//! The state of a trace walk and what every layer of it uses: the probe, the steps, the
//! packet as it is now, and how a walk ends.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use super::sg::Packet;
use crate::{
    ctl::{
        names::Names,
        sg::{Remotes, Rules},
    },
    maps::HostMaps,
};
use dvr_common::{
    Mac,
    nat::{CtEntry, CtKey},
    stats::Stat,
};

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
    /// TTL, or the hop limit of an IPv6 probe.
    pub ttl: u8,
    /// Length of the IP packet (header included), held against each network's MTU.
    pub len: u16,
    /// Don't fragment (IPv4): a packet too long for a network is answered rather than
    /// fragmented.
    pub df: bool,
    /// An IPv6 probe: its addresses (`src` and `dst` above are then unused). `proto` is
    /// then 58 for an ICMPv6 echo.
    pub v6: Option<Addrs6>,
}

/// The IPv6 addresses of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs6 {
    pub src: std::net::Ipv6Addr,
    pub dst: std::net::Ipv6Addr,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub stage: &'static str,
    pub what: String,
}

/// The walk's state: the maps, the steps so far and the packet as it is now (stages
/// rewrite its addresses as the datapath would).
pub(super) struct Walk<'a> {
    pub(super) m: &'a HostMaps,
    pub(super) steps: Vec<Step>,
    pub(super) p: Probe,
    /// Ids behind the hashes, from a state.
    pub(super) names: Option<&'a Names>,
    /// DVR_SG_REMOTE and DVR_SG_RULES, read at the walk's first security group check.
    pub(super) sg_tries: Option<(Remotes, Rules)>,
    /// Conntrack entries a security group check of this walk creates (a new flow), which
    /// a later check of the same packet's answer finds (the router's echo reply).
    pub(super) sg_created: BTreeMap<CtKey, CtEntry>,
    /// DVR_SG_REMOTE6, read at the walk's first IPv6 security group check.
    pub(super) sg_remote6: Option<crate::ctl::sg::Remotes6>,
    /// As `sg_created`, in DVR_CT6.
    pub(super) sg_created6: BTreeMap<dvr_common::nat::CtKey6, CtEntry>,
}

/// Where a walk ends: the counter it bumps, and where and how the packet leaves.
pub(super) struct Out {
    pub(super) stat: Stat,
    pub(super) output: Option<String>,
    pub(super) src_mac: Option<Mac>,
    pub(super) dst_mac: Option<Mac>,
    /// Flooded on this network: every local copy is checked where it is delivered.
    pub(super) flood_vni: Option<u32>,
}

impl Out {
    /// The local tap it is delivered to (`tap#N`), if any.
    pub(super) fn tap(&self) -> Option<u32> {
        self.output
            .as_deref()
            .and_then(|t| t.strip_prefix("tap#"))
            .and_then(|t| t.parse().ok())
    }
}

pub(super) fn out(stat: Stat, output: impl Into<String>, src_mac: Mac, dst_mac: Mac) -> Out {
    Out {
        stat,
        output: Some(output.into()),
        src_mac: Some(src_mac),
        dst_mac: Some(dst_mac),
        flood_vni: None,
    }
}

pub(super) fn drop(stat: Stat) -> Out {
    Out {
        stat,
        output: None,
        src_mac: None,
        dst_mac: None,
        flood_vni: None,
    }
}

pub(super) fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(super) fn in_prefix(ip: u32, net: u32, plen: u32) -> bool {
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

impl<'a> Walk<'a> {
    pub(super) fn new(m: &'a HostMaps, p: Probe, names: Option<&'a Names>) -> Self {
        Walk {
            m,
            steps: Vec::new(),
            p,
            names,
            sg_tries: None,
            sg_created: BTreeMap::new(),
            sg_remote6: None,
            sg_created6: BTreeMap::new(),
        }
    }

    /// The packet as it is now, as the security group check sees it (an ICMP probe is an
    /// echo request whose identifier is `sport`).
    pub(super) fn sg_packet(&self) -> Packet {
        self.sg_probe(be(self.p.src), be(self.p.dst), 1, 8)
    }

    /// The probe from `saddr` to `daddr` as the security group check sees it, of either
    /// family: protocol `icmp_proto` is an echo request (type `echo`) whose identifier is
    /// `sport`.
    pub(super) fn sg_probe<A>(&self, saddr: A, daddr: A, icmp_proto: u8, echo: u8) -> Packet<A> {
        let icmp = self.p.proto == icmp_proto;
        let (sport, dport) = if icmp {
            (self.p.sport, self.p.sport)
        } else {
            (self.p.sport, self.p.dport)
        };
        Packet {
            saddr,
            daddr,
            proto: self.p.proto,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            icmp: if icmp { (echo, 0) } else { (0, 0) },
            quoted: None,
        }
    }

    pub(super) fn step(&mut self, stage: &'static str, what: impl Into<String>) {
        self.steps.push(Step {
            stage,
            what: what.into(),
        });
    }
}
