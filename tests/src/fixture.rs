//! The harness of the packet fixture tables (`tests/fixtures.rs`, `tests/fixtures6.rs`):
//! the real object loaded with its maps pinned in a fresh bpffs directory, filled by the real
//! compiler and reconciler from a Neutron-shaped state, and tables of cases run through
//! BPF_PROG_TEST_RUN. A case ([`Case`]) is one input frame through one program, with the
//! return code, the one counter that must move and what the output frame must be
//! (unchanged, given bytes, or checks). Needs root (CAP_BPF) and bpffs, no namespaces.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use dvr_common::{config::HostConfig, stats::Stat};
use dvr_userspace::{
    attach::{ensure_bpffs, load_object, program},
    compile::compile,
    maps::HostMaps,
    model::State,
    reconcile,
};

/// TCX return codes.
pub const TCX_DROP: u32 = 2;
pub const TCX_REDIRECT: u32 = 7;
pub const TCX_NEXT: u32 = u32::MAX;

/// One row: `frame` through `prog` must return `code`, move exactly the counter `stat`, and
/// leave as `expect` says.
pub struct Case {
    pub name: &'static str,
    pub prog: &'static str,
    pub frame: Vec<u8>,
    pub code: u32,
    /// The one counter that must move; `None`: none may (a filter's pass).
    pub stat: Option<Stat>,
    pub expect: Expect,
}

/// What the output frame of a case must be.
pub enum Expect {
    /// Nothing beyond the return code and the counter (drops, passes).
    Verdict,
    /// The frame leaves as it came in.
    Unchanged,
    /// The output starts with these bytes.
    Frame(Vec<u8>),
    /// Checks on the output frame (assertions with their own messages).
    Check(OutputCheck),
}

pub type OutputCheck = Box<dyn Fn(&[u8])>;

pub fn case(name: &'static str, prog: &'static str, frame: Vec<u8>, code: u32, stat: Stat) -> Case {
    Case {
        name,
        prog,
        frame,
        code,
        stat: Some(stat),
        expect: Expect::Verdict,
    }
}

/// A row that must move no counter at all (what `dvr_tap_out` lets through).
pub fn quiet(name: &'static str, prog: &'static str, frame: Vec<u8>, code: u32) -> Case {
    Case {
        name,
        prog,
        frame,
        code,
        stat: None,
        expect: Expect::Verdict,
    }
}

impl Case {
    pub fn unchanged(self) -> Self {
        Self {
            expect: Expect::Unchanged,
            ..self
        }
    }

    pub fn output(self, want: Vec<u8>) -> Self {
        Self {
            expect: Expect::Frame(want),
            ..self
        }
    }

    pub fn check(self, f: impl Fn(&[u8]) + 'static) -> Self {
        Self {
            expect: Expect::Check(Box::new(f)),
            ..self
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);
/// A fixture's pin directory, removed when dropped: also when loading panics midway.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Fixture {
    // Field order is drop order: the maps and the object close before their pins go.
    pub ebpf: Ebpf,
    pub maps: HostMaps,
    _dir: PinDir,
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "fixture tests need root (CAP_BPF) to load BPF programs"
    );
}

impl Fixture {
    /// Load the object with its maps pinned in a fresh bpffs directory, compile `state` for
    /// host `host` (with the taps `taps` names), let `config` adjust the host configuration,
    /// and apply it all.
    pub fn load(
        state: &str,
        host: &str,
        taps: &dyn Fn(&str) -> Option<u32>,
        config: impl FnOnce(&mut HostConfig),
    ) -> Fixture {
        require_root();
        // One directory per fixture directly on bpffs: nothing shared is left behind.
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/dvr-fixture-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let guard = PinDir(dir.clone());
        // ensure_bpffs mounts bpffs when needed and creates the directory on it.
        ensure_bpffs(&dir).unwrap_or_else(|e| panic!("bpffs unavailable: {e}"));
        let ebpf =
            load_object(&dir, &Default::default()).unwrap_or_else(|e| panic!("load object: {e}"));
        let mut maps = HostMaps::open(&dir).unwrap_or_else(|e| panic!("open maps: {e}"));
        let state =
            State::from_json(state).unwrap_or_else(|e| panic!("fixture state invalid: {e}"));
        let compiled = compile(&state, host, None, taps).unwrap_or_else(|e| panic!("compile: {e}"));
        let mut cfg = compiled.config;
        config(&mut cfg);
        reconcile::apply(&mut maps, &cfg, &compiled.entries)
            .unwrap_or_else(|e| panic!("apply: {e}"));
        Fixture {
            ebpf,
            maps,
            _dir: guard,
        }
    }
}

impl Fixture {
    pub fn run(&mut self, prog: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p = program(&mut self.ebpf, prog).unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0u8; frame.len() + 256];
        let res = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("test run: {e}"));
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Run one row and check it; returns the output frame.
    pub fn case(&mut self, c: Case) -> Vec<u8> {
        let name = c.name;
        eprintln!("fixture case: {name}");
        let before = self.maps.read_stats().unwrap_or_else(|e| panic!("{e}"));
        let (ret, out) = self.run(c.prog, &c.frame);
        let after = self.maps.read_stats().unwrap_or_else(|e| panic!("{e}"));
        let moved: Vec<Stat> = before
            .iter()
            .zip(&after)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((s, _), _)| *s)
            .collect();
        assert_eq!(
            moved,
            c.stat.into_iter().collect::<Vec<_>>(),
            "{name}: counters that moved"
        );
        assert_eq!(ret, c.code, "{name}: return code for {:?}", c.stat);
        match &c.expect {
            Expect::Verdict => {}
            Expect::Unchanged => assert_eq!(out, c.frame, "{name}: output frame"),
            Expect::Frame(want) => assert_eq!(
                out.get(..want.len()),
                Some(&want[..]),
                "{name}: output frame"
            ),
            Expect::Check(f) => f(&out),
        }
        out
    }

    /// Run the rows in order.
    pub fn table(&mut self, cases: Vec<Case>) {
        for c in cases {
            self.case(c);
        }
    }
}
