//! Election of the host that serves an HA router's centralized role (docs/HA.md).
//!
//! Runs in the etcd thread, one step every [`TICK`], with the agent's lease:
//! - the holder of `ha/<router>` (created only if absent, under the holder's lease) is the
//!   only host that may serve the router; it puts `beat/<host>` every [`BEAT`] and, after
//!   each put etcd accepted, extends the datapath fence to `send time + FENCE`;
//! - a candidate that sees no beat of the holder for [`DETECT`] (plus its rank's delay)
//!   revokes the holder's lease, so none of the holder's later beats can succeed and its
//!   fence runs out at most `FENCE` after the revocation;
//! - a vacant role is taken, after `FENCE + MARGIN` (and the rank's delay), by the first
//!   candidate whose create-if-absent transaction succeeds;
//! - `ha-request/<router>` (`dvrctl failover`) makes the holder stream its conntrack to the
//!   requested host, wait for its acknowledgement, drop its fence and delete the key; the
//!   requested host, ranked first, takes the role.
//!
//! At most one key per router means at most one elected host; the fence makes the datapath
//! of a host that lost the election (or its etcd connection, or its agent) stop serving
//! before anyone else can be elected.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tracing::{info, warn};

use crate::compile::{HaRole, HaRuntime};

pub const HA_PREFIX: &str = "/dvr/v1/ha/";
pub const BEAT_PREFIX: &str = "/dvr/v1/beat/";
pub const REQUEST_PREFIX: &str = "/dvr/v1/ha-request/";

/// How often the election looks at its inputs.
pub const TICK: Duration = Duration::from_millis(25);
/// How often a holder proves it is alive.
pub const BEAT: Duration = Duration::from_millis(100);
/// How long the datapath serves after the last beat etcd accepted.
pub const FENCE: Duration = Duration::from_millis(350);
/// No beat for this long: the holder is considered gone.
pub const DETECT: Duration = Duration::from_millis(350);
/// Extra wait after a fence could have run out (clock rates, scheduling).
pub const MARGIN: Duration = Duration::from_millis(50);
/// Extra delay per rank, so the best candidate acts first.
pub const RANK_STEP: Duration = Duration::from_millis(300);
/// Extra delay per rank before taking a vacant role. Longer than [`RANK_STEP`]: on a first
/// start, candidates that start together are live in etcd before they take part (each
/// loads and verifies its datapath first, up to a second or more on a busy host), and the
/// better candidate must get that long to be ready.
pub const VACANT_RANK_STEP: Duration = Duration::from_millis(1500);
/// Bound on one etcd request of the election: a slow etcd must not stall the beats.
const OP_TIMEOUT: Duration = Duration::from_millis(300);
/// A planned handover waits this long for the target to acknowledge the state.
const HANDOVER_SYNC: Duration = Duration::from_secs(5);

/// Sends a full conntrack dump of the role to a host and waits for its acknowledgement.
pub type SyncTo = Arc<dyn Fn(Ipv4Addr, Duration) -> Result<(), String> + Send + Sync>;

/// What the agent shares with the election.
#[derive(Default)]
pub struct HaShared {
    /// The HA routers this host is a candidate for (from the last compile).
    pub roles: Vec<HaRole>,
    /// The pinned fence map (`DVR_HA_FENCE`), once the datapath is loaded.
    pub fence_pin: Option<PathBuf>,
    /// Conntrack hand-over for planned failovers.
    pub sync_to: Option<SyncTo>,
}

pub type Shared = Arc<Mutex<HaShared>>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    host: String,
    lease: i64,
}

/// The value of `ha/<router>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HolderValue {
    pub host: String,
    pub lease: i64,
}

/// The value of `ha-request/<router>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RequestValue {
    pub to: String,
    /// Set by the previous holder in the transaction that deleted `ha/<router>`, after it
    /// removed its fence: the target may take the role at once.
    #[serde(default)]
    pub released: bool,
}

fn now_ns() -> u64 {
    crate::clock::fence_now_ns()
}

