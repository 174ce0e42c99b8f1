//! Pinned BPF maps made by hand, for tests of what the agent does with pins it finds: a pin
//! directory on bpffs that is removed on drop, and maps of any kind, key, value and capacity
//! created with `BPF_MAP_CREATE` and pinned there. Needs root (CAP_BPF) and bpffs at
//! `/sys/fs/bpf`; fails with that message without them.
use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// A directory on bpffs, removed with everything pinned in it on drop.
pub struct PinDir(PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/<what>-<pid>-<n>`.
    pub fn new(what: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("this test needs root (CAP_BPF and bpffs): run it as root");
        }
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "this test needs bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf): create {}",
                dir.display()
            )
        })?;
        Ok(PinDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Create a map (`map_type`, key and value sizes, capacity) and pin it as `name`.
    pub fn pin_map(
        &self,
        name: &str,
        map_type: u32,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
    ) -> Result<()> {
        let data = MapData::from_fd(create(map_type, key_size, value_size, max_entries)?)
            .context("adopt the new map")?;
        data.pin(self.0.join(name))
            .with_context(|| format!("pin {name} in {}", self.0.display()))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `BPF_MAP_CREATE`.
pub fn create(
    map_type: u32,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
) -> Result<OwnedFd> {
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = CreateAttr {
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: BPF_MAP_CREATE reads the attribute we own, of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0 as libc::c_long,
            &raw const attr,
            size_of::<CreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!(
            "this test needs root (CAP_BPF): cannot create a BPF map: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
