//! The benchmark's floor: the least any BPF datapath can do on a path of the test bed.
//! Every frame is sent out of one interface, set at load time, with no lookup and no
//! rewrite; with a VNI set, it first gets the same tunnel metadata the datapath gives it for
//! the VXLAN collect_md device. `dvr-bench` loads one instance per attachment (see
//! `tests/src/bench/floor.rs`); the agent never loads it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_set_tunnel_key},
    macros::classifier,
    programs::TcContext,
};

/// Where every frame goes (an ifindex of the namespace the program is attached in).
#[unsafe(no_mangle)]
static FLOOR_IFINDEX: u32 = 0;
/// The VNI to send with, 0 for none.
#[unsafe(no_mangle)]
static FLOOR_VNI: u32 = 0;
/// The remote tunnel address (host byte order), with a VNI.
#[unsafe(no_mangle)]
static FLOOR_REMOTE: u32 = 0;

const TUNNEL_TTL: u8 = 64;

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
    if vni != 0 {
        // SAFETY: bpf_tunnel_key is plain old data; all-zero is a valid value.
        let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
        key.tunnel_id = vni;
        key.__bindgen_anon_1.remote_ipv4 = remote;
        key.tunnel_ttl = TUNNEL_TTL;
        // SAFETY: key lives on our stack for the call; size is the full struct.
        let ret = unsafe {
            bpf_skb_set_tunnel_key(
                ctx.skb.skb as *mut __sk_buff,
                &mut key,
                core::mem::size_of::<bpf_tunnel_key>() as u32,
                0,
            )
        };
        if ret != 0 {
            return TC_ACT_SHOT;
        }
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
