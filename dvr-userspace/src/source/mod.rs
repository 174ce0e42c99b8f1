//! Where router state comes from: a watched JSON file, or etcd for a cluster.
//!
//! [`SourceSpec`] names the source; [`Source`] is its live side in the agent: it hands out
//! a new state document when the source changed, wakes the agent on news, and (etcd) carries
//! the HA election's view.
//!
//! etcd key layout (one key per resource, so one FIP change is one small write):
//! - `/dvr/v1/<kind>/<id>`: one resource as JSON, in its Neutron API shape; `<kind>` is one
//!   of `networks`, `subnets`, `ports`, `routers`, `floatingips`, `hosts` (hosts are keyed by
//!   `name`);
//! - `/dvr/v1/alive/<host>`: written by each agent under a lease (TTL [`etcd::LEASE_TTL`]
//!   seconds), so it disappears when the agent stops renewing it.
//!
//! Files: `kv.rs` (the key layout, document <-> keys), `register.rs` (hosts that write their
//! own entry), `file.rs` (the watched file),
//! `etcd.rs` (snapshot + watch, `dvrctl`'s etcd requests), `ha.rs` (the HA election, run in
//! the etcd session), `error.rs`.
mod error;
pub mod etcd;
pub mod file;
pub mod ha;
mod kv;
pub mod register;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

pub use error::{SourceError, StateError};
use etcd::EtcdSource;
use file::FileSource;
pub use kv::{ALIVE, KINDS, PREFIX, StateUpdate, from_kvs, key, to_kvs};

use crate::compile::HaRuntime;

/// Where the agent's state comes from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A JSON file, watched.
    File(PathBuf),
    /// An etcd endpoint (`http://host:port`), snapshot + watch; with a registration, the
    /// agent writes its host entry itself ([`register`]).
    Etcd(String, Option<register::Registration>),
}

impl SourceSpec {
    /// `file <path>` or `etcd <url>`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("file {}", p.display()),
            Self::Etcd(u, _) => format!("etcd {u}"),
        }
    }
}

/// The live side of a source.
pub enum Source {
    File(FileSource),
    Etcd(EtcdSource),
}

impl Source {
    /// Open the source and return it with the first state. For etcd this waits
    /// for the first snapshot (the pinned datapath keeps forwarding meanwhile), or until
    /// `stop` is set.
    pub fn open(
        spec: &SourceSpec,
        host: &str,
        ha: &ha::Shared,
        stop: &AtomicBool,
    ) -> Result<(Self, Option<StateUpdate>), StateError> {
        let err = |msg: String| StateError {
            source_desc: spec.describe(),
            msg,
        };
        match spec {
            SourceSpec::File(path) => {
                let (src, text) = FileSource::open(path).map_err(|e| err(e.to_string()))?;
                Ok((Self::File(src), Some(StateUpdate::Document(text))))
            }
            SourceSpec::Etcd(url, reg) => {
                let started = EtcdSource::start(url, host, ha, reg.clone());
                let mut src = Self::Etcd(started.map_err(|e| err(e.to_string()))?);
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return Err(err("stopped before the first snapshot".into()));
                    }
                    if let Some(update) = src.poll(Some(Duration::from_millis(200))) {
                        return Ok((src, Some(update)));
                    }
                }
            }
        }
    }

    /// Wait up to `timeout` for news: a state file write or an etcd message wakes the
    /// agent at once.
    pub fn wait(&mut self, timeout: Duration) {
        match self {
            Self::File(f) => f.wait(timeout),
            Self::Etcd(e) => e.wait(timeout),
        }
    }

    /// The HA election's view to compile with: `None` with a state file (HA routers are
    /// then served statically by their most preferred candidate).
    pub fn ha_runtime(&self) -> Option<HaRuntime> {
        match self {
            Self::File(_) => None,
            Self::Etcd(e) => Some(e.ha_runtime()),
        }
    }

    /// True once per change of the election's view.
    pub fn take_ha_change(&mut self) -> bool {
        match self {
            Self::File(_) => false,
            Self::Etcd(e) => e.take_ha_change(),
        }
    }

    /// The ports of this host that are up (tap attached, entries written), by id: their
    /// status keys in etcd follow (nothing with a state file).
    pub fn report_ports(&self, up: std::collections::BTreeSet<String>) {
        if let Self::Etcd(e) = self {
            e.report_ports(up);
        }
    }

    /// What the agent shares with the HA election (etcd only).
    pub fn ha_shared(&self) -> Option<&ha::Shared> {
        match self {
            Self::File(_) => None,
            Self::Etcd(e) => Some(e.ha_shared()),
        }
    }

    /// What changed since the last call, if anything. `wait` blocks for etcd news up to
    /// that long.
    pub fn poll(&mut self, wait: Option<Duration>) -> Option<StateUpdate> {
        match self {
            Self::File(f) => f.poll().map(StateUpdate::Document),
            Self::Etcd(e) => e.poll(wait),
        }
    }
}
