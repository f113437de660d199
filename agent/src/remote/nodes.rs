//! The cluster's agents as a set of named per-node connections, each
//! speaking the local socket's protocol ([`crate::api`]): one request line
//! per connection. Where a connection comes from (a node's unix socket, the
//! Kubernetes API's port-forward to the agent pod) is the [`Connect`]
//! implementation's business; what is asked of every node is here.

use super::merge::{self, Merged};
use crate::api::Request;
use crate::flows::Snapshot;
use anyhow::{Context, Result, bail};
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// A byte stream to one agent.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type Conn = Box<dyn Stream>;

/// Opens fresh connections to one node's agent.
pub trait Connect: Send + Sync {
    fn connect(&self) -> BoxFuture<'_, Result<Conn>>;
}

/// An agent's unix socket (the tests' and a node's own way in).
pub struct Socket(pub PathBuf);

impl Connect for Socket {
    fn connect(&self) -> BoxFuture<'_, Result<Conn>> {
        Box::pin(async move {
            let s = tokio::net::UnixStream::connect(&self.0)
                .await
                .with_context(|| format!("connecting to {}", self.0.display()))?;
            Ok(Box::new(s) as Conn)
        })
    }
}

/// An agent pod reached through the Kubernetes API (`kubectl palisade`).
impl Connect for super::AgentConn {
    fn connect(&self) -> BoxFuture<'_, Result<Conn>> {
        Box::pin(async move { Ok(Box::new(self.open().await?) as Conn) })
    }
}

/// How long a one-line answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's agent.
#[derive(Clone)]
pub struct NodeAgent {
    pub node: String,
    pub connect: Arc<dyn Connect>,
}

impl NodeAgent {
    /// Opens a connection and sends `req` on it.
    pub async fn send(&self, req: &Request) -> Result<Conn> {
        let mut conn = self.connect.connect().await?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        conn.write_all(&line).await?;
        conn.flush().await?;
        Ok(conn)
    }

    /// The one-line answer to `req` (status, trace, flows).
    pub async fn ask<T: serde::de::DeserializeOwned>(&self, req: &Request) -> Result<T> {
        let answer = async {
            let mut r = BufReader::new(self.send(req).await?);
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                bail!("the agent closed the connection");
            }
            serde_json::from_str(&line).context("the agent's answer does not parse (is it an older agent?)")
        };
        tokio::time::timeout(ANSWER_TIMEOUT, answer).await.context("the agent did not answer")?
    }
}

/// Every node's agent.
#[derive(Clone, Default)]
pub struct Nodes(pub Vec<NodeAgent>);

impl Nodes {
    /// The agent pods [`super::agents`] found, one per node.
    pub fn of(conns: Vec<super::AgentConn>) -> Nodes {
        Nodes(conns.into_iter().map(|c| NodeAgent { node: c.node.clone(), connect: Arc::new(c) }).collect())
    }

    /// Asks every agent at once; each node's answer or why there is none.
    pub async fn ask_all<T: serde::de::DeserializeOwned>(&self, req: &Request) -> Vec<(String, Result<T>)> {
        let asks = self.0.iter().map(|a| async move { (a.node.clone(), a.ask(req).await) });
        futures_util::future::join_all(asks).await
    }

    /// Every node's flow record, and the nodes that gave none (and why).
    pub async fn flows(&self) -> (Vec<Snapshot>, Vec<(String, String)>) {
        let mut records = Vec::new();
        let mut missing = Vec::new();
        for (node, r) in self.ask_all::<Snapshot>(&Request::Flows).await {
            match r {
                Ok(s) => records.push(s),
                Err(e) => missing.push((node, format!("{e:#}"))),
            }
        }
        (records, missing)
    }

    /// The merged event stream of the agents on `nodes` (every node when
    /// empty) for an observe request; a node without an agent is an error.
    pub fn observe(&self, req: &Request, nodes: &[String], opts: merge::Options) -> Result<Merged> {
        if let Some(n) = nodes.iter().find(|n| !self.0.iter().any(|a| &a.node == *n)) {
            bail!("no agent on node {n}");
        }
        let picked = self.0.iter().filter(|a| nodes.is_empty() || nodes.contains(&a.node));
        let streams = picked
            .map(|a| {
                let (a, req) = (a.clone(), req.clone());
                (a.node.clone(), async move { a.send(&req).await })
            })
            .collect();
        Ok(merge::merge(streams, opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent that answers one request per connection with `answer`.
    fn fake(dir: &std::path::Path, node: &str, answer: String) -> NodeAgent {
        let path = dir.join(node);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut line = String::new();
                    BufReader::new(r).read_line(&mut line).await.unwrap();
                    assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap()["cmd"], "flows");
                    w.write_all(answer.as_bytes()).await.unwrap();
                });
            }
        });
        NodeAgent { node: node.into(), connect: Arc::new(Socket(path)) }
    }

    #[tokio::test]
    async fn flows_from_every_node_and_the_nodes_without_one() {
        let dir = std::env::temp_dir().join(format!("palisade-agents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let record = |node: &str| {
            let s = Snapshot { node: node.into(), taken_ms: 5, ..Default::default() };
            format!("{}\n", serde_json::to_string(&s).unwrap())
        };
        let agents = Nodes(vec![
            fake(&dir, "n1", record("n1")),
            fake(&dir, "n2", record("n2")),
            fake(&dir, "n3", "not json\n".into()),
            NodeAgent { node: "n4".into(), connect: Arc::new(Socket(dir.join("nobody"))) },
        ]);
        let (records, missing) = agents.flows().await;
        let nodes: Vec<_> = records.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["n1", "n2"]);
        let missing: Vec<_> = missing.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(missing, ["n3", "n4"]);
        assert!(agents.observe(&Request::Flows, &["n9".into()], Default::default()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
