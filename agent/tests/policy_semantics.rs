//! The policy compiler against Kubernetes NetworkPolicy semantics.
//!
//! Every check asks `lookup::decide` (the user-space replica of the kernel
//! classifier) about the compiled maps, and asks the independent reference
//! evaluator in `reference/` the same question. Table tests pin each
//! NetworkPolicy field to hand-written expectations; a property test checks
//! the compiler against the reference on random clusters.

mod reference;

use k8s_openapi::api::core::v1::{Namespace, Node as K8sNode, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade::cluster::convert::objects_to_input_warned;
use palisade::policy::lookup::{self, Verdict};
use palisade::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, ClusterSubject, Operator, Protocol, Requirement,
    Selector, Tier,
};
use palisade::policy::{Compiled, Direction, Input, Node, compile};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use reference::{Cluster, Dir};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

const TCP: u8 = reference::TCP;
const UDP: u8 = reference::UDP;
const SCTP: u8 = reference::SCTP;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;
const IN: Dir = Dir::Ingress;
const OUT: Dir = Dir::Egress;
const ALLOW: bool = true;
const DENY: bool = false;

const NODE: &str = "node-1";
const HOST_IPS: [&str; 2] = ["172.18.0.1", "fc00::1"];

// ---------------------------------------------------------------------------
// A cluster: Kubernetes objects, compiled and referenced.

struct World {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies as JSON (with apiVersion and kind).
    cluster_policies: Vec<Value>,
    nodes: Vec<K8sNode>,
    node: Node,
}

const CNP_API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";

#[derive(serde::Deserialize)]
struct Kind {
    kind: String,
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_else(|| "default".to_string()), meta.name.clone().unwrap_or_default())
}

impl World {
    fn new() -> World {
        World {
            namespaces: vec![],
            pods: vec![],
            policies: vec![],
            cluster_policies: vec![],
            nodes: vec![],
            node: Node {
                name: NODE.to_string(),
                host_ips: HOST_IPS.iter().map(|s| s.parse().unwrap()).collect(),
                allow_host: true,
                audit: false,
            },
        }
    }

    /// Multi-document YAML: Namespaces, Pods, NetworkPolicies, Nodes and
    /// ClusterNetworkPolicies, each document naming its `kind`.
    fn add_yaml(&mut self, yaml: &str) {
        let mut doc = String::new();
        for line in yaml.lines().chain(std::iter::once("---")) {
            if line.trim_end() != "---" {
                doc.push_str(line);
                doc.push('\n');
                continue;
            }
            if !doc.trim().is_empty() {
                let kind: Kind = serde_saphyr::from_str(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
                match kind.kind.as_str() {
                    "Namespace" => self.namespaces.push(serde_saphyr::from_str(&doc).unwrap()),
                    "Pod" => self.pods.push(serde_saphyr::from_str(&doc).unwrap()),
                    "NetworkPolicy" => self.policies.push(serde_saphyr::from_str(&doc).unwrap()),
                    "Node" => self.nodes.push(serde_saphyr::from_str(&doc).unwrap()),
                    "ClusterNetworkPolicy" => {
                        let mut v: Value = serde_saphyr::from_str(&doc).unwrap();
                        v["apiVersion"] = json!(CNP_API_VERSION);
                        self.cluster_policies.push(v);
                    }
                    other => panic!("unexpected kind {other}"),
                }
            }
            doc.clear();
        }
    }

    /// The compiler's input, through the agent's own validation.
    fn input(&self) -> Input {
        let ns = self.namespaces.iter().map(|o| serde_json::to_value(o).unwrap());
        let pods = self.pods.iter().map(|o| serde_json::to_value(o).unwrap());
        let policies = self.policies.iter().map(|o| serde_json::to_value(o).unwrap());
        let nodes = self.nodes.iter().map(|o| serde_json::to_value(o).unwrap());
        let cnps = self.cluster_policies.iter().cloned();
        // Warnings are only allowed for what the tests make on purpose:
        // peers palisade does not evaluate.
        let (input, warnings) = objects_to_input_warned(ns.chain(pods).chain(policies).chain(nodes).chain(cnps))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(warnings.iter().all(|w| w.message.starts_with("unsupported peer")), "{warnings:?}");
        input
    }

    /// The same input, with every map filled in reverse order.
    fn input_reversed(&self) -> Input {
        let fwd = self.input();
        let mut input = Input::default();
        for (k, v) in fwd.namespaces.into_iter().rev() {
            input.namespaces.insert(k, v);
        }
        for (k, v) in fwd.pods.into_iter().rev() {
            input.pods.insert(k, v);
        }
        for (k, v) in fwd.policies.into_iter().rev() {
            input.policies.insert(k, v);
        }
        for (k, v) in fwd.cluster_policies.into_iter().rev() {
            input.cluster_policies.insert(k, v);
        }
        for (k, v) in fwd.nodes.into_iter().rev() {
            input.nodes.insert(k, v);
        }
        input
    }

    fn compiled(&self) -> Compiled {
        compile(&self.input(), &self.node)
    }

    fn reference(&self) -> Cluster<'_> {
        Cluster {
            namespaces: &self.namespaces,
            pods: &self.pods,
            policies: &self.policies,
            cluster_policies: &self.cluster_policies,
            nodes: &self.nodes,
            host_ips: &self.node.host_ips,
            allow_host: self.node.allow_host,
        }
    }

