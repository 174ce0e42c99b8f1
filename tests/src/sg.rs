//! Security groups in the test bed (issue 12): groups, rules and address groups in the state,
//! ports that join them, changes while the agents run, and traffic probes that tell delivered
//! from refused.
//!
//! - [`Topology::security_group`](crate::Topology::security_group) with a
//!   [`SecurityGroupSpec`] of [`RuleSpec`]s (remote groups and address groups by logical name),
//!   [`Topology::address_group`](crate::Topology::address_group), and per VM
//!   [`VmSpec::security_groups`](crate::VmSpec::security_groups) /
//!   [`VmSpec::admin_state_up`](crate::VmSpec::admin_state_up). A VM that never calls
//!   `security_groups` has no `security_groups` key and is not filtered, so tests that know
//!   nothing of security groups write the same states as before.
//! - Changes while the agents run rewrite the state file like Neutron would
//!   ([`Cloud::add_rule`], [`Cloud::remove_rule`], [`Cloud::add_security_group`],
//!   [`Cloud::set_port_groups`], [`Cloud::set_admin_state_up`]); [`Cloud::apply_and_wait`] wraps
//!   one and waits until the named agents have applied it (their `applied` log line for a state
//!   they read, with its timestamp: [`Applied`]), failing at once if one refused it;
//!   [`Cloud::refused_after`] expects a refusal and returns its text.
//! - [`Cloud::port_server`] answers TCP connections and UDP datagrams on a list of ports with a
//!   banner naming itself, the port and the peer it saw; [`Cloud::probe`] tries a list of
//!   ports at once (each bounded by a timeout) and tells admitted (banner), timed out (dropped
//!   on the way: a negative that the caller backs with a drop counter) and refused (RST or ICMP
//!   port unreachable: the packet got there) apart.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::cloud::{Cloud, new_id};
use crate::cmd::{text, wait_until};
use crate::external::Bg;
use crate::state;

const KIND_SECURITY_GROUP: u32 = 6;
const KIND_RULE: u32 = 7;
const KIND_ADDRESS_GROUP: u32 = 8;

/// How long [`Cloud::apply_and_wait`] and [`Cloud::refused_after`] wait for each agent.
pub const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// The remote of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// No remote field: any address.
    Any,
    /// `remote_ip_prefix`.
    Prefix(String),
    /// `remote_group_id`, by the group's logical name.
    Group(String),
    /// `remote_address_group_id`, by the address group's logical name.
    AddressGroup(String),
}

/// A rule to create, named (logically) for later lookups and removal.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` (default) or `IPv6`.
    pub ethertype: String,
    /// `None`: any protocol (`null`).
    pub protocol: Option<String>,
    pub port_range_min: Option<i64>,
    pub port_range_max: Option<i64>,
    pub remote: Remote,
}

impl RuleSpec {
    fn new(name: &str, direction: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            direction: direction.into(),
            ethertype: "IPv4".into(),
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote: Remote::Any,
        }
    }

    /// An ingress rule (what the port may receive), any protocol from anywhere until narrowed.
    pub fn ingress(name: &str) -> RuleSpec {
        RuleSpec::new(name, "ingress")
    }

    /// An egress rule (what the port may send), any protocol to anywhere until narrowed.
    pub fn egress(name: &str) -> RuleSpec {
        RuleSpec::new(name, "egress")
    }

    /// `protocol` as given (a name or a number as a string).
    pub fn protocol(mut self, protocol: &str) -> RuleSpec {
        self.protocol = Some(protocol.into());
        self
    }

    /// TCP ports `min..=max`.
    pub fn tcp(self, min: u16, max: u16) -> RuleSpec {
        self.protocol("tcp")
            .ports(i64::from(min), Some(i64::from(max)))
    }

    /// UDP ports `min..=max`.
    pub fn udp(self, min: u16, max: u16) -> RuleSpec {
        self.protocol("udp")
            .ports(i64::from(min), Some(i64::from(max)))
    }

    /// `port_range_min` / `port_range_max` as given (ICMP: type and code).
    pub fn ports(mut self, min: i64, max: Option<i64>) -> RuleSpec {
        self.port_range_min = Some(min);
        self.port_range_max = max;
        self
    }

    /// ICMP of type `icmp_type` (and `code` if given).
    pub fn icmp_type(self, icmp_type: u8, code: Option<u8>) -> RuleSpec {
        self.protocol("icmp")
            .ports(i64::from(icmp_type), code.map(i64::from))
    }

    /// `remote_ip_prefix` (a CIDR or an address).
    pub fn remote_ip_prefix(mut self, prefix: &str) -> RuleSpec {
        self.remote = Remote::Prefix(prefix.into());
        self
    }

    /// `remote_group_id`: the members of security group `group` (logical name).
    pub fn remote_group(mut self, group: &str) -> RuleSpec {
        self.remote = Remote::Group(group.into());
        self
    }

    /// `remote_address_group_id`: the addresses of address group `group` (logical name).
    pub fn remote_address_group(mut self, group: &str) -> RuleSpec {
        self.remote = Remote::AddressGroup(group.into());
        self
    }
}

