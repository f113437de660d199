//! The compiler: cluster state in, the exact contents of the kernel maps out.
//!
//! Identities. Every local pod gets a *local identity* shared by all pods
//! with the same namespace, namespace labels, pod labels and named ports:
//! policy entries are keyed by it. Every address gets a *peer identity*:
//! pod addresses by (local identity, cell), node addresses by cell, and
//! every ipBlock CIDR is a cell of its own ("world" is the /0 cell of each
//! family). A cell is the most specific ipBlock CIDR containing an address,
//! so "is this address in the ipBlock, outside its excepts" becomes "is its
//! cell inside the CIDR, outside the excepts", answered here once per
//! identity instead of per packet, and ipBlock rules apply to pod addresses
//! too, as Kubernetes defines.
//!
//! Rules. Each rule expands to policy-trie entries (local identity,
//! direction, peer identity or any, protocol, port prefix); selectors,
//! named ports and CIDR containment are resolved here, so the kernel only
//! looks entries up.

use super::ids;
use super::model::{Labels, NamedPort, NamespaceMatch, Peer, Policy, PortMatch, Rule, named_port};
use super::ports;
use super::{Direction, Input, Node, PolicyRef};
use ipnet::IpNet;
use palisade_common::{
    EP_AUDIT, EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, FAMILY_V4, FAMILY_V6, IP_KEY_FAMILY_BITS, IP_SERVICE, IpInfo,
    IpKey, PEER_ANY, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_PROTO, PolicyKey, PolicyValue,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Rule id of the built-in "the node may reach its pods" allowance.
pub const RULE_HOST: u32 = 1;

/// An entry of the IP trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    pub prefix_len: u32,
    pub key: IpKey,
}

impl IpPrefix {
    pub fn from_net(net: IpNet) -> IpPrefix {
        let (family, addr) = family_addr(net.addr());
        IpPrefix { prefix_len: IP_KEY_FAMILY_BITS + u32::from(net.prefix_len()), key: IpKey { family, addr } }
    }

    /// A single address (kept in the exact-match map, not the trie).
    pub fn is_address(&self) -> bool {
        self.prefix_len == palisade_common::ip_key_full_len(self.key.family)
    }

    pub fn to_net(self) -> Option<IpNet> {
        let len = self.prefix_len.checked_sub(IP_KEY_FAMILY_BITS)? as u8;
        let addr = match self.key.family {
            FAMILY_V4 => IpAddr::from([self.key.addr[0], self.key.addr[1], self.key.addr[2], self.key.addr[3]]),
            FAMILY_V6 => IpAddr::from(self.key.addr),
            _ => return None,
        };
        IpNet::new(addr, len).ok()
    }
}

/// An entry of the policy trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPrefix {
    pub prefix_len: u32,
    pub key: PolicyKey,
}

pub use palisade_common::family_addr;

/// A local pod the kernel enforces on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub flags: u32,
}

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IdentityInfo {
    /// A local identity: pods sharing namespace, labels and named ports.
    Pod { namespace: String, labels: BTreeMap<String, String> },
    /// Addresses of pods with local identity `pod`, inside `cell`.
    Address { pod: u32, cell: IpNet },
    /// Addresses of the node itself, inside `cell`.
    Host { cell: IpNet },
    /// Any other address whose most specific ipBlock CIDR is `cell`.
    Cidr { cell: IpNet },
}

/// Where a rule id came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    /// None for the built-in node allowance.
    pub policy: Option<PolicyRef>,
    pub direction: Direction,
    /// Index into the policy's ingress or egress list.
    pub index: usize,
}

impl std::fmt::Display for RuleInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "{p} {} rule {}", self.direction, self.index),
            None => f.write_str("node traffic to its pods (--allow-host)"),
        }
    }
}

/// Everything user space needs to turn kernel numbers back into names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub rules: BTreeMap<u32, RuleInfo>,
    /// Policies that isolate a local identity in a direction.
    pub isolating: BTreeMap<(u32, Direction), Vec<PolicyRef>>,
    /// Every known pod, by address.
    pub pods_by_ip: BTreeMap<IpAddr, Arc<super::Pod>>,
    /// Service (namespace, name) by cluster IP.
    pub services_by_ip: BTreeMap<IpAddr, (String, String)>,
    pub host_ips: BTreeSet<IpAddr>,
}

