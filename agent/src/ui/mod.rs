//! The browser view: a page (plain HTML, JS and SVG, embedded in the
//! binary) and the JSON it reads, on a listener of its own. Flows name every
//! workload, so unlike /metrics this listener stays on loopback (reached
//! with `kubectl port-forward`) unless the operator says otherwise, and it
//! answers only requests addressed to a loopback name, which keeps a web
//! page elsewhere from reading it through DNS rebinding.
//!
//! The server aggregates ([`flows`]); the page receives aggregates and a
//! bounded tail, never every event.

pub mod cluster;
pub mod flows;
pub mod matrix;
pub mod policies;
mod query;
pub mod source;

use crate::remote::nodes::Nodes;
use crate::state::Shared;
use anyhow::{Context, Result, bail};
use flows::FlowMap;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use query::Query;
use source::Source;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the page is served unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9470";

/// The page's files, embedded: no network access at run time.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("assets/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("/app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
];

/// Refuses an address other hosts could reach, unless `allow_remote`.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address: the page names every workload and its traffic; bind it to \
             127.0.0.1 and reach it with `kubectl port-forward`, or pass --ui-allow-remote"
        ))
    }
}

/// Starts the flow aggregation and serves the page on `addr`, with the
/// local API for `kubectl palisade` on the same listener.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>, allow_remote: bool) -> Result<()> {
    let listener = bind(addr, allow_remote).await?;
    let map = FlowMap::start(shared.clone());
    serve_on(listener, shared.clone(), map, allow_remote, Some(shared)).await
}

/// `kubectl palisade ui`: the page on this machine, fed by every node's
/// agent: their flow records merged (as `advise` merges them), their event
/// streams merged in time order, and the cluster state from the manifests
/// in `cluster_state` or else the Kubernetes API.
pub async fn serve_cluster(
    addr: SocketAddr,
    nodes: Nodes,
    cluster_state: Option<std::path::PathBuf>,
    allow_remote: bool,
) -> Result<()> {
    let listener = bind(addr, allow_remote).await?;
    let source = cluster::ClusterSource::start(nodes.clone(), cluster_state).await?;
    let map = FlowMap::start_cluster(nodes, source.clone())?;
    serve_on(listener, source, map, allow_remote, None).await
}

async fn bind(addr: SocketAddr, allow_remote: bool) -> Result<tokio::net::TcpListener> {
    if let Err(e) = check_addr(addr, allow_remote) {
        bail!("{e}");
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "browser view: http://{addr}/");
    Ok(listener)
}

/// Serves the page from `source`; with `api`, also the local API.
async fn serve_on(
    listener: tokio::net::TcpListener,
    source: Arc<dyn Source>,
    map: FlowMap,
    allow_remote: bool,
    api: Option<Arc<Shared>>,
) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        // The API only to this host's own processes (a port-forward
        // arrives on loopback), whatever `--ui-allow-remote` opens the
        // page to.
        let api = api.clone().filter(|_| peer.ip().to_canonical().is_loopback());
        let (source, map) = (source.clone(), map.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (source, map, api) = (source.clone(), map.clone(), api.clone());
                async move {
                    // The local API for `kubectl palisade` (port-forwarded), after the Host check.
                    if let Some(shared) = api
                        && crate::api::upgrade::wanted(&req)
                        && loopback_host(host_of(&req))
                    {
                        return Ok::<_, std::convert::Infallible>(crate::api::upgrade::respond(req, shared));
                    }
                    Ok(respond(&req, source.as_ref(), &map, allow_remote).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok())
}

/// Whether the request names this host by a loopback name: a browser sends
/// the name it resolved, so a rebound foreign name is refused.
fn loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn respond(
    req: &Request<hyper::body::Incoming>,
    source: &dyn Source,
    map: &FlowMap,
    allow_remote: bool,
) -> Response<Full<Bytes>> {
    if !allow_remote && !loopback_host(host_of(req)) {
        return reply(StatusCode::FORBIDDEN, "text/plain", "the page is served to loopback names only\n".into());
    }
    let q = Query::parse(req.uri().query().unwrap_or(""));
    let path = req.uri().path();
    if let Some((_, kind, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) {
        return reply(StatusCode::OK, kind, body.as_bytes().to_vec());
    }
    let json = |v: Result<serde_json::Value, String>| match v {
        Ok(v) => reply(StatusCode::OK, "application/json", serde_json::to_vec(&v).unwrap_or_default()),
        Err(e) => reply(
            StatusCode::BAD_REQUEST,
            "application/json",
            serde_json::to_vec(&serde_json::json!({ "error": e })).unwrap_or_default(),
        ),
    };
    match path {
        "/api/flows" => json(Ok(map.snapshot(source, &q.list("namespace")))),
        "/api/edge" => json(map.edge(source, q.get("id").unwrap_or("")).await),
        "/api/events" => json(q.filter().map(|f| map.tail(&f, q.num("after").unwrap_or(0), q.num("limit")))),
        "/api/matrix" => json(matrix::matrix(source, map, &q)),
        "/api/trace" => json(trace(source, &q).await),
        "/api/cluster" => json(policies::cluster(source)),
        "/api/pod" => json(policies::pod(source, q.get("pod").unwrap_or(""))),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// `palisade trace` for the page: one pair, port and protocol.
async fn trace(source: &dyn Source, q: &Query) -> Result<serde_json::Value, String> {
    let query = crate::trace::Query {
        from: q.get("from").unwrap_or("").parse()?,
        to: q.get("to").unwrap_or("").parse()?,
        port: q.get("port").unwrap_or("").parse().map_err(|_| "port: expected a port number".to_string())?,
        protocol: q.get("protocol").unwrap_or("TCP").parse()?,
        ipv6: q.get("ipv6") == Some("true"),
    };
    let t = source.trace(&query).await?;
    Ok(serde_json::json!({ "text": t.to_string(), "trace": t }))
}

fn reply(status: StatusCode, kind: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_str(kind).unwrap_or(HeaderValue::from_static("text/plain")));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_unless_allowed() {
        assert!(check_addr("127.0.0.1:9470".parse().unwrap(), false).is_ok());
        assert!(check_addr("[::1]:9470".parse().unwrap(), false).is_ok());
        assert!(check_addr("0.0.0.0:9470".parse().unwrap(), false).is_err());
        assert!(check_addr("10.0.0.1:9470".parse().unwrap(), false).is_err());
        assert!(check_addr("0.0.0.0:9470".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn host_header_must_name_loopback() {
        for ok in ["localhost:9470", "127.0.0.1:9470", "127.0.0.1", "[::1]:9470", "LOCALHOST"] {
            assert!(loopback_host(Some(ok)), "{ok}");
        }
        for bad in ["evil.example:9470", "10.0.0.1:9470", "localhost.evil.example", ""] {
            assert!(!loopback_host(Some(bad)), "{bad}");
        }
        assert!(!loopback_host(None));
    }
}
