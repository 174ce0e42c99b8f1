//! Centralized SNAT (stage). On a compute host (`steer`): a router's external traffic from
//! VMs without a floating IP goes over the tunnel to the router's SNAT host (to the csnat
//! port's MAC). On the SNAT host (`from_tunnel`, or `steer` when this host is it):
//! port-address translation to the router's gateway IP, out of the external interface;
//! replies (`reply`) translated back and sent straight to the VM's host. An HA router
//! (`SNAT_HA`) is served only while its fence is live (see `ha`). Both ways a packet is
//! held to the MTU of the network it goes into (`mtu`): the external network's before it
//! is steered, the VM's network's before a reply is translated.
//!
//! Calls `fip` (central FIPs of VMs on dvr_no_external hosts), `ha`, `mtu`. Maps: reads
//! DVR_SNAT_STEER, DVR_SNAT_RTR, DVR_FIP_SRC, DVR_ENDPOINTS, DVR_ROUTES, DVR_EXT_NEIGH;
//! reads and writes DVR_CT, DVR_SNAT_EXH. Verdicts: snat_steered, snat_out, snat_in,
//! those of `fip::snat`, drop_snat_disabled, drop_snat_exhausted, drop_snat_no_flow,
//! drop_snat_fragment, drop_snat_standby, drop_no_neighbor, drop_no_external,
//! drop_no_route, drop_no_endpoint, drop_icmp_error_no_flow, drop_ct_insert,
//! drop_ttl_exceeded, drop_redirect, drop_malformed, those of `mtu`.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, programs::TcContext};
use dvr_common::{
    config::HostConfig,
    l2::FdbKey,
    nat::{CT_DNAT, CT_PAT, CT_SNAT, CtEntry, CtKey, ZONE_EXTERNAL},
    port::LocalPort,
    route::{IpKey, RouterIface},
    snat::{
        SNAT_ENABLED, SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PROBES, SnatRouter, SnatSteer, probe_port,
    },
    stats::Stat,
};

use crate::{
    base::{
        clock,
        maps::{
            DVR_CT, DVR_ENDPOINTS, DVR_EXT_NEIGH, DVR_FIP_SRC, DVR_SNAT_EXH, DVR_SNAT_RTR,
            DVR_SNAT_STEER,
        },
        packet::{Eth, IPPROTO_ICMP},
        verdict::{Verdict, redirect},
    },
    net::{
        conntrack,
        flow::{Flow, Parsed},
        l2,
        rewrite::{self, Dir, Ttl},
        route,
    },
    stage::{fip, ha, mtu},
};

/// Compute host: a VM without a FIP sends outside its router's subnets.
#[inline(always)]
pub fn steer(
    ctx: &TcContext,
    f: &Flow,
    port: &LocalPort,
    gw: &RouterIface,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    let key = FdbKey {
        vni: port.vni,
        mac: gw.mac,
        _pad: [0; 2],
    };
    // SAFETY: read-only use of agent-written hash values.
    let Some(st) = (unsafe { DVR_SNAT_STEER.get(&key) }) else {
        return Err(Verdict::drop(Stat::DropNoRoute));
    };
    if st.flags & SNAT_ENABLED == 0 {
        return Err(Verdict::drop(Stat::DropSnatDisabled));
    }
    // SAFETY: the context pointer is valid for the program's run.
    let tap = unsafe { (*ctx.skb.skb).ifindex };
    mtu::check4(ctx, st.ext_mtu, tap, gw.ip_be)?;
    let v = steer_to(ctx, f, port, st, cfg)?;
    // Out of the external interface here, else into the tunnel to the SNAT host.
    let out = if st.tunnel_ip_host == 0 {
        cfg.ext_ifindex
    } else {
        cfg.tunnel_ifindex
    };
    Ok(mtu::deliver4(ctx, v, out))
}

/// Steer to the SNAT host of `st`, or translate here when this host is it.
#[inline(always)]
fn steer_to(
    ctx: &TcContext,
    f: &Flow,
    port: &LocalPort,
    st: &SnatSteer,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    if st.tunnel_ip_host == 0 {
        // This host is the SNAT host.
        let rkey = FdbKey {
            vni: port.vni,
            mac: st.csnat_mac,
            _pad: [0; 2],
        };
        // SAFETY: as above.
        let Some(r) = (unsafe { DVR_SNAT_RTR.get(&rkey) }) else {
            return Err(Verdict::drop(Stat::DropNoRoute));
        };
        ha::check_router(r)?;
        return out(ctx, f, port.vni, r, cfg, Ttl::Decrement);
    }
    rewrite::ttl_decrement(ctx)?;
    l2::routed_to_host(
        ctx,
        st.csnat_mac,
        st.tunnel_ip_host,
        port.vni,
        cfg,
        Stat::SnatSteered,
    )
}

