//! The agent's local API: a unix socket (owner-only) speaking one JSON
//! request line, answered by JSON lines. `palisade status` and
//! `palisade observe` are its clients; nothing is exposed on the network.

use crate::events::{Verdict, VerdictEvent};
use crate::policy::Direction;
use crate::state::Shared;
use crate::trace::Query;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Where `palisade run` listens and the CLI connects by default.
pub const DEFAULT_SOCKET: &str = "/run/palisade/palisade.sock";

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
    /// The flow record: one line, a [`crate::flows::Snapshot`].
    Flows,
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
        Request::Flows => {
            let mut out = serde_json::to_vec(&shared.flows.snapshot(crate::flows::now_ms()))?;
            out.push(b'\n');
            write.write_all(&out).await?;
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
