//! palisade's TC classifiers: one on the host side of every local pod's
//! veth, in each direction. A packet's verdict takes a handful of bounded
//! map lookups and never loops over policies or pods.
//!
//! First, a plain packet of a flow tracked under the current revision
//! passes on one lookup ([`conntrack::fast`]), or drops there if policy
//! denied the flow within its drop-event interval. The pipeline for the rest
//! ([`judge`]): parse; link plumbing passes; a pending pod
//! drops; fragments get their first fragment's ports; a tracked flow passes
//! (or is decided again after a policy change); a packet leaving a pod from
//! an address that is not the pod's drops; an ICMP error about a tracked
//! flow passes; anything else is a new flow, decided by policy and tracked.
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: copies of 40-byte keys cost
// space on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod conntrack;
mod events;
mod maps;
mod netfilter;
mod parse;
mod policy;
mod skb;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use conntrack::{Fast, Tracked};
use events::{drop_packet, emit};
use maps::count;
use palisade_common::{
    CFG_LOG_NEW_FLOWS, CT_ALLOWED, CT_AUDITED, CT_DEFERRED, Config, CtKey, DIR_EGRESS, DIR_INGRESS, EP_AUDIT,
    EP_PENDING, Endpoint, IP_SERVICE, REASON_MALFORMED, REASON_PENDING, REASON_SPOOFED, REASON_UNATTRIBUTED,
    REASON_UNTRANSLATED, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DROPPED, stat,
};
use parse::{Packet, Parsed};
use policy::{bare, deferred, mark_deferred};
use skb::Skb;

/// Let the packet continue (to the next TC program, if any).
const PASS: i32 = TC_ACT_UNSPEC;
// The bindings' integer type for TC_ACT_SHOT differs between targets.
#[allow(clippy::unnecessary_cast)]
const DROP: i32 = TC_ACT_SHOT as i32;

/// One packet being judged, and where: what every stage after parsing
/// needs, passed by reference instead of as long argument lists.
pub struct Flow<'a> {
    /// Host-side interface of the local pod.
    pub ifindex: u32,
    /// The local pod's endpoint entry.
    pub ep: &'a Endpoint,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`], seen from the local pod.
    pub dir: u8,
    pub cfg: &'a Config,
    pub pkt: &'a Packet,
    /// [`conntrack::now`] when judging started.
    pub now: u64,
    /// `EVF_*` flags for the packet's events.
    pub ev_flags: u8,
}

/// Host veth TC ingress: packets the pod sends (its egress).
#[classifier]
pub fn palisade_from_pod(ctx: TcContext) -> i32 {
    classify::<DIR_EGRESS>(&ctx)
}

/// Host veth TC egress: packets delivered to the pod (its ingress).
#[classifier]
pub fn palisade_to_pod(ctx: TcContext) -> i32 {
    classify::<DIR_INGRESS>(&ctx)
}

/// Node interfaces without the pod hooks: judges the egress of pod traffic
/// that kube-proxy DNATed from a Service cluster IP to a backend elsewhere.
/// Only packets carrying the defer mark are looked at (a pod's hook judges
/// those delivered to it itself, see [`deferred_egress`]).
#[classifier]
pub fn palisade_host_egress(ctx: TcContext) -> i32 {
    let Some(cfg) = maps::config() else {
        return PASS;
    };
    if !deferred(&ctx, &cfg) {
        return PASS;
    }
    judge_deferred_here(&ctx, &cfg)
}

/// A deferred packet, at the host hook or a pod's to-pod hook: one that
/// does not parse drops, since nothing after this would judge its sender's
/// egress.
#[inline(always)]
fn judge_deferred_here(ctx: &TcContext, cfg: &Config) -> i32 {
    let mut pkt = Packet::empty();
    if parse::parse(ctx, &mut pkt) != Parsed::Ip {
        count(stat::DROPPED_MALFORMED);
        return DROP;
    }
    judge_deferred(ctx, cfg, &pkt)
}

