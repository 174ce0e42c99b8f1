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
}
