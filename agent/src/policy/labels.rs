//! A label set held as one sorted vector with no spare room. A cluster
//! holds tens of thousands of them (every pod, namespace, node and
//! selector), and nearly all have one to three labels: a `BTreeMap` leaf
//! costs about 560 bytes even for one, this costs the strings and 48 bytes
//! a label. It offers the part of `BTreeMap`'s API the code uses, with the
//! same order, equality, hash, Debug and serde form.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub const fn new() -> Labels {
        Labels(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning the value it replaced. Keeps no spare room:
    /// label sets are small and written once, read many times.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key).ok()?;
        let (_, value) = self.0.remove(i);
        self.0.shrink_to_fit();
        Some(value)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> Iter<'_> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> + Clone {
        self.0.iter().map(|(k, _)| k)
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
        kept.shrink_to_fit();
        Labels(kept)
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
        let mut all = Vec::with_capacity(map.len());
        all.extend(map);
        Labels(all)
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

        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(json, r#"{"a":"4","aa":"5","c":"6"}"#);
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), labels);
    }
}
