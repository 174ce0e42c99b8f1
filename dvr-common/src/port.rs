//! Local VM ports: which port a tap belongs to, and what it may send (port security).

pub const LOCAL_PORTS_MAX: u32 = 4096;

pub const PORT_SECURITY_MAX: u32 = 16384;

/// Port security is enforced for this port (`port_security_enabled`, default true).
pub const PORT_FLAG_SECURITY: u32 = 1;
/// Security groups are enforced for this port: its policy is [`LocalPort::policy`]. Unset
/// for a port without port security, and for a port whose state names no `security_groups`
/// at all (a hand-written state; Neutron always sends the field).
pub const PORT_FLAG_SG: u32 = 2;
/// The port's security groups are stateless (`stateful: false`): every packet is checked
/// against the rules of its direction and nothing is tracked.
pub const PORT_FLAG_SG_STATELESS: u32 = 4;
/// `admin_state_up: false`: nothing in or out (`drop_port_down`).
pub const PORT_FLAG_DOWN: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalPort {
    /// VXLAN network identifier of the port's network (its `provider:segmentation_id`).
    pub vni: u32,
    /// `PORT_FLAG_*`.
    pub flags: u32,
    /// The port's own MAC.
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
    /// Stable 32-bit id of the port (FNV-1a of its UUID), for tracing.
    pub port_id: u32,
    /// Security group policy id (see [`crate::sg`]) when `PORT_FLAG_SG` is set, else 0.
    pub policy: u32,
}
crate::assert_size!(LocalPort, 24);

/// Data part of a [`PORT_SECURITY`] LPM key. The prefix length covers `ifindex`, `mac` and
/// `_pad` fully (96 bits) plus the allowed IP prefix, so a lookup with prefix 128 finds the
/// longest allowed prefix for exactly that tap and MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct SecKey {
    /// Tap ifindex, big-endian so that the trie compares it bytewise as a whole.
    pub ifindex_be: u32,
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
    /// Source IPv4 address (network order).
    pub ip_be: u32,
}
crate::assert_size!(SecKey, 16);

/// Prefix bits of a [`SecKey`] before the IP part.
pub const SEC_KEY_PREFIX_BITS: u32 = 96;
/// The entry only says the MAC is allowed (IP part is /0 and carries no address grant).
pub const SEC_MAC_ONLY: u32 = 1;
/// The MAC and the IP prefix are allowed.
pub const SEC_IP_ALLOWED: u32 = 2;

crate::user_pod!(LocalPort, SecKey);