/// A security group to create.
#[derive(Clone, Debug)]
pub struct SecurityGroupSpec {
    pub name: String,
    pub stateful: bool,
    pub rules: Vec<RuleSpec>,
}

impl SecurityGroupSpec {
    /// A stateful group without rules (admits nothing but base traffic until given some).
    pub fn new(name: &str) -> SecurityGroupSpec {
        SecurityGroupSpec {
            name: name.into(),
            stateful: true,
            rules: Vec::new(),
        }
    }

    /// `stateful: false`.
    pub fn stateless(mut self) -> SecurityGroupSpec {
        self.stateful = false;
        self
    }

    pub fn rule(mut self, rule: RuleSpec) -> SecurityGroupSpec {
        self.rules.push(rule);
        self
    }
}

/// A security group as created: its id and its rules' (logical name, id).
#[derive(Clone, Debug)]
pub struct SgInfo {
    pub name: String,
    pub id: String,
    pub rules: Vec<(String, String)>,
}

/// When the agents applied a state change ([`Cloud::apply_and_wait`]).
#[derive(Clone, Debug)]
pub struct Applied {
    /// Taken just before the change rewrote the state file.
    pub written: SystemTime,
    /// Per host (logical name): the timestamp of its first `applied` line for a state read
    /// after the change (logged once the maps are written and tracked flows re-checked).
    pub at: BTreeMap<String, SystemTime>,
}

impl Applied {
    /// The latest host's apply time.
    pub fn last(&self) -> SystemTime {
        self.at.values().copied().max().unwrap_or(self.written)
    }

    /// When `host` applied it.
    pub fn host(&self, host: &str) -> Result<SystemTime> {
        self.at
            .get(host)
            .copied()
            .ok_or_else(|| anyhow!("no apply time recorded for {host}"))
    }
}

/// Seconds since the epoch, for comparing with timestamps Python prints (`time.time()`).
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The timestamp that starts a tracing log line (`2026-11-27T18:54:32.423488Z  INFO ...`).
pub fn parse_log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u32>().ok()? * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The agent's `applied` lines for a state it read (`since_state_read=Some(..)`), in order.
fn state_applied_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("agent: applied ") && l.contains("since_state_read=Some("))
        .collect()
}

/// The agent's refusals of a new state: from each `refused new state` line up to the next
/// timestamped line (the error's field lines follow it).
fn refusals(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !l.contains("refused new state") {
            continue;
        }
        let mut text = l.to_string();
        for more in &lines[i + 1..] {
            if parse_log_time(more).is_some() || more.starts_with("--- ") {
                break;
            }
            text.push('\n');
            text.push_str(more);
        }
        out.push(text);
    }
    out
}

/// One traffic probe: a TCP connection or a UDP datagram to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
}

impl Probe {
    fn arg(self) -> String {
        match self {
            Probe::Tcp(p) => format!("tcp:{p}"),
            Probe::Udp(p) => format!("udp:{p}"),
        }
    }

    fn parse(proto: &str, port: &str) -> Option<Probe> {
        let port = port.parse().ok()?;
        match proto {
            "tcp" => Some(Probe::Tcp(port)),
            "udp" => Some(Probe::Udp(port)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp(p) => write!(f, "TCP {p}"),
            Probe::Udp(p) => write!(f, "UDP {p}"),
        }
    }
}

/// What a probe got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server's banner: `<server name> <proto> <port> <peer ip>`.
    Answered(String),
    /// Nothing came back within the timeout.
    Timeout,
    /// A TCP reset or an ICMP port unreachable came back.
    Refused,
    Error(String),
}

