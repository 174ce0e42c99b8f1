//! Internet checksums, shared by the datapath and unit tests: incremental updates (RFC 1624),
//! full checksums, and the ICMPv6 checksum over the IPv6 pseudo header (RFC 8200 8.1).

/// Fold a 32-bit one's complement sum into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after one 16-bit word of the covered data changes from `old` to `new`:
/// HC' = ~(~HC + ~m + m'). All values in the same byte order as the packet words.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    !fold(sum)
}

/// New checksum after a 32-bit field (e.g. an IPv4 address, as two big-endian words) changes
/// from `old` to `new`. Values are the field's bytes read big-endian.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, (old >> 16) as u16, (new >> 16) as u16);
    replace16(c, old as u16, new as u16)
}

/// Full Internet checksum of `data` (used by tests and by user-space packet builders).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// One's complement sum of `data` as big-endian 16-bit words (a trailing odd byte padded
/// with zero), neither folded nor inverted: partial sums add up, and [`fold`] ends them.
/// Exact for data below 128 KiB.
#[inline(always)]
pub fn sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        s += u16::from_be_bytes([*last, 0]) as u32;
    }
    s
}

/// ICMPv6 next header number, the protocol of the pseudo header of [`icmp6`].
pub const IPPROTO_ICMPV6: u8 = 58;

/// The partial sum of the IPv6 pseudo header: source, destination, upper-layer packet
/// length and next header (RFC 8200 section 8.1).
#[inline(always)]
pub fn pseudo6(src: &[u8; 16], dst: &[u8; 16], len: u32, next_header: u8) -> u32 {
    sum(src) + sum(dst) + (len >> 16) + (len & 0xffff) + next_header as u32
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) sent from `src` to `dst`.
#[inline(always)]
pub fn icmp6(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    !fold(pseudo6(src, dst, msg.len() as u32, IPPROTO_ICMPV6) + sum(msg))
}

/// IPv4 header checksum after decrementing TTL by one. `ttl_proto` is the header's
/// 16-bit word at offset 8 (TTL in the high byte, big-endian value), `check` the header
/// checksum as a big-endian value. Returns (new word, new checksum).
#[inline(always)]
pub const fn ttl_decrement(ttl_proto: u16, check: u16) -> (u16, u16) {
    let new = ttl_proto.wrapping_sub(0x0100);
    (new, replace16(check, ttl_proto, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_header(ttl: u8) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, ttl, 1, 0, 0, 192, 168, 1, 10, 192, 168, 2, 20,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn full_checksum_of_valid_header_is_zero() {
        assert_eq!(checksum(&ipv4_header(64)), 0);
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        for ttl in [2u8, 64, 128, 255] {
            let h = ipv4_header(ttl);
            let word = u16::from_be_bytes([h[8], h[9]]);
            let check = u16::from_be_bytes([h[10], h[11]]);
            let (nw, nc) = ttl_decrement(word, check);
            assert_eq!(
                nc,
                u16::from_be_bytes(ipv4_header(ttl - 1)[10..12].try_into().unwrap_or([0, 0]))
            );
            assert_eq!(nw >> 8, (ttl - 1) as u16);
        }
    }

    #[test]
    fn address_rewrite_matches_full_recompute() {
        let h = ipv4_header(64);
        let check = u16::from_be_bytes([h[10], h[11]]);
        let old = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let new = u32::from_be_bytes([10, 5, 2, 1]);
        let mut n = h;
        n[12..16].copy_from_slice(&new.to_be_bytes());
        n[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(replace32(check, old, new), checksum(&n));
    }

    /// RFC 1071's worked example, by partial sums of any split at an even offset.
    #[test]
    fn partial_sums_add_up() {
        let data = [0x00u8, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(fold(sum(&data[..4]) + sum(&data[4..])), 0xddf2);
        assert_eq!(sum(&[0xab]), 0xab00, "odd byte padded with zero");
    }

    /// The ICMPv6 checksum of a neighbour solicitation (even length) and of an echo reply
    /// (odd length) equals the plain checksum of the pseudo header laid out in full.
    #[test]
    fn icmp6_checksum_matches_the_pseudo_header_laid_out() {
        let src = [
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xf8, 0x16, 0x3e, 0xff, 0xfe, 0, 0, 1,
        ];
        let dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0xa1];
        let mut msg = [0u8; 32];
        msg[0] = 135;
        msg[8..24].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa1]);
        msg[24..32].copy_from_slice(&[1, 1, 0xfa, 0x16, 0x3e, 0, 0, 1]);
        let mut laid_out = [0u8; 40 + 32];
        laid_out[..16].copy_from_slice(&src);
        laid_out[16..32].copy_from_slice(&dst);
        laid_out[32..36].copy_from_slice(&32u32.to_be_bytes());
        laid_out[39] = IPPROTO_ICMPV6;
        laid_out[40..].copy_from_slice(&msg);
        let c = icmp6(&src, &dst, &msg);
        assert_eq!(c, checksum(&laid_out));
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            fold(pseudo6(&src, &dst, 32, IPPROTO_ICMPV6) + sum(&msg)),
            0xffff
        );
        // An odd length message.
        let odd = [129u8, 0, 0, 0, 0x42, 0x42, 0, 7, b'x'];
        let mut laid = [0u8; 40 + 9];
        laid[..16].copy_from_slice(&src);
        laid[16..32].copy_from_slice(&dst);
        laid[35] = 9;
        laid[39] = IPPROTO_ICMPV6;
        laid[40..].copy_from_slice(&odd);
        assert_eq!(icmp6(&src, &dst, &odd), checksum(&laid));
    }

    #[test]
    fn echo_request_to_reply_matches_full_recompute() {
        let mut icmp = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c'];
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let n = replace16(c, 0x0800, 0x0000);
        icmp[0] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(n, checksum(&icmp));
    }
}
