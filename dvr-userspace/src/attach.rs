//! Host plumbing: bpffs, the VXLAN collect_md device, loading and pinning the object, and
//! attaching the tap program to taps as they come and go (TCX links on this kernel).
use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, Link as _, PinnedLink},
        tc::SchedClassifierLink,
    },
};

use crate::maps::{HostMaps, MapsError};

/// The VXLAN device the agent creates in the host's network namespace.
pub const TUNNEL_DEV: &str = "dvr-vx";
/// IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
pub const PROG_TAP: &str = "dvr_tap";
pub const PROG_TUNNEL: &str = "dvr_tunnel";
pub const PROG_EXT: &str = "dvr_ext";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device {dev}: {msg}")]
    Device { dev: String, msg: String },
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {prog}: {source}")]
    Program {
        prog: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {prog} on {iface}: attach failed: {source}")]
    Attach {
        prog: &'static str,
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("link on {iface}: {source}")]
    Link {
        iface: String,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning map {name}: {source}")]
    Pin {
        name: String,
        source: aya::pin::PinError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// Whether `path` is on a bpf filesystem.
fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; c is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Make sure /sys/fs/bpf is a bpffs (mounting it when it is not) and that `root` lies on it.
pub fn ensure_bpffs(root: &Path) -> Result<(), AttachError> {
    let base = Path::new("/sys/fs/bpf");
    if !on_bpffs(base) {
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(base)
            .status();
        if !matches!(status, Ok(s) if s.success()) || !on_bpffs(base) {
            return Err(AttachError::Bpffs(format!(
                "{} is not a bpf filesystem and `mount -t bpf bpf {}` failed (are you root?)",
                base.display(),
                base.display()
            )));
        }
    }
    std::fs::create_dir_all(root).map_err(|source| AttachError::PinDir {
        path: root.into(),
        source,
    })?;
    if !on_bpffs(root) {
        return Err(AttachError::Bpffs(format!(
            "{} is not on a bpf filesystem",
            root.display()
        )));
    }
    Ok(())
}

/// MAC address of interface `name` in the current network namespace (SIOCGIFHWADDR).
pub fn mac_of(name: &str) -> Option<[u8; 6]> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a datagram socket only serves the ioctl; ifreq is zeroed plain data with the
    // NUL-terminated name copied in; the socket is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        libc::close(fd);
        if r != 0 {
            return None;
        }
        let sa = req.ifr_ifru.ifru_hwaddr.sa_data;
        Some([
            sa[0] as u8,
            sa[1] as u8,
            sa[2] as u8,
            sa[3] as u8,
            sa[4] as u8,
            sa[5] as u8,
        ])
    }
}

/// ifindex of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Every interface of the current network namespace: name -> ifindex. Uses
/// `if_nameindex(3)` (netlink), which sees this process's namespace; /sys/class/net would
/// show the namespace sysfs was mounted in.
pub fn interfaces() -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    // SAFETY: if_nameindex returns a NULL-terminated array we free with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.insert(name, (*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Create (or adopt) the VXLAN collect_md device and bring it up; returns its ifindex.
pub fn ensure_tunnel_dev() -> Result<u32, AttachError> {
    let dev_err = |msg: String| AttachError::Device {
        dev: TUNNEL_DEV.into(),
        msg,
    };
    match ip(&["-d", "link", "show", "dev", TUNNEL_DEV]) {
        Ok(detail) => {
            if !(detail.contains("vxlan") && detail.contains("external")) {
                return Err(dev_err(
                    "exists and is not a VXLAN collect_md (external) device; not touching it"
                        .into(),
                ));
            }
        }
        Err(_) => {
            let port = VXLAN_PORT.to_string();
            ip(&[
                "link",
                "add",
                TUNNEL_DEV,
                "type",
                "vxlan",
                "external",
                "dstport",
                &port,
                "nolearning",
            ])
            .map_err(|e| dev_err(format!("create failed: {e}")))?;
        }
    }
    ip(&["link", "set", "dev", TUNNEL_DEV, "up"])
        .map_err(|e| dev_err(format!("set up failed: {e}")))?;
    ifindex(TUNNEL_DEV).ok_or_else(|| dev_err("vanished after creation".into()))
}

/// A program of the loaded object, by name.
pub fn program<'a>(
    ebpf: &'a mut Ebpf,
    prog: &'static str,
) -> Result<&'a mut SchedClassifier, AttachError> {
    let p = ebpf.program_mut(prog).ok_or(AttachError::Program {
        prog,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into()
        .map_err(|source| AttachError::Program { prog, source })
}

/// Load-time sizes.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Conntrack capacity in entries (two per flow).
    pub ct_max: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ct_max: dvr_common::nat::CT_MAX,
        }
    }
}

