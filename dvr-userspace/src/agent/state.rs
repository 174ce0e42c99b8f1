//! The cloud as the agent holds it (issue 17): every resource in a [`Store`], the host's
//! view of it, and what changed since the last accepted state.
//!
//! Each update from the source becomes changes of resources, handled the same way whatever
//! the source:
//! 1. validation: a state file is validated whole (it is read whole anyway, and only a whole
//!    read sees duplicate ids in it), an etcd snapshot too; a batch of etcd changes is
//!    validated by the changed resources' neighbourhood ([`Store::check`]). A refused change
//!    stays pending and is validated again with the next ones, so a state made valid by a
//!    later write (a port written before its subnet) is accepted then, and meanwhile the
//!    last accepted state keeps serving;
//! 2. relevance: a change that neither is in the host's view nor names anything in it
//!    (nor is the host's own, nor a host) is done with; otherwise the view is recomputed,
//!    and when neither it nor anything in it changed, done with too;
//! 3. the view is parsed as a state of its own and handed to the compile.
use std::collections::{BTreeSet, HashSet};

use crate::model::State;
use crate::scope::{Key, Store, split};
use crate::source::StateUpdate;

/// Give back to the system what a validation of the whole state used (glibc keeps freed
/// heap otherwise: at 100,000 ports, a third of the agent's resident memory).
fn trim() {
    // SAFETY: malloc_trim only releases free heap memory; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What an update came to.
pub(super) enum Outcome {
    /// Nothing changed.
    Same,
    /// Valid, and nothing of this host's view changed.
    Elsewhere,
    /// Valid: the host's view, as a state to compile.
    View(Box<State>),
    /// Invalid: the errors (the last accepted state keeps serving).
    Refused(String),
}

/// Figures of the last update, for the log and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Figures {
    /// Resources validated.
    pub checked: usize,
    /// Resources in the cloud and in the host's view.
    pub cloud: usize,
    pub view: usize,
}

pub(super) struct Held {
    host: String,
    store: Store,
    view: HashSet<Key>,
    /// Keys changed since the last accepted state.
    pending: BTreeSet<String>,
    /// The store holds a refused snapshot: validate it whole until accepted.
    whole: bool,
    pub figures: Figures,
}

impl Held {
    pub(super) fn new(host: &str) -> Self {
        Held {
            host: host.into(),
            store: Store::default(),
            view: HashSet::new(),
            pending: BTreeSet::new(),
            whole: false,
            figures: Figures::default(),
        }
    }

    pub(super) fn apply(&mut self, update: StateUpdate) -> Outcome {
        match update {
            StateUpdate::Document(text) => self.document(&text),
            StateUpdate::Snapshot(kvs) => {
                self.store = Store::of(kvs);
                self.pending.clear();
                self.figures.checked = self.store.len();
                let checked = self.store.check_all().map(drop);
                trim();
                if let Err(e) = checked {
                    self.whole = true;
                    return Outcome::Refused(e.to_string());
                }
                self.whole = false;
                self.store.settle();
                self.recompile()
            }
            StateUpdate::Changes(changes) => {
                for (k, v) in changes {
                    if self.store.set(&k, v.map(String::into_boxed_str), 0) {
                        self.pending.insert(k);
                    }
                }
                if self.pending.is_empty() && !self.whole {
                    return Outcome::Same;
                }
                let checked = if self.whole {
                    self.store.check_all().map(|_| self.store.len())
                } else {
                    self.store.check(self.pending.iter().map(String::as_str))
                };
                match checked {
                    Ok(n) => self.figures.checked = n,
                    Err(e) => return Outcome::Refused(e.to_string()),
                }
                let was_whole = std::mem::replace(&mut self.whole, false);
                self.store.settle();
                let changed = std::mem::take(&mut self.pending);
                if was_whole {
                    // A snapshot accepted at last: all of it is new to the view.
                    return self.recompile();
                }
                self.relevance(&changed)
            }
        }
    }

