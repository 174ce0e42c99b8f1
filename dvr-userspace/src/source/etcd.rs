//! etcd as the state store of a cluster.
//!
//! An agent loads a consistent snapshot (range reads of [`PAGE_KEYS`] keys each, all at the
//! revision of the first, so a cloud of any size fits the client's message limit), then
//! follows a watch from the next revision and hands every batch of changes to its control
//! loop. When
//! etcd goes away the agent keeps forwarding with what it has; when it comes back (or the
//! watch's revision was compacted) it resyncs from a fresh snapshot. Each agent keeps a key
//! `alive/<host>` under a lease, so `dvrctl hosts` sees which agents are alive.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::mpsc,
    time::Duration,
};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tracing::{info, warn};

use super::error::SourceError;
use super::ha::{self, Election};
use super::kv::{ALIVE, KINDS, PREFIX, StateUpdate};
use super::register::{self, Registration};
use crate::compile::HaRuntime;

/// Lease TTL of an agent's `alive/` key, seconds.
pub const LEASE_TTL: i64 = 5;
const KEEPALIVE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// etcd's default limit on operations in one transaction.
const TXN_OPS: usize = 128;
/// Keys per page of a snapshot read. A resource's value is a few hundred bytes to a few
/// KiB (a security group with its rules the largest), so a page stays far below
/// [`MAX_MESSAGE`].
const PAGE_KEYS: i64 = 1000;
/// The largest answer the client decodes (gRPC's default is 4 MiB, which one unpaged read
/// of a 50,000-port cloud exceeds). A page larger than this is reported as such.
const MAX_MESSAGE: usize = 64 << 20;

/// What the watcher thread tells the agent.
#[derive(Debug)]
pub enum Update {
    /// Everything under the prefix at `revision` (alive keys left out).
    Snapshot {
        kvs: BTreeMap<String, String>,
        revision: i64,
    },
    /// Changes since the last message: value `None` = deleted.
    Changes {
        changes: Vec<(String, Option<String>)>,
        revision: i64,
    },
    /// The connection is gone; the agent keeps its state and the watcher retries.
    Lost(String),
    /// The HA election's view changed (docs/HA.md).
    Ha(HaRuntime),
}

fn err(url: &str) -> impl Fn(etcd_client::Error) -> SourceError + '_ {
    move |e| SourceError::Etcd {
        url: url.into(),
        msg: e.to_string(),
    }
}

async fn connect(url: &str) -> Result<Client, SourceError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    Client::connect([url], Some(opts)).await.map_err(err(url))
}

/// `/dvr/v1/<kind>/<id>` with a resource kind: part of the state (unlike liveness and
/// election keys).
fn is_state_key(k: &str) -> bool {
    k.strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(kind, _)| KINDS.contains(&kind))
}

/// The state keys and values under the prefix, and the revision they were read at.
async fn snapshot(
    client: &mut Client,
    url: &str,
) -> Result<(BTreeMap<String, String>, i64), SourceError> {
    let (kvs, _, revision) = snapshot_all(client, url).await?;
    Ok((kvs, revision))
}

type Kvs = BTreeMap<String, String>;

/// State keys, election keys (liveness, HA holders, beats, requests) and the revision.
async fn snapshot_all(
    client: &mut Client,
    url: &str,
) -> Result<(Kvs, Vec<(String, String, i64)>, i64), SourceError> {
    let mut kvs = BTreeMap::new();
    let mut election = Vec::new();
    let revision = read_paged(client, url, PREFIX, |kv| {
        let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) else {
            return;
        };
        if is_state_key(k) {
            kvs.insert(k.to_string(), v.to_string());
        } else if ha::is_election_key(k) {
            election.push((k.to_string(), v.to_string(), kv.mod_revision()));
        }
    })
    .await?;
    Ok((kvs, election, revision))
}

/// The first key after every key starting with `prefix` (etcd's range end of a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

