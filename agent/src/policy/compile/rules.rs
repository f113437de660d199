//! Rules. Each rule expands to policy-trie entries (policy class,
//! direction, peer, protocol, port prefix), the peer an identity, any
//! peer, or a namespace every pod of which the rule admits; selectors, named
//! ports and CIDR containment are resolved here, so the kernel only looks
//! entries up. A policy's entries (its [`Part`]) depend only on the policy,
//! its rule numbers, the classes it selects and the peers its rules admit:
//! when none of those changed, its entries are reused as they are; when
//! some classes or peers did, only their entries move. A part
//! keeps what its entries were expanded from, not the entries: those that
//! leave are expanded again (at 50k pods x 50k policies the entries were a
//! million claims, 30 MB), but for entries to peers' named ports.

use super::classes::Classes;
use super::identities::{Delta, Identities, PeerKind, Seen};
use super::{ids, ports};
use crate::policy::compiled::PolicyPrefix;
use crate::policy::model::{
    Direction, NamedPort, NamespaceMatch, Peer, Policy, PolicyRef, PortMatch, Rule, Selector, named_port,
};
use ipnet::IpNet;
use palisade_common::{DIR_BY_NAMESPACE, PEER_ANY, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_PROTO, PolicyKey};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// One rule's claim on a policy entry, with the rule number it would
/// write. When several rules produce the same entry, the first claim in
/// [`Claim::precedes`] order decides, so the one kept is always the same:
/// first policy by namespace/name, then rule in [`rules_of`] order
/// (ingress before egress, each by index); the node's allowance (no
/// policy) last. 16 bytes: at 50k pods x 50k policies there are millions.
#[derive(Clone, Debug)]
pub(super) struct Claim {
    pub policy: Option<PolicyRef>,
    /// The rule's index in [`rules_of`] order.
    pub index: u32,
    pub rule: u32,
}

const _: () = assert!(std::mem::size_of::<Claim>() == 16);

impl Claim {
    /// The node allowance's claim.
    pub fn host(rule: u32) -> Claim {
        Claim { policy: None, index: 0, rule }
    }

    pub fn precedes(&self, other: &Claim) -> std::cmp::Ordering {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match (&self.policy, &other.policy) {
            // Claims of one policy share its name: none compared.
            (Some(a), Some(b)) if a.same(b) => self.index.cmp(&other.index),
            (Some(a), Some(b)) => a.cmp(b).then(self.index.cmp(&other.index)),
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (None, None) => Equal,
        }
    }

    /// The same rule's claim (whatever number it had then).
    pub fn same_rule(&self, other: &Claim) -> bool {
        self.precedes(other).is_eq()
    }
}

/// The peers a rule's `from`/`to` admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PeerSet {
    Any,
    /// Peer identities, and the numbers of namespaces every pod of which
    /// is admitted (their entries are keyed by namespace: one per
    /// namespace, not one per identity in it).
    Some {
        ids: Arc<BTreeSet<u32>>,
        namespaces: Arc<BTreeSet<u32>>,
    },
}

impl PeerSet {
    /// Whether an entry of this rule names one of these peers.
    fn admits(&self, prefix: &PolicyPrefix) -> bool {
        let peer = u32::from_be_bytes(prefix.key.peer);
        match self {
            PeerSet::Any => true,
            PeerSet::Some { namespaces, .. } if prefix.key.direction & DIR_BY_NAMESPACE != 0 => {
                namespaces.contains(&peer)
            }
            PeerSet::Some { ids, .. } => ids.contains(&peer),
        }
    }
}

/// A policy class a policy selects, as its entries depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Local {
    /// The class number: the entries' local field.
    pub id: u32,
    /// Its named ports where they count (see [`Classes::ports`]).
    pub ports: Vec<NamedPort>,
}

impl Local {
    fn same(&self, other: &Local) -> bool {
        self.id == other.id && self.ports == other.ports
    }
}

