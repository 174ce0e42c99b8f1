//! The VXLAN collect_md device (`dvr-vx`) the tunnel program runs on: created as
//! `ip link add dvr-vx type vxlan external dstport 4789 nolearning` would, brought up, and
//! adopted when it already exists as a VXLAN collect_md device. Any other device of that
//! name is left alone.
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkInfo};

use super::{
    error::AttachError,
    netlink::{Link, Rtnl},
};

/// The VXLAN device the agent creates in the host's network namespace.
pub const TUNNEL_DEV: &str = "dvr-vx";
pub use dvr_common::config::VXLAN_PORT;

/// IFLA_LINKINFO of the device, attribute for attribute what iproute2 sends for
/// `type vxlan external dstport 4789 nolearning` (ip/iplink_vxlan.c): COLLECT_METADATA 1,
/// LEARNING 0, PORT 4789. Everything else (MTU, TTL, UDP checksums ...) is the kernel's
/// default, as before.
fn vxlan_info() -> Vec<LinkInfo> {
    vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::CollectMetadata(true),
            InfoVxlan::Learning(false),
            InfoVxlan::Port(VXLAN_PORT),
        ])),
    ]
}

/// A VXLAN device in collect_md mode (`ip -d link` shows `vxlan external`): the kind of
/// device the agent makes, and the only kind it adopts or removes.
fn is_collect_md_vxlan(link: &Link) -> bool {
    link.kind == Some(InfoKind::Vxlan)
        && matches!(&link.data, Some(InfoData::Vxlan(attrs))
            if attrs.contains(&InfoVxlan::CollectMetadata(true)))
}

fn dev_err(msg: String) -> AttachError {
    AttachError::Device {
        dev: TUNNEL_DEV.into(),
        msg,
    }
}

/// Create (or adopt) the VXLAN collect_md device and bring it up; returns its ifindex.
pub fn ensure_tunnel_dev() -> Result<u32, AttachError> {
    let mut rtnl = Rtnl::open().map_err(|e| dev_err(format!("create failed: {e}")))?;
    match rtnl.link(TUNNEL_DEV) {
        Ok(Some(link)) => {
            if !is_collect_md_vxlan(&link) {
                return Err(dev_err(
                    "exists and is not a VXLAN collect_md (external) device; not touching it"
                        .into(),
                ));
            }
        }
        // Not there (or not readable): create it; if something is in the way, that fails.
        Ok(None) | Err(_) => rtnl
            .add_link(TUNNEL_DEV, vxlan_info())
            .map_err(|e| dev_err(format!("create failed: {e}")))?,
    }
    rtnl.set_up(TUNNEL_DEV)
        .map_err(|e| dev_err(format!("set up failed: {e}")))?;
    match rtnl.link(TUNNEL_DEV) {
        Ok(Some(link)) => Ok(link.index),
        _ => Err(dev_err("vanished after creation".into())),
    }
}

/// Turn IPv4 forwarding on for the device (`net.ipv4.conf.dvr-vx.forwarding`): the
/// datapath's FIB lookups for the tunnel's next hop are made as from this device, and the
/// kernel's helper answers them only for a device that forwards. Nothing reaches the host
/// stack through the device to be forwarded: the tunnel program takes every frame.
pub fn enable_tunnel_forwarding() -> Result<(), AttachError> {
    let path = format!("/proc/sys/net/ipv4/conf/{TUNNEL_DEV}/forwarding");
    std::fs::write(&path, "1").map_err(|e| dev_err(format!("writing {path}: {e}")))
}

/// Delete the device if it is a VXLAN collect_md device (as the agent makes it); true when
/// it was deleted, false when there is no such device or it is another kind of device.
pub fn remove_tunnel_dev() -> Result<bool, AttachError> {
    let Ok(mut rtnl) = Rtnl::open() else {
        return Ok(false);
    };
    match rtnl.link(TUNNEL_DEV) {
        Ok(Some(link)) if is_collect_md_vxlan(&link) => rtnl
            .del_link(link.index)
            .map(|()| true)
            .map_err(|e| dev_err(e.to_string())),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_what_ip_link_add_external_nolearning_creates() {
        assert_eq!(
            vxlan_info(),
            [
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::CollectMetadata(true),
                    InfoVxlan::Learning(false),
                    InfoVxlan::Port(4789),
                ])),
            ]
        );
    }

    #[test]
    fn adopts_only_a_collect_md_vxlan_device() {
        let link = |kind, data| Link {
            index: 5,
            name: TUNNEL_DEV.into(),
            kind,
            data,
            ..Link::default()
        };
        let vxlan = |attrs| Some(InfoData::Vxlan(attrs));
        // As the kernel reports the device the agent made (other settings included).
        assert!(is_collect_md_vxlan(&link(
            Some(InfoKind::Vxlan),
            vxlan(vec![
                InfoVxlan::Ttl(0),
                InfoVxlan::Learning(false),
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(4789),
            ])
        )));
        // dstport and learning are not checked (they never were).
        assert!(is_collect_md_vxlan(&link(
            Some(InfoKind::Vxlan),
            vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Learning(true),
                InfoVxlan::Port(8472),
            ])
        )));
        // A VXLAN device with a VNI, a VXLAN device without data, another kind.
        assert!(!is_collect_md_vxlan(&link(
            Some(InfoKind::Vxlan),
            vxlan(vec![InfoVxlan::Id(42), InfoVxlan::CollectMetadata(false)])
        )));
        assert!(!is_collect_md_vxlan(&link(Some(InfoKind::Vxlan), None)));
        assert!(!is_collect_md_vxlan(&link(Some(InfoKind::Dummy), None)));
        assert!(!is_collect_md_vxlan(&link(None, None)));
    }
}
