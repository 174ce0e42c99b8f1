//! The trace's counterpart of the datapath's IPv6 pipeline on a tap: port security for IPv6
//! sources, routing on the source host (`DVR_GW_BY_IP6`, `DVR_ROUTES6`, `DVR_ENDPOINTS6`,
//! hop limit) and L2 forwarding, for a probe with IPv6 addresses (`Probe::v6`).
use std::net::Ipv6Addr;

use dvr_common::{
    Mac,
    ip6::{Ip6Key, ROUTE6_KEY_PREFIX_BITS, Route6, SEC6_KEY_PREFIX_BITS, is_link_local},
    port::LocalPort,
    route::{ROUTER_DOWN, RouterIface},
    sg::SG_EGRESS,
    stats::Stat,
};

use super::{
    net::deliver,
    sg::{self, Decision, Packet6},
    walk::{Addrs6, Out, Walk, drop, out},
};
use crate::{ctl::fmt_mac, maps::MapsError};

/// Whether `ip` lies in `net`/`plen`.
pub(super) fn in_prefix6(ip: &[u8; 16], net: &[u8; 16], plen: u32) -> bool {
    let plen = plen.min(128);
    let (a, b) = (u128::from_be_bytes(*ip), u128::from_be_bytes(*net));
    let mask = if plen == 0 {
        0
    } else {
        u128::MAX << (128 - plen)
    };
    a & mask == b & mask
}

