//! An in-process fake Kubernetes API server for the end-to-end tests of the
//! agent's `kube` cluster source.
//!
//! It speaks enough of the API conventions that an unmodified kube-rs client
//! (`Api::list`/`get`/`watch`, `kube::runtime::watcher` with reflectors, in
//! both the default list-then-watch mode and the streaming-list mode) works
//! against it over plain HTTP on loopback:
//!
//! - `GET` of collections (`/api/v1/pods`, `/api/v1/namespaces/{ns}/pods`,
//!   `/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies`, ...) and
//!   of single objects, for every registered kind (Namespace, Pod, Service,
//!   NetworkPolicy out of the box, any k8s-openapi type on first `apply`).
//! - LIST: a `<Kind>List` at the current global resourceVersion; label
//!   selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`), field selectors
//!   (`=`, `==`, `!=`, on the field labels the real server supports per kind,
//!   e.g. `spec.nodeName` on pods; others are rejected with 400 like the real
//!   server does), `limit`/`continue` pagination over a consistent snapshot,
//!   `resourceVersion` + `resourceVersionMatch`.
//! - WATCH (`watch=true`): newline-delimited JSON events over a chunked
//!   response, resumed from `resourceVersion` out of a bounded history,
//!   `ERROR` events with a 410 `Expired` Status when the version is too old
//!   or [`FakeApi::expire_watches`] was called, `BOOKMARK`s when
//!   `allowWatchBookmarks=true`, `timeoutSeconds`, selectors applied to
//!   events (an object leaving a selector's scope is `DELETED` for that
//!   watcher, one entering it is `ADDED`), and streaming lists
//!   (`sendInitialEvents=true`: synthetic `ADDED`s, then a bookmark annotated
//!   `k8s.io/initial-events-end`).
//! - The `PartialObjectMetadata` content type kube-rs' metadata watcher asks
//!   for.
//!
//! Writes happen in-process through [`FakeApi::apply`] and
//! [`FakeApi::delete`]; the HTTP side is read-only (writes get 405).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

/// The annotation on the bookmark that ends a streaming list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Default `timeoutSeconds` of a watch that sent none (the real server picks
/// 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Paginated lists kept for `continue` tokens; older tokens get 410.
const SNAPSHOTS_KEPT: usize = 32;
/// Request log entries kept.
const LOG_KEPT: usize = 10_000;

/// Tunables of a [`FakeApi`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How many changes (over all kinds) are kept for watches resuming from
    /// an older resourceVersion; a watch from before the window gets 410.
    pub history_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { bookmark_interval: Duration::from_secs(1), history_limit: 1000 }
    }
}

/// Requests served, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    /// Per resource (the URL plural: `pods`, `namespaces`, `networkpolicies`, ...).
    pub counts: BTreeMap<String, RequestCounts>,
    /// `METHOD /path?query` of every request, oldest first (the last 10,000).
    pub log: Vec<String>,
}

/// LIST, WATCH and GET (single object) requests for one resource, counted
/// whatever the answer (errors such as 400, 410 or 422 included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub list: usize,
    pub watch: usize,
    pub get: usize,
}

impl Requests {
    /// The counts for a resource plural (`"pods"`), zero if never requested.
    pub fn get(&self, resource: &str) -> RequestCounts {
        self.counts.get(resource).copied().unwrap_or_default()
    }

    /// The counts for a k8s-openapi type.
    pub fn of<K: k8s_openapi::Resource>(&self) -> RequestCounts {
        self.get(K::URL_PATH_SEGMENT)
    }

    /// LIST requests served for a resource plural (`"pods"`).
    pub fn lists(&self, resource: &str) -> usize {
        self.get(resource).list
    }

    /// WATCH requests served for a resource plural (`"pods"`).
    pub fn watches(&self, resource: &str) -> usize {
        self.get(resource).watch
    }

    /// GET requests of single objects served for a resource plural (`"pods"`).
    pub fn gets(&self, resource: &str) -> usize {
        self.get(resource).get
    }
}

/// A fake Kubernetes API server on 127.0.0.1, serving from its own tokio
/// runtime, so it works from sync tests and from any async runtime alike.
/// Dropping it stops the server and removes the kubeconfig file.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    server: Mutex<Option<Server>>,
    kubeconfig: PathBuf,
}

