//! Security groups in the test bed (issue 12): groups in the state, changes of a running
//! cloud that are awaited until every agent applied them, and traffic probes that tell
//! "answered", "refused by the peer" and "nothing came back" apart.
//!
//! - State: [`Topology::security_group`](crate::Topology::security_group) (rules nested,
//!   [`SecurityGroup::stateless`]), [`Topology::security_group_rule`](crate::Topology::security_group_rule)
//!   (the top-level list), [`Topology::address_group`](crate::Topology::address_group), and per
//!   VM [`VmSpec::security_groups`](crate::VmSpec::security_groups) and
//!   [`VmSpec::admin_state_up`](crate::VmSpec::admin_state_up). A VM whose spec never names
//!   groups has no `security_groups` key: it is not filtered, like every VM of the other tests.
//! - Changes: [`Cloud::apply_state`] edits the state, rewrites the file (the path of
//!   [`Cloud::update_state`]) and waits until every agent's pinned maps that say how a port is
//!   filtered (`local_ports`, `port_security`, `sg_remote`, `sg_remote6`, `sg_rules`) equal
//!   what the agent
//!   library compiles from the new state for that host ([`Cloud::wait_applied`]): the moment
//!   the datapath of every host enforces the change. A refused state is awaited in the log
//!   ([`Cloud::refused_lines`], [`Cloud::wait_refused`]).
//! - Traffic: [`Cloud::sg_server`] (TCP and UDP echo on a set of ports, logging every peer),
//!   [`Cloud::probe`] (concurrent TCP connects and UDP requests with a bounded wait each) and
//!   [`Cloud::start_ticker`] (a long-lived TCP connection exchanging a line every 100 ms,
//!   timestamping each echo), each to an IPv4 or an IPv6 address (the server listens on
//!   both families where the VM has IPv6).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use dvr_common::port::{LocalPort, SecKey};
use dvr_common::sg::{SgRemote6Key, SgRemoteKey, SgRule, SgRuleKey};
use dvr_userspace::{compile, maps::HostMaps, model};
use serde_json::Value;

use crate::cloud::Cloud;
use crate::cmd::{self, wait_until};
use crate::external::Bg;
pub use crate::state::{AddressGroup, SecurityGroup, SecurityGroupRule};

/// How long [`Cloud::apply_state`] waits for every agent.
pub const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// The maps that say how a host filters its ports.
#[derive(Debug, Default, PartialEq)]
struct PortMaps {
    local_ports: BTreeMap<u32, LocalPort>,
    port_security: BTreeMap<(u32, SecKey), u32>,
    sg_remote: BTreeMap<(u32, SgRemoteKey), u32>,
    sg_remote6: BTreeMap<(u32, SgRemote6Key), u32>,
    sg_rules: BTreeMap<(u32, SgRuleKey), SgRule>,
}

impl PortMaps {
    /// Which maps differ from `want`, with their sizes (for timeout messages).
    fn differences(&self, want: &PortMaps) -> String {
        let mut out = Vec::new();
        let mut one = |name: &str, same: bool, have: usize, want: usize| {
            if !same {
                out.push(format!("{name}: {have} entries, want {want}"));
            }
        };
        one(
            "local_ports",
            self.local_ports == want.local_ports,
            self.local_ports.len(),
            want.local_ports.len(),
        );
        one(
            "port_security",
            self.port_security == want.port_security,
            self.port_security.len(),
            want.port_security.len(),
        );
        one(
            "sg_remote",
            self.sg_remote == want.sg_remote,
            self.sg_remote.len(),
            want.sg_remote.len(),
        );
        one(
            "sg_remote6",
            self.sg_remote6 == want.sg_remote6,
            self.sg_remote6.len(),
            want.sg_remote6.len(),
        );
        one(
            "sg_rules",
            self.sg_rules == want.sg_rules,
            self.sg_rules.len(),
            want.sg_rules.len(),
        );
        out.join("; ")
    }
}

/// When a change was written and when every agent had applied it.
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    /// The state file was replaced.
    pub written: Instant,
    /// `written` on the wall clock.
    pub written_wall: SystemTime,
    /// Every agent's maps matched the new state (first poll that saw it).
    pub applied: Instant,
    /// `applied` on the wall clock, to compare with timestamps printed in the namespaces.
    pub applied_wall: SystemTime,
}

