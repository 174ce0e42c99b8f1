//! IPv6 in the test cloud: a network's second, IPv6 subnet ([`Topology::ipv6`]), its own
//! router interface port (so a dual-stack network's IPv4 and IPv6 gateways have different
//! MACs, as Neutron creates them), the VMs' IPv6 fixed IPs (the EUI-64 address of their MAC
//! on slaac and dhcpv6-stateless subnets, as Neutron assigns it), and VM namespaces with
//! IPv6 enabled that learn their address, default route and MTU from the router's
//! advertisements like a real guest (`accept_ra`).
use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;

use crate::cloud::{Cloud, KIND_PORT, KIND_SUBNET, PingResult, Topology, new_id, new_mac};
use crate::cmd::{self, exec, exec_with_deadline, text, wait_until};
use crate::state::{self, FixedIp};

/// How long a VM may take to configure from the router advertisements: link-local DAD
/// (1 s), the solicitation delay (up to 1 s), the advertisement, DAD of the new address
/// (1 s), with room for a loaded machine.
pub const SLAAC_DEADLINE: Duration = Duration::from_secs(20);

/// The IPv6 subnet of a network, as asked for.
#[derive(Clone, Debug)]
pub struct Net6Spec {
    pub net: Ipv6Addr,
    pub prefix: u8,
    /// `ipv6_ra_mode` and `ipv6_address_mode` (both the same, as Neutron recommends);
    /// `None`: neither set.
    pub mode: Option<String>,
}

/// The IPv6 subnet of a network, as created.
#[derive(Clone, Debug)]
pub struct Net6Info {
    pub subnet_id: String,
    pub net: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Ipv6Addr,
    pub mode: Option<String>,
    /// The router's IPv6 interface port on this subnet.
    pub gateway_mac: Option<String>,
    pub gateway_port_id: Option<String>,
    next_host: u16,
}

impl Net6Info {
    /// An IPv6 subnet made elsewhere (by Neutron: [`crate::neutron`]).
    pub(crate) fn adopted(
        subnet_id: &str,
        net: Ipv6Addr,
        prefix: u8,
        gateway: Ipv6Addr,
        mode: Option<&str>,
    ) -> Net6Info {
        Net6Info {
            subnet_id: subnet_id.into(),
            net,
            prefix,
            gateway,
            mode: mode.map(str::to_string),
            gateway_mac: None,
            gateway_port_id: None,
            next_host: 10,
        }
    }

    /// Whether VMs configure their address themselves from the prefix (SLAAC).
    pub fn autoconf(&self) -> bool {
        matches!(self.mode.as_deref(), Some("slaac" | "dhcpv6-stateless"))
    }

    /// The address Neutron gives a port with `mac`: its EUI-64 address on a SLAAC subnet,
    /// else the next free host address.
    pub(crate) fn port_address(&mut self, mac: &str) -> Result<Ipv6Addr> {
        if self.autoconf() {
            return eui64(self.net, mac);
        }
        let mut s = self.net.segments();
        s[7] = self.next_host;
        self.next_host += 1;
        Ok(Ipv6Addr::from(s))
    }

    /// The router interface's link-local address (the VMs' default router).
    pub fn gateway_link_local(&self) -> Result<Ipv6Addr> {
        let mac = self
            .gateway_mac
            .as_deref()
            .ok_or_else(|| anyhow!("IPv6 subnet {} has no router", self.subnet_id))?;
        eui64(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), mac)
    }
}

/// The modified EUI-64 address of `mac` in the /64 `prefix` (RFC 4291 appendix A).
pub fn eui64(prefix: Ipv6Addr, mac: &str) -> Result<Ipv6Addr> {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("MAC {mac}"))?;
    ensure!(b.len() == 6, "MAC {mac}");
    let p = prefix.octets();
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&p[..8]);
    o[8..].copy_from_slice(&[b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]]);
    Ok(Ipv6Addr::from(o))
}

impl Topology {
    /// Gives network `name` a second subnet, IPv6 `cidr` (e.g. `fd00:1::/64`), gateway
    /// `::1`, with `ipv6_ra_mode` = `ipv6_address_mode` = `mode` (or neither).
    pub fn ipv6(&mut self, name: &str, cidr: &str, mode: Option<&str>) -> &mut Topology {
        let parsed = cidr
            .split_once('/')
            .and_then(|(n, p)| Some((n.parse::<Ipv6Addr>().ok()?, p.parse::<u8>().ok()?)));
        let Some((net, prefix)) = parsed else {
            self.errors
                .push(format!("ipv6 {name}: {cidr} is not an IPv6 prefix"));
            return self;
        };
        let spec = Net6Spec {
            net,
            prefix,
            mode: mode.map(str::to_string),
        };
        match self.networks.iter_mut().find(|n| n.name == name) {
            Some(n) => n.ipv6 = Some(spec),
            None => self.errors.push(format!("ipv6: no network {name}")),
        }
        self
    }

