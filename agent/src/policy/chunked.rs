//! The maps of [`Input`](super::Input): ordered like a `BTreeMap`, but a
//! clone shares the entries instead of copying them. Every pass clones a
//! snapshot of the cluster (the source keeps one, the compiler and the
//! state in force hold others); at 50k pods x 50k policies copying 100k
//! keys and `Arc`s took 40 ms and freeing them 18 ms, in the agent loop's
//! way of the next change. Entries live in ordered chunks, each an `Arc`'d
//! `BTreeMap`: a clone copies the chunk pointers, a change copies only the
//! chunk it touches (if a clone still holds it), and two clones are
//! compared chunk by chunk, skipping the chunks they share.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::{Bound, Index, RangeBounds};
use std::sync::Arc;

/// A chunk that grows past this many entries is split in two: small
/// enough that copying one is cheap, large enough that a clone of 100k
/// entries is a few hundred pointers. Tests split at 8, to meet many
/// chunks in small maps.
const MAX_CHUNK: usize = if cfg!(test) { 8 } else { 512 };

pub struct ChunkedMap<K, V> {
    /// In key order, none empty: every key of a chunk is below every key
    /// of the next, and a key belongs to the last chunk whose first key is
    /// not above it (the first chunk, for keys below all).
    chunks: Vec<Arc<BTreeMap<K, V>>>,
    len: usize,
}

impl<K, V> Clone for ChunkedMap<K, V> {
    fn clone(&self) -> Self {
        ChunkedMap { chunks: self.chunks.clone(), len: self.len }
    }
}

impl<K, V> Default for ChunkedMap<K, V> {
    fn default() -> Self {
        ChunkedMap { chunks: Vec::new(), len: 0 }
    }
}

impl<K: Ord, V> ChunkedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk `q` belongs to; the map has at least one chunk.
    fn chunk_of<Q: Ord + ?Sized>(&self, q: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        let after = self.chunks.partition_point(|c| c.first_key_value().is_some_and(|(k, _)| k.borrow() <= q));
        after.saturating_sub(1)
    }

    pub fn get<Q: Ord + ?Sized>(&self, q: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        if self.chunks.is_empty() {
            return None;
        }
        self.chunks[self.chunk_of(q)].get(q)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, q: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(q).is_some()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + Clone {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + Clone {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + Clone {
        self.iter().map(|(_, v)| v)
    }

    /// The entries within `range`, in key order.
    pub fn range<Q, R>(&self, range: R) -> impl DoubleEndedIterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q> + Clone,
    {
        let from = match range.start_bound() {
            Bound::Included(q) | Bound::Excluded(q) if !self.chunks.is_empty() => self.chunk_of(q),
            _ => 0,
        };
        self.chunks[from..].iter().flat_map(move |c| c.range(range.clone()))
    }

    /// The entries of the chunks `other` does not share, in key order.
    fn unshared<'a>(&'a self, other: &Self) -> impl Iterator<Item = (&'a K, &'a V)> {
        let shared: HashSet<*const BTreeMap<K, V>> = other.chunks.iter().map(Arc::as_ptr).collect();
        self.chunks.iter().filter(move |c| !shared.contains(&Arc::as_ptr(c))).flat_map(|c| c.iter())
    }

    /// The keys whose values differ from `old`'s (by `same`), in key
    /// order: with the new value when added or changed, None when removed.
    /// Chunks both maps share are skipped: a key of a shared chunk belongs
    /// to that chunk in both, so neither map holds it anywhere else.
    pub fn changes_from<'a>(
        &'a self,
        old: &'a Self,
        same: impl Fn(&V, &V) -> bool,
    ) -> impl Iterator<Item = (&'a K, Option<&'a V>)> {
        changes(old.unshared(self), self.unshared(old), same)
    }
}

/// The keys whose values differ between two walks in key order (by
/// `same`), in key order: with the new value when added or changed, None
/// when removed.
pub fn changes<'a, K: Ord + 'a, V: 'a>(
    old: impl Iterator<Item = (&'a K, &'a V)>,
    new: impl Iterator<Item = (&'a K, &'a V)>,
    same: impl Fn(&V, &V) -> bool,
) -> impl Iterator<Item = (&'a K, Option<&'a V>)> {
    let (mut a, mut b) = (old.peekable(), new.peekable());
    std::iter::from_fn(move || {
        loop {
            return match (a.peek(), b.peek()) {
                (None, None) => None,
                (Some(_), None) => a.next().map(|(k, _)| (k, None)),
                (None, Some(_)) => b.next().map(|(k, v)| (k, Some(v))),
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => a.next().map(|(k, _)| (k, None)),
                    std::cmp::Ordering::Greater => b.next().map(|(k, v)| (k, Some(v))),
                    std::cmp::Ordering::Equal => {
                        let differs = !same(va, vb);
                        a.next();
                        let (k, v) = b.next().expect("peeked");
                        if differs {
                            Some((k, Some(v)))
                        } else {
                            continue;
                        }
                    }
                },
            };
        }
    })
}

impl<K: Ord + Clone, V: Clone> ChunkedMap<K, V> {
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(BTreeMap::from([(k, v)])));
            self.len = 1;
            return None;
        }
        let i = self.chunk_of(&k);
        let chunk = Arc::make_mut(&mut self.chunks[i]);
        let old = chunk.insert(k, v);
        if old.is_none() {
            self.len += 1;
            if chunk.len() > MAX_CHUNK {
                let middle = chunk.keys().nth(chunk.len() / 2).expect("a chunk past its size").clone();
                let upper = chunk.split_off(&middle);
                self.chunks.insert(i + 1, Arc::new(upper));
            }
        }
        old
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, q: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        if self.chunks.is_empty() {
            return None;
        }
        let i = self.chunk_of(q);
        // A miss copies nothing.
        if !self.chunks[i].contains_key(q) {
            return None;
        }
        let chunk = Arc::make_mut(&mut self.chunks[i]);
        let old = chunk.remove(q);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(i);
        }
        old
    }
}

