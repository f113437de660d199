//! The policies view: the cluster's namespaces and pods, and for one pod
//! the policies that select it, its isolation per direction, and each rule
//! with the pods its peers admit.

use super::source::Source;
use crate::policy::model::{NamespaceMatch, Peer, PortMatch, Rule};
use crate::policy::{Direction, Input, Namespace, Pod, Policy};
use serde_json::{Value, json};

/// Pods named per rule at most (the page says how many more).
const MAX_ADMITTED: usize = 20;

pub fn cluster(source: &dyn Source) -> Result<Value, String> {
    let applied = source.applied().ok_or("the agent has not synced yet")?;
    let input = &applied.input;
    let mut namespaces: Vec<&String> = input.namespaces.keys().collect();
    namespaces.extend(input.pods.keys().map(|(ns, _)| ns));
    namespaces.sort();
    namespaces.dedup();
    let pods: Vec<Value> = input
        .pods
        .values()
        .filter(|p| !p.terminated)
        .map(|p| json!({ "id": format!("{}/{}", p.namespace, p.name), "workload": p.workload.to_string() }))
        .collect();
    Ok(json!({ "node": applied.node.name, "namespaces": namespaces, "pods": pods }))
}

fn namespace(input: &Input, name: &str) -> Namespace {
    input.namespaces.get(name).map(|n| n.as_ref().clone()).unwrap_or_else(|| Namespace::implicit(name))
}

fn peer_text(p: &Peer, policy: &Policy) -> String {
    match p {
        Peer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        Peer::IpBlock { cidr, except } => {
            let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
            format!("ipBlock {cidr} except {}", ex.join(", "))
        }
        Peer::Pods { namespaces, pods } => {
            let ns = match namespaces {
                NamespaceMatch::Own => format!("namespace {}", policy.namespace),
                NamespaceMatch::Selector(s) => format!("namespaces {s}"),
            };
            format!("pods {pods} in {ns}")
        }
    }
}

/// The pods of `input` a rule's peers admit (every pod when it has none).
fn admitted(rule: &Rule, policy: &Policy, input: &Input) -> Vec<String> {
    input
        .pods
        .values()
        .filter(|p| !p.terminated && !p.host_network)
        .filter(|p| {
            rule.peers.is_empty()
                || rule.peers.iter().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        let ns_ok = match namespaces {
                            NamespaceMatch::Own => p.namespace == policy.namespace,
                            NamespaceMatch::Selector(s) => s.matches(&namespace(input, &p.namespace).labels),
                        };
                        ns_ok && pods.matches(&p.labels)
                    }
                    Peer::IpBlock { cidr, except } => {
                        p.ips.iter().any(|ip| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)))
                    }
                })
        })
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

fn rule_json(rule: &Rule, index: usize, dir: Direction, policy: &Policy, pod: &Pod, input: &Input) -> Value {
    let peers = if rule.peers.is_empty() {
        "any peer".to_string()
    } else {
        rule.peers.iter().map(|p| peer_text(p, policy)).collect::<Vec<_>>().join(", ")
    };
    let ports = if rule.ports.is_empty() {
        "any port".to_string()
    } else {
        let each = rule.ports.iter().map(|s| match &s.port {
            PortMatch::Any => format!("{} any port", s.protocol),
            PortMatch::Range(a, b) if a == b => format!("{}/{a}", s.protocol),
            PortMatch::Range(a, b) => format!("{}/{a}-{b}", s.protocol),
            // On ingress the pod itself resolves the name.
            PortMatch::Named(n) => match pod.named_port(n, s.protocol).filter(|_| dir == Direction::Ingress) {
                Some(p) => format!("{}/{n} ({p})", s.protocol),
                None => format!("{}/{n}", s.protocol),
            },
        });
        each.collect::<Vec<_>>().join(", ")
    };
    let word = if dir == Direction::Ingress { "from" } else { "to" };
    let mut pods = admitted(rule, policy, input);
    let more = pods.len().saturating_sub(MAX_ADMITTED);
    pods.truncate(MAX_ADMITTED);
    json!({
        "rule": index,
        "text": format!("rule {index}: {word} {peers} on {ports}"),
        "admits": pods,
        "admits_more": more,
    })
}

/// One pod's policies, per direction.
pub fn pod(source: &dyn Source, id: &str) -> Result<Value, String> {
    let applied = source.applied().ok_or("the agent has not synced yet")?;
    let input = &applied.input;
    let (ns, name) = id.split_once('/').ok_or_else(|| format!("{id}: expected namespace/pod"))?;
    let pod = input.pods.get(&(ns.to_string(), name.to_string())).ok_or_else(|| format!("no pod {id}"))?;
    let selecting: Vec<&Policy> = input
        .policies
        .values()
        .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
        .map(|p| p.as_ref())
        .collect();
    let direction = |dir: Direction| {
        let policies: Vec<Value> = selecting
            .iter()
            .filter_map(|p| {
                let rules = if dir == Direction::Ingress { p.ingress.as_ref() } else { p.egress.as_ref() }?;
                Some(json!({
                    "policy": format!("{}/{}", p.namespace, p.name),
                    "rules": rules.iter().enumerate().map(|(i, r)| rule_json(r, i, dir, p, pod, input)).collect::<Vec<_>>(),
                }))
            })
            .collect();
        json!({ "isolated": !policies.is_empty(), "policies": policies })
    };
    Ok(json!({
        "pod": id,
        "workload": pod.workload.to_string(),
        "node": pod.node_name,
        "labels": pod.labels,
        "ips": pod.ips,
        "host_network": pod.host_network,
        "state": source.pod_state(&pod.namespace, &pod.name),
        "selected_by": selecting.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>(),
        "ingress": direction(Direction::Ingress),
        "egress": direction(Direction::Egress),
    }))
}
