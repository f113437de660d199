//! The flow map's data: verdict events folded into edges between workloads
//! (one edge per source, destination and verdict, with counts, a rate and
//! the flows behind it), and a bounded tail of recent events for the
//! page's verdict list. Everything here is bounded, whatever the event
//! rate: the page reads aggregates, never every event.

use crate::api::Filter;
use crate::events::{Peer, Verdict, VerdictEvent, isolation_text};
use crate::policy::{Input, Workload};
use crate::state::Shared;
use crate::trace::{EndpointRef, Query};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// At most this many edges; the one seen longest ago goes first.
const MAX_EDGES: usize = 2000;
/// At most this many distinct flows kept per edge (the latest).
const MAX_FLOWS: usize = 50;
/// Events kept for the page's verdict list.
const TAIL: usize = 1000;
/// Most events one request for the tail returns.
const TAIL_LIMIT: usize = 500;
/// Rates are averaged over this many seconds.
const RATE_WINDOW: u64 = 10;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A node of the map: a workload (namespace/kind/name), or an address
/// outside the pods (the node itself, the world, an ipBlock's CIDR).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NodeRef {
    pub id: String,
    /// None outside the cluster's pods.
    pub namespace: Option<String>,
    /// What the map writes under it: `deployment/web`, `world`, `host`.
    pub name: String,
}

impl NodeRef {
    pub fn of_workload(namespace: &str, w: &Workload) -> NodeRef {
        NodeRef { id: format!("{namespace}/{w}"), namespace: Some(namespace.to_string()), name: w.to_string() }
    }

    /// The node a flow's end belongs to: its pod's workload when the pod is
    /// known, the pod itself otherwise.
    pub fn of_peer(p: &Peer, input: Option<&Input>) -> NodeRef {
        match (&p.namespace, &p.pod) {
            (Some(ns), Some(pod)) => {
                let known = input.and_then(|i| i.pods.get(&(ns.clone(), pod.clone()))).map(|p| p.workload.clone());
                let w = known.unwrap_or_else(|| Workload { kind: "Pod".into(), name: pod.clone() });
                NodeRef::of_workload(ns, &w)
            }
            _ => NodeRef { id: p.name(), namespace: None, name: p.name() },
        }
    }
}

/// One distinct flow behind an edge: pod to pod, protocol, destination
/// port, the hook that judged it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    pub source: String,
    pub destination: String,
    pub protocol: String,
    pub port: Option<u16>,
    pub direction: crate::policy::Direction,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowStat {
    #[serde(flatten)]
    pub key: FlowKey,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// What decided it, as the agent's log line says it.
    pub decided: String,
    pub source_ip: std::net::IpAddr,
    pub destination_ip: std::net::IpAddr,
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub verdict: Verdict,
    /// Packets the events stand for (drops are summarised per flow).
    pub count: u64,
    /// Per second, over the last [`RATE_WINDOW`] seconds.
    pub rate: f64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// The policies that decided: the allowing rule's, or the isolating ones.
    pub policies: BTreeSet<String>,
    #[serde(skip)]
    window: VecDeque<(u64, u64)>,
    #[serde(skip)]
    flows: HashMap<FlowKey, FlowStat>,
    #[serde(skip)]
    nodes: (NodeRef, NodeRef),
}

impl Edge {
    fn rate_at(&self, now_s: u64) -> f64 {
        let recent: u64 = self.window.iter().filter(|(s, _)| s + RATE_WINDOW > now_s).map(|(_, c)| c).sum();
        recent as f64 / RATE_WINDOW as f64
    }
}

/// What decided an event, in the words of the agent's log line.
pub fn decided(ev: &VerdictEvent) -> String {
    match (ev.verdict, &ev.policy) {
        (Verdict::Allowed, Some(rule)) => format!("allowed by {}", rule.description),
        (Verdict::Allowed, None) if ev.reason == "not-isolated" => {
            format!("{} is not isolated for {}", ev.local().name(), ev.direction)
        }
        (Verdict::Allowed, None) => format!("allowed ({})", ev.reason),
        _ if ev.reason == "no-rule" => isolation_text(&ev.local().name(), ev.direction, &ev.isolated_by),
        _ => format!("dropped: {}", ev.reason),
    }
}

#[derive(Default)]
struct State {
    edges: HashMap<String, Edge>,
    tail: VecDeque<(u64, Arc<VerdictEvent>)>,
    seq: u64,
    /// Events the aggregation missed because it fell behind.
    lagged: u64,
}

