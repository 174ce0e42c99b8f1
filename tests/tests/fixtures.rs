//! Packet fixture tables run through BPF_PROG_TEST_RUN (the harness: `dvr_tests::fixture`):
//! the real object, maps filled by the real compiler and reconciler from a Neutron-shaped
//! state, and tables of cases. A case (`Case`) is one input frame through one program, with the return code, the one counter
//! that must move and what the output frame must be (unchanged, given bytes, or checks).
//! Each test sets up its state (the fixture, and between rows any map change the scenario
//! needs) and runs its rows in order; a row that builds on an earlier one's output is run
//! on its own (`Fixture::case` returns the output). Frames come from the shared builder
//! `dvr_tests::packet`. Needs root (CAP_BPF) and bpffs, no namespaces.
use dvr_common::{csum::checksum, stats::Stat};
use dvr_tests::fixture::{
    Case, DVR_MAC_A, EXT_MAC, Fixture, GW1_MAC, GW2_MAC, TCX_DROP, TCX_NEXT, TCX_REDIRECT,
    TWO_HOSTS as STATE, VM1_IFINDEX, VM1_MAC, VM2_MAC, VM3_MAC, VM4_MAC, case, quiet,
    two_hosts as fixture,
};
use dvr_tests::packet::{
    ARP_REPLY, ARP_REQUEST, BROADCAST, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, IPPROTO_UDP, arp,
    assert_checksums, eth, icmp_error, ip_of, ipv4, ping, tcp, udp,
};
use dvr_userspace::attach::{PROG_EXT, PROG_TAP, PROG_TAP_OUT, PROG_TUNNEL};
const VM1_IP: [u8; 4] = [10, 1, 0, 11];
const VM2_IP: [u8; 4] = [10, 2, 0, 12];
const VM3_IP: [u8; 4] = [10, 1, 0, 13];
const VM4_IP: [u8; 4] = [10, 2, 0, 14];
const GW1_IP: [u8; 4] = [10, 1, 0, 1];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x01];
const FIP1: [u8; 4] = [10, 5, 2, 1];
const FIP4: [u8; 4] = [10, 5, 2, 4];
const FIP_UNUSED: [u8; 4] = [10, 5, 2, 9];
const UPSTREAM_IP: [u8; 4] = [10, 5, 0, 1];
const INTERNET: [u8; 4] = [198, 51, 100, 10];

/// A case fails when its frame does something else: the table is no rubber stamp.
#[test]
#[should_panic(expected = "counters that moved")]
fn a_case_with_the_wrong_counter_fails() {
    let mut f = fixture(STATE);
    f.case(case(
        "echo to the gateway claimed as routed",
        PROG_TAP,
        ping(VM1_MAC, GW1_MAC, VM1_IP, GW1_IP, 64),
        TCX_REDIRECT,
        Stat::Routed,
    ));
}

#[test]
#[should_panic(expected = "output frame")]
fn a_case_with_the_wrong_output_fails() {
    let mut f = fixture(STATE);
    let frame = ping(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64);
    let mut other = frame.clone();
    other[0] ^= 1;
    f.case(
        case(
            "tunnelled frame",
            PROG_TAP,
            frame,
            TCX_REDIRECT,
            Stat::TxTunnel,
        )
        .output(other),
    );
}

// ---- cases: one network host ----

#[test]
fn arp_request_for_gateway_is_answered_on_the_tap() {
    fixture(STATE).table(vec![
        case(
            "ARP for the gateway",
            PROG_TAP,
            eth(
                BROADCAST,
                VM1_MAC,
                ETH_P_ARP,
                &arp(ARP_REQUEST, VM1_MAC, VM1_IP, [0; 6], GW1_IP),
            ),
            TCX_REDIRECT,
            Stat::ArpReply,
        )
        .output(eth(
            VM1_MAC,
            GW1_MAC,
            ETH_P_ARP,
            &arp(ARP_REPLY, GW1_MAC, GW1_IP, VM1_MAC, VM1_IP),
        )),
    ]);
}

#[test]
fn icmp_echo_to_gateway_is_answered_with_valid_checksums() {
    fixture(STATE).table(vec![
        case(
            "echo to the gateway",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, GW1_IP, 64),
            TCX_REDIRECT,
            Stat::IcmpEchoReply,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM1_MAC, "reply goes back to the VM");
            assert_eq!(&out[6..12], &GW1_MAC, "from the gateway MAC");
            let ip = ip_of(out);
            assert_eq!(&ip[12..16], &GW1_IP);
            assert_eq!(&ip[16..20], &VM1_IP);
            assert_eq!(ip[8], 64, "fresh TTL");
            assert_eq!(checksum(ip), 0, "IPv4 header checksum");
            assert_eq!(out[34], 0, "echo reply type");
            assert_eq!(checksum(&out[34..]), 0, "ICMP checksum");
        }),
    ]);
}

#[test]
fn cross_subnet_to_local_vm_is_routed_with_gateway_mac_and_ttl_minus_one() {
    fixture(STATE).table(vec![
        case(
            "routed to VM2 on this host",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, VM2_IP, 64),
            TCX_REDIRECT,
            Stat::Routed,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM2_MAC);
            assert_eq!(
                &out[6..12],
                &GW2_MAC,
                "destination subnet's gateway MAC as source"
            );
            let ip = ip_of(out);
            assert_eq!(ip[8], 63);
            assert_eq!(checksum(ip), 0, "IPv4 header checksum after TTL decrement");
            assert_eq!(checksum(&out[34..]), 0, "ICMP untouched and valid");
        }),
    ]);
}

#[test]
fn cross_subnet_to_remote_vm_leaves_with_this_hosts_dvr_mac() {
    // VM1 (net1, host A) to VM4 (net2, host B): routed on A, tunnelled with A's DVR MAC.
    fixture(STATE).table(vec![
        case(
            "routed to VM4 on host B",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 64),
            TCX_REDIRECT,
            Stat::Routed,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM4_MAC);
            assert_eq!(&out[6..12], &DVR_MAC_A, "host A's DVR MAC on the tunnel");
            assert_eq!(ip_of(out)[8], 63);
            assert_eq!(checksum(ip_of(out)), 0);
        }),
    ]);
}

#[test]
fn frames_are_attributed_to_the_tap_they_arrive_on() {
    // VM1 moved to host B: the test run's device (ifindex 1) is then no port of host A,
    // while its frame would be valid from VM1's own tap.
    let moved = STATE.replace(
        "\"binding:host_id\": \"A\",\n   \"fixed_ips\": [{\"subnet_id\": \"sub1\"",
        "\"binding:host_id\": \"B\",\n   \"fixed_ips\": [{\"subnet_id\": \"sub1\"",
    );
    assert_ne!(moved, STATE);
    fixture(&moved).table(vec![case(
        "VM1's frame on a tap that is no port here",
        PROG_TAP,
        ping(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64),
        TCX_DROP,
        Stat::DropUnknownPort,
    )]);
    // And a frame with VM2's addresses on VM1's tap is a spoof, not VM2's traffic.
    fixture(STATE).table(vec![case(
        "VM2's frame on VM1's tap",
        PROG_TAP,
        ping(VM2_MAC, GW2_MAC, VM2_IP, VM1_IP, 64),
        TCX_DROP,
        Stat::DropSpoofMac,
    )]);
}