/// Load the embedded object with every map pinned in `dir` (which must exist on bpffs):
/// maps already pinned there are adopted with their contents, unless this build cannot use
/// them (see [`crate::maps::incompatible_pins`]), which are recreated. Programs are loaded
/// (verified), not attached.
pub fn load_object(dir: &Path, opts: &LoadOptions) -> Result<Ebpf, AttachError> {
    for (name, why) in crate::maps::incompatible_pins(dir, opts.ct_max) {
        tracing::warn!(map = name, reason = %why, "pinned map not adoptable; recreating it empty");
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|source| AttachError::PinDir { path, source })?;
    }
    let paths: Vec<(&str, PathBuf)> = crate::maps::NAMES
        .iter()
        .map(|n| (*n, dir.join(n)))
        .collect();
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(dvr_common::nat::CT, opts.ct_max);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(crate::ebpf::OBJECT)?;
    for prog in [PROG_TAP, PROG_TUNNEL, PROG_EXT] {
        program(&mut ebpf, prog)?
            .load()
            .map_err(|source| AttachError::Program { prog, source })?;
    }
    Ok(ebpf)
}

/// A program attached to an interface through a TCX link pinned at
/// `<dir>/links/<iface>@<ifindex>`: it stays attached when the agent exits, and the next
/// agent swaps its own program in atomically (BPF_LINK_UPDATE), so traffic never sees a gap.
struct Attached {
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
    links: BTreeMap<String, Attached>,
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

    /// Attach `prog` to `iface` (ingress), taking over the pinned link a previous agent left
    /// for the same interface instance if there is one.
    fn attach(&mut self, prog: &'static str, iface: &str, ifindex: u32) -> Result<(), AttachError> {
        let err = |source| AttachError::Attach {
            prog,
            iface: iface.into(),
            source,
        };
        let path = link_pin(&self.dir, iface, ifindex);
        let p = program(&mut self.ebpf, prog)?;
        let adopted = PinnedLink::from_pin(&path)
            .ok()
            .and_then(|old| SchedClassifierLink::try_from(FdLink::from(old)).ok());
        let id = match adopted {
            Some(link) => p.attach_to_link(link).map_err(err)?,
            None => p.attach(iface, TcAttachType::Ingress).map_err(err)?,
        };
        let link = p.take_link(id).map_err(err)?;
        let fd: FdLink = link.try_into().map_err(|e| AttachError::Link {
            iface: iface.into(),
            source: e,
        })?;
        // The adopted link is the one pinned at `path`: re-pin our handle in its place.
        let _ = std::fs::remove_file(&path);
        let link = fd.pin(&path).map_err(|source| AttachError::Pin {
            name: path.display().to_string(),
            source,
        })?;
        self.links.insert(
            iface.into(),
            Attached {
                ifindex,
                prog,
                link,
            },
        );
        Ok(())
    }

    fn detach(&mut self, iface: &str) {
        if let Some(a) = self.links.remove(iface) {
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
            .map(|(n, a)| (n.clone(), a.ifindex))
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
            .filter(|(name, a)| a.prog == PROG_TAP && want.get(*name) != Some(&a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            self.detach(name);
        }
        Ok(stale)
    }

    /// Attach to every tap in `want` not attached yet.
    pub fn attach_new(&mut self, want: &BTreeMap<String, u32>) -> Result<Vec<String>, AttachError> {
        let mut added = Vec::new();
        for (name, ifx) in want {
            if self.links.contains_key(name) {
                continue;
            }
            self.attach(PROG_TAP, name, *ifx)?;
            added.push(name.clone());
        }
        Ok(added)
    }

    /// The external interface currently served: (name, ifindex).
    pub fn external(&self) -> Option<(String, u32)> {
        self.links
            .iter()
            .find(|(_, a)| a.prog == PROG_EXT)
            .map(|(n, a)| (n.clone(), a.ifindex))
    }

    /// Attach the external program to `want` (name, ifindex), detaching it from an
    /// interface that went away, was recreated or is no longer configured.
    pub fn sync_external(&mut self, want: Option<(&str, u32)>) -> Result<(), AttachError> {
        let now = self.external();
        if now.as_ref().map(|(n, i)| (n.as_str(), *i)) == want {
            return Ok(());
        }
        if let Some((name, _)) = now {
            self.detach(&name);
        }
        if let Some((name, ifx)) = want {
            self.attach(PROG_EXT, name, ifx)?;
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
    if let Ok(detail) = ip(&["-d", "link", "show", "dev", TUNNEL_DEV])
        && detail.contains("vxlan")
        && detail.contains("external")
    {
        ip(&["link", "del", "dev", TUNNEL_DEV]).map_err(|msg| AttachError::Device {
            dev: TUNNEL_DEV.into(),
            msg,
        })?;
        removed.push(format!("device {TUNNEL_DEV}"));
    }
    Ok(removed)
}
