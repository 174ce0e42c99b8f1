//! The agent's rtnetlink client: netlink-packet-route messages over a netlink-sys socket,
//! in the network namespace of the calling thread. It lists links, looks one up by name,
//! and creates, brings up and deletes links; [`super::linkwatch`] reads link notifications
//! with the same parser. Synchronous: each request waits for its answer (matched by
//! sequence number), as `ip` does.
//!
//! Answers are read leniently: only the attributes the agent uses (name, link-layer address,
//! kind and driver data) are parsed, one by one, so an attribute this crate version does not
//! know (a newer kernel's) costs nothing and cannot hide a link.
use std::{collections::BTreeMap, io};

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlasIterator, ParseableParametrized as _,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoData, InfoKind, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `struct ifinfomsg`, the fixed part of a link message before its attributes.
const IFINFOMSG_LEN: usize = 16;
/// Receive buffer: the kernel fills a dump datagram up to the size the reader offers (at
/// most 32 KiB), and one link message is a few KiB.
const RECV_BUF: usize = 64 * 1024;
/// How often a link dump is restarted when the link list changed under it (NLM_F_DUMP_INTR).
const DUMP_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused the request with this errno.
    #[error("{0}")]
    Kernel(#[source] io::Error),
    #[error("malformed netlink message: {0}")]
    Decode(String),
}

impl NetlinkError {
    fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// A link as the kernel describes it (RTM_NEWLINK / RTM_DELLINK), reduced to what the
/// agent reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    /// IFLA_IFNAME.
    pub name: String,
    /// IFLA_ADDRESS, the link-layer address; empty when the link has none.
    pub address: Vec<u8>,
    /// IFLA_INFO_KIND (`vxlan`, `veth` ...); `None` for links without one (lo, NICs).
    pub kind: Option<InfoKind>,
    /// IFLA_INFO_DATA: the driver's settings, for kinds that have them.
    pub data: Option<InfoData>,
    /// IFLA_MTU (0 when absent).
    pub mtu: u32,
}

impl Link {
    /// The link-layer address as a MAC: its first 6 bytes, zero-filled when shorter or
    /// absent (what SIOCGIFHWADDR reports).
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(&self.address) {
            *d = *s;
        }
        mac
    }
}

/// What one netlink message said.
#[derive(Debug)]
pub(super) enum Body {
    NewLink(Link),
    DelLink(Link),
    /// NLMSG_ERROR with errno 0: the request succeeded.
    Ack,
    /// NLMSG_ERROR: the request failed with this errno.
    Error(i32),
    /// NLMSG_DONE: the end of a dump, with its error code (0 or a negative errno).
    Done(i32),
    Other,
}

#[derive(Debug)]
pub(super) struct Message {
    pub seq: u32,
    pub flags: u16,
    pub body: Body,
}

