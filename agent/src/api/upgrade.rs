//! The local API over the browser view's listener: `GET /api/socket` with
//! `Upgrade: palisade-api` switches the connection to exactly the unix
//! socket's protocol ([`super::serve_stream`]). That listener sits on the
//! node's loopback, so this adds nothing on the network; `kubectl
//! palisade` reaches it through the API server's port-forward (kubelet
//! connects inside the host-network pod, i.e. on the node's loopback).
//! It is answered only to a loopback peer naming a loopback host, even when
//! `--ui-allow-remote` opens the page to the network. A browser cannot send
//! it: `Upgrade` is a header scripts may not set.

use crate::state::Shared;
use anyhow::{Context, Result, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The path the upgrade is asked on.
pub const PATH: &str = "/api/socket";
/// The `Upgrade` token.
pub const PROTOCOL: &str = "palisade-api";
/// The longest response head a client reads.
const MAX_HEAD: usize = 8 * 1024;

/// Whether a request to the listener is for the API.
pub fn wanted<B>(req: &Request<B>) -> bool {
    req.uri().path() == PATH
}

/// Answers a request for the API: 101 Switching Protocols, then the API on
/// the connection; 400 unless it asks for [`PROTOCOL`].
pub fn respond(mut req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let asks =
        req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !asks {
        let mut r = Response::new(Full::new(Bytes::from(format!("{PATH} needs Upgrade: {PROTOCOL}\n"))));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                if let Err(e) = super::serve_stream(TokioIo::new(io), &shared).await {
                    tracing::debug!("api client over {PATH}: {e:#}");
                }
            }
            Err(e) => tracing::debug!("api upgrade: {e}"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut().insert(UPGRADE, HeaderValue::from_static(PROTOCOL));
    r
}

/// The client's side: asks for the upgrade on a fresh connection to the
/// listener and returns the stream, now speaking the socket protocol
/// ([`super::request_on`]).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Result<BufReader<S>> {
    let head = format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    let mut r = BufReader::new(stream);
    let (mut status, mut read) = (String::new(), 0);
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.context("reading the agent's answer")?;
        read += n;
        if n == 0 {
            bail!("the connection closed before the agent answered");
        }
        if read > MAX_HEAD {
            bail!("the agent's answer is too long");
        }
        if status.is_empty() {
            status = line.trim_end().to_string();
        } else if line == "\r\n" || line == "\n" {
            break;
        }
    }
    if status.split_whitespace().nth(1) != Some("101") {
        bail!("the agent refused the API upgrade: {status} (is it a palisade agent with --ui-addr set?)");
    }
    Ok(r)
}
