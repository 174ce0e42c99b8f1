//! IPv6 on the external network ([`Topology::external_ipv6`]): north-south IPv6 is routed
//! through each router's SNAT host with the VMs' own addresses (no NAT), as Neutron's snat
//! namespace does.
//!
//! ```text
//!   netns dvrt-<pid>-<n>-ext   br-ext 2001:db8:5::1/64 (the upstream router, forwarding on)
//!                              lo 2001:db8:100::10/128 (the IPv6 "internet host")
//!                              routes: each router's tenant IPv6 prefixes via its external
//!                              IPv6 address (as an operator's static routes or BGP would)
//! ```
//!
//! In the state: the external network's IPv6 subnet 2001:db8:5::/64 (gateway ::1) and each
//! router's IPv6 `external_fixed_ips` address 2001:db8:5::(100 + router index) (hex).
use std::net::Ipv6Addr;

use anyhow::{Result, anyhow};

use crate::cloud::{Cloud, KIND_SUBNET, Topology, new_id};
use crate::cmd::{self, ip};
use crate::external::{EXT_BRIDGE, INTERNET_DEV};
use crate::state;

/// The external IPv6 subnet.
pub const EXT6_CIDR: &str = "2001:db8:5::/64";
/// Its gateway: the upstream router, on `br-ext`.
pub const EXT6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
/// An IPv6 host beyond the upstream router (off-link for the external subnet).
pub const INTERNET_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);

/// The external IPv6 address of the router with this index.
pub fn router_ext_ip6(index: usize) -> Ipv6Addr {
    let n = u16::try_from(index).unwrap_or(0xff).min(0xff);
    Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0x100 + n)
}

impl Topology {
    /// [`Topology::external`] with an IPv6 subnet on the external network too (see
    /// [`crate::external6`]).
    pub fn external_ipv6(&mut self) -> &mut Topology {
        self.external = true;
        self.external6 = true;
        self
    }
}

impl Cloud {
    /// IPv6 in the external namespace (enabled, forwarding, no DAD delay), the gateway and
    /// the internet host's addresses, and the external IPv6 subnet in the state.
    pub(crate) fn create_external6(&mut self) -> Result<()> {
        let ext = self.external_info()?.clone();
        let ns = ext.ns.clone();
        cmd::exec_ok(
            &ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.default.disable_ipv6=0",
                &format!("net.ipv6.conf.{EXT_BRIDGE}.disable_ipv6=0"),
                &format!("net.ipv6.conf.{INTERNET_DEV}.disable_ipv6=0"),
                "net.ipv6.conf.all.forwarding=1",
                &format!("net.ipv6.conf.{EXT_BRIDGE}.accept_dad=0"),
            ],
        )?;
        // The gateway's address without duplicate address detection: usable at once.
        for (addr, dev, nodad) in [
            (format!("{EXT6_GATEWAY}/64"), EXT_BRIDGE, Some("nodad")),
            (format!("{INTERNET_HOST6}/128"), INTERNET_DEV, None),
        ] {
            let mut args = vec!["-n", &ns, "-6", "addr", "add", &addr, "dev", dev];
            args.extend(nodad);
            ip(&args)?;
        }
        let subnet_id = new_id(KIND_SUBNET, self.seq);
        let mut sub = state::Subnet::v4(
            &subnet_id,
            &ext.network_id,
            EXT6_CIDR,
            &EXT6_GATEWAY.to_string(),
        );
        sub.ip_version = 6;
        self.state.subnets.push(sub);
        if let Some(e) = self.external.as_mut() {
            e.subnet6_id = Some(subnet_id);
        }
        Ok(())
    }

    /// In the external namespace: each router's tenant IPv6 prefixes via its external IPv6
    /// address.
    pub(crate) fn route_tenants6(&mut self) -> Result<()> {
        let ns = self.external_info()?.ns.clone();
        for net in &self.networks {
            let (Some(router), Some(v6)) = (&net.router, &net.v6) else {
                continue;
            };
            let via = self.router_ext6(router)?;
            ip(&[
                "-n",
                &ns,
                "-6",
                "route",
                "add",
                &format!("{}/{}", v6.net, v6.prefix),
                "via",
                &via.to_string(),
                "dev",
                EXT_BRIDGE,
            ])?;
        }
        Ok(())
    }

    /// The external IPv6 address of router `name`.
    pub fn router_ext6(&self, name: &str) -> Result<Ipv6Addr> {
        let id = self
            .routers
            .get(name)
            .ok_or_else(|| anyhow!("no router {name}"))?;
        let index = self
            .state
            .routers
            .iter()
            .position(|r| &r.id == id)
            .ok_or_else(|| anyhow!("router {name} not in the state"))?;
        Ok(router_ext_ip6(index))
    }
}
