//! IPv6 router advertisements, built by the agent (Neutron runs radvd in the router
//! namespace for this): the same frame is what the datapath sends back at once to a VM's
//! router solicitation (the `DVR_RA` map) and what the agent sends unsolicited,
//! periodically, out of every tap of the network (`agent::ra`). Only the local host's VMs
//! ever see it: it is never sent into the tunnel.
//!
//! The advertisement follows what Neutron's radvd configuration says for each
//! `ipv6_ra_mode`: `slaac` advertises the prefix with the autonomous flag (A); with
//! `dhcpv6-stateless` the other-configuration flag (O) as well; `dhcpv6-stateful` sets the
//! managed flag (M) and the prefix without A (on-link only). The MTU option carries the
//! network's `mtu`; the source link-layer option the router interface's MAC.
//!
//! Also the neighbour discovery the agent sends on the external network for IPv6
//! north-south (as ARP for IPv4, `agent::announce`): solicitations for a router's IPv6 next
//! hop ([`ns_frame`]) and unsolicited advertisements of a router's external IPv6 address
//! when its role moves to this host ([`unsolicited_na_frame`]).
use std::net::Ipv6Addr;

use dvr_common::{
    Mac, csum,
    ip6::{RA_FRAME_MAX, RA_PREFIX_MAX, RaFrame, link_local},
};
use ipnet::Ipv6Net;

pub const ETH_P_IPV6: u16 = 0x86dd;
const ND_ROUTER_ADVERT: u8 = 134;
const OPT_SOURCE_LL: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
const RA_MANAGED: u8 = 0x80;
const RA_OTHER: u8 = 0x40;
const PREFIX_ON_LINK: u8 = 0x80;
const PREFIX_AUTONOMOUS: u8 = 0x40;
/// All-nodes multicast, and its Ethernet group address.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// radvd's defaults, as Neutron's template leaves them (MaxRtrAdvInterval 100 s): router
/// lifetime 3 x 100 s, prefixes valid for a day and preferred for 4 hours.
pub const ROUTER_LIFETIME_S: u16 = 300;
pub const PREFIX_VALID_S: u32 = 86_400;
pub const PREFIX_PREFERRED_S: u32 = 14_400;
/// Hop limit the router advertises for hosts to use (0 would mean "unspecified").
const CUR_HOP_LIMIT: u8 = 64;
/// The smallest link MTU IPv6 allows.
pub const IPV6_MIN_MTU: u32 = 1280;

/// A subnet's `ipv6_ra_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaMode {
    Slaac,
    Dhcpv6Stateless,
    Dhcpv6Stateful,
}

impl RaMode {
    /// The Neutron spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RaMode::Slaac => "slaac",
            RaMode::Dhcpv6Stateless => "dhcpv6-stateless",
            RaMode::Dhcpv6Stateful => "dhcpv6-stateful",
        }
    }

    pub fn parse(text: &str) -> Option<RaMode> {
        match text {
            "slaac" => Some(RaMode::Slaac),
            "dhcpv6-stateless" => Some(RaMode::Dhcpv6Stateless),
            "dhcpv6-stateful" => Some(RaMode::Dhcpv6Stateful),
            _ => None,
        }
    }
}

/// One advertised subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaPrefix {
    pub net: Ipv6Net,
    pub mode: RaMode,
}

/// What one network's router advertisement says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaParams {
    /// The router interface MAC (source of the frame; its EUI-64 link-local address is the
    /// source address and the default router the VMs learn).
    pub router_mac: Mac,
    /// The network's MTU.
    pub mtu: u32,
    /// The router's IPv6 subnets on the network with `ipv6_ra_mode` set, at most
    /// [`RA_PREFIX_MAX`] (the caller refuses more).
    pub prefixes: Vec<RaPrefix>,
}

