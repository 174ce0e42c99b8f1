//! VIP tracking (stage, leaf): a VIP (the address of an unbound port, held by one of the
//! VMs whose allowed address pairs contain it, moved by keepalived) is located by the ARP
//! its holder sends, in the datapath, with no agent round trip: on the holder's host from
//! the tap, on other hosts from the tunnel. Only a candidate port (right MAC, right tap or
//! right host) can claim a VIP. Maps: reads DVR_VIP_CAND; reads and writes DVR_VIP_LOC.
//! Verdicts: none.
use dvr_common::{
    Mac,
    nat::{VipKey, VipLoc},
    route::IpKey,
};

use crate::{
    base::{
        clock,
        maps::{DVR_VIP_CAND, DVR_VIP_LOC},
    },
    net::l2::Location,
};

/// An ARP with sender (`mac`, `ip`) seen on network `vni`, from a local tap or from a
/// tunnel peer (`from`).
#[inline(always)]
pub fn learn(vni: u32, ip: [u8; 4], mac: &Mac, from: Location) {
    let ip_be = u32::from_ne_bytes(ip);
    let k = VipKey {
        vni,
        ip_be,
        mac: *mac,
        _pad: [0; 2],
    };
    // SAFETY: read-only use of an agent-written hash value.
    let Some(c) = (unsafe { DVR_VIP_CAND.get(&k) }) else {
        return;
    };
    let (from_candidate, ifindex, tunnel_ip_host) = match from {
        Location::Local(ifindex) => (c.ifindex == ifindex, ifindex, 0),
        Location::Remote(host) => (c.tunnel_ip_host != 0 && c.tunnel_ip_host == host, 0, host),
    };
    if !from_candidate {
        return;
    }
    let loc = VipLoc {
        mac: *mac,
        _pad: [0; 2],
        ifindex,
        tunnel_ip_host,
        learned_ns: clock::coarse_ns(),
    };
    let _ = DVR_VIP_LOC.insert(&IpKey { vni, ip_be }, &loc, 0);
}

/// Where VIP `ip_be` of network `vni` is now.
#[inline(always)]
pub fn locate(vni: u32, ip_be: u32) -> Option<VipLoc> {
    // SAFETY: read-only copy of a datapath-written hash value (written whole).
    unsafe { DVR_VIP_LOC.get(&IpKey { vni, ip_be }) }.copied()
}
