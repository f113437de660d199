//! The compiler: cluster state in, the exact contents of the kernel maps out.
//!
//! It works in four steps, one module each: `cells` (the ipBlock CIDRs
//! addresses are judged by), `identities` (local and peer identities,
//! numbered, and the address map), `classes` (the local identities that
//! policies treat alike), and `rules` (policy entries keyed by class and
//! peer identity). Selectors, named ports and CIDR containment are all
//! resolved here, so the kernel only looks entries up.
//!
//! [`Compiler`] keeps each step's results and, given the next state,
//! recomputes only what the change touches: identities where pods or
//! namespaces changed (whole when cells or the node did); a policy's
//! entries when the policy, its rule numbers, the classes it selects or
//! the peers its rules admit changed (only the entries of those classes
//! and peers, unless the policy itself changed). It also says which
//! policy entries changed, so a sync writes them without comparing the
//! whole map. [`compile`] is the same compiler from nothing: the output
//! of a change is, by construction and by test, the output of compiling
//! the new state from scratch.

mod cells;
mod classes;
mod identities;
mod ids;
mod ports;
mod rules;
mod tiers;

use super::chunked::changes;
use super::compiled::{LocalEndpoint, RuleInfo};
use super::model::{ChunkedMap, Direction, Input, Node, Pod, PolicyRef};
use cells::Cells;
use classes::Classes;
use identities::Identities;
pub use identities::{Numbers, PodKey};
use palisade_common::{
    DIR_BY_NAMESPACE, EP_AUDIT, EP_EGRESS_ISOLATED, EP_EGRESS_TIERED, EP_INGRESS_ISOLATED, EP_INGRESS_TIERED,
    EP_NO_NAMESPACE, EP_PARENT_NO_ANY, EP_PARENT_NO_NAMESPACE, EP_PARENT_NO_SHORT, PEER_ANY, POLICY_PREFIX_FULL,
    PolicyKey, PolicyValue,
};
use rules::{Claim, Part, Resolver};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, btree_map};
use std::sync::Arc;

/// What the compiler produces, also reachable from here.
pub use super::compiled::{Compiled, IpPrefix, PolicyPrefix, RULE_HOST, family_addr};

/// Compiles the whole cluster for one node. The same input always gives the
/// same output, numbers included.
pub fn compile(input: &Input, node: &Node) -> Compiled {
    compile_with_hints(input, node, &Hints::new())
}

/// Compiles the whole cluster for one node, local identities and classes
/// keeping the numbers `hints` gives their pods where they can.
pub fn compile_with_hints(input: &Input, node: &Node, hints: &Hints) -> Compiled {
    let mut c = Compiler::with_hints(hints.clone());
    c.compile(&Arc::new(input.clone()), node);
    c.into_compiled()
}

/// The numbers local pods had, which the next compile keeps where it can:
/// a pod whose labels change keeps its identity, and a class whose pods
/// all move to a new one (a relabel that changes which policies select
/// them) gives that one its number, so only the entries whose selection
/// changed move.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub identities: Numbers,
    pub classes: Numbers,
}

impl Hints {
    pub fn new() -> Hints {
        Hints::default()
    }
}

/// The local identity and class of every local pod in `compiled`: the
/// hints that keep them on the next compile.
pub fn hints_of(compiled: &Compiled) -> Hints {
    let key = |e: &LocalEndpoint| (e.namespace.clone(), e.name.clone());
    Hints {
        identities: compiled.endpoints.iter().map(|e| (key(e), e.identity)).collect(),
        classes: compiled.endpoints.iter().map(|e| (key(e), e.class)).collect(),
    }
}

/// What the last [`Compiler::compile`] changed in the output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Policy entries added, removed or changed, in key order, each with
    /// what it is now (None: removed), so the sync writes them without
    /// looking them up again; None: the whole map may have changed (the
    /// first compile).
    pub policy: Option<Vec<(PolicyPrefix, Option<PolicyValue>)>>,
    /// Address entries added, removed or changed; None: the whole map may
    /// have (the first compile).
    pub ips: Option<BTreeSet<IpPrefix>>,
}

/// The compiler with its memory of the last state (see the module docs).
#[derive(Default)]
pub struct Compiler {
    input: Option<Arc<Input>>,
    node: Option<Node>,
    /// Hints for the first compile (after that: the last output's numbers).
    seed: Hints,
    /// The hints the current identities were numbered with.
    hints_used: Option<Numbers>,
    cells: Option<Cells>,
    ids: Option<Identities>,
    /// Pods scheduled to this node (host-network ones aside), addressed
    /// or not, running or done: their namespaces have roots. Kept as pods
    /// change, not found by a walk of every pod each compile.
    here: BTreeMap<(String, String), Arc<Pod>>,
    /// The policy class of every local identity.
    classes: Classes,
    resolver: Resolver,
    /// Keyed by the name each part holds (shared, not copied: 50k names).
    parts: BTreeMap<PolicyRef, Part>,
    /// Policies whose parts select a class or hold entries for one (a
    /// namespace's root without members: its pods have no address yet,
    /// or are done).
    selecting: BTreeSet<PolicyRef>,
    /// Natural rule number -> how many rules have it.
    naturals: HashMap<u32, u32>,
    /// Natural rule numbers more than one rule has.
    collisions: usize,
    /// Every entry's contributors; the first claim decides.
    contributors: Contributions,
    /// The node allowance's entries.
    host: Vec<PolicyPrefix>,
    /// Identity-derived warnings (address conflicts) and cluster IP ones.
    warnings: (Vec<String>, Vec<String>),
    /// Whether Node objects' addresses have identities (a cluster policy
    /// has a `nodes` peer).
    node_peers: bool,
    /// The ClusterNetworkPolicy tiers' part of the output.
    tiered: tiers::Tiered,
    /// Per class, how many of its entries are shorter than a full key and
    /// how many are for any peer: what its children's lookups may skip.
    shapes: Shapes,
    /// How many compiles built identities whole (tests).
    whole_builds: usize,
    /// How many policy entries parts took out or put in (tests).
    moved: usize,
    out: Compiled,
    changes: Changes,
}

impl Compiler {
    /// A compiler whose first compile numbers local identities and classes
    /// by `hints` (what the kernel holds from an earlier agent).
    pub fn with_hints(hints: Hints) -> Compiler {
        Compiler { seed: hints, ..Default::default() }
    }

    /// The last output.
    pub fn compiled(&self) -> &Compiled {
        &self.out
    }

    pub fn into_compiled(self) -> Compiled {
        self.out
    }

