//! The connectivity checks every datapath passes, path by path, before it is timed.
//!
//! For one [`PathEnds`]:
//! 1. three ICMP echoes from the client to the destination, all answered;
//! 2. a TCP connection: the server (a thread in the server namespace) accepts one connection
//!    and answers with the peer address it saw, which must be [`PathEnds::seen_src`];
//! 3. the same over UDP: one datagram (retried up to three times), answered with the source
//!    address seen.
//!
//! So a datapath that forwards but translates wrongly (a floating IP not applied, SNAT to the
//! wrong address) fails here rather than producing numbers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::PathEnds;
use super::netns::{in_netns, join, ping_ok};

/// Port of the check servers (the measurement tools use others).
pub const CHECK_PORT: u16 = 7001;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs all checks of one path; the error names the path and what failed.
pub fn check_path(ends: &PathEnds) -> Result<()> {
    let what = format!(
        "{} ({} -> {}, expecting source {})",
        ends.path.as_str(),
        ends.client_ns,
        ends.dst,
        ends.seen_src
    );
    ping_ok(&ends.client_ns, ends.dst, 3).with_context(|| format!("{what}: ping"))?;
    let seen = tcp_whoami(ends).with_context(|| format!("{what}: TCP"))?;
    ensure!(
        seen == ends.seen_src,
        "{what}: TCP server saw source {seen}"
    );
    let seen = udp_whoami(ends).with_context(|| format!("{what}: UDP"))?;
    ensure!(
        seen == ends.seen_src,
        "{what}: UDP server saw source {seen}"
    );
    Ok(())
}

fn v4(a: SocketAddr) -> Result<Ipv4Addr> {
    match a {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(a) => bail!("IPv6 peer {a}"),
    }
}

/// One TCP connection; returns the source address the server saw.
fn tcp_whoami(ends: &PathEnds) -> Result<Ipv4Addr> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let listen = ends.listen;
    let server = in_netns(&ends.server_ns, move || {
        let l = TcpListener::bind((listen, CHECK_PORT)).context("bind")?;
        l.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let start = Instant::now();
        let (mut s, peer) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > Duration::from_secs(8) {
                        bail!("no connection within 8 s");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let ip = v4(peer)?;
        s.write_all(ip.to_string().as_bytes())?;
        Ok(ip)
    });
    if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        return Err(join(server)
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("no error")))
        .context("check server did not start");
    }
    let dst = SocketAddr::V4(SocketAddrV4::new(ends.dst, CHECK_PORT));
    let client = in_netns(&ends.client_ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT).context("connect")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).context("read")?;
        buf.trim().parse::<Ipv4Addr>().context("reply")
    });
    let c = join(client);
    let s = join(server);
    let seen = s.context("server")?;
    let told = c.context("client")?;
    ensure!(told == seen, "server saw {seen} but told the client {told}");
    Ok(seen)
}

/// One UDP request/response; returns the source address the server saw.
fn udp_whoami(ends: &PathEnds) -> Result<Ipv4Addr> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let listen = ends.listen;
    let server = in_netns(&ends.server_ns, move || {
        let s = UdpSocket::bind((listen, CHECK_PORT)).context("bind")?;
        s.set_read_timeout(Some(Duration::from_secs(8)))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 64];
        let (_, peer) = s.recv_from(&mut buf).context("recv")?;
        let ip = v4(peer)?;
        // Answer every try the client may still send.
        s.send_to(ip.to_string().as_bytes(), peer)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        while let Ok((_, p)) = s.recv_from(&mut buf) {
            s.send_to(v4(p)?.to_string().as_bytes(), p)?;
        }
        Ok(ip)
    });
    if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        return Err(join(server)
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("no error")))
        .context("check server did not start");
    }
    let dst = SocketAddrV4::new(ends.dst, CHECK_PORT);
    let client = in_netns(&ends.client_ns, move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).context("bind")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            s.send_to(b"whoami", dst)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                return text.trim().parse::<Ipv4Addr>().context("reply");
            }
        }
        bail!("no reply after 3 tries")
    });
    let c = join(client);
    let s = join(server);
    let seen = s.context("server")?;
    let told = c.context("client")?;
    ensure!(told == seen, "server saw {seen} but told the client {told}");
    Ok(seen)
}
