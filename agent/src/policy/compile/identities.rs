//! Identities. A *local identity* stands for pods with the same namespace,
//! pod labels and named ports (pods of one namespace share its labels):
//! policy entries are keyed by it. A *peer identity* is what an address is
//! judged as: pod addresses by (local identity, cell), this node's
//! addresses by cell, other nodes' addresses by (node, cell) when a
//! ClusterNetworkPolicy has a `nodes` peer (else as any other address), any
//! other address by its cell.
//!
//! Numbers derive from what an identity stands for (see [`ids`]), except
//! that a local identity keeps the number its pods had (the hints): a pod
//! whose labels change keeps its number, so its address entries and the
//! entries naming it as a peer stay. The same input and hints always give the same
//! numbers, whether built whole or updated where pods changed.

use super::cells::Cells;
use super::ids;
use crate::policy::compiled::{Catalog, IdentityInfo, IpPrefix};
use crate::policy::model::{Input, Labels, NamedPort, Namespace, Node, NodeObject, Pod};
use ipnet::IpNet;
use palisade_common::{IP_SERVICE, IpInfo};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// A pod by (namespace, name).
pub type PodKey = (String, String);

/// A number each local pod had (its local identity, or its policy class):
/// numbers that are kept where they can be (see [`super::Hints`]).
pub type Numbers = BTreeMap<PodKey, u32>;

/// What makes pods alike enough to share a local identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct GroupKey {
    pub namespace: String,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
}

/// Pods that share a local identity.
pub(super) struct Group {
    pub key: GroupKey,
    /// The namespace object (or the implicit one), for its labels and audit.
    pub ns: Arc<Namespace>,
    /// Members, in key order; none: a free slot (not local, no peers).
    pub members: Vec<Arc<Pod>>,
    /// Whether a member runs on this node (its entries are compiled).
    pub local: bool,
    pub id: u32,
    /// The peer identities of its addresses (one per cell).
    pub peers: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum PeerKind {
    /// Index into [`Identities::groups`].
    Pod(usize),
    Host,
    /// Index into [`Identities::nodes`]: a Node object's address (only
    /// when ClusterNetworkPolicy `nodes` peers need them).
    Node(usize),
    Cidr,
}

pub(super) struct PeerIdentity {
    pub id: u32,
    pub kind: PeerKind,
    pub cell: IpNet,
}

/// Every identity of a cluster state, numbered. Built whole from the pods,
/// namespaces, cells and node (tens of milliseconds at 10k pods), then
/// updated where pods or namespaces changed ([`Identities::update`]).
pub(super) struct Identities {
    /// Slots, stable while a group lives (indexes are kept elsewhere);
    /// a slot without members is free.
    pub groups: Vec<Group>,
    /// The slot of each group, in key order.
    index: BTreeMap<GroupKey, usize>,
    /// The slot of each group by number.
    group_by_id: HashMap<u32, usize>,
    /// Free slots.
    free: Vec<usize>,
    /// The peer identities by number.
    pub peers: BTreeMap<u32, PeerIdentity>,
    /// The Node objects whose addresses have identities of their own (by
    /// name; empty unless a ClusterNetworkPolicy has a `nodes` peer).
    pub nodes: Vec<Arc<NodeObject>>,
    /// Local groups (indexes) by namespace.
    pub local_by_ns: BTreeMap<String, Vec<usize>>,
    /// Who owns each pod and node address (a peer number): the first pod
    /// to claim it, else the node.
    addr_owner: BTreeMap<IpAddr, u32>,
    /// How many times pods claim each pod address.
    pod_claims: HashMap<IpAddr, u32>,
    /// This node's addresses and those of Node objects with identities.
    node_addrs: HashSet<IpAddr>,
    /// Whether every number is the one its identity claims or derives
    /// (none was probed past a collision): then a number taken or freed
    /// moves no other, and an update can stay local.
    clean: bool,
    /// Address conflicts.
    pub warnings: Vec<String>,
    /// The namespaces selectors may match, with their numbers.
    pub namespaces: Namespaces,
}

/// Every namespace a selector may match: those with an object, and those
/// of pods without one (implicitly labelled, as groups see them). A rule
/// admitting every pod of some namespaces has its entries keyed by their
/// numbers ([`palisade_common::DIR_BY_NAMESPACE`]), and a pod's address
/// carries its namespace's number; a number two of them share is not
/// used (their rules name the pods' identities instead), so an entry
/// never admits a namespace it does not name.
#[derive(Default, PartialEq)]
pub(super) struct Namespaces {
    pub all: BTreeMap<String, Arc<Namespace>>,
    /// Numbers more than one namespace has.
    shared: HashSet<u32>,
}

impl Namespaces {
    fn new(input: &Input, groups: &[Group]) -> Namespaces {
        let mut all: BTreeMap<String, Arc<Namespace>> =
            input.namespaces.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for g in groups.iter().filter(|g| !g.members.is_empty()) {
            if !all.contains_key(&g.key.namespace) {
                all.insert(g.key.namespace.clone(), g.ns.clone());
            }
        }
        let mut seen = HashSet::with_capacity(all.len());
        let shared = all.keys().map(|n| namespace_number(n)).filter(|n| !seen.insert(*n)).collect();
        Namespaces { all, shared }
    }

