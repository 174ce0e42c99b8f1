//! A small builder for raw Ethernet frames (ARP, IPv4 with ICMP echo, TCP or UDP; IPv6 with
//! ICMPv6 neighbour discovery and echo, or UDP; valid checksums) and checks on frames, for
//! tests that feed frames to the BPF programs directly (`tests/fixtures.rs`,
//! `tests/fixtures6.rs`, through BPF_PROG_TEST_RUN). Addresses are byte arrays in packet
//! order; ports, lengths and the ethertype are host integers.

use dvr_common::csum::checksum;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
pub const ND_RS: u8 = 133;
pub const ND_RA: u8 = 134;
pub const ND_NS: u8 = 135;
pub const ND_NA: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
/// Neighbour advertisement flags: router, solicited, override.
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;
/// Neighbour discovery options: source and target link-layer address.
pub const OPT_SLLA: u8 = 1;
pub const OPT_TLLA: u8 = 2;
/// `ff02::1`, `ff02::2`.
pub const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const ALL_ROUTERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An Ethernet frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP packet for IPv4 over Ethernet.
pub fn arp(oper: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&oper.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

/// An option-less IPv4 header with a valid checksum, followed by `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An ICMP echo message (`kind` 8 request, 0 reply) with a fixed payload.
pub fn icmp_echo(kind: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&echo_body(id, seq));
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP error (`kind`, `code`) quoting `quoted` (an IPv4 header and 8 bytes or more).
pub fn icmp_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quoted);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP echo request frame.
pub fn ping(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &ipv4(
            src,
            dst,
            ttl,
            IPPROTO_ICMP,
            &icmp_echo(ICMP_ECHO_REQUEST, 0x4242, 7),
        ),
    )
}

/// The TCP/UDP checksum of `seg` with its pseudo header.
pub fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    p.extend_from_slice(seg);
    checksum(&p)
}

/// An IPv4 packet with a TCP segment (TTL 64).
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = l4_checksum(&src, &dst, IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 64, IPPROTO_TCP, &t)
}

/// An IPv4 packet with a UDP datagram (TTL 64).
pub fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let u = udp_datagram(sport, dport, payload, |u| {
        l4_checksum(&src, &dst, IPPROTO_UDP, u)
    });
    ipv4(src, dst, 64, IPPROTO_UDP, &u)
}

/// A UDP datagram, its checksum by `checksum` (over its family's pseudo header).
fn udp_datagram(
    sport: u16,
    dport: u16,
    payload: &[u8],
    checksum: impl FnOnce(&[u8]) -> u16,
) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = checksum(&u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// The (option-less) IPv4 header of an Ethernet frame.
pub fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..34]
}

/// Assert that the IPv4 header and the TCP/UDP checksum (with pseudo header) of `frame`
/// are valid.
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[14..];
    assert_eq!(checksum(&ip[..20]), 0, "IPv4 header checksum");
    let len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(
        l4_checksum(&ip[12..16], &ip[16..20], ip[9], &ip[20..len]),
        0,
        "L4 checksum"
    );
}

/// An IPv6 header (no extension headers of its own) followed by `payload`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], hop_limit: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop_limit]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// The ICMPv6 (or UDP) checksum of `msg` over the IPv6 pseudo header, computed here
/// independently of `dvr_common::csum` (which the datapath uses): the pseudo header laid
/// out in full, summed word by word.
pub fn ipv6_checksum(src: &[u8], dst: &[u8], next: u8, msg: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(40 + msg.len() + 1);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    p.extend_from_slice(msg);
    if p.len() % 2 == 1 {
        p.push(0);
    }
    let mut sum: u64 = p
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMPv6 message (`kind`, `code`, then `body` after the checksum) from `src` to `dst`,
/// with its checksum.
pub fn icmp6(src: [u8; 16], dst: [u8; 16], kind: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(body);
    let c = ipv6_checksum(&src, &dst, IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An Ethernet frame with an IPv6 packet carrying that ICMPv6 message.
#[expect(clippy::too_many_arguments, reason = "one frame, field by field")]
pub fn icmp6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    kind: u8,
    code: u8,
    body: &[u8],
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_P_IPV6,
        &ipv6(
            src,
            dst,
            hop_limit,
            IPPROTO_ICMPV6,
            &icmp6(src, dst, kind, code, body),
        ),
    )
}

/// A link-layer address option (`OPT_SLLA` / `OPT_TLLA`).
pub fn nd_opt(kind: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![kind, 1];
    o.extend_from_slice(&mac);
    o
}

/// The body of a neighbour solicitation or advertisement (after the checksum): flags (0 for
/// a solicitation), the target, then `options`.
pub fn nd_body(flags: u8, target: [u8; 16], options: &[u8]) -> Vec<u8> {
    let mut b = vec![flags, 0, 0, 0];
    b.extend_from_slice(&target);
    b.extend_from_slice(options);
    b
}

/// The solicited-node multicast address of `ip` and its Ethernet address.
pub fn solicited_node(ip: [u8; 16]) -> ([u8; 16], [u8; 6]) {
    let a = [
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, ip[13], ip[14], ip[15],
    ];
    (a, [0x33, 0x33, 0xff, ip[13], ip[14], ip[15]])
}

/// The body of an ICMP or ICMPv6 echo message after the checksum: id, sequence and a fixed
/// payload.
pub fn echo_body(id: u16, seq: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(b"dvr-fixture-payload");
    b
}

/// An IPv6 packet with a UDP datagram, its checksum over the IPv6 pseudo header.
pub fn udp6(
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let u = udp_datagram(sport, dport, payload, |u| {
        ipv6_checksum(&src, &dst, IPPROTO_UDP, u)
    });
    ipv6(src, dst, hop_limit, IPPROTO_UDP, &u)
}

/// Assert that the ICMPv6 message of `frame` (an IPv6 packet without extension headers)
/// has a valid checksum, by the independent [`ipv6_checksum`].
pub fn assert_icmp6_checksum(frame: &[u8]) {
    let ip = &frame[14..];
    assert_eq!(ip[6], IPPROTO_ICMPV6, "ICMPv6 next header");
    let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    assert_eq!(ip.len(), 40 + len, "payload length matches the frame");
    assert_eq!(
        ipv6_checksum(&ip[8..24], &ip[24..40], IPPROTO_ICMPV6, &ip[40..40 + len]),
        0,
        "ICMPv6 checksum"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let f = eth(
            BROADCAST,
            [2; 6],
            ETH_P_IP,
            &udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x"),
        );
        assert_checksums(&f);
        let f = eth(
            BROADCAST,
            [2; 6],
            ETH_P_IP,
            &tcp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 0x02, b""),
        );
        assert_checksums(&f);
        let p = ping([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], 64);
        assert_eq!(checksum(ip_of(&p)), 0);
        assert_eq!(checksum(&p[34..]), 0);
        assert_eq!(checksum(&icmp_error(3, 3, &p[14..42])), 0);
        let a = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
        let ns = icmp6_frame(
            [0x33; 6],
            [2; 6],
            a,
            ALL_NODES,
            255,
            ND_NS,
            0,
            &nd_body(0, a, &nd_opt(OPT_SLLA, [2; 6])),
        );
        assert_icmp6_checksum(&ns);
        // The independent checksum agrees with the datapath's.
        assert_eq!(
            ipv6_checksum(&a, &ALL_NODES, IPPROTO_ICMPV6, b"abc"),
            dvr_common::csum::icmp6(&a, &ALL_NODES, b"abc")
        );
    }
}
