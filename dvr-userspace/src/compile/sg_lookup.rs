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

use dvr_common::{
    ip6::Ip6,
    sg::{SG_REMOTE_PREFIX_BITS, SG_RULE_FULL_BITS, SgRemote6Key, SgRemoteKey, SgRule, SgRuleKey},
};

/// Bytes of the longest key data (an [`SgRemote6Key`]); shorter keys leave the rest zero.
const KEY_BYTES: usize = 20;

/// The key data of an LPM map, as the trie sees it.
trait LpmKey: Ord + Copy {
    /// The data's bits: the longest prefix length.
    const BITS: u32;
    /// The data in memory order (zero past its size).
    fn to_bytes(self) -> [u8; KEY_BYTES];
    fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self;
}

/// `N` bytes at the start of a zeroed key buffer.
fn bytes_of<const N: usize>(data: [u8; N]) -> [u8; KEY_BYTES] {
    let mut out = [0; KEY_BYTES];
    out[..N].copy_from_slice(&data);
    out
}

/// The first `N` bytes of a key buffer.
fn first<const N: usize>(x: &[u8; KEY_BYTES]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&x[..N]);
    out
}

impl LpmKey for SgRemoteKey {
    const BITS: u32 = SG_REMOTE_PREFIX_BITS + 32;

    fn to_bytes(self) -> [u8; KEY_BYTES] {
        let [a, b, c, d] = self.policy.to_ne_bytes();
        let [e, f, g, h] = self.ip_be.to_ne_bytes();
        bytes_of([a, b, c, d, e, f, g, h])
    }

    fn from_bytes(x: [u8; KEY_BYTES]) -> Self {
        SgRemoteKey {
            policy: u32::from_ne_bytes([x[0], x[1], x[2], x[3]]),
            ip_be: u32::from_ne_bytes([x[4], x[5], x[6], x[7]]),
        }
    }
}

impl LpmKey for SgRemote6Key {
    const BITS: u32 = SG_REMOTE_PREFIX_BITS + 128;

    fn to_bytes(self) -> [u8; KEY_BYTES] {
        let mut out = bytes_of(self.policy.to_ne_bytes());
        out[4..].copy_from_slice(&self.ip);
        out
    }

    fn from_bytes(x: [u8; KEY_BYTES]) -> Self {
        let mut ip = [0; 16];
        ip.copy_from_slice(&x[4..]);
        SgRemote6Key {
            policy: u32::from_ne_bytes(first(&x)),
            ip,
        }
    }
}

impl LpmKey for SgRuleKey {
    const BITS: u32 = SG_RULE_FULL_BITS;

    fn to_bytes(self) -> [u8; KEY_BYTES] {
        let [a, b, c, d] = self.class.to_ne_bytes();
        let [g, h] = self.port_be.to_ne_bytes();
        bytes_of([a, b, c, d, self.dir, self.proto, g, h])
    }

    fn from_bytes(x: [u8; KEY_BYTES]) -> Self {
        SgRuleKey {
            class: u32::from_ne_bytes([x[0], x[1], x[2], x[3]]),
            dir: x[4],
            proto: x[5],
            port_be: u16::from_ne_bytes([x[6], x[7]]),
        }
    }
}

