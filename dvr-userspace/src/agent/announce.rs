//! What the agent announces on the external network: gratuitous ARP for the floating IPs
//! (and HA router addresses) this host starts serving, so the external network learns this
//! host's MAC for them at once, and ARP requests for the external gateways, whose MACs the
//! datapath learns from the replies. For IPv6 north-south the same with neighbour
//! discovery: solicitations for the routers' IPv6 next hops from their external IPv6
//! addresses, and unsolicited advertisements of an HA router's external IPv6 address when
//! its role moves here.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use dvr_common::{
    ip6::{Addr6, Snat6},
    snat::{SNAT_HA, SnatRouter},
};
use tracing::warn;

use crate::{arp, compile::External, maps::HostMaps, ndp};

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
    /// IPv6 next hop -> the router external address that solicits it.
    probes6: BTreeMap<Ipv6Addr, Ipv6Addr>,
    last_probe6: HashMap<Ipv6Addr, Instant>,
    /// External IPv6 address -> unsolicited advertisements still to send.
    na_due: BTreeMap<Ipv6Addr, u8>,
    /// The external IPv6 addresses served after the last apply.
    snat_ips6: BTreeSet<Ipv6Addr>,
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

    /// After an apply, for IPv6: solicit the next hops of `snat6`, and announce the HA
    /// router addresses of `snat_ips6` that were not served before.
    pub fn plan6(
        &mut self,
        snat6: &BTreeMap<u32, Snat6>,
        snat_ips6: &BTreeMap<Addr6, SnatRouter>,
        has_external: bool,
    ) {
        self.probes6 = snat6
            .values()
            .map(|s| (Ipv6Addr::from(s.next_hop), Ipv6Addr::from(s.ext_ip)))
            .collect();
        self.last_probe6
            .retain(|hop, _| self.probes6.contains_key(hop));
        let served: BTreeSet<Ipv6Addr> = snat_ips6.keys().map(|a| Ipv6Addr::from(a.ip)).collect();
        if has_external {
            for (a, _) in snat_ips6.iter().filter(|(_, r)| r.flags & SNAT_HA != 0) {
                let ip = Ipv6Addr::from(a.ip);
                if !self.snat_ips6.contains(&ip) {
                    self.na_due.insert(ip, GARP_COUNT);
                }
            }
        }
        self.na_due.retain(|ip, _| served.contains(ip));
        self.snat_ips6 = served;
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
        self.send6(ifx, mac, maps);
        let Some(ext) = external else { return };
        let sender = ext.fg_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for gw in &ext.gateways {
            let learned = maps
                .ext_neigh
                .get(&u32::from_ne_bytes(gw.octets()))
                .ok()
                .flatten()
                .is_some_and(|n| n.learned != 0);
            if !probe_due(&mut self.last_probe, *gw, learned) {
                continue;
            }
            if let Err(e) = arp::send(ifx, &arp::request_frame(mac, sender, *gw)) {
                warn!(gateway = %gw, error = %e, "ARP request for the external gateway failed");
            }
        }
    }
}

impl Announcer {
    /// The IPv6 part of [`Announcer::send`].
    fn send6(&mut self, ifx: u32, mac: [u8; 6], maps: &HostMaps) {
        for (ip, left) in self.na_due.iter_mut() {
            let frame = ndp::unsolicited_na_frame(mac, *ip);
            if let Err(e) = arp::send_frame(ifx, ndp::ETH_P_IPV6, &frame) {
                warn!(%ip, error = %e, "unsolicited neighbour advertisement failed");
            }
            *left -= 1;
        }
        self.na_due.retain(|_, left| *left > 0);
        for (hop, src) in &self.probes6 {
            let learned = maps
                .ext_neigh6
                .get(&Addr6 { ip: hop.octets() })
                .ok()
                .flatten()
                .is_some_and(|n| n.learned != 0);
            if !probe_due(&mut self.last_probe6, *hop, learned) {
                continue;
            }
            let frame = ndp::ns_frame(mac, *src, *hop);
            if let Err(e) = arp::send_frame(ifx, ndp::ETH_P_IPV6, &frame) {
                warn!(next_hop = %hop, error = %e, "neighbour solicitation for the IPv6 next hop failed");
            }
        }
    }
}

/// Whether the next hop `hop` is due a probe (every `PROBE_REFRESH` once `learned`, every
/// `PROBE_UNRESOLVED` before); when it is, now is its last probe.
fn probe_due<A: Hash + Eq>(last_probe: &mut HashMap<A, Instant>, hop: A, learned: bool) -> bool {
    let every = if learned {
        PROBE_REFRESH
    } else {
        PROBE_UNRESOLVED
    };
    if last_probe.get(&hop).is_some_and(|t| t.elapsed() < every) {
        return false;
    }
    last_probe.insert(hop, Instant::now());
    true
}
