//! IPv6 packet fixture tables, through BPF_PROG_TEST_RUN (harness: `dvr_tests::fixture`):
//! neighbour discovery answered and guarded on the tap, IPv6 port security, routing between
//! the router's IPv6 subnets, and what is never routed. The IPv4 state of `fixtures.rs`
//! (`TWO_HOSTS`: host A with VM1 on net1 and VM2 on net2, host B with VM3 and VM4, one
//! distributed router) is compiled and applied as usual; its IPv6 side is written into the
//! IPv6 maps directly ([`with_ipv6`]), as the compiler would: net1 fd00:1::/64 (gateway
//! ::1), net2 fd00:2::/64, VMs at ::11, ::12, ::13, ::14. Needs root (CAP_BPF) and bpffs.
use dvr_common::{
    ip6::{
        Ip6, Ip6Key, ROUTE6_KEY_PREFIX_BITS, RaFrame, Route6, Route6Key, RouterIface6,
        SEC6_KEY_PREFIX_BITS, Sec6Key, link_local,
    },
    l2::FdbKey,
    port::{PORT_FLAG_SG, SEC_IP_ALLOWED, SEC_MAC_ONLY},
    route::Endpoint,
    stats::Stat,
};
use dvr_tests::{
    fixture::{
        Case, DVR_MAC_A, Fixture, GW1_MAC, GW2_MAC, TCX_DROP, TCX_NEXT, TCX_REDIRECT, TWO_HOSTS,
        VM1_IFINDEX, VM1_MAC, VM2_IFINDEX, VM2_MAC, VM3_MAC, VM4_MAC, case, quiet, two_hosts,
    },
    packet::{
        ALL_NODES, ALL_ROUTERS, ETH_P_IPV6, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST,
        ICMP6_TIME_EXCEEDED, IPPROTO_ICMPV6, IPPROTO_UDP, NA_OVERRIDE, NA_ROUTER, NA_SOLICITED,
        ND_NA, ND_NS, ND_RA, ND_REDIRECT, ND_RS, OPT_SLLA, OPT_TLLA, assert_icmp6_checksum,
        echo_body, eth, icmp6, icmp6_frame, ipv6, nd_body, nd_opt, solicited_node, udp6,
    },
};
use dvr_userspace::attach::{PROG_TAP, PROG_TAP_OUT};

/// MLDv2 listener report.
const MLD2_REPORT: u8 = 143;

const VNI1: u32 = 101;
const VNI2: u32 = 102;
/// Host B's tunnel address, host order.
const HOST_B: u32 = 0xc000_0202;

/// `fd00:<net>::<host>`.
const fn addr(net: u8, host: u8) -> Ip6 {
    [0xfd, 0, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]
}
const VM1_IP: Ip6 = addr(1, 0x11);
const VM2_IP: Ip6 = addr(2, 0x12);
const VM3_IP: Ip6 = addr(1, 0x13);
const VM4_IP: Ip6 = addr(2, 0x14);
const GW1_IP: Ip6 = addr(1, 1);
const GW2_IP: Ip6 = addr(2, 1);
const NET1: Ip6 = addr(1, 0);
const NET2: Ip6 = addr(2, 0);
const UNSPECIFIED: Ip6 = [0; 16];

