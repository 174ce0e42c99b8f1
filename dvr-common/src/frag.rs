//! Path MTU: what the datapath does with a packet longer than the MTU of the network it is
//! delivered into (a network's `mtu`, carried in `Route`, `Route6`, `FipEntry`, `FipSrc`,
//! `SnatRouter` and `SnatSteer`). With DF set (IPv4) or always (IPv6: routers never
//! fragment) the sender gets ICMP fragmentation needed / packet too big with that MTU, from
//! the router address it sent through, at most [`ICMP_PER_SEC`] per second per CPU (burst
//! [`ICMP_BURST`], as Linux's `icmp_msgs_per_sec`). An IPv4 packet without DF is sent as
//! fragments (RFC 791), as the namespace router's kernel does: the first fragment is the
//! packet cut to the largest multiple of 8 payload bytes that fits, each further one the
//! next slice of the payload saved in a per-CPU buffer ([`Scratch`]) beforehand.
//!
//! Both the IPv4 ICMP errors and the fragments are built by the program's entry point, not
//! by the stage that decides them: the stage leaves the job in [`Scratch`] and ends with a
//! deferred verdict, so that the code exists once per program and its stack frame is not
//! stacked on a pipeline's (the verifier's 512-byte limit for a chain of calls).

/// ICMP errors the router sends, per second per CPU, and burst (Linux: `icmp_msgs_per_sec`
/// 1000, `icmp_msgs_burst` 50).
pub const ICMP_PER_SEC: u64 = 1000;
pub const ICMP_BURST: u64 = 50;

/// Payload bytes the fragmenter can hold beyond the first fragment (the IPv4 payload less
/// the first fragment's share): a 9000-byte jumbo packet into the IPv4 minimum needs more
/// fragments than [`FRAG_MAX`], so this covers every packet it can fragment.
pub const FRAG_SAVE_MAX: usize = 8192;
/// The largest fragment payload (bytes): an MTU up to 8212 is cut for (a 9000-byte MTU
/// network is never the smaller side of a path in practice).
pub const FRAG_PAYLOAD_MAX: usize = 8192;
/// Fragments per packet at most: more is dropped as `drop_frag_failed`.
pub const FRAG_MAX: u32 = 8;
/// The smallest MTU the fragmenter cuts for (RFC 791's 68, rounded up to a usable slice).
pub const FRAG_MTU_MIN: u16 = 68;

/// The per-CPU scratch of a program run: the deferred job a stage leaves for the entry
/// point (an ICMP error to send, or the fragments of a packet), and the fragmenter's
/// buffer. The buffer is sized so that any offset below [`FRAG_SAVE_MAX`] plus any slice
/// up to [`FRAG_PAYLOAD_MAX`] stays inside it, which is what the verifier checks of a
/// variable offset and length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    /// The IPv4 header of the fragment being written (kept here, off the BPF stack).
    pub hdr: [u8; 20],
    /// Where the deferred packet goes: the fragments' interface, or the interface the
    /// ICMP error is sent back out of.
    pub out_ifindex: u32,
    /// The MTU to fragment for, or the MTU an ICMP error reports (0: none).
    pub mtu: u16,
    /// The ICMP error's type and code.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The ICMP error's source address, network order.
    pub icmp_src_be: u32,
    /// The payload beyond a packet's first fragment.
    pub data: [u8; FRAG_SAVE_MAX + FRAG_PAYLOAD_MAX],
}
crate::assert_size!(Scratch, 32 + FRAG_SAVE_MAX + FRAG_PAYLOAD_MAX);

crate::user_pod!(Scratch);

/// How an IPv4 payload of `payload` bytes is cut for `mtu`: `(slice, count)`, the payload
/// bytes of every fragment but the last (a multiple of 8) and the number of fragments.
/// `None` when it cannot be: an MTU below [`FRAG_MTU_MIN`], more than [`FRAG_MAX`]
/// fragments, or more than [`FRAG_SAVE_MAX`] bytes beyond the first fragment.
#[inline(always)]
pub const fn plan(payload: u32, mtu: u16) -> Option<(u32, u32)> {
    if mtu < FRAG_MTU_MIN {
        return None;
    }
    let slice = ((mtu as u32 - 20) / 8) * 8;
    if slice as usize > FRAG_PAYLOAD_MAX {
        return None;
    }
    let count = payload.div_ceil(slice);
    if count > FRAG_MAX || count < 2 || (payload - slice) as usize > FRAG_SAVE_MAX {
        return None;
    }
    Some((slice, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ethernet_packet_into_1450_is_two_fragments() {
        // 1500-byte packet: 1480 payload; 1450 - 20 = 1430 -> 1424 per fragment.
        assert_eq!(plan(1480, 1450), Some((1424, 2)));
        assert_eq!(plan(1480, 1400), Some((1376, 2)));
        // Exactly three slices.
        assert_eq!(plan(3 * 1424, 1450), Some((1424, 3)));
        assert_eq!(plan(3 * 1424 + 1, 1450), Some((1424, 4)));
    }

    #[test]
    fn refuses_what_it_cannot_cut() {
        // Fits: nothing to cut.
        assert_eq!(plan(1000, 1450), None);
        assert_eq!(plan(1480, 60), None);
        // 9000-byte packet into 576: 16 fragments.
        assert_eq!(plan(8980, 576), None);
        assert_eq!(plan(8980, 1500), Some((1480, 7)));
        // Slices beyond the fragmenter's buffer.
        assert_eq!(plan(12000, 9000), None);
    }
}
