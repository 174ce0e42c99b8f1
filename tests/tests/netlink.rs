//! The agent's netlink plumbing (`dvr_userspace::attach`) against the kernel, each test in
//! network namespaces of its own (deleted on drop, also when the test fails): the VXLAN
//! collect_md device is what `ip link add ... external dstport 4789 nolearning` makes, a
//! foreign `dvr-vx` is refused and left alone, uninstall removes only the agent's kind of
//! device, and link notifications report links appearing, renamed and going. Needs root.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use dvr_tests::{cloud::ns_name, cmd, require_testbed_preconditions};
use dvr_userspace::attach::{self, LinkWatch, TUNNEL_DEV};
use serde_json::Value;

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Result<Self> {
        let name = ns_name(role);
        cmd::ip(&["netns", "add", &name])?;
        Ok(Self(name))
    }

    /// `ip -n NS ARGS`, checked.
    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        cmd::ip(&full)
    }

    /// `ip -n NS -d -j link show dev DEV` (`None` when there is no such device), without
    /// what differs between any two devices (ifindex, MAC).
    fn link_details(&self, dev: &str) -> Result<Option<Value>> {
        let out = cmd::run_with_deadline(
            "ip",
            &["-n", &self.0, "-d", "-j", "link", "show", "dev", dev],
            cmd::DEFAULT_DEADLINE,
        )?;
        if !out.status.success() {
            return Ok(None);
        }
        let mut v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("ip -j link show dev {dev}: {}", cmd::text(&out)))?;
        let obj = v
            .get_mut(0)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| anyhow!("ip -j link show dev {dev}: {}", cmd::text(&out)))?;
        obj.remove("ifindex");
        obj.remove("address");
        Ok(Some(v))
    }

    /// Runs `f` on a thread that has entered this namespace (setns on the network namespace
    /// only, as the test bed's agents do).
    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).with_context(|| format!("open {path}"))?;
                setns_net(ns.as_raw_fd()).with_context(|| format!("setns {path}"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("the thread in {} panicked", self.0))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::ip(&["netns", "del", &self.0]) {
            eprintln!("deleting netns {}: {e:#}", self.0);
        }
    }
}

fn setns_net(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fd is an open namespace file; setns changes only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A bpffs root that does not exist: uninstall then only looks at the device.
fn no_pins() -> PathBuf {
    PathBuf::from(format!("/tmp/dvrt-{}-no-pins", std::process::id()))
}

#[test]
fn netlink_tunnel_device_is_what_ip_link_add_makes_and_uninstall_removes_it() -> Result<()> {
    require_testbed_preconditions();
    let agent = Netns::new("nl-agent")?;
    let ip = Netns::new("nl-ip")?;
    let (first, again, names) = agent.run(|| {
        let first = attach::ensure_tunnel_dev()?;
        // A second agent adopts it.
        let again = attach::ensure_tunnel_dev()?;
        Ok((first, again, attach::interfaces()?))
    })?;
    ensure!(first == again, "ifindex {first}, then {again}: not adopted");
    ensure!(
        names.get(TUNNEL_DEV) == Some(&first) && names.contains_key("lo"),
        "interfaces() = {names:?}, dvr-vx is {first}"
    );
    // What the agent made before, with iproute2.
    ip.ip(&[
        "link",
        "add",
        TUNNEL_DEV,
        "type",
        "vxlan",
        "external",
        "dstport",
        "4789",
        "nolearning",
    ])?;
    ip.ip(&["link", "set", "dev", TUNNEL_DEV, "up"])?;
    let made = agent
        .link_details(TUNNEL_DEV)?
        .context("no dvr-vx in the agent's namespace")?;
    let want = ip.link_details(TUNNEL_DEV)?.context("no dvr-vx from ip")?;
    ensure!(
        made == want,
        "dvr-vx made through netlink:\n{made:#}\nmade by ip:\n{want:#}"
    );
    eprintln!("dvr-vx: {made}");

    let mac = agent.run(|| Ok(attach::mac_of(TUNNEL_DEV)))?;
    let out = cmd::run_ok(
        "ip",
        &["-n", &agent.0, "-j", "link", "show", "dev", TUNNEL_DEV],
    )?;
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    let shown = shown[0]["address"].as_str().unwrap_or_default().to_string();
    let mac = mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    });
    ensure!(
        mac.as_deref() == Some(shown.as_str()),
        "mac_of(dvr-vx) = {mac:?}, ip says {shown}"
    );

    let removed = agent.run(|| Ok(attach::uninstall(&no_pins(), "h1")?))?;
    ensure!(
        removed == ["device dvr-vx"],
        "uninstall removed {removed:?}"
    );
    ensure!(
        agent.link_details(TUNNEL_DEV)?.is_none(),
        "dvr-vx is still there after uninstall"
    );
    let removed = agent.run(|| Ok(attach::uninstall(&no_pins(), "h1")?))?;
    ensure!(removed.is_empty(), "second uninstall removed {removed:?}");
    Ok(())
}

