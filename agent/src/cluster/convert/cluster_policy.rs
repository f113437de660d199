//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2): the object as
//! upstream defines it (apis/v1alpha2/clusternetworkpolicy_types.go), the
//! validation its experimental CRD applies (OpenAPI limits and CEL rules of
//! bundle v0.2.0, `deploy/crds/`), the fail-closed reading upstream gives
//! peers an implementation does not know, and what a policy that never
//! validated still enforces.

use super::fields::meta_names;
use super::policy::selector_from;
use super::{FieldError, err};
use crate::policy::model::Selector;
use crate::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, ClusterSubject, Protocol, Tier,
};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
pub const KIND: &str = "ClusterNetworkPolicy";

/// The CRD's list limits: rules per direction, peers per rule, CIDRs,
/// domain names and protocols per rule.
const MAX_ITEMS: usize = 25;
const MAX_RULE_NAME: usize = 100;
const MAX_CIDR_LEN: usize = 43;

/// Fields not set are `None`; fields the API server would prune (unknown
/// to the CRD) are ignored, except in peers, where they mean the CRD is
/// newer than palisade (see [`Peer`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct K8sClusterPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<Spec>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Spec {
    pub tier: Option<String>,
    pub priority: Option<i64>,
    pub subject: Option<Subject>,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Subject {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
}

