//! Router lifecycle integration tests (issue 14): changes to a serving router applied as a
//! diff by the running agents, each observed in real traffic and in every host's pinned maps.
//!
//! - `external_gateway_info` cleared (SNAT stops, the external IP is no longer answered by
//!   ARP, `show snat` rows and the router's SNAT conntrack entries go) and set again with a
//!   different IP (SNAT resumes from the new address);
//! - a router interface added at run time (routing between the networks starts) and removed
//!   (it stops; no route or gateway entry of the network is left);
//! - the router deleted (no entry naming it on any host, its conntrack purged);
//! - `admin_state_up: false` (routing stops, counted).
//!
//! After each change the test waits until every agent's router maps (`routes`, `gw_by_ip`,
//! `gw_by_mac`, `snat_routers`, `snat_steer`, `snat_ips`) equal what the agent library
//! compiles from the new state for that host ([`wait_router_maps`]): [`Cloud::apply_state`]
//! only compares the port maps, which a router change does not touch.
//!
//! Needs root, bpffs, tcpdump, arping, python3-scapy and the built agent; run with
//! `--test-threads=1`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_common::l2::FdbKey;
use dvr_common::route::{IpKey, Route, RouteKey, RouterIface};
use dvr_common::snat::{SnatRouter, SnatSteer};
use dvr_common::stats::Stat;
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::state::{self, FixedIp};
use dvr_tests::{Cloud, Counters, INTERNET_HOST, Topology, VmSpec, require_preconditions};
use dvr_userspace::compile::fnv1a32;
use dvr_userspace::maps::HostMaps;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn s(ip: Ipv4Addr) -> String {
    ip.to_string()
}

/// The maps that say what a host routes and translates for its routers.
#[derive(Debug, Default, PartialEq)]
struct RouterMaps {
    routes: BTreeMap<(u32, RouteKey), Route>,
    gw_by_ip: BTreeMap<IpKey, RouterIface>,
    gw_by_mac: BTreeMap<FdbKey, RouterIface>,
    snat_routers: BTreeMap<FdbKey, SnatRouter>,
    snat_steer: BTreeMap<FdbKey, SnatSteer>,
    snat_ips: BTreeMap<u32, SnatRouter>,
}

impl RouterMaps {
    fn pinned(maps: &HostMaps) -> Result<RouterMaps> {
        Ok(RouterMaps {
            routes: maps.routes.read()?,
            gw_by_ip: maps.gw_by_ip.read()?,
            gw_by_mac: maps.gw_by_mac.read()?,
            snat_routers: maps.snat_routers.read()?,
            snat_steer: maps.snat_steer.read()?,
            snat_ips: maps.snat_ips.read()?,
        })
    }

    /// What the agent library compiles for `host` from the cloud's current state.
    fn desired(c: &Cloud, host: &str) -> Result<RouterMaps> {
        let e = c.compiled_entries(host)?;
        Ok(RouterMaps {
            routes: e.routes,
            gw_by_ip: e.gw_by_ip,
            gw_by_mac: e.gw_by_mac,
            snat_routers: e.snat_routers,
            snat_steer: e.snat_steer,
            snat_ips: e.snat_ips,
        })
    }

    fn sizes(&self) -> String {
        format!(
            "routes {} gw_by_ip {} gw_by_mac {} snat_routers {} snat_steer {} snat_ips {}",
            self.routes.len(),
            self.gw_by_ip.len(),
            self.gw_by_mac.len(),
            self.snat_routers.len(),
            self.snat_steer.len(),
            self.snat_ips.len()
        )
    }

