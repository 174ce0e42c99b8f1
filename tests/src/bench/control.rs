//! Control-plane timings: programming N floating IPs (and their ports) into one host.
//!
//! - **eBPF**: a state with one router, a tenant subnet of N VM ports on a `dvr_no_external`
//!   compute host and N floating IPs on them, so that the `dvr_snat` host under test serves
//!   all N (central FIPs: a host holds at most `LOCAL_PORTS_MAX` = 4,096 local taps, so 10,000
//!   local FIPs cannot exist on one eBPF host). Timed: what the agent does when a state
//!   arrives, in this process and with its library: parse and validate the JSON
//!   (`State::from_json`), compile the host's entries (`compile::compile`) and write them into
//!   a freshly loaded, empty set of pinned maps (`reconcile::apply`). The object is loaded
//!   (and verified) before the clock starts. Afterwards the `fips` map must hold N served
//!   entries.
//! - **namespace**: what Neutron's DVR agent programs for N FIPs of local ports, in scratch
//!   `qrouter` and `fip` namespaces: `iptables-restore -n` of Neutron's chains with 2N rules
//!   (DNAT and `float-snat` SNAT per FIP), one `ip -batch` in `qrouter` with N permanent ARP
//!   entries (the ports), N FIP addresses on `rfp-` and N `from <fixed> lookup 16` rules, and
//!   one `ip -batch` in `fip` with N `/32` routes. One process per step, which is far fewer
//!   than Neutron forks (it runs a command per FIP through rootwrap/privsep): a lower bound.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use dvr_common::nat::FIP_CENTRAL;
use dvr_userspace::{attach, compile, maps::HostMaps, model, reconcile};
use serde::Serialize;
use serde_json::json;

use super::Datapath;
use super::baseline::{
    FIP_RULE_PRIORITY, FIP_TABLE, FPR, FPR_IP, RFP, RFP_IP, ROUTER_SYSCTLS, ip_batch,
    iptables_restore, qrouter_nat,
};
use super::netns::NsSet;
use crate::cmd::{exec_ok, ip};
use crate::state::{self, FixedIp, State};

/// One control-plane timing.
#[derive(Clone, Debug, Serialize)]
pub struct CpTiming {
    pub fips: usize,
    pub datapath: &'static str,
    pub seconds: f64,
    /// The timed steps and their seconds.
    pub steps: Vec<(String, f64)>,
}

const SNAT_HOST: &str = "cp-snat";
const COMPUTE_HOST: &str = "cp-compute";
const TENANT_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// The fixed IP and FIP of the `k`th port.
fn addrs(k: usize) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let k = u32::try_from(k)?;
    Ok((
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 10)) + k),
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 5, 16, 1)) + k),
    ))
}

