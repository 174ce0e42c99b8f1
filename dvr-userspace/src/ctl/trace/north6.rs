//! The trace's counterpart of the datapath's IPv6 north-south (`stage::north6`, the IPv6
//! part of `entry::ext`): steering to the router's SNAT host (`DVR_SNAT_STEER`,
//! `SNAT_ROUTED6`), routing out of the external interface there (`DVR_SNAT6`,
//! `DVR_EXT_NEIGH6`) and in from it (`DVR_SNAT_IPS6`, `DVR_EXT_ROUTE6`, `DVR_ROUTES6`,
//! `DVR_ENDPOINTS6`). Neighbour discovery on the external interface is not traced.
use std::net::Ipv6Addr;

use dvr_common::{
    Mac,
    config::HostConfig,
    ip6::{Addr6, Ip6Key, is_link_local},
    l2::FdbKey,
    route::RouterIface,
    snat::{SNAT_ROUTED6, SnatRouter},
    stats::Stat,
};

use super::{
    net::deliver,
    v6::in_prefix6,
    walk::{Addrs6, Out, Walk, drop, out},
};
use crate::{ctl::fmt_mac, maps::MapsError};

impl Walk<'_> {
    /// `north6::steer`: IPv6 from a VM leaving the router's IPv6 subnets.
    /// A packet longer than the external network's MTU is answered from the sender's
    /// gateway, back out of its tap `ifindex` (`route6::stage`).
    pub(super) fn north6_steer(
        &mut self,
        vni: u32,
        gw: &RouterIface,
        ifindex: u32,
        src_mac: Mac,
    ) -> Result<Out, MapsError> {
        let cfg = self.m.read_config()?;
        let st = self.m.snat_steer.get(&FdbKey {
            vni,
            mac: gw.mac,
            _pad: [0; 2],
        })?;
        let Some(st) = st.filter(|s| s.flags & SNAT_ROUTED6 != 0) else {
            self.step(
                "north6",
                "router has no IPv6 external address (or no csnat port): no route",
            );
            return Ok(drop(Stat::DropNoRoute));
        };
        if st.ext_mtu != 0 && self.p.len > st.ext_mtu {
            self.step(
                "mtu",
                format!("{} bytes, external network MTU {}", self.p.len, st.ext_mtu),
            );
            return self.too_big6(gw, src_mac, ifindex, st.ext_mtu);
        }
        if self.p.ttl <= 1 {
            self.step("north6", "hop limit exceeded");
            return Ok(drop(Stat::DropTtlExceeded));
        }
        self.p.ttl -= 1;
        if st.tunnel_ip_host == 0 {
            return match self.snat_router_here("north6", vni, st.csnat_mac)? {
                Ok(r) => self.north6_out(&r, &cfg),
                Err(o) => Ok(o),
            };
        }
        let hop = format!("hop limit {}; ", self.p.ttl);
        Ok(self.steered("north6", &hop, vni, &st, &cfg))
    }

    /// `north6::from_tunnel`: the SNAT host, IPv6 to a csnat port of router `r`.
    pub(super) fn north6_from_tunnel(
        &mut self,
        r: &SnatRouter,
        cfg: &HostConfig,
    ) -> Result<Out, MapsError> {
        self.step(
            "north6",
            format!("IPv6 to a csnat port of router {:08x}", r.router_id),
        );
        if !self.ha_serves(r.flags, r.router_id)? {
            return Ok(drop(Stat::DropSnatStandby));
        }
        let Addrs6 { src, dst } = self.addrs6();
        if self.route6_lookup(r.router_id, &src.octets())?.is_none()
            || is_link_local(&dst.octets())
            || dst.is_multicast()
        {
            self.step(
                "north6",
                format!("{src} is not in the router's IPv6 subnets (or {dst} is link-scoped)"),
            );
            return Ok(drop(Stat::DropNoRoute));
        }
        self.north6_out(r, cfg)
    }

    /// `north6::out`: to the router's next hop on the external network.
    fn north6_out(&mut self, r: &SnatRouter, cfg: &HostConfig) -> Result<Out, MapsError> {
        if cfg.ext_ifindex == 0 {
            return Ok(drop(Stat::DropNoExternal));
        }
        let Some(s) = self.m.snat6.get(&r.router_id)? else {
            self.step("north6", "router has no IPv6 external address here");
            return Ok(drop(Stat::DropNoRoute));
        };
        let hop = Ipv6Addr::from(s.next_hop);
        let n = self.m.ext_neigh6.get(&Addr6 { ip: s.next_hop })?;
        let Some(n) = n.filter(|n| n.learned != 0) else {
            self.step("neighbour", format!("next hop {hop} not learned yet"));
            return Ok(drop(Stat::DropNoNeighbor));
        };
        self.step(
            "north6",
            format!(
                "routed out (no NAT) from router address {} to next hop {hop} ({})",
                Ipv6Addr::from(s.ext_ip),
                fmt_mac(n.mac)
            ),
        );
        Ok(out(
            Stat::RoutedOut,
            format!("external#{}", cfg.ext_ifindex),
            cfg.ext_mac,
            n.mac,
        ))
    }

    /// The IPv6 part of `entry::ext`.
    pub(super) fn ext6(&mut self, cfg: &HostConfig) -> Result<Out, MapsError> {
        let Addrs6 { dst, .. } = self.addrs6();
        let dst_b = dst.octets();
        if let Some(r) = self.m.snat_ips6.get(&Addr6 { ip: dst_b })? {
            if !self.ha_serves(r.flags, r.router_id)? {
                return Ok(drop(Stat::DropSnatStandby));
            }
            if self.p.proto == 58 {
                self.step(
                    "icmp",
                    format!("echo to router external address {dst}: answered"),
                );
                return Ok(self.answer_external(Stat::IcmpEchoReply, cfg));
            }
            return Ok(drop(Stat::DropRouterLocal));
        }
        let found = self
            .m
            .ext_route6
            .read()?
            .into_iter()
            .filter(|((plen, k), _)| in_prefix6(&dst_b, &k.ip, *plen))
            .max_by_key(|((plen, _), _)| *plen);
        let Some((_, r)) = found else {
            self.step("external", format!("{dst}: no tenant prefix served here"));
            return Ok(drop(Stat::ExtPass));
        };
        self.step(
            "north6",
            format!("{dst}: tenant prefix of router {:08x}", r.router_id),
        );
        if !self.ha_serves(r.flags, r.router_id)? {
            return Ok(drop(Stat::DropSnatStandby));
        }
        let Some(route) = self.route6_lookup(r.router_id, &dst_b)? else {
            return Ok(drop(Stat::DropNoRoute));
        };
        if route.gw_ip == dst_b {
            return Ok(drop(Stat::DropRouterLocal));
        }
        let Some(ep) = self.m.endpoints6.get(&Ip6Key {
            vni: route.vni,
            ip: dst_b,
        })?
        else {
            self.step("route", format!("no port has {dst}"));
            return Ok(drop(Stat::DropNoEndpoint));
        };
        if self.p.ttl <= 1 {
            self.step(
                "icmp",
                "hop limit exceeded: time exceeded from the router's external address",
            );
            return Ok(self.answer_external(Stat::IcmpTimeExceeded, cfg));
        }
        self.p.ttl -= 1;
        self.step("route", format!("hop limit {}", self.p.ttl));
        Ok(deliver(
            Stat::RoutedIn,
            ep.mac,
            route.gw_mac,
            ep.ifindex,
            ep.tunnel_ip_host,
            route.vni,
            cfg.dvr_mac,
        ))
    }

    /// The router's answer (an ICMPv6 message from its external address) back out of the
    /// external interface, to the frame's sender.
    fn answer_external(&self, stat: Stat, cfg: &HostConfig) -> Out {
        let src = self.p.src_mac.unwrap_or([0; 6]);
        out(
            stat,
            format!("external#{}", cfg.ext_ifindex),
            cfg.ext_mac,
            src,
        )
    }
}