/// The rules of a policy in the order they are numbered: ingress, then egress.
pub(super) fn rules_of(policy: &Policy) -> impl Iterator<Item = (Direction, usize, &Rule)> {
    let ingress = policy.ingress.iter().flatten().enumerate().map(|(i, r)| (Direction::Ingress, i, r));
    let egress = policy.egress.iter().flatten().enumerate().map(|(i, r)| (Direction::Egress, i, r));
    ingress.chain(egress)
}

/// What identifies a rule: its number derives from it.
pub(super) fn canon(policy: &Policy, dir: Direction, index: usize) -> String {
    format!("rule\0{}\0{}\0{dir}\0{index}", policy.namespace, policy.name)
}

/// The number a rule gets when no other rule's number collides with it.
pub(super) fn natural(policy: &Policy, dir: Direction, index: usize) -> u32 {
    ids::fold(ids::fnv1a(canon(policy, dir, index).as_bytes()))
}

/// An entry with the rule that claims it (index into [`Part::rule_ids`]).
pub(super) type Claimed = (PolicyPrefix, u32);

/// One policy's part of the output, with what it was computed from.
pub(super) struct Part {
    pub policy: Arc<Policy>,
    pub name: PolicyRef,
    /// Each rule's natural number, in [`rules_of`] order.
    pub naturals: Vec<u32>,
    /// Each rule's number, in [`rules_of`] order.
    pub rule_ids: Vec<u32>,
    /// The classes it selects and holds entries for (not those whose
    /// parent holds them), in number order.
    pub selected: Vec<Local>,
    /// Every class it selects, in number order: those it isolates.
    pub isolates: Vec<u32>,
    /// Each rule's peers ([`rules_of`] order); empty when nothing is selected.
    pub peers: Vec<PeerSet>,
    /// Its entries to peers' named ports (egress), with the rule (index
    /// into `rule_ids`) each comes from: they depend on the peers' ports as
    /// the identities were then, so they are kept; [`Part::entries`]
    /// expands the others again from `selected` and `peers`.
    pub named: Vec<Claimed>,
}

impl Part {
    pub fn new(name: PolicyRef, policy: Arc<Policy>) -> Part {
        let naturals = rules_of(&policy).map(|(d, i, _)| natural(&policy, d, i)).collect::<Vec<_>>();
        Part {
            rule_ids: naturals.clone(),
            naturals,
            policy,
            name,
            selected: vec![],
            isolates: vec![],
            peers: vec![],
            named: vec![],
        }
    }

    /// The claim of the rule at `index` ([`rules_of`] order).
    pub fn claim(&self, index: u32) -> Claim {
        Claim { policy: Some(self.name.clone()), index, rule: self.rule_ids[index as usize] }
    }

    /// Its entries, with the rule each comes from (index into `rule_ids`),
    /// as the last [`Part::update`] put them in.
    pub fn entries(&self) -> Vec<Claimed> {
        let mut out = self.named.clone();
        for (ri, (dir, _, rule)) in rules_of(&self.policy).enumerate() {
            for local in &self.selected {
                expand(local, dir, rule, &self.peers[ri], ri, &mut out);
            }
        }
        out
    }

    /// Whether an entry depends on the named ports of peer pods (egress to
    /// a named port): then it changes whenever identities do.
    pub fn named_egress(&self) -> bool {
        self.policy.egress.iter().flatten().flat_map(|r| &r.ports).any(|p| matches!(p.port, PortMatch::Named(_)))
    }