/// SNAT host: a frame from the tunnel on network `vni` addressed to a csnat port of router
/// `r`.
#[inline(always)]
pub fn from_tunnel(
    ctx: &TcContext,
    f: &Flow,
    vni: u32,
    r: &SnatRouter,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    // First: a standby translates nothing, also not the central FIPs of the router.
    ha::check_router(r)?;
    f.require(Parsed::L4)?;
    // Only sources inside the router's subnets may be translated for it.
    if !route::in_router(r.router_id, f.saddr) {
        return Err(Verdict::drop(Stat::DropNoRoute));
    }
    // A VM of a dvr_no_external host with a floating IP served centrally here.
    // SAFETY: read-only use of an agent-written hash value.
    if let Some(src) = unsafe {
        DVR_FIP_SRC.get(&IpKey {
            vni,
            ip_be: f.saddr,
        })
    } {
        return fip::snat(ctx, f, vni, src, cfg, Ttl::Keep);
    }
    if r.flags & SNAT_ENABLED == 0 {
        return Err(Verdict::drop(Stat::DropSnatDisabled));
    }
    out(ctx, f, vni, r, cfg, Ttl::Keep)
}

/// Translate `f` (seen in zone `vni`) to the router's external IP and a free port, and send
/// it to the external gateway. `ttl` is `Decrement` when the packet was not yet routed.
#[inline(always)]
fn out(
    ctx: &TcContext,
    f: &Flow,
    vni: u32,
    r: &SnatRouter,
    cfg: &HostConfig,
    ttl: Ttl,
) -> Result<Verdict, Verdict> {
    if cfg.ext_ifindex == 0 {
        return Err(Verdict::drop(Stat::DropNoExternal));
    }
    if f.later_fragment {
        return Err(Verdict::drop(Stat::DropSnatFragment));
    }
    // SAFETY: read-only use of a hash value; the datapath writes it whole on ARP.
    let next_hop = match unsafe { DVR_EXT_NEIGH.get(&r.ext_gw_ip_be) } {
        Some(n) if n.learned != 0 => n.mac,
        _ => return Err(Verdict::drop(Stat::DropNoNeighbor)),
    };
    rewrite::ttl(ctx, ttl)?;
    let k = conntrack::flow_key(vni, f);
    let nat_port = match conntrack::track(&k, f) {
        Some(e) if e.kind == CT_SNAT | CT_PAT && e.nat_ip_be == r.ext_ip_be => e.nat_port_be,
        _ => allocate(&k, f, vni, r, cfg)?,
    };
    rewrite::rewrite_port(ctx, f, Dir::Src, nat_port)?;
    rewrite::rewrite_addr(ctx, f, Dir::Src, r.ext_ip_be)?;
    // Re-derived after the helpers above.
    let eth = Eth::at(ctx)?;
    eth.set_src(cfg.ext_mac);
    eth.set_dst(next_hop);
    Ok(redirect(cfg.ext_ifindex, Stat::SnatOut))
}

