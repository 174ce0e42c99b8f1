//! The benchmark cloud on this project's eBPF datapath, built with the test bed's
//! [`Topology`], and its floating IP change latency.
//!
//! ```text
//!   c1 (dvr):      v1 (subnet a, FIP f1), v3 (subnet a, no FIP)
//!   c2 (dvr):      v2 (subnet b, FIP f2)
//!   s  (dvr_snat): centralized SNAT of router r1 (a = 192.168.1.0/24, b = 192.168.2.0/24)
//!   ext:           upstream router 10.5.0.1 and internet host 198.51.100.10 on br-ext
//!   f3:            an unassociated FIP, associated with v3 and back for the change latency
//! ```

use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow, bail};
use dvr_common::nat::FIP_LOCAL;
use dvr_userspace::maps::HostMaps;

use super::{PathEnds, PathKind, percentile};
use crate::external::{EXT_GATEWAY, INTERNET_HOST};
use crate::{Cloud, Topology, VmSpec};

/// The benchmark cloud (also the floor's, [`super::floor`]). Its veths are plain (the
/// agent's defaults: the external interface served by TC) unless `xdp_veths` (`dvr-bench
/// --xdp-veths`: their peers readied for XDP and the agents told so, see
/// [`Topology::plain_veths`]).
pub fn topology(xdp_veths: bool) -> Topology {
    let mut t = Topology::new();
    if !xdp_veths {
        t.plain_veths();
    }
    t.host("c1").host("c2").snat_host("s").external();
    t.network("a", 101, "192.168.1.0/24")
        .network("b", 102, "192.168.2.0/24");
    t.router("r1", &["a", "b"]);
    t.vm(VmSpec::new("v1", "a", "c1"))
        .vm(VmSpec::new("v2", "b", "c2"))
        .vm(VmSpec::new("v3", "a", "c1"));
    t.fip("f1", Some("v1"))
        .fip("f2", Some("v2"))
        .fip("f3", None);
    t
}

/// Builds the cloud, its agents run with `agent_args` besides the test bed's, and waits
/// until every agent is ready.
pub fn build(agent_args: &[String], xdp_veths: bool) -> Result<Cloud> {
    let mut t = topology(xdp_veths);
    t.agent_args(&agent_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut cloud = t.build().context("building the eBPF cloud")?;
    // Logs are printed by the caller when something fails, not on every drop.
    cloud.dump_logs_on_drop = false;
    Ok(cloud)
}

/// The four paths in this cloud.
pub fn paths(c: &Cloud) -> Result<Vec<PathEnds>> {
    let ext = c.ext_ns()?;
    let ns = |vm: &str| -> Result<String> { Ok(c.vm(vm)?.ns.clone()) };
    Ok(vec![
        PathEnds {
            path: PathKind::EastWest,
            client_ns: ns("v1")?,
            server_ns: ns("v2")?,
            dst: c.ip("v2")?,
            seen_src: c.ip("v1")?,
            listen: Ipv4Addr::UNSPECIFIED,
        },
        PathEnds {
            path: PathKind::ExtToFip,
            client_ns: ext.clone(),
            server_ns: ns("v1")?,
            dst: c.fip_ip("f1")?,
            seen_src: EXT_GATEWAY,
            listen: Ipv4Addr::UNSPECIFIED,
        },
        PathEnds {
            path: PathKind::FipToExt,
            client_ns: ns("v1")?,
            server_ns: ext.clone(),
            dst: INTERNET_HOST,
            seen_src: c.fip_ip("f1")?,
            listen: INTERNET_HOST,
        },
        PathEnds {
            path: PathKind::Snat,
            client_ns: ns("v3")?,
            server_ns: ext,
            dst: INTERNET_HOST,
            seen_src: c.router_external_ip("r1")?,
            listen: INTERNET_HOST,
        },
    ])
}

/// The agent-side part of the last `n` state changes c1 applied, in milliseconds: from the
/// agent reading the state file to its maps written (`since_state_read` of its "applied"
/// log lines). The rest of a measured change is the file write, the wake-up and the poll.
pub fn agent_side_ms(c: &Cloud, n: usize) -> Vec<f64> {
    let log = c.agent_log("c1").unwrap_or_default();
    let all: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("since_state_read=Some(").nth(1))
        .filter_map(|rest| rest.split(')').next()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect();
    all[all.len().saturating_sub(n)..].to_vec()
}

/// The agents' logs (tails), for a failure report.
pub fn agent_logs(c: &Cloud) -> String {
    let mut s = String::new();
    for h in c.hosts() {
        let log = c.agent_log(&h.name).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        s.push_str(&format!("---- agent {} ----\n{tail}\n", h.name));
    }
    s
}

/// Latency of one floating IP change, eBPF: from the state file being rewritten (f3
/// associated with v3, or disassociated) until c1's pinned `fips` map serves it as local (or
/// no longer does). It spans the agent noticing the file (it polls it), parsing, validating
/// and compiling the whole state, and the map writes. Returns every sample in milliseconds.
pub fn fip_change_latency(c: &mut Cloud, changes: usize) -> Result<Vec<f64>> {
    let maps = HostMaps::open(&c.pin_dir("c1")?).context("opening c1's pinned maps")?;
    let fip = c.fip_ip("f3")?;
    let key = u32::from_ne_bytes(fip.octets());
    let v3 = c.ip("v3")?;
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        super::bail_if_interrupted()?;
        let associate = i % 2 == 0;
        let start = Instant::now();
        if associate {
            c.associate("f3", "v3")?;
        } else {
            c.disassociate("f3")?;
        }
        loop {
            let e = maps.fips.get(&key)?;
            let local = e.is_some_and(|e| {
                e.flags & FIP_LOCAL != 0 && e.fixed_ip_be == u32::from_ne_bytes(v3.octets())
            });
            if local == associate {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!(
                    "c1 did not {} f3 ({fip}) within 5 s; entry: {e:?}",
                    if associate { "serve" } else { "stop serving" }
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        // Changes a little apart, as a user's would be, not in lockstep with the poll timer.
        std::thread::sleep(Duration::from_millis(37));
    }
    // The last change left f3 unassociated when `changes` is even; make sure it works when
    // associated: one more association, checked with traffic from outside.
    if changes.is_multiple_of(2) {
        c.associate("f3", "v3")?;
        crate::cmd::wait_until("f3 to answer pings", Duration::from_secs(5), |_| {
            Ok(
                c.ping_once(crate::external::EXT, fip, Duration::from_millis(300))?
                    .then_some(()),
            )
        })?;
        c.disassociate("f3")?;
    }
    Ok(samples)
}

/// p50 and p99 of samples.
pub fn p50_p99(samples: &[f64]) -> Result<(f64, f64)> {
    Ok((
        percentile(samples, 50.0).ok_or_else(|| anyhow!("no samples"))?,
        percentile(samples, 99.0).ok_or_else(|| anyhow!("no samples"))?,
    ))
}
