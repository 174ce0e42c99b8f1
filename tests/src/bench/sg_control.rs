//! Control-plane timings of security groups (issue 12's scale figures), in process with the
//! agent's library, as [`super::control::ebpf`] times floating IPs.
//!
//! The cloud ([`SgCloud`]): [`SgCloud::ports`] VM ports spread over hosts of
//! [`SgCloud::local_ports`] ports each, on tenant networks of [`PORTS_PER_NET_AND_HOST`] ports
//! per host (a network's flood set holds at most `FLOOD_MAX_LOCAL` = 64 local taps); [`SgCloud::groups`] security groups with
//! [`RULES_PER_GROUP`] rules each, every port in one group (port `k` in group `k % groups`),
//! so a group has `ports / groups` members. Each group's rules, in the order Neutron lists a
//! new group's:
//!
//! - its two default egress rules (IPv4 and IPv6, any protocol, no remote) and two default
//!   ingress rules from its own members (IPv4 and IPv6, `remote_group_id` itself);
//! - four more rules naming another group by `remote_group_id` (tcp 22, tcp 443,
//!   udp 5000-5999, tcp 8000-8999 from the next four groups), so each port's policy names
//!   five remote groups of 1,000 members: 5,000 member addresses per policy;
//! - ICMP echo requests from anywhere;
//! - eleven tcp/udp port ranges from distinct `remote_ip_prefix`es.
//!
//! The host under test holds the first `local_ports` ports (all groups among them). Timed,
//! separately, as the agent does it when a state arrives: parse and validate
//! (`State::from_json`), compile the host's entries (`compile::compile`) and write them into
//! a freshly loaded object's pinned maps (`reconcile::apply`), in a pin directory on bpffs
//! that is removed afterwards. The object is loaded before the clock starts.
//!
//! Then the rule change: [`SgCloud::changes`] times the port of one rule (group 0's tcp 22
//! from group 1) is changed; each change is timed as the agent applies it: compile the whole
//! state and reconcile the maps against what the previous apply wrote
//! (`reconcile::apply_known`, the agent's steady-state path). Parsing the changed state is
//! timed beside it (the file source re-reads the whole state; the figure the issue's 10 ms
//! target is about is compile + write). After the last change the maps must hold exactly what
//! the final state compiles to, with the changed rule's entry at its last port and none at
//! the previous one.

use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use super::control::PinDir;
use dvr_common::port::PORT_FLAG_SG;
use dvr_common::sg::{SG_INGRESS, SG_RULE_FULL_BITS};
use dvr_userspace::reconcile::Written;
use dvr_userspace::{attach, compile, maps::HostMaps, model, reconcile};
use serde_json::{Value, json};

use crate::state::{self, FixedIp, State};

/// Ports of one network on one host.
pub const PORTS_PER_NET_AND_HOST: usize = 50;
const _: () = assert!(PORTS_PER_NET_AND_HOST <= dvr_common::l2::FLOOD_MAX_LOCAL);

/// Rules per security group.
pub const RULES_PER_GROUP: usize = 20;
/// Index (in its group's rule list) of the rule whose port the change loop moves.
const CHANGED_RULE: usize = 4;
/// The changed rule's port before the first change; change `i` (from 1) sets `CHANGE_PORT + i`.
const CHANGE_PORT: u16 = 22;
const CHANGE_BASE: u16 = 20_000;

/// The shape of the timed cloud.
#[derive(Clone, Copy, Debug)]
pub struct SgCloud {
    pub ports: usize,
    pub groups: usize,
    /// Ports per host; the host under test is the first.
    pub local_ports: usize,
    /// Rule changes timed.
    pub changes: usize,
}

impl SgCloud {
    /// Issue 12's scale: 10,000 ports, 10 groups of 1,000 members, 1,000 ports on the host.
    pub const ISSUE: SgCloud = SgCloud {
        ports: 10_000,
        groups: 10,
        local_ports: 1_000,
        changes: 200,
    };

    fn hosts(&self) -> usize {
        self.ports.div_ceil(self.local_ports)
    }

    fn networks(&self) -> usize {
        self.local_ports
            .min(self.ports)
            .div_ceil(PORTS_PER_NET_AND_HOST)
    }