/// The advertisement frame for `p`: Ethernet, IPv6 and ICMPv6 with a valid checksum.
pub fn ra_frame(p: &RaParams) -> RaFrame {
    let mut icmp = Vec::with_capacity(RA_FRAME_MAX);
    let mut flags = 0;
    for pre in &p.prefixes {
        match pre.mode {
            RaMode::Slaac => {}
            RaMode::Dhcpv6Stateless => flags |= RA_OTHER,
            RaMode::Dhcpv6Stateful => flags |= RA_MANAGED,
        }
    }
    icmp.extend_from_slice(&[ND_ROUTER_ADVERT, 0, 0, 0, CUR_HOP_LIMIT, flags]);
    icmp.extend_from_slice(&ROUTER_LIFETIME_S.to_be_bytes());
    // Reachable time and retransmission timer: unspecified.
    icmp.extend_from_slice(&[0; 8]);
    icmp.extend_from_slice(&[OPT_SOURCE_LL, 1]);
    icmp.extend_from_slice(&p.router_mac);
    // As Neutron's template: no MTU option below IPv6's minimum link MTU (RFC 8200 5).
    if p.mtu >= IPV6_MIN_MTU {
        icmp.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
        icmp.extend_from_slice(&p.mtu.to_be_bytes());
    }
    for pre in p.prefixes.iter().take(RA_PREFIX_MAX) {
        let pflags = match pre.mode {
            RaMode::Slaac | RaMode::Dhcpv6Stateless => PREFIX_ON_LINK | PREFIX_AUTONOMOUS,
            RaMode::Dhcpv6Stateful => PREFIX_ON_LINK,
        };
        icmp.extend_from_slice(&[OPT_PREFIX_INFO, 4, pre.net.prefix_len(), pflags]);
        icmp.extend_from_slice(&PREFIX_VALID_S.to_be_bytes());
        icmp.extend_from_slice(&PREFIX_PREFERRED_S.to_be_bytes());
        icmp.extend_from_slice(&[0; 4]);
        icmp.extend_from_slice(&pre.net.trunc().addr().octets());
    }
    let src = link_local(p.router_mac);
    let dst = ALL_NODES.octets();
    let sum = icmpv6_checksum(&src, &dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut out = RaFrame::default();
    let f = &mut out.frame;
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&p.router_mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
    f[20] = csum::IPPROTO_ICMPV6;
    // Hop limit 255: hosts accept neighbour discovery only from the link (RFC 4861 6.1.2).
    f[21] = 255;
    f[22..38].copy_from_slice(&src);
    f[38..54].copy_from_slice(&dst);
    let len = 54 + icmp.len();
    f[54..len].copy_from_slice(&icmp);
    out.len = len as u32;
    out
}

const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const OPT_TARGET_LL: u8 = 2;
const NA_ROUTER: u8 = 0x80;
const NA_OVERRIDE: u8 = 0x20;

/// The solicited-node multicast address of `ip` (RFC 4291 2.7.1) and its Ethernet group
/// address (RFC 2464 7).
pub fn solicited_node(ip: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let o = ip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let g = group.octets();
    (group, [0x33, 0x33, g[12], g[13], g[14], g[15]])
}

/// An Ethernet + IPv6 + ICMPv6 neighbour discovery frame (hop limit 255) carrying `icmp`,
/// whose checksum field is filled in.
fn nd_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let (s, d) = (src.octets(), dst.octets());
    let sum = icmpv6_checksum(&s, &d, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(54 + icmp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[csum::IPPROTO_ICMPV6, 255]);
    f.extend_from_slice(&s);
    f.extend_from_slice(&d);
    f.extend_from_slice(&icmp);
    f
}

/// A neighbour solicitation for `target` from `src` (MAC `mac`, also in the source
/// link-layer option), to `target`'s solicited-node group.
pub fn ns_frame(mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    let mut icmp = vec![ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[OPT_SOURCE_LL, 1]);
    icmp.extend_from_slice(&mac);
    nd_frame(mac, group_mac, src, group, icmp)
}

/// An unsolicited neighbour advertisement of `ip` at `mac` (router and override flags, not
/// solicited: RFC 4861 7.2.6) to all nodes.
pub fn unsolicited_na_frame(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![
        ND_NEIGHBOR_ADVERT,
        0,
        0,
        0,
        NA_ROUTER | NA_OVERRIDE,
        0,
        0,
        0,
    ];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[OPT_TARGET_LL, 1]);
    icmp.extend_from_slice(&mac);
    nd_frame(mac, ALL_NODES_MAC, ip, ALL_NODES, icmp)
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) between `src` and `dst` (RFC 4443
/// 2.3: over the pseudo-header of RFC 8200 8.1 and the message): the datapath's own.
pub fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    csum::icmp6(src, dst, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0xfa, 0x16, 0x3e, 0, 0, 1];

    fn params(modes: &[(&str, RaMode)]) -> RaParams {
        RaParams {
            router_mac: MAC,
            mtu: 1450,
            prefixes: modes
                .iter()
                .map(|(net, mode)| RaPrefix {
                    net: net.parse().unwrap_or_else(|e| panic!("{net}: {e}")),
                    mode: *mode,
                })
                .collect(),
        }
    }

    fn bytes16(b: &[u8]) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(b);
        a
    }

    fn icmp(f: &RaFrame) -> &[u8] {
        &f.frame[54..f.len as usize]
    }

    #[test]
    fn slaac_advertisement_layout() {
        let f = ra_frame(&params(&[("fd00:1::/64", RaMode::Slaac)]));
        assert_eq!(f.len as usize, 54 + 16 + 8 + 8 + 32);
        assert_eq!(&f.frame[0..6], &ALL_NODES_MAC);
        assert_eq!(&f.frame[6..12], &MAC);
        assert_eq!(&f.frame[12..14], &[0x86, 0xdd]);
        assert_eq!(f.frame[20], 58);
        assert_eq!(f.frame[21], 255);
        assert_eq!(
            Ipv6Addr::from(bytes16(&f.frame[22..38])),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0xf816, 0x3eff, 0xfe00, 1)
        );
        let m = icmp(&f);
        assert_eq!(m[0], 134);
        assert_eq!(m[5], 0, "no M or O for slaac");
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), ROUTER_LIFETIME_S);
        assert_eq!(&m[16..24], &[1, 1, 0xfa, 0x16, 0x3e, 0, 0, 1]);
        assert_eq!(&m[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xaa]);
        assert_eq!(&m[32..36], &[3, 4, 64, 0xc0]);
        assert_eq!(&m[48..56], &[0xfd, 0, 0, 1, 0, 0, 0, 0]);
        // A valid checksum sums (with itself) to zero.
        let src = bytes16(&f.frame[22..38]);
        let dst = bytes16(&f.frame[38..54]);
        assert_eq!(icmpv6_checksum(&src, &dst, m), 0);
        assert_eq!((f.len as usize - 54) % 8, 0);
    }

    #[test]
    fn flags_follow_the_ra_mode() {
        let m = ra_frame(&params(&[("fd00:1::/64", RaMode::Dhcpv6Stateless)]));
        assert_eq!(icmp(&m)[5], RA_OTHER);
        assert_eq!(icmp(&m)[35], PREFIX_ON_LINK | PREFIX_AUTONOMOUS);
        let m = ra_frame(&params(&[("fd00:1::/64", RaMode::Dhcpv6Stateful)]));
        assert_eq!(icmp(&m)[5], RA_MANAGED);
        assert_eq!(icmp(&m)[35], PREFIX_ON_LINK, "stateful: no autonomous flag");
    }

    #[test]
    fn every_prefix_up_to_the_maximum_fits() {
        let nets: Vec<(String, RaMode)> = (0..RA_PREFIX_MAX)
            .map(|i| (format!("fd00:{i}::/64"), RaMode::Slaac))
            .collect();
        let refs: Vec<(&str, RaMode)> = nets.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        let f = ra_frame(&params(&refs));
        assert_eq!(f.len as usize, 54 + 32 + 32 * RA_PREFIX_MAX);
        assert!(f.len as usize <= RA_FRAME_MAX);
    }

    #[test]
    fn neighbour_solicitation_for_a_next_hop() {
        let src: Ipv6Addr = "2001:db8:5::101".parse().unwrap_or_else(|e| panic!("{e}"));
        let target: Ipv6Addr = "2001:db8:5::1:2a0b"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let f = ns_frame(MAC, src, target);
        assert_eq!(f.len(), 54 + 24 + 8);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0x01, 0x2a, 0x0b]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32);
        assert_eq!((f[20], f[21]), (58, 255));
        assert_eq!(bytes16(&f[22..38]), src.octets());
        assert_eq!(
            Ipv6Addr::from(bytes16(&f[38..54])),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff01, 0x2a0b)
        );
        let m = &f[54..];
        assert_eq!((m[0], m[1]), (135, 0));
        assert_eq!(bytes16(&m[8..24]), target.octets());
        assert_eq!(&m[24..32], &[1, 1, 0xfa, 0x16, 0x3e, 0, 0, 1]);
        assert_eq!(
            icmpv6_checksum(&bytes16(&f[22..38]), &bytes16(&f[38..54]), m),
            0
        );
    }

    #[test]
    fn unsolicited_advertisement_overrides() {
        let ip: Ipv6Addr = "2001:db8:5::101".parse().unwrap_or_else(|e| panic!("{e}"));
        let f = unsolicited_na_frame(MAC, ip);
        assert_eq!(f.len(), 54 + 24 + 8);
        assert_eq!(&f[0..6], &ALL_NODES_MAC);
        assert_eq!(Ipv6Addr::from(bytes16(&f[38..54])), ALL_NODES);
        let m = &f[54..];
        assert_eq!(m[0], 136);
        assert_eq!(m[4], 0x80 | 0x20, "router and override, not solicited");
        assert_eq!(bytes16(&m[8..24]), ip.octets());
        assert_eq!(&m[24..32], &[2, 1, 0xfa, 0x16, 0x3e, 0, 0, 1]);
        assert_eq!(
            icmpv6_checksum(&bytes16(&f[22..38]), &bytes16(&f[38..54]), m),
            0
        );
    }
}