    fn pod(&self, ns_name: &str) -> &Pod {
        let (ns, name) = ns_name.split_once('/').expect("namespace/name");
        self.pods
            .iter()
            .find(|p| name_of(&p.metadata) == (ns.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no pod {ns_name}"))
    }

    /// An address: a literal IP, `ns/pod` (its first IP) or `ns/pod/6`
    /// (its IPv6 address).
    fn ip(&self, s: &str) -> IpAddr {
        if let Ok(ip) = s.parse() {
            return ip;
        }
        let parts: Vec<&str> = s.split('/').collect();
        let ips = reference::pod_ips(self.pod(&format!("{}/{}", parts[0], parts[1])));
        match parts.get(2) {
            None => ips[0],
            Some(&"6") => *ips.iter().find(|i| i.is_ipv6()).expect("pod has an IPv6 address"),
            Some(&"4") => *ips.iter().find(|i| i.is_ipv4()).expect("pod has an IPv4 address"),
            Some(other) => panic!("bad address suffix {other}"),
        }
    }
}

fn direction(d: Dir) -> Direction {
    match d {
        Dir::Ingress => Direction::Ingress,
        Dir::Egress => Direction::Egress,
    }
}

/// What the compiled maps decide for a flow at a local pod; None when the
/// pod has no local endpoint.
fn decide(c: &Compiled, ns: &str, name: &str, dir: Dir, remote: IpAddr, proto: u8, port: u16) -> Option<Verdict> {
    let ep = c.endpoints.iter().find(|e| e.namespace == ns && e.name == name)?;
    Some(lookup::decide(c, &ep.kernel(), direction(dir), remote, proto, port))
}

/// (local pod, direction, remote address, protocol, port, expected).
type Row = (&'static str, Dir, &'static str, u8, u16, bool);

fn check(w: &World, rows: &[Row]) {
    let c = w.compiled();
    assert!(c.warnings.is_empty(), "warnings: {:?}", c.warnings);
    let r = w.reference();
    let mut failures = Vec::new();
    for &(local, dir, remote, proto, port, expected) in rows {
        let (ns, name) = local.split_once('/').unwrap();
        let ip = w.ip(remote);
        let verdict =
            decide(&c, ns, name, dir, ip, proto, port).unwrap_or_else(|| panic!("{local} is not a local endpoint"));
        let pod = w.pod(local);
        let want = r.allowed(pod, dir, ip, proto, port);
        let row = format!("{local} {dir:?} {remote} ({ip}) proto {proto} port {port}: expected {expected}");
        if verdict.allowed != expected {
            failures.push(format!("{row}, compiler says {}", verdict.allowed));
        }
        if want != expected {
            failures.push(format!("{row}, reference says {want}"));
        }
        if verdict.isolated != r.isolated(pod, dir) {
            failures.push(format!("{row}: compiler isolated={}, reference disagrees", verdict.isolated));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Isolation of a local pod in (ingress, egress), from the endpoint flags.
fn isolation(w: &World, local: &str) -> (bool, bool) {
    let c = w.compiled();
    let (ns, name) = local.split_once('/').unwrap();
    let any: IpAddr = "8.8.8.8".parse().unwrap();
    let i = decide(&c, ns, name, IN, any, TCP, 1).expect("local endpoint").isolated;
    let e = decide(&c, ns, name, OUT, any, TCP, 1).expect("local endpoint").isolated;
    (i, e)
}

// ---------------------------------------------------------------------------
// The table tests' cluster.
//
// namespaces: x {team: a, env: prod}, y {team: b, env: prod}, z {team: c}
// pods (node-1 is local):
//   x/a  app=a          node-1  10.0.0.1 fd00::1  http 80/TCP, dns 53/UDP
//   x/b  app=b          node-1  10.0.0.2          http 8080/TCP, dns 53/TCP
//   x/c  app=c tier=db  node-2  10.0.1.3 fd00::3  http 81/TCP
//   y/a  app=a          node-1  10.0.0.4 fd00::4  http 80/TCP, assoc 81/SCTP
//   y/b  app=b          node-2  10.0.1.5
//   z/a  app=a tier=web (unset) 10.0.0.6 fd00::6
//   z/b  app=b          node-2  fd00::7
//   x/done     app=a  node-1  Succeeded, 10.0.0.9
//   x/hostnet  app=a  node-1  hostNetwork, 172.18.0.1 (the node)
//   x/pending  app=a  node-1  no address yet
// node host IPs: 172.18.0.1, fc00::1

const BASE: &str = r#"
kind: Namespace
metadata: {name: x, labels: {team: a, env: prod}}
---
kind: Namespace
metadata: {name: y, labels: {team: b, env: prod}}
---
kind: Namespace
metadata: {name: z, labels: {team: c}}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers:
  - name: main
    ports:
    - {name: http, containerPort: 80}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec:
  nodeName: node-1
  containers:
  - name: main
    ports: [{name: http, containerPort: 8080, protocol: TCP}]
  - name: side
    ports: [{name: dns, containerPort: 53, protocol: TCP}]
status: {phase: Running, podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c, tier: db}}
spec:
  nodeName: node-2
  containers:
  - name: main
    ports: [{name: http, containerPort: 81}]
status: {phase: Running, podIPs: [{ip: 10.0.1.3}, {ip: "fd00::3"}]}
---
kind: Pod
metadata: {name: a, namespace: y, labels: {app: a}}
spec:
  nodeName: node-1
  containers:
  - name: main
    ports:
    - {name: http, containerPort: 80}
    - {name: assoc, containerPort: 81, protocol: SCTP}
status: {phase: Running, podIPs: [{ip: 10.0.0.4}, {ip: "fd00::4"}]}
---
kind: Pod
metadata: {name: b, namespace: y, labels: {app: b}}
spec:
  nodeName: node-2
  containers: [{name: main}]
status: {phase: Running, podIP: 10.0.1.5}
---
kind: Pod
metadata: {name: a, namespace: z, labels: {app: a, tier: web}}
spec:
  containers: [{name: main}]
status: {phase: Running, podIPs: [{ip: 10.0.0.6}, {ip: "fd00::6"}]}
---
kind: Pod
metadata: {name: b, namespace: z, labels: {app: b}}
spec:
  nodeName: node-2
  containers: [{name: main}]
status: {phase: Running, podIPs: [{ip: "fd00::7"}]}
---
kind: Pod
metadata: {name: done, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers: [{name: main}]
status: {phase: Succeeded, podIP: 10.0.0.9}
---
kind: Pod
metadata: {name: hostnet, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  hostNetwork: true
  containers: [{name: main}]
status: {phase: Running, podIP: 172.18.0.1}
---
kind: Pod
metadata: {name: pending, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers: [{name: main}]
status: {phase: Pending}
"#;

fn world(policies: &str) -> World {
    let mut w = World::new();
    w.add_yaml(BASE);
    w.add_yaml(policies);
    w
}

// ---------------------------------------------------------------------------
// Table tests.

#[test]
fn endpoints_are_the_running_local_pod_network_pods() {
    let c = world("").compiled();
    let mut eps: Vec<String> = c.endpoints.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect();
    eps.sort();
    // x/c, y/b, z/b run elsewhere; done, hostnet and pending are not pod
    // network endpoints.
    assert_eq!(eps, ["x/a", "x/b", "y/a", "z/a"]);
}

#[test]
fn no_policy_allows_everything() {
    let w = world("");
    check(
        &w,
        &[
            ("x/a", IN, "y/b", TCP, 80, ALLOW),
            ("x/a", IN, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", IN, "2001:db8::1", ICMP6, 0, ALLOW),
            ("x/a", OUT, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", OUT, "z/b", SCTP, 9, ALLOW),
            ("z/a", OUT, "x/a/6", ICMP6, 7, ALLOW),
        ],
    );
    assert_eq!(isolation(&w, "x/a"), (false, false));
}

#[test]
fn deny_all_ingress() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, false));
    assert_eq!(isolation(&w, "x/b"), (true, false));
    assert_eq!(isolation(&w, "y/a"), (false, false));
    check(
        &w,
        &[
            ("x/a", IN, "x/b", TCP, 80, DENY),
            ("x/a", IN, "x/c/6", TCP, 80, DENY),
            ("x/a", IN, "y/a", TCP, 80, DENY),
            ("x/a", IN, "8.8.8.8", ICMP, 0, DENY),
            ("x/b", IN, "x/a", UDP, 53, DENY),
            // Egress is untouched; other namespaces too.
            ("x/a", OUT, "8.8.8.8", TCP, 443, ALLOW),
            ("x/a", OUT, "x/b", TCP, 80, ALLOW),
            ("y/a", IN, "x/a", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn deny_all_egress() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}",
    );
    assert_eq!(isolation(&w, "x/a"), (false, true));
    check(
        &w,
        &[
            ("x/a", OUT, "x/b", TCP, 8080, DENY),
            ("x/a", OUT, "8.8.8.8", UDP, 53, DENY),
            ("x/a", OUT, "2001:db8::1", ICMP6, 0, DENY),
            // The node's addresses get no egress allowance.
            ("x/a", OUT, "172.18.0.1", TCP, 10250, DENY),
            ("x/a", IN, "x/b", TCP, 80, ALLOW),
            ("y/a", OUT, "x/a", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn allow_all_ingress_and_egress() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: all-in, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
---
kind: NetworkPolicy
metadata: {name: all-out, namespace: y}
spec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, false));
    assert_eq!(isolation(&w, "y/a"), (false, true));
    check(
        &w,
        &[
            ("x/a", IN, "8.8.8.8", TCP, 1, ALLOW),
            ("x/a", IN, "2001:db8::1", UDP, 65535, ALLOW),
            ("x/a", IN, "z/b", SCTP, 80, ALLOW),
            ("x/a", IN, "x/b", ICMP, 0, ALLOW),
            ("y/a", OUT, "8.8.8.8", ICMP, 3, ALLOW),
            ("y/a", OUT, "fd00::7", ICMP6, 3, ALLOW),
            ("y/a", OUT, "x/a", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn egress_rules_without_policy_types_isolate_both_directions() {
    // policyTypes defaults to [Ingress, Egress] when egress rules exist.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: out, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, egress: [{}]}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, true));
    assert_eq!(isolation(&w, "x/b"), (false, false));
    check(&w, &[("x/a", OUT, "8.8.8.8", UDP, 53, ALLOW), ("x/a", IN, "x/b", TCP, 80, DENY)]);
}

#[test]
fn policy_types_defaulting() {
    // `egress: []` is no egress section: ingress only.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, egress: []}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, false));
    // An empty policyTypes list defaults like a missing one.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, policyTypes: [], egress: [{ports: [{port: 53, protocol: UDP}]}]}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, true));
    check(&w, &[("x/a", OUT, "8.8.8.8", UDP, 53, ALLOW), ("x/a", OUT, "8.8.8.8", TCP, 53, DENY)]);
    // policyTypes [Egress]: ingress rules are ignored, ingress not isolated.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}]}]",
    );
    assert_eq!(isolation(&w, "x/a"), (false, true));
    check(
        &w,
        &[
            ("x/a", IN, "8.8.8.8", TCP, 80, ALLOW),
            ("x/a", OUT, "192.168.1.1", TCP, 80, DENY),
            ("x/a", OUT, "x/b", TCP, 80, DENY),
        ],
    );
    // policyTypes [Ingress]: egress rules are ignored.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress], egress: [{}]}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, false));
    // Both named, no rules: deny all both ways.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress, Ingress]}",
    );
    assert_eq!(isolation(&w, "x/a"), (true, true));
    check(&w, &[("x/a", OUT, "x/b", TCP, 80, DENY), ("x/a", IN, "x/b", TCP, 80, DENY)]);
}

#[test]
fn pod_selector_peer_is_the_policy_namespace() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]",
    );
    assert_eq!(isolation(&w, "x/a"), (true, false));
    assert_eq!(isolation(&w, "x/b"), (false, false));
    check(
        &w,
        &[
            ("x/a", IN, "x/b", TCP, 80, ALLOW),
            ("x/a", IN, "x/b", UDP, 9999, ALLOW),
            ("x/a", IN, "y/b", TCP, 80, DENY),
            ("x/a", IN, "z/b", TCP, 80, DENY),
            ("x/a", IN, "x/c", TCP, 80, DENY),
            ("x/a", IN, "8.8.8.8", TCP, 80, DENY),
            ("x/b", IN, "8.8.8.8", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn empty_pod_selector_peer_is_every_pod_of_the_namespace() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {}
  egress: [{to: [{podSelector: {}}]}]",
    );
    check(
        &w,
        &[
            ("x/a", OUT, "x/b", TCP, 80, ALLOW),
            ("x/a", OUT, "x/c/6", TCP, 80, ALLOW),
            ("x/b", OUT, "x/a/6", UDP, 53, ALLOW),
            ("x/a", OUT, "y/a", TCP, 80, DENY),
            ("x/a", OUT, "8.8.8.8", TCP, 80, DENY),
            // Not pods: a terminated pod's address, the node's address.
            ("x/a", OUT, "10.0.0.9", TCP, 80, DENY),
            ("x/a", OUT, "172.18.0.1", TCP, 80, DENY),
        ],
    );
}

#[test]
fn namespace_selector_peer() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: from-team-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]
    ports: [{port: 80}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "y/a", TCP, 80, ALLOW),
            ("x/a", IN, "y/a/6", UDP, 5, ALLOW),
            ("x/a", IN, "y/b", TCP, 80, ALLOW),
            ("x/a", IN, "x/b", TCP, 80, DENY),
            ("x/a", IN, "z/a", TCP, 80, ALLOW),
            ("x/a", IN, "z/b", TCP, 80, ALLOW),
            ("x/a", IN, "z/b", TCP, 81, DENY),
            ("x/a", IN, "8.8.8.8", TCP, 80, DENY),
        ],
    );
    // An empty namespaceSelector is every namespace.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: any-pod, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "x/b", TCP, 80, ALLOW),
            ("x/a", IN, "z/b", TCP, 80, ALLOW),
            ("x/a", IN, "y/b", TCP, 80, ALLOW),
            ("x/a", IN, "10.0.0.200", TCP, 80, DENY),
            ("x/a", IN, "10.0.0.9", TCP, 80, DENY),
        ],
    );
}

#[test]
fn namespace_without_object_still_has_its_name_label() {
    let mut w = World::new();
    w.add_yaml(
        "kind: Pod
metadata: {name: a, namespace: ghost, labels: {app: a}}
spec: {containers: [{name: main}]}
status: {phase: Running, podIP: 10.9.0.1}
---
kind: Pod
metadata: {name: b, namespace: other}
spec: {nodeName: node-2, containers: [{name: main}]}
status: {phase: Running, podIP: 10.9.0.2}
---
kind: Pod
metadata: {name: c, namespace: ghost}
spec: {nodeName: node-2, containers: [{name: main}]}
status: {phase: Running, podIP: 10.9.0.3}
---
kind: NetworkPolicy
metadata: {name: p, namespace: ghost}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]}]",
    );
    check(&w, &[("ghost/a", IN, "10.9.0.2", TCP, 80, ALLOW), ("ghost/a", IN, "10.9.0.3", TCP, 80, DENY)]);
}

#[test]
fn namespace_and_pod_selector_in_one_peer_vs_two_peers() {
    // One peer: pods app=a in namespaces team=b.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
      podSelector: {matchLabels: {app: a}}",
    );
    check(
        &w,
        &[
            ("x/b", IN, "y/a", TCP, 80, ALLOW),
            ("x/b", IN, "y/a/6", TCP, 80, ALLOW),
            ("x/b", IN, "y/b", TCP, 80, DENY),
            ("x/b", IN, "x/a", TCP, 80, DENY),
            ("x/b", IN, "z/a", TCP, 80, DENY),
        ],
    );
    // Two peers: namespaces team=b, or pods app=a of x.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
    - podSelector: {matchLabels: {app: a}}",
    );
    check(
        &w,
        &[
            ("x/b", IN, "y/a", TCP, 80, ALLOW),
            ("x/b", IN, "y/b", TCP, 80, ALLOW),
            ("x/b", IN, "x/a", TCP, 80, ALLOW),
            ("x/b", IN, "x/a/6", TCP, 80, ALLOW),
            ("x/b", IN, "x/c", TCP, 80, DENY),
            ("x/b", IN, "z/a", TCP, 80, DENY),
        ],
    );
}

#[test]
fn match_expressions_each_operator() {
    let policy = |expr: &str| {
        world(&format!(
            "kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchExpressions: [{expr}]}}}}]}}]"
        ))
    };
    // Peers: x/a app=a, x/c app=c tier=db, y/a app=a, y/b app=b,
    // z/a app=a tier=web, z/b app=b.
    let peers = ["x/a", "x/c", "y/a", "y/b", "z/a", "z/b"];
    let cases: [(&str, [bool; 6]); 6] = [
        ("{key: app, operator: In, values: [a, c]}", [ALLOW, ALLOW, ALLOW, DENY, ALLOW, DENY]),
        ("{key: app, operator: NotIn, values: [a]}", [DENY, ALLOW, DENY, ALLOW, DENY, ALLOW]),
        // NotIn matches pods without the key.
        ("{key: tier, operator: NotIn, values: [db]}", [ALLOW, DENY, ALLOW, ALLOW, ALLOW, ALLOW]),
        ("{key: tier, operator: Exists}", [DENY, ALLOW, DENY, DENY, ALLOW, DENY]),
        ("{key: tier, operator: DoesNotExist}", [ALLOW, DENY, ALLOW, ALLOW, DENY, ALLOW]),
        ("{key: tier, operator: In, values: [web, none]}", [DENY, DENY, DENY, DENY, ALLOW, DENY]),
    ];
    for (expr, expected) in cases {
        let w = policy(expr);
        let rows: Vec<Row> = peers.iter().zip(expected).map(|(p, e)| ("x/b", IN, *p, TCP, 80, e)).collect();
        check(&w, &rows);
    }
    // matchLabels and matchExpressions AND together, also with several
    // expressions; on namespaces too.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: env, operator: Exists}
        - {key: team, operator: NotIn, values: [a]}
      podSelector:
        matchLabels: {app: a}
        matchExpressions: [{key: tier, operator: DoesNotExist}]
    - namespaceSelector:
        matchLabels: {team: c}
        matchExpressions: [{key: env, operator: DoesNotExist}]
      podSelector:
        matchExpressions: [{key: app, operator: In, values: [b]}, {key: tier, operator: Exists}]",
    );
    check(
        &w,
        &[
            ("x/b", IN, "y/a", TCP, 80, ALLOW),
            ("x/b", IN, "y/b", TCP, 80, DENY),
            ("x/b", IN, "x/a", TCP, 80, DENY),
            ("x/b", IN, "z/a", TCP, 80, DENY),
            ("x/b", IN, "z/b", TCP, 80, DENY),
        ],
    );
    // The policy's own podSelector with expressions.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: z}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: In, values: [web]}]}",
    );
    assert_eq!(isolation(&w, "z/a"), (true, false));
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a]}]}",
    );
    assert_eq!(isolation(&w, "x/a"), (false, false));
    assert_eq!(isolation(&w, "x/b"), (true, false));
}

