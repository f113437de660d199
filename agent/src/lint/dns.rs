//! The guide's critical gotcha: a pod that cannot resolve names. The DNS
//! servers are the pods labelled `k8s-app=kube-dns` (CoreDNS and kube-dns
//! alike) and the backends of the Service `kube-system/kube-dns`. A pod's
//! DNS works when, for some server, its egress to the server on UDP 53 is
//! allowed and the server's ingress admits it: an error otherwise (TCP 53,
//! for answers too large for UDP, a warning).
//!
//! When the state holds no DNS server (a directory of one team's
//! manifests, the x/y/z conformance cases), lint cannot know where names
//! are resolved (a DNS pod not in the state, a node-local cache, a resolver
//! outside the cluster), so an egress-isolated pod that may send UDP 53 to
//! no address at all is reported as info, not as an error.

use super::reach::Reach;
use super::{Finding, PerPod, Severity, pod_network, workload_of};
use crate::policy::model::Protocol;
use crate::policy::{Direction, Input, Pod};

const DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");
const WHY: &str = "without DNS a pod cannot resolve Service names, and almost everything it does breaks";

/// The DNS server pods the state knows of.
fn servers(input: &Input) -> Vec<&Pod> {
    let service = input.services.get(&(DNS_SERVICE.0.to_string(), DNS_SERVICE.1.to_string()));
    input
        .pods
        .values()
        .map(|p| p.as_ref())
        .filter(|p| !p.terminated && !p.ips.is_empty())
        .filter(|p| {
            p.labels.get(DNS_LABEL.0).is_some_and(|v| v == DNS_LABEL.1)
                || service.is_some_and(|s| {
                    !s.selector.is_empty()
                        && p.namespace == s.namespace
                        && s.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
        })
        .collect()
}

/// Whether `client` may query a server over `protocol`: (its egress lets
/// the query out to some server, some server's ingress lets it in too).
fn path(reach: &Reach, client: &Pod, servers: &[&Pod], protocol: Protocol) -> (bool, bool) {
    let mut out = false;
    for server in servers {
        for &ip in &server.ips {
            let Some(&from) = client.ips.iter().find(|a| a.is_ipv4() == ip.is_ipv4()) else { continue };
            if reach.allows(client, Direction::Egress, ip, protocol, 53) {
                out = true;
                let admitted = server.host_network || reach.allows(server, Direction::Ingress, from, protocol, 53);
                if admitted {
                    return (true, true);
                }
            }
        }
    }
    (out, false)
}

pub fn check(input: &Input, reach: &Reach) -> Vec<Finding> {
    let servers = servers(input);
    let mut found = PerPod::default();
    let names: Vec<String> = servers.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
    let names = super::names(&names, 3);
    for pod in pod_network(input) {
        if servers.iter().any(|s| s.namespace == pod.namespace && s.name == pod.name) {
            continue;
        }
        if servers.is_empty() {
            if !reach.isolated(pod, Direction::Egress) {
                continue;
            }
            let any = pod.ips.iter().any(|ip| {
                reach.first_allowed(pod, Direction::Egress, reach.candidates(ip.is_ipv4()), Protocol::Udp, 53).is_some()
            });
            if !any {
                let message = "isolated for egress, and may send DNS queries (UDP 53) to no address; no DNS server is known here (no pod labelled k8s-app=kube-dns, no Service kube-system/kube-dns)".to_string();
                found.add(workload_of(pod), pod, Severity::Info, "dns", message, WHY);
            }
            continue;
        }
        let (udp_out, udp) = path(reach, pod, &servers, Protocol::Udp);
        let (_, tcp) = path(reach, pod, &servers, Protocol::Tcp);
        let message = match (udp_out, udp, tcp) {
            (_, true, true) => continue,
            (false, _, _) => format!("may not send DNS queries (UDP 53) to any DNS server ({names})"),
            (true, false, _) => {
                format!("may send DNS queries (UDP 53), but no DNS server ({names}) admits them on its ingress")
            }
            (true, true, false) => {
                let message = format!("may query DNS ({names}) over UDP 53 but not over TCP 53");
                let why = "answers too large for UDP are retried over TCP, and fail";
                found.add(workload_of(pod), pod, Severity::Warning, "dns", message, why);
                continue;
            }
        };
        found.add(workload_of(pod), pod, Severity::Error, "dns", message, WHY);
    }
    found.findings()
}
