//! The loaded datapath: the object with its pinned maps, the tunnel program on the VXLAN
//! device and the tap/external programs on their interfaces through pinned TCX links; and
//! `uninstall`, which removes all of it.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        TcAttachType, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};

use super::{
    bpffs::ensure_bpffs,
    error::AttachError,
    load::{
        LoadOptions, PROG_EXT, PROG_EXT_XDP, PROG_TAP, PROG_TAP_OUT, PROG_TUNNEL, PROG_UNDERLAY,
        load_object, program, xdp_program,
    },
    tunnel::{TUNNEL_DEV, ensure_tunnel_dev, remove_tunnel_dev},
};
use crate::maps::HostMaps;

/// A program attached to an interface through a TCX (or XDP) link pinned at
/// `<dir>/links/<link>@<ifindex>` (`<link>` is the interface name for its ingress, the name
/// plus [`EGRESS_SUFFIX`] for its egress, plus [`UNDERLAY_SUFFIX`] for the underlay program,
/// which may share the external NIC's ingress, plus [`XDP_SUFFIX`] for the external NIC's
/// XDP program): it stays attached when the agent exits, and the next
/// agent swaps its own program in atomically (BPF_LINK_UPDATE), so traffic never sees a gap.
struct Attached {
    iface: String,
    ifindex: u32,
    prog: &'static str,
    link: PinnedLink,
}

/// The loaded object, its pinned maps and its pinned links.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: HostMaps,
    pub dir: PathBuf,
    pub tunnel_ifindex: u32,
    /// By link name (see [`Attached`]).
    links: BTreeMap<String, Attached>,
}

/// Appended to an interface name for the link of its egress hook. Interface names cannot
/// hold ':' (the kernel's dev_valid_name), so it never names an interface's ingress.
const EGRESS_SUFFIX: &str = ":out";

/// Appended to an interface name for the link of the underlay program (as [`EGRESS_SUFFIX`],
/// never an interface's own name).
const UNDERLAY_SUFFIX: &str = ":underlay";

/// Appended to an interface name for the link of its XDP program.
const XDP_SUFFIX: &str = ":xdp";

/// The name of the link of `prog` on `iface`.
fn link_name(iface: &str, prog: &str) -> String {
    match prog {
        PROG_TAP_OUT => format!("{iface}{EGRESS_SUFFIX}"),
        PROG_UNDERLAY => format!("{iface}{UNDERLAY_SUFFIX}"),
        PROG_EXT_XDP => format!("{iface}{XDP_SUFFIX}"),
        _ => iface.to_string(),
    }
}

/// Whether an agent of the host whose pins are in `dir` has the external NIC's XDP program
/// on `iface` (its pinned link), for `dvrctl trace`.
pub fn xdp_pinned(dir: &Path, iface: &str, ifindex: u32) -> bool {
    link_pin(dir, &link_name(iface, PROG_EXT_XDP), ifindex).exists()
}

fn links_dir(dir: &Path) -> PathBuf {
    dir.join("links")
}

fn link_pin(dir: &Path, iface: &str, ifindex: u32) -> PathBuf {
    links_dir(dir).join(format!("{iface}@{ifindex}"))
}

impl Datapath {
    /// Load the embedded object with the maps pinned under `<root>/<host>` (adopting what a
    /// previous agent left), make sure the tunnel device exists and attach (or take over)
    /// the tunnel program on it.
    pub fn load(root: &Path, host: &str, opts: &LoadOptions) -> Result<Self, AttachError> {
        ensure_bpffs(root)?;
        let dir = crate::maps::host_dir(root, host);
        let ldir = links_dir(&dir);
        std::fs::create_dir_all(&ldir)
            .map_err(|source| AttachError::PinDir { path: ldir, source })?;
        let tunnel_ifindex = ensure_tunnel_dev()?;
        let ebpf = load_object(&dir, opts)?;
        let maps = HostMaps::open(&dir)?;
        let mut dp = Self {
            ebpf,
            maps,
            dir,
            tunnel_ifindex,
            links: BTreeMap::new(),
        };
        dp.attach(PROG_TUNNEL, TUNNEL_DEV, tunnel_ifindex)?;
        Ok(dp)
    }