#[test]
fn same_subnet_unicast_to_remote_port_goes_into_the_tunnel_unchanged() {
    fixture(STATE).table(vec![
        case(
            "to VM3 on host B",
            PROG_TAP,
            ping(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64),
            TCX_REDIRECT,
            Stat::TxTunnel,
        )
        .unchanged(),
    ]);
}

#[test]
fn spoofed_source_mac_is_dropped() {
    fixture(STATE).table(vec![case(
        "foreign source MAC",
        PROG_TAP,
        ping([0xfa, 0x16, 0x3e, 9, 9, 9], VM3_MAC, VM1_IP, VM3_IP, 64),
        TCX_DROP,
        Stat::DropSpoofMac,
    )]);
}

#[test]
fn spoofed_source_ip_is_dropped_and_allowed_pair_accepted() {
    fixture(STATE).table(vec![
        case(
            "foreign source IP",
            PROG_TAP,
            ping(VM1_MAC, VM3_MAC, [10, 1, 0, 99], VM3_IP, 64),
            TCX_DROP,
            Stat::DropSpoofIp,
        ),
        // 10.1.0.200/30 is an allowed address pair of VM1.
        case(
            "source in an allowed address pair",
            PROG_TAP,
            ping(VM1_MAC, VM3_MAC, [10, 1, 0, 202], VM3_IP, 64),
            TCX_REDIRECT,
            Stat::TxTunnel,
        ),
        case(
            "source just outside the allowed pair",
            PROG_TAP,
            ping(VM1_MAC, VM3_MAC, [10, 1, 0, 204], VM3_IP, 64),
            TCX_DROP,
            Stat::DropSpoofIp,
        ),
    ]);
}

#[test]
fn arp_with_foreign_sender_ip_is_dropped() {
    fixture(STATE).table(vec![
        case(
            "ARP with VM3's address as sender",
            PROG_TAP,
            eth(
                BROADCAST,
                VM1_MAC,
                ETH_P_ARP,
                &arp(ARP_REQUEST, VM1_MAC, VM3_IP, [0; 6], GW1_IP),
            ),
            TCX_DROP,
            Stat::DropSpoofArp,
        ),
        case(
            "ARP with VM3's MAC as sender hardware address",
            PROG_TAP,
            eth(
                BROADCAST,
                VM1_MAC,
                ETH_P_ARP,
                &arp(ARP_REQUEST, VM3_MAC, VM1_IP, [0; 6], GW1_IP),
            ),
            TCX_DROP,
            Stat::DropSpoofArp,
        ),
    ]);
}

#[test]
fn port_security_disabled_lets_foreign_source_through() {
    let state = STATE.replace(
        "\"allowed_address_pairs\": [{\"ip_address\": \"10.1.0.200/30\"}]",
        "\"port_security_enabled\": false",
    );
    fixture(&state).table(vec![case(
        "foreign MAC and IP",
        PROG_TAP,
        ping([2, 0, 0, 0, 0, 9], VM3_MAC, [172, 16, 0, 1], VM3_IP, 64),
        TCX_REDIRECT,
        Stat::TxTunnel,
    )]);
}

#[test]
fn ttl_one_is_answered_with_time_exceeded_from_the_gateway() {
    let probe = ping(VM1_MAC, GW1_MAC, VM1_IP, VM2_IP, 1);
    let quoted = probe[14..42].to_vec();
    fixture(STATE).table(vec![
        case(
            "TTL 1 through the router",
            PROG_TAP,
            probe.clone(),
            TCX_REDIRECT,
            Stat::IcmpTimeExceeded,
        )
        .check(move |out| {
            assert_eq!(out.len(), 14 + 56, "IP + ICMP + quoted header and 8 bytes");
            assert_eq!(&out[0..6], &VM1_MAC, "back to the VM");
            assert_eq!(&out[6..12], &GW1_MAC, "from its gateway");
            let ip = ip_of(out);
            assert_eq!(&ip[12..16], &GW1_IP, "sent by the gateway address");
            assert_eq!(&ip[16..20], &VM1_IP);
            assert_eq!(checksum(ip), 0, "IPv4 header checksum");
            let icmp = &out[34..];
            assert_eq!((icmp[0], icmp[1]), (11, 0), "time exceeded in transit");
            assert_eq!(checksum(icmp), 0, "ICMP checksum");
            assert_eq!(
                &icmp[8..36],
                &quoted[..],
                "quotes the expired header and 8 bytes"
            );
        }),
        // An ICMP error whose TTL runs out is not answered with another.
        case(
            "ICMP error with TTL 1",
            PROG_TAP,
            eth(
                GW1_MAC,
                VM1_MAC,
                ETH_P_IP,
                &ipv4(
                    VM1_IP,
                    VM2_IP,
                    1,
                    IPPROTO_ICMP,
                    &icmp_error(3, 3, &probe[14..42]),
                ),
            ),
            TCX_DROP,
            Stat::DropTtlExceeded,
        ),
    ]);
}

#[test]
fn destination_outside_the_router_has_no_route() {
    fixture(STATE).table(vec![
        case(
            "outside every subnet of the router",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, [10, 9, 0, 1], 64),
            TCX_DROP,
            Stat::DropNoRoute,
        ),
        case(
            "in a subnet, no port there",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, [10, 2, 0, 99], 64),
            TCX_DROP,
            Stat::DropNoEndpoint,
        ),
    ]);
}

#[test]
fn malformed_and_foreign_frames_are_dropped_with_a_reason() {
    // (A truncated IPv4 header cannot be fed in: BPF_PROG_TEST_RUN itself refuses it.)
    fixture(STATE).table(vec![
        case(
            "truncated ARP",
            PROG_TAP,
            eth(BROADCAST, VM1_MAC, ETH_P_ARP, &[0, 1, 8, 0, 6, 4, 0, 1]),
            TCX_DROP,
            Stat::DropMalformed,
        ),
        case(
            "IP version 6 in an IPv4 frame",
            PROG_TAP,
            eth(VM3_MAC, VM1_MAC, ETH_P_IP, &{
                let mut p = ipv4(VM1_IP, VM3_IP, 64, IPPROTO_UDP, &[0; 8]);
                p[0] = 0x65;
                p
            }),
            TCX_DROP,
            Stat::DropMalformed,
        ),
        case(
            "another ethertype (LLDP; IPv6 is in fixtures6.rs)",
            PROG_TAP,
            eth(VM3_MAC, VM1_MAC, 0x88cc, &[0; 40]),
            TCX_DROP,
            Stat::DropEthertype,
        ),
        case(
            "ARP operation 3",
            PROG_TAP,
            eth(
                BROADCAST,
                VM1_MAC,
                ETH_P_ARP,
                &arp(3, VM1_MAC, VM1_IP, [0; 6], GW1_IP),
            ),
            TCX_DROP,
            Stat::DropArpOther,
        ),
    ]);
}

#[test]
fn tunnel_frame_without_metadata_is_dropped() {
    fixture(STATE).table(vec![case(
        "no tunnel key",
        PROG_TUNNEL,
        ping(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 64),
        TCX_DROP,
        Stat::DropNoTunnelKey,
    )]);
}

