//! `palisade lint`: the mistakes the SRE guide warns of, found in a cluster
//! state (the Kubernetes API, or a directory of manifests) before they cost
//! an outage. Each check is a module named for what it finds; whether
//! traffic passes is always the compiler's verdict ([`reach`]), never a
//! reading of the YAML. Findings come sorted (severity, object, field), so
//! the same state always gives the same report.

mod dns;
mod host_network;
mod input_errors;
mod ip_blocks;
pub mod load;
mod metadata;
mod named_ports;
mod reach;
mod report;
mod selectors;
mod services;

#[cfg(test)]
mod tests;

use crate::cluster::Snapshot;
use crate::policy::{Input, Pod};
use serde::Serialize;
use std::collections::BTreeMap;

pub use report::{Report, Summary};

/// How bad a finding is. `Error`: traffic the owner surely wants breaks
/// (or the API server rejects the object); `Warning`: a policy does not do
/// what it reads as; `Info`: worth knowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One problem with one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The object at fault: `Kind namespace/name` (a workload for what its
    /// pods share), or a file that does not read.
    pub object: String,
    /// The field at fault, e.g. `spec.egress[0].to[1].namespaceSelector`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// Which check found it (stable, for scripts): `invalid`, `dns`,
    /// `selects-nothing`, `host-network`, `service-unreachable`,
    /// `named-port`, `ip-block-pods`, `metadata`.
    pub check: &'static str,
    pub message: String,
    /// Why it matters, in one line.
    pub why: String,
    /// The file the object came from (`--cluster-state`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// Lints a cluster state: the objects it holds and the errors of those it
/// could not use.
pub fn lint(snap: &Snapshot) -> Report {
    let input = &snap.input;
    let reach = reach::Reach::new(input);
    let mut findings = input_errors::check(&snap.errors);
    findings.extend(dns::check(input, &reach));
    findings.extend(selectors::check(input));
    findings.extend(host_network::check(input));
    findings.extend(services::check(input, &reach));
    findings.extend(named_ports::check(input));
    findings.extend(ip_blocks::check(input));
    findings.extend(metadata::check(input, &reach));
    findings.sort();
    findings.dedup();
    Report::new(findings)
}

/// Pods that take part in policy: running, with addresses, on the pod
/// network (host-network pods are no NetworkPolicy's business).
fn pod_network(input: &Input) -> impl Iterator<Item = &Pod> {
    input.pods.values().map(|p| p.as_ref()).filter(|p| !p.terminated && !p.host_network && !p.ips.is_empty())
}

/// `Kind namespace/name` of the workload a pod belongs to.
fn workload_of(pod: &Pod) -> String {
    format!("{} {}/{}", pod.workload.kind, pod.namespace, pod.workload.name)
}

/// `NetworkPolicy namespace/name`.
fn policy_object(p: &crate::policy::Policy) -> String {
    format!("NetworkPolicy {}/{}", p.namespace, p.name)
}

/// `a, b, c` for at most `max` names, then `and N more`.
fn names(list: &[String], max: usize) -> String {
    let mut out = list.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > max {
        out.push_str(&format!(" and {} more", list.len() - max));
    }
    out
}

/// Per-pod findings, merged: pods that share the object (their workload,
/// say) and the same finding make one, naming them.
#[derive(Default)]
struct PerPod {
    groups: BTreeMap<(String, Severity, &'static str, String, String), Vec<String>>,
}

impl PerPod {
    fn add(&mut self, object: String, pod: &Pod, severity: Severity, check: &'static str, message: String, why: &str) {
        self.groups.entry((object, severity, check, message, why.to_string())).or_default().push(pod.name.clone());
    }

    fn findings(self) -> Vec<Finding> {
        self.groups
            .into_iter()
            .map(|((object, severity, check, message, why), mut pods)| {
                pods.sort();
                let message = if object.starts_with("Pod ") && pods.len() == 1 {
                    message
                } else {
                    format!("{message} (pods: {})", names(&pods, 5))
                };
                Finding { severity, object, field: String::new(), check, message, why, source: String::new() }
            })
            .collect()
    }
}