#[test]
fn ip_block_with_except_on_pod_addresses() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.2/32, 10.0.1.0/24]}}]}]",
    );
    check(
        &w,
        &[
            ("y/a", IN, "x/a", TCP, 80, ALLOW),
            ("y/a", IN, "x/b", TCP, 80, DENY),
            ("y/a", IN, "x/c", TCP, 80, DENY),
            ("y/a", IN, "y/b", TCP, 80, DENY),
            ("y/a", IN, "z/a", UDP, 53, ALLOW),
            // The same pods by their IPv6 addresses are outside the block.
            ("y/a", IN, "x/a/6", TCP, 80, DENY),
            ("y/a", IN, "10.0.0.200", TCP, 80, ALLOW),
            ("y/a", IN, "10.0.1.200", TCP, 80, DENY),
            ("y/a", IN, "10.1.0.1", TCP, 80, DENY),
            // A terminated pod's address is just an address.
            ("y/a", IN, "10.0.0.9", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn ip_block_with_except_on_external_addresses() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [192.168.0.0/16, 10.0.0.0/8]}}]
  - to: [{ipBlock: {cidr: 192.168.1.0/24, except: [192.168.1.128/25]}}]
    ports: [{port: 443}]",
    );
    check(
        &w,
        &[
            ("x/a", OUT, "8.8.8.8", TCP, 443, ALLOW),
            ("x/a", OUT, "8.8.8.8", ICMP, 0, ALLOW),
            ("x/a", OUT, "192.168.2.1", TCP, 443, DENY),
            ("x/a", OUT, "192.168.1.1", TCP, 443, ALLOW),
            ("x/a", OUT, "192.168.1.1", TCP, 80, DENY),
            ("x/a", OUT, "192.168.1.127", TCP, 443, ALLOW),
            ("x/a", OUT, "192.168.1.128", TCP, 443, DENY),
            ("x/a", OUT, "192.168.1.255", TCP, 443, DENY),
            ("x/a", OUT, "x/b", TCP, 80, DENY),
            ("x/a", OUT, "172.18.0.1", TCP, 80, ALLOW),
            // 0.0.0.0/0 is IPv4 only.
            ("x/a", OUT, "2001:db8::1", TCP, 443, DENY),
            ("x/a", OUT, "x/c/6", TCP, 81, DENY),
        ],
    );
}

#[test]
fn ip_block_families_do_not_mix() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{ipBlock: {cidr: 'fd00::/64', except: ['fd00::3/128']}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: '::/0'}}]
    ports: [{port: 81}]
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 82}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "z/b", TCP, 80, ALLOW),
            ("x/a", IN, "y/a/6", TCP, 80, ALLOW),
            ("x/a", IN, "x/c/6", TCP, 80, DENY),
            ("x/a", IN, "x/c", TCP, 80, DENY),
            ("x/a", IN, "y/a", TCP, 80, DENY),
            ("x/a", IN, "fd00:0:0:1::1", TCP, 80, DENY),
            ("x/a", IN, "2001:db8::1", TCP, 81, ALLOW),
            ("x/a", IN, "fd00::3", TCP, 81, ALLOW),
            ("x/a", IN, "fc00::1", TCP, 81, ALLOW),
            ("x/a", IN, "8.8.8.8", TCP, 81, DENY),
            ("x/a", IN, "x/c", TCP, 81, DENY),
            ("x/a", IN, "8.8.8.8", TCP, 82, ALLOW),
            ("x/a", IN, "x/c", TCP, 82, ALLOW),
            ("x/a", IN, "2001:db8::1", TCP, 82, DENY),
            ("x/a", IN, "x/c/6", TCP, 82, DENY),
            // IPv4-mapped IPv6 is IPv6.
            ("x/a", IN, "::ffff:8.8.8.8", TCP, 82, DENY),
            ("x/a", IN, "::ffff:8.8.8.8", TCP, 81, ALLOW),
        ],
    );
}

#[test]
fn nested_ip_blocks_across_policies() {
    // A narrower block in one policy must not hide a wider one in another.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: wide, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/24]}}], ports: [{port: 80}]}]
---
kind: NetworkPolicy
metadata: {name: narrow, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/28, except: [10.0.0.4/30]}}], ports: [{port: 81}]}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "10.1.2.3", TCP, 80, ALLOW),
            ("x/a", IN, "x/c", TCP, 80, ALLOW),
            ("x/a", IN, "x/b", TCP, 80, DENY),
            ("x/a", IN, "x/b", TCP, 81, ALLOW),
            ("x/a", IN, "y/a", TCP, 81, DENY),
            ("x/a", IN, "10.0.0.7", TCP, 81, DENY),
            ("x/a", IN, "10.0.0.8", TCP, 81, ALLOW),
            ("x/a", IN, "10.0.0.16", TCP, 81, DENY),
            ("x/b", IN, "10.0.0.8", TCP, 81, DENY),
            ("x/b", IN, "10.0.1.8", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn ip_block_host_bits_are_ignored() {
    // The API server has always read "10.0.0.1/24" as 10.0.0.0/24.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.77/24, except: [10.0.0.5/30]}}]}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "10.0.0.1", TCP, 80, ALLOW),
            ("x/a", IN, "x/b", TCP, 80, ALLOW),
            ("x/a", IN, "y/a", TCP, 80, DENY),
            ("x/a", IN, "10.0.0.7", TCP, 80, DENY),
            ("x/a", IN, "10.0.0.8", TCP, 80, ALLOW),
            ("x/a", IN, "10.0.1.1", TCP, 80, DENY),
        ],
    );
}

#[test]
fn empty_label_values_are_values() {
    let w = world(
        "kind: Pod
metadata: {name: e, namespace: x, labels: {app: e, tier: ''}}
spec: {nodeName: node-2, containers: [{name: main}]}
status: {phase: Running, podIP: 10.0.1.20}
---
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {tier: ''}}}]
    ports: [{port: 80}]
  - from: [{podSelector: {matchExpressions: [{key: tier, operator: In, values: ['']}]}}]
    ports: [{port: 81}]
  - from: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: ['']}]}}]
    ports: [{port: 82}]
  - from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]
    ports: [{port: 83}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "10.0.1.20", TCP, 80, ALLOW),
            ("x/a", IN, "10.0.1.20", TCP, 81, ALLOW),
            ("x/a", IN, "10.0.1.20", TCP, 82, DENY),
            ("x/a", IN, "10.0.1.20", TCP, 83, ALLOW),
            // x/b has no tier label; x/c has tier=db.
            ("x/a", IN, "x/b", TCP, 80, DENY),
            ("x/a", IN, "x/b", TCP, 81, DENY),
            ("x/a", IN, "x/b", TCP, 82, ALLOW),
            ("x/a", IN, "x/b", TCP, 83, DENY),
            ("x/a", IN, "x/c", TCP, 82, ALLOW),
            ("x/a", IN, "x/c", TCP, 83, ALLOW),
        ],
    );
}

#[test]
fn ports_by_number_and_default_protocol() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: 80}, {port: 53, protocol: UDP}, {port: 81, protocol: TCP}]}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "y/b", TCP, 80, ALLOW),
            ("x/a", IN, "y/b", UDP, 80, DENY),
            ("x/a", IN, "y/b", SCTP, 80, DENY),
            ("x/a", IN, "y/b", TCP, 81, ALLOW),
            ("x/a", IN, "y/b", TCP, 79, DENY),
            ("x/a", IN, "y/b", UDP, 53, ALLOW),
            ("x/a", IN, "y/b", TCP, 53, DENY),
            ("x/a", IN, "8.8.8.8", TCP, 80, ALLOW),
            ("x/a", IN, "2001:db8::1", TCP, 80, ALLOW),
            // Ports, hence no ICMP.
            ("x/a", IN, "y/b", ICMP, 80, DENY),
            ("x/a", IN, "z/b", ICMP6, 0, DENY),
        ],
    );
}

#[test]
fn protocols_without_port() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP}, {protocol: SCTP, port: 81}]}]
  egress: [{ports: [{protocol: SCTP}]}, {ports: [{}]}]",
    );
    check(
        &w,
        &[
            ("y/a", IN, "x/a", UDP, 1, ALLOW),
            ("y/a", IN, "x/a", UDP, 65535, ALLOW),
            ("y/a", IN, "x/a", TCP, 1, DENY),
            ("y/a", IN, "x/a", SCTP, 81, ALLOW),
            ("y/a", IN, "x/a", SCTP, 80, DENY),
            ("y/a", IN, "x/a", ICMP, 0, DENY),
            ("y/a", OUT, "x/a", SCTP, 7, ALLOW),
            // `{}` is TCP, every port.
            ("y/a", OUT, "x/a", TCP, 7, ALLOW),
            ("y/a", OUT, "8.8.8.8", TCP, 65535, ALLOW),
            ("y/a", OUT, "x/a", UDP, 7, DENY),
            ("y/a", OUT, "x/a", ICMP, 8, DENY),
        ],
    );
}

#[test]
fn rules_without_ports_allow_icmp() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: 8.8.8.0/24}}]}, {from: [{ipBlock: {cidr: 9.9.9.0/24}}], ports: []}]
  egress: [{to: [{namespaceSelector: {}}]}, {to: [{ipBlock: {cidr: 8.8.8.0/24}}], ports: [{port: 53, protocol: UDP}]}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "8.8.8.8", ICMP, 0, ALLOW),
            ("x/a", IN, "8.8.8.8", SCTP, 9, ALLOW),
            ("x/a", IN, "9.9.9.9", ICMP, 0, ALLOW),
            ("x/a", IN, "9.9.9.9", UDP, 1, ALLOW),
            ("x/a", OUT, "z/b", ICMP6, 0, ALLOW),
            ("x/a", OUT, "y/b", ICMP, 0, ALLOW),
            ("x/a", OUT, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", OUT, "8.8.8.8", ICMP, 0, DENY),
            ("x/a", OUT, "8.8.8.8", TCP, 53, DENY),
        ],
    );
}

#[test]
fn end_port_ranges() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - ports: [{port: 8000, endPort: 8080}, {port: 443, endPort: 443, protocol: UDP}, {port: 32768, endPort: 65535, protocol: SCTP}]
  egress:
  - ports: [{port: 1, endPort: 65535}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "y/b", TCP, 7999, DENY),
            ("x/a", IN, "y/b", TCP, 8000, ALLOW),
            ("x/a", IN, "y/b", TCP, 8001, ALLOW),
            ("x/a", IN, "y/b", TCP, 8064, ALLOW),
            ("x/a", IN, "y/b", TCP, 8079, ALLOW),
            ("x/a", IN, "y/b", TCP, 8080, ALLOW),
            ("x/a", IN, "y/b", TCP, 8081, DENY),
            ("x/a", IN, "y/b", UDP, 8000, DENY),
            ("x/a", IN, "y/b", UDP, 442, DENY),
            ("x/a", IN, "y/b", UDP, 443, ALLOW),
            ("x/a", IN, "y/b", UDP, 444, DENY),
            ("x/a", IN, "y/b", SCTP, 32767, DENY),
            ("x/a", IN, "y/b", SCTP, 32768, ALLOW),
            ("x/a", IN, "y/b", SCTP, 65535, ALLOW),
            ("x/a", OUT, "8.8.8.8", TCP, 1, ALLOW),
            ("x/a", OUT, "8.8.8.8", TCP, 65535, ALLOW),
            ("x/a", OUT, "8.8.8.8", UDP, 1, DENY),
            ("x/a", OUT, "8.8.8.8", ICMP, 1, DENY),
        ],
    );
}

#[test]
fn named_ports_on_ingress_resolve_on_the_local_pod() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}, {port: dns}]",
    );
    check(
        &w,
        &[
            // x/a: http 80/TCP, dns 53/UDP.
            ("x/a", IN, "y/b", TCP, 80, ALLOW),
            ("x/a", IN, "y/b", TCP, 8080, DENY),
            // `dns` here means dns/TCP, which x/a does not have.
            ("x/a", IN, "y/b", TCP, 53, DENY),
            ("x/a", IN, "y/b", UDP, 53, DENY),
            // x/b: http 8080/TCP, dns 53/TCP (in another container).
            ("x/b", IN, "y/b", TCP, 8080, ALLOW),
            ("x/b", IN, "y/b", TCP, 80, DENY),
            ("x/b", IN, "y/b", TCP, 53, ALLOW),
            ("x/b", IN, "y/b", UDP, 53, DENY),
        ],
    );
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: dns, protocol: UDP}, {port: nothing}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "y/b", UDP, 53, ALLOW),
            ("x/a", IN, "y/b", TCP, 53, DENY),
            ("x/b", IN, "y/b", UDP, 53, DENY),
            ("x/b", IN, "y/b", TCP, 53, DENY),
        ],
    );
    // SCTP named port.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{port: assoc, protocol: SCTP}, {port: assoc}]}]",
    );
    check(&w, &[("y/a", IN, "x/a", SCTP, 81, ALLOW), ("y/a", IN, "x/a", TCP, 81, DENY)]);
}