// ---- floating IPs ----

/// STATE plus an external network 10.5.0.0/16 (gateway 10.5.0.1), both hosts with an
/// external interface and an fg port, FIP 10.5.2.1 on VM1 (served on A), 10.5.2.4 on VM4
/// (served on B) and 10.5.2.9 unassociated.
fn fip_state(vm1_port_security: bool) -> String {
    let mut s: serde_json::Value = serde_json::from_str(STATE).unwrap_or_else(|e| panic!("{e}"));
    fn push(v: &mut serde_json::Value, item: serde_json::Value) {
        v.as_array_mut()
            .unwrap_or_else(|| panic!("not a list"))
            .push(item);
    }
    let ext = serde_json::json!({"id": "ext", "router:external": true, "provider:network_type": "flat",
        "provider:physical_network": "public", "mtu": 1500});
    push(&mut s["networks"], ext);
    push(
        &mut s["subnets"],
        serde_json::json!({"id": "extsub", "network_id": "ext",
        "cidr": "10.5.0.0/16", "gateway_ip": "10.5.0.1", "ip_version": 4}),
    );
    for (i, h) in ["A", "B"].iter().enumerate() {
        s["hosts"][i]["external_interface"] = "ext0".into();
        push(
            &mut s["ports"],
            serde_json::json!({"id": format!("fg-{h}"), "network_id": "ext",
            "mac_address": format!("fa:16:3e:00:0f:0{}", i + 1), "device_owner": "network:floatingip_agent_gateway",
            "device_id": h, "binding:host_id": h,
            "fixed_ips": [{"subnet_id": "extsub", "ip_address": format!("10.5.1.{}", i + 1)}]}),
        );
    }
    s["routers"][0]["external_gateway_info"] = serde_json::json!({"network_id": "ext", "enable_snat": true,
        "external_fixed_ips": [{"subnet_id": "extsub", "ip_address": "10.5.3.1"}]});
    s["floatingips"] = serde_json::json!([
        {"id": "fip1", "floating_ip_address": "10.5.2.1", "floating_network_id": "ext", "router_id": "r1",
         "port_id": "vm1-port-0001", "fixed_ip_address": "10.1.0.11"},
        {"id": "fip4", "floating_ip_address": "10.5.2.4", "floating_network_id": "ext", "router_id": "r1",
         "port_id": "vm4-port-0004", "fixed_ip_address": "10.2.0.14"},
        {"id": "fip9", "floating_ip_address": "10.5.2.9", "floating_network_id": "ext", "router_id": null,
         "port_id": null, "fixed_ip_address": null}]);
    if !vm1_port_security {
        for p in s["ports"].as_array_mut().into_iter().flatten() {
            if p["id"] == "vm1-port-0001" {
                p["port_security_enabled"] = false.into();
            }
        }
    }
    s.to_string()
}

/// The upstream gateway's ARP reply to host A's fg address: its MAC is learned.
fn upstream_arp_reply() -> Case {
    case(
        "upstream gateway's ARP reply",
        PROG_EXT,
        eth(
            EXT_MAC,
            UPSTREAM_MAC,
            ETH_P_ARP,
            &arp(ARP_REPLY, UPSTREAM_MAC, UPSTREAM_IP, EXT_MAC, [10, 5, 1, 1]),
        ),
        TCX_NEXT,
        Stat::ExtNeighLearned,
    )
}

/// A FIP fixture whose upstream gateway MAC has been learned.
fn fip_fixture(vm1_port_security: bool) -> Fixture {
    let mut f = fixture(&fip_state(vm1_port_security));
    f.case(upstream_arp_reply());
    f
}

/// An ARP request from the upstream gateway for `tpa`.
fn arp_from_upstream(tpa: [u8; 4]) -> Vec<u8> {
    eth(
        BROADCAST,
        UPSTREAM_MAC,
        ETH_P_ARP,
        &arp(ARP_REQUEST, UPSTREAM_MAC, UPSTREAM_IP, [0; 6], tpa),
    )
}

/// What the external interface answers to `arp_from_upstream(ip)`.
fn proxy_arp_reply(ip: [u8; 4]) -> Vec<u8> {
    eth(
        UPSTREAM_MAC,
        EXT_MAC,
        ETH_P_ARP,
        &arp(ARP_REPLY, EXT_MAC, ip, UPSTREAM_MAC, UPSTREAM_IP),
    )
}

#[test]
fn proxy_arp_answers_only_for_fips_served_here() {
    let mut f = fip_fixture(true);
    let mut rows = vec![
        case(
            "ARP for FIP1, served here",
            PROG_EXT,
            arp_from_upstream(FIP1),
            TCX_REDIRECT,
            Stat::ExtArpReply,
        )
        .output(proxy_arp_reply(FIP1)),
    ];
    for (name, other) in [
        ("ARP for FIP4, served on B", FIP4),
        ("ARP for an unassociated FIP", FIP_UNUSED),
        ("ARP for a fixed IP", VM1_IP),
    ] {
        rows.push(case(
            name,
            PROG_EXT,
            arp_from_upstream(other),
            TCX_NEXT,
            Stat::ExtNeighLearned,
        ));
    }
    rows.push(case(
        "ARP from a stranger for FIP4",
        PROG_EXT,
        eth(
            BROADCAST,
            [2, 1, 1, 1, 1, 1],
            ETH_P_ARP,
            &arp(ARP_REQUEST, [2, 1, 1, 1, 1, 1], [10, 5, 7, 7], [0; 6], FIP4),
        ),
        TCX_NEXT,
        Stat::ExtPass,
    ));
    f.table(rows);
}

#[test]
fn gateway_mac_is_learned_and_relearned_from_arp() {
    let mut f = fip_fixture(true);
    let n = f
        .maps
        .ext_neigh
        .get(&u32::from_ne_bytes(UPSTREAM_IP))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n.map(|n| (n.mac, n.learned)), Some((UPSTREAM_MAC, 1)));
    let new_mac = [0x02, 0x99, 0, 0, 0, 0x02];
    f.table(vec![case(
        "gratuitous ARP from the gateway's new MAC",
        PROG_EXT,
        eth(
            BROADCAST,
            new_mac,
            ETH_P_ARP,
            &arp(ARP_REQUEST, new_mac, UPSTREAM_IP, [0; 6], UPSTREAM_IP),
        ),
        TCX_NEXT,
        Stat::ExtNeighLearned,
    )]);
    let n = f
        .maps
        .ext_neigh
        .get(&u32::from_ne_bytes(UPSTREAM_IP))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n.map(|n| n.mac), Some(new_mac));
    // Nobody else's ARP creates a neighbour entry.
    f.table(vec![case(
        "ARP reply from a stranger",
        PROG_EXT,
        eth(
            BROADCAST,
            [2, 1, 1, 1, 1, 1],
            ETH_P_ARP,
            &arp(
                ARP_REPLY,
                [2, 1, 1, 1, 1, 1],
                [10, 5, 7, 7],
                EXT_MAC,
                [10, 5, 1, 1],
            ),
        ),
        TCX_NEXT,
        Stat::ExtPass,
    )]);
    assert_eq!(
        f.maps
            .ext_neigh
            .read()
            .unwrap_or_else(|e| panic!("{e}"))
            .len(),
        1
    );
}

