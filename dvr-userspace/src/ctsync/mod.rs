//! Conntrack replication between the candidates of HA routers (see `docs/HA.md`,
//! "Conntrack sync"): the active host streams the conntrack entries of its HA roles to the
//! other candidates, which write them into their own conntrack map, so a flow established
//! before a failover keeps its translation after it. Plain std threads and blocking TCP.
//!
//! - [`Replicator`] (active host): one scanner thread reads the store every
//!   [`Config::scan_interval`] with the current selection; one thread per peer keeps a TCP
//!   connection and sends what that peer has not seen: entries that are new or whose
//!   kind, TCP flags or translation changed (counters and timestamps are not compared, so
//!   idle flows cost nothing), everything again every [`Config::refresh_interval`] (which
//!   keeps the standby's idle timers fresh), and everything on a fresh connection. A token
//!   bucket shared by all peers bounds the bytes per second; what the budget does not cover
//!   stays pending for the next round. Deletions are not replicated: the standby's own GC
//!   expires entries that stop being refreshed. [`Replicator::sync_to`] sends a full dump of
//!   a fresh scan followed by a mark and waits for its acknowledgement.
//! - [`Listener`] (every candidate): accepts connections and writes what it receives into
//!   its [`CtStore`], one batch per frame; a mark is acknowledged after everything before it
//!   was written. Input that is not well-formed closes that connection (logged with the
//!   peer's address) and nothing else.
//! - [`PinnedCt`]: the [`CtStore`] of the pinned `DVR_CT` map. Writes stamp `created_ns` and
//!   `last_seen_ns` with the receiver's clock, so its GC measures idleness from receipt.
//!
//! # Wire format (version 1)
//!
//! A connection carries frames in both directions. All integers are little-endian.
//!
//! ```text
//! frame   = len:u32  type:u8  payload          len = 1 + payload length, at most MAX_FRAME
//! HELLO   type 1: magic "DVRCTSYN"  version:u16 = 1  record_len:u16 = 76  keepalive_ms:u32
//! RECORDS type 2: count:u32 (1..=MAX_BATCH)  count * record
//! MARK    type 3: id:u64
//! ACK     type 4: id:u64
//! record  = CtKey (20 bytes) CtEntry (56 bytes): each field little-endian at its offset in
//!           the #[repr(C)] struct, i.e. the structs' in-memory bytes on the (little-endian)
//!           hosts the datapath runs on; `*_be` fields thus carry network byte order as they
//!           are. CtKey's 3 padding bytes are zero (a record with others is malformed).
//! ```
//!
//! The connecting side (sender) starts with a HELLO whose `keepalive_ms` is the interval of
//! its keepalive marks; the listener checks magic, version and record length, answers with
//! its own HELLO (`keepalive_ms` 0) and from then on only sends ACKs. The sender sends
//! RECORDS and MARKs; the listener answers each MARK with an ACK carrying the same id once
//! every record received before it is written. A listener closes a connection that is silent
//! for 3 keepalive intervals; a sender closes (and reconnects) when its previous keepalive
//! mark is still unacknowledged one interval later. Anything else (wrong magic or version,
//! unknown type, a length out of bounds or not matching the type, a frame out of order)
//! closes the connection.
//!
//! # Files
//!
//! - `wire.rs`: the constants, frame encoding and decoding of the format above;
//! - `store.rs`: [`CtStore`] and [`PinnedCt`];
//! - `ratelimit.rs`: the token bucket behind [`Config::rate_bytes_per_sec`];
//! - `sender.rs`: [`Replicator`] (scanner and per-peer threads) and its [`Config`];
//! - `receiver.rs`: [`Listener`];
//! - `stats.rs`: the counters both ends report ([`Stats`], [`ListenerStats`]).
mod ratelimit;
mod receiver;
mod sender;
mod stats;
mod store;
pub mod wire;

pub use receiver::Listener;
pub use sender::{Config, Replicator};
pub use stats::{ListenerStats, PeerStats, Stats};
pub use store::{CtStore, PinnedCt, Select};
pub use wire::{MAGIC, MAX_BATCH, MAX_FRAME, PORT, RECORD_LEN, VERSION};
