//! The fixture most suites share: the x/y/z topology and an agent watching a
//! directory of manifests, with policies replaced wholesale per step.

use crate::agent::Agent;
use crate::{NODE, Topology};
use anyhow::{Result, ensure};
use std::cell::{Ref, RefCell};
use std::net::IpAddr;

pub struct Cluster {
    pub topo: Topology,
    agent: RefCell<Agent>,
}

impl Cluster {
    /// Pods in network namespaces (`tag` keeps names apart, `subnet` the
    /// addresses) and an agent started with `args`.
    pub fn start(tag: &str, subnet: u8, args: &[&str]) -> Result<Cluster> {
        crate::require_root()?;
        let topo = Topology::xyz(tag, subnet)?;
        let agent = Agent::start(tag, NODE, args)?;
        Ok(Cluster { topo, agent: RefCell::new(agent) })
    }

    pub fn agent(&self) -> Ref<'_, Agent> {
        self.agent.borrow()
    }

    /// Back to the base state: the topology's objects, no policies, no
    /// extra objects (manifests named `policy-*` and `extra-*`).
    pub fn reset(&self) -> Result<()> {
        let agent = self.agent.borrow();
        agent.remove_prefixed("policy-")?;
        agent.remove_prefixed("extra-")?;
        agent.apply("base.yaml", &self.topo.manifests())?;
        agent.wait_in_sync()?;
        Ok(())
    }

    /// Replaces all policies with `policies` and waits until they are in
    /// force; fails if the agent rejects any of them.
    pub fn apply(&self, policies: &[String]) -> Result<()> {
        let agent = self.agent.borrow();
        agent.remove_prefixed("policy-")?;
        for (i, p) in policies.iter().enumerate() {
            agent.apply(&format!("policy-{i}.yaml"), p)?;
        }
        let st = agent.wait_in_sync()?;
        ensure!(st["errors"].as_array().is_none_or(|a| a.is_empty()), "the agent rejected input: {}", st["errors"]);
        Ok(())
    }

    /// Rewrites the base objects with `edit` applied to the manifests text.
    pub fn edit_base(&self, edit: impl Fn(String) -> String) -> Result<()> {
        let agent = self.agent.borrow();
        agent.apply("base.yaml", &edit(self.topo.manifests()))?;
        agent.wait_in_sync()?;
        Ok(())
    }

    /// A pod's IPv4 address.
    pub fn ip(&self, pod: &str) -> IpAddr {
        self.topo.pod(pod).ip(false)
    }

    /// Kills the agent (SIGKILL: as a crash would).
    pub fn kill(&self) {
        self.agent.borrow_mut().kill();
    }

    /// Starts the agent again with `args`, on the same pinned state.
    pub fn spawn(&self, args: &[&str]) -> Result<()> {
        self.agent.borrow_mut().spawn(NODE, args)
    }

    /// Kills and restarts the agent with `args`, and waits until in sync.
    pub fn restart(&self, args: &[&str]) -> Result<()> {
        self.kill();
        self.spawn(args)?;
        self.agent().wait_in_sync()?;
        Ok(())
    }
}
