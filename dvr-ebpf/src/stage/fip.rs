//! Floating IPs (stage): 1:1 NAT between a VM's fixed IP and its floating IP.
//! - `inbound`: from the external network to a FIP served here (DNAT towards the VM);
//!   addresses that are tenant prefixes are dropped, anything else passes on.
//! - `snat`: from a VM with a FIP, translated to it and sent to the external gateway.
//! - `hairpin`: from a VM to a FIP of its own router (DNAT here when the FIP is served here,
//!   else routed untranslated to the serving host); `from_tunnel`: that packet arriving at
//!   the serving host; `hairpin_reply`: the reply of such a flow, whose source becomes the
//!   FIP again.
//!
//! Inbound, a packet longer than the VM network's MTU is answered from the floating IP or
//! fragmented (`mtu`); a FIP of a router with `admin_state_up: false` takes nothing.
//!
//! Calls `vip`, `ha`, `mtu`. Maps: reads DVR_LOCAL_PORTS, DVR_XDP_TAPS (`inbound_xdp`), DVR_FIPS, DVR_FIP_SRC, DVR_EXT_NEIGH, DVR_EXT_DENY;
//! reads and writes DVR_CT. Verdicts: those of `mtu`, drop_router_down, fip_dnat, fip_snat,
//! fip_hairpin, fip_icmp_error,
//! ext_pass, drop_fip_unassociated, drop_fip_not_here, drop_ext_to_fixed_ip,
//! drop_snat_standby, drop_fip_not_external, drop_vip_unknown, drop_no_neighbor,
//! drop_no_external, drop_icmp_error_no_flow, drop_ct_insert, drop_ttl_exceeded,
//! drop_redirect, drop_malformed.
use aya_ebpf::{
    helpers::bpf_redirect,
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use dvr_common::{
    config::HostConfig,
    nat::{
        CT_DNAT, CT_HAIRPIN, CT_SNAT, CtEntry, FIP_CENTRAL, FIP_LOCAL, FIP_ROUTER_DOWN,
        FIP_UNASSOCIATED, FIP_VIP, FipEntry, FipSrc, ZONE_EXTERNAL,
    },
    port::{PORT_FLAG_DOWN, PORT_FLAG_SG},
    route::IpKey,
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_EXT_DENY, DVR_EXT_NEIGH, DVR_FIP_SRC, DVR_FIPS, DVR_LOCAL_PORTS, DVR_XDP_TAPS},
        packet::Eth,
        verdict::{Verdict, redirect, settle},
    },
    net::{
        conntrack,
        flow::{Flow, Parsed},
        l2::{self, Location},
        rewrite::{self, Dir, Ttl},
        route,
    },
    stage::{ha, mtu, vip},
};

/// Where a packet to a FIP comes from, which decides its conntrack zone, the flow's kind
/// and the counter.
#[derive(Clone, Copy)]
pub enum DnatFrom {
    /// The external network: zone `ZONE_EXTERNAL`, counted as fip_dnat.
    External,
    /// A VM of the FIP's own router: zone of the FIP's network, both entries marked
    /// `CT_HAIRPIN`, counted as fip_hairpin.
    Hairpin,
}

