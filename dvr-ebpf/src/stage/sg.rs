//! Security groups (stage, leaf): a packet a VM sends is checked against the egress rules of
//! its port's groups at the tap (`egress`), a packet delivered to a VM against the ingress
//! rules where it is delivered (`ingress`, from the tap's egress program), so a host never
//! trusts another host's decision about its own ports. The rules are two LPM lookups (see
//! `dvr_common::sg`): the remote address gives the class of rules naming it, the class with
//! direction, protocol and destination port (ICMP type and code) gives the admitting rule.
//!
//! Stateful groups (the OVS firewall's semantics): the original direction of a flow is
//! checked on every packet, so a flow no rule admits any more stops at its next packet (its
//! entries are deleted then); replies and related ICMP errors pass by the flow's conntrack
//! entries (`CT_SG` / `CT_SG_REPLY` in the port's zone `SG_ZONE | ifindex`, one table with
//! the NAT entries). Stateless groups check every packet against its own direction's rules
//! and track nothing. Base traffic always passes: DHCP between the VM's client and a
//! server (not a DHCP server in the VM); ARP is not IP and never comes here.
//!
//! IPv6 ([`check6`]): the same checks with the groups' IPv6 rules (remote trie
//! DVR_SG_REMOTE6, whose classes are IPv6 rules only, and the shared rule trie), flows in
//! DVR_CT6 in the same zones; related errors are ICMPv6 types 1-4. Base traffic: neighbour
//! discovery (solicitations and advertisements both ways, redirects to the VM) and
//! multicast listener discovery (`Flow6::is_base`), DHCPv6 between the VM's client (546)
//! and a server (547).
//!
//! Maps: reads DVR_SG_REMOTE, DVR_SG_REMOTE6, DVR_SG_RULES; reads and writes DVR_CT,
//! DVR_CT6. Verdicts:
//! drop_sg_egress, drop_sg_ingress, drop_ct_insert, drop_malformed.
use aya_ebpf::{helpers::bpf_skb_load_bytes, maps::lpm_trie::Key, programs::TcContext};
use dvr_common::{
    nat::{CT_SG, CT_SG_INGRESS, CT_SG_REPLY, CtEntry, CtKey6},
    port::{LocalPort, PORT_FLAG_SG_STATELESS},
    sg::{
        SG_EGRESS, SG_INGRESS, SG_REMOTE_PREFIX_BITS, SG_RULE_FULL_BITS, SG_ZONE, SgRemote6Key,
        SgRemoteKey, SgRuleKey,
    },
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_SG_REMOTE, DVR_SG_REMOTE6, DVR_SG_RULES},
        packet::{
            ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, IP6_HDR_LEN, IPPROTO_ICMP, IPPROTO_ICMPV6,
            IPPROTO_TCP, IPPROTO_UDP, ND_REDIRECT,
        },
        verdict::Verdict,
    },
    net::{
        conntrack,
        flow::{Flow, Parsed},
        flow6::Flow6,
    },
};

const IPPROTO_DCCP: u8 = 33;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;
const DHCP_SERVER: u16 = 67u16.to_be();
const DHCP_CLIENT: u16 = 68u16.to_be();
const DHCP6_CLIENT: u16 = 546u16.to_be();
const DHCP6_SERVER: u16 = 547u16.to_be();
/// ICMPv6 errors (destination unreachable, packet too big, time exceeded, parameter
/// problem): related to the flow of the packet they quote.
const ICMP6_ERR_MAX: u8 = 4;
const ICMP6_HDR_LEN: usize = 8;

/// Which way a packet goes relative to the port, and so which rules apply.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the VM: egress rules, the remote is the destination.
    Egress,
    /// To the VM: ingress rules, the remote is the source.
    Ingress,
}

impl Direction {
    #[inline(always)]
    fn code(self) -> u8 {
        match self {
            Direction::Egress => SG_EGRESS,
            Direction::Ingress => SG_INGRESS,
        }
    }

    /// Conntrack flag of a flow admitted in this direction.
    #[inline(always)]
    fn ct_flag(self) -> u8 {
        match self {
            Direction::Egress => 0,
            Direction::Ingress => CT_SG_INGRESS,
        }
    }

