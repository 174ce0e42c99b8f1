//! Path MTU helpers: the kernel's cached path MTU of an endpoint ([`Cloud::cached_pmtu`],
//! [`Cloud::flush_pmtu`]), a route's advertised MSS ([`Cloud::route_advmss`]), UDP datagrams
//! sent with DF cleared and a receiver that reports what arrived ([`Cloud::udp_digest_receiver`],
//! [`Cloud::udp_no_df_arrives`]), a TCP download ([`Cloud::tcp_download`]), and the ICMP errors `ping` and `tracepath` print
//! ([`IcmpError`], [`icmp_errors`]), and the IPv4 fragments a capture saw ([`Fragment`],
//! [`reassembled`]).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Result, bail, ensure};

use crate::capture::Packet;
use crate::cloud::Cloud;
use crate::cmd::{self, exec_ok, text, wait_until};
use crate::external::Bg;

/// How long a receiver gets to report one datagram before it is sent again.
pub const UDP_RESEND: Duration = Duration::from_millis(1500);

/// A UDP receiver: binds `sys.argv[1]:sys.argv[2]`, prints "listening", then
/// "got <len> <sha256> <ip>:<port>" per datagram (the kernel has reassembled it).
const UDP_DIGEST_RECEIVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    print("got %d %s %s:%d" % (len(data), hashlib.sha256(data).hexdigest(), peer[0], peer[1]), flush=True)
"#;

/// Sends one datagram of `sys.argv[3]` pattern bytes (seed `sys.argv[4]`) to
/// `sys.argv[1]:sys.argv[2]` with IP_MTU_DISCOVER = IP_PMTUDISC_DONT (DF clear, the kernel
/// fragments at its own MTU only); prints "sent <len> <sha256>".
const UDP_NO_DF_SENDER: &str = r#"
import hashlib, socket, sys
n, seed = int(sys.argv[3]), int(sys.argv[4])
data = bytes((i * 7 + seed + (i >> 8)) % 251 for i in range(n))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
s.sendto(data, (sys.argv[1], int(sys.argv[2])))
print("sent %d %s" % (len(data), hashlib.sha256(data).hexdigest()), flush=True)
"#;

/// A TCP server that sends: listens on `sys.argv[1]:sys.argv[2]`, prints "listening", sends
/// `sys.argv[3]` pattern bytes to the first client and closes; prints "sent <len> <sha256>".
const TCP_SENDING_SERVER: &str = r#"
import hashlib, socket, sys
n = int(sys.argv[3])
data = bytes((i * 13 + (i >> 9)) % 251 for i in range(n))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(data)
c.close()
print("sent %d %s" % (len(data), hashlib.sha256(data).hexdigest()), flush=True)
"#;

/// A TCP client that receives: connects to `sys.argv[1]:sys.argv[2]`, reads until the server
/// closes; prints "got <len> <sha256>".
const TCP_RECEIVING_CLIENT: &str = r#"
import hashlib, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(65536)
    if not b:
        break
    h.update(b)
    n += len(b)
print("got %d %s" % (n, h.hexdigest()), flush=True)
"#;

/// An ICMP error line of `ping` ("From 10.0.1.1 icmp_seq=1 Frag needed and DF set (mtu =
/// 1400)", "From fd00::1 icmp_seq=1 Packet too big: mtu=1400").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub from: String,
    pub text: String,
    /// The MTU it names, if any.
    pub mtu: Option<u32>,
}

/// The MTU a `ping` or `tracepath` message names: "mtu = N", "mtu=N", "mtu: N" or "pmtu N".
pub fn mtu_in(line: &str) -> Option<u32> {
    let at = line.find("mtu")?;
    let rest = line[at + 3..].trim_start_matches([' ', '=', ':']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The "From X icmp_seq=N ..." lines of `ping` output.
pub fn icmp_errors(ping_output: &str) -> Vec<IcmpError> {
    ping_output
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("From ")?;
            let (from, text) = rest.split_once(' ')?;
            // "From 10.0.1.1 icmp_seq=1 ..." (IPv4) or "From fd00::1 icmp_seq=1 ..." (IPv6);
            // with a name lookup it would be "From name (ip)": ping runs with -n here.
            Some(IcmpError {
                from: from.trim_end_matches(':').to_string(),
                text: text.to_string(),
                mtu: mtu_in(text),
            })
        })
        .collect()
}

