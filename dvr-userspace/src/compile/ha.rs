//! HA routers (docs/HA.md): the election view compile takes as an input ([`HaRuntime`]),
//! what it decides (where compute hosts steer, whether this host serves, whether the
//! datapath checks the fence), and the roles the election and the conntrack sync work on
//! ([`HaRole`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::entries::fnv1a32;
use crate::model::{Router, State};

/// Who holds the centralized role of HA routers right now, as the agent learned it from
/// etcd. Not part of the Neutron state: it never makes a state invalid, and a holder that
/// is not a candidate of the router is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaRuntime {
    /// Router id -> the host last known to hold its role (kept while the role is vacant, so
    /// compute hosts keep steering somewhere during an election).
    pub holders: BTreeMap<String, String>,
    /// Routers whose role this agent's host holds now.
    pub active_here: BTreeSet<String>,
}

/// An HA router as one of its candidate hosts sees it: what the election and the conntrack
/// sync need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaRole {
    pub router_id: String,
    /// `fnv1a32(router_id)`: the key of the datapath's fence map.
    pub router_hash: u32,
    /// Candidates, most preferred first.
    pub candidates: Vec<HaCandidate>,
    /// The router's external address: port-address translated flows carry it.
    pub ext_ip: Option<Ipv4Addr>,
    /// Floating -> fixed IP of the FIPs served wherever the router is elected
    /// (`dvr_no_external` ports and VIPs).
    pub central_fips: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaCandidate {
    pub host: String,
    pub priority: u32,
    pub tunnel_ip: Ipv4Addr,
}

/// The host compute hosts steer an HA router's centralized traffic to: the elected
/// holder (or the last one while the role is vacant), else the most preferred candidate.
/// `ha`: the election view (etcd mode), `None` with a state file.
pub(super) fn ha_target<'a>(ha: Option<&'a HaRuntime>, router: &'a Router) -> Option<&'a str> {
    let candidates = router.ha_candidates();
    let held = ha
        .and_then(|rt| rt.holders.get(&router.id))
        .filter(|h| candidates.iter().any(|c| &c.host == *h));
    match held {
        Some(h) => Some(h.as_str()),
        None => candidates.first().map(|c| c.host.as_str()),
    }
}

/// True when `host` serves HA router `router`'s centralized role now: it holds the
/// election (etcd mode), or is the most preferred candidate (state file).
pub(super) fn ha_serving(ha: Option<&HaRuntime>, router: &Router, host: &str) -> bool {
    match ha {
        Some(rt) => {
            rt.active_here.contains(&router.id) && router.ha_hosts.iter().any(|c| c.host == host)
        }
        None => ha_target(ha, router) == Some(host),
    }
}

/// True when the datapath must check the HA fence for `router_id`'s centralized work: an
/// HA router whose role is elected (etcd mode).
pub(super) fn fenced(ha: Option<&HaRuntime>, state: &State, router_id: &str) -> bool {
    ha.is_some() && state.router(router_id).is_some_and(Router::is_ha_managed)
}

