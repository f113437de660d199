//! The validated model the compiler works on, converted from Kubernetes
//! objects. Conversion applies the API server's defaulting (policyTypes,
//! protocol TCP, the namespace name label) and its validation; every error
//! names the field at fault, as `kubectl` would.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy as K8sPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries (the API server sets it since 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Namespace annotation that puts one namespace in audit mode.
pub const AUDIT_ANNOTATION: &str = "palisade.dev/audit";

/// One problem with one field of an object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

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

    fn parse(s: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
        match s {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => {
                Err(err(field, format!("unsupported value {other:?}: supported values are \"TCP\", \"UDP\", \"SCTP\"")))
            }
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::parse(Some(&s.to_uppercase()), "protocol").map_err(|e| e.message)
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

    fn from_k8s(sel: &K8sSelector, field: &str, errors: &mut Vec<FieldError>) -> Selector {
        let mut out = Selector::default();
        for (k, v) in sel.match_labels.iter().flatten() {
            validate_label_key(k, &format!("{field}.matchLabels"), errors);
            validate_label_value(v, &format!("{field}.matchLabels[{k}]"), errors);
            out.match_labels.insert(k.clone(), v.clone());
        }
        for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            validate_label_key(&req.key, &format!("{f}.key"), errors);
            let values: BTreeSet<String> = req.values.iter().flatten().cloned().collect();
            let operator = match req.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    errors.push(err(
                        format!("{f}.operator"),
                        format!("not a valid selector operator: {other:?} (In, NotIn, Exists, DoesNotExist)"),
                    ));
                    continue;
                }
            };
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    errors.push(err(format!("{f}.values"), "must be specified when `operator` is 'In' or 'NotIn'"))
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errors.push(err(
                    format!("{f}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )),
                _ => {}
            }
            for (j, v) in values.iter().enumerate() {
                validate_label_value(v, &format!("{f}.values[{j}]"), errors);
            }
            out.requirements.push(Requirement { key: req.key.clone(), operator, values });
        }
        out
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    pub labels: Labels,
    pub audit: bool,
}

/// A Service: only its cluster IPs matter here (traffic to them is DNATed
/// to a backend, and egress policy must judge the backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
}

impl Service {
    pub fn from_k8s(svc: &k8s_openapi::api::core::v1::Service) -> Result<Service, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (namespace, name) = meta_names(&svc.metadata, true, &mut errors);
        let spec = svc.spec.as_ref();
        let mut cluster_ips = Vec::new();
        let listed = spec.and_then(|s| s.cluster_ips.clone()).filter(|l| !l.is_empty());
        let ips = listed.or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip])).unwrap_or_default();
        for (i, ip) in ips.iter().enumerate() {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            match ip.parse::<IpAddr>() {
                Ok(a) => cluster_ips.push(a),
                Err(_) => {
                    errors.push(err(format!("spec.clusterIPs[{i}]"), format!("{ip:?} is not a valid IP address")))
                }
            }
        }
        finish(Service { namespace, name, cluster_ips }, errors)
    }
}

fn meta_names(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespaced: bool,
    errors: &mut Vec<FieldError>,
) -> (String, String) {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(err("metadata.name", "Required value"));
    } else if !is_dns_subdomain(&name) {
        errors.push(err("metadata.name", format!("{name:?} is not a valid DNS subdomain name")));
    }
    let namespace = if namespaced {
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
        if !is_dns_label(&ns) {
            errors.push(err("metadata.namespace", format!("{ns:?} is not a valid DNS label")));
        }
        ns
    } else {
        String::new()
    };
    for (k, v) in meta.labels.iter().flatten() {
        validate_label_key(k, "metadata.labels", errors);
        validate_label_value(v, &format!("metadata.labels[{k}]"), errors);
    }
    (namespace, name)
}

fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, Vec<FieldError>> {
    if errors.is_empty() { Ok(value) } else { Err(errors) }
}

