//! dvr-agent and dvrctl share this library.
//!
//! - [`model`]: Neutron-shaped router state and its validation.
//! - [`compile`]: (state, host) -> the exact map entries that host needs; pure.
//! - [`maps`]: typed handles on the pinned maps; the only place map names are looked up.
//! - [`reconcile`]: diff desired vs actual entries and apply in a safe order.
//! - [`attach`]: VXLAN device, bpffs, program loading, tap attach/detach.
//! - [`ctl`]: dvrctl subcommands.
pub mod compile;
pub mod ebpf;
pub mod model;
