//! The wire format of conntrack sync (see the [`ctsync`](super) module documentation,
//! "Wire format"): its constants, frame encoding, and a decoder that never panics on what a
//! peer sends.
use std::{
    io::{self, Read},
    time::Duration,
};

use dvr_common::nat::{CtEntry, CtKey};

/// TCP port of the conntrack sync listener on every candidate's tunnel address.
pub const PORT: u16 = 4791;
/// First bytes of every HELLO.
pub const MAGIC: [u8; 8] = *b"DVRCTSYN";
/// Protocol version this build speaks (and accepts).
pub const VERSION: u16 = 1;
/// Bytes of a record's CtKey.
pub const KEY_LEN: usize = 20;
/// Bytes of a record's CtEntry.
pub const ENTRY_LEN: usize = 56;
/// Bytes of one record on the wire: CtKey + CtEntry.
pub const RECORD_LEN: usize = KEY_LEN + ENTRY_LEN;
/// Most records a RECORDS frame may carry (the receiver's bound).
pub const MAX_BATCH: usize = 4096;
/// Largest `len` a frame may have.
pub const MAX_FRAME: usize = 1 + 4 + MAX_BATCH * RECORD_LEN;
/// Bytes of a RECORDS frame besides its records.
pub(super) const RECORDS_OVERHEAD: usize = 4 + 1 + 4;

/// Frame type HELLO.
pub const T_HELLO: u8 = 1;
/// Frame type RECORDS.
pub const T_RECORDS: u8 = 2;
/// Frame type MARK.
pub const T_MARK: u8 = 3;
/// Frame type ACK.
pub const T_ACK: u8 = 4;
const HELLO_LEN: usize = 1 + 8 + 2 + 2 + 4;

/// Longest a write may block before the connection counts as broken (both ends).
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest keepalive interval: a sender marks at least this far apart, a listener waits
/// for at least 3 of them.
pub(super) const KEEPALIVE_MIN: Duration = Duration::from_secs(1);

fn put_record(out: &mut Vec<u8>, k: &CtKey, e: &CtEntry) {
    out.extend_from_slice(&k.zone.to_le_bytes());
    out.extend_from_slice(&k.saddr_be.to_le_bytes());
    out.extend_from_slice(&k.daddr_be.to_le_bytes());
    out.extend_from_slice(&k.sport_be.to_le_bytes());
    out.extend_from_slice(&k.dport_be.to_le_bytes());
    out.push(k.proto);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&e.nat_ip_be.to_le_bytes());
    out.extend_from_slice(&e.fip_be.to_le_bytes());
    out.extend_from_slice(&e.fixed_be.to_le_bytes());
    out.extend_from_slice(&e.peer_zone.to_le_bytes());
    out.push(e.kind);
    out.push(e.tcp_flags);
    out.extend_from_slice(&e.nat_port_be.to_le_bytes());
    out.extend_from_slice(&e._reserved.to_le_bytes());
    out.extend_from_slice(&e.created_ns.to_le_bytes());
    out.extend_from_slice(&e.last_seen_ns.to_le_bytes());
    out.extend_from_slice(&e.packets.to_le_bytes());
    out.extend_from_slice(&e.bytes.to_le_bytes());
}

/// A reader over a byte slice that never panics.
struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (a, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| "truncated".to_string())?;
        self.0 = rest;
        Ok(*a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        self.arr::<1>().map(u8::from_le_bytes)
    }
    fn u16(&mut self) -> Result<u16, String> {
        self.arr().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.arr().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.arr().map(u64::from_le_bytes)
    }
}

fn get_record(b: &[u8]) -> Result<(CtKey, CtEntry), String> {
    let mut c = Cur(b);
    let k = CtKey {
        zone: c.u32()?,
        saddr_be: c.u32()?,
        daddr_be: c.u32()?,
        sport_be: c.u16()?,
        dport_be: c.u16()?,
        proto: c.u8()?,
        _pad: c.arr()?,
    };
    if k._pad != [0; 3] {
        return Err(format!("record key padding {:?} is not zero", k._pad));
    }
    let e = CtEntry {
        nat_ip_be: c.u32()?,
        fip_be: c.u32()?,
        fixed_be: c.u32()?,
        peer_zone: c.u32()?,
        kind: c.u8()?,
        tcp_flags: c.u8()?,
        nat_port_be: c.u16()?,
        _reserved: c.u32()?,
        created_ns: c.u64()?,
        last_seen_ns: c.u64()?,
        packets: c.u64()?,
        bytes: c.u64()?,
    };
    if !c.0.is_empty() {
        return Err("record too long".into());
    }
    Ok((k, e))
}

