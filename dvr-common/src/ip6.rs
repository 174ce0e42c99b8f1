//! IPv6: the keys and values of the IPv6 maps (endpoints, router interfaces, routes, port
//! security, router advertisements), beside their IPv4 counterparts in `route` and `port`.
//!
//! Byte order: IPv6 addresses are 16 bytes as they sit in the packet (network order).
//! IPv6 has no NAT here: north-south IPv6 is routed through the router's SNAT host with
//! the VM's own address (as Neutron's snat namespace does).

use crate::Mac;

/// An IPv6 address as it sits in the packet.
pub type Ip6 = [u8; 16];

pub const ENDPOINTS6_MAX: u32 = 131072;
pub const GW6_MAX: u32 = 16384;
pub const ROUTES6_MAX: u32 = 16384;
pub const PORT_SECURITY6_MAX: u32 = 32768;
pub const RA_MAX: u32 = 4096;
pub const SNAT6_MAX: u32 = 4096;
pub const EXT_ROUTES6_MAX: u32 = 16384;
pub const EXT_NEIGH6_MAX: u32 = 4096;

/// Most prefixes one router advertisement carries (IPv6 subnets of one network on its
/// router).
pub const RA_PREFIX_MAX: usize = 4;
/// Room for the largest advertisement frame: Ethernet 14 + IPv6 40 + RA 16 + source
/// link-layer address 8 + MTU 8 + prefix information 32 each.
pub const RA_FRAME_MAX: usize = 256;
const _: () = assert!(14 + 40 + 16 + 8 + 8 + 32 * RA_PREFIX_MAX <= RA_FRAME_MAX);

/// (network, IPv6 address): the key of the IPv6 endpoints and gateway-by-address maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Ip6Key {
    pub vni: u32,
    pub ip: Ip6,
}
crate::assert_size!(Ip6Key, 20);

/// A router's interface address on one IPv6 subnet (or its link-local address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouterIface6 {
    /// Stable 32-bit router id (as [`crate::route::RouterIface::router_id`]).
    pub router_id: u32,
    /// Interface MAC, shared by every host: the target link-layer address of the
    /// neighbour advertisements that answer for `ip`.
    pub mac: Mac,
    pub _pad: [u8; 2],
    /// The interface address.
    pub ip: Ip6,
}
crate::assert_size!(RouterIface6, 28);

/// Data part of a [`ROUTES6`] LPM key; prefix length = 32 + the subnet's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Route6Key {
    /// Router id, big-endian so the trie compares it as a whole before the address bits.
    pub router_id_be: u32,
    pub ip: Ip6,
}
crate::assert_size!(Route6Key, 20);
/// Prefix bits of a [`Route6Key`] before the address.
pub const ROUTE6_KEY_PREFIX_BITS: u32 = 32;

/// An IPv6 subnet attached to a router: where routed packets to it go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Route6 {
    /// VNI of the network the packets are delivered into (for an extra route: the next
    /// hop's network).
    pub vni: u32,
    /// The router's interface MAC on that subnet (source MAC of locally delivered frames).
    pub gw_mac: Mac,
    /// MTU of that network (largest IPv6 packet delivered into it, bytes).
    pub mtu: u16,
    /// The router's interface address on that subnet: source of the ICMPv6 errors the
    /// router sends to hosts of the subnet.
    pub gw_ip: Ip6,
    /// Next hop of an extra route; all zero for a connected subnet.
    pub nexthop: Ip6,
}
crate::assert_size!(Route6, 44);

/// Data part of a [`PORT_SECURITY6`] LPM key, as [`crate::port::SecKey`] with an IPv6
/// source: the prefix length covers `ifindex`, `mac` and `_pad` (96 bits) plus the allowed
/// prefix, so a lookup with prefix 224 finds the longest allowed prefix for that tap and MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Sec6Key {
    /// Tap ifindex, big-endian so that the trie compares it bytewise as a whole.
    pub ifindex_be: u32,
    pub mac: Mac,
    pub _pad: [u8; 2],
    pub ip: Ip6,
}
crate::assert_size!(Sec6Key, 28);
/// Prefix bits of a [`Sec6Key`] before the IP part.
pub const SEC6_KEY_PREFIX_BITS: u32 = 96;

/// An IPv6 address as a key of its own: external addresses, which are not per network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Addr6 {
    pub ip: Ip6,
}
crate::assert_size!(Addr6, 16);

/// On the SNAT host: how a router's IPv6 traffic leaves (routed, not translated).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Snat6 {
    /// The router's IPv6 address on the external network (`external_fixed_ips`).
    pub ext_ip: Ip6,
    /// Next hop on the external network: the external IPv6 subnet's `gateway_ip`.
    pub next_hop: Ip6,
}
crate::assert_size!(Snat6, 32);

/// The router advertisement for one network, as a whole frame (Ethernet to the last
/// option, ICMPv6 checksum included): from the router interface's MAC and link-local
/// address to all nodes (`33:33:00:00:00:01`, `ff02::1`). The datapath sends it back out of
/// a tap that sent a router solicitation; the agent sends it periodically on every tap of
/// the network. Built by the agent (`dvr-userspace` `ndp`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaFrame {
    /// Bytes of `frame` in use (at most [`RA_FRAME_MAX`]; a multiple of 8 past the
    /// Ethernet and IPv6 headers).
    pub len: u32,
    pub _pad: u32,
    pub frame: [u8; RA_FRAME_MAX],
}
crate::assert_size!(RaFrame, 8 + RA_FRAME_MAX);

impl Default for RaFrame {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            frame: [0; RA_FRAME_MAX],
        }
    }
}

/// The modified EUI-64 link-local address of `mac` (RFC 4291 appendix A): what a VM's
/// kernel configures on its interface and what a router interface answers for.
pub const fn link_local(mac: Mac) -> Ip6 {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// `fe80::/10`.
pub const fn is_link_local(ip: &Ip6) -> bool {
    ip[0] == 0xfe && ip[1] & 0xc0 == 0x80
}

/// `::`.
pub const fn is_unspecified(ip: &Ip6) -> bool {
    let mut i = 0;
    while i < 16 {
        if ip[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

crate::user_pod!(
    Ip6Key,
    RouterIface6,
    Route6Key,
    Route6,
    Sec6Key,
    RaFrame,
    Addr6,
    Snat6
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_modified_eui64() {
        // fa:16:3e:11:22:33 -> fe80::f816:3eff:fe11:2233 (the U/L bit flipped).
        assert_eq!(
            link_local([0xfa, 0x16, 0x3e, 0x11, 0x22, 0x33]),
            [
                0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xf8, 0x16, 0x3e, 0xff, 0xfe, 0x11, 0x22, 0x33
            ]
        );
        assert!(is_link_local(&link_local([0; 6])));
        assert!(!is_link_local(&[
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
        ]));
        assert!(is_unspecified(&[0; 16]));
        assert!(!is_unspecified(&link_local([0; 6])));
    }
}
