//! `palisade run`: the agent loop. Start the tasks (events, the local API,
//! metrics and health, netlink watch, kernel counters), then: load the
//! cluster state and the node's interfaces, compile, sync the kernel,
//! publish what is in force. Again whenever the input, the node's
//! interfaces or routes change, on a resync timer that heals anything
//! missed, and with backoff while something fails.

use crate::api;
use crate::cluster::{InputError, Source, Wake};
use crate::datapath::netlink::{self, Interfaces};
use crate::datapath::pinned::Pinned;
use crate::datapath::{Datapath, MapSizes, Settings, SyncReport};
use crate::events::{self, Hub, LogFormat, View};
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::policy::compile::{Changes, Compiler, Hints, hints_of};
use crate::policy::{self, Compiled, Input, Node};
use crate::state::{Applied, EndpointState, Enforcement, InputVersion, Shared, Status};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
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
    pub drop_event_budget: u32,
    pub event_buffer_bytes: u32,
    pub defer_mark: u32,
    /// See [`crate::datapath::Settings::judged_mark`].
    pub judged_mark: u32,
    pub host_interfaces: crate::datapath::HostInterfaces,
    pub strict_prefixes: Vec<String>,
    pub resync: Duration,
    /// Where /metrics, /healthz and /readyz are served (None: nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the browser view is served (None: nowhere); loopback unless
    /// `ui_allow_remote`.
    pub ui_addr: Option<SocketAddr>,
    pub ui_allow_remote: bool,
    /// Sizes of the maps the agent writes (smaller ones: tests).
    pub map_sizes: MapSizes,
    /// Test only: a file whose content fails interface discovery (see
    /// [`netlink::discover`]).
    pub interfaces_fault: Option<PathBuf>,
    /// Start even though kube-proxy runs in IPVS mode (see [`ipvs_mode`]).
    pub allow_ipvs: bool,
    /// How the source is read: saved copies, refused paths, namespace audit.
    pub source: crate::cluster::files::Options,
    /// The flow record's bounds; it is saved under `source.state_dir`
    /// this often (and at shutdown).
    pub flows: crate::flows::Settings,
    pub flows_save_every: Duration,
}

/// The host name, which is the node name unless told otherwise.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Why this node looks like kube-proxy's IPVS mode, if it does: its dummy
/// interface `kube-ipvs0`, or IPVS virtual services, in the agent's network
/// namespace (which is the node's). Read from /proc/net, which is per
/// namespace, unlike /sys/class/net.
pub fn ipvs_mode() -> Option<String> {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let ipvs = std::fs::read_to_string("/proc/net/ip_vs").unwrap_or_default();
    ipvs_evidence(&dev, &ipvs)
}

fn ipvs_evidence(proc_net_dev: &str, proc_net_ip_vs: &str) -> Option<String> {
    if proc_net_dev.lines().any(|l| l.trim_start().starts_with("kube-ipvs0:")) {
        return Some("interface kube-ipvs0 exists".into());
    }
    // Virtual services are the lines that start with a protocol.
    let services =
        proc_net_ip_vs.lines().filter(|l| ["TCP ", "UDP ", "SCTP ", "FWM "].iter().any(|p| l.starts_with(p))).count();
    (services > 0).then(|| format!("{services} IPVS virtual services"))
}

/// The first retry after a failed pass; doubled per failure up to
/// [`MAX_BACKOFF`] (or the resync period, if shorter).
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long a wake-up waits for more changes before the pass.
const SETTLE: Duration = Duration::from_millis(2);

