//! Identities. A *local identity* stands for pods with the same namespace,
//! namespace labels, pod labels and named ports: policy entries are keyed by
//! it. A *peer identity* is what an address is judged as: pod addresses by
//! (local identity, cell), node addresses by cell, any other address by its
//! cell. Numbers derive from what an identity stands for (see [`ids`]), so
//! the same state always gets the same numbers.

use super::cells::Cells;
use super::ids;
use crate::policy::compiled::{Compiled, IdentityInfo, IpPrefix};
use crate::policy::model::{Input, Labels, NamedPort, Namespace, Node, Pod};
use ipnet::IpNet;
use palisade_common::{IP_SERVICE, IpInfo};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Pods alike enough to share a local identity.
pub(super) struct LabelGroup<'a> {
    pub namespace: &'a str,
    /// The namespace object (or the implicit one), for its labels and audit.
    pub ns: Arc<Namespace>,
    pub labels: &'a Labels,
    pub ports: &'a [NamedPort],
    /// Indexes into [`Identities::pods`].
    pub members: Vec<usize>,
    /// Hash of all of the above but the members: what the number derives from.
    hash: u64,
}

impl LabelGroup<'_> {
    fn content_hash(&self) -> u64 {
        use std::fmt::Write;
        let mut s = format!("pod\0{}\0", self.namespace);
        for (k, v) in &self.ns.labels {
            let _ = write!(s, "{k}={v};");
        }
        s.push('\0');
        for (k, v) in self.labels {
            let _ = write!(s, "{k}={v};");
        }
        s.push('\0');
        for p in self.ports {
            let _ = write!(s, "{}/{}/{};", p.name, p.port, p.protocol);
        }
        ids::hash_parts(&[s.as_bytes()])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum PeerKind {
    /// Index into the local identity table ([`Identities::labels`]).
    Pod(usize),
    Host,
    Cidr,
}

/// A peer identity's defining properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PeerKey {
    kind: PeerKind,
    cell: IpNet,
}

/// Everything that gets a number, in one space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum IdKey {
    Label(usize),
    Peer(PeerKey),
}

pub(super) struct PeerIdentity {
    pub id: u32,
    pub kind: PeerKind,
    pub cell: IpNet,
}

/// Every identity of a cluster state, numbered.
pub(super) struct Identities<'a> {
    /// Pods that take part: running (not terminated), with addresses, in the
    /// pod network (host-network pods are node addresses).
    pub pods: Vec<&'a Arc<Pod>>,
    /// The local identities.
    pub labels: Vec<LabelGroup<'a>>,
    /// The number of each local identity.
    pub label_ids: Vec<u32>,
    /// The peer identities, in key order.
    pub peers: Vec<PeerIdentity>,
    /// The peer identities of each local identity's addresses.
    pub peers_of_label: Vec<Vec<u32>>,
    /// Index into `peers` by number.
    pub peer_by_id: HashMap<u32, usize>,
    /// Who owns each pod and node address: the first pod to claim it, else
    /// the node.
    addr_owner: BTreeMap<IpAddr, PeerKey>,
    numbers: BTreeMap<IdKey, u32>,
}

