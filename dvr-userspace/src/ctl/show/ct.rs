//! `dvrctl show conntrack`: the rows of `DVR_CT` (floating IP, SNAT and IPv4 security group
//! flows) and `DVR_CT6` (IPv6 security group flows), and their table cells.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

use crate::{
    conntrack,
    ctl::{
        ip_be,
        names::{Names, rule_label},
        proto_name, render,
    },
    maps::{HostMaps, MapsError},
    model::{PROTO_ICMP, PROTO_ICMPV6, has_ports},
};
use dvr_common::{
    nat::{CT_DNAT, CT_HAIRPIN, CT_PAT, CT_SG, CT_SG_INGRESS, CtEntry, CtKey, CtKey6},
    sg::SG_ZONE,
};

#[derive(Serialize)]
struct CtRow {
    zone: u32,
    /// A security group entry's port: the tap ifindex of its zone (`SG_ZONE | ifindex`).
    sg_ifindex: Option<u32>,
    /// A security group entry: `original` (admitted by a rule) or `reply`.
    sg: Option<&'static str>,
    /// The direction of the rule that admitted the flow: `ingress` (it came to the VM first)
    /// or `egress`.
    sg_direction: Option<&'static str>,
    /// The rule that admitted the flow (its id with a state, else its hash).
    sg_rule: Option<String>,
    /// What the rules matched when the flow was admitted, as the agent's re-check looks it
    /// up again: `port N`, or `type T code C` for ICMP (null for protocols without ports).
    sg_match: Option<String>,
    proto: String,
    /// IPv4, or IPv6 for the security group flows of `DVR_CT6`.
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    /// `dnat`, `snat`, or `none` for a security group entry.
    nat: &'static str,
    hairpin: bool,
    nat_ip: Ipv4Addr,
    /// Translated port (port-address translation), null when ports are kept.
    nat_port: Option<u16>,
    pat: bool,
    fip: Ipv4Addr,
    fixed: Ipv4Addr,
    state: &'static str,
    age_s: f64,
    idle_s: f64,
    packets: u64,
    bytes: u64,
}

/// What a security group flow's rules matched, from its entry's `fixed_be` (the rule
/// trie's port slot: the destination port in network order, or ICMP type and code).
fn sg_match(proto: u8, fixed_be: u32) -> Option<String> {
    let slot = fixed_be as u16;
    match proto {
        PROTO_ICMP | PROTO_ICMPV6 => {
            let [t, c] = slot.to_ne_bytes();
            Some(format!("type {t} code {c}"))
        }
        p if has_ports(p) => Some(format!("port {}", u16::from_be(slot))),
        _ => None,
    }
}

/// The rule a security group entry was admitted by: its own `_reserved`, or (a reply
/// entry that does not keep it) its original direction's.
fn sg_rule_of(e: &CtEntry, peer: Option<&CtEntry>) -> u32 {
    if e.kind & CT_SG == 0 && e._reserved == 0 {
        peer.map_or(0, |p| p._reserved)
    } else {
        e._reserved
    }
}

fn ct_rows(entries: &BTreeMap<CtKey, CtEntry>, now: u64, names: Option<&Names>) -> Vec<CtRow> {
    let secs = |t: u64| now.saturating_sub(t) as f64 / 1e9;
    entries
        .iter()
        .map(|(k, e)| {
            let peer = entries.get(&k.peer(e));
            let peer_flags = peer.map_or(0, |p| p.tcp_flags);
            let sg = conntrack::is_sg(k, e);
            CtRow {
                zone: k.zone,
                sg_ifindex: sg.then_some(k.zone & !SG_ZONE),
                sg: sg.then_some(if e.kind & CT_SG != 0 {
                    "original"
                } else {
                    "reply"
                }),
                sg_direction: sg.then_some(if e.kind & CT_SG_INGRESS != 0 {
                    "ingress"
                } else {
                    "egress"
                }),
                sg_rule: sg.then(|| rule_label(names, sg_rule_of(e, peer))),
                sg_match: sg.then(|| sg_match(k.proto, e.fixed_be)).flatten(),
                proto: proto_name(k.proto),
                src: ip_be(k.saddr_be).into(),
                dst: ip_be(k.daddr_be).into(),
                sport: u16::from_be(k.sport_be),
                dport: u16::from_be(k.dport_be),
                nat: if sg {
                    "none"
                } else if e.kind & CT_DNAT != 0 {
                    "dnat"
                } else {
                    "snat"
                },
                hairpin: e.kind & CT_HAIRPIN != 0,
                nat_ip: ip_be(e.nat_ip_be),
                nat_port: (e.nat_port_be != 0).then(|| u16::from_be(e.nat_port_be)),
                pat: e.kind & CT_PAT != 0,
                fip: ip_be(e.fip_be),
                fixed: ip_be(e.fixed_be),
                state: conntrack::state(k.proto, e.tcp_flags, peer_flags).as_str(),
                age_s: secs(e.created_ns),
                idle_s: secs(e.last_seen_ns),
                packets: e.packets,
                bytes: e.bytes,
            }
        })
        .collect()
}

