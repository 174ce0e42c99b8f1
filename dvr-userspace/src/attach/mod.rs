//! Host plumbing: bpffs, the VXLAN collect_md device, loading and pinning the object, and
//! attaching the tap program to taps as they come and go (TCX links on this kernel).
//!
//! - `bpffs`: the bpf filesystem the pins live on.
//! - `load`: the embedded object, loaded with its maps pinned.
//! - `datapath`: the loaded [`Datapath`], its TCX links, and [`uninstall`].
//! - `tunnel`: the VXLAN collect_md device `dvr-vx` ([`ensure_tunnel_dev`]).
//! - [`netlink`]: the rtnetlink client (links, the interface list, MAC addresses).
//! - `linkwatch`: link add/remove notifications ([`LinkWatch`]).
mod bpffs;
mod datapath;
mod error;
mod linkwatch;
mod load;
pub mod netlink;
mod tunnel;

pub use bpffs::ensure_bpffs;
pub use datapath::{Datapath, uninstall, xdp_pinned};
pub use error::AttachError;
pub use linkwatch::LinkWatch;
pub use load::{
    LoadOptions, PROG_EXT, PROG_EXT_XDP, PROG_TAP, PROG_TAP_OUT, PROG_TUNNEL, PROG_UNDERLAY,
    load_object, program, xdp_program,
};
pub use netlink::{interface_with_ipv4, interfaces, link_kinds, mac_of, mtu_of};
pub use tunnel::{TUNNEL_DEV, VXLAN_PORT, enable_tunnel_forwarding, ensure_tunnel_dev};
