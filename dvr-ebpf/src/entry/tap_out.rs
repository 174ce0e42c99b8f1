//! Entry pipeline for frames delivered to a VM (TCX egress on its tap): whatever program
//! sent them there (a redirect from another tap, the tunnel, the external NIC, a flood
//! copy), the ingress rules of the port's security groups are checked here, where the
//! packet is delivered, after any DNAT (a floating IP's traffic is seen with the fixed IP).
//! A port with `admin_state_up: false` receives nothing. Only drops are counted: the
//! program that delivered the frame counted it. Frames for a tap with no port entry, and
//! anything that is neither IPv4 nor IPv6, are left alone.
//! Maps: reads DVR_LOCAL_PORTS (and those of `sg`). Verdicts: drop_port_down, those of `sg`.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    port::{LocalPort, PORT_FLAG_DOWN, PORT_FLAG_SG},
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
        ETH_P_IP => ingress4(ctx, ifindex, port)?,
        ETH_P_IPV6 => ingress6(ctx, port)?,
        _ => {}
    }
    Ok(pass)
}

/// The IPv4 and IPv6 checks are BPF-to-BPF calls with a frame each, as in `tap`: the IPv6
/// check's own frame (`sg::check6`) plus the parsed IPv6 flow would not fit beside the
/// inlined IPv4 check in one chain of frames (512 bytes).
#[inline(never)]
fn ingress4(ctx: &TcContext, ifindex: u32, port: &LocalPort) -> Result<(), Verdict> {
    sg::check(ctx, &Flow::parse(ctx), ifindex, port, Direction::Ingress)
}

#[inline(never)]
fn ingress6(ctx: &TcContext, port: &LocalPort) -> Result<(), Verdict> {
    sg::check6(ctx, &Flow6::parse(ctx), port, Direction::Ingress)
}
