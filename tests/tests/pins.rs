//! The pins the agent finds at load (`dvr_userspace::attach::load_object`), judged by the map
//! table (`dvr_common::map_table!`): a pin whose kind, key/value layout or capacity differs
//! from this build's is recreated empty; a compatible one is adopted with its contents.
//! Loads the real object; needs root (CAP_BPF) and bpffs, no namespaces.
use anyhow::{Context as _, Result, ensure};
use aya::maps::{Map, MapData};
use dvr_common::{l2, maps, nat::FipEntry};
use dvr_tests::pins::{BPF_MAP_TYPE_HASH, PinDir};
use dvr_userspace::{
    attach::{LoadOptions, load_object},
    maps::{HostMaps, incompatible_pins},
};

fn capacity(dir: &std::path::Path, name: &str) -> Result<u32> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("open pin {name}"))?;
    Ok(data.info().context("map info")?.max_entries())
}

#[test]
fn pins_that_do_not_fit_are_recreated_and_the_rest_adopted() -> Result<()> {
    let pins = PinDir::new("dvrt-pins")?;
    let dir = pins.path();
    // The FDB with a capacity this build does not give it.
    pins.pin_map(
        maps::DVR_FDB,
        BPF_MAP_TYPE_HASH,
        size_of::<l2::FdbKey>(),
        size_of::<l2::FdbEntry>(),
        16,
    )?;
    // The tunnel peers with a value of the wrong size.
    pins.pin_map(
        maps::DVR_PEERS,
        BPF_MAP_TYPE_HASH,
        4,
        8,
        l2::TUNNEL_PEERS_MAX,
    )?;
    // The FIPs exactly as this build declares them, with an entry in them.
    pins.pin_map(
        maps::DVR_FIPS,
        BPF_MAP_TYPE_HASH,
        4,
        size_of::<FipEntry>(),
        dvr_common::nat::FIPS_MAX,
    )?;
    let fip = FipEntry {
        fixed_ip_be: u32::from_ne_bytes([10, 1, 0, 11]),
        vni: 101,
        flags: dvr_common::nat::FIP_LOCAL,
        ..Default::default()
    };
    {
        let mut fips = aya::maps::HashMap::<_, u32, FipEntry>::try_from(Map::HashMap(
            MapData::from_pin(dir.join(maps::DVR_FIPS))?,
        ))?;
        fips.insert(7, fip, 0)?;
    }

    let bad = incompatible_pins(dir, LoadOptions::default().ct_max);
    let names: Vec<&str> = bad.iter().map(|(n, _)| *n).collect();
    ensure!(
        names == [maps::DVR_PEERS, maps::DVR_FDB],
        "incompatible pins, in table order: {bad:?}"
    );
    let fdb_why = &bad[1].1;
    ensure!(
        fdb_why.contains("capacity 16 where this build wants 65536"),
        "why DVR_FDB does not fit: {fdb_why}"
    );

    let ebpf = load_object(dir, &LoadOptions::default()).context("load the object")?;
    ensure!(
        capacity(dir, maps::DVR_FDB)? == l2::FDB_MAX,
        "DVR_FDB not recreated with its capacity"
    );
    let host = HostMaps::open(dir).context("every map opens with its table types")?;
    ensure!(
        host.fips.get(&7)? == Some(fip),
        "DVR_FIPS not adopted with its entry"
    );
    ensure!(
        host.tunnel_peers.read()?.is_empty(),
        "DVR_PEERS recreated empty"
    );
    let left = incompatible_pins(dir, LoadOptions::default().ct_max);
    ensure!(left.is_empty(), "after loading: {left:?}");
    for name in maps::NAMES {
        ensure!(dir.join(name).exists(), "{name} not pinned");
    }
    drop((host, ebpf));
    Ok(())
}
