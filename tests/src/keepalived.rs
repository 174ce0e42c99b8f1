//! keepalived in VM namespaces: VRRP over unicast between VMs, moving a VIP.
//!
//! [`Cloud::start_keepalived`] writes a config into a per-instance directory of the cloud's
//! temp dir and runs `keepalived -n -l -D -P` (foreground, log to the console, VRRP only) in
//! the VM's namespace. The returned [`Keepalived`] owns the process: it is stopped by its pid
//! (SIGTERM, bounded wait, SIGKILL) on [`Keepalived::stop`] or drop, and so is its VRRP child
//! if it outlives the parent (checked by pid from the VRRP pid file, and only if that process
//! is a keepalived in the VM's namespace). Drop it before the cloud (declare it after).

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, ensure};

use crate::cloud::Cloud;
use crate::cmd::{self, ChildGuard, wait_until};

/// How long keepalived gets to exit after SIGTERM.
pub const KEEPALIVED_STOP_GRACE: Duration = Duration::from_secs(5);

/// One VRRP instance holding one VIP on `eth0`, talking unicast to its peers.
#[derive(Clone, Debug)]
pub struct KeepalivedConf {
    pub virtual_router_id: u8,
    pub priority: u8,
    /// Initial state MASTER (else BACKUP).
    pub master: bool,
    pub vip: Ipv4Addr,
    pub prefix: u8,
    /// `unicast_src_ip`: the VM's fixed IP.
    pub src: Ipv4Addr,
    /// `unicast_peer`: the other VMs' fixed IPs.
    pub peers: Vec<Ipv4Addr>,
}

impl KeepalivedConf {
    /// The keepalived.conf text.
    pub fn render(&self, name: &str) -> String {
        let peers: String = self
            .peers
            .iter()
            .map(|p| format!("        {p}\n"))
            .collect();
        format!(
            "global_defs {{\n    router_id {name}\n    enable_script_security\n    \
             vrrp_garp_master_delay 1\n    vrrp_garp_master_repeat 3\n}}\n\
             vrrp_instance dvrt {{\n    state {state}\n    interface eth0\n    \
             virtual_router_id {vrid}\n    priority {prio}\n    advert_int 1\n    \
             unicast_src_ip {src}\n    unicast_peer {{\n{peers}    }}\n    \
             virtual_ipaddress {{\n        {vip}/{prefix} dev eth0\n    }}\n}}\n",
            state = if self.master { "MASTER" } else { "BACKUP" },
            vrid = self.virtual_router_id,
            prio = self.priority,
            src = self.src,
            vip = self.vip,
            prefix = self.prefix,
        )
    }
}

/// A running keepalived (see the module docs).
pub struct Keepalived {
    vm: String,
    guard: ChildGuard,
    dir: PathBuf,
    log: PathBuf,
    /// The VM namespace's inode, to recognise our VRRP child by its namespace.
    netns_ino: u64,
}

impl std::fmt::Debug for Keepalived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keepalived")
            .field("vm", &self.vm)
            .field("pid", &self.guard.pid())
            .finish_non_exhaustive()
    }
}

impl Cloud {
    /// Starts keepalived in VM `vm` with `conf` and waits until its VRRP child runs (its pid
    /// file holds a live pid). Does not wait for a VRRP state: see [`Cloud::wait_vm_address`].
    pub fn start_keepalived(&mut self, vm: &str, conf: &KeepalivedConf) -> Result<Keepalived> {
        ensure!(
            cmd::find_in_path("keepalived").is_some(),
            "this test cannot run here: `keepalived` not found in PATH"
        );
        let ns = self.vm(vm)?.ns.clone();
        self.files_seq += 1;
        let dir = self.dir.join(format!("keepalived-{vm}-{}", self.files_seq));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf_path = dir.join("keepalived.conf");
        fs::write(&conf_path, conf.render(&format!("dvrt_{vm}")))
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let log = dir.join("keepalived.log");
        let netns_ino = fs::metadata(format!("/run/netns/{ns}"))
            .with_context(|| format!("stat /run/netns/{ns}"))?
            .ino();
        let mut c = Command::new("ip");
        // `ip netns exec` execs keepalived: the child's pid is keepalived's (the parent, which
        // stops its VRRP child on SIGTERM).
        c.args(["netns", "exec", &ns, "keepalived", "-n", "-l", "-D", "-P"])
            .arg("-f")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).with_context(|| format!("{}", log.display()))?)
            .stderr(
                fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .with_context(|| format!("{}", log.display()))?,
            );
        let child = c.spawn().context("starting keepalived")?;
        let mut k = Keepalived {
            vm: vm.to_string(),
            guard: ChildGuard::new(child, format!("keepalived in {vm}")),
            dir,
            log,
            netns_ino,
        };
        wait_until(
            &format!("keepalived in {vm} to start its VRRP child"),
            Duration::from_secs(10),
            |why| {
                if let Some(s) = k.guard.try_wait()? {
                    anyhow::bail!("keepalived in {vm} exited ({s}):\n{}", k.log_text());
                }
                *why = k.log_text();
                Ok(k.vrrp_child().map(|_| ()))
            },
        )?;
        Ok(k)
    }

    /// Waits until VM `vm` has `ip` on `eth0` (present) or not (`!present`).
    pub fn wait_vm_address(
        &self,
        vm: &str,
        ip: Ipv4Addr,
        present: bool,
        deadline: Duration,
    ) -> Result<()> {
        wait_until(
            &format!("{vm} to {} {ip}", if present { "hold" } else { "drop" }),
            deadline,
            |_| Ok((self.vm_has_address(vm, ip)? == present).then_some(())),
        )
    }
}