/// Every key under `prefix`, handed to `each` in key order, read in pages of [`PAGE_KEYS`]
/// at one revision (the first page's): a consistent snapshot of any size. Returns that
/// revision. A page over [`MAX_MESSAGE`] or a revision compacted between pages ends the
/// read with an error saying so (the session then starts over).
async fn read_paged(
    client: &mut Client,
    url: &str,
    prefix: &str,
    mut each: impl FnMut(&etcd_client::KeyValue),
) -> Result<i64, SourceError> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut pages = 0u32;
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE_KEYS);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let mut resp = kv.get(from.clone(), Some(opts)).await.map_err(|e| {
            let msg = e.to_string();
            let what = if msg.contains("message length too large") {
                format!(
                    "snapshot page {} ({PAGE_KEYS} keys from {}) exceeds the client's \
                     {MAX_MESSAGE}-byte message limit: {msg}",
                    pages + 1,
                    String::from_utf8_lossy(&from)
                )
            } else if msg.contains("compacted") {
                format!("revision {revision} compacted during a paged snapshot: {msg}")
            } else {
                format!("snapshot page {}: {msg}", pages + 1)
            };
            SourceError::Etcd {
                url: url.into(),
                msg: what,
            }
        })?;
        pages += 1;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        for kv in &kvs {
            each(kv);
        }
        match kvs.last() {
            Some(last) if more => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    if pages > 1 {
        tracing::debug!(pages, revision, "paged snapshot read");
    }
    Ok(revision)
}

/// Who a session is for.
#[derive(Clone, Copy)]
struct Me<'a> {
    url: &'a str,
    host: &'a str,
    reg: Option<&'a Registration>,
}

/// Bring the host's port status keys to `want` (under `lease`), `written` being what this
/// session wrote so far.
async fn sync_status(
    client: &mut Client,
    me: Me<'_>,
    lease: i64,
    written: &mut BTreeSet<String>,
    want: &BTreeSet<String>,
) -> Result<(), SourceError> {
    let up: Vec<String> = want.difference(written).cloned().collect();
    for port in up {
        let (k, v) = (
            register::status_key(me.host, &port),
            register::status_value(me.host, &port),
        );
        client
            .put(k, v, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(err(me.url))?;
        written.insert(port);
    }
    let down: Vec<String> = written.difference(want).cloned().collect();
    for port in down {
        client
            .delete(register::status_key(me.host, &port), None)
            .await
            .map_err(err(me.url))?;
        written.remove(&port);
    }
    Ok(())
}

/// One connected session: register, snapshot, follow. Returns when the connection or the
/// watch fails; the caller reconnects.
async fn session(
    me: Me<'_>,
    tx: &mpsc::Sender<Update>,
    election: &mut Election,
    shared: &ha::Shared,
    mut status: tokio::sync::watch::Receiver<BTreeSet<String>>,
) -> Result<(), SourceError> {
    let Me { url, host, reg } = me;
    let mut client = connect(url).await?;
    let lease = client
        .lease_grant(LEASE_TTL, None)
        .await
        .map_err(err(url))?
        .id();
    let alive = serde_json::json!({ "host": host, "pid": std::process::id() }).to_string();
    client
        .put(
            format!("{ALIVE}{host}"),
            alive,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(err(url))?;
    let (mut keeper, mut keep_stream) = client.lease_keep_alive(lease).await.map_err(err(url))?;
    // Registered before the snapshot, so the snapshot holds this host.
    let my_key = register::host_key(host);
    let mut mine = match reg {
        Some(r) => Some(register::register(&mut client, url, host, r).await?),
        None => None,
    };
    let (kvs, ekvs, revision) = snapshot_all(&mut client, url).await?;
    election.reset(&ekvs, lease);
    if tx.send(Update::Snapshot { kvs, revision }).is_err() {
        return Ok(());
    }
    if let Some(rt) = election.runtime_if_changed()
        && tx.send(Update::Ha(rt)).is_err()
    {
        return Ok(());
    }
    // Port status under this session's lease (the last session's went with its lease).
    let mut written = BTreeSet::new();
    let want = status.borrow_and_update().clone();
    sync_status(&mut client, me, lease, &mut written, &want).await?;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = client.watch(PREFIX, Some(opts)).await.map_err(err(url))?;
    let mut tick = tokio::time::interval(KEEPALIVE);
    let mut ha_tick = tokio::time::interval(ha::TICK);
    ha_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = watch.message() => {
                let Some(resp) = msg.map_err(err(url))? else {
                    return Err(SourceError::Etcd { url: url.into(), msg: "watch closed".into() });
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    // Our revision was compacted away: start over from a fresh snapshot.
                    return Err(SourceError::Etcd {
                        url: url.into(),
                        msg: format!("watch cancelled (compacted to {}): resyncing", resp.compact_revision()),
                    });
                }
                let mut changes = Vec::new();
                let mut rev = 0;
                let now = std::time::Instant::now();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(k) = kv.key_str() else { continue };
                    rev = rev.max(kv.mod_revision());
                    let v = match ev.event_type() {
                        EventType::Put => kv.value_str().ok().map(str::to_string),
                        EventType::Delete => None,
                    };
                    if ha::is_election_key(k) {
                        election.observe(k, v.as_deref(), kv.mod_revision(), now);
                        continue;
                    }
                    if !is_state_key(k) {
                        continue;
                    }
                    // This host's own entry deleted or changed by someone else: written again.
                    if let (Some(r), Some(entry)) = (reg, &mine)
                        && k == my_key
                        && v.as_deref() != Some(entry.as_str())
                    {
                        warn!(key = k, "this host's entry was deleted or changed: registering it again");
                        mine = Some(register::register(&mut client, url, host, r).await?);
                    }
                    changes.push((k.to_string(), v));
                }
                if !changes.is_empty() && tx.send(Update::Changes { changes, revision: rev }).is_err() {
                    return Ok(());
                }
                if let Some(rt) = election.runtime_if_changed() && tx.send(Update::Ha(rt)).is_err() {
                    return Ok(());
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(()); // the agent is gone
                }
                let want = status.borrow_and_update().clone();
                sync_status(&mut client, me, lease, &mut written, &want).await?;
            }
            _ = ha_tick.tick() => {
                election.step(&mut client, lease, shared).await;
                if let Some(rt) = election.runtime_if_changed() && tx.send(Update::Ha(rt)).is_err() {
                    return Ok(());
                }
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(err(url))?;
            }
            ka = keep_stream.message() => {
                match ka.map_err(err(url))? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(SourceError::Etcd { url: url.into(), msg: "lease expired".into() }),
                }
            }
        }
    }
}

