//! The validated model the compiler works on: namespaces, pods, services,
//! nodes, NetworkPolicies and ClusterNetworkPolicies as they mean once the
//! API server's defaulting and validation are applied (`cluster::convert`
//! does both), plus what the compiler needs to know about its node.

use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use super::chunked::ChunkedMap;
pub use super::labels::Labels;

/// The label every namespace carries (the API server sets it since 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// IP protocols NetworkPolicy ports can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => palisade_common::PROTO_TCP,
            Protocol::Udp => palisade_common::PROTO_UDP,
            Protocol::Sctp => palisade_common::PROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            palisade_common::PROTO_TCP => Some(Protocol::Tcp),
            palisade_common::PROTO_UDP => Some(Protocol::Udp),
            palisade_common::PROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// A protocol as Kubernetes spells it; the error says what is allowed.
    pub fn from_name(name: &str) -> Result<Protocol, String> {
        match name {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("unsupported value {other:?}: supported values are \"TCP\", \"UDP\", \"SCTP\"")),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::from_name(&s.to_uppercase())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A label selector requirement operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

/// A label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: Labels,
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.requirements.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.requirements {
            let vals = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({vals})", r.key),
                Operator::NotIn => format!("{} notin ({vals})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// Which namespaces a pod peer draws from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceMatch {
    /// No namespaceSelector: the policy's own namespace.
    Own,
    Selector(Selector),
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pods { namespaces: NamespaceMatch, pods: Selector },
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// What a NetworkPolicyPort matches on the destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// `port` omitted: every port of the protocol.
    Any,
    /// A port or an inclusive `port`..`endPort` range.
    Range(u16, u16),
    /// A named container port of the destination pod.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// One ingress or egress rule. Empty `peers` means every peer; empty
/// `ports` means every port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

/// A validated NetworkPolicy. `ingress`/`egress` are `Some` exactly when
/// the policy's (defaulted) policyTypes include that direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// A ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2), validated.
/// Admin-tier policies are evaluated before NetworkPolicies, Baseline-tier
/// ones after them and before the default allow. Within a tier, lower
/// `priority` first; equal priorities (undefined upstream) go by name;
/// within a policy, rules in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    /// 0..=1000, lower first.
    pub priority: u32,
    pub subject: ClusterSubject,
    /// Empty: the policy does not affect this direction.
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// The evaluation order of cluster policies within a tier.
    pub fn order_key(&self) -> (Tier, u32, &str) {
        (self.tier, self.priority, &self.name)
    }
}

/// The two tiers a ClusterNetworkPolicy can sit in (NetworkPolicy is the
/// tier between them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a ClusterNetworkPolicy rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Allowed; no later rule of any tier is consulted for this direction.
    Accept,
    /// Dropped; no later rule of any tier is consulted.
    Deny,
    /// The rest of this tier is skipped: Admin hands the decision to
    /// NetworkPolicy, Baseline to the default allow.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a ClusterNetworkPolicy applies to (never host-network pods).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterSubject {
    /// Every pod of the namespaces the selector matches.
    Namespaces(Selector),
    /// The pods `pods` matches in the namespaces `namespaces` matches.
    Pods { namespaces: Selector, pods: Selector },
}

/// One rule of a ClusterNetworkPolicy. `peers` is never empty (the API
/// requires one); empty `ports` means all traffic, any protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterRule {
    /// The rule's name ("" when unnamed); events and trace show it.
    pub name: String,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    pub ports: Vec<ClusterPort>,
}

/// A peer of a ClusterNetworkPolicy rule. Pod peers never match
/// host-network pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPeer {
    /// Every pod of the matching namespaces.
    Namespaces(Selector),
    /// The matching pods of the matching namespaces.
    Pods { namespaces: Selector, pods: Selector },
    /// Egress only: the addresses of the nodes whose labels match.
    Nodes(Selector),
    /// Egress only: any address inside these CIDRs (pods included).
    Networks(Vec<IpNet>),
    /// A peer palisade does not evaluate (`domainNames`, or a peer with no
    /// field it knows: a newer CRD). Upstream's fail-closed reading: in an
    /// Accept rule it matches nothing, in a Deny or Pass rule everything.
    /// The string says what it was, for status and lint.
    Unsupported(String),
}

/// What a ClusterNetworkPolicy `protocols` entry matches on the destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPort {
    /// A protocol and an inclusive port range (a single port is `n..=n`).
    Ports { protocol: Protocol, first: u16, last: u16 },
    /// `destinationNamedPort`: the destination pod's container port of that
    /// name, with the protocol it declares.
    Named(String),
}

/// A Node object: what `nodes` peers select and the addresses they mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObject {
    pub name: String,
    pub labels: Labels,
    /// status.addresses that are IPs (InternalIP, ExternalIP), in order.
    pub ips: Vec<IpAddr>,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub host_network: bool,
    /// status.podIPs (or status.podIP), in order.
    pub ips: Vec<IpAddr>,
    /// Named ports of its containers (and sidecar init containers).
    pub ports: Vec<NamedPort>,
    /// Succeeded or Failed: its IP may already belong to another pod.
    pub terminated: bool,
    /// The workload it belongs to (what flows and advice are grouped by).
    pub workload: Workload,
}

/// The controller a pod belongs to, as an SRE names it: a ReplicaSet's pod
/// by its Deployment, a Job's pod by its CronJob, otherwise the owning
/// controller, or the pod itself when it has none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, ... or Pod.
    pub kind: String,
    pub name: String,
}

