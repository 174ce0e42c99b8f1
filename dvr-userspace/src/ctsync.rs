//! Conntrack replication between the candidates of HA routers (see `docs/HA.md`,
//! "Conntrack sync"): the active host streams the conntrack entries of its HA roles to the
//! other candidates, which write them into their own conntrack map, so a flow established
//! before a failover keeps its translation after it. Plain std threads and blocking TCP.
//!
//! - [`Replicator`] (active host): one scanner thread reads the store every
//!   [`Config::scan_interval`] with the current selection; one thread per peer keeps a TCP
//!   connection and sends what that peer has not seen: entries that are new or whose
//!   kind, TCP flags or translation changed (counters and timestamps are not compared, so
//!   idle flows cost nothing), everything again every [`Config::refresh_interval`] (which
//!   keeps the standby's idle timers fresh), and everything on a fresh connection. A token
//!   bucket shared by all peers bounds the bytes per second; what the budget does not cover
//!   stays pending for the next round. Deletions are not replicated: the standby's own GC
//!   expires entries that stop being refreshed. [`Replicator::sync_to`] sends a full dump of
//!   a fresh scan followed by a mark and waits for its acknowledgement.
//! - [`Listener`] (every candidate): accepts connections and writes what it receives into
//!   its [`CtStore`], one batch per frame; a mark is acknowledged after everything before it
//!   was written. Input that is not well-formed closes that connection (logged with the
//!   peer's address) and nothing else.
//! - [`PinnedCt`]: the [`CtStore`] of the pinned `DVR_CT` map. Writes stamp `created_ns` and
//!   `last_seen_ns` with the receiver's clock, so its GC measures idleness from receipt.
//!
//! # Wire format (version 1)
//!
//! A connection carries frames in both directions. All integers are little-endian.
//!
//! ```text
//! frame   = len:u32  type:u8  payload          len = 1 + payload length, at most MAX_FRAME
//! HELLO   type 1: magic "DVRCTSYN"  version:u16 = 1  record_len:u16 = 76  keepalive_ms:u32
//! RECORDS type 2: count:u32 (1..=MAX_BATCH)  count * record
//! MARK    type 3: id:u64
//! ACK     type 4: id:u64
//! record  = CtKey (20 bytes) CtEntry (56 bytes): each field little-endian at its offset in
//!           the #[repr(C)] struct, i.e. the structs' in-memory bytes on the (little-endian)
//!           hosts the datapath runs on; `*_be` fields thus carry network byte order as they
//!           are. CtKey's 3 padding bytes are zero (a record with others is malformed).
//! ```
//!
//! The connecting side (sender) starts with a HELLO whose `keepalive_ms` is the interval of
//! its keepalive marks; the listener checks magic, version and record length, answers with
//! its own HELLO (`keepalive_ms` 0) and from then on only sends ACKs. The sender sends
//! RECORDS and MARKs; the listener answers each MARK with an ACK carrying the same id once
//! every record received before it is written. A listener closes a connection that is silent
//! for 3 keepalive intervals; a sender closes (and reconnects) when its previous keepalive
//! mark is still unacknowledged one interval later. Anything else (wrong magic or version,
//! unknown type, a length out of bounds or not matching the type, a frame out of order)
//! closes the connection.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{self, BufReader, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd, RawFd},
    path::Path,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHash, IterableMap, Map, MapData};
use dvr_common::nat::{self, CtEntry, CtKey};
use tracing::{debug, info, warn};

/// TCP port of the conntrack sync listener on every candidate's tunnel address.
pub const PORT: u16 = 4791;
/// First bytes of every HELLO.
pub const MAGIC: [u8; 8] = *b"DVRCTSYN";
/// Protocol version this build speaks (and accepts).
pub const VERSION: u16 = 1;
const KEY_LEN: usize = 20;
const ENTRY_LEN: usize = 56;
/// Bytes of one record on the wire: CtKey + CtEntry.
pub const RECORD_LEN: usize = KEY_LEN + ENTRY_LEN;
/// Most records a RECORDS frame may carry (the receiver's bound).
pub const MAX_BATCH: usize = 4096;
/// Largest `len` a frame may have.
pub const MAX_FRAME: usize = 1 + 4 + MAX_BATCH * RECORD_LEN;
/// Records per RECORDS frame the sender writes (at most; fewer when the budget is short).
const SEND_BATCH: usize = 512;
/// Bytes of a RECORDS frame besides its records.
const RECORDS_OVERHEAD: usize = 4 + 1 + 4;

const T_HELLO: u8 = 1;
const T_RECORDS: u8 = 2;
const T_MARK: u8 = 3;
const T_ACK: u8 = 4;
const HELLO_LEN: usize = 1 + 8 + 2 + 2 + 4;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const KEEPALIVE_MIN: Duration = Duration::from_secs(1);
/// Concurrent connections a listener serves; more are refused.
const MAX_CONNECTIONS: usize = 64;

/// Where synced entries go / come from: the real pinned CT map in the agent, a BTreeMap in
/// tests.
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `t + d`, without overflow for absurd durations (capped at a year).
fn later(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    t.checked_add(d.min(YEAR)).unwrap_or(t)
}

// ---------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------

fn put_record(out: &mut Vec<u8>, k: &CtKey, e: &CtEntry) {
    out.extend_from_slice(&k.zone.to_le_bytes());
    out.extend_from_slice(&k.saddr_be.to_le_bytes());
    out.extend_from_slice(&k.daddr_be.to_le_bytes());
    out.extend_from_slice(&k.sport_be.to_le_bytes());
    out.extend_from_slice(&k.dport_be.to_le_bytes());
    out.push(k.proto);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&e.nat_ip_be.to_le_bytes());
    out.extend_from_slice(&e.fip_be.to_le_bytes());
    out.extend_from_slice(&e.fixed_be.to_le_bytes());
    out.extend_from_slice(&e.peer_zone.to_le_bytes());
    out.push(e.kind);
    out.push(e.tcp_flags);
    out.extend_from_slice(&e.nat_port_be.to_le_bytes());
    out.extend_from_slice(&e._reserved.to_le_bytes());
    out.extend_from_slice(&e.created_ns.to_le_bytes());
    out.extend_from_slice(&e.last_seen_ns.to_le_bytes());
    out.extend_from_slice(&e.packets.to_le_bytes());
    out.extend_from_slice(&e.bytes.to_le_bytes());
}

