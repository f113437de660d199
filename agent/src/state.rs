//! The agent's state as others see it: what is enforced for each local pod,
//! the status the local API serves, and what the loop shares with the API.

use crate::cluster::InputError;
use crate::datapath::MapFill;
use crate::datapath::pinned::Pinned;
use crate::events::Hub;
use crate::metrics::Metrics;
use crate::policy::compile::Hints;
use crate::policy::{Input, Node};
use crate::trace::{self, Query, Trace};
use palisade_common::stat;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// How a local pod's traffic is treated now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Its policy is in the kernel, on its interface.
    Enforced,
    /// No host route leads to its address: nothing to attach to yet.
    NoInterface,
    /// Its interface already serves another pod.
    Conflict { ifindex: u32 },
    /// The programs could not be attached to its interface.
    AttachFailed(String),
    /// The kernel refused its endpoint entry (the endpoint map is full):
    /// its interface is judged by the entry it had, or, new, not at all.
    EntryRefused,
    /// Its entries could not be written whole (a map is full): everything
    /// but link plumbing is dropped until they can, never a stale allow.
    HeldClosed(String),
    /// It uses the host network, where NetworkPolicy does not apply.
    HostNetwork,
}

impl Enforcement {
    /// A bounded label (metrics, the first word of the status text).
    pub fn kind(&self) -> &'static str {
        match self {
            Enforcement::Enforced => "enforced",
            Enforcement::NoInterface => "no-interface",
            Enforcement::Conflict { .. } => "conflict",
            Enforcement::AttachFailed(_) | Enforcement::EntryRefused => "error",
            Enforcement::HeldClosed(_) => "held-closed",
            Enforcement::HostNetwork => "host-network",
        }
    }
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind();
        match self {
            Enforcement::Enforced => write!(f, "{kind}"),
            Enforcement::NoInterface => write!(f, "{kind}: no host route to the pod's address"),
            Enforcement::Conflict { ifindex } => write!(f, "{kind}: interface {ifindex} already serves another pod"),
            Enforcement::AttachFailed(e) => write!(f, "{kind}: attaching failed: {e}"),
            Enforcement::EntryRefused => write!(
                f,
                "{kind}: the endpoint map refused its entry (see the sync errors); its interface is judged by the \
                 entry it had, or not at all"
            ),
            Enforcement::HeldClosed(why) => write!(f, "{kind}: {why}; all traffic dropped until it can be written"),
            Enforcement::HostNetwork => write!(f, "{kind}: NetworkPolicy does not apply"),
        }
    }
}

/// Status shows the text; programs match on [`Enforcement::kind`].
impl Serialize for Enforcement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a local pod stands after a sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointState {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub identity: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub audit: bool,
    pub state: Enforcement,
}

/// What is enforced now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// True once the kernel holds the latest valid input.
    pub in_sync: bool,
    /// When the kernel last took a change (RFC 3339, milliseconds).
    pub applied_at: Option<String>,
    /// Policy revision in the kernel; bumped by every change.
    pub revision: u32,
    pub node: String,
    /// Where cluster state comes from.
    pub source: String,
    /// Set while the source cannot be read (the API server is away): the
    /// last state stays in force.
    pub stale: Option<String>,
    /// What the source cannot read because the API does not serve it (the
    /// ClusterNetworkPolicy CRD not installed); enforcement goes on.
    pub unavailable: Vec<String>,
    /// Set while the node's interfaces cannot be read whole: the last
    /// complete view stays in use, so nothing in force is removed.
    pub interfaces_error: Option<String>,
    pub audit: bool,
    pub pods: Vec<EndpointState>,
    /// Strict mode: pod interfaces held closed until their pod is known.
    pub pending_interfaces: Vec<String>,
    /// Objects that could not be used as written.
    pub errors: Vec<InputError>,
    /// Problems writing the kernel state.
    pub sync_errors: Vec<String>,
    pub warnings: Vec<String>,
    /// The last time a full resync found map entries changed behind the
    /// agent's back (and rewrote them), if ever since it started.
    pub drift: Option<String>,
    /// Kernel counters (packets, events, flows), named by [`stat::NAMES`].
    pub counters: BTreeMap<String, u64>,
    pub maps: MapFill,
}

/// The state the kernel was last synced to, for `trace`.
pub struct Applied {
    pub input: Arc<Input>,
    pub node: Node,
    pub endpoints: Vec<EndpointState>,
    /// The local identities and classes the kernel was given: compiling
    /// `input` with them reproduces the numbers in force (they depend on
    /// history).
    pub hints: Hints,
}

/// State shared between the agent loop and the API.
pub struct Shared {
    pub status: RwLock<Status>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub applied: RwLock<Option<Arc<Applied>>>,
    /// The pinned maps, read for counters and trace's kernel check.
    pub pinned: Pinned,
    /// Tracked flows in the fuller of the two families' tables (each has
    /// the configured capacity), counted on a slow timer.
    pub tracked_flows: AtomicUsize,
    /// The input version the kernel holds, and how to read the current
    /// one: `in_sync` compares them when asked, so a script that just wrote
    /// a file never sees a stale "in sync".
    pub input: InputVersion,
    /// The flow record (`palisade flows`, `palisade advise`).
    pub flows: Arc<crate::flows::Record>,
}

pub struct InputVersion {
    pub current: Box<dyn Fn() -> u64 + Send + Sync>,
    pub applied: AtomicU64,
}

impl Shared {
    pub fn current_status(&self) -> Status {
        // The version first: the loop writes the status, then the version,
        // so a status read after the version is at least that new, and a
        // script waiting for `in_sync` never sees an older one.
        let applied = self.input.applied.load(Ordering::SeqCst);
        let mut s = self.status.read().map(|s| s.clone()).unwrap_or_default();
        if (self.input.current)() != applied {
            s.in_sync = false;
        }
        s.counters = stat::NAMES.iter().map(|n| n.to_string()).zip(self.pinned.counters()).collect();
        s.counters.insert("events_received".into(), self.metrics.received_total());
        s.maps.conntrack.0 = self.tracked_flows.load(Ordering::Relaxed);
        let (evicted, expired, missed) = self.flows.losses();
        s.counters.insert("flow_keys".into(), self.flows.len() as u64);
        s.counters.insert("flow_keys_evicted".into(), evicted);
        s.counters.insert("flow_keys_expired".into(), expired);
        s.counters.insert("flow_events_missed".into(), missed);
        s
    }

    /// Traces a connection against the state in force, and checks the
    /// kernel's entries for the sides whose pod is enforced on this node.
    pub fn trace(&self, q: &Query) -> Result<Trace, String> {
        let applied = self.applied.read().ok().and_then(|a| a.clone()).ok_or("the agent has not synced yet")?;
        let mut t = trace::trace(&applied.input, &applied.node, q)?;
        let (src, dst) = (t.source.ip, t.destination.ip);
        for (side, remote) in [(&mut t.egress, dst), (&mut t.ingress, src)] {
            let local =
                applied.endpoints.iter().find(|e| side.pod.as_deref() == Some(&format!("{}/{}", e.namespace, e.name)));
            if let Some(enforced) = local {
                trace::check_kernel(side, &applied, &self.pinned, enforced, remote, q);
            }
        }
        Ok(t)
    }
}