    /// Brings the part up to date with the identities and classes. When
    /// only some classes came or went, or some peers joined or left a
    /// rule, only their entries move (a pod of a new class added or
    /// deleted touches its class's entries, not every selected class's);
    /// all are recomputed if `force` (the policy, its rule numbers or
    /// named egress ports may have changed). Returns the entries taken out
    /// and those put in, if any moved; none of `gone`'s (classes no
    /// longer there, whose entries the caller takes out whole).
    pub fn update(
        &mut self,
        ids: &Identities,
        classes: &Classes,
        resolver: &mut Resolver,
        force: bool,
        gone: &HashSet<u32>,
    ) -> Option<(Vec<Claimed>, Vec<Claimed>)> {
        let (selected, isolates) = selected(&self.policy, ids, classes);
        self.isolates = isolates;
        let peers: Vec<PeerSet> = if selected.is_empty() {
            Vec::new()
        } else {
            rules_of(&self.policy).map(|(d, _, r)| resolver.peers(d, r, &self.policy, ids)).collect()
        };
        let same = !force
            && selected.len() == self.selected.len()
            && selected.iter().zip(&self.selected).all(|(a, b)| a.same(b))
            && peers == self.peers;
        let old_selected = std::mem::replace(&mut self.selected, selected);
        let old_peers = std::mem::replace(&mut self.peers, peers);
        if same {
            return None;
        }
        // Entries of one (local, peer) pair depend on nothing else (named
        // egress ports aside, which `force` covers): those of a local
        // identity kept as it was stay, but for peers that left its rules.
        // None is kept when forced: all are recomputed.
        let kept: HashSet<u32> = if force {
            HashSet::new()
        } else {
            let old: HashMap<u32, &Local> = old_selected.iter().map(|l| (l.id, l)).collect();
            self.selected.iter().filter(|l| old.get(&l.id).is_some_and(|o| o.same(l))).map(|l| l.id).collect()
        };
        // Per rule, for the identities kept (selected before and now, so
        // every rule's peers are known both times): the peers that left
        // and those that joined (None: none).
        let mut left: Vec<Option<PeerSet>> = Vec::new();
        let mut joined: Vec<Option<PeerSet>> = Vec::new();
        if !kept.is_empty() {
            // Kept identities were selected both times, and without `force`
            // the rules are the same: one peer set per rule each time.
            debug_assert_eq!(old_peers.len(), self.peers.len(), "peer sets per rule");
            for (before, now) in old_peers.iter().zip(&self.peers) {
                let (l, j) = match (before, now) {
                    _ if before == now => (None, None),
                    (PeerSet::Some { ids: a, namespaces: an }, PeerSet::Some { ids: b, namespaces: bn }) => {
                        let some = |ids: BTreeSet<u32>, namespaces: BTreeSet<u32>| {
                            let (ids, namespaces) = (Arc::new(ids), Arc::new(namespaces));
                            (!ids.is_empty() || !namespaces.is_empty()).then_some(PeerSet::Some { ids, namespaces })
                        };
                        let diff = |x: &BTreeSet<u32>, y: &BTreeSet<u32>| x.difference(y).copied().collect();
                        (some(diff(a, b), diff(an, bn)), some(diff(b, a), diff(bn, an)))
                    }
                    // Any peer to some or back (only with the policy, which
                    // forces): every peer changed.
                    _ => (Some(before.clone()), Some(now.clone())),
                };
                left.push(l);
                joined.push(j);
            }
        }
        // What leaves is expanded again from what it was expanded from;
        // nothing when every identity stays with every peer (a pod of a
        // new identity only adds).
        let mut out = Vec::new();
        let none_leave = old_selected.iter().all(|l| kept.contains(&l.id)) && left.iter().all(Option::is_none);
        if !none_leave {
            let leaves = |p: &PolicyPrefix, ri: u32| {
                !kept.contains(&u32::from_be_bytes(p.key.local))
                    || left[ri as usize].as_ref().is_some_and(|l| l.admits(p))
            };
            let taken = self.named.extract_if(.., |(p, ri)| leaves(p, *ri));
            out.extend(taken.filter(|(p, _)| !gone.contains(&u32::from_be_bytes(p.key.local))));
            for (ri, (dir, _, rule)) in rules_of(&self.policy).enumerate() {
                for local in old_selected.iter().filter(|l| !gone.contains(&l.id)) {
                    if !kept.contains(&local.id) {
                        expand(local, dir, rule, &old_peers[ri], ri, &mut out);
                    } else if let Some(peers_left) = &left[ri] {
                        expand(local, dir, rule, peers_left, ri, &mut out);
                    }
                }
            }
        }
        let mut put = Vec::new();
        let named_from = self.named.len();
        for (ri, (dir, _, rule)) in rules_of(&self.policy).enumerate() {
            for local in &self.selected {
                let peers = if !kept.contains(&local.id) { Some(&self.peers[ri]) } else { joined[ri].as_ref() };
                if let Some(peers) = peers {
                    expand(local, dir, rule, peers, ri, &mut put);
                    if dir == Direction::Egress {
                        expand_named_egress(ids, local, rule, peers, ri, &mut self.named);
                    }
                }
            }
        }
        put.extend_from_slice(&self.named[named_from..]);
        if out.is_empty() && put.is_empty() {
            return None;
        }
        // Kept for the part's life: no room left from growing it.
        self.named.shrink_to_fit();
        Some((out, put))
    }
}

