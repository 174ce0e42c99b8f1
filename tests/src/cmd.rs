//! Running commands with deadlines, inside network namespaces, and owning child processes.
//!
//! Nothing here waits without a bound: every command runs under a deadline and is killed (by its
//! own pid) when it overruns; every background process is owned by a [`ChildGuard`] that stops
//! it on drop.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Deadline for ordinary one-shot commands (`ip`, `sysctl`, `dvrctl`, ...).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How often poll loops look again.
pub const POLL: Duration = Duration::from_millis(20);

/// Locks a mutex, ignoring poisoning (a panicking reader thread must not hide captured data).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Human-readable command line for error messages.
pub fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push('\'');
            s.push_str(a);
            s.push('\'');
        } else {
            s.push_str(a);
        }
    }
    s
}

/// stdout and stderr of an [`Output`], lossily decoded and concatenated.
pub fn text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&err);
    }
    s
}

/// Only stdout of an [`Output`], lossily decoded.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Only stderr of an [`Output`], lossily decoded.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `program args` with a deadline; returns its output whatever the exit status. A command
/// still running at the deadline is killed and reported as an error.
pub fn run_with_deadline(program: &str, args: &[&str], deadline: Duration) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    output_with_deadline(cmd, &describe(program, args), deadline)
}

/// Like [`run_with_deadline`] for a prepared [`Command`] (`what` names it in errors).
pub fn output_with_deadline(mut cmd: Command, what: &str, deadline: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let out_reader = child.stdout.take().map(spawn_reader);
    let err_reader = child.stderr.take().map(spawn_reader);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{what}`"))?
        {
            break Some(status);
        }
        if start.elapsed() >= deadline {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_reader.map(join_reader).unwrap_or_default();
    let stderr = err_reader.map(join_reader).unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "`{what}` did not finish within {deadline:?}; killed it. stdout: {} stderr: {}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        ),
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(h: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

/// Runs a command with [`DEFAULT_DEADLINE`] and fails on a non-zero exit, quoting its output.
pub fn run_ok(program: &str, args: &[&str]) -> Result<Output> {
    let out = run_with_deadline(program, args, DEFAULT_DEADLINE)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(program, args),
            out.status,
            text(&out).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS`, checked.
pub fn ip(args: &[&str]) -> Result<()> {
    run_ok("ip", args).map(|_| ())
}

/// GRO on for veth `dev` in namespace `ns`: the kernel then runs NAPI for it, so it takes
/// frames that XDP on its peer sends (`XDP_TX`, `XDP_REDIRECT`); what the agents'
/// `--xdp-veth-peers` says of every veth peer in a test cloud.
pub fn gro_on(ns: &str, dev: &str) -> Result<()> {
    ethtool_k(ns, dev, "gro", "on")
}

/// Transmit checksum offload off for veth `dev` in namespace `ns`: what it sends carries
/// whole checksums, as frames on a wire do (a veth otherwise leaves them partial, for the
/// receiving stack, which XDP on its peer is not). Segmentation stays offloaded to the
/// kernel's software GSO. What the agents' `--xdp-veth-peers` says of the external
/// bridge's ports in a test cloud.
pub fn tx_checksum_off(ns: &str, dev: &str) -> Result<()> {
    ethtool_k(ns, dev, "tx", "off")
}

/// `ethtool -K DEV FEATURE VALUE` in namespace `ns`, checked.
fn ethtool_k(ns: &str, dev: &str, feature: &str, value: &str) -> Result<()> {
    let out = exec(ns, &["ethtool", "-K", dev, feature, value])?;
    ensure!(
        out.status.success(),
        "ethtool -K {dev} {feature} {value} in {ns}: {}",
        text(&out).trim()
    );
    Ok(())
}

/// `ip netns exec NS ARGS` with [`DEFAULT_DEADLINE`]; returns the output whatever the status.
pub fn exec(ns: &str, args: &[&str]) -> Result<Output> {
    exec_with_deadline(ns, args, DEFAULT_DEADLINE)
}

/// `ip netns exec NS ARGS` with a deadline; returns the output whatever the status.
pub fn exec_with_deadline(ns: &str, args: &[&str], deadline: Duration) -> Result<Output> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run_with_deadline("ip", &full, deadline)
}

/// `ip netns exec NS ARGS`, failing on a non-zero exit.
pub fn exec_ok(ns: &str, args: &[&str]) -> Result<Output> {
    let out = exec(ns, args)?;
    if !out.status.success() {
        bail!(
            "`{}` in netns {ns} failed ({}): {}",
            describe(
                args.first().copied().unwrap_or(""),
                args.get(1..).unwrap_or(&[])
            ),
            out.status,
            text(&out).trim()
        );
    }
    Ok(out)
}

/// Polls `f` every [`POLL`] until it returns `Some`, an error that is not retried, or the deadline
/// passes. `f` returning `Ok(None)` means "not yet". The last "not yet" reason (if `f` records one
/// in `why`) is quoted in the timeout error.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut(&mut String) -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut why = String::new();
    loop {
        if let Some(v) = f(&mut why)? {
            return Ok(v);
        }
        if start.elapsed() >= deadline {
            if why.is_empty() {
                bail!("timed out after {deadline:?} waiting for {what}");
            }
            bail!("timed out after {deadline:?} waiting for {what}; last state: {why}");
        }
        thread::sleep(POLL);
    }
}

/// Sends `sig` to `pid`. Only ever called with pids of processes this crate started.
pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is one of our own children.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(err).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(())
}

/// A background process this crate started. Stopped (SIGTERM, a bounded wait, then SIGKILL) on
/// [`ChildGuard::stop`] or on drop, always by its own pid.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            what: what.into(),
            status: None,
        }
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has ended (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(self.status);
        };
        let status = child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.what))?;
        if let Some(status) = status {
            self.status = Some(status);
            self.child = None;
        }
        Ok(status)
    }

    /// Waits up to `deadline` for the process to end by itself.
    pub fn wait_deadline(&mut self, deadline: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if start.elapsed() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL at once (no chance to clean up, like `kill -9`) and reap. Returns the exit status
    /// (that of an earlier exit if the process had ended by itself).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let Some(mut child) = self.child.take() else {
            bail!("{} vanished before SIGKILL", self.what);
        };
        // Our own child, by its pid.
        child
            .kill()
            .with_context(|| format!("SIGKILL {}", self.what))?;
        let status = child
            .wait()
            .with_context(|| format!("reaping {}", self.what))?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status and whether SIGKILL was
    /// needed.
    pub fn stop(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(status) = self.try_wait()? {
            return Ok((status, false));
        }
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGTERM)?;
        }
        if let Some(status) = self.wait_deadline(grace)? {
            return Ok((status, false));
        }
        let Some(mut child) = self.child.take() else {
            bail!("{} vanished while stopping", self.what);
        };
        // Our own child, by its pid.
        child
            .kill()
            .with_context(|| format!("SIGKILL {}", self.what))?;
        let status = child
            .wait()
            .with_context(|| format!("reaping {}", self.what))?;
        self.status = Some(status);
        Ok((status, true))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop(Duration::from_secs(3))
        {
            eprintln!("dvr-tests: could not stop {}: {e:#}", self.what);
        }
    }
}

/// Looks a program up in `$PATH`.
pub fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
