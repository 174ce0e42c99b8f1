//! The benchmark's floor: the least any BPF datapath can do on a path of the test bed.
//! Every frame is sent out of one interface, set at load time, with no lookup and no
//! rewrite; with a VNI set, it first gets the same tunnel metadata the datapath gives it for
//! the VXLAN collect_md device. `dvr-bench` loads one instance per attachment (see
//! `tests/src/bench/floor.rs`); the agent never loads it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_SHOT, helpers::bpf_redirect, macros::classifier, programs::TcContext,
};

/// The datapath's own tunnel metadata code (`base/tunnel_key.rs`).
#[path = "base/tunnel_key.rs"]
mod tunnel_key;

/// Where every frame goes (an ifindex of the namespace the program is attached in).
#[unsafe(no_mangle)]
static FLOOR_IFINDEX: u32 = 0;
/// The VNI to send with, 0 for none.
#[unsafe(no_mangle)]
static FLOOR_VNI: u32 = 0;
/// The remote tunnel address (host byte order), with a VNI.
#[unsafe(no_mangle)]
static FLOOR_REMOTE: u32 = 0;

#[classifier]
pub fn dvr_floor(ctx: TcContext) -> i32 {
    // SAFETY: load-time constants the loader sets; volatile so they are not folded to 0.
    let (ifindex, vni, remote) = unsafe {
        (
            core::ptr::read_volatile(&FLOOR_IFINDEX),
            core::ptr::read_volatile(&FLOOR_VNI),
            core::ptr::read_volatile(&FLOOR_REMOTE),
        )
    };
    if vni != 0 && tunnel_key::set(&ctx, vni, remote) != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: bpf_redirect takes two integers and touches no memory of ours.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