/// The classes of the local identities a policy selects, in number order:
/// those it holds entries for (a namespace-wide policy's include its
/// namespace's root, members or not), and all (those it isolates).
fn selected(policy: &Policy, ids: &Identities, classes: &Classes) -> (Vec<Local>, Vec<u32>) {
    let groups = ids.local_by_ns.get(&policy.namespace).map_or(&[][..], Vec::as_slice);
    let numbers: BTreeSet<u32> = groups
        .iter()
        .filter(|&&gi| policy.pod_selector.matches(&ids.groups[gi].key.labels))
        .map(|&gi| classes.of(gi))
        .collect();
    let mut holding = numbers.clone();
    if policy.pod_selector.is_empty() {
        holding.extend(classes.root(&policy.namespace));
    }
    let own = holding
        .into_iter()
        .filter(|&id| !classes.inherits(id, &policy.name))
        .map(|id| Local { id, ports: classes.ports(ids, id) })
        .collect();
    (own, numbers.into_iter().collect())
}

/// Peer identities each selector and ipBlock matches: many rules repeat
/// one. Valid while the identities are (cleared when they are rebuilt).
#[derive(Default)]
pub(super) struct Resolver {
    /// By (own namespace, or "" when a namespace selector decides;
    /// namespaces; pods).
    pods: HashMap<(String, NamespaceMatch, Selector), Arc<BTreeSet<u32>>>,
    blocks: HashMap<(IpNet, Vec<IpNet>), Arc<BTreeSet<u32>>>,
    /// The numbers of the namespaces a peer without a pod selector admits
    /// whole, by (own namespace, or ""; namespaces); None where one has no
    /// number of its own. Valid while the namespaces are.
    namespaces: HashMap<(String, NamespaceMatch), Option<Arc<BTreeSet<u32>>>>,
}

impl Resolver {
    pub fn clear(&mut self) {
        self.pods.clear();
        self.blocks.clear();
        self.namespaces.clear();
    }

    /// The namespaces changed (objects, labels, or those of pods without
    /// an object): the namespace sets are found again.
    pub fn namespaces_changed(&mut self) {
        self.namespaces.clear();
    }

    /// Brings every set up to date with an identities update: the peers
    /// of groups as they were leave the sets they matched, then those of
    /// groups as they are join the sets they match.
    pub fn apply(&mut self, delta: &Delta) {
        for ((own, namespaces, pods), set) in self.pods.iter_mut() {
            let matches = |g: &Seen| {
                let ns_ok = match namespaces {
                    NamespaceMatch::Own => g.namespace == *own,
                    NamespaceMatch::Selector(sel) => sel.matches(&g.ns.labels),
                };
                ns_ok && pods.matches(&g.labels)
            };
            update_set(set, delta, |g, _| matches(g));
        }
        for ((cidr, except), set) in self.blocks.iter_mut() {
            let inside = |c: &IpNet| cidr.contains(c) && !except.iter().any(|e| e.contains(c));
            update_set(set, delta, |_, cell| inside(cell));
        }
    }

