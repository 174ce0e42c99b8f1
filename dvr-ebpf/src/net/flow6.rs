//! The parsed IPv6 packet (layer: net), the counterpart of `flow` for ETH_P_IPV6: parsed
//! once by the entry program and passed down to every stage. Addresses, hop limit, payload
//! length; then a bounded walk of the extension headers (hop-by-hop, routing, destination
//! options, fragment) to the upper-layer protocol and its offset; then its tuple: ports
//! (ICMPv6 echo id in both, as in `Flow`), TCP flags, ICMPv6 type and code. Headers past
//! the fixed one are read with bpf_skb_load_bytes at their variable offsets, so no
//! variable-offset packet pointer reaches the verifier. Maps: none. Verdicts:
//! drop_malformed, drop_ext_hdr (from `require`).
//!
//! As `Flow`, parsing never fails by itself: how far it got is kept in [`Parsed`] and each
//! entry or stage `require`s what it uses.
use aya_ebpf::programs::TcContext;
use dvr_common::{ip6::Ip6, stats::Stat};

use crate::{
    base::{
        packet::{
            ETH_LEN, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_INFO_MIN, IP6_HDR_LEN, IP6_L4_OFF,
            IP6_OFFSET, IPPROTO_ICMPV6, IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING,
            Ipv6Hdr, MLD_DONE, MLD_QUERY, MLD_REPORT, MLD2_REPORT, ND_NEIGHBOR_ADVERT, ND_REDIRECT,
            ND_ROUTER_SOLICIT, be16, ip6_words, ptr_at,
        },
        verdict::Verdict,
    },
    net::flow::{self, Parsed},
};

/// Most extension headers walked before the upper-layer header: enough for hop-by-hop,
/// destination options, routing, fragment and destination options again (RFC 8200 4.1's
/// order, each at most once but destination options); a longer chain is dropped
/// (drop_ext_hdr), as no stage could see what it carries.
pub const EXT_HDRS_MAX: usize = 5;

/// Where an IPv6 packet's upper-layer header is.
#[derive(Clone, Copy)]
pub struct Flow6 {
    pub saddr: Ip6,
    pub daddr: Ip6,
    pub sport: u16,
    pub dport: u16,
    /// The upper-layer protocol (the last next header of the chain).
    pub proto: u8,
    pub tcp_flags: u8,
    /// ICMPv6 type and code (ICMPv6 only).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub hop_limit: u8,
    /// The packet carries a fragment header (possibly an atomic fragment).
    pub fragment: bool,
    /// A fragment other than the first: no upper-layer header.
    pub later_fragment: bool,
    /// The source is `::` (duplicate address detection, multicast listener reports).
    pub src_unspecified: bool,
    /// Payload length of the fixed header (extension headers included).
    pub payload_len: u16,
    /// Offset of the upper-layer header in the frame.
    pub l4_off: usize,
    pub parsed: Parsed,
    /// What `require` reports below `parsed`: drop_ext_hdr when the extension header chain
    /// was too long, else drop_malformed.
    short: Stat,
}

