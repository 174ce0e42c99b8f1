//! The external network and floating IPs in the test bed.
//!
//! With [`Topology::external`](crate::Topology::external) the cloud gets one more namespace:
//!
//! ```text
//!   netns dvrt-<pid>-<n>-ext   br-ext 10.5.0.1/16 (the upstream router, ip_forward on)
//!                              lo 198.51.100.10/32 (an "internet host": off-link for the
//!                              external subnet, so traffic to it goes via the gateway)
//!                              xh0 -- xh1 -- ... (bridge ports)
//!                                |      |
//!   netns dvrt-<pid>-<n>-h1    ext0 (MAC = the host's floatingip_agent_gateway port MAC,
//!                                    no address: the agent's BPF owns it)
//! ```
//!
//! In the state: the flat external network `public` (10.5.0.0/16, gateway 10.5.0.1), one
//! `network:floatingip_agent_gateway` port per host (10.5.1.(11 + host index)), each host's
//! `external_interface: "ext0"`, each router's `external_gateway_info` (10.5.3.(1 + router
//! index)) and the floating IPs (10.5.2.(1 + index)). Floating IPs are changed with
//! [`Cloud::associate`], [`Cloud::disassociate`] and [`Cloud::delete_fip`], which rewrite the
//! state file like Neutron would.
//!
//! The external namespace is an endpoint named [`EXT`] for the traffic helpers
//! ([`Cloud::ping`], [`Cloud::tcp_transfer_to`], [`Cloud::udp_request`], [`Cloud::spawn`], ...).

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::capture::Capture;
use crate::cloud::{
    ArpingResult, Cidr, Cloud, KIND_FIP, new_id, new_mac, parse_arping, scapy_python,
};
use crate::cmd::{self, ChildGuard, exec, exec_with_deadline, ip, text, wait_until};
use crate::state::{self, FixedIp};

/// The endpoint name of the external namespace in the traffic helpers.
pub const EXT: &str = "ext";
/// Each host's NIC on the external network.
pub const EXT_IFACE: &str = "ext0";
/// The bridge of the external network, in the external namespace.
pub const EXT_BRIDGE: &str = "br-ext";
/// The device holding [`INTERNET_HOST`]: `lo` (no `dummy` module needed; like a dummy device
/// it makes the address local and off-link for the external subnet).
pub const INTERNET_DEV: &str = "lo";
/// The external subnet.
pub const EXT_CIDR: &str = "10.5.0.0/16";
/// The external subnet's gateway: the upstream router, on `br-ext`.
pub const EXT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);
/// An address behind the upstream router (TEST-NET-2), in the external namespace.
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// MTU of the external network.
pub const EXT_MTU: u32 = 1500;
/// `provider:physical_network` of the external network.
pub const PHYSNET: &str = "public";
/// How long [`Cloud::wait_external_ready`] waits by default (agent start).
pub const EXTERNAL_READY_DEADLINE: Duration = Duration::from_secs(10);

/// A floating IP to create.
#[derive(Clone, Debug)]
pub struct FipSpec {
    pub name: String,
    /// The VM whose port it is associated with; `None`: unassociated (or a VIP's).
    pub vm: Option<String>,
    /// The VIP port (see [`crate::Topology::vip`]) it is associated with instead of a VM.
    pub vip: Option<String>,
    /// `None`: 10.5.2.(1 + index).
    pub ip: Option<Ipv4Addr>,
}

/// The external network as created.
#[derive(Clone, Debug)]
pub struct ExternalInfo {
    pub ns: String,
    pub network_id: String,
    pub subnet_id: String,
    pub cidr: Cidr,
    pub gateway: Ipv4Addr,
    pub internet_host: Ipv4Addr,
    /// The external IPv6 subnet, with [`Topology::external_ipv6`](crate::Topology::external_ipv6).
    pub subnet6_id: Option<String>,
}

/// A host's attachment to the external network.
#[derive(Clone, Debug)]
pub struct HostExt {
    /// MAC of `ext0` (= its floatingip_agent_gateway port's MAC), lower case.
    pub mac: String,
    /// The fixed IP of its floatingip_agent_gateway port.
    pub fg_ip: Ipv4Addr,
    pub fg_port_id: String,
    /// The bridge port of `ext0`'s peer in the external namespace.
    pub bridge_port: String,
}

/// A floating IP as created and changed since.
#[derive(Clone, Debug)]
pub struct FipInfo {
    pub name: String,
    pub id: String,
    pub ip: Ipv4Addr,
    /// The VM it is associated with now.
    pub vm: Option<String>,
    /// The VIP port it is associated with now (then `vm` is `None`).
    pub vip: Option<String>,
    /// The router (logical name) it belongs to now.
    pub router: Option<String>,
    /// Removed from the state by [`Cloud::delete_fip`].
    pub deleted: bool,
}

