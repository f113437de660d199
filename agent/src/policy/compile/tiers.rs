//! ClusterNetworkPolicy tiers, resolved at compile time into the same
//! policy trie NetworkPolicy uses, so the kernel still decides a new flow
//! with at most two lookups (the peer's identity, then any peer).
//!
//! For each policy class and direction some ClusterNetworkPolicy selects
//! (a *tiered* pair), every clause that can decide its traffic is put in
//! precedence order: the node allowance (`--allow-host`), then Admin rules
//! (policies by [`ClusterPolicy::order_key`], rules in order), then the
//! NetworkPolicy entries already compiled for it and, if NetworkPolicy
//! isolates it, the implicit deny, then Baseline rules, then the default
//! allow. A Pass skips the rest of its tier. Over the 24-bit space
//! (protocol << 16 | port) the first clause covering a point decides it.
//! Any-peer entries hold what a peer no peer-specific clause names gets;
//! a peer's own entries only where it gets something else. Entries equal
//! to what a miss means (isolated: deny; else: allow) are left out, so a
//! tiered pair that nothing changes costs no entry.

use super::classes::Classes;
use super::identities::{Identities, PeerKind};
use super::{ids, ports};
use crate::policy::compiled::{ClusterRuleInfo, PolicyPrefix, RULE_HOST, RuleInfo};
use crate::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, ClusterSubject, Direction, Input, Labels, Node, Tier,
};
use palisade_common::{EP_EGRESS_TIERED, EP_INGRESS_TIERED, PEER_ANY, POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyValue};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Bits of (protocol, port) in a policy key.
const WIDTH: u32 = 24;
/// The whole (protocol, port) space.
const ALL: Span = (0, (1 << WIDTH) - 1);

/// An inclusive range of (protocol << 16 | port).
type Span = (u32, u32);

/// What each point from a boundary on gets, in boundary order.
type Runs = Arc<Vec<(u32, Val)>>;

/// See [`Pair::signature`].
type Signature = (Vec<usize>, Option<u32>, bool, Option<usize>);

/// A verdict an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Val {
    deny: bool,
    rule: u32,
}

impl Val {
    fn value(self) -> PolicyValue {
        if self.deny { PolicyValue::deny(self.rule) } else { PolicyValue::allow(self.rule) }
    }
}

/// What tiers add to the compiled output.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Tiered {
    /// The whole policy entries of the tiered pairs.
    pub entries: BTreeMap<PolicyPrefix, PolicyValue>,
    /// (class, direction code) pairs whose entries are these.
    pub pairs: BTreeSet<(u32, u8)>,
    /// Class -> `EP_*_TIERED` flags.
    pub flags: BTreeMap<u32, u32>,
    /// Every ClusterNetworkPolicy rule, by number.
    pub rules: BTreeMap<u32, RuleInfo>,
}

/// Whether a cluster policy has a `nodes` peer (Node objects' addresses
/// then need identities of their own).
pub(super) fn has_node_peers(input: &Input) -> bool {
    input
        .cluster_policies
        .values()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.peers)
        .any(|p| matches!(p, ClusterPeer::Nodes(_)))
}

/// The rules of a cluster policy in the order they are numbered.
pub(super) fn cluster_rules(p: &ClusterPolicy) -> impl Iterator<Item = (Direction, usize, &ClusterRule)> {
    let ingress = p.ingress.iter().enumerate().map(|(i, r)| (Direction::Ingress, i, r));
    let egress = p.egress.iter().enumerate().map(|(i, r)| (Direction::Egress, i, r));
    ingress.chain(egress)
}

/// Numbers every cluster policy rule: from a hash of what it is, probing
/// past `taken` (NetworkPolicy rule numbers) in key order.
fn number(input: &Input, taken: &BTreeSet<u32>) -> BTreeMap<(String, Direction, usize), u32> {
    let mut used: BTreeSet<u32> = taken.clone();
    used.insert(RULE_HOST);
    let mut out = BTreeMap::new();
    for p in input.cluster_policies.values() {
        for (dir, i, _) in cluster_rules(p) {
            let canon = format!("crule\0{}\0{dir}\0{i}", p.name);
            let mut id = ids::fold(ids::fnv1a(canon.as_bytes()));
            while !used.insert(id) {
                id = id.checked_add(1).unwrap_or(ids::FIRST_DYNAMIC);
            }
            out.insert((p.name.clone(), dir, i), id);
        }
    }
    out
}

/// Which peers a clause matches.
#[derive(Clone, Debug)]
enum Peers {
    Any,
    Set(Arc<BTreeSet<u32>>),
}

impl Peers {
    fn matches(&self, peer: Option<u32>) -> bool {
        match self {
            Peers::Any => true,
            Peers::Set(s) => peer.is_some_and(|p| s.contains(&p)),
        }
    }
}

/// One cluster policy rule, resolved against the identities.
struct Clause<'a> {
    action: Action,
    rule: u32,
    peers: Peers,
    /// Spans every peer it matches gets.
    fixed: Vec<Span>,
    /// Named ports (resolved on the destination pod).
    named: Vec<&'a str>,
}

/// The peer identities of each kind of cluster peer (many rules repeat one).
struct Resolver<'a> {
    ids: &'a Identities,
    node: &'a Node,
    cache: HashMap<&'a ClusterPeer, Arc<BTreeSet<u32>>>,
}

