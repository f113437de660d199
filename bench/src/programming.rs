//! Section 3: policy programming latency and footprint. Every latency runs
//! from the change written to the source (the manifest file renamed into
//! place, or the agent process spawned) to the first probe packet that
//! shows the new verdict in the kernel.

use crate::agent::Agent;
use crate::cluster::{self, Cluster};
use crate::env::{Node, Pod};
use crate::probe::Stream;
use crate::stats::Sample;
use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub struct Config {
    pub points: Vec<(usize, usize)>,
    pub reps: usize,
}

const PORT_ADD: u16 = 7010;
const PORT_LABEL: u16 = 7011;
const PORT_RESTART: u16 = 7012;
const PORT_COLD: u16 = 7013;
const PORT_BURST: u16 = 7014;
const PORT_POD: u16 = 7015;
const PORT_NS: u16 = 7016;
/// The web tier's own rule (never probed): the client's class has a policy
/// the bench's pod of a new class lacks, so neither class is the other.
const PORT_WEB: u16 = 7017;
/// The server admits the pod added in `ns-10` on this port.
const PORT_FAR: u16 = 7018;
/// Policies in a burst, one file each, written at once.
pub const BURST: usize = 1000;
/// The added pod's addresses (next to the client's and the server's).
const ADDED_IPS: (std::net::Ipv4Addr, std::net::Ipv6Addr) =
    (std::net::Ipv4Addr::new(10, 200, 0, 4), std::net::Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 4));
const INTERVAL: Duration = Duration::from_micros(500);
const QUIET: Duration = Duration::from_millis(400);
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Serialize)]
pub struct PointResult {
    pub pods: usize,
    pub policies: usize,
    /// ms, per repetition.
    pub policy_added_ms: Sample,
    pub policy_removed_ms: Sample,
    pub label_added_ms: Sample,
    pub label_removed_ms: Sample,
    /// A local pod added to the manifests (its interface and route already
    /// there, as a CNI leaves them before the pod's address reaches the
    /// API), then deleted: its peer admits it, then no longer. The packet
    /// proves the peer's side (the pod's address and identity in force);
    /// the pod's own hooks need not be on for it, so the pass time (the
    /// breakdown) is where attaching shows. Its labels are new (a new
    /// identity), its policies the client's (the client's policy class).
    pub pod_added_ms: Sample,
    pub pod_deleted_ms: Sample,
    /// The same with labels that put it under a set of policies no local
    /// pod has (a new policy class: the entries of its own policies, the
    /// client's and the label gate's, written for it; the namespace-wide
    /// ones are its namespace's root's, there already), then deleted.
    pub pod_new_class_added_ms: Sample,
    pub pod_new_class_deleted_ms: Sample,
    /// The same in `ns-10`, where no local pod is (the first of its
    /// namespace: the root of the namespace comes with it, every entry of
    /// its namespace-wide policies written), then deleted: the worst case
    /// of a pod added.
    pub pod_first_of_namespace_added_ms: Sample,
    pub pod_first_of_namespace_deleted_ms: Sample,
    /// The same pod as Kubernetes shows it: scheduled to the node first,
    /// without an address (the agent writes its namespace's root then),
    /// then addressed, as the kubelet reports once the pod's network is
    /// up: from the address written.
    pub pod_first_of_namespace_scheduled_ms: Sample,
    /// And deleted as Kubernetes shows it: its phase terminal first
    /// (Succeeded, its addresses still reported), as the kubelet reports
    /// before the object goes: from the phase written. The root goes with
    /// the object, after.
    pub pod_first_of_namespace_terminated_ms: Sample,
    /// The local pods' namespace labelled, then unlabelled: a policy
    /// admits peers from namespaces with that label.
    pub namespace_label_added_ms: Sample,
    pub namespace_label_removed_ms: Sample,
    /// [`BURST`] policies written at once (one file each): from the first
    /// write to the last one in force, then all removed.
    pub burst_added_ms: Sample,
    pub burst_removed_ms: Sample,
    /// How long writing the burst's files took (the bench's own share of
    /// `burst_added_ms`).
    pub burst_written_ms: Sample,
    /// Agent restarted with a change made while it was down: spawn to the
    /// change in force.
    pub restart_ms: Sample,
    /// Nothing pinned: spawn to the first probe dropped.
    pub cold_ms: Sample,
    /// Nothing pinned: spawn to `status --wait` returning.
    pub cold_status_ms: Sample,
    /// In-process, same manifests: the file source's first full load, its
    /// reload after one added file, and one full compile (ms).
    pub source_load_ms: f64,
    pub source_reload_ms: f64,
    /// The Kubernetes source on the same objects through the API: its
    /// first load, and the load after one pod relabelled (ms).
    pub kube_load_ms: f64,
    pub kube_change_ms: f64,
    pub compile_ms: f64,
    /// Where each single change's time went, in the agent (medians, ms).
    pub changes: Vec<ChangeBreakdown>,
    /// Resident after the cold start.
    pub rss_bytes: u64,
    /// Resident peak over the cold start and the single changes.
    pub rss_peak_bytes: u64,
    pub map_bytes: u64,
    /// Map name -> (entries, capacity).
    pub fill: Value,
}