/// The HA routers `host` is a candidate for. `central_fips()`: router id -> its central
/// FIPs (asked only when there is such a router).
pub(super) fn ha_roles<'s>(
    state: &'s State,
    host: &str,
    central_fips: impl FnOnce() -> HashMap<&'s str, BTreeMap<Ipv4Addr, Ipv4Addr>>,
) -> Vec<HaRole> {
    let mine: Vec<&Router> = state
        .routers()
        .iter()
        .filter(|r| r.is_ha_managed() && r.ha_hosts.iter().any(|h| h.host == host))
        .collect();
    if mine.is_empty() {
        return Vec::new();
    }
    let mut central = central_fips();
    mine.into_iter()
        .map(|r| HaRole {
            router_id: r.id.clone(),
            router_hash: fnv1a32(&r.id),
            candidates: r
                .ha_candidates()
                .into_iter()
                .filter_map(|h| {
                    Some(HaCandidate {
                        host: h.host.clone(),
                        priority: h.priority,
                        tunnel_ip: state.host(&h.host)?.tunnel_ip,
                    })
                })
                .collect(),
            ext_ip: r
                .external_gateway
                .as_ref()
                .and_then(|g| g.external_fixed_ips.first())
                .map(|f| f.ip),
            central_fips: central.remove(r.id.as_str()).unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Compiled, compile};
    use crate::testing::*;
    use dvr_common::nat::{FIP_CENTRAL, FIP_HA};
    use dvr_common::route::IpKey;
    use dvr_common::snat::{SNAT_ENABLED, SNAT_HA};
    use serde_json::{Value, json};

    /// snat_fixture with r1 HA on host-s (priority 200) and host-t (100).
    fn ha_fixture() -> Value {
        let mut v = snat_fixture();
        push(
            &mut v,
            "hosts",
            json!({"name": "host-t", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.6",
                "dvr_mac": "fa:16:3f:00:00:0f", "external_interface": "ext0"}),
        );
        let r = elem(&mut v, "routers", "id", "r1");
        r["ha"] = json!(true);
        r["ha_hosts"] =
            json!([{"host": "host-t", "priority": 100}, {"host": "host-s", "priority": 200}]);
        v
    }

    /// Compiles `host` of `st` with the election view `rt`.
    fn compiled_ha(st: &State, rt: &HaRuntime, host: &str) -> Compiled {
        match compile(st, host, Some(rt), &snat_taps) {
            Ok(c) => c,
            Err(e) => panic!("compile {host}: {e}"),
        }
    }

    #[test]
    fn ha_router_role_follows_the_election() {
        const TUN_T: u32 = 0xc000_0206;
        let v = ha_fixture();
        let st = state_of(&v);
        let with = |holder: Option<&str>, active_here: bool| HaRuntime {
            holders: holder
                .map(|h| BTreeMap::from([("r1".to_string(), h.to_string())]))
                .unwrap_or_default(),
            active_here: if active_here {
                BTreeSet::from(["r1".to_string()])
            } else {
                BTreeSet::new()
            },
        };
        // State file: the preferred candidate serves, without a fence.
        let s = compiled(&v, "host-s", &snat_taps);
        assert_eq!(
            s.entries.snat_ips,
            BTreeMap::from([(ip(10, 5, 3, 1), snat_r1(SNAT_ENABLED))])
        );
        assert!(
            compiled(&v, "host-t", &snat_taps)
                .entries
                .snat_ips
                .is_empty()
        );
        // etcd: host-t elected. It serves with the fence flag, central FIPs included;
        // host-s (preferred, not elected) serves nothing; compute hosts steer to host-t.
        let t = compiled_ha(&st, &with(Some("host-t"), true), "host-t");
        assert_eq!(
            t.entries.snat_ips,
            BTreeMap::from([(ip(10, 5, 3, 1), snat_r1(SNAT_ENABLED | SNAT_HA))])
        );
        assert_eq!(t.entries.snat_routers.len(), 2);
        let Some(central) = t.entries.fips.get(&ip(10, 5, 2, 7)) else {
            panic!("no central FIP on host-t")
        };
        assert_eq!(central.flags, FIP_CENTRAL | FIP_HA);
        let src = t.entries.fip_src.get(&IpKey {
            vni: FVNI1,
            ip_be: ip(192, 168, 1, 40),
        });
        assert_eq!(src.map(|s| s.flags), Some(FIP_HA), "{src:?}");
        assert_eq!(t.ha.len(), 1);
        assert_eq!(
            t.ha[0]
                .candidates
                .iter()
                .map(|c| c.host.as_str())
                .collect::<Vec<_>>(),
            ["host-s", "host-t"]
        );
        assert_eq!(t.ha[0].ext_ip, Some(Ipv4Addr::new(10, 5, 3, 1)));
        assert_eq!(
            t.ha[0].central_fips,
            BTreeMap::from([
                // fip_fixture's VIP FIP, and host-n's (dvr_no_external) FIP.
                (Ipv4Addr::new(10, 5, 2, 4), Ipv4Addr::new(192, 168, 1, 30)),
                (Ipv4Addr::new(10, 5, 2, 7), Ipv4Addr::new(192, 168, 1, 40))
            ])
        );
        let s = compiled_ha(&st, &with(Some("host-t"), false), "host-s");
        assert!(s.entries.snat_ips.is_empty() && s.entries.snat_routers.is_empty());
        assert!(
            !s.entries.fips.contains_key(&ip(10, 5, 2, 7))
                || s.entries.fips[&ip(10, 5, 2, 7)].flags & FIP_CENTRAL == 0
        );
        assert_eq!(s.ha.len(), 1, "host-s is still a candidate");
        let a = compiled_ha(&st, &with(Some("host-t"), false), "host-a");
        assert_eq!(a.entries.snat_steer, r1n1_steers_to(TUN_T, SNAT_ENABLED));
        assert!(a.ha.is_empty(), "host-a is no candidate");
        // Nobody elected yet: nobody serves; compute hosts steer to the preferred one.
        let s = compiled_ha(&st, &with(None, false), "host-s");
        assert!(s.entries.snat_ips.is_empty());
        let a = compiled_ha(&st, &with(None, false), "host-a");
        assert_eq!(a.entries.snat_steer, r1n1_steers_to(TUN_S, SNAT_ENABLED));
    }

    #[test]
    fn ha_hosts_elect_the_preferred_candidate_unless_told_otherwise() {
        let mut v = fixture_value();
        with_ha(
            &mut v,
            true,
            serde_json::json!([{"host": "host-c", "priority": 100}, {"host": "host-b", "priority": 200}]),
        );
        let s = state_of(&v);
        let Some(r) = s.router("router1").cloned() else {
            panic!("no router1")
        };
        assert!(r.is_ha_managed());
        let order: Vec<&str> = r.ha_candidates().iter().map(|c| c.host.as_str()).collect();
        assert_eq!(order, ["host-b", "host-c"]);
        let mut rt: Option<HaRuntime> = None;
        assert_eq!(
            ha_target(rt.as_ref(), &r),
            Some("host-b"),
            "state file: the preferred one"
        );
        assert!(ha_serving(rt.as_ref(), &r, "host-b") && !ha_serving(rt.as_ref(), &r, "host-c"));
        rt = Some(HaRuntime {
            holders: BTreeMap::from([("router1".into(), "host-c".into())]),
            active_here: BTreeSet::from(["router1".into()]),
        });
        assert_eq!(ha_target(rt.as_ref(), &r), Some("host-c"), "elected holder");
        assert!(ha_serving(rt.as_ref(), &r, "host-c"));
        rt = Some(HaRuntime {
            holders: BTreeMap::from([("router1".into(), "host-a".into())]),
            active_here: BTreeSet::new(),
        });
        assert_eq!(
            ha_target(rt.as_ref(), &r),
            Some("host-b"),
            "a holder that is no candidate is ignored"
        );
        assert!(
            !ha_serving(rt.as_ref(), &r, "host-b"),
            "etcd mode: only the elected host serves"
        );
    }
}
