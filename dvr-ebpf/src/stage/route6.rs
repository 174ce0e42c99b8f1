//! IPv6 routing on the source host (stage): an IPv6 packet a VM sends to a router interface
//! MAC. To a router interface address (of the VM's network, DVR_GW_BY_IP6, or the
//! destination subnet's gateway) only echo is answered (`icmp6`). Neighbour discovery and
//! link-local addresses never cross the router. Within the router's IPv6 subnets the packet
//! is routed (hop limit decremented) and delivered to the destination port as IPv4 is
//! (`net::l2::deliver_routed`): a local tap with the destination subnet's gateway MAC as
//! source, or over the tunnel with this host's DVR MAC. A hop limit that runs out at the
//! router is answered with ICMPv6 time exceeded, and a packet longer than the destination
//! network's MTU with packet too big (`mtu`), both from the gateway of the source's subnet.
//! An extra route's packets go to the port holding its next hop. Outside the router's
//! routes: north-south, to the router's SNAT host (`north6::steer`).
//!
//! Calls `icmp6`, `mtu`, `north6`. Maps: reads DVR_GW_BY_IP6, DVR_ROUTES6, DVR_ENDPOINTS6.
//! Verdicts: routed, icmp_echo_reply, icmp_time_exceeded, icmp_too_big, drop_router_local,
//! drop_link_local, drop_no_route, drop_no_endpoint, drop_no_nexthop, drop_ttl_exceeded,
//! drop_frag_needed, drop_no_local_port, drop_redirect, drop_malformed, those of
//! `north6::steer`.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    config::HostConfig,
    ip6::{Ip6Key, is_link_local},
    port::LocalPort,
    route::RouterIface,
    stats::Stat,
};

use crate::{
    base::{
        maps::DVR_GW_BY_IP6,
        packet::ip6_eq,
        verdict::{Verdict, settle},
    },
    net::{flow6::Flow6, l2, route},
    stage::{icmp6, mtu, north6},
};

/// Route `f`, sent by the VM on tap `ifindex` (`port`) to router interface `gw`.
#[inline(always)]
pub fn stage(
    ctx: &TcContext,
    f: &Flow6,
    ifindex: u32,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Verdict {
    let v = settle(routed(ctx, f, ifindex, port, gw, cfg));
    // Time exceeded or packet too big, from the gateway of the subnet the source address
    // lies in.
    if let Some(mtu) = mtu::icmp6_error(ctx, &v)
        && let Some(src_route) = route::lookup6(gw.router_id, &f.saddr)
    {
        return icmp6::answer(ctx, f, ifindex, &src_route.gw_ip, mtu);
    }
    v
}

#[inline(always)]
fn routed(
    ctx: &TcContext,
    f: &Flow6,
    ifindex: u32,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let local = Ip6Key {
        vni: port.vni,
        ip: f.daddr,
    };
    // SAFETY: read-only use of an agent-written hash value.
    if unsafe { DVR_GW_BY_IP6.get(&local) }.is_some() {
        return icmp6::echo_reply(ctx, f, ifindex);
    }
    // Link-scoped: neighbour discovery not answered by `nd` ends here.
    if f.is_nd() {
        return Err(Verdict::drop(Stat::DropRouterLocal));
    }
    if is_link_local(&f.saddr) || is_link_local(&f.daddr) {
        return Err(Verdict::drop(Stat::DropLinkLocal));
    }
    let Some(route) = route::lookup6(gw.router_id, &f.daddr) else {
        // North-south: through the router's SNAT host, with the VM's own address.
        return north6::steer(ctx, f, port, gw, cfg);
    };
    if ip6_eq(&f.daddr, &route.gw_ip) {
        return icmp6::echo_reply(ctx, f, ifindex);
    }
    if mtu::exceeds6(ctx, f, route.mtu)? {
        return Err(mtu::too_big6(ctx, route.mtu));
    }
    l2::deliver_routed6(ctx, route, &f.daddr, cfg, Stat::Routed)
}
