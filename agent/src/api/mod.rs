//! The agent's local API: a unix socket (owner-only) speaking one JSON
//! request line, answered by JSON lines. `palisade status` and
//! `palisade observe` are its clients; nothing is exposed on the network.

use crate::cluster::InputError;
use crate::datapath::pinned::Pinned;
use crate::datapath::{EndpointState, MapFill};
use crate::events::metrics::Metrics;
use crate::events::{Hub, Verdict, VerdictEvent};
use crate::policy::{Direction, Input, Node};
use crate::trace::{self, Query, Trace};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Where `palisade run` listens and the CLI connects by default.
pub const DEFAULT_SOCKET: &str = "/run/palisade/palisade.sock";

/// What is enforced now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// True once the kernel holds the latest valid input.
    pub in_sync: bool,
    /// When the kernel last took a change (RFC 3339, milliseconds).
    pub applied_at: Option<String>,
    /// Policy revision in the kernel; bumped by every change.
    pub revision: u32,
    pub node: String,
    /// Where cluster state comes from.
    pub source: String,
    /// Set while the source cannot be read (the API server is away): the
    /// last state stays in force.
    pub stale: Option<String>,
    pub audit: bool,
    pub pods: Vec<EndpointState>,
    /// Strict mode: pod interfaces held closed until their pod is known.
    pub pending_interfaces: Vec<String>,
    /// Objects that could not be used as written.
    pub errors: Vec<InputError>,
    /// Problems writing the kernel state.
    pub sync_errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Kernel counters (packets, events, flows).
    pub counters: BTreeMap<String, u64>,
    pub maps: MapFill,
}

/// The state the kernel was last synced to, for `trace`.
pub struct Applied {
    pub input: Arc<Input>,
    pub node: Node,
    pub endpoints: Vec<EndpointState>,
}

/// Names of the kernel counters in `status`, by [`palisade_common::stat`] index.
pub const COUNTER_NAMES: [&str; palisade_common::stat::COUNT as usize] = [
    "packets_allowed",
    "packets_dropped_no_rule",
    "packets_dropped_malformed",
    "packets_audited",
    "events_lost",
    "events_sent",
    "events_suppressed",
    "flows_new",
];

/// State shared between the agent loop and the API.
pub struct Shared {
    pub status: RwLock<Status>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub applied: RwLock<Option<Arc<Applied>>>,
    /// The pinned maps, read for counters and trace's kernel check.
    pub pinned: Pinned,
    /// Tracked flows, counted on a slow timer.
    pub tracked_flows: std::sync::atomic::AtomicUsize,
    /// The input version the kernel holds, and how to read the current
    /// one: `in_sync` compares them when asked, so a script that just wrote
    /// a file never sees a stale "in sync".
    pub input: InputVersion,
}

pub struct InputVersion {
    pub current: Box<dyn Fn() -> u64 + Send + Sync>,
    pub applied: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn current_status(&self) -> Status {
        // The version first: the agent writes the status, then the version,
        // so the status read after it is at least as new as the version.
        let applied = self.input.applied.load(std::sync::atomic::Ordering::SeqCst);
        let mut s = self.status.read().map(|s| s.clone()).unwrap_or_default();
        if (self.input.current)() != applied {
            s.in_sync = false;
        }
        s.counters = COUNTER_NAMES.iter().map(|n| n.to_string()).zip(self.pinned.counters()).collect();
        s.counters.insert("events_received".into(), self.metrics.received());
        s.maps.conntrack.0 = self.tracked_flows.load(std::sync::atomic::Ordering::Relaxed);
        s
    }

    /// Traces a connection against the state in force, and checks the
    /// kernel's entries for the sides whose pod is enforced on this node.
    pub fn trace(&self, q: &Query) -> Result<Trace, String> {
        let applied = self.applied.read().ok().and_then(|a| a.clone()).ok_or("the agent has not synced yet")?;
        let mut t = trace::trace(&applied.input, &applied.node, q)?;
        let (src, dst) = (t.source.ip, t.destination.ip);
        for (side, remote) in [(&mut t.egress, dst), (&mut t.ingress, src)] {
            let local =
                applied.endpoints.iter().find(|e| side.pod.as_deref() == Some(&format!("{}/{}", e.namespace, e.name)));
            if let Some(enforced) = local {
                trace::check_kernel(side, &applied.input, &applied.node, &self.pinned, enforced, remote, q);
            }
        }
        Ok(t)
    }
}

