//! Stable numbering for identities and rules.
//!
//! A number is derived from a hash of what it stands for, so the same
//! cluster state always compiles to the same numbers: across recompiles (a
//! change touches only the map entries it must) and across agent restarts
//! (a new agent finds the pinned maps already right). Collisions are
//! resolved by probing in key order, which is deterministic too.

/// Numbers below this are reserved for fixed meanings.
pub const FIRST_DYNAMIC: u32 = 256;

/// FNV-1a, 64 bit: tiny, fast and stable across Rust versions and builds.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
thread_local! {
    /// Tests: when set, numbers fold into this many values (collisions
    /// become common).
    pub(super) static SPACE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub(super) fn fold(h: u64) -> u32 {
    let v = (h ^ (h >> 32)) as u32;
    #[cfg(test)]
    if let n @ 1.. = SPACE.with(|s| s.get()) {
        return FIRST_DYNAMIC + v % n;
    }
    if v < FIRST_DYNAMIC { v + FIRST_DYNAMIC } else { v }
}

/// FNV-1a of several byte strings, each followed by a separator.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        buf.extend_from_slice(p);
        buf.push(0);
    }
    fnv1a(&buf)
}

/// Assigns a distinct number to every key (the keys are distinct); the
/// numbers come back in the order of `keys`.
pub fn assign<K: AsRef<str> + Ord>(keys: &[K]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut used = std::collections::HashSet::with_capacity(keys.len());
    let mut out = vec![0; keys.len()];
    for i in order {
        let mut id = fold(fnv1a(keys[i].as_ref().as_bytes()));
        while !used.insert(id) {
            id = id.checked_add(1).unwrap_or(FIRST_DYNAMIC);
        }
        out[i] = id;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn numbers_are_stable_distinct_and_not_reserved() {
        let a = assign(&["x", "y", "z"]);
        let b = assign(&["z", "y", "x", "w"]);
        for (i, j) in [(0, 2), (1, 1), (2, 0)] {
            assert_eq!(a[i], b[j]);
            assert!(a[i] >= FIRST_DYNAMIC);
        }
        let many = assign(&(0..20_000).map(|i| format!("k{i}")).collect::<Vec<_>>());
        let distinct: BTreeSet<_> = many.iter().collect();
        assert_eq!(distinct.len(), 20_000);
    }
}