/// TWO_HOSTS with the IPv6 side of its router written into the IPv6 maps: routes, router
/// interface addresses (and link-local addresses), endpoints, VM1's port security, and the
/// router advertisement of net1. Returns the fixture and that advertisement frame.
fn with_ipv6() -> (Fixture, Vec<u8>) {
    let mut f = two_hosts(TWO_HOSTS);
    let m = &mut f.maps;
    let gw = m
        .gw_by_mac
        .get(&FdbKey {
            vni: VNI1,
            mac: GW1_MAC,
            _pad: [0; 2],
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no router interface for GW1"));
    let router_id = gw.router_id;
    let ok = |r: Result<(), dvr_userspace::maps::MapsError>| r.unwrap_or_else(|e| panic!("{e}"));
    for (vni, net, gw_mac, gw_ip) in [(VNI1, NET1, GW1_MAC, GW1_IP), (VNI2, NET2, GW2_MAC, GW2_IP)]
    {
        let key = Route6Key {
            router_id_be: router_id.to_be(),
            ip: net,
        };
        let route = Route6 {
            vni,
            gw_mac,
            mtu: 1500,
            gw_ip,
            nexthop: [0; 16],
        };
        ok(m.routes6.put(&(ROUTE6_KEY_PREFIX_BITS + 64, key), &route));
        for ip in [gw_ip, link_local(gw_mac)] {
            let iface = RouterIface6 {
                router_id,
                mac: gw_mac,
                _pad: [0; 2],
                ip,
            };
            ok(m.gw_by_ip6.put(&Ip6Key { vni, ip }, &iface));
        }
    }
    for (vni, ip, mac, ifindex, host) in [
        (VNI1, VM1_IP, VM1_MAC, VM1_IFINDEX, 0),
        (VNI2, VM2_IP, VM2_MAC, VM2_IFINDEX, 0),
        (VNI1, VM3_IP, VM3_MAC, 0, HOST_B),
        (VNI2, VM4_IP, VM4_MAC, 0, HOST_B),
    ] {
        let ep = Endpoint {
            mac,
            _pad: [0; 2],
            ifindex,
            tunnel_ip_host: host,
        };
        ok(m.endpoints6.put(&Ip6Key { vni, ip }, &ep));
    }
    let sec = |ip: Ip6| Sec6Key {
        ifindex_be: VM1_IFINDEX.to_be(),
        mac: VM1_MAC,
        _pad: [0; 2],
        ip,
    };
    ok(m.port_security6
        .put(&(SEC6_KEY_PREFIX_BITS, sec(UNSPECIFIED)), &SEC_MAC_ONLY));
    for ip in [VM1_IP, link_local(VM1_MAC)] {
        ok(m.port_security6
            .put(&(SEC6_KEY_PREFIX_BITS + 128, sec(ip)), &SEC_IP_ALLOWED));
    }
    let ra = ra_frame();
    let mut value = RaFrame {
        len: ra.len() as u32,
        ..Default::default()
    };
    value.frame[..ra.len()].copy_from_slice(&ra);
    ok(m.ra.put(&VNI1, &value));
    (f, ra)
}

/// Net1's router advertisement, as the agent would build it: from GW1's link-local address
/// to all nodes, with its link-layer address and fd00:1::/64 for SLAAC.
fn ra_frame() -> Vec<u8> {
    let mut body = vec![64, 0];
    body.extend_from_slice(&1800u16.to_be_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&nd_opt(OPT_SLLA, GW1_MAC));
    body.extend_from_slice(&[3, 4, 64, 0xc0]);
    body.extend_from_slice(&86400u32.to_be_bytes());
    body.extend_from_slice(&14400u32.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&NET1);
    icmp6_frame(
        [0x33, 0x33, 0, 0, 0, 1],
        GW1_MAC,
        link_local(GW1_MAC),
        ALL_NODES,
        255,
        ND_RA,
        0,
        &body,
    )
}

/// A neighbour solicitation from VM1 for `target` (multicast to its solicited-node group),
/// with VM1's link-layer address.
fn ns_from_vm1(src: Ip6, target: Ip6) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    let opts = if src == UNSPECIFIED {
        vec![]
    } else {
        nd_opt(OPT_SLLA, VM1_MAC)
    };
    icmp6_frame(
        group_mac,
        VM1_MAC,
        src,
        group,
        255,
        ND_NS,
        0,
        &nd_body(0, target, &opts),
    )
}

/// The advertisement the router must answer with: exact bytes by the builder.
fn na_for(target: Ip6, dst_mac: [u8; 6], dst: Ip6, flags: u8) -> Vec<u8> {
    icmp6_frame(
        dst_mac,
        GW1_MAC,
        target,
        dst,
        255,
        ND_NA,
        0,
        &nd_body(flags, target, &nd_opt(OPT_TLLA, GW1_MAC)),
    )
}

/// A UDP datagram from VM1's tap.
fn udp_from(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ip6, dst: Ip6, hop: u8) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_P_IPV6,
        &udp6(src, dst, hop, 40000, 33434, b"probe"),
    )
}

