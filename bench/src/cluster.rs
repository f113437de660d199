//! The synthetic cluster every engine is measured on: namespaces, pods and
//! NetworkPolicies generated from two numbers (pods, policies). The same
//! manifests feed palisade (as files, or compiled in-process) and the
//! iptables and nftables generators (which read them back through
//! palisade's own validated model, so every engine enforces the same set).
//!
//! Shape. 100 namespaces `ns-0..ns-99` (labels `team: team-<k % 10>`).
//! Remote pods (other nodes) spread round-robin over the namespaces with
//! labels `app: app-<(i / 100) % 50>` and `tier: web|api|db|cache`. The two
//! local pods live in `ns-0`: `client` (app=client, tier=web) and `server`
//! (app=server, tier=api). Policy j lives in `ns-<j % 100>`:
//! - j % 10 == 0: namespace-wide ingress (podSelector {}) from pods of a
//!   team's namespaces, TCP 9100+;
//! - j % 10 == 5: namespace-wide egress to the db tier of a team's
//!   namespaces on TCP 5432 and to 10.96.0.0/12 on UDP 53;
//! - otherwise: one app's ingress from another app and from the web tier of
//!   a team, on one TCP port (every third one a 32-port endPort range).
//!
//! So a local pod is selected by more policies as the set grows (1, 10,
//! 100 namespace-wide ones at 10, 1k, 10k policies), as in a real
//! namespace with many teams' rules. On top, two bench policies in ns-0
//! isolate the local pods and allow client -> server on the ports the
//! measurements use (TCP/UDP 7000-7003 by peer; TCP/UDP 7100 from anyone).
//!
//! ClusterNetworkPolicies, when asked for (`with_cluster_policies`): three
//! Admin to one Baseline, priorities spread over 0..=1000; subjects by
//! team namespaces, by tier in some or all namespaces, by team exclusion,
//! every 50th cluster-wide; one to three ingress rules each (Accept, Deny
//! and Pass in turn) from namespaces, pods and anywhere, on single ports,
//! 16-port ranges, TCP with UDP, the named port `http` or the well-known
//! ports; half also have egress rules to networks (DNS, a denied range)
//! or to the db tier. A third of them select the server. Admin Accept
//! and Deny rules stay off 7000-7999, so the bench policies still decide
//! every measured flow (a Pass there hands them to NetworkPolicy, and
//! Baseline is never reached for the server, which NetworkPolicy
//! isolates): what changes is the entries the server's lookups go through.

use anyhow::{Context, Result};
use palisade::policy::model::ClusterSubject;
use palisade::policy::{Input, Node as PolicyNode};
pub use palisade_kit::manifest::{self, list, policy};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The node name the agent runs as.
pub const NODE: &str = "plb-node";
pub const NAMESPACES: usize = 100;

/// Ports the bench policies allow from client to server.
pub const PORT_IPERF: u16 = 7000;
pub const PORT_RR: u16 = 7001;
pub const PORT_CPS: u16 = 7002;
/// Allowed from any peer (the wildcard rule).
pub const PORT_ANY_PEER: u16 = 7100;
/// Never allowed.
pub const PORT_DENIED: u16 = 7999;

pub fn client_ips() -> (Ipv4Addr, Ipv6Addr) {
    (Ipv4Addr::new(10, 200, 0, 2), "fd00:200::2".parse().expect("v6"))
}

pub fn server_ips() -> (Ipv4Addr, Ipv6Addr) {
    (Ipv4Addr::new(10, 200, 0, 3), "fd00:200::3".parse().expect("v6"))
}

/// Address of remote pod `i` (0-based; up to 65k pods).
pub fn remote_ips(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let n = i as u32 + 1;
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 0)) + n);
    let v6 = Ipv6Addr::from(u128::from("fd00:201::".parse::<Ipv6Addr>().expect("v6")) + u128::from(n));
    (v4, v6)
}

fn namespace(k: usize) -> Value {
    manifest::namespace(&format!("ns-{k}"), json!({"team": format!("team-{}", k % 10)}))
}

/// A pod of the cluster; each declares container port `http` (8080).
fn pod(ns: &str, name: &str, labels: Value, node: &str, ips: (Ipv4Addr, Ipv6Addr)) -> Value {
    manifest::pod(ns, name, labels, node, ips, &[("http", 8080)])
}

const TIERS: [&str; 4] = ["web", "api", "db", "cache"];