impl PointResult {
    /// The 50k pods x 50k policies point, which has a target of its own:
    /// the headline and the older targets are about the clusters below it.
    pub fn at_scale(&self) -> bool {
        self.pods >= 50_000 && self.policies >= 50_000
    }

    /// Every single change measured, named as the report names them.
    pub fn single_changes(&self) -> [(&'static str, &Sample); 14] {
        [
            ("policy added", &self.policy_added_ms),
            ("policy removed", &self.policy_removed_ms),
            ("label added", &self.label_added_ms),
            ("label removed", &self.label_removed_ms),
            ("pod added", &self.pod_added_ms),
            ("pod deleted", &self.pod_deleted_ms),
            ("pod of a new class added", &self.pod_new_class_added_ms),
            ("pod of a new class deleted", &self.pod_new_class_deleted_ms),
            ("first pod of its namespace added", &self.pod_first_of_namespace_added_ms),
            ("first pod of its namespace deleted", &self.pod_first_of_namespace_deleted_ms),
            ("first pod of its namespace addressed, scheduled first", &self.pod_first_of_namespace_scheduled_ms),
            ("first pod of its namespace terminal, deleted after", &self.pod_first_of_namespace_terminated_ms),
            ("namespace label added", &self.namespace_label_added_ms),
            ("namespace label removed", &self.namespace_label_removed_ms),
        ]
    }
}

/// One kind of change: the agent's pass as it logs it (reading the source,
/// compiling, writing the maps), and the first packet with the new verdict,
/// all from the change written (ms, medians over the repetitions).
#[derive(Clone, Debug, Serialize)]
pub struct ChangeBreakdown {
    pub change: String,
    pub source_ms: f64,
    pub compile_ms: f64,
    pub maps_ms: f64,
    pub pass_ms: f64,
    pub first_packet_ms: f64,
    /// Passes that changed the kernel, from the change written to the
    /// agent in sync.
    pub passes: f64,
}

/// How many passes that changed the kernel the agent has logged.
fn passes_logged(agent: &Agent) -> usize {
    let log = std::fs::read_to_string(&agent.stderr).unwrap_or_default();
    log.lines().filter(|l| l.contains("policy in force")).count()
}

/// Pass times (load, compile, sync, total; µs) of the agent's last
/// "policy in force" log line.
fn last_pass(agent: &Agent) -> Option<[f64; 4]> {
    let log = std::fs::read_to_string(&agent.stderr).ok()?;
    let line = log.lines().rev().find(|l| l.contains("policy in force"))?;
    // Field names may be wrapped in ANSI styles: keep the text alone.
    let mut line = line.to_string();
    while let Some(at) = line.find('\x1b') {
        let end = line[at..].find('m').map_or(line.len(), |e| at + e + 1);
        line.replace_range(at..end, "");
    }
    let field = |name: &str| -> Option<f64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some([field("load_us")?, field("compile_us")?, field("sync_us")?, field("total_us")?])
}

/// Collects one change's breakdown per repetition (and the passes the
/// agent logged since [`Passes::start`]).
#[derive(Default)]
struct Passes(Vec<[f64; 4]>, Vec<f64>, Vec<f64>, usize);

impl Passes {
    /// Before the change is written.
    fn start(&mut self, agent: &Agent) {
        self.3 = passes_logged(agent);
    }

