//! The sending side of conntrack sync, on the active host: a [`Replicator`] runs one scanner
//! thread that reads the store every [`Config::scan_interval`] with the current selection,
//! and one thread per peer that keeps a TCP connection and sends what that peer has not
//! seen (see the [`ctsync`](super) module documentation for what is sent when).
use std::{
    collections::{BTreeSet, HashMap},
    io::{BufReader, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use dvr_common::nat::{CtEntry, CtKey};
use tracing::{debug, info, warn};

use super::{
    ratelimit::Bucket,
    stats::{Counters, Stats, add, lock},
    store::{CtStore, Select},
    wire::{
        Frame, KEEPALIVE_MIN, PORT, RECORD_LEN, RECORDS_OVERHEAD, ReadError, T_MARK, WRITE_TIMEOUT,
        check_hello, hello_frame, id_frame, read_frame, records_frame,
    },
};

/// Records per RECORDS frame the sender writes (at most; fewer when the budget is short).
const SEND_BATCH: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `t + d`, without overflow for absurd durations (capped at a year).
fn later(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    t.checked_add(d.min(YEAR)).unwrap_or(t)
}

/// Tunables of a [`Replicator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bytes per second over all peers (the full dump of [`Replicator::sync_to`] is not
    /// held back but is charged); 0 = unlimited.
    pub rate_bytes_per_sec: u64,
    /// How often the store is scanned for changes while there are peers.
    pub scan_interval: Duration,
    /// How often everything is sent again; also the keepalive interval (at least 1 s).
    pub refresh_interval: Duration,
    /// Port of peers given with port 0.
    pub port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rate_bytes_per_sec: 4_000_000,
            scan_interval: Duration::from_millis(200),
            refresh_interval: Duration::from_secs(10),
            port: PORT,
        }
    }
}

impl Config {
    fn keepalive(&self) -> Duration {
        self.refresh_interval.max(KEEPALIVE_MIN)
    }
    fn resolve(&self, mut peer: SocketAddr) -> SocketAddr {
        if peer.port() == 0 {
            peer.set_port(self.port);
        }
        peer
    }
}

struct Snapshot {
    seq: u64,
    /// Scan demands (see [`ScanCtl::demand`]) up to this one were registered before this
    /// scan started.
    served: u64,
    entries: Result<Vec<(CtKey, CtEntry)>, String>,
}

struct ScanCtl {
    select: Option<Select>,
    active: bool,
    demand: u64,
    served: u64,
    shutdown: bool,
}

struct Workers {
    map: HashMap<SocketAddr, Sender<Msg>>,
    shutdown: bool,
}

struct Shared {
    cfg: Config,
    bucket: Mutex<Bucket>,
    counters: Counters,
    scan: Mutex<ScanCtl>,
    scan_cv: Condvar,
    workers: Mutex<Workers>,
    next_mark: AtomicU64,
}

impl Shared {
    /// Ask for a scan that starts after now; returns the number to wait for in
    /// [`Snapshot::served`].
    fn demand_scan(&self) -> u64 {
        let mut s = lock(&self.scan);
        s.demand += 1;
        let d = s.demand;
        drop(s);
        self.scan_cv.notify_all();
        d
    }
    fn mark_id(&self) -> u64 {
        self.next_mark.fetch_add(1, Ordering::Relaxed) + 1
    }
}

struct SyncReq {
    deadline: Instant,
    reply: Sender<Result<(), String>>,
}

enum Msg {
    Snapshot(Arc<Snapshot>),
    Want(bool),
    Sync(SyncReq),
    Hello { conn: u64 },
    Ack { conn: u64, id: u64 },
    Down { conn: u64, reason: String },
    Shutdown,
}

/// The sending side: see the [`ctsync`](super) module documentation.
pub struct Replicator {
    sh: Arc<Shared>,
    scanner: Option<JoinHandle<()>>,
}