fn remote_pod(i: usize) -> Value {
    let (v4, v6) = remote_ips(i);
    let ns = format!("ns-{}", i % NAMESPACES);
    let labels = json!({"app": format!("app-{}", (i / NAMESPACES) % 50), "tier": TIERS[i % 4]});
    pod(&ns, &format!("pod-{i}"), labels, &format!("remote-{}", i % 64), (v4, v6))
}

/// The local pods, with the client's labels (its `probe` label is what the
/// label-change measurement flips).
pub fn local_pods(client_probe: bool) -> Vec<Value> {
    let mut client = json!({"app": "client", "tier": "web"});
    if client_probe {
        client["probe"] = json!("yes");
    }
    vec![
        pod("ns-0", "client", client, NODE, client_ips()),
        pod("ns-0", "server", json!({"app": "server", "tier": "api"}), NODE, server_ips()),
    ]
}

fn generated_policy(j: usize) -> Value {
    let ns = format!("ns-{}", j % NAMESPACES);
    let name = format!("pol-{j:05}");
    let team = format!("team-{}", (j / NAMESPACES) % 10);
    let spec = match j % 10 {
        0 => json!({
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                         "ports": [{"protocol": "TCP", "port": 9100 + (j / NAMESPACES) % 50}]}]
        }),
        5 => json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"team": team}},
                         "podSelector": {"matchLabels": {"tier": "db"}}}],
                 "ports": [{"protocol": "TCP", "port": 5432}]},
                {"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}], "ports": [{"protocol": "UDP", "port": 53}]}
            ]
        }),
        _ => {
            let app = (j / NAMESPACES) % 50;
            let port = 8000 + (j % 97) as u16 * 32;
            let ports = if j.is_multiple_of(3) {
                json!([{"protocol": "TCP", "port": port, "endPort": port + 31}])
            } else {
                json!([{"protocol": "TCP", "port": port}])
            };
            json!({
                "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"app": format!("app-{}", (app + 1) % 50)}}},
                    {"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": {"matchLabels": {"tier": "web"}}}
                ], "ports": ports}]
            })
        }
    };
    policy(&ns, &name, spec)
}

/// A ClusterNetworkPolicy with `spec`.
fn cluster_policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name}, "spec": spec})
}

/// Ports `tcp` (and `udp`) `first..=last` in a `protocols` entry.
fn cnp_ports(first: u16, last: u16, udp: bool) -> Value {
    let dest = if first == last {
        json!({"destinationPort": {"number": first}})
    } else {
        json!({"destinationPort": {"range": {"start": first, "end": last}}})
    };
    if udp { json!([{"tcp": dest}, {"udp": dest}]) } else { json!([{"tcp": dest}]) }
}