impl Walk<'_> {
    /// The probe's IPv6 addresses (set when the walk is an IPv6 one).
    pub(super) fn addrs6(&self) -> Addrs6 {
        self.p.v6.unwrap_or(Addrs6 {
            src: Ipv6Addr::UNSPECIFIED,
            dst: Ipv6Addr::UNSPECIFIED,
        })
    }

    /// The destination MAC a VM would use for the probe's destination: the port's own MAC
    /// on the same network, else its IPv6 router's.
    pub(super) fn dst_mac6(&self, vni: u32) -> Result<Mac, MapsError> {
        let dst = self.addrs6().dst.octets();
        if let Some(ep) = self.m.endpoints6.get(&Ip6Key { vni, ip: dst })? {
            return Ok(ep.mac);
        }
        Ok(self
            .m
            .gw_by_ip6
            .read()?
            .into_iter()
            .find(|(k, _)| k.vni == vni)
            .map_or([0xff; 6], |(_, g)| g.mac))
    }

    /// `stage::security` for an IPv6 source (DVR_PORT_SEC6).
    pub(super) fn security6(
        &mut self,
        ifindex: u32,
        port: &LocalPort,
        src_mac: Mac,
    ) -> Result<Option<Out>, MapsError> {
        let src = self.addrs6().src;
        let ip = format!("IPv6 {src}");
        self.port_security(port, src_mac, ip, "IPv6 address", |w| {
            Ok(w.m
                .port_security6
                .read()?
                .into_iter()
                .filter(|((plen, k), _)| {
                    u32::from_be(k.ifindex_be) == ifindex
                        && k.mac == src_mac
                        && in_prefix6(&src.octets(), &k.ip, plen - SEC6_KEY_PREFIX_BITS)
                })
                .max_by_key(|((plen, _), _)| *plen)
                .map(|(_, flags)| flags))
        })
    }

    /// `net::route` for IPv6: the IPv6 subnet of `router` that `ip` lies in.
    pub(super) fn route6_lookup(
        &self,
        router: u32,
        ip: &[u8; 16],
    ) -> Result<Option<Route6>, MapsError> {
        Ok(self
            .m
            .routes6
            .read()?
            .into_iter()
            .filter(|((plen, k), _)| {
                u32::from_be(k.router_id_be) == router
                    && in_prefix6(ip, &k.ip, plen - ROUTE6_KEY_PREFIX_BITS)
            })
            .max_by_key(|((plen, _), _)| *plen)
            .map(|(_, r)| r))
    }

    /// `icmp6::answer` with packet too big (MTU `mtu`), from the gateway of the subnet of
    /// the probe's source, back out of tap `ifindex`.
    pub(super) fn too_big6(
        &mut self,
        gw: &RouterIface,
        src_mac: Mac,
        ifindex: u32,
        mtu: u16,
    ) -> Result<Out, MapsError> {
        let src = self.addrs6().src;
        let from = self
            .route6_lookup(gw.router_id, &src.octets())?
            .map(|r| Ipv6Addr::from(r.gw_ip));
        let Some(from) = from else {
            self.step("mtu", "too long, no gateway for the source to answer from");
            return Ok(drop(Stat::DropFragNeeded));
        };
        self.step(
            "icmp",
            format!("ICMPv6 packet too big (mtu {mtu}) from {from}"),
        );
        Ok(out(
            Stat::IcmpTooBig,
            format!("tap#{ifindex}"),
            gw.mac,
            src_mac,
        ))
    }

    /// The IPv6 routing stage: a frame to router interface `gw` from tap `ifindex`.
    pub(super) fn route6(
        &mut self,
        vni: u32,
        ifindex: u32,
        gw: &RouterIface,
        src_mac: Mac,
        dvr_mac: Mac,
    ) -> Result<Out, MapsError> {
        let Addrs6 { src, dst } = self.addrs6();
        self.step(
            "route",
            format!(
                "to router {:08x}'s interface {}",
                gw.router_id,
                fmt_mac(gw.mac)
            ),
        );
        if gw.flags & ROUTER_DOWN != 0 {
            self.step("router", "administratively down (admin_state_up false)");
            return Ok(drop(Stat::DropRouterDown));
        }
        if let Some(g) = self.m.gw_by_ip6.get(&Ip6Key {
            vni,
            ip: dst.octets(),
        })? {
            if self.p.proto == 58 {
                self.step("icmp", format!("echo to router address {dst}: answered"));
                return Ok(out(
                    Stat::IcmpEchoReply,
                    format!("tap#{ifindex}"),
                    g.mac,
                    src_mac,
                ));
            }
            self.step("route", format!("{dst} is the router's own address"));
            return Ok(drop(Stat::DropRouterLocal));
        }
        if is_link_local(&src.octets()) || is_link_local(&dst.octets()) {
            self.step("route", "link-local addresses are never routed");
            return Ok(drop(Stat::DropLinkLocal));
        }
        let Some(r) = self.route6_lookup(gw.router_id, &dst.octets())? else {
            self.step("route", format!("{dst}: outside the router's IPv6 subnets"));
            return self.north6_steer(vni, gw, ifindex, src_mac);
        };
        let hop = if r.nexthop != [0; 16] {
            let hop = Ipv6Addr::from(r.nexthop);
            self.step(
                "route",
                format!(
                    "{dst} by extra route via {hop} (vni {}, gateway {})",
                    r.vni,
                    Ipv6Addr::from(r.gw_ip)
                ),
            );
            hop
        } else {
            self.step(
                "route",
                format!(
                    "{dst} is on vni {}, gateway {}",
                    r.vni,
                    Ipv6Addr::from(r.gw_ip)
                ),
            );
            dst
        };
        if r.mtu != 0 && self.p.len > r.mtu {
            self.step(
                "mtu",
                format!("{} bytes, network MTU {}", self.p.len, r.mtu),
            );
            return self.too_big6(gw, src_mac, ifindex, r.mtu);
        }
        let Some(ep) = self.m.endpoints6.get(&Ip6Key {
            vni: r.vni,
            ip: hop.octets(),
        })?
        else {
            self.step("route", format!("no port has {hop}"));
            return Ok(drop(if hop == dst {
                Stat::DropNoEndpoint
            } else {
                Stat::DropNoNexthop
            }));
        };
        if self.p.ttl <= 1 {
            let from = self
                .route6_lookup(gw.router_id, &src.octets())?
                .map(|r| Ipv6Addr::from(r.gw_ip));
            return Ok(match from {
                Some(g) => {
                    self.step(
                        "icmp",
                        format!("hop limit exceeded: time exceeded from {g}"),
                    );
                    out(
                        Stat::IcmpTimeExceeded,
                        format!("tap#{ifindex}"),
                        gw.mac,
                        src_mac,
                    )
                }
                None => {
                    self.step("icmp", "hop limit exceeded, no gateway for the source");
                    drop(Stat::DropTtlExceeded)
                }
            });
        }
        self.p.ttl -= 1;
        self.step("route", format!("hop limit {}", self.p.ttl));
        Ok(deliver(
            Stat::Routed,
            ep.mac,
            r.gw_mac,
            ep.ifindex,
            ep.tunnel_ip_host,
            r.vni,
            dvr_mac,
        ))
    }

    /// The IPv6 part of `entry::tap` after the port is known.
    pub(super) fn tap6(&mut self, ifindex: u32, port: &LocalPort) -> Result<Out, MapsError> {
        let cfg = self.m.read_config()?;
        let vni = port.vni;
        let src_mac = self.p.src_mac.unwrap_or(port.mac);
        let dst_mac = match self.p.dst_mac {
            Some(m) => m,
            None => self.dst_mac6(vni)?,
        };
        self.step(
            "ethernet",
            format!("{} -> {} (IPv6)", fmt_mac(src_mac), fmt_mac(dst_mac)),
        );
        if let Some(dropped) = self.security6(ifindex, port, src_mac)? {
            return Ok(dropped);
        }
        if let Some(dropped) = self.sg6(ifindex, port, SG_EGRESS)? {
            return Ok(dropped);
        }
        let gw = self.m.gw_by_mac.get(&dvr_common::l2::FdbKey {
            vni,
            mac: dst_mac,
            _pad: [0; 2],
        })?;
        match gw {
            Some(gw) => self.route6(vni, ifindex, &gw, src_mac, cfg.dvr_mac),
            None => self.l2_forward(vni, dst_mac, src_mac),
        }
    }

    /// `stage::sg::check6`: the IPv6 rules of the port on tap `ifindex` on the probe in
    /// direction `dir`; `Some(drop)` when they refuse it.
    pub(super) fn sg6(
        &mut self,
        ifindex: u32,
        port: &LocalPort,
        dir: u8,
    ) -> Result<Option<Out>, MapsError> {
        if port.flags & dvr_common::port::PORT_FLAG_SG == 0 {
            self.step(
                "security group",
                "port not filtered (no port security, or no security_groups in its state)",
            );
            return Ok(None);
        }
        if self.sg_tries.is_none() {
            self.sg_tries = Some((self.m.sg_remote.read()?, self.m.sg_rules.read()?));
        }
        if self.sg_remote6.is_none() {
            self.sg_remote6 = Some(self.m.sg_remote6.read()?);
        }
        let Some(pkt) = self.sg_packet6() else {
            return Ok(None);
        };
        let k = sg::flow_key(ifindex, &pkt);
        let tracked = match self.sg_created6.get(&k) {
            Some(e) => Some(*e),
            None => self.m.ct6.get(&k)?,
        };
        let d = match (&self.sg_tries, &self.sg_remote6) {
            (Some((_, rules)), Some(remotes6)) => {
                sg::check(port, ifindex, dir, &pkt, remotes6, rules, &|key| {
                    if *key == k { tracked } else { None }
                })
            }
            _ => Decision::Refused,
        };
        if let Decision::Admitted {
            rule,
            new_flow: true,
        } = d
        {
            self.sg_created6
                .extend(sg::new_flow6(ifindex, dir, &pkt, rule));
        }
        Ok(self.sg_step(d, dir, ifindex, port))
    }

    /// The IPv6 probe as the security group check sees it (an ICMPv6 probe is an echo
    /// request whose identifier is `sport`).
    fn sg_packet6(&self) -> Option<Packet6> {
        let a = self.p.v6?;
        Some(self.sg_probe(a.src.octets(), a.dst.octets(), 58, 128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_by_leading_bits() {
        let net = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut ip = net;
        ip[15] = 0x10;
        assert!(in_prefix6(&ip, &net, 64));
        assert!(in_prefix6(&ip, &net, 0));
        assert!(!in_prefix6(&ip, &net, 128));
        ip[3] = 2;
        assert!(!in_prefix6(&ip, &net, 64));
        assert!(in_prefix6(&ip, &net, 30));
    }
}
