//! The upper bound of this machine: two namespaces joined by one veth pair (MTU 1450, as the
//! VMs' `eth0`), no bridge, router, tunnel, NAT or BPF. Every path of both datapaths carries
//! at least this much work, so no path can beat it.

use std::net::Ipv4Addr;

use anyhow::Result;

use super::netns::NsSet;
use super::{PathEnds, PathKind};
use crate::cmd::ip;

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// The two namespaces; deleted on drop.
pub struct VethPair {
    pub ns: NsSet,
    pub ends: PathEnds,
}

pub fn build() -> Result<VethPair> {
    let mut ns = NsSet::new();
    let a = ns.add("vp-a", &[])?;
    let b = ns.add("vp-b", &[])?;
    ip(&[
        "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
    ])?;
    for (n, addr) in [(&a, CLIENT_IP), (&b, SERVER_IP)] {
        ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&["-n", n, "link", "set", "eth0", "mtu", "1450", "up"])?;
    }
    Ok(VethPair {
        ends: PathEnds {
            path: PathKind::VethPair,
            client_ns: a,
            server_ns: b,
            dst: SERVER_IP,
            seen_src: CLIENT_IP,
            listen: Ipv4Addr::UNSPECIFIED,
        },
        ns,
    })
}
