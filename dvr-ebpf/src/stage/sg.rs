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
//! IPv6: the groups' IPv6 rules are not enforced yet, so a port with security groups fails
//! closed: only its base traffic (neighbour discovery and multicast listener discovery, see
//! `Flow6::is_base`) passes, everything else is refused ([`check6`]).
//!
//! Maps: reads DVR_SG_REMOTE, DVR_SG_RULES; reads and writes DVR_CT. Verdicts:
//! drop_sg_egress, drop_sg_ingress, drop_ct_insert, drop_malformed.
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use dvr_common::{
    nat::{CT_SG, CT_SG_INGRESS, CT_SG_REPLY, CtEntry},
    port::{LocalPort, PORT_FLAG_SG_STATELESS},
    sg::{
        SG_EGRESS, SG_INGRESS, SG_REMOTE_PREFIX_BITS, SG_RULE_FULL_BITS, SG_ZONE, SgRemoteKey,
        SgRuleKey,
    },
    stats::Stat,
};

use crate::{
    base::{
        maps::{DVR_SG_REMOTE, DVR_SG_RULES},
        packet::{IPPROTO_ICMP, IPPROTO_UDP},
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
        return match admitted {
            Some(_) => Ok(()),
            None => Err(dir.refused()),
        };
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

/// Check IPv6 packet `f` of a port whose flags carry `PORT_FLAG_SG`. IPv6 rules are not
/// enforced yet: fail closed, letting only base traffic through.
#[inline(always)]
pub fn check6(f: &Flow6, dir: Direction) -> Result<(), Verdict> {
    if f.is_base() {
        Ok(())
    } else {
        Err(dir.refused())
    }
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
    match dir {
        Direction::Egress => f.sport == DHCP_CLIENT && f.dport == DHCP_SERVER,
        Direction::Ingress => f.sport == DHCP_SERVER && f.dport == DHCP_CLIENT,
    }
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
    let key = Key::new(
        SG_RULE_FULL_BITS,
        SgRuleKey {
            class: *class,
            dir: dir.code(),
            proto: f.proto,
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