#[test]
fn named_ports_on_egress_resolve_on_the_destination_pod() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: dns, protocol: UDP}]
  - to: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{port: assoc, protocol: SCTP}]",
    );
    check(
        &w,
        &[
            // http: x/b 8080, x/c 81, y/a 80, other pods none.
            ("x/a", OUT, "x/b", TCP, 8080, ALLOW),
            ("x/a", OUT, "x/b", TCP, 80, DENY),
            ("x/a", OUT, "x/c", TCP, 81, ALLOW),
            ("x/a", OUT, "x/c/6", TCP, 81, ALLOW),
            ("x/a", OUT, "x/c", TCP, 80, DENY),
            ("x/a", OUT, "y/a", TCP, 80, ALLOW),
            ("x/a", OUT, "y/a/6", TCP, 80, ALLOW),
            ("x/a", OUT, "y/a", UDP, 80, DENY),
            ("x/a", OUT, "y/b", TCP, 80, DENY),
            // Not a pod: a named port never matches.
            ("x/a", OUT, "8.8.8.8", TCP, 80, DENY),
            ("x/a", OUT, "10.0.0.9", TCP, 80, DENY),
            ("x/a", OUT, "172.18.0.1", TCP, 80, DENY),
            // dns/UDP: nobody but x/a has it; x/b's dns is TCP.
            ("x/a", OUT, "x/b", UDP, 53, DENY),
            ("x/a", OUT, "x/b", TCP, 53, DENY),
            ("x/a", OUT, "8.8.8.8", UDP, 53, DENY),
            // assoc/SCTP on y/a, a peer of that rule.
            ("x/a", OUT, "y/a", SCTP, 81, ALLOW),
            ("x/a", OUT, "y/a", TCP, 81, DENY),
        ],
    );
    // y/a's egress to x/a's dns/UDP via an ipBlock peer.
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: y}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24}}], ports: [{port: dns, protocol: UDP}]}]",
    );
    check(
        &w,
        &[
            ("y/a", OUT, "x/a", UDP, 53, ALLOW),
            ("y/a", OUT, "x/a/6", UDP, 53, DENY),
            ("y/a", OUT, "x/b", UDP, 53, DENY),
            ("y/a", OUT, "10.0.0.200", UDP, 53, DENY),
        ],
    );
}

#[test]
fn several_policies_add_up() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
---
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 81}]}]
---
kind: NetworkPolicy
metadata: {name: dns, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 53, protocol: UDP}]}]
---
kind: NetworkPolicy
metadata: {name: elsewhere, namespace: y}
spec:
  podSelector: {}
  ingress: [{}]",
    );
    check(
        &w,
        &[
            ("x/a", IN, "x/b", TCP, 80, ALLOW),
            ("x/a", IN, "x/b", TCP, 81, DENY),
            ("x/a", IN, "y/b", TCP, 81, ALLOW),
            ("x/a", IN, "y/b", TCP, 80, DENY),
            ("x/a", IN, "z/b", TCP, 80, DENY),
            ("x/b", IN, "x/a", TCP, 80, DENY),
            ("x/b", IN, "y/b", TCP, 81, DENY),
            ("x/a", OUT, "8.8.8.8", UDP, 53, ALLOW),
            ("x/b", OUT, "y/a", UDP, 53, ALLOW),
            ("x/b", OUT, "y/a", TCP, 80, DENY),
            ("y/a", IN, "x/a", TCP, 1, ALLOW),
        ],
    );
}

#[test]
fn ingress_and_egress_are_independent() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: in, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
---
kind: NetworkPolicy
metadata: {name: out, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 8.8.8.8/32}}]}]",
    );
    assert_eq!(isolation(&w, "x/a"), (true, false));
    assert_eq!(isolation(&w, "x/b"), (false, true));
    check(
        &w,
        &[
            // x/b -> x/a: x/b's egress denies it; x/a's ingress would allow.
            ("x/b", OUT, "x/a", TCP, 80, DENY),
            ("x/a", IN, "x/b", TCP, 80, ALLOW),
            // x/a -> x/b: x/a's egress is open, x/b's ingress is open.
            ("x/a", OUT, "x/b", TCP, 80, ALLOW),
            ("x/b", IN, "x/a", TCP, 80, ALLOW),
            ("x/b", OUT, "8.8.8.8", TCP, 80, ALLOW),
            ("x/b", IN, "8.8.8.8", TCP, 80, ALLOW),
            ("x/a", IN, "8.8.8.8", TCP, 80, DENY),
        ],
    );
}

#[test]
fn dual_stack_and_remote_node_pods() {
    let w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {tier: db}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: c}}, podSelector: {matchLabels: {app: b}}}]}]",
    );
    let c = w.compiled();
    // x/c and z/b run on another node: no endpoint, but they are peers.
    assert!(c.endpoints.iter().all(|e| e.name != "c" && !(e.namespace == "z" && e.name == "b")));
    check(
        &w,
        &[
            ("x/a", IN, "x/c", TCP, 80, ALLOW),
            ("x/a", IN, "x/c/6", TCP, 80, ALLOW),
            ("x/a", IN, "x/b", TCP, 80, DENY),
            ("x/a", OUT, "z/b", TCP, 80, ALLOW),
            ("x/a", OUT, "fd00::7", UDP, 80, ALLOW),
            ("x/a", OUT, "z/a", TCP, 80, DENY),
            ("x/a", OUT, "z/a/6", TCP, 80, DENY),
            ("x/a", OUT, "fd00::8", TCP, 80, DENY),
        ],
    );
    // A local pod with both addresses is one endpoint holding both.
    let ep = c.endpoints.iter().find(|e| e.namespace == "x" && e.name == "a").unwrap();
    assert_eq!(ep.ips, [w.ip("x/a/4"), w.ip("x/a/6")]);
}

#[test]
fn host_traffic_allowance() {
    let policy = "kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}";
    let mut w = world(policy);
    check(
        &w,
        &[
            ("x/a", IN, "172.18.0.1", TCP, 8080, ALLOW),
            ("x/a", IN, "fc00::1", TCP, 8080, ALLOW),
            ("x/a", IN, "172.18.0.1", ICMP, 0, ALLOW),
            // Only the node's own addresses, only towards the pods.
            ("x/a", IN, "172.18.0.2", TCP, 8080, DENY),
            ("x/a", OUT, "172.18.0.1", TCP, 8080, DENY),
        ],
    );
    w.node.allow_host = false;
    check(
        &w,
        &[
            ("x/a", IN, "172.18.0.1", TCP, 8080, DENY),
            ("x/a", IN, "fc00::1", ICMP6, 0, DENY),
            ("y/a", IN, "172.18.0.1", TCP, 8080, ALLOW),
        ],
    );
    // Without the allowance the node is just an address: ipBlocks match
    // it, pod selectors do not (even with a hostNetwork pod on it).
    let mut w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
  - from: [{ipBlock: {cidr: 172.18.0.0/16}}]
    ports: [{port: 10250}]",
    );
    w.node.allow_host = false;
    check(
        &w,
        &[
            ("x/a", IN, "172.18.0.1", TCP, 10250, ALLOW),
            ("x/a", IN, "172.18.0.1", TCP, 8080, DENY),
            ("x/a", IN, "fc00::1", TCP, 10250, DENY),
        ],
    );
}

#[test]
fn terminated_host_network_and_pending_pods_are_not_peers() {
    let mut w = world(
        "kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
  egress: [{to: [{podSelector: {matchLabels: {app: a}}}]}]",
    );
    w.node.allow_host = false;
    check(
        &w,
        &[
            ("x/b", IN, "x/a", TCP, 80, ALLOW),
            ("x/b", IN, "10.0.0.9", TCP, 80, DENY),
            ("x/b", IN, "172.18.0.1", TCP, 80, DENY),
            ("x/b", OUT, "10.0.0.9", TCP, 80, DENY),
            ("x/b", OUT, "172.18.0.1", TCP, 80, DENY),
        ],
    );
    // A terminated pod leaves its address to the pod that has it now.
    let mut w = world(
        "kind: Pod
metadata: {name: old, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: main, ports: [{name: http, containerPort: 9090}]}]}
status: {phase: Failed, podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: older, namespace: y, labels: {app: a}}
spec: {nodeName: node-2, containers: [{name: main}]}
status: {phase: Succeeded, podIP: 10.0.0.1}
---
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
  egress: [{to: [{namespaceSelector: {}}], ports: [{port: http}]}]",
    );
    w.node.allow_host = false;
    check(
        &w,
        &[
            ("x/a", IN, "x/b", TCP, 80, DENY),
            ("x/b", IN, "x/a", TCP, 80, ALLOW),
            ("x/a", OUT, "x/b", TCP, 8080, ALLOW),
            ("x/a", OUT, "x/b", TCP, 9090, DENY),
            ("x/b", OUT, "x/a", TCP, 80, ALLOW),
            ("x/b", OUT, "x/a", TCP, 8080, DENY),
        ],
    );
}

#[test]
fn identical_pods_share_an_identity_and_differ_by_named_ports() {
    let w = world(
        "kind: Pod
metadata: {name: a2, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers:
  - name: main
    ports:
    - {name: http, containerPort: 80}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {phase: Running, podIP: 10.0.0.11}
---
kind: Pod
metadata: {name: a3, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers: [{name: main, ports: [{name: http, containerPort: 8081}]}]
status: {phase: Running, podIP: 10.0.0.12}
---
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: http}]}]
  egress: [{to: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: http}]}]",
    );
    let c = w.compiled();
    let id = |n: &str| c.endpoints.iter().find(|e| e.namespace == "x" && e.name == n).unwrap().identity;
    assert_eq!(id("a"), id("a2"));
    assert_ne!(id("a"), id("a3"));
    check(
        &w,
        &[
            ("x/a2", IN, "y/b", TCP, 80, ALLOW),
            ("x/a3", IN, "y/b", TCP, 80, DENY),
            ("x/a3", IN, "y/b", TCP, 8081, ALLOW),
            ("x/a", OUT, "10.0.0.12", TCP, 8081, ALLOW),
            ("x/a", OUT, "10.0.0.12", TCP, 80, DENY),
            ("x/a3", OUT, "10.0.0.11", TCP, 80, ALLOW),
            ("x/a3", OUT, "10.0.0.11", TCP, 8081, DENY),
        ],
    );
}

#[test]
fn compiling_is_deterministic() {
    let yaml = "kind: NetworkPolicy
metadata: {name: p1, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}], ports: [{port: http}, {port: 8000, endPort: 8100}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: http}]}]
---
kind: NetworkPolicy
metadata: {name: p2, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 'fd00::/64'}}]}]
---
kind: NetworkPolicy
metadata: {name: p0, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}";
    let w = world(yaml);
    let a = w.compiled();
    assert_eq!(a, w.compiled());
    assert_eq!(a, compile(&w.input_reversed(), &w.node));
    // The same objects listed in another order.
    let mut docs: Vec<&str> = BASE.split("\n---\n").chain(yaml.split("\n---\n")).collect();
    docs.reverse();
    let mut shuffled = World::new();
    shuffled.add_yaml(&docs.join("\n---\n"));
    assert_eq!(a, shuffled.compiled());
    assert!(!a.policy.is_empty());
}

// ---------------------------------------------------------------------------
// ClusterNetworkPolicy tiers, hand-worked.

const NODES: &str = r#"
kind: Node
metadata: {name: node-1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 172.18.0.1}, {type: InternalIP, address: "fc00::1"}, {type: Hostname, address: node-1}]}
---
kind: Node
metadata: {name: node-2, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: ExternalIP, address: 203.0.113.2}, {type: Hostname, address: node-2}]}
"#;

fn tier_world(policies: &str) -> World {
    let mut w = world(NODES);
    w.add_yaml(policies);
    w
}

#[test]
fn tiers_admin_then_network_policy_then_baseline() {
    let w = tier_world(
        "kind: ClusterNetworkPolicy
metadata: {name: admin-deny}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  egress: [{name: deny-db, action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {tier: db}}}}]}]
---
kind: ClusterNetworkPolicy
metadata: {name: admin-accept}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {team: a}}}
  egress: [{action: Accept, to: [{networks: [10.0.1.3/32]}], protocols: [{tcp: {destinationPort: {number: 81}}}]}]
---
kind: ClusterNetworkPolicy
metadata: {name: admin-pass}
spec:
  tier: Admin
  priority: 1
  subject: {pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: b}}}}
  egress: [{action: Pass, to: [{namespaces: {}}]}]