    /// Once the agent is in sync.
    fn note(&mut self, agent: &Agent, first_packet_ms: f64) {
        if let Some(p) = last_pass(agent) {
            self.0.push(p);
            self.1.push(first_packet_ms);
            self.2.push(passes_logged(agent).saturating_sub(self.3) as f64);
        }
    }

    fn breakdown(&self, change: &str) -> ChangeBreakdown {
        let med = |f: &dyn Fn(&[f64; 4]) -> f64| Sample::of(&self.0.iter().map(f).collect::<Vec<_>>()).median / 1e3;
        ChangeBreakdown {
            change: change.to_string(),
            source_ms: med(&|p| p[0]),
            compile_ms: med(&|p| p[1]),
            maps_ms: med(&|p| p[2]),
            pass_ms: med(&|p| p[3]),
            first_packet_ms: Sample::of(&self.1).median,
            passes: Sample::of(&self.2).median,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub probe_interval_us: u64,
    pub points: Vec<PointResult>,
    /// Points that could not be measured, with why: the others still count.
    pub failed: Vec<String>,
}

fn gate_policies() -> Vec<Value> {
    let udp = |p: u16| json!([{"protocol": "UDP", "port": p}]);
    let server = json!({"matchLabels": {"app": "server"}});
    let egress_to_server = |name: &str, port: u16| {
        cluster::policy(
            "ns-0",
            name,
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": server}], "ports": udp(port)}]}),
        )
    };
    vec![
        cluster::policy(
            "ns-0",
            "web-gate-out",
            json!({"podSelector": {"matchLabels": {"tier": "web"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": server}], "ports": udp(PORT_WEB)}]}),
        ),
        cluster::policy(
            "ns-0",
            "pod-gate-in",
            json!({"podSelector": server, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": udp(PORT_POD)}]}),
        ),
        egress_to_server("pod-gate-out", PORT_POD),
        cluster::policy(
            "ns-0",
            "ns-gate-in",
            json!({"podSelector": server, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"probe-ns": "yes"}}}], "ports": udp(PORT_NS)}]}),
        ),
        egress_to_server("ns-gate-out", PORT_NS),
        cluster::policy(
            "ns-0",
            "label-gate-in",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"probe": "yes"}}}], "ports": udp(PORT_LABEL)}]}),
        ),
        cluster::policy(
            "ns-0",
            "far-gate-in",
            json!({"podSelector": server, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "team-0"}},
                                          "podSelector": {"matchLabels": {"far": "yes"}}}], "ports": udp(PORT_FAR)}]}),
        ),
        cluster::policy(
            "ns-0",
            "label-gate-out",
            json!({"podSelector": {"matchLabels": {"probe": "yes"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": udp(PORT_LABEL)}]}),
        ),
    ]
}

/// One policy that lets client reach server on `port` (UDP), both ends.
fn allow_policy(name: &str, port: u16) -> Value {
    let udp = json!([{"protocol": "UDP", "port": port}]);
    cluster::policy(
        "ns-0",
        name,
        json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["client", "server"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": udp}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": udp}]
        }),
    )
}

/// Where an agent's time goes for one change, measured in-process on the
/// same manifests: (full load, reload of one new file named as the
/// watcher names it, compile), ms.
fn breakdown(dir: &std::path::Path) -> Result<(f64, f64, f64)> {
    let scratch = dir.with_extension("breakdown");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        std::fs::copy(e.path(), scratch.join(e.file_name()))?;
    }
    let mut src = palisade::cluster::files::FileSource::new(&scratch);
    let t = Instant::now();
    let _ = src.load();
    let load = t.elapsed().as_secs_f64() * 1e3;
    let changed = scratch.join("zz-change.json");
    std::fs::write(&changed, serde_json::to_vec(&allow_policy("zz-change", PORT_ADD))?)?;
    let t = Instant::now();
    let snap = src.reload(&[changed]);
    let reload = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let _ = palisade::policy::compile(&snap.input, &cluster::policy_node());
    let compile = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((load, reload, compile))
}

