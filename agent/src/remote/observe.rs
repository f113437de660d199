//! `kubectl palisade observe`: one time-ordered stream from every node's
//! agent. Each agent streams its frames (filtered at the agent, as for
//! `palisade observe`); a reader task per agent feeds one bounded channel,
//! and a [`Merger`] releases events in timestamp order: an event goes out
//! once every connected agent has sent something at least as new (the
//! watermark) or once it has waited [`WINDOW`], whichever comes first, so
//! an idle node delays nothing by more than the window. Memory is bounded:
//! the channel holds a few frames per agent (a slow terminal slows the
//! readers, the agents' broadcast then lags, and the lag is reported) and
//! the merger holds at most [`MAX_HELD`] events. An agent that goes away is
//! reported on stderr and the others go on; agent pods that appear (and
//! agents that come back) are picked up every [`RESCAN`].

use super::{AgentConn, Target};
use crate::api::Request;
use crate::api::frames::{Frame, FrameReader};
use crate::events::wire::{self, Compact, Symbol, Table};
use anyhow::Result;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long an event waits for older ones from other nodes.
pub const WINDOW: Duration = Duration::from_millis(300);
/// Events held for reordering at most; past it the oldest go out.
pub const MAX_HELD: usize = 100_000;
/// How often the agent pods are listed again (new pods, agents back).
pub const RESCAN: Duration = Duration::from_secs(5);

/// How the merged stream is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Print {
    Text,
    Json,
    /// Only the running count of events, every 100 ms (benchmarks).
    Count,
}

/// What a reader task tells the merger; `conn` numbers one connection.
enum Msg {
    Up {
        conn: usize,
    },
    Symbol {
        conn: usize,
        id: u32,
        sym: Symbol,
    },
    Events {
        conn: usize,
        events: Vec<Compact>,
    },
    Lagged {
        conn: usize,
        n: u64,
    },
    /// The stream ended (`error`: why, if it was not the end of history).
    Down {
        conn: usize,
        error: Option<String>,
    },
}

/// One connection's state in the merger.
struct Conn {
    node: String,
    table: Table,
    /// The newest event time seen on it.
    latest: u64,
    open: bool,
}

/// An event held for ordering.
struct Held {
    time_ns: u64,
    /// Arrival order: ties keep a node's order.
    seq: u64,
    arrived: Instant,
    conn: usize,
    event: Compact,
}

impl PartialEq for Held {
    fn eq(&self, o: &Held) -> bool {
        (self.time_ns, self.seq) == (o.time_ns, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Held) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Held) -> std::cmp::Ordering {
        (self.time_ns, self.seq).cmp(&(o.time_ns, o.seq))
    }
}

/// Orders events from several connections by time, within a window.
pub struct Merger {
    conns: Vec<Conn>,
    heap: BinaryHeap<Reverse<Held>>,
    seq: u64,
    window: Duration,
    max_held: usize,
}

impl Merger {
    pub fn new(window: Duration, max_held: usize) -> Merger {
        Merger { conns: Vec::new(), heap: BinaryHeap::new(), seq: 0, window, max_held }
    }

    /// Registers connection `conn` (numbers are dense, from 0).
    pub fn open(&mut self, conn: usize, node: &str) {
        while self.conns.len() <= conn {
            self.conns.push(Conn { node: String::new(), table: Table::default(), latest: 0, open: false });
        }
        self.conns[conn] = Conn { node: node.into(), table: Table::default(), latest: 0, open: true };
    }

    /// The connection no longer holds back the watermark.
    pub fn close(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.open = false;
        }
    }

    pub fn define(&mut self, conn: usize, id: u32, sym: Symbol) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.table.define(id, sym);
        }
    }

    pub fn push(&mut self, conn: usize, events: Vec<Compact>, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        for event in events {
            c.latest = c.latest.max(event.time_ns);
            self.seq += 1;
            self.heap.push(Reverse(Held { time_ns: event.time_ns, seq: self.seq, arrived: now, conn, event }));
        }
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.heap.len()
    }

    /// The events that may go out at `now` (all of them if `all`), oldest
    /// first, each with its node and symbol table.
    pub fn release<E>(
        &mut self,
        now: Instant,
        all: bool,
        mut out: impl FnMut(&str, &Table, &Compact) -> Result<(), E>,
    ) -> Result<(), E> {
        let watermark = self.conns.iter().filter(|c| c.open).map(|c| c.latest).min().unwrap_or(u64::MAX);
        while let Some(Reverse(top)) = self.heap.peek() {
            let due = all
                || self.heap.len() > self.max_held
                || top.time_ns <= watermark
                || now.duration_since(top.arrived) >= self.window;
            if !due {
                break;
            }
            let Reverse(h) = self.heap.pop().expect("peeked");
            let c = &self.conns[h.conn];
            out(&c.node, &c.table, &h.event)?;
        }
        Ok(())
    }
}

