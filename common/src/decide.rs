//! The per-packet policy decision, written once: the classifier runs it over
//! its maps, user space over the compiled entries (`lookup`, `trace`, the
//! tests) and over the pinned maps (`trace`'s kernel check), so all of them
//! judge a flow the same way by construction.
//!
//! Verifier-friendly: no loops, no recursion, `#[inline(always)]`, and map
//! results are consumed where they are looked up (see [`peer_info`]).

use crate::event::{REASON_NO_RULE, REASON_NOT_ISOLATED, REASON_RULE};
use crate::keys::{
    DIR_BY_NAMESPACE, DIR_EGRESS, DIR_INGRESS, EP_EGRESS_ISOLATED, EP_EGRESS_TIERED, EP_INGRESS_ISOLATED,
    EP_INGRESS_TIERED, EP_NO_NAMESPACE, EP_PARENT_NO_ANY, EP_PARENT_NO_NAMESPACE, EP_PARENT_NO_SHORT, Endpoint,
    IP_SERVICE, IpInfo, IpKey, PEER_ANY, PolicyKey, PolicyValue,
};

/// The three lookups a decision needs, each with the kernel map's
/// semantics. Of the two policy lookups, implement one: `policy` (the
/// whole lookup) or `policy_in` (the kernel's, which may skip the trie).
pub trait PolicyMaps {
    /// The exact entry of a single address (the HOSTS hash map).
    fn host(&self, key: &IpKey) -> Option<IpInfo>;
    /// The longest CIDR entry containing a full-length address (the IPS
    /// LPM trie, which holds no single addresses).
    fn cidr(&self, key: &IpKey) -> Option<IpInfo>;
    /// The longest policy entry that is a prefix of a full key: the exact
    /// entry if there is one (the POLICY_PORTS hash map), else, unless
    /// `trie` is false, the longest shorter one (the POLICY LPM trie,
    /// which holds no full keys). `trie` is false for a parent the
    /// endpoint says holds no shorter entry ([`EP_PARENT_NO_SHORT`]): the
    /// kernel probes the hash map alone. The compiler's own lookups ignore
    /// it and judge by the entries, so a flag that hid an entry would show
    /// as the kernel disagreeing with them.
    fn policy_in(&self, key: &PolicyKey, trie: bool) -> Option<PolicyValue>;

    /// [`PolicyMaps::policy_in`], the whole lookup.
    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        self.policy_in(key, true)
    }
}

/// The outcome of judging a flow against policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The flow may pass (deferred flows pass for now).
    pub allowed: bool,
    /// Egress to a Service cluster IP from an egress-isolated pod: the
    /// verdict waits until DNAT has picked the backend.
    pub defer: bool,
    /// `REASON_NOT_ISOLATED`, `REASON_RULE` (allowed, or denied by a
    /// ClusterNetworkPolicy rule) or `REASON_NO_RULE`.
    pub reason: u8,
    /// The deciding rule (0: none, or not isolated).
    pub rule: u32,
    /// Peer identity of the remote address (0: unknown, or not looked up).
    pub peer: u32,
}

/// What the maps say about an address: the exact entry of a pod, Service
/// or node if there is one, else the longest CIDR covering it, else any
/// peer. (A plain value, not an Option: LLVM leaves an Option's fields
/// partly undefined on the None path, which the verifier rejects.)
#[inline(always)]
pub fn peer_info<M: PolicyMaps>(maps: &M, remote: &IpKey) -> IpInfo {
    if let Some(info) = maps.host(remote) {
        return info;
    }
    match maps.cidr(remote) {
        Some(info) => info,
        None => IpInfo { identity: PEER_ANY, flags: 0, ifindex: 0, namespace: 0 },
    }
}