#[test]
fn inbound_to_fip_is_translated_with_valid_checksums_and_tracked() {
    let mut f = fip_fixture(true);
    f.table(vec![
        case(
            "SYN from the internet to FIP1",
            PROG_EXT,
            eth(
                EXT_MAC,
                UPSTREAM_MAC,
                ETH_P_IP,
                &tcp(INTERNET, FIP1, 40000, 80, 0x02, b"hello"),
            ),
            TCX_REDIRECT,
            Stat::FipDnat,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM1_MAC);
            assert_eq!(&out[6..12], &GW1_MAC, "from the VM subnet's gateway MAC");
            let ip = ip_of(out);
            assert_eq!(&ip[12..16], &INTERNET, "the VM sees the real source");
            assert_eq!(&ip[16..20], &VM1_IP);
            assert_eq!(ip[8], 63);
            assert_checksums(out);
        }),
    ]);
    let ct = f.maps.ct.read().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ct.len(), 2, "both directions tracked: {ct:?}");
    // The VM's answer leaves with the FIP as source, to the learned gateway MAC.
    f.table(vec![
        case(
            "SYN-ACK from VM1",
            PROG_TAP,
            eth(
                GW1_MAC,
                VM1_MAC,
                ETH_P_IP,
                &tcp(VM1_IP, INTERNET, 80, 40000, 0x12, b""),
            ),
            TCX_REDIRECT,
            Stat::FipSnat,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &UPSTREAM_MAC);
            assert_eq!(&out[6..12], &EXT_MAC);
            assert_eq!(&ip_of(out)[12..16], &FIP1);
            assert_eq!(ip_of(out)[8], 63);
            assert_checksums(out);
        }),
    ]);
    assert_eq!(
        f.maps.ct.read().unwrap_or_else(|e| panic!("{e}")).len(),
        2,
        "the reply used the same flow"
    );
}

#[test]
fn inbound_to_a_fip_longer_than_the_vm_network_is_answered_from_the_fip() {
    let big = eth(
        EXT_MAC,
        UPSTREAM_MAC,
        ETH_P_IP,
        &udp(INTERNET, FIP1, 5000, 6000, &[9u8; 1451 - 28]),
    );
    let mut f = fip_fixture(true);
    f.table(vec![
        case(
            "1450 bytes to FIP1 (VM1's network has mtu 1450)",
            PROG_EXT,
            eth(
                EXT_MAC,
                UPSTREAM_MAC,
                ETH_P_IP,
                &udp(INTERNET, FIP1, 5000, 6000, &[9u8; 1450 - 28]),
            ),
            TCX_REDIRECT,
            Stat::FipDnat,
        ),
        case(
            "1451 bytes with DF to FIP1",
            PROG_EXT,
            big.clone(),
            TCX_REDIRECT,
            Stat::IcmpFragNeeded,
        )
        .check(move |out| {
            assert_eq!(out.len(), 14 + 56);
            assert_eq!(&out[0..6], &UPSTREAM_MAC, "back to the sender's router");
            assert_eq!(&out[6..12], &EXT_MAC);
            let ip = ip_of(out);
            assert_eq!(&ip[12..16], &FIP1, "from the address the sender used");
            assert_eq!(&ip[16..20], &INTERNET);
            assert_eq!(checksum(ip), 0);
            let icmp = &out[34..];
            assert_eq!((icmp[0], icmp[1]), (3, 4));
            assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
            assert_eq!(checksum(icmp), 0);
            assert_eq!(&icmp[8..36], &big[14..42], "quotes what the sender sent");
        }),
    ]);
}

#[test]
fn outbound_udp_from_fip_vm_and_the_icmp_error_it_draws() {
    let mut f = fip_fixture(true);
    let out = f.case(
        case(
            "UDP from VM1 to the internet",
            PROG_TAP,
            eth(
                GW1_MAC,
                VM1_MAC,
                ETH_P_IP,
                &udp(VM1_IP, INTERNET, 5555, 9999, b"ping?"),
            ),
            TCX_REDIRECT,
            Stat::FipSnat,
        )
        .check(|out| {
            assert_eq!(&ip_of(out)[12..16], &FIP1);
            assert_checksums(out);
        }),
    );
    // The external host answers with port unreachable quoting what it received.
    let err = eth(
        EXT_MAC,
        UPSTREAM_MAC,
        ETH_P_IP,
        &ipv4(
            INTERNET,
            FIP1,
            64,
            IPPROTO_ICMP,
            &icmp_error(3, 3, &out[14..14 + 28]),
        ),
    );
    let out = f.case(
        case(
            "port unreachable quoting the translated datagram",
            PROG_EXT,
            err,
            TCX_REDIRECT,
            Stat::FipIcmpError,
        )
        .check(|out| {
            let ip = ip_of(out);
            assert_eq!(&ip[16..20], &VM1_IP, "outer destination");
            assert_eq!(checksum(ip), 0);
            let icmp = &out[34..];
            assert_eq!(checksum(icmp), 0, "ICMP checksum over the rewritten quote");
            let inner = &icmp[8..28];
            assert_eq!(
                &inner[12..16],
                &VM1_IP,
                "quoted source is the fixed IP again"
            );
            assert_eq!(checksum(inner), 0, "quoted IPv4 header checksum");
            let quoted_udp_csum = u16::from_be_bytes([icmp[34], icmp[35]]);
            let orig = udp(VM1_IP, INTERNET, 5555, 9999, b"ping?");
            assert_eq!(
                quoted_udp_csum,
                u16::from_be_bytes([orig[26], orig[27]]),
                "quoted UDP checksum matches what the VM sent"
            );
        }),
    );
    // An error about a flow nobody tracks is dropped.
    let mut stray = out[34..].to_vec();
    stray[28..30].copy_from_slice(&1234u16.to_be_bytes());
    stray[2..4].copy_from_slice(&[0, 0]);
    let c = checksum(&stray);
    stray[2..4].copy_from_slice(&c.to_be_bytes());
    f.table(vec![case(
        "port unreachable for an untracked flow",
        PROG_EXT,
        eth(
            EXT_MAC,
            UPSTREAM_MAC,
            ETH_P_IP,
            &ipv4(INTERNET, FIP1, 64, IPPROTO_ICMP, &stray),
        ),
        TCX_DROP,
        Stat::DropIcmpErrorNoFlow,
    )]);
}

#[test]
fn external_security_drops() {
    let to = |dst| {
        eth(
            EXT_MAC,
            UPSTREAM_MAC,
            ETH_P_IP,
            &udp(INTERNET, dst, 1, 2, b"x"),
        )
    };
    fip_fixture(true).table(vec![
        case(
            "to an unassociated FIP",
            PROG_EXT,
            to(FIP_UNUSED),
            TCX_DROP,
            Stat::DropFipUnassociated,
        ),
        case(
            "to a fixed IP",
            PROG_EXT,
            to(VM1_IP),
            TCX_DROP,
            Stat::DropExtToFixedIp,
        ),
        case(
            "to a FIP served on B",
            PROG_EXT,
            to(FIP4),
            TCX_DROP,
            Stat::DropFipNotHere,
        ),
        case(
            "to the host's own fg address",
            PROG_EXT,
            to([10, 5, 1, 1]),
            TCX_NEXT,
            Stat::ExtPass,
        ),
    ]);
}

