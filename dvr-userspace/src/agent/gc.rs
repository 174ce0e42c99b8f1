//! The agent's periodic conntrack work: expire idle flows and purge flows this host no
//! longer owns ([`conntrack::sweep`]), and log routers whose SNAT refused new flows for lack
//! of a free port.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    conntrack::{self, Owned, Timeouts},
    maps::{HostMaps, MapsError},
};

pub struct Gc {
    last: Instant,
    /// Per-router count of flows refused for lack of a port, as last logged.
    exhausted_seen: BTreeMap<u32, u64>,
}

impl Gc {
    pub fn new() -> Self {
        Gc {
            last: Instant::now(),
            exhausted_seen: BTreeMap::new(),
        }
    }

    /// True (once) when `interval` passed since the last run.
    pub fn due(&mut self, interval: Duration) -> bool {
        if self.last.elapsed() < interval {
            return false;
        }
        self.last = Instant::now();
        true
    }

    /// One GC pass: report SNAT exhaustion (router names from `snat_names`), then sweep.
    pub fn run(
        &mut self,
        maps: &mut HostMaps,
        timeouts: &Timeouts,
        owned: &Owned,
        snat_names: &BTreeMap<u32, String>,
    ) -> Result<(), MapsError> {
        self.report_exhaustion(maps, snat_names)?;
        let swept = conntrack::sweep(maps, timeouts, owned)?;
        if swept.expired + swept.purged + swept.sg_purged > 0 {
            info!(
                expired = swept.expired,
                purged = swept.purged,
                sg_purged = swept.sg_purged,
                "conntrack swept"
            );
        }
        Ok(())
    }

    /// Log routers whose SNAT refused new flows since the last look.
    fn report_exhaustion(
        &mut self,
        maps: &HostMaps,
        snat_names: &BTreeMap<u32, String>,
    ) -> Result<(), MapsError> {
        for (router, count) in maps.snat_exhausted.read()? {
            let before = self.exhausted_seen.insert(router, count).unwrap_or(0);
            if count > before {
                let name = snat_names.get(&router).map_or("?", String::as_str);
                warn!(
                    router = %name,
                    router_hash = format_args!("{router:08x}"),
                    refused = count - before,
                    total = count,
                    "SNAT port range exhausted: new flows refused (existing flows unaffected)"
                );
            }
        }
        Ok(())
    }
}
