//! What can go wrong reading state: [`SourceError`] from parsing and etcd, and
//! [`StateError`], a failure of the live [`Source`](super::Source) named after it.

/// A state document, or the etcd keys holding one, that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("state: {0}")]
    Json(#[from] serde_json::Error),
    #[error("state: {kind}[{index}]: field `{field}`: missing or not a string")]
    Id {
        kind: &'static str,
        index: usize,
        field: &'static str,
    },
    #[error("state: `{kind}` must be a list")]
    NotList { kind: &'static str },
    #[error("state: {0}")]
    Invalid(String),
    #[error("etcd {url}: {msg}")]
    Etcd { url: String, msg: String },
}

/// A failure of the live [`Source`](super::Source): which source (`file <path>`, `etcd
/// <url>`, or `etcd` for a state assembled from its keys) and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("state from {source_desc}: {msg}")]
pub struct StateError {
    pub source_desc: String,
    pub msg: String,
}
