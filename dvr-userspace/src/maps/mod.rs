//! Typed handles on a host's pinned maps: the only place map names are looked up.
//!
//! The agent loads the object, pins every map under `<bpffs>/<host>/<NAME>`, then opens its
//! handles through those pins exactly as `dvrctl` does, so both see the same maps. The
//! handles ([`HostMaps`]), the pin names ([`NAMES`]) and the check of pins a build cannot
//! adopt ([`incompatible_pins`]) are all derived from the one map table in `dvr-common`
//! (`dvr_common::map_table!`).
pub mod batch;
mod handle;

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use dvr_common::{config::HostConfig, maps, stats};

pub use handle::{Hash, Lpm, MapsError, Pinned, Ring, Table};
use handle::{access, open_data};

/// Default bpffs directory holding one sub-directory per host.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/dvr";

/// `<root>/<host>`.
pub fn host_dir(root: &Path, host: &str) -> PathBuf {
    root.join(host)
}

/// Every map of the datapath, in table order.
pub const NAMES: &[&str] = maps::NAMES;

/// The handle type of a map kind of the table.
macro_rules! handle {
    (Array, $k:ty, $v:ty) => { Array<MapData, $v> };
    (PerCpuArray, $k:ty, $v:ty) => { PerCpuArray<MapData, $v> };
    (Hash, $k:ty, $v:ty) => { Hash<$k, $v> };
    (LruHash, $k:ty, $v:ty) => { Hash<$k, $v> };
    (Lpm, $k:ty, $v:ty) => { Lpm<$k, $v> };
    (RingBuf, $k:ty, $v:ty) => { Ring };
}

macro_rules! host_maps {
    ($($owner:ident {
        $($(#[$doc:meta])* $field:ident: $name:ident, $kind:ident<$k:ty, $v:ty>, $cap:expr;)*
    })*) => {
        /// All maps of one host, opened through their pins: one handle per row of the map
        /// table, named by its field.
        pub struct HostMaps {
            pub dir: PathBuf,
            $($($(#[$doc])* pub $field: handle!($kind, $k, $v),)*)*
        }

        impl HostMaps {
            /// Open every map pinned in `dir` (`<bpffs root>/<host>`).
            pub fn open(dir: &Path) -> Result<Self, MapsError> {
                Ok(Self {
                    dir: dir.to_path_buf(),
                    $($($field: Pinned::open(dir, maps::$name)?,)*)*
                })
            }
        }

        /// For every map of the table: does the pin in `dir` (when there is one) fit this
        /// build? Its kind, key and value sizes, and its capacity (`ct_max` for conntrack,
        /// which is set at load time) must match.
        fn adoption(dir: &Path, ct_max: u32) -> Vec<(&'static str, Result<(), String>)> {
            vec![$($((
                maps::$name,
                fits::<handle!($kind, $k, $v)>(dir, maps::$name, capacity(maps::$name, $cap, ct_max)),
            ),)*)*]
        }
    };
}

dvr_common::map_table!(host_maps);

/// The capacity this build gives map `name` (`table` in the map table): conntrack's is an
/// option of the agent (`--ct-max`, [`crate::attach::LoadOptions`]).
pub fn capacity(name: &str, table: u32, ct_max: u32) -> u32 {
    if name == maps::DVR_CT { ct_max } else { table }
}

fn fits<H: Pinned>(dir: &Path, name: &'static str, want: u32) -> Result<(), String> {
    H::open(dir, name).map_err(|e| e.to_string())?;
    let info = open_data(dir, name)
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

/// Pins in `dir` that this build cannot adopt (a different kind, key or value layout, or
/// capacity). They are recreated empty; everything else keeps its contents across a restart.
pub fn incompatible_pins(dir: &Path, ct_max: u32) -> Vec<(&'static str, String)> {
    adoption(dir, ct_max)
        .into_iter()
        .filter(|(name, _)| dir.join(name).exists())
        .filter_map(|(name, r)| r.err().map(|e| (name, e)))
        .collect()
}

impl HostMaps {
    pub fn read_config(&self) -> Result<HostConfig, MapsError> {
        self.config
            .get(&0, 0)
            .map_err(access(maps::DVR_HOST_CONFIG))
    }

    pub fn write_config(&mut self, cfg: &HostConfig) -> Result<(), MapsError> {
        self.config
            .set(0, cfg, 0)
            .map_err(access(maps::DVR_HOST_CONFIG))
    }

    /// Per-stat packet counts summed over CPUs, in `Stat::ALL` order.
    pub fn read_stats(&self) -> Result<Vec<(stats::Stat, u64)>, MapsError> {
        stats::Stat::ALL
            .iter()
            .map(|s| {
                let v = self
                    .stats
                    .get(&(*s as u32), 0)
                    .map_err(access(maps::DVR_STATS))?;
                Ok((*s, v.iter().sum()))
            })
            .collect()
    }
}

/// The drop-event ring of the host whose pins are in `dir` (one reader at a time).
pub fn open_events(dir: &Path) -> Result<RingBuf<MapData>, MapsError> {
    Ring::open(dir, maps::DVR_EVENTS)?.reader()
}
