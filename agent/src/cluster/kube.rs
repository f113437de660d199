//! The Kubernetes API source: one kube-rs watcher with a reflector per
//! kind. Every pod is watched (peers need every pod's addresses, labels and
//! named ports), trimmed to what policy needs before it is stored. Watchers
//! resync and reconnect with backoff; while the API server is away the
//! stores keep the last state, enforcement stays as it is, and the source
//! reports itself stale.
//!
//! ClusterNetworkPolicies come from a CRD that may not be installed: while
//! its list or watch answers 404 the source says so
//! ([`KubeSource::unavailable`]); the watcher retries (0.8 s doubling to
//! 30 s, plus up to as much again at random), and the CRD counts as
//! served again once its list or watch answers, so a CRD installed later
//! is picked up within a minute, and said to be only when it is watched.
//! A 404 never drops what the store holds: deleting a CRD deletes its
//! objects first (DELETED events empty the store), so a 404 with objects
//! still there is an API server that briefly does not serve the resource
//! (a restart, an upgrade), and their Admin Denies stay in force. Any
//! other failure of that watch is a failing watch like the others: the
//! state is stale and what is in force stays.

use super::Snapshot;
use super::convert::{AUDIT_ANNOTATION, Checked, Kind, ObjKey, Raw, cluster_policy};
use super::objects::{Patched, Validator};
use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service, ServiceSpec,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection health: watchers report errors (and events), a probe checks
/// that the API server answers, and the client's [`WatchTap`] sees each
/// watch request answered. The state is stale while the probe fails, while
/// a watcher that must relist (410 Gone, a failed list) has not, and while
/// a watcher that failed is not watching again: a resumed watch says
/// nothing until something changes, so its request answered OK after the
/// failure, with no failure for [`RESUMED_AFTER`], is the evidence (the
/// API server answering the probe is not: the
/// watcher may still be waiting out its backoff, and a change made then
/// would be missed by a status that said in sync).
#[derive(Default)]
struct Health {
    /// Kind -> last failure, cleared by the watcher's next good event.
    errors: Mutex<BTreeMap<&'static str, Failure>>,
    /// Resource (plural) -> when a watch request for it last answered OK.
    watching: Mutex<BTreeMap<String, Instant>>,
    /// The last probe: when it succeeded, or why it failed.
    probe: Mutex<Option<Result<(), String>>>,
}

#[derive(Clone)]
struct Failure {
    message: String,
    at: Instant,
    /// The watcher starts over with a list: the store misses whatever
    /// changed until the list is in.
    relist: bool,
}

impl Failure {
    fn new(e: &watcher::Error) -> Failure {
        let relist = match e {
            watcher::Error::WatchError(status) => status.code == 410,
            watcher::Error::InitialListFailed(_) => true,
            _ => false,
        };
        Failure { message: e.to_string(), at: Instant::now(), relist }
    }
}

/// A ClusterNetworkPolicy as the watch stores it: its spec is kept as
/// JSON and read by `convert` (which names a field at fault), so an object
/// palisade cannot read never fails the whole list.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct ClusterNetworkPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl kube::Resource for ClusterNetworkPolicyObject {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        cluster_policy::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "policy.networking.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha2".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "clusternetworkpolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What status says while the ClusterNetworkPolicy CRD is not served.
pub const CRD_NOT_INSTALLED: &str = "ClusterNetworkPolicy CRD not installed (clusternetworkpolicies.policy.networking.k8s.io, v1alpha2 not served): NetworkPolicies are enforced, and ClusterNetworkPolicies last seen (if any) stay in force; asking again at least every minute";

/// Whether a resource a CRD defines is served: None until its first list
/// answers, then whether the last list found it (404: not installed).
type Served = tokio::sync::watch::Sender<Option<bool>>;

/// A list or watch answered 404: the resource is not served.
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

impl Health {
    fn stale(&self) -> Option<String> {
        if let Some(Err(e)) = self.probe.lock().ok()?.clone() {
            return Some(format!("the API server does not answer: {e}"));
        }
        let watching = self.watching.lock().ok()?;
        let errors = self.errors.lock().ok()?;
        let failing: Vec<String> = errors
            .iter()
            .filter(|(kind, f)| {
                f.relist || watching.get(**kind).is_none_or(|ok| *ok <= f.at || ok.elapsed() < RESUMED_AFTER)
            })
            .map(|(kind, f)| format!("{kind}: {}", f.message))
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }

