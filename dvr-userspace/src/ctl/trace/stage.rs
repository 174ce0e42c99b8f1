//! The trace's counterpart of `dvr-ebpf/src/stage/`, one block per stage in the same
//! order as the datapath's graph: security, sg (security groups; the decision is in
//! `super::sg`), route (with the outbound decision), fip, snat, ha (and the external
//! gateway's learned MAC that fip and snat send to).
use std::{collections::BTreeMap, net::Ipv4Addr};

use dvr_common::{
    Mac,
    config::HostConfig,
    l2::FdbKey,
    nat::{
        CT_DNAT, CT_HAIRPIN, CT_PAT, CT_SNAT, FIP_CENTRAL, FIP_HA, FIP_LOCAL, FIP_REMOTE,
        FIP_ROUTER_DOWN, FIP_UNASSOCIATED, FIP_VIP, FipEntry, FipSrc, ZONE_EXTERNAL,
    },
    port::{
        LocalPort, PORT_FLAG_SECURITY, PORT_FLAG_SG_STATELESS, SEC_IP_ALLOWED, SEC_KEY_PREFIX_BITS,
    },
    route::{IpKey, ROUTER_DOWN, RouterIface},
    snat::{SNAT_ENABLED, SNAT_HA, SnatRouter, SnatSteer, fence_active},
    stats::Stat,
};

use super::{
    net::deliver,
    sg::{self, Decision, Packet},
    walk::{Out, Walk, be, drop, in_prefix, out},
};
use crate::{
    ctl::{fmt_mac, ip_be, names::rule_label},
    maps::MapsError,
};

// ---- security ----

impl Walk<'_> {
    /// `stage::security`: `Some(drop)` when the source MAC or IP is not the port's.
    pub(super) fn security(
        &mut self,
        ifindex: u32,
        port: &LocalPort,
        src_mac: Mac,
    ) -> Result<Option<Out>, MapsError> {
        let src_ip = be(self.p.src);
        let ip = format!("IP {}", self.p.src);
        self.port_security(port, src_mac, ip, "IP", |w| {
            Ok(w.m
                .port_security
                .read()?
                .into_iter()
                .filter(|((plen, k), _)| {
                    u32::from_be(k.ifindex_be) == ifindex
                        && k.mac == src_mac
                        && in_prefix(src_ip, k.ip_be, plen - SEC_KEY_PREFIX_BITS)
                })
                .max_by_key(|((plen, _), _)| *plen)
                .map(|(_, flags)| flags))
        })
    }

    /// `stage::security` for either family: `lookup` the flags of the longest entry of the
    /// port's tap, source MAC and source address (`src_ip`, named `IP ...` or `IPv6 ...`;
    /// `family` what the step says was allowed).
    pub(super) fn port_security(
        &mut self,
        port: &LocalPort,
        src_mac: Mac,
        src_ip: String,
        family: &str,
        lookup: impl FnOnce(&Self) -> Result<Option<u32>, MapsError>,
    ) -> Result<Option<Out>, MapsError> {
        if port.flags & PORT_FLAG_SECURITY == 0 {
            self.step("port security", "disabled for this port");
            return Ok(None);
        }
        Ok(match lookup(self)? {
            None => {
                self.step(
                    "port security",
                    format!("source MAC {} is not the port's", fmt_mac(src_mac)),
                );
                Some(drop(Stat::DropSpoofMac))
            }
            Some(f) if f & SEC_IP_ALLOWED == 0 => {
                self.step(
                    "port security",
                    format!("source {src_ip} is not the port's"),
                );
                Some(drop(Stat::DropSpoofIp))
            }
            Some(_) => {
                self.step("port security", format!("source MAC and {family} allowed"));
                None
            }
        })
    }
}

// ---- sg ----