impl Applied {
    /// From the write to the last agent's maps matching.
    pub fn took(&self) -> Duration {
        self.applied.duration_since(self.written)
    }

    /// `applied_wall` as seconds since the epoch (Python's `time.time()`).
    pub fn applied_epoch(&self) -> f64 {
        epoch(self.applied_wall)
    }

    /// `written_wall` as seconds since the epoch.
    pub fn written_epoch(&self) -> f64 {
        epoch(self.written_wall)
    }
}

/// Seconds since the epoch.
pub fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The protocol of a [`Cloud::probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (TCP) and the payload came back echoed.
    Answered,
    /// The peer refused: a TCP reset or, for UDP, an ICMP port unreachable ("connection
    /// refused" on the connected socket).
    Refused,
    /// Nothing came back within the probe's timeout.
    Timeout,
    /// Anything else, with the error text.
    Error(String),
}

/// The probe client: one thread per `proto:port` argument; TCP connects and echoes a line,
/// UDP sends one datagram on a connected socket and waits for the echo. A first argument
/// `bind=IP` sends from that source address. Prints
/// `<proto> <port> ok|refused|timeout|error <text>` per probe.
const PROBE: &str = r#"
import socket, sys, threading
dst, timeout = sys.argv[1], float(sys.argv[2])
specs = sys.argv[3:]
bind = None
if specs and specs[0].startswith("bind="):
    bind, specs = specs[0][5:], specs[1:]
lock = threading.Lock()
def say(proto, port, what):
    with lock:
        print(proto, port, what, flush=True)
def probe(spec):
    proto, port = spec.split(":")
    port = int(port)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, kind)
    s.settimeout(timeout)
    msg = b"probe %d\n" % port
    try:
        if bind:
            s.bind((bind, 0))
        s.connect((dst, port))
        if proto == "tcp":
            s.sendall(msg)
        else:
            s.send(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(100)
            if not d:
                break
            got += d
        say(proto, port, "ok" if got == msg else "error short echo %r" % got)
    except ConnectionRefusedError:
        say(proto, port, "refused")
    except socket.timeout:
        say(proto, port, "timeout")
    except OSError as e:
        say(proto, port, "error %s" % e)
    finally:
        s.close()
ts = [threading.Thread(target=probe, args=(a,)) for a in specs]
for t in ts:
    t.start()
for t in ts:
    t.join()
"#;

/// TCP and UDP echo on every port named in `argv[1:]` (`tcp:P`, `udp:P`), on IPv4 and, where
/// the namespace has IPv6, on IPv6 too (an IPv6-only socket beside the IPv4 one, so IPv4
/// peers are not mapped addresses): prints `listening`, then `<proto> <port> <peer ip>` per
/// connection or datagram.
const SERVER: &str = r#"
import socket, sys, threading
lock = threading.Lock()
def say(*a):
    with lock:
        print(*a, flush=True)
def tcp_conn(c, port, peer):
    say("tcp", port, peer[0])
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
def tcp(s, port):
    while True:
        c, a = s.accept()
        threading.Thread(target=tcp_conn, args=(c, port, a), daemon=True).start()
def udp(s, port):
    while True:
        d, a = s.recvfrom(65535)
        say("udp", port, a[0])
        s.sendto(d, a)
ts = []
def sock(fam, kind, port):
    s = socket.socket(fam, kind)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    return s
for spec in sys.argv[1:]:
    proto, port = spec.split(":")
    port = int(port)
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            if proto == "tcp":
                s = sock(fam, socket.SOCK_STREAM, port)
                s.listen(64)
                ts.append(threading.Thread(target=tcp, args=(s, port), daemon=True))
            else:
                s = sock(fam, socket.SOCK_DGRAM, port)
                ts.append(threading.Thread(target=udp, args=(s, port), daemon=True))
        except OSError:
            if fam == socket.AF_INET:
                raise
for t in ts:
    t.start()
say("listening")
for t in ts:
    t.join()
"#;

/// A long-lived TCP connection to `argv[1]:argv[2]`: sends a numbered line every
/// `argv[3]` seconds and prints `recv <n> <time.time()>` for each line echoed back;
/// `connected <time>` first, `closed <time>` if the peer closes, `error <text>` on failure.
const TICKER: &str = r#"
import socket, sys, threading, time
dst, port, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((dst, port), timeout=5)
s.settimeout(None)
print("connected %.6f" % time.time(), flush=True)
def reader():
    buf = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                print("closed %.6f" % time.time(), flush=True)
                return
            buf += d
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                print("recv %s %.6f" % (line.decode(), time.time()), flush=True)
    except OSError as e:
        print("error %s" % e, flush=True)
threading.Thread(target=reader, daemon=True).start()
n = 0
while True:
    n += 1
    try:
        s.sendall(b"%d\n" % n)
    except OSError as e:
        print("error %s" % e, flush=True)
        break
    time.sleep(every)
"#;

/// A UDP server on `argv[1]` that, for every peer that sends it a datagram, sends that peer
/// a numbered line every `argv[2]` seconds from then on (the peer never sends again: a flow
/// whose original side is silent). Prints `listening`, then `peer <ip>:<port>` per new peer.
const PUSH_SERVER: &str = r#"
import socket, sys, threading, time
port, every = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("listening", flush=True)
def push(a):
    n = 0
    while True:
        n += 1
        try:
            s.sendto(b"%d\n" % n, a)
        except OSError:
            pass
        time.sleep(every)
seen = set()
while True:
    d, a = s.recvfrom(65535)
    if a not in seen:
        seen.add(a)
        print("peer %s:%d" % a, flush=True)
        threading.Thread(target=push, args=(a,), daemon=True).start()
"#;

/// Sends one datagram to `argv[1]:argv[2]`, then only listens: prints `recv <line> <time>`
/// per datagram received.
const PUSH_CLIENT: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"subscribe\n")
print("connected %.6f" % time.time(), flush=True)
while True:
    try:
        d = s.recv(65535)
    except OSError as e:
        print("error %s" % e, flush=True)
        continue
    print("recv %s %.6f" % (d.decode().strip(), time.time()), flush=True)
"#;

/// A running [`Cloud::start_ticker`] or [`Cloud::start_push_client`] client.
pub struct Ticker {
    bg: Bg,
    what: String,
}

impl Ticker {
    /// The wall-clock times (seconds since the epoch) at which echoed lines arrived.
    pub fn times(&self) -> Vec<f64> {
        self.bg
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("recv "))
            .filter_map(|r| r.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    /// The last echo's arrival time.
    pub fn last(&self) -> Option<f64> {
        self.times().last().copied()
    }

    /// Waits until an echo arrives later than `after` (epoch seconds); returns its time.
    pub fn wait_echo_after(&mut self, after: f64, deadline: Duration) -> Result<f64> {
        let what = format!("{}: an echo after {after:.3}", self.what);
        wait_until(&what, deadline, |why| {
            let last = self.last();
            *why = format!(
                "last echo {last:?}; stdout tail: {}",
                tail(&self.bg.stdout(), 3)
            );
            if let Some(status) = self.bg.try_wait()? {
                bail!(
                    "{} exited ({status}): {} {}",
                    self.what,
                    self.bg.stdout(),
                    self.bg.stderr()
                );
            }
            Ok(last.filter(|t| *t > after))
        })
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        format!("{}{}", self.bg.stdout(), self.bg.stderr())
    }

    /// Stops the client.
    pub fn stop(&mut self) -> Result<()> {
        self.bg.stop().map(|_| ())
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

impl Cloud {
    // ---- applying changes ----------------------------------------------------------------

    /// The ifindex of every link in `host`'s namespace, by name.
    fn link_ifindexes(&self, host: &str) -> Result<HashMap<String, u32>> {
        let ns = self.host(host)?.ns.clone();
        let out = cmd::run_ok("ip", &["-n", &ns, "-j", "link", "show"])?;
        let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link show")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let name = l["ifname"].as_str()?;
                let ifindex = u32::try_from(l["ifindex"].as_u64()?).ok()?;
                Some((name.to_string(), ifindex))
            })
            .collect())
    }

    /// What `host`'s agent writes for the cloud's current state: the agent library's compile
    /// of it for that host and its taps as they exist now (a state file has no election view,
    /// so `None`, as the agent does).
    pub fn compiled_entries(&self, host: &str) -> Result<compile::MapEntries> {
        self.compiled_entries_of(host, &serde_json::to_value(&self.state)?)
    }

    /// [`Cloud::compiled_entries`] of another state (`state`, e.g. one written to etcd
    /// directly), against `host`'s taps.
    pub fn compiled_entries_of(&self, host: &str, state: &Value) -> Result<compile::MapEntries> {
        self.compiled_entries_with(host, state, None)
    }

    /// [`Cloud::compiled_entries_of`] with an election view (`ha`), as an agent on etcd
    /// compiles.
    pub fn compiled_entries_with(
        &self,
        host: &str,
        state: &Value,
        ha: Option<&compile::HaRuntime>,
    ) -> Result<compile::MapEntries> {
        let text = serde_json::to_string(state)?;
        let state = model::State::from_json(&text)
            .map_err(|e| anyhow!("the cloud's own state is invalid: {e}"))?;
        let agent_name = self.host(host)?.agent_name.clone();
        let links = self.link_ifindexes(host)?;
        let compiled = compile::compile(&state, &agent_name, ha, &|tap| links.get(tap).copied())
            .map_err(|e| anyhow!("compiling the cloud's state for {host}: {e}"))?;
        Ok(compiled.entries)
    }

    /// How many entries of `host`'s agent-owned maps differ from a compile of `state` (0:
    /// exactly those entries).
    pub fn map_differences(&self, host: &str, state: &Value) -> Result<usize> {
        let want = self.compiled_entries_of(host, state)?;
        let maps = HostMaps::open(&self.pin_dir(host)?)?;
        Ok(dvr_userspace::reconcile::differences(&maps, &want)?)
    }

    /// The security group part of [`Cloud::compiled_entries`].
    fn desired_port_maps(&self, host: &str) -> Result<PortMaps> {
        let e = self.compiled_entries(host)?;
        Ok(PortMaps {
            local_ports: e.local_ports,
            port_security: e.port_security,
            sg_remote: e.sg_remote,
            sg_remote6: e.sg_remote6,
            sg_rules: e.sg_rules,
        })
    }

    /// The same maps as `host`'s datapath holds them.
    fn pinned_port_maps(maps: &HostMaps) -> Result<PortMaps> {
        Ok(PortMaps {
            local_ports: maps.local_ports.read()?,
            port_security: maps.port_security.read()?,
            sg_remote: maps.sg_remote.read()?,
            sg_remote6: maps.sg_remote6.read()?,
            sg_rules: maps.sg_rules.read()?,
        })
    }

    /// Whether the datapath of `host` filters its ports as the cloud's current state says:
    /// `None` when it does, else which maps differ.
    pub fn port_maps_differ(&self, host: &str) -> Result<Option<String>> {
        let want = self.desired_port_maps(host)?;
        let maps = HostMaps::open(&self.pin_dir(host)?)
            .with_context(|| format!("pinned maps of {host}"))?;
        let have = Self::pinned_port_maps(&maps)?;
        Ok((have != want).then(|| have.differences(&want)))
    }

    /// Waits until every running agent's datapath filters its ports as the cloud's current
    /// state says (see the module docs); returns when the last one did. Fails at once if an
    /// agent exits.
    pub fn wait_applied(&mut self, deadline: Duration) -> Result<(Instant, SystemTime)> {
        let hosts: Vec<String> = self.agents.keys().cloned().collect();
        let mut pending = Vec::new();
        for h in &hosts {
            let want = self.desired_port_maps(h)?;
            let maps =
                HostMaps::open(&self.pin_dir(h)?).with_context(|| format!("pinned maps of {h}"))?;
            pending.push((h.clone(), want, maps));
        }
        let res = wait_until("every agent to apply the state", deadline, |why| {
            let mut left = Vec::new();
            for (h, want, maps) in &pending {
                let have = Self::pinned_port_maps(maps)?;
                if have != *want {
                    left.push(format!("{h}: {}", have.differences(want)));
                }
            }
            if left.is_empty() {
                return Ok(Some((Instant::now(), SystemTime::now())));
            }
            *why = left.join(" / ");
            Ok(None)
        });
        match res {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut logs = String::new();
                for h in &hosts {
                    let running = if self.agent_running(h)? {
                        "running"
                    } else {
                        "EXITED"
                    };
                    logs.push_str(&format!(
                        "\n---- agent {h} ({running}) ----\n{}",
                        self.agent_log_tail(h, 15)
                    ));
                }
                Err(e.context(format!("agent logs:{logs}")))
            }
        }
    }

    /// Edits the state, rewrites the state file and waits until every agent applied it
    /// ([`Cloud::wait_applied`], [`APPLY_DEADLINE`]).
    pub fn apply_state(&mut self, f: impl FnOnce(&mut crate::State)) -> Result<Applied> {
        self.update_state(f)?;
        let (written, written_wall) = (Instant::now(), SystemTime::now());
        let (applied, applied_wall) = self.wait_applied(APPLY_DEADLINE)?;
        Ok(Applied {
            written,
            written_wall,
            applied,
            applied_wall,
        })
    }

    /// Sets the `security_groups` of `vm`'s port (`None`: removes the key) and waits until
    /// every agent applied it.
    pub fn set_security_groups(&mut self, vm: &str, groups: Option<&[&str]>) -> Result<Applied> {
        let port_id = self.vm(vm)?.port_id.clone();
        let groups: Option<Vec<String>> = groups.map(|g| g.iter().map(|s| s.to_string()).collect());
        self.apply_port(&port_id, |p| p.security_groups = groups)
    }

    /// Sets `admin_state_up` of `vm`'s port and waits until every agent applied it.
    pub fn set_admin_state_up(&mut self, vm: &str, up: bool) -> Result<Applied> {
        let port_id = self.vm(vm)?.port_id.clone();
        self.apply_port(&port_id, |p| p.admin_state_up = Some(up))
    }

    /// Sets `port_security_enabled` of `vm`'s port (and, when disabling it, empties its
    /// `security_groups`: Neutron refuses groups on such a port) and waits until every agent
    /// applied it.
    pub fn set_port_security(&mut self, vm: &str, enabled: bool) -> Result<Applied> {
        let port_id = self.vm(vm)?.port_id.clone();
        self.apply_port(&port_id, |p| {
            p.port_security_enabled = enabled;
            if !enabled && p.security_groups.is_some() {
                p.security_groups = Some(Vec::new());
            }
        })
    }

    fn apply_port(
        &mut self,
        port_id: &str,
        f: impl FnOnce(&mut crate::state::Port),
    ) -> Result<Applied> {
        ensure!(
            self.state.ports.iter().any(|p| p.id == port_id),
            "port {port_id} not in the state"
        );
        self.apply_state(|s| {
            if let Some(p) = s.port_mut(port_id) {
                f(p);
            }
        })
    }

    /// Edits security group `id` and waits until every agent applied the change.
    pub fn edit_security_group(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut SecurityGroup),
    ) -> Result<Applied> {
        ensure!(
            self.state.security_groups.iter().any(|g| g.id == id),
            "no security group {id} in the state"
        );
        self.apply_state(|s| {
            if let Some(g) = s.security_group_mut(id) {
                f(g);
            }
        })
    }

    /// The `refused new state` lines of `host`'s agent log so far.
    pub fn refused_lines(&self, host: &str) -> Result<Vec<String>> {
        Ok(self
            .agent_log(host)?
            .lines()
            .filter(|l| l.contains("refused new state"))
            .map(str::to_string)
            .collect())
    }

    /// Waits until `host`'s agent has logged more than `before` `refused new state` lines;
    /// returns the newest.
    pub fn wait_refused(&self, host: &str, before: usize, deadline: Duration) -> Result<String> {
        wait_until(
            &format!("agent of {host} to refuse the state"),
            deadline,
            |why| {
                let lines = self.refused_lines(host)?;
                if lines.len() > before {
                    return Ok(lines.last().cloned());
                }
                *why = self.agent_log_tail(host, 3);
                Ok(None)
            },
        )
    }

    // ---- traffic -------------------------------------------------------------------------

    /// Starts TCP and UDP echo servers on the given ports in `who` and waits until all
    /// listen. Its stdout has `<proto> <port> <peer ip>` per connection or datagram
    /// ([`served`]).
    pub fn sg_server(&mut self, who: &str, tcp: &[u16], udp: &[u16]) -> Result<Bg> {
        let specs: Vec<String> = tcp
            .iter()
            .map(|p| format!("tcp:{p}"))
            .chain(udp.iter().map(|p| format!("udp:{p}")))
            .collect();
        let args: Vec<&str> = specs.iter().map(String::as_str).collect();
        let mut bg = self.spawn_python(who, SERVER, &args)?;
        bg.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        for p in tcp {
            self.wait_listening(who, false, *p, Duration::from_secs(5))?;
        }
        for p in udp {
            self.wait_listening(who, true, *p, Duration::from_secs(5))?;
        }
        Ok(bg)
    }

    /// Probes `dst` (IPv4 or IPv6) from `who` on every `(proto, port)` at once, each with
    /// `timeout`; returns what each saw.
    pub fn probe(
        &self,
        who: &str,
        dst: impl Into<IpAddr>,
        probes: &[(Proto, u16)],
        timeout: Duration,
    ) -> Result<BTreeMap<(Proto, u16), Outcome>> {
        self.probe_inner(who, None, dst.into(), probes, timeout)
    }

    /// [`Cloud::probe`] from source address `bind` (an address of `who`, e.g.
    /// [`crate::INTERNET_HOST`] in the external namespace).
    pub fn probe_from(
        &self,
        who: &str,
        bind: Ipv4Addr,
        dst: Ipv4Addr,
        probes: &[(Proto, u16)],
        timeout: Duration,
    ) -> Result<BTreeMap<(Proto, u16), Outcome>> {
        self.probe_inner(who, Some(bind), dst.into(), probes, timeout)
    }

    fn probe_inner(
        &self,
        who: &str,
        bind: Option<Ipv4Addr>,
        dst: IpAddr,
        probes: &[(Proto, u16)],
        timeout: Duration,
    ) -> Result<BTreeMap<(Proto, u16), Outcome>> {
        let mut specs: Vec<String> = bind.map(|b| format!("bind={b}")).into_iter().collect();
        specs.extend(
            probes
                .iter()
                .map(|(p, port)| format!("{}:{port}", p.as_str())),
        );
        let dst_s = dst.to_string();
        let timeout_s = format!("{:.3}", timeout.as_secs_f64());
        let mut args = vec![dst_s.as_str(), timeout_s.as_str()];
        args.extend(specs.iter().map(String::as_str));
        let out = self.python(who, PROBE, &args, timeout + Duration::from_secs(20))?;
        let text = cmd::text(&out);
        ensure!(
            out.status.success(),
            "probe from {who} to {dst} failed: {text}"
        );
        let mut res = BTreeMap::new();
        for line in text.lines() {
            let mut w = line.splitn(3, ' ');
            let (Some(proto), Some(port), Some(what)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            let proto = match proto {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => continue,
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let outcome = match what {
                "ok" => Outcome::Answered,
                "refused" => Outcome::Refused,
                "timeout" => Outcome::Timeout,
                other => Outcome::Error(other.to_string()),
            };
            res.insert((proto, port), outcome);
        }
        for p in probes {
            ensure!(
                res.contains_key(p),
                "probe {p:?} from {who} to {dst} printed nothing: {text}"
            );
        }
        Ok(res)
    }

    /// Starts a [`Ticker`] from `who` to `dst:port` (a line every `every`) and waits for its
    /// first echo.
    pub fn start_ticker(
        &mut self,
        who: &str,
        dst: impl Into<IpAddr>,
        port: u16,
        every: Duration,
    ) -> Result<Ticker> {
        let dst: IpAddr = dst.into();
        let bg = self.spawn_python(
            who,
            TICKER,
            &[
                &dst.to_string(),
                &port.to_string(),
                &format!("{:.3}", every.as_secs_f64()),
            ],
        )?;
        let mut t = Ticker {
            bg,
            what: format!("ticker {who} -> {dst}:{port}"),
        };
        t.wait_echo_after(0.0, Duration::from_secs(10))?;
        Ok(t)
    }
}

impl Cloud {
    /// Starts a [`PUSH_SERVER`]-style UDP server on `port` in `who` (a line every `every` to
    /// each peer that sent it a datagram) and waits until it listens.
    pub fn push_server(&mut self, who: &str, port: u16, every: Duration) -> Result<Bg> {
        let mut bg = self.spawn_python(
            who,
            PUSH_SERVER,
            &[&port.to_string(), &format!("{:.3}", every.as_secs_f64())],
        )?;
        bg.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        self.wait_listening(who, true, port, Duration::from_secs(5))?;
        Ok(bg)
    }

    /// Starts a UDP client in `who` that sends one datagram to `dst:port` (a
    /// [`Cloud::push_server`]) and then only receives; waits for its first line.
    pub fn start_push_client(&mut self, who: &str, dst: Ipv4Addr, port: u16) -> Result<Ticker> {
        let bg = self.spawn_python(who, PUSH_CLIENT, &[&dst.to_string(), &port.to_string()])?;
        let mut t = Ticker {
            bg,
            what: format!("UDP push client {who} -> {dst}:{port}"),
        };
        t.wait_echo_after(0.0, Duration::from_secs(10))?;
        Ok(t)
    }
}

/// The peers a [`Cloud::sg_server`] saw on `proto`/`port`, from its stdout.
pub fn served(stdout: &str, proto: Proto, port: u16) -> Vec<String> {
    let head = format!("{} {port} ", proto.as_str());
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&head))
        .map(|p| p.trim().to_string())
        .collect()
}

/// How long [`expect_probes`] waits for an answer: a refused probe waits this long.
pub const PROBE_WAIT: Duration = Duration::from_millis(1500);

/// An ingress rule `id` (IPv4, any protocol from anywhere, until narrowed).
pub fn rule_in(id: &str) -> SecurityGroupRule {
    SecurityGroupRule::ingress(id)
}

/// An egress rule `id` (IPv4, any protocol to anywhere, until narrowed).
pub fn rule_out(id: &str) -> SecurityGroupRule {
    SecurityGroupRule::egress(id)
}

/// Probes `dst` from `from` and checks each outcome against `want`; returns the number of
/// probes expected to time out.
pub fn expect_probes(
    c: &Cloud,
    from: &str,
    dst: impl Into<IpAddr>,
    want: &[(Proto, u16, Outcome)],
) -> Result<u64> {
    let dst = dst.into();
    let probes: Vec<(Proto, u16)> = want.iter().map(|(p, port, _)| (*p, *port)).collect();
    let got = c.probe(from, dst, &probes, PROBE_WAIT)?;
    eprintln!("probes {from} -> {dst}: {got:?}");
    let wrong: Vec<String> = want
        .iter()
        .filter(|(p, port, o)| got.get(&(*p, *port)) != Some(o))
        .map(|(p, port, o)| format!("{p:?} {port}: want {o:?}, got {:?}", got.get(&(*p, *port))))
        .collect();
    ensure!(
        wrong.is_empty(),
        "probes from {from} to {dst}:\n  {}\nall: {got:?}",
        wrong.join("\n  ")
    );
    Ok(want
        .iter()
        .filter(|(_, _, o)| *o == Outcome::Timeout)
        .count() as u64)
}

/// Fails unless the server's log shows no peer on any of `refused`, and at least one on each
/// of `admitted`.
pub fn expect_served(log: &str, admitted: &[(Proto, u16)], refused: &[(Proto, u16)]) -> Result<()> {
    for (p, port) in admitted {
        ensure!(
            !served(log, *p, *port).is_empty(),
            "the server saw nothing on {p:?} {port}; its log:\n{log}"
        );
    }
    for (p, port) in refused {
        let peers = served(log, *p, *port);
        ensure!(
            peers.is_empty(),
            "{p:?} {port} must be refused before the server, which saw {peers:?}; log:\n{log}"
        );
    }
    Ok(())
}

/// The security group conntrack entries of `vm`'s port (its zone `SG_ZONE | tap ifindex`) on
/// its host, as `dvrctl show conntrack` lists them.
pub fn sg_conntrack(c: &Cloud, vm: &str) -> Result<Vec<Value>> {
    let host = c.vm(vm)?.host.clone();
    let zone = u64::from(dvr_common::sg::SG_ZONE) | c.tap_ifindex(vm)?;
    Ok(c.conntrack(&host)?
        .into_iter()
        .filter(|e| e["zone"].as_u64() == Some(zone))
        .collect())
}
