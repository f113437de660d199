//! Kernel records to [`Compact`] events: names resolved to symbol ids
//! through caches keyed by what the kernel record carries (interface,
//! address and identity, rule, isolated identity), so a flood of events
//! from a few pods costs a few hash lookups each, not string building.
//! The caches start over whenever the view (what is in force) changes.

use super::View;
use super::record::{Clock, RuleRef};
use super::wire::{Compact, KIND_HOST, KIND_POD, KIND_WORLD, Symbol, Symbols};
use crate::policy::{Direction, IdentityInfo};
use palisade_common::{DIR_EGRESS, Event, FAMILY_V4, VERDICT_ALLOWED};
use std::collections::HashMap;

/// The caches are looked up several times per event: a fast hasher (their
/// keys come from the kernel's records of this node's traffic).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::IpAddr;
use std::sync::Arc;

/// Remote addresses remembered at most (a scan from many addresses must
/// not grow the cache without bound).
const MAX_REMOTES: usize = 64 * 1024;

pub struct Resolver {
    view: Arc<View>,
    symbols: Arc<Symbols>,
    clock: Clock,
    /// ifindex -> the local pod's name.
    locals: Map<u32, u32>,
    /// (family, address, identity) -> (kind, name).
    remotes: Map<(u8, [u8; 16], u32), (u8, u32)>,
    rules: Map<u32, u32>,
    isolating: Map<(u32, u8), u32>,
}

impl Resolver {
    pub fn new(symbols: Arc<Symbols>) -> Resolver {
        Resolver {
            view: Arc::new(View::default()),
            symbols,
            clock: Clock::new(),
            locals: Map::default(),
            remotes: Map::default(),
            rules: Map::default(),
            isolating: Map::default(),
        }
    }

    pub fn set_view(&mut self, view: &Arc<View>) {
        if !Arc::ptr_eq(&self.view, view) {
            self.view = view.clone();
            self.locals.clear();
            self.remotes.clear();
            self.rules.clear();
            self.isolating.clear();
        }
    }

    /// Names an address: a pod, the node, or the world (with its ipBlock
    /// cell when the identity names one).
    fn name(&mut self, family: u8, bytes: &[u8; 16], identity: u32) -> (u8, u32) {
        if let Some(n) = self.remotes.get(&(family, *bytes, identity)) {
            return *n;
        }
        let ip = if family == FAMILY_V4 {
            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            IpAddr::from(*bytes)
        };
        let catalog = &self.view.catalog;
        let n = if let Some(pod) = catalog.pods_by_ip.get(&ip) {
            (KIND_POD, self.symbols.intern(Symbol::Pod { namespace: pod.namespace.clone(), name: pod.name.clone() }))
        } else if catalog.host_ips.contains(&ip) {
            (KIND_HOST, 0)
        } else if let Some(IdentityInfo::Cidr { cell }) = catalog.identities.get(&identity) {
            (KIND_WORLD, self.symbols.intern(Symbol::Cidr(*cell)))
        } else {
            (KIND_WORLD, 0)
        };
        if self.remotes.len() >= MAX_REMOTES {
            self.remotes.clear();
        }
        self.remotes.insert((family, *bytes, identity), n);
        n
    }

    /// The local end: named by its interface, else by its address.
    fn local(&mut self, raw: &Event, bytes: &[u8; 16]) -> (u8, u32) {
        if let Some(&id) = self.locals.get(&raw.ifindex) {
            return (KIND_POD, id);
        }
        if let Some((ns, name)) = self.view.endpoints.get(&raw.ifindex) {
            let id = self.symbols.intern(Symbol::Pod { namespace: ns.clone(), name: name.clone() });
            self.locals.insert(raw.ifindex, id);
            return (KIND_POD, id);
        }
        self.name(raw.family, bytes, 0)
    }

    fn rule(&mut self, rule: u32) -> u32 {
        if rule == 0 {
            return 0;
        }
        if let Some(&id) = self.rules.get(&rule) {
            return id;
        }
        let id = match self.view.catalog.rules.get(&rule) {
            Some(r) => self.symbols.intern(Symbol::Rule(RuleRef {
                namespace: r.policy.as_ref().map(|p| p.namespace().to_string()),
                name: r
                    .policy
                    .as_ref()
                    .map(|p| p.name().to_string())
                    .or_else(|| r.cluster.as_ref().map(|c| c.policy.clone())),
                direction: r.direction,
                rule: r.index,
                description: r.to_string(),
                tier: r.cluster.as_ref().map(|c| c.tier.to_string()),
            })),
            None => 0,
        };
        self.rules.insert(rule, id);
        id
    }

    fn isolating(&mut self, class: u32, dir: u8) -> u32 {
        if let Some(&id) = self.isolating.get(&(class, dir)) {
            return id;
        }
        let id = match self.view.catalog.isolating.get(&(class, Direction::from_code(dir))) {
            Some(by) if !by.is_empty() => self.symbols.intern(Symbol::Isolating(by.clone())),
            _ => 0,
        };
        self.isolating.insert((class, dir), id);
        id
    }

    pub fn resolve(&mut self, raw: &Event) -> Compact {
        let egress = raw.direction == DIR_EGRESS;
        let (local, remote) = if egress { (&raw.src, &raw.dst) } else { (&raw.dst, &raw.src) };
        let local = self.local(raw, local);
        let remote = self.name(raw.family, remote, raw.peer_identity);
        let ((src_kind, src_name), (dst_kind, dst_name)) = if egress { (local, remote) } else { (remote, local) };
        Compact {
            time_ns: self.clock.unix_ns(raw.ts_ns),
            src: raw.src,
            dst: raw.dst,
            sport: raw.sport,
            dport: raw.dport,
            count: raw.count,
            folded: raw.folded,
            ifindex: raw.ifindex,
            src_name,
            dst_name,
            rule: self.rule(raw.rule),
            isolated: if raw.verdict == VERDICT_ALLOWED { 0 } else { self.isolating(raw.local_class, raw.direction) },
            family: raw.family,
            protocol: raw.protocol,
            direction: raw.direction,
            verdict: raw.verdict,
            reason: raw.reason,
            tcp_flags: raw.tcp_flags,
            flags: raw.flags,
            src_kind,
            dst_kind,
        }
    }
}