/// A reader over a byte slice that never panics.
struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (a, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| "truncated".to_string())?;
        self.0 = rest;
        Ok(*a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        self.arr::<1>().map(u8::from_le_bytes)
    }
    fn u16(&mut self) -> Result<u16, String> {
        self.arr().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.arr().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.arr().map(u64::from_le_bytes)
    }
}

fn get_record(b: &[u8]) -> Result<(CtKey, CtEntry), String> {
    let mut c = Cur(b);
    let k = CtKey {
        zone: c.u32()?,
        saddr_be: c.u32()?,
        daddr_be: c.u32()?,
        sport_be: c.u16()?,
        dport_be: c.u16()?,
        proto: c.u8()?,
        _pad: c.arr()?,
    };
    if k._pad != [0; 3] {
        return Err(format!("record key padding {:?} is not zero", k._pad));
    }
    let e = CtEntry {
        nat_ip_be: c.u32()?,
        fip_be: c.u32()?,
        fixed_be: c.u32()?,
        peer_zone: c.u32()?,
        kind: c.u8()?,
        tcp_flags: c.u8()?,
        nat_port_be: c.u16()?,
        _reserved: c.u32()?,
        created_ns: c.u64()?,
        last_seen_ns: c.u64()?,
        packets: c.u64()?,
        bytes: c.u64()?,
    };
    if !c.0.is_empty() {
        return Err("record too long".into());
    }
    Ok((k, e))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hello {
    version: u16,
    record_len: u16,
    keepalive_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Hello(Hello),
    Records(Vec<(CtKey, CtEntry)>),
    Mark(u64),
    Ack(u64),
}

impl Frame {
    fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "HELLO",
            Frame::Records(_) => "RECORDS",
            Frame::Mark(_) => "MARK",
            Frame::Ack(_) => "ACK",
        }
    }
}

fn hello_frame(keepalive: Duration) -> Vec<u8> {
    let ms = u32::try_from(keepalive.as_millis()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + HELLO_LEN);
    out.extend_from_slice(&(HELLO_LEN as u32).to_le_bytes());
    out.push(T_HELLO);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(RECORD_LEN as u16).to_le_bytes());
    out.extend_from_slice(&ms.to_le_bytes());
    out
}

fn id_frame(ty: u8, id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.extend_from_slice(&9u32.to_le_bytes());
    out.push(ty);
    out.extend_from_slice(&id.to_le_bytes());
    out
}

/// A RECORDS frame of these entries (at most [`MAX_BATCH`]) into `out`.
fn records_frame<'a>(out: &mut Vec<u8>, recs: impl ExactSizeIterator<Item = &'a (CtKey, CtEntry)>) {
    let n = recs.len();
    out.clear();
    out.reserve(RECORDS_OVERHEAD + n * RECORD_LEN);
    let len = u32::try_from(1 + 4 + n * RECORD_LEN).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(T_RECORDS);
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    for (k, e) in recs {
        put_record(out, k, e);
    }
}

/// Decode a frame body (type and payload).
fn parse_frame(body: &[u8]) -> Result<Frame, String> {
    let (&ty, payload) = body.split_first().ok_or("empty frame")?;
    let mut c = Cur(payload);
    let frame = match ty {
        T_HELLO => {
            let magic: [u8; 8] = c.arr().map_err(|_| "short HELLO")?;
            if magic != MAGIC {
                return Err(format!(
                    "bad magic {:?} (not a conntrack sync peer)",
                    String::from_utf8_lossy(&magic)
                ));
            }
            let h = Hello {
                version: c.u16()?,
                record_len: c.u16()?,
                keepalive_ms: c.u32()?,
            };
            Frame::Hello(h)
        }
        T_RECORDS => {
            let count = c.u32().map_err(|_| "short RECORDS")? as usize;
            if count == 0 || count > MAX_BATCH {
                return Err(format!("RECORDS count {count} not in 1..={MAX_BATCH}"));
            }
            if c.0.len() != count * RECORD_LEN {
                return Err(format!(
                    "RECORDS of {count} records carries {} bytes, not {}",
                    c.0.len(),
                    count * RECORD_LEN
                ));
            }
            let recs =
                c.0.chunks_exact(RECORD_LEN)
                    .map(get_record)
                    .collect::<Result<Vec<_>, _>>()?;
            c.0 = &[];
            Frame::Records(recs)
        }
        T_MARK => Frame::Mark(c.u64().map_err(|_| "short MARK")?),
        T_ACK => Frame::Ack(c.u64().map_err(|_| "short ACK")?),
        _ => return Err(format!("unknown frame type {ty}")),
    };
    if !c.0.is_empty() {
        return Err(format!(
            "{} frame with {} trailing bytes",
            frame.name(),
            c.0.len()
        ));
    }
    Ok(frame)
}

fn check_hello(h: &Hello) -> Result<(), String> {
    if h.version != VERSION {
        return Err(format!(
            "protocol version {} (this build speaks {VERSION})",
            h.version
        ));
    }
    if usize::from(h.record_len) != RECORD_LEN {
        return Err(format!(
            "record length {} (this build has {RECORD_LEN})",
            h.record_len
        ));
    }
    Ok(())
}

#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    Malformed(String),
}

/// Fill `b`; false when the stream ended before its first byte.
fn read_full_or_eof<R: Read>(r: &mut R, b: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while let Some(rest) = b.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The next frame; `None` at a clean end of stream (between frames).
fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Frame>, ReadError> {
    let mut len = [0u8; 4];
    if !read_full_or_eof(r, &mut len).map_err(ReadError::Io)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ReadError::Malformed(format!(
            "frame length {len} not in 1..={MAX_FRAME}"
        )));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).map_err(ReadError::Io)?;
    parse_frame(buf).map(Some).map_err(ReadError::Malformed)
}

