//! Batched map writes (`palisade::datapath::batch`) against the kernel.
//! A sync's fail-closed bookkeeping (which entries it believes written,
//! which identity it holds closed) rests on a stopped batch saying exactly
//! how many entries took effect before the one that failed, across the
//! calls a long batch is split into.

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData};
use palisade::datapath::batch::{self, BATCH};

/// LPM tries must be created without preallocation.
const BPF_F_NO_PREALLOC: u32 = 1;

fn trie(capacity: u32) -> LpmTrie<MapData, u32, u32> {
    LpmTrie::create(capacity, BPF_F_NO_PREALLOC).expect("an LPM trie")
}

fn keys(range: std::ops::Range<u32>) -> Vec<Key<u32>> {
    range.map(|i| Key::new(32, i.to_be())).collect()
}

#[test]
fn a_batch_stops_at_the_first_entry_that_does_not_fit_and_says_where() {
    // More than two calls' worth into a trie with room for part of it.
    let room = BATCH as u32 + 904;
    let map = trie(room);
    let all = keys(0..2 * BATCH as u32 + 10);
    let values: Vec<u32> = (0..all.len() as u32).map(|i| i * 7).collect();
    let stopped = batch::update(&map, &all, &values).expect_err("more entries than the map has room for");
    assert_eq!(stopped.done, room as usize, "entries done before the one that failed");
    assert_eq!(stopped.error.raw_os_error(), Some(libc::ENOSPC), "{}", stopped.error);
    let held: Vec<(u32, u32)> =
        map.iter().map(|r| r.expect("entry")).map(|(k, v)| (u32::from_be(k.data()), v)).collect();
    let mut held = held;
    held.sort();
    let want: Vec<(u32, u32)> = (0..room).map(|i| (i, i * 7)).collect();
    assert_eq!(held, want, "exactly the entries before the failed one are in the map, with their values");

    // Removing: a key that is not there is removed already; those after
    // it go too, in this call's share and in a later one's.
    let gone = vec![all[0], Key::new(32, 999_999u32.to_be()), all[2]];
    batch::delete(&map, &gone).expect("a missing key is no failure");
    assert!(map.get(&all[0], 0).is_err(), "the key before the missing one is removed");
    assert!(map.get(&all[2], 0).is_err(), "and the key after it");
    assert_eq!(map.get(&all[1], 0).expect("a key not named stays"), 7);
    batch::update(&map, &all[..room as usize], &values[..room as usize]).expect("the same entries again");
    let mut gone = all[..room as usize].to_vec();
    gone.insert(BATCH + 5, Key::new(32, 999_999u32.to_be()));
    gone.insert(3, Key::new(32, 999_998u32.to_be()));
    batch::delete(&map, &gone).expect("missing keys in two calls' shares");

    // Whole batches, over several calls.
    assert_eq!(map.iter().count(), 0, "all removed");
    batch::update(&map, &all[..room as usize], &values[..room as usize]).expect("room for all");
    assert_eq!(map.iter().count(), room as usize);
}

#[test]
fn a_hash_map_batch_stops_where_it_is_full() {
    // Preallocated or not (the address map is not).
    for flags in [0, BPF_F_NO_PREALLOC] {
        let map: HashMap<MapData, [u8; 17], u64> = HashMap::create(4, flags).expect("a hash map");
        let keys: Vec<[u8; 17]> = (0..6u8).map(|i| [i; 17]).collect();
        let values: Vec<u64> = (0..6).collect();
        let stopped = batch::update(&map, &keys, &values).expect_err("full");
        assert_eq!(stopped.done, 4, "flags {flags}");
        assert_eq!(stopped.error.raw_os_error(), Some(libc::E2BIG), "flags {flags}: {}", stopped.error);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k, 0).ok(), (i < 4).then_some(i as u64), "flags {flags}: key {i}");
        }
        // Rewriting entries that are there needs no room.
        batch::update(&map, &keys[..4], &[9u64; 4]).expect("updates in place");
        assert_eq!(map.get(&keys[3], 0).expect("there"), 9);
    }
}

#[test]
fn a_hash_map_is_read_whole_over_several_calls() {
    // More entries than one call takes, preallocated or not; and empty.
    for flags in [0, BPF_F_NO_PREALLOC] {
        let map: HashMap<MapData, [u8; 17], u64> = HashMap::create(4 * BATCH as u32, flags).expect("a hash map");
        assert!(batch::entries(&map).expect("reading an empty map").is_empty(), "flags {flags}");
        let n = 2 * BATCH + 123;
        let keys: Vec<[u8; 17]> = (0..n as u32).map(key17).collect();
        let values: Vec<u64> = (0..n as u64).map(|i| i * 3).collect();
        batch::update(&map, &keys, &values).expect("room for all");
        let mut read = batch::entries(&map).expect("reading the map");
        read.sort();
        let mut want: Vec<([u8; 17], u64)> = keys.into_iter().zip(values).collect();
        want.sort();
        assert_eq!(read.len(), n, "flags {flags}: every entry once");
        assert!(read == want, "flags {flags}: every entry with its value");
    }
}

fn key17(i: u32) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..4].copy_from_slice(&i.to_be_bytes());
    k[16] = 4;
    k
}

#[test]
fn an_entry_a_batch_refuses_is_tried_on_its_own() {
    // Arrays have no batch removal (ENOTSUPP before the first entry, the
    // count left as given) and refuse single removals too (EINVAL): the
    // error reported is the single call's, at the first entry.
    let map: Array<MapData, u32> = Array::create(4, 0).expect("an array");
    let stopped = batch::delete(&map, &[0u32, 1]).expect_err("arrays keep their entries");
    assert_eq!(stopped.done, 0, "nothing removed");
    assert_eq!(stopped.error.raw_os_error(), Some(libc::EINVAL), "the single removal's error: {}", stopped.error);
}

#[test]
fn a_sync_removing_entries_someone_else_removed_goes_on() {
    // The agent's record says the one-port policy entries are there; they
    // are gone (removed behind its back). The sync that drops solo's TCP
    // 80 rule removes some of them: done, not an error at every sync after.
    let mut env = crate::fixture::Env::new(crate::fixture::settings());
    let taken = env
        .take_entries::<palisade_common::PolicyKey, palisade_common::PolicyValue>(palisade_common::maps::POLICY_PORTS);
    assert!(!taken.is_empty(), "one-port entries to take");
    env.apply(crate::cluster::input(true));
    env.apply(crate::cluster::input(true));
    // The same for endpoint entries: a pod deleted whose entry is gone.
    let endpoints = env.take_entries::<u32, palisade_common::Endpoint>(palisade_common::maps::ENDPOINTS);
    assert_eq!(endpoints.len(), crate::cluster::LOCALS.len(), "an endpoint entry per local pod");
    let mut fewer = crate::cluster::input(true);
    let (name, _, _) = crate::cluster::LOCALS[0];
    fewer.pods.remove(&("prod".to_string(), name.to_string())).expect("the pod");
    for _ in 0..2 {
        let report = env.try_apply(&fewer);
        assert!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
    }
}
