//! The one table of every map of the datapath.
//!
//! Each map is declared once, in [`map_table!`]: its field name (the user-space handle and
//! the compiled-entries field), its name (the BPF static, and so the kernel's map name and the
//! pin file name: at most 15 bytes), its kind, key and value types, capacity, and owner (the
//! section it stands in). Everything else is derived from it:
//! - `dvr-ebpf` declares one `#[map]` static per row (`base/maps.rs`);
//! - `dvr-userspace` derives the pin names, the typed handles (`maps::HostMaps`), the check of
//!   pins a new build cannot adopt, the compiled-entries struct (`compile::MapEntries`) and
//!   reconcile's apply order;
//! - the name constants below ([`DVR_FDB`], ...) are the only spelling of a map name.
//!
//! Owners (the sections of the table):
//! - `config`: the host configuration array, written whole by reconcile before anything else;
//! - `agent`: written by the agent only, reconciled to exactly what the state compiles to.
//!   Their order is the apply order: entries are written top to bottom (what a packet needs
//!   before what leads packets to it: floating IPs last, since their entry attracts traffic
//!   through proxy ARP) and deleted bottom to top;
//! - `agent_keys`: the agent decides which keys exist, the datapath fills their values;
//! - `interfaces`: written by the agent from the host's interfaces, never by reconcile;
//! - `election`: written by the HA election only, never by reconcile;
//! - `datapath`: written by the datapath; the agent reads, expires or prunes them.
//!
//! Kinds: `Array`, `PerCpuArray` (key `u32`), `Hash`, `LruHash`, `Lpm` (the key type is the
//! data part of the trie key; the prefix length travels beside it), `RingBuf` (key and value
//! `()`, capacity in bytes).
//!
//! Adding a map: one row here (in its owner's section, at its place in the apply order for
//! `agent` maps) plus its compile step in `dvr-userspace/src/compile/`.

