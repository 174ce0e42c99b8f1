//! `dvrctl trace`: what the datapath would do with a packet, step by step, from the live
//! maps of a host (like ovn-trace). Read-only: nothing is sent and no map is written. The
//! walk follows the pipelines of `dvr-ebpf` (tap, tunnel and external ingress); the
//! integration tests check its verdicts against what real packets did.
use std::net::Ipv4Addr;

use serde::Serialize;

use super::{fmt_mac, ip_be};
use crate::maps::{HostMaps, MapsError};
use dvr_common::{
    Mac,
    l2::{FdbKey, MacKey},
    nat::{
        CT_DNAT, CT_HAIRPIN, CT_PAT, CT_SNAT, CtKey, FIP_CENTRAL, FIP_LOCAL, FIP_REMOTE,
        FIP_UNASSOCIATED, FIP_VIP, ZONE_EXTERNAL,
    },
    port::{PORT_FLAG_SECURITY, SEC_IP_ALLOWED, SEC_KEY_PREFIX_BITS},
    route::{IpKey, ROUTE_KEY_PREFIX_BITS, Route},
    snat::SNAT_ENABLED,
    stats::Stat,
};

/// The packet to trace.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Interface it arrives on: a tap, the tunnel device or the external interface.
    pub iface: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 1 (ICMP echo), 6 or 17.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub src_mac: Option<Mac>,
    pub dst_mac: Option<Mac>,
    /// Tunnel metadata, for packets arriving on the tunnel device.
    pub vni: Option<u32>,
    pub remote: Option<Ipv4Addr>,
    pub ttl: u8,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub stage: &'static str,
    pub what: String,
}

#[derive(Debug, Serialize)]
pub struct Trace {
    pub steps: Vec<Step>,
    /// The counter the packet would bump (`dvrctl show stats` id).
    pub verdict: &'static str,
    pub drop: bool,
    /// Where it would go: `tap#N`, `tunnel <host> vni <v>`, `ext#N`, `host stack`, or null.
    pub output: Option<String>,
    /// The packet as it would leave.
    pub out_src: Option<String>,
    pub out_dst: Option<String>,
    pub out_src_mac: Option<String>,
    pub out_dst_mac: Option<String>,
}

struct Walk<'a> {
    m: &'a HostMaps,
    steps: Vec<Step>,
    p: Probe,
}

struct Out {
    stat: Stat,
    output: Option<String>,
    src_mac: Option<Mac>,
    dst_mac: Option<Mac>,
}

fn out(stat: Stat, output: impl Into<String>, src_mac: Mac, dst_mac: Mac) -> Out {
    Out {
        stat,
        output: Some(output.into()),
        src_mac: Some(src_mac),
        dst_mac: Some(dst_mac),
    }
}

/// A routed or translated packet delivered to a port: its local tap with the subnet's
/// gateway MAC as source, or its host over the tunnel with this host's DVR MAC (as
/// `l2::deliver_routed` in the datapath).
fn deliver(
    stat: Stat,
    mac: Mac,
    gw_mac: Mac,
    ifindex: u32,
    tunnel_ip_host: u32,
    vni: u32,
    dvr_mac: Mac,
) -> Out {
    if ifindex != 0 {
        out(stat, format!("tap#{ifindex}"), gw_mac, mac)
    } else {
        out(
            stat,
            format!("tunnel {} vni {vni}", Ipv4Addr::from(tunnel_ip_host)),
            dvr_mac,
            mac,
        )
    }
}

fn drop(stat: Stat) -> Out {
    Out {
        stat,
        output: None,
        src_mac: None,
        dst_mac: None,
    }
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn in_prefix(ip: u32, net: u32, plen: u32) -> bool {
    let mask = if plen == 0 {
        0
    } else {
        u32::MAX << (32 - plen.min(32))
    };
    (u32::from_be(ip) & mask) == (u32::from_be(net) & mask)
}

/// ifindex of an interface the agent attached to, from its link pin `<iface>@<ifindex>`.
pub fn attached_ifindex(maps: &HostMaps, iface: &str) -> Option<u32> {
    let rd = std::fs::read_dir(maps.dir.join("links")).ok()?;
    rd.flatten().find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        let (name, ifx) = n.rsplit_once('@')?;
        (name == iface).then(|| ifx.parse().ok()).flatten()
    })
}

