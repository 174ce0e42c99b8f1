//! The VXLAN metadata of a frame for the collect_md device (layer: base). Shared, as a file,
//! with the benchmark's floor (`src/floor.rs`), which must encapsulate exactly as the
//! datapath does; so it uses nothing of this crate.
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_ZERO_CSUM_TX, bpf_tunnel_key},
    helpers::bpf_skb_set_tunnel_key,
    programs::TcContext,
};

/// The outer IPv4 TTL of the tunnel.
const TUNNEL_TTL: u8 = 64;

/// Puts VNI `vni` and remote host `remote_host` (host byte order) on the skb; the helper's
/// return value (0 on success). The device sends it with UDP checksum 0, as RFC 7348 5 says
/// it should be sent and as the datapath's own encapsulation (`vxlan.rs`) sends it.
#[inline(always)]
pub fn set(ctx: &TcContext, vni: u32, remote_host: u32) -> i64 {
    // SAFETY: bpf_tunnel_key is plain old data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = remote_host;
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: key lives on our stack for the call; size is the full struct.
    unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb as *mut __sk_buff,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            u64::from(BPF_F_ZERO_CSUM_TX),
        )
    }
}
