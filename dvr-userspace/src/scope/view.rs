//! A host's view: the resources its compile reads, so that compiling the view gives the
//! host's entries exactly as compiling the whole cloud would (the unit tests compare the two
//! for every compile fixture). For host H:
//! - every host (DVR MACs and tunnel peers are cloud-wide; a host record is small);
//! - H's ports (bound to it, and its floating IP agent gateway ports);
//! - its routers: those with an interface on a network of H's ports, those owning a port
//!   bound to H (SNAT), and the HA routers listing H as a candidate;
//! - every port and subnet of the networks of H's ports and of its routers' ports, and
//!   the floating IPs of those ports and of its routers;
//! - when H has external: the external networks it serves and their unassociated floating
//!   IPs (dropped and counted there);
//! - the security groups of H's ports, their rules, and the members of the groups their
//!   rules name as remote;
//! - the router interfaces of every network in the view (a floating IP without a router
//!   resolves through them);
//! - and everything those name, transitively (a port's network and subnets, a router's
//!   gateway network, a floating IP's port), with each network's subnets.
use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::{Key, Store, split};

impl Store {
    /// A value's field, when it parses (the view reads a few fields of a few resources).
    fn field(&self, key: &str, field: &str) -> Option<Value> {
        let node = self.nodes.get(key)?;
        let v: Value = serde_json::from_str(&node.value).ok()?;
        v.get(field).cloned()
    }

    /// `<kind>/<id>` -> id, for keys of `kind`.
    fn ids<'a>(keys: impl Iterator<Item = &'a Key>, kind: &str) -> Vec<String> {
        keys.filter_map(|k| {
            split(k)
                .filter(|(k, _)| *k == kind)
                .map(|(_, id)| id.into())
        })
        .collect()
    }

    /// The keys `key` names, of `kind`, as ids.
    fn named(&self, key: &str, kind: &str) -> Vec<String> {
        self.links(key).map_or_else(Vec::new, |l| {
            l.refs
                .iter()
                .filter_map(|r| {
                    split(r)
                        .filter(|(k, _)| *k == kind)
                        .map(|(_, id)| id.into())
                })
                .collect()
        })
    }

    /// The resources host `host` compiles from (module doc).
    pub fn view(&self, host: &str) -> HashSet<Key> {
        let mut seeds: Vec<Key> = self.group("hosts").cloned().collect();
        let mine: Vec<Key> = self
            .group(&format!("host:{host}"))
            .chain(self.group(&format!("fghost:{host}")))
            .cloned()
            .collect();
        seeds.extend(mine.iter().cloned());
        // Networks of H's ports, and its routers.
        let mut networks: HashSet<String> = HashSet::new();
        let mut routers: HashSet<String> = HashSet::new();
        for p in &mine {
            networks.extend(self.named(p, "networks"));
            routers.extend(self.named(p, "routers"));
        }
        for n in &networks {
            for rif in self.group(&format!("rif:{n}")) {
                routers.extend(self.named(rif, "routers"));
            }
        }
        routers.extend(Self::ids(self.group(&format!("hahost:{host}")), "routers"));
        for r in &routers {
            seeds.push(Arc::from(format!("routers/{r}")));
            for p in self.group(&format!("router:{r}")) {
                networks.extend(self.named(p, "networks"));
                seeds.push(p.clone());
            }
            networks.extend(self.named(&format!("routers/{r}"), "networks"));
            seeds.extend(self.group(&format!("fiprouter:{r}")).cloned());
        }
        for n in &networks {
            seeds.extend(self.group(&format!("net:{n}")).cloned());
        }
        // The external networks H serves, and their floating IPs.
        if self.has_external(host) {
            let mut ext: HashSet<String> = HashSet::new();
            let fg = self
                .group(&format!("fghost:{host}"))
                .chain(self.group(&format!("fgbound:{host}")));
            for p in fg {
                ext.extend(self.named(p, "networks"));
            }
            if ext.is_empty() {
                ext.extend(Self::ids(self.group("external"), "networks"));
            }
            for n in &ext {
                seeds.push(Arc::from(format!("networks/{n}")));
                seeds.extend(self.group(&format!("fipfree:{n}")).cloned());
            }
        }
        // Security groups of H's ports: their rules, and the members of remote groups.
        let mut groups: HashSet<String> = HashSet::new();
        for p in &mine {
            groups.extend(self.named(p, "security_groups"));
        }
        let mut remote: HashSet<Key> = HashSet::new();
        for g in &groups {
            let gk = format!("security_groups/{g}");
            remote.extend(
                self.links(&gk)
                    .into_iter()
                    .flat_map(|l| l.remote_groups.iter().cloned()),
            );
            for r in self.group(&format!("sg:{g}")) {
                remote.extend(
                    self.links(r)
                        .into_iter()
                        .flat_map(|l| l.remote_groups.iter().cloned()),
                );
                seeds.push(r.clone());
            }
        }
        for g in &remote {
            seeds.extend(self.group(&format!("sgm:{g}")).cloned());
        }
        // Floating IPs of the ports so far.
        let ports: Vec<String> = Self::ids(seeds.iter(), "ports");
        for p in &ports {
            seeds.extend(self.group(&format!("fipport:{p}")).cloned());
        }
        let mut set = HashSet::new();
        self.close(&mut set, seeds);
        // Router interfaces of every network in the view, with what they name.
        let nets = Self::ids(set.iter(), "networks");
        let rifs: Vec<Key> = nets
            .iter()
            .flat_map(|n| self.group(&format!("rif:{n}")).cloned())
            .collect();
        self.close(&mut set, rifs);
        set
    }

    /// Whether host `host` names an external interface and is not `dvr_no_external`.
    fn has_external(&self, host: &str) -> bool {
        let key = format!("hosts/{host}");
        let iface = self.field(&key, "external_interface");
        let mode = self.field(&key, "agent_mode");
        iface
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
            && mode.as_ref().and_then(Value::as_str) != Some("dvr_no_external")
    }
}
