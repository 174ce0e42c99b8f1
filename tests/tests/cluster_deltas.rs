//! The agent's incremental state with etcd (issue 17): each change is applied as a delta,
//! validated by what it touches, compiled from the host's view.
//!
//! - `random_deltas_of_every_kind_leave_the_maps_of_a_full_compile`: on a two-host cloud
//!   with the external network, a seeded random sequence of single-key writes and deletes
//!   creates, updates and deletes networks, subnets, ports, routers, floating IPs, security
//!   groups, security group rules and hosts (each write one etcd put, as Neutron's driver
//!   makes them); after every eighth change both agents' maps must come to hold exactly the
//!   entries a full compile of the whole state gives for that host (every agent-owned map
//!   compared, `reconcile::differences` = 0), and the real VMs still reach each other.
//! - `an_invalid_delta_is_refused_and_changes_nothing_until_mended`: a port with another
//!   port's address is refused, naming the port and field, and the maps stay as they were;
//!   a valid change written meanwhile waits with it (the state as a whole is still invalid);
//!   deleting the bad port lets both in.
//! - `a_watch_behind_a_compaction_resyncs_from_a_snapshot`: h1's agent is stopped
//!   (SIGSTOP) while a few MB of other keys and one port are written and etcd's history is
//!   compacted past them; resumed, its watch is cancelled as compacted, it resyncs from a
//!   fresh snapshot and its maps hold the port.
//!
//! Needs root, bpffs, etcd and the built agent; run with `--test-threads=1`.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use dvr_common::l2::FdbKey;
use dvr_tests::cmd::wait_until;
use dvr_tests::etcd::EtcdWriter;
use dvr_tests::{Cloud, Topology, VmSpec, require_etcd_preconditions};
use dvr_userspace::maps::HostMaps;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// xorshift64*: a fixed sequence for a given seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// The state as written so far, and the writer that writes it.
struct Cluster {
    cur: Value,
    w: EtcdWriter,
    writes: usize,
}

fn id_field(kind: &str) -> &'static str {
    if kind == "hosts" { "name" } else { "id" }
}

impl Cluster {
    fn new(c: &Cloud) -> Result<Cluster> {
        Ok(Cluster {
            cur: serde_json::to_value(c.state())?,
            w: c.etcd_writer()?,
            writes: 0,
        })
    }

    fn list(&mut self, kind: &str) -> Result<&mut Vec<Value>> {
        if self.cur.get(kind).is_none() {
            self.cur[kind] = json!([]);
        }
        self.cur[kind]
            .as_array_mut()
            .ok_or_else(|| anyhow!("{kind} is not a list"))
    }

    fn get(&self, kind: &str, id: &str) -> Option<Value> {
        self.cur[kind]
            .as_array()?
            .iter()
            .find(|o| o[id_field(kind)] == id)
            .cloned()
    }

    fn ids(&self, kind: &str, prefix: &str) -> Vec<String> {
        self.cur[kind]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|o| o[id_field(kind)].as_str())
                    .filter(|i| i.starts_with(prefix))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Write one resource (create or replace).
    fn put(&mut self, kind: &str, value: Value) -> Result<()> {
        let id = value[id_field(kind)]
            .as_str()
            .ok_or_else(|| anyhow!("{kind} without id: {value}"))?
            .to_string();
        let list = self.list(kind)?;
        list.retain(|o| o[id_field(kind)] != id.as_str());
        list.push(value.clone());
        self.writes += 1;
        self.w
            .put(&format!("/dvr/v1/{kind}/{id}"), &value.to_string())
    }

    fn delete(&mut self, kind: &str, id: &str) -> Result<()> {
        self.list(kind)?.retain(|o| o[id_field(kind)] != id);
        self.writes += 1;
        self.w.delete(&format!("/dvr/v1/{kind}/{id}"))
    }

    /// Delete a port, its floating IPs first.
    fn delete_port(&mut self, id: &str) -> Result<()> {
        for f in self.ids("floatingips", "") {
            if self
                .get("floatingips", &f)
                .is_some_and(|v| v["port_id"] == id)
            {
                self.delete("floatingips", &f)?;
            }
        }
        self.delete("ports", id)
    }

    /// Whether the state as written validates.
    fn valid(&self) -> bool {
        dvr_userspace::model::State::from_json(&self.cur.to_string()).is_ok()
    }

