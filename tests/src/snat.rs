//! Centralized SNAT, `dvr_no_external` hosts and VIPs in the test bed.
//!
//! ```text
//!   h1 (dvr, ext0)   h2 (dvr, ext0)   hn (dvr_no_external, no ext0)   hs (dvr_snat, ext0)
//!        \                |                  |                            /
//!         +---------------+----- underlay br0 (VXLAN) -------------------+
//!   VM without a FIP -> its host steers to hs (VNI of the VM's network, inner destination
//!   the csnat port's MAC) -> hs translates to the router's gateway IP 10.5.3.x -> br-ext
//! ```
//!
//! - [`Topology::snat_host`](crate::Topology::snat_host) declares the `dvr_snat` host (with
//!   `ext0`), [`Topology::no_external_host`](crate::Topology::no_external_host) a
//!   `dvr_no_external` one (no `ext0`, no `external_interface`). With a SNAT host, every router
//!   gets one `network:router_centralized_snat` port per subnet (the first free address from
//!   `.2`, bound to the (first) SNAT host, or for an HA router to its most preferred candidate:
//!   [`crate::ha`]): [`Cloud::csnat`].
//! - [`Topology::enable_snat`](crate::Topology::enable_snat) sets a router's `enable_snat`;
//!   [`Cloud::set_enable_snat`] changes it at run time.
//! - [`Topology::vip`](crate::Topology::vip) adds an unbound VIP port (device_owner "", no
//!   binding); VMs that may hold it list it with
//!   [`VmSpec::allowed_pair`](crate::VmSpec::allowed_pair), and
//!   [`Topology::fip_on_vip`](crate::Topology::fip_on_vip) gives it a floating IP. Keepalived
//!   moves it: [`crate::keepalived`].
//! - Views: [`Cloud::show_snat`], [`Cloud::snat_row`], [`Cloud::snat_steering`],
//!   [`Cloud::pat_flows`], [`Cloud::vips`], [`Cloud::wait_vip_holder`].

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::cloud::{Cloud, KIND_PORT, new_id, new_mac};
use crate::cmd::wait_until;
use crate::state::{self, FixedIp};

/// The L3 agent mode of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMode {
    /// A compute host with its own external NIC (floating IPs served locally).
    Dvr,
    /// The network node: also the routers' centralized SNAT (and central floating IPs).
    DvrSnat,
    /// A compute host without external NIC.
    DvrNoExternal,
}

impl HostMode {
    /// The Neutron spelling (`agent_mode`).
    pub const fn as_str(self) -> &'static str {
        match self {
            HostMode::Dvr => "dvr",
            HostMode::DvrSnat => "dvr_snat",
            HostMode::DvrNoExternal => "dvr_no_external",
        }
    }
}

/// A router's centralized SNAT port on one subnet.
#[derive(Clone, Debug)]
pub struct CsnatInfo {
    pub port_id: String,
    /// Lower case.
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The logical name of the host it is bound to (the SNAT host).
    pub host: String,
}

/// A VIP port to create.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
}

/// A VIP port as created.
#[derive(Clone, Debug)]
pub struct VipInfo {
    pub name: String,
    pub port_id: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// The port's own MAC (no VM uses it: holders answer with their own MACs).
    pub mac: String,
}

impl Cloud {
    // ---- creation --------------------------------------------------------------------------

    /// Where router `r`'s centralized SNAT ports are bound, with the external network: its
    /// most preferred `dvr_snat` HA candidate, else the first `dvr_snat` host; `None` without
    /// either.
    pub(crate) fn csnat_host_for(&self, r: &state::Router) -> Option<String> {
        self.external.as_ref()?;
        let is_snat = |name: &str| self.host(name).is_ok_and(|h| h.mode == HostMode::DvrSnat);
        self.candidates_of(r)
            .into_iter()
            .find(|h| is_snat(h))
            .or_else(|| {
                self.hosts
                    .iter()
                    .find(|h| h.mode == HostMode::DvrSnat)
                    .map(|h| h.name.clone())
            })
    }

