//! ARP stage on a tap: port security for the ARP sender, and the local answer for ARP
//! requests to a router interface (never sent over the tunnel). Reads DVR_GW_BY_IP.
//! Verdicts: arp_reply, drop_spoof_*, drop_arp_other, drop_malformed; Ok(()) = forward at L2.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use dvr_common::{port::LocalPort, port::PORT_FLAG_SECURITY, route::IpKey, stats::Stat};

use crate::{
    maps::DVR_GW_BY_IP,
    packet::{ArpHdr, ETH_LEN, EthHdr, be16, ptr_at},
    security,
    verdict::Verdict,
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

#[inline(always)]
pub fn stage(ctx: &TcContext, ifindex: u32, port: &LocalPort) -> Result<(), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let arp: *mut ArpHdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: both pointers were bounds-checked by ptr_at and no helper ran since.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if be16(arp.htype) != 1 || be16(arp.ptype) != 0x0800 || arp.hlen != 6 || arp.plen != 4 {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    let oper = be16(arp.oper);
    if port.flags & PORT_FLAG_SECURITY != 0 {
        security::check(ifindex, &eth.src, arp.spa, Stat::DropSpoofArp)?;
        if arp.sha != eth.src {
            return Err(Verdict::drop(Stat::DropSpoofArp));
        }
    }
    crate::vip::learn(port.vni, arp.spa, &arp.sha, ifindex, 0);
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
    eth.dst = eth.src;
    eth.src = gw.mac;
    arp.oper = ARP_REPLY.to_be_bytes();
    arp.tha = arp.sha;
    arp.tpa = arp.spa;
    arp.sha = gw.mac;
    arp.spa = gw.ip_be.to_ne_bytes();
    // SAFETY: plain helper call; ifindex is the tap the request came from.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    Err(Verdict::redirect(Stat::ArpReply, ret))
}