    /// A watch request for `resource` answered OK, now (returned).
    fn watch_answered(&self, resource: &str) -> Instant {
        let now = Instant::now();
        if let Ok(mut w) = self.watching.lock() {
            w.insert(resource.to_string(), now);
        }
        now
    }
}

/// How long a watch answered OK must go without a new failure to count as
/// resumed: an API server whose cache no longer holds the version asked
/// for answers OK and then sends a 410 at once, and the relist it calls
/// for must not be preceded by a moment of "in sync". The probe's loop
/// notices when this has passed and wakes the agent.
const RESUMED_AFTER: Duration = Duration::from_secs(1);

/// A layer on the API client that tells [`Health`] when a watch request
/// answers OK, and says the ClusterNetworkPolicy CRD is served again when
/// its watch does: a watcher that lost its watch to the CRD's removal
/// resumes watching (after its backoff, under a minute) when it comes back,
/// and no event says so until an object changes. Not before: while the
/// watcher waits, what is created is not seen, and status must not say
/// the CRD is read.
#[derive(Clone)]
struct WatchTap {
    health: Arc<Health>,
    crd: Arc<Served>,
    generation: Arc<AtomicU64>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl WatchTap {
    fn answered(&self, resource: &str) {
        let at = self.health.watch_answered(resource);
        if resource == CLUSTER_POLICIES && crd_served(&self.crd) {
            // Stale until the watch counts as resumed (RESUMED_AFTER): a
            // CRD created anew answers a watch from an old version OK,
            // then 410, and the relist must not be preceded by a moment
            // of "in sync". The failure is dated just before the answer,
            // which is what counts as resuming from it.
            let failure = Failure {
                message: "the CRD is installed again; its watch is resuming".to_string(),
                at: at.checked_sub(Duration::from_nanos(1)).unwrap_or(at),
                relist: false,
            };
            if let Ok(mut errors) = self.health.errors.lock() {
                errors.insert(CLUSTER_POLICIES, failure);
            }
            self.generation.fetch_add(1, Ordering::SeqCst);
            (self.wake)();
        }
    }
}

/// The ClusterNetworkPolicy resource, as watch requests and status name it.
const CLUSTER_POLICIES: &str = "clusternetworkpolicies";

/// Says the CRD is served (its list or watch answered); whether it was
/// said missing until now.
fn crd_served(served: &Served) -> bool {
    let back = served.send_replace(Some(true)) == Some(false);
    if back {
        tracing::info!("{CLUSTER_POLICIES}: the CRD is installed now");
    }
    back
}

impl<S> tower::Layer<S> for WatchTap {
    type Service = Tapped<S>;
    fn layer(&self, inner: S) -> Tapped<S> {
        Tapped { inner, tap: self.clone() }
    }
}

#[derive(Clone)]
struct Tapped<S> {
    inner: S,
    tap: WatchTap,
}

impl<S, B> tower::Service<hyper::Request<kube::client::Body>> for Tapped<S>
where
    S: tower::Service<hyper::Request<kube::client::Body>, Response = hyper::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        let uri = req.uri();
        let watch = uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        let resource = watch.then(|| uri.path().rsplit('/').next().unwrap_or_default().to_string());
        let answer = self.inner.call(req);
        let tap = self.tap.clone();
        Box::pin(async move {
            let answer = answer.await;
            if let (Some(resource), Ok(response)) = (resource, &answer)
                && response.status().is_success()
            {
                tap.answered(&resource);
            }
            answer
        })
    }
}

