//! Where synced entries come from and go: the [`CtStore`] trait, and [`PinnedCt`], the
//! store of the pinned `DVR_CT` map. Writes stamp `created_ns` and `last_seen_ns` with the
//! receiver's clock, so its GC measures idleness from receipt.
use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    path::Path,
    sync::Arc,
};

use aya::maps::{HashMap as BpfHash, IterableMap, Map, MapData};
use dvr_common::{
    maps,
    nat::{CtEntry, CtKey},
};
use tracing::debug;

use crate::clock;

/// Where synced entries go / come from: the real pinned CT map in the agent, an in-memory
/// map in tests.
pub trait CtStore: Send + 'static {
    /// Every entry for which `select` is true.
    fn scan(
        &mut self,
        select: &dyn Fn(&CtKey, &CtEntry) -> bool,
    ) -> Result<Vec<(CtKey, CtEntry)>, String>;
    /// Insert or replace these entries.
    fn write(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<(), String>;
}

impl<S: CtStore + ?Sized> CtStore for Box<S> {
    fn scan(
        &mut self,
        select: &dyn Fn(&CtKey, &CtEntry) -> bool,
    ) -> Result<Vec<(CtKey, CtEntry)>, String> {
        (**self).scan(select)
    }
    fn write(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<(), String> {
        (**self).write(entries)
    }
}

/// Which entries to replicate.
pub type Select = Arc<dyn Fn(&CtKey, &CtEntry) -> bool + Send + Sync>;

/// The pinned `DVR_CT` map of a host, through a handle of its own.
pub struct PinnedCt {
    map: BpfHash<MapData, CtKey, CtEntry>,
    /// BPF_MAP_LOOKUP_BATCH works on this kernel (else one lookup per entry).
    batch: bool,
}

impl PinnedCt {
    /// Open `<pin_dir>/DVR_CT` (`pin_dir` is the host's pin directory, `<bpffs>/<host>`).
    pub fn open(pin_dir: &Path) -> Result<Self, String> {
        let path = pin_dir.join(maps::DVR_CT);
        let data = MapData::from_pin(&path).map_err(|e| {
            format!(
                "map {}: cannot open pin {}: {e}",
                maps::DVR_CT,
                path.display()
            )
        })?;
        let map = Map::from_map_data(data)
            .and_then(BpfHash::try_from)
            .map_err(|e| format!("map {}: {e}", maps::DVR_CT))?;
        Ok(Self { map, batch: true })
    }

    /// Whether scans use BPF_MAP_LOOKUP_BATCH (a kernel that refuses it turns this off for
    /// good, and scans go entry by entry).
    pub fn batch(&self) -> bool {
        self.batch
    }

    /// Scan through BPF_MAP_LOOKUP_BATCH (`true`, the default) or entry by entry (`false`).
    pub fn set_batch(&mut self, on: bool) {
        self.batch = on;
    }

    fn fd(&self) -> RawFd {
        self.map.map().fd().as_fd().as_raw_fd()
    }

    /// Scan through BPF_MAP_LOOKUP_BATCH; `Ok(false)` (nothing appended) when the kernel
    /// does not support it.
    fn scan_batch(
        &self,
        select: &dyn Fn(&CtKey, &CtEntry) -> bool,
        out: &mut Vec<(CtKey, CtEntry)>,
    ) -> Result<bool, String> {
        let r = crate::maps::batch::lookup(self.fd(), |k: &CtKey, e: &CtEntry| {
            if select(k, e) {
                out.push((*k, *e));
            }
        });
        match r {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => Err(format!("map {}: BPF_MAP_LOOKUP_BATCH: {e}", maps::DVR_CT)),
        }
    }
}

impl CtStore for PinnedCt {
    fn scan(
        &mut self,
        select: &dyn Fn(&CtKey, &CtEntry) -> bool,
    ) -> Result<Vec<(CtKey, CtEntry)>, String> {
        let mut out = Vec::new();
        if self.batch {
            if self.scan_batch(select, &mut out)? {
                return Ok(out);
            }
            debug!("BPF_MAP_LOOKUP_BATCH unsupported: conntrack sync scans entry by entry");
            self.batch = false;
        }
        for r in self.map.iter() {
            let (k, e) = r.map_err(|e| format!("map {}: {e}", maps::DVR_CT))?;
            if select(&k, &e) {
                out.push((k, e));
            }
        }
        Ok(out)
    }

    fn write(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<(), String> {
        let now = clock::conntrack_now_ns();
        for (k, e) in entries {
            let e = CtEntry {
                created_ns: now,
                last_seen_ns: now,
                ..*e
            };
            self.map
                .insert(k, e, 0)
                .map_err(|e| format!("map {}: {e}", maps::DVR_CT))?;
        }
        Ok(())
    }
}
