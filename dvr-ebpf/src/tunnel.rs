//! Entry pipeline for frames from the VXLAN collect_md device (TC ingress): accept only
//! known hosts, never let a frame reach a router interface from the tunnel (each host's
//! router is local), rewrite a peer's DVR MAC to the destination subnet's gateway MAC, and
//! deliver to local taps only. Reads DVR_PEERS, DVR_GW_BY_MAC, DVR_FDB, DVR_DVR_MACS.
//! Verdicts: rx_tunnel, flooded, drop_no_tunnel_key, drop_unknown_peer,
//! drop_gateway_from_tunnel, drop_no_local_port, drop_malformed.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key},
    programs::TcContext,
};
use dvr_common::{
    l2::{FdbKey, MacKey},
    stats::Stat,
};

use crate::{
    fip, l2,
    maps::{DVR_DVR_MACS, DVR_FDB, DVR_GW_BY_MAC, DVR_HOST_CONFIG, DVR_PEERS, DVR_SNAT_RTR},
    packet::{ArpHdr, ETH_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, be16, is_multicast, ptr_at},
    snat,
    verdict::Verdict,
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    // SAFETY: bpf_tunnel_key is plain old data; all-zero is valid.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: key lives on our stack for the call.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb as *mut __sk_buff,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if ret != 0 {
        return Err(Verdict::drop(Stat::DropNoTunnelKey));
    }
    let vni = key.tunnel_id;
    // SAFETY: the kernel filled the IPv4 member (no BPF_F_TUNINFO_IPV6 flag).
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    // SAFETY: read-only hash lookup.
    if unsafe { DVR_PEERS.get(&remote) }.is_none() {
        return Err(Verdict::drop(Stat::DropUnknownPeer));
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &mut *eth };
    let dst = eth.dst;
    if be16(eth.proto) == ETH_P_ARP {
        let arp: *const ArpHdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: bounds-checked by ptr_at.
        let (spa, sha) = unsafe { ((*arp).spa, (*arp).sha) };
        crate::vip::learn(vni, spa, &sha, 0, remote);
    }
    if is_multicast(&dst) {
        return Ok(l2::forward(ctx, vni, &dst, 0, 0));
    }
    let fdb_key = FdbKey {
        vni,
        mac: dst,
        _pad: [0; 2],
    };
    // SAFETY: read-only hash lookups of agent-written values.
    if let Some(r) = unsafe { DVR_SNAT_RTR.get(&fdb_key) } {
        let cfg = DVR_HOST_CONFIG
            .get(0)
            .ok_or(Verdict::drop(Stat::DropNotReady))?;
        return snat::from_tunnel(ctx, vni, r, cfg);
    }
    // SAFETY: as above.
    if unsafe { DVR_GW_BY_MAC.get(&fdb_key) }.is_some() {
        return Err(Verdict::drop(Stat::DropGatewayFromTunnel));
    }
    // SAFETY: as above.
    let Some(e) = (unsafe { DVR_FDB.get(&fdb_key) }) else {
        return Err(Verdict::drop(Stat::DropNoLocalPort));
    };
    if e.ifindex == 0 {
        return Err(Verdict::drop(Stat::DropNoLocalPort));
    }
    let is_ipv4 = be16(eth.proto) == ETH_P_IP;
    let src_key = MacKey {
        mac: eth.src,
        _pad: [0; 2],
    };
    // SAFETY: as above.
    if unsafe { DVR_DVR_MACS.get(&src_key) }.is_some() && e.gw_mac != [0; 6] {
        eth.src = e.gw_mac;
    }
    let ifindex = e.ifindex;
    if is_ipv4 {
        let cfg = DVR_HOST_CONFIG
            .get(0)
            .ok_or(Verdict::drop(Stat::DropNotReady))?;
        if let Some(v) = fip::from_tunnel(ctx, cfg)? {
            return Ok(v);
        }
    }
    // SAFETY: plain helper call.
    Ok(Verdict::redirect(Stat::RxTunnel, unsafe {
        bpf_redirect(ifindex, 0)
    }))
}