    /// The number a namespace's entries are keyed by, unless another's
    /// collides with it (or it is unknown: then one it does not see might).
    pub fn number(&self, name: &str) -> Option<u32> {
        let n = namespace_number(name);
        (self.all.contains_key(name) && !self.shared.contains(&n)).then_some(n)
    }
}

/// A namespace's number: from its name alone, so a pod's address entry
/// never changes with other namespaces (whether it is used is
/// [`Namespaces::number`]'s call).
fn namespace_number(name: &str) -> u32 {
    ids::fold(ids::hash_parts(&[b"namespace", name.as_bytes()]))
}

/// A group as the selectors resolved against identities see it, before
/// or after an update.
pub(super) struct Seen {
    pub namespace: String,
    pub ns: Arc<Namespace>,
    pub labels: Labels,
    /// Its peer identities, with their cells.
    pub peers: Vec<(u32, IpNet)>,
}

/// What an [`Identities::update`] changed.
#[derive(Default)]
pub(super) struct Delta {
    /// Groups as they were, and as they are (a group that did not change
    /// is in neither).
    pub before: Vec<Seen>,
    pub after: Vec<Seen>,
    /// Whether a group's members, number or peers changed (not only its
    /// namespace's labels).
    pub groups: bool,
    /// Namespaces with a local group that changed, was added or left.
    pub local_namespaces: BTreeSet<String>,
    /// The entries of the address map that changed.
    pub ips: Vec<IpPrefix>,
    /// Whether the namespaces selectors may match changed.
    pub namespaces: bool,
}

/// A [`GroupKey`], borrowed from a pod.
type Alike<'a> = (&'a str, &'a Labels, &'a [NamedPort]);

fn content_hash(key: &GroupKey) -> u64 {
    use std::fmt::Write;
    let mut s = format!("pod\0{}\0", key.namespace);
    for (k, v) in &key.labels {
        let _ = write!(s, "{k}={v};");
    }
    s.push('\0');
    for p in &key.ports {
        let _ = write!(s, "{}/{}/{};", p.name, p.port, p.protocol);
    }
    ids::hash_parts(&[s.as_bytes()])
}

