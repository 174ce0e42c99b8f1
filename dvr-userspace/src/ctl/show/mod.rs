//! `dvrctl show ports|fdb|endpoints|routes|fips|snat|ha|vips|sg|conntrack|stats [--json]`:
//! the live maps of a host (`sg` is in [`super::sg`], `conntrack` in [`ct`]). `endpoints` and `routes` list the IPv4
//! entries, then the IPv6 ones (`endpoints6`, `routes6`); `fdb` shows both gateway MACs.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

mod ct;

use super::{fmt_mac, ip_be, ip_host, names::Names, proto_name, render};
use crate::maps::{HostMaps, MapsError};
use dvr_common::{
    ip6::{Addr6, Ip6Key, ROUTE6_KEY_PREFIX_BITS, Route6, Route6Key},
    l2::{FdbEntry, FdbKey},
    nat::{CT_PAT, CT_SNAT, FIP_CENTRAL, FIP_LOCAL, FIP_REMOTE, FIP_UNASSOCIATED},
    port::PORT_FLAG_SECURITY,
    route::{Endpoint, IpKey, ROUTE_KEY_PREFIX_BITS, Route, RouteKey},
    snat::{SNAT_ENABLED, SNAT_ROUTED6, fence_active},
    stats::Stat,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Subject {
    Ports,
    Fdb,
    Endpoints,
    Routes,
    Fips,
    Snat,
    /// HA fences: the HA routers this host serves now, or served recently.
    Ha,
    Vips,
    /// Security groups: each local port's policy, its remote prefixes and rules (`--port`).
    Sg,
    Conntrack,
    Stats,
}

/// How to show: JSON or a table, which port (`show sg`), and the ids behind the hashes.
#[derive(Clone, Copy, Default)]
pub struct ShowOpts<'a> {
    pub json: bool,
    /// `show sg`: only the port on this tap ifindex.
    pub port: Option<u32>,
    /// Ids of ports and rules, from a state (`--state`).
    pub names: Option<&'a Names>,
}

#[derive(Serialize)]
struct PortRow {
    ifindex: u32,
    vni: u32,
    mac: String,
    port_security: bool,
    port_id_hash: String,
}

#[derive(Serialize)]
struct FdbRow {
    vni: u32,
    mac: String,
    ifindex: u32,
    remote: Option<Ipv4Addr>,
    gateway_mac: Option<String>,
    /// The gateway MAC of the port's IPv6 subnet.
    gateway_mac6: Option<String>,
}

/// One entry of `endpoints` or `endpoints6`.
#[derive(Serialize)]
struct EndpointRow {
    vni: u32,
    ip: IpAddr,
    mac: String,
    ifindex: u32,
    remote: Option<Ipv4Addr>,
}

/// One entry of `routes` or `routes6`: a connected subnet, or an extra route with its next
/// hop.
#[derive(Serialize)]
struct RouteRow {
    router_id: String,
    cidr: String,
    /// The extra route's next hop; `None` for a connected subnet.
    nexthop: Option<IpAddr>,
    vni: u32,
    gateway_ip: IpAddr,
    gateway_mac: String,
    /// The MTU of the network the packets are delivered into.
    mtu: u16,
}

impl RouteRow {
    /// The next hop cell: `via ADDRESS`, or `connected`.
    fn via(&self) -> String {
        self.nexthop
            .map_or_else(|| "connected".to_string(), |ip| format!("via {ip}"))
    }
}

#[derive(Serialize)]
struct FipRow {
    fip: Ipv4Addr,
    fixed_ip: Ipv4Addr,
    vni: u32,
    kind: &'static str,
    ifindex: u32,
    remote: Option<Ipv4Addr>,
    port_mac: String,
    gateway_mac: String,
}

#[derive(Serialize)]
struct SnatRow {
    router_id: String,
    external_ip: Ipv4Addr,
    next_hop: Ipv4Addr,
    enabled: bool,
    /// Translated flows now (one per mapping).
    flows: usize,
    /// External ports in use per destination (ip:port/proto), most used first.
    busiest_destinations: Vec<(String, usize)>,
    /// New flows refused for lack of a port since the datapath loaded.
    exhausted: u64,
}

