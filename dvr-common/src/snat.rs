//! Centralized SNAT: compute hosts steer a router's non-FIP external traffic over the
//! tunnel to the host holding the router's `network:router_centralized_snat` port for the
//! subnet; that host translates it to the router's gateway IP with port-address translation
//! and sends replies straight back to the VM's host.

pub const SNAT_MAX: u32 = 16384;

/// Default PAT range (inclusive), as Linux's ephemeral ports.
pub const SNAT_PORT_MIN: u16 = 32768;
pub const SNAT_PORT_MAX: u16 = 60999;
/// Ports tried for a new flow before it is refused: the original port, then a
/// pseudo-random walk through the range.
pub const SNAT_PROBES: u32 = 32;

/// The router does SNAT (`external_gateway_info.enable_snat`).
pub const SNAT_ENABLED: u32 = 1;
/// The router is HA (`"ha": true` with `ha_hosts`): served only while its [`crate::maps::DVR_HA_FENCE`]
/// entry is live ([`fence_active`]); otherwise its frames are dropped (`drop_snat_standby`)
/// and ARP for its external IP is not answered.
pub const SNAT_HA: u32 = 2;
/// In a [`SnatSteer`]: the router has an IPv6 external address (`external_fixed_ips`), so
/// its IPv6 north-south traffic is routed (not translated) through the SNAT host, whatever
/// `enable_snat` says. Without it IPv6 to outside the router's subnets has no route.
pub const SNAT_ROUTED6: u32 = 4;

/// Whether an HA router is served now: its fence (`DVR_HA_FENCE[router_id]`, `None` when
/// absent) lies strictly after `now_ns` (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`).
#[inline(always)]
pub const fn fence_active(until_ns: Option<u64>, now_ns: u64) -> bool {
    match until_ns {
        Some(until) => until > now_ns,
        None => false,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatSteer {
    /// Tunnel address of the SNAT host (host order); 0 when it is this host.
    pub tunnel_ip_host: u32,
    pub router_id: u32,
    /// MAC of the csnat port on this subnet: destination MAC of steered frames.
    pub csnat_mac: crate::Mac,
    /// MTU of the router's external network: an IPv4 packet longer than this is answered
    /// (DF) or fragmented before it is steered.
    pub ext_mtu: u16,
    /// `SNAT_ENABLED`, `SNAT_ROUTED6`.
    pub flags: u32,
}
crate::assert_size!(SnatSteer, 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatRouter {
    pub router_id: u32,
    /// The router's external gateway IP (`external_fixed_ips`), network order.
    pub ext_ip_be: u32,
    /// Next hop on the external network (its subnet's gateway), network order.
    pub ext_gw_ip_be: u32,
    /// `SNAT_ENABLED`, `SNAT_HA`.
    pub flags: u32,
}
crate::assert_size!(SnatRouter, 16);

crate::user_pod!(SnatSteer, SnatRouter);

/// Next candidate port in the PAT probe walk: a prime stride over the range from a random
/// per-flow start, so concurrent flows spread out, a run of busy ports is left quickly, and
/// (the stride being coprime with the range) no port repeats before all were tried.
#[inline(always)]
pub const fn probe_port(min: u16, max: u16, start: u32, i: u32) -> u16 {
    const STRIDE: u32 = 7919;
    let span = (max as u32).saturating_sub(min as u32) + 1;
    let stride = if span.is_multiple_of(STRIDE) {
        1
    } else {
        STRIDE
    };
    let off = (start % span + (i % span) * (stride % span)) % span;
    (min as u32 + off) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_stay_in_range_and_spread() {
        let mut seen = [false; 16];
        for i in 0..16 {
            let p = probe_port(100, 115, 7, i);
            assert!((100..=115).contains(&p));
            seen[(p - 100) as usize] = true;
        }
        assert!(
            seen.iter().filter(|s| **s).count() >= 8,
            "walk covers the range: {seen:?}"
        );
        assert_eq!(probe_port(5, 5, 123, 9), 5);
    }

    #[test]
    fn fence_is_live_only_strictly_before_its_deadline() {
        assert!(!fence_active(None, 0));
        assert!(!fence_active(None, u64::MAX));
        assert!(fence_active(Some(1_000), 999));
        assert!(!fence_active(Some(1_000), 1_000));
        assert!(!fence_active(Some(1_000), 1_001));
        assert!(!fence_active(Some(0), 0), "a zeroed entry serves nothing");
    }

    #[test]
    fn flags_are_distinct_bits() {
        assert_eq!(SNAT_ENABLED & SNAT_HA, 0);
        assert!(SNAT_HA.is_power_of_two());
    }
}
