//! `palisade run`: the agent loop. Cluster state -> compiler -> datapath,
//! again whenever the input, the node's interfaces or routes change, and
//! on a resync timer that heals anything missed.

use crate::api::{self, Applied, InputVersion, Shared, Status};
use crate::cluster::{InputError, Source, Wake};
use crate::datapath::pinned::Pinned;
use crate::datapath::{Datapath, EndpointState, Settings, netlink};
use crate::events::metrics::{self, Metrics};
use crate::events::{self, Hub, LogFormat, View};
use crate::policy::{self, Input, Node};
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

#[derive(Clone, Debug)]
pub struct Options {
    /// Directory of manifests (the standalone source).
    pub cluster_state: Option<PathBuf>,
    pub node_name: String,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub audit: bool,
    pub allow_host: bool,
    pub log_format: LogFormat,
    pub log_new_flows: bool,
    pub drop_event_interval: Duration,
    pub event_buffer_bytes: u32,
    pub defer_mark: u32,
    pub host_interfaces: crate::datapath::HostInterfaces,
    pub strict_prefixes: Vec<String>,
    pub resync: Duration,
    /// Where /metrics, /healthz and /readyz are served (None: nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// How the source is read: saved copies, refused paths, namespace audit.
    pub source: crate::cluster::files::Options,
}

/// The host name, which is the node name unless told otherwise.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub async fn run(opts: Options) -> Result<()> {
    let settings = Settings {
        log_new_flows: opts.log_new_flows,
        drop_event_interval: opts.drop_event_interval,
        event_buffer_bytes: opts.event_buffer_bytes,
        defer_mark: opts.defer_mark,
        host_interfaces: opts.host_interfaces.clone(),
        strict_prefixes: opts.strict_prefixes.clone(),
    };
    let mut dp = Datapath::open(&opts.bpffs, &settings)?;
    let ring = dp.take_events()?;
    let hub = Hub::new(10_000);
    let metrics = Arc::new(Metrics::new());
    let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
    tokio::spawn(events::run(ring, view_rx, hub.clone(), metrics.clone(), Some(opts.log_format)));
    if let Some(addr) = opts.metrics_addr {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, metrics).await {
                tracing::error!("metrics endpoint: {e:#}");
            }
        });
    }

    // Anything that may change what to enforce wakes the loop: the
    // source, and links, addresses and routes coming and going.
    let (wake_tx, mut woken) = mpsc::unbounded_channel::<()>();
    let wake: Wake = Arc::new(move || {
        let _ = wake_tx.send(());
    });
    {
        let wake = wake.clone();
        tokio::spawn(async move {
            if let Err(e) = netlink::watch(move || wake()).await {
                tracing::error!("netlink events: {e:#}");
            }
        });
    }
    let mut source = Source::start(opts.cluster_state.clone(), opts.source.clone(), wake).await?;

    let shared = Arc::new(Shared {
        status: Default::default(),
        hub,
        metrics: metrics.clone(),
        applied: Default::default(),
        pinned: Pinned::open(&opts.bpffs)?,
        input: InputVersion { current: source.current_version(), applied: Default::default() },
        tracked_flows: Default::default(),
    });
    {
        // Kernel counters feed the metrics once a second; the tracked flows
        // (a walk of the whole table) are counted every ten.
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for n in 0u64.. {
                tick.tick().await;
                shared.metrics.kernel(&shared.pinned.counters());
                if n % 10 == 0 {
                    let flows = shared.pinned.tracked_flows();
                    shared.tracked_flows.store(flows, Ordering::Relaxed);
                    shared.metrics.tracked_flows(flows);
                }
            }
        });
    }
    {
        let (socket, shared) = (opts.socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(e) = api::serve(&socket, shared).await {
                tracing::error!("local API on {}: {e:#}", socket.display());
            }
        });
    }

    let handle = netlink::connect()?;
    let mut reported: Vec<InputError> = Vec::new();
    let mut host_network_logged: BTreeSet<(String, String)> = BTreeSet::new();
    let mut gc_done = false;
    tracing::info!(
        node = %opts.node_name, source = %source.describe(), bpffs = %opts.bpffs.display(),
        socket = %opts.socket.display(), "palisade agent started"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut last_clean = None;
    let mut resync_due = true;
    loop {
        let started = Instant::now();
        let snap = source.load();
        let input = Arc::new(snap.input);
        let loaded = started.elapsed();
        let version = source.loaded_version();
        let stale = source.stale();
        let ifaces = match netlink::snapshot(&handle).await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("reading interfaces: {e:#}");
                Default::default()
            }
        };
        // Links and routes churn (addresses settling, other interfaces):
        // when neither they nor the input changed and the kernel took the
        // last state whole, there is nothing to recompile.
        let seen = (version, ifaces.clone(), stale.clone());
        if !resync_due && last_clean.as_ref() == Some(&seen) {
            if !wait(&mut woken, &mut terminate, opts.resync, &mut resync_due).await {
                break;
            }
            continue;
        }
        let node = Node {
            name: opts.node_name.clone(),
            host_ips: ifaces.host_ips.clone(),
            allow_host: opts.allow_host,
            audit: opts.audit,
        };
        let before_compile = started.elapsed();
        let compiled = policy::compile(&input, &node);
        let compiled_at = started.elapsed();
        let mut report = dp.sync(&compiled, &ifaces);
        let synced = started.elapsed();
        if !gc_done && report.errors.is_empty() {
            dp.collect_garbage();
            gc_done = true;
        }
        report.endpoints.extend(host_network_pods(&input, &node, &mut host_network_logged));
        if snap.errors != reported {
            for e in snap.errors.iter().filter(|e| !reported.contains(e)) {
                tracing::warn!("invalid input: {e}");
            }
            reported = snap.errors.clone();
        }
        for e in &report.errors {
            tracing::error!("sync: {e}");
        }
        let view = View {
            catalog: compiled.catalog.clone(),
            endpoints: report
                .endpoints
                .iter()
                .filter_map(|e| e.ifindex.map(|i| (i, (e.namespace.clone(), e.name.clone()))))
                .collect(),
        };
        let _ = view_tx.send(Arc::new(view));
        let fill = dp.fill();
        let states: Vec<&str> = report.endpoints.iter().map(|e| e.state.as_str()).collect();
        let seconds = started.elapsed().as_secs_f64();
        metrics.sync(seconds, report.errors.len(), snap.errors.len(), report.revision, &fill, &states);
        let in_sync = report.errors.is_empty() && stale.is_none();
        {
            let mut st = shared.status.write().expect("status lock");
            let changed = report.changes > 0 || st.applied_at.is_none();
            *st = Status {
                in_sync,
                applied_at: if changed {
                    Some(events::record::rfc3339(SystemTime::now()))
                } else {
                    st.applied_at.clone()
                },
                revision: report.revision,
                node: opts.node_name.clone(),
                source: source.describe(),
                stale,
                audit: opts.audit,
                pods: report.endpoints.clone(),
                pending_interfaces: report.pending.clone(),
                errors: snap.errors.clone(),
                sync_errors: report.errors.clone(),
                warnings: compiled.warnings.clone(),
                counters: Default::default(),
                maps: fill,
            };
        }
        if let Ok(mut a) = shared.applied.write() {
            let endpoints = report.endpoints.clone();
            *a = Some(Arc::new(Applied { input: input.clone(), node: node.clone(), endpoints }));
        }
        shared.input.applied.store(version, Ordering::SeqCst);
        metrics.ready.store(in_sync, Ordering::SeqCst);
        if report.changes > 0 {
            tracing::info!(
                revision = report.revision,
                changes = report.changes,
                pods = report.endpoints.len(),
                millis = synced.as_millis() as u64,
                load_ms = loaded.as_millis() as u64,
                compile_ms = (compiled_at - before_compile).as_millis() as u64,
                sync_ms = (synced - compiled_at).as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "policy in force"
            );
        }

        last_clean = report.errors.is_empty().then_some(seen);
        if !wait(&mut woken, &mut terminate, opts.resync, &mut resync_due).await {
            break;
        }
    }
    tracing::info!("palisade agent stopping; enforcement stays in place (pinned under {})", opts.bpffs.display());
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}

