//! A label set, held once however many objects carry it. A cluster holds
//! hundreds of thousands of label sets (every pod, namespace, node and
//! selector) and few distinct ones: the bench's 50k pods and 50k policies
//! carry 225k sets made of 72 distinct strings. Each distinct set is one
//! shared allocation (see [`intern`]); a `Labels` is a pointer to it, and
//! the empty set none. It offers the part of `BTreeMap`'s API the code
//! uses, with the same order, equality, hash, Debug and serde form.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

type Pairs = [(String, String)];

/// Sorted by key, keys unique; never empty (the empty set is `None`).
#[derive(Clone, Default)]
pub struct Labels(Option<Arc<Pairs>>);

impl Labels {
    pub const fn new() -> Labels {
        Labels(None)
    }

    fn pairs(&self) -> &Pairs {
        self.0.as_deref().unwrap_or(&[])
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.pairs().binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.pairs()[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning the value it replaced. The set is copied and
    /// interned: label sets are small and written once, read many times.
    /// Build a set at once (`collect`), never label by label: a selector
    /// of 10,000 labels built so took quadratic time.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        let mut pairs = self.pairs().to_vec();
        let old = match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut pairs[i].1, value)),
            Err(i) => {
                pairs.insert(i, (key, value));
                None
            }
        };
        *self = Labels(intern(pairs));
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key).ok()?;
        let mut pairs = self.pairs().to_vec();
        let (_, value) = pairs.remove(i);
        *self = Labels(intern(pairs));
        Some(value)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> Iter<'_> {
        self.pairs().iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> + Clone {
        self.pairs().iter().map(|(k, _)| k)
    }
}

struct Table {
    sets: HashSet<Arc<Pairs>>,
    sweep_at: usize,
}

/// The table is swept no sooner than at this many sets.
const FLOOR: usize = 1024;

fn table() -> &'static Mutex<Table> {
    static TABLE: LazyLock<Mutex<Table>> =
        LazyLock::new(|| Mutex::new(Table { sets: HashSet::new(), sweep_at: FLOOR }));
    &TABLE
}

/// The shared copy of a sorted, unique label set (`None` for the empty
/// one). The table holds every distinct set in use; sets no `Labels`
/// holds any more are dropped when the table has doubled since it was last
/// swept, so it stays within twice the sets in use (and a small floor).
fn intern(pairs: Vec<(String, String)>) -> Option<Arc<Pairs>> {
    if pairs.is_empty() {
        return None;
    }
    // A panic elsewhere cannot leave the set half-written: use it as is.
    let mut t = table().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = t.sets.get(&pairs[..]) {
        return Some(shared.clone());
    }
    if t.sets.len() >= t.sweep_at {
        // Held by the table alone, under its lock: nobody can take a copy.
        t.sets.retain(|s| Arc::strong_count(s) > 1);
        t.sweep_at = (2 * t.sets.len()).max(FLOOR);
    }
    let shared: Arc<Pairs> = pairs.into();
    t.sets.insert(shared.clone());
    Some(shared)
}

/// How many sets the table holds whose first key is `key`.
#[cfg(test)]
pub(crate) fn interned_with_first_key(key: &str) -> usize {
    let t = table().lock().unwrap_or_else(PoisonError::into_inner);
    t.sets.iter().filter(|s| s[0].0 == key).count()
}

/// As the sorted vector of pairs compares: pointers first, since equal
/// sets are usually one allocation.
impl PartialEq for Labels {
    fn eq(&self, other: &Labels) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

impl Eq for Labels {}

/// Pair by pair, shorter first, as `BTreeMap` orders maps.
impl Ord for Labels {
    fn cmp(&self, other: &Labels) -> std::cmp::Ordering {
        self.pairs().cmp(other.pairs())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Labels) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The slice's hash, as the vector this replaced hashed.
impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pairs().hash(state);
    }
}

/// Pairs in key order, as `BTreeMap::iter` yields them.
pub type Iter<'a> =
    std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> (&'a String, &'a String)>;

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Like `BTreeMap`'s: a key given twice keeps its last value.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Labels {
        let mut all: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // Stable: of equal keys the last given ends last, and is the one kept.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, String)> = Vec::with_capacity(all.len());
        for pair in all {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Labels(intern(kept))
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Labels {
    fn from(pairs: [(K, V); N]) -> Labels {
        pairs.into_iter().collect()
    }
}

impl From<std::collections::BTreeMap<String, String>> for Labels {
    fn from(map: std::collections::BTreeMap<String, String>) -> Labels {
        // Already sorted and unique.
        Labels(intern(map.into_iter().collect()))
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = String;

    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no label {key:?}"))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        std::collections::BTreeMap::<String, String>::deserialize(d).map(Labels::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_as_the_btreemap_it_replaces() {
        let pairs = [("b", "2"), ("a", "1"), ("c", "3"), ("a", "4")];
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut labels: Labels = pairs.into_iter().collect();
        assert_eq!(labels.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>(), "sorted, last value kept");
        assert_eq!(format!("{labels:?}"), format!("{map:?}"));
        assert_eq!(labels.get("a").map(String::as_str), Some("4"));
        assert!(!labels.contains_key("z"));

        assert_eq!(labels.insert("aa".into(), "5".into()), None);
        assert_eq!(labels.insert("c".into(), "6".into()), Some("3".into()));
        assert_eq!(labels.remove("b"), Some("2".into()));
        assert_eq!(labels.remove("b"), None);
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["a", "aa", "c"]);
        assert_eq!(labels["c"], "6");

        // Order, as BTreeMap orders maps: pair by pair, shorter first.
        let one = Labels::from([("a", "1")]);
        let two = Labels::from([("a", "1"), ("b", "0")]);
        assert!(one < two && two < Labels::from([("a", "2")]) && Labels::new() < one);

        // Equal sets are one allocation, however they were built.
        let a = Labels::from([("x", "1"), ("y", "2")]);
        let mut b = Labels::from([("x", "1")]);
        b.insert("y".into(), "2".into());
        assert!(Arc::ptr_eq(a.0.as_ref().unwrap(), b.0.as_ref().unwrap()));
        assert!(Labels::from([("x", "1")]).remove("x").is_some() && Labels::from(BTreeMap::new()).0.is_none());

        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(json, r#"{"a":"4","aa":"5","c":"6"}"#);
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), labels);
    }

    #[test]
    fn sets_no_one_holds_leave_the_table() {
        const KEY: &str = "palisade.test/sweep";
        let held: Vec<Labels> = (0..100).map(|i| Labels::from([(KEY, format!("held-{i}"))])).collect();
        for i in 0..20 * FLOOR {
            drop(Labels::from([(KEY, format!("gone-{i}"))]));
        }
        // Swept whenever the table doubles: what is left of the dropped
        // sets is what came after the last sweep, not all 20k of them.
        let left = interned_with_first_key(KEY);
        assert!(left >= held.len() && left < 10 * FLOOR, "{left} sets left");
        assert_eq!(held[7], Labels::from([(KEY, "held-7")]));
    }
}