impl Replicator {
    /// Start the scanner thread; idle until [`Replicator::set`] names peers.
    pub fn spawn<S: CtStore>(store: S, cfg: Config) -> Result<Self, String> {
        let sh = Arc::new(Shared {
            cfg,
            bucket: Mutex::new(Bucket::new(cfg.rate_bytes_per_sec, Instant::now())),
            counters: Counters::default(),
            scan: Mutex::new(ScanCtl {
                select: None,
                active: false,
                demand: 0,
                served: 0,
                shutdown: false,
            }),
            scan_cv: Condvar::new(),
            workers: Mutex::new(Workers {
                map: HashMap::new(),
                shutdown: false,
            }),
            next_mark: AtomicU64::new(0),
        });
        let s2 = sh.clone();
        let scanner = thread::Builder::new()
            .name("ctsync-scan".into())
            .spawn(move || scanner(s2, store))
            .map_err(|e| format!("conntrack sync: cannot start the scanner thread: {e}"))?;
        Ok(Self {
            sh,
            scanner: Some(scanner),
        })
    }

    /// Replicate the entries `select` picks to these peers (a port 0 means
    /// [`Config::port`]); none = idle. Peers no longer named are disconnected; new ones get
    /// a connection and a full dump. Called when the HA role or the selection changes.
    pub fn set(&self, peers: Vec<SocketAddr>, select: Select) {
        let peers: BTreeSet<SocketAddr> =
            peers.into_iter().map(|p| self.sh.cfg.resolve(p)).collect();
        {
            let mut s = lock(&self.sh.scan);
            s.select = Some(select);
            s.active = !peers.is_empty();
        }
        self.sh.scan_cv.notify_all();
        let mut w = lock(&self.sh.workers);
        if w.shutdown {
            return;
        }
        for (addr, tx) in &w.map {
            let _ = tx.send(Msg::Want(peers.contains(addr)));
        }
        for p in &peers {
            if !w.map.contains_key(p) {
                match spawn_worker(&self.sh, *p, true) {
                    Ok(tx) => {
                        w.map.insert(*p, tx);
                    }
                    Err(e) => self.sh.counters.error(e),
                }
            }
        }
    }

    /// Send `peer` (port 0 = [`Config::port`]) a full dump of a fresh scan of the current
    /// selection, then a mark; return once the peer acknowledged the mark, i.e. wrote
    /// everything. Uses the peer's streaming connection if it has one (connecting now if
    /// it has none). Errors on timeout and on connection failure.
    pub fn sync_to(&self, peer: SocketAddr, timeout: Duration) -> Result<(), String> {
        let peer = self.sh.cfg.resolve(peer);
        let (tx, rx) = mpsc::channel();
        let req = SyncReq {
            deadline: later(Instant::now(), timeout),
            reply: tx,
        };
        {
            let mut w = lock(&self.sh.workers);
            if w.shutdown {
                return Err("conntrack sync stopped".into());
            }
            let worker = match w.map.get(&peer) {
                Some(t) => t.clone(),
                None => {
                    let t = spawn_worker(&self.sh, peer, false)?;
                    w.map.insert(peer, t.clone());
                    t
                }
            };
            worker
                .send(Msg::Sync(req))
                .map_err(|_| format!("{peer}: conntrack sync sender gone"))?;
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "{peer}: conntrack dump not acknowledged within {timeout:?}"
            )),
            Err(RecvTimeoutError::Disconnected) => Err(format!("{peer}: conntrack sync stopped")),
        }
    }

    pub fn stats(&self) -> Stats {
        self.sh.counters.snapshot()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        lock(&self.sh.scan).shutdown = true;
        self.sh.scan_cv.notify_all();
        {
            let mut w = lock(&self.sh.workers);
            w.shutdown = true;
            for tx in w.map.values() {
                let _ = tx.send(Msg::Shutdown);
            }
            w.map.clear();
        }
        if let Some(h) = self.scanner.take() {
            let _ = h.join();
        }
    }
}