#[test]
fn vm_cannot_send_from_a_fip_even_without_port_security() {
    fip_fixture(false).table(vec![case(
        "VM1 sending from FIP4",
        PROG_TAP,
        eth(GW1_MAC, VM1_MAC, ETH_P_IP, &udp(FIP4, INTERNET, 1, 2, b"x")),
        TCX_DROP,
        Stat::DropFipSpoof,
    )]);
}

#[test]
fn outbound_waits_for_the_gateway_mac() {
    fixture(&fip_state(true)).table(vec![case(
        "UDP out before the gateway's MAC is learned",
        PROG_TAP,
        eth(
            GW1_MAC,
            VM1_MAC,
            ETH_P_IP,
            &udp(VM1_IP, INTERNET, 5555, 9999, b"x"),
        ),
        TCX_DROP,
        Stat::DropNoNeighbor,
    )]);
}

#[test]
fn hairpin_to_a_local_fip_is_translated_here() {
    fip_fixture(true).table(vec![
        // VM1 reaching its own router's FIP 10.5.2.1 (its own, served here): DNAT locally.
        case(
            "to FIP1, served here",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, FIP1, 64),
            TCX_REDIRECT,
            Stat::FipHairpin,
        )
        .check(|out| {
            assert_eq!(&ip_of(out)[16..20], &VM1_IP);
            assert_eq!(checksum(ip_of(out)), 0);
        }),
        // To FIP 10.5.2.4 (served on B): routed untranslated into the tunnel towards VM4.
        case(
            "to FIP4, served on B",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, FIP4, 64),
            TCX_REDIRECT,
            Stat::FipHairpin,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM4_MAC);
            assert_eq!(&out[6..12], &DVR_MAC_A);
            assert_eq!(&ip_of(out)[16..20], &FIP4);
            assert_eq!(ip_of(out)[8], 63);
        }),
    ]);
}

// ---- SNAT high availability: the fence (docs/HA.md) ----

const HA_EXT_IP: [u8; 4] = [10, 5, 3, 1];
/// Central FIP of VM5, a port of host C (dvr_no_external), served on A.
const FIP_CENTRAL_IP: [u8; 4] = [10, 5, 2, 7];
const VM5_IP: [u8; 4] = [10, 1, 0, 15];
const VM5_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x05];
const TUNNEL_C_HOST: u32 = 0xc000_0203; // 192.0.2.3

/// fip_state with host A as r1's SNAT host (dvr_snat, csnat ports on both subnets), VM1
/// without a FIP (so its external traffic is port-address translated here), and VM5 on
/// host C (dvr_no_external) with FIP 10.5.2.7, served centrally on A.
fn ha_state() -> String {
    let mut s: serde_json::Value =
        serde_json::from_str(&fip_state(true)).unwrap_or_else(|e| panic!("{e}"));
    fn push(v: &mut serde_json::Value, item: serde_json::Value) {
        v.as_array_mut()
            .unwrap_or_else(|| panic!("not a list"))
            .push(item);
    }
    s["hosts"][0]["agent_mode"] = "dvr_snat".into();
    push(
        &mut s["hosts"],
        serde_json::json!({"name": "C", "agent_mode": "dvr_no_external", "tunnel_ip": "192.0.2.3",
            "dvr_mac": "fa:16:3f:00:00:03"}),
    );
    for (id, net, sub, ip, mac) in [
        ("r1-snat1", "net1", "sub1", "10.1.0.5", "fa:16:3e:00:03:11"),
        ("r1-snat2", "net2", "sub2", "10.2.0.5", "fa:16:3e:00:03:12"),
    ] {
        push(
            &mut s["ports"],
            serde_json::json!({"id": id, "network_id": net, "mac_address": mac,
                "fixed_ips": [{"subnet_id": sub, "ip_address": ip}],
                "device_owner": "network:router_centralized_snat", "device_id": "r1",
                "binding:host_id": "A"}),
        );
    }
    push(
        &mut s["ports"],
        serde_json::json!({"id": "vm5-port-0005", "network_id": "net1",
            "mac_address": "fa:16:3e:00:00:05", "device_owner": "compute:nova",
            "binding:host_id": "C", "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.1.0.15"}]}),
    );
    let fips = s["floatingips"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("not a list"));
    fips.retain(|f| f["id"] != "fip1");
    fips.push(
        serde_json::json!({"id": "fip5", "floating_ip_address": "10.5.2.7",
        "floating_network_id": "ext", "router_id": "r1", "port_id": "vm5-port-0005",
        "fixed_ip_address": "10.1.0.15"}),
    );
    s.to_string()
}

