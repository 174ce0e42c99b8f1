//! IPv4 fragmentation (layer: net): a packet without DF, longer than the MTU of the network
//! it is delivered into, already rewritten for delivery (MACs, TTL, NAT, tunnel key) and
//! redirected, is sent as fragments to the same interface (RFC 791 3.2, as the kernel's
//! `ip_fragment` cuts them): the payload beyond the first fragment is saved in the per-CPU
//! `DVR_SCRATCH`; the packet is cut to its first fragment and a clone sent
//! (`bpf_clone_redirect`, which keeps the tunnel key); then for each further fragment the
//! packet is resized, its slice of the payload written back from the buffer and its header
//! rewritten, a clone sent, the last one by the redirect the delivery asked for. A stage
//! asks for it ([`request`]); the program's entry does it ([`send_pending`]). Only
//! option-less headers are cut (Linux copies some options into every fragment; a VM's
//! packets carry none). Maps: uses DVR_SCRATCH. Verdicts: fragmented, drop_frag_failed.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::tcx_action_base::TCX_REDIRECT,
    helpers::{bpf_clone_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use dvr_common::{
    csum,
    frag::{FRAG_MAX, FRAG_PAYLOAD_MAX, FRAG_SAVE_MAX, plan},
    stats::Stat,
};

use crate::base::{
    maps::DVR_SCRATCH,
    packet::{ETH_LEN, IP_HDR_LEN, IP_OFFSET},
    verdict::{Verdict, redirect},
};

/// The "more fragments" flag of the IPv4 `frags` word.
const IP_MF: u16 = 0x2000;

/// Ask for the packet of delivery verdict `v`, a redirect to `out`, to be sent as
/// fragments of at most `mtu` bytes: the job is noted in the per-CPU buffer and the
/// verdict becomes [`Verdict::fragment`]. Any other verdict is returned as it is.
#[inline(always)]
pub fn request(v: Verdict, out: u32, mtu: u16) -> Verdict {
    if v.action != TCX_REDIRECT {
        return v;
    }
    let Some(buf) = DVR_SCRATCH.get_ptr_mut(0) else {
        return Verdict::drop(Stat::DropFragFailed);
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    unsafe {
        (*buf).out_ifindex = out;
        (*buf).mtu = mtu;
    }
    Verdict::fragment(v.stat)
}

/// Send the packet as the fragments [`request`] asked for. A BPF-to-BPF function called
/// by the entry points, whose stack frames are shallow: its own frame does not fit beside
/// a pipeline's.
#[inline(never)]
pub fn send_pending(ctx: &TcContext) -> Verdict {
    let Some(buf) = DVR_SCRATCH.get_ptr_mut(0) else {
        return Verdict::drop(Stat::DropFragFailed);
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let (out, mtu) = unsafe { ((*buf).out_ifindex, (*buf).mtu) };
    if fragments(ctx, out, mtu).is_ok() {
        redirect(out, Stat::Fragmented)
    } else {
        Verdict::drop(Stat::DropFragFailed)
    }
}

/// All fragments but the last sent as clones to `ifindex`; the packet left as the last.
#[inline(always)]
fn fragments(ctx: &TcContext, ifindex: u32, mtu: u16) -> Result<(), ()> {
    let skb = ctx.skb.skb;
    let buf = DVR_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let (hdr, data) = unsafe { (&mut (*buf).hdr, &mut (*buf).data) };
    *hdr = ctx.load::<[u8; IP_HDR_LEN]>(ETH_LEN).map_err(|_| ())?;
    if hdr[0] != 0x45 {
        return Err(());
    }
    let tot = u32::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    let frags = u16::from_be_bytes([hdr[6], hdr[7]]);
    let (slice, count) = plan(tot.saturating_sub(IP_HDR_LEN as u32), mtu).ok_or(())?;
    let rest = tot - IP_HDR_LEN as u32 - slice;
    if rest == 0 || rest as usize > FRAG_SAVE_MAX {
        return Err(());
    }
    // 1 to FRAG_SAVE_MAX, as the verifier can see from the arithmetic itself (a range
    // check on one register does not bound the copy the compiler passes on).
    let rest = bounded(rest);
    let payload_at = (ETH_LEN + IP_HDR_LEN) as u32;
    // SAFETY: the helper writes `rest` (1 to FRAG_SAVE_MAX) bytes into the buffer, which
    // is longer.
    let ret = unsafe {
        bpf_skb_load_bytes(
            skb as *const _,
            payload_at + slice,
            data.as_mut_ptr() as *mut c_void,
            rest,
        )
    };
    if ret != 0 {
        return Err(());
    }
    let base = frags & IP_OFFSET;
    let more = frags & IP_MF;
    let mut sent = 0u32;
    let mut len = slice;
    for i in 0..FRAG_MAX {
        if i >= count {
            break;
        }
        let last = i + 1 == count;
        if i > 0 {
            let off = (i - 1) * slice;
            let left = rest.saturating_sub(off);
            let n = if left < slice { left } else { slice };
            if off as usize >= FRAG_SAVE_MAX || n == 0 || n as usize > FRAG_PAYLOAD_MAX {
                return Err(());
            }
            let off = (off & (FRAG_SAVE_MAX as u32 - 1)) as usize;
            len = bounded(n);
            resize(ctx, payload_at + len)?;
            // SAFETY: reads `len` bytes at `off` of the buffer: off < FRAG_SAVE_MAX and
            // len <= FRAG_PAYLOAD_MAX, whose sum is the buffer's length.
            let ret = unsafe {
                bpf_skb_store_bytes(
                    skb as *mut _,
                    payload_at,
                    data.as_ptr().add(off) as *const c_void,
                    len,
                    0,
                )
            };
            if ret != 0 {
                return Err(());
            }
        } else {
            resize(ctx, payload_at + len)?;
        }
        let flags = if last { more } else { IP_MF };
        let offset = base + (sent / 8) as u16;
        header(hdr, (IP_HDR_LEN as u32 + len) as u16, flags | offset);
        ctx.store(ETH_LEN, hdr, 0).map_err(|_| ())?;
        sent += len;
        if last {
            return Ok(());
        }
        // SAFETY: plain helper call on our skb; the clone goes out of `ifindex` now.
        if unsafe { bpf_clone_redirect(skb as *mut _, ifindex, 0) } != 0 {
            return Err(());
        }
    }
    Err(())
}

/// `n`, known to be 1 to 8192 (FRAG_SAVE_MAX and FRAG_PAYLOAD_MAX), in a form whose range
/// the verifier derives.
#[inline(always)]
fn bounded(n: u32) -> u32 {
    const _: () = assert!(FRAG_SAVE_MAX == 8192 && FRAG_PAYLOAD_MAX == 8192);
    ((n - 1) & 0x1fff) + 1
}

/// Cut or grow the frame to `len` bytes.
#[inline(always)]
fn resize(ctx: &TcContext, len: u32) -> Result<(), ()> {
    // SAFETY: plain helper call on our skb.
    match unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, len, 0) } {
        0 => Ok(()),
        _ => Err(()),
    }
}

/// Set a fragment's total length and flags/offset word, and its header checksum.
#[inline(always)]
fn header(hdr: &mut [u8; IP_HDR_LEN], tot_len: u16, frags: u16) {
    hdr[2..4].copy_from_slice(&tot_len.to_be_bytes());
    hdr[6..8].copy_from_slice(&frags.to_be_bytes());
    hdr[10] = 0;
    hdr[11] = 0;
    let sum = csum::checksum(&hdr[..]);
    hdr[10..12].copy_from_slice(&sum.to_be_bytes());
}
