//! The record's sink: it follows the events hub like `observe` does, keys
//! each event by workload with the latest sync's view, and saves the
//! record periodically (and expires old keys).

use super::{Record, key, now_ms};
use crate::events::{Hub, View, wire};
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// Records events until the hub closes; saves to `state_dir` every
/// `save_every` when something changed.
pub async fn run(
    hub: Hub,
    view: watch::Receiver<Arc<View>>,
    record: Arc<Record>,
    metrics: Arc<Metrics>,
    state_dir: Option<PathBuf>,
    save_every: Duration,
) {
    let mut live = hub.subscribe();
    let mut warned = false;
    // Events missed are counted from the batches' sequence numbers (a lag
    // error counts batches, not events).
    let mut next_seq: Option<u64> = None;
    let mut tick = tokio::time::interval(save_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            batch = live.recv() => match batch {
                Ok(batch) => {
                    if let Some(n) = next_seq && batch.seq > n {
                        record.missed(batch.seq - n);
                    }
                    next_seq = Some(batch.seq + batch.events.len() as u64);
                    let v = view.borrow().clone();
                    for c in &batch.events {
                        let ev = wire::to_event(c, |id| hub.symbols.get(id).map(|s| (*s).clone()));
                        if let Some(k) = key::of_event(&ev, &v) {
                            let at = humantime::parse_rfc3339(&ev.time)
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or_else(now_ms, |d| d.as_millis() as u64);
                            record.add(k, u64::from(ev.count.max(1)), at);
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                record.expire(now_ms());
                if let Err(e) = try_save(&record, state_dir.as_deref()) {
                    // Once: a read-only state directory would say it every minute.
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!("saving the flow record (kept in memory only): {e:#}");
                    }
                }
            }
        }
        let (evicted, _, missed) = record.losses();
        metrics.flow_record(record.len(), evicted, missed);
    }
}

/// Saves the record if it changed (also called at shutdown).
pub fn save(record: &Record, state_dir: Option<&std::path::Path>) {
    if let Err(e) = try_save(record, state_dir) {
        tracing::warn!("saving the flow record: {e:#}");
    }
}

fn try_save(record: &Record, state_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    match state_dir {
        Some(dir) if record.take_dirty() => super::persist::save(dir, &record.snapshot(now_ms())),
        _ => Ok(()),
    }
}
