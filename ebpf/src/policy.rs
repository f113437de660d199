//! Policy as the classifier applies it: the shared decision over the
//! kernel's maps, and the defer mark for egress to Services.

use crate::maps::Kernel;
use aya_ebpf::programs::TcContext;
use palisade_common::{Config, Decision, Endpoint, IpInfo, IpKey};

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

/// What the maps say about an address (see `palisade_common::peer_info`).
#[inline(always)]
pub fn address(family: u8, addr: &[u8; 16]) -> IpInfo {
    palisade_common::peer_info(&Kernel, &IpKey { family, addr: *addr })
}

/// The packet carries the mark of a flow whose egress waits for DNAT.
#[inline(always)]
pub fn deferred(ctx: &TcContext, cfg: &Config) -> bool {
    cfg.defer_mark != 0 && unsafe { (*ctx.skb.skb).mark } & cfg.defer_mark != 0
}

/// Marks the packet so the hook that sees it after DNAT judges its egress.
#[inline(always)]
pub fn mark_deferred(ctx: &TcContext, cfg: &Config) {
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark(mark | cfg.defer_mark);
}
