//! Connection tracking: a flow is judged on its first packet and its
//! verdict kept per endpoint, so replies and later packets pass on one hash
//! lookup; a policy change (a new revision) has each tracked flow decided
//! again on its next packet. A denied flow is kept for its drop-event
//! interval, so its next packets drop on that one lookup ([`deny`]).
//! Also: first fragments' ports, for the fragments that follow, and ICMP
//! errors about tracked flows.

use crate::events::{self, drop_packet, emit};
use crate::maps::{CONNTRACK4, CONNTRACK6, FRAGS, count};
use crate::parse::{self, Frag, Packet, Plain};
use crate::policy::{bare, decide, mark_deferred, own_source};
use crate::skb::Skb;
use crate::{DROP, Flow};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use core::mem::MaybeUninit;
use palisade_common::{
    CT_ALLOWED, CT_AUDITED, CT_DEFERRED, CT_DENIED, CT_UPSTREAM, Config, CtEntry, CtKey, CtKey4, DIR_EGRESS,
    DIR_INGRESS, Decision, EP_AUDIT, EVF_FRAGMENT, EVF_REDECIDED, FAMILY_V4, FragKey, FragPorts, PROTO_TCP,
    REASON_SPOOFED, VERDICT_AUDIT, stat,
};

/// Tracked TCP flows expire after six hours idle, others after a minute.
const CT_TIMEOUT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
const CT_TIMEOUT_OTHER_NS: u64 = 60 * 1_000_000_000;
/// last_seen is refreshed at most this often, so the hot path rarely writes.
const CT_REFRESH_NS: u64 = 1_000_000_000;

/// The clock of connection tracking and drop suppression, in every hook
/// (entries are compared across them), in nanoseconds at tick resolution:
/// jiffies times the tick the agent wrote, since the verifier inlines a
/// read of jiffies (one load) where the coarse monotonic clock is a helper
/// call with a seqlock loop, on every tracked packet. Timeouts and the
/// refresh interval are a second or more, so a tick of lag does not
/// matter. Before the agent writes the tick, the coarse clock: entries
/// stamped by the other clock look expired and are decided again.
#[inline(always)]
pub fn now(cfg: &Config) -> u64 {
    if cfg.tick_ns != 0 {
        unsafe { bpf_jiffies64() }.wrapping_mul(u64::from(cfg.tick_ns))
    } else {
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

/// The flow's entry, in the table of its family (see `CtKey4`).
#[inline(always)]
pub fn entry(key: &CtKey) -> Option<*mut CtEntry> {
    if key.family == FAMILY_V4 { CONNTRACK4.get_ptr_mut(&key.v4()) } else { CONNTRACK6.get_ptr_mut(key) }
}

/// Enters or replaces the flow's entry.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry) {
    let _ = if key.family == FAMILY_V4 {
        CONNTRACK4.insert(&key.v4(), entry, BPF_ANY as u64)
    } else {
        CONNTRACK6.insert(key, entry, BPF_ANY as u64)
    };
}

/// The entry is live: seen within its protocol's timeout; a denied flow's,
/// within the drop-event interval after its last event.
#[inline(always)]
fn live(ct: &CtEntry, now: u64, protocol: u8, cfg: &Config) -> bool {
    let timeout = if ct.verdict == CT_DENIED {
        cfg.drop_event_interval_ns
    } else if protocol == PROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    };
    now.wrapping_sub(ct.last_seen_ns) < timeout
}

/// A live entry decided under the current revision (not [`CT_UPSTREAM`]):
/// the packet passes, counted; refreshed at most once a second; a deferred
/// flow's packets in its first direction marked.
#[inline(always)]
fn pass_current<C: Skb>(ctx: &C, ct: &mut CtEntry, cfg: &Config, ifindex: u32, dir: u8, now: u64) {
    if now.wrapping_sub(ct.last_seen_ns) > CT_REFRESH_NS {
        ct.last_seen_ns = now;
    }
    if ct.verdict == CT_DEFERRED && dir == ct.origin {
        mark_deferred(ctx, cfg, ifindex);
    }
    count(if ct.verdict == CT_AUDITED { stat::AUDITED } else { stat::ALLOWED });
}

