//! Raw frames the agent sends (`send_frame`; also the router advertisements of `ndp`), and
//! the ARP it sends on the external interface: gratuitous ARP when this host starts
//! serving a floating IP (so the upstream router and peers update their caches at once),
//! and requests for the external gateway, whose reply the datapath learns the MAC from.
use std::{io, net::Ipv4Addr};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP request frame: `sender` (MAC, IP) asks for `target`. A gratuitous ARP has
/// sender IP == target IP.
pub fn request_frame(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender_ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// Send one raw ARP frame out of `ifindex` (AF_PACKET; the current network namespace).
pub fn send(ifindex: u32, frame: &[u8]) -> io::Result<()> {
    send_frame(ifindex, ETH_P_ARP, frame)
}

/// Send one raw Ethernet frame of ethertype `proto` out of `ifindex` (AF_PACKET; the
/// current network namespace).
pub fn send_frame(ifindex: u32, proto: u16, frame: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket calls on a socket we own and close; sockaddr_ll is zeroed POD
    // filled with the interface index; `frame` outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto.to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&BROADCAST);
        let r = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if r < 0 { Err(err) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(10, 5, 2, 1);
        let f = request_frame(mac, ip, ip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 5, 2, 1]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 5, 2, 1]);
    }
}
