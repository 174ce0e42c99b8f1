//! The receiving side of conntrack sync, on every candidate: a [`Listener`] accepts
//! connections and writes what it receives into its [`CtStore`], one batch per frame; a mark
//! is acknowledged after everything before it was written. Input that is not well-formed
//! closes that connection (logged with the peer's address) and nothing else.
use std::{
    collections::HashMap,
    io::{self, BufReader, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use tracing::{debug, info, warn};

use super::{
    stats::{ListenerCounters, ListenerStats, add, lock},
    store::CtStore,
    wire::{
        Frame, KEEPALIVE_MIN, ReadError, T_ACK, WRITE_TIMEOUT, check_hello, hello_frame, id_frame,
        read_frame,
    },
};

/// Concurrent connections a listener serves; more are refused.
const MAX_CONNECTIONS: usize = 64;

struct ListenerShared {
    store: Mutex<Box<dyn CtStore>>,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    allowed: Mutex<Option<Vec<IpAddr>>>,
    counters: ListenerCounters,
}

/// The receiving side: see the [`ctsync`](super) module documentation. Dropping it closes
/// the socket and every connection.
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
        self.sh.counters.snapshot(lock(&self.sh.conns).len() as u64)
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
            sh.counters.reject(format!("{peer}: not an allowed peer"));
            continue;
        }
        if lock(&sh.conns).len() >= MAX_CONNECTIONS {
            warn!(%peer, "conntrack sync: refused a connection: {MAX_CONNECTIONS} already open");
            sh.counters.reject(format!("{peer}: too many connections"));
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
        add(&sh.counters.connections, 1);
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
            sh.counters.reject(format!("{peer}: {reason}"));
        }
        Close::Store(e) => {
            warn!(%peer, error = %e, "conntrack sync: cannot write received entries; connection closed");
            sh.counters.reject(format!("{peer}: store: {e}"));
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
                add(&c.records, recs.len() as u64);
                add(&c.batches, 1);
            }
            Ok(Some(Frame::Mark(id))) => {
                if let Err(e) = w.write_all(&id_frame(T_ACK, id)) {
                    return Close::Io(e);
                }
                add(&c.marks, 1);
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
