//! What a flow is keyed by, and how a verdict event becomes a key.

use crate::events::{Peer, Verdict, VerdictEvent, View};
use crate::policy::Direction;
use crate::policy::model::{Pod, Protocol, Workload};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The verdict a flow got (ALLOWED, DROPPED, AUDIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Seen {
    Allowed,
    Dropped,
    Audit,
}

impl From<Verdict> for Seen {
    fn from(v: Verdict) -> Seen {
        match v {
            Verdict::Allowed => Seen::Allowed,
            Verdict::Dropped => Seen::Dropped,
            Verdict::Audit => Seen::Audit,
        }
    }
}

/// The other end of a flow, seen from the local workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Remote {
    /// A pod, by its workload.
    Pod { namespace: String, workload: Workload },
    /// An address of the node the local pod runs on (kubelet probes).
    Node { ip: IpAddr },
    /// Anything else: outside the cluster, or a pod nobody knows.
    External { ip: IpAddr },
}

/// One flow key: everything but the counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowKey {
    /// The local pod's namespace and workload.
    pub namespace: String,
    pub workload: Workload,
    /// Seen from the local workload: ingress (to it) or egress (from it).
    pub direction: Direction,
    pub peer: Remote,
    /// TCP, UDP, SCTP, ICMP, ICMPv6.
    pub protocol: String,
    /// The destination port (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The destination port's name, where the destination pod declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    pub verdict: Seen,
}

impl FlowKey {
    /// The protocol as NetworkPolicy names it (None: ICMP and others).
    pub fn policy_protocol(&self) -> Option<Protocol> {
        Protocol::from_name(&self.protocol).ok()
    }
}

/// Reasons that are no policy verdict (broken or unattributable packets):
/// they say nothing about who talks to whom.
const NOT_FLOWS: [&str; 5] = ["malformed", "spoofed-source", "service-untranslated", "service-unattributed", "pending"];

fn pod_of<'a>(p: &Peer, view: &'a View) -> Option<&'a Pod> {
    let pod = view.catalog.pods_by_ip.get(&p.ip)?;
    (p.namespace.as_deref() == Some(pod.namespace.as_str()) && p.pod.as_deref() == Some(pod.name.as_str()))
        .then_some(pod.as_ref())
}

/// The key of an event, or None for events that are no flow of a known
/// local pod.
pub fn of_event(ev: &VerdictEvent, view: &View) -> Option<FlowKey> {
    if NOT_FLOWS.contains(&ev.reason.as_str()) {
        return None;
    }
    let (local, remote) = match ev.direction {
        Direction::Ingress => (&ev.destination, &ev.source),
        Direction::Egress => (&ev.source, &ev.destination),
    };
    let (namespace, name) = (local.namespace.clone()?, local.pod.clone()?);
    let local_pod = pod_of(local, view);
    let workload = local_pod.map_or_else(|| Workload { kind: "Pod".into(), name }, |p| p.workload.clone());
    let remote_pod = pod_of(remote, view);
    let peer = match (remote.kind.as_str(), remote_pod) {
        ("pod", Some(p)) => Remote::Pod { namespace: p.namespace.clone(), workload: p.workload.clone() },
        ("host", _) => Remote::Node { ip: remote.ip },
        _ => Remote::External { ip: remote.ip },
    };
    let port = ev.destination.port;
    let dest_pod = if ev.direction == Direction::Ingress { local_pod } else { remote_pod };
    let port_name = match (port, Protocol::from_name(&ev.protocol), dest_pod) {
        (Some(port), Ok(proto), Some(pod)) => {
            pod.ports.iter().find(|p| p.port == port && p.protocol == proto).map(|p| p.name.clone())
        }
        _ => None,
    };
    Some(FlowKey {
        namespace,
        workload,
        direction: ev.direction,
        peer,
        protocol: ev.protocol.clone(),
        port,
        port_name,
        verdict: ev.verdict.into(),
    })
}