impl Namespace {
    pub fn from_k8s(ns: &K8sNamespace) -> Result<Namespace, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (_, name) = meta_names(&ns.metadata, false, &mut errors);
        if !name.is_empty() && !is_dns_label(&name) {
            errors.push(err("metadata.name", format!("{name:?} is not a valid DNS label")));
        }
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        let audit = match ns.metadata.annotations.as_ref().and_then(|a| a.get(AUDIT_ANNOTATION)) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                errors.push(err(
                    format!("metadata.annotations[{AUDIT_ANNOTATION}]"),
                    format!("must be \"true\" or \"false\", not {v:?}"),
                ));
                false
            }
        };
        finish(Namespace { name, labels, audit }, errors)
    }

    /// The namespace a pod or policy names when no Namespace object exists
    /// (yet): it still carries its name label.
    pub fn implicit(name: &str) -> Namespace {
        let mut labels = Labels::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        Namespace { name: name.to_string(), labels, audit: false }
    }
}

impl Pod {
    pub fn from_k8s(pod: &K8sPod) -> Result<Pod, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (namespace, name) = meta_names(&pod.metadata, true, &mut errors);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()).filter(|l| !l.is_empty()) {
            for (i, ip) in list.iter().enumerate() {
                match ip.ip.parse::<IpAddr>() {
                    Ok(a) if !ips.contains(&a) => ips.push(a),
                    Ok(_) => {
                        errors.push(err(format!("status.podIPs[{i}].ip"), format!("Duplicate value: {:?}", ip.ip)))
                    }
                    Err(_) => errors
                        .push(err(format!("status.podIPs[{i}].ip"), format!("{:?} is not a valid IP address", ip.ip))),
                }
            }
            if let Some(primary) = status.and_then(|s| s.pod_ip.as_ref())
                && primary.parse::<IpAddr>().ok() != ips.first().copied()
            {
                errors.push(err("status.podIP", format!("{primary:?} must equal status.podIPs[0].ip")));
            }
        } else if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).filter(|s| !s.is_empty()) {
            match ip.parse::<IpAddr>() {
                Ok(a) => ips.push(a),
                Err(_) => errors.push(err("status.podIP", format!("{ip:?} is not a valid IP address"))),
            }
        }
        if ips.len() > 2 || (ips.len() == 2 && ips[0].is_ipv4() == ips[1].is_ipv4()) {
            errors.push(err("status.podIPs", "at most one IPv4 and one IPv6 address"));
        }
        let mut ports = Vec::new();
        if let Some(spec) = spec {
            let sidecars = spec.init_containers.iter().flatten().enumerate().filter_map(|(i, c)| {
                (c.restart_policy.as_deref() == Some("Always")).then_some((format!("spec.initContainers[{i}]"), c))
            });
            let containers = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
            for (cfield, c) in containers.chain(sidecars) {
                let mut names = std::collections::HashSet::new();
                for (j, p) in c.ports.iter().flatten().enumerate() {
                    let f = format!("{cfield}.ports[{j}]");
                    let protocol = match Protocol::parse(p.protocol.as_deref(), &format!("{f}.protocol")) {
                        Ok(p) => p,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    let Ok(port) = u16::try_from(p.container_port)
                        .map_err(drop)
                        .and_then(|v| if v == 0 { Err(()) } else { Ok(v) })
                    else {
                        errors.push(err(
                            format!("{f}.containerPort"),
                            format!("{} must be between 1 and 65535, inclusive", p.container_port),
                        ));
                        continue;
                    };
                    if let Some(pname) = &p.name {
                        if let Err(m) = validate_port_name(pname) {
                            errors.push(err(format!("{f}.name"), m));
                            continue;
                        }
                        if !names.insert(pname.as_str()) {
                            errors.push(err(format!("{f}.name"), format!("Duplicate value: {pname:?}")));
                            continue;
                        }
                        ports.push(NamedPort { name: pname.clone(), port, protocol });
                    }
                }
            }
        }
        // Declaration order is kept: a named port resolves to the first
        // container port with that name and protocol, as kube-proxy's
        // targetPort lookup does.
        let mut seen = std::collections::HashSet::new();
        ports.retain(|p| seen.insert(p.clone()));
        let phase = status.and_then(|s| s.phase.as_deref());
        let out = Pod {
            namespace,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            ports,
            terminated: matches!(phase, Some("Succeeded") | Some("Failed")),
        };
        finish(out, errors)
    }

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

