//! Isolated pods behind a Service that no client can reach (the guide's
//! gotcha 4: an Ingress controller must be allowed, or all external
//! traffic is dropped). The rule: for each port of a Service with a
//! selector, if every backend serving it is isolated for ingress and
//! admits, on that port, no other pod and no address at all (the
//! compiler's verdict for every pod address and one address of every
//! ipBlock cell and of the rest of the world), nothing can use the port.
//! An Ingress routes to Services, so its backends are checked through
//! them. A backend that admits only some clients is not reported: lint
//! cannot tell which pods are meant to reach it.

use super::reach::Reach;
use super::{Finding, Severity, pod_network};
use crate::policy::model::PortMatch;
use crate::policy::{Direction, Input};

pub fn check(input: &Input, reach: &Reach) -> Vec<Finding> {
    let mut out = Vec::new();
    for svc in input.services.values().filter(|s| !s.selector.is_empty()) {
        let backends: Vec<_> = pod_network(input)
            .filter(|p| p.namespace == svc.namespace && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        for (k, sp) in svc.ports.iter().enumerate() {
            let mut serving = Vec::new();
            let reachable = backends.iter().any(|b| {
                let target = match &sp.target {
                    PortMatch::Range(n, _) => Some(*n),
                    PortMatch::Named(name) => b.named_port(name, sp.protocol),
                    PortMatch::Any => None,
                };
                let Some(target) = target else { return false };
                serving.push(format!("{}/{}", b.namespace, b.name));
                b.ips.iter().any(|ip| {
                    let clients = reach.candidates(ip.is_ipv4()).filter(|c| !b.ips.contains(c));
                    reach.first_allowed(b, Direction::Ingress, clients, sp.protocol, target).is_some()
                })
            });
            if reachable || serving.is_empty() {
                continue;
            }
            out.push(Finding {
                severity: Severity::Warning,
                object: format!("Service {}/{}", svc.namespace, svc.name),
                field: format!("spec.ports[{k}]"),
                check: "service-unreachable",
                message: format!(
                    "no pod and no address may reach port {}/{}: its backends ({}) are isolated for ingress and admit no client on it",
                    sp.port,
                    sp.protocol,
                    super::names(&serving, 5)
                ),
                why: "traffic through this Service, and any Ingress routing to it, is dropped at its backends: allow its clients (the Ingress controller's pods, say)".into(),
                source: String::new(),
            });
        }
    }
    out
}
