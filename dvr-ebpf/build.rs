//! Rebuild the BPF object when the linker changes (the aya template's approach): the
//! bpfel-unknown-none target links with `bpf-linker`, which cargo does not track.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