fn port_mac(k: usize) -> String {
    let b = (k as u32).to_be_bytes();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

/// The Neutron-shaped state with `n` FIPs served centrally by [`SNAT_HOST`] (see the module
/// docs), as JSON text.
pub fn fip_state(n: usize) -> Result<String> {
    ensure!(n <= 60_000, "at most 60,000 FIPs fit the address plan");
    let mut s = State {
        hosts: vec![
            state::Host {
                name: SNAT_HOST.into(),
                agent_mode: "dvr_snat".into(),
                tunnel_ip: "192.0.2.1".into(),
                dvr_mac: "fa:16:3f:00:00:01".into(),
                external_interface: Some("ext0".into()),
            },
            state::Host {
                name: COMPUTE_HOST.into(),
                agent_mode: "dvr_no_external".into(),
                tunnel_ip: "192.0.2.2".into(),
                dvr_mac: "fa:16:3f:00:00:02".into(),
                external_interface: None,
            },
        ],
        ..State::default()
    };
    s.networks = vec![
        state::Network {
            id: "net-tenant".into(),
            name: "tenant".into(),
            network_type: "vxlan".into(),
            segmentation_id: Some(100),
            physical_network: None,
            router_external: false,
            mtu: 1450,
        },
        state::Network {
            id: "net-ext".into(),
            name: "public".into(),
            network_type: "flat".into(),
            segmentation_id: None,
            physical_network: Some("public".into()),
            router_external: true,
            mtu: 1500,
        },
    ];
    s.subnets = vec![
        state::Subnet::v4(
            "sub-tenant",
            "net-tenant",
            "10.0.0.0/16",
            &TENANT_GW.to_string(),
        ),
        state::Subnet::v4("sub-ext", "net-ext", "10.5.0.0/16", "10.5.0.1"),
    ];
    s.routers = vec![state::Router {
        id: "router-1".into(),
        distributed: true,
        ha: false,
        external_gateway_info: Some(json!({
            "network_id": "net-ext",
            "enable_snat": true,
            "external_fixed_ips": [{"subnet_id": "sub-ext", "ip_address": "10.5.3.1"}],
        })),
        ha_hosts: Vec::new(),
        admin_state_up: None,
        routes: Vec::new(),
    }];
    let port = |id: String,
                net: &str,
                mac: String,
                subnet: &str,
                ip: Ipv4Addr,
                owner: &str,
                device: &str,
                host: &str| state::Port {
        id,
        network_id: net.into(),
        mac_address: mac,
        fixed_ips: vec![FixedIp {
            subnet_id: subnet.into(),
            ip_address: ip.to_string(),
        }],
        device_owner: owner.into(),
        device_id: device.into(),
        binding_host_id: host.into(),
        allowed_address_pairs: Vec::new(),
        port_security_enabled: true,
        security_groups: None,
        admin_state_up: None,
    };
    s.ports.push(port(
        "rif-tenant".into(),
        "net-tenant",
        "fa:16:3e:ff:00:01".into(),
        "sub-tenant",
        TENANT_GW,
        state::OWNER_ROUTER_INTERFACE,
        "router-1",
        "",
    ));
    s.ports.push(port(
        "csnat-tenant".into(),
        "net-tenant",
        "fa:16:3e:ff:00:02".into(),
        "sub-tenant",
        Ipv4Addr::new(10, 0, 0, 2),
        state::OWNER_ROUTER_CENTRALIZED_SNAT,
        "router-1",
        SNAT_HOST,
    ));
    let mut fg = port(
        "fg-snat".into(),
        "net-ext",
        "fa:16:3e:ff:00:03".into(),
        "sub-ext",
        Ipv4Addr::new(10, 5, 1, 1),
        state::OWNER_FIP_AGENT_GATEWAY,
        SNAT_HOST,
        SNAT_HOST,
    );
    fg.port_security_enabled = false;
    s.ports.push(fg);
    for k in 0..n {
        let (fixed, fip) = addrs(k)?;
        let id = format!("{k:08x}-0000-4000-8000-00000000cafe");
        s.ports.push(port(
            id.clone(),
            "net-tenant",
            port_mac(k),
            "sub-tenant",
            fixed,
            state::OWNER_COMPUTE,
            &format!("vm-{k}"),
            COMPUTE_HOST,
        ));
        s.floatingips.push(json!({
            "id": format!("fip-{k}"),
            "floating_ip_address": fip.to_string(),
            "floating_network_id": "net-ext",
            "router_id": "router-1",
            "port_id": id,
            "fixed_ip_address": fixed.to_string(),
            "status": "ACTIVE",
        }));
    }
    Ok(serde_json::to_string(&s)?)
}

/// A pin directory on bpffs, removed (with its pinned maps) on drop.
pub(super) struct PinDir(pub(super) PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = fs::remove_dir_all(&self.0)
        {
            eprintln!("dvr-bench: teardown: removing {}: {e}", self.0.display());
        }
    }
}

/// Programs `n` FIPs with the eBPF agent's library (see the module docs).
pub fn ebpf(n: usize) -> Result<CpTiming> {
    let text = fip_state(n)?;
    let root = crate::cloud::bpffs_root();
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let pins = PinDir(root.join(format!("dvrb-{}-cp{n}", std::process::id())));
    fs::create_dir_all(&pins.0).with_context(|| format!("creating {}", pins.0.display()))?;
    let ebpf = attach::load_object(&pins.0, &attach::LoadOptions::default())
        .context("loading the BPF object")?;
    let mut maps = HostMaps::open(&pins.0).context("opening the pinned maps")?;

    let t0 = Instant::now();
    let state = model::State::from_json(&text).context("state rejected")?;
    let t1 = Instant::now();
    let compiled = compile::compile(&state, SNAT_HOST, None, &|_| None).context("compile")?;
    let t2 = Instant::now();
    let applied = reconcile::apply(&mut maps, &compiled.config, &compiled.entries)
        .context("writing the maps")?;
    let t3 = Instant::now();

    let served = maps
        .fips
        .read()?
        .values()
        .filter(|e| e.flags & FIP_CENTRAL != 0)
        .count();
    ensure!(
        served == n,
        "the fips map serves {served} FIPs, expected {n} ({applied:?})"
    );
    drop(maps);
    drop(ebpf);
    Ok(CpTiming {
        fips: n,
        datapath: Datapath::Ebpf.as_str(),
        seconds: (t3 - t0).as_secs_f64(),
        steps: vec![
            ("parse+validate".into(), (t1 - t0).as_secs_f64()),
            ("compile".into(), (t2 - t1).as_secs_f64()),
            (
                format!("map writes ({})", applied.upserted),
                (t3 - t2).as_secs_f64(),
            ),
        ],
    })
}

