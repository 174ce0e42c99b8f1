//! Bottom layer: what every pipeline needs and that calls nothing above it. Packet access
//! and header layouts (`packet`), how a pipeline ends (`verdict`, with the one redirect
//! helper), the clocks (`clock`), the map declarations (`maps`) and the drop events for
//! `dvrctl monitor` (`events`) and the rate of the router's ICMP errors (`ratelimit`), the
//! tunnel's metadata for the VXLAN device (`tunnel_key`) and VXLAN encapsulation (`vxlan`).
//! Within the layer: `events` -> `packet` -> `verdict`, `events`, `ratelimit` -> `clock`,
//! `maps`.
pub mod clock;
pub mod events;
pub mod maps;
pub mod packet;
pub mod ratelimit;
pub mod tunnel_key;
pub mod verdict;
pub mod vxlan;
