//! Floating IP stage on a tap, for routed packets whose destination is outside the router's
//! subnets: hairpin to a FIP of the same router (DNAT here when the FIP is served here,
//! else routed to the serving host untranslated), or SNAT to the VM's own FIP and out of
//! the external interface to the external gateway. Also the reply direction of hairpin
//! flows (a VM with a FIP answering through it). Reads DVR_FIPS, DVR_FIP_SRC,
//! DVR_EXT_NEIGH; writes DVR_CT.
//! Verdicts: fip_snat, fip_hairpin, fip_icmp_error, drop_fip_spoof, drop_no_neighbor,
//! drop_no_external, drop_no_route, drop_*.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use dvr_common::{
    config::HostConfig,
    nat::{
        CT_DNAT, CT_HAIRPIN, CT_SNAT, CtEntry, FIP_LOCAL, FIP_REMOTE, FipEntry, FipSrc,
        ZONE_EXTERNAL,
    },
    port::LocalPort,
    route::{IpKey, RouterIface},
    stats::Stat,
};

use crate::{
    ext, flow, l2,
    maps::{DVR_EXT_NEIGH, DVR_FIP_SRC, DVR_FIPS},
    nat,
    packet::{EthHdr, ptr_at},
    verdict::Verdict,
};

/// A packet from a local VM to a destination outside its router's subnets.
#[inline(always)]
pub fn outbound(
    ctx: &TcContext,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let f = flow::parse(ctx)?;
    // SAFETY: read-only use of agent-written hash values.
    if let Some(fip) = unsafe { DVR_FIPS.get(&f.daddr) } {
        if fip.router_id == gw.router_id && fip.flags & (FIP_LOCAL | FIP_REMOTE) != 0 {
            return hairpin(ctx, &f, fip, cfg);
        }
    }
    // SAFETY: as above.
    if unsafe { DVR_FIPS.get(&f.saddr) }.is_some() {
        return Err(Verdict::drop(Stat::DropFipSpoof));
    }
    let src_key = IpKey {
        vni: port.vni,
        ip_be: f.saddr,
    };
    // SAFETY: as above.
    let Some(src) = (unsafe { DVR_FIP_SRC.get(&src_key) }) else {
        return crate::snat::steer(ctx, &f, port, gw, cfg);
    };
    snat(ctx, &f, port.vni, src, cfg, true)
}

