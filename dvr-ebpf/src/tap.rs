//! Entry pipeline for frames a VM sends (TC ingress on its tap): identify the port, port
//! security, then ARP, routing (frames to a router interface MAC) or L2 forwarding.
//! Reads DVR_LOCAL_PORTS, DVR_HOST_CONFIG, DVR_GW_BY_MAC.
use aya_ebpf::programs::TcContext;
use dvr_common::{l2::FdbKey, port::PORT_FLAG_SECURITY, stats::Stat};

use crate::{
    arp, fip, l2,
    maps::{DVR_GW_BY_MAC, DVR_HOST_CONFIG, DVR_LOCAL_PORTS},
    packet::{ETH_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, Ipv4Hdr, be16, ptr_at},
    route, security,
    verdict::Verdict,
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only use of an agent-written hash value.
    let port =
        unsafe { DVR_LOCAL_PORTS.get(&ifindex) }.ok_or(Verdict::drop(Stat::DropUnknownPort))?;
    let cfg = DVR_HOST_CONFIG
        .get(0)
        .ok_or(Verdict::drop(Stat::DropNotReady))?;
    if cfg.ready == 0 {
        return Err(Verdict::drop(Stat::DropNotReady));
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    let (proto, src, dst) = unsafe { (be16((*eth).proto), (*eth).src, (*eth).dst) };
    match proto {
        ETH_P_ARP => arp::stage(ctx, ifindex, port)?,
        ETH_P_IP => {
            let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: bounds-checked by ptr_at.
            let (ver_ihl, saddr) = unsafe { ((*ip).ver_ihl, (*ip).saddr) };
            if ver_ihl >> 4 != 4 || ver_ihl & 0xf < 5 {
                return Err(Verdict::drop(Stat::DropMalformed));
            }
            if port.flags & PORT_FLAG_SECURITY != 0 {
                security::check(ifindex, &src, saddr, Stat::DropSpoofIp)?;
            }
            let gw_key = FdbKey {
                vni: port.vni,
                mac: dst,
                _pad: [0; 2],
            };
            // SAFETY: read-only use of an agent-written hash value.
            if let Some(gw) = unsafe { DVR_GW_BY_MAC.get(&gw_key) } {
                let v = route::stage(ctx, ifindex, port, gw, cfg);
                // Whatever the path (east-west, FIP, SNAT), a TTL that runs out at the
                // router is answered from the VM's gateway.
                if v.stat == Stat::DropTtlExceeded {
                    return Ok(crate::icmp::time_exceeded(ctx, ifindex, gw.ip_be));
                }
                return Ok(v);
            }
            // A reply to a hairpin flow from a VM in the same subnet goes straight back at
            // L2, not through the gateway: its source still becomes the FIP here.
            fip::hairpin_reply(ctx, port.vni, u32::from_ne_bytes(saddr), false)?;
        }
        _ => return Err(Verdict::drop(Stat::DropEthertype)),
    }
    Ok(l2::forward(
        ctx,
        port.vni,
        &dst,
        ifindex,
        cfg.tunnel_ifindex,
    ))
}