/// A running accept loop.
struct Server {
    shutdown: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
}

impl FakeApi {
    /// Starts serving on 127.0.0.1:<random port> on its own tokio runtime
    /// thread, with Namespaces, Pods, Services and NetworkPolicies registered.
    pub fn start() -> Result<FakeApi> {
        Self::start_with(Options::default())
    }

    /// [`FakeApi::start`] with non-default [`Options`].
    pub fn start_with(options: Options) -> Result<FakeApi> {
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-api")
            .enable_all()
            .build()
            .context("fake API server runtime")?;
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
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
        let shared = Arc::new(Shared { state: Mutex::new(State::new()), changed, options });
        let api = FakeApi { addr, shared, runtime: Some(runtime), server: Mutex::new(None), kubeconfig };
        api.register::<Namespace>();
        api.register::<Pod>();
        api.register::<Service>();
        api.register::<NetworkPolicy>();
        api.serve(listener);
        Ok(api)
    }

    /// A kubeconfig file (in the temp directory, removed on drop) whose
    /// current context points at this server over plain HTTP, default
    /// namespace `default`, no credentials: for `KUBECONFIG`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address served (the same across [`FakeApi::stop`]/[`FakeApi::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves a kind (empty until something is applied). Namespaces, Pods,
    /// Services and NetworkPolicies are registered from the start; `apply`
    /// registers any other kind. Unregistered kinds get 404, like a server
    /// without that API.
    pub fn register<K: k8s_openapi::Resource>(&self) {
        let info = KindInfo::of::<K>();
        self.shared
            .lock()
            .kinds
            .entry(info.key())
            .or_insert_with(|| Kind { info: Arc::new(info), objects: BTreeMap::new() });
    }

