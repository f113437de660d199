//! An in-process fake Kubernetes API server for the end-to-end tests of the
//! agent's `kube` cluster source, trimmed to what the agent asks of a real
//! one (a kube-rs `watcher` per kind, and a metadata list as a probe), over
//! plain HTTP:
//!
//! - LIST of a whole collection (`/api/v1/pods`,
//!   `/apis/networking.k8s.io/v1/networkpolicies`, ...) of Namespaces, Pods,
//!   Services, NetworkPolicies, Nodes and ClusterNetworkPolicies
//!   (policy.networking.k8s.io/v1alpha2, a CRD: while it is not installed,
//!   [`Options::cluster_network_policy_crd`] or
//!   [`FakeApi::set_cluster_network_policy_crd`], its path answers 404 with
//!   a plain-text body, as a real server does): a `<Kind>List` at the current
//!   resourceVersion, paginated by `limit`/`continue` over a consistent
//!   snapshot; `PartialObjectMetadataList` when the client asks for it.
//! - WATCH (`watch=true`): newline-delimited JSON events over a chunked
//!   response, resumed from `resourceVersion` out of a bounded history,
//!   `ERROR` events with a 410 `Expired` Status when the version is too old
//!   or [`FakeApi::expire_watches`] was called, `BOOKMARK`s when
//!   `allowWatchBookmarks=true`, and `timeoutSeconds`.
//!
//! Writes happen in-process through [`FakeApi::apply`] and
//! [`FakeApi::delete`]; over HTTP anything else gets 404 or 405, but for
//! what `kubectl palisade` asks ([`kubectl`]: namespaced pod reads, Nodes,
//! `pods/portforward`).

mod kubectl;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use k8s_openapi::Resource as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

/// `timeoutSeconds` of a watch that sent none (the real server picks 30 to
/// 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Paginated lists kept for `continue` tokens; older tokens get 410.
const SNAPSHOTS_KEPT: usize = 32;

/// Tunables of a [`FakeApi`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How many changes (over all kinds) are kept for watches resuming from
    /// an older resourceVersion; a watch from before the window gets 410.
    pub history_limit: usize,
    /// Whether the ClusterNetworkPolicy CRD is installed at start.
    pub cluster_network_policy_crd: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { bookmark_interval: Duration::from_secs(1), history_limit: 1000, cluster_network_policy_crd: true }
    }
}

/// The ClusterNetworkPolicy CRD's group/version and kind.
pub const CNP_API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
const CNP_KIND: &str = "ClusterNetworkPolicy";

/// LIST and WATCH requests served per resource (the URL plural: `pods`,
/// `namespaces`, ...), whatever the answer.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    counts: BTreeMap<String, (usize, usize)>,
}

impl Requests {
    /// LIST requests served for a resource plural (`"pods"`).
    pub fn lists(&self, resource: &str) -> usize {
        self.counts.get(resource).map_or(0, |c| c.0)
    }

    /// WATCH requests served for a resource plural (`"pods"`).
    pub fn watches(&self, resource: &str) -> usize {
        self.counts.get(resource).map_or(0, |c| c.1)
    }
}

/// A fake Kubernetes API server, serving from its own tokio runtime, so it
/// works from sync tests and from any async runtime alike. Dropping it stops
/// the server and removes the kubeconfig file.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    server: Mutex<Option<Server>>,
    kubeconfig: PathBuf,
    /// The network namespace the listener lives in (None: this host's).
    netns: Option<String>,
}

/// A running accept loop.
struct Server {
    shutdown: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
}

impl FakeApi {
    /// Starts serving on 127.0.0.1:<random port>.
    pub fn start() -> Result<FakeApi> {
        Self::start_with(Options::default())
    }