/// An answer of net1's gateway to VM1: the ICMPv6 message `kind` (code 0) with `body`, from
/// the gateway's MAC and address, hop limit 64.
fn answer_from_gw1(kind: u8, body: &[u8]) -> Vec<u8> {
    icmp6_frame(VM1_MAC, GW1_MAC, GW1_IP, VM1_IP, 64, kind, 0, body)
}

/// A table row: VM1's tap drops `frame` and counts `reason`.
fn dropped(name: &'static str, frame: Vec<u8>, reason: Stat) -> Case {
    case(name, PROG_TAP, frame, TCX_DROP, reason)
}

/// A table row: VM1's tap sends `frame` unchanged through the tunnel (to host B).
fn tunnelled(name: &'static str, frame: Vec<u8>) -> Case {
    case(name, PROG_TAP, frame, TCX_REDIRECT, Stat::TxTunnel).unchanged()
}

// ---- neighbour discovery ----

#[test]
fn solicitations_for_router_addresses_are_answered_on_the_tap() {
    let (mut f, _) = with_ipv6();
    let rso = NA_ROUTER | NA_SOLICITED | NA_OVERRIDE;
    let ll = link_local(GW1_MAC);
    f.table(vec![
        case(
            "NS for the gateway",
            PROG_TAP,
            ns_from_vm1(VM1_IP, GW1_IP),
            TCX_REDIRECT,
            Stat::NdAdvert,
        )
        .check(move |out| {
            assert_eq!(
                out,
                na_for(GW1_IP, VM1_MAC, VM1_IP, rso),
                "the advertisement"
            );
            assert_eq!(out[14 + 40 + 4], 0xe0, "router, solicited, override");
            assert_icmp6_checksum(out);
        }),
        case(
            "NS for the gateway's link-local address",
            PROG_TAP,
            ns_from_vm1(link_local(VM1_MAC), ll),
            TCX_REDIRECT,
            Stat::NdAdvert,
        )
        .check(move |out| {
            assert_eq!(out, na_for(ll, VM1_MAC, link_local(VM1_MAC), rso));
            assert_icmp6_checksum(out);
        }),
        case(
            "DAD NS (from ::) for the gateway",
            PROG_TAP,
            ns_from_vm1(UNSPECIFIED, GW1_IP),
            TCX_REDIRECT,
            Stat::NdAdvert,
        )
        .check(|out| {
            assert_eq!(
                out,
                na_for(
                    GW1_IP,
                    [0x33, 0x33, 0, 0, 0, 1],
                    ALL_NODES,
                    NA_ROUTER | NA_OVERRIDE
                ),
                "to all nodes, not solicited"
            );
            assert_icmp6_checksum(out);
        }),
        case(
            "NS for another VM is flooded, not answered",
            PROG_TAP,
            ns_from_vm1(VM1_IP, VM3_IP),
            TCX_DROP,
            Stat::Flooded,
        )
        .unchanged(),
        dropped(
            "NS with a hop limit below 255 is no neighbour discovery",
            {
                let mut fr = ns_from_vm1(VM1_IP, GW1_IP);
                fr[14 + 7] = 64;
                fr
            },
            Stat::DropMalformed,
        ),
    ]);
}

#[test]
fn router_solicitation_is_answered_with_the_networks_advertisement() {
    let (mut f, ra) = with_ipv6();
    let rs = || {
        icmp6_frame(
            [0x33, 0x33, 0, 0, 0, 2],
            VM1_MAC,
            link_local(VM1_MAC),
            ALL_ROUTERS,
            255,
            ND_RS,
            0,
            &[&[0u8; 4][..], &nd_opt(OPT_SLLA, VM1_MAC)].concat(),
        )
    };
    f.case(
        case("RS", PROG_TAP, rs(), TCX_REDIRECT, Stat::RaSent).check(move |out| {
            assert_eq!(out, ra, "the advertisement from the map, as it is");
            assert_icmp6_checksum(out);
        }),
    );
    f.maps.ra.del(&VNI1).unwrap_or_else(|e| panic!("{e}"));
    f.case(
        case(
            "RS without an advertisement: multicast as any",
            PROG_TAP,
            rs(),
            TCX_DROP,
            Stat::Flooded,
        )
        .unchanged(),
    );
}

