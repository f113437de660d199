//! ipBlocks that contain pod addresses. Kubernetes applies them to pod
//! addresses too, which surprises many (`10.0.0.0/8` meant as "the
//! office" also admits every pod in it), and pod addresses change when
//! pods are recreated: ipBlocks are for addresses outside the cluster. A
//! /0 (the whole family) is meant to include everything and not reported.

use super::selectors::rules;
use super::{Finding, Severity, pod_network, policy_object};
use crate::policy::Input;
use crate::policy::model::Peer;

pub fn check(input: &Input) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in input.policies.values() {
        for (field, peers_name, rule) in rules(p) {
            for (j, peer) in rule.peers.iter().enumerate() {
                let Peer::IpBlock { cidr, except } = peer else { continue };
                if cidr.prefix_len() == 0 {
                    continue;
                }
                let pods: Vec<String> = pod_network(input)
                    .filter(|pod| pod.ips.iter().any(|ip| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))))
                    .map(|pod| format!("{}/{}", pod.namespace, pod.name))
                    .collect();
                if pods.is_empty() {
                    continue;
                }
                out.push(Finding {
                    severity: Severity::Warning,
                    object: policy_object(p),
                    field: format!("{field}.{peers_name}[{j}].ipBlock"),
                    check: "ip-block-pods",
                    message: format!(
                        "{cidr} contains the addresses of {} pod{} ({})",
                        pods.len(),
                        if pods.len() == 1 { "" } else { "s" },
                        super::names(&pods, 5)
                    ),
                    why: "ipBlocks apply to pod addresses too, and pod addresses change when pods are recreated: select pods with selectors".into(),
                    source: String::new(),
                });
            }
        }
    }
    out
}
