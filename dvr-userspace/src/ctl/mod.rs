//! dvrctl subcommands, one file each. They read a host's pinned maps from any namespace.
pub mod apply;
pub mod ha;
pub mod hosts;
pub mod monitor;
pub mod show;
pub mod trace;

use std::net::Ipv4Addr;

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An address stored in network order (`*_be` fields).
pub fn ip_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// A tunnel address stored in host order (`*_host` fields); None for 0 (local).
pub fn ip_host(v: u32) -> Option<Ipv4Addr> {
    (v != 0).then(|| Ipv4Addr::from(v))
}
