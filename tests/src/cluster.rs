//! The fixture most suites share: the x/y/z topology and its agents, with
//! policies replaced wholesale per step. Either one node (this host, the
//! agent watching a directory of manifests) or several nodes the way kind
//! runs them (network namespaces joined by a fabric, one agent per node
//! reading the in-process API server).

use crate::agent::Agent;
use crate::fake_api::FakeApi;
use crate::netns::Netns;
use crate::nodes::Nodes;
use crate::{NODE, Topology};
use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;
use std::cell::{Ref, RefCell};
use std::net::IpAddr;

/// Where the agents read cluster state from.
enum Source {
    /// Manifest files in the single agent's state directory.
    Files,
    /// The in-process API server every node's agent watches.
    Api(FakeApi),
}

/// The kinds of API objects each agent watches (one watch each; the
/// ClusterNetworkPolicy CRD is installed).
const WATCHED_KINDS: usize = 6;

pub struct Cluster {
    pub topo: Topology,
    /// One per node, in node order (n1, n2, ...); dropped before the nodes.
    agents: Vec<RefCell<Agent>>,
    source: Source,
    nodes: Option<Nodes>,
}

impl Cluster {
    /// Pods in network namespaces on this host (`tag` keeps names apart,
    /// `subnet` the addresses) and an agent started with `args`.
    pub fn start(tag: &str, subnet: u8, args: &[&str]) -> Result<Cluster> {
        crate::require_root()?;
        let topo = Topology::xyz(tag, subnet)?;
        let agent = Agent::start(tag, NODE, args)?;
        Ok(Cluster { topo, agents: vec![RefCell::new(agent)], source: Source::Files, nodes: None })
    }

    /// `count` nodes with the pods spread over them (see
    /// [`Topology::xyz_on`]), the API server on the fabric, and one agent
    /// per node started with `args`.
    pub fn start_nodes(tag: &str, subnet: u8, count: usize, args: &[&str]) -> Result<Cluster> {
        Cluster::start_nodes_with(tag, subnet, count, args, |nodes| Topology::xyz_on(tag, subnet, nodes))
    }

    /// [`Cluster::start_nodes`] with the pods `topology` places on the nodes.
    pub fn start_nodes_with(
        tag: &str,
        subnet: u8,
        count: usize,
        args: &[&str],
        topology: impl FnOnce(&Nodes) -> Result<Topology>,
    ) -> Result<Cluster> {
        crate::require_root()?;
        let nodes = Nodes::create(tag, subnet, count)?;
        let topo = topology(&nodes)?;
        let api = FakeApi::start_in(&nodes.fabric.name, nodes.fabric_ip)?;
        api.apply_manifests(&topo.manifests())?;
        let mut agents = Vec::new();
        for node in &nodes.nodes {
            let tag = format!("{tag}-{}", node.name);
            agents.push(RefCell::new(Agent::start_in(
                &tag,
                &node.name,
                &node.netns.name,
                api.kubeconfig_path(),
                args,
            )?));
        }
        Ok(Cluster { topo, agents, source: Source::Api(api), nodes: Some(nodes) })
    }

    /// The API server the agents read (None: they read manifest files).
    pub fn api(&self) -> Option<&FakeApi> {
        match &self.source {
            Source::Api(api) => Some(api),
            Source::Files => None,
        }
    }

    /// The nodes (None: one node, this host).
    pub fn nodes(&self) -> Option<&Nodes> {
        self.nodes.as_ref()
    }

