//! The topology builder and the running test cloud.
//!
//! A [`Topology`] describes hosts, networks (one IPv4 subnet each), routers and VMs by short
//! logical names ("h1", "a", "v1"). [`Topology::build`] turns it into a [`Cloud`]:
//!
//! ```text
//!   netns dvrt-<pid>-<n>-ul          br0 (Linux bridge) -- uh0 -- uh1 -- ...
//!                                          |              |
//!   netns dvrt-<pid>-<n>-h1     ul0 192.0.2.11/24    (agent: dvr-vx, TC on taps)
//!                               tap<port id[..11]> ---- eth0 in netns dvrt-<pid>-<n>-v1
//! ```
//!
//! It writes the Neutron-shaped state file, starts one `dvr-agent` per host through
//! `nsenter --net=` (so all agents share the real bpffs) and waits until each agent lists all of
//! its host's taps. Dropping the cloud stops the agents by pid (then etcd, if the cloud runs
//! one: [`crate::etcd`]), runs `dvr-agent --uninstall` for each host with pins (a stopped agent
//! leaves its datapath in place for a hitless restart), deletes every namespace it made (which
//! removes all links in them), removes left-over pin directories and its temp dir.
//!
//! With [`Topology::external`] there is also an external network and floating IPs: see
//! [`crate::external`].

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::capture::Capture;
use crate::cmd::{
    self, ChildGuard, exec, exec_ok, exec_with_deadline, ip, run_with_deadline, text, wait_until,
};
use crate::external::{ExternalInfo, FipInfo, FipSpec, HostExt};
use crate::snat::{CsnatInfo, HostMode, VipInfo, VipSpec};
use crate::state::{self, AddressPair, FixedIp, State};

/// How long agents get to list all local taps after start.
pub const AGENT_READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long an agent gets to exit after SIGTERM.
pub const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);
/// The MTU of tenant networks (VXLAN over a 1500-byte underlay).
pub const TENANT_MTU: u32 = 1450;
/// What the agent logs once it serves (`Agent::run`).
const AGENT_READY_LOG: &str = "dvr_userspace::agent: ready";
/// Default bpffs root of the agents, overridable with `DVR_BPFFS`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/dvr";
/// The name of the VXLAN device the agent creates.
pub const VXLAN_DEV: &str = "dvr-vx";
/// Each host's underlay NIC (holding its tunnel address), a veth to the underlay bridge.
pub const UNDERLAY_DEV: &str = "ul0";

static NS_SEQ: AtomicU32 = AtomicU32::new(0);
static CLOUD_SEQ: AtomicU32 = AtomicU32::new(0);
static OBJ_SEQ: AtomicU32 = AtomicU32::new(1);

/// A fresh namespace name `dvrt-<pid>-<counter>-<role>`.
pub fn ns_name(role: &str) -> String {
    let n = NS_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{role}", ns_prefix())
}

/// The prefix of every namespace this process creates.
pub fn ns_prefix() -> String {
    format!("dvrt-{}", std::process::id())
}

/// A UUID-shaped id unique in this process. The first 8 hex digits are a process-wide sequence
/// number, so the first 11 characters (the tap name suffix) differ between any two ports.
pub(crate) fn new_id(kind: u32, cloud: u32) -> String {
    let seq = OBJ_SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "{seq:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid & 0xffff,
        kind & 0xfff,
        cloud & 0xfff,
        u64::from(pid)
    )
}

/// A Neutron-style port MAC (`fa:16:3e:..`) unique in this process.
pub(crate) fn new_mac() -> String {
    let seq = OBJ_SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        (seq >> 16) & 0xff,
        (seq >> 8) & 0xff,
        seq & 0xff
    )
}

pub(crate) const KIND_NETWORK: u32 = 1;
pub(crate) const KIND_SUBNET: u32 = 2;
const KIND_ROUTER: u32 = 3;
pub(crate) const KIND_PORT: u32 = 4;
pub(crate) const KIND_FIP: u32 = 5;

/// The tap name the agent expects for a port id: "tap" + the first 11 characters.
pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", port_id.chars().take(11).collect::<String>())
}

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("CIDR {s:?} has no '/'"))?;
        let addr: Ipv4Addr = a
            .parse()
            .with_context(|| format!("CIDR {s:?}: bad address"))?;
        let prefix: u8 = p
            .parse()
            .with_context(|| format!("CIDR {s:?}: bad prefix"))?;
        ensure!(
            prefix <= 30,
            "CIDR {s:?}: prefix must be at most /30 for VMs"
        );
        let mask = u32::MAX << (32 - u32::from(prefix));
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        ensure!(network == addr, "CIDR {s:?} has host bits set");
        Ok(Cidr { network, prefix })
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the prefix (`n` = 1 is the usual gateway).
    pub fn host(self, n: u32) -> Result<Ipv4Addr> {
        ensure!(n > 0 && n < !self.mask(), "host {n} outside {self}");
        Ok(Ipv4Addr::from(u32::from(self.network) + n))
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Where `dvr-agent` and `dvrctl` live.
#[derive(Clone, Debug)]
pub struct Bins {
    pub agent: PathBuf,
    pub dvrctl: PathBuf,
}

/// Finds the binaries: `$DVR_BIN_DIR` if set, else the directory of the current executable or
/// its parent (`target/debug/deps/x` -> `target/debug/`).
pub fn locate_bins() -> Result<Bins> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DVR_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    } else {
        let exe = std::env::current_exe().context("cannot find the current executable")?;
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
    }
    for d in &dirs {
        let agent = d.join("dvr-agent");
        let dvrctl = d.join("dvrctl");
        if agent.is_file() && dvrctl.is_file() {
            return Ok(Bins { agent, dvrctl });
        }
    }
    bail!(
        "dvr-agent and dvrctl not found in {dirs:?}: build them first \
         (`cargo build -p dvr-userspace`) or point DVR_BIN_DIR at their directory"
    )
}

/// The bpffs root the agents pin under (`$DVR_BPFFS`, default [`DEFAULT_BPFFS`]).
pub fn bpffs_root() -> PathBuf {
    std::env::var_os("DVR_BPFFS").map_or_else(|| PathBuf::from(DEFAULT_BPFFS), PathBuf::from)
}

/// A host to create.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub tunnel_ip: Ipv4Addr,
    pub dvr_mac: String,
    /// The L3 agent mode (`dvr` unless set with [`Topology::snat_host`] or
    /// [`Topology::no_external_host`]).
    pub mode: HostMode,
    /// Extra arguments for this host's agent only (after [`Topology::agent_args`]).
    pub agent_args: Vec<String>,
}

/// A network with its single IPv4 subnet.
#[derive(Clone, Debug)]
pub struct NetSpec {
    pub name: String,
    pub vni: u32,
    pub cidr: String,
    /// `None`: the first host address of the subnet.
    pub gateway: Option<Ipv4Addr>,
    /// A second, IPv6 subnet on the network ([`Topology::ipv6`]).
    pub ipv6: Option<crate::ipv6::Net6Spec>,
    /// The network's `mtu` in the state, and its VMs' link MTU; `None`: [`TENANT_MTU`].
    pub mtu: Option<u32>,
}

/// A distributed router and the networks whose subnets it is attached to.
#[derive(Clone, Debug)]
pub struct RouterSpec {
    pub name: String,
    pub networks: Vec<String>,
    /// `external_gateway_info.enable_snat` (with [`Topology::external`]); true by default.
    pub enable_snat: bool,
    /// With [`Topology::ha_hosts`]: `"ha": true` and these `(host, priority)` candidates.
    pub ha_hosts: Vec<(String, u32)>,
}

/// A VM: a port on a network bound to a host, and a namespace with `eth0` behind its tap.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    pub network: String,
    pub host: String,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    /// Allowed address pairs `(ip, mac)`; `None` MAC = the port's own MAC.
    pub allowed_pairs: Vec<(Ipv4Addr, Option<String>)>,
    pub port_security: bool,
    /// The port's `security_groups`; `None` (never set): the key is absent and the port is
    /// not filtered.
    pub security_groups: Option<Vec<String>>,
    /// `admin_state_up`; `None`: not written (up).
    pub admin_state_up: Option<bool>,
}

impl VmSpec {
    pub fn new(name: &str, network: &str, host: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            network: network.into(),
            host: host.into(),
            ip: None,
            mac: None,
            allowed_pairs: Vec::new(),
            port_security: true,
            security_groups: None,
            admin_state_up: None,
        }
    }
    pub fn ip(mut self, ip: Ipv4Addr) -> VmSpec {
        self.ip = Some(ip);
        self
    }
    pub fn mac(mut self, mac: &str) -> VmSpec {
        self.mac = Some(mac.into());
        self
    }
    pub fn allowed_pair(mut self, ip: Ipv4Addr, mac: Option<&str>) -> VmSpec {
        self.allowed_pairs.push((ip, mac.map(str::to_string)));
        self
    }
    pub fn port_security(mut self, enabled: bool) -> VmSpec {
        self.port_security = enabled;
        self
    }
    /// The port's `security_groups` (ids of groups added with [`Topology::security_group`]);
    /// `&[]` filters the port with no rule (only base traffic passes).
    pub fn security_groups(mut self, groups: &[&str]) -> VmSpec {
        self.security_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        self
    }
    /// The port's `admin_state_up`.
    pub fn admin_state_up(mut self, up: bool) -> VmSpec {
        self.admin_state_up = Some(up);
        self
    }
}