/// `bytes` with every bit past the first `len` cleared.
fn mask(mut bytes: [u8; KEY_BYTES], len: u32) -> [u8; KEY_BYTES] {
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

/// True when the IPv6 remote trie's keys are canonical (see [`sg_entries_canonical`]).
pub fn sg_remote6_canonical(remote6: &BTreeMap<(u32, SgRemote6Key), u32>) -> bool {
    canonical(remote6)
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

/// A remote trie as read or compiled, of either family: `DVR_SG_REMOTE` (addresses `u32`,
/// network order) or `DVR_SG_REMOTE6` (`Ip6`), and its lookup 1.
pub trait SgRemotes {
    type Addr: Copy;
    /// The class of the rules of `policy` whose remote contains `remote`.
    fn class(&self, policy: u32, remote: Self::Addr) -> Option<u32>;
}

impl SgRemotes for BTreeMap<(u32, SgRemoteKey), u32> {
    type Addr = u32;
    fn class(&self, policy: u32, remote: u32) -> Option<u32> {
        sg_class(self, policy, remote)
    }
}

impl SgRemotes for BTreeMap<(u32, SgRemote6Key), u32> {
    type Addr = Ip6;
    fn class(&self, policy: u32, remote: Ip6) -> Option<u32> {
        sg_class6(self, policy, &remote)
    }
}

/// The rule that admits the packet, or `None` when no rule of the policy does: both
/// lookups, as the datapath makes them, for either family (ICMPv6 type and code as
/// [`icmp_port_be`] too). `remote_ip` is the packet's remote side (the destination of
/// egress, the source of ingress).
pub fn sg_admit<R: SgRemotes>(
    remote: &R,
    rules: &BTreeMap<(u32, SgRuleKey), SgRule>,
    policy: u32,
    dir: u8,
    proto: u8,
    port_be: u16,
    remote_ip: R::Addr,
) -> Option<SgRule> {
    let class = remote.class(policy, remote_ip)?;
    sg_rule(rules, class, dir, proto, port_be)
}

/// Lookup 1 for IPv6: the class of the IPv6 rules of `policy` whose remote contains
/// `remote` (`DVR_SG_REMOTE6`).
pub fn sg_class6(
    remote6: &BTreeMap<(u32, SgRemote6Key), u32>,
    policy: u32,
    remote: &Ip6,
) -> Option<u32> {
    let key = SgRemote6Key {
        policy,
        ip: *remote,
    };
    longest_match(remote6, key)
        .filter(|&(len, _)| len >= SG_REMOTE_PREFIX_BITS)
        .map(|(_, class)| class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Compiled, fnv1a32};
    use crate::testing::*;
    use dvr_common::sg::{SG_EGRESS, SG_INGRESS};
    use serde_json::{Value, json};

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;

    #[test]
    fn mask_clears_bits_past_the_length_msb_first() {
        let all = bytes_of([0xff; 8]);
        assert_eq!(mask(all, 0), [0; KEY_BYTES]);
        assert_eq!(mask(all, 64), all);
        assert_eq!(mask(all, 12), bytes_of([0xff, 0xf0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(
            mask(all, 33),
            bytes_of([0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0])
        );
        assert_eq!(
            mask(bytes_of([1, 2, 3, 4, 10, 0, 1, 9]), 56),
            bytes_of([1, 2, 3, 4, 10, 0, 1, 0])
        );
        assert_eq!(mask([0xff; KEY_BYTES], 160), [0xff; KEY_BYTES]);
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
        assert_eq!(key.to_bytes(), bytes_of(raw));
        assert_eq!(SgRuleKey::from_bytes(bytes_of(raw)), key);
        assert_eq!(&raw[4..], [5, 6, 0, 80]);
        let key = SgRemoteKey {
            policy: 7,
            ip_be: ip(10, 1, 2, 3),
        };
        // SAFETY: SgRemoteKey is #[repr(C)], two u32 without padding.
        let raw: [u8; 8] = unsafe { std::mem::transmute(key) };
        assert_eq!(key.to_bytes(), bytes_of(raw));
        assert_eq!(SgRemoteKey::from_bytes(bytes_of(raw)), key);
        let key6 = SgRemote6Key {
            policy: 7,
            ip: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        };
        // SAFETY: SgRemote6Key is #[repr(C)], a u32 and 16 bytes, 20 bytes without padding.
        let raw6: [u8; 20] = unsafe { std::mem::transmute(key6) };
        assert_eq!(key6.to_bytes(), raw6);
        assert_eq!(SgRemote6Key::from_bytes(raw6), key6);
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

    /// Security groups on the fixture: vm1 (host-a, 10.0.1.10) carries `web`, vm3 (host-b,
    /// 10.0.1.30, address pair 192.168.0.7) `web` too, vm2 (host-a) an empty set.
    fn sg_state() -> Value {
        let mut v = fixture_value();
        v["security_groups"] = json!([{"id": "web", "security_group_rules": [
            {"id": "tcp-any", "direction": "ingress", "protocol": "tcp",
             "port_range_min": 8000, "port_range_max": 8080},
            {"id": "udp-lan", "direction": "ingress", "protocol": "udp",
             "port_range_min": 53, "remote_ip_prefix": "192.168.0.0/24"},
            {"id": "ping-10", "direction": "ingress", "protocol": "icmp",
             "port_range_min": 8, "remote_ip_prefix": "10.0.0.0/8"},
            {"id": "unreach", "direction": "ingress", "protocol": "icmp",
             "port_range_min": 3, "port_range_max": 4},
            {"id": "ssh-members", "direction": "ingress", "protocol": "tcp",
             "port_range_min": 22, "remote_group_id": "web"},
            {"id": "https-office", "direction": "ingress", "protocol": "tcp",
             "port_range_min": 443, "remote_address_group_id": "office"},
            {"id": "out-dns", "direction": "egress", "protocol": "udp", "port_range_min": 53},
            {"id": "v6-web", "direction": "ingress", "ethertype": "IPv6", "protocol": "tcp",
             "port_range_min": 80}
        ]}]);
        v["address_groups"] = json!([{"id": "office",
            "addresses": ["198.51.100.0/24", "2001:db8::/64"]}]);
        elem(&mut v, "ports", "id", "vm1")["security_groups"] = json!(["web"]);
        let vm3 = elem(&mut v, "ports", "id", "vm3");
        vm3["security_groups"] = json!(["web"]);
        vm3["allowed_address_pairs"] = json!([{"ip_address": "192.168.0.7"}]);
        elem(&mut v, "ports", "id", "vm2")["security_groups"] = json!([]);
        v
    }

    struct Check {
        c: Compiled,
        policy: u32,
    }

    impl Check {
        fn new(policy: &str) -> Self {
            Check {
                c: compiled(&sg_state(), "host-a", &all_taps),
                policy: fnv1a32(policy),
            }
        }

        /// The id of the rule admitting it.
        fn admit(&self, dir: u8, proto: u8, port_be: u16, from: [u8; 4]) -> Option<String> {
            let e = &self.c.entries;
            let [a, b, c, d] = from;
            let rule = sg_admit(
                &e.sg_remote,
                &e.sg_rules,
                self.policy,
                dir,
                proto,
                port_be,
                ip(a, b, c, d),
            )?;
            let names = [
                "tcp-any",
                "udp-lan",
                "ping-10",
                "unreach",
                "ssh-members",
                "https-office",
                "out-dns",
            ];
            let name = names.iter().find(|n| fnv1a32(n) == rule.rule_id);
            Some(name.map_or_else(|| format!("{:#x}", rule.rule_id), |n| (*n).to_owned()))
        }

        fn tcp_in(&self, port: u16, from: [u8; 4]) -> Option<String> {
            self.admit(SG_INGRESS, TCP, port.to_be(), from)
        }
    }

    const OUTSIDE: [u8; 4] = [203, 0, 113, 9];
    const VM3: [u8; 4] = [10, 0, 1, 30];
    const VM3_PAIR: [u8; 4] = [192, 168, 0, 7];

    #[test]
    fn tcp_and_udp_ports() {
        let ck = Check::new("web");
        let admitted = |r: &str| Some(r.to_owned());
        assert_eq!(ck.tcp_in(8000, OUTSIDE), admitted("tcp-any"));
        assert_eq!(ck.tcp_in(8080, OUTSIDE), admitted("tcp-any"));
        assert_eq!(ck.tcp_in(8042, OUTSIDE), admitted("tcp-any"));
        assert_eq!(ck.tcp_in(7999, OUTSIDE), None);
        assert_eq!(ck.tcp_in(8081, OUTSIDE), None);
        // UDP 53 only from 192.168.0.0/24; TCP 53 never.
        let lan = [192, 168, 0, 99];
        assert_eq!(
            ck.admit(SG_INGRESS, UDP, 53u16.to_be(), lan),
            admitted("udp-lan")
        );
        assert_eq!(ck.admit(SG_INGRESS, UDP, 54u16.to_be(), lan), None);
        assert_eq!(ck.admit(SG_INGRESS, UDP, 53u16.to_be(), OUTSIDE), None);
        assert_eq!(ck.tcp_in(53, lan), None);
        assert_eq!(ck.admit(SG_INGRESS, 132, 8000u16.to_be(), OUTSIDE), None);
    }

    #[test]
    fn icmp_type_and_code() {
        let ck = Check::new("web");
        let icmp = |t, c, from| ck.admit(SG_INGRESS, ICMP, icmp_port_be(t, c), from);
        // Echo request (any code) from 10/8 only.
        assert_eq!(icmp(8, 0, VM3), Some("ping-10".into()));
        assert_eq!(icmp(8, 5, VM3), Some("ping-10".into()));
        assert_eq!(icmp(8, 0, OUTSIDE), None);
        assert_eq!(icmp(0, 0, VM3), None);
        // Type 3 code 4 from anywhere, not another code.
        assert_eq!(icmp(3, 4, OUTSIDE), Some("unreach".into()));
        assert_eq!(icmp(3, 3, OUTSIDE), None);
        assert_eq!(icmp(4, 3, OUTSIDE), None);
    }

    #[test]
    fn remote_prefix_group_and_address_group() {
        let ck = Check::new("web");
        // remote_group_id: the members' fixed IPs and address pairs, nobody else.
        assert_eq!(ck.tcp_in(22, VM3), Some("ssh-members".into()));
        assert_eq!(ck.tcp_in(22, [10, 0, 1, 10]), Some("ssh-members".into()));
        assert_eq!(ck.tcp_in(22, VM3_PAIR), Some("ssh-members".into()));
        assert_eq!(ck.tcp_in(22, [10, 0, 1, 31]), None);
        assert_eq!(ck.tcp_in(22, [10, 0, 2, 20]), None, "vm2 is in no group");
        // remote_address_group_id: its IPv4 addresses.
        assert_eq!(
            ck.tcp_in(443, [198, 51, 100, 200]),
            Some("https-office".into())
        );
        assert_eq!(ck.tcp_in(443, [198, 51, 101, 1]), None);
        // remote_ip_prefix in and out.
        assert_eq!(
            ck.admit(SG_INGRESS, ICMP, icmp_port_be(8, 0), [10, 255, 0, 1]),
            Some("ping-10".into())
        );
        assert_eq!(
            ck.admit(SG_INGRESS, ICMP, icmp_port_be(8, 0), [11, 0, 0, 1]),
            None
        );
    }

    #[test]
    fn directions_are_apart() {
        let ck = Check::new("web");
        // Egress UDP 53 to anywhere; not ingress UDP 53 from outside the LAN.
        assert_eq!(
            ck.admit(SG_EGRESS, UDP, 53u16.to_be(), OUTSIDE),
            Some("out-dns".into())
        );
        assert_eq!(ck.admit(SG_INGRESS, UDP, 53u16.to_be(), OUTSIDE), None);
        // The ingress TCP rules admit nothing going out.
        assert_eq!(ck.admit(SG_EGRESS, TCP, 8000u16.to_be(), OUTSIDE), None);
        assert_eq!(ck.admit(SG_EGRESS, TCP, 22u16.to_be(), VM3), None);
    }

    #[test]
    fn nested_prefixes_give_the_union_of_their_rules() {
        // 192.168.0.7 is in 0.0.0.0/0 (tcp-any), 192.168.0.0/24 (udp-lan) and a member /32
        // (ssh-members): all three admit. Its /24 neighbour is not a member.
        let ck = Check::new("web");
        assert_eq!(ck.tcp_in(8001, VM3_PAIR), Some("tcp-any".into()));
        assert_eq!(
            ck.admit(SG_INGRESS, UDP, 53u16.to_be(), VM3_PAIR),
            Some("udp-lan".into())
        );
        assert_eq!(ck.tcp_in(22, VM3_PAIR), Some("ssh-members".into()));
        let neighbour = [192, 168, 0, 8];
        assert_eq!(ck.tcp_in(8001, neighbour), Some("tcp-any".into()));
        assert_eq!(
            ck.admit(SG_INGRESS, UDP, 53u16.to_be(), neighbour),
            Some("udp-lan".into())
        );
        assert_eq!(ck.tcp_in(22, neighbour), None);
        assert!(sg_entries_canonical(
            &ck.c.entries.sg_remote,
            &ck.c.entries.sg_rules
        ));
    }

    #[test]
    fn empty_group_set_admits_nothing() {
        let ck = Check::new("");
        assert_eq!(
            ck.c.entries.local_ports.get(&IFX_VM2).map(|p| p.policy),
            Some(ck.policy)
        );
        for from in [OUTSIDE, VM3, VM3_PAIR] {
            for (dir, proto, port) in [
                (SG_INGRESS, TCP, 22u16.to_be()),
                (SG_INGRESS, TCP, 8000u16.to_be()),
                (SG_EGRESS, UDP, 53u16.to_be()),
                (SG_INGRESS, ICMP, icmp_port_be(3, 4)),
            ] {
                assert_eq!(ck.admit(dir, proto, port, from), None);
            }
        }
    }

    /// Neutron's default group on the dual-stack fixture (one egress rule per ethertype,
    /// one ingress rule per ethertype from the group itself) on vm1 and vm3, plus `web6`
    /// on vm1: IPv6 HTTP from anywhere, IPv6 echo requests (`icmp` on an IPv6 rule), IPv6
    /// HTTPS from an address group holding both families.
    fn default_state(ethertypes: &[&str]) -> Value {
        let mut v = dual_stack_value();
        let mut rules = Vec::new();
        for et in ethertypes {
            rules.push(json!({"id": format!("eg-{et}"), "direction": "egress", "ethertype": et}));
            rules.push(
                json!({"id": format!("in-{et}"), "direction": "ingress", "ethertype": et,
                "remote_group_id": "default"}),
            );
        }
        v["security_groups"] = json!([
            {"id": "default", "security_group_rules": rules},
            {"id": "web6", "security_group_rules": [
                {"id": "http6", "direction": "ingress", "ethertype": "IPv6", "protocol": "tcp",
                 "port_range_min": 80},
                {"id": "echo6", "direction": "ingress", "ethertype": "IPv6", "protocol": "icmp",
                 "port_range_min": 128},
                {"id": "https6", "direction": "ingress", "ethertype": "IPv6", "protocol": "tcp",
                 "port_range_min": 443, "remote_address_group_id": "office"}]}
        ]);
        v["address_groups"] = json!([{"id": "office",
            "addresses": ["198.51.100.0/24", "2001:db8::/64"]}]);
        elem(&mut v, "ports", "id", "vm1")["security_groups"] = json!(["default", "web6"]);
        elem(&mut v, "ports", "id", "vm3")["security_groups"] = json!(["default"]);
        v
    }

    fn v6(s: &str) -> Ip6 {
        s.parse::<std::net::Ipv6Addr>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .octets()
    }

    /// The rule (by id, among `names`) admitting an IPv6 packet at vm1 (policy
    /// `default,web6`).
    fn admit6(c: &Compiled, dir: u8, proto: u8, port_be: u16, remote: &str) -> Option<String> {
        let e = &c.entries;
        let rule = sg_admit(
            &e.sg_remote6,
            &e.sg_rules,
            fnv1a32("default,web6"),
            dir,
            proto,
            port_be,
            v6(remote),
        )?;
        let names = [
            "eg-IPv4", "in-IPv4", "eg-IPv6", "in-IPv6", "http6", "echo6", "https6",
        ];
        let name = names.iter().find(|n| fnv1a32(n) == rule.rule_id);
        Some(name.map_or_else(|| format!("{:#x}", rule.rule_id), |n| (*n).to_owned()))
    }

    fn admit4(c: &Compiled, dir: u8, proto: u8, port_be: u16, remote: [u8; 4]) -> Option<u32> {
        let e = &c.entries;
        let [a, b, cc, d] = remote;
        sg_admit(
            &e.sg_remote,
            &e.sg_rules,
            fnv1a32("default,web6"),
            dir,
            proto,
            port_be,
            ip(a, b, cc, d),
        )
        .map(|r| r.rule_id)
    }

    const ICMP6: u8 = 58;
    const VM3_V6: &str = "fd00:1::f816:3eff:fe00:3";
    const OUTSIDE_V6: &str = "2001:db8:1::9";

    #[test]
    fn ipv6_rules_by_remote_group_prefix_and_address_group() {
        let c = compiled(&default_state(&["IPv4", "IPv6"]), "host-a", &all_taps);
        let ssh = 22u16.to_be();
        // Group members' IPv6 fixed IPs and IPv6 pairs (vm1's own: fd00:1::100, fd00:9::/64).
        for member in [
            VM3_V6,
            "fd00:1::f816:3eff:fe00:1",
            "fd00:1::100",
            "fd00:9::77",
        ] {
            assert_eq!(
                admit6(&c, SG_INGRESS, TCP, ssh, member),
                Some("in-IPv6".into()),
                "{member}"
            );
        }
        assert_eq!(admit6(&c, SG_INGRESS, TCP, ssh, OUTSIDE_V6), None);
        assert_eq!(admit6(&c, SG_INGRESS, TCP, ssh, "fd00:1::5"), None);
        assert_eq!(
            admit6(&c, SG_INGRESS, TCP, 80u16.to_be(), OUTSIDE_V6),
            Some("http6".into())
        );
        assert_eq!(
            admit6(&c, SG_INGRESS, TCP, 443u16.to_be(), "2001:db8::7"),
            Some("https6".into())
        );
        assert_eq!(
            admit6(&c, SG_INGRESS, TCP, 443u16.to_be(), OUTSIDE_V6),
            None
        );
        // Egress: anything to anywhere, by the IPv6 egress rule.
        assert_eq!(
            admit6(&c, SG_EGRESS, UDP, 53u16.to_be(), OUTSIDE_V6),
            Some("eg-IPv6".into())
        );
        // The address group's IPv4 prefix is no IPv6 remote, nor the other way round.
        assert!(c.entries.sg_remote.keys().all(|(len, _)| *len <= 64));
        assert!(
            c.entries
                .sg_remote6
                .keys()
                .all(|(len, k)| *len <= 160 && k.policy != 0)
        );
        assert_eq!(
            admit4(&c, SG_INGRESS, TCP, 443u16.to_be(), [198, 51, 100, 1]),
            None
        );
        assert!(sg_remote6_canonical(&c.entries.sg_remote6));
        assert!(sg_entries_canonical(
            &c.entries.sg_remote,
            &c.entries.sg_rules
        ));
    }

    #[test]
    fn icmpv6_rule_with_a_type_admits_that_type_only() {
        let c = compiled(&default_state(&[]), "host-a", &all_taps);
        let echo = icmp_port_be(128, 0);
        assert_eq!(
            admit6(&c, SG_INGRESS, ICMP6, echo, OUTSIDE_V6),
            Some("echo6".into())
        );
        for other in [icmp_port_be(129, 0), icmp_port_be(1, 4), icmp_port_be(3, 0)] {
            assert_eq!(admit6(&c, SG_INGRESS, ICMP6, other, OUTSIDE_V6), None);
        }
        // ICMP (IPv4's protocol number) is not ICMPv6.
        assert_eq!(
            admit6(&c, SG_INGRESS, ICMP, icmp_port_be(8, 0), OUTSIDE_V6),
            None
        );
    }

    #[test]
    fn ipv4_rules_never_admit_ipv6_and_the_other_way_round() {
        let only4 = compiled(&default_state(&["IPv4"]), "host-a", &all_taps);
        let only6 = compiled(&default_state(&["IPv6"]), "host-b", &all_taps);
        // vm3 (host-b, policy "default") with IPv6 rules only: no IPv4 remote at all.
        assert!(only6.entries.sg_remote.is_empty());
        assert!(!only6.entries.sg_remote6.is_empty());
        let vm3 = |c: &Compiled, dir: u8, v6: bool| {
            let e = &c.entries;
            let policy = fnv1a32("default");
            if v6 {
                sg_admit(
                    &e.sg_remote6,
                    &e.sg_rules,
                    policy,
                    dir,
                    TCP,
                    22u16.to_be(),
                    [0; 16],
                )
                .is_some()
            } else {
                sg_admit(
                    &e.sg_remote,
                    &e.sg_rules,
                    policy,
                    dir,
                    TCP,
                    22u16.to_be(),
                    0,
                )
                .is_some()
            }
        };
        assert!(vm3(&only6, SG_EGRESS, true));
        assert!(!vm3(&only6, SG_EGRESS, false));
        let only4_b = compiled(&default_state(&["IPv4"]), "host-b", &all_taps);
        assert!(vm3(&only4_b, SG_EGRESS, false));
        assert!(!vm3(&only4_b, SG_EGRESS, true));
        assert!(only4_b.entries.sg_remote6.is_empty());
        // vm1 with the IPv4 default rules and web6: IPv6 from its group's members is refused,
        // IPv4 from them admitted.
        let ssh = 22u16.to_be();
        assert_eq!(admit6(&only4, SG_INGRESS, TCP, ssh, VM3_V6), None);
        assert_eq!(admit6(&only4, SG_EGRESS, TCP, ssh, VM3_V6), None);
        assert_eq!(
            admit4(&only4, SG_INGRESS, TCP, ssh, [10, 0, 1, 30]),
            Some(fnv1a32("in-IPv4"))
        );
        // Both: each family by its own rule.
        let both = compiled(&default_state(&["IPv4", "IPv6"]), "host-a", &all_taps);
        assert_eq!(
            admit4(&both, SG_EGRESS, TCP, ssh, [203, 0, 113, 9]),
            Some(fnv1a32("eg-IPv4"))
        );
        assert_eq!(
            admit6(&both, SG_EGRESS, TCP, ssh, OUTSIDE_V6),
            Some("eg-IPv6".into())
        );
    }
}
