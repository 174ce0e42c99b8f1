//! The hosts running the agent: not Neutron objects, the deployment supplies them.

use std::collections::hash_map::Entry;
use std::fmt;
use std::net::Ipv4Addr;

use super::check::{Report, is_multicast};
use super::parse::{Element, Mac, Reader, conv_id, conv_ipv4, conv_mac, conv_string, format_mac};
use super::table::HashMap;

/// The L3 agent mode of a host (`agent_mode` in the Neutron L3 agent configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentMode {
    /// Compute host: distributed routing and floating IPs.
    Dvr,
    /// Network host: also runs the centralized SNAT.
    DvrSnat,
    /// Compute host without external connectivity (no floating IPs).
    DvrNoExternal,
}

impl AgentMode {
    /// The Neutron spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentMode::Dvr => "dvr",
            AgentMode::DvrSnat => "dvr_snat",
            AgentMode::DvrNoExternal => "dvr_no_external",
        }
    }

    /// Parse the Neutron spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dvr" => Some(AgentMode::Dvr),
            "dvr_snat" => Some(AgentMode::DvrSnat),
            "dvr_no_external" => Some(AgentMode::DvrNoExternal),
            _ => None,
        }
    }
}

impl fmt::Display for AgentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host running the agent (not a Neutron object: the deployment supplies these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host name, as used in ports' `binding:host_id`.
    pub name: String,
    pub agent_mode: AgentMode,
    /// Underlay address of the host's VXLAN endpoint.
    pub tunnel_ip: Ipv4Addr,
    /// Source MAC of the frames this host routes into the tunnel; unique per host.
    pub dvr_mac: Mac,
    pub external_interface: Option<String>,
}

impl Host {
    /// True when the host reaches external networks itself (and so serves floating IPs): it
    /// names an external interface and is not `dvr_no_external`.
    pub fn has_external(&self) -> bool {
        self.external_interface.is_some()
            && matches!(self.agent_mode, AgentMode::Dvr | AgentMode::DvrSnat)
    }
}

/// Why `name` cannot be a Linux network interface name, as the kernel's `dev_valid_name()`
/// (net/core/dev.c) judges it: 1 to 15 bytes (IFNAMSIZ 16 with the NUL), not `.` or `..`,
/// no `/`, `:` or whitespace. `:` has been refused since Linux 4.17 ("net: reject creation of
/// netdev names with colons"; TCX needs 6.6 anyway): `eth0:1` is an address label, not a
/// device, so it can never resolve to an ifindex.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 bytes, has {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(format!(
            "interface name {name:?} contains {c:?} (no '/', ':', NUL or whitespace)"
        ));
    }
    Ok(())
}

impl Element for Host {
    const KIND: &'static str = "host";
    const LIST: &'static str = "hosts";
    const KEY: &'static str = "name";

    fn read(r: &mut Reader<'_, '_>) -> Option<Self> {
        let name = r.req("name", conv_id);
        let agent_mode = match r.req("agent_mode", conv_string) {
            Some(mode) => AgentMode::parse(&mode).or_else(|| {
                r.error(
                    "agent_mode",
                    format!(
                        "unknown agent_mode {mode:?} (expected dvr, dvr_snat or dvr_no_external)"
                    ),
                );
                None
            }),
            None => None,
        };
        let tunnel_ip = r.req("tunnel_ip", conv_ipv4);
        let dvr_mac = r.req("dvr_mac", conv_mac);
        let external_interface = r.opt_nonempty("external_interface");
        Some(Host {
            name: name?,
            agent_mode: agent_mode?,
            tunnel_ip: tunnel_ip?,
            dvr_mac: dvr_mac?,
            external_interface,
        })
    }

    fn key(&self) -> &str {
        &self.name
    }
}

/// Tunnel ips are unicast and unique, DVR MACs too, external interfaces are Linux names.
/// A tunnel (underlay) address must be unicast.
pub fn check_tunnel_ip(t: Ipv4Addr) -> Result<(), String> {
    if t.is_unspecified() || t.is_multicast() || t.is_broadcast() || t.is_loopback() {
        return Err(format!("tunnel_ip {t} is not a unicast address"));
    }
    Ok(())
}

