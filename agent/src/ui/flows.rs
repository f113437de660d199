//! The flow map's data. Edges (one per source workload, destination
//! workload and verdict) are the flow record's keys grouped by workload
//! pair, with counts and first and last seen from the record and a rate
//! from successive counts. The flows behind each edge (which pods, the
//! deciding rule, what `trace` needs) and a tail of recent events for the
//! verdict list come from the event hub. Everything here is bounded,
//! whatever the event rate: the page reads aggregates, never every event.

use super::source::Source;
use crate::api::Filter;
use crate::api::Request;
use crate::events::wire::{self, Symbols};
use crate::events::{Batch, Peer, Verdict, VerdictEvent, isolation_text};
use crate::flows::{Remote, Seen, Snapshot};
use crate::policy::{Direction, Input, Workload};
use crate::remote::merge::{Item, Merged, Options as MergeOptions};
use crate::remote::nodes::Nodes;
use crate::state::Shared;
use crate::trace::{EndpointRef, Query};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// At most this many edges keep their flows; the one seen longest ago
/// goes first.
const MAX_EDGES: usize = 2000;
/// At most this many distinct flows kept per edge (the latest).
const MAX_FLOWS: usize = 50;
/// Events kept for the page's verdict list.
const TAIL: usize = 1000;
/// Most events one request for the tail returns.
const TAIL_LIMIT: usize = 500;
/// How long after a node's event stream ended the cluster page asks again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// Rates are averaged over about this long (milliseconds).
const RATE_WINDOW_MS: u64 = 10_000;

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
            _ => NodeRef::outside(p.kind == "host"),
        }
    }

    /// The other end of a flow record key.
    pub fn of_remote(r: &Remote) -> NodeRef {
        match r {
            Remote::Pod { namespace, workload } => NodeRef::of_workload(namespace, workload),
            Remote::Node { .. } => NodeRef::outside(true),
            Remote::External { .. } => NodeRef::outside(false),
        }
    }

    /// The node itself ("host"), or any address outside the pods ("world").
    fn outside(host: bool) -> NodeRef {
        let name = if host { "host" } else { "world" };
        NodeRef { id: name.into(), namespace: None, name: name.into() }
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

/// An edge of the map, from the flow record.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub verdict: Verdict,
    /// Packets the events stood for (one per new flow; drops are
    /// summarised per flow), each flow counted once, not once per hook.
    pub count: u64,
    /// Per second, from the counts of the last ten seconds or so.
    pub rate: f64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// The policies that decided: the allowing rule's, or the isolating
    /// ones (from the recent events).
    pub policies: BTreeSet<String>,
    #[serde(skip)]
    nodes: (NodeRef, NodeRef),
}

fn edge_id(source: &NodeRef, target: &NodeRef, verdict: Verdict) -> String {
    format!("{}|{}|{verdict}", source.id, target.id)
}

fn verdict_of(seen: Seen) -> Verdict {
    match seen {
        Seen::Allowed => Verdict::Allowed,
        Seen::Dropped => Verdict::Dropped,
        Seen::Audit => Verdict::Audit,
    }
}

/// The record's keys grouped by workload pair and verdict. A flow between
/// two pods of this node is recorded at both hooks (the sender's egress,
/// the receiver's ingress): an edge counts the larger of the two, so each
/// flow counts once.
pub fn edges_of(snapshot: &Snapshot) -> BTreeMap<String, Edge> {
    let mut per_hook: BTreeMap<(String, Direction), u64> = BTreeMap::new();
    let mut edges: BTreeMap<String, Edge> = BTreeMap::new();
    for f in &snapshot.flows {
        let local = NodeRef::of_workload(&f.key.namespace, &f.key.workload);
        let remote = NodeRef::of_remote(&f.key.peer);
        let (source, target) = match f.key.direction {
            Direction::Egress => (local, remote),
            Direction::Ingress => (remote, local),
        };
        let verdict = verdict_of(f.key.verdict);
        let id = edge_id(&source, &target, verdict);
        *per_hook.entry((id.clone(), f.key.direction)).or_default() += f.stats.count;
        let e = edges.entry(id.clone()).or_insert_with(|| Edge {
            id,
            source: source.id.clone(),
            target: target.id.clone(),
            verdict,
            count: 0,
            rate: 0.0,
            first_ms: f.stats.first_seen_ms,
            last_ms: f.stats.last_seen_ms,
            policies: BTreeSet::new(),
            nodes: (source, target),
        });
        e.first_ms = e.first_ms.min(f.stats.first_seen_ms);
        e.last_ms = e.last_ms.max(f.stats.last_seen_ms);
    }
    for ((id, _), count) in per_hook {
        if let Some(e) = edges.get_mut(&id) {
            e.count = e.count.max(count);
        }
    }
    edges
}