    /// A state file: validated whole, then its changes taken as any others.
    fn document(&mut self, text: &str) -> Outcome {
        let checked = State::from_json(text).map(drop);
        trim();
        if let Err(e) = checked {
            return Outcome::Refused(e.to_string());
        }
        let new = match Store::of_doc(text) {
            Ok(s) => s,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        // Reading the document as JSON values was the other whole-state transient.
        trim();
        self.figures.checked = new.len();
        if self.store.is_empty() {
            self.store = new;
            return self.recompile();
        }
        let mut changed = BTreeSet::new();
        let gone: Vec<String> = self
            .store
            .kvs()
            .keys()
            .filter(|k| new.get(k).is_none())
            .map(|k| k.to_string())
            .collect();
        for k in gone {
            self.store.set(&k, None, 0);
            changed.insert(k);
        }
        for (k, v, order) in new.entries() {
            if self.store.set(k, Some(v.into()), order) {
                changed.insert(k.to_string());
            }
        }
        drop(new);
        trim();
        self.store.settle();
        if changed.is_empty() {
            return Outcome::Same;
        }
        self.relevance(&changed)
    }

    /// Whether `changed` reaches this host's view (module doc), and the view if it does.
    fn relevance(&mut self, changed: &BTreeSet<String>) -> Outcome {
        if !changed.iter().any(|k| self.touches(k)) {
            self.figures.cloud = self.store.len();
            return Outcome::Elsewhere;
        }
        let view = self.store.view(&self.host);
        let inside = changed.iter().any(|k| view.contains(k.as_str()));
        if view == self.view && !inside {
            return Outcome::Elsewhere;
        }
        self.view = view;
        self.parse_view()
    }

    /// The view recomputed and parsed (at start, on resync and for a new state file).
    fn recompile(&mut self) -> Outcome {
        self.view = self.store.view(&self.host);
        self.parse_view()
    }

    fn parse_view(&mut self) -> Outcome {
        self.figures.cloud = self.store.len();
        self.figures.view = self.view.len();
        match State::from_json(&self.store.doc(&self.view)) {
            Ok(s) => Outcome::View(Box::new(s)),
            Err(e) => {
                // The view of a valid cloud is valid (the unit tests check it on random
                // clouds); should one not be, the whole cloud is compiled instead.
                tracing::error!(error = %e, "this host's view of a valid state does not validate: compiling the whole state instead");
                match self.store.check_all() {
                    Ok(s) => Outcome::View(Box::new(s)),
                    Err(e) => Outcome::Refused(e.to_string()),
                }
            }
        }
    }

    /// Whether a change of `key` may reach the view: it is in it, it names something in it
    /// (other than a host: every view holds every host), or it is this host's, a host, or an
    /// external network.
    fn touches(&self, key: &str) -> bool {
        if self.view.contains(key) {
            return true;
        }
        let Some(links) = self.store.links(key) else {
            return false;
        };
        let h = &self.host;
        let mine = [
            format!("host:{h}"),
            format!("fghost:{h}"),
            format!("hahost:{h}"),
        ];
        if links
            .groups
            .iter()
            .any(|g| matches!(&**g, "hosts" | "external") || mine.iter().any(|m| **m == **g))
        {
            return true;
        }
        let fip = key.starts_with("floatingips/");
        let unassociated = links.groups.iter().any(|g| g.starts_with("fipfree:"));
        links.refs.iter().any(|r| {
            let kind = split(r).map(|(k, _)| k);
            // Every FIP names its external network, which is in the view of every host with
            // external there; only an unassociated one is that host's business for it.
            let skip = kind == Some("hosts") || (fip && !unassociated && kind == Some("networks"));
            !skip && self.view.contains(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_value;
    use serde_json::json;

    fn snapshot() -> StateUpdate {
        let store = Store::of_doc(&fixture_value().to_string()).unwrap_or_default();
        StateUpdate::Snapshot(
            store
                .entries()
                .map(|(k, v, _)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn set(key: &str, v: serde_json::Value) -> StateUpdate {
        StateUpdate::Changes(vec![(key.into(), Some(v.to_string()))])
    }

    fn outcome(o: &Outcome) -> &'static str {
        match o {
            Outcome::Same => "same",
            Outcome::Elsewhere => "elsewhere",
            Outcome::View(_) => "view",
            Outcome::Refused(_) => "refused",
        }
    }

    /// A network with a port of a third host, linked to nothing host-a has.
    fn far_network() -> Vec<(String, Option<String>)> {
        [
            (
                "networks/far",
                json!({"id": "far", "provider:network_type": "vxlan",
                "provider:segmentation_id": 3000}),
            ),
            (
                "subnets/far-s",
                json!({"id": "far-s", "network_id": "far",
                "cidr": "10.9.0.0/24", "ip_version": 4}),
            ),
            (
                "ports/far-vm",
                json!({"id": "far-vm", "network_id": "far",
                "mac_address": "fa:16:3e:09:00:01", "device_owner": "compute:nova",
                "binding:host_id": "host-b",
                "fixed_ips": [{"subnet_id": "far-s", "ip_address": "10.9.0.5"}]}),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
    }

    #[test]
    fn changes_elsewhere_are_validated_but_not_compiled() {
        let mut held = Held::new("host-a");
        assert_eq!(outcome(&held.apply(snapshot())), "view");
        let whole = held.figures.view;
        // host-b's network far: valid, and nothing of host-a's.
        assert_eq!(
            outcome(&held.apply(StateUpdate::Changes(far_network()))),
            "elsewhere"
        );
        assert_eq!(held.figures.view, whole);
        assert_eq!(held.figures.cloud, whole + 3);
        // Validated with its neighbourhood only, not host-a's things.
        assert!(held.figures.checked < whole, "{:?}", held.figures);
        // The same values again: no change at all.
        assert_eq!(
            outcome(&held.apply(StateUpdate::Changes(far_network()))),
            "same"
        );
        // A port of far on host-a: host-a's now.
        let mine = json!({"id": "far-vm2", "network_id": "far",
            "mac_address": "fa:16:3e:09:00:02", "device_owner": "compute:nova",
            "binding:host_id": "host-a",
            "fixed_ips": [{"subnet_id": "far-s", "ip_address": "10.9.0.6"}]});
        let o = held.apply(set("ports/far-vm2", mine));
        assert_eq!(outcome(&o), "view");
        if let Outcome::View(s) = o {
            assert!(s.port("far-vm").is_some() && s.network("far").is_some());
        }
    }

    #[test]
    fn an_invalid_change_is_refused_until_a_later_one_mends_it() {
        let mut held = Held::new("host-a");
        held.apply(snapshot());
        // A port on a subnet not written yet (as a writer in key order would do).
        let mut changes = far_network();
        let subnet = changes.remove(1);
        let o = held.apply(StateUpdate::Changes(changes));
        let Outcome::Refused(e) = o else {
            panic!("accepted a dangling subnet");
        };
        assert!(
            e.contains("port far-vm: field `fixed_ips[0].subnet_id`"),
            "{e}"
        );
        // A valid change meanwhile is refused with it: the pending one is still wrong.
        assert_eq!(
            outcome(&held.apply(StateUpdate::Changes(far_network()[..1].to_vec()))),
            "refused"
        );
        // The subnet arrives: all of it is accepted.
        assert_eq!(
            outcome(&held.apply(StateUpdate::Changes(vec![subnet]))),
            "elsewhere"
        );
    }

    #[test]
    fn a_refused_snapshot_is_validated_whole_until_mended() {
        let mut held = Held::new("host-a");
        let StateUpdate::Snapshot(mut kvs) = snapshot() else {
            return;
        };
        kvs.insert("ports/bad".into(), "{\"id\": \"bad\"".into());
        assert_eq!(outcome(&held.apply(StateUpdate::Snapshot(kvs))), "refused");
        let o = held.apply(StateUpdate::Changes(vec![("ports/bad".into(), None)]));
        assert_eq!(outcome(&o), "view");
    }

    #[test]
    fn a_state_file_goes_the_same_way() {
        let mut held = Held::new("host-a");
        let mut v = fixture_value();
        assert_eq!(
            outcome(&held.apply(StateUpdate::Document(v.to_string()))),
            "view"
        );
        assert_eq!(
            outcome(&held.apply(StateUpdate::Document(v.to_string()))),
            "same"
        );
        crate::testing::elem(&mut v, "ports", "id", "vm3")["mac_address"] =
            "fa:16:3e:00:00:33".into();
        assert_eq!(
            outcome(&held.apply(StateUpdate::Document(v.to_string()))),
            "view"
        );
        // Duplicate ids only a whole read sees.
        let vm3 = crate::testing::elem(&mut v, "ports", "id", "vm3").clone();
        crate::testing::push(&mut v, "ports", vm3);
        let o = held.apply(StateUpdate::Document(v.to_string()));
        let Outcome::Refused(e) = o else {
            panic!("accepted duplicate ids");
        };
        assert!(e.contains("duplicate id"), "{e}");
    }
}