    #[inline(always)]
    fn refused(self) -> Verdict {
        Verdict::drop(match self {
            Direction::Egress => Stat::DropSgEgress,
            Direction::Ingress => Stat::DropSgIngress,
        })
    }

    /// Whether ports `sport` -> `dport` go from a `client` to a `server` port leaving the VM,
    /// from the server to the client reaching it (DHCP, DHCPv6).
    #[inline(always)]
    fn client_server(self, sport: u16, dport: u16, client: u16, server: u16) -> bool {
        match self {
            Direction::Egress => sport == client && dport == server,
            Direction::Ingress => sport == server && dport == client,
        }
    }

    /// A stateless port's verdict: whether a rule admitted the packet.
    #[inline(always)]
    fn stateless(self, admitted: Option<u32>) -> Result<(), Verdict> {
        match admitted {
            Some(_) => Ok(()),
            None => Err(self.refused()),
        }
    }
}

/// Check IPv4 packet `f` of the port on tap `ifindex` (whose flags carry `PORT_FLAG_SG`).
#[inline(always)]
pub fn check(
    ctx: &TcContext,
    f: &Flow,
    ifindex: u32,
    port: &LocalPort,
    dir: Direction,
) -> Result<(), Verdict> {
    f.require(Parsed::L4)?;
    if is_dhcp(f, dir) {
        return Ok(());
    }
    let port_key = port_of(ctx, f)?;
    let admitted = admits(f, port.policy, dir, port_key);
    if port.flags & PORT_FLAG_SG_STATELESS != 0 {
        return dir.stateless(admitted);
    }
    let zone = SG_ZONE | ifindex;
    let k = conntrack::flow_key(zone, f);
    let tracked = conntrack::track(&k, f);
    if let Some(rule_id) = admitted {
        if tracked.is_none() && !f.later_fragment && !f.is_icmp_error() {
            let e = CtEntry {
                nat_ip_be: f.saddr,
                peer_zone: zone,
                kind: CT_SG | dir.ct_flag(),
                // What the rules matched (port, or ICMP type and code), for the agent's
                // re-check of the flow after a policy change.
                fixed_be: port_key as u32,
                tcp_flags: f.tcp_flags,
                _reserved: rule_id,
                ..Default::default()
            };
            let pe = CtEntry {
                nat_ip_be: f.daddr,
                kind: CT_SG_REPLY | dir.ct_flag(),
                tcp_flags: 0,
                ..e
            };
            conntrack::create(&k, &e, &k.peer(&e), &pe, f)?;
        }
        return Ok(());
    }
    match tracked {
        // The reply of a flow admitted the other way.
        Some(e) if e.kind & CT_SG_REPLY != 0 => Ok(()),
        // The original direction of a flow that no rule admits any more: the flow ends
        // here (the OVS firewall marks such connections and drops their replies too).
        Some(e) => {
            conntrack::remove_flow(&k, &e);
            Err(dir.refused())
        }
        None if f.is_icmp_error() => related(ctx, f, zone, dir),
        None => Err(dir.refused()),
    }
}

/// Check IPv6 packet `f` of the port on the packet's tap (whose flags carry
/// `PORT_FLAG_SG`), as [`check`] does IPv4. A BPF-to-BPF call: its keys and entries live in
/// a frame of their own, not in the entry program's (whose frame holds the parsed flow), so
/// that neither frame passes 512 bytes; at most five arguments (the result's pointer is
/// one), so the tap's ifindex is read here.
#[inline(never)]
pub fn check6(ctx: &TcContext, f: &Flow6, port: &LocalPort, dir: Direction) -> Result<(), Verdict> {
    f.require(Parsed::L4)?;
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if is_base6(f, dir) {
        return Ok(());
    }
    let port_key = port_of6(ctx, f)?;
    let admitted = admits6(f, port.policy, dir, port_key);
    if port.flags & PORT_FLAG_SG_STATELESS != 0 {
        return dir.stateless(admitted);
    }
    let zone = SG_ZONE | ifindex;
    let mut k = conntrack::flow_key6(zone, f);
    let len = f.ip_len() as u64;
    let error = is_icmp6_error(f);
    // An error passes by the flow it quotes, never by its own tuple: ICMPv6 without an echo
    // id has ports 0, so an error's tuple can be the reply entry of any other ICMPv6 flow
    // between the two addresses (a node information query, say).
    let tracked = if error {
        None
    } else {
        conntrack::track6(&k, len, f.tcp_flags)
    };
    if let Some(rule_id) = admitted {
        if tracked.is_none() && !f.later_fragment && !error {
            // `fixed_be`: what the rules matched, for the agent's re-check (as IPv4).
            conntrack::create6(
                &mut k,
                dir.ct_flag(),
                port_key as u32,
                rule_id,
                f.tcp_flags,
                len,
            )?;
        }
        return Ok(());
    }
    match tracked {
        Some(kind) if kind & CT_SG_REPLY != 0 => Ok(()),
        Some(_) => {
            conntrack::remove_flow6(&mut k);
            Err(dir.refused())
        }
        None if error => related6(ctx, f, &mut k, dir),
        None => Err(dir.refused()),
    }
}

