//! The bounded in-memory record. When it is full, the keys seen least
//! recently go first (5% at a time, so a flood of new keys costs a scan
//! per batch, not per key), and the loss is counted. The map is rebuilt
//! after each eviction: removals leave tombstones that would otherwise
//! make the hash table double at the next insertions.

use super::{Flow, FlowKey, Snapshot, Stats};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How much the record keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Distinct keys at most.
    pub capacity: usize,
    /// Keys not seen for this long are forgotten.
    pub retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { capacity: 100_000, retention: Duration::from_secs(7 * 24 * 3600) }
    }
}

#[derive(Default)]
struct Inner {
    /// Boxed keys: the table stays small, and rebuilding it moves pointers.
    flows: HashMap<Box<FlowKey>, Stats>,
    observing_since_ms: u64,
    evicted: u64,
    expired: u64,
    missed_events: u64,
    /// Changed since the last save.
    dirty: bool,
}

/// A node's flow record, shared by the sink, the API and persistence.
pub struct Record {
    node: String,
    settings: Settings,
    inner: Mutex<Inner>,
}

impl Record {
    pub fn new(node: &str, settings: Settings, now_ms: u64) -> Record {
        let inner = Inner { observing_since_ms: now_ms, ..Default::default() };
        Record { node: node.to_string(), settings, inner: Mutex::new(inner) }
    }

    /// A record continuing `saved` (a snapshot read back at start): its
    /// keys, window and loss counters, within this record's bounds.
    pub fn restore(node: &str, settings: Settings, saved: Snapshot, now_ms: u64) -> Record {
        let r = Record::new(node, settings, now_ms);
        {
            let mut i = r.lock();
            i.observing_since_ms = saved.observing_since_ms.min(now_ms);
            i.evicted = saved.evicted;
            i.expired = saved.expired;
            i.missed_events = saved.missed_events;
            i.flows = saved.flows.into_iter().map(|f| (Box::new(f.key), f.stats)).collect();
        }
        r.expire(now_ms);
        r.make_room(0);
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Adds `count` packets of `key` seen at `at_ms`.
    pub fn add(&self, key: FlowKey, count: u64, at_ms: u64) {
        self.add_span(key, count, at_ms, at_ms);
    }

    /// Adds `count` packets of `key` seen from `first_ms` to `last_ms`
    /// (several events of one flow at once).
    pub fn add_span(&self, key: FlowKey, count: u64, first_ms: u64, last_ms: u64) {
        let mut i = self.lock();
        i.dirty = true;
        if let Some(st) = i.flows.get_mut(&key) {
            st.count += count;
            st.first_seen_ms = st.first_seen_ms.min(first_ms);
            st.last_seen_ms = st.last_seen_ms.max(last_ms);
            return;
        }
        drop(i);
        self.make_room(1);
        let mut i = self.lock();
        i.flows.insert(Box::new(key), Stats { count, first_seen_ms: first_ms, last_seen_ms: last_ms });
    }

    /// Counts events the record never got.
    pub fn missed(&self, n: u64) {
        self.lock().missed_events += n;
    }

    /// Evicts the least recently seen keys until `room` more fit: 5% of
    /// the capacity at a time (at least one).
    fn make_room(&self, room: usize) {
        let mut i = self.lock();
        let cap = self.settings.capacity;
        if i.flows.len() + room <= cap {
            return;
        }
        let batch = (cap / 20).max(1);
        let excess = (i.flows.len() + room).saturating_sub(cap).max(batch).min(i.flows.len());
        // The last-seen time below which (and part of at which) keys go.
        let mut ages: Vec<u64> = i.flows.values().map(|s| s.last_seen_ms).collect();
        if excess == 0 {
            return;
        }
        let cutoff = *ages.select_nth_unstable(excess - 1).1;
        let mut at_cutoff = excess - ages.iter().filter(|&&t| t < cutoff).count();
        drop(ages);
        let old = std::mem::take(&mut i.flows);
        let mut kept = HashMap::with_capacity(cap);
        kept.extend(old.into_iter().filter(|(_, s)| {
            let goes = s.last_seen_ms < cutoff || (s.last_seen_ms == cutoff && at_cutoff > 0);
            if s.last_seen_ms == cutoff && goes {
                at_cutoff -= 1;
            }
            !goes
        }));
        i.flows = kept;
        i.evicted += excess as u64;
        i.dirty = true;
    }

    /// Forgets keys not seen within the retention period.
    pub fn expire(&self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.settings.retention.as_millis() as u64);
        let mut i = self.lock();
        let before = i.flows.len();
        i.flows.retain(|_, s| s.last_seen_ms >= cutoff);
        let gone = (before - i.flows.len()) as u64;
        if gone > 0 {
            i.expired += gone;
            i.dirty = true;
        }
        // The record cannot speak for time before what it still holds.
        i.observing_since_ms = i.observing_since_ms.max(cutoff);
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (evicted, expired, missed events) so far.
    pub fn losses(&self) -> (u64, u64, u64) {
        let i = self.lock();
        (i.evicted, i.expired, i.missed_events)
    }

    /// Whether anything changed since the last call (for saving).
    pub fn take_dirty(&self) -> bool {
        std::mem::take(&mut self.lock().dirty)
    }

    /// The record as it is now, flows sorted by key.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let i = self.lock();
        let mut flows: Vec<Flow> = i.flows.iter().map(|(k, s)| Flow { key: (**k).clone(), stats: *s }).collect();
        drop(i);
        flows.sort_by(|a, b| a.key.cmp(&b.key));
        let i = self.lock();
        Snapshot {
            node: self.node.clone(),
            taken_ms: now_ms,
            observing_since_ms: i.observing_since_ms,
            capacity: self.settings.capacity,
            evicted: i.evicted,
            expired: i.expired,
            missed_events: i.missed_events,
            flows,
        }
    }
}