/// An HA fixture (gateway MAC learned). `ha`: mark r1's SNAT entries `SNAT_HA` and its
/// central FIP `FIP_HA`, as the compiler does for an elected HA router; no fence yet.
fn ha_fixture(ha: bool) -> (Fixture, u32) {
    use dvr_common::{nat::FIP_HA, snat::SNAT_HA};
    let mut f = fixture(&ha_state());
    f.case(upstream_arp_reply());
    let router = dvr_userspace::compile::fnv1a32("r1");
    let ips = f.maps.snat_ips.read().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ips.get(&u32::from_ne_bytes(HA_EXT_IP)).map(|r| r.router_id),
        Some(router),
        "A translates for r1: {ips:?}"
    );
    let central = f
        .maps
        .fips
        .get(&u32::from_ne_bytes(FIP_CENTRAL_IP))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("central FIP compiled on A"));
    assert_eq!(
        (
            central.flags & dvr_common::nat::FIP_CENTRAL,
            central.router_id,
            central.tunnel_ip_host
        ),
        (dvr_common::nat::FIP_CENTRAL, router, TUNNEL_C_HOST)
    );
    if ha {
        for (k, mut r) in f.maps.snat_routers.read().unwrap_or_else(|e| panic!("{e}")) {
            r.flags |= SNAT_HA;
            f.maps
                .snat_routers
                .put(&k, &r)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for (k, mut r) in ips {
            r.flags |= SNAT_HA;
            f.maps
                .snat_ips
                .put(&k, &r)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let fip = dvr_common::nat::FipEntry {
            flags: central.flags | FIP_HA,
            ..central
        };
        f.maps
            .fips
            .put(&u32::from_ne_bytes(FIP_CENTRAL_IP), &fip)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (f, router)
}

/// What the HA and conntrack rows need beyond the harness.
trait FixtureExt {
    /// Fence `router` until `offset_ms` from now (negative: already expired); None removes it.
    fn fence(&mut self, router: u32, offset_ms: Option<i64>);
    fn ct_len(&self) -> usize;
}

impl FixtureExt for Fixture {
    fn fence(&mut self, router: u32, offset_ms: Option<i64>) {
        match offset_ms {
            Some(ms) => {
                let now = dvr_userspace::clock::fence_now_ns() as i64;
                let until = (now + ms * 1_000_000) as u64;
                self.maps
                    .ha_fence
                    .put(&router, &until)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            None => self
                .maps
                .ha_fence
                .del(&router)
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn ct_len(&self) -> usize {
        self.maps.ct.read().unwrap_or_else(|e| panic!("{e}")).len()
    }
}

/// VM1 (no FIP) to the internet: steered to its router's SNAT host, which is this host.
fn vm1_udp_out(sport: u16) -> Vec<u8> {
    eth(
        GW1_MAC,
        VM1_MAC,
        ETH_P_IP,
        &udp(VM1_IP, INTERNET, sport, 9999, b"out"),
    )
}

#[test]
fn snat_without_ha_flag_ignores_the_fence() {
    let (mut f, router) = ha_fixture(false);
    // No fence entry at all, then an expired one: a non-HA router is served regardless.
    for fence in [None, Some(-1_000)] {
        f.fence(router, fence);
        f.table(vec![
            case(
                "VM1 to the internet, translated here",
                PROG_TAP,
                vm1_udp_out(5555),
                TCX_REDIRECT,
                Stat::SnatOut,
            )
            .check(|out| assert_eq!(&ip_of(out)[12..16], &HA_EXT_IP)),
            case(
                "ARP for the router's external IP",
                PROG_EXT,
                arp_from_upstream(HA_EXT_IP),
                TCX_REDIRECT,
                Stat::ExtArpReply,
            ),
            case(
                "ARP for the central FIP",
                PROG_EXT,
                arp_from_upstream(FIP_CENTRAL_IP),
                TCX_REDIRECT,
                Stat::ExtArpReply,
            ),
        ]);
    }
}

#[test]
fn ha_snat_is_served_only_under_a_live_fence() {
    let (mut f, router) = ha_fixture(true);
    // (a) Live fence: translated as without HA, and the reply finds its way back.
    f.fence(router, Some(60_000));
    let out = f.case(
        case(
            "live fence: VM1 to the internet",
            PROG_TAP,
            vm1_udp_out(5555),
            TCX_REDIRECT,
            Stat::SnatOut,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &UPSTREAM_MAC);
            assert_eq!(&out[6..12], &EXT_MAC);
            assert_eq!(&ip_of(out)[12..16], &HA_EXT_IP);
            assert_checksums(out);
        }),
    );
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    assert_eq!(f.ct_len(), 2, "both directions tracked");
    let reply = eth(
        EXT_MAC,
        UPSTREAM_MAC,
        ETH_P_IP,
        &udp(INTERNET, HA_EXT_IP, 9999, nat_port, b"back"),
    );
    f.table(vec![
        case(
            "live fence: the reply",
            PROG_EXT,
            reply.clone(),
            TCX_REDIRECT,
            Stat::SnatIn,
        )
        .check(|back| {
            assert_eq!(&ip_of(back)[16..20], &VM1_IP);
            assert_checksums(back);
        }),
    ]);

    // (b) Expired fence: the steered frame and the reply are dropped as standby, nothing
    // else moves (no conntrack entry, no exhaustion count).
    f.fence(router, Some(-1));
    let exhausted = f
        .maps
        .snat_exhausted
        .read()
        .unwrap_or_else(|e| panic!("{e}"));
    let ct = f.maps.ct.read().unwrap_or_else(|e| panic!("{e}"));
    f.table(vec![
        // Dropped untouched.
        case(
            "expired fence: a new flow",
            PROG_TAP,
            vm1_udp_out(6666),
            TCX_DROP,
            Stat::DropSnatStandby,
        )
        .unchanged(),
        case(
            "expired fence: the tracked flow",
            PROG_TAP,
            vm1_udp_out(5555),
            TCX_DROP,
            Stat::DropSnatStandby,
        ),
        case(
            "expired fence: the reply",
            PROG_EXT,
            reply.clone(),
            TCX_DROP,
            Stat::DropSnatStandby,
        ),
    ]);
    // Tracking (last_seen, counters) is untouched too: same entries, same values.
    assert_eq!(f.maps.ct.read().unwrap_or_else(|e| panic!("{e}")), ct);
    assert_eq!(
        f.maps
            .snat_exhausted
            .read()
            .unwrap_or_else(|e| panic!("{e}")),
        exhausted
    );

    // (c) No fence entry: the same.
    f.fence(router, None);
    f.table(vec![
        case(
            "no fence: a new flow",
            PROG_TAP,
            vm1_udp_out(7777),
            TCX_DROP,
            Stat::DropSnatStandby,
        ),
        case(
            "no fence: the reply",
            PROG_EXT,
            reply.clone(),
            TCX_DROP,
            Stat::DropSnatStandby,
        ),
    ]);
    assert_eq!(f.ct_len(), 2);

    // A fence for another router does not serve this one.
    f.fence(router ^ 1, Some(60_000));
    f.table(vec![case(
        "another router's fence",
        PROG_TAP,
        vm1_udp_out(7777),
        TCX_DROP,
        Stat::DropSnatStandby,
    )]);

    // Renewed (failback / new term): served again, the synced flow still translates.
    f.fence(router, Some(60_000));
    f.table(vec![
        case(
            "renewed fence: the tracked flow",
            PROG_TAP,
            vm1_udp_out(5555),
            TCX_REDIRECT,
            Stat::SnatOut,
        )
        .check(move |out| {
            assert_eq!(
                u16::from_be_bytes([out[34], out[35]]),
                nat_port,
                "same mapping"
            )
        }),
        case(
            "renewed fence: the reply",
            PROG_EXT,
            reply,
            TCX_REDIRECT,
            Stat::SnatIn,
        ),
    ]);
}

#[test]
fn ha_external_ip_is_answered_only_under_a_live_fence() {
    let (mut f, router) = ha_fixture(true);
    let req = arp_from_upstream(HA_EXT_IP);
    // Not answered (passed on as for any address not ours) without a fence or with an
    // expired one.
    f.table(vec![case(
        "no fence",
        PROG_EXT,
        req.clone(),
        TCX_NEXT,
        Stat::ExtNeighLearned,
    )]);
    f.fence(router, Some(-1));
    f.table(vec![case(
        "expired fence",
        PROG_EXT,
        req.clone(),
        TCX_NEXT,
        Stat::ExtNeighLearned,
    )]);
    f.fence(router, Some(60_000));
    f.table(vec![
        case("live fence", PROG_EXT, req, TCX_REDIRECT, Stat::ExtArpReply)
            .output(proxy_arp_reply(HA_EXT_IP)),
    ]);
}

#[test]
fn ha_central_fip_is_served_only_under_a_live_fence() {
    let (mut f, router) = ha_fixture(true);
    let arp_req = arp_from_upstream(FIP_CENTRAL_IP);
    let inbound = eth(
        EXT_MAC,
        UPSTREAM_MAC,
        ETH_P_IP,
        &udp(INTERNET, FIP_CENTRAL_IP, 4000, 53, b"q"),
    );
    for fence in [None, Some(-1)] {
        f.fence(router, fence);
        f.table(vec![
            case(
                "standby: ARP for the central FIP",
                PROG_EXT,
                arp_req.clone(),
                TCX_NEXT,
                Stat::ExtNeighLearned,
            ),
            case(
                "standby: to the central FIP",
                PROG_EXT,
                inbound.clone(),
                TCX_DROP,
                Stat::DropSnatStandby,
            ),
        ]);
        assert_eq!(f.ct_len(), 0, "nothing tracked by a standby");
    }
    f.fence(router, Some(60_000));
    f.table(vec![
        case(
            "live fence: ARP for the central FIP",
            PROG_EXT,
            arp_req,
            TCX_REDIRECT,
            Stat::ExtArpReply,
        ),
        // Translated and sent over the tunnel to VM5's host.
        case(
            "live fence: to the central FIP",
            PROG_EXT,
            inbound,
            TCX_REDIRECT,
            Stat::FipDnat,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM5_MAC);
            assert_eq!(&ip_of(out)[16..20], &VM5_IP);
            assert_checksums(out);
        }),
    ]);
    assert_eq!(f.ct_len(), 2);
}

/// A VM on the elected host itself sending through a central FIP of an HA router (a VIP
/// holder there): translated only under the router's fence.
#[test]
fn ha_central_fip_source_on_a_tap_is_fenced() {
    use dvr_common::{nat::FIP_HA, nat::FipSrc, route::IpKey};
    let (mut f, router) = ha_fixture(true);
    let vni = f
        .maps
        .local_ports
        .get(&VM1_IFINDEX)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("VM1 is a local port"))
        .vni;
    let src = FipSrc {
        fip_be: u32::from_ne_bytes(FIP_CENTRAL_IP),
        ext_gw_ip_be: u32::from_ne_bytes(UPSTREAM_IP),
        router_id: router,
        flags: FIP_HA,
        ext_mtu: 1500,
        _pad: [0; 2],
    };
    let key = IpKey {
        vni,
        ip_be: u32::from_ne_bytes(VM1_IP),
    };
    f.maps
        .fip_src
        .put(&key, &src)
        .unwrap_or_else(|e| panic!("{e}"));
    for fence in [None, Some(-1)] {
        f.fence(router, fence);
        f.table(vec![case(
            "standby: VM1 through the central FIP",
            PROG_TAP,
            vm1_udp_out(7000),
            TCX_DROP,
            Stat::DropSnatStandby,
        )]);
        assert_eq!(f.ct_len(), 0, "nothing tracked by a standby");
    }
    f.fence(router, Some(60_000));
    f.table(vec![
        case(
            "live fence: VM1 through the central FIP",
            PROG_TAP,
            vm1_udp_out(7000),
            TCX_REDIRECT,
            Stat::FipSnat,
        )
        .check(|out| {
            assert_eq!(&ip_of(out)[12..16], &FIP_CENTRAL_IP);
            assert_checksums(out);
        }),
    ]);
}

