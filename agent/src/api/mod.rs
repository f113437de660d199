//! The agent's local API: a unix socket (owner-only) speaking one JSON
//! request line, answered by JSON lines (status, trace) or by the binary
//! event frames of [`crate::events::wire`] (observe). `palisade status`
//! and `palisade observe` are its clients; nothing is exposed on the
//! network. The same protocol is served over any byte stream
//! ([`serve_stream`]): [`upgrade`] carries it over the browser view's
//! loopback listener, which `kubectl palisade` reaches through the API
//! server's port-forward ([`crate::remote`]).

pub mod frames;
pub mod upgrade;

use crate::events::record::protocol_name;
use crate::events::wire::{self, Compact, Symbol, Symbols, TAG_EVENTS, TAG_LAGGED};
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
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The longest request line read (a trace query is well under this).
const MAX_REQUEST: u64 = 64 * 1024;

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
    /// Whether the event matches; `names` resolves its symbols.
    /// The same test on an expanded event (the browser view's tail).
    pub fn matches_event(&self, ev: &VerdictEvent) -> bool {
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

    pub fn matches(&self, ev: &Compact, names: &mut impl FnMut(u32) -> Option<Arc<Symbol>>) -> bool {
        let mut pods = || {
            [ev.src_name, ev.dst_name].map(|id| match names(id).as_deref() {
                Some(Symbol::Pod { namespace, name }) => Some((namespace.clone(), name.clone())),
                _ => None,
            })
        };
        self.verdict.is_none_or(|v| v == ev.verdict())
            && self.direction.is_none_or(|d| d == ev.direction())
            && self.protocol.as_ref().is_none_or(|p| p.eq_ignore_ascii_case(&protocol_name(ev.protocol)))
            && self.port.is_none_or(|port| ev.has_ports() && (ev.sport == port || ev.dport == port))
            && self.namespace.as_ref().is_none_or(|ns| pods().iter().flatten().any(|(n, _)| n == ns))
            && self.pod.as_ref().is_none_or(|want| {
                pods().iter().flatten().any(|(ns, name)| match want.split_once('/') {
                    Some((wns, wname)) => ns == wns && name == wname,
                    None => name == want,
                })
            })
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
            if let Err(e) = serve_stream(stream, &shared).await {
                tracing::debug!("api client: {e:#}");
            }
        });
    }
}

