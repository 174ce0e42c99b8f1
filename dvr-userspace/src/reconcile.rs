//! Exact reconciliation: read what the maps hold, write what differs from the desired
//! entries and delete what is not desired, so after any sequence of changes the maps equal
//! what the current state compiles to.
//!
//! Order (from the map table, `dvr_common::map_table!`): all upserts first, map by map in
//! the table's order of agent-owned maps (peers and endpoints before the routes and FDB
//! entries that lead to them, the port entry that activates a tap after what it needs, and
//! floating IPs last: their entry attracts traffic through proxy ARP), then all deletions in
//! reverse order (a FIP and a tap's port entry go first, so no packet follows a
//! half-removed path).
use std::collections::{BTreeMap, BTreeSet};

use aya::Pod;

use dvr_common::config::HostConfig;

use crate::{
    compile::MapEntries,
    maps::{Hash, HostMaps, MapsError, Table},
};

/// What one apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub upserted: usize,
    pub deleted: usize,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.upserted == 0 && self.deleted == 0
    }
}

/// Entries to write and keys to delete so that `actual` becomes `desired`.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    actual: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let puts = desired
        .iter()
        .filter(|(k, v)| actual.get(k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let dels = actual
        .keys()
        .filter(|k| !desired.contains_key(k))
        .cloned()
        .collect();
    (puts, dels)
}

/// What an apply wrote: with it the next apply can diff against memory instead of reading
/// every map back (reading a sparse kernel hash map walks all its buckets: about 1.3 ms of
/// the 1.7 ms one FIP change took).
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub config: HostConfig,
    pub entries: MapEntries,
}

/// Bring every map of `maps` to exactly `desired` (and the host config to `cfg`), reading
/// what they hold first.
pub fn apply(
    maps: &mut HostMaps,
    cfg: &HostConfig,
    desired: &MapEntries,
) -> Result<Applied, MapsError> {
    apply_known(maps, cfg, desired, None)
}

/// [`apply`], trusting `known` (what the previous successful apply wrote) for the contents
/// of the agent-owned maps. Only the agent writes those, so this is exact as long as nobody
/// else edits them; the agent still reads everything back on start, after any failed apply
/// and periodically. Maps the datapath adds keys to (learned VIP locations) are read when
/// their key set could need pruning.
pub fn apply_known(
    maps: &mut HostMaps,
    cfg: &HostConfig,
    desired: &MapEntries,
    known: Option<&Written>,
) -> Result<Applied, MapsError> {
    let mut applied = Applied::default();
    let cfg_now = match known {
        Some(k) => k.config,
        None => maps.read_config()?,
    };
    if cfg_now != *cfg {
        maps.write_config(cfg)?;
        applied.upserted += 1;
    }
    // One diff per map, computed before anything is written; written in table order, deleted
    // in reverse.
    let steps = plan(maps, desired, known)?;
    for step in &steps {
        applied.upserted += step.upsert(maps)?;
    }
    for step in steps.iter().rev() {
        applied.deleted += step.delete(maps)?;
    }
    // Learned VIP locations of VIPs no longer in the state (no candidate left) go too.
    let vips_of = |e: &MapEntries| -> std::collections::BTreeSet<(u32, u32)> {
        e.vip_cand.keys().map(|k| (k.vni, k.ip_be)).collect()
    };
    let vips = vips_of(desired);
    if known.is_some_and(|k| vips_of(&k.entries) == vips) {
        return Ok(applied);
    }
    for k in maps
        .vip_loc
        .read()?
        .keys()
        .filter(|k| !vips.contains(&(k.vni, k.ip_be)))
    {
        maps.vip_loc.del(k)?;
        applied.deleted += 1;
    }
    Ok(applied)
}

/// How many entries of the agent-owned maps differ from `desired` (what an apply would write
/// or delete), writing nothing: 0 when the datapath holds exactly `desired`.
pub fn differences(maps: &HostMaps, desired: &MapEntries) -> Result<usize, MapsError> {
    Ok(plan(maps, desired, None)?.iter().map(|s| s.len()).sum())
}

/// One agent-owned map's part of an apply: what to write and what to delete.
trait Step {
    fn upsert(&self, maps: &mut HostMaps) -> Result<usize, MapsError>;
    fn delete(&self, maps: &mut HostMaps) -> Result<usize, MapsError>;
    /// Entries to write plus keys to delete.
    fn len(&self) -> usize;
}

