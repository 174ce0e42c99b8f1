//! The agent's control loop: watch the state source and the host's links, compile each
//! change once, reconcile the maps, attach/detach taps, and do the periodic work.
//! Single-threaded: every [`STATE_POLL`] it looks at the state source and the link
//! notifications; every [`POLL`] it does the periodic work (gateway ARP, conntrack GC).
//!
//! Its parts, each owning its own state:
//! - `links`: which of the wanted taps and the external interface exist (link notifications,
//!   slow listing as a fallback);
//! - `sync`: one reconcile against what the last apply wrote;
//! - `announce`: gratuitous ARP for what starts being served, external gateway probes;
//! - `ha`: the HA roles for the election and their conntrack sync;
//! - `gc`: conntrack expiry/purge and SNAT exhaustion reports;
//! - `options`, `error`: tunables and errors.
mod announce;
mod error;
mod gc;
mod ha;
mod links;
mod options;
mod ra;
mod state;
mod sync;
mod underlay;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dvr_common::{
    port::{PORT_FLAG_SG, PORT_FLAG_SG_STATELESS},
    sg::SG_ZONE,
};
use netlink_packet_route::link::InfoKind;
use tracing::{info, warn};

pub use error::AgentError;
pub use options::{FULL_READ_INTERVAL, Options, POLL, RESCAN, STATE_POLL, TunnelMode};

use crate::{
    attach::{Datapath, link_kinds, mac_of},
    compile::{self, Compiled, External, HaRuntime},
    conntrack::{self, Owned, SgOwned},
    metrics,
    model::State,
    source::{Source, SourceSpec, ha as election},
};
use announce::Announcer;
use gc::Gc;
use ha::{HaUpkeep, Me};
use links::{Ifaces, Links};
use ra::Advertiser;
pub use ra::RaInterval;
use state::{Held, Outcome};
use sync::Reconciler;
use underlay::UnderlayCheck;

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

/// The state the agent serves, as last accepted, with what its compile said about the
/// host's interfaces.
struct Current {
    state: State,
    /// The HA election view `state` is compiled with (etcd mode; `None` with a state file).
    ha_view: Option<HaRuntime>,
    /// Tap names of this host's VM ports.
    wanted: Vec<String>,
    /// Tap name -> port id of those ports.
    port_of_tap: BTreeMap<String, String>,
    /// External interface named by the state, if any.
    ext_wanted: Option<String>,
}

impl Current {
    fn new(state: State, ha_view: Option<HaRuntime>, c: &Compiled) -> Self {
        Current {
            state,
            ha_view,
            wanted: c.taps.keys().cloned().collect(),
            port_of_tap: c.taps.clone(),
            ext_wanted: c.external.as_ref().map(|e| e.iface.clone()),
        }
    }
}

/// Where the external NIC's XDP program is attached and may redirect to ([`Agent::xdp_plan`]).
#[derive(Default)]
struct XdpPlan {
    /// Attach it to the external NIC.
    ext: bool,
    /// Tap ifindexes the XDP program may redirect to (DVR_XDP_TAPS).
    taps: BTreeSet<u32>,
}

/// Make DVR_XDP_TAPS hold exactly `taps`: new ones first, then the ones gone.
fn sync_xdp_taps(
    maps: &mut crate::maps::HostMaps,
    taps: &BTreeSet<u32>,
) -> Result<(), crate::maps::MapsError> {
    let now = maps.xdp_taps.read()?;
    for ifx in taps.iter().filter(|i| !now.contains_key(i)) {
        maps.xdp_taps.put(ifx, &1)?;
    }
    for ifx in now.keys().filter(|i| !taps.contains(i)) {
        maps.xdp_taps.del(ifx)?;
    }
    Ok(())
}