#[test]
fn show_ha_lists_fences_with_remaining_time() {
    use dvr_userspace::ctl::show::{Subject, show};
    let (mut f, router) = ha_fixture(true);
    assert_eq!(
        show(&f.maps, Subject::Ha, true).unwrap_or_else(|e| panic!("{e}")),
        "[]"
    );
    f.fence(router, Some(60_000));
    f.fence(router ^ 1, Some(-5_000));
    let json = show(&f.maps, Subject::Ha, true).unwrap_or_else(|e| panic!("{e}"));
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    let row = |id: u32| {
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["router_id"] == format!("{id:08x}"))
            .unwrap_or_else(|| panic!("router {id:08x} in {json}"))
            .clone()
    };
    let live = row(router);
    assert_eq!(live["active"], true);
    let ms = live["remaining_ms"].as_f64().unwrap_or_default();
    assert!(ms > 50_000.0 && ms <= 60_000.0, "{json}");
    assert!(live["active_until_ns"].as_u64().is_some(), "{json}");
    let dead = row(router ^ 1);
    assert_eq!(dead["active"], false);
    assert!(
        dead["remaining_ms"].as_f64().unwrap_or_default() <= -5_000.0,
        "{json}"
    );
    let text = show(&f.maps, Subject::Ha, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.starts_with("ROUTER"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{router:08x}")) && l.ends_with("yes")),
        "{text}"
    );
}

// ---- security groups ----

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// STATE with security groups: VM1 (tap ifindex 1) in `groups`, VM3 in `sg-web` (a remote
/// group member), VM4 in none. `sg-web` admits in: TCP 80 from anywhere, TCP 1000-1999 from
/// 10.2.0.0/24, ICMP echo requests from members of `sg-web`; out: UDP 53 to 10.2.0.0/24.
/// `sg-sl` is the same without state. `vm1_admin` is VM1's `admin_state_up`.
fn sg_state(groups: &str, vm1_admin: bool) -> String {
    let rules = |g: &str| {
        format!(
            r#"[
      {{"id": "{g}-http", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 80, "port_range_max": 80}},
      {{"id": "{g}-range", "direction": "ingress", "ethertype": "IPv4", "protocol": "6", "port_range_min": 1000, "port_range_max": 1999, "remote_ip_prefix": "10.2.0.0/24"}},
      {{"id": "{g}-ping", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp", "port_range_min": 8, "remote_group_id": "sg-web"}},
      {{"id": "{g}-dns", "direction": "egress", "ethertype": "IPv4", "protocol": "udp", "port_range_min": 53, "port_range_max": 53, "remote_ip_prefix": "10.2.0.0/24"}},
      {{"id": "{g}-v6", "direction": "ingress", "ethertype": "IPv6", "protocol": "icmpv6"}}]"#
        )
    };
    let with_groups = STATE
        .replace(
            r#""allowed_address_pairs": [{"ip_address": "10.1.0.200/30"}]},"#,
            &format!(
                r#""allowed_address_pairs": [{{"ip_address": "10.1.0.200/30"}}], "security_groups": {groups}, "admin_state_up": {vm1_admin}}},"#
            ),
        )
        .replace(
            r#""fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.1.0.13"}]},"#,
            r#""fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.1.0.13"}], "security_groups": ["sg-web"]},"#,
        );
    assert_ne!(with_groups, STATE);
    let last = with_groups
        .rfind('}')
        .unwrap_or_else(|| panic!("state has no object"));
    format!(
        r#"{},
 "security_groups": [
  {{"id": "sg-web", "name": "web", "security_group_rules": {}}},
  {{"id": "sg-sl", "name": "stateless", "stateful": false, "security_group_rules": {}}}]
}}"#,
        &with_groups[..last].trim_end(),
        rules("sg-web"),
        rules("sg-sl")
    )
}

fn sg_ct_kinds(f: &Fixture) -> Vec<u8> {
    let ct = f.maps.ct.read().unwrap_or_else(|e| panic!("{e}"));
    ct.iter()
        .filter(|(k, _)| k.zone == dvr_common::sg::SG_ZONE | VM1_IFINDEX)
        .map(|(_, e)| e.kind)
        .collect()
}

fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &tcp(src, dst, 40000, dport, TCP_SYN, b""),
    )
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &udp(src, dst, sport, dport, b"q"),
    )
}

