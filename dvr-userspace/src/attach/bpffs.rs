//! The bpf filesystem the maps and links are pinned on.
use std::{ffi::CString, path::Path, process::Command};

use super::error::AttachError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
