//! Entry pipeline for frames from the external network (TC ingress on the host's external
//! interface): proxy ARP for the floating IPs this host serves (and its own external
//! address), learning the external gateway's MAC from ARP, and DNAT of traffic to a served
//! floating IP towards the VM. Everything else is the host's own business and passes on.
//! The external IP and central FIPs of an HA router are answered and translated only while
//! its fence is live (see `ha`); otherwise ARP for them passes on unanswered and packets to
//! them are dropped. Reads DVR_HOST_CONFIG, DVR_FIPS, DVR_SNAT_IPS, DVR_EXT_DENY,
//! DVR_HA_FENCE; writes DVR_EXT_NEIGH values and DVR_CT.
//! Verdicts: ext_arp_reply, ext_neigh_learned, ext_pass, fip_dnat, fip_icmp_error,
//! drop_fip_unassociated, drop_fip_not_here, drop_ext_to_fixed_ip, drop_snat_standby,
//! drop_*.
use aya_ebpf::{
    bindings::tcx_action_base::TCX_NEXT, helpers::bpf_redirect, maps::lpm_trie::Key,
    programs::TcContext,
};
use dvr_common::{
    config::HostConfig,
    nat::{
        CT_DNAT, CT_SNAT, CtEntry, FIP_CENTRAL, FIP_LOCAL, FIP_UNASSOCIATED, FIP_VIP, FipEntry,
        ZONE_EXTERNAL,
    },
    stats::Stat,
};

use crate::{
    flow, ha,
    maps::{DVR_EXT_DENY, DVR_EXT_NEIGH, DVR_FIPS, DVR_HOST_CONFIG, DVR_SNAT_IPS},
    nat,
    packet::{ArpHdr, ETH_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, Ipv4Hdr, be16, ptr_at},
    verdict::Verdict,
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

#[inline(always)]
fn pass(stat: Stat) -> Verdict {
    Verdict {
        stat,
        action: TCX_NEXT,
    }
}

#[inline(always)]
pub fn run(ctx: &TcContext) -> Result<Verdict, Verdict> {
    let cfg = DVR_HOST_CONFIG
        .get(0)
        .ok_or(Verdict::drop(Stat::DropNotReady))?;
    if cfg.ready == 0 {
        return Err(pass(Stat::ExtPass));
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    let proto = unsafe { be16((*eth).proto) };
    match proto {
        ETH_P_ARP => arp(ctx, cfg),
        ETH_P_IP => ipv4(ctx, cfg),
        _ => Ok(pass(Stat::ExtPass)),
    }
}

/// Learn the gateway's MAC from any ARP it sends; answer requests for our addresses.
#[inline(always)]
fn arp(ctx: &TcContext, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let arp: *mut ArpHdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if be16(arp.htype) != 1 || be16(arp.ptype) != 0x0800 || arp.hlen != 6 || arp.plen != 4 {
        return Ok(pass(Stat::ExtPass));
    }
    let spa = u32::from_ne_bytes(arp.spa);
    let mut learned = false;
    // Only addresses the agent listed (gateways) are learned: no cache for arbitrary senders.
    if let Some(n) = DVR_EXT_NEIGH.get_ptr_mut(&spa) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            (*n).mac = arp.sha;
            (*n).learned = 1;
            (*n).seen_ns = nat::now();
        }
        learned = true;
    }
    let tpa = u32::from_ne_bytes(arp.tpa);
    if be16(arp.oper) == ARP_REQUEST && spa != tpa {
        let ours = tpa == cfg.fg_ip_be && tpa != 0
            // SAFETY: read-only use of agent-written hash values.
            || matches!(unsafe { DVR_FIPS.get(&tpa) },
                Some(f) if f.flags & FIP_LOCAL != 0 || f.flags & FIP_CENTRAL != 0 && ha::serves_fip(f))
            // SAFETY: as above.
            || matches!(unsafe { DVR_SNAT_IPS.get(&tpa) }, Some(r) if ha::serves_router(r));
        if ours {
            eth.dst = eth.src;
            eth.src = cfg.ext_mac;
            arp.oper = ARP_REPLY.to_be_bytes();
            arp.tha = arp.sha;
            arp.tpa = arp.spa;
            arp.sha = cfg.ext_mac;
            arp.spa = tpa.to_ne_bytes();
            // SAFETY: plain helper call; out of the interface the request came in on.
            let ret = unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) };
            return Ok(Verdict::redirect(Stat::ExtArpReply, ret));
        }
    }
    Ok(pass(if learned {
        Stat::ExtNeighLearned
    } else {
        Stat::ExtPass
    }))
}

