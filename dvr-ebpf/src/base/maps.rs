//! Every map of the datapath. Each static's identifier is its map name and equals the
//! `pub const` in `dvr-common` (the `#[map]` macro names the map after the static).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dvr_common::{
    config::HostConfig,
    events::{self, RateLimit},
    l2::{self, FdbEntry, FdbKey, FloodSet, MacKey},
    nat::{self, CtEntry, CtKey, FipEntry, FipSrc, Neigh, VipCandidate, VipKey, VipLoc},
    port::{self, LocalPort, SecKey},
    route::{self, Endpoint, IpKey, Route, RouteKey, RouterIface},
    snat::{self, SnatRouter, SnatSteer},
    stats::STAT_COUNT,
};

/// This host's tunnel ifindex, tunnel address and DVR MAC. Agent-written.
#[map]
pub static DVR_HOST_CONFIG: Array<HostConfig> = Array::with_max_entries(1, 0);

/// Tap ifindex -> the VM port behind it. Agent-written when a tap appears.
#[map]
pub static DVR_LOCAL_PORTS: HashMap<u32, LocalPort> =
    HashMap::with_max_entries(port::LOCAL_PORTS_MAX, 0);

/// (tap, MAC, IP prefix) a port may send from. Agent-written.
#[map]
pub static DVR_PORT_SEC: LpmTrie<SecKey, u32> =
    LpmTrie::with_max_entries(port::PORT_SECURITY_MAX, 0);

/// (VNI, MAC) -> local tap or remote host. Agent-written.
#[map]
pub static DVR_FDB: HashMap<FdbKey, FdbEntry> = HashMap::with_max_entries(l2::FDB_MAX, 0);

/// VNI -> local taps and remote hosts for broadcast and unknown unicast. Agent-written.
#[map]
pub static DVR_FLOOD: HashMap<u32, FloodSet> = HashMap::with_max_entries(l2::FLOOD_MAX, 0);

/// DVR MAC of every host -> its tunnel address. Agent-written.
#[map]
pub static DVR_DVR_MACS: HashMap<MacKey, u32> = HashMap::with_max_entries(l2::DVR_MACS_MAX, 0);

/// Tunnel addresses of the hosts we accept tunnel traffic from. Agent-written.
#[map]
pub static DVR_PEERS: HashMap<u32, u32> = HashMap::with_max_entries(l2::TUNNEL_PEERS_MAX, 0);

/// (VNI, router interface MAC) -> router interface. Agent-written.
#[map]
pub static DVR_GW_BY_MAC: HashMap<FdbKey, RouterIface> =
    HashMap::with_max_entries(route::GW_MAX, 0);

/// (VNI, router interface IP) -> router interface. Agent-written.
#[map]
pub static DVR_GW_BY_IP: HashMap<IpKey, RouterIface> = HashMap::with_max_entries(route::GW_MAX, 0);

/// (router, destination prefix) -> destination subnet. Agent-written.
#[map]
pub static DVR_ROUTES: LpmTrie<RouteKey, Route> = LpmTrie::with_max_entries(route::ROUTES_MAX, 0);

/// (VNI, IP) -> port MAC and location. Agent-written.
#[map]
pub static DVR_ENDPOINTS: HashMap<IpKey, Endpoint> =
    HashMap::with_max_entries(route::ENDPOINTS_MAX, 0);

/// Per-CPU packet counters indexed by `Stat`. Datapath-written.
#[map]
pub static DVR_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Floating IP -> how it is served. Agent-written.
#[map]
pub static DVR_FIPS: HashMap<u32, FipEntry> = HashMap::with_max_entries(nat::FIPS_MAX, 0);

/// (VNI, fixed IP) of local ports with a FIP -> outbound SNAT. Agent-written.
#[map]
pub static DVR_FIP_SRC: HashMap<IpKey, FipSrc> = HashMap::with_max_entries(nat::FIPS_MAX, 0);

/// External gateway IP -> learned MAC. Keys agent-written, values datapath-written.
#[map]
pub static DVR_EXT_NEIGH: HashMap<u32, Neigh> = HashMap::with_max_entries(nat::EXT_NEIGH_MAX, 0);

/// Tenant prefixes never reachable directly from outside. Agent-written.
#[map]
pub static DVR_EXT_DENY: LpmTrie<u32, u32> = LpmTrie::with_max_entries(nat::EXT_DENY_MAX, 0);

/// Tracked flows, two entries each. Datapath-written; the agent expires and purges.
/// Capacity set by the agent at load time.
#[map]
pub static DVR_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(nat::CT_MAX, 0);

/// (VNI, router interface MAC) -> where the router's SNAT is. Agent-written.
#[map]
pub static DVR_SNAT_STEER: HashMap<FdbKey, SnatSteer> =
    HashMap::with_max_entries(snat::SNAT_MAX, 0);

/// (VNI, csnat port MAC) -> router translated here. Agent-written.
#[map]
pub static DVR_SNAT_RTR: HashMap<FdbKey, SnatRouter> = HashMap::with_max_entries(snat::SNAT_MAX, 0);

/// Router external IP -> router translated here. Agent-written.
#[map]
pub static DVR_SNAT_IPS: HashMap<u32, SnatRouter> = HashMap::with_max_entries(snat::SNAT_MAX, 0);

/// Router id -> new flows refused for lack of a port. Datapath-written.
#[map]
pub static DVR_SNAT_EXH: HashMap<u32, u64> = HashMap::with_max_entries(snat::SNAT_MAX, 0);

/// HA router id -> CLOCK_MONOTONIC ns until which this host serves it. Agent-written
/// (election), never by reconcile.
#[map]
pub static DVR_HA_FENCE: HashMap<u32, u64> = HashMap::with_max_entries(snat::SNAT_MAX, 0);

/// (VNI, VIP, MAC) -> port allowed to hold the VIP and where it is. Agent-written.
#[map]
pub static DVR_VIP_CAND: HashMap<VipKey, VipCandidate> = HashMap::with_max_entries(nat::VIP_MAX, 0);

/// (VNI, VIP) -> current holder, learned from its ARP. Datapath-written.
#[map]
pub static DVR_VIP_LOC: HashMap<IpKey, VipLoc> = HashMap::with_max_entries(nat::VIP_MAX, 0);

/// Drop events for `dvrctl monitor`. Datapath-written.
#[map]
pub static DVR_EVENTS: RingBuf = RingBuf::with_byte_size(events::EVENTS_BYTES, 0);

/// Token bucket limiting the event rate, per CPU. Datapath-written.
#[map]
pub static DVR_EVENTS_RL: PerCpuArray<RateLimit> = PerCpuArray::with_max_entries(1, 0);