    /// The peers a rule's `from`/`to` admits: a peer without a pod
    /// selector by its namespaces' numbers, unless one has none of its own
    /// or the rule has named ports on the peer (egress: they resolve per
    /// pod); other peers by identity.
    fn peers(&mut self, dir: Direction, rule: &Rule, policy: &Policy, ids: &Identities) -> PeerSet {
        if rule.peers.is_empty() {
            return PeerSet::Any;
        }
        let per_pod_ports =
            dir == Direction::Egress && rule.ports.iter().any(|p| matches!(p.port, PortMatch::Named(_)));
        let mut sets: Vec<Arc<BTreeSet<u32>>> = Vec::with_capacity(rule.peers.len());
        let mut namespace_sets: Vec<Arc<BTreeSet<u32>>> = Vec::new();
        for peer in &rule.peers {
            let set = match peer {
                Peer::Pods { namespaces, pods } => {
                    let own = match namespaces {
                        NamespaceMatch::Own => policy.namespace.clone(),
                        NamespaceMatch::Selector(_) => String::new(),
                    };
                    if pods.is_empty()
                        && !per_pod_ports
                        && let Some(numbers) = self
                            .namespaces
                            .entry((own.clone(), namespaces.clone()))
                            .or_insert_with(|| namespace_numbers(namespaces, &policy.namespace, ids))
                    {
                        namespace_sets.push(numbers.clone());
                        continue;
                    }
                    let key = (own, namespaces.clone(), pods.clone());
                    self.pods
                        .entry(key)
                        .or_insert_with(|| {
                            let mut matched = BTreeSet::new();
                            for g in &ids.groups {
                                let ns_ok = match namespaces {
                                    NamespaceMatch::Own => g.key.namespace == policy.namespace,
                                    NamespaceMatch::Selector(sel) => sel.matches(&g.ns.labels),
                                };
                                if ns_ok && pods.matches(&g.key.labels) {
                                    matched.extend(g.peers.iter().copied());
                                }
                            }
                            Arc::new(matched)
                        })
                        .clone()
                }
                Peer::IpBlock { cidr, except } => self
                    .blocks
                    .entry((*cidr, except.clone()))
                    .or_insert_with(|| {
                        let inside = |c: &IpNet| cidr.contains(c) && !except.iter().any(|e| e.contains(c));
                        Arc::new(ids.peers.values().filter(|p| inside(&p.cell)).map(|p| p.id).collect())
                    })
                    .clone(),
            };
            sets.push(set);
        }
        PeerSet::Some { ids: union(sets), namespaces: union(namespace_sets) }
    }
}

/// The union of peer sets (shared, when there is one).
fn union(mut sets: Vec<Arc<BTreeSet<u32>>>) -> Arc<BTreeSet<u32>> {
    if sets.len() == 1 {
        return sets.pop().expect("one set");
    }
    let mut all = BTreeSet::new();
    for s in sets {
        all.extend(s.iter().copied());
    }
    Arc::new(all)
}

/// The numbers of the namespaces a peer admits every pod of (its own
/// namespace's, or those its selector matches); None if one of them has
/// no number of its own.
fn namespace_numbers(namespaces: &NamespaceMatch, own: &str, ids: &Identities) -> Option<Arc<BTreeSet<u32>>> {
    let known = &ids.namespaces;
    let numbers: Option<BTreeSet<u32>> = match namespaces {
        NamespaceMatch::Own => known.number(own).map(|n| BTreeSet::from([n])),
        NamespaceMatch::Selector(sel) => {
            known.all.values().filter(|ns| sel.matches(&ns.labels)).map(|ns| known.number(&ns.name)).collect()
        }
    };
    numbers.map(Arc::new)
}