impl<'a> Resolver<'a> {
    fn peer(&mut self, peer: &'a ClusterPeer) -> Arc<BTreeSet<u32>> {
        if let Some(s) = self.cache.get(peer) {
            return s.clone();
        }
        let ids = self.ids;
        let set: BTreeSet<u32> = match peer {
            ClusterPeer::Namespaces(ns) => {
                ids.groups.iter().filter(|g| ns.matches(&g.ns.labels)).flat_map(|g| g.peers.iter().copied()).collect()
            }
            ClusterPeer::Pods { namespaces, pods } => ids
                .groups
                .iter()
                .filter(|g| namespaces.matches(&g.ns.labels) && pods.matches(&g.key.labels))
                .flat_map(|g| g.peers.iter().copied())
                .collect(),
            ClusterPeer::Nodes(sel) => {
                // This node's own addresses are host identities; an empty
                // selector takes them even before its Node object is known.
                let own =
                    sel.is_empty() || ids.nodes.iter().any(|n| n.name == self.node.name && sel.matches(&n.labels));
                ids.peers
                    .values()
                    .filter(|p| match p.kind {
                        PeerKind::Node(ni) => sel.matches(&ids.nodes[ni].labels),
                        PeerKind::Host => own,
                        _ => false,
                    })
                    .map(|p| p.id)
                    .collect()
            }
            ClusterPeer::Networks(nets) => {
                let nets: Vec<_> = nets.iter().map(|n| n.trunc()).collect();
                ids.peers.values().filter(|p| nets.iter().any(|n| n.contains(&p.cell))).map(|p| p.id).collect()
            }
            ClusterPeer::Unsupported(_) => BTreeSet::new(),
        };
        let set = Arc::new(set);
        self.cache.insert(peer, set.clone());
        set
    }

    fn clause(&mut self, rule: &'a ClusterRule, id: u32) -> Clause<'a> {
        let mut any = false;
        let mut all = BTreeSet::new();
        for peer in &rule.peers {
            if let ClusterPeer::Unsupported(_) = peer {
                // Fail closed: an Accept matches nothing, a Deny or Pass
                // everything.
                any |= rule.action != Action::Accept;
                continue;
            }
            all.extend(self.peer(peer).iter().copied());
        }
        let peers = if any || (!all.is_empty() && all.len() == self.ids.peers.len()) {
            Peers::Any
        } else {
            Peers::Set(Arc::new(all))
        };
        let mut fixed = Vec::new();
        let mut named = Vec::new();
        if rule.ports.is_empty() {
            fixed.push(ALL);
        }
        for port in &rule.ports {
            match port {
                ClusterPort::Ports { protocol, first, last } => {
                    let base = u32::from(protocol.number()) << 16;
                    fixed.push((base | u32::from(*first), base | u32::from(*last)));
                }
                ClusterPort::Named(name) => named.push(name.as_str()),
            }
        }
        Clause { action: rule.action, rule: id, peers, fixed, named }
    }
}

pub(super) fn selects(subject: &ClusterSubject, g: &super::identities::Group) -> bool {
    selects_labels(subject, &g.ns.labels, &g.key.labels)
}

/// Whether `subject` selects a pod of `pod` labels in a namespace of
/// `namespace` labels.
pub(super) fn selects_labels(subject: &ClusterSubject, namespace: &Labels, pod: &Labels) -> bool {
    match subject {
        ClusterSubject::Namespaces(ns) => ns.matches(namespace),
        ClusterSubject::Pods { namespaces, pods } => namespaces.matches(namespace) && pods.matches(pod),
    }
}

/// What decides a point, in precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Decide(Val),
    /// Skips the rest of the stage.
    Pass,
}

/// One clause as it applies to one peer: spans and what it does, in its
/// stage (0: node allowance and Admin, 1: NetworkPolicy, 2: Baseline).
struct Item {
    spans: Vec<Span>,
    kind: Kind,
    stage: u8,
}

/// The NetworkPolicy entries of a tiered pair, as spans by peer.
#[derive(Default)]
struct NpEntries {
    /// (span, prefix length, rule), longest prefix first.
    by_peer: BTreeMap<u32, Vec<(Span, u32, u32)>>,
}

fn span_of(prefix: &PolicyPrefix) -> Span {
    let bits = prefix.prefix_len - POLICY_PREFIX_ANY_PROTO;
    let v = (u32::from(prefix.key.protocol) << 16) | u32::from(u16::from_be_bytes(prefix.key.port));
    let size = 1u32 << (WIDTH - bits);
    let lo = v & !(size - 1);
    (lo, lo + size - 1)
}