/// Waits for a wake-up or the resync timer (which forces a full pass);
/// false when the agent is told to stop.
async fn wait(
    woken: &mut mpsc::UnboundedReceiver<()>,
    terminate: &mut tokio::signal::unix::Signal,
    resync: Duration,
    resync_due: &mut bool,
) -> bool {
    *resync_due = false;
    tokio::select! {
        _ = woken.recv() => {
            // Let a burst of changes settle, then take them all at once.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while woken.try_recv().is_ok() {}
        }
        _ = tokio::time::sleep(resync) => *resync_due = true,
        _ = tokio::signal::ctrl_c() => return false,
        _ = terminate.recv() => return false,
    }
    true
}

/// Local host-network pods: NetworkPolicy cannot apply to them (they share
/// the node's network); status says so, and the log says it once per pod.
fn host_network_pods(input: &Input, node: &Node, logged: &mut BTreeSet<(String, String)>) -> Vec<EndpointState> {
    let mut out = Vec::new();
    for pod in input.pods.values() {
        let local = pod.node_name.as_deref().is_none_or(|n| n == node.name);
        if !local || !pod.host_network || pod.terminated {
            continue;
        }
        let key = (pod.namespace.clone(), pod.name.clone());
        if logged.insert(key) {
            tracing::info!(
                "{}/{} uses the host network: NetworkPolicy does not apply to it and it is not enforced",
                pod.namespace,
                pod.name
            );
        }
        out.push(EndpointState {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ips: pod.ips.clone(),
            interface: None,
            ifindex: None,
            identity: 0,
            ingress_isolated: false,
            egress_isolated: false,
            audit: false,
            state: "host-network: NetworkPolicy does not apply".into(),
        });
    }
    out
}