/// The Kubernetes source on the same manifests, in-process against the
/// in-process API server (tests/src/fake_api.rs): its first load (once
/// every watch has listed), and the load that brings one pod relabelled
/// (the client gains `probe=yes`), ms. What a cluster's agent reads each
/// pass, where the file source's figures are the bench agent's.
fn kube_breakdown(dir: &std::path::Path) -> Result<(f64, f64)> {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use palisade::cluster::kube::KubeSource;
    let api = palisade_e2e::fake_api::FakeApi::start()?;
    let mut files: Vec<_> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let doc: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        for obj in doc["items"].as_array().cloned().unwrap_or_default() {
            match obj["kind"].as_str().unwrap_or_default() {
                "Namespace" => drop(api.apply(&serde_json::from_value::<Namespace>(obj)?)),
                "Pod" => drop(api.apply(&serde_json::from_value::<Pod>(obj)?)),
                "NetworkPolicy" => drop(api.apply(&serde_json::from_value::<NetworkPolicy>(obj)?)),
                "ClusterNetworkPolicy" => drop(api.apply_cluster_network_policy(obj)),
                other => bail!("{}: {other} is not benchmarked through the API", path.display()),
            }
        }
    }
    // SAFETY: the bench runs one thing at a time; no other thread reads
    // the environment now, and the variable goes before anything else runs.
    unsafe { std::env::set_var("KUBECONFIG", api.kubeconfig_path()) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = rt.block_on(KubeSource::start(std::sync::Arc::new(|| {}), false));
    unsafe { std::env::remove_var("KUBECONFIG") };
    let _guard = rt.enter();
    let mut source = started?;
    let t = Instant::now();
    let _ = source.load();
    let first = t.elapsed().as_secs_f64() * 1e3;
    for pod in cluster::local_pods(true) {
        api.apply(&serde_json::from_value::<Pod>(pod)?);
    }
    let client = ("ns-0".to_string(), "client".to_string());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let t = Instant::now();
        let snap = source.load();
        let took = t.elapsed().as_secs_f64() * 1e3;
        if snap.input.pods.get(&client).is_some_and(|p| p.labels.get("probe").is_some_and(|v| v == "yes")) {
            return Ok((first, took));
        }
        if Instant::now() > deadline {
            bail!("the relabelled client never reached the Kubernetes source");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN)
}

pub fn run(cfg: &Config) -> Result<Results> {
    let node = Node::create("p")?;
    let (c4, c6) = cluster::client_ips();
    let (s4, s6) = cluster::server_ips();
    let client = Pod::create(&node, "pcli", c4, c6)?;
    let server = Pod::create(&node, "psrv", s4, s6)?;
    let newcomer = Pod::create(&node, "padd", ADDED_IPS.0, ADDED_IPS.1)?;
    let mut out = Results { probe_interval_us: INTERVAL.as_micros() as u64, points: Vec::new(), failed: Vec::new() };
    for &(pods, policies) in &cfg.points {
        eprintln!("  programming: {pods} pods, {policies} policies");
        match point(cfg, &node, &client, &server, &newcomer, pods, policies) {
            Ok(r) => out.points.push(r),
            Err(e) => {
                let e = format!("{pods} pods, {policies} policies: {e:#}");
                eprintln!("  programming: not measured: {e}");
                out.failed.push(e);
            }
        }
    }
    if out.points.is_empty() {
        bail!("no point measured: {}", out.failed.join("; "));
    }
    Ok(out)
}

/// Which class the pod the pod-added measurements add falls in.
#[derive(Clone, Copy)]
enum Added {
    /// The client's policies: the client's class.
    ClientsClass,
    /// The label gate's but not the web tier's: a class of its own,
    /// whose parent is its namespace's root.
    NewClass,
    /// In `ns-10`, which has namespace-wide policies and no local pod:
    /// its namespace's root comes with it.
    FirstOfNamespace,
}

impl Added {
    /// The port its probes go to the server on (admitting it as a peer).
    fn port(self) -> u16 {
        if matches!(self, Added::FirstOfNamespace) { PORT_FAR } else { PORT_POD }
    }
}

/// The pod the pod-added measurements add (its interface is there from the
/// start, unknown to the agent until its manifest is written): labels no
/// other pod has, in the class `added` says.
fn added_pod(ips: (std::net::Ipv4Addr, std::net::Ipv6Addr), added: Added) -> Value {
    let (ns, labels) = match added {
        Added::ClientsClass => ("ns-0", json!({"app": "client", "tier": "web", "added": "yes"})),
        Added::NewClass => ("ns-0", json!({"app": "client", "added": "yes", "probe": "yes"})),
        Added::FirstOfNamespace => ("ns-10", json!({"app": "client", "added": "yes", "far": "yes"})),
    };
    palisade_kit::manifest::pod(ns, "added", labels, cluster::NODE, ips, &[])
}

