//! The benchmark's floor: the least any BPF datapath can do on a path of the test bed.
//! Every frame is sent out of one interface, set at load time, with no lookup and no
//! rewrite; with a VNI set, it is VXLAN-encapsulated as the datapath does it (`base/vxlan.rs`:
//! the FIB lookup from the VXLAN device, out of the underlay NIC), through the VXLAN
//! collect_md device (the interface set) where that cannot be done. On the underlay NIC it
//! decapsulates first, as the datapath's underlay program does. `dvr-bench` loads one instance per attachment (see
//! `tests/src/bench/floor.rs`); the agent never loads it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};

/// The datapath's own tunnel metadata code (`base/tunnel_key.rs`).
#[path = "base/tunnel_key.rs"]
mod tunnel_key;
/// The datapath's own VXLAN encapsulation (`base/vxlan.rs`).
#[path = "base/vxlan.rs"]
mod vxlan;

/// Where every frame goes (an ifindex of the namespace the program is attached in).
#[unsafe(no_mangle)]
static FLOOR_IFINDEX: u32 = 0;
/// The VNI to send with, 0 for none.
#[unsafe(no_mangle)]
static FLOOR_VNI: u32 = 0;
/// The remote tunnel address (host byte order), with a VNI.
#[unsafe(no_mangle)]
static FLOOR_REMOTE: u32 = 0;
/// This host's tunnel address (host byte order), with a VNI.
#[unsafe(no_mangle)]
static FLOOR_LOCAL: u32 = 0;
/// On the underlay NIC: this host's tunnel address (host byte order). The VXLAN frames the
/// datapath decapsulates (`base/vxlan.rs`) are decapsulated and sent; the rest passes on
/// to the host stack and the VXLAN device.
#[unsafe(no_mangle)]
static FLOOR_DECAP: u32 = 0;

#[classifier]
pub fn dvr_floor(ctx: TcContext) -> i32 {
    // SAFETY: load-time constants the loader sets; volatile so they are not folded to 0.
    let (ifindex, vni, remote, local, decap) = unsafe {
        (
            core::ptr::read_volatile(&FLOOR_IFINDEX),
            core::ptr::read_volatile(&FLOOR_VNI),
            core::ptr::read_volatile(&FLOOR_REMOTE),
            core::ptr::read_volatile(&FLOOR_LOCAL),
            core::ptr::read_volatile(&FLOOR_DECAP),
        )
    };
    if decap != 0 {
        // VNI 0 and sender 0.0.0.0 are no network and no host of the datapath.
        match vxlan::decap(&ctx, decap) {
            Ok(Some(d)) if d.vni != 0 && d.remote_host != 0 => {}
            Ok(None) => return TC_ACT_OK,
            _ => return TC_ACT_SHOT,
        }
    }
    if vni != 0 {
        match vxlan::encap(&ctx, ifindex, local, remote, vni) {
            vxlan::Encap::Sent => return TC_ACT_REDIRECT,
            vxlan::Encap::Broken => return TC_ACT_SHOT,
            vxlan::Encap::Untouched => {}
        }
        if tunnel_key::set(&ctx, vni, remote) != 0 {
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