/// The rows of `DVR_CT6`: IPv6 security group flows (the other direction is the reversed
/// key; nothing is translated, so the NAT columns stay empty).
fn ct6_rows(entries: &BTreeMap<CtKey6, CtEntry>, now: u64, names: Option<&Names>) -> Vec<CtRow> {
    let secs = |t: u64| now.saturating_sub(t) as f64 / 1e9;
    entries
        .iter()
        .map(|(k, e)| {
            let peer = entries.get(&k.reversed());
            CtRow {
                zone: k.zone,
                sg_ifindex: Some(k.zone & !SG_ZONE),
                sg: Some(if e.kind & CT_SG != 0 {
                    "original"
                } else {
                    "reply"
                }),
                sg_direction: Some(if e.kind & CT_SG_INGRESS != 0 {
                    "ingress"
                } else {
                    "egress"
                }),
                sg_rule: Some(rule_label(names, sg_rule_of(e, peer))),
                sg_match: sg_match(k.proto, e.fixed_be),
                proto: proto_name(k.proto),
                src: Ipv6Addr::from(k.saddr).into(),
                dst: Ipv6Addr::from(k.daddr).into(),
                sport: u16::from_be(k.sport_be),
                dport: u16::from_be(k.dport_be),
                nat: "none",
                hairpin: false,
                nat_ip: Ipv4Addr::UNSPECIFIED,
                nat_port: None,
                pat: false,
                fip: Ipv4Addr::UNSPECIFIED,
                fixed: Ipv4Addr::UNSPECIFIED,
                state: conntrack::state(k.proto, e.tcp_flags, peer.map_or(0, |p| p.tcp_flags))
                    .as_str(),
                age_s: secs(e.created_ns),
                idle_s: secs(e.last_seen_ns),
                packets: e.packets,
                bytes: e.bytes,
            }
        })
        .collect()
}