/// The compiler's output: the desired contents of every kernel map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub ips: BTreeMap<IpPrefix, IpInfo>,
    pub policy: BTreeMap<PolicyPrefix, PolicyValue>,
    pub endpoints: Vec<LocalEndpoint>,
    pub catalog: Catalog,
    /// Things worth a warning that do not stop compilation.
    pub warnings: Vec<String>,
}

/// The most specific CIDR (of a fixed set that includes both /0s) that
/// contains an address.
struct Cells {
    /// (family is v4, prefix length) -> CIDRs of that length, longest first.
    by_len: Vec<(bool, u8, HashSet<IpNet>)>,
}

impl Cells {
    fn new(cidrs: &BTreeSet<IpNet>) -> Cells {
        let mut map: BTreeMap<(bool, u8), HashSet<IpNet>> = BTreeMap::new();
        for c in cidrs {
            map.entry((c.addr().is_ipv4(), c.prefix_len())).or_default().insert(*c);
        }
        let mut by_len: Vec<_> = map.into_iter().map(|((v4, len), set)| (v4, len, set)).collect();
        by_len.sort_by_key(|c| std::cmp::Reverse(c.1));
        Cells { by_len }
    }

    fn of(&self, ip: IpAddr) -> IpNet {
        for (v4, len, set) in &self.by_len {
            if *v4 != ip.is_ipv4() {
                continue;
            }
            if let Ok(net) = IpNet::new(ip, *len) {
                let net = net.trunc();
                if set.contains(&net) {
                    return net;
                }
            }
        }
        unreachable!("both /0 cells are always present")
    }
}

fn root(v4: bool) -> IpNet {
    if v4 { "0.0.0.0/0".parse().expect("cidr") } else { "::/0".parse().expect("cidr") }
}

/// Pods alike enough to share a local identity.
struct LabelGroup<'a> {
    namespace: &'a str,
    ns_labels: &'a Labels,
    labels: &'a Labels,
    ports: &'a [NamedPort],
    /// Indexes into the compiler's pod list.
    members: Vec<usize>,
    /// Hash of all of the above but the members: what the number derives from.
    hash: u64,
}