/// Edge counts at one moment, for rates.
type Sample = (u64, HashMap<String, u64>);

/// Sets each edge's rate from its count now and its count in the oldest
/// sample of the last [`RATE_WINDOW_MS`], and keeps a sample of now.
fn rates(samples: &mut VecDeque<Sample>, edges: &mut BTreeMap<String, Edge>, now: u64) {
    while samples.len() > 1 && samples.front().is_some_and(|(t, _)| t + RATE_WINDOW_MS < now) {
        samples.pop_front();
    }
    if let Some((t0, old)) = samples.front()
        && now > *t0
    {
        let secs = (now - t0) as f64 / 1000.0;
        for e in edges.values_mut() {
            e.rate = e.count.saturating_sub(old.get(&e.id).copied().unwrap_or(0)) as f64 / secs;
        }
    }
    if samples.back().is_none_or(|(t, _)| now >= t + 1000) {
        samples.push_back((now, edges.values().map(|e| (e.id.clone(), e.count)).collect()));
    }
}

/// What the recent events say about an edge: the flows behind it and the
/// policies that decided them.
#[derive(Clone, Debug)]
struct Detail {
    verdict: Verdict,
    last_ms: u64,
    policies: BTreeSet<String>,
    flows: HashMap<FlowKey, FlowStat>,
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

/// An event of the tail: this node's are kept compact, with the table
/// that names them, and expanded only when a request reads them (most are
/// replaced unread under a flood).
enum Tailed {
    Event(Arc<VerdictEvent>),
    Compact(wire::Compact, Arc<Symbols>),
}

impl Tailed {
    fn expand(&self) -> Arc<VerdictEvent> {
        match self {
            Tailed::Event(ev) => ev.clone(),
            Tailed::Compact(c, symbols) => Arc::new(symbols.expand(c)),
        }
    }
}

#[derive(Default)]
struct State {
    details: HashMap<String, Detail>,
    tail: VecDeque<(u64, Tailed)>,
    seq: u64,
    /// Events the page's aggregation missed because it fell behind.
    lagged: u64,
    samples: VecDeque<Sample>,
}

impl State {
    fn record(&mut self, ev: &Arc<VerdictEvent>, input: Option<&Input>, now: u64) {
        self.push_tail(Tailed::Event(ev.clone()));
        self.detail(ev, u64::from(ev.count.max(1)), input, now);
    }

    fn push_tail(&mut self, ev: Tailed) {
        self.seq += 1;
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back((self.seq, ev));
    }