impl Policy {
    pub fn from_k8s(np: &K8sPolicy) -> Result<Policy, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (namespace, name) = meta_names(&np.metadata, true, &mut errors);
        let Some(spec) = np.spec.as_ref() else {
            errors.push(err("spec", "Required value"));
            return Err(errors);
        };
        let pod_selector = spec
            .pod_selector
            .as_ref()
            .map(|s| Selector::from_k8s(s, "spec.podSelector", &mut errors))
            .unwrap_or_default();
        let (mut ingress_type, mut egress_type) = (false, false);
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                ingress_type = true;
                egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                if types.len() > 2 {
                    errors.push(err("spec.policyTypes", "may not specify more than two policyTypes"));
                }
                for (i, t) in types.iter().enumerate() {
                    let f = format!("spec.policyTypes[{i}]");
                    let slot = match t.as_str() {
                        "Ingress" => &mut ingress_type,
                        "Egress" => &mut egress_type,
                        other => {
                            errors.push(err(
                                f,
                                format!("Unsupported value: {other:?}: supported values: \"Ingress\", \"Egress\""),
                            ));
                            continue;
                        }
                    };
                    if *slot {
                        errors.push(err(f, format!("Duplicate value: {t:?}")));
                    }
                    *slot = true;
                }
            }
        }
        let ingress = spec.ingress.as_ref().map(|rules| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Rule::from_k8s(
                        r.from.as_deref(),
                        r.ports.as_deref(),
                        &format!("spec.ingress[{i}]"),
                        "from",
                        &mut errors,
                    )
                })
                .collect::<Vec<_>>()
        });
        let egress = spec.egress.as_ref().map(|rules| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Rule::from_k8s(r.to.as_deref(), r.ports.as_deref(), &format!("spec.egress[{i}]"), "to", &mut errors)
                })
                .collect::<Vec<_>>()
        });
        let policy = Policy {
            namespace,
            name,
            pod_selector,
            ingress: ingress_type.then(|| ingress.unwrap_or_default()),
            egress: egress_type.then(|| egress.unwrap_or_default()),
        };
        finish(policy, errors)
    }

    /// What an invalid policy that was never valid still does: it isolates
    /// the pods it selects (all pods of its namespace if even the selector
    /// is broken), in the directions it names, and allows nothing. Bad input
    /// never opens traffic, and a policy meant to restrict does not silently
    /// leave pods open either. `raw` is the object as JSON.
    pub fn fail_closed(raw: &serde_json::Value, namespace: &str, name: &str) -> Policy {
        let spec = &raw["spec"];
        let pod_selector = serde_json::from_value::<K8sSelector>(spec["podSelector"].clone())
            .ok()
            .and_then(|s| {
                let mut errors = Vec::new();
                let sel = Selector::from_k8s(&s, "", &mut errors);
                errors.is_empty().then_some(sel)
            })
            .unwrap_or_default();
        let types: Vec<&str> =
            spec["policyTypes"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
        let has_egress_rules = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
        let egress = types.contains(&"Egress") || has_egress_rules;
        let unknown_type = types.iter().any(|t| *t != "Ingress" && *t != "Egress");
        let ingress = types.contains(&"Ingress") || types.is_empty() || unknown_type || !spec["ingress"].is_null();
        Policy {
            namespace: namespace.to_string(),
            name: name.to_string(),
            pod_selector,
            ingress: ingress.then(Vec::new),
            egress: egress.then(Vec::new),
        }
    }
}

