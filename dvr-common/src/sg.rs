//! Security groups: the compiled policy of the local ports, looked up per packet in two
//! LPM tries whose cost does not depend on the number of rules or the size of groups.
//!
//! A *policy* is one distinct set of security groups (ports with the same set share it);
//! its id travels in [`crate::port::LocalPort::policy`]. A *class* is one distinct set of
//! rules: every remote address a policy's rules name (a `remote_ip_prefix`, every member
//! address of a `remote_group_id` or `remote_address_group_id`, `0.0.0.0/0` for a rule
//! without a remote) is a prefix in [`DVR_SG_REMOTE`](crate::maps::DVR_SG_REMOTE), and the
//! longest prefix containing an address names the class of exactly the rules whose remote
//! contains it (all prefixes containing an address nest, so the longest one determines the
//! others). [`DVR_SG_RULES`](crate::maps::DVR_SG_RULES) then holds, per class, each rule's
//! direction, protocol and port range (split into aligned power-of-two blocks), so a packet
//! is admitted when both lookups hit: lookup 1 with (policy, remote address), lookup 2 with
//! (class, direction, protocol, destination port or ICMP type and code).
//!
//! Ids: policy, class and rule ids are FNV-1a 32-bit hashes of what they stand for (sorted
//! group ids, sorted rule ids, the rule's UUID), so they are stable across changes and an
//! id is never reused for different content while the agent swaps entries; the compiler
//! refuses a collision.
//!
//! Byte order: `ip_be` and `port_be` in network order (the trie compares bytes in memory
//! order, most significant first); `policy` and `class` are always matched in full, so
//! their byte order does not matter (native).

/// Capacity of the remote-prefix trie (LPM tries are not preallocated).
pub const SG_REMOTES_MAX: u32 = 1 << 20;
/// Capacity of the rule trie.
pub const SG_RULES_MAX: u32 = 1 << 18;

/// Direction of a rule and of a check: towards the VM (checked where it is delivered).
pub const SG_INGRESS: u8 = 1;
/// From the VM (checked where it sends).
pub const SG_EGRESS: u8 = 2;

/// Conntrack zone of a port's security group entries: `SG_ZONE | tap ifindex`. Above every
/// VNI (24 bits) and [`crate::nat::ZONE_EXTERNAL`], so never shared with NAT entries.
pub const SG_ZONE: u32 = 0x8000_0000;

/// Data part of a `DVR_SG_REMOTE` key; the prefix length is
/// [`SG_REMOTE_PREFIX_BITS`] + the remote prefix's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct SgRemoteKey {
    pub policy: u32,
    /// Remote address (network order).
    pub ip_be: u32,
}
crate::assert_size!(SgRemoteKey, 8);

/// Bits of an [`SgRemoteKey`] before the address.
pub const SG_REMOTE_PREFIX_BITS: u32 = 32;

/// Capacity of the IPv6 remote-prefix trie.
pub const SG_REMOTES6_MAX: u32 = 1 << 18;

/// Data part of a `DVR_SG_REMOTE6` key, the IPv6 counterpart of [`SgRemoteKey`]: the
/// prefix length is [`SG_REMOTE_PREFIX_BITS`] + the remote IPv6 prefix's length. Its
/// classes hold only IPv6 rules and theirs only IPv4 ones (a class is a set of rule ids and
/// a rule has one ethertype), so the two families share `DVR_SG_RULES` and never admit each
/// other's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct SgRemote6Key {
    pub policy: u32,
    /// Remote address, as in the packet.
    pub ip: crate::ip6::Ip6,
}
crate::assert_size!(SgRemote6Key, 20);

/// Data part of a `DVR_SG_RULES` key. Prefix lengths: [`SG_RULE_ANY_PROTO_BITS`] for a rule
/// of any protocol, [`SG_RULE_ANY_PORT_BITS`] for a protocol without ports, plus the port
/// block's bits otherwise (a lookup always uses [`SG_RULE_FULL_BITS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct SgRuleKey {
    pub class: u32,
    /// [`SG_INGRESS`] or [`SG_EGRESS`].
    pub dir: u8,
    /// IP protocol number.
    pub proto: u8,
    /// TCP/UDP/SCTP: destination port of the original direction, network order. ICMP: type
    /// in the first byte, code in the second (`port_range_min` / `port_range_max`).
    pub port_be: u16,
}
crate::assert_size!(SgRuleKey, 8);

pub const SG_RULE_ANY_PROTO_BITS: u32 = 40;
pub const SG_RULE_ANY_PORT_BITS: u32 = 48;
pub const SG_RULE_FULL_BITS: u32 = 64;

/// Value of a `DVR_SG_RULES` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SgRule {
    /// FNV-1a 32 of the rule's id: the rule that admits (for traces and conntrack).
    pub rule_id: u32,
}
crate::assert_size!(SgRule, 4);

/// Split the port range `[min, max]` into the fewest aligned power-of-two blocks, as
/// (first port, prefix bits of the 16-bit port) pairs.
pub fn port_blocks(min: u16, max: u16, mut out: impl FnMut(u16, u32)) {
    let (mut lo, hi) = (min as u32, max as u32);
    while lo <= hi {
        // The largest block starting at `lo` (aligned) that does not pass `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out(lo as u16, 16 - size.trailing_zeros());
        lo += size;
    }
}

crate::user_pod!(SgRemoteKey, SgRemote6Key, SgRuleKey, SgRule);

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(min: u16, max: u16) -> [(u16, u32); 40] {
        let mut v = [(0u16, 0u32); 40];
        let mut n = 0;
        port_blocks(min, max, |p, b| {
            v[n] = (p, b);
            n += 1;
        });
        v
    }

    #[test]
    fn port_ranges_become_aligned_blocks() {
        assert_eq!(blocks(80, 80)[..1], [(80, 16)]);
        assert_eq!(blocks(0, 65535)[..1], [(0, 0)]);
        assert_eq!(blocks(1024, 2047)[..1], [(1024, 6)]);
        assert_eq!(blocks(79, 81)[..3], [(79, 16), (80, 15), (0, 0)][..3]);
        let mut covered = 0u32;
        port_blocks(1, 65535, |p, b| {
            let size = 1u32 << (16 - b);
            assert_eq!(p as u32 % size, 0, "aligned");
            covered += size;
        });
        assert_eq!(covered, 65535);
    }
}
