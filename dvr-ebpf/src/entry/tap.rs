//! Entry pipeline for frames a VM sends (TC ingress on its tap): identify the port, then
//! ARP (`arp` stage), or for IPv4: parse, port security, then routing (frames to a router
//! interface MAC, `route` stage) or L2 forwarding (after the hairpin reply translation of
//! `fip`), after the egress rules of the port's security groups (`sg`). Maps: reads DVR_LOCAL_PORTS, DVR_HOST_CONFIG, DVR_GW_BY_MAC (and those of the
//! stages). Verdicts: those of the stages and of `net::l2::forward`, drop_unknown_port,
//! drop_not_ready, drop_port_down, drop_ethertype, drop_malformed.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    l2::FdbKey,
    port::{PORT_FLAG_DOWN, PORT_FLAG_SECURITY, PORT_FLAG_SG},
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_GW_BY_MAC, DVR_HOST_CONFIG, DVR_LOCAL_PORTS},
        packet::{ETH_P_ARP, ETH_P_IP, Eth},
        verdict::Verdict,
    },
    net::{
        flow::{Flow, Parsed},
        l2::{self, Ingress},
        rewrite::Ttl,
    },
    stage::{
        arp, fip, route, security,
        sg::{self, Direction},
    },
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
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
            let gw_key = FdbKey {
                vni: port.vni,
                mac: dst,
                _pad: [0; 2],
            };
            // SAFETY: read-only use of an agent-written hash value.
            if let Some(gw) = unsafe { DVR_GW_BY_MAC.get(&gw_key) } {
                return Ok(route::stage(ctx, &f, ifindex, port, gw, cfg));
            }
            // A reply to a hairpin flow from a VM in the same subnet goes straight back at
            // L2, not through the gateway: its source still becomes the FIP here.
            fip::hairpin_reply(ctx, &f, port.vni, Ttl::Decrement)?;
        }
        _ => return Err(Verdict::drop(Stat::DropEthertype)),
    }
    Ok(l2::forward(
        ctx,
        port.vni,
        &dst,
        Ingress::Tap {
            ifindex,
            tunnel_ifindex: cfg.tunnel_ifindex,
        },
    ))
}
