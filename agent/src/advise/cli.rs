//! `palisade flows` and `palisade advise`: arguments, sources, printing.

use super::sources;
use crate::api;
use crate::flows::{Remote, Snapshot, rfc3339_ms};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    Text,
    Json,
}

#[derive(Args)]
pub struct FlowsArgs {
    /// json: the whole record, as `advise --flows` reads it back.
    #[arg(short, long, value_enum, default_value_t = FlowsOutput::Text)]
    pub output: FlowsOutput,
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub async fn flows(a: FlowsArgs) -> Result<()> {
    let snap = sources::local(&a.socket).await?;
    match a.output {
        FlowsOutput::Json => println!("{}", serde_json::to_string_pretty(&snap)?),
        FlowsOutput::Text => print_flows(&snap),
    }
    Ok(())
}

/// How a flow's peer reads in a table.
pub fn peer_text(p: &Remote) -> String {
    match p {
        Remote::Pod { namespace, workload } => format!("{namespace}/{workload}"),
        Remote::Node { ip } => format!("node {ip}"),
        Remote::External { ip } => format!("external {ip}"),
    }
}

fn print_flows(s: &Snapshot) {
    println!(
        "node {}  observing since {}  {} of {} keys  evicted {}  expired {}  missed events {}",
        s.node,
        rfc3339_ms(s.observing_since_ms),
        s.flows.len(),
        s.capacity,
        s.evicted,
        s.expired,
        s.missed_events
    );
    println!();
    println!(
        "{:<36} {:<8} {:<36} {:<7} {:<14} {:<8} {:>8} LAST SEEN",
        "WORKLOAD", "DIR", "PEER", "PROTO", "PORT", "VERDICT", "COUNT"
    );
    for f in &s.flows {
        let k = &f.key;
        let port = match (k.port, &k.port_name) {
            (Some(p), Some(n)) => format!("{p} ({n})"),
            (Some(p), None) => p.to_string(),
            _ => "-".into(),
        };
        println!(
            "{:<36} {:<8} {:<36} {:<7} {:<14} {:<8} {:>8} {}",
            format!("{}/{}", k.namespace, k.workload),
            k.direction.to_string(),
            peer_text(&k.peer),
            k.protocol,
            port,
            serde_json::to_value(k.verdict).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            f.stats.count,
            rfc3339_ms(f.stats.last_seen_ms)
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdviseOutput {
    Yaml,
    Json,
}

#[derive(Args)]
pub struct AdviseArgs {
    /// Only this namespace (repeatable; default: every namespace the
    /// records mention).
    #[arg(short, long, id = "advise_namespace")]
    pub namespace: Vec<String>,
    /// Flows last seen this long before the newest record.
    #[arg(long, default_value = "24h")]
    pub since: humantime::Duration,
    #[arg(short, long, value_enum, default_value_t = AdviseOutput::Yaml)]
    pub output: AdviseOutput,
    /// Flow records exported with `palisade flows -o json` (repeatable:
    /// one per node). Given, the local agent is not asked unless --agent.
    #[arg(long, num_args = 1..)]
    pub flows: Vec<PathBuf>,
    /// Also ask the local agent for its record when --flows is given.
    #[arg(long)]
    pub agent: bool,
    /// Cluster state from the manifests in this directory instead of the
    /// Kubernetes API.
    #[arg(long)]
    pub cluster_state: Option<PathBuf>,
    /// Do not generate: replay the recorded flows against the policies in
    /// force plus these manifests, and list the flows they would newly
    /// deny or newly allow.
    #[arg(long, num_args = 1..)]
    pub check: Vec<PathBuf>,
    /// Mark the namespaces for audit rollout (the `palisade.dev/audit`
    /// annotation; agents honour it only with --allow-namespace-audit).
    #[arg(long)]
    pub audit: bool,
    /// Prefix length of the ipBlocks for external IPv4 peers (32: one
    /// address each; e.g. 24 aggregates).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ipv4_prefix: u8,
    /// Prefix length for external IPv6 peers.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix: u8,
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub async fn advise(a: AdviseArgs) -> Result<()> {
    let records = sources::records(&a.flows, a.agent, &a.socket).await?;
    advise_records(a, &records, &[]).await
}

/// `kubectl palisade advise`: every node's record from its agent (and the
/// files given); a node whose agent does not answer is a warning, as is a
/// node with pods but no record.
pub async fn advise_cluster(a: AdviseArgs, agents: &crate::remote::nodes::Nodes) -> Result<()> {
    let (records, missing) = sources::nodes(&a.flows, agents).await?;
    if records.is_empty() {
        anyhow::bail!("no agent answered with its flow record");
    }
    advise_records(a, &records, &missing).await
}

/// Advice from `records`; `missing` names the nodes whose agent gave none.
async fn advise_records(a: AdviseArgs, records: &[Snapshot], missing: &[(String, String)]) -> Result<()> {
    let merged = crate::flows::merge(records);
    let input = sources::cluster_state(a.cluster_state.as_deref()).await?;
    if !a.check.is_empty() {
        for (node, why) in missing {
            eprintln!("warning: the agent on node {node} gave no flow record: {why}");
        }
        return check(&a, &input, &merged);
    }
    let opts = super::Options {
        namespaces: a.namespace.iter().cloned().collect(),
        since: a.since.into(),
        ipv4_prefix: a.ipv4_prefix,
        ipv6_prefix: a.ipv6_prefix,
        audit: a.audit,
    };
    let mut advice = super::advise(&input, &merged, &opts)?;
    for (node, why) in missing {
        advice.report.warnings.push(format!("the agent on node {node} gave no flow record: {why}"));
    }
    let summary = summary(&advice.report);
    for line in &summary {
        eprintln!("{line}");
    }
    match a.output {
        AdviseOutput::Yaml => print!("{}", super::manifest::yaml(&summary, &advice.docs)),
        AdviseOutput::Json => println!("{}", serde_json::to_string_pretty(&super::manifest::json(&advice.docs))?),
    }
    Ok(())
}

/// The verification in words (stderr, and the YAML's header).
pub fn summary(r: &super::Report) -> Vec<String> {
    let mut out = vec![
        "Generated by palisade advise from recorded flows, checked with palisade's compiler:".to_string(),
        format!("{} of {} observed flows allowed", r.allowed, r.observed),
    ];
    for d in &r.denied {
        out.push(format!("  would deny {}: {}", super::describe(&d.key), d.why));
    }
    for k in &r.dropped_now_allowed {
        out.push(format!("  would allow {}, which was dropped", super::describe(k)));
    }
    if let (Some(b), Some(a), Some(t)) = (r.reachable_before, r.reachable_after, r.pairs) {
        out.push(format!("pod pairs reachable on an observed port: {b} of {t} before, {a} after"));
    }
    for w in &r.warnings {
        out.push(format!("warning: {w}"));
    }
    out
}

fn check(a: &AdviseArgs, input: &crate::policy::Input, merged: &crate::flows::Merged) -> Result<()> {
    let mut text = String::new();
    for f in &a.check {
        text.push_str(&std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
        text.push_str("\n---\n");
    }
    let proposed = crate::cluster::convert::manifests_to_input(&text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the manifests do not validate:\n  {}", lines.join("\n  "))
    })?;
    let change = super::check::check(input, &proposed, merged, a.since.into());
    if a.output == AdviseOutput::Json {
        println!("{}", serde_json::to_string_pretty(&change)?);
        return Ok(());
    }
    println!(
        "{} recorded flows replayed: {} newly denied, {} newly allowed",
        change.replayed,
        change.newly_denied.len(),
        change.newly_allowed.len()
    );
    for (title, list) in [("newly denied", &change.newly_denied), ("newly allowed", &change.newly_allowed)] {
        if !list.is_empty() {
            println!("\n{title}:");
        }
        for (k, st) in list {
            println!("  {} (seen {} times, last {})", super::describe(k), st.count, rfc3339_ms(st.last_seen_ms));
        }
    }
    Ok(())
}
