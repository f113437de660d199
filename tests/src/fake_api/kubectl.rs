//! `pods/{name}/portforward` as kube-rs's client speaks it (what `kubectl
//! palisade` uses to reach each agent): a WebSocket upgrade with the
//! `v4.channel.k8s.io` subprotocol; per forwarded port two channels (data
//! `2i`, error `2i+1`), each opened by a frame carrying the port (u16 LE),
//! then binary messages whose first byte is the channel. The server stands
//! in for kubelet too: it connects to the port on 127.0.0.1 inside the
//! pod's network namespace ([`super::FakeApi::forward_pod`]; a host-network
//! agent's is its node's), or sends the reason on the error channel.
//!
//! Also the other reads `kubectl palisade` makes: pods of one namespace
//! (by `labelSelector`, equality terms only) and one pod by name, and the
//! Node list while the main server does not serve Nodes itself
//! ([`super::FakeApi::add_node`]).

use super::{Body, KINDS, Shared, status_response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const SUBPROTOCOL: &str = "v4.channel.k8s.io";

/// What the tests set up: pods that can be forwarded to, and Nodes.
#[derive(Default)]
pub(super) struct Forwards {
    /// (namespace, pod) -> the network namespace its ports are in (None:
    /// this host's).
    pods: Mutex<HashMap<(String, String), Option<String>>>,
    /// Node names, when the main server does not serve Nodes.
    nodes: Mutex<BTreeMap<String, ()>>,
    /// Port-forward requests answered, whatever came of them.
    pub(super) requests: std::sync::atomic::AtomicUsize,
}

impl Forwards {
    pub(super) fn set_pod(&self, namespace: &str, name: &str, netns: Option<&str>) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.into(), name.into()), netns.map(Into::into));
    }

    pub(super) fn remove_pod(&self, namespace: &str, name: &str) {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).remove(&(namespace.into(), name.into()));
    }

    pub(super) fn add_node(&self, name: &str) {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(name.into(), ());
    }
}

/// Whether the main server serves a kind (then its own store holds it).
pub(super) fn served(kind: &str) -> bool {
    KINDS.iter().any(|k| k.kind() == kind)
}

/// What this module answers.
enum Route {
    Nodes,
    /// Pods of a namespace.
    Pods(String),
    Pod(String, String),
    Forward(String, String),
}