/// Parses a link message (`ifinfomsg` and attributes) leniently: attributes other than the
/// five the agent uses are skipped unparsed, and one that does not parse is left out.
fn parse_link(payload: &[u8]) -> Result<Link, NetlinkError> {
    let header = LinkHeader::parse(payload).map_err(|e| NetlinkError::Decode(e.to_string()))?;
    let mut link = Link {
        index: header.index,
        ..Link::default()
    };
    for nla in NlasIterator::new(payload.get(IFINFOMSG_LEN..).unwrap_or_default()) {
        let Ok(nla) = nla else {
            break;
        };
        let wanted = [
            libc::IFLA_IFNAME,
            libc::IFLA_ADDRESS,
            libc::IFLA_LINKINFO,
            libc::IFLA_MTU,
        ];
        if !wanted.contains(&nla.kind()) {
            continue;
        }
        match LinkAttribute::parse_with_param(&nla, header.interface_family) {
            Ok(LinkAttribute::IfName(name)) => link.name = name,
            Ok(LinkAttribute::Address(address)) => link.address = address,
            Ok(LinkAttribute::Mtu(mtu)) => link.mtu = mtu,
            Ok(LinkAttribute::LinkInfo(infos)) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind),
                        LinkInfo::Data(data) => link.data = Some(data),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// The messages of one datagram, in order.
pub(super) fn parse_datagram(data: &[u8]) -> Result<Vec<Message>, NetlinkError> {
    let decode = |e: netlink_packet_core::DecodeError| NetlinkError::Decode(e.to_string());
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(rest) = data.get(off..).filter(|r| !r.is_empty()) {
        let nl = NetlinkBuffer::new_checked(rest).map_err(decode)?;
        let payload = nl.payload();
        let body = match nl.message_type() {
            NLMSG_ERROR => match ErrorBuffer::new_checked(payload).map_err(decode)?.code() {
                None => Body::Ack,
                Some(code) => Body::Error(-code.get()),
            },
            NLMSG_DONE => Body::Done(DoneBuffer::new_checked(payload).map_or(0, |d| d.code())),
            libc::RTM_NEWLINK => Body::NewLink(parse_link(payload)?),
            libc::RTM_DELLINK => Body::DelLink(parse_link(payload)?),
            _ => Body::Other,
        };
        out.push(Message {
            seq: nl.sequence_number(),
            flags: nl.flags(),
            body,
        });
        // NLMSG_ALIGN: messages in a datagram start on 4-byte boundaries.
        off += (nl.length() as usize).div_ceil(4) * 4;
    }
    Ok(out)
}

/// Serialises `msg` as a request with sequence number `seq`.
fn request(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// RTM_GETLINK for the link called `name`.
fn get_link(name: &str) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.into()));
    RouteNetlinkMessage::GetLink(msg)
}

/// RTM_NEWLINK creating `name` with `info` (IFLA_LINKINFO: kind and driver data).
fn new_link(name: &str, info: Vec<LinkInfo>) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.into()));
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    RouteNetlinkMessage::NewLink(msg)
}

/// RTM_SETLINK setting IFF_UP on the link called `name` (`ip link set dev NAME up`).
fn set_up(name: &str) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName(name.into()));
    RouteNetlinkMessage::SetLink(msg)
}

/// RTM_DELLINK of the link with ifindex `index`.
fn del_link(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    RouteNetlinkMessage::DelLink(msg)
}

/// A NETLINK_ROUTE socket for requests.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the network namespace of the calling thread.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends `msg` and collects the links of its answer: until the acknowledgement (a
    /// request with NLM_F_ACK) or NLMSG_DONE (a dump). `Ok((links, interrupted))`, where
    /// `interrupted` says a dump saw the list change under it.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<Link>, bool), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock
            .send(&request(msg, flags, seq), 0)
            .map_err(NetlinkError::Socket)?;
        let mut links = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Socket(e)),
            };
            for m in parse_datagram(self.buf.get(..n).unwrap_or_default())? {
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.body {
                    Body::NewLink(link) => links.push(link),
                    Body::Ack => return Ok((links, interrupted)),
                    Body::Error(errno) => {
                        return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(errno)));
                    }
                    Body::Done(code) if code < 0 => {
                        return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(-code)));
                    }
                    Body::Done(_) => return Ok((links, interrupted)),
                    Body::DelLink(_) | Body::Other => {}
                }
            }
        }
    }

    /// Every link of the namespace (RTM_GETLINK dump).
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let mut attempt = 1;
        loop {
            let (links, interrupted) = self.exchange(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )?;
            if !interrupted || attempt >= DUMP_ATTEMPTS {
                return Ok(links);
            }
            attempt += 1;
        }
    }

    /// The link called `name`, `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        match self.exchange(get_link(name), NLM_F_ACK) {
            Ok((links, _)) => Ok(links.into_iter().next()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the link `name` with `info` (kind and driver data); fails if it exists.
    pub fn add_link(&mut self, name: &str, info: Vec<LinkInfo>) -> Result<(), NetlinkError> {
        self.exchange(new_link(name, info), NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK)
            .map(drop)
    }

    /// Brings the link `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.exchange(set_up(name), NLM_F_ACK).map(drop)
    }

    /// Deletes the link with ifindex `index`.
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.exchange(del_link(index), NLM_F_ACK).map(drop)
    }
}

