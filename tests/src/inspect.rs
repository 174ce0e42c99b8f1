//! The agent's inspection surfaces in the test bed: `dvrctl trace`, `dvrctl monitor` and the
//! Prometheus endpoint (`dvr-agent --metrics ADDR`).
//!
//! - [`Cloud::trace`] runs `dvrctl --host H trace ... --json` for a [`TraceProbe`] and returns
//!   the [`Trace`]; [`Trace::output_kind`] parses its output (`tap#N`, `tunnel <ip> vni <v>`,
//!   `ext#N`, ...).
//! - [`Cloud::spawn_monitor`] starts `dvrctl --host H monitor --json` in the background;
//!   [`parse_monitor`] reads its [`DropEvent`]s. [`Cloud::drain_monitor`] consumes events
//!   pending in the ring buffer first (the buffer is pinned: events wait there for the next
//!   reader).
//! - [`Cloud::scrape_metrics`] fetches `/metrics` with python's urllib inside the host's
//!   namespace (where the agent listens) and parses it into [`Metrics`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde::Deserialize;

use crate::cloud::{Cloud, scapy_python};
use crate::cmd::{exec_with_deadline, text};
use crate::external::Bg;

/// A packet for `dvrctl trace`.
#[derive(Clone, Debug)]
pub struct TraceProbe {
    pub iface: String,
    /// IPv4 or IPv6 (both of one family).
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    /// "tcp", "udp" or "icmp" (ICMPv6 echo for IPv6 addresses).
    pub proto: String,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
    /// Tunnel metadata: (VNI, remote tunnel IP).
    pub tunnel: Option<(u32, Ipv4Addr)>,
    /// IP length and the DF flag (`--len`, `--df`), held against each network's MTU.
    pub size: Option<(u16, bool)>,
}

impl TraceProbe {
    /// A UDP packet `src:sport -> dst:dport` arriving on `iface`.
    pub fn udp(
        iface: &str,
        src: impl Into<std::net::IpAddr>,
        sport: u16,
        dst: impl Into<std::net::IpAddr>,
        dport: u16,
    ) -> TraceProbe {
        TraceProbe {
            iface: iface.into(),
            src: src.into(),
            dst: dst.into(),
            proto: "udp".into(),
            sport: Some(sport),
            dport: Some(dport),
            src_mac: None,
            dst_mac: None,
            tunnel: None,
            size: None,
        }
    }

    /// Sent to `dst` (a gateway MAC: routed), from the tap's port MAC.
    pub fn dst_mac(mut self, dst: &str) -> TraceProbe {
        self.dst_mac = Some(dst.into());
        self
    }

    /// `len` bytes of IP, DF set when `df`.
    pub fn size(mut self, len: u16, df: bool) -> TraceProbe {
        self.size = Some((len, df));
        self
    }

    pub fn macs(mut self, src: &str, dst: &str) -> TraceProbe {
        self.src_mac = Some(src.into());
        self.dst_mac = Some(dst.into());
        self
    }

    /// Arriving from the tunnel with `vni` from host `remote`.
    pub fn tunnel(mut self, vni: u32, remote: Ipv4Addr) -> TraceProbe {
        self.tunnel = Some((vni, remote));
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a = self.cli_args();
        a.push("--json".into());
        a
    }

    /// The `dvrctl` arguments of this probe (`trace ...`), for its text output.
    pub fn cli_args(&self) -> Vec<String> {
        let mut a = vec![
            "trace".to_string(),
            "--in".into(),
            self.iface.clone(),
            "--src".into(),
            self.src.to_string(),
            "--dst".into(),
            self.dst.to_string(),
            "--proto".into(),
            self.proto.clone(),
        ];
        if let Some(p) = self.sport {
            a.extend(["--sport".into(), p.to_string()]);
        }
        if let Some(p) = self.dport {
            a.extend(["--dport".into(), p.to_string()]);
        }
        if let Some(m) = &self.src_mac {
            a.extend(["--src-mac".into(), m.clone()]);
        }
        if let Some(m) = &self.dst_mac {
            a.extend(["--dst-mac".into(), m.clone()]);
        }
        if let Some((vni, remote)) = self.tunnel {
            a.extend([
                "--vni".into(),
                vni.to_string(),
                "--remote".into(),
                remote.to_string(),
            ]);
        }
        if let Some((len, df)) = self.size {
            a.extend(["--len".into(), len.to_string()]);
            if df {
                a.push("--df".into());
            }
        }
        a
    }
}