    /// The network of port `k` and its index on that network.
    fn place(&self, k: usize) -> (usize, usize) {
        let (h, j) = (k / self.local_ports, k % self.local_ports);
        (
            j / PORTS_PER_NET_AND_HOST,
            h * PORTS_PER_NET_AND_HOST + j % PORTS_PER_NET_AND_HOST,
        )
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Default)]
pub struct SgControl {
    pub ports: usize,
    pub local_ports: usize,
    pub groups: usize,
    pub rules_per_group: usize,
    pub group_members: usize,
    /// The full state: parse+validate, compile, first write (seconds).
    pub parse_s: f64,
    pub compile_s: f64,
    pub write_s: f64,
    /// Map entries the first write upserted (all maps), and the security group entries.
    pub upserted: usize,
    pub sg_remote: usize,
    pub sg_rules: usize,
    /// Distinct policies on the host under test.
    pub policies: usize,
    /// Per rule change (ms): compile + write, and each of them; parse of the changed state.
    pub change_ms: Vec<f64>,
    pub change_compile_ms: Vec<f64>,
    pub change_write_ms: Vec<f64>,
    pub change_parse_ms: Vec<f64>,
    /// Entries each change wrote and deleted (all maps), summed over the changes.
    pub change_upserted: usize,
    pub change_deleted: usize,
}

fn host_name(h: usize) -> String {
    format!("sgcp-h{h}")
}

fn group_id(g: usize) -> String {
    format!("sg{g:06}-0000-4000-8000-00000000beef")
}

fn rule_id(g: usize, r: usize) -> String {
    format!("{g:04x}{r:04x}-0000-4000-8000-00000000face")
}

fn port_id(k: usize) -> String {
    format!("{k:08x}-0000-4000-8000-00000000cafe")
}

/// Network `n`'s subnet is 10.n.0.0/16.
fn port_ip(n: usize, i: usize) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, u8::try_from(n)?, 0, 10)) + u32::try_from(i)?,
    ))
}

/// The 20 rules of group `g` of `n` groups; the changed rule carries port `port`.
fn rules(g: usize, n: usize, port: u16) -> Vec<Value> {
    let gid = |o: usize| group_id((g + o) % n);
    let mut v = vec![
        json!({"direction": "egress", "ethertype": "IPv4"}),
        json!({"direction": "egress", "ethertype": "IPv6"}),
        json!({"direction": "ingress", "ethertype": "IPv4", "remote_group_id": gid(0)}),
        json!({"direction": "ingress", "ethertype": "IPv6", "remote_group_id": gid(0)}),
        json!({"direction": "ingress", "protocol": "tcp", "port_range_min": port,
               "port_range_max": port, "remote_group_id": gid(1)}),
        json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 443,
               "port_range_max": 443, "remote_group_id": gid(2)}),
        json!({"direction": "ingress", "protocol": "udp", "port_range_min": 5000,
               "port_range_max": 5999, "remote_group_id": gid(3)}),
        json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 8000,
               "port_range_max": 8999, "remote_group_id": gid(4)}),
        json!({"direction": "ingress", "protocol": "icmp", "port_range_min": 8,
               "remote_ip_prefix": "0.0.0.0/0"}),
    ];
    for j in 0..RULES_PER_GROUP - v.len() {
        let lo = 10_000 + 100 * j + g;
        v.push(json!({
            "direction": "ingress",
            "protocol": if j % 2 == 0 { "tcp" } else { "udp" },
            "port_range_min": lo,
            "port_range_max": lo + 37 + j,
            "remote_ip_prefix": format!("172.{}.{}.0/24", 16 + j, g),
        }));
    }
    for (r, rule) in v.iter_mut().enumerate() {
        rule["id"] = json!(rule_id(g, r));
        rule["security_group_id"] = json!(group_id(g));
    }
    v
}

