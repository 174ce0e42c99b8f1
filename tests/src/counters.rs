//! Counter snapshots for deltas, and underlay sentinels for negative assertions.
//!
//! Tests assert how much a datapath counter (`dvrctl show stats --json`) grew during some
//! traffic: [`Counters::take`] before, [`Counters::delta`] / [`Counters::wait_delta`] after.
//! Negative assertions on the underlay use a sentinel instead of a sleep: after the traffic
//! that must not appear, a plain echo between two hosts' tunnel IPs is sent and awaited in the
//! capture ([`Cloud::wait_underlay_sentinel`]); [`not_sentinel`] then filters it out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Result;
use dvr_common::stats::Stat;

use crate::capture::{Capture, Packet};
use crate::cloud::Cloud;

/// How long [`Counters::wait_delta`] waits.
pub const COUNTER_WAIT: Duration = Duration::from_secs(5);

/// Counter snapshots of some hosts, for deltas.
pub struct Counters(HashMap<String, HashMap<String, u64>>);

impl Counters {
    pub fn take(c: &Cloud, hosts: &[&str]) -> Result<Counters> {
        let mut m = HashMap::new();
        for h in hosts {
            m.insert(h.to_string(), c.stats(h)?);
        }
        Ok(Counters(m))
    }

    /// The value of `id` of `host` in the snapshot.
    pub fn base(&self, host: &str, id: Stat) -> u64 {
        self.0
            .get(host)
            .and_then(|s| s.get(id.as_str()))
            .copied()
            .unwrap_or(0)
    }

    /// How much `id` of `host` grew since the snapshot.
    pub fn delta(&self, c: &Cloud, host: &str, id: Stat) -> Result<u64> {
        Ok(c.stat(host, id.as_str())?
            .saturating_sub(self.base(host, id)))
    }

    /// Every counter of `host` that grew since the snapshot, with its growth.
    pub fn moved(&self, c: &Cloud, host: &str) -> Result<BTreeMap<String, u64>> {
        let base = self.0.get(host);
        Ok(c.stats(host)?
            .into_iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(base.and_then(|b| b.get(&k)).copied().unwrap_or(0));
                (d > 0).then_some((k, d))
            })
            .collect())
    }

    /// Waits up to [`COUNTER_WAIT`] until `id` of `host` grew by at least `n`; returns the
    /// growth.
    pub fn wait_delta(&self, c: &Cloud, host: &str, id: Stat, n: u64) -> Result<u64> {
        let v = c.wait_stat_at_least(host, id.as_str(), self.base(host, id) + n, COUNTER_WAIT)?;
        Ok(v - self.base(host, id))
    }
}

/// Packets on the underlay that are not part of a sentinel exchange between tunnel IPs.
pub fn not_sentinel(packets: &[Packet]) -> Vec<&Packet> {
    packets
        .iter()
        .filter(|p| {
            p.is_vxlan()
                || !(p.contains("192.0.2.") && (p.contains("ICMP echo") || p.contains("ARP")))
        })
        .collect()
}

impl Cloud {
    /// Sends an underlay sentinel from `from` to `to` ([`Cloud::underlay_sentinel`]) and waits
    /// until `cap` (an underlay capture) has seen it.
    pub fn wait_underlay_sentinel(&self, cap: &Capture, from: &str, to: &str) -> Result<()> {
        let (a, b) = self.underlay_sentinel(from, to)?;
        cap.wait_for("underlay sentinel", COUNTER_WAIT, |p| {
            !p.is_vxlan() && p.is_icmp_echo_request() && p.has_ips(&a.to_string(), &b.to_string())
        })?;
        Ok(())
    }
}
