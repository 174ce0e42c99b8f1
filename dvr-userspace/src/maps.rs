//! Typed handles on a host's pinned maps: the only place map names are looked up.
//!
//! The agent loads the object, pins every map under `<bpffs>/<host>/<NAME>`, then opens its
//! handles through those pins exactly as `dvrctl` does, so both see the same maps.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key as LpmKey},
};
use dvr_common::{
    config::{self, HostConfig},
    events::{self, RateLimit},
    l2::{self, FdbEntry, FdbKey, FloodSet, MacKey},
    nat::{self, CtEntry, CtKey, FipEntry, FipSrc, Neigh, VipCandidate, VipKey, VipLoc},
    port::{self, LocalPort, SecKey},
    route::{self, Endpoint, IpKey, Route, RouteKey, RouterIface},
    snat::{self, SnatRouter, SnatSteer},
    stats,
};

/// The fence clock, re-exported for callers that predate [`crate::clock`].
pub use crate::clock::fence_now_ns;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name}: cannot open pin {path}: {source} (is the agent running for this host?)")]
    Open {
        name: &'static str,
        path: PathBuf,
        source: MapError,
    },
    #[error("map {name}: {source}")]
    Access {
        name: &'static str,
        source: MapError,
    },
}

/// Default bpffs directory holding one sub-directory per host.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/dvr";

/// `<root>/<host>`.
pub fn host_dir(root: &Path, host: &str) -> PathBuf {
    root.join(host)
}

/// A hash map handle with its name.
pub struct Hash<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

/// An LPM trie handle; keys are (prefix length, data).
pub struct Lpm<K, V> {
    name: &'static str,
    map: LpmTrie<MapData, K, V>,
}