/// What to build. Methods chain; names are checked by [`Topology::build`].
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub hosts: Vec<HostSpec>,
    pub networks: Vec<NetSpec>,
    pub routers: Vec<RouterSpec>,
    pub vms: Vec<VmSpec>,
    /// Build the external network (see [`Topology::external`]).
    pub external: bool,
    /// Give it an IPv6 subnet too (see [`Topology::external_ipv6`]).
    pub external6: bool,
    pub fips: Vec<FipSpec>,
    /// Unbound VIP ports (see [`Topology::vip`]).
    pub vips: Vec<VipSpec>,
    /// Mistakes the chaining methods found (e.g. agent args for an undefined host), reported
    /// by [`Topology::build`].
    pub errors: Vec<String>,
    /// Extra arguments for every `dvr-agent` (e.g. `--ct-timeout-udp 2`).
    pub agent_args: Vec<String>,
    /// Security groups (rules nested), top-level rules and address groups for the state; see
    /// [`crate::sg`].
    pub security_groups: Vec<state::SecurityGroup>,
    pub security_group_rules: Vec<state::SecurityGroupRule>,
    pub address_groups: Vec<state::AddressGroup>,
    /// Plain veth pairs ([`Topology::plain_veths`]): no GRO on the peers that XDP sends to,
    /// transmit checksum offload left on, and no `--xdp-veth-peers`, so no XDP on `ext0`.
    pub plain_veths: bool,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::default()
    }

    /// A host with tunnel IP `192.0.2.(11 + index)` and DVR MAC `fa:16:3f:00:00:(index + 1)`.
    pub fn host(&mut self, name: &str) -> &mut Topology {
        let i = u8::try_from(self.hosts.len()).unwrap_or(u8::MAX).min(200);
        self.hosts.push(HostSpec {
            name: name.into(),
            tunnel_ip: Ipv4Addr::new(192, 0, 2, 11 + i),
            dvr_mac: format!("fa:16:3f:00:00:{:02x}", i + 1),
            mode: HostMode::Dvr,
            agent_args: Vec::new(),
        });
        self
    }

    pub fn host_with(&mut self, name: &str, tunnel_ip: Ipv4Addr, dvr_mac: &str) -> &mut Topology {
        self.hosts.push(HostSpec {
            name: name.into(),
            tunnel_ip,
            dvr_mac: dvr_mac.into(),
            mode: HostMode::Dvr,
            agent_args: Vec::new(),
        });
        self
    }

    /// A [`Topology::host`] with `agent_mode: dvr_snat`: the network node. Needs
    /// [`Topology::external`]; it has `ext0` like every host, and every router with a gateway
    /// gets one `network:router_centralized_snat` port per subnet bound to it (to the first
    /// such host; an HA router's to its most preferred [`Topology::ha_hosts`] entry). See
    /// [`crate::snat`].
    pub fn snat_host(&mut self, name: &str) -> &mut Topology {
        self.host(name);
        if let Some(h) = self.hosts.last_mut() {
            h.mode = HostMode::DvrSnat;
        }
        self
    }

    /// A [`Topology::host`] with `agent_mode: dvr_no_external`: no `ext0` and no
    /// `external_interface`; its VMs' floating IPs are served on the SNAT host.
    pub fn no_external_host(&mut self, name: &str) -> &mut Topology {
        self.host(name);
        if let Some(h) = self.hosts.last_mut() {
            h.mode = HostMode::DvrNoExternal;
        }
        self
    }

    /// Extra arguments for the agent of one host (e.g. `--snat-ports 40000-40003` on the
    /// SNAT host). The host must be defined already.
    pub fn host_agent_args(&mut self, host: &str, args: &[&str]) -> &mut Topology {
        match self.hosts.iter_mut().find(|h| h.name == host) {
            Some(h) => h.agent_args.extend(args.iter().map(|a| a.to_string())),
            None => self
                .errors
                .push(format!("agent args {args:?} for undefined host {host}")),
        }
        self
    }

    /// A VXLAN network `vni` with one subnet `cidr`, gateway = first host address.
    pub fn network(&mut self, name: &str, vni: u32, cidr: &str) -> &mut Topology {
        self.networks.push(NetSpec {
            name: name.into(),
            vni,
            cidr: cidr.into(),
            gateway: None,
            ipv6: None,
            mtu: None,
        });
        self
    }

    pub fn network_with_gateway(
        &mut self,
        name: &str,
        vni: u32,
        cidr: &str,
        gateway: Ipv4Addr,
    ) -> &mut Topology {
        self.networks.push(NetSpec {
            name: name.into(),
            vni,
            cidr: cidr.into(),
            gateway: Some(gateway),
            ipv6: None,
            mtu: None,
        });
        self
    }

    /// A distributed router with one interface port per named network's subnet.
    pub fn router(&mut self, name: &str, networks: &[&str]) -> &mut Topology {
        self.routers.push(RouterSpec {
            name: name.into(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
            enable_snat: true,
            ha_hosts: Vec::new(),
        });
        self
    }

    /// Makes a router defined before HA (`"ha": true`, `ha_hosts` = these `(host, priority)`
    /// pairs, hosts by logical name, see docs/HA.md); its csnat ports are bound to the most
    /// preferred `dvr_snat` one. The hosts must be in the topology (any mode: an invalid choice
    /// is written as given). See [`crate::ha`].
    pub fn ha_hosts(&mut self, router: &str, hosts: &[(&str, u32)]) -> &mut Topology {
        match self.routers.iter_mut().find(|r| r.name == router) {
            Some(r) => r.ha_hosts = hosts.iter().map(|(h, p)| (h.to_string(), *p)).collect(),
            None => self
                .errors
                .push(format!("ha_hosts for undefined router {router}")),
        }
        self
    }

    /// Sets `enable_snat` of a router defined before (true by default).
    pub fn enable_snat(&mut self, router: &str, enabled: bool) -> &mut Topology {
        match self.routers.iter_mut().find(|r| r.name == router) {
            Some(r) => r.enable_snat = enabled,
            None => self
                .errors
                .push(format!("enable_snat for undefined router {router}")),
        }
        self
    }

    /// An unbound port with `device_owner` "" holding `ip` on `network`: a VIP that VMs
    /// listing `ip` in their allowed address pairs ([`VmSpec::allowed_pair`]) may hold (with
    /// keepalived: [`crate::keepalived`]). Give it a floating IP with [`Topology::fip_on_vip`].
    pub fn vip(&mut self, name: &str, network: &str, ip: Ipv4Addr) -> &mut Topology {
        self.vips.push(VipSpec {
            name: name.into(),
            network: network.into(),
            ip,
        });
        self
    }

    /// A floating IP (like [`Topology::fip`]) associated with VIP port `vip`.
    pub fn fip_on_vip(&mut self, name: &str, vip: &str) -> &mut Topology {
        self.fips.push(FipSpec {
            name: name.into(),
            vm: None,
            vip: Some(vip.into()),
            ip: None,
        });
        self
    }

    pub fn vm(&mut self, spec: VmSpec) -> &mut Topology {
        self.vms.push(spec);
        self
    }

    /// Adds the external network: a namespace with bridge `br-ext` holding the upstream router
    /// 10.5.0.1/16 and an "internet host" 198.51.100.10/32, an `ext0` NIC per host on that
    /// bridge, and in the state the flat external network `public` (10.5.0.0/16), one
    /// `floatingip_agent_gateway` port per host (10.5.1.(11 + index), its MAC on `ext0`), each
    /// host's `external_interface` and each router's `external_gateway_info` (10.5.3.(1 +
    /// index)). See [`crate::external`].
    pub fn external(&mut self) -> &mut Topology {
        self.external = true;
        self
    }

    /// A floating IP 10.5.2.(1 + index) on the external network, associated with `vm`'s port
    /// (its router is the VM network's router) or unassociated (`router_id` null, as Neutron).
    /// Needs [`Topology::external`].
    pub fn fip(&mut self, name: &str, vm: Option<&str>) -> &mut Topology {
        self.fips.push(FipSpec {
            name: name.into(),
            vm: vm.map(str::to_string),
            vip: None,
            ip: None,
        });
        self
    }

    /// A security group (with its rules nested) in the state; VMs name it with
    /// [`VmSpec::security_groups`].
    pub fn security_group(&mut self, group: state::SecurityGroup) -> &mut Topology {
        self.security_groups.push(group);
        self
    }

    /// A rule in the top-level `security_group_rules` list (it names its group with
    /// [`state::SecurityGroupRule::in_group`]).
    pub fn security_group_rule(&mut self, rule: state::SecurityGroupRule) -> &mut Topology {
        self.security_group_rules.push(rule);
        self
    }

    /// An address group `id` holding `addresses`.
    pub fn address_group(&mut self, id: &str, addresses: &[&str]) -> &mut Topology {
        self.address_groups.push(state::AddressGroup {
            id: id.into(),
            name: id.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        });
        self
    }

    /// Leave the veth pairs as `ip link add` makes them, as the agent's defaults expect of
    /// a veth: the external interface is then served by TC alone. By default a test cloud
    /// readies every veth peer for XDP (GRO on, so the kernel runs NAPI for it; the
    /// external bridge's ports send whole checksums) and tells the agents so
    /// (`--xdp-veth-peers`), so the external interface's XDP program runs.
    pub fn plain_veths(&mut self) -> &mut Topology {
        self.plain_veths = true;
        self
    }

    /// Extra command-line arguments for every agent.
    pub fn agent_args(&mut self, args: &[&str]) -> &mut Topology {
        self.agent_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Creates everything, starts the agents and waits until they are ready.
    pub fn build(&self) -> Result<Cloud> {
        let bins = locate_bins()?;
        let mut cloud = self.build_without_agents()?;
        cloud.start_agents_with(bins)?;
        Ok(cloud)
    }

    /// Creates namespaces, links and the state file but starts no agent.
    pub fn build_without_agents(&self) -> Result<Cloud> {
        ensure!(
            self.errors.is_empty(),
            "bad topology: {}",
            self.errors.join("; ")
        );
        let mut cloud = Cloud::empty()?;
        // On error `cloud` is dropped here, removing whatever was already created.
        cloud.create(self)?;
        Ok(cloud)
    }
}

/// A host as created.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Logical name from the topology ("h1").
    pub name: String,
    /// The host's external NIC, with [`Topology::external`].
    pub ext: Option<HostExt>,
    /// The `--host` name the agent runs as, unique per process and cloud ("h1-<pid>-<n>").
    pub agent_name: String,
    /// Its `agent_mode`.
    pub mode: HostMode,
    /// Extra arguments of its agent only.
    pub agent_args: Vec<String>,
    pub ns: String,
    pub tunnel_ip: Ipv4Addr,
    pub dvr_mac: String,
    /// The bridge port of this host in the underlay namespace.
    pub uplink: String,
}

