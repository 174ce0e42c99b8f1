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
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
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

/// The loaded object, its pinned maps and the taps it is attached to.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: HostMaps,
    pub dir: PathBuf,
    pub tunnel_ifindex: u32,
    taps: BTreeMap<String, (u32, SchedClassifierLinkId)>,
    /// The external interface the external program is attached to.
    ext: Option<(String, u32, SchedClassifierLinkId)>,
}

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

/// Load the embedded object, pin every map in `dir` (which must exist on bpffs) and load
/// (verify) every program without attaching it.
pub fn load_object(dir: &Path, opts: &LoadOptions) -> Result<Ebpf, AttachError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(dvr_common::nat::CT, opts.ct_max)
        .load(crate::ebpf::OBJECT)?;
    // Only the datapath's own maps: the compiler may add internal ones (`.rodata*` for
    // constants), which are frozen and of no use to dvrctl.
    for (name, map) in ebpf.maps().filter(|(n, _)| n.starts_with("DVR_")) {
        map.pin(dir.join(name)).map_err(|source| AttachError::Pin {
            name: name.into(),
            source,
        })?;
    }
    for prog in [PROG_TAP, PROG_TUNNEL, PROG_EXT] {
        program(&mut ebpf, prog)?
            .load()
            .map_err(|source| AttachError::Program { prog, source })?;
    }
    Ok(ebpf)
}

impl Datapath {
    /// Load the embedded object, pin its maps under `<root>/<host>` (replacing pins a
    /// previous run left: nothing stale survives a restart), create the tunnel device and
    /// attach the tunnel program to it.
    pub fn load(root: &Path, host: &str, opts: &LoadOptions) -> Result<Self, AttachError> {
        ensure_bpffs(root)?;
        let dir = crate::maps::host_dir(root, host);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| AttachError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|source| AttachError::PinDir {
            path: dir.clone(),
            source,
        })?;
        let tunnel_ifindex = ensure_tunnel_dev()?;
        let mut ebpf = load_object(&dir, opts)?;
        program(&mut ebpf, PROG_TUNNEL)?
            .attach(TUNNEL_DEV, TcAttachType::Ingress)
            .map_err(|source| AttachError::Attach {
                prog: PROG_TUNNEL,
                iface: TUNNEL_DEV.into(),
                source,
            })?;
        let maps = HostMaps::open(&dir)?;
        Ok(Self {
            ebpf,
            maps,
            dir,
            tunnel_ifindex,
            taps: BTreeMap::new(),
            ext: None,
        })
    }

    /// Taps the tap program is attached to: name -> ifindex.
    pub fn attached(&self) -> BTreeMap<String, u32> {
        self.taps
            .iter()
            .map(|(n, (i, _))| (n.clone(), *i))
            .collect()
    }

    /// Detach from taps not in `want` (or whose ifindex changed: the device was recreated).
    pub fn detach_stale(
        &mut self,
        want: &BTreeMap<String, u32>,
    ) -> Result<Vec<String>, AttachError> {
        let stale: Vec<String> = self
            .taps
            .iter()
            .filter(|(name, (ifx, _))| want.get(*name) != Some(ifx))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            if let Some((_, link)) = self.taps.remove(name) {
                // The link may already be gone with its device; detaching then only closes it.
                let _ = program(&mut self.ebpf, PROG_TAP)?.detach(link);
            }
        }
        Ok(stale)
    }

    /// Attach to every tap in `want` not attached yet.
    pub fn attach_new(&mut self, want: &BTreeMap<String, u32>) -> Result<Vec<String>, AttachError> {
        let mut added = Vec::new();
        for (name, ifx) in want {
            if self.taps.contains_key(name) {
                continue;
            }
            let link = program(&mut self.ebpf, PROG_TAP)?
                .attach(name, TcAttachType::Ingress)
                .map_err(|source| AttachError::Attach {
                    prog: PROG_TAP,
                    iface: name.clone(),
                    source,
                })?;
            self.taps.insert(name.clone(), (*ifx, link));
            added.push(name.clone());
        }
        Ok(added)
    }

    /// The external interface currently served: (name, ifindex).
    pub fn external(&self) -> Option<(String, u32)> {
        self.ext.as_ref().map(|(n, i, _)| (n.clone(), *i))
    }

    /// Attach the external program to `want` (name, ifindex), detaching it from an
    /// interface that went away, was recreated or is no longer configured.
    pub fn sync_external(&mut self, want: Option<(&str, u32)>) -> Result<(), AttachError> {
        let same = match (&self.ext, want) {
            (Some((n, i, _)), Some((wn, wi))) => n == wn && *i == wi,
            (None, None) => true,
            _ => false,
        };
        if same {
            return Ok(());
        }
        if let Some((_, _, link)) = self.ext.take() {
            let _ = program(&mut self.ebpf, PROG_EXT)?.detach(link);
        }
        if let Some((name, ifx)) = want {
            let link = program(&mut self.ebpf, PROG_EXT)?
                .attach(name, TcAttachType::Ingress)
                .map_err(|source| AttachError::Attach {
                    prog: PROG_EXT,
                    iface: name.into(),
                    source,
                })?;
            self.ext = Some((name.into(), ifx, link));
        }
        Ok(())
    }

    /// Detach everything, delete the tunnel device and remove the pins.
    pub fn teardown(mut self) -> Result<(), AttachError> {
        self.detach_stale(&BTreeMap::new())?;
        self.sync_external(None)?;
        let dir = self.dir.clone();
        drop(self);
        let _ = ip(&["link", "del", "dev", TUNNEL_DEV]);
        std::fs::remove_dir_all(&dir).map_err(|source| AttachError::PinDir { path: dir, source })
    }
}