/// The answer to [`Cloud::udp_request`].
#[derive(Clone, Debug)]
pub struct UdpReply {
    /// Which try was answered (1 = the first datagram).
    pub tries: u32,
    /// The source of the reply.
    pub from: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A background process in a namespace, owned by the cloud's test: stdout and stderr go to
/// files in the cloud's temp dir, stdin is a pipe ([`Bg::close_stdin`]). Stopped by pid on drop.
pub struct Bg {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    out: PathBuf,
    err: PathBuf,
}

impl std::fmt::Debug for Bg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bg")
            .field("what", &self.guard.what())
            .finish_non_exhaustive()
    }
}

impl Bg {
    /// Starts `cmd` (stdin a pipe, stdout and stderr to the files `out` and `err`); the child
    /// must be the program itself (no forking wrapper), so that stopping it by pid stops it.
    pub(crate) fn start(mut cmd: Command, what: String, out: PathBuf, err: PathBuf) -> Result<Bg> {
        cmd.stdin(Stdio::piped())
            .stdout(fs::File::create(&out).with_context(|| format!("{}", out.display()))?)
            .stderr(fs::File::create(&err).with_context(|| format!("{}", err.display()))?);
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take();
        Ok(Bg {
            guard: ChildGuard::new(child, what),
            stdin,
            out,
            err,
        })
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.guard.pid()
    }

    pub fn what(&self) -> &str {
        self.guard.what()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until its stdout satisfies `pred` (fails at once, quoting its output, if it
    /// exits first). Returns the stdout.
    pub fn wait_stdout(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let label = self.guard.what().to_string();
        wait_until(&format!("{label}: {what}"), deadline, |why| {
            let out = self.stdout();
            if pred(&out) {
                return Ok(Some(out));
            }
            if let Some(status) = self.guard.try_wait()? {
                let out = self.stdout();
                if pred(&out) {
                    return Ok(Some(out));
                }
                bail!(
                    "{label} exited ({status}) before {what}; stdout: {} stderr: {}",
                    out.trim(),
                    self.stderr().trim()
                );
            }
            *why = format!(
                "stdout: {} stderr: {}",
                tail(&out, 5),
                tail(&self.stderr(), 5)
            );
            Ok(None)
        })
    }

    /// Writes `data` to its stdin (e.g. a command line for a script reading stdin).
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let what = self.guard.what().to_string();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{what}: stdin already closed"))?;
        stdin
            .write_all(data)
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to the stdin of {what}"))
    }

    /// Closes its stdin (a reader sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `deadline` for it to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<Option<ExitStatus>> {
        self.guard.wait_deadline(deadline)
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.guard.try_wait()
    }

    /// Stops it (SIGTERM by pid, bounded wait, SIGKILL).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stdin = None;
        Ok(self.guard.stop(Duration::from_secs(3))?.0)
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// A UDP echo server: prints "listening", then "peer <ip>:<port> <len>" per datagram.
const UDP_ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    print("peer %s:%d %d" % (a[0], a[1], len(d)), flush=True)
    s.sendto(d, a)
"#;

/// A UDP sink: prints "listening", then "peer <ip>:<port> <len>" per datagram; never replies.
const UDP_SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    print("peer %s:%d %d" % (a[0], a[1], len(d)), flush=True)
"#;

/// Sends one datagram per try (1 s reply timeout each) until a reply arrives.
const UDP_CLIENT: &str = r#"
import socket, sys
dst, port, bind, data, tries = sys.argv[1], int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if bind:
    s.bind((bind, 0))
s.settimeout(1.0)
for i in range(tries):
    s.sendto(data, (dst, port))
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        continue
    print("reply %d %s:%d %s" % (i + 1, a[0], a[1], d.hex()), flush=True)
    sys.exit(0)
print("no reply after %d tries" % tries, flush=True)
sys.exit(1)
"#;

impl Cloud {
    // ---- creation --------------------------------------------------------------------------

