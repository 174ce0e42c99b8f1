//! Routers: their external gateway and, for HA routers, the hosts that may hold their
//! centralized role.

use super::check::{Known, Report};
use super::host::{AgentMode, Host};
use super::network::{
    FamilySubnet, FixedIp, FixedIp6, FixedIpAt, FixedIpPos, Network, Subnet, Subnet6,
    check_external_network, fixed_ip_inside, fixed_ip_subnet, read_fixed_ips,
};
use super::parse::{Element, Reader, conv_bool, conv_id, conv_string, conv_u32, describe};
use super::table::HashMap;
use crate::json::Value;

/// A router's `external_gateway_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalGateway {
    pub network_id: String,
    pub enable_snat: bool,
    /// The IPv4 entries of `external_fixed_ips`.
    pub external_fixed_ips: Vec<FixedIp>,
    /// The IPv6 entries of `external_fixed_ips`.
    pub external_fixed_ips6: Vec<FixedIp6>,
    /// Where each entry sat in the state's `external_fixed_ips` (for error paths).
    pub(super) fixed_ip_pos: FixedIpPos,
}

/// A Neutron router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    pub name: Option<String>,
    pub external_gateway: Option<ExternalGateway>,
    pub distributed: bool,
    pub ha: bool,
    /// `ha_hosts`: the `dvr_snat` hosts that may hold the router's centralized role, as
    /// listed (see [`Router::ha_candidates`] for the order of preference).
    pub ha_hosts: Vec<HaHost>,
}

/// One entry of a router's `ha_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaHost {
    pub host: String,
    /// Higher is preferred; ties go to the host name that sorts first.
    pub priority: u32,
}

impl Router {
    /// True when the router's centralized role is elected among `ha_hosts` (docs/HA.md);
    /// otherwise it is where its csnat ports are bound.
    pub fn is_ha_managed(&self) -> bool {
        self.ha && !self.ha_hosts.is_empty()
    }

    /// `ha_hosts`, most preferred first.
    pub fn ha_candidates(&self) -> Vec<&HaHost> {
        let mut c: Vec<&HaHost> = self.ha_hosts.iter().collect();
        c.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.host.cmp(&b.host))
        });
        c
    }
}

impl Element for Router {
    const KIND: &'static str = "router";
    const LIST: &'static str = "routers";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let external_gateway = match r.present("external_gateway_info") {
            None => None,
            Some(Value::Object(gw)) => {
                let mut g = r.child("external_gateway_info.", gw);
                let network_id = g.req("network_id", conv_id);
                let enable_snat = g.opt("enable_snat", conv_bool).unwrap_or(true);
                let fixed = read_fixed_ips(&mut g, "external_fixed_ips", false);
                network_id.map(|network_id| ExternalGateway {
                    network_id,
                    enable_snat,
                    external_fixed_ips: fixed.v4,
                    external_fixed_ips6: fixed.v6,
                    fixed_ip_pos: fixed.pos,
                })
            }
            Some(other) => {
                let message = format!("expected an object or null, got {}", describe(other));
                r.error("external_gateway_info", message);
                None
            }
        };
        let distributed = r.opt("distributed", conv_bool).unwrap_or(true);
        let ha = r.opt("ha", conv_bool).unwrap_or(false);
        let mut ha_hosts = Vec::new();
        for (path, obj) in r.list("ha_hosts", false) {
            let mut h = r.child(&path, obj);
            let host = h.req("host", conv_id);
            let priority = h.req("priority", conv_u32);
            if let (Some(host), Some(priority)) = (host, priority) {
                ha_hosts.push(HaHost { host, priority });
            }
        }
        Some(Router {
            id: id?,
            name,
            external_gateway,
            distributed,
            ha,
            ha_hosts,
        })
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// A gateway is on an external network, its addresses on subnets of that network.
pub(super) fn check_routers(
    out: &mut Report<'_>,
    routers: &[Router],
    networks: Known<'_, Network>,
    subnets: Known<'_, Subnet>,
    subnets6: Known<'_, Subnet6>,
) {
    for r in routers {
        let Some(gw) = &r.external_gateway else {
            continue;
        };
        check_external_network(
            out,
            networks,
            "router",
            &r.id,
            "external_gateway_info.network_id",
            &gw.network_id,
        );
        let pos = &gw.fixed_ip_pos;
        let v6 = gw.external_fixed_ips6.iter().enumerate();
        let v6 = v6.map(|(i, f)| (pos.v6(i), f.subnet_id.as_str(), f.ip));
        check_gateway_ips(out, r, gw, v6, subnets6, subnets);
        let v4 = gw.external_fixed_ips.iter().enumerate();
        let v4 = v4.map(|(i, f)| (pos.v4(i), f.subnet_id.as_str(), f.ip));
        check_gateway_ips(out, r, gw, v4, subnets, subnets6);
    }
}

/// The gateway's `external_fixed_ips` of `S`'s family, as (position in the list, subnet id,
/// address): each on an existing subnet of the gateway network, and inside it.
fn check_gateway_ips<'a, S: FamilySubnet, O>(
    out: &mut Report<'_>,
    r: &Router,
    gw: &ExternalGateway,
    fixed_ips: impl Iterator<Item = (usize, &'a str, S::Addr)>,
    subnets: Known<'_, S>,
    other: Known<'_, O>,
) {
    for (at, subnet_id, ip) in fixed_ips {
        let at = FixedIpAt {
            kind: "router",
            id: &r.id,
            prefix: format!("external_gateway_info.external_fixed_ips[{at}]"),
        };
        let Some((_, sub)) = fixed_ip_subnet(out, &at, subnet_id, ip, subnets, other) else {
            continue;
        };
        if sub.network_id() != gw.network_id {
            let message = format!(
                "subnet {} is on network {}, not on the gateway network {}",
                sub.id(),
                sub.network_id(),
                gw.network_id
            );
            out.error("router", &r.id, &at.subnet_field(), message);
        } else {
            fixed_ip_inside(out, &at, sub, ip);
        }
    }
}

