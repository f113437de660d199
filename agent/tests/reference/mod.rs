//! A reference evaluator of Kubernetes NetworkPolicy (networking.k8s.io/v1)
//! and ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) semantics,
//! written from the API documentation and working directly on the
//! Kubernetes objects (ClusterNetworkPolicies as plain JSON). It shares no
//! code with the agent (not its model, validation, selectors, CIDR handling
//! or port resolution): it answers one question, "is this flow allowed?",
//! in the most literal way, walking the tiers in upstream's order (Admin,
//! NetworkPolicy, Baseline, the default allow), so that the compiled kernel
//! maps can be checked against it.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// Direction from the point of view of the local pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// remote -> local pod, on the local pod's port.
    Ingress,
    /// local pod -> remote, on the remote's port.
    Egress,
}

/// The whole cluster as the API server would hold it, plus the node the
/// question is asked on.
pub struct Cluster<'a> {
    pub namespaces: &'a [Namespace],
    pub pods: &'a [Pod],
    pub policies: &'a [NetworkPolicy],
    /// ClusterNetworkPolicy objects, as JSON.
    pub cluster_policies: &'a [Value],
    /// Node objects (`nodes` peers).
    pub nodes: &'a [Node],
    pub host_ips: &'a [IpAddr],
    pub allow_host: bool,
}

/// What a tier made of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Deny,
    /// Pass, or no rule matched: the next tier decides.
    Next,
}

type Labels = BTreeMap<String, String>;

fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        let values: Vec<&String> = req.values.iter().flatten().collect();
        let value = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => match value {
                Some(v) => values.contains(&v),
                None => false,
            },
            "NotIn" => match value {
                Some(v) => !values.contains(&v),
                None => true,
            },
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("reference: unknown operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn pod_labels(pod: &Pod) -> Labels {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn pod_namespace(pod: &Pod) -> String {
    pod.metadata.namespace.clone().unwrap_or_else(|| "default".to_string())
}

fn policy_namespace(p: &NetworkPolicy) -> String {
    p.metadata.namespace.clone().unwrap_or_else(|| "default".to_string())
}

/// A pod's addresses: status.podIPs, or else status.podIP.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else { return vec![] };
    let list: Vec<IpAddr> = status.pod_ips.iter().flatten().map(|i| i.ip.parse().expect("pod ip")).collect();
    if !list.is_empty() {
        return list;
    }
    status.pod_ip.iter().filter(|s| !s.is_empty()).map(|s| s.parse().expect("pod ip")).collect()
}

fn terminated(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// Whether the pod takes part in pod networking as a peer.
pub fn is_peer_pod(pod: &Pod) -> bool {
    !terminated(pod) && !host_network(pod) && !pod_ips(pod).is_empty()
}

/// Whether the pod runs on `node` (an unset nodeName counts as local).
pub fn is_local(pod: &Pod, node: &str) -> bool {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None | Some("") => true,
        Some(n) => n == node,
    }
}