    /// The external namespace, its bridge and addresses, and the external network in the state.
    pub(crate) fn create_external(&mut self) -> Result<()> {
        let ns = self.new_ns(EXT)?;
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            EXT_BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        let cidr = Cidr::parse(EXT_CIDR)?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{EXT_GATEWAY}/{}", cidr.prefix),
            "dev",
            EXT_BRIDGE,
        ])?;
        ip(&["-n", &ns, "link", "set", EXT_BRIDGE, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{INTERNET_HOST}/32"),
            "dev",
            INTERNET_DEV,
        ])?;
        cmd::exec_ok(
            &ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        let network_id = new_id(crate::cloud::KIND_NETWORK, self.seq);
        let subnet_id = new_id(crate::cloud::KIND_SUBNET, self.seq);
        self.state.networks.push(state::Network {
            id: network_id.clone(),
            name: PHYSNET.into(),
            network_type: "flat".into(),
            segmentation_id: None,
            physical_network: Some(PHYSNET.into()),
            router_external: true,
            mtu: EXT_MTU,
        });
        self.state.subnets.push(state::Subnet::v4(
            &subnet_id,
            &network_id,
            &cidr.to_string(),
            &EXT_GATEWAY.to_string(),
        ));
        self.external = Some(ExternalInfo {
            ns,
            network_id,
            subnet_id,
            cidr,
            gateway: EXT_GATEWAY,
            internet_host: INTERNET_HOST,
            subnet6_id: None,
        });
        Ok(())
    }

    /// `ext0` in the host namespace (MAC = the new fg port's MAC, up, no address), its peer on
    /// `br-ext`, and the host's floatingip_agent_gateway port in the state.
    pub(crate) fn create_host_external(
        &mut self,
        host_ns: &str,
        agent_name: &str,
    ) -> Result<HostExt> {
        let ext = self.external_info()?.clone();
        let index = self.hosts.len();
        let n = u8::try_from(11 + index)
            .ok()
            .filter(|n| *n < 255)
            .ok_or_else(|| anyhow!("too many hosts for the external network"))?;
        let fg_ip = Ipv4Addr::new(10, 5, 1, n);
        let mac = new_mac();
        let bridge_port = format!("xh{index}");
        ip(&[
            "-n",
            host_ns,
            "link",
            "add",
            EXT_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            &bridge_port,
            "netns",
            &ext.ns,
        ])?;
        ip(&[
            "-n",
            host_ns,
            "link",
            "set",
            EXT_IFACE,
            "address",
            &mac,
            "mtu",
            &EXT_MTU.to_string(),
            "up",
        ])?;
        ip(&[
            "-n",
            &ext.ns,
            "link",
            "set",
            &bridge_port,
            "master",
            EXT_BRIDGE,
        ])?;
        ip(&["-n", &ext.ns, "link", "set", &bridge_port, "up"])?;
        if self.xdp_veths {
            cmd::gro_on(&ext.ns, &bridge_port)?;
            cmd::tx_checksum_off(&ext.ns, &bridge_port)?;
        }
        let fg_port_id = new_id(crate::cloud::KIND_PORT, self.seq);
        self.state.ports.push(state::Port {
            id: fg_port_id.clone(),
            network_id: ext.network_id.clone(),
            mac_address: mac.clone(),
            fixed_ips: vec![FixedIp {
                subnet_id: ext.subnet_id.clone(),
                ip_address: fg_ip.to_string(),
            }],
            device_owner: state::OWNER_FIP_AGENT_GATEWAY.into(),
            device_id: agent_name.into(),
            binding_host_id: agent_name.into(),
            allowed_address_pairs: Vec::new(),
            port_security_enabled: false,
            security_groups: None,
            admin_state_up: None,
        });
        Ok(HostExt {
            mac,
            fg_ip,
            fg_port_id,
            bridge_port,
        })
    }

    /// The `external_gateway_info` of the router with this index (`None` without external
    /// network).
    pub(crate) fn router_gateway_info(
        &self,
        index: usize,
        enable_snat: bool,
    ) -> Result<Option<Value>> {
        let Some(ext) = &self.external else {
            return Ok(None);
        };
        let n = u8::try_from(index + 1)
            .ok()
            .filter(|n| *n < 255)
            .ok_or_else(|| anyhow!("too many routers for the external network"))?;
        let mut fixed = vec![json!({
            "subnet_id": ext.subnet_id,
            "ip_address": Ipv4Addr::new(10, 5, 3, n).to_string(),
        })];
        if let Some(s6) = &ext.subnet6_id {
            fixed.push(json!({
                "subnet_id": s6,
                "ip_address": crate::external6::router_ext_ip6(index).to_string(),
            }));
        }
        Ok(Some(json!({
            "network_id": ext.network_id,
            "enable_snat": enable_snat,
            "external_fixed_ips": fixed,
        })))
    }

