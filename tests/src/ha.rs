//! SNAT high availability in the test bed (docs/HA.md).
//!
//! ```text
//!   h1 (dvr, VM v1)        sa (dvr_snat, priority 200)     sb (dvr_snat, priority 100)
//!        \                         |   ext0                       |   ext0
//!         +--- underlay br0 (VXLAN; etcd 192.0.2.254; conntrack sync TCP 4791) ---+
//!   v1 -> h1 steers to the holder of /dvr/v1/ha/<router> -> its ext0 -> br-ext
//! ```
//!
//! - [`Topology::ha_hosts`](crate::Topology::ha_hosts) makes a router HA (`"ha": true`,
//!   `ha_hosts`); its csnat ports are bound to the most preferred candidate. A topology may
//!   have several [`Topology::snat_host`](crate::Topology::snat_host)s.
//! - The election as etcd and `dvrctl` see it: [`Cloud::ha_holders`] (`dvrctl ha --json`),
//!   [`Cloud::wait_ha_holder`], [`Cloud::ha_failover`] (`dvrctl failover R --to H`).
//! - The fence as the datapath sees it: [`Cloud::show_ha`] (`dvrctl show ha --json`),
//!   [`Cloud::fence`] (one direct read of the pinned `DVR_HA_FENCE` against
//!   `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`), and [`FenceSampler`], which reads
//!   the fences of several hosts every few milliseconds in a thread, so that a test can assert
//!   that two hosts were never active at once.
//! - Failures to inject, all inside the test bed's own namespaces: [`Cloud::set_host_links`]
//!   (a host's `ul0` and `ext0` down: the host is gone for everyone) and
//!   [`Cloud::block_etcd`] / [`Cloud::unblock_etcd`] (a blackhole route to etcd in the host's
//!   namespace: cut from etcd only, the VXLAN underlay keeps working).
//! - Figures: [`ping_gaps`] (lost echoes and the longest silence of a fast ping) and
//!   [`tcp_sources`] (the source address:port and MAC of a TCP flow's packets in a capture).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use dvr_userspace::compile::fnv1a32;
use dvr_userspace::{clock::fence_now_ns, maps::HostMaps};
use serde_json::Value;

use crate::capture::Packet;
use crate::cloud::Cloud;
use crate::cmd::{lock, text, wait_until};
use crate::etcd::ETCD_IP;
use crate::external::EXT_IFACE;
use crate::state;

/// TCP port the active host streams conntrack entries to on the other candidates.
pub const CT_SYNC_PORT: u16 = 4791;

/// A row of `dvrctl ha --json`: who holds a router's centralized role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaHolder {
    /// The router id (UUID).
    pub router: String,
    /// The holder's logical host name (its agent name if it is none of the cloud's hosts).
    pub host: String,
    /// The etcd lease the key is attached to.
    pub lease: i64,
}

/// One read of a host's fence for a router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// `DVR_HA_FENCE[router]`: CLOCK_MONOTONIC ns until which the host serves; `None`: no
    /// entry.
    pub until_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns when read (after the value).
    pub now_ns: u64,
}

impl Fence {
    /// Whether the datapath serves the router now (`until > now`, as the datapath decides).
    pub fn active(&self) -> bool {
        dvr_common::snat::fence_active(self.until_ns, self.now_ns)
    }

    /// Milliseconds left (negative once expired), `None` without an entry.
    pub fn remaining_ms(&self) -> Option<f64> {
        self.until_ns
            .map(|u| (i128::from(u) - i128::from(self.now_ns)) as f64 / 1e6)
    }
}

impl Cloud {
    // ---- the candidates --------------------------------------------------------------------

    /// The logical names of `router`'s `ha_hosts` in the cloud's state, most preferred first;
    /// empty for a router that is not HA.
    pub fn ha_candidates(&self, router: &str) -> Result<Vec<String>> {
        Ok(self.candidates_of(self.state_router(router)?))
    }