/// Checks every few seconds that the API server answers, and wakes the
/// agent when what status should say changed since the last check (the
/// answer, or a watch counting as resumed meanwhile), so status stops (or
/// starts) saying stale.
fn spawn_probe(client: Client, health: Arc<Health>, wake: Arc<dyn Fn() + Send + Sync>) {
    tokio::spawn(async move {
        let api: Api<Namespace> = Api::all(client);
        let mut said = health.stale();
        loop {
            let result = api.list_metadata(&kube::api::ListParams::default().limit(1)).await;
            if let Ok(mut p) = health.probe.lock() {
                *p = Some(result.map(|_| ()).map_err(|e| e.to_string()));
            }
            let now = health.stale();
            if now != said {
                wake();
                said = now;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

pub struct KubeSource {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
    services: Store<Service>,
    nodes: Store<Node>,
    cluster_policies: Store<ClusterNetworkPolicyObject>,
    /// Whether the ClusterNetworkPolicy CRD is served.
    crd: Arc<Served>,
    validator: Validator,
    /// Checked objects by key, with the resourceVersion checked at.
    checked: HashMap<ObjKey, (String, Checked)>,
    /// The store objects the last load saw, by address (held, so an
    /// address is not reused while here): an object a store still holds
    /// is unchanged, and costs no copy, key or check.
    held: HashMap<usize, Held>,
    /// Loads so far: an object not seen by this one is gone.
    loads: u64,
    /// The last snapshot.
    last: Patched,
    health: Arc<Health>,
    /// Bumped by every watch event; what a snapshot saw is `loaded`.
    generation: Arc<AtomicU64>,
    loaded: u64,
}

/// A store object a load saw.
struct Held {
    _object: Arc<dyn std::any::Any + Send + Sync>,
    key: ObjKey,
    /// The last load that saw it in its store.
    load: u64,
}

fn meta(m: &ObjectMeta, keep_annotation: Option<&str>) -> ObjectMeta {
    let annotations = keep_annotation.and_then(|k| {
        let v = m.annotations.as_ref()?.get(k)?;
        Some([(k.to_string(), v.clone())].into())
    });
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone(),
        annotations,
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

fn trim_pod(p: &mut Pod) {
    let ports = |c: &Container| Container {
        name: c.name.clone(),
        ports: c.ports.clone(),
        restart_policy: c.restart_policy.clone(),
        ..Default::default()
    };
    let spec = p.spec.as_ref().map(|s| PodSpec {
        node_name: s.node_name.clone(),
        host_network: s.host_network,
        containers: s.containers.iter().map(ports).collect(),
        init_containers: s.init_containers.as_ref().map(|cs| cs.iter().map(ports).collect()),
        ..Default::default()
    });
    let status = p.status.as_ref().map(|s| PodStatus {
        phase: s.phase.clone(),
        pod_ip: s.pod_ip.clone(),
        pod_ips: s.pod_ips.clone(),
        ..Default::default()
    });
    // The controller reference names the pod's workload.
    let owner_references = p
        .metadata
        .owner_references
        .as_ref()
        .map(|os| os.iter().filter(|o| o.controller == Some(true)).cloned().collect());
    *p = Pod { metadata: ObjectMeta { owner_references, ..meta(&p.metadata, None) }, spec, status };
}

fn trim_namespace(n: &mut Namespace) {
    *n = Namespace { metadata: meta(&n.metadata, Some(AUDIT_ANNOTATION)), ..Default::default() };
}

fn trim_policy(p: &mut NetworkPolicy) {
    p.metadata = meta(&p.metadata, None);
}

fn trim_node(n: &mut Node) {
    let status = n.status.as_ref().map(|s| NodeStatus { addresses: s.addresses.clone(), ..Default::default() });
    *n = Node { metadata: meta(&n.metadata, None), spec: None, status };
}

fn trim_cluster_policy(c: &mut ClusterNetworkPolicyObject) {
    c.metadata = meta(&c.metadata, None);
}

fn trim_service(s: &mut Service) {
    let spec = s.spec.as_ref().map(|sp| ServiceSpec {
        cluster_ip: sp.cluster_ip.clone(),
        cluster_ips: sp.cluster_ips.clone(),
        ports: sp.ports.clone(),
        selector: sp.selector.clone(),
        ..Default::default()
    });
    *s = Service { metadata: meta(&s.metadata, None), spec, status: None };
}

/// Runs one watcher into a reflector store until the process ends. With
/// `served`, the resource is a CRD's: a 404 says it is not installed
/// (recorded there, not a failure), a good list that it is.
fn spawn_watch<K>(
    api: Api<K>,
    kind: &'static str,
    trim: fn(&mut K),
    wake: Arc<dyn Fn() + Send + Sync>,
    health: Arc<Health>,
    generation: Arc<AtomicU64>,
    served: Option<Arc<Served>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim).reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    // A relist fills the store only at InitDone: until then
                    // it still holds the state from before the failure.
                    let current = !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_));
                    if current && let Some(served) = &served {
                        crd_served(served);
                    }
                    let recovered =
                        current && health.errors.lock().map(|mut e| e.remove(kind).is_some()).unwrap_or(false);
                    if recovered {
                        tracing::info!("{kind} watch reconnected");
                    }
                    generation.fetch_add(1, Ordering::SeqCst);
                    wake();
                }
                Err(e) if served.is_some() && not_found(&e) => {
                    let served = served.as_ref().expect("checked");
                    let before = served.send_replace(Some(false));
                    let cleared = health.errors.lock().map(|mut m| m.remove(kind).is_some()).unwrap_or(false);
                    if before != Some(false) || cleared {
                        tracing::warn!("{CRD_NOT_INSTALLED}");
                        generation.fetch_add(1, Ordering::SeqCst);
                        wake();
                    }
                }
                Err(e) => {
                    let first =
                        health.errors.lock().map(|mut m| m.insert(kind, Failure::new(&e)).is_none()).unwrap_or(false);
                    if first {
                        tracing::warn!("{kind} watch failed ({e}); keeping the last state in force and retrying");
                    }
                    // Not in sync from now on: a status asked before the
                    // next pass must not report the old verdict.
                    generation.fetch_add(1, Ordering::SeqCst);
                    wake();
                }
            }
        }
    });
    reader
}

