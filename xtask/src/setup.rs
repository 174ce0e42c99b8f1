//! Installs what building and testing need, only where it is missing, so a second run is a
//! quick no-op: the nightly toolchain's rust-src (aya-build builds `core` for
//! bpfel-unknown-none), bpf-linker built against nightly rustc's own LLVM, the Debian tools
//! the integration tests drive, a virtual environment with Neutron 29 and the plugin for the
//! Neutron-driven tests and demo, and bpffs at /sys/fs/bpf.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

use crate::run::{Env, cargo, is_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker links the bitcode rustc emits, so it must use the LLVM of the nightly that
/// builds `dvr-ebpf`; 0.13 supports it through its `llvm-22` feature.
const BPF_LINKER_LLVM_MAJOR: &str = "22";

/// Tools the integration tests and the demo run (Debian package names).
const PACKAGES: [&str; 18] = [
    "iproute2",
    "iperf3",
    "iputils-ping",
    "iputils-arping",
    "iputils-tracepath",
    "tcpdump",
    "socat",
    "netcat-openbsd",
    "bpftool",
    "python3-scapy",
    "keepalived",
    "etcd-server",
    "etcd-client",
    "sockperf",
    // protoc, for the etcd client's generated gRPC code.
    "protobuf-compiler",
    "ethtool",
    // iptables-restore, ip rule and ebtables-nft for `cargo xtask bench`'s namespace
    // (Neutron DVR) baseline.
    "iptables",
    // `python3 -m venv` for the Neutron test bed (`neutron`).
    "python3-venv",
];

const BPFFS: &str = "/sys/fs/bpf";

/// Everything: toolchain, packages, the Neutron venv and (as root) bpffs.
pub fn all(env: &Env) -> anyhow::Result<()> {
    toolchain(env)?;
    packages(env)?;
    neutron(env)?;
    if is_root()? {
        bpffs(env)
    } else {
        println!("setup: bpffs: not root, leaving {BPFFS} alone");
        Ok(())
    }
}

/// What building the BPF object needs: nightly with rust-src, and bpf-linker.
pub fn toolchain(env: &Env) -> anyhow::Result<()> {
    let sysroot = nightly_sysroot(env)?;
    rust_src(env, &sysroot)?;
    bpf_linker(env, &sysroot)
}

fn nightly_sysroot(env: &Env) -> anyhow::Result<PathBuf> {
    let probe = || {
        env.probe(
            env.command("rustc")
                .args(["+nightly", "--print", "sysroot"]),
        )
    };
    if let Some(sysroot) = probe() {
        println!("setup: nightly toolchain: present ({sysroot})");
        return Ok(sysroot.into());
    }
    println!("setup: nightly toolchain: installing");
    env.run(env.command("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    probe()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("`rustc +nightly --print sysroot` fails after installing nightly"))
}

fn rust_src(env: &Env, sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        println!("setup: nightly rust-src: present");
        return Ok(());
    }
    println!("setup: nightly rust-src: installing");
    env.run(
        env.command("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

fn bpf_linker(env: &Env, sysroot: &Path) -> anyhow::Result<()> {
    let probe = || env.probe(env.command("bpf-linker").arg("--version"));
    if let Some(version) = probe() {
        println!("setup: bpf-linker: present ({version})");
        return Ok(());
    }
    // A bpf-linker that exists but no longer starts was linked against an older nightly's
    // libLLVM, hence `--force` below.
    println!("setup: bpf-linker: building {BPF_LINKER_VERSION} against nightly rustc's LLVM");
    let sys_lib = sysroot.join("lib");
    let libllvm = nightly_libllvm(&sys_lib)?;

    // bpf-linker's build looks for `$LLVM_PREFIX/lib/libLLVM.so`; rustc ships it only under
    // its versioned name, so give it a prefix holding just that link. At run time the rpath
    // finds the real library in the sysroot.
    let prefix = env.cargo_home.join("dvr-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("create {}", prefix_lib.display()))?;
    let link = prefix_lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("remove old {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("link {} to {}", link.display(), libllvm.display()))?;

    let install = |locked: bool| {
        let mut cmd = cargo(env);
        cmd.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features"])
            .arg(format!("llvm-{BPF_LINKER_LLVM_MAJOR}"))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", sys_lib.display()),
            );
        env.run(&mut cmd)
    };
    if let Err(err) = install(true) {
        println!("setup: bpf-linker: --locked build failed ({err:#}); retrying without --locked");
        install(false)?;
    }
    let version = probe().ok_or_else(|| {
        anyhow!(
            "bpf-linker was installed into {} but does not run",
            env.cargo_home.display()
        )
    })?;
    println!("setup: bpf-linker: installed ({version})");
    Ok(())
}

/// The nightly sysroot's `libLLVM.so.<major>.<minor>-rust-<version>-nightly`, checked to be
/// the LLVM major bpf-linker is built for.
fn nightly_libllvm(sys_lib: &Path) -> anyhow::Result<PathBuf> {
    let entries =
        std::fs::read_dir(sys_lib).with_context(|| format!("list {}", sys_lib.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", sys_lib.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = name.strip_prefix("libLLVM.so.") else {
            continue;
        };
        if !version.contains("-rust-") {
            continue;
        }
        let major = version.split('.').next().unwrap_or_default();
        if major != BPF_LINKER_LLVM_MAJOR {
            bail!(
                "nightly rustc uses LLVM {major} ({name}), but setup builds bpf-linker \
                 {BPF_LINKER_VERSION} with llvm-{BPF_LINKER_LLVM_MAJOR}: update \
                 BPF_LINKER_VERSION / BPF_LINKER_LLVM_MAJOR in xtask/src/setup.rs"
            );
        }
        return Ok(entry.path());
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: is this a rustup nightly toolchain?",
        sys_lib.display()
    )
}

/// Installs the missing Debian packages (one `apt-get update` first, only if any is missing).
fn packages(env: &Env) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for pkg in PACKAGES {
        let status = std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .context("run dpkg-query (setup installs Debian packages)")?;
        if String::from_utf8_lossy(&status.stdout).trim() != "install ok installed" {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        println!("setup: packages: all present ({})", PACKAGES.join(" "));
        return Ok(());
    }
    println!("setup: packages: installing {}", missing.join(" "));
    if !is_root()? {
        bail!(
            "setup needs root to install Debian packages: {}",
            missing.join(" ")
        );
    }
    env.run(env.command("apt-get").arg("update"))?;
    env.run(
        env.command("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Mounts bpffs at /sys/fs/bpf unless it is already there; the agents pin maps under it.
pub fn bpffs(env: &Env) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    });
    if mounted {
        println!("setup: bpffs: mounted at {BPFFS}");
        return Ok(());
    }
    println!("setup: bpffs: mounting at {BPFFS}");
    env.run(env.command("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// The Neutron plugin's directory, and the lock file of its virtual environment.
const PLUGIN_DIR: &str = "neutron-plugin";
const NEUTRON_LOCK: &str = "neutron-plugin/requirements.lock";

/// Where the Neutron venv lives (the test bed and the demo find it through
/// `DVR_NEUTRON_VENV`).
pub fn neutron_venv_dir(env: &Env) -> PathBuf {
    env.target_dir.join("neutron-venv")
}

/// A virtual environment with Neutron 29 and etcd3gw as pinned in the lock file, and the
/// plugin installed editable (its code is read from the repository). Re-made only when the
/// lock file or the plugin's packaging changed; `python3 -m venv` needs python3-venv on
/// Debian, which `packages` installs.
pub fn neutron(env: &Env) -> anyhow::Result<PathBuf> {
    let venv = neutron_venv_dir(env);
    let stamp_path = venv.join("dvr-stamp");
    let mut stamp = String::new();
    for file in [NEUTRON_LOCK, "neutron-plugin/pyproject.toml"] {
        let path = env.root.join(file);
        stamp +=
            &std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    }
    let python = venv.join("bin").join("python");
    let importable = || {
        env.probe(
            env.command(&python)
                .args(["-c", "import neutron, etcd3gw, networking_dvr_ebpf"]),
        )
        .is_some()
    };
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) && importable() {
        println!("setup: neutron venv: present ({})", venv.display());
        return Ok(venv);
    }
    println!(
        "setup: neutron venv: installing Neutron 29 from {NEUTRON_LOCK} into {} (about a minute)",
        venv.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    env.run(env.command("python3").arg("-m").arg("venv").arg(&venv))?;
    let pip = venv.join("bin").join("pip");
    env.run(
        env.command(&pip)
            .args(["install", "--quiet", "--no-deps", "-r"])
            .arg(env.root.join(NEUTRON_LOCK)),
    )?;
    env.run(
        env.command(&pip)
            .args(["install", "--quiet", "--no-deps", "-e"])
            .arg(env.root.join(PLUGIN_DIR)),
    )?;
    if !importable() {
        bail!(
            "the neutron venv at {} was installed but cannot import neutron, etcd3gw and \
             networking_dvr_ebpf",
            venv.display()
        );
    }
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("write {}", stamp_path.display()))?;
    println!("setup: neutron venv: installed");
    Ok(venv)
}