/// Hands the map table to `$consumer!` (a `macro_rules!` macro in scope where this is
/// invoked), as sections `owner { rows }` in the order config, agent, agent_keys,
/// interfaces, election, datapath; each row is `#[doc] field: NAME, Kind<Key, Value>, capacity;`.
#[macro_export]
macro_rules! map_table {
    ($consumer:ident) => {
        $consumer! {
            config {
                /// Array with one `HostConfig` at index 0: this host's tunnel ifindex, tunnel
                /// address, DVR MAC and external side.
                config: DVR_HOST_CONFIG, Array<u32, $crate::config::HostConfig>, 1;
            }
            agent {
                /// LPM trie `u32 prefix (network order) -> router id`: tenant subnets, which
                /// traffic from the external network must never reach directly.
                ext_deny: DVR_EXT_DENY, Lpm<u32, u32>, $crate::nat::EXT_DENY_MAX;
                /// `IpKey (vni, fixed IP) -> FipSrc`: local ports with a FIP, for outbound SNAT.
                fip_src: DVR_FIP_SRC, Hash<$crate::route::IpKey, $crate::nat::FipSrc>,
                    $crate::nat::FIPS_MAX;
                /// `u32 tunnel ip (host order) -> u32 (1)`: hosts we accept tunnel traffic from.
                tunnel_peers: DVR_PEERS, Hash<u32, u32>, $crate::l2::TUNNEL_PEERS_MAX;
                /// `MacKey -> u32 tunnel ip (host order)`: every host's DVR MAC.
                dvr_macs: DVR_DVR_MACS, Hash<$crate::l2::MacKey, u32>, $crate::l2::DVR_MACS_MAX;
                /// `IpKey (vni, ip) -> Endpoint`: every port IP on every routed network.
                endpoints: DVR_ENDPOINTS, Hash<$crate::route::IpKey, $crate::route::Endpoint>,
                    $crate::route::ENDPOINTS_MAX;
                /// `Ip6Key (vni, ip) -> Endpoint`: every port IPv6 address on every routed
                /// network.
                endpoints6: DVR_ENDPOINTS6, Hash<$crate::ip6::Ip6Key, $crate::route::Endpoint>,
                    $crate::ip6::ENDPOINTS6_MAX;
                /// LPM trie `Route6Key -> Route6`: the IPv6 subnets attached to a router.
                routes6: DVR_ROUTES6, Lpm<$crate::ip6::Route6Key, $crate::ip6::Route6>,
                    $crate::ip6::ROUTES6_MAX;
                /// LPM trie `RouteKey -> Route`: the subnets attached to a router.
                routes: DVR_ROUTES, Lpm<$crate::route::RouteKey, $crate::route::Route>,
                    $crate::route::ROUTES_MAX;
                /// `FdbKey (vni, csnat port MAC) -> SnatRouter`, on the SNAT host: frames
                /// addressed to a csnat port are translated for this router.
                snat_routers: DVR_SNAT_RTR, Hash<$crate::l2::FdbKey, $crate::snat::SnatRouter>,
                    $crate::snat::SNAT_MAX;
                /// `FdbKey (vni, router interface MAC) -> SnatSteer`, on every host with ports
                /// of the router: where the router's SNAT is.
                snat_steer: DVR_SNAT_STEER, Hash<$crate::l2::FdbKey, $crate::snat::SnatSteer>,
                    $crate::snat::SNAT_MAX;
                /// `FdbKey -> FdbEntry`: every port MAC on every network this host serves.
                fdb: DVR_FDB, Hash<$crate::l2::FdbKey, $crate::l2::FdbEntry>, $crate::l2::FDB_MAX;
                /// `u32 vni -> FloodSet`: local taps and remote hosts with ports on a network.
                flood: DVR_FLOOD, Hash<u32, $crate::l2::FloodSet>, $crate::l2::FLOOD_MAX;
                /// `IpKey (vni, gateway IP) -> RouterIface`: ARP and ICMP echo for router
                /// interface addresses, answered locally.
                gw_by_ip: DVR_GW_BY_IP, Hash<$crate::route::IpKey, $crate::route::RouterIface>,
                    $crate::route::GW_MAX;
                /// `Ip6Key (vni, address) -> RouterIface6`: router interface IPv6 addresses and
                /// their link-local addresses: neighbour solicitations and echo answered
                /// locally.
                gw_by_ip6: DVR_GW_BY_IP6, Hash<$crate::ip6::Ip6Key, $crate::ip6::RouterIface6>,
                    $crate::ip6::GW6_MAX;
                /// `u32 vni -> RaFrame`: the router advertisement of each network with an
                /// IPv6 subnet on a router (`ipv6_ra_mode` set): the answer to a router
                /// solicitation.
                ra: DVR_RA, Hash<u32, $crate::ip6::RaFrame>, $crate::ip6::RA_MAX;
                /// `FdbKey (vni, gateway MAC) -> RouterIface`: frames to this MAC on this
                /// network are routed by that router.
                gw_by_mac: DVR_GW_BY_MAC, Hash<$crate::l2::FdbKey, $crate::route::RouterIface>,
                    $crate::route::GW_MAX;
                /// LPM trie `SecKey -> u32 flags`: (tap, source MAC, source IP prefix) a port
                /// may send: its own MAC and fixed IPs plus its allowed address pairs.
                port_security: DVR_PORT_SEC, Lpm<$crate::port::SecKey, u32>,
                    $crate::port::PORT_SECURITY_MAX;
                /// LPM trie `Sec6Key -> u32 flags`: as `port_security`, for IPv6 sources: the
                /// port's IPv6 fixed IPs, its EUI-64 link-local address, its IPv6 pairs.
                port_security6: DVR_PORT_SEC6, Lpm<$crate::ip6::Sec6Key, u32>,
                    $crate::ip6::PORT_SECURITY6_MAX;
                /// LPM trie `SgRemoteKey (policy, remote prefix) -> u32 class`: for each
                /// security group policy of a local port, which rules name a remote address
                /// (see `sg`). Written before the ports that refer to the policy.
                sg_remote: DVR_SG_REMOTE, Lpm<$crate::sg::SgRemoteKey, u32>,
                    $crate::sg::SG_REMOTES_MAX;
                /// LPM trie `SgRemote6Key (policy, remote IPv6 prefix) -> u32 class`: as
                /// `sg_remote`, for IPv6 remotes (classes of IPv6 rules only).
                sg_remote6: DVR_SG_REMOTE6, Lpm<$crate::sg::SgRemote6Key, u32>,
                    $crate::sg::SG_REMOTES6_MAX;
                /// LPM trie `SgRuleKey (class, direction, protocol, port block) -> SgRule`:
                /// what each class of rules admits.
                sg_rules: DVR_SG_RULES, Lpm<$crate::sg::SgRuleKey, $crate::sg::SgRule>,
                    $crate::sg::SG_RULES_MAX;
                /// `u32 tap ifindex -> LocalPort`: the VM port behind a tap; its entry is what
                /// makes the datapath serve the tap, so it follows what the port needs.
                local_ports: DVR_LOCAL_PORTS, Hash<u32, $crate::port::LocalPort>,
                    $crate::port::LOCAL_PORTS_MAX;
                /// `VipKey (vni, VIP, MAC) -> VipCandidate`: the ports allowed to hold a VIP
                /// (its address is in their allowed address pairs) and where they are.
                vip_cand: DVR_VIP_CAND, Hash<$crate::nat::VipKey, $crate::nat::VipCandidate>,
                    $crate::nat::VIP_MAX;
                /// `u32 gateway IP (network order) -> SnatRouter`, on the SNAT host: the router
                /// external addresses it answers ARP for and translates replies to.
                snat_ips: DVR_SNAT_IPS, Hash<u32, $crate::snat::SnatRouter>, $crate::snat::SNAT_MAX;
                /// `u32 router id -> Snat6`, on the SNAT host: the routers whose IPv6 traffic
                /// leaves here (routed without NAT), with their external address and next hop.
                snat6: DVR_SNAT6, Hash<u32, $crate::ip6::Snat6>, $crate::ip6::SNAT6_MAX;
                /// LPM trie `Addr6 -> SnatRouter`, on the SNAT host: the tenant IPv6 prefixes
                /// of those routers, routed in from the external network.
                ext_route6: DVR_EXT_ROUTE6, Lpm<$crate::ip6::Addr6, $crate::snat::SnatRouter>,
                    $crate::ip6::EXT_ROUTES6_MAX;
                /// `Addr6 -> SnatRouter`, on the SNAT host: the routers' external IPv6
                /// addresses, whose neighbour solicitations are answered on the external NIC.
                snat_ips6: DVR_SNAT_IPS6, Hash<$crate::ip6::Addr6, $crate::snat::SnatRouter>,
                    $crate::ip6::SNAT6_MAX;
                /// `u32 floating IP (network order) -> FipEntry`: the FIPs this host serves,
                /// those of its routers served elsewhere (hairpin), and unassociated ones
                /// (dropped, counted).
                fips: DVR_FIPS, Hash<u32, $crate::nat::FipEntry>, $crate::nat::FIPS_MAX;
            }
            agent_keys {
                /// `u32 gateway IP (network order) -> Neigh`: external gateways. The agent
                /// creates the keys (which addresses may be learned); the datapath fills the
                /// MAC from ARP it sees.
                ext_neigh: DVR_EXT_NEIGH, Hash<u32, $crate::nat::Neigh>, $crate::nat::EXT_NEIGH_MAX;
                /// `Addr6 -> Neigh`: the external IPv6 next hops, learned from the neighbour
                /// advertisements the datapath sees on the external NIC (keys by the agent).
                ext_neigh6: DVR_EXT_NEIGH6, Hash<$crate::ip6::Addr6, $crate::nat::Neigh>,
                    $crate::ip6::EXT_NEIGH6_MAX;
            }
            interfaces {
                /// `u32 tap ifindex -> u32 (1)`: the local taps that take frames redirected
                /// from XDP (tun/tap devices; veth with `--xdp-veth-peers`), where the
                /// external NIC's XDP program may deliver a floating IP's packets. A fact of
                /// the host's interfaces, not of the state: written by the agent from its
                /// interface list whenever the taps change, never by compile/reconcile.
                xdp_taps: DVR_XDP_TAPS, Hash<u32, u32>, $crate::port::LOCAL_PORTS_MAX;
            }
            election {
                /// `u32 router id -> u64 active_until_ns`: the fence of an HA router
                /// (docs/HA.md). The datapath serves a router whose entries carry `SNAT_HA` (or
                /// a central FIP with `FIP_HA`) only while the value is later than
                /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, in ns); an absent key means "not
                /// served here". Written only by the agent's election (after every beat etcd
                /// accepted, deleted on losing the role), never by compile/reconcile; pinned, so
                /// the fence outlives the agent and expires by itself.
                ha_fence: DVR_HA_FENCE, Hash<u32, u64>, $crate::snat::SNAT_MAX;
            }
            datapath {
                /// LRU hash `CtKey -> CtEntry`: tracked flows, two entries each. The agent
                /// expires idle flows and purges those of removed or moved floating IPs; its
                /// capacity is set at load time (`--ct-max`).
                ct: DVR_CT, LruHash<$crate::nat::CtKey, $crate::nat::CtEntry>, $crate::nat::CT_MAX;
                /// LRU hash `CtKey6 -> CtEntry`: tracked IPv6 security group flows, two
                /// entries each (the other is the reversed key); expired by the agent.
                ct6: DVR_CT6, LruHash<$crate::nat::CtKey6, $crate::nat::CtEntry>,
                    $crate::nat::CT6_MAX;
                /// `IpKey (vni, VIP) -> VipLoc`: who holds each VIP now, learned from the
                /// (gratuitous) ARP its holder sends, accepted only from a candidate port. The
                /// agent prunes VIPs no longer in the state.
                vip_loc: DVR_VIP_LOC, Hash<$crate::route::IpKey, $crate::nat::VipLoc>,
                    $crate::nat::VIP_MAX;
                /// `u32 router id -> u64`: new flows refused for lack of a free SNAT port, per
                /// router; the agent logs increases.
                snat_exhausted: DVR_SNAT_EXH, Hash<u32, u64>, $crate::snat::SNAT_MAX;
                /// Per-CPU array `u32 Stat -> u64 packets`, read by `dvrctl` and metrics.
                stats: DVR_STATS, PerCpuArray<u32, u64>, $crate::stats::STAT_COUNT;
                /// Ring buffer of `DropEvent`s, read by `dvrctl monitor`.
                events: DVR_EVENTS, RingBuf<(), ()>, $crate::events::EVENTS_BYTES;
                /// Per-CPU array `u32 0 -> RateLimit`: the token bucket of the event ring.
                events_rl: DVR_EVENTS_RL, PerCpuArray<u32, $crate::events::RateLimit>, 1;
                /// Per-CPU array `u32 0 -> RateLimit`: the token bucket of the ICMP errors the
                /// router sends (time exceeded, fragmentation needed, packet too big).
                icmp_rl: DVR_ICMP_RL, PerCpuArray<u32, $crate::events::RateLimit>, 1;
                /// Per-CPU array `u32 0 -> Scratch`: the job a stage defers to the program's
                /// entry (an ICMP error, fragments) and the fragmenter's buffer; nothing to
                /// read.
                scratch: DVR_SCRATCH, PerCpuArray<u32, $crate::frag::Scratch>, 1;
            }
        }
    };
}

/// One `pub const NAME: &str` per map.
macro_rules! name_consts {
    ($($owner:ident { $($(#[$doc:meta])* $field:ident: $name:ident, $kind:ident<$k:ty, $v:ty>, $cap:expr;)* })*) => {
        $($(
            $(#[$doc])*
            pub const $name: &str = stringify!($name);
        )*)*
        /// Every map name, in table order.
        pub const NAMES: &[&str] = &[$($(stringify!($name),)*)*];
    };
}

map_table!(name_consts);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_are_unique() {
        for (i, name) in NAMES.iter().enumerate() {
            assert!(
                name.len() <= 15,
                "{name}: BPF_OBJ_NAME_LEN is 16 with the NUL"
            );
            assert!(name.starts_with("DVR_"), "{name}");
            assert!(!NAMES[i + 1..].contains(name), "{name} twice");
        }
        assert_eq!(NAMES.len(), 42);
        assert_eq!(DVR_CT, "DVR_CT");
    }
}
