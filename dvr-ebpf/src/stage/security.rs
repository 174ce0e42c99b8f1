//! Port security (stage, leaf): a frame from a tap must carry the port's MAC and IP (or an
//! allowed address pair). IPv6 likewise, against the port's IPv6 entries (fixed IPs, its
//! EUI-64 link-local address, IPv6 pairs); the unspecified source `::` only for what a node
//! sends before it has an address (duplicate address detection's neighbour solicitation,
//! multicast listener reports). Maps: reads DVR_PORT_SEC, DVR_PORT_SEC6. Verdicts:
//! drop_spoof_mac, drop_spoof_ip, drop_spoof_arp, drop_spoof_nd.
use aya_ebpf::maps::lpm_trie::Key;
use dvr_common::{
    Mac,
    ip6::{Ip6, SEC6_KEY_PREFIX_BITS, Sec6Key},
    port::{SEC_IP_ALLOWED, SEC_KEY_PREFIX_BITS, SecKey},
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_PORT_SEC, DVR_PORT_SEC6},
        packet::{MLD_REPORT, MLD2_REPORT, ND_NEIGHBOR_SOLICIT},
        verdict::Verdict,
    },
    net::flow6::Flow6,
};

/// Check (tap, source MAC, source IP). `ip_stat` is the reason used when the MAC is the
/// port's but the address is not (IP or ARP sender).
#[inline(always)]
pub fn check(ifindex: u32, mac: &Mac, ip: [u8; 4], ip_stat: Stat) -> Result<(), Verdict> {
    let key = Key::new(
        SEC_KEY_PREFIX_BITS + 32,
        SecKey {
            ifindex_be: ifindex.to_be(),
            mac: *mac,
            _pad: [0; 2],
            ip_be: u32::from_ne_bytes(ip),
        },
    );
    match DVR_PORT_SEC.get(&key) {
        Some(flags) if *flags & SEC_IP_ALLOWED != 0 => Ok(()),
        Some(_) => Err(Verdict::drop(ip_stat)),
        None => Err(Verdict::drop(Stat::DropSpoofMac)),
    }
}

/// The flags of the longest DVR_PORT_SEC6 entry for (tap, MAC, IPv6 address), if any.
#[inline(always)]
fn lookup6(ifindex: u32, mac: &Mac, ip: &Ip6) -> Option<u32> {
    let key = Key::new(
        SEC6_KEY_PREFIX_BITS + 128,
        Sec6Key {
            ifindex_be: ifindex.to_be(),
            mac: *mac,
            _pad: [0; 2],
            ip: *ip,
        },
    );
    DVR_PORT_SEC6.get(&key).copied()
}

/// Check (tap, MAC, IPv6 address) as [`check`] does: `ip_stat` when the MAC is the port's
/// but the address is not (source address, or a neighbour advertisement's target).
#[inline(always)]
pub fn check6(ifindex: u32, mac: &Mac, ip: &Ip6, ip_stat: Stat) -> Result<(), Verdict> {
    match lookup6(ifindex, mac, ip) {
        Some(flags) if flags & SEC_IP_ALLOWED != 0 => Ok(()),
        Some(_) => Err(Verdict::drop(ip_stat)),
        None => Err(Verdict::drop(Stat::DropSpoofMac)),
    }
}

/// Check the source of IPv6 packet `f` from tap `ifindex` with source MAC `mac`. From `::`
/// only the port's MAC is checked, and only a neighbour solicitation (duplicate address
/// detection) or a multicast listener report may come from there, whatever pairs the port
/// has.
#[inline(always)]
pub fn source6(ifindex: u32, mac: &Mac, f: &Flow6) -> Result<(), Verdict> {
    if !f.src_unspecified {
        return check6(ifindex, mac, &f.saddr, Stat::DropSpoofIp);
    }
    if lookup6(ifindex, mac, &f.saddr).is_none() {
        return Err(Verdict::drop(Stat::DropSpoofMac));
    }
    match f.icmp6() {
        Some(ND_NEIGHBOR_SOLICIT | MLD_REPORT | MLD2_REPORT) => Ok(()),
        _ => Err(Verdict::drop(Stat::DropSpoofIp)),
    }
}