    /// Folds what `ev` says about its edge and flow, for `packets` packets.
    fn detail(&mut self, ev: &VerdictEvent, packets: u64, input: Option<&Input>, now: u64) {
        let (src, dst) = (NodeRef::of_peer(&ev.source, input), NodeRef::of_peer(&ev.destination, input));
        let id = edge_id(&src, &dst, ev.verdict);
        if !self.details.contains_key(&id) && self.details.len() >= MAX_EDGES {
            let oldest = self.details.iter().min_by_key(|(_, d)| d.last_ms).map(|(id, _)| id.clone());
            if let Some(old) = oldest {
                self.details.remove(&old);
            }
        }
        let detail = self.details.entry(id).or_insert_with(|| Detail {
            verdict: ev.verdict,
            last_ms: now,
            policies: BTreeSet::new(),
            flows: HashMap::new(),
        });
        detail.last_ms = now;
        if let Some(rule) = &ev.policy
            && let (Some(ns), Some(name)) = (&rule.namespace, &rule.name)
        {
            detail.policies.insert(format!("{ns}/{name}"));
        }
        detail.policies.extend(ev.isolated_by.iter().map(|p| p.to_string()));
        let key = FlowKey {
            source: ev.source.name(),
            destination: ev.destination.name(),
            protocol: ev.protocol.clone(),
            port: ev.destination.port,
            direction: ev.direction,
        };
        if !detail.flows.contains_key(&key) && detail.flows.len() >= MAX_FLOWS {
            let oldest = detail.flows.values().min_by_key(|f| f.last_ms).map(|f| f.key.clone());
            if let Some(old) = oldest {
                detail.flows.remove(&old);
            }
        }
        let flow = detail.flows.entry(key.clone()).or_insert_with(|| FlowStat {
            key,
            count: 0,
            first_ms: now,
            last_ms: now,
            decided: String::new(),
            source_ip: ev.source.ip,
            destination_ip: ev.destination.ip,
        });
        flow.count += packets;
        flow.last_ms = now;
        flow.decided = decided(ev);
        flow.source_ip = ev.source.ip;
        flow.destination_ip = ev.destination.ip;
    }
}

/// The page's view of the flows. Cloning shares the same state.
#[derive(Clone, Default)]
pub struct FlowMap(Arc<Mutex<State>>);

impl FlowMap {
    /// Folds the agent's recent history, then every new event, in a task.
    pub fn start(shared: Arc<Shared>) -> FlowMap {
        let map = FlowMap::default();
        // Subscribe before reading the history so nothing falls in
        // between; what both hold is folded once.
        let mut live = shared.hub.subscribe();
        let (history, mut next) = shared.hub.history();
        map.fold_compact(&history, shared.as_ref());
        let task = map.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            loop {
                // Events below `next` are in the history already folded;
                // a gap in the numbers is what this task missed.
                let mut take = |b: &Batch, batch: &mut Vec<wire::Compact>| {
                    if b.seq > next {
                        task.lock().lagged += b.seq - next;
                    }
                    let skip = next.saturating_sub(b.seq) as usize;
                    batch.extend(b.events.iter().skip(skip));
                    next = next.max(b.seq + b.events.len() as u64);
                };
                match live.recv().await {
                    Ok(b) => take(&b, &mut batch),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                // Take what else is waiting, to lock once per batch.
                while batch.len() < 1024 {
                    match live.try_recv() {
                        Ok(b) => take(&b, &mut batch),
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                task.fold_compact(&batch, shared.as_ref());
                batch.clear();
            }
        });
        map
    }

    /// Folds every event of every node's agent, merged in time order, in
    /// a task; their losses count as the page's. A node whose stream ends
    /// is asked again every [`RETRY`] on a stream of its own (without
    /// history: what happened meanwhile is in its flow record, not the
    /// tail).
    pub fn start_cluster(nodes: Nodes, source: Arc<dyn Source>) -> anyhow::Result<FlowMap> {
        let map = FlowMap::default();
        let req = Request::Observe { filter: Filter::default(), last: Some(TAIL), since_ms: None, follow: true };
        map.feed(nodes.observe(&req, &[], MergeOptions::default())?, nodes, source);
        Ok(map)
    }

    fn feed(&self, mut merged: Merged, nodes: Nodes, source: Arc<dyn Source>) {
        let task = self.clone();
        tokio::spawn(async move {
            while let Some(items) = merged.recv().await {
                let mut batch = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Item::Event { event, .. } => batch.push(Arc::new(merged.event(&event))),
                        Item::Lagged { missed, .. } => task.lock().lagged += missed,
                        Item::Gone { node, error } => {
                            let name = merged.node(node).to_string();
                            let why = error.unwrap_or_else(|| "the stream ended".into());
                            tracing::warn!("events from node {name}: {why}; asking again in {RETRY:?}");
                            let (again, nodes, source) = (task.clone(), nodes.clone(), source.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(RETRY).await;
                                let req = Request::Observe {
                                    filter: Filter::default(),
                                    last: None,
                                    since_ms: None,
                                    follow: true,
                                };
                                if let Ok(m) = nodes.observe(&req, std::slice::from_ref(&name), MergeOptions::default())
                                {
                                    again.feed(m, nodes, source);
                                }
                            });
                        }
                    }
                }
                task.fold(&batch, source.as_ref());
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fold(&self, events: &[Arc<VerdictEvent>], source: &dyn Source) {
        if events.is_empty() {
            return;
        }
        let applied = source.applied();
        let input = applied.as_ref().map(|a| a.input.as_ref());
        self.record_all(events, input, now_ms());
    }

    fn fold_compact(&self, events: &[wire::Compact], shared: &Shared) {
        if events.is_empty() {
            return;
        }
        let applied = shared.applied();
        let input = applied.as_ref().map(|a| a.input.as_ref());
        self.record_compact(events, &shared.hub.symbols, input, now_ms());
    }

    /// Folds this node's `events`, named by `symbols`, as seen at `now`:
    /// one expansion per group of events that say the same about a flow,
    /// and only the last [`TAIL`] kept (compact, with `symbols`) for the
    /// tail. The table comes with the events, so none is ever left
    /// unnamed (unfolded, as when the map held a table of its own and had
    /// none yet).
    pub fn record_compact(&self, events: &[wire::Compact], symbols: &Arc<Symbols>, input: Option<&Input>, now: u64) {
        let groups: Vec<(VerdictEvent, u64)> =
            crate::events::group(events).iter().map(|g| (symbols.expand(&g.event), g.packets)).collect();
        let mut st = self.lock();
        let unseen = events.len().saturating_sub(TAIL);
        st.seq += unseen as u64;
        for c in &events[unseen..] {
            st.push_tail(Tailed::Compact(*c, symbols.clone()));
        }
        for (ev, packets) in &groups {
            st.detail(ev, *packets, input, now);
        }
    }

    /// Folds `events` as seen at `now` (milliseconds since the epoch).
    pub fn record_all(&self, events: &[Arc<VerdictEvent>], input: Option<&Input>, now: u64) {
        let mut st = self.lock();
        for ev in events {
            st.record(ev, input, now);
        }
    }

    /// The record's edges as of `now`, with rates and the policies the
    /// recent events name, whose either end is in one of `namespaces`
    /// (all when empty).
    pub fn edges(&self, snapshot: &Snapshot, namespaces: &[String], now: u64) -> Vec<(Edge, NodeRef, NodeRef)> {
        let mut edges = edges_of(snapshot);
        let mut st = self.lock();
        rates(&mut st.samples, &mut edges, now);
        let wanted = |n: &NodeRef| n.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns));
        edges
            .into_values()
            .filter(|e| namespaces.is_empty() || wanted(&e.nodes.0) || wanted(&e.nodes.1))
            .map(|mut e| {
                if let Some(d) = st.details.get(&e.id) {
                    e.policies.clone_from(&d.policies);
                }
                let (a, b) = e.nodes.clone();
                (e, a, b)
            })
            .collect()
    }