/// Start the watcher thread for `host`. It runs until the receiver is dropped.
pub fn spawn(
    url: String,
    host: String,
    shared: ha::Shared,
    register: Option<Registration>,
    status: tokio::sync::watch::Receiver<BTreeSet<String>>,
) -> Result<mpsc::Receiver<Update>, SourceError> {
    let (tx, rx) = mpsc::channel();
    let rt = runtime(&url)?;
    std::thread::Builder::new()
        .name("etcd-watch".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut backoff = Duration::from_millis(100);
                let mut election = Election::new(&host);
                loop {
                    let me = Me {
                        url: &url,
                        host: &host,
                        reg: register.as_ref(),
                    };
                    let result = session(me, &tx, &mut election, &shared, status.clone()).await;
                    let msg = match result {
                        Ok(()) => return, // the agent is gone
                        Err(e) => e.to_string(),
                    };
                    if tx.send(Update::Lost(msg)).is_err() {
                        return;
                    }
                    // Cut off from etcd: no role can be proven any more (the fence already
                    // stops the datapath); the agent drops the role's entries.
                    if let Some(rt) = election.disconnected()
                        && tx.send(Update::Ha(rt)).is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            });
        })
        .map_err(|e| SourceError::Etcd {
            url: String::new(),
            msg: format!("thread: {e}"),
        })?;
    Ok(rx)
}

/// The live side of etcd as the agent's source: the watcher's messages, the state's keys
/// as last seen, and the HA election's view.
pub struct EtcdSource {
    rx: mpsc::Receiver<Update>,
    /// The ports up on this host, for their status keys.
    status: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// A message received while waiting, not handled yet.
    stash: Option<Update>,
    lost: bool,
    /// What the agent shares with the HA election.
    ha: ha::Shared,
    /// The election's latest view, and whether the agent has applied it.
    ha_rt: HaRuntime,
    ha_changed: bool,
}