#[test]
fn a_vm_neither_advertises_a_router_nor_claims_foreign_addresses() {
    let (mut f, _) = with_ipv6();
    let na = |target: Ip6, tlla: [u8; 6]| {
        icmp6_frame(
            VM3_MAC,
            VM1_MAC,
            VM1_IP,
            VM3_IP,
            255,
            ND_NA,
            0,
            &nd_body(NA_SOLICITED | NA_OVERRIDE, target, &nd_opt(OPT_TLLA, tlla)),
        )
    };
    let mut redirect_body = vec![0u8; 4];
    redirect_body.extend_from_slice(&GW1_IP);
    redirect_body.extend_from_slice(&VM3_IP);
    f.table(vec![
        dropped(
            "RA from a VM",
            {
                let mut fr = ra_frame();
                fr[6..12].copy_from_slice(&VM1_MAC);
                fr[14 + 8..14 + 24].copy_from_slice(&link_local(VM1_MAC));
                fr
            },
            Stat::DropRaGuard,
        ),
        dropped(
            "redirect from a VM",
            icmp6_frame(
                VM3_MAC,
                VM1_MAC,
                link_local(VM1_MAC),
                link_local(VM3_MAC),
                255,
                ND_REDIRECT,
                0,
                &redirect_body,
            ),
            Stat::DropRaGuard,
        ),
        dropped(
            "NA for a foreign target",
            na(addr(1, 0x99), VM1_MAC),
            Stat::DropSpoofNd,
        ),
        dropped(
            "NA for the gateway's address",
            na(GW1_IP, VM1_MAC),
            Stat::DropSpoofNd,
        ),
        tunnelled(
            "NA for its own address, to VM3 on host B",
            na(VM1_IP, VM1_MAC),
        ),
        dropped(
            "NA with a target link-layer address not its MAC",
            na(VM1_IP, VM3_MAC),
            Stat::DropSpoofNd,
        ),
        dropped(
            "NS with a source link-layer address not its MAC",
            {
                let (group, group_mac) = solicited_node(VM3_IP);
                icmp6_frame(
                    group_mac,
                    VM1_MAC,
                    VM1_IP,
                    group,
                    255,
                    ND_NS,
                    0,
                    &nd_body(0, VM3_IP, &nd_opt(OPT_SLLA, VM3_MAC)),
                )
            },
            Stat::DropSpoofNd,
        ),
    ]);
}

// ---- port security ----

#[test]
fn ipv6_sources_are_the_ports_own() {
    let (mut f, _) = with_ipv6();
    f.table(vec![
        dropped(
            "forged IPv6 source",
            udp_from(VM1_MAC, VM3_MAC, addr(1, 0x99), VM3_IP, 64),
            Stat::DropSpoofIp,
        ),
        dropped(
            "another MAC on VM1's tap",
            udp_from(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 64),
            Stat::DropSpoofMac,
        ),
        tunnelled(
            "its own link-local source, to VM3",
            udp_from(
                VM1_MAC,
                VM3_MAC,
                link_local(VM1_MAC),
                link_local(VM3_MAC),
                64,
            ),
        ),
        tunnelled(
            "its own global source, to VM3",
            udp_from(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64),
        ),
        dropped(
            ":: source on anything but DAD or MLD",
            udp_from(VM1_MAC, VM3_MAC, UNSPECIFIED, VM3_IP, 64),
            Stat::DropSpoofIp,
        ),
    ]);
}

// ---- routing ----

#[test]
fn echo_to_the_gateway_is_answered() {
    let (mut f, _) = with_ipv6();
    let req = icmp6_frame(
        GW1_MAC,
        VM1_MAC,
        VM1_IP,
        GW1_IP,
        64,
        ICMP6_ECHO_REQUEST,
        0,
        &echo_body(0x4242, 7),
    );
    let want = answer_from_gw1(ICMP6_ECHO_REPLY, &echo_body(0x4242, 7));
    let mut low_hop = req.clone();
    low_hop[14 + 7] = 9;
    f.table(vec![
        case(
            "echo to the gateway",
            PROG_TAP,
            req,
            TCX_REDIRECT,
            Stat::IcmpEchoReply,
        )
        .check(move |out| {
            assert_eq!(out, want, "echo reply, addresses swapped");
            assert_icmp6_checksum(out);
        }),
        case(
            "echo to the gateway with hop limit 9: reply with 64",
            PROG_TAP,
            low_hop,
            TCX_REDIRECT,
            Stat::IcmpEchoReply,
        )
        .check(|out| {
            assert_eq!(out[14 + 7], 64);
            assert_icmp6_checksum(out);
        }),
        dropped(
            "UDP to the gateway",
            udp_from(VM1_MAC, GW1_MAC, VM1_IP, GW1_IP, 64),
            Stat::DropRouterLocal,
        ),
    ]);
}