/// An ingress or egress rule (`from` for ingress, `to` for egress).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Rule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub from: Option<Vec<Peer>>,
    pub to: Option<Vec<Peer>>,
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// A peer: exactly one field. Upstream: a peer with no field the
/// implementation knows comes from a newer CRD, and fails closed.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    pub nodes: Option<LabelSelector>,
    pub networks: Option<Vec<String>>,
    pub domain_names: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMatch {
    pub tcp: Option<ProtocolPorts>,
    pub udp: Option<ProtocolPorts>,
    pub sctp: Option<ProtocolPorts>,
    pub destination_named_port: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    pub destination_port: Option<Port>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Port {
    pub number: Option<i64>,
    pub range: Option<PortRange>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PortRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// A valid policy and what palisade reads differently from what it says
/// (peers it does not evaluate): reported, not rejected.
pub(crate) type Converted = (ClusterPolicy, Vec<FieldError>);

impl ClusterPolicy {
    /// A ClusterNetworkPolicy as its CRD validates it.
    pub(crate) fn from_k8s(cnp: &K8sClusterPolicy) -> Result<Converted, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let (_, name) = meta_names(&cnp.metadata, false, &mut errors);
        let Some(spec) = cnp.spec.as_ref() else {
            errors.push(err("spec", "Required value"));
            return Err(errors);
        };
        let tier = match spec.tier.as_deref() {
            None => {
                errors.push(err("spec.tier", "Required value"));
                Tier::Admin
            }
            Some(t) => tier_from(t).unwrap_or_else(|| {
                errors.push(err(
                    "spec.tier",
                    format!("Unsupported value: {t:?}: supported values: \"Admin\", \"Baseline\""),
                ));
                Tier::Admin
            }),
        };
        let priority = match spec.priority {
            None => {
                errors.push(err("spec.priority", "Required value"));
                0
            }
            Some(p) if (0..=1000).contains(&p) => p as u32,
            Some(p) => {
                errors.push(err("spec.priority", format!("{p} must be between 0 and 1000, inclusive")));
                0
            }
        };
        let subject = match &spec.subject {
            None => {
                errors.push(err("spec.subject", "Required value"));
                None
            }
            Some(s) => subject_from(s, "spec.subject", &mut errors),
        };
        let mut directions = [Vec::new(), Vec::new()];
        for (d, (rules, dir, peers_name)) in
            [(&spec.ingress, "ingress", "from"), (&spec.egress, "egress", "to")].into_iter().enumerate()
        {
            let rules = rules.as_deref().unwrap_or_default();
            if rules.len() > MAX_ITEMS {
                errors.push(err(format!("spec.{dir}"), too_many(rules.len())));
            }
            for (i, r) in rules.iter().enumerate() {
                let field = format!("spec.{dir}[{i}]");
                if let Some(rule) = rule_from(r, &field, dir == "egress", peers_name, &mut errors, &mut warnings) {
                    directions[d].push(rule);
                }
            }
        }
        let [ingress, egress] = directions;
        match (subject, errors.is_empty()) {
            (Some(subject), true) => Ok((ClusterPolicy { name, tier, priority, subject, ingress, egress }, warnings)),
            _ => Err(errors),
        }
    }

    /// What a ClusterNetworkPolicy that never validated still does: at the
    /// earliest place it could sit (its tier and priority if they read,
    /// else Admin, 0), for the pods its subject selects (every pod, if the
    /// subject does not read), it denies all traffic in each direction it
    /// has rules for (both if that does not read). Whatever the valid
    /// version would have done, this decides each flow it reaches no more
    /// openly: bad input never opens traffic. `raw` is the object as JSON.
    pub(crate) fn fail_closed(raw: &Value, name: &str) -> ClusterPolicy {
        let spec = &raw["spec"];
        let tier = spec["tier"].as_str().and_then(tier_from).unwrap_or(Tier::Admin);
        let priority = spec["priority"].as_u64().filter(|p| *p <= 1000).unwrap_or(0) as u32;
        let subject = serde_json::from_value::<Subject>(spec["subject"].clone())
            .ok()
            .and_then(|s| {
                let mut errors = Vec::new();
                let subject = subject_from(&s, "", &mut errors);
                subject.filter(|_| errors.is_empty())
            })
            .unwrap_or(ClusterSubject::Namespaces(Selector::default()));
        let has = |dir: &str| match &spec[dir] {
            Value::Null => false,
            Value::Array(rules) => !rules.is_empty(),
            _ => true,
        };
        // A spec that does not read may have had rules in either direction.
        let (ingress, egress) = if spec.is_object() { (has("ingress"), has("egress")) } else { (true, true) };
        let deny_all = || {
            vec![ClusterRule {
                name: "invalid-policy-denies-all".into(),
                action: Action::Deny,
                peers: vec![ClusterPeer::Unsupported("the policy does not validate".into())],
                ports: vec![],
            }]
        };
        ClusterPolicy {
            name: name.to_string(),
            tier,
            priority,
            subject,
            ingress: if ingress { deny_all() } else { vec![] },
            egress: if egress { deny_all() } else { vec![] },
        }
    }
}

fn tier_from(t: &str) -> Option<Tier> {
    match t {
        "Admin" => Some(Tier::Admin),
        "Baseline" => Some(Tier::Baseline),
        _ => None,
    }
}

fn too_many(n: usize) -> String {
    format!("Too many: {n}: must have at most {MAX_ITEMS} items")
}

fn selector(sel: &LabelSelector, field: &str, errors: &mut Vec<FieldError>) -> Selector {
    selector_from(sel, field, errors)
}

fn namespaced_pod(p: &NamespacedPod, field: &str, errors: &mut Vec<FieldError>) -> (Selector, Selector) {
    let namespaces = p
        .namespace_selector
        .as_ref()
        .map(|s| selector(s, &format!("{field}.namespaceSelector"), errors))
        .unwrap_or_default();
    let pods = match &p.pod_selector {
        Some(s) => selector(s, &format!("{field}.podSelector"), errors),
        None => {
            errors.push(err(format!("{field}.podSelector"), "Required value"));
            Selector::default()
        }
    };
    (namespaces, pods)
}

/// Names of the fields set, as the CRD's MinProperties/MaxProperties count
/// them (only the fields it knows: others are pruned).
fn exactly_one(set: &[(&str, bool)], field: &str, errors: &mut Vec<FieldError>) -> bool {
    let names: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
    let all: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
    match names.len() {
        1 => true,
        0 => {
            errors.push(err(field, format!("Required value: exactly one of {} must be set", all.join(", "))));
            false
        }
        _ => {
            errors.push(err(field, format!("must have at most 1 property: {} are set", names.join(" and "))));
            false
        }
    }
}

fn subject_from(s: &Subject, field: &str, errors: &mut Vec<FieldError>) -> Option<ClusterSubject> {
    if !exactly_one(&[("namespaces", s.namespaces.is_some()), ("pods", s.pods.is_some())], field, errors) {
        return None;
    }
    let sub = |name: &str| if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
    match (&s.namespaces, &s.pods) {
        (Some(ns), _) => Some(ClusterSubject::Namespaces(selector(ns, &sub("namespaces"), errors))),
        (_, Some(p)) => {
            let (namespaces, pods) = namespaced_pod(p, &sub("pods"), errors);
            Some(ClusterSubject::Pods { namespaces, pods })
        }
        _ => None,
    }
}

fn rule_from(
    r: &Rule,
    field: &str,
    egress: bool,
    peers_name: &str,
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<FieldError>,
) -> Option<ClusterRule> {
    let before = errors.len();
    let name = r.name.clone().unwrap_or_default();
    if name.chars().count() > MAX_RULE_NAME {
        errors.push(err(format!("{field}.name"), format!("Too long: may not be more than {MAX_RULE_NAME} characters")));
    }
    let action = match r.action.as_deref() {
        Some("Accept") => Action::Accept,
        Some("Deny") => Action::Deny,
        Some("Pass") => Action::Pass,
        None => {
            errors.push(err(format!("{field}.action"), "Required value"));
            Action::Deny
        }
        Some(other) => {
            errors.push(err(
                format!("{field}.action"),
                format!("Unsupported value: {other:?}: supported values: \"Accept\", \"Deny\", \"Pass\""),
            ));
            Action::Deny
        }
    };
    // An ingress rule has `from`, an egress rule `to`; the other is pruned.
    let peers = if egress { &r.to } else { &r.from };
    let peers_field = format!("{field}.{peers_name}");
    let mut out_peers = Vec::new();
    let mut unsupported = Vec::new();
    let mut addresses = false;
    match peers.as_deref() {
        None => errors.push(err(&peers_field, "Required value")),
        Some([]) => errors.push(err(&peers_field, "Required value: must have at least 1 item")),
        Some(list) => {
            if list.len() > MAX_ITEMS {
                errors.push(err(&peers_field, too_many(list.len())));
            }
            for (j, p) in list.iter().enumerate() {
                let f = format!("{peers_field}[{j}]");
                addresses |= p.networks.is_some() || p.nodes.is_some() || p.domain_names.is_some();
                match peer_from(p, &f, egress, errors) {
                    Some(ClusterPeer::Unsupported(what)) => unsupported.push((f, what)),
                    Some(peer) => out_peers.push(peer),
                    None => {}
                }
            }
        }
    }
    let mut ports = Vec::new();
    let mut named = false;
    if let Some(list) = &r.protocols {
        let f = format!("{field}.protocols");
        if list.is_empty() {
            errors.push(err(&f, "Required value: must have at least 1 item"));
        }
        if list.len() > MAX_ITEMS {
            errors.push(err(&f, too_many(list.len())));
        }
        for (k, p) in list.iter().enumerate() {
            named |= p.destination_named_port.is_some();
            if let Some(port) = protocol_from(p, &format!("{f}[{k}]"), errors) {
                ports.push(port);
            }
        }
    }
    if egress && addresses && named {
        errors.push(err(
            field,
            "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
        ));
    }
    if errors.len() > before {
        return None;
    }
    if let Some((_, what)) = unsupported.first() {
        // Upstream: an Accept rule with a peer it cannot evaluate matches no
        // traffic; a Deny or Pass rule becomes "Deny all".
        let reading = match action {
            Action::Accept => "this Accept rule matches no traffic (fail closed, as upstream specifies)",
            Action::Deny | Action::Pass => {
                "this rule denies all traffic in its direction (fail closed, as upstream specifies for Deny and Pass rules)"
            }
        };
        for (f, what) in &unsupported {
            warnings.push(err(f, format!("unsupported peer: palisade does not evaluate {what}; {reading}")));
        }
        let peer = ClusterPeer::Unsupported(what.clone());
        return Some(match action {
            Action::Accept => ClusterRule { name, action, peers: vec![peer], ports },
            Action::Deny | Action::Pass => ClusterRule { name, action: Action::Deny, peers: vec![peer], ports: vec![] },
        });
    }
    Some(ClusterRule { name, action, peers: out_peers, ports })
}

fn peer_from(p: &Peer, field: &str, egress: bool, errors: &mut Vec<FieldError>) -> Option<ClusterPeer> {
    if !egress {
        for (name, set) in [
            ("nodes", p.nodes.is_some()),
            ("networks", p.networks.is_some()),
            ("domainNames", p.domain_names.is_some()),
        ] {
            if set {
                errors.push(err(format!("{field}.{name}"), "Forbidden: ingress peers are namespaces or pods only"));
            }
        }
        if p.nodes.is_some() || p.networks.is_some() || p.domain_names.is_some() {
            return None;
        }
    }
    let known = [
        ("namespaces", p.namespaces.is_some()),
        ("pods", p.pods.is_some()),
        ("nodes", p.nodes.is_some()),
        ("networks", p.networks.is_some()),
        ("domainNames", p.domain_names.is_some()),
    ];
    if known.iter().all(|(_, on)| !on) {
        let fields: Vec<&str> = p.other.keys().map(String::as_str).collect();
        let what = match fields.as_slice() {
            [] => "an empty peer (a CRD newer than palisade, whose fields were pruned?)".to_string(),
            fields => format!("a peer with no field it knows ({})", fields.join(", ")),
        };
        return Some(ClusterPeer::Unsupported(what));
    }
    if !exactly_one(&known, field, errors) {
        return None;
    }
    let sub = |name: &str| format!("{field}.{name}");
    if let Some(ns) = &p.namespaces {
        return Some(ClusterPeer::Namespaces(selector(ns, &sub("namespaces"), errors)));
    }
    if let Some(pods) = &p.pods {
        let (namespaces, pods) = namespaced_pod(pods, &sub("pods"), errors);
        return Some(ClusterPeer::Pods { namespaces, pods });
    }
    if let Some(nodes) = &p.nodes {
        return Some(ClusterPeer::Nodes(selector(nodes, &sub("nodes"), errors)));
    }
    if let Some(networks) = &p.networks {
        let f = sub("networks");
        return list_checked(networks, &f, errors, |cidr, f, errors| match parse_cidr(cidr) {
            Ok(net) => Some(net),
            Err(m) => {
                errors.push(err(f, m));
                None
            }
        })
        .map(ClusterPeer::Networks);
    }
    let names = p.domain_names.as_deref().unwrap_or_default();
    let f = sub("domainNames");
    let names = list_checked(names, &f, errors, |name, f, errors| {
        if !is_domain_name(name) {
            errors.push(err(f, format!("{name:?} does not match the domain name pattern")));
        }
        Some(name.to_string())
    })?;
    Some(ClusterPeer::Unsupported(format!("domainNames {}", names.join(", "))))
}

/// A `listType=set` list of 1 to 25 items, each checked by `item`.
fn list_checked<T>(
    list: &[String],
    field: &str,
    errors: &mut Vec<FieldError>,
    item: impl Fn(&str, &str, &mut Vec<FieldError>) -> Option<T>,
) -> Option<Vec<T>> {
    let before = errors.len();
    if list.is_empty() {
        errors.push(err(field, "Required value: must have at least 1 item"));
    }
    if list.len() > MAX_ITEMS {
        errors.push(err(field, too_many(list.len())));
    }
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if list[..i].contains(s) {
            errors.push(err(&f, format!("Duplicate value: {s:?}")));
            continue;
        }
        if let Some(v) = item(s, &f, errors) {
            out.push(v);
        }
    }
    (errors.len() == before).then_some(out)
}

