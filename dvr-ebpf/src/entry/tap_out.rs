//! Entry pipeline for frames delivered to a VM (TCX egress on its tap): whatever program
//! sent them there (a redirect from another tap, the tunnel, the external NIC, a flood
//! copy), the ingress rules of the port's security groups are checked here, where the
//! packet is delivered, after any DNAT (a floating IP's traffic is seen with the fixed IP).
//! A port with `admin_state_up: false` receives nothing. Only drops are counted: the
//! program that delivered the frame counted it. Frames for a tap with no port entry, and
//! anything that is neither IPv4 nor IPv6, are left alone; IPv6 meets the groups'
//! fail-closed rule (`sg::check6`: only neighbour and multicast listener discovery).
//! Maps: reads DVR_LOCAL_PORTS (and those of `sg`). Verdicts: drop_port_down, those of `sg`.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    port::{PORT_FLAG_DOWN, PORT_FLAG_SG},
    stats::Stat,
};

use crate::{
    base::{
        maps::DVR_LOCAL_PORTS,
        packet::{ETH_P_IP, ETH_P_IPV6, Eth},
        verdict::Verdict,
    },
    net::{flow::Flow, flow6::Flow6},
    stage::sg::{self, Direction},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let pass = Verdict::pass(Stat::TxLocal);
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only use of an agent-written hash value.
    let Some(port) = (unsafe { DVR_LOCAL_PORTS.get(&ifindex) }) else {
        return Ok(pass);
    };
    if port.flags & PORT_FLAG_DOWN != 0 {
        return Err(Verdict::drop(Stat::DropPortDown));
    }
    if port.flags & PORT_FLAG_SG == 0 {
        return Ok(pass);
    }
    match Eth::at(ctx)?.proto() {
        ETH_P_IP => sg::check(ctx, &Flow::parse(ctx), ifindex, port, Direction::Ingress)?,
        ETH_P_IPV6 => sg::check6(&Flow6::parse(ctx), Direction::Ingress)?,
        _ => {}
    }
    Ok(pass)
}
