//! The cluster state held in memory as one value per resource, with the links between
//! resources indexed, so that a change costs what it touches rather than what the cloud
//! holds (issue 17).
//!
//! - [`Store`]: every resource's JSON value by key (`<kind>/<id>`, the etcd key without its
//!   prefix), with what each names and the groups each belongs to (`links`), and the reverse
//!   indexes: who names a key, who is in a group.
//! - Validation of a change (`check`): the changed resources are validated with their
//!   neighbourhood only, everything a check could compare them with or that could dangle
//!   from them: the members of the groups a check compares within, the resources naming
//!   them (two levels: a network's ports and those ports' floating IPs), and everything
//!   those name, transitively. The rest of the cloud was valid before and a check only
//!   relates resources so linked, so the neighbourhood fails exactly when the whole would.
//! - Relevance (`view`): the resources a host's compile reads (see `view.rs` for the rules,
//!   and the README's "Cloud scale" section). A change outside a host's view and not
//!   pulling anything into it costs the host its validation and an index update, nothing
//!   more; a change inside it recompiles the view, which is far smaller than the cloud.
mod links;
mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use links::CHECKED;
pub use links::{Links, key};

use crate::model::{FieldError, State, StateError};
use crate::source::KINDS;

/// A key (`<kind>/<id>`), shared by the indexes.
pub type Key = Arc<str>;

#[derive(Debug)]
struct Node {
    /// The value as stored (JSON text).
    value: Box<str>,
    /// Position in a state file (0 in etcd, where keys are in key order).
    order: u64,
    links: Links,
    /// Why the value is not a resource of its key: not JSON, or another id.
    broken: Option<String>,
}

/// Every resource of the cloud by key, with the link indexes.
#[derive(Debug, Default)]
pub struct Store {
    nodes: HashMap<Key, Node>,
    /// Key -> the keys naming it (whether it exists or not).
    referrers: HashMap<Key, HashSet<Key>>,
    /// Group -> its members.
    members: HashMap<Key, HashSet<Key>>,
    /// The groups of changed resources before their first change since [`Store::settle`]:
    /// a resource leaving a group (deleted, or moved) is checked with the ones it left.
    prior: HashMap<Key, Vec<Key>>,
}

/// The index entry of `name` (made if missing), with the name as the index holds it.
fn interned<'m>(
    index: &'m mut HashMap<Key, HashSet<Key>>,
    name: &Key,
) -> (Key, &'m mut HashSet<Key>) {
    let shared = index
        .get_key_value(name)
        .map_or_else(|| name.clone(), |(k, _)| k.clone());
    let set = index.entry(shared.clone()).or_default();
    (shared, set)
}

/// `<kind>/<id>` -> (kind, id).
pub fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('/').filter(|(k, _)| KINDS.contains(k))
}

/// What an error calls one resource of a kind.
fn singular(kind: &str) -> &'static str {
    match kind {
        "networks" => "network",
        "subnets" => "subnet",
        "ports" => "port",
        "routers" => "router",
        "floatingips" => "floatingip",
        "hosts" => "host",
        "security_groups" => "security_group",
        "security_group_rules" => "security_group_rule",
        _ => "address_group",
    }
}

/// The id field of a resource kind.
fn id_field(kind: &str) -> &'static str {
    if kind == "hosts" { "name" } else { "id" }
}

impl Store {
    /// A store of these resources (`key` -> value), in key order.
    pub fn of(kvs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut s = Store::default();
        for (k, v) in kvs {
            s.set(&k, Some(v.into_boxed_str()), 0);
        }
        s
    }

    /// The resources of a state document, each with its position in its list (its
    /// order in the document is kept for compiling). A resource without an id is left out:
    /// the document's own validation reports it.
    pub fn of_doc(text: &str) -> Result<Self, serde_json::Error> {
        let doc: serde_json::Value = serde_json::from_str(text)?;
        let mut s = Store::default();
        for kind in KINDS {
            let list = doc.get(kind).and_then(serde_json::Value::as_array);
            for (i, item) in list.into_iter().flatten().enumerate() {
                if let Some(id) = item.get(id_field(kind)).and_then(serde_json::Value::as_str) {
                    s.set(&key(kind, id), Some(item.to_string().into()), i as u64);
                }
            }
        }
        Ok(s)
    }