    pub(crate) fn create_fip(&mut self, f: &FipSpec, index: usize) -> Result<()> {
        let ext = self
            .external
            .clone()
            .ok_or_else(|| anyhow!("floating IP {}: the topology has no .external()", f.name))?;
        ensure!(
            self.fips.iter().all(|x| x.name != f.name),
            "floating IP {} defined twice",
            f.name
        );
        let ip = match f.ip {
            Some(ip) => ip,
            None => {
                let n = u8::try_from(index + 1)
                    .ok()
                    .filter(|n| *n < 255)
                    .ok_or_else(|| anyhow!("too many floating IPs"))?;
                Ipv4Addr::new(10, 5, 2, n)
            }
        };
        ensure!(
            ext.cidr.contains(ip),
            "floating IP {}: {ip} outside {}",
            f.name,
            ext.cidr
        );
        ensure!(
            f.vm.is_none() || f.vip.is_none(),
            "floating IP {}: both a VM and a VIP",
            f.name
        );
        // Neutron gives an unassociated floating IP no router.
        let router = match (&f.vm, &f.vip) {
            (Some(vm), _) => Some(self.router_of_vm(vm)?),
            (None, Some(vip)) => Some(self.router_of_network(&self.vip_info(vip)?.network)?),
            (None, None) => None,
        };
        let router_id = match &router {
            Some(r) => Value::from(self.router_id(r)?),
            None => Value::Null,
        };
        let (port_id, fixed) = match (&f.vm, &f.vip) {
            (Some(vm), _) => {
                let v = self.vm(vm)?;
                (
                    Value::from(v.port_id.clone()),
                    Value::from(v.ip.to_string()),
                )
            }
            (None, Some(vip)) => {
                let v = self.vip_info(vip)?;
                (
                    Value::from(v.port_id.clone()),
                    Value::from(v.ip.to_string()),
                )
            }
            (None, None) => (Value::Null, Value::Null),
        };
        let id = new_id(KIND_FIP, self.seq);
        self.state.floatingips.push(json!({
            "id": id,
            "floating_ip_address": ip.to_string(),
            "floating_network_id": ext.network_id,
            "router_id": router_id,
            "port_id": port_id,
            "fixed_ip_address": fixed,
            "status": "ACTIVE",
        }));
        self.fips.push(FipInfo {
            name: f.name.clone(),
            id,
            ip,
            vm: f.vm.clone(),
            vip: f.vip.clone(),
            router,
            deleted: false,
        });
        Ok(())
    }

    fn router_of_vm(&self, vm: &str) -> Result<String> {
        let net = self.vm(vm)?.network.clone();
        self.router_of_network(&net)
            .with_context(|| format!("VM {vm}"))
    }

    pub(crate) fn router_of_network(&self, net: &str) -> Result<String> {
        self.network(net)?
            .router
            .clone()
            .ok_or_else(|| anyhow!("network {net} has no router for a floating IP"))
    }

    // ---- lookups ---------------------------------------------------------------------------

    /// The external network (fails without [`crate::Topology::external`]).
    pub fn external_info(&self) -> Result<&ExternalInfo> {
        self.external
            .as_ref()
            .ok_or_else(|| anyhow!("the topology has no external network (.external())"))
    }

    /// The external namespace.
    pub fn ext_ns(&self) -> Result<String> {
        Ok(self.external_info()?.ns.clone())
    }

    /// The namespace of an endpoint: [`EXT`], a VM or a host (in that order).
    pub fn ns_of(&self, who: &str) -> Result<String> {
        if who == EXT {
            return self.ext_ns();
        }
        if let Ok(v) = self.vm(who) {
            return Ok(v.ns.clone());
        }
        if let Ok(h) = self.host(who) {
            return Ok(h.ns.clone());
        }
        bail!("no endpoint {who:?} (not {EXT:?}, a VM or a host)")
    }

    /// A host's external attachment.
    pub fn host_ext(&self, host: &str) -> Result<&HostExt> {
        self.host(host)?
            .ext
            .as_ref()
            .ok_or_else(|| anyhow!("host {host} has no external interface"))
    }

    /// The MAC of a host's `ext0`.
    pub fn ext_mac(&self, host: &str) -> Result<String> {
        Ok(self.host_ext(host)?.mac.clone())
    }

    /// The address of a host's floatingip_agent_gateway port.
    pub fn fg_ip(&self, host: &str) -> Result<Ipv4Addr> {
        Ok(self.host_ext(host)?.fg_ip)
    }

