//! The record's sink: it follows the events hub like `observe` does, keys
//! each event by workload with the latest sync's view, and saves the
//! record periodically (and expires old keys).

use super::{Record, key, now_ms};
use crate::events::wire::{Compact, Symbols};
use crate::events::{Hub, View, group};
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
                    add(&record, &batch.events, &hub.symbols, &view.borrow().clone());
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

/// Adds a batch of events: one key per group of events that say the same
/// about a flow (one expansion each, not one per event), with the group's
/// packets and time span.
fn add(record: &Record, events: &[Compact], symbols: &Symbols, view: &View) {
    for g in group(events) {
        let ev = symbols.expand(&g.event);
        if let Some(k) = key::of_event(&ev, view) {
            record.add_span(k, g.packets, g.first_ns / 1_000_000, g.last_ns / 1_000_000);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::wire::{KIND_POD, Symbol};
    use crate::flows::Settings;
    use crate::policy::model::{Pod, Workload};
    use palisade_common::{DIR_EGRESS, FAMILY_V4, PROTO_TCP, PROTO_UDP, REASON_NO_RULE, VERDICT_DROPPED};

    #[test]
    fn a_batch_adds_what_its_events_one_by_one_add() {
        let symbols = Symbols::default();
        let mut view = View::default();
        let mut names = Vec::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let ip = std::net::IpAddr::from([10, 0, 0, i as u8 + 1]);
            let workload = Workload { kind: "Deployment".into(), name: name.into() };
            let pod = Pod {
                namespace: "x".into(),
                name: format!("{name}-0"),
                labels: Default::default(),
                node_name: None,
                host_network: false,
                ips: vec![ip],
                ports: vec![],
                terminated: false,
                workload,
            };
            names.push(symbols.intern(Symbol::Pod { namespace: "x".into(), name: pod.name.clone() }));
            view.catalog.pods_by_ip.insert(ip, Arc::new(pod));
        }
        let ev = |time_ms: u64, sport, dport, protocol, count| Compact {
            time_ns: time_ms * 1_000_000 + 999_999,
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport,
            dport,
            count,
            src_name: names[0],
            dst_name: names[1],
            family: FAMILY_V4,
            protocol,
            direction: DIR_EGRESS,
            verdict: VERDICT_DROPPED,
            reason: REASON_NO_RULE,
            src_kind: KIND_POD,
            dst_kind: KIND_POD,
            ..Default::default()
        };
        let batch = [
            ev(5000, 1, 80, PROTO_TCP, 3),
            ev(4000, 2, 80, PROTO_TCP, 0),
            ev(4500, 3, 53, PROTO_UDP, 1),
            ev(6000, 4, 80, PROTO_TCP, 2),
            ev(3000, 5, 443, PROTO_TCP, 1),
        ];
        let grouped = Record::new("n", Settings::default(), 0);
        add(&grouped, &batch, &symbols, &view);
        let one_by_one = Record::new("n", Settings::default(), 0);
        for c in &batch {
            let e = symbols.expand(c);
            let at = humantime::parse_rfc3339(&e.time).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
            one_by_one.add(key::of_event(&e, &view).unwrap(), u64::from(e.count.max(1)), at.as_millis() as u64);
        }
        let (g, o) = (grouped.snapshot(0), one_by_one.snapshot(0));
        assert_eq!(g, o);
        let counts: Vec<(Option<u16>, u64, u64, u64)> =
            g.flows.iter().map(|f| (f.key.port, f.stats.count, f.stats.first_seen_ms, f.stats.last_seen_ms)).collect();
        assert_eq!(counts, [(Some(80), 6, 4000, 6000), (Some(443), 1, 3000, 3000), (Some(53), 1, 4500, 4500)]);
    }
}