/// Resolves every tiered pair, once per class (on its lead group). `np`
/// holds the NetworkPolicy (and node allowance) entries in force for each
/// (class, direction code) with their rules; `isolation` the
/// `EP_*_ISOLATED` flags by class; `taken` the NetworkPolicy rule numbers.
pub(super) fn resolve(
    input: &Input,
    node: &Node,
    ids: &Identities,
    classes: &Classes,
    np: &HashMap<(u32, u8), Vec<(PolicyPrefix, u32)>>,
    isolation: &BTreeMap<u32, u32>,
    taken: &BTreeSet<u32>,
) -> Tiered {
    let mut out = Tiered::default();
    if input.cluster_policies.is_empty() {
        return out;
    }
    let numbers = number(input, taken);
    for p in input.cluster_policies.values() {
        for (dir, i, r) in cluster_rules(p) {
            let info = ClusterRuleInfo {
                policy: p.name.clone(),
                tier: p.tier,
                priority: p.priority,
                rule: r.name.clone(),
                action: r.action,
            };
            let id = numbers[&(p.name.clone(), dir, i)];
            out.rules.insert(id, RuleInfo { policy: None, direction: dir, index: i, cluster: Some(Box::new(info)) });
        }
    }

    // Each policy's clauses, in evaluation order.
    let mut order: Vec<&Arc<ClusterPolicy>> = input.cluster_policies.values().collect();
    order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut resolver = Resolver { ids, node, cache: HashMap::new() };
    let clauses: Vec<(&ClusterPolicy, Vec<(Direction, Clause)>)> = order
        .iter()
        .map(|p| {
            let cs = cluster_rules(p).map(|(d, i, r)| (d, resolver.clause(r, numbers[&(p.name.clone(), d, i)])));
            (p.as_ref(), cs.collect())
        })
        .collect();
    let hosts: BTreeSet<u32> = ids.peers.values().filter(|p| p.kind == PeerKind::Host).map(|p| p.id).collect();

    for (&class, &gi) in &classes.lead {
        let g = &ids.groups[gi];
        for dir in [Direction::Ingress, Direction::Egress] {
            let mine: Vec<(&ClusterPolicy, &Clause)> = clauses
                .iter()
                .filter(|(p, _)| selects(&p.subject, g))
                .flat_map(|(p, cs)| cs.iter().filter(|(d, _)| *d == dir).map(move |(_, c)| (*p, c)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let code = dir.code();
            let (iso_bit, tier_bit) = match dir {
                Direction::Ingress => (palisade_common::EP_INGRESS_ISOLATED, EP_INGRESS_TIERED),
                Direction::Egress => (palisade_common::EP_EGRESS_ISOLATED, EP_EGRESS_TIERED),
            };
            *out.flags.entry(class).or_default() |= tier_bit;
            out.pairs.insert((class, code));
            let isolated = isolation.get(&class).is_some_and(|f| f & iso_bit != 0);
            let mut np_entries = NpEntries::default();
            for (prefix, rule) in np.get(&(class, code)).into_iter().flatten() {
                let peer = u32::from_be_bytes(prefix.key.peer);
                np_entries.by_peer.entry(peer).or_default().push((span_of(prefix), prefix.prefix_len, *rule));
            }
            for list in np_entries.by_peer.values_mut() {
                list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            let pair = Pair {
                ids,
                local: gi,
                dir,
                clauses: &mine,
                np: &np_entries,
                isolated,
                hosts: if dir == Direction::Ingress && node.allow_host { Some(&hosts) } else { None },
            };
            pair.emit(class, &mut out.entries);
        }
    }
    out
}

/// One tiered (class, direction), resolved on the class's lead group.
struct Pair<'a> {
    ids: &'a Identities,
    local: usize,
    dir: Direction,
    clauses: &'a [(&'a ClusterPolicy, &'a Clause<'a>)],
    np: &'a NpEntries,
    isolated: bool,
    hosts: Option<&'a BTreeSet<u32>>,
}