    /// What the last compile changed.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Compiles `input` for `node`, recomputing only what changed since the
    /// last call.
    pub fn compile(&mut self, input: &Arc<Input>, node: &Node) -> &Compiled {
        let first = self.input.is_none();
        let empty = Input::default();
        let last = self.input.clone();
        let prev: &Input = last.as_deref().unwrap_or(&empty);

        // What changed.
        let policy_changes = diff(&prev.policies, &input.policies);
        let pods_same = same_objects(&prev.pods, &input.pods) && !first;
        let namespaces_same = same_objects(&prev.namespaces, &input.namespaces) && !first;
        let services_same = same_objects(&prev.services, &input.services) && !first;
        let node_same = self.node.as_ref().is_some_and(|n| n.name == node.name && n.host_ips == node.host_ips);
        let cluster_same = same_objects(&prev.cluster_policies, &input.cluster_policies) && !first;
        let nodes_same = same_objects(&prev.nodes, &input.nodes) && !first;
        let node_peers = tiers::has_node_peers(input);
        let node_peers_same = node_peers == self.node_peers && (!node_peers || nodes_same);
        self.node_peers = node_peers;

        let cells_changed = if self.cells.is_none() || !policy_changes.is_empty() || !cluster_same {
            let cells = Cells::new(
                input.policies.values().map(|p| p.as_ref()),
                input.cluster_policies.values().map(|p| p.as_ref()),
            );
            let changed = self.cells.as_ref().is_none_or(|c| c.all != cells.all);
            self.cells = Some(cells);
            changed
        } else {
            false
        };
        let cells = self.cells.as_ref().expect("cells");

        // Identities: built whole when the cells, the node or the Node
        // objects that have identities changed (or the hints, after a
        // probed number); else updated where pods and namespaces changed.
        let hints = if first { self.seed.clone() } else { hints_of(&self.out) };
        let mut whole = cells_changed
            || !node_same
            || !node_peers_same
            || self.ids.is_none()
            || (self.hints_used.as_ref() != Some(&hints.identities) && !self.ids.as_ref().is_some_and(|i| i.clean()));
        let mut delta = None;
        if !whole && (!pods_same || !namespaces_same) {
            let ids = self.ids.as_mut().expect("identities");
            delta = ids.update(prev, input, node, cells, &hints.identities, &mut self.out.catalog, &mut self.out.ips);
            whole = delta.is_none();
        }
        let rebuilt = whole || delta.is_some();
        if whole {
            self.whole_builds += 1;
            let ids = Identities::new(input, node, cells, &hints.identities, node_peers);
            ids.catalog(node, &mut self.out.catalog);
            self.warnings.0 = ids.warnings.clone();
            self.resolver.clear();
            self.ids = Some(ids);
        } else if let Some(delta) = &delta {
            self.resolver.apply(delta);
            if delta.namespaces {
                self.resolver.namespaces_changed();
            }
        }
        self.hints_used = Some(hints.identities.clone());
        let ids = self.ids.as_ref().expect("identities");
        let mut ips_changed: Option<BTreeSet<IpPrefix>> =
            (!first).then(|| delta.as_ref().map(|d| d.ips.iter().copied().collect()).unwrap_or_default());
        if whole || !services_same {
            self.warnings.1.clear();
            let ips = ids.address_entries(input, cells, &mut self.out.catalog, &mut self.warnings.1);
            if let Some(keys) = &mut ips_changed {
                keys.extend(changes(self.out.ips.iter(), ips.iter(), |a, b| a == b).map(|(k, _)| *k));
            }
            self.out.ips = ips;
        }

        // Parts of policies gone or changed leave with their entries and
        // rule numbers.
        let mut touched = Touched::default();
        for &(name, _) in &policy_changes {
            if let Some(part) = self.parts.remove(name) {
                self.selecting.remove(name);
                for (prefix, ri) in &part.entries() {
                    if remove_contributor(&mut self.contributors, prefix, &part.claim(*ri)) {
                        touched.push(*prefix);
                    }
                }
                for (n, id) in part.naturals.iter().zip(&part.rule_ids) {
                    self.out.catalog.rules.remove(id);
                    if let Some(c) = self.naturals.get_mut(n) {
                        *c -= 1;
                        if *c == 1 {
                            self.collisions -= 1;
                        }
                        if *c == 0 {
                            self.naturals.remove(n);
                        }
                    }
                }
            }
        }
        let collided = self.collisions > 0;
        let mut forced: BTreeSet<PolicyRef> = BTreeSet::new();
        for &(name, policy) in &policy_changes {
            let Some(policy) = policy else { continue };
            let part = Part::new(PolicyRef::new(name.0.clone(), name.1.clone()), policy.clone());
            for n in &part.naturals {
                let c = self.naturals.entry(*n).or_default();
                *c += 1;
                if *c == 2 {
                    self.collisions += 1;
                }
            }
            forced.insert(part.name.clone());
            self.parts.insert(part.name.clone(), part);
        }

        // Rule numbers: natural unless two collide; then every rule is
        // numbered again, probing in key order, and parts whose numbers
        // moved are recomputed.
        if collided || self.collisions > 0 {
            let mut keys = Vec::new();
            for part in self.parts.values() {
                keys.extend(rules::rules_of(&part.policy).map(|(d, i, _)| rules::canon(&part.policy, d, i)));
            }
            let numbers = ids::assign(&keys);
            let mut at = 0;
            for (name, part) in self.parts.iter_mut() {
                let mine = &numbers[at..at + part.naturals.len()];
                at += part.naturals.len();
                if part.rule_ids != mine {
                    for id in &part.rule_ids {
                        self.out.catalog.rules.remove(id);
                    }
                    part.rule_ids = mine.to_vec();
                    forced.insert(name.clone());
                }
            }
        }
        for name in &forced {
            let part = &self.parts[name];
            for (ri, (dir, index, _)) in rules::rules_of(&part.policy).enumerate() {
                let info = RuleInfo { policy: Some(name.clone()), direction: dir, index, cluster: None };
                self.out.catalog.rules.insert(part.rule_ids[ri], info);
            }
        }

        // Classes, from the identities and the policies as they are now.
        if first || !node_same {
            self.here =
                input.pods.iter().filter(|(_, p)| is_here(p, node)).map(|(k, p)| (k.clone(), p.clone())).collect();
        } else if !pods_same {
            for (key, pod) in diff(&prev.pods, &input.pods) {
                match pod.filter(|p| is_here(p, node)) {
                    Some(p) => self.here.insert(key.clone(), p.clone()),
                    None => self.here.remove(key),
                };
            }
        }
        let classes = Classes::new(input, ids, node, self.here.values(), &hints.classes);
        let classes_changed = classes != self.classes;
        let old = std::mem::replace(&mut self.classes, classes);
        // Classes no longer there take every entry keyed by them out at
        // once, not a claim at a time (a namespace's root leaving: ten
        // claims on each of 50k entries at 50k pods x 50k policies, each
        // deciding in turn); parts leave their entries out.
        let now: HashSet<u32> = self.classes.numbers().collect();
        let gone: HashSet<u32> = old.numbers().filter(|c| !now.contains(c)).collect();
        if !gone.is_empty() {
            let mut drained: Vec<PolicyPrefix> =
                self.contributors.extract_if(|prefix, _| gone.contains(&pair_of(prefix).0)).map(|(p, _)| p).collect();
            drained.sort_unstable();
            touched.extend(drained);
        }
        let old_roots = old.roots;

        // Parts to bring up to date: new and changed policies, and when
        // identities changed, every policy that selects or selected a
        // local identity (after an update: in a namespace whose local
        // identities changed); when classes changed, every policy that
        // selects or selected one and every policy of a namespace with
        // local pods or a root, before or now (a root may have no
        // addressed pods: theirs have no address yet, or are done).
        let mut visit: BTreeSet<PolicyRef> = forced.clone();
        if classes_changed {
            visit.extend(self.selecting.iter().cloned());
            let roots = old_roots.keys().chain(self.classes.roots.keys());
            for ns in ids.local_by_ns.keys().chain(roots).collect::<BTreeSet<_>>() {
                let from = (ns.clone(), String::new());
                let names = input.policies.range(from..).take_while(|((n, _), _)| n == ns);
                visit.extend(
                    names.map(|(k, _)| self.parts.get_key_value(k).expect("a part for every policy").0.clone()),
                );
            }
        } else if rebuilt {
            visit.extend(self.selecting.iter().cloned());
            let namespaces: Vec<&String> = match &delta {
                Some(d) => d.local_namespaces.iter().collect(),
                None => ids.local_by_ns.keys().collect(),
            };
            for ns in namespaces {
                let from = (ns.clone(), String::new());
                let names = input.policies.range(from..).take_while(|((n, _), _)| n == ns);
                visit.extend(
                    names.map(|(k, _)| self.parts.get_key_value(k).expect("a part for every policy").0.clone()),
                );
            }
        }
        // Entries to a named port depend on every pod peer's ports.
        let groups_changed = whole || delta.as_ref().is_some_and(|d| d.groups);
        for name in &visit {
            let part = self.parts.get_mut(name).expect("a part for every policy");
            let force = forced.contains(name) || (groups_changed && part.named_egress());
            if let Some((out, put)) = part.update(ids, &self.classes, &mut self.resolver, force, &gone) {
                for (prefix, ri) in &out {
                    // A forced part's old entries left above (changed
                    // policy) or carry its old numbers (same claims).
                    if remove_contributor(&mut self.contributors, prefix, &part.claim(*ri)) {
                        touched.push(*prefix);
                    }
                }
                for (prefix, ri) in &put {
                    // The first compile takes every entry below, once: a
                    // claim at a time, the list grew to 2M at 50k pods x
                    // 50k policies (32 MB, more while it doubled).
                    if add_contributor(&mut self.contributors, *prefix, part.claim(*ri)) && !first {
                        touched.push(*prefix);
                    }
                }
                self.moved += out.len() + put.len();
            }
            if part.isolates.is_empty() && part.selected.is_empty() {
                self.selecting.remove(name);
            } else {
                self.selecting.insert(name.clone());
            }
        }

        // Isolation of each class, and who isolates it.
        let mut flags: BTreeMap<u32, u32> = BTreeMap::new();
        self.out.catalog.isolating.clear();
        for name in &self.selecting {
            let part = &self.parts[name];
            for (dir, on) in
                [(Direction::Ingress, part.policy.ingress.is_some()), (Direction::Egress, part.policy.egress.is_some())]
            {
                if !on {
                    continue;
                }
                let bit = if dir == Direction::Ingress { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
                for &class in &part.isolates {
                    *flags.entry(class).or_default() |= bit;
                    self.out.catalog.isolating.entry((class, dir)).or_default().push(name.clone());
                }
            }
        }

        // The node may reach its ingress-isolated pods (kubelet probes).
        let mut host = Vec::new();
        if node.allow_host {
            self.out
                .catalog
                .rules
                .insert(RULE_HOST, RuleInfo { policy: None, direction: Direction::Ingress, index: 0, cluster: None });
            let hosts: Vec<u32> =
                ids.peers.values().filter(|p| p.kind == identities::PeerKind::Host).map(|p| p.id).collect();
            for (&class, f) in &flags {
                if f & EP_INGRESS_ISOLATED != 0 {
                    for &h in &hosts {
                        host.push(rules::entry(class, Direction::Ingress, h, None));
                    }
                }
            }
        } else {
            self.out.catalog.rules.remove(&RULE_HOST);
        }
        if host != self.host {
            for prefix in std::mem::take(&mut self.host) {
                if remove_contributor(&mut self.contributors, &prefix, &Claim::host(RULE_HOST)) {
                    touched.push(prefix);
                }
            }
            for prefix in &host {
                if add_contributor(&mut self.contributors, *prefix, Claim::host(RULE_HOST)) {
                    touched.push(*prefix);
                }
            }
            self.host = host;
        }

        // ClusterNetworkPolicy tiers: the whole entries of every pair a
        // cluster policy selects, again whenever anything changed.
        let anything = first
            || rebuilt
            || !policy_changes.is_empty()
            || !cluster_same
            || !nodes_same
            || self.node.as_ref() != Some(node);
        if anything && (!input.cluster_policies.is_empty() || self.tiered != tiers::Tiered::default()) {
            let np = self.np_entries_of_tiered(input);
            let taken: BTreeSet<u32> =
                self.out.catalog.rules.iter().filter(|(_, r)| r.cluster.is_none()).map(|(id, _)| *id).collect();
            let tiered = tiers::resolve(input, node, ids, &self.classes, &np, &flags, &taken);
            if tiered != self.tiered {
                let old = std::mem::replace(&mut self.tiered, tiered);
                for id in old.rules.keys() {
                    if self.out.catalog.rules.get(id).is_some_and(|r| r.cluster.is_some()) {
                        self.out.catalog.rules.remove(id);
                    }
                }
                self.out.catalog.rules.extend(self.tiered.rules.iter().map(|(k, v)| (*k, v.clone())));
                touched.extend(old.entries.keys().copied());
                touched.extend(self.tiered.entries.keys().copied());
                // Pairs that switched between tiered and not: their
                // NetworkPolicy entries leave or come back.
                let switched: BTreeSet<(u32, u8)> =
                    old.pairs.symmetric_difference(&self.tiered.pairs).copied().collect();
                if !switched.is_empty() {
                    touched.extend(self.contributors.keys().filter(|p| switched.contains(&pair_of(p))).copied());
                }
            }
        }

        // The policy map, where it changed (the first compile: all of it).
        let touched = if first {
            touched.extend(self.contributors.keys().copied());
            touched.into_sorted_in_place()
        } else {
            touched.into_sorted()
        };
        let mut changed = Vec::new();
        for prefix in touched {
            let want = if self.tiered.pairs.contains(&pair_of(&prefix)) {
                self.tiered.entries.get(&prefix).copied()
            } else {
                self.contributors.get(&prefix).map(|c| PolicyValue::allow(c.first().rule))
            };
            // One search of the map per entry, not a lookup then a write.
            match want {
                Some(v) => match self.out.policy.entry(prefix) {
                    btree_map::Entry::Occupied(e) if *e.get() == v => continue,
                    btree_map::Entry::Occupied(mut e) => {
                        e.insert(v);
                    }
                    btree_map::Entry::Vacant(e) => {
                        e.insert(v);
                        reshape(&mut self.shapes, &prefix, true);
                    }
                },
                None => {
                    if self.out.policy.remove(&prefix).is_none() {
                        continue;
                    }
                    reshape(&mut self.shapes, &prefix, false);
                }
            }
            // The first compile changes the whole map, which it says with
            // None: a set of every entry would only add to the peak.
            if !first {
                changed.push((prefix, want));
            }
        }
        self.changes = Changes { policy: (!first).then_some(changed), ips: ips_changed };
        if first {
            // Lists of contributors grew a claim at a time; they are kept.
            for c in self.contributors.values_mut() {
                if let Contributors::Many(list) = c {
                    list.shrink_to_fit();
                }
            }
        }

        // Local endpoints: isolated as their policies say, audited as the
        // node or their namespace says.
        self.out.endpoints = ids
            .local(node)
            .map(|(gi, pod)| {
                let g = &ids.groups[gi];
                let class = self.classes.of(gi);
                let mut f =
                    flags.get(&class).copied().unwrap_or(0) | self.tiered.flags.get(&class).copied().unwrap_or(0);
                if node.audit || g.ns.audit {
                    f |= EP_AUDIT;
                }
                if self.shapes.get(&class).is_none_or(|s| s[2] == 0) {
                    f |= EP_NO_NAMESPACE;
                }
                let parent = self.classes.parent_of(class);
                if parent != 0 {
                    f |= self.skips(parent);
                }
                LocalEndpoint {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    ips: pod.ips.clone(),
                    identity: g.id,
                    class,
                    parent,
                    flags: f,
                }
            })
            .collect();
        self.out.warnings = self.warnings.0.iter().chain(&self.warnings.1).cloned().collect();
        self.input = Some(input.clone());
        self.node = Some(node.clone());
        &self.out
    }
}

impl Compiler {
    /// The flags saying which lookups a parent's entries let its
    /// children skip: none for a class a ClusterNetworkPolicy selects
    /// (its entries may deny; no parent is one, this keeps it so).
    fn skips(&self, parent: u32) -> u32 {
        if self.tiered.flags.get(&parent).is_some_and(|f| f & (EP_INGRESS_TIERED | EP_EGRESS_TIERED) != 0) {
            return 0;
        }
        let [short, any, namespace] = self.shapes.get(&parent).copied().unwrap_or_default();
        (if short == 0 { EP_PARENT_NO_SHORT } else { 0 })
            | (if any == 0 { EP_PARENT_NO_ANY } else { 0 })
            | (if namespace == 0 { EP_PARENT_NO_NAMESPACE } else { 0 })
    }