impl Cluster<'_> {
    fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".to_string(), name.to_string());
        labels
    }

    /// The running pod-network pod that has this address, if any.
    fn pod_at(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.iter().find(|p| is_peer_pod(p) && pod_ips(p).contains(&ip))
    }

    fn selects(&self, policy: &NetworkPolicy, pod: &Pod) -> bool {
        let spec = policy.spec.as_ref().expect("policy spec");
        policy_namespace(policy) == pod_namespace(pod)
            && selector_matches(&spec.pod_selector.clone().unwrap_or_default(), &pod_labels(pod))
    }

    /// Defaulted policyTypes: (ingress, egress).
    fn types(policy: &NetworkPolicy) -> (bool, bool) {
        let spec = policy.spec.as_ref().expect("policy spec");
        match spec.policy_types.as_deref() {
            None | Some([]) => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
            Some(t) => (t.iter().any(|x| x == "Ingress"), t.iter().any(|x| x == "Egress")),
        }
    }

    fn applies(&self, policy: &NetworkPolicy, pod: &Pod, dir: Dir) -> bool {
        let (ingress, egress) = Self::types(policy);
        self.selects(policy, pod) && if dir == Dir::Ingress { ingress } else { egress }
    }

    /// Whether `pod` is isolated in `dir`.
    pub fn isolated(&self, pod: &Pod, dir: Dir) -> bool {
        self.policies.iter().any(|p| self.applies(p, pod, dir))
    }

    fn peer_matches(&self, policy: &NetworkPolicy, peer: &NetworkPolicyPeer, ip: IpAddr) -> bool {
        if let Some(block) = &peer.ip_block {
            return ip_block_matches(block, ip);
        }
        let Some(pod) = self.pod_at(ip) else { return false };
        let ns = pod_namespace(pod);
        let ns_ok = match &peer.namespace_selector {
            None => ns == policy_namespace(policy),
            Some(sel) => selector_matches(sel, &self.namespace_labels(&ns)),
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(sel) => selector_matches(sel, &pod_labels(pod)),
        };
        ns_ok && pod_ok
    }

    fn port_matches(&self, spec: &NetworkPolicyPort, dest: Option<&Pod>, protocol: u8, port: u16) -> bool {
        let proto_name = spec.protocol.as_deref().unwrap_or("TCP");
        if proto_number(proto_name) != protocol {
            return false;
        }
        match &spec.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let p = i32::from(port);
                match spec.end_port {
                    None => p == *n,
                    Some(end) => *n <= p && p <= end,
                }
            }
            // A named port: a container port of the destination pod with
            // that name and protocol (regular containers; the tests make
            // no sidecar init containers).
            Some(IntOrString::String(name)) => {
                let Some(dest) = dest else { return false };
                let containers = dest.spec.iter().flat_map(|s| s.containers.iter());
                containers.flat_map(|c| c.ports.iter().flatten()).any(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && proto_number(cp.protocol.as_deref().unwrap_or("TCP")) == protocol
                        && cp.container_port == i32::from(port)
                })
            }
        }
    }

    /// Whether a flow between the local pod `local` and `remote` is allowed
    /// at the local pod's side, for `dir`: the node's own traffic to its
    /// pods first (kubelet probes, unless --deny-host), then the Admin tier,
    /// the NetworkPolicies, the Baseline tier, and the default allow.
    pub fn allowed(&self, local: &Pod, dir: Dir, remote: IpAddr, protocol: u8, port: u16) -> bool {
        if dir == Dir::Ingress && self.allow_host && self.host_ips.contains(&remote) {
            return true;
        }
        match self.tier("Admin", local, dir, remote, protocol, port) {
            Decision::Accept => return true,
            Decision::Deny => return false,
            Decision::Next => {}
        }
        if self.isolated(local, dir) {
            return self.network_policies_allow(local, dir, remote, protocol, port);
        }
        self.tier("Baseline", local, dir, remote, protocol, port) != Decision::Deny
    }

    /// What the NetworkPolicies of an isolated pod say.
    fn network_policies_allow(&self, local: &Pod, dir: Dir, remote: IpAddr, protocol: u8, port: u16) -> bool {
        // Named ports resolve on the destination: the local pod for ingress,
        // the pod at the remote address (if any) for egress.
        let dest = match dir {
            Dir::Ingress => Some(local),
            Dir::Egress => self.pod_at(remote),
        };
        self.policies.iter().filter(|p| self.applies(p, local, dir)).any(|policy| {
            let spec = policy.spec.as_ref().expect("policy spec");
            // Each rule as (peers, ports).
            let rules: Vec<(&[NetworkPolicyPeer], &[NetworkPolicyPort])> = match dir {
                Dir::Ingress => spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_deref().unwrap_or_default(), r.ports.as_deref().unwrap_or_default()))
                    .collect(),
                Dir::Egress => spec
                    .egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_deref().unwrap_or_default(), r.ports.as_deref().unwrap_or_default()))
                    .collect(),
            };
            rules.iter().any(|(peers, ports)| {
                let peer_ok = peers.is_empty() || peers.iter().any(|p| self.peer_matches(policy, p, remote));
                let port_ok = ports.is_empty() || ports.iter().any(|p| self.port_matches(p, dest, protocol, port));
                peer_ok && port_ok
            })
        })
    }
}