    /// Wait until every host's maps are exactly a full compile of the state as written.
    fn wait_exact(&self, c: &Cloud, hosts: &[&str], what: &str) -> Result<()> {
        for h in hosts {
            wait_until(
                &format!("{h}'s maps to equal a full compile ({what})"),
                WAIT,
                |why| {
                    let d = c.map_differences(h, &self.cur)?;
                    *why = format!("{d} entries differ");
                    Ok((d == 0).then_some(()))
                },
            )
            .with_context(|| c.agent_log(h).unwrap_or_default())?;
        }
        Ok(())
    }
}

fn vm_port(id: &str, net: &str, subnet: &str, ip: &str, mac: &str, host: &str) -> Value {
    json!({"id": id, "network_id": net, "mac_address": mac, "device_owner": "compute:nova",
        "device_id": format!("inst-{id}"), "binding:host_id": host,
        "fixed_ips": [{"subnet_id": subnet, "ip_address": ip}]})
}

/// The id of the (first) subnet of network `net`.
fn subnet_of(cl: &Cluster, net: &str) -> Result<String> {
    cl.cur["subnets"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["network_id"] == net))
        .and_then(|s| s["id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no subnet on {net}"))
}

/// One random change, written as Neutron's driver would (one put or delete per resource,
/// dependents first on delete). `i` numbers generated resources.
fn random_change(
    cl: &mut Cluster,
    r: &mut Rng,
    i: usize,
    a: &str,
    hosts: &[String],
) -> Result<String> {
    let nets = cl.ids("networks", "dn");
    let ports = cl.ids("ports", "dp");
    let host = |r: &mut Rng, cl: &Cluster| {
        let mut all: Vec<String> = hosts.to_vec();
        all.extend(cl.ids("hosts", "dh"));
        all[r.below(all.len())].clone()
    };
    Ok(match r.below(13) {
        0 if nets.len() < 4 => {
            let (n, s) = (format!("dn{i}"), format!("ds{i}"));
            cl.put(
                "networks",
                json!({"id": n, "name": n, "provider:network_type": "vxlan",
                "provider:segmentation_id": 6790 + i, "router:external": false, "mtu": 1450}),
            )?;
            cl.put(
                "subnets",
                json!({"id": s, "network_id": n, "ip_version": 4,
                "cidr": format!("172.24.{i}.0/24"), "gateway_ip": format!("172.24.{i}.1")}),
            )?;
            format!("network {n} with subnet {s}")
        }
        1 | 2 => {
            let mut choice: Vec<String> = nets.clone();
            choice.push(a.to_string());
            let net = choice[r.below(choice.len())].clone();
            let sub = subnet_of(cl, &net)?;
            let prefix = cl
                .get("subnets", &sub)
                .and_then(|s| s["cidr"].as_str().map(str::to_string))
                .unwrap_or_default();
            let base = prefix.rsplit_once('.').map_or("", |(b, _)| b).to_string();
            let id = format!("dp{i}");
            let h = host(r, cl);
            let mut p = vm_port(
                &id,
                &net,
                &sub,
                &format!("{base}.{}", 100 + i),
                &format!("fa:16:3e:d0:00:{i:02x}"),
                &h,
            );
            let groups = cl.ids("security_groups", "dsg");
            if !groups.is_empty() && r.below(2) == 0 {
                p["security_groups"] = json!([groups[r.below(groups.len())]]);
            }
            cl.put("ports", p)?;
            format!("port {id} on {net} at {h}")
        }
        3 if !ports.is_empty() => {
            let id = &ports[r.below(ports.len())];
            let mut p = cl.get("ports", id).unwrap_or_default();
            let h = host(r, cl);
            p["binding:host_id"] = h.clone().into();
            cl.put("ports", p)?;
            format!("port {id} moved to {h}")
        }
        4 if !ports.is_empty() => {
            let id = &ports[r.below(ports.len())];
            let mut p = cl.get("ports", id).unwrap_or_default();
            p["mac_address"] = format!("fa:16:3e:d1:00:{i:02x}").into();
            cl.put("ports", p)?;
            format!("port {id} MAC changed")
        }
        5 if !ports.is_empty() => {
            let id = ports[r.below(ports.len())].clone();
            cl.delete_port(&id)?;
            format!("port {id} deleted")
        }
        6 if !nets.is_empty() => {
            let net = nets[r.below(nets.len())].clone();
            let routed = cl.ids("ports", "drif").iter().any(|p| {
                cl.get("ports", p)
                    .is_some_and(|v| v["network_id"] == net.as_str())
            });
            if routed {
                let id = format!("dp{i}-mtu");
                let mut n = cl.get("networks", &net).unwrap_or_default();
                n["mtu"] = json!(if n["mtu"] == 1450 { 1400 } else { 1450 });
                cl.put("networks", n)?;
                return Ok(format!("network {net} mtu changed ({id})"));
            }
            let (rid, sub) = (format!("dr{i}"), subnet_of(cl, &net)?);
            let gw = cl
                .get("subnets", &sub)
                .and_then(|s| s["gateway_ip"].as_str().map(str::to_string))
                .unwrap_or_default();
            cl.put(
                "routers",
                json!({"id": rid, "distributed": true, "admin_state_up": true}),
            )?;
            cl.put(
                "ports",
                json!({"id": format!("drif{i}"), "network_id": net,
                "mac_address": format!("fa:16:3e:d2:00:{i:02x}"),
                "device_owner": "network:router_interface_distributed", "device_id": rid,
                "fixed_ips": [{"subnet_id": sub, "ip_address": gw}]}),
            )?;
            format!("router {rid} on {net}")
        }
        7 => {
            let routers = cl.ids("routers", "dr");
            let Some(rid) = routers.get(r.below(routers.len().max(1))).cloned() else {
                return Ok("nothing".into());
            };
            if r.below(2) == 0 {
                let mut v = cl.get("routers", &rid).unwrap_or_default();
                v["admin_state_up"] = json!(v["admin_state_up"] == false);
                cl.put("routers", v)?;
                return Ok(format!("router {rid} admin state flipped"));
            }
            for p in cl.ids("ports", "drif") {
                if cl
                    .get("ports", &p)
                    .is_some_and(|v| v["device_id"] == rid.as_str())
                {
                    cl.delete("ports", &p)?;
                }
            }
            cl.delete("routers", &rid)?;
            format!("router {rid} deleted")
        }
        8 => {
            // A FIP of a port on network a (router r1), or re-associated, or dropped.
            let on_a: Vec<String> = ports
                .iter()
                .filter(|p| cl.get("ports", p).is_some_and(|v| v["network_id"] == a))
                .cloned()
                .collect();
            let fips = cl.ids("floatingips", "df");
            let taken: Vec<String> = fips
                .iter()
                .filter_map(|f| {
                    cl.get("floatingips", f)?["port_id"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            let free: Vec<&String> = on_a.iter().filter(|p| !taken.contains(p)).collect();
            let ext = cl.cur["networks"]
                .as_array()
                .and_then(|l| l.iter().find(|n| n["router:external"] == true))
                .and_then(|n| n["id"].as_str())
                .unwrap_or_default()
                .to_string();
            let router = cl
                .ids("routers", "")
                .into_iter()
                .find(|x| !x.starts_with("dr"));
            match (fips.is_empty(), free.first(), r.below(3)) {
                (false, _, 0) => {
                    let f = fips[r.below(fips.len())].clone();
                    cl.delete("floatingips", &f)?;
                    format!("floating IP {f} deleted")
                }
                (false, _, 1) => {
                    let f = fips[r.below(fips.len())].clone();
                    let mut v = cl.get("floatingips", &f).unwrap_or_default();
                    v["port_id"] = Value::Null;
                    v["fixed_ip_address"] = Value::Null;
                    v["router_id"] = Value::Null;
                    cl.put("floatingips", v)?;
                    format!("floating IP {f} disassociated")
                }
                (_, Some(p), _) => {
                    let f = format!("df{i}");
                    cl.put(
                        "floatingips",
                        json!({"id": f, "floating_network_id": ext,
                        "floating_ip_address": format!("10.5.9.{}", 1 + i), "port_id": p,
                        "router_id": router}),
                    )?;
                    format!("floating IP {f} for {p}")
                }
                _ => "nothing".into(),
            }
        }
        9 => {
            let g = format!("dsg{i}");
            cl.put(
                "security_groups",
                json!({"id": g, "stateful": true, "security_group_rules": [
                {"id": format!("{g}-out"), "direction": "egress", "ethertype": "IPv4"},
                {"id": format!("{g}-in"), "direction": "ingress", "ethertype": "IPv4",
                 "remote_group_id": g}]}),
            )?;
            format!("security group {g}")
        }
        10 => {
            let groups = cl.ids("security_groups", "dsg");
            let rules = cl.ids("security_group_rules", "drule");
            if !rules.is_empty() && r.below(2) == 0 {
                let id = rules[r.below(rules.len())].clone();
                cl.delete("security_group_rules", &id)?;
                return Ok(format!("rule {id} deleted"));
            }
            let Some(g) = groups.get(r.below(groups.len().max(1))).cloned() else {
                return Ok("nothing".into());
            };
            let remote = groups[r.below(groups.len())].clone();
            let id = format!("drule{i}");
            cl.put(
                "security_group_rules",
                json!({"id": id, "security_group_id": g,
                "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                "port_range_min": 1000 + i, "port_range_max": 1000 + i,
                "remote_group_id": remote}),
            )?;
            format!("rule {id} in {g} from {remote}")
        }
        11 => {
            let hs = cl.ids("hosts", "dh");
            if hs.len() < 2 {
                let h = format!("dh{i}");
                cl.put(
                    "hosts",
                    json!({"name": h, "agent_mode": "dvr",
                    "tunnel_ip": format!("198.18.0.{}", 1 + i),
                    "dvr_mac": format!("fa:16:3f:dd:00:{i:02x}")}),
                )?;
                return Ok(format!("host {h}"));
            }
            let h = hs[r.below(hs.len())].clone();
            let bound = cl.ids("ports", "").iter().any(|p| {
                cl.get("ports", p)
                    .is_some_and(|v| v["binding:host_id"] == h.as_str())
            });
            if bound {
                let mut v = cl.get("hosts", &h).unwrap_or_default();
                v["dvr_mac"] = format!("fa:16:3f:de:00:{i:02x}").into();
                cl.put("hosts", v)?;
                format!("host {h} DVR MAC changed")
            } else {
                cl.delete("hosts", &h)?;
                format!("host {h} deleted")
            }
        }
        _ if !nets.is_empty() => {
            let net = nets[r.below(nets.len())].clone();
            for kind in ["ports", "subnets"] {
                for id in cl.ids(kind, "") {
                    if cl
                        .get(kind, &id)
                        .is_some_and(|v| v["network_id"] == net.as_str())
                    {
                        if kind == "ports" {
                            cl.delete_port(&id)?;
                            continue;
                        }
                        cl.delete(kind, &id)?;
                    }
                }
            }
            cl.delete("networks", &net)?;
            format!("network {net} deleted with its ports and subnets")
        }
        _ => "nothing".into(),
    })
}

#[test]
fn random_deltas_of_every_kind_leave_the_maps_of_a_full_compile() -> Result<()> {
    require_etcd_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2").external();
    t.network("a", 6701, "172.23.81.0/24")
        .network("b", 6702, "172.23.82.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build_without_agents()?;
    c.start_agents_on_etcd()?;
    let hosts: Vec<String> = ["h1", "h2"]
        .iter()
        .map(|h| Ok(c.host(h)?.agent_name.clone()))
        .collect::<Result<_>>()?;
    let a = c.network("a")?.network_id.clone();
    let mut cl = Cluster::new(&c)?;
    cl.wait_exact(&c, &["h1", "h2"], "at start")?;
    let mut r = Rng(0x5eed_1717);
    let mut done = Vec::new();
    for i in 1..=48 {
        let before = cl.cur.clone();
        let what = random_change(&mut cl, &mut r, i, &a, &hosts)?;
        if !cl.valid() {
            bail!("change {i} ({what}) left an invalid state: the generator is wrong");
        }
        if before != cl.cur {
            done.push(what);
        }
        if i % 8 == 0 {
            cl.wait_exact(&c, &["h1", "h2"], &format!("after {done:?}"))?;
        }
    }
    eprintln!("{} changes ({} writes): {done:#?}", done.len(), cl.writes);
    ensure!(done.len() >= 30, "too few changes made: {done:?}");
    c.ping_ok("v1", c.ip("v2")?, 2)?;
    Ok(())
}

/// The FDB key of a MAC on a network.
fn fdb_key(vni: u32, mac: &str) -> Result<FdbKey> {
    Ok(FdbKey {
        vni,
        mac: dvr_userspace::model::parse_mac(mac).ok_or_else(|| anyhow!("bad MAC {mac}"))?,
        _pad: [0; 2],
    })
}

/// [`small_cloud`] with its writer, and network a's id and subnet id and h2's agent name.
fn small_cluster(vni: u32, octet: u8) -> Result<(Cloud, Cluster, String, String, String)> {
    let c = small_cloud(vni, octet)?;
    let cl = Cluster::new(&c)?;
    let a = c.network("a")?;
    let (net, sub) = (a.network_id.clone(), a.subnet_id.clone());
    let h2 = c.host("h2")?.agent_name.clone();
    Ok((c, cl, net, sub, h2))
}

/// A two-host cloud on etcd with VMs on network a (h1) and b (h2).
fn small_cloud(vni: u32, octet: u8) -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", vni, &format!("172.23.{octet}.0/24"))
        .network("b", vni + 1, &format!("172.23.{}.0/24", octet + 1));
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build_without_agents()?;
    c.start_agents_on_etcd()?;
    Ok(c)
}

#[test]
fn an_invalid_delta_is_refused_and_changes_nothing_until_mended() -> Result<()> {
    require_etcd_preconditions();
    let (c, mut cl, a, sub, h2) = small_cluster(6711, 91)?;
    let v1 = c.ip("v1")?;
    let good_state = cl.cur.clone();
    let refusals = |c: &Cloud| -> Result<usize> {
        Ok(c.agent_log("h1")?.matches("refused new state").count())
    };
    let before = refusals(&c)?;
    // A port with v1's address on v1's subnet.
    cl.put(
        "ports",
        vm_port("bad", &a, &sub, &v1.to_string(), "fa:16:3e:bb:00:01", &h2),
    )?;
    wait_until("h1 to refuse the duplicate address", WAIT, |why| {
        let log = c.agent_log("h1")?;
        *why = "no refusal logged".into();
        Ok((refusals(&c)? > before
            && log.contains("port bad: field `fixed_ips[0].ip_address`: duplicate IP"))
        .then_some(()))
    })?;
    ensure!(
        c.map_differences("h1", &good_state)? == 0,
        "h1's maps changed with a refused delta"
    );
    // A valid port written meanwhile: the state as a whole is still invalid.
    let ok_ip = Ipv4Addr::new(172, 23, 91, 77);
    let good = vm_port(
        "good",
        &a,
        &sub,
        &ok_ip.to_string(),
        "fa:16:3e:bb:00:02",
        &h2,
    );
    cl.put("ports", good)?;
    wait_until("h1 to refuse again", WAIT, |_| {
        Ok((refusals(&c)? > before + 1).then_some(()))
    })?;
    ensure!(
        c.map_differences("h1", &good_state)? == 0,
        "h1 applied a change while the state was invalid"
    );
    // Mended: both the deletion and the waiting port are taken.
    cl.delete("ports", "bad")?;
    cl.wait_exact(&c, &["h1", "h2"], "after the bad port is gone")?;
    let maps = HostMaps::open(&c.pin_dir("h1")?)?;
    let vni = c.network("a")?.vni;
    ensure!(
        maps.fdb.get(&fdb_key(vni, "fa:16:3e:bb:00:02")?)?.is_some(),
        "h1 holds the good port"
    );
    Ok(())
}

#[test]
fn a_watch_behind_a_compaction_resyncs_from_a_snapshot() -> Result<()> {
    require_etcd_preconditions();
    let (c, mut cl, a, sub, h2) = small_cluster(6721, 93)?;
    let pid = c.agent_pid("h1")?;
    let signal = |sig: libc::c_int| -> Result<()> {
        // SAFETY: kill(2) on the pid of the agent this test started.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    };
    signal(libc::SIGSTOP)?;
    let result = (|| -> Result<i64> {
        // Enough other keys under the prefix that etcd cannot hand them to the stopped
        // agent (its connection's windows fill), then the port, then the compaction.
        let filler = "x".repeat(16 << 10);
        for i in 0..400 {
            cl.w.put(&format!("/dvr/v1/filler/{i}"), &filler)
                .map_err(|e| anyhow!("{e}"))?;
        }
        cl.put(
            "ports",
            vm_port("late", &a, &sub, "172.23.93.88", "fa:16:3e:cc:00:01", &h2),
        )?;
        cl.w.compact()
    })();
    signal(libc::SIGCONT)?;
    let revision = result?;
    wait_until("h1 to resync after the compaction", WAIT, |why| {
        let log = c.agent_log("h1")?;
        *why = format!("compacted at {revision}; no resync logged");
        Ok(
            (log.contains("compacted") && log.contains("resynced from a fresh snapshot"))
                .then_some(()),
        )
    })?;
    cl.wait_exact(&c, &["h1", "h2"], "after the resync")?;
    let maps = HostMaps::open(&c.pin_dir("h1")?)?;
    ensure!(
        maps.fdb
            .get(&fdb_key(c.network("a")?.vni, "fa:16:3e:cc:00:01")?)?
            .is_some(),
        "h1 holds the port written while it was behind"
    );
    c.ping_ok("v1", c.ip("v2")?, 2)?;
    Ok(())
}