/// A network as created.
#[derive(Clone, Debug)]
pub struct NetInfo {
    pub name: String,
    pub network_id: String,
    pub subnet_id: String,
    pub vni: u32,
    pub cidr: Cidr,
    pub gateway: Ipv4Addr,
    /// The router this subnet is attached to, and its interface port's MAC.
    pub router: Option<String>,
    pub gateway_mac: Option<String>,
    pub gateway_port_id: Option<String>,
    /// Its router's centralized SNAT port, when the router has a gateway and the topology a
    /// SNAT host.
    pub csnat: Option<CsnatInfo>,
    /// Its IPv6 subnet, if any.
    pub v6: Option<crate::ipv6::Net6Info>,
    /// Its `mtu`, its VMs' link MTU.
    pub mtu: u32,
    next_host: u32,
}

impl NetInfo {
    /// A network as created, with no router yet (by the topology, or by Neutron:
    /// [`crate::neutron`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "one per field of a Neutron network"
    )]
    pub(crate) fn new(
        name: &str,
        network_id: &str,
        subnet_id: &str,
        vni: u32,
        cidr: Cidr,
        gateway: Ipv4Addr,
        v6: Option<crate::ipv6::Net6Info>,
        mtu: u32,
    ) -> NetInfo {
        NetInfo {
            name: name.into(),
            network_id: network_id.into(),
            subnet_id: subnet_id.into(),
            vni,
            cidr,
            gateway,
            router: None,
            gateway_mac: None,
            gateway_port_id: None,
            csnat: None,
            v6,
            mtu,
            next_host: 10,
        }
    }
}

/// A VM as created.
#[derive(Clone, Debug)]
pub struct Vm {
    pub name: String,
    pub ns: String,
    pub host: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
    pub port_id: String,
    pub tap: String,
    /// Its IPv6 fixed IP when its network has an IPv6 subnet.
    pub ip6: Option<std::net::Ipv6Addr>,
}

/// A VM added while the agents run.
#[derive(Clone, Debug)]
pub struct LateVm {
    pub name: String,
    /// When its tap was brought up (the state file was written before).
    pub tap_up_at: Instant,
}

/// One tap the agent has attached, from `dvrctl show ports --json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPort {
    pub ifindex: u64,
    pub vni: u64,
    pub mac: String,
    pub port_security: bool,
}