    /// Creates or replaces an object and returns its new resourceVersion.
    /// A change bumps the global resourceVersion and emits ADDED or MODIFIED
    /// to the watchers; applying an object identical to the stored one is a
    /// no-op (no new version, no event), as on a real server. A namespaced
    /// object without a namespace goes to `default`; `uid` and
    /// `creationTimestamp` are filled in (kept across replaces) when absent.
    ///
    /// Panics if the object has no `metadata.name` or does not serialize.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, obj: &K) -> String {
        let value = serde_json::to_value(obj).expect("object serializes to JSON");
        self.apply_value(KindInfo::of::<K>(), value)
    }

    /// Applies an object given as JSON (`apiVersion` and `kind` set) of a
    /// registered kind. Namespaces, Pods, Services and NetworkPolicies are
    /// checked by deserializing them into their k8s-openapi types, so a
    /// malformed one is an error here rather than in the client.
    pub fn apply_json(&self, value: Value) -> Result<String> {
        fn typed<K>(api: &FakeApi, value: Value) -> Result<String>
        where
            K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
        {
            let obj: K = serde_json::from_value(value).with_context(|| format!("not a valid {}", K::KIND))?;
            Ok(api.apply(&obj))
        }
        let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if value.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
            anyhow::bail!("{api_version} {kind} without metadata.name");
        }
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => typed::<Namespace>(self, value),
            ("v1", "Pod") => typed::<Pod>(self, value),
            ("v1", "Service") => typed::<Service>(self, value),
            ("networking.k8s.io/v1", "NetworkPolicy") => typed::<NetworkPolicy>(self, value),
            _ => {
                let info = {
                    let st = self.shared.lock();
                    let found = st.kinds.values().find(|k| k.info.api_version == api_version && k.info.kind == kind);
                    let info = found.ok_or_else(|| anyhow!("{api_version} {kind} is not a served kind"))?;
                    (*info.info).clone()
                };
                Ok(self.apply_value(info, value))
            }
        }
    }

    /// Applies every object in a YAML (or JSON) text of one or more
    /// documents, `*List` documents included, such as
    /// [`crate::Topology::manifests`] and [`crate::np`] produce. Returns how
    /// many objects were applied; stops at the first bad one.
    pub fn apply_manifests(&self, text: &str) -> Result<usize> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| anyhow!("invalid YAML: {e}"))?;
        let mut applied = 0;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let is_list = doc.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"));
            let objects = if is_list { doc["items"].as_array().cloned().unwrap_or_default() } else { vec![doc] };
            for obj in objects {
                self.apply_json(obj)?;
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Deletes an object (immediately: no graceful deletionTimestamp phase;
    /// apply one first to mimic that), emitting DELETED with the object's
    /// last state at the deletion's resourceVersion. Returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) -> bool {
        let info = KindInfo::of::<K>();
        let namespace = if info.namespaced { namespace.unwrap_or("default") } else { "" };
        let mut st = self.shared.lock();
        let Some(kind) = st.kinds.get_mut(&info.key()) else { return false };
        let Some(old) = kind.objects.remove(&(namespace.to_string(), name.to_string())) else { return false };
        st.rv += 1;
        let rv = st.rv;
        let mut gone = old.clone();
        set_rv(&mut gone, rv);
        st.record(Change { rv, key: info.key(), op: Op::Deleted, old: Some(old), new: gone }, &self.shared.options);
        drop(st);
        self.shared.notify();
        true
    }

    /// A stored object, as clients would get it.
    pub fn get<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let info = KindInfo::of::<K>();
        let namespace = if info.namespaced { namespace.unwrap_or("default") } else { "" };
        let st = self.shared.lock();
        let obj = st.kinds.get(&info.key())?.objects.get(&(namespace.to_string(), name.to_string()))?;
        Some(serde_json::from_value(obj.clone()).expect("stored object deserializes"))
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
        if self.server.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        let mut last = None;
        // The port may take a moment to be free again.
        for _ in 0..50 {
            match bind(self.addr) {
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

    /// Counters (LIST/WATCH/GET per resource) and the request log.
    pub fn requests(&self) -> Requests {
        self.shared.lock().requests.clone()
    }

    fn apply_value(&self, info: KindInfo, mut value: Value) -> String {
        let meta = value.get_mut("metadata").and_then(Value::as_object_mut).expect("object has metadata");
        let name = meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).expect("object has a name");
        let name = name.to_string();
        let namespace = if info.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default");
            let ns = ns.to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        meta.remove("resourceVersion");

        let mut st = self.shared.lock();
        let key = info.key();
        let objects = &mut st
            .kinds
            .entry(key.clone())
            .or_insert_with(|| Kind { info: Arc::new(info), objects: BTreeMap::new() })
            .objects;
        let old = objects.get(&(namespace.clone(), name.clone())).cloned();
        {
            let meta = value["metadata"].as_object_mut().expect("metadata is an object");
            for field in ["uid", "creationTimestamp"] {
                if meta.get(field).is_none_or(Value::is_null) {
                    let kept = old.as_ref().and_then(|o| o["metadata"].get(field)).cloned();
                    meta.insert(field.into(), kept.unwrap_or(Value::Null));
                }
            }
            if meta["uid"].is_null() {
                st.uids += 1;
                meta.insert("uid".into(), Value::String(format!("00000000-0000-4000-8000-{:012x}", st.uids)));
            }
            if meta["creationTimestamp"].is_null() {
                let now = k8s_openapi::jiff::Timestamp::now().as_second();
                let now = k8s_openapi::jiff::Timestamp::from_second(now).expect("current time is valid");
                meta.insert("creationTimestamp".into(), Value::String(now.to_string()));
            }
        }
        if let Some(old) = &old {
            let mut unversioned = old.clone();
            if let Some(meta) = unversioned["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            if unversioned == value {
                return old["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            }
        }
        st.rv += 1;
        let rv = st.rv;
        set_rv(&mut value, rv);
        let objects = &mut st.kinds.get_mut(&key).expect("kind registered").objects;
        objects.insert((namespace, name), value.clone());
        let op = if old.is_some() { Op::Modified } else { Op::Added };
        st.record(Change { rv, key, op, old, new: value }, &self.shared.options);
        drop(st);
        self.shared.notify();
        rv.to_string()
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives as long as the server")
    }

    fn serve(&self, listener: StdTcpListener) {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        self.runtime().spawn(accept_loop(listener, shared, shutdown_rx, done_tx));
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
    namespace: default
current-context: fake
users:
- name: fake
  user: {{}}
"
    )
}

/// A listening socket with SO_REUSEADDR, so a restart can take the same port
/// while the previous connections sit in TIME_WAIT.
fn bind(addr: SocketAddr) -> Result<StdTcpListener> {
    use socket2::{Domain, Socket, Type};
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
                            async move { Ok::<_, Infallible>(handle(&shared, &req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
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

/// (API group, URL plural): what a URL names.
type KindKey = (String, String);

#[derive(Clone, Debug)]
struct KindInfo {
    group: String,
    version: String,
    api_version: String,
    plural: String,
    kind: String,
    namespaced: bool,
}

impl KindInfo {
    fn of<K: k8s_openapi::Resource>() -> KindInfo {
        KindInfo {
            group: K::GROUP.into(),
            version: K::VERSION.into(),
            api_version: K::API_VERSION.into(),
            plural: K::URL_PATH_SEGMENT.into(),
            kind: K::KIND.into(),
            // `Scope` carries no 'static bound, so compare names, not TypeIds.
            namespaced: std::any::type_name::<K::Scope>()
                == std::any::type_name::<k8s_openapi::NamespaceResourceScope>(),
        }
    }

    fn key(&self) -> KindKey {
        (self.group.clone(), self.plural.clone())
    }
}

struct Kind {
    info: Arc<KindInfo>,
    /// By (namespace or "", name): the order a real server lists in.
    objects: BTreeMap<(String, String), Value>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    key: KindKey,
    op: Op,
    /// The previous state (None for Added).
    old: Option<Value>,
    /// The new state; for Deleted, the last state at the deletion's version.
    new: Value,
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
    kinds: BTreeMap<KindKey, Kind>,
    snapshots: VecDeque<Snapshot>,
    next_snapshot: u64,
    uids: u64,
    requests: Requests,
}

impl State {
    fn new() -> State {
        // A fresh etcd is at revision 1.
        State {
            rv: 1,
            history_start: 1,
            history: VecDeque::new(),
            epoch: 0,
            kinds: BTreeMap::new(),
            snapshots: VecDeque::new(),
            next_snapshot: 1,
            uids: 0,
            requests: Requests::default(),
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

    fn count(&mut self, plural: &str, f: impl FnOnce(&mut RequestCounts)) {
        f(self.requests.counts.entry(plural.to_string()).or_default());
    }
}

struct Shared {
    state: Mutex<State>,
    /// Ticks on every change and expiry; watches wait on it.
    changed: watch::Sender<u64>,
    options: Options,
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
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().filter(|(k, _)| !k.is_empty()).collect())
        .unwrap_or_default();
    {
        let mut st = shared.lock();
        if st.requests.log.len() >= LOG_KEPT {
            st.requests.log.remove(0);
        }
        st.requests.log.push(format!("{} {}", req.method(), req.uri()));
    }
    let path = req.uri().path();
    match path {
        "/version" => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "35", "gitVersion": "v1.35.0-palisade-fake",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
                    "goVersion": "go", "compiler": "gc", "platform": "linux/amd64"
                }),
            );
        }
        "/healthz" | "/livez" | "/readyz" => {
            return Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        }
        _ => {}
    }
    if req.method() != Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the fake API server is read-only over HTTP: {} is not supported", req.method()),
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return not_found_path(),
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return not_found_path(),
    };
    let info = {
        let st = shared.lock();
        match st.kinds.get(&(group.to_string(), plural.to_string())) {
            Some(kind) if kind.info.version == version => kind.info.clone(),
            _ => return not_found_path(),
        }
    };
    // Namespaced kinds are named inside a namespace; cluster-scoped ones never are.
    if (namespace.is_some() && !info.namespaced) || (name.is_some() && namespace.is_none() && info.namespaced) {
        return not_found_path();
    }
    let watching = name.is_none() && matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    shared.lock().count(&info.plural, |c| match (name, watching) {
        (Some(_), _) => c.get += 1,
        (None, true) => c.watch += 1,
        (None, false) => c.list += 1,
    });
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    if let Some(name) = name {
        return get_object(shared, &info, namespace.unwrap_or(""), name, metadata_only);
    }
    let filter = match Filter::parse(&info, namespace, &query) {
        Ok(filter) => filter,
        Err(message) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if watching {
        start_watch(shared, info, filter, &query, metadata_only)
    } else {
        list(shared, &info, &filter, &query, metadata_only)
    }
}

fn get_object(shared: &Shared, info: &KindInfo, namespace: &str, name: &str, metadata_only: bool) -> Response<Body> {
    let st = shared.lock();
    let found = st.kinds.get(&info.key()).and_then(|k| k.objects.get(&(namespace.to_string(), name.to_string())));
    match found {
        Some(obj) => json_response(StatusCode::OK, &project(obj, metadata_only)),
        None => {
            let mut body = status_body(404, "NotFound", &format!("{} \"{name}\" not found", info.resource()));
            body["details"] = json!({"name": name, "group": info.group, "kind": info.plural});
            json_response(StatusCode::NOT_FOUND, &body)
        }
    }
}

impl KindInfo {
    /// `pods` or `networkpolicies.networking.k8s.io`, as error messages say.
    fn resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }
}

fn list(
    shared: &Shared,
    info: &KindInfo,
    filter: &Filter,
    query: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let param = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let limit = match param("limit").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid limit"),
    };
    let mut st = shared.lock();
    let (rv, items, offset) = if let Some(token) = param("continue") {
        if param("resourceVersion").is_some() {
            return invalid("specifying resource version is not allowed when using continue");
        }
        let snapshot = token
            .split_once(':')
            .and_then(|(id, offset)| Some((id.parse::<u64>().ok()?, offset.parse::<usize>().ok()?)))
            .and_then(|(id, offset)| Some((st.snapshots.iter().find(|s| s.id == id)?, offset)));
        let Some((snapshot, offset)) = snapshot else {
            return status_response(
                StatusCode::GONE,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            );
        };
        (snapshot.rv, snapshot.items.clone(), offset)
    } else {
        match (param("resourceVersion"), param("resourceVersionMatch")) {
            (None, Some(_)) => return invalid("resourceVersionMatch is forbidden unless resourceVersion is provided"),
            (Some(_), Some(m)) if m != "NotOlderThan" && m != "Exact" => {
                return invalid(&format!("resourceVersionMatch: unsupported value {m:?}"));
            }
            (Some(rv), m) => {
                let Ok(wanted) = rv.parse::<u64>() else {
                    return invalid(&format!("invalid resource version {rv:?}"));
                };
                if m == Some("Exact") && wanted == 0 {
                    return invalid("resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"");
                }
                if wanted > st.rv {
                    return too_large_rv();
                }
                if m == Some("Exact") && wanted != st.rv {
                    // Only the current state is kept.
                    return status_response(
                        StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {wanted} ({})", st.rv),
                    );
                }
            }
            (None, None) => {}
        }
        let items: Vec<Value> = st
            .kinds
            .get(&info.key())
            .map(|k| k.objects.values().filter(|o| filter.matches(o)).cloned().collect())
            .unwrap_or_default();
        (st.rv, Arc::new(items), 0)
    };
    let end = if limit == 0 { items.len() } else { items.len().min(offset.saturating_add(limit)) };
    let offset = offset.min(end);
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
            let mut item = project(o, metadata_only);
            if !metadata_only && let Some(map) = item.as_object_mut() {
                // A real server's list items carry no apiVersion/kind.
                map.remove("apiVersion");
                map.remove("kind");
            }
            item
        })
        .collect();
    let (api_version, kind) = if metadata_only {
        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
    } else {
        (info.api_version.clone(), format!("{}List", info.kind))
    };
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": page}),
    )
}