/// What the last apply made this host serve.
#[derive(Default)]
struct Served {
    /// Taps of local ports that exist and are attached: name -> ifindex.
    taps: BTreeMap<String, u32>,
    /// The external interface as last seen: (name, ifindex), and its MAC.
    ext: Option<(String, u32)>,
    ext_mac: [u8; 6],
    /// The underlay NIC the underlay program is on (`--tunnel-decap bpf`), and the tunnel
    /// address it was found by (host order).
    underlay: Option<(String, u32)>,
    tunnel_ip_host: u32,
    external: Option<External>,
    /// Floating IPs served here -> fixed IP.
    fips: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Router external IPs translated here (network order), and router names by id.
    snat_ips: BTreeSet<u32>,
    snat_names: BTreeMap<u32, String>,
    /// The stateful security group policies of the local ports.
    sg: Arc<SgOwned>,
}

pub struct Agent {
    host: String,
    source_desc: String,
    source: Source,
    /// The cloud as last read, and this host's view of it.
    held: Held,
    current: Current,
    dp: Datapath,
    opts: Options,
    links: Links,
    served: Served,
    reconciler: Reconciler,
    announcer: Announcer,
    advertiser: Advertiser,
    ha: HaUpkeep,
    gc: Gc,
    underlay: UnderlayCheck,
    metrics: metrics::Shared,
    /// When the state now being applied was read (for the "applied" log line).
    change_seen: Option<Instant>,
}

impl Agent {
    /// Validate the state, load and pin the datapath, apply the first state. An invalid
    /// state file fails here, before anything on the host is touched.
    pub fn start(
        host: &str,
        spec: &SourceSpec,
        bpffs_root: &Path,
        opts: Options,
    ) -> Result<Self, AgentError> {
        let source_desc = spec.describe();
        let ha_shared = election::Shared::default();
        let (mut source, mut update) = Source::open(spec, host, &ha_shared, &STOP)?;
        let err = |msg: String| AgentError::State {
            source_desc: source_desc.clone(),
            msg,
        };
        let mut links = Links::open();
        let mut held = Held::new(host);
        // Parse and compile before touching the host, so a state that names no such host or
        // cannot be compiled is refused up front too. A file is refused at once (exit code
        // 1); a cluster store may simply not be filled yet, so the agent waits for a usable
        // state while a previous agent's pinned datapath keeps forwarding.
        let (current, first, ifaces) = loop {
            let ha_view = source.ha_runtime();
            let ifaces = links.list().unwrap_or_default();
            let outcome = update.take().map_or(Outcome::Same, |u| held.apply(u));
            let result = match outcome {
                Outcome::View(state) => compile_view(*state, host, ha_view.as_ref(), &ifaces),
                Outcome::Refused(e) => Err(e),
                Outcome::Same | Outcome::Elsewhere => Err("no usable state yet".into()),
            };
            match result {
                Ok((s, c)) => break (Current::new(s, ha_view, &c), c, ifaces),
                Err(e) if matches!(spec, SourceSpec::File(_)) => return Err(err(e)),
                Err(e) => {
                    warn!(error = %e, "no usable state in etcd yet; waiting for one");
                    while update.is_none() {
                        if STOP.load(Ordering::SeqCst) {
                            return Err(err("stopped while waiting for a usable state".into()));
                        }
                        update = source.poll(Some(Duration::from_millis(200)));
                    }
                }
            }
        };
        let dp = Datapath::load(bpffs_root, host, &opts.load)?;
        info!(host, pins = %dp.dir.display(), tunnel_ifindex = dp.tunnel_ifindex, "datapath loaded");
        if opts.tunnel_encap == TunnelMode::Bpf
            && let Err(e) = crate::attach::enable_tunnel_forwarding()
        {
            warn!(error = %e, "frames for the tunnel will go through the VXLAN device (tx_encap_device)");
        }
        let mut agent = Self {
            host: host.into(),
            source_desc,
            source,
            held,
            current,
            dp,
            opts,
            links,
            served: Served::default(),
            reconciler: Reconciler::new(),
            announcer: Announcer::default(),
            advertiser: Advertiser::default(),
            ha: HaUpkeep::default(),
            gc: Gc::new(),
            underlay: UnderlayCheck::default(),
            metrics: metrics::Shared::default(),
            change_seen: None,
        };
        agent.check_underlay();
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
        // Taps may have come or gone while the datapath loaded: the first compile is kept
        // when the wanted taps and external interface are as it saw them (all a compile
        // reads of the host).
        let now = agent.links.list().unwrap_or_default();
        let seen = |l: &Ifaces| {
            let c = &agent.current;
            links::present(l, &c.wanted, c.ext_wanted.as_deref())
        };
        let first = (seen(&now) == seen(&ifaces)).then_some(first);
        agent.apply(first, &now, true)?;
        let pruned = agent.dp.prune_links();
        if !pruned.is_empty() {
            info!(links = ?pruned, "removed pinned links of interfaces no longer served");
        }
        Ok(agent)
    }