/// One step of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TraceStep {
    pub stage: String,
    pub what: String,
}

/// `dvrctl trace --json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Trace {
    pub steps: Vec<TraceStep>,
    /// The counter the packet would bump.
    pub verdict: String,
    /// Counters it would bump besides (VXLAN done in BPF).
    #[serde(default)]
    pub also: Vec<String>,
    pub drop: bool,
    pub output: Option<String>,
    pub out_src: Option<String>,
    pub out_dst: Option<String>,
    pub out_src_mac: Option<String>,
    pub out_dst_mac: Option<String>,
}

/// Where a traced packet leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Tap(u64),
    Tunnel { remote: Ipv4Addr, vni: u32 },
    Ext(u64),
    Flood,
    HostStack,
}

impl Trace {
    /// [`Trace::output`] parsed; `None` for a drop.
    pub fn output_kind(&self) -> Result<Option<OutputKind>> {
        let Some(o) = self.output.as_deref() else {
            return Ok(None);
        };
        let bad = || anyhow!("unexpected trace output {o:?}");
        Ok(Some(if let Some(n) = o.strip_prefix("tap#") {
            OutputKind::Tap(n.parse().map_err(|_| bad())?)
        } else if let Some(n) = o.strip_prefix("ext#") {
            OutputKind::Ext(n.parse().map_err(|_| bad())?)
        } else if let Some(rest) = o.strip_prefix("tunnel ") {
            let (ip, vni) = rest.split_once(" vni ").ok_or_else(bad)?;
            OutputKind::Tunnel {
                remote: ip.parse().map_err(|_| bad())?,
                vni: vni.parse().map_err(|_| bad())?,
            }
        } else if o == "flood" {
            OutputKind::Flood
        } else if o == "host stack" {
            OutputKind::HostStack
        } else {
            return Err(bad());
        }))
    }

    /// The steps, one per line (for failure messages).
    pub fn render(&self) -> String {
        let mut s: String = self
            .steps
            .iter()
            .map(|st| format!("  {:<14} {}\n", st.stage, st.what))
            .collect();
        s.push_str(&format!(
            "  => {} via {:?}: {:?} -> {:?} [{:?} -> {:?}]",
            self.verdict,
            self.output,
            self.out_src,
            self.out_dst,
            self.out_src_mac,
            self.out_dst_mac
        ));
        s
    }
}

/// One line of `dvrctl monitor --json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DropEvent {
    pub ts_ns: u64,
    pub ifindex: u64,
    pub reason: String,
    pub describe: String,
    pub len: u64,
    pub ethertype: String,
    pub proto: u8,
    pub src: Option<std::net::IpAddr>,
    pub dst: Option<std::net::IpAddr>,
    pub src_mac: String,
    pub dst_mac: String,
}

/// The events of `dvrctl monitor --json` output (one JSON object per line).
pub fn parse_monitor(out: &str) -> Result<Vec<DropEvent>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("monitor line {l:?}")))
        .collect()
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses the text format (`name{a="b",c="d"} value`; `#` lines skipped).
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| anyhow!("metrics line without value: {line:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("metrics value in {line:?}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .ok_or_else(|| anyhow!("unterminated labels in {line:?}"))?;
                    let mut labels = BTreeMap::new();
                    for pair in body.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once('=')
                            .ok_or_else(|| anyhow!("bad label {pair:?} in {line:?}"))?;
                        labels.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                    (n.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Ok(Metrics {
            samples,
            text: text.to_string(),
        })
    }

    /// The samples of `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the single sample of `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        match self.find(name, labels).as_slice() {
            [s] => Ok(s.value),
            [] => Err(anyhow!(
                "no sample {name}{labels:?} in /metrics:\n{}",
                self.text
            )),
            more => Err(anyhow!("{} samples {name}{labels:?}", more.len())),
        }
    }
}

const SCRAPE: &str = r#"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
"#;

impl Cloud {
    /// `dvrctl --host H trace ... --json`.
    pub fn trace(&self, host: &str, probe: &TraceProbe) -> Result<Trace> {
        let args = probe.args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = self.dvrctl_json(host, &refs)?;
        serde_json::from_value(v.clone()).with_context(|| format!("trace --json: {v}"))
    }