    /// The logical names of a state router's `ha_hosts`, most preferred first (priority, then
    /// name, as docs/HA.md ranks them).
    pub(crate) fn candidates_of(&self, r: &state::Router) -> Vec<String> {
        let mut c: Vec<&state::HaHost> = r.ha_hosts.iter().collect();
        c.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.host.cmp(&b.host))
        });
        c.iter()
            .filter_map(|h| self.logical_host(&h.host))
            .map(str::to_string)
            .collect()
    }

    /// The logical name of the host whose agent runs as `agent_name`.
    pub fn logical_host(&self, agent_name: &str) -> Option<&str> {
        self.hosts
            .iter()
            .find(|h| h.agent_name == agent_name)
            .map(|h| h.name.as_str())
    }

    /// The router id as the datapath keys it (`fnv1a32` of the UUID).
    pub fn router_hash(&self, router: &str) -> Result<u32> {
        Ok(fnv1a32(self.router_id(router)?))
    }

    // ---- the election (etcd) ---------------------------------------------------------------

    /// `dvrctl ha --etcd URL --json`: the holder of every HA router whose role is held (rows
    /// with a null `host`, vacant roles, are left out).
    pub fn ha_holders(&self) -> Result<Vec<HaHolder>> {
        let url = self.etcd_url()?;
        let out = self.dvrctl_underlay(&["ha", "--etcd", &url, "--json"])?;
        ensure!(
            out.status.success(),
            "dvrctl ha failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("dvrctl ha --json: {}", text(&out).trim()))?;
        let rows = v
            .as_array()
            .ok_or_else(|| anyhow!("dvrctl ha --json is not a list: {v}"))?;
        let mut held = Vec::new();
        for r in rows {
            let router = r["router"]
                .as_str()
                .ok_or_else(|| anyhow!("dvrctl ha row without router: {r}"))?;
            let Some(agent) = r["host"].as_str() else {
                ensure!(r["host"].is_null(), "dvrctl ha row with a bad host: {r}");
                continue;
            };
            held.push(HaHolder {
                router: router.to_string(),
                host: self.logical_host(agent).unwrap_or(agent).to_string(),
                lease: r["lease"].as_i64().unwrap_or_default(),
            });
        }
        Ok(held)
    }

    /// The logical name of `router`'s holder per `dvrctl ha`, `None` while the role is vacant.
    pub fn ha_holder(&self, router: &str) -> Result<Option<String>> {
        let id = self.router_id(router)?.to_string();
        Ok(self
            .ha_holders()?
            .into_iter()
            .find(|h| h.router == id)
            .map(|h| h.host))
    }

    /// Waits until `dvrctl ha` names `host` as `router`'s holder; returns when it first did.
    pub fn wait_ha_holder(&self, router: &str, host: &str, deadline: Duration) -> Result<Instant> {
        wait_until(
            &format!("{host} to hold router {router} (dvrctl ha)"),
            deadline,
            |why| {
                let h = self.ha_holder(router)?;
                *why = format!("holder {h:?}");
                Ok((h.as_deref() == Some(host)).then(Instant::now))
            },
        )
    }

    /// `dvrctl failover <router id> --to <agent name of host> --etcd URL`, in the underlay
    /// namespace; returns the output whatever the status.
    pub fn ha_failover(&self, router: &str, to: &str) -> Result<Output> {
        let url = self.etcd_url()?;
        let id = self.router_id(router)?.to_string();
        let agent = self.host(to)?.agent_name.clone();
        self.dvrctl_underlay(&["failover", &id, "--to", &agent, "--etcd", &url])
    }

    // ---- the fence (datapath) --------------------------------------------------------------

    /// `dvrctl show ha --json` of `host`.
    pub fn show_ha(&self, host: &str) -> Result<Vec<Value>> {
        self.show_list(host, "ha")
    }

    /// `router`'s row in `host`'s `show ha` (matched by its hashed id or its UUID).
    pub fn ha_fence_row(&self, host: &str, router: &str) -> Result<Option<Value>> {
        let hash = format!("{:08x}", self.router_hash(router)?);
        let id = self.router_id(router)?.to_string();
        Ok(self.show_ha(host)?.into_iter().find(|r| {
            ["router_id", "router"]
                .iter()
                .any(|f| r[*f].as_str().is_some_and(|v| v == hash || v == id))
        }))
    }

    /// One direct read of `host`'s fence for `router` from its pinned maps.
    pub fn fence(&self, host: &str, router: &str) -> Result<Fence> {
        let maps = HostMaps::open(&self.pin_dir(host)?).with_context(|| format!("host {host}"))?;
        let until_ns = maps.ha_fence.get(&self.router_hash(router)?)?;
        Ok(Fence {
            until_ns,
            now_ns: fence_now_ns(),
        })
    }

    /// Starts a [`FenceSampler`] reading `router`'s fence on `hosts` every `every`.
    pub fn sample_fences(
        &self,
        router: &str,
        hosts: &[&str],
        every: Duration,
    ) -> Result<FenceSampler> {
        let key = self.router_hash(router)?;
        let dirs: Vec<PathBuf> = hosts
            .iter()
            .map(|h| self.pin_dir(h))
            .collect::<Result<_>>()?;
        FenceSampler::start(
            hosts.iter().map(|h| h.to_string()).collect(),
            dirs,
            key,
            every,
        )
    }

    // ---- failures --------------------------------------------------------------------------

    /// Sets `host`'s underlay NIC `ul0` and (if it has one) `ext0` down or up: down, the host
    /// is unreachable for everyone (etcd, the other hosts, the external network) while its
    /// agent and datapath keep running.
    pub fn set_host_links(&self, host: &str, up: bool) -> Result<()> {
        let h = self.host(host)?;
        let state = if up { "up" } else { "down" };
        let mut devs = vec![crate::cloud::UNDERLAY_DEV];
        if h.ext.is_some() {
            devs.push(EXT_IFACE);
        }
        for dev in devs {
            crate::cmd::ip(&["-n", &h.ns, "link", "set", dev, state])?;
        }
        Ok(())
    }

    /// Cuts `host` from etcd only: a blackhole route to the etcd address in its namespace
    /// (packets to etcd vanish silently, as in a partition; VXLAN to the other hosts' tunnel
    /// addresses, and so conntrack sync, keep working).
    pub fn block_etcd(&self, host: &str) -> Result<()> {
        self.etcd_blackhole(host, "add")
    }

    /// Undoes [`Cloud::block_etcd`].
    pub fn unblock_etcd(&self, host: &str) -> Result<()> {
        self.etcd_blackhole(host, "del")
    }

    /// `ip route add|del blackhole <etcd>/32` (`op`) in `host`'s namespace.
    fn etcd_blackhole(&self, host: &str, op: &str) -> Result<()> {
        let ns = self.host(host)?.ns.clone();
        crate::cmd::ip(&[
            "-n",
            &ns,
            "route",
            op,
            "blackhole",
            &format!("{ETCD_IP}/32"),
        ])
    }
}

