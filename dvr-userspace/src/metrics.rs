//! Prometheus metrics (`dvr-agent --metrics ADDR`): packets per action and drop reason,
//! conntrack and SNAT usage read from the live maps, and the agent's own reconcile work.
//! The text comes from the `prometheus` crate's encoder (text format 0.0.4, label values
//! escaped); a small blocking HTTP server on its own thread serves it, and each scrape reads
//! the pinned maps afresh. (One GET per connection needs no HTTP crate.)
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use dvr_common::{
    nat::{CT_PAT, CT_SNAT},
    stats::Stat,
};
use prometheus::{
    TEXT_FORMAT, TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

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
    /// Valid changes that touched nothing of this host's view.
    pub changes_elsewhere: u64,
    /// Resources in the cloud, and in this host's view of it.
    pub cloud_resources: u64,
    pub view_resources: u64,
    pub fips_served: u64,
    pub taps_attached: u64,
    /// Router id hash -> name, for labels.
    pub routers: Vec<(u32, String)>,
}

pub type Shared = Arc<Mutex<AgentMetrics>>;

/// What the datapath's maps say at one scrape.
#[derive(Debug, Default)]
struct DatapathReading {
    /// Packets per counter; `None` when the counters could not be read.
    stats: Option<Vec<(Stat, u64)>>,
    /// Conntrack entries.
    conntrack: usize,
    /// Router id -> port-translated flows, one row per SNAT IP.
    snat_flows: Vec<(u32, usize)>,
    /// Router id -> new flows refused for lack of a SNAT port.
    snat_exhausted: Vec<(u32, u64)>,
}

fn read(maps: &HostMaps) -> DatapathReading {
    let stats = maps.read_stats().ok();
    let ct = maps.ct.read().unwrap_or_default();
    let snat_flows = maps
        .snat_ips
        .read()
        .unwrap_or_default()
        .into_iter()
        .map(|(ip, r)| {
            let flows = ct
                .values()
                .filter(|e| e.kind == CT_SNAT | CT_PAT && e.nat_ip_be == ip)
                .count();
            (r.router_id, flows)
        })
        .collect();
    DatapathReading {
        stats,
        conntrack: ct.len(),
        snat_flows,
        snat_exhausted: maps
            .snat_exhausted
            .read()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its samples are (label name/value pairs, value).
fn family(
    name: &str,
    kind: Kind,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(labels, v)| {
            let mut m = Metric::default();
            m.set_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut l = LabelPair::default();
                        l.set_name(k.into());
                        l.set_value(v);
                        l
                    })
                    .collect(),
            );
            match kind {
                Kind::Counter => {
                    let mut c = Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                }
                Kind::Gauge => {
                    let mut g = Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
            }
            m
        })
        .collect();
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(match kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
    });
    f.set_metric(metrics);
    f
}