/// Find a free external port for a new flow: the original port when it is in range and
/// free, else a pseudo-random walk of `SNAT_PROBES` candidates. A port is taken by
/// inserting the reply direction with BPF_NOEXIST: a live mapping is never stolen, and of
/// two CPUs racing for a port exactly one wins. Then the forward direction goes in.
#[inline(always)]
fn allocate(
    k: &CtKey,
    f: &Flow,
    vni: u32,
    r: &SnatRouter,
    cfg: &HostConfig,
) -> Result<u16, Verdict> {
    let (min, max) = if cfg.snat_port_min != 0 && cfg.snat_port_max >= cfg.snat_port_min {
        (cfg.snat_port_min, cfg.snat_port_max)
    } else {
        (SNAT_PORT_MIN, SNAT_PORT_MAX)
    };
    let orig = u16::from_be(f.sport);
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() };
    let t = clock::coarse_ns();
    let reply_entry = CtEntry {
        nat_ip_be: f.saddr,
        fip_be: r.ext_ip_be,
        fixed_be: f.saddr,
        peer_zone: vni,
        kind: CT_DNAT | CT_PAT,
        nat_port_be: f.sport,
        created_ns: t,
        last_seen_ns: t,
        ..Default::default()
    };
    for i in 0..SNAT_PROBES {
        let host_port = if i == 0 && orig >= min && orig <= max {
            orig
        } else {
            probe_port(min, max, start, i)
        };
        let port = host_port.to_be();
        let (rs, rd) = if f.proto == IPPROTO_ICMP {
            (port, port)
        } else {
            (f.dport, port)
        };
        let rk = conntrack::key(ZONE_EXTERNAL, f.daddr, r.ext_ip_be, rs, rd, f.proto);
        if DVR_CT.insert(&rk, &reply_entry, BPF_NOEXIST as u64).is_ok() {
            let fwd = CtEntry {
                nat_ip_be: r.ext_ip_be,
                fip_be: r.ext_ip_be,
                fixed_be: f.saddr,
                peer_zone: ZONE_EXTERNAL,
                kind: CT_SNAT | CT_PAT,
                tcp_flags: f.tcp_flags,
                nat_port_be: port,
                created_ns: t,
                last_seen_ns: t,
                packets: 1,
                bytes: f.tot_len as u64,
                ..Default::default()
            };
            if DVR_CT.insert(k, &fwd, 0).is_err() {
                let _ = DVR_CT.remove(&rk);
                return Err(Verdict::drop(Stat::DropCtInsert));
            }
            return Ok(port);
        }
    }
    match DVR_SNAT_EXH.get_ptr_mut(&r.router_id) {
        // SAFETY: map value pointer from a successful lookup.
        Some(c) => unsafe { *c += 1 },
        None => {
            let _ = DVR_SNAT_EXH.insert(&r.router_id, &1, 0);
        }
    }
    Err(Verdict::drop(Stat::DropSnatExhausted))
}

/// SNAT host, external interface: a packet to router external IP `r`: the reply of a
/// translated flow goes back to the VM; anything else is dropped.
#[inline(always)]
pub fn reply(
    ctx: &TcContext,
    f: &Flow,
    r: &SnatRouter,
    cfg: &HostConfig,
) -> Result<Verdict, Verdict> {
    ha::check_router(r)?;
    f.require(Parsed::L4)?;
    if f.later_fragment {
        return Err(Verdict::drop(Stat::DropSnatFragment));
    }
    let e = if f.is_icmp_error() {
        // An error quoting a packet of ours is not measured (MTU 0 fits all).
        mtu::check4(ctx, 0, 0, 0)?;
        rewrite::icmp_error(ctx, f, ZONE_EXTERNAL, Dir::Dst)?
    } else {
        let e = match conntrack::track(&conntrack::flow_key(ZONE_EXTERNAL, f), f) {
            Some(e) if e.kind == CT_DNAT | CT_PAT => e,
            _ => return Err(Verdict::drop(Stat::DropSnatNoFlow)),
        };
        // Measured before the translation, so that an ICMP error quotes what the sender
        // sent (to the router's external IP, which answers it).
        let to_mtu = route::lookup(r.router_id, e.nat_ip_be).map_or(0, |to| to.mtu);
        mtu::check4(ctx, to_mtu, cfg.ext_ifindex, f.daddr)?;
        rewrite::rewrite_port(ctx, f, Dir::Dst, e.nat_port_be)?;
        rewrite::rewrite_addr(ctx, f, Dir::Dst, e.nat_ip_be)?;
        e
    };
    rewrite::ttl_decrement(ctx)?;
    let vni = e.peer_zone;
    // SAFETY: read-only use of agent-written hash values.
    let Some(ep) = (unsafe {
        DVR_ENDPOINTS.get(&IpKey {
            vni,
            ip_be: e.nat_ip_be,
        })
    }) else {
        return Err(Verdict::drop(Stat::DropNoEndpoint));
    };
    let Some(route) = route::lookup(r.router_id, e.nat_ip_be) else {
        return Err(Verdict::drop(Stat::DropNoRoute));
    };
    let v = l2::deliver_endpoint(ctx, ep, route.gw_mac, vni, cfg, Stat::SnatIn)?;
    Ok(mtu::deliver4(ctx, v, mtu::out_ifindex(ep.ifindex, cfg)))
}
