//! The host's interfaces as the agent needs them: which of the taps the state wants exist
//! (and with which ifindex), and the external interface. Link add/remove notifications
//! ([`LinkWatch`]) say when to look again; without them the interfaces are listed every
//! [`POLL`], and with them every [`RESCAN`] as a safety net.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::options::{POLL, RESCAN};
use crate::attach::{LinkWatch, interfaces};

/// Interface name -> ifindex.
pub type Ifaces = BTreeMap<String, u32>;

pub struct Links {
    watch: Option<LinkWatch>,
    last_list: Instant,
}

impl Links {
    /// Subscribe to link notifications in the calling thread's network namespace.
    pub fn open() -> Self {
        let watch = match LinkWatch::open() {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, every = ?POLL, "no link notifications; listing interfaces periodically");
                None
            }
        };
        if watch.is_some() {
            info!("watching link notifications");
        }
        Links {
            watch,
            last_list: Instant::now(),
        }
    }

    /// True when the interfaces should be listed again: a link appeared, went away or was
    /// renamed, or the fallback interval passed.
    pub fn due(&mut self) -> bool {
        let every: Duration = if self.watch.is_some() { RESCAN } else { POLL };
        let notified = self.watch.as_mut().is_some_and(LinkWatch::changed);
        notified || self.last_list.elapsed() >= every
    }

    /// Every interface now; `None` (logged) when the list cannot be read, which must never
    /// read as "every tap went away".
    pub fn list(&mut self) -> Option<Ifaces> {
        match interfaces() {
            Ok(l) => {
                self.last_list = Instant::now();
                Some(l)
            }
            Err(e) => {
                warn!(error = %e, "cannot list interfaces; keeping the taps as they are");
                None
            }
        }
    }
}

/// The taps among `wanted` that exist in `ifaces`, and the external interface if it exists.
pub fn present(
    ifaces: &Ifaces,
    wanted: &[String],
    ext_wanted: Option<&str>,
) -> (BTreeMap<String, u32>, Option<(String, u32)>) {
    let taps = wanted
        .iter()
        .filter_map(|t| ifaces.get(t).map(|i| (t.clone(), *i)))
        .collect();
    let ext = ext_wanted.and_then(|n| ifaces.get(n).map(|i| (n.to_string(), *i)));
    (taps, ext)
}
