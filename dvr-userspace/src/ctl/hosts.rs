//! `dvrctl hosts --etcd URL [--json]`: the hosts of the stored state and which of their
//! agents are alive (hold their lease).
use std::collections::BTreeMap;

use serde::Serialize;

use crate::source::{self, etcd};

#[derive(Serialize)]
struct HostRow {
    host: String,
    agent_mode: String,
    tunnel_ip: String,
    alive: bool,
    /// Seconds left on the agent's lease.
    lease_ttl_s: Option<i64>,
}

pub fn hosts(url: &str, json: bool) -> Result<String, String> {
    let kvs = etcd::read_state(url).map_err(|e| e.to_string())?;
    let alive = etcd::alive(url).map_err(|e| e.to_string())?;
    let doc: serde_json::Value =
        serde_json::from_str(&source::from_kvs(&kvs).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let mut rows: BTreeMap<String, HostRow> = BTreeMap::new();
    for h in doc["hosts"].as_array().into_iter().flatten() {
        let name = h["name"].as_str().unwrap_or_default().to_string();
        rows.insert(
            name.clone(),
            HostRow {
                alive: alive.contains_key(&name),
                lease_ttl_s: alive.get(&name).copied(),
                host: name,
                agent_mode: h["agent_mode"].as_str().unwrap_or_default().into(),
                tunnel_ip: h["tunnel_ip"].as_str().unwrap_or_default().into(),
            },
        );
    }
    // Agents alive for hosts the state does not (yet) name.
    for (name, ttl) in &alive {
        rows.entry(name.clone()).or_insert_with(|| HostRow {
            host: name.clone(),
            agent_mode: "-".into(),
            tunnel_ip: "-".into(),
            alive: true,
            lease_ttl_s: Some(*ttl),
        });
    }
    let rows: Vec<HostRow> = rows.into_values().collect();
    if json {
        return serde_json::to_string(&rows).map_err(|e| e.to_string());
    }
    let mut out = format!(
        "{:<24} {:<16} {:<16} {}\n",
        "HOST", "MODE", "TUNNEL-IP", "AGENT"
    );
    for r in rows {
        let agent = match r.lease_ttl_s {
            Some(t) if r.alive => format!("alive (lease {t}s)"),
            _ => "down".into(),
        };
        out.push_str(&format!(
            "{:<24} {:<16} {:<16} {agent}\n",
            r.host, r.agent_mode, r.tunnel_ip
        ));
    }
    Ok(out)
}