/// One sample of a [`FenceSampler`].
#[derive(Clone, Debug)]
pub struct FenceSample {
    pub at: Instant,
    /// Per sampled host, in the order given.
    pub fences: Vec<Fence>,
}

impl FenceSample {
    /// Whether host number `i` was active.
    pub fn active(&self, i: usize) -> bool {
        self.fences.get(i).is_some_and(Fence::active)
    }

    /// How many of the sampled hosts were active.
    pub fn active_count(&self) -> usize {
        self.fences.iter().filter(|f| f.active()).count()
    }
}

/// Reads one router's fence on several hosts every few milliseconds, in a thread, through
/// the hosts' pinned maps (opened once). Stopped on [`FenceSampler::stop`] or drop.
pub struct FenceSampler {
    hosts: Vec<String>,
    samples: Arc<Mutex<Vec<FenceSample>>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for FenceSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceSampler")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl FenceSampler {
    fn start(hosts: Vec<String>, dirs: Vec<PathBuf>, key: u32, every: Duration) -> Result<Self> {
        // Opened here so that a missing pin fails the caller at once.
        let maps: Vec<HostMaps> = hosts
            .iter()
            .zip(&dirs)
            .map(|(h, d)| HostMaps::open(d).with_context(|| format!("pinned maps of {h}")))
            .collect::<Result<_>>()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&samples), Arc::clone(&stop));
        let handle = thread::spawn(move || -> Result<()> {
            while !st.load(Ordering::Relaxed) {
                let mut until = Vec::with_capacity(maps.len());
                for m in &maps {
                    until.push(m.ha_fence.get(&key)?);
                }
                let now_ns = fence_now_ns();
                let sample = FenceSample {
                    at: Instant::now(),
                    fences: until
                        .into_iter()
                        .map(|until_ns| Fence { until_ns, now_ns })
                        .collect(),
                };
                lock(&s).push(sample);
                // The sampling period, not a wait for a condition.
                thread::sleep(every);
            }
            Ok(())
        });
        let sampler = FenceSampler {
            hosts,
            samples,
            stop,
            handle: Some(handle),
        };
        sampler.wait("a first sample", Duration::from_secs(5), |_| true)?;
        Ok(sampler)
    }

    /// The position of `host` in the sampled hosts.
    pub fn index(&self, host: &str) -> Result<usize> {
        self.hosts
            .iter()
            .position(|h| h == host)
            .ok_or_else(|| anyhow!("{host} is not sampled ({:?})", self.hosts))
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<FenceSample> {
        lock(&self.samples).clone()
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<FenceSample> {
        lock(&self.samples).last().cloned()
    }

    /// Waits until the latest sample or a later one satisfies `pred`; returns the first such
    /// sample. Fails at once if the sampling thread stopped (a map read failed).
    pub fn wait(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&FenceSample) -> bool,
    ) -> Result<FenceSample> {
        let mut seen = lock(&self.samples).len().saturating_sub(1);
        wait_until(what, deadline, |why| {
            if self
                .handle
                .as_ref()
                .is_none_or(thread::JoinHandle::is_finished)
            {
                bail!("the fence sampler of {:?} stopped", self.hosts);
            }
            let s = lock(&self.samples);
            let found = s
                .get(seen..)
                .and_then(|new| new.iter().find(|x| pred(x)).cloned());
            seen = s.len();
            if let Some(last) = s.last() {
                *why = format!("{:?}: {:?}", self.hosts, last.fences);
            }
            Ok(found)
        })
    }

    /// Waits until `host`'s fence is active (`true`) or not (`false`) in a sample.
    pub fn wait_active(&self, host: &str, active: bool, deadline: Duration) -> Result<Instant> {
        let i = self.index(host)?;
        let what = format!(
            "{host}'s fence to be {}",
            if active { "active" } else { "inactive" }
        );
        Ok(self.wait(&what, deadline, |s| s.active(i) == active)?.at)
    }

    /// Stops the thread and returns every sample.
    pub fn stop(mut self) -> Result<Vec<FenceSample>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| anyhow!("the fence sampler panicked"))?
                .context("fence sampler")?;
        }
        Ok(self.samples())
    }
}

