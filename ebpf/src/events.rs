//! Verdict events into the ring buffer, and drops with per-flow event
//! suppression.

use crate::maps::{EVENTS, SUPPRESS, count};
use crate::{DROP, Flow};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::bpf_ktime_get_ns,
};
use palisade_common::{CtKey, Decision, Event, SuppressEntry, VERDICT_DROPPED, stat};

/// Drops the packet, with at most one event per flow per interval; the
/// event carries how many drops it stands for.
#[inline(always)]
pub fn drop_packet(f: &Flow, d: &Decision, key: &CtKey) -> i32 {
    count(stat::DROPPED_NO_RULE);
    let mut n = 1u32;
    if let Some(s) = SUPPRESS.get_ptr_mut(key) {
        let s = unsafe { &mut *s };
        if f.now.wrapping_sub(s.last_event_ns) < f.cfg.drop_event_interval_ns {
            s.suppressed = s.suppressed.wrapping_add(1);
            count(stat::EVENTS_SUPPRESSED);
            return DROP;
        }
        n += s.suppressed;
        s.suppressed = 0;
        s.last_event_ns = f.now;
    } else {
        let s = SuppressEntry { last_event_ns: f.now, suppressed: 0, _pad: 0 };
        let _ = SUPPRESS.insert(key, &s, BPF_ANY as u64);
    }
    emit(f, VERDICT_DROPPED, d, n);
    DROP
}

/// Writes one event for `n` packets of the flow.
#[inline(always)]
pub fn emit(f: &Flow, verdict: u8, d: &Decision, n: u32) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(stat::EVENTS_LOST);
        return;
    };
    let pkt = f.pkt;
    slot.write(Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: f.ifindex,
        local_identity: f.ep.identity,
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
