//! Merged observe: one time-ordered stream from the event streams of
//! several nodes' agents (each the binary frames of
//! [`crate::events::wire`], as the local socket sends them).
//!
//! A reader task per node decodes its frames and renames its symbols into
//! one table shared by the merged stream; one merging task holds events in
//! a heap by timestamp for a reorder window and lets them out in order. An
//! event leaves as soon as every live node has sent something newer (so a
//! busy cluster sees little delay), and at the latest a window after it
//! arrived, so a slow, idle or skewed node holds the others back by no
//! more than the window. Memory is bounded: the channel from the readers
//! and the one to the consumer hold a fixed number of batches (a full one
//! stops reading, and the agents report what their client fell behind by
//! as lagged), and the heap lets its oldest event out early beyond
//! [`Options::max_buffered`]. A node whose stream ends or fails is
//! reported as [`Item::Gone`], and the others go on.
//!
//! Nodes may also join a running merge ([`merge_joinable`]'s [`Joiner`]:
//! `kubectl palisade observe` adds agent pods that appear, and agents that
//! come back); such a merge ends only once its joiner is dropped.

use crate::api::frames::{Frame, FrameReader};
use crate::events::VerdictEvent;
use crate::events::wire::{Compact, Symbols};
use anyhow::{Context, Result, bail};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::mpsc;

/// Messages queued from the readers, and to the consumer.
const QUEUE: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long an event may wait for earlier events from other nodes.
    pub window: Duration,
    /// Events held for reordering, at most (plus one frame's; beyond, the
    /// oldest leave early).
    pub max_buffered: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { window: Duration::from_millis(250), max_buffered: 1 << 18 }
    }
}

/// What the merged stream carries. `node` indexes [`Merged::nodes`].
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// An event; its symbol ids are [`Merged::symbols`]' ids.
    Event { node: u32, event: Compact },
    /// The node's agent dropped this many events for this client (it fell
    /// behind).
    Lagged { node: u32, missed: u64 },
    /// The node's stream ended: cleanly (`None`; the history of a
    /// non-following request was all sent) or with an error.
    Gone { node: u32, error: Option<String> },
}

/// Counts for the whole merge (for `observe`'s summary and the benchmark).
#[derive(Debug, Default)]
pub struct Counters {
    /// Events decoded from all nodes.
    pub received: AtomicU64,
    /// Events handed to the consumer.
    pub delivered: AtomicU64,
    /// Events the agents said this client missed.
    pub lagged: AtomicU64,
    /// Events older than one already delivered (they came after the window).
    pub late: AtomicU64,
    /// Events let out before their window because the heap was full.
    pub forced: AtomicU64,
    /// The most events held at once.
    pub peak_buffered: AtomicU64,
}

/// The merged stream.
pub struct Merged {
    /// The nodes by index, as of the last [`Merged::recv`] (which names
    /// every node its items mention).
    pub nodes: Arc<[String]>,
    /// The names the events' symbol ids refer to.
    pub symbols: Arc<Symbols>,
    pub counters: Arc<Counters>,
    rx: mpsc::Receiver<Vec<Item>>,
    /// Every node's name, joined ones included (a joiner adds to it).
    names: Arc<Mutex<Vec<String>>>,
}

impl Merged {
    /// The next items, in time order; None when every node is gone, no
    /// more can join, and everything was delivered.
    pub async fn recv(&mut self) -> Option<Vec<Item>> {
        let items = self.rx.recv().await?;
        // A node is named before its reader starts, so before its items.
        let names = lock(&self.names);
        if names.len() != self.nodes.len() {
            self.nodes = names.iter().cloned().collect();
        }
        Some(items)
    }

    /// An event in Kubernetes terms.
    pub fn event(&self, c: &Compact) -> VerdictEvent {
        self.symbols.expand(c)
    }

    pub fn node(&self, i: u32) -> &str {
        self.nodes.get(i as usize).map_or("", |s| s.as_str())
    }
}

/// Merges the streams `nodes` open: each future yields a stream of event
/// frames (a connection on which the observe request was sent), or the
/// reason the node cannot be reached, which is reported as it going away.
pub fn merge<F, S>(nodes: Vec<(String, F)>, opts: Options) -> Merged
where
    F: Future<Output = Result<S>> + Send + 'static,
    S: AsyncRead + Unpin + Send + 'static,
{
    merge_joinable(nodes, opts).0
}