// ---------------------------------------------------------------------------------------
// The pinned conntrack map
// ---------------------------------------------------------------------------------------

/// The pinned `DVR_CT` map of a host, through a handle of its own.
pub struct PinnedCt {
    map: BpfHash<MapData, CtKey, CtEntry>,
    /// BPF_MAP_LOOKUP_BATCH works on this kernel (else one lookup per entry).
    batch: bool,
}

impl PinnedCt {
    /// Open `<pin_dir>/DVR_CT` (`pin_dir` is the host's pin directory, `<bpffs>/<host>`).
    pub fn open(pin_dir: &Path) -> Result<Self, String> {
        let path = pin_dir.join(nat::CT);
        let data = MapData::from_pin(&path)
            .map_err(|e| format!("map {}: cannot open pin {}: {e}", nat::CT, path.display()))?;
        let map = Map::from_map_data(data)
            .and_then(BpfHash::try_from)
            .map_err(|e| format!("map {}: {e}", nat::CT))?;
        Ok(Self { map, batch: true })
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
        let r = crate::maps::lookup_batch(self.fd(), |k: &CtKey, e: &CtEntry| {
            if select(k, e) {
                out.push((*k, *e));
            }
        });
        match r {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => Err(format!("map {}: BPF_MAP_LOOKUP_BATCH: {e}", nat::CT)),
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
            let (k, e) = r.map_err(|e| format!("map {}: {e}", nat::CT))?;
            if select(&k, &e) {
                out.push((k, e));
            }
        }
        Ok(out)
    }