#[test]
fn ingress_rules_admit_by_protocol_port_range_prefix_and_remote_group() {
    fixture(&sg_state(r#"["sg-web"]"#, true)).table(vec![
        quiet(
            "TCP 80 from anywhere",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 80),
            TCX_NEXT,
        ),
        case(
            "TCP 81: no rule",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 81),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        quiet(
            "TCP 1500 from 10.2.0.0/24",
            PROG_TAP_OUT,
            tcp_frame(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 1500),
            TCX_NEXT,
        ),
        case(
            "TCP 1500 from outside 10.2.0.0/24",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 1500),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        case(
            "TCP 2000: past the range",
            PROG_TAP_OUT,
            tcp_frame(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 2000),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        quiet(
            "echo request from VM3, a member of sg-web",
            PROG_TAP_OUT,
            ping(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 64),
            TCX_NEXT,
        ),
        case(
            "echo request from VM4, no member",
            PROG_TAP_OUT,
            ping(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 64),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        case(
            "UDP 53 is an egress rule, not an ingress one",
            PROG_TAP_OUT,
            udp_frame(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 5353, 53),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        quiet(
            "DHCP offer from a server: base traffic",
            PROG_TAP_OUT,
            udp_frame(GW1_MAC, VM1_MAC, [10, 1, 0, 2], VM1_IP, 67, 68),
            TCX_NEXT,
        ),
        quiet(
            "ARP to the VM is no IP: untouched",
            PROG_TAP_OUT,
            eth(
                VM1_MAC,
                VM3_MAC,
                ETH_P_ARP,
                &arp(ARP_REPLY, VM3_MAC, VM3_IP, VM1_MAC, VM1_IP),
            ),
            TCX_NEXT,
        ),
    ]);
}

#[test]
fn egress_rules_are_checked_at_the_tap_and_admitted_flows_tracked_with_replies_and_errors() {
    let mut f = fixture(&sg_state(r#"["sg-web"]"#, true));
    f.table(vec![
        case(
            "UDP 53 to VM3: outside the rule's prefix",
            PROG_TAP,
            udp_frame(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 5353, 53),
            TCX_DROP,
            Stat::DropSgEgress,
        ),
        case(
            "UDP 54 to VM4: no rule",
            PROG_TAP,
            udp_frame(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 5353, 54),
            TCX_DROP,
            Stat::DropSgEgress,
        ),
    ]);
    assert!(
        sg_ct_kinds(&f).is_empty(),
        "nothing tracked for refused packets"
    );
    f.case(case(
        "UDP 53 to VM4: admitted, routed",
        PROG_TAP,
        udp_frame(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 5353, 53),
        TCX_REDIRECT,
        Stat::Routed,
    ));
    let mut kinds = sg_ct_kinds(&f);
    kinds.sort();
    assert_eq!(
        kinds,
        vec![dvr_common::nat::CT_SG, dvr_common::nat::CT_SG_REPLY],
        "both directions tracked in VM1's zone"
    );
    let request = udp(VM1_IP, VM4_IP, 5353, 53, b"q");
    f.table(vec![
        quiet(
            "the reply from VM4 without an ingress rule",
            PROG_TAP_OUT,
            udp_frame(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 53, 5353),
            TCX_NEXT,
        ),
        case(
            "the same source to another port of VM1 is no reply",
            PROG_TAP_OUT,
            udp_frame(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 53, 5354),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        quiet(
            "port unreachable for the tracked request: related",
            PROG_TAP_OUT,
            eth(
                VM1_MAC,
                GW1_MAC,
                ETH_P_IP,
                &ipv4(
                    VM4_IP,
                    VM1_IP,
                    63,
                    IPPROTO_ICMP,
                    &icmp_error(3, 3, &request[..28]),
                ),
            ),
            TCX_NEXT,
        ),
        case(
            "port unreachable for an untracked packet",
            PROG_TAP_OUT,
            eth(
                VM1_MAC,
                GW1_MAC,
                ETH_P_IP,
                &ipv4(
                    VM4_IP,
                    VM1_IP,
                    63,
                    IPPROTO_ICMP,
                    &icmp_error(3, 3, &udp(VM1_IP, VM4_IP, 5353, 99, b"q")[..28]),
                ),
            ),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
    ]);
    // An admitted inbound connection: VM1's answer leaves without an egress rule.
    f.table(vec![
        quiet(
            "SYN to TCP 80",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 80),
            TCX_NEXT,
        ),
        case(
            "VM1's SYN-ACK: the reply of a tracked flow",
            PROG_TAP,
            eth(
                VM3_MAC,
                VM1_MAC,
                ETH_P_IP,
                &tcp(VM1_IP, VM3_IP, 80, 40000, TCP_SYN | TCP_ACK, b""),
            ),
            TCX_REDIRECT,
            Stat::TxTunnel,
        ),
        case(
            "VM1 opening its own TCP to VM3: no egress rule",
            PROG_TAP,
            eth(
                VM3_MAC,
                VM1_MAC,
                ETH_P_IP,
                &tcp(VM1_IP, VM3_IP, 80, 40001, TCP_SYN, b""),
            ),
            TCX_DROP,
            Stat::DropSgEgress,
        ),
    ]);
}

#[test]
fn stateless_groups_track_nothing_and_replies_need_a_rule() {
    let mut f = fixture(&sg_state(r#"["sg-sl"]"#, true));
    f.table(vec![
        case(
            "UDP 53 to VM4: admitted",
            PROG_TAP,
            udp_frame(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 5353, 53),
            TCX_REDIRECT,
            Stat::Routed,
        ),
        case(
            "its reply: no ingress rule, no state",
            PROG_TAP_OUT,
            udp_frame(GW1_MAC, VM1_MAC, VM4_IP, VM1_IP, 53, 5353),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        quiet(
            "TCP 80 in",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 80),
            TCX_NEXT,
        ),
    ]);
    assert!(sg_ct_kinds(&f).is_empty(), "stateless: nothing tracked");
}

#[test]
fn no_groups_admit_only_base_traffic_and_a_port_down_nothing() {
    fixture(&sg_state("[]", true)).table(vec![
        case(
            "TCP 80 in: no group, no rule",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 80),
            TCX_DROP,
            Stat::DropSgIngress,
        ),
        case(
            "echo to VM3 out",
            PROG_TAP,
            ping(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64),
            TCX_DROP,
            Stat::DropSgEgress,
        ),
        case(
            "ARP for the gateway still answered",
            PROG_TAP,
            eth(
                BROADCAST,
                VM1_MAC,
                ETH_P_ARP,
                &arp(ARP_REQUEST, VM1_MAC, VM1_IP, [0; 6], GW1_IP),
            ),
            TCX_REDIRECT,
            Stat::ArpReply,
        ),
    ]);
    fixture(&sg_state(r#"["sg-web"]"#, false)).table(vec![
        case(
            "out of a port that is down",
            PROG_TAP,
            ping(VM1_MAC, VM3_MAC, VM1_IP, VM3_IP, 64),
            TCX_DROP,
            Stat::DropPortDown,
        ),
        case(
            "ARP out of a port that is down",
            PROG_TAP,
            eth(
                BROADCAST,
                VM1_MAC,
                ETH_P_ARP,
                &arp(ARP_REQUEST, VM1_MAC, VM1_IP, [0; 6], GW1_IP),
            ),
            TCX_DROP,
            Stat::DropPortDown,
        ),
        case(
            "into a port that is down, even what a rule admits",
            PROG_TAP_OUT,
            tcp_frame(VM3_MAC, VM1_MAC, VM3_IP, VM1_IP, 80),
            TCX_DROP,
            Stat::DropPortDown,
        ),
    ]);
}
