//! Host-network pods: NetworkPolicy has no effect on them (their traffic
//! is the node's). A policy that selects them does not isolate them, and a
//! peer that selects them does not match their traffic, which carries the
//! node's address. A peer is reported when every pod it selects is on the
//! host network (it was written for them); a broad one that also selects
//! some is not. A whole-namespace policy that also selects host-network
//! pods is info, one that selects them by label a warning.

use super::selectors::{namespaces, peer_namespaces, rules, selected};
use super::{Finding, Severity, policy_object};
use crate::policy::Input;
use crate::policy::model::Peer;

pub fn check(input: &Input) -> Vec<Finding> {
    let all = namespaces(input);
    let mut out = Vec::new();
    let host = |pods: Vec<&crate::policy::Pod>| -> Vec<String> {
        pods.into_iter().filter(|p| p.host_network).map(|p| format!("{}/{}", p.namespace, p.name)).collect()
    };
    for p in input.policies.values() {
        let selected_host = host(selected(input, &p.namespace, &p.pod_selector));
        if !selected_host.is_empty() {
            out.push(Finding {
                severity: if p.pod_selector.is_empty() { Severity::Info } else { Severity::Warning },
                object: policy_object(p),
                field: "spec.podSelector".into(),
                check: "host-network",
                message: format!("selects host-network pods {}", super::names(&selected_host, 5)),
                why: "NetworkPolicy has no effect on host-network pods: they are not isolated".into(),
                source: String::new(),
            });
        }
        for (field, peers_name, rule) in rules(p) {
            for (j, peer) in rule.peers.iter().enumerate() {
                let Peer::Pods { namespaces, pods } = peer else { continue };
                if pods.is_empty() {
                    continue;
                }
                let matched: Vec<&crate::policy::Pod> =
                    peer_namespaces(&all, p, namespaces).iter().flat_map(|ns| selected(input, ns, pods)).collect();
                if matched.is_empty() || matched.iter().any(|p| !p.host_network) {
                    continue;
                }
                let peers = host(matched);
                out.push(Finding {
                    severity: Severity::Warning,
                    object: policy_object(p),
                    field: format!("{field}.{peers_name}[{j}]"),
                    check: "host-network",
                    message: format!("selects host-network pods {} as peers", super::names(&peers, 5)),
                    why: "their traffic carries the node's address, which no pod selector matches: use an ipBlock of the node addresses".into(),
                    source: String::new(),
                });
            }
        }
    }
    out
}
