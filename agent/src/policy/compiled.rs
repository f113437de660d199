//! What the compiler produces: the desired contents of every kernel map
//! (keys as the kernel holds them), and the catalog user space needs to
//! turn the kernel's numbers back into names.

use super::model::{Action, Direction, Labels, Pod, PolicyRef, Tier};
use ipnet::IpNet;
use palisade_common::{FAMILY_V4, FAMILY_V6, IP_KEY_FAMILY_BITS, IpInfo, IpKey, PolicyKey, PolicyValue};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Rule id of the built-in "the node may reach its pods" allowance.
pub const RULE_HOST: u32 = 1;

/// An entry of the IP trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    pub prefix_len: u32,
    pub key: IpKey,
}

impl IpPrefix {
    pub fn from_net(net: IpNet) -> IpPrefix {
        let (family, addr) = family_addr(net.addr());
        IpPrefix { prefix_len: IP_KEY_FAMILY_BITS + u32::from(net.prefix_len()), key: IpKey { family, addr } }
    }

    /// A single address (kept in the exact-match map, not the trie).
    pub fn is_address(&self) -> bool {
        self.prefix_len == palisade_common::ip_key_full_len(self.key.family)
    }

    pub fn to_net(self) -> Option<IpNet> {
        let len = self.prefix_len.checked_sub(IP_KEY_FAMILY_BITS)? as u8;
        let addr = match self.key.family {
            FAMILY_V4 => IpAddr::from([self.key.addr[0], self.key.addr[1], self.key.addr[2], self.key.addr[3]]),
            FAMILY_V6 => IpAddr::from(self.key.addr),
            _ => return None,
        };
        IpNet::new(addr, len).ok()
    }
}

/// A policy entry: a key and how many of its leading bits match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyPrefix {
    pub prefix_len: u32,
    pub key: PolicyKey,
}

impl PolicyPrefix {
    /// The entry of one protocol and port.
    pub fn port(key: PolicyKey) -> PolicyPrefix {
        PolicyPrefix { prefix_len: palisade_common::POLICY_PREFIX_FULL, key }
    }

    /// One protocol and port (kept in the exact-match map, not the trie).
    pub fn is_port(&self) -> bool {
        self.prefix_len == palisade_common::POLICY_PREFIX_FULL
    }

    /// The entry as one number whose order is the fields' order (prefix
    /// length, then the key's big-endian bytes): 32 + 32 + 8 + 32 + 8 + 16
    /// bits. Compared field by field, the byte arrays went through slice
    /// comparisons: ordered maps comparing entries were a quarter of the
    /// agent's time for a pod of a new identity at 10k x 10k (`perf`).
    #[inline]
    fn packed(&self) -> u128 {
        let k = &self.key;
        (u128::from(self.prefix_len) << 96)
            | (u128::from(u32::from_be_bytes(k.local)) << 64)
            | (u128::from(k.direction) << 56)
            | (u128::from(u32::from_be_bytes(k.peer)) << 24)
            | (u128::from(k.protocol) << 16)
            | u128::from(u16::from_be_bytes(k.port))
    }
}

impl Ord for PolicyPrefix {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.packed().cmp(&other.packed())
    }
}

impl PartialOrd for PolicyPrefix {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for PolicyPrefix {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.packed());
    }
}

pub use palisade_common::family_addr;

/// A local pod the kernel enforces on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// Its local identity (what its addresses are judged as, by identity
    /// and cell).
    pub identity: u32,
    /// Its policy class: the local field of the policy entries that judge
    /// its traffic, and what the kernel's endpoint map holds for it.
    pub class: u32,
    /// The class whose entries judge what its own do not (0: none).
    pub parent: u32,
    pub flags: u32,
}

impl LocalEndpoint {
    /// Its entry in the kernel's endpoint map.
    pub fn kernel(&self) -> palisade_common::Endpoint {
        palisade_common::Endpoint { class: self.class, flags: self.flags, parent: self.parent }
    }
}

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IdentityInfo {
    /// A local identity: pods sharing namespace, labels and named ports.
    Pod { namespace: String, labels: Labels },
    /// Addresses of pods with local identity `pod`, inside `cell`.
    Address { pod: u32, cell: IpNet },
    /// Addresses of the node itself, inside `cell`.
    Host { cell: IpNet },
    /// Addresses of another Node object (ClusterNetworkPolicy `nodes`
    /// peers), inside `cell`.
    Node { name: String, cell: IpNet },
    /// Any other address whose most specific ipBlock CIDR is `cell`.
    Cidr { cell: IpNet },
}

