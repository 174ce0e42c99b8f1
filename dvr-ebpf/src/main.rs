//! Entry points of the DVR datapath. Each turns its pipeline's verdict into a TCX return
//! code and counts it exactly once.
#![no_std]
#![no_main]

mod arp;
mod ext;
mod fip;
mod flow;
mod ha;
mod icmp;
mod l2;
mod maps;
mod nat;
mod packet;
mod route;
mod security;
mod snat;
mod tap;
mod tunnel;
mod verdict;
mod vip;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// TC ingress on every local VM tap: frames the VM sends.
#[classifier]
pub fn dvr_tap(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, verdict::settle(tap::run(&ctx)))
}

/// TC ingress on the VXLAN collect_md device: frames from other hosts.
#[classifier]
pub fn dvr_tunnel(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, verdict::settle(tunnel::run(&ctx)))
}

/// TC ingress on the external interface: floating IPs (proxy ARP, DNAT), gateway learning.
#[classifier]
pub fn dvr_ext(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, verdict::settle(ext::run(&ctx)))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
