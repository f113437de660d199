//! Selectors that select nothing: a policy whose podSelector matches no pod
//! of its namespace does nothing, and a peer whose namespaceSelector or
//! podSelector matches nothing allows nothing. The usual causes: a typo'd
//! label, or namespaces without the label the selector names (before
//! Kubernetes 1.22 namespaces carried no `kubernetes.io/metadata.name`, and
//! other labels are set by hand).

use super::{Finding, Severity, policy_object};
use crate::policy::model::{Labels, NAMESPACE_NAME_LABEL, NamespaceMatch, Operator, Peer, Selector};
use crate::policy::{Input, Namespace, Pod, Policy};
use std::collections::BTreeMap;

/// Every namespace's labels, with the ones pods live in but no Namespace
/// object describes (they still carry their name label, as the compiler
/// assumes).
pub fn namespaces(input: &Input) -> BTreeMap<String, Labels> {
    let mut out: BTreeMap<String, Labels> =
        input.namespaces.iter().map(|(name, ns)| (name.clone(), ns.labels.clone())).collect();
    for pod in input.pods.values() {
        out.entry(pod.namespace.clone()).or_insert_with(|| Namespace::implicit(&pod.namespace).labels);
    }
    out
}

/// The pods of `namespace` a selector matches (terminated ones aside).
pub fn selected<'a>(input: &'a Input, namespace: &str, selector: &Selector) -> Vec<&'a Pod> {
    input
        .pods
        .values()
        .map(|p| p.as_ref())
        .filter(|p| !p.terminated && p.namespace == namespace && selector.matches(&p.labels))
        .collect()
}

/// The namespaces a peer draws from.
pub fn peer_namespaces(all: &BTreeMap<String, Labels>, policy: &Policy, ns: &NamespaceMatch) -> Vec<String> {
    match ns {
        NamespaceMatch::Own => vec![policy.namespace.clone()],
        NamespaceMatch::Selector(s) => all.iter().filter(|(_, l)| s.matches(l)).map(|(n, _)| n.clone()).collect(),
    }
}

/// Every rule of a policy with its field path: (field, peers' name, rule).
pub fn rules(policy: &Policy) -> impl Iterator<Item = (String, &'static str, &crate::policy::model::Rule)> {
    let ingress = policy.ingress.iter().flatten().enumerate().map(|(i, r)| (format!("spec.ingress[{i}]"), "from", r));
    let egress = policy.egress.iter().flatten().enumerate().map(|(i, r)| (format!("spec.egress[{i}]"), "to", r));
    ingress.chain(egress)
}

/// Why no namespace matches: the label keys it requires that no namespace has.
fn missing_keys(all: &BTreeMap<String, Labels>, s: &Selector) -> Vec<String> {
    let required = s
        .match_labels
        .keys()
        .chain(s.requirements.iter().filter(|r| matches!(r.operator, Operator::In | Operator::Exists)).map(|r| &r.key));
    let mut keys: Vec<String> =
        required.filter(|k| !all.values().any(|l| l.contains_key(k))).map(|k| k.to_string()).collect();
    keys.sort();
    keys.dedup();
    keys
}

pub fn check(input: &Input) -> Vec<Finding> {
    let all = namespaces(input);
    let mut out = Vec::new();
    let mut warn = |p: &Policy, field: String, message: String, why: &str| {
        out.push(Finding {
            severity: Severity::Warning,
            object: policy_object(p),
            field,
            check: "selects-nothing",
            message,
            why: why.into(),
            source: String::new(),
        })
    };
    for p in input.policies.values() {
        if !p.pod_selector.is_empty() && selected(input, &p.namespace, &p.pod_selector).is_empty() {
            warn(
                p,
                "spec.podSelector".into(),
                format!("{} selects no pod in namespace {}", p.pod_selector, p.namespace),
                "a policy that selects no pod does nothing: the pods it was written for are not isolated",
            );
        }
        for (field, peers_name, rule) in rules(p) {
            for (j, peer) in rule.peers.iter().enumerate() {
                let Peer::Pods { namespaces, pods } = peer else { continue };
                let field = format!("{field}.{peers_name}[{j}]");
                let why = "a peer that selects nothing allows nothing: the traffic it was written for is dropped";
                let in_ns = peer_namespaces(&all, p, namespaces);
                if let NamespaceMatch::Selector(s) = namespaces
                    && in_ns.is_empty()
                {
                    let mut message = format!("namespaceSelector {s} selects no namespace");
                    let missing = missing_keys(&all, s);
                    if !missing.is_empty() {
                        message.push_str(&format!("; no namespace has the label {}", missing.join(", ")));
                        if !missing.iter().any(|k| k == NAMESPACE_NAME_LABEL) {
                            message.push_str(&format!(
                                " (label namespaces by hand, or select them by {NAMESPACE_NAME_LABEL}, which Kubernetes 1.22+ sets)"
                            ));
                        }
                    }
                    warn(p, format!("{field}.namespaceSelector"), message, why);
                    continue;
                }
                if !pods.is_empty() && in_ns.iter().all(|ns| selected(input, ns, pods).is_empty()) {
                    let where_ = match namespaces {
                        NamespaceMatch::Own => format!("namespace {}", p.namespace),
                        NamespaceMatch::Selector(_) => format!("namespaces {}", super::names(&in_ns, 5)),
                    };
                    warn(
                        p,
                        format!("{field}.podSelector"),
                        format!("podSelector {pods} selects no pod in {where_}"),
                        why,
                    );
                }
            }
        }
    }
    out
}
