//! The cluster: three local pods (web, db, solo), remote pods in three
//! namespaces, and policies covering ports, ranges, named ports, ipBlocks
//! with excepts, namespace selectors and rules without peers or ports.

use palisade::policy::{Input, Node};
use palisade_kit::manifest;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const NODE: &str = "kt-node";
pub const OTHER_NODE: &str = "kt-elsewhere";

/// Local pods: (name, IPv4, IPv6). All in namespace `prod`.
pub const LOCALS: [(&str, &str, &str); 3] = [
    ("web", "10.70.1.10", "fd00:70:0:1::10"),
    ("db", "10.70.1.20", "fd00:70:0:1::20"),
    ("solo", "10.70.1.30", "fd00:70:0:1::30"),
];

/// Remote pods: (namespace, name, app label, IPv4, IPv6).
const REMOTES: [(&str, &str, &str, &str, &str); 4] = [
    ("prod", "client", "client", "10.70.2.5", "fd00:70:0:2::5"),
    ("dev", "tool", "tool", "10.70.3.5", "fd00:70:0:3::5"),
    ("ops", "mon", "mon", "10.70.4.5", "fd00:70:0:4::5"),
    ("ops", "client", "client", "10.70.4.6", "fd00:70:0:4::6"),
];

pub const HOST_V4: &str = "172.18.0.1";
pub const HOST_V6: &str = "fc00::1";

pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn node() -> Node {
    Node { name: NODE.into(), host_ips: vec![addr(HOST_V4), addr(HOST_V6)], allow_host: true, audit: false }
}

fn k8s_pod(ns: &str, name: &str, app: &str, ip4: &str, ip6: &str, node: &str) -> Value {
    manifest::pod(ns, name, json!({"app": app}), node, (v4(ip4), v6(ip6)), &[("http-alt", 8080)])
}

fn k8s_policy(name: &str, spec: Value) -> Value {
    manifest::policy("prod", name, spec)
}

/// The policy set. `tight` drops solo's TCP 80 egress rule (for the
/// re-decision test).
fn policies(tight: bool) -> Vec<Value> {
    let solo_egress_ports = if tight {
        json!([{"protocol": "UDP", "port": 53}])
    } else {
        json!([{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}])
    };
    vec![
        k8s_policy(
            "web-ingress",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                        "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 8000, "endPort": 8100}]
                    },
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 9000}]
                    },
                    {
                        "from": [
                            {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.10.0/24"]}},
                            {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:bad::/48"]}}
                        ],
                        "ports": [{"protocol": "TCP", "port": 443}]
                    },
                    {
                        "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "tool"}}}],
                        "ports": [{"port": "http-alt"}]
                    }
                ]
            }),
        ),
        k8s_policy(
            "web-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                        "ports": [{"protocol": "TCP", "port": 5432}]
                    },
                    {
                        "to": [
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.70.3.0/24"]}},
                            {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:70:0:3::/64"]}}
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}]
                    },
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {"team": "dev"}}}],
                        "ports": [{"protocol": "TCP", "port": 3000, "endPort": 3010}]
                    }
                ]
            }),
        ),
        k8s_policy(
            "db-ingress",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"protocol": "TCP", "port": 5432}]
                    },
                    {"from": [{"ipBlock": {"cidr": "172.16.0.0/12"}}, {"ipBlock": {"cidr": "fd00:99::/32"}}]}
                ]
            }),
        ),
        k8s_policy(
            "solo-deny-ingress",
            json!({"podSelector": {"matchLabels": {"app": "solo"}}, "policyTypes": ["Ingress"]}),
        ),
        k8s_policy(
            "solo-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "solo"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": solo_egress_ports}]
            }),
        ),
    ]
}

pub fn input(tight: bool) -> Input {
    let locals = LOCALS.iter().map(|(name, ip4, ip6)| k8s_pod("prod", name, name, ip4, ip6, NODE));
    with_locals(locals, policies(tight))
}

/// The cluster with db relabelled as a canary web pod (`app: web, role:
/// canary`) and one policy more, for canaries: egress to the ops
/// namespace on TCP 9000. Its class is web's policies and that one, so it
/// takes web's class as its parent.
pub fn input_canary() -> Input {
    let locals = LOCALS.iter().map(|&(name, ip4, ip6)| {
        let labels = if name == "db" { json!({"app": "web", "role": "canary"}) } else { json!({"app": name}) };
        manifest::pod("prod", name, labels, NODE, (v4(ip4), v6(ip6)), &[("http-alt", 8080)])
    });
    let canary = k8s_policy(
        "canary-egress",
        json!({
            "podSelector": {"matchLabels": {"role": "canary"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                        "ports": [{"protocol": "TCP", "port": 9000}]}]
        }),
    );
    with_locals(locals, policies(false).into_iter().chain([canary]).collect())
}

/// The cluster with one namespace-wide policy more in prod (`podSelector:
/// {}`): ingress from the dev namespace on TCP 2999 and 65535, egress to
/// 8.8.8.8 on UDP 1. Every local pod has policies of its own besides, so
/// the namespace's root (the class of that policy alone) has no members.
pub fn input_namespace_wide() -> Input {
    let wide = k8s_policy(
        "prod-wide",
        json!({
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "dev"}}}],
                         "ports": [{"protocol": "TCP", "port": 2999}, {"protocol": "TCP", "port": 65535}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "8.8.8.8/32"}}], "ports": [{"protocol": "UDP", "port": 1}]}]
        }),
    );
    let locals = LOCALS.iter().map(|(name, ip4, ip6)| k8s_pod("prod", name, name, ip4, ip6, NODE));
    with_locals(locals, policies(false).into_iter().chain([wide]).collect())
}

/// The cluster with the local pods named in `locals` only, and one more,
/// `name`, labelled app=`app` on `ip4` and `ip6`.
pub fn input_with_local(locals: &[&str], name: &str, app: &str, ip4: &str, ip6: &str) -> Input {
    let kept = LOCALS.iter().filter(|(n, _, _)| locals.contains(n));
    let locals = kept.map(|(n, ip4, ip6)| k8s_pod("prod", n, n, ip4, ip6, NODE));
    let added = k8s_pod("prod", name, app, ip4, ip6, NODE);
    with_locals(locals.chain([added]), policies(false))
}

fn with_locals(locals: impl Iterator<Item = Value>, policies: Vec<Value>) -> Input {
    let namespaces = ["prod", "dev", "ops"].map(
        |team| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team, "labels": {"team": team}}}),
    );
    let remotes = REMOTES.iter().map(|(ns, name, app, ip4, ip6)| k8s_pod(ns, name, app, ip4, ip6, OTHER_NODE));
    let objects = namespaces.into_iter().chain(locals).chain(remotes).chain(policies);
    palisade::cluster::convert::objects_to_input(objects).unwrap_or_else(|errors| panic!("{errors:?}"))
}
