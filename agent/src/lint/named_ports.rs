//! Named ports that no destination declares: a rule's named port resolves
//! on the destination pod (name and protocol both), so where no possible
//! destination declares it, the port allows nothing. Destinations: for
//! ingress the pods the policy selects; for egress the pods the rule's
//! peers select (every pod when it has no peers, the pods inside its
//! ipBlocks).

use super::selectors::{namespaces, peer_namespaces, rules, selected};
use super::{Finding, Severity, policy_object};
use crate::policy::model::{Peer, PortMatch};
use crate::policy::{Input, Pod};

pub fn check(input: &Input) -> Vec<Finding> {
    let all = namespaces(input);
    let mut out = Vec::new();
    for p in input.policies.values() {
        let targets: Vec<&Pod> =
            selected(input, &p.namespace, &p.pod_selector).into_iter().filter(|p| !p.host_network).collect();
        for (field, _, rule) in rules(p) {
            let named: Vec<_> = rule
                .ports
                .iter()
                .enumerate()
                .filter_map(|(k, s)| match &s.port {
                    PortMatch::Named(n) => Some((k, n, s.protocol)),
                    _ => None,
                })
                .collect();
            if named.is_empty() {
                continue;
            }
            let destinations: Vec<&Pod> = if field.starts_with("spec.ingress") {
                targets.clone()
            } else if rule.peers.is_empty() {
                super::pod_network(input).collect()
            } else {
                super::pod_network(input)
                    .filter(|pod| {
                        rule.peers.iter().any(|peer| match peer {
                            Peer::Pods { namespaces, pods } => {
                                peer_namespaces(&all, p, namespaces).contains(&pod.namespace)
                                    && pods.matches(&pod.labels)
                            }
                            Peer::IpBlock { cidr, except } => {
                                pod.ips.iter().any(|ip| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)))
                            }
                        })
                    })
                    .collect()
            };
            if destinations.is_empty() {
                continue; // selects-nothing says why
            }
            for (k, name, protocol) in named {
                if destinations.iter().any(|d| d.named_port(name, protocol).is_some()) {
                    continue;
                }
                let other = destinations.iter().flat_map(|d| &d.ports).find(|np| &np.name == name);
                let mut message = format!("no destination pod declares port {name}/{protocol}");
                if let Some(np) = other {
                    message.push_str(&format!(" ({name} is declared for {}, not {protocol})", np.protocol));
                }
                out.push(Finding {
                    severity: Severity::Warning,
                    object: policy_object(p),
                    field: format!("{field}.ports[{k}].port"),
                    check: "named-port",
                    message,
                    why:
                        "a named port resolves on the destination pod: where none declares it, the port allows nothing"
                            .into(),
                    source: String::new(),
                });
            }
        }
    }
    out
}
