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
//!
//! A class selected by another class's NetworkPolicies and more (a pod
//! with one label more than its peers, that one policy selects) takes
//! that class as its *parent* and holds only the entries of the more: the
//! kernel looks the parent's entries up when its own miss. NetworkPolicies
//! only allow, so the verdict is the union either way; what changes is
//! that a flow both allow is reported by the class's own rule. So a pod
//! of such a class brings the entries of one policy, not of every policy
//! that selects it. Parents are chosen from what the classes stand for
//! alone (the largest such class that has no parent itself, one lookup
//! deep, and has a rule: a default deny's class would only cost lookups),
//! so the same state always gives the same parents; classes a
//! ClusterNetworkPolicy selects take no part (their entries are resolved
//! whole, denies and all), nor does a parent whose named ports resolve
//! differently on the child's pods.
//!
//! Every pod of a namespace is selected by its namespace-wide policies
//! (`podSelector: {}`), so each namespace with local pods has a class of
//! those alone, its *root*, whether or not a pod has exactly those
//! policies (then it is that pod's class; else it has no members): the
//! smallest class of the namespace, it is the parent of every other
//! there (the largest root under the rule above), and a pod of labels no
//! other pod has brings the entries of its own policies, not of every
//! namespace-wide one. A root whose policies have no rule (a default deny
//! alone), or name an ingress port (resolved on each pod), is not made.
//! Every pod scheduled here makes its namespace's root, whether its
//! address is reported yet or its phase is terminal: the root's entries,
//! the bulk of a namespace's first pod, are in the kernel before the
//! pod's address is, and stay until its object goes, after the address
//! is out of force.

use super::identities::{Identities, Numbers, claim};
use super::ids;
use super::tiers;
use crate::policy::model::{ClusterPort, Input, NamedPort, Namespace, Node, Pod, PortMatch};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Class -> its parent, for classes that have one.
    pub parent: BTreeMap<u32, u32>,
    /// Namespace -> its root (the class of its namespace-wide policies),
    /// where there is one.
    pub roots: BTreeMap<String, u32>,
    /// Class -> the names of the NetworkPolicies (of its namespace) that
    /// select it, in order; kept for parents.
    policies: HashMap<u32, Vec<String>>,
}