/// What one watch sends.
struct WatchSpec {
    info: Arc<KindInfo>,
    filter: Filter,
    metadata_only: bool,
    bookmarks: bool,
    timeout: Duration,
    epoch: u64,
}

fn start_watch(
    shared: &Arc<Shared>,
    info: Arc<KindInfo>,
    filter: Filter,
    query: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let param = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let bookmarks = param("allowWatchBookmarks") == Some("true");
    let initial_events = match param("sendInitialEvents") {
        None => None,
        Some("false") => Some(false),
        Some("true") => Some(true),
        Some(other) => return invalid(&format!("sendInitialEvents: invalid value {other:?}")),
    };
    let timeout = match param("timeoutSeconds").map(str::parse::<u64>) {
        None | Some(Ok(0)) => DEFAULT_WATCH_TIMEOUT,
        Some(Ok(secs)) => Duration::from_secs(secs),
        Some(Err(_)) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid timeoutSeconds"),
    };
    match (initial_events, param("resourceVersionMatch")) {
        (Some(true), Some("NotOlderThan")) if bookmarks => {}
        (Some(false), Some("NotOlderThan")) | (None, None) => {}
        (Some(true), _) => {
            return invalid(
                "sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
            );
        }
        (Some(false), _) => return invalid("sendInitialEvents requires resourceVersionMatch=NotOlderThan"),
        (None, Some(_)) => {
            return invalid("resourceVersionMatch is forbidden for watch unless sendInitialEvents is set");
        }
    }
    let initial_events = initial_events == Some(true);
    let rv_param = param("resourceVersion");
    let wanted = match rv_param.map(str::parse::<u64>) {
        None => None,
        Some(Ok(rv)) => Some(rv),
        Some(Err(_)) => return invalid(&format!("invalid resource version {:?}", rv_param.unwrap_or(""))),
    };

    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let st = shared.lock();
    // Subscribe under the lock: every change after this snapshot ticks it.
    let changes = shared.changed.subscribe();
    let mut lines = Vec::new();
    let mut cursor = st.rv;
    let mut finished = false;
    let snapshot = match wanted {
        Some(rv) if rv > st.rv => {
            lines.push(event_line("ERROR", &too_large_rv_body()));
            finished = true;
            false
        }
        // "Start at most recent" / "start at any", or a streaming list (any
        // state not older than `rv` qualifies: the current one does):
        // synthetic ADDED events for the current state, then changes.
        None | Some(0) => true,
        Some(_) if initial_events => true,
        Some(rv) if rv < st.history_start => {
            lines.push(event_line("ERROR", &expired_body(rv, st.history_start)));
            finished = true;
            false
        }
        // Resume: the task replays the history after `rv`.
        Some(rv) => {
            cursor = rv;
            false
        }
    };
    if snapshot {
        for obj in st.kinds.get(&info.key()).into_iter().flat_map(|k| k.objects.values()) {
            if filter.matches(obj) {
                lines.push(event_line("ADDED", &project(obj, metadata_only)));
            }
        }
        if initial_events {
            lines.push(bookmark_line(&info, metadata_only, cursor, true));
        }
    }
    let spec = WatchSpec { info, filter, metadata_only, bookmarks, timeout, epoch: st.epoch };
    drop(st);
    for line in lines {
        let _ = tx.send(line);
    }
    if !finished {
        tokio::spawn(run_watch(shared.clone(), spec, cursor, changes, tx));
    }
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(body).boxed())
        .expect("valid response")
}