    /// One step: pick up a changed state, election view or set of links and apply it
    /// (compiling once), then, when `periodic`, the periodic work (ARP, conntrack GC).
    pub fn tick(&mut self, periodic: bool) -> Result<(), AgentError> {
        let polled = Instant::now();
        let update = self.source.poll(None);
        let ha_changed = self.source.take_ha_change();
        if ha_changed {
            let rt = self.source.ha_runtime();
            info!(holders = ?rt.as_ref().map(|r| &r.holders), active_here = ?rt.as_ref().map(|r| &r.active_here), "HA view changed");
            self.current.ha_view = rt;
            self.change_seen.get_or_insert(polled);
        }
        let links_due = self.links.due();
        let mut applied = false;
        let outcome = update.map(|u| self.held.apply(u));
        let figures = self.held.figures;
        self.note(|m| {
            m.cloud_resources = figures.cloud as u64;
            m.view_resources = figures.view as u64;
        });
        if matches!(outcome, Some(Outcome::Elsewhere)) {
            tracing::debug!(
                checked = figures.checked,
                "a valid change elsewhere in the cloud: nothing of this host's"
            );
            self.note(|m| m.changes_elsewhere += 1);
        }
        let news = matches!(outcome, Some(Outcome::View(_) | Outcome::Refused(_)));
        if news || ha_changed || links_due {
            // A failed listing keeps the taps as last seen.
            let ifaces = match self.links.list() {
                Some(l) => l,
                None => self.last_seen_ifaces(),
            };
            let mut compiled = None;
            let mut force = ha_changed;
            let ha_view = self.current.ha_view.clone();
            let new = match outcome {
                Some(Outcome::View(state)) => {
                    self.change_seen = Some(polled);
                    Some(compile_view(*state, &self.host, ha_view.as_ref(), &ifaces))
                }
                Some(Outcome::Refused(e)) => Some(Err(e)),
                _ => None,
            };
            match new {
                None => {}
                Some(Ok((s, c))) => {
                    self.current = Current::new(s, ha_view, &c);
                    self.check_underlay();
                    compiled = Some(c);
                    force = true;
                }
                Some(Err(e)) => {
                    warn!(error = %e, checked = figures.checked, "refused new state; keeping the last good one");
                    self.note(|m| m.states_refused += 1);
                }
            }
            applied = self.apply(compiled, &ifaces, force)?;
        }
        if periodic || applied {
            self.periodic()?;
        }
        Ok(())
    }

    /// Warns of tenant networks too large for this host's underlay (`underlay`).
    fn check_underlay(&mut self) {
        if let Some(me) = self.current.state.host(&self.host) {
            self.underlay.check(&self.current.state, me.tunnel_ip);
        }
    }

    /// The interfaces as the last apply saw them (when they cannot be listed now).
    fn last_seen_ifaces(&self) -> Ifaces {
        self.served
            .taps
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .chain(self.served.ext.clone())
            .collect()
    }

