//! Route lookup (layer: net): the one place the `(router id, address)` keys of DVR_ROUTES
//! and DVR_ROUTES6 are built. Maps: reads DVR_ROUTES, DVR_ROUTES6. Verdicts: none.
use aya_ebpf::maps::lpm_trie::Key;
use dvr_common::{
    ip6::{Ip6, ROUTE6_KEY_PREFIX_BITS, Route6, Route6Key},
    route::{ROUTE_KEY_PREFIX_BITS, Route, RouteKey},
};

use crate::base::maps::{DVR_ROUTES, DVR_ROUTES6};

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

/// The IPv6 subnet of router `router_id` that `ip` lies in (longest prefix).
#[inline(always)]
pub fn lookup6(router_id: u32, ip: &Ip6) -> Option<&'static Route6> {
    let key = Key::new(
        ROUTE6_KEY_PREFIX_BITS + 128,
        Route6Key {
            router_id_be: router_id.to_be(),
            ip: *ip,
        },
    );
    DVR_ROUTES6.get(&key)
}