impl Classes {
    /// Classifies every local identity of `ids`, numbering the classes
    /// as `hints` say where they can; `here`: the pods scheduled to the
    /// node (host-network ones aside), whose namespaces have roots. The
    /// same input, identities and hints always give the same classes.
    pub fn new<'p>(
        input: &Input,
        ids: &Identities,
        node: &Node,
        here: impl Iterator<Item = &'p Arc<Pod>>,
        hints: &Numbers,
    ) -> Classes {
        let mut keys: HashMap<usize, Key> = HashMap::new();
        let mut by_key: BTreeMap<&str, (Vec<usize>, &Key)> = BTreeMap::new();
        for &gi in ids.local_by_ns.values().flatten() {
            keys.insert(gi, key(input, ids, gi));
        }
        for (&gi, k) in &keys {
            by_key.entry(k.text.as_str()).or_insert_with(|| (Vec::new(), k)).0.push(gi);
        }

        // The namespaces' roots: one per namespace with a local pod that
        // no ClusterNetworkPolicy selects (those take no parent), the
        // class of its namespace-wide policies, with or without members;
        // pods here without an address yet, or whose phase is terminal,
        // count: the root is in the kernel before the address comes, and
        // goes when the pod object does.
        let mut rooted: BTreeSet<&str> = (ids.local_by_ns.iter())
            .filter(|(_, groups)| groups.iter().any(|gi| !keys[gi].cluster))
            .map(|(ns, _)| ns.as_str())
            .collect();
        rooted.extend(namespaces_of(input, here).map(|ns| -> &str { ns }));
        let root_keys: Vec<Key> = rooted.into_iter().filter_map(|ns| root_key(input, ns)).collect();
        for k in &root_keys {
            by_key.entry(k.text.as_str()).or_insert_with(|| (Vec::new(), k));
        }

        // Numbers. First, each class claims the number most of its local
        // pods had (the smaller on a tie); of classes claiming one number,
        // the one with most such pods gets it (the first in key order on
        // a tie), as local identities do.
        let mut pods: BTreeMap<&str, Vec<Arc<Pod>>> = BTreeMap::new();
        for (gi, pod) in ids.local(node) {
            pods.entry(keys[&gi].text.as_str()).or_default().push(pod.clone());
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
        for (k, (members, key)) in &by_key {
            let n = number[k];
            // A root without members has no lead: its entries depend on
            // no pod (it names no ingress port).
            let lead = members.iter().copied().min_by(|&a, &b| ids.groups[a].key.cmp(&ids.groups[b].key));
            if let Some(lead) = lead {
                out.lead.insert(n, lead);
            }
            out.of_group.extend(members.iter().map(|&gi| (gi, n)));
            if key.named {
                out.named.insert(n);
            }
        }

        // Parents: smaller classes first, so a parent is settled (and has
        // none) before a larger class looks at it. Only classes no
        // ClusterNetworkPolicy selects, with a NetworkPolicy, take part.
        let mut alone: Vec<(&Key, u32)> = by_key
            .iter()
            .filter(|(_, (_, key))| !key.cluster && !key.policies.is_empty())
            .map(|(k, (_, key))| (*key, number[k]))
            .collect();
        alone.sort_by(|a, b| (a.0.policies.len(), &a.0.text).cmp(&(b.0.policies.len(), &b.0.text)));
        let ports = |class: u32| &ids.groups[out.lead[&class]].key.ports;
        let mut parent = BTreeMap::new();
        let mut roots: Vec<(&Key, u32)> = Vec::new();
        for &(key, n) in &alone {
            // The largest root whose policies are some of this class's
            // (strictly fewer), in its namespace, with a rule among them (a
            // parent without entries would only cost lookups: a namespace's
            // default deny), whose named ports (if they count) resolve
            // alike on this class's pods; the first in key order among the
            // largest.
            let found = roots
                .iter()
                .filter(|(p, pn)| {
                    p.rules
                        && p.namespace == key.namespace
                        && p.policies.len() < key.policies.len()
                        && p.policies.iter().all(|name| key.policies.binary_search(name).is_ok())
                        && (!p.named || ports(*pn) == ports(n))
                })
                .min_by(|a, b| b.0.policies.len().cmp(&a.0.policies.len()).then_with(|| a.0.text.cmp(&b.0.text)));
            match found {
                Some(&(_, pn)) => {
                    parent.insert(n, pn);
                }
                None => roots.push((key, n)),
            }
        }
        out.policies = alone.iter().map(|(key, n)| (*n, key.policies.clone())).collect();
        out.parent = parent;
        out.roots = root_keys.iter().map(|k| (k.namespace.clone(), number[k.text.as_str()])).collect();
        out
    }

    /// Whether a class holds no entries of a NetworkPolicy (of its
    /// namespace) that selects it, because its parent does.
    pub fn inherits(&self, class: u32, policy: &str) -> bool {
        self.parent.get(&class).is_some_and(|p| self.policies[p].binary_search_by(|n| n.as_str().cmp(policy)).is_ok())
    }

    /// A class's parent (0: none), as the kernel's endpoint entry holds it.
    pub fn parent_of(&self, class: u32) -> u32 {
        self.parent.get(&class).copied().unwrap_or(0)
    }

    /// The root of a namespace (see the module docs), if it has one.
    pub fn root(&self, namespace: &str) -> Option<u32> {
        self.roots.get(namespace).copied()
    }

    /// Every class number: those with members, then the memberless roots.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.lead.keys().copied().chain(self.roots.values().copied().filter(|r| !self.lead.contains_key(r)))
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

/// What a local identity's entries depend on, spelled out in `text`.
struct Key {
    text: String,
    /// Its named ports count (a policy that selects it names an ingress
    /// port).
    named: bool,
    namespace: String,
    /// The NetworkPolicies that select it, by name (all are in its
    /// namespace), in order.
    policies: Vec<String>,
    /// A ClusterNetworkPolicy selects it.
    cluster: bool,
    /// One of its NetworkPolicies has a rule (else they give no entries).
    rules: bool,
}

/// The namespaces of `pods` (scheduled here) that no ClusterNetworkPolicy
/// selects, addressed or not, running or done: the kubelet reports a
/// pod's address once its network is up, and a deleted pod's terminal
/// phase before its object goes.
fn namespaces_of<'p>(input: &Input, pods: impl Iterator<Item = &'p Arc<Pod>>) -> impl Iterator<Item = &'p str> {
    let mut namespaces: HashMap<&str, Arc<Namespace>> = HashMap::new();
    pods.filter(move |p| {
        let ns = namespaces.entry(p.namespace.as_str()).or_insert_with(|| {
            input.namespaces.get(&p.namespace).cloned().unwrap_or_else(|| Namespace::implicit(&p.namespace).into())
        });
        !input.cluster_policies.values().any(|c| tiers::selects_labels(&c.subject, &ns.labels, &p.labels))
    })
    .map(|p| p.namespace.as_str())
}