/// Follows (or, with `follow: false` in the request, reads the history of)
/// every agent in `target`, or only those on `nodes` if any are named,
/// printing the merged stream to stdout.
pub async fn run(client: kube::Client, target: Target, req: Request, nodes: Vec<String>, print: Print) -> Result<()> {
    let follow = matches!(req, Request::Observe { follow: true, .. });
    let wanted = |node: &str| nodes.is_empty() || nodes.iter().any(|n| n == node);
    let agents: Vec<AgentConn> =
        super::agents(&client, &target).await?.into_iter().filter(|a| wanted(&a.node)).collect();
    if agents.is_empty() {
        anyhow::bail!("no agent pods in {} matching {}", target.namespace, target.selector);
    }
    // A few frames per agent: bounded, and enough to keep every reader busy.
    let (tx, mut rx) = mpsc::channel::<Msg>(8 * agents.len().max(4));
    // An agent that comes back, or a new one, gets only new events.
    let live = match &req {
        Request::Observe { filter, .. } => {
            Request::Observe { filter: filter.clone(), last: None, since_ms: None, follow: true }
        }
        other => other.clone(),
    };
    // Each connection's node, by connection number; per node, whether a
    // connection is open (or opening) and whether its trouble was told.
    let mut conn_nodes: Vec<String> = Vec::new();
    let mut busy: BTreeMap<String, bool> = BTreeMap::new();
    let mut reported: BTreeMap<String, ()> = BTreeMap::new();
    for a in agents {
        busy.insert(a.node.clone(), true);
        conn_nodes.push(a.node.clone());
        tokio::spawn(read_agent(conn_nodes.len() - 1, a, req.clone(), tx.clone()));
    }
    let mut open = conn_nodes.len();
    let mut merger = Merger::new(WINDOW, MAX_HELD);
    let mut printer = Printer::new(print);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + RESCAN, RESCAN);
    let (found_tx, mut found_rx) = mpsc::channel::<Vec<AgentConn>>(1);
    loop {
        tokio::select! {
            Some(msg) = rx.recv() => {
                match msg {
                    Msg::Up { conn } => {
                        let node = &conn_nodes[conn];
                        merger.open(conn, node);
                        if reported.remove(node).is_some() {
                            eprintln!("kubectl-palisade: node {node}: following again");
                        }
                    }
                    Msg::Symbol { conn, id, sym } => merger.define(conn, id, sym),
                    Msg::Events { conn, events } => merger.push(conn, events, Instant::now()),
                    Msg::Lagged { conn, n } => printer.lagged(&conn_nodes[conn], n)?,
                    Msg::Down { conn, error } => {
                        merger.close(conn);
                        open -= 1;
                        let node = conn_nodes[conn].clone();
                        busy.insert(node.clone(), false);
                        if let Some(e) = error
                            && reported.insert(node.clone(), ()).is_none()
                        {
                            let rest = if follow { "; following the other nodes" } else { "" };
                            eprintln!("kubectl-palisade: node {node}: {e:#}{rest}");
                        }
                        if !follow && open == 0 {
                            break;
                        }
                    }
                }
                merger.release(Instant::now(), false, |n, t, e| printer.event(n, t, e))?;
            }
            _ = tick.tick() => {
                merger.release(Instant::now(), false, |n, t, e| printer.event(n, t, e))?;
                printer.tick()?;
            }
            _ = rescan.tick(), if follow => {
                // Listing runs beside the stream, never holding it up.
                let (client, target, found_tx) = (client.clone(), target.clone(), found_tx.clone());
                tokio::spawn(async move {
                    if let Ok(agents) = super::agents(&client, &target).await {
                        let _ = found_tx.try_send(agents);
                    }
                });
            }
            Some(agents) = found_rx.recv() => {
                for a in agents.into_iter().filter(|a| wanted(&a.node) && a.running) {
                    if busy.get(&a.node) == Some(&true) {
                        continue;
                    }
                    if !busy.contains_key(&a.node) {
                        eprintln!("kubectl-palisade: node {}: new agent pod {}", a.node, a.pod);
                    }
                    busy.insert(a.node.clone(), true);
                    conn_nodes.push(a.node.clone());
                    open += 1;
                    tokio::spawn(read_agent(conn_nodes.len() - 1, a, live.clone(), tx.clone()));
                }
            }
        }
    }
    merger.release(Instant::now(), true, |n, t, e| printer.event(n, t, e))?;
    printer.finish()
}