pub(super) fn check_hosts(out: &mut Report<'_>, hosts: &[Host]) {
    let mut tunnel_ips: HashMap<Ipv4Addr, &str> = HashMap::default();
    let mut macs: HashMap<Mac, &str> = HashMap::default();
    for h in hosts {
        if let Err(message) = check_tunnel_ip(h.tunnel_ip) {
            out.error("host", &h.name, "tunnel_ip", message);
        }
        match tunnel_ips.entry(h.tunnel_ip) {
            Entry::Occupied(o) => {
                let message = format!("tunnel_ip {} is also host {}'s", h.tunnel_ip, o.get());
                out.error("host", &h.name, "tunnel_ip", message);
            }
            Entry::Vacant(v) => {
                v.insert(&h.name);
            }
        }
        let text = format_mac(&h.dvr_mac);
        if is_multicast(&h.dvr_mac) || h.dvr_mac == [0; 6] {
            let message = format!("dvr_mac {text} is not a unicast MAC");
            out.error("host", &h.name, "dvr_mac", message);
        }
        match macs.entry(h.dvr_mac) {
            Entry::Occupied(o) => {
                let message = format!("dvr_mac {text} is also host {}'s", o.get());
                out.error("host", &h.name, "dvr_mac", message);
            }
            Entry::Vacant(v) => {
                v.insert(&h.name);
            }
        }
        if let Some(iface) = &h.external_interface
            && let Err(message) = check_ifname(iface)
        {
            out.error("host", &h.name, "external_interface", message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn host_names_tunnel_ips_and_dvr_macs_unique() {
        let errors = errors_after(|v| {
            push(
                v,
                "hosts",
                serde_json::json!({"name": "host-a", "agent_mode": "dvr", "tunnel_ip": "192.0.2.9", "dvr_mac": "fa:16:3f:00:00:0c"}),
            );
            push(
                v,
                "hosts",
                serde_json::json!({"name": "host-c", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1", "dvr_mac": "fa:16:3f:00:00:0b"}),
            );
        });
        assert_error(
            &errors,
            "host",
            "host-a",
            "name",
            "duplicate name (also hosts[0])",
        );
        assert_error(
            &errors,
            "host",
            "host-c",
            "tunnel_ip",
            "is also host host-a's",
        );
        assert_error(
            &errors,
            "host",
            "host-c",
            "dvr_mac",
            "is also host host-b's",
        );
    }

    #[test]
    fn host_dvr_mac_and_agent_mode_valid() {
        let errors = errors_after(|v| {
            let h = elem(v, "hosts", "name", "host-a");
            h["dvr_mac"] = "fa:16:3f:00:00".into();
            h["agent_mode"] = "legacy".into();
            h["tunnel_ip"] = "2001:db8::1".into();
            elem(v, "hosts", "name", "host-b")["dvr_mac"] = "01:00:5e:00:00:01".into();
        });
        assert_error(&errors, "host", "host-a", "dvr_mac", "invalid MAC");
        assert_error(
            &errors,
            "host",
            "host-a",
            "agent_mode",
            "unknown agent_mode \"legacy\"",
        );
        assert_error(&errors, "host", "host-a", "tunnel_ip", "IPv6");
        assert_error(&errors, "host", "host-b", "dvr_mac", "not a unicast MAC");
        // host-a did not parse: its ports' binding is not reported as unknown.
        assert!(!errors.iter().any(|e| e.field == "binding:host_id"));
    }

    #[test]
    fn host_tunnel_ip_unicast() {
        let errors = errors_after(|v| {
            elem(v, "hosts", "name", "host-b")["tunnel_ip"] = "0.0.0.0".into();
        });
        assert_error(
            &errors,
            "host",
            "host-b",
            "tunnel_ip",
            "0.0.0.0 is not a unicast address",
        );
    }

    #[test]
    fn host_external_interface_is_a_linux_name() {
        for (bad, text) in [
            ("eth/1", "contains '/'"),
            ("eth0:1", "contains ':'"),
            ("eth 1", "contains ' '"),
            ("eth\t1", "contains '\\t'"),
            (".", "not a valid interface name"),
            ("..", "not a valid interface name"),
            ("abcdefghijklmnop", "must be 1 to 15 bytes, has 16"),
        ] {
            let errors = errors_after(|v| {
                elem(v, "hosts", "name", "host-b")["external_interface"] = bad.into();
            });
            assert_error(&errors, "host", "host-b", "external_interface", text);
        }
        for good in ["abcdefghijklmno", "br-ex", "e", "eth0.100", "..."] {
            let mut v = fixture_value();
            elem(&mut v, "hosts", "name", "host-b")["external_interface"] = good.into();
            let s = state_of(&v);
            assert_eq!(
                s.host("host-b")
                    .and_then(|h| h.external_interface.as_deref()),
                Some(good)
            );
        }
    }

    #[test]
    fn host_has_external_needs_interface_and_mode() {
        let mut v = fixture_value();
        let s = state_of(&v);
        assert_eq!(s.host("host-a").map(Host::has_external), Some(false));
        assert_eq!(s.host("host-b").map(Host::has_external), Some(true));
        elem(&mut v, "hosts", "name", "host-b")["agent_mode"] = "dvr_no_external".into();
        elem(&mut v, "hosts", "name", "host-a")["external_interface"] = "eth1".into();
        // A dvr_no_external host cannot hold the router's SNAT port.
        elem(&mut v, "ports", "id", "snat1")["binding:host_id"] = "".into();
        let s = state_of(&v);
        assert_eq!(s.host("host-a").map(Host::has_external), Some(true));
        assert_eq!(s.host("host-b").map(Host::has_external), Some(false));
    }
}