#[derive(Serialize)]
struct HaRow {
    router_id: String,
    /// The fence: CLOCK_MONOTONIC ns until which this host serves the router.
    active_until_ns: u64,
    /// Until the fence expires; negative once it has.
    remaining_ms: f64,
    active: bool,
}

fn fdb_rows(fdb: BTreeMap<FdbKey, FdbEntry>) -> Vec<FdbRow> {
    let mac_or_none = |m: [u8; 6]| (m != [0; 6]).then(|| fmt_mac(m));
    fdb.into_iter()
        .map(|(k, e)| FdbRow {
            vni: k.vni,
            mac: fmt_mac(k.mac),
            ifindex: e.ifindex,
            remote: ip_host(e.tunnel_ip_host),
            gateway_mac: mac_or_none(e.gw_mac),
            gateway_mac6: mac_or_none(e.gw_mac6),
        })
        .collect()
}

/// The IPv4 endpoints, then the IPv6 ones.
fn endpoint_rows(
    v4: BTreeMap<IpKey, Endpoint>,
    v6: BTreeMap<Ip6Key, Endpoint>,
) -> Vec<EndpointRow> {
    let row = |vni: u32, ip: IpAddr, e: Endpoint| EndpointRow {
        vni,
        ip,
        mac: fmt_mac(e.mac),
        ifindex: e.ifindex,
        remote: ip_host(e.tunnel_ip_host),
    };
    let v4 = v4
        .into_iter()
        .map(|(k, e)| row(k.vni, ip_be(k.ip_be).into(), e));
    let v6 = v6
        .into_iter()
        .map(|(k, e)| row(k.vni, Ipv6Addr::from(k.ip).into(), e));
    v4.chain(v6).collect()
}

/// The IPv4 routes, then the IPv6 ones.
fn route_rows(
    v4: BTreeMap<(u32, RouteKey), Route>,
    v6: BTreeMap<(u32, Route6Key), Route6>,
) -> Vec<RouteRow> {
    let v4 = v4.into_iter().map(|((plen, k), r)| RouteRow {
        router_id: format!("{:08x}", u32::from_be(k.router_id_be)),
        cidr: format!(
            "{}/{}",
            ip_be(k.ip_be),
            plen.saturating_sub(ROUTE_KEY_PREFIX_BITS)
        ),
        nexthop: (r.nexthop_be != 0).then(|| ip_be(r.nexthop_be).into()),
        vni: r.vni,
        gateway_ip: ip_be(r.gw_ip_be).into(),
        gateway_mac: fmt_mac(r.gw_mac),
        mtu: r.mtu,
    });
    let v6 = v6.into_iter().map(|((plen, k), r)| RouteRow {
        router_id: format!("{:08x}", u32::from_be(k.router_id_be)),
        cidr: format!(
            "{}/{}",
            Ipv6Addr::from(k.ip),
            plen.saturating_sub(ROUTE6_KEY_PREFIX_BITS)
        ),
        nexthop: (r.nexthop != [0; 16]).then(|| Ipv6Addr::from(r.nexthop).into()),
        vni: r.vni,
        gateway_ip: Ipv6Addr::from(r.gw_ip).into(),
        gateway_mac: fmt_mac(r.gw_mac),
        mtu: r.mtu,
    });
    v4.chain(v6).collect()
}

fn ha_rows(maps: &HostMaps) -> Result<Vec<HaRow>, MapsError> {
    let now = crate::clock::fence_now_ns();
    Ok(maps
        .ha_fence
        .read()?
        .into_iter()
        .map(|(router, until)| HaRow {
            router_id: format!("{router:08x}"),
            active_until_ns: until,
            remaining_ms: (i128::from(until) - i128::from(now)) as f64 / 1e6,
            active: fence_active(Some(until), now),
        })
        .collect())
}

#[derive(Serialize)]
struct VipRow {
    vni: u32,
    vip: Ipv4Addr,
    /// Ports allowed to hold it: MAC and where.
    candidates: Vec<String>,
    holder_mac: Option<String>,
    holder_ifindex: Option<u32>,
    holder_host: Option<Ipv4Addr>,
    learned_s_ago: Option<f64>,
}

