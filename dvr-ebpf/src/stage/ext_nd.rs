//! Neighbour discovery on the external interface (stage), the IPv6 counterpart of
//! `ext_arp`: learn the external IPv6 next hops' MACs (the keys of DVR_EXT_NEIGH6) from
//! the advertisements they send (by target) and the solicitations they send (by source),
//! taking the frame's source MAC; answer solicitations for a router's external IPv6 address
//! (DVR_SNAT_IPS6) with an advertisement from the external interface's MAC (router flag),
//! an HA router's only while its fence is live (otherwise the solicitation passes on
//! unanswered). Messages that fail RFC 4861's checks (hop limit 255, code 0) pass on
//! untouched. Calls `nd`, `ha`. Maps: reads DVR_SNAT_IPS6; writes DVR_EXT_NEIGH6 values.
//! Verdicts: ext_nd_advert, ext_neigh_learned, ext_pass, drop_redirect, drop_malformed.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    config::HostConfig,
    ip6::{Addr6, Ip6, RouterIface6},
    stats::Stat,
};

use crate::{
    base::{
        clock,
        maps::{DVR_EXT_NEIGH6, DVR_SNAT_IPS6},
        packet::{Eth, ND_HOP_LIMIT, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT},
        verdict::Verdict,
    },
    net::flow6::Flow6,
    stage::{ha, nd},
};

/// Neighbour discovery message `f` seen on the external interface.
#[inline(always)]
pub fn stage(ctx: &TcContext, f: &Flow6, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    let kind = match f.icmp6() {
        Some(k @ (ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT)) => k,
        _ => return Ok(Verdict::pass(Stat::ExtPass)),
    };
    if f.hop_limit != ND_HOP_LIMIT || f.icmp_code != 0 {
        return Ok(Verdict::pass(Stat::ExtPass));
    }
    let target: Ip6 = ctx
        .load(f.l4_off + 8)
        .map_err(|_| Verdict::drop(Stat::DropMalformed))?;
    let sender = Addr6 {
        ip: if kind == ND_NEIGHBOR_ADVERT {
            target
        } else {
            f.saddr
        },
    };
    let mut learned = false;
    // Only addresses the agent listed (next hops) are learned: no cache for arbitrary senders.
    if let Some(n) = DVR_EXT_NEIGH6.get_ptr_mut(&sender) {
        let mac = Eth::at(ctx)?.src();
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            (*n).mac = mac;
            (*n).learned = 1;
            (*n).seen_ns = clock::coarse_ns();
        }
        learned = true;
    }
    if kind == ND_NEIGHBOR_SOLICIT {
        let key = Addr6 { ip: target };
        // SAFETY: read-only use of an agent-written hash value.
        if let Some(r) = unsafe { DVR_SNAT_IPS6.get(&key) }
            && ha::serves_router(r)
        {
            let me = RouterIface6 {
                router_id: r.router_id,
                mac: cfg.ext_mac,
                _pad: [0; 2],
                ip: target,
            };
            // Out of the interface the solicitation came in on.
            // SAFETY: the context pointer is valid for the program's run.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            let written = nd::advertise_neighbor(ctx, f, &me);
            return Ok(nd::answered(written, ifindex, Stat::ExtNdAdvert));
        }
    }
    Ok(Verdict::pass(if learned {
        Stat::ExtNeighLearned
    } else {
        Stat::ExtPass
    }))
}
