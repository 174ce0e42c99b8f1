//! The way into the tunnel (layer: net): a frame for a remote host leaves either through the
//! VXLAN collect_md device (the tunnel metadata set on the skb, redirected to the device) or,
//! when the agent set `HOST_ENCAP_BPF`, VXLAN-encapsulated here and sent straight out of the
//! underlay NIC (`base::vxlan`). The encapsulation is deferred to the program's entry
//! ([`send_pending`]), where the stack is shallow, with the VNI and remote host in the
//! packet's control block. It falls back to the device for GSO packets and where it cannot
//! be done (no route the FIB helper gives from the device, frame too long); a verdict that
//! is to be fragmented goes through the device ([`through_device`]), as fragments are cut
//! from the inner packet; flooding uses the device (`l2`).
//! Maps: reads DVR_HOST_CONFIG. Verdicts: tx_encap, tx_encap_device, drop_encap,
//! drop_redirect, the caller's stat.
use aya_ebpf::programs::TcContext;
use dvr_common::{
    config::{HOST_ENCAP_BPF, HostConfig},
    stats::Stat,
};

use crate::base::{
    maps::DVR_HOST_CONFIG,
    tunnel_key,
    verdict::{ACT_ENCAP, Verdict, redirect},
    vxlan::{self, Encap},
};

/// The `__sk_buff.cb` words that carry a deferred encapsulation's VNI and remote host (host
/// order) to [`send_pending`] (words 0 and 1 are the MTU stage's).
const CB_VNI: usize = 2;
const CB_REMOTE: usize = 3;

/// How this host's frames enter the tunnel.
#[derive(Clone, Copy)]
pub struct Tunnel {
    /// The VXLAN collect_md device.
    pub ifindex: u32,
    /// Encapsulated by the datapath (`HOST_ENCAP_BPF`).
    pub encap: bool,
}

impl Tunnel {
    #[inline(always)]
    pub fn of(cfg: &HostConfig) -> Self {
        Self {
            ifindex: cfg.tunnel_ifindex,
            encap: cfg.flags & HOST_ENCAP_BPF != 0,
        }
    }
}

/// Send the frame to host `remote_host` (host order) on network `vni`, counted as `stat`.
#[inline(always)]
pub fn send(ctx: &TcContext, vni: u32, remote_host: u32, tunnel: Tunnel, stat: Stat) -> Verdict {
    if !tunnel.encap {
        return device(ctx, vni, remote_host, tunnel.ifindex, stat);
    }
    // SAFETY: the context pointer is valid for the program's run; cb is ours in TC.
    unsafe {
        (*ctx.skb.skb).cb[CB_VNI] = vni;
        (*ctx.skb.skb).cb[CB_REMOTE] = remote_host;
    }
    Verdict::encap(stat)
}

/// Through the VXLAN device `ifindex`: the metadata on the skb, then the redirect.
#[inline(always)]
pub fn device(ctx: &TcContext, vni: u32, remote_host: u32, ifindex: u32, stat: Stat) -> Verdict {
    if tunnel_key::set(ctx, vni, remote_host) != 0 {
        return Verdict::drop(Stat::DropRedirect);
    }
    redirect(ifindex, stat)
}

/// Verdict `v`, when it deferred an encapsulation, sent through the VXLAN device `ifindex`
/// instead; any other verdict as it is.
#[inline(always)]
pub fn through_device(ctx: &TcContext, v: Verdict, ifindex: u32) -> Verdict {
    if v.action != ACT_ENCAP {
        return v;
    }
    let (vni, remote_host) = noted(ctx);
    device(ctx, vni, remote_host, ifindex, v.stat)
}

/// The VNI and remote host [`send`] noted.
#[inline(always)]
fn noted(ctx: &TcContext) -> (u32, u32) {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { ((*ctx.skb.skb).cb[CB_VNI], (*ctx.skb.skb).cb[CB_REMOTE]) }
}

/// Encapsulate and send the frame [`send`] deferred, or send it through the device when that
/// cannot be done: counted as tx_encap, tx_encap_device or drop_encap (besides the
/// delivery's own stat, counted before). A BPF-to-BPF function called by the entry points,
/// whose stack frames are shallow.
#[inline(never)]
pub fn send_pending(ctx: &TcContext) -> Verdict {
    let Some(cfg) = DVR_HOST_CONFIG.get(0) else {
        return Verdict::drop(Stat::DropNotReady);
    };
    let (vni, remote_host) = noted(ctx);
    match vxlan::encap(
        ctx,
        cfg.tunnel_ifindex,
        cfg.tunnel_ip_host,
        remote_host,
        vni,
    ) {
        Encap::Sent => Verdict::redirected(Stat::TxEncap),
        Encap::Untouched => device(
            ctx,
            vni,
            remote_host,
            cfg.tunnel_ifindex,
            Stat::TxEncapDevice,
        ),
        Encap::Broken => Verdict::drop(Stat::DropEncap),
    }
}
