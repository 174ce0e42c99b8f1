//! `dvrctl monitor`: stream the datapath's drop events (rate-limited per CPU in the
//! datapath) with their reasons, until a count or a deadline is reached.
use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{fmt_mac, ip_be};
use crate::maps::{MapsError, open_events};
use dvr_common::{events::DropEvent, stats::Stat};

#[derive(Serialize)]
pub struct EventRow {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub reason: &'static str,
    pub describe: &'static str,
    pub len: u32,
    pub ethertype: String,
    pub proto: u8,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_mac: String,
    pub dst_mac: String,
}

fn row(e: &DropEvent) -> EventRow {
    let stat = Stat::ALL.get(e.reason as usize).copied();
    let (src, dst) = match e.ethertype {
        0x0800 => (
            Some(IpAddr::V4(ip_be(e.saddr_be))),
            Some(IpAddr::V4(ip_be(e.daddr_be))),
        ),
        0x86dd => (
            Some(IpAddr::V6(Ipv6Addr::from(e.saddr6))),
            Some(IpAddr::V6(Ipv6Addr::from(e.daddr6))),
        ),
        _ => (None, None),
    };
    EventRow {
        ts_ns: e.ts_ns,
        ifindex: e.ifindex,
        reason: stat.map_or("unknown", Stat::as_str),
        describe: stat.map_or("", Stat::describe),
        len: e.len,
        ethertype: format!("0x{:04x}", e.ethertype),
        proto: e.proto,
        src,
        dst,
        src_mac: fmt_mac(e.src_mac),
        dst_mac: fmt_mac(e.dst_mac),
    }
}

/// One event as a line of text. (For `drop_sg_ingress` and a port-down drop of a packet
/// towards the VM, the interface is the tap it was to leave by.)
fn line(r: &EventRow) -> String {
    format!(
        "if#{:<4} {:<28} {} -> {}  {} -> {}  proto {} len {}",
        r.ifindex,
        r.reason,
        r.src.map_or_else(|| r.ethertype.clone(), |a| a.to_string()),
        r.dst.map_or_else(|| "-".into(), |a| a.to_string()),
        r.src_mac,
        r.dst_mac,
        r.proto,
        r.len
    )
}

/// Print events from the host whose pins are in `dir` until `count` events were printed or
/// `timeout` passed (either may be unlimited).
pub fn monitor(
    dir: &Path,
    json: bool,
    count: Option<usize>,
    timeout: Option<Duration>,
) -> Result<usize, MapsError> {
    let mut ring = open_events(dir)?;
    let start = Instant::now();
    let mut seen = 0;
    loop {
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the record is a DropEvent written whole by the datapath; read_unaligned
            // copes with the ring's 8-byte record alignment.
            let ev: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let r = row(&ev);
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!("{}", line(&r));
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(seen);
            }
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_group_drops_are_named() {
        for (stat, text) in [
            (Stat::DropSgEgress, "drop_sg_egress"),
            (Stat::DropSgIngress, "drop_sg_ingress"),
            (Stat::DropPortDown, "drop_port_down"),
        ] {
            let ev = DropEvent {
                ifindex: 7,
                reason: stat as u32,
                len: 74,
                ethertype: 0x0800,
                proto: 6,
                saddr_be: u32::from_ne_bytes([10, 0, 0, 5]),
                daddr_be: u32::from_ne_bytes([10, 0, 0, 9]),
                ..Default::default()
            };
            let r = row(&ev);
            assert_eq!(r.reason, text);
            assert!(r.describe.starts_with(if stat == Stat::DropPortDown {
                "port"
            } else {
                "security groups"
            }));
            let l = line(&r);
            assert!(
                l.starts_with(&format!("if#7    {text}")) && l.contains("10.0.0.5 -> 10.0.0.9"),
                "{l}"
            );
        }
        let v6 = row(&DropEvent {
            reason: Stat::DropSpoofIp as u32,
            ethertype: 0x86dd,
            proto: 17,
            saddr6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            daddr6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            ..Default::default()
        });
        assert!(line(&v6).contains("fd00::5 -> fd00::9"), "{}", line(&v6));
        let unknown = row(&DropEvent {
            reason: 9999,
            ..Default::default()
        });
        assert_eq!(unknown.reason, "unknown");
    }
}