/// Every interface of the calling thread's network namespace: name -> ifindex. A failed
/// dump is an error, never an empty list (which would read as "every tap went away").
pub fn interfaces() -> Result<BTreeMap<String, u32>, NetlinkError> {
    Rtnl::open()
        .and_then(|mut r| r.links())
        .map(|links| links.into_iter().map(|l| (l.name, l.index)).collect())
}

/// Every interface's kind (`veth`, `tun` ...; `None` for NICs and lo) in the calling
/// thread's network namespace, by name.
pub fn link_kinds() -> Result<BTreeMap<String, Option<InfoKind>>, NetlinkError> {
    Rtnl::open()
        .and_then(|mut r| r.links())
        .map(|links| links.into_iter().map(|l| (l.name, l.kind)).collect())
}

/// MTU of interface `name` in the calling thread's network namespace; `None` when there is
/// no such interface (or it cannot be read).
pub fn mtu_of(name: &str) -> Option<u32> {
    let link = Rtnl::open().ok()?.link(name).ok()??;
    Some(link.mtu)
}

/// MAC address of interface `name` in the calling thread's network namespace (zero when the
/// link has no link-layer address); `None` when there is no such interface.
pub fn mac_of(name: &str) -> Option<[u8; 6]> {
    let link = Rtnl::open().ok()?.link(name).ok()??;
    Some(link.mac())
}

