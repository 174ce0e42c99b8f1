//! Typed handles on pinned maps, one type per map kind of the map table
//! (`dvr_common::map_table!`): hash maps (plain and LRU), LPM tries, arrays, per-CPU arrays
//! and the event ring. Every handle knows its map's name, so each error names the map.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf,
        lpm_trie::Key as LpmKey,
    },
};

use super::batch;

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

pub(super) fn access(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Access { name, source }
}

/// The pinned map `<dir>/<name>`, untyped.
pub(super) fn open_data(dir: &Path, name: &'static str) -> Result<MapData, MapsError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| MapsError::Open { name, path, source })
}

/// A handle opened through its pin. Opening checks the map's kind and its key and value
/// sizes against the handle's types.
pub trait Pinned: Sized {
    fn open(dir: &Path, name: &'static str) -> Result<Self, MapsError>;
}

/// A map the agent writes whole: what reconcile reads, writes and deletes.
pub trait Table {
    type Key: Ord + Clone;
    type Value: PartialEq + Clone;
    fn read(&self) -> Result<BTreeMap<Self::Key, Self::Value>, MapsError>;
    fn put_many(&mut self, entries: &[(Self::Key, Self::Value)]) -> Result<(), MapsError>;
    /// Delete `k`; an absent key is no error.
    fn del(&mut self, k: &Self::Key) -> Result<(), MapsError>;
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

/// A hash map handle (plain or LRU: the kernel's map type decides) with its name.
pub struct Hash<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

impl<K: Pod, V: Pod> Pinned for Hash<K, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        let map = HashMap::try_from(Map::HashMap(open_data(dir, name)?)).map_err(access(name))?;
        Ok(Hash { name, map })
    }
}

impl<K: Pod, V: Pod> Hash<K, V> {
    fn fd(&self) -> RawFd {
        self.map.map().fd().as_fd().as_raw_fd()
    }
}

impl<K: Pod + Ord + Default, V: Pod + PartialEq + Default> Hash<K, V> {
    /// Every entry, through batch lookups ([`batch::lookup`]); entry by entry when the
    /// kernel does not batch this map.
    pub fn read(&self) -> Result<BTreeMap<K, V>, MapsError> {
        let mut out = BTreeMap::new();
        match batch::lookup(self.fd(), |k: &K, v: &V| {
            out.insert(*k, *v);
        }) {
            Some(Ok(())) => Ok(out),
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
    pub fn put(&mut self, k: &K, v: &V) -> Result<(), MapsError> {
        self.map.insert(k, v, 0).map_err(access(self.name))
    }
    /// Write many entries through batch updates ([`batch::update`]).
    pub fn put_many(&mut self, entries: &[(K, V)]) -> Result<(), MapsError> {
        let fd = self.fd();
        batch::update(fd, entries, |rest| {
            rest.iter().try_for_each(|(k, v)| self.put(k, v))
        })
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

impl<K: Pod + Ord + Default, V: Pod + PartialEq + Default> Table for Hash<K, V> {
    type Key = K;
    type Value = V;
    fn read(&self) -> Result<BTreeMap<K, V>, MapsError> {
        Hash::read(self)
    }
    fn put_many(&mut self, entries: &[(K, V)]) -> Result<(), MapsError> {
        Hash::put_many(self, entries)
    }
    fn del(&mut self, k: &K) -> Result<(), MapsError> {
        Hash::del(self, k)
    }
}

/// An LPM trie handle; keys are (prefix length, data).
pub struct Lpm<K, V> {
    name: &'static str,
    map: LpmTrie<MapData, K, V>,
}

impl<K: Pod, V: Pod> Pinned for Lpm<K, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        let map = LpmTrie::try_from(Map::LpmTrie(open_data(dir, name)?)).map_err(access(name))?;
        Ok(Lpm { name, map })
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

impl<K: Pod + Ord, V: Pod + PartialEq> Table for Lpm<K, V> {
    type Key = (u32, K);
    type Value = V;
    fn read(&self) -> Result<BTreeMap<(u32, K), V>, MapsError> {
        Lpm::read(self)
    }
    fn put_many(&mut self, entries: &[((u32, K), V)]) -> Result<(), MapsError> {
        Lpm::put_many(self, entries)
    }
    fn del(&mut self, k: &(u32, K)) -> Result<(), MapsError> {
        Lpm::del(self, k)
    }
}

impl<V: Pod> Pinned for Array<MapData, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        Array::try_from(Map::Array(open_data(dir, name)?)).map_err(access(name))
    }
}

impl<V: Pod> Pinned for PerCpuArray<MapData, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        PerCpuArray::try_from(Map::PerCpuArray(open_data(dir, name)?)).map_err(access(name))
    }
}

/// The event ring's pin. The ring is opened only by its one reader (`dvrctl monitor`,
/// [`Ring::reader`]): opening checks the pin is a ring buffer.
pub struct Ring {
    name: &'static str,
    dir: PathBuf,
}

impl Pinned for Ring {
    fn open(dir: &Path, name: &'static str) -> Result<Self, MapsError> {
        RingBuf::try_from(Map::RingBuf(open_data(dir, name)?)).map_err(access(name))?;
        Ok(Ring {
            name,
            dir: dir.to_path_buf(),
        })
    }
}

impl Ring {
    /// A reader of the ring (one at a time).
    pub fn reader(&self) -> Result<RingBuf<MapData>, MapsError> {
        RingBuf::try_from(Map::RingBuf(open_data(&self.dir, self.name)?)).map_err(access(self.name))
    }
}
