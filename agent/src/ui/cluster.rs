//! The page fed by every node's agent (`kubectl palisade ui`): every few
//! seconds each agent is asked for its flow record and status; the records
//! merge exactly as `advise` merges them ([`crate::flows::merge`]: a flow
//! recorded at both ends is one edge, counted once), the statuses say how
//! each pod is enforced. The cluster state the views judge by is read here
//! (manifests or the Kubernetes API, as `advise` reads it); `trace` is
//! asked of the agent of the source pod's node (else the destination's),
//! which checks its kernel.

use super::source::Source;
use crate::api::Request;
use crate::flows::{Flow, Snapshot};
use crate::policy::{Input, Node};
use crate::remote::nodes::Nodes;
use crate::state::Applied;
use crate::trace::{EndpointRef, Query, Trace};
use anyhow::Result;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the agents are asked again.
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    applied: Option<Arc<Applied>>,
    record: Snapshot,
    /// (namespace, pod) -> its agent's words for how it is enforced.
    pod_states: BTreeMap<(String, String), String>,
}

pub struct ClusterSource {
    nodes: Nodes,
    state: RwLock<State>,
}

impl ClusterSource {
    /// Reads the cluster state and the agents once, then keeps refreshing.
    pub async fn start(nodes: Nodes, cluster_state: Option<PathBuf>) -> Result<Arc<ClusterSource>> {
        let wake: crate::cluster::Wake = Arc::new(|| {});
        let mut input =
            crate::cluster::Source::start(cluster_state, crate::cluster::files::Options::default(), wake).await?;
        let source = Arc::new(ClusterSource { nodes, state: RwLock::new(State::default()) });
        source.refresh(input.load().input).await;
        let task = source.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                task.refresh(input.load().input).await;
            }
        });
        Ok(source)
    }

    async fn refresh(&self, input: Input) {
        let ((records, missing), statuses) =
            tokio::join!(self.nodes.flows(), self.nodes.ask_all::<serde_json::Value>(&Request::Status));
        for (node, why) in &missing {
            tracing::warn!("no flow record from node {node}: {why}");
        }
        let mut pod_states = BTreeMap::new();
        for (_, status) in statuses {
            let Ok(status) = status else { continue };
            for p in status["pods"].as_array().into_iter().flatten() {
                if let (Some(ns), Some(name), Some(state)) =
                    (p["namespace"].as_str(), p["name"].as_str(), p["state"].as_str())
                {
                    pod_states.insert((ns.to_string(), name.to_string()), state.to_string());
                }
            }
        }
        let record = merged_record(&records);
        // Each side is judged for its pod's own node; this node is only
        // the fallback for pods without one.
        let node = Node { name: String::new(), host_ips: Vec::new(), allow_host: true, audit: false };
        let applied = Applied { input: Arc::new(input), node, endpoints: Vec::new(), hints: Default::default() };
        if let Ok(mut st) = self.state.write() {
            *st = State { applied: Some(Arc::new(applied)), record, pod_states };
        }
    }
}

/// The records of every node as one record: keys merged exactly, losses
/// summed.
pub fn merged_record(records: &[Snapshot]) -> Snapshot {
    let m = crate::flows::merge(records);
    Snapshot {
        node: m.nodes.join(","),
        taken_ms: m.taken_ms,
        observing_since_ms: m.observing_since_ms,
        capacity: records.iter().map(|r| r.capacity).sum(),
        evicted: records.iter().map(|r| r.evicted).sum(),
        expired: records.iter().map(|r| r.expired).sum(),
        missed_events: records.iter().map(|r| r.missed_events).sum(),
        flows: m.flows.into_iter().map(|(key, stats)| Flow { key, stats }).collect(),
    }
}

impl Source for ClusterSource {
    fn applied(&self) -> Option<Arc<Applied>> {
        self.state.read().ok()?.applied.clone()
    }

    fn pod_state(&self, namespace: &str, name: &str) -> Option<String> {
        self.state.read().ok()?.pod_states.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn record(&self, _now_ms: u64) -> Snapshot {
        self.state.read().map(|s| s.record.clone()).unwrap_or_default()
    }

    fn trace<'a>(&'a self, q: &'a Query) -> BoxFuture<'a, Result<Trace, String>> {
        Box::pin(async move {
            let applied = self.applied().ok_or("the cluster state is not read yet")?;
            let node_of = |e: &EndpointRef| match e {
                EndpointRef::Pod(ns, name) => {
                    applied.input.pods.get(&(ns.clone(), name.clone())).and_then(|p| p.node_name.clone())
                }
                EndpointRef::Ip(_) => None,
            };
            let wanted = [node_of(&q.from), node_of(&q.to)];
            let agent = wanted
                .iter()
                .flatten()
                .find_map(|n| self.nodes.0.iter().find(|a| &a.node == n))
                .or_else(|| self.nodes.0.first())
                .ok_or("no agent to ask")?;
            let reply: serde_json::Value = agent
                .ask(&Request::Trace { query: q.clone() })
                .await
                .map_err(|e| format!("node {}: {e:#}", agent.node))?;
            if let Some(e) = reply["error"].as_str() {
                return Err(e.to_string());
            }
            serde_json::from_value(reply["trace"].clone()).map_err(|e| format!("node {}: {e}", agent.node))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{FlowKey, Remote, Seen, Stats};
    use crate::policy::{Direction, Workload};

    fn flow(ns: &str, pod: &str, direction: Direction, peer: (&str, &str), count: u64) -> Flow {
        let w = |name: &str| Workload { kind: "Pod".into(), name: name.into() };
        Flow {
            key: FlowKey {
                namespace: ns.into(),
                workload: w(pod),
                direction,
                peer: Remote::Pod { namespace: peer.0.into(), workload: w(peer.1) },
                protocol: "TCP".into(),
                port: Some(80),
                port_name: None,
                verdict: Seen::Dropped,
            },
            stats: Stats { count, first_seen_ms: 1, last_seen_ms: 2 },
        }
    }

    #[test]
    fn a_flow_recorded_on_both_nodes_is_one_edge_counted_once() {
        // x/a on n1 sends to y/b on n2: egress recorded on n1, ingress on
        // n2; and y/c on n2 is dropped sending to x/a, on n2 only.
        let n1 = Snapshot {
            node: "n1".into(),
            flows: vec![flow("x", "a", Direction::Egress, ("y", "b"), 3)],
            ..Default::default()
        };
        let n2 = Snapshot {
            node: "n2".into(),
            flows: vec![
                flow("y", "b", Direction::Ingress, ("x", "a"), 3),
                flow("y", "c", Direction::Egress, ("x", "a"), 5),
            ],
            missed_events: 2,
            ..Default::default()
        };
        let record = merged_record(&[n1, n2]);
        assert_eq!((record.node.as_str(), record.missed_events), ("n1,n2", 2));
        let edges = super::super::flows::edges_of(&record);
        let counts: Vec<(&str, &str, u64)> =
            edges.values().map(|e| (e.source.as_str(), e.target.as_str(), e.count)).collect();
        assert_eq!(counts, [("x/pod/a", "y/pod/b", 3), ("y/pod/c", "x/pod/a", 5)]);
    }
}
