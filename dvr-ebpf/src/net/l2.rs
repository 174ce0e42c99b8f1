//! Delivery at L2 (layer: net): by destination MAC within one network (VNI), to a local tap
//! by redirect or to a remote host over the tunnel; broadcast and unknown unicast
//! replicated to the network's local taps and (from a tap only) to the hosts that have
//! ports on it, through the VXLAN device; and the delivery of a routed or translated packet
//! to its port. Unicast into the tunnel goes the way `encap` says.
//! Maps: reads DVR_FDB, DVR_FLOOD, DVR_ENDPOINTS6. Verdicts: tx_local, tx_tunnel, flooded, the caller's
//! stat, drop_no_local_port, drop_redirect, drop_malformed.
use aya_ebpf::{bindings::__sk_buff, helpers::bpf_clone_redirect, programs::TcContext};
use dvr_common::{
    Mac,
    config::HostConfig,
    ip6::{Ip6, Ip6Key, Route6},
    l2::{FLOOD_MAX_LOCAL, FLOOD_MAX_REMOTE, FdbKey},
    route::Endpoint,
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_ENDPOINTS6, DVR_FDB, DVR_FLOOD},
        packet::{Eth, is_multicast},
        tunnel_key,
        verdict::{Verdict, redirect},
    },
    net::{
        encap::{self, Tunnel},
        rewrite,
    },
};

/// Where a port (or a VIP's holder) is: a tap of this host, or another host, by its tunnel
/// address (host order).
#[derive(Clone, Copy)]
pub enum Location {
    Local(u32),
    Remote(u32),
}

impl Location {
    /// From the map encoding: a local tap ifindex, 0 when remote (then the tunnel address).
    #[inline(always)]
    pub fn of(ifindex: u32, tunnel_ip_host: u32) -> Self {
        if ifindex != 0 {
            Location::Local(ifindex)
        } else {
            Location::Remote(tunnel_ip_host)
        }
    }
}

/// Where a frame to forward at L2 came from.
#[derive(Clone, Copy)]
pub enum Ingress {
    /// A local tap (not sent back there); flooding may also replicate it into the tunnel.
    Tap { ifindex: u32, tunnel: Tunnel },
    /// The tunnel: delivered to local taps only.
    Tunnel,
}

/// Forward a frame on network `vni` by destination MAC.
#[inline(always)]
pub fn forward(ctx: &TcContext, vni: u32, dst: &Mac, from: Ingress) -> Verdict {
    // The flat encoding the loops below compare against: 0 = from the tunnel.
    let (from_ifindex, tunnel) = match from {
        Ingress::Tap { ifindex, tunnel } => (ifindex, tunnel),
        Ingress::Tunnel => (
            0,
            Tunnel {
                ifindex: 0,
                encap: false,
            },
        ),
    };
    if !is_multicast(dst) {
        let key = FdbKey {
            vni,
            mac: *dst,
            _pad: [0; 2],
        };
        // SAFETY: read-only use of an agent-written hash value.
        if let Some(e) = unsafe { DVR_FDB.get(&key) } {
            if from_ifindex == 0 && e.ifindex == 0 {
                return Verdict::drop(Stat::DropNoLocalPort);
            }
            return match Location::of(e.ifindex, e.tunnel_ip_host) {
                Location::Local(ifindex) => redirect(ifindex, Stat::TxLocal),
                Location::Remote(host) => encap::send(ctx, vni, host, tunnel, Stat::TxTunnel),
            };
        }
    }
    flood(ctx, vni, from_ifindex, tunnel.ifindex)
}