/// IPv6 base traffic: neighbour and multicast listener discovery (and redirects from the
/// router to the VM); DHCPv6 client to server leaving the VM, server to client reaching it.
#[inline(always)]
fn is_base6(f: &Flow6, dir: Direction) -> bool {
    if f.is_base() {
        return true;
    }
    if dir == Direction::Ingress && f.icmp6() == Some(ND_REDIRECT) {
        return true;
    }
    if f.proto != IPPROTO_UDP || f.later_fragment {
        return false;
    }
    dir.client_server(f.sport, f.dport, DHCP6_CLIENT, DHCP6_SERVER)
}

/// An ICMPv6 error (types 1-4) whose header was read.
#[inline(always)]
fn is_icmp6_error(f: &Flow6) -> bool {
    matches!(f.icmp6(), Some(t) if (1..=ICMP6_ERR_MAX).contains(&t))
}

/// An ICMPv6 error about a packet of one of the port's tracked IPv6 flows, either way. The
/// quoted packet's fixed header names its upper-layer protocol (extension headers in the
/// quote are not walked: such a quote is refused). `k` (the error's own key, in the port's
/// zone) is overwritten with the quoted packet's: no second key on the stack.
#[inline(always)]
fn related6(ctx: &TcContext, f: &Flow6, k: &mut CtKey6, dir: Direction) -> Result<(), Verdict> {
    let bad = |_| Verdict::drop(Stat::DropMalformed);
    let ip_off = f.l4_off + ICMP6_HDR_LEN;
    // Next header, hop limit; then the addresses.
    let nh: [u8; 2] = ctx.load(ip_off + 6).map_err(bad)?;
    // Both addresses straight into the key, where they sit together as in the header (a
    // load into a temporary would put 32 more bytes on this frame).
    let dst = (k as *mut CtKey6)
        .cast::<u8>()
        .wrapping_add(core::mem::offset_of!(CtKey6, saddr));
    // SAFETY: `saddr` and `daddr` are 32 contiguous bytes of `*k` (repr(C), asserted
    // layout); the helper writes exactly 32 bytes there or fails.
    let ret =
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), (ip_off + 8) as u32, dst.cast(), 32) };
    if ret != 0 {
        return Err(Verdict::drop(Stat::DropMalformed));
    }
    k.proto = nh[0];
    let l4_off = ip_off + IP6_HDR_LEN;
    let (sport, dport) = match k.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let p: [u8; 4] = ctx.load(l4_off).map_err(bad)?;
            (
                u16::from_ne_bytes([p[0], p[1]]),
                u16::from_ne_bytes([p[2], p[3]]),
            )
        }
        IPPROTO_ICMPV6 => {
            let p: [u8; 8] = ctx.load(l4_off).map_err(bad)?;
            if p[0] != ICMP6_ECHO_REQUEST && p[0] != ICMP6_ECHO_REPLY {
                return Err(dir.refused());
            }
            let id = u16::from_ne_bytes([p[4], p[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    k.sport_be = sport;
    k.dport_be = dport;
    if conntrack::tracked6(k) {
        Ok(())
    } else {
        Err(dir.refused())
    }
}

/// The IPv6 rule of policy `policy` that admits `f` in `dir`, by its id.
#[inline(always)]
fn admits6(f: &Flow6, policy: u32, dir: Direction, port_be: u16) -> Option<u32> {
    let remote = match dir {
        Direction::Egress => f.daddr,
        Direction::Ingress => f.saddr,
    };
    let rkey = Key::new(
        SG_REMOTE_PREFIX_BITS + 128,
        SgRemote6Key { policy, ip: remote },
    );
    let class = DVR_SG_REMOTE6.get(&rkey)?;
    rule(*class, dir, f.proto, port_be)
}

/// As [`port_of`] for IPv6: ICMPv6 type and code, or the destination port.
#[inline(always)]
fn port_of6(ctx: &TcContext, f: &Flow6) -> Result<u16, Verdict> {
    if f.later_fragment {
        return Ok(0);
    }
    Ok(match f.proto {
        IPPROTO_ICMPV6 => u16::from_ne_bytes([f.icmp_type, f.icmp_code]),
        IPPROTO_SCTP | IPPROTO_DCCP | IPPROTO_UDPLITE => {
            let b: [u8; 4] = ctx
                .load(f.l4_off)
                .map_err(|_| Verdict::drop(Stat::DropMalformed))?;
            u16::from_ne_bytes([b[2], b[3]])
        }
        _ => f.dport,
    })
}

/// An ICMP error about a packet of one of the port's tracked flows, either way.
#[inline(always)]
fn related(ctx: &TcContext, f: &Flow, zone: u32, dir: Direction) -> Result<(), Verdict> {
    let q = f.quoted(ctx)?;
    let k = conntrack::key(zone, q.saddr, q.daddr, q.sport, q.dport, q.proto);
    match conntrack::track(&k, f) {
        Some(_) => Ok(()),
        None => Err(dir.refused()),
    }
}

/// DHCP between the VM's client and a server: client to server leaving the VM, server to
/// client reaching it.
#[inline(always)]
fn is_dhcp(f: &Flow, dir: Direction) -> bool {
    if f.proto != IPPROTO_UDP || f.later_fragment {
        return false;
    }
    dir.client_server(f.sport, f.dport, DHCP_CLIENT, DHCP_SERVER)
}

/// The rule of policy `policy` that admits `f` in `dir` (whose destination port, or ICMP
/// type and code, is `port_be`), by its id.
#[inline(always)]
fn admits(f: &Flow, policy: u32, dir: Direction, port_be: u16) -> Option<u32> {
    let remote = match dir {
        Direction::Egress => f.daddr,
        Direction::Ingress => f.saddr,
    };
    let rkey = Key::new(
        SG_REMOTE_PREFIX_BITS + 32,
        SgRemoteKey {
            policy,
            ip_be: remote,
        },
    );
    let class = DVR_SG_REMOTE.get(&rkey)?;
    rule(*class, dir, f.proto, port_be)
}

/// The rule of remote class `class` (either family) that admits protocol `proto` with
/// destination port (or ICMP type and code) `port_be` in `dir`, by its id (DVR_SG_RULES).
#[inline(always)]
fn rule(class: u32, dir: Direction, proto: u8, port_be: u16) -> Option<u32> {
    let key = Key::new(
        SG_RULE_FULL_BITS,
        SgRuleKey {
            class,
            dir: dir.code(),
            proto,
            port_be,
        },
    );
    DVR_SG_RULES.get(&key).map(|r| r.rule_id)
}

/// What a rule's port range matches: the destination port (TCP, UDP, SCTP, DCCP, UDP-Lite),
/// ICMP type and code, else 0. A later fragment has no L4 header: 0 (only a rule without a
/// port range admits it).
#[inline(always)]
fn port_of(ctx: &TcContext, f: &Flow) -> Result<u16, Verdict> {
    if f.later_fragment {
        return Ok(0);
    }
    let bad = |_| Verdict::drop(Stat::DropMalformed);
    Ok(match f.proto {
        IPPROTO_ICMP => {
            let b: [u8; 2] = ctx.load(f.l4_off).map_err(bad)?;
            u16::from_ne_bytes(b)
        }
        IPPROTO_SCTP | IPPROTO_DCCP | IPPROTO_UDPLITE => {
            let b: [u8; 4] = ctx.load(f.l4_off).map_err(bad)?;
            u16::from_ne_bytes([b[2], b[3]])
        }
        _ => f.dport,
    })
}
