//! Packet fixture tables (the harness: `dvr_tests::fixture`, as `fixtures.rs`) for issue 14:
//! the MTU of the network a routed packet enters (ICMP fragmentation needed, its rate
//! limit), routers' extra routes and a router administratively down. The fragments of a
//! packet without DF are sent with `bpf_clone_redirect`, which a test run really executes:
//! they are checked with real traffic in `path_mtu.rs`, not here. Needs root (CAP_BPF) and
//! bpffs, no namespaces.
use dvr_common::{csum::checksum, stats::Stat};
use dvr_tests::fixture::{
    DVR_MAC_A, GW1_MAC, GW2_MAC, TCX_DROP, TCX_REDIRECT, TWO_HOSTS, VM1_MAC, VM2_MAC, VM4_MAC,
    case, two_hosts as fixture,
};
use dvr_tests::packet::{ETH_P_IP, eth, ip_of, ping, udp};
use dvr_userspace::attach::PROG_TAP;
use serde_json::{Value, json};

const VM1_IP: [u8; 4] = [10, 1, 0, 11];
const VM2_IP: [u8; 4] = [10, 2, 0, 12];
const VM4_IP: [u8; 4] = [10, 2, 0, 14];
const GW1_IP: [u8; 4] = [10, 1, 0, 1];

/// [`TWO_HOSTS`] edited by `f`.
fn state(f: impl FnOnce(&mut Value)) -> String {
    let mut s: Value = serde_json::from_str(TWO_HOSTS).unwrap_or_else(|e| panic!("{e}"));
    f(&mut s);
    s.to_string()
}

/// The element of `list` with id `id`.
fn elem<'a>(s: &'a mut Value, list: &str, id: &str) -> &'a mut Value {
    s[list]
        .as_array_mut()
        .and_then(|l| l.iter_mut().find(|e| e["id"] == id))
        .unwrap_or_else(|| panic!("no {list} {id}"))
}

/// A UDP packet VM1 -> `dst` through its gateway, `len` bytes of IP, DF set.
fn udp_to(dst: [u8; 4], len: usize) -> Vec<u8> {
    eth(
        GW1_MAC,
        VM1_MAC,
        ETH_P_IP,
        &udp(VM1_IP, dst, 5000, 6000, &vec![7u8; len - 28]),
    )
}

#[test]
fn df_packets_longer_than_the_next_network_are_answered_with_its_mtu() {
    let s = state(|s| elem(s, "networks", "net2")["mtu"] = 1400.into());
    let big = udp_to(VM2_IP, 1401);
    let mut f = fixture(&s);
    f.table(vec![
        case(
            "1400 bytes into a 1400 network",
            PROG_TAP,
            udp_to(VM2_IP, 1400),
            TCX_REDIRECT,
            Stat::Routed,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM2_MAC);
            assert_eq!(&out[6..12], &GW2_MAC);
            assert_eq!(out.len(), 14 + 1400, "delivered whole");
        }),
        case(
            "1401 bytes with DF into a 1400 network",
            PROG_TAP,
            big.clone(),
            TCX_REDIRECT,
            Stat::IcmpFragNeeded,
        )
        .check(move |out| {
            assert_eq!(out.len(), 14 + 56, "IP + ICMP + quoted header and 8 bytes");
            assert_eq!(&out[0..6], &VM1_MAC, "back to the sender");
            assert_eq!(&out[6..12], &GW1_MAC, "from its gateway");
            let ip = ip_of(out);
            assert_eq!(
                &ip[12..16],
                &GW1_IP,
                "from the gateway address of its subnet"
            );
            assert_eq!(&ip[16..20], &VM1_IP);
            assert_eq!(checksum(ip), 0, "IPv4 header checksum");
            let icmp = &out[34..];
            assert_eq!(
                (icmp[0], icmp[1]),
                (3, 4),
                "fragmentation needed and DF set"
            );
            assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1400, "next-hop MTU");
            assert_eq!(checksum(icmp), 0, "ICMP checksum");
            // The quote: the header as routed (TTL already decremented) and 8 bytes.
            assert_eq!(&icmp[8..16], &big[14..22], "quoted length, id and flags");
            assert_eq!(icmp[16], big[22] - 1, "quoted TTL");
            assert_eq!(
                &icmp[20..36],
                &big[26..42],
                "quoted addresses and UDP header"
            );
        }),
    ]);
}

#[test]
fn icmp_errors_are_rate_limited_per_cpu() {
    let s = state(|s| elem(s, "networks", "net2")["mtu"] = 1400.into());
    let mut f = fixture(&s);
    let big = udp_to(VM2_IP, 1401);
    let before = f.maps.read_stats().unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..400 {
        f.run(PROG_TAP, &big);
    }
    let after = f.maps.read_stats().unwrap_or_else(|e| panic!("{e}"));
    let moved = |stat: Stat| {
        let get = |v: &Vec<(Stat, u64)>| v.iter().find(|(s, _)| *s == stat).map_or(0, |e| e.1);
        get(&after) - get(&before)
    };
    let (sent, limited) = (moved(Stat::IcmpFragNeeded), moved(Stat::DropFragNeeded));
    assert_eq!(
        sent + limited,
        400,
        "each packet answered or counted as not"
    );
    assert!(sent >= 50, "at least a burst is answered: {sent}");
    assert!(limited > 0, "400 at once exceed the rate: {sent} sent");
}

#[test]
fn extra_routes_deliver_to_the_port_of_their_next_hop() {
    let s = state(|s| {
        elem(s, "routers", "r1")["routes"] = json!([
            {"destination": "10.99.0.0/24", "nexthop": "10.2.0.14"},
            {"destination": "10.98.0.0/24", "nexthop": "10.2.0.99"}
        ]);
    });
    fixture(&s).table(vec![
        case(
            "to 10.99.0.5 via VM4 on host B",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, [10, 99, 0, 5], 64),
            TCX_REDIRECT,
            Stat::Routed,
        )
        .check(|out| {
            assert_eq!(&out[0..6], &VM4_MAC, "to the next hop's port");
            assert_eq!(
                &out[6..12],
                &DVR_MAC_A,
                "across the tunnel with the DVR MAC"
            );
            let ip = ip_of(out);
            assert_eq!(&ip[16..20], &[10, 99, 0, 5], "the destination is kept");
            assert_eq!(ip[8], 63, "routed: TTL decremented");
        }),
        case(
            "to 10.98.0.5 via an address no port holds",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, [10, 98, 0, 5], 64),
            TCX_DROP,
            Stat::DropNoNexthop,
        ),
        case(
            "the connected subnet is still routed to its ports",
            PROG_TAP,
            ping(VM1_MAC, GW1_MAC, VM1_IP, VM4_IP, 64),
            TCX_REDIRECT,
            Stat::Routed,
        ),
    ]);
}

#[test]
fn a_router_administratively_down_routes_nothing() {
    let s = state(|s| elem(s, "routers", "r1")["admin_state_up"] = false.into());
    fixture(&s).table(vec![case(
        "VM1 to VM2 through a router that is down",
        PROG_TAP,
        ping(VM1_MAC, GW1_MAC, VM1_IP, VM2_IP, 64),
        TCX_DROP,
        Stat::DropRouterDown,
    )]);
}
