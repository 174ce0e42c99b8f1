//! The agent lifecycle in the test bed: killing and restarting agents, what a restarted agent
//! logs, the pins and TCX links it leaves behind, and traffic that keeps running in the
//! background while that happens.
//!
//! - [`Cloud::kill_agent`] (`kill -9`), [`Cloud::stop_agent`] (SIGTERM) and
//!   [`Cloud::restart_agent`] (start, then wait for the new agent's `ready` line: a restarted
//!   agent finds its taps listed in the pinned maps at once, so [`Cloud::wait_agent_ready`]
//!   alone would not wait for it).
//! - [`Cloud::applied_lines`]: the agent's `applied ... upserted=N deleted=M` log lines.
//! - [`Cloud::link_pins`], [`Cloud::expected_link_pins`], [`Cloud::map_pins`]: the pin
//!   directory `<bpffs>/<host>/` and its `links/<iface>@<ifindex>`.
//! - [`Cloud::tcx_ingress`]: the programs and links attached to an interface through TCX, as
//!   the kernel reports them (`BPF_PROG_QUERY` in the host's namespace; bpftool 7.1 does not
//!   list TCX attachments).
//! - [`Cloud::ping_bg`] ([`BgPing`]) and [`Cloud::start_paced_transfer`]
//!   ([`PacedTransfer`]): a ping and a TCP transfer paced over a given duration, running in the
//!   background so that agents can be killed and restarted under them.

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

use crate::cloud::{Cloud, PingResult, UNDERLAY_DEV, VXLAN_DEV, parse_ping, scapy_python};
use crate::cmd::{self, exec, text, wait_until};
use crate::external::{Bg, EXT_IFACE};

/// How long a restarted agent gets to log `ready`.
pub const AGENT_RESTART_DEADLINE: Duration = Duration::from_secs(15);

/// One `applied` line of an agent's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedLine {
    pub upserted: u64,
    pub deleted: u64,
    pub line: String,
}

/// The `applied` lines of an agent log, in order (`... dvr_userspace::agent: applied
/// seconds=.. upserted=N deleted=M taps_attached=[..] ...`).
pub fn parse_applied(log: &str) -> Vec<AppliedLine> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("agent: applied "))
        .filter_map(|l| {
            Some(AppliedLine {
                upserted: field(l, "upserted")?,
                deleted: field(l, "deleted")?,
                line: l.to_string(),
            })
        })
        .collect()
}

/// What the kernel reports attached to one hook of an interface through TCX.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Tcx {
    /// Program ids, in run order.
    pub prog_ids: Vec<u32>,
    /// The link id of each program (0: attached without a link).
    pub link_ids: Vec<u32>,
}

/// `BPF_PROG_QUERY` for `BPF_TCX_INGRESS` (or, with `argv[2]` = "egress", `BPF_TCX_EGRESS`)
/// on `argv[1]` (by name, in the caller's namespace); prints `{"prog_ids": [...], "link_ids": [...]}` or `{"error": "..."}`.
const TCX_QUERY: &str = r#"
import ctypes, json, os, platform, socket, struct, sys
SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_PROG_QUERY, BPF_TCX_INGRESS, BPF_TCX_EGRESS = 16, 46, 47
hook = BPF_TCX_EGRESS if len(sys.argv) > 2 and sys.argv[2] == "egress" else BPF_TCX_INGRESS
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
try:
    ifindex = socket.if_nametoindex(sys.argv[1])
except OSError as e:
    print(json.dumps({"error": "no interface %s: %s" % (sys.argv[1], e)}))
    sys.exit(0)
progs = (ctypes.c_uint32 * 64)()
links = (ctypes.c_uint32 * 64)()
attr = (ctypes.c_uint8 * 128)()
# union bpf_attr, query: target_ifindex, attach_type, query_flags, attach_flags, prog_ids,
# prog_cnt, pad, prog_attach_flags, link_ids, link_attach_flags, revision.
struct.pack_into("=IIII", attr, 0, ifindex, hook, 0, 0)
struct.pack_into("=Q", attr, 16, ctypes.addressof(progs))
struct.pack_into("=I", attr, 24, 64)
struct.pack_into("=Q", attr, 40, ctypes.addressof(links))
r = libc.syscall(SYS_BPF, BPF_PROG_QUERY, ctypes.byref(attr), ctypes.c_uint(128))
if r != 0:
    e = ctypes.get_errno()
    print(json.dumps({"error": "BPF_PROG_QUERY: %s" % os.strerror(e)}))
    sys.exit(0)