/// The MTUs of ping's "local error: message too long, mtu=N" lines (the kernel's cached path
/// MTU refused the echo before it left).
pub fn local_mtu_errors(ping_output: &str) -> Vec<u32> {
    ping_output
        .lines()
        .filter(|l| l.contains("message too long"))
        .filter_map(mtu_in)
        .collect()
}

/// The IPv4 header fields of a captured packet (tcpdump `-v`: "(tos 0x0, ttl 63, id 4356,
/// offset 1424, flags [+], proto UDP (17), length 76)").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub id: u32,
    /// Fragment offset in bytes.
    pub offset: u32,
    /// More fragments follow (`flags [+]`).
    pub more: bool,
    /// Don't fragment (`flags [DF]`).
    pub df: bool,
    /// Total length of the IPv4 packet.
    pub len: u32,
}

impl Fragment {
    /// The IPv4 header of `p` (the first one: captures in VMs see no tunnel header).
    pub fn of(p: &Packet) -> Option<Fragment> {
        let t = &p.text;
        let num = |key: &str, from: usize| -> Option<(u32, usize)> {
            let at = t[from..].find(key)? + from + key.len();
            let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
            Some((digits.parse().ok()?, at))
        };
        let (id, at) = num(", id ", 0)?;
        let (offset, at) = num("offset ", at)?;
        let flags_at = t[at..].find("flags [")? + at + "flags [".len();
        let flags_end = t[flags_at..].find(']')? + flags_at;
        let flags = &t[flags_at..flags_end];
        let proto_at = t[flags_end..].find("proto ")? + flags_end;
        let (len, _) = num("length ", proto_at)?;
        Some(Fragment {
            id,
            offset,
            more: flags.contains('+'),
            df: flags.contains("DF"),
            len,
        })
    }

    /// The IP payload bytes it carries (a 20-byte header: the datapath fragments only packets
    /// without options).
    pub fn payload(&self) -> u32 {
        self.len.saturating_sub(20)
    }
}

