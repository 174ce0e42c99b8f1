//! Middle layer: what the feature stages build on. The packet's one parsed description
//! (`flow` for IPv4, `flow6` for IPv6), connection tracking (`conntrack`), header rewrites with their checksums, TTL
//! and ICMP error translation (`rewrite`), delivery at L2 (`l2`), the route lookup
//! (`route`), IPv4 fragmentation of what is delivered (`frag`) and the way into the tunnel
//! (`encap`). Calls only `base`; within the layer: `l2` -> `encap`, `rewrite` -> `conntrack`
//! -> `flow`, `flow6` -> `flow`.
pub mod conntrack;
pub mod encap;
pub mod flow;
pub mod flow6;
pub mod frag;
pub mod l2;
pub mod rewrite;
pub mod route;
