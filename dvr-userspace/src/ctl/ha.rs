//! `dvrctl ha --etcd URL [--json]`: which host serves each HA router (docs/HA.md);
//! `dvrctl failover ROUTER --to HOST --etcd URL`: a planned handover.
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::State;
use crate::source::{self, etcd};

#[derive(Serialize)]
struct Row {
    router: String,
    /// Candidates, most preferred first.
    candidates: Vec<String>,
    /// The elected host, if any.
    host: Option<String>,
    lease: Option<i64>,
}

fn state(url: &str) -> Result<State, String> {
    let kvs = etcd::read_state(url).map_err(|e| e.to_string())?;
    let text = source::from_kvs(&kvs).map_err(|e| e.to_string())?;
    State::from_json(&text).map_err(|e| e.to_string())
}

pub fn ha(url: &str, json: bool) -> Result<String, String> {
    let st = state(url)?;
    let holders = etcd::ha_holders(url).map_err(|e| e.to_string())?;
    let rows: Vec<Row> = st
        .routers()
        .iter()
        .filter(|r| r.is_ha_managed())
        .map(|r| {
            let h = holders.get(&r.id);
            Row {
                router: r.id.clone(),
                candidates: r.ha_candidates().iter().map(|c| c.host.clone()).collect(),
                host: h.map(|h| h.host.clone()),
                lease: h.map(|h| h.lease),
            }
        })
        .collect();
    if json {
        return serde_json::to_string(&rows).map_err(|e| e.to_string());
    }
    let mut out = format!("{:<38} {:<20} {}\n", "ROUTER", "ACTIVE", "CANDIDATES");
    for r in rows {
        out.push_str(&format!(
            "{:<38} {:<20} {}\n",
            r.router,
            r.host.as_deref().unwrap_or("(none)"),
            r.candidates.join(",")
        ));
    }
    Ok(out)
}

/// Ask for `router`'s role to move to `to` and wait until `to` holds it.
pub fn failover(url: &str, router: &str, to: &str, timeout: Duration) -> Result<String, String> {
    let st = state(url)?;
    let r = st
        .router(router)
        .ok_or_else(|| format!("router {router} does not exist"))?;
    if !r.is_ha_managed() {
        return Err(format!(
            "router {router}: not an HA router (ha: true with ha_hosts)"
        ));
    }
    if !r.ha_hosts.iter().any(|h| h.host == to) {
        return Err(format!(
            "router {router}: host {to} is not one of its ha_hosts"
        ));
    }
    let alive = etcd::alive(url).map_err(|e| e.to_string())?;
    if !alive.contains_key(to) {
        return Err(format!("host {to}: its agent is not alive"));
    }
    let holder = |url: &str| -> Result<Option<String>, String> {
        Ok(etcd::ha_holders(url)
            .map_err(|e| e.to_string())?
            .remove(router)
            .map(|h| h.host))
    };
    if holder(url)?.as_deref() == Some(to) {
        return Ok(format!("router {router}: already served by {to}"));
    }
    let start = Instant::now();
    etcd::request_failover(url, router, to).map_err(|e| e.to_string())?;
    loop {
        if holder(url)?.as_deref() == Some(to) {
            return Ok(format!(
                "router {router}: served by {to} after {} ms",
                start.elapsed().as_millis()
            ));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "router {router}: {to} does not hold the role after {:.1} s (the request stays in etcd)",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