fn vip_rows(maps: &HostMaps) -> Result<Vec<VipRow>, MapsError> {
    let loc = maps.vip_loc.read()?;
    let now = crate::clock::conntrack_now_ns();
    let mut rows: BTreeMap<(u32, u32), VipRow> = BTreeMap::new();
    for (k, c) in maps.vip_cand.read()? {
        let row = rows.entry((k.vni, k.ip_be)).or_insert_with(|| {
            let l = loc.get(&dvr_common::route::IpKey {
                vni: k.vni,
                ip_be: k.ip_be,
            });
            VipRow {
                vni: k.vni,
                vip: ip_be(k.ip_be),
                candidates: Vec::new(),
                holder_mac: l.map(|l| fmt_mac(l.mac)),
                holder_ifindex: l.and_then(|l| (l.ifindex != 0).then_some(l.ifindex)),
                holder_host: l.and_then(|l| ip_host(l.tunnel_ip_host)),
                learned_s_ago: l.map(|l| now.saturating_sub(l.learned_ns) as f64 / 1e9),
            }
        });
        let at = match ip_host(c.tunnel_ip_host) {
            Some(h) => h.to_string(),
            None => format!("tap#{}", c.ifindex),
        };
        row.candidates.push(format!("{}@{at}", fmt_mac(k.mac)));
    }
    Ok(rows.into_values().collect())
}

#[derive(Serialize)]
struct SteerRow {
    vni: u32,
    gateway_mac: String,
    router_id: String,
    snat_host: Option<Ipv4Addr>,
    csnat_mac: String,
    enabled: bool,
    /// IPv6 north-south is steered too (`SNAT_ROUTED6`).
    routed6: bool,
}

/// A router whose IPv6 north-south traffic this host routes (no NAT).
#[derive(Serialize)]
struct Routed6Row {
    router_id: String,
    external_ip: std::net::Ipv6Addr,
    next_hop: std::net::Ipv6Addr,
    next_hop_mac: Option<String>,
    prefixes: Vec<String>,
}

#[derive(Serialize)]
struct SnatView {
    routers: Vec<SnatRow>,
    steering: Vec<SteerRow>,
    routed6: Vec<Routed6Row>,
}

fn snat_view(maps: &HostMaps) -> Result<SnatView, MapsError> {
    let ct = maps.ct.read()?;
    let exhausted = maps.snat_exhausted.read()?;
    let routers = maps
        .snat_ips
        .read()?
        .into_iter()
        .map(|(ip, r)| {
            let mut per_dst: BTreeMap<String, usize> = BTreeMap::new();
            let mut flows = 0;
            for (k, e) in &ct {
                if e.kind == CT_SNAT | CT_PAT && e.nat_ip_be == ip {
                    flows += 1;
                    let dst = format!(
                        "{}:{}/{}",
                        ip_be(k.daddr_be),
                        u16::from_be(k.dport_be),
                        proto_name(k.proto)
                    );
                    *per_dst.entry(dst).or_default() += 1;
                }
            }
            let mut busiest: Vec<(String, usize)> = per_dst.into_iter().collect();
            busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            busiest.truncate(5);
            SnatRow {
                router_id: format!("{:08x}", r.router_id),
                external_ip: ip_be(ip),
                next_hop: ip_be(r.ext_gw_ip_be),
                enabled: r.flags & SNAT_ENABLED != 0,
                flows,
                busiest_destinations: busiest,
                exhausted: exhausted.get(&r.router_id).copied().unwrap_or(0),
            }
        })
        .collect();
    let steering = maps
        .snat_steer
        .read()?
        .into_iter()
        .map(|(k, st)| SteerRow {
            vni: k.vni,
            gateway_mac: fmt_mac(k.mac),
            router_id: format!("{:08x}", st.router_id),
            snat_host: ip_host(st.tunnel_ip_host),
            csnat_mac: fmt_mac(st.csnat_mac),
            enabled: st.flags & SNAT_ENABLED != 0,
            routed6: st.flags & SNAT_ROUTED6 != 0,
        })
        .collect();
    let prefixes = maps.ext_route6.read()?;
    let mut routed6 = Vec::new();
    for (router, s6) in maps.snat6.read()? {
        let mac = maps
            .ext_neigh6
            .get(&Addr6 { ip: s6.next_hop })?
            .filter(|n| n.learned != 0)
            .map(|n| fmt_mac(n.mac));
        routed6.push(Routed6Row {
            router_id: format!("{router:08x}"),
            external_ip: s6.ext_ip.into(),
            next_hop: s6.next_hop.into(),
            next_hop_mac: mac,
            prefixes: prefixes
                .iter()
                .filter(|(_, r)| r.router_id == router)
                .map(|((plen, k), _)| format!("{}/{plen}", std::net::Ipv6Addr::from(k.ip)))
                .collect(),
        });
    }
    Ok(SnatView {
        routers,
        steering,
        routed6,
    })
}