/// The same pod scheduled to the node, its address not reported yet.
fn scheduled_pod(added: Added) -> Value {
    let mut pod = added_pod(ADDED_IPS, added);
    pod["status"] = json!({"phase": "Pending"});
    pod
}

/// The same pod done: its phase terminal, its addresses still reported.
fn terminated_pod(added: Added) -> Value {
    let mut pod = added_pod(ADDED_IPS, added);
    pod["status"]["phase"] = json!("Succeeded");
    pod
}

/// The namespaces, `ns-0` labelled for the namespace gate or not.
fn namespaces(cluster: &Cluster, labelled: bool) -> Value {
    let mut all = cluster.namespaces.clone();
    if labelled {
        all[0]["metadata"]["labels"]["probe-ns"] = json!("yes");
    }
    cluster::list(&all)
}

/// One change made and undone `reps` times under one probe stream
/// (`from` to `to` on `port`): each time, `apply` (returning the instant
/// it was written) until the first probe passes, then the agent in sync;
/// `undo` until the first probe is denied, then in sync. The latencies
/// (ms) and pass breakdowns of both.
fn toggle(
    agent: &Agent,
    reps: usize,
    probe: (&Pod, &Pod, u16),
    apply: impl Fn() -> Result<Instant>,
    undo: impl Fn() -> Result<Instant>,
) -> Result<(Vec<f64>, Vec<f64>, Passes, Passes)> {
    toggle_prepared(agent, reps, probe, || Ok(()), apply, undo)
}

/// [`toggle`], with `prepare` written and in force (the agent in sync)
/// before each `apply`, untimed.
fn toggle_prepared(
    agent: &Agent,
    reps: usize,
    (from, to, port): (&Pod, &Pod, u16),
    prepare: impl Fn() -> Result<()>,
    apply: impl Fn() -> Result<Instant>,
    undo: impl Fn() -> Result<Instant>,
) -> Result<(Vec<f64>, Vec<f64>, Passes, Passes)> {
    let (mut on, mut off, mut p_on, mut p_off) = (Vec::new(), Vec::new(), Passes::default(), Passes::default());
    let stream = Stream::start(from, to, port, INTERVAL)?;
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..reps {
        prepare()?;
        agent.wait_in_sync(TIMEOUT)?;
        p_on.start(agent);
        let t0 = apply()?;
        let allowed = ms(stream.wait_allowed(t0, TIMEOUT));
        on.push(allowed);
        agent.wait_in_sync(TIMEOUT)?;
        p_on.note(agent, allowed);
        p_off.start(agent);
        let t0 = undo()?;
        let denied = ms(stream.wait_denied(t0, QUIET, TIMEOUT));
        off.push(denied);
        agent.wait_in_sync(TIMEOUT)?;
        p_off.note(agent, denied);
    }
    Ok((on, off, p_on, p_off))
}