    fn write(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<(), String> {
        let now = crate::clock::conntrack_now_ns();
        for (k, e) in entries {
            let e = CtEntry {
                created_ns: now,
                last_seen_ns: now,
                ..*e
            };
            self.map
                .insert(k, e, 0)
                .map_err(|e| format!("map {}: {e}", nat::CT))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------

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

/// State of one peer of a [`Replicator`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub connected: bool,
    /// Entries the rate limit left for later rounds after the last round.
    pub pending: u64,
    /// Rounds (scans processed) on this peer's connections.
    pub rounds: u64,
}

/// Counters of a [`Replicator`] since it was spawned.
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
    /// Peers that have a sender thread (those of [`Replicator::set`], and those of a
    /// [`Replicator::sync_to`] in progress).
    pub peers: BTreeMap<SocketAddr, PeerStats>,
}

#[derive(Default)]
struct Counters {
    scans: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    marks_acked: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    peers: Mutex<BTreeMap<SocketAddr, PeerStats>>,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    fn error(&self, msg: String) {
        Self::add(&self.errors, 1);
        *lock(&self.last_error) = Some(msg);
    }
    fn peer(&self, peer: SocketAddr, f: impl FnOnce(&mut PeerStats)) {
        f(lock(&self.peers).entry(peer).or_default());
    }
}

/// Byte budget shared by all peers.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        let rate = rate as f64;
        // 200 ms worth, at least one frame of one record.
        let burst = (rate / 5.0).max((RECORDS_OVERHEAD + RECORD_LEN) as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }
    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }
    /// How many of `want` records (one frame) the budget allows now; they are charged.
    fn grant(&mut self, want: usize) -> usize {
        if self.rate <= 0.0 {
            return want;
        }
        self.refill();
        let avail = self.tokens - RECORDS_OVERHEAD as f64;
        if avail < RECORD_LEN as f64 {
            return 0;
        }
        let n = ((avail / RECORD_LEN as f64) as usize).min(want);
        self.tokens -= (RECORDS_OVERHEAD + n * RECORD_LEN) as f64;
        n
    }
    /// Charge bytes sent regardless of the budget (may go below zero).
    fn debit(&mut self, bytes: usize) {
        if self.rate > 0.0 {
            self.refill();
            self.tokens -= bytes as f64;
        }
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

/// The sending side: see the module documentation.
pub struct Replicator {
    sh: Arc<Shared>,
    scanner: Option<JoinHandle<()>>,
}

impl Replicator {
    /// Start the scanner thread; idle until [`Replicator::set`] names peers.
    pub fn spawn<S: CtStore>(store: S, cfg: Config) -> Result<Self, String> {
        let sh = Arc::new(Shared {
            cfg,
            bucket: Mutex::new(Bucket::new(cfg.rate_bytes_per_sec)),
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
        let c = &self.sh.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            scans: g(&c.scans),
            entries_sent: g(&c.entries),
            bytes_sent: g(&c.bytes),
            batches_sent: g(&c.batches),
            marks_acked: g(&c.marks_acked),
            connects: g(&c.connects),
            reconnects: g(&c.reconnects),
            errors: g(&c.errors),
            last_error: lock(&c.last_error).clone(),
            peers: lock(&c.peers).clone(),
        }
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
        Counters::add(&sh.counters.scans, 1);
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
                        Counters::add(&self.sh.counters.marks_acked, 1);
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
        Counters::add(&c.connects, 1);
        if self.ever_connected {
            Counters::add(&c.reconnects, 1);
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
        Counters::add(&self.sh.counters.bytes, bytes.len() as u64);
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
            Counters::add(&c.entries, idx.len() as u64);
            Counters::add(&c.batches, 1);
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
            lock(&self.sh.bucket).debit(RECORDS_OVERHEAD + chunk.len() * RECORD_LEN);
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
            let n = lock(&self.sh.bucket).grant(rest.len().min(SEND_BATCH));
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

// ---------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------

/// Counters of a [`Listener`] since it was spawned.
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

#[derive(Default)]
struct ListenerCounters {
    connections: AtomicU64,
    records: AtomicU64,
    batches: AtomicU64,
    marks: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

struct ListenerShared {
    store: Mutex<Box<dyn CtStore>>,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    allowed: Mutex<Option<Vec<IpAddr>>>,
    counters: ListenerCounters,
}

impl ListenerShared {
    fn reject(&self, msg: String) {
        Counters::add(&self.counters.rejected, 1);
        *lock(&self.counters.last_error) = Some(msg);
    }
}

/// The receiving side: see the module documentation. Dropping it closes the socket and
/// every connection.
pub struct Listener {
    addr: SocketAddr,
    sh: Arc<ListenerShared>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    /// Bind `bind` and serve connections in threads of their own, writing into `store`.
    pub fn spawn<S: CtStore>(bind: SocketAddr, store: S) -> Result<Self, String> {
        let l = TcpListener::bind(bind)
            .map_err(|e| format!("conntrack sync: cannot listen on {bind}: {e}"))?;
        let addr = l
            .local_addr()
            .map_err(|e| format!("conntrack sync: {bind}: {e}"))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("conntrack sync: {bind}: {e}"))?;
        let sh = Arc::new(ListenerShared {
            store: Mutex::new(Box::new(store)),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            allowed: Mutex::new(None),
            counters: ListenerCounters::default(),
        });
        let s2 = sh.clone();
        let accept = thread::Builder::new()
            .name("ctsync-listen".into())
            .spawn(move || accept_loop(l, s2))
            .map_err(|e| format!("conntrack sync: cannot start the listener thread: {e}"))?;
        Ok(Self {
            addr,
            sh,
            accept: Some(accept),
        })
    }

    /// The bound address (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accept connections only from these addresses (`None`: from anyone). Connections
    /// already open are kept.
    pub fn set_allowed(&self, peers: Option<Vec<IpAddr>>) {
        *lock(&self.sh.allowed) = peers;
    }

    pub fn stats(&self) -> ListenerStats {
        let c = &self.sh.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerStats {
            connections: g(&c.connections),
            active: lock(&self.sh.conns).len() as u64,
            records_written: g(&c.records),
            batches_written: g(&c.batches),
            marks_acked: g(&c.marks),
            rejected: g(&c.rejected),
            last_error: lock(&c.last_error).clone(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Wait up to `ms` for `fd` to be readable (or in error).
fn poll_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, valid for the duration of the call.
    let r = unsafe { libc::poll(&raw mut p, 1, ms) };
    r != 0
}

fn accept_loop(l: TcpListener, sh: Arc<ListenerShared>) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !sh.stop.load(Ordering::SeqCst) {
        if !poll_readable(l.as_raw_fd(), 100) {
            continue;
        }
        let (stream, peer) = match l.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!(error = %e, "conntrack sync: accept failed");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        if let Some(allowed) = lock(&sh.allowed).as_ref()
            && !allowed.contains(&peer.ip())
        {
            warn!(%peer, "conntrack sync: refused a connection from a host that is not a candidate");
            sh.reject(format!("{peer}: not an allowed peer"));
            continue;
        }
        if lock(&sh.conns).len() >= MAX_CONNECTIONS {
            warn!(%peer, "conntrack sync: refused a connection: {MAX_CONNECTIONS} already open");
            sh.reject(format!("{peer}: too many connections"));
            continue;
        }
        let clone = match stream
            .set_nonblocking(false)
            .and_then(|()| stream.try_clone())
        {
            Ok(c) => c,
            Err(e) => {
                warn!(%peer, error = %e, "conntrack sync: socket setup failed");
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        lock(&sh.conns).insert(id, clone);
        Counters::add(&sh.counters.connections, 1);
        let s2 = sh.clone();
        match thread::Builder::new()
            .name(format!("ctsync-rx {peer}"))
            .spawn(move || {
                serve(&s2, stream, peer);
                lock(&s2.conns).remove(&id);
            }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                warn!(%peer, error = %e, "conntrack sync: cannot start a connection thread");
                lock(&sh.conns).remove(&id);
            }
        }
    }
    for s in lock(&sh.conns).values() {
        let _ = s.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
}

enum Close {
    Eof,
    Malformed(String),
    Io(io::Error),
    Idle(Duration),
    Store(String),
}

fn serve(sh: &ListenerShared, stream: TcpStream, peer: SocketAddr) {
    debug!(%peer, "conntrack sync: connection accepted");
    match serve_conn(sh, stream) {
        Close::Eof => debug!(%peer, "conntrack sync: connection closed by the peer"),
        Close::Malformed(reason) => {
            warn!(%peer, %reason, "conntrack sync: malformed input; connection closed");
            sh.reject(format!("{peer}: {reason}"));
        }
        Close::Store(e) => {
            warn!(%peer, error = %e, "conntrack sync: cannot write received entries; connection closed");
            sh.reject(format!("{peer}: store: {e}"));
        }
        Close::Idle(t) => {
            info!(%peer, "conntrack sync: connection silent for {t:?}; closed");
        }
        Close::Io(e) => {
            if sh.stop.load(Ordering::SeqCst) {
                debug!(%peer, "conntrack sync: connection closed (listener stopping)");
            } else {
                info!(%peer, error = %e, "conntrack sync: connection failed");
            }
        }
    }
}

fn serve_conn(sh: &ListenerShared, stream: TcpStream) -> Close {
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return Close::Io(e),
    };
    if let Err(e) = w.set_write_timeout(Some(WRITE_TIMEOUT)) {
        return Close::Io(e);
    }
    let mut r = BufReader::with_capacity(1 << 16, stream);
    let mut buf = Vec::new();
    let hello = match read_frame(&mut r, &mut buf) {
        Ok(None) => return Close::Eof,
        Ok(Some(Frame::Hello(h))) => h,
        Ok(Some(f)) => return Close::Malformed(format!("{} frame before HELLO", f.name())),
        Err(ReadError::Malformed(m)) => return Close::Malformed(m),
        Err(ReadError::Io(e)) => return Close::Io(e),
    };
    if let Err(e) = check_hello(&hello) {
        return Close::Malformed(format!("peer speaks {e}"));
    }
    let idle = (hello.keepalive_ms > 0)
        .then(|| (Duration::from_millis(u64::from(hello.keepalive_ms)) * 3).max(KEEPALIVE_MIN * 3));
    if let Err(e) = r.get_ref().set_read_timeout(idle) {
        return Close::Io(e);
    }
    if let Err(e) = w.write_all(&hello_frame(Duration::ZERO)) {
        return Close::Io(e);
    }
    let c = &sh.counters;
    loop {
        match read_frame(&mut r, &mut buf) {
            Ok(None) => return Close::Eof,
            Ok(Some(Frame::Records(recs))) => {
                if let Err(e) = lock(&sh.store).write(&recs) {
                    return Close::Store(e);
                }
                Counters::add(&c.records, recs.len() as u64);
                Counters::add(&c.batches, 1);
            }
            Ok(Some(Frame::Mark(id))) => {
                if let Err(e) = w.write_all(&id_frame(T_ACK, id)) {
                    return Close::Io(e);
                }
                Counters::add(&c.marks, 1);
            }
            Ok(Some(f)) => return Close::Malformed(format!("unexpected {} frame", f.name())),
            Err(ReadError::Malformed(m)) => return Close::Malformed(m),
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Close::Idle(idle.unwrap_or_default());
            }
            Err(ReadError::Io(e)) => return Close::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvr_common::nat::{CT_DNAT, CT_PAT, CT_SNAT, TCP_ACK, TCP_FIN};

    type Table = Arc<Mutex<BTreeMap<CtKey, CtEntry>>>;

    /// A BTreeMap store; `delay` slows every write down.
    #[derive(Clone, Default)]
    struct Mem {
        t: Table,
        delay: Duration,
    }

    impl Mem {
        fn with(entries: impl IntoIterator<Item = (CtKey, CtEntry)>) -> Self {
            let m = Self::default();
            lock(&m.t).extend(entries);
            m
        }
        fn snapshot(&self) -> BTreeMap<CtKey, CtEntry> {
            lock(&self.t).clone()
        }
        fn len(&self) -> usize {
            lock(&self.t).len()
        }
        fn update(&self, f: impl FnOnce(&mut BTreeMap<CtKey, CtEntry>)) {
            f(&mut lock(&self.t));
        }
    }

    impl CtStore for Mem {
        fn scan(
            &mut self,
            select: &dyn Fn(&CtKey, &CtEntry) -> bool,
        ) -> Result<Vec<(CtKey, CtEntry)>, String> {
            Ok(lock(&self.t)
                .iter()
                .filter(|(k, e)| select(k, e))
                .map(|(k, e)| (*k, *e))
                .collect())
        }
        fn write(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<(), String> {
            if !self.delay.is_zero() {
                thread::sleep(self.delay);
            }
            lock(&self.t).extend(entries.iter().copied());
            Ok(())
        }
    }

    fn entry(i: u32) -> (CtKey, CtEntry) {
        let k = CtKey {
            zone: 0,
            saddr_be: 0x0a00_0000 + i,
            daddr_be: 0x0101_0101,
            sport_be: (i % 60_000) as u16 + 1024,
            dport_be: 443,
            proto: 6,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: 0x0a01_0005,
            fip_be: 0x0808_0808,
            fixed_be: 0x0a01_0005,
            peer_zone: 101,
            kind: CT_DNAT | CT_PAT,
            tcp_flags: TCP_ACK,
            nat_port_be: (i % 50_000) as u16 + 1,
            _reserved: 0,
            created_ns: u64::from(i) * 7,
            last_seen_ns: u64::from(i) * 11,
            packets: u64::from(i),
            bytes: u64::from(i) * 1500,
        };
        (k, e)
    }

    fn entries(n: u32) -> Vec<(CtKey, CtEntry)> {
        (0..n).map(entry).collect()
    }

    fn all() -> Select {
        Arc::new(|_: &CtKey, _: &CtEntry| true)
    }

    fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn check(ok: bool, what: &str) -> Result<(), String> {
        if ok { Ok(()) } else { Err(what.to_string()) }
    }

    fn cfg(rate: u64, refresh: Duration) -> Config {
        Config {
            rate_bytes_per_sec: rate,
            scan_interval: Duration::from_millis(20),
            refresh_interval: refresh,
            port: PORT,
        }
    }

    fn listen(store: Mem) -> Result<Listener, String> {
        Listener::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), store)
    }

    /// `(src, dst, l, peer, r)`: a replicator `r` streaming `src` to one listener `l` (at
    /// `peer`) that writes into `dst`.
    type Link = (Mem, Mem, Listener, SocketAddr, Replicator);

    /// `n` entries streamed without a rate limit to a fresh listener, all sent again every
    /// `refresh`.
    fn link(n: u32, refresh: Duration) -> Result<Link, String> {
        let src = Mem::with(entries(n));
        let dst = Mem::default();
        let l = listen(dst.clone())?;
        let peer = l.local_addr();
        let r = Replicator::spawn(src.clone(), cfg(0, refresh))?;
        r.set(vec![peer], all());
        Ok((src, dst, l, peer, r))
    }

    /// A [`link`] of `n` entries without refreshes, once the receiver holds them all (else the
    /// error `what`).
    fn replicated(n: u32, what: &str) -> Result<Link, String> {
        let link = link(n, Duration::from_secs(600))?;
        let (src, dst) = (&link.0, &link.1);
        check(
            wait_until(Duration::from_secs(10), || dst.snapshot() == src.snapshot()),
            what,
        )?;
        Ok(link)
    }

    fn rounds(r: &Replicator, peer: SocketAddr) -> u64 {
        r.stats().peers.get(&peer).map_or(0, |p| p.rounds)
    }

    /// Wait for `n` more rounds on `peer`'s connection.
    fn more_rounds(r: &Replicator, peer: SocketAddr, n: u64) -> Result<(), String> {
        let r0 = rounds(r, peer);
        check(
            wait_until(Duration::from_secs(10), || rounds(r, peer) >= r0 + n),
            "rounds do not advance",
        )
    }

    #[test]
    fn ctsync_record_bytes_are_the_in_memory_layout() -> Result<(), String> {
        let (k, e) = entry(77);
        let mut out = Vec::new();
        put_record(&mut out, &k, &e);
        check(out.len() == RECORD_LEN, "record length")?;
        if cfg!(target_endian = "little") {
            // SAFETY: both are #[repr(C)] plain data without implicit padding.
            let (kb, eb) = unsafe {
                (
                    std::slice::from_raw_parts((&raw const k).cast::<u8>(), KEY_LEN),
                    std::slice::from_raw_parts((&raw const e).cast::<u8>(), ENTRY_LEN),
                )
            };
            check(out.get(..KEY_LEN) == Some(kb), "key bytes")?;
            check(out.get(KEY_LEN..) == Some(eb), "entry bytes")?;
        }
        check(get_record(&out)? == (k, e), "round trip")?;
        let mut bad = out.clone();
        if let Some(b) = bad.get_mut(17) {
            *b = 1;
        }
        check(get_record(&bad).is_err(), "non-zero key padding accepted")
    }

    #[test]
    fn ctsync_frames_round_trip_and_garbage_never_panics() -> Result<(), String> {
        let recs = entries(3);
        let mut stream = hello_frame(Duration::from_millis(1500));
        let mut f = Vec::new();
        records_frame(&mut f, recs.iter());
        stream.extend_from_slice(&f);
        stream.extend_from_slice(&id_frame(T_MARK, 9));
        stream.extend_from_slice(&id_frame(T_ACK, u64::MAX));
        let mut r = io::Cursor::new(stream.clone());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut buf).map_err(|e| format!("{e:?}"))? {
            got.push(f);
        }
        check(
            got == vec![
                Frame::Hello(Hello {
                    version: VERSION,
                    record_len: RECORD_LEN as u16,
                    keepalive_ms: 1500,
                }),
                Frame::Records(recs),
                Frame::Mark(9),
                Frame::Ack(u64::MAX),
            ],
            "frames differ",
        )?;
        // Every truncation ends in an error or a clean end, never a panic.
        for cut in 0..stream.len() {
            let mut r = io::Cursor::new(stream.get(..cut).unwrap_or_default());
            while let Ok(Some(_)) = read_frame(&mut r, &mut buf) {}
        }
        // Random bytes, and random bodies behind a valid length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let n = (rnd() % 200) as usize;
            let body: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            let _ = parse_frame(&body);
            let mut framed = (body.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&body);
            let _ = read_frame(&mut io::Cursor::new(framed), &mut buf);
            let _ = read_frame(&mut io::Cursor::new(body), &mut buf);
        }
        check(
            matches!(
                read_frame(&mut io::Cursor::new(u32::MAX.to_le_bytes()), &mut buf),
                Err(ReadError::Malformed(_))
            ),
            "oversized frame accepted",
        )
    }

    #[test]
    fn ctsync_token_bucket_grants_what_the_rate_allows() -> Result<(), String> {
        let mut b = Bucket::new(10_000);
        // Burst: 2000 bytes = 26 records in one frame.
        let first = b.grant(1000);
        check(first == (2000 - RECORDS_OVERHEAD) / RECORD_LEN, "burst")?;
        check(b.grant(1000) == 0, "exhausted budget still grants")?;
        let mut unlimited = Bucket::new(0);
        check(unlimited.grant(512) == 512, "unlimited")
    }

    #[test]
    fn ctsync_replicates_and_resends_only_changes() -> Result<(), String> {
        let (src, dst, _l, peer, r) = replicated(300, "entries not replicated")?;
        more_rounds(&r, peer, 3)?;
        check(r.stats().entries_sent == 300, "unchanged entries re-sent")?;

        // Counters and timestamps move: nothing to send.
        src.update(|t| {
            for e in t.values_mut() {
                e.packets += 10;
                e.bytes += 15_000;
                e.last_seen_ns += 1_000_000;
            }
        });
        more_rounds(&r, peer, 3)?;
        let s = r.stats();
        check(s.entries_sent == 300, "counter changes re-sent")?;
        check(
            dst.snapshot().get(&entry(5).0).map(|e| e.packets) == Some(5),
            "receiver got the new counters",
        )?;

        // Flags, translation, a new flow: exactly those three.
        let (k5, _) = entry(5);
        let (k6, _) = entry(6);
        let (k_new, e_new) = entry(100_000);
        src.update(|t| {
            if let Some(e) = t.get_mut(&k5) {
                e.tcp_flags |= TCP_FIN;
            }
            if let Some(e) = t.get_mut(&k6) {
                e.nat_port_be = 999;
            }
            t.insert(k_new, e_new);
        });
        check(
            wait_until(Duration::from_secs(10), || {
                let d = dst.snapshot();
                d.get(&k5).map(|e| e.tcp_flags) == Some(TCP_ACK | TCP_FIN)
                    && d.get(&k6).map(|e| e.nat_port_be) == Some(999)
                    && d.get(&k_new) == Some(&e_new)
            }),
            "changes not replicated",
        )?;
        more_rounds(&r, peer, 3)?;
        let s = r.stats();
        check(
            s.entries_sent == 303,
            &format!("sent {} entries, want 303", s.entries_sent),
        )?;
        check(
            s.batches_sent >= 2 && s.connects == 1 && s.reconnects == 0,
            "counters",
        )?;
        check(
            s.peers
                .get(&peer)
                .is_some_and(|p| p.connected && p.pending == 0),
            "peer state",
        )?;

        // A narrower selection stops sending the others; deselected entries are not deleted.
        r.set(vec![peer], Arc::new(move |k: &CtKey, _: &CtEntry| *k == k5));
        src.update(|t| {
            for e in t.values_mut() {
                e.tcp_flags |= TCP_FIN;
            }
        });
        more_rounds(&r, peer, 3)?;
        check(r.stats().entries_sent == 303, "unselected entries sent")?;
        check(dst.len() == 301, "receiver lost entries")
    }

    #[test]
    fn ctsync_refresh_sends_everything_again() -> Result<(), String> {
        let (src, dst, _l, _, r) = link(50, Duration::from_millis(200))?;
        check(
            wait_until(Duration::from_secs(10), || r.stats().entries_sent >= 200),
            "no refreshes",
        )?;
        check(r.stats().entries_sent % 50 == 0, "partial refresh")?;
        check(dst.snapshot() == src.snapshot(), "receiver differs")
    }

    #[test]
    fn ctsync_sync_to_returns_after_the_receiver_wrote_everything() -> Result<(), String> {
        let src = Mem::with(entries(2000));
        // 4 frames of 512 at 50 ms each: an early return would see a partial table.
        let dst = Mem {
            delay: Duration::from_millis(50),
            ..Mem::default()
        };
        let l = listen(dst.clone())?;
        let peer = l.local_addr();
        let r = Replicator::spawn(src.clone(), cfg(10_000, Duration::from_secs(600)))?;
        // Selection only, no streaming peers: a connection just for the dump, which the
        // rate limit does not hold back (10 kB/s would take 15 s).
        r.set(Vec::new(), all());
        r.sync_to(peer, Duration::from_secs(10))?;
        check(
            dst.snapshot() == src.snapshot(),
            "sync_to returned before the writes",
        )?;
        check(r.stats().marks_acked == 1, "mark not counted")?;

        // Through a streaming connection: the dump is a fresh scan.
        r.set(vec![peer], all());
        let extra: Vec<_> = (5000..5600).map(entry).collect();
        src.update(|t| t.extend(extra.iter().copied()));
        r.sync_to(peer, Duration::from_secs(10))?;
        check(dst.snapshot() == src.snapshot(), "second sync incomplete")?;

        // Failures: nobody listening, and a peer that never acknowledges.
        let closed = {
            let t = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            t.local_addr().map_err(|e| e.to_string())?
        };
        check(
            r.sync_to(closed, Duration::from_secs(5)).is_err(),
            "sync to nobody",
        )?;
        let mute = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let mute_addr = mute.local_addr().map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let res = r.sync_to(mute_addr, Duration::from_millis(300));
        check(res.is_err(), "sync to a mute peer succeeded")?;
        check(
            t0.elapsed() < Duration::from_secs(5),
            "timeout not honoured",
        )?;
        drop(mute);
        // The temporary peers go away again.
        check(
            wait_until(Duration::from_secs(10), || {
                r.stats().peers.keys().copied().collect::<Vec<_>>() == vec![peer]
            }),
            "temporary peers linger",
        )
    }

    #[test]
    fn ctsync_rate_limit_bounds_bytes_per_second() -> Result<(), String> {
        const RATE: u64 = 100_000;
        let src = Mem::with(entries(2000));
        let (a, b) = (Mem::default(), Mem::default());
        let la = listen(a.clone())?;
        let lb = listen(b.clone())?;
        let r = Replicator::spawn(src.clone(), cfg(RATE, Duration::from_secs(600)))?;
        r.set(vec![la.local_addr(), lb.local_addr()], all());
        check(
            wait_until(Duration::from_secs(10), || r.stats().bytes_sent > 0),
            "nothing sent",
        )?;
        let (t0, b0) = (Instant::now(), r.stats().bytes_sent);
        check(
            wait_until(Duration::from_secs(10), || {
                t0.elapsed() >= Duration::from_millis(1500)
            }),
            "clock",
        )?;
        let (dt, b1) = (t0.elapsed().as_secs_f64(), r.stats().bytes_sent);
        let rate = (b1 - b0) as f64 / dt;
        // Both peers share one budget: 2 x 152 kB needs about 3 s.
        check(
            rate <= RATE as f64 * 1.3 + RATE as f64 / 5.0 / dt,
            &format!("{rate:.0} B/s over a {RATE} B/s limit"),
        )?;
        check(rate >= RATE as f64 * 0.5, &format!("only {rate:.0} B/s"))?;
        check(
            r.stats().peers.values().any(|p| p.pending > 0),
            "no backlog reported",
        )?;
        // Nothing is lost: the backlog drains.
        check(
            wait_until(Duration::from_secs(20), || {
                a.snapshot() == src.snapshot() && b.snapshot() == src.snapshot()
            }),
            "backlog never sent",
        )?;
        check(
            r.stats().entries_sent == 4000,
            "entries sent more than once",
        )
    }

    #[test]
    fn ctsync_garbage_closes_only_its_connection() -> Result<(), String> {
        let (src, dst, l, peer, r) = link(100, Duration::from_secs(600))?;
        check(
            wait_until(Duration::from_secs(10), || dst.len() == 100),
            "not replicated",
        )?;

        let hello = hello_frame(Duration::from_secs(1));
        let mut bad_version = hello.clone();
        if let Some(b) = bad_version.get_mut(13) {
            *b = 2;
        }
        let mut bad_count = hello.clone();
        let mut f = Vec::new();
        records_frame(&mut f, entries(2).iter());
        if let Some(b) = f.get_mut(5) {
            *b = 3; // count 3, 2 records
        }
        bad_count.extend_from_slice(&f);
        let mut bad_pad = hello.clone();
        let (k_pad, _) = entry(4242);
        records_frame(&mut f, [entry(4242)].iter());
        if let Some(b) = f.get_mut(9 + 17) {
            *b = 0xff;
        }
        bad_pad.extend_from_slice(&f);
        let mut huge = hello.clone();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut ack_from_sender = hello.clone();
        ack_from_sender.extend_from_slice(&id_frame(T_ACK, 1));
        let mut before_hello = Vec::new();
        records_frame(&mut before_hello, entries(1).iter());
        let inputs: Vec<(&str, Vec<u8>)> = vec![
            ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("records before hello", before_hello),
            ("version 2", bad_version),
            ("count mismatch", bad_count),
            ("key padding", bad_pad),
            ("huge length", huge),
            ("ack from the sender", ack_from_sender),
        ];
        let n_inputs = inputs.len() as u64;
        for (what, bytes) in inputs {
            let mut s = TcpStream::connect(peer).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(&bytes).map_err(|e| e.to_string())?;
            // The listener may answer the HELLO; then it must close.
            let mut sink = Vec::new();
            match s.read_to_end(&mut sink) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(format!("{what}: connection not closed: {e}")),
            }
        }
        check(
            wait_until(Duration::from_secs(10), || l.stats().rejected >= n_inputs),
            "rejections not counted",
        )?;
        check(
            !dst.snapshot().contains_key(&k_pad),
            "malformed record written",
        )?;
        check(
            l.stats()
                .last_error
                .is_some_and(|e| e.contains("127.0.0.1")),
            "reason does not name the peer",
        )?;

        // The good connection is untouched.
        let (k, e) = entry(7777);
        src.update(|t| {
            t.insert(k, e);
        });
        check(
            wait_until(Duration::from_secs(10), || {
                dst.snapshot().get(&k) == Some(&e)
            }),
            "good connection broken",
        )?;
        r.sync_to(peer, Duration::from_secs(10))?;
        let s = r.stats();
        check(s.connects == 1 && s.reconnects == 0, "sender reconnected")?;

        // Refused peers.
        l.set_allowed(Some(vec![IpAddr::from([192, 0, 2, 1])]));
        let mut s = TcpStream::connect(peer).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let _ = s.write_all(&hello_frame(Duration::ZERO));
        let mut sink = Vec::new();
        check(
            matches!(s.read_to_end(&mut sink), Ok(0)) || sink.is_empty(),
            "refused peer got an answer",
        )
    }

    #[test]
    fn ctsync_receiver_restart_gets_a_full_dump() -> Result<(), String> {
        let (src, _first, l, peer, r) = replicated(500, "not replicated")?;
        drop(l);
        check(
            wait_until(Duration::from_secs(10), || {
                r.stats().peers.get(&peer).is_some_and(|p| !p.connected)
            }),
            "loss not noticed",
        )?;
        let second = Mem::default();
        let l2 = Listener::spawn(peer, second.clone())?;
        check(
            wait_until(Duration::from_secs(20), || {
                second.snapshot() == src.snapshot()
            }),
            "no full dump after the restart",
        )?;
        let s = r.stats();
        check(s.reconnects >= 1 && s.entries_sent >= 1000, "counters")?;
        check(
            s.last_error.is_some() && s.errors >= 1,
            "error not recorded",
        )?;
        drop(l2);
        Ok(())
    }

    #[test]
    fn ctsync_sender_notices_a_silent_peer() -> Result<(), String> {
        // A peer that accepts and never answers (not even HELLO): the keepalive mark
        // goes unacknowledged and the sender reconnects.
        let mute = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = mute.local_addr().map_err(|e| e.to_string())?;
        let r = Replicator::spawn(Mem::with(entries(10)), cfg(0, Duration::from_millis(100)))?;
        r.set(vec![addr], all());
        check(
            wait_until(Duration::from_secs(15), || r.stats().reconnects >= 1),
            "silent peer not dropped",
        )?;
        check(
            r.stats()
                .last_error
                .is_some_and(|e| e.contains("keepalive")),
            "reason",
        )
    }

    #[test]
    fn ctsync_pinned_map_round_trip() -> Result<(), String> {
        use std::os::fd::{FromRawFd, OwnedFd};
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
        let attr = CreateAttr {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: KEY_LEN as u32,
            value_size: ENTRY_LEN as u32,
            max_entries: 8192,
            map_flags: 0,
        };
        // SAFETY: BPF_MAP_CREATE reads the attribute we own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0 as libc::c_long,
                &raw const attr,
                size_of::<CreateAttr>() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(format!(
                "this test needs root (CAP_BPF): cannot create a BPF map: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let dir =
            std::path::PathBuf::from(format!("/sys/fs/bpf/ctsync-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Err(format!(
                "this test needs bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf): {e}"
            ));
        }
        let result = (|| {
            let data = MapData::from_fd(fd).map_err(|e| e.to_string())?;
            data.pin(dir.join(nat::CT)).map_err(|e| e.to_string())?;
            drop(data);
            let mut ct = PinnedCt::open(&dir)?;
            let want = entries(3000);
            let before = crate::clock::conntrack_now_ns();
            ct.write(&want)?;
            let even = |k: &CtKey, _: &CtEntry| k.saddr_be.is_multiple_of(2);
            for batch in [true, false] {
                ct.batch = batch;
                let mut got = ct.scan(&even)?;
                check(ct.batch == batch, "batch lookup fell back")?;
                got.sort_by_key(|(k, _)| *k);
                check(
                    got.len() == 1500,
                    &format!("batch {batch}: {} entries", got.len()),
                )?;
                for ((k, e), (wk, we)) in got.iter().zip(want.iter().filter(|(k, e)| even(k, e))) {
                    check(k == wk, "key")?;
                    check(
                        e.created_ns >= before && e.last_seen_ns == e.created_ns,
                        "timestamps not the receiver's",
                    )?;
                    check(
                        CtEntry {
                            created_ns: we.created_ns,
                            last_seen_ns: we.last_seen_ns,
                            ..*e
                        } == *we,
                        "entry",
                    )?;
                }
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(dir.join(nat::CT));
        let _ = std::fs::remove_dir(&dir);
        result
    }

    #[test]
    fn ctsync_kind_constants_survive_the_wire() -> Result<(), String> {
        let (k, mut e) = entry(1);
        e.kind = CT_SNAT | CT_PAT;
        let mut out = Vec::new();
        records_frame(&mut out, [(k, e)].iter());
        let body = out.get(4..).ok_or("short")?;
        check(
            parse_frame(body)? == Frame::Records(vec![(k, e)]),
            "records",
        )
    }
}
