//! The desired contents of every agent-written map, and how their keys are spelled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dvr_common::l2::FdbKey;

use crate::model::Mac;

/// The compiled-entries struct, one field per map the agent writes (the `agent` and
/// `agent_keys` sections of the map table, `dvr_common::map_table!`): hash maps as ordered
/// maps, LPM tries keyed by (prefix length, key data), and for `agent_keys` maps only the
/// keys (the datapath fills the values).
macro_rules! map_entries {
    (
        config { $($config:tt)* }
        agent {
            $($(#[$doc:meta])* $field:ident: $name:ident, $kind:ident<$k:ty, $v:ty>, $cap:expr;)*
        }
        agent_keys {
            $($(#[$kdoc:meta])* $kfield:ident: $kname:ident, $kkind:ident<$kk:ty, $kv:ty>, $kcap:expr;)*
        }
        $($rest:tt)*
    ) => {
        /// Desired contents of every agent-written map.
        #[derive(Debug, Default, Clone, PartialEq)]
        pub struct MapEntries {
            $($(#[$doc])* pub $field: entries!($kind, $k, $v),)*
            $($(#[$kdoc])* pub $kfield: BTreeSet<$kk>,)*
        }

        impl MapEntries {
            /// The first map whose entries would not fit its capacity: (name, entries,
            /// capacity). A state that compiles to more is refused before anything is written.
            pub fn over_capacity(&self) -> Option<(&'static str, usize, u32)> {
                $(
                    if self.$field.len() > $cap as usize {
                        return Some((dvr_common::maps::$name, self.$field.len(), $cap));
                    }
                )*
                $(
                    if self.$kfield.len() > $kcap as usize {
                        return Some((dvr_common::maps::$kname, self.$kfield.len(), $kcap));
                    }
                )*
                None
            }
        }
    };
}

/// What a map kind's desired contents are held in.
macro_rules! entries {
    (Hash, $k:ty, $v:ty) => { BTreeMap<$k, $v> };
    (Lpm, $k:ty, $v:ty) => { BTreeMap<(u32, $k), $v> };
}

dvr_common::map_table!(map_entries);

/// 32-bit FNV-1a of the UTF-8 bytes: the stable short id of routers and ports.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// An IPv4 address in network byte order, as `*_be` fields hold it.
pub(super) fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(super) fn fdb_key(vni: u32, mac: Mac) -> FdbKey {
    FdbKey {
        vni,
        mac,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_known_vectors() {
        assert_eq!(fnv1a32(""), 0x811c_9dc5);
        assert_eq!(fnv1a32("a"), 0xe40c_292c);
        assert_eq!(fnv1a32("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn entries_past_a_maps_capacity_are_named() {
        let mut e = MapEntries::default();
        assert_eq!(e.over_capacity(), None);
        let cap = dvr_common::nat::EXT_NEIGH_MAX;
        e.ext_neigh = (0..=cap).collect();
        assert_eq!(
            e.over_capacity(),
            Some((dvr_common::maps::DVR_EXT_NEIGH, cap as usize + 1, cap))
        );
    }
}