/// Judges a flow by policy alone. An endpoint neither isolated by a
/// NetworkPolicy nor tiered (selected by a ClusterNetworkPolicy) in this
/// direction is allowed. Otherwise the most specific entry for the peer's
/// identity decides, else the one for any peer, else the one for its
/// namespace (a pod's address): allow or deny, by its rule;
/// the class's own entries first, then (a class with a parent) the
/// parent's.
/// No entry: an isolated endpoint is denied, a tiered one allowed (its
/// entries hold every verdict that differs from that). `dir` is the flow's
/// direction at the local endpoint `ep`, `port` its destination port;
/// `want_peer` looks the peer up even when nothing is (for events that
/// name it).
#[inline(always)]
pub fn decide<M: PolicyMaps>(
    maps: &M,
    ep: &Endpoint,
    dir: u8,
    remote: &IpKey,
    protocol: u8,
    port: u16,
    want_peer: bool,
) -> Decision {
    let (iso_bit, tier_bit) = if dir == DIR_INGRESS {
        (EP_INGRESS_ISOLATED, EP_INGRESS_TIERED)
    } else {
        (EP_EGRESS_ISOLATED, EP_EGRESS_TIERED)
    };
    let isolated = ep.flags & iso_bit != 0;
    let looked_up = ep.flags & (iso_bit | tier_bit) != 0;
    if !looked_up && !want_peer {
        return Decision { allowed: true, defer: false, reason: REASON_NOT_ISOLATED, rule: 0, peer: 0 };
    }
    let info = peer_info(maps, remote);
    let (peer, peer_flags) = (info.identity, info.flags);
    if !looked_up {
        return Decision { allowed: true, defer: false, reason: REASON_NOT_ISOLATED, rule: 0, peer };
    }
    if dir == DIR_EGRESS && peer_flags & IP_SERVICE != 0 {
        return Decision { allowed: true, defer: true, reason: REASON_RULE, rule: 0, peer };
    }
    let own = Shape { short: true, any: true, namespace: ep.flags & EP_NO_NAMESPACE == 0 };
    if let Some(v) = entry(maps, ep.class, own, dir, &info, protocol, port) {
        return by_entry(&v, peer);
    }
    let parents = Shape {
        short: ep.flags & EP_PARENT_NO_SHORT == 0,
        any: ep.flags & EP_PARENT_NO_ANY == 0,
        namespace: ep.flags & EP_PARENT_NO_NAMESPACE == 0,
    };
    if ep.parent != 0
        && let Some(v) = entry(maps, ep.parent, parents, dir, &info, protocol, port)
    {
        return by_entry(&v, peer);
    }
    if isolated {
        Decision { allowed: false, defer: false, reason: REASON_NO_RULE, rule: 0, peer }
    } else {
        Decision { allowed: true, defer: false, reason: REASON_NOT_ISOLATED, rule: 0, peer }
    }
}

/// Which kinds of entry a class may hold (for a parent, as the endpoint's
/// flags say): any shorter than a full key, any for any peer, any keyed
/// by namespace. The lookups of a kind it holds none of are skipped
/// (a class's own always walk the trie and look any peer up: flags for
/// those too doubled the paths the verifier walks, 91k / 119k
/// instructions to 108k / 150k, 100 ms more at every agent start).
#[derive(Clone, Copy)]
struct Shape {
    short: bool,
    any: bool,
    namespace: bool,
}

/// A class's entry for a flow: the most specific for the peer's identity,
/// else the one for any peer, else the one for the peer's namespace (last:
/// a flow that rules for any peer allow, the bench's wildcard case among
/// them, pays nothing for it).
#[inline(always)]
fn entry<M: PolicyMaps>(
    maps: &M,
    class: u32,
    shape: Shape,
    dir: u8,
    info: &IpInfo,
    protocol: u8,
    port: u16,
) -> Option<PolicyValue> {
    let mut key = PolicyKey::new(class, dir, info.identity, protocol, port);
    if info.identity != PEER_ANY
        && let Some(v) = maps.policy_in(&key, shape.short)
    {
        return Some(v);
    }
    if shape.any {
        key.peer = PEER_ANY.to_be_bytes();
        if let Some(v) = maps.policy_in(&key, shape.short) {
            return Some(v);
        }
    }
    if !shape.namespace || info.namespace == 0 {
        return None;
    }
    key.direction = dir | DIR_BY_NAMESPACE;
    key.peer = info.namespace.to_be_bytes();
    maps.policy_in(&key, shape.short)
}