impl Flow6 {
    /// Parse the IPv6 packet after the Ethernet header. A BPF-to-BPF call: the flow then
    /// lives in the caller's stack as one struct, where inlined its addresses were split
    /// into bytes that did not fit in the stack frame.
    #[inline(never)]
    pub fn parse(ctx: &TcContext) -> Flow6 {
        let mut f = Flow6 {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            proto: 0,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            hop_limit: 0,
            fragment: false,
            later_fragment: false,
            src_unspecified: false,
            payload_len: 0,
            l4_off: 0,
            parsed: Parsed::Nothing,
            short: Stat::DropMalformed,
        };
        let Ok(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return f;
        };
        // SAFETY: bounds-checked by ptr_at; Ipv6Hdr is all bytes (no alignment).
        let ip = unsafe { &*ip };
        f.saddr = ip.src_addr;
        f.daddr = ip.dst_addr;
        f.src_unspecified = ip6_words(&ip.src_addr) == (0, 0);
        f.hop_limit = ip.hop_limit;
        f.payload_len = be16(ip.payload_len);
        let mut nh = ip.next_hdr;
        let version = ip.vcf[0] >> 4;
        f.parsed = Parsed::Header;
        if version != 6 {
            return f;
        }
        let mut off = IP6_L4_OFF;
        let mut n = 0;
        while is_extension(nh) && !f.later_fragment {
            if n == EXT_HDRS_MAX {
                f.short = Stat::DropExtHdr;
                return f;
            }
            n += 1;
            // Next header, then the length in 8-byte units past the first 8; the fragment
            // header (8 bytes) has its offset word there instead.
            let Ok(h) = ctx.load::<[u8; 4]>(off) else {
                return f;
            };
            if nh == IPV6_FRAGMENT {
                f.fragment = true;
                f.later_fragment = be16([h[2], h[3]]) & IP6_OFFSET != 0;
                off += 8;
            } else {
                off += (h[1] as usize + 1) * 8;
            }
            nh = h[0];
        }
        f.proto = nh;
        f.l4_off = off;
        f.parsed = Parsed::Ip;
        if !f.later_fragment {
            if f.upper(ctx).is_err() {
                return f;
            }
        }
        f.parsed = Parsed::L4;
        f
    }

    /// Read the upper-layer tuple at `l4_off`.
    #[inline(always)]
    fn upper(&mut self, ctx: &TcContext) -> Result<(), Verdict> {
        if self.proto == IPPROTO_ICMPV6 {
            let b: [u8; 8] = ctx
                .load(self.l4_off)
                .map_err(|_| Verdict::drop(Stat::DropMalformed))?;
            self.icmp_type = b[0];
            self.icmp_code = b[1];
            if b[0] == ICMP6_ECHO_REQUEST || b[0] == ICMP6_ECHO_REPLY {
                let id = u16::from_ne_bytes([b[4], b[5]]);
                self.sport = id;
                self.dport = id;
            }
            return Ok(());
        }
        let (s, d, flags, _) = flow::ports(ctx, self.proto, self.l4_off)?;
        self.sport = s;
        self.dport = d;
        self.tcp_flags = flags;
        Ok(())
    }

    /// `Err` unless the packet was parsed up to `level`: drop_ext_hdr when the extension
    /// header chain was too long to walk, else drop_malformed.
    #[inline(always)]
    pub fn require(&self, level: Parsed) -> Result<(), Verdict> {
        if self.parsed >= level {
            Ok(())
        } else {
            Err(Verdict::drop(self.short))
        }
    }

    /// The ICMPv6 type, for an ICMPv6 packet whose header was read.
    #[inline(always)]
    pub fn icmp6(&self) -> Option<u8> {
        if self.proto == IPPROTO_ICMPV6 && self.parsed == Parsed::L4 && !self.later_fragment {
            Some(self.icmp_type)
        } else {
            None
        }
    }

    /// Neighbour discovery (router and neighbour solicitation and advertisement, redirect).
    #[inline(always)]
    pub fn is_nd(&self) -> bool {
        matches!(self.icmp6(), Some(t) if (ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&t))
    }

    /// What a port may always send and receive whatever its security groups: neighbour
    /// discovery but redirects, and multicast listener discovery.
    #[inline(always)]
    pub fn is_base(&self) -> bool {
        matches!(
            self.icmp6(),
            Some(
                ND_ROUTER_SOLICIT
                    ..=ND_NEIGHBOR_ADVERT | MLD_QUERY | MLD_REPORT | MLD_DONE | MLD2_REPORT
            )
        )
    }

    /// An ICMPv6 error, or an ICMPv6 packet whose type cannot be seen (a later fragment):
    /// never answered with an error (RFC 4443 2.4 (e)).
    #[inline(always)]
    pub fn is_icmp6_error(&self) -> bool {
        self.proto == IPPROTO_ICMPV6 && (self.later_fragment || self.icmp_type < ICMP6_INFO_MIN)
    }

    /// Length of the packet from the IPv6 header on, as its header says.
    #[inline(always)]
    pub fn ip_len(&self) -> usize {
        IP6_HDR_LEN + self.payload_len as usize
    }
}

#[inline(always)]
fn is_extension(nh: u8) -> bool {
    matches!(
        nh,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DSTOPTS
    )
}
