//! A batch's events grouped by what they say about a flow, so sinks that
//! aggregate by flow (the flow record, the page's map) expand one event
//! per group into names and strings, not every event: a flood of one
//! flow's drops costs them one expansion per batch.

use super::wire::Compact;
use std::collections::HashMap;

/// What events of one group share: everything a flow aggregate reads
/// (the ends' addresses, kinds and names, the destination port, the
/// protocol, direction, verdict, reason, rule and isolating policies).
/// Left out: the time, the counts, the source port, TCP and event flags
/// and the interface (the local end's name stands for it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    src: [u8; 16],
    dst: [u8; 16],
    dport: u16,
    names: [u32; 4],
    codes: [u8; 7],
}

impl Shape {
    fn of(c: &Compact) -> Shape {
        Shape {
            src: c.src,
            dst: c.dst,
            dport: if c.has_ports() { c.dport } else { 0 },
            names: c.symbols(),
            codes: [c.family, c.protocol, c.direction, c.verdict, c.reason, c.src_kind, c.dst_kind],
        }
    }
}

/// Events of a batch that say the same about a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's latest event in batch order (it stands for them all).
    pub event: Compact,
    /// Events in the group.
    pub events: u64,
    /// Packets they stand for (each event's count, at least one).
    pub packets: u64,
    /// The earliest and the latest event time, Unix nanoseconds.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// `events` grouped, in the order of each group's latest event: a sink
/// that keeps what the last event of a flow said (the page's "decided
/// by") folds the groups as it would have folded the events.
pub fn group(events: &[Compact]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut latest: Vec<usize> = Vec::new();
    let mut index: HashMap<Shape, usize, foldhash::fast::RandomState> = HashMap::default();
    // A run of one flow's events (a flood) skips the table.
    let mut last: Option<(Shape, usize)> = None;
    for (at, c) in events.iter().enumerate() {
        let shape = Shape::of(c);
        let i = match last {
            Some((s, i)) if s == shape => i,
            _ => *index.entry(shape).or_insert_with(|| {
                groups.push(Group { event: *c, events: 0, packets: 0, first_ns: u64::MAX, last_ns: 0 });
                latest.push(0);
                groups.len() - 1
            }),
        };
        let g = &mut groups[i];
        g.event = *c;
        g.events += 1;
        g.packets += u64::from(c.count.max(1));
        g.first_ns = g.first_ns.min(c.time_ns);
        g.last_ns = g.last_ns.max(c.time_ns);
        latest[i] = at;
        last = Some((shape, i));
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_unstable_by_key(|&i| latest[i]);
    order.into_iter().map(|i| groups[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::{PROTO_ICMP, PROTO_UDP};

    #[test]
    fn events_group_by_flow_not_by_time_count_or_source_port() {
        let ev = |time_ns, sport, dport, count, rule| Compact {
            time_ns,
            sport,
            dport,
            count,
            rule,
            protocol: PROTO_UDP,
            ..Default::default()
        };
        let batch = [
            ev(30, 1000, 53, 2, 0),
            ev(10, 1001, 53, 0, 0),
            ev(20, 1000, 54, 1, 0),
            ev(40, 1002, 53, 5, 7),
            ev(50, 1003, 53, 1, 0),
        ];
        let groups = group(&batch);
        let summary: Vec<(u16, u32, u64, u64, u64, u64)> =
            groups.iter().map(|g| (g.event.dport, g.event.rule, g.events, g.packets, g.first_ns, g.last_ns)).collect();
        // In the order of each group's latest event.
        assert_eq!(summary, [(54, 0, 1, 1, 20, 20), (53, 7, 1, 5, 40, 40), (53, 0, 3, 4, 10, 50)]);
        assert_eq!(groups[2].event, batch[4], "the latest event stands for its group");
        // Without ports, the port fields say nothing.
        let icmp = |dport| Compact { protocol: PROTO_ICMP, dport, ..Default::default() };
        assert_eq!(group(&[icmp(1), icmp(2)]).len(), 1);
        assert!(group(&[]).is_empty());
    }
}
