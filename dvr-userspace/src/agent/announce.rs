//! What the agent announces on the external network: gratuitous ARP for the floating IPs
//! (and HA router addresses) this host starts serving, so the external network learns this
//! host's MAC for them at once, and ARP requests for the external gateways, whose MACs the
//! datapath learns from the replies.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{arp, compile::External, maps::HostMaps};

/// Gratuitous ARPs sent for a floating IP this host starts serving.
const GARP_COUNT: u8 = 3;
/// Gateway ARP requests: quickly while its MAC is unknown, then as a slow refresh that
/// notices a changed MAC even if the gateway never announces it.
const PROBE_UNRESOLVED: Duration = Duration::from_secs(1);
const PROBE_REFRESH: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Announcer {
    /// Address -> gratuitous ARPs still to send.
    garp_due: BTreeMap<Ipv4Addr, u8>,
    last_probe: HashMap<Ipv4Addr, Instant>,
}

impl Announcer {
    /// After an apply: announce the floating IPs in `served` that were not in `served_before`
    /// and the HA router addresses in `announced` whose role just moved here (not among
    /// `snat_ips_before`, network order); forget pending announcements of what is no longer
    /// served. Without an external interface nothing new is announced.
    pub fn plan(
        &mut self,
        served_before: &BTreeMap<Ipv4Addr, Ipv4Addr>,
        served: &BTreeMap<Ipv4Addr, Ipv4Addr>,
        snat_ips_before: &BTreeSet<u32>,
        announced: &BTreeSet<Ipv4Addr>,
        has_external: bool,
    ) {
        for fip in served.keys().filter(|f| !served_before.contains_key(f)) {
            self.garp_due.insert(*fip, GARP_COUNT);
        }
        if has_external {
            for ip in announced
                .iter()
                .filter(|ip| !snat_ips_before.contains(&u32::from_ne_bytes(ip.octets())))
            {
                self.garp_due.insert(*ip, GARP_COUNT);
            }
        }
        self.garp_due
            .retain(|f, _| served.contains_key(f) || announced.contains(f));
    }

    /// Send what is due out of the external interface `ifx` (MAC `mac`).
    pub fn send(&mut self, ifx: u32, mac: [u8; 6], external: Option<&External>, maps: &HostMaps) {
        for (fip, left) in self.garp_due.iter_mut() {
            if let Err(e) = arp::send(ifx, &arp::request_frame(mac, *fip, *fip)) {
                warn!(%fip, error = %e, "gratuitous ARP failed");
            }
            *left -= 1;
        }
        self.garp_due.retain(|_, left| *left > 0);
        let Some(ext) = external else { return };
        let sender = ext.fg_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for gw in &ext.gateways {
            let learned = maps
                .ext_neigh
                .get(&u32::from_ne_bytes(gw.octets()))
                .ok()
                .flatten()
                .is_some_and(|n| n.learned != 0);
            let every = if learned {
                PROBE_REFRESH
            } else {
                PROBE_UNRESOLVED
            };
            if self.last_probe.get(gw).is_some_and(|t| t.elapsed() < every) {
                continue;
            }
            self.last_probe.insert(*gw, Instant::now());
            if let Err(e) = arp::send(ifx, &arp::request_frame(mac, sender, *gw)) {
                warn!(gateway = %gw, error = %e, "ARP request for the external gateway failed");
            }
        }
    }
}