---
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [8.8.8.8/32]}]}]
---
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}",
    );
    check(
        &w,
        &[
            // Admin Accept (priority 5) before Admin Deny (10), over the NetworkPolicy.
            ("x/a", OUT, "x/c", TCP, 81, ALLOW),
            ("x/a", OUT, "x/c", TCP, 80, DENY),
            // No Admin rule: the NetworkPolicy isolates.
            ("x/a", OUT, "y/a", TCP, 80, DENY),
            // Pass skips the Admin Deny; not isolated; Baseline has nothing: allowed.
            ("x/b", OUT, "x/c", TCP, 80, ALLOW),
            ("x/b", OUT, "8.8.8.8", TCP, 80, DENY),
            ("y/a", OUT, "8.8.8.8", UDP, 53, DENY),
            ("y/a", OUT, "8.8.4.4", UDP, 53, ALLOW),
            ("y/a", OUT, "x/c", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn network_policies_override_the_baseline_tier() {
    let w = tier_world(
        "kind: ClusterNetworkPolicy
metadata: {name: baseline-deny-all}
spec:
  tier: Baseline
  priority: 50
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
kind: ClusterNetworkPolicy
metadata: {name: baseline-pass}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: c}}}}]}]
---
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]",
    );
    check(
        &w,
        &[
            ("y/a", IN, "x/a", TCP, 80, ALLOW),
            ("y/a", IN, "z/a", TCP, 80, DENY),
            ("x/a", IN, "z/a", TCP, 80, DENY),
            ("x/a", IN, "z/a/6", UDP, 53, DENY),
            ("x/a", IN, "8.8.8.8", TCP, 80, ALLOW),
            ("x/a", IN, "172.18.0.1", TCP, 80, ALLOW),
            // Baseline Pass: the default allow decides.
            ("x/a", IN, "x/c", TCP, 80, ALLOW),
            ("x/b", IN, "x/c", SCTP, 9, ALLOW),
            ("z/a", IN, "x/c", TCP, 80, DENY),
        ],
    );
}

#[test]
fn nodes_networks_ranges_and_named_ports() {
    let w = tier_world(
        "kind: ClusterNetworkPolicy
metadata: {name: no-infra}
spec:
  tier: Admin
  priority: 9
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}]
---
kind: ClusterNetworkPolicy
metadata: {name: web-range}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{networks: [203.0.113.7/24]}], protocols: [{tcp: {destinationPort: {range: {start: 8000, end: 8100}}}}]}]
---
kind: ClusterNetworkPolicy
metadata: {name: http-only}
spec:
  tier: Admin
  priority: 2
  subject: {pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {}}}
  ingress:
  - {name: http, action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}
  - {name: rest, action: Deny, from: [{namespaces: {}}]}",
    );
    check(
        &w,
        &[
            ("x/a", OUT, "172.18.0.2", TCP, 443, DENY),
            ("x/a", OUT, "203.0.113.2", TCP, 443, DENY),
            ("x/a", OUT, "172.18.0.1", TCP, 443, ALLOW),
            ("x/a", OUT, "203.0.113.2", TCP, 8080, ALLOW),
            ("x/a", OUT, "203.0.113.9", TCP, 8100, ALLOW),
            ("x/a", OUT, "203.0.113.2", UDP, 8080, DENY),
            ("x/a", OUT, "203.0.113.9", TCP, 8101, ALLOW),
            // Named ports resolve on the destination, with their protocol.
            ("x/a", IN, "y/a", TCP, 80, ALLOW),
            ("x/a", IN, "y/a", TCP, 8080, DENY),
            ("x/b", IN, "y/a", TCP, 8080, ALLOW),
            ("x/a", IN, "y/a", UDP, 80, DENY),
            ("x/a", IN, "y/a", UDP, 53, DENY),
            ("x/a", IN, "y/a", ICMP, 0, DENY),
            // Only pod peers: external addresses are not in `namespaces: {}`.
            ("x/a", IN, "8.8.8.8", TCP, 8080, ALLOW),
            ("y/a", IN, "x/a", TCP, 8080, ALLOW),
        ],
    );
}

#[test]
fn equal_priorities_go_by_name_and_unknown_peers_fail_closed() {
    let w = tier_world(
        "kind: ClusterNetworkPolicy
metadata: {name: b-deny}
spec: {tier: Admin, priority: 7, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [8.8.8.8/32, 9.9.9.9/32]}]}]}
---
kind: ClusterNetworkPolicy
metadata: {name: a-accept}
spec: {tier: Admin, priority: 7, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [8.8.8.8/32]}]}]}
---
kind: ClusterNetworkPolicy
metadata: {name: domains}
spec: {tier: Admin, priority: 0, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [dns.example.com]}, {networks: [9.9.9.9/32]}]}]}
---
kind: ClusterNetworkPolicy
metadata: {name: z-pass-domains}
spec: {tier: Baseline, priority: 0, subject: {namespaces: {matchLabels: {team: c}}}, egress: [{action: Pass, to: [{domainNames: [example.com]}]}]}",
    );
    check(
        &w,
        &[
            ("x/a", OUT, "8.8.8.8", TCP, 53, ALLOW),
            // The Accept rule with a domainNames peer matches nothing.
            ("x/a", OUT, "9.9.9.9", TCP, 53, DENY),
            // A Pass rule with an unknown peer denies all (Baseline here).
            ("z/a", OUT, "1.1.1.1", TCP, 53, DENY),
            ("z/a", OUT, "x/a", TCP, 80, DENY),
            ("z/a", OUT, "8.8.8.8", TCP, 53, ALLOW),
            ("z/a", IN, "x/a", TCP, 80, ALLOW),
            ("y/a", OUT, "1.1.1.1", TCP, 53, ALLOW),
        ],
    );
}

// ---------------------------------------------------------------------------
// Property test: random clusters against the reference.

const PORTS: [u16; 6] = [53, 80, 81, 443, 8080, 8081];
const PROTOS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "alt"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];

type KeyValues = &'static [(&'static str, &'static [&'static str])];
const POD_LABELS: KeyValues = &[("app", &["a", "b", "c"]), ("tier", &["a", "b"])];
/// Pod selector keys include one no pod has.
const POD_SELECTOR_KEYS: KeyValues = &[("app", &["a", "b", "c"]), ("tier", &["a", "b"]), ("other", &["a"])];
const NS_LABELS: KeyValues = &[("team", &["a", "b"]), ("env", &["a", "b"])];
const NS_SELECTOR_KEYS: KeyValues =
    &[("team", &["a", "b"]), ("env", &["a", "b"]), ("kubernetes.io/metadata.name", &["x", "y", "z"])];

const CIDRS: [&str; 19] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.0.0/24",
    "10.0.1.0/24",
    "10.0.0.0/28",
    "10.0.0.4/30",
    "10.0.0.3/32",
    "172.18.0.0/16",
    "172.18.0.1/32",
    "192.168.0.0/16",
    "192.168.1.0/24",
    "::/0",
    "fc00::/7",
    "fd00::/16",
    "fd00::/64",
    "fd00::/125",
    "fd00::3/128",
    "fd00::4/126",
];
/// The other node's addresses (`nodes` peers; also remote addresses).
const NODE_2_IPS: [&str; 2] = ["172.18.0.2", "fc00::2"];
const EXTERNAL: [&str; 12] = [
    "10.0.0.200",
    "10.0.1.200",
    "10.0.0.5",
    "10.1.0.1",
    "192.168.1.5",
    "8.8.8.8",
    "172.18.0.9",
    "fd00::200",
    "fd00:1::5",
    "2001:db8::1",
    NODE_2_IPS[0],
    NODE_2_IPS[1],
];

#[derive(Clone, Debug)]
struct GenSel {
    labels: Vec<(&'static str, &'static str)>,
    exprs: Vec<(&'static str, &'static str, Vec<&'static str>)>,
}

#[derive(Clone, Debug)]
enum GenPeer {
    Pods(GenSel),
    Namespaces(GenSel),
    Both(GenSel, GenSel),
    Block(&'static str, Vec<&'static str>),
}

#[derive(Clone, Debug)]
enum GenPortNum {
    Any,
    Num(u16),
    Range(u16, u16),
    Named(&'static str),
}

#[derive(Clone, Debug)]
struct GenPort {
    protocol: Option<&'static str>,
    port: GenPortNum,
}

#[derive(Clone, Debug)]
struct GenRule {
    peers: Option<Vec<GenPeer>>,
    ports: Option<Vec<GenPort>>,
}

#[derive(Clone, Debug)]
struct GenPolicy {
    namespace: usize,
    pod_selector: GenSel,
    types: Option<Vec<&'static str>>,
    ingress: Option<Vec<GenRule>>,
    egress: Option<Vec<GenRule>>,
}

#[derive(Clone, Debug)]
struct GenPod {
    namespace: usize,
    labels: Vec<(&'static str, &'static str)>,
    /// 0: this node, 1: nodeName unset (this node), 2: another node.
    node: u8,
    /// 0: IPv4, 1: IPv6, 2: both, 3: both with IPv6 first, 4: none yet.
    ips: u8,
    /// (name, port, protocol, container 0 or 1).
    ports: Vec<(&'static str, u16, &'static str, bool)>,
    /// 0: Running, 1: Succeeded, 2: Failed.
    phase: u8,
    host_network: bool,
    /// A terminated pod that had the address of pod 0.
    reuse_first: bool,
}

#[derive(Clone, Debug)]
enum GenRemote {
    Pod(usize, bool),
    External(usize),
    Host(usize),
}

#[derive(Clone, Debug)]
struct GenQuery {
    local: usize,
    /// Pick the local pod among those isolated in the direction, if any:
    /// flows at non-isolated pods are allowed whatever the rules say.
    prefer_isolated: bool,
    egress: bool,
    remote: GenRemote,
    /// Index into TCP, UDP, SCTP, ICMP.
    proto: usize,
    port: u16,
}

#[derive(Clone, Debug)]
struct GenCluster {
    namespaces: Vec<(Vec<(&'static str, &'static str)>, bool)>,
    pods: Vec<GenPod>,
    policies: Vec<GenPolicy>,
    allow_host: bool,
    queries: Vec<GenQuery>,
    /// ClusterNetworkPolicies (empty but in the incremental test).
    cluster: Vec<ClusterPolicy>,
    /// Labels of the Node objects node-1 and node-2.
    node_labels: [Vec<(&'static str, &'static str)>; 2],
}

fn labels_strategy(keys: KeyValues) -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    let per_key: Vec<_> = keys
        .iter()
        .map(|&(k, values)| proptest::option::weighted(0.6, select(values)).prop_map(move |v| v.map(|v| (k, v))))
        .collect();
    per_key.prop_map(|v| v.into_iter().flatten().collect())
}

fn requirement(keys: KeyValues) -> impl Strategy<Value = (&'static str, &'static str, Vec<&'static str>)> {
    (0..keys.len(), select(&["In", "NotIn", "Exists", "DoesNotExist"][..])).prop_flat_map(move |(i, op)| {
        let (key, values) = keys[i];
        subsequence(values, 1..=values.len()).prop_map(move |vals| {
            let vals = if matches!(op, "In" | "NotIn") { vals } else { vec![] };
            (key, op, vals)
        })
    })
}

fn selector(keys: KeyValues) -> impl Strategy<Value = GenSel> {
    let label = (0..keys.len()).prop_flat_map(move |i| select(keys[i].1).prop_map(move |v| (keys[i].0, v)));
    let labels = prop_oneof![2 => Just(vec![]), 1 => prop::collection::vec(label, 1..=2)];
    let exprs = prop_oneof![2 => Just(vec![]), 2 => prop::collection::vec(requirement(keys), 1..=2)];
    (labels, exprs).prop_map(|(labels, exprs)| GenSel { labels, exprs })
}

fn strictly_inside(outer: &str, inner: &str) -> bool {
    let o: ipnet::IpNet = outer.parse().unwrap();
    let i: ipnet::IpNet = inner.parse().unwrap();
    o.contains(&i) && i.prefix_len() > o.prefix_len()
}

fn peer() -> impl Strategy<Value = GenPeer> {
    let block = select(&CIDRS[..]).prop_flat_map(|cidr| {
        let inside: Vec<&'static str> = CIDRS.iter().copied().filter(|e| strictly_inside(cidr, e)).collect();
        let n = inside.len().min(2);
        subsequence(inside, 0..=n).prop_map(move |except| GenPeer::Block(cidr, except))
    });
    prop_oneof![
        3 => selector(POD_SELECTOR_KEYS).prop_map(GenPeer::Pods),
        2 => selector(NS_SELECTOR_KEYS).prop_map(GenPeer::Namespaces),
        2 => (selector(NS_SELECTOR_KEYS), selector(POD_SELECTOR_KEYS)).prop_map(|(n, p)| GenPeer::Both(n, p)),
        3 => block,
    ]
}

fn port() -> impl Strategy<Value = GenPort> {
    let protocol = prop_oneof![3 => Just(None), 2 => select(&PROTOS[..]).prop_map(Some)];
    let num = prop_oneof![
        1 => Just(GenPortNum::Any),
        3 => select(&PORTS[..]).prop_map(GenPortNum::Num),
        2 => (select(&PORTS[..]), select(&PORTS[..])).prop_map(|(a, b)| GenPortNum::Range(a.min(b), a.max(b))),
        3 => select(&["http", "dns", "alt", "nope"][..]).prop_map(GenPortNum::Named),
    ];
    (protocol, num).prop_map(|(protocol, port)| GenPort { protocol, port })
}

fn rule() -> impl Strategy<Value = GenRule> {
    let peers = prop_oneof![
        2 => Just(None),
        1 => Just(Some(vec![])),
        5 => prop::collection::vec(peer(), 1..=2).prop_map(Some),
    ];
    let ports = prop_oneof![
        3 => Just(None),
        1 => Just(Some(vec![])),
        4 => prop::collection::vec(port(), 1..=2).prop_map(Some),
    ];
    (peers, ports).prop_map(|(peers, ports)| GenRule { peers, ports })
}

fn rules() -> impl Strategy<Value = Option<Vec<GenRule>>> {
    prop_oneof![1 => Just(None), 3 => prop::collection::vec(rule(), 0..=2).prop_map(Some)]
}

fn policy() -> impl Strategy<Value = GenPolicy> {
    let types = prop_oneof![
        3 => Just(None),
        1 => Just(Some(vec![])),
        1 => Just(Some(vec!["Ingress"])),
        1 => Just(Some(vec!["Egress"])),
        2 => Just(Some(vec!["Ingress", "Egress"])),
    ];
    let pod_selector = prop_oneof![
        1 => Just(GenSel { labels: vec![], exprs: vec![] }),
        2 => selector(POD_LABELS),
    ];
    (0..NAMESPACES.len(), pod_selector, types, rules(), rules()).prop_map(
        |(namespace, pod_selector, types, ingress, egress)| GenPolicy {
            namespace,
            pod_selector,
            types,
            ingress,
            egress,
        },
    )
}

fn pod() -> impl Strategy<Value = GenPod> {
    let named = |name: &'static str| {
        proptest::option::weighted(0.6, (select(&PORTS[..]), select(&["TCP", "TCP", "UDP", "SCTP"][..]), any::<bool>()))
            .prop_map(move |p| p.map(|(port, proto, c)| (name, port, proto, c)))
    };
    let ports = [named(PORT_NAMES[0]), named(PORT_NAMES[1]), named(PORT_NAMES[2])]
        .prop_map(|p| p.into_iter().flatten().collect::<Vec<_>>());
    (
        0..NAMESPACES.len(),
        labels_strategy(POD_LABELS),
        prop_oneof![5 => Just(0u8), 2 => Just(1u8), 3 => Just(2u8)],
        prop_oneof![3 => Just(0u8), 1 => Just(1u8), 3 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8)],
        ports,
        prop_oneof![10 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        proptest::bool::weighted(0.08),
        any::<bool>(),
    )
        .prop_map(|(namespace, labels, node, ips, ports, phase, host_network, reuse_first)| GenPod {
            namespace,
            labels,
            node,
            ips,
            ports,
            phase,
            host_network,
            reuse_first,
        })
}