/// The exposition text (Prometheus text format 0.0.4) of one reading.
fn encode(host: &str, dp: &DatapathReading, agent: &AgentMetrics) -> String {
    let h = || ("host", host.to_string());
    let router = |id: u32| {
        let name = agent
            .routers
            .iter()
            .find(|(h, _)| *h == id)
            .map_or_else(|| format!("{id:08x}"), |(_, n)| n.clone());
        ("router", name)
    };
    let mut families = vec![
        family(
            "dvr_packets_total",
            Kind::Counter,
            "Packets handled by the datapath, by what was done or why they were dropped.",
            dp.stats.iter().flatten().map(|(stat, n)| {
                let kind = if stat.is_drop() { "drop" } else { "forward" };
                (
                    vec![
                        h(),
                        ("kind", kind.to_string()),
                        ("reason", stat.as_str().to_string()),
                    ],
                    *n as f64,
                )
            }),
        ),
        family(
            "dvr_conntrack_entries",
            Kind::Gauge,
            "Conntrack entries (two per flow).",
            [(vec![h()], dp.conntrack as f64)],
        ),
        family(
            "dvr_snat_flows",
            Kind::Gauge,
            "Port-translated flows per router (one external port each).",
            dp.snat_flows
                .iter()
                .map(|(r, flows)| (vec![h(), router(*r)], *flows as f64)),
        ),
        family(
            "dvr_snat_exhausted_total",
            Kind::Counter,
            "New flows refused for lack of a SNAT port.",
            dp.snat_exhausted
                .iter()
                .map(|(r, n)| (vec![h(), router(*r)], *n as f64)),
        ),
    ];
    let a = agent;
    for (name, kind, help, v) in [
        (
            "dvr_reconciles_total",
            Kind::Counter,
            "Reconcile passes applied.",
            a.reconciles as f64,
        ),
        (
            "dvr_reconcile_errors_total",
            Kind::Counter,
            "Reconcile passes that failed.",
            a.reconcile_errors as f64,
        ),
        (
            "dvr_reconcile_seconds_total",
            Kind::Counter,
            "Time spent reconciling.",
            a.reconcile_seconds_total,
        ),
        (
            "dvr_reconcile_seconds_last",
            Kind::Gauge,
            "Duration of the last reconcile pass.",
            a.reconcile_seconds_last,
        ),
        (
            "dvr_map_entries_upserted_total",
            Kind::Counter,
            "Map entries written.",
            a.entries_upserted as f64,
        ),
        (
            "dvr_map_entries_deleted_total",
            Kind::Counter,
            "Map entries deleted.",
            a.entries_deleted as f64,
        ),
        (
            "dvr_states_refused_total",
            Kind::Counter,
            "Invalid states refused.",
            a.states_refused as f64,
        ),
        (
            "dvr_state_changes_elsewhere_total",
            Kind::Counter,
            "Valid state changes that touched nothing this host serves.",
            a.changes_elsewhere as f64,
        ),
        (
            "dvr_cloud_resources",
            Kind::Gauge,
            "Resources in the cloud's state.",
            a.cloud_resources as f64,
        ),
        (
            "dvr_view_resources",
            Kind::Gauge,
            "Resources in this host's view of the state (what it compiles from).",
            a.view_resources as f64,
        ),
        (
            "dvr_fips_served",
            Kind::Gauge,
            "Floating IPs served on this host.",
            a.fips_served as f64,
        ),
        (
            "dvr_taps_attached",
            Kind::Gauge,
            "VM taps the datapath is attached to.",
            a.taps_attached as f64,
        ),
    ] {
        families.push(family(name, kind, help, [(vec![h()], v)]));
    }
    // The text format has no way to say "no samples": a family without any is left out.
    families.retain(|f| !f.get_metric().is_empty());
    let mut s = String::new();
    // The encoder only refuses families without a name or samples, and there are none.
    let _ = TextEncoder::new().encode_utf8(&families, &mut s);
    s
}