#[test]
fn routed_between_ipv6_subnets_like_ipv4() {
    let (mut f, _) = with_ipv6();
    let to_vm2 = udp_from(VM1_MAC, GW1_MAC, VM1_IP, VM2_IP, 64);
    let to_vm4 = udp_from(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 64);
    let (l2, l4) = (to_vm2.clone(), to_vm4.clone());
    f.table(vec![
        case(
            "routed to VM2 on this host",
            PROG_TAP,
            to_vm2,
            TCX_REDIRECT,
            Stat::Routed,
        )
        .check(move |out| {
            assert_eq!(&out[0..6], &VM2_MAC);
            assert_eq!(&out[6..12], &GW2_MAC, "destination subnet's gateway MAC");
            assert_eq!(out[14 + 7], 63, "hop limit - 1");
            assert_eq!(&out[12..14 + 7], &l2[12..14 + 7]);
            assert_eq!(&out[14 + 8..], &l2[14 + 8..], "the rest untouched");
        }),
        case(
            "routed to VM4 on host B",
            PROG_TAP,
            to_vm4,
            TCX_REDIRECT,
            Stat::Routed,
        )
        .check(move |out| {
            assert_eq!(&out[0..6], &VM4_MAC);
            assert_eq!(&out[6..12], &DVR_MAC_A, "host A's DVR MAC on the tunnel");
            assert_eq!(out[14 + 7], 63);
            assert_eq!(&out[14 + 8..], &l4[14 + 8..]);
        }),
        dropped(
            "to a link-local address through the router",
            udp_from(VM1_MAC, GW1_MAC, VM1_IP, link_local(VM4_MAC), 64),
            Stat::DropLinkLocal,
        ),
        dropped(
            "from a link-local address through the router",
            udp_from(VM1_MAC, GW1_MAC, link_local(VM1_MAC), VM4_IP, 64),
            Stat::DropLinkLocal,
        ),
        dropped(
            "outside the router's subnets",
            udp_from(VM1_MAC, GW1_MAC, VM1_IP, addr(9, 1), 64),
            Stat::DropNoRoute,
        ),
        dropped(
            "to no port of the subnet",
            udp_from(VM1_MAC, GW1_MAC, VM1_IP, addr(2, 0x77), 64),
            Stat::DropNoEndpoint,
        ),
    ]);
}

#[test]
fn hop_limit_one_is_answered_with_time_exceeded_from_the_sources_gateway() {
    let (mut f, _) = with_ipv6();
    let probe = udp_from(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 1);
    let quoted = probe[14..].to_vec();
    let err = icmp6_frame(
        GW1_MAC,
        VM1_MAC,
        VM1_IP,
        VM4_IP,
        1,
        ICMP6_TIME_EXCEEDED,
        0,
        &[&[0u8; 4][..], &udp6(VM4_IP, VM1_IP, 64, 1, 2, b"")].concat(),
    );
    f.table(vec![
        case(
            "hop limit 1 to VM4",
            PROG_TAP,
            probe,
            TCX_REDIRECT,
            Stat::IcmpTimeExceeded,
        )
        .check(move |out| {
            let want = answer_from_gw1(ICMP6_TIME_EXCEEDED, &[&[0u8; 4][..], &quoted].concat());
            assert_eq!(out, want, "from net1's gateway, quoting the whole probe");
            assert_icmp6_checksum(out);
        }),
        dropped(
            "an ICMPv6 error with hop limit 1 is not answered",
            err,
            Stat::DropTtlExceeded,
        ),
    ]);
}