impl Walk<'_> {
    fn step(&mut self, stage: &'static str, what: impl Into<String>) {
        self.steps.push(Step {
            stage,
            what: what.into(),
        });
    }

    fn route(&self, router: u32, ip: u32) -> Result<Option<Route>, MapsError> {
        Ok(self
            .m
            .routes
            .read()?
            .into_iter()
            .filter(|((plen, k), _)| {
                u32::from_be(k.router_id_be) == router
                    && in_prefix(ip, k.ip_be, plen - ROUTE_KEY_PREFIX_BITS)
            })
            .max_by_key(|((plen, _), _)| *plen)
            .map(|(_, r)| r))
    }

    fn ct(&mut self, zone: u32) -> Result<Option<dvr_common::nat::CtEntry>, MapsError> {
        let (s, d) = if self.p.proto == 1 {
            (self.p.sport, self.p.sport)
        } else {
            (self.p.sport, self.p.dport)
        };
        let k = CtKey {
            zone,
            saddr_be: be(self.p.src),
            daddr_be: be(self.p.dst),
            sport_be: s.to_be(),
            dport_be: d.to_be(),
            proto: self.p.proto,
            _pad: [0; 3],
        };
        let e = self.m.ct.get(&k)?;
        self.step(
            "conntrack",
            match &e {
                Some(e) => format!(
                    "zone {zone}: tracked flow, translate to {}{}",
                    ip_be(e.nat_ip_be),
                    if e.nat_port_be != 0 {
                        format!(":{}", u16::from_be(e.nat_port_be))
                    } else {
                        String::new()
                    }
                ),
                None => format!("zone {zone}: no tracked flow (a new one would be created)"),
            },
        );
        Ok(e)
    }

    fn tap(&mut self) -> Result<Out, MapsError> {
        let Some(ifindex) = attached_ifindex(self.m, &self.p.iface) else {
            self.step(
                "port",
                format!("{}: the agent is not attached to it", self.p.iface),
            );
            return Ok(drop(Stat::DropUnknownPort));
        };
        let Some(port) = self.m.local_ports.get(&ifindex)? else {
            self.step("port", format!("ifindex {ifindex}: no port"));
            return Ok(drop(Stat::DropUnknownPort));
        };
        let cfg = self.m.read_config()?;
        let vni = port.vni;
        self.step(
            "port",
            format!(
                "{} (ifindex {ifindex}): port {:08x}, vni {vni}, mac {}",
                self.p.iface,
                port.port_id,
                fmt_mac(port.mac)
            ),
        );
        let src_mac = self.p.src_mac.unwrap_or(port.mac);
        let gws = self.m.gw_by_mac.read()?;
        let dst_mac = match self.p.dst_mac {
            Some(m) => m,
            None => match self.m.endpoints.get(&IpKey {
                vni,
                ip_be: be(self.p.dst),
            })? {
                Some(ep) => ep.mac,
                None => gws
                    .keys()
                    .find(|k| k.vni == vni)
                    .map_or([0xff; 6], |k| k.mac),
            },
        };
        self.step(
            "ethernet",
            format!("{} -> {}", fmt_mac(src_mac), fmt_mac(dst_mac)),
        );
        if port.flags & PORT_FLAG_SECURITY != 0 {
            let allowed = self
                .m
                .port_security
                .read()?
                .into_iter()
                .filter(|((plen, k), _)| {
                    u32::from_be(k.ifindex_be) == ifindex
                        && k.mac == src_mac
                        && in_prefix(be(self.p.src), k.ip_be, plen - SEC_KEY_PREFIX_BITS)
                })
                .max_by_key(|((plen, _), _)| *plen);
            match allowed {
                None => {
                    self.step(
                        "port security",
                        format!("source MAC {} is not the port's", fmt_mac(src_mac)),
                    );
                    return Ok(drop(Stat::DropSpoofMac));
                }
                Some((_, f)) if f & SEC_IP_ALLOWED == 0 => {
                    self.step(
                        "port security",
                        format!("source IP {} is not the port's", self.p.src),
                    );
                    return Ok(drop(Stat::DropSpoofIp));
                }
                Some(_) => self.step("port security", "source MAC and IP allowed"),
            }
        } else {
            self.step("port security", "disabled for this port");
        }
        let Some(gw) = gws
            .get(&FdbKey {
                vni,
                mac: dst_mac,
                _pad: [0; 2],
            })
            .copied()
        else {
            return self.l2(vni, dst_mac, src_mac, ifindex, &cfg);
        };
        self.step(
            "router",
            format!(
                "to router interface {} ({}) of router {:08x}",
                ip_be(gw.ip_be),
                fmt_mac(gw.mac),
                gw.router_id
            ),
        );
        let Some(route) = self.route(gw.router_id, be(self.p.dst))? else {
            self.step(
                "route",
                format!("{} is outside the router's subnets", self.p.dst),
            );
            return self.outbound(vni, gw.router_id, gw.mac, &cfg);
        };
        self.step(
            "route",
            format!(
                "{} via subnet of vni {} (gateway {})",
                self.p.dst,
                route.vni,
                ip_be(route.gw_ip_be)
            ),
        );
        if be(self.p.dst) == route.gw_ip_be {
            if self.p.proto == 1 {
                self.step("router", "ICMP echo to a router interface: answered here");
                return Ok(out(
                    Stat::IcmpEchoReply,
                    format!("tap#{ifindex}"),
                    dst_mac,
                    src_mac,
                ));
            }
            return Ok(drop(Stat::DropRouterLocal));
        }
        let ep = match self.m.endpoints.get(&IpKey {
            vni: route.vni,
            ip_be: be(self.p.dst),
        })? {
            Some(ep) => Some((ep.mac, ep.ifindex, ep.tunnel_ip_host)),
            None => self
                .m
                .vip_loc
                .get(&IpKey {
                    vni: route.vni,
                    ip_be: be(self.p.dst),
                })?
                .map(|l| (l.mac, l.ifindex, l.tunnel_ip_host)),
        };
        let Some((mac, epifx, host)) = ep else {
            self.step(
                "endpoint",
                format!("no port with {} on vni {}", self.p.dst, route.vni),
            );
            return Ok(drop(Stat::DropNoEndpoint));
        };
        if self.p.ttl <= 1 {
            return Ok(drop(Stat::DropTtlExceeded));
        }
        self.hairpin_reply(vni)?;
        self.step(
            "endpoint",
            format!(
                "{} is {} {}",
                self.p.dst,
                fmt_mac(mac),
                if epifx != 0 {
                    format!("on tap#{epifx}")
                } else {
                    format!("on host {}", Ipv4Addr::from(host))
                }
            ),
        );
        Ok(deliver(
            Stat::Routed,
            mac,
            route.gw_mac,
            epifx,
            host,
            route.vni,
            cfg.dvr_mac,
        ))
    }

    fn hairpin_reply(&mut self, vni: u32) -> Result<(), MapsError> {
        if self
            .m
            .fip_src
            .get(&IpKey {
                vni,
                ip_be: be(self.p.src),
            })?
            .is_some()
            && let Some(e) = self.ct(vni)?
            && e.kind == CT_SNAT | CT_HAIRPIN
        {
            self.step(
                "fip",
                format!(
                    "reply of a hairpin flow: source becomes {}",
                    ip_be(e.nat_ip_be)
                ),
            );
            self.p.src = ip_be(e.nat_ip_be);
        }
        Ok(())
    }

    fn l2(
        &mut self,
        vni: u32,
        dst_mac: Mac,
        src_mac: Mac,
        from: u32,
        cfg: &dvr_common::config::HostConfig,
    ) -> Result<Out, MapsError> {
        self.hairpin_reply(vni)?;
        if dst_mac[0] & 1 == 0
            && let Some(e) = self.m.fdb.get(&FdbKey {
                vni,
                mac: dst_mac,
                _pad: [0; 2],
            })?
        {
            if e.ifindex != 0 {
                self.step(
                    "l2",
                    format!("{} is local on tap#{}", fmt_mac(dst_mac), e.ifindex),
                );
                return Ok(out(
                    Stat::TxLocal,
                    format!("tap#{}", e.ifindex),
                    src_mac,
                    dst_mac,
                ));
            }
            self.step(
                "l2",
                format!(
                    "{} is on host {}",
                    fmt_mac(dst_mac),
                    Ipv4Addr::from(e.tunnel_ip_host)
                ),
            );
            return Ok(out(
                Stat::TxTunnel,
                format!("tunnel {} vni {vni}", Ipv4Addr::from(e.tunnel_ip_host)),
                src_mac,
                dst_mac,
            ));
        }
        let set = self.m.flood.get(&vni)?;
        let (nl, nr) = set.map_or((0, 0), |s| (s.n_local, s.n_remote));
        let _ = (from, cfg);
        self.step(
            "l2",
            format!(
                "broadcast/unknown: replicated to {} local taps and {nr} hosts",
                nl.saturating_sub(1)
            ),
        );
        Ok(out(Stat::Flooded, "flood", src_mac, dst_mac))
    }

    fn outbound(
        &mut self,
        vni: u32,
        router: u32,
        gw_mac: Mac,
        cfg: &dvr_common::config::HostConfig,
    ) -> Result<Out, MapsError> {
        if let Some(f) = self.m.fips.get(&be(self.p.dst))?
            && f.router_id == router
            && f.flags & (FIP_LOCAL | FIP_REMOTE) != 0
        {
            self.step(
                "fip",
                format!(
                    "{} is a floating IP of this router (fixed {}): hairpin",
                    self.p.dst,
                    ip_be(f.fixed_ip_be)
                ),
            );
            if f.flags & FIP_LOCAL != 0 {
                self.p.dst = ip_be(f.fixed_ip_be);
                return Ok(out(
                    Stat::FipHairpin,
                    format!("tap#{}", f.ifindex),
                    f.gw_mac,
                    f.port_mac,
                ));
            }
            return Ok(out(
                Stat::FipHairpin,
                format!("tunnel {} vni {}", Ipv4Addr::from(f.tunnel_ip_host), f.vni),
                cfg.dvr_mac,
                f.port_mac,
            ));
        }
        if self.m.fips.get(&be(self.p.src))?.is_some() {
            self.step("fip", format!("source {} is a floating IP", self.p.src));
            return Ok(drop(Stat::DropFipSpoof));
        }
        if let Some(src) = self.m.fip_src.get(&IpKey {
            vni,
            ip_be: be(self.p.src),
        })? {
            return self.fip_out(vni, src, cfg);
        }
        let Some(st) = self.m.snat_steer.get(&FdbKey {
            vni,
            mac: gw_mac,
            _pad: [0; 2],
        })?
        else {
            self.step("snat", "router has no SNAT (no gateway or no csnat port)");
            return Ok(drop(Stat::DropNoRoute));
        };
        if st.flags & SNAT_ENABLED == 0 {
            self.step("snat", "router has enable_snat false");
            return Ok(drop(Stat::DropSnatDisabled));
        }
        if st.tunnel_ip_host == 0 {
            self.step("snat", "this host is the router's SNAT host");
            let r = self.m.snat_routers.get(&FdbKey {
                vni,
                mac: st.csnat_mac,
                _pad: [0; 2],
            })?;
            return match r {
                Some(r) if !self.fence_ok(r.flags, r.router_id)? => Ok(drop(Stat::DropSnatStandby)),
                Some(r) => self.pat(vni, &r, cfg),
                None => Ok(drop(Stat::DropNoRoute)),
            };
        }
        self.step(
            "snat",
            format!(
                "steered to SNAT host {} (csnat port {})",
                Ipv4Addr::from(st.tunnel_ip_host),
                fmt_mac(st.csnat_mac)
            ),
        );
        Ok(out(
            Stat::SnatSteered,
            format!("tunnel {} vni {vni}", Ipv4Addr::from(st.tunnel_ip_host)),
            cfg.dvr_mac,
            st.csnat_mac,
        ))
    }

    fn next_hop(&mut self, gw: u32) -> Result<Option<Mac>, MapsError> {
        let n = self.m.ext_neigh.get(&gw)?;
        Ok(match n {
            Some(n) if n.learned != 0 => {
                self.step(
                    "neighbour",
                    format!("gateway {} is {}", ip_be(gw), fmt_mac(n.mac)),
                );
                Some(n.mac)
            }
            _ => {
                self.step(
                    "neighbour",
                    format!("gateway {} not learned yet", ip_be(gw)),
                );
                None
            }
        })
    }

    fn fip_out(
        &mut self,
        vni: u32,
        src: dvr_common::nat::FipSrc,
        cfg: &dvr_common::config::HostConfig,
    ) -> Result<Out, MapsError> {
        self.step(
            "fip",
            format!("source has floating IP {}: SNAT to it", ip_be(src.fip_be)),
        );
        if cfg.ext_ifindex == 0 {
            return Ok(drop(Stat::DropNoExternal));
        }
        let ha = if src.flags & dvr_common::nat::FIP_HA != 0 {
            dvr_common::snat::SNAT_HA
        } else {
            0
        };
        if !self.fence_ok(ha, src.router_id)? {
            return Ok(drop(Stat::DropSnatStandby));
        }
        let Some(nh) = self.next_hop(src.ext_gw_ip_be)? else {
            return Ok(drop(Stat::DropNoNeighbor));
        };
        self.ct(vni)?;
        self.p.src = ip_be(src.fip_be);
        Ok(out(
            Stat::FipSnat,
            format!("ext#{}", cfg.ext_ifindex),
            cfg.ext_mac,
            nh,
        ))
    }

    fn pat(
        &mut self,
        vni: u32,
        r: &dvr_common::snat::SnatRouter,
        cfg: &dvr_common::config::HostConfig,
    ) -> Result<Out, MapsError> {
        if cfg.ext_ifindex == 0 {
            return Ok(drop(Stat::DropNoExternal));
        }
        let Some(nh) = self.next_hop(r.ext_gw_ip_be)? else {
            return Ok(drop(Stat::DropNoNeighbor));
        };
        let tracked = self.ct(vni)?;
        let port = match tracked {
            Some(e) if e.kind == CT_SNAT | CT_PAT => format!("{}", u16::from_be(e.nat_port_be)),
            _ => format!(
                "one allocated from {}-{}",
                cfg.snat_port_min, cfg.snat_port_max
            ),
        };
        self.step(
            "snat",
            format!(
                "port-address translation to {} port {port}",
                ip_be(r.ext_ip_be)
            ),
        );
        self.p.src = ip_be(r.ext_ip_be);
        Ok(out(
            Stat::SnatOut,
            format!("ext#{}", cfg.ext_ifindex),
            cfg.ext_mac,
            nh,
        ))
    }

    fn tunnel(&mut self) -> Result<Out, MapsError> {
        let cfg = self.m.read_config()?;
        let (Some(vni), Some(remote)) = (self.p.vni, self.p.remote) else {
            self.step("tunnel", "no tunnel metadata (give --vni and --remote)");
            return Ok(drop(Stat::DropNoTunnelKey));
        };
        if self.m.tunnel_peers.get(&u32::from(remote))?.is_none() {
            self.step("tunnel", format!("{remote} is not a known host"));
            return Ok(drop(Stat::DropUnknownPeer));
        }
        let dst_mac = self.p.dst_mac.unwrap_or([0xff; 6]);
        let src_mac = self.p.src_mac.unwrap_or([0; 6]);
        self.step(
            "tunnel",
            format!("from host {remote}, vni {vni}, to {}", fmt_mac(dst_mac)),
        );
        if let Some(r) = self.m.snat_routers.get(&FdbKey {
            vni,
            mac: dst_mac,
            _pad: [0; 2],
        })? {
            self.step(
                "snat",
                format!("to a csnat port of router {:08x}", r.router_id),
            );
            if !self.fence_ok(r.flags, r.router_id)? {
                return Ok(drop(Stat::DropSnatStandby));
            }
            if self.route(r.router_id, be(self.p.src))?.is_none() {
                return Ok(drop(Stat::DropNoRoute));
            }
            if let Some(src) = self.m.fip_src.get(&IpKey {
                vni,
                ip_be: be(self.p.src),
            })? {
                return self.fip_out(vni, src, &cfg);
            }
            if r.flags & SNAT_ENABLED == 0 {
                return Ok(drop(Stat::DropSnatDisabled));
            }
            return self.pat(vni, &r, &cfg);
        }
        if dst_mac[0] & 1 != 0 {
            return self.l2(vni, dst_mac, src_mac, 0, &cfg);
        }
        if self
            .m
            .gw_by_mac
            .get(&FdbKey {
                vni,
                mac: dst_mac,
                _pad: [0; 2],
            })?
            .is_some()
        {
            return Ok(drop(Stat::DropGatewayFromTunnel));
        }
        let Some(e) = self
            .m
            .fdb
            .get(&FdbKey {
                vni,
                mac: dst_mac,
                _pad: [0; 2],
            })?
            .filter(|e| e.ifindex != 0)
        else {
            return Ok(drop(Stat::DropNoLocalPort));
        };
        let from_router = self
            .m
            .dvr_macs
            .get(&MacKey {
                mac: src_mac,
                _pad: [0; 2],
            })?
            .is_some();
        let src_out = if from_router && e.gw_mac != [0; 6] {
            e.gw_mac
        } else {
            src_mac
        };
        if let Some(f) = self.m.fips.get(&be(self.p.dst))? {
            if f.flags & FIP_LOCAL == 0 || self.route(f.router_id, be(self.p.src))?.is_none() {
                return Ok(drop(Stat::DropFipNotExternal));
            }
            self.step(
                "fip",
                format!(
                    "hairpin to floating IP {}: DNAT to {}",
                    self.p.dst,
                    ip_be(f.fixed_ip_be)
                ),
            );
            self.p.dst = ip_be(f.fixed_ip_be);
            return Ok(out(
                Stat::FipHairpin,
                format!("tap#{}", f.ifindex),
                f.gw_mac,
                f.port_mac,
            ));
        }
        Ok(out(
            Stat::RxTunnel,
            format!("tap#{}", e.ifindex),
            src_out,
            dst_mac,
        ))
    }

    /// An HA router is served only while its fence runs (docs/HA.md); records the check.
    fn fence_ok(&mut self, flags: u32, router_id: u32) -> Result<bool, MapsError> {
        if flags & dvr_common::snat::SNAT_HA == 0 {
            return Ok(true);
        }
        let until = self.m.ha_fence.get(&router_id)?;
        let now = crate::maps::fence_now_ns();
        let ok = dvr_common::snat::fence_active(until, now);
        let left = until.map_or(-1.0, |u| (u as f64 - now as f64) / 1e6);
        self.step(
            "ha",
            if ok {
                format!("HA router {router_id:08x}: this host serves it (fence {left:.0} ms left)")
            } else {
                format!("HA router {router_id:08x}: not served here (fence expired or absent)")
            },
        );
        Ok(ok)
    }

    fn ext(&mut self) -> Result<Out, MapsError> {
        let cfg = self.m.read_config()?;
        if let Some(r) = self.m.snat_ips.get(&be(self.p.dst))? {
            self.step(
                "snat",
                format!("to router {:08x}'s external IP", r.router_id),
            );
            if !self.fence_ok(r.flags, r.router_id)? {
                return Ok(drop(Stat::DropSnatStandby));
            }
            let Some(e) = self
                .ct(ZONE_EXTERNAL)?
                .filter(|e| e.kind == CT_DNAT | CT_PAT)
            else {
                return Ok(drop(Stat::DropSnatNoFlow));
            };
            let vni = e.peer_zone;
            self.p.dst = ip_be(e.nat_ip_be);
            let Some(ep) = self.m.endpoints.get(&IpKey {
                vni,
                ip_be: e.nat_ip_be,
            })?
            else {
                return Ok(drop(Stat::DropNoEndpoint));
            };
            let gw = self
                .route(r.router_id, e.nat_ip_be)?
                .map_or([0; 6], |r| r.gw_mac);
            return Ok(deliver(
                Stat::SnatIn,
                ep.mac,
                gw,
                ep.ifindex,
                ep.tunnel_ip_host,
                vni,
                cfg.dvr_mac,
            ));
        }
        let Some(f) = self.m.fips.get(&be(self.p.dst))? else {
            let deny = self
                .m
                .ext_deny
                .read()?
                .into_keys()
                .any(|(plen, net)| in_prefix(be(self.p.dst), net, plen));
            if deny {
                self.step("fip", format!("{} is a tenant address", self.p.dst));
                return Ok(drop(Stat::DropExtToFixedIp));
            }
            self.step("fip", "not for the datapath: passed to the host");
            return Ok(Out {
                stat: Stat::ExtPass,
                output: Some("host stack".into()),
                src_mac: None,
                dst_mac: None,
            });
        };
        if f.flags & (FIP_LOCAL | FIP_CENTRAL) == 0 {
            return Ok(drop(if f.flags & FIP_UNASSOCIATED != 0 {
                Stat::DropFipUnassociated
            } else {
                Stat::DropFipNotHere
            }));
        }
        let ha = if f.flags & dvr_common::nat::FIP_HA != 0 {
            dvr_common::snat::SNAT_HA
        } else {
            0
        };
        if !self.fence_ok(ha, f.router_id)? {
            return Ok(drop(Stat::DropSnatStandby));
        }
        let (mac, ifx, host) = if f.flags & FIP_VIP != 0 {
            match self.m.vip_loc.get(&IpKey {
                vni: f.vni,
                ip_be: f.fixed_ip_be,
            })? {
                Some(l) => (l.mac, l.ifindex, l.tunnel_ip_host),
                None => {
                    self.step("vip", "holder not learned yet");
                    return Ok(drop(Stat::DropVipUnknown));
                }
            }
        } else {
            (f.port_mac, f.ifindex, f.tunnel_ip_host)
        };
        self.ct(ZONE_EXTERNAL)?;
        self.step(
            "fip",
            format!("DNAT {} -> {}", self.p.dst, ip_be(f.fixed_ip_be)),
        );
        self.p.dst = ip_be(f.fixed_ip_be);
        Ok(deliver(
            Stat::FipDnat,
            mac,
            f.gw_mac,
            ifx,
            host,
            f.vni,
            cfg.dvr_mac,
        ))
    }
}

