//! Packet captures: `tcpdump --immediate-mode -nn -e -v -l -U` in a network namespace, read line by line, and a
//! parser for the bits the tests look at (VXLAN VNI, Ethernet addresses, TTLs).
//!
//! tcpdump's `-v` output spreads one packet over several lines, and the inner Ethernet header of
//! a VXLAN packet starts at column 0, so packets are split on the leading timestamp
//! (`HH:MM:SS.micros`) rather than on indentation.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{ChildGuard, POLL, lock};

/// How long tcpdump may take to report "listening on".
pub const CAPTURE_START_DEADLINE: Duration = Duration::from_secs(10);

/// A running tcpdump. Stop it with [`Capture::stop`]; dropping it also stops it (by pid).
pub struct Capture {
    label: String,
    guard: Option<ChildGuard>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Starts tcpdump on `iface` inside netns `ns` with a pcap `filter` (may be empty) and returns
    /// once tcpdump says it is listening, so that nothing sent afterwards is missed.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Result<Capture> {
        Capture::start_opts(ns, iface, filter, false)
    }

    /// [`Capture::start`] that also prints each packet's bytes after the link header in hex
    /// (`-x`), for fields tcpdump does not print (e.g. the ARP sender MAC): see
    /// [`Packet::hex_bytes`] and [`Packet::arp`].
    pub fn start_hex(ns: &str, iface: &str, filter: &str) -> Result<Capture> {
        Capture::start_opts(ns, iface, filter, true)
    }

    fn start_opts(ns: &str, iface: &str, filter: &str, hex: bool) -> Result<Capture> {
        let label = format!("tcpdump -i {iface} '{filter}' in netns {ns}");
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs tcpdump (no fork), so the child's pid is tcpdump's.
        // --immediate-mode: libpcap hands each packet over at once. Without it packets wait in
        // the kernel ring's current block (up to tcpdump's 1 s timeout) and those still there
        // when tcpdump is stopped are never printed: a capture stopped right after the last
        // packet of a test then missed it.
        cmd.args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-i",
            iface,
            "--immediate-mode",
            "-nn",
            "-e",
            "-v",
            "-l",
            "-U",
        ]);
        if hex {
            cmd.arg("-x");
        }
        if !filter.trim().is_empty() {
            cmd.arg(filter);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label}"))?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let mut guard = ChildGuard::new(child, label.clone());

        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = out {
            let lines = Arc::clone(&lines);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lock(&lines).push(line);
                }
            }));
        }
        let (tx, rx) = mpsc::channel::<()>();
        if let Some(err) = err {
            let stderr = Arc::clone(&stderr);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("listening on") {
                        let _ = tx.send(());
                    }
                    let mut s = lock(&stderr);
                    s.push_str(&line);
                    s.push('\n');
                }
            }));
        }
        let start = Instant::now();
        loop {
            match rx.recv_timeout(POLL) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = guard.wait_deadline(Duration::from_secs(2))?;
                    bail!(
                        "{label} ended before listening ({status:?}): {}",
                        lock(&stderr).trim()
                    );
                }
            }
            if let Some(status) = guard.try_wait()? {
                bail!(
                    "{label} exited ({status}) before listening: {}",
                    lock(&stderr).trim()
                );
            }
            if start.elapsed() >= CAPTURE_START_DEADLINE {
                bail!(
                    "{label} did not report 'listening on' within {CAPTURE_START_DEADLINE:?}: {}",
                    lock(&stderr).trim()
                );
            }
        }
        Ok(Capture {
            label,
            guard: Some(guard),
            lines,
            stderr,
            readers,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Raw output lines seen so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    /// Packets seen so far.
    pub fn packets(&self) -> Vec<Packet> {
        parse_packets(&self.lines())
    }

    /// Waits until at least `n` captured packets satisfy `pred`; returns them.
    pub fn wait_for_count(
        &self,
        what: &str,
        n: usize,
        deadline: Duration,
        pred: impl Fn(&Packet) -> bool,
    ) -> Result<Vec<Packet>> {
        let start = Instant::now();
        loop {
            // A packet is only complete once the next one (or the end) follows; poll a little
            // past the match so multi-line packets are whole. tcpdump -l flushes per packet,
            // so the lines of one packet arrive together in practice.
            let found: Vec<Packet> = self.packets().into_iter().filter(|p| pred(p)).collect();
            if found.len() >= n {
                return Ok(found);
            }
            if start.elapsed() >= deadline {
                bail!(
                    "{}: saw {} of {n} packets matching {what} within {deadline:?}; capture:\n{}",
                    self.label,
                    found.len(),
                    self.lines().join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until a captured packet satisfies `pred`; returns it.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Packet) -> bool,
    ) -> Result<Packet> {
        let mut v = self.wait_for_count(what, 1, deadline, pred)?;
        match v.pop() {
            Some(p) => Ok(p),
            None => bail!("{}: no packet matching {what}", self.label),
        }
    }

    /// Stops tcpdump (SIGTERM by pid, bounded wait, SIGKILL) and returns every packet it printed.
    pub fn stop(mut self) -> Result<Vec<Packet>> {
        self.shutdown()?;
        Ok(self.packets())
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(mut guard) = self.guard.take() {
            guard.stop(Duration::from_secs(5))?;
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(())
    }

    /// tcpdump's stderr so far (its "N packets captured" summary after stop).
    pub fn stderr_text(&self) -> String {
        lock(&self.stderr).clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("dvr-tests: stopping {}: {e:#}", self.label);
        }
    }
}

/// One packet as tcpdump printed it (all its lines joined with '\n').
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub text: String,
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Packet {
    pub fn contains(&self, s: &str) -> bool {
        self.text.contains(s)
    }

    /// True for a VXLAN packet (tcpdump decodes UDP port 4789 as VXLAN).
    pub fn is_vxlan(&self) -> bool {
        self.vni().is_some()
    }

    /// The VXLAN network identifier, if this is a VXLAN packet.
    pub fn vni(&self) -> Option<u32> {
        number_after(&self.text, "vni ")
    }

    /// Every `ttl N` in order: outer IP first, then the inner one for tunnelled packets.
    pub fn ttls(&self) -> Vec<u8> {
        numbers_after(&self.text, "ttl ")
            .into_iter()
            .filter_map(|n| u8::try_from(n).ok())
            .collect()
    }

    /// The TTL of the innermost IPv4 header.
    pub fn inner_ttl(&self) -> Option<u8> {
        self.ttls().last().copied()
    }

    /// Every `src > dst` Ethernet address pair, outermost first (needs `-e`).
    pub fn eth_pairs(&self) -> Vec<(String, String)> {
        let tokens: Vec<&str> = self.text.split_whitespace().collect();
        let mut pairs = Vec::new();
        for w in tokens.windows(3) {
            if let [a, ">", b] = w {
                let b = b.trim_end_matches([',', ':']);
                if is_mac(a) && is_mac(b) {
                    pairs.push((a.to_ascii_lowercase(), b.to_ascii_lowercase()));
                }
            }
        }
        pairs
    }

    /// The outer Ethernet `(src, dst)`.
    pub fn outer_eth(&self) -> Option<(String, String)> {
        self.eth_pairs().into_iter().next()
    }

    /// The Ethernet `(src, dst)` of the frame inside a VXLAN packet.
    pub fn inner_eth(&self) -> Option<(String, String)> {
        let at = self.text.find("vni ")?;
        Packet {
            text: self.text[at..].to_string(),
        }
        .eth_pairs()
        .into_iter()
        .next()
    }

    /// The innermost Ethernet `(src, dst)`: the inner frame of a VXLAN packet, else the outer one.
    pub fn innermost_eth(&self) -> Option<(String, String)> {
        self.eth_pairs().into_iter().last()
    }

    /// Every IPv6 `hlim N` in order: the outer header first (an IPv6 underlay), then inner.
    pub fn hop_limits(&self) -> Vec<u8> {
        numbers_after(&self.text, "hlim ")
            .into_iter()
            .filter_map(|n| u8::try_from(n).ok())
            .collect()
    }

    pub fn is_icmp6_echo_request(&self) -> bool {
        self.contains("ICMP6, echo request")
    }

    pub fn is_icmp6_echo_reply(&self) -> bool {
        self.contains("ICMP6, echo reply")
    }

    pub fn is_icmp_echo_request(&self) -> bool {
        self.contains("ICMP echo request")
    }

    pub fn is_icmp_echo_reply(&self) -> bool {
        self.contains("ICMP echo reply")
    }

    /// An IPv4 `src > dst` conversation appears in the packet (inner or outer).
    pub fn has_ips(&self, src: &str, dst: &str) -> bool {
        self.text.contains(&format!("{src} > {dst}:"))
    }

    /// An ARP request "who-has `target` tell `sender`" appears in the packet (tcpdump inserts
    /// "(target MAC)" after the target when the request carries a non-zero one).
    pub fn is_arp_request(&self, target: &str, sender: &str) -> bool {
        self.arp_requests()
            .iter()
            .any(|(t, s)| t == target && s == sender)
    }

    /// Every ARP request in the packet as `(target ip, sender ip)`.
    pub fn arp_requests(&self) -> Vec<(String, String)> {
        let tokens: Vec<&str> = self.text.split_whitespace().collect();
        let mut out = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if *t != "who-has" {
                continue;
            }
            let Some(target) = tokens.get(i + 1) else {
                continue;
            };
            let mut j = i + 2;
            if tokens.get(j).is_some_and(|t| t.starts_with('(')) {
                j += 1;
            }
            if tokens.get(j) == Some(&"tell")
                && let Some(sender) = tokens.get(j + 1)
            {
                out.push((target.to_string(), sender.trim_end_matches(',').to_string()));
            }
        }
        out
    }
}

/// The fields of an ARP packet (Ethernet/IPv4), from a hex capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: String,
    pub spa: std::net::Ipv4Addr,
    pub tha: String,
    pub tpa: std::net::Ipv4Addr,
}

impl Arp {
    /// A gratuitous ARP request: sender IP = target IP.
    pub fn is_gratuitous(&self) -> bool {
        self.op == 1 && self.spa == self.tpa
    }
}

impl Packet {
    /// The bytes after the link header, from `-x` hex lines (empty without them).
    pub fn hex_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in self.text.lines() {
            let line = line.trim();
            let Some((offset, rest)) = line.split_once(':') else {
                continue;
            };
            if !offset.starts_with("0x") || !offset[2..].chars().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            for group in rest.split_whitespace() {
                if group.len() % 2 != 0 || !group.chars().all(|c| c.is_ascii_hexdigit()) {
                    break;
                }
                for i in (0..group.len()).step_by(2) {
                    if let Ok(b) = u8::from_str_radix(&group[i..i + 2], 16) {
                        out.push(b);
                    }
                }
            }
        }
        out
    }

    /// The ARP fields of an Ethernet/IPv4 ARP packet captured with [`Capture::start_hex`].
    pub fn arp(&self) -> Option<Arp> {
        if !self.contains("ethertype ARP") {
            return None;
        }
        let b = self.hex_bytes();
        if b.len() < 28 || b[0..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let mac = |s: &[u8]| {
            s.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let ip = |s: &[u8]| std::net::Ipv4Addr::new(s[0], s[1], s[2], s[3]);
        Some(Arp {
            op: u16::from_be_bytes([b[6], b[7]]),
            sha: mac(&b[8..14]),
            spa: ip(&b[14..18]),
            tha: mac(&b[18..24]),
            tpa: ip(&b[24..28]),
        })
    }

    /// Every ARP reply in the packet as `(sender ip, sender mac)` ("Reply X is-at M").
    pub fn arp_replies(&self) -> Vec<(String, String)> {
        let tokens: Vec<&str> = self.text.split_whitespace().collect();
        let mut out = Vec::new();
        for w in tokens.windows(4) {
            if let ["Reply", ip, "is-at", mac] = w {
                let mac = mac.trim_end_matches(',');
                if is_mac(mac) {
                    out.push((ip.to_string(), mac.to_ascii_lowercase()));
                }
            }
        }
        out
    }
}

/// Splits tcpdump output lines into packets: a packet starts at a line beginning with a
/// `HH:MM:SS.frac` timestamp.
pub fn parse_packets(lines: &[String]) -> Vec<Packet> {
    let mut packets: Vec<Packet> = Vec::new();
    for line in lines {
        // tcpdump prints an empty line when it exits.
        if line.trim().is_empty() {
            continue;
        }
        if starts_with_timestamp(line) || packets.is_empty() {
            packets.push(Packet { text: line.clone() });
        } else if let Some(p) = packets.last_mut() {
            p.text.push('\n');
            p.text.push_str(line);
        }
    }
    packets
}

fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 9
        && b[0].is_ascii_digit()
        && b[1].is_ascii_digit()
        && b[2] == b':'
        && b[3].is_ascii_digit()
        && b[4].is_ascii_digit()
        && b[5] == b':'
        && b[6].is_ascii_digit()
        && b[7].is_ascii_digit()
        && b[8] == b'.'
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(key) {
        // Only whole words: "ttl " must not match inside another word.
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        rest = &rest[at + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if boundary && let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

fn number_after(text: &str, key: &str) -> Option<u32> {
    numbers_after(text, key)
        .into_iter()
        .next()
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN_ICMP: &str = "\
17:46:12.221694 1a:e9:fa:3a:9c:0e > 12:04:28:7a:6b:9d, ethertype IPv4 (0x0800), length 148: (tos 0x0, ttl 64, id 31440, offset 0, flags [none], proto UDP (17), length 134)
    192.0.2.11.38422 > 192.0.2.12.4789: VXLAN, flags [I] (0x08), vni 4242
8e:88:fc:6f:81:15 > e6:04:2f:06:5b:30, ethertype IPv4 (0x0800), length 98: (tos 0x0, ttl 63, id 60873, offset 0, flags [DF], proto ICMP (1), length 84)
    198.51.100.1 > 198.51.100.2: ICMP echo request, id 10177, seq 1, length 64
17:46:12.222234 12:04:28:7a:6b:9d > 1a:e9:fa:3a:9c:0e, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Request who-has 192.0.2.12 tell 192.0.2.11, length 28";

    #[test]
    fn skips_blank_lines() {
        assert!(parse_packets(&["".to_string(), "  ".to_string()]).is_empty());
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn splits_on_timestamps_and_parses_vxlan() {
        let p = parse_packets(&lines(VXLAN_ICMP));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].vni(), Some(4242));
        assert_eq!(p[0].ttls(), vec![64, 63]);
        assert_eq!(p[0].inner_ttl(), Some(63));
        assert_eq!(
            p[0].outer_eth(),
            Some((
                "1a:e9:fa:3a:9c:0e".to_string(),
                "12:04:28:7a:6b:9d".to_string()
            ))
        );
        assert_eq!(
            p[0].inner_eth(),
            Some((
                "8e:88:fc:6f:81:15".to_string(),
                "e6:04:2f:06:5b:30".to_string()
            ))
        );
        assert!(p[0].is_icmp_echo_request());
        assert!(p[0].has_ips("198.51.100.1", "198.51.100.2"));
        assert_eq!(p[1].vni(), None);
        assert!(p[1].is_arp_request("192.0.2.12", "192.0.2.11"));
        assert!(!p[1].is_arp_request("192.0.2.1", "192.0.2.11"));
        let with_tha = parse_packets(&lines(
            "17:53:19.605855 fa:16:3e:00:00:1f > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Request who-has 192.168.31.99 (ff:ff:ff:ff:ff:ff) tell 192.168.31.10, length 28",
        ));
        assert!(with_tha[0].is_arp_request("192.168.31.99", "192.168.31.10"));
    }

    #[test]
    fn parses_hex_arp_and_replies() {
        let text = "\
18:01:02.000001 fa:16:3e:00:00:05 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Request who-has 10.5.2.1 tell 10.5.2.1, length 28
\t0x0000:  0001 0800 0604 0001 fa16 3e00 0005 0a05
\t0x0010:  0201 0000 0000 0000 0a05 0201
18:01:02.000002 fa:16:3e:00:00:05 > 6a:11:22:33:44:55, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Reply 10.5.2.1 is-at fa:16:3e:00:00:05, length 28";
        let p = parse_packets(&lines(text));
        assert_eq!(p.len(), 2);
        let a = p[0].arp();
        assert_eq!(
            a,
            Some(Arp {
                op: 1,
                sha: "fa:16:3e:00:00:05".into(),
                spa: std::net::Ipv4Addr::new(10, 5, 2, 1),
                tha: "00:00:00:00:00:00".into(),
                tpa: std::net::Ipv4Addr::new(10, 5, 2, 1),
            })
        );
        assert!(a.is_some_and(|a| a.is_gratuitous()));
        assert!(p[0].is_arp_request("10.5.2.1", "10.5.2.1"));
        assert_eq!(
            p[1].arp_replies(),
            vec![("10.5.2.1".to_string(), "fa:16:3e:00:00:05".to_string())]
        );
        assert_eq!(p[1].arp(), None);
    }

    #[test]
    fn mac_shape() {
        assert!(is_mac("fa:16:3E:00:00:01"));
        assert!(!is_mac("fa:16:3e:00:00"));
        assert!(!is_mac("192.0.2.1"));
    }
}
