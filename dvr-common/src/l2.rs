//! Layer 2: where a MAC on a network lives, and who gets broadcast / unknown unicast.

pub const FDB_MAX: u32 = 65536;

pub const FLOOD_MAX: u32 = 4096;
/// Most local taps of one network on one host that broadcast reaches.
pub const FLOOD_MAX_LOCAL: usize = 64;
/// Most remote hosts of one network that broadcast is replicated to.
pub const FLOOD_MAX_REMOTE: usize = 128;

pub const DVR_MACS_MAX: u32 = 4096;

pub const TUNNEL_PEERS_MAX: u32 = 4096;

/// Key of the FDB and the gateway-by-MAC map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct FdbKey {
    pub vni: u32,
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
}
crate::assert_size!(FdbKey, 12);

/// Where a MAC lives: a local tap (`ifindex != 0`) or a remote host (`tunnel_ip_host`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FdbEntry {
    /// Local tap ifindex, 0 when the port is on another host.
    pub ifindex: u32,
    /// Tunnel address of the host holding the port (host order), 0 when local.
    pub tunnel_ip_host: u32,
    /// Gateway MAC of the port's subnet: a routed frame from another host's DVR MAC is
    /// delivered with this source MAC. All zero when the subnet has no router.
    pub gw_mac: crate::Mac,
    /// Gateway MAC of the port's IPv6 subnet, used for routed IPv6 frames likewise (a
    /// dual-stack network's IPv4 and IPv6 subnets may have different router ports). All
    /// zero when it has none.
    pub gw_mac6: crate::Mac,
    pub _pad: [u8; 4],
}
crate::assert_size!(FdbEntry, 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodSet {
    pub n_local: u32,
    pub n_remote: u32,
    /// Local tap ifindexes.
    pub local: [u32; FLOOD_MAX_LOCAL],
    /// Remote tunnel addresses, host order.
    pub remote: [u32; FLOOD_MAX_REMOTE],
}
crate::assert_size!(FloodSet, 8 + 4 * (FLOOD_MAX_LOCAL + FLOOD_MAX_REMOTE));

impl Default for FloodSet {
    fn default() -> Self {
        Self {
            n_local: 0,
            n_remote: 0,
            local: [0; FLOOD_MAX_LOCAL],
            remote: [0; FLOOD_MAX_REMOTE],
        }
    }
}

/// A MAC as a hash key, padded to 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct MacKey {
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
}
crate::assert_size!(MacKey, 8);

crate::user_pod!(FdbKey, FdbEntry, FloodSet, MacKey);