    /// Number of resources held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.nodes.get(key).map(|n| &*n.value)
    }

    /// Every key with its value and order, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.nodes.iter().map(|(k, n)| (&**k, &*n.value, n.order))
    }

    /// Every key and value, in key order.
    pub fn kvs(&self) -> BTreeMap<&str, &str> {
        self.nodes.iter().map(|(k, n)| (&**k, &*n.value)).collect()
    }

    /// Set (`Some`) or delete (`None`) a resource; `order` is its position in a state file.
    /// Keys outside the resource kinds are ignored. Returns whether anything changed.
    pub fn set(&mut self, key: &str, value: Option<Box<str>>, order: u64) -> bool {
        let Some((kind, id)) = split(key) else {
            return false;
        };
        if let Some(old) = self.nodes.get_mut(key) {
            if value.as_deref() == Some(&*old.value) {
                old.order = order;
                return false;
            }
        } else if value.is_none() {
            return false;
        }
        let k: Key = Arc::from(key);
        if let Some(old) = self.nodes.remove(key) {
            self.unlink(&k, &old.links);
            self.prior.entry(k.clone()).or_insert(old.links.groups);
        }
        let Some(value) = value else {
            return true;
        };
        let (links, broken) = match serde_json::from_str::<serde_json::Value>(&value) {
            Ok(v) => {
                let field = id_field(kind);
                let own = v.get(field).and_then(|i| i.as_str());
                let broken = match own {
                    Some(own) if own == id => None,
                    Some(own) => Some(format!("holds {field} {own:?}, not {id:?}")),
                    None if v.is_object() => Some(format!("has no {field}")),
                    None => Some("is not a JSON object".into()),
                };
                (Links::of(kind, id, &v), broken)
            }
            Err(e) => (Links::default(), Some(format!("is not JSON: {e}"))),
        };
        let mut links = links;
        for r in &mut links.refs {
            let (shared, set) = interned(&mut self.referrers, r);
            *r = shared;
            set.insert(k.clone());
        }
        for g in &mut links.groups {
            let (shared, set) = interned(&mut self.members, g);
            *g = shared;
            set.insert(k.clone());
        }
        self.nodes.insert(
            k,
            Node {
                value,
                order,
                links,
                broken,
            },
        );
        true
    }

    /// Forget what changed resources were before (once their change is accepted).
    pub fn settle(&mut self) {
        self.prior.clear();
    }

    fn unlink(&mut self, k: &Key, links: &Links) {
        for r in &links.refs {
            if let Some(set) = self.referrers.get_mut(r) {
                set.remove(k);
                if set.is_empty() {
                    self.referrers.remove(r);
                }
            }
        }
        for g in &links.groups {
            if let Some(set) = self.members.get_mut(g) {
                set.remove(k);
                if set.is_empty() {
                    self.members.remove(g);
                }
            }
        }
    }

    /// The members of a group.
    fn group<'s>(&'s self, group: &str) -> impl Iterator<Item = &'s Key> + use<'s> {
        self.members.get(group).into_iter().flatten()
    }

    /// The keys naming `key`.
    fn referrers_of<'s>(&'s self, key: &str) -> impl Iterator<Item = &'s Key> + use<'s> {
        self.referrers.get(key).into_iter().flatten()
    }

    /// What a key's resource names and belongs to.
    pub fn links(&self, key: &str) -> Option<&Links> {
        self.nodes.get(key).map(|n| &n.links)
    }

    /// Add `keys` and everything they name, transitively, to `set`; with each network, its
    /// subnets (a network's addresses are checked against them), with each router, its ports
    /// (its extra routes are checked against them).
    fn close(&self, set: &mut HashSet<Key>, keys: impl IntoIterator<Item = Key>) {
        let mut stack: Vec<Key> = keys.into_iter().collect();
        while let Some(k) = stack.pop() {
            let Some((key, node)) = self.nodes.get_key_value(&k) else {
                continue;
            };
            if !set.insert(key.clone()) {
                continue;
            }
            for r in &node.links.refs {
                if let Some((rk, _)) = self.nodes.get_key_value(r)
                    && !set.contains(rk)
                {
                    stack.push(rk.clone());
                }
            }
            match split(key) {
                Some(("networks", id)) => {
                    let subnets = self
                        .group(&format!("net:{id}"))
                        .filter(|m| m.starts_with("subnets/"));
                    stack.extend(subnets.cloned());
                }
                // A router's extra routes are checked against its ports.
                Some(("routers", id)) => stack.extend(self.group(&format!("router:{id}")).cloned()),
                _ => {}
            }
        }
    }

    /// What validating a change of `changed` must look at (see the module doc).
    pub fn neighbourhood<'a>(&self, changed: impl IntoIterator<Item = &'a str>) -> HashSet<Key> {
        let mut seeds: Vec<Key> = Vec::new();
        for c in changed {
            let node = self.nodes.get_key_value(c);
            if let Some((k, _)) = node {
                seeds.push(k.clone());
            }
            let now = node.map(|(_, n)| n.links.groups.iter());
            let before = self.prior.get(c).map(|g| g.iter());
            let subnet = c.starts_with("subnets/");
            for g in now
                .into_iter()
                .flatten()
                .chain(before.into_iter().flatten())
            {
                if CHECKED.iter().any(|p| g.starts_with(p)) {
                    seeds.extend(self.group(g).cloned());
                }
                // A network's addresses (floating IPs, gateways) are checked against its
                // subnets.
                if let Some(net) = g.strip_prefix("net:").filter(|_| subnet) {
                    seeds.extend(self.referrers_of(&format!("networks/{net}")).cloned());
                }
            }
            // What names it may dangle now, or be wrong about it.
            for r in self.referrers_of(c) {
                seeds.push(r.clone());
                seeds.extend(self.referrers_of(r).cloned());
            }
        }
        let mut set = HashSet::new();
        self.close(&mut set, seeds);
        set
    }

    /// Validate the change of `changed` (keys set or deleted since the last valid state):
    /// their neighbourhood is parsed and checked as a state of its own.
    pub fn check<'a>(
        &self,
        changed: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize, StateError> {
        let set = self.neighbourhood(changed);
        self.broken(&set)?;
        State::from_json(&self.doc(&set))?;
        Ok(set.len())
    }

    /// Every resource at once, as at start and on resync.
    pub fn check_all(&self) -> Result<State, StateError> {
        let all: HashSet<Key> = self.nodes.keys().cloned().collect();
        self.broken(&all)?;
        State::from_json(&self.doc(&all))
    }

    /// Values that are no resource of their key, as validation errors.
    fn broken(&self, keys: &HashSet<Key>) -> Result<(), StateError> {
        let mut errors: Vec<FieldError> = keys
            .iter()
            .filter_map(|k| {
                let why = self.nodes.get(k)?.broken.as_ref()?;
                let (kind, id) = split(k)?;
                Some(FieldError {
                    kind: singular(kind),
                    id: id.to_string(),
                    field: String::new(),
                    message: format!("the value at key {}{k} {why}", crate::source::PREFIX),
                })
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        Err(StateError::Invalid(errors))
    }

    /// A state document of `keys`: each kind's list in file order, then key order.
    pub fn doc(&self, keys: &HashSet<Key>) -> String {
        let mut by_kind: BTreeMap<&str, Vec<(u64, &str, &str)>> = BTreeMap::new();
        for k in keys {
            let (Some((kind, _)), Some(node)) = (split(k), self.nodes.get(k)) else {
                continue;
            };
            if node.broken.is_none() {
                by_kind
                    .entry(kind)
                    .or_default()
                    .push((node.order, k, &node.value));
            }
        }
        let mut out = String::with_capacity(keys.len() * 256);
        out.push('{');
        for (i, kind) in KINDS.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(kind);
            out.push_str("\":[");
            if let Some(list) = by_kind.get_mut(kind) {
                list.sort_unstable();
                for (j, (_, _, v)) in list.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str(v);
                }
            }
            out.push(']');
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests;
