//! Entry pipeline for frames from the VXLAN collect_md device (TC ingress), and for those
//! the underlay program decapsulated (`underlay`, [`pipeline_decapped`]): accept only
//! known hosts, learn VIPs from their ARP, translate for the csnat ports of the routers
//! this host is the SNAT host of (`snat` stage; IPv6 routed out by `north6`), never let a frame reach a router interface
//! from the tunnel (each host's router is local), rewrite a peer's DVR MAC to the
//! destination subnet's gateway MAC (its IPv6 subnet's for IPv6), translate hairpin traffic to a FIP served here (`fip`
//! stage), and deliver to local taps only. Maps: reads DVR_PEERS, DVR_HOST_CONFIG,
//! DVR_SNAT_RTR, DVR_GW_BY_MAC, DVR_FDB, DVR_DVR_MACS (and those of the stages).
//! Verdicts: rx_tunnel, flooded, those of the stages, drop_no_tunnel_key,
//! drop_unknown_peer, drop_gateway_from_tunnel, drop_no_local_port, drop_not_ready,
//! drop_redirect, drop_malformed.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_tunnel_key},
    helpers::bpf_skb_get_tunnel_key,
    programs::TcContext,
};
use dvr_common::{
    l2::{FdbKey, MacKey},
    stats::Stat,
};

use super::{finish, finish_deferred};
use crate::{
    base::{
        maps::{DVR_DVR_MACS, DVR_FDB, DVR_GW_BY_MAC, DVR_HOST_CONFIG, DVR_PEERS, DVR_SNAT_RTR},
        packet::{ArpHdr, ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Eth, is_multicast, ptr_at},
        verdict::{Verdict, redirect},
    },
    net::{
        flow::Flow,
        l2::{self, Ingress, Location},
    },
    stage::{fip, north6, snat, vip},
};

/// The whole program for one frame: the pipeline, its verdict counted once, then the
/// encapsulation or fragments a delivery may ask for.
#[inline(always)]
pub fn program(ctx: &TcContext) -> i32 {
    finish_deferred(ctx, pipeline(ctx.skb.skb))
}

/// The pipeline in a BPF-to-BPF call of its own, so that the deferred work's frame is not
/// stacked on its frame.
#[inline(never)]
fn pipeline(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    finish(&ctx, run(&ctx))
}

/// A frame the underlay program took the outer headers off (`entry::underlay`), with the
/// VNI `vni` and sender `remote` (host order) they named: the pipeline, as for the device.
#[inline(never)]
pub fn pipeline_decapped(skb: *mut __sk_buff, vni: u32, remote: u32) -> i32 {
    let ctx = TcContext::new(skb);
    finish(&ctx, deliver(&ctx, vni, remote))
}

/// A frame from the device: its tunnel metadata, then the pipeline.
#[inline(always)]
fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
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
    // SAFETY: the kernel filled the IPv4 member (no BPF_F_TUNINFO_IPV6 flag).
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    deliver(ctx, key.tunnel_id, remote)
}

/// A frame from host `remote` (host order) on network `vni`: accepted from known hosts
/// only, then delivered.
#[inline(always)]
fn deliver(ctx: &TcContext, vni: u32, remote: u32) -> Result<Verdict, Verdict> {
    // SAFETY: read-only hash lookup.
    if unsafe { DVR_PEERS.get(&remote) }.is_none() {
        return Err(Verdict::drop(Stat::DropUnknownPeer));
    }
    let eth = Eth::at(ctx)?;
    let (proto, dst) = (eth.proto(), eth.dst());
    if proto == ETH_P_ARP {
        let arp: *const ArpHdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: bounds-checked by ptr_at; ArpHdr is all bytes.
        let (spa, sha) = unsafe { ((*arp).spa, (*arp).sha) };
        vip::learn(vni, spa, &sha, Location::Remote(remote));
    }
    if is_multicast(&dst) {
        return Ok(l2::forward(ctx, vni, &dst, Ingress::Tunnel));
    }
    // Parsed whatever the ethertype: the stages below require what they use.
    let f = Flow::parse(ctx);
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
        // IPv6 is routed, not translated (`north6`).
        if proto == ETH_P_IPV6 {
            return north6::from_tunnel(ctx, r, cfg);
        }
        return snat::from_tunnel(ctx, &f, vni, r, cfg);
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
    let src_key = MacKey {
        mac: eth.src(),
        _pad: [0; 2],
    };
    // A dual-stack network's IPv4 and IPv6 subnets may sit on different router ports.
    let gw_mac = if proto == ETH_P_IPV6 {
        e.gw_mac6
    } else {
        e.gw_mac
    };
    // SAFETY: as above.
    if unsafe { DVR_DVR_MACS.get(&src_key) }.is_some() && gw_mac != [0; 6] {
        eth.set_src(gw_mac);
    }
    let ifindex = e.ifindex;
    if proto == ETH_P_IP {
        let cfg = DVR_HOST_CONFIG
            .get(0)
            .ok_or(Verdict::drop(Stat::DropNotReady))?;
        if let Some(v) = fip::from_tunnel(ctx, &f, cfg)? {
            return Ok(v);
        }
    }
    Ok(redirect(ifindex, Stat::RxTunnel))
}
