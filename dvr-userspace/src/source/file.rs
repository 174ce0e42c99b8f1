//! A watched JSON file as the state source ([`FileSource`]): a new version is noticed by its
//! stamp (mtime, length, inode), and inotify on the file's directory wakes the agent at once
//! on a write (so a file replaced by rename is seen too). A spurious wake-up or a missed
//! event costs nothing but a stat; the watch only removes the polling delay.
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tracing::warn;

/// Identity of the state file's current version (changes on every write or replace).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// The live side of a state file.
pub struct FileSource {
    path: PathBuf,
    stamp: Option<FileStamp>,
    watch: Option<DirWatch>,
}

impl FileSource {
    /// Start watching `path` and read its first document.
    pub fn open(path: &Path) -> std::io::Result<(Self, String)> {
        let stamp = stamp(path);
        let text = std::fs::read_to_string(path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                stamp,
                watch: DirWatch::new(path),
            },
            text,
        ))
    }

    /// Wait up to `timeout` for a write of the file.
    pub fn wait(&self, timeout: Duration) {
        match &self.watch {
            Some(w) => {
                w.wait(timeout);
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// The file's document if it changed since the last call. An unreadable file is logged
    /// and skipped: the agent keeps its last good state.
    pub fn poll(&mut self) -> Option<String> {
        let now = stamp(&self.path);
        if now == self.stamp {
            return None;
        }
        self.stamp = now;
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "state file unreadable; keeping the last good state");
                None
            }
        }
    }
}

/// Wake-up on writes of one file: inotify on its directory.
pub struct DirWatch {
    fd: OwnedFd,
    /// The watched file's name within the directory: other files' events are ignored.
    name: Vec<u8>,
}

impl DirWatch {
    /// Watch the directory holding `file`; None when inotify is unavailable.
    pub fn new(file: &Path) -> Option<Self> {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: plain syscalls; the fd is owned by the OwnedFd from here on.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_MODIFY;
            if libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) < 0 {
                return None;
            }
            let name = file.file_name()?.as_encoded_bytes().to_vec();
            Some(Self { fd, name })
        }
    }

    /// Block until the watched file changed or `timeout` passed.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            let n = unsafe {
                libc::poll(
                    &mut pfd,
                    1,
                    left.as_millis().clamp(1, i32::MAX as u128) as i32,
                )
            };
            if n <= 0 {
                return false;
            }
            if self.drain() {
                return true;
            }
        }
    }

    /// Read pending events; true if one names the watched file.
    fn drain(&self) -> bool {
        let mut hit = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a stack buffer of its size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            hit |= names(&buf[..n as usize]).any(|name| name == self.name.as_slice());
        }
    }
}

/// File names in a buffer of `struct inotify_event`s (wd, mask, cookie, len, name[len]).
fn names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    const HDR: usize = 16;
    let mut off = 0;
    std::iter::from_fn(move || {
        let hdr = buf.get(off..off + HDR)?;
        let len = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
        let name = buf.get(off + HDR..off + HDR + len)?;
        off += HDR + len;
        Some(name.split(|b| *b == 0).next().unwrap_or_default())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_split_and_unpadded() {
        let mut buf = Vec::new();
        for name in ["state.json", "agent.log"] {
            let padded = (name.len() + 1).next_multiple_of(16);
            buf.extend_from_slice(&[0u8; 12]);
            buf.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(padded, 0);
            buf.extend_from_slice(&n);
        }
        let got: Vec<&[u8]> = names(&buf).collect();
        assert_eq!(got, vec![b"state.json".as_slice(), b"agent.log".as_slice()]);
    }
}
