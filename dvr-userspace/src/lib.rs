//! dvr-agent and dvrctl share this library. Layers and ownership: `docs/ARCHITECTURE.md`.
//!
//! - [`source`]: where state comes from (a watched file, etcd) and the HA election.
//! - [`model`]: Neutron-shaped router state and its validation.
//! - [`compile`]: (state, host, HA election view) -> the exact map entries that host needs; pure.
//! - [`maps`]: typed handles on the pinned maps; the only place map names are looked up.
//! - [`reconcile`]: diff desired vs actual entries and apply in a safe order.
//! - [`attach`]: bpffs, the VXLAN device, program loading, tap attach/detach.
//! - [`clock`]: every clock read (the datapath's two kernel clocks).
//! - [`agent`]: the control loop of `dvr-agent`.
//! - [`ctsync`]: conntrack sync between the candidates of HA routers.
//! - [`ctl`]: dvrctl subcommands.
pub mod agent;
pub mod arp;
pub mod attach;
pub mod clock;
pub mod compile;
pub mod conntrack;
pub mod ctl;
pub mod ctsync;
pub mod ebpf;
pub mod json;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod ndp;
pub mod reconcile;
pub mod scope;
pub mod source;
#[cfg(test)]
pub(crate) mod testing;
