//! Verdict events: ring buffer records from the classifier, resolved to
//! compact events naming pods, namespaces, policies and rules by symbol
//! ([`resolve`], [`wire`]), and handed to the sinks: the agent's log,
//! `palisade observe` (binary frames on the local socket) and metrics.
//! The pipeline works in batches: one drain of the ring, one broadcast,
//! one socket write per batch.

mod group;
pub mod record;
pub mod resolve;
pub mod wire;

use crate::metrics::Metrics;
use crate::policy::{Direction, PolicyRef};
use aya::maps::{MapData, RingBuf};
pub use group::{Group, group};
pub use record::{Peer, Verdict, VerdictEvent};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};
use wire::{Compact, Symbol, Symbols};

/// What enrichment needs from the latest sync.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub catalog: crate::policy::Catalog,
    /// Local pod (namespace, name) by host interface index.
    pub endpoints: BTreeMap<u32, (String, String)>,
}

/// How verdicts are written to the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
    /// No verdict lines (observe and metrics still get every event).
    None,
}

/// Events drained from the ring in one go, at most.
const BATCH: usize = 8192;

/// Events published together, numbered from `seq`.
pub struct Batch {
    pub seq: u64,
    pub events: Vec<Compact>,
}

struct History {
    events: VecDeque<Compact>,
    /// Sequence number of the next event published.
    next: u64,
}

/// Where events go. Cloning shares the same channels.
#[derive(Clone)]
pub struct Hub {
    live: broadcast::Sender<Arc<Batch>>,
    history: Arc<Mutex<History>>,
    history_len: usize,
    /// The names events refer to.
    pub symbols: Arc<Symbols>,
}

impl Hub {
    pub fn new(history_len: usize) -> Hub {
        // In batches: up to 256 × BATCH events buffered per slow client.
        let (live, _) = broadcast::channel(256);
        Hub {
            live,
            history: Arc::new(Mutex::new(History { events: VecDeque::with_capacity(history_len), next: 0 })),
            history_len,
            symbols: Arc::new(Symbols::default()),
        }
    }

    pub fn publish(&self, events: Vec<Compact>) {
        let Ok(mut h) = self.history.lock() else { return };
        let seq = h.next;
        h.next += events.len() as u64;
        let keep = events.len().min(self.history_len);
        let overflow = (h.events.len() + keep).saturating_sub(self.history_len);
        h.events.drain(..overflow);
        h.events.extend(&events[events.len() - keep..]);
        // Sent under the lock: history and live stream agree on numbering.
        let _ = self.live.send(Arc::new(Batch { seq, events }));
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.live.subscribe()
    }

    /// The bounded recent history, oldest first, and the sequence number
    /// of the next event (live events below it are already in history).
    pub fn history(&self) -> (Vec<Compact>, u64) {
        self.history.lock().map(|h| (h.events.iter().copied().collect(), h.next)).unwrap_or_default()
    }
}