impl Walk<'_> {
    /// `stage::sg::check`: the security groups of the port on tap `ifindex` (its flags
    /// carry `PORT_FLAG_SG`) on packet `pkt` in direction `dir` (egress where the VM sends,
    /// ingress where a packet is delivered to it); `Some(drop)` when they refuse it.
    pub(super) fn sg(
        &mut self,
        ifindex: u32,
        port: &LocalPort,
        dir: u8,
        pkt: &Packet,
    ) -> Result<Option<Out>, MapsError> {
        if self.sg_tries.is_none() {
            self.sg_tries = Some((self.m.sg_remote.read()?, self.m.sg_rules.read()?));
        }
        // The conntrack entries the check may look at: the packet's own direction and, for
        // an ICMP error, the packet it quotes (this walk's new flows first).
        let mut ct = BTreeMap::new();
        for k in [
            Some(sg::flow_key(ifindex, pkt)),
            sg::quoted_key(ifindex, pkt),
        ]
        .into_iter()
        .flatten()
        {
            let e = match self.sg_created.get(&k) {
                Some(e) => Some(*e),
                None => self.m.ct.get(&k)?,
            };
            ct.extend(e.map(|e| (k, e)));
        }
        let d = match &self.sg_tries {
            Some((remotes, rules)) => sg::check(port, ifindex, dir, pkt, remotes, rules, &|k| {
                ct.get(k).copied()
            }),
            None => Decision::Refused,
        };
        if let Decision::Admitted {
            rule,
            new_flow: true,
        } = d
        {
            self.sg_created
                .extend(sg::new_flow(ifindex, dir, pkt, rule));
        }
        Ok(self.sg_step(d, dir, ifindex, port))
    }

    /// The trace line of security group decision `d` (either family) and its drop, if any.
    pub(super) fn sg_step(
        &mut self,
        d: Decision,
        dir: u8,
        ifindex: u32,
        port: &LocalPort,
    ) -> Option<Out> {
        let names = self.names;
        let rule = |r: u32| {
            let label = rule_label(names, r);
            match names.and_then(|n| n.rule(r)) {
                Some(n) => format!("rule {label} ({})", n.summary),
                None => format!("rule {label}"),
            }
        };
        let stateless = port.flags & PORT_FLAG_SG_STATELESS != 0;
        self.step(
            "security group",
            sg::describe(d, dir, ifindex, stateless, &rule),
        );
        (!d.passes()).then(|| drop(sg::refused(dir)))
    }
}

// ---- route ----

