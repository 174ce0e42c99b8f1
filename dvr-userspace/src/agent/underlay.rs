//! Whether the underlay has room for every tenant network's packets: VXLAN over IPv4 adds
//! [`VXLAN_OVERHEAD`] bytes (inner Ethernet 14, VXLAN 8, UDP 8, outer IPv4 20) to a tenant
//! packet, so a network whose `mtu` plus that exceeds the MTU of the interface holding this
//! host's tunnel address has frames the underlay drops (Neutron sizes tenant networks
//! `global_physnet_mtu` less the overhead for the same reason). Logged as a warning naming
//! the network, once per (network, mtu, underlay MTU).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use tracing::warn;

use crate::attach;
use crate::model::State;

pub use dvr_common::config::VXLAN_OVERHEAD;

/// What was already said.
#[derive(Default)]
pub struct UnderlayCheck {
    warned: HashSet<(String, u32, u32)>,
}

impl UnderlayCheck {
    /// Checks `state`'s tenant networks against the underlay of `tunnel_ip`.
    pub fn check(&mut self, state: &State, tunnel_ip: Ipv4Addr) {
        let Some((dev, underlay_mtu)) = underlay(tunnel_ip) else {
            return;
        };
        for (network, mtu) in too_large(state, underlay_mtu) {
            if self.warned.insert((network.to_string(), mtu, underlay_mtu)) {
                warn!(
                    network,
                    mtu,
                    underlay = dev,
                    underlay_mtu,
                    overhead = VXLAN_OVERHEAD,
                    "network mtu plus the VXLAN overhead exceeds the underlay's MTU: its longest \
                     frames will be dropped between hosts"
                );
            }
        }
    }
}

/// The tenant networks of `state` whose `mtu` plus the overhead exceeds `underlay_mtu`,
/// with their `mtu`.
fn too_large(state: &State, underlay_mtu: u32) -> Vec<(&str, u32)> {
    state
        .networks()
        .iter()
        .filter(|n| n.tenant_vni().is_some())
        .filter(|n| n.mtu.saturating_add(VXLAN_OVERHEAD) > underlay_mtu)
        .map(|n| (n.id.as_str(), n.mtu))
        .collect()
}

/// The interface holding `ip` in this network namespace, and its MTU.
fn underlay(ip: Ipv4Addr) -> Option<(String, u32)> {
    let name = attach::interface_with_ipv4(ip)?;
    let mtu = attach::mtu_of(&name)?;
    Some((name, mtu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn names_the_networks_too_large_for_the_underlay() {
        let mut v = fixture_value();
        elem(&mut v, "networks", "id", "net2")["mtu"] = 1480.into();
        let state = state_of(&v);
        // net1 1450 fits a 1500 underlay exactly; net2 does not; the external one is not
        // carried in the tunnel.
        assert_eq!(too_large(&state, 1500), [("net2", 1480)]);
        assert_eq!(too_large(&state, 1400).len(), 2);
        assert!(too_large(&state, 9000).is_empty());
    }
}
