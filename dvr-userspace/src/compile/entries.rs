//! The desired contents of every agent-written map, and how their keys are spelled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dvr_common::l2::{FdbEntry, FdbKey, FloodSet, MacKey};
use dvr_common::nat::{FipEntry, FipSrc, VipCandidate, VipKey};
use dvr_common::port::{LocalPort, SecKey};
use dvr_common::route::{Endpoint, IpKey, Route, RouteKey, RouterIface};
use dvr_common::snat::{SnatRouter, SnatSteer};

use crate::model::Mac;

/// Desired contents of every agent-written map. LPM keys carry their prefix length.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MapEntries {
    /// Tap ifindex -> port.
    pub local_ports: BTreeMap<u32, LocalPort>,
    /// (LPM prefix length, key) -> `SEC_*` flags.
    pub port_security: BTreeMap<(u32, SecKey), u32>,
    pub fdb: BTreeMap<FdbKey, FdbEntry>,
    /// VNI -> flood set.
    pub flood: BTreeMap<u32, FloodSet>,
    /// DVR MAC -> tunnel ip (host order).
    pub dvr_macs: BTreeMap<MacKey, u32>,
    /// Tunnel ip (host order) -> 1.
    pub tunnel_peers: BTreeMap<u32, u32>,
    pub gw_by_mac: BTreeMap<FdbKey, RouterIface>,
    pub gw_by_ip: BTreeMap<IpKey, RouterIface>,
    /// (LPM prefix length, key) -> route.
    pub routes: BTreeMap<(u32, RouteKey), Route>,
    pub endpoints: BTreeMap<IpKey, Endpoint>,
    /// Floating IP (network order) -> entry.
    pub fips: BTreeMap<u32, FipEntry>,
    /// (VNI, fixed IP) of a local port -> its floating IP.
    pub fip_src: BTreeMap<IpKey, FipSrc>,
    /// External gateway IPs (network order); the datapath learns their MACs.
    pub ext_neigh: BTreeSet<u32>,
    /// (LPM prefix length, network address in network order) -> router id: tenant subnets
    /// of H's routers, unreachable directly from the external network.
    pub ext_deny: BTreeMap<(u32, u32), u32>,
    /// (VNI, router interface MAC) on a served network -> where the router's SNAT is.
    pub snat_steer: BTreeMap<FdbKey, SnatSteer>,
    /// (VNI, csnat port MAC) of the routers this host does SNAT for -> the router.
    pub snat_routers: BTreeMap<FdbKey, SnatRouter>,
    /// External address (network order) of the routers this host does SNAT for -> the router.
    pub snat_ips: BTreeMap<u32, SnatRouter>,
    /// (VNI, VIP, candidate MAC) -> where that candidate port is: the ports allowed to claim
    /// a VIP, on the VIP's router's SNAT host and on hosts serving the VIP's network.
    pub vip_cand: BTreeMap<VipKey, VipCandidate>,
}

/// 32-bit FNV-1a of the UTF-8 bytes: the stable short id of routers and ports.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// An IPv4 address in network byte order, as `*_be` fields hold it.
pub(super) fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(super) fn fdb_key(vni: u32, mac: Mac) -> FdbKey {
    FdbKey {
        vni,
        mac,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_known_vectors() {
        assert_eq!(fnv1a32(""), 0x811c_9dc5);
        assert_eq!(fnv1a32("a"), 0xe40c_292c);
        assert_eq!(fnv1a32("foobar"), 0xbf9c_f968);
    }
}
