//! `palisade run`: the agent loop. Cluster state -> compiler -> datapath,
//! again whenever the input, the node's interfaces or routes change, and
//! on a resync timer that heals anything missed.

use crate::api::{self, Applied, Shared, Status};
use crate::cluster::InputError;
use crate::cluster::files::FileSource;
use crate::datapath::pinned::Pinned;
use crate::datapath::{Datapath, Settings, netlink};
use crate::events::metrics::{self, Metrics};
use crate::events::{self, Hub, LogFormat, View};
use crate::policy::{self, Node};
use anyhow::{Context, Result, bail};
use notify::Watcher;
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
    pub resync: Duration,
    /// Where /metrics, /healthz and /readyz are served (None: nowhere).
    pub metrics_addr: Option<SocketAddr>,
}

/// The host name, which is the node name unless told otherwise.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub async fn run(opts: Options) -> Result<()> {
    let Some(dir) = opts.cluster_state.clone() else {
        bail!("--cluster-state DIR is required: the Kubernetes API source is not built into this version");
    };
    if !dir.is_dir() {
        bail!("--cluster-state {}: not a directory", dir.display());
    }
    let settings = Settings {
        log_new_flows: opts.log_new_flows,
        drop_event_interval: opts.drop_event_interval,
        event_buffer_bytes: opts.event_buffer_bytes,
    };
    let mut dp = Datapath::open(&opts.bpffs, &settings)?;
    let ring = dp.take_events()?;
    let hub = Hub::new(10_000);
    let metrics = Arc::new(Metrics::new());
    let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
    tokio::spawn(events::run(ring, view_rx, hub.clone(), metrics.clone(), Some(opts.log_format)));

    let shared = Arc::new(Shared {
        status: Default::default(),
        hub,
        metrics: metrics.clone(),
        applied: Default::default(),
        pinned: Pinned::open(&opts.bpffs)?,
        files: Some((dir.clone(), Default::default())),
    });
    {
        // Kernel counters feed the metrics once a second.
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                shared.metrics.kernel(&shared.pinned.counters());
            }
        });
    }
    if let Some(addr) = opts.metrics_addr {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, metrics).await {
                tracing::error!("metrics endpoint: {e:#}");
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

    // Anything that may change what to enforce wakes the loop.
    let (wake, mut woken) = mpsc::unbounded_channel::<()>();
    let mut watcher = {
        let wake = wake.clone();
        notify::recommended_watcher(move |_| {
            let _ = wake.send(());
        })
        .context("watching the cluster state directory")?
    };
    watcher.watch(&dir, notify::RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
    {
        let wake = wake.clone();
        tokio::spawn(async move {
            if let Err(e) = netlink::watch(move || {
                let _ = wake.send(());
            })
            .await
            {
                tracing::error!("netlink events: {e:#}");
            }
        });
    }
    let handle = netlink::connect()?;
    let mut source = FileSource::new(&dir);
    let mut reported: Vec<InputError> = Vec::new();
    let mut gc_done = false;
    tracing::info!(
        node = %opts.node_name, source = %dir.display(), bpffs = %opts.bpffs.display(), socket = %opts.socket.display(),
        "palisade agent started"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let started = Instant::now();
        let snap = source.load();
        let fingerprint = source.loaded_fingerprint();
        let ifaces = match netlink::snapshot(&handle).await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("reading interfaces: {e:#}");
                Default::default()
            }
        };
        let node = Node {
            name: opts.node_name.clone(),
            host_ips: ifaces.host_ips.clone(),
            allow_host: opts.allow_host,
            audit: opts.audit,
        };
        let compiled = policy::compile(&snap.input, &node);
        let report = dp.sync(&compiled, &ifaces);
        if !gc_done && report.errors.is_empty() {
            dp.collect_garbage();
            gc_done = true;
        }
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
        {
            let mut st = shared.status.write().expect("status lock");
            let changed = report.changes > 0 || st.applied_at.is_none();
            *st = Status {
                in_sync: report.errors.is_empty(),
                applied_at: if changed {
                    Some(events::record::rfc3339(SystemTime::now()))
                } else {
                    st.applied_at.clone()
                },
                revision: report.revision,
                node: opts.node_name.clone(),
                source: format!("files:{}", dir.display()),
                audit: opts.audit,
                pods: report.endpoints.clone(),
                errors: snap.errors.clone(),
                sync_errors: report.errors.clone(),
                warnings: compiled.warnings.clone(),
                counters: Default::default(),
                maps: fill,
            };
        }
        if let Ok(mut a) = shared.applied.write() {
            let endpoints = report.endpoints.clone();
            *a = Some(Arc::new(Applied { input: snap.input.clone(), node: node.clone(), endpoints }));
        }
        if let Some((_, applied)) = &shared.files {
            applied.store(fingerprint, Ordering::SeqCst);
        }
        metrics.ready.store(report.errors.is_empty(), Ordering::SeqCst);
        if report.changes > 0 {
            tracing::info!(
                revision = report.revision,
                changes = report.changes,
                pods = report.endpoints.len(),
                millis = started.elapsed().as_millis() as u64,
                "policy in force"
            );
        }

        tokio::select! {
            _ = woken.recv() => {
                // Let a burst of changes settle, then take them all at once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while woken.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(opts.resync) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("palisade agent stopping; enforcement stays in place (pinned under {})", opts.bpffs.display());
    let _ = std::fs::remove_file(&opts.socket);
    drop(watcher);
    Ok(())
}
