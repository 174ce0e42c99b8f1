//! VXLAN encapsulation in BPF (layer: base): a frame becomes outer IPv4/UDP/VXLAN (RFC 7348,
//! UDP port 4789, the wire format of the kernel's VXLAN device) around itself, and is sent
//! straight out of the underlay NIC towards the remote host, without the VXLAN device.
//!
//! - Next hop: a FIB lookup for the remote tunnel address from the VXLAN device (whose
//!   forwarding the agent enables: the helper refuses a device that does not forward),
//!   then `bpf_redirect_neigh` to the interface the route leaves by with the route's next
//!   hop, so the kernel's neighbour table resolves and refreshes the MAC as it does for the
//!   device.
//! - Room for the headers by `bpf_skb_adjust_room` with the encapsulation flags (inner
//!   headers marked). Only packets that are not GSO: see [`Encap::Untouched`].
//! - UDP source port from the inner flow's hash (49152-65535, RFC 7348 5), so that the
//!   underlay's ECMP spreads flows; UDP checksum 0; outer TTL 64, no DF, as the device.
//!
//!
//! And the reverse on the underlay NIC ([`decap`]): a VXLAN frame for this host's tunnel
//! address loses its outer headers and goes on as the frame inside. Only what the kernel
//! would accept unchanged is taken (IPv4 without options or fragments, header checksum
//! right, length matching the frame, UDP to 4789 without a checksum (or one the NIC
//! verified: `bpf_csum_level`), VXLAN with
//! the I flag, an IPv4 or IPv6 unicast frame inside) and only frames that are not GSO: a
//! GSO frame, and anything else, is left to the host stack and the VXLAN device, which keep
//! UDP tunnel GRO for TCP.
//!
//! Shared, as a file, with the benchmark's floor (`src/floor.rs`), which must encapsulate
//! exactly as the datapath does; so it uses nothing of this crate (`dvr-common`'s VXLAN
//! constants only).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_CSUM_LEVEL_QUERY, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LOOKUP_SKIP_NEIGH,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{
        bpf_csum_level, bpf_fib_lookup as fib_lookup, bpf_get_hash_recalc, bpf_get_prandom_u32,
        bpf_redirect_neigh, bpf_skb_adjust_room, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use dvr_common::config::{VXLAN_OVERHEAD, VXLAN_PORT};

/// Ethernet header length: the inner frame's, and the outer one the neighbour code writes.
const ETH_LEN: usize = 14;
/// The room made behind the outer Ethernet header: the tunnel headers and the inner
/// Ethernet header, which moves there (the frame's own stays in front as the outer one).
const ROOM: usize = VXLAN_OVERHEAD as usize;
/// What goes in front of the inner frame after the outer Ethernet header: IPv4 (20), UDP
/// (8), VXLAN (8).
const TUNNEL_LEN: usize = ROOM - ETH_LEN;
const AF_INET: u8 = 2;
const IPPROTO_UDP: u8 = 17;
/// The outer IPv4 TTL, as the kernel's VXLAN device sends by default.
const TTL: u8 = 64;
/// The dynamic port range the UDP source port is picked from (RFC 7348 5).
const SPORT_MIN: u32 = 49152;
const SPORT_SPAN: u32 = 65536 - SPORT_MIN;
/// `bpf_fib_lookup`'s success.
const FIB_SUCCESS: i64 = 0;
/// TC_ACT_REDIRECT, what `bpf_redirect_neigh` returns when it took the frame.
const TC_ACT_REDIRECT: i64 = 7;

/// How an attempt ended.
pub enum Encap {
    /// Encapsulated and redirected: the program returns `TC_ACT_REDIRECT`.
    Sent,
    /// Not tried, the frame untouched: a GSO packet (the resize marks it SKB_GSO_DODGY,
    /// which the underlay NIC, a veth here, segments in software before it leaves, so the
    /// receiver would get every segment on its own; the device keeps it one packet to the
    /// receiving VM), no route to the remote host from here (or none the helper may use),
    /// or the frame would be too long. The caller uses the VXLAN device.
    Untouched,
    /// The frame was resized but could not be finished: it must be dropped.
    Broken,
}