/// The destination pod's container port with this name: (protocol, port).
fn named_container_port(dest: &Pod, name: &str) -> Vec<(u8, u16)> {
    let containers = dest.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|cp| cp.name.as_deref() == Some(name))
        .map(|cp| (proto_number(cp.protocol.as_deref().unwrap_or("TCP")), cp.container_port as u16))
        .collect()
}

/// A label selector given as JSON.
fn json_selector(v: &Value) -> LabelSelector {
    serde_json::from_value(v.clone()).expect("reference: a label selector")
}

impl Cluster<'_> {
    /// The decision of one ClusterNetworkPolicy tier ("Admin" or
    /// "Baseline") for a flow at `local`: its policies that select the pod,
    /// lower priority first (equal priorities by name, palisade's choice),
    /// each one's rules for the direction in order; the first rule that
    /// matches decides (Pass: the next tier does).
    pub fn tier(&self, tier: &str, local: &Pod, dir: Dir, remote: IpAddr, protocol: u8, port: u16) -> Decision {
        let mut policies: Vec<&Value> = self
            .cluster_policies
            .iter()
            .filter(|c| c["spec"]["tier"] == tier && self.cnp_selects(&c["spec"]["subject"], local))
            .collect();
        policies.sort_by_key(|c| (c["spec"]["priority"].as_u64().expect("priority"), c["metadata"]["name"].as_str()));
        let (rules_field, peers_field) = match dir {
            Dir::Ingress => ("ingress", "from"),
            Dir::Egress => ("egress", "to"),
        };
        let dest = match dir {
            Dir::Ingress => Some(local),
            Dir::Egress => self.pod_at(remote),
        };
        for c in policies {
            for rule in c["spec"][rules_field].as_array().into_iter().flatten() {
                let action = rule["action"].as_str().expect("action");
                let peers = rule[peers_field].as_array().expect("peers");
                // Upstream: a peer the implementation cannot evaluate makes
                // an Accept rule match nothing, a Deny or Pass rule "Deny all".
                if peers.iter().any(|p| !self.cnp_peer_known(p)) {
                    if action == "Accept" {
                        continue;
                    }
                    return Decision::Deny;
                }
                let peer_ok = peers.iter().any(|p| self.cnp_peer_matches(p, remote));
                let port_ok = match rule.get("protocols") {
                    None => true,
                    Some(list) => {
                        list.as_array().expect("protocols").iter().any(|p| cnp_port_matches(p, dest, protocol, port))
                    }
                };
                if peer_ok && port_ok {
                    return match action {
                        "Accept" => Decision::Accept,
                        "Deny" => Decision::Deny,
                        "Pass" => Decision::Next,
                        other => panic!("reference: unknown action {other}"),
                    };
                }
            }
        }
        Decision::Next
    }

    fn cnp_selects(&self, subject: &Value, pod: &Pod) -> bool {
        if host_network(pod) {
            return false;
        }
        let ns_labels = self.namespace_labels(&pod_namespace(pod));
        if let Some(ns) = subject.get("namespaces") {
            return selector_matches(&json_selector(ns), &ns_labels);
        }
        let pods = &subject["pods"];
        let ns_sel = pods.get("namespaceSelector").map(json_selector).unwrap_or_default();
        selector_matches(&ns_sel, &ns_labels)
            && selector_matches(&json_selector(&pods["podSelector"]), &pod_labels(pod))
    }

    fn cnp_peer_known(&self, peer: &Value) -> bool {
        ["namespaces", "pods", "nodes", "networks"].iter().any(|k| peer.get(*k).is_some())
    }

    fn cnp_peer_matches(&self, peer: &Value, ip: IpAddr) -> bool {
        if let Some(networks) = peer.get("networks") {
            return networks.as_array().expect("networks").iter().any(|n| cidr_contains(n.as_str().expect("cidr"), ip));
        }
        if let Some(sel) = peer.get("nodes") {
            let sel = json_selector(sel);
            return self.nodes.iter().any(|n| {
                let addresses = n.status.iter().flat_map(|s| s.addresses.iter().flatten());
                let mut ips = addresses
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .filter_map(|a| a.address.parse::<IpAddr>().ok());
                selector_matches(&sel, &n.metadata.labels.clone().unwrap_or_default()) && ips.any(|a| a == ip)
            });
        }
        // Pod peers: running pod-network pods only.
        let Some(pod) = self.pod_at(ip) else { return false };
        let ns_labels = self.namespace_labels(&pod_namespace(pod));
        if let Some(ns) = peer.get("namespaces") {
            return selector_matches(&json_selector(ns), &ns_labels);
        }
        let pods = &peer["pods"];
        let ns_sel = pods.get("namespaceSelector").map(json_selector).unwrap_or_default();
        selector_matches(&ns_sel, &ns_labels)
            && selector_matches(&json_selector(&pods["podSelector"]), &pod_labels(pod))
    }
}

