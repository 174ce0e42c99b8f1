//! Routing stage on the source host: a frame to a router interface MAC is routed between
//! the router's subnets (TTL decremented, checksum updated incrementally), then delivered to
//! a local tap with the destination subnet's gateway MAC as source, or tunnelled on the
//! destination network's VNI with this host's DVR MAC as source. ICMP echo to a router
//! interface address is answered here. Reads DVR_ROUTES, DVR_ENDPOINTS.
//! Verdicts: routed, icmp_echo_reply, drop_no_route, drop_no_endpoint, drop_ttl_exceeded,
//! drop_router_local, drop_ip_fragment, drop_malformed.
use aya_ebpf::{helpers::bpf_redirect, maps::lpm_trie::Key, programs::TcContext};
use dvr_common::{
    config::HostConfig,
    csum,
    port::LocalPort,
    route::{Endpoint, IpKey, ROUTE_KEY_PREFIX_BITS, RouteKey, RouterIface},
    stats::Stat,
};

use crate::{
    fip, l2,
    maps::{DVR_ENDPOINTS, DVR_ROUTES},
    nat,
    packet::{ETH_LEN, EthHdr, IPPROTO_ICMP, IcmpHdr, Ipv4Hdr, be16, ptr_at},
    verdict::Verdict,
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const REPLY_TTL: u8 = 64;
/// More-fragments flag and fragment offset bits of the IPv4 `frag` word.
const IP_MF_OFFSET: u16 = 0x3fff;

#[inline(always)]
pub fn stage(
    ctx: &TcContext,
    ifindex: u32,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Verdict {
    crate::verdict::settle(route(ctx, ifindex, port, gw, cfg))
}

/// Whether `ip_be` lies in one of the subnets of router `router_id`.
#[inline(always)]
pub fn in_router(router_id: u32, ip_be: u32) -> bool {
    let key = Key::new(
        ROUTE_KEY_PREFIX_BITS + 32,
        RouteKey {
            router_id_be: router_id.to_be(),
            ip_be,
        },
    );
    DVR_ROUTES.get(&key).is_some()
}

#[inline(always)]
fn route(
    ctx: &TcContext,
    ifindex: u32,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    let daddr = u32::from_ne_bytes(ip.daddr);
    let saddr = u32::from_ne_bytes(ip.saddr);
    let key = Key::new(
        ROUTE_KEY_PREFIX_BITS + 32,
        RouteKey {
            router_id_be: gw.router_id.to_be(),
            ip_be: daddr,
        },
    );
    let Some(route) = DVR_ROUTES.get(&key) else {
        return fip::outbound(ctx, port, gw, cfg);
    };
    if daddr == route.gw_ip_be {
        return Err(echo_reply(ctx, ifindex, eth, ip));
    }
    let ep_key = IpKey {
        vni: route.vni,
        ip_be: daddr,
    };
    // SAFETY: read-only copy of an agent-written hash value.
    let ep = match unsafe { DVR_ENDPOINTS.get(&ep_key) } {
        Some(ep) => *ep,
        // Not a port's fixed IP: maybe a VIP, wherever its holder is now.
        None => match crate::vip::locate(route.vni, daddr) {
            Some(l) => Endpoint {
                mac: l.mac,
                _pad: [0; 2],
                ifindex: l.ifindex,
                tunnel_ip_host: l.tunnel_ip_host,
            },
            None => return Err(Verdict::drop(Stat::DropNoEndpoint)),
        },
    };
    nat::ttl_decrement(ctx)?;
    fip::hairpin_reply(ctx, port.vni, saddr, true)?;
    l2::deliver_routed(
        ctx,
        ep.mac,
        route.gw_mac,
        ep.ifindex,
        ep.tunnel_ip_host,
        route.vni,
        cfg,
        Stat::Routed,
    )
}

/// Answer an ICMP echo request to a router interface address, back out of the same tap.
#[inline(always)]
fn echo_reply(ctx: &TcContext, ifindex: u32, eth: &mut EthHdr, ip: &mut Ipv4Hdr) -> Verdict {
    if ip.proto != IPPROTO_ICMP {
        return Verdict::drop(Stat::DropRouterLocal);
    }
    if be16(ip.frag) & IP_MF_OFFSET != 0 {
        return Verdict::drop(Stat::DropIpFragment);
    }
    // Only option-less headers are answered: the ICMP header then sits at a constant offset.
    if ip.ver_ihl != 0x45 {
        return Verdict::drop(Stat::DropRouterLocal);
    }
    let icmp: *mut IcmpHdr = match ptr_at(ctx, ETH_LEN + 20) {
        Ok(p) => p,
        Err(v) => return v,
    };
    // SAFETY: bounds-checked just above.
    let icmp = unsafe { &mut *icmp };
    if icmp.kind != ICMP_ECHO_REQUEST || icmp.code != 0 {
        return Verdict::drop(Stat::DropRouterLocal);
    }
    icmp.kind = ICMP_ECHO_REPLY;
    let check = csum::replace16(
        be16(icmp.check),
        u16::from_be_bytes([ICMP_ECHO_REQUEST, 0]),
        u16::from_be_bytes([ICMP_ECHO_REPLY, 0]),
    );
    icmp.check = check.to_be_bytes();
    // Swapping addresses leaves both checksums unchanged (one's complement sums commute);
    // the fresh TTL needs an update.
    core::mem::swap(&mut ip.saddr, &mut ip.daddr);
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new = u16::from_be_bytes([REPLY_TTL, ip.proto]);
    ip.check = csum::replace16(be16(ip.check), old, new).to_be_bytes();
    ip.ttl = REPLY_TTL;
    core::mem::swap(&mut eth.src, &mut eth.dst);
    // SAFETY: plain helper call.
    Verdict::redirect(Stat::IcmpEchoReply, unsafe { bpf_redirect(ifindex, 0) })
}