    /// The agent of the `i`-th node, to stop or restart it alone.
    pub fn node_agent(&self, i: usize) -> std::cell::RefMut<'_, Agent> {
        self.agents[i].borrow_mut()
    }

    /// The agent of the first (or only) node.
    pub fn agent(&self) -> Ref<'_, Agent> {
        self.agents[0].borrow()
    }

    /// The agent of the node `pod` (namespace/name) runs on.
    pub fn agent_of(&self, pod: &str) -> Ref<'_, Agent> {
        self.agents[self.node_index(pod)].borrow()
    }

    /// The agents of the nodes `pods` run on, each once.
    pub fn agents_of(&self, pods: &[&str]) -> Vec<Ref<'_, Agent>> {
        let mut nodes: Vec<usize> = pods.iter().map(|p| self.node_index(p)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.iter().map(|&i| self.agents[i].borrow()).collect()
    }

    /// The network namespace of the node `pod` runs on (None: this host).
    pub fn node_of(&self, pod: &str) -> Option<&Netns> {
        self.nodes.as_ref().map(|n| &n.nodes[self.node_index(pod)].netns)
    }

    fn node_index(&self, pod: &str) -> usize {
        let node = &self.topo.pod(pod).spec.node;
        self.nodes.as_ref().and_then(|n| n.nodes.iter().position(|n| &n.name == node)).unwrap_or(0)
    }

    /// The last lines of every agent's log.
    pub fn log_tail(&self) -> String {
        let tails: Vec<String> = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("=== agent {} ===\n{}", i + 1, a.borrow().log_tail()))
            .collect();
        tails.join("\n")
    }

    /// Back to the base state: the topology's objects, no policies, no
    /// extra objects (manifests named `policy-*` and `extra-*`; on the API,
    /// Services and pods not in the topology).
    pub fn reset(&self) -> Result<()> {
        match &self.source {
            Source::Files => {
                let agent = self.agent();
                agent.remove_prefixed("policy-")?;
                agent.remove_prefixed("extra-")?;
                agent.apply("base.yaml", &self.topo.manifests())?;
            }
            Source::Api(api) => {
                delete_all::<NetworkPolicy>(api, |_| true);
                delete_all::<Service>(api, |_| true);
                let base = self.topo.names();
                delete_all::<Pod>(api, |(ns, name)| !base.contains(&format!("{ns}/{name}")));
                api.apply_manifests(&self.topo.manifests())?;
            }
        }
        self.wait_in_sync()?;
        Ok(())
    }

    /// Replaces all policies with `policies` and waits until they are in
    /// force; fails if an agent rejects any of them.
    pub fn apply(&self, policies: &[String]) -> Result<()> {
        for st in self.put(policies)? {
            ensure!(st["errors"].as_array().is_none_or(|a| a.is_empty()), "the agent rejected input: {}", st["errors"]);
        }
        Ok(())
    }

    /// Replaces all policies with `policies`, valid or not, and returns
    /// every agent's status once in sync. A policy that stays is edited in
    /// place, never deleted and created again: an agent may see the two
    /// apart, and to it a policy created invalid has no last valid version.
    pub fn put(&self, policies: &[String]) -> Result<Vec<Value>> {
        match &self.source {
            Source::Files => {
                let agent = self.agent();
                let files: Vec<String> = (0..policies.len()).map(|i| format!("policy-{i}.yaml")).collect();
                for (file, p) in files.iter().zip(policies) {
                    agent.apply(file, p)?;
                }
                agent.remove_prefixed_except("policy-", &files)?;
            }
            Source::Api(api) => {
                let mut kept = Vec::new();
                for p in policies {
                    api.apply_manifests(p)?;
                    kept.extend(policy_keys(p)?);
                }
                delete_all::<NetworkPolicy>(api, |k| !kept.contains(k));
            }
        }
        self.wait_in_sync()
    }

    /// Adds objects beyond the base ones (a Service, a pod); `reset`
    /// removes them.
    pub fn add(&self, name: &str, yaml: &str) -> Result<()> {
        match &self.source {
            Source::Files => self.agent().apply(&format!("extra-{name}.yaml"), yaml)?,
            Source::Api(api) => {
                api.apply_manifests(yaml)?;
            }
        }
        self.wait_in_sync()?;
        Ok(())
    }

    /// Rewrites the base objects with `edit` applied to the manifests text.
    pub fn edit_base(&self, edit: impl Fn(String) -> String) -> Result<()> {
        let text = edit(self.topo.manifests());
        match &self.source {
            Source::Files => self.agent().apply("base.yaml", &text)?,
            Source::Api(api) => {
                api.apply_manifests(&text)?;
            }
        }
        self.wait_in_sync()?;
        Ok(())
    }

    /// Waits until every agent's kernel holds the latest state, and
    /// returns their statuses.
    pub fn wait_in_sync(&self) -> Result<Vec<Value>> {
        if let Source::Api(api) = &self.source {
            api.wait_delivered(WATCHED_KINDS * self.agents.len())?;
        }
        self.agents.iter().map(|a| a.borrow().wait_in_sync()).collect()
    }

    /// A pod's IPv4 address.
    pub fn ip(&self, pod: &str) -> IpAddr {
        self.topo.pod(pod).ip(false)
    }

    /// Kills the agents (SIGKILL: as a crash would).
    pub fn kill(&self) {
        for a in &self.agents {
            a.borrow_mut().kill();
        }
    }

    /// Starts the agents again with `args`, on the same pinned state.
    pub fn spawn(&self, args: &[&str]) -> Result<()> {
        for (i, a) in self.agents.iter().enumerate() {
            let node = self.nodes.as_ref().map_or(NODE, |n| n.nodes[i].name.as_str());
            a.borrow_mut().spawn(node, args)?;
        }
        Ok(())
    }

    /// Kills and restarts the agents with `args`, and waits until in sync.
    pub fn restart(&self, args: &[&str]) -> Result<()> {
        self.kill();
        self.spawn(args)?;
        self.wait_in_sync()?;
        Ok(())
    }
}

/// (namespace, name) of every NetworkPolicy in a manifest text.
fn policy_keys(text: &str) -> Result<Vec<(String, String)>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| anyhow::anyhow!("invalid YAML: {e}"))?;
    Ok(docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .map(|d| {
            let meta = &d["metadata"];
            let ns = meta["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default");
            (ns.to_string(), meta["name"].as_str().unwrap_or_default().to_string())
        })
        .collect())
}

fn delete_all<K: k8s_openapi::Resource>(api: &FakeApi, which: impl Fn(&(String, String)) -> bool) {
    for key in api.names::<K>().iter().filter(|k| which(k)) {
        api.delete::<K>(Some(&key.0), &key.1);
    }
}
