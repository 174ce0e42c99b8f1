//! IPv6 north-south (stage): as Neutron's snat namespace, the router's SNAT host routes
//! its IPv6 traffic to and from the external network with the VMs' own addresses (no NAT).
//! - Compute host (`steer`, from `route6` for a destination outside the router's IPv6
//!   subnets): a packet longer than the external network's MTU ends as packet too big
//!   (answered by `route6` from the sender's gateway); else the router decrements the hop
//!   limit and sends the packet over the tunnel to
//!   the SNAT host's csnat port MAC (DVR_SNAT_STEER, keyed by the IPv6 interface MAC), or
//!   straight out when this host is the SNAT host. A router without an IPv6 external address
//!   (no `SNAT_ROUTED6`) has no route.
//! - SNAT host (`from_tunnel`): a frame to a csnat port, from a source in one of the
//!   router's IPv6 subnets, goes out of the external interface to the router's next hop
//!   (DVR_SNAT6, DVR_EXT_NEIGH6), hop limit untouched (already routed).
//! - SNAT host, external NIC (`inbound`): a packet to a tenant prefix served here
//!   (DVR_EXT_ROUTE6) is routed to the VM (DVR_ROUTES6, DVR_ENDPOINTS6) like east-west IPv6;
//!   a hop limit that runs out is answered with time exceeded, a packet longer than the VM
//!   network's MTU with packet too big (`mtu`), both from the router's external address.
//!
//! An HA router is served only while its fence is live (`ha`). Calls `ha`, `icmp6`, `mtu`.
//! Maps: reads DVR_SNAT_STEER, DVR_SNAT_RTR, DVR_SNAT6, DVR_EXT_NEIGH6, DVR_ROUTES6,
//! DVR_ENDPOINTS6. Verdicts: snat_steered, routed_out, routed_in, icmp_time_exceeded,
//! icmp_too_big, drop_snat_standby, drop_no_route, drop_no_neighbor, drop_no_external,
//! drop_no_endpoint, drop_no_nexthop, drop_router_local, drop_ttl_exceeded,
//! drop_frag_needed, drop_redirect, drop_malformed.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    config::HostConfig,
    ip6::{Addr6, is_link_local},
    l2::FdbKey,
    port::LocalPort,
    route::RouterIface,
    snat::{SNAT_ROUTED6, SnatRouter},
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_EXT_NEIGH6, DVR_SNAT_RTR, DVR_SNAT_STEER, DVR_SNAT6},
        packet::{ETH_LEN, Eth, Ipv6Hdr, ip6_eq, ptr_at},
        verdict::{Verdict, redirect, settle},
    },
    net::{flow6::Flow6, l2, rewrite, route},
    stage::{ha, icmp6, mtu},
};

/// Compute host: `f`, from the VM behind `port` to router interface `gw`, leaves the
/// router's IPv6 subnets.
#[inline(always)]
pub fn steer(
    ctx: &TcContext,
    f: &Flow6,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let key = FdbKey {
        vni: port.vni,
        mac: gw.mac,
        _pad: [0; 2],
    };
    // SAFETY: read-only use of agent-written hash values.
    let Some(st) = (unsafe { DVR_SNAT_STEER.get(&key) }) else {
        return Err(Verdict::drop(Stat::DropNoRoute));
    };
    if st.flags & SNAT_ROUTED6 == 0 {
        return Err(Verdict::drop(Stat::DropNoRoute));
    }
    // Held to the external network's MTU here, where the sender's gateway can answer.
    if mtu::exceeds6(ctx, f, st.ext_mtu)? {
        return Err(mtu::too_big6(ctx, st.ext_mtu));
    }
    if st.tunnel_ip_host == 0 {
        // This host is the SNAT host.
        let rkey = FdbKey {
            vni: port.vni,
            mac: st.csnat_mac,
            _pad: [0; 2],
        };
        // SAFETY: as above.
        let Some(r) = (unsafe { DVR_SNAT_RTR.get(&rkey) }) else {
            return Err(Verdict::drop(Stat::DropNoRoute));
        };
        ha::check_router(r)?;
        rewrite::hop_limit_decrement(ctx)?;
        return out(ctx, r, cfg);
    }
    rewrite::hop_limit_decrement(ctx)?;
    l2::routed_to_host(
        ctx,
        st.csnat_mac,
        st.tunnel_ip_host,
        port.vni,
        cfg,
        Stat::SnatSteered,
    )
}

