//! L2 stage: deliver by destination MAC within one network (VNI): a local tap by redirect,
//! a remote host over the tunnel, broadcast/unknown unicast replicated to the network's
//! local taps and (from a tap only) to the hosts that have ports on it.
//! Reads DVR_FDB, DVR_FLOOD. Verdicts: tx_local, tx_tunnel, flooded, drop_*.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_tunnel_key},
    helpers::{bpf_clone_redirect, bpf_redirect, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use dvr_common::{
    Mac,
    l2::{FLOOD_MAX_LOCAL, FLOOD_MAX_REMOTE, FdbKey},
    stats::Stat,
};

use crate::{
    maps::{DVR_FDB, DVR_FLOOD},
    verdict::Verdict,
};

const TUNNEL_TTL: u8 = 64;

/// Put the VXLAN metadata (VNI, remote host) on the skb for the collect_md device.
#[inline(always)]
pub fn set_tunnel(ctx: &TcContext, vni: u32, remote_host: u32) -> Result<(), Verdict> {
    // SAFETY: bpf_tunnel_key is plain old data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = remote_host;
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: key lives on our stack for the call; size is the full struct.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb as *mut __sk_buff,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if ret != 0 {
        return Err(Verdict::drop(Stat::DropRedirect));
    }
    Ok(())
}

/// Unicast toward a port: local tap or remote host.
#[inline(always)]
pub fn to_port(
    ctx: &TcContext,
    ifindex: u32,
    tunnel_ip_host: u32,
    vni: u32,
    tunnel_ifindex: u32,
    stat_local: Stat,
    stat_tunnel: Stat,
) -> Verdict {
    if ifindex != 0 {
        // SAFETY: plain helper call.
        return Verdict::redirect(stat_local, unsafe { bpf_redirect(ifindex, 0) });
    }
    if let Err(v) = set_tunnel(ctx, vni, tunnel_ip_host) {
        return v;
    }
    // SAFETY: plain helper call.
    Verdict::redirect(stat_tunnel, unsafe { bpf_redirect(tunnel_ifindex, 0) })
}

/// Forward a frame on network `vni` by destination MAC. `from_ifindex` is the source tap
/// (0 when the frame came from the tunnel: then nothing is sent back into the tunnel).
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    vni: u32,
    dst: &Mac,
    from_ifindex: u32,
    tunnel_ifindex: u32,
) -> Verdict {
    if !crate::packet::is_multicast(dst) {
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
            return to_port(
                ctx,
                e.ifindex,
                e.tunnel_ip_host,
                vni,
                tunnel_ifindex,
                Stat::TxLocal,
                Stat::TxTunnel,
            );
        }
    }
    flood(ctx, vni, from_ifindex, tunnel_ifindex)
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
            if set_tunnel(ctx, vni, set.remote[i]).is_ok() {
                // SAFETY: as above.
                unsafe { bpf_clone_redirect(skb, tunnel_ifindex, 0) };
            }
        }
    }
    Verdict::drop(Stat::Flooded)
}

/// Deliver a routed (or translated) packet to a port: out of its local tap with its
/// subnet's gateway MAC as source, or over the tunnel to its host with this host's DVR MAC,
/// which that host turns into the gateway MAC.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "flat values keep the verifier's view simple"
)]
pub fn deliver_routed(
    ctx: &TcContext,
    mac: dvr_common::Mac,
    gw_mac: dvr_common::Mac,
    ifindex: u32,
    tunnel_ip_host: u32,
    vni: u32,
    cfg: &dvr_common::config::HostConfig,
    stat: Stat,
) -> Result<Verdict, Verdict> {
    let eth: *mut crate::packet::EthHdr = crate::packet::ptr_at(ctx, 0)?;
    // SAFETY: re-derived after the helpers that ran before; bounds-checked.
    unsafe {
        (*eth).src = if ifindex == 0 { cfg.dvr_mac } else { gw_mac };
        (*eth).dst = mac;
    }
    if ifindex == 0 {
        return Ok(to_port(
            ctx,
            0,
            tunnel_ip_host,
            vni,
            cfg.tunnel_ifindex,
            stat,
            stat,
        ));
    }
    // SAFETY: plain helper call.
    Ok(Verdict::redirect(stat, unsafe { bpf_redirect(ifindex, 0) }))
}