    /// The NetworkPolicy and node allowance entries in force (the first
    /// contributor of each) of every pair a cluster policy may select, with
    /// their rules; those keyed by namespace as the entries of its pods'
    /// identities (the tiers resolve per peer).
    fn np_entries_of_tiered(&self, input: &Input) -> HashMap<(u32, u8), Vec<(PolicyPrefix, u32)>> {
        let mut out: HashMap<(u32, u8), Vec<(PolicyPrefix, u32)>> = HashMap::new();
        if input.cluster_policies.is_empty() {
            return out;
        }
        let mut by_namespace: Option<HashMap<u32, Vec<u32>>> = None;
        for (prefix, list) in &self.contributors {
            let pair = pair_of(prefix);
            if !self.classes.lead.contains_key(&pair.0) {
                continue;
            }
            let rule = list.first().rule;
            if prefix.key.direction & DIR_BY_NAMESPACE == 0 {
                out.entry(pair).or_default().push((*prefix, rule));
                continue;
            }
            let peers = by_namespace.get_or_insert_with(|| self.ids.as_ref().expect("identities").peers_by_namespace());
            for &peer in peers.get(&u32::from_be_bytes(prefix.key.peer)).into_iter().flatten() {
                let key = PolicyKey { direction: pair.1, peer: peer.to_be_bytes(), ..prefix.key };
                out.entry(pair).or_default().push((PolicyPrefix { key, ..*prefix }, rule));
            }
        }
        for list in out.values_mut() {
            list.sort();
        }
        out
    }
}

/// Per class, its entries shorter than a full key, those for any peer and
/// those keyed by namespace; counted for every entry that comes or goes
/// (foldhash, as the contributions: a namespace's root was 50k entries at
/// 10k x 10k).
type Shapes = HashMap<u32, [u32; 3], foldhash::fast::RandomState>;

/// Counts an entry of the policy map in (or out of) its class's shape.
fn reshape(shapes: &mut Shapes, prefix: &PolicyPrefix, added: bool) {
    let class = u32::from_be_bytes(prefix.key.local);
    let by_namespace = prefix.key.direction & DIR_BY_NAMESPACE != 0;
    let kinds = [
        prefix.prefix_len < POLICY_PREFIX_FULL,
        !by_namespace && u32::from_be_bytes(prefix.key.peer) == PEER_ANY,
        by_namespace,
    ];
    let shape = shapes.entry(class).or_default();
    for (count, is) in shape.iter_mut().zip(kinds) {
        if is {
            *count = if added { *count + 1 } else { *count - 1 };
        }
    }
    if *shape == [0, 0, 0] {
        shapes.remove(&class);
    }
}

/// The (class, direction code) an entry belongs to, whether keyed by
/// identity or by namespace.
fn pair_of(prefix: &PolicyPrefix) -> (u32, u8) {
    (u32::from_be_bytes(prefix.key.local), prefix.key.direction & !DIR_BY_NAMESPACE)
}

/// An entry's contributors, the deciding claim (the first in
/// [`Claim::precedes`] order) at the head: it is read for every claim
/// added, and a new identity's claims mostly land on entries other
/// policies decide already (ten claims per entry at 50k pods x 50k
/// policies in the bench's cluster, two at 10k x 10k). A lone claim is
/// held inline: a list each would be an allocation per entry.
#[derive(Debug)]
enum Contributors {
    One(Claim),
    Many(Vec<Claim>),
}

impl Contributors {
    /// Adds a claim; whether it decides now.
    fn push(&mut self, c: Claim) -> bool {
        let decides = self.first().precedes(&c).is_ge();
        match self {
            Contributors::Many(all) => {
                // Grown by half, not doubled: a new identity's 50k lists
                // of ten claims end at 11, not 16 (4 MB less at 50k pods
                // x 50k policies).
                if all.len() == all.capacity() {
                    all.reserve_exact(all.len() / 2 + 1);
                }
                all.push(c);
                if decides {
                    let last = all.len() - 1;
                    all.swap(0, last);
                }
            }
            // The lone claim moves into a list; its clone is an `Arc`'s.
            Contributors::One(first) if decides => *self = Contributors::Many(vec![c, first.clone()]),
            Contributors::One(first) => *self = Contributors::Many(vec![first.clone(), c]),
        }
        decides
    }

