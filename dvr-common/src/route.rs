//! Layer 3: router interfaces, routes between a router's subnets, and IP endpoints.

pub const GW_MAX: u32 = 16384;

pub const ROUTES_MAX: u32 = 16384;

pub const ENDPOINTS_MAX: u32 = 131072;

/// (network, IPv4 address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct IpKey {
    pub vni: u32,
    /// Network byte order.
    pub ip_be: u32,
}
crate::assert_size!(IpKey, 8);

/// A router's interface on one subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouterIface {
    /// Stable 32-bit router id (FNV-1a of the router UUID; the agent refuses collisions).
    pub router_id: u32,
    /// Interface (gateway) address, network order.
    pub ip_be: u32,
    /// Interface MAC, shared by every host.
    pub mac: crate::Mac,
    /// `ROUTER_*` flags of the router.
    pub flags: u16,
}
crate::assert_size!(RouterIface, 16);

/// [`RouterIface::flags`]: the router is `admin_state_up: false`: it routes nothing (frames
/// to its interface MACs are dropped as `drop_router_down`).
pub const ROUTER_DOWN: u16 = 1;

/// Data part of a [`ROUTES`] LPM key; prefix length = 32 + the subnet's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// Router id, big-endian so the trie compares it as a whole before the address bits.
    pub router_id_be: u32,
    /// Destination address, network order.
    pub ip_be: u32,
}
crate::assert_size!(RouteKey, 8);
/// Prefix bits of a [`RouteKey`] before the address.
pub const ROUTE_KEY_PREFIX_BITS: u32 = 32;

/// A destination of a router: one of its subnets (connected), or an extra route (`routes`)
/// whose next hop lies in one of its subnets. Where routed packets to it go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Route {
    /// VNI of the network the packets are delivered into (for an extra route: the next
    /// hop's network).
    pub vni: u32,
    /// The router's interface address on that network's subnet, network order.
    pub gw_ip_be: u32,
    /// The router's interface MAC on that subnet (source MAC of locally delivered frames).
    pub gw_mac: crate::Mac,
    /// MTU of that network (largest IPv4 packet delivered into it, bytes).
    pub mtu: u16,
    /// Next hop of an extra route, network order: the port it is delivered to is the one
    /// holding this address. 0: a connected subnet (delivered to the destination itself).
    pub nexthop_be: u32,
}
crate::assert_size!(Route, 20);

/// A port address: its MAC and where it lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
    /// Local tap ifindex, 0 when remote.
    pub ifindex: u32,
    /// Tunnel address of the port's host (host order), 0 when local.
    pub tunnel_ip_host: u32,
}
crate::assert_size!(Endpoint, 16);

crate::user_pod!(IpKey, RouterIface, RouteKey, Route, Endpoint);