/// One load's walk over the stores.
struct Scan<'a> {
    checked: &'a mut HashMap<ObjKey, (String, Checked)>,
    held: &'a mut HashMap<usize, Held>,
    load: u64,
    /// Keys whose object is new, changed or gone.
    dirty: &'a mut HashSet<ObjKey>,
    /// Keys whose store holds an object not seen before.
    renewed: HashSet<ObjKey>,
}

impl Scan<'_> {
    /// Marks the store's objects seen. The reflector replaces an object's
    /// `Arc` when it changes, so an address seen before is the same
    /// object; any other is checked, unless it was checked at its
    /// resourceVersion (a relist brings every object anew).
    fn store<K>(&mut self, store: &Store<K>, kind: Kind, raw: impl Fn(&K) -> Raw)
    where
        K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        for o in store.state() {
            let address = Arc::as_ptr(&o) as usize;
            if let Some(held) = self.held.get_mut(&address) {
                held.load = self.load;
                continue;
            }
            let m = o.meta();
            let namespace = match &m.namespace {
                Some(ns) if kind.namespaced() => ns.clone(),
                None if kind.namespaced() => "default".to_string(),
                _ => String::new(),
            };
            let key = ObjKey { kind, namespace: namespace.into(), name: m.name.as_deref().unwrap_or_default().into() };
            let version = m.resource_version.as_deref().unwrap_or_default();
            let same = self.checked.get(&key).is_some_and(|(v, _)| !version.is_empty() && v == version);
            if !same {
                let checked = Checked::new(&raw(&o));
                debug_assert_eq!(checked.key, key);
                self.checked.insert(key.clone(), (version.to_string(), checked));
                self.dirty.insert(key.clone());
            }
            self.renewed.insert(key.clone());
            self.held.insert(address, Held { _object: o, key, load: self.load });
        }
    }

    /// Lets go of the objects no store holds now; a key with no object in
    /// its store any more is gone.
    fn finish(self) {
        let load = self.load;
        let left: Vec<Held> = self.held.extract_if(|_, held| held.load != load).map(|(_, held)| held).collect();
        // Replaced (a new object under the same key), or gone.
        for Held { key, .. } in left {
            if !self.renewed.contains(&key) {
                self.checked.remove(&key);
                self.dirty.insert(key);
            }
        }
    }
}