/// One `protocols` entry against a flow; a named port resolves on the
/// destination pod, with the protocol its container port declares.
fn cnp_port_matches(p: &Value, dest: Option<&Pod>, protocol: u8, port: u16) -> bool {
    if let Some(name) = p.get("destinationNamedPort") {
        let Some(dest) = dest else { return false };
        return named_container_port(dest, name.as_str().expect("port name")).contains(&(protocol, port));
    }
    for (field, number) in [("tcp", TCP), ("udp", UDP), ("sctp", SCTP)] {
        let Some(spec) = p.get(field) else { continue };
        if number != protocol {
            return false;
        }
        let dp = &spec["destinationPort"];
        if let Some(n) = dp.get("number") {
            return n.as_u64() == Some(u64::from(port));
        }
        let (start, end) = (dp["range"]["start"].as_u64().expect("start"), dp["range"]["end"].as_u64().expect("end"));
        return start <= u64::from(port) && u64::from(port) <= end;
    }
    panic!("reference: a protocols entry with no field it knows: {p}")
}

fn proto_number(name: &str) -> u8 {
    match name {
        "TCP" => TCP,
        "UDP" => UDP,
        "SCTP" => SCTP,
        other => panic!("reference: unknown protocol {other}"),
    }
}

/// Parses "a.b.c.d/n" or "x::y/n" into (is v4, address as u128, prefix).
fn parse_cidr(s: &str) -> (bool, u128, u32) {
    let (addr, len) = s.split_once('/').expect("cidr has a /");
    let len: u32 = len.parse().expect("prefix length");
    match addr.parse::<IpAddr>().expect("cidr address") {
        IpAddr::V4(a) => (true, u128::from(u32::from(a)), len),
        IpAddr::V6(a) => (false, u128::from(a), len),
    }
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (v4, net, len) = parse_cidr(cidr);
    let (ip_v4, addr, bits) = match ip {
        IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (false, u128::from(a), 128),
    };
    if v4 != ip_v4 {
        return false;
    }
    let shift = bits - len;
    if shift >= 128 {
        return true;
    }
    (net >> shift) == (addr >> shift)
}

fn ip_block_matches(block: &IPBlock, ip: IpAddr) -> bool {
    cidr_contains(&block.cidr, ip) && !block.except.iter().flatten().any(|e| cidr_contains(e, ip))
}

#[test]
fn reference_cidr_contains() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(cidr_contains("10.0.0.0/8", ip("10.255.1.2")));
    assert!(!cidr_contains("10.0.0.0/8", ip("11.0.0.0")));
    assert!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")));
    assert!(!cidr_contains("0.0.0.0/0", ip("::1")));
    assert!(cidr_contains("::/0", ip("fd00::1")));
    assert!(!cidr_contains("::/0", ip("10.0.0.1")));
    assert!(cidr_contains("10.0.0.3/32", ip("10.0.0.3")));
    assert!(!cidr_contains("10.0.0.3/32", ip("10.0.0.2")));
    assert!(cidr_contains("fd00::/120", ip("fd00::ff")));
    assert!(!cidr_contains("fd00::/120", ip("fd00::100")));
    // Host bits set in the CIDR are ignored, as the API's parser does.
    assert!(cidr_contains("10.0.0.1/24", ip("10.0.0.200")));
}