/// Programs `n` FIPs the way Neutron's DVR agent does (see the module docs), in scratch
/// namespaces that are deleted afterwards. `dir` holds the batch files.
pub fn namespace(n: usize, dir: &Path) -> Result<CpTiming> {
    let mut ns = NsSet::new();
    let qr = ns.add("cp-qrouter", ROUTER_SYSCTLS)?;
    let fip = ns.add("cp-fip", ROUTER_SYSCTLS)?;
    // The router's devices, as they exist before any FIP.
    ip(&[
        "-n", &qr, "link", "add", "qr-t", "type", "veth", "peer", "name", "qr-tp",
    ])?;
    ip(&[
        "-n",
        &qr,
        "addr",
        "add",
        &format!("{TENANT_GW}/16"),
        "dev",
        "qr-t",
    ])?;
    ip(&["-n", &qr, "link", "set", "qr-t", "up"])?;
    ip(&["-n", &qr, "link", "set", "qr-tp", "up"])?;
    ip(&[
        "-n", &qr, "link", "add", RFP, "type", "veth", "peer", "name", FPR, "netns", &fip,
    ])?;
    ip(&[
        "-n",
        &qr,
        "addr",
        "add",
        &format!("{RFP_IP}/31"),
        "dev",
        RFP,
    ])?;
    ip(&["-n", &qr, "link", "set", RFP, "up"])?;
    ip(&[
        "-n",
        &fip,
        "addr",
        "add",
        &format!("{FPR_IP}/31"),
        "dev",
        FPR,
    ])?;
    ip(&["-n", &fip, "link", "set", FPR, "up"])?;
    let table = FIP_TABLE.to_string();
    ip(&[
        "-n",
        &qr,
        "route",
        "add",
        "default",
        "via",
        &FPR_IP.to_string(),
        "dev",
        RFP,
        "table",
        &table,
    ])?;
    let skeleton = dir.join(format!("cp{n}-skeleton.nat"));
    fs::write(&skeleton, qrouter_nat(&[], true))?;
    iptables_restore(&qr, &skeleton, false)?;

    let mut pairs = Vec::with_capacity(n);
    let (mut neigh, mut addr, mut rule, mut route) =
        (String::new(), String::new(), String::new(), String::new());
    for k in 0..n {
        let (fixed, f) = addrs(k)?;
        pairs.push((fixed, f));
        let _ = writeln!(
            neigh,
            "neigh replace {fixed} lladdr {} dev qr-t nud permanent",
            port_mac(k)
        );
        let _ = writeln!(addr, "addr add {f}/32 dev {RFP}");
        let _ = writeln!(
            rule,
            "rule add from {fixed} table {FIP_TABLE} priority {}",
            FIP_RULE_PRIORITY + u32::try_from(k)?
        );
        let _ = writeln!(route, "route add {f}/32 via {RFP_IP} dev {FPR}");
    }
    let nat_f = dir.join(format!("cp{n}.nat"));
    fs::write(&nat_f, qrouter_nat(&pairs, false))?;
    let mut files = vec![nat_f.clone()];
    let mut batches = Vec::new();
    for (what, ns, text) in [
        ("ports: ip neigh (qrouter)", &qr, neigh),
        ("ip addr (qrouter rfp-)", &qr, addr),
        ("ip rule (qrouter)", &qr, rule),
        ("ip route (fip)", &fip, route),
    ] {
        let f = dir.join(format!("cp{n}-{}.batch", batches.len()));
        fs::write(&f, text)?;
        files.push(f.clone());
        batches.push((what, ns.clone(), f));
    }

    let mut steps = Vec::new();
    let t0 = Instant::now();
    iptables_restore(&qr, &nat_f, true)?;
    steps.push((
        format!("iptables-restore ({} rules)", 2 * n),
        t0.elapsed().as_secs_f64(),
    ));
    for (what, ns, f) in &batches {
        let t = Instant::now();
        ip_batch(ns, f)?;
        steps.push((what.to_string(), t.elapsed().as_secs_f64()));
    }
    let seconds = t0.elapsed().as_secs_f64();

    // Everything is in place: N rules to table 16, 2N NAT rules.
    let rules = exec_ok(&qr, &["ip", "rule", "show", "table", &table])?;
    let got = String::from_utf8_lossy(&rules.stdout).lines().count();
    ensure!(
        got == n,
        "qrouter has {got} rules to table 16, expected {n}"
    );
    let save = exec_ok(&qr, &["iptables-save", "-t", "nat"])?;
    let nat_rules = String::from_utf8_lossy(&save.stdout)
        .lines()
        .filter(|l| l.contains("DNAT --to-destination") || l.contains("SNAT --to-source"))
        .count();
    ensure!(
        nat_rules == 2 * n,
        "qrouter has {nat_rules} NAT rules, expected {}",
        2 * n
    );
    files.push(skeleton);
    for f in files {
        let _ = fs::remove_file(f);
    }
    Ok(CpTiming {
        fips: n,
        datapath: Datapath::Namespace.as_str(),
        seconds,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fip_state_compiles_to_n_central_fips() -> Result<()> {
        let state = model::State::from_json(&fip_state(5)?)?;
        let c = compile::compile(&state, SNAT_HOST, None, &|_| None)?;
        let central = c
            .entries
            .fips
            .values()
            .filter(|e| e.flags & FIP_CENTRAL != 0)
            .count();
        assert_eq!(central, 5);
        assert_eq!(c.entries.fip_src.len(), 5);
        assert_eq!(c.served_fips.len(), 5);
        Ok(())
    }
}
