//! palisade's TC classifiers: one on the host side of every local pod's
//! veth, in each direction. A packet's verdict takes a handful of bounded
//! map lookups and never loops over policies or pods.
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: copies of 40-byte keys cost
// space on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod parse;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey},
    programs::TcContext,
};
use palisade_common::{
    CFG_LOG_NEW_FLOWS, CT_ALLOWED, CT_AUDITED, CT_DEFERRED, Config, CtEntry, CtKey, DIR_EGRESS, DIR_INGRESS, EP_AUDIT,
    EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EP_PENDING, EVF_FRAGMENT, EVF_REDECIDED, Endpoint, Event, FragKey,
    FragPorts, IP_SERVICE, IpInfo, IpKey, MAP_NO_PREALLOC, PEER_ANY, POLICY_PREFIX_FULL, PROTO_TCP, PolicyKey,
    PolicyValue, REASON_MALFORMED, REASON_NO_RULE, REASON_NOT_ISOLATED, REASON_PENDING, REASON_RULE, SuppressEntry,
    VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DROPPED, capacity, ip_key_full_len, stat,
};
use parse::{FRAG_FIRST, FRAG_LATER, PARSED_IP, PARSED_NOT_IP, Packet};

/// Let the packet continue (to the next TC program, if any).
const PASS: i32 = TC_ACT_UNSPEC;
// The bindings' integer type for TC_ACT_SHOT differs between targets.
#[allow(clippy::unnecessary_cast)]
const DROP: i32 = TC_ACT_SHOT as i32;

/// Tracked TCP flows expire after six hours idle, others after a minute.
const CT_TIMEOUT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
const CT_TIMEOUT_OTHER_NS: u64 = 60 * 1_000_000_000;
/// last_seen is refreshed at most this often, so the hot path rarely writes.
const CT_REFRESH_NS: u64 = 1_000_000_000;

#[map(name = "PALISADE_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(capacity::ENDPOINTS, 0);

#[map(name = "PALISADE_IPS")]
static IPS: LpmTrie<IpKey, IpInfo> = LpmTrie::pinned(capacity::IPS, 0);

#[map(name = "PALISADE_HOSTS")]
static HOSTS: HashMap<IpKey, IpInfo> = HashMap::pinned(capacity::HOSTS, MAP_NO_PREALLOC);

#[map(name = "PALISADE_POLICY")]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(capacity::POLICY, 0);

#[map(name = "PALISADE_CT")]
static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map(name = "PALISADE_SUPPRESS")]
static SUPPRESS: LruHashMap<CtKey, SuppressEntry> = LruHashMap::pinned(capacity::SUPPRESS, 0);

#[map(name = "PALISADE_FRAGS")]
static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(capacity::FRAGS, 0);

#[map(name = "PALISADE_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "PALISADE_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[map(name = "PALISADE_EVENTS")]
// Not pinned: events are transient, and each agent sizes its own buffer.
static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Host veth TC ingress: packets the pod sends (its egress).
#[classifier]
pub fn palisade_from_pod(ctx: TcContext) -> i32 {
    classify(&ctx, DIR_EGRESS)
}

/// Host veth TC egress: packets delivered to the pod (its ingress).
#[classifier]
pub fn palisade_to_pod(ctx: TcContext) -> i32 {
    classify(&ctx, DIR_INGRESS)
}

/// Node interfaces other than pods': judges the egress of pod traffic that
/// kube-proxy DNATed from a Service cluster IP to a backend elsewhere. Only
/// packets carrying the defer mark are looked at.
#[classifier]
pub fn palisade_host_egress(ctx: TcContext) -> i32 {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => return PASS,
    };
    if !deferred(&ctx, &cfg) {
        return PASS;
    }
    let mut pkt = Packet::empty();
    if parse::parse(&ctx, &mut pkt) != PARSED_IP {
        return PASS;
    }
    judge_deferred(&cfg, &pkt)
}

/// The outcome of judging a flow against policy.
struct Decision {
    allowed: bool,
    /// Egress to a Service cluster IP from an egress-isolated pod: the
    /// verdict waits until DNAT has picked the backend.
    defer: bool,
    reason: u8,
    rule: u32,
    peer: u32,
}

#[inline(always)]
fn deferred(ctx: &TcContext, cfg: &Config) -> bool {
    cfg.defer_mark != 0 && unsafe { (*ctx.skb.skb).mark } & cfg.defer_mark != 0
}

#[inline(always)]
fn mark_deferred(ctx: &TcContext, cfg: &Config) {
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark(mark | cfg.defer_mark);
}