/// Streams one agent's frames into the merger, and says how it ended.
async fn read_agent(conn: usize, agent: AgentConn, req: Request, tx: mpsc::Sender<Msg>) {
    let error = async {
        let lines = agent.request(&req).await?;
        if tx.send(Msg::Up { conn }).await.is_err() {
            return Ok(());
        }
        let mut frames = FrameReader::new(lines.into_inner());
        while let Some(frame) = frames.next().await? {
            let msg = match frame {
                Frame::Symbol(id, sym) => Msg::Symbol { conn, id, sym },
                Frame::Events(events) => Msg::Events { conn, events },
                Frame::Lagged(n) => Msg::Lagged { conn, n },
            };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
        // The end of the history, or the agent went away mid-stream.
        anyhow::ensure!(!matches!(req, Request::Observe { follow: true, .. }), "the agent closed the stream");
        Ok::<_, anyhow::Error>(())
    }
    .await
    .err()
    .map(|e| format!("{e:#}"));
    let _ = tx.send(Msg::Down { conn, error }).await;
}

/// Writes the merged stream.
struct Printer {
    print: Print,
    out: std::io::BufWriter<std::io::Stdout>,
    count: u64,
    last_count: Instant,
}

/// An event with the node that reported it.
#[derive(serde::Serialize)]
struct NodeEvent<'a> {
    node: &'a str,
    #[serde(flatten)]
    event: &'a crate::events::VerdictEvent,
}

impl Printer {
    fn new(print: Print) -> Printer {
        Printer {
            print,
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            count: 0,
            last_count: Instant::now(),
        }
    }

    fn event(&mut self, node: &str, table: &Table, c: &Compact) -> Result<()> {
        self.count += 1;
        if self.print == Print::Count {
            return Ok(());
        }
        let event = wire::to_event(c, |id| table.get(id).cloned());
        match self.print {
            Print::Json => serde_json::to_writer(&mut self.out, &NodeEvent { node, event: &event })?,
            _ => write!(self.out, "{} {node} {event}", event.time)?,
        }
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn lagged(&mut self, node: &str, n: u64) -> Result<()> {
        writeln!(self.out, "{}", serde_json::json!({ "lagged": n, "node": node }))?;
        Ok(())
    }

    /// Flushes what was printed; in count mode, the count every 100 ms.
    fn tick(&mut self) -> Result<()> {
        if self.print == Print::Count && self.last_count.elapsed() >= Duration::from_millis(100) {
            self.last_count = Instant::now();
            writeln!(self.out, "{}", self.count)?;
        }
        self.out.flush()?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.print == Print::Count {
            writeln!(self.out, "{}", self.count)?;
        }
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64) -> Compact {
        Compact { time_ns: t, ..Compact::default() }
    }

    fn drain(m: &mut Merger, now: Instant, all: bool) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        m.release(now, all, |n, _, e| {
            out.push((n.to_string(), e.time_ns));
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
        out
    }

    #[test]
    fn releases_in_time_order_once_every_node_has_caught_up() {
        let t0 = Instant::now();
        let mut m = Merger::new(Duration::from_millis(300), 100);
        m.open(0, "n1");
        m.open(1, "n2");
        m.push(0, vec![ev(10), ev(30)], t0);
        // n2 has sent nothing yet: everything waits (within the window).
        assert!(drain(&mut m, t0, false).is_empty());
        m.push(1, vec![ev(20)], t0);
        // Watermark 20: 10 and 20 go, 30 waits for n2.
        assert_eq!(drain(&mut m, t0, false), vec![("n1".into(), 10), ("n2".into(), 20)]);
        m.push(1, vec![ev(40)], t0);
        assert_eq!(drain(&mut m, t0, false), vec![("n1".into(), 30)]);
        // An idle node holds nothing back longer than the window.
        assert_eq!(drain(&mut m, t0 + Duration::from_millis(300), false), vec![("n2".into(), 40)]);
    }

    #[test]
    fn a_closed_node_holds_nothing_back_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut m = Merger::new(Duration::from_secs(60), 3);
        m.open(0, "n1");
        m.open(1, "n2");
        m.push(0, vec![ev(5), ev(1), ev(3)], t0);
        assert!(drain(&mut m, t0, false).is_empty());
        m.push(0, vec![ev(9)], t0);
        // Over the bound: the oldest goes out.
        assert_eq!(drain(&mut m, t0, false), vec![("n1".into(), 1)]);
        m.close(1);
        assert_eq!(drain(&mut m, t0, false).iter().map(|e| e.1).collect::<Vec<_>>(), vec![3, 5, 9]);
        assert_eq!(m.held(), 0);
    }
}
