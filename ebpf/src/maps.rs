//! The classifier's maps (names and layouts in `palisade_common`), the
//! policy lookups over them, and the counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey},
};
use palisade_common::{
    Config, CtEntry, CtKey, CtKey4, Endpoint, FragKey, FragPorts, IpInfo, IpKey, MAP_NO_PREALLOC, POLICY_PREFIX_FULL,
    PolicyKey, PolicyMaps, PolicyValue, SourceBudget, SourceKey, SuppressEntry, capacity, ip_key_full_len, stat,
};

#[map(name = "PALISADE_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(capacity::ENDPOINTS, 0);

#[map(name = "PALISADE_IPS")]
static IPS: LpmTrie<IpKey, IpInfo> = LpmTrie::pinned(capacity::IPS, 0);

#[map(name = "PALISADE_HOSTS")]
static HOSTS: HashMap<IpKey, IpInfo> = HashMap::pinned(capacity::HOSTS, MAP_NO_PREALLOC);

#[map(name = "PALISADE_POLICY")]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(capacity::POLICY, 0);

#[map(name = "PALISADE_POLICY_PORTS")]
static POLICY_PORTS: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(capacity::POLICY, MAP_NO_PREALLOC);

#[map(name = "PALISADE_CT4")]
pub static CONNTRACK4: LruHashMap<CtKey4, CtEntry> = LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map(name = "PALISADE_CT6")]
pub static CONNTRACK6: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map(name = "PALISADE_SUPPRESS")]
pub static SUPPRESS: LruHashMap<CtKey, SuppressEntry> = LruHashMap::pinned(capacity::SUPPRESS, 0);

#[map(name = "PALISADE_SOURCES")]
pub static SOURCES: LruHashMap<SourceKey, SourceBudget> = LruHashMap::pinned(capacity::SOURCES, 0);

#[map(name = "PALISADE_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(capacity::FRAGS, 0);

#[map(name = "PALISADE_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "PALISADE_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[map(name = "PALISADE_EVENTS")]
// Not pinned: events are transient, and each agent sizes its own buffer.
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// The policy maps as `palisade_common::decide` looks them up.
pub struct Kernel;

impl PolicyMaps for Kernel {
    #[inline(always)]
    fn host(&self, key: &IpKey) -> Option<IpInfo> {
        unsafe { HOSTS.get(key) }.copied()
    }

    #[inline(always)]
    fn cidr(&self, key: &IpKey) -> Option<IpInfo> {
        IPS.get(&LpmKey::new(ip_key_full_len(key.family), *key)).copied()
    }

    #[inline(always)]
    fn policy_in(&self, key: &PolicyKey, trie: bool) -> Option<PolicyValue> {
        if let Some(v) = unsafe { POLICY_PORTS.get(key) } {
            return Some(*v);
        }
        if !trie {
            return None;
        }
        POLICY.get(&LpmKey::new(POLICY_PREFIX_FULL, *key)).copied()
    }
}

/// The endpoint enforced on an interface, if any.
#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<Endpoint> {
    unsafe { ENDPOINTS.get(&ifindex) }.copied()
}

/// The agent's configuration; None before the agent has written it.
#[inline(always)]
pub fn config() -> Option<Config> {
    CONFIG.get(0).copied()
}

/// The agent's configuration in place, for the fast path (no copy).
#[inline(always)]
pub fn config_ref() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Adds one to a [`stat`] counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}
