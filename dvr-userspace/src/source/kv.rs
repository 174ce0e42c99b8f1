//! The etcd key layout of the state and the conversion between a state document and its
//! keys (one key per resource; see the [`source`](super) module documentation).
use std::collections::BTreeMap;

use super::error::SourceError;

pub const PREFIX: &str = "/dvr/v1/";
pub const ALIVE: &str = "/dvr/v1/alive/";
/// The state's resource lists, as top-level keys of the state file.
pub const KINDS: [&str; 9] = [
    "networks",
    "subnets",
    "ports",
    "routers",
    "floatingips",
    "security_groups",
    "security_group_rules",
    "address_groups",
    "hosts",
];

/// What changed in the state since the source last said.
#[derive(Debug)]
pub enum StateUpdate {
    /// A whole state document (a state file, read anew on each write).
    Document(String),
    /// Every resource, by key (`<kind>/<id>`, the etcd key without [`PREFIX`]): an etcd
    /// snapshot, at start and on resync.
    Snapshot(BTreeMap<String, String>),
    /// Resources set (`Some`) or deleted (`None`) since, by key as in `Snapshot`, in order.
    Changes(Vec<(String, Option<String>)>),
}

/// The id field of a resource kind.
fn id_field(kind: &str) -> &'static str {
    if kind == "hosts" { "name" } else { "id" }
}

pub fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}/{id}")
}

/// Split a state document into one (key, JSON value) per resource.
pub fn to_kvs(text: &str) -> Result<BTreeMap<String, String>, SourceError> {
    let doc: serde_json::Value = serde_json::from_str(text)?;
    let mut out = BTreeMap::new();
    for kind in KINDS {
        let Some(list) = doc.get(kind) else { continue };
        let list = list.as_array().ok_or(SourceError::NotList { kind })?;
        for (index, item) in list.iter().enumerate() {
            let field = id_field(kind);
            let id = item
                .get(field)
                .and_then(|v| v.as_str())
                .ok_or(SourceError::Id { kind, index, field })?;
            out.insert(key(kind, id), item.to_string());
        }
    }
    Ok(out)
}

/// Assemble a state document from (key, JSON value) pairs; keys outside the resource kinds
/// (e.g. `alive/`) are ignored. A value that is not JSON is reported, naming its key.
pub fn from_kvs(kvs: &BTreeMap<String, String>) -> Result<String, SourceError> {
    let mut doc = serde_json::Map::new();
    for kind in KINDS {
        doc.insert(kind.into(), serde_json::Value::Array(Vec::new()));
    }
    for (k, v) in kvs {
        let Some(rest) = k.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((kind, _id)) = rest.split_once('/') else {
            continue;
        };
        let Some(serde_json::Value::Array(list)) = doc.get_mut(kind) else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(v)
            .map_err(|e| SourceError::Invalid(format!("key {k}: not JSON: {e}")))?;
        list.push(value);
    }
    Ok(serde_json::Value::Object(doc).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"networks":[{"id":"n1","x":1}],"hosts":[{"name":"h1"}],"ports":[]}"#;

    #[test]
    fn one_key_per_resource_and_back() {
        let kvs = to_kvs(DOC).unwrap_or_default();
        assert_eq!(
            kvs.keys().collect::<Vec<_>>(),
            vec!["/dvr/v1/hosts/h1", "/dvr/v1/networks/n1"]
        );
        let back: serde_json::Value =
            serde_json::from_str(&from_kvs(&kvs).unwrap_or_default()).unwrap_or_default();
        assert_eq!(back["networks"][0]["x"], 1);
        assert_eq!(back["hosts"][0]["name"], "h1");
        assert_eq!(back["floatingips"], serde_json::json!([]));
    }

    #[test]
    fn resources_without_id_are_reported() {
        let e = to_kvs(r#"{"ports":[{"name":"p"}]}"#)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("state: ports[0]: field `id`: missing or not a string")
        );
    }

    #[test]
    fn alive_keys_are_not_state() {
        let kvs = BTreeMap::from([("/dvr/v1/alive/h1".to_string(), "{}".to_string())]);
        let back: serde_json::Value =
            serde_json::from_str(&from_kvs(&kvs).unwrap_or_default()).unwrap_or_default();
        assert_eq!(back["hosts"], serde_json::json!([]));
    }

    #[test]
    fn security_groups_rules_and_address_groups_travel_through_etcd() -> Result<(), SourceError> {
        let doc = r#"{"security_groups":[{"id":"sg1","security_group_rules":[{"id":"r1"}]}],
            "security_group_rules":[{"id":"r2","security_group_id":"sg1"}],
            "address_groups":[{"id":"ag1","addresses":["10.0.0.0/8"]}]}"#;
        let kvs = to_kvs(doc)?;
        for k in [
            "/dvr/v1/security_groups/sg1",
            "/dvr/v1/security_group_rules/r2",
            "/dvr/v1/address_groups/ag1",
        ] {
            assert!(kvs.contains_key(k), "{k} in {kvs:?}");
        }
        let back: serde_json::Value = serde_json::from_str(&from_kvs(&kvs)?)?;
        assert_eq!(
            back["security_groups"][0]["security_group_rules"][0]["id"],
            "r1"
        );
        assert_eq!(back["security_group_rules"][0]["security_group_id"], "sg1");
        assert_eq!(back["address_groups"][0]["addresses"][0], "10.0.0.0/8");
        Ok(())
    }
}
