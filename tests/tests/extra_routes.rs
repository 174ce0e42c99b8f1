//! Router extra routes (issue 14), in real traffic and in the pinned maps.
//!
//! One cloud: router r1 with networks a (v1 on h1) and b (vr on h2, a VM acting as a router:
//! forwarding on, the "branch" prefix 10.99.0.0/24 behind it, here 10.99.0.1 on its
//! loopback, and that prefix in its port's `allowed_address_pairs`, as Neutron requires
//! for a VM that routes). r1 gets the extra route `10.99.0.0/24 via vr`.
//!
//! - `extra_route_to_a_vm_router_on_another_host_works_both_ways`: v1 reaches 10.99.0.1
//!   (echo replies from that address, routed by h1 to vr's port across the tunnel; the
//!   reply routed back by h2), and the branch address reaches v1 the other way; h1's
//!   `routes` map holds the route with vr as next hop, `dvrctl show routes` lists it with its
//!   next hop; the route removed, the branch is unreachable again and its entry gone.
//! - `bad_next_hop_is_refused_and_the_last_good_state_serves`: a route whose next hop lies in
//!   no subnet of the router is refused by the agent, naming the router and
//!   `routes[0].nexthop`, and nothing changes: the maps keep the previous routes and the
//!   traffic through the good route goes on.
//!
//! Needs root, bpffs and the built agent; run with `--test-threads=1`.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dvr_common::route::{ROUTE_KEY_PREFIX_BITS, RouteKey};
use dvr_tests::cmd::{self, wait_until};
use dvr_tests::state::AddressPair;
use dvr_tests::{Cloud, Topology, TraceProbe, VmSpec, require_preconditions};
use dvr_userspace::compile::fnv1a32;
use dvr_userspace::maps::HostMaps;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const BRANCH: &str = "10.99.0.0/24";
const BRANCH_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// The cloud of the module doc, without the extra route yet; vr routes for the branch.
fn cloud() -> Result<Cloud> {
    let mut t = Topology::new();
    t.host("h1").host("h2");
    t.network("a", 4721, "172.27.21.0/24")
        .network("b", 4722, "172.27.22.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "h1"))
        .vm(VmSpec::new("vr", "b", "h2"));
    let mut c = t.build()?;
    let vr = c.vm("vr")?.clone();
    c.update_state(|st| {
        if let Some(p) = st.ports.iter_mut().find(|p| p.id == vr.port_id) {
            p.allowed_address_pairs.push(AddressPair {
                ip_address: BRANCH.into(),
                mac_address: vr.mac.clone(),
            });
        }
    })?;
    for args in [
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"][..],
        &["ip", "link", "set", "lo", "up"],
        &["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"],
    ] {
        cmd::exec_ok(&vr.ns, args).with_context(|| format!("vr: {args:?}"))?;
    }
    Ok(c)
}

/// Sets r1's extra routes.
fn set_routes(c: &mut Cloud, routes: Vec<serde_json::Value>) -> Result<()> {
    let r1 = c.router_id("r1")?.to_string();
    c.update_state(|st| {
        if let Some(r) = st.router_mut(&r1) {
            r.routes = routes;
        }
    })
}

/// h1's `routes` entry for the branch prefix: its next hop (network order), if any.
fn branch_next_hop(c: &Cloud) -> Result<Option<u32>> {
    let maps = HostMaps::open(&c.pin_dir("h1")?)?;
    let key = RouteKey {
        router_id_be: fnv1a32(c.router_id("r1")?).to_be(),
        ip_be: u32::from_ne_bytes([10, 99, 0, 0]),
    };
    let routes = maps.routes.read()?;
    Ok(routes
        .get(&(ROUTE_KEY_PREFIX_BITS + 24, key))
        .map(|r| r.nexthop_be))
}

fn wait_reachable(c: &Cloud, from: &str, dst: Ipv4Addr, args: &[&str], why: &str) -> Result<()> {
    wait_until(&format!("{from} -> {dst} {why}"), WAIT, |w| {
        let p = c.ping_with(from, dst, 1, args)?;
        *w = p.output.clone();
        Ok((p.received > 0).then_some(()))
    })
}

#[test]
fn extra_route_to_a_vm_router_on_another_host_works_both_ways() -> Result<()> {
    require_preconditions();
    let mut c = cloud()?;
    let v1 = c.ip("v1")?;
    let vr = c.ip("vr")?;
    wait_reachable(&c, "v1", vr, &[], "(plain routing first)")?;
    let p = c.ping("v1", BRANCH_IP, 2)?;
    ensure!(
        p.received == 0,
        "without the extra route r1 must not reach the branch: {}",
        p.output
    );

    set_routes(
        &mut c,
        vec![json!({"destination": BRANCH, "nexthop": vr.to_string()})],
    )?;
    wait_reachable(&c, "v1", BRANCH_IP, &[], "through the extra route")?;
    let p = c.ping_ok("v1", BRANCH_IP, 3)?;
    ensure!(
        p.output.contains(&format!("from {BRANCH_IP}")),
        "the replies come from the branch address: {}",
        p.output
    );
    // The other way: the branch address, routed by h2 (vr's port allows it as a source).
    wait_reachable(
        &c,
        "vr",
        v1,
        &["-I", &BRANCH_IP.to_string()],
        "from the branch",
    )?;
    ensure!(
        branch_next_hop(&c)? == Some(u32::from_ne_bytes(vr.octets())),
        "h1's routes map must send the branch to vr"
    );
    let shown = cmd::stdout(&c.dvrctl("h1", &["show", "routes"])?);
    ensure!(
        shown.contains(BRANCH) && shown.contains(&format!("via {vr}")),
        "dvrctl show routes lists the extra route with its next hop:\n{shown}"
    );
    let (tap, gw_mac) = (
        c.vm("v1")?.tap.clone(),
        c.network("a")?.gateway_mac.clone().unwrap_or_default(),
    );
    let probe = TraceProbe::udp(&tap, v1, 40000, BRANCH_IP, 9).dst_mac(&gw_mac);
    let traced = c.trace("h1", &probe)?.render();
    ensure!(
        traced.contains(&format!("by extra route via {vr}")) && traced.contains("routed"),
        "dvrctl trace follows the extra route to vr:\n{traced}"
    );

    set_routes(&mut c, Vec::new())?;
    wait_until("h1 to drop the extra route", WAIT, |_| {
        Ok(branch_next_hop(&c)?.is_none().then_some(()))
    })?;
    let p = c.ping("v1", BRANCH_IP, 2)?;
    ensure!(
        p.received == 0,
        "the route removed, the branch is unreachable: {}",
        p.output
    );
    Ok(())
}

#[test]
fn bad_next_hop_is_refused_and_the_last_good_state_serves() -> Result<()> {
    require_preconditions();
    let mut c = cloud()?;
    let vr = c.ip("vr")?;
    set_routes(
        &mut c,
        vec![json!({"destination": BRANCH, "nexthop": vr.to_string()})],
    )?;
    wait_reachable(&c, "v1", BRANCH_IP, &[], "through the extra route")?;

    // 192.0.2.7 lies in no subnet of r1.
    set_routes(
        &mut c,
        vec![json!({"destination": BRANCH, "nexthop": "192.0.2.7"})],
    )?;
    let r1 = c.router_id("r1")?.to_string();
    let needle = format!("router {r1}: field `routes[0].nexthop`");
    c.wait_agent_log("h1", &needle, WAIT)?;
    ensure!(
        branch_next_hop(&c)? == Some(u32::from_ne_bytes(vr.octets())),
        "the refused state changes nothing: the route still goes to vr"
    );
    c.ping_ok("v1", BRANCH_IP, 3).map(|_| ())
}