/// [`merge`], and a [`Joiner`] that adds nodes to it while it runs. The
/// merge goes on (even with every node gone) until the joiner and its
/// clones are dropped.
pub fn merge_joinable<F, S>(nodes: Vec<(String, F)>, opts: Options) -> (Merged, Joiner)
where
    F: Future<Output = Result<S>> + Send + 'static,
    S: AsyncRead + Unpin + Send + 'static,
{
    let symbols = Arc::new(Symbols::default());
    let counters = Arc::new(Counters::default());
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    // The first nodes hold the watermark back from the start, so that
    // their histories interleave.
    let heap = Heap::new(names.len(), opts, counters.clone());
    let nodes_now: Arc<[String]> = names.iter().cloned().collect();
    let joiner = Joiner { tx: in_tx, names: Arc::new(Mutex::new(names)), symbols, counters };
    for (i, (_, open)) in nodes.into_iter().enumerate() {
        joiner.spawn(i as u32, open, false);
    }
    tokio::spawn(run(heap, in_rx, out_tx));
    let merged = Merged {
        nodes: nodes_now,
        symbols: joiner.symbols.clone(),
        counters: joiner.counters.clone(),
        rx: out_rx,
        names: joiner.names.clone(),
    };
    (merged, joiner)
}

/// Adds nodes to a running merge ([`merge_joinable`]).
#[derive(Clone)]
pub struct Joiner {
    tx: mpsc::Sender<Msg>,
    names: Arc<Mutex<Vec<String>>>,
    symbols: Arc<Symbols>,
    counters: Arc<Counters>,
}

impl Joiner {
    /// Merges the stream `open` yields (as [`merge`]'s nodes) under
    /// `name`; returns its index, a new one on every call, even for a name
    /// seen before. It holds the others back only from when it joins:
    /// what it sends older than what was already delivered is late, so
    /// ask a joining node for new events only.
    pub fn add<F, S>(&self, name: String, open: F) -> u32
    where
        F: Future<Output = Result<S>> + Send + 'static,
        S: AsyncRead + Unpin + Send + 'static,
    {
        let node = {
            let mut names = lock(&self.names);
            names.push(name);
            (names.len() - 1) as u32
        };
        self.spawn(node, open, true);
        node
    }

