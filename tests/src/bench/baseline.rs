//! The namespace datapath as Neutron DVR builds it: the baseline of the benchmarks.
//!
//! The same cloud as [`super::ebpf`] (same addresses, same paths), with no agent and no BPF.
//! Everything Neutron's L3 agent (DVR mode) and an L2 agent with l2population would program
//! is programmed here directly, with `ip`, `bridge`, `iptables-restore` and `ebtables`:
//!
//! ```text
//!  compute hosts c1, c2 (dvr)                 SNAT host s (dvr_snat)
//!  taps, qrp-a/qrp-b on brq-a/brq-b           sgp-a/sgp-b on brq-a/brq-b
//!  brq-* -- vx-<vni> -- ul0 ==== underlay br0 ==== ul0 -- vx-<vni> -- brq-*
//!  netns qrouter-r1: qr-a, qr-b, rfp-r1       netns snat-r1: sg-a, sg-b, qg-r1
//!  netns fip-ext:    fpr-r1, fg-<host>        qgp (qg-r1) -- br-ex -- ext0 ==+
//!  fgp (fg-<host>) -- br-ex -- ext0 =============== br-ext: 10.5.0.1 (upstream router),
//!                                                   198.51.100.10 (internet host)
//! ```
//!
//! - **Tenant L2** (what the Linux bridge agent with l2population builds): per host and
//!   network a bridge `brq-<net>` with the VMs' taps and a VXLAN device `vx-<vni>` (VNI, local
//!   tunnel address, port 4789, `nolearning`, bridge-port learning off), head-end replication
//!   entries for the other hosts (`00:00:00:00:00:00 dst <peer>`) and a static entry per
//!   remote port MAC, in the bridge and in the VXLAN device.
//! - **DVR MAC handling** (what Neutron's OVS flows on `br-tun`/`br-int` do), as ebtables
//!   rules: a routed frame leaving for the tunnel gets the host's DVR MAC as source instead
//!   of the gateway MAC (`nat POSTROUTING -o vx-* -s <gw mac> -j snat`); a frame arriving with
//!   a peer's DVR MAC gets the gateway MAC back (per local port, `-o <tap> -s <peer dvr mac>
//!   -j snat`); frames to a gateway MAC and ARP for a gateway IP are dropped on the tunnel
//!   port.
//! - **`qrouter-r1`** on each compute host: `qr-a`/`qr-b` with the gateway IPs and gateway MACs
//!   (identical on every host), permanent ARP entries for every port of the router's subnets
//!   (as the DVR agent adds them), ICMP redirects off, and for non-FIP traffic one policy
//!   rule per subnet (`from <subnet> lookup <int(gw)> priority <int(gw)>`, default route via
//!   the subnet's `sg-` address). For each FIP: the FIP on `rfp-r1`, `from <fixed> lookup 16
//!   priority 32768+i`, and in iptables `nat` (Neutron's chains) a DNAT rule (`-d FIP -i
//!   rfp-r1`) and a `float-snat` SNAT rule (`--random-fully`), plus the rule that keeps
//!   east-west traffic un-NATed (`! -i rfp ! -o rfp -m conntrack ! --ctstate DNAT -j ACCEPT`).
//! - **`fip-<ext>`** on each compute host: `fpr-r1` (the other end of `rfp-r1`,
//!   169.254.106.114/31 <-> .115), `fg-<host>` with the host's floatingip_agent_gateway
//!   address and `proxy_arp`, a default route to the upstream router and a `/32` route per
//!   FIP via `rfp-r1`. `fg-` is bridged to the host's `ext0` by `br-ex` (Neutron's `br-ex`).
//! - **`snat-r1`** on the SNAT host: `sg-a`/`sg-b` (the centralized SNAT ports) on the tenant
//!   bridges, `qg-r1` with the router's gateway address on `br-ex`, the default route, and
//!   Neutron's `nat` and `mangle` rules (`-o qg-r1 -j SNAT --to-source <gw> --random-fully`).
//!
//! Left out, as they cost per packet in Neutron but are not part of routing: security groups
//! (iptables or OVS firewall on the taps; the eBPF path does check port security), the
//! `filter` table's address-scope rules, and `bridge-nf-call-iptables` (off here). So the
//! baseline is, if anything, faster than a real Neutron node. The security group part of
//! the benchmarks ([`super::sg_datapath`]) adds Neutron's iptables firewall for one port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use super::netns::NsSet;
use super::{PathEnds, PathKind};
use crate::cloud::{Cidr, UNDERLAY_DEV};
use crate::cmd::{exec_ok, exec_with_deadline, ip, run_with_deadline, text};
use crate::external::{EXT_GATEWAY, INTERNET_HOST};