    /// Starts `dvrctl --host H monitor --json [--count N] --timeout SECS` in the background
    /// (from the test's namespace: dvrctl reads the pins).
    pub fn spawn_monitor(
        &mut self,
        host: &str,
        count: Option<u32>,
        timeout: Duration,
    ) -> Result<Bg> {
        let bins = match &self.bins {
            Some(b) => b.clone(),
            None => crate::cloud::locate_bins()?,
        };
        let name = self.host(host)?.agent_name.clone();
        self.files_seq += 1;
        let out = self.dir.join(format!("monitor-{}.stdout", self.files_seq));
        let err = self.dir.join(format!("monitor-{}.stderr", self.files_seq));
        let mut c = Command::new(&bins.dvrctl);
        c.arg("--host")
            .arg(&name)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(["monitor", "--json", "--timeout"])
            .arg(format!("{:.3}", timeout.as_secs_f64()));
        if let Some(n) = count {
            c.arg("--count").arg(n.to_string());
        }
        Bg::start(c, format!("dvrctl --host {name} monitor"), out, err)
    }

    /// Reads and discards the drop events waiting in the ring buffer of `host` (reading for
    /// `window`); returns them.
    pub fn drain_monitor(&self, host: &str, window: Duration) -> Result<Vec<DropEvent>> {
        let out = self.dvrctl(
            host,
            &[
                "monitor",
                "--json",
                "--timeout",
                &format!("{:.3}", window.as_secs_f64()),
            ],
        )?;
        ensure!(
            out.status.success(),
            "dvrctl monitor of {host} failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        parse_monitor(&crate::cmd::stdout(&out))
    }

    /// GET `http://ADDR/metrics` inside the namespace of `host`.
    pub fn scrape_metrics(&self, host: &str, addr: SocketAddrV4) -> Result<Metrics> {
        let ns = self.host(host)?.ns.clone();
        let py = scapy_python()?;
        let url = format!("http://{addr}/metrics");
        let out = exec_with_deadline(&ns, &[&py, "-c", SCRAPE, &url], Duration::from_secs(15))?;
        ensure!(
            out.status.success(),
            "scraping {url} in {host} failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        Metrics::parse(&crate::cmd::stdout(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics() -> Result<()> {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE dvr_packets_total counter\n\
             dvr_packets_total{host=\"h1\",kind=\"forward\",reason=\"routed\"} 12\n\
             dvr_reconcile_seconds_last{host=\"h1\"} 0.0017\n\
             plain 3\n",
        )?;
        assert_eq!(m.value("dvr_packets_total", &[("reason", "routed")])?, 12.0);
        assert_eq!(m.value("dvr_reconcile_seconds_last", &[])?, 0.0017);
        assert_eq!(m.value("plain", &[])?, 3.0);
        assert!(m.value("missing", &[]).is_err());
        Ok(())
    }

    #[test]
    fn parses_trace_outputs() -> Result<()> {
        let mut t = Trace {
            steps: Vec::new(),
            verdict: "routed".into(),
            also: Vec::new(),
            drop: false,
            output: Some("tunnel 192.0.2.12 vni 101".into()),
            out_src: None,
            out_dst: None,
            out_src_mac: None,
            out_dst_mac: None,
        };
        assert_eq!(
            t.output_kind()?,
            Some(OutputKind::Tunnel {
                remote: Ipv4Addr::new(192, 0, 2, 12),
                vni: 101
            })
        );
        t.output = Some("tap#7".into());
        assert_eq!(t.output_kind()?, Some(OutputKind::Tap(7)));
        t.output = Some("ext#3".into());
        assert_eq!(t.output_kind()?, Some(OutputKind::Ext(3)));
        t.output = None;
        assert_eq!(t.output_kind()?, None);
        t.output = Some("somewhere".into());
        assert!(t.output_kind().is_err());
        Ok(())
    }

    #[test]
    fn parses_monitor_lines() -> Result<()> {
        let ev = parse_monitor(
            "{\"ts_ns\":1,\"ifindex\":4,\"reason\":\"drop_spoof_ip\",\"describe\":\"d\",\"len\":60,\
             \"ethertype\":\"0x0800\",\"proto\":17,\"src\":\"10.0.0.9\",\"dst\":\"10.0.0.1\",\
             \"src_mac\":\"fa:16:3e:00:00:01\",\"dst_mac\":\"fa:16:3e:00:00:02\"}\n",
        )?;
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].src, Some(Ipv4Addr::new(10, 0, 0, 9).into()));
        Ok(())
    }
}
