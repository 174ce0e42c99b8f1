//! A small builder for raw Ethernet frames (ARP, IPv4 with ICMP echo, TCP or UDP, valid
//! checksums) and checks on frames, for tests that feed frames to the BPF programs
//! directly (`tests/fixtures.rs`, through BPF_PROG_TEST_RUN). Addresses are byte arrays in
//! packet order; ports, lengths and the ethertype are host integers.

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
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"dvr-fixture-payload");
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
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = l4_checksum(&src, &dst, IPPROTO_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 64, IPPROTO_UDP, &u)
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
    }
}