    /// Sets network `name`'s `mtu` in the state (what the router advertises).
    pub fn network_mtu(&mut self, name: &str, mtu: u32) -> &mut Topology {
        match self.networks.iter_mut().find(|n| n.name == name) {
            Some(n) => n.mtu = Some(mtu),
            None => self.errors.push(format!("network_mtu: no network {name}")),
        }
        self
    }
}

/// Turns IPv6 on in a VM namespace before its `eth0` comes up, as a Linux guest has it:
/// router advertisements accepted, SLAAC on (it configures an address only from a prefix
/// the router marks autonomous). On a subnet without automatic addresses the fixed IP is
/// set by hand, as a DHCPv6 server would (none runs here).
pub(crate) fn configure_vm(ns: &str, v6: &Net6Info, ip6: Option<Ipv6Addr>) -> Result<()> {
    cmd::exec_ok(
        ns,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.eth0.disable_ipv6=0",
            "net.ipv6.conf.eth0.accept_ra=1",
            "net.ipv6.conf.eth0.autoconf=1",
        ],
    )?;
    if !v6.autoconf()
        && let Some(ip) = ip6
    {
        cmd::ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{ip}/{}", v6.prefix),
            "dev",
            "eth0",
        ])?;
    }
    Ok(())
}

/// What a VM configured from the router advertisements.
#[derive(Clone, Debug)]
pub struct Learned {
    /// Its global IPv6 addresses (not tentative), as `addr/prefix`.
    pub addresses: Vec<String>,
    /// The gateway of its IPv6 default route.
    pub default_via: Option<Ipv6Addr>,
    /// Its IPv6 MTU on `eth0`.
    pub mtu: u32,
}

impl Cloud {
    pub(crate) fn create_subnet6(&mut self, network_id: &str, spec: &Net6Spec) -> Result<Net6Info> {
        let subnet_id = new_id(KIND_SUBNET, self.seq);
        let mut g = spec.net.segments();
        g[7] = 1;
        let gateway = Ipv6Addr::from(g);
        self.state.subnets.push(state::Subnet {
            id: subnet_id.clone(),
            network_id: network_id.into(),
            cidr: format!("{}/{}", spec.net, spec.prefix),
            gateway_ip: gateway.to_string(),
            ip_version: 6,
            ipv6_ra_mode: spec.mode.clone(),
            ipv6_address_mode: spec.mode.clone(),
        });
        Ok(Net6Info {
            subnet_id,
            net: spec.net,
            prefix: spec.prefix,
            gateway,
            mode: spec.mode.clone(),
            gateway_mac: None,
            gateway_port_id: None,
            next_host: 0x10,
        })
    }

    /// The router's interface port on network `i`'s IPv6 subnet, if it has one.
    pub(crate) fn create_router_port6(&mut self, i: usize, router_id: &str) -> Result<()> {
        let net = &mut self.networks[i];
        let Some(v6) = &mut net.v6 else {
            return Ok(());
        };
        let port_id = new_id(KIND_PORT, self.seq);
        let mac = new_mac();
        v6.gateway_mac = Some(mac.clone());
        v6.gateway_port_id = Some(port_id.clone());
        self.state.ports.push(state::Port {
            id: port_id,
            network_id: net.network_id.clone(),
            mac_address: mac,
            fixed_ips: vec![FixedIp {
                subnet_id: v6.subnet_id.clone(),
                ip_address: v6.gateway.to_string(),
            }],
            device_owner: state::OWNER_ROUTER_INTERFACE.into(),
            device_id: router_id.into(),
            binding_host_id: String::new(),
            allowed_address_pairs: Vec::new(),
            port_security_enabled: true,
            security_groups: None,
            admin_state_up: None,
        });
        Ok(())
    }

    /// A VM's IPv6 fixed IP.
    pub fn ip6(&self, vm: &str) -> Result<Ipv6Addr> {
        self.vm(vm)?
            .ip6
            .ok_or_else(|| anyhow!("VM {vm} has no IPv6 address (its network has no IPv6 subnet)"))
    }

    /// The IPv6 subnet of network `name`.
    pub fn network6(&self, name: &str) -> Result<&Net6Info> {
        self.network(name)?
            .v6
            .as_ref()
            .ok_or_else(|| anyhow!("network {name} has no IPv6 subnet"))
    }

