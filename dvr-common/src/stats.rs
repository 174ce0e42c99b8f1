//! Per-CPU packet counters: one slot per [`Stat`]. Drop reasons are precise and stable: the
//! counters, `dvrctl show stats` and traces all name them through [`Stat::as_str`].

macro_rules! stats {
    ($($variant:ident = $id:literal, $drop:literal, $text:literal;)*) => {
        /// What happened to a packet. `#[repr(u32)]`: the discriminant is the counter index.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat { $($variant,)* }

        impl Stat {
            pub const ALL: &'static [Stat] = &[$(Stat::$variant,)*];
            /// Stable snake_case id used by counters, `dvrctl --json`, metrics and traces.
            pub const fn as_str(self) -> &'static str {
                match self { $(Stat::$variant => $id,)* }
            }
            /// One-line human description.
            pub const fn describe(self) -> &'static str {
                match self { $(Stat::$variant => $text,)* }
            }
            /// True for the reasons a packet was dropped.
            pub const fn is_drop(self) -> bool {
                match self { $(Stat::$variant => $drop,)* }
            }
        }
    };
}

stats! {
    TxLocal = "tx_local", false, "delivered to a local tap";
    TxTunnel = "tx_tunnel", false, "sent into the tunnel";
    Routed = "routed", false, "routed between subnets";
    Flooded = "flooded", false, "broadcast/unknown unicast replicated";
    ArpReply = "arp_reply", false, "ARP for a router interface answered";
    IcmpTimeExceeded = "icmp_time_exceeded", false, "TTL expired at the router: ICMP time exceeded sent back";
    IcmpEchoReply = "icmp_echo_reply", false, "ICMP echo to a router interface answered";
    RxTunnel = "rx_tunnel", false, "received from the tunnel";
    FipDnat = "fip_dnat", false, "floating IP: inbound translated to the fixed IP";
    FipSnat = "fip_snat", false, "floating IP: outbound translated to the floating IP";
    FipHairpin = "fip_hairpin", false, "floating IP reached from inside its router";
    FipIcmpError = "fip_icmp_error", false, "ICMP error through a floating IP translated";
    ExtArpReply = "ext_arp_reply", false, "ARP for a floating IP answered on the external NIC";
    ExtNeighLearned = "ext_neigh_learned", false, "external gateway MAC learned from ARP";
    SnatSteered = "snat_steered", false, "steered over the tunnel to the router's SNAT host";
    SnatOut = "snat_out", false, "port-address translated to the router's gateway IP";
    SnatIn = "snat_in", false, "SNAT reply translated back and sent to the VM";
    ExtPass = "ext_pass", false, "external NIC traffic not for the datapath, passed on";
    DropMalformed = "drop_malformed", true, "malformed or truncated header";
    DropUnknownPort = "drop_unknown_port", true, "frame from a tap with no port";
    DropSpoofMac = "drop_spoof_mac", true, "port security: source MAC not the port's";
    DropSpoofIp = "drop_spoof_ip", true, "port security: source IP not the port's";
    DropSpoofArp = "drop_spoof_arp", true, "port security: ARP sender not the port's";
    DropEthertype = "drop_ethertype", true, "unsupported ethertype";
    DropIpFragment = "drop_ip_fragment", true, "IPv4 fragment to a router interface";
    DropRouterLocal = "drop_router_local", true, "packet for a router interface other than ICMP echo";
    DropNoRoute = "drop_no_route", true, "no route: destination outside the router's subnets";
    DropNoEndpoint = "drop_no_endpoint", true, "no port with the destination IP";
    DropTtlExceeded = "drop_ttl_exceeded", true, "TTL exceeded while routing";
    DropUnknownPeer = "drop_unknown_peer", true, "tunnel packet from an unknown host";
    DropNoTunnelKey = "drop_no_tunnel_key", true, "tunnel packet without tunnel metadata";
    DropGatewayFromTunnel = "drop_gateway_from_tunnel", true, "frame for a router interface from the tunnel";
    DropNoLocalPort = "drop_no_local_port", true, "tunnel frame for no local port";
    DropNotReady = "drop_not_ready", true, "host configuration not loaded";
    DropRedirect = "drop_redirect", true, "redirect or tunnel key failed";
    DropFipUnassociated = "drop_fip_unassociated", true, "to a floating IP with no port";
    DropFipNotHere = "drop_fip_not_here", true, "to a floating IP served by another host";
    DropExtToFixedIp = "drop_ext_to_fixed_ip", true, "from outside to a fixed IP";
    DropFipNotExternal = "drop_fip_not_external", true, "to a floating IP from a non-external interface";
    DropFipSpoof = "drop_fip_spoof", true, "VM sent with a floating IP as source";
    DropNoNeighbor = "drop_no_neighbor", true, "external gateway MAC not learned yet";
    DropNoExternal = "drop_no_external", true, "host has no external interface";
    DropCtInsert = "drop_ct_insert", true, "conntrack entry could not be created";
    DropIcmpErrorNoFlow = "drop_icmp_error_no_flow", true, "ICMP error for no tracked flow";
    DropVipUnknown = "drop_vip_unknown", true, "VIP holder not learned yet";
    DropSnatDisabled = "drop_snat_disabled", true, "router has enable_snat false";
    DropSnatExhausted = "drop_snat_exhausted", true, "no free SNAT port for this destination";
    DropSnatFragment = "drop_snat_fragment", true, "non-first IPv4 fragment through port translation";
    DropSnatNoFlow = "drop_snat_no_flow", true, "to a router gateway IP for no tracked flow";
    DropArpOther = "drop_arp_other", true, "ARP that is neither request nor reply";
    DropSnatStandby = "drop_snat_standby", true, "frame for an HA router this host does not serve now (fence expired or absent)";
    DropSgEgress = "drop_sg_egress", true, "security groups: no egress rule of the port admits it";
    DropSgIngress = "drop_sg_ingress", true, "security groups: no ingress rule of the port admits it";
    DropPortDown = "drop_port_down", true, "port has admin_state_up false";
    NdAdvert = "nd_advert", false, "IPv6 neighbour solicitation for a router interface answered";
    RaSent = "ra_sent", false, "IPv6 router solicitation answered with the router advertisement";
    DropSpoofNd = "drop_spoof_nd", true, "port security: neighbour advertisement or link-layer option not the port's";
    DropRaGuard = "drop_ra_guard", true, "RA guard: router advertisement or redirect sent by a VM";
    DropLinkLocal = "drop_link_local", true, "IPv6 link-local address to be routed beyond its link";
    DropExtHdr = "drop_ext_hdr", true, "IPv6 extension header chain too long to parse";
    RoutedOut = "routed_out", false, "IPv6 routed out of the external interface (no NAT) on the SNAT host";
    RoutedIn = "routed_in", false, "IPv6 from the external network routed to a VM on the SNAT host";
    ExtNdAdvert = "ext_nd_advert", false, "neighbour solicitation for a router's external IPv6 address answered";
    DropRouterDown = "drop_router_down", true, "router has admin_state_up false";
    DropNoNexthop = "drop_no_nexthop", true, "extra route: no port holds its next hop address";
    IcmpFragNeeded = "icmp_frag_needed", false, "IPv4 with DF set longer than the next network's MTU: ICMP fragmentation needed sent back";
    IcmpTooBig = "icmp_too_big", false, "IPv6 longer than the next network's MTU: ICMPv6 packet too big sent back";
    Fragmented = "fragmented", false, "IPv4 without DF longer than the next network's MTU: sent as fragments";
    DropFragNeeded = "drop_frag_needed", true, "longer than the next network's MTU, not answered: ICMP rate limit, or an ICMP error or option-carrying header";
    DropFragFailed = "drop_frag_failed", true, "longer than the next network's MTU, could not be fragmented (options, GSO without DF, beyond the fragmenter's buffer)";
    TxEncap = "tx_encap", false, "VXLAN-encapsulated by the datapath and sent straight out of the underlay NIC (counted besides how it was delivered)";
    TxEncapDevice = "tx_encap_device", false, "to be VXLAN-encapsulated by the datapath but sent through the VXLAN device: a GSO packet (kept whole to the receiver that way), no route to the remote host the FIB helper gives from it (forwarding off on it?), or too long";
    DropEncap = "drop_encap", true, "VXLAN encapsulation failed after the frame was resized";
    RxDecap = "rx_decap", false, "VXLAN-decapsulated by the datapath on the underlay NIC (counted besides how it was delivered)";
    DropDecap = "drop_decap", true, "VXLAN decapsulation failed after the frame was resized";
    XdpExt = "xdp_ext", false, "finished by the external NIC's XDP program, before any socket buffer: a proxy ARP reply, a floating IP's packet to a port without security groups (counted besides its verdict)";
}

pub const STAT_COUNT: u32 = Stat::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_snake_case_and_indexes_dense() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?} discriminant is its counter index");
            assert!(
                s.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                s.as_str()
            );
            assert_eq!(
                s.is_drop(),
                s.as_str().starts_with("drop_"),
                "{}",
                s.as_str()
            );
            for t in &Stat::ALL[i + 1..] {
                assert_ne!(s.as_str(), t.as_str());
            }
        }
    }
}