    /// The map: every workload of the selected namespaces (idle ones too),
    /// the outside ends of their edges, and the edges.
    pub fn snapshot(&self, source: &dyn Source, namespaces: &[String]) -> Value {
        let applied = source.applied();
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
        let record = source.record(now);
        let edges = self.edges(&record, namespaces, now);
        for (_, a, b) in &edges {
            for n in [a, b] {
                nodes.entry(n.id.clone()).or_insert_with(|| (n.clone(), BTreeSet::new()));
            }
        }
        let st = self.lock();
        json!({
            "time_ms": now,
            "seq": st.seq,
            "lagged": st.lagged + record.missed_events,
            "observing_since_ms": record.observing_since_ms,
            "namespaces": all_ns,
            "nodes": nodes.into_values().map(|(n, pods)| json!({
                "id": n.id, "namespace": n.namespace, "name": n.name, "pods": pods,
            })).collect::<Vec<_>>(),
            "edges": edges.into_iter().map(|(e, _, _)| e).collect::<Vec<_>>(),
        })
    }

    /// One edge: its counts (the record), its recent flows (latest first),
    /// the policies that decided them, and `trace`'s explanation of the
    /// latest flow it can trace.
    pub async fn edge(&self, source: &dyn Source, id: &str) -> Result<Value, String> {
        let now = now_ms();
        let edge = self.edges(&source.record(now), &[], now).into_iter().map(|e| e.0).find(|e| e.id == id);
        let mut flows: Vec<FlowStat> =
            self.lock().details.get(id).map(|d| d.flows.values().cloned().collect()).unwrap_or_default();
        let edge = edge.ok_or_else(|| format!("no edge {id} (it may have aged out)"))?;
        flows.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.key.cmp(&b.key)));
        let traced = flows.iter().find_map(|f| Some((f, query(f)?)));
        let trace = match traced {
            Some((f, q)) => match source.trace(&q).await {
                Ok(t) => json!({ "flow": f.key, "text": t.to_string(), "allowed": t.allowed }),
                Err(e) => json!({ "flow": f.key, "error": e }),
            },
            None => json!({ "error": "no recent flow of this edge has a port to trace (TCP, UDP or SCTP)" }),
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
            .map(|(seq, t)| (seq, t.expand()))
            .filter(|(_, ev)| filter.matches_event(ev))
            .take(limit)
            .map(|(seq, ev)| json!({ "seq": seq, "text": ev.to_string(), "event": ev.as_ref() }))
            .collect();
        events.reverse();
        json!({ "seq": st.seq, "lagged": st.lagged, "events": events })
    }

