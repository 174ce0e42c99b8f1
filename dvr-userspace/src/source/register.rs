//! Hosts that register themselves (etcd mode): `dvr-agent --host NAME --etcd URL
//! --tunnel-ip IP [--agent-mode MODE] [--external-interface IFACE]` writes its host entry,
//! `/dvr/v1/hosts/<NAME>`, itself, so nobody has to write the hosts list by hand.
//!
//! The host's DVR MAC is allocated once, cluster-wide unique, from Neutron's default base
//! `fa:16:3f` (`dvr_base_mac`): a reservation key `/dvr/v1/dvr-macs/<mac>` holding the host
//! name is created with a compare-and-swap (created only if absent), so two agents never take
//! the same MAC, and MACs of hand-written host entries are avoided too. The reservation
//! outlives the host entry: a restarted agent, or one whose entry was deleted (e.g. by a
//! `dvrctl apply` of a file without it), takes its MAC back. The agent owns its entry: when
//! the watch sees it deleted or changed, it writes it again.
//!
//! Port status (any etcd agent): `/dvr/status/<host>/<port id>` exists, under the agent's
//! lease, while the port's tap is attached and its entries are written: what Neutron's port
//! status (ACTIVE, and DOWN when the key goes) is read from.
use std::collections::HashSet;
use std::net::Ipv4Addr;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use tracing::info;

use super::error::SourceError;
use super::kv::PREFIX;
use crate::model::{Mac, check_ifname, check_tunnel_ip, format_mac, parse_mac};

/// Reservation keys of DVR MACs: `<prefix><mac>` -> host name.
pub const MAC_PREFIX: &str = "/dvr/v1/dvr-macs/";
/// Neutron's default `dvr_base_mac` (its first three bytes).
pub const DVR_BASE: [u8; 3] = [0xfa, 0x16, 0x3f];

/// What an agent says of its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `dvr`, `dvr_snat` or `dvr_no_external`.
    pub agent_mode: String,
    pub tunnel_ip: Ipv4Addr,
    pub external_interface: Option<String>,
}

impl Registration {
    /// Checks the flags as the state's validation would check the entry.
    pub fn new(
        agent_mode: &str,
        tunnel_ip: Ipv4Addr,
        external_interface: Option<&str>,
    ) -> Result<Self, String> {
        if !matches!(agent_mode, "dvr" | "dvr_snat" | "dvr_no_external") {
            return Err(format!(
                "--agent-mode {agent_mode:?}: expected dvr, dvr_snat or dvr_no_external"
            ));
        }
        check_tunnel_ip(tunnel_ip).map_err(|e| format!("--tunnel-ip: {e}"))?;
        if let Some(i) = external_interface {
            check_ifname(i).map_err(|e| format!("--external-interface {i:?}: {e}"))?;
        }
        Ok(Registration {
            agent_mode: agent_mode.into(),
            tunnel_ip,
            external_interface: external_interface.map(str::to_string),
        })
    }

    /// The host entry, as `dvrctl apply` would write it.
    pub fn entry(&self, host: &str, dvr_mac: &Mac) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": host,
            "agent_mode": self.agent_mode,
            "tunnel_ip": self.tunnel_ip.to_string(),
            "dvr_mac": format_mac(dvr_mac),
        });
        if let Some(i) = &self.external_interface {
            v["external_interface"] = i.clone().into();
        }
        v
    }
}

/// Port status keys: `<prefix><host>/<port id>`, written by the host's agent under its
/// lease while the port's tap is attached and its entries are written (so they go with the
/// agent). Outside the agents' watched prefix: no agent reads another's.
pub const STATUS_PREFIX: &str = "/dvr/status/";

/// The status key of `port` on `host`.
pub fn status_key(host: &str, port: &str) -> String {
    format!("{STATUS_PREFIX}{host}/{port}")
}

/// The status value of a port that is up on `host`.
pub fn status_value(host: &str, port: &str) -> String {
    serde_json::json!({"host": host, "port_id": port, "status": "ACTIVE"}).to_string()
}

/// The key of a host's entry.
pub fn host_key(host: &str) -> String {
    format!("{PREFIX}hosts/{host}")
}

/// The DVR MACs a host tries, in order: `fa:16:3f` and 24 bits starting at a hash of its
/// name (so hosts rarely contend for the same one), all of them in the end.
pub fn candidates(host: &str) -> impl Iterator<Item = Mac> {
    let start = crate::compile::fnv1a32(host) & 0xff_ffff;
    (0..0x100_0000u32)
        .map(move |i| (start.wrapping_add(i)) & 0xff_ffff)
        .filter(|&n| n != 0 && n != 0xff_ffff)
        .map(|n| {
            let [_, a, b, c] = n.to_be_bytes();
            [DVR_BASE[0], DVR_BASE[1], DVR_BASE[2], a, b, c]
        })
}