    /// The centralized SNAT port of router `router_id` on the subnet of network `net_index`,
    /// bound to host `snat_host` (logical name).
    pub(crate) fn create_csnat_port(
        &mut self,
        net_index: usize,
        router_id: &str,
        snat_host: &str,
    ) -> Result<()> {
        let snat = self.host(snat_host)?;
        let (snat_name, snat_agent) = (snat.name.clone(), snat.agent_name.clone());
        let port_id = new_id(KIND_PORT, self.seq);
        let mac = new_mac();
        let net = self
            .networks
            .get_mut(net_index)
            .ok_or_else(|| anyhow!("no network #{net_index}"))?;
        // The first address from .2 that is not the gateway (VMs start at .10).
        let ip = (2..10)
            .map(|n| net.cidr.host(n))
            .find(|ip| ip.as_ref().is_ok_and(|ip| *ip != net.gateway))
            .ok_or_else(|| anyhow!("network {}: no address for a csnat port", net.name))??;
        self.state.ports.push(state::Port {
            id: port_id.clone(),
            network_id: net.network_id.clone(),
            mac_address: mac.clone(),
            fixed_ips: vec![FixedIp {
                subnet_id: net.subnet_id.clone(),
                ip_address: ip.to_string(),
            }],
            device_owner: state::OWNER_ROUTER_CENTRALIZED_SNAT.into(),
            device_id: router_id.into(),
            binding_host_id: snat_agent,
            allowed_address_pairs: Vec::new(),
            port_security_enabled: true,
            security_groups: None,
            admin_state_up: None,
        });
        net.csnat = Some(CsnatInfo {
            port_id,
            mac,
            ip,
            host: snat_name,
        });
        Ok(())
    }

    /// An unbound VIP port (device_owner "", no `binding:host_id`).
    pub(crate) fn create_vip(&mut self, v: &VipSpec) -> Result<()> {
        ensure!(
            self.vips.iter().all(|x| x.name != v.name),
            "VIP {} defined twice",
            v.name
        );
        let net = self
            .network(&v.network)
            .with_context(|| format!("VIP {}", v.name))?
            .clone();
        ensure!(
            net.cidr.contains(v.ip) && v.ip != net.gateway,
            "VIP {}: {} is not a free address of {}",
            v.name,
            v.ip,
            net.cidr
        );
        let port_id = new_id(KIND_PORT, self.seq);
        let mac = new_mac();
        self.state.ports.push(state::Port {
            id: port_id.clone(),
            network_id: net.network_id.clone(),
            mac_address: mac.clone(),
            fixed_ips: vec![FixedIp {
                subnet_id: net.subnet_id.clone(),
                ip_address: v.ip.to_string(),
            }],
            device_owner: state::OWNER_NONE.into(),
            device_id: String::new(),
            binding_host_id: String::new(),
            allowed_address_pairs: Vec::new(),
            port_security_enabled: true,
            security_groups: None,
            admin_state_up: None,
        });
        self.vips.push(VipInfo {
            name: v.name.clone(),
            port_id,
            network: v.network.clone(),
            ip: v.ip,
            mac,
        });
        Ok(())
    }

    // ---- lookups ---------------------------------------------------------------------------

    /// The logical name of the SNAT (`dvr_snat`) host.
    pub fn snat_host(&self) -> Result<String> {
        self.hosts
            .iter()
            .find(|h| h.mode == HostMode::DvrSnat)
            .map(|h| h.name.clone())
            .ok_or_else(|| anyhow!("the topology has no dvr_snat host (.snat_host())"))
    }

    /// The centralized SNAT port of `network`'s router on its subnet.
    pub fn csnat(&self, network: &str) -> Result<&CsnatInfo> {
        self.network(network)?
            .csnat
            .as_ref()
            .ok_or_else(|| anyhow!("network {network} has no centralized SNAT port"))
    }

    /// The router's external gateway IP (`external_gateway_info.external_fixed_ips[0]`).
    pub fn router_external_ip(&self, router: &str) -> Result<Ipv4Addr> {
        let r = self.state_router(router)?;
        let ip = r
            .external_gateway_info
            .as_ref()
            .and_then(|g| g["external_fixed_ips"][0]["ip_address"].as_str())
            .ok_or_else(|| anyhow!("router {router} has no external gateway"))?;
        ip.parse()
            .with_context(|| format!("router {router}: external IP {ip:?}"))
    }

