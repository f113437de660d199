//! Whether traffic passes, as the kernel would decide it: `policy::lookup`
//! over the entries compiled for each pod's own node. Lint asks questions
//! such as "may this pod send to any address on UDP 53?"; "any address" is
//! a set of representatives, one per way an address can be judged: every
//! pod address, and for every ipBlock CIDR and except (and each family's
//! whole space) one address that falls in it and in nothing more specific.

use crate::policy::model::Protocol;
use crate::policy::{Compiled, Direction, Input, Node, Pod, compile, lookup, model::Peer};
use ipnet::IpNet;
use palisade_common::{EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, Endpoint};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

pub struct Reach {
    /// Compiled entries by node name (pods without one: "").
    compiled: BTreeMap<String, Compiled>,
    /// Representative remote addresses (see the module doc).
    candidates: Vec<IpAddr>,
}

fn node_key(pod: &Pod) -> String {
    pod.node_name.clone().unwrap_or_default()
}

impl Reach {
    pub fn new(input: &Input) -> Reach {
        let nodes: BTreeSet<String> = input.pods.values().map(|p| node_key(p)).collect();
        let compiled = nodes
            .into_iter()
            .map(|name| {
                let node = Node { name: name.clone(), host_ips: vec![], allow_host: true, audit: false };
                let c = compile(input, &node);
                (name, c)
            })
            .collect();
        Reach { compiled, candidates: candidates(input) }
    }

    /// The pod's compiled entries and kernel endpoint entry (None: not
    /// enforced, such as a host-network pod).
    fn endpoint(&self, pod: &Pod) -> Option<(&Compiled, Endpoint)> {
        let c = self.compiled.get(&node_key(pod))?;
        let ep = c.endpoints.iter().find(|e| e.namespace == pod.namespace && e.name == pod.name)?;
        Some((c, ep.kernel()))
    }

    pub fn isolated(&self, pod: &Pod, dir: Direction) -> bool {
        let bit = match dir {
            Direction::Ingress => EP_INGRESS_ISOLATED,
            Direction::Egress => EP_EGRESS_ISOLATED,
        };
        self.endpoint(pod).is_some_and(|(_, ep)| ep.flags & bit != 0)
    }

    /// Whether `pod` lets a first packet with `remote` pass in `dir` (the
    /// remote end's own policy aside). A pod palisade does not enforce
    /// lets everything pass.
    pub fn allows(&self, pod: &Pod, dir: Direction, remote: IpAddr, protocol: Protocol, port: u16) -> bool {
        match self.endpoint(pod) {
            None => true,
            Some((c, ep)) => {
                let v = lookup::decide(c, &ep, dir, remote, protocol.number(), port);
                v.allowed && !v.deferred
            }
        }
    }

    /// The first of `remotes` that `pod` lets pass in `dir`; remotes judged
    /// as the same peer are asked once.
    pub fn first_allowed(
        &self,
        pod: &Pod,
        dir: Direction,
        remotes: impl IntoIterator<Item = IpAddr>,
        protocol: Protocol,
        port: u16,
    ) -> Option<IpAddr> {
        let mut seen = HashSet::new();
        let ep = self.endpoint(pod);
        remotes.into_iter().find(|&remote| {
            if let Some((c, _)) = ep {
                let peer = lookup::peer_identity(c, remote);
                if peer != 0 && !seen.insert((remote.is_ipv4(), peer)) {
                    return false;
                }
            }
            self.allows(pod, dir, remote, protocol, port)
        })
    }

    /// Representative remote addresses of the family of `of`.
    pub fn candidates(&self, v4: bool) -> impl Iterator<Item = IpAddr> + '_ {
        self.candidates.iter().copied().filter(move |a| a.is_ipv4() == v4)
    }
}

/// Every pod address, and one address per ipBlock cell (see the module doc).
fn candidates(input: &Input) -> Vec<IpAddr> {
    let mut nets: BTreeSet<IpNet> = ["0.0.0.0/0", "::/0"].iter().filter_map(|s| s.parse().ok()).collect();
    for p in input.policies.values() {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in &rule.peers {
                if let Peer::IpBlock { cidr, except } = peer {
                    nets.insert(*cidr);
                    nets.extend(except.iter().copied());
                }
            }
        }
    }
    let pods: Vec<IpAddr> = super::pod_network(input).flat_map(|p| p.ips.iter().copied()).collect();
    let services = input.services.values().flat_map(|s| s.cluster_ips.iter().copied());
    let hosts: Vec<IpNet> = pods.iter().copied().chain(services).map(IpNet::from).collect();
    let mut out: BTreeSet<IpAddr> = pods.iter().copied().collect();
    for net in &nets {
        let inner: Vec<IpNet> =
            nets.iter().chain(hosts.iter()).filter(|s| *s != net && net.contains(*s)).copied().collect();
        out.extend(free_address(*net, &inner));
    }
    out.into_iter().collect()
}

/// An address of `net` in none of `inner` (nets inside it), if any.
fn free_address(net: IpNet, inner: &[IpNet]) -> Option<IpAddr> {
    let overlapping: Vec<IpNet> = inner.iter().filter(|s| net.contains(*s) || s.contains(&net)).copied().collect();
    if overlapping.iter().any(|s| s.contains(&net)) {
        return None;
    }
    if overlapping.is_empty() {
        return Some(net.network());
    }
    net.subnets(net.prefix_len() + 1).ok()?.find_map(|half| free_address(half, &overlapping))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_address_avoids_what_is_more_specific() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(free_address(n("10.0.0.0/8"), &[]), Some("10.0.0.0".parse().unwrap()));
        let a = free_address(n("10.0.0.0/8"), &[n("10.0.0.0/9"), n("10.128.0.0/32")]).unwrap();
        assert_eq!(a, "10.128.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(free_address(n("10.0.0.0/8"), &[n("10.0.0.0/9"), n("10.128.0.0/9")]), None);
    }
}