    /// [`FakeApi::start`] with non-default [`Options`].
    pub fn start_with(options: Options) -> Result<FakeApi> {
        Self::start_at(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), options)
    }

    /// Serves on `ip` inside the network namespace `netns`: agents in node
    /// namespaces cannot reach this host's loopback, but reach an address
    /// on a link into theirs.
    pub fn start_in(netns: &str, ip: Ipv4Addr) -> Result<FakeApi> {
        Self::start_at(Some(netns.to_string()), SocketAddr::from((ip, 0)), Options::default())
    }

    fn start_at(netns: Option<String>, addr: SocketAddr, options: Options) -> Result<FakeApi> {
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-api")
            .enable_all()
            .build()
            .context("fake API server runtime")?;
        let listener = bind(netns.as_deref(), addr)?;
        let addr = listener.local_addr()?;
        let kubeconfig = std::env::temp_dir().join(format!(
            "palisade-fake-api-{}-{}-{}.kubeconfig",
            std::process::id(),
            addr.port(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&kubeconfig, kubeconfig_yaml(&format!("http://{addr}")))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let (changed, _) = watch::channel(0);
        let mut state = State::new();
        state.crd_installed = options.cluster_network_policy_crd;
        let shared =
            Arc::new(Shared { state: Mutex::new(state), changed, options, forwards: kubectl::Forwards::default() });
        let api = FakeApi { addr, shared, runtime: Some(runtime), server: Mutex::new(None), kubeconfig, netns };
        api.serve(listener);
        Ok(api)
    }

    /// A kubeconfig file (in the temp directory, removed on drop) whose
    /// current context points at this server over plain HTTP, no
    /// credentials: for `KUBECONFIG`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `http://<address>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address served (the same across [`FakeApi::stop`]/[`FakeApi::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates or replaces an object and returns its new resourceVersion.
    /// A change bumps the global resourceVersion and emits ADDED or MODIFIED
    /// to the watchers; applying an object identical to the stored one is a
    /// no-op (no new version, no event), as on a real server. A namespaced
    /// object without a namespace goes to `default`.
    ///
    /// Panics if the kind is not served or the object has no `metadata.name`.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, obj: &K) -> String {
        let value = serde_json::to_value(obj).expect("object serializes to JSON");
        self.apply_value(Kind::of::<K>(), value)
    }

    /// Creates or replaces a ClusterNetworkPolicy given as JSON (with its
    /// apiVersion and kind), valid or not: the fake server does not run the
    /// CRD's validation, so a test can serve what an older or newer CRD
    /// would let through. Panics if the CRD is not installed.
    pub fn apply_cluster_network_policy(&self, value: Value) -> String {
        assert!(self.shared.lock().crd_installed, "the ClusterNetworkPolicy CRD is not installed");
        self.apply_value(Kind::ClusterNetworkPolicy, value)
    }

    /// Deletes a ClusterNetworkPolicy (DELETED to its watchers).
    pub fn delete_cluster_network_policy(&self, name: &str) -> bool {
        self.delete_kind(Kind::ClusterNetworkPolicy, None, name)
    }

    /// Names of the stored ClusterNetworkPolicies.
    pub fn cluster_network_policy_names(&self) -> Vec<String> {
        self.shared.lock().objects[Kind::ClusterNetworkPolicy].keys().map(|k| k.1.clone()).collect()
    }

    /// Installs or removes the ClusterNetworkPolicy CRD. Removing it, as on
    /// a real server, deletes its objects (DELETED to the watchers), then
    /// ends its watches; from then on its path answers 404.
    pub fn set_cluster_network_policy_crd(&self, installed: bool) {
        if !installed {
            for name in self.cluster_network_policy_names() {
                self.delete_cluster_network_policy(&name);
            }
        }
        self.set_cluster_network_policy_served(installed);
    }

    /// Serves the ClusterNetworkPolicy resource or not, its objects kept
    /// (a server that briefly does not serve it: a restart, an upgrade):
    /// not served, its path answers 404 and its watches end.
    pub fn set_cluster_network_policy_served(&self, served: bool) {
        let mut st = self.shared.lock();
        st.crd_installed = served;
        drop(st);
        self.shared.notify();
    }

    fn apply_value(&self, kind: Kind, mut value: Value) -> String {
        let key = object_key(kind, &mut value);
        let mut st = self.shared.lock();
        let old = st.objects[kind].get(&key);
        if let Some(old) = old {
            let mut unversioned = old.clone();
            if let Some(meta) = unversioned["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            if unversioned == value {
                return old["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            }
        }
        let op = if old.is_some() { "MODIFIED" } else { "ADDED" };
        st.rv += 1;
        let rv = st.rv;
        set_rv(&mut value, rv);
        st.objects[kind].insert(key, value.clone());
        st.record(Change { rv, kind, op, object: value }, &self.shared.options);
        drop(st);
        self.shared.notify();
        rv.to_string()
    }

    /// Applies every object in a YAML (or JSON) text of one or more
    /// documents, `List` documents included, such as
    /// [`crate::Topology::manifests`] and [`crate::np`] produce. Each object
    /// is checked by deserializing it into its k8s-openapi type, so a
    /// malformed one is an error here rather than in the client. Returns
    /// how many objects were applied; stops at the first bad one.
    pub fn apply_manifests(&self, text: &str) -> Result<usize> {
        fn typed<K>(api: &FakeApi, value: Value) -> Result<()>
        where
            K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
        {
            let obj: K = serde_json::from_value(value).with_context(|| format!("not a valid {}", K::KIND))?;
            api.apply(&obj);
            Ok(())
        }
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| anyhow!("invalid YAML: {e}"))?;
        let mut applied = 0;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let is_list = doc.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"));
            let objects = if is_list { doc["items"].as_array().cloned().unwrap_or_default() } else { vec![doc] };
            for obj in objects {
                let field = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
                let (api_version, kind) = (field("apiVersion"), field("kind"));
                if obj.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    bail!("{api_version} {kind} without metadata.name");
                }
                match (api_version.as_str(), kind.as_str()) {
                    ("v1", "Namespace") => typed::<Namespace>(self, obj)?,
                    ("v1", "Pod") => typed::<Pod>(self, obj)?,
                    ("v1", "Service") => typed::<Service>(self, obj)?,
                    ("networking.k8s.io/v1", "NetworkPolicy") => typed::<NetworkPolicy>(self, obj)?,
                    ("v1", "Node") => typed::<Node>(self, obj)?,
                    (CNP_API_VERSION, CNP_KIND) => {
                        self.apply_cluster_network_policy(obj);
                    }
                    _ => bail!("{api_version} {kind} is not a served kind"),
                }
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Deletes an object, emitting DELETED with its last state at the
    /// deletion's resourceVersion. Returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) -> bool {
        self.delete_kind(Kind::of::<K>(), namespace, name)
    }

    fn delete_kind(&self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(mut object) = st.objects[kind].remove(&(kind.namespace(namespace), name.to_string())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        set_rv(&mut object, rv);
        st.record(Change { rv, kind, op: "DELETED", object }, &self.shared.options);
        drop(st);
        self.shared.notify();
        true
    }

    /// A stored object.
    pub fn get<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let kind = Kind::of::<K>();
        let st = self.shared.lock();
        let obj = st.objects[kind].get(&(kind.namespace(namespace), name.to_string()))?;
        Some(serde_json::from_value(obj.clone()).expect("stored object deserializes"))
    }

    /// Namespace (empty for Namespaces) and name of every stored object of
    /// a kind.
    pub fn names<K: k8s_openapi::Resource>(&self) -> Vec<(String, String)> {
        self.shared.lock().objects[Kind::of::<K>()].keys().cloned().collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Makes every open watch end with a 410 Gone (an ERROR event carrying a
    /// `Status` with code 410, reason `Expired`), rejects watches resuming
    /// from any older resourceVersion the same way, and expires outstanding
    /// `continue` tokens: clients must relist. (Like an etcd compaction at
    /// the current version, without a new version.)
    pub fn expire_watches(&self) {
        let mut st = self.shared.lock();
        st.epoch += 1;
        st.history.clear();
        st.history_start = st.rv;
        st.snapshots.clear();
        drop(st);
        self.shared.notify();
    }

    /// Waits until at least `watches` watches are open and every open watch
    /// has handed every change made so far to its connection to write (not
    /// merely queued it): an agent asked for its status afterwards has the
    /// changes in hand, or is already busy with them.
    pub fn wait_delivered(&self, watches: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let st = self.shared.lock();
                if st.watches.len() >= watches && st.watches.values().all(|&sent| sent >= st.rv) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("watches not caught up: {:?} (want {watches} at {})", st.watches, st.rv);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops answering: closes the listener and every open connection
    /// (watches end mid-stream without a final chunk). Objects are kept.
    /// A no-op if already stopped.
    pub fn stop(&self) {
        let Some(server) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let _ = server.shutdown.send(true);
        // Wait (bounded) until the listener and the connections are closed.
        let _ = server.done.recv_timeout(Duration::from_secs(10));
    }

    /// Serves again on the same address, with the same objects and versions.
    /// A no-op if already serving.
    pub fn restart(&self) -> Result<()> {
        if self.is_serving() {
            return Ok(());
        }
        let mut last = None;
        // The port may take a moment to be free again.
        for _ in 0..50 {
            match bind(self.netns.as_deref(), self.addr) {
                Ok(listener) => {
                    self.serve(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow!("cannot bind {}", self.addr)))
    }

    /// Whether the server is accepting connections.
    pub fn is_serving(&self) -> bool {
        self.server.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// LIST and WATCH counts per resource.
    pub fn requests(&self) -> Requests {
        self.shared.lock().requests.clone()
    }

    /// Lets `pods/{name}/portforward` of pod `namespace/name` reach ports
    /// on 127.0.0.1 inside `netns` (None: this host's), as kubelet does in
    /// the pod's network namespace (a host-network pod's is its node's).
    pub fn forward_pod(&self, namespace: &str, name: &str, netns: Option<&str>) {
        self.shared.forwards.set_pod(namespace, name, netns);
    }

    /// Port-forwards to the pod fail from now on (kubelet cannot connect).
    pub fn stop_forwarding(&self, namespace: &str, name: &str) {
        self.shared.forwards.remove_pod(namespace, name);
    }

    /// Port-forward requests answered so far.
    pub fn portforwards(&self) -> usize {
        self.shared.forwards.requests.load(Ordering::Relaxed)
    }

    /// Adds a Node (a name, nothing else) to the Node list.
    pub fn add_node(&self, name: &str) {
        if kubectl::served("Node") {
            self.apply_manifests(&format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n"))
                .expect("a Node applies");
        } else {
            self.shared.forwards.add_node(name);
        }
    }

    fn serve(&self, listener: StdTcpListener) {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let runtime = self.runtime.as_ref().expect("runtime lives as long as the server");
        runtime.spawn(accept_loop(listener, self.shared.clone(), shutdown_rx, done_tx));
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(Server { shutdown, done });
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {server}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
users:
- name: fake
  user: {{}}
"
    )
}

/// A listening socket with SO_REUSEADDR, so a restart can take the same port
/// while the previous connections sit in TIME_WAIT; made in `netns` (a
/// socket stays in the namespace it was made in, whoever uses it).
fn bind(netns: Option<&str>, addr: SocketAddr) -> Result<StdTcpListener> {
    use socket2::{Domain, Socket, Type};
    if let Some(ns) = netns {
        return std::thread::scope(|s| {
            s.spawn(|| {
                crate::netns::enter(ns)?;
                bind(None, addr)
            })
            .join()
            .expect("bind thread")
        });
    }
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    socket.listen(128)?;
    Ok(socket.into())
}

async fn accept_loop(
    listener: StdTcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    done: std::sync::mpsc::Sender<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fake API server: cannot serve: {e}");
            let _ = done.send(());
            return;
        }
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move {
                                Ok::<_, Infallible>(if kubectl::answers(&req) {
                                    kubectl::respond(&shared, req)
                                } else {
                                    handle(&shared, &req)
                                })
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Dropping a connection closes its socket and drops the bodies it was
    // sending, which ends their watch tasks.
    connections.shutdown().await;
    let _ = done.send(());
}

// ---------------------------------------------------------------------------
// State

/// The served kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    Node,
    ClusterNetworkPolicy,
}

const KINDS: [Kind; 6] =
    [Kind::Namespace, Kind::Pod, Kind::Service, Kind::NetworkPolicy, Kind::Node, Kind::ClusterNetworkPolicy];

impl Kind {
    fn of<K: k8s_openapi::Resource>() -> Kind {
        *KINDS.iter().find(|k| k.kind() == K::KIND).unwrap_or_else(|| panic!("{} is not a served kind", K::KIND))
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Namespace => Namespace::KIND,
            Kind::Pod => Pod::KIND,
            Kind::Service => Service::KIND,
            Kind::NetworkPolicy => NetworkPolicy::KIND,
            Kind::Node => Node::KIND,
            Kind::ClusterNetworkPolicy => CNP_KIND,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => NetworkPolicy::API_VERSION,
            Kind::ClusterNetworkPolicy => CNP_API_VERSION,
            _ => "v1",
        }
    }

    /// The collection's URL plural.
    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => Namespace::URL_PATH_SEGMENT,
            Kind::Pod => Pod::URL_PATH_SEGMENT,
            Kind::Service => Service::URL_PATH_SEGMENT,
            Kind::NetworkPolicy => NetworkPolicy::URL_PATH_SEGMENT,
            Kind::Node => Node::URL_PATH_SEGMENT,
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
        }
    }

    /// The path of the collection over all namespaces.
    fn path(self) -> String {
        match self {
            Kind::NetworkPolicy => format!("/apis/{}/{}", NetworkPolicy::API_VERSION, self.plural()),
            Kind::ClusterNetworkPolicy => format!("/apis/{CNP_API_VERSION}/{}", self.plural()),
            _ => format!("/api/v1/{}", self.plural()),
        }
    }

    /// The namespace an object of this kind is stored under ("" for
    /// Namespaces, `default` when none is given).
    fn namespace(self, ns: Option<&str>) -> String {
        match self {
            Kind::Namespace | Kind::Node | Kind::ClusterNetworkPolicy => String::new(),
            _ => ns.filter(|n| !n.is_empty()).unwrap_or("default").to_string(),
        }
    }
}

impl<T> std::ops::Index<Kind> for [T; 6] {
    type Output = T;
    fn index(&self, kind: Kind) -> &T {
        &self[kind as usize]
    }
}

impl<T> std::ops::IndexMut<Kind> for [T; 6] {
    fn index_mut(&mut self, kind: Kind) -> &mut T {
        &mut self[kind as usize]
    }
}

/// (namespace or "", name): the order a real server lists in.
type ObjectKey = (String, String);

/// Normalizes an object's metadata for storing (namespace set or removed,
/// no resourceVersion) and returns its key.
fn object_key(kind: Kind, value: &mut Value) -> ObjectKey {
    let meta = value.get_mut("metadata").and_then(Value::as_object_mut).expect("object has metadata");
    let name = meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).expect("object has a name");
    let name = name.to_string();
    let namespace = kind.namespace(meta.get("namespace").and_then(Value::as_str));
    if namespace.is_empty() {
        meta.remove("namespace");
    } else {
        meta.insert("namespace".into(), Value::String(namespace.clone()));
    }
    meta.remove("resourceVersion");
    (namespace, name)
}

struct Change {
    rv: u64,
    kind: Kind,
    /// ADDED, MODIFIED or DELETED.
    op: &'static str,
    /// The new state; for DELETED, the last state at the deletion's version.
    object: Value,
}

struct Snapshot {
    id: u64,
    rv: u64,
    items: Arc<Vec<Value>>,
}

struct State {
    /// The global resourceVersion: the version of the last change.
    rv: u64,
    /// Every change with a version above this one is in `history`.
    history_start: u64,
    history: VecDeque<Arc<Change>>,
    /// Bumped by `expire_watches`: watches opened before end with 410.
    epoch: u64,
    objects: [BTreeMap<ObjectKey, Value>; 6],
    /// Whether the ClusterNetworkPolicy CRD is installed (else its path is 404).
    crd_installed: bool,
    snapshots: VecDeque<Snapshot>,
    next_snapshot: u64,
    requests: Requests,
    /// Open watches: id -> the version up to which their connection has
    /// taken their events.
    watches: BTreeMap<u64, u64>,
    next_watch: u64,
}

impl State {
    fn new() -> State {
        // A fresh etcd is at revision 1.
        State {
            rv: 1,
            history_start: 1,
            history: VecDeque::new(),
            epoch: 0,
            objects: Default::default(),
            crd_installed: true,
            snapshots: VecDeque::new(),
            next_snapshot: 1,
            requests: Requests::default(),
            watches: BTreeMap::new(),
            next_watch: 0,
        }
    }

    fn record(&mut self, change: Change, options: &Options) {
        self.history.push_back(Arc::new(change));
        while self.history.len() > options.history_limit.max(1) {
            if let Some(dropped) = self.history.pop_front() {
                self.history_start = dropped.rv;
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Ticks on every change and expiry; watches wait on it.
    changed: watch::Sender<u64>,
    options: Options,
    forwards: kubectl::Forwards,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

// ---------------------------------------------------------------------------
// HTTP

type Body = BoxBody<Bytes, Infallible>;

fn handle(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    let query: HashMap<String, String> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let Some(kind) = KINDS.into_iter().find(|k| k.path() == req.uri().path()) else {
        return status_response(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
    };
    if kind == Kind::ClusterNetworkPolicy && !shared.lock().crd_installed {
        // A path under a group the server does not serve: not a Status.
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(b"404 page not found\n")).boxed())
            .expect("valid response");
    }
    if req.method() != Method::GET {
        return status_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "the fake API server is read-only");
    }
    let param = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let watching = matches!(param("watch"), Some("true" | "1"));
    {
        let mut st = shared.lock();
        let counts = st.requests.counts.entry(kind.plural().to_string()).or_default();
        if watching { counts.1 += 1 } else { counts.0 += 1 }
    }
    if !watching {
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        return list(shared, kind, param("limit"), param("continue"), accept.contains("as=PartialObjectMetadataList"));
    }
    let timeout = match param("timeoutSeconds").map(str::parse::<u64>) {
        None | Some(Ok(0)) => DEFAULT_WATCH_TIMEOUT,
        Some(Ok(secs)) => Duration::from_secs(secs),
        Some(Err(_)) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid timeoutSeconds"),
    };
    let Ok(from) = param("resourceVersion").unwrap_or("0").parse::<u64>() else {
        return status_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "invalid resourceVersion");
    };
    start_watch(shared, kind, from, param("allowWatchBookmarks") == Some("true"), timeout)
}

fn list(shared: &Shared, kind: Kind, limit: Option<&str>, token: Option<&str>, metadata_only: bool) -> Response<Body> {
    let limit = match limit.map(str::parse::<usize>) {
        None => usize::MAX,
        Some(Ok(limit)) => limit.max(1),
        Some(Err(_)) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid limit"),
    };
    let mut st = shared.lock();
    let (rv, items, offset) = match token {
        Some(token) => {
            let snapshot = token
                .split_once(':')
                .and_then(|(id, offset)| Some((id.parse::<u64>().ok()?, offset.parse::<usize>().ok()?)))
                .and_then(|(id, offset)| Some((st.snapshots.iter().find(|s| s.id == id)?, offset)));
            let Some((snapshot, offset)) = snapshot else {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            };
            (snapshot.rv, snapshot.items.clone(), offset)
        }
        None => (st.rv, Arc::new(st.objects[kind].values().cloned().collect::<Vec<_>>()), 0),
    };
    let offset = offset.min(items.len());
    let end = offset.saturating_add(limit).min(items.len());
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), Value::String(rv.to_string()));
    if end < items.len() {
        let id = match st.snapshots.iter().find(|s| Arc::ptr_eq(&s.items, &items)) {
            Some(s) => s.id,
            None => {
                let id = st.next_snapshot;
                st.next_snapshot += 1;
                st.snapshots.push_back(Snapshot { id, rv, items: items.clone() });
                if st.snapshots.len() > SNAPSHOTS_KEPT {
                    st.snapshots.pop_front();
                }
                id
            }
        };
        metadata.insert("continue".into(), Value::String(format!("{id}:{end}")));
        metadata.insert("remainingItemCount".into(), json!(items.len() - end));
    }
    drop(st);
    let page: Vec<Value> = items[offset..end]
        .iter()
        .map(|o| {
            if metadata_only {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
            } else {
                // A real server's list items carry no apiVersion/kind.
                let mut item = o.clone();
                if let Some(map) = item.as_object_mut() {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                item
            }
        })
        .collect();
    let (api_version, list_kind) = if metadata_only {
        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
    } else {
        (kind.api_version().to_string(), format!("{}List", kind.kind()))
    };
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": list_kind, "metadata": metadata, "items": page}),
    )
}

/// What one watch sends.
struct WatchSpec {
    kind: Kind,
    bookmarks: bool,
    timeout: Duration,
    epoch: u64,
    id: u64,
}

/// A watch from version `from` (0: the current state as ADDED events, then
/// changes).
fn start_watch(shared: &Arc<Shared>, kind: Kind, from: u64, bookmarks: bool, timeout: Duration) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Line>();
    let mut st = shared.lock();
    // Subscribe under the lock: every change after this snapshot ticks it.
    let changes = shared.changed.subscribe();
    let mut cursor = st.rv;
    // Sent so far: nothing of the current state until its last line is.
    let mut sent = 0;
    if from == 0 {
        for obj in st.objects[kind].values() {
            let _ = tx.send(Line::event("ADDED", obj));
        }
        let _ = tx.send(Line::sent(cursor));
    } else if from < st.history_start {
        let _ = tx.send(Line::event("ERROR", &expired_body(from, st.history_start)));
    } else {
        // Resume: the task replays the history after `from`.
        cursor = from.min(st.rv);
        sent = cursor;
    }
    let mut id = None;
    if from == 0 || from >= st.history_start {
        let watch = st.next_watch;
        st.next_watch += 1;
        st.watches.insert(watch, sent);
        id = Some(watch);
        let spec = WatchSpec { kind, bookmarks, timeout, epoch: st.epoch, id: watch };
        tokio::spawn(run_watch(shared.clone(), spec, cursor, changes, tx));
    }
    drop(st);
    // A change counts as sent when the connection has taken every line
    // before the mark to write, not when they are queued: a test that
    // then asks the agent finds them read.
    let shared = shared.clone();
    let body = futures_util::stream::unfold(rx, move |mut rx| {
        let shared = shared.clone();
        async move {
            loop {
                let line = rx.recv().await?;
                if let (Some(id), Some(at)) = (id, line.sent)
                    && let Some(sent) = shared.lock().watches.get_mut(&id)
                {
                    *sent = (*sent).max(at);
                }
                if !line.bytes.is_empty() {
                    return Some((Ok::<_, Infallible>(Frame::data(line.bytes)), rx));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(body).boxed())
        .expect("valid response")
}

/// What a watch's connection is handed: an event line, or a mark that
/// every change up to `sent` has been handed over.
struct Line {
    bytes: Bytes,
    sent: Option<u64>,
}

impl Line {
    fn data(bytes: Bytes) -> Line {
        Line { bytes, sent: None }
    }

    fn event(kind: &str, object: &Value) -> Line {
        Line::data(event_line(kind, object))
    }

    fn sent(version: u64) -> Line {
        Line { bytes: Bytes::new(), sent: Some(version) }
    }
}

async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    mut cursor: u64,
    mut changes: watch::Receiver<u64>,
    tx: mpsc::UnboundedSender<Line>,
) {
    /// Unregisters the watch however the task ends.
    struct Open<'a>(&'a Shared, u64);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.lock().watches.remove(&self.1);
        }
    }
    let _open = Open(&shared, spec.id);
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let interval = shared.options.bookmark_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (lines, end) = catch_up(&shared, &spec, &mut cursor);
        for line in lines {
            if tx.send(line).is_err() {
                return;
            }
        }
        if end {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = ticker.tick(), if spec.bookmarks => {
                if tx.send(Line::data(bookmark_line(spec.kind, cursor))).is_err() {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = tx.closed() => return,
        }
    }
}

/// The lines after `cursor` for one watch, then the mark that they are
/// sent; true when the watch must end (expired: the last line is the 410
/// ERROR).
fn catch_up(shared: &Shared, spec: &WatchSpec, cursor: &mut u64) -> (Vec<Line>, bool) {
    let st = shared.lock();
    if st.epoch != spec.epoch || *cursor < st.history_start {
        return (vec![Line::event("ERROR", &expired_body(*cursor, st.history_start.max(st.rv)))], true);
    }
    let start = st.history.partition_point(|c| c.rv <= *cursor);
    let mut lines: Vec<Line> =
        st.history.range(start..).filter(|c| c.kind == spec.kind).map(|c| Line::event(c.op, &c.object)).collect();
    *cursor = st.rv;
    lines.push(Line::sent(*cursor));
    // A CRD deleted: its objects' DELETED events, then the watch ends.
    let gone = spec.kind == Kind::ClusterNetworkPolicy && !st.crd_installed;
    (lines, gone)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("event serializes");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(kind: Kind, rv: u64) -> Bytes {
    let metadata = json!({"resourceVersion": rv.to_string()});
    event_line("BOOKMARK", &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata}))
}

fn expired_body(rv: u64, current: u64) -> Value {
    status_body(410, "Expired", &format!("too old resource version: {rv} ({current})"))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_body(code.as_u16(), reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON serializes"))).boxed())
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<FakeApi>();
    }

    #[test]
    fn kinds_and_paths() {
        assert_eq!(Kind::of::<NetworkPolicy>().path(), "/apis/networking.k8s.io/v1/networkpolicies");
        assert_eq!(Kind::of::<Pod>().path(), "/api/v1/pods");
        assert_eq!(Kind::of::<Namespace>().namespace(Some("x")), "");
        assert_eq!(Kind::of::<Service>().namespace(None), "default");
        assert_eq!(Kind::of::<Node>().namespace(None), "");
        assert_eq!(Kind::ClusterNetworkPolicy.path(), "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies");
    }
}
