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
    l2::{self, FdbEntry, FdbKey, FloodSet, MacKey},
    port::{self, LocalPort, SecKey},
    route::{self, Endpoint, IpKey, Route, RouteKey, RouterIface},
    stats,
};

/// Every map of the datapath, in the order the agent writes them (dependencies first: a
/// packet can only reach an entry once what it points at exists). Deletion runs in reverse.
pub const ALL: &[&str] = &[
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
    stats::STATS,
];

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

fn access(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Access { name, source }
}

impl<K: Pod + Ord, V: Pod + PartialEq> Hash<K, V> {
    pub fn read(&self) -> Result<BTreeMap<K, V>, MapsError> {
        self.map
            .iter()
            .map(|r| r.map_err(access(self.name)))
            .collect()
    }
    pub fn put(&mut self, k: &K, v: &V) -> Result<(), MapsError> {
        self.map.insert(k, v, 0).map_err(access(self.name))
    }
    pub fn del(&mut self, k: &K) -> Result<(), MapsError> {
        match self.map.remove(k) {
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
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
    pub fn put(&mut self, k: &(u32, K), v: &V) -> Result<(), MapsError> {
        self.map
            .insert(&LpmKey::new(k.0, k.1), v, 0)
            .map_err(access(self.name))
    }
    pub fn del(&mut self, k: &(u32, K)) -> Result<(), MapsError> {
        match self.map.remove(&LpmKey::new(k.0, k.1)) {
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
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
    pub stats: PerCpuArray<MapData, u64>,
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, MapsError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| MapsError::Open { name, path, source })
}

fn hash<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Result<Hash<K, V>, MapsError> {
    let map = HashMap::try_from(Map::HashMap(open(dir, name)?)).map_err(access(name))?;
    Ok(Hash { name, map })
}

fn lpm<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Result<Lpm<K, V>, MapsError> {
    let map = LpmTrie::try_from(Map::LpmTrie(open(dir, name)?)).map_err(access(name))?;
    Ok(Lpm { name, map })
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