/// Groups captured IPv4 packets by id and returns a datagram (its fragments in offset
/// order) that is complete, carries `ip_payload` bytes in all and was split into more than one
/// piece: fragments that fit together without holes or overlap, the last without "more".
pub fn reassembled(packets: &[Packet], ip_payload: u32) -> Option<Vec<Fragment>> {
    let all: Vec<Fragment> = packets.iter().filter_map(Fragment::of).collect();
    let mut ids: Vec<u32> = all.iter().map(|f| f.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().find_map(|id| {
        let mut frags: Vec<Fragment> = all.iter().filter(|f| f.id == id).copied().collect();
        frags.sort_by_key(|f| f.offset);
        frags.dedup();
        let mut next = 0;
        for (i, f) in frags.iter().enumerate() {
            let last = i + 1 == frags.len();
            if f.offset != next || f.more == last {
                return None;
            }
            next += f.payload();
        }
        (frags.len() > 1 && next == ip_payload).then_some(frags)
    })
}

impl Cloud {
    /// `client` connects to `server` listening on `ip:port` and receives `bytes` from it (a
    /// download: the server's segments flow towards the client). Fails unless every byte
    /// arrived intact.
    pub fn tcp_download(
        &mut self,
        server: &str,
        client: &str,
        ip: Ipv4Addr,
        port: u16,
        bytes: usize,
    ) -> Result<()> {
        let (ip_s, port_s, n) = (ip.to_string(), port.to_string(), bytes.to_string());
        let mut srv = self.spawn_python(server, TCP_SENDING_SERVER, &[&ip_s, &port_s, &n])?;
        srv.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        let out = self.python(
            client,
            TCP_RECEIVING_CLIENT,
            &[&ip_s, &port_s],
            Duration::from_secs(30),
        )?;
        let got = cmd::stdout(&out);
        let sent = srv.wait_stdout("sent", Duration::from_secs(10), |o| o.contains("sent "))?;
        let digest = |s: &str, tag: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(tag))
                .map(|r| r.trim().to_string())
        };
        let (g, w) = (digest(&got, "got "), digest(&sent, "sent "));
        ensure!(
            g.is_some() && g == w,
            "TCP download {server} -> {client}: sent {w:?}, received {g:?} ({})",
            text(&out).trim()
        );
        srv.stop()?;
        Ok(())
    }

    /// The path MTU `who`'s kernel has learned towards `dst` (`ip route get`: "cache expires
    /// ...  mtu N"), `None` if it has none.
    pub fn cached_pmtu(&self, who: &str, dst: IpAddr) -> Result<Option<u32>> {
        let ns = self.ns_of(who)?;
        let fam = if dst.is_ipv6() { "-6" } else { "-4" };
        let out = exec_ok(&ns, &["ip", fam, "route", "get", &dst.to_string()])?;
        let o = cmd::stdout(&out);
        Ok(o.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[0] == "mtu")
            .and_then(|w| w[1].parse().ok()))
    }

    /// Forgets every path MTU `who` has learned (`ip route flush cache`, IPv4 and IPv6) and
    /// checks that none is left towards `dst`, so the next large packet goes out at the link
    /// MTU again and meets the datapath.
    pub fn flush_pmtu(&self, who: &str, dst: IpAddr) -> Result<()> {
        let ns = self.ns_of(who)?;
        exec_ok(&ns, &["ip", "-4", "route", "flush", "cache"])?;
        exec_ok(&ns, &["ip", "-6", "route", "flush", "cache"])?;
        if let Some(m) = self.cached_pmtu(who, dst)? {
            bail!("{who} still has path MTU {m} towards {dst} after `ip route flush cache`");
        }
        Ok(())
    }

    /// In `vm`: `ip route replace <prefix> via <via> dev eth0 advmss <mss>`: the VM advertises
    /// `mss` in its SYNs and SYN-ACKs towards `prefix`, whatever its link MTU.
    pub fn route_advmss(&self, vm: &str, prefix: &str, via: Ipv4Addr, mss: u32) -> Result<()> {
        let ns = self.vm(vm)?.ns.clone();
        exec_ok(
            &ns,
            &[
                "ip",
                "route",
                "replace",
                prefix,
                "via",
                &via.to_string(),
                "dev",
                "eth0",
                "advmss",
                &mss.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Starts a UDP receiver bound to `bind:port` in `who` (see [`UDP_DIGEST_RECEIVER`]) and
    /// waits until it listens. Its stdout has "got <len> <sha256> <peer>" per datagram.
    pub fn udp_digest_receiver(&mut self, who: &str, bind: Ipv4Addr, port: u16) -> Result<Bg> {
        let mut bg = self.spawn_python(
            who,
            UDP_DIGEST_RECEIVER,
            &[&bind.to_string(), &port.to_string()],
        )?;
        bg.wait_stdout("listening", Duration::from_secs(10), |o| {
            o.contains("listening")
        })?;
        self.wait_listening(who, true, port, Duration::from_secs(5))?;
        Ok(bg)
    }

    /// Sends one UDP datagram of `len` pattern bytes (`seed`) from `from` to `dst:port` with
    /// DF clear; returns its SHA-256 (hex).
    pub fn send_udp_no_df(
        &self,
        from: &str,
        dst: Ipv4Addr,
        port: u16,
        len: usize,
        seed: u32,
    ) -> Result<String> {
        let out = self.python(
            from,
            UDP_NO_DF_SENDER,
            &[
                &dst.to_string(),
                &port.to_string(),
                &len.to_string(),
                &seed.to_string(),
            ],
            Duration::from_secs(10),
        )?;
        let o = text(&out);
        ensure!(
            out.status.success(),
            "UDP (DF clear) {from} -> {dst}:{port}: {}",
            o.trim()
        );
        let want = format!("sent {len} ");
        o.lines()
            .find_map(|l| l.strip_prefix(&want))
            .map(|h| h.trim().to_string())
            .ok_or_else(|| anyhow::anyhow!("the UDP sender printed no digest: {o}"))
    }

    /// Sends a `len`-byte datagram with DF clear from `from` to `dst:port` until `rx` (a
    /// [`Cloud::udp_digest_receiver`]) reports exactly those bytes, up to `tries` datagrams
    /// [`UDP_RESEND`] apart. Returns how many were sent.
    pub fn udp_no_df_arrives(
        &self,
        rx: &mut Bg,
        from: &str,
        dst: Ipv4Addr,
        port: u16,
        len: usize,
        tries: u32,
    ) -> Result<u32> {
        let seed = u32::try_from(len % 251).unwrap_or(0);
        let mut last = String::new();
        for n in 1..=tries {
            let sha = self.send_udp_no_df(from, dst, port, len, seed)?;
            let want = format!("got {len} {sha} ");
            match wait_until(
                &format!("{len} bytes from {from} to arrive intact"),
                UDP_RESEND,
                |why| {
                    let out = rx.stdout();
                    *why = out.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    Ok(out.contains(&want).then_some(()))
                },
            ) {
                Ok(()) => return Ok(n),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!(
            "{tries} UDP datagrams of {len} bytes (DF clear) {from} -> {dst}:{port}: none arrived \
             intact at the receiver; {last}; receiver stdout: {} stderr: {}",
            rx.stdout().trim(),
            rx.stderr().trim()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_and_tracepath_mtus_are_parsed() {
        let out = "PING 10.0.2.5 (10.0.2.5) 1422(1450) bytes of data.\n\
                   From 10.0.1.1 icmp_seq=1 Frag needed and DF set (mtu = 1400)\n\
                   ping: local error: message too long, mtu=1400\n";
        assert_eq!(
            icmp_errors(out),
            vec![IcmpError {
                from: "10.0.1.1".into(),
                text: "icmp_seq=1 Frag needed and DF set (mtu = 1400)".into(),
                mtu: Some(1400),
            }]
        );
        assert_eq!(local_mtu_errors(out), vec![1400]);
        assert_eq!(
            icmp_errors("From fd00:1::1 icmp_seq=1 Packet too big: mtu=1400")
                .first()
                .and_then(|e| e.mtu),
            Some(1400)
        );
        assert_eq!(mtu_in(" 1:  10.0.1.1   0.3ms pmtu 1400"), Some(1400));
        assert_eq!(mtu_in("     Resume: pmtu 1400 hops 2 back 2 "), Some(1400));
        assert_eq!(mtu_in("no number here"), None);
    }

    fn pkt(id: u32, offset: u32, flags: &str, len: u32) -> Packet {
        Packet {
            text: format!(
                "12:00:00.000000 fa:16:3e:00:00:01 > fa:16:3e:00:00:02, ethertype IPv4 (0x0800), \
                 length {}: (tos 0x0, ttl 63, id {id}, offset {offset}, flags [{flags}], proto \
                 UDP (17), length {len})\n    10.0.1.10 > 10.0.2.10: ip-proto-17",
                len + 14
            ),
        }
    }

    #[test]
    fn fragments_are_parsed_and_put_together() {
        assert_eq!(
            Fragment::of(&pkt(7, 0, "+", 1396)),
            Some(Fragment {
                id: 7,
                offset: 0,
                more: true,
                df: false,
                len: 1396,
            })
        );
        assert_eq!(Fragment::of(&pkt(7, 0, "DF", 60)).map(|f| f.df), Some(true));
        let caught = vec![
            pkt(9, 0, "none", 100),
            pkt(7, 1376, "none", 72),
            pkt(7, 0, "+", 1396),
        ];
        let d = reassembled(&caught, 1428);
        assert_eq!(d.as_ref().map(Vec::len), Some(2));
        assert_eq!(d.and_then(|d| d.first().map(|f| f.offset)), Some(0));
        // A hole, or the wrong size, is no datagram.
        assert_eq!(reassembled(&caught[..2], 1428), None);
        assert_eq!(reassembled(&caught, 1500), None);
    }
}
