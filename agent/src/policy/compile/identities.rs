//! Identities. A *local identity* stands for pods with the same namespace,
//! pod labels and named ports (pods of one namespace share its labels):
//! policy entries are keyed by it. A *peer identity* is what an address is
//! judged as: pod addresses by (local identity, cell), this node's
//! addresses by cell, other nodes' addresses by (node, cell) when a
//! ClusterNetworkPolicy has a `nodes` peer (else as any other address), any
//! other address by its cell.
//!
//! Numbers derive from what an identity stands for (see [`ids`]), except
//! that a local identity keeps the number its pods had (the [`Hints`]): a
//! pod whose labels change keeps its number, so only the entries whose
//! selection changed move. The same input and hints always give the same
//! numbers.

use super::cells::Cells;
use super::ids;
use crate::policy::compiled::{Catalog, IdentityInfo, IpPrefix};
use crate::policy::model::{Input, Labels, NamedPort, Namespace, Node, NodeObject, Pod};
use ipnet::IpNet;
use palisade_common::{IP_SERVICE, IpInfo};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// A pod by (namespace, name).
pub type PodKey = (String, String);

/// The local identity each local pod had: numbers local identities keep.
pub type Hints = BTreeMap<PodKey, u32>;

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
    /// Members, in key order.
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
/// namespaces, cells and node (a few milliseconds at 10k pods); what
/// depends on it is recomputed only where its numbers changed.
pub(super) struct Identities {
    /// In key order.
    pub groups: Vec<Group>,
    /// The peer identities, in (kind, cell) order.
    pub peers: Vec<PeerIdentity>,
    /// Index into `peers` by number.
    pub peer_by_id: HashMap<u32, usize>,
    /// The Node objects whose addresses have identities of their own (by
    /// name; empty unless a ClusterNetworkPolicy has a `nodes` peer).
    pub nodes: Vec<Arc<NodeObject>>,
    /// Local groups (indexes) by namespace.
    pub local_by_ns: BTreeMap<String, Vec<usize>>,
    /// Who owns each pod and node address (index into `peers`): the first
    /// pod to claim it, else the node.
    addr_owner: BTreeMap<IpAddr, usize>,
    /// Address conflicts.
    pub warnings: Vec<String>,
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
    pub fn new(input: &Input, node: &Node, cells: &Cells, hints: &Hints, node_peers: bool) -> Identities {
        let is_local = |pod: &Pod| pod.node_name.as_deref().is_none_or(|n| n == node.name);
        // Pods that take part: running (not terminated), with addresses, in
        // the pod network (host-network pods are node addresses).
        let mut by_key: BTreeMap<Alike, Vec<&Arc<Pod>>> = BTreeMap::new();
        for pod in input.pods.values().filter(|p| !p.terminated && !p.host_network && !p.ips.is_empty()) {
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
            let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
            for p in &g.members {
                if let Some(&n) =
                    hints.get(&(p.namespace.clone(), p.name.clone())).filter(|&&n| n >= ids::FIRST_DYNAMIC)
                {
                    *votes.entry(n).or_default() += 1;
                }
            }
            // max_by_key keeps the last maximum: iterate numbers downwards
            // so a tie goes to the smaller number.
            if let Some((&n, &count)) = votes.iter().rev().max_by_key(|(_, c)| **c) {
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
        let mut take = |hash: u64| {
            let mut id = ids::fold(hash);
            while !used.insert(id) {
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
        let mut peers = Vec::with_capacity(peer_keys.len());
        let mut peer_index: HashMap<(PeerKind, IpNet), usize> = HashMap::with_capacity(peer_keys.len());
        for &(kind, cell) in peer_keys.keys() {
            let hash = match kind {
                PeerKind::Pod(gi) => ids::hash_parts(&[b"addr", &groups[gi].id.to_be_bytes(), &net_bytes(cell)]),
                PeerKind::Host => ids::hash_parts(&[b"host", &net_bytes(cell)]),
                PeerKind::Node(ni) => ids::hash_parts(&[b"node", nodes[ni].name.as_bytes(), &net_bytes(cell)]),
                PeerKind::Cidr => ids::hash_parts(&[b"cidr", &net_bytes(cell)]),
            };
            let id = take(hash);
            if let PeerKind::Pod(gi) = kind {
                groups[gi].peers.push(id);
            }
            peer_index.insert((kind, cell), peers.len());
            peers.push(PeerIdentity { id, kind, cell });
        }
        let peer_by_id = peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        let addr_owner = owner_key.into_iter().map(|(ip, k)| (ip, peer_index[&k])).collect();
        let mut local_by_ns: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (gi, g) in groups.iter().enumerate().filter(|(_, g)| g.local) {
            local_by_ns.entry(g.key.namespace.clone()).or_default().push(gi);
        }
        Identities { groups, peers, peer_by_id, nodes, local_by_ns, addr_owner, warnings }
    }

    /// What each number stands for, and who owns each address.
    pub fn catalog(&self, node: &Node, catalog: &mut Catalog) {
        catalog.identities.clear();
        catalog.pods_by_ip.clear();
        for g in &self.groups {
            let info = IdentityInfo::Pod { namespace: g.key.namespace.clone(), labels: g.key.labels.clone() };
            catalog.identities.insert(g.id, info);
        }
        for p in &self.peers {
            let info = match p.kind {
                PeerKind::Pod(gi) => IdentityInfo::Address { pod: self.groups[gi].id, cell: p.cell },
                PeerKind::Host => IdentityInfo::Host { cell: p.cell },
                PeerKind::Node(ni) => IdentityInfo::Node { name: self.nodes[ni].name.clone(), cell: p.cell },
                PeerKind::Cidr => IdentityInfo::Cidr { cell: p.cell },
            };
            catalog.identities.insert(p.id, info);
        }
        for (ip, &pi) in &self.addr_owner {
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
        for p in &self.peers {
            if p.kind == PeerKind::Cidr {
                out.insert(IpPrefix::from_net(p.cell), IpInfo { identity: p.id, flags: 0, ifindex: 0 });
            }
        }
        for (ip, &pi) in &self.addr_owner {
            let info = IpInfo { identity: self.peers[pi].id, flags: 0, ifindex: 0 };
            out.insert(IpPrefix::from_net(IpNet::from(*ip)), info);
        }
        // Service cluster IPs keep the identity of the cell they are in (no
        // policy selects a virtual IP) and are flagged, so a pod's egress to
        // one is judged after kube-proxy has picked the backend.
        catalog.services_by_ip.clear();
        let cidr_ids: HashMap<IpNet, u32> =
            self.peers.iter().filter(|p| p.kind == PeerKind::Cidr).map(|p| (p.cell, p.id)).collect();
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
                let info = IpInfo { identity, flags: IP_SERVICE, ifindex: 0 };
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
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.local)
            .flat_map(move |(gi, g)| g.members.iter().filter(move |p| is_local(p)).map(move |p| (gi, p)))
    }
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
