//! Per-host settings that can change while programs run (so a map, not load-time globals).

/// Array map with one [`HostConfig`] at index 0. Written by the agent.
pub const HOST_CONFIG: &str = "DVR_HOST_CONFIG";

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
    pub _pad: u8,
}
crate::assert_size!(HostConfig, 16);
crate::user_pod!(HostConfig);