/// The result of an agent run that was expected to end by itself.
#[derive(Debug)]
pub struct AgentRun {
    /// `None`: it was still running at the deadline (and was then stopped).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// `ping` output, parsed.
#[derive(Clone, Debug)]
pub struct PingResult {
    pub transmitted: u32,
    pub received: u32,
    /// TTL of each reply, in order.
    pub ttls: Vec<u8>,
    /// The source address of each reply ("64 bytes from X: ..."), in order.
    pub reply_from: Vec<String>,
    pub output: String,
}

impl PingResult {
    pub fn all_answered(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }
}

/// `arping` output, parsed.
#[derive(Clone, Debug)]
pub struct ArpingResult {
    /// The MAC of each reply (lower case), in order.
    pub reply_macs: Vec<String>,
    pub output: String,
}

/// A completed TCP transfer.
#[derive(Clone, Debug)]
pub struct TransferReport {
    pub bytes: usize,
    pub elapsed: Duration,
    /// The client address as the listener saw it (`ip:port`), if socat logged it.
    pub peer: Option<SocketAddrV4>,
}

pub(crate) struct Agent {
    pub(crate) guard: ChildGuard,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Where agents started by [`Cloud::start_agent`] take their state from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AgentSource {
    /// `--state <the cloud's state file>` (the default).
    #[default]
    File,
    /// `--etcd URL` (see [`crate::etcd`]).
    Etcd(String),
}

/// What one agent process is started on.
enum SpawnSource {
    File(PathBuf),
    Etcd(String),
}

/// The running test cloud. See the module docs.
pub struct Cloud {
    pub(crate) seq: u32,
    pub(crate) dir: PathBuf,
    pub(crate) state_path: PathBuf,
    pub(crate) state: State,
    pub(crate) bpffs: PathBuf,
    pub(crate) bins: Option<Bins>,
    pub(crate) underlay_ns: String,
    pub(crate) hosts: Vec<HostInfo>,
    pub(crate) networks: Vec<NetInfo>,
    pub(crate) routers: BTreeMap<String, String>,
    pub(crate) vms: Vec<Vm>,
    pub(crate) namespaces: Vec<String>,
    pub(crate) agents: BTreeMap<String, Agent>,
    pub(crate) files_seq: u32,
    pub(crate) external: Option<ExternalInfo>,
    pub(crate) fips: Vec<FipInfo>,
    pub(crate) vips: Vec<VipInfo>,
    /// Extra arguments for agents started from now on.
    pub agent_args: Vec<String>,
    /// Veth peers readied for XDP, agents told so (unless [`Topology::plain_veths`]).
    pub(crate) xdp_veths: bool,
    /// Where agents started from now on take their state from.
    pub(crate) agent_source: AgentSource,
    /// The etcd server of the cloud, if started ([`crate::etcd`]); stopped after the agents.
    pub(crate) etcd: Option<crate::etcd::EtcdServer>,
    /// The cloud's neutron-server, if started ([`crate::neutron`]); stopped before etcd.
    pub(crate) neutron: Option<crate::neutron::NeutronServer>,
    /// Print the tail of each agent's log when dropped (libtest shows it for failing tests only).
    pub dump_logs_on_drop: bool,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("dir", &self.dir)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl Cloud {
    fn empty() -> Result<Cloud> {
        let seq = CLOUD_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dvrt-{}-{seq}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let state_path = dir.join("state.json");
        Ok(Cloud {
            seq,
            dir,
            state_path,
            state: State::default(),
            bpffs: bpffs_root(),
            bins: None,
            underlay_ns: String::new(),
            hosts: Vec::new(),
            networks: Vec::new(),
            routers: BTreeMap::new(),
            vms: Vec::new(),
            namespaces: Vec::new(),
            agents: BTreeMap::new(),
            files_seq: 0,
            external: None,
            fips: Vec::new(),
            vips: Vec::new(),
            agent_args: Vec::new(),
            xdp_veths: true,
            agent_source: AgentSource::File,
            etcd: None,
            neutron: None,
            dump_logs_on_drop: true,
        })
    }

    fn create(&mut self, topo: &Topology) -> Result<()> {
        self.underlay_ns = self.new_ns("ul")?;
        // Without multicast snooping the bridge joins no snooper groups, so it sends no IGMP
        // reports: the underlay carries only what the hosts send.
        let ul = self.underlay_ns.clone();
        ip(&[
            "-n",
            &ul,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &self.underlay_ns, "link", "set", "br0", "up"])?;
        self.agent_args = topo.agent_args.clone();
        self.xdp_veths = !topo.plain_veths;
        if topo.external {
            self.create_external()?;
        }
        if topo.external6 {
            self.create_external6()?;
        }
        for h in &topo.hosts {
            self.create_host(h)?;
        }
        for n in &topo.networks {
            self.create_network(n)?;
        }
        for r in &topo.routers {
            self.create_router(r)?;
        }
        for v in &topo.vips {
            self.create_vip(v)?;
        }
        for v in &topo.vms {
            let vm = self.add_port(v)?;
            self.create_vm_links(&vm)?;
        }
        for (i, f) in topo.fips.iter().enumerate() {
            self.create_fip(f, i)?;
        }
        self.state.security_groups = topo.security_groups.clone();
        self.state.security_group_rules = topo.security_group_rules.clone();
        self.state.address_groups = topo.address_groups.clone();
        if topo.external6 {
            self.route_tenants6()?;
        }
        self.write_state()
    }

    /// Creates a namespace with IPv6 disabled (no RS/MLD noise in captures and counters) and
    /// `lo` up; it is deleted when the cloud drops.
    pub(crate) fn new_ns(&mut self, role: &str) -> Result<String> {
        let ns = ns_name(role);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        cmd::exec_ok(
            &ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn create_host(&mut self, h: &HostSpec) -> Result<()> {
        ensure!(
            self.host_index(&h.name).is_none(),
            "host {} defined twice",
            h.name
        );
        ensure!(
            h.mode != HostMode::DvrSnat || self.external.is_some(),
            "host {}: a dvr_snat host needs the external network (.external())",
            h.name
        );
        ensure!(
            Cidr::parse("192.0.2.0/24")?.contains(h.tunnel_ip),
            "host {}: tunnel ip {} outside 192.0.2.0/24",
            h.name,
            h.tunnel_ip
        );
        let ns = self.new_ns(&h.name)?;
        let uplink = format!("uh{}", self.hosts.len());
        let ul = self.underlay_ns.clone();
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            UNDERLAY_DEV,
            "type",
            "veth",
            "peer",
            "name",
            &uplink,
            "netns",
            &ul,
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", h.tunnel_ip),
            "dev",
            UNDERLAY_DEV,
        ])?;
        ip(&["-n", &ns, "link", "set", UNDERLAY_DEV, "up"])?;
        ip(&["-n", &ul, "link", "set", &uplink, "master", "br0"])?;
        ip(&["-n", &ul, "link", "set", &uplink, "up"])?;
        let agent_name = format!("{}-{}-{}", h.name, std::process::id(), self.seq);
        let ext = if self.external.is_some() && h.mode != HostMode::DvrNoExternal {
            Some(self.create_host_external(&ns, &agent_name)?)
        } else {
            None
        };
        self.state.hosts.push(state::Host {
            name: agent_name.clone(),
            agent_mode: h.mode.as_str().into(),
            tunnel_ip: h.tunnel_ip.to_string(),
            dvr_mac: h.dvr_mac.clone(),
            external_interface: ext.as_ref().map(|_| crate::external::EXT_IFACE.to_string()),
        });
        self.hosts.push(HostInfo {
            ext,
            name: h.name.clone(),
            agent_name,
            mode: h.mode,
            agent_args: h.agent_args.clone(),
            ns,
            tunnel_ip: h.tunnel_ip,
            dvr_mac: h.dvr_mac.clone(),
            uplink,
        });
        Ok(())
    }

    fn create_network(&mut self, n: &NetSpec) -> Result<()> {
        ensure!(
            self.net_index(&n.name).is_none(),
            "network {} defined twice",
            n.name
        );
        let cidr = Cidr::parse(&n.cidr).with_context(|| format!("network {}", n.name))?;
        let gateway = match n.gateway {
            Some(g) => g,
            None => cidr.host(1)?,
        };
        let network_id = new_id(KIND_NETWORK, self.seq);
        let subnet_id = new_id(KIND_SUBNET, self.seq);
        self.state.networks.push(state::Network {
            id: network_id.clone(),
            name: n.name.clone(),
            network_type: "vxlan".into(),
            segmentation_id: Some(n.vni),
            physical_network: None,
            router_external: false,
            mtu: n.mtu.unwrap_or(TENANT_MTU),
        });
        self.state.subnets.push(state::Subnet::v4(
            &subnet_id,
            &network_id,
            &cidr.to_string(),
            &gateway.to_string(),
        ));
        let v6 = match &n.ipv6 {
            Some(spec) => Some(self.create_subnet6(&network_id, spec)?),
            None => None,
        };
        self.networks.push(NetInfo::new(
            &n.name,
            &network_id,
            &subnet_id,
            n.vni,
            cidr,
            gateway,
            v6,
            n.mtu.unwrap_or(TENANT_MTU),
        ));
        Ok(())
    }

    fn create_router(&mut self, r: &RouterSpec) -> Result<()> {
        ensure!(
            !self.routers.contains_key(&r.name),
            "router {} defined twice",
            r.name
        );
        let router_id = new_id(KIND_ROUTER, self.seq);
        let external_gateway_info = self.router_gateway_info(self.routers.len(), r.enable_snat)?;
        let ha_hosts = r
            .ha_hosts
            .iter()
            .map(|(h, priority)| {
                let host = self
                    .host(h)
                    .with_context(|| format!("router {}: ha_hosts", r.name))?;
                Ok(state::HaHost {
                    host: host.agent_name.clone(),
                    priority: *priority,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.state.routers.push(state::Router {
            id: router_id.clone(),
            distributed: true,
            ha: !ha_hosts.is_empty(),
            external_gateway_info,
            ha_hosts,
            admin_state_up: None,
            routes: Vec::new(),
        });
        let csnat_host = self
            .state
            .routers
            .last()
            .and_then(|r| self.csnat_host_for(r));
        for net_name in &r.networks {
            let i = self
                .net_index(net_name)
                .ok_or_else(|| anyhow!("router {}: no network {net_name}", r.name))?;
            let port_id = new_id(KIND_PORT, self.seq);
            let mac = new_mac();
            let net = &mut self.networks[i];
            ensure!(
                net.router.is_none(),
                "network {net_name} attached to two routers ({:?} and {})",
                net.router,
                r.name
            );
            net.router = Some(r.name.clone());
            net.gateway_mac = Some(mac.clone());
            net.gateway_port_id = Some(port_id.clone());
            self.state.ports.push(state::Port {
                id: port_id,
                network_id: net.network_id.clone(),
                mac_address: mac,
                fixed_ips: vec![FixedIp {
                    subnet_id: net.subnet_id.clone(),
                    ip_address: net.gateway.to_string(),
                }],
                device_owner: state::OWNER_ROUTER_INTERFACE.into(),
                device_id: router_id.clone(),
                binding_host_id: String::new(),
                allowed_address_pairs: Vec::new(),
                port_security_enabled: true,
                security_groups: None,
                admin_state_up: None,
            });
            if let Some(h) = &csnat_host {
                self.create_csnat_port(i, &router_id, h)?;
            }
            self.create_router_port6(i, &router_id)?;
        }
        self.routers.insert(r.name.clone(), router_id);
        Ok(())
    }

    /// Allocates the VM's port and adds it to the state (not yet written).
    fn add_port(&mut self, v: &VmSpec) -> Result<Vm> {
        ensure!(self.vm(&v.name).is_err(), "VM {} defined twice", v.name);
        let hi = self
            .host_index(&v.host)
            .ok_or_else(|| anyhow!("VM {}: no host {}", v.name, v.host))?;
        let ni = self
            .net_index(&v.network)
            .ok_or_else(|| anyhow!("VM {}: no network {}", v.name, v.network))?;
        let net = &mut self.networks[ni];
        let ip = match v.ip {
            Some(ip) => ip,
            None => {
                let ip = net.cidr.host(net.next_host)?;
                net.next_host += 1;
                ip
            }
        };
        ensure!(
            net.cidr.contains(ip),
            "VM {}: {ip} outside {}",
            v.name,
            net.cidr
        );
        let port_id = new_id(KIND_PORT, self.seq);
        let mac = v.mac.clone().unwrap_or_else(new_mac);
        let mut fixed_ips = vec![FixedIp {
            subnet_id: net.subnet_id.clone(),
            ip_address: ip.to_string(),
        }];
        let ip6 = match &mut net.v6 {
            Some(v6) => {
                let ip6 = v6.port_address(&mac)?;
                fixed_ips.push(FixedIp {
                    subnet_id: v6.subnet_id.clone(),
                    ip_address: ip6.to_string(),
                });
                Some(ip6)
            }
            None => None,
        };
        self.state.ports.push(state::Port {
            id: port_id.clone(),
            network_id: net.network_id.clone(),
            mac_address: mac.clone(),
            fixed_ips,
            device_owner: state::OWNER_COMPUTE.into(),
            device_id: new_id(KIND_PORT, self.seq),
            binding_host_id: self.hosts[hi].agent_name.clone(),
            allowed_address_pairs: v
                .allowed_pairs
                .iter()
                .map(|(ip, m)| AddressPair {
                    ip_address: ip.to_string(),
                    mac_address: m.clone().unwrap_or_else(|| mac.clone()),
                })
                .collect(),
            port_security_enabled: v.port_security,
            security_groups: v.security_groups.clone(),
            admin_state_up: v.admin_state_up,
        });
        let vm = Vm {
            name: v.name.clone(),
            ns: String::new(),
            host: v.host.clone(),
            network: v.network.clone(),
            ip,
            prefix: net.cidr.prefix,
            mac,
            tap: tap_name(&port_id),
            port_id,
            ip6,
        };
        Ok(vm)
    }

    /// Creates the VM's namespace, its `eth0` and the tap in the host namespace; the tap comes
    /// up last.
    pub(crate) fn create_vm_links(&mut self, vm: &Vm) -> Result<()> {
        let host_ns = self.host(&vm.host)?.ns.clone();
        let net = self.network(&vm.network)?.clone();
        let ns = self.new_ns(&vm.name)?;
        let mut vm = vm.clone();
        vm.ns = ns.clone();
        // Registered before the links exist so that lookups work for the rest of the setup.
        self.vms.push(vm.clone());
        // The link MTU a guest takes from Neutron's DHCP (option 26) or RA: the network's.
        let mtu = net.mtu.to_string();
        ip(&[
            "-n", &host_ns, "link", "add", &vm.tap, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        ip(&[
            "-n", &ns, "link", "set", "eth0", "address", &vm.mac, "mtu", &mtu,
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/{}", vm.ip, vm.prefix),
            "dev",
            "eth0",
        ])?;
        if let Some(v6) = &net.v6 {
            crate::ipv6::configure_vm(&ns, v6, vm.ip6)?;
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        if self.xdp_veths {
            crate::cmd::gro_on(&ns, "eth0")?;
        }
        if net.cidr.contains(net.gateway) {
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &net.gateway.to_string(),
            ])?;
        }
        ip(&["-n", &host_ns, "link", "set", &vm.tap, "mtu", &mtu, "up"])?;
        Ok(())
    }

    pub(crate) fn write_state(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state)?;
        self.write_state_bytes(&json)
    }

    /// Atomically replaces the state file (write + rename), so an agent never reads half a file.
    fn write_state_bytes(&self, bytes: &[u8]) -> Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.state_path)
            .with_context(|| format!("renaming to {}", self.state_path.display()))?;
        Ok(())
    }

    // ---- agents ----------------------------------------------------------------------------

    /// Starts one agent per host and waits until each lists all its local taps.
    pub fn start_agents(&mut self) -> Result<()> {
        let bins = locate_bins()?;
        self.start_agents_with(bins)
    }

    fn start_agents_with(&mut self, bins: Bins) -> Result<()> {
        self.bins = Some(bins);
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for h in &names {
            self.start_agent(h)?;
        }
        let start = Instant::now();
        for h in &names {
            self.wait_agent_ready(h, AGENT_READY_DEADLINE.saturating_sub(start.elapsed()))?;
        }
        if self.external.is_some() {
            for h in &names {
                self.wait_external_ready(h, AGENT_READY_DEADLINE)?;
            }
            self.wait_snat_ready(AGENT_READY_DEADLINE)?;
        }
        Ok(())
    }

    fn bins(&self) -> Result<&Bins> {
        self.bins
            .as_ref()
            .ok_or_else(|| anyhow!("no agent binaries located (cloud built without agents)"))
    }

    fn spawn_agent(&mut self, host: &str, source: &SpawnSource, tag: &str) -> Result<Agent> {
        if self.bins.is_none() {
            self.bins = Some(locate_bins()?);
        }
        let bins = self.bins()?.clone();
        let h = self.host(host)?.clone();
        let stdout = self.dir.join(format!("agent-{}-{tag}.stdout", h.name));
        let stderr = self.dir.join(format!("agent-{}-{tag}.stderr", h.name));
        let mut cmd = Command::new("nsenter");
        // nsenter --net= only switches the network namespace: the agent keeps the real bpffs
        // (unlike `ip netns exec`, which remounts /sys). Without --fork, nsenter execs the agent,
        // so the child pid is the agent's.
        cmd.arg(format!("--net=/run/netns/{}", h.ns))
            .arg(&bins.agent)
            .arg("--host")
            .arg(&h.agent_name);
        match source {
            SpawnSource::File(path) => cmd.arg("--state").arg(path),
            SpawnSource::Etcd(url) => cmd.arg("--etcd").arg(url),
        };
        cmd.arg("--bpffs").arg(&self.bpffs);
        // Every veth peer has GRO on (`cmd::gro_on`), unless `Topology::plain_veths`.
        if self.xdp_veths {
            cmd.arg("--xdp-veth-peers");
        }
        cmd.args(&self.agent_args)
            .args(&h.agent_args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).with_context(|| format!("{}", stdout.display()))?)
            .stderr(fs::File::create(&stderr).with_context(|| format!("{}", stderr.display()))?);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bins.agent.display()))?;
        Ok(Agent {
            guard: ChildGuard::new(child, format!("dvr-agent --host {}", h.agent_name)),
            stdout,
            stderr,
        })
    }

