//! The kernel's verdict, computed in user space: the classifier's own
//! [`palisade_common::decide`] over the compiled entries, with the kernel
//! tries' longest-prefix semantics emulated by walking prefix lengths.
//! `trace` uses it to say what the kernel will decide, and tests use it to
//! check the compiler against a reference evaluator and the kernel against
//! both.

use super::Direction;
use super::compile::{Compiled, IpPrefix, PolicyPrefix};
use palisade_common::{
    EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, Endpoint, IP_KEY_FAMILY_BITS, IpInfo, IpKey, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL, PolicyKey, PolicyMaps, PolicyValue, ip_key_full_len, peer_info,
};
use std::net::IpAddr;

/// How a flow was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The deciding rule: the allowing one, or a ClusterNetworkPolicy Deny
    /// (0 when none decided, or deferred).
    pub rule: u32,
    /// Peer identity of the remote address (0: unknown).
    pub peer: u32,
    /// Whether a NetworkPolicy isolates the local pod in this direction.
    pub isolated: bool,
    /// Egress to a Service cluster IP: the kernel lets it pass and judges
    /// it after DNAT, against the backend.
    pub deferred: bool,
}

fn masked(bytes: &mut [u8], prefix_len: u32) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= prefix_len {
            *b = 0;
        } else if prefix_len < start + 8 {
            *b &= 0xffu8 << (8 - (prefix_len - start));
        }
    }
}

/// The compiled entries, looked up as the kernel looks its maps up: single
/// addresses exactly (they go to the hash map), CIDRs and policy entries by
/// longest prefix.
impl PolicyMaps for Compiled {
    fn host(&self, key: &IpKey) -> Option<IpInfo> {
        self.ips.get(&IpPrefix { prefix_len: ip_key_full_len(key.family), key: *key }).copied()
    }

    fn cidr(&self, key: &IpKey) -> Option<IpInfo> {
        (IP_KEY_FAMILY_BITS..ip_key_full_len(key.family)).rev().find_map(|len| {
            let mut k = *key;
            masked(&mut k.addr, len - IP_KEY_FAMILY_BITS);
            self.ips.get(&IpPrefix { prefix_len: len, key: k }).copied()
        })
    }

    /// Every entry, whatever `trie` says (see the trait).
    fn policy_in(&self, key: &PolicyKey, _trie: bool) -> Option<PolicyValue> {
        (POLICY_PREFIX_ANY_PROTO..=POLICY_PREFIX_FULL).rev().find_map(|len| {
            let mut k = *key;
            let mut bytes = [k.protocol, k.port[0], k.port[1]];
            masked(&mut bytes, len - POLICY_PREFIX_ANY_PROTO);
            k.protocol = bytes[0];
            k.port = [bytes[1], bytes[2]];
            self.policy.get(&PolicyPrefix { prefix_len: len, key: k }).copied()
        })
    }
}

/// Peer identity of an address, as the classifier finds it.
pub fn peer_identity(maps: &impl PolicyMaps, addr: IpAddr) -> u32 {
    peer_info(maps, &IpKey::from_ip(addr)).identity
}

/// What the classifier decides for the first packet of a flow on a local
/// endpoint whose kernel entry is `ep`, given `maps` (the compiled entries
/// or the pinned kernel maps).
pub fn decide(
    maps: &impl PolicyMaps,
    ep: &Endpoint,
    dir: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
) -> Verdict {
    let flags = ep.flags;
    let isolated_bit = if dir == Direction::Ingress { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
    let d = palisade_common::decide(maps, ep, dir.code(), &IpKey::from_ip(remote), protocol, port, true);
    Verdict { allowed: d.allowed, rule: d.rule, peer: d.peer, isolated: flags & isolated_bit != 0, deferred: d.defer }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::{POLICY_PREFIX_PROTO, PROTO_TCP, PROTO_UDP, PolicyValue};

    #[test]
    fn compiled_entries_look_up_like_the_kernel_maps() {
        let mut c = Compiled::default();
        let net = |s: &str| IpPrefix::from_net(s.parse().unwrap());
        let info = |identity| IpInfo { identity, flags: 0, ifindex: 0, namespace: 0 };
        c.ips.insert(net("10.0.0.0/8"), info(5));
        c.ips.insert(net("10.1.2.3/32"), info(7));
        let key = |s: &str| IpKey::from_ip(s.parse().unwrap());
        assert_eq!(c.host(&key("10.1.2.3")), Some(info(7)));
        assert_eq!(c.host(&key("10.1.2.4")), None, "the hash map holds addresses, not CIDRs");
        assert_eq!(c.cidr(&key("10.1.2.3")), Some(info(5)), "the trie holds CIDRs, not addresses");
        assert_eq!(c.cidr(&key("11.0.0.1")), None);
        assert_eq!(peer_identity(&c, "10.1.2.3".parse().unwrap()), 7);
        assert_eq!(peer_identity(&c, "10.9.9.9".parse().unwrap()), 5);

        let any_tcp = PolicyKey::new(1, 0, 0, PROTO_TCP, 0);
        c.policy.insert(PolicyPrefix { prefix_len: POLICY_PREFIX_PROTO, key: any_tcp }, PolicyValue::allow(3));
        assert_eq!(c.policy(&PolicyKey::new(1, 0, 0, PROTO_TCP, 443)), Some(PolicyValue::allow(3)));
        assert_eq!(c.policy(&PolicyKey::new(1, 0, 0, PROTO_UDP, 443)), None);
        assert_eq!(c.policy(&PolicyKey::new(2, 0, 0, PROTO_TCP, 443)), None);
    }

    #[test]
    fn masking() {
        let mut b = [0xff, 0xff, 0xff];
        masked(&mut b, 12);
        assert_eq!(b, [0xff, 0xf0, 0]);
        let mut b = [0xff, 0xff];
        masked(&mut b, 0);
        assert_eq!(b, [0, 0]);
    }
}