impl EtcdSource {
    /// Start the watcher thread ([`spawn`]); the state arrives through [`EtcdSource::poll`].
    pub fn start(
        url: &str,
        host: &str,
        ha: &ha::Shared,
        register: Option<Registration>,
    ) -> Result<Self, SourceError> {
        let (status, status_rx) = tokio::sync::watch::channel(BTreeSet::new());
        let rx = spawn(
            url.to_string(),
            host.into(),
            ha.clone(),
            register,
            status_rx,
        )?;
        Ok(Self {
            rx,
            status,
            stash: None,
            lost: false,
            ha: ha.clone(),
            ha_rt: HaRuntime::default(),
            ha_changed: false,
        })
    }

    /// Wait up to `timeout` for a message from the watcher.
    pub fn wait(&mut self, timeout: Duration) {
        if self.stash.is_none() {
            self.stash = self.rx.recv_timeout(timeout).ok();
        } else {
            std::thread::sleep(timeout);
        }
    }

    /// The ports whose taps are attached and entries written, for their status keys
    /// (written by the watcher thread, only when the set changed).
    pub fn report_ports(&self, up: BTreeSet<String>) {
        self.status.send_if_modified(|now| {
            let changed = *now != up;
            *now = up;
            changed
        });
    }

    /// The HA election's latest view.
    pub fn ha_runtime(&self) -> HaRuntime {
        self.ha_rt.clone()
    }

    /// True once per change of the election's view.
    pub fn take_ha_change(&mut self) -> bool {
        std::mem::take(&mut self.ha_changed)
    }

    /// What the agent shares with the HA election.
    pub fn ha_shared(&self) -> &ha::Shared {
        &self.ha
    }

    /// What changed since the last call: a snapshot (with the changes after it applied) or
    /// the changes in order, keys without [`PREFIX`]; `wait` blocks for news up to that long.
    pub fn poll(&mut self, wait: Option<Duration>) -> Option<StateUpdate> {
        let mut snapshot: Option<BTreeMap<String, String>> = None;
        let mut changes: Vec<(String, Option<String>)> = Vec::new();
        let mut first = self
            .stash
            .take()
            .or_else(|| wait.and_then(|w| self.rx.recv_timeout(w).ok()));
        loop {
            let msg = match first.take() {
                Some(m) => m,
                None => match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            match msg {
                Update::Snapshot { kvs, revision } => {
                    if self.lost {
                        info!(revision, "etcd back: resynced from a fresh snapshot");
                    }
                    self.lost = false;
                    let strip = |k: String| k.strip_prefix(PREFIX).map(str::to_string);
                    snapshot = Some(
                        kvs.into_iter()
                            .filter_map(|(k, v)| Some((strip(k)?, v)))
                            .collect(),
                    );
                    changes.clear();
                }
                Update::Changes {
                    changes: batch,
                    revision,
                } => {
                    for (k, v) in batch {
                        let Some(k) = k.strip_prefix(PREFIX).map(str::to_string) else {
                            continue;
                        };
                        match &mut snapshot {
                            Some(snap) => match v {
                                Some(v) => snap.insert(k, v),
                                None => snap.remove(&k),
                            },
                            None => {
                                changes.push((k, v));
                                None
                            }
                        };
                    }
                    tracing::debug!(revision, "etcd changes");
                }
                Update::Ha(rt) => {
                    self.ha_rt = rt;
                    self.ha_changed = true;
                }
                Update::Lost(msg) => {
                    if !self.lost {
                        warn!(error = %msg, "etcd unreachable, or a read or watch failed (the error says which): forwarding with the last state, retrying");
                    }
                    self.lost = true;
                }
            }
        }
        match snapshot {
            Some(s) => Some(StateUpdate::Snapshot(s)),
            None if changes.is_empty() => None,
            None => Some(StateUpdate::Changes(changes)),
        }
    }
}

/// What `dvrctl apply` changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub put: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

/// A single-threaded runtime for the etcd client (`url` for its error).
fn runtime(url: &str) -> Result<tokio::runtime::Runtime, SourceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Etcd {
            url: url.into(),
            msg: format!("runtime: {e}"),
        })
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, SourceError> {
    Ok(runtime("")?.block_on(f))
}

