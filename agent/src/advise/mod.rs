//! `palisade advise`: least-privilege NetworkPolicies from the flow
//! records, checked with palisade's own compiler before they are printed.
//!
//! `sources` gathers records and cluster state, `workloads` finds what
//! selects each workload, `generate` writes the policies (`manifest` keeps
//! their evidence as comments), `verify` replays the flows against them,
//! `check` replays them against proposed manifests.

pub mod check;
pub mod cli;
pub mod generate;
pub mod manifest;
pub mod sources;
pub mod verify;
pub mod workloads;

use crate::flows::{FlowKey, Merged, Remote, Seen, Stats, rfc3339_ms};
use crate::policy::Input;
use crate::policy::model::Protocol;
use manifest::Doc;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use verify::{Outcome, Verifier};

/// The Namespace annotation that puts a namespace in audit mode (honoured
/// by agents started with `--allow-namespace-audit`).
pub const AUDIT_ANNOTATION: &str = "palisade.dev/audit";

/// Shorter observation windows get a warning.
const SHORT_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug)]
pub struct Options {
    /// Only these namespaces (empty: every namespace the records mention).
    pub namespaces: BTreeSet<String>,
    /// Flows last seen within this long before the newest record.
    pub since: Duration,
    /// ipBlocks for external peers: prefix lengths (32 and 128: one
    /// address each).
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Add the audit annotation to the namespaces.
    pub audit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { namespaces: BTreeSet::new(), since: SHORT_WINDOW, ipv4_prefix: 32, ipv6_prefix: 128, audit: false }
    }
}

/// A recorded flow the advice does not allow, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Uncovered {
    pub key: FlowKey,
    pub why: String,
}

/// What the verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Observed flows to allow (ALLOWED or AUDIT, TCP/UDP/SCTP, in scope).
    pub observed: usize,
    /// Of those, allowed by the generated set (with the policies in force).
    pub allowed: usize,
    /// Observed flows the set would deny, and why.
    pub denied: Vec<Uncovered>,
    /// Flows observed DROPPED that the set would allow.
    pub dropped_now_allowed: Vec<FlowKey>,
    /// Pod pairs (either end in scope) reachable on an observed port,
    /// with the policies in force and with the advice applied, of `pairs`.
    pub reachable_before: Option<usize>,
    pub reachable_after: Option<usize>,
    pub pairs: Option<usize>,
    pub warnings: Vec<String>,
}

/// The advice: documents to print, and the report on them.
pub struct Advice {
    pub docs: Vec<Doc>,
    pub report: Report,
}

/// One line for a flow key.
pub fn describe(key: &FlowKey) -> String {
    let peer = match &key.peer {
        Remote::Pod { namespace, workload } => format!("{namespace}/{workload}"),
        Remote::Node { ip } => format!("node {ip}"),
        Remote::External { ip } => format!("{ip}"),
    };
    let arrow = if key.direction == crate::policy::Direction::Ingress { "<-" } else { "->" };
    let port = match (key.port, &key.port_name) {
        (Some(p), Some(n)) => format!("/{p} ({n})"),
        (Some(p), None) => format!("/{p}"),
        _ => String::new(),
    };
    let verdict = serde_json::to_value(key.verdict).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    format!("{}/{} {arrow} {peer} {}{port} [{verdict}]", key.namespace, key.workload, key.protocol)
}

/// The flows of the window `opts.since` before the newest record.
pub fn window(merged: &Merged, since: Duration) -> BTreeMap<FlowKey, Stats> {
    let from = merged.taken_ms.saturating_sub(since.as_millis() as u64);
    merged.flows.iter().filter(|(_, s)| s.last_seen_ms >= from).map(|(k, s)| (k.clone(), *s)).collect()
}

fn to_allow(key: &FlowKey) -> bool {
    key.verdict != Seen::Dropped && key.policy_protocol().is_some() && key.port.is_some()
}

/// The input with `docs`' policies added (replacing any of the same name).
pub fn with_policies(input: &Input, docs: &[Doc]) -> anyhow::Result<Input> {
    let objects = docs.iter().map(|d| d.node.to_json()).filter(|v| v["kind"] == "NetworkPolicy");
    let extra = crate::cluster::convert::objects_to_input(objects).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the generated policies do not validate: {}", text.join("; "))
    })?;
    let mut out = input.clone();
    out.policies.extend(extra.policies);
    Ok(out)
}

