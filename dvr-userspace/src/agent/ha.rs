//! The agent's side of SNAT high availability (docs/HA.md): it tells the election (which
//! runs in the etcd session, `source::ha`) which HA routers this host is a candidate for and
//! where the fence map is pinned, runs the conntrack sync of those roles (every candidate
//! listens on its tunnel address; the active host streams its roles' flows to the other
//! candidates), and keeps the flows a standby received as owned, so its GC keeps them.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use dvr_common::nat::{CT_PAT, CtEntry, CtKey};
use tracing::{info, warn};

use crate::{
    compile::{HaRole, HaRuntime},
    conntrack::Owned,
    ctsync,
    source::ha,
};

/// The conntrack sync threads of an HA candidate.
struct CtSync {
    listener: ctsync::Listener,
    replicator: Arc<ctsync::Replicator>,
}

impl CtSync {
    fn start(me: Ipv4Addr, pins: &Path, rate: u64) -> Result<Self, String> {
        let listener = ctsync::Listener::spawn(
            SocketAddr::from((me, ctsync::PORT)),
            ctsync::PinnedCt::open(pins)?,
        )?;
        let replicator = ctsync::Replicator::spawn(
            ctsync::PinnedCt::open(pins)?,
            ctsync::Config {
                rate_bytes_per_sec: rate,
                ..ctsync::Config::default()
            },
        )?;
        Ok(CtSync {
            listener,
            replicator: Arc::new(replicator),
        })
    }
}

/// This host's HA roles and their conntrack sync.
#[derive(Default)]
pub struct HaUpkeep {
    /// The HA routers this host is a candidate for (last compile).
    roles: Vec<HaRole>,
    /// Conntrack replication of the roles (etcd mode, candidates only).
    ct_sync: Option<CtSync>,
}

/// Where this host stands: its name and tunnel address, its pins, the sync's byte rate.
pub struct Me<'a> {
    pub host: &'a str,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub pins: &'a Path,
    pub rate: u64,
}

impl HaUpkeep {
    /// The roles of the last compile; the election (`shared`, etcd mode only) learns them
    /// with the fence map's pin.
    pub fn set_roles(&mut self, roles: Vec<HaRole>, shared: Option<&ha::Shared>, pins: &Path) {
        if let Some(shared) = shared
            && let Ok(mut sh) = shared.lock()
        {
            sh.roles = roles.clone();
            sh.fence_pin = Some(pins.join(dvr_common::maps::DVR_HA_FENCE));
        }
        self.roles = roles;
    }

    /// Start the conntrack sync on the first role, and point it at the roles active here
    /// now (`view`, the election's). Only with the election (`shared`).
    pub fn update_sync(
        &mut self,
        me: &Me<'_>,
        view: Option<&HaRuntime>,
        shared: Option<&ha::Shared>,
    ) {
        let Some(shared) = shared else { return };
        if self.roles.is_empty() {
            return;
        }
        let Some(tunnel_ip) = me.tunnel_ip else {
            return;
        };
        if self.ct_sync.is_none() {
            match CtSync::start(tunnel_ip, me.pins, me.rate) {
                Ok(s) => {
                    info!(addr = %SocketAddr::from((tunnel_ip, ctsync::PORT)), "conntrack sync listening");
                    self.ct_sync = Some(s);
                }
                Err(e) => {
                    warn!(error = %e, "conntrack sync not started; will retry");
                    return;
                }
            }
        }
        let active: BTreeSet<String> = view.map(|rt| rt.active_here.clone()).unwrap_or_default();
        let mut peers = BTreeSet::new();
        let mut ext_ips = BTreeSet::new();
        let mut central = BTreeSet::new();
        for role in self.roles.iter().filter(|r| active.contains(&r.router_id)) {
            peers.extend(
                role.candidates
                    .iter()
                    .filter(|c| c.host != me.host)
                    .map(|c| SocketAddr::from((c.tunnel_ip, ctsync::PORT))),
            );
            ext_ips.extend(role.ext_ip.map(|ip| u32::from_ne_bytes(ip.octets())));
            central.extend(
                role.central_fips
                    .keys()
                    .map(|f| u32::from_ne_bytes(f.octets())),
            );
        }
        let Some(s) = &self.ct_sync else { return };
        // Only the other candidates of this host's HA routers may stream flows to it.
        let allowed: BTreeSet<IpAddr> = self
            .roles
            .iter()
            .flat_map(|r| r.candidates.iter())
            .filter(|c| c.host != me.host)
            .map(|c| IpAddr::V4(c.tunnel_ip))
            .collect();
        s.listener.set_allowed(Some(allowed.into_iter().collect()));
        let select: ctsync::Select = Arc::new(move |_k: &CtKey, e: &CtEntry| {
            (e.kind & CT_PAT != 0 && ext_ips.contains(&e.fip_be))
                || (e.kind & CT_PAT == 0 && central.contains(&e.fip_be))
        });
        s.replicator.set(peers.into_iter().collect(), select);
        if let Ok(mut sh) = shared.lock()
            && sh.sync_to.is_none()
        {
            let r = s.replicator.clone();
            sh.sync_to = Some(Arc::new(move |ip: Ipv4Addr, timeout: Duration| {
                r.sync_to(SocketAddr::from((ip, ctsync::PORT)), timeout)
            }));
        }
    }

    /// A standby keeps the flows streamed from the active host of its HA routers.
    pub fn extend_owned(&self, owned: &mut Owned) {
        for role in &self.roles {
            owned
                .snat_ips
                .extend(role.ext_ip.map(|ip| u32::from_ne_bytes(ip.octets())));
            for (f, x) in &role.central_fips {
                owned.fips.insert(
                    u32::from_ne_bytes(f.octets()),
                    u32::from_ne_bytes(x.octets()),
                );
            }
        }
    }
}
