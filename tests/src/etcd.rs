//! etcd as the cluster store in the test bed.
//!
//! ```text
//!   netns dvrt-<pid>-<n>-ul   br0 192.0.2.254/24   etcd: clients http://192.0.2.254:2379,
//!                                                        peers http://127.0.0.1:2380 (lo)
//!                              |
//!   netns ...-h1   ul0 192.0.2.11/24   dvr-agent --etcd http://192.0.2.254:2379
//! ```
//!
//! [`Cloud::start_etcd`] runs Debian's etcd (`/usr/bin/etcd`, 3.4) in the underlay namespace
//! with its data in the cloud's temp dir; [`Cloud::stop_etcd`] stops it and a later
//! `start_etcd` starts it again on the same data. [`Cloud::agents_use_etcd`] makes agents
//! started from then on run with `--etcd URL` instead of `--state FILE`. `dvrctl apply` and
//! `dvrctl hosts` run in the underlay namespace ([`Cloud::etcd_apply`],
//! [`Cloud::etcd_hosts`]); [`Cloud::etcd_get`] reads keys with `etcdctl`. The server is
//! stopped (by pid) when the cloud drops, after the agents.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

use crate::cloud::{AgentSource, Cloud};
use crate::cmd::{self, ChildGuard, exec_with_deadline, ip, text, wait_until};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// The address etcd serves clients on, on `br0` in the underlay namespace.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// Peer port, on `lo` of the underlay namespace (a one-member cluster).
pub const ETCD_PEER_PORT: u16 = 2380;
/// How long etcd gets to become healthy.
pub const ETCD_READY_DEADLINE: Duration = Duration::from_secs(30);
/// The key prefix of the agents' state.
pub const PREFIX: &str = "/dvr/v1/";
/// The key prefix of the agents' liveness keys.
pub const ALIVE_PREFIX: &str = "/dvr/v1/alive/";

/// One write for [`EtcdWriter`]'s thread.
enum WriteOp {
    Put(String, String),
    Delete(String),
    Compact,
}

/// Single-key writes to etcd, each acknowledged before the call returns, made by a thread
/// that lives in the underlay namespace ([`Cloud::etcd_writer`]).
pub struct EtcdWriter {
    tx: Option<std::sync::mpsc::Sender<(WriteOp, std::sync::mpsc::Sender<Result<i64>>)>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl EtcdWriter {
    fn start(ns: &str, url: &str) -> Result<EtcdWriter> {
        let (tx, rx) =
            std::sync::mpsc::channel::<(WriteOp, std::sync::mpsc::Sender<Result<i64>>)>();
        let url = url.to_string();
        let thread = crate::bench::netns::in_netns(ns, move || {
            let mut w =
                dvr_userspace::source::etcd::Writer::connect(&url).map_err(|e| anyhow!("{e}"))?;
            for (op, reply) in rx {
                let r = match op {
                    WriteOp::Put(k, v) => w.put(&k, &v).map(|()| 0),
                    WriteOp::Delete(k) => w.delete(&k).map(|()| 0),
                    WriteOp::Compact => w.compact(),
                };
                let _ = reply.send(r.map_err(|e| anyhow!("{e}")));
            }
            Ok(())
        });
        Ok(EtcdWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn call(&self, op: WriteOp) -> Result<i64> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("etcd writer closed"))?
            .send((op, reply))
            .map_err(|_| anyhow!("the etcd writer's thread has ended"))?;
        rx.recv()
            .map_err(|_| anyhow!("the etcd writer's thread has ended"))?
    }

    /// Put `value` at the full key `key`.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.call(WriteOp::Put(key.into(), value.into()))
            .map(|_| ())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.call(WriteOp::Delete(key.into())).map(|_| ())
    }

    /// Compact etcd's history to its current revision; returns that revision.
    pub fn compact(&self) -> Result<i64> {
        self.call(WriteOp::Compact)
    }
}