#[inline(always)]
fn flood(ctx: &TcContext, vni: u32, from_ifindex: u32, tunnel_ifindex: u32) -> Verdict {
    // SAFETY: read-only use of an agent-written hash value.
    let Some(set) = (unsafe { DVR_FLOOD.get(&vni) }) else {
        return Verdict::drop(if from_ifindex == 0 {
            Stat::DropNoLocalPort
        } else {
            Stat::Flooded
        });
    };
    let skb = ctx.skb.skb as *mut __sk_buff;
    let n_local = set.n_local as usize;
    for i in 0..FLOOD_MAX_LOCAL {
        if i >= n_local {
            break;
        }
        let ifx = set.local[i];
        if ifx != from_ifindex {
            // SAFETY: clone_redirect copies the skb; we touch no packet pointer afterwards.
            unsafe { bpf_clone_redirect(skb, ifx, 0) };
        }
    }
    if from_ifindex != 0 {
        let n_remote = set.n_remote as usize;
        for i in 0..FLOOD_MAX_REMOTE {
            if i >= n_remote {
                break;
            }
            if tunnel_key::set(ctx, vni, set.remote[i]) == 0 {
                // SAFETY: as above.
                unsafe { bpf_clone_redirect(skb, tunnel_ifindex, 0) };
            }
        }
    }
    Verdict::drop(Stat::Flooded)
}

/// Deliver a routed (or translated) packet to port `mac` at `loc` on network `vni`: out of
/// its local tap with its subnet's gateway MAC `gw_mac` as source, or over the tunnel to its
/// host with this host's DVR MAC, which that host turns into the gateway MAC.
#[inline(always)]
pub fn deliver_routed(
    ctx: &TcContext,
    mac: Mac,
    gw_mac: Mac,
    loc: Location,
    vni: u32,
    cfg: &HostConfig,
    stat: Stat,
) -> Result<Verdict, Verdict> {
    // Re-derived after the helpers that ran before.
    let eth = Eth::at(ctx)?;
    match loc {
        Location::Local(ifindex) => {
            eth.set_src(gw_mac);
            eth.set_dst(mac);
            Ok(redirect(ifindex, stat))
        }
        Location::Remote(host) => routed_to_host(ctx, mac, host, vni, cfg, stat),
    }
}

/// Deliver a routed packet to port endpoint `ep` on network `vni`, as [`deliver_routed`]
/// does with its subnet's gateway MAC `gw_mac`.
#[inline(always)]
pub fn deliver_endpoint(
    ctx: &TcContext,
    ep: &Endpoint,
    gw_mac: Mac,
    vni: u32,
    cfg: &HostConfig,
    stat: Stat,
) -> Result<Verdict, Verdict> {
    deliver_routed(
        ctx,
        ep.mac,
        gw_mac,
        Location::of(ep.ifindex, ep.tunnel_ip_host),
        vni,
        cfg,
        stat,
    )
}

/// Route an IPv6 packet to `daddr` by `route`: to the port with that address, or for an
/// extra route with its next hop (DVR_ENDPOINTS6, else drop_no_endpoint or
/// drop_no_nexthop), hop limit decremented, delivered as [`deliver_routed`] does.
#[inline(always)]
pub fn deliver_routed6(
    ctx: &TcContext,
    route: &Route6,
    daddr: &Ip6,
    cfg: &HostConfig,
    stat: Stat,
) -> Result<Verdict, Verdict> {
    // An extra route's packets go to the port holding its next hop.
    let (ip, unknown) = if route.nexthop != [0; 16] {
        (route.nexthop, Stat::DropNoNexthop)
    } else {
        (*daddr, Stat::DropNoEndpoint)
    };
    let ep_key = Ip6Key { vni: route.vni, ip };
    // SAFETY: read-only copy of an agent-written hash value.
    let Some(ep) = (unsafe { DVR_ENDPOINTS6.get(&ep_key) }).copied() else {
        return Err(Verdict::drop(unknown));
    };
    rewrite::hop_limit_decrement(ctx)?;
    deliver_endpoint(ctx, &ep, route.gw_mac, route.vni, cfg, stat)
}

/// Send a routed packet to `mac` on network `vni` at tunnel peer `host` (host order), with
/// this host's DVR MAC as source.
#[inline(always)]
pub fn routed_to_host(
    ctx: &TcContext,
    mac: Mac,
    host: u32,
    vni: u32,
    cfg: &HostConfig,
    stat: Stat,
) -> Result<Verdict, Verdict> {
    // Re-derived after the helpers that ran before.
    let eth = Eth::at(ctx)?;
    eth.set_src(cfg.dvr_mac);
    eth.set_dst(mac);
    Ok(encap::send(ctx, vni, host, Tunnel::of(cfg), stat))
}
