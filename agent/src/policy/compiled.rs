//! What the compiler produces: the desired contents of every kernel map
//! (keys as the kernel holds them), and the catalog user space needs to
//! turn the kernel's numbers back into names.

use super::model::{Action, Direction, Pod, PolicyRef, Tier};
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

/// An entry of the policy trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPrefix {
    pub prefix_len: u32,
    pub key: PolicyKey,
}

pub use palisade_common::family_addr;

/// A local pod the kernel enforces on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub flags: u32,
}

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IdentityInfo {
    /// A local identity: pods sharing namespace, labels and named ports.
    Pod { namespace: String, labels: BTreeMap<String, String> },
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
    /// action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRuleInfo>,
}

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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub rules: BTreeMap<u32, RuleInfo>,
    /// Policies that isolate a local identity in a direction.
    pub isolating: BTreeMap<(u32, Direction), Vec<PolicyRef>>,
    /// Every known pod, by address.
    pub pods_by_ip: BTreeMap<IpAddr, Arc<Pod>>,
    /// Service (namespace, name) by cluster IP.
    pub services_by_ip: BTreeMap<IpAddr, (String, String)>,
    pub host_ips: BTreeSet<IpAddr>,
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