    pub fn fip_info(&self, name: &str) -> Result<&FipInfo> {
        self.fips
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| anyhow!("no floating IP {name}"))
    }

    /// The address of a floating IP.
    pub fn fip_ip(&self, name: &str) -> Result<Ipv4Addr> {
        Ok(self.fip_info(name)?.ip)
    }

    pub fn fip_infos(&self) -> &[FipInfo] {
        &self.fips
    }

    // ---- floating IP changes ---------------------------------------------------------------

    fn edit_fip(&mut self, name: &str, f: impl FnOnce(&mut Value)) -> Result<()> {
        let info = self.fip_info(name)?.clone();
        ensure!(!info.deleted, "floating IP {name} was deleted");
        let v = self
            .state
            .floatingip_mut(&info.id)
            .ok_or_else(|| anyhow!("floating IP {name} ({}) not in the state", info.id))?;
        f(v);
        self.write_state()
    }

    /// Associates floating IP `fip` with `vm`'s port (moving it if it was associated) and
    /// rewrites the state file. Does not wait for the agents.
    pub fn associate(&mut self, fip: &str, vm: &str) -> Result<()> {
        let router = self.router_of_vm(vm)?;
        let router_id = self.router_id(&router)?.to_string();
        let v = self.vm(vm)?.clone();
        self.edit_fip(fip, |f| {
            f["port_id"] = v.port_id.clone().into();
            f["fixed_ip_address"] = v.ip.to_string().into();
            f["router_id"] = router_id.into();
        })?;
        if let Some(info) = self.fips.iter_mut().find(|f| f.name == fip) {
            info.vm = Some(vm.to_string());
            info.vip = None;
            info.router = Some(router);
        }
        Ok(())
    }

    /// Creates floating IP `name` (10.5.2.(1 + number of floating IPs so far)) associated with
    /// `vm`'s port (or unassociated) while the agents run, and rewrites the state file. Does not
    /// wait for the agents. Returns its address.
    pub fn add_fip(&mut self, name: &str, vm: Option<&str>) -> Result<Ipv4Addr> {
        let spec = FipSpec {
            name: name.into(),
            vm: vm.map(str::to_string),
            vip: None,
            ip: None,
        };
        let index = self.fips.len();
        self.create_fip(&spec, index)?;
        self.write_state()?;
        self.fip_ip(name)
    }

    /// Disassociates floating IP `fip` and rewrites the state file. Like Neutron, this sets
    /// `port_id`, `fixed_ip_address` and `router_id` to `null`.
    pub fn disassociate(&mut self, fip: &str) -> Result<()> {
        self.edit_fip(fip, |f| {
            f["port_id"] = Value::Null;
            f["fixed_ip_address"] = Value::Null;
            f["router_id"] = Value::Null;
        })?;
        if let Some(info) = self.fips.iter_mut().find(|f| f.name == fip) {
            info.vm = None;
            info.vip = None;
            info.router = None;
        }
        Ok(())
    }

    /// Removes floating IP `fip` from the state and rewrites the state file.
    pub fn delete_fip(&mut self, fip: &str) -> Result<()> {
        let info = self.fip_info(fip)?.clone();
        ensure!(!info.deleted, "floating IP {fip} was deleted already");
        self.state
            .floatingips
            .retain(|f| f["id"] != info.id.as_str());
        self.write_state()?;
        if let Some(info) = self.fips.iter_mut().find(|f| f.name == fip) {
            info.vm = None;
            info.vip = None;
            info.deleted = true;
        }
        Ok(())
    }

    // ---- agent views -----------------------------------------------------------------------

    /// `dvrctl show fips --json` of `host`.
    pub fn fips(&self, host: &str) -> Result<Vec<Value>> {
        self.show_list(host, "fips")
    }

    /// The entry of floating IP `fip` (by name) in `host`'s `show fips`, if listed.
    pub fn fip_entry(&self, host: &str, fip: &str) -> Result<Option<Value>> {
        let ip = self.fip_ip(fip)?.to_string();
        Ok(self
            .fips(host)?
            .into_iter()
            .find(|e| e["fip"].as_str() == Some(ip.as_str())))
    }

    /// Waits until `host` lists floating IP `fip` with `kind` ("local", "central", "remote",
    /// "unassociated", "elsewhere"), or (`None`) does not list it at all. For "local" and
    /// "central" the fixed IP must be its current VM's (or VIP's).
    pub fn wait_fip_kind(
        &self,
        host: &str,
        fip: &str,
        kind: Option<&str>,
        deadline: Duration,
    ) -> Result<Value> {
        let info = self.fip_info(fip)?;
        let want_fixed = match (&info.vm, &info.vip, kind) {
            (Some(vm), _, Some("local" | "central")) => Some(self.vm(vm)?.ip.to_string()),
            (None, Some(vip), Some("local" | "central")) => {
                Some(self.vip_info(vip)?.ip.to_string())
            }
            _ => None,
        };
        wait_until(
            &format!("{host} to list floating IP {fip} as {kind:?}"),
            deadline,
            |why| {
                let entry = match self.fip_entry(host, fip) {
                    Ok(e) => e,
                    Err(e) => {
                        *why = format!("{e:#}");
                        return Ok(None);
                    }
                };
                let ok = match (&entry, kind) {
                    (None, None) => true,
                    (Some(e), Some(k)) => {
                        e["kind"].as_str() == Some(k)
                            && want_fixed
                                .as_deref()
                                .is_none_or(|f| e["fixed_ip"].as_str() == Some(f))
                    }
                    _ => false,
                };
                *why = format!("entry: {entry:?}");
                Ok(ok.then(|| entry.unwrap_or(Value::Null)))
            },
        )
    }

    /// `dvrctl show conntrack --json` of `host`.
    pub fn conntrack(&self, host: &str) -> Result<Vec<Value>> {
        self.show_list(host, "conntrack")
    }

    /// The conntrack entries of `host` translated for floating IP `fip` (by name).
    pub fn conntrack_for(&self, host: &str, fip: &str) -> Result<Vec<Value>> {
        let ip = self.fip_ip(fip)?.to_string();
        Ok(self
            .conntrack(host)?
            .into_iter()
            .filter(|e| e["fip"].as_str() == Some(ip.as_str()))
            .collect())
    }

    /// Waits until `host` has no conntrack entry for floating IP `fip`.
    pub fn wait_conntrack_gone(&self, host: &str, fip: &str, deadline: Duration) -> Result<()> {
        wait_until(
            &format!("{host} to drop the conntrack entries of {fip}"),
            deadline,
            |why| {
                let left = self.conntrack_for(host, fip)?;
                *why = format!("{left:?}");
                Ok(left.is_empty().then_some(()))
            },
        )
    }

    /// True when `f`'s router has HA candidates (its central FIPs follow the election).
    fn fip_router_is_ha(&self, f: &FipInfo) -> Result<bool> {
        match &f.router {
            Some(r) => Ok(!self.ha_candidates(r)?.is_empty()),
            None => Ok(false),
        }
    }

    /// Waits until `host`'s agent lists every floating IP associated with one of its VMs as
    /// "local" (on a SNAT host also those it serves centrally, of VMs on `dvr_no_external`
    /// hosts and of VIPs, as "central") and, if there is one, has learned the external
    /// gateway's MAC (`ext_neigh_learned` > 0). Hosts without `ext0` have nothing to wait for.
    /// Called by `build` for every host of an external topology, before it checks the SNAT
    /// host and the steering (see [`crate::snat`]).
    pub fn wait_external_ready(&self, host: &str, deadline: Duration) -> Result<()> {
        let info = self.host(host)?;
        let snat_host = info.mode == crate::snat::HostMode::DvrSnat;
        if info.ext.is_none() {
            return Ok(());
        }
        let mut want: Vec<(String, &str)> = Vec::new();
        for f in self.fips.iter().filter(|f| !f.deleted) {
            let vm_host = f.vm.as_ref().and_then(|v| self.vm(v).ok()).map(|v| &v.host);
            let vm_host_has_ext = vm_host
                .and_then(|h| self.host(h).ok())
                .is_some_and(|h| h.ext.is_some());
            if vm_host.is_some_and(|h| h == host) && vm_host_has_ext {
                want.push((f.name.clone(), "local"));
            } else if snat_host
                && ((vm_host.is_some() && !vm_host_has_ext) || f.vip.is_some())
                && !self.fip_router_is_ha(f)?
            {
                // An HA router's central FIPs are served by its elected host only, which
                // `build` does not know yet: the HA tests wait for it.
                want.push((f.name.clone(), "central"));
            }
        }
        for (f, kind) in &want {
            self.wait_fip_kind(host, f, Some(kind), deadline)
                .with_context(|| format!("agent log:\n{}", self.agent_log_tail(host, 30)))?;
        }
        if !want.is_empty() {
            self.wait_stat_at_least(host, "ext_neigh_learned", 1, deadline)
                .with_context(|| {
                    format!(
                        "agent of {host} did not learn the external gateway {EXT_GATEWAY}'s MAC; \
                         agent log:\n{}",
                        self.agent_log_tail(host, 30)
                    )
                })?;
        }
        Ok(())
    }

    // ---- commands and traffic --------------------------------------------------------------

    /// `ip netns exec <external ns> ARGS`.
    pub fn exec_ext(&self, args: &[&str]) -> Result<Output> {
        exec(&self.ext_ns()?, args)
    }

    /// Broadcast ARP requests for `target` from the external namespace's `br-ext` (`arping -b`:
    /// every request is a broadcast, so every host sees every one).
    pub fn arping_ext(
        &self,
        target: Ipv4Addr,
        count: u32,
        deadline_s: u32,
    ) -> Result<ArpingResult> {
        let ns = self.ext_ns()?;
        let out = exec_with_deadline(
            &ns,
            &[
                "arping",
                "-b",
                "-c",
                &count.to_string(),
                "-w",
                &deadline_s.to_string(),
                "-I",
                EXT_BRIDGE,
                &target.to_string(),
            ],
            Duration::from_secs(u64::from(deadline_s) + 10),
        )?;
        Ok(parse_arping(&text(&out)))
    }

    /// Runs a Python script (the interpreter of [`scapy_python`]) in an endpoint's namespace
    /// with `args` as `sys.argv[1..]`; returns the output whatever the status.
    pub fn python(
        &self,
        who: &str,
        script: &str,
        args: &[&str],
        deadline: Duration,
    ) -> Result<Output> {
        let ns = self.ns_of(who)?;
        let py = scapy_python()?;
        let mut full = vec![py.as_str(), "-c", script];
        full.extend_from_slice(args);
        exec_with_deadline(&ns, &full, deadline)
    }

    /// Starts `args` in the background in an endpoint's namespace.
    pub fn spawn(&mut self, who: &str, args: &[&str]) -> Result<Bg> {
        let ns = self.ns_of(who)?;
        self.files_seq += 1;
        let out = self.dir.join(format!("bg-{}.stdout", self.files_seq));
        let err = self.dir.join(format!("bg-{}.stderr", self.files_seq));
        let what = format!(
            "{} in {who}",
            cmd::describe(
                args.first().copied().unwrap_or(""),
                args.get(1..).unwrap_or(&[])
            )
        );
        let mut c = Command::new("ip");
        // `ip netns exec` execs the program, so the child's pid is the program's.
        c.args(["netns", "exec", &ns]).args(args);
        Bg::start(c, what, out, err)
    }

    /// Starts a Python script in the background (see [`Cloud::python`]).
    pub fn spawn_python(&mut self, who: &str, script: &str, args: &[&str]) -> Result<Bg> {
        let py = scapy_python()?;
        let mut full = vec![py.as_str(), "-u", "-c", script];
        full.extend_from_slice(args);
        self.spawn(who, &full)
    }

    /// Waits until something in `who`'s namespace listens on `port` (TCP or UDP).
    pub fn wait_listening(
        &self,
        who: &str,
        udp: bool,
        port: u16,
        deadline: Duration,
    ) -> Result<()> {
        let ns = self.ns_of(who)?;
        let flags = if udp { "-lun" } else { "-ltn" };
        let filter = format!("sport = :{port}");
        wait_until(&format!("a listener on {who}:{port}"), deadline, |why| {
            let out = exec(&ns, &["ss", "-H", flags, &filter])?;
            *why = text(&out);
            Ok((!cmd::stdout(&out).trim().is_empty()).then_some(()))
        })
    }

    /// Starts a UDP echo server on `port` in `who` and waits until it listens. Its stdout has
    /// one "peer <ip>:<port> <len>" line per datagram: the source address it saw.
    pub fn udp_echo_server(&mut self, who: &str, port: u16) -> Result<Bg> {
        let mut bg = self.spawn_python(who, UDP_ECHO_SERVER, &[&port.to_string()])?;
        bg.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        self.wait_listening(who, true, port, Duration::from_secs(5))?;
        Ok(bg)
    }

    /// Starts a UDP sink on `port` in `who` and waits until it listens: it answers nothing (so
    /// no reply or ICMP error moves a counter) and prints `peer <ip>:<port> <len>` per datagram.
    pub fn udp_sink(&mut self, who: &str, port: u16) -> Result<Bg> {
        let mut bg = self.spawn_python(who, UDP_SINK, &[&port.to_string()])?;
        bg.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        self.wait_listening(who, true, port, Duration::from_secs(5))?;
        Ok(bg)
    }

    /// Sends `payload` over UDP from `from` (bound to `bind` if given) to `dst:port`, up to
    /// `tries` datagrams one second apart, and returns the first reply.
    pub fn udp_request(
        &self,
        from: &str,
        dst: Ipv4Addr,
        port: u16,
        payload: &[u8],
        bind: Option<Ipv4Addr>,
        tries: u32,
    ) -> Result<UdpReply> {
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        let bind_s = bind.map(|b| b.to_string()).unwrap_or_default();
        let out = self.python(
            from,
            UDP_CLIENT,
            &[
                &dst.to_string(),
                &port.to_string(),
                &bind_s,
                &hex,
                &tries.to_string(),
            ],
            Duration::from_secs(u64::from(tries) + 10),
        )?;
        let o = text(&out);
        ensure!(
            out.status.success(),
            "UDP {from} -> {dst}:{port}: {}",
            o.trim()
        );
        parse_udp_reply(&o).ok_or_else(|| anyhow!("UDP client printed no reply line: {o}"))
    }

    /// Connects from `who` to `dst:port` (TCP, `timeout` to connect) and returns what the
    /// server sends before closing, trimmed ("" if the connection fails): which VM a
    /// per-VM banner service (`socat TCP4-LISTEN:PORT,fork SYSTEM:'echo NAME'`) runs in.
    pub fn tcp_banner(
        &self,
        who: &str,
        dst: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<String> {
        let out = exec_with_deadline(
            &self.ns_of(who)?,
            &[
                "socat",
                "-u",
                &format!(
                    "TCP4:{dst}:{port},connect-timeout={:.3}",
                    timeout.as_secs_f64()
                ),
                "STDOUT",
            ],
            timeout + Duration::from_secs(5),
        )?;
        Ok(cmd::stdout(&out).trim().to_string())
    }

    /// Sends one UDP datagram from `who`'s own socket bound to `sport` (the kernel picks the
    /// source address) to `dst:dport`.
    pub fn udp_send(&self, who: &str, dst: Ipv4Addr, dport: u16, sport: u16) -> Result<()> {
        let out = self.python(
            who,
            "import socket, sys\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', int(sys.argv[3])))\n\
             s.sendto(b'dvr-tests', (sys.argv[1], int(sys.argv[2])))\n",
            &[&dst.to_string(), &dport.to_string(), &sport.to_string()],
            Duration::from_secs(10),
        )?;
        ensure!(
            out.status.success(),
            "UDP send from {who} to {dst}:{dport}: {}",
            text(&out).trim()
        );
        Ok(())
    }

    /// Runs a scapy script in an endpoint's namespace (`from scapy.all import *` prepended).
    pub fn scapy_at(&self, who: &str, body: &str) -> Result<Output> {
        let script = format!("from scapy.all import *\nconf.verb = 0\n{body}\n");
        let out = self.python(who, &script, &[], Duration::from_secs(60))?;
        ensure!(
            out.status.success(),
            "scapy in {who} failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        Ok(out)
    }

    // ---- captures --------------------------------------------------------------------------

    /// tcpdump on `br-ext` in the external namespace: what the upstream router receives, and
    /// every broadcast.
    pub fn capture_ext(&self, filter: &str) -> Result<Capture> {
        Capture::start(&self.ext_ns()?, EXT_BRIDGE, filter)
    }

    /// [`Cloud::capture_ext`] with hex bytes (ARP sender fields: [`crate::Packet::arp`]).
    pub fn capture_ext_hex(&self, filter: &str) -> Result<Capture> {
        Capture::start_hex(&self.ext_ns()?, EXT_BRIDGE, filter)
    }

    /// tcpdump on every interface of the external namespace (`-i any`: cooked headers, only
    /// the source MAC shows; each frame crossing the bridge shows once per port it passes).
    pub fn capture_ext_any(&self, filter: &str) -> Result<Capture> {
        Capture::start(&self.ext_ns()?, "any", filter)
    }

    /// The MAC of `br-ext` (the upstream router's MAC), lower case.
    pub fn ext_bridge_mac(&self) -> Result<String> {
        let out = cmd::exec_ok(
            &self.ext_ns()?,
            &["cat", &format!("/sys/class/net/{EXT_BRIDGE}/address")],
        )?;
        Ok(cmd::stdout(&out).trim().to_lowercase())
    }

    /// tcpdump on a host's bridge port in the external namespace: everything its `ext0` sends
    /// and receives.
    pub fn capture_ext_port(&self, host: &str, filter: &str) -> Result<Capture> {
        let port = self.host_ext(host)?.bridge_port.clone();
        Capture::start(&self.ext_ns()?, &port, filter)
    }

    /// tcpdump on `ext0` inside a host namespace.
    pub fn capture_ext0(&self, host: &str, filter: &str) -> Result<Capture> {
        Capture::start(&self.host(host)?.ns, EXT_IFACE, filter)
    }
}

/// Parses the UDP client's "reply <try> <ip>:<port> <hex>" line.
pub fn parse_udp_reply(out: &str) -> Option<UdpReply> {
    let line = out.lines().find(|l| l.starts_with("reply "))?;
    let mut w = line.split_whitespace().skip(1);
    let tries = w.next()?.parse().ok()?;
    let from = w.next()?.parse().ok()?;
    let hex = w.next().unwrap_or("");
    let payload = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(UdpReply {
        tries,
        from,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_udp_reply() {
        let r = parse_udp_reply("reply 2 10.5.2.1:7000 68656c6c6f\n");
        let r = r.unwrap_or_else(|| panic!("no reply parsed"));
        assert_eq!(r.tries, 2);
        assert_eq!(r.from, SocketAddrV4::new(Ipv4Addr::new(10, 5, 2, 1), 7000));
        assert_eq!(r.payload, b"hello");
        assert!(parse_udp_reply("no reply after 3 tries").is_none());
    }
}
