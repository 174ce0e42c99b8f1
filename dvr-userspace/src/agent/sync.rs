//! One reconcile of the maps with compiled entries, diffing against what the previous
//! successful apply wrote, with a full read of the maps on start, after a failed apply and
//! every [`FULL_READ_INTERVAL`] (so an entry changed or removed by hand is repaired).
use std::time::Instant;

use dvr_common::config::HostConfig;

use super::options::FULL_READ_INTERVAL;
use crate::{
    compile::MapEntries,
    maps::{HostMaps, MapsError},
    reconcile::{self, Applied, Written},
};

pub struct Reconciler {
    /// What the last successful apply wrote (`None`: read the maps back next time).
    written: Option<Written>,
    last_full_read: Instant,
}

impl Reconciler {
    pub fn new() -> Self {
        Reconciler {
            written: None,
            last_full_read: Instant::now(),
        }
    }

    /// Bring the maps to `entries` and the host config to `cfg`; returns what changed and
    /// how long it took (seconds).
    pub fn apply(
        &mut self,
        maps: &mut HostMaps,
        cfg: &HostConfig,
        entries: &MapEntries,
    ) -> Result<(Applied, f64), MapsError> {
        let started = Instant::now();
        if self.last_full_read.elapsed() >= FULL_READ_INTERVAL {
            self.written = None;
        }
        let known = self.written.take();
        let applied = reconcile::apply_known(maps, cfg, entries, known.as_ref())?;
        if known.is_none() {
            self.last_full_read = Instant::now();
        }
        self.written = Some(Written {
            config: *cfg,
            entries: entries.clone(),
        });
        Ok((applied, started.elapsed().as_secs_f64()))
    }
}