/// Answers the one request a client sends on `stream` (a unix socket
/// connection, or an upgraded HTTP connection). Every request only reads.
pub async fn serve_stream<S: AsyncRead + AsyncWrite>(stream: S, shared: &Shared) -> Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(&line).context("bad request")?;
    match request {
        Request::Status => {
            let mut status = serde_json::to_value(shared.current_status())?;
            // Which build answers: `kubectl palisade status` compares nodes.
            status["version"] = env!("CARGO_PKG_VERSION").into();
            let mut out = serde_json::to_vec(&status)?;
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
            // Subscribe before reading history so nothing falls in between;
            // sequence numbers keep what is in both from being sent twice.
            let mut live = shared.hub.subscribe();
            let (history, mut next) = shared.hub.history();
            let mut enc = Encoder::new(shared.hub.symbols.clone());
            let cutoff = since_ms.map(|ms| {
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                now.saturating_sub(Duration::from_millis(ms)).as_nanos() as u64
            });
            let mut past: Vec<Compact> = history
                .into_iter()
                .filter(|e| cutoff.is_none_or(|c| e.time_ns >= c))
                .filter(|e| enc.matches(&filter, e))
                .collect();
            if let Some(n) = last {
                past.drain(..past.len().saturating_sub(n));
            } else if since_ms.is_none() {
                past.clear();
            }
            enc.events(&past);
            write.write_all(&enc.take()).await?;
            if !follow {
                return Ok(());
            }
            loop {
                let mut batch = match live.recv().await {
                    Ok(b) => b,
                    // The next batch's number says how many were missed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                };
                // Everything already waiting goes out in one write.
                loop {
                    next = enc.batch(&filter, &batch, next);
                    if enc.len() >= 1 << 20 {
                        break;
                    }
                    match live.try_recv() {
                        Ok(b) => batch = b,
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
                write.write_all(&enc.take()).await?;
            }
        }
    }
    Ok(())
}

/// Encodes one client's event stream: symbols defined before first use.
struct Encoder {
    symbols: Arc<Symbols>,
    /// Symbols this client has (by id), and the ones it was sent.
    known: Vec<Option<Arc<Symbol>>>,
    sent: Vec<bool>,
    out: Vec<u8>,
}

impl Encoder {
    fn new(symbols: Arc<Symbols>) -> Encoder {
        Encoder { symbols, known: Vec::new(), sent: Vec::new(), out: Vec::with_capacity(64 * 1024) }
    }

    fn name(&mut self, id: u32) -> Option<Arc<Symbol>> {
        let i = id as usize;
        if id == 0 {
            return None;
        }
        if self.known.len() <= i {
            self.known.resize(i + 1, None);
            self.sent.resize(i + 1, false);
        }
        if self.known[i].is_none() {
            self.known[i] = self.symbols.get(id);
        }
        self.known[i].clone()
    }

    fn matches(&mut self, filter: &Filter, ev: &Compact) -> bool {
        filter.matches(ev, &mut |id| self.name(id))
    }

    fn len(&self) -> usize {
        self.out.len()
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Frames for `events` (already filtered).
    fn events(&mut self, events: &[Compact]) {
        let mut frame = None;
        for ev in events {
            for id in ev.symbols() {
                // Sent already: the common case, without touching the table.
                if id == 0 || self.sent.get(id as usize).copied().unwrap_or(false) {
                    continue;
                }
                if self.name(id).is_some() && !self.sent[id as usize] {
                    if let Some(at) = frame.take() {
                        wire::end_frame(&mut self.out, at);
                    }
                    self.sent[id as usize] = true;
                    let sym = self.known[id as usize].clone().expect("named above");
                    wire::symbol_frame(&mut self.out, id, &sym);
                }
            }
            if frame.is_none() {
                frame = Some(wire::begin_frame(&mut self.out, TAG_EVENTS));
            }
            ev.encode(&mut self.out);
        }
        if let Some(at) = frame {
            wire::end_frame(&mut self.out, at);
        }
    }

    /// Frames for a live batch, given the number of the next event this
    /// client expects; returns the number after the batch.
    fn batch(&mut self, filter: &Filter, batch: &crate::events::Batch, next: u64) -> u64 {
        if batch.seq > next {
            let at = wire::begin_frame(&mut self.out, TAG_LAGGED);
            self.out.extend_from_slice(&(batch.seq - next).to_le_bytes());
            wire::end_frame(&mut self.out, at);
        }
        let skip = next.saturating_sub(batch.seq).min(batch.events.len() as u64) as usize;
        let wanted: Vec<Compact> =
            batch.events[skip..].iter().filter(|e| filter.matches(e, &mut |id| self.name(id))).copied().collect();
        self.events(&wanted);
        batch.seq + batch.events.len() as u64
    }
}

/// Opens an observe stream: what follows the request on the returned
/// socket are the binary frames of [`crate::events::wire`].
pub fn observe(socket: &Path, req: &Request) -> Result<std::os::unix::net::UnixStream> {
    use std::io::Write;
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => bail!(
            "cannot reach the palisade agent at {} ({e}); is `palisade run` running, and are you root?",
            socket.display()
        ),
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    Ok(stream)
}

/// Sends a request and returns the stream of response lines.
pub async fn request(socket: &Path, req: &Request) -> Result<tokio::io::Lines<BufReader<UnixStream>>> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => bail!(
            "cannot reach the palisade agent at {} ({e}); is `palisade run` running, and are you root?",
            socket.display()
        ),
    };
    request_on(stream, req).await
}

/// Sends a request on an open stream to an agent and returns the stream
/// of response lines (for observe, read frames from `.into_inner()`).
pub async fn request_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    req: &Request,
) -> Result<tokio::io::Lines<BufReader<S>>> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.flush().await?;
    Ok(BufReader::new(stream).lines())
}

/// The one-line reply to a request (status, trace, flows), as JSON.
pub async fn reply_on<S: AsyncRead + AsyncWrite + Unpin>(stream: S, req: &Request) -> Result<serde_json::Value> {
    let mut lines = request_on(stream, req).await?;
    let line = lines.next_line().await?.context("the agent closed the connection")?;
    Ok(serde_json::from_str(&line)?)
}

/// The observe filters and history options, as `palisade observe` and
/// `kubectl palisade observe` take them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ObserveOptions {
    /// Only events with either end in this namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Only events with either end this pod (name or namespace/name).
    #[arg(long)]
    pub pod: Option<String>,
    /// allowed, dropped or audit.
    #[arg(long, value_parser = parse_verdict)]
    pub verdict: Option<Verdict>,
    /// ingress or egress (seen from the local pod).
    #[arg(long, value_parser = parse_direction)]
    pub direction: Option<Direction>,
    /// TCP, UDP, SCTP, ICMP, ICMPv6.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Either end's port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Start with the last N matching events from the agent's history.
    #[arg(long)]
    pub last: Option<usize>,
    /// Start with the history of this long ago (e.g. 5m).
    #[arg(long)]
    pub since: Option<humantime::Duration>,
    /// Print the history and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
}

impl ObserveOptions {
    pub fn request(&self) -> Request {
        Request::Observe {
            filter: Filter {
                namespace: self.namespace.clone(),
                pod: self.pod.clone(),
                verdict: self.verdict,
                direction: self.direction,
                protocol: self.protocol.clone(),
                port: self.port,
            },
            last: self.last,
            since_ms: self.since.map(|d| Duration::from(d).as_millis() as u64),
            follow: !self.no_follow,
        }
    }
}

fn parse_verdict(s: &str) -> Result<Verdict, String> {
    serde_json::from_value(serde_json::Value::String(s.to_uppercase()))
        .map_err(|_| format!("{s}: allowed, dropped or audit"))
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    serde_json::from_value(serde_json::Value::String(s.to_lowercase())).map_err(|_| format!("{s}: ingress or egress"))
}
