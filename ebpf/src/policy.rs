//! Policy as the classifier applies it: the shared decision over the
//! kernel's maps, the source address check, and the defer mark for egress
//! to Services.

use crate::maps::Kernel;
use crate::skb::Skb;
use palisade_common::{Config, Decision, Endpoint, FAMILY_V4, IpInfo, IpKey, PolicyMaps};

/// `palisade_common::decide` over the kernel's maps.
#[inline(always)]
pub fn decide(
    ep: &Endpoint,
    dir: u8,
    family: u8,
    remote: &[u8; 16],
    protocol: u8,
    port: u16,
    want_peer: bool,
) -> Decision {
    palisade_common::decide(&Kernel, ep, dir, &IpKey { family, addr: *remote }, protocol, port, want_peer)
}

/// A decision that names no rule or peer: drops for reasons of their own.
#[inline(always)]
pub fn bare(reason: u8) -> Decision {
    Decision { allowed: false, defer: false, reason, rule: 0, peer: 0 }
}

/// Whether a packet leaving the pod on `ifindex` from `src` may claim that
/// source: the address's exact entry names this interface (the agent
/// writes it before the endpoint entry, so a pod never sees its own
/// addresses refused). The unspecified address (DHCP, DAD) and IPv6
/// link-local sources (router and neighbour discovery) are link plumbing
/// no router forwards beyond the host; they go on to policy.
#[inline(always)]
pub fn own_source(ifindex: u32, family: u8, src: &[u8; 16]) -> bool {
    let link_only = if family == FAMILY_V4 {
        src[0] == 0 && src[1] == 0 && src[2] == 0 && src[3] == 0
    } else {
        (src[0] == 0xfe && src[1] & 0xc0 == 0x80) || *src == [0u8; 16]
    };
    if link_only {
        return true;
    }
    match Kernel.host(&IpKey { family, addr: *src }) {
        Some(info) => info.ifindex == ifindex,
        None => false,
    }
}

/// What the maps say about an address (see `palisade_common::peer_info`).
#[inline(always)]
pub fn address(family: u8, addr: &[u8; 16]) -> IpInfo {
    palisade_common::peer_info(&Kernel, &IpKey { family, addr: *addr })
}

/// The packet carries the mark of a flow whose egress waits for DNAT.
#[inline(always)]
pub fn deferred<C: Skb>(ctx: &C, cfg: &Config) -> bool {
    cfg.defer_mark != 0 && ctx.mark() & cfg.defer_mark != 0
}

/// Marks the packet so the hook that sees it after DNAT judges its egress,
/// and records the sender's interface in the skb's `tc_index` (which
/// netfilter and routing keep, and no other hook of ours reads): when
/// kube-proxy also SNATs the packet (hairpin, `--masquerade-all`), its
/// source no longer names the pod. An interface beyond 16 bits is not
/// recorded; its SNATed packets are then unattributed and drop.
#[inline(always)]
pub fn mark_deferred<C: Skb>(ctx: &C, cfg: &Config, ifindex: u32) {
    let source = if ifindex <= u16::MAX as u32 { ifindex } else { 0 };
    ctx.set_deferred(cfg.defer_mark, source);
}

/// The interface of the pod that sent a deferred packet, as
/// [`mark_deferred`] recorded it (0: not recorded).
#[inline(always)]
pub fn deferred_source<C: Skb>(ctx: &C) -> u32 {
    ctx.tc_index()
}
