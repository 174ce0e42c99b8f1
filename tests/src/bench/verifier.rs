//! Verifier cost of the datapath: how many instructions the kernel's verifier walked to
//! accept each program (`bpf_prog_info.verified_insns`, what `bpftool prog show` prints as
//! `verified_insns`). The programs are single inlined functions, so this is the figure a
//! change to `dvr-ebpf` must keep an eye on (issue 11: at most +10% per program).
//!
//! `dvr-bench verifier [OBJECT]` prints the counts of the embedded object (or of a `dvr`
//! object file, e.g. another build's) and exits; a full `dvr-bench` run records them in its
//! table and `results.json`. Needs root (CAP_BPF); the maps are created unpinned and go
//! with the loaded object.

use anyhow::{Context, Result, anyhow};
use aya::programs::ProgramInfo;
use dvr_userspace::attach::{
    PROG_EXT, PROG_EXT_XDP, PROG_TAP, PROG_TAP_OUT, PROG_TUNNEL, PROG_UNDERLAY, program,
    xdp_program,
};

/// The TC programs, in pipeline order (then the XDP program, [`PROG_EXT_XDP`]).
pub const PROGRAMS: [&str; 5] = [PROG_TAP, PROG_TAP_OUT, PROG_TUNNEL, PROG_EXT, PROG_UNDERLAY];

/// Verified instruction count of one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    pub program: &'static str,
    pub verified_insns: u32,
}

/// Load `object` (the bytes of a `dvr` BPF object) and read the verifier's count for each
/// program.
pub fn counts(object: &[u8]) -> Result<Vec<Count>> {
    let mut ebpf = aya::Ebpf::load(object).context("loading the BPF object")?;
    let mut out = PROGRAMS
        .iter()
        .map(|&prog| {
            let p = program(&mut ebpf, prog)?;
            p.load().with_context(|| format!("verifying {prog}"))?;
            count(prog, p.info())
        })
        .collect::<Result<Vec<_>>>()?;
    let p = xdp_program(&mut ebpf)?;
    p.load()
        .with_context(|| format!("verifying {PROG_EXT_XDP}"))?;
    out.push(count(PROG_EXT_XDP, p.info())?);
    Ok(out)
}

fn count(
    program: &'static str,
    info: Result<ProgramInfo, aya::programs::ProgramError>,
) -> Result<Count> {
    let info = info.with_context(|| format!("bpf_prog_info of {program}"))?;
    let verified_insns = info
        .verified_instruction_count()
        .ok_or_else(|| anyhow!("{program}: the kernel reports no verified_insns"))?;
    Ok(Count {
        program,
        verified_insns,
    })
}

/// The counts of the object embedded in the agent.
pub fn embedded() -> Result<Vec<Count>> {
    counts(dvr_userspace::ebpf::OBJECT)
}

/// `program  verified_insns` lines.
pub fn table(counts: &[Count]) -> String {
    let mut s = format!("{:<11} {:>14}\n", "program", "verified insns");
    for c in counts {
        s.push_str(&format!("{:<11} {:>14}\n", c.program, c.verified_insns));
    }
    s
}