/// The interface holding IPv4 address `addr` in the calling thread's network namespace
/// (`getifaddrs`); `None` when none does (or the list cannot be read).
pub fn interface_with_ipv4(addr: std::net::Ipv4Addr) -> Option<String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null, points at a sockaddr of the family it names.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        if u32::from_be(sin.sin_addr.s_addr) == u32::from(addr) {
            // SAFETY: ifa_name is a NUL-terminated string alive until freeifaddrs.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NLM_F_MULTIPART, NlaBuffer};
    use netlink_packet_route::link::{InfoVxlan, LinkLayerType};

    use super::*;

    #[test]
    fn loopback_holds_127_0_0_1() {
        assert_eq!(
            interface_with_ipv4(std::net::Ipv4Addr::LOCALHOST).as_deref(),
            Some("lo")
        );
        assert_eq!(
            interface_with_ipv4(std::net::Ipv4Addr::new(192, 0, 2, 77)),
            None
        );
    }

    /// A datagram as the kernel sends it: the messages back to back.
    fn datagram(msgs: &[(RouteNetlinkMessage, u16, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (msg, flags, seq) in msgs {
            let mut bytes = request(msg.clone(), *flags, *seq);
            // The kernel's messages carry no NLM_F_REQUEST; the parser does not look.
            bytes.resize(bytes.len().div_ceil(4) * 4, 0);
            out.extend(bytes);
        }
        out
    }

    fn link_msg(index: u32, name: &str, extra: Vec<LinkAttribute>) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.link_layer_type = LinkLayerType::Ether;
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.extend(extra);
        msg
    }

    #[test]
    fn parses_a_dump_with_kind_data_and_address() -> Result<(), NetlinkError> {
        let vx = link_msg(
            7,
            "dvr-vx",
            vec![
                LinkAttribute::Mtu(1450),
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::CollectMetadata(true),
                        InfoVxlan::Port(4789),
                    ])),
                ]),
            ],
        );
        let lo = link_msg(1, "lo", vec![]);
        let bytes = datagram(&[
            (RouteNetlinkMessage::NewLink(lo), NLM_F_MULTIPART, 5),
            (RouteNetlinkMessage::NewLink(vx), NLM_F_MULTIPART, 5),
        ]);
        let msgs = parse_datagram(&bytes)?;
        let links: Vec<&Link> = msgs
            .iter()
            .filter_map(|m| match &m.body {
                Body::NewLink(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(links.len(), 2, "{msgs:?}");
        assert!(msgs.iter().all(|m| m.seq == 5));
        assert_eq!((links[0].index, links[0].name.as_str()), (1, "lo"));
        assert_eq!(links[0].kind, None);
        assert_eq!(links[0].mac(), [0; 6]);
        assert_eq!(links[1].name, "dvr-vx");
        assert_eq!(links[1].kind, Some(InfoKind::Vxlan));
        assert_eq!(links[1].mac(), [2, 0, 0, 0, 0, 9]);
        assert_eq!((links[0].mtu, links[1].mtu), (0, 1450));
        assert_eq!(
            links[1].data,
            Some(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(4789)
            ]))
        );
        Ok(())
    }

    #[test]
    fn an_attribute_that_does_not_parse_does_not_hide_the_link() -> Result<(), NetlinkError> {
        let mut bytes = datagram(&[(
            RouteNetlinkMessage::NewLink(link_msg(
                3,
                "tap1",
                vec![LinkAttribute::Address(vec![1, 2, 3, 4, 5, 6])],
            )),
            0,
            1,
        )]);
        // Retype IFLA_ADDRESS as IFLA_LINKINFO: its 6 bytes are not nested attributes
        // (the first would claim 0x0201 bytes), so that attribute does not parse.
        let attrs = 16 + IFINFOMSG_LEN;
        let name_len = NlaBuffer::new(&bytes[attrs..]).length() as usize;
        let addr = attrs + name_len.div_ceil(4) * 4;
        bytes[addr + 2..addr + 4].copy_from_slice(&libc::IFLA_LINKINFO.to_ne_bytes());
        let msgs = parse_datagram(&bytes)?;
        match &msgs[..] {
            [
                Message {
                    body: Body::NewLink(l),
                    ..
                },
            ] => {
                assert_eq!((l.index, l.name.as_str()), (3, "tap1"));
                assert_eq!(l.kind, None);
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn parses_acks_errors_and_done() -> Result<(), NetlinkError> {
        // NLMSG_ERROR: nlmsghdr, then the errno and the request's header.
        let mut bytes = Vec::new();
        for (ty, code) in [(NLMSG_ERROR, 0i32), (NLMSG_ERROR, -17), (NLMSG_DONE, 0)] {
            let len: u32 = 16 + 4 + 16;
            bytes.extend(len.to_ne_bytes());
            bytes.extend(ty.to_ne_bytes());
            bytes.extend(0u16.to_ne_bytes());
            bytes.extend(9u32.to_ne_bytes());
            bytes.extend(0u32.to_ne_bytes());
            bytes.extend(code.to_ne_bytes());
            bytes.extend([0u8; 16]);
        }
        let bodies: Vec<String> = parse_datagram(&bytes)?
            .iter()
            .map(|m| format!("{:?}", m.body))
            .collect();
        assert_eq!(bodies, ["Ack", "Error(17)", "Done(0)"]);
        Ok(())
    }

    #[test]
    fn requests_carry_the_flags_and_attributes_of_ip() {
        let bytes = request(set_up("dvr-vx"), NLM_F_ACK, 4);
        let nl = NetlinkBuffer::new(&bytes[..]);
        assert_eq!(nl.message_type(), libc::RTM_SETLINK);
        assert_eq!(nl.flags(), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(nl.sequence_number(), 4);
        let header = LinkHeader::parse(nl.payload()).ok();
        assert_eq!(
            header.map(|h| (h.index, h.flags, h.change_mask)),
            Some((0, LinkFlags::Up, LinkFlags::Up))
        );
        let bytes = request(del_link(12), NLM_F_ACK, 5);
        let nl = NetlinkBuffer::new(&bytes[..]);
        assert_eq!(nl.message_type(), libc::RTM_DELLINK);
        assert_eq!(
            LinkHeader::parse(nl.payload()).ok().map(|h| h.index),
            Some(12)
        );
        let bytes = request(
            new_link("x", vec![LinkInfo::Kind(InfoKind::Dummy)]),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            6,
        );
        let nl = NetlinkBuffer::new(&bytes[..]);
        assert_eq!(nl.message_type(), libc::RTM_NEWLINK);
        assert_eq!(
            nl.flags(),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
        );
    }
}