impl Keepalived {
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The pid of the keepalived parent, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.guard.pid()
    }

    /// Its console log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of its VRRP child if that is alive, a keepalived, in the VM's namespace.
    fn vrrp_child(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.dir.join("vrrp.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let ino = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
        (comm.trim() == "keepalived" && ino == self.netns_ino).then_some(pid)
    }

    /// Sends SIGTERM (by pid) and returns when it was sent; does not wait. keepalived, when
    /// MASTER, then sends a priority-0 advertisement and removes the VIP.
    pub fn terminate(&mut self) -> Result<SystemTime> {
        let pid = self
            .guard
            .pid()
            .ok_or_else(|| anyhow!("keepalived in {} is not running", self.vm))?;
        let at = SystemTime::now();
        cmd::signal(pid, libc::SIGTERM)?;
        Ok(at)
    }

    /// Waits up to `deadline` for it to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<Option<ExitStatus>> {
        self.guard.wait_deadline(deadline)
    }

    /// Stops it (SIGTERM, bounded wait, SIGKILL), then its VRRP child if that survived.
    /// Fails if either needed SIGKILL.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let (status, killed) = self.guard.stop(KEEPALIVED_STOP_GRACE)?;
        let orphan = self.reap_vrrp_child()?;
        ensure!(
            !killed,
            "keepalived in {} ignored SIGTERM; killed it",
            self.vm
        );
        ensure!(
            !orphan,
            "keepalived's VRRP child in {} outlived its parent; stopped it",
            self.vm
        );
        Ok(status)
    }

    /// Stops a VRRP child that outlived its parent (SIGTERM, then SIGKILL after the grace
    /// period). Returns whether there was one.
    fn reap_vrrp_child(&self) -> Result<bool> {
        let Some(pid) = self.vrrp_child() else {
            return Ok(false);
        };
        cmd::signal(pid, libc::SIGTERM)?;
        let gone = wait_until(
            "keepalived's VRRP child to exit",
            KEEPALIVED_STOP_GRACE,
            |_| Ok(self.vrrp_child().is_none().then_some(())),
        );
        if gone.is_err()
            && let Some(pid) = self.vrrp_child()
        {
            cmd::signal(pid, libc::SIGKILL)?;
        }
        Ok(true)
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Err(e) = self.guard.stop(KEEPALIVED_STOP_GRACE) {
            eprintln!("dvr-tests: stopping keepalived in {}: {e:#}", self.vm);
        }
        match self.reap_vrrp_child() {
            Ok(true) => eprintln!(
                "dvr-tests: keepalived's VRRP child in {} outlived its parent; stopped it",
                self.vm
            ),
            Ok(false) => {}
            Err(e) => eprintln!(
                "dvr-tests: stopping keepalived's VRRP child in {}: {e:#}",
                self.vm
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_unicast_instance() {
        let c = KeepalivedConf {
            virtual_router_id: 51,
            priority: 150,
            master: true,
            vip: Ipv4Addr::new(192, 168, 1, 100),
            prefix: 24,
            src: Ipv4Addr::new(192, 168, 1, 10),
            peers: vec![Ipv4Addr::new(192, 168, 1, 11)],
        };
        let t = c.render("dvrt_v1");
        assert!(t.contains("state MASTER"));
        assert!(t.contains("unicast_src_ip 192.168.1.10"));
        assert!(t.contains("unicast_peer {\n        192.168.1.11\n    }"));
        assert!(t.contains("192.168.1.100/24 dev eth0"));
    }
}