n = struct.unpack_from("=I", attr, 24)[0]
print(json.dumps({"prog_ids": list(progs[:n]), "link_ids": list(links[:n])}))
"#;

impl Cloud {
    // ---- agents ----------------------------------------------------------------------------

    /// `kill -9` the agent of `host` (it cannot clean up: its pins and links stay, as after a
    /// crash). Returns its exit status.
    pub fn kill_agent(&mut self, host: &str) -> Result<ExitStatus> {
        let mut agent = self
            .agents
            .remove(host)
            .ok_or_else(|| anyhow!("no agent for {host}"))?;
        agent.guard.kill()
    }

    /// Waits until the current agent of `host` has logged `ready` (its first reconcile is
    /// done). Fails at once, quoting its log, if it exits.
    pub fn wait_agent_started(&mut self, host: &str, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        let res = wait_until(&format!("agent of {host} to log ready"), deadline, |why| {
            let agent = self
                .agents
                .get_mut(host)
                .ok_or_else(|| anyhow!("no agent for {host}"))?;
            let exited = agent.guard.try_wait()?;
            let log = self.agent_log(host)?;
            if log.contains("agent: ready ") {
                return Ok(Some(start.elapsed()));
            }
            if let Some(status) = exited {
                bail!("dvr-agent of {host} exited ({status}) before it was ready:\n{log}");
            }
            *why = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            Ok(None)
        });
        res.with_context(|| format!("agent log:\n{}", self.agent_log_tail(host, 40)))
    }

    /// Starts the agent of `host` again (after [`Cloud::kill_agent`] or [`Cloud::stop_agent`])
    /// and waits until it has logged `ready` and lists every local tap. Returns how long that
    /// took.
    pub fn restart_agent(&mut self, host: &str) -> Result<Duration> {
        let start = Instant::now();
        self.start_agent(host)?;
        self.wait_agent_started(host, AGENT_RESTART_DEADLINE)?;
        self.wait_agent_ready(host, AGENT_RESTART_DEADLINE)?;
        Ok(start.elapsed())
    }

    /// The `applied` lines the current agent of `host` has logged so far.
    pub fn applied_lines(&self, host: &str) -> Result<Vec<AppliedLine>> {
        Ok(parse_applied(&self.agent_log(host)?))
    }

    // ---- pins and attachments --------------------------------------------------------------