fn route(req: &Request<Incoming>) -> Option<Route> {
    let path = req.uri().path();
    let get = req.method() == hyper::Method::GET;
    let watching = req.uri().query().is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
    if path == "/api/v1/nodes" && !served("Node") && get && !watching {
        return Some(Route::Nodes);
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] if get && !watching => Some(Route::Pods(ns.to_string())),
        ["api", "v1", "namespaces", ns, "pods", name] if get => Some(Route::Pod(ns.to_string(), name.to_string())),
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"] => {
            Some(Route::Forward(ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

/// Whether this module answers the request.
pub(super) fn answers(req: &Request<Incoming>) -> bool {
    route(req).is_some()
}

/// Answers a request [`answers`] took.
pub(super) fn respond(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match route(&req) {
        Some(Route::Forward(ns, name)) => forward(shared, &ns, &name, req),
        Some(Route::Pods(ns)) => pods(shared, &ns, &req),
        Some(Route::Pod(ns, name)) => match shared.lock().objects[super::Kind::Pod].get(&(ns, name.clone())) {
            Some(pod) => json_ok(pod),
            None => status_response(StatusCode::NOT_FOUND, "NotFound", &format!("pods \"{name}\" not found")),
        },
        Some(Route::Nodes) | None => nodes(shared),
    }
}

fn json_ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

/// The pods of namespace `ns` whose labels match the request's
/// `labelSelector` (`k=v` terms, comma-separated).
fn pods(shared: &Shared, ns: &str, req: &Request<Incoming>) -> Response<Body> {
    let query: HashMap<String, String> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let mut terms = Vec::new();
    for term in query.get("labelSelector").map(String::as_str).unwrap_or("").split(',').filter(|t| !t.is_empty()) {
        match term.split_once("==").or_else(|| term.split_once('=')) {
            Some((k, v)) if !k.ends_with('!') => terms.push((k.trim().to_string(), v.trim().to_string())),
            _ => return status_response(StatusCode::BAD_REQUEST, "BadRequest", "only k=v label selectors here"),
        }
    }
    let st = shared.lock();
    let items: Vec<Value> = st.objects[super::Kind::Pod]
        .range((ns.to_string(), String::new())..)
        .take_while(|((n, _), _)| n == ns)
        .map(|(_, pod)| pod)
        .filter(|pod| terms.iter().all(|(k, v)| pod["metadata"]["labels"][k.as_str()] == v.as_str()))
        .cloned()
        .collect();
    json_ok(
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn nodes(shared: &Shared) -> Response<Body> {
    let rv = shared.lock().rv.to_string();
    let items: Vec<Value> = shared
        .forwards
        .nodes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .map(|n| json!({"metadata": {"name": n, "resourceVersion": rv}}))
        .collect();
    json_ok(&json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": rv}, "items": items}))
}

fn forward(shared: &Arc<Shared>, ns: &str, name: &str, mut req: Request<Incoming>) -> Response<Body> {
    shared.forwards.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !shared.lock().objects[super::Kind::Pod].contains_key(&(ns.to_string(), name.to_string())) {
        return status_response(StatusCode::NOT_FOUND, "NotFound", &format!("pods \"{name}\" not found"));
    }
    let query: HashMap<String, String> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let ports: Vec<u16> =
        query.get("ports").map(|p| p.split(',').filter_map(|p| p.trim().parse().ok()).collect()).unwrap_or_default();
    if ports.is_empty() {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "no ports given");
    }
    let header = |h: &str| req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "port-forward needs a WebSocket upgrade");
    };
    if !header("sec-websocket-protocol").split(',').any(|p| p.trim() == SUBPROTOCOL) {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "unsupported subprotocol");
    }
    let netns = shared
        .forwards
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(ns.to_string(), name.to_string()))
        .cloned();
    let upgrade = hyper::upgrade::on(&mut req);
    let pod = format!("{ns}/{name}");
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
        serve(ws, &pod, netns, &ports).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .body(Full::new(Bytes::new()).boxed())
        .expect("valid response")
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Forwards the first port (what the client asks for); every port's
/// channels are opened as kubelet does.
async fn serve(mut ws: Ws, pod: &str, netns: Option<Option<String>>, ports: &[u16]) {
    for (i, port) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            let mut open = vec![ch];
            open.extend_from_slice(&port.to_le_bytes());
            if ws.send(Message::binary(open)).await.is_err() {
                return;
            }
        }
    }
    let port = ports[0];
    let target = match netns {
        None => Err(format!("pod {pod} has no forwardable network namespace in this test")),
        Some(netns) => connect(netns, SocketAddr::from(([127, 0, 0, 1], port))).await,
    };
    let tcp = match target {
        Ok(tcp) => tcp,
        Err(e) => {
            let mut msg = vec![1u8];
            msg.extend_from_slice(format!("error forwarding port {port} to pod {pod}: {e}").as_bytes());
            let _ = ws.send(Message::binary(msg)).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let (mut sink, mut stream) = ws.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                    if wr.write_all(&b[1..]).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            n = rd.read(&mut buf[1..]) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[0] = 0;
                    if sink.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

/// A TCP connection to `addr` made inside `netns` (None: here).
async fn connect(netns: Option<String>, addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    // A thread of its own: one that entered a namespace stays there.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = (|| {
            if let Some(ns) = &netns {
                crate::netns::enter(ns).map_err(|e| format!("{e:#}"))?;
            }
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("{addr}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok::<_, String>(s)
        })();
        let _ = tx.send(made);
    });
    let s = rx.await.map_err(|e| e.to_string())??;
    tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
}