/// A delete of a key that is not there: aya reports `bpf_map_delete_elem`'s ENOENT as a
/// syscall error, not as `KeyNotFound`.
fn is_absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// `union bpf_attr`, the `batch` member (BPF_MAP_*_BATCH commands).
#[repr(C)]
pub(crate) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `bpf(cmd, attr)`.
pub(crate) fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` batch member; the callers make its pointers
    // refer to buffers of `count` keys and values of the map's sizes, which outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of the hash map `fd` through BPF_MAP_LOOKUP_BATCH, 4096 per call, handed to
/// `each`; `None` when the kernel does not batch this map (nothing was handed over).
pub(crate) fn lookup_batch<K: Pod + Default, V: Pod + Default>(
    fd: std::os::fd::RawFd,
    mut each: impl FnMut(&K, &V),
) -> Option<std::io::Result<()>> {
    const CHUNK: usize = 4096;
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // The hash map's cursor is a bucket index (u32); 8 bytes leave room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // EINVAL/ENOSYS/EOPNOTSUPP, or the kernel's internal ENOTSUPP (524).
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | 524)
                    ) =>
            {
                return None;
            }
            Err(e) => return Some(Err(e)),
        };
        let n = (attr.count as usize).min(CHUNK);
        keys.iter()
            .zip(&values)
            .take(n)
            .for_each(|(k, v)| each(k, v));
        if done {
            return Some(Ok(()));
        }
        if n == 0 {
            return Some(Err(std::io::Error::other(
                "BPF_MAP_LOOKUP_BATCH made no progress",
            )));
        }
        token_in = token_out;
        first = false;
    }
}

fn access(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Access { name, source }
}

impl<K: Pod + Ord + Default, V: Pod + PartialEq + Default> Hash<K, V> {
    /// Every entry. BPF_MAP_LOOKUP_BATCH, 4096 per call: walking a sparse table key by key
    /// (the 512k-slot conntrack map in the agent's GC) held the agent's loop for
    /// milliseconds. Entry by entry when the kernel does not batch this map.
    pub fn read(&self) -> Result<BTreeMap<K, V>, MapsError> {
        match self.read_batch() {
            Some(Ok(all)) => Ok(all),
            Some(Err(e)) => Err(access(self.name)(MapError::SyscallError(
                aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: e,
                },
            ))),
            None => self
                .map
                .iter()
                .map(|r| r.map_err(access(self.name)))
                .collect(),
        }
    }

    /// `None` when the kernel does not support batch lookups on this map.
    fn read_batch(&self) -> Option<Result<BTreeMap<K, V>, std::io::Error>> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let mut out = BTreeMap::new();
        let fd = self.map.map().fd().as_fd().as_raw_fd();
        lookup_batch(fd, |k: &K, v: &V| {
            out.insert(*k, *v);
        })
        .map(|r| r.map(|()| out))
    }
    pub fn put(&mut self, k: &K, v: &V) -> Result<(), MapsError> {
        self.map.insert(k, v, 0).map_err(access(self.name))
    }
    /// Write many entries: BPF_MAP_UPDATE_BATCH, 4096 per call (10,000 FIPs are 30,000
    /// entries: one syscall each cost a quarter of programming them); entry by entry when
    /// the kernel does not batch this map.
    pub fn put_many(&mut self, entries: &[(K, V)]) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        const CHUNK: usize = 4096;
        let fd = self.map.map().fd().as_fd().as_raw_fd() as u32;
        for chunk in entries.chunks(CHUNK) {
            let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
            let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
            let mut attr = BatchAttr {
                in_batch: 0,
                out_batch: 0,
                keys: keys.as_ptr() as u64,
                values: values.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: fd,
                elem_flags: 0,
                flags: 0,
            };
            if let Err(e) = bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) {
                // Not batched here (or a partial failure): the rest one by one, which
                // reports a real error with the map's name.
                let done = if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) {
                    0
                } else {
                    (attr.count as usize).min(chunk.len())
                };
                for (k, v) in &chunk[done..] {
                    self.put(k, v)?;
                }
            }
        }
        Ok(())
    }
    /// Insert only when the key is absent (BPF_NOEXIST); an existing value is kept.
    pub fn put_new(&mut self, k: &K, v: &V) -> Result<(), MapsError> {
        const BPF_NOEXIST: u64 = 1;
        match self.map.insert(k, v, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            Err(e) => Err(access(self.name)(e)),
        }
    }
    pub fn get(&self, k: &K) -> Result<Option<V>, MapsError> {
        match self.map.get(k, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(access(self.name)(e)),
        }
    }
    /// Delete `k`; an absent key is no error.
    pub fn del(&mut self, k: &K) -> Result<(), MapsError> {
        match self.map.remove(k) {
            Err(e) if is_absent(&e) => Ok(()),
            Ok(()) => Ok(()),
            Err(e) => Err(access(self.name)(e)),
        }
    }
}

impl<K: Pod + Ord, V: Pod + PartialEq> Lpm<K, V> {
    pub fn read(&self) -> Result<BTreeMap<(u32, K), V>, MapsError> {
        self.map
            .iter()
            .map(|r| {
                r.map(|(k, v)| ((k.prefix_len(), k.data()), v))
                    .map_err(access(self.name))
            })
            .collect()
    }
    /// One update per entry (LPM tries hold few entries here).
    pub fn put_many(&mut self, entries: &[((u32, K), V)]) -> Result<(), MapsError> {
        entries.iter().try_for_each(|(k, v)| self.put(k, v))
    }
    pub fn put(&mut self, k: &(u32, K), v: &V) -> Result<(), MapsError> {
        self.map
            .insert(&LpmKey::new(k.0, k.1), v, 0)
            .map_err(access(self.name))
    }
    /// Delete `k`; an absent key is no error.
    pub fn del(&mut self, k: &(u32, K)) -> Result<(), MapsError> {
        match self.map.remove(&LpmKey::new(k.0, k.1)) {
            Err(e) if is_absent(&e) => Ok(()),
            Ok(()) => Ok(()),
            Err(e) => Err(access(self.name)(e)),
        }
    }
}

/// All maps of one host, opened through their pins.
pub struct HostMaps {
    pub dir: PathBuf,
    pub config: Array<MapData, HostConfig>,
    pub tunnel_peers: Hash<u32, u32>,
    pub dvr_macs: Hash<MacKey, u32>,
    pub endpoints: Hash<IpKey, Endpoint>,
    pub routes: Lpm<RouteKey, Route>,
    pub fdb: Hash<FdbKey, FdbEntry>,
    pub flood: Hash<u32, FloodSet>,
    pub gw_by_ip: Hash<IpKey, RouterIface>,
    pub gw_by_mac: Hash<FdbKey, RouterIface>,
    pub port_security: Lpm<SecKey, u32>,
    pub local_ports: Hash<u32, LocalPort>,
    pub fips: Hash<u32, FipEntry>,
    pub fip_src: Hash<IpKey, FipSrc>,
    pub ext_neigh: Hash<u32, Neigh>,
    pub ext_deny: Lpm<u32, u32>,
    pub ct: Hash<CtKey, CtEntry>,
    pub snat_steer: Hash<FdbKey, SnatSteer>,
    pub snat_routers: Hash<FdbKey, SnatRouter>,
    pub snat_ips: Hash<u32, SnatRouter>,
    pub snat_exhausted: Hash<u32, u64>,
    /// HA router id (`compile::fnv1a32`) -> CLOCK_MONOTONIC ns until which this host serves
    /// it ([`crate::clock::fence_now_ns`]). Written by the HA election only: not part of
    /// `compile::MapEntries`, so reconcile never touches it.
    pub ha_fence: Hash<u32, u64>,
    pub vip_cand: Hash<VipKey, VipCandidate>,
    pub vip_loc: Hash<IpKey, VipLoc>,
    pub stats: PerCpuArray<MapData, u64>,
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, MapsError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| MapsError::Open { name, path, source })
}

fn hash<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Result<Hash<K, V>, MapsError> {
    let data = open(dir, name)?;
    // The kernel's map type decides the variant (LRU for conntrack); both are hash maps.
    let map = HashMap::try_from(Map::HashMap(data)).map_err(access(name))?;
    Ok(Hash { name, map })
}

fn lpm<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Result<Lpm<K, V>, MapsError> {
    let map = LpmTrie::try_from(Map::LpmTrie(open(dir, name)?)).map_err(access(name))?;
    Ok(Lpm { name, map })
}

/// Every map of the datapath.
pub const NAMES: [&str; 26] = [
    config::HOST_CONFIG,
    l2::TUNNEL_PEERS,
    l2::DVR_MACS,
    route::ENDPOINTS,
    route::ROUTES,
    l2::FDB,
    l2::FLOOD,
    route::GW_BY_IP,
    route::GW_BY_MAC,
    port::PORT_SECURITY,
    port::LOCAL_PORTS,
    nat::FIPS,
    nat::FIP_SRC,
    nat::EXT_NEIGH,
    nat::EXT_DENY,
    nat::CT,
    snat::SNAT_STEER,
    snat::SNAT_ROUTERS,
    snat::SNAT_IPS,
    snat::SNAT_EXHAUSTED,
    snat::HA_FENCE,
    nat::VIP_CAND,
    nat::VIP_LOC,
    stats::STATS,
    events::EVENTS,
    events::EVENTS_RL,
];

/// Pins in `dir` that this build cannot adopt (a different key or value layout, or a
/// capacity that must match: conntrack's `ct_max`, one counter per drop reason). They are
/// recreated empty; everything else keeps its contents across a restart.
pub fn incompatible_pins(dir: &Path, ct_max: u32) -> Vec<(&'static str, String)> {
    fn capacity(dir: &Path, name: &'static str, want: u32) -> Result<(), String> {
        let info = open(dir, name)
            .and_then(|m| m.info().map_err(access(name)))
            .map_err(|e| e.to_string())?;
        if info.max_entries() == want {
            Ok(())
        } else {
            Err(format!(
                "capacity {} where this build wants {want}",
                info.max_entries()
            ))
        }
    }
    let s = |r: Result<(), MapsError>| r.map_err(|e| e.to_string());
    let checks: [(&'static str, Result<(), String>); 26] = [
        (
            config::HOST_CONFIG,
            s(open(dir, config::HOST_CONFIG).and_then(|m| {
                Array::<_, HostConfig>::try_from(Map::Array(m))
                    .map(|_| ())
                    .map_err(access(config::HOST_CONFIG))
            })),
        ),
        (
            l2::TUNNEL_PEERS,
            s(hash::<u32, u32>(dir, l2::TUNNEL_PEERS).map(|_| ())),
        ),
        (
            l2::DVR_MACS,
            s(hash::<MacKey, u32>(dir, l2::DVR_MACS).map(|_| ())),
        ),
        (
            route::ENDPOINTS,
            s(hash::<IpKey, Endpoint>(dir, route::ENDPOINTS).map(|_| ())),
        ),
        (
            route::ROUTES,
            s(lpm::<RouteKey, Route>(dir, route::ROUTES).map(|_| ())),
        ),
        (
            l2::FDB,
            s(hash::<FdbKey, FdbEntry>(dir, l2::FDB).map(|_| ())),
        ),
        (
            l2::FLOOD,
            s(hash::<u32, FloodSet>(dir, l2::FLOOD).map(|_| ())),
        ),
        (
            route::GW_BY_IP,
            s(hash::<IpKey, RouterIface>(dir, route::GW_BY_IP).map(|_| ())),
        ),
        (
            route::GW_BY_MAC,
            s(hash::<FdbKey, RouterIface>(dir, route::GW_BY_MAC).map(|_| ())),
        ),
        (
            port::PORT_SECURITY,
            s(lpm::<SecKey, u32>(dir, port::PORT_SECURITY).map(|_| ())),
        ),
        (
            port::LOCAL_PORTS,
            s(hash::<u32, LocalPort>(dir, port::LOCAL_PORTS).map(|_| ())),
        ),
        (
            nat::FIPS,
            s(hash::<u32, FipEntry>(dir, nat::FIPS).map(|_| ())),
        ),
        (
            nat::FIP_SRC,
            s(hash::<IpKey, FipSrc>(dir, nat::FIP_SRC).map(|_| ())),
        ),
        (
            nat::EXT_NEIGH,
            s(hash::<u32, Neigh>(dir, nat::EXT_NEIGH).map(|_| ())),
        ),
        (
            nat::EXT_DENY,
            s(lpm::<u32, u32>(dir, nat::EXT_DENY).map(|_| ())),
        ),
        (
            nat::CT,
            s(hash::<CtKey, CtEntry>(dir, nat::CT).map(|_| ()))
                .and_then(|()| capacity(dir, nat::CT, ct_max)),
        ),
        (
            snat::SNAT_STEER,
            s(hash::<FdbKey, SnatSteer>(dir, snat::SNAT_STEER).map(|_| ())),
        ),
        (
            snat::SNAT_ROUTERS,
            s(hash::<FdbKey, SnatRouter>(dir, snat::SNAT_ROUTERS).map(|_| ())),
        ),
        (
            snat::SNAT_IPS,
            s(hash::<u32, SnatRouter>(dir, snat::SNAT_IPS).map(|_| ())),
        ),
        (
            snat::SNAT_EXHAUSTED,
            s(hash::<u32, u64>(dir, snat::SNAT_EXHAUSTED).map(|_| ())),
        ),
        (
            snat::HA_FENCE,
            s(hash::<u32, u64>(dir, snat::HA_FENCE).map(|_| ())),
        ),
        (
            nat::VIP_CAND,
            s(hash::<VipKey, VipCandidate>(dir, nat::VIP_CAND).map(|_| ())),
        ),
        (
            nat::VIP_LOC,
            s(hash::<IpKey, VipLoc>(dir, nat::VIP_LOC).map(|_| ())),
        ),
        (
            stats::STATS,
            s(open(dir, stats::STATS).and_then(|m| {
                PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(m))
                    .map(|_| ())
                    .map_err(access(stats::STATS))
            }))
            .and_then(|()| capacity(dir, stats::STATS, stats::STAT_COUNT)),
        ),
        (
            events::EVENTS,
            capacity(dir, events::EVENTS, events::EVENTS_BYTES),
        ),
        (
            events::EVENTS_RL,
            s(open(dir, events::EVENTS_RL).and_then(|m| {
                PerCpuArray::<_, RateLimit>::try_from(Map::PerCpuArray(m))
                    .map(|_| ())
                    .map_err(access(events::EVENTS_RL))
            })),
        ),
    ];
    checks
        .into_iter()
        .filter(|(name, _)| dir.join(name).exists())
        .filter_map(|(name, r)| r.err().map(|e| (name, e)))
        .collect()
}

impl HostMaps {
    /// Open every map pinned in `dir` (`<bpffs root>/<host>`).
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            config: Array::try_from(Map::Array(open(dir, config::HOST_CONFIG)?))
                .map_err(access(config::HOST_CONFIG))?,
            tunnel_peers: hash(dir, l2::TUNNEL_PEERS)?,
            dvr_macs: hash(dir, l2::DVR_MACS)?,
            endpoints: hash(dir, route::ENDPOINTS)?,
            routes: lpm(dir, route::ROUTES)?,
            fdb: hash(dir, l2::FDB)?,
            flood: hash(dir, l2::FLOOD)?,
            gw_by_ip: hash(dir, route::GW_BY_IP)?,
            gw_by_mac: hash(dir, route::GW_BY_MAC)?,
            port_security: lpm(dir, port::PORT_SECURITY)?,
            local_ports: hash(dir, port::LOCAL_PORTS)?,
            fips: hash(dir, nat::FIPS)?,
            fip_src: hash(dir, nat::FIP_SRC)?,
            ext_neigh: hash(dir, nat::EXT_NEIGH)?,
            ext_deny: lpm(dir, nat::EXT_DENY)?,
            ct: hash(dir, nat::CT)?,
            snat_steer: hash(dir, snat::SNAT_STEER)?,
            snat_routers: hash(dir, snat::SNAT_ROUTERS)?,
            snat_ips: hash(dir, snat::SNAT_IPS)?,
            snat_exhausted: hash(dir, snat::SNAT_EXHAUSTED)?,
            ha_fence: hash(dir, snat::HA_FENCE)?,
            vip_cand: hash(dir, nat::VIP_CAND)?,
            vip_loc: hash(dir, nat::VIP_LOC)?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open(dir, stats::STATS)?))
                .map_err(access(stats::STATS))?,
        })
    }

    pub fn read_config(&self) -> Result<HostConfig, MapsError> {
        self.config.get(&0, 0).map_err(access(config::HOST_CONFIG))
    }

    pub fn write_config(&mut self, cfg: &HostConfig) -> Result<(), MapsError> {
        self.config
            .set(0, cfg, 0)
            .map_err(access(config::HOST_CONFIG))
    }

    /// Per-stat packet counts summed over CPUs, in `Stat::ALL` order.
    pub fn read_stats(&self) -> Result<Vec<(stats::Stat, u64)>, MapsError> {
        stats::Stat::ALL
            .iter()
            .map(|s| {
                let v = self
                    .stats
                    .get(&(*s as u32), 0)
                    .map_err(access(stats::STATS))?;
                Ok((*s, v.iter().sum()))
            })
            .collect()
    }
}

/// The drop-event ring of the host whose pins are in `dir` (one reader at a time).
pub fn open_events(dir: &Path) -> Result<aya::maps::RingBuf<MapData>, MapsError> {
    aya::maps::RingBuf::try_from(Map::RingBuf(open(dir, events::EVENTS)?))
        .map_err(access(events::EVENTS))
}