/// The pod hooks' fast path, before anything else: a plain packet (see
/// [`parse::plain_key`]) of a flow tracked under the current revision
/// passes on this one lookup ([`Fast::Pass`]), without the endpoint lookup
/// or the full parse. The endpoint need not be read: every endpoint change
/// (added, removed, flags, class, held closed) bumps the revision, so a
/// current entry was decided against the endpoint entry in force. Anything
/// else goes to the full pipeline: a packet entering a pod with the defer
/// mark (its sender's egress is judged first) or the judged mark
/// (netfilter judged it; its hook only tracks), a [`CT_UPSTREAM`] entry, a
/// stale or expired one (looked up again there), a miss ([`Fast::Missed`]:
/// not looked up again).
///
/// Not inlined: a BPF-to-BPF call, whose frame (the key) the verifier
/// drops on return, so the pipeline after it is verified once, not once
/// per way of leaving the fast path.
#[inline(never)]
pub fn fast(ctx: &TcContext, ifindex: u32, dir: u8) -> Fast {
    let Some(cfg) = crate::maps::config_ref() else {
        return Fast::Full;
    };
    if dir == DIR_INGRESS && ctx.mark() & (cfg.defer_mark | cfg.judged_mark) != 0 {
        return Fast::Full;
    }
    let (mut key4, mut key6) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    // SAFETY: the key plain_key says it wrote, whole.
    match parse::plain_key(ctx, ifindex, dir, &mut key4, &mut key6) {
        Plain::V4 => fast_in(ctx, cfg, unsafe { key4.assume_init_ref() }, ifindex, dir),
        Plain::V6 => fast_in(ctx, cfg, unsafe { &key6.assume_init_ref().0 }, ifindex, dir),
        Plain::No => Fast::Full,
    }
}

/// A flow key and the conntrack table it is looked up in.
trait Table {
    fn lookup(&self) -> Option<*mut CtEntry>;
    fn protocol(&self) -> u8;
}

impl Table for CtKey4 {
    #[inline(always)]
    fn lookup(&self) -> Option<*mut CtEntry> {
        CONNTRACK4.get_ptr_mut(self)
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
}

impl Table for CtKey {
    #[inline(always)]
    fn lookup(&self) -> Option<*mut CtEntry> {
        CONNTRACK6.get_ptr_mut(self)
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
}

/// [`fast`] past the parse, once per family, so that each table's lookup
/// is a call of its own (written once for both, the compiler made it one
/// call with either map, which the verifier does not inline: it went
/// through the generic helper, an indirect call).
#[inline(always)]
fn fast_in<K: Table>(ctx: &TcContext, cfg: &Config, key: &K, ifindex: u32, dir: u8) -> Fast {
    let Some(ct) = key.lookup() else {
        return Fast::Missed;
    };
    let ct = unsafe { &mut *ct };
    let now = now(cfg);
    if ct.revision != cfg.revision || ct.verdict == CT_UPSTREAM || !live(ct, now, key.protocol(), cfg) {
        return Fast::Full;
    }
    if ct.verdict == CT_DENIED {
        if dir != ct.origin {
            return Fast::Full;
        }
        ct.suppressed = ct.suppressed.wrapping_add(1);
        count(stat::DROPPED_NO_RULE);
        count(stat::EVENTS_SUPPRESSED);
        return Fast::Drop;
    }
    pass_current(ctx, ct, cfg, ifindex, dir, now);
    Fast::Pass
}

/// What [`fast`] made of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fast {
    /// Passed on its tracked flow.
    Pass,
    /// Dropped on its denied flow's entry ([`CT_DENIED`]), within the
    /// interval after the flow's last event.
    Drop,
    /// A plain packet whose flow has no entry: the pipeline's own lookup
    /// (same key) would miss too, so it is skipped (see [`tracked`]).
    Missed,
    /// Anything else: the full pipeline, with its own lookup.
    Full,
}

/// What connection tracking makes of a packet.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// No live entry: a new flow, for policy to judge.
    Miss,
    /// A tracked flow whose verdict (current or decided again) lets it pass.
    Pass,
    /// A tracked flow that a policy change now denies.
    Drop,
}

/// The remote "port" of a ping in connection tracking: requests and the
/// replies to them share a key, a request from the other side does not.
#[inline(always)]
fn echo_role(local_initiated: bool) -> u16 {
    if local_initiated { 0 } else { 1 }
}

