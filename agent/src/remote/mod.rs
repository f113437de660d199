//! `kubectl palisade`: every node's agent through the Kubernetes API, with
//! the user's kubeconfig and RBAC. Nothing new listens on the network: an
//! agent is reached with the API server's `pods/portforward` on its
//! browser-view port, which kubelet connects inside the host-network pod,
//! i.e. on the node's loopback, and asked for the local API there
//! ([`crate::api::upgrade`]). The stream then speaks exactly the unix
//! socket's protocol, so every request ([`crate::api::Request`]) works
//! remotely as locally.
//!
//! Use: [`Target::client`], then [`agents`] (one [`AgentConn`] per node),
//! then [`AgentConn::reply`] for one-line answers (status, trace, flows)
//! or [`AgentConn::request`] for a stream (observe).
//!
//! [`nodes`] is the set of per-node connections (any [`nodes::Connect`]:
//! an [`AgentConn`], a node's unix socket) and what is asked of every
//! node; [`merge`] merges their event streams into one (for the ui, and
//! for [`observe`], which adds agents that appear while it follows).

pub mod merge;
pub mod nodes;

pub mod cli;
pub mod observe;
pub mod status;
pub mod trace;

use crate::api::{self, Request};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::time::Duration;
use tokio::io::{BufReader, DuplexStream, Lines};

/// The DaemonSet's namespace (deploy/palisade.yaml).
pub const NAMESPACE: &str = "palisade-system";
/// The labels of the DaemonSet's pods.
pub const SELECTOR: &str = "app.kubernetes.io/name=palisade,app.kubernetes.io/component=agent";
/// The agents' `--ui-addr` port (the default).
pub const PORT: u16 = 9470;
/// How long opening a stream to an agent may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agents are, and which cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// The agents' namespace.
    #[arg(long = "agent-namespace", id = "agent_namespace", default_value = NAMESPACE)]
    pub namespace: String,
    /// The agent pods' labels.
    #[arg(long = "agent-selector", id = "agent_selector", default_value = SELECTOR)]
    pub selector: String,
    /// The agents' --ui-addr port, on the node's loopback.
    #[arg(long = "agent-port", id = "agent_port", default_value_t = PORT)]
    pub port: u16,
    /// The kubeconfig context (default: the current one).
    #[arg(long, id = "kube_context")]
    pub context: Option<String>,
}

impl Default for Target {
    fn default() -> Target {
        Target { namespace: NAMESPACE.into(), selector: SELECTOR.into(), port: PORT, context: None }
    }
}

impl Target {
    /// A client from the user's kubeconfig (`KUBECONFIG`, ~/.kube/config),
    /// or the in-cluster config.
    pub async fn client(&self) -> Result<kube::Client> {
        let options = kube::config::KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = match kube::Config::from_kubeconfig(&options).await {
            Ok(c) => c,
            Err(e) if self.context.is_some() => return Err(e).context("reading the kubeconfig"),
            Err(_) => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// A stream to one agent, speaking the local API's protocol.
pub type AgentStream = BufReader<DuplexStream>;

/// One node's agent pod, and how to reach it.
#[derive(Clone)]
pub struct AgentConn {
    pub node: String,
    pub pod: String,
    /// The pod is Running (an agent that is not may still answer).
    pub running: bool,
    pods: Api<Pod>,
    port: u16,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.node, self.pod)
    }
}

impl AgentConn {
    /// The agent of pod `pod` on `node`, in `namespace`.
    pub fn new(client: &kube::Client, namespace: &str, pod: &str, node: &str, port: u16) -> AgentConn {
        AgentConn {
            node: node.into(),
            pod: pod.into(),
            running: true,
            pods: Api::namespaced(client.clone(), namespace),
            port,
        }
    }

    /// Opens a new stream to the agent: a port-forward through the API
    /// server, upgraded to the API. One request per stream, as on the
    /// socket.
    pub async fn open(&self) -> Result<AgentStream> {
        let what = || format!("node {} (pod {})", self.node, self.pod);
        let mut forward = tokio::time::timeout(OPEN_TIMEOUT, self.pods.portforward(&self.pod, &[self.port]))
            .await
            .map_err(|_| anyhow::anyhow!("port-forward to {} timed out", what()))?
            .with_context(|| format!("port-forward to {}", what()))?;
        let stream = forward.take_stream(self.port).context("port-forward without its stream")?;
        let error = forward.take_error(self.port);
        match tokio::time::timeout(OPEN_TIMEOUT, api::upgrade::connect(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                // Kubelet says on the error channel why it could not connect.
                let why = match error {
                    Some(err) => tokio::time::timeout(Duration::from_secs(1), err).await.ok().flatten(),
                    None => None,
                };
                match why {
                    Some(why) => bail!("{}: {why}", what()),
                    None => Err(e).with_context(what),
                }
            }
            Err(_) => bail!("{}: the agent did not answer within {OPEN_TIMEOUT:?}", what()),
        }
    }

    /// Sends a request on a new stream; the answer's lines (or, for
    /// observe, frames from `.into_inner()`).
    pub async fn request(&self, req: &Request) -> Result<Lines<BufReader<AgentStream>>> {
        api::request_on(self.open().await?, req).await
    }

    /// The one-line answer to a request (status, trace, flows).
    pub async fn reply(&self, req: &Request) -> Result<serde_json::Value> {
        api::reply_on(self.open().await?, req).await.with_context(|| format!("node {}", self.node))
    }
}

/// The agent pods, one per node (by node name): where a node has several
/// (a rollout), the running one created last.
pub async fn agents(client: &kube::Client, target: &Target) -> Result<Vec<AgentConn>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let list = pods
        .list(&ListParams::default().labels(&target.selector))
        .await
        .with_context(|| format!("listing the agent pods in {} ({})", target.namespace, target.selector))?;
    let mut best: std::collections::BTreeMap<String, (bool, String, AgentConn)> = Default::default();
    for p in list.items {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let Some(name) = p.metadata.name.clone() else { continue };
        let running = p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let mut conn = AgentConn::new(client, &target.namespace, &name, &node, target.port);
        conn.running = running;
        let rank = (running, created.clone());
        if best.get(&node).is_none_or(|(r, c, _)| (*r, c.clone()) < rank) {
            best.insert(node, (running, created, conn));
        }
    }
    Ok(best.into_values().map(|(_, _, c)| c).collect())
}

/// [`agents`] in `namespace` with `selector`, on the default port, as
/// (node, agent) pairs.
pub async fn connect_agents(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<(String, AgentConn)>> {
    let target = Target { namespace: namespace.into(), selector: selector.into(), ..Target::default() };
    Ok(agents(client, &target).await?.into_iter().map(|a| (a.node.clone(), a)).collect())
}