fn err(url: &str) -> impl Fn(etcd_client::Error) -> SourceError + '_ {
    move |e| SourceError::Etcd {
        url: url.into(),
        msg: format!("registering the host: {e}"),
    }
}

/// Write `host`'s entry (allocating its DVR MAC if it has none yet); returns the entry as
/// written.
pub async fn register(
    client: &mut Client,
    url: &str,
    host: &str,
    reg: &Registration,
) -> Result<String, SourceError> {
    let mac = dvr_mac(client, url, host).await?;
    let entry = reg.entry(host, &mac).to_string();
    let key = host_key(host);
    let now = client.get(key.as_str(), None).await.map_err(err(url))?;
    let same = now.kvs().first().and_then(|kv| kv.value_str().ok()) == Some(entry.as_str());
    if !same {
        client
            .put(key.as_str(), entry.as_str(), None)
            .await
            .map_err(err(url))?;
        info!(host, dvr_mac = %format_mac(&mac), tunnel_ip = %reg.tunnel_ip, mode = %reg.agent_mode, "registered this host in etcd");
    }
    Ok(entry)
}

/// The host's DVR MAC: the one reserved for it, else a new one reserved now.
async fn dvr_mac(client: &mut Client, url: &str, host: &str) -> Result<Mac, SourceError> {
    let reserved = client
        .get(MAC_PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(err(url))?;
    let mut taken: HashSet<Mac> = HashSet::new();
    for kv in reserved.kvs() {
        let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) else {
            continue;
        };
        let Some(mac) = parse_mac(k.trim_start_matches(MAC_PREFIX)) else {
            continue;
        };
        if v == host {
            return Ok(mac);
        }
        taken.insert(mac);
    }
    // MACs of host entries written by hand (no reservation) are taken too.
    let hosts = client
        .get(
            format!("{PREFIX}hosts/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(err(url))?;
    for kv in hosts.kvs() {
        let mac = kv
            .value_str()
            .ok()
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .and_then(|v| v.get("dvr_mac")?.as_str().and_then(parse_mac));
        taken.extend(mac);
    }
    for mac in candidates(host).filter(|m| !taken.contains(m)) {
        let key = format!("{MAC_PREFIX}{}", format_mac(&mac));
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), host, None)]);
        if client.txn(txn).await.map_err(err(url))?.succeeded() {
            return Ok(mac);
        }
    }
    Err(SourceError::Etcd {
        url: url.into(),
        msg: format!("registering host {host}: every DVR MAC under fa:16:3f is taken"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_as_the_state_would_be() {
        let ip = Ipv4Addr::new(192, 0, 2, 7);
        assert!(Registration::new("dvr_snat", ip, Some("eth1")).is_ok());
        let e = Registration::new("legacy", ip, None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("--agent-mode \"legacy\""), "{e}");
        let e = Registration::new("dvr", Ipv4Addr::new(224, 0, 0, 1), None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("not a unicast address"), "{e}");
        let e = Registration::new("dvr", ip, Some("a/b"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("--external-interface"), "{e}");
    }

    #[test]
    fn the_entry_is_what_the_state_reads() -> Result<(), String> {
        let reg = Registration::new("dvr_snat", Ipv4Addr::new(192, 0, 2, 7), Some("eth1"))?;
        let v = serde_json::json!({"hosts": [reg.entry("h7", &[0xfa, 0x16, 0x3f, 1, 2, 3])]});
        let state = crate::model::State::from_json(&v.to_string()).map_err(|e| e.to_string())?;
        let h = state.host("h7").ok_or("no host h7")?;
        assert_eq!(h.dvr_mac, [0xfa, 0x16, 0x3f, 1, 2, 3]);
        assert_eq!(h.external_interface.as_deref(), Some("eth1"));
        Ok(())
    }

    #[test]
    fn candidates_are_unicast_under_the_base_and_start_apart() {
        let a: Vec<Mac> = candidates("compute-1").take(3).collect();
        let b: Vec<Mac> = candidates("compute-2").take(3).collect();
        assert_ne!(a[0], b[0]);
        for m in a.iter().chain(&b) {
            assert_eq!(m[..3], DVR_BASE);
            assert_eq!(m[0] & 1, 0, "unicast");
        }
        assert_eq!(candidates("x").count(), 0xff_ffff - 1);
    }
}