/// The pod hooks: the fast path, then the rest in a call of its own, so
/// that neither call's frame adds to the other's: the pipeline's frame
/// and the fast path's key together would pass the 512 bytes of stack BPF
/// allows.
#[inline(always)]
fn classify<const DIR: u8>(ctx: &TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // A tracked flow's plain packet passes (a denied one's drops) on one
    // lookup.
    match conntrack::fast(ctx, ifindex, DIR) {
        Fast::Pass => return PASS,
        Fast::Drop => return DROP,
        fast => skb::note_fast_path(ctx, fast == Fast::Missed),
    }
    // A pod's packet DNATed from a Service to the pod behind this
    // interface: the sender's egress is judged first, now that the backend
    // is known (also when this interface's pod is not known yet, as the
    // host egress hook would: this interface carries none). In a call of
    // its own, before the pipeline's: their frames together would pass the
    // stack BPF allows, and within the pipeline the verifier walked it
    // again on every path.
    if DIR == DIR_INGRESS && deferred_egress(ctx) == DROP {
        return DROP;
    }
    classify_full::<DIR>(ctx, ifindex)
}

/// A deferred packet delivered to a pod's interface: its sender's egress
/// (see [`judge_deferred_here`]); PASS for any other packet.
#[inline(never)]
fn deferred_egress(ctx: &TcContext) -> i32 {
    // Read in place: most packets carry no mark, and a copy of the config
    // (the snapshot the pipeline judges by) is taken only for those that do.
    match maps::config_ref() {
        Some(cfg) if deferred(ctx, cfg) => {
            let snapshot = *cfg;
            judge_deferred_here(ctx, &snapshot)
        }
        _ => PASS,
    }
}

/// A pod hook's packet the fast path did not pass. `DIR` is constant: the
/// pipeline of one direction fits the stack, that of both would not.
#[inline(never)]
fn classify_full<const DIR: u8>(ctx: &TcContext, ifindex: u32) -> i32 {
    let dir = DIR;
    let cfg = maps::config().unwrap_or_default();
    // Interfaces without an endpoint entry are not ours to judge (but see
    // `classify`).
    let Some(ep) = maps::endpoint(ifindex) else {
        return PASS;
    };
    let mut pkt = Packet::empty();
    match parse::parse(ctx, &mut pkt) {
        // Judged in netfilter against the client kube-proxy may have
        // SNATed away: only tracked here, for the pod's replies.
        Parsed::Ip if dir == DIR_INGRESS && netfilter::judged(ctx, &cfg) => {
            netfilter::track_judged(ifindex, &cfg, &pkt)
        }
        Parsed::Ip => judge(ctx, ifindex, &ep, dir, &cfg, &mut pkt),
        Parsed::NotIp => PASS,
        Parsed::Malformed => {
            count(stat::DROPPED_MALFORMED);
            let f = Flow { ifindex, ep: &ep, dir, cfg: &cfg, pkt: &pkt, now: 0, ev_flags: 0 };
            emit(&f, VERDICT_DROPPED, &bare(REASON_MALFORMED), 1);
            DROP
        }
    }
}

#[inline(always)]
pub fn judge<C: Skb>(ctx: &C, ifindex: u32, ep: &Endpoint, dir: u8, cfg: &Config, pkt: &mut Packet) -> i32 {
    if parse::is_ipv6_link_control(pkt) {
        return PASS;
    }
    if ep.flags & EP_PENDING != 0 {
        let key = conntrack::ct_key(ifindex, dir, pkt);
        let f = Flow { ifindex, ep, dir, cfg, pkt, now: conntrack::now(cfg), ev_flags: 0 };
        return drop_packet(&f, &bare(REASON_PENDING), &key);
    }
    let ev_flags = conntrack::fragments(pkt);
    let key = conntrack::ct_key(ifindex, dir, pkt);
    let mut f = Flow { ifindex, ep, dir, cfg, pkt, now: conntrack::now(cfg), ev_flags };
    match conntrack::tracked(ctx, &mut f, &key) {
        Tracked::Pass => return PASS,
        Tracked::Drop => return DROP,
        Tracked::Miss => {}
    }
    // Checked here, past connection tracking, to keep tracked packets at one
    // lookup: a tracked flow's key holds the interface and the local
    // address, and its entry was made by this check (pod egress) or by a
    // packet routed to that address on that interface (pod ingress). An
    // address that moves bumps the revision, and re-decision checks again.
    if dir == DIR_EGRESS && !policy::own_source(ifindex, f.pkt.family, &f.pkt.src) {
        return drop_packet(&f, &bare(REASON_SPOOFED), &key);
    }
    if conntrack::related(ctx, &f, &key) {
        count(stat::ALLOWED);
        return PASS;
    }
    new_flow(ctx, &f, &key)
}

