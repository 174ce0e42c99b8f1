//! Why a host's entries could not be compiled.

use std::net::Ipv4Addr;

/// Why a host's entries could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("host {host}: the state needs {entries} entries in map {map}, which holds {capacity}")]
    Capacity {
        host: String,
        map: &'static str,
        entries: usize,
        capacity: u32,
    },
    #[error("host {host}: not in the state's hosts")]
    UnknownHost { host: String },
    #[error(
        "network {network} (vni {vni}): {count} {what} flood targets on host {host}, the \
         datapath holds at most {max}"
    )]
    FloodOverflow {
        network: String,
        vni: u32,
        host: String,
        /// `local` (taps) or `remote` (hosts).
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("routers {first} and {second}: both hash to router id {hash:#010x} (fnv1a32)")]
    RouterIdCollision {
        first: String,
        second: String,
        hash: u32,
    },
    #[error("ports {first} and {second}: both have tap name {tap}")]
    TapNameCollision {
        first: String,
        second: String,
        tap: String,
    },
    /// Two different security group sets of local ports hash to one policy id.
    #[error(
        "ports {first_port} and {second_port}: their security group sets [{first}] and \
         [{second}] both hash to policy id {hash:#010x} (fnv1a32)"
    )]
    SgPolicyCollision {
        first_port: String,
        /// The group ids, sorted, joined with `,`.
        first: String,
        second_port: String,
        second: String,
        hash: u32,
    },
    /// Two different sets of security group rules hash to one class id.
    #[error(
        "security group rule sets [{first}] and [{second}]: both hash to class id {hash:#010x} \
         (fnv1a32)"
    )]
    SgClassCollision {
        /// The rule ids, sorted, joined with `,`.
        first: String,
        second: String,
        hash: u32,
    },
    /// A floating IP served here has no next hop on its external network.
    #[error(
        "floatingip {floatingip}: field `floating_ip_address`: no subnet of network {network} \
         with a gateway contains {address}"
    )]
    FipNoGateway {
        floatingip: String,
        network: String,
        address: Ipv4Addr,
    },
    /// The floating IP's `router_id` names a router without an interface on the subnet of
    /// the fixed IP, so there is no gateway MAC to translate with.
    #[error(
        "floatingip {floatingip}: field `router_id`: router {router} has no distributed \
         interface on subnet {subnet} of fixed IP {fixed}"
    )]
    FipRouterNotOnSubnet {
        floatingip: String,
        router: String,
        subnet: String,
        fixed: Ipv4Addr,
    },
    /// A network's router advertisement would carry more prefixes than the datapath's frame
    /// holds.
    #[error(
        "network {network}: router {router} advertises {count} IPv6 subnets with \
         ipv6_ra_mode on it, a router advertisement holds at most {max}"
    )]
    RaPrefixes {
        network: String,
        router: String,
        count: usize,
        max: usize,
    },
    /// This host does SNAT for a router whose gateway has no address to translate to.
    #[error(
        "router {router}: field `external_gateway_info.external_fixed_ips`: empty, but host \
         {host} does SNAT for the router and needs its external address"
    )]
    SnatNoExternalIp { router: String, host: String },
    /// This host does SNAT for a router whose external address has no next hop.
    #[error(
        "router {router}: field `external_gateway_info.external_fixed_ips[0].subnet_id`: subnet \
         {subnet} of external address {address} has no gateway_ip, needed as the SNAT next hop"
    )]
    SnatNoGateway {
        router: String,
        subnet: String,
        address: Ipv4Addr,
    },
    /// This host routes a router's IPv6 north-south traffic but its external IPv6 address
    /// has no next hop.
    #[error(
        "router {router}: field `external_gateway_info.external_fixed_ips`: subnet {subnet} of \
         external IPv6 address {address} has no gateway_ip, needed as the IPv6 next hop"
    )]
    SnatNoGateway6 {
        router: String,
        subnet: String,
        address: std::net::Ipv6Addr,
    },
}
