//! Feature stages (top layer below the entries). Each calls only `net`, `base` and the
//! stages below it; the graph has no cycle:
//!
//! ```text
//! route -> fip, snat, icmp, vip      snat -> fip, ha      fip -> vip, ha
//! arp -> security, vip               ext_arp -> ha
//! security, ha, vip, icmp: leaves
//! ```
pub mod arp;
pub mod ext_arp;
pub mod fip;
pub mod ha;
pub mod icmp;
pub mod route;
pub mod security;
pub mod sg;
pub mod snat;
pub mod vip;
