//! The agent's control loop: watch the state file and the host's taps, recompile on any
//! change, reconcile the maps, attach/detach taps. Single-threaded and poll-driven (100 ms),
//! which bounds how late a change or a new tap is seen.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use crate::{
    attach::{AttachError, Datapath, interfaces},
    compile::{self, Compiled},
    model::State,
    reconcile,
};

pub const POLL: Duration = Duration::from_millis(100);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Install SIGTERM/SIGINT handlers that ask the loop to stop.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

impl From<AttachError> for AgentError {
    fn from(e: AttachError) -> Self {
        Self::Attach(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state file {path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error(transparent)]
    Attach(Box<AttachError>),
    #[error(transparent)]
    Maps(#[from] crate::maps::MapsError),
}

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

fn load_state(path: &Path) -> Result<State, AgentError> {
    State::load(path).map_err(|e| AgentError::State {
        path: path.into(),
        msg: e.to_string(),
    })
}

pub struct Agent {
    host: String,
    state_path: PathBuf,
    state: State,
    stamp: Option<FileStamp>,
    dp: Datapath,
    /// Tap names of this host's VM ports in the current state.
    wanted: Vec<String>,
    /// Taps of local ports that exist now: name -> ifindex.
    present: BTreeMap<String, u32>,
}

impl Agent {
    /// Validate the state file, load and pin the datapath, apply the first state.
    /// An invalid state file fails here, before anything on the host is touched.
    pub fn start(host: &str, state_path: &Path, bpffs_root: &Path) -> Result<Self, AgentError> {
        let stamp = stamp(state_path);
        let state = load_state(state_path)?;
        // Compile once before touching the host, so a state that names no such host or
        // cannot be compiled is refused up front too.
        let wanted = compile::compile(&state, host, &|_| None)
            .map_err(|e| AgentError::State {
                path: state_path.into(),
                msg: e.to_string(),
            })?
            .taps
            .into_keys()
            .collect();
        let dp = Datapath::load(bpffs_root, host)?;
        info!(host, pins = %dp.dir.display(), tunnel_ifindex = dp.tunnel_ifindex, "datapath loaded");
        let mut agent = Self {
            host: host.into(),
            state_path: state_path.into(),
            state,
            stamp,
            dp,
            wanted,
            present: BTreeMap::new(),
        };
        agent.sync(true)?;
        Ok(agent)
    }

    /// One poll step: pick up a changed state file and tap changes, reconcile if needed.
    pub fn tick(&mut self) -> Result<(), AgentError> {
        let mut changed = false;
        let now = stamp(&self.state_path);
        if now != self.stamp {
            self.stamp = now;
            match load_state(&self.state_path) {
                Ok(s) => match compile::compile(&s, &self.host, &|_| None) {
                    Ok(c) => {
                        self.wanted = c.taps.into_keys().collect();
                        self.state = s;
                        changed = true;
                    }
                    Err(e) => warn!(error = %e, "refused new state; keeping the last good one"),
                },
                Err(e) => warn!(error = %e, "refused new state; keeping the last good one"),
            }
        }
        self.sync(changed)
    }

    fn compile(&self, present: &BTreeMap<String, u32>) -> Result<Compiled, AgentError> {
        compile::compile(&self.state, &self.host, &|tap| present.get(tap).copied()).map_err(|e| {
            AgentError::State {
                path: self.state_path.clone(),
                msg: e.to_string(),
            }
        })
    }

    /// Reconcile maps and tap attachments with the current state and interfaces.
    fn sync(&mut self, force: bool) -> Result<(), AgentError> {
        let ifaces = interfaces();
        let present: BTreeMap<String, u32> = self
            .wanted
            .iter()
            .filter_map(|t| ifaces.get(t).map(|i| (t.clone(), *i)))
            .collect();
        if !force && present == self.present {
            return Ok(());
        }
        // Taps that went away (or were recreated) are detached before their entries go.
        let gone = self.dp.detach_stale(&present)?;
        let compiled = match self.compile(&present) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot compile state for the current taps; keeping maps as they are");
                return Ok(());
            }
        };
        let mut cfg = compiled.config;
        cfg.tunnel_ifindex = self.dp.tunnel_ifindex;
        let applied = reconcile::apply(&mut self.dp.maps, &cfg, &compiled.entries)?;
        // Entries first, then the program on new taps: a tap is served from its first frame.
        let mut added = Vec::new();
        for (name, ifx) in &present {
            let one = BTreeMap::from([(name.clone(), *ifx)]);
            match self.dp.attach_new(&one) {
                Ok(a) => added.extend(a),
                Err(e) => warn!(tap = %name, error = %e, "attach failed; will retry"),
            }
        }
        let attached = self.dp.attached();
        self.present = attached.clone();
        if !applied.is_empty() || !added.is_empty() || !gone.is_empty() {
            info!(
                upserted = applied.upserted,
                deleted = applied.deleted,
                taps_attached = ?added,
                taps_detached = ?gone,
                taps = attached.len(),
                "applied"
            );
        }
        Ok(())
    }

    /// Run until SIGTERM/SIGINT, then tear down what the agent made.
    pub fn run(mut self) -> Result<(), AgentError> {
        info!(host = %self.host, "ready");
        while !STOP.load(Ordering::SeqCst) {
            if let Err(e) = self.tick() {
                warn!(error = %e, "reconcile step failed; retrying");
            }
            std::thread::sleep(POLL);
        }
        info!("stopping: detaching programs, removing pins and the tunnel device");
        self.dp.teardown()?;
        Ok(())
    }
}