/// SNAT host: an IPv6 frame from the tunnel addressed to a csnat port of router `r`.
#[inline(always)]
pub fn from_tunnel(ctx: &TcContext, r: &SnatRouter, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    ha::check_router(r)?;
    // Only the addresses are needed: read from the fixed header, no `Flow6` (its parse call
    // frame on top of the tunnel program's would pass the 512-byte stack).
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; Ipv6Hdr is all bytes.
    let ip = unsafe { &*ip };
    // Only the router's own sources leave through it, and nothing link-scoped or multicast.
    if route::lookup6(r.router_id, &ip.src_addr).is_none()
        || is_link_local(&ip.dst_addr)
        || ip.dst_addr[0] == 0xff
    {
        return Err(Verdict::drop(Stat::DropNoRoute));
    }
    out(ctx, r, cfg)
}

/// Send a routed IPv6 packet of router `r` to its next hop on the external network.
#[inline(always)]
fn out(ctx: &TcContext, r: &SnatRouter, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    if cfg.ext_ifindex == 0 {
        return Err(Verdict::drop(Stat::DropNoExternal));
    }
    // SAFETY: read-only use of an agent-written hash value.
    let Some(s) = (unsafe { DVR_SNAT6.get(&r.router_id) }) else {
        return Err(Verdict::drop(Stat::DropNoRoute));
    };
    let hop = Addr6 { ip: s.next_hop };
    // SAFETY: read-only use of a hash value; the datapath writes it whole on ND.
    let mac = match unsafe { DVR_EXT_NEIGH6.get(&hop) } {
        Some(n) if n.learned != 0 => n.mac,
        _ => return Err(Verdict::drop(Stat::DropNoNeighbor)),
    };
    let eth = Eth::at(ctx)?;
    eth.set_src(cfg.ext_mac);
    eth.set_dst(mac);
    Ok(redirect(cfg.ext_ifindex, Stat::RoutedOut))
}

/// SNAT host, external NIC: `f` is addressed into a tenant IPv6 prefix of router `r`.
#[inline(always)]
pub fn inbound(ctx: &TcContext, f: &Flow6, r: &SnatRouter, cfg: &HostConfig) -> Verdict {
    let v = settle(routed_in(ctx, f, r, cfg));
    // Time exceeded or packet too big, from the router's external address, back out of
    // the external interface.
    if let Some(mtu) = mtu::icmp6_error(ctx, &v)
        // SAFETY: read-only use of an agent-written hash value.
        && let Some(s) = unsafe { DVR_SNAT6.get(&r.router_id) }
    {
        return icmp6::answer(ctx, f, cfg.ext_ifindex, &s.ext_ip, mtu);
    }
    v
}

#[inline(always)]
fn routed_in(
    ctx: &TcContext,
    f: &Flow6,
    r: &SnatRouter,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    ha::check_router(r)?;
    let Some(route) = route::lookup6(r.router_id, &f.daddr) else {
        return Err(Verdict::drop(Stat::DropNoRoute));
    };
    // The router's interface addresses answer only their own subnets.
    if ip6_eq(&f.daddr, &route.gw_ip) {
        return Err(Verdict::drop(Stat::DropRouterLocal));
    }
    if mtu::exceeds6(ctx, f, route.mtu)? {
        return Err(mtu::too_big6(ctx, route.mtu));
    }
    l2::deliver_routed6(ctx, route, &f.daddr, cfg, Stat::RoutedIn)
}
