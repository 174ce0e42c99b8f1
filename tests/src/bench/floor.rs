//! The floor of each path: the eBPF cloud's own topology ([`super::ebpf::topology`]: the same
//! namespaces, taps, uplinks, bridges and external NICs) with no agent, and on each interface
//! a path enters, the `dvr-floor` program (`dvr-ebpf/src/floor.rs`): it sends every frame
//! out of one fixed interface, VXLAN-encapsulated as the datapath does it where the path
//! crosses the underlay (out of the underlay NIC, routed as from a `dvr-vx` collect_md device
//! made here as the agent makes it, forwarding on; received through that device). No lookup and no
//! rewrite: the endpoints are set up so that what one sends is what the other accepts as is
//! (static neighbours naming the far end's MAC; a floating IP or the router's address held by
//! the VM itself; the external NIC given the VM's MAC so the bridge delivers to it). So it is
//! the fastest any BPF datapath can be in this topology, the mark the eBPF datapath is held to
//! per path (`ebpf/floor`), where the veth pair is no fair mark for paths with three veth
//! hops and a bridge.
//!
//! One path at a time ([`Floor::prepare`]): the interfaces' programs differ per path.
//!
//! | path | program on (host: interface -> where) |
//! |---|---|
//! | east-west | c1: tap v1 -> encap (VNI b, to c2); c2: ul0 (decap), dvr-vx -> tap v2; and back |
//! | ext-to-fip, fip-to-ext | c1: ext0 -> tap v1; c1: tap v1 -> ext0 |
//! | snat | c1: tap v3 -> encap (VNI a, to s); s: ul0 (decap), dvr-vx -> ext0; and back |

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use serde_json::Value;

use super::{PathEnds, PathKind};
use crate::Cloud;
use crate::cloud::{UNDERLAY_DEV, VXLAN_DEV, link_ifindex};
use crate::cmd::{self, ip};
use crate::external::{EXT_BRIDGE, EXT_IFACE};

const PROGRAM: &str = "dvr_floor";

/// The floor's cloud and the programs attached for the current path.
pub struct Floor {
    /// Declared first so that it drops first: the programs are detached before the cloud's
    /// namespaces go.
    attached: Vec<Ebpf>,
    pub cloud: Cloud,
}

/// The MAC of `dev` in namespace `ns`.
fn mac(ns: &str, dev: &str) -> Result<String> {
    let out = cmd::run_ok("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link show")?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no MAC of {dev} in {ns}"))
}

/// What a floor program does besides sending every frame to one interface.
#[derive(Clone, Copy)]
enum Mode {
    Plain,
    /// VXLAN-encapsulate on network `vni` from tunnel address `local` to `remote`.
    Encap {
        vni: u32,
        local: Ipv4Addr,
        remote: Ipv4Addr,
    },
    /// On the underlay NIC: decapsulate what is for tunnel address `local` (the rest, GSO
    /// frames among it, goes on to the VXLAN device).
    Decap {
        local: Ipv4Addr,
    },
}

/// Loads one `dvr-floor` instance sending to `to` as `mode` says and attaches it to the TC
/// ingress of `iface`, in namespace `ns`.
fn attach(ns: &str, iface: &str, to: &str, mode: Mode) -> Result<Ebpf> {
    let target = u32::try_from(link_ifindex(ns, to)?)?;
    let (vni, local, remote, decap) = match mode {
        Mode::Plain => (0, 0, 0, 0),
        Mode::Encap { vni, local, remote } => (vni, u32::from(local), u32::from(remote), 0),
        Mode::Decap { local } => (0, 0, 0, u32::from(local)),
    };
    let iface = iface.to_string();
    super::netns::in_netns(ns, move || {
        let mut bpf = EbpfLoader::new()
            .override_global("FLOOR_IFINDEX", &target, true)
            .override_global("FLOOR_VNI", &vni, true)
            .override_global("FLOOR_REMOTE", &remote, true)
            .override_global("FLOOR_LOCAL", &local, true)
            .override_global("FLOOR_DECAP", &decap, true)
            .load(dvr_userspace::ebpf::FLOOR_OBJECT)
            .context("loading the dvr-floor object")?;
        let p: &mut SchedClassifier = bpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no {PROGRAM} in the dvr-floor object"))?
            .try_into()?;
        p.load()?;
        p.attach(&iface, TcAttachType::Ingress)
            .with_context(|| format!("attaching {PROGRAM} to {iface}"))?;
        Ok(bpf)
    })
    .join()
    .map_err(|_| anyhow!("the attach thread panicked"))?
}

/// The receiving end of the tunnel in namespace `ns` (tunnel address `local`), as the
/// datapath has it: decapsulated on the underlay NIC, GSO frames through the VXLAN device;
/// either way sent to `to`.
fn receive(ns: &str, local: Ipv4Addr, to: &str) -> Result<[Ebpf; 2]> {
    Ok([
        attach(ns, UNDERLAY_DEV, to, Mode::Decap { local })?,
        attach(ns, VXLAN_DEV, to, Mode::Plain)?,
    ])
}