    /// Entries naming router `id` (the FNV-1a hash), described.
    fn naming(&self, id: u32) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.routes {
            if u32::from_be(k.1.router_id_be) == id {
                out.push(format!("routes {k:?} -> {v:?}"));
            }
        }
        for (k, v) in &self.gw_by_ip {
            if v.router_id == id {
                out.push(format!("gw_by_ip {k:?}"));
            }
        }
        for (k, v) in &self.gw_by_mac {
            if v.router_id == id {
                out.push(format!("gw_by_mac {k:?}"));
            }
        }
        for (k, v) in &self.snat_routers {
            if v.router_id == id {
                out.push(format!("snat_routers {k:?}"));
            }
        }
        for (k, v) in &self.snat_steer {
            if v.router_id == id {
                out.push(format!("snat_steer {k:?}"));
            }
        }
        for (k, v) in &self.snat_ips {
            if v.router_id == id {
                out.push(format!("snat_ips {k:?}"));
            }
        }
        out
    }

    /// Entries for network VNI `vni` (routes to it, gateways on it, steering on it).
    fn on_vni(&self, vni: u32) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.routes
                .iter()
                .filter(|(_, v)| v.vni == vni)
                .map(|(k, _)| format!("routes {k:?}")),
        );
        out.extend(
            self.gw_by_ip
                .keys()
                .filter(|k| k.vni == vni)
                .map(|k| format!("gw_by_ip {k:?}")),
        );
        out.extend(
            self.gw_by_mac
                .keys()
                .filter(|k| k.vni == vni)
                .map(|k| format!("gw_by_mac {k:?}")),
        );
        out.extend(
            self.snat_steer
                .keys()
                .filter(|k| k.vni == vni)
                .map(|k| format!("snat_steer {k:?}")),
        );
        out
    }
}

