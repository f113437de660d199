//! `kubectl palisade trace`: a connection is judged twice, egress on the
//! source's node and ingress on the destination's, so each side is asked
//! of the agent that enforces it, which checks its own kernel's maps. The
//! answer is the source agent's trace with the ingress side from the
//! destination's agent.

use super::{AgentConn, Target};
use crate::api::Request;
use crate::trace::{EndpointRef, Query, Trace};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::Serialize;

/// A trace and the nodes whose agents answered for each side.
#[derive(Debug, Serialize)]
pub struct NodeTrace {
    #[serde(flatten)]
    pub trace: Trace,
    /// The node whose agent judged egress (the source's), and ingress.
    pub egress_node: String,
    pub ingress_node: String,
}

/// The node a pod end runs on (None for an address).
async fn node_of(client: &kube::Client, end: &EndpointRef) -> Result<Option<String>> {
    let EndpointRef::Pod(ns, name) = end else { return Ok(None) };
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get(name).await.with_context(|| format!("pod {ns}/{name}"))?;
    Ok(pod.spec.and_then(|s| s.node_name))
}

async fn ask(agent: &AgentConn, query: &Query) -> Result<Trace> {
    let mut v = agent.reply(&Request::Trace { query: query.clone() }).await?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("node {}: {e}", agent.node);
    }
    Ok(serde_json::from_value(v["trace"].take())?)
}

/// Traces `query` on the agents of both ends' nodes (an address end has
/// none: the other end's agent answers for both sides; with two
/// addresses, any agent).
pub async fn trace(client: &kube::Client, target: &Target, query: &Query) -> Result<NodeTrace> {
    let (from, to) = tokio::try_join!(node_of(client, &query.from), node_of(client, &query.to))?;
    let agents = super::agents(client, target).await?;
    let agent_on = |node: &Option<String>| -> Result<Option<&AgentConn>> {
        match node {
            None => Ok(None),
            Some(n) => {
                agents.iter().find(|a| &a.node == n).map(Some).with_context(|| format!("node {n} has no agent pod"))
            }
        }
    };
    let (src, dst) = (agent_on(&from)?, agent_on(&to)?);
    let (src, dst) = match (src, dst) {
        (Some(s), Some(d)) => (s, d),
        (Some(s), None) => (s, s),
        (None, Some(d)) => (d, d),
        (None, None) => {
            let any = agents.first().context("no agent pods")?;
            (any, any)
        }
    };
    let mut t = ask(src, query).await?;
    if dst.node != src.node {
        let at_destination = ask(dst, query).await?;
        t.ingress = at_destination.ingress;
        t.allowed = t.egress.allowed && t.ingress.allowed;
    }
    Ok(NodeTrace { trace: t, egress_node: src.node.clone(), ingress_node: dst.node.clone() })
}
