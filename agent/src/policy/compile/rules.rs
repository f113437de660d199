//! Rules. Each rule expands to policy-trie entries (local identity,
//! direction, peer identity or any, protocol, port prefix); selectors, named
//! ports and CIDR containment are resolved here, so the kernel only looks
//! entries up.

use super::identities::{Identities, PeerIdentity, PeerKind};
use super::{ids, ports};
use crate::policy::compiled::{Catalog, PolicyPrefix, RULE_HOST, RuleInfo};
use crate::policy::model::{
    Direction, Input, NamespaceMatch, Node, Peer, Policy, PolicyRef, PortMatch, Rule, Selector, named_port,
};
use palisade_common::{
    EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, PEER_ANY, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_PROTO, PolicyKey,
    PolicyValue,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The policy map, and the isolation flags of every local identity (by
/// index) that a policy selects. `local` are the local identities (by
/// index) entries are compiled for; the catalog gets every rule's origin and
/// every isolating policy.
pub(super) fn compile(
    input: &Input,
    node: &Node,
    ids: &Identities,
    local: &BTreeSet<usize>,
    catalog: &mut Catalog,
) -> (BTreeMap<PolicyPrefix, PolicyValue>, BTreeMap<usize, u32>) {
    let policies: Vec<&Policy> = input.policies.values().map(|p| p.as_ref()).collect();
    let numbers = RuleNumbers::new(&policies);
    let mut rules = Rules { ids, entries: Entries::default(), flags: BTreeMap::new(), selectors: HashMap::new() };
    for (pi, policy) in policies.iter().enumerate() {
        rules.policy(pi, policy, &numbers, local, catalog);
    }
    if node.allow_host {
        rules.allow_host(catalog);
    }
    let policy = rules.entries.map.into_iter().map(|(k, (_, rule))| (k, PolicyValue { rule })).collect();
    (policy, rules.flags)
}

/// Rule numbers: each policy's ingress rules, then its egress rules, numbered
/// from what they are (policy, direction, index).
struct RuleNumbers {
    numbers: Vec<u32>,
    /// Index of each policy's first rule in `numbers`.
    first: Vec<usize>,
    /// Number of ingress rules of each policy.
    ingress: Vec<usize>,
}

impl RuleNumbers {
    fn new(policies: &[&Policy]) -> RuleNumbers {
        let mut keys = Vec::new();
        let mut first = Vec::with_capacity(policies.len());
        for p in policies {
            first.push(keys.len());
            let ingress = p.ingress.iter().flatten().enumerate().map(|(i, _)| canon(p, Direction::Ingress, i));
            let egress = p.egress.iter().flatten().enumerate().map(|(i, _)| canon(p, Direction::Egress, i));
            keys.extend(ingress.chain(egress));
        }
        let ingress = policies.iter().map(|p| p.ingress.as_ref().map_or(0, Vec::len)).collect();
        RuleNumbers { numbers: ids::assign(&keys), first, ingress }
    }

    fn id(&self, policy: usize, dir: Direction, index: usize) -> u32 {
        let skip = if dir == Direction::Ingress { 0 } else { self.ingress[policy] };
        self.numbers[self.first[policy] + skip + index]
    }
}

fn canon(policy: &Policy, dir: Direction, index: usize) -> String {
    format!("rule\0{}\0{}\0{dir}\0{index}", policy.namespace, policy.name)
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

/// Peer identities a pod peer matches, by (own namespace or "" when a
/// namespace selector decides, namespaces, pods): many rules repeat one.
type SelectorCache<'a> = HashMap<(String, &'a NamespaceMatch, &'a Selector), BTreeSet<u32>>;

struct Rules<'a, 'i> {
    ids: &'i Identities<'i>,
    entries: Entries,
    flags: BTreeMap<usize, u32>,
    selectors: SelectorCache<'a>,
}

impl<'a> Rules<'a, '_> {
    /// One policy: the identities it selects become isolated in its
    /// directions, and its rules expand for each of them.
    fn policy(
        &mut self,
        pi: usize,
        policy: &'a Policy,
        numbers: &RuleNumbers,
        local: &BTreeSet<usize>,
        catalog: &mut Catalog,
    ) {
        let labels = &self.ids.labels;
        let pref = PolicyRef { namespace: policy.namespace.clone(), name: policy.name.clone() };
        let selected: Vec<usize> = local
            .iter()
            .copied()
            .filter(|&li| labels[li].namespace == policy.namespace && policy.pod_selector.matches(labels[li].labels))
            .collect();
        for (dir, rules) in [(Direction::Ingress, &policy.ingress), (Direction::Egress, &policy.egress)] {
            let Some(rules) = rules else { continue };
            for (ri, _) in rules.iter().enumerate() {
                let info = RuleInfo { policy: Some(pref.clone()), direction: dir, index: ri };
                catalog.rules.insert(numbers.id(pi, dir, ri), info);
            }
            if selected.is_empty() {
                continue;
            }
            let bit = if dir == Direction::Ingress { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
            for &li in &selected {
                *self.flags.entry(li).or_default() |= bit;
                catalog.isolating.entry((self.ids.label_ids[li], dir)).or_default().push(pref.clone());
            }
            for (ri, rule) in rules.iter().enumerate() {
                let peers = self.peers(rule, policy);
                let ctx = RuleCtx { dir, rid: numbers.id(pi, dir, ri), order: (pi, dir, ri), ids: self.ids };
                for &li in &selected {
                    ctx.expand(li, rule, &peers, &mut self.entries);
                }
            }
        }
    }

    /// The peer identities a rule's `from`/`to` admits.
    fn peers(&mut self, rule: &'a Rule, policy: &Policy) -> PeerSet {
        if rule.peers.is_empty() {
            return PeerSet::Any;
        }
        let ids = self.ids;
        let mut set = BTreeSet::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let own = match namespaces {
                        NamespaceMatch::Own => policy.namespace.clone(),
                        NamespaceMatch::Selector(_) => String::new(),
                    };
                    let matched = self.selectors.entry((own, namespaces, pods)).or_insert_with(|| {
                        let mut matched = BTreeSet::new();
                        for (li, group) in ids.labels.iter().enumerate() {
                            let ns_ok = match namespaces {
                                NamespaceMatch::Own => group.namespace == policy.namespace,
                                NamespaceMatch::Selector(sel) => sel.matches(&group.ns.labels),
                            };
                            if ns_ok && pods.matches(group.labels) {
                                matched.extend(ids.peers_of_label[li].iter().copied());
                            }
                        }
                        matched
                    });
                    set.extend(matched.iter().copied());
                }
                Peer::IpBlock { cidr, except } => {
                    for p in &ids.peers {
                        if cidr.contains(&p.cell) && !except.iter().any(|e| e.contains(&p.cell)) {
                            set.insert(p.id);
                        }
                    }
                }
            }
        }
        PeerSet::Some(set)
    }

    /// The node may reach its ingress-isolated pods (kubelet probes).
    fn allow_host(&mut self, catalog: &mut Catalog) {
        catalog.rules.insert(RULE_HOST, RuleInfo { policy: None, direction: Direction::Ingress, index: 0 });
        let hosts: Vec<u32> = self.ids.peers.iter().filter(|p| p.kind == PeerKind::Host).map(|p| p.id).collect();
        for (&li, f) in &self.flags {
            if f & EP_INGRESS_ISOLATED != 0 {
                for &h in &hosts {
                    self.entries.add(
                        entry(self.ids.label_ids[li], Direction::Ingress, h, None),
                        (usize::MAX, Direction::Egress, 0),
                        RULE_HOST,
                    );
                }
            }
        }
    }
}

/// Expands one rule for one selected local identity.
struct RuleCtx<'i> {
    dir: Direction,
    rid: u32,
    order: RuleOrder,
    ids: &'i Identities<'i>,
}

impl RuleCtx<'_> {
    fn expand(&self, li: usize, rule: &Rule, peer_set: &PeerSet, entries: &mut Entries) {
        let local = self.ids.label_ids[li];
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
                        if let Some(port) = named_port(self.ids.labels[li].ports, name, spec.protocol) {
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
                            PeerSet::Any => self.ids.peers.iter().collect(),
                            PeerSet::Some(s) => s
                                .iter()
                                .filter_map(|id| self.ids.peer_by_id.get(id).map(|&i| &self.ids.peers[i]))
                                .collect(),
                        };
                        for p in candidates {
                            let PeerKind::Pod(pl) = p.kind else { continue };
                            if let Some(port) = named_port(self.ids.labels[pl].ports, name, spec.protocol) {
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