/// Encapsulate the frame for VNI `vni` from tunnel address `local_host` to `remote_host`
/// (host order), routed as from device `lookup_ifindex` (the VXLAN device), and redirect it.
#[inline(always)]
pub fn encap(
    ctx: &TcContext,
    lookup_ifindex: u32,
    local_host: u32,
    remote_host: u32,
    vni: u32,
) -> Encap {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run.
    let (len, gso) = unsafe { ((*skb).len, (*skb).gso_size) };
    let ip_len = len as usize + TUNNEL_LEN;
    if gso != 0 || ip_len > 0xffff {
        return Encap::Untouched;
    }
    let Some((out_ifindex, nexthop_be)) = route(skb, lookup_ifindex, local_host, remote_host)
    else {
        return Encap::Untouched;
    };
    let Ok(inner_eth) = ctx.load::<[u8; ETH_LEN]>(0) else {
        return Encap::Untouched;
    };
    // SAFETY: helpers on the program's own skb; no packet pointer is held across them.
    let hash = unsafe { bpf_get_hash_recalc(skb as *mut __sk_buff) };
    // SAFETY: as above.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    let flags = u64::from(
        BPF_F_ADJ_ROOM_FIXED_GSO
            | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
    ) | ((ETH_LEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    // SAFETY: as above; on failure the helper leaves the skb as it was.
    if unsafe { bpf_skb_adjust_room(skb as *mut __sk_buff, ROOM as i32, BPF_ADJ_ROOM_MAC, flags) }
        != 0
    {
        return Encap::Untouched;
    }
    let hdr = headers(
        ip_len as u16,
        id,
        sport(hash),
        local_host,
        remote_host,
        vni,
        &inner_eth,
    );
    // SAFETY: hdr lives on our stack for the call; the room written was just made.
    let stored = unsafe {
        bpf_skb_store_bytes(
            skb as *mut __sk_buff,
            ETH_LEN as u32,
            hdr.as_ptr() as *const c_void,
            ROOM as u32,
            0,
        )
    };
    if stored != 0 {
        return Encap::Broken;
    }
    // SAFETY: bpf_redir_neigh is plain old data; all-zero is a valid value.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = u32::from(AF_INET);
    nh.__bindgen_anon_1.ipv4_nh = nexthop_be;
    // SAFETY: nh lives on our stack for the call; size is the full struct.
    let ret = unsafe {
        bpf_redirect_neigh(
            out_ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if ret == TC_ACT_REDIRECT {
        Encap::Sent
    } else {
        Encap::Broken
    }
}

/// A VXLAN frame taken off the underlay: its VNI and the sending host (host order).
pub struct Decapped {
    pub vni: u32,
    pub remote_host: u32,
}

/// The whole outer part of a frame [`decap`] looks at: outer Ethernet, IPv4, UDP, VXLAN and
/// the inner Ethernet header.
const OUTER_ALL: usize = ETH_LEN + ROOM;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

/// Take the outer headers off a VXLAN frame for tunnel address `local_host` (host order):
/// `Ok(Some)` when it was done, `Ok(None)` when the frame is not one this takes (left as it
/// was, for the host stack), `Err` when it was resized but could not be finished (to drop).
#[inline(always)]
pub fn decap(ctx: &TcContext, local_host: u32) -> Result<Option<Decapped>, ()> {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run.
    let (len, gso) = unsafe { ((*skb).len, (*skb).gso_size) };
    if gso != 0 || (len as usize) < OUTER_ALL {
        return Ok(None);
    }
    let Ok(h) = ctx.load::<[u8; OUTER_ALL]>(0) else {
        return Ok(None);
    };
    let Some((found, inner_l3)) = outer(&h, len, local_host) else {
        return Ok(None);
    };
    // A UDP checksum is taken only when the NIC verified it (CHECKSUM_UNNECESSARY, the
    // query's level >= 0). The resize below resets that, so the inner packet's own
    // checksum is verified where it is delivered.
    let udp_csum = u16::from_be_bytes([h[ETH_LEN + 26], h[ETH_LEN + 27]]);
    // SAFETY: a query; it changes nothing.
    if udp_csum != 0
        && unsafe { bpf_csum_level(skb as *mut __sk_buff, u64::from(BPF_CSUM_LEVEL_QUERY)) } < 0
    {
        return Ok(None);
    }
    let decap_l3 = if inner_l3 == ETH_P_IPV6 {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4
    };
    // SAFETY: helpers on the program's own skb; on failure the skb is as it was.
    if unsafe {
        bpf_skb_adjust_room(
            skb as *mut __sk_buff,
            -(ROOM as i32),
            BPF_ADJ_ROOM_MAC,
            u64::from(decap_l3),
        )
    } != 0
    {
        return Ok(None);
    }
    let mut inner_eth = [0u8; ETH_LEN];
    inner_eth.copy_from_slice(&h[ETH_LEN + TUNNEL_LEN..OUTER_ALL]);
    // SAFETY: inner_eth lives on our stack for the call; the frame is at least this long.
    let stored = unsafe {
        bpf_skb_store_bytes(
            skb as *mut __sk_buff,
            0,
            inner_eth.as_ptr() as *const c_void,
            ETH_LEN as u32,
            0,
        )
    };
    if stored != 0 {
        return Err(());
    }
    Ok(Some(found))
}

/// The VXLAN frame's VNI and sender and its inner ethertype, from its first bytes `h`
/// (frame length `len`), when it is one [`decap`] takes.
#[inline(always)]
fn outer(h: &[u8; OUTER_ALL], len: u32, local_host: u32) -> Option<(Decapped, [u8; 2])> {
    let ip = ETH_LEN;
    let udp = ip + 20;
    let vx = udp + 8;
    let inner = vx + 8;
    if [h[12], h[13]] != ETH_P_IP || h[ip] != 0x45 || h[ip + 9] != IPPROTO_UDP {
        return None;
    }
    // No fragment: MF clear, offset 0 (DF may be set).
    if h[ip + 6] & 0x3f != 0 || h[ip + 7] != 0 {
        return None;
    }
    if u32::from(u16::from_be_bytes([h[ip + 2], h[ip + 3]])) + ETH_LEN as u32 != len {
        return None;
    }
    let dst = u32::from_be_bytes([h[ip + 16], h[ip + 17], h[ip + 18], h[ip + 19]]);
    if dst != local_host || h[ip + 8] == 0 {
        return None;
    }
    if u16::from_be_bytes([h[udp + 2], h[udp + 3]]) != VXLAN_PORT || h[vx] & 0x08 == 0 {
        return None;
    }
    let l3 = [h[inner + 12], h[inner + 13]];
    // Unicast IPv4 or IPv6 inside (the I/G bit of the inner destination clear).
    if (l3 != ETH_P_IP && l3 != ETH_P_IPV6) || h[inner] & 1 != 0 {
        return None;
    }
    let mut ip_hdr = [0u8; ROOM];
    ip_hdr[..20].copy_from_slice(&h[ip..ip + 20]);
    if ip_checksum(&ip_hdr) != 0 {
        return None;
    }
    let remote_host = u32::from_be_bytes([h[ip + 12], h[ip + 13], h[ip + 14], h[ip + 15]]);
    let vni = u32::from_be_bytes([0, h[vx + 4], h[vx + 5], h[vx + 6]]);
    Some((Decapped { vni, remote_host }, l3))
}

/// The interface and next hop (network order) of the route to `remote_host`, looked up as
/// from `lookup_ifindex`; `None` when there is none the helper gives (no route, a local or
/// blackhole one, forwarding off on that device) or it would leave by that device itself.
#[inline(always)]
fn route(
    skb: *mut __sk_buff,
    lookup_ifindex: u32,
    local_host: u32,
    remote_host: u32,
) -> Option<(u32, u32)> {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid value.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.dport = VXLAN_PORT.to_be();
    fib.ifindex = lookup_ifindex;
    fib.__bindgen_anon_3.ipv4_src = local_host.to_be();
    fib.__bindgen_anon_4.ipv4_dst = remote_host.to_be();
    // SAFETY: fib lives on our stack for the call; size is the full struct.
    let rc = unsafe {
        fib_lookup(
            skb as *mut c_void,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != FIB_SUCCESS || fib.ifindex == lookup_ifindex {
        return None;
    }
    // SAFETY: the helper wrote the IPv4 variant (family AF_INET): the next hop.
    Some((fib.ifindex, unsafe { fib.__bindgen_anon_4.ipv4_dst }))
}

/// The UDP source port for flow hash `hash`, spread over the dynamic range.
#[inline(always)]
fn sport(hash: u32) -> u16 {
    let h = hash ^ (hash << 16);
    (SPORT_MIN + (((u64::from(h) * u64::from(SPORT_SPAN)) >> 32) as u32)) as u16
}

/// Outer IPv4 (total length `ip_len`, id `id`), UDP (source port `sport`) and VXLAN (VNI
/// `vni`) headers, then the inner Ethernet header `inner_eth`.
#[inline(always)]
fn headers(
    ip_len: u16,
    id: u16,
    sport: u16,
    src: u32,
    dst: u32,
    vni: u32,
    inner_eth: &[u8; ETH_LEN],
) -> [u8; ROOM] {
    let mut h = [0u8; ROOM];
    let (l, i, s, d) = (
        ip_len.to_be_bytes(),
        id.to_be_bytes(),
        src.to_be_bytes(),
        dst.to_be_bytes(),
    );
    h[0] = 0x45;
    h[2] = l[0];
    h[3] = l[1];
    h[4] = i[0];
    h[5] = i[1];
    h[8] = TTL;
    h[9] = IPPROTO_UDP;
    h[12..16].copy_from_slice(&s);
    h[16..20].copy_from_slice(&d);
    let c = ip_checksum(&h).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    let (sp, dp, ul) = (
        sport.to_be_bytes(),
        VXLAN_PORT.to_be_bytes(),
        (ip_len - 20).to_be_bytes(),
    );
    h[20] = sp[0];
    h[21] = sp[1];
    h[22] = dp[0];
    h[23] = dp[1];
    h[24] = ul[0];
    h[25] = ul[1];
    // VXLAN: the I flag (VNI valid), then the VNI in the high 24 bits of the second word.
    h[28] = 0x08;
    let v = (vni << 8).to_be_bytes();
    h[32..36].copy_from_slice(&v);
    h[36..50].copy_from_slice(inner_eth);
    h
}

/// The one's complement of the one's complement sum of the first 20 bytes of `h` (an IPv4
/// header): the checksum to write when its field is zero, 0 when a whole header with its
/// checksum is right.
#[inline(always)]
fn ip_checksum(h: &[u8; ROOM]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
