//! Pods that can reach the cloud metadata address (169.254.169.254, the
//! attacker's pivot on AWS, GCP and Azure), by the compiler's verdict on
//! TCP 80. Info, one finding per namespace: whether to block it is the
//! owner's call (some workloads need it).

use super::reach::Reach;
use super::{Finding, PerPod, Severity, pod_network};
use crate::policy::model::Protocol;
use crate::policy::{Direction, Input};
use std::net::{IpAddr, Ipv4Addr};

pub const METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

pub fn check(input: &Input, reach: &Reach) -> Vec<Finding> {
    let mut found = PerPod::default();
    for pod in pod_network(input).filter(|p| p.ips.iter().any(IpAddr::is_ipv4)) {
        if reach.allows(pod, Direction::Egress, METADATA, Protocol::Tcp, 80) {
            found.add(
                format!("Namespace {}", pod.namespace),
                pod,
                Severity::Info,
                "metadata",
                format!("pods may reach the cloud metadata address {METADATA}"),
                "a compromised pod can read the node's cloud credentials there: block it with an ipBlock except where not needed",
            );
        }
    }
    found.findings()
}
