//! Floating IPs (1:1 NAT on the host of the port), the external gateway's learned MAC, and
//! connection tracking that holds the translation of every flow in both directions.
//!
//! Conntrack keys carry a zone: [`ZONE_EXTERNAL`] for tuples seen on the external network,
//! the VNI of the VM's network for tuples seen on the tenant side, so tenants that reuse
//! address ranges never share an entry. A flow has two entries, one per direction; each
//! names its peer (`peer_zone` + `nat_ip`), so the agent's GC deletes both together.

pub const FIPS_MAX: u32 = 65536;

pub const EXT_NEIGH_MAX: u32 = 256;

pub const EXT_DENY_MAX: u32 = 16384;

/// Default capacity (entries; two per flow), overridable at load time.
pub const CT_MAX: u32 = 262_144;

/// Zone of tuples seen on the external network.
pub const ZONE_EXTERNAL: u32 = 0;

/// Served on this host: ARP answered, DNAT here.
pub const FIP_LOCAL: u32 = 1;
/// Served on another host; its port is on one of this host's routers (hairpin steering).
pub const FIP_REMOTE: u32 = 2;
/// Allocated, no port: traffic to it is dropped and counted.
pub const FIP_UNASSOCIATED: u32 = 4;
/// Served on this (SNAT) host for a port elsewhere: a port of a `dvr_no_external` host or
/// an unbound port (VIP). ARP answered and NAT done here; the VM is reached over the tunnel
/// (`tunnel_ip_host`, or the VIP's learned location).
pub const FIP_CENTRAL: u32 = 8;
/// The FIP's port is unbound: its address is a VIP that VMs hold in turn (keepalived), and
/// its location is the one the datapath learned from ARP ([`VIP_LOC`]).
pub const FIP_VIP: u32 = 16;
/// Set with [`FIP_CENTRAL`] when the FIP's router (`FipEntry::router_id`) is HA: served
/// (ARP answered, DNAT done) only while the router's fence
/// ([`crate::maps::DVR_HA_FENCE`]) is live, else dropped as `drop_snat_standby`.
pub const FIP_HA: u32 = 32;
/// The FIP's router is `admin_state_up: false`: inbound traffic to the FIP is dropped as
/// `drop_router_down`, and nothing goes out through it.
pub const FIP_ROUTER_DOWN: u32 = 64;

