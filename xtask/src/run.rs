//! Paths of the workspace and running child processes with their output streamed.
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

/// Where things are, resolved once.
pub struct Env {
    /// The workspace root (parent of xtask's manifest directory).
    pub root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
    pub target_dir: PathBuf,
    /// `CARGO_HOME` (or `~/.cargo`): where `cargo install` puts bpf-linker.
    pub cargo_home: PathBuf,
    /// The cargo that runs us (`CARGO`), so children use the same toolchain.
    pub cargo: OsString,
    /// `PATH` with `$CARGO_HOME/bin` added, so aya-build finds a freshly installed bpf-linker.
    path: OsString,
}

impl Env {
    pub fn new() -> anyhow::Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?
            .to_path_buf();
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            // Relative to where cargo was started, as cargo reads it.
            Some(dir) => std::env::current_dir()
                .context("current directory")?
                .join(dir),
            None => root.join("target"),
        };
        let cargo_home = match std::env::var_os("CARGO_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home =
                    std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
                PathBuf::from(home).join(".cargo")
            }
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let cargo_bin = cargo_home.join("bin");
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if !dirs.contains(&cargo_bin) {
            dirs.push(cargo_bin);
        }
        let path = std::env::join_paths(dirs).context("join PATH")?;
        Ok(Self {
            root,
            target_dir,
            cargo_home,
            cargo,
            path,
        })
    }

    /// Where `cargo build` (dev profile) puts the binaries.
    pub fn bin_dir(&self) -> PathBuf {
        self.target_dir.join("debug")
    }

    /// A command run from the workspace root with our `PATH`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    /// Print the command, run it with inherited stdio, fail unless it exits 0.
    pub fn run(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let shown = show(cmd);
        println!("+ {shown}");
        let status = cmd.status().with_context(|| format!("start `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }

    /// Run a `cargo test` command like [`Env::run`], echoing its stdout while adding up the
    /// `test result:` lines into `tally`. The tally is updated even when the run fails.
    pub fn run_tests(&self, cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        let shown = show(cmd);
        println!("+ {shown}");
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("start `{shown}`"))?;
        if let Some(out) = child.stdout.take() {
            for line in std::io::BufReader::new(out).lines() {
                let line = line.context("reading test output")?;
                println!("{line}");
                tally.add_line(&line);
            }
        }
        let status = child
            .wait()
            .with_context(|| format!("wait for `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }

    /// Run quietly and return stdout if it exits 0; `None` if it cannot start or fails.
    pub fn probe(&self, cmd: &mut Command) -> Option<String> {
        let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// `cargo` from the workspace root. `AYA_BUILD_SKIP` is removed: it makes build.rs embed an
/// empty object, which is only meant for quick unit-test builds by hand.
pub fn cargo(env: &Env) -> Command {
    let mut cmd = env.command(&env.cargo);
    cmd.env_remove("AYA_BUILD_SKIP");
    cmd
}

fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let envs = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())));
    envs.chain(parts).collect::<Vec<_>>().join(" ")
}

/// Effective uid 0, read from /proc so that no `unsafe` libc call is needed.
pub fn is_root() -> anyhow::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no Uid line in /proc/self/status"))?;
    Ok(euid == "0")
}

/// Passed/failed counts summed over every `test result:` line of cargo's test harness.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// Add a line such as `test result: ok. 17 passed; 0 failed; 0 ignored; ...`.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_adds_cargo_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 27.38s");
        t.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!(
            t,
            Tally {
                passed: 19,
                failed: 3
            }
        );
    }
}
