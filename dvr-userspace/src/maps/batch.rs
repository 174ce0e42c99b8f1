//! The BPF batch syscalls (BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH), which aya 0.14 does
//! not wrap: walking a sparse hash map key by key visits all its buckets (the 512k-slot
//! conntrack map held the agent's loop for milliseconds), and one syscall per entry was a
//! quarter of programming 10,000 floating IPs.
use std::os::fd::RawFd;

use aya::Pod;

/// `union bpf_attr`, the `batch` member (BPF_MAP_*_BATCH commands).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per syscall.
const CHUNK: usize = 4096;

/// `bpf(cmd, attr)`.
fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` batch member; the callers make its pointers
    // refer to buffers of `count` keys and values of the map's sizes, which outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of the hash map `fd`, 4096 per call, handed to `each`; `None` when the kernel
/// does not batch this map (nothing was handed over).
pub fn lookup<K: Pod + Default, V: Pod + Default>(
    fd: RawFd,
    mut each: impl FnMut(&K, &V),
) -> Option<std::io::Result<()>> {
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // The hash map's cursor is a bucket index (u32); 8 bytes leave room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // EINVAL/ENOSYS/EOPNOTSUPP, or the kernel's internal ENOTSUPP (524).
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | 524)
                    ) =>
            {
                return None;
            }
            Err(e) => return Some(Err(e)),
        };
        let n = (attr.count as usize).min(CHUNK);
        keys.iter()
            .zip(&values)
            .take(n)
            .for_each(|(k, v)| each(k, v));
        if done {
            return Some(Ok(()));
        }
        if n == 0 {
            return Some(Err(std::io::Error::other(
                "BPF_MAP_LOOKUP_BATCH made no progress",
            )));
        }
        token_in = token_out;
        first = false;
    }
}

/// Write `entries` into the hash map `fd`, 4096 per call. On a failed call, the entries of
/// that chunk the kernel did not write (all of them when it does not batch this map) are
/// handed to `one_by_one`, which reports a real error with the map's name.
pub fn update<K: Pod, V: Pod, E>(
    fd: RawFd,
    entries: &[(K, V)],
    mut one_by_one: impl FnMut(&[(K, V)]) -> Result<(), E>,
) -> Result<(), E> {
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        if let Err(e) = bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) {
            let done = if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) {
                0
            } else {
                (attr.count as usize).min(chunk.len())
            };
            one_by_one(&chunk[done..])?;
        }
    }
    Ok(())
}