/// The Kubernetes CEL `isCIDR`: Go's netip.ParsePrefix (no zone, no
/// leading zeros, host bits allowed), no IPv4-mapped IPv6 address; at most
/// 43 characters. Host bits are masked off, as `cidr().masked()`.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let bad = || format!("{s:?}: Invalid CIDR format provided");
    if s.len() > MAX_CIDR_LEN {
        return Err(format!("Too long: may not be more than {MAX_CIDR_LEN} bytes"));
    }
    let (addr, bits) = s.split_once('/').ok_or_else(bad)?;
    if bits.is_empty() || (bits.len() > 1 && bits.starts_with('0')) || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!("{s:?}: IPv4-mapped IPv6 address is not allowed"));
    }
    let bits: u8 = bits.parse().map_err(|_| bad())?;
    IpNet::new(ip, bits).map(|n| n.trunc()).map_err(|_| bad())
}

/// The CRD's DomainName pattern:
/// `^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`
/// (`A-z` spans `[\]^_` and the backtick too, as upstream wrote it).
fn is_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let first = |b: u8| b.is_ascii_digit() || (b'A'..=b'z').contains(&b);
    let last = |b: u8| b.is_ascii_alphanumeric();
    let mid = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let label = |l: &str| {
        let b = l.as_bytes();
        match b {
            [] => false,
            [one] => first(*one),
            [f, m @ .., z] => first(*f) && last(*z) && m.iter().all(|c| mid(*c)),
        }
    };
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| label(l))
}

