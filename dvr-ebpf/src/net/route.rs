//! Route lookup (layer: net): the one place the `(router id, address)` key of DVR_ROUTES is
//! built. Maps: reads DVR_ROUTES. Verdicts: none.
use aya_ebpf::maps::lpm_trie::Key;
use dvr_common::route::{ROUTE_KEY_PREFIX_BITS, Route, RouteKey};

use crate::base::maps::DVR_ROUTES;

/// The subnet of router `router_id` that `ip_be` lies in (longest prefix).
#[inline(always)]
pub fn lookup(router_id: u32, ip_be: u32) -> Option<&'static Route> {
    let key = Key::new(
        ROUTE_KEY_PREFIX_BITS + 32,
        RouteKey {
            router_id_be: router_id.to_be(),
            ip_be,
        },
    );
    DVR_ROUTES.get(&key)
}

/// Whether `ip_be` lies in one of the subnets of router `router_id`.
#[inline(always)]
pub fn in_router(router_id: u32, ip_be: u32) -> bool {
    lookup(router_id, ip_be).is_some()
}