fn generated_cluster_policy(j: usize) -> Value {
    let team = |k: usize| format!("team-{}", k % 10);
    let app = |k: usize| format!("app-{}", k % 50);
    let t = j / 4;
    let baseline = j % 4 == 3;
    let subject = match j % 5 {
        0 => json!({"namespaces": {"matchLabels": {"team": team(t)}}}),
        1 => json!({"pods": {"namespaceSelector": {"matchLabels": {"team": team(t)}},
                             "podSelector": {"matchLabels": {"tier": TIERS[(j / 5) % 4]}}}}),
        2 => json!({"pods": {"namespaceSelector": {},
                             "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                             "values": [TIERS[(j / 5) % 4], TIERS[(j / 5 + 1) % 4]]}]}}}),
        3 if j % 50 == 3 => json!({"namespaces": {}}),
        3 => json!({"namespaces": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": [team(t)]}]}}),
        _ => json!({"namespaces": {"matchExpressions": [{"key": "team", "operator": "In",
                                                           "values": [team(t), team(t + 3)]}]}}),
    };
    let rules = 1 + j % 3;
    let ingress: Vec<Value> = (0..rules)
        .map(|r| {
            let action = ["Accept", "Deny", "Pass"][(j + r) % 3];
            let from = match (j + 2 * r) % 4 {
                0 => json!([{"namespaces": {"matchLabels": {"team": team(t + r + 1)}}}]),
                1 => json!([{"pods": {"namespaceSelector": {"matchLabels": {"team": team(t + r)}},
                                      "podSelector": {"matchLabels": {"app": app(j + r)}}}}]),
                2 => json!([{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": TIERS[(j + r) % 4]}}}},
                             {"namespaces": {"matchLabels": {"team": team(t + 5)}}}]),
                _ => json!([{"namespaces": {}}]),
            };
            // Off the measured ports 7000-7999, except where nothing but a
            // Pass or a Baseline rule (see the module docs) can meet them.
            let base = 8000 + ((j * 7 + r * 13) % 120) as u16 * 16;
            let protocols = match (j + r) % 5 {
                _ if baseline && r + 1 == rules && action == "Deny" => Value::Null,
                _ if action == "Pass" && (j / 3).is_multiple_of(2) => cnp_ports(7000, 7999, true),
                0 => cnp_ports(base, base, false),
                1 => cnp_ports(base, base + 15, false),
                2 => cnp_ports(base, base + 7, true),
                3 => json!([{"destinationNamedPort": "http"}]),
                _ => cnp_ports(1, 1023, false),
            };
            let mut rule = json!({"name": format!("in-{r}-{}", action.to_lowercase()), "action": action, "from": from});
            if !protocols.is_null() {
                rule["protocols"] = protocols;
            }
            rule
        })
        .collect();
    let mut spec = json!({
        "tier": if baseline { "Baseline" } else { "Admin" },
        "priority": (j * 389) % 1001,
        "subject": subject,
        "ingress": ingress,
    });
    if j.is_multiple_of(2) {
        let mut egress = vec![match (j / 2) % 3 {
            0 => json!({"action": "Accept", "to": [{"networks": ["10.96.0.0/12", "fd00:96::/108"]}],
                        "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]}),
            1 => json!({"action": "Deny", "to": [{"networks": ["192.0.2.0/24", "2001:db8::/32"]}]}),
            _ => {
                json!({"action": "Accept", "to": [{"pods": {"namespaceSelector": {"matchLabels": {"team": team(t + 2)}},
                                                             "podSelector": {"matchLabels": {"tier": "db"}}}}],
                        "protocols": cnp_ports(5432, 5432, false)})
            }
        }];
        if j.is_multiple_of(4) {
            egress.push(json!({"action": "Pass", "to": [{"namespaces": {"matchLabels": {"team": team(t)}}}]}));
        }
        spec["egress"] = json!(egress);
    }
    cluster_policy(&format!("cnp-{j:04}"), spec)
}

/// The two bench policies (see the module docs).
pub fn bench_policies() -> Vec<Value> {
    let by_peer = json!([
        {"protocol": "TCP", "port": PORT_IPERF, "endPort": PORT_IPERF + 3},
        {"protocol": "UDP", "port": PORT_IPERF, "endPort": PORT_IPERF + 3}
    ]);
    vec![
        policy(
            "ns-0",
            "bench-server",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": by_peer},
                    {"ports": [{"protocol": "TCP", "port": PORT_ANY_PEER}, {"protocol": "UDP", "port": PORT_ANY_PEER}]}
                ]
            }),
        ),
        policy(
            "ns-0",
            "bench-client",
            json!({
                "podSelector": {"matchLabels": {"app": "client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": by_peer}]
            }),
        ),
    ]
}

/// One cluster's manifests.
pub struct Cluster {
    pub namespaces: Vec<Value>,
    pub remote_pods: Vec<Value>,
    pub generated: Vec<Value>,
    /// Generated ClusterNetworkPolicies (none unless asked for).
    pub cluster_policies: Vec<Value>,
}

impl Cluster {
    /// `pods` counts every pod, the two local ones included; `policies`
    /// counts the generated ones (the two bench policies come on top).
    pub fn new(pods: usize, policies: usize) -> Cluster {
        Cluster {
            namespaces: (0..NAMESPACES).map(namespace).collect(),
            remote_pods: (0..pods.saturating_sub(2)).map(remote_pod).collect(),
            generated: (0..policies).map(generated_policy).collect(),
            cluster_policies: Vec::new(),
        }
    }

    /// The same cluster with `n` generated ClusterNetworkPolicies.
    pub fn with_cluster_policies(mut self, n: usize) -> Cluster {
        self.cluster_policies = (0..n).map(generated_cluster_policy).collect();
        self
    }

    /// The validated model, as the agent would read it (client unlabelled).
    pub fn input(&self) -> Result<Input> {
        let objects = self
            .namespaces
            .iter()
            .chain(&self.remote_pods)
            .chain(&self.generated)
            .chain(&self.cluster_policies)
            .cloned();
        let objects = objects.chain(local_pods(false)).chain(bench_policies());
        palisade::cluster::convert::objects_to_input(objects)
            .map_err(|errors| anyhow::anyhow!("invalid benchmark input: {errors:?}"))
    }

    /// Writes the manifests into `dir` in files of at most 1000 objects
    /// (`kind: List`), the local pods in a file of their own.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let put = |name: String, v: Value| -> Result<()> {
            std::fs::write(dir.join(&name), serde_json::to_vec(&v)?).with_context(|| name.clone())
        };
        put("namespaces.json".into(), list(&self.namespaces))?;
        for (i, chunk) in self.remote_pods.chunks(1000).enumerate() {
            put(format!("pods-{i:03}.json"), list(chunk))?;
        }
        put("local-pods.json".into(), list(&local_pods(false)))?;
        for (i, chunk) in self.generated.chunks(1000).enumerate() {
            put(format!("policies-{i:03}.json"), list(chunk))?;
        }
        put("bench-policies.json".into(), list(&bench_policies()))?;
        if !self.cluster_policies.is_empty() {
            put("cluster-policies.json".into(), list(&self.cluster_policies))?;
        }
        Ok(())
    }
}

/// How many of the input's ClusterNetworkPolicies select the server pod.
pub fn cluster_policies_selecting_server(input: &Input) -> usize {
    let Some(server) = input.pods.get(&("ns-0".to_string(), "server".to_string())) else { return 0 };
    let Some(ns) = input.namespaces.get("ns-0") else { return 0 };
    input
        .cluster_policies
        .values()
        .filter(|p| match &p.subject {
            ClusterSubject::Namespaces(n) => n.matches(&ns.labels),
            ClusterSubject::Pods { namespaces, pods } => namespaces.matches(&ns.labels) && pods.matches(&server.labels),
        })
        .count()
}

pub fn policy_node() -> PolicyNode {
    PolicyNode { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false }
}

pub fn ip_of(v: (Ipv4Addr, Ipv6Addr), v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(v.1) } else { IpAddr::V4(v.0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade::policy::lookup::{Verdict, decide};
    use palisade::policy::{Compiled, Direction, compile};
    use palisade_common::{EP_INGRESS_TIERED, PROTO_TCP, PROTO_UDP};

    /// The verdict of every flow the kernel section measures (ingress to
    /// the server), and the server's endpoint flags.
    fn measured(c: &Compiled, remotes: usize) -> (Vec<Verdict>, u32) {
        let server = c.endpoints.iter().find(|e| e.name == "server").expect("server endpoint");
        let mut out = Vec::new();
        for v6 in [false, true] {
            for proto in [PROTO_TCP, PROTO_UDP] {
                let mut flow = |from: IpAddr, port: u16| {
                    out.push(decide(c, &server.kernel(), Direction::Ingress, from, proto, port));
                };
                let client = ip_of(client_ips(), v6);
                for port in (PORT_IPERF..=PORT_IPERF + 3).chain([PORT_ANY_PEER, PORT_DENIED]) {
                    flow(client, port);
                }
                for i in (0..remotes).step_by(7) {
                    flow(ip_of(remote_ips(i), v6), PORT_ANY_PEER);
                    flow(ip_of(remote_ips(i), v6), PORT_DENIED);
                }
            }
        }
        (out, server.flags)
    }

    /// The generated ClusterNetworkPolicies (at the kernel section's quick
    /// and full points) validate without an error or a warning, select the
    /// server, and leave every measured flow's verdict as NetworkPolicy
    /// alone gives it: the CNP rows measure the same decisions through
    /// the entries CNPs add.
    #[test]
    fn cluster_policies_validate_select_the_server_and_keep_the_verdicts() {
        for (pods, policies, cnps) in [(1000, 100, 100), (1000, 10_000, 1000)] {
            let without = Cluster::new(pods, policies);
            let plain = without.input().expect("valid input");
            let with = Cluster::new(pods, policies).with_cluster_policies(cnps);
            let input = with.input().unwrap_or_else(|e| panic!("{cnps} CNPs: {e}"));
            assert_eq!(input.cluster_policies.len(), cnps);
            let selecting = cluster_policies_selecting_server(&input);
            assert!(selecting >= cnps / 4, "{selecting} of {cnps} CNPs select the server");
            let (base, base_flags) = measured(&compile(&plain, &policy_node()), pods - 2);
            let compiled = compile(&input, &policy_node());
            assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
            let (tiered, flags) = measured(&compiled, pods - 2);
            assert_eq!(base_flags & EP_INGRESS_TIERED, 0);
            assert_ne!(flags & EP_INGRESS_TIERED, 0, "the server's ingress goes through the tiers");
            let decided = |v: &[Verdict]| v.iter().map(|v| (v.allowed, v.rule)).collect::<Vec<_>>();
            assert_eq!(decided(&tiered), decided(&base), "{cnps} CNPs changed a measured verdict or its rule");
            assert!(base.iter().any(|v| v.allowed) && base.iter().any(|v| !v.allowed));
        }
    }
}