fn query() -> impl Strategy<Value = GenQuery> {
    let remote = prop_oneof![
        5 => (0..8usize, any::<bool>()).prop_map(|(i, v6)| GenRemote::Pod(i, v6)),
        3 => (0..EXTERNAL.len()).prop_map(GenRemote::External),
        1 => (0..HOST_IPS.len()).prop_map(GenRemote::Host),
    ];
    let proto = prop_oneof![4 => Just(0usize), 2 => Just(1), 2 => Just(2), 1 => Just(3)];
    (0..8usize, proptest::bool::weighted(0.7), any::<bool>(), remote, proto, select(&PORTS[..])).prop_map(
        |(local, prefer_isolated, egress, remote, proto, port)| GenQuery {
            local,
            prefer_isolated,
            egress,
            remote,
            proto,
            port,
        },
    )
}

fn cluster() -> impl Strategy<Value = GenCluster> {
    (
        prop::collection::vec((labels_strategy(NS_LABELS), proptest::bool::weighted(0.85)), 3),
        prop::collection::vec(pod(), 2..=6),
        prop::collection::vec(policy(), 1..=5),
        proptest::bool::weighted(0.7),
        prop::collection::vec(query(), 24),
    )
        .prop_map(|(namespaces, pods, policies, allow_host, queries)| GenCluster {
            namespaces,
            pods,
            policies,
            allow_host,
            queries,
            cluster: vec![],
            node_labels: [vec![], vec![]],
        })
}

/// A cluster with ClusterNetworkPolicies (a few, priorities tied on
/// purpose) and labelled Node objects.
fn tiered_cluster() -> impl Strategy<Value = GenCluster> {
    (
        cluster(),
        prop::collection::vec(cluster_policy(), 0..=3),
        labels_strategy(NODE_LABELS),
        labels_strategy(NODE_LABELS),
    )
        .prop_map(|(mut g, cluster, a, b)| {
            g.cluster = cluster;
            let mut seen = std::collections::BTreeSet::new();
            g.cluster.retain(|c| seen.insert(c.name.clone()));
            g.node_labels = [a, b];
            g
        })
}

/// A model selector as Kubernetes writes it.
fn model_selector_json(s: &Selector) -> Value {
    let mut out = serde_json::Map::new();
    if !s.match_labels.is_empty() {
        out.insert("matchLabels".into(), json!(s.match_labels));
    }
    if !s.requirements.is_empty() {
        let exprs: Vec<Value> = s
            .requirements
            .iter()
            .map(|r| {
                let op = match r.operator {
                    Operator::In => "In",
                    Operator::NotIn => "NotIn",
                    Operator::Exists => "Exists",
                    Operator::DoesNotExist => "DoesNotExist",
                };
                if r.values.is_empty() {
                    json!({"key": r.key, "operator": op})
                } else {
                    json!({"key": r.key, "operator": op, "values": r.values})
                }
            })
            .collect();
        out.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(out)
}

/// A generated ClusterNetworkPolicy written as the Kubernetes object, made
/// valid the way the CRD wants: ingress peers are namespaces or pods only
/// (address peers are dropped; none left: every namespace), and an egress
/// rule with address peers names no port.
fn cnp_json(c: &ClusterPolicy) -> Value {
    let rule = |r: &ClusterRule, egress: bool| {
        let mut peers: Vec<Value> = r
            .peers
            .iter()
            .filter(|p| egress || matches!(p, ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. }))
            .map(|p| match p {
                ClusterPeer::Namespaces(s) => json!({"namespaces": model_selector_json(s)}),
                ClusterPeer::Pods { namespaces, pods } => json!({"pods": {
                    "namespaceSelector": model_selector_json(namespaces), "podSelector": model_selector_json(pods)}}),
                ClusterPeer::Nodes(s) => json!({"nodes": model_selector_json(s)}),
                ClusterPeer::Networks(nets) => {
                    json!({"networks": nets.iter().map(|n| n.to_string()).collect::<Vec<_>>()})
                }
                // domainNames, or (named rules) a field of a newer CRD.
                ClusterPeer::Unsupported(_) if r.name.is_empty() => json!({"domainNames": ["example.com"]}),
                ClusterPeer::Unsupported(_) => json!({"services": {"name": "kube-dns"}}),
            })
            .collect();
        if peers.is_empty() {
            peers.push(json!({"namespaces": {}}));
        }
        let addresses = egress && peers.iter().any(|p| p.get("namespaces").is_none() && p.get("pods").is_none());
        let protocols: Vec<Value> = r
            .ports
            .iter()
            .filter(|p| !(addresses && matches!(p, ClusterPort::Named(_))))
            .map(|p| match p {
                ClusterPort::Named(n) => json!({"destinationNamedPort": n}),
                ClusterPort::Ports { protocol, first, last } => {
                    let port = if first == last {
                        json!({"number": first})
                    } else {
                        json!({"range": {"start": first, "end": last}})
                    };
                    json!({ protocol.to_string().to_lowercase(): {"destinationPort": port} })
                }
            })
            .collect();
        let mut out = json!({"action": r.action.to_string(), if egress { "to" } else { "from" }: peers});
        if !r.name.is_empty() {
            out["name"] = json!(r.name);
        }
        if !protocols.is_empty() {
            out["protocols"] = Value::Array(protocols);
        }
        out
    };
    let subject = match &c.subject {
        ClusterSubject::Namespaces(s) => json!({"namespaces": model_selector_json(s)}),
        ClusterSubject::Pods { namespaces, pods } => json!({"pods": {
            "namespaceSelector": model_selector_json(namespaces), "podSelector": model_selector_json(pods)}}),
    };
    let mut spec = json!({"tier": c.tier.to_string(), "priority": c.priority, "subject": subject});
    if !c.ingress.is_empty() {
        spec["ingress"] = Value::Array(c.ingress.iter().map(|r| rule(r, false)).collect());
    }
    if !c.egress.is_empty() {
        spec["egress"] = Value::Array(c.egress.iter().map(|r| rule(r, true)).collect());
    }
    json!({"apiVersion": CNP_API_VERSION, "kind": "ClusterNetworkPolicy", "metadata": {"name": c.name}, "spec": spec})
}

fn labels_json(labels: &[(&str, &str)]) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn selector_json(s: &GenSel) -> Value {
    let mut out = serde_json::Map::new();
    if !s.labels.is_empty() {
        out.insert("matchLabels".into(), labels_json(&s.labels));
    }
    if !s.exprs.is_empty() {
        let exprs: Vec<Value> = s
            .exprs
            .iter()
            .map(|(key, op, values)| {
                if values.is_empty() {
                    json!({"key": key, "operator": op})
                } else {
                    json!({"key": key, "operator": op, "values": values})
                }
            })
            .collect();
        out.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(out)
}

fn rule_json(r: &GenRule, peers_field: &str) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(peers) = &r.peers {
        let peers: Vec<Value> = peers
            .iter()
            .map(|p| match p {
                GenPeer::Pods(s) => json!({"podSelector": selector_json(s)}),
                GenPeer::Namespaces(s) => json!({"namespaceSelector": selector_json(s)}),
                GenPeer::Both(n, p) => json!({"namespaceSelector": selector_json(n), "podSelector": selector_json(p)}),
                GenPeer::Block(cidr, except) if except.is_empty() => json!({"ipBlock": {"cidr": cidr}}),
                GenPeer::Block(cidr, except) => json!({"ipBlock": {"cidr": cidr, "except": except}}),
            })
            .collect();
        out.insert(peers_field.into(), Value::Array(peers));
    }
    if let Some(ports) = &r.ports {
        let ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut o = serde_json::Map::new();
                if let Some(proto) = p.protocol {
                    o.insert("protocol".into(), json!(proto));
                }
                match p.port {
                    GenPortNum::Any => {}
                    GenPortNum::Num(n) => {
                        o.insert("port".into(), json!(n));
                    }
                    GenPortNum::Range(a, b) => {
                        o.insert("port".into(), json!(a));
                        o.insert("endPort".into(), json!(b));
                    }
                    GenPortNum::Named(name) => {
                        o.insert("port".into(), json!(name));
                    }
                }
                Value::Object(o)
            })
            .collect();
        out.insert("ports".into(), Value::Array(ports));
    }
    Value::Object(out)
}

fn pod_addresses(g: &GenCluster, i: usize) -> Vec<String> {
    let p = &g.pods[i];
    if p.host_network {
        return vec![HOST_IPS[0].to_string()];
    }
    if p.phase != 0 && p.reuse_first && i > 0 {
        return pod_addresses(g, 0);
    }
    let (v4, v6) = (format!("10.0.{}.{}", i % 2, i + 1), format!("fd00::{}", i + 1));
    match p.ips {
        0 => vec![v4],
        1 => vec![v6],
        2 => vec![v4, v6],
        3 => vec![v6, v4],
        _ => vec![],
    }
}

