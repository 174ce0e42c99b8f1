//! Drop events for `dvrctl monitor` (layer: base): one event per dropped packet on the
//! ring, within a per-CPU token bucket. Reads the packet's Ethernet and IPv4 or IPv6 headers.
//! Maps: writes DVR_EVENTS, DVR_EVENTS_RL. Verdicts: none.
use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use dvr_common::{
    events::{DropEvent, take_token},
    stats::Stat,
};

use crate::base::{
    clock,
    maps::{DVR_EVENTS, DVR_EVENTS_RL},
    packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, Eth, Ipv4Hdr, ptr_at},
};

/// Put a drop event on the ring, within the per-CPU rate limit (a full ring loses the
/// event, never the verdict). A BPF-to-BPF function, not inlined: every drop of a
/// pipeline ends here, and inlined into each the verifier walked it once per path (with
/// IPv6 in `dvr_tap`, past its 1M instruction limit; as a function, 310k in all).
pub fn report(ctx: &TcContext, stat: Stat) {
    let Some(rl) = DVR_EVENTS_RL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    if !take_token(unsafe { &mut *rl }, clock::coarse_ns()) {
        return;
    }
    // Written straight into the ring's record: a DropEvent on the stack would not fit
    // beside the deepest pipeline's frames (the verifier's 512-byte combined stack).
    let Some(mut entry) = DVR_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted; every field is written before.
    unsafe {
        (*ev).ts_ns = clock::coarse_ns();
        // The context pointer is valid for the program's run.
        (*ev).ifindex = (*ctx.skb.skb).ifindex;
        (*ev).reason = stat as u32;
        (*ev).len = ctx.len();
        (*ev).ethertype = 0;
        (*ev).proto = 0;
        (*ev)._pad = 0;
        (*ev).saddr_be = 0;
        (*ev).daddr_be = 0;
        (*ev).src_mac = [0; 6];
        (*ev).dst_mac = [0; 6];
        (*ev).saddr6 = [0; 16];
        (*ev).daddr6 = [0; 16];
        if let Ok(eth) = Eth::at(ctx) {
            (*ev).src_mac = eth.src();
            (*ev).dst_mac = eth.dst();
            (*ev).ethertype = eth.proto();
            if (*ev).ethertype == ETH_P_IP {
                if let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
                    // Bounds-checked by ptr_at.
                    (*ev).proto = (*ip).proto;
                    (*ev).saddr_be = u32::from_ne_bytes((*ip).src_addr);
                    (*ev).daddr_be = u32::from_ne_bytes((*ip).dst_addr);
                }
            } else if (*ev).ethertype == ETH_P_IPV6 {
                // Next header at 6, source at 8, destination at 24 of the IPv6 header.
                if let Ok(nh) = ctx.load::<u8>(ETH_LEN + 6) {
                    (*ev).proto = nh;
                }
                // Constant lengths: the helper copies whole or zeroes the rest.
                let skb = ctx.skb.skb as *const c_void;
                let to = (&raw mut (*ev).saddr6).cast::<c_void>();
                bpf_skb_load_bytes(skb, (ETH_LEN + 8) as u32, to, 16);
                let to = (&raw mut (*ev).daddr6).cast::<c_void>();
                bpf_skb_load_bytes(skb, (ETH_LEN + 24) as u32, to, 16);
            }
        }
    }
    entry.submit(0);
}