fn protocol_from(p: &ProtocolMatch, field: &str, errors: &mut Vec<FieldError>) -> Option<ClusterPort> {
    let known = [
        ("tcp", p.tcp.is_some()),
        ("udp", p.udp.is_some()),
        ("sctp", p.sctp.is_some()),
        ("destinationNamedPort", p.destination_named_port.is_some()),
    ];
    if known.iter().all(|(_, on)| !on)
        && let Some(unknown) = p.other.keys().next()
    {
        errors.push(err(
            format!("{field}.{unknown}"),
            "Unsupported value: not a protocol palisade knows (tcp, udp, sctp, destinationNamedPort)",
        ));
        return None;
    }
    if !exactly_one(&known, field, errors) {
        return None;
    }
    if let Some(name) = &p.destination_named_port {
        return Some(ClusterPort::Named(name.clone()));
    }
    let (protocol, ports, name) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(t), _, _) => (Protocol::Tcp, t, "tcp"),
        (_, Some(u), _) => (Protocol::Udp, u, "udp"),
        (_, _, Some(s)) => (Protocol::Sctp, s, "sctp"),
        _ => return None,
    };
    let f = format!("{field}.{name}.destinationPort");
    let Some(port) = &ports.destination_port else {
        errors.push(err(f, "Required value"));
        return None;
    };
    if !exactly_one(&[("number", port.number.is_some()), ("range", port.range.is_some())], &f, errors) {
        return None;
    }
    let number = |n: Option<i64>, f: String, errors: &mut Vec<FieldError>| match n {
        None => {
            errors.push(err(f, "Required value"));
            None
        }
        Some(n) => match u16::try_from(n).ok().filter(|n| *n != 0) {
            Some(n) => Some(n),
            None => {
                errors.push(err(f, format!("{n} must be between 1 and 65535, inclusive")));
                None
            }
        },
    };
    if let Some(n) = port.number {
        let n = number(Some(n), format!("{f}.number"), errors)?;
        return Some(ClusterPort::Ports { protocol, first: n, last: n });
    }
    let range = port.range.as_ref()?;
    let start = number(range.start, format!("{f}.range.start"), errors);
    let end = number(range.end, format!("{f}.range.end"), errors);
    let (start, end) = (start?, end?);
    if start >= end {
        errors.push(err(format!("{f}.range"), "Start port must be less than End port"));
        return None;
    }
    Some(ClusterPort::Ports { protocol, first: start, last: end })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Operator;

    fn cnp(spec: &str) -> Result<Converted, Vec<FieldError>> {
        let yaml = format!("apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata: {{name: c}}\nspec:\n{spec}");
        let raw: K8sClusterPolicy = serde_saphyr::from_str(&yaml).expect("test yaml");
        ClusterPolicy::from_k8s(&raw)
    }

    fn fields(spec: &str) -> Vec<String> {
        cnp(spec).map(|(p, _)| panic!("valid: {p:?}")).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    const HEAD: &str = "  tier: Admin\n  priority: 10\n  subject: {namespaces: {}}\n";

    #[test]
    fn a_full_policy_reads_as_written() {
        let (p, warnings) = cnp(
            "  tier: Baseline\n  priority: 1000\n  subject: {pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}}}\n  ingress:\n  - name: from-monitoring\n    action: Accept\n    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}, {pods: {podSelector: {}}}]\n    protocols: [{tcp: {destinationPort: {number: 9090}}}, {destinationNamedPort: metrics}]\n  egress:\n  - action: Pass\n    to: [{networks: [10.0.0.1/8, 'fd00::/8']}, {nodes: {matchLabels: {role: infra}}}]\n    protocols: [{udp: {destinationPort: {range: {start: 53, end: 54}}}}, {sctp: {destinationPort: {number: 9}}}]\n  - action: Deny\n    to: [{namespaces: {}}]\n",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((p.name.as_str(), p.tier, p.priority), ("c", Tier::Baseline, 1000));
        let ClusterSubject::Pods { namespaces, pods } = &p.subject else { panic!("{:?}", p.subject) };
        assert_eq!(namespaces.match_labels["team"], "a");
        assert_eq!(pods.requirements[0].operator, Operator::In);
        assert_eq!(p.ingress.len(), 1);
        let r = &p.ingress[0];
        assert_eq!((r.name.as_str(), r.action), ("from-monitoring", Action::Accept));
        assert_eq!(r.peers.len(), 2);
        assert_eq!(
            r.ports,
            [
                ClusterPort::Ports { protocol: Protocol::Tcp, first: 9090, last: 9090 },
                ClusterPort::Named("metrics".into())
            ]
        );
        let e = &p.egress[0];
        assert_eq!(e.action, Action::Pass);
        // Host bits are masked, as cidr().masked() does.
        assert_eq!(e.peers[0], ClusterPeer::Networks(vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]));
        assert!(matches!(&e.peers[1], ClusterPeer::Nodes(s) if s.match_labels["role"] == "infra"));
        assert_eq!(
            e.ports,
            [
                ClusterPort::Ports { protocol: Protocol::Udp, first: 53, last: 54 },
                ClusterPort::Ports { protocol: Protocol::Sctp, first: 9, last: 9 }
            ]
        );
        assert_eq!(p.egress[1].ports, []);
    }

    #[test]
    fn the_crd_validation_names_the_field() {
        assert_eq!(fields("  priority: 1001\n  subject: {namespaces: {}}\n"), ["spec.tier", "spec.priority"]);
        assert_eq!(
            fields("  tier: admin\n  priority: -1\n  subject: {}\n"),
            ["spec.tier", "spec.priority", "spec.subject"]
        );
        assert_eq!(
            fields("  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n"),
            ["spec.subject"]
        );
        assert_eq!(fields("  tier: Admin\n  priority: 1\n  subject: {pods: {}}\n"), ["spec.subject.pods.podSelector"]);
        let rule = |r: &str| fields(&format!("{HEAD}  egress:\n  - {r}\n"));
        assert_eq!(rule("{to: [{namespaces: {}}]}"), ["spec.egress[0].action"]);
        assert_eq!(rule("{action: Allow, to: [{namespaces: {}}]}"), ["spec.egress[0].action"]);
        assert_eq!(rule("{action: Deny}"), ["spec.egress[0].to"]);
        assert_eq!(rule("{action: Deny, to: []}"), ["spec.egress[0].to"]);
        assert_eq!(
            rule(&format!("{{name: {}, action: Deny, to: [{{namespaces: {{}}}}]}}", "n".repeat(101))),
            ["spec.egress[0].name"]
        );
        assert!(
            cnp(&format!(
                "{HEAD}  egress:\n  - {{name: {}, action: Deny, to: [{{namespaces: {{}}}}]}}\n",
                "n".repeat(100)
            ))
            .is_ok()
        );
        assert_eq!(rule("{action: Deny, to: [{namespaces: {}, nodes: {}}]}"), ["spec.egress[0].to[0]"]);
        assert_eq!(rule("{action: Deny, to: [{networks: []}]}"), ["spec.egress[0].to[0].networks"]);
        assert_eq!(
            rule(
                "{action: Deny, to: [{networks: [10.0.0.0/33, 10.0.0.0/8, 10.0.0.0/8, '::ffff:10.0.0.0/104', 010.0.0.0/8, 10.0.0.0/08, 10.0.0.0]}]}"
            ),
            [
                "spec.egress[0].to[0].networks[0]",
                "spec.egress[0].to[0].networks[2]",
                "spec.egress[0].to[0].networks[3]",
                "spec.egress[0].to[0].networks[4]",
                "spec.egress[0].to[0].networks[5]",
                "spec.egress[0].to[0].networks[6]"
            ]
        );
        assert_eq!(
            rule("{action: Deny, to: [{pods: {podSelector: {matchLabels: {'a/b/c': x}}}}]}"),
            ["spec.egress[0].to[0].pods.podSelector.matchLabels"]
        );
        let proto = |p: &str| rule(&format!("{{action: Deny, to: [{{namespaces: {{}}}}], protocols: [{p}]}}"));
        assert_eq!(proto("{tcp: {}}"), ["spec.egress[0].protocols[0].tcp.destinationPort"]);
        assert_eq!(
            proto("{tcp: {destinationPort: {number: 0}}}"),
            ["spec.egress[0].protocols[0].tcp.destinationPort.number"]
        );
        assert_eq!(
            proto("{udp: {destinationPort: {number: 65536}}}"),
            ["spec.egress[0].protocols[0].udp.destinationPort.number"]
        );
        assert_eq!(
            proto("{tcp: {destinationPort: {number: 1, range: {start: 1, end: 2}}}}"),
            ["spec.egress[0].protocols[0].tcp.destinationPort"]
        );
        assert_eq!(
            proto("{tcp: {destinationPort: {range: {start: 80, end: 80}}}}"),
            ["spec.egress[0].protocols[0].tcp.destinationPort.range"]
        );
        assert_eq!(
            proto("{tcp: {destinationPort: {range: {start: 80}}}}"),
            ["spec.egress[0].protocols[0].tcp.destinationPort.range.end"]
        );
        assert_eq!(
            proto("{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}"),
            ["spec.egress[0].protocols[0]"]
        );
        assert_eq!(proto("{icmp: {}}"), ["spec.egress[0].protocols[0].icmp"]);
        assert_eq!(rule("{action: Deny, to: [{namespaces: {}}], protocols: []}"), ["spec.egress[0].protocols"]);
        // The egress rule's CEL rule: no named port with address peers.
        for peer in ["{networks: [10.0.0.0/8]}", "{nodes: {}}", "{domainNames: [example.com]}"] {
            assert_eq!(
                rule(&format!(
                    "{{action: Accept, to: [{{namespaces: {{}}}}, {peer}], protocols: [{{destinationNamedPort: http}}]}}"
                )),
                ["spec.egress[0]"],
                "{peer}"
            );
        }
        // Ingress peers are namespaces and pods only.
        assert_eq!(
            fields(&format!(
                "{HEAD}  ingress:\n  - {{action: Deny, from: [{{nodes: {{}}}}, {{networks: [10.0.0.0/8]}}]}}\n"
            )),
            ["spec.ingress[0].from[0].nodes", "spec.ingress[0].from[1].networks"]
        );
        // 25 of everything is fine, 26 is not.
        let peers = vec!["{namespaces: {}}"; 26].join(", ");
        assert_eq!(rule(&format!("{{action: Deny, to: [{peers}]}}")), ["spec.egress[0].to"]);
        let nets: Vec<String> = (0..26).map(|i| format!("10.{i}.0.0/16")).collect();
        assert_eq!(
            rule(&format!("{{action: Deny, to: [{{networks: [{}]}}]}}", nets.join(", "))),
            ["spec.egress[0].to[0].networks"]
        );
        assert!(
            cnp(&format!("{HEAD}  egress:\n  - {{action: Deny, to: [{{networks: [{}]}}]}}\n", nets[..25].join(", ")))
                .is_ok()
        );
        let rules = vec!["  - {action: Deny, from: [{namespaces: {}}]}\n"; 26].concat();
        assert_eq!(fields(&format!("{HEAD}  ingress:\n{rules}")), ["spec.ingress"]);
        let protos = vec!["{tcp: {destinationPort: {number: 1}}}"; 26].join(", ");
        assert_eq!(
            rule(&format!("{{action: Deny, to: [{{namespaces: {{}}}}], protocols: [{protos}]}}")),
            ["spec.egress[0].protocols"]
        );
    }

    #[test]
    fn peers_palisade_does_not_evaluate_fail_closed_as_upstream_says() {
        let (p, w) = cnp(&format!(
            "{HEAD}  egress:\n  - {{name: a, action: Accept, to: [{{namespaces: {{}}}}, {{domainNames: ['*.example.com']}}], protocols: [{{tcp: {{destinationPort: {{number: 443}}}}}}]}}\n  - {{name: p, action: Pass, to: [{{services: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 443}}}}}}]}}\n"
        ))
        .unwrap();
        // Accept: the rule matches nothing (its only peer is unsupported).
        assert_eq!(p.egress[0].action, Action::Accept);
        assert!(matches!(p.egress[0].peers.as_slice(), [ClusterPeer::Unsupported(w)] if w.contains("domainNames")));
        // Pass (or Deny): "Deny all", whatever the ports.
        assert_eq!((p.egress[1].action, p.egress[1].ports.len()), (Action::Deny, 0));
        assert!(matches!(p.egress[1].peers.as_slice(), [ClusterPeer::Unsupported(w)] if w.contains("services")));
        let w: Vec<(&str, bool)> =
            w.iter().map(|w| (w.field.as_str(), w.message.starts_with("unsupported peer"))).collect();
        assert_eq!(w, [("spec.egress[0].to[1]", true), ("spec.egress[1].to[0]", true)]);
        assert_eq!(
            fields(&format!("{HEAD}  egress:\n  - {{action: Accept, to: [{{domainNames: [example]}}]}}\n")),
            ["spec.egress[0].to[0].domainNames[0]"]
        );
    }

    #[test]
    fn never_valid_denies_where_it_could_have_acted() {
        let value = |y: &str| serde_saphyr::from_str::<Value>(y).unwrap();
        let p = ClusterPolicy::fail_closed(
            &value(
                "spec: {tier: Baseline, priority: 7, subject: {namespaces: {matchLabels: {a: b}}}, egress: [{action: Accept, to: []}]}",
            ),
            "c",
        );
        assert_eq!((p.tier, p.priority, p.ingress.len(), p.egress.len()), (Tier::Baseline, 7, 0, 1));
        assert!(matches!(&p.subject, ClusterSubject::Namespaces(s) if s.match_labels["a"] == "b"));
        assert_eq!(p.egress[0].action, Action::Deny);
        assert!(matches!(p.egress[0].peers.as_slice(), [ClusterPeer::Unsupported(_)]));
        // Nothing reads: every pod, Admin 0, both directions.
        let p = ClusterPolicy::fail_closed(&value("spec: [1]"), "c");
        assert_eq!((p.tier, p.priority, p.ingress.len(), p.egress.len()), (Tier::Admin, 0, 1, 1));
        assert_eq!(p.subject, ClusterSubject::Namespaces(Selector::default()));
        let p = ClusterPolicy::fail_closed(
            &value("spec: {tier: Admin, priority: 2000, subject: {pods: {}}, ingress: [{}]}"),
            "c",
        );
        assert_eq!((p.priority, p.ingress.len(), p.egress.len()), (0, 1, 0));
        assert_eq!(p.subject, ClusterSubject::Namespaces(Selector::default()));
    }

    #[test]
    fn domain_names() {
        for ok in ["example.com", "*.example.com", "a.b.c.", "x_y.example.com", "1.2"] {
            assert!(is_domain_name(ok), "{ok}");
        }
        for bad in ["example", "*example.com", "-a.com", "a-.com", "a..com", "*.*.a.com", ""] {
            assert!(!is_domain_name(bad), "{bad}");
        }
    }
}