/// The router of the cloud (one, as in the eBPF cloud).
pub const ROUTER: &str = "r1";
/// `rfp-<router>` and `fpr-<router>` (Neutron: the first 11 characters of the router id).
pub const RFP: &str = "rfp-r1";
pub const FPR: &str = "fpr-r1";
/// The /31 link between `qrouter` and `fip` (Neutron allocates it from 169.254.64.0/18).
pub const RFP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 106, 114);
pub const FPR_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 106, 115);
/// Neutron's FIP routing table in `qrouter`.
pub const FIP_TABLE: u32 = 16;
/// First priority of the `from <fixed ip> lookup 16` rules (Neutron's FIP_PR_START).
pub const FIP_RULE_PRIORITY: u32 = 32768;
/// `qg-<router>` in `snat-<router>`.
pub const QG: &str = "qg-r1";
/// The router's external gateway address (as the test bed gives its first router).
pub const ROUTER_EXT_IP: Ipv4Addr = Ipv4Addr::new(10, 5, 3, 1);
/// The external subnet and its MTU, as in the test bed.
pub const EXT_CIDR: &str = "10.5.0.0/16";
pub const TENANT_MTU: &str = "1450";
/// How long one `iptables-restore` or `ip -batch` may take (50,000 rules are slow).
pub const BATCH_DEADLINE: Duration = Duration::from_secs(600);

/// What a host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `dvr`: `qrouter` and `fip` namespaces, VMs.
    Compute,
    /// `dvr_snat`: the `snat` namespace (no VMs here).
    Snat,
}

#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub role: Role,
    pub tunnel_ip: Ipv4Addr,
    pub dvr_mac: String,
    /// The floatingip_agent_gateway address (`fg-`), compute hosts.
    pub fg_ip: Ipv4Addr,
    pub fg_mac: String,
}

#[derive(Clone, Debug)]
pub struct NetSpec {
    pub name: String,
    pub vni: u32,
    pub cidr: Cidr,
    pub gateway: Ipv4Addr,
    pub gw_mac: String,
    /// The router's centralized SNAT port on this subnet (`sg-`).
    pub csnat_ip: Ipv4Addr,
    pub csnat_mac: String,
}

#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    pub net: String,
    pub host: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub fip: Option<Ipv4Addr>,
}

/// The whole cloud to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub hosts: Vec<HostSpec>,
    pub nets: Vec<NetSpec>,
    pub vms: Vec<VmSpec>,
    /// A FIP kept free for the change-latency measurement (associated with `spare_vm`).
    pub spare_fip: Ipv4Addr,
    pub spare_vm: String,
}

impl Spec {
    /// The benchmark cloud, with the addresses the test bed gives the eBPF cloud.
    pub fn bench() -> Result<Spec> {
        let host = |i: u8, name: &str, role| HostSpec {
            name: name.into(),
            role,
            tunnel_ip: Ipv4Addr::new(192, 0, 2, 11 + i),
            dvr_mac: format!("fa:16:3f:00:00:{:02x}", i + 1),
            fg_ip: Ipv4Addr::new(10, 5, 1, 11 + i),
            fg_mac: format!("fa:16:3e:fe:00:{:02x}", i + 1),
        };
        let net = |name: &str, vni: u32, third: u8| -> Result<NetSpec> {
            let cidr = Cidr::parse(&format!("192.168.{third}.0/24"))?;
            Ok(NetSpec {
                name: name.into(),
                vni,
                cidr,
                gateway: cidr.host(1)?,
                gw_mac: format!("fa:16:3e:{third:02x}:00:01"),
                csnat_ip: cidr.host(2)?,
                csnat_mac: format!("fa:16:3e:{third:02x}:00:02"),
            })
        };
        let vm = |name: &str, net: &str, host: &str, ip: [u8; 4], fip: Option<u8>| VmSpec {
            name: name.into(),
            net: net.into(),
            host: host.into(),
            ip: Ipv4Addr::from(ip),
            mac: format!("fa:16:3e:{:02x}:01:{:02x}", ip[2], ip[3]),
            fip: fip.map(|n| Ipv4Addr::new(10, 5, 2, n)),
        };
        Ok(Spec {
            hosts: vec![
                host(0, "c1", Role::Compute),
                host(1, "c2", Role::Compute),
                host(2, "s", Role::Snat),
            ],
            nets: vec![net("a", 101, 1)?, net("b", 102, 2)?],
            vms: vec![
                vm("v1", "a", "c1", [192, 168, 1, 10], Some(1)),
                vm("v2", "b", "c2", [192, 168, 2, 10], Some(2)),
                vm("v3", "a", "c1", [192, 168, 1, 11], None),
            ],
            spare_fip: Ipv4Addr::new(10, 5, 2, 3),
            spare_vm: "v3".into(),
        })
    }
}

/// Namespaces of one host.
#[derive(Clone, Debug)]
pub struct HostNs {
    pub spec: HostSpec,
    /// The host itself (bridges, VXLAN devices, taps, `ext0`).
    pub ns: String,
    /// `qrouter-r1` and `fip-<ext>` (compute hosts).
    pub qrouter: Option<String>,
    pub fip: Option<String>,
    /// `snat-r1` (the SNAT host).
    pub snat: Option<String>,
}