/// Judges, after DNAT, the egress of a local pod's packet that was sent to
/// a Service: against the real backend, with the pod's own endpoint and
/// connection tracking, as if its egress hook had seen the backend.
#[inline(always)]
fn judge_deferred(cfg: &Config, pkt: &Packet) -> i32 {
    let ifindex = ip_info(pkt.family, &pkt.src).ifindex;
    if ifindex == 0 {
        return PASS;
    }
    let Some(ep) = (unsafe { ENDPOINTS.get(&ifindex) }) else {
        return PASS;
    };
    let ep = *ep;
    let key = ct_key(ifindex, DIR_EGRESS, pkt);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
        let ct = unsafe { &mut *ct };
        if ct.revision == cfg.revision && now.wrapping_sub(ct.last_seen_ns) < CT_TIMEOUT_OTHER_NS {
            if now.wrapping_sub(ct.last_seen_ns) > CT_REFRESH_NS {
                ct.last_seen_ns = now;
            }
            return PASS;
        }
    }
    let d = decide(&ep, DIR_EGRESS, &pkt.dst, pkt.family, pkt.protocol, pkt.dport, cfg.flags & CFG_LOG_NEW_FLOWS != 0);
    let verdict = if d.allowed {
        CT_ALLOWED
    } else if ep.flags & EP_AUDIT != 0 {
        CT_AUDITED
    } else {
        let _ = CONNTRACK.remove(&key);
        return drop_packet(pkt, ifindex, &ep, DIR_EGRESS, cfg, &d, &key, now, 0);
    };
    let entry =
        CtEntry { last_seen_ns: now, revision: cfg.revision, rule: d.rule, origin: DIR_EGRESS, verdict, _pad: [0; 6] };
    let _ = CONNTRACK.insert(&key, &entry, BPF_ANY as u64);
    count(stat::FLOWS_NEW);
    if verdict == CT_AUDITED {
        count(stat::AUDITED);
        emit(pkt, ifindex, &ep, DIR_EGRESS, cfg, VERDICT_AUDIT, &d, 1, 0);
    } else if cfg.flags & CFG_LOG_NEW_FLOWS != 0 {
        emit(pkt, ifindex, &ep, DIR_EGRESS, cfg, VERDICT_ALLOWED, &d, 1, 0);
    }
    PASS
}

#[inline(always)]
fn classify(ctx: &TcContext, dir: u8) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Interfaces without an endpoint entry are not ours to judge.
    let Some(ep) = (unsafe { ENDPOINTS.get(&ifindex) }) else {
        return PASS;
    };
    let ep = *ep;
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    };
    let mut pkt = Packet::empty();
    match parse::parse(ctx, &mut pkt) {
        // A pod's packet DNATed from a Service to this pod: the sender's
        // egress is judged first, now that the backend is known.
        PARSED_IP if dir == DIR_INGRESS && deferred(ctx, &cfg) && judge_deferred(&cfg, &pkt) == DROP => DROP,
        PARSED_IP => judge(ctx, ifindex, &ep, dir, &cfg, &mut pkt),
        PARSED_NOT_IP => PASS,
        _ => {
            count(stat::DROPPED_MALFORMED);
            let d = Decision { allowed: false, defer: false, reason: REASON_MALFORMED, rule: 0, peer: 0 };
            emit(&pkt, ifindex, &ep, dir, &cfg, VERDICT_DROPPED, &d, 1, 0);
            DROP
        }
    }
}

