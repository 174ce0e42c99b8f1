//! IPv6 neighbour discovery on a tap (stage): what a VM may claim, and the router's local
//! answers, sent back out of the tap and never over the tunnel (each host answers its own
//! VMs; a solicitation from the tunnel is only delivered to local taps).
//! - Validity (RFC 4861 6.1, 7.1): hop limit 255 and code 0, else drop_malformed.
//! - RA guard (port security): a VM sends no router advertisement and no redirect.
//! - Port security: a neighbour advertisement's target must be one of the port's addresses
//!   (the DVR_PORT_SEC6 check of a source address); a source or target link-layer address
//!   option must be the frame's source MAC.
//! - A neighbour solicitation for a router interface address (or its link-local address,
//!   DVR_GW_BY_IP6) is answered with a neighbour advertisement from the interface MAC.
//! - A router solicitation is answered with the network's router advertisement (DVR_RA).
//!
//! Everything else (solicitations for VMs, advertisements, multicast listener discovery) is
//! the caller's to forward. Calls `security`. Maps: reads DVR_GW_BY_IP6, DVR_RA (and those
//! of `security`). Verdicts: nd_advert, ra_sent, drop_ra_guard, drop_spoof_nd,
//! drop_spoof_mac, drop_redirect, drop_malformed; `Ok(())` = not answered here.
use aya_ebpf::{helpers::bpf_skb_change_tail, programs::TcContext};
use dvr_common::{
    Mac, csum,
    ip6::{Ip6Key, RA_FRAME_MAX, RouterIface6},
    port::{LocalPort, PORT_FLAG_SECURITY},
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_GW_BY_IP6, DVR_RA},
        packet::{
            ETH_LEN, ETH_P_IPV6, Eth, IP6_ALL_NODES, IP6_HDR_LEN, IP6_L4_OFF, IPPROTO_ICMPV6,
            MAC_ALL_NODES, ND_HOP_LIMIT, ND_NA_OVERRIDE, ND_NA_ROUTER, ND_NA_SOLICITED,
            ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL,
            ND_REDIRECT, ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT, ptr_at,
        },
        verdict::{Verdict, redirect},
    },
    net::flow6::Flow6,
    stage::security,
};

/// Neighbour solicitation and advertisement: type, code, checksum, 4 bytes, the target.
const NS_HDR_LEN: usize = 24;
/// Router solicitation: type, code, checksum, 4 reserved bytes.
const RS_HDR_LEN: usize = 8;
/// The advertisement sent: header and one target link-layer address option.
const NA_LEN: usize = NS_HDR_LEN + 8;
const NA_FRAME_LEN: usize = IP6_L4_OFF + NA_LEN;
/// The smallest router advertisement frame accepted from DVR_RA (no option).
const RA_FRAME_MIN: usize = IP6_L4_OFF + 16;
/// Options of a VM's message checked for link-layer addresses; a message with more is
/// dropped as malformed rather than let through unchecked.
const ND_OPTS_MAX: usize = 4;

#[inline(always)]
fn malformed<T>(_: T) -> Verdict {
    Verdict::drop(Stat::DropMalformed)
}