/// Where a rule id came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    /// None for the built-in node allowance and for ClusterNetworkPolicy
    /// rules (see `cluster`).
    pub policy: Option<PolicyRef>,
    pub direction: Direction,
    /// Index into the policy's ingress or egress list.
    pub index: usize,
    /// A ClusterNetworkPolicy rule: its policy, tier, priority, name and
    /// action (boxed: most rules are NetworkPolicy rules, and a rule's
    /// record is 32 bytes without it, 120 with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Box<ClusterRuleInfo>>,
}

const _: () = assert!(std::mem::size_of::<RuleInfo>() == 32);

/// A ClusterNetworkPolicy rule, as events, logs and trace name it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClusterRuleInfo {
    pub policy: String,
    pub tier: Tier,
    pub priority: u32,
    /// The rule's name ("" when unnamed: then shown by its index).
    pub rule: String,
    pub action: Action,
}

impl RuleInfo {
    /// The tier the rule belongs to: "Admin", "NetworkPolicy", "Baseline"
    /// (the node allowance counts as NetworkPolicy's).
    pub fn tier(&self) -> &'static str {
        match self.cluster.as_ref().map(|c| c.tier) {
            Some(Tier::Admin) => "Admin",
            Some(Tier::Baseline) => "Baseline",
            None => "NetworkPolicy",
        }
    }
}

impl std::fmt::Display for RuleInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(c) = &self.cluster {
            write!(f, "ClusterNetworkPolicy {} ", c.policy)?;
            if c.rule.is_empty() {
                write!(f, "{} rule {}", self.direction, self.index)?;
            } else {
                write!(f, "rule {}", c.rule)?;
            }
            return write!(f, " ({}, priority {}, {})", c.tier, c.priority, c.action);
        }
        match &self.policy {
            Some(p) => write!(f, "{p} {} rule {}", self.direction, self.index),
            None => f.write_str("node traffic to its pods (--allow-host)"),
        }
    }
}

/// Everything user space needs to turn kernel numbers back into names.
/// Each pass publishes it to the readers of what is in force (events, the
/// flow record): cloning it shares its maps (see [`SharedMap`]) instead of
/// copying them (10-18 ms at 10k pods x 10k policies).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub identities: SharedMap<u32, IdentityInfo>,
    pub rules: SharedMap<u32, RuleInfo>,
    /// Policies that isolate a policy class in a direction.
    pub isolating: SharedMap<(u32, Direction), Vec<PolicyRef>>,
    /// Every known pod, by address.
    pub pods_by_ip: SharedMap<IpAddr, Arc<Pod>>,
    /// Service (namespace, name) by cluster IP.
    pub services_by_ip: SharedMap<IpAddr, (String, String)>,
    /// The node's own addresses (a handful: copied).
    pub host_ips: BTreeSet<IpAddr>,
}

/// Shards of a [`SharedMap`].
const SHARDS: usize = 64;

/// Which shard of a [`SharedMap`] a key lives in.
pub trait ShardKey: Ord {
    fn shard(&self) -> usize;
}

/// Numbers are hashes (`compile::ids`): their top bits spread them, and
/// keep the shards in key order.
impl ShardKey for u32 {
    fn shard(&self) -> usize {
        (self >> (32 - SHARDS.trailing_zeros())) as usize
    }
}

impl ShardKey for (u32, Direction) {
    fn shard(&self) -> usize {
        self.0.shard()
    }
}

/// Addresses share their top bits: a hash of them instead.
impl ShardKey for IpAddr {
    fn shard(&self) -> usize {
        let folded = match self {
            IpAddr::V4(a) => u32::from(*a),
            IpAddr::V6(a) => {
                let x = u128::from(*a);
                (x ^ (x >> 32) ^ (x >> 64) ^ (x >> 96)) as u32
            }
        };
        folded.wrapping_mul(0x9e37_79b9).shard()
    }
}

/// A map the compiler changes in place and every pass publishes: its
/// shards are `Arc`s, so a clone copies 64 pointers, and a change copies
/// only the shard it falls in, and only while a published clone still
/// holds that shard. So the compiler's output and what readers hold are
/// one catalog, not copies of it.
///
/// Iteration goes shard by shard: in key order for numbers, not for
/// addresses.
#[derive(Clone)]
pub struct SharedMap<K, V> {
    shards: [Arc<BTreeMap<K, V>>; SHARDS],
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap { shards: std::array::from_fn(|_| Arc::new(BTreeMap::new())) }
    }
}

impl<K: ShardKey + Clone, V: Clone + PartialEq> SharedMap<K, V> {
    pub fn get(&self, k: &K) -> Option<&V> {
        self.shards[k.shard()].get(k)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.shards[k.shard()].contains_key(k)
    }