impl LabelGroup<'_> {
    fn content_hash(&self) -> u64 {
        use std::fmt::Write;
        let mut s = format!("pod\0{}\0", self.namespace);
        for (k, v) in self.ns_labels {
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

/// An address block as bytes, for hashing.
fn net_bytes(net: IpNet) -> Vec<u8> {
    let mut v = match net.addr() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.push(net.prefix_len());
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PeerKind {
    /// Index into the label identity table.
    Pod(usize),
    Host,
    Cidr,
}

struct PeerIdentity {
    id: u32,
    kind: PeerKind,
    cell: IpNet,
}

/// Orders rules so that when two rules produce the same entry, the one kept
/// is always the same: first policy by namespace/name, then rule index.
type RuleOrder = (usize, Direction, usize);

/// Collects policy entries, keeping the first rule in [`RuleOrder`]. (A
/// hash map with a fast hasher: this is the compiler's hottest spot, and
/// ordered inserts cost several times more at 10k policies; the result is
/// sorted once.)
#[derive(Default)]
struct Entries {
    map: foldhash::HashMap<PolicyPrefix, (RuleOrder, u32)>,
}

impl Entries {
    fn add(&mut self, prefix: PolicyPrefix, order: RuleOrder, rule: u32) {
        self.map
            .entry(prefix)
            .and_modify(|cur| {
                if order < cur.0 {
                    *cur = (order, rule);
                }
            })
            .or_insert((order, rule));
    }
}

fn entry(local: u32, dir: Direction, peer: u32, port: Option<(u8, Option<(u16, u32)>)>) -> PolicyPrefix {
    let mut key = PolicyKey {
        local: local.to_be_bytes(),
        direction: dir.code(),
        peer: peer.to_be_bytes(),
        protocol: 0,
        port: [0; 2],
    };
    let prefix_len = match port {
        None => POLICY_PREFIX_ANY_PROTO,
        Some((proto, None)) => {
            key.protocol = proto;
            POLICY_PREFIX_PROTO
        }
        Some((proto, Some((value, bits)))) => {
            key.protocol = proto;
            key.port = value.to_be_bytes();
            POLICY_PREFIX_PROTO + bits
        }
    };
    PolicyPrefix { prefix_len, key }
}

/// The peers a rule's `from`/`to` admits.
enum PeerSet {
    Any,
    Some(BTreeSet<u32>),
}

pub fn compile(input: &Input, node: &Node) -> Compiled {
    let mut out = Compiled::default();
    let namespace =
        |name: &str| input.namespaces.get(name).cloned().unwrap_or_else(|| super::Namespace::implicit(name).into());

    // Cells: every ipBlock CIDR and except, plus both /0s.
    let mut cidrs: BTreeSet<IpNet> = [root(true), root(false)].into();
    for p in input.policies.values() {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in &rule.peers {
                if let Peer::IpBlock { cidr, except } = peer {
                    cidrs.insert(*cidr);
                    cidrs.extend(except.iter().copied());
                }
            }
        }
    }
    let cells = Cells::new(&cidrs);

    // Pods that take part: running (not terminated), with addresses, in the
    // pod network (host-network pods are node addresses).
    let pods: Vec<&Arc<super::Pod>> =
        input.pods.values().filter(|p| !p.terminated && !p.host_network && !p.ips.is_empty()).collect();

    // Local identities: pods grouped by what makes them alike.
    let mut namespaces: HashMap<&str, Arc<super::Namespace>> = HashMap::new();
    let mut groups: BTreeMap<(&str, &Labels, &[NamedPort]), Vec<usize>> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
        namespaces.entry(pod.namespace.as_str()).or_insert_with(|| namespace(&pod.namespace));
        groups.entry((pod.namespace.as_str(), &pod.labels, pod.ports.as_slice())).or_default().push(i);
    }
    let labels: Vec<LabelGroup> = groups
        .into_iter()
        .map(|((ns, pod_labels, ports), members)| LabelGroup {
            namespace: ns,
            ns_labels: &namespaces[ns].labels,
            labels: pod_labels,
            ports,
            members,
            hash: 0,
        })
        .map(|mut g| {
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
    for cell in &cidrs {
        let key = PeerKey { kind: PeerKind::Cidr, cell: *cell };
        peer_keys.insert(key, ids::hash_parts(&[b"cidr", &net_bytes(*cell)]));
    }

    // Numbers for all of them at once, so no two collide.
    let label_numbers = labels.iter().enumerate().map(|(li, g)| (IdKey::Label(li), g.hash));
    let peer_numbers = peer_keys.iter().map(|(k, h)| (IdKey::Peer(*k), *h));
    let numbers = ids::assign_hashed(label_numbers.chain(peer_numbers));
    let label_ids: Vec<u32> = (0..labels.len()).map(|li| numbers[&IdKey::Label(li)]).collect();
    let peer_id = |k: &PeerKey| numbers[&IdKey::Peer(*k)];
    let peers: Vec<PeerIdentity> =
        peer_keys.keys().map(|k| PeerIdentity { id: peer_id(k), kind: k.kind, cell: k.cell }).collect();
    let mut peers_of_label: Vec<Vec<u32>> = vec![Vec::new(); labels.len()];
    for p in &peers {
        if let PeerKind::Pod(li) = p.kind {
            peers_of_label[li].push(p.id);
        }
    }
    let peer_by_id: HashMap<u32, &PeerIdentity> = peers.iter().map(|p| (p.id, p)).collect();

    // Catalog of identities.
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

    // The IP trie: every cell, then every address (full-length prefixes win
    // the longest-prefix match over the cells that contain them).
    for p in &peers {
        if p.kind == PeerKind::Cidr {
            out.ips.insert(IpPrefix::from_net(p.cell), IpInfo { identity: p.id, flags: 0, ifindex: 0 });
        }
    }
    for (ip, key) in &addr_owner {
        out.ips.insert(IpPrefix::from_net(IpNet::from(*ip)), IpInfo { identity: peer_id(key), flags: 0, ifindex: 0 });
    }
    // Service cluster IPs keep the identity of the cell they are in (no
    // policy selects a virtual IP) and are flagged, so a pod's egress to one
    // is judged after kube-proxy has picked the backend.
    for svc in input.services.values() {
        for ip in &svc.cluster_ips {
            if addr_owner.contains_key(ip) {
                out.warnings.push(format!(
                    "cluster IP {ip} of service {}/{} is also a pod or node address",
                    svc.namespace, svc.name
                ));
                continue;
            }
            let identity = peer_id(&PeerKey { kind: PeerKind::Cidr, cell: cells.of(*ip) });
            out.ips.insert(IpPrefix::from_net(IpNet::from(*ip)), IpInfo { identity, flags: IP_SERVICE, ifindex: 0 });
            out.catalog.services_by_ip.insert(*ip, (svc.namespace.clone(), svc.name.clone()));
        }
    }

    // Local endpoints and the local identities policies are compiled for.
    let is_local = |pod: &super::Pod| pod.node_name.as_deref().is_none_or(|n| n == node.name);
    let mut local_labels: BTreeSet<usize> = BTreeSet::new();
    let mut endpoint_label: Vec<(usize, usize)> = Vec::new();
    for (li, group) in labels.iter().enumerate() {
        for &pi in &group.members {
            if is_local(pods[pi].as_ref()) {
                local_labels.insert(li);
                endpoint_label.push((pi, li));
            }
        }
    }

    // Rules.
    let policies: Vec<&Policy> = input.policies.values().map(|p| p.as_ref()).collect();
    // Rule numbers: each policy's ingress rules, then its egress rules.
    let mut rule_keys = Vec::new();
    let mut first_rule = Vec::with_capacity(policies.len());
    for p in &policies {
        first_rule.push(rule_keys.len());
        let ingress = p.ingress.iter().flatten().enumerate().map(|(i, _)| rule_canon(p, Direction::Ingress, i));
        let egress = p.egress.iter().flatten().enumerate().map(|(i, _)| rule_canon(p, Direction::Egress, i));
        rule_keys.extend(ingress.chain(egress));
    }
    let rule_numbers = ids::assign(&rule_keys);
    let rule_id = |pi: usize, dir: Direction, ri: usize| {
        let skip = if dir == Direction::Ingress { 0 } else { policies[pi].ingress.as_ref().map_or(0, Vec::len) };
        rule_numbers[first_rule[pi] + skip + ri]
    };
    let mut flags: BTreeMap<usize, u32> = BTreeMap::new();
    let mut entries = Entries::default();
    let mut selector_cache: HashMap<(String, &NamespaceMatch, &super::model::Selector), BTreeSet<u32>> = HashMap::new();
    for (pi, policy) in policies.iter().enumerate() {
        let pref = PolicyRef { namespace: policy.namespace.clone(), name: policy.name.clone() };
        let selected: Vec<usize> = local_labels
            .iter()
            .copied()
            .filter(|&li| labels[li].namespace == policy.namespace && policy.pod_selector.matches(labels[li].labels))
            .collect();
        for (dir, rules) in [(Direction::Ingress, &policy.ingress), (Direction::Egress, &policy.egress)] {
            let Some(rules) = rules else { continue };
            for (ri, _) in rules.iter().enumerate() {
                let rid = rule_id(pi, dir, ri);
                out.catalog.rules.insert(rid, RuleInfo { policy: Some(pref.clone()), direction: dir, index: ri });
            }
            if selected.is_empty() {
                continue;
            }
            let bit = if dir == Direction::Ingress { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
            for &li in &selected {
                *flags.entry(li).or_default() |= bit;
                out.catalog.isolating.entry((label_ids[li], dir)).or_default().push(pref.clone());
            }
            for (ri, rule) in rules.iter().enumerate() {
                let rid = rule_id(pi, dir, ri);
                let order = (pi, dir, ri);
                let peer_set = rule_peers(rule, policy, &labels, &peers_of_label, &peers, &mut selector_cache);
                let ctx = RuleCtx {
                    dir,
                    rid,
                    order,
                    labels: &labels,
                    label_ids: &label_ids,
                    peers: &peers,
                    peer_by_id: &peer_by_id,
                };
                for &li in &selected {
                    ctx.expand(li, rule, &peer_set, &mut entries);
                }
            }
        }
    }

    // The node may reach its pods (kubelet probes), unless turned off.
    if node.allow_host {
        out.catalog.rules.insert(RULE_HOST, RuleInfo { policy: None, direction: Direction::Ingress, index: 0 });
        let hosts: Vec<u32> = peers.iter().filter(|p| p.kind == PeerKind::Host).map(|p| p.id).collect();
        for (&li, f) in &flags {
            if f & EP_INGRESS_ISOLATED != 0 {
                for &h in &hosts {
                    entries.add(
                        entry(label_ids[li], Direction::Ingress, h, None),
                        (usize::MAX, Direction::Egress, 0),
                        RULE_HOST,
                    );
                }
            }
        }
    }
    out.policy = entries.map.into_iter().map(|(k, (_, rule))| (k, PolicyValue { rule })).collect();

    for (pi, li) in endpoint_label {
        let pod = pods[pi];
        let mut f = flags.get(&li).copied().unwrap_or(0);
        if node.audit || namespace(&pod.namespace).audit {
            f |= EP_AUDIT;
        }
        out.endpoints.push(LocalEndpoint {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ips: pod.ips.clone(),
            identity: label_ids[li],
            flags: f,
        });
    }
    out
}

fn rule_canon(policy: &Policy, dir: Direction, index: usize) -> String {
    format!("rule\0{}\0{}\0{dir}\0{index}", policy.namespace, policy.name)
}

fn rule_peers<'a>(
    rule: &'a Rule,
    policy: &Policy,
    labels: &[LabelGroup],
    peers_of_label: &[Vec<u32>],
    peers: &[PeerIdentity],
    cache: &mut HashMap<(String, &'a NamespaceMatch, &'a super::model::Selector), BTreeSet<u32>>,
) -> PeerSet {
    if rule.peers.is_empty() {
        return PeerSet::Any;
    }
    let mut set = BTreeSet::new();
    for peer in &rule.peers {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let own = match namespaces {
                    NamespaceMatch::Own => policy.namespace.clone(),
                    NamespaceMatch::Selector(_) => String::new(),
                };
                let ids = cache.entry((own, namespaces, pods)).or_insert_with(|| {
                    let mut ids = BTreeSet::new();
                    for (li, group) in labels.iter().enumerate() {
                        let ns_ok = match namespaces {
                            NamespaceMatch::Own => group.namespace == policy.namespace,
                            NamespaceMatch::Selector(sel) => sel.matches(group.ns_labels),
                        };
                        if ns_ok && pods.matches(group.labels) {
                            ids.extend(peers_of_label[li].iter().copied());
                        }
                    }
                    ids
                });
                set.extend(ids.iter().copied());
            }
            Peer::IpBlock { cidr, except } => {
                for p in peers {
                    if cidr.contains(&p.cell) && !except.iter().any(|e| e.contains(&p.cell)) {
                        set.insert(p.id);
                    }
                }
            }
        }
    }
    PeerSet::Some(set)
}

/// Expands one rule for one selected local identity.
struct RuleCtx<'a> {
    dir: Direction,
    rid: u32,
    order: RuleOrder,
    labels: &'a [LabelGroup<'a>],
    label_ids: &'a [u32],
    peers: &'a [PeerIdentity],
    peer_by_id: &'a HashMap<u32, &'a PeerIdentity>,
}

