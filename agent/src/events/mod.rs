//! Verdict events: ring buffer records from the classifier, turned into
//! events in Kubernetes terms (pods, namespaces, policies, rules) and handed
//! to the sinks: the agent's log, `palisade observe` and metrics.

pub mod record;

use crate::metrics::Metrics;
use crate::policy::{Catalog, Direction, PolicyRef};
use aya::maps::{MapData, RingBuf};
pub use record::{Peer, Verdict, VerdictEvent};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// What enrichment needs from the latest sync.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub catalog: Catalog,
    /// Local pod (namespace, name) by host interface index.
    pub endpoints: BTreeMap<u32, (String, String)>,
}

/// How verdicts are written to the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where events go. Cloning shares the same channels.
#[derive(Clone)]
pub struct Hub {
    live: broadcast::Sender<Arc<VerdictEvent>>,
    history: Arc<Mutex<VecDeque<Arc<VerdictEvent>>>>,
    history_len: usize,
}

impl Hub {
    pub fn new(history_len: usize) -> Hub {
        let (live, _) = broadcast::channel(16 * 1024);
        Hub { live, history: Arc::new(Mutex::new(VecDeque::with_capacity(history_len))), history_len }
    }

    pub fn publish(&self, ev: VerdictEvent) {
        let ev = Arc::new(ev);
        if let Ok(mut h) = self.history.lock() {
            if h.len() == self.history_len {
                h.pop_front();
            }
            h.push_back(ev.clone());
        }
        let _ = self.live.send(ev);
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<VerdictEvent>> {
        self.live.subscribe()
    }

    /// The bounded recent history, oldest first.
    pub fn history(&self) -> Vec<Arc<VerdictEvent>> {
        self.history.lock().map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Drains the ring buffer on a short timer (the classifier does not wake
/// us per event: that would cost the packet path) and publishes events.
pub async fn run(
    mut ring: RingBuf<MapData>,
    view: watch::Receiver<Arc<View>>,
    hub: Hub,
    metrics: Arc<Metrics>,
    log: Option<LogFormat>,
) {
    let clock = record::Clock::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let v = view.borrow().clone();
        // A bounded batch per tick: the task yields even under a flood, and
        // what is left waits for the next tick (the kernel counts overflow).
        let mut batch = 0;
        while batch < 8192
            && let Some(item) = ring.next()
        {
            batch += 1;
            let Some(raw) = record::parse(&item) else { continue };
            drop(item);
            let ev = record::enrich(&raw, &v, &clock);
            if let Some(fmt) = log
                && ev.verdict != Verdict::Allowed
            {
                match fmt {
                    LogFormat::Text => println!("{} {}", ev.time, ev),
                    LogFormat::Json => println!("{}", serde_json::to_string(&ev).unwrap_or_default()),
                }
            }
            metrics.observe(&ev);
            hub.publish(ev);
        }
    }
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