impl State {
    fn record(&mut self, ev: &Arc<VerdictEvent>, input: Option<&Input>, now: u64) {
        self.seq += 1;
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back((self.seq, ev.clone()));

        let (src, dst) = (NodeRef::of_peer(&ev.source, input), NodeRef::of_peer(&ev.destination, input));
        let id = format!("{}|{}|{}", src.id, dst.id, ev.verdict);
        if !self.edges.contains_key(&id) && self.edges.len() >= MAX_EDGES {
            let oldest = self.edges.values().min_by_key(|e| e.last_ms).map(|e| e.id.clone());
            if let Some(old) = oldest {
                self.edges.remove(&old);
            }
        }
        let edge = self.edges.entry(id.clone()).or_insert_with(|| Edge {
            id,
            source: src.id.clone(),
            target: dst.id.clone(),
            verdict: ev.verdict,
            count: 0,
            rate: 0.0,
            first_ms: now,
            last_ms: now,
            policies: BTreeSet::new(),
            window: VecDeque::new(),
            flows: HashMap::new(),
            nodes: (src, dst),
        });
        let n = u64::from(ev.count.max(1));
        edge.count += n;
        edge.last_ms = now;
        let sec = now / 1000;
        match edge.window.back_mut() {
            Some((s, c)) if *s == sec => *c += n,
            _ => {
                edge.window.push_back((sec, n));
                if edge.window.len() > RATE_WINDOW as usize {
                    edge.window.pop_front();
                }
            }
        }
        if let Some(rule) = &ev.policy
            && let (Some(ns), Some(name)) = (&rule.namespace, &rule.name)
        {
            edge.policies.insert(format!("{ns}/{name}"));
        }
        edge.policies.extend(ev.isolated_by.iter().map(|p| p.to_string()));
        let key = FlowKey {
            source: ev.source.name(),
            destination: ev.destination.name(),
            protocol: ev.protocol.clone(),
            port: ev.destination.port,
            direction: ev.direction,
        };
        if !edge.flows.contains_key(&key) && edge.flows.len() >= MAX_FLOWS {
            let oldest = edge.flows.values().min_by_key(|f| f.last_ms).map(|f| f.key.clone());
            if let Some(old) = oldest {
                edge.flows.remove(&old);
            }
        }
        let flow = edge.flows.entry(key.clone()).or_insert_with(|| FlowStat {
            key,
            count: 0,
            first_ms: now,
            last_ms: now,
            decided: String::new(),
            source_ip: ev.source.ip,
            destination_ip: ev.destination.ip,
        });
        flow.count += n;
        flow.last_ms = now;
        flow.decided = decided(ev);
        flow.source_ip = ev.source.ip;
        flow.destination_ip = ev.destination.ip;
    }
}

/// Verdict events folded for the page. Cloning shares the same state.
#[derive(Clone, Default)]
pub struct FlowMap(Arc<Mutex<State>>);