/// The decision a policy entry holds. Rule 0 stands for no rule: a
/// denying one is NetworkPolicy's implicit deny, an allowing one the
/// default allow (a tiered endpoint's Pass).
#[inline(always)]
fn by_entry(v: &PolicyValue, peer: u32) -> Decision {
    let allowed = !v.denies();
    let reason = if v.rule != 0 {
        REASON_RULE
    } else if allowed {
        REASON_NOT_ISOLATED
    } else {
        REASON_NO_RULE
    };
    Decision { allowed, defer: false, reason, rule: v.rule, peer }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FAMILY_V4, PROTO_TCP};

    /// One host, one CIDR and two policy entries, looked up exactly.
    struct Maps;

    const HOST: IpKey = IpKey { family: FAMILY_V4, addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
    const IN_CIDR: IpKey = IpKey { family: FAMILY_V4, addr: [192, 168, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
    const SERVICE: IpKey = IpKey { family: FAMILY_V4, addr: [10, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };
    const OTHER: IpKey = IpKey { family: FAMILY_V4, addr: [8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] };

    impl PolicyMaps for Maps {
        fn host(&self, key: &IpKey) -> Option<IpInfo> {
            match *key {
                HOST => Some(IpInfo { identity: 7, flags: 0, ifindex: 3, namespace: 5 }),
                SERVICE => Some(IpInfo { identity: 9, flags: IP_SERVICE, ifindex: 0, namespace: 0 }),
                _ => None,
            }
        }
        fn cidr(&self, key: &IpKey) -> Option<IpInfo> {
            (key.addr[..2] == [192, 168]).then_some(IpInfo { identity: 8, flags: 0, ifindex: 0, namespace: 0 })
        }
        fn policy_in(&self, key: &PolicyKey, _trie: bool) -> Option<PolicyValue> {
            if u32::from_be_bytes(key.local) != 1 {
                return None;
            }
            if key.direction & DIR_BY_NAMESPACE != 0 {
                // Every pod of namespace 5, on 8080.
                let hit = (u32::from_be_bytes(key.peer), u16::from_be_bytes(key.port)) == (5, 8080);
                return hit.then_some(PolicyValue::allow(400));
            }
            match (u32::from_be_bytes(key.peer), u16::from_be_bytes(key.port)) {
                (7, 80) => Some(PolicyValue::allow(100)),
                (PEER_ANY, 443) => Some(PolicyValue::allow(200)),
                // A tiered identity's entries: a deny by rule, a peer's
                // exception to it, and the implicit deny restored.
                (7, 22) => Some(PolicyValue::allow(0)),
                (PEER_ANY, 22) => Some(PolicyValue::deny(300)),
                (8, 443) => Some(PolicyValue::deny(0)),
                _ => None,
            }
        }
    }

    const ISOLATED: Endpoint = Endpoint { class: 1, flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED, parent: 0 };

    fn verdict(ep: &Endpoint, dir: u8, remote: &IpKey, port: u16) -> (bool, bool, u8, u32, u32) {
        let d = decide(&Maps, ep, dir, remote, PROTO_TCP, port, false);
        (d.allowed, d.defer, d.reason, d.rule, d.peer)
    }

    #[test]
    fn order_of_lookups() {
        assert_eq!(peer_info(&Maps, &HOST).identity, 7, "exact entry first");
        assert_eq!(peer_info(&Maps, &IN_CIDR).identity, 8, "then the CIDR");
        assert_eq!(peer_info(&Maps, &OTHER).identity, PEER_ANY, "else any peer");
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &HOST, 80), (true, false, REASON_RULE, 100, 7), "specific peer");
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &HOST, 443), (true, false, REASON_RULE, 200, 7), "then any peer");
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &IN_CIDR, 80), (false, false, REASON_NO_RULE, 0, 8));
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &OTHER, 443), (true, false, REASON_RULE, 200, PEER_ANY));
    }

    #[test]
    fn the_peers_namespace_is_looked_up_last_unless_the_flags_skip_it() {
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &HOST, 8080), (true, false, REASON_RULE, 400, 7), "namespace");
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &IN_CIDR, 8080), (false, false, REASON_NO_RULE, 0, 8), "no pod");
        let skipped = Endpoint { flags: ISOLATED.flags | EP_NO_NAMESPACE, ..ISOLATED };
        assert_eq!(verdict(&skipped, DIR_INGRESS, &HOST, 8080), (false, false, REASON_NO_RULE, 0, 7), "skipped");
        let child = Endpoint { class: 2, flags: EP_INGRESS_ISOLATED | EP_NO_NAMESPACE, parent: 1 };
        assert_eq!(verdict(&child, DIR_INGRESS, &HOST, 8080), (true, false, REASON_RULE, 400, 7), "the parent's");
        let child = Endpoint { flags: child.flags | EP_PARENT_NO_NAMESPACE, ..child };
        assert_eq!(verdict(&child, DIR_INGRESS, &HOST, 8080), (false, false, REASON_NO_RULE, 0, 7), "skipped");
    }

    #[test]
    fn isolation_and_services() {
        let open = Endpoint { class: 1, flags: 0, parent: 0 };
        assert_eq!(verdict(&open, DIR_EGRESS, &OTHER, 1), (true, false, REASON_NOT_ISOLATED, 0, 0));
        let named = decide(&Maps, &open, DIR_EGRESS, &HOST, PROTO_TCP, 1, true);
        assert_eq!((named.allowed, named.reason, named.peer), (true, REASON_NOT_ISOLATED, 7), "want_peer names it");
        assert_eq!(verdict(&ISOLATED, DIR_EGRESS, &SERVICE, 1), (true, true, REASON_RULE, 0, 9), "deferred");
        assert_eq!(verdict(&ISOLATED, DIR_INGRESS, &SERVICE, 1), (false, false, REASON_NO_RULE, 0, 9));
    }

    #[test]
    fn a_class_with_a_parent_looks_the_parent_up_on_a_miss() {
        // Class 2 holds nothing of its own here: its parent's entries judge.
        let child = Endpoint { class: 2, flags: EP_INGRESS_ISOLATED, parent: 1 };
        assert_eq!(verdict(&child, DIR_INGRESS, &HOST, 80), (true, false, REASON_RULE, 100, 7), "parent's peer entry");
        assert_eq!(verdict(&child, DIR_INGRESS, &OTHER, 443), (true, false, REASON_RULE, 200, PEER_ANY), "any peer");
        assert_eq!(verdict(&child, DIR_INGRESS, &OTHER, 1), (false, false, REASON_NO_RULE, 0, PEER_ANY), "both miss");
        let orphan = Endpoint { parent: 0, ..child };
        assert_eq!(verdict(&orphan, DIR_INGRESS, &HOST, 80), (false, false, REASON_NO_RULE, 0, 7), "no parent");
    }

    #[test]
    fn tiered_endpoints_look_up_and_entries_deny() {
        let tiered = Endpoint { class: 1, flags: EP_INGRESS_TIERED | EP_EGRESS_TIERED, parent: 0 };
        assert_eq!(verdict(&tiered, DIR_INGRESS, &OTHER, 22), (false, false, REASON_RULE, 300, PEER_ANY), "deny rule");
        assert_eq!(verdict(&tiered, DIR_INGRESS, &HOST, 22), (true, false, REASON_NOT_ISOLATED, 0, 7), "peer's pass");
        assert_eq!(verdict(&tiered, DIR_INGRESS, &HOST, 80), (true, false, REASON_RULE, 100, 7), "allow rule");
        assert_eq!(verdict(&tiered, DIR_INGRESS, &OTHER, 1), (true, false, REASON_NOT_ISOLATED, 0, PEER_ANY), "miss");
        assert_eq!(verdict(&tiered, DIR_INGRESS, &IN_CIDR, 443), (false, false, REASON_NO_RULE, 0, 8), "implicit deny");
        assert_eq!(verdict(&tiered, DIR_EGRESS, &SERVICE, 22), (true, true, REASON_RULE, 0, 9), "deferred");
        let both = Endpoint { class: 1, flags: EP_INGRESS_TIERED | EP_INGRESS_ISOLATED, parent: 0 };
        assert_eq!(
            verdict(&both, DIR_INGRESS, &OTHER, 1),
            (false, false, REASON_NO_RULE, 0, PEER_ANY),
            "isolated miss"
        );
        assert_eq!(
            verdict(&both, DIR_EGRESS, &OTHER, 22),
            (true, false, REASON_NOT_ISOLATED, 0, 0),
            "egress untouched"
        );
    }
}
