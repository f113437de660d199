//! Replays flows against a cluster state with palisade's own compiler and
//! the kernel's decision function (`policy::compile` + `policy::lookup`),
//! node by node as the agents would: a flow is judged on its local pod's
//! node, in its direction.

use super::workloads::Info;
use crate::flows::{FlowKey, Remote};
use crate::policy::model::{Pod, Protocol, Workload};
use crate::policy::{self, Compiled, Direction, Input, Node};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;

/// What a cluster state does to a recorded flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed between every pod of the workload and every peer address.
    Allowed,
    Denied,
    /// Allowed for some pods or peer addresses, not all.
    Partly,
    /// Cannot be judged (the workload no longer runs, ICMP...).
    Unknown(String),
}

pub struct Verifier<'a> {
    input: &'a Input,
    index: &'a BTreeMap<(String, Workload), Info>,
    /// Compiled per node name, on first use.
    compiled: BTreeMap<String, OnceLock<Compiled>>,
    /// Node addresses: traffic from them to a node's pods passes, as it
    /// does on agents run without --deny-host.
    host_ips: Vec<IpAddr>,
}

impl<'a> Verifier<'a> {
    pub fn new(input: &'a Input, index: &'a BTreeMap<(String, Workload), Info>, host_ips: Vec<IpAddr>) -> Verifier<'a> {
        let compiled = input.pods.values().map(|p| (node_of(p), OnceLock::new())).collect();
        Verifier { input, index, compiled, host_ips }
    }

    fn compiled(&self, node: &str) -> &Compiled {
        self.compiled[node].get_or_init(|| {
            let n = Node { name: node.to_string(), host_ips: self.host_ips.clone(), allow_host: true, audit: false };
            policy::compile(self.input, &n)
        })
    }

    /// Whether `pod`'s hook lets a new flow with `remote` through.
    pub fn decide(&self, pod: &Pod, dir: Direction, remote: IpAddr, protocol: Protocol, port: u16) -> Option<bool> {
        let c = self.compiled(&node_of(pod));
        let ep = c.endpoints.iter().find(|e| e.namespace == pod.namespace && e.name == pod.name)?;
        let v = policy::lookup::decide(c, &ep.kernel(), dir, remote, protocol.number(), port);
        Some(v.allowed)
    }

    /// What this state does to the flow `key`, judged where it was seen.
    pub fn flow(&self, key: &FlowKey) -> Outcome {
        let (Some(protocol), Some(port)) = (key.policy_protocol(), key.port) else {
            return Outcome::Unknown(format!("{} cannot be allowed by port", key.protocol));
        };
        let Some(me) = self.index.get(&(key.namespace.clone(), key.workload.clone())) else {
            return Outcome::Unknown("the workload no longer runs".into());
        };
        let remotes: Vec<IpAddr> = match &key.peer {
            Remote::Pod { namespace, workload } => match self.index.get(&(namespace.clone(), workload.clone())) {
                Some(p) => p.pods.iter().flat_map(|p| p.ips.iter().copied()).collect(),
                None => return Outcome::Unknown("the peer workload no longer runs".into()),
            },
            Remote::Node { ip } | Remote::External { ip } => vec![*ip],
        };
        let (mut yes, mut no) = (0, 0);
        for pod in &me.pods {
            for &r in remotes.iter().filter(|r| pod.ips.iter().any(|i| i.is_ipv4() == r.is_ipv4())) {
                match self.decide(pod, key.direction, r, protocol, port) {
                    Some(true) => yes += 1,
                    Some(false) => no += 1,
                    None => {}
                }
            }
        }
        match (yes, no) {
            (0, 0) => Outcome::Unknown("no pod address to judge".into()),
            (_, 0) => Outcome::Allowed,
            (0, _) => Outcome::Denied,
            _ => Outcome::Partly,
        }
    }

    /// Whether `a` can open a flow to `b` on (protocol, port): `a`'s egress
    /// on its node and `b`'s ingress on its node.
    pub fn reaches(&self, a: &Pod, b: &Pod, protocol: Protocol, port: u16) -> bool {
        let pair = a.ips.iter().find_map(|x| b.ips.iter().find(|y| y.is_ipv4() == x.is_ipv4()).map(|y| (*x, *y)));
        let Some((ia, ib)) = pair else { return false };
        self.decide(a, Direction::Egress, ib, protocol, port).unwrap_or(true)
            && self.decide(b, Direction::Ingress, ia, protocol, port).unwrap_or(true)
    }
}

fn node_of(p: &Pod) -> String {
    p.node_name.clone().unwrap_or_default()
}

/// Pod pairs (a to b, a != b, either in `namespaces`) that can reach each
/// other on at least one of `ports`; None when there are too many pods to
/// enumerate.
pub fn reachable_pairs(
    v: &Verifier,
    pods: &[&Pod],
    in_scope: impl Fn(&Pod) -> bool,
    ports: &[(Protocol, u16)],
) -> Option<(usize, usize)> {
    const MAX_PODS: usize = 500;
    if pods.len() > MAX_PODS {
        return None;
    }
    let (mut reachable, mut total) = (0, 0);
    for a in pods {
        for b in pods {
            if std::ptr::eq(*a, *b) || !(in_scope(a) || in_scope(b)) {
                continue;
            }
            total += 1;
            if ports.iter().any(|&(proto, port)| v.reaches(a, b, proto, port)) {
                reachable += 1;
            }
        }
    }
    Some((reachable, total))
}
