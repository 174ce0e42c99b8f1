//! The one build path for the BPF object: aya-build runs `cargo +nightly build` of
//! `dvr-ebpf` for bpfel-unknown-none (with BTF) and leaves the object in OUT_DIR, where
//! `src/ebpf.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "dvr-ebpf")
        .ok_or_else(|| anyhow!("dvr-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("dvr-ebpf manifest has no parent"))?;
    println!("cargo:rerun-if-changed=../dvr-common/src");
    // AYA_BUILD_SKIP=1 (honoured by aya-build) lets pure user-space unit tests build
    // without the BPF toolchain; the embedded object is then empty and loading fails loudly.
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        let out = std::path::PathBuf::from(
            std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR"))?,
        );
        for object in ["dvr", "dvr-floor"] {
            std::fs::write(out.join(object), b"").context("write empty object")?;
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dvr-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
