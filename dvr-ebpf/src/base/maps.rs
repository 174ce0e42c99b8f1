//! Every map of the datapath: one `#[map]` static per row of the map table in `dvr-common`
//! (`dvr_common::map_table!`), which holds each map's name (the static's identifier, which
//! the `#[map]` macro makes the map name), kind, key and value types, capacity, and who
//! writes it. The conntrack capacity is overridden by the agent at load time.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// The aya-ebpf type of a map kind of the table.
macro_rules! map_type {
    (Array, $k:ty, $v:ty) => { Array<$v> };
    (PerCpuArray, $k:ty, $v:ty) => { PerCpuArray<$v> };
    (Hash, $k:ty, $v:ty) => { HashMap<$k, $v> };
    (LruHash, $k:ty, $v:ty) => { LruHashMap<$k, $v> };
    (Lpm, $k:ty, $v:ty) => { LpmTrie<$k, $v> };
    (RingBuf, $k:ty, $v:ty) => { RingBuf };
}

/// Its definition with the table's capacity (bytes for the ring).
macro_rules! map_new {
    (Array, $k:ty, $v:ty, $cap:expr) => {
        Array::with_max_entries($cap, 0)
    };
    (PerCpuArray, $k:ty, $v:ty, $cap:expr) => {
        PerCpuArray::with_max_entries($cap, 0)
    };
    (Hash, $k:ty, $v:ty, $cap:expr) => {
        HashMap::with_max_entries($cap, 0)
    };
    (LruHash, $k:ty, $v:ty, $cap:expr) => {
        LruHashMap::with_max_entries($cap, 0)
    };
    (Lpm, $k:ty, $v:ty, $cap:expr) => {
        LpmTrie::with_max_entries($cap, 0)
    };
    (RingBuf, $k:ty, $v:ty, $cap:expr) => {
        RingBuf::with_byte_size($cap, 0)
    };
}

macro_rules! declare {
    ($($owner:ident {
        $($(#[$doc:meta])* $field:ident: $name:ident, $kind:ident<$k:ty, $v:ty>, $cap:expr;)*
    })*) => {
        $($(
            $(#[$doc])*
            #[map]
            pub static $name: map_type!($kind, $k, $v) = map_new!($kind, $k, $v, $cap);
        )*)*
    };
}

dvr_common::map_table!(declare);