/// A HELLO's fields after the magic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hello {
    pub(super) version: u16,
    pub(super) record_len: u16,
    pub(super) keepalive_ms: u32,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    Hello(Hello),
    Records(Vec<(CtKey, CtEntry)>),
    Mark(u64),
    Ack(u64),
}

impl Frame {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "HELLO",
            Frame::Records(_) => "RECORDS",
            Frame::Mark(_) => "MARK",
            Frame::Ack(_) => "ACK",
        }
    }
}

/// A whole HELLO frame announcing keepalive marks every `keepalive` (zero: the listener's
/// answer).
pub fn hello_frame(keepalive: Duration) -> Vec<u8> {
    let ms = u32::try_from(keepalive.as_millis()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + HELLO_LEN);
    out.extend_from_slice(&(HELLO_LEN as u32).to_le_bytes());
    out.push(T_HELLO);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(RECORD_LEN as u16).to_le_bytes());
    out.extend_from_slice(&ms.to_le_bytes());
    out
}

/// A whole MARK ([`T_MARK`]) or ACK ([`T_ACK`]) frame carrying `id`.
pub fn id_frame(ty: u8, id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.extend_from_slice(&9u32.to_le_bytes());
    out.push(ty);
    out.extend_from_slice(&id.to_le_bytes());
    out
}

/// A RECORDS frame of these entries (at most [`MAX_BATCH`]) into `out`.
pub fn records_frame<'a>(
    out: &mut Vec<u8>,
    recs: impl ExactSizeIterator<Item = &'a (CtKey, CtEntry)>,
) {
    let n = recs.len();
    out.clear();
    out.reserve(RECORDS_OVERHEAD + n * RECORD_LEN);
    let len = u32::try_from(1 + 4 + n * RECORD_LEN).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(T_RECORDS);
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    for (k, e) in recs {
        put_record(out, k, e);
    }
}

/// Decode a frame body (type and payload).
fn parse_frame(body: &[u8]) -> Result<Frame, String> {
    let (&ty, payload) = body.split_first().ok_or("empty frame")?;
    let mut c = Cur(payload);
    let frame = match ty {
        T_HELLO => {
            let magic: [u8; 8] = c.arr().map_err(|_| "short HELLO")?;
            if magic != MAGIC {
                return Err(format!(
                    "bad magic {:?} (not a conntrack sync peer)",
                    String::from_utf8_lossy(&magic)
                ));
            }
            let h = Hello {
                version: c.u16()?,
                record_len: c.u16()?,
                keepalive_ms: c.u32()?,
            };
            Frame::Hello(h)
        }
        T_RECORDS => {
            let count = c.u32().map_err(|_| "short RECORDS")? as usize;
            if count == 0 || count > MAX_BATCH {
                return Err(format!("RECORDS count {count} not in 1..={MAX_BATCH}"));
            }
            if c.0.len() != count * RECORD_LEN {
                return Err(format!(
                    "RECORDS of {count} records carries {} bytes, not {}",
                    c.0.len(),
                    count * RECORD_LEN
                ));
            }
            let recs =
                c.0.chunks_exact(RECORD_LEN)
                    .map(get_record)
                    .collect::<Result<Vec<_>, _>>()?;
            c.0 = &[];
            Frame::Records(recs)
        }
        T_MARK => Frame::Mark(c.u64().map_err(|_| "short MARK")?),
        T_ACK => Frame::Ack(c.u64().map_err(|_| "short ACK")?),
        _ => return Err(format!("unknown frame type {ty}")),
    };
    if !c.0.is_empty() {
        return Err(format!(
            "{} frame with {} trailing bytes",
            frame.name(),
            c.0.len()
        ));
    }
    Ok(frame)
}

/// A peer's HELLO speaks this build's protocol.
pub(super) fn check_hello(h: &Hello) -> Result<(), String> {
    if h.version != VERSION {
        return Err(format!(
            "protocol version {} (this build speaks {VERSION})",
            h.version
        ));
    }
    if usize::from(h.record_len) != RECORD_LEN {
        return Err(format!(
            "record length {} (this build has {RECORD_LEN})",
            h.record_len
        ));
    }
    Ok(())
}

/// Why [`read_frame`] failed.
#[derive(Debug)]
pub(super) enum ReadError {
    Io(io::Error),
    Malformed(String),
}