/// Translate a packet from a VM with a FIP to the FIP and send it to the external gateway.
/// `route`: decrement the TTL here (false when the VM's host already routed it: a VM of a
/// dvr_no_external host whose FIP is served on this SNAT host).
#[inline(always)]
pub fn snat(
    ctx: &TcContext,
    f: &flow::Flow,
    vni: u32,
    src: &FipSrc,
    cfg: &HostConfig,
    route: bool,
) -> Result<Verdict, Verdict> {
    if cfg.ext_ifindex == 0 {
        return Err(Verdict::drop(Stat::DropNoExternal));
    }
    crate::ha::check_fip_src(src)?;
    // SAFETY: read-only use of a hash value; the datapath writes it whole on ARP.
    let next_hop = match unsafe { DVR_EXT_NEIGH.get(&src.ext_gw_ip_be) } {
        Some(n) if n.learned != 0 => n.mac,
        _ => return Err(Verdict::drop(Stat::DropNoNeighbor)),
    };
    if route {
        nat::ttl_decrement(ctx)?;
    }
    let mut stat = Stat::FipSnat;
    if f.is_icmp_error() {
        nat::icmp_error(ctx, f, vni, false)?;
        stat = Stat::FipIcmpError;
    } else {
        if !f.later_fragment {
            let k = nat::flow_key(vni, f);
            let fresh = match nat::track(&k, f) {
                Some(e) => {
                    !(e.fip_be == src.fip_be && e.fixed_be == f.saddr && e.kind & CT_SNAT != 0)
                }
                None => true,
            };
            if fresh {
                let e = CtEntry {
                    nat_ip_be: src.fip_be,
                    fip_be: src.fip_be,
                    fixed_be: f.saddr,
                    peer_zone: ZONE_EXTERNAL,
                    kind: CT_SNAT,
                    tcp_flags: f.tcp_flags,
                    ..Default::default()
                };
                let peer = k.peer(&e);
                let pe = CtEntry {
                    nat_ip_be: f.saddr,
                    peer_zone: vni,
                    kind: CT_DNAT,
                    ..e
                };
                let _ = crate::maps::DVR_CT.remove(&k);
                nat::create(&k, &e, &peer, &pe, f)?;
            }
        }
        nat::rewrite_addr(ctx, f, true, src.fip_be)?;
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: re-derived after the helpers above; bounds-checked.
    unsafe {
        (*eth).src = cfg.ext_mac;
        (*eth).dst = next_hop;
    }
    // SAFETY: plain helper call.
    Ok(Verdict::redirect(stat, unsafe {
        bpf_redirect(cfg.ext_ifindex, 0)
    }))
}

/// To a FIP of the same router: translate here if it is served here, else route the packet
/// untranslated to the serving host, whose tunnel ingress translates it (so the flow's
/// state lives where the FIP is, and the reply is translated back there).
#[inline(always)]
fn hairpin(
    ctx: &TcContext,
    f: &flow::Flow,
    fip: &FipEntry,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    if fip.flags & FIP_LOCAL != 0 {
        return Ok(ext::dnat(
            ctx,
            f,
            fip,
            fip.vni,
            CT_HAIRPIN,
            true,
            cfg,
            Stat::FipHairpin,
        ));
    }
    nat::ttl_decrement(ctx)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: re-derived after the TTL update; bounds-checked.
    unsafe {
        (*eth).src = cfg.dvr_mac;
        (*eth).dst = fip.port_mac;
    }
    Ok(l2::to_port(
        ctx,
        0,
        fip.tunnel_ip_host,
        fip.vni,
        cfg.tunnel_ifindex,
        Stat::FipHairpin,
        Stat::FipHairpin,
    ))
}

/// A packet from a local VM with a FIP: when it answers a hairpin flow that reached it
/// through its FIP, its source becomes the FIP again. `routed` is false for a reply that
/// goes straight back at L2 (same subnet): it still crosses the router logically, so its
/// TTL is decremented here.
#[inline(always)]
pub fn hairpin_reply(ctx: &TcContext, vni: u32, saddr: u32, routed: bool) -> Result<(), Verdict> {
    // SAFETY: read-only hash lookup.
    if unsafe { DVR_FIP_SRC.get(&IpKey { vni, ip_be: saddr }) }.is_none() {
        return Ok(());
    }
    let f = flow::parse(ctx)?;
    if f.later_fragment {
        return Ok(());
    }
    match nat::track(&nat::flow_key(vni, &f), &f) {
        Some(e) if e.kind == CT_SNAT | CT_HAIRPIN => {
            if !routed {
                nat::ttl_decrement(ctx)?;
            }
            nat::rewrite_addr(ctx, &f, true, e.nat_ip_be)
        }
        _ => Ok(()),
    }
}

/// A packet from the tunnel to a FIP: only hairpin traffic from inside the FIP's router may
/// arrive that way; it is translated here, where the FIP is served.
#[inline(always)]
pub fn from_tunnel(ctx: &TcContext, cfg: &HostConfig) -> Result<Option<Verdict>, Verdict> {
    let f = flow::parse(ctx)?;
    // SAFETY: read-only use of an agent-written hash value.
    let Some(fip) = (unsafe { DVR_FIPS.get(&f.daddr) }) else {
        return Ok(None);
    };
    let inside = crate::route::in_router(fip.router_id, f.saddr);
    if fip.flags & FIP_LOCAL == 0 || !inside {
        return Err(Verdict::drop(Stat::DropFipNotExternal));
    }
    Ok(Some(ext::dnat(
        ctx,
        &f,
        fip,
        fip.vni,
        CT_HAIRPIN,
        false,
        cfg,
        Stat::FipHairpin,
    )))
}