impl Workload {
    /// Resolves a pod's controller reference (kind, name) without reading
    /// the controller: a Deployment's ReplicaSet is named
    /// `<deployment>-<pod-template-hash>` and a CronJob's Job
    /// `<cronjob>-<scheduled minute>`.
    pub fn resolve(pod_name: &str, controller: Option<(&str, &str)>, labels: &Labels) -> Workload {
        let strip = |name: &str, suffix: &str| {
            name.strip_suffix(suffix).and_then(|n| n.strip_suffix('-')).filter(|n| !n.is_empty()).map(str::to_string)
        };
        let (kind, name) = match controller {
            None => ("Pod", pod_name.to_string()),
            Some(("ReplicaSet", rs)) => match labels.get("pod-template-hash").and_then(|h| strip(rs, h)) {
                Some(deployment) => ("Deployment", deployment),
                None => ("ReplicaSet", rs.to_string()),
            },
            Some(("Job", job)) => match job.rsplit_once('-') {
                Some((cron, minute))
                    if !cron.is_empty() && minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    ("CronJob", cron.to_string())
                }
                _ => ("Job", job.to_string()),
            },
            Some((kind, name)) => (kind, name.to_string()),
        };
        Workload { kind: kind.to_string(), name }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.to_lowercase(), self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    pub labels: Labels,
    pub audit: bool,
}

/// A Service: its cluster IPs matter to enforcement (traffic to them is
/// DNATed to a backend, and egress policy must judge the backend); its
/// selector and ports to `lint` (which pods serve it, on which ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// spec.selector: its backends are the pods of its namespace with these
    /// labels; empty: no selector (endpoints managed by hand).
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

/// A port of a Service and where it leads on the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
    /// The backend's port: a number, or a named container port.
    pub target: PortMatch,
}

impl Namespace {
    /// The namespace a pod or policy names when no Namespace object exists
    /// (yet): it still carries its name label.
    pub fn implicit(name: &str) -> Namespace {
        let mut labels = Labels::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        Namespace { name: name.to_string(), labels, audit: false }
    }
}

impl Pod {
    /// The container port a named port resolves to on this pod.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        named_port(&self.ports, name, protocol)
    }
}

/// Resolves a port name against a list of named ports: the name and the
/// protocol must both match.
pub fn named_port(ports: &[NamedPort], name: &str, protocol: Protocol) -> Option<u16> {
    ports.iter().find(|p| p.name == name && p.protocol == protocol).map(|p| p.port)
}

/// Everything the compiler needs to know about the cluster: validated
/// objects, keyed so iteration order (and so the output) is deterministic.
/// Objects are shared (`Arc`): a snapshot of an unchanged cluster costs no
/// copies of its objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Input {
    pub namespaces: ChunkedMap<String, Arc<Namespace>>,
    /// Keyed by (namespace, name).
    pub pods: ChunkedMap<(String, String), Arc<Pod>>,
    /// Keyed by (namespace, name).
    pub policies: ChunkedMap<(String, String), Arc<Policy>>,
    /// Keyed by (namespace, name): their cluster IPs are DNATed by
    /// kube-proxy after the source's egress hook, see the datapath.
    pub services: ChunkedMap<(String, String), Arc<Service>>,
    /// ClusterNetworkPolicies by name (cluster-scoped).
    pub cluster_policies: ChunkedMap<String, Arc<ClusterPolicy>>,
    /// Node objects by name (`nodes` peers of cluster policies).
    pub nodes: ChunkedMap<String, Arc<NodeObject>>,
}

/// What the compiler needs to know about the node it compiles for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Pods whose spec.nodeName is this (or unset) are local.
    pub name: String,
    /// The node's own addresses: traffic from them is "host" traffic.
    pub host_ips: Vec<IpAddr>,
    /// Allow traffic from the node to its pods (kubelet probes).
    pub allow_host: bool,
    /// Audit mode for every pod of the node.
    pub audit: bool,
}

/// A policy named by namespace/name, ordered by them. Shared: the
/// compiler's part for a policy, its claims and every rule it numbers hold
/// the same one (at 50k policies a copy of both names per rule was 10 MB).
/// Sent and saved as `{"namespace", "name"}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef(Arc<(String, String)>);

impl PolicyRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PolicyRef {
        PolicyRef(Arc::new((namespace.into(), name.into())))
    }

    pub fn namespace(&self) -> &str {
        &self.0.0
    }

    pub fn name(&self) -> &str {
        &self.0.1
    }

    /// The same one (not a copy): then they are equal, with no names compared.
    pub fn same(&self, other: &PolicyRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Looked up by the (namespace, name) key of [`Input::policies`]: the
/// order is the same.
impl std::borrow::Borrow<(String, String)> for PolicyRef {
    fn borrow(&self) -> &(String, String) {
        &self.0
    }
}

/// How a [`PolicyRef`] is written.
#[derive(serde::Serialize, serde::Deserialize)]
struct PolicyRefFields<S> {
    namespace: S,
    name: S,
}

impl serde::Serialize for PolicyRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PolicyRefFields { namespace: self.namespace(), name: self.name() }.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for PolicyRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PolicyRef, D::Error> {
        let f = PolicyRefFields::<String>::deserialize(d)?;
        Ok(PolicyRef::new(f.namespace, f.name))
    }
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())
    }
}

/// Policy direction as NetworkPolicy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn code(self) -> u8 {
        match self {
            Direction::Ingress => palisade_common::DIR_INGRESS,
            Direction::Egress => palisade_common::DIR_EGRESS,
        }
    }

    pub fn from_code(code: u8) -> Direction {
        if code & !palisade_common::DIR_BY_NAMESPACE == palisade_common::DIR_EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_ref_is_written_by_its_names_and_read_back() {
        let r = PolicyRef::new("prod", "deny-all");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v, serde_json::json!({"namespace": "prod", "name": "deny-all"}));
        let back: PolicyRef = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert!(!back.same(&r) && r.same(&r.clone()));
        assert_eq!(r.to_string(), "prod/deny-all");
    }
}
