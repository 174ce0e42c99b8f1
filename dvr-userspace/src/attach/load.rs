//! Loading the embedded BPF object with its maps pinned (adopted when compatible).
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, ProgramError, SchedClassifier, Xdp},
};

use super::error::AttachError;

pub const PROG_TAP: &str = "dvr_tap";
/// On every tap's egress: frames delivered to the VM (security group ingress rules).
pub const PROG_TAP_OUT: &str = "dvr_tap_out";
pub const PROG_TUNNEL: &str = "dvr_tunnel";
pub const PROG_EXT: &str = "dvr_ext";
/// XDP (native) on the external interface, in front of [`PROG_EXT`] (`--ext-xdp`).
pub const PROG_EXT_XDP: &str = "dvr_ext_xdp";
/// On the underlay NIC (`--tunnel-decap bpf`): VXLAN frames decapsulated there.
pub const PROG_UNDERLAY: &str = "dvr_underlay";

/// A TC program of the loaded object, by name.
pub fn program<'a>(
    ebpf: &'a mut Ebpf,
    prog: &'static str,
) -> Result<&'a mut SchedClassifier, AttachError> {
    typed(ebpf, prog)
}

/// The XDP program of the loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, AttachError> {
    typed(ebpf, PROG_EXT_XDP)
}

/// Program `prog` of the loaded object as the kind `T` it is.
fn typed<'a, T>(ebpf: &'a mut Ebpf, prog: &'static str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(prog).ok_or(AttachError::Program {
        prog,
        source: ProgramError::UnexpectedProgramType,
    })?;
    p.try_into()
        .map_err(|source| AttachError::Program { prog, source })
}

/// Load-time sizes.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Conntrack capacity in entries (two per flow).
    pub ct_max: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ct_max: dvr_common::nat::CT_MAX,
        }
    }
}

/// Load the embedded object with every map pinned in `dir` (which must exist on bpffs):
/// maps already pinned there are adopted with their contents, unless this build cannot use
/// them (see [`crate::maps::incompatible_pins`]), which are recreated. Programs are loaded
/// (verified), not attached.
pub fn load_object(dir: &Path, opts: &LoadOptions) -> Result<Ebpf, AttachError> {
    for (name, why) in crate::maps::incompatible_pins(dir, opts.ct_max) {
        tracing::warn!(map = name, reason = %why, "pinned map not adoptable; recreating it empty");
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|source| AttachError::PinDir { path, source })?;
    }
    let paths: Vec<(&str, PathBuf)> = crate::maps::NAMES
        .iter()
        .map(|n| (*n, dir.join(n)))
        .collect();
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(dvr_common::maps::DVR_CT, opts.ct_max);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(crate::ebpf::OBJECT)?;
    for prog in [PROG_TAP, PROG_TAP_OUT, PROG_TUNNEL, PROG_EXT, PROG_UNDERLAY] {
        program(&mut ebpf, prog)?
            .load()
            .map_err(|source| AttachError::Program { prog, source })?;
    }
    xdp_program(&mut ebpf)?
        .load()
        .map_err(|source| AttachError::Program {
            prog: PROG_EXT_XDP,
            source,
        })?;
    Ok(ebpf)
}