/// The state text of `c` with the changed rule (group 0's tcp 22) at `port`.
pub fn sg_state(c: &SgCloud, port: u16) -> Result<String> {
    ensure!(
        c.hosts() <= 200 && c.networks() <= 100 && c.groups > 4 && c.local_ports > 0,
        "at most 200 hosts, 100 networks, at least 5 groups"
    );
    let mut s = State::default();
    for n in 0..c.networks() {
        s.networks.push(state::Network {
            id: format!("net-sg-{n}"),
            name: format!("tenant-{n}"),
            network_type: "vxlan".into(),
            segmentation_id: Some(100 + u32::try_from(n)?),
            physical_network: None,
            router_external: false,
            mtu: 1450,
        });
        s.subnets.push(state::Subnet::v4(
            &format!("sub-sg-{n}"),
            &format!("net-sg-{n}"),
            &format!("10.{n}.0.0/16"),
            &format!("10.{n}.0.1"),
        ));
    }
    for h in 0..c.hosts() {
        let b = u8::try_from(h)?;
        s.hosts.push(state::Host {
            name: host_name(h),
            agent_mode: "dvr".into(),
            tunnel_ip: Ipv4Addr::new(192, 0, 2, 10 + b).to_string(),
            dvr_mac: format!("fa:16:3f:00:01:{b:02x}"),
            external_interface: None,
        });
    }
    for k in 0..c.ports {
        let b = u32::try_from(k)?.to_be_bytes();
        let (n, i) = c.place(k);
        s.ports.push(state::Port {
            id: port_id(k),
            network_id: format!("net-sg-{n}"),
            mac_address: format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3]),
            fixed_ips: vec![FixedIp {
                subnet_id: format!("sub-sg-{n}"),
                ip_address: port_ip(n, i)?.to_string(),
            }],
            device_owner: state::OWNER_COMPUTE.into(),
            device_id: format!("vm-{k}"),
            binding_host_id: host_name(k / c.local_ports),
            allowed_address_pairs: Vec::new(),
            port_security_enabled: true,
            security_groups: Some(vec![group_id(k % c.groups)]),
            admin_state_up: None,
        });
    }
    let mut v = s.to_value()?;
    v["security_groups"] = (0..c.groups)
        .map(|g| {
            json!({
                "id": group_id(g),
                "name": format!("group-{g}"),
                "stateful": true,
                "security_group_rules": rules(g, c.groups, if g == 0 { port } else { CHANGE_PORT }),
            })
        })
        .collect();
    Ok(serde_json::to_string(&v)?)
}

fn ms(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1e3
}

