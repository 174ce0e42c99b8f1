//! The agent's control loop: watch the state file and the host's taps, recompile on any
//! change, reconcile the maps, attach/detach taps. Single-threaded and poll-driven (100 ms),
//! which bounds how late a change or a new tap is seen.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dvr_common::nat::{CT_PAT, CtEntry, CtKey};
use tracing::{info, warn};

use crate::{
    arp,
    attach::{AttachError, Datapath, LoadOptions, interfaces, mac_of},
    compile::{self, Compiled, External, HaRuntime},
    conntrack::{self, Owned, Timeouts},
    ctsync, metrics,
    model::State,
    reconcile,
    source::{Source, SourceSpec, StateError, ha},
};

/// How often interfaces (taps appearing and going) are looked at.
pub const POLL: Duration = Duration::from_millis(100);
/// How often the state source is looked at: a written state file is applied well within
/// 100 ms.
pub const STATE_POLL: Duration = Duration::from_millis(20);
/// How often the agent reads every map back instead of trusting what it wrote last, so an
/// entry changed or removed by hand is repaired.
pub const FULL_READ_INTERVAL: Duration = Duration::from_secs(30);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Install SIGTERM/SIGINT handlers that ask the loop to stop.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

impl From<StateError> for AgentError {
    fn from(e: StateError) -> Self {
        Self::State {
            source_desc: e.source_desc,
            msg: e.msg,
        }
    }
}

impl From<AttachError> for AgentError {
    fn from(e: AttachError) -> Self {
        Self::Attach(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state from {source_desc}: {msg}")]
    State { source_desc: String, msg: String },
    #[error(transparent)]
    Attach(Box<AttachError>),
    #[error(transparent)]
    Maps(#[from] crate::maps::MapsError),
    #[error("metrics endpoint {addr}: {msg}")]
    Metrics {
        addr: std::net::SocketAddr,
        msg: String,
    },
}

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

/// Tunables of the agent beyond its state.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub load: LoadOptions,
    pub timeouts: Timeouts,
    /// How often idle conntrack entries are expired.
    pub gc_interval: Duration,
    /// Port-address translation range (inclusive).
    pub snat_ports: (u16, u16),
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Byte rate limit of the HA conntrack sync, per host.
    pub ct_sync_rate: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            timeouts: Timeouts::default(),
            gc_interval: Duration::from_secs(1),
            snat_ports: (
                dvr_common::snat::SNAT_PORT_MIN,
                dvr_common::snat::SNAT_PORT_MAX,
            ),
            metrics: None,
            ct_sync_rate: 4_000_000,
        }
    }
}

/// Gratuitous ARPs sent for a floating IP this host starts serving.
const GARP_COUNT: u8 = 3;
/// Gateway ARP requests: quickly while its MAC is unknown, then as a slow refresh that
/// notices a changed MAC even if the gateway never announces it.
const PROBE_UNRESOLVED: Duration = Duration::from_secs(1);
const PROBE_REFRESH: Duration = Duration::from_secs(10);

pub struct Agent {
    host: String,
    source_desc: String,
    source: Source,
    state: State,
    /// The HA election view `state` is compiled with (etcd mode; `None` with a state file).
    ha_view: Option<HaRuntime>,
    dp: Datapath,
    opts: Options,
    /// Tap names of this host's VM ports in the current state.
    wanted: Vec<String>,
    /// External interface named by the current state, if any.
    ext_wanted: Option<String>,
    /// Taps of local ports that exist now: name -> ifindex.
    present: BTreeMap<String, u32>,
    /// The external interface as last seen: (name, ifindex).
    ext_present: Option<(String, u32)>,
    external: Option<External>,
    ext_mac: [u8; 6],
    /// Floating IPs served here -> fixed IP, as last applied.
    served: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Router external IPs translated here (network order), and router names by id.
    snat_ips: BTreeSet<u32>,
    snat_names: BTreeMap<u32, String>,
    /// Per-router count of flows refused for lack of a port, as last logged.
    exhausted_seen: BTreeMap<u32, u64>,
    garp_due: BTreeMap<Ipv4Addr, u8>,
    metrics: metrics::Shared,
    last_probe: HashMap<Ipv4Addr, Instant>,
    last_gc: Instant,
    /// When the state now being applied was read (for the "applied" log line).
    change_seen: Option<Instant>,
    /// The HA routers this host is a candidate for (last compile).
    ha_roles: Vec<compile::HaRole>,
    /// Conntrack replication of HA roles (etcd mode, candidates only).
    ct_sync: Option<CtSync>,
    /// What the last successful reconcile wrote (`None`: read the maps back next time).
    written: Option<reconcile::Written>,
    last_full_read: Instant,
}

