//! Namespaces, background processes and in-namespace threads for the benchmarks.
//!
//! Namespaces get the test bed's names (`dvrt-<pid>-<n>-<role>`, [`crate::cloud::ns_name`]),
//! so a run that was killed before its guards ran is cleaned up by the next one
//! ([`crate::reap_stale_namespaces`]).

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::cloud::ns_name;
use crate::cmd::{self, ChildGuard, exec, exec_ok, ip, text, wait_until};

/// Namespaces created through it, deleted (in reverse order) on drop. Deleting a namespace
/// removes its links, addresses, routes, rules, iptables and ebtables state.
#[derive(Debug, Default)]
pub struct NsSet {
    names: Vec<String>,
}

impl NsSet {
    pub fn new() -> NsSet {
        NsSet::default()
    }

    /// A new namespace with IPv6 off (no RS/MLD noise), `lo` up and `sysctls` set.
    pub fn add(&mut self, role: &str, sysctls: &[&str]) -> Result<String> {
        let ns = ns_name(role);
        ip(&["netns", "add", &ns])?;
        self.names.push(ns.clone());
        let mut args = vec![
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ];
        args.extend_from_slice(sysctls);
        exec_ok(&ns, &args)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for NsSet {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("dvr-bench: teardown: deleting netns {ns}: {e:#}");
            }
        }
    }
}

/// Runs `f` on a new thread that has entered namespace `ns` (setns on the network namespace
/// only: the thread keeps the process's mounts, files and the rest).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    let path = PathBuf::from("/run/netns").join(ns);
    thread::spawn(move || {
        let file = fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        // SAFETY: setns(2) with a valid namespace fd; CLONE_NEWNET only switches the calling
        // thread's network namespace, and this thread ends when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", path.display()));
        }
        f()
    })
}

/// Joins an [`in_netns`] thread.
pub fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow!("a thread in a namespace panicked"))?
}

/// A background process in a namespace, stdout and stderr to files in `dir`; stopped by pid
/// (SIGTERM, then SIGKILL) on drop.
pub struct BgProc {
    pub guard: ChildGuard,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl BgProc {
    pub fn output(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.out).unwrap_or_default(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }
}

/// Starts `args` in `ns` (through `ip netns exec`, which execs the program: the child pid is
/// the program's).
pub fn spawn_in(ns: &str, args: &[&str], dir: &Path, tag: &str) -> Result<BgProc> {
    let out = dir.join(format!("{tag}.out"));
    let err = dir.join(format!("{tag}.err"));
    let what = format!(
        "{} in {ns}",
        cmd::describe(
            args.first().copied().unwrap_or(""),
            args.get(1..).unwrap_or(&[])
        )
    );
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).with_context(|| format!("{}", out.display()))?)
        .stderr(fs::File::create(&err).with_context(|| format!("{}", err.display()))?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(BgProc {
        guard: ChildGuard::new(child, what),
        out,
        err,
    })
}

/// Waits until something in `ns` listens on `port` (TCP, or UDP when `udp`); fails at once if
/// `proc` exits first.
pub fn wait_listening(ns: &str, udp: bool, port: u16, proc: &mut BgProc) -> Result<()> {
    let flags = if udp { "-lun" } else { "-ltn" };
    let filter = format!("sport = :{port}");
    wait_until(
        &format!("a listener on port {port} in {ns}"),
        Duration::from_secs(10),
        |why| {
            if let Some(status) = proc.guard.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening: {}",
                    proc.guard.what(),
                    proc.output().trim()
                );
            }
            let out = exec(ns, &["ss", "-H", flags, &filter])?;
            *why = text(&out);
            Ok((!cmd::stdout(&out).trim().is_empty()).then_some(()))
        },
    )
}

/// `ping -c count` from `ns`, failing unless every echo is answered.
pub fn ping_ok(ns: &str, dst: Ipv4Addr, count: u32) -> Result<()> {
    let count_s = count.to_string();
    let out = cmd::exec_with_deadline(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count_s,
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
        Duration::from_secs(10) + Duration::from_millis(200 * u64::from(count)),
    )?;
    let r = crate::cloud::parse_ping(&text(&out));
    if !r.all_answered() {
        bail!(
            "ping {dst} from {ns}: {}/{} answered:\n{}",
            r.received,
            r.transmitted,
            r.output.trim()
        );
    }
    Ok(())
}