/// Takes the matching peers of `delta`'s groups out of `set`, then puts
/// those of the groups as they are in; the set is copied only if it changes.
fn update_set(set: &mut Arc<BTreeSet<u32>>, delta: &Delta, matches: impl Fn(&Seen, &IpNet) -> bool) {
    let into = delta.after.iter().flat_map(|g| g.peers.iter().filter(|(_, c)| matches(g, c)).map(|(id, _)| *id));
    let into: HashSet<u32> = into.collect();
    let out = delta.before.iter().flat_map(|g| g.peers.iter().filter(|(_, c)| matches(g, c)).map(|(id, _)| *id));
    let out: Vec<u32> = out.filter(|id| !into.contains(id) && set.contains(id)).collect();
    let add: Vec<u32> = into.into_iter().filter(|id| !set.contains(id)).collect();
    if out.is_empty() && add.is_empty() {
        return;
    }
    let set = Arc::make_mut(set);
    for id in out {
        set.remove(&id);
    }
    set.extend(add);
}

pub(super) fn entry(local: u32, dir: Direction, peer: u32, port: Option<(u8, Option<(u16, u32)>)>) -> PolicyPrefix {
    keyed(local, dir.code(), peer, port)
}

/// [`entry`], by direction code ([`DIR_BY_NAMESPACE`] set for a namespace).
fn keyed(local: u32, direction: u8, peer: u32, port: Option<(u8, Option<(u16, u32)>)>) -> PolicyPrefix {
    let mut key =
        PolicyKey { local: local.to_be_bytes(), direction, peer: peer.to_be_bytes(), protocol: 0, port: [0; 2] };
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

/// Expands one rule (index `ri`) for one selected class, but for
/// its entries to peers' named ports ([`expand_named_egress`]).
fn expand(local: &Local, dir: Direction, rule: &Rule, peer_set: &PeerSet, ri: usize, out: &mut Vec<Claimed>) {
    let id = local.id;
    let ri = ri as u32;
    let code = dir.code();
    // (direction code, peer): identities, then namespaces.
    let peer_ids: Vec<(u8, u32)> = match peer_set {
        PeerSet::Any => vec![(code, PEER_ANY)],
        PeerSet::Some { ids, namespaces } => {
            let by_namespace = namespaces.iter().map(|&n| (code | DIR_BY_NAMESPACE, n));
            ids.iter().map(|&p| (code, p)).chain(by_namespace).collect()
        }
    };
    let each = |port| peer_ids.iter().map(move |&(code, peer)| (keyed(id, code, peer, port), ri));
    if rule.ports.is_empty() {
        out.extend(each(None));
        return;
    }
    for spec in &rule.ports {
        let proto = spec.protocol.number();
        match &spec.port {
            PortMatch::Any => out.extend(each(Some((proto, None)))),
            PortMatch::Range(a, b) => {
                for (value, bits) in ports::prefixes(*a, *b) {
                    out.extend(each(Some((proto, Some((value, bits))))));
                }
            }
            // A named port is resolved against the destination pod: the
            // local pod for ingress, each peer pod for egress.
            PortMatch::Named(name) if dir == Direction::Ingress => {
                if let Some(port) = named_port(&local.ports, name, spec.protocol) {
                    out.extend(each(Some((proto, Some((port, 16))))));
                }
            }
            PortMatch::Named(_) => {}
        }
    }
}

/// Expands one egress rule's named ports (index `ri`) for one selected
/// class: each peer pod's own port of that name.
fn expand_named_egress(
    ids: &Identities,
    local: &Local,
    rule: &Rule,
    peer_set: &PeerSet,
    ri: usize,
    out: &mut Vec<Claimed>,
) {
    for spec in &rule.ports {
        let PortMatch::Named(name) = &spec.port else { continue };
        let proto = spec.protocol.number();
        let candidates: Box<dyn Iterator<Item = &super::identities::PeerIdentity>> = match peer_set {
            PeerSet::Any => Box::new(ids.peers.values()),
            PeerSet::Some { ids: s, .. } => Box::new(s.iter().filter_map(|p| ids.peers.get(p))),
        };
        for p in candidates {
            let PeerKind::Pod(gi) = p.kind else { continue };
            if let Some(port) = named_port(&ids.groups[gi].key.ports, name, spec.protocol) {
                out.push((entry(local.id, Direction::Egress, p.id, Some((proto, Some((port, 16))))), ri as u32));
            }
        }
    }
}
