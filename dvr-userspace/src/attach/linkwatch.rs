//! Link notifications: a NETLINK_ROUTE socket subscribed to RTNLGRP_LINK tells when a link
//! of the network namespace appears, goes away or is renamed, so the agent need not list
//! the interfaces every 100 ms to see a tap come or go.
//!
//! How the agent's loop is meant to use it (not wired in yet):
//!
//! ```no_run
//! # use std::time::{Duration, Instant};
//! # use dvr_userspace::attach::{LinkWatch, interfaces};
//! # let (poll, rescan) = (Duration::from_millis(100), Duration::from_secs(10));
//! // Once, in the agent's network namespace, before the first full scan. When it cannot
//! // be opened, keep listing interfaces every 100 ms as before.
//! let mut watch = LinkWatch::open().ok();
//! let mut last_scan = Instant::now();
//! loop {
//!     let scan = match watch.as_mut() {
//!         // Cheap and non-blocking; a slow rescan stays as a safety net.
//!         Some(w) => w.changed() || last_scan.elapsed() >= rescan,
//!         None => last_scan.elapsed() >= poll,
//!     };
//!     if scan {
//!         last_scan = Instant::now();
//!         let _now = interfaces(); // then attach/detach as the agent's tick does
//!     }
//!     // Sleep until a link event or the next look at the state source, whichever first.
//!     if let Some(w) = &watch {
//!         w.wait(Duration::from_millis(20));
//!     }
//! #   break;
//! }
//! ```
//!
//! [`LinkWatch::changed`] only says that the name -> ifindex list may differ from the last
//! call; the caller lists the interfaces ([`super::netlink::interfaces`]) to see how.
//! Changes of state (up/down, carrier, MTU) of a known link are not reported.
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    time::Duration,
};

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::netlink::{Body, Link, NetlinkError, Rtnl, parse_datagram};

/// Notifications come one link per message; 64 KiB holds a burst of them per read.
const RECV_BUF: usize = 64 * 1024;

/// Link add/remove/rename notifications of the calling thread's network namespace.
pub struct LinkWatch {
    sock: Socket,
    /// ifindex -> name, as the notifications so far describe the namespace.
    known: BTreeMap<u32, String>,
    buf: Vec<u8>,
}

/// The namespace's links now: ifindex -> name.
fn snapshot() -> Result<BTreeMap<u32, String>, NetlinkError> {
    Ok(Rtnl::open()?
        .links()?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect())
}

/// Applies one notification to `known`; true when a link appeared, went away or changed
/// its name (the name -> ifindex list changed).
fn note(known: &mut BTreeMap<u32, String>, body: Body) -> bool {
    match body {
        Body::NewLink(Link { index, name, .. }) if !name.is_empty() => {
            let changed = known.get(&index) != Some(&name);
            known.insert(index, name);
            changed
        }
        Body::DelLink(Link { index, .. }) => known.remove(&index).is_some(),
        _ => false,
    }
}

impl LinkWatch {
    /// Subscribes to RTNLGRP_LINK in the calling thread's network namespace (first, so no
    /// event between the two is missed), then lists the links to compare events with.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.add_membership(libc::RTNLGRP_LINK)
            .map_err(NetlinkError::Socket)?;
        sock.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        Ok(Self {
            sock,
            known: snapshot()?,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Reads every pending notification without blocking; true when a link appeared, went
    /// away or was renamed since the last call. Also true when notifications were lost (the
    /// socket overran: the list is then read afresh) or the socket failed: the caller
    /// should list the interfaces.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => match parse_datagram(self.buf.get(..n).unwrap_or_default()) {
                    Ok(msgs) => {
                        for m in msgs {
                            changed |= note(&mut self.known, m.body);
                        }
                    }
                    Err(_) => changed = true,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return changed,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Notifications were dropped: start again from the current list.
                    if let Ok(known) = snapshot() {
                        self.known = known;
                    }
                    changed = true;
                }
                Err(_) => return true,
            }
        }
    }

    /// Sleeps until a notification (or a socket error, such as an overrun) is pending or
    /// `timeout` has passed; true when something is pending (then call [`Self::changed`]).
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms =
            libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd that lives across the call, for a socket this struct owns.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0
    }
}

impl AsFd for LinkWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            ..Link::default()
        }
    }

    #[test]
    fn only_appearing_going_and_renamed_links_count() {
        let mut known = BTreeMap::from([(1, "lo".to_string()), (2, "eth0".to_string())]);
        // A state change of a known link (up/down, carrier) repeats its name.
        assert!(!note(&mut known, Body::NewLink(link(2, "eth0"))));
        assert!(note(&mut known, Body::NewLink(link(3, "tap1"))));
        assert!(!note(&mut known, Body::NewLink(link(3, "tap1"))));
        assert!(note(&mut known, Body::NewLink(link(3, "tap2"))));
        assert!(note(&mut known, Body::DelLink(link(3, "tap2"))));
        assert!(!note(&mut known, Body::DelLink(link(3, "tap2"))));
        // Recreated under the same name: gone, then back with a new ifindex.
        assert!(note(&mut known, Body::DelLink(link(2, "eth0"))));
        assert!(note(&mut known, Body::NewLink(link(4, "eth0"))));
        assert!(!note(&mut known, Body::NewLink(link(5, ""))));
        assert!(!note(&mut known, Body::Ack));
        assert_eq!(
            known,
            BTreeMap::from([(1, "lo".to_string()), (4, "eth0".to_string())])
        );
    }
}
