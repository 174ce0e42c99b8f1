//! `dvrctl show ports|fdb|endpoints|routes|stats [--json]`: the live maps of a host.
use std::{fmt::Write as _, net::Ipv4Addr};

use serde::Serialize;

use super::{fmt_mac, ip_be, ip_host};
use crate::maps::{HostMaps, MapsError};
use dvr_common::port::PORT_FLAG_SECURITY;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Subject {
    Ports,
    Fdb,
    Endpoints,
    Routes,
    Stats,
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
}

#[derive(Serialize)]
struct EndpointRow {
    vni: u32,
    ip: Ipv4Addr,
    mac: String,
    ifindex: u32,
    remote: Option<Ipv4Addr>,
}

#[derive(Serialize)]
struct RouteRow {
    router_id: String,
    cidr: String,
    vni: u32,
    gateway_ip: Ipv4Addr,
    gateway_mac: String,
}

/// Render `subject` from `maps` as JSON or as an aligned table.
pub fn show(maps: &HostMaps, subject: Subject, json: bool) -> Result<String, MapsError> {
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
            let rows: Vec<FdbRow> = maps
                .fdb
                .read()?
                .into_iter()
                .map(|(k, e)| FdbRow {
                    vni: k.vni,
                    mac: fmt_mac(k.mac),
                    ifindex: e.ifindex,
                    remote: ip_host(e.tunnel_ip_host),
                    gateway_mac: (e.gw_mac != [0; 6]).then(|| fmt_mac(e.gw_mac)),
                })
                .collect();
            render(
                json,
                &rows,
                &["VNI", "MAC", "IFINDEX", "REMOTE", "GATEWAY-MAC"],
                |r| {
                    vec![
                        r.vni.to_string(),
                        r.mac.clone(),
                        r.ifindex.to_string(),
                        opt(&r.remote),
                        opt(&r.gateway_mac),
                    ]
                },
            )
        }
        Subject::Endpoints => {
            let rows: Vec<EndpointRow> = maps
                .endpoints
                .read()?
                .into_iter()
                .map(|(k, e)| EndpointRow {
                    vni: k.vni,
                    ip: ip_be(k.ip_be),
                    mac: fmt_mac(e.mac),
                    ifindex: e.ifindex,
                    remote: ip_host(e.tunnel_ip_host),
                })
                .collect();
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
            let rows: Vec<RouteRow> = maps
                .routes
                .read()?
                .into_iter()
                .map(|((plen, k), r)| RouteRow {
                    router_id: format!("{:08x}", u32::from_be(k.router_id_be)),
                    cidr: format!(
                        "{}/{}",
                        ip_be(k.ip_be),
                        plen.saturating_sub(dvr_common::route::ROUTE_KEY_PREFIX_BITS)
                    ),
                    vni: r.vni,
                    gateway_ip: ip_be(r.gw_ip_be),
                    gateway_mac: fmt_mac(r.gw_mac),
                })
                .collect();
            render(
                json,
                &rows,
                &["ROUTER", "CIDR", "VNI", "GATEWAY-IP", "GATEWAY-MAC"],
                |r| {
                    vec![
                        r.router_id.clone(),
                        r.cidr.clone(),
                        r.vni.to_string(),
                        r.gateway_ip.to_string(),
                        r.gateway_mac.clone(),
                    ]
                },
            )
        }
        Subject::Stats => {
            let stats = maps.read_stats()?;
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
    };
    Ok(out)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

fn render<T: Serialize>(
    json: bool,
    rows: &[T],
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> String {
    if json {
        return serde_json::to_string(rows).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let table: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(cells))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    s
}