/// Neighbour discovery message `f` from the VM on tap `ifindex` (`port`), whose frame has
/// source MAC `mac`. `Err` ends the pipeline (answered or dropped).
#[inline(always)]
pub fn stage(
    ctx: &TcContext,
    f: &Flow6,
    ifindex: u32,
    port: &LocalPort,
    mac: &Mac,
) -> Result<(), Verdict> {
    let Some(kind) = f.icmp6() else {
        return Ok(());
    };
    if !(ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&kind) {
        return Ok(());
    }
    if f.hop_limit != ND_HOP_LIMIT || f.icmp_code != 0 {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    let secure = port.flags & PORT_FLAG_SECURITY != 0;
    let end = ETH_LEN + f.ip_len();
    match kind {
        ND_ROUTER_ADVERT | ND_REDIRECT if secure => Err(Verdict::drop(Stat::DropRaGuard)),
        ND_ROUTER_SOLICIT => {
            if secure {
                link_options(ctx, f.l4_off + RS_HDR_LEN, end, mac)?;
            }
            advertise_router(ctx, ifindex, port.vni)
        }
        ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT => {
            // The target, read once into the key it is looked up with.
            let key = Ip6Key {
                vni: port.vni,
                ip: ctx.load(f.l4_off + 8).map_err(malformed)?,
            };
            if secure {
                if kind == ND_NEIGHBOR_ADVERT {
                    security::check6(ifindex, mac, &key.ip, Stat::DropSpoofNd)?;
                }
                link_options(ctx, f.l4_off + NS_HDR_LEN, end, mac)?;
            }
            if kind == ND_NEIGHBOR_SOLICIT {
                // SAFETY: read-only use of an agent-written hash value.
                if let Some(gw) = unsafe { DVR_GW_BY_IP6.get(&key) } {
                    let written = advertise_neighbor(ctx, f, gw);
                    return Err(answered(written, ifindex, Stat::NdAdvert));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The options from `off` to `end`: a source or target link-layer address must be `mac`.
#[inline(always)]
fn link_options(ctx: &TcContext, mut off: usize, end: usize, mac: &Mac) -> Result<(), Verdict> {
    for _ in 0..ND_OPTS_MAX {
        if off >= end {
            return Ok(());
        }
        let o: [u8; 8] = ctx.load(off).map_err(malformed)?;
        // A zero length never ends (RFC 4861 4.6: discard the message).
        if o[1] == 0 {
            return Err(Verdict::drop(Stat::DropMalformed));
        }
        if (o[0] == ND_OPT_SOURCE_LL || o[0] == ND_OPT_TARGET_LL)
            && [o[2], o[3], o[4], o[5], o[6], o[7]] != *mac
        {
            return Err(Verdict::drop(Stat::DropSpoofNd));
        }
        off += o[1] as usize * 8;
    }
    if off < end {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    Ok(())
}

/// Turn a solicitation for router interface address `gw` into its answer in place: an
/// advertisement from the interface MAC to the solicitor (the solicitation's source), or to
/// all nodes for duplicate address detection (source `::`, RFC 4861 7.2.4: not solicited).
/// False when the packet could not be rewritten. The caller sends it back (`answered`):
/// also the answer for a router's external address on the external NIC (`ext_nd`, with the
/// external interface's MAC as `gw.mac`). A BPF-to-BPF call with its own stack frame (see
/// `entry::tap::program`); at most five arguments, so the verdict is the caller's.
#[inline(never)]
pub fn advertise_neighbor(ctx: &TcContext, f: &Flow6, gw: &RouterIface6) -> bool {
    let Ok(eth) = Eth::at(ctx) else {
        return false;
    };
    let solicitor = eth.src();
    let gw_mac = gw.mac;
    let dad = f.src_unspecified;
    // SAFETY: plain helper call; resizes the packet to the advertisement.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, NA_FRAME_LEN as u32, 0) } != 0 {
        return false;
    }
    // Written in place, addresses copied from memory to memory: frame-sized or address
    // values on the stack would not fit beside the rest (the BPF stack is 512 bytes).
    let Ok(fr) = ptr_at::<[u8; NA_FRAME_LEN]>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at after the resize; a byte array has no alignment.
    let fr = unsafe { &mut *fr };
    *fr = [0; NA_FRAME_LEN];
    let ip = ETH_LEN;
    let na = ip + IP6_HDR_LEN;
    if dad {
        fr[0..6].copy_from_slice(&MAC_ALL_NODES);
        fr[ip + 24..ip + 40].copy_from_slice(&IP6_ALL_NODES);
        fr[na + 4] = ND_NA_ROUTER | ND_NA_OVERRIDE;
    } else {
        fr[0..6].copy_from_slice(&solicitor);
        fr[ip + 24..ip + 40].copy_from_slice(&f.saddr);
        fr[na + 4] = ND_NA_ROUTER | ND_NA_SOLICITED | ND_NA_OVERRIDE;
    }
    fr[6..12].copy_from_slice(&gw_mac);
    fr[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    fr[ip] = 0x60;
    fr[ip + 4..ip + 6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    fr[ip + 6] = IPPROTO_ICMPV6;
    fr[ip + 7] = ND_HOP_LIMIT;
    fr[ip + 8..ip + 24].copy_from_slice(&gw.ip);
    fr[na] = ND_NEIGHBOR_ADVERT;
    fr[na + 8..na + 24].copy_from_slice(&gw.ip);
    fr[na + 24] = ND_OPT_TARGET_LL;
    fr[na + 25] = 1;
    fr[na + 26..na + 32].copy_from_slice(&gw_mac);
    // The pseudo header: both addresses as they now sit in the header, length, protocol.
    let sum = csum::sum(&fr[ip + 8..ip + 40])
        + NA_LEN as u32
        + IPPROTO_ICMPV6 as u32
        + csum::sum(&fr[na..]);
    fr[na + 2..na + 4].copy_from_slice(&(!csum::fold(sum)).to_be_bytes());
    true
}

/// The verdict of [`advertise_neighbor`]: the advertisement out of `ifindex`, counted as
/// `stat`.
#[inline(always)]
pub fn answered(written: bool, ifindex: u32, stat: Stat) -> Verdict {
    if written {
        redirect(ifindex, stat)
    } else {
        Verdict::drop(Stat::DropMalformed)
    }
}

/// Answer a router solicitation on network `vni` with its router advertisement, a whole
/// frame the agent wrote (to all nodes from the router's link-local address), when it has
/// one.
#[inline(always)]
fn advertise_router(ctx: &TcContext, ifindex: u32, vni: u32) -> Result<(), Verdict> {
    // SAFETY: read-only use of an agent-written hash value.
    let Some(ra) = (unsafe { DVR_RA.get(&vni) }) else {
        return Ok(());
    };
    let len = ra.len as usize;
    if !(RA_FRAME_MIN..=RA_FRAME_MAX).contains(&len) {
        return Ok(());
    }
    // The whole buffer is copied (a constant size, which the verifier takes), then the
    // packet cut to the frame's length.
    // SAFETY: plain helper call; resizes the packet to the buffer.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, RA_FRAME_MAX as u32, 0) } != 0 {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    ctx.store(0, &ra.frame, 0).map_err(malformed)?;
    // SAFETY: as above, to the frame.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, len as u32, 0) } != 0 {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    Err(redirect(ifindex, Stat::RaSent))
}
