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

// ---- the two-host state both fixture files start from ----

/// Test runs put the skb on the loopback device: VM1's "tap" is ifindex 1.
pub const VM1_IFINDEX: u32 = 1;
/// VM2 is local too; a redirect is not executed by a test run, so any ifindex will do.
pub const VM2_IFINDEX: u32 = 77;
pub const EXT_IFINDEX: u32 = 98;
pub const EXT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x0a];
/// The ports of [`TWO_HOSTS`], the router's interfaces and host A's DVR MAC.
pub const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x01];
pub const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x02];
pub const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x03];
pub const VM4_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x04];
pub const GW1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0xa1];
pub const GW2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0xa2];
pub const DVR_MAC_A: [u8; 6] = [0xfa, 0x16, 0x3f, 0, 0, 0x01];

/// Host A: VM1 (net1, 10.1.0.0/24) and VM2 (net2, 10.2.0.0/24); host B: VM3 (net1) and
/// VM4 (net2).
/// One distributed router on both subnets.
pub const TWO_HOSTS: &str = r#"{
 "hosts": [
  {"name": "A", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1", "dvr_mac": "fa:16:3f:00:00:01"},
  {"name": "B", "agent_mode": "dvr", "tunnel_ip": "192.0.2.2", "dvr_mac": "fa:16:3f:00:00:02"}],
 "networks": [
  {"id": "net1", "provider:network_type": "vxlan", "provider:segmentation_id": 101, "mtu": 1450},
  {"id": "net2", "provider:network_type": "vxlan", "provider:segmentation_id": 102, "mtu": 1450}],
 "subnets": [
  {"id": "sub1", "network_id": "net1", "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1", "ip_version": 4},
  {"id": "sub2", "network_id": "net2", "cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.1", "ip_version": 4}],
 "routers": [{"id": "r1", "distributed": true}],
 "ports": [
  {"id": "gw1", "network_id": "net1", "mac_address": "fa:16:3e:00:00:a1", "device_owner": "network:router_interface_distributed", "device_id": "r1",
   "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.1.0.1"}]},
  {"id": "gw2", "network_id": "net2", "mac_address": "fa:16:3e:00:00:a2", "device_owner": "network:router_interface_distributed", "device_id": "r1",
   "fixed_ips": [{"subnet_id": "sub2", "ip_address": "10.2.0.1"}]},
  {"id": "vm1-port-0001", "network_id": "net1", "mac_address": "fa:16:3e:00:00:01", "device_owner": "compute:nova", "binding:host_id": "A",
   "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.1.0.11"}],
   "allowed_address_pairs": [{"ip_address": "10.1.0.200/30"}]},
  {"id": "vm2-port-0002", "network_id": "net2", "mac_address": "fa:16:3e:00:00:02", "device_owner": "compute:nova", "binding:host_id": "A",
   "fixed_ips": [{"subnet_id": "sub2", "ip_address": "10.2.0.12"}]},
  {"id": "vm3-port-0003", "network_id": "net1", "mac_address": "fa:16:3e:00:00:03", "device_owner": "compute:nova", "binding:host_id": "B",
   "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.1.0.13"}]},
  {"id": "vm4-port-0004", "network_id": "net2", "mac_address": "fa:16:3e:00:00:04", "device_owner": "compute:nova", "binding:host_id": "B",
   "fixed_ips": [{"subnet_id": "sub2", "ip_address": "10.2.0.14"}]}]
}"#;

/// The fixture: `state` (a variant of [`TWO_HOSTS`]) compiled for host A, VM1 and VM2 on
/// their taps, tunnel ifindex 99, an external side.
pub fn two_hosts(state: &str) -> Fixture {
    let taps = |t: &str| match t {
        "tapvm1-port-00" => Some(VM1_IFINDEX),
        "tapvm2-port-00" => Some(VM2_IFINDEX),
        _ => None,
    };
    Fixture::load(state, "A", &taps, |cfg| {
        cfg.tunnel_ifindex = 99;
        cfg.ext_ifindex = EXT_IFINDEX;
        cfg.ext_mac = EXT_MAC;
    })
}
