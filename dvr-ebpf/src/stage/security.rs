//! Port security (stage, leaf): a frame from a tap must carry the port's MAC and IP (or an
//! allowed address pair). Maps: reads DVR_PORT_SEC. Verdicts: drop_spoof_mac,
//! drop_spoof_ip, drop_spoof_arp.
use aya_ebpf::maps::lpm_trie::Key;
use dvr_common::{
    Mac,
    port::{SEC_IP_ALLOWED, SEC_KEY_PREFIX_BITS, SecKey},
    stats::Stat,
};

use crate::base::{maps::DVR_PORT_SEC, verdict::Verdict};

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