pub async fn run(opts: Options) -> Result<()> {
    if !opts.allow_ipvs
        && let Some(why) = ipvs_mode()
    {
        anyhow::bail!(
            "kube-proxy runs in IPVS mode on this node ({why}), which palisade does not support: IPVS takes \
             Service traffic in through the node's local input, where no palisade hook sees it (a Service \
             address with no backend, or a host-network backend, would pass unjudged); run kube-proxy in \
             iptables or nftables mode, or pass --allow-ipvs to run anyway"
        );
    }
    let (mut agent, mut woken) = Agent::start(opts).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut forced = true;
    let mut backoff = MIN_BACKOFF;
    let mut resync = Resync::new(agent.opts.resync);
    loop {
        if forced {
            resync.done(Instant::now());
        }
        let until_resync = resync.left(Instant::now());
        let timeout = if agent.pass(forced).await {
            backoff = MIN_BACKOFF;
            until_resync
        } else {
            let t = backoff.min(until_resync);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            t
        };
        match wait(&mut woken, &mut terminate, timeout).await {
            Some(timer) => forced = timer || resync.due(Instant::now()),
            None => break,
        }
    }
    for e in agent.source.finish_saving() {
        tracing::warn!("invalid input: {e}");
    }
    crate::flows::save_if_changed(&agent.shared.flows, agent.opts.source.state_dir.as_deref());
    tracing::info!("palisade agent stopping; enforcement stays in place (pinned under {})", agent.opts.bpffs.display());
    let _ = std::fs::remove_file(&agent.opts.socket);
    Ok(())
}

/// The flow record saved under the state directory, or a new one.
fn open_flows(opts: &Options) -> crate::flows::Record {
    let now = crate::flows::now_ms();
    let saved = opts.source.state_dir.as_deref().map(crate::flows::load).transpose();
    match saved {
        Ok(Some(Some(snap))) => crate::flows::Record::restore(&opts.node_name, opts.flows, snap, now),
        Ok(_) => crate::flows::Record::new(&opts.node_name, opts.flows, now),
        Err(e) => {
            tracing::warn!("the saved flow record is not usable, starting a new one: {e:#}");
            crate::flows::Record::new(&opts.node_name, opts.flows, now)
        }
    }
}

/// Where one pass's time went.
struct Times {
    load: Duration,
    compile: Duration,
    sync: Duration,
    total: Duration,
}

/// What one pass read.
struct Loaded {
    input: Arc<Input>,
    errors: Vec<InputError>,
    version: u64,
    stale: Option<String>,
    /// What the source cannot read (a CRD not installed).
    unavailable: Vec<String>,
    /// The interfaces used: this pass's complete view, else the last one.
    ifaces: Option<Interfaces>,
    /// Why this pass has no complete view of its own.
    ifaces_error: Option<String>,
}

struct Agent {
    opts: Options,
    dp: Datapath,
    source: Source,
    shared: Arc<Shared>,
    readiness: Arc<Readiness>,
    view: watch::Sender<Arc<View>>,
    handle: rtnetlink::Handle,
    /// The last complete view of the node's interfaces.
    last_view: Option<Interfaces>,
    /// Interfaces enforced after the last sync, with their pod's addresses:
    /// a view that lacks them, or their routes, is incomplete.
    in_force: Vec<(u32, Vec<IpAddr>)>,
    /// What the last clean pass saw (input version, interfaces, staleness):
    /// when nothing of it changed, there is nothing to recompile.
    last_clean: Option<(u64, Interfaces, Option<String>)>,
    /// The compiler and its memory of the last state; None until a pass
    /// has a view of the interfaces (which seeds its numbering from what
    /// the kernel holds).
    compiler: Option<Compiler>,
    reported: Vec<InputError>,
    host_network_logged: BTreeSet<(String, String)>,
    gc_done: bool,
    /// The last time a full pass found the maps changed behind the
    /// agent's back (for status), if ever.
    drift: Option<String>,
}