async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    mut cursor: u64,
    mut changes: watch::Receiver<u64>,
    tx: mpsc::UnboundedSender<Bytes>,
) {
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
                if tx.send(bookmark_line(&spec.info, spec.metadata_only, cursor, false)).is_err() {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = tx.closed() => return,
        }
    }
}

/// The events after `cursor` for one watch; true when the watch must end
/// (expired: the last line is the 410 ERROR).
fn catch_up(shared: &Shared, spec: &WatchSpec, cursor: &mut u64) -> (Vec<Bytes>, bool) {
    let st = shared.lock();
    if st.epoch != spec.epoch || *cursor < st.history_start {
        return (vec![event_line("ERROR", &expired_body(*cursor, st.history_start.max(st.rv)))], true);
    }
    let key = spec.info.key();
    let start = st.history.partition_point(|c| c.rv <= *cursor);
    let mut lines = Vec::new();
    for change in st.history.range(start..) {
        if change.key != key {
            continue;
        }
        if let Some((kind, obj)) = spec.filter.event_for(change) {
            lines.push(event_line(kind, &project(&obj, spec.metadata_only)));
        }
    }
    *cursor = st.rv;
    (lines, false)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("event serializes");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(info: &KindInfo, metadata_only: bool, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    let (kind, api_version) = if metadata_only {
        ("PartialObjectMetadata", "meta.k8s.io/v1")
    } else {
        (info.kind.as_str(), info.api_version.as_str())
    };
    event_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}))
}