/// External interface: a packet to `f.daddr`, which is no router external IP.
#[inline(always)]
pub fn inbound(ctx: &TcContext, f: &Flow, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    f.require(Parsed::L4)?;
    // SAFETY: read-only use of an agent-written hash value.
    let Some(fip) = (unsafe { DVR_FIPS.get(&f.daddr) }) else {
        let k = Key::new(32, f.daddr);
        if DVR_EXT_DENY.get(&k).is_some() {
            return Err(Verdict::drop(Stat::DropExtToFixedIp));
        }
        return Ok(Verdict::pass(Stat::ExtPass));
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
    if fip.flags & FIP_ROUTER_DOWN != 0 {
        return Err(Verdict::drop(Stat::DropRouterDown));
    }
    // Answered from the floating IP, the address the sender used.
    mtu::check4(ctx, fip.mtu, cfg.ext_ifindex, f.daddr)?;
    let v = dnat(ctx, f, fip, DnatFrom::External, Ttl::Decrement, cfg);
    // A VIP's packets go where its holder is now (`dnat` found it).
    let to = if fip.flags & FIP_VIP != 0 {
        vip::locate(fip.vni, fip.fixed_ip_be).map_or(0, |l| l.ifindex)
    } else {
        fip.ifindex
    };
    Ok(mtu::deliver4(ctx, v, mtu::out_ifindex(to, cfg)))
}

/// The external NIC's XDP program: a plain TCP or UDP packet `f` (`Flow::parse_simple`) to
/// a floating IP whose port is on this host and needs nothing [`inbound`] does in TC
/// beyond the translation: the FIP is local (not central, not a VIP, its router up), the
/// packet fits the port's MTU, and the port's tap takes frames redirected from XDP
/// (DVR_XDP_TAPS), which skips the tap's egress program, so only a port without security
/// groups and up. Tracked as [`inbound`] tracks it, translated and redirected to the tap:
/// `Some((XDP_REDIRECT, fip_dnat))`; `None` (untouched) for everything else, which TC
/// handles, including a flow conntrack could not take (TC drops and reports it).
#[inline(always)]
pub fn inbound_xdp(ctx: &XdpContext, f: &Flow) -> Option<(u32, Stat)> {
    // SAFETY: read-only use of agent-written hash values.
    let fip = unsafe { DVR_FIPS.get(&f.daddr) }?;
    if fip.flags & (FIP_LOCAL | FIP_CENTRAL | FIP_VIP | FIP_ROUTER_DOWN) != FIP_LOCAL
        || !ha::serves_fip(fip)
        || fip.ifindex == 0
        || (fip.mtu != 0 && f.tot_len > fip.mtu)
    {
        return None;
    }
    // SAFETY: as above.
    let port = unsafe { DVR_LOCAL_PORTS.get(&fip.ifindex) }?;
    // SAFETY: as above.
    if port.flags & (PORT_FLAG_SG | PORT_FLAG_DOWN) != 0
        || unsafe { DVR_XDP_TAPS.get(&fip.ifindex) }.is_none()
    {
        return None;
    }
    let eth = Eth::at(ctx).ok()?;
    track_or_create(f, fip, ZONE_EXTERNAL, 0).ok()?;
    if !rewrite::dnat_simple(ctx, f, fip.fixed_ip_be) {
        return None;
    }
    eth.set_src(fip.gw_mac);
    eth.set_dst(fip.port_mac);
    // SAFETY: a plain helper call; XDP_REDIRECT unless flags are invalid.
    Some((
        unsafe { bpf_redirect(fip.ifindex, 0) } as u32,
        Stat::FipDnat,
    ))
}

/// Translate a packet to floating IP `fip` into its fixed IP and deliver it to the VM.
/// `ttl` is `Keep` when the sending host already routed the packet (hairpin through the
/// tunnel), so the TTL is not decremented twice.
#[inline(always)]
pub fn dnat(
    ctx: &TcContext,
    f: &Flow,
    fip: &FipEntry,
    from: DnatFrom,
    ttl: Ttl,
    cfg: &HostConfig,
) -> Verdict {
    settle(dnat_inner(ctx, f, fip, from, ttl, cfg))
}

#[inline(always)]
fn dnat_inner(
    ctx: &TcContext,
    f: &Flow,
    fip: &FipEntry,
    from: DnatFrom,
    ttl: Ttl,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let (zone, hairpin, mut stat) = match from {
        DnatFrom::External => (ZONE_EXTERNAL, 0, Stat::FipDnat),
        DnatFrom::Hairpin => (fip.vni, CT_HAIRPIN, Stat::FipHairpin),
    };
    // A VIP's holder is whoever last announced it; nothing is translated before that is
    // known. (Plain values, not an Option: a half-initialised Option spills undefined
    // registers, which the verifier rejects.)
    let (mac, ifindex, tunnel_ip_host) = if fip.flags & FIP_VIP != 0 {
        let l = vip::locate(fip.vni, fip.fixed_ip_be).ok_or(Verdict::drop(Stat::DropVipUnknown))?;
        (l.mac, l.ifindex, l.tunnel_ip_host)
    } else {
        (fip.port_mac, fip.ifindex, fip.tunnel_ip_host)
    };
    rewrite::ttl(ctx, ttl)?;
    if f.is_icmp_error() {
        rewrite::icmp_error(ctx, f, zone, Dir::Dst)?;
        stat = Stat::FipIcmpError;
    } else {
        if !f.later_fragment {
            track_or_create(f, fip, zone, hairpin)?;
        }
        rewrite::rewrite_addr(ctx, f, Dir::Dst, fip.fixed_ip_be)?;
    }
    l2::deliver_routed(
        ctx,
        mac,
        fip.gw_mac,
        Location::of(ifindex, tunnel_ip_host),
        fip.vni,
        cfg,
        stat,
    )
}

/// Account the packet to its flow, creating both directions for a new one. `hairpin` is
/// `CT_HAIRPIN` or 0.
#[inline(always)]
fn track_or_create(f: &Flow, fip: &FipEntry, zone: u32, hairpin: u8) -> Result<(), Verdict> {
    let k = conntrack::flow_key(zone, f);
    let fresh = match conntrack::track(&k, f) {
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
        let pe = CtEntry {
            nat_ip_be: f.daddr,
            peer_zone: zone,
            kind: CT_SNAT | hairpin,
            ..e
        };
        conntrack::replace(&k, &e, &pe, f)?;
    }
    Ok(())
}

/// Translate a packet from a VM with a FIP (`src`, seen in zone `vni`) to the FIP and send
/// it to the external gateway. `ttl` is `Keep` when the VM's host already routed it (a VM
/// of a dvr_no_external host whose FIP is served on this SNAT host).
#[inline(always)]
pub fn snat(
    ctx: &TcContext,
    f: &Flow,
    vni: u32,
    src: &FipSrc,
    cfg: &HostConfig,
    ttl: Ttl,
) -> Result<Verdict, Verdict> {
    if cfg.ext_ifindex == 0 {
        return Err(Verdict::drop(Stat::DropNoExternal));
    }
    ha::check_fip_src(src)?;
    // SAFETY: read-only use of a hash value; the datapath writes it whole on ARP.
    let next_hop = match unsafe { DVR_EXT_NEIGH.get(&src.ext_gw_ip_be) } {
        Some(n) if n.learned != 0 => n.mac,
        _ => return Err(Verdict::drop(Stat::DropNoNeighbor)),
    };
    rewrite::ttl(ctx, ttl)?;
    let mut stat = Stat::FipSnat;
    if f.is_icmp_error() {
        rewrite::icmp_error(ctx, f, vni, Dir::Src)?;
        stat = Stat::FipIcmpError;
    } else {
        if !f.later_fragment {
            let k = conntrack::flow_key(vni, f);
            let fresh = match conntrack::track(&k, f) {
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
                let pe = CtEntry {
                    nat_ip_be: f.saddr,
                    peer_zone: vni,
                    kind: CT_DNAT,
                    ..e
                };
                conntrack::replace(&k, &e, &pe, f)?;
            }
        }
        rewrite::rewrite_addr(ctx, f, Dir::Src, src.fip_be)?;
    }
    // Re-derived after the helpers above.
    let eth = Eth::at(ctx)?;
    eth.set_src(cfg.ext_mac);
    eth.set_dst(next_hop);
    Ok(redirect(cfg.ext_ifindex, stat))
}

/// To a FIP of the VM's own router: translate here if it is served here, else route the
/// packet untranslated to the serving host, whose tunnel ingress translates it (so the
/// flow's state lives where the FIP is, and the reply is translated back there).
#[inline(always)]
pub fn hairpin(
    ctx: &TcContext,
    f: &Flow,
    fip: &FipEntry,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    if fip.flags & FIP_LOCAL != 0 {
        return Ok(dnat(ctx, f, fip, DnatFrom::Hairpin, Ttl::Decrement, cfg));
    }
    rewrite::ttl_decrement(ctx)?;
    l2::routed_to_host(
        ctx,
        fip.port_mac,
        fip.tunnel_ip_host,
        fip.vni,
        cfg,
        Stat::FipHairpin,
    )
}

/// A packet from a local VM (on network `vni`) with a FIP: when it answers a hairpin flow
/// that reached it through its FIP, its source becomes the FIP again. `ttl` is `Decrement`
/// for a reply that goes straight back at L2 (same subnet): it still crosses the router
/// logically; `Keep` when the route stage already decremented it.
#[inline(always)]
pub fn hairpin_reply(ctx: &TcContext, f: &Flow, vni: u32, ttl: Ttl) -> Result<(), Verdict> {
    // SAFETY: read-only hash lookup.
    if unsafe {
        DVR_FIP_SRC.get(&IpKey {
            vni,
            ip_be: f.saddr,
        })
    }
    .is_none()
    {
        return Ok(());
    }
    f.require(Parsed::L4)?;
    if f.later_fragment {
        return Ok(());
    }
    match conntrack::track(&conntrack::flow_key(vni, f), f) {
        Some(e) if e.kind == CT_SNAT | CT_HAIRPIN => {
            rewrite::ttl(ctx, ttl)?;
            rewrite::rewrite_addr(ctx, f, Dir::Src, e.nat_ip_be)
        }
        _ => Ok(()),
    }
}

/// Tunnel ingress: a packet to a FIP (None when `f.daddr` is none). Only hairpin traffic
/// from inside the FIP's router may arrive that way; it is translated here, where the FIP
/// is served.
#[inline(always)]
pub fn from_tunnel(
    ctx: &TcContext,
    f: &Flow,
    cfg: &HostConfig,
) -> Result<Option<Verdict>, Verdict> {
    f.require(Parsed::L4)?;
    // SAFETY: read-only use of an agent-written hash value.
    let Some(fip) = (unsafe { DVR_FIPS.get(&f.daddr) }) else {
        return Ok(None);
    };
    let inside = route::in_router(fip.router_id, f.saddr);
    if fip.flags & FIP_LOCAL == 0 || !inside {
        return Err(Verdict::drop(Stat::DropFipNotExternal));
    }
    Ok(Some(dnat(ctx, f, fip, DnatFrom::Hairpin, Ttl::Keep, cfg)))
}