/// Answers TCP connections and UDP datagrams on the ports in `argv[2..]` (`tcp:N`, `udp:N`)
/// with `<argv[1]> <proto> <port> <peer ip>\n`; prints "listening" once every socket is bound,
/// then `<proto> <port> from <ip>:<port>` per connection or datagram.
const PORT_SERVER: &str = r#"
import select, socket, sys
name = sys.argv[1]
socks = {}
for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    port = int(port)
    if proto == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
    socks[s] = (proto, port)
print("listening", flush=True)
while True:
    ready, _, _ = select.select(list(socks), [], [])
    for s in ready:
        proto, port = socks[s]
        try:
            if proto == "tcp":
                c, a = s.accept()
                print("tcp %d from %s:%d" % (port, a[0], a[1]), flush=True)
                c.sendall(("%s tcp %d %s\n" % (name, port, a[0])).encode())
                c.close()
            else:
                d, a = s.recvfrom(65535)
                print("udp %d from %s:%d" % (port, a[0], a[1]), flush=True)
                s.sendto(("%s udp %d %s\n" % (name, port, a[0])).encode(), a)
        except OSError as e:
            print("error %s %d %s" % (proto, port, e), flush=True)
"#;

/// Tries every `tcp:N` / `udp:N` in `argv[4..]` towards `argv[1]` at once (from source address
/// `argv[2]` if not empty), each for at most `argv[3]` seconds (UDP: a datagram every 0.3 s),
/// and prints `<proto> <port> ok <banner with _ for spaces>`, `... timeout`, `... refused` or
/// `... error <reason>`.
const PROBE_CLIENT: &str = r#"
import socket, sys, threading, time
dst, bind, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
results = {}
def word(x):
    return str(x).strip().replace(" ", "_") or "-"
def tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if bind:
            s.bind((bind, 0))
        s.settimeout(timeout)
        s.connect((dst, port))
        data = b""
        while not data.endswith(b"\n"):
            d = s.recv(200)
            if not d:
                break
            data += d
        return "ok " + word(data.decode())
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "error " + word(e)
    finally:
        s.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if bind:
            s.bind((bind, 0))
        s.connect((dst, port))
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0:
                return "timeout"
            s.send(b"probe")
            s.settimeout(min(0.3, left))
            try:
                return "ok " + word(s.recv(200).decode())
            except socket.timeout:
                continue
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "error " + word(e)
    finally:
        s.close()
def run(spec):
    proto, port = spec.split(":")
    results[spec] = (tcp if proto == "tcp" else udp)(int(port))
threads = [threading.Thread(target=run, args=(spec,)) for spec in sys.argv[4:]]
for t in threads:
    t.start()
for t in threads:
    t.join()
for spec in sys.argv[4:]:
    proto, port = spec.split(":")
    print(proto, port, results.get(spec, "error no_result"), flush=True)
"#;

/// The result of [`Cloud::probe`].
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub from: String,
    pub dst: Ipv4Addr,
    pub results: BTreeMap<Probe, Outcome>,
    pub output: String,
}

impl ProbeReport {
    pub fn outcome(&self, p: Probe) -> Result<&Outcome> {
        self.results
            .get(&p)
            .ok_or_else(|| anyhow!("no result for {p} in:\n{}", self.output))
    }

    /// The peer address the server put in its banner for `p` (`None` unless answered).
    pub fn peer(&self, p: Probe) -> Option<Ipv4Addr> {
        match self.results.get(&p)? {
            Outcome::Answered(b) => b.split_whitespace().nth(3)?.parse().ok(),
            _ => None,
        }
    }