    /// Attach `prog` to `iface` (its egress for [`PROG_TAP_OUT`], native XDP for
    /// [`PROG_EXT_XDP`], else its TC ingress), taking over the pinned link a previous agent
    /// left for the same interface instance if there is one.
    fn attach(&mut self, prog: &'static str, iface: &str, ifindex: u32) -> Result<(), AttachError> {
        let name = link_name(iface, prog);
        let path = link_pin(&self.dir, &name, ifindex);
        let fd = if prog == PROG_EXT_XDP {
            self.xdp_link(iface, &path)?
        } else {
            self.tc_link(prog, iface, &path)?
        };
        // The adopted link is the one pinned at `path`: re-pin our handle in its place.
        let _ = std::fs::remove_file(&path);
        let link = fd.pin(&path).map_err(|source| AttachError::Pin {
            name: path.display().to_string(),
            source,
        })?;
        self.links.insert(
            name,
            Attached {
                iface: iface.into(),
                ifindex,
                prog,
                link,
            },
        );
        Ok(())
    }

    /// A TCX link of `prog` on `iface`: the one pinned at `path` with `prog` swapped in, or
    /// a new one.
    fn tc_link(
        &mut self,
        prog: &'static str,
        iface: &str,
        path: &Path,
    ) -> Result<FdLink, AttachError> {
        let err = |source| AttachError::Attach {
            prog,
            iface: iface.into(),
            source,
        };
        let hook = if prog == PROG_TAP_OUT {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let p = program(&mut self.ebpf, prog)?;
        let adopted = PinnedLink::from_pin(path)
            .ok()
            .and_then(|old| SchedClassifierLink::try_from(FdLink::from(old)).ok());
        let id = match adopted {
            Some(link) => p.attach_to_link(link).map_err(err)?,
            None => p.attach(iface, hook).map_err(err)?,
        };
        let link = p.take_link(id).map_err(err)?;
        link.try_into().map_err(|e| AttachError::Link {
            iface: iface.into(),
            source: e,
        })
    }

    /// The external NIC's XDP link, in the driver (native XDP only: generic XDP would only
    /// add work in front of the TC program), as [`Self::tc_link`].
    fn xdp_link(&mut self, iface: &str, path: &Path) -> Result<FdLink, AttachError> {
        let err = |source| AttachError::Attach {
            prog: PROG_EXT_XDP,
            iface: iface.into(),
            source,
        };
        let p = xdp_program(&mut self.ebpf)?;
        let adopted = PinnedLink::from_pin(path)
            .ok()
            .and_then(|old| XdpLink::try_from(FdLink::from(old)).ok());
        let id = match adopted {
            Some(link) => p.attach_to_link(link).map_err(err)?,
            None => p.attach(iface, XdpMode::Driver).map_err(err)?,
        };
        let link = p.take_link(id).map_err(err)?;
        link.try_into().map_err(|e| AttachError::Link {
            iface: iface.into(),
            source: e,
        })
    }

    fn detach(&mut self, link: &str) {
        if let Some(a) = self.links.remove(link) {
            // Unpinned and closed, the link goes and the program leaves the interface (it
            // already has if the interface is gone).
            if let Ok(fd) = a.link.unpin() {
                let _ = fd.detach();
            }
        }
    }

    /// Remove link pins this agent did not take over: interfaces gone, recreated (new
    /// ifindex) or no longer served. Call after the first full sync.
    pub fn prune_links(&self) -> Vec<String> {
        let keep: std::collections::BTreeSet<String> = self
            .links
            .iter()
            .map(|(n, a)| format!("{n}@{}", a.ifindex))
            .collect();
        let mut pruned = Vec::new();
        if let Ok(rd) = std::fs::read_dir(links_dir(&self.dir)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) && std::fs::remove_file(e.path()).is_ok() {
                    pruned.push(name);
                }
            }
        }
        pruned
    }

    /// Taps the tap program is attached to: name -> ifindex.
    pub fn attached(&self) -> BTreeMap<String, u32> {
        self.links
            .iter()
            .filter(|(_, a)| a.prog == PROG_TAP)
            .map(|(_, a)| (a.iface.clone(), a.ifindex))
            .collect()
    }

    /// Detach from taps not in `want` (or whose ifindex changed: the device was recreated).
    pub fn detach_stale(
        &mut self,
        want: &BTreeMap<String, u32>,
    ) -> Result<Vec<String>, AttachError> {
        let stale: Vec<String> = self
            .links
            .iter()
            .filter(|(_, a)| {
                (a.prog == PROG_TAP || a.prog == PROG_TAP_OUT)
                    && want.get(&a.iface) != Some(&a.ifindex)
            })
            .map(|(link, _)| link.clone())
            .collect();
        let mut taps = Vec::new();
        for link in &stale {
            if let Some(a) = self.links.get(link)
                && a.prog == PROG_TAP
            {
                taps.push(a.iface.clone());
            }
            self.detach(link);
        }
        Ok(taps)
    }

    /// Attach to every tap in `want` not attached yet, both ways (a tap a previous agent
    /// served only at its ingress gets its egress program too).
    pub fn attach_new(&mut self, want: &BTreeMap<String, u32>) -> Result<Vec<String>, AttachError> {
        let mut added = Vec::new();
        for (name, ifx) in want {
            if !self.links.contains_key(name) {
                self.attach(PROG_TAP, name, *ifx)?;
                added.push(name.clone());
            }
            if !self.links.contains_key(&link_name(name, PROG_TAP_OUT)) {
                self.attach(PROG_TAP_OUT, name, *ifx)?;
            }
        }
        Ok(added)
    }

    /// The external interface currently served: (name, ifindex).
    pub fn external(&self) -> Option<(String, u32)> {
        self.served_by(PROG_EXT)
    }

    /// The underlay NIC the underlay program is on: (name, ifindex).
    pub fn underlay(&self) -> Option<(String, u32)> {
        self.served_by(PROG_UNDERLAY)
    }

    /// The one interface `prog` is attached to: (name, ifindex).
    fn served_by(&self, prog: &str) -> Option<(String, u32)> {
        self.links
            .iter()
            .find(|(_, a)| a.prog == prog)
            .map(|(_, a)| (a.iface.clone(), a.ifindex))
    }

    /// Attach the external program to `want` (name, ifindex), detaching it from an
    /// interface that went away, was recreated or is no longer configured.
    pub fn sync_external(&mut self, want: Option<(&str, u32)>) -> Result<(), AttachError> {
        self.sync_one(PROG_EXT, want)
    }

    /// Attach the external NIC's XDP program to `want` as [`Self::sync_external`] does the
    /// TC one (`None` detaches it, e.g. with `--ext-xdp off`). An error (the driver has no
    /// native XDP) leaves the TC program serving the NIC alone.
    pub fn sync_external_xdp(&mut self, want: Option<(&str, u32)>) -> Result<(), AttachError> {
        self.sync_one(PROG_EXT_XDP, want)
    }

    /// The external interface the XDP program is on: (name, ifindex).
    pub fn external_xdp(&self) -> Option<(String, u32)> {
        self.served_by(PROG_EXT_XDP)
    }

    /// Attach the underlay program to `want` (name, ifindex) as [`Self::sync_external`]
    /// does the external one.
    pub fn sync_underlay(&mut self, want: Option<(&str, u32)>) -> Result<(), AttachError> {
        self.sync_one(PROG_UNDERLAY, want)
    }

    fn sync_one(
        &mut self,
        prog: &'static str,
        want: Option<(&str, u32)>,
    ) -> Result<(), AttachError> {
        let now = self.served_by(prog);
        if now.as_ref().map(|(n, i)| (n.as_str(), *i)) == want {
            return Ok(());
        }
        if let Some((name, _)) = now {
            self.detach(&link_name(&name, prog));
        }
        if let Some((name, ifx)) = want {
            self.attach(prog, name, ifx)?;
        }
        Ok(())
    }

    /// Leave everything in place (SIGTERM, or an upgrade): the pinned links keep the
    /// programs attached and the pinned maps keep their contents; the next agent adopts them.
    pub fn release(self) {}
}

/// Remove everything an agent made for `host`: the link pins (which detaches its programs),
/// the map pins and the directory, and the tunnel device (only if it is a VXLAN collect_md
/// device, as the agent creates it). Runs in the host's network namespace.
pub fn uninstall(root: &Path, host: &str) -> Result<Vec<String>, AttachError> {
    let dir = crate::maps::host_dir(root, host);
    let mut removed = Vec::new();
    if dir.exists() {
        let ldir = links_dir(&dir);
        if let Ok(rd) = std::fs::read_dir(&ldir) {
            for e in rd.flatten() {
                removed.push(format!("link {}", e.file_name().to_string_lossy()));
            }
        }
        std::fs::remove_dir_all(&dir).map_err(|source| AttachError::PinDir {
            path: dir.clone(),
            source,
        })?;
        removed.push(format!("pins {}", dir.display()));
    }
    if remove_tunnel_dev()? {
        removed.push(format!("device {TUNNEL_DEV}"));
    }
    Ok(removed)
}