    /// Sets `enable_snat` of a router and rewrites the state file (does not wait).
    pub fn set_enable_snat(&mut self, router: &str, enabled: bool) -> Result<()> {
        let id = self.router_id(router)?.to_string();
        let r = self
            .state
            .routers
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| anyhow!("router {router} not in the state"))?;
        let g = r
            .external_gateway_info
            .as_mut()
            .ok_or_else(|| anyhow!("router {router} has no external gateway"))?;
        g["enable_snat"] = enabled.into();
        self.write_state()
    }

    pub fn vip_info(&self, name: &str) -> Result<&VipInfo> {
        self.vips
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| anyhow!("no VIP {name}"))
    }

    /// The address of a VIP port.
    pub fn vip_ip(&self, name: &str) -> Result<Ipv4Addr> {
        Ok(self.vip_info(name)?.ip)
    }

    // ---- agent views -----------------------------------------------------------------------

    /// `dvrctl show snat --json` of `host`: `{"routers": [...], "steering": [...]}`.
    pub fn show_snat(&self, host: &str) -> Result<Value> {
        let v = self.dvrctl_json(host, &["show", "snat", "--json"])?;
        ensure!(
            v["routers"].is_array() && v["steering"].is_array(),
            "show snat --json of {host} lacks routers/steering arrays: {v}"
        );
        Ok(v)
    }

    /// The `routers` row of `host`'s `show snat` for `router` (matched by its external IP).
    pub fn snat_row(&self, host: &str, router: &str) -> Result<Option<Value>> {
        let ip = self.router_external_ip(router)?.to_string();
        let v = self.show_snat(host)?;
        Ok(v["routers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["external_ip"].as_str() == Some(ip.as_str()))
            .cloned())
    }

    /// The `steering` rows of `host`'s `show snat`.
    pub fn snat_steering(&self, host: &str) -> Result<Vec<Value>> {
        let v = self.show_snat(host)?;
        Ok(v["steering"].as_array().cloned().unwrap_or_default())
    }

    /// The conntrack rows of `host` that port-address translate to `router`'s gateway IP
    /// (outbound direction: `nat` "snat", `pat` true): one per flow.
    pub fn pat_flows(&self, host: &str, router: &str) -> Result<Vec<Value>> {
        let ip = self.router_external_ip(router)?.to_string();
        Ok(self
            .conntrack(host)?
            .into_iter()
            .filter(|e| e["nat"] == "snat" && e["pat"] == true && e["nat_ip"] == ip.as_str())
            .collect())
    }

    /// `dvrctl show vips --json` of `host`.
    pub fn vips(&self, host: &str) -> Result<Vec<Value>> {
        self.show_list(host, "vips")
    }

    /// The row of VIP `vip` (by name) in `host`'s `show vips`.
    pub fn vip_row(&self, host: &str, vip: &str) -> Result<Option<Value>> {
        let ip = self.vip_ip(vip)?.to_string();
        Ok(self
            .vips(host)?
            .into_iter()
            .find(|r| r["vip"].as_str() == Some(ip.as_str())))
    }

    /// Waits until `host`'s `show vips` names the MAC of VM `holder` as the holder of `vip`.
    pub fn wait_vip_holder(
        &self,
        host: &str,
        vip: &str,
        holder: &str,
        deadline: Duration,
    ) -> Result<Value> {
        let mac = self.vm(holder)?.mac.to_lowercase();
        wait_until(
            &format!("{host} to see {holder} ({mac}) holding VIP {vip}"),
            deadline,
            |why| {
                let row = self.vip_row(host, vip)?;
                *why = format!("{row:?}");
                Ok(row.filter(|r| r["holder_mac"].as_str() == Some(mac.as_str())))
            },
        )
    }

    /// Whether VM `vm` has `ip` on its `eth0` (e.g. keepalived added the VIP).
    pub fn vm_has_address(&self, vm: &str, ip: Ipv4Addr) -> Result<bool> {
        let out = self.exec_vm(vm, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
        ensure!(
            out.status.success(),
            "ip addr in {vm}: {}",
            crate::cmd::text(&out)
        );
        let want = format!(" {ip}/");
        Ok(crate::cmd::stdout(&out).contains(&want))
    }

    // ---- readiness -------------------------------------------------------------------------

    /// With a SNAT host: waits until each router that has centralized SNAT ports is listed in
    /// `show snat` of the host its csnat ports are bound to (for an HA router: of any of its
    /// candidates, the one elected: [`crate::ha`]), which has learned the external gateway's
    /// MAC, and until every host with VMs on such a router's networks steers them (a
    /// `steering` row for the network's VNI and gateway MAC, pointing at that host or, for an
    /// HA router, at any of its candidates). Called by `build`.
    pub(crate) fn wait_snat_ready(&self, deadline: Duration) -> Result<()> {
        let log = |h: &str| format!("agent log:\n{}", self.agent_log_tail(h, 30));
        let mut checked: Vec<String> = Vec::new();
        for n in self.networks.iter() {
            let (Some(csnat), Some(r)) = (&n.csnat, &n.router) else {
                continue;
            };
            let mut targets = self.ha_candidates(r)?;
            if targets.is_empty() {
                targets.push(csnat.host.clone());
            }
            if !checked.contains(r) {
                checked.push(r.clone());
                let snat = wait_until(
                    &format!("one of {targets:?} to list router {r} in show snat"),
                    deadline,
                    |why| {
                        for t in &targets {
                            let row = self.snat_row(t, r)?;
                            *why = format!("{t}: {row:?}");
                            if row.is_some() {
                                return Ok(Some(t.clone()));
                            }
                        }
                        Ok(None)
                    },
                )
                .with_context(|| {
                    targets
                        .iter()
                        .map(|t| log(t))
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
                self.wait_stat_at_least(&snat, "ext_neigh_learned", 1, deadline)
                    .with_context(|| {
                        format!(
                            "the SNAT host {snat} did not learn the external gateway's MAC; {}",
                            log(&snat)
                        )
                    })?;
            }
            let target_ips: Vec<String> = targets
                .iter()
                .map(|t| self.host(t).map(|h| h.tunnel_ip.to_string()))
                .collect::<Result<_>>()?;
            let gw_mac = n.gateway_mac.clone().unwrap_or_default().to_lowercase();
            for h in &self.hosts {
                if !self
                    .vms
                    .iter()
                    .any(|v| v.host == h.name && v.network == n.name)
                {
                    continue;
                }
                // A host steering to itself has no remote SNAT host.
                let own = targets.contains(&h.name);
                wait_until(
                    &format!("{} to steer network {} to {targets:?}", h.name, n.name),
                    deadline,
                    |why| {
                        let rows = self.snat_steering(&h.name)?;
                        *why = format!("{rows:?}");
                        Ok(rows
                            .iter()
                            .any(|s| {
                                s["vni"] == n.vni
                                    && s["gateway_mac"].as_str() == Some(gw_mac.as_str())
                                    && match s["snat_host"].as_str() {
                                        None => own,
                                        Some(ip) => target_ips.iter().any(|t| t == ip),
                                    }
                            })
                            .then_some(()))
                    },
                )
                .with_context(|| log(&h.name))?;
            }
        }
        Ok(())
    }
}

/// The ICMP echo id in a tcpdump line ("ICMP echo request, id 40000, seq 1").
pub fn icmp_echo_id(p: &crate::Packet) -> Option<u16> {
    let at = p.text.find("ICMP echo")?;
    let rest = &p.text[at..];
    let id = rest.split_once(", id ")?.1;
    id.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `ip:port` of a `show snat` busiest destination entry (`["ip:port/proto", n]`).
pub fn busiest(row: &Value) -> Result<Vec<(String, u64)>> {
    let Some(arr) = row["busiest_destinations"].as_array() else {
        bail!("no busiest_destinations in {row}");
    };
    arr.iter()
        .map(|e| {
            Ok((
                e[0].as_str()
                    .ok_or_else(|| anyhow!("bad busiest entry {e}"))?
                    .to_string(),
                e[1].as_u64()
                    .ok_or_else(|| anyhow!("bad busiest entry {e}"))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_icmp_echo_id() {
        let p = crate::Packet {
            text: "12:00:00.000001 aa:bb:cc:dd:ee:ff > 11:22:33:44:55:66, ethertype IPv4 \
                   (0x0800), length 98: (tos 0x0, ttl 63, id 0, offset 0, flags [DF], proto \
                   ICMP (1), length 84)\n    10.5.3.1 > 198.51.100.10: ICMP echo request, id \
                   40000, seq 1, length 64"
                .into(),
        };
        assert_eq!(icmp_echo_id(&p), Some(40000));
    }
}
