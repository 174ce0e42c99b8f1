//! The trace's counterpart of `dvr-ebpf/src/entry/`: the three pipelines, tap, tunnel and
//! external ingress.
use dvr_common::{
    l2::{FdbKey, MacKey},
    route::IpKey,
    stats::Stat,
};

use super::walk::{Out, Walk, attached_ifindex, be, drop, out};
use crate::{ctl::fmt_mac, maps::MapsError};

impl Walk<'_> {
    /// `entry::tap`: a frame a VM sends.
    pub(super) fn tap(&mut self) -> Result<Out, MapsError> {
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
        if let Some(dropped) = self.security(ifindex, &port, src_mac)? {
            return Ok(dropped);
        }
        let Some(gw) = gws
            .get(&FdbKey {
                vni,
                mac: dst_mac,
                _pad: [0; 2],
            })
            .copied()
        else {
            // Same subnet: the hairpin reply translation, then L2.
            self.fip_hairpin_reply(vni)?;
            return self.l2_forward(vni, dst_mac, src_mac);
        };
        self.route(vni, ifindex, &gw, src_mac, dst_mac, &cfg)
    }

    /// `entry::tunnel`: a frame from another host.
    pub(super) fn tunnel(&mut self) -> Result<Out, MapsError> {
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
        if dst_mac[0] & 1 != 0 {
            // (The datapath does not look for a hairpin reply here; the trace always has:
            // kept so that its output does not change.)
            self.fip_hairpin_reply(vni)?;
            return self.l2_forward(vni, dst_mac, src_mac);
        }
        if let Some(r) = self.m.snat_routers.get(&FdbKey {
            vni,
            mac: dst_mac,
            _pad: [0; 2],
        })? {
            return self.snat_from_tunnel(vni, &r, &cfg);
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
        if let Some(o) = self.fip_from_tunnel()? {
            return Ok(o);
        }
        Ok(out(
            Stat::RxTunnel,
            format!("tap#{}", e.ifindex),
            src_out,
            dst_mac,
        ))
    }

    /// `entry::ext`: a frame from the external network.
    pub(super) fn ext(&mut self) -> Result<Out, MapsError> {
        let cfg = self.m.read_config()?;
        if let Some(r) = self.m.snat_ips.get(&be(self.p.dst))? {
            return self.snat_reply(&r, &cfg);
        }
        self.fip_inbound(&cfg)
    }
}