fn render(g: &GenCluster) -> World {
    let mut w = World::new();
    w.node.allow_host = g.allow_host;
    for (i, (labels, exists)) in g.namespaces.iter().enumerate() {
        if *exists {
            let ns = json!({"metadata": {"name": NAMESPACES[i], "labels": labels_json(labels)}});
            w.namespaces.push(serde_json::from_value(ns).unwrap());
        }
    }
    for (i, p) in g.pods.iter().enumerate() {
        let mut containers = vec![json!({"name": "c0", "ports": []}), json!({"name": "c1", "ports": []})];
        for (name, port, proto, second) in &p.ports {
            let c = &mut containers[usize::from(*second)];
            c["ports"].as_array_mut().unwrap().push(json!({"name": name, "containerPort": port, "protocol": proto}));
        }
        let mut spec = json!({"containers": containers, "hostNetwork": p.host_network});
        match p.node {
            0 => spec["nodeName"] = json!(NODE),
            1 => {}
            _ => spec["nodeName"] = json!("node-2"),
        }
        let ips = pod_addresses(g, i);
        let phase = ["Running", "Succeeded", "Failed"][usize::from(p.phase)];
        let mut status = json!({ "phase": phase });
        if !ips.is_empty() {
            status["podIP"] = json!(ips[0]);
            status["podIPs"] = Value::Array(ips.iter().map(|ip| json!({"ip": ip})).collect());
        }
        let pod = json!({
            "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[p.namespace], "labels": labels_json(&p.labels)},
            "spec": spec,
            "status": status,
        });
        w.pods.push(serde_json::from_value(pod).unwrap());
    }
    // Each namespace names its policies np0, np1, ...: one name in several
    // namespaces is several policies, which must not share what they allow.
    let mut named = [0usize; NAMESPACES.len()];
    for p in &g.policies {
        let i = named[p.namespace];
        named[p.namespace] += 1;
        let mut spec = json!({"podSelector": selector_json(&p.pod_selector)});
        if let Some(types) = &p.types {
            spec["policyTypes"] = json!(types);
        }
        if let Some(rules) = &p.ingress {
            spec["ingress"] = Value::Array(rules.iter().map(|r| rule_json(r, "from")).collect());
        }
        if let Some(rules) = &p.egress {
            spec["egress"] = Value::Array(rules.iter().map(|r| rule_json(r, "to")).collect());
        }
        let np = json!({"metadata": {"name": format!("np{i}"), "namespace": NAMESPACES[p.namespace]}, "spec": spec});
        w.policies.push(serde_json::from_value(np).unwrap());
    }
    w.cluster_policies = g.cluster.iter().map(cnp_json).collect();
    for (i, (name, ips)) in [(NODE, &HOST_IPS[..]), ("node-2", &NODE_2_IPS[..])].into_iter().enumerate() {
        let addresses: Vec<Value> = ips.iter().map(|ip| json!({"type": "InternalIP", "address": ip})).collect();
        let node = json!({"metadata": {"name": name, "labels": labels_json(&g.node_labels[i])}, "status": {"addresses": addresses}});
        w.nodes.push(serde_json::from_value(node).unwrap());
    }
    w
}

#[derive(Default)]
struct Stats {
    queries: AtomicUsize,
    not_isolated: AtomicUsize,
    isolated_allowed: AtomicUsize,
    isolated_denied: AtomicUsize,
    named_port_allowed: AtomicUsize,
    host_allowed: AtomicUsize,
    /// Flows at pods a ClusterNetworkPolicy selects, by outcome.
    tiered_allowed: AtomicUsize,
    tiered_denied: AtomicUsize,
}

fn describe(w: &World) -> String {
    let mut out = String::new();
    for ns in &w.namespaces {
        out.push_str(&format!("{}\n", serde_json::to_string(ns).unwrap()));
    }
    for p in &w.pods {
        out.push_str(&format!("{}\n", serde_json::to_string(p).unwrap()));
    }
    for p in &w.policies {
        out.push_str(&format!("{}\n", serde_json::to_string(p).unwrap()));
    }
    for c in &w.cluster_policies {
        out.push_str(&format!("{c}\n"));
    }
    for n in &w.nodes {
        out.push_str(&format!("{}\n", serde_json::to_string(n).unwrap()));
    }
    out.push_str(&format!("allow_host: {}\n", w.node.allow_host));
    out
}