impl Rule {
    fn from_k8s(
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        field: &str,
        peers_name: &str,
        errors: &mut Vec<FieldError>,
    ) -> Rule {
        let mut rule = Rule::default();
        for (i, p) in peers.unwrap_or_default().iter().enumerate() {
            if let Some(peer) = Peer::from_k8s(p, &format!("{field}.{peers_name}[{i}]"), errors) {
                rule.peers.push(peer);
            }
        }
        for (i, p) in ports.unwrap_or_default().iter().enumerate() {
            if let Some(port) = PortSpec::from_k8s(p, &format!("{field}.ports[{i}]"), errors) {
                rule.ports.push(port);
            }
        }
        rule
    }
}

impl Peer {
    fn from_k8s(p: &NetworkPolicyPeer, field: &str, errors: &mut Vec<FieldError>) -> Option<Peer> {
        match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
            (None, None, None) => {
                errors.push(err(field, "must specify a peer"));
                None
            }
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                errors.push(err(
                    field,
                    "may not specify more than 1 peer type (ipBlock with podSelector or namespaceSelector)",
                ));
                None
            }
            (Some(block), None, None) => ip_block(block, &format!("{field}.ipBlock"), errors),
            (None, pods, namespaces) => {
                let pods = pods
                    .as_ref()
                    .map(|s| Selector::from_k8s(s, &format!("{field}.podSelector"), errors))
                    .unwrap_or_default();
                let namespaces = match namespaces {
                    None => NamespaceMatch::Own,
                    Some(s) => {
                        NamespaceMatch::Selector(Selector::from_k8s(s, &format!("{field}.namespaceSelector"), errors))
                    }
                };
                Some(Peer::Pods { namespaces, pods })
            }
        }
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn ip_block(block: &IPBlock, field: &str, errors: &mut Vec<FieldError>) -> Option<Peer> {
    let Some(cidr) = parse_cidr(&block.cidr) else {
        errors.push(err(format!("{field}.cidr"), format!("{:?} is not a valid CIDR", block.cidr)));
        return None;
    };
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        match parse_cidr(e) {
            None => errors.push(err(f, format!("{e:?} is not a valid CIDR"))),
            Some(ex) if !cidr.contains(&ex) || ex.prefix_len() <= cidr.prefix_len() => {
                errors.push(err(f, format!("{e:?} must be a strict subset of `cidr` {}", block.cidr)))
            }
            Some(ex) => except.push(ex),
        }
    }
    except.sort();
    except.dedup();
    Some(Peer::IpBlock { cidr, except })
}

impl PortSpec {
    fn from_k8s(p: &NetworkPolicyPort, field: &str, errors: &mut Vec<FieldError>) -> Option<PortSpec> {
        let protocol = match Protocol::parse(p.protocol.as_deref(), &format!("{field}.protocol")) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                return None;
            }
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortMatch::Any,
            (None, Some(_)) => {
                errors.push(err(format!("{field}.endPort"), "may not be specified when `port` is not specified"));
                return None;
            }
            (Some(IntOrString::Int(n)), end) => {
                let Some(start) = valid_port(*n) else {
                    errors.push(err(format!("{field}.port"), format!("{n} must be between 1 and 65535, inclusive")));
                    return None;
                };
                let end = match end {
                    None => start,
                    Some(e) => match valid_port(e) {
                        Some(e) if e >= start => e,
                        Some(_) => {
                            errors.push(err(
                                format!("{field}.endPort"),
                                format!("{e} must be greater than or equal to `port` ({start})"),
                            ));
                            return None;
                        }
                        None => {
                            errors.push(err(
                                format!("{field}.endPort"),
                                format!("{e} must be between 1 and 65535, inclusive"),
                            ));
                            return None;
                        }
                    },
                };
                PortMatch::Range(start, end)
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    errors.push(err(format!("{field}.endPort"), "may not be specified when `port` is non-numeric"));
                    return None;
                }
                // A numeric string is still a number to the API server's
                // int-or-string, but not a valid port name.
                if let Err(m) = validate_port_name(name) {
                    errors.push(err(format!("{field}.port"), m));
                    return None;
                }
                PortMatch::Named(name.clone())
            }
        };
        Some(PortSpec { protocol, port })
    }
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// IANA_SVC_NAME: 1-15 lowercase alphanumerics or '-', at least one
/// letter, no leading, trailing or doubled '-'.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name: 1-15 lowercase letters, digits or '-', with at least one letter"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn validate_label_key(key: &str, field: &str, errors: &mut Vec<FieldError>) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok = is_label_name(name) && prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p));
    if !ok {
        errors.push(err(field, format!("{key:?} is not a valid label key")));
    }
}