impl FlowMap {
    /// Folds the agent's recent history, then every new event, in a task.
    pub fn start(shared: Arc<Shared>) -> FlowMap {
        let map = FlowMap::default();
        // Subscribe before reading the history so nothing falls in
        // between; what both hold is folded once.
        let mut live = shared.hub.subscribe();
        let history = shared.hub.history();
        let mut seen: HashSet<usize> = history.iter().map(|e| Arc::as_ptr(e) as usize).collect();
        map.fold(&history, &shared);
        let task = map.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            loop {
                match live.recv().await {
                    Ok(ev) => batch.push(ev),
                    Err(RecvError::Lagged(n)) => task.lock().lagged += n,
                    Err(RecvError::Closed) => return,
                }
                // Take what else is waiting, to lock once per batch.
                while batch.len() < 1024 {
                    match live.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(TryRecvError::Lagged(n)) => task.lock().lagged += n,
                        Err(_) => break,
                    }
                }
                if !seen.is_empty() {
                    batch.retain(|e| !seen.contains(&(Arc::as_ptr(e) as usize)));
                    if !batch.is_empty() {
                        seen = HashSet::new();
                    }
                }
                task.fold(&batch, &shared);
                batch.clear();
            }
        });
        map
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fold(&self, events: &[Arc<VerdictEvent>], shared: &Shared) {
        if events.is_empty() {
            return;
        }
        let applied = shared.applied.read().ok().and_then(|a| a.clone());
        let input = applied.as_ref().map(|a| a.input.as_ref());
        self.record_all(events, input, now_ms());
    }

    /// Folds `events` as seen at `now` (milliseconds since the epoch).
    pub fn record_all(&self, events: &[Arc<VerdictEvent>], input: Option<&Input>, now: u64) {
        let mut st = self.lock();
        for ev in events {
            st.record(ev, input, now);
        }
    }

    /// Edges, with the rate as of `now`, whose either end is in one of
    /// `namespaces` (all when empty).
    pub fn edges(&self, namespaces: &[String], now: u64) -> Vec<(Edge, NodeRef, NodeRef)> {
        let st = self.lock();
        let wanted = |n: &NodeRef| n.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns));
        let mut out: Vec<_> = st
            .edges
            .values()
            .filter(|e| namespaces.is_empty() || wanted(&e.nodes.0) || wanted(&e.nodes.1))
            .map(|e| {
                let mut e2 = e.clone();
                e2.rate = e.rate_at(now / 1000);
                e2.flows.clear();
                let (a, b) = e.nodes.clone();
                (e2, a, b)
            })
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    /// The map: every workload of the selected namespaces (idle ones too),
    /// the outside ends of their edges, and the edges.
    pub fn snapshot(&self, shared: &Shared, namespaces: &[String]) -> Value {
        let applied = shared.applied.read().ok().and_then(|a| a.clone());
        let now = now_ms();
        let mut nodes: BTreeMap<String, (NodeRef, BTreeSet<String>)> = BTreeMap::new();
        let mut all_ns: BTreeSet<String> = BTreeSet::new();
        if let Some(a) = &applied {
            all_ns.extend(a.input.namespaces.keys().cloned());
            for pod in a.input.pods.values().filter(|p| !p.terminated) {
                all_ns.insert(pod.namespace.clone());
                if namespaces.is_empty() || namespaces.contains(&pod.namespace) {
                    let n = NodeRef::of_workload(&pod.namespace, &pod.workload);
                    nodes.entry(n.id.clone()).or_insert((n, BTreeSet::new())).1.insert(pod.name.clone());
                }
            }
        }
        let edges = self.edges(namespaces, now);
        for (_, a, b) in &edges {
            for n in [a, b] {
                nodes.entry(n.id.clone()).or_insert_with(|| (n.clone(), BTreeSet::new()));
            }
        }
        let st = self.lock();
        json!({
            "time_ms": now,
            "seq": st.seq,
            "lagged": st.lagged,
            "namespaces": all_ns,
            "nodes": nodes.into_values().map(|(n, pods)| json!({
                "id": n.id, "namespace": n.namespace, "name": n.name, "pods": pods,
            })).collect::<Vec<_>>(),
            "edges": edges.into_iter().map(|(e, _, _)| e).collect::<Vec<_>>(),
        })
    }

    /// One edge: its flows (latest first), the policies that decided them,
    /// and `trace`'s explanation of the latest flow it can trace.
    pub fn edge(&self, shared: &Shared, id: &str) -> Result<Value, String> {
        let (edge, mut flows) = {
            let st = self.lock();
            let e = st.edges.get(id).ok_or_else(|| format!("no edge {id} (it may have aged out)"))?;
            let mut e2 = e.clone();
            e2.rate = e.rate_at(now_ms() / 1000);
            (e2, e.flows.values().cloned().collect::<Vec<_>>())
        };
        flows.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.key.cmp(&b.key)));
        let traced = flows.iter().find_map(|f| Some((f, query(f)?)));
        let trace = match traced {
            Some((f, q)) => match shared.trace(&q) {
                Ok(t) => json!({ "flow": f.key, "text": t.to_string(), "allowed": t.allowed }),
                Err(e) => json!({ "flow": f.key, "error": e }),
            },
            None => json!({ "error": "no flow of this edge has a port to trace (TCP, UDP or SCTP)" }),
        };
        Ok(json!({ "edge": edge, "flows": flows, "trace": trace }))
    }

    /// The latest events (after sequence number `after`) that `filter`
    /// passes, at most `limit`.
    pub fn tail(&self, filter: &Filter, after: u64, limit: Option<usize>) -> Value {
        let limit = limit.unwrap_or(200).min(TAIL_LIMIT);
        let st = self.lock();
        let mut events: Vec<Value> = st
            .tail
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > after)
            .filter(|(_, ev)| filter.matches(ev))
            .take(limit)
            .map(|(seq, ev)| json!({ "seq": seq, "text": ev.to_string(), "event": ev.as_ref() }))
            .collect();
        events.reverse();
        json!({ "seq": st.seq, "lagged": st.lagged, "events": events })
    }

    /// Observed traffic between pods (`namespace/pod` names) on a protocol
    /// and destination port: (allowed, dropped, audit) counts.
    pub fn observed(&self, protocol: &str, port: u16) -> HashMap<(String, String), [u64; 3]> {
        let st = self.lock();
        let mut out: HashMap<(String, String), [u64; 3]> = HashMap::new();
        for e in st.edges.values() {
            let slot = match e.verdict {
                Verdict::Allowed => 0,
                Verdict::Dropped => 1,
                Verdict::Audit => 2,
            };
            for f in e.flows.values().filter(|f| f.key.port == Some(port) && f.key.protocol == protocol) {
                out.entry((f.key.source.clone(), f.key.destination.clone())).or_default()[slot] += f.count;
            }
        }
        out
    }
}

