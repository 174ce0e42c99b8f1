//! The BPF object, embedded once so one agent binary is all a host needs.

/// The `dvr` object built by `build.rs` from `dvr-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dvr"));

/// The `dvr-floor` object: the benchmark's floor (`dvr-bench`), never loaded by the agent.
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dvr-floor"));