    /// The pid of `host`'s running agent.
    pub fn agent_pid(&self, host: &str) -> Result<u32> {
        self.agents
            .get(host)
            .and_then(|a| a.guard.pid())
            .ok_or_else(|| anyhow!("no agent running for {host}"))
    }

    /// Starts the agent of `host` on the cloud's state file, or on etcd after
    /// [`Cloud::agents_use_etcd`] (does not wait for readiness). A restarted agent logs to new
    /// files ([`Cloud::agent_log`] shows the current agent's); earlier logs stay in the temp
    /// dir.
    pub fn start_agent(&mut self, host: &str) -> Result<()> {
        ensure!(
            !self.agents.contains_key(host),
            "agent of {host} already running"
        );
        let source = match &self.agent_source {
            AgentSource::File => SpawnSource::File(self.state_path.clone()),
            AgentSource::Etcd(url) => SpawnSource::Etcd(url.clone()),
        };
        let name = self.host(host)?.name.clone();
        let tag = if self.dir.join(format!("agent-{name}-main.stderr")).exists() {
            self.files_seq += 1;
            format!("start{}", self.files_seq)
        } else {
            "main".to_string()
        };
        let agent = self.spawn_agent(host, &source, &tag)?;
        self.agents.insert(host.to_string(), agent);
        Ok(())
    }

    /// Where agents started from now on take their state from.
    pub fn agent_source(&self) -> &AgentSource {
        &self.agent_source
    }

    /// Waits until the agent of `host` has created [`VXLAN_DEV`], lists every local VM's tap
    /// in `dvrctl show ports --json` and has logged that it is ready (a restarted agent finds
    /// its predecessor's pins listing the taps while it still loads and verifies its
    /// programs). Fails at once, quoting its output, if the agent exits.
    pub fn wait_agent_ready(&mut self, host: &str, deadline: Duration) -> Result<()> {
        let h = self.host(host)?.clone();
        let expected = self.local_tap_ifindexes(host)?;
        let start = Instant::now();
        let res = wait_until(
            &format!("agent of {host} to list taps {expected:?}"),
            deadline,
            |why| {
                self.ensure_agent_running(host)?;
                let dev = exec(&h.ns, &["ip", "link", "show", "dev", VXLAN_DEV])?;
                if !dev.status.success() {
                    *why = format!("no {VXLAN_DEV} in {}", h.ns);
                    return Ok(None);
                }
                let ports = match self.show_ports(host) {
                    Ok(p) => p,
                    Err(e) => {
                        *why = format!("{e:#}");
                        return Ok(None);
                    }
                };
                let listed: Vec<u64> = ports.iter().map(|p| p.ifindex).collect();
                if !expected.iter().all(|i| listed.contains(i)) {
                    *why = format!("dvrctl lists ifindexes {listed:?}");
                    return Ok(None);
                }
                if !self.agent_log(host)?.contains(AGENT_READY_LOG) {
                    *why = format!("the agent has not logged {AGENT_READY_LOG:?} yet");
                    return Ok(None);
                }
                Ok(Some(()))
            },
        );
        match res {
            Ok(()) => {
                eprintln!(
                    "dvr-tests: agent of {host} ready after {:?}",
                    start.elapsed()
                );
                Ok(())
            }
            Err(e) => Err(e.context(format!("agent log:\n{}", self.agent_log_tail(host, 40)))),
        }
    }

    fn ensure_agent_running(&mut self, host: &str) -> Result<()> {
        let agent = self
            .agents
            .get_mut(host)
            .ok_or_else(|| anyhow!("no agent for {host}"))?;
        if let Some(status) = agent.guard.try_wait()? {
            bail!(
                "dvr-agent of {host} exited ({status}) while it should be running:\n{}",
                self.agent_log_tail(host, 40)
            );
        }
        Ok(())
    }

    /// Whether the agent of `host` is still running.
    pub fn agent_running(&mut self, host: &str) -> Result<bool> {
        let agent = self
            .agents
            .get_mut(host)
            .ok_or_else(|| anyhow!("no agent for {host}"))?;
        Ok(agent.guard.try_wait()?.is_none())
    }

    /// Stops the agent of `host` with SIGTERM; fails if it needs SIGKILL. Returns its status.
    pub fn stop_agent(&mut self, host: &str) -> Result<ExitStatus> {
        let mut agent = self
            .agents
            .remove(host)
            .ok_or_else(|| anyhow!("no agent for {host}"))?;
        let (status, killed) = agent.guard.stop(AGENT_STOP_GRACE)?;
        ensure!(
            !killed,
            "agent of {host} ignored SIGTERM for {AGENT_STOP_GRACE:?}; killed it"
        );
        Ok(status)
    }

    /// Runs a second agent for `host` on `state` (a separate file) and waits up to `deadline` for
    /// it to exit by itself. Used for start-up validation; the host must have no running agent.
    pub fn run_agent_to_exit(
        &mut self,
        host: &str,
        state: &Value,
        deadline: Duration,
    ) -> Result<AgentRun> {
        ensure!(
            !self.agents.contains_key(host),
            "agent of {host} is running"
        );
        self.files_seq += 1;
        let tag = format!("run{}", self.files_seq);
        let path = self.dir.join(format!("state-{tag}.json"));
        fs::write(&path, serde_json::to_vec_pretty(state)?)?;
        let mut agent = self.spawn_agent(host, &SpawnSource::File(path), &tag)?;
        let status = match agent.guard.wait_deadline(deadline)? {
            Some(s) => Some(s),
            None => {
                agent.guard.stop(AGENT_STOP_GRACE)?;
                None
            }
        };
        let run = AgentRun {
            status,
            stdout: fs::read_to_string(&agent.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&agent.stderr).unwrap_or_default(),
        };
        let pins = self.pin_dir(host)?;
        if pins.exists() {
            let _ = self.uninstall_agent(host);
            let _ = fs::remove_dir_all(&pins);
        }
        Ok(run)
    }

    /// `dvr-agent --uninstall` for `host`, run in its namespace: removes the programs, links,
    /// pins and tunnel device an agent leaves behind when stopped (it keeps them so that a
    /// restarted agent adopts a datapath that kept forwarding). Returns the output whatever the
    /// status; the host must have no running agent.
    pub fn uninstall_agent(&mut self, host: &str) -> Result<std::process::Output> {
        ensure!(
            !self.agents.contains_key(host),
            "agent of {host} is running"
        );
        if self.bins.is_none() {
            self.bins = Some(locate_bins()?);
        }
        let bins = self.bins()?.clone();
        let h = self.host(host)?.clone();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", h.ns))
            .arg(&bins.agent)
            .arg("--uninstall")
            .arg("--host")
            .arg(&h.agent_name)
            .arg("--bpffs")
            .arg(&self.bpffs);
        cmd::output_with_deadline(
            c,
            &format!("dvr-agent --uninstall --host {}", h.agent_name),
            cmd::DEFAULT_DEADLINE,
        )
    }

