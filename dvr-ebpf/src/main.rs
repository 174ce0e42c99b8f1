//! The DVR datapath: five TC programs and one XDP program. The code is layered, every
//! module calling only downwards: `entry` (one pipeline per program) -> `stage` (features) -> `net` (parsed
//! flow, conntrack, rewrites, L2 delivery, route lookup) -> `base` (packet access,
//! verdicts, clocks, maps, drop events). Each entry's verdict becomes the TCX return code
//! and is counted exactly once (`entry::finish`; `dvr_tap` counts in each of its two halves,
//! see `entry::tap::program`; steps such as encapsulation are counted besides it).
#![no_std]
#![no_main]

mod base;
mod entry;
mod net;
mod stage;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress on every local VM tap: frames the VM sends.
#[classifier]
pub fn dvr_tap(ctx: TcContext) -> i32 {
    entry::tap::program(&ctx)
}

/// TC egress on every local VM tap: frames delivered to the VM (security group ingress
/// rules, port admin state).
#[classifier]
pub fn dvr_tap_out(ctx: TcContext) -> i32 {
    entry::finish_filter(&ctx, entry::tap_out::run(&ctx))
}

/// TC ingress on the VXLAN collect_md device: frames from other hosts.
#[classifier]
pub fn dvr_tunnel(ctx: TcContext) -> i32 {
    entry::tunnel::program(&ctx)
}

/// TC ingress on the underlay NIC: VXLAN frames decapsulated here (`--tunnel-decap bpf`).
#[classifier]
pub fn dvr_underlay(ctx: TcContext) -> i32 {
    entry::underlay::program(&ctx)
}

/// TC ingress on the external interface: floating IPs (proxy ARP, DNAT), gateway learning.
#[classifier]
pub fn dvr_ext(ctx: TcContext) -> i32 {
    entry::ext::program(&ctx)
}

/// XDP on the external interface, in front of `dvr_ext`: proxy ARP replies and floating
/// IPs of ports without security groups, before any socket buffer; the rest passes to TC.
/// Multi-buffer aware (`frags`), so the NIC keeps its large frames: those pass.
#[xdp(frags)]
pub fn dvr_ext_xdp(ctx: XdpContext) -> u32 {
    entry::ext_xdp::program(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
