//! Counters of both ends (what [`Replicator::stats`](super::Replicator::stats) and
//! [`Listener::stats`](super::Listener::stats) report), and the two helpers every ctsync
//! thread uses on shared state.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

/// Lock `m`, also after another thread panicked holding it (the counters and registries
/// stay usable).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Count `n` more on `c`.
pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// State of one peer of a [`Replicator`](super::Replicator).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub connected: bool,
    /// Entries the rate limit left for later rounds after the last round.
    pub pending: u64,
    /// Rounds (scans processed) on this peer's connections.
    pub rounds: u64,
}

/// Counters of a [`Replicator`](super::Replicator) since it was spawned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Scans of the store.
    pub scans: u64,
    pub entries_sent: u64,
    /// Every byte written, frame headers included.
    pub bytes_sent: u64,
    /// RECORDS frames.
    pub batches_sent: u64,
    /// Sync marks acknowledged (keepalive marks not counted).
    pub marks_acked: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections established to a peer after an earlier one to it broke.
    pub reconnects: u64,
    /// Connection failures and scan errors.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Peers that have a sender thread (those of
    /// [`Replicator::set`](super::Replicator::set), and those of a
    /// [`Replicator::sync_to`](super::Replicator::sync_to) in progress).
    pub peers: BTreeMap<SocketAddr, PeerStats>,
}

/// The live counters behind [`Stats`], shared by the scanner and the peer threads.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) scans: AtomicU64,
    pub(super) entries: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) marks_acked: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) reconnects: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    pub(super) peers: Mutex<BTreeMap<SocketAddr, PeerStats>>,
}

impl Counters {
    pub(super) fn error(&self, msg: String) {
        add(&self.errors, 1);
        *lock(&self.last_error) = Some(msg);
    }
    pub(super) fn peer(&self, peer: SocketAddr, f: impl FnOnce(&mut PeerStats)) {
        f(lock(&self.peers).entry(peer).or_default());
    }
    pub(super) fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            scans: g(&self.scans),
            entries_sent: g(&self.entries),
            bytes_sent: g(&self.bytes),
            batches_sent: g(&self.batches),
            marks_acked: g(&self.marks_acked),
            connects: g(&self.connects),
            reconnects: g(&self.reconnects),
            errors: g(&self.errors),
            last_error: lock(&self.last_error).clone(),
            peers: lock(&self.peers).clone(),
        }
    }
}

/// Counters of a [`Listener`](super::Listener) since it was spawned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    pub records_written: u64,
    pub batches_written: u64,
    pub marks_acked: u64,
    /// Connections closed for malformed input, refused peers, store errors.
    pub rejected: u64,
    pub last_error: Option<String>,
}

/// The live counters behind [`ListenerStats`], shared by the listener's threads.
#[derive(Default)]
pub(super) struct ListenerCounters {
    pub(super) connections: AtomicU64,
    pub(super) records: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) marks: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ListenerCounters {
    /// A connection closed or refused for `msg`.
    pub(super) fn reject(&self, msg: String) {
        add(&self.rejected, 1);
        *lock(&self.last_error) = Some(msg);
    }
    /// The counters, with `active` connections open now.
    pub(super) fn snapshot(&self, active: u64) -> ListenerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerStats {
            connections: g(&self.connections),
            active,
            records_written: g(&self.records),
            batches_written: g(&self.batches),
            marks_acked: g(&self.marks),
            rejected: g(&self.rejected),
            last_error: lock(&self.last_error).clone(),
        }
    }
}