/// Runs the timings of `c` (see the module docs).
pub fn run(c: &SgCloud) -> Result<SgControl> {
    let host = host_name(0);
    // The taps of the host's ports exist (fake ifindexes): their policies are compiled.
    let ifindex: HashMap<String, u32> = (0..c.local_ports.min(c.ports))
        .map(|k| Ok((compile::tap_name(&port_id(k)), 1000 + u32::try_from(k)?)))
        .collect::<Result<_>>()?;
    let ifindex_of = |tap: &str| ifindex.get(tap).copied();

    let text = sg_state(c, CHANGE_PORT)?;
    let root = crate::cloud::bpffs_root();
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let pins = PinDir(root.join(format!("dvrb-{}-sgcp", std::process::id())));
    fs::create_dir_all(&pins.0).with_context(|| format!("creating {}", pins.0.display()))?;
    let ebpf = attach::load_object(&pins.0, &attach::LoadOptions::default())
        .context("loading the BPF object")?;
    let mut maps = HostMaps::open(&pins.0).context("opening the pinned maps")?;

    let t0 = Instant::now();
    let st = model::State::from_json(&text).context("state rejected")?;
    let t1 = Instant::now();
    let compiled = compile::compile(&st, &host, None, &ifindex_of).context("compile")?;
    let t2 = Instant::now();
    let applied = reconcile::apply(&mut maps, &compiled.config, &compiled.entries)
        .context("writing the maps")?;
    let t3 = Instant::now();

    let e = &compiled.entries;
    let sg_ports: Vec<u32> = e
        .local_ports
        .values()
        .filter(|p| p.flags & PORT_FLAG_SG != 0)
        .map(|p| p.policy)
        .collect();
    ensure!(
        sg_ports.len() == ifindex.len(),
        "{} of the host's {} ports have a security group policy",
        sg_ports.len(),
        ifindex.len()
    );
    let mut policies = sg_ports.clone();
    policies.sort_unstable();
    policies.dedup();
    ensure!(
        !e.sg_remote.is_empty() && !e.sg_rules.is_empty(),
        "nothing compiled into DVR_SG_REMOTE ({}) / DVR_SG_RULES ({})",
        e.sg_remote.len(),
        e.sg_rules.len()
    );
    let mut out = SgControl {
        ports: c.ports,
        local_ports: ifindex.len(),
        groups: c.groups,
        rules_per_group: RULES_PER_GROUP,
        group_members: c.ports / c.groups,
        parse_s: (t1 - t0).as_secs_f64(),
        compile_s: (t2 - t1).as_secs_f64(),
        write_s: (t3 - t2).as_secs_f64(),
        upserted: applied.upserted,
        sg_remote: e.sg_remote.len(),
        sg_rules: e.sg_rules.len(),
        policies: policies.len(),
        ..SgControl::default()
    };
    ensure!(
        maps.sg_remote.read()?.len() == out.sg_remote
            && maps.sg_rules.read()?.len() == out.sg_rules,
        "the maps do not hold the compiled security group entries"
    );

    // The rule changes, each applied as the agent applies a new state.
    let mut written = Written {
        config: compiled.config,
        entries: compiled.entries,
    };
    let mut last_port = CHANGE_PORT;
    for i in 1..=c.changes {
        super::bail_if_interrupted()?;
        let port = CHANGE_BASE + u16::try_from(i)?;
        let text = sg_state(c, port)?;
        let t0 = Instant::now();
        let st = model::State::from_json(&text).context("changed state rejected")?;
        let t1 = Instant::now();
        let compiled = compile::compile(&st, &host, None, &ifindex_of).context("compile")?;
        let t2 = Instant::now();
        let a = reconcile::apply_known(
            &mut maps,
            &compiled.config,
            &compiled.entries,
            Some(&written),
        )
        .context("writing the maps")?;
        let t3 = Instant::now();
        out.change_parse_ms.push(ms(t0, t1));
        out.change_compile_ms.push(ms(t1, t2));
        out.change_write_ms.push(ms(t2, t3));
        out.change_ms.push(ms(t1, t3));
        out.change_upserted += a.upserted;
        out.change_deleted += a.deleted;
        ensure!(
            a.upserted > 0 && a.deleted > 0,
            "change {i} (port {last_port} -> {port}) wrote {a:?}: the rule's entry did not move"
        );
        written = Written {
            config: compiled.config,
            entries: compiled.entries,
        };
        last_port = port;
    }

    // Correctness: the maps hold exactly the final state's entries, with the changed rule's
    // entry at its last port.
    let remote = maps.sg_remote.read()?;
    let rules_now = maps.sg_rules.read()?;
    ensure!(
        remote == written.entries.sg_remote,
        "DVR_SG_REMOTE differs from the final state's entries ({} vs {})",
        remote.len(),
        written.entries.sg_remote.len()
    );
    ensure!(
        rules_now == written.entries.sg_rules,
        "DVR_SG_RULES differs from the final state's entries ({} vs {})",
        rules_now.len(),
        written.entries.sg_rules.len()
    );
    let changed = compile::fnv1a32(&rule_id(0, CHANGED_RULE));
    let at = |port: u16| {
        rules_now.iter().any(|((bits, k), v)| {
            v.rule_id == changed
                && *bits == SG_RULE_FULL_BITS
                && k.dir == SG_INGRESS
                && k.proto == 6
                && k.port_be == port.to_be()
        })
    };
    ensure!(
        at(last_port),
        "no DVR_SG_RULES entry of the changed rule at tcp {last_port}"
    );
    if c.changes > 0 {
        ensure!(
            !at(CHANGE_PORT) && !at(last_port - 1),
            "DVR_SG_RULES still holds the changed rule at an old port"
        );
    }
    drop(maps);
    drop(ebpf);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cloud_compiles_to_policies_per_group() -> Result<()> {
        let c = SgCloud {
            ports: 200,
            groups: 5,
            local_ports: 100,
            changes: 0,
        };
        let st = model::State::from_json(&sg_state(&c, CHANGE_PORT)?)?;
        let taps: HashMap<String, u32> = (0..100)
            .map(|k| (compile::tap_name(&port_id(k)), 1000 + k as u32))
            .collect();
        let out = compile::compile(&st, &host_name(0), None, &|t| taps.get(t).copied())?;
        let sg = out
            .entries
            .local_ports
            .values()
            .filter(|p| p.flags & PORT_FLAG_SG != 0)
            .count();
        assert_eq!(sg, 100);
        // Two networks on the host, as the flood sets need.
        assert_eq!(out.entries.flood.len(), 2);
        // Five remote groups of 40 members per policy, plus the prefixes.
        assert!(
            out.entries.sg_remote.len() >= 5 * 5 * 40,
            "{}",
            out.entries.sg_remote.len()
        );
        // A change moves exactly the changed rule's entry.
        let moved = model::State::from_json(&sg_state(&c, CHANGE_BASE + 1)?)?;
        let moved = compile::compile(&moved, &host_name(0), None, &|t| taps.get(t).copied())?;
        let (puts, dels) =
            dvr_userspace::reconcile::diff(&out.entries.sg_rules, &moved.entries.sg_rules);
        assert_eq!((puts.len(), dels.len()), (1, 1));
        assert_eq!(out.entries.sg_remote, moved.entries.sg_remote);
        let changed = compile::fnv1a32(&rule_id(0, CHANGED_RULE));
        assert!(
            out.entries
                .sg_rules
                .iter()
                .any(|((_, k), v)| v.rule_id == changed && k.port_be == CHANGE_PORT.to_be())
        );
        Ok(())
    }
}