#[inline(always)]
fn ipv4(ctx: &TcContext, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at.
    let daddr = u32::from_ne_bytes(unsafe { (*ip).daddr });
    // SAFETY: read-only use of an agent-written hash value.
    if let Some(r) = unsafe { DVR_SNAT_IPS.get(&daddr) } {
        return crate::snat::reply(ctx, r, cfg);
    }
    let f = flow::parse(ctx)?;
    // SAFETY: read-only use of an agent-written hash value.
    let Some(fip) = (unsafe { DVR_FIPS.get(&f.daddr) }) else {
        let k = Key::new(32, f.daddr);
        if DVR_EXT_DENY.get(&k).is_some() {
            return Err(Verdict::drop(Stat::DropExtToFixedIp));
        }
        return Ok(pass(Stat::ExtPass));
    };
    if fip.flags & (FIP_LOCAL | FIP_CENTRAL) == 0 {
        return Err(Verdict::drop(if fip.flags & FIP_UNASSOCIATED != 0 {
            Stat::DropFipUnassociated
        } else {
            Stat::DropFipNotHere
        }));
    }
    if !ha::serves_fip(fip) {
        return Err(Verdict::drop(Stat::DropSnatStandby));
    }
    Ok(dnat(
        ctx,
        &f,
        fip,
        ZONE_EXTERNAL,
        0,
        true,
        cfg,
        Stat::FipDnat,
    ))
}

/// Translate a packet to floating IP `fip` into its fixed IP and deliver it to the VM.
/// `zone` is where the packet was seen; `hairpin` (CT_HAIRPIN or 0) marks flows between
/// VMs of one router; `route` is false when the sending host already routed the packet
/// (hairpin through the tunnel), so the TTL is not decremented twice.
#[inline(always)]
pub fn dnat(
    ctx: &TcContext,
    f: &flow::Flow,
    fip: &FipEntry,
    zone: u32,
    hairpin: u8,
    route: bool,
    cfg: &HostConfig,
    stat: Stat,
) -> Verdict {
    crate::verdict::settle(dnat_inner(ctx, f, fip, zone, hairpin, route, cfg, stat))
}

#[inline(always)]
fn dnat_inner(
    ctx: &TcContext,
    f: &flow::Flow,
    fip: &FipEntry,
    zone: u32,
    hairpin: u8,
    route: bool,
    cfg: &HostConfig,
    stat: Stat,
) -> Result<Verdict, Verdict> {
    // A VIP's holder is whoever last announced it; nothing is translated before that is
    // known. (Plain values, not an Option: a half-initialised Option spills undefined
    // registers, which the verifier rejects.)
    let (mac, ifindex, tunnel_ip_host) = if fip.flags & FIP_VIP != 0 {
        let l = crate::vip::locate(fip.vni, fip.fixed_ip_be)
            .ok_or(Verdict::drop(Stat::DropVipUnknown))?;
        (l.mac, l.ifindex, l.tunnel_ip_host)
    } else {
        (fip.port_mac, fip.ifindex, fip.tunnel_ip_host)
    };
    if route {
        nat::ttl_decrement(ctx)?;
    }
    let mut stat = stat;
    if f.is_icmp_error() {
        nat::icmp_error(ctx, f, zone, true)?;
        stat = Stat::FipIcmpError;
    } else {
        if !f.later_fragment {
            track_or_create(f, fip, zone, hairpin)?;
        }
        nat::rewrite_addr(ctx, f, false, fip.fixed_ip_be)?;
    }
    crate::l2::deliver_routed(
        ctx,
        mac,
        fip.gw_mac,
        ifindex,
        tunnel_ip_host,
        fip.vni,
        cfg,
        stat,
    )
}

/// Account the packet to its flow, creating both directions for a new one.
#[inline(always)]
fn track_or_create(f: &flow::Flow, fip: &FipEntry, zone: u32, hairpin: u8) -> Result<(), Verdict> {
    let k = nat::flow_key(zone, f);
    let fresh = match nat::track(&k, f) {
        // A flow of this FIP mapping: keep it. Anything else (a stale entry from a
        // previous mapping the agent has not purged yet) is replaced.
        Some(e) => !(e.fip_be == f.daddr && e.fixed_be == fip.fixed_ip_be && e.kind & CT_DNAT != 0),
        None => true,
    };
    if fresh {
        let e = CtEntry {
            nat_ip_be: fip.fixed_ip_be,
            fip_be: f.daddr,
            fixed_be: fip.fixed_ip_be,
            peer_zone: fip.vni,
            kind: CT_DNAT | hairpin,
            tcp_flags: f.tcp_flags,
            ..Default::default()
        };
        let peer = k.peer(&e);
        let pe = CtEntry {
            nat_ip_be: f.daddr,
            peer_zone: zone,
            kind: CT_SNAT | hairpin,
            ..e
        };
        let _ = crate::maps::DVR_CT.remove(&k);
        nat::create(&k, &e, &peer, &pe, f)?;
    }
    Ok(())
}
