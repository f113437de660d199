//! Prometheus metrics. Labels stay bounded: directions, verdicts, reasons,
//! map names and policy names, never addresses or ports; pods appear only
//! while held closed (a rare fault, cleared when it heals).

use crate::datapath::MapFill;
use crate::events::Verdict;
use crate::policy::{Direction, PolicyRef};
use crate::state::EndpointState;
use palisade_common::stat;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    direction: String,
    verdict: String,
    /// The allowing policy for ALLOWED verdicts; empty otherwise.
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    direction: String,
    verdict: String,
    /// Admin, NetworkPolicy or Baseline: the tier whose rule decided.
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    direction: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    namespace: String,
    pod: String,
}

pub struct Metrics {
    registry: Registry,
    verdicts: Family<VerdictLabels, Counter>,
    tier_verdicts: Family<TierLabels, Counter>,
    drops_by_policy: Family<PolicyLabels, Counter>,
    kernel_packets: Family<ReasonLabels, Counter>,
    events_sent: Counter,
    events_lost: Counter,
    events_suppressed: Counter,
    events_folded: Counter,
    events_received: Counter,
    flows: Counter,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    sync_seconds: Histogram,
    sync_errors: Counter,
    map_drift: Counter,
    input_errors: Gauge,
    crd_missing: Gauge,
    revision: Gauge,
    pods: Family<StateLabels, Gauge>,
    held_closed: Family<HeldLabels, Gauge>,
    interface_errors: Counter,
    flow_keys: Gauge,
    flow_keys_evicted: Counter,
    flow_events_missed: Counter,
    /// Last kernel counter values, to turn them into counter increments.
    last_kernel: Mutex<Vec<u64>>,
    received: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let m = Metrics {
            verdicts: Family::default(),
            tier_verdicts: Family::default(),
            drops_by_policy: Family::default(),
            kernel_packets: Family::default(),
            events_sent: Counter::default(),
            events_lost: Counter::default(),
            events_suppressed: Counter::default(),
            events_folded: Counter::default(),
            events_received: Counter::default(),
            flows: Counter::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            sync_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            sync_errors: Counter::default(),
            map_drift: Counter::default(),
            input_errors: Gauge::default(),
            crd_missing: Gauge::default(),
            revision: Gauge::default(),
            pods: Family::default(),
            held_closed: Family::default(),
            interface_errors: Counter::default(),
            flow_keys: Gauge::default(),
            flow_keys_evicted: Counter::default(),
            flow_events_missed: Counter::default(),
            last_kernel: Mutex::new(vec![0; stat::COUNT as usize]),
            received: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "verdicts",
            "Verdict events by direction, verdict and allowing policy (drops count the packets they stand for)",
            m.verdicts.clone(),
        );
        registry.register(
            "tier_verdicts",
            "Verdict events decided by a rule, by direction, verdict and tier (Admin, NetworkPolicy, Baseline)",
            m.tier_verdicts.clone(),
        );
        registry.register(
            "drops_by_isolating_policy",
            "Dropped packets per policy isolating the pod (a drop counts once for each such policy)",
            m.drops_by_policy.clone(),
        );
        registry.register("kernel_packets", "Packets judged in the kernel, by outcome", m.kernel_packets.clone());
        let name = |i: u32| stat::NAMES[i as usize];
        registry.register(
            name(stat::EVENTS_SENT),
            "Events the classifier wrote to the ring buffer",
            m.events_sent.clone(),
        );
        registry.register(
            name(stat::EVENTS_LOST),
            "Events lost because the ring buffer was full",
            m.events_lost.clone(),
        );
        registry.register(
            name(stat::EVENTS_SUPPRESSED),
            "Drops folded into a later event of the same flow",
            m.events_suppressed.clone(),
        );
        registry.register(
            name(stat::EVENTS_FOLDED),
            "Drops with no event of their own because their source spent its event budget (counted in its next event)",
            m.events_folded.clone(),
        );
        registry.register("events_received", "Events read from the ring buffer", m.events_received.clone());
        registry.register(name(stat::FLOWS_NEW), "New flows entered into connection tracking", m.flows.clone());
        registry.register("map_entries", "Entries in each kernel map", m.map_entries.clone());
        registry.register("map_capacity", "Capacity of each kernel map", m.map_capacity.clone());
        registry.register(
            "sync_duration_seconds",
            "Time to compile and write one state to the kernel",
            m.sync_seconds.clone(),
        );
        registry.register("sync_errors", "Kernel writes that failed", m.sync_errors.clone());
        registry.register(
            "map_drift",
            "Map entries a full resync found changed behind the agent's back (then rewrote)",
            m.map_drift.clone(),
        );
        registry.register("input_errors", "Objects that could not be used as written", m.input_errors.clone());
        registry.register(
            "cluster_network_policy_crd_missing",
            "1 while the API does not serve the ClusterNetworkPolicy CRD (NetworkPolicies are still enforced)",
            m.crd_missing.clone(),
        );
        registry.register("policy_revision", "Policy revision in force in the kernel", m.revision.clone());
        registry.register("pods", "Local pods by enforcement state", m.pods.clone());
        registry.register(
            "endpoint_held_closed",
            "Local pods held closed because their entries could not be written whole (a map is full)",
            m.held_closed.clone(),
        );
        registry.register(
            "interface_discovery_errors",
            "Reads of the node's interfaces that failed or were incomplete (the last complete view stays in use)",
            m.interface_errors.clone(),
        );
        registry.register("flow_keys", "Distinct flow keys in the flow record", m.flow_keys.clone());
        registry.register(
            "flow_keys_evicted",
            "Flow keys dropped from the full flow record, least recently seen first",
            m.flow_keys_evicted.clone(),
        );
        registry.register(
            "flow_events_missed",
            "Verdict events the flow record fell behind on and never counted",
            m.flow_events_missed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts events read from the ring buffer.
    pub fn received(&self, events: u64) {
        self.events_received.inc_by(events);
        self.received.fetch_add(events, Ordering::Relaxed);
    }

    /// Counts the packets verdict events stand for, by direction, verdict
    /// and allowing policy (`namespace/name`, `node`, or empty).
    pub fn verdicts(&self, direction: Direction, verdict: Verdict, policy: String, packets: u64) {
        let labels = VerdictLabels { direction: direction.to_string(), verdict: verdict.to_string(), policy };
        self.verdicts.get_or_create(&labels).inc_by(packets);
    }

    /// Counts the packets verdict events a tier's rule decided stand for
    /// (NetworkPolicy's include its implicit deny).
    pub fn tier_verdicts(&self, direction: Direction, verdict: Verdict, tier: &str, packets: u64) {
        let labels = TierLabels { direction: direction.to_string(), verdict: verdict.to_string(), tier: tier.into() };
        self.tier_verdicts.get_or_create(&labels).inc_by(packets);
    }

    /// Counts dropped (or audited) packets against a policy isolating the pod.
    pub fn drops_by_policy(&self, direction: Direction, policy: &PolicyRef, packets: u64) {
        self.drops_by_policy
            .get_or_create(&PolicyLabels { direction: direction.to_string(), policy: policy.to_string() })
            .inc_by(packets);
    }

    /// Events read from the ring buffer so far.
    pub fn received_total(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Takes the kernel's counters (indexed by [`stat`]).
    pub fn kernel(&self, counters: &[u64]) {
        let Ok(mut last) = self.last_kernel.lock() else { return };
        let delta = |i: u32, last: &mut Vec<u64>| {
            let (cur, prev) = (counters.get(i as usize).copied().unwrap_or(0), last[i as usize]);
            last[i as usize] = cur;
            cur.saturating_sub(prev)
        };
        for i in [stat::ALLOWED, stat::DROPPED_NO_RULE, stat::DROPPED_MALFORMED, stat::AUDITED] {
            let name = stat::NAMES[i as usize];
            let reason = name.strip_prefix("packets_").unwrap_or(name).to_string();
            let d = delta(i, &mut last);
            self.kernel_packets.get_or_create(&ReasonLabels { reason }).inc_by(d);
        }
        self.events_sent.inc_by(delta(stat::EVENTS_SENT, &mut last));
        self.events_lost.inc_by(delta(stat::EVENTS_LOST, &mut last));
        self.events_suppressed.inc_by(delta(stat::EVENTS_SUPPRESSED, &mut last));
        self.events_folded.inc_by(delta(stat::EVENTS_FOLDED, &mut last));
        self.flows.inc_by(delta(stat::FLOWS_NEW, &mut last));
    }

    /// Records one sync of the agent loop.
    pub fn sync(
        &self,
        seconds: f64,
        errors: usize,
        input_errors: usize,
        revision: u32,
        fill: &MapFill,
        endpoints: &[EndpointState],
    ) {
        self.sync_seconds.observe(seconds);
        self.sync_errors.inc_by(errors as u64);
        self.input_errors.set(input_errors as i64);
        self.revision.set(i64::from(revision));
        for (name, (n, cap)) in [("endpoints", fill.endpoints), ("ips", fill.ips), ("policy", fill.policy)] {
            self.map_entries.get_or_create(&MapLabels { map: name.into() }).set(n as i64);
            self.map_capacity.get_or_create(&MapLabels { map: name.into() }).set(i64::from(cap));
        }
        self.pods.clear();
        self.held_closed.clear();
        for e in endpoints {
            self.pods.get_or_create(&StateLabels { state: e.state.kind().into() }).inc();
            if matches!(e.state, crate::state::Enforcement::HeldClosed(_)) {
                let labels = HeldLabels { namespace: e.namespace.clone(), pod: e.name.clone() };
                self.held_closed.get_or_create(&labels).set(1);
            }
        }
    }

    /// Counts map entries found changed behind the agent's back.
    pub fn drifted(&self, entries: usize) {
        self.map_drift.inc_by(entries as u64);
    }

    /// Whether the ClusterNetworkPolicy CRD is missing from the API.
    pub fn unavailable(&self, crd_missing: bool) {
        self.crd_missing.set(i64::from(crd_missing));
    }

    /// Counts a read of the node's interfaces that failed or was incomplete.
    pub fn interface_error(&self) {
        self.interface_errors.inc();
    }

    /// Records the number of tracked flows per family (counted on a slow
    /// timer) against each table's capacity.
    pub fn tracked_flows(&self, [v4, v6]: [usize; 2], capacity: u32) {
        for (name, n) in [("conntrack4", v4), ("conntrack6", v6)] {
            let map = MapLabels { map: name.into() };
            self.map_entries.get_or_create(&map).set(n as i64);
            self.map_capacity.get_or_create(&map).set(i64::from(capacity));
        }
    }

    /// Takes the flow record's size and its loss counters (totals).
    pub fn flow_record(&self, keys: usize, evicted: u64, missed: u64) {
        self.flow_keys.set(keys as i64);
        self.flow_keys_evicted.inc_by(evicted.saturating_sub(self.flow_keys_evicted.get()));
        self.flow_events_missed.inc_by(missed.saturating_sub(self.flow_events_missed.get()));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