    /// What VM `vm` has configured from router advertisements now.
    pub fn learned6(&self, vm: &str) -> Result<Learned> {
        let ns = &self.vm(vm)?.ns;
        let out = exec(ns, &["ip", "-6", "-j", "addr", "show", "dev", "eth0"])?;
        let v: Value = serde_json::from_str(&cmd::stdout(&out)).unwrap_or(Value::Null);
        let mut addresses = Vec::new();
        for info in v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("addr_info")?.as_array())
            .flatten()
        {
            let global = info.get("scope").and_then(Value::as_str) == Some("global");
            let tentative = info.get("tentative").is_some();
            if global
                && !tentative
                && let (Some(a), Some(p)) = (
                    info.get("local").and_then(Value::as_str),
                    info.get("prefixlen").and_then(Value::as_u64),
                )
            {
                addresses.push(format!("{a}/{p}"));
            }
        }
        let out = exec(ns, &["ip", "-6", "-j", "route", "show", "default"])?;
        let v: Value = serde_json::from_str(&cmd::stdout(&out)).unwrap_or(Value::Null);
        let default_via = v
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r.get("gateway")?.as_str()?.parse().ok());
        let out = exec(ns, &["sysctl", "-n", "net.ipv6.conf.eth0.mtu"])?;
        let mtu = cmd::stdout(&out).trim().parse().unwrap_or(0);
        Ok(Learned {
            addresses,
            default_via,
            mtu,
        })
    }

    /// Waits until VM `vm` has its fixed IPv6 address (configured, not tentative) and an
    /// IPv6 default route; returns what it learned.
    pub fn wait_ipv6_ready(&self, vm: &str, deadline: Duration) -> Result<Learned> {
        let ip6 = self.ip6(vm)?;
        let prefix = self
            .network6(&self.vm(vm)?.network)
            .map(|n| n.prefix)
            .unwrap_or(64);
        let want = format!("{ip6}/{prefix}");
        wait_until(
            &format!("VM {vm} to configure {want} and an IPv6 default route"),
            deadline,
            |why| {
                let l = self.learned6(vm)?;
                *why = format!("{l:?}");
                Ok((l.addresses.contains(&want) && l.default_via.is_some()).then_some(l))
            },
        )
    }

    /// `ping -6 -c count -i 0.2` from a VM (or any namespace [`Cloud::ns_of`] knows); never
    /// fails on lost replies.
    pub fn ping6(
        &self,
        from: &str,
        dst: Ipv6Addr,
        count: u32,
        extra: &[&str],
    ) -> Result<PingResult> {
        let ns = self.ns_of(from)?;
        let count_s = count.to_string();
        let dst_s = dst.to_string();
        let mut args = vec!["ping", "-6", "-n", "-c", &count_s, "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(&dst_s);
        let deadline = Duration::from_millis(200 * u64::from(count)) + Duration::from_secs(10);
        let out = exec_with_deadline(&ns, &args, deadline)?;
        let mut r = crate::cloud::parse_ping(&text(&out));
        // "64 bytes from fd00:1::a: icmp_seq=1 ttl=63": the address holds colons.
        r.reply_from = text(&out)
            .lines()
            .filter(|l| l.contains("bytes from") && !l.contains("(DUP!)"))
            .filter_map(|l| {
                let (_, rest) = l.split_once("bytes from ")?;
                Some(rest.split_once(": ")?.0.to_string())
            })
            .collect();
        Ok(r)
    }

    /// Pings over IPv6 and fails unless every echo is answered.
    pub fn ping6_ok(&self, from: &str, dst: Ipv6Addr, count: u32) -> Result<PingResult> {
        let r = self.ping6(from, dst, count, &[])?;
        ensure!(
            r.all_answered(),
            "ping -6 {from} -> {dst}: {}/{} answered:\n{}",
            r.received,
            r.transmitted,
            r.output
        );
        Ok(r)
    }

    /// The IPv6 neighbour entry of `addr` in VM `vm`: its MAC (lower case) and whether the
    /// neighbour said it is a router.
    pub fn neigh6(&self, vm: &str, addr: Ipv6Addr) -> Result<Option<(String, bool)>> {
        let ns = &self.vm(vm)?.ns;
        let out = exec(
            ns,
            &[
                "ip",
                "-6",
                "-j",
                "neigh",
                "show",
                "dev",
                "eth0",
                "to",
                &addr.to_string(),
            ],
        )?;
        let v: Value = serde_json::from_str(&cmd::stdout(&out)).unwrap_or(Value::Null);
        Ok(v.as_array().into_iter().flatten().find_map(|n| {
            let mac = n.get("lladdr")?.as_str()?.to_lowercase();
            Some((mac, n.get("router").is_some()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_flips_the_universal_local_bit() -> Result<()> {
        assert_eq!(
            eui64("fd00:1::".parse()?, "fa:16:3e:00:00:01")?,
            "fd00:1::f816:3eff:fe00:1".parse::<Ipv6Addr>()?
        );
        Ok(())
    }
}
