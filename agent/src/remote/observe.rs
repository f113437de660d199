//! `kubectl palisade observe`: one time-ordered stream from every node's
//! agent, a driver over [`super::merge`] (which orders, bounds memory and
//! reports nodes that go away). Each agent streams its frames, filtered at
//! the agent as for `palisade observe`. A node whose stream ends or fails
//! is reported once on stderr and the others go on; when following, the
//! agent pods are listed again every [`RESCAN`], and pods that appear (and
//! agents that come back) join the merge, asked for new events only.

use super::merge::{self, Item, Joiner};
use super::{AgentConn, Target};
use crate::api::Request;
use crate::events::VerdictEvent;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::sync::mpsc;

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

/// Nodes whose trouble was reported (once) and not yet followed again.
type Troubled = Arc<Mutex<BTreeSet<String>>>;

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
    // An agent that comes back, or a new one, gets only new events.
    let live = match &req {
        Request::Observe { filter, .. } => {
            Request::Observe { filter: filter.clone(), last: None, since_ms: None, follow: true }
        }
        other => other.clone(),
    };
    let troubled = Troubled::default();
    // Per node: whether a stream is open (or opening).
    let mut busy: BTreeMap<String, bool> = agents.iter().map(|a| (a.node.clone(), true)).collect();
    let streams = agents.into_iter().map(|a| (a.node.clone(), open(a, req.clone(), troubled.clone()))).collect();
    let (mut merged, joiner) = merge::merge_joinable(streams, merge::Options::default());
    // Without following, the merge ends with the last history.
    let joiner: Option<Joiner> = follow.then_some(joiner);
    let mut printer = Printer::new(print);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + RESCAN, RESCAN);
    let (found_tx, mut found_rx) = mpsc::channel::<Vec<AgentConn>>(1);
    loop {
        tokio::select! {
            items = merged.recv() => {
                let Some(items) = items else { break };
                for item in items {
                    match item {
                        Item::Event { node, event } => printer.event(merged.node(node), &merged.event(&event))?,
                        Item::Lagged { node, missed } => printer.lagged(merged.node(node), missed)?,
                        Item::Gone { node, error } => {
                            let node = merged.node(node).to_string();
                            busy.insert(node.clone(), false);
                            // A followed stream has no end: one that ends is trouble.
                            let error = error.or_else(|| follow.then(|| "the agent closed the stream".into()));
                            if let Some(e) = error
                                && lock(&troubled).insert(node.clone())
                            {
                                let rest = if follow { "; following the other nodes" } else { "" };
                                eprintln!("kubectl-palisade: node {node}: {e}{rest}");
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => printer.tick()?,
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
                let Some(joiner) = &joiner else { continue };
                for a in agents.into_iter().filter(|a| wanted(&a.node) && a.running) {
                    if busy.get(&a.node) == Some(&true) {
                        continue;
                    }
                    if !busy.contains_key(&a.node) {
                        eprintln!("kubectl-palisade: node {}: new agent pod {}", a.node, a.pod);
                    }
                    busy.insert(a.node.clone(), true);
                    joiner.add(a.node.clone(), open(a, live.clone(), troubled.clone()));
                }
            }
        }
    }
    printer.finish()
}

/// Opens a stream of `agent`'s frames for `req`; says so if its node's
/// trouble was reported.
async fn open(agent: AgentConn, req: Request, troubled: Troubled) -> Result<BufReader<super::AgentStream>> {
    let stream = agent.request(&req).await?.into_inner();
    if lock(&troubled).remove(&agent.node) {
        eprintln!("kubectl-palisade: node {}: following again", agent.node);
    }
    Ok(stream)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    event: &'a VerdictEvent,
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

    fn event(&mut self, node: &str, event: &VerdictEvent) -> Result<()> {
        self.count += 1;
        match self.print {
            Print::Count => return Ok(()),
            Print::Json => serde_json::to_writer(&mut self.out, &NodeEvent { node, event })?,
            Print::Text => write!(self.out, "{} {node} {event}", event.time)?,
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
