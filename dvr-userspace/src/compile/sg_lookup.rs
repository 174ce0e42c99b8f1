//! The security group check the datapath makes, on compiled entries: the same two
//! longest-prefix lookups (`DVR_SG_REMOTE` with (policy, remote address), then
//! `DVR_SG_RULES` with (class, direction, protocol, port)), for `dvrctl trace`,
//! `dvrctl show sg` and the agent's conntrack re-check. Pure.
//!
//! Matching follows the kernel's LPM trie (`kernel/bpf/lpm_trie.c`): an entry of prefix
//! length `n` matches a key when the first `n` bits of the two keys' data are equal, bytes
//! taken in memory order (the `#[repr(C)]` layout) and bits most significant first; the
//! longest matching entry wins. The trie keeps one entry per (length, first `length` bits),
//! so this mirror expects keys whose bits past their length are zero, as the compiler
//! writes them ([`sg_entries_canonical`]).

use std::collections::BTreeMap;

use dvr_common::sg::{SG_REMOTE_PREFIX_BITS, SG_RULE_FULL_BITS, SgRemoteKey, SgRule, SgRuleKey};

/// The key data of an LPM map, as the trie sees it.
trait LpmKey: Ord + Copy {
    /// The data's bits: the longest prefix length.
    const BITS: u32;
    /// The data in memory order.
    fn to_bytes(self) -> [u8; 8];
    fn from_bytes(bytes: [u8; 8]) -> Self;
}

impl LpmKey for SgRemoteKey {
    const BITS: u32 = SG_REMOTE_PREFIX_BITS + 32;

    fn to_bytes(self) -> [u8; 8] {
        let [a, b, c, d] = self.policy.to_ne_bytes();
        let [e, f, g, h] = self.ip_be.to_ne_bytes();
        [a, b, c, d, e, f, g, h]
    }

    fn from_bytes(x: [u8; 8]) -> Self {
        SgRemoteKey {
            policy: u32::from_ne_bytes([x[0], x[1], x[2], x[3]]),
            ip_be: u32::from_ne_bytes([x[4], x[5], x[6], x[7]]),
        }
    }
}

impl LpmKey for SgRuleKey {
    const BITS: u32 = SG_RULE_FULL_BITS;

    fn to_bytes(self) -> [u8; 8] {
        let [a, b, c, d] = self.class.to_ne_bytes();
        let [g, h] = self.port_be.to_ne_bytes();
        [a, b, c, d, self.dir, self.proto, g, h]
    }

    fn from_bytes(x: [u8; 8]) -> Self {
        SgRuleKey {
            class: u32::from_ne_bytes([x[0], x[1], x[2], x[3]]),
            dir: x[4],
            proto: x[5],
            port_be: u16::from_ne_bytes([x[6], x[7]]),
        }
    }
}

/// `bytes` with every bit past the first `len` cleared.
fn mask(mut bytes: [u8; 8], len: u32) -> [u8; 8] {
    for (i, byte) in (0u32..).zip(bytes.iter_mut()) {
        let keep = len.saturating_sub(i * 8).min(8);
        *byte &= !(0xffu16 >> keep) as u8;
    }
    bytes
}

/// The longest entry matching `key`: (prefix length, value).
fn longest_match<K: LpmKey, V: Copy>(map: &BTreeMap<(u32, K), V>, key: K) -> Option<(u32, V)> {
    let bytes = key.to_bytes();
    (0..=K::BITS)
        .rev()
        .find_map(|len| Some((len, *map.get(&(len, K::from_bytes(mask(bytes, len))))?)))
}

fn canonical<K: LpmKey, V>(map: &BTreeMap<(u32, K), V>) -> bool {
    map.keys()
        .all(|&(len, key)| len <= K::BITS && mask(key.to_bytes(), len) == key.to_bytes())
}

/// True when every key's bits past its prefix length are zero and no length is too long:
/// what the kernel trie would store for these entries is then exactly these entries.
pub fn sg_entries_canonical(
    remote: &BTreeMap<(u32, SgRemoteKey), u32>,
    rules: &BTreeMap<(u32, SgRuleKey), SgRule>,
) -> bool {
    canonical(remote) && canonical(rules)
}

/// How ICMP type and code sit in [`SgRuleKey::port_be`]: type in the first byte, code in
/// the second.
pub fn icmp_port_be(icmp_type: u8, code: u8) -> u16 {
    u16::from_ne_bytes([icmp_type, code])
}

