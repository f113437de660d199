//! The policy entries' two kernel maps, written as one: entries of one
//! protocol and port (full keys, most of them) in a hash, looked up first;
//! the rest (any port, port ranges, any protocol) in the LPM trie. A hash
//! lookup or write costs a fraction of a trie walk, and a full-length match
//! is always the longest, so the two answer as one trie would.

use super::batch::{self, Stopped};
use crate::policy::PolicyPrefix;
use anyhow::Result;
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap, LpmTrie, MapData};
use palisade_common::{PolicyKey, PolicyValue};
use std::ops::Range;

pub struct PolicyMap {
    trie: LpmTrie<MapData, PolicyKey, PolicyValue>,
    ports: HashMap<MapData, PolicyKey, PolicyValue>,
}

impl PolicyMap {
    pub fn new(
        trie: LpmTrie<MapData, PolicyKey, PolicyValue>,
        ports: HashMap<MapData, PolicyKey, PolicyValue>,
    ) -> Self {
        PolicyMap { trie, ports }
    }

    /// Every entry the kernel holds.
    pub fn entries(&self) -> Result<Vec<(PolicyPrefix, PolicyValue)>> {
        let mut out = Vec::new();
        for item in self.trie.iter() {
            let (k, v) = item?;
            out.push((PolicyPrefix { prefix_len: k.prefix_len(), key: k.data() }, v));
        }
        for (key, v) in batch::entries(&self.ports)? {
            out.push((PolicyPrefix::port(key), v));
        }
        Ok(out)
    }

    /// Writes `entries` in order, stopping as [`batch::update`] does.
    pub fn update(&self, entries: &[(PolicyPrefix, PolicyValue)]) -> Result<(), Stopped> {
        by_map(
            entries.len(),
            |i| entries[i].0.is_port(),
            |run, port| {
                let values: Vec<PolicyValue> = entries[run.clone()].iter().map(|(_, v)| *v).collect();
                if port {
                    let keys: Vec<PolicyKey> = entries[run].iter().map(|(k, _)| k.key).collect();
                    batch::update(&self.ports, &keys, &values)
                } else {
                    let keys: Vec<LpmKey<PolicyKey>> =
                        entries[run].iter().map(|(k, _)| LpmKey::new(k.prefix_len, k.key)).collect();
                    batch::update(&self.trie, &keys, &values)
                }
            },
        )
    }

    /// Removes `keys` in order, stopping as [`batch::delete`] does.
    pub fn delete(&self, keys: &[PolicyPrefix]) -> Result<(), Stopped> {
        by_map(
            keys.len(),
            |i| keys[i].is_port(),
            |run, port| {
                if port {
                    let keys: Vec<PolicyKey> = keys[run].iter().map(|k| k.key).collect();
                    batch::delete(&self.ports, &keys)
                } else {
                    let keys: Vec<LpmKey<PolicyKey>> =
                        keys[run].iter().map(|k| LpmKey::new(k.prefix_len, k.key)).collect();
                    batch::delete(&self.trie, &keys)
                }
            },
        )
    }
}

/// Runs `op` over entries `0..len` in order, one call per run of entries
/// of one map (`is_port`), stopping where a call stops and saying so as one
/// call over all of them would.
fn by_map(
    len: usize,
    is_port: impl Fn(usize) -> bool,
    mut op: impl FnMut(Range<usize>, bool) -> Result<(), Stopped>,
) -> Result<(), Stopped> {
    let mut start = 0;
    while start < len {
        let port = is_port(start);
        let end = (start..len).find(|&i| is_port(i) != port).unwrap_or(len);
        op(start..end, port).map_err(|s| Stopped { done: start + s.done, error: s.error })?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_one_map_in_order_and_where_they_stopped() {
        let ports = [false, true, true, false, true];
        let mut calls = Vec::new();
        let r = by_map(
            ports.len(),
            |i| ports[i],
            |run, port| {
                calls.push((run.clone(), port));
                // The second of the hash run's two entries fails.
                if port { Err(Stopped { done: 1, error: std::io::Error::other("full") }) } else { Ok(()) }
            },
        );
        assert_eq!(calls, [(0..1, false), (1..3, true)], "nothing after the entry that failed");
        assert_eq!(r.unwrap_err().done, 2, "the entries before the one that failed took effect");
        assert!(by_map(0, |_| true, |_, _| panic!("no entries, no call")).is_ok());
    }
}
