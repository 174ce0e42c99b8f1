//! What can stop the agent (at start) or fail one of its reconcile steps (while running).
use crate::{attach::AttachError, source::StateError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state from {source_desc}: {msg}")]
    State { source_desc: String, msg: String },
    #[error(transparent)]
    Attach(Box<AttachError>),
    #[error(transparent)]
    Maps(#[from] crate::maps::MapsError),
    #[error("metrics endpoint {addr}: {msg}")]
    Metrics {
        addr: std::net::SocketAddr,
        msg: String,
    },
}

impl From<StateError> for AgentError {
    fn from(e: StateError) -> Self {
        Self::State {
            source_desc: e.source_desc,
            msg: e.msg,
        }
    }
}

impl From<AttachError> for AgentError {
    fn from(e: AttachError) -> Self {
        Self::Attach(Box::new(e))
    }
}