/// Render the exposition text.
pub fn render(host: &str, maps: &HostMaps, agent: &AgentMetrics) -> String {
    encode(host, &read(maps), agent)
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
        "HTTP/1.1 {status}\r\nContent-Type: {TEXT_FORMAT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(routers: Vec<(u32, String)>) -> AgentMetrics {
        AgentMetrics {
            reconciles: 3,
            reconcile_errors: 0,
            reconcile_seconds_total: 0.5,
            reconcile_seconds_last: 0.0017,
            entries_upserted: 10,
            entries_deleted: 2,
            states_refused: 1,
            changes_elsewhere: 4,
            cloud_resources: 30,
            view_resources: 12,
            fips_served: 1,
            taps_attached: 2,
            routers,
        }
    }

    /// Line for line what the hand-written exposition produced before the encoder.
    #[test]
    fn text_is_what_it_was() {
        let dp = DatapathReading {
            stats: Some(vec![(Stat::TxLocal, 6), (Stat::DropSpoofIp, 3)]),
            conntrack: 4,
            snat_flows: vec![(0xabc, 2)],
            snat_exhausted: vec![(7, 1)],
        };
        let text = encode("h1", &dp, &agent(vec![(0xabc, "r1".into())]));
        let want = r#"# HELP dvr_packets_total Packets handled by the datapath, by what was done or why they were dropped.
# TYPE dvr_packets_total counter
dvr_packets_total{host="h1",kind="forward",reason="tx_local"} 6
dvr_packets_total{host="h1",kind="drop",reason="drop_spoof_ip"} 3
# HELP dvr_conntrack_entries Conntrack entries (two per flow).
# TYPE dvr_conntrack_entries gauge
dvr_conntrack_entries{host="h1"} 4
# HELP dvr_snat_flows Port-translated flows per router (one external port each).
# TYPE dvr_snat_flows gauge
dvr_snat_flows{host="h1",router="r1"} 2
# HELP dvr_snat_exhausted_total New flows refused for lack of a SNAT port.
# TYPE dvr_snat_exhausted_total counter
dvr_snat_exhausted_total{host="h1",router="00000007"} 1
# HELP dvr_reconciles_total Reconcile passes applied.
# TYPE dvr_reconciles_total counter
dvr_reconciles_total{host="h1"} 3
# HELP dvr_reconcile_errors_total Reconcile passes that failed.
# TYPE dvr_reconcile_errors_total counter
dvr_reconcile_errors_total{host="h1"} 0
# HELP dvr_reconcile_seconds_total Time spent reconciling.
# TYPE dvr_reconcile_seconds_total counter
dvr_reconcile_seconds_total{host="h1"} 0.5
# HELP dvr_reconcile_seconds_last Duration of the last reconcile pass.
# TYPE dvr_reconcile_seconds_last gauge
dvr_reconcile_seconds_last{host="h1"} 0.0017
# HELP dvr_map_entries_upserted_total Map entries written.
# TYPE dvr_map_entries_upserted_total counter
dvr_map_entries_upserted_total{host="h1"} 10
# HELP dvr_map_entries_deleted_total Map entries deleted.
# TYPE dvr_map_entries_deleted_total counter
dvr_map_entries_deleted_total{host="h1"} 2
# HELP dvr_states_refused_total Invalid states refused.
# TYPE dvr_states_refused_total counter
dvr_states_refused_total{host="h1"} 1
# HELP dvr_state_changes_elsewhere_total Valid state changes that touched nothing this host serves.
# TYPE dvr_state_changes_elsewhere_total counter
dvr_state_changes_elsewhere_total{host="h1"} 4
# HELP dvr_cloud_resources Resources in the cloud's state.
# TYPE dvr_cloud_resources gauge
dvr_cloud_resources{host="h1"} 30
# HELP dvr_view_resources Resources in this host's view of the state (what it compiles from).
# TYPE dvr_view_resources gauge
dvr_view_resources{host="h1"} 12
# HELP dvr_fips_served Floating IPs served on this host.
# TYPE dvr_fips_served gauge
dvr_fips_served{host="h1"} 1
# HELP dvr_taps_attached VM taps the datapath is attached to.
# TYPE dvr_taps_attached gauge
dvr_taps_attached{host="h1"} 2
"#;
        assert_eq!(text, want);
    }

    #[test]
    fn label_values_are_escaped() {
        let dp = DatapathReading {
            snat_flows: vec![(1, 2)],
            snat_exhausted: vec![(1, 5)],
            ..DatapathReading::default()
        };
        let router = "r \"one\"\\two\nthree";
        let text = encode(r"h\1", &dp, &agent(vec![(1, router.into())]));
        for want in [
            r#"dvr_snat_flows{host="h\\1",router="r \"one\"\\two\nthree"} 2"#,
            r#"dvr_snat_exhausted_total{host="h\\1",router="r \"one\"\\two\nthree"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == want), "no line {want} in\n{text}");
        }
        // One sample per line: the newline in the name did not break its line.
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("dvr_")),
            "{text}"
        );
    }
}
