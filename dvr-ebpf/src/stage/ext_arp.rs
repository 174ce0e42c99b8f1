//! ARP on the external interface (stage): learn the external gateway's MAC from any ARP it
//! sends, and answer (proxy ARP) requests for this host's own external address and for
//! the floating IPs and router external IPs it serves; the external IP and central FIPs of
//! an HA router only while its fence is live (otherwise the request passes on unanswered).
//! The same answers are given by the external NIC's XDP program ([`xdp`]), which sends
//! them back itself.
//! Calls `ha`. Maps: reads DVR_FIPS, DVR_SNAT_IPS; writes DVR_EXT_NEIGH values.
//! Verdicts: ext_arp_reply, ext_neigh_learned, ext_pass, drop_redirect, drop_malformed.
use aya_ebpf::programs::{TcContext, XdpContext};
use dvr_common::{
    config::HostConfig,
    nat::{FIP_CENTRAL, FIP_LOCAL},
    stats::Stat,
};

use crate::{
    base::{
        clock,
        maps::{DVR_EXT_NEIGH, DVR_FIPS, DVR_SNAT_IPS},
        packet::{
            ARP_REQUEST, ArpHdr, ETH_LEN, Eth, Linear, arp_is_ethernet_ipv4, arp_reply_in_place,
            be16, ptr_at,
        },
        verdict::{Verdict, redirect},
    },
    stage::ha,
};

#[inline(always)]
pub fn stage(ctx: &TcContext, cfg: &HostConfig) -> Result<Verdict, Verdict> {
    match answer(ctx, cfg)? {
        // Out of the interface the request came in on.
        // SAFETY: the context pointer is valid for the program's run.
        Answer::Replied => Ok(redirect(
            unsafe { (*ctx.skb.skb).ifindex },
            Stat::ExtArpReply,
        )),
        Answer::Learned => Ok(Verdict::pass(Stat::ExtNeighLearned)),
        Answer::Other => Ok(Verdict::pass(Stat::ExtPass)),
    }
}

/// The external NIC's XDP program: a request this host answers is turned into its reply
/// here, to be sent back out of the NIC, counted ext_arp_reply; anything else is left to
/// [`stage`] (`None`), which learns the sender again (the same value) and counts it.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, cfg: &HostConfig) -> Option<Stat> {
    match answer(ctx, cfg) {
        Ok(Answer::Replied) => Some(Stat::ExtArpReply),
        _ => None,
    }
}

/// What [`answer`] did with an ARP frame.
enum Answer {
    /// Turned the request into its reply, in place: send it back.
    Replied,
    /// Learned the sender's MAC (a gateway's), nothing to answer.
    Learned,
    /// Neither.
    Other,
}

#[inline(always)]
fn answer(ctx: &impl Linear, cfg: &HostConfig) -> Result<Answer, Verdict> {
    let eth = Eth::at(ctx)?;
    let arp: *mut ArpHdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; no helper ran since; ArpHdr is all bytes.
    let arp = unsafe { &mut *arp };
    if !arp_is_ethernet_ipv4(arp) {
        return Ok(Answer::Other);
    }
    let spa = u32::from_ne_bytes(arp.spa);
    let mut learned = false;
    // Only addresses the agent listed (gateways) are learned: no cache for arbitrary senders.
    if let Some(n) = DVR_EXT_NEIGH.get_ptr_mut(&spa) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            (*n).mac = arp.sha;
            (*n).learned = 1;
            (*n).seen_ns = clock::coarse_ns();
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
            arp_reply_in_place(eth, arp, cfg.ext_mac, tpa.to_ne_bytes());
            return Ok(Answer::Replied);
        }
    }
    Ok(if learned {
        Answer::Learned
    } else {
        Answer::Other
    })
}