fn validate_label_value(value: &str, field: &str, errors: &mut Vec<FieldError>) {
    if !value.is_empty() && !is_label_name(value) {
        errors.push(err(field, format!("{value:?} is not a valid label value")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Policy, Vec<FieldError>> {
        let np: K8sPolicy = serde_saphyr::from_str(yaml).expect("test yaml");
        Policy::from_k8s(&np)
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let p = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}}").unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{}]}").unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        // An empty egress list is no egress section, as the API server defaults it.
        let p = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: []}").unwrap();
        assert!(p.egress.is_none());
        let p =
            policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}")
                .unwrap();
        assert!(p.ingress.is_none() && p.egress == Some(vec![]));
    }

    #[test]
    fn errors_name_the_field() {
        let e = policy(
            "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 80}]\n    from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n",
        )
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.ingress[0].from[0].ipBlock.except[0]", "spec.ingress[0].ports[0].endPort"]);
        let e = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {matchExpressions: [{key: a, operator: In}]}, policyTypes: [Ingres]}").unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.podSelector.matchExpressions[0].values", "spec.policyTypes[0]"]);
        let e = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{to: [{}], ports: [{protocol: ICMP}, {port: 'HTTP'}]}]}").unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.egress[0].to[0]", "spec.egress[0].ports[0].protocol", "spec.egress[0].ports[1].port"]
        );
    }

    #[test]
    fn selector_semantics() {
        let labels: Labels = [("app".to_string(), "web".to_string())].into();
        let sel = |y: &str| {
            let s: K8sSelector = serde_saphyr::from_str(y).unwrap();
            let mut e = vec![];
            let s = Selector::from_k8s(&s, "s", &mut e);
            assert!(e.is_empty(), "{e:?}");
            s
        };
        assert!(sel("{}").matches(&labels));
        assert!(sel("{matchLabels: {app: web}}").matches(&labels));
        assert!(!sel("{matchLabels: {app: db}}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: app, operator: In, values: [db, web]}]}").matches(&labels));
        assert!(!sel("{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: app, operator: Exists}]}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: tier, operator: DoesNotExist}]}").matches(&labels));
        assert!(!sel("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: Exists}]}").matches(&labels));
    }

    #[test]
    fn fail_closed_isolates_and_allows_nothing() {
        let np: K8sPolicy = serde_saphyr::from_str(
            "metadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, egress: [{ports: [{port: 0}]}]}",
        )
        .unwrap();
        assert!(Policy::from_k8s(&np).is_err());
        let p = Policy::fail_closed(&serde_json::to_value(&np).unwrap(), "x", "p");
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, Some(vec![]));
        assert_eq!(p.pod_selector.match_labels.get("app").map(String::as_str), Some("a"));
    }

    #[test]
    fn port_names() {
        assert!(validate_port_name("http").is_ok());
        assert!(validate_port_name("h2c-80").is_ok());
        assert!(validate_port_name("80").is_err());
        assert!(validate_port_name("a--b").is_err());
        assert!(validate_port_name("Http").is_err());
        assert!(validate_port_name("averyveryverylongname").is_err());
    }
}