impl Pair<'_> {
    /// The spans of named ports on the destination: the local pod for
    /// ingress, the peer pod for egress (no peer pod: none).
    fn named(&self, names: &[&str], peer: Option<u32>) -> Vec<Span> {
        if names.is_empty() {
            return vec![];
        }
        let group = match self.dir {
            Direction::Ingress => Some(self.local),
            Direction::Egress => peer
                .and_then(|p| self.ids.peers.get(&p))
                .and_then(|p| if let PeerKind::Pod(gi) = p.kind { Some(gi) } else { None }),
        };
        let Some(gi) = group else { return vec![] };
        self.ids.groups[gi]
            .key
            .ports
            .iter()
            .filter(|np| names.contains(&np.name.as_str()))
            .map(|np| {
                let v = (u32::from(np.protocol.number()) << 16) | u32::from(np.port);
                (v, v)
            })
            .collect()
    }

    /// The clauses that apply to `peer` (None: a peer no specific clause
    /// names), in precedence order.
    fn items(&self, peer: Option<u32>) -> Vec<Item> {
        let mut items = Vec::new();
        if let (Some(hosts), Some(p)) = (self.hosts, peer)
            && hosts.contains(&p)
        {
            items.push(Item { spans: vec![ALL], kind: Kind::Decide(Val { deny: false, rule: RULE_HOST }), stage: 0 });
        }
        let mut baseline = Vec::new();
        for (policy, c) in self.clauses {
            if !c.peers.matches(peer) {
                continue;
            }
            let mut spans = c.fixed.clone();
            spans.extend(self.named(&c.named, peer));
            if spans.is_empty() {
                continue;
            }
            let kind = match c.action {
                Action::Accept => Kind::Decide(Val { deny: false, rule: c.rule }),
                Action::Deny => Kind::Decide(Val { deny: true, rule: c.rule }),
                Action::Pass => Kind::Pass,
            };
            match policy.tier {
                Tier::Admin => items.push(Item { spans, kind, stage: 0 }),
                Tier::Baseline => baseline.push(Item { spans, kind, stage: 2 }),
            }
        }
        // NetworkPolicy: the peer's entries, then any peer's (longest
        // prefix first within each, as the kernel's trie), then its
        // implicit deny.
        let specific = peer.and_then(|p| self.np.by_peer.get(&p)).into_iter().flatten();
        for &(span, _, rule) in specific.chain(self.np.by_peer.get(&PEER_ANY).into_iter().flatten()) {
            items.push(Item { spans: vec![span], kind: Kind::Decide(Val { deny: false, rule }), stage: 1 });
        }
        if self.isolated {
            items.push(Item { spans: vec![ALL], kind: Kind::Decide(Val { deny: true, rule: 0 }), stage: 1 });
        }
        items.extend(baseline);
        items
    }

    /// The peers that may be judged differently from a peer no specific
    /// clause names.
    fn specific_peers(&self) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for (_, c) in self.clauses {
            if let Peers::Set(s) = &c.peers {
                out.extend(s.iter().copied());
            } else if self.dir == Direction::Egress && !c.named.is_empty() {
                // Any peer, named ports: every pod peer declaring one.
                for g in &self.ids.groups {
                    if g.key.ports.iter().any(|np| c.named.contains(&np.name.as_str())) {
                        out.extend(g.peers.iter().copied());
                    }
                }
            }
        }
        out.extend(self.np.by_peer.keys().copied().filter(|&p| p != PEER_ANY));
        if let Some(h) = self.hosts {
            out.extend(h.iter().copied());
        }
        out
    }

    /// What the points from each boundary on get: (start, verdict) runs
    /// covering the whole space, adjacent runs different.
    fn runs(&self, items: &[Item]) -> Vec<(u32, Val)> {
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0]);
        for it in items {
            for &(lo, hi) in &it.spans {
                cuts.insert(lo);
                if hi < ALL.1 {
                    cuts.insert(hi + 1);
                }
            }
        }
        let default = Val { deny: false, rule: 0 };
        let mut runs: Vec<(u32, Val)> = Vec::with_capacity(cuts.len());
        for &at in &cuts {
            let mut skip_stage = None;
            let mut val = default;
            for it in items {
                if skip_stage == Some(it.stage) || !it.spans.iter().any(|&(lo, hi)| lo <= at && at <= hi) {
                    continue;
                }
                match it.kind {
                    Kind::Decide(v) => {
                        val = v;
                        break;
                    }
                    Kind::Pass => skip_stage = Some(it.stage),
                }
            }
            if runs.last().is_none_or(|r| r.1 != val) {
                runs.push((at, val));
            }
        }
        runs
    }

    /// What makes two peers' runs equal: the clauses that match them, their
    /// own NetworkPolicy entries, the node allowance, their named ports.
    fn signature(&self, peer: u32) -> Signature {
        let matched = self.clauses.iter().enumerate().filter(|(_, (_, c))| c.peers.matches(Some(peer))).map(|(i, _)| i);
        let np = self.np.by_peer.contains_key(&peer).then_some(peer);
        let host = self.hosts.is_some_and(|h| h.contains(&peer));
        let group = match self.ids.peers.get(&peer).map(|p| p.kind) {
            Some(PeerKind::Pod(gi)) if self.dir == Direction::Egress => Some(gi),
            _ => None,
        };
        (matched.collect(), np, host, group)
    }

    /// Writes the pair's entries. The any-peer entries hold the runs most
    /// peers get (a `networks: 0.0.0.0/0` rule matches nearly every peer:
    /// its verdict then costs one set of entries, not one per peer); each
    /// peer whose runs differ gets its own entries where they differ.
    fn emit(&self, local: u32, out: &mut BTreeMap<PolicyPrefix, PolicyValue>) {
        let miss = Val { deny: self.isolated, rule: 0 };
        let general = self.runs(&self.items(None));
        let specific = self.specific_peers();
        let mut memo: HashMap<Signature, Runs> = HashMap::new();
        let general = Arc::new(general);
        let mut by_peer: Vec<(u32, Runs)> = Vec::with_capacity(self.ids.peers.len());
        for p in self.ids.peers.values() {
            let runs = if specific.contains(&p.id) {
                memo.entry(self.signature(p.id)).or_insert_with(|| Arc::new(self.runs(&self.items(Some(p.id))))).clone()
            } else {
                general.clone()
            };
            by_peer.push((p.id, runs));
        }
        let mut counts: BTreeMap<&Vec<(u32, Val)>, usize> = BTreeMap::new();
        *counts.entry(&general).or_default() += 1;
        for (_, r) in &by_peer {
            *counts.entry(r).or_default() += 1;
        }
        let chosen: Vec<(u32, Val)> =
            counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(r, _)| (*r).clone()).unwrap_or_default();
        let key = |peer: u32| PolicyKey::new(local, self.dir.code(), peer, 0, 0);
        write(&chosen, &[(0, miss)], key(PEER_ANY), out);
        for (peer, runs) in &by_peer {
            if **runs != chosen {
                write(runs, &chosen, key(*peer), out);
            }
        }
    }
}

/// The verdict of runs at a point.
fn value_at(runs: &[(u32, Val)], at: u32) -> Val {
    let i = runs.partition_point(|r| r.0 <= at);
    runs[i - 1].1
}

