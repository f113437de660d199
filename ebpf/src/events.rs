//! Verdict events into the ring buffer, and drops with event suppression:
//! per flow (one event per flow per interval, counting the drops it stands
//! for) and per source address (a budget of events per interval, so a scan
//! across many flows cannot flood; the drops past it are folded into the
//! source's next event).

use crate::maps::{EVENTS, SOURCES, SUPPRESS, count};
use crate::{DROP, Flow};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::bpf_ktime_get_ns,
};
use palisade_common::{
    CtKey, DIR_EGRESS, Decision, Event, SourceBudget, SourceKey, SuppressEntry, VERDICT_DROPPED, stat,
};

/// Drops the packet, with at most one event per flow per interval (the
/// event carries how many drops it stands for) and at most the budget of
/// events per source per interval. The packet drops whatever happens to
/// its event: only events are folded. (Flows policy denies keep the same
/// count in their conntrack entry instead: `conntrack::deny`.)
#[inline(always)]
pub fn drop_packet(f: &Flow, d: &Decision, key: &CtKey) -> i32 {
    count(stat::DROPPED_NO_RULE);
    let mut n = 1u32;
    let flow = SUPPRESS.get_ptr_mut(key);
    if let Some(s) = flow {
        let s = unsafe { &mut *s };
        if f.now.wrapping_sub(s.last_event_ns) < f.cfg.drop_event_interval_ns {
            s.suppressed = s.suppressed.wrapping_add(1);
            count(stat::EVENTS_SUPPRESSED);
            return DROP;
        }
        n += s.suppressed;
        s.suppressed = 0;
        s.last_event_ns = f.now;
    }
    if due(f, d, n) && flow.is_none() {
        let s = SuppressEntry { last_event_ns: f.now, suppressed: 0, _pad: 0 };
        let _ = SUPPRESS.insert(key, &s, BPF_ANY as u64);
    }
    DROP
}

/// The drop event of a flow due one, standing for `n` drops: sent if the
/// source's budget allows (true), else the drops are folded into the
/// source's next event.
#[inline(always)]
pub fn due(f: &Flow, d: &Decision, n: u32) -> bool {
    let Some(folded) = source_budget(f, n) else {
        count(stat::EVENTS_FOLDED);
        return false;
    };
    emit_folded(f, VERDICT_DROPPED, d, n, folded);
    true
}

/// Takes one event from the packet source's budget for this interval:
/// Some(drops folded since its last event, now handed to this one), or
/// None when the budget is spent and the `n` drops this event stood for
/// are folded instead. A source with no entry (or a full table) is never
/// refused: the bound holds for the sources the table tracks.
#[inline(always)]
fn source_budget(f: &Flow, n: u32) -> Option<u32> {
    let budget = f.cfg.drop_event_budget;
    if budget == 0 {
        return Some(0);
    }
    // A local pod's own traffic is budgeted per pod, whatever source
    // address it forges; traffic to a pod per remote source address.
    let key = if f.dir == DIR_EGRESS {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&f.ifindex.to_ne_bytes());
        SourceKey { addr, family: 0, _pad: [0; 3] }
    } else {
        SourceKey { addr: f.pkt.src, family: f.pkt.family, _pad: [0; 3] }
    };
    let Some(b) = SOURCES.get_ptr_mut(&key) else {
        let b = SourceBudget { window_ns: f.now, events: 1, folded: 0 };
        let _ = SOURCES.insert(&key, &b, BPF_ANY as u64);
        return Some(0);
    };
    let b = unsafe { &mut *b };
    if f.now.wrapping_sub(b.window_ns) >= f.cfg.drop_event_interval_ns {
        b.window_ns = f.now;
        b.events = 0;
    }
    if b.events >= budget {
        b.folded = b.folded.wrapping_add(n);
        return None;
    }
    b.events += 1;
    let folded = b.folded;
    b.folded = 0;
    Some(folded)
}

/// Writes one event for `n` packets of the flow.
#[inline(always)]
pub fn emit(f: &Flow, verdict: u8, d: &Decision, n: u32) {
    emit_folded(f, verdict, d, n, 0)
}

/// Writes one event for `n` packets of the flow and `folded` drops of its
/// source's other flows.
#[inline(always)]
fn emit_folded(f: &Flow, verdict: u8, d: &Decision, n: u32, folded: u32) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(stat::EVENTS_LOST);
        return;
    };
    let pkt = f.pkt;
    slot.write(Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: f.ifindex,
        local_class: f.ep.class,
        peer_identity: d.peer,
        rule: d.rule,
        count: n,
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        family: pkt.family,
        protocol: pkt.protocol,
        direction: f.dir,
        verdict,
        reason: d.reason,
        tcp_flags: pkt.tcp_flags,
        flags: f.ev_flags,
        _pad: [0],
        revision: f.cfg.revision,
        folded,
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
