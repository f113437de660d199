//! Fixtures for palisade's privileged end-to-end tests: network namespaces
//! as pods, the real agent binary, and real traffic between them. Every
//! fixture cleans up on drop, so a failing test leaves no namespace,
//! interface, pinned object or process behind.

pub mod agent;
pub mod cluster;
pub mod fake_api;
pub mod netns;
pub mod nodes;
pub mod pods;
pub mod probe;
pub mod suite;

use anyhow::{Result, bail};
use pods::{Pod, PodSpec, Port};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The node name the agent under test runs as.
pub const NODE: &str = "e2e-node";

/// Fails unless we can do what the tests need (root: netns, BPF).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the end-to-end tests need root (network namespaces, BPF, TC); run them as root");
    }
    Ok(())
}

/// The upstream netpol suite's cluster: namespaces x, y, z with pods a, b,
/// c each, on this host or spread over nodes, all serving 80 and 81 over
/// TCP and UDP.
pub struct Topology {
    pub tag: String,
    pub namespaces: Vec<String>,
    pub pods: Vec<Pod>,
}

impl Topology {
    /// `tag` (a few characters) keeps interface and namespace names unique.
    pub fn xyz(tag: &str, subnet: u8) -> Result<Topology> {
        pods::prepare_host()?;
        Topology::build(tag, subnet, |_| None)
    }

    /// The same pods spread over `nodes` like a checkerboard (x/a on the
    /// first node, x/b on the second, ...), so every namespace pair has
    /// pods on the same node and on different ones; each node routes to the
    /// others' pods.
    pub fn xyz_on(tag: &str, subnet: u8, nodes: &nodes::Nodes) -> Result<Topology> {
        let n = nodes.nodes.len();
        let topo = Topology::build(tag, subnet, |i| Some(&nodes.nodes[i % n]))?;
        for p in &topo.pods {
            nodes.route_to(&p.spec.node, &[p.ip(false), p.ip(true)])?;
        }
        Ok(topo)
    }

    /// Pods x/a .. z/c; `place` puts the i-th on a node (None: this host).
    fn build<'a>(tag: &str, subnet: u8, place: impl Fn(usize) -> Option<&'a nodes::Node>) -> Result<Topology> {
        let namespaces: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
        let mut pods = Vec::new();
        for (ni, ns) in namespaces.iter().enumerate() {
            for (pi, name) in ["a", "b", "c"].iter().enumerate() {
                let host = (ni * 16 + pi + 1) as u8;
                let node = place(ni * 3 + pi);
                let spec = PodSpec {
                    namespace: ns.clone(),
                    name: name.to_string(),
                    labels: vec![("pod".into(), name.to_string())],
                    ip4: Ipv4Addr::new(10, 240, subnet, host),
                    ip6: Ipv6Addr::new(0xfd10, 0x240, u16::from(subnet), 0, 0, 0, 0, u16::from(host)),
                    node: node.map_or(NODE, |n| n.name.as_str()).into(),
                    ports: [80, 81]
                        .iter()
                        .flat_map(|&port| {
                            ["TCP", "UDP", "SCTP"]
                                .map(|proto| Port::new(&format!("serve-{port}-{}", proto.to_lowercase()), port, proto))
                        })
                        .collect(),
                };
                let (netns, host_if) = (format!("pl-{tag}-{ns}-{name}"), format!("pl{tag}{ns}{name}"));
                pods.push(Pod::create_on(node.map(|n| n.netns.name.as_str()), &netns, &host_if, spec)?);
            }
        }
        Ok(Topology { tag: tag.into(), namespaces, pods })
    }

    /// Pods of any names, labels and ports, the i-th on node `node(i)`
    /// (an index into `nodes`), addressed 10.240.`subnet`.(i+1); each node
    /// routes to the others' pods. The Namespace objects are the caller's
    /// (`namespaces` stays empty, so [`Topology::manifests`] writes none).
    pub fn planned_on(tag: &str, subnet: u8, nodes: &nodes::Nodes, plan: Vec<PodPlan>) -> Result<Topology> {
        let mut pods = Vec::new();
        for (i, p) in plan.into_iter().enumerate() {
            let host = (i + 1) as u8;
            let node = &nodes.nodes[p.node % nodes.nodes.len()];
            let spec = PodSpec {
                namespace: p.namespace,
                name: p.name,
                labels: p.labels,
                ip4: Ipv4Addr::new(10, 240, subnet, host),
                ip6: Ipv6Addr::new(0xfd10, 0x240, u16::from(subnet), 0, 0, 0, 0, u16::from(host)),
                node: node.name.clone(),
                ports: p.ports,
            };
            let (netns, host_if) = (format!("pl-{tag}-p{i}"), format!("pl{tag}p{i}"));
            let pod = Pod::create_on(Some(&node.netns.name), &netns, &host_if, spec)?;
            nodes.route_to(&node.name, &[pod.ip(false), pod.ip(true)])?;
            pods.push(pod);
        }
        Ok(Topology { tag: tag.into(), namespaces: Vec::new(), pods })
    }

    pub fn pod(&self, id: &str) -> &Pod {
        self.pods.iter().find(|p| p.id() == id).unwrap_or_else(|| panic!("no pod {id}"))
    }

    pub fn all(&self) -> Vec<&Pod> {
        self.pods.iter().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.id()).collect()
    }

    /// Namespaces (labelled `ns: <name>`) and pods as manifests.
    pub fn manifests(&self) -> String {
        let mut out = String::new();
        for ns in &self.namespaces {
            out.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n---\n"
            ));
        }
        for p in &self.pods {
            out.push_str(&p.manifest());
            out.push_str("---\n");
        }
        out
    }
}

/// One pod of a [`Topology::planned_on`] topology.
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Declared in the manifest and served (TCP, UDP).
    pub ports: Vec<Port>,
    /// Index of its node.
    pub node: usize,
}

/// A NetworkPolicy manifest; `spec` is YAML indented by two spaces.
pub fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: \"{ns}\"\nspec:\n{spec}"
    )
}
