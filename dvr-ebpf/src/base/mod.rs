//! Bottom layer: what every pipeline needs and that calls nothing above it. Packet access
//! and header layouts (`packet`), how a pipeline ends (`verdict`, with the one redirect
//! helper), the clocks (`clock`), the map declarations (`maps`) and the drop events for
//! `dvrctl monitor` (`events`). Within the layer: `events` -> `packet` -> `verdict`,
//! `events` -> `clock`, `maps`.
pub mod clock;
pub mod events;
pub mod maps;
pub mod packet;
pub mod verdict;
