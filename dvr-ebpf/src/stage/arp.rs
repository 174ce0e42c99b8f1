//! ARP on a tap (stage): port security for the ARP sender, VIP learning, and the local
//! answer for ARP requests to a router interface (never sent over the tunnel).
//! Calls `security`, `vip`. Maps: reads DVR_GW_BY_IP (and those of its callees).
//! Verdicts: arp_reply, drop_spoof_*, drop_arp_other, drop_redirect, drop_malformed;
//! `Ok(())` = forward at L2.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    port::{LocalPort, PORT_FLAG_SECURITY},
    route::IpKey,
    stats::Stat,
};

use crate::{
    base::{
        maps::DVR_GW_BY_IP,
        packet::{
            ARP_REPLY, ARP_REQUEST, ArpHdr, ETH_LEN, Eth, arp_is_ethernet_ipv4, arp_reply_in_place,
            be16, ptr_at,
        },
        verdict::{Verdict, redirect},
    },
    net::l2::Location,
    stage::{security, vip},
};

#[inline(always)]
pub fn stage(ctx: &TcContext, ifindex: u32, port: &LocalPort) -> Result<(), Verdict> {
    let eth = Eth::at(ctx)?;
    let arp: *mut ArpHdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at and no helper ran since; ArpHdr is all bytes.
    let arp = unsafe { &mut *arp };
    if !arp_is_ethernet_ipv4(arp) {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    let oper = be16(arp.oper);
    if port.flags & PORT_FLAG_SECURITY != 0 {
        let src = eth.src();
        security::check(ifindex, &src, arp.spa, Stat::DropSpoofArp)?;
        if arp.sha != src {
            return Err(Verdict::drop(Stat::DropSpoofArp));
        }
    }
    vip::learn(port.vni, arp.spa, &arp.sha, Location::Local(ifindex));
    if oper == ARP_REPLY {
        return Ok(());
    }
    if oper != ARP_REQUEST {
        return Err(Verdict::drop(Stat::DropArpOther));
    }
    let key = IpKey {
        vni: port.vni,
        ip_be: u32::from_ne_bytes(arp.tpa),
    };
    // SAFETY: read-only use of an agent-written hash value.
    let Some(gw) = (unsafe { DVR_GW_BY_IP.get(&key) }) else {
        return Ok(());
    };
    // Answer in place: the request becomes the reply and goes back out of the same tap.
    arp_reply_in_place(eth, arp, gw.mac, gw.ip_be.to_ne_bytes());
    Err(redirect(ifindex, Stat::ArpReply))
}