impl Identities {
    /// Groups pods into local identities, derives the peer identities and
    /// numbers them all (so no two collide).
    /// `node_peers`: give Node objects' addresses identities of their own.
    pub fn new(input: &Input, node: &Node, cells: &Cells, hints: &Numbers, node_peers: bool) -> Identities {
        let is_local = |pod: &Pod| pod.node_name.as_deref().is_none_or(|n| n == node.name);
        let mut by_key: BTreeMap<Alike, Vec<&Arc<Pod>>> = BTreeMap::new();
        for pod in input.pods.values().filter(|p| takes_part(p)) {
            by_key.entry((pod.namespace.as_str(), &pod.labels, pod.ports.as_slice())).or_default().push(pod);
        }
        let mut namespaces: HashMap<&str, Arc<Namespace>> = HashMap::new();
        let mut groups: Vec<Group> = Vec::with_capacity(by_key.len());
        for ((namespace, labels, ports), members) in by_key {
            let ns = namespaces
                .entry(namespace)
                .or_insert_with(|| {
                    input.namespaces.get(namespace).cloned().unwrap_or_else(|| Namespace::implicit(namespace).into())
                })
                .clone();
            groups.push(Group {
                key: GroupKey { namespace: namespace.to_string(), labels: labels.clone(), ports: ports.to_vec() },
                ns,
                local: members.iter().any(|p| is_local(p)),
                members: members.into_iter().cloned().collect(),
                id: 0,
                peers: Vec::new(),
            });
        }

        // Numbers. First, local identities keep what their pods had: each
        // claims the number most of its members had (the smaller on a
        // tie); of groups claiming one number, the one with most such
        // members gets it (the first in key order on a tie).
        let mut used: HashSet<u32> = HashSet::with_capacity(groups.len() * 3 + cells.all.len());
        let mut claims: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for (gi, g) in groups.iter().enumerate().filter(|(_, g)| g.local) {
            if let Some((n, count)) = claim(&g.members, hints) {
                let better = claims.get(&n).is_none_or(|&(c, _)| count > c);
                if better {
                    claims.insert(n, (count, gi));
                }
            }
        }
        for (&n, &(_, gi)) in &claims {
            groups[gi].id = n;
            used.insert(n);
        }
        // Then every other identity from its content, probing in key order.
        let mut clean = true;
        let mut take = |hash: u64| {
            let mut id = ids::fold(hash);
            while !used.insert(id) {
                clean = false;
                id = id.checked_add(1).unwrap_or(ids::FIRST_DYNAMIC);
            }
            id
        };
        for g in groups.iter_mut().filter(|g| g.id == 0) {
            g.id = take(content_hash(&g.key));
        }

        // Peer identities: pod addresses by (group, cell), numbered from
        // the group's number, so they follow it.
        let mut warnings = Vec::new();
        let mut peer_keys: BTreeMap<(PeerKind, IpNet), ()> = BTreeMap::new();
        let mut owner_key: BTreeMap<IpAddr, (PeerKind, IpNet)> = BTreeMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for pod in &g.members {
                for ip in &pod.ips {
                    let key = (PeerKind::Pod(gi), cells.of(*ip));
                    peer_keys.insert(key, ());
                    if owner_key.contains_key(ip) {
                        warnings.push(format!(
                            "address {ip} of pod {}/{} is also claimed by another pod; the first one keeps it",
                            pod.namespace, pod.name
                        ));
                    } else {
                        owner_key.insert(*ip, key);
                    }
                }
            }
        }
        for ip in &node.host_ips {
            let key = (PeerKind::Host, cells.of(*ip));
            peer_keys.insert(key, ());
            if owner_key.contains_key(ip) {
                warnings.push(format!("node address {ip} is also a pod address; it counts as the pod's"));
            } else {
                owner_key.insert(*ip, key);
            }
        }
        let nodes: Vec<Arc<NodeObject>> = if node_peers { input.nodes.values().cloned().collect() } else { Vec::new() };
        for (ni, n) in nodes.iter().enumerate() {
            for ip in &n.ips {
                // Pod addresses and this node's own come first (a Node
                // object's address that is one stays that).
                if owner_key.contains_key(ip) {
                    continue;
                }
                let key = (PeerKind::Node(ni), cells.of(*ip));
                peer_keys.insert(key, ());
                owner_key.insert(*ip, key);
            }
        }
        for cell in &cells.all {
            peer_keys.insert((PeerKind::Cidr, *cell), ());
        }
        let mut peers = BTreeMap::new();
        let mut peer_index: HashMap<(PeerKind, IpNet), u32> = HashMap::with_capacity(peer_keys.len());
        for &(kind, cell) in peer_keys.keys() {
            let hash = match kind {
                PeerKind::Pod(gi) => addr_hash(groups[gi].id, cell),
                PeerKind::Host => ids::hash_parts(&[b"host", &net_bytes(cell)]),
                PeerKind::Node(ni) => ids::hash_parts(&[b"node", nodes[ni].name.as_bytes(), &net_bytes(cell)]),
                PeerKind::Cidr => cidr_hash(cell),
            };
            let id = take(hash);
            if let PeerKind::Pod(gi) = kind {
                groups[gi].peers.push(id);
            }
            peer_index.insert((kind, cell), id);
            peers.insert(id, PeerIdentity { id, kind, cell });
        }
        let addr_owner = owner_key.into_iter().map(|(ip, k)| (ip, peer_index[&k])).collect();
        let mut local_by_ns: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (gi, g) in groups.iter().enumerate().filter(|(_, g)| g.local) {
            local_by_ns.entry(g.key.namespace.clone()).or_default().push(gi);
        }
        let mut pod_claims: HashMap<IpAddr, u32> = HashMap::new();
        for ip in groups.iter().flat_map(|g| &g.members).flat_map(|p| &p.ips) {
            *pod_claims.entry(*ip).or_default() += 1;
        }
        let node_addrs = node.host_ips.iter().chain(nodes.iter().flat_map(|n| &n.ips)).copied().collect();
        let namespaces = Namespaces::new(input, &groups);
        Identities {
            namespaces,
            index: groups.iter().enumerate().map(|(gi, g)| (g.key.clone(), gi)).collect(),
            group_by_id: groups.iter().enumerate().map(|(gi, g)| (g.id, gi)).collect(),
            free: Vec::new(),
            groups,
            peers,
            nodes,
            local_by_ns,
            addr_owner,
            pod_claims,
            node_addrs,
            clean,
            warnings,
        }
    }

    /// Brings the identities from `prev` to `input` (the same node, cells
    /// and Node objects), touching only the groups whose pods changed and
    /// the groups of relabelled namespaces, and the catalog and address
    /// map entries of their addresses. `hints` are the last output's
    /// numbers. The result is what [`Identities::new`] gives for `input`
    /// and `hints`; where that cannot be shown locally (a number would
    /// collide or was probed, an address is contested, a node's or a
    /// Service's), it returns None and changes nothing: build anew. (When
    /// Services changed too, the caller redoes the address map.)
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        prev: &Input,
        input: &Input,
        node: &Node,
        cells: &Cells,
        hints: &Numbers,
        catalog: &mut Catalog,
        ips: &mut BTreeMap<IpPrefix, IpInfo>,
    ) -> Option<Delta> {
        if !self.clean || !self.warnings.is_empty() {
            return None;
        }
        let is_local = |pod: &Pod| pod.node_name.as_deref().is_none_or(|n| n == node.name);
        let pod_changes = super::diff(&prev.pods, &input.pods);
        let ns_changes = super::diff(&prev.namespaces, &input.namespaces);

        // The groups whose members change, with their new members.
        let mut gone: HashSet<(&str, &str)> = HashSet::new();
        let mut joining: BTreeMap<GroupKey, Vec<Arc<Pod>>> = BTreeMap::new();
        for &(key, now) in &pod_changes {
            if let Some(old) = prev.pods.get(key).filter(|p| takes_part(p)) {
                joining.entry(key_of(old)).or_default();
                gone.insert((&old.namespace, &old.name));
            }
            if let Some(now) = now.filter(|p| takes_part(p)) {
                joining.entry(key_of(now)).or_default().push(Arc::clone(now));
            }
        }
        struct Next {
            slot: Option<usize>,
            members: Vec<Arc<Pod>>,
            local: bool,
            id: u32,
            cells: BTreeSet<IpNet>,
        }
        let mut next: Vec<(GroupKey, Next)> = Vec::with_capacity(joining.len());
        for (key, mut members) in joining {
            let slot = self.index.get(&key).copied();
            if let Some(s) = slot {
                members.extend(
                    self.groups[s].members.iter().filter(|p| !gone.contains(&(&p.namespace, &p.name))).cloned(),
                );
                members.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            }
            let local = members.iter().any(|p| is_local(p));
            let cells = members.iter().flat_map(|p| &p.ips).map(|ip| cells.of(*ip)).collect();
            next.push((key, Next { slot, members, local, id: 0, cells }));
        }

        // Numbers as `new` gives them: claims first, then from content. A
        // claim another group holds (not one of these), or any number
        // taken, would move numbers elsewhere: build anew.
        let mut freed: HashSet<u32> = HashSet::new();
        for (_, n) in &next {
            if let Some(s) = n.slot {
                freed.insert(self.groups[s].id);
                freed.extend(self.groups[s].peers.iter().copied());
            }
        }
        let mut taken: HashSet<u32> = HashSet::new();
        let mut free = |id: u32| {
            ((!self.group_by_id.contains_key(&id) && !self.peers.contains_key(&id)) || freed.contains(&id))
                && taken.insert(id)
        };
        let mut claims: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for (i, (_, n)) in next.iter().enumerate().filter(|(_, (_, n))| n.local) {
            if let Some((id, count)) = claim(&n.members, hints)
                && claims.get(&id).is_none_or(|&(c, _)| count > c)
            {
                claims.insert(id, (count, i));
            }
        }
        for (&id, &(_, i)) in &claims {
            if !free(id) {
                return None;
            }
            next[i].1.id = id;
        }
        for (key, n) in next.iter_mut().filter(|(_, n)| n.id == 0 && !n.members.is_empty()) {
            n.id = ids::fold(content_hash(key));
            if !free(n.id) {
                return None;
            }
        }
        for (_, n) in &next {
            for cell in &n.cells {
                if !free(ids::fold(addr_hash(n.id, *cell))) {
                    return None;
                }
            }
        }

        // Addresses: each of these groups' must have one pod claiming it
        // before and after, and be no node's nor Service's.
        let mut claims_delta: HashMap<IpAddr, i64> = HashMap::new();
        for (_, n) in &next {
            if let Some(s) = n.slot {
                for ip in self.groups[s].members.iter().flat_map(|p| &p.ips) {
                    *claims_delta.entry(*ip).or_default() -= 1;
                }
            }
            for ip in n.members.iter().flat_map(|p| &p.ips) {
                *claims_delta.entry(*ip).or_default() += 1;
            }
        }
        // Any Service's cluster IP, flagged in the map or not: one a pod
        // also owns is left out of the map with a warning, and its entry
        // comes back only when the address map is redone whole.
        let cluster_ips: HashSet<IpAddr> = (prev.services.values().chain(input.services.values()))
            .flat_map(|s| s.cluster_ips.iter().copied())
            .collect();
        for (ip, d) in &claims_delta {
            let before = i64::from(self.pod_claims.get(ip).copied().unwrap_or(0));
            if before > 1 || before + d > 1 || self.node_addrs.contains(ip) || cluster_ips.contains(ip) {
                return None;
            }
        }

        // Apply: namespaces first (groups that change take the new one).
        let mut delta = Delta { groups: !next.is_empty(), ..Default::default() };
        let changing: HashSet<&GroupKey> = next.iter().map(|(k, _)| k).collect();
        for &(name, now) in &ns_changes {
            let ns = now.cloned().unwrap_or_else(|| Namespace::implicit(name).into());
            let from = GroupKey { namespace: name.clone(), labels: Labels::new(), ports: Vec::new() };
            let slots: Vec<usize> = self
                .index
                .range(from..)
                .take_while(|(k, _)| &k.namespace == name)
                .filter(|(k, _)| !changing.contains(k))
                .map(|(_, &s)| s)
                .collect();
            for s in slots {
                delta.before.push(self.seen(s));
                self.groups[s].ns = ns.clone();
                delta.after.push(self.seen(s));
            }
        }
        // Every old number leaves before a new one comes (a group may take
        // over another's).
        for (key, n) in &next {
            let Some(s) = n.slot else { continue };
            delta.before.push(self.seen(s));
            let g = &mut self.groups[s];
            if g.local {
                delta.local_namespaces.insert(key.namespace.clone());
                if let Some(list) = self.local_by_ns.get_mut(&key.namespace) {
                    list.retain(|&x| x != s);
                    if list.is_empty() {
                        self.local_by_ns.remove(&key.namespace);
                    }
                }
            }
            self.group_by_id.remove(&g.id);
            catalog.identities.remove(&g.id);
            for id in std::mem::take(&mut g.peers) {
                self.peers.remove(&id);
                catalog.identities.remove(&id);
            }
            g.members.clear();
            g.local = false;
            if n.members.is_empty() {
                self.index.remove(key);
                self.free.push(s);
            }
        }
        let mut owned: HashMap<IpAddr, (u32, Arc<Pod>)> = HashMap::new();
        for (key, n) in next {
            if n.members.is_empty() {
                continue;
            }
            let ns = input
                .namespaces
                .get(&key.namespace)
                .cloned()
                .unwrap_or_else(|| Namespace::implicit(&key.namespace).into());
            let s = match n.slot.or_else(|| self.free.pop()) {
                Some(s) => s,
                None => {
                    self.groups.push(Group {
                        key: key.clone(),
                        ns: ns.clone(),
                        members: vec![],
                        local: false,
                        id: 0,
                        peers: vec![],
                    });
                    self.groups.len() - 1
                }
            };
            catalog.identities.insert(n.id, pod_info(&key));
            let mut peers = Vec::with_capacity(n.cells.len());
            for cell in &n.cells {
                let id = ids::fold(addr_hash(n.id, *cell));
                self.peers.insert(id, PeerIdentity { id, kind: PeerKind::Pod(s), cell: *cell });
                catalog.identities.insert(id, IdentityInfo::Address { pod: n.id, cell: *cell });
                peers.push(id);
            }
            for pod in &n.members {
                for ip in &pod.ips {
                    owned.insert(*ip, (ids::fold(addr_hash(n.id, cells.of(*ip))), pod.clone()));
                }
            }
            self.group_by_id.insert(n.id, s);
            self.index.insert(key.clone(), s);
            if n.local {
                delta.local_namespaces.insert(key.namespace.clone());
            }
            self.groups[s] = Group { key, ns, members: n.members, local: n.local, id: n.id, peers };
            if n.local {
                let groups = &self.groups;
                let list = self.local_by_ns.entry(groups[s].key.namespace.clone()).or_default();
                list.push(s);
                list.sort_by(|&a, &b| groups[a].key.cmp(&groups[b].key));
            }
            delta.after.push(self.seen(s));
        }

        // The addresses of the groups that changed: owned by the one pod
        // that claims each, if any.
        for (ip, d) in claims_delta {
            let count = i64::from(self.pod_claims.get(&ip).copied().unwrap_or(0)) + d;
            if count > 0 {
                self.pod_claims.insert(ip, count as u32);
            } else {
                self.pod_claims.remove(&ip);
            }
            let prefix = IpPrefix::from_net(IpNet::from(ip));
            let had = ips.get(&prefix).copied();
            match owned.remove(&ip) {
                Some((id, pod)) => {
                    self.addr_owner.insert(ip, id);
                    catalog.pods_by_ip.insert(ip, pod);
                    ips.insert(prefix, IpInfo { identity: id, flags: 0, ifindex: 0, namespace: self.namespace_of(id) });
                }
                None => {
                    self.addr_owner.remove(&ip);
                    catalog.pods_by_ip.remove(&ip);
                    // A cell as long as an address is the address's again.
                    let net = IpNet::from(ip);
                    if cells.all.contains(&net) {
                        let identity = ids::fold(cidr_hash(net));
                        ips.insert(prefix, IpInfo { identity, flags: 0, ifindex: 0, namespace: 0 });
                    } else {
                        ips.remove(&prefix);
                    }
                }
            }
            if ips.get(&prefix) != had.as_ref() {
                delta.ips.push(prefix);
            }
        }
        // Namespaces change with their objects, and with the pods of one
        // without an object.
        let implicit = |g: &Seen| !input.namespaces.contains_key(&g.namespace);
        if !ns_changes.is_empty() || delta.before.iter().chain(&delta.after).any(implicit) {
            let namespaces = Namespaces::new(input, &self.groups);
            delta.namespaces = namespaces != self.namespaces;
            self.namespaces = namespaces;
        }
        Some(delta)
    }

    /// Every pod peer identity by the namespace number its addresses
    /// carry ([`Identities::namespace_of`]).
    pub fn peers_by_namespace(&self) -> HashMap<u32, Vec<u32>> {
        let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
        for g in self.groups.iter().filter(|g| !g.members.is_empty()) {
            out.entry(namespace_number(&g.key.namespace)).or_default().extend(&g.peers);
        }
        out
    }

    /// The namespace number a peer's address carries: its pod's
    /// namespace's (0: not a pod's).
    fn namespace_of(&self, peer: u32) -> u32 {
        match self.peers.get(&peer).map(|p| p.kind) {
            Some(PeerKind::Pod(gi)) => namespace_number(&self.groups[gi].key.namespace),
            _ => 0,
        }
    }

    /// Whether no number was probed past a collision (see `clean`).
    pub fn clean(&self) -> bool {
        self.clean
    }

    /// Group `s` as selectors see it.
    fn seen(&self, s: usize) -> Seen {
        let g = &self.groups[s];
        Seen {
            namespace: g.key.namespace.clone(),
            ns: g.ns.clone(),
            labels: g.key.labels.clone(),
            peers: g.peers.iter().map(|id| (*id, self.peers[id].cell)).collect(),
        }
    }

    /// What each number stands for, and who owns each address.
    pub fn catalog(&self, node: &Node, catalog: &mut Catalog) {
        catalog.identities.clear();
        catalog.pods_by_ip.clear();
        for g in self.groups.iter().filter(|g| !g.members.is_empty()) {
            catalog.identities.insert(g.id, pod_info(&g.key));
        }
        for p in self.peers.values() {
            let info = match p.kind {
                PeerKind::Pod(gi) => IdentityInfo::Address { pod: self.groups[gi].id, cell: p.cell },
                PeerKind::Host => IdentityInfo::Host { cell: p.cell },
                PeerKind::Node(ni) => IdentityInfo::Node { name: self.nodes[ni].name.clone(), cell: p.cell },
                PeerKind::Cidr => IdentityInfo::Cidr { cell: p.cell },
            };
            catalog.identities.insert(p.id, info);
        }
        for (ip, pi) in &self.addr_owner {
            if let PeerKind::Pod(gi) = self.peers[pi].kind
                && let Some(pod) = self.groups[gi].members.iter().find(|p| p.ips.contains(ip))
            {
                catalog.pods_by_ip.insert(*ip, pod.clone());
            }
        }
        catalog.host_ips = node.host_ips.iter().copied().collect();
    }

    /// The address map: every cell, then every pod and node address (a
    /// full-length prefix is always the longest match), then Service
    /// cluster IPs. Conflicting cluster IPs become warnings.
    pub fn address_entries(
        &self,
        input: &Input,
        cells: &Cells,
        catalog: &mut Catalog,
        warnings: &mut Vec<String>,
    ) -> BTreeMap<IpPrefix, IpInfo> {
        let mut out = BTreeMap::new();
        for p in self.peers.values() {
            if p.kind == PeerKind::Cidr {
                out.insert(IpPrefix::from_net(p.cell), IpInfo { identity: p.id, flags: 0, ifindex: 0, namespace: 0 });
            }
        }
        for (ip, &pi) in &self.addr_owner {
            let info = IpInfo { identity: pi, flags: 0, ifindex: 0, namespace: self.namespace_of(pi) };
            out.insert(IpPrefix::from_net(IpNet::from(*ip)), info);
        }
        // Service cluster IPs keep the identity of the cell they are in (no
        // policy selects a virtual IP) and are flagged, so a pod's egress to
        // one is judged after kube-proxy has picked the backend.
        catalog.services_by_ip.clear();
        let cidr_ids: HashMap<IpNet, u32> =
            self.peers.values().filter(|p| p.kind == PeerKind::Cidr).map(|p| (p.cell, p.id)).collect();
        for svc in input.services.values() {
            for ip in &svc.cluster_ips {
                if self.addr_owner.contains_key(ip) {
                    warnings.push(format!(
                        "cluster IP {ip} of service {}/{} is also a pod or node address",
                        svc.namespace, svc.name
                    ));
                    continue;
                }
                let identity = cidr_ids[&cells.of(*ip)];
                let info = IpInfo { identity, flags: IP_SERVICE, ifindex: 0, namespace: 0 };
                out.insert(IpPrefix::from_net(IpNet::from(*ip)), info);
                catalog.services_by_ip.insert(*ip, (svc.namespace.clone(), svc.name.clone()));
            }
        }
        out
    }

    /// The local endpoints, as (group index, pod): pods on this node (or on
    /// no node yet), by group then pod.
    pub fn local<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = (usize, &'a Arc<Pod>)> + 'a {
        let is_local = |pod: &Pod| pod.node_name.as_deref().is_none_or(|n| n == node.name);
        self.local_by_ns
            .values()
            .flatten()
            .flat_map(move |&gi| self.groups[gi].members.iter().filter(move |p| is_local(p)).map(move |p| (gi, p)))
    }
}

