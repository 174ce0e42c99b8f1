//! Unsolicited router advertisements (what radvd does in Neutron's router namespace): out
//! of every tap whose network has an advertisement (`DVR_RA`, compiled by `ndp`), at once
//! when the tap or its advertisement is new or changed (three times, RFC 4861 6.2.4's
//! initial advertisements, so a VM booting while the first one is lost still configures
//! quickly), then at a random interval between the minimum and maximum (RFC 4861 6.2.1:
//! randomised so that routers do not synchronise). The datapath answers router
//! solicitations itself; this is for VMs that do not solicit, and for changes (a new
//! prefix, a new MTU) to reach VMs that already configured.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use dvr_common::{ip6::RaFrame, port::LocalPort};
use tracing::warn;

use crate::{arp, ndp::ETH_P_IPV6};

/// Advertisements sent at the short initial interval after a tap or its advertisement
/// changes (MAX_INITIAL_RTR_ADVERTISEMENTS).
const INITIAL_COUNT: u8 = 3;
/// The short initial interval (RFC 4861's MAX_INITIAL_RTR_ADVERT_INTERVAL is 16 s; a
/// router that just came up sends sooner in practice).
const INITIAL_INTERVAL: Duration = Duration::from_secs(2);

/// MinRtrAdvInterval and MaxRtrAdvInterval (Neutron's defaults: 30 s and 100 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaInterval {
    pub min: Duration,
    pub max: Duration,
}

impl Default for RaInterval {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(30),
            max: Duration::from_secs(100),
        }
    }
}

struct Due {
    frame: RaFrame,
    at: Instant,
    initial_left: u8,
}

#[derive(Default)]
pub struct Advertiser {
    /// Tap ifindex -> its advertisement and when it is due next.
    taps: BTreeMap<u32, Due>,
    /// State of the jitter generator (xorshift): the interval need not be unpredictable,
    /// only spread out.
    seed: u64,
}

impl Advertiser {
    /// After an apply: the taps of `local_ports` whose network has an advertisement in
    /// `ra` get it; new or changed ones are due at once; gone ones are forgotten.
    pub fn plan(&mut self, local_ports: &BTreeMap<u32, LocalPort>, ra: &BTreeMap<u32, RaFrame>) {
        let now = Instant::now();
        let wanted: BTreeMap<u32, RaFrame> = local_ports
            .iter()
            .filter_map(|(ifx, p)| ra.get(&p.vni).map(|f| (*ifx, *f)))
            .collect();
        self.taps.retain(|ifx, _| wanted.contains_key(ifx));
        for (ifx, frame) in wanted {
            match self.taps.get_mut(&ifx) {
                Some(d) if d.frame == frame => {}
                Some(d) => {
                    *d = Due {
                        frame,
                        at: now,
                        initial_left: INITIAL_COUNT,
                    }
                }
                None => {
                    self.taps.insert(
                        ifx,
                        Due {
                            frame,
                            at: now,
                            initial_left: INITIAL_COUNT,
                        },
                    );
                }
            }
        }
    }

    /// Send what is due (called from the agent's periodic work); returns how many were
    /// sent.
    pub fn send(&mut self, interval: RaInterval) -> usize {
        let now = Instant::now();
        let mut sent = 0;
        let mut seed = self.seed;
        for (ifx, d) in self.taps.iter_mut().filter(|(_, d)| d.at <= now) {
            let len = (d.frame.len as usize).min(d.frame.frame.len());
            match arp::send_frame(*ifx, ETH_P_IPV6, &d.frame.frame[..len]) {
                Ok(()) => sent += 1,
                Err(e) => warn!(ifindex = ifx, error = %e, "router advertisement not sent"),
            }
            let next = if d.initial_left > 1 {
                d.initial_left -= 1;
                INITIAL_INTERVAL.min(interval.max)
            } else {
                d.initial_left = 0;
                seed = xorshift(seed ^ u64::from(*ifx));
                jitter(interval, seed)
            };
            d.at = now + next;
        }
        self.seed = seed;
        sent
    }
}

fn xorshift(mut x: u64) -> u64 {
    if x == 0 {
        x = 0x9e37_79b9_7f4a_7c15;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A duration in `[min, max]` picked by `r`.
fn jitter(i: RaInterval, r: u64) -> Duration {
    let span = i.max.saturating_sub(i.min).as_millis() as u64;
    i.min + Duration::from_millis(if span == 0 { 0 } else { r % (span + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(vni: u32) -> LocalPort {
        LocalPort {
            vni,
            ..Default::default()
        }
    }

    fn frame(b: u8) -> RaFrame {
        let mut f = RaFrame {
            len: 0,
            ..Default::default()
        };
        f.frame[0] = b;
        f
    }

    #[test]
    fn taps_of_advertised_networks_are_due_at_once_and_changes_restart_them() {
        let mut a = Advertiser::default();
        let ports = BTreeMap::from([(7, port(100)), (8, port(200))]);
        a.plan(&ports, &BTreeMap::from([(100, frame(1))]));
        assert_eq!(a.taps.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(a.taps[&7].initial_left, INITIAL_COUNT);
        if let Some(d) = a.taps.get_mut(&7) {
            d.initial_left = 0;
        }
        // The same frame again: nothing restarts.
        a.plan(&ports, &BTreeMap::from([(100, frame(1))]));
        assert_eq!(a.taps[&7].initial_left, 0);
        // A changed frame is due again, at once.
        a.plan(&ports, &BTreeMap::from([(100, frame(2)), (200, frame(3))]));
        assert_eq!(a.taps[&7].initial_left, INITIAL_COUNT);
        assert!(a.taps[&8].at <= Instant::now());
        // A network without an advertisement any more: forgotten.
        a.plan(&ports, &BTreeMap::from([(200, frame(3))]));
        assert_eq!(a.taps.keys().copied().collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn jitter_stays_within_the_interval() {
        let i = RaInterval::default();
        let mut r = 1;
        for _ in 0..1000 {
            r = xorshift(r);
            let d = jitter(i, r);
            assert!(d >= i.min && d <= i.max, "{d:?}");
        }
        let fixed = RaInterval {
            min: Duration::from_secs(5),
            max: Duration::from_secs(5),
        };
        assert_eq!(jitter(fixed, 12345), Duration::from_secs(5));
    }
}