/// Writes entries for `runs` except where they give what `fallback` (the
/// runs a point gets without them) does: aligned blocks over each maximal
/// range of one verdict.
fn write(runs: &[(u32, Val)], fallback: &[(u32, Val)], key: PolicyKey, out: &mut BTreeMap<PolicyPrefix, PolicyValue>) {
    let points: Vec<u32> = runs.iter().chain(fallback).map(|r| r.0).collect::<BTreeSet<u32>>().into_iter().collect();
    let flush = |p: Option<(u32, u32, Val)>, out: &mut BTreeMap<PolicyPrefix, PolicyValue>| {
        if let Some((lo, hi, v)) = p {
            for (value, bits) in ports::blocks(lo, hi, WIDTH) {
                let mut k = key;
                k.protocol = (value >> 16) as u8;
                k.port = ((value & 0xffff) as u16).to_be_bytes();
                out.insert(PolicyPrefix { prefix_len: POLICY_PREFIX_ANY_PROTO + bits, key: k }, v.value());
            }
        }
    };
    let mut pending: Option<(u32, u32, Val)> = None;
    for (i, &at) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(ALL.1, |n| n - 1);
        let v = value_at(runs, at);
        if value_at(fallback, at) == v {
            flush(pending.take(), out);
            continue;
        }
        match &mut pending {
            Some((_, hi, pv)) if *pv == v && *hi + 1 == at => *hi = end,
            _ => {
                flush(pending.take(), out);
                pending = Some((at, end, v));
            }
        }
    }
    flush(pending.take(), out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::convert::manifests_to_input;
    use crate::policy::compile::{Compiled, compile};
    use crate::policy::model::{NodeObject, Protocol, Selector};
    use palisade_common::{EP_AUDIT, EP_SKIPS, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
    use std::net::IpAddr;

    const HOST: &str = "192.168.1.1";
    const OTHER_NODE: &str = "192.168.1.2";

    /// Namespaces a, b, mon; a/web (named port http: TCP 8080) and a/db,
    /// b/cli on this node, mon/prom on n2; `policies` appended.
    fn cluster(policies: &str) -> Input {
        let ns = |name: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {name}}}}}\n---\n")
        };
        let pod = |ns: &str, name: &str, node: &str, ip: &str, ports: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
                 spec: {{nodeName: {node}, containers: [{{name: c, ports: [{ports}]}}]}}\n\
                 status: {{phase: Running, podIP: {ip}}}\n---\n"
            )
        };
        let mut text = ns("a") + &ns("b") + &ns("mon");
        text += &pod("a", "web", "n1", "10.0.0.1", "{name: http, containerPort: 8080, protocol: TCP}");
        text += &pod("a", "db", "n1", "10.0.0.2", "");
        text += &pod("b", "cli", "n1", "10.0.1.1", "");
        text += &pod("mon", "prom", "n2", "10.0.2.1", "{name: http, containerPort: 9090, protocol: TCP}");
        text += policies;
        let mut input = manifests_to_input(&text).unwrap();
        for (name, role, ip) in [("n1", "worker", HOST), ("n2", "cp", OTHER_NODE)] {
            let labels = [("role".to_string(), role.to_string())].into();
            input.nodes.insert(
                name.into(),
                Arc::new(NodeObject { name: name.into(), labels, ips: vec![ip.parse().unwrap()] }),
            );
        }
        input
    }

    fn node() -> Node {
        Node { name: "n1".into(), host_ips: vec![HOST.parse().unwrap()], allow_host: true, audit: false }
    }

    fn sel(k: &str, v: &str) -> Selector {
        Selector { match_labels: [(k.to_string(), v.to_string())].into(), requirements: vec![] }
    }

    fn team(v: &str) -> ClusterPeer {
        ClusterPeer::Namespaces(sel("team", v))
    }

    fn rule(name: &str, action: Action, peers: Vec<ClusterPeer>, ports: Vec<ClusterPort>) -> ClusterRule {
        ClusterRule { name: name.into(), action, peers, ports }
    }

    fn tcp(first: u16, last: u16) -> ClusterPort {
        ClusterPort::Ports { protocol: Protocol::Tcp, first, last }
    }

    fn add(input: &mut Input, name: &str, tier: Tier, priority: u32, subject: &str, ingress: Vec<ClusterRule>) {
        add_both(input, name, tier, priority, subject, ingress, vec![]);
    }

    fn add_both(
        input: &mut Input,
        name: &str,
        tier: Tier,
        priority: u32,
        subject: &str,
        ingress: Vec<ClusterRule>,
        egress: Vec<ClusterRule>,
    ) {
        let subject = ClusterSubject::Namespaces(sel("team", subject));
        let p = ClusterPolicy { name: name.into(), tier, priority, subject, ingress, egress };
        input.cluster_policies.insert(name.into(), Arc::new(p));
    }

    const NP_ALLOW_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-b, namespace: a}\n\
        spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}}]\n";
    const NP_DENY_ALL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: a}\n\
        spec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";

    /// (allowed, the deciding rule as events name it, or "").
    fn judge(c: &Compiled, pod: &str, dir: Direction, remote: &str, proto: u8, port: u16) -> (bool, String) {
        let ep = c.endpoints.iter().find(|e| e.name == pod).expect("local pod");
        let remote: IpAddr = remote.parse().unwrap();
        let v = crate::policy::lookup::decide(c, &ep.kernel(), dir, remote, proto, port);
        let rule = c.catalog.rules.get(&v.rule).map(|r| r.to_string()).unwrap_or_default();
        (v.allowed, rule)
    }

    fn ingress(c: &Compiled, pod: &str, from: &str, port: u16) -> (bool, String) {
        judge(c, pod, Direction::Ingress, from, PROTO_TCP, port)
    }

    fn egress(c: &Compiled, pod: &str, to: &str, proto: u8, port: u16) -> (bool, String) {
        judge(c, pod, Direction::Egress, to, proto, port)
    }

    fn denied_by(rule: &str) -> (bool, String) {
        (false, rule.to_string())
    }

    fn allowed_by(rule: &str) -> (bool, String) {
        (true, rule.to_string())
    }

    const OPEN: (bool, &str) = (true, "");

    fn open() -> (bool, String) {
        (OPEN.0, OPEN.1.to_string())
    }

    fn closed() -> (bool, String) {
        (false, String::new())
    }

    #[test]
    fn admin_deny_beats_a_networkpolicy_allow() {
        let mut input = cluster(NP_ALLOW_B);
        add(&mut input, "deny-b", Tier::Admin, 10, "a", vec![rule("no-b", Action::Deny, vec![team("b")], vec![])]);
        let c = compile(&input, &node());
        let deny = "ClusterNetworkPolicy deny-b rule no-b (Admin, priority 10, Deny)";
        assert_eq!(ingress(&c, "web", "10.0.1.1", 80), denied_by(deny));
        assert_eq!(ingress(&c, "db", "10.0.1.1", 80), denied_by(deny), "db is not isolated: the deny holds too");
        assert_eq!(ingress(&c, "web", "10.0.0.2", 80), closed(), "not matched: NetworkPolicy isolates web");
        assert_eq!(ingress(&c, "db", "10.0.0.2", 80), open());
        assert_eq!(ingress(&c, "web", HOST, 80), allowed_by("node traffic to its pods (--allow-host)"));
        assert_eq!(ingress(&c, "cli", "10.0.0.2", 80), open(), "b is no subject");
        let ep = c.endpoints.iter().find(|e| e.name == "db").unwrap();
        assert_eq!(ep.flags & !EP_SKIPS, EP_INGRESS_TIERED, "tiered, not isolated, egress untouched");
    }

    #[test]
    fn admin_accept_beats_a_networkpolicy_deny() {
        let mut input = cluster(NP_DENY_ALL);
        add(&mut input, "mon", Tier::Admin, 1, "a", vec![rule("scrape", Action::Accept, vec![team("mon")], vec![])]);
        let c = compile(&input, &node());
        let accept = "ClusterNetworkPolicy mon rule scrape (Admin, priority 1, Accept)";
        assert_eq!(ingress(&c, "web", "10.0.2.1", 80), allowed_by(accept));
        assert_eq!(ingress(&c, "web", "10.0.1.1", 80), closed());
        assert_eq!(egress(&c, "web", "10.0.2.1", PROTO_TCP, 80), closed(), "egress is NetworkPolicy's alone");
    }

    #[test]
    fn admin_pass_hands_the_decision_to_networkpolicy_or_baseline() {
        let passes = |np: &str| {
            let mut input = cluster(np);
            add(&mut input, "pass", Tier::Admin, 1, "a", vec![rule("p", Action::Pass, vec![team("b")], vec![])]);
            add(&mut input, "deny", Tier::Admin, 2, "a", vec![rule("d", Action::Deny, vec![team("b")], vec![])]);
            let base = vec![rule("bd", Action::Deny, vec![team("b")], vec![tcp(80, 80)])];
            add(&mut input, "base", Tier::Baseline, 1, "a", base);
            compile(&input, &node())
        };
        let c = passes(NP_ALLOW_B);
        assert_eq!(ingress(&c, "web", "10.0.1.1", 80), allowed_by("a/allow-b ingress rule 0"), "NetworkPolicy decides");
        let base = "ClusterNetworkPolicy base rule bd (Baseline, priority 1, Deny)";
        assert_eq!(ingress(&c, "db", "10.0.1.1", 80), denied_by(base), "not isolated: on to Baseline");
        assert_eq!(ingress(&c, "db", "10.0.1.1", 81), open(), "then the default");
        let c = passes("");
        assert_eq!(ingress(&c, "web", "10.0.1.1", 80), denied_by(base));
    }

    #[test]
    fn baseline_applies_only_where_networkpolicy_does_not_isolate() {
        let mut input = cluster(NP_ALLOW_B);
        let dns = rule(
            "dns",
            Action::Accept,
            vec![team("b")],
            vec![ClusterPort::Ports { protocol: Protocol::Udp, first: 53, last: 53 }],
        );
        let all = ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        let deny = rule("", Action::Deny, vec![all.clone()], vec![]);
        add_both(&mut input, "default-deny", Tier::Baseline, 1000, "a", vec![], vec![dns, deny]);
        let deny_in = rule("in", Action::Deny, vec![team("a"), team("b"), team("mon")], vec![]);
        add(&mut input, "z-in", Tier::Baseline, 1000, "a", vec![deny_in]);
        let c = compile(&input, &node());
        let out = "ClusterNetworkPolicy default-deny egress rule 1 (Baseline, priority 1000, Deny)";
        assert_eq!(egress(&c, "db", "8.8.8.8", PROTO_TCP, 443), denied_by(out));
        assert_eq!(egress(&c, "db", "10.0.1.1", PROTO_ICMP, 0), denied_by(out), "no ports: every protocol");
        let dns = "ClusterNetworkPolicy default-deny rule dns (Baseline, priority 1000, Accept)";
        assert_eq!(egress(&c, "db", "10.0.1.1", PROTO_UDP, 53), allowed_by(dns));
        let inn = "ClusterNetworkPolicy z-in rule in (Baseline, priority 1000, Deny)";
        assert_eq!(ingress(&c, "db", "10.0.1.1", 80), denied_by(inn));
        assert_eq!(ingress(&c, "web", "10.0.1.1", 80), allowed_by("a/allow-b ingress rule 0"), "isolated: NP decides");
        assert_eq!(ingress(&c, "web", "10.0.0.2", 80), closed(), "NetworkPolicy's own deny, not Baseline's");
    }

    #[test]
    fn baseline_pass_leaves_the_default_and_equal_priorities_go_by_name() {
        let mut input = cluster("");
        add(
            &mut input,
            "a-pass",
            Tier::Baseline,
            5,
            "a",
            vec![rule("p", Action::Pass, vec![team("b")], vec![tcp(80, 80)])],
        );
        add(&mut input, "b-deny", Tier::Baseline, 5, "a", vec![rule("d", Action::Deny, vec![team("b")], vec![])]);
        let c = compile(&input, &node());
        assert_eq!(ingress(&c, "db", "10.0.1.1", 80), open());
        assert!(!ingress(&c, "db", "10.0.1.1", 81).0);
        // Renamed, the deny sorts first.
        let mut input = cluster("");
        add(
            &mut input,
            "b-pass",
            Tier::Baseline,
            5,
            "a",
            vec![rule("p", Action::Pass, vec![team("b")], vec![tcp(80, 80)])],
        );
        add(&mut input, "a-deny", Tier::Baseline, 5, "a", vec![rule("d", Action::Deny, vec![team("b")], vec![])]);
        let c = compile(&input, &node());
        assert!(!ingress(&c, "db", "10.0.1.1", 80).0);
        // A lower priority number goes first whatever the name.
        let mut input = cluster("");
        add(
            &mut input,
            "b-pass",
            Tier::Admin,
            4,
            "a",
            vec![rule("p", Action::Accept, vec![team("b")], vec![tcp(80, 80)])],
        );
        add(&mut input, "a-deny", Tier::Admin, 5, "a", vec![rule("d", Action::Deny, vec![team("b")], vec![])]);
        let c = compile(&input, &node());
        assert!(ingress(&c, "db", "10.0.1.1", 80).0);
        assert!(!ingress(&c, "db", "10.0.1.1", 81).0);
    }

    #[test]
    fn named_ports_resolve_on_the_destination_pod() {
        let mut input = cluster("");
        let named = || vec![ClusterPort::Named("http".into())];
        add_both(
            &mut input,
            "named",
            Tier::Admin,
            1,
            "a",
            vec![rule("in", Action::Deny, vec![team("b")], named())],
            vec![rule(
                "out",
                Action::Deny,
                vec![team("mon"), ClusterPeer::Networks(vec!["8.0.0.0/8".parse().unwrap()])],
                named(),
            )],
        );
        let c = compile(&input, &node());
        assert!(!ingress(&c, "web", "10.0.1.1", 8080).0, "web's http");
        assert!(ingress(&c, "web", "10.0.1.1", 8081).0);
        assert!(judge(&c, "web", Direction::Ingress, "10.0.1.1", PROTO_UDP, 8080).0, "the port's own protocol only");
        assert!(ingress(&c, "db", "10.0.1.1", 8080).0, "db has no http port");
        assert!(!egress(&c, "db", "10.0.2.1", PROTO_TCP, 9090).0, "prom's http");
        assert!(egress(&c, "db", "10.0.2.1", PROTO_TCP, 8080).0);
        assert!(egress(&c, "db", "8.8.8.8", PROTO_TCP, 8080).0, "no pod, no named port");
    }

    #[test]
    fn networks_cover_pods_and_nodes_peers_select_node_objects() {
        let mut input = cluster("");
        let meta = rule(
            "metadata",
            Action::Deny,
            vec![ClusterPeer::Networks(vec!["169.254.169.254/32".parse().unwrap()])],
            vec![],
        );
        let pods = rule(
            "pods",
            Action::Deny,
            vec![ClusterPeer::Networks(vec!["10.0.0.0/24".parse().unwrap()])],
            vec![tcp(1, 100)],
        );
        let cp = rule("cp", Action::Deny, vec![ClusterPeer::Nodes(sel("role", "cp"))], vec![]);
        add_both(&mut input, "nets", Tier::Admin, 1, "b", vec![], vec![meta, pods, cp]);
        let c = compile(&input, &node());
        assert!(!egress(&c, "cli", "169.254.169.254", PROTO_TCP, 80).0);
        assert!(egress(&c, "cli", "169.254.169.253", PROTO_TCP, 80).0);
        assert!(!egress(&c, "cli", "10.0.0.1", PROTO_TCP, 80).0, "a pod inside the network");
        assert!(egress(&c, "cli", "10.0.0.1", PROTO_TCP, 101).0);
        assert!(egress(&c, "cli", "10.0.2.1", PROTO_TCP, 80).0);
        assert!(!egress(&c, "cli", OTHER_NODE, PROTO_UDP, 1).0, "n2 is cp");
        assert!(egress(&c, "cli", HOST, PROTO_UDP, 1).0, "n1 is not");
        // Selecting this node's labels reaches its own addresses.
        let mut input = cluster("");
        let worker = rule("w", Action::Deny, vec![ClusterPeer::Nodes(sel("role", "worker"))], vec![]);
        add_both(&mut input, "nodes", Tier::Admin, 1, "b", vec![], vec![worker]);
        let c = compile(&input, &node());
        assert!(!egress(&c, "cli", HOST, PROTO_UDP, 1).0);
        assert!(egress(&c, "cli", OTHER_NODE, PROTO_UDP, 1).0);
    }

    #[test]
    fn unsupported_peers_fail_closed() {
        let unknown = || vec![ClusterPeer::Unsupported("domainNames".into())];
        let mut input = cluster(NP_DENY_ALL);
        add_both(&mut input, "u", Tier::Admin, 1, "a", vec![], vec![rule("acc", Action::Accept, unknown(), vec![])]);
        let c = compile(&input, &node());
        assert!(!egress(&c, "web", "8.8.8.8", PROTO_TCP, 443).0, "an Accept matches nothing");
        let mut input = cluster("");
        add_both(&mut input, "u", Tier::Admin, 1, "a", vec![], vec![rule("deny", Action::Deny, unknown(), vec![])]);
        let c = compile(&input, &node());
        assert!(!egress(&c, "web", "8.8.8.8", PROTO_TCP, 443).0, "a Deny matches everything");
        assert!(!egress(&c, "web", "10.0.0.2", PROTO_UDP, 1).0);
    }

    #[test]
    fn clusters_without_cluster_policies_for_an_identity_compile_as_before() {
        let plain = compile(&cluster(NP_ALLOW_B), &node());
        let mut input = cluster(NP_ALLOW_B);
        add(&mut input, "only-b", Tier::Admin, 1, "b", vec![rule("x", Action::Deny, vec![team("mon")], vec![])]);
        let with = compile(&input, &node());
        let cli = with.endpoints.iter().find(|e| e.name == "cli").unwrap().class;
        let others = |c: &Compiled| {
            c.policy
                .iter()
                .filter(|(k, _)| u32::from_be_bytes(k.key.local) != cli)
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&plain), others(&with));
        assert_eq!(plain.ips, with.ips, "no nodes peer: node objects change no address");
        // Audit mode applies to cluster policy denies as to NetworkPolicy's.
        let mut audited = node();
        audited.audit = true;
        let c = compile(&input, &audited);
        let ep = c.endpoints.iter().find(|e| e.name == "cli").unwrap();
        assert_eq!(ep.flags & !EP_SKIPS, EP_INGRESS_TIERED | EP_AUDIT);
    }

    /// A realistic case: 100 namespaces with a default-deny NetworkPolicy
    /// and an allow from their own namespace, 10 cluster policies.
    #[test]
    fn entry_counts_of_a_realistic_cluster() {
        let mut text = String::new();
        for n in 0..100 {
            text += &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{}, env: prod}}}}\n---\n",
                n % 10
            );
            for p in 0..3 {
                text += &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: ns{n}, labels: {{app: a{p}}}}}\n\
                     spec: {{nodeName: {}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.{}.{}.{p}}}\n---\n",
                    if n % 4 == 0 { "n1" } else { "n2" },
                    n / 100 + 1,
                    n % 100
                );
            }
            text += &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: own, namespace: ns{n}}}\n\
                 spec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{podSelector: {{}}}}]\n---\n"
            );
        }
        let mut input = manifests_to_input(&text).unwrap();
        let plain = compile(&input, &node());
        let env = || ClusterSubject::Namespaces(sel("env", "prod"));
        let mut add_p = |name: &str, tier, priority, ingress, egress| {
            let p = ClusterPolicy { name: name.into(), tier, priority, subject: env(), ingress, egress };
            input.cluster_policies.insert(name.into(), Arc::new(p));
        };
        add_p(
            "monitoring",
            Tier::Admin,
            1,
            vec![rule("scrape", Action::Accept, vec![team("t0")], vec![tcp(9090, 9090)])],
            vec![],
        );
        let meta = ClusterPeer::Networks(vec!["169.254.169.254/32".parse().unwrap()]);
        add_p("metadata", Tier::Admin, 2, vec![], vec![rule("deny", Action::Deny, vec![meta], vec![])]);
        for t in 1..7 {
            add_p(
                &format!("isolate-t{t}"),
                Tier::Admin,
                10 + t,
                vec![rule("deny", Action::Deny, vec![team(&format!("t{t}"))], vec![tcp(22, 22)])],
                vec![],
            );
        }
        let all = ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()]);
        let dns = rule(
            "dns",
            Action::Accept,
            vec![all.clone()],
            vec![ClusterPort::Ports { protocol: Protocol::Udp, first: 53, last: 53 }],
        );
        add_p("default-deny", Tier::Baseline, 100, vec![], vec![dns, rule("rest", Action::Deny, vec![all], vec![])]);
        add_p("baseline-in", Tier::Baseline, 100, vec![rule("deny", Action::Deny, vec![team("t9")], vec![])], vec![]);
        assert_eq!(input.cluster_policies.len(), 10);
        let c = compile(&input, &node());
        let locals = c.endpoints.len();
        eprintln!(
            "{locals} local pods, {} local identities: {} policy entries with NetworkPolicies alone, {} with 10 cluster policies",
            c.endpoints.iter().map(|e| e.identity).collect::<BTreeSet<_>>().len(),
            plain.policy.len(),
            c.policy.len()
        );
        // Per local identity: one entry per peer a namespace-wide rule names
        // (190 peers of t0..t6), plus a few dozen any-peer blocks.
        assert!(c.policy.len() < locals * 320, "{} entries", c.policy.len());
    }
}
