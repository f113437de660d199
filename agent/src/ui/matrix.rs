//! The reachability matrix: for every pair of pods in the selected
//! namespaces, what policy allows on one port (the compiled entries, judged
//! by the kernel's own decision, as `trace` does), with the traffic the
//! agent saw laid over it: pairs allowed but never used (candidates to
//! close) and pairs dropped in practice.

use super::flows::FlowMap;
use super::query::Query;
use super::source::Source;
use crate::policy::model::Protocol;
use crate::policy::{Compiled, Direction, Input, Node, Pod, lookup};
use crate::trace::{self, EndpointRef};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Pods (with an IPv4 address) beyond this many are left out (the page says so).
const MAX_PODS: usize = 60;

/// Compiles once per node: each side is judged by its own pod's node.
struct Judge<'a> {
    input: &'a Input,
    node: &'a Node,
    compiled: HashMap<String, Compiled>,
}

impl Judge<'_> {
    /// One side's verdict from the compiled entries; None when the pod has
    /// no entry there (then `trace` decides the pair).
    fn side(&mut self, pod: &Pod, dir: Direction, remote: IpAddr, protocol: Protocol, port: u16) -> Option<bool> {
        if pod.host_network {
            return Some(true);
        }
        let node = pod.node_name.clone().unwrap_or_else(|| self.node.name.clone());
        let compiled = self.compiled.entry(node).or_insert_with(|| trace::compiled_for(self.input, self.node, pod));
        let ep = compiled.endpoints.iter().find(|e| e.namespace == pod.namespace && e.name == pod.name)?;
        Some(lookup::decide(compiled, &ep.kernel(), dir, remote, protocol.number(), port).allowed)
    }
}

fn id(p: &Pod) -> String {
    format!("{}/{}", p.namespace, p.name)
}

fn v4(p: &Pod) -> Option<IpAddr> {
    p.ips.iter().find(|ip| ip.is_ipv4()).copied()
}

pub fn matrix(source: &dyn Source, map: &FlowMap, q: &Query) -> Result<Value, String> {
    let applied = source.applied().ok_or("the agent has not synced yet")?;
    build(&applied.input, &applied.node, map, q)
}

/// The matrix of `input` as `node`'s agent judges it.
fn build(input: &Input, node: &Node, map: &FlowMap, q: &Query) -> Result<Value, String> {
    let namespaces = q.list("namespace");
    let port: u16 = match q.get("port") {
        Some(p) => p.parse().map_err(|_| format!("port: {p} is not a port number"))?,
        None => 80,
    };
    let protocol: Protocol = q.get("protocol").unwrap_or("TCP").parse()?;
    let mut pods: Vec<(&Arc<Pod>, IpAddr)> = input
        .pods
        .values()
        .filter(|p| !p.terminated && (namespaces.is_empty() || namespaces.contains(&p.namespace)))
        .filter_map(|p| Some((p, v4(p)?)))
        .collect();
    let total = pods.len();
    pods.truncate(MAX_PODS);
    let seen = map.observed(&protocol.to_string(), port);
    let mut judge = Judge { input, node, compiled: HashMap::new() };
    let mut rows = Vec::new();
    for &(src, src_ip) in &pods {
        let mut cells = Vec::new();
        for &(dst, dst_ip) in &pods {
            let egress = judge.side(src, Direction::Egress, dst_ip, protocol, port);
            let ingress = judge.side(dst, Direction::Ingress, src_ip, protocol, port);
            let (egress, ingress) = match (egress, ingress) {
                (Some(e), Some(i)) => (e, i),
                _ => {
                    let query = trace::Query {
                        from: EndpointRef::Pod(src.namespace.clone(), src.name.clone()),
                        to: EndpointRef::Pod(dst.namespace.clone(), dst.name.clone()),
                        port,
                        protocol,
                        ipv6: false,
                    };
                    let t = trace::trace(input, node, &query)?;
                    (t.egress.allowed, t.ingress.allowed)
                }
            };
            let allowed = egress && ingress;
            let [used, dropped, audit] = seen.get(&(id(src), id(dst))).copied().unwrap_or_default();
            let mark = if dropped + audit > 0 {
                "dropped"
            } else if allowed && used == 0 {
                "unused"
            } else if allowed {
                "used"
            } else {
                "denied"
            };
            cells.push(json!({
                "from": id(src), "to": id(dst), "allowed": allowed, "egress": egress, "ingress": ingress,
                "observed": { "allowed": used, "dropped": dropped, "audit": audit }, "mark": mark,
            }));
        }
        rows.push(cells);
    }
    Ok(json!({
        "pods": pods.iter().map(|(p, _)| id(p)).collect::<Vec<_>>(),
        "left_out": total - pods.len(),
        "port": port,
        "protocol": protocol,
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::convert::manifests_to_input;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: "x", labels: {ns: "x"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {ns: "y"}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "x", labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "x", labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "y", labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-x-http, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: "x"}}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-egress-to-y, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]
    ports: [{port: 80}]
"#;

    #[test]
    fn every_cell_agrees_with_trace() {
        let input = manifests_to_input(CLUSTER).unwrap();
        let node = Node { name: "n1".into(), host_ips: vec![], allow_host: true, audit: false };
        let map = FlowMap::default();
        let mut denied = 0;
        for (port, protocol) in [(80, "TCP"), (8080, "TCP"), (80, "UDP")] {
            let m = build(&input, &node, &map, &Query::parse(&format!("port={port}&protocol={protocol}"))).unwrap();
            let pods = m["pods"].as_array().unwrap();
            assert_eq!(pods.len(), 3);
            for cell in m["rows"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()) {
                let (from, to) = (cell["from"].as_str().unwrap(), cell["to"].as_str().unwrap());
                let q = trace::Query {
                    from: from.parse().unwrap(),
                    to: to.parse().unwrap(),
                    port,
                    protocol: protocol.parse().unwrap(),
                    ipv6: false,
                };
                let t = trace::trace(&input, &node, &q).unwrap();
                assert_eq!(cell["allowed"], t.allowed, "{from} -> {to} {protocol}/{port}:\n{t}");
                assert_eq!(
                    (cell["egress"].clone(), cell["ingress"].clone()),
                    (t.egress.allowed.into(), t.ingress.allowed.into())
                );
                let mark = if t.allowed { "unused" } else { "denied" };
                assert_eq!(cell["mark"], mark, "nothing was observed");
                denied += usize::from(!t.allowed);
            }
        }
        assert!(denied > 0, "the policies deny something");
        let only_y = build(&input, &node, &map, &Query::parse("namespace=y")).unwrap();
        assert_eq!(only_y["pods"], serde_json::json!(["y/a"]));
    }
}