/// Trace `p` through the maps of a host.
pub fn trace(maps: &HostMaps, p: Probe) -> Result<Trace, MapsError> {
    let mut w = Walk {
        m: maps,
        steps: Vec::new(),
        p,
    };
    let cfg = maps.read_config()?;
    let tunnel = crate::attach::TUNNEL_DEV;
    let is_ext =
        cfg.ext_ifindex != 0 && attached_ifindex(maps, &w.p.iface) == Some(cfg.ext_ifindex);
    let o = if w.p.iface == tunnel {
        w.tunnel()?
    } else if is_ext {
        w.ext()?
    } else {
        w.tap()?
    };
    Ok(Trace {
        steps: w.steps,
        verdict: o.stat.as_str(),
        drop: o.stat.is_drop(),
        output: o.output,
        out_src: (!o.stat.is_drop()).then(|| w.p.src.to_string()),
        out_dst: (!o.stat.is_drop()).then(|| w.p.dst.to_string()),
        out_src_mac: o.src_mac.map(fmt_mac),
        out_dst_mac: o.dst_mac.map(fmt_mac),
    })
}

/// Human rendering.
pub fn render(t: &Trace) -> String {
    let mut s = String::new();
    for (i, st) in t.steps.iter().enumerate() {
        s.push_str(&format!("{:>2}. {:<14} {}\n", i + 1, st.stage, st.what));
    }
    if t.drop {
        s.push_str(&format!("=> DROP ({})\n", t.verdict));
    } else {
        s.push_str(&format!(
            "=> {} via {} : {} -> {} [{} -> {}]\n",
            t.verdict,
            t.output.as_deref().unwrap_or("-"),
            t.out_src.as_deref().unwrap_or("-"),
            t.out_dst.as_deref().unwrap_or("-"),
            t.out_src_mac.as_deref().unwrap_or("-"),
            t.out_dst_mac.as_deref().unwrap_or("-"),
        ));
    }
    s
}