impl Drop for EtcdWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checks that etcd and etcdctl are installed.
pub fn check_etcd_preconditions() -> Result<()> {
    let missing: Vec<&str> = [ETCD_BIN, ETCDCTL_BIN]
        .into_iter()
        .filter(|b| !Path::new(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "this test cannot run here: {} missing (Debian: apt-get install etcd-server etcd-client)",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// [`crate::require_preconditions`] plus etcd, panicking with the reasons.
pub fn require_etcd_preconditions() {
    crate::require_preconditions();
    if let Err(e) = check_etcd_preconditions() {
        panic!("{e:#}");
    }
}

/// The etcd server of a cloud.
pub struct EtcdServer {
    guard: Option<ChildGuard>,
    data_dir: PathBuf,
    log_dir: PathBuf,
    url: String,
    starts: u32,
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("url", &self.url)
            .field("running", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdServer {
    /// Whether it was started and not stopped since.
    pub(crate) fn running(&self) -> bool {
        self.guard.is_some()
    }

    /// Stops it (SIGTERM by pid, bounded wait, SIGKILL); its data stays.
    pub(crate) fn stop(&mut self) -> Result<ExitStatus> {
        let mut g = self
            .guard
            .take()
            .ok_or_else(|| anyhow!("etcd is not running"))?;
        Ok(g.stop(Duration::from_secs(10))?.0)
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.log_dir.join(format!("etcd-{n}.log"))
    }
}

/// A key as `etcdctl get -w json` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdKv {
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A row of `dvrctl hosts --json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HostRow {
    pub host: String,
    pub agent_mode: String,
    pub tunnel_ip: String,
    pub alive: bool,
    pub lease_ttl_s: Option<i64>,
}

#[derive(Deserialize)]
struct GetJson {
    header: GetHeader,
    #[serde(default)]
    kvs: Vec<GetKv>,
}

#[derive(Deserialize)]
struct GetHeader {
    revision: i64,
}

#[derive(Deserialize)]
struct GetKv {
    key: String,
    #[serde(default)]
    value: String,
    mod_revision: i64,
    #[serde(default)]
    lease: i64,
}

impl Cloud {
    /// Starts etcd in the underlay namespace (the first time: gives `br0` [`ETCD_IP`] and
    /// creates the data dir; later: on the same data) and waits until it is healthy. Returns
    /// the client URL.
    pub fn start_etcd(&mut self) -> Result<String> {
        check_etcd_preconditions()?;
        let ul = self.underlay_ns.clone();
        if self.etcd.is_none() {
            ip(&[
                "-n",
                &ul,
                "addr",
                "add",
                &format!("{ETCD_IP}/24"),
                "dev",
                "br0",
            ])?;
            let data_dir = self.dir.join("etcd-data");
            fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            self.etcd = Some(EtcdServer {
                guard: None,
                data_dir,
                log_dir: self.dir.clone(),
                url: format!("http://{ETCD_IP}:{ETCD_CLIENT_PORT}"),
                starts: 0,
            });
        }
        let e = self.etcd.as_mut().ok_or_else(|| anyhow!("etcd vanished"))?;
        ensure!(e.guard.is_none(), "etcd is already running");
        e.starts += 1;
        let log = e.log_path(e.starts);
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let name = "dvr-tests";
        let mut c = Command::new("ip");
        // `ip netns exec` execs etcd: the child's pid is etcd's.
        c.args(["netns", "exec", &ul, ETCD_BIN])
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", e.data_dir.display()))
            .arg(format!("--listen-client-urls={}", e.url))
            .arg(format!("--advertise-client-urls={}", e.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).with_context(|| format!("{}", log.display()))?);
        let child = c.spawn().context("starting etcd")?;
        e.guard = Some(ChildGuard::new(child, format!("etcd in {ul}")));
        let url = e.url.clone();
        self.wait_etcd_healthy(ETCD_READY_DEADLINE)?;
        Ok(url)
    }

    /// Stops etcd (SIGTERM); its data stays for [`Cloud::start_etcd`].
    pub fn stop_etcd(&mut self) -> Result<ExitStatus> {
        self.etcd
            .as_mut()
            .ok_or_else(|| anyhow!("etcd was never started"))?
            .stop()
    }

    /// The client URL of the cloud's etcd.
    pub fn etcd_url(&self) -> Result<String> {
        Ok(self
            .etcd
            .as_ref()
            .ok_or_else(|| anyhow!("etcd was never started"))?
            .url
            .clone())
    }

    /// Makes agents started from now on run with `--etcd <the cloud's etcd>`.
    pub fn agents_use_etcd(&mut self) -> Result<()> {
        self.agent_source = AgentSource::Etcd(self.etcd_url()?);
        Ok(())
    }

    /// Starts etcd, writes the cloud's state into it and starts every agent on it (waiting
    /// for them as [`Cloud::start_agents`] does).
    pub fn start_agents_on_etcd(&mut self) -> Result<()> {
        self.start_etcd()?;
        self.etcd_apply()?;
        self.agents_use_etcd()?;
        self.start_agents()
    }

    /// A connection to the cloud's etcd that writes single keys, from a thread in the
    /// underlay namespace (where etcd listens; the client connects lazily, so it lives there).
    pub fn etcd_writer(&self) -> Result<EtcdWriter> {
        EtcdWriter::start(self.underlay_ns(), &self.etcd_url()?)
    }

    /// Agents started from now on read the cloud's state file again.
    pub fn agents_use_file(&mut self) {
        self.agent_source = AgentSource::File;
    }

    /// The log of the current (or last) etcd run.
    pub fn etcd_log(&self) -> String {
        self.etcd
            .as_ref()
            .map(|e| fs::read_to_string(e.log_path(e.starts)).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits until `etcdctl endpoint health` succeeds; fails at once if etcd exits.
    pub fn wait_etcd_healthy(&mut self, deadline: Duration) -> Result<Duration> {
        let url = self.etcd_url()?;
        let ul = self.underlay_ns.clone();
        let start = Instant::now();
        let res = wait_until("etcd to be healthy", deadline, |why| {
            if let Some(g) = self.etcd.as_mut().and_then(|e| e.guard.as_mut())
                && let Some(status) = g.try_wait()?
            {
                bail!("etcd exited ({status})");
            }
            let out = exec_with_deadline(
                &ul,
                &[
                    ETCDCTL_BIN,
                    "--endpoints",
                    &url,
                    "--dial-timeout=1s",
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ],
                Duration::from_secs(10),
            )?;
            *why = text(&out).trim().to_string();
            Ok(out.status.success().then(|| start.elapsed()))
        });
        res.with_context(|| format!("etcd log (tail):\n{}", tail(&self.etcd_log(), 20)))
    }

    /// `dvrctl ARGS` in the underlay namespace (`nsenter --net=`), where etcd is reachable.
    pub fn dvrctl_underlay(&self, args: &[&str]) -> Result<Output> {
        let bins = match &self.bins {
            Some(b) => b.clone(),
            None => crate::cloud::locate_bins()?,
        };
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.underlay_ns))
            .arg(&bins.dvrctl)
            .args(args);
        cmd::output_with_deadline(c, &cmd::describe("dvrctl", args), Duration::from_secs(30))
    }

    /// `dvrctl apply FILE --etcd URL`; returns the output whatever the status.
    pub fn etcd_apply_file(&self, path: &Path) -> Result<Output> {
        let url = self.etcd_url()?;
        let p = path.to_string_lossy().into_owned();
        self.dvrctl_underlay(&["apply", &p, "--etcd", &url])
    }

    /// Applies the cloud's state file to etcd (after [`Cloud::update_state`], [`Cloud::associate`]
    /// and the like, which write it); fails unless `dvrctl apply` succeeds. Returns its output.
    pub fn etcd_apply(&self) -> Result<String> {
        let out = self.etcd_apply_file(&self.state_path)?;
        ensure!(
            out.status.success(),
            "dvrctl apply of the cloud's state failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        Ok(text(&out).trim().to_string())
    }

    /// `dvrctl hosts --etcd URL --json`.
    pub fn etcd_hosts(&self) -> Result<Vec<HostRow>> {
        let url = self.etcd_url()?;
        let out = self.dvrctl_underlay(&["hosts", "--etcd", &url, "--json"])?;
        ensure!(
            out.status.success(),
            "dvrctl hosts failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("dvrctl hosts --json: {}", text(&out).trim()))
    }

    /// The row of `host` (logical name) in [`Cloud::etcd_hosts`].
    pub fn etcd_host_row(&self, host: &str) -> Result<Option<HostRow>> {
        let name = self.host(host)?.agent_name.clone();
        Ok(self.etcd_hosts()?.into_iter().find(|r| r.host == name))
    }

    /// The JSON value at exactly `key`, if the key exists.
    pub fn etcd_json(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let (_, kvs) = self.etcd_get(key)?;
        kvs.get(key)
            .map(|kv| serde_json::from_str(&kv.value).with_context(|| format!("{key}: not JSON")))
            .transpose()
    }

    /// Every key under `prefix` with its value, modification revision and lease, and the store
    /// revision (`etcdctl get --prefix -w json`).
    pub fn etcd_get(&self, prefix: &str) -> Result<(i64, BTreeMap<String, EtcdKv>)> {
        let url = self.etcd_url()?;
        let out = exec_with_deadline(
            &self.underlay_ns,
            &[
                ETCDCTL_BIN,
                "--endpoints",
                &url,
                "--command-timeout=5s",
                "get",
                prefix,
                "--prefix",
                "-w",
                "json",
            ],
            Duration::from_secs(15),
        )?;
        ensure!(
            out.status.success(),
            "etcdctl get {prefix} failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        let g: GetJson = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("etcdctl get -w json: {}", text(&out).trim()))?;
        let mut kvs = BTreeMap::new();
        for kv in g.kvs {
            let key = String::from_utf8(base64_decode(&kv.key)?).context("etcd key")?;
            let value = String::from_utf8(base64_decode(&kv.value)?).context("etcd value")?;
            kvs.insert(
                key,
                EtcdKv {
                    value,
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                },
            );
        }
        Ok((g.header.revision, kvs))
    }

    /// The state keys in etcd (everything under [`PREFIX`] but the alive keys).
    pub fn etcd_state_keys(&self) -> Result<BTreeMap<String, EtcdKv>> {
        let (_, kvs) = self.etcd_get(PREFIX)?;
        Ok(kvs
            .into_iter()
            .filter(|(k, _)| !k.starts_with(ALIVE_PREFIX))
            .collect())
    }

    /// The keys `dvrctl apply` should write for the cloud's state: `/dvr/v1/<kind>/<id>` (hosts
    /// by name) -> the resource as JSON.
    pub fn expected_etcd_keys(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        let v = self.state.to_value()?;
        let mut out = BTreeMap::new();
        for kind in dvr_userspace::source::KINDS {
            let field = if kind == "hosts" { "name" } else { "id" };
            for r in v[kind].as_array().into_iter().flatten() {
                let id = r[field]
                    .as_str()
                    .ok_or_else(|| anyhow!("{kind} entry without {field}: {r}"))?;
                out.insert(format!("{PREFIX}{kind}/{id}"), r.clone());
            }
        }
        Ok(out)
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Standard base64 (with padding), as etcd's JSON gateway prints keys and values.
pub fn base64_decode(s: &str) -> Result<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = val(*c).ok_or_else(|| anyhow!("not base64: {s:?}"))?;
            acc |= v << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => bail!("truncated base64: {s:?}"),
        };
        for i in 0..n {
            out.push(((acc >> (16 - 8 * i)) & 0xff) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() -> Result<()> {
        assert_eq!(
            base64_decode("L2R2ci92MS9ob3N0cy9oMQ==")?,
            b"/dvr/v1/hosts/h1"
        );
        assert_eq!(base64_decode("YQ==")?, b"a");
        assert_eq!(base64_decode("YWI=")?, b"ab");
        assert_eq!(base64_decode("YWJj")?, b"abc");
        assert_eq!(base64_decode("")?, b"");
        assert!(base64_decode("a!==").is_err());
        Ok(())
    }
}
