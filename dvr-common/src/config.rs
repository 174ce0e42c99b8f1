//! Per-host settings that can change while programs run (so a map, not load-time globals).

/// This host's tunnel and DVR identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostConfig {
    /// ifindex of the VXLAN collect_md device the agent created.
    pub tunnel_ifindex: u32,
    /// This host's tunnel (underlay) address, host byte order.
    pub tunnel_ip_host: u32,
    /// This host's DVR MAC: the source MAC of every routed frame it sends into the tunnel.
    pub dvr_mac: crate::Mac,
    /// Non-zero once the agent has written a complete configuration.
    pub ready: u8,
    /// [`HOST_ENCAP_BPF`] and future switches the agent sets.
    pub flags: u8,
    /// ifindex of the external interface (`hosts[].external_interface`), 0 when none.
    pub ext_ifindex: u32,
    /// This host's address on the external network (its `network:floatingip_agent_gateway`
    /// port), network order; 0 when none. ARP for it is answered on the external interface.
    pub fg_ip_be: u32,
    /// MAC of the external interface: source of everything sent there, and the MAC that
    /// proxy ARP hands out for the floating IPs this host serves.
    pub ext_mac: crate::Mac,
    pub _pad2: [u8; 2],
    /// Port-address translation range on this SNAT host (host order, inclusive).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}
crate::assert_size!(HostConfig, 36);

/// The IANA VXLAN UDP port: the VXLAN device's, and the datapath's own encapsulation's.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds to a tenant frame: outer IPv4 20, UDP 8, VXLAN 8, and the
/// inner Ethernet header 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// [`HostConfig::flags`]: frames for the tunnel are VXLAN-encapsulated by the datapath and
/// sent straight out of the underlay NIC (the VXLAN device only where that cannot be done:
/// next hop not routable from here, fragments, flooding). Without it every frame for the
/// tunnel goes through the VXLAN device. Either way the wire format is the same.
pub const HOST_ENCAP_BPF: u8 = 1;
/// [`HostConfig::flags`]: the agent decapsulates VXLAN on the underlay NIC (the
/// `dvr_underlay` program is on it). The datapath does not read it; `dvrctl trace` does.
pub const HOST_DECAP_BPF: u8 = 2;
crate::user_pod!(HostConfig);