impl KubeSource {
    /// Connects (in-cluster config, or KUBECONFIG) and starts the watchers;
    /// returns once every store holds a complete first list, so the kernel
    /// is never programmed from a half-loaded state.
    pub async fn start(wake: Arc<dyn Fn() + Send + Sync>, allow_namespace_audit: bool) -> Result<KubeSource> {
        let health = Arc::new(Health::default());
        let generation = Arc::new(AtomicU64::new(0));
        let crd = Arc::new(Served::new(None));
        let config = kube::Config::infer().await.context("finding the Kubernetes API (in-cluster or KUBECONFIG)")?;
        let tap =
            WatchTap { health: health.clone(), crd: crd.clone(), generation: generation.clone(), wake: wake.clone() };
        let client = kube::client::ClientBuilder::try_from(config)
            .context("connecting to the Kubernetes API")?
            .with_layer(&tap)
            .build();
        let (h, g) = (&health, &generation);
        let namespaces = spawn_watch(
            Api::all(client.clone()),
            "namespaces",
            trim_namespace,
            wake.clone(),
            h.clone(),
            g.clone(),
            None,
        );
        let pods = spawn_watch(Api::all(client.clone()), "pods", trim_pod, wake.clone(), h.clone(), g.clone(), None);
        let policies = spawn_watch(
            Api::all(client.clone()),
            "networkpolicies",
            trim_policy,
            wake.clone(),
            h.clone(),
            g.clone(),
            None,
        );
        let services =
            spawn_watch(Api::all(client.clone()), "services", trim_service, wake.clone(), h.clone(), g.clone(), None);
        let nodes = spawn_watch(Api::all(client.clone()), "nodes", trim_node, wake.clone(), h.clone(), g.clone(), None);
        let cluster_policies = spawn_watch(
            Api::all(client.clone()),
            CLUSTER_POLICIES,
            trim_cluster_policy,
            wake.clone(),
            h.clone(),
            g.clone(),
            Some(crd.clone()),
        );
        spawn_probe(client, health.clone(), wake);
        {
            let mut crd_known = crd.subscribe();
            let ready = async {
                namespaces.wait_until_ready().await?;
                pods.wait_until_ready().await?;
                policies.wait_until_ready().await?;
                services.wait_until_ready().await?;
                nodes.wait_until_ready().await?;
                // Either the CRD's first list, or word that it is not installed.
                tokio::select! {
                    r = cluster_policies.wait_until_ready() => r,
                    _ = crd_known.wait_for(|s| *s == Some(false)) => Ok(()),
                }
            };
            tokio::pin!(ready);
            loop {
                tokio::select! {
                    r = &mut ready => {
                        r.context("a watcher stopped before its first list")?;
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {
                        let why = health.stale().unwrap_or_default();
                        tracing::warn!("still waiting for the first complete list from the Kubernetes API {why}");
                    }
                }
            }
        }
        let mut validator = Validator::default();
        validator.allow_namespace_audit = allow_namespace_audit;
        Ok(KubeSource {
            namespaces,
            pods,
            policies,
            services,
            nodes,
            cluster_policies,
            crd,
            validator,
            checked: Default::default(),
            held: Default::default(),
            loads: 0,
            last: Patched::default(),
            health,
            generation,
            loaded: 0,
        })
    }

    /// The current state of every store. Only objects whose
    /// resourceVersion changed (or that are new or gone) are converted and
    /// validated again, and the last snapshot is patched with them: at 50k
    /// pods and 50k policies a copy and a check of every object took about
    /// a second per load, whatever changed.
    pub fn load(&mut self) -> Snapshot {
        self.loaded = self.generation.load(Ordering::SeqCst);
        self.loads += 1;
        let mut dirty = HashSet::new();
        let mut scan = Scan {
            checked: &mut self.checked,
            held: &mut self.held,
            load: self.loads,
            dirty: &mut dirty,
            renewed: HashSet::new(),
        };
        scan.store(&self.namespaces, Kind::Namespace, |o| Raw::Namespace(o.clone()));
        scan.store(&self.pods, Kind::Pod, |o| Raw::Pod(Box::new(o.clone())));
        scan.store(&self.policies, Kind::NetworkPolicy, |o| Raw::Policy(o.clone()));
        scan.store(&self.services, Kind::Service, |o| Raw::Service(Box::new(o.clone())));
        scan.store(&self.nodes, Kind::Node, |o| Raw::Node(Box::new(o.clone())));
        // Whatever the store holds, served or not (see the module doc).
        scan.store(&self.cluster_policies, Kind::ClusterNetworkPolicy, |o| {
            let value = serde_json::json!({
                "apiVersion": cluster_policy::API_VERSION,
                "kind": cluster_policy::KIND,
                "metadata": o.metadata,
                "spec": o.spec,
            });
            Raw::from_value(Kind::ClusterNetworkPolicy, value)
        });
        scan.finish();
        if !dirty.is_empty() {
            let mut items: Vec<&Checked> = dirty.iter().filter_map(|k| self.checked.get(k)).map(|(_, c)| c).collect();
            items.sort_by(|a, b| a.key.cmp(&b.key));
            let part = self.validator.snapshot_of(&dirty, items.into_iter().map(|c| ("kubernetes", c)));
            self.last.patch(&dirty, part);
        }
        self.last.snapshot(Vec::new())
    }

    /// What the last load saw, and what is current: equal when in sync.
    pub fn versions(&self) -> (u64, Arc<AtomicU64>) {
        (self.loaded, self.generation.clone())
    }

    /// Why the state may be stale (a watcher cannot reach the API server).
    pub fn stale(&self) -> Option<String> {
        self.health.stale()
    }

    /// What the API does not serve, though palisade would read it (the
    /// ClusterNetworkPolicy CRD): enforcement goes on without it.
    pub fn unavailable(&self) -> Option<&'static str> {
        (*self.crd.borrow() == Some(false)).then_some(CRD_NOT_INSTALLED)
    }
}