/// An object as sent: whole, or as `PartialObjectMetadata`.
fn project(obj: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
    } else {
        obj.clone()
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn expired_body(rv: u64, current: u64) -> Value {
    status_body(410, "Expired", &format!("too old resource version: {rv} ({current})"))
}

fn too_large_rv_body() -> Value {
    let mut body = status_body(504, "Timeout", "Too large resource version");
    body["details"] = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
    body
}

fn too_large_rv() -> Response<Body> {
    json_response(StatusCode::GATEWAY_TIMEOUT, &too_large_rv_body())
}

fn invalid(message: &str) -> Response<Body> {
    status_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

fn not_found_path() -> Response<Body> {
    status_response(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource")
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

// ---------------------------------------------------------------------------
// Selectors

/// Which objects a request sees: a namespace, label and field selectors.
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

impl Filter {
    fn parse(info: &KindInfo, namespace: Option<&str>, query: &HashMap<String, String>) -> Result<Filter, String> {
        let labels = match query.get("labelSelector") {
            Some(s) => parse_label_selector(s).map_err(|e| format!("unable to parse requirement: {e}"))?,
            None => Vec::new(),
        };
        let fields = match query.get("fieldSelector") {
            Some(s) => parse_field_selector(s)?,
            None => Vec::new(),
        };
        let supported = supported_fields(&info.kind);
        for f in &fields {
            if !supported.contains(&f.field.as_str()) {
                return Err(format!(
                    "Unable to find \"{}/{}, Resource={}\" that match label selector \"{}\", field selector \"{}\": \
                     field label not supported: {}",
                    info.group,
                    info.version,
                    info.plural,
                    query.get("labelSelector").map(String::as_str).unwrap_or(""),
                    query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                    f.field
                ));
            }
        }
        Ok(Filter { namespace: namespace.map(str::to_string), labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        let labels = meta["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
            LabelRequirement::GreaterThan(k, n) => label(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l > *n),
            LabelRequirement::LessThan(k, n) => label(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l < *n),
        });
        labels_match && self.fields.iter().all(|f| (field_value(obj, &f.field) == f.value) == f.equal)
    }

    /// What a change looks like to this watcher, as the real watch cache
    /// sends it: leaving the selection is DELETED (with the previous state at
    /// the change's version), entering it is ADDED.
    fn event_for(&self, change: &Change) -> Option<(&'static str, Value)> {
        let old_in = change.old.as_ref().is_some_and(|o| self.matches(o));
        if change.op == Op::Deleted {
            return old_in.then(|| ("DELETED", change.new.clone()));
        }
        match (old_in, self.matches(&change.new)) {
            (false, true) => Some(("ADDED", change.new.clone())),
            (true, true) => Some(("MODIFIED", change.new.clone())),
            (true, false) => {
                let mut old = change.old.clone().unwrap_or_default();
                set_rv(&mut old, change.rv);
                Some(("DELETED", old))
            }
            (false, false) => None,
        }
    }
}

/// The field labels the real API server accepts in field selectors, per kind.
fn supported_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Namespace" => &["metadata.name", "status.phase"],
        "Service" => &["metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"],
        "Node" => &["metadata.name", "spec.unschedulable"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

/// A field's value as field selectors compare it: missing is "".
fn field_value(obj: &Value, field: &str) -> String {
    let value = field.split('.').try_fold(obj, |v, part| v.get(part));
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.hostNetwork" || field == "spec.unschedulable" => "false".into(),
        _ => String::new(),
    }
}

/// `a=b,c!=d`, with `\` escaping `,`, `=`, `!` and `\` in values.
fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut terms = Vec::new();
    let mut term = String::new();
    let mut chars = selector.chars();
    let mut raw_terms = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                term.push(c);
                if let Some(n) = chars.next() {
                    term.push(n);
                }
            }
            ',' => raw_terms.push(std::mem::take(&mut term)),
            _ => term.push(c),
        }
    }
    raw_terms.push(term);
    for raw in raw_terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = raw.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = raw.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = raw.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid field selector: {raw:?}: no operator"));
        };
        let mut unescaped = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(n @ ('\\' | ',' | '=' | '!')) => unescaped.push(n),
                    _ => return Err(format!("invalid field selector value {value:?}: invalid escape")),
                }
            } else {
                unescaped.push(c);
            }
        }
        terms.push(FieldRequirement { field: field.trim().to_string(), value: unescaped, equal });
    }
    Ok(terms)
}

fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    let valid_key =
        |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    let mut requirements = Vec::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            if !valid_key(key) {
                return Err(format!("invalid label key {key:?}"));
            }
            requirements.push(LabelRequirement::NotExists(key.into()));
            continue;
        }
        let key_end = part.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')));
        let (key, rest) = match key_end {
            Some(i) => (&part[..i], part[i..].trim_start()),
            None => (part, ""),
        };
        if !valid_key(key) {
            return Err(format!("invalid label key {key:?} in {part:?}"));
        }
        let key = key.to_string();
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("expected a parenthesized set of values in {part:?}"))?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
        };
        let requirement = if rest.is_empty() {
            LabelRequirement::Exists(key)
        } else if let Some(values) = rest.strip_prefix("notin").filter(|r| r.trim_start().starts_with('(')) {
            LabelRequirement::NotIn(key, set(values)?)
        } else if let Some(values) = rest.strip_prefix("in").filter(|r| r.trim_start().starts_with('(')) {
            LabelRequirement::In(key, set(values)?)
        } else if let Some(v) = rest.strip_prefix("!=") {
            LabelRequirement::NotEquals(key, v.trim().into())
        } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
            LabelRequirement::Equals(key, v.trim().into())
        } else if let Some(v) = rest.strip_prefix('>') {
            LabelRequirement::GreaterThan(key, v.trim().parse().map_err(|_| format!("{part:?}: not an integer"))?)
        } else if let Some(v) = rest.strip_prefix('<') {
            LabelRequirement::LessThan(key, v.trim().parse().map_err(|_| format!("{part:?}: not an integer"))?)
        } else {
            return Err(format!("unknown operator in {part:?}"));
        };
        requirements.push(requirement);
    }
    Ok(requirements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(labels: Value, node: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "x", "labels": labels}, "spec": {"nodeName": node}})
    }

    fn filter(labels: &str, fields: &str) -> Filter {
        let mut q = HashMap::new();
        q.insert("labelSelector".to_string(), labels.to_string());
        q.insert("fieldSelector".to_string(), fields.to_string());
        Filter::parse(&KindInfo::of::<Pod>(), None, &q).unwrap()
    }

    #[test]
    fn label_selectors() {
        let o = obj(json!({"app": "web", "tier": "3"}), "n1");
        for (selector, expected) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("missing notin (a)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier>2", true),
            ("app=web,tier<2", false),
            ("app in (db),tier", false),
        ] {
            assert_eq!(filter(selector, "").matches(&o), expected, "{selector}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}), "n1");
        assert!(filter("", "spec.nodeName=n1").matches(&o));
        assert!(filter("", "spec.nodeName==n1,metadata.name=p").matches(&o));
        assert!(!filter("", "spec.nodeName!=n1").matches(&o));
        assert!(filter("", "spec.hostNetwork=false").matches(&o));
        assert!(filter("", "status.podIP=").matches(&o));
        let mut q = HashMap::new();
        q.insert("fieldSelector".to_string(), "spec.bogus=1".to_string());
        let err = Filter::parse(&KindInfo::of::<Pod>(), None, &q).err().unwrap();
        assert!(err.contains("field label not supported: spec.bogus"), "{err}");
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<FakeApi>();
    }

    #[test]
    fn scope_detection() {
        assert!(KindInfo::of::<Pod>().namespaced);
        assert!(KindInfo::of::<NetworkPolicy>().namespaced);
        assert!(!KindInfo::of::<Namespace>().namespaced);
    }
}