/// The number most of `members` had (the smaller on a tie), and how many
/// had it.
pub(super) fn claim(members: &[Arc<Pod>], hints: &Numbers) -> Option<(u32, usize)> {
    let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
    for p in members {
        if let Some(&n) = hints.get(&(p.namespace.clone(), p.name.clone())).filter(|&&n| n >= ids::FIRST_DYNAMIC) {
            *votes.entry(n).or_default() += 1;
        }
    }
    // max_by_key keeps the last maximum: iterate numbers downwards so a tie
    // goes to the smaller number.
    votes.iter().rev().max_by_key(|(_, c)| **c).map(|(&n, &c)| (n, c))
}

/// The number a pod address in `cell` of local identity `group` derives from.
fn addr_hash(group: u32, cell: IpNet) -> u64 {
    ids::hash_parts(&[b"addr", &group.to_be_bytes(), &net_bytes(cell)])
}

/// The number a cell's identity derives from.
fn cidr_hash(cell: IpNet) -> u64 {
    ids::hash_parts(&[b"cidr", &net_bytes(cell)])
}

fn key_of(pod: &Pod) -> GroupKey {
    GroupKey { namespace: pod.namespace.clone(), labels: pod.labels.clone(), ports: pod.ports.clone() }
}

fn pod_info(key: &GroupKey) -> IdentityInfo {
    IdentityInfo::Pod { namespace: key.namespace.clone(), labels: key.labels.clone() }
}

/// Whether a pod has a local identity: running (not terminated), with
/// addresses, in the pod network (host-network pods are node addresses).
fn takes_part(pod: &Pod) -> bool {
    !pod.terminated && !pod.host_network && !pod.ips.is_empty()
}

/// An address block as bytes, for hashing.
fn net_bytes(net: IpNet) -> Vec<u8> {
    let mut v = match net.addr() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.push(net.prefix_len());
    v
}