#[inline(always)]
fn judge(ctx: &TcContext, ifindex: u32, ep: &Endpoint, dir: u8, cfg: &Config, pkt: &mut Packet) -> i32 {
    if parse::is_ipv6_link_control(pkt) {
        return PASS;
    }
    if ep.flags & EP_PENDING != 0 {
        let d = Decision { allowed: false, defer: false, reason: REASON_PENDING, rule: 0, peer: 0 };
        let key = ct_key(ifindex, dir, pkt);
        return drop_packet(pkt, ifindex, ep, dir, cfg, &d, &key, unsafe { bpf_ktime_get_ns() }, 0);
    }
    let mut ev_flags = 0u8;
    if pkt.frag == FRAG_FIRST {
        let ports = FragPorts { sport: pkt.sport, dport: pkt.dport, protocol: pkt.protocol, _pad: [0; 3] };
        let _ = FRAGS.insert(&frag_key(pkt), &ports, BPF_ANY as u64);
    } else if pkt.frag == FRAG_LATER {
        ev_flags |= EVF_FRAGMENT;
        // Ports come from the first fragment; unknown ports only match
        // rules that do not restrict ports.
        if let Some(p) = unsafe { FRAGS.get(&frag_key(pkt)) } {
            pkt.sport = p.sport;
            pkt.dport = p.dport;
            pkt.protocol = p.protocol;
        }
    }

    let key = ct_key(ifindex, dir, pkt);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
        let ct = unsafe { &mut *ct };
        let timeout = if pkt.protocol == PROTO_TCP { CT_TIMEOUT_TCP_NS } else { CT_TIMEOUT_OTHER_NS };
        if now.wrapping_sub(ct.last_seen_ns) < timeout {
            if ct.revision == cfg.revision {
                if now.wrapping_sub(ct.last_seen_ns) > CT_REFRESH_NS {
                    ct.last_seen_ns = now;
                }
                if ct.verdict == CT_DEFERRED && dir == ct.origin {
                    mark_deferred(ctx, cfg);
                }
                count(if ct.verdict == CT_AUDITED { stat::AUDITED } else { stat::ALLOWED });
                return PASS;
            }
            // Policy changed since the flow was decided: decide it again as
            // its first packet was, whichever way this packet goes.
            let origin = ct.origin;
            let port = if origin == DIR_INGRESS { key.local_port } else { key.remote_port };
            let d = decide(ep, origin, &key.remote, pkt.family, pkt.protocol, port, true);
            if d.defer {
                ct.revision = cfg.revision;
                ct.verdict = CT_DEFERRED;
                ct.last_seen_ns = now;
                if dir == origin {
                    mark_deferred(ctx, cfg);
                }
                count(stat::ALLOWED);
                return PASS;
            }
            if d.allowed {
                ct.revision = cfg.revision;
                ct.rule = d.rule;
                ct.verdict = CT_ALLOWED;
                ct.last_seen_ns = now;
                count(stat::ALLOWED);
                return PASS;
            }
            ev_flags |= EVF_REDECIDED;
            if ep.flags & EP_AUDIT != 0 {
                ct.revision = cfg.revision;
                ct.verdict = CT_AUDITED;
                ct.last_seen_ns = now;
                count(stat::AUDITED);
                emit(pkt, ifindex, ep, dir, cfg, VERDICT_AUDIT, &d, 1, ev_flags);
                return PASS;
            }
            let _ = CONNTRACK.remove(&key);
            return drop_packet(pkt, ifindex, ep, dir, cfg, &d, &key, now, ev_flags);
        }
    }

    // ICMP errors about a tracked flow pass with it (path MTU discovery,
    // port unreachable), whatever policy says about ICMP itself.
    if parse::is_icmp_error(pkt.protocol, pkt.icmp_type)
        && let Some(q) = parse::quoted_flow(ctx, pkt)
    {
        {
            // The quoted packet went the other way: the local pod is its
            // source when the error comes in, its destination when it goes out.
            let mut qk = key;
            qk.protocol = q.protocol;
            if dir == DIR_INGRESS {
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
                let pod_sent_it = dir == DIR_INGRESS;
                qk.remote_port = echo_role(parse::is_echo_request(q.protocol, q.icmp_type) == pod_sent_it);
            }
            // Only while the flow's verdict is current: a flow a policy
            // change denies gets no errors through either.
            if let Some(ct) = CONNTRACK.get_ptr(&qk)
                && unsafe { (*ct).revision } == cfg.revision
            {
                count(stat::ALLOWED);
                return PASS;
            }
        }
    }

    // A new flow.
    let d = decide(ep, dir, &key.remote, pkt.family, pkt.protocol, pkt.dport, cfg.flags & CFG_LOG_NEW_FLOWS != 0);
    let verdict = if d.defer {
        mark_deferred(ctx, cfg);
        CT_DEFERRED
    } else if d.allowed {
        CT_ALLOWED
    } else if ep.flags & EP_AUDIT != 0 {
        CT_AUDITED
    } else {
        return drop_packet(pkt, ifindex, ep, dir, cfg, &d, &key, now, ev_flags);
    };
    let entry = CtEntry { last_seen_ns: now, revision: cfg.revision, rule: d.rule, origin: dir, verdict, _pad: [0; 6] };
    let _ = CONNTRACK.insert(&key, &entry, BPF_ANY as u64);
    count(stat::FLOWS_NEW);
    if verdict == CT_DEFERRED {
        // The event comes from the hook that sees the backend.
        count(stat::ALLOWED);
    } else if verdict == CT_AUDITED {
        count(stat::AUDITED);
        emit(pkt, ifindex, ep, dir, cfg, VERDICT_AUDIT, &d, 1, ev_flags);
    } else {
        count(stat::ALLOWED);
        if cfg.flags & CFG_LOG_NEW_FLOWS != 0 {
            emit(pkt, ifindex, ep, dir, cfg, VERDICT_ALLOWED, &d, 1, ev_flags);
        }
    }
    PASS
}

/// What the maps say about an address: the exact entry of a pod, Service
/// or node if there is one, else the longest CIDR covering it, else any
/// peer. (A plain value, not an Option: LLVM leaves an Option's fields
/// partly undefined on the None path, which the verifier rejects.)
#[inline(always)]
fn ip_info(family: u8, addr: &[u8; 16]) -> IpInfo {
    let key = IpKey { family, addr: *addr };
    if let Some(info) = unsafe { HOSTS.get(&key) } {
        return *info;
    }
    match IPS.get(&LpmKey::new(ip_key_full_len(family), key)) {
        Some(info) => *info,
        None => IpInfo { identity: PEER_ANY, flags: 0, ifindex: 0 },
    }
}