impl Agent {
    /// Validate the state file, load and pin the datapath, apply the first state.
    /// An invalid state file fails here, before anything on the host is touched.
    pub fn start(
        host: &str,
        spec: &SourceSpec,
        bpffs_root: &Path,
        opts: Options,
    ) -> Result<Self, AgentError> {
        let source_desc = spec.describe();
        let ha_shared = ha::Shared::default();
        let (mut source, mut text) = Source::open(spec, host, &ha_shared, &STOP)?;
        let err = |msg: String| AgentError::State {
            source_desc: source_desc.clone(),
            msg,
        };
        // Compile once before touching the host, so a state that names no such host or
        // cannot be compiled is refused up front too. A file is refused at once (exit code
        // 1); a cluster store may simply not be filled yet, so the agent waits for a usable
        // state while a previous agent's pinned datapath keeps forwarding.
        let (state, first, ha_view) = loop {
            let ha_view = source.ha_runtime();
            let parsed = State::from_json(&text.take().unwrap_or_default())
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    compile::compile(&s, host, ha_view.as_ref(), &|_| None)
                        .map(|c| (s, c))
                        .map_err(|e| e.to_string())
                });
            match (parsed, spec) {
                (Ok((s, c)), _) => break (s, c, ha_view),
                (Err(e), SourceSpec::File(_)) => return Err(err(e)),
                (Err(e), SourceSpec::Etcd(_)) => {
                    warn!(error = %e, "no usable state in etcd yet; waiting for one");
                    while text.is_none() {
                        if STOP.load(Ordering::SeqCst) {
                            return Err(err("stopped while waiting for a usable state".into()));
                        }
                        text = source.poll(Some(Duration::from_millis(200)))?;
                    }
                }
            }
        };
        let dp = Datapath::load(bpffs_root, host, &opts.load)?;
        info!(host, pins = %dp.dir.display(), tunnel_ifindex = dp.tunnel_ifindex, "datapath loaded");
        let mut agent = Self {
            host: host.into(),
            source_desc,
            source,
            state,
            ha_view,
            dp,
            opts,
            wanted: first.taps.into_keys().collect(),
            ext_wanted: first.external.map(|e| e.iface),
            present: BTreeMap::new(),
            ext_present: None,
            external: None,
            ext_mac: [0; 6],
            served: BTreeMap::new(),
            snat_ips: BTreeSet::new(),
            snat_names: BTreeMap::new(),
            exhausted_seen: BTreeMap::new(),
            garp_due: BTreeMap::new(),
            metrics: metrics::Shared::default(),
            last_probe: HashMap::new(),
            last_gc: Instant::now(),
            change_seen: None,
            ha_roles: Vec::new(),
            ct_sync: None,
            written: None,
            last_full_read: Instant::now(),
        };
        if let Some(addr) = agent.opts.metrics {
            let at = metrics::spawn(
                addr,
                agent.host.clone(),
                agent.dp.dir.clone(),
                agent.metrics.clone(),
            )
            .map_err(|e| AgentError::Metrics {
                addr,
                msg: e.to_string(),
            })?;
            info!(%at, "serving Prometheus metrics at /metrics");
        }
        agent.sync(true)?;
        let pruned = agent.dp.prune_links();
        if !pruned.is_empty() {
            info!(links = ?pruned, "removed pinned links of interfaces no longer served");
        }
        Ok(agent)
    }

    /// One poll step: pick up a changed state file and interface changes, reconcile if
    /// needed, then the periodic work (ARP, conntrack GC).
    pub fn tick(&mut self, scan: bool) -> Result<(), AgentError> {
        let mut changed = false;
        let polled = Instant::now();
        if let Some(text) = self.source.poll(None)? {
            self.change_seen = Some(polled);
            let ha_view = self.source.ha_runtime();
            let parsed = State::from_json(&text)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    let c = compile::compile(&s, &self.host, ha_view.as_ref(), &|_| None)
                        .map_err(|e| e.to_string())?;
                    Ok((s, c))
                });
            match parsed {
                Ok((s, c)) => {
                    self.wanted = c.taps.into_keys().collect();
                    self.ext_wanted = c.external.map(|e| e.iface);
                    self.state = s;
                    self.ha_view = ha_view;
                    changed = true;
                }
                Err(e) => warn!(error = %e, "refused new state; keeping the last good one"),
            }
            if !changed {
                self.note(|m| m.states_refused += 1);
            }
        }
        if self.source.take_ha_change() {
            let rt = self.source.ha_runtime();
            info!(holders = ?rt.as_ref().map(|r| &r.holders), active_here = ?rt.as_ref().map(|r| &r.active_here), "HA view changed");
            self.ha_view = rt;
            self.change_seen.get_or_insert(polled);
            changed = true;
        }
        if !(scan || changed) {
            return Ok(());
        }
        self.sync(changed)?;
        self.send_arp();
        if self.last_gc.elapsed() >= self.opts.gc_interval {
            self.last_gc = Instant::now();
            self.gc()?;
        }
        Ok(())
    }

    fn compile(&self, present: &BTreeMap<String, u32>) -> Result<Compiled, AgentError> {
        compile::compile(&self.state, &self.host, self.ha_view.as_ref(), &|tap| {
            present.get(tap).copied()
        })
        .map_err(|e| AgentError::State {
            source_desc: self.source_desc.clone(),
            msg: e.to_string(),
        })
    }

    /// Reconcile maps and attachments with the current state and interfaces.
    fn sync(&mut self, force: bool) -> Result<(), AgentError> {
        let ifaces = interfaces();
        let present: BTreeMap<String, u32> = self
            .wanted
            .iter()
            .filter_map(|t| ifaces.get(t).map(|i| (t.clone(), *i)))
            .collect();
        let ext_now = self
            .ext_wanted
            .as_ref()
            .and_then(|n| ifaces.get(n).map(|i| (n.clone(), *i)));
        if !force && present == self.present && ext_now == self.ext_present {
            return Ok(());
        }
        // Taps that went away (or were recreated) are detached before their entries go.
        let gone = self.dp.detach_stale(&present)?;
        let compiled = match self.compile(&present) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot compile state for the current taps; keeping maps as they are");
                return Ok(());
            }
        };
        let mut cfg = compiled.config;
        cfg.tunnel_ifindex = self.dp.tunnel_ifindex;
        if let Some((name, ifx)) = &ext_now {
            cfg.ext_ifindex = *ifx;
            cfg.ext_mac = mac_of(name).unwrap_or_default();
        }
        (cfg.snat_port_min, cfg.snat_port_max) = self.opts.snat_ports;
        let started = Instant::now();
        if self.last_full_read.elapsed() >= FULL_READ_INTERVAL {
            self.written = None;
        }
        let known = self.written.take();
        let applied = match reconcile::apply_known(
            &mut self.dp.maps,
            &cfg,
            &compiled.entries,
            known.as_ref(),
        ) {
            Ok(a) => a,
            Err(e) => {
                self.note(|m| m.reconcile_errors += 1);
                return Err(e.into());
            }
        };
        if known.is_none() {
            self.last_full_read = Instant::now();
        }
        self.written = Some(reconcile::Written {
            config: cfg,
            entries: compiled.entries.clone(),
        });
        let took = started.elapsed().as_secs_f64();
        let since_change = self.change_seen.take().map(|t| t.elapsed().as_secs_f64());
        // Entries first, then the programs: a tap or the external interface is served from
        // its first frame.
        let mut added = Vec::new();
        for (name, ifx) in &present {
            let one = BTreeMap::from([(name.clone(), *ifx)]);
            match self.dp.attach_new(&one) {
                Ok(a) => added.extend(a),
                Err(e) => warn!(tap = %name, error = %e, "attach failed; will retry"),
            }
        }
        if let Err(e) = self
            .dp
            .sync_external(ext_now.as_ref().map(|(n, i)| (n.as_str(), *i)))
        {
            warn!(error = %e, "external interface attach failed; will retry");
        }
        self.ext_present = self.dp.external();
        self.ext_mac = cfg.ext_mac;
        self.present = self.dp.attached();
        // New floating IPs are announced; flows of FIPs no longer served here are purged now,
        // not at the next GC.
        let served = if self.ext_present.is_some() {
            compiled.served_fips
        } else {
            BTreeMap::new()
        };
        for fip in served.keys().filter(|f| !self.served.contains_key(f)) {
            self.garp_due.insert(*fip, GARP_COUNT);
        }
        let snat_ips: BTreeSet<u32> = compiled.entries.snat_ips.keys().copied().collect();
        // An HA router's external address is announced when its role moves here: the
        // external network must learn this host's MAC for it.
        let announced: BTreeSet<Ipv4Addr> = compiled
            .entries
            .snat_ips
            .iter()
            .filter(|(_, r)| r.flags & dvr_common::snat::SNAT_HA != 0)
            .map(|(ip, _)| Ipv4Addr::from(ip.to_ne_bytes()))
            .collect();
        if self.ext_present.is_some() {
            for ip in announced
                .iter()
                .filter(|ip| !self.snat_ips.contains(&u32::from_ne_bytes(ip.octets())))
            {
                self.garp_due.insert(*ip, GARP_COUNT);
            }
        }
        self.garp_due
            .retain(|f, _| served.contains_key(f) || announced.contains(f));
        self.ha_roles = compiled.ha.clone();
        if let Some(shared) = self.source.ha_shared()
            && let Ok(mut sh) = shared.lock()
        {
            sh.roles = compiled.ha.clone();
            sh.fence_pin = Some(self.dp.dir.join(dvr_common::maps::DVR_HA_FENCE));
        }
        self.ct_sync_update();
        // On the first sync (force) flows left by a previous agent are checked too.
        let remapped = force || served != self.served || snat_ips != self.snat_ips;
        self.served = served;
        self.snat_ips = snat_ips;
        self.snat_names = compiled.snat_router_names;
        self.external = compiled.external;
        if remapped {
            let served = self.owned();
            let swept = conntrack::sweep(&mut self.dp.maps, &self.opts.timeouts, &served)?;
            if swept.purged > 0 {
                info!(
                    flows = swept.purged,
                    "purged conntrack of floating IPs no longer served here"
                );
            }
        }
        let (fips, taps) = (self.served.len() as u64, self.present.len() as u64);
        let routers: Vec<(u32, String)> = self
            .snat_names
            .iter()
            .map(|(h, n)| (*h, n.clone()))
            .collect();
        self.note(|m| {
            m.reconciles += 1;
            m.reconcile_seconds_total += took;
            m.reconcile_seconds_last = took;
            m.entries_upserted += applied.upserted as u64;
            m.entries_deleted += applied.deleted as u64;
            m.fips_served = fips;
            m.taps_attached = taps;
            m.routers = routers;
        });
        if !applied.is_empty() || !added.is_empty() || !gone.is_empty() {
            info!(
                seconds = took,
                since_state_read = ?since_change,
                upserted = applied.upserted,
                deleted = applied.deleted,
                taps_attached = ?added,
                taps_detached = ?gone,
                taps = self.present.len(),
                fips_served = self.served.len(),
                external = ?self.ext_present.as_ref().map(|(n, _)| n),
                "applied"
            );
        }
        Ok(())
    }

    fn note(&self, f: impl FnOnce(&mut metrics::AgentMetrics)) {
        if let Ok(mut m) = self.metrics.lock() {
            f(&mut m);
        }
    }

    fn owned(&self) -> Owned {
        let mut owned = Owned {
            fips: self
                .served
                .iter()
                .map(|(f, x)| {
                    (
                        u32::from_ne_bytes(f.octets()),
                        u32::from_ne_bytes(x.octets()),
                    )
                })
                .collect(),
            snat_ips: self.snat_ips.clone(),
        };
        // A standby keeps the flows streamed from the active host of its HA routers.
        for role in &self.ha_roles {
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
        owned
    }

    /// Conntrack replication for the HA roles (docs/HA.md): every candidate listens on its
    /// tunnel address; the active host streams its roles' flows to the other candidates.
    fn ct_sync_update(&mut self) {
        if self.ha_roles.is_empty() || self.source.ha_shared().is_none() {
            return;
        }
        let me = match self.state.host(&self.host) {
            Some(h) => h.tunnel_ip,
            None => return,
        };
        if self.ct_sync.is_none() {
            match CtSync::start(me, &self.dp.dir, self.opts.ct_sync_rate) {
                Ok(s) => {
                    info!(addr = %SocketAddr::from((me, ctsync::PORT)), "conntrack sync listening");
                    self.ct_sync = Some(s);
                }
                Err(e) => {
                    warn!(error = %e, "conntrack sync not started; will retry");
                    return;
                }
            }
        }
        let active: BTreeSet<String> = self
            .ha_view
            .as_ref()
            .map(|rt| rt.active_here.clone())
            .unwrap_or_default();
        let mut peers = BTreeSet::new();
        let mut ext_ips = BTreeSet::new();
        let mut central = BTreeSet::new();
        for role in self
            .ha_roles
            .iter()
            .filter(|r| active.contains(&r.router_id))
        {
            peers.extend(
                role.candidates
                    .iter()
                    .filter(|c| c.host != self.host)
                    .map(|c| SocketAddr::from((c.tunnel_ip, ctsync::PORT))),
            );
            ext_ips.extend(role.ext_ip.map(|ip| u32::from_ne_bytes(ip.octets())));
            central.extend(
                role.central_fips
                    .keys()
                    .map(|f| u32::from_ne_bytes(f.octets())),
            );
        }
        if let Some(s) = &self.ct_sync {
            // Only the other candidates of this host's HA routers may stream flows to it.
            let allowed: BTreeSet<std::net::IpAddr> = self
                .ha_roles
                .iter()
                .flat_map(|r| r.candidates.iter())
                .filter(|c| c.host != self.host)
                .map(|c| std::net::IpAddr::V4(c.tunnel_ip))
                .collect();
            s.listener.set_allowed(Some(allowed.into_iter().collect()));
            let select: ctsync::Select = Arc::new(move |_k: &CtKey, e: &CtEntry| {
                (e.kind & CT_PAT != 0 && ext_ips.contains(&e.fip_be))
                    || (e.kind & CT_PAT == 0 && central.contains(&e.fip_be))
            });
            s.replicator.set(peers.into_iter().collect(), select);
            if let Some(shared) = self.source.ha_shared()
                && let Ok(mut sh) = shared.lock()
                && sh.sync_to.is_none()
            {
                let r = s.replicator.clone();
                sh.sync_to = Some(Arc::new(move |ip: Ipv4Addr, timeout: Duration| {
                    r.sync_to(SocketAddr::from((ip, ctsync::PORT)), timeout)
                }));
            }
        }
    }

    /// Log routers whose SNAT refused new flows since the last look.
    fn report_exhaustion(&mut self) -> Result<(), AgentError> {
        for (router, count) in self.dp.maps.snat_exhausted.read()? {
            let before = self.exhausted_seen.insert(router, count).unwrap_or(0);
            if count > before {
                let name = self.snat_names.get(&router).map_or("?", String::as_str);
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

    /// Gratuitous ARP for newly served FIPs and requests for the external gateways.
    fn send_arp(&mut self) {
        let Some((_, ifx)) = self.ext_present.clone() else {
            return;
        };
        let mac = self.ext_mac;
        for (fip, left) in self.garp_due.iter_mut() {
            if let Err(e) = arp::send(ifx, &arp::request_frame(mac, *fip, *fip)) {
                warn!(%fip, error = %e, "gratuitous ARP failed");
            }
            *left -= 1;
        }
        self.garp_due.retain(|_, left| *left > 0);
        let Some(ext) = &self.external else { return };
        let sender = ext.fg_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for gw in &ext.gateways {
            let learned = self
                .dp
                .maps
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

    fn gc(&mut self) -> Result<(), AgentError> {
        self.report_exhaustion()?;
        let served = self.owned();
        let swept = conntrack::sweep(&mut self.dp.maps, &self.opts.timeouts, &served)?;
        if swept.expired + swept.purged > 0 {
            info!(
                expired = swept.expired,
                purged = swept.purged,
                "conntrack swept"
            );
        }
        Ok(())
    }

    /// Run until SIGTERM/SIGINT. The datapath stays in place: see [`Datapath::release`].
    pub fn run(mut self) -> Result<(), AgentError> {
        info!(host = %self.host, source = %self.source_desc, "ready");
        let mut i: u32 = 0;
        while !STOP.load(Ordering::SeqCst) {
            // State changes are looked for every STATE_POLL; interfaces, ARP and GC every
            // POLL.
            let scan = i.is_multiple_of((POLL.as_millis() / STATE_POLL.as_millis()).max(1) as u32);
            if let Err(e) = self.tick(scan) {
                warn!(error = %e, "reconcile step failed; retrying");
            }
            i = i.wrapping_add(1);
            self.source.wait(STATE_POLL);
        }
        info!(
            "stopping: programs stay attached and maps pinned; traffic keeps flowing (dvr-agent --uninstall removes them)"
        );
        self.dp.release();
        Ok(())
    }
}
