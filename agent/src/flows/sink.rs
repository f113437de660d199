//! The record's sink: it follows the events hub like `observe` does, keys
//! each event by workload with the latest sync's view, and saves the
//! record periodically (and expires old keys).

use super::{Record, key, now_ms};
use crate::events::{Hub, View};
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
    let mut tick = tokio::time::interval(save_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = live.recv() => match ev {
                Ok(ev) => {
                    let v = view.borrow().clone();
                    if let Some(k) = key::of_event(&ev, &v) {
                        let at = humantime::parse_rfc3339(&ev.time)
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or_else(now_ms, |d| d.as_millis() as u64);
                        record.add(k, u64::from(ev.count.max(1)), at);
                    }
                }
                Err(RecvError::Lagged(n)) => record.missed(n),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                record.expire(now_ms());
                save(&record, state_dir.as_deref());
            }
        }
        let (evicted, _, missed) = record.losses();
        metrics.flow_record(record.len(), evicted, missed);
    }
}

/// Saves the record if it changed (also called at shutdown).
pub fn save(record: &Record, state_dir: Option<&std::path::Path>) {
    let Some(dir) = state_dir else { return };
    if !record.take_dirty() {
        return;
    }
    if let Err(e) = super::persist::save(dir, &record.snapshot(now_ms())) {
        tracing::warn!("saving the flow record: {e:#}");
    }
}
