//! Policy classes. Policy entries are keyed by a local pod's *class*, not
//! its identity: local identities that the same NetworkPolicies and the
//! same ClusterNetworkPolicies select (and, where one of those names an
//! ingress port, that declare the same named ports) get the same entries,
//! so they share them. A pod of a new identity (its labels new, its
//! policies those of a pod already here) then brings no entry: its class
//! has them. The kernel's endpoint map holds each local pod's class;
//! identities stay what addresses are judged as.
//!
//! A class's number derives from what it stands for (see [`ids`]), not
//! from its members, so pods joining or leaving a class move nothing;
//! except that, as local identities do, a class keeps the number its pods
//! had (the hints): when a relabel changes which policies select the pods
//! of a class, the new class takes the old one's number, and only the
//! entries whose selection changed move.

use super::identities::{Identities, Numbers, claim};
use super::ids;
use super::tiers;
use crate::policy::model::{ClusterPort, Input, NamedPort, Node, Pod, PortMatch};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

/// The class of every local identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Classes {
    /// Group index -> class number (local groups only).
    pub of_group: HashMap<usize, u32>,
    /// Class number -> the member entries are expanded for (the first
    /// group in key order): its ports are every member's where they count.
    pub lead: BTreeMap<u32, usize>,
    /// Classes whose named ports count (a policy that selects them names
    /// an ingress port).
    pub named: HashSet<u32>,
}

impl Classes {
    /// Classifies every local identity of `ids`, numbering the classes
    /// as `hints` say where they can. The same input, identities and
    /// hints always give the same classes.
    pub fn new(input: &Input, ids: &Identities, node: &Node, hints: &Numbers) -> Classes {
        let mut keys: HashMap<usize, (String, bool)> = HashMap::new();
        let mut by_key: BTreeMap<&str, (Vec<usize>, bool)> = BTreeMap::new();
        for &gi in ids.local_by_ns.values().flatten() {
            keys.insert(gi, key(input, ids, gi));
        }
        for (&gi, (k, named)) in &keys {
            let e = by_key.entry(k.as_str()).or_default();
            e.0.push(gi);
            e.1 = *named;
        }

        // Numbers. First, each class claims the number most of its local
        // pods had (the smaller on a tie); of classes claiming one number,
        // the one with most such pods gets it (the first in key order on
        // a tie), as local identities do.
        let mut pods: BTreeMap<&str, Vec<Arc<Pod>>> = BTreeMap::new();
        for (gi, pod) in ids.local(node) {
            pods.entry(keys[&gi].0.as_str()).or_default().push(pod.clone());
        }
        let mut claims: BTreeMap<u32, (usize, &str)> = BTreeMap::new();
        for (&k, members) in &pods {
            if let Some((n, count)) = claim(members, hints)
                && claims.get(&n).is_none_or(|&(c, _)| count > c)
            {
                claims.insert(n, (count, k));
            }
        }
        let mut number: BTreeMap<&str, u32> = claims.iter().map(|(&n, &(_, k))| (k, n)).collect();
        // Then every other class from what it stands for, probing in key
        // order.
        let mut used: HashSet<u32> = number.values().copied().collect();
        for &k in by_key.keys() {
            if !number.contains_key(k) {
                let mut n = ids::fold(ids::fnv1a(k.as_bytes()));
                while !used.insert(n) {
                    n = n.checked_add(1).unwrap_or(ids::FIRST_DYNAMIC);
                }
                number.insert(k, n);
            }
        }

        let mut out = Classes::default();
        for (k, (members, named)) in &by_key {
            let n = number[k];
            let lead = members.iter().copied().min_by(|&a, &b| ids.groups[a].key.cmp(&ids.groups[b].key));
            out.lead.insert(n, lead.expect("a class has members"));
            out.of_group.extend(members.iter().map(|&gi| (gi, n)));
            if *named {
                out.named.insert(n);
            }
        }
        out
    }

    /// The class of a local group.
    pub fn of(&self, gi: usize) -> u32 {
        self.of_group[&gi]
    }

    /// The named ports a class's entries depend on: its lead's, where
    /// they count, else none.
    pub fn ports(&self, ids: &Identities, class: u32) -> Vec<NamedPort> {
        if self.named.contains(&class) { ids.groups[self.lead[&class]].key.ports.clone() } else { Vec::new() }
    }
}

/// What a local identity's entries depend on: the NetworkPolicies that
/// select it (they are all in its namespace, and named with it), the ClusterNetworkPolicies
/// that select it, and its named ports if one of those names an ingress
/// port (resolved on the local pod); and whether those count.
fn key(input: &Input, ids: &Identities, gi: usize) -> (String, bool) {
    let g = &ids.groups[gi];
    let mut k = String::from("class\0");
    let mut named = false;
    let ns = &g.key.namespace;
    let policies = input.policies.range((ns.clone(), String::new())..).take_while(|((n, _), _)| n == ns);
    for ((_, name), p) in policies {
        if p.pod_selector.matches(&g.key.labels) {
            // A policy is its namespace and name: policies of one name in
            // two namespaces are two policies, with entries of their own.
            let _ = write!(k, "{ns}\0{name}\0");
            named |= p.ingress.iter().flatten().flat_map(|r| &r.ports).any(|p| matches!(p.port, PortMatch::Named(_)));
        }
    }
    k.push('\x01');
    for p in input.cluster_policies.values() {
        if tiers::selects(&p.subject, g) {
            let _ = write!(k, "{}\0", p.name);
            named |= p.ingress.iter().flat_map(|r| &r.ports).any(|p| matches!(p, ClusterPort::Named(_)));
        }
    }
    if named {
        k.push('\x01');
        for p in &g.key.ports {
            let _ = write!(k, "{}/{}/{}\0", p.name, p.protocol.number(), p.port);
        }
    }
    (k, named)
}