#[test]
fn longer_than_the_next_network_is_answered_with_packet_too_big() {
    let (mut f, _) = with_ipv6();
    let sized = |len: usize| {
        eth(
            GW1_MAC,
            VM1_MAC,
            ETH_P_IPV6,
            &udp6(VM1_IP, VM4_IP, 64, 40000, 9, &vec![5u8; len - 48]),
        )
    };
    let big = sized(1501);
    f.table(vec![
        case(
            "1500 bytes into a 1500 network",
            PROG_TAP,
            sized(1500),
            TCX_REDIRECT,
            Stat::Routed,
        ),
        case(
            "1501 bytes into a 1500 network",
            PROG_TAP,
            big.clone(),
            TCX_REDIRECT,
            Stat::IcmpTooBig,
        )
        .check(move |out| {
            let mut body = 1500u32.to_be_bytes().to_vec();
            body.extend_from_slice(&big[14..14 + 40 + 64]);
            let want = answer_from_gw1(2, &body);
            assert_eq!(out, want, "packet too big, MTU 1500, from net1's gateway");
            assert_icmp6_checksum(out);
        }),
    ]);
}

#[test]
fn a_long_extension_header_chain_is_dropped() {
    let (mut f, _) = with_ipv6();
    let udp = udp6(VM1_IP, VM3_IP, 64, 1, 2, b"x");
    let chain = |n: usize| {
        // n destination options headers (8 bytes of padding each) before the UDP datagram.
        let mut payload = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n { IPPROTO_UDP } else { 60 };
            payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        payload.extend_from_slice(&udp[40..]);
        eth(
            VM3_MAC,
            VM1_MAC,
            ETH_P_IPV6,
            &ipv6(VM1_IP, VM3_IP, 64, 60, &payload),
        )
    };
    f.table(vec![
        tunnelled("5 extension headers", chain(5)),
        dropped("6 extension headers", chain(6), Stat::DropExtHdr),
    ]);
}

// ---- security groups: IPv6 fails closed until its rules are enforced ----

#[test]
fn a_port_with_security_groups_passes_only_neighbour_and_listener_discovery() {
    let (mut f, _) = with_ipv6();
    let mut port = f
        .maps
        .local_ports
        .get(&VM1_IFINDEX)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("VM1 has no local port"));
    port.flags |= PORT_FLAG_SG;
    f.maps
        .local_ports
        .put(&VM1_IFINDEX, &port)
        .unwrap_or_else(|e| panic!("{e}"));
    // An MLDv2 report from the link-local address, behind a hop-by-hop router alert.
    let mld_dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let mut mld = vec![IPPROTO_ICMPV6, 0, 5, 2, 0, 0, 1, 0];
    mld.extend_from_slice(&icmp6(
        link_local(VM1_MAC),
        mld_dst,
        MLD2_REPORT,
        0,
        &[0; 4],
    ));
    let mld = eth(
        [0x33, 0x33, 0, 0, 0, 0x16],
        VM1_MAC,
        ETH_P_IPV6,
        &ipv6(link_local(VM1_MAC), mld_dst, 1, 0, &mld),
    );
    let na_to_vm1 = icmp6_frame(
        VM1_MAC,
        VM3_MAC,
        VM3_IP,
        VM1_IP,
        255,
        ND_NA,
        0,
        &nd_body(NA_SOLICITED, VM3_IP, &nd_opt(OPT_TLLA, VM3_MAC)),
    );
    f.table(vec![
        dropped(
            "UDP from the port",
            udp_from(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64),
            Stat::DropSgEgress,
        ),
        case(
            "NS for the gateway from the port",
            PROG_TAP,
            ns_from_vm1(VM1_IP, GW1_IP),
            TCX_REDIRECT,
            Stat::NdAdvert,
        ),
        case(
            "MLD report from the port",
            PROG_TAP,
            mld,
            TCX_DROP,
            Stat::Flooded,
        ),
        case(
            "UDP delivered to the port",
            PROG_TAP_OUT,
            udp_from(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 64),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        quiet(
            "NA delivered to the port",
            PROG_TAP_OUT,
            na_to_vm1,
            TCX_NEXT,
        ),
    ]);
}