impl Drop for FenceSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The longest time between two consecutive samples (how fine the sampling really was).
pub fn max_sample_interval(samples: &[FenceSample]) -> Duration {
    samples
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

/// Lost echoes and the longest silence of a ping sent every `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingGaps {
    pub transmitted: u32,
    pub received: u32,
    /// Echoes without a reply.
    pub lost: u32,
    /// The longest run of unanswered echoes, as time (run length x interval).
    pub longest_gap: Duration,
}

/// Lost echoes and the longest run of unanswered sequence numbers in iputils `ping` output.
pub fn ping_gaps(out: &str, interval: Duration) -> PingGaps {
    let r = crate::cloud::parse_ping(out);
    let mut seqs: Vec<u32> = out
        .lines()
        .filter(|l| l.contains("bytes from") && !l.contains("(DUP!)"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))?
                .parse()
                .ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    // Sequence numbers start at 1; pretend replies to 0 and to transmitted + 1 to measure the
    // runs at both ends.
    let mut prev = 0;
    let mut longest = 0;
    for s in seqs
        .iter()
        .copied()
        .chain(std::iter::once(r.transmitted + 1))
    {
        longest = longest.max(s.saturating_sub(prev).saturating_sub(1));
        prev = s;
    }
    PingGaps {
        transmitted: r.transmitted,
        received: r.received,
        lost: r.transmitted.saturating_sub(r.received),
        longest_gap: interval * longest,
    }
}