/// The flow's key, from the endpoint's point of view.
#[inline(always)]
pub fn ct_key(ifindex: u32, dir: u8, pkt: &Packet) -> CtKey {
    if parse::is_echo(pkt.protocol, pkt.icmp_type) {
        let request = parse::is_echo_request(pkt.protocol, pkt.icmp_type);
        let local_initiated = request == (dir == DIR_EGRESS);
        return CtKey {
            ifindex,
            local_port: pkt.sport,
            remote_port: echo_role(local_initiated),
            local: if dir == DIR_EGRESS { pkt.src } else { pkt.dst },
            remote: if dir == DIR_EGRESS { pkt.dst } else { pkt.src },
            protocol: pkt.protocol,
            family: pkt.family,
            _pad: [0; 2],
        };
    }
    if dir == DIR_EGRESS {
        CtKey {
            ifindex,
            local_port: pkt.sport,
            remote_port: pkt.dport,
            local: pkt.src,
            remote: pkt.dst,
            protocol: pkt.protocol,
            family: pkt.family,
            _pad: [0; 2],
        }
    } else {
        CtKey {
            ifindex,
            local_port: pkt.dport,
            remote_port: pkt.sport,
            local: pkt.dst,
            remote: pkt.src,
            protocol: pkt.protocol,
            family: pkt.family,
            _pad: [0; 2],
        }
    }
}

#[inline(always)]
fn frag_key(pkt: &Packet) -> FragKey {
    FragKey { id: pkt.frag_id, protocol: pkt.frag_proto, family: pkt.family, _pad: [0; 2], src: pkt.src, dst: pkt.dst }
}

/// Remembers a first fragment's ports, and gives a later fragment those of
/// its first one (unknown ports only match rules that do not restrict
/// ports). Returns the event flags of the packet.
#[inline(always)]
pub fn fragments(pkt: &mut Packet) -> u8 {
    if pkt.frag == Frag::First {
        let ports = FragPorts { sport: pkt.sport, dport: pkt.dport, protocol: pkt.protocol, _pad: [0; 3] };
        let _ = FRAGS.insert(&frag_key(pkt), &ports, BPF_ANY as u64);
    } else if pkt.frag == Frag::Later {
        if let Some(p) = unsafe { FRAGS.get(&frag_key(pkt)) } {
            pkt.sport = p.sport;
            pkt.dport = p.dport;
            pkt.protocol = p.protocol;
        }
        return EVF_FRAGMENT;
    }
    0
}

/// Looks the flow up: a live entry under the current
/// revision passes; one under an older revision is decided again as its
/// first packet was, whichever way this packet goes.
#[inline(always)]
pub fn tracked<C: Skb>(ctx: &C, f: &mut Flow, key: &CtKey) -> Tracked {
    // The fast path looked this very key up and found nothing.
    if ctx.fast_missed() {
        return Tracked::Miss;
    }
    let Some(ct) = entry(key) else {
        return Tracked::Miss;
    };
    let ct = unsafe { &mut *ct };
    // A denied flow's entry stands for none (see [`deny`]).
    if ct.verdict == CT_DENIED || !live(ct, f.now, f.pkt.protocol, f.cfg) {
        return Tracked::Miss;
    }
    if ct.verdict == CT_UPSTREAM {
        return crate::netfilter::tracked_judged(ct, f);
    }
    if ct.revision == f.cfg.revision {
        pass_current(ctx, ct, f.cfg, f.ifindex, f.dir, f.now);
        return Tracked::Pass;
    }
    // The flow's local address may have left the pod since it was tracked.
    if f.dir == DIR_EGRESS && !own_source(f.ifindex, f.pkt.family, &key.local) {
        forget(key);
        drop_packet(f, &bare(REASON_SPOOFED), key);
        return Tracked::Drop;
    }
    let origin = ct.origin;
    let port = if origin == DIR_INGRESS { key.local_port } else { key.remote_port };
    let d = decide(f.ep, origin, f.pkt.family, &key.remote, f.pkt.protocol, port, true);
    if d.defer {
        ct.revision = f.cfg.revision;
        ct.verdict = CT_DEFERRED;
        ct.last_seen_ns = f.now;
        if f.dir == origin {
            mark_deferred(ctx, f.cfg, f.ifindex);
        }
        count(stat::ALLOWED);
        return Tracked::Pass;
    }
    if d.allowed {
        ct.revision = f.cfg.revision;
        ct.rule = d.rule;
        ct.verdict = CT_ALLOWED;
        ct.last_seen_ns = f.now;
        count(stat::ALLOWED);
        return Tracked::Pass;
    }
    f.ev_flags |= EVF_REDECIDED;
    if f.ep.flags & EP_AUDIT != 0 {
        ct.revision = f.cfg.revision;
        ct.verdict = CT_AUDITED;
        ct.last_seen_ns = f.now;
        count(stat::AUDITED);
        emit(f, VERDICT_AUDIT, &d, 1);
        return Tracked::Pass;
    }
    deny(ctx, f, &d, key, origin);
    Tracked::Drop
}

