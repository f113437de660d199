//! The HTTP endpoint: /metrics, /healthz (the process answers) and /readyz
//! (the kernel holds the latest valid input, read from a whole view of the
//! node; otherwise 503 with the reason).

use crate::metrics::Metrics;
use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// Why the agent is not ready; ready when there is no reason.
pub struct Readiness(RwLock<Option<String>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(RwLock::new(Some("not synced yet".into())))
    }
}

impl Readiness {
    /// Ready (None) or not, and why.
    pub fn set(&self, not_ready: Option<String>) {
        if let Ok(mut r) = self.0.write() {
            *r = not_ready;
        }
    }

    /// Why the agent is not ready, if it is not.
    pub fn reason(&self) -> Option<String> {
        self.0.read().map(|r| r.clone()).unwrap_or_else(|_| Some("poisoned".into()))
    }
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, readiness) = (metrics.clone(), readiness.clone());
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.encode()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                        "/readyz" => match readiness.reason() {
                            None => (StatusCode::OK, "ready\n".to_string()),
                            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                        },
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    Response::builder().status(status).body(Full::new(Bytes::from(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
