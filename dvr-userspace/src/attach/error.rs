//! The errors of [`super`]: host plumbing, loading and attaching.
use std::path::PathBuf;

use crate::maps::MapsError;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device {dev}: {msg}")]
    Device { dev: String, msg: String },
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {prog}: {source}")]
    Program {
        prog: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {prog} on {iface}: attach failed: {source}")]
    Attach {
        prog: &'static str,
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("link on {iface}: {source}")]
    Link {
        iface: String,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning map {name}: {source}")]
    Pin {
        name: String,
        source: aya::pin::PinError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}