    /// Gratuitous and gateway ARP, and conntrack GC when due.
    fn periodic(&mut self) -> Result<(), AgentError> {
        if let Some((_, ifx)) = &self.served.ext {
            self.announcer.send(
                *ifx,
                self.served.ext_mac,
                self.served.external.as_ref(),
                &self.dp.maps,
            );
        }
        self.advertiser.send(self.opts.ra_interval);
        if self.gc.due(self.opts.gc_interval) {
            let owned = self.owned();
            self.gc.run(
                &mut self.dp.maps,
                &self.opts.timeouts,
                &owned,
                &self.served.snat_names,
            )?;
        }
        Ok(())
    }

    /// Where XDP may send frames (`--ext-xdp native`), host facts like the ifindexes, not
    /// in the state: back out of the external NIC (so the program is attached to it) unless
    /// it is a veth, and to the taps that are tun/tap devices; a veth only with
    /// `--xdp-veth-peers` (its peer runs NAPI, without which the kernel drops what XDP sends
    /// it). When the kinds cannot be read, nowhere: TC serves everything. A program a
    /// previous agent attached where this one would not is removed with its pin
    /// (`Datapath::prune_links`).
    fn xdp_plan(&self, present: &BTreeMap<String, u32>, ext: Option<&(String, u32)>) -> XdpPlan {
        if !self.opts.ext_xdp {
            return XdpPlan::default();
        }
        let kinds = match link_kinds() {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "cannot read the interfaces' kinds; no XDP on the external interface");
                return XdpPlan::default();
            }
        };
        let takes = |name: &str| match kinds.get(name) {
            Some(Some(InfoKind::Tun)) => true,
            Some(Some(InfoKind::Veth)) => self.opts.xdp_veth_peers,
            Some(Some(_)) => false,
            // A NIC: its driver sends what XDP gives it back.
            Some(None) => true,
            None => false,
        };
        XdpPlan {
            ext: ext.is_some_and(|(n, _)| takes(n)),
            taps: present
                .iter()
                .filter(|(n, _)| takes(n))
                .map(|(_, i)| *i)
                .collect(),
        }
    }

    /// The underlay NIC to decapsulate on: the interface holding tunnel address `ip_host`
    /// (host order), with `--tunnel-decap bpf`.
    fn underlay_wanted(&self, ifaces: &Ifaces, ip_host: u32) -> Option<(String, u32)> {
        if self.opts.tunnel_decap != TunnelMode::Bpf || ip_host == 0 {
            return None;
        }
        let name = crate::attach::interface_with_ipv4(Ipv4Addr::from(ip_host))?;
        let ifx = ifaces.get(&name).copied()?;
        Some((name, ifx))
    }

    /// Reconcile maps and attachments with the current state and `ifaces`. `compiled` is
    /// the current state's compile against `ifaces` when the caller has it. Unless `force`
    /// (a new state or election view), nothing is done while the wanted taps and the
    /// external interface are as last applied. Returns whether anything was applied.
    fn apply(
        &mut self,
        compiled: Option<Compiled>,
        ifaces: &Ifaces,
        force: bool,
    ) -> Result<bool, AgentError> {
        let (present, ext_now) = links::present(
            ifaces,
            &self.current.wanted,
            self.current.ext_wanted.as_deref(),
        );
        let underlay_now = self.underlay_wanted(ifaces, self.served.tunnel_ip_host);
        if !force
            && present == self.served.taps
            && ext_now == self.served.ext
            && underlay_now == self.served.underlay
        {
            return Ok(false);
        }
        // Taps that went away (or were recreated) are detached before their entries go.
        let gone = self.dp.detach_stale(&present)?;
        let compiled = match compiled {
            Some(c) => c,
            None => match compile::compile(
                &self.current.state,
                &self.host,
                self.current.ha_view.as_ref(),
                &|tap| ifaces.get(tap).copied(),
            ) {
                Ok(c) => c,
                Err(e) => {
                    let e = AgentError::State {
                        source_desc: self.source_desc.clone(),
                        msg: e.to_string(),
                    };
                    warn!(error = %e, "cannot compile state for the current taps; keeping maps as they are");
                    return Ok(false);
                }
            },
        };
        let mut cfg = compiled.config;
        cfg.tunnel_ifindex = self.dp.tunnel_ifindex;
        cfg.flags |= self.opts.tunnel_encap.encap_flags();
        if let Some((name, ifx)) = &ext_now {
            cfg.ext_ifindex = *ifx;
            cfg.ext_mac = mac_of(name).unwrap_or_default();
        }
        (cfg.snat_port_min, cfg.snat_port_max) = self.opts.snat_ports;
        // Looked up again only when the state moved this host's tunnel address.
        let underlay_now = if cfg.tunnel_ip_host == self.served.tunnel_ip_host {
            underlay_now
        } else {
            self.underlay_wanted(ifaces, cfg.tunnel_ip_host)
        };
        if underlay_now.is_some() {
            cfg.flags |= dvr_common::config::HOST_DECAP_BPF;
        }
        let (applied, took) =
            match self
                .reconciler
                .apply(&mut self.dp.maps, &cfg, &compiled.entries)
            {
                Ok(a) => a,
                Err(e) => {
                    self.note(|m| m.reconcile_errors += 1);
                    return Err(e.into());
                }
            };
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
        let xdp = self.xdp_plan(&present, ext_now.as_ref());
        if let Err(e) = sync_xdp_taps(&mut self.dp.maps, &xdp.taps) {
            warn!(error = %e, "cannot write the XDP taps; will retry");
        }
        let xdp_want = ext_now
            .as_ref()
            .filter(|_| xdp.ext)
            .map(|(n, i)| (n.as_str(), *i));
        if let Err(e) = self.dp.sync_external_xdp(xdp_want) {
            warn!(error = %e, "no native XDP on the external interface; its TC program serves it alone");
        }
        if let Err(e) = self
            .dp
            .sync_underlay(underlay_now.as_ref().map(|(n, i)| (n.as_str(), *i)))
        {
            warn!(error = %e, "underlay NIC attach failed; VXLAN is received by the device meanwhile");
        }
        self.served.ext = self.dp.external();
        self.served.underlay = self.dp.underlay();
        self.served.tunnel_ip_host = cfg.tunnel_ip_host;
        self.served.ext_mac = cfg.ext_mac;
        self.served.taps = self.dp.attached();
        // Ports whose tap is attached and whose entries are written: up (etcd status keys).
        let up = self
            .served
            .taps
            .keys()
            .filter_map(|t| self.current.port_of_tap.get(t).cloned())
            .collect();
        self.source.report_ports(up);
        let remapped = self.take_served(compiled, force);
        if remapped {
            // Flows of FIPs no longer served here are purged now, not at the next GC; on
            // the first apply flows left by a previous agent are checked too.
            let owned = self.owned();
            let swept = conntrack::sweep(&mut self.dp.maps, &self.opts.timeouts, &owned)?;
            if swept.purged > 0 {
                info!(
                    flows = swept.purged,
                    "purged conntrack of floating IPs no longer served here"
                );
            }
            if swept.sg_purged > 0 {
                info!(
                    flows = swept.sg_purged,
                    "security group re-check: ended flows no rule of their port admits any more (or of ports gone)"
                );
            }
        }
        let (fips, taps) = (self.served.fips.len() as u64, self.served.taps.len() as u64);
        let routers: Vec<(u32, String)> = self
            .served
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
                taps = self.served.taps.len(),
                fips_served = self.served.fips.len(),
                external = ?self.served.ext.as_ref().map(|(n, _)| n),
                "applied"
            );
        }
        Ok(true)
    }

    /// Take what `compiled` serves: plan announcements, hand the HA roles to the election
    /// and the conntrack sync. True when the set of served floating IPs or SNAT addresses
    /// changed (or `force`): conntrack then needs a purge.
    fn take_served(&mut self, mut compiled: Compiled, force: bool) -> bool {
        let has_external = self.served.ext.is_some();
        let fips = if has_external {
            compiled.served_fips
        } else {
            BTreeMap::new()
        };
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
        self.announcer.plan(
            &self.served.fips,
            &fips,
            &self.served.snat_ips,
            &announced,
            has_external,
        );
        self.announcer.plan6(
            &compiled.entries.snat6,
            &compiled.entries.snat_ips6,
            has_external,
        );
        self.advertiser
            .plan(&compiled.entries.local_ports, &compiled.entries.ra);
        let shared = self.source.ha_shared();
        self.ha.set_roles(compiled.ha, shared, &self.dp.dir);
        let me = Me {
            host: &self.host,
            tunnel_ip: self.current.state.host(&self.host).map(|h| h.tunnel_ip),
            pins: &self.dp.dir,
            rate: self.opts.ct_sync_rate,
        };
        self.ha
            .update_sync(&me, self.current.ha_view.as_ref(), shared);
        let sg = Arc::new(SgOwned {
            zones: compiled
                .entries
                .local_ports
                .iter()
                .filter(|(_, p)| {
                    p.flags & PORT_FLAG_SG != 0 && p.flags & PORT_FLAG_SG_STATELESS == 0
                })
                .map(|(ifx, p)| (SG_ZONE | ifx, p.policy))
                .collect(),
            remote: std::mem::take(&mut compiled.entries.sg_remote),
            remote6: std::mem::take(&mut compiled.entries.sg_remote6),
            rules: std::mem::take(&mut compiled.entries.sg_rules),
        });
        // A changed policy re-checks the tracked flows at once (the datapath re-checks a
        // flow's original direction at its next packet; this ends silent ones too).
        let remapped = force
            || fips != self.served.fips
            || snat_ips != self.served.snat_ips
            || sg != self.served.sg;
        self.served.sg = sg;
        self.served.fips = fips;
        self.served.snat_ips = snat_ips;
        self.served.snat_names = compiled.snat_router_names;
        self.served.external = compiled.external;
        remapped
    }

    fn note(&self, f: impl FnOnce(&mut metrics::AgentMetrics)) {
        if let Ok(mut m) = self.metrics.lock() {
            f(&mut m);
        }
    }

    /// The flows this host owns: those of the FIPs and SNAT addresses it serves, and of its
    /// HA roles.
    fn owned(&self) -> Owned {
        let mut owned = Owned {
            fips: self
                .served
                .fips
                .iter()
                .map(|(f, x)| {
                    (
                        u32::from_ne_bytes(f.octets()),
                        u32::from_ne_bytes(x.octets()),
                    )
                })
                .collect(),
            snat_ips: self.served.snat_ips.clone(),
            sg: self.served.sg.clone(),
        };
        self.ha.extend_owned(&mut owned);
        owned
    }

    /// Run until SIGTERM/SIGINT. The datapath stays in place: see [`Datapath::release`].
    pub fn run(mut self) -> Result<(), AgentError> {
        let f = self.held.figures;
        info!(host = %self.host, source = %self.source_desc, resources = f.cloud, view = f.view, "ready");
        let mut i: u32 = 0;
        let every = (POLL.as_millis() / STATE_POLL.as_millis()).max(1) as u32;
        while !STOP.load(Ordering::SeqCst) {
            if let Err(e) = self.tick(i.is_multiple_of(every)) {
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

/// Compile the host's view `state` for `host` against `ifaces`: once per change.
fn compile_view(
    state: State,
    host: &str,
    ha_view: Option<&HaRuntime>,
    ifaces: &Ifaces,
) -> Result<(State, Compiled), String> {
    let compiled = compile::compile(&state, host, ha_view, &|tap| ifaces.get(tap).copied())
        .map_err(|e| e.to_string())?;
    Ok((state, compiled))
}