fn scanner<S: CtStore>(sh: Arc<Shared>, mut store: S) {
    let interval = sh.cfg.scan_interval.max(Duration::from_millis(10));
    let mut next = Instant::now();
    let mut seq = 0;
    loop {
        let (select, served) = {
            let mut s = lock(&sh.scan);
            loop {
                if s.shutdown {
                    return;
                }
                if s.demand > s.served {
                    break;
                }
                let now = Instant::now();
                if s.active && now >= next {
                    break;
                }
                s = if s.active {
                    sh.scan_cv
                        .wait_timeout(s, next - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                } else {
                    sh.scan_cv.wait(s).unwrap_or_else(PoisonError::into_inner)
                };
            }
            s.served = s.demand;
            (s.select.clone(), s.served)
        };
        next = later(Instant::now(), interval);
        let entries = match &select {
            Some(f) => store.scan(&**f),
            None => Ok(Vec::new()),
        };
        add(&sh.counters.scans, 1);
        if let Err(e) = &entries {
            warn!(error = %e, "conntrack sync: scan failed");
            sh.counters.error(format!("scan: {e}"));
        }
        seq += 1;
        let snap = Arc::new(Snapshot {
            seq,
            served,
            entries,
        });
        let w = lock(&sh.workers);
        for tx in w.map.values() {
            let _ = tx.send(Msg::Snapshot(snap.clone()));
        }
    }
}

fn spawn_worker(sh: &Arc<Shared>, peer: SocketAddr, wanted: bool) -> Result<Sender<Msg>, String> {
    let (tx, rx) = mpsc::channel();
    let now = Instant::now();
    let w = Worker {
        sh: sh.clone(),
        peer,
        rx,
        tx: tx.clone(),
        wanted,
        conn: None,
        conn_seq: 0,
        ever_connected: false,
        failing: false,
        backoff: BACKOFF_MIN,
        next_connect: now,
        sent: HashMap::default(),
        epoch: 0,
        round: 0,
        next_refresh: now,
        next_keepalive: now,
        keepalive: None,
        latest: None,
        done_seq: 0,
        syncs: Vec::new(),
        marks: Vec::new(),
        frame: Vec::new(),
    };
    sh.counters.peer(peer, |_| {});
    thread::Builder::new()
        .name(format!("ctsync {peer}"))
        .spawn(move || w.run())
        .map(|_| tx)
        .map_err(|e| format!("{peer}: cannot start a conntrack sync thread: {e}"))
}

/// What a peer last received of an entry: the fields compared, and when.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Sig {
    nat_ip_be: u32,
    fip_be: u32,
    fixed_be: u32,
    peer_zone: u32,
    kind: u8,
    tcp_flags: u8,
    nat_port_be: u16,
    reserved: u32,
}

impl Sig {
    fn of(e: &CtEntry) -> Self {
        Self {
            nat_ip_be: e.nat_ip_be,
            fip_be: e.fip_be,
            fixed_be: e.fixed_be,
            peer_zone: e.peer_zone,
            kind: e.kind,
            tcp_flags: e.tcp_flags,
            nat_port_be: e.nat_port_be,
            reserved: e._reserved,
        }
    }
}

struct Sent {
    sig: Sig,
    /// Refresh epoch it was last sent in.
    epoch: u32,
    /// Last round it was in the selection.
    round: u32,
}

