//! dvrctl subcommands, one file each. They read a host's pinned maps from any namespace.
pub mod apply;
pub mod ha;
pub mod hosts;
pub mod monitor;
pub mod names;
pub mod sg;
pub mod show;
pub mod trace;

use std::{fmt::Write as _, net::Ipv4Addr};

use serde::Serialize;

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

/// An IP protocol's name (Neutron's spelling), else its number.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        33 => "dccp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "icmpv6".into(),
        89 => "ospf".into(),
        112 => "vrrp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// Rows as JSON, or as a table with `header` and columns padded to their widest cell.
pub fn render<T: Serialize>(
    json: bool,
    rows: &[T],
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> String {
    if json {
        return serde_json::to_string(rows).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let table: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(cells))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    s
}