/// Waits until every host's router maps equal the compile of the cloud's current state;
/// returns each host's maps.
fn wait_router_maps(c: &Cloud) -> Result<BTreeMap<String, RouterMaps>> {
    let hosts: Vec<String> = c.hosts().iter().map(|h| h.name.clone()).collect();
    let mut pending = Vec::new();
    for h in &hosts {
        let maps = HostMaps::open(&c.pin_dir(h)?).with_context(|| format!("pinned maps of {h}"))?;
        pending.push((h.clone(), RouterMaps::desired(c, h)?, maps));
    }
    wait_until("every agent to apply the router change", WAIT, |why| {
        let mut left = Vec::new();
        let mut all = BTreeMap::new();
        for (h, want, maps) in &pending {
            let have = RouterMaps::pinned(maps)?;
            if have != *want {
                left.push(format!("{h}: have {}, want {}", have.sizes(), want.sizes()));
            }
            all.insert(h.clone(), have);
        }
        *why = left.join(" / ");
        Ok(left.is_empty().then_some(all))
    })
    .with_context(|| {
        hosts
            .iter()
            .map(|h| {
                let log = c.agent_log(h).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "---- {h} ----\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The conntrack rows of `host` translated to `ip` (SNAT to a router's external IP).
fn ct_to(c: &Cloud, host: &str, ip: Ipv4Addr) -> Result<Vec<Value>> {
    Ok(c.conntrack(host)?
        .into_iter()
        .filter(|e| e["nat_ip"].as_str() == Some(s(ip).as_str()))
        .collect())
}

fn wait_ct_gone(c: &Cloud, ip: Ipv4Addr) -> Result<()> {
    for h in c.hosts().iter().map(|h| h.name.clone()).collect::<Vec<_>>() {
        wait_until(
            &format!("{h} to purge the conntrack entries translated to {ip}"),
            WAIT,
            |why| {
                let left = ct_to(c, &h, ip)?;
                *why = format!("{left:?}");
                Ok(left.is_empty().then_some(()))
            },
        )?;
    }
    Ok(())
}

/// Fails unless no `show snat` of any host has a row or steering entry for `ip` / router `id`.
fn ensure_no_snat_rows(c: &Cloud, ip: Ipv4Addr, id: u32) -> Result<()> {
    let hash = format!("{id:08x}");
    for h in c.hosts().iter().map(|h| h.name.clone()).collect::<Vec<_>>() {
        let v = c.show_snat(&h)?;
        let stale: Vec<&Value> = v["routers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["external_ip"].as_str() == Some(s(ip).as_str()))
            .chain(
                v["steering"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["router_id"].as_str() == Some(hash.as_str())),
            )
            .collect();
        ensure!(
            stale.is_empty(),
            "{h}: show snat still has rows of router {hash} / {ip}: {stale:?}"
        );
    }
    Ok(())
}

/// Fails if `vm` gets an answer from `dst` (3 echoes).
fn ensure_unreachable(c: &Cloud, vm: &str, dst: Ipv4Addr, why: &str) -> Result<()> {
    let p = c.ping(vm, dst, 3)?;
    ensure!(
        p.received == 0,
        "{vm} -> {dst} must get no answer {why}: {}/{} answered\n{}",
        p.received,
        p.transmitted,
        p.output
    );
    Ok(())
}

/// Waits until `vm` gets an answer from `dst` (the first echoes may resolve ARP).
fn wait_reachable(c: &Cloud, vm: &str, dst: Ipv4Addr, why: &str) -> Result<()> {
    wait_until(&format!("{vm} -> {dst} {why}"), WAIT, |_| {
        Ok(c.ping_once(vm, dst, Duration::from_millis(500))?
            .then_some(()))
    })?;
    c.ping_ok(vm, dst, 3).map(|_| ())
}

/// Compute hosts h1, h2, the SNAT host hs and the external network; network "a" on router
/// r1, network "b" on no router (attached at run time); v1 on a at h1, v2 on b at h2.
fn shared_cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2").snat_host("hs").external();
    t.network("a", 4701, "172.27.1.0/24")
        .network("b", 4702, "172.27.2.0/24");
    t.router("r1", &["a"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    t.build()
}

/// The gateway, interface ports and csnat ports of a router, taken out of the state.
struct Removed {
    gateway: Option<Value>,
    ports: Vec<state::Port>,
}

fn router_ports_of(c: &Cloud, router_id: &str, owner: &str) -> Vec<state::Port> {
    c.state()
        .ports
        .iter()
        .filter(|p| p.device_id == router_id && p.device_owner == owner)
        .cloned()
        .collect()
}

#[test]
fn router_changes_apply_as_diffs_in_traffic_and_maps() -> Result<()> {
    require_preconditions();
    let mut c = shared_cloud()?;
    let r1 = c.router_id("r1")?.to_string();
    let r1_hash = fnv1a32(&r1);
    let old_ip = c.router_external_ip("r1")?;
    let hs_mac = c.ext_mac("hs")?;
    let v2_ip = c.ip("v2")?;
    let (vni_a, vni_b) = (c.network("a")?.vni, c.network("b")?.vni);
    wait_router_maps(&c)?;

    // ---- (1) clear external_gateway_info, then set it with another IP -------------------
    wait_reachable(&c, "v1", INTERNET_HOST, "through r1's SNAT")?;
    ensure!(
        !ct_to(&c, "hs", old_ip)?.is_empty(),
        "hs must hold SNAT conntrack entries to {old_ip} after the pings"
    );
    let arp = c.arping_ext(old_ip, 2, 3)?;
    ensure!(
        arp.reply_macs.contains(&hs_mac),
        "hs must answer ARP for {old_ip} with {hs_mac} before the change: {}",
        arp.output
    );
    // Neutron deletes the csnat ports with the gateway.
    let removed = Removed {
        gateway: c.state_router("r1")?.external_gateway_info.clone(),
        ports: router_ports_of(&c, &r1, state::OWNER_ROUTER_CENTRALIZED_SNAT),
    };
    ensure!(!removed.ports.is_empty(), "r1 has no csnat port to remove");
    c.update_state(|st| {
        if let Some(r) = st.router_mut(&r1) {
            r.external_gateway_info = None;
        }
        st.ports.retain(|p| {
            !(p.device_id == r1 && p.device_owner == state::OWNER_ROUTER_CENTRALIZED_SNAT)
        });
    })?;
    let maps = wait_router_maps(&c)?;
    for (h, m) in &maps {
        let snat: Vec<String> = m
            .naming(r1_hash)
            .into_iter()
            .filter(|e| e.starts_with("snat"))
            .collect();
        ensure!(snat.is_empty(), "{h}: SNAT entries of r1 left: {snat:?}");
    }
    ensure_no_snat_rows(&c, old_ip, r1_hash)?;
    wait_ct_gone(&c, old_ip)?;
    ensure_unreachable(&c, "v1", INTERNET_HOST, "once r1 has no gateway")?;
    let arp = c.arping_ext(old_ip, 2, 3)?;
    ensure!(
        arp.reply_macs.is_empty(),
        "nobody may answer ARP for r1's former external IP {old_ip}: {}",
        arp.output
    );

    let new_ip = Ipv4Addr::new(10, 5, 3, 200);
    let mut gateway = removed
        .gateway
        .clone()
        .context("r1 had no external_gateway_info")?;
    gateway["external_fixed_ips"][0]["ip_address"] = s(new_ip).into();
    c.update_state(|st| {
        if let Some(r) = st.router_mut(&r1) {
            r.external_gateway_info = Some(gateway);
        }
        st.ports.extend(removed.ports.iter().cloned());
    })?;
    wait_router_maps(&c)?;
    wait_until(&format!("hs to list r1 at {new_ip}"), WAIT, |why| {
        let row = c.snat_row("hs", "r1")?;
        *why = format!("{row:?}");
        Ok(row)
    })?;
    let at_ext = c.capture_ext("icmp")?;
    wait_reachable(&c, "v1", INTERNET_HOST, "through r1's SNAT at its new IP")?;
    let packets = at_ext.stop()?;
    let requests: Vec<_> = packets
        .iter()
        .filter(|p| p.is_icmp_echo_request())
        .collect();
    ensure!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|p| p.contains(&format!("{new_ip} > {INTERNET_HOST}"))),
        "SNATed echo requests must leave from {new_ip} only: {requests:#?}"
    );
    ensure!(
        !ct_to(&c, "hs", new_ip)?.is_empty(),
        "hs must translate to {new_ip}"
    );
    let arp = c.arping_ext(new_ip, 2, 3)?;
    ensure!(
        arp.reply_macs.contains(&hs_mac),
        "hs must answer ARP for the new IP {new_ip}: {}",
        arp.output
    );
    let arp = c.arping_ext(old_ip, 2, 3)?;
    ensure!(
        arp.reply_macs.is_empty(),
        "nobody may answer ARP for the old IP {old_ip}: {}",
        arp.output
    );

    // ---- (2) add a router interface on b, then remove it ----------------------------------
    ensure_unreachable(&c, "v1", v2_ip, "while b has no router")?;
    let b = c.network("b")?.clone();
    let iface = state::Port {
        id: format!("b0000000-0000-4000-8000-{:012x}", std::process::id()),
        network_id: b.network_id.clone(),
        mac_address: "fa:16:3e:ee:47:02".into(),
        fixed_ips: vec![FixedIp {
            subnet_id: b.subnet_id.clone(),
            ip_address: s(b.gateway),
        }],
        device_owner: state::OWNER_ROUTER_INTERFACE.into(),
        device_id: r1.clone(),
        binding_host_id: String::new(),
        allowed_address_pairs: Vec::new(),
        port_security_enabled: true,
        security_groups: None,
        admin_state_up: None,
    };
    let iface_id = iface.id.clone();
    c.update_state(|st| st.ports.push(iface))?;
    let maps = wait_router_maps(&c)?;
    // h1 (v1 on a) routes to b; h2 (v2 on b) owns b's gateway MAC.
    for (h, kind) in [("h1", "routes"), ("h2", "gw_by_mac")] {
        let on_b = maps.get(h).map(|m| m.on_vni(vni_b)).unwrap_or_default();
        ensure!(
            on_b.iter().any(|e| e.starts_with(kind)),
            "{h} must have {kind} entries for b once attached: {on_b:?}"
        );
    }
    wait_reachable(&c, "v1", v2_ip, "once b is attached to r1")?;
    wait_reachable(&c, "v2", c.ip("v1")?, "once b is attached to r1")?;

    c.update_state(|st| st.ports.retain(|p| p.id != iface_id))?;
    let maps = wait_router_maps(&c)?;
    for (h, m) in &maps {
        let left = m.on_vni(vni_b);
        ensure!(
            left.is_empty(),
            "{h}: entries for b left after detaching: {left:?}"
        );
        ensure!(
            !m.on_vni(vni_a).is_empty() || h != "h1",
            "{h}: a's entries must stay"
        );
    }
    let before = Counters::take(&c, &["h1"])?;
    ensure_unreachable(&c, "v1", v2_ip, "once b is detached")?;
    let moved = before.moved(&c, "h1")?;
    // Without a route to b, r1 treats b's subnet as outside: the echoes are dropped as no
    // route or (r1 has a gateway) steered to its SNAT host like any external destination.
    ensure!(
        moved.contains_key(Stat::DropNoRoute.as_str())
            || moved.contains_key(Stat::SnatSteered.as_str()),
        "h1 must count v1's echoes to b as {} or {}: moved {moved:?}",
        Stat::DropNoRoute.as_str(),
        Stat::SnatSteered.as_str()
    );
    wait_reachable(&c, "v1", INTERNET_HOST, "after detaching b (a unaffected)")?;

    // ---- (3) delete the router ------------------------------------------------------------
    ensure!(
        !ct_to(&c, "hs", new_ip)?.is_empty(),
        "hs must hold r1's SNAT flows before the delete"
    );
    c.update_state(|st| {
        st.routers.retain(|r| r.id != r1);
        st.ports.retain(|p| p.device_id != r1);
    })?;
    let maps = wait_router_maps(&c)?;
    for (h, m) in &maps {
        let left = m.naming(r1_hash);
        ensure!(left.is_empty(), "{h}: entries naming r1 left: {left:?}");
        let a = m.on_vni(vni_a);
        ensure!(a.is_empty(), "{h}: router entries on a left: {a:?}");
    }
    ensure_no_snat_rows(&c, new_ip, r1_hash)?;
    for h in ["h1", "h2", "hs"] {
        let routes = cmd::stdout(&c.dvrctl(h, &["show", "routes", "--json"])?);
        let hash = format!("{r1_hash:08x}");
        ensure!(
            !routes.to_string().contains(&hash),
            "{h}: show routes still names r1 ({hash}): {routes}"
        );
    }
    wait_ct_gone(&c, new_ip)?;
    ensure_unreachable(&c, "v1", INTERNET_HOST, "once r1 is deleted")?;
    ensure_unreachable(&c, "v1", c.network("a")?.gateway, "once r1 is deleted")?;
    Ok(())
}

/// Router `admin_state_up: false` stops its routing, counted as drop_router_down; true
/// again restores it.
#[test]
fn router_admin_state_down_stops_routing() -> Result<()> {
    require_preconditions();
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4711, "172.27.11.0/24")
        .network("b", 4712, "172.27.12.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("v2", "b", "h2"));
    let mut c = t.build()?;
    let r1 = c.router_id("r1")?.to_string();
    let v2_ip = c.ip("v2")?;
    wait_reachable(&c, "v1", v2_ip, "through r1")?;

    c.update_state(|st| {
        if let Some(r) = st.router_mut(&r1) {
            r.admin_state_up = Some(false);
        }
    })?;
    wait_router_maps(&c)?;
    let before = Counters::take(&c, &["h1"])?;
    ensure_unreachable(&c, "v1", v2_ip, "while r1 is administratively down")?;
    let moved = before.moved(&c, "h1")?;
    ensure!(
        moved
            .get(Stat::DropRouterDown.as_str())
            .copied()
            .unwrap_or(0)
            > 0,
        "h1 must count the echoes r1 no longer routes as drop_router_down: moved {moved:?}"
    );

    c.update_state(|st| {
        if let Some(r) = st.router_mut(&r1) {
            r.admin_state_up = Some(true);
        }
    })?;
    wait_router_maps(&c)?;
    wait_reachable(&c, "v1", v2_ip, "once r1 is up again")
}