pub const VIP_MAX: u32 = 16384;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct VipKey {
    pub vni: u32,
    pub ip_be: u32,
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
}
crate::assert_size!(VipKey, 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipCandidate {
    /// Local tap of the candidate port, 0 when it is on another host.
    pub ifindex: u32,
    /// Tunnel address of the candidate's host (host order), 0 when local.
    pub tunnel_ip_host: u32,
}
crate::assert_size!(VipCandidate, 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipLoc {
    /// MAC the VIP answers with (its holder's).
    pub mac: crate::Mac,
    pub _pad: [u8; 2],
    pub ifindex: u32,
    pub tunnel_ip_host: u32,
    /// bpf_ktime_get_coarse_ns() of the ARP it was learned from.
    pub learned_ns: u64,
}
crate::assert_size!(VipLoc, 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FipEntry {
    /// The port's fixed IP, network order (0 when unassociated).
    pub fixed_ip_be: u32,
    /// VNI of the port's network.
    pub vni: u32,
    /// Router of the FIP (fnv1a32 of its id).
    pub router_id: u32,
    /// Local tap ifindex (FIP_LOCAL), else 0.
    pub ifindex: u32,
    /// Tunnel address of the serving host (FIP_REMOTE), host order, else 0.
    pub tunnel_ip_host: u32,
    pub port_mac: crate::Mac,
    /// Gateway MAC of the port's subnet: source MAC of translated inbound frames.
    pub gw_mac: crate::Mac,
    /// `FIP_*`.
    pub flags: u32,
    /// MTU of the port's network: an inbound packet longer than this is fragmented, or
    /// answered with ICMP fragmentation needed when it has DF set.
    pub mtu: u16,
    /// MTU of the floating IP's (external) network, for packets the VM sends out.
    pub ext_mtu: u16,
}
crate::assert_size!(FipEntry, 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FipSrc {
    /// The floating IP, network order.
    pub fip_be: u32,
    /// Gateway of the floating network's subnet (next hop), network order.
    pub ext_gw_ip_be: u32,
    pub router_id: u32,
    /// `FIP_HA` when the FIP is served centrally for an HA router: a VM sending through it
    /// from a tap of this host is served only under the router's fence.
    pub flags: u32,
    /// MTU of the floating IP's (external) network.
    pub ext_mtu: u16,
    pub _pad: [u8; 2],
}
crate::assert_size!(FipSrc, 20);

/// Neighbour state: MAC all zero until learned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Neigh {
    pub mac: crate::Mac,
    /// 1 once learned.
    pub learned: u16,
    /// bpf_ktime_get_coarse_ns() of the last ARP seen from it.
    pub seen_ns: u64,
}
crate::assert_size!(Neigh, 16);

/// A flow direction as seen at the point of lookup. Ports in network order; for ICMP echo
/// both ports hold the echo identifier, so request and reply share the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct CtKey {
    pub zone: u32,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(CtKey, 20);

/// Capacity of the IPv6 conntrack table (entries; two per flow). IPv6 is never translated,
/// so it holds security group flows only.
pub const CT6_MAX: u32 = 131_072;

/// A flow direction in `DVR_CT6` (IPv6), as [`CtKey`]: zone `sg::SG_ZONE | tap ifindex`,
/// addresses as in the packet, ports in network order (ICMPv6 echo: the identifier in
/// both). Its value is a [`CtEntry`] of kind `CT_SG` or `CT_SG_REPLY` whose address fields
/// are unused (0): nothing is translated, so the other direction is always
/// [`CtKey6::reversed`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct CtKey6 {
    pub zone: u32,
    pub saddr: crate::ip6::Ip6,
    pub daddr: crate::ip6::Ip6,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
crate::assert_size!(CtKey6, 44);
// The datapath loads a quoted packet's two addresses into a key in one go.
const _: () =
    assert!(core::mem::offset_of!(CtKey6, daddr) == core::mem::offset_of!(CtKey6, saddr) + 16);

impl CtKey6 {
    /// The key of the other direction of the flow (same zone).
    pub fn reversed(&self) -> CtKey6 {
        CtKey6 {
            zone: self.zone,
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// Turn this key into the other direction's, in place.
    pub fn reverse(&mut self) {
        core::mem::swap(&mut self.saddr, &mut self.daddr);
        core::mem::swap(&mut self.sport_be, &mut self.dport_be);
    }
}

/// Rewrite the destination address to `nat_ip` (packets towards the VM).
pub const CT_DNAT: u8 = 1;
/// Rewrite the source address to `nat_ip` (packets from the VM).
pub const CT_SNAT: u8 = 2;
/// Set on both entries of a flow between two VMs of one router through a FIP.
pub const CT_HAIRPIN: u8 = 0x10;
/// Set on both entries of a port-address translated flow (SNAT host); `fip_be` then holds
/// the router's external IP and `fixed_be` the VM's address.
pub const CT_PAT: u8 = 0x20;
/// A security group entry (zone `sg::SG_ZONE | tap ifindex`), original direction: admitted
/// by a rule of the port's groups, `_reserved` holds that rule's id and `fixed_be` what the
/// rules matched (destination port, or ICMP type and code, as `SgRuleKey::port_be`) for the
/// agent's re-check. `nat_ip_be` holds the entry's own source address so that
/// [`CtKey::peer`] is the reversed tuple; nothing is translated.
pub const CT_SG: u8 = 0x40;
/// A security group entry, reply direction: admitted because its flow was.
pub const CT_SG_REPLY: u8 = 0x80;
/// With `CT_SG` / `CT_SG_REPLY`: the flow was admitted by an ingress rule (it came to the
/// VM first); without it, by an egress rule.
pub const CT_SG_INGRESS: u8 = 0x08;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// Address written by the translation (network order).
    pub nat_ip_be: u32,
    /// The floating IP and fixed IP this flow was translated for (purge check).
    pub fip_be: u32,
    pub fixed_be: u32,
    /// Zone of the other direction's entry.
    pub peer_zone: u32,
    /// `CT_DNAT` or `CT_SNAT`, plus `CT_HAIRPIN`.
    pub kind: u8,
    /// OR of the TCP flags seen in this direction.
    pub tcp_flags: u8,
    /// Port (or ICMP echo id) written by the translation, network order; 0 = ports kept
    /// (1:1 floating IP NAT). Set by port-address translation on the SNAT host.
    pub nat_port_be: u16,
    /// Reserved for upgrades without a map conversion.
    pub _reserved: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}
crate::assert_size!(CtEntry, 56);

impl CtKey {
    /// The key of the other direction of the flow this entry belongs to.
    pub fn peer(&self, e: &CtEntry) -> CtKey {
        let port = |p: u16| if e.nat_port_be != 0 { e.nat_port_be } else { p };
        let (saddr_be, daddr_be, sport_be, dport_be) = if e.kind & CT_DNAT != 0 {
            // Entry seen as (src -> FIP); the reply leaves the VM as (fixed -> src).
            (
                e.nat_ip_be,
                self.saddr_be,
                port(self.dport_be),
                self.sport_be,
            )
        } else {
            // Entry seen as (fixed -> dst); the reply arrives as (dst -> FIP).
            (
                self.daddr_be,
                e.nat_ip_be,
                self.dport_be,
                port(self.sport_be),
            )
        };
        let (sport_be, dport_be) = if self.proto == 1 {
            // ICMP echo: the identifier stands in both port slots.
            let id = if e.kind & CT_DNAT != 0 {
                sport_be
            } else {
                dport_be
            };
            (id, id)
        } else {
            (sport_be, dport_be)
        };
        CtKey {
            zone: e.peer_zone,
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

crate::user_pod!(
    FipEntry,
    FipSrc,
    Neigh,
    CtKey,
    CtKey6,
    CtEntry,
    VipKey,
    VipCandidate,
    VipLoc
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_with_port_translation() {
        // VM 10:5555 -> E 80 leaves as G:40001 -> E:80; the reply is E:80 -> G:40001.
        let k = CtKey {
            zone: 101,
            saddr_be: 10,
            daddr_be: 99,
            sport_be: 5555,
            dport_be: 80,
            proto: 6,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: 7,
            nat_port_be: 40001,
            peer_zone: 0,
            kind: CT_SNAT,
            ..Default::default()
        };
        let p = k.peer(&e);
        assert_eq!(
            p,
            CtKey {
                zone: 0,
                saddr_be: 99,
                daddr_be: 7,
                sport_be: 80,
                dport_be: 40001,
                proto: 6,
                _pad: [0; 3]
            }
        );
        let pe = CtEntry {
            nat_ip_be: 10,
            nat_port_be: 5555,
            peer_zone: 101,
            kind: CT_DNAT,
            ..Default::default()
        };
        assert_eq!(p.peer(&pe), k);
        // ICMP echo id 9 translated to 300: both slots carry the id.
        let k = CtKey {
            zone: 101,
            saddr_be: 10,
            daddr_be: 99,
            sport_be: 9,
            dport_be: 9,
            proto: 1,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: 7,
            nat_port_be: 300,
            peer_zone: 0,
            kind: CT_SNAT,
            ..Default::default()
        };
        let p = k.peer(&e);
        assert_eq!((p.sport_be, p.dport_be, p.daddr_be), (300, 300, 7));
        let pe = CtEntry {
            nat_ip_be: 10,
            nat_port_be: 9,
            peer_zone: 101,
            kind: CT_DNAT,
            ..Default::default()
        };
        assert_eq!(p.peer(&pe), k);
    }

    #[test]
    fn fip_flags_are_distinct_bits() {
        let flags = [
            FIP_LOCAL,
            FIP_REMOTE,
            FIP_UNASSOCIATED,
            FIP_CENTRAL,
            FIP_VIP,
            FIP_HA,
        ];
        for (i, a) in flags.iter().enumerate() {
            assert!(a.is_power_of_two());
            for b in &flags[i + 1..] {
                assert_eq!(a & b, 0);
            }
        }
    }

    #[test]
    fn peer_of_peer_is_self() {
        let k = CtKey {
            zone: 0,
            saddr_be: 1,
            daddr_be: 2,
            sport_be: 10,
            dport_be: 20,
            proto: 6,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: 3,
            peer_zone: 101,
            kind: CT_DNAT,
            ..Default::default()
        };
        let p = k.peer(&e);
        assert_eq!(
            p,
            CtKey {
                zone: 101,
                saddr_be: 3,
                daddr_be: 1,
                sport_be: 20,
                dport_be: 10,
                proto: 6,
                _pad: [0; 3]
            }
        );
        let pe = CtEntry {
            nat_ip_be: 2,
            peer_zone: 0,
            kind: CT_SNAT,
            ..Default::default()
        };
        assert_eq!(p.peer(&pe), k);
    }
}