    /// The claim that decides.
    fn first(&self) -> &Claim {
        match self {
            Contributors::One(c) => c,
            Contributors::Many(list) => &list[0],
        }
    }
}

/// Entries whose deciding claim may have changed: tens of thousands when
/// a class comes or goes, named many times over (a pod of a new class
/// leaving takes ten claims from each of its 50k entries at 50k
/// pods x 50k policies, each deciding in turn: 500k names, 8 MB of list
/// and 12 MB while it doubled). Deduplicated before the list grows, so it
/// holds a few times the entries it names, not every name.
#[derive(Default)]
struct Touched(Vec<PolicyPrefix>);

impl Touched {
    fn push(&mut self, prefix: PolicyPrefix) {
        if self.0.len() == self.0.capacity() {
            self.compact();
            // Still over half full: room to double, so each sort is paid
            // for by as many pushes as it looked at.
            if self.0.len() > self.0.capacity() / 2 {
                self.0.reserve(self.0.capacity());
            }
        }
        self.0.push(prefix);
    }

    /// A stable sort: the names come in sorted runs (a part's entries,
    /// the list compacted before), which it merges; the unstable one took
    /// a fifth of a compile that adds or removes a namespace's root.
    fn compact(&mut self) {
        self.0.sort();
        self.0.dedup();
    }

    /// The entries named, each once, in order.
    fn into_sorted(mut self) -> Vec<PolicyPrefix> {
        self.compact();
        self.0
    }

    /// The same, sorted in place: for millions of names in no order (the
    /// first compile's whole map), where a stable sort's scratch, half
    /// the list, would add to the agent's peak memory and its runs do not
    /// help.
    fn into_sorted_in_place(mut self) -> Vec<PolicyPrefix> {
        self.0.sort_unstable();
        self.0.dedup();
        self.0
    }
}

impl Extend<PolicyPrefix> for Touched {
    /// Room for more names than the list holds, if that many are known
    /// to come: the first compile's 100k distinct entries would otherwise
    /// be sorted at every doubling.
    fn extend<I: IntoIterator<Item = PolicyPrefix>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        let coming = iter.size_hint().0;
        if coming > self.0.len() {
            self.0.reserve(coming);
        }
        iter.for_each(|p| self.push(p));
    }
}

/// Every entry's contributors. foldhash, seeded per process: the
/// standard SipHash was a tenth of a compile that adds a local identity.
type Contributions = HashMap<PolicyPrefix, Contributors, foldhash::fast::RandomState>;

/// Adds a claim; whether the entry's deciding claim may have changed (the
/// entry is new, or the claim comes first), so the entry is looked at again.
#[must_use]
fn add_contributor(contributors: &mut Contributions, prefix: PolicyPrefix, c: Claim) -> bool {
    use std::collections::hash_map::Entry;
    match contributors.entry(prefix) {
        Entry::Vacant(e) => {
            e.insert(Contributors::One(c));
            true
        }
        Entry::Occupied(mut e) => e.get_mut().push(c),
    }
}

/// Removes a claim; whether the entry's deciding claim may have changed
/// (it was this rule's).
#[must_use]
fn remove_contributor(contributors: &mut Contributions, prefix: &PolicyPrefix, claim: &Claim) -> bool {
    let Some(c) = contributors.get_mut(prefix) else { return false };
    let decided = c.first().same_rule(claim);
    let empty = match c {
        Contributors::One(o) => o.same_rule(claim),
        Contributors::Many(list) => {
            if let Some(i) = list.iter().position(|o| o.same_rule(claim)) {
                list.swap_remove(i);
                // The deciding claim left: the next one moves to the head.
                if i == 0
                    && let Some(next) = (0..list.len()).min_by(|&a, &b| list[a].precedes(&list[b]))
                {
                    list.swap(0, next);
                }
            }
            // Back inline when one is left.
            if list.len() == 1 {
                let only = list.pop().expect("one left");
                *c = Contributors::One(only);
                false
            } else {
                list.is_empty()
            }
        }
    };
    if empty {
        contributors.remove(prefix);
    }
    decided
}

/// Whether two maps of shared objects hold the same objects (the same
/// `Arc`s, or equal ones).
fn same_objects<K: Ord, V: PartialEq>(a: &ChunkedMap<K, Arc<V>>, b: &ChunkedMap<K, Arc<V>>) -> bool {
    a.len() == b.len() && b.changes_from(a, same_object).next().is_none()
}

/// The keys whose objects differ between two maps: Some(new object) when
/// added or changed, None when removed. Chunks the maps share (a snapshot
/// patched from the last) are not looked at.
fn diff<'a, K: Ord, V: PartialEq>(
    old: &'a ChunkedMap<K, Arc<V>>,
    new: &'a ChunkedMap<K, Arc<V>>,
) -> Vec<(&'a K, Option<&'a Arc<V>>)> {
    new.changes_from(old, same_object).collect()
}

/// Whether a pod is scheduled to `node` and not on its host network.
fn is_here(pod: &Pod, node: &Node) -> bool {
    !pod.host_network && pod.node_name.as_deref() == Some(&node.name)
}