impl Agent {
    /// Opens the datapath and starts every task; returns the agent and
    /// what wakes its loop.
    async fn start(opts: Options) -> Result<(Agent, mpsc::UnboundedReceiver<()>)> {
        let settings = Settings {
            log_new_flows: opts.log_new_flows,
            drop_event_interval: opts.drop_event_interval,
            drop_event_budget: opts.drop_event_budget,
            event_buffer_bytes: opts.event_buffer_bytes,
            defer_mark: opts.defer_mark,
            judged_mark: opts.judged_mark,
            host_interfaces: opts.host_interfaces.clone(),
            strict_prefixes: opts.strict_prefixes.clone(),
        };
        let mut dp = Datapath::open_sized(&opts.bpffs, &settings, opts.map_sizes)?;
        let ring = dp.take_events()?;
        let hub = Hub::new(10_000);
        let metrics = Arc::new(Metrics::new());
        let readiness = Arc::new(Readiness::default());
        let (view, view_rx) = watch::channel(Arc::new(View::default()));
        let flows = Arc::new(open_flows(&opts));
        tokio::spawn(crate::flows::run(
            hub.clone(),
            view_rx.clone(),
            flows.clone(),
            metrics.clone(),
            opts.source.state_dir.clone(),
            opts.flows_save_every,
        ));
        tokio::spawn(events::run(ring, view_rx, hub.clone(), metrics.clone(), Some(opts.log_format)));
        if let Some(addr) = opts.metrics_addr {
            let (metrics, readiness) = (metrics.clone(), readiness.clone());
            tokio::spawn(async move {
                if let Err(e) = health::serve(addr, metrics, readiness).await {
                    tracing::error!("metrics endpoint: {e:#}");
                }
            });
        }

        // Anything that may change what to enforce wakes the loop: the
        // source, and links, addresses and routes coming and going.
        let (wake_tx, woken) = mpsc::unbounded_channel::<()>();
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
        let source = Source::start(opts.cluster_state.clone(), opts.source.clone(), wake).await?;

        let shared = Arc::new(Shared {
            status: Default::default(),
            hub,
            metrics,
            applied: Default::default(),
            pinned: Pinned::open(&opts.bpffs)?,
            input: InputVersion { current: source.current_version(), applied: Default::default() },
            tracked_flows: Default::default(),
            flows,
        });
        {
            // Kernel counters feed the metrics once a second; the tracked
            // flows (a walk of the whole table) are counted every ten.
            let shared = shared.clone();
            let capacity = opts.map_sizes.conntrack;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                for n in 0u64.. {
                    tick.tick().await;
                    shared.metrics.kernel(&shared.pinned.counters());
                    if n % 10 == 0 {
                        let flows = shared.pinned.tracked_flows();
                        shared.tracked_flows.store(flows[0].max(flows[1]), Ordering::Relaxed);
                        shared.metrics.tracked_flows(flows, capacity);
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
        if let Some(addr) = opts.ui_addr {
            let (shared, allow_remote) = (shared.clone(), opts.ui_allow_remote);
            tokio::spawn(async move {
                if let Err(e) = crate::ui::serve(addr, shared, allow_remote).await {
                    tracing::error!("browser view: {e:#}");
                }
            });
        }
        let handle = netlink::connect()?;
        // What an earlier agent left in force counts from the first pass.
        let in_force = dp.enforced_interfaces().into_iter().map(|i| (i, Vec::new())).collect();
        tracing::info!(
            node = %opts.node_name, source = %source.describe(), bpffs = %opts.bpffs.display(),
            socket = %opts.socket.display(), "palisade agent started"
        );
        let agent = Agent {
            opts,
            dp,
            source,
            shared,
            readiness,
            view,
            handle,
            last_view: None,
            in_force,
            last_clean: None,
            compiler: None,
            reported: Vec::new(),
            host_network_logged: BTreeSet::new(),
            gc_done: false,
            drift: None,
        };
        Ok((agent, woken))
    }

    /// One pass: load, compile, sync, publish. `forced` (the resync timer,
    /// a retry) recompiles even when nothing seems to have changed. False
    /// when something failed and the pass should be retried.
    async fn pass(&mut self, forced: bool) -> bool {
        let started = Instant::now();
        let loaded = self.load(forced).await;
        let load_time = started.elapsed();
        // Links and routes churn (addresses settling, other interfaces):
        // when neither they nor the input changed and the kernel took the
        // last state whole, there is nothing to recompile.
        if !forced
            && let Some(ifaces) = loaded.ifaces.as_ref().filter(|_| loaded.ifaces_error.is_none())
            && self.last_clean.as_ref().is_some_and(|(v, i, s)| (*v, i, s) == (loaded.version, ifaces, &loaded.stale))
        {
            return true;
        }
        let node = Node {
            name: self.opts.node_name.clone(),
            host_ips: loaded.ifaces.as_ref().map(|i| i.host_ips.clone()).unwrap_or_default(),
            allow_host: self.opts.allow_host,
            audit: self.opts.audit,
        };
        // No complete view yet: touching the kernel could only take
        // enforcement away (pinned by an earlier agent) on the interfaces
        // the view lacks; the state is compiled for status alone.
        let Some(ifaces) = loaded.ifaces.clone() else {
            let compiled = policy::compile(&loaded.input, &node);
            let compile_time = started.elapsed() - load_time;
            let report = SyncReport { revision: self.dp.revision(), ..Default::default() };
            let times =
                Times { load: load_time, compile: compile_time, sync: Duration::ZERO, total: started.elapsed() };
            self.publish(&loaded, &node, &compiled, report, times);
            self.last_clean = None;
            return false;
        };
        // A forced pass after the first (the resync timer, a retry)
        // compares everything with what the maps hold, read back: what
        // was changed behind the agent's back is rewritten (the first
        // compares with what the maps held when the datapath opened).
        let reread = forced && self.compiler.is_some();
        let mut compiler =
            self.compiler.take().unwrap_or_else(|| Compiler::with_hints(self.pinned_hints(&loaded.input, &ifaces)));
        compiler.compile(&loaded.input, &node);
        let compile_time = started.elapsed() - load_time;
        let reread_error = if reread { self.reread().err() } else { None };
        let changed = Some(compiler.changes()).filter(|_| !forced);
        let mut report = self.sync(compiler.compiled(), &ifaces, changed);
        report.errors.extend(reread_error);
        let sync_time = started.elapsed() - load_time - compile_time;
        let clean = report.errors.is_empty() && loaded.ifaces_error.is_none();
        let times = Times { load: load_time, compile: compile_time, sync: sync_time, total: started.elapsed() };
        self.publish(&loaded, &node, compiler.compiled(), report, times);
        self.compiler = Some(compiler);
        self.save_source();
        self.last_clean = match (&loaded.ifaces, clean) {
            (Some(ifaces), true) => Some((loaded.version, ifaces.clone(), loaded.stale.clone())),
            _ => None,
        };
        clean
    }

    /// The cluster state and a complete view of the node's interfaces
    /// (else the last complete one, and why). `walk`: the source reads all
    /// of its state, not just what it was told changed.
    async fn load(&mut self, walk: bool) -> Loaded {
        let snap = self.source.load_walking(walk);
        let (version, stale) = (self.source.loaded_version(), self.source.stale());
        let (ifaces, ifaces_error) =
            match netlink::discover(&self.handle, &self.in_force, self.opts.interfaces_fault.as_deref()).await {
                Ok(view) => {
                    self.last_view = Some(view.clone());
                    (Some(view), None)
                }
                Err(e) => {
                    let e = format!("reading the node's interfaces: {e:#}; the last complete view stays in use");
                    tracing::error!("{e}");
                    self.shared.metrics.interface_error();
                    (self.last_view.clone(), Some(e))
                }
            };
        let unavailable = self.source.unavailable().into_iter().map(str::to_string).collect();
        Loaded { input: Arc::new(snap.input), errors: snap.errors, version, stale, unavailable, ifaces, ifaces_error }
    }

    /// Saves what the source read now that it is in force (off the way
    /// of the change and of the loop); what a save could not save is said
    /// in status once it has ended (at the next pass).
    fn save_source(&mut self) {
        let errors = self.source.save_pending();
        if errors.is_empty() {
            return;
        }
        for e in &errors {
            tracing::warn!("invalid input: {e}");
        }
        if let Ok(mut st) = self.shared.status.write() {
            st.errors.extend(errors.iter().cloned());
        }
        self.reported.extend(errors);
    }

    /// The policy classes the kernel holds for local pods (left by an
    /// earlier agent): the first compile keeps them, so a restart moves
    /// no endpoint entry and no policy entry that did not change.
    fn pinned_hints(&self, input: &Input, ifaces: &Interfaces) -> Hints {
        let held = self.dp.endpoint_classes();
        let mut hints = Hints::new();
        for pod in input.pods.values() {
            let class = pod.ips.iter().find_map(|ip| ifaces.routes.get(ip)).and_then(|i| held.get(i));
            if let Some(&class) = class.filter(|&&c| c != 0) {
                hints.classes.insert((pod.namespace.clone(), pod.name.clone()), class);
            }
        }
        hints
    }

    /// Reads the maps back for the next sync to compare with; says so
    /// (log, metric, status) when they held something else than this
    /// agent wrote.
    fn reread(&mut self) -> Result<(), String> {
        let drifted = self.dp.reread().map_err(|e| format!("reading the maps back: {e:#}"))?;
        if drifted > 0 {
            let note = format!(
                "{drifted} map entries differed from what this agent wrote (changed behind its back) at {}: \
                 rewritten",
                events::record::rfc3339(SystemTime::now())
            );
            tracing::warn!("{note}");
            self.shared.metrics.drifted(drifted);
            self.drift = Some(note);
        }
        Ok(())
    }

    fn sync(&mut self, compiled: &Compiled, ifaces: &Interfaces, changed: Option<&Changes>) -> SyncReport {
        let report = self.dp.sync_changes(compiled, ifaces, changed);
        if !self.gc_done && report.errors.is_empty() {
            self.dp.collect_garbage();
            self.gc_done = true;
        }
        for e in &report.errors {
            tracing::error!("sync: {e}");
        }
        // The last agent's interfaces count too until a sync takes them.
        let mut in_force: BTreeMap<u32, Vec<IpAddr>> =
            self.dp.enforced_interfaces().into_iter().map(|i| (i, Vec::new())).collect();
        for e in &report.endpoints {
            let held = matches!(e.state, Enforcement::Enforced | Enforcement::HeldClosed(_));
            if let Some(i) = e.ifindex.filter(|_| held) {
                in_force.insert(i, e.ips.clone());
            }
        }
        self.in_force = in_force.into_iter().collect();
        report
    }

    /// Makes what is in force visible: events enrichment, status, trace,
    /// metrics, readiness, the log.
    fn publish(&mut self, loaded: &Loaded, node: &Node, compiled: &Compiled, mut report: SyncReport, times: Times) {
        let input = &loaded.input;
        report.endpoints.extend(host_network_pods(input, node, &mut self.host_network_logged));
        if loaded.errors != self.reported {
            for e in loaded.errors.iter().filter(|e| !self.reported.contains(e)) {
                tracing::warn!("invalid input: {e}");
            }
            self.reported = loaded.errors.clone();
        }
        let synced = loaded.ifaces.is_some();
        if synced {
            let view = View {
                catalog: compiled.catalog.clone(),
                endpoints: report
                    .endpoints
                    .iter()
                    .filter_map(|e| e.ifindex.map(|i| (i, (e.namespace.clone(), e.name.clone()))))
                    .collect(),
            };
            let _ = self.view.send(Arc::new(view));
        }
        let fill = self.dp.fill();
        let metrics = &self.shared.metrics;
        metrics.sync(
            times.total.as_secs_f64(),
            report.errors.len(),
            loaded.errors.len(),
            report.revision,
            &fill,
            &report.endpoints,
        );
        metrics.unavailable(!loaded.unavailable.is_empty());
        let not_ready = loaded
            .ifaces_error
            .clone()
            .or_else(|| report.errors.first().map(|e| format!("the kernel does not hold the whole state: {e}")))
            .or_else(|| loaded.stale.as_ref().map(|s| format!("the cluster state is stale: {s}")));
        let in_sync = not_ready.is_none();
        {
            let mut st = self.shared.status.write().expect("status lock");
            let changed = report.changes > 0 || st.applied_at.is_none();
            let pods = if synced { report.endpoints.clone() } else { st.pods.clone() };
            *st = Status {
                in_sync,
                applied_at: if changed {
                    Some(events::record::rfc3339(SystemTime::now()))
                } else {
                    st.applied_at.clone()
                },
                revision: report.revision,
                node: self.opts.node_name.clone(),
                source: self.source.describe(),
                stale: loaded.stale.clone(),
                unavailable: loaded.unavailable.clone(),
                interfaces_error: loaded.ifaces_error.clone(),
                audit: self.opts.audit,
                pods,
                pending_interfaces: report.pending.clone(),
                errors: loaded.errors.clone(),
                sync_errors: report.errors.clone(),
                warnings: compiled.warnings.clone(),
                drift: self.drift.clone(),
                counters: Default::default(),
                maps: fill,
            };
        }
        if synced && let Ok(mut a) = self.shared.applied.write() {
            let endpoints = report.endpoints.clone();
            *a = Some(Arc::new(Applied {
                input: input.clone(),
                node: node.clone(),
                endpoints,
                hints: hints_of(compiled),
            }));
        }
        self.shared.input.applied.store(loaded.version, Ordering::SeqCst);
        self.readiness.set(not_ready);
        if report.changes > 0 {
            tracing::info!(
                revision = report.revision,
                changes = report.changes,
                pods = report.endpoints.len(),
                load_us = times.load.as_micros() as u64,
                compile_us = times.compile.as_micros() as u64,
                sync_us = times.sync.as_micros() as u64,
                links_us = report.links_us,
                attaches = report.attaches,
                total_us = times.total.as_micros() as u64,
                "policy in force"
            );
        }
    }
}

/// When the next forced pass is due: every `every` however often changes
/// wake the loop, since only a forced pass compares the whole kernel state
/// and walks the files source's directory (which heals a notification
/// lost or never sent).
struct Resync {
    every: Duration,
    at: Instant,
}

impl Resync {
    fn new(every: Duration) -> Resync {
        Resync { every, at: Instant::now() + every }
    }

    /// A forced pass starts at `now`.
    fn done(&mut self, now: Instant) {
        self.at = now + self.every;
    }

    fn left(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.at
    }
}

/// Waits for a wake-up or the timeout; Some(true) when the timeout fired
/// (a resync or a retry: recompile regardless), None when the agent is
/// told to stop.
async fn wait(
    woken: &mut mpsc::UnboundedReceiver<()>,
    terminate: &mut tokio::signal::unix::Signal,
    timeout: Duration,
) -> Option<bool> {
    tokio::select! {
        _ = woken.recv() => {
            // Let a burst of changes settle, then take them all at once
            // (changes arriving during a pass wait for the next one: a
            // pass that writes only what changed is short).
            tokio::time::sleep(SETTLE).await;
            while woken.try_recv().is_ok() {}
            Some(false)
        }
        _ = tokio::time::sleep(timeout) => Some(true),
        _ = tokio::signal::ctrl_c() => None,
        _ = terminate.recv() => None,
    }
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
            state: Enforcement::HostNetwork,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Resync, ipvs_evidence};
    use std::time::{Duration, Instant};

    #[test]
    fn wakes_more_often_than_the_resync_period_do_not_put_off_the_forced_pass() {
        let t0 = Instant::now();
        let mut resync = Resync::new(Duration::from_secs(30));
        resync.done(t0);
        // A wake every second: the loop's timeout shrinks to what is left,
        // and the first wake at or past 30 s is forced.
        let forced: Vec<u64> = (1..=65).filter(|s| resync.due(t0 + Duration::from_secs(*s))).collect();
        assert_eq!(forced.first(), Some(&30));
        assert_eq!(resync.left(t0 + Duration::from_secs(12)), Duration::from_secs(18));
        resync.done(t0 + Duration::from_secs(30));
        assert!(!resync.due(t0 + Duration::from_secs(59)) && resync.due(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn ipvs_is_recognised_by_its_interface_or_its_services() {
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 0 0\n  eth0: 1 2\n";
        assert_eq!(ipvs_evidence(dev, ""), None);
        let with_dummy = format!("{dev}kube-ipvs0: 0 0\n");
        assert_eq!(ipvs_evidence(&with_dummy, "").as_deref(), Some("interface kube-ipvs0 exists"));
        let empty = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n";
        assert_eq!(ipvs_evidence(dev, empty), None);
        let one = format!("{empty}TCP  0A60000A:0050 rr\n  -> 0AF40102:0050      Masq    1      0          0\n");
        assert_eq!(ipvs_evidence(dev, &one).as_deref(), Some("1 IPVS virtual services"));
    }
}