/// The key of a namespace's root: its namespace-wide NetworkPolicies,
/// spelled as [`key`] spells a pod's that only they select (so such a
/// pod's class is the root). None if they have no rule or one names an
/// ingress port.
fn root_key(input: &Input, ns: &str) -> Option<Key> {
    let mut k = String::from("class\0");
    let (mut names, mut rules) = (Vec::new(), false);
    let policies = input.policies.range((ns.to_string(), String::new())..).take_while(|((n, _), _)| n == ns);
    for ((_, name), p) in policies.filter(|(_, p)| p.pod_selector.is_empty()) {
        if p.ingress.iter().flatten().flat_map(|r| &r.ports).any(|p| matches!(p.port, PortMatch::Named(_))) {
            return None;
        }
        let _ = write!(k, "{ns}\0{name}\0");
        rules |= p.ingress.iter().chain(&p.egress).any(|r| !r.is_empty());
        names.push(name.clone());
    }
    k.push('\x01');
    rules.then(|| Key { text: k, named: false, namespace: ns.to_string(), policies: names, cluster: false, rules })
}

/// What a local identity's entries depend on: the NetworkPolicies that
/// select it (they are all in its namespace, and named with it), the
/// ClusterNetworkPolicies that select it, and its named ports if one of
/// those names an ingress port (resolved on the local pod).
fn key(input: &Input, ids: &Identities, gi: usize) -> Key {
    let g = &ids.groups[gi];
    let mut k = String::from("class\0");
    let mut named = false;
    let ns = &g.key.namespace;
    let mut names = Vec::new();
    let mut rules = false;
    let policies = input.policies.range((ns.clone(), String::new())..).take_while(|((n, _), _)| n == ns);
    for ((_, name), p) in policies {
        if p.pod_selector.matches(&g.key.labels) {
            // A policy is its namespace and name: policies of one name in
            // two namespaces are two policies, with entries of their own.
            let _ = write!(k, "{ns}\0{name}\0");
            named |= p.ingress.iter().flatten().flat_map(|r| &r.ports).any(|p| matches!(p.port, PortMatch::Named(_)));
            rules |= p.ingress.iter().chain(&p.egress).any(|r| !r.is_empty());
            names.push(name.clone());
        }
    }
    k.push('\x01');
    let mut cluster = false;
    for p in input.cluster_policies.values() {
        if tiers::selects(&p.subject, g) {
            let _ = write!(k, "{}\0", p.name);
            named |= p.ingress.iter().flat_map(|r| &r.ports).any(|p| matches!(p, ClusterPort::Named(_)));
            cluster = true;
        }
    }
    if named {
        k.push('\x01');
        for p in &g.key.ports {
            let _ = write!(k, "{}/{}/{}\0", p.name, p.protocol.number(), p.port);
        }
    }
    Key { text: k, named, namespace: ns.clone(), policies: names, cluster, rules }
}
