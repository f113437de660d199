//! The policies: per namespace a default deny and the DNS allow, per
//! workload ingress from and egress to exactly the peers it was seen with.

use super::manifest::{Doc, Item, Node};
use super::workloads::{self, Info};
use super::{Options, Uncovered};
use crate::flows::{FlowKey, Remote, Stats, rfc3339_ms};
use crate::policy::model::{Labels, NAMESPACE_NAME_LABEL, Workload};
use crate::policy::{Direction, Input};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};

/// The label kube-dns and CoreDNS pods carry in every distribution.
pub const DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

type Index = BTreeMap<(String, Workload), Info>;

/// Where DNS is served: namespace and pod labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    pub namespace: String,
    pub labels: Labels,
    /// Whether pods with these labels were found.
    pub found: bool,
}

impl Dns {
    pub fn find(index: &Index) -> Dns {
        let labels: Labels = [(DNS_LABEL.0.to_string(), DNS_LABEL.1.to_string())].into();
        let ns = index
            .iter()
            .find(|(_, i)| i.pods.iter().any(|p| p.labels.get(DNS_LABEL.0).map(String::as_str) == Some(DNS_LABEL.1)));
        match ns {
            Some(((ns, _), _)) => Dns { namespace: ns.clone(), labels, found: true },
            None => Dns { namespace: "kube-system".into(), labels, found: false },
        }
    }

    fn serves(&self, namespace: &str, info: Option<&Info>) -> bool {
        namespace == self.namespace
            && info.is_some_and(|i| i.pods.iter().any(|p| self.labels.iter().all(|(k, v)| p.labels.get(k) == Some(v))))
    }

    /// A DNS query: UDP or TCP to port 53.
    fn is_query(key: &FlowKey) -> bool {
        key.port == Some(53) && (key.protocol == "UDP" || key.protocol == "TCP")
    }
}

/// A NetworkPolicy peer, as generated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Pods { namespace: Option<String>, labels: Labels },
    Block(IpNet),
}

/// A NetworkPolicy port, as generated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    protocol: String,
    /// A name the destination declares, else the number.
    port: Result<u16, String>,
}

fn labels_node(labels: &Labels) -> Node {
    Node::map([("matchLabels", Node::map(labels.iter().map(|(k, v)| (k.clone(), Node::str(v)))))])
}

fn ns_selector(ns: &str) -> Node {
    Node::map([("matchLabels", Node::map([(NAMESPACE_NAME_LABEL, Node::str(ns))]))])
}

impl Peer {
    fn node(&self) -> Node {
        match self {
            Peer::Pods { namespace: None, labels } => Node::map([("podSelector", labels_node(labels))]),
            Peer::Pods { namespace: Some(ns), labels } => {
                Node::map([("namespaceSelector", ns_selector(ns)), ("podSelector", labels_node(labels))])
            }
            Peer::Block(net) => Node::map([("ipBlock", Node::map([("cidr", Node::str(net.to_string()))]))]),
        }
    }
}

impl Port {
    fn node(&self) -> Node {
        let port = match &self.port {
            Ok(n) => Node::Int(i64::from(*n)),
            Err(name) => Node::str(name),
        };
        Node::map([("protocol", Node::str(&self.protocol)), ("port", port)])
    }

    fn text(&self) -> String {
        match &self.port {
            Ok(n) => format!("{}/{n}", self.protocol),
            Err(name) => format!("{}/{name}", self.protocol),
        }
    }
}

fn evidence(stats: &Stats) -> String {
    format!(
        "seen {} times, first {}, last {}",
        stats.count,
        rfc3339_ms(stats.first_seen_ms),
        rfc3339_ms(stats.last_seen_ms)
    )
}

fn add(a: &mut Stats, b: Stats) {
    if a.count == 0 {
        *a = b;
    } else {
        a.count += b.count;
        a.first_seen_ms = a.first_seen_ms.min(b.first_seen_ms);
        a.last_seen_ms = a.last_seen_ms.max(b.last_seen_ms);
    }
}

fn meta(namespace: &str, name: &str) -> Node {
    Node::map([("name", Node::str(name)), ("namespace", Node::str(namespace))])
}

fn policy(namespace: &str, name: &str, spec: Node) -> Node {
    Node::map([
        ("apiVersion", Node::str("networking.k8s.io/v1")),
        ("kind", Node::str("NetworkPolicy")),
        ("metadata", meta(namespace, name)),
        ("spec", spec),
    ])
}

fn types(types: &[&str]) -> Node {
    Node::seq(types.iter().map(|t| Node::str(*t)))
}

