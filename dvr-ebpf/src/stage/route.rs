//! Routing on the source host (stage): a frame a VM sends to a router interface MAC. Within
//! the router's routes (its subnets and its extra routes, longest prefix first) it is
//! routed (TTL decremented, checksum updated incrementally) and delivered to the
//! destination port, or for an extra route to the port holding its next hop: a local tap
//! with the destination subnet's gateway MAC as source, or over the tunnel on the
//! destination network's VNI with this host's DVR MAC as source; a packet longer than that
//! network's MTU is answered or fragmented (`mtu`). ICMP echo to a router interface address
//! is answered here. Outside the router's routes the outbound decision is taken here:
//! hairpin to a FIP of the same router, SNAT to the VM's own FIP (within the external
//! network's MTU), or centralized SNAT. Whatever the path, a TTL that runs out at the
//! router is answered with ICMP time exceeded from the VM's gateway.
//!
//! Calls `fip`, `snat`, `icmp`, `mtu`, `vip`. Maps: reads DVR_ROUTES, DVR_ENDPOINTS,
//! DVR_FIPS, DVR_FIP_SRC (and those of its callees). Verdicts: routed, icmp_echo_reply,
//! icmp_time_exceeded, those of `fip`, `snat` and `mtu`, drop_no_route, drop_no_endpoint,
//! drop_no_nexthop, drop_ttl_exceeded, drop_router_local, drop_ip_fragment, drop_fip_spoof,
//! drop_redirect, drop_malformed.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    config::HostConfig,
    nat::{FIP_LOCAL, FIP_REMOTE},
    port::LocalPort,
    route::{Endpoint, IpKey, RouterIface},
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_ENDPOINTS, DVR_FIP_SRC, DVR_FIPS},
        verdict::{Verdict, settle},
    },
    net::{
        flow::{Flow, Parsed},
        l2,
        rewrite::{self, Ttl},
        route,
    },
    stage::{fip, icmp, mtu, snat, vip},
};

/// Route `f`, sent by the VM on tap `ifindex` (`port`) to router interface `gw`.
#[inline(always)]
pub fn stage(
    ctx: &TcContext,
    f: &Flow,
    ifindex: u32,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Verdict {
    let v = settle(routed(ctx, f, ifindex, port, gw, cfg));
    // Whatever the path (east-west, FIP, SNAT), a TTL that runs out at the router is
    // answered from the VM's gateway.
    if v.stat == Stat::DropTtlExceeded {
        return icmp::time_exceeded(ifindex, gw.ip_be);
    }
    v
}

#[inline(always)]
fn routed(
    ctx: &TcContext,
    f: &Flow,
    ifindex: u32,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let Some(route) = route::lookup(gw.router_id, f.daddr) else {
        return outbound(ctx, f, port, gw, cfg);
    };
    if f.daddr == route.gw_ip_be {
        return icmp::echo_reply(ctx, ifindex);
    }
    // An extra route's packets go to the port holding its next hop.
    let (hop, unknown) = if route.nexthop_be != 0 {
        (route.nexthop_be, Stat::DropNoNexthop)
    } else {
        (f.daddr, Stat::DropNoEndpoint)
    };
    let ep_key = IpKey {
        vni: route.vni,
        ip_be: hop,
    };
    // SAFETY: read-only copy of an agent-written hash value.
    let ep = match unsafe { DVR_ENDPOINTS.get(&ep_key) } {
        Some(ep) => *ep,
        // Not a port's fixed IP: maybe a VIP, wherever its holder is now.
        None => match vip::locate(route.vni, hop) {
            Some(l) => Endpoint {
                mac: l.mac,
                _pad: [0; 2],
                ifindex: l.ifindex,
                tunnel_ip_host: l.tunnel_ip_host,
            },
            None => return Err(Verdict::drop(unknown)),
        },
    };
    rewrite::ttl_decrement(ctx)?;
    mtu::check4(ctx, route.mtu, ifindex, gw.ip_be)?;
    fip::hairpin_reply(ctx, f, port.vni, Ttl::Keep)?;
    let v = l2::deliver_endpoint(ctx, &ep, route.gw_mac, route.vni, cfg, Stat::Routed)?;
    Ok(mtu::deliver4(ctx, v, mtu::out_ifindex(ep.ifindex, cfg)))
}

/// To a destination outside the router's subnets: a FIP of the same router (hairpin), else
/// out through the VM's own FIP, else through the router's centralized SNAT.
#[inline(always)]
fn outbound(
    ctx: &TcContext,
    f: &Flow,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    f.require(Parsed::L4)?;
    // SAFETY: read-only use of agent-written hash values.
    if let Some(fip) = unsafe { DVR_FIPS.get(&f.daddr) } {
        if fip.router_id == gw.router_id && fip.flags & (FIP_LOCAL | FIP_REMOTE) != 0 {
            return fip::hairpin(ctx, f, fip, cfg);
        }
    }
    // SAFETY: as above.
    if unsafe { DVR_FIPS.get(&f.saddr) }.is_some() {
        return Err(Verdict::drop(Stat::DropFipSpoof));
    }
    let src_key = IpKey {
        vni: port.vni,
        ip_be: f.saddr,
    };
    // SAFETY: as above.
    let Some(src) = (unsafe { DVR_FIP_SRC.get(&src_key) }) else {
        return snat::steer(ctx, f, port, gw, cfg);
    };
    mtu::check4(ctx, src.ext_mtu, ifindex_of(ctx), gw.ip_be)?;
    let v = fip::snat(ctx, f, port.vni, src, cfg, Ttl::Decrement)?;
    Ok(mtu::deliver4(ctx, v, cfg.ext_ifindex))
}

/// The interface the frame came in on.
#[inline(always)]
fn ifindex_of(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}
