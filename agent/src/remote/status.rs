//! `kubectl palisade status`: every node's agent in one table. The Nodes
//! are listed too, so a node without an agent pod shows; every agent is
//! asked at once, each with its own deadline, so one that hangs costs
//! only its own row.

use super::{AgentConn, Target};
use crate::api::Request;
use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long an agent may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's row.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// The agent pod, if the node has one.
    pub pod: Option<String>,
    /// What is wrong (empty: the agent answered, in sync, reading its source).
    pub problems: Vec<String>,
    /// The agent's own status (`palisade status -o json`), if it answered.
    pub status: Option<Value>,
}

/// Asks every agent (and lists the Nodes) once.
pub async fn gather(client: &kube::Client, target: &Target) -> Result<Vec<NodeStatus>> {
    let agents = super::agents(client, target).await?;
    // Listing Nodes needs `list nodes`; without it, only the agents show.
    let nodes: Vec<String> = match Api::<Node>::all(client.clone()).list(&ListParams::default()).await {
        Ok(list) => list.items.into_iter().filter_map(|n| n.metadata.name).collect(),
        Err(e) => {
            eprintln!("kubectl-palisade: cannot list nodes ({e}); nodes without an agent pod are not shown");
            Vec::new()
        }
    };
    let answers = futures_util::future::join_all(agents.iter().map(ask)).await;
    let mut rows: BTreeMap<String, NodeStatus> = nodes
        .into_iter()
        .map(|n| {
            let row = NodeStatus { node: n.clone(), pod: None, problems: vec!["no agent pod".into()], status: None };
            (n, row)
        })
        .collect();
    for (agent, answer) in agents.iter().zip(answers) {
        let mut problems = Vec::new();
        if !agent.running {
            problems.push("agent pod not running".into());
        }
        let status = match answer {
            Ok(st) => {
                problems.extend(judge(&st));
                Some(st)
            }
            Err(e) => {
                problems.push(format!("no answer: {e:#}"));
                None
            }
        };
        let row = NodeStatus { node: agent.node.clone(), pod: Some(agent.pod.clone()), problems, status };
        rows.insert(agent.node.clone(), row);
    }
    Ok(rows.into_values().collect())
}

async fn ask(agent: &AgentConn) -> Result<Value> {
    tokio::time::timeout(ANSWER_TIMEOUT, agent.reply(&Request::Status))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ANSWER_TIMEOUT:?}"))?
}

/// What is wrong with an agent, from its status.
fn judge(st: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(why) = st["stale"].as_str() {
        problems.push(format!("stale: {why}"));
    }
    if st["in_sync"] != true {
        problems.push("not in sync".into());
    }
    for e in st["sync_errors"].as_array().into_iter().flatten() {
        problems.push(format!("sync error: {}", e.as_str().unwrap_or_default()));
    }
    if let Some(e) = st["interfaces_error"].as_str() {
        problems.push(format!("interfaces: {e}"));
    }
    problems
}

/// Whether every node has an agent that answered without problems.
pub fn all_well(rows: &[NodeStatus]) -> bool {
    rows.iter().all(|r| r.problems.is_empty())
}

/// The table.
pub fn print(rows: &[NodeStatus]) {
    println!(
        "{:<20} {:<28} {:<8} {:<25} {:<9} {:>6} {:>6} {:>11}  PROBLEMS",
        "NODE", "AGENT POD", "IN SYNC", "APPLIED AT", "VERSION", "ERRORS", "PODS", "EVENTS LOST"
    );
    for r in rows {
        let st = r.status.as_ref();
        let field = |k: &str| st.and_then(|s| s[k].as_str()).unwrap_or("-").to_string();
        let pods = st
            .and_then(|s| s["pods"].as_array())
            .map(|p| p.iter().filter(|p| p["state"].as_str().is_some_and(|s| s.starts_with("enforced"))).count());
        let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<20} {:<28} {:<8} {:<25} {:<9} {:>6} {:>6} {:>11}  {}",
            r.node,
            r.pod.as_deref().unwrap_or("-"),
            st.map_or("-".to_string(), |s| (s["in_sync"] == true).to_string()),
            field("applied_at"),
            field("version"),
            num(st.and_then(|s| s["errors"].as_array()).map(|e| e.len() as u64)),
            num(pods.map(|p| p as u64)),
            num(st.and_then(|s| s["counters"]["events_lost"].as_u64())),
            if r.problems.is_empty() { "-".to_string() } else { r.problems.join("; ") }
        );
    }
}