    /// The names in `<pin dir>/links/` (`<iface>@<ifindex>`).
    pub fn link_pins(&self, host: &str) -> Result<BTreeSet<String>> {
        let dir = self.pin_dir(host)?.join("links");
        let rd = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        Ok(rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// The files pinned directly in `<pin dir>` (the maps; not `links`).
    pub fn map_pins(&self, host: &str) -> Result<BTreeSet<String>> {
        let dir = self.pin_dir(host)?;
        let rd = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        Ok(rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// The link pins an agent of `host` should hold: `<tap>@<ifindex>` and `<tap>:out@<ifindex>`
    /// for each local VM,
    /// `dvr-vx@<ifindex>`, `ul0:underlay@<ifindex>` (unless its agent runs with
    /// `--tunnel-decap device`) and, with an external NIC, `ext0@<ifindex>` and
    /// `ext0:xdp@<ifindex>` (unless `--ext-xdp off`).
    pub fn expected_link_pins(&self, host: &str) -> Result<BTreeSet<String>> {
        let h = self.host(host)?.clone();
        let mut want = BTreeSet::new();
        for v in self.vms.iter().filter(|v| v.host == host) {
            let ifx = self.tap_ifindex(&v.name)?;
            // The tap program on its ingress, `dvr_tap_out` on its egress (":out").
            want.insert(format!("{}@{ifx}", v.tap));
            want.insert(format!("{}:out@{ifx}", v.tap));
        }
        let mut devs = vec![VXLAN_DEV];
        if h.ext.is_some() {
            devs.push(EXT_IFACE);
        }
        for dev in devs {
            want.insert(format!("{dev}@{}", self.host_ifindex(host, dev)?));
        }
        let args: Vec<&String> = self.agent_args.iter().chain(&h.agent_args).collect();
        let given =
            |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
        // The external NIC's XDP link (":xdp"), unless its agent runs with `--ext-xdp off`
        // or the cloud's veths are plain (then no `--xdp-veth-peers`).
        if h.ext.is_some() && self.xdp_veths && !given("--ext-xdp", "off") {
            want.insert(format!(
                "{EXT_IFACE}:xdp@{}",
                self.host_ifindex(host, EXT_IFACE)?
            ));
        }
        if !given("--tunnel-decap", "device") {
            want.insert(format!(
                "{UNDERLAY_DEV}:underlay@{}",
                self.host_ifindex(host, UNDERLAY_DEV)?
            ));
        }
        Ok(want)
    }

    /// The ifindex of `dev` in the namespace of `host`.
    pub fn host_ifindex(&self, host: &str, dev: &str) -> Result<u64> {
        crate::cloud::link_ifindex(&self.host(host)?.ns, dev)
    }

    /// The names of every link in the namespace of `host`.
    pub fn host_links(&self, host: &str) -> Result<BTreeSet<String>> {
        let ns = self.host(host)?.ns.clone();
        let out = cmd::run_ok("ip", &["-n", &ns, "-j", "link", "show"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect())
    }

    /// What the kernel has attached to the TCX ingress hook of `iface` in the namespace of
    /// `host` (`BPF_PROG_QUERY`, run in that namespace).
    pub fn tcx_ingress(&self, host: &str, iface: &str) -> Result<Tcx> {
        self.tcx(host, iface, "ingress")
    }

    /// What the kernel has attached to the TCX `hook` ("ingress" or "egress") of `iface` in
    /// the namespace of `host`.
    pub fn tcx(&self, host: &str, iface: &str, hook: &str) -> Result<Tcx> {
        let ns = self.host(host)?.ns.clone();
        let py = scapy_python()?;
        let out = exec(&ns, &[&py, "-c", TCX_QUERY, iface, hook])?;
        ensure!(
            out.status.success(),
            "TCX query for {iface} in {host} failed: {}",
            text(&out).trim()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("TCX query printed no JSON: {}", text(&out).trim()))?;
        if let Some(e) = v["error"].as_str() {
            bail!("TCX query for {iface} in {host}: {e}");
        }
        Ok(serde_json::from_value(v)?)
    }

    // ---- background traffic ----------------------------------------------------------------

    /// Starts `ping -c count -i interval -W 1 dst` in the background from `who` (a VM, a host
    /// or [`crate::EXT`]); `extra` goes before the destination (e.g. `["-I", "198.51.100.10"]`).
    pub fn ping_bg(
        &mut self,
        who: &str,
        dst: Ipv4Addr,
        count: u32,
        interval: Duration,
        extra: &[&str],
    ) -> Result<BgPing> {
        let count_s = count.to_string();
        let interval_s = format!("{:.3}", interval.as_secs_f64());
        let dst_s = dst.to_string();
        let mut args = vec!["ping", "-n", "-c", &count_s, "-i", &interval_s, "-W", "1"];
        args.extend_from_slice(extra);
        args.push(&dst_s);
        let bg = self.spawn(who, &args)?;
        Ok(BgPing {
            bg,
            what: format!("ping {who} -> {dst}"),
            deadline: interval * count + Duration::from_secs(15),
            started: Instant::now(),
        })
    }

    /// Starts a TCP transfer of `bytes` pseudo-random bytes from `from` to `dst:port` (a
    /// listener in `to`), paced to take about `duration`, and returns once it is connected.
    /// [`PacedTransfer::finish`] checks that exactly the bytes sent arrived (SHA-256).
    #[expect(
        clippy::too_many_arguments,
        reason = "the endpoints, the destination and the pacing are all needed"
    )]
    pub fn start_paced_transfer(
        &mut self,
        from: &str,
        to: &str,
        dst: Ipv4Addr,
        port: u16,
        bytes: usize,
        duration: Duration,
        bind: Option<Ipv4Addr>,
    ) -> Result<PacedTransfer> {
        let mut receiver = self.spawn_python(to, PACED_RECEIVER, &[&port.to_string()])?;
        receiver.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        self.wait_listening(to, false, port, Duration::from_secs(5))?;
        self.files_seq += 1;
        let seed = u64::from(self.files_seq);
        let bind_s = bind.map(|b| b.to_string()).unwrap_or_default();
        let mut sender = self.spawn_python(
            from,
            PACED_SENDER,
            &[
                &dst.to_string(),
                &port.to_string(),
                &bytes.to_string(),
                &format!("{:.3}", duration.as_secs_f64()),
                &bind_s,
                &seed.to_string(),
            ],
        )?;
        sender.wait_stdout("connected", Duration::from_secs(10), |o| {
            o.contains("connected")
        })?;
        Ok(PacedTransfer {
            what: format!("TCP {from} -> {dst}:{port} ({to})"),
            sender,
            receiver,
            bytes,
            deadline: duration + Duration::from_secs(60),
            started: Instant::now(),
        })
    }
}

/// A ping running in the background ([`Cloud::ping_bg`]).
pub struct BgPing {
    bg: Bg,
    what: String,
    deadline: Duration,
    started: Instant,
}

impl BgPing {
    /// Replies received so far.
    pub fn replies(&self) -> usize {
        count_replies(&self.bg.stdout())
    }

    /// Waits until at least `n` replies have arrived in total; returns the count.
    pub fn wait_replies(&mut self, n: usize, deadline: Duration) -> Result<usize> {
        let what = format!("{n} replies to {}", self.what);
        let out = self
            .bg
            .wait_stdout(&what, deadline, |o| count_replies(o) >= n)?;
        Ok(count_replies(&out))
    }

    /// Waits for the ping to end by itself and returns its result.
    pub fn finish(mut self) -> Result<PingResult> {
        let left = self.deadline.saturating_sub(self.started.elapsed());
        let status = self.bg.wait_exit(left)?;
        let out = self.bg.stdout();
        ensure!(
            status.is_some(),
            "{} still running after {:?}:\n{out}",
            self.what,
            self.deadline
        );
        Ok(parse_ping(&out))
    }
}

/// "64 bytes from ..." lines (not duplicates) of ping output.
pub fn count_replies(out: &str) -> usize {
    out.lines()
        .filter(|l| l.contains("bytes from") && !l.contains("(DUP!)"))
        .count()
}

/// Accepts one connection on `argv[1]`, prints "listening", "peer <ip>:<port>", "got <bytes>"
/// whenever another 64 KiB have arrived and, at EOF, "received <bytes> <sha256>".
const PACED_RECEIVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, a = s.accept()
print("peer %s:%d" % a, flush=True)
h, n, mark = hashlib.sha256(), 0, 0
while True:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
    n += len(d)
    if n >= mark + 65536:
        mark = n
        print("got %d" % n, flush=True)
print("received %d %s" % (n, h.hexdigest()), flush=True)
c.close()
"#;

/// Connects to `argv[1]:argv[2]` (from `argv[5]` if not empty) and sends `argv[3]` bytes of
/// seeded pseudo-random data (`argv[6]`) in 16 KiB chunks paced over `argv[4]` seconds;
/// prints "connected", "progress <bytes>" per chunk and "sent <bytes> <sha256> <seconds>". A
/// send that blocks for 20 s fails it.
const PACED_SENDER: &str = r#"
import hashlib, random, socket, sys, time
dst, port, total, secs, bind, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
rng = random.Random(seed)
s = socket.create_connection((dst, port), timeout=20, source_address=(bind, 0) if bind else None)
print("connected", flush=True)
h, sent, start = hashlib.sha256(), 0, time.monotonic()
while sent < total:
    d = rng.randbytes(min(16384, total - sent))
    s.sendall(d)
    h.update(d)
    sent += len(d)
    print("progress %d" % sent, flush=True)
    delay = start + secs * sent / total - time.monotonic()
    if delay > 0:
        time.sleep(delay)
s.shutdown(socket.SHUT_WR)
s.settimeout(20)
while s.recv(65536):
    pass
s.close()
print("sent %d %s %.3f" % (sent, h.hexdigest(), time.monotonic() - start), flush=True)
"#;

/// A paced TCP transfer running in the background ([`Cloud::start_paced_transfer`]).
pub struct PacedTransfer {
    what: String,
    sender: Bg,
    receiver: Bg,
    bytes: usize,
    deadline: Duration,
    started: Instant,
}

/// A finished [`PacedTransfer`].
#[derive(Clone, Debug)]
pub struct PacedReport {
    pub bytes: u64,
    pub sha256: String,
    /// How long the sender took from connect to the receiver's close.
    pub elapsed: Duration,
    /// The client address the listener saw.
    pub peer: Option<SocketAddrV4>,
}

fn last_value(out: &str, prefix: &str) -> Option<(u64, String)> {
    out.lines().rev().find_map(|l| {
        let mut w = l.strip_prefix(prefix)?.split_whitespace();
        let n = w.next()?.parse().ok()?;
        Some((n, w.next().unwrap_or("").to_string()))
    })
}

impl PacedTransfer {
    /// Bytes the receiver has read so far (in 64 KiB steps).
    pub fn received_so_far(&self) -> u64 {
        last_value(&self.receiver.stdout(), "got ").map_or(0, |(n, _)| n)
    }

    /// Waits until the receiver has read at least `n` bytes (data that crossed the network,
    /// not just data queued in the sender's socket).
    pub fn wait_received(&mut self, n: u64, deadline: Duration) -> Result<u64> {
        let what = format!("{n} bytes received by {}", self.what);
        let out = self.receiver.wait_stdout(&what, deadline, |o| {
            last_value(o, "got ").is_some_and(|(s, _)| s >= n)
        })?;
        Ok(last_value(&out, "got ").map_or(0, |(s, _)| s))
    }

    /// Waits for both ends to finish and checks that the receiver got exactly the bytes sent.
    pub fn finish(mut self) -> Result<PacedReport> {
        let left = self.deadline.saturating_sub(self.started.elapsed());
        let sent = self.sender.wait_exit(left)?;
        let sender_out = self.sender.stdout();
        ensure!(
            sent.is_some_and(|s| s.success()),
            "{}: the sender did not finish cleanly ({sent:?}) within {:?}: {} {}",
            self.what,
            self.deadline,
            sender_out.lines().last().unwrap_or(""),
            self.sender.stderr().trim()
        );
        let received = self.receiver.wait_exit(Duration::from_secs(20))?;
        let receiver_out = self.receiver.stdout();
        ensure!(
            received.is_some_and(|s| s.success()),
            "{}: the receiver did not finish cleanly ({received:?}): {receiver_out} {}",
            self.what,
            self.receiver.stderr().trim()
        );
        let (n_sent, h_sent) = last_value(&sender_out, "sent ")
            .ok_or_else(|| anyhow!("{}: sender printed no total: {sender_out}", self.what))?;
        let (n_recv, h_recv) = last_value(&receiver_out, "received ")
            .ok_or_else(|| anyhow!("{}: receiver printed no total: {receiver_out}", self.what))?;
        ensure!(
            n_sent == self.bytes as u64,
            "{}: sent {n_sent} of {} bytes",
            self.what,
            self.bytes
        );
        ensure!(
            n_recv == n_sent && h_recv == h_sent,
            "{}: sent {n_sent} bytes (sha256 {h_sent}), received {n_recv} bytes (sha256 {h_recv})",
            self.what
        );
        let peer = receiver_out
            .lines()
            .find_map(|l| l.strip_prefix("peer ")?.trim().parse().ok());
        let secs: f64 = sender_out
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("sent ")?
                    .split_whitespace()
                    .nth(2)?
                    .parse()
                    .ok()
            })
            .unwrap_or_default();
        Ok(PacedReport {
            bytes: n_recv,
            sha256: h_recv,
            elapsed: Duration::from_secs_f64(secs.max(0.0)),
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_applied_lines() {
        let log = "2026-11-27T18:54:30.384823Z  INFO dvr_userspace::agent: datapath loaded host=\"h1\"\n\
                   2026-11-27T18:54:32.423488Z  INFO dvr_userspace::agent: applied seconds=0.00183895 upserted=0 deleted=0 taps_attached=[\"tap0000000c-01\"] taps_detached=[] taps=1\n\
                   2026-11-27T18:54:33.423488Z  INFO dvr_userspace::agent: applied seconds=0.001 upserted=12 deleted=3 taps_attached=[]\n";
        let a = parse_applied(log);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].upserted, a[0].deleted), (0, 0));
        assert_eq!((a[1].upserted, a[1].deleted), (12, 3));
    }

    #[test]
    fn counts_ping_replies() {
        let out = "PING 1.2.3.4 (1.2.3.4) 56(84) bytes of data.\n\
                   64 bytes from 1.2.3.4: icmp_seq=1 ttl=63 time=0.1 ms\n\
                   64 bytes from 1.2.3.4: icmp_seq=1 ttl=63 time=0.1 ms (DUP!)\n\
                   64 bytes from 1.2.3.4: icmp_seq=2 ttl=63 time=0.1 ms\n";
        assert_eq!(count_replies(out), 2);
    }

    #[test]
    fn finds_last_values() {
        assert_eq!(
            last_value("progress 10\nprogress 20\n", "progress "),
            Some((20, String::new()))
        );
        assert_eq!(
            last_value("sent 5 abcd\n", "sent "),
            Some((5, "abcd".to_string()))
        );
    }
}