/// `address:port`, an IPv6 address in brackets.
fn endpoint(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The ZONE and NAT/TO cells of a conntrack row: a security group entry shows its port
/// (`sg:<tap ifindex>`), its direction and the admitting rule.
fn ct_cells(r: &CtRow) -> (String, String, String) {
    match (r.sg_ifindex, r.sg, r.sg_direction, &r.sg_rule) {
        (Some(ifx), Some(side), Some(dir), Some(rule)) => (
            format!("sg:{ifx}"),
            format!("sg-{side}"),
            format!("{dir} rule {rule}"),
        ),
        _ => (
            r.zone.to_string(),
            format!(
                "{}{}{}",
                r.nat,
                if r.hairpin { "+hairpin" } else { "" },
                if r.pat { "+pat" } else { "" }
            ),
            match r.nat_port {
                Some(p) => format!("{}:{p}", r.nat_ip),
                None => r.nat_ip.to_string(),
            },
        ),
    }
}

/// `dvrctl show conntrack`: both tables, as JSON or an aligned table.
pub(super) fn show(
    maps: &HostMaps,
    names: Option<&Names>,
    json: bool,
) -> Result<String, MapsError> {
    let now = crate::clock::conntrack_now_ns();
    let mut rows = ct_rows(&maps.ct.read()?, now, names);
    rows.extend(ct6_rows(&maps.ct6.read()?, now, names));
    Ok(render(
        json,
        &rows,
        &[
            "ZONE", "PROTO", "SRC", "DST", "NAT", "TO", "STATE", "AGE", "IDLE", "PKTS", "BYTES",
        ],
        |r| {
            let (zone, nat, to) = ct_cells(r);
            vec![
                zone,
                r.proto.clone(),
                endpoint(&r.src, r.sport),
                endpoint(&r.dst, r.dport),
                nat,
                to,
                r.state.to_string(),
                format!("{:.0}s", r.age_s),
                format!("{:.1}s", r.idle_s),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvr_common::nat::{CT_SG_REPLY, TCP_ACK, TCP_SYN};

    /// A security group flow of tap 7 (10.0.0.5:40000 -> 10.0.0.9:22, TCP) admitted by the
    /// rule with hash 0x1234, and a floating IP flow.
    fn entries() -> BTreeMap<CtKey, CtEntry> {
        let k = CtKey {
            zone: SG_ZONE | 7,
            saddr_be: u32::from_ne_bytes([10, 0, 0, 5]),
            daddr_be: u32::from_ne_bytes([10, 0, 0, 9]),
            sport_be: 40000u16.to_be(),
            dport_be: 22u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: k.saddr_be,
            peer_zone: k.zone,
            kind: CT_SG | CT_SG_INGRESS,
            tcp_flags: TCP_SYN | TCP_ACK,
            fixed_be: u32::from(22u16.to_be()),
            _reserved: 0x1234,
            ..Default::default()
        };
        let pk = k.peer(&e);
        let pe = CtEntry {
            nat_ip_be: pk.saddr_be,
            kind: CT_SG_REPLY | CT_SG_INGRESS,
            _reserved: 0,
            ..e
        };
        let nat = CtKey {
            zone: 0,
            saddr_be: 1,
            daddr_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto: 17,
            _pad: [0; 3],
        };
        let ne = CtEntry {
            nat_ip_be: u32::from_ne_bytes([192, 0, 2, 5]),
            peer_zone: 101,
            kind: CT_DNAT,
            ..Default::default()
        };
        BTreeMap::from([(k, e), (pk, pe), (nat, ne)])
    }

    #[test]
    fn conntrack_names_security_group_entries() {
        let rows = ct_rows(&entries(), 0, None);
        let sg: Vec<(String, String, String)> = rows
            .iter()
            .filter(|r| r.sg.is_some())
            .map(ct_cells)
            .collect();
        assert_eq!(
            sg,
            [
                (
                    "sg:7".into(),
                    "sg-original".into(),
                    "ingress rule 00001234".into()
                ),
                (
                    "sg:7".into(),
                    "sg-reply".into(),
                    "ingress rule 00001234".into()
                ),
            ],
            "the reply names its flow's rule"
        );
        assert!(
            rows.iter()
                .filter(|r| r.sg.is_some())
                .all(|r| r.nat == "none" && r.state == "established" && r.sg_ifindex == Some(7))
        );
        let nat = rows
            .iter()
            .find(|r| r.sg.is_none())
            .unwrap_or_else(|| panic!("no NAT row"));
        assert_eq!(
            ct_cells(nat),
            ("0".into(), "dnat".into(), "192.0.2.5".into())
        );
        let json = serde_json::to_value(&rows).unwrap_or_default();
        // Rows in key order: the NAT entry (zone 0) first.
        assert_eq!(json[0]["sg"], serde_json::Value::Null);
        assert_eq!(json[1]["zone"], SG_ZONE | 7, "zone stays the raw number");
        assert_eq!(json[1]["sg"], "original");
        assert_eq!(json[1]["sg_rule"], "00001234");
        assert_eq!(json[1]["sg_match"], "port 22");
        assert_eq!(json[2]["sg_match"], "port 22", "the reply keeps it too");
        assert_eq!(json[0]["sg_match"], serde_json::Value::Null);
        let echo = u32::from(u16::from_ne_bytes([8, 0]));
        assert_eq!(sg_match(1, echo).as_deref(), Some("type 8 code 0"));
        assert_eq!(sg_match(47, 5), None);
    }
}