/// Generates the policies for the recorded flows and verifies them.
pub fn advise(input: &Input, merged: &Merged, opts: &Options) -> anyhow::Result<Advice> {
    let flows = window(merged, opts.since);
    let index = workloads::index(input);
    let namespaces: BTreeSet<String> = if opts.namespaces.is_empty() {
        flows.keys().map(|k| k.namespace.clone()).collect()
    } else {
        opts.namespaces.clone()
    };
    let allow: BTreeMap<FlowKey, Stats> =
        flows.iter().filter(|(k, _)| to_allow(k)).map(|(k, s)| (k.clone(), *s)).collect();
    let generated = generate::generate(input, &index, &namespaces, &allow, opts);
    let mut docs = Vec::new();
    if opts.audit {
        docs.extend(generate::audit_docs(input, &namespaces));
    }
    docs.extend(generated.docs);
    let after_input = with_policies(input, &docs)?;
    let after_index = workloads::index(&after_input);
    let hosts = node_ips(merged);
    let (before, after) =
        (Verifier::new(input, &index, hosts.clone()), Verifier::new(&after_input, &after_index, hosts));

    let mut report = Report { warnings: generated.warnings, ..Default::default() };
    let why: BTreeMap<&FlowKey, &str> = generated.uncovered.iter().map(|u| (&u.key, u.why.as_str())).collect();
    for (key, _) in flows.iter().filter(|(k, _)| namespaces.contains(&k.namespace)) {
        let outcome = after.flow(key);
        if to_allow(key) {
            report.observed += 1;
            if outcome == Outcome::Allowed {
                report.allowed += 1;
            } else {
                let why = why.get(key).map(|s| s.to_string()).unwrap_or_else(|| match &outcome {
                    Outcome::Partly => "allowed for some of the pods only".into(),
                    Outcome::Unknown(w) => w.clone(),
                    _ => "no generated rule allows it".into(),
                });
                report.denied.push(Uncovered { key: key.clone(), why });
            }
        } else if key.verdict == Seen::Dropped && outcome == Outcome::Allowed {
            report.dropped_now_allowed.push(key.clone());
        }
    }
    let ports: BTreeSet<(Protocol, u16)> = allow.keys().filter_map(|k| Some((k.policy_protocol()?, k.port?))).collect();
    let ports: Vec<_> = ports.into_iter().collect();
    let pods: Vec<_> = input.pods.values().filter(|p| !p.host_network && !p.terminated).map(|p| p.as_ref()).collect();
    let in_scope = |p: &crate::policy::Pod| namespaces.contains(&p.namespace);
    if let (Some((b, total)), Some((a, _))) = (
        verify::reachable_pairs(&before, &pods, in_scope, &ports),
        verify::reachable_pairs(&after, &pods, in_scope, &ports),
    ) {
        (report.reachable_before, report.reachable_after, report.pairs) = (Some(b), Some(a), Some(total));
    }
    warn_window(merged, opts, &mut report);
    for ((ns, w), _) in index.iter().filter(|((ns, _), _)| namespaces.contains(ns)) {
        if !flows.keys().any(|k| &k.namespace == ns && &k.workload == w) {
            report.warnings.push(format!(
                "{ns}/{w} has no recorded flows: the default deny cuts it off (if it talks rarely, observe longer)"
            ));
        }
    }
    let nodes: BTreeSet<&str> = pods.iter().filter(|p| in_scope(p)).filter_map(|p| p.node_name.as_deref()).collect();
    for n in nodes.iter().filter(|n| !merged.nodes.iter().any(|m| m == *n)) {
        report.warnings.push(format!("no flow record from node {n}: flows of its pods are judged and recorded there"));
    }
    Ok(Advice { docs, report })
}

/// The node addresses the records saw (kubelet probes and the like).
pub fn node_ips(merged: &Merged) -> Vec<std::net::IpAddr> {
    let ips: BTreeSet<_> = merged
        .flows
        .keys()
        .filter_map(|k| match k.peer {
            Remote::Node { ip } => Some(ip),
            _ => None,
        })
        .collect();
    ips.into_iter().collect()
}

fn warn_window(merged: &Merged, opts: &Options, report: &mut Report) {
    let from = merged.taken_ms.saturating_sub(opts.since.as_millis() as u64).max(merged.observing_since_ms);
    let span = Duration::from_millis(merged.taken_ms.saturating_sub(from));
    if span < SHORT_WINDOW {
        report.warnings.push(format!(
            "flows were observed for only {} (since {}): traffic that happens less often (daily jobs, failovers, \
             month-end reports) is not in this advice",
            humantime::format_duration(Duration::from_secs(span.as_secs())),
            rfc3339_ms(from)
        ));
    }
    if merged.lost > 0 {
        report.warnings.push(format!(
            "the records lost {} flow keys or events (full, or behind a flood): some flows may be missing",
            merged.lost
        ));
    }
}

#[cfg(test)]
mod tests;