/// Judges a flow by policy alone: isolation, then the most specific rule
/// for the peer's identity, then rules that allow any peer.
#[inline(always)]
fn decide(ep: &Endpoint, dir: u8, remote: &[u8; 16], family: u8, protocol: u8, port: u16, want_peer: bool) -> Decision {
    let isolated =
        if dir == DIR_INGRESS { ep.flags & EP_INGRESS_ISOLATED != 0 } else { ep.flags & EP_EGRESS_ISOLATED != 0 };
    if !isolated && !want_peer {
        return Decision { allowed: true, defer: false, reason: REASON_NOT_ISOLATED, rule: 0, peer: 0 };
    }
    let info = ip_info(family, remote);
    let (peer, peer_flags) = (info.identity, info.flags);
    if !isolated {
        return Decision { allowed: true, defer: false, reason: REASON_NOT_ISOLATED, rule: 0, peer };
    }
    if dir == DIR_EGRESS && peer_flags & IP_SERVICE != 0 {
        return Decision { allowed: true, defer: true, reason: REASON_RULE, rule: 0, peer };
    }
    let mut pk = PolicyKey {
        local: ep.identity.to_be_bytes(),
        direction: dir,
        peer: peer.to_be_bytes(),
        protocol,
        port: port.to_be_bytes(),
    };
    if peer != PEER_ANY
        && let Some(v) = POLICY.get(&LpmKey::new(POLICY_PREFIX_FULL, pk))
    {
        return Decision { allowed: true, defer: false, reason: REASON_RULE, rule: v.rule, peer };
    }
    pk.peer = PEER_ANY.to_be_bytes();
    if let Some(v) = POLICY.get(&LpmKey::new(POLICY_PREFIX_FULL, pk)) {
        return Decision { allowed: true, defer: false, reason: REASON_RULE, rule: v.rule, peer };
    }
    Decision { allowed: false, defer: false, reason: REASON_NO_RULE, rule: 0, peer }
}

/// Drops the packet, with at most one event per flow per interval; the
/// event carries how many drops it stands for.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn drop_packet(
    pkt: &Packet,
    ifindex: u32,
    ep: &Endpoint,
    dir: u8,
    cfg: &Config,
    d: &Decision,
    key: &CtKey,
    now: u64,
    ev_flags: u8,
) -> i32 {
    count(stat::DROPPED_NO_RULE);
    let mut n = 1u32;
    if let Some(s) = SUPPRESS.get_ptr_mut(key) {
        let s = unsafe { &mut *s };
        if now.wrapping_sub(s.last_event_ns) < cfg.drop_event_interval_ns {
            s.suppressed = s.suppressed.wrapping_add(1);
            count(stat::EVENTS_SUPPRESSED);
            return DROP;
        }
        n += s.suppressed;
        s.suppressed = 0;
        s.last_event_ns = now;
    } else {
        let s = SuppressEntry { last_event_ns: now, suppressed: 0, _pad: 0 };
        let _ = SUPPRESS.insert(key, &s, BPF_ANY as u64);
    }
    emit(pkt, ifindex, ep, dir, cfg, VERDICT_DROPPED, d, n, ev_flags);
    DROP
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    pkt: &Packet,
    ifindex: u32,
    ep: &Endpoint,
    dir: u8,
    cfg: &Config,
    verdict: u8,
    d: &Decision,
    n: u32,
    flags: u8,
) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(stat::EVENTS_LOST);
        return;
    };
    slot.write(Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        local_identity: ep.identity,
        peer_identity: d.peer,
        rule: d.rule,
        count: n,
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        family: pkt.family,
        protocol: pkt.protocol,
        direction: dir,
        verdict,
        reason: d.reason,
        tcp_flags: pkt.tcp_flags,
        flags,
        _pad: [0],
        revision: cfg.revision,
        _pad2: 0,
    });
    // Never wake the reader per event (it drains on a timer), unless the
    // buffer is filling up and a wake-up saves events from being lost.
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > EVENTS.query(BPF_RB_RING_SIZE as u64) / 2 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(wake as u64);
    count(stat::EVENTS_SENT);
}

/// The remote "port" of a ping in connection tracking: requests and the
/// replies to them share a key, a request from the other side does not.
#[inline(always)]
fn echo_role(local_initiated: bool) -> u16 {
    if local_initiated { 0 } else { 1 }
}

#[inline(always)]
fn ct_key(ifindex: u32, dir: u8, pkt: &Packet) -> CtKey {
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

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