    /// Inserts, copying the key's shard if a published clone holds it
    /// (not when the same value is there already).
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let shard = &mut self.shards[k.shard()];
        if shard.get(&k) == Some(&v) {
            return Some(v);
        }
        Arc::make_mut(shard).insert(k, v)
    }

    /// Removes, copying the key's shard only if the key is there.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let shard = &mut self.shards[k.shard()];
        if !shard.contains_key(k) {
            return None;
        }
        Arc::make_mut(shard).remove(k)
    }

    pub fn entry(&mut self, k: K) -> std::collections::btree_map::Entry<'_, K, V> {
        Arc::make_mut(&mut self.shards[k.shard()]).entry(k)
    }

    /// Empties the map without copying anything a clone holds.
    pub fn clear(&mut self) {
        for s in self.shards.iter_mut().filter(|s| !s.is_empty()) {
            *s = Arc::new(BTreeMap::new());
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

impl<K: ShardKey + Clone, V: Clone + PartialEq> Extend<(K, V)> for SharedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: ShardKey + Clone, V: Clone + PartialEq> FromIterator<(K, V)> for SharedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = SharedMap::default();
        m.extend(iter);
        m
    }
}

impl<K: ShardKey + Clone, V: Clone + PartialEq> std::ops::Index<&K> for SharedMap<K, V> {
    type Output = V;
    fn index(&self, k: &K) -> &V {
        self.get(k).expect("no entry for the key")
    }
}

/// Shards are a function of the keys: equal maps have equal shards.
impl<K: PartialEq, V: PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.shards.iter().zip(&other.shards).all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.shards.iter().flat_map(|s| s.iter())).finish()
    }
}

/// The compiler's output: the desired contents of every kernel map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub ips: BTreeMap<IpPrefix, IpInfo>,
    pub policy: BTreeMap<PolicyPrefix, PolicyValue>,
    pub endpoints: Vec<LocalEndpoint>,
    pub catalog: Catalog,
    /// Things worth a warning that do not stop compilation.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_shards_and_a_change_copies_only_its_own() {
        let mut m: SharedMap<u32, u32> = (0..10_000u32).map(|i| (i.wrapping_mul(0x9e37_79b9), i)).collect();
        let published = m.clone();
        let k = 5u32.wrapping_mul(0x9e37_79b9);
        m.insert(k, 0);
        m.remove(&6u32.wrapping_mul(0x9e37_79b9));
        m.remove(&7); // absent: nothing copied
        let copied = m.shards.iter().zip(&published.shards).filter(|(a, b)| !Arc::ptr_eq(a, b)).count();
        assert!(copied <= 2, "{copied} shards copied");
        assert_eq!(published.get(&k), Some(&5), "the published clone keeps what it had");
        assert_eq!(m.get(&k), Some(&0));
        assert_eq!((published.len(), m.len()), (10_000, 9_999));
        let before = m.clone();
        m.clear();
        assert!(m.is_empty());
        assert_eq!(before.len(), 9_999);
    }

    #[test]
    fn entries_order_as_their_fields_do() {
        let field_order = |p: &PolicyPrefix| {
            let k = &p.key;
            (p.prefix_len, k.local, k.direction, k.peer, k.protocol, k.port)
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let entries: Vec<PolicyPrefix> = (0..2_000)
            .map(|_| {
                let (a, b) = (next(), next());
                let small = |v: u64| [0, 1, 255, v as u32 % 4].get((v % 5) as usize).copied().unwrap_or(v as u32);
                PolicyPrefix {
                    prefix_len: small(a) % 97,
                    key: PolicyKey::new(small(a >> 8), (b % 3) as u8, small(b >> 8), (a >> 40) as u8, (b >> 40) as u16),
                }
            })
            .collect();
        for a in &entries {
            for b in entries.iter().take(200) {
                assert_eq!(a.cmp(b), field_order(a).cmp(&field_order(b)), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn numbers_iterate_in_key_order_and_equal_maps_compare_equal() {
        let keys: Vec<u32> = (0..1_000u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let a: SharedMap<u32, ()> = keys.iter().map(|k| (*k, ())).collect();
        let b: SharedMap<u32, ()> = keys.iter().rev().map(|k| (*k, ())).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(a.iter().map(|(k, _)| *k).collect::<Vec<_>>(), sorted);
        assert_eq!(a, b);
        let ips: SharedMap<IpAddr, u32> =
            (0..1_000u32).map(|i| (IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), i)).collect();
        assert!(ips.shards.iter().all(|s| !s.is_empty()), "addresses spread over every shard");
    }
}