/// Builds the eBPF cloud's namespaces with no agent, and a `dvr-vx` in each host.
pub fn build(xdp_veths: bool) -> Result<Floor> {
    let mut cloud = super::ebpf::topology(xdp_veths)
        .build_without_agents()
        .context("building the floor's cloud")?;
    cloud.dump_logs_on_drop = false;
    // The VXLAN device as the agent makes it, with forwarding on for its FIB lookups.
    for h in cloud.hosts() {
        super::netns::in_netns(&h.ns, || {
            dvr_userspace::attach::ensure_tunnel_dev()?;
            dvr_userspace::attach::enable_tunnel_forwarding()?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("the tunnel device thread panicked"))??;
    }
    Ok(Floor {
        attached: Vec::new(),
        cloud,
    })
}

impl Floor {
    /// The four paths, with the source each server sees here (no NAT: the VM holds the
    /// translated address itself).
    pub fn paths(&self) -> Result<Vec<PathEnds>> {
        super::ebpf::paths(&self.cloud)
    }

    /// Detaches whatever the previous path attached, then sets up `path`.
    pub fn prepare(&mut self, path: PathKind) -> Result<()> {
        self.attached.clear();
        let c = &self.cloud;
        let host_ns = |h: &str| -> Result<String> { Ok(c.host(h)?.ns.clone()) };
        let tunnel = |h: &str| -> Result<Ipv4Addr> { Ok(c.host(h)?.tunnel_ip) };
        let (c1, c2, s) = (host_ns("c1")?, host_ns("c2")?, host_ns("s")?);
        let ext = c.ext_ns()?;
        let upstream_mac = mac(&ext, EXT_BRIDGE)?;
        // A VM's gateway neighbour, made the MAC the frame must arrive with.
        let neigh = |vm: &str, mac: &str| -> Result<()> {
            let v = c.vm(vm)?;
            let gw = c.network(&v.network)?.gateway.to_string();
            ip(&[
                "-n",
                &v.ns,
                "neigh",
                "replace",
                &gw,
                "lladdr",
                mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
        };
        // A VM holding `addr` itself, and sending from it.
        let hold = |vm: &str, addr: Ipv4Addr| -> Result<()> {
            let v = c.vm(vm)?;
            let gw = c.network(&v.network)?.gateway.to_string();
            let a = addr.to_string();
            let _ = ip(&[
                "-n",
                &v.ns,
                "addr",
                "del",
                &format!("{a}/32"),
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                &v.ns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n", &v.ns, "route", "replace", "default", "via", &gw, "src", &a,
            ])
        };
        // The external namespace reaching `addr` at `vm`'s MAC, through host `h`'s ext0
        // (which takes that MAC, so the bridge delivers there).
        let outside = |addr: Ipv4Addr, vm: &str, h: &str| -> Result<()> {
            let m = c.vm(vm)?.mac.clone();
            ip(&["-n", h, "link", "set", EXT_IFACE, "address", &m])?;
            ip(&[
                "-n",
                &ext,
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &m,
                "dev",
                EXT_BRIDGE,
                "nud",
                "permanent",
            ])
        };
        let tap = |vm: &str| -> Result<String> { Ok(c.vm(vm)?.tap.clone()) };
        let encap = |vni, local, remote| Mode::Encap { vni, local, remote };
        let mut attached = Vec::new();
        match path {
            PathKind::EastWest => {
                for vm in ["v1", "v2"] {
                    let v = c.vm(vm)?;
                    let gw = c.network(&v.network)?.gateway.to_string();
                    ip(&["-n", &v.ns, "route", "replace", "default", "via", &gw])?;
                }
                let (v1, v2) = (c.vm("v1")?.mac.clone(), c.vm("v2")?.mac.clone());
                neigh("v1", &v2)?;
                neigh("v2", &v1)?;
                let (a, b) = (c.network("a")?.vni, c.network("b")?.vni);
                let (t1, t2) = (tunnel("c1")?, tunnel("c2")?);
                attached.push(attach(&c1, &tap("v1")?, VXLAN_DEV, encap(b, t1, t2))?);
                attached.extend(receive(&c2, t2, &tap("v2")?)?);
                attached.push(attach(&c2, &tap("v2")?, VXLAN_DEV, encap(a, t2, t1))?);
                attached.extend(receive(&c1, t1, &tap("v1")?)?);
            }
            PathKind::ExtToFip | PathKind::FipToExt => {
                let fip = c.fip_ip("f1")?;
                hold("v1", fip)?;
                neigh("v1", &upstream_mac)?;
                outside(fip, "v1", &c1)?;
                attached.push(attach(&c1, EXT_IFACE, &tap("v1")?, Mode::Plain)?);
                attached.push(attach(&c1, &tap("v1")?, EXT_IFACE, Mode::Plain)?);
            }
            PathKind::Snat => {
                let r = c.router_external_ip("r1")?;
                hold("v3", r)?;
                neigh("v3", &upstream_mac)?;
                outside(r, "v3", &s)?;
                let a = c.network("a")?.vni;
                let (t1, ts) = (tunnel("c1")?, tunnel("s")?);
                attached.push(attach(&c1, &tap("v3")?, VXLAN_DEV, encap(a, t1, ts))?);
                attached.extend(receive(&s, ts, EXT_IFACE)?);
                attached.push(attach(&s, EXT_IFACE, VXLAN_DEV, encap(a, ts, t1))?);
                attached.extend(receive(&c1, t1, &tap("v3")?)?);
            }
            PathKind::VethPair => {}
        }
        self.attached = attached;
        Ok(())
    }
}