/// Drains the ring buffer and publishes events: on a short timer (the
/// classifier does not wake us per event: that would cost the packet
/// path), or when the classifier wakes us because the buffer is half full.
pub async fn run(
    ring: RingBuf<MapData>,
    view: watch::Receiver<Arc<View>>,
    hub: Hub,
    metrics: Arc<Metrics>,
    log: Option<LogFormat>,
) {
    let log = log.filter(|f| *f != LogFormat::None);
    let mut resolver = resolve::Resolver::new(hub.symbols.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // SAFETY: the ring buffer owns its map's file descriptor and keeps it
    // open, unchanged, for as long as it lives (inside the AsyncFd).
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("events: cannot poll the ring buffer, no events will be read: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = ring.readable_mut() => if let Ok(mut guard) = r { guard.clear_ready() },
        }
        resolver.set_view(&view.borrow().clone());
        // Bounded batches: the task yields between them even under a flood.
        loop {
            let mut batch = Vec::with_capacity(256);
            let r = ring.get_mut();
            while batch.len() < BATCH
                && let Some(item) = r.next()
            {
                if let Some(raw) = record::parse(&item) {
                    batch.push(resolver.resolve(&raw));
                }
            }
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == BATCH;
            account(&batch, &hub.symbols, &metrics);
            if let Some(fmt) = log {
                write_log(&batch, &hub.symbols, fmt);
            }
            hub.publish(batch);
            if !full {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Metrics for a batch: summed per label set first, so a flood costs a
/// few label lookups per batch, not per event.
fn account(batch: &[Compact], symbols: &Symbols, metrics: &Metrics) {
    let mut verdicts: HashMap<(u8, u8, u32, bool), u64, foldhash::fast::RandomState> = HashMap::default();
    let mut isolating: HashMap<(u8, u32), u64, foldhash::fast::RandomState> = HashMap::default();
    for c in batch {
        let n = u64::from(c.count.max(1));
        let implicit = c.reason == palisade_common::REASON_NO_RULE;
        *verdicts.entry((c.direction, c.verdict, c.rule, implicit)).or_default() += n;
        if c.verdict() != Verdict::Allowed && c.isolated != 0 {
            *isolating.entry((c.direction, c.isolated)).or_default() += n;
        }
    }
    metrics.received(batch.len() as u64);
    for ((dir, verdict, rule, implicit), n) in verdicts {
        let c = Compact { direction: dir, verdict, ..Default::default() };
        let r = match symbols.get(rule).as_deref() {
            Some(Symbol::Rule(r)) => Some(r.clone()),
            _ => None,
        };
        // The policy label names allowing NetworkPolicies and the node
        // allowance (as before), and any deciding ClusterNetworkPolicy.
        let policy = match &r {
            Some(r) if r.tier.is_some() => r.name.clone().unwrap_or_default(),
            Some(_) if c.verdict() != Verdict::Allowed => String::new(),
            Some(r) => match (&r.namespace, &r.name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => "node".to_string(),
            },
            None => String::new(),
        };
        metrics.verdicts(c.direction(), c.verdict(), policy, n);
        let tier = match &r {
            Some(r) => r.tier.as_deref().unwrap_or("NetworkPolicy"),
            None if implicit => "NetworkPolicy",
            None => "",
        };
        if !tier.is_empty() {
            metrics.tier_verdicts(c.direction(), c.verdict(), tier, n);
        }
    }
    for ((dir, id), n) in isolating {
        if let Some(Symbol::Isolating(by)) = symbols.get(id).as_deref() {
            for p in by {
                metrics.drops_by_policy(Direction::from_code(dir), p, n);
            }
        }
    }
}

/// The agent's log: one line per drop or audit, written once per batch.
fn write_log(batch: &[Compact], symbols: &Symbols, fmt: LogFormat) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    for c in batch.iter().filter(|c| c.verdict() != Verdict::Allowed) {
        let ev = symbols.expand(c);
        let _ = match fmt {
            LogFormat::Json => writeln!(out, "{}", serde_json::to_string(&ev).unwrap_or_default()),
            _ => writeln!(out, "{} {}", ev.time, ev),
        };
    }
    let _ = out.flush();
}

/// Why a drop happened, in words, for one-line logs.
pub fn isolation_text(pod: &str, dir: Direction, by: &[PolicyRef]) -> String {
    let names: Vec<String> = by.iter().map(|p| p.to_string()).collect();
    if names.is_empty() {
        format!("{pod} is isolated for {dir}, and no rule allows it")
    } else {
        format!("{pod} is isolated for {dir} by {}, and no rule allows it", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::RuleRef;
    use palisade_common::{DIR_EGRESS, REASON_NO_RULE, REASON_RULE, VERDICT_ALLOWED, VERDICT_DROPPED};

    #[test]
    fn verdict_metrics_name_the_tier_and_the_cluster_policy() {
        let symbols = Symbols::default();
        let rule = |name: &str, tier: Option<&str>, namespace: Option<&str>| {
            symbols.intern(Symbol::Rule(RuleRef {
                namespace: namespace.map(str::to_string),
                name: Some(name.into()),
                direction: Direction::Egress,
                rule: 0,
                description: String::new(),
                tier: tier.map(str::to_string),
            }))
        };
        let deny = rule("no-metadata", Some("Admin"), None);
        let allow = rule("allow-dns", None, Some("ns"));
        let event = |verdict, reason, rule, count| Compact {
            direction: DIR_EGRESS,
            verdict,
            reason,
            rule,
            count,
            ..Default::default()
        };
        let batch = [
            event(VERDICT_DROPPED, REASON_RULE, deny, 3),
            event(VERDICT_DROPPED, REASON_NO_RULE, 0, 2),
            event(VERDICT_ALLOWED, REASON_RULE, allow, 1),
        ];
        let metrics = Metrics::new();
        account(&batch, &symbols, &metrics);
        let text = metrics.encode();
        for line in [
            "palisade_verdicts_total{direction=\"egress\",verdict=\"DROPPED\",policy=\"no-metadata\"} 3",
            "palisade_verdicts_total{direction=\"egress\",verdict=\"DROPPED\",policy=\"\"} 2",
            "palisade_verdicts_total{direction=\"egress\",verdict=\"ALLOWED\",policy=\"ns/allow-dns\"} 1",
            "palisade_tier_verdicts_total{direction=\"egress\",verdict=\"DROPPED\",tier=\"Admin\"} 3",
            "palisade_tier_verdicts_total{direction=\"egress\",verdict=\"DROPPED\",tier=\"NetworkPolicy\"} 2",
            "palisade_tier_verdicts_total{direction=\"egress\",verdict=\"ALLOWED\",tier=\"NetworkPolicy\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
