//! The trace's counterpart of `dvr-ebpf/src/net/`: route lookup, conntrack lookup, L2
//! forwarding and the delivery of a routed packet.
use std::net::Ipv4Addr;

use dvr_common::{
    Mac,
    l2::FdbKey,
    nat::{CtEntry, CtKey},
    route::{ROUTE_KEY_PREFIX_BITS, Route},
    stats::Stat,
};

use super::walk::{Out, Walk, be, in_prefix, out};
use crate::{
    ctl::{fmt_mac, ip_be},
    maps::MapsError,
};

/// A routed or translated packet delivered to a port: its local tap with the subnet's
/// gateway MAC as source, or its host over the tunnel with this host's DVR MAC (as
/// `net::l2::deliver_routed` in the datapath).
pub(super) fn deliver(
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

impl Walk<'_> {
    /// `net::route::lookup`: the subnet of `router` that `ip` lies in (longest prefix).
    pub(super) fn route_lookup(&self, router: u32, ip: u32) -> Result<Option<Route>, MapsError> {
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

    /// `net::conntrack`: the tracked direction of the packet in `zone`.
    pub(super) fn ct(&mut self, zone: u32) -> Result<Option<CtEntry>, MapsError> {
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

    /// `net::l2::forward`: by destination MAC on network `vni`, else flooded.
    pub(super) fn l2_forward(
        &mut self,
        vni: u32,
        dst_mac: Mac,
        src_mac: Mac,
    ) -> Result<Out, MapsError> {
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
        self.step(
            "l2",
            format!(
                "broadcast/unknown: replicated to {} local taps and {nr} hosts",
                nl.saturating_sub(1)
            ),
        );
        Ok(Out {
            flood_vni: Some(vni),
            ..out(Stat::Flooded, "flood", src_mac, dst_mac)
        })
    }
}
