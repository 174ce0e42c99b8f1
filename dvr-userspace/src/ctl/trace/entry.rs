//! The trace's counterpart of `dvr-ebpf/src/entry/`: the pipelines tap, tunnel and
//! external ingress, and tap_out, which every packet delivered to a local tap passes.
use dvr_common::{
    l2::{FdbKey, MacKey},
    port::{PORT_FLAG_DOWN, PORT_FLAG_SG},
    route::IpKey,
    sg::{SG_EGRESS, SG_INGRESS},
    stats::Stat,
};

use super::{
    sg::Packet,
    walk::{Out, Walk, attached_ifindex, be, drop, out},
};
use crate::{
    ctl::{fmt_mac, names::port_label},
    maps::MapsError,
};

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
                "{} (ifindex {ifindex}): port {}, vni {vni}, mac {}",
                self.p.iface,
                port_label(self.names, port.port_id),
                fmt_mac(port.mac)
            ),
        );
        if port.flags & PORT_FLAG_DOWN != 0 {
            self.step("port", "admin_state_up false: nothing in or out");
            return Ok(drop(Stat::DropPortDown));
        }
        if self.p.v6.is_some() {
            return self.tap6(ifindex, &port);
        }
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
        if port.flags & PORT_FLAG_SG != 0 {
            let pkt = self.sg_packet();
            if let Some(dropped) = self.sg(ifindex, &port, SG_EGRESS, &pkt)? {
                return Ok(dropped);
            }
        } else {
            self.step(
                "security group",
                "port not filtered (no port security, or no security_groups in its state)",
            );
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
            if self.p.v6.is_some() {
                return self.north6_from_tunnel(&r, &cfg);
            }
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
        // A routed IPv6 frame takes the gateway MAC of the port's IPv6 subnet.
        let gw_mac = if self.p.v6.is_some() {
            e.gw_mac6
        } else {
            e.gw_mac
        };
        let src_out = if from_router && gw_mac != [0; 6] {
            gw_mac
        } else {
            src_mac
        };
        if self.p.v6.is_none()
            && let Some(o) = self.fip_from_tunnel()?
        {
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
        if self.p.v6.is_some() {
            return self.ext6(&cfg);
        }
        if let Some(r) = self.m.snat_ips.get(&be(self.p.dst))? {
            return self.snat_reply(&r, &cfg);
        }
        self.fip_inbound(&cfg)
    }
}

impl Walk<'_> {
    /// `entry::tap_out`: whatever delivered the packet to a local tap (a redirect from
    /// another tap, the tunnel, the external NIC, a router's answer, a flood copy), the
    /// port's admin state and the ingress rules of its security groups are checked there,
    /// on the packet as it arrives (after any DNAT). Only a drop changes the outcome.
    pub(super) fn tap_out(&mut self, o: Out) -> Result<Out, MapsError> {
        if o.stat.is_drop() {
            return Ok(o);
        }
        if let Some(vni) = o.flood_vni {
            self.flood_out(vni)?;
            return Ok(o);
        }
        let Some(ifindex) = o.tap() else {
            return Ok(o);
        };
        let mut pkt = self.sg_packet();
        if o.stat == Stat::IcmpEchoReply {
            // The router's answer goes back to the VM: from the gateway, an echo reply.
            (pkt.saddr, pkt.daddr) = (pkt.daddr, pkt.saddr);
            pkt.icmp = (0, 0);
        }
        Ok(match self.delivered(ifindex, &pkt)? {
            Some(stat) => drop(stat),
            None => o,
        })
    }

    /// A flood's local copies: each is checked at its own tap (the verdict stays the
    /// flood's; the steps say which copies would be dropped).
    fn flood_out(&mut self, vni: u32) -> Result<(), MapsError> {
        let Some(set) = self.m.flood.get(&vni)? else {
            return Ok(());
        };
        let from = attached_ifindex(self.m, &self.p.iface);
        let pkt = self.sg_packet();
        let n = (set.n_local as usize).min(set.local.len());
        for &ifindex in &set.local[..n] {
            if Some(ifindex) != from {
                self.delivered(ifindex, &pkt)?;
            }
        }
        Ok(())
    }

    /// `entry::tap_out::run` for `pkt` delivered to tap `ifindex`: the drop, if any.
    fn delivered(&mut self, ifindex: u32, pkt: &Packet) -> Result<Option<Stat>, MapsError> {
        let Some(port) = self.m.local_ports.get(&ifindex)? else {
            return Ok(None);
        };
        if port.flags & PORT_FLAG_DOWN != 0 {
            self.step(
                "port",
                format!("tap#{ifindex}: admin_state_up false: nothing in or out"),
            );
            return Ok(Some(Stat::DropPortDown));
        }
        if port.flags & PORT_FLAG_SG == 0 {
            return Ok(None);
        }
        if self.p.v6.is_some() {
            return Ok(self.sg6(ifindex, &port, SG_INGRESS)?.map(|o| o.stat));
        }
        Ok(self.sg(ifindex, &port, SG_INGRESS, pkt)?.map(|o| o.stat))
    }
}