    /// Starts node `node`'s reader; a `join`ing one first tells the
    /// merging task it is live.
    fn spawn<F, S>(&self, node: u32, open: F, join: bool)
    where
        F: Future<Output = Result<S>> + Send + 'static,
        S: AsyncRead + Unpin + Send + 'static,
    {
        let (tx, symbols, counters) = (self.tx.clone(), self.symbols.clone(), self.counters.clone());
        tokio::spawn(async move {
            if join && tx.send(Msg::Join(node)).await.is_err() {
                return;
            }
            let error = match open.await {
                Ok(stream) => read(node, stream, &symbols, &counters, &tx).await.err(),
                Err(e) => Some(e),
            };
            let _ = tx.send(Msg::Gone(node, error.map(|e| format!("{e:#}")))).await;
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Msg {
    /// A node added to the running merge: live from now on.
    Join(u32),
    Events(u32, Vec<Compact>, Instant),
    Lagged(u32, u64),
    Gone(u32, Option<String>),
}

/// Decodes one node's frames until the stream ends.
async fn read<S: AsyncRead + Unpin>(
    node: u32,
    stream: S,
    symbols: &Symbols,
    counters: &Counters,
    tx: &mpsc::Sender<Msg>,
) -> Result<()> {
    let mut frames = FrameReader::new(BufReader::with_capacity(1 << 18, stream));
    // The node's symbol ids, renamed into the merged table (0: none).
    let mut rename: Vec<u32> = vec![0];
    while let Some(frame) = frames.next().await.context("reading events")? {
        let msg = match frame {
            Frame::Symbol(id, sym) => {
                let id = id as usize;
                if rename.len() <= id {
                    rename.resize(id + 1, 0);
                }
                rename[id] = symbols.intern(sym);
                continue;
            }
            Frame::Events(mut events) => {
                for c in &mut events {
                    for id in [&mut c.src_name, &mut c.dst_name, &mut c.rule, &mut c.isolated] {
                        if *id != 0 {
                            match rename.get(*id as usize) {
                                Some(&m) if m != 0 => *id = m,
                                _ => bail!("an event names a symbol the agent never defined"),
                            }
                        }
                    }
                }
                counters.received.fetch_add(events.len() as u64, Ordering::Relaxed);
                Msg::Events(node, events, Instant::now())
            }
            Frame::Lagged(n) => Msg::Lagged(node, n),
        };
        if tx.send(msg).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// An event waiting for its turn, ordered by time, then arrival.
#[derive(PartialEq, Eq)]
struct Pending {
    time_ns: u64,
    seq: u64,
    node: u32,
    arrived: Instant,
    event: Compact,
}

impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.time_ns, self.seq).cmp(&(o.time_ns, o.seq))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// The reorder window.
struct Heap {
    heap: BinaryHeap<Reverse<Pending>>,
    /// Per node: the newest event time seen; None once gone.
    newest: Vec<Option<u64>>,
    live: Vec<bool>,
    seq: u64,
    /// The time of the last event delivered.
    last_ns: u64,
    opts: Options,
    counters: Arc<Counters>,
}

impl Heap {
    fn new(nodes: usize, opts: Options, counters: Arc<Counters>) -> Heap {
        Heap {
            heap: BinaryHeap::new(),
            newest: vec![None; nodes],
            live: vec![true; nodes],
            seq: 0,
            last_ns: 0,
            opts,
            counters,
        }
    }

    fn push(&mut self, node: u32, events: Vec<Compact>, arrived: Instant) {
        for event in events {
            let newest = &mut self.newest[node as usize];
            *newest = Some(newest.map_or(event.time_ns, |t| t.max(event.time_ns)));
            self.seq += 1;
            self.heap.push(Reverse(Pending { time_ns: event.time_ns, seq: self.seq, node, arrived, event }));
        }
        let n = self.heap.len() as u64;
        self.counters.peak_buffered.fetch_max(n, Ordering::Relaxed);
    }

    fn join(&mut self, node: u32) {
        let i = node as usize;
        if self.live.len() <= i {
            self.live.resize(i + 1, false);
            self.newest.resize(i + 1, None);
        }
        self.live[i] = true;
    }

    fn gone(&mut self, node: u32) {
        self.live[node as usize] = false;
    }

    fn done(&self) -> bool {
        self.heap.is_empty() && !self.live.iter().any(|l| *l)
    }

    /// Time up to which every live node has sent events (None: some live
    /// node has sent nothing yet).
    fn watermark(&self) -> Option<u64> {
        let mut w = u64::MAX;
        for (newest, live) in self.newest.iter().zip(&self.live) {
            if *live {
                w = w.min((*newest)?);
            }
        }
        Some(w)
    }

    /// Moves the events whose turn has come to `out`.
    fn release(&mut self, now: Instant, out: &mut Vec<Item>) {
        let watermark = self.watermark();
        while let Some(Reverse(p)) = self.heap.peek() {
            let full = self.heap.len() > self.opts.max_buffered;
            let ready = watermark.is_some_and(|w| p.time_ns <= w) || now.duration_since(p.arrived) >= self.opts.window;
            if !(ready || full) {
                break;
            }
            let Reverse(p) = self.heap.pop().expect("peeked");
            if !ready {
                self.counters.forced.fetch_add(1, Ordering::Relaxed);
            }
            if p.time_ns < self.last_ns {
                self.counters.late.fetch_add(1, Ordering::Relaxed);
            }
            self.last_ns = self.last_ns.max(p.time_ns);
            out.push(Item::Event { node: p.node, event: p.event });
        }
    }
}

async fn run(mut heap: Heap, mut rx: mpsc::Receiver<Msg>, tx: mpsc::Sender<Vec<Item>>) {
    let mut tick = tokio::time::interval((heap.opts.window / 5).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open || !heap.done() {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                Some(m) => take(&mut heap, m, &mut notes),
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        heap.release(now, &mut out);
        // Everything already waiting, releasing after each (the heap's
        // bound holds between messages).
        for _ in 0..QUEUE {
            match rx.try_recv() {
                Ok(m) => take(&mut heap, m, &mut notes),
                Err(_) => break,
            }
            heap.release(now, &mut out);
        }
        if !open {
            // Nothing more can come: no reason to wait.
            heap.live.fill(false);
            heap.release(now, &mut out);
        }
        // Reports after the events released with them.
        out.append(&mut notes);
        if !out.is_empty() {
            let n = out.iter().filter(|i| matches!(i, Item::Event { .. })).count() as u64;
            if tx.send(out).await.is_err() {
                return;
            }
            heap.counters.delivered.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Takes a reader's message; what is not an event goes to `notes`.
fn take(heap: &mut Heap, m: Msg, notes: &mut Vec<Item>) {
    match m {
        Msg::Join(node) => heap.join(node),
        Msg::Events(node, events, arrived) => heap.push(node, events, arrived),
        Msg::Lagged(node, missed) => {
            heap.counters.lagged.fetch_add(missed, Ordering::Relaxed);
            notes.push(Item::Lagged { node, missed });
        }
        Msg::Gone(node, error) => {
            heap.gone(node);
            notes.push(Item::Gone { node, error });
        }
    }
}

/// Unix time now, nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