impl<K: Ord + Clone, V: Clone> Extend<(K, V)> for ChunkedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for ChunkedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = ChunkedMap::new();
        m.extend(iter);
        m
    }
}

impl<K: Ord + Clone, V: Clone, const N: usize> From<[(K, V); N]> for ChunkedMap<K, V> {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<K: Ord + Clone, V: Clone> IntoIterator for ChunkedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::iter::FlatMap<
        std::vec::IntoIter<Arc<BTreeMap<K, V>>>,
        std::collections::btree_map::IntoIter<K, V>,
        fn(Arc<BTreeMap<K, V>>) -> std::collections::btree_map::IntoIter<K, V>,
    >;

    /// Chunks no clone shares are moved, not copied.
    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flat_map(|c| Arc::unwrap_or_clone(c).into_iter())
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a ChunkedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a K, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Ord, V, Q: Ord + ?Sized> Index<&Q> for ChunkedMap<K, V>
where
    K: Borrow<Q>,
{
    type Output = V;

    fn index(&self, q: &Q) -> &V {
        self.get(q).expect("no entry found for key")
    }
}

impl<K: Ord, V: PartialEq> PartialEq for ChunkedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.changes_from(other, V::eq).next().is_none()
    }
}

impl<K: Ord, V: Eq> Eq for ChunkedMap<K, V> {}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for ChunkedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
        /// Clone the map and go on with the clone, keeping the original.
        Fork,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..400, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0u16..400).prop_map(Op::Remove),
            1 => Just(Op::Fork),
        ]
    }

    fn same_as(m: &ChunkedMap<u16, u8>, b: &BTreeMap<u16, u8>) {
        assert_eq!(m.len(), b.len());
        assert!(m.iter().eq(b.iter()));
        assert!(m.iter().rev().eq(b.iter().rev()));
        for c in &m.chunks {
            assert!(!c.is_empty() && c.len() <= MAX_CHUNK);
        }
        for w in m.chunks.windows(2) {
            assert!(w[0].last_key_value().unwrap().0 < w[1].first_key_value().unwrap().0);
        }
    }

    proptest! {
        /// Every operation, on the map and on clones of it, does what it
        /// does on a BTreeMap; a clone never sees the other's changes; the
        /// changes between any two versions are those of the BTreeMaps.
        #[test]
        fn behaves_as_a_btreemap_and_clones_stay_apart(ops in prop::collection::vec(op(), 1..600)) {
            let (mut m, mut b) = (ChunkedMap::new(), BTreeMap::new());
            let mut kept: Vec<(ChunkedMap<u16, u8>, BTreeMap<u16, u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(m.insert(k, v), b.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(m.remove(&k), b.remove(&k)),
                    Op::Fork => kept.push((m.clone(), b.clone())),
                }
            }
            same_as(&m, &b);
            for q in [0u16, 1, 7, 100, 199, 200, 399, 400] {
                prop_assert_eq!(m.get(&q), b.get(&q));
                prop_assert_eq!(m.contains_key(&q), b.contains_key(&q));
                if b.contains_key(&q) {
                    prop_assert_eq!(m[&q], b[&q]);
                }
                let after = (Bound::Excluded(q), Bound::Unbounded);
                prop_assert!(m.range(after).eq(b.range(after)));
                prop_assert!(m.range(..=q).rev().eq(b.range(..=q).rev()));
                prop_assert!(m.range(q..).eq(b.range(q..)));
                prop_assert!(m.range(..q).eq(b.range(..q)));
                prop_assert!(m.range(q / 2..=q).eq(b.range(q / 2..=q)));
            }
            for (old_m, old_b) in &kept {
                same_as(old_m, old_b);
                let want: Vec<(u16, Option<u8>)> = {
                    let mut w: Vec<(u16, Option<u8>)> = old_b.iter().filter(|(k, v)| b.get(k) != Some(v)).map(|(k, _)| (*k, b.get(k).copied())).collect();
                    w.extend(b.iter().filter(|(k, _)| !old_b.contains_key(k)).map(|(k, v)| (*k, Some(*v))));
                    w.sort();
                    w
                };
                let got: Vec<(u16, Option<u8>)> = m.changes_from(old_m, |x, y| x == y).map(|(k, v)| (*k, v.copied())).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(*old_m == m, *old_b == b);
            }
            let owned: Vec<(u16, u8)> = m.into_iter().collect();
            prop_assert!(owned.into_iter().eq(b.into_iter()));
        }
    }

    #[test]
    fn a_clone_copies_no_entry_and_a_change_copies_one_chunk() {
        let m: ChunkedMap<u32, Arc<u32>> = (0..100_000).map(|i| (i, Arc::new(i))).collect();
        let mut c = m.clone();
        assert!(m.chunks.iter().zip(&c.chunks).all(|(a, b)| Arc::ptr_eq(a, b)));
        c.insert(50_000, Arc::new(7));
        let copied = m.chunks.iter().zip(&c.chunks).filter(|(a, b)| !Arc::ptr_eq(a, b)).count();
        assert_eq!(copied, 1);
        // Only the copied chunk's entries have a second holder.
        assert_eq!((Arc::strong_count(&m[&1]), Arc::strong_count(&m[&50_001])), (1, 2));
        let changes: Vec<_> = c.changes_from(&m, Arc::ptr_eq).map(|(k, _)| *k).collect();
        assert_eq!(changes, vec![50_000]);
    }
}