impl<'a> Identities<'a> {
    /// Groups pods into local identities, derives the peer identities and
    /// numbers them all at once (so no two collide). Fills the catalog's
    /// identities and addresses; address conflicts become warnings.
    pub fn new(input: &'a Input, node: &Node, cells: &Cells, out: &mut Compiled) -> Identities<'a> {
        let pods: Vec<&Arc<Pod>> =
            input.pods.values().filter(|p| !p.terminated && !p.host_network && !p.ips.is_empty()).collect();

        // Local identities: pods grouped by what makes them alike.
        let mut namespaces: HashMap<&str, Arc<Namespace>> = HashMap::new();
        let mut groups: BTreeMap<(&str, &Labels, &[NamedPort]), Vec<usize>> = BTreeMap::new();
        for (i, pod) in pods.iter().enumerate() {
            namespaces.entry(pod.namespace.as_str()).or_insert_with(|| {
                input
                    .namespaces
                    .get(&pod.namespace)
                    .cloned()
                    .unwrap_or_else(|| Namespace::implicit(&pod.namespace).into())
            });
            groups.entry((pod.namespace.as_str(), &pod.labels, pod.ports.as_slice())).or_default().push(i);
        }
        let labels: Vec<LabelGroup> = groups
            .into_iter()
            .map(|((namespace, labels, ports), members)| {
                let ns = namespaces[namespace].clone();
                let mut g = LabelGroup { namespace, ns, labels, ports, members, hash: 0 };
                g.hash = g.content_hash();
                g
            })
            .collect();

        // Peer identities.
        let mut peer_keys: BTreeMap<PeerKey, u64> = BTreeMap::new();
        let mut addr_owner: BTreeMap<IpAddr, PeerKey> = BTreeMap::new();
        for (li, group) in labels.iter().enumerate() {
            for &pi in &group.members {
                for ip in &pods[pi].ips {
                    let key = PeerKey { kind: PeerKind::Pod(li), cell: cells.of(*ip) };
                    peer_keys.insert(key, ids::hash_parts(&[b"addr", &group.hash.to_be_bytes(), &net_bytes(key.cell)]));
                    match addr_owner.get(ip) {
                        Some(_) => out.warnings.push(format!(
                            "address {ip} of pod {}/{} is also claimed by another pod; the first one keeps it",
                            pods[pi].namespace, pods[pi].name
                        )),
                        None => {
                            addr_owner.insert(*ip, key);
                            out.catalog.pods_by_ip.insert(*ip, pods[pi].clone());
                        }
                    }
                }
            }
        }
        for ip in &node.host_ips {
            let key = PeerKey { kind: PeerKind::Host, cell: cells.of(*ip) };
            peer_keys.insert(key, ids::hash_parts(&[b"host", &net_bytes(key.cell)]));
            out.catalog.host_ips.insert(*ip);
            if addr_owner.contains_key(ip) {
                out.warnings.push(format!("node address {ip} is also a pod address; it counts as the pod's"));
            } else {
                addr_owner.insert(*ip, key);
            }
        }
        for cell in &cells.all {
            let key = PeerKey { kind: PeerKind::Cidr, cell: *cell };
            peer_keys.insert(key, ids::hash_parts(&[b"cidr", &net_bytes(*cell)]));
        }

        // Numbers for all of them at once, so no two collide.
        let label_numbers = labels.iter().enumerate().map(|(li, g)| (IdKey::Label(li), g.hash));
        let peer_numbers = peer_keys.iter().map(|(k, h)| (IdKey::Peer(*k), *h));
        let numbers = ids::assign_hashed(label_numbers.chain(peer_numbers));
        let label_ids: Vec<u32> = (0..labels.len()).map(|li| numbers[&IdKey::Label(li)]).collect();
        let peers: Vec<PeerIdentity> = peer_keys
            .keys()
            .map(|k| PeerIdentity { id: numbers[&IdKey::Peer(*k)], kind: k.kind, cell: k.cell })
            .collect();
        let mut peers_of_label: Vec<Vec<u32>> = vec![Vec::new(); labels.len()];
        for p in &peers {
            if let PeerKind::Pod(li) = p.kind {
                peers_of_label[li].push(p.id);
            }
        }
        let peer_by_id = peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect();

        // What each number stands for.
        for (li, group) in labels.iter().enumerate() {
            let info = IdentityInfo::Pod { namespace: group.namespace.to_string(), labels: group.labels.clone() };
            out.catalog.identities.insert(label_ids[li], info);
        }
        for p in &peers {
            let info = match p.kind {
                PeerKind::Pod(li) => IdentityInfo::Address { pod: label_ids[li], cell: p.cell },
                PeerKind::Host => IdentityInfo::Host { cell: p.cell },
                PeerKind::Cidr => IdentityInfo::Cidr { cell: p.cell },
            };
            out.catalog.identities.insert(p.id, info);
        }

        Identities { pods, labels, label_ids, peers, peers_of_label, peer_by_id, addr_owner, numbers }
    }

    fn peer_id(&self, key: &PeerKey) -> u32 {
        self.numbers[&IdKey::Peer(*key)]
    }

    /// The address map: every cell, then every pod and node address (a
    /// full-length prefix is always the longest match), then Service
    /// cluster IPs.
    pub fn address_entries(&self, input: &Input, cells: &Cells, out: &mut Compiled) {
        for p in &self.peers {
            if p.kind == PeerKind::Cidr {
                out.ips.insert(IpPrefix::from_net(p.cell), IpInfo { identity: p.id, flags: 0, ifindex: 0 });
            }
        }
        for (ip, key) in &self.addr_owner {
            let info = IpInfo { identity: self.peer_id(key), flags: 0, ifindex: 0 };
            out.ips.insert(IpPrefix::from_net(IpNet::from(*ip)), info);
        }
        // Service cluster IPs keep the identity of the cell they are in (no
        // policy selects a virtual IP) and are flagged, so a pod's egress to
        // one is judged after kube-proxy has picked the backend.
        for svc in input.services.values() {
            for ip in &svc.cluster_ips {
                if self.addr_owner.contains_key(ip) {
                    out.warnings.push(format!(
                        "cluster IP {ip} of service {}/{} is also a pod or node address",
                        svc.namespace, svc.name
                    ));
                    continue;
                }
                let identity = self.peer_id(&PeerKey { kind: PeerKind::Cidr, cell: cells.of(*ip) });
                let info = IpInfo { identity, flags: IP_SERVICE, ifindex: 0 };
                out.ips.insert(IpPrefix::from_net(IpNet::from(*ip)), info);
                out.catalog.services_by_ip.insert(*ip, (svc.namespace.clone(), svc.name.clone()));
            }
        }
    }

    /// The local endpoints, as (pod index, local identity index): pods on
    /// this node (or on no node yet).
    pub fn local(&self, node: &Node) -> Vec<(usize, usize)> {
        let is_local = |pod: &Pod| pod.node_name.as_deref().is_none_or(|n| n == node.name);
        let mut out = Vec::new();
        for (li, group) in self.labels.iter().enumerate() {
            for &pi in &group.members {
                if is_local(self.pods[pi].as_ref()) {
                    out.push((pi, li));
                }
            }
        }
        out
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