/// Decides a flow's first packet by policy and tracks the flow.
#[inline(always)]
fn new_flow<C: Skb>(ctx: &C, f: &Flow, key: &CtKey) -> i32 {
    let log_new = f.cfg.flags & CFG_LOG_NEW_FLOWS != 0;
    let d = policy::decide(f.ep, f.dir, f.pkt.family, &key.remote, f.pkt.protocol, f.pkt.dport, log_new);
    let verdict = if d.defer {
        mark_deferred(ctx, f.cfg, f.ifindex);
        CT_DEFERRED
    } else if d.allowed {
        CT_ALLOWED
    } else if f.ep.flags & EP_AUDIT != 0 {
        CT_AUDITED
    } else {
        return conntrack::deny(ctx, f, &d, key, f.dir);
    };
    conntrack::track(f, key, d.rule, verdict);
    if verdict == CT_DEFERRED {
        // The event comes from the hook that sees the backend.
        count(stat::ALLOWED);
    } else if verdict == CT_AUDITED {
        count(stat::AUDITED);
        emit(f, VERDICT_AUDIT, &d, 1);
    } else {
        count(stat::ALLOWED);
        if log_new {
            emit(f, VERDICT_ALLOWED, &d, 1);
        }
    }
    PASS
}

/// Judges, after DNAT, the egress of a local pod's packet that was sent to
/// a Service: against the real backend, with the pod's own endpoint and
/// connection tracking, as if its egress hook had seen the backend. Fails
/// closed: a packet still addressed to a Service (nothing translated it)
/// or whose sender is unknown drops, or it would pass unjudged.
#[inline(always)]
pub fn judge_deferred<C: Skb>(ctx: &C, cfg: &Config, pkt: &Packet) -> i32 {
    // The sender as its egress hook recorded it; else by source address.
    let mut ifindex = policy::deferred_source(ctx);
    if ifindex == 0 {
        ifindex = policy::address(pkt.family, &pkt.src).ifindex;
    }
    let ep = match maps::endpoint(ifindex) {
        Some(ep) if ifindex != 0 => ep,
        _ => {
            let nobody = Endpoint { class: 0, flags: 0, parent: 0 };
            let key = conntrack::ct_key(0, DIR_EGRESS, pkt);
            let f = Flow { ifindex: 0, ep: &nobody, dir: DIR_EGRESS, cfg, pkt, now: conntrack::now(cfg), ev_flags: 0 };
            return drop_packet(&f, &bare(REASON_UNATTRIBUTED), &key);
        }
    };
    let key = conntrack::ct_key(ifindex, DIR_EGRESS, pkt);
    let f = Flow { ifindex, ep: &ep, dir: DIR_EGRESS, cfg, pkt, now: conntrack::now(cfg), ev_flags: 0 };
    // Checked before connection tracking: an untranslated packet has the
    // key of the deferred flow itself.
    let dst = policy::address(pkt.family, &pkt.dst);
    if dst.flags & IP_SERVICE != 0 {
        let mut d = bare(REASON_UNTRANSLATED);
        d.peer = dst.identity;
        return drop_packet(&f, &d, &key);
    }
    if conntrack::current(&f, &key) {
        return PASS;
    }
    let log_new = cfg.flags & CFG_LOG_NEW_FLOWS != 0;
    let d = policy::decide(&ep, DIR_EGRESS, pkt.family, &pkt.dst, pkt.protocol, pkt.dport, log_new);
    let verdict = if d.allowed {
        CT_ALLOWED
    } else if ep.flags & EP_AUDIT != 0 {
        CT_AUDITED
    } else {
        conntrack::forget(&key);
        return drop_packet(&f, &d, &key);
    };
    conntrack::track(&f, &key, d.rule, verdict);
    if verdict == CT_AUDITED {
        count(stat::AUDITED);
        emit(&f, VERDICT_AUDIT, &d, 1);
    } else if log_new {
        emit(&f, VERDICT_ALLOWED, &d, 1);
    }
    PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