/// Fill `b`; false when the stream ended before its first byte.
fn read_full_or_eof<R: Read>(r: &mut R, b: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while let Some(rest) = b.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The next frame; `None` at a clean end of stream (between frames).
pub(super) fn read_frame<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Frame>, ReadError> {
    let mut len = [0u8; 4];
    if !read_full_or_eof(r, &mut len).map_err(ReadError::Io)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ReadError::Malformed(format!(
            "frame length {len} not in 1..={MAX_FRAME}"
        )));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).map_err(ReadError::Io)?;
    parse_frame(buf).map(Some).map_err(ReadError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvr_common::nat::{CT_DNAT, CT_PAT, CT_SNAT, TCP_ACK};

    fn entry(i: u32) -> (CtKey, CtEntry) {
        let k = CtKey {
            zone: 0,
            saddr_be: 0x0a00_0000 + i,
            daddr_be: 0x0101_0101,
            sport_be: (i % 60_000) as u16 + 1024,
            dport_be: 443,
            proto: 6,
            _pad: [0; 3],
        };
        let e = CtEntry {
            nat_ip_be: 0x0a01_0005,
            fip_be: 0x0808_0808,
            fixed_be: 0x0a01_0005,
            peer_zone: 101,
            kind: CT_DNAT | CT_PAT,
            tcp_flags: TCP_ACK,
            nat_port_be: (i % 50_000) as u16 + 1,
            _reserved: 0,
            created_ns: u64::from(i) * 7,
            last_seen_ns: u64::from(i) * 11,
            packets: u64::from(i),
            bytes: u64::from(i) * 1500,
        };
        (k, e)
    }

    fn entries(n: u32) -> Vec<(CtKey, CtEntry)> {
        (0..n).map(entry).collect()
    }

    fn check(ok: bool, what: &str) -> Result<(), String> {
        if ok { Ok(()) } else { Err(what.to_string()) }
    }

    #[test]
    fn ctsync_record_bytes_are_the_in_memory_layout() -> Result<(), String> {
        let (k, e) = entry(77);
        let mut out = Vec::new();
        put_record(&mut out, &k, &e);
        check(out.len() == RECORD_LEN, "record length")?;
        if cfg!(target_endian = "little") {
            // SAFETY: both are #[repr(C)] plain data without implicit padding.
            let (kb, eb) = unsafe {
                (
                    std::slice::from_raw_parts((&raw const k).cast::<u8>(), KEY_LEN),
                    std::slice::from_raw_parts((&raw const e).cast::<u8>(), ENTRY_LEN),
                )
            };
            check(out.get(..KEY_LEN) == Some(kb), "key bytes")?;
            check(out.get(KEY_LEN..) == Some(eb), "entry bytes")?;
        }
        check(get_record(&out)? == (k, e), "round trip")?;
        let mut bad = out.clone();
        if let Some(b) = bad.get_mut(17) {
            *b = 1;
        }
        check(get_record(&bad).is_err(), "non-zero key padding accepted")
    }

    #[test]
    fn ctsync_frames_round_trip_and_garbage_never_panics() -> Result<(), String> {
        let recs = entries(3);
        let mut stream = hello_frame(Duration::from_millis(1500));
        let mut f = Vec::new();
        records_frame(&mut f, recs.iter());
        stream.extend_from_slice(&f);
        stream.extend_from_slice(&id_frame(T_MARK, 9));
        stream.extend_from_slice(&id_frame(T_ACK, u64::MAX));
        let mut r = io::Cursor::new(stream.clone());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut buf).map_err(|e| format!("{e:?}"))? {
            got.push(f);
        }
        check(
            got == vec![
                Frame::Hello(Hello {
                    version: VERSION,
                    record_len: RECORD_LEN as u16,
                    keepalive_ms: 1500,
                }),
                Frame::Records(recs),
                Frame::Mark(9),
                Frame::Ack(u64::MAX),
            ],
            "frames differ",
        )?;
        // Every truncation ends in an error or a clean end, never a panic.
        for cut in 0..stream.len() {
            let mut r = io::Cursor::new(stream.get(..cut).unwrap_or_default());
            while let Ok(Some(_)) = read_frame(&mut r, &mut buf) {}
        }
        // Random bytes, and random bodies behind a valid length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let n = (rnd() % 200) as usize;
            let body: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            let _ = parse_frame(&body);
            let mut framed = (body.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&body);
            let _ = read_frame(&mut io::Cursor::new(framed), &mut buf);
            let _ = read_frame(&mut io::Cursor::new(body), &mut buf);
        }
        check(
            matches!(
                read_frame(&mut io::Cursor::new(u32::MAX.to_le_bytes()), &mut buf),
                Err(ReadError::Malformed(_))
            ),
            "oversized frame accepted",
        )
    }

    #[test]
    fn ctsync_kind_constants_survive_the_wire() -> Result<(), String> {
        let (k, mut e) = entry(1);
        e.kind = CT_SNAT | CT_PAT;
        let mut out = Vec::new();
        records_frame(&mut out, [(k, e)].iter());
        let body = out.get(4..).ok_or("short")?;
        check(
            parse_frame(body)? == Frame::Records(vec![(k, e)]),
            "records",
        )
    }
}