/// Which events a client wants.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Filter {
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// Either end is this pod (`name` or `namespace/name`).
    pub pod: Option<String>,
    pub verdict: Option<Verdict>,
    pub direction: Option<Direction>,
    /// TCP, UDP, SCTP, ICMP...
    pub protocol: Option<String>,
    /// Either port.
    pub port: Option<u16>,
}

impl Filter {
    pub fn matches(&self, ev: &VerdictEvent) -> bool {
        let ends = [&ev.source, &ev.destination];
        self.namespace.as_ref().is_none_or(|ns| ends.iter().any(|p| p.namespace.as_ref() == Some(ns)))
            && self.pod.as_ref().is_none_or(|want| {
                ends.iter().any(|p| match want.split_once('/') {
                    Some((ns, name)) => p.namespace.as_deref() == Some(ns) && p.pod.as_deref() == Some(name),
                    None => p.pod.as_deref() == Some(want.as_str()),
                })
            })
            && self.verdict.is_none_or(|v| v == ev.verdict)
            && self.direction.is_none_or(|d| d == ev.direction)
            && self.protocol.as_ref().is_none_or(|p| p.eq_ignore_ascii_case(&ev.protocol))
            && self.port.is_none_or(|port| ends.iter().any(|p| p.port == Some(port)))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Trace {
        query: Query,
    },
    Observe {
        #[serde(default)]
        filter: Filter,
        /// Replay at most this many past events first.
        last: Option<usize>,
        /// Replay past events no older than this many milliseconds.
        since_ms: Option<u64>,
        /// Keep streaming new events.
        follow: bool,
    },
}

/// Serves the API until the process ends.
pub async fn serve(path: &Path, shared: Arc<Shared>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &shared).await {
                tracing::debug!("api client: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, shared: &Shared) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(&line).context("bad request")?;
    match request {
        Request::Status => {
            let mut out = serde_json::to_vec(&shared.current_status())?;
            out.push(b'\n');
            write.write_all(&out).await?;
        }
        Request::Trace { query } => {
            let reply = match shared.trace(&query) {
                Ok(t) => serde_json::json!({ "trace": t }),
                Err(e) => serde_json::json!({ "error": e }),
            };
            write.write_all(format!("{reply}\n").as_bytes()).await?;
        }
        Request::Observe { filter, last, since_ms, follow } => {
            // Subscribe before replaying history so nothing falls in between.
            let mut live = shared.hub.subscribe();
            let cutoff = since_ms.map(|ms| SystemTime::now() - Duration::from_millis(ms));
            let mut past: Vec<_> = shared
                .hub
                .history()
                .into_iter()
                .filter(|e| filter.matches(e))
                .filter(|e| cutoff.is_none_or(|c| humantime::parse_rfc3339(&e.time).map(|t| t >= c).unwrap_or(true)))
                .collect();
            if let Some(n) = last {
                past.drain(..past.len().saturating_sub(n));
            } else if since_ms.is_none() {
                past.clear();
            }
            for ev in past {
                send(&mut write, &ev).await?;
            }
            write.flush().await?;
            if !follow {
                return Ok(());
            }
            loop {
                match live.recv().await {
                    Ok(ev) if filter.matches(&ev) => send(&mut write, &ev).await?,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let note = serde_json::json!({"lagged": n});
                        write.write_all(format!("{note}\n").as_bytes()).await?;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, ev: &VerdictEvent) -> Result<()> {
    let mut out = serde_json::to_vec(ev)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Sends a request and returns the stream of response lines.
pub async fn request(socket: &Path, req: &Request) -> Result<tokio::io::Lines<BufReader<UnixStream>>> {
    let mut stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => bail!(
            "cannot reach the palisade agent at {} ({e}); is `palisade run` running, and are you root?",
            socket.display()
        ),
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(BufReader::new(stream).lines())
}