    /// Recent traffic between pods (`namespace/pod` names) on a protocol
    /// and destination port: (allowed, dropped, audit) counts.
    pub fn observed(&self, protocol: &str, port: u16) -> HashMap<(String, String), [u64; 3]> {
        let st = self.lock();
        let mut out: HashMap<(String, String), [u64; 3]> = HashMap::new();
        for d in st.details.values() {
            let slot = match d.verdict {
                Verdict::Allowed => 0,
                Verdict::Dropped => 1,
                Verdict::Audit => 2,
            };
            for f in d.flows.values().filter(|f| f.key.port == Some(port) && f.key.protocol == protocol) {
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
    use crate::events::wire::{Compact, KIND_POD, Symbol};
    use crate::flows::{Flow, FlowKey as RecordKey, Stats};
    use crate::policy::PolicyRef;

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
                tier: None,
            }),
            isolated_by: if verdict == Verdict::Allowed { vec![] } else { vec![PolicyRef::new("y", "deny-b")] },
            count,
            tcp_flags: None,
            redecided: false,
            fragment: false,
            ifindex: 3,
            folded: 0,
        })
    }

    /// The `i`-th compact event from x/a (10.0.0.1:40000+i) to y/b
    /// (10.0.0.2:`dport`), TCP over IPv4, dropped at ingress for no rule,
    /// its names in `symbols`.
    fn compact_event(symbols: &Symbols, i: u32, dport: u16, count: u32) -> Compact {
        use palisade_common::{DIR_INGRESS, FAMILY_V4, PROTO_TCP, REASON_NO_RULE, VERDICT_DROPPED};
        Compact {
            time_ns: 1_700_000_000_000_000_000 + u64::from(i),
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000 + i as u16,
            dport,
            count,
            src_name: symbols.intern(Symbol::Pod { namespace: "x".into(), name: "a".into() }),
            dst_name: symbols.intern(Symbol::Pod { namespace: "y".into(), name: "b".into() }),
            family: FAMILY_V4,
            protocol: PROTO_TCP,
            direction: DIR_INGRESS,
            verdict: VERDICT_DROPPED,
            reason: REASON_NO_RULE,
            src_kind: KIND_POD,
            dst_kind: KIND_POD,
            ..Default::default()
        }
    }

    fn pod_workload(name: &str) -> Workload {
        Workload { kind: "Pod".into(), name: name.into() }
    }

    fn flow(ns: &str, pod: &str, direction: Direction, peer: Remote, seen: Seen, count: u64, at: u64) -> Flow {
        Flow {
            key: RecordKey {
                namespace: ns.into(),
                workload: pod_workload(pod),
                direction,
                peer,
                protocol: "TCP".into(),
                port: Some(80),
                port_name: None,
                verdict: seen,
            },
            stats: Stats { count, first_seen_ms: at, last_seen_ms: at + 500 },
        }
    }

    #[test]
    fn record_keys_group_into_edges_by_workload_pair_each_flow_once() {
        let xa = Remote::Pod { namespace: "x".into(), workload: pod_workload("a") };
        let yb = Remote::Pod { namespace: "y".into(), workload: pod_workload("b") };
        let world = Remote::External { ip: "203.0.113.7".parse().unwrap() };
        let snapshot = Snapshot {
            flows: vec![
                // One allowed connection, recorded at both hooks.
                flow("x", "a", Direction::Egress, yb.clone(), Seen::Allowed, 1, 1000),
                flow("y", "b", Direction::Ingress, xa.clone(), Seen::Allowed, 1, 1000),
                // Dropped at y/b's ingress after x/a's egress let it out.
                flow("y", "b", Direction::Ingress, xa, Seen::Dropped, 5, 2000),
                flow("x", "a", Direction::Egress, world, Seen::Dropped, 2, 3000),
            ],
            ..Default::default()
        };
        let edges = edges_of(&snapshot);
        let ids: Vec<&str> = edges.keys().map(String::as_str).collect();
        assert_eq!(ids, ["x/pod/a|world|DROPPED", "x/pod/a|y/pod/b|ALLOWED", "x/pod/a|y/pod/b|DROPPED"]);
        let allowed = &edges["x/pod/a|y/pod/b|ALLOWED"];
        assert_eq!(allowed.count, 1, "a flow seen at both hooks counts once");
        let dropped = &edges["x/pod/a|y/pod/b|DROPPED"];
        assert_eq!((dropped.count, dropped.first_ms, dropped.last_ms), (5, 2000, 2500));
        assert_eq!(dropped.nodes.1.namespace.as_deref(), Some("y"));
        assert_eq!(edges["x/pod/a|world|DROPPED"].nodes.1.namespace, None);
    }

    #[test]
    fn rates_come_from_successive_counts() {
        let yb = Remote::Pod { namespace: "y".into(), workload: pod_workload("b") };
        let at = |count| Snapshot {
            flows: vec![flow("x", "a", Direction::Egress, yb.clone(), Seen::Dropped, count, 0)],
            ..Default::default()
        };
        let map = FlowMap::default();
        let t0 = 1_000_000;
        assert_eq!(map.edges(&at(10), &[], t0)[0].0.rate, 0.0, "one count is no rate");
        assert_eq!(map.edges(&at(20), &[], t0 + 1000)[0].0.rate, 10.0);
        assert_eq!(map.edges(&at(50), &[], t0 + 2000)[0].0.rate, 20.0);
        // Samples older than the window go: from t0 + 13 s, the oldest
        // kept is the one of t0 + 2 s (count 50).
        assert_eq!(map.edges(&at(60), &[], t0 + 13_000)[0].0.rate, 10.0 / 11.0);
        assert!(map.edges(&at(60), &["z".into()], t0 + 13_500).is_empty());
        assert_eq!(map.edges(&at(60), &["y".into()], t0 + 13_500).len(), 1);
    }

    #[test]
    fn events_give_each_edge_its_flows_and_policies() {
        let map = FlowMap::default();
        map.record_all(&[event(Verdict::Dropped, "b", 3), event(Verdict::Allowed, "b", 1)], None, 1000);
        map.record_all(&[event(Verdict::Dropped, "b", 2)], None, 2000);
        let st = map.lock();
        let d = &st.details["x/pod/a|y/pod/b|DROPPED"];
        assert_eq!(d.policies.iter().collect::<Vec<_>>(), ["y/deny-b"]);
        let f: Vec<&FlowStat> = d.flows.values().collect();
        assert_eq!((f.len(), f[0].count, f[0].key.source.as_str()), (1, 5, "x/a"));
        assert!(f[0].decided.contains("isolated for ingress by y/deny-b"), "{}", f[0].decided);
        drop(st);
        assert_eq!(map.observed("TCP", 80)[&("x/a".to_string(), "y/b".to_string())], [1, 5, 0]);
        assert!(map.observed("TCP", 81).is_empty());
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
    fn compact_batches_fold_as_their_events_one_by_one() {
        let symbols = Arc::new(Symbols::default());
        let isolated = symbols.intern(Symbol::Isolating(vec![PolicyRef::new("y", "deny-b")]));
        let ev = |i: u32, dport| Compact { isolated, ..compact_event(&symbols, i, dport, i % 3) };
        let batch: Vec<Compact> = (0..(TAIL as u32 + 30)).map(|i| ev(i, if i % 7 == 0 { 81 } else { 80 })).collect();
        let compact = FlowMap::default();
        compact.record_compact(&batch[..20], &symbols, None, 1000);
        compact.record_compact(&batch[20..], &symbols, None, 2000);
        let expanded = FlowMap::default();
        let expand = |c: &Compact| Arc::new(symbols.expand(c));
        expanded.record_all(&batch[..20].iter().map(expand).collect::<Vec<_>>(), None, 1000);
        expanded.record_all(&batch[20..].iter().map(expand).collect::<Vec<_>>(), None, 2000);
        let flows = |m: &FlowMap| {
            let st = m.lock();
            let mut f: Vec<_> = st.details.values().flat_map(|d| d.flows.values().cloned()).collect();
            f.sort_by(|x, y| x.key.cmp(&y.key));
            serde_json::to_value(f).unwrap()
        };
        assert_eq!(flows(&compact), flows(&expanded));
        assert_eq!(
            flows(&compact)[0]["count"],
            (0..(TAIL as u32 + 30)).filter(|i| i % 7 != 0).map(|i| u64::from((i % 3).max(1))).sum::<u64>()
        );
        let policies = |m: &FlowMap| m.lock().details.values().map(|d| d.policies.clone()).collect::<Vec<_>>();
        assert_eq!(policies(&compact), policies(&expanded));
        for after in [0, 25, TAIL as u64 + 20] {
            assert_eq!(
                compact.tail(&Filter::default(), after, Some(TAIL_LIMIT)),
                expanded.tail(&Filter::default(), after, Some(TAIL_LIMIT))
            );
        }
        assert_eq!(compact.tail(&Filter::default(), 0, None)["seq"], TAIL as u64 + 30);
    }

    /// A page that had never been given a symbol table dropped compact
    /// batches, silently: the table now comes with each batch.
    #[test]
    fn a_fresh_map_folds_a_compact_batch_and_keeps_it_in_the_tail() {
        let symbols = Arc::new(Symbols::default());
        let c = compact_event(&symbols, 0, 80, 2);
        let map = FlowMap::default();
        map.record_compact(&[c, c], &symbols, None, 1000);
        let tail = map.tail(&Filter::default(), 0, None);
        let events = tail["events"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{tail}");
        assert_eq!(events[0]["event"]["source"]["pod"], "a");
        let st = map.lock();
        let flows: Vec<u64> = st.details.values().flat_map(|d| d.flows.values().map(|f| f.count)).collect();
        assert_eq!(flows, [4], "both events' packets on the one flow");
    }

    #[test]
    fn details_are_bounded() {
        let map = FlowMap::default();
        for i in 0..(MAX_EDGES + 5) {
            map.record_all(&[event(Verdict::Dropped, &format!("p{i}"), 1)], None, i as u64);
        }
        let st = map.lock();
        assert_eq!(st.details.len(), MAX_EDGES);
        assert!(!st.details.contains_key("x/pod/a|y/pod/p0|DROPPED"), "the oldest edge goes first");
    }
}