    /// Fails unless each of `admitted` was answered by server `server` on that port and each
    /// of `dropped` timed out.
    pub fn expect(&self, server: &str, admitted: &[Probe], dropped: &[Probe]) -> Result<()> {
        let mut problems = Vec::new();
        for p in admitted {
            let (proto, port) = match p {
                Probe::Tcp(n) => ("tcp", n),
                Probe::Udp(n) => ("udp", n),
            };
            let want = format!("{server} {proto} {port} ");
            match self.outcome(*p)? {
                Outcome::Answered(b) if b.starts_with(&want) => {}
                o => problems.push(format!(
                    "{p} must be admitted (banner {want:?}...), got {o:?}"
                )),
            }
        }
        for p in dropped {
            match self.outcome(*p)? {
                Outcome::Timeout => {}
                o => problems.push(format!("{p} must be dropped (timeout), got {o:?}")),
            }
        }
        ensure!(
            problems.is_empty(),
            "probes {} -> {}:\n  {}\nclient output:\n{}",
            self.from,
            self.dst,
            problems.join("\n  "),
            self.output
        );
        Ok(())
    }
}

/// Parses [`PROBE_CLIENT`]'s output.
pub fn parse_probe_output(out: &str) -> BTreeMap<Probe, Outcome> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(proto), Some(port), Some(kind)) = (w.first(), w.get(1), w.get(2)) else {
            continue;
        };
        let Some(p) = Probe::parse(proto, port) else {
            continue;
        };
        let detail = w.get(3).map(|d| d.replace('_', " ")).unwrap_or_default();
        let o = match *kind {
            "ok" => Outcome::Answered(detail),
            "timeout" => Outcome::Timeout,
            "refused" => Outcome::Refused,
            _ => Outcome::Error(detail),
        };
        m.insert(p, o);
    }
    m
}

impl Cloud {
    // ---- creation --------------------------------------------------------------------------

    /// Address groups and security groups of the topology, in the state (before the VMs that
    /// name them).
    pub(crate) fn create_security_groups(
        &mut self,
        address_groups: &[(String, Vec<String>)],
        groups: &[SecurityGroupSpec],
    ) -> Result<()> {
        for (name, addresses) in address_groups {
            ensure!(
                self.address_group_id(name).is_err(),
                "address group {name} defined twice"
            );
            let id = new_id(KIND_ADDRESS_GROUP, self.seq);
            self.state
                .address_groups
                .get_or_insert_with(Vec::new)
                .push(state::AddressGroup {
                    id: id.clone(),
                    name: name.clone(),
                    addresses: addresses.clone(),
                });
            self.address_groups.push((name.clone(), id));
        }
        // Ids first: rules may name any group as their remote.
        for g in groups {
            ensure!(
                self.sg_id(&g.name).is_err(),
                "security group {} defined twice",
                g.name
            );
            self.sgs.push(SgInfo {
                name: g.name.clone(),
                id: new_id(KIND_SECURITY_GROUP, self.seq),
                rules: Vec::new(),
            });
        }
        for g in groups {
            let id = self.sg_id(&g.name)?;
            let mut rules = Vec::new();
            for r in &g.rules {
                rules.push(self.new_rule(&g.name, r)?);
            }
            self.state.security_groups.push(state::SecurityGroup {
                id,
                name: g.name.clone(),
                stateful: g.stateful,
                security_group_rules: rules,
            });
        }
        Ok(())
    }

    /// A new rule of group `group` in state form (with a new id, recorded under its name).
    fn new_rule(&mut self, group: &str, r: &RuleSpec) -> Result<state::SecurityGroupRule> {
        let group_id = self.sg_id(group)?;
        let (mut prefix, mut remote_group, mut address_group) = (None, None, None);
        match &r.remote {
            Remote::Any => {}
            Remote::Prefix(p) => prefix = Some(p.clone()),
            Remote::Group(g) => {
                remote_group = Some(
                    self.sg_id(g)
                        .with_context(|| format!("rule {} of {group}", r.name))?,
                );
            }
            Remote::AddressGroup(a) => {
                address_group = Some(
                    self.address_group_id(a)
                        .with_context(|| format!("rule {} of {group}", r.name))?,
                );
            }
        }
        let id = new_id(KIND_RULE, self.seq);
        let info = self.sg_info_mut(group)?;
        ensure!(
            info.rules.iter().all(|(n, _)| *n != r.name),
            "security group {group} has a rule {} already",
            r.name
        );
        info.rules.push((r.name.clone(), id.clone()));
        Ok(state::SecurityGroupRule {
            id,
            security_group_id: group_id,
            direction: r.direction.clone(),
            ethertype: r.ethertype.clone(),
            protocol: r.protocol.clone().map_or(Value::Null, Value::from),
            port_range_min: r.port_range_min,
            port_range_max: r.port_range_max,
            remote_ip_prefix: prefix,
            remote_group_id: remote_group,
            remote_address_group_id: address_group,
        })
    }

