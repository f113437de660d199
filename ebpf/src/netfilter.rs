//! The netfilter hooks: socket filters the agent installs as xt_bpf
//! matches (target DROP) in the mangle table's INPUT and FORWARD chains,
//! which run after kube-proxy's DNAT (nat PREROUTING) and before its SNAT
//! (nat POSTROUTING or INPUT). There a Service packet holds both its real
//! backend and its real client, which the TC hooks cannot both see when
//! the backend is the node itself (delivered locally: no TC hook) or when
//! kube-proxy SNATs the client to a node address (NodePort, LoadBalancer,
//! `--masquerade-all`). They judge with the same parser, decision and
//! connection tracking as the classifiers. See DESIGN.md, Hooks.

use crate::conntrack::{self, Tracked, ct_key};
use crate::maps::{self, count};
use crate::parse::{self, Packet, Parsed};
use crate::policy::{self, deferred};
use crate::skb::Skb;
use crate::{DROP, Flow, PASS, judge, judge_deferred};
use aya_ebpf::{macros::socket_filter, programs::SkBuffContext};
use palisade_common::{CT_DENIED, CT_UPSTREAM, Config, CtEntry, DIR_EGRESS, DIR_INGRESS, stat};

/// What the xt_bpf match returns: a match drops the packet.
const NF_PASS: i64 = 0;
const NF_DROP: i64 = 1;

#[inline(always)]
fn verdict(tc: i32) -> i64 {
    if tc == DROP { NF_DROP } else { NF_PASS }
}

/// mangle INPUT, deferred packets (the rule matches the defer mark): pod
/// traffic to a Service that kube-proxy DNATed to the node itself (a
/// host-network backend). Judges the pod's egress against the node's
/// address, as the backend's TC hook would have. A deferred packet that
/// does not parse drops: nothing would judge it after this.
#[socket_filter]
pub fn palisade_nf_local(ctx: SkBuffContext) -> i64 {
    let cfg = maps::config().unwrap_or_default();
    if !deferred(&ctx, &cfg) {
        return NF_PASS;
    }
    let mut pkt = Packet::empty();
    if parse::parse(&ctx, &mut pkt) != Parsed::Ip {
        count(stat::DROPPED_MALFORMED);
        return NF_DROP;
    }
    verdict(judge_deferred(&ctx, &cfg, &pkt))
}

/// mangle FORWARD, DNATed packets in their original direction: judges the
/// ingress of the local pod they go to against the client that sent them,
/// before kube-proxy may SNAT it to a node address. The agent's next rule
/// sets the judged mark, so the pod's TC hook only tracks them.
#[socket_filter]
pub fn palisade_nf_forward(ctx: SkBuffContext) -> i64 {
    judge_local(&ctx, DIR_INGRESS)
}

/// mangle FORWARD, DNATed packets in their reply direction: the local
/// backend's replies, with the SNAT undone, judged on the flow its
/// original direction was judged on (decided again after a policy change,
/// which the pod's TC hook cannot do against a node address).
#[socket_filter]
pub fn palisade_nf_reply(ctx: SkBuffContext) -> i64 {
    judge_local(&ctx, DIR_EGRESS)
}

/// Judges the packet for the local pod on its `dir` side (ingress: the
/// destination, egress: the source), if there is one. What does not parse
/// passes: the pod's TC hook drops it.
#[inline(always)]
fn judge_local(ctx: &SkBuffContext, dir: u8) -> i64 {
    let cfg = maps::config().unwrap_or_default();
    let mut pkt = Packet::empty();
    if parse::parse(ctx, &mut pkt) != Parsed::Ip {
        return NF_PASS;
    }
    let local = if dir == DIR_INGRESS { pkt.dst } else { pkt.src };
    let ifindex = policy::address(pkt.family, &local).ifindex;
    if ifindex == 0 {
        return NF_PASS;
    }
    let Some(ep) = maps::endpoint(ifindex) else {
        return NF_PASS;
    };
    verdict(judge(ctx, ifindex, &ep, dir, &cfg, &mut pkt))
}

/// The packet carries the judged mark: its ingress verdict was given in
/// netfilter.
#[inline(always)]
pub fn judged<C: Skb>(ctx: &C, cfg: &Config) -> bool {
    cfg.judged_mark != 0 && ctx.mark() & cfg.judged_mark != 0
}

/// The pod's TC ingress hook, for a packet netfilter judged: passes it and
/// makes sure the flow, as the pod sees it (its source possibly SNATed to
/// a node address), is tracked so the pod's replies pass its egress hook.
/// Nothing is counted or reported: netfilter did both.
#[inline(always)]
pub fn track_judged(ifindex: u32, cfg: &Config, pkt: &Packet) -> i32 {
    let key = ct_key(ifindex, DIR_INGRESS, pkt);
    let now = conntrack::now(cfg);
    if let Some(ct) = conntrack::entry(&key) {
        let ct = unsafe { &mut *ct };
        // Not SNATed: the very entry netfilter keeps current.
        if ct.revision == cfg.revision && ct.verdict != CT_DENIED {
            ct.last_seen_ns = now;
            return PASS;
        }
    }
    let entry = CtEntry {
        last_seen_ns: now,
        revision: cfg.revision,
        rule: 0,
        origin: DIR_INGRESS,
        verdict: CT_UPSTREAM,
        _pad: [0; 2],
        suppressed: 0,
    };
    conntrack::insert(&key, &entry);
    PASS
}

/// A tracked flow netfilter judged, seen by the pod's TC hooks: a reply
/// leaving the pod passes whatever the revision, since netfilter judges
/// it next with the real peer; anything else entering the pod without
/// the judged mark is no packet of that flow and is judged as new.
#[inline(always)]
pub fn tracked_judged(ct: &mut CtEntry, f: &Flow) -> Tracked {
    if f.dir == DIR_EGRESS {
        ct.last_seen_ns = f.now;
        return Tracked::Pass;
    }
    Tracked::Miss
}