    /// The agent's stdout and stderr so far.
    pub fn agent_log(&self, host: &str) -> Result<String> {
        let agent = self
            .agents
            .get(host)
            .ok_or_else(|| anyhow!("no agent for {host}"))?;
        let out = fs::read_to_string(&agent.stdout).unwrap_or_default();
        let err = fs::read_to_string(&agent.stderr).unwrap_or_default();
        Ok(format!("--- stdout ---\n{out}--- stderr ---\n{err}"))
    }

    /// The last `lines` lines of the agent's output, preceded by up to 5 earlier error lines
    /// (`Error:`, ` ERROR `, "Caused by"), so a long verifier log does not hide the headline.
    pub(crate) fn agent_log_tail(&self, host: &str, lines: usize) -> String {
        match self.agent_log(host) {
            Ok(log) => {
                let all: Vec<&str> = log.lines().collect();
                let cut = all.len().saturating_sub(lines);
                let earlier: Vec<&str> = all[..cut]
                    .iter()
                    .filter(|l| {
                        l.contains("Error:") || l.contains(" ERROR ") || l.contains("Caused by")
                    })
                    .take(5)
                    .copied()
                    .collect();
                let tail = all[cut..].join("\n");
                if earlier.is_empty() {
                    tail
                } else {
                    format!("{}\n[...]\n{tail}", earlier.join("\n"))
                }
            }
            Err(e) => format!("{e:#}"),
        }
    }

    /// Waits until the agent's output contains `needle` (case-insensitive).
    pub fn wait_agent_log(&self, host: &str, needle: &str, deadline: Duration) -> Result<()> {
        let needle = needle.to_lowercase();
        wait_until(
            &format!("agent of {host} to log {needle:?}"),
            deadline,
            |why| {
                let log = self.agent_log(host)?;
                if log.to_lowercase().contains(&needle) {
                    return Ok(Some(()));
                }
                *why = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                Ok(None)
            },
        )
    }

    /// `<bpffs>/<agent host name>`.
    pub fn pin_dir(&self, host: &str) -> Result<PathBuf> {
        Ok(self.bpffs.join(&self.host(host)?.agent_name))
    }

    // ---- dvrctl ----------------------------------------------------------------------------

    /// `dvrctl --host <agent name> --bpffs <root> ARGS`, run from the test's namespace.
    pub fn dvrctl(&self, host: &str, args: &[&str]) -> Result<std::process::Output> {
        let bins = match &self.bins {
            Some(b) => b.clone(),
            None => locate_bins()?,
        };
        let h = self.host(host)?;
        let bpffs = self.bpffs.to_string_lossy().into_owned();
        let mut full = vec!["--host", h.agent_name.as_str(), "--bpffs", bpffs.as_str()];
        full.extend_from_slice(args);
        run_with_deadline(
            &bins.dvrctl.to_string_lossy(),
            &full,
            Duration::from_secs(10),
        )
    }

    pub(crate) fn dvrctl_json(&self, host: &str, args: &[&str]) -> Result<Value> {
        let out = self.dvrctl(host, args)?;
        ensure!(
            out.status.success(),
            "dvrctl {args:?} for {host} failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("dvrctl {args:?} printed no JSON: {}", text(&out).trim()))
    }

    /// `dvrctl show <what> --json` of `host`, for the subjects that print a JSON array.
    pub(crate) fn show_list(&self, host: &str, what: &str) -> Result<Vec<Value>> {
        let v = self.dvrctl_json(host, &["show", what, "--json"])?;
        match v {
            Value::Array(a) => Ok(a),
            v => Err(anyhow!("show {what} --json of {host} is not an array: {v}")),
        }
    }

    /// `dvrctl show ports --json`.
    pub fn show_ports(&self, host: &str) -> Result<Vec<AgentPort>> {
        self.show_list(host, "ports")?
            .iter()
            .map(|p| {
                Ok(AgentPort {
                    ifindex: p["ifindex"]
                        .as_u64()
                        .ok_or_else(|| anyhow!("port without ifindex: {p}"))?,
                    vni: p["vni"].as_u64().unwrap_or_default(),
                    mac: p["mac"].as_str().unwrap_or_default().to_lowercase(),
                    port_security: p["port_security"].as_bool().unwrap_or_default(),
                })
            })
            .collect()
    }

    /// `dvrctl show stats --json`: counter id -> packets (summed over CPUs).
    pub fn stats(&self, host: &str) -> Result<HashMap<String, u64>> {
        let v = self.dvrctl_json(host, &["show", "stats", "--json"])?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("show stats --json is not an object: {v}"))?;
        obj.iter()
            .map(|(k, n)| {
                let n = n
                    .as_u64()
                    .ok_or_else(|| anyhow!("stat {k} is not a u64: {n}"))?;
                Ok((k.clone(), n))
            })
            .collect()
    }

    /// One counter.
    pub fn stat(&self, host: &str, id: &str) -> Result<u64> {
        let s = self.stats(host)?;
        s.get(id)
            .copied()
            .ok_or_else(|| anyhow!("dvrctl stats of {host} lack {id:?}: {s:?}"))
    }

    /// Waits until counter `id` of `host` reaches `min`; returns its value.
    pub fn wait_stat_at_least(
        &self,
        host: &str,
        id: &str,
        min: u64,
        deadline: Duration,
    ) -> Result<u64> {
        wait_until(&format!("{host} stat {id} >= {min}"), deadline, |why| {
            let v = self.stat(host, id)?;
            *why = format!("{id} = {v}");
            Ok((v >= min).then_some(v))
        })
    }

    // ---- lookups ---------------------------------------------------------------------------

    fn host_index(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    fn net_index(&self, name: &str) -> Option<usize> {
        self.networks.iter().position(|n| n.name == name)
    }

    pub fn host(&self, name: &str) -> Result<&HostInfo> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| anyhow!("no host {name}"))
    }

    pub fn hosts(&self) -> &[HostInfo] {
        &self.hosts
    }

    pub fn network(&self, name: &str) -> Result<&NetInfo> {
        self.networks
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no network {name}"))
    }