/// Drops a packet of a flow policy denies in direction `denied` (the
/// packet's, or a re-decided flow's first), and tracks the flow as
/// [`CT_DENIED`]: its next packets that way drop on the fast path's one
/// lookup until the drop-event interval after its event has passed, each
/// counted in the entry for the flow's next event (what `SUPPRESS` keeps
/// for other drops, see `events::drop_packet`). An entry is written when
/// the flow's event is sent, or over an entry the flow had (a re-decided
/// flow's, whose verdict must not outlive this): a scan past its source's
/// event budget, one packet per flow, leaves no entries behind.
#[inline(always)]
pub fn deny<C: Skb>(ctx: &C, f: &Flow, d: &Decision, key: &CtKey, denied: u8) -> i32 {
    count(stat::DROPPED_NO_RULE);
    let mut n = 1u32;
    // The fast path looked this very key up and found nothing.
    let ct = if ctx.fast_missed() { None } else { entry(key) };
    if let Some(ct) = ct {
        let ct = unsafe { &mut *ct };
        if ct.verdict == CT_DENIED {
            if ct.revision == f.cfg.revision && ct.origin == denied && live(ct, f.now, f.pkt.protocol, f.cfg) {
                ct.suppressed = ct.suppressed.wrapping_add(1);
                count(stat::EVENTS_SUPPRESSED);
                return DROP;
            }
            n = n.wrapping_add(ct.suppressed);
        }
    }
    if events::due(f, d, n) || ct.is_some() {
        let entry = CtEntry {
            last_seen_ns: f.now,
            revision: f.cfg.revision,
            rule: d.rule,
            origin: denied,
            verdict: CT_DENIED,
            _pad: [0; 2],
            suppressed: 0,
        };
        insert(key, &entry);
    }
    DROP
}

/// For the host hook judging a deferred egress: the flow's verdict is
/// current (then refreshed).
#[inline(always)]
pub fn current(f: &Flow, key: &CtKey) -> bool {
    let Some(ct) = entry(key) else {
        return false;
    };
    let ct = unsafe { &mut *ct };
    if ct.revision == f.cfg.revision
        && ct.verdict != CT_DENIED
        && f.now.wrapping_sub(ct.last_seen_ns) < CT_TIMEOUT_OTHER_NS
    {
        if f.now.wrapping_sub(ct.last_seen_ns) > CT_REFRESH_NS {
            ct.last_seen_ns = f.now;
        }
        return true;
    }
    false
}

/// Enters a newly decided flow.
#[inline(always)]
pub fn track(f: &Flow, key: &CtKey, rule: u32, verdict: u8) {
    let entry = CtEntry {
        last_seen_ns: f.now,
        revision: f.cfg.revision,
        rule,
        origin: f.dir,
        verdict,
        _pad: [0; 2],
        suppressed: 0,
    };
    insert(key, &entry);
    count(stat::FLOWS_NEW);
}

/// Forgets a flow a policy change denies.
#[inline(always)]
pub fn forget(key: &CtKey) {
    let _ = if key.family == FAMILY_V4 { CONNTRACK4.remove(&key.v4()) } else { CONNTRACK6.remove(key) };
}

/// An ICMP error about a tracked flow (path MTU discovery, port
/// unreachable): it passes with the flow, whatever policy says about ICMP
/// itself, but only while the flow's verdict is current, so a flow a policy
/// change denies gets no errors through either.
#[inline(always)]
pub fn related<C: Skb>(ctx: &C, f: &Flow, key: &CtKey) -> bool {
    if !parse::is_icmp_error(f.pkt.protocol, f.pkt.icmp_type) {
        return false;
    }
    let Some(q) = parse::quoted_flow(ctx, f.pkt) else {
        return false;
    };
    // The quoted packet went the other way: the local pod is its source
    // when the error comes in, its destination when it goes out.
    let mut qk = *key;
    qk.protocol = q.protocol;
    if f.dir == DIR_INGRESS {
        qk.local = q.src;
        qk.remote = q.dst;
        qk.local_port = q.sport;
        qk.remote_port = q.dport;
    } else {
        qk.local = q.dst;
        qk.remote = q.src;
        qk.local_port = q.dport;
        qk.remote_port = q.sport;
    }
    if parse::is_echo(q.protocol, q.icmp_type) {
        // The pod sent the quoted packet when the error comes in; it
        // started the ping if that packet was a request.
        let pod_sent_it = f.dir == DIR_INGRESS;
        qk.remote_port = echo_role(parse::is_echo_request(q.protocol, q.icmp_type) == pod_sent_it);
    }
    match entry(&qk) {
        Some(ct) => {
            let ct = unsafe { &*ct };
            ct.revision == f.cfg.revision && ct.verdict != CT_DENIED
        }
        None => false,
    }
}
