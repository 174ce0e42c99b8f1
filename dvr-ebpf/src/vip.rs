//! VIP tracking: a VIP (the address of an unbound port, held by one of the VMs whose
//! allowed address pairs contain it, moved by keepalived) is located by the ARP its holder
//! sends, in the datapath, with no agent round trip: on the holder's host from the tap, on
//! other hosts from the tunnel. Only a candidate port (right MAC, right tap or right host)
//! can claim a VIP. Reads DVR_VIP_CAND; writes DVR_VIP_LOC.
use dvr_common::{
    Mac,
    nat::{VipKey, VipLoc},
    route::IpKey,
};

use crate::{
    maps::{DVR_VIP_CAND, DVR_VIP_LOC},
    nat,
};

/// An ARP with sender (`mac`, `ip`) seen on network `vni`, from local tap `ifindex` (0 when
/// from the tunnel) or from tunnel peer `remote` (host order, 0 when local).
#[inline(always)]
pub fn learn(vni: u32, ip: [u8; 4], mac: &Mac, ifindex: u32, remote: u32) {
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
    let from_candidate = if ifindex != 0 {
        c.ifindex == ifindex
    } else {
        c.tunnel_ip_host != 0 && c.tunnel_ip_host == remote
    };
    if !from_candidate {
        return;
    }
    let loc = VipLoc {
        mac: *mac,
        _pad: [0; 2],
        ifindex,
        tunnel_ip_host: remote,
        learned_ns: nat::now(),
    };
    let _ = DVR_VIP_LOC.insert(&IpKey { vni, ip_be }, &loc, 0);
}

/// Where VIP `ip_be` of network `vni` is now.
#[inline(always)]
pub fn locate(vni: u32, ip_be: u32) -> Option<VipLoc> {
    // SAFETY: read-only copy of a datapath-written hash value (written whole).
    unsafe { DVR_VIP_LOC.get(&IpKey { vni, ip_be }) }.copied()
}