/// Lookup 1: the class of the rules of `policy` whose remote contains `remote_ip_be`
/// (network order); `None` when no rule names it.
pub fn sg_class(
    remote: &BTreeMap<(u32, SgRemoteKey), u32>,
    policy: u32,
    remote_ip_be: u32,
) -> Option<u32> {
    let key = SgRemoteKey {
        policy,
        ip_be: remote_ip_be,
    };
    longest_match(remote, key)
        .filter(|&(len, _)| len >= SG_REMOTE_PREFIX_BITS)
        .map(|(_, class)| class)
}

/// Lookup 2: the rule of `class` that admits a packet of direction `dir`
/// (`SG_INGRESS` / `SG_EGRESS`), protocol `proto` and destination port `port_be` (network
/// order; for ICMP [`icmp_port_be`]`(type, code)`).
pub fn sg_rule(
    rules: &BTreeMap<(u32, SgRuleKey), SgRule>,
    class: u32,
    dir: u8,
    proto: u8,
    port_be: u16,
) -> Option<SgRule> {
    let key = SgRuleKey {
        class,
        dir,
        proto,
        port_be,
    };
    longest_match(rules, key).map(|(_, rule)| rule)
}

/// The rule that admits the packet, or `None` when no rule of the policy does: both
/// lookups, as the datapath makes them. `remote_ip_be` is the packet's remote side (the
/// destination of egress, the source of ingress).
pub fn sg_admit(
    remote: &BTreeMap<(u32, SgRemoteKey), u32>,
    rules: &BTreeMap<(u32, SgRuleKey), SgRule>,
    policy: u32,
    dir: u8,
    proto: u8,
    port_be: u16,
    remote_ip_be: u32,
) -> Option<SgRule> {
    let class = sg_class(remote, policy, remote_ip_be)?;
    sg_rule(rules, class, dir, proto, port_be)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ip;

    #[test]
    fn mask_clears_bits_past_the_length_msb_first() {
        let all = [0xff; 8];
        assert_eq!(mask(all, 0), [0; 8]);
        assert_eq!(mask(all, 64), all);
        assert_eq!(mask(all, 12), [0xff, 0xf0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask(all, 33), [0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0]);
        assert_eq!(
            mask([1, 2, 3, 4, 10, 0, 1, 9], 56),
            [1, 2, 3, 4, 10, 0, 1, 0]
        );
    }

    #[test]
    fn keys_are_their_memory_layout() {
        let key = SgRuleKey {
            class: 0x0102_0304,
            dir: 5,
            proto: 6,
            port_be: 80u16.to_be(),
        };
        assert_eq!(size_of::<SgRuleKey>(), 8);
        // SAFETY: SgRuleKey is #[repr(C)], 8 bytes without padding (size asserted above).
        let raw: [u8; 8] = unsafe { std::mem::transmute(key) };
        assert_eq!(key.to_bytes(), raw);
        assert_eq!(SgRuleKey::from_bytes(raw), key);
        assert_eq!(&raw[4..], [5, 6, 0, 80]);
        let key = SgRemoteKey {
            policy: 7,
            ip_be: ip(10, 1, 2, 3),
        };
        // SAFETY: SgRemoteKey is #[repr(C)], two u32 without padding.
        let raw: [u8; 8] = unsafe { std::mem::transmute(key) };
        assert_eq!(key.to_bytes(), raw);
        assert_eq!(SgRemoteKey::from_bytes(raw), key);
        assert_eq!(&raw[4..], [10, 1, 2, 3]);
    }

    #[test]
    fn longest_entry_wins_and_short_entries_match_anything_below() {
        let k = |ip_be| SgRemoteKey { policy: 9, ip_be };
        let remote = BTreeMap::from([
            ((32, k(0)), 1),
            ((32 + 8, k(ip(10, 0, 0, 0))), 2),
            ((32 + 32, k(ip(10, 1, 2, 3))), 3),
        ]);
        assert_eq!(sg_class(&remote, 9, ip(10, 1, 2, 3)), Some(3));
        assert_eq!(sg_class(&remote, 9, ip(10, 1, 2, 4)), Some(2));
        assert_eq!(sg_class(&remote, 9, ip(11, 1, 2, 4)), Some(1));
        assert_eq!(sg_class(&remote, 8, ip(10, 1, 2, 3)), None);
        assert!(sg_entries_canonical(&remote, &BTreeMap::new()));
        let bad = BTreeMap::from([((32 + 8, k(ip(10, 0, 0, 1))), 2)]);
        assert!(!sg_entries_canonical(&bad, &BTreeMap::new()));
    }
}