/// The election state of one agent; survives reconnections.
pub struct Election {
    me: String,
    holders: BTreeMap<String, Holder>,
    /// Last known holder per router (kept while vacant).
    sticky: BTreeMap<String, String>,
    beats: BTreeMap<String, Instant>,
    alive: BTreeSet<String>,
    /// Router -> (requested host, released by the previous holder).
    requests: BTreeMap<String, (String, bool)>,
    /// Mod revision of the last beat seen per host.
    beat_rev: BTreeMap<String, i64>,
    /// Since when this agent's view of etcd is trustworthy again (connected, no stalled
    /// step): nobody is judged on beats missed before that.
    watching_since: Instant,
    last_step: Instant,
    vacant_since: BTreeMap<String, Instant>,
    /// When a holder was first seen (a baseline for its beats).
    holder_since: BTreeMap<String, Instant>,
    active: BTreeSet<String>,
    last_beat: Option<Instant>,
    /// Planned handover in progress: router -> result channel of the sync thread.
    handover: BTreeMap<String, mpsc::Receiver<Result<(), String>>>,
    fence: Option<BpfHashMap<MapData, u32, u64>>,
    reported: Option<HaRuntime>,
}

/// One parsed key of the election's prefixes.
enum Key<'a> {
    Holder(&'a str),
    Beat(&'a str),
    Request(&'a str),
    Alive(&'a str),
}

fn parse_key(k: &str) -> Option<Key<'_>> {
    if let Some(r) = k.strip_prefix(HA_PREFIX) {
        Some(Key::Holder(r))
    } else if let Some(h) = k.strip_prefix(BEAT_PREFIX) {
        Some(Key::Beat(h))
    } else if let Some(r) = k.strip_prefix(REQUEST_PREFIX) {
        Some(Key::Request(r))
    } else {
        k.strip_prefix(super::kv::ALIVE).map(Key::Alive)
    }
}

/// True for keys the election follows (and the state ignores).
pub fn is_election_key(k: &str) -> bool {
    parse_key(k).is_some()
}

impl Election {
    pub fn new(me: &str) -> Self {
        Election {
            me: me.into(),
            holders: BTreeMap::new(),
            sticky: BTreeMap::new(),
            beats: BTreeMap::new(),
            alive: BTreeSet::new(),
            requests: BTreeMap::new(),
            beat_rev: BTreeMap::new(),
            watching_since: Instant::now(),
            last_step: Instant::now(),
            vacant_since: BTreeMap::new(),
            holder_since: BTreeMap::new(),
            active: BTreeSet::new(),
            last_beat: None,
            handover: BTreeMap::new(),
            fence: None,
            reported: None,
        }
    }

    /// Start over from a snapshot of the election keys (after a (re)connection).
    pub fn reset(&mut self, kvs: &[(String, String, i64)], my_lease: i64) {
        self.holders.clear();
        self.requests.clear();
        self.alive.clear();
        let now = Instant::now();
        self.watching_since = now;
        for (k, v, rev) in kvs {
            self.observe(k, Some(v), *rev, now);
        }
        // Roles held under an older lease of this host stay held until revoked; roles held
        // under this lease cannot exist yet. Anything we believed active is re-proven by
        // the beats (the fence covers the gap).
        let still: BTreeSet<String> = self
            .active
            .iter()
            .filter(|r| {
                self.holders
                    .get(*r)
                    .is_some_and(|h| h.host == self.me && h.lease == my_lease)
            })
            .cloned()
            .collect();
        for r in self.active.clone().difference(&still) {
            self.demote(r, "not the holder after reconnecting");
        }
    }

    /// One watched change (value `None`: deleted).
    pub fn observe(&mut self, k: &str, v: Option<&str>, rev: i64, now: Instant) {
        match parse_key(k) {
            Some(Key::Holder(r)) => {
                match v.and_then(|v| serde_json::from_str::<HolderValue>(v).ok()) {
                    Some(h) => {
                        if self.holders.get(r).map(|o| &o.host) != Some(&h.host) {
                            self.holder_since.insert(r.into(), now);
                        }
                        self.sticky.insert(r.into(), h.host.clone());
                        self.vacant_since.remove(r);
                        self.holders.insert(
                            r.into(),
                            Holder {
                                host: h.host,
                                lease: h.lease,
                            },
                        );
                    }
                    None => {
                        self.holders.remove(r);
                        self.vacant_since.entry(r.into()).or_insert(now);
                    }
                }
            }
            Some(Key::Beat(h)) if v.is_some() => {
                self.beats.insert(h.into(), now);
                self.beat_rev.insert(h.into(), rev);
            }
            Some(Key::Beat(_)) => {}
            Some(Key::Request(r)) => {
                match v.and_then(|v| serde_json::from_str::<RequestValue>(v).ok()) {
                    Some(req) => self.requests.insert(r.into(), (req.to, req.released)),
                    None => self.requests.remove(r),
                };
            }
            Some(Key::Alive(h)) => {
                if v.is_some() {
                    self.alive.insert(h.into());
                } else {
                    self.alive.remove(h);
                }
            }
            None => {}
        }
    }

    /// The etcd session ended: every role is released (the fence stops the datapath
    /// anyway); returns the new view if it changed.
    pub fn disconnected(&mut self) -> Option<HaRuntime> {
        for r in self.active.clone() {
            self.demote(&r, "etcd connection lost");
        }
        self.handover.clear();
        self.runtime_if_changed()
    }

    /// What the agent should compile with, if it changed since the last call.
    pub fn runtime_if_changed(&mut self) -> Option<HaRuntime> {
        let rt = HaRuntime {
            holders: self.sticky.clone(),
            active_here: self.active.clone(),
        };
        if self.reported.as_ref() == Some(&rt) {
            return None;
        }
        self.reported = Some(rt.clone());
        Some(rt)
    }

    /// Rank of this host among the live candidates of `role` that could take it now
    /// (`excluded`: the holder being replaced): the requested target first, then by
    /// preference. `None`: not a candidate.
    fn rank(&self, role: &HaRole, excluded: Option<&str>) -> Option<usize> {
        let requested = self.requests.get(&role.router_id).map(|(to, _)| to);
        let mut live: Vec<&str> = role
            .candidates
            .iter()
            .map(|c| c.host.as_str())
            .filter(|h| Some(*h) != excluded && (*h == self.me || self.alive.contains(*h)))
            .collect();
        if let Some(t) = requested
            && let Some(i) = live.iter().position(|h| *h == t.as_str())
        {
            let t = live.remove(i);
            live.insert(0, t);
        }
        live.iter().position(|h| *h == self.me)
    }

    fn fence_map(&mut self, shared: &Shared) -> Option<&mut BpfHashMap<MapData, u32, u64>> {
        if self.fence.is_none() {
            let pin = shared.lock().ok()?.fence_pin.clone()?;
            let data = MapData::from_pin(&pin).ok()?;
            self.fence = BpfHashMap::try_from(Map::HashMap(data)).ok();
        }
        self.fence.as_mut()
    }

    fn set_fence(&mut self, shared: &Shared, roles: &[HaRole], until_ns: u64) {
        let hashes: Vec<u32> = roles
            .iter()
            .filter(|r| self.active.contains(&r.router_id))
            .map(|r| r.router_hash)
            .collect();
        if let Some(map) = self.fence_map(shared) {
            for h in hashes {
                if let Err(e) = map.insert(h, until_ns, 0) {
                    warn!(error = %e, "cannot extend the HA fence");
                }
            }
        }
    }

    fn clear_fence(&mut self, shared: &Shared, hash: u32) {
        if let Some(map) = self.fence_map(shared) {
            let _ = map.remove(&hash);
        }
    }

    fn demote(&mut self, router: &str, why: &str) {
        if self.active.remove(router) {
            info!(router, why, "HA role released");
        }
    }

    /// One election step (see the module docs).
    pub async fn step(&mut self, client: &mut Client, lease: i64, shared: &Shared) {
        let (roles, sync_to) = match shared.lock() {
            Ok(s) => (s.roles.clone(), s.sync_to.clone()),
            Err(_) => return,
        };
        let now = Instant::now();
        // A step that comes late (this process or its etcd requests stalled): what we saw
        // of the others' beats is not to be trusted until we have watched again.
        if now.saturating_duration_since(self.last_step) > TICK * 4 {
            self.watching_since = now;
        }
        self.last_step = now;
        // Roles no longer ours (state changed): let go.
        for r in self.active.clone() {
            if let Some(role) = roles.iter().find(|x| x.router_id == r) {
                let holder_ok = self
                    .holders
                    .get(&r)
                    .is_some_and(|h| h.host == self.me && h.lease == lease);
                if !holder_ok {
                    self.clear_fence(shared, role.router_hash);
                    self.demote(&r, "another host holds the role or the key is gone");
                }
            } else {
                self.demote(&r, "no longer a candidate");
                self.release(client, &r, lease).await;
            }
        }
        // Beats, and the fence they extend.
        if !self.active.is_empty() && self.last_beat.is_none_or(|t| now - t >= BEAT) {
            self.last_beat = Some(now);
            let sent = now_ns();
            let put = client.put(
                format!("{BEAT_PREFIX}{}", self.me),
                sent.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            );
            match tokio::time::timeout(OP_TIMEOUT, put).await {
                Ok(Ok(_)) => self.set_fence(shared, &roles, sent + FENCE.as_nanos() as u64),
                Ok(Err(e)) => {
                    warn!(error = %e, "beat refused: releasing every HA role");
                    for role in &roles {
                        if self.active.contains(&role.router_id) {
                            self.clear_fence(shared, role.router_hash);
                        }
                    }
                    for r in self.active.clone() {
                        self.demote(&r, "beat refused (lease revoked?)");
                    }
                }
                Err(_) => {
                    // Slow etcd: the fence runs out unless a later beat succeeds.
                    self.watching_since = Instant::now();
                }
            }
        }
        for role in &roles {
            let r = role.router_id.as_str();
            // A planned handover that finished (or failed).
            if let Some(rx) = self.handover.get(r) {
                match rx.try_recv() {
                    Ok(Ok(())) => {
                        self.handover.remove(r);
                        info!(router = r, "conntrack handed over: releasing the role");
                        self.clear_fence(shared, role.router_hash);
                        self.demote(r, "planned failover");
                        let to = self.requests.get(r).map(|(to, _)| to.clone());
                        self.release_to(client, r, lease, to.as_deref()).await;
                    }
                    Ok(Err(e)) => {
                        self.handover.remove(r);
                        warn!(router = r, error = %e, "planned failover: conntrack hand-over failed; keeping the role");
                        self.delete_request(client, r).await;
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.handover.remove(r);
                    }
                }
                continue;
            }
            match self.holders.get(r).cloned() {
                Some(h) if h.host == self.me && h.lease == lease => {
                    self.active.insert(r.into());
                    match self.requests.get(r).map(|(to, _)| to.clone()) {
                        Some(to) if to == self.me => self.delete_request(client, r).await,
                        Some(to) => {
                            let target = role.candidates.iter().find(|c| c.host == to);
                            match (target, &sync_to) {
                                (Some(t), Some(f)) if self.alive.contains(&to) => {
                                    let (tx, rx) = mpsc::channel();
                                    let (f, ip) = (f.clone(), t.tunnel_ip);
                                    info!(router = r, to = %to, "planned failover: handing conntrack over");
                                    std::thread::spawn(move || {
                                        let _ = tx.send(f(ip, HANDOVER_SYNC));
                                    });
                                    self.handover.insert(r.into(), rx);
                                }
                                _ => {
                                    warn!(router = r, to = %to, "planned failover to a host that is not a live candidate: ignored");
                                    self.delete_request(client, r).await;
                                }
                            }
                        }
                        None => {}
                    }
                }
                Some(h) if h.host == self.me => {
                    // Held under an older lease of this host (a previous agent): give it up
                    // and take part in a fresh election.
                    self.revoke(client, r, &h, "an earlier agent of this host")
                        .await;
                }
                Some(h) => {
                    let last = self
                        .beats
                        .get(&h.host)
                        .copied()
                        .max(self.holder_since.get(r).copied())
                        .unwrap_or(now)
                        .max(self.watching_since);
                    let Some(rank) = self.rank(role, Some(&h.host)) else {
                        continue;
                    };
                    let wait = DETECT + RANK_STEP * rank as u32;
                    if now.saturating_duration_since(last) >= wait
                        && !self.beating_after_all(client, &h.host).await
                    {
                        self.revoke(client, r, &h, "no beat").await;
                    }
                }
                None => {
                    let since = *self.vacant_since.entry(r.into()).or_insert(now);
                    let Some(rank) = self.rank(role, None) else {
                        continue;
                    };
                    let released = self
                        .requests
                        .get(r)
                        .is_some_and(|(to, released)| *released && *to == self.me);
                    let wait = if released {
                        Duration::ZERO
                    } else {
                        FENCE + MARGIN + VACANT_RANK_STEP * rank as u32
                    };
                    if now.saturating_duration_since(since) >= wait {
                        self.acquire(client, role, lease, shared).await;
                    }
                }
            }
        }
    }

    /// Before declaring `host` gone: has its beat key changed since the last beat we saw
    /// (our watch lagging)? A failed read counts as "yes": no revocation on a doubtful view.
    async fn beating_after_all(&mut self, client: &mut Client, host: &str) -> bool {
        let key = format!("{BEAT_PREFIX}{host}");
        let rev = match tokio::time::timeout(OP_TIMEOUT, client.get(key, None)).await {
            Ok(Ok(resp)) => resp.kvs().first().map_or(0, |kv| kv.mod_revision()),
            _ => return true,
        };
        let seen = self.beat_rev.get(host).copied().unwrap_or(0);
        if rev > seen {
            self.beats.insert(host.into(), Instant::now());
            self.beat_rev.insert(host.into(), rev);
            return true;
        }
        false
    }

    async fn revoke(&mut self, client: &mut Client, router: &str, h: &Holder, why: &str) {
        let res = tokio::time::timeout(OP_TIMEOUT, client.lease_revoke(h.lease)).await;
        match res {
            Ok(Ok(_)) => {
                warn!(router, holder = %h.host, lease = h.lease, why, "revoked the HA holder's lease");
            }
            Ok(Err(e)) if e.to_string().contains("not found") => {}
            Ok(Err(e)) => {
                warn!(router, holder = %h.host, error = %e, "cannot revoke the HA holder's lease");
                return;
            }
            Err(_) => return,
        }
        // Vacant from now: nobody may take it before the old holder's fence ran out.
        self.holders.remove(router);
        self.vacant_since.insert(router.into(), Instant::now());
    }

    async fn acquire(&mut self, client: &mut Client, role: &HaRole, lease: i64, shared: &Shared) {
        let key = format!("{HA_PREFIX}{}", role.router_id);
        let value = serde_json::json!({"host": self.me, "lease": lease}).to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let sent = now_ns();
        match tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(resp)) if resp.succeeded() => {
                info!(router = %role.router_id, "HA role taken");
                self.active.insert(role.router_id.clone());
                self.holders.insert(
                    role.router_id.clone(),
                    Holder {
                        host: self.me.clone(),
                        lease,
                    },
                );
                self.sticky.insert(role.router_id.clone(), self.me.clone());
                self.vacant_since.remove(&role.router_id);
                self.set_fence(
                    shared,
                    std::slice::from_ref(role),
                    sent + FENCE.as_nanos() as u64,
                );
                if self
                    .requests
                    .get(&role.router_id)
                    .is_some_and(|(to, _)| *to == self.me)
                {
                    self.delete_request(client, &role.router_id).await;
                }
            }
            Ok(Ok(_)) => {} // someone else was faster; the watch tells us who
            Ok(Err(e)) => warn!(router = %role.router_id, error = %e, "cannot take the HA role"),
            Err(_) => {}
        }
    }

    /// Delete `ha/<router>` if it is still ours.
    async fn release(&mut self, client: &mut Client, router: &str, lease: i64) {
        self.release_to(client, router, lease, None).await;
    }

    /// [`Self::release`]; with `to`, the request is marked released in the same
    /// transaction (our fence is already gone), so `to` need not wait for it to run out.
    async fn release_to(
        &mut self,
        client: &mut Client,
        router: &str,
        lease: i64,
        to: Option<&str>,
    ) {
        let key = format!("{HA_PREFIX}{router}");
        let mut ops = vec![TxnOp::delete(key.as_str(), None)];
        if let Some(to) = to
            && let Ok(v) = serde_json::to_string(&RequestValue {
                to: to.into(),
                released: true,
            })
        {
            ops.push(TxnOp::put(format!("{REQUEST_PREFIX}{router}"), v, None));
        }
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then(ops);
        if let Ok(Err(e)) = tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
            warn!(router, error = %e, "cannot delete the HA key (its lease will)");
        }
        self.holders.remove(router);
        self.vacant_since.insert(router.into(), Instant::now());
    }

    async fn delete_request(&mut self, client: &mut Client, router: &str) {
        let key = format!("{REQUEST_PREFIX}{router}");
        let _ = tokio::time::timeout(OP_TIMEOUT, client.delete(key, None)).await;
        self.requests.remove(router);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::HaCandidate;

    fn role() -> HaRole {
        HaRole {
            router_id: "r1".into(),
            router_hash: 1,
            candidates: ["sa", "sb", "sc"]
                .iter()
                .enumerate()
                .map(|(i, h)| HaCandidate {
                    host: (*h).into(),
                    priority: 300 - i as u32 * 100,
                    tunnel_ip: Ipv4Addr::new(192, 0, 2, 10 + i as u8),
                })
                .collect(),
            ext_ip: None,
            central_fips: BTreeMap::new(),
        }
    }

    #[test]
    fn rank_orders_live_candidates_by_preference_then_request() {
        let now = Instant::now();
        let mut e = Election::new("sc");
        for h in ["sa", "sb", "sc"] {
            e.observe(
                &format!("{}{h}", super::super::kv::ALIVE),
                Some("{}"),
                1,
                now,
            );
        }
        assert_eq!(e.rank(&role(), None), Some(2));
        assert_eq!(e.rank(&role(), Some("sa")), Some(1));
        e.observe(&format!("{}sb", super::super::kv::ALIVE), None, 1, now);
        assert_eq!(e.rank(&role(), Some("sa")), Some(0), "sb is gone");
        e.observe(
            &format!("{REQUEST_PREFIX}r1"),
            Some(r#"{"to":"sc"}"#),
            1,
            now,
        );
        assert_eq!(e.rank(&role(), None), Some(0), "requested target first");
        let other = Election::new("sx");
        assert_eq!(other.rank(&role(), None), None);
    }

    #[test]
    fn holder_keys_are_sticky_and_reported_once() {
        let now = Instant::now();
        let mut e = Election::new("sb");
        e.observe(
            &format!("{HA_PREFIX}r1"),
            Some(r#"{"host":"sa","lease":7}"#),
            1,
            now,
        );
        let Some(rt) = e.runtime_if_changed() else {
            panic!("no first report")
        };
        assert_eq!(rt.holders.get("r1").map(String::as_str), Some("sa"));
        assert!(rt.active_here.is_empty());
        assert!(e.runtime_if_changed().is_none(), "unchanged");
        e.observe(&format!("{HA_PREFIX}r1"), None, 1, now);
        assert!(e.vacant_since.contains_key("r1"));
        assert!(
            e.runtime_if_changed().is_none(),
            "the last holder is kept while vacant"
        );
        assert!(is_election_key("/dvr/v1/beat/sa"));
        assert!(is_election_key("/dvr/v1/ha-request/r1"));
        assert!(!is_election_key("/dvr/v1/routers/r1"));
    }
}