#[allow(clippy::too_many_arguments)]
fn point(
    cfg: &Config,
    node: &Node,
    client: &Pod,
    server: &Pod,
    newcomer: &Pod,
    pods: usize,
    policies: usize,
) -> Result<PointResult> {
    let cluster = Cluster::new(pods, policies);
    let mut agent = Agent::new(node, "prog")?;
    cluster.write(&agent.state_dir)?;
    std::fs::write(agent.state_dir.join("label-gate.json"), serde_json::to_vec(&cluster::list(&gate_policies()))?)?;
    let (source_load_ms, source_reload_ms, compile_ms) = breakdown(&agent.state_dir)?;
    let (kube_load_ms, kube_change_ms) = kube_breakdown(&agent.state_dir)?;

    // Cold start, nothing pinned: traffic flows until the agent enforces.
    let (mut cold, mut cold_status) = (Vec::new(), Vec::new());
    let mut footprint = None;
    for _ in 0..cfg.reps {
        agent.uninstall();
        let stream = Stream::start(client, server, PORT_COLD, INTERVAL)?;
        if stream.wait_allowed(Instant::now(), Duration::from_secs(5)).is_none() {
            bail!("probes do not get through without enforcement");
        }
        let t0 = agent.start(&[])?;
        agent.wait_in_sync(TIMEOUT)?;
        cold_status.push(t0.elapsed().as_secs_f64() * 1e3);
        cold.push(ms(stream.wait_denied(t0, QUIET, TIMEOUT)));
        drop(stream);
        if footprint.is_none() {
            let st = agent.status()?;
            footprint = Some((agent.rss().unwrap_or(0), agent.map_memory().unwrap_or(0), st["maps"].clone()));
        }
    }

    // One policy added, then removed.
    let (added, removed, p_added, p_removed) = toggle(
        &agent,
        cfg.reps,
        (client, server, PORT_ADD),
        || agent.apply("zz-change.json", &allow_policy("zz-change", PORT_ADD)),
        || agent.remove("zz-change.json"),
    )?;

    // A pod's labels changed (the client gains, then loses, probe=yes).
    let (lab, unlab, p_lab, p_unlab) = toggle(
        &agent,
        cfg.reps,
        (client, server, PORT_LABEL),
        || agent.apply("local-pods.json", &cluster::list(&cluster::local_pods(true))),
        || agent.apply("local-pods.json", &cluster::list(&cluster::local_pods(false))),
    )?;

    // A pod added (its interface and route were there, unknown, as a CNI
    // leaves them before the pod's address reaches the API), then deleted:
    // in the client's class, in a new class, the first of its namespace.
    let pod_toggle = |added: Added| {
        toggle(
            &agent,
            cfg.reps,
            (newcomer, server, added.port()),
            || agent.apply("zz-added-pod.json", &added_pod(ADDED_IPS, added)),
            || agent.remove("zz-added-pod.json"),
        )
    };
    let (pod_in, pod_out, p_pod_in, p_pod_out) = pod_toggle(Added::ClientsClass)?;
    let (class_in, class_out, p_class_in, p_class_out) = pod_toggle(Added::NewClass)?;
    let (first_in, first_out, p_first_in, p_first_out) = pod_toggle(Added::FirstOfNamespace)?;
    // The same pod scheduled first: its address is the change; then its
    // terminal phase, before the object goes.
    let (scheduled_in, terminated_out, p_scheduled_in, p_terminated_out) = toggle_prepared(
        &agent,
        cfg.reps,
        (newcomer, server, Added::FirstOfNamespace.port()),
        || {
            // Its pass, where the namespace has a root to write (below 1k
            // policies it has none, and the pass writes nothing).
            let passes = passes_logged(&agent);
            agent.apply("zz-added-pod.json", &scheduled_pod(Added::FirstOfNamespace))?;
            let t0 = Instant::now();
            while passes_logged(&agent) == passes && t0.elapsed() < QUIET {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        },
        || agent.apply("zz-added-pod.json", &added_pod(ADDED_IPS, Added::FirstOfNamespace)),
        || agent.apply("zz-added-pod.json", &terminated_pod(Added::FirstOfNamespace)),
    )?;
    agent.remove("zz-added-pod.json")?;
    agent.wait_in_sync(TIMEOUT)?;

    // The local pods' namespace gains, then loses, probe-ns=yes.
    let (ns_in, ns_out, p_ns_in, p_ns_out) = toggle(
        &agent,
        cfg.reps,
        (client, server, PORT_NS),
        || agent.apply("namespaces.json", &namespaces(&cluster, true)),
        || agent.apply("namespaces.json", &namespaces(&cluster, false)),
    )?;
    // The peak while serving this cluster: cold start and the single
    // changes (a change can take more than the cold start did; the burst
    // below is a bigger cluster for a moment, so it is not counted).
    let hwm = agent.hwm().unwrap_or(0);

    // A burst: every policy selects the local pods (each one adds their
    // entries); the last written lets the probe through, and the agent
    // reads notified files in the order written, so when it is in force
    // all are.
    let (mut burst_in, mut burst_out, mut burst_written) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p_burst_in, mut p_burst_out) = (Passes::default(), Passes::default());
    {
        let stream = Stream::start(client, server, PORT_BURST, INTERVAL)?;
        std::thread::sleep(Duration::from_millis(50));
        let file = |i: usize| format!("zz-burst-{i:04}.json");
        for _ in 0..cfg.reps {
            p_burst_in.start(&agent);
            let t0 = Instant::now();
            for i in 0..BURST {
                let port = if i + 1 == BURST { PORT_BURST } else { 20_000 + i as u16 };
                agent.apply(&file(i), &allow_policy(&format!("zz-burst-{i:04}"), port))?;
            }
            burst_written.push(ms(Some(t0.elapsed())));
            burst_in.push(ms(stream.wait_allowed(t0, TIMEOUT)));
            agent.wait_in_sync(TIMEOUT)?;
            p_burst_in.note(&agent, burst_in[burst_in.len() - 1]);
            p_burst_out.start(&agent);
            let t0 = Instant::now();
            for i in 0..BURST {
                agent.remove(&file(i))?;
            }
            burst_out.push(ms(stream.wait_denied(t0, QUIET, TIMEOUT)));
            agent.wait_in_sync(TIMEOUT)?;
            p_burst_out.note(&agent, burst_out[burst_out.len() - 1]);
        }
    }

    // Restart: the agent stops (enforcement stays pinned), a policy changes
    // while it is down, a new agent starts and resyncs everything.
    let mut restart = Vec::new();
    {
        let stream = Stream::start(client, server, PORT_RESTART, INTERVAL)?;
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..cfg.reps {
            agent.stop();
            agent.apply("zz-restart.json", &allow_policy("zz-restart", PORT_RESTART))?;
            let t0 = agent.start(&[])?;
            restart.push(ms(stream.wait_allowed(t0, TIMEOUT)));
            agent.wait_in_sync(TIMEOUT)?;
            agent.remove("zz-restart.json")?;
            agent.wait_in_sync(TIMEOUT)?;
            if stream.wait_denied(Instant::now(), QUIET, TIMEOUT).is_none() {
                bail!("restart probe not denied again");
            }
        }
    }
    agent.uninstall();
    let (rss, map_bytes, fill) = footprint.unwrap_or((0, 0, Value::Null));
    Ok(PointResult {
        pods,
        policies,
        policy_added_ms: Sample::of(&added),
        policy_removed_ms: Sample::of(&removed),
        label_added_ms: Sample::of(&lab),
        label_removed_ms: Sample::of(&unlab),
        pod_added_ms: Sample::of(&pod_in),
        pod_deleted_ms: Sample::of(&pod_out),
        pod_new_class_added_ms: Sample::of(&class_in),
        pod_new_class_deleted_ms: Sample::of(&class_out),
        pod_first_of_namespace_added_ms: Sample::of(&first_in),
        pod_first_of_namespace_deleted_ms: Sample::of(&first_out),
        pod_first_of_namespace_scheduled_ms: Sample::of(&scheduled_in),
        pod_first_of_namespace_terminated_ms: Sample::of(&terminated_out),
        namespace_label_added_ms: Sample::of(&ns_in),
        namespace_label_removed_ms: Sample::of(&ns_out),
        burst_added_ms: Sample::of(&burst_in),
        burst_removed_ms: Sample::of(&burst_out),
        burst_written_ms: Sample::of(&burst_written),
        restart_ms: Sample::of(&restart),
        cold_ms: Sample::of(&cold),
        cold_status_ms: Sample::of(&cold_status),
        source_load_ms,
        source_reload_ms,
        kube_load_ms,
        kube_change_ms,
        compile_ms,
        changes: vec![
            p_added.breakdown("policy added"),
            p_removed.breakdown("policy removed"),
            p_lab.breakdown("label added"),
            p_unlab.breakdown("label removed"),
            p_pod_in.breakdown("pod added"),
            p_pod_out.breakdown("pod deleted"),
            p_class_in.breakdown("pod of a new class added"),
            p_class_out.breakdown("pod of a new class deleted"),
            p_first_in.breakdown("first pod of its namespace added"),
            p_first_out.breakdown("first pod of its namespace deleted"),
            p_scheduled_in.breakdown("first pod of its namespace addressed, scheduled first"),
            p_terminated_out.breakdown("first pod of its namespace terminal, deleted after"),
            p_ns_in.breakdown("namespace label added"),
            p_ns_out.breakdown("namespace label removed"),
            p_burst_in.breakdown("1,000 policies added at once (last pass)"),
            p_burst_out.breakdown("1,000 policies removed at once (last pass)"),
        ],
        rss_bytes: rss,
        rss_peak_bytes: hwm,
        map_bytes,
        fill,
    })
}
