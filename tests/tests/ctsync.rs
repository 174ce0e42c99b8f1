//! Conntrack sync (`dvr_userspace::ctsync`) end to end: a [`Replicator`] and [`Listener`]s
//! over loopback TCP with their threads, deadlines and rate limit, garbage from peers, and
//! [`PinnedCt`] on a real pinned BPF map. In-memory stores stand in for the conntrack map
//! except in `ctsync_pinned_map_round_trip`, which needs root (CAP_BPF) and bpffs at
//! `/sys/fs/bpf` and fails with that message without them. Timing-sensitive: run with
//! `--test-threads=1` (as `cargo xtask test` does).
use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use dvr_common::{
    maps,
    nat::{CT_DNAT, CT_PAT, CtEntry, CtKey, TCP_ACK, TCP_FIN},
};
use dvr_tests::pins::{BPF_MAP_TYPE_LRU_HASH, PinDir};
use dvr_userspace::{
    clock,
    ctsync::{
        Config, CtStore, Listener, PORT, PinnedCt, Replicator, Select,
        wire::{ENTRY_LEN, KEY_LEN, T_ACK, hello_frame, id_frame, records_frame},
    },
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
    // The sender counts a batch once its write returned, which may be after the receiver
    // applied it: wait for the count, then check it went no further.
    check(
        wait_until(Duration::from_secs(5), || r.stats().entries_sent >= 4000),
        "sent entries not counted",
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
    // Removed with the map on drop, also on failure.
    let pins = PinDir::new("ctsync-test").map_err(|e| format!("{e:#}"))?;
    pins.pin_map(
        maps::DVR_CT,
        BPF_MAP_TYPE_LRU_HASH,
        KEY_LEN,
        ENTRY_LEN,
        8192,
    )
    .map_err(|e| format!("{e:#}"))?;
    let mut ct = PinnedCt::open(pins.path())?;
    let want = entries(3000);
    let before = clock::conntrack_now_ns();
    ct.write(&want)?;
    let even = |k: &CtKey, _: &CtEntry| k.saddr_be.is_multiple_of(2);
    for batch in [true, false] {
        ct.set_batch(batch);
        let mut got = ct.scan(&even)?;
        check(ct.batch() == batch, "batch lookup fell back")?;
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
}