    // ---- lookups ---------------------------------------------------------------------------

    fn sg_info_mut(&mut self, name: &str) -> Result<&mut SgInfo> {
        self.sgs
            .iter_mut()
            .find(|g| g.name == name)
            .ok_or_else(|| anyhow!("no security group {name}"))
    }

    /// The security group `name` as created.
    pub fn sg_info(&self, name: &str) -> Result<&SgInfo> {
        self.sgs
            .iter()
            .find(|g| g.name == name)
            .ok_or_else(|| anyhow!("no security group {name}"))
    }

    /// The id of security group `name`.
    pub fn sg_id(&self, name: &str) -> Result<String> {
        Ok(self.sg_info(name)?.id.clone())
    }

    /// The id of rule `rule` of security group `group`.
    pub fn rule_id(&self, group: &str, rule: &str) -> Result<String> {
        self.sg_info(group)?
            .rules
            .iter()
            .find(|(n, _)| n == rule)
            .map(|(_, id)| id.clone())
            .ok_or_else(|| anyhow!("security group {group} has no rule {rule}"))
    }

    /// The id of address group `name`.
    pub fn address_group_id(&self, name: &str) -> Result<String> {
        self.address_groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .ok_or_else(|| anyhow!("no address group {name}"))
    }

    // ---- changes (rewrite the state file; do not wait) -------------------------------------

    /// Adds rule `rule` to group `group`.
    pub fn add_rule(&mut self, group: &str, rule: RuleSpec) -> Result<()> {
        let r = self.new_rule(group, &rule)?;
        let id = self.sg_id(group)?;
        self.state
            .security_group_mut(&id)
            .ok_or_else(|| anyhow!("security group {group} not in the state"))?
            .security_group_rules
            .push(r);
        self.write_state()
    }

    /// Removes rule `rule` from group `group`.
    pub fn remove_rule(&mut self, group: &str, rule: &str) -> Result<()> {
        let rule_id = self.rule_id(group, rule)?;
        let id = self.sg_id(group)?;
        let g = self
            .state
            .security_group_mut(&id)
            .ok_or_else(|| anyhow!("security group {group} not in the state"))?;
        let before = g.security_group_rules.len();
        g.security_group_rules.retain(|r| r.id != rule_id);
        ensure!(
            g.security_group_rules.len() < before,
            "rule {rule} ({rule_id}) not in group {group}"
        );
        self.sg_info_mut(group)?.rules.retain(|(n, _)| n != rule);
        self.write_state()
    }

    /// Creates security group `spec` (its rules may name existing groups).
    pub fn add_security_group(&mut self, spec: SecurityGroupSpec) -> Result<()> {
        self.create_security_groups(&[], std::slice::from_ref(&spec))?;
        self.write_state()
    }