#[test]
fn netlink_foreign_dvr_vx_is_refused_and_left_alone() -> Result<()> {
    require_testbed_preconditions();
    for (what, args) in [
        ("a bridge", vec!["type", "bridge"]),
        (
            "a VXLAN device with a VNI",
            vec!["type", "vxlan", "id", "42", "dstport", "4789"],
        ),
    ] {
        let ns = Netns::new("nl-foreign")?;
        let mut add = vec!["link", "add", TUNNEL_DEV];
        add.extend(args);
        ns.ip(&add)?;
        let before = ns.link_details(TUNNEL_DEV)?;
        let (made, removed) = ns.run(|| {
            let made = attach::ensure_tunnel_dev().map_err(|e| e.to_string());
            Ok((made, attach::uninstall(&no_pins(), "h1")?))
        })?;
        match made {
            Err(e) => ensure!(
                e == "device dvr-vx: exists and is not a VXLAN collect_md (external) device; \
                      not touching it",
                "{what}: {e}"
            ),
            Ok(i) => bail!("{what}: adopted as the tunnel device (ifindex {i})"),
        }
        ensure!(removed.is_empty(), "{what}: uninstall removed {removed:?}");
        ensure!(
            ns.link_details(TUNNEL_DEV)? == before,
            "{what}: changed: {before:?} -> {:?}",
            ns.link_details(TUNNEL_DEV)?
        );
    }
    Ok(())
}

/// Waits up to 5 s for `watch` to report a change.
fn wait_changed(watch: &mut LinkWatch, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if watch.changed() {
            return Ok(());
        }
        watch.wait(Duration::from_millis(100));
    }
    bail!("no link notification within 5 s after {what}")
}

/// Reads what is pending (waiting up to `window` for it) and says whether it was a change.
fn settle(watch: &mut LinkWatch, window: Duration) -> bool {
    let deadline = Instant::now() + window;
    let mut changed = false;
    while Instant::now() < deadline {
        watch.wait(Duration::from_millis(50));
        changed |= watch.changed();
    }
    changed
}

#[test]
fn netlink_link_watch_reports_links_appearing_renamed_and_going() -> Result<()> {
    require_testbed_preconditions();
    let ns = Netns::new("nl-watch")?;
    let names = |m: BTreeMap<String, u32>| m.into_keys().collect::<Vec<_>>();
    ns.run(|| {
        let mut watch = LinkWatch::open()?;
        ensure!(watch.as_raw_fd() >= 0, "no fd");
        ensure!(!watch.changed(), "a change reported before any");
        ensure!(
            !watch.wait(Duration::from_millis(50)),
            "an event with nothing done"
        );

        ns.ip(&[
            "link", "add", "nlw-a", "type", "veth", "peer", "name", "nlw-b",
        ])?;
        wait_changed(&mut watch, "adding a veth pair")?;
        let now = names(attach::interfaces()?);
        ensure!(now == ["lo", "nlw-a", "nlw-b"], "{now:?}");

        // A state change of a known link is not a change of the list.
        ns.ip(&["link", "set", "dev", "nlw-a", "up"])?;
        ensure!(
            !settle(&mut watch, Duration::from_millis(500)),
            "setting a link up reported as a change"
        );

        ns.ip(&["link", "set", "dev", "nlw-b", "name", "nlw-c"])?;
        wait_changed(&mut watch, "renaming nlw-b to nlw-c")?;
        let now = names(attach::interfaces()?);
        ensure!(now == ["lo", "nlw-a", "nlw-c"], "{now:?}");

        ns.ip(&["link", "del", "dev", "nlw-a"])?;
        wait_changed(&mut watch, "deleting the veth pair")?;
        let now = names(attach::interfaces()?);
        ensure!(now == ["lo"], "{now:?}");
        ensure!(
            !settle(&mut watch, Duration::from_millis(300)),
            "a change reported after everything was read"
        );
        Ok(())
    })
}