fn fip_kind(flags: u32) -> &'static str {
    if flags & FIP_LOCAL != 0 {
        "local"
    } else if flags & FIP_CENTRAL != 0 {
        "central"
    } else if flags & FIP_REMOTE != 0 {
        "remote"
    } else if flags & FIP_UNASSOCIATED != 0 {
        "unassociated"
    } else {
        "elsewhere"
    }
}

/// Render `subject` from `maps` as JSON or as an aligned table.
pub fn show(maps: &HostMaps, subject: Subject, json: bool) -> Result<String, MapsError> {
    show_with(
        maps,
        subject,
        &ShowOpts {
            json,
            ..Default::default()
        },
    )
}

/// Render `subject` from `maps` as `opts` say.
pub fn show_with(maps: &HostMaps, subject: Subject, opts: &ShowOpts) -> Result<String, MapsError> {
    let json = opts.json;
    let out = match subject {
        Subject::Ports => {
            let rows: Vec<PortRow> = maps
                .local_ports
                .read()?
                .into_iter()
                .map(|(ifindex, p)| PortRow {
                    ifindex,
                    vni: p.vni,
                    mac: fmt_mac(p.mac),
                    port_security: p.flags & PORT_FLAG_SECURITY != 0,
                    port_id_hash: format!("{:08x}", p.port_id),
                })
                .collect();
            render(
                json,
                &rows,
                &["IFINDEX", "VNI", "MAC", "PORT-SECURITY", "PORT"],
                |r| {
                    vec![
                        r.ifindex.to_string(),
                        r.vni.to_string(),
                        r.mac.clone(),
                        r.port_security.to_string(),
                        r.port_id_hash.clone(),
                    ]
                },
            )
        }
        Subject::Fdb => {
            let rows = fdb_rows(maps.fdb.read()?);
            render(
                json,
                &rows,
                &[
                    "VNI",
                    "MAC",
                    "IFINDEX",
                    "REMOTE",
                    "GATEWAY-MAC",
                    "GATEWAY-MAC6",
                ],
                |r| {
                    vec![
                        r.vni.to_string(),
                        r.mac.clone(),
                        r.ifindex.to_string(),
                        opt(&r.remote),
                        opt(&r.gateway_mac),
                        opt(&r.gateway_mac6),
                    ]
                },
            )
        }
        Subject::Endpoints => {
            let rows = endpoint_rows(maps.endpoints.read()?, maps.endpoints6.read()?);
            render(
                json,
                &rows,
                &["VNI", "IP", "MAC", "IFINDEX", "REMOTE"],
                |r| {
                    vec![
                        r.vni.to_string(),
                        r.ip.to_string(),
                        r.mac.clone(),
                        r.ifindex.to_string(),
                        opt(&r.remote),
                    ]
                },
            )
        }
        Subject::Routes => {
            let rows = route_rows(maps.routes.read()?, maps.routes6.read()?);
            render(
                json,
                &rows,
                &[
                    "ROUTER",
                    "CIDR",
                    "NEXT-HOP",
                    "VNI",
                    "GATEWAY-IP",
                    "GATEWAY-MAC",
                    "MTU",
                ],
                |r| {
                    vec![
                        r.router_id.clone(),
                        r.cidr.clone(),
                        r.via(),
                        r.vni.to_string(),
                        r.gateway_ip.to_string(),
                        r.gateway_mac.clone(),
                        r.mtu.to_string(),
                    ]
                },
            )
        }
        Subject::Fips => {
            let rows: Vec<FipRow> = maps
                .fips
                .read()?
                .into_iter()
                .map(|(fip, f)| FipRow {
                    fip: ip_be(fip),
                    fixed_ip: ip_be(f.fixed_ip_be),
                    vni: f.vni,
                    kind: fip_kind(f.flags),
                    ifindex: f.ifindex,
                    remote: ip_host(f.tunnel_ip_host),
                    port_mac: fmt_mac(f.port_mac),
                    gateway_mac: fmt_mac(f.gw_mac),
                })
                .collect();
            render(
                json,
                &rows,
                &[
                    "FIP",
                    "FIXED-IP",
                    "VNI",
                    "KIND",
                    "IFINDEX",
                    "REMOTE",
                    "PORT-MAC",
                    "GATEWAY-MAC",
                ],
                |r| {
                    vec![
                        r.fip.to_string(),
                        r.fixed_ip.to_string(),
                        r.vni.to_string(),
                        r.kind.to_string(),
                        r.ifindex.to_string(),
                        opt(&r.remote),
                        r.port_mac.clone(),
                        r.gateway_mac.clone(),
                    ]
                },
            )
        }
        Subject::Snat => {
            let view = snat_view(maps)?;
            if json {
                serde_json::to_string(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            } else {
                let mut out = render(
                    false,
                    &view.routers,
                    &[
                        "ROUTER",
                        "EXTERNAL-IP",
                        "NEXT-HOP",
                        "SNAT",
                        "FLOWS",
                        "EXHAUSTED",
                        "BUSIEST",
                    ],
                    |r| {
                        vec![
                            r.router_id.clone(),
                            r.external_ip.to_string(),
                            r.next_hop.to_string(),
                            if r.enabled { "on" } else { "off" }.to_string(),
                            r.flows.to_string(),
                            r.exhausted.to_string(),
                            r.busiest_destinations
                                .iter()
                                .map(|(d, n)| format!("{d}={n}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    },
                );
                out.push('\n');
                out.push_str(&render(
                    false,
                    &view.steering,
                    &[
                        "VNI",
                        "GATEWAY-MAC",
                        "ROUTER",
                        "SNAT-HOST",
                        "CSNAT-MAC",
                        "SNAT",
                        "IPV6",
                    ],
                    |r| {
                        vec![
                            r.vni.to_string(),
                            r.gateway_mac.clone(),
                            r.router_id.clone(),
                            opt(&r.snat_host).replace('-', "local"),
                            r.csnat_mac.clone(),
                            if r.enabled { "on" } else { "off" }.to_string(),
                            if r.routed6 { "on" } else { "off" }.to_string(),
                        ]
                    },
                ));
                out.push('\n');
                out.push_str(&render(
                    false,
                    &view.routed6,
                    &[
                        "ROUTER",
                        "EXTERNAL-IPV6",
                        "NEXT-HOP",
                        "NEXT-HOP-MAC",
                        "PREFIXES",
                    ],
                    |r| {
                        vec![
                            r.router_id.clone(),
                            r.external_ip.to_string(),
                            r.next_hop.to_string(),
                            opt(&r.next_hop_mac),
                            r.prefixes.join(","),
                        ]
                    },
                ));
                out
            }
        }
        Subject::Ha => {
            let rows = ha_rows(maps)?;
            render(
                json,
                &rows,
                &["ROUTER", "ACTIVE-UNTIL-NS", "REMAINING-MS", "ACTIVE"],
                |r| {
                    vec![
                        r.router_id.clone(),
                        r.active_until_ns.to_string(),
                        format!("{:.1}", r.remaining_ms),
                        if r.active { "yes" } else { "no" }.to_string(),
                    ]
                },
            )
        }
        Subject::Vips => {
            let rows = vip_rows(maps)?;
            render(
                json,
                &rows,
                &["VNI", "VIP", "HOLDER-MAC", "AT", "LEARNED", "CANDIDATES"],
                |r| {
                    vec![
                        r.vni.to_string(),
                        r.vip.to_string(),
                        opt(&r.holder_mac),
                        match (r.holder_ifindex, r.holder_host) {
                            (Some(i), _) => format!("tap#{i}"),
                            (None, Some(h)) => h.to_string(),
                            _ => "-".into(),
                        },
                        r.learned_s_ago
                            .map_or_else(|| "-".into(), |s| format!("{s:.1}s ago")),
                        r.candidates.join(","),
                    ]
                },
            )
        }
        Subject::Sg => super::sg::show(maps, opts.port, opts.names, json)?,
        Subject::Conntrack => ct::show(maps, opts.names, json)?,
        Subject::Stats => stats_text(&maps.read_stats()?, json),
    };
    Ok(out)
}

/// Every counter by its id: a JSON object, or one line each with its description.
fn stats_text(stats: &[(Stat, u64)], json: bool) -> String {
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = stats
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), (*n).into()))
            .collect();
        serde_json::Value::Object(obj).to_string()
    } else {
        let mut s = String::new();
        for (stat, n) in stats {
            let _ = writeln!(s, "{:<26} {:>12}  {}", stat.as_str(), n, stat.describe());
        }
        s
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_routes_and_fdb_list_ipv6_beside_ipv4() {
        let c = crate::testing::compiled(
            &crate::testing::dual_stack_value(),
            "host-a",
            &crate::testing::all_taps,
        );
        let e = c.entries;
        let rows = endpoint_rows(e.endpoints, e.endpoints6);
        let ips: Vec<String> = rows.iter().map(|r| format!("{} {}", r.vni, r.ip)).collect();
        assert_eq!(
            ips,
            [
                "1001 10.0.1.10",
                "1001 10.0.1.30",
                "1002 10.0.2.20",
                "1001 fd00:1::f816:3eff:fe00:1",
                "1001 fd00:1::f816:3eff:fe00:3",
                "1002 fd00:2::20",
            ]
        );
        let json = render(true, &rows[3..4], &[], |_| Vec::new());
        assert_eq!(
            json,
            r#"[{"vni":1001,"ip":"fd00:1::f816:3eff:fe00:1","mac":"fa:16:3e:00:00:01","ifindex":11,"remote":null}]"#
        );
        let rows = route_rows(e.routes, e.routes6);
        let json = render(true, &rows[2..], &[], |_| Vec::new());
        let r1 = format!("{:08x}", crate::compile::fnv1a32("router1"));
        assert_eq!(
            json,
            format!(
                r#"[{{"router_id":"{r1}","cidr":"fd00:1::/64","nexthop":null,"vni":1001,"gateway_ip":"fd00:1::1","gateway_mac":"fa:16:3e:00:06:01","mtu":1450}},{{"router_id":"{r1}","cidr":"fd00:2::/64","nexthop":null,"vni":1002,"gateway_ip":"fd00:2::1","gateway_mac":"fa:16:3e:00:06:02","mtu":1450}}]"#
            )
        );
        assert_eq!(rows[0].cidr, "10.0.1.0/24");
        let rows = fdb_rows(e.fdb);
        let vm1 = rows.iter().find(|r| r.mac == "fa:16:3e:00:00:01");
        assert_eq!(
            vm1.map(|r| (r.gateway_mac.clone(), r.gateway_mac6.clone())),
            Some((
                Some("fa:16:3e:00:01:01".into()),
                Some("fa:16:3e:00:06:01".into())
            ))
        );
    }

    #[test]
    fn stats_list_the_security_group_drops() {
        let stats: Vec<(Stat, u64)> = Stat::ALL.iter().map(|s| (*s, 2)).collect();
        let text = stats_text(&stats, false);
        let json: serde_json::Value =
            serde_json::from_str(&stats_text(&stats, true)).unwrap_or_default();
        for id in ["drop_sg_egress", "drop_sg_ingress", "drop_port_down"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(id) && l.split_whitespace().nth(1) == Some("2")),
                "{text}"
            );
            assert_eq!(json[id], 2);
        }
    }
}