    /// Sets the `security_groups` of `vm`'s port (logical names; `None` removes the key: the
    /// port is then not filtered).
    pub fn set_port_groups(&mut self, vm: &str, groups: Option<&[&str]>) -> Result<()> {
        let port = self.vm(vm)?.port_id.clone();
        let ids = match groups {
            Some(g) => Some(
                g.iter()
                    .map(|n| self.sg_id(n))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        self.state.port_extras_mut(&port).security_groups = ids;
        self.write_state()
    }

    /// Sets `admin_state_up` of `vm`'s port.
    pub fn set_admin_state_up(&mut self, vm: &str, up: bool) -> Result<()> {
        let port = self.vm(vm)?.port_id.clone();
        self.state.port_extras_mut(&port).admin_state_up = Some(up);
        self.write_state()
    }

    /// Sets `port_security_enabled` of `vm`'s port.
    pub fn set_port_security(&mut self, vm: &str, enabled: bool) -> Result<()> {
        let port = self.vm(vm)?.port_id.clone();
        self.state
            .port_mut(&port)
            .ok_or_else(|| anyhow!("port of {vm} not in the state"))?
            .port_security_enabled = enabled;
        self.write_state()
    }

    // ---- waiting for the agents ------------------------------------------------------------

    /// Runs `change` (which rewrites the state file) and waits until the agent of each of
    /// `hosts` has applied a state read after it: a new `applied ... since_state_read=Some(..)`
    /// line, logged once the maps are written (and tracked flows re-checked). Fails at once
    /// if one of them refuses the new state. Only hosts whose maps the change alters log such a
    /// line: name those.
    pub fn apply_and_wait(
        &mut self,
        hosts: &[&str],
        change: impl FnOnce(&mut Cloud) -> Result<()>,
    ) -> Result<Applied> {
        let mut marks = Vec::new();
        for h in hosts {
            let log = self.agent_log(h)?;
            marks.push((
                h.to_string(),
                state_applied_lines(&log).len(),
                refusals(&log).len(),
            ));
        }
        let written = SystemTime::now();
        change(self)?;
        let mut at = BTreeMap::new();
        for (h, applied, refused) in marks {
            let line = wait_until(
                &format!("agent of {h} to apply the changed state"),
                APPLY_DEADLINE,
                |why| {
                    let log = self.agent_log(&h)?;
                    if let Some(r) = refusals(&log).get(refused) {
                        bail!("agent of {h} refused the changed state:\n{r}");
                    }
                    if let Some(l) = state_applied_lines(&log).get(applied) {
                        return Ok(Some(l.to_string()));
                    }
                    *why = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    Ok(None)
                },
            )
            .with_context(|| format!("agent log:\n{}", self.agent_log_tail(&h, 30)))?;
            let t = parse_log_time(&line)
                .ok_or_else(|| anyhow!("no timestamp in the applied line of {h}: {line}"))?;
            at.insert(h, t);
        }
        Ok(Applied { written, at })
    }

    /// Runs `change` (which writes a state the agents must refuse) and waits until the agent
    /// of each of `hosts` has logged its refusal; returns the refusal text per host (the log
    /// line and the error lines after it). Fails at once if one applies it instead.
    pub fn refused_after(
        &mut self,
        hosts: &[&str],
        change: impl FnOnce(&mut Cloud) -> Result<()>,
    ) -> Result<BTreeMap<String, String>> {
        let mut marks = Vec::new();
        for h in hosts {
            let log = self.agent_log(h)?;
            marks.push((
                h.to_string(),
                state_applied_lines(&log).len(),
                refusals(&log).len(),
            ));
        }
        change(self)?;
        let mut out = BTreeMap::new();
        for (h, applied, refused) in marks {
            let text = wait_until(
                &format!("agent of {h} to refuse the state"),
                APPLY_DEADLINE,
                |why| {
                    let log = self.agent_log(&h)?;
                    if let Some(l) = state_applied_lines(&log).get(applied) {
                        bail!("agent of {h} applied a state it must refuse: {l}");
                    }
                    if let Some(r) = refusals(&log).get(refused) {
                        return Ok(Some(r.clone()));
                    }
                    *why = log.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    Ok(None)
                },
            )?;
            ensure!(
                self.agent_running(&h)?,
                "agent of {h} exited after refusing a state:\n{}",
                self.agent_log_tail(&h, 30)
            );
            out.insert(h, text);
        }
        Ok(out)
    }

    // ---- traffic ---------------------------------------------------------------------------

    /// Starts [`PORT_SERVER`] named `name` in `who` (a VM, a host or [`crate::EXT`]) on
    /// `probes`' ports and waits until every socket is bound. Its stdout has one
    /// `<proto> <port> from <ip>:<port>` line per connection or datagram.
    pub fn port_server(&mut self, who: &str, name: &str, probes: &[Probe]) -> Result<Bg> {
        let mut args = vec![name.to_string()];
        args.extend(probes.iter().map(|p| p.arg()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut bg = self.spawn_python(who, PORT_SERVER, &args)?;
        bg.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        Ok(bg)
    }

    /// Runs every probe from `from` to `dst` at once (source address `bind` if given), each for
    /// at most `timeout`, and returns what each got.
    pub fn probe(
        &self,
        from: &str,
        dst: Ipv4Addr,
        probes: &[Probe],
        bind: Option<Ipv4Addr>,
        timeout: Duration,
    ) -> Result<ProbeReport> {
        let bind_s = bind.map(|b| b.to_string()).unwrap_or_default();
        let timeout_s = format!("{:.3}", timeout.as_secs_f64());
        let mut args = vec![dst.to_string(), bind_s, timeout_s];
        args.extend(probes.iter().map(|p| p.arg()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.python(
            from,
            PROBE_CLIENT,
            &args,
            timeout * 2 + Duration::from_secs(10),
        )?;
        let output = text(&out);
        ensure!(
            out.status.success(),
            "probe client in {from} failed ({}): {}",
            out.status,
            output.trim()
        );
        let results = parse_probe_output(&output);
        for p in probes {
            ensure!(
                results.contains_key(p),
                "probe client in {from} printed no result for {p}:\n{output}"
            );
        }
        Ok(ProbeReport {
            from: from.into(),
            dst,
            results,
            output,
        })
    }
}

/// The `<proto> <port> from <ip>:<port>` lines of a [`Cloud::port_server`]'s stdout:
/// (probe, peer ip).
pub fn server_hits(out: &str) -> Vec<(Probe, Ipv4Addr)> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.get(2) != Some(&"from") {
                return None;
            }
            let p = Probe::parse(w.first()?, w.get(1)?)?;
            let ip = w.get(3)?.split(':').next()?.parse().ok()?;
            Some((p, ip))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_timestamps() {
        let t = parse_log_time(
            "2026-11-27T18:54:32.423488Z  INFO dvr_userspace::agent: applied seconds=0.001",
        );
        let want = UNIX_EPOCH + Duration::new(1_795_805_672, 423_488_000);
        assert_eq!(t, Some(want));
        assert_eq!(
            parse_log_time("1970-01-01T00:00:01Z x"),
            Some(UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(
            parse_log_time("2000-03-01T00:00:00.5Z"),
            Some(UNIX_EPOCH + Duration::new(951_868_800, 500_000_000))
        );
        assert_eq!(parse_log_time("    security_group_rule r: field"), None);
    }

    #[test]
    fn finds_applied_lines_and_refusals() {
        let log = "--- stdout ---\n--- stderr ---\n\
            2026-11-27T18:54:32.000001Z  INFO dvr_userspace::agent: applied seconds=0.1 since_state_read=None upserted=3 deleted=0\n\
            2026-11-27T18:54:33.000001Z  WARN dvr_userspace::agent: refused new state; keeping the last good one error=security_group_rule r1: field `port_range_min`: port 70000 is outside 0..=65535\n\
            port p1: field `security_groups[0]`: security group x does not exist\n\
            2026-11-27T18:54:34.000001Z  INFO dvr_userspace::agent: applied seconds=0.1 since_state_read=Some(0.002) upserted=1 deleted=1\n";
        let applied = state_applied_lines(log);
        assert_eq!(applied.len(), 1);
        assert!(applied[0].contains("18:54:34"));
        let r = refusals(log);
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("r1") && r[0].contains("port_range_min"));
        assert!(r[0].contains("security_groups[0]"));
        assert!(!r[0].contains("18:54:34"));
    }

    #[test]
    fn parses_probe_output_and_server_hits() {
        let m = parse_probe_output(
            "tcp 80 ok srv_tcp_80_10.0.0.5\nudp 53 timeout\ntcp 81 refused\nudp 9 error boom_x\n",
        );
        assert_eq!(
            m.get(&Probe::Tcp(80)),
            Some(&Outcome::Answered("srv tcp 80 10.0.0.5".into()))
        );
        assert_eq!(m.get(&Probe::Udp(53)), Some(&Outcome::Timeout));
        assert_eq!(m.get(&Probe::Tcp(81)), Some(&Outcome::Refused));
        assert_eq!(
            m.get(&Probe::Udp(9)),
            Some(&Outcome::Error("boom x".into()))
        );
        let hits = server_hits("listening\ntcp 80 from 10.0.0.5:40000\nudp 53 from 10.0.0.6:1\n");
        assert_eq!(
            hits,
            vec![
                (Probe::Tcp(80), Ipv4Addr::new(10, 0, 0, 5)),
                (Probe::Udp(53), Ipv4Addr::new(10, 0, 0, 6))
            ]
        );
    }
}