/// The distinct `(source address:port, source MAC)` of the TCP packets to `dst:dport` in a
/// capture (tcpdump `-e -v` output: "src.port > dst.dport: Flags ...").
pub fn tcp_sources(
    packets: &[Packet],
    dst: Ipv4Addr,
    dport: u16,
) -> BTreeSet<(SocketAddrV4, String)> {
    let needle = format!(" > {dst}.{dport}: ");
    packets
        .iter()
        .filter_map(|p| {
            let at = p.text.find(&needle)?;
            let src = p.text[..at].split_whitespace().last()?;
            let (ip, port) = src.rsplit_once('.')?;
            let addr = SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?);
            let mac = p.outer_eth().map(|e| e.0).unwrap_or_default();
            Some((addr, mac))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_ping_gaps() {
        let out = "PING 198.51.100.10 (198.51.100.10) 56(84) bytes of data.
64 bytes from 198.51.100.10: icmp_seq=1 ttl=63 time=0.1 ms
64 bytes from 198.51.100.10: icmp_seq=2 ttl=63 time=0.1 ms
64 bytes from 198.51.100.10: icmp_seq=7 ttl=63 time=0.1 ms
64 bytes from 198.51.100.10: icmp_seq=7 ttl=63 time=0.1 ms (DUP!)
64 bytes from 198.51.100.10: icmp_seq=8 ttl=63 time=0.1 ms

--- 198.51.100.10 ping statistics ---
9 packets transmitted, 4 received, 55.5556% packet loss, time 160ms
";
        let g = ping_gaps(out, Duration::from_millis(20));
        assert_eq!((g.transmitted, g.received, g.lost), (9, 4, 5));
        assert_eq!(g.longest_gap, Duration::from_millis(80));
        let none = ping_gaps(
            "3 packets transmitted, 0 received, 100% packet loss",
            Duration::from_millis(20),
        );
        assert_eq!(none.longest_gap, Duration::from_millis(60));
    }

    #[test]
    fn finds_tcp_sources() {
        let p = Packet {
            text: "12:00:00.000001 fa:16:3e:00:00:05 > 3a:1b:00:00:00:01, ethertype IPv4 (0x0800), \
                   length 66: (tos 0x0, ttl 63, id 1, offset 0, flags [DF], proto TCP (6), length 52)\n    \
                   10.5.3.1.40001 > 198.51.100.10.5701: Flags [.], cksum 0x0 (correct), ack 1, win 502"
                .into(),
        };
        let s = tcp_sources(&[p], Ipv4Addr::new(198, 51, 100, 10), 5701);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![(
                SocketAddrV4::new(Ipv4Addr::new(10, 5, 3, 1), 40001),
                "fa:16:3e:00:00:05".to_string()
            )]
        );
    }

    #[test]
    fn fence_activity() {
        let f = Fence {
            until_ns: Some(2_000_000),
            now_ns: 1_000_000,
        };
        assert!(f.active());
        assert_eq!(f.remaining_ms(), Some(1.0));
        assert!(
            !Fence {
                until_ns: None,
                now_ns: 1
            }
            .active()
        );
        assert!(
            !Fence {
                until_ns: Some(1),
                now_ns: 1
            }
            .active()
        );
    }
}
