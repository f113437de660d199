//! NetworkPolicy model -> compiled, kernel-ready map entries. Pure Rust: no
//! kernel, no I/O.

pub mod compile;
pub mod ids;
pub mod lookup;
pub mod model;
pub mod ports;

pub use compile::{Catalog, Compiled, IdentityInfo, IpPrefix, LocalEndpoint, PolicyPrefix, RuleInfo, compile};
pub use model::{Namespace, Pod, Policy};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Everything the compiler needs to know about the cluster: validated
/// objects, keyed so iteration order (and so the output) is deterministic.
#[derive(Clone, Debug, Default, PartialEq)]
/// Objects are shared (`Arc`): a snapshot of an unchanged cluster costs no
/// copies of its objects.
pub struct Input {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Keyed by (namespace, name).
    pub pods: BTreeMap<(String, String), Arc<Pod>>,
    /// Keyed by (namespace, name).
    pub policies: BTreeMap<(String, String), Arc<Policy>>,
    /// Keyed by (namespace, name): their cluster IPs are DNATed by
    /// kube-proxy after the source's egress hook, see the datapath.
    pub services: BTreeMap<(String, String), Arc<model::Service>>,
}

/// What the compiler needs to know about the node it compiles for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Pods whose spec.nodeName is this (or unset) are local.
    pub name: String,
    /// The node's own addresses: traffic from them is "host" traffic.
    pub host_ips: Vec<IpAddr>,
    /// Allow traffic from the node to its pods (kubelet probes).
    pub allow_host: bool,
    /// Audit mode for every pod of the node.
    pub audit: bool,
}

/// A policy named by namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Policy direction as NetworkPolicy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn code(self) -> u8 {
        match self {
            Direction::Ingress => palisade_common::DIR_INGRESS,
            Direction::Egress => palisade_common::DIR_EGRESS,
        }
    }

    pub fn from_code(code: u8) -> Direction {
        if code == palisade_common::DIR_EGRESS { Direction::Egress } else { Direction::Ingress }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}
