//! `dvrctl apply FILE --etcd URL`: validate a state file and write it to etcd as one key per
//! resource, changing only what differs.
use std::path::Path;

use crate::{
    model::State,
    source::{self, etcd},
};

/// Validate `path` (nothing is written when it is invalid), then write it.
pub fn apply(path: &Path, url: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    State::from_json(&text)
        .map_err(|e| format!("{} refused, etcd untouched:\n{e}", path.display()))?;
    let kvs = source::to_kvs(&text).map_err(|e| e.to_string())?;
    let a = etcd::apply(url, &kvs).map_err(|e| e.to_string())?;
    Ok(format!(
        "applied {}: {} written, {} deleted, {} unchanged",
        path.display(),
        a.put,
        a.deleted,
        a.unchanged
    ))
}