impl Walk<'_> {
    /// `stage::route`: a frame to router interface `gw`, from the VM on tap `ifindex`.
    pub(super) fn route(
        &mut self,
        vni: u32,
        ifindex: u32,
        gw: &RouterIface,
        src_mac: Mac,
        dst_mac: Mac,
        cfg: &HostConfig,
    ) -> Result<Out, MapsError> {
        self.step(
            "router",
            format!(
                "to router interface {} ({}) of router {:08x}",
                ip_be(gw.ip_be),
                fmt_mac(gw.mac),
                gw.router_id
            ),
        );
        if gw.flags & ROUTER_DOWN != 0 {
            self.step("router", "administratively down (admin_state_up false)");
            return Ok(drop(Stat::DropRouterDown));
        }
        let Some(route) = self.route_lookup(gw.router_id, be(self.p.dst))? else {
            self.step(
                "route",
                format!("{} is outside the router's subnets", self.p.dst),
            );
            return self.route_outbound(vni, gw.router_id, gw.mac, cfg);
        };
        let hop = if route.nexthop_be != 0 {
            self.step(
                "route",
                format!(
                    "{} by extra route via {} (vni {}, gateway {})",
                    self.p.dst,
                    ip_be(route.nexthop_be),
                    route.vni,
                    ip_be(route.gw_ip_be)
                ),
            );
            ip_be(route.nexthop_be)
        } else {
            self.step(
                "route",
                format!(
                    "{} via subnet of vni {} (gateway {})",
                    self.p.dst,
                    route.vni,
                    ip_be(route.gw_ip_be)
                ),
            );
            self.p.dst
        };
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
        let hop_key = IpKey {
            vni: route.vni,
            ip_be: be(hop),
        };
        let ep = match self.m.endpoints.get(&hop_key)? {
            Some(ep) => Some((ep.mac, ep.ifindex, ep.tunnel_ip_host)),
            None => self
                .m
                .vip_loc
                .get(&hop_key)?
                .map(|l| (l.mac, l.ifindex, l.tunnel_ip_host)),
        };
        let Some((mac, epifx, host)) = ep else {
            self.step(
                "endpoint",
                format!("no port with {hop} on vni {}", route.vni),
            );
            return Ok(drop(if route.nexthop_be != 0 {
                Stat::DropNoNexthop
            } else {
                Stat::DropNoEndpoint
            }));
        };
        if self.p.ttl <= 1 {
            return Ok(drop(Stat::DropTtlExceeded));
        }
        let back = format!("tap#{ifindex}");
        if let Some(answer) = self.mtu4(route.mtu, ip_be(gw.ip_be), back, src_mac, dst_mac) {
            return Ok(answer);
        }
        self.fip_hairpin_reply(vni)?;
        self.step(
            "endpoint",
            format!(
                "{} is {} {}",
                hop,
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

    /// `stage::mtu::check4`: the packet against the MTU of the network it goes into. Too
    /// long with DF: the ICMP error sent back out of `back` (the frame's MACs swapped), from
    /// `from`; without DF: a step saying it leaves as fragments (`None`: the walk goes on).
    pub(super) fn mtu4(
        &mut self,
        mtu: u16,
        from: Ipv4Addr,
        back: String,
        src_mac: Mac,
        dst_mac: Mac,
    ) -> Option<Out> {
        if mtu == 0 || self.p.len <= mtu {
            return None;
        }
        if self.p.df {
            self.step(
                "mtu",
                format!(
                    "{} bytes with DF, network MTU {mtu}: ICMP fragmentation needed (mtu {mtu}) from {from}",
                    self.p.len
                ),
            );
            return Some(out(Stat::IcmpFragNeeded, back, dst_mac, src_mac));
        }
        let (slice, count) =
            dvr_common::frag::plan(u32::from(self.p.len).saturating_sub(20), mtu).unzip();
        let what = match (slice, count) {
            (Some(slice), Some(count)) => {
                format!("{count} fragments of at most {} bytes", slice + 20)
            }
            _ => "fragments it cannot cut: drop_frag_failed".to_string(),
        };
        self.step(
            "mtu",
            format!(
                "{} bytes, network MTU {mtu}, no DF: sent as {what}",
                self.p.len
            ),
        );
        None
    }

    /// `stage::route`, outside the router's subnets: a FIP of the same router (hairpin),
    /// else out through the VM's own FIP, else through the router's centralized SNAT.
    fn route_outbound(
        &mut self,
        vni: u32,
        router: u32,
        gw_mac: Mac,
        cfg: &HostConfig,
    ) -> Result<Out, MapsError> {
        if let Some(f) = self.m.fips.get(&be(self.p.dst))?
            && f.router_id == router
            && f.flags & (FIP_LOCAL | FIP_REMOTE) != 0
        {
            return Ok(self.fip_hairpin(&f, cfg));
        }
        if self.m.fips.get(&be(self.p.src))?.is_some() {
            self.step("fip", format!("source {} is a floating IP", self.p.src));
            return Ok(drop(Stat::DropFipSpoof));
        }
        if let Some(src) = self.m.fip_src.get(&IpKey {
            vni,
            ip_be: be(self.p.src),
        })? {
            return self.fip_snat(vni, src, cfg);
        }
        self.snat_steer(vni, gw_mac, cfg)
    }
}

// ---- fip ----

impl Walk<'_> {
    /// `stage::fip::hairpin`: to FIP `f` of the VM's own router.
    fn fip_hairpin(&mut self, f: &FipEntry, cfg: &HostConfig) -> Out {
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
            return out(
                Stat::FipHairpin,
                format!("tap#{}", f.ifindex),
                f.gw_mac,
                f.port_mac,
            );
        }
        out(
            Stat::FipHairpin,
            format!("tunnel {} vni {}", Ipv4Addr::from(f.tunnel_ip_host), f.vni),
            cfg.dvr_mac,
            f.port_mac,
        )
    }

    /// `stage::fip::hairpin_reply`: the reply of a hairpin flow leaves with the FIP as
    /// source.
    pub(super) fn fip_hairpin_reply(&mut self, vni: u32) -> Result<(), MapsError> {
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

    /// `stage::fip::snat`: from a VM with FIP `src`, translated to it.
    fn fip_snat(&mut self, vni: u32, src: FipSrc, cfg: &HostConfig) -> Result<Out, MapsError> {
        self.step(
            "fip",
            format!("source has floating IP {}: SNAT to it", ip_be(src.fip_be)),
        );
        if cfg.ext_ifindex == 0 {
            return Ok(drop(Stat::DropNoExternal));
        }
        let ha = if src.flags & FIP_HA != 0 { SNAT_HA } else { 0 };
        if !self.ha_serves(ha, src.router_id)? {
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

    /// `stage::fip::from_tunnel`: hairpin traffic to a FIP served here (None: not to a
    /// FIP).
    pub(super) fn fip_from_tunnel(&mut self) -> Result<Option<Out>, MapsError> {
        let Some(f) = self.m.fips.get(&be(self.p.dst))? else {
            return Ok(None);
        };
        if f.flags & FIP_LOCAL == 0 || self.route_lookup(f.router_id, be(self.p.src))?.is_none() {
            return Ok(Some(drop(Stat::DropFipNotExternal)));
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
        Ok(Some(out(
            Stat::FipHairpin,
            format!("tap#{}", f.ifindex),
            f.gw_mac,
            f.port_mac,
        )))
    }

    /// `stage::fip::inbound`: from the external network to a FIP (or passed on).
    pub(super) fn fip_inbound(&mut self, cfg: &HostConfig) -> Result<Out, MapsError> {
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
                flood_vni: None,
            });
        };
        if f.flags & (FIP_LOCAL | FIP_CENTRAL) == 0 {
            return Ok(drop(if f.flags & FIP_UNASSOCIATED != 0 {
                Stat::DropFipUnassociated
            } else {
                Stat::DropFipNotHere
            }));
        }
        let ha = if f.flags & FIP_HA != 0 { SNAT_HA } else { 0 };
        if !self.ha_serves(ha, f.router_id)? {
            return Ok(drop(Stat::DropSnatStandby));
        }
        if f.flags & FIP_ROUTER_DOWN != 0 {
            self.step("fip", "its router is administratively down");
            return Ok(drop(Stat::DropRouterDown));
        }
        let (src_mac, dst_mac) = (self.p.src_mac.unwrap_or_default(), cfg.ext_mac);
        let back = format!("ext#{}", cfg.ext_ifindex);
        if let Some(answer) = self.mtu4(f.mtu, self.p.dst, back, src_mac, dst_mac) {
            return Ok(answer);
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

// ---- snat ----

impl Walk<'_> {
    /// `stage::snat::steer`: a VM without a FIP, to the router's SNAT host.
    fn snat_steer(&mut self, vni: u32, gw_mac: Mac, cfg: &HostConfig) -> Result<Out, MapsError> {
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
            return match self.snat_router_here("snat", vni, st.csnat_mac)? {
                Ok(r) => self.snat_out(vni, &r, cfg),
                Err(o) => Ok(o),
            };
        }
        Ok(self.steered("snat", "", vni, &st, cfg))
    }

    /// The step where a router's traffic reaches its SNAT host: this host
    /// (`DVR_SNAT_ROUTERS` at csnat port `csnat_mac`), `Err` the drop when it is not served
    /// here (`stage::ha`, or no entry).
    pub(super) fn snat_router_here(
        &mut self,
        stage: &'static str,
        vni: u32,
        csnat_mac: Mac,
    ) -> Result<Result<SnatRouter, Out>, MapsError> {
        self.step(stage, "this host is the router's SNAT host");
        let r = self.m.snat_routers.get(&FdbKey {
            vni,
            mac: csnat_mac,
            _pad: [0; 2],
        })?;
        Ok(match r {
            Some(r) if !self.ha_serves(r.flags, r.router_id)? => Err(drop(Stat::DropSnatStandby)),
            Some(r) => Ok(r),
            None => Err(drop(Stat::DropNoRoute)),
        })
    }

    /// Another host is the router's SNAT host (steering `st`): tunnelled there, the step's
    /// text after `prefix`.
    pub(super) fn steered(
        &mut self,
        stage: &'static str,
        prefix: &str,
        vni: u32,
        st: &SnatSteer,
        cfg: &HostConfig,
    ) -> Out {
        self.step(
            stage,
            format!(
                "{prefix}steered to SNAT host {} (csnat port {})",
                Ipv4Addr::from(st.tunnel_ip_host),
                fmt_mac(st.csnat_mac)
            ),
        );
        out(
            Stat::SnatSteered,
            format!("tunnel {} vni {vni}", Ipv4Addr::from(st.tunnel_ip_host)),
            cfg.dvr_mac,
            st.csnat_mac,
        )
    }

    /// `stage::snat::from_tunnel`: the SNAT host, a frame to a csnat port of router `r`.
    pub(super) fn snat_from_tunnel(
        &mut self,
        vni: u32,
        r: &SnatRouter,
        cfg: &HostConfig,
    ) -> Result<Out, MapsError> {
        self.step(
            "snat",
            format!("to a csnat port of router {:08x}", r.router_id),
        );
        if !self.ha_serves(r.flags, r.router_id)? {
            return Ok(drop(Stat::DropSnatStandby));
        }
        if self.route_lookup(r.router_id, be(self.p.src))?.is_none() {
            return Ok(drop(Stat::DropNoRoute));
        }
        if let Some(src) = self.m.fip_src.get(&IpKey {
            vni,
            ip_be: be(self.p.src),
        })? {
            return self.fip_snat(vni, src, cfg);
        }
        if r.flags & SNAT_ENABLED == 0 {
            return Ok(drop(Stat::DropSnatDisabled));
        }
        self.snat_out(vni, r, cfg)
    }

    /// `stage::snat::out`: port-address translation to router `r`'s external IP.
    fn snat_out(&mut self, vni: u32, r: &SnatRouter, cfg: &HostConfig) -> Result<Out, MapsError> {
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

    /// `stage::snat::reply`: external interface, to router `r`'s external IP.
    pub(super) fn snat_reply(
        &mut self,
        r: &SnatRouter,
        cfg: &HostConfig,
    ) -> Result<Out, MapsError> {
        self.step(
            "snat",
            format!("to router {:08x}'s external IP", r.router_id),
        );
        if !self.ha_serves(r.flags, r.router_id)? {
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
        // The VM's own port (or ICMP echo id) comes back too: the port's security groups
        // see the reply of the flow it opened.
        if e.nat_port_be != 0 {
            if self.p.proto == 1 {
                self.p.sport = u16::from_be(e.nat_port_be);
            } else {
                self.p.dport = u16::from_be(e.nat_port_be);
            }
        }
        let Some(ep) = self.m.endpoints.get(&IpKey {
            vni,
            ip_be: e.nat_ip_be,
        })?
        else {
            return Ok(drop(Stat::DropNoEndpoint));
        };
        let gw = self
            .route_lookup(r.router_id, e.nat_ip_be)?
            .map_or([0; 6], |r| r.gw_mac);
        Ok(deliver(
            Stat::SnatIn,
            ep.mac,
            gw,
            ep.ifindex,
            ep.tunnel_ip_host,
            vni,
            cfg.dvr_mac,
        ))
    }
}

// ---- ha, and the external gateway ----

impl Walk<'_> {
    /// `stage::ha`: an HA router is served only while its fence runs (docs/HA.md); records
    /// the check.
    pub(super) fn ha_serves(&mut self, flags: u32, router_id: u32) -> Result<bool, MapsError> {
        if flags & SNAT_HA == 0 {
            return Ok(true);
        }
        let until = self.m.ha_fence.get(&router_id)?;
        let now = crate::clock::fence_now_ns();
        let ok = fence_active(until, now);
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

    /// The learned MAC of external gateway `gw` (DVR_EXT_NEIGH), which `fip::snat` and
    /// `snat::out` send to.
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
}
