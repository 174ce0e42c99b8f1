//! Prometheus metrics (`dvr-agent --metrics ADDR`): packets per action and drop reason,
//! conntrack and SNAT usage read from the live maps, and the agent's own reconcile work.
//! A small blocking HTTP server on its own thread; each scrape reads the pinned maps afresh.
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use dvr_common::nat::{CT_PAT, CT_SNAT};

use crate::maps::HostMaps;

/// What the control loop reports, shared with the server thread.
#[derive(Debug, Default, Clone)]
pub struct AgentMetrics {
    pub reconciles: u64,
    pub reconcile_errors: u64,
    pub reconcile_seconds_total: f64,
    pub reconcile_seconds_last: f64,
    pub entries_upserted: u64,
    pub entries_deleted: u64,
    pub states_refused: u64,
    pub fips_served: u64,
    pub taps_attached: u64,
    /// Router id hash -> name, for labels.
    pub routers: Vec<(u32, String)>,
}

pub type Shared = Arc<Mutex<AgentMetrics>>;

/// Render the exposition text.
pub fn render(host: &str, maps: &HostMaps, agent: &AgentMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP dvr_packets_total Packets handled by the datapath, by what was done or why they were dropped."
    );
    let _ = writeln!(s, "# TYPE dvr_packets_total counter");
    if let Ok(stats) = maps.read_stats() {
        for (stat, n) in stats {
            let kind = if stat.is_drop() { "drop" } else { "forward" };
            let _ = writeln!(
                s,
                "dvr_packets_total{{host=\"{host}\",kind=\"{kind}\",reason=\"{}\"}} {n}",
                stat.as_str()
            );
        }
    }
    let ct = maps.ct.read().unwrap_or_default();
    let _ = writeln!(
        s,
        "# HELP dvr_conntrack_entries Conntrack entries (two per flow)."
    );
    let _ = writeln!(s, "# TYPE dvr_conntrack_entries gauge");
    let _ = writeln!(s, "dvr_conntrack_entries{{host=\"{host}\"}} {}", ct.len());
    let name = |id: u32| {
        agent
            .routers
            .iter()
            .find(|(h, _)| *h == id)
            .map_or_else(|| format!("{id:08x}"), |(_, n)| n.clone())
    };
    let _ = writeln!(
        s,
        "# HELP dvr_snat_flows Port-translated flows per router (one external port each)."
    );
    let _ = writeln!(s, "# TYPE dvr_snat_flows gauge");
    for (ip, r) in maps.snat_ips.read().unwrap_or_default() {
        let flows = ct
            .values()
            .filter(|e| e.kind == CT_SNAT | CT_PAT && e.nat_ip_be == ip)
            .count();
        let _ = writeln!(
            s,
            "dvr_snat_flows{{host=\"{host}\",router=\"{}\"}} {flows}",
            name(r.router_id)
        );
    }
    let _ = writeln!(
        s,
        "# HELP dvr_snat_exhausted_total New flows refused for lack of a SNAT port."
    );
    let _ = writeln!(s, "# TYPE dvr_snat_exhausted_total counter");
    for (r, n) in maps.snat_exhausted.read().unwrap_or_default() {
        let _ = writeln!(
            s,
            "dvr_snat_exhausted_total{{host=\"{host}\",router=\"{}\"}} {n}",
            name(r)
        );
    }
    let a = agent;
    for (metric, kind, help, v) in [
        (
            "dvr_reconciles_total",
            "counter",
            "Reconcile passes applied.",
            a.reconciles as f64,
        ),
        (
            "dvr_reconcile_errors_total",
            "counter",
            "Reconcile passes that failed.",
            a.reconcile_errors as f64,
        ),
        (
            "dvr_reconcile_seconds_total",
            "counter",
            "Time spent reconciling.",
            a.reconcile_seconds_total,
        ),
        (
            "dvr_reconcile_seconds_last",
            "gauge",
            "Duration of the last reconcile pass.",
            a.reconcile_seconds_last,
        ),
        (
            "dvr_map_entries_upserted_total",
            "counter",
            "Map entries written.",
            a.entries_upserted as f64,
        ),
        (
            "dvr_map_entries_deleted_total",
            "counter",
            "Map entries deleted.",
            a.entries_deleted as f64,
        ),
        (
            "dvr_states_refused_total",
            "counter",
            "Invalid states refused.",
            a.states_refused as f64,
        ),
        (
            "dvr_fips_served",
            "gauge",
            "Floating IPs served on this host.",
            a.fips_served as f64,
        ),
        (
            "dvr_taps_attached",
            "gauge",
            "VM taps the datapath is attached to.",
            a.taps_attached as f64,
        ),
    ] {
        let _ = writeln!(
            s,
            "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric}{{host=\"{host}\"}} {v}"
        );
    }
    s
}

fn serve_one(mut conn: TcpStream, host: &str, maps: &HostMaps, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).unwrap_or(0);
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if path == "/metrics" {
        let agent = shared.lock().map(|g| g.clone()).unwrap_or_default();
        ("200 OK", render(host, maps, &agent))
    } else {
        ("404 Not Found", "see /metrics\n".to_string())
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Bind `addr` and serve scrapes on a thread of its own.
pub fn spawn(
    addr: SocketAddr,
    host: String,
    pins: PathBuf,
    shared: Shared,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let maps = HostMaps::open(&pins).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                serve_one(conn, &host, &maps, &shared);
            }
        })?;
    Ok(local)
}
