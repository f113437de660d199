//! Read access to the pinned maps of a running agent, opened by path: lets
//! `trace` check what the kernel holds against what the compiler expects.

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray};
use palisade_common::{
    CtEntry, CtKey, CtKey4, Endpoint, IpInfo, IpKey, LAYOUT_VERSION, POLICY_PREFIX_FULL, PolicyKey, PolicyMaps,
    PolicyValue, ip_key_full_len, maps, stat,
};
use std::path::Path;

pub struct Pinned {
    endpoints: HashMap<MapData, u32, Endpoint>,
    ips: LpmTrie<MapData, IpKey, IpInfo>,
    hosts: HashMap<MapData, IpKey, IpInfo>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    policy_ports: HashMap<MapData, PolicyKey, PolicyValue>,
    stats: PerCpuArray<MapData, u64>,
    conntrack4: HashMap<MapData, CtKey4, CtEntry>,
    conntrack6: HashMap<MapData, CtKey, CtEntry>,
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(format!("v{LAYOUT_VERSION}")).join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(T::try_from(Map::from_map_data(data)?)?)
}

impl Pinned {
    /// Opens the maps pinned under an agent's bpffs directory.
    pub fn open(dir: &Path) -> Result<Pinned> {
        Ok(Pinned {
            endpoints: open(dir, maps::ENDPOINTS)?,
            ips: open(dir, maps::IPS)?,
            hosts: open(dir, maps::HOSTS)?,
            policy: open(dir, maps::POLICY)?,
            policy_ports: open(dir, maps::POLICY_PORTS)?,
            stats: open(dir, maps::STATS)?,
            conntrack4: open(dir, maps::CONNTRACK4)?,
            conntrack6: open(dir, maps::CONNTRACK6)?,
        })
    }

    pub fn endpoint(&self, ifindex: u32) -> Option<Endpoint> {
        self.endpoints.get(&ifindex, 0).ok()
    }

    /// Sums of the per-CPU counters, indexed by [`stat`].
    pub fn counters(&self) -> Vec<u64> {
        sum_counters(&self.stats)
    }

    /// Flows in connection tracking, IPv4 and IPv6 (a table each). Walks
    /// the whole tables (one syscall per entry): call it on a slow timer,
    /// not per sync.
    pub fn tracked_flows(&self) -> [usize; 2] {
        [self.conntrack4.keys().count(), self.conntrack6.keys().count()]
    }
}

/// The kernel's own lookups (a failed read counts as no entry), so
/// `palisade_common::decide` over them is the kernel's verdict.
impl PolicyMaps for Pinned {
    fn host(&self, key: &IpKey) -> Option<IpInfo> {
        self.hosts.get(key, 0).ok()
    }

    fn cidr(&self, key: &IpKey) -> Option<IpInfo> {
        self.ips.get(&LpmKey::new(ip_key_full_len(key.family), *key), 0).ok()
    }

    fn policy_in(&self, key: &PolicyKey, trie: bool) -> Option<PolicyValue> {
        if let Ok(v) = self.policy_ports.get(key, 0) {
            return Some(v);
        }
        if !trie {
            return None;
        }
        self.policy.get(&LpmKey::new(POLICY_PREFIX_FULL, *key), 0).ok()
    }
}

/// Sums a per-CPU counter array, indexed by [`stat`].
pub fn sum_counters(stats: &PerCpuArray<MapData, u64>) -> Vec<u64> {
    (0..stat::COUNT).map(|i| stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)).collect()
}