    pub fn vm(&self, name: &str) -> Result<&Vm> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| anyhow!("no VM {name}"))
    }

    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    /// A VM's fixed IP.
    pub fn ip(&self, vm: &str) -> Result<Ipv4Addr> {
        Ok(self.vm(vm)?.ip)
    }

    /// The MAC of the router interface on `network` (the subnet's gateway MAC).
    pub fn gateway_mac(&self, network: &str) -> Result<String> {
        self.network(network)?
            .gateway_mac
            .clone()
            .ok_or_else(|| anyhow!("network {network} has no router"))
    }

    pub fn router_id(&self, router: &str) -> Result<&str> {
        self.routers
            .get(router)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no router {router}"))
    }

    /// Router `router` (logical name) as the cloud's state holds it.
    pub fn state_router(&self, router: &str) -> Result<&crate::state::Router> {
        let id = self.router_id(router)?;
        self.state
            .routers
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| anyhow!("router {router} not in the state"))
    }

    pub fn underlay_ns(&self) -> &str {
        &self.underlay_ns
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    pub fn temp_dir(&self) -> &Path {
        &self.dir
    }

    /// Every namespace this cloud created, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn local_tap_ifindexes(&self, host: &str) -> Result<Vec<u64>> {
        let ns = self.host(host)?.ns.clone();
        self.vms
            .iter()
            .filter(|v| v.host == host)
            .map(|v| link_ifindex(&ns, &v.tap))
            .collect()
    }

    /// The ifindex of a VM's tap in its host namespace.
    pub fn tap_ifindex(&self, vm: &str) -> Result<u64> {
        let v = self.vm(vm)?;
        link_ifindex(&self.host(&v.host)?.ns, &v.tap)
    }

    // ---- state changes ---------------------------------------------------------------------

    /// Edits the state and rewrites the state file (atomically).
    pub fn update_state(&mut self, f: impl FnOnce(&mut State)) -> Result<()> {
        f(&mut self.state);
        self.write_state()
    }

    /// Writes arbitrary JSON as the state file without changing the cloud's own state, e.g. an
    /// invalid one. The next [`Cloud::update_state`] writes the cloud's state again.
    pub fn write_raw_state(&self, v: &Value) -> Result<()> {
        self.write_state_bytes(&serde_json::to_vec_pretty(v)?)
    }

    /// Adds a VM while the agents run: writes the state with its port, then creates its
    /// namespace and tap (tap up last). Does not wait for the agent.
    pub fn add_vm_later(&mut self, spec: VmSpec) -> Result<LateVm> {
        let vm = self.add_port(&spec)?;
        self.write_state()?;
        self.create_vm_links(&vm)?;
        Ok(LateVm {
            name: spec.name,
            tap_up_at: Instant::now(),
        })
    }

    /// Waits until the agent of the VM's host lists its tap.
    pub fn wait_port_attached(&self, vm: &str, deadline: Duration) -> Result<Duration> {
        let host = self.vm(vm)?.host.clone();
        let ifindex = self.tap_ifindex(vm)?;
        let start = Instant::now();
        wait_until(
            &format!("agent of {host} to attach the tap of {vm}"),
            deadline,
            |why| match self.show_ports(&host) {
                Ok(p) if p.iter().any(|p| p.ifindex == ifindex) => Ok(Some(start.elapsed())),
                Ok(p) => {
                    *why = format!("{p:?}");
                    Ok(None)
                }
                Err(e) => {
                    *why = format!("{e:#}");
                    Ok(None)
                }
            },
        )
    }

    // ---- commands in namespaces ------------------------------------------------------------

    /// `ip netns exec <vm ns> ARGS`.
    pub fn exec_vm(&self, vm: &str, args: &[&str]) -> Result<std::process::Output> {
        exec(&self.vm(vm)?.ns, args)
    }

    /// `ip netns exec <host ns> ARGS`.
    pub fn exec_host(&self, host: &str, args: &[&str]) -> Result<std::process::Output> {
        exec(&self.host(host)?.ns, args)
    }

    // ---- traffic ---------------------------------------------------------------------------

    /// `ping -c count -i 0.2` from a VM (or any endpoint [`Cloud::ns_of`] knows, e.g.
    /// [`crate::external::EXT`]); never fails on lost replies (inspect the result).
    pub fn ping(&self, vm: &str, dst: Ipv4Addr, count: u32) -> Result<PingResult> {
        self.ping_with(vm, dst, count, &[])
    }

    /// [`Cloud::ping`] with extra ping arguments (e.g. `["-I", "192.168.1.200"]`).
    pub fn ping_with(
        &self,
        vm: &str,
        dst: Ipv4Addr,
        count: u32,
        extra: &[&str],
    ) -> Result<PingResult> {
        let ns = self.ns_of(vm)?;
        let count_s = count.to_string();
        let dst_s = dst.to_string();
        let mut args = vec!["ping", "-n", "-c", &count_s, "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(&dst_s);
        let deadline = Duration::from_millis(200 * u64::from(count)) + Duration::from_secs(10);
        let out = exec_with_deadline(&ns, &args, deadline)?;
        Ok(parse_ping(&text(&out)))
    }

    /// One echo with a short reply timeout (`wait`, at least 10 ms): true if answered.
    pub fn ping_once(&self, vm: &str, dst: Ipv4Addr, wait: Duration) -> Result<bool> {
        let ns = self.ns_of(vm)?;
        let w = format!("{:.3}", wait.as_secs_f64().max(0.01));
        let out = exec_with_deadline(
            &ns,
            &["ping", "-n", "-c", "1", "-W", &w, &dst.to_string()],
            wait + Duration::from_secs(5),
        )?;
        Ok(parse_ping(&text(&out)).all_answered())
    }

    /// Pings and fails unless every echo is answered.
    pub fn ping_ok(&self, vm: &str, dst: Ipv4Addr, count: u32) -> Result<PingResult> {
        let r = self.ping(vm, dst, count)?;
        ensure!(
            r.all_answered(),
            "ping {vm} -> {dst}: {}/{} answered:\n{}",
            r.received,
            r.transmitted,
            r.output
        );
        Ok(r)
    }

    /// `arping -c count -w deadline -I eth0 target` from a VM.
    pub fn arping(
        &self,
        vm: &str,
        target: Ipv4Addr,
        count: u32,
        deadline_s: u32,
    ) -> Result<ArpingResult> {
        let ns = self.vm(vm)?.ns.clone();
        let out = exec_with_deadline(
            &ns,
            &[
                "arping",
                "-c",
                &count.to_string(),
                "-w",
                &deadline_s.to_string(),
                "-I",
                "eth0",
                &target.to_string(),
            ],
            Duration::from_secs(u64::from(deadline_s) + 10),
        )?;
        Ok(parse_arping(&text(&out)))
    }

    /// Sends `bytes` of pseudo-random data over TCP from `from_vm` to `to_vm:port` with socat and
    /// checks that exactly the same bytes arrived.
    pub fn tcp_transfer(
        &mut self,
        from_vm: &str,
        to_vm: &str,
        port: u16,
        bytes: usize,
    ) -> Result<TransferReport> {
        let dst = self.vm(to_vm)?.ip;
        self.tcp_transfer_to(from_vm, to_vm, dst, port, bytes, None)
    }

    /// [`Cloud::tcp_transfer`] between any endpoints [`Cloud::ns_of`] knows: the listener runs in
    /// `to`, the sender in `from` connects to `dst:port` (from `bind` if given). The report
    /// carries the client address the listener saw.
    pub fn tcp_transfer_to(
        &mut self,
        from: &str,
        to: &str,
        dst: impl Into<std::net::IpAddr>,
        port: u16,
        bytes: usize,
        bind: Option<Ipv4Addr>,
    ) -> Result<TransferReport> {
        let dst: std::net::IpAddr = dst.into();
        // socat's address families: TCP4 / TCP6, an IPv6 literal in brackets.
        let (family, dst_s) = match dst {
            std::net::IpAddr::V4(a) => ("TCP4", a.to_string()),
            std::net::IpAddr::V6(a) => ("TCP6", format!("[{a}]")),
        };
        let from_ns = self.ns_of(from)?;
        let to_ns = self.ns_of(to)?;
        self.files_seq += 1;
        let payload_path = self.dir.join(format!("tcp-{}-payload", self.files_seq));
        let recv_path = self.dir.join(format!("tcp-{}-recv", self.files_seq));
        let log_path = self
            .dir
            .join(format!("tcp-{}-listener.log", self.files_seq));
        let payload = pseudo_random(bytes, u64::from(self.files_seq));
        fs::write(&payload_path, &payload)?;

        let port_s = port.to_string();
        let log = fs::File::create(&log_path).with_context(|| format!("{}", log_path.display()))?;
        let mut listener_cmd = Command::new("ip");
        // -d -d: socat logs "accepting connection from AF=2 <ip>:<port> on ...".
        listener_cmd
            .args(["netns", "exec", &to_ns, "socat", "-d", "-d", "-u"])
            .arg(format!("{family}-LISTEN:{port},reuseaddr"))
            .arg(format!("CREATE:{}", recv_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = listener_cmd.spawn().context("starting socat listener")?;
        let mut listener = ChildGuard::new(child, format!("socat listener in {to}:{port}"));
        wait_until(
            &format!("socat to listen on {to}:{port}"),
            Duration::from_secs(5),
            |why| {
                if let Some(s) = listener.try_wait()? {
                    bail!("socat listener in {to} exited early ({s})");
                }
                let out = exec(&to_ns, &["ss", "-H", "-ltn", &format!("sport = :{port_s}")])?;
                *why = text(&out);
                Ok((!cmd::stdout(&out).trim().is_empty()).then_some(()))
            },
        )?;

        let start = Instant::now();
        let mut target = format!("{family}:{dst_s}:{port},connect-timeout=5");
        if let Some(b) = bind {
            target.push_str(&format!(",bind={b}"));
        }
        let send = exec_with_deadline(
            &from_ns,
            &[
                "socat",
                "-u",
                &format!("FILE:{}", payload_path.display()),
                &target,
            ],
            Duration::from_secs(60),
        )?;
        ensure!(
            send.status.success(),
            "socat {from} -> {dst}:{port} ({to}) failed ({}): {}",
            send.status,
            text(&send).trim()
        );
        let done = listener.wait_deadline(Duration::from_secs(20))?;
        let elapsed = start.elapsed();
        ensure!(
            done.is_some(),
            "socat listener in {to} did not finish within 20 s after the sender"
        );
        let received =
            fs::read(&recv_path).with_context(|| format!("reading {}", recv_path.display()))?;
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let _ = fs::remove_file(&payload_path);
        let _ = fs::remove_file(&recv_path);
        let _ = fs::remove_file(&log_path);
        ensure!(
            received == payload,
            "TCP {from} -> {dst}:{port} ({to}): sent {} bytes, received {} bytes{}",
            payload.len(),
            received.len(),
            if received.len() == payload.len() {
                " with different content"
            } else {
                ""
            }
        );
        Ok(TransferReport {
            bytes,
            elapsed,
            peer: parse_socat_peer(&log),
        })
    }

    /// Runs a scapy script in a VM (`from scapy.all import *` is prepended, `conf.verb = 0`).
    pub fn scapy(&self, vm: &str, body: &str) -> Result<std::process::Output> {
        let ns = self.vm(vm)?.ns.clone();
        let py = scapy_python()?;
        let script = format!("from scapy.all import *\nconf.verb = 0\n{body}\n");
        let out = exec_with_deadline(&ns, &[&py, "-c", &script], Duration::from_secs(60))?;
        ensure!(
            out.status.success(),
            "scapy in {vm} failed ({}): {}",
            out.status,
            text(&out).trim()
        );
        Ok(out)
    }

    /// Sends one Ethernet/IPv4/UDP frame from a VM's `eth0` with arbitrary addresses.
    pub fn send_udp_frame(&self, vm: &str, f: &UdpFrame) -> Result<()> {
        self.scapy(
            vm,
            &format!(
                "sendp(Ether(src={:?}, dst={:?})/IP(src={:?}, dst={:?}, ttl=64)/UDP(sport={}, dport={})/Raw(b'dvr-tests'), iface='eth0', count={})",
                f.src_mac, f.dst_mac, f.src_ip.to_string(), f.dst_ip.to_string(), f.sport, f.dport, f.count
            ),
        )
        .map(|_| ())
    }

    /// Sends one broadcast ARP request from a VM's `eth0` with arbitrary sender fields.
    pub fn send_arp_request(&self, vm: &str, f: &ArpFrame) -> Result<()> {
        self.scapy(
            vm,
            &format!(
                "sendp(Ether(src={:?}, dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc={:?}, psrc={:?}, hwdst='00:00:00:00:00:00', pdst={:?}), iface='eth0', count={})",
                f.eth_src, f.sender_mac, f.sender_ip.to_string(), f.target_ip.to_string(), f.count
            ),
        )
        .map(|_| ())
    }

    // ---- captures --------------------------------------------------------------------------

    /// tcpdump on a VM's `eth0`.
    pub fn capture_vm(&self, vm: &str, filter: &str) -> Result<Capture> {
        Capture::start(&self.vm(vm)?.ns, "eth0", filter)
    }

    /// tcpdump on a host's bridge port in the underlay namespace (all it sends and receives).
    pub fn capture_uplink(&self, host: &str, filter: &str) -> Result<Capture> {
        Capture::start(&self.underlay_ns, &self.host(host)?.uplink, filter)
    }

    /// tcpdump on every interface of the underlay namespace (`-i any`; Ethernet headers are
    /// cooked: only the source MAC of the outer frame shows).
    pub fn capture_underlay(&self, filter: &str) -> Result<Capture> {
        Capture::start(&self.underlay_ns, "any", filter)
    }

    /// tcpdump on an interface of a host namespace (e.g. `ul0`, a tap).
    pub fn capture_host(&self, host: &str, iface: &str, filter: &str) -> Result<Capture> {
        Capture::start(&self.host(host)?.ns, iface, filter)
    }

    /// A sentinel on the underlay: one plain ICMP echo between two hosts' tunnel IPs (no agent
    /// involved). Anything the datapath sent before it crossed the bridge before it.
    pub fn underlay_sentinel(
        &self,
        from_host: &str,
        to_host: &str,
    ) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let from = self.host(from_host)?;
        let to = self.host(to_host)?;
        exec_ok(
            &from.ns,
            &[
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "2",
                &to.tunnel_ip.to_string(),
            ],
        )?;
        Ok((from.tunnel_ip, to.tunnel_ip))
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        let hosts: Vec<String> = self.agents.keys().cloned().collect();
        if self.dump_logs_on_drop {
            for h in &hosts {
                eprintln!(
                    "dvr-tests: ---- agent {h} log (tail) ----\n{}",
                    self.agent_log_tail(h, 30)
                );
            }
        }
        for h in hosts {
            if let Some(mut agent) = self.agents.remove(&h) {
                match agent.guard.stop(AGENT_STOP_GRACE) {
                    Ok((_, true)) => problems.push(format!("agent {h} needed SIGKILL")),
                    Ok((status, false)) if !status.success() => {
                        problems.push(format!("agent {h} exited with {status} on SIGTERM"));
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(format!("stopping agent {h}: {e:#}")),
                }
            }
        }
        if let Some(mut neutron) = self.neutron.take()
            && neutron.running()
            && let Err(e) = neutron.stop()
        {
            problems.push(format!("stopping neutron-server: {e:#}"));
        }
        if let Some(mut etcd) = self.etcd.take()
            && etcd.running()
            && let Err(e) = etcd.stop()
        {
            problems.push(format!("stopping etcd: {e:#}"));
        }
        // A stopped agent leaves its programs attached and its maps pinned (hitless restart);
        // `dvr-agent --uninstall` removes them, in the host's namespace.
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for h in &names {
            let has_pins = self.pin_dir(h).is_ok_and(|p| p.exists());
            if has_pins && self.bins.is_some() {
                match self.uninstall_agent(h) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => problems.push(format!(
                        "dvr-agent --uninstall for {h} failed ({}): {}",
                        out.status,
                        text(&out).trim()
                    )),
                    Err(e) => problems.push(format!("dvr-agent --uninstall for {h}: {e:#}")),
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                problems.push(format!("deleting netns {ns}: {e:#}"));
            }
        }
        for h in &self.hosts {
            let pins = self.bpffs.join(&h.agent_name);
            if pins.exists() {
                if self.bins.is_some() {
                    problems.push(format!(
                        "{} still exists after dvr-agent --uninstall for {}",
                        pins.display(),
                        h.name
                    ));
                }
                if let Err(e) = fs::remove_dir_all(&pins) {
                    problems.push(format!("removing {}: {e}", pins.display()));
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            problems.push(format!("removing {}: {e}", self.dir.display()));
        }
        for p in problems {
            eprintln!("dvr-tests: teardown: {p}");
        }
    }
}

/// A hand-made Ethernet/IPv4/UDP frame.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    pub src_mac: String,
    pub dst_mac: String,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub count: u32,
}

/// A hand-made broadcast ARP request.
#[derive(Clone, Debug)]
pub struct ArpFrame {
    pub eth_src: String,
    pub sender_mac: String,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
    pub count: u32,
}

/// The ifindex of `dev` in namespace `ns`.
pub(crate) fn link_ifindex(ns: &str, dev: &str) -> Result<u64> {
    let out = cmd::run_ok("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link show")?;
    v.get(0)
        .and_then(|l| l["ifindex"].as_u64())
        .ok_or_else(|| anyhow!("no ifindex for {dev} in {ns}: {v}"))
}

/// The peer of socat's "accepting connection from AF=2 1.2.3.4:5678 on ..." log line.
pub fn parse_socat_peer(log: &str) -> Option<SocketAddrV4> {
    let at = log.find("accepting connection from AF=2 ")?;
    let rest = &log[at + "accepting connection from AF=2 ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Parses iputils `ping` output.
pub fn parse_ping(out: &str) -> PingResult {
    let mut ttls = Vec::new();
    let mut reply_from = Vec::new();
    let mut transmitted = 0;
    let mut received = 0;
    for line in out.lines() {
        if line.contains("bytes from")
            && !line.contains("(DUP!)")
            && let Some(t) = line.split_whitespace().find_map(|w| w.strip_prefix("ttl="))
            && let Ok(t) = t.parse()
        {
            ttls.push(t);
            if let Some(from) = line
                .split_once("bytes from ")
                .and_then(|(_, r)| r.split(':').next())
            {
                reply_from.push(from.trim().to_string());
            }
        }
        if line.contains("packets transmitted") {
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            transmitted = nums.first().copied().unwrap_or(0);
            received = nums.get(1).copied().unwrap_or(0);
        }
    }
    PingResult {
        transmitted,
        received,
        ttls,
        reply_from,
        output: out.to_string(),
    }
}

/// Parses iputils `arping` output ("Unicast reply from 1.2.3.4 [AA:BB:..]  0.6ms").
pub fn parse_arping(out: &str) -> ArpingResult {
    let reply_macs = out
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let start = l.find('[')?;
            let end = l[start..].find(']')? + start;
            Some(l[start + 1..end].to_lowercase())
        })
        .collect();
    ArpingResult {
        reply_macs,
        output: out.to_string(),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so transfers do not compress or repeat.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A Python interpreter that can `import scapy.all`: `$DVR_PYTHON`, `/usr/bin/python3` (Debian's
/// python3-scapy) or `python3` from `$PATH`.
pub fn scapy_python() -> Result<String> {
    static PY: OnceLock<Option<String>> = OnceLock::new();
    let found = PY.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Ok(p) = std::env::var("DVR_PYTHON") {
            candidates.push(p);
        }
        candidates.push("/usr/bin/python3".to_string());
        candidates.push("python3".to_string());
        candidates.into_iter().find(|py| {
            run_with_deadline(py, &["-c", "import scapy.all"], Duration::from_secs(60))
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
    });
    found.clone().ok_or_else(|| {
        anyhow!("no python3 with scapy (tried $DVR_PYTHON, /usr/bin/python3, python3): install python3-scapy")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping() {
        let out = "PING 198.51.100.2 (198.51.100.2) 56(84) bytes of data.
64 bytes from 198.51.100.2: icmp_seq=1 ttl=63 time=1.26 ms
64 bytes from 198.51.100.2: icmp_seq=2 ttl=63 time=0.141 ms

--- 198.51.100.2 ping statistics ---
2 packets transmitted, 2 received, 0% packet loss, time 201ms
";
        let r = parse_ping(out);
        assert_eq!((r.transmitted, r.received), (2, 2));
        assert_eq!(r.ttls, vec![63, 63]);
        assert_eq!(r.reply_from, vec!["198.51.100.2", "198.51.100.2"]);
        assert!(r.all_answered());
        let lost = parse_ping("3 packets transmitted, 0 received, 100% packet loss, time 2040ms");
        assert_eq!((lost.transmitted, lost.received), (3, 0));
        assert!(!lost.all_answered());
    }

    #[test]
    fn parses_arping() {
        let out = "ARPING 192.168.1.1 from 192.168.1.10 eth0
Unicast reply from 192.168.1.1 [FA:16:3E:00:00:01]  0.612ms
Unicast reply from 192.168.1.1 [FA:16:3E:00:00:01]  0.100ms
Sent 2 probes (1 broadcast(s))
Received 2 response(s)";
        let r = parse_arping(out);
        assert_eq!(r.reply_macs, vec!["fa:16:3e:00:00:01", "fa:16:3e:00:00:01"]);
    }

    #[test]
    fn parses_socat_peer() {
        let log = "2025/01/01 10:00:00 socat[12] N listening on AF=2 0.0.0.0:5001\n\
                   2025/01/01 10:00:01 socat[12] N accepting connection from AF=2 198.51.100.10:40312 on AF=2 192.168.1.10:5001\n";
        assert_eq!(
            parse_socat_peer(log),
            Some(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 40312))
        );
        assert_eq!(parse_socat_peer("nothing"), None);
    }

    #[test]
    fn cidr_and_ids() -> Result<()> {
        let c = Cidr::parse("192.168.1.0/24")?;
        assert_eq!(c.host(1)?, Ipv4Addr::new(192, 168, 1, 1));
        assert!(c.contains(Ipv4Addr::new(192, 168, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 2, 1)));
        assert!(Cidr::parse("192.168.1.1/24").is_err());
        let a = new_id(KIND_PORT, 0);
        let b = new_id(KIND_PORT, 0);
        assert_eq!(a.len(), 36);
        assert_ne!(tap_name(&a), tap_name(&b));
        assert!(tap_name(&a).len() <= 15);
        assert_eq!(pseudo_random(1000, 7), pseudo_random(1000, 7));
        Ok(())
    }
}