/// The namespace's default deny and DNS allow.
fn namespace_docs(ns: &str, dns: &Dns) -> Vec<Doc> {
    let deny = policy(
        ns,
        "default-deny-all",
        Node::map([("podSelector", Node::map::<String>([])), ("policyTypes", types(&["Ingress", "Egress"]))]),
    );
    let dns_peer = Peer::Pods { namespace: Some(dns.namespace.clone()), labels: dns.labels.clone() };
    let dns_ports = ["UDP", "TCP"].map(|p| Port { protocol: p.into(), port: Ok(53) }.node());
    let allow_dns = policy(
        ns,
        "allow-dns",
        Node::map([
            ("podSelector", Node::map::<String>([])),
            ("policyTypes", types(&["Egress"])),
            ("egress", Node::seq([Node::map([("to", Node::seq([dns_peer.node()])), ("ports", Node::seq(dns_ports))])])),
        ]),
    );
    vec![
        Doc { comments: vec![format!("{ns}: nothing in or out unless a policy below allows it")], node: deny },
        Doc {
            comments: vec![format!(
                "{ns}: every pod may ask DNS ({}/{}), UDP and TCP 53",
                dns.namespace,
                dns.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            )],
            node: allow_dns,
        },
    ]
}

/// What generation produced.
pub struct Generated {
    pub docs: Vec<Doc>,
    /// Flows the documents do not allow on purpose, and why.
    pub uncovered: Vec<Uncovered>,
    pub warnings: Vec<String>,
}

/// The policy name for a workload.
pub fn policy_name(w: &Workload) -> String {
    format!("allow-{}-{}", w.kind.to_lowercase(), w.name)
}