/// Write a state document to etcd as one key per resource: only the resources that changed
/// are written and only the ones gone are deleted, in transactions of at most 128 ops.
pub fn apply(url: &str, desired: &BTreeMap<String, String>) -> Result<Applied, SourceError> {
    block_on(async {
        let mut client = connect(url).await?;
        let (actual, _) = snapshot(&mut client, url).await?;
        let (puts, dels) = crate::reconcile::diff(&actual, desired);
        let mut ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        ops.extend(dels.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        for chunk in ops.chunks(TXN_OPS) {
            client
                .txn(Txn::new().and_then(chunk.to_vec()))
                .await
                .map_err(err(url))?;
        }
        Ok(Applied {
            put: puts.len(),
            deleted: dels.len(),
            unchanged: desired.len() - puts.len(),
        })
    })?
}

/// One connection writing single keys, each write acknowledged before `put` returns (the
/// scale benchmark times from there to the datapath).
pub struct Writer {
    rt: tokio::runtime::Runtime,
    client: Client,
    url: String,
}

impl Writer {
    pub fn connect(url: &str) -> Result<Self, SourceError> {
        let rt = runtime(url)?;
        let client = rt.block_on(connect(url))?;
        Ok(Writer {
            rt,
            client,
            url: url.into(),
        })
    }

    /// Put `value` at `key` (a full key, e.g. `/dvr/v1/ports/p1`).
    pub fn put(&mut self, key: &str, value: &str) -> Result<(), SourceError> {
        let url = self.url.clone();
        self.rt
            .block_on(self.client.put(key, value, None))
            .map_err(err(&url))?;
        Ok(())
    }

    /// Compact the store's history up to its current revision (what an operator's
    /// periodic compaction does); returns that revision.
    pub fn compact(&mut self) -> Result<i64, SourceError> {
        let url = self.url.clone();
        let resp = self
            .rt
            .block_on(
                self.client
                    .get(PREFIX, Some(GetOptions::new().with_count_only())),
            )
            .map_err(err(&url))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        self.rt
            .block_on(self.client.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            ))
            .map_err(err(&url))?;
        Ok(revision)
    }

    /// Delete `key`.
    pub fn delete(&mut self, key: &str) -> Result<(), SourceError> {
        let url = self.url.clone();
        self.rt
            .block_on(self.client.delete(key, None))
            .map_err(err(&url))?;
        Ok(())
    }
}

/// Agents registered alive: host -> seconds left on its lease.
pub fn alive(url: &str) -> Result<BTreeMap<String, i64>, SourceError> {
    block_on(async {
        let mut client = connect(url).await?;
        let resp = client
            .get(ALIVE, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(err(url))?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let Ok(k) = kv.key_str() else { continue };
            let host = k.trim_start_matches(ALIVE).to_string();
            let ttl = match client.lease_time_to_live(kv.lease(), None).await {
                Ok(r) => r.ttl(),
                Err(_) => -1,
            };
            out.insert(host, ttl);
        }
        Ok(out)
    })?
}

/// The state currently stored (for `dvrctl hosts` and inspection).
pub fn read_state(url: &str) -> Result<BTreeMap<String, String>, SourceError> {
    block_on(async {
        let mut client = connect(url).await?;
        Ok(snapshot(&mut client, url).await?.0)
    })?
}

/// The HA holders: router id -> (host, lease), from `ha/` keys.
pub fn ha_holders(url: &str) -> Result<BTreeMap<String, ha::HolderValue>, SourceError> {
    block_on(async {
        let mut client = connect(url).await?;
        let resp = client
            .get(ha::HA_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(err(url))?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) else {
                continue;
            };
            if let Ok(h) = serde_json::from_str::<ha::HolderValue>(v) {
                out.insert(k.trim_start_matches(ha::HA_PREFIX).to_string(), h);
            }
        }
        Ok(out)
    })?
}

/// Ask the holder of `router`'s role to hand it to `to` (`ha-request/<router>`).
pub fn request_failover(url: &str, router: &str, to: &str) -> Result<(), SourceError> {
    block_on(async {
        let mut client = connect(url).await?;
        let value = serde_json::to_string(&ha::RequestValue {
            to: to.into(),
            released: false,
        })?;
        client
            .put(format!("{}{router}", ha::REQUEST_PREFIX), value, None)
            .await
            .map_err(err(url))?;
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end("/dvr/v1/"), b"/dvr/v10".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        // A trailing 0xff byte carries into the one before.
        let s = String::from_utf8_lossy(&[b'a', 0xff]).into_owned();
        assert!(prefix_end(&s) > s.as_bytes().to_vec());
    }
}
