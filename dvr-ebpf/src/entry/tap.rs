//! Entry pipeline for frames a VM sends (TC ingress on its tap): identify the port, then
//! ARP (`arp` stage), or for IPv4: parse, port security, then routing (frames to a router
//! interface MAC, `route` stage) or L2 forwarding (after the hairpin reply translation of
//! `fip`), after the egress rules of the port's security groups (`sg`); or for IPv6: parse
//! (`net::flow6`), port security (`security::source6`), the egress rules of the port's
//! groups (`sg::check6`), neighbour discovery (`nd`: RA guard, local answers), then routing
//! (`route6`) or L2 forwarding. Frames to the interface MAC of a router with
//! `admin_state_up: false` are dropped. Maps: reads DVR_LOCAL_PORTS, DVR_HOST_CONFIG,
//! DVR_GW_BY_MAC (and those of the stages). Verdicts: those of the stages and of
//! `net::l2::forward`, drop_router_down,
//! drop_unknown_port, drop_not_ready, drop_port_down, drop_ethertype, drop_ext_hdr,
//! drop_malformed.
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use dvr_common::{
    Mac,
    config::HostConfig,
    l2::FdbKey,
    port::{LocalPort, PORT_FLAG_DOWN, PORT_FLAG_SECURITY, PORT_FLAG_SG},
    route::{ROUTER_DOWN, RouterIface},
    stats::Stat,
};

use super::{finish, finish_deferred};
use crate::{
    base::{
        maps::{DVR_GW_BY_MAC, DVR_HOST_CONFIG, DVR_LOCAL_PORTS},
        packet::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Eth},
        verdict::Verdict,
    },
    net::{
        encap::Tunnel,
        flow::{Flow, Parsed},
        flow6::Flow6,
        l2::{self, Ingress},
        rewrite::Ttl,
    },
    stage::{
        arp, fip, nd, route, route6, security,
        sg::{self, Direction},
    },
};

/// The whole program for one frame, its verdict counted once (`entry::finish`). IPv6 and
/// the rest (ARP, IPv4) are two BPF-to-BPF calls with a stack frame each: their locals do
/// not fit in one frame (512 bytes), and the frames of a call chain add up, so this
/// dispatch holds none.
#[inline(always)]
pub fn program(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    if let Ok(eth) = Eth::at(ctx)
        && eth.proto() == ETH_P_IPV6
    {
        return finish_deferred(ctx, program6(skb));
    }
    // IPv4 may leave as fragments, sent from here.
    finish_deferred(ctx, program4(skb))
}

#[inline(never)]
fn program4(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    finish(&ctx, run(&ctx))
}

#[inline(never)]
fn program6(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    finish(&ctx, run6(&ctx))
}

/// The tap's port and the host configuration, when the datapath serves the tap now.
#[inline(always)]
fn local_port(ctx: &TcContext) -> Result<(u32, &'static LocalPort, &'static HostConfig), Verdict> {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only use of an agent-written hash value.
    let port =
        unsafe { DVR_LOCAL_PORTS.get(&ifindex) }.ok_or(Verdict::drop(Stat::DropUnknownPort))?;
    let cfg = DVR_HOST_CONFIG
        .get(0)
        .ok_or(Verdict::drop(Stat::DropNotReady))?;
    if cfg.ready == 0 {
        return Err(Verdict::drop(Stat::DropNotReady));
    }
    if port.flags & PORT_FLAG_DOWN != 0 {
        return Err(Verdict::drop(Stat::DropPortDown));
    }
    Ok((ifindex, port, cfg))
}

/// ARP, IPv4, and any other ethertype (dropped).
#[inline(always)]
fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let (ifindex, port, cfg) = local_port(ctx)?;
    let eth = Eth::at(ctx)?;
    let (proto, src, dst) = (eth.proto(), eth.src(), eth.dst());
    match proto {
        ETH_P_ARP => arp::stage(ctx, ifindex, port)?,
        ETH_P_IP => {
            let f = Flow::parse(ctx);
            f.require(Parsed::Ip)?;
            if port.flags & PORT_FLAG_SECURITY != 0 {
                security::check(ifindex, &src, f.saddr.to_ne_bytes(), Stat::DropSpoofIp)?;
            }
            if port.flags & PORT_FLAG_SG != 0 {
                sg::check(ctx, &f, ifindex, port, Direction::Egress)?;
            }
            if let Some(gw) = gateway(port, dst)? {
                return Ok(route::stage(ctx, &f, ifindex, port, gw, cfg));
            }
            // A reply to a hairpin flow from a VM in the same subnet goes straight back at
            // L2, not through the gateway: its source still becomes the FIP here.
            fip::hairpin_reply(ctx, &f, port.vni, Ttl::Decrement)?;
        }
        _ => return Err(Verdict::drop(Stat::DropEthertype)),
    }
    Ok(forward(ctx, ifindex, port, cfg, &dst))
}

/// IPv6: port security, the groups' egress rules, neighbour discovery, then routing
/// (frames to a router interface MAC) or L2 forwarding.
#[inline(always)]
fn run6(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let (ifindex, port, cfg) = local_port(ctx)?;
    let eth = Eth::at(ctx)?;
    let (src, dst) = (eth.src(), eth.dst());
    let f = Flow6::parse(ctx);
    f.require(Parsed::Ip)?;
    if port.flags & PORT_FLAG_SECURITY != 0 {
        security::source6(ifindex, &src, &f)?;
    }
    if port.flags & PORT_FLAG_SG != 0 {
        sg::check6(ctx, &f, port, Direction::Egress)?;
    }
    nd::stage(ctx, &f, ifindex, port, &src)?;
    if let Some(gw) = gateway(port, dst)? {
        return Ok(route6::stage(ctx, &f, ifindex, port, gw, cfg));
    }
    Ok(forward(ctx, ifindex, port, cfg, &dst))
}

/// The router interface with MAC `mac` on the port's network (DVR_GW_BY_MAC): a frame
/// addressed to it is routed, unless its router is down (`admin_state_up: false`).
#[inline(always)]
fn gateway(port: &LocalPort, mac: Mac) -> Result<Option<&'static RouterIface>, Verdict> {
    let key = FdbKey {
        vni: port.vni,
        mac,
        _pad: [0; 2],
    };
    // SAFETY: read-only use of an agent-written hash value.
    match unsafe { DVR_GW_BY_MAC.get(&key) } {
        Some(gw) if gw.flags & ROUTER_DOWN != 0 => Err(Verdict::drop(Stat::DropRouterDown)),
        found => Ok(found),
    }
}

/// Forward at L2 on the port's network.
#[inline(always)]
fn forward(
    ctx: &TcContext,
    ifindex: u32,
    port: &LocalPort,
    cfg: &HostConfig,
    dst: &Mac,
) -> Verdict {
    l2::forward(
        ctx,
        port.vni,
        dst,
        Ingress::Tap {
            ifindex,
            tunnel: Tunnel::of(cfg),
        },
    )
}