fn run_case(g: &GenCluster, stats: &Stats) -> Result<(), TestCaseError> {
    let w = render(g);
    let input = w.input();
    let c = compile(&input, &w.node);
    prop_assert!(c == compile(&input, &w.node), "compiling twice differs");
    prop_assert!(c == compile(&w.input_reversed(), &w.node), "compiling in another order differs");
    let r = w.reference();

    // The local endpoints are exactly the running, local, pod-network pods.
    let mut want: Vec<String> = w
        .pods
        .iter()
        .filter(|p| reference::is_peer_pod(p) && reference::is_local(p, NODE))
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let mut have: Vec<String> = c.endpoints.iter().map(|e| e.name.clone()).collect();
    want.sort();
    have.sort();
    prop_assert_eq!(&have, &want, "local endpoints\n{}", describe(&w));
    if have.is_empty() {
        return Ok(());
    }

    for q in &g.queries {
        let dir = if q.egress { OUT } else { IN };
        let pod_named = |name: &String| w.pods.iter().find(|p| p.metadata.name.as_ref() == Some(name)).unwrap();
        let isolated: Vec<&String> = have.iter().filter(|n| r.isolated(pod_named(n), dir)).collect();
        let local_name = match q.prefer_isolated && !isolated.is_empty() {
            true => isolated[q.local % isolated.len()],
            false => &have[q.local % have.len()],
        };
        let local = pod_named(local_name);
        let ns = local.metadata.namespace.clone().unwrap();
        let remote: IpAddr = match q.remote {
            GenRemote::Pod(i, v6) => {
                let ips = pod_addresses(g, i % g.pods.len());
                let pick = ips.iter().find(|ip| ip.contains(':') == v6).or(ips.first());
                pick.map_or(EXTERNAL[i % EXTERNAL.len()], |s| s.as_str()).parse().unwrap()
            }
            GenRemote::External(i) => EXTERNAL[i].parse().unwrap(),
            GenRemote::Host(i) => HOST_IPS[i].parse().unwrap(),
        };
        let proto = match q.proto {
            0 => TCP,
            1 => UDP,
            2 => SCTP,
            _ if remote.is_ipv4() => ICMP,
            _ => ICMP6,
        };
        let verdict = decide(&c, &ns, local_name, dir, remote, proto, q.port).unwrap();
        let want = r.allowed(local, dir, remote, proto, q.port);
        let isolated = r.isolated(local, dir);
        let what = format!("{ns}/{local_name} {dir:?} remote {remote} proto {proto} port {}", q.port);
        // Isolation is NetworkPolicy's, whatever the tiers decide.
        let tiered = r.tiered(local, dir);
        prop_assert_eq!(verdict.isolated, isolated, "isolation of {}\n{}", what, describe(&w));
        prop_assert_eq!(verdict.allowed, want, "{}: compiler {:?}\n{}", what, verdict, describe(&w));

        stats.queries.fetch_add(1, Ordering::Relaxed);
        if tiered {
            let bucket = if want { &stats.tiered_allowed } else { &stats.tiered_denied };
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = match (isolated, want) {
            (false, _) => &stats.not_isolated,
            (true, true) => &stats.isolated_allowed,
            (true, false) => &stats.isolated_denied,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
        if isolated && want {
            let named = |rules: &Option<Vec<GenRule>>| {
                rules
                    .iter()
                    .flatten()
                    .flat_map(|r| r.ports.iter().flatten())
                    .any(|p| matches!(p.port, GenPortNum::Named(_)))
            };
            if g.policies.iter().any(|p| named(&p.ingress) || named(&p.egress)) && matches!(proto, TCP | UDP | SCTP) {
                stats.named_port_allowed.fetch_add(1, Ordering::Relaxed);
            }
            if w.node.allow_host && !q.egress && matches!(q.remote, GenRemote::Host(_)) {
                stats.host_allowed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

#[test]
fn compiler_agrees_with_reference_on_random_clusters() {
    let cases = std::env::var("PALISADE_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let stats = Stats::default();
    if let Err(e) = runner.run(&tiered_cluster(), |g| run_case(&g, &stats)) {
        panic!("{e}");
    }
    let total = stats.queries.load(Ordering::Relaxed);
    let not_isolated = stats.not_isolated.load(Ordering::Relaxed);
    let allowed = stats.isolated_allowed.load(Ordering::Relaxed);
    let denied = stats.isolated_denied.load(Ordering::Relaxed);
    let named = stats.named_port_allowed.load(Ordering::Relaxed);
    let host = stats.host_allowed.load(Ordering::Relaxed);
    let (tiered_allowed, tiered_denied) =
        (stats.tiered_allowed.load(Ordering::Relaxed), stats.tiered_denied.load(Ordering::Relaxed));
    eprintln!(
        "{cases} clusters, {total} flows: {not_isolated} not isolated, {allowed} allowed by a rule, {denied} denied \
         ({named} allowed with named ports around, {host} host allowances); at pods a ClusterNetworkPolicy \
         selects: {tiered_allowed} allowed, {tiered_denied} denied"
    );
    assert!(tiered_allowed * 20 >= total, "too few tiered allowed flows: {tiered_allowed} of {total}");
    assert!(tiered_denied * 20 >= total, "too few tiered denied flows: {tiered_denied} of {total}");
    // The test can fail both ways only if both outcomes are common.
    assert!(total >= cases as usize * 8, "too few flows checked: {total}");
    assert!(allowed * 10 >= total, "too few allowed isolated flows: {allowed} of {total}");
    assert!(denied * 10 >= total, "too few denied flows: {denied} of {total}");
    assert!(not_isolated * 20 >= total, "too few non-isolated flows: {not_isolated} of {total}");
}

// ---------------------------------------------------------------------------
// The incremental compiler against compiling from scratch.

/// One change to a generated cluster.
#[derive(Clone, Debug)]
enum Edit {
    ReplacePod(usize, GenPod),
    RelabelPod(usize, Vec<(&'static str, &'static str)>),
    AddPod(GenPod),
    RemovePod(usize),
    ReplacePolicy(usize, GenPolicy),
    AddPolicy(GenPolicy),
    RemovePolicy(usize),
    Namespace(usize, Vec<(&'static str, &'static str)>, bool),
    AllowHost(bool),
    ReplaceCluster(usize, ClusterPolicy),
    AddCluster(ClusterPolicy),
    RemoveCluster(usize),
    NodeLabels(usize, Vec<(&'static str, &'static str)>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (0..8usize, pod()).prop_map(|(i, p)| Edit::ReplacePod(i, p)),
        3 => (0..8usize, labels_strategy(POD_LABELS)).prop_map(|(i, l)| Edit::RelabelPod(i, l)),
        1 => pod().prop_map(Edit::AddPod),
        1 => (0..8usize).prop_map(Edit::RemovePod),
        2 => (0..8usize, policy()).prop_map(|(i, p)| Edit::ReplacePolicy(i, p)),
        2 => policy().prop_map(Edit::AddPolicy),
        1 => (0..8usize).prop_map(Edit::RemovePolicy),
        2 => (0..NAMESPACES.len(), labels_strategy(NS_LABELS), proptest::bool::weighted(0.85))
            .prop_map(|(i, l, e)| Edit::Namespace(i, l, e)),
        1 => any::<bool>().prop_map(Edit::AllowHost),
        2 => (0..4usize, cluster_policy()).prop_map(|(i, p)| Edit::ReplaceCluster(i, p)),
        2 => cluster_policy().prop_map(Edit::AddCluster),
        1 => (0..4usize).prop_map(Edit::RemoveCluster),
        1 => (0..2usize, labels_strategy(NODE_LABELS)).prop_map(|(i, l)| Edit::NodeLabels(i, l)),
    ]
}

const NODE_LABELS: KeyValues = &[("role", &["a", "b"])];

fn model_selector(s: GenSel) -> Selector {
    let match_labels = s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let requirements = s
        .exprs
        .iter()
        .map(|(k, op, vals)| Requirement {
            key: k.to_string(),
            operator: match *op {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                _ => Operator::DoesNotExist,
            },
            values: vals.iter().map(|v| v.to_string()).collect(),
        })
        .collect();
    Selector { match_labels, requirements }
}

fn cluster_peer() -> impl Strategy<Value = ClusterPeer> {
    let nets = subsequence(&CIDRS[..], 1..=2).prop_map(|c| c.iter().map(|s| s.parse().unwrap()).collect());
    prop_oneof![
        3 => selector(NS_SELECTOR_KEYS).prop_map(|s| ClusterPeer::Namespaces(model_selector(s))),
        3 => (selector(NS_SELECTOR_KEYS), selector(POD_SELECTOR_KEYS))
            .prop_map(|(n, p)| ClusterPeer::Pods { namespaces: model_selector(n), pods: model_selector(p) }),
        2 => selector(NODE_LABELS).prop_map(|s| ClusterPeer::Nodes(model_selector(s))),
        2 => nets.prop_map(ClusterPeer::Networks),
        1 => Just(ClusterPeer::Unsupported("domainNames".into())),
    ]
}

fn cluster_port() -> impl Strategy<Value = ClusterPort> {
    let proto = select(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp][..]);
    prop_oneof![
        3 => (proto, select(&PORTS[..]), select(&PORTS[..])).prop_map(|(protocol, a, b)| ClusterPort::Ports {
            protocol,
            first: a.min(b),
            last: a.max(b)
        }),
        1 => select(&PORT_NAMES[..]).prop_map(|n| ClusterPort::Named(n.to_string())),
    ]
}

fn cluster_rule() -> impl Strategy<Value = ClusterRule> {
    let action = select(&[Action::Accept, Action::Deny, Action::Pass][..]);
    let ports = prop_oneof![2 => Just(vec![]), 3 => prop::collection::vec(cluster_port(), 1..=2)];
    (action, prop::collection::vec(cluster_peer(), 1..=2), ports, select(&["", "r"][..]))
        .prop_map(|(action, peers, ports, name)| ClusterRule { name: name.to_string(), action, peers, ports })
}

fn cluster_policy() -> impl Strategy<Value = ClusterPolicy> {
    let subject = prop_oneof![
        1 => selector(NS_SELECTOR_KEYS).prop_map(|s| ClusterSubject::Namespaces(model_selector(s))),
        1 => (selector(NS_SELECTOR_KEYS), selector(POD_SELECTOR_KEYS))
            .prop_map(|(n, p)| ClusterSubject::Pods { namespaces: model_selector(n), pods: model_selector(p) }),
    ];
    let rules = || prop::collection::vec(cluster_rule(), 0..=2);
    (
        select(&["c0", "c1", "c2", "c3"][..]),
        select(&[Tier::Admin, Tier::Baseline][..]),
        select(&[0u32, 5, 5, 10][..]),
        subject,
        rules(),
        rules(),
    )
        .prop_map(|(name, tier, priority, subject, ingress, egress)| ClusterPolicy {
            name: name.to_string(),
            tier,
            priority,
            subject,
            ingress,
            egress,
        })
}

fn apply_edit(g: &mut GenCluster, e: &Edit) {
    let n = g.pods.len();
    match e.clone() {
        Edit::ReplacePod(i, p) => g.pods[i % n] = p,
        Edit::RelabelPod(i, labels) => g.pods[i % n].labels = labels,
        Edit::AddPod(p) => g.pods.push(p),
        Edit::RemovePod(i) if n > 1 => {
            g.pods.remove(i % n);
        }
        Edit::RemovePod(_) => {}
        Edit::ReplacePolicy(i, p) if !g.policies.is_empty() => {
            let m = g.policies.len();
            g.policies[i % m] = p;
        }
        Edit::ReplacePolicy(_, p) | Edit::AddPolicy(p) => g.policies.push(p),
        Edit::RemovePolicy(i) if !g.policies.is_empty() => {
            let m = g.policies.len();
            g.policies.remove(i % m);
        }
        Edit::RemovePolicy(_) => {}
        Edit::Namespace(i, labels, exists) => g.namespaces[i] = (labels, exists),
        Edit::AllowHost(on) => g.allow_host = on,
        Edit::ReplaceCluster(i, p) if !g.cluster.is_empty() => {
            let m = g.cluster.len();
            g.cluster[i % m] = p;
        }
        Edit::ReplaceCluster(_, p) | Edit::AddCluster(p) => g.cluster.push(p),
        Edit::RemoveCluster(i) if !g.cluster.is_empty() => {
            let m = g.cluster.len();
            g.cluster.remove(i % m);
        }
        Edit::RemoveCluster(_) => {}
        Edit::NodeLabels(i, labels) => g.node_labels[i] = labels,
    }
    // One object per name, as the API server holds them.
    let mut seen = std::collections::BTreeSet::new();
    g.cluster.retain(|c| seen.insert(c.name.clone()));
}

/// Objects equal to the previous state's share its `Arc`s, as a source
/// hands out unchanged objects.
fn share(input: &mut Input, prev: &Input) {
    fn each<K: Ord + Clone, V: PartialEq>(
        now: &mut palisade::policy::model::ChunkedMap<K, std::sync::Arc<V>>,
        prev: &palisade::policy::model::ChunkedMap<K, std::sync::Arc<V>>,
    ) {
        let same: Vec<(K, std::sync::Arc<V>)> =
            now.iter().filter_map(|(k, v)| prev.get(k).filter(|p| *p == v).map(|p| (k.clone(), p.clone()))).collect();
        now.extend(same);
    }
    each(&mut input.namespaces, &prev.namespaces);
    each(&mut input.pods, &prev.pods);
    each(&mut input.policies, &prev.policies);
    each(&mut input.cluster_policies, &prev.cluster_policies);
    each(&mut input.nodes, &prev.nodes);
}

/// The first differences between two outputs, entry by entry.
fn differences(inc: &Compiled, full: &Compiled) -> String {
    let mut out = Vec::new();
    for (k, v) in &full.policy {
        if inc.policy.get(k) != Some(v) {
            out.push(format!("policy {k:?}: incremental {:?}, full {v:?}", inc.policy.get(k)));
        }
    }
    for (k, v) in &inc.policy {
        if !full.policy.contains_key(k) {
            out.push(format!("policy {k:?}: incremental {v:?}, full none"));
        }
    }
    if inc.ips != full.ips {
        out.push(format!("ips: incremental {:?}\nfull {:?}", inc.ips, full.ips));
    }
    if inc.endpoints != full.endpoints {
        out.push(format!("endpoints: incremental {:?}\nfull {:?}", inc.endpoints, full.endpoints));
    }
    if inc.catalog != full.catalog {
        out.push(format!("catalog: incremental {:?}\nfull {:?}", inc.catalog, full.catalog));
    }
    if inc.warnings != full.warnings {
        out.push(format!("warnings: incremental {:?}, full {:?}", inc.warnings, full.warnings));
    }
    out.truncate(12);
    out.join("\n")
}

#[test]
fn incremental_compile_equals_compiling_from_scratch() {
    use palisade::policy::compile::{Compiler, compile_with_hints, hints_of};
    let cases = std::env::var("PALISADE_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(512);
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let steps = AtomicUsize::new(0);
    let changed_steps = AtomicUsize::new(0);
    let tiered_steps = AtomicUsize::new(0);
    let deny_steps = AtomicUsize::new(0);
    let strategy = (tiered_cluster(), prop::collection::vec((edit(), any::<bool>()), 1..=10));
    let result = runner.run(&strategy, |(base, edits)| {
        let mut g = base;
        let mut compiler = Compiler::default();
        let mut prev: Option<(Input, Compiled)> = None;
        for i in 0..=edits.len() {
            if i > 0 {
                apply_edit(&mut g, &edits[i - 1].0);
            }
            let w = render(&g);
            let mut input = w.input();
            if let Some((p, _)) = &prev
                && (i == 0 || edits[i - 1].1)
            {
                share(&mut input, p);
            }
            let hints = prev.as_ref().map(|(_, c)| hints_of(c)).unwrap_or_default();
            let inc = compiler.compile(&std::sync::Arc::new(input.clone()), &w.node).clone();
            let full = compile_with_hints(&input, &w.node, &hints);
            prop_assert!(
                inc == full,
                "step {i} ({:?}): incremental and full compiles differ:\n{}\n{}",
                edits.get(i.wrapping_sub(1)),
                differences(&inc, &full),
                describe(&w)
            );
            // The address entries it reports changed include every one that
            // differs (a missed one would stay in the kernel), and only
            // entries of either map.
            if let (Some((_, before)), Some(changed)) = (&prev, &compiler.changes().ips) {
                let keys: std::collections::BTreeSet<_> = before.ips.keys().chain(inc.ips.keys()).copied().collect();
                for k in &keys {
                    prop_assert!(
                        before.ips.get(k) == inc.ips.get(k) || changed.contains(k),
                        "step {}: address {:?} changed unreported",
                        i,
                        k
                    );
                }
                prop_assert!(changed.is_subset(&keys), "step {}: reported addresses of neither map", i);
            }
            // The changes it reports are exactly the policy entries that
            // differ, in key order, each with its value now.
            if let (Some((_, before)), Some(changed)) = (&prev, &compiler.changes().policy) {
                let keys: std::collections::BTreeSet<_> = before.policy.keys().chain(inc.policy.keys()).collect();
                let differ: Vec<_> = keys
                    .into_iter()
                    .filter(|k| before.policy.get(k) != inc.policy.get(k))
                    .map(|k| (*k, inc.policy.get(k).copied()))
                    .collect();
                prop_assert_eq!(&differ, changed, "step {}: reported changes", i);
                steps.fetch_add(1, Ordering::Relaxed);
                if !differ.is_empty() {
                    changed_steps.fetch_add(1, Ordering::Relaxed);
                }
            }
            let tiered = palisade_common::EP_INGRESS_TIERED | palisade_common::EP_EGRESS_TIERED;
            if inc.endpoints.iter().any(|e| e.flags & tiered != 0) {
                tiered_steps.fetch_add(1, Ordering::Relaxed);
            }
            if inc.policy.values().any(|v| v.denies() && v.rule != 0) {
                deny_steps.fetch_add(1, Ordering::Relaxed);
            }
            prev = Some((input, inc));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (steps, changed) = (steps.load(Ordering::Relaxed), changed_steps.load(Ordering::Relaxed));
    let (tiered, denies) = (tiered_steps.load(Ordering::Relaxed), deny_steps.load(Ordering::Relaxed));
    eprintln!(
        "{cases} sequences, {steps} changes compiled incrementally, {changed} of them changed policy entries; \
         {tiered} states with tiered endpoints, {denies} with deny-rule entries"
    );
    assert!(changed * 5 >= steps, "too few changes touch policy entries: {changed} of {steps}");
    assert!(tiered * 4 >= steps && denies * 10 >= steps, "too few states with cluster policies: {tiered}, {denies}");
}

// ---------------------------------------------------------------------------
// ClusterNetworkPolicy tiers: `trace`'s walk through the tiers (written on
// the model, rule by rule, like the policy API's policy-assistant) against
// the compiled entries' verdict (`lookup`, the kernel's decision).

#[test]
fn trace_walks_the_tiers_to_the_compiled_verdict() {
    use palisade::trace::{EndpointRef, Query};
    let cases = std::env::var("PALISADE_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let sides = AtomicUsize::new(0);
    let decided = AtomicUsize::new(0);
    let strategy = (
        cluster(),
        prop::collection::vec(cluster_policy(), 1..=4),
        labels_strategy(NODE_LABELS),
        labels_strategy(NODE_LABELS),
    );
    let result = runner.run(&strategy, |(mut g, cnps, a, b)| {
        g.cluster = cnps;
        let mut seen = std::collections::BTreeSet::new();
        g.cluster.retain(|c| seen.insert(c.name.clone()));
        g.node_labels = [a, b];
        let w = render(&g);
        let input = w.input();
        let pods: Vec<&Pod> = w.pods.iter().filter(|p| reference::is_peer_pod(p)).collect();
        if pods.is_empty() {
            return Ok(());
        }
        for q in &g.queries {
            let local = pods[q.local % pods.len()];
            let local_ref =
                EndpointRef::Pod(local.metadata.namespace.clone().unwrap(), local.metadata.name.clone().unwrap());
            let v6 = matches!(q.remote, GenRemote::Pod(_, true))
                || matches!(q.remote, GenRemote::External(i) if EXTERNAL[i].contains(':'));
            let remote = match q.remote {
                GenRemote::Pod(i, _) => {
                    let p = pods[i % pods.len()];
                    EndpointRef::Pod(p.metadata.namespace.clone().unwrap(), p.metadata.name.clone().unwrap())
                }
                GenRemote::External(i) => EndpointRef::Ip(EXTERNAL[i].parse().unwrap()),
                GenRemote::Host(i) => EndpointRef::Ip(HOST_IPS[i].parse().unwrap()),
            };
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Tcp][q.proto];
            let (from, to) = if q.egress { (local_ref, remote) } else { (remote, local_ref) };
            let query = Query { from, to, port: q.port, protocol, ipv6: v6 };
            let Ok(t) = palisade::trace::trace(&input, &w.node, &query) else { continue };
            for side in [&t.egress, &t.ingress] {
                sides.fetch_add(1, Ordering::Relaxed);
                if side.summary.contains("ClusterNetworkPolicy") {
                    decided.fetch_add(1, Ordering::Relaxed);
                }
                prop_assert!(
                    !side.summary.contains("please report this as a bug"),
                    "{query:?}: the walk and the compiled entries differ:\n{t}\n{}\n{:#?}",
                    describe(&w),
                    g.cluster
                );
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (sides, decided) = (sides.load(Ordering::Relaxed), decided.load(Ordering::Relaxed));
    eprintln!("{cases} clusters, {sides} sides traced, {decided} decided by a ClusterNetworkPolicy rule");
    assert!(decided * 40 >= sides, "too few sides decided by cluster policies: {decided} of {sides}");
}