/// The `trace` query for a flow, if it has a port.
fn query(f: &FlowStat) -> Option<Query> {
    let protocol = f.key.protocol.parse().ok()?;
    let end = |name: &str, ip| match name.split_once('/') {
        Some((ns, pod)) => EndpointRef::Pod(ns.into(), pod.into()),
        None => EndpointRef::Ip(ip),
    };
    Some(Query {
        from: end(&f.key.source, f.source_ip),
        to: end(&f.key.destination, f.destination_ip),
        port: f.key.port?,
        protocol,
        ipv6: f.source_ip.is_ipv6(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::RuleRef;
    use crate::policy::{Direction, PolicyRef};

    fn peer(ns: &str, pod: &str, ip: &str, port: Option<u16>) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            port,
            kind: "pod".into(),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            cidr: None,
        }
    }

    fn event(verdict: Verdict, dst_pod: &str, count: u32) -> Arc<VerdictEvent> {
        Arc::new(VerdictEvent {
            time: "2026-01-01T00:00:00.000Z".into(),
            verdict,
            direction: Direction::Ingress,
            protocol: "TCP".into(),
            source: peer("x", "a", "10.0.0.1", Some(40000)),
            destination: peer("y", dst_pod, "10.0.0.2", Some(80)),
            reason: if verdict == Verdict::Allowed { "rule".into() } else { "no-rule".into() },
            policy: (verdict == Verdict::Allowed).then(|| RuleRef {
                namespace: Some("y".into()),
                name: Some("allow".into()),
                direction: Direction::Ingress,
                rule: 0,
                description: "y/allow ingress rule 0".into(),
            }),
            isolated_by: if verdict == Verdict::Allowed {
                vec![]
            } else {
                vec![PolicyRef { namespace: "y".into(), name: "deny-b".into() }]
            },
            count,
            tcp_flags: None,
            redecided: false,
            fragment: false,
            ifindex: 3,
        })
    }

    #[test]
    fn events_fold_into_edges_by_workload_pair_and_verdict() {
        let map = FlowMap::default();
        let t0 = 1_000_000;
        map.record_all(&[event(Verdict::Dropped, "b", 3), event(Verdict::Allowed, "b", 1)], None, t0);
        map.record_all(&[event(Verdict::Dropped, "b", 2)], None, t0 + 1500);
        let edges = map.edges(&[], t0 + 1500);
        assert_eq!(edges.len(), 2);
        let dropped = &edges.iter().find(|e| e.0.verdict == Verdict::Dropped).unwrap().0;
        assert_eq!((dropped.source.as_str(), dropped.target.as_str()), ("x/pod/a", "y/pod/b"));
        assert_eq!(dropped.count, 5);
        assert_eq!((dropped.first_ms, dropped.last_ms), (t0, t0 + 1500));
        assert!((dropped.rate - 0.5).abs() < 1e-9, "5 packets over a 10 s window: {}", dropped.rate);
        assert_eq!(dropped.policies.iter().collect::<Vec<_>>(), ["y/deny-b"]);
        // Eleven seconds later the window is empty.
        assert_eq!(map.edges(&[], t0 + 12_000)[0].0.rate, 0.0);
        assert!(map.edges(&["z".into()], t0).is_empty());
        assert_eq!(map.edges(&["y".into()], t0).len(), 2);
        let seen = map.observed("TCP", 80);
        assert_eq!(seen[&("x/a".to_string(), "y/b".to_string())], [1, 5, 0]);
    }

    #[test]
    fn the_tail_is_bounded_and_filtered() {
        let map = FlowMap::default();
        for i in 0..(TAIL + 10) {
            map.record_all(&[event(if i % 2 == 0 { Verdict::Dropped } else { Verdict::Allowed }, "b", 1)], None, 1);
        }
        let all = map.tail(&Filter::default(), 0, Some(10_000));
        assert_eq!(all["events"].as_array().unwrap().len(), TAIL_LIMIT);
        assert_eq!(all["seq"], (TAIL + 10) as u64);
        let drops = Filter { verdict: Some(Verdict::Dropped), ..Default::default() };
        let after = map.tail(&drops, (TAIL + 5) as u64, None);
        let seqs: Vec<u64> = after["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [(TAIL + 7) as u64, (TAIL + 9) as u64]);
        let text = after["events"][0]["text"].as_str().unwrap();
        assert!(text.starts_with("DROPPED ingress TCP") && text.contains("y/deny-b"), "{text}");
    }

    #[test]
    fn edges_are_bounded() {
        let map = FlowMap::default();
        for i in 0..(MAX_EDGES + 5) {
            map.record_all(&[event(Verdict::Dropped, &format!("p{i}"), 1)], None, i as u64);
        }
        let edges = map.edges(&[], 0);
        assert_eq!(edges.len(), MAX_EDGES);
        assert!(!edges.iter().any(|e| e.0.target == "y/pod/p0"), "the oldest edge goes first");
    }
}