/// Policies for `namespaces`, from the flows to allow.
pub fn generate(
    input: &Input,
    index: &Index,
    namespaces: &BTreeSet<String>,
    flows: &BTreeMap<FlowKey, Stats>,
    opts: &Options,
) -> Generated {
    let dns = Dns::find(index);
    let mut out = Generated { docs: Vec::new(), uncovered: Vec::new(), warnings: Vec::new() };
    if !dns.found {
        out.warnings.push(format!(
            "no pod labelled {}={} found: allow-dns assumes DNS there, in namespace {}",
            DNS_LABEL.0, DNS_LABEL.1, dns.namespace
        ));
    }
    // Rules by workload, direction, peer, port.
    type Rules = BTreeMap<Direction, BTreeMap<Peer, BTreeMap<Port, Stats>>>;
    let mut rules: BTreeMap<(String, Workload), Rules> = BTreeMap::new();
    for (key, st) in flows.iter().filter(|(k, _)| namespaces.contains(&k.namespace)) {
        let me = (key.namespace.clone(), key.workload.clone());
        let mut skip = |why: &str| out.uncovered.push(Uncovered { key: key.clone(), why: why.to_string() });
        let Some(info) = index.get(&me) else {
            skip("the workload no longer runs");
            continue;
        };
        if info.labels.is_empty() {
            skip("the workload's pods share no stable label to select them by");
            continue;
        }
        let peer_info = match &key.peer {
            Remote::Pod { namespace, workload } => index.get(&(namespace.clone(), workload.clone())),
            _ => None,
        };
        let peer = match &key.peer {
            Remote::Pod { namespace, .. } => {
                if key.direction == Direction::Egress && Dns::is_query(key) && dns.serves(namespace, peer_info) {
                    continue; // allow-dns
                }
                match peer_info {
                    None => {
                        skip("the peer workload no longer runs");
                        continue;
                    }
                    Some(p) if p.labels.is_empty() => {
                        skip("the peer's pods share no stable label to select them by");
                        continue;
                    }
                    Some(p) => Peer::Pods {
                        namespace: (namespace != &key.namespace).then(|| namespace.clone()),
                        labels: p.labels.clone(),
                    },
                }
            }
            Remote::Node { .. } if key.direction == Direction::Ingress => continue, // the node may reach its pods
            Remote::Node { ip } | Remote::External { ip } => {
                let len = if ip.is_ipv4() { opts.ipv4_prefix } else { opts.ipv6_prefix };
                match IpNet::new(*ip, len) {
                    Ok(net) => Peer::Block(net.trunc()),
                    Err(_) => Peer::Block(IpNet::from(*ip)),
                }
            }
        };
        if key.direction == Direction::Ingress && Dns::is_query(key) && dns.serves(&key.namespace, Some(info)) {
            continue; // the DNS server's rule below admits every pod
        }
        let dest = if key.direction == Direction::Ingress { Some(info) } else { peer_info };
        let port = match (&key.port_name, dest) {
            (Some(name), Some(d))
                if d.pods
                    .iter()
                    .all(|p| p.ports.iter().any(|np| &np.name == name && np.protocol.to_string() == key.protocol)) =>
            {
                Err(name.clone())
            }
            _ => Ok(key.port.unwrap_or(0)),
        };
        let port = Port { protocol: key.protocol.clone(), port };
        let slot = rules.entry(me).or_default().entry(key.direction).or_default().entry(peer).or_default();
        add(slot.entry(port).or_default(), *st);
    }
    for ns in namespaces {
        if !input.namespaces.contains_key(ns) {
            out.warnings.push(format!("namespace {ns} is not in the cluster state"));
        }
        out.docs.extend(namespace_docs(ns, &dns));
        let serves_dns =
            index.iter().filter(|((n, _), i)| n == ns && dns.serves(ns, Some(i))).map(|((_, w), _)| w.clone());
        let serves_dns: BTreeSet<Workload> = serves_dns.collect();
        let mut names: BTreeSet<&Workload> = rules.keys().filter(|(n, _)| n == ns).map(|(_, w)| w).collect();
        names.extend(serves_dns.iter());
        for w in names {
            let info = &index[&(ns.clone(), w.clone())];
            let empty = Rules::new();
            let r = rules.get(&(ns.clone(), w.clone())).unwrap_or(&empty);
            let mut spec = vec![("podSelector".to_string(), labels_node(&info.labels))];
            let mut kinds = Vec::new();
            let mut sections = Vec::new();
            for dir in [Direction::Ingress, Direction::Egress] {
                let mut items: Vec<Item> = Vec::new();
                if dir == Direction::Ingress && serves_dns.contains(w) {
                    let ports = ["UDP", "TCP"].map(|p| Port { protocol: p.into(), port: Ok(53) }.node());
                    items.push(Item {
                        comment: Some("DNS for every pod of the cluster".into()),
                        node: Node::map([
                            ("from", Node::seq([Node::map([("namespaceSelector", Node::map::<String>([]))])])),
                            ("ports", Node::seq(ports)),
                        ]),
                    });
                }
                for (peer, ports) in r.get(&dir).into_iter().flatten() {
                    let comment =
                        ports.iter().map(|(p, st)| format!("{}: {}", p.text(), evidence(st))).collect::<Vec<_>>();
                    let side = if dir == Direction::Ingress { "from" } else { "to" };
                    items.push(Item {
                        comment: Some(comment.join("\n")),
                        node: Node::map([
                            (side, Node::seq([peer.node()])),
                            ("ports", Node::seq(ports.keys().map(Port::node))),
                        ]),
                    });
                }
                if !items.is_empty() {
                    kinds.push(if dir == Direction::Ingress { "Ingress" } else { "Egress" });
                    sections.push((dir.to_string(), Node::Seq(items)));
                }
            }
            if kinds.is_empty() {
                continue;
            }
            spec.push(("policyTypes".into(), types(&kinds)));
            spec.extend(sections);
            let also = workloads::also_selected(index, ns, w, &info.labels);
            let mut comments = vec![format!("{ns}/{w} ({} pods): what it was seen doing", info.pods.len())];
            if !also.is_empty() {
                let names: Vec<String> = also.iter().map(|a| a.to_string()).collect();
                out.warnings.push(format!("{ns}/{w}: its labels also select {}", names.join(", ")));
                comments.push(format!("its labels also select {}", names.join(", ")));
            }
            out.docs.push(Doc { comments, node: policy(ns, &policy_name(w), Node::Map(spec)) });
        }
    }
    out
}

/// The Namespace objects that put `namespaces` in audit mode.
pub fn audit_docs(input: &Input, namespaces: &BTreeSet<String>) -> Vec<Doc> {
    namespaces
        .iter()
        .map(|ns| {
            let labels = input.namespaces.get(ns).map(|n| n.labels.clone()).unwrap_or_else(|| {
                [(NAMESPACE_NAME_LABEL.to_string(), ns.clone())].into()
            });
            let node = Node::map([
                ("apiVersion", Node::str("v1")),
                ("kind", Node::str("Namespace")),
                (
                    "metadata",
                    Node::map([
                        ("name", Node::str(ns)),
                        ("labels", Node::map(labels.iter().map(|(k, v)| (k.clone(), Node::str(v))))),
                        ("annotations", Node::map([(crate::advise::AUDIT_ANNOTATION, Node::str("true"))])),
                    ]),
                ),
            ]);
            Doc {
                comments: vec![
                    format!("audit rollout: {ns}'s would-be drops pass and show as AUDIT (palisade observe --verdict audit);"),
                    "agents honour this only with --allow-namespace-audit; remove the annotation to enforce".into(),
                ],
                node,
            }
        })
        .collect()
}