struct Conn {
    stream: TcpStream,
    id: u64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Also ends the reader thread, which holds a clone.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// One peer's connection and what it was sent.
struct Worker {
    sh: Arc<Shared>,
    peer: SocketAddr,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    wanted: bool,
    conn: Option<Conn>,
    conn_seq: u64,
    ever_connected: bool,
    /// The last connection attempt failed (logged once per failing streak).
    failing: bool,
    backoff: Duration,
    next_connect: Instant,
    sent: HashMap<CtKey, Sent, foldhash::fast::RandomState>,
    epoch: u32,
    round: u32,
    next_refresh: Instant,
    next_keepalive: Instant,
    /// Keepalive mark sent and not yet acknowledged.
    keepalive: Option<u64>,
    latest: Option<Arc<Snapshot>>,
    /// Snapshot last processed on the current connection.
    done_seq: u64,
    /// Syncs waiting for a scan: (demand, request).
    syncs: Vec<(u64, SyncReq)>,
    /// Syncs waiting for the acknowledgement of a mark: (mark id, request).
    marks: Vec<(u64, SyncReq)>,
    frame: Vec<u8>,
}

enum Flow {
    Continue,
    Stop,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.wanted && self.syncs.is_empty() && self.marks.is_empty() {
                self.conn = None;
                // Everyone sends under the registry lock: with it held and the queue empty,
                // nothing can arrive any more.
                let mut w = lock(&self.sh.workers);
                let msgs: Vec<Msg> = self.rx.try_iter().collect();
                if msgs.is_empty() || w.shutdown {
                    w.map.remove(&self.peer);
                    drop(w);
                    lock(&self.sh.counters.peers).remove(&self.peer);
                    self.fail_requests("conntrack sync stopped");
                    return;
                }
                drop(w);
                for m in msgs {
                    if let Flow::Stop = self.handle(m) {
                        return self.stop();
                    }
                }
            } else {
                let wait = self.next_wake().saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(m) => {
                        if let Flow::Stop = self.handle(m) {
                            return self.stop();
                        }
                        while let Ok(m) = self.rx.try_recv() {
                            if let Flow::Stop = self.handle(m) {
                                return self.stop();
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return self.stop(),
                }
            }
            self.step();
        }
    }

    fn stop(mut self) {
        self.conn = None;
        self.fail_requests("conntrack sync stopped");
        lock(&self.sh.counters.peers).remove(&self.peer);
    }

    fn next_wake(&self) -> Instant {
        let mut t = later(Instant::now(), Duration::from_secs(1));
        if self.conn.is_none() && self.wanted {
            t = t.min(self.next_connect);
        }
        if self.conn.is_some() {
            t = t.min(self.next_keepalive);
        }
        for (_, r) in self.syncs.iter().chain(&self.marks) {
            t = t.min(r.deadline);
        }
        t
    }