/// The running baseline cloud. Dropping it deletes every namespace (and with them every
/// link, rule, route and iptables/ebtables table) and its temp dir.
pub struct NeutronDvr {
    pub spec: Spec,
    pub underlay: String,
    pub ext: String,
    pub hosts: Vec<HostNs>,
    /// VM name -> namespace.
    pub vm_ns: BTreeMap<String, String>,
    /// Fixed IP -> FIP currently associated, per compute host (what its qrouter serves).
    fips: BTreeMap<String, Vec<(Ipv4Addr, Ipv4Addr)>>,
    dir: PathBuf,
    // Last: dropped after everything that may still run in the namespaces.
    ns: NsSet,
}

impl Drop for NeutronDvr {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub const ROUTER_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    // Neutron turns redirects off in router namespaces: SNAT traffic leaves qr- the way it
    // came in.
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
];

fn ipn(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

fn sh(ns: &str, args: &[&str]) -> Result<()> {
    exec_ok(ns, args).map(|_| ())
}

/// `int(ip)`: Neutron's table number and rule priority of a subnet's SNAT rule.
fn ip_u32(ip: Ipv4Addr) -> String {
    u32::from(ip).to_string()
}

/// The `nat` chains of `qrouter-r1` as Neutron's DVR agent writes them for `fips`
/// ((fixed, floating) pairs), in `iptables-restore` syntax. With `builtins`, the complete
/// table including the jumps from the built-in chains (first load, without `-n`); without,
/// only Neutron's own chains, which `iptables-restore -n` flushes and refills (the update
/// Neutron's IptablesManager applies).
pub fn qrouter_nat(fips: &[(Ipv4Addr, Ipv4Addr)], builtins: bool) -> String {
    let mut s = String::from("*nat\n");
    if builtins {
        s.push_str(
            ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n",
        );
    }
    for chain in [
        "neutron-l3-agent-OUTPUT",
        "neutron-l3-agent-POSTROUTING",
        "neutron-l3-agent-PREROUTING",
        "neutron-l3-agent-float-snat",
        "neutron-l3-agent-snat",
        "neutron-postrouting-bottom",
    ] {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    if builtins {
        s.push_str(
            "-A PREROUTING -j neutron-l3-agent-PREROUTING\n\
             -A OUTPUT -j neutron-l3-agent-OUTPUT\n\
             -A POSTROUTING -j neutron-l3-agent-POSTROUTING\n\
             -A POSTROUTING -j neutron-postrouting-bottom\n",
        );
    }
    let _ = writeln!(
        s,
        "-A neutron-l3-agent-POSTROUTING ! -i {RFP} ! -o {RFP} -m conntrack ! --ctstate DNAT -j ACCEPT"
    );
    for (fixed, fip) in fips {
        let _ = writeln!(
            s,
            "-A neutron-l3-agent-PREROUTING -d {fip}/32 -i {RFP} -j DNAT --to-destination {fixed}"
        );
    }
    for (fixed, fip) in fips {
        let _ = writeln!(
            s,
            "-A neutron-l3-agent-float-snat -s {fixed}/32 -j SNAT --to-source {fip} --random-fully"
        );
    }
    s.push_str(
        "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat\n\
         -A neutron-postrouting-bottom -m comment --comment \"Perform source NAT on outgoing traffic.\" -j neutron-l3-agent-snat\n\
         COMMIT\n",
    );
    s
}

/// The `nat` and `mangle` tables of `snat-r1` as Neutron writes them.
pub fn snat_tables(gw_ip: Ipv4Addr) -> String {
    format!(
        "*mangle\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :neutron-l3-agent-PREROUTING - [0:0]\n:neutron-l3-agent-mark - [0:0]\n\
         -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
         -A neutron-l3-agent-PREROUTING -j neutron-l3-agent-mark\n\
         -A neutron-l3-agent-mark -i {QG} -j MARK --set-xmark 0x2/0xffff\n\
         COMMIT\n\
         *nat\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n\
         :neutron-l3-agent-POSTROUTING - [0:0]\n:neutron-l3-agent-snat - [0:0]\n\
         :neutron-postrouting-bottom - [0:0]\n\
         -A POSTROUTING -j neutron-l3-agent-POSTROUTING\n\
         -A POSTROUTING -j neutron-postrouting-bottom\n\
         -A neutron-l3-agent-POSTROUTING ! -i {QG} ! -o {QG} -m conntrack ! --ctstate DNAT -j ACCEPT\n\
         -A neutron-l3-agent-snat -o {QG} -j SNAT --to-source {gw_ip} --random-fully\n\
         -A neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source {gw_ip} --random-fully\n\
         -A neutron-postrouting-bottom -m comment --comment \"Perform source NAT on outgoing traffic.\" -j neutron-l3-agent-snat\n\
         COMMIT\n"
    )
}

/// `iptables-restore [-n] FILE` in `ns`.
pub fn iptables_restore(ns: &str, file: &Path, noflush: bool) -> Result<()> {
    let f = file.to_string_lossy();
    let mut args = vec!["iptables-restore"];
    if noflush {
        args.push("-n");
    }
    args.push(&f);
    let out = exec_with_deadline(ns, &args, BATCH_DEADLINE)?;
    ensure!(
        out.status.success(),
        "iptables-restore {} in {ns} failed ({}): {}",
        file.display(),
        out.status,
        text(&out).trim()
    );
    Ok(())
}

/// `ip -n NS -batch FILE`.
pub fn ip_batch(ns: &str, file: &Path) -> Result<()> {
    let f = file.to_string_lossy();
    let out = run_with_deadline("ip", &["-n", ns, "-batch", &f], BATCH_DEADLINE)?;
    ensure!(
        out.status.success(),
        "ip -n {ns} -batch {} failed ({}): {}",
        file.display(),
        out.status,
        text(&out).trim()
    );
    Ok(())
}

impl NeutronDvr {
    /// Builds the cloud of `spec`.
    pub fn build(spec: Spec) -> Result<NeutronDvr> {
        let dir = std::env::temp_dir().join(format!("dvrb-{}-baseline", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ns = NsSet::new();
        // Created first (and so deleted last): the shared segments.
        let underlay = ns.add("nul", &[])?;
        ipn(
            &underlay,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        ipn(&underlay, &["link", "set", "br0", "up"])?;
        let ext = ns.add(
            "next",
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        ipn(
            &ext,
            &[
                "link",
                "add",
                "br-ext",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        ipn(
            &ext,
            &["addr", "add", &format!("{EXT_GATEWAY}/16"), "dev", "br-ext"],
        )?;
        ipn(&ext, &["link", "set", "br-ext", "up"])?;
        ipn(
            &ext,
            &["addr", "add", &format!("{INTERNET_HOST}/32"), "dev", "lo"],
        )?;
        let mut cloud = NeutronDvr {
            spec,
            underlay,
            ext,
            hosts: Vec::new(),
            vm_ns: BTreeMap::new(),
            fips: BTreeMap::new(),
            dir,
            ns,
        };
        // On error, `cloud` drops here and removes what exists.
        cloud.create()?;
        Ok(cloud)
    }

    fn create(&mut self) -> Result<()> {
        let hosts = self.spec.hosts.clone();
        for (i, h) in hosts.iter().enumerate() {
            self.create_host(i, h)?;
        }
        for h in &hosts {
            self.create_tenant_l2(h)?;
            match h.role {
                Role::Compute => {
                    self.create_qrouter(h)?;
                    self.create_fip_ns(h)?;
                }
                Role::Snat => self.create_snat(h)?,
            }
        }
        let vms = self.spec.vms.clone();
        for v in &vms {
            self.create_vm(v)?;
        }
        for h in &hosts {
            self.l2population(h)?;
            self.dvr_mac_rules(h)?;
        }
        for h in hosts.iter().filter(|h| h.role == Role::Compute) {
            let fips: Vec<(Ipv4Addr, Ipv4Addr)> = vms
                .iter()
                .filter(|v| v.host == h.name)
                .filter_map(|v| Some((v.ip, v.fip?)))
                .collect();
            self.program_fips(&h.name, &fips)?;
        }
        Ok(())
    }

    fn host(&self, name: &str) -> Result<&HostNs> {
        self.hosts
            .iter()
            .find(|h| h.spec.name == name)
            .ok_or_else(|| anyhow!("no host {name}"))
    }

    fn net(&self, name: &str) -> Result<&NetSpec> {
        self.spec
            .nets
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no network {name}"))
    }

    /// The namespace, the underlay link and the external NIC (on `br-ex`).
    fn create_host(&mut self, i: usize, h: &HostSpec) -> Result<()> {
        let ns = self.ns.add(&format!("n{}", h.name), &[])?;
        // No security groups in the baseline, so bridged frames skip iptables (Neutron's
        // Linux bridge agent turns this on for its firewall). Not every kernel has the knob.
        let _ = exec_ok(
            &ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        );
        let uplink = format!("uh{i}");
        ipn(
            &ns,
            &[
                "link",
                "add",
                UNDERLAY_DEV,
                "type",
                "veth",
                "peer",
                "name",
                &uplink,
                "netns",
                &self.underlay,
            ],
        )?;
        ipn(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", h.tunnel_ip),
                "dev",
                UNDERLAY_DEV,
            ],
        )?;
        ipn(&ns, &["link", "set", UNDERLAY_DEV, "up"])?;
        ipn(
            &self.underlay,
            &["link", "set", &uplink, "master", "br0", "up"],
        )?;
        let xport = format!("xh{i}");
        ipn(
            &ns,
            &[
                "link", "add", "ext0", "type", "veth", "peer", "name", &xport, "netns", &self.ext,
            ],
        )?;
        ipn(
            &self.ext,
            &["link", "set", &xport, "master", "br-ext", "up"],
        )?;
        ipn(
            &ns,
            &[
                "link",
                "add",
                "br-ex",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        ipn(&ns, &["link", "set", "ext0", "master", "br-ex", "up"])?;
        ipn(&ns, &["link", "set", "br-ex", "up"])?;
        self.hosts.push(HostNs {
            spec: h.clone(),
            ns,
            qrouter: None,
            fip: None,
            snat: None,
        });
        Ok(())
    }

    /// `brq-<net>` and `vx-<vni>` for every network of the router.
    fn create_tenant_l2(&mut self, h: &HostSpec) -> Result<()> {
        let ns = self.host(&h.name)?.ns.clone();
        for n in &self.spec.nets {
            let br = format!("brq-{}", n.name);
            let vx = format!("vx-{}", n.vni);
            ipn(
                &ns,
                &["link", "add", &br, "type", "bridge", "mcast_snooping", "0"],
            )?;
            ipn(&ns, &["link", "set", &br, "up"])?;
            ipn(
                &ns,
                &[
                    "link",
                    "add",
                    &vx,
                    "type",
                    "vxlan",
                    "id",
                    &n.vni.to_string(),
                    "local",
                    &h.tunnel_ip.to_string(),
                    "dev",
                    UNDERLAY_DEV,
                    "dstport",
                    &dvr_common::config::VXLAN_PORT.to_string(),
                    "nolearning",
                ],
            )?;
            ipn(
                &ns,
                &["link", "set", &vx, "mtu", TENANT_MTU, "master", &br, "up"],
            )?;
            sh(
                &ns,
                &["bridge", "link", "set", "dev", &vx, "learning", "off"],
            )?;
        }
        Ok(())
    }

    /// A veth with `inner` (address, MAC) in namespace `inner_ns` and `outer` on bridge `br`
    /// of the host, with a static bridge entry for the MAC.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per Neutron device kind"
    )]
    fn plug(
        &self,
        host_ns: &str,
        br: &str,
        outer: &str,
        inner_ns: &str,
        inner: &str,
        mac: &str,
        addr: &str,
        mtu: &str,
    ) -> Result<()> {
        ipn(
            host_ns,
            &[
                "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", inner_ns,
            ],
        )?;
        ipn(
            inner_ns,
            &["link", "set", inner, "address", mac, "mtu", mtu],
        )?;
        ipn(inner_ns, &["addr", "add", addr, "dev", inner])?;
        ipn(inner_ns, &["link", "set", inner, "up"])?;
        ipn(
            host_ns,
            &["link", "set", outer, "mtu", mtu, "master", br, "up"],
        )?;
        sh(
            host_ns,
            &[
                "bridge", "fdb", "replace", mac, "dev", outer, "master", "static",
            ],
        )?;
        Ok(())
    }

    /// Every port (VM or `sg-`) on `net`, as (ip, mac, host).
    fn ports_on(&self, net: &NetSpec) -> Vec<(Ipv4Addr, String, String)> {
        let mut v: Vec<(Ipv4Addr, String, String)> = self
            .spec
            .vms
            .iter()
            .filter(|vm| vm.net == net.name)
            .map(|vm| (vm.ip, vm.mac.clone(), vm.host.clone()))
            .collect();
        if let Some(s) = self.spec.hosts.iter().find(|h| h.role == Role::Snat) {
            v.push((net.csnat_ip, net.csnat_mac.clone(), s.name.clone()));
        }
        v
    }

    fn create_qrouter(&mut self, h: &HostSpec) -> Result<()> {
        let host_ns = self.host(&h.name)?.ns.clone();
        let qr = self
            .ns
            .add(&format!("{}-qrouter", h.name), ROUTER_SYSCTLS)?;
        let mut batch = String::new();
        for n in &self.spec.nets {
            let dev = format!("qr-{}", n.name);
            self.plug(
                &host_ns,
                &format!("brq-{}", n.name),
                &format!("qrp-{}", n.name),
                &qr,
                &dev,
                &n.gw_mac,
                &format!("{}/{}", n.gateway, n.cidr.prefix),
                TENANT_MTU,
            )?;
            // Non-FIP traffic of the subnet goes to its SNAT port.
            let t = ip_u32(n.gateway);
            let _ = writeln!(batch, "rule add from {} table {t} priority {t}", n.cidr);
            let _ = writeln!(
                batch,
                "route add default via {} dev {dev} table {t}",
                n.csnat_ip
            );
            for (ip, mac, _) in self.ports_on(n) {
                let _ = writeln!(
                    batch,
                    "neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
                );
            }
        }
        let file = self.dir.join(format!("{}-qrouter.batch", h.name));
        fs::write(&file, batch)?;
        ip_batch(&qr, &file)?;
        let nat = self.dir.join(format!("{}-qrouter.nat", h.name));
        fs::write(&nat, qrouter_nat(&[], true))?;
        iptables_restore(&qr, &nat, false)?;
        if let Some(hn) = self.hosts.iter_mut().find(|x| x.spec.name == h.name) {
            hn.qrouter = Some(qr);
        }
        Ok(())
    }

    fn create_fip_ns(&mut self, h: &HostSpec) -> Result<()> {
        let hn = self.host(&h.name)?.clone();
        let qr = hn
            .qrouter
            .clone()
            .ok_or_else(|| anyhow!("{}: no qrouter", h.name))?;
        let fip = self.ns.add(&format!("{}-fip", h.name), ROUTER_SYSCTLS)?;
        ipn(
            &qr,
            &[
                "link", "add", RFP, "type", "veth", "peer", "name", FPR, "netns", &fip,
            ],
        )?;
        ipn(&qr, &["addr", "add", &format!("{RFP_IP}/31"), "dev", RFP])?;
        ipn(&qr, &["link", "set", RFP, "up"])?;
        ipn(&fip, &["addr", "add", &format!("{FPR_IP}/31"), "dev", FPR])?;
        ipn(&fip, &["link", "set", FPR, "up"])?;
        ipn(
            &qr,
            &[
                "route",
                "add",
                "default",
                "via",
                &FPR_IP.to_string(),
                "dev",
                RFP,
                "table",
                &FIP_TABLE.to_string(),
            ],
        )?;
        let fg = format!("fg-{}", h.name);
        let prefix = Cidr::parse(EXT_CIDR)?.prefix;
        self.plug(
            &hn.ns,
            "br-ex",
            "fgp",
            &fip,
            &fg,
            &h.fg_mac,
            &format!("{}/{prefix}", h.fg_ip),
            "1500",
        )?;
        sh(
            &fip,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{fg}.proxy_arp=1"),
            ],
        )?;
        ipn(
            &fip,
            &[
                "route",
                "add",
                "default",
                "via",
                &EXT_GATEWAY.to_string(),
                "dev",
                &fg,
            ],
        )?;
        if let Some(x) = self.hosts.iter_mut().find(|x| x.spec.name == h.name) {
            x.fip = Some(fip);
        }
        Ok(())
    }

    fn create_snat(&mut self, h: &HostSpec) -> Result<()> {
        let host_ns = self.host(&h.name)?.ns.clone();
        let sn = self.ns.add(&format!("{}-snat", h.name), ROUTER_SYSCTLS)?;
        let mut batch = String::new();
        for n in &self.spec.nets {
            let dev = format!("sg-{}", n.name);
            self.plug(
                &host_ns,
                &format!("brq-{}", n.name),
                &format!("sgp-{}", n.name),
                &sn,
                &dev,
                &n.csnat_mac,
                &format!("{}/{}", n.csnat_ip, n.cidr.prefix),
                TENANT_MTU,
            )?;
            for (ip, mac, _) in self.ports_on(n) {
                if ip != n.csnat_ip {
                    let _ = writeln!(
                        batch,
                        "neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
                    );
                }
            }
        }
        let prefix = Cidr::parse(EXT_CIDR)?.prefix;
        self.plug(
            &host_ns,
            "br-ex",
            "qgp",
            &sn,
            QG,
            "fa:16:3e:fd:00:01",
            &format!("{ROUTER_EXT_IP}/{prefix}"),
            "1500",
        )?;
        let _ = writeln!(batch, "route add default via {EXT_GATEWAY} dev {QG}");
        let file = self.dir.join("snat.batch");
        fs::write(&file, batch)?;
        ip_batch(&sn, &file)?;
        let tables = self.dir.join("snat.iptables");
        fs::write(&tables, snat_tables(ROUTER_EXT_IP))?;
        iptables_restore(&sn, &tables, false)?;
        if let Some(x) = self.hosts.iter_mut().find(|x| x.spec.name == h.name) {
            x.snat = Some(sn);
        }
        Ok(())
    }

    fn create_vm(&mut self, v: &VmSpec) -> Result<()> {
        let host_ns = self.host(&v.host)?.ns.clone();
        let net = self.net(&v.net)?.clone();
        let vm = self.ns.add(&v.name, &[])?;
        let tap = format!("tap{}", v.name);
        self.plug(
            &host_ns,
            &format!("brq-{}", v.net),
            &tap,
            &vm,
            "eth0",
            &v.mac,
            &format!("{}/{}", v.ip, net.cidr.prefix),
            TENANT_MTU,
        )?;
        ipn(
            &vm,
            &["route", "add", "default", "via", &net.gateway.to_string()],
        )?;
        self.vm_ns.insert(v.name.clone(), vm);
        Ok(())
    }

    /// What l2population programs: flooding to every other host and a static location per
    /// remote port MAC, in the bridge (so frames are not flooded) and in the VXLAN device.
    fn l2population(&self, h: &HostSpec) -> Result<()> {
        let ns = self.host(&h.name)?.ns.clone();
        let mut batch = String::new();
        for n in &self.spec.nets {
            let vx = format!("vx-{}", n.vni);
            for peer in self.spec.hosts.iter().filter(|p| p.name != h.name) {
                let _ = writeln!(
                    batch,
                    "fdb append 00:00:00:00:00:00 dev {vx} dst {}",
                    peer.tunnel_ip
                );
            }
            for (_, mac, host) in self.ports_on(n) {
                if host == h.name {
                    continue;
                }
                let peer = self
                    .spec
                    .hosts
                    .iter()
                    .find(|p| p.name == host)
                    .ok_or_else(|| anyhow!("no host {host}"))?;
                let _ = writeln!(batch, "fdb replace {mac} dev {vx} master static");
                let _ = writeln!(
                    batch,
                    "fdb replace {mac} dev {vx} dst {} self permanent",
                    peer.tunnel_ip
                );
            }
        }
        let file = self.dir.join(format!("{}-l2pop.batch", h.name));
        fs::write(&file, batch)?;
        let f = file.to_string_lossy();
        sh(&ns, &["bridge", "-batch", &f])
    }

    /// The bridge ports of `h` on `n` that lead to a VM or an `sg-` port.
    fn local_bridge_ports(&self, h: &HostSpec, n: &NetSpec) -> Vec<String> {
        let mut v: Vec<String> = self
            .spec
            .vms
            .iter()
            .filter(|vm| vm.host == h.name && vm.net == n.name)
            .map(|vm| format!("tap{}", vm.name))
            .collect();
        if h.role == Role::Snat {
            v.push(format!("sgp-{}", n.name));
        }
        v
    }

    /// The DVR MAC handling of Neutron's OVS flows, as ebtables rules (see the module docs).
    fn dvr_mac_rules(&self, h: &HostSpec) -> Result<()> {
        let ns = self.host(&h.name)?.ns.clone();
        let mut rules: Vec<String> = Vec::new();
        for n in &self.spec.nets {
            let (vx, gw, gw_mac) = (format!("vx-{}", n.vni), n.gateway, &n.gw_mac);
            if h.role == Role::Compute {
                rules.push(format!(
                    "-t nat -A POSTROUTING -o {vx} -s {gw_mac} -j snat --to-src {} --snat-target ACCEPT",
                    h.dvr_mac
                ));
            }
            // Per local port, as Neutron's DVR_TO_SRC_MAC flows are (`--logical-out` would
            // need nft bridge meta support, which not every kernel has).
            for port in self.local_bridge_ports(h, n) {
                for peer in self
                    .spec
                    .hosts
                    .iter()
                    .filter(|p| p.name != h.name && p.role == Role::Compute)
                {
                    rules.push(format!(
                        "-t nat -A POSTROUTING -o {port} -s {} -j snat --to-src {gw_mac} --snat-target ACCEPT",
                        peer.dvr_mac
                    ));
                }
            }
            rules.push(format!("-A FORWARD -i {vx} -d {gw_mac} -j DROP"));
            for dir in ["-i", "-o"] {
                rules.push(format!(
                    "-A FORWARD {dir} {vx} -p ARP --arp-ip-dst {gw} -j DROP"
                ));
            }
        }
        for r in rules {
            let mut args = vec!["ebtables"];
            args.extend(r.split_whitespace());
            sh(&ns, &args)?;
        }
        Ok(())
    }

    /// Programs the FIPs `fips` ((fixed, floating) pairs) of compute host `host` from
    /// scratch: qrouter addresses and rules, the iptables chains, the fip namespace routes.
    fn program_fips(&mut self, host: &str, fips: &[(Ipv4Addr, Ipv4Addr)]) -> Result<()> {
        for &(fixed, fip) in fips {
            self.fip_change(host, fixed, fip, true)?;
        }
        Ok(())
    }

    /// One FIP change as Neutron's DVR agent applies it on `host`: the rewritten iptables
    /// chains (`iptables-restore -n`), then in `qrouter` the FIP on `rfp-r1` and the
    /// `from <fixed> lookup 16` rule (one `ip -batch`), then the `/32` route in the `fip`
    /// namespace. Returns how long the commands took: with them done, the datapath is ready.
    pub fn fip_change(
        &mut self,
        host: &str,
        fixed: Ipv4Addr,
        fip: Ipv4Addr,
        add: bool,
    ) -> Result<Duration> {
        let hn = self.host(host)?.clone();
        let qr = hn.qrouter.ok_or_else(|| anyhow!("{host}: no qrouter"))?;
        let fipns = hn.fip.ok_or_else(|| anyhow!("{host}: no fip namespace"))?;
        let current = self.fips.entry(host.to_string()).or_default();
        let priority = if add {
            ensure!(
                !current.iter().any(|(_, f)| *f == fip),
                "{fip} already on {host}"
            );
            current.push((fixed, fip));
            FIP_RULE_PRIORITY + u32::try_from(current.len() - 1)?
        } else {
            let i = current
                .iter()
                .position(|(_, f)| *f == fip)
                .ok_or_else(|| anyhow!("{fip} not on {host}"))?;
            current.remove(i);
            0
        };
        let nat = qrouter_nat(current, false);
        let verb = if add { "add" } else { "del" };
        let mut qr_batch = format!("addr {verb} {fip}/32 dev {RFP}\n");
        if add {
            let _ = writeln!(
                qr_batch,
                "rule add from {fixed} table {FIP_TABLE} priority {priority}"
            );
        } else {
            let _ = writeln!(qr_batch, "rule del from {fixed} table {FIP_TABLE}");
        }
        let fip_batch = format!("route {verb} {fip}/32 via {RFP_IP} dev {FPR}\n");
        let (nat_f, qr_f, fip_f) = (
            self.dir.join(format!("{host}-fip.nat")),
            self.dir.join(format!("{host}-fip-qr.batch")),
            self.dir.join(format!("{host}-fip-fip.batch")),
        );
        fs::write(&nat_f, nat)?;
        fs::write(&qr_f, qr_batch)?;
        fs::write(&fip_f, fip_batch)?;
        let start = Instant::now();
        iptables_restore(&qr, &nat_f, true)?;
        ip_batch(&qr, &qr_f)?;
        ip_batch(&fipns, &fip_f)?;
        Ok(start.elapsed())
    }

    /// The four paths in this cloud.
    pub fn paths(&self) -> Result<Vec<PathEnds>> {
        let vm = |n: &str| -> Result<(&VmSpec, String)> {
            let spec = self
                .spec
                .vms
                .iter()
                .find(|v| v.name == n)
                .ok_or_else(|| anyhow!("no VM {n}"))?;
            let ns = self
                .vm_ns
                .get(n)
                .ok_or_else(|| anyhow!("VM {n} not created"))?;
            Ok((spec, ns.clone()))
        };
        let (v1, v1ns) = vm("v1")?;
        let (v2, v2ns) = vm("v2")?;
        let (_, v3ns) = vm("v3")?;
        let f1 = v1.fip.ok_or_else(|| anyhow!("v1 has no FIP"))?;
        Ok(vec![
            PathEnds {
                path: PathKind::EastWest,
                client_ns: v1ns.clone(),
                server_ns: v2ns,
                dst: v2.ip,
                seen_src: v1.ip,
                listen: Ipv4Addr::UNSPECIFIED,
            },
            PathEnds {
                path: PathKind::ExtToFip,
                client_ns: self.ext.clone(),
                server_ns: v1ns.clone(),
                dst: f1,
                seen_src: EXT_GATEWAY,
                listen: Ipv4Addr::UNSPECIFIED,
            },
            PathEnds {
                path: PathKind::FipToExt,
                client_ns: v1ns,
                server_ns: self.ext.clone(),
                dst: INTERNET_HOST,
                seen_src: f1,
                listen: INTERNET_HOST,
            },
            PathEnds {
                path: PathKind::Snat,
                client_ns: v3ns,
                server_ns: self.ext.clone(),
                dst: INTERNET_HOST,
                seen_src: ROUTER_EXT_IP,
                listen: INTERNET_HOST,
            },
        ])
    }

    /// Latency of one FIP change on the namespace datapath: the spare FIP associated with the
    /// spare VM and back, `changes` times, each timed by [`NeutronDvr::fip_change`]. Returns
    /// every sample in milliseconds; checks with traffic once that the FIP works.
    pub fn fip_change_latency(&mut self, changes: usize) -> Result<Vec<f64>> {
        let vm = self
            .spec
            .vms
            .iter()
            .find(|v| v.name == self.spec.spare_vm)
            .cloned()
            .ok_or_else(|| anyhow!("no spare VM"))?;
        let fip = self.spec.spare_fip;
        let mut samples = Vec::with_capacity(changes);
        for i in 0..changes {
            super::bail_if_interrupted()?;
            let d = self.fip_change(&vm.host, vm.ip, fip, i % 2 == 0)?;
            samples.push(d.as_secs_f64() * 1e3);
        }
        let associated = changes % 2 == 1;
        if !associated {
            self.fip_change(&vm.host, vm.ip, fip, true)?;
        }
        let ok = super::netns::ping_ok(&self.ext, fip, 2);
        self.fip_change(&vm.host, vm.ip, fip, false)?;
        ok.context("the spare FIP does not answer after the changes")?;
        Ok(samples)
    }

    /// Every namespace, for diagnostics.
    pub fn namespaces(&self) -> &[String] {
        self.ns.names()
    }

    pub fn temp_dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutron_nat_chains() {
        let fips = [(Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(10, 5, 2, 1))];
        let full = qrouter_nat(&fips, true);
        assert!(full.contains("-A PREROUTING -j neutron-l3-agent-PREROUTING\n"));
        assert!(full.contains(
            "-A neutron-l3-agent-PREROUTING -d 10.5.2.1/32 -i rfp-r1 -j DNAT --to-destination 192.168.1.10\n"
        ));
        assert!(full.contains(
            "-A neutron-l3-agent-float-snat -s 192.168.1.10/32 -j SNAT --to-source 10.5.2.1 --random-fully\n"
        ));
        assert!(full.ends_with("COMMIT\n"));
        // The update form leaves the built-in chains (and their jumps) alone.
        let update = qrouter_nat(&fips, false);
        assert!(!update.contains(":PREROUTING") && !update.contains("-A PREROUTING"));
        assert_eq!(update.matches("NAT --to-").count(), 2);
        assert!(snat_tables(ROUTER_EXT_IP).contains("-o qg-r1 -j SNAT --to-source 10.5.3.1"));
    }

    #[test]
    fn bench_spec_matches_the_test_bed_addresses() -> Result<()> {
        let s = Spec::bench()?;
        assert_eq!(s.hosts[0].tunnel_ip, Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(s.nets[0].csnat_ip, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(s.vms[0].fip, Some(Ipv4Addr::new(10, 5, 2, 1)));
        Ok(())
    }
}
