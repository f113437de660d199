//! The kernel's verdict, computed in user space from compiled entries with
//! the same longest-prefix semantics as the kernel's LPM tries. `trace`
//! uses it to say what the kernel will decide, and tests use it to check
//! the compiler against a reference evaluator and the kernel against both.

use super::Direction;
use super::compile::{Compiled, IpPrefix, PolicyPrefix, family_addr};
use palisade_common::{
    EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, IP_KEY_FAMILY_BITS, IpKey, PEER_ANY, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL, PolicyKey,
};
use std::net::IpAddr;

/// How a flow was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The allowing rule (0 when not isolated or denied).
    pub rule: u32,
    /// Peer identity of the remote address (0: unknown).
    pub peer: u32,
    /// Whether the local pod is isolated in this direction.
    pub isolated: bool,
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

/// Peer identity of an address: the longest matching IP-trie prefix.
pub fn peer_identity(c: &Compiled, addr: IpAddr) -> u32 {
    let (family, a) = family_addr(addr);
    let max = IP_KEY_FAMILY_BITS + if addr.is_ipv4() { 32 } else { 128 };
    for len in (IP_KEY_FAMILY_BITS..=max).rev() {
        let mut bytes = a;
        masked(&mut bytes, len - IP_KEY_FAMILY_BITS);
        if let Some(info) = c.ips.get(&IpPrefix { prefix_len: len, key: IpKey { family, addr: bytes } }) {
            return info.identity;
        }
    }
    PEER_ANY
}

fn policy_lookup(c: &Compiled, key: PolicyKey) -> Option<u32> {
    for len in (POLICY_PREFIX_ANY_PROTO..=POLICY_PREFIX_FULL).rev() {
        let mut k = key;
        let mut bytes = [0u8; 3];
        bytes[0] = k.protocol;
        bytes[1..].copy_from_slice(&k.port);
        masked(&mut bytes, len - POLICY_PREFIX_ANY_PROTO);
        k.protocol = bytes[0];
        k.port = [bytes[1], bytes[2]];
        if let Some(v) = c.policy.get(&PolicyPrefix { prefix_len: len, key: k }) {
            return Some(v.rule);
        }
    }
    None
}

/// What the classifier decides for the first packet of a flow on a local
/// endpoint with `identity`/`flags`.
pub fn decide(
    c: &Compiled,
    identity: u32,
    flags: u32,
    dir: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
) -> Verdict {
    let peer = peer_identity(c, remote);
    let bit = if dir == Direction::Ingress { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
    if flags & bit == 0 {
        return Verdict { allowed: true, rule: 0, peer, isolated: false };
    }
    let mut key = PolicyKey {
        local: identity.to_be_bytes(),
        direction: dir.code(),
        peer: peer.to_be_bytes(),
        protocol,
        port: port.to_be_bytes(),
    };
    if peer != PEER_ANY
        && let Some(rule) = policy_lookup(c, key)
    {
        return Verdict { allowed: true, rule, peer, isolated: true };
    }
    key.peer = PEER_ANY.to_be_bytes();
    match policy_lookup(c, key) {
        Some(rule) => Verdict { allowed: true, rule, peer, isolated: true },
        None => Verdict { allowed: false, rule: 0, peer, isolated: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