    fn handle(&mut self, m: Msg) -> Flow {
        match m {
            Msg::Snapshot(s) => {
                if self.latest.as_ref().is_none_or(|l| l.seq < s.seq) {
                    self.latest = Some(s);
                }
            }
            Msg::Want(w) => self.wanted = w,
            Msg::Sync(req) => {
                if self.conn.is_none()
                    && let Err(e) = self.connect()
                {
                    let _ = req.reply.send(Err(format!("{}: {e}", self.peer)));
                    return Flow::Continue;
                }
                let d = self.sh.demand_scan();
                self.syncs.push((d, req));
            }
            Msg::Hello { conn } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.backoff = BACKOFF_MIN;
                }
            }
            Msg::Ack { conn, id } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    if self.keepalive.is_some_and(|k| k <= id) {
                        self.keepalive = None;
                    }
                    let (done, rest): (Vec<_>, Vec<_>) =
                        self.marks.drain(..).partition(|(m, _)| *m <= id);
                    self.marks = rest;
                    for (_, r) in done {
                        add(&self.sh.counters.marks_acked, 1);
                        let _ = r.reply.send(Ok(()));
                    }
                }
            }
            Msg::Down { conn, reason } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.fail_conn(&reason);
                }
            }
            Msg::Shutdown => return Flow::Stop,
        }
        Flow::Continue
    }

    fn step(&mut self) {
        let now = Instant::now();
        self.syncs.retain(|(_, r)| r.deadline > now);
        self.marks.retain(|(_, r)| r.deadline > now);
        if self.conn.is_none() && self.wanted && now >= self.next_connect {
            let _ = self.connect();
        }
        if self.conn.is_some() && now >= self.next_keepalive {
            self.keepalive_tick(now);
        }
        if self.conn.is_some()
            && let Some(s) = self.latest.clone()
            && s.seq > self.done_seq
        {
            self.done_seq = s.seq;
            self.process(&s);
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        match self.try_connect() {
            Ok(()) => {
                self.failing = false;
                Ok(())
            }
            Err(e) => {
                if self.failing {
                    debug!(peer = %self.peer, error = %e, "conntrack sync: connect failed");
                } else {
                    warn!(peer = %self.peer, error = %e, "conntrack sync: connect failed; retrying");
                }
                self.failing = true;
                self.sh.counters.error(format!("{}: {e}", self.peer));
                self.schedule_reconnect();
                Err(e)
            }
        }
    }

    fn schedule_reconnect(&mut self) {
        self.next_connect = later(Instant::now(), self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn try_connect(&mut self) -> Result<(), String> {
        let stream = TcpStream::connect_timeout(&self.peer, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| format!("socket: {e}"))?;
        let reader = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
        self.conn_seq += 1;
        let id = self.conn_seq;
        let tx = self.tx.clone();
        let peer = self.peer;
        thread::Builder::new()
            .name(format!("ctsync-rd {peer}"))
            .spawn(move || read_acks(reader, tx, id))
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        self.conn = Some(Conn { stream, id });
        let keepalive = self.sh.cfg.keepalive();
        if let Err(e) = self.send(&hello_frame(keepalive)) {
            self.conn = None;
            return Err(e);
        }
        let c = &self.sh.counters;
        add(&c.connects, 1);
        if self.ever_connected {
            add(&c.reconnects, 1);
        }
        self.ever_connected = true;
        c.peer(peer, |p| p.connected = true);
        info!(peer = %peer, "conntrack sync: connected");
        // A fresh connection starts with a full dump, on the newest scan at hand.
        let now = Instant::now();
        self.sent.clear();
        self.next_refresh = later(now, self.sh.cfg.refresh_interval);
        self.next_keepalive = later(now, keepalive);
        self.keepalive = None;
        self.done_seq = 0;
        Ok(())
    }

    fn fail_requests(&mut self, reason: &str) {
        for (_, r) in self.syncs.drain(..).chain(self.marks.drain(..)) {
            let _ = r.reply.send(Err(format!("{}: {reason}", self.peer)));
        }
    }

    fn fail_conn(&mut self, reason: &str) {
        if self.conn.take().is_none() {
            return;
        }
        warn!(peer = %self.peer, %reason, "conntrack sync: connection lost; reconnecting");
        self.sh.counters.error(format!("{}: {reason}", self.peer));
        self.sh.counters.peer(self.peer, |p| p.connected = false);
        self.fail_requests(reason);
        self.keepalive = None;
        self.schedule_reconnect();
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(c) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        c.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))?;
        add(&self.sh.counters.bytes, bytes.len() as u64);
        Ok(())
    }

    fn send_or_fail(&mut self, bytes: &[u8]) -> bool {
        match self.send(bytes) {
            Ok(()) => true,
            Err(e) => {
                self.fail_conn(&e);
                false
            }
        }
    }

    fn keepalive_tick(&mut self, now: Instant) {
        let ka = self.sh.cfg.keepalive();
        if let Some(id) = self.keepalive {
            self.fail_conn(&format!(
                "keepalive mark {id} not acknowledged within {ka:?}"
            ));
            return;
        }
        let id = self.sh.mark_id();
        if self.send_or_fail(&id_frame(T_MARK, id)) {
            self.keepalive = Some(id);
            self.next_keepalive = later(now, ka);
        }
    }

    fn process(&mut self, s: &Snapshot) {
        let (due, rest): (Vec<_>, Vec<_>) = self.syncs.drain(..).partition(|(d, _)| *d <= s.served);
        self.syncs = rest;
        let entries = match &s.entries {
            Ok(e) => e,
            Err(e) => {
                for (_, r) in due {
                    let _ = r.reply.send(Err(format!("scan failed: {e}")));
                }
                return;
            }
        };
        self.round = self.round.wrapping_add(1);
        if !due.is_empty() && !self.dump(entries, due) {
            return;
        }
        if self.wanted {
            self.stream_round(entries);
        }
    }

    /// Write one RECORDS frame of `entries[idx]` and remember them as sent.
    fn send_batch(&mut self, entries: &[(CtKey, CtEntry)], idx: &[usize]) -> bool {
        let mut frame = std::mem::take(&mut self.frame);
        records_frame(
            &mut frame,
            idx.iter()
                .filter_map(|&i| entries.get(i))
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let ok = self.send_or_fail(&frame);
        if ok {
            let c = &self.sh.counters;
            add(&c.entries, idx.len() as u64);
            add(&c.batches, 1);
            for (k, e) in idx.iter().filter_map(|&i| entries.get(i)) {
                self.sent.insert(
                    *k,
                    Sent {
                        sig: Sig::of(e),
                        epoch: self.epoch,
                        round: self.round,
                    },
                );
            }
        }
        self.frame = frame;
        ok
    }

    /// Everything, regardless of the budget (but charged), then a mark for `due`.
    fn dump(&mut self, entries: &[(CtKey, CtEntry)], due: Vec<(u64, SyncReq)>) -> bool {
        let id = self.sh.mark_id();
        self.marks.extend(due.into_iter().map(|(_, r)| (id, r)));
        let all: Vec<usize> = (0..entries.len()).collect();
        for chunk in all.chunks(SEND_BATCH) {
            if !self.send_batch(entries, chunk) {
                return false;
            }
            lock(&self.sh.bucket)
                .debit(RECORDS_OVERHEAD + chunk.len() * RECORD_LEN, Instant::now());
        }
        self.send_or_fail(&id_frame(T_MARK, id))
    }

    /// New and changed entries first, then those due for the refresh, as the budget allows.
    fn stream_round(&mut self, entries: &[(CtKey, CtEntry)]) {
        let now = Instant::now();
        let refresh = now >= self.next_refresh;
        if refresh {
            self.epoch = self.epoch.wrapping_add(1);
            self.next_refresh = later(now, self.sh.cfg.refresh_interval);
        }
        let mut todo = Vec::new();
        let mut stale = Vec::new();
        for (i, (k, e)) in entries.iter().enumerate() {
            match self.sent.get_mut(k) {
                Some(s) => {
                    s.round = self.round;
                    if s.sig != Sig::of(e) {
                        todo.push(i);
                    } else if s.epoch != self.epoch {
                        stale.push(i);
                    }
                }
                None => todo.push(i),
            }
        }
        if refresh {
            // Forget entries that left the selection (or the map).
            let round = self.round;
            self.sent.retain(|_, s| s.round == round);
        }
        todo.extend(stale);
        let mut rest: &[usize] = &todo;
        while !rest.is_empty() {
            let n = lock(&self.sh.bucket).grant(rest.len().min(SEND_BATCH), Instant::now());
            let Some((batch, tail)) = rest.split_at_checked(n) else {
                break;
            };
            if batch.is_empty() || !self.send_batch(entries, batch) {
                break;
            }
            rest = tail;
        }
        let pending = rest.len() as u64;
        self.sh.counters.peer(self.peer, |p| {
            p.pending = pending;
            p.rounds += 1;
        });
    }
}

/// Reader side of a sender's connection: the peer's HELLO, then ACKs.
fn read_acks(stream: TcpStream, tx: Sender<Msg>, conn: u64) {
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut hello = false;
    let reason = loop {
        match read_frame(&mut r, &mut buf) {
            Ok(Some(Frame::Hello(h))) if !hello => {
                if let Err(e) = check_hello(&h) {
                    break format!("peer speaks {e}");
                }
                hello = true;
                if tx.send(Msg::Hello { conn }).is_err() {
                    return;
                }
            }
            Ok(Some(Frame::Ack(id))) if hello => {
                if tx.send(Msg::Ack { conn, id }).is_err() {
                    return;
                }
            }
            Ok(Some(f)) => break format!("unexpected {} frame from the peer", f.name()),
            Ok(None) => break "closed by the peer".to_string(),
            Err(ReadError::Io(e)) => break format!("read: {e}"),
            Err(ReadError::Malformed(e)) => break format!("malformed frame from the peer: {e}"),
        }
    };
    let _ = tx.send(Msg::Down { conn, reason });
}
