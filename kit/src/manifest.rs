//! Kubernetes manifests as the agent reads them (JSON values; the agent
//! reads YAML and JSON alike), for fixtures and generated clusters.

use serde_json::{Value, json};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A Namespace with `labels` (an object).
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A container port the pod declares: (name, number); TCP.
pub type NamedPort<'a> = (&'a str, u16);

/// A running Pod on `node` with both addresses, one container declaring
/// `ports`.
pub fn pod(ns: &str, name: &str, labels: Value, node: &str, ips: (Ipv4Addr, Ipv6Addr), ports: &[NamedPort]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|(n, p)| json!({"name": n, "containerPort": p})).collect();
    let (ip4, ip6) = (ips.0.to_string(), ips.1.to_string());
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip4, "podIPs": [{"ip": ip4}, {"ip": ip6}]}
    })
}

/// A NetworkPolicy with `spec`.
pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

/// Objects in one file (`kind: List`).
pub fn list(items: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let p = pod(
            "prod",
            "web",
            json!({"app": "web"}),
            "n1",
            ("10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()),
            &[("http", 8080)],
        );
        assert_eq!(p["status"]["podIPs"][1]["ip"], "fd00::1");
        assert_eq!(p["spec"]["containers"][0]["ports"][0], json!({"name": "http", "containerPort": 8080}));
        assert_eq!(p["spec"]["nodeName"], "n1");
        let l = list(&[namespace("prod", json!({"team": "prod"})), policy("prod", "deny", json!({"podSelector": {}}))]);
        assert_eq!(l["items"][0]["metadata"]["labels"]["team"], "prod");
        assert_eq!(l["items"][1]["kind"], "NetworkPolicy");
    }
}
