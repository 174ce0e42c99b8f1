//! Feature stages (top layer below the entries). Each calls only `net`, `base` and the
//! stages below it; the graph has no cycle:
//!
//! ```text
//! route -> fip, snat, icmp, mtu, vip   snat -> fip, ha, mtu   fip -> vip, ha, mtu
//! arp -> security, vip                  ext_arp -> ha          mtu -> icmp
//! route6 -> icmp6, mtu, north6          nd -> security
//! north6 -> icmp6, ha, mtu              ext_nd -> nd, ha
//! security, ha, vip, icmp, icmp6, sg: leaves
//! ```
pub mod arp;
pub mod ext_arp;
pub mod ext_nd;
pub mod fip;
pub mod ha;
pub mod icmp;
pub mod icmp6;
pub mod mtu;
pub mod nd;
pub mod north6;
pub mod route;
pub mod route6;
pub mod security;
pub mod sg;
pub mod snat;
pub mod vip;