fn same_object<V: PartialEq>(a: &Arc<V>, b: &Arc<V>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::convert::manifests_to_input;

    const NODE: &str = "n1";

    /// The policy entries the last compile reports changed.
    fn changed_keys(compiler: &Compiler) -> Vec<PolicyPrefix> {
        compiler.changes().policy.iter().flatten().map(|(k, _)| *k).collect()
    }

    fn cluster(client_labels: &str, ns_labels: &str) -> Arc<Input> {
        let pod = |name: &str, labels: &str, ip: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a, labels: {{{labels}}}}}\n\
                 spec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
            )
        };
        let mut text =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{{ns_labels}}}}}\n---\n");
        text += &pod("client", client_labels, "10.0.0.1");
        text += &pod("server", "app: server", "10.0.0.2");
        for i in 0..20 {
            text += &pod(&format!("peer-{i}"), &format!("app: p{i}"), &format!("10.0.1.{i}"));
        }
        // Both local pods isolated, allowing every pod with an app label
        // (every pod, by identity: an empty selector would admit the
        // namespace by number) on many ports.
        for (name, app) in [("c", "client"), ("s", "server")] {
            text += &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: a}}\n\
                 spec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress:\n  - from: [{{podSelector: \
                 {{matchExpressions: [{{key: app, operator: Exists}}]}}}}]\n    \
                 ports: [{{port: 1000, endPort: 1100}}]\n---\n"
            );
        }
        // One policy only a probe=yes pod is selected by.
        text += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: gate, namespace: a}\n\
                 spec:\n  podSelector: {matchLabels: {probe: 'yes'}}\n  egress:\n  - to: [{podSelector: {matchLabels: {app: server}}}]\n    \
                 ports: [{port: 7011, protocol: UDP}]\n";
        Arc::new(manifests_to_input(&text).unwrap())
    }

    fn node() -> Node {
        Node { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false }
    }

    /// Every entry named comes out once, in order, and names given many
    /// times over do not grow the list past a few times the entries.
    #[test]
    fn touched_names_each_entry_once_and_stays_small() {
        let prefix = |i: u32| PolicyPrefix { prefix_len: 104, key: palisade_common::PolicyKey::new(i, 1, 7, 6, 80) };
        let mut touched = Touched::default();
        for round in 0..10u32 {
            // Each round names every entry, in an order of its own.
            touched.extend((0..50_000u32).map(|i| prefix((i * 7919 + round) % 50_000)));
        }
        assert!(touched.0.capacity() <= 4 * 50_000, "capacity {}", touched.0.capacity());
        let sorted = touched.into_sorted();
        assert_eq!(sorted, (0..50_000).map(prefix).collect::<Vec<_>>());
    }

    fn identity_of(c: &Compiled, name: &str) -> u32 {
        c.endpoints.iter().find(|e| e.name == name).unwrap().identity
    }

    fn class_of(c: &Compiled, name: &str) -> u32 {
        c.endpoints.iter().find(|e| e.name == name).unwrap().class
    }

    /// Policies of one name in two namespaces are two policies: the pods
    /// they select share no class, and neither is allowed by the other's
    /// rules (they were, when a class was keyed by policy names alone).
    #[test]
    fn policies_of_one_name_in_two_namespaces_make_two_classes() {
        let mut text = String::new();
        for (ns, port, ip) in [("a", 80, "10.0.0.1"), ("b", 90, "10.0.0.2")] {
            text += &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: {ns}, labels: {{app: x}}}}\n\
                 spec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n\
                 apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow, namespace: {ns}}}\n\
                 spec:\n  podSelector: {{}}\n  ingress:\n  - ports: [{{port: {port}}}]\n---\n"
            );
        }
        let c = compile(&manifests_to_input(&text).unwrap(), &node());
        let ep = |ns: &str| c.endpoints.iter().find(|e| e.namespace == ns).unwrap().clone();
        let (a, b) = (ep("a"), ep("b"));
        assert_ne!(a.class, b.class);
        let allowed = |e: &LocalEndpoint, port| {
            crate::policy::lookup::decide(&c, &e.kernel(), Direction::Ingress, "10.9.9.9".parse().unwrap(), 6, port)
                .allowed
        };
        assert_eq!((allowed(&a, 80), allowed(&a, 90)), (true, false), "a's pod: its own policy's port only");
        assert_eq!((allowed(&b, 80), allowed(&b, 90)), (false, true), "b's pod: its own policy's port only");
    }

    #[test]
    fn a_relabel_keeps_the_number_and_moves_only_what_its_selection_changes() {
        let mut compiler = Compiler::default();
        let before = compiler.compile(&cluster("app: client", "team: x"), &node()).clone();
        let client = identity_of(&before, "client");
        let class = class_of(&before, "client");
        let entries = before.policy.keys().filter(|k| u32::from_be_bytes(k.key.local) == class).count();
        assert!(entries > 100, "the client has many entries ({entries})");

        let after = compiler.compile(&cluster("app: client, probe: 'yes'", "team: x"), &node()).clone();
        assert_eq!(identity_of(&after, "client"), client, "the client keeps its number");
        assert_eq!(class_of(&after, "client"), class, "and its class's, which only it had");
        let changed = changed_keys(&compiler);
        // The gate's egress entry (to the server) is all that is new, and
        // nothing else moved.
        assert_eq!(changed.len(), 1, "{changed:?}");
        let key = changed.first().unwrap().key;
        assert_eq!((u32::from_be_bytes(key.local), key.direction), (class, Direction::Egress.code()));
        assert_eq!(
            after,
            compile_with_hints(&cluster("app: client, probe: 'yes'", "team: x"), &node(), &hints_of(&before))
        );

        // A namespace's labels are not part of a number either.
        let relabelled_ns = compiler.compile(&cluster("app: client, probe: 'yes'", "team: other"), &node()).clone();
        assert_eq!(identity_of(&relabelled_ns, "client"), client);
        assert_eq!(compiler.changes().policy.as_ref().map(Vec::len), Some(0));
    }

    /// The cluster with `edit` applied to its pods, namespaces and
    /// policies, on a clone of `base` (which shares its maps' chunks, as
    /// the files source's snapshots do).
    fn edited(base: &Input, edit: usize) -> Arc<Input> {
        fn key(name: &str) -> (String, String) {
            ("a".to_string(), name.to_string())
        }
        fn pod(input: &mut Input, name: &str, f: &dyn Fn(&mut crate::policy::Pod)) {
            if let Some(p) = input.pods.get(&key(name)) {
                let mut p = (**p).clone();
                f(&mut p);
                input.pods.insert(key(name), Arc::new(p));
            }
        }
        let mut input = base.clone();
        match edit % 9 {
            0 => pod(&mut input, "client", &|p| drop(p.labels.insert("probe".into(), "yes".into()))),
            1 => pod(&mut input, "client", &|p| drop(p.labels.remove("probe"))),
            2 => pod(&mut input, &format!("peer-{}", edit % 20), &|p| {
                drop(p.labels.insert("app".into(), "server".into()))
            }),
            3 => drop(input.pods.remove(&key(&format!("peer-{}", edit % 20)))),
            4 => {
                let mut p = (*input.pods[&key("server")]).clone();
                p.name = format!("server-{edit}");
                p.ips = vec![format!("10.0.2.{}", edit % 250).parse().unwrap()];
                input.pods.insert(key(&p.name.clone()), Arc::new(p));
            }
            5 => {
                let mut ns = (*input.namespaces["a"]).clone();
                ns.labels.insert("team".into(), format!("t{}", edit % 3));
                input.namespaces.insert("a".into(), Arc::new(ns));
            }
            6 => pod(&mut input, "server", &|p| {
                p.node_name = Some(if edit.is_multiple_of(2) { "other" } else { NODE }.into())
            }),
            // A copy of the gate, every other one namespace-wide: the
            // namespace's root comes and goes.
            7 => {
                let mut p = (*input.policies[&key("gate")]).clone();
                p.name = format!("gate-{edit}");
                if (edit / 9).is_multiple_of(2) {
                    p.pod_selector = Default::default();
                }
                input.policies.insert(key(&p.name.clone()), Arc::new(p));
            }
            _ => {
                let copy = input.policies.keys().find(|(_, n)| n.starts_with("gate-")).cloned();
                if let Some(k) = copy {
                    input.policies.remove(&k);
                }
            }
        }
        Arc::new(input)
    }

    /// A number two namespaces share keys no entry: the rules admitting
    /// either admit its pods by identity, so neither is admitted for the
    /// other (numbers folded into one value, every namespace's the same).
    #[test]
    fn namespaces_whose_numbers_collide_are_admitted_by_identity() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{team: x}}}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: b, labels: {{team: other}}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: a}}\n\
             spec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.1}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: peer, namespace: a}}\n\
             spec: {{nodeName: other, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.2}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: stranger, namespace: b}}\n\
             spec: {{nodeName: other, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.3}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: team, namespace: a}}\n\
             spec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: x}}}}}}]\n\
                 ports: [{{port: 80}}]\n"
        );
        let input = manifests_to_input(&text).unwrap();
        for space in [0, 1] {
            ids::SPACE.with(|s| s.set(space));
            let c = compile(&input, &node());
            let by_namespace = c.policy.keys().filter(|k| k.key.direction & DIR_BY_NAMESPACE != 0).count();
            assert_eq!(by_namespace, usize::from(space == 0), "space {space}: keyed by namespace unless shared");
            let server = c.endpoints.iter().find(|e| e.name == "server").unwrap().kernel();
            let from = |ip: &str| {
                crate::policy::lookup::decide(&c, &server, Direction::Ingress, ip.parse().unwrap(), 6, 80).allowed
            };
            assert!(from("10.0.0.2"), "space {space}: team x's pod is admitted");
            assert!(!from("10.0.0.3"), "space {space}: the other team's is not");
        }
        ids::SPACE.with(|s| s.set(0));
    }

    #[test]
    fn pod_and_namespace_changes_update_identities_in_place_as_a_compile_from_scratch_would() {
        // The real number space, then small ones where numbers collide
        // (a collision falls back to building whole).
        for space in [0, 4096, 61] {
            ids::SPACE.with(|s| s.set(space));
            let mut compiler = Compiler::default();
            let mut input = cluster("app: client", "team: x");
            let mut prev = compiler.compile(&input, &node()).clone();
            let mut rooted = 0;
            for step in 0..60 {
                input = edited(&input, step);
                let hints = hints_of(&prev);
                let builds = compiler.whole_builds;
                let out = compiler.compile(&input, &node()).clone();
                assert_eq!(out, compile_with_hints(&input, &node(), &hints), "space {space}, step {step}");
                rooted += usize::from(out.endpoints.iter().any(|e| e.parent != 0));
                if space == 0 {
                    assert_eq!(compiler.whole_builds, builds, "step {step} updated identities in place");
                }
                prev = out;
            }
            assert!((3..60).contains(&rooted), "the namespace's root came and went ({rooted} of 60 steps)");
            if space == 61 {
                assert!(compiler.whole_builds > 1, "collisions build whole");
            }
        }
        ids::SPACE.with(|s| s.set(0));
    }

    /// The programming bench's cluster (bench/src/cluster.rs), cut down:
    /// 100 namespaces, `pods` pods (two local ones in ns-0), `policies`
    /// generated policies and the two bench policies; plus `extra` objects.
    fn bench_cluster(pods: usize, policies: usize, extra: &[serde_json::Value]) -> Arc<Input> {
        use serde_json::json;
        let pod = |ns: &str, name: &str, labels: serde_json::Value, node: &str, ip4: String, ip6: String| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"namespace": ns, "name": name, "labels": labels},
                   "spec": {"nodeName": node, "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 8080}]}]},
                   "status": {"phase": "Running", "podIP": ip4, "podIPs": [{"ip": ip4}, {"ip": ip6}]}})
        };
        let policy = |ns: &str, name: &str, spec: serde_json::Value| {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"namespace": ns, "name": name}, "spec": spec})
        };
        let tiers = ["web", "api", "db", "cache"];
        let mut objects = Vec::new();
        for k in 0..100 {
            objects.push(json!({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": format!("ns-{k}"), "labels": {"team": format!("team-{}", k % 10)}}}));
        }
        for i in 0..pods - 2 {
            let labels = json!({"app": format!("app-{}", (i / 100) % 50), "tier": tiers[i % 4]});
            let (ip4, ip6) = (format!("10.201.{}.{}", (i + 1) / 256, (i + 1) % 256), format!("fd00:201::{:x}", i + 1));
            objects.push(pod(
                &format!("ns-{}", i % 100),
                &format!("pod-{i}"),
                labels,
                &format!("remote-{}", i % 64),
                ip4,
                ip6,
            ));
        }
        objects.push(pod(
            "ns-0",
            "client",
            json!({"app": "client", "tier": "web"}),
            NODE,
            "10.200.0.2".into(),
            "fd00:200::2".into(),
        ));
        objects.push(pod(
            "ns-0",
            "server",
            json!({"app": "server", "tier": "api"}),
            NODE,
            "10.200.0.3".into(),
            "fd00:200::3".into(),
        ));
        for j in 0..policies {
            let team = format!("team-{}", (j / 100) % 10);
            let spec = match j % 10 {
                0 => json!({"podSelector": {}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                                         "ports": [{"protocol": "TCP", "port": 9100 + (j / 100) % 50}]}]}),
                5 => json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                    {"to": [{"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": {"matchLabels": {"tier": "db"}}}],
                     "ports": [{"protocol": "TCP", "port": 5432}]},
                    {"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}], "ports": [{"protocol": "UDP", "port": 53}]}]}),
                _ => {
                    let app = (j / 100) % 50;
                    let port = 8000 + (j % 97) * 32;
                    let ports = if j % 3 == 0 {
                        json!([{"protocol": "TCP", "port": port, "endPort": port + 31}])
                    } else {
                        json!([{"protocol": "TCP", "port": port}])
                    };
                    json!({"podSelector": {"matchLabels": {"app": format!("app-{app}")}}, "policyTypes": ["Ingress"],
                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (app + 1) % 50)}}},
                                                 {"namespaceSelector": {"matchLabels": {"team": team}},
                                                  "podSelector": {"matchLabels": {"tier": "web"}}}], "ports": ports}]})
                }
            };
            objects.push(policy(&format!("ns-{}", j % 100), &format!("pol-{j:05}"), spec));
        }
        let by_peer = json!([{"protocol": "TCP", "port": 7000, "endPort": 7003}, {"protocol": "UDP", "port": 7000, "endPort": 7003}]);
        objects.push(policy("ns-0", "bench-server", json!({"podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": by_peer},
            {"ports": [{"protocol": "TCP", "port": 7100}, {"protocol": "UDP", "port": 7100}]}]})));
        objects.push(policy("ns-0", "bench-client", json!({"podSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": by_peer}]})));
        objects.extend(extra.iter().cloned());
        Arc::new(crate::cluster::convert::objects_to_input(objects).expect("valid input"))
    }

    /// A parent must hold entries: a class whose subset is a namespace's
    /// default deny alone (no rule, so no entry) has none, as its flows
    /// would only pay the parent's lookups. With a namespace-wide rule,
    /// the namespace's root is every other class's parent: p1's class
    /// when only the namespace-wide policies select p1, else a class
    /// without members, which holds their entries.
    #[test]
    fn a_parent_has_a_rule() {
        let text = |base: bool, db_rule: bool| {
            let mut t = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n");
            for (name, app, ip) in [("p1", "db", "10.0.0.1"), ("p2", "web", "10.0.0.2")] {
                t += &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a, labels: {{app: {app}}}}}\n\
                     spec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
                );
            }
            let np = |name: &str, spec: &str| {
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: a}}\nspec:\n{spec}---\n"
                )
            };
            t += &np("deny", "  podSelector: {}\n  policyTypes: [Ingress]\n");
            t += &np("allow-web", "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - ports: [{port: 80}]\n");
            if base {
                t += &np("base", "  podSelector: {}\n  ingress:\n  - ports: [{port: 53, protocol: UDP}]\n");
            }
            if db_rule {
                t +=
                    &np("allow-db", "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: 5432}]\n");
            }
            manifests_to_input(&t).unwrap()
        };
        let ep = |c: &Compiled, name: &str| c.endpoints.iter().find(|e| e.name == name).unwrap().clone();
        let parent = |c: &Compiled| (ep(c, "p2").parent == ep(c, "p1").class, ep(c, "p2").parent);
        assert_eq!(parent(&compile(&text(false, false), &node())), (false, 0), "the default deny alone: no parent");
        assert_eq!(parent(&compile(&text(false, true), &node())), (false, 0), "no namespace-wide rule: no root");
        assert!(parent(&compile(&text(true, false), &node())).0, "p1's policies are the root's: p1's class is it");

        let c = compile(&text(true, true), &node());
        let (p1, p2) = (ep(&c, "p1"), ep(&c, "p2"));
        let root = p1.parent;
        assert!(root != 0 && p2.parent == root && root != p1.class && root != p2.class, "{p1:?} {p2:?}");
        let of = |class: u32| c.policy.keys().filter(|k| u32::from_be_bytes(k.key.local) == class).count();
        assert_eq!(of(root), 1, "the root holds base's rule (UDP 53 from anyone)");
        let dns = |e: &LocalEndpoint| {
            crate::policy::lookup::decide(&c, &e.kernel(), Direction::Ingress, "10.9.9.9".parse().unwrap(), 17, 53)
        };
        assert!(dns(&p1).allowed && dns(&p2).allowed, "both judged by the root's entry");
        // The root holds one port for any peer.
        use palisade_common::{EP_NO_NAMESPACE, EP_PARENT_NO_NAMESPACE, EP_PARENT_NO_SHORT, EP_SKIPS};
        let skips = EP_PARENT_NO_SHORT | EP_PARENT_NO_NAMESPACE | EP_NO_NAMESPACE;
        assert_eq!((p1.flags & EP_SKIPS, p2.flags & EP_SKIPS), (skips, skips));
        // The root coming (p1 selected by more) and going, incrementally.
        let mut compiler = Compiler::default();
        let mut last = compiler.compile(&Arc::new(text(true, false)), &node()).clone();
        for step in [text(true, true), text(true, false), text(false, true), text(true, true)] {
            let now = compiler.compile(&Arc::new(step.clone()), &node()).clone();
            assert_eq!(now, compile_with_hints(&step, &node(), &hints_of(&last)), "as a compile from scratch");
            last = now;
        }
    }

    /// A pod of labels no other local pod has (the bench's pod of a new
    /// class: the client's app label and the label gate's) takes its
    /// namespace's root as its parent, as the client does: its class holds
    /// its own policies' entries, the client's and the gate's, and none of
    /// the namespace-wide policies' (the root's); every verdict is the
    /// client's but for what the gate adds.
    #[test]
    fn a_class_of_new_labels_holds_only_its_own_policies() {
        use serde_json::json;
        let gate = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "ns-0", "name": "label-gate"},
            "spec": {"podSelector": {"matchLabels": {"probe": "yes"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
                                 "ports": [{"protocol": "UDP", "port": 7011}]}]}});
        let added = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "ns-0", "name": "added", "labels": {"app": "client", "probe": "yes"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": "10.200.0.4", "podIPs": [{"ip": "10.200.0.4"}, {"ip": "fd00:200::4"}]}});
        let node = Node { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false };
        let base = bench_cluster(2000, 2000, std::slice::from_ref(&gate));
        let with = bench_cluster(2000, 2000, &[gate, added]);
        let mut compiler = Compiler::default();
        let before = compiler.compile(&base, &node).clone();
        let after = compiler.compile(&with, &node).clone();
        assert_eq!(after, compile_with_hints(&with, &node, &hints_of(&before)), "as a compile from scratch");
        let ep = |c: &Compiled, name: &str| c.endpoints.iter().find(|e| e.name == name).unwrap().clone();
        let (client, server, new) = (ep(&after, "client"), ep(&after, "server"), ep(&after, "added"));
        assert_ne!(new.class, client.class);
        let root = client.parent;
        assert!(root != 0 && after.endpoints.iter().all(|e| e.class != root), "a root without members");
        assert_eq!((new.parent, server.parent), (root, root), "every class of ns-0 takes the root");
        // The root's entries are to team namespaces on one port each; the
        // client's class holds none keyed by namespace.
        use palisade_common::{DIR_BY_NAMESPACE, EP_NO_NAMESPACE, EP_PARENT_NO_ANY, EP_PARENT_NO_SHORT, EP_SKIPS};
        assert_eq!(client.flags & EP_SKIPS, EP_PARENT_NO_SHORT | EP_PARENT_NO_ANY | EP_NO_NAMESPACE);
        let of = |class: u32| after.policy.keys().filter(|k| u32::from_be_bytes(k.key.local) == class).count();
        let changed = changed_keys(&compiler);
        // ns-0's 20 namespace-wide policies admit a team's 10 namespaces
        // each, on a port: an entry per (namespace, port), not one per
        // pod identity in them.
        let by_namespace = |k: &&PolicyPrefix| k.key.direction & DIR_BY_NAMESPACE != 0;
        assert_eq!(of(root), 200, "the root has the namespace-wide entries");
        assert_eq!(
            after.policy.keys().filter(|k| u32::from_be_bytes(k.key.local) == root).filter(by_namespace).count(),
            200
        );
        assert!(of(client.class) < 10, "the client's class holds its own policy's ({})", of(client.class));
        // The new class holds the client's policy's entries and the gate's
        // (to the server); the other entries that came are rules admitting
        // the new pod as a peer.
        assert_eq!(of(new.class), of(client.class) + 2, "the new class holds the gate's entries and the client's");
        let peers: Vec<u32> = new.ips.iter().map(|&ip| crate::policy::lookup::peer_identity(&after, ip)).collect();
        for k in &changed {
            let (local, peer) = (u32::from_be_bytes(k.key.local), u32::from_be_bytes(k.key.peer));
            assert!(local == new.class || peers.contains(&peer), "{k:?}");
        }
        assert!(changed.len() < 30, "{} entries changed", changed.len());

        // Every verdict the client gets, but the gate's port to the server.
        use std::net::IpAddr;
        let server: IpAddr = "10.200.0.3".parse().unwrap();
        let mut remotes: Vec<IpAddr> = (0..2000)
            .step_by(37)
            .map(|i| format!("10.201.{}.{}", (i + 1) / 256, (i + 1) % 256).parse().unwrap())
            .collect();
        remotes.extend([server, "10.96.0.10".parse().unwrap(), "192.0.2.1".parse().unwrap()]);
        let ports: Vec<u16> =
            [53, 5432, 7000, 7011, 7100].into_iter().chain(9100..9120).chain((8000..11104).step_by(97)).collect();
        let mut allowed = 0;
        for dir in [Direction::Ingress, Direction::Egress] {
            for &remote in &remotes {
                for proto in [6, 17] {
                    for &port in &ports {
                        let judge = |e: &LocalEndpoint| {
                            crate::policy::lookup::decide(&after, &e.kernel(), dir, remote, proto, port)
                        };
                        let (c, n) = (judge(&client), judge(&new));
                        allowed += usize::from(n.allowed);
                        if dir == Direction::Egress && remote == server && proto == 17 && port == 7011 {
                            assert!(n.allowed && !c.allowed, "the gate's port");
                        } else {
                            assert_eq!(n, c, "{dir} {remote} {proto}/{port}");
                        }
                    }
                }
            }
        }
        assert!(allowed > 50, "the parent's entries allow ({allowed})");

        // Deleted: what came leaves, nothing else moves.
        let gone = compiler.compile(&base, &node).clone();
        assert_eq!(gone, compile_with_hints(&base, &node, &hints_of(&after)));
        assert_eq!(compiler.changes().policy.as_ref().map(Vec::len), Some(changed.len()));
    }

    /// A pod scheduled here whose address is not known yet brings its
    /// namespace's root (the first pod of ns-10, where namespace-wide
    /// policies are): every entry of those policies is in before the
    /// address comes, and the address then moves only entries admitting
    /// it as a peer; its terminal phase takes those out, the root stays
    /// until the pod object goes. Each step as a compile from scratch.
    #[test]
    fn a_pods_namespace_root_comes_when_it_is_scheduled_and_goes_with_its_object() {
        use serde_json::json;
        let pod = |phase: &str| {
            let mut p = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": "ns-10", "name": "first", "labels": {"app": "newcomer"}},
                "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
                "status": {"phase": phase}});
            if phase != "Pending" {
                p["status"]["podIP"] = json!("10.200.0.9");
                p["status"]["podIPs"] = json!([{"ip": "10.200.0.9"}]);
            }
            p
        };
        let node = Node { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false };
        let elsewhere = {
            let mut p = pod("Pending");
            p["spec"]["nodeName"] = json!("other");
            p
        };
        let steps = [
            (bench_cluster(2000, 2000, &[]), false),
            (bench_cluster(2000, 2000, &[elsewhere]), false),
            (bench_cluster(2000, 2000, &[pod("Pending")]), true),
            (bench_cluster(2000, 2000, &[pod("Running")]), true),
            (bench_cluster(2000, 2000, &[pod("Succeeded")]), true),
            (bench_cluster(2000, 2000, &[]), false),
        ];
        let mut compiler = Compiler::default();
        let mut last = compiler.compile(&steps[0].0, &node).clone();
        let (mut root_entries, mut me) = (0, 0);
        for (i, (input, rooted)) in steps.iter().enumerate().skip(1) {
            let now = compiler.compile(input, &node).clone();
            assert_eq!(now, compile_with_hints(input, &node, &hints_of(&last)), "step {i} as from scratch");
            let root = compiler.classes.root("ns-10");
            assert_eq!(root.is_some(), *rooted, "step {i}: the root of ns-10");
            let changed = changed_keys(&compiler);
            match i {
                1 => assert!(changed.is_empty(), "a pod scheduled elsewhere brings nothing"),
                2 => {
                    let root = root.unwrap();
                    root_entries = now.policy.keys().filter(|k| u32::from_be_bytes(k.key.local) == root).count();
                    // ns-10's 20 namespace-wide policies, a team's 10
                    // namespaces each (by number).
                    assert_eq!(root_entries, 200, "the root's entries came");
                    assert_eq!(changed.len(), root_entries, "they alone");
                    assert!(now.endpoints.iter().all(|e| e.namespace == "ns-0"), "no endpoint without an address");
                }
                3 => {
                    let first = now.endpoints.iter().find(|e| e.name == "first").expect("its endpoint");
                    // Only the namespace-wide policies select it: its
                    // class is the root, members now.
                    assert_eq!((first.class, first.parent), (root.unwrap(), 0), "its class is the root");
                    assert!(changed.len() < 30, "the address moved {} entries", changed.len());
                    me = crate::policy::lookup::peer_identity(&now, first.ips[0]);
                    assert!(changed.iter().all(|k| u32::from_be_bytes(k.key.peer) == me), "{changed:?}");
                }
                4 => {
                    assert!(now.endpoints.iter().all(|e| e.name != "first"), "done: no endpoint");
                    // The entries admitting its address by identity went
                    // (those admitting ns-10 by number stay, as it does).
                    assert!(changed.iter().all(|k| u32::from_be_bytes(k.key.peer) == me), "they alone: {changed:?}");
                    assert!(compiler.changes().ips.as_ref().is_some_and(|ips| !ips.is_empty()), "its address went");
                }
                5 => assert_eq!(changed.len(), root_entries, "the root's entries went with the pod object"),
                _ => unreachable!(),
            }
            last = now;
        }
    }

    #[test]
    fn a_pod_added_or_deleted_moves_only_its_own_entries() {
        // The bench's pod added (local, in ns-0, a group of its own) and a
        // remote one (a peer of ns-0's team-0 policies, which admit its
        // namespace by number: only its addresses change), then deleted.
        let added = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "ns-0", "name": "added", "labels": {"app": "client"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": "10.200.0.4", "podIPs": [{"ip": "10.200.0.4"}, {"ip": "fd00:200::4"}]}});
        let remote = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "ns-10", "name": "remote-added", "labels": {"app": "app-7", "tier": "web"}},
            "spec": {"nodeName": "remote-1", "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": "10.202.0.1", "podIPs": [{"ip": "10.202.0.1"}, {"ip": "fd00:202::1"}]}});
        let node = Node { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false };
        let base = bench_cluster(2000, 2000, &[]);
        let mut compiler = Compiler::default();
        let mut prev = compiler.compile(&base, &node).clone();
        let states = [
            bench_cluster(2000, 2000, std::slice::from_ref(&added)),
            base.clone(),
            bench_cluster(2000, 2000, std::slice::from_ref(&remote)),
            base,
        ];
        for (step, input) in states.iter().enumerate() {
            let (builds, moved) = (compiler.whole_builds, compiler.moved);
            let out = compiler.compile(input, &node).clone();
            assert_eq!(out, compile_with_hints(input, &node, &hints_of(&prev)), "step {step}");
            assert_eq!(compiler.whole_builds, builds, "step {step}: identities updated in place");
            // No two rules give one entry here: each entry moved is one
            // that changed.
            let changed = compiler.changes().policy.as_ref().map_or(0, Vec::len);
            assert_eq!(changed > 0, step < 2, "step {step} changes entries");
            assert!(compiler.changes().ips.as_ref().is_some_and(|ips| !ips.is_empty()), "step {step}");
            assert_eq!(compiler.moved - moved, changed, "step {step}: only the changed entries moved");
            prev = out;
        }
    }

    #[test]
    fn a_class_that_goes_takes_its_entries_out_whole() {
        // The bench's first pod of ns-10 (its namespace-wide policies'
        // root comes with it, a class of its own), added, then deleted:
        // the class goes, and its entries leave in one pass over the
        // contributions, not a claim at a time from every part.
        let first = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "ns-10", "name": "added", "labels": {"app": "client", "far": "yes"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": "10.200.0.4", "podIPs": [{"ip": "10.200.0.4"}, {"ip": "fd00:200::4"}]}});
        let node = Node { name: NODE.into(), host_ips: vec![], allow_host: true, audit: false };
        let base = bench_cluster(2000, 2000, &[]);
        let mut compiler = Compiler::default();
        let before = compiler.compile(&base, &node).clone();
        let with = compiler.compile(&bench_cluster(2000, 2000, std::slice::from_ref(&first)), &node).clone();
        let came = with.policy.len() - before.policy.len();
        // ns-10's 20 namespace-wide policies, a team's 10 namespaces each.
        assert_eq!(came, 200, "the root brings its namespace-wide policies' entries");
        let moved = compiler.moved;
        let out = compiler.compile(&base, &node).clone();
        assert_eq!(out, compile_with_hints(&base, &node, &hints_of(&with)));
        let removed = compiler.changes().policy.as_ref().expect("changes").iter().filter(|(_, v)| v.is_none()).count();
        assert_eq!(removed, came, "every entry of the class is taken out");
        // Parts take out only the entries that named the pod as a peer:
        // none (ns-0's namespace-wide rules admit team-0's namespaces, ns-10
        // among them, by namespace), not the class's.
        let by_parts = compiler.moved - moved;
        assert_eq!(by_parts, 0, "parts took out {by_parts} of {came} entries themselves");
    }

    #[test]
    fn a_pod_leaving_a_service_address_it_held_gives_the_address_back_to_the_service() {
        // A Service whose cluster IP a pod also owns is left out of the
        // address map (a warning); when the pod goes, a compile from
        // scratch flags the address as the Service's again.
        use crate::policy::compiled::IpPrefix;
        use ipnet::IpNet;
        use std::net::IpAddr;
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\n\
                 spec: {clusterIP: 10.0.1.3, ports: [{port: 80}]}\n";
        let extra = manifests_to_input(text).unwrap();
        let mut input = (*cluster("app: client", "team: x")).clone();
        input.services = extra.services;
        let input = Arc::new(input);
        let mut compiler = Compiler::default();
        let prev = compiler.compile(&input, &node()).clone();
        let mut gone = (*input).clone();
        gone.pods.remove(&("a".to_string(), "peer-3".to_string()));
        let gone = Arc::new(gone);
        let out = compiler.compile(&gone, &node()).clone();
        assert_eq!(out, compile_with_hints(&gone, &node(), &hints_of(&prev)));
        let ip = IpPrefix::from_net(IpNet::from("10.0.1.3".parse::<IpAddr>().unwrap()));
        assert_eq!(out.ips[&ip].flags, palisade_common::IP_SERVICE, "the cluster IP is the Service's again");
    }

    #[test]
    fn an_unchanged_state_changes_nothing_and_a_restart_keeps_the_kernels_numbers() {
        let mut compiler = Compiler::default();
        let input = cluster("app: client", "team: x");
        let first = compiler.compile(&input, &node()).clone();
        assert_eq!(compiler.changes().policy, None, "the first compile may change everything");
        compiler.compile(&input, &node());
        assert_eq!(compiler.changes().policy.as_ref().map(Vec::len), Some(0));
        // An agent restarting after the client's relabel (which changes
        // which policies select it) finds the classes the kernel's
        // endpoint entries hold and keeps them: what it writes is what the
        // agent before it had, the relabelled client's address aside.
        let relabelled = cluster("app: client, probe: 'yes'", "team: x");
        let before = compiler.compile(&relabelled, &node()).clone();
        let pinned = Hints { identities: Numbers::new(), classes: hints_of(&before).classes };
        let restarted = compile_with_hints(&relabelled, &node(), &pinned);
        assert_eq!(class_of(&restarted, "client"), class_of(&first, "client"));
        assert_eq!(class_of(&restarted, "server"), class_of(&first, "server"));
        let client = identity_of(&before, "client");
        let moved = |c: &Compiled| {
            let peers: BTreeSet<u32> = c
                .catalog
                .identities
                .iter()
                .filter_map(|(id, info)| match info {
                    crate::policy::compiled::IdentityInfo::Address { pod, .. } if *pod == identity_of(c, "client") => {
                        Some(*id)
                    }
                    _ => None,
                })
                .collect();
            c.policy
                .iter()
                .filter(|(k, _)| !peers.contains(&u32::from_be_bytes(k.key.peer)))
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>()
        };
        assert_eq!(moved(&restarted), moved(&before), "every entry but those naming the client's address");
        // Identities are not in the kernel: the client's derives from its
        // labels now, as it would have without the relabel's history.
        assert_ne!(identity_of(&restarted, "client"), client);
        assert_eq!(identity_of(&restarted, "client"), identity_of(&compile(&relabelled, &node()), "client"));
        // With the last compile's hints, a compile from scratch keeps both.
        let again = compile_with_hints(&relabelled, &node(), &hints_of(&before));
        assert_eq!(again, before);
    }
}
