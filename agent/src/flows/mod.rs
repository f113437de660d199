//! The flow record: a compact, bounded summary of the flows this node's
//! agent sees (every verdict event, isolated pods or not, enforce or
//! audit), keyed by workload, peer, direction, protocol, destination port
//! and verdict, with counts and first and last seen. It outlives restarts
//! (saved under `--state-dir`), is served over the local API
//! (`palisade flows`), and is what `palisade advise` reads: the records of
//! several nodes merge exactly (see [`merge`]).

mod key;
mod persist;
mod record;
mod sink;

pub use key::{FlowKey, Remote, Seen};
pub use persist::{load, save};
pub use record::{Record, Settings};
pub use sink::{run, save as save_if_changed};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a flow key has been seen doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Packets the events stood for: one per new flow, the suppressed
    /// count for drops.
    pub count: u64,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

impl Stats {
    /// Both observations of the same flows (the same node's record twice):
    /// the larger count, the widest span. Idempotent.
    fn same_node(self, o: Stats) -> Stats {
        Stats {
            count: self.count.max(o.count),
            first_seen_ms: self.first_seen_ms.min(o.first_seen_ms),
            last_seen_ms: self.last_seen_ms.max(o.last_seen_ms),
        }
    }

    /// Observations of different packets (different nodes): they add up.
    fn other_node(self, o: Stats) -> Stats {
        Stats { count: self.count + o.count, ..self.same_node(o) }
    }
}

/// One flow key and its stats, as served and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(flatten)]
    pub key: FlowKey,
    #[serde(flatten)]
    pub stats: Stats,
}

/// A node's record at one moment: what `palisade flows -o json` prints and
/// the local API's `flows` request answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node whose agent kept it.
    pub node: String,
    /// When it was taken (ms since the epoch).
    pub taken_ms: u64,
    /// When this record started observing (ms since the epoch; kept
    /// across restarts): the window it can speak for.
    pub observing_since_ms: u64,
    /// At most this many keys are kept.
    pub capacity: usize,
    /// Keys dropped, oldest first, because the record was full.
    pub evicted: u64,
    /// Keys dropped because nothing was seen within the retention period.
    pub expired: u64,
    /// Events the record missed (it fell behind a flood).
    pub missed_events: u64,
    /// Sorted by key.
    pub flows: Vec<Flow>,
}

/// Flows seen by any of several nodes' records, each key once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub flows: BTreeMap<FlowKey, Stats>,
    /// The earliest time any record started observing.
    pub observing_since_ms: u64,
    /// The latest snapshot time.
    pub taken_ms: u64,
    /// Nodes whose records went in.
    pub nodes: Vec<String>,
    /// Keys the records lost (evicted when full, or missed events).
    pub lost: u64,
}

/// Merges node records exactly. A flow is recorded where it is judged: a
/// pod's egress on the sender's node, a pod's ingress on the receiver's,
/// so one flow between two pods is two keys (each end's) whichever nodes
/// the pods are on, and the records of two nodes hold the same keys as the
/// record of one node that saw both pods. The same node's record given
/// twice (a file and the live agent, say) counts once.
pub fn merge<'a>(snapshots: impl IntoIterator<Item = &'a Snapshot>) -> Merged {
    let mut by_node: BTreeMap<&str, (BTreeMap<&FlowKey, Stats>, u64)> = BTreeMap::new();
    let mut out = Merged { observing_since_ms: u64::MAX, ..Default::default() };
    for s in snapshots {
        let (flows, lost) = by_node.entry(s.node.as_str()).or_default();
        *lost = (*lost).max(s.evicted + s.missed_events);
        for f in &s.flows {
            flows.entry(&f.key).and_modify(|st| *st = st.same_node(f.stats)).or_insert(f.stats);
        }
        out.observing_since_ms = out.observing_since_ms.min(s.observing_since_ms);
        out.taken_ms = out.taken_ms.max(s.taken_ms);
    }
    for (node, (flows, lost)) in by_node {
        out.nodes.push(node.to_string());
        out.lost += lost;
        for (k, st) in flows {
            out.flows.entry(k.clone()).and_modify(|m| *m = m.other_node(st)).or_insert(st);
        }
    }
    if out.observing_since_ms == u64::MAX {
        out.observing_since_ms = 0;
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 (milliseconds, UTC) of a time in ms since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    crate::events::record::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests;