impl RuleCtx<'_> {
    fn expand(&self, li: usize, rule: &Rule, peer_set: &PeerSet, entries: &mut Entries) {
        let local = self.label_ids[li];
        let peer_ids: Vec<u32> = match peer_set {
            PeerSet::Any => vec![PEER_ANY],
            PeerSet::Some(s) => s.iter().copied().collect(),
        };
        if rule.ports.is_empty() {
            for &peer in &peer_ids {
                entries.add(entry(local, self.dir, peer, None), self.order, self.rid);
            }
            return;
        }
        for spec in &rule.ports {
            let proto = spec.protocol.number();
            match &spec.port {
                PortMatch::Any => {
                    for &peer in &peer_ids {
                        entries.add(entry(local, self.dir, peer, Some((proto, None))), self.order, self.rid);
                    }
                }
                PortMatch::Range(a, b) => {
                    for (value, bits) in ports::prefixes(*a, *b) {
                        for &peer in &peer_ids {
                            entries.add(
                                entry(local, self.dir, peer, Some((proto, Some((value, bits))))),
                                self.order,
                                self.rid,
                            );
                        }
                    }
                }
                // A named port is resolved against the destination pod: the
                // local pod for ingress, each peer pod for egress.
                PortMatch::Named(name) => match self.dir {
                    Direction::Ingress => {
                        if let Some(port) = named_port(self.labels[li].ports, name, spec.protocol) {
                            for &peer in &peer_ids {
                                entries.add(
                                    entry(local, self.dir, peer, Some((proto, Some((port, 16))))),
                                    self.order,
                                    self.rid,
                                );
                            }
                        }
                    }
                    Direction::Egress => {
                        let candidates: Vec<&PeerIdentity> = match peer_set {
                            PeerSet::Any => self.peers.iter().collect(),
                            PeerSet::Some(s) => s.iter().filter_map(|id| self.peer_by_id.get(id).copied()).collect(),
                        };
                        for p in candidates {
                            let PeerKind::Pod(pl) = p.kind else { continue };
                            if let Some(port) = named_port(self.labels[pl].ports, name, spec.protocol) {
                                entries.add(
                                    entry(local, self.dir, p.id, Some((proto, Some((port, 16))))),
                                    self.order,
                                    self.rid,
                                );
                            }
                        }
                    }
                },
            }
        }
    }
}