/// `ha_hosts`: only with `ha: true`, at least two distinct `dvr_snat` hosts with an
/// external interface.
pub(super) fn check_ha_hosts(out: &mut Report<'_>, routers: &[Router], hosts: Known<'_, Host>) {
    for r in routers.iter().filter(|r| !r.ha_hosts.is_empty()) {
        if !r.ha {
            let message = "only an HA router (ha: true) has ha_hosts";
            out.error("router", &r.id, "ha_hosts", message);
            continue;
        }
        if r.ha_hosts.len() < 2 {
            let message = "an HA router needs at least two ha_hosts";
            out.error("router", &r.id, "ha_hosts", message);
        }
        let mut seen: HashMap<&str, usize> = HashMap::default();
        for (i, c) in r.ha_hosts.iter().enumerate() {
            let field = format!("ha_hosts[{i}].host");
            if let Some(first) = seen.insert(&c.host, i) {
                let message = format!("host {} is listed twice (also ha_hosts[{first}])", c.host);
                out.error("router", &r.id, &field, message);
                continue;
            }
            let problem = match hosts.table.get(&c.host) {
                None if hosts.is_broken(&c.host) => None,
                None => Some(format!("host {} does not exist", c.host)),
                Some(h) => match (h.agent_mode, &h.external_interface) {
                    (AgentMode::DvrSnat, Some(_)) => None,
                    (AgentMode::DvrSnat, None) => Some(format!(
                        "host {} is dvr_snat but has no external_interface",
                        c.host
                    )),
                    (mode, _) => Some(format!(
                        "host {} is agent_mode {mode}, not dvr_snat",
                        c.host
                    )),
                },
            };
            if let Some(message) = problem {
                out.error("router", &r.id, &field, message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use serde_json::Value;

    #[test]
    fn router_gateway_network_exists_and_is_external() {
        let errors = errors_after(|v| {
            elem(v, "routers", "id", "router1")["external_gateway_info"]["network_id"] =
                "net1".into();
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.network_id",
            "network net1 is not external",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[0].subnet_id",
            "not on the gateway network net1",
        );
        let errors = errors_after(|v| {
            elem(v, "routers", "id", "router1")["external_gateway_info"]["network_id"] =
                "nope".into();
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.network_id",
            "network nope does not exist",
        );
        // No gateway at all is fine.
        let mut v = fixture_value();
        elem(&mut v, "routers", "id", "router1")["external_gateway_info"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn router_external_fixed_ip_subnet_and_address() {
        let errors = errors_after(|v| {
            let gw = &mut elem(v, "routers", "id", "router1")["external_gateway_info"];
            gw["external_fixed_ips"] = serde_json::json!([
                {"subnet_id": "nope", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet", "ip_address": "198.51.100.10"}
            ]);
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[0].subnet_id",
            "subnet nope does not exist",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[1].ip_address",
            "198.51.100.10 is outside subnet ext-subnet",
        );
    }

    #[test]
    fn router_external_fixed_ips6() {
        let ext6 = serde_json::json!({"id": "ext-subnet6", "network_id": "ext",
            "cidr": "2001:db8::/64", "ip_version": 6, "gateway_ip": "2001:db8::1"});
        let mut v = fixture_value();
        push(&mut v, "subnets", ext6.clone());
        elem(&mut v, "routers", "id", "router1")["external_gateway_info"]["external_fixed_ips"] = serde_json::json!([
            {"subnet_id": "ext-subnet6", "ip_address": "2001:db8::10"},
            {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"}
        ]);
        let s = state_of(&v);
        let gw = s.router("router1").and_then(|r| r.external_gateway.clone());
        assert_eq!(
            gw.map(|g| (g.external_fixed_ips.len(), g.external_fixed_ips6.len())),
            Some((1, 1))
        );
        let errors = errors_after(|v| {
            push(v, "subnets", ext6);
            let gw = &mut elem(v, "routers", "id", "router1")["external_gateway_info"];
            gw["external_fixed_ips"] = serde_json::json!([
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet6", "ip_address": "2001:db9::10"},
                {"subnet_id": "ext-subnet", "ip_address": "2001:db8::11"},
                {"subnet_id": "ext-subnet6", "ip_address": "203.0.113.12"}
            ]);
        });
        let f =
            |i: usize, what: &str| format!("external_gateway_info.external_fixed_ips[{i}].{what}");
        assert_error(
            &errors,
            "router",
            "router1",
            &f(1, "ip_address"),
            "2001:db9::10 is outside subnet ext-subnet6 (2001:db8::/64)",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            &f(2, "ip_address"),
            "2001:db8::11 is an IPv6 address, subnet ext-subnet is IPv4",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            &f(3, "ip_address"),
            "203.0.113.12 is an IPv4 address, subnet ext-subnet6 is IPv6",
        );
        assert_eq!(errors.len(), 3, "{}", crate::model::display_lines(&errors));
    }

    #[test]
    fn bad_ha_hosts_name_router_and_field() {
        let e = errors_after(|v| {
            with_ha(
                v,
                false,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-c", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts", "only an HA router");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts", "at least two");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-a", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].host", "not dvr_snat");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-b", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].host", "listed twice");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "nowhere", "priority": -2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].priority", "unsigned");
    }
}