/// Delete `keys` from `map` (absent ones are no error); how many.
fn delete_keys<T: Table>(map: &mut T, keys: &[T::Key]) -> Result<usize, MapsError> {
    for k in keys {
        map.del(k)?;
    }
    Ok(keys.len())
}

struct Diff<T: Table> {
    puts: Vec<(T::Key, T::Value)>,
    dels: Vec<T::Key>,
    handle: fn(&mut HostMaps) -> &mut T,
}

impl<T: Table> Step for Diff<T> {
    fn upsert(&self, maps: &mut HostMaps) -> Result<usize, MapsError> {
        (self.handle)(maps).put_many(&self.puts)?;
        Ok(self.puts.len())
    }
    fn delete(&self, maps: &mut HostMaps) -> Result<usize, MapsError> {
        delete_keys((self.handle)(maps), &self.dels)
    }
    fn len(&self) -> usize {
        self.puts.len() + self.dels.len()
    }
}

/// A map whose keys the agent decides and whose values the datapath fills (the map table's
/// `agent_keys`): missing keys are created with a zero value, a value already there is never
/// overwritten, keys no longer wanted are deleted.
struct KeyDiff<K, V> {
    puts: Vec<K>,
    dels: Vec<K>,
    handle: fn(&mut HostMaps) -> &mut Hash<K, V>,
}

impl<K: Pod + Ord + Default, V: Pod + PartialEq + Default> Step for KeyDiff<K, V> {
    fn upsert(&self, maps: &mut HostMaps) -> Result<usize, MapsError> {
        let map = (self.handle)(maps);
        for k in &self.puts {
            map.put_new(k, &V::default())?;
        }
        Ok(self.puts.len())
    }
    fn delete(&self, maps: &mut HostMaps) -> Result<usize, MapsError> {
        delete_keys((self.handle)(maps), &self.dels)
    }
    fn len(&self) -> usize {
        self.puts.len() + self.dels.len()
    }
}

fn key_step<K: Pod + Ord + Default, V: Pod + PartialEq + Default>(
    now: &BTreeSet<K>,
    desired: &BTreeSet<K>,
    handle: fn(&mut HostMaps) -> &mut Hash<K, V>,
) -> Box<dyn Step> {
    Box::new(KeyDiff {
        puts: desired.difference(now).copied().collect(),
        dels: now.difference(desired).copied().collect(),
        handle,
    })
}

/// What [`diff`] returns for a map: entries to write, keys to delete.
type Delta<T> = (
    Vec<(<T as Table>::Key, <T as Table>::Value)>,
    Vec<<T as Table>::Key>,
);

fn step<T: Table + 'static>(
    (puts, dels): Delta<T>,
    handle: fn(&mut HostMaps) -> &mut T,
) -> Box<dyn Step>
where
    T::Key: 'static,
    T::Value: 'static,
{
    Box::new(Diff { puts, dels, handle })
}

/// `plan()`: one step per row of the map table's `agent_keys` and `agent` sections, in that
/// order, diffing `desired` against `known` (what the last apply wrote) or, without it,
/// against what the maps hold.
macro_rules! plan {
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
        fn plan(
            maps: &HostMaps,
            desired: &MapEntries,
            known: Option<&Written>,
        ) -> Result<Vec<Box<dyn Step>>, MapsError> {
            Ok(vec![
                $(key_step(
                    &match known {
                        Some(k) => k.entries.$kfield.clone(),
                        None => maps.$kfield.read()?.into_keys().collect(),
                    },
                    &desired.$kfield,
                    |m: &mut HostMaps| &mut m.$kfield,
                ),)*
                $(step(
                    match known {
                        Some(k) => diff(&k.entries.$field, &desired.$field),
                        None => diff(&maps.$field.read()?, &desired.$field),
                    },
                    |m: &mut HostMaps| &mut m.$field,
                ),)*
            ])
        }
    };
}

dvr_common::map_table!(plan);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_writes_changed_and_new_deletes_stale() {
        let actual = BTreeMap::from([(1, 10), (2, 20), (3, 30)]);
        let desired = BTreeMap::from([(2, 20), (3, 31), (4, 40)]);
        let (puts, dels) = diff(&actual, &desired);
        assert_eq!(puts, vec![(3, 31), (4, 40)]);
        assert_eq!(dels, vec![1]);
    }

    #[test]
    fn diff_of_equal_is_empty() {
        let m = BTreeMap::from([(1, 1)]);
        let (puts, dels) = diff(&m, &m);
        assert!(puts.is_empty() && dels.is_empty());
    }
}
