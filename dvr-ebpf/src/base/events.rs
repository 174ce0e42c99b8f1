//! Drop events for `dvrctl monitor` (layer: base): one event per dropped packet on the
//! ring, within a per-CPU token bucket. Reads the packet's Ethernet and IPv4 or IPv6 headers.
//! Maps: writes DVR_EVENTS, DVR_EVENTS_RL. Verdicts: none.
use aya_ebpf::programs::TcContext;
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
/// event, never the verdict).
#[inline(always)]
pub fn report(ctx: &TcContext, stat: Stat) {
    let Some(rl) = DVR_EVENTS_RL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    if !take_token(unsafe { &mut *rl }, clock::coarse_ns()) {
        return;
    }
    let mut ev = DropEvent {
        ts_ns: clock::coarse_ns(),
        // SAFETY: the context pointer is valid for the program's run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        reason: stat as u32,
        len: ctx.len(),
        ..Default::default()
    };
    if let Ok(eth) = Eth::at(ctx) {
        ev.src_mac = eth.src();
        ev.dst_mac = eth.dst();
        ev.ethertype = eth.proto();
        if ev.ethertype == ETH_P_IP {
            if let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
                // SAFETY: bounds-checked by ptr_at.
                unsafe {
                    ev.proto = (*ip).proto;
                    ev.saddr_be = u32::from_ne_bytes((*ip).src_addr);
                    ev.daddr_be = u32::from_ne_bytes((*ip).dst_addr);
                }
            }
        } else if ev.ethertype == ETH_P_IPV6 {
            // Next header at 6, source at 8, destination at 24 of the fixed IPv6 header.
            if let Ok(h) = ctx.load::<[u8; 40]>(ETH_LEN) {
                ev.proto = h[6];
                ev.saddr6.copy_from_slice(&h[8..24]);
                ev.daddr6.copy_from_slice(&h[24..40]);
            }
        }
    }
    let _ = DVR_EVENTS.output::<DropEvent>(&ev, 0);
}
