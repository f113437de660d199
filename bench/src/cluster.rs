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

use anyhow::{Context, Result};
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
}

impl Cluster {
    /// `pods` counts every pod, the two local ones included; `policies`
    /// counts the generated ones (the two bench policies come on top).
    pub fn new(pods: usize, policies: usize) -> Cluster {
        Cluster {
            namespaces: (0..NAMESPACES).map(namespace).collect(),
            remote_pods: (0..pods.saturating_sub(2)).map(remote_pod).collect(),
            generated: (0..policies).map(generated_policy).collect(),
        }
    }

    /// The validated model, as the agent would read it (client unlabelled).
    pub fn input(&self) -> Result<Input> {
        let objects = self.namespaces.iter().chain(&self.remote_pods).chain(&self.generated).cloned();
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
        Ok(())
    }
}

pub fn policy_node() -> PolicyNode {
    PolicyNode { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false }
}

pub fn ip_of(v: (Ipv4Addr, Ipv6Addr), v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(v.1) } else { IpAddr::V4(v.0) }
}
