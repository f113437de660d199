//! 4. The node's host egress hook: a deferred (marked) packet it cannot
//!    parse drops, counted, since no hook after it would judge it. A pod
//!    interface whose pod is not known yet carries the pod hooks instead,
//!    and its `to-pod` hook judges deferred packets the same way.

use crate::fixture::*;

#[test]
fn a_deferred_packet_that_does_not_parse_drops() {
    let mut env = Env::new(settings());
    let sport = env.fresh();
    let full = ipv4(v4("10.70.1.10"), v4("10.70.9.9"), PROTO_TCP, 0, 0, &tcp(sport, 80, TCP_SYN));
    // The IPv4 header whole, the length it claims not there.
    let truncated = &full[..40];
    let mut arp = eth(0x0806);
    arp.resize(42, 0);
    let before = env.counter(stat::DROPPED_MALFORMED);
    for (what, pkt) in [("truncated IPv4", truncated), ("not IP", &arp[..])] {
        assert_eq!(env.run_host_egress(DEFER_MARK, pkt), DROP, "{what}, deferred");
        assert_eq!(env.run_host_egress(0, pkt), PASS, "{what}, not deferred: none of this hook's business");
    }
    assert_eq!(env.counter(stat::DROPPED_MALFORMED) - before, 2, "each drop counted");
    println!("host egress: 2 unparseable deferred packets dropped and counted, 2 unmarked passed");
}

#[test]
fn a_pod_hook_without_its_pod_judges_deferred_packets_as_the_host_hook_does() {
    let mut env = Env::new(settings());
    let sport = env.fresh();
    // Interface 1 has no endpoint entry: a veth whose pod is not known yet.
    let full = ipv4(v4("10.70.1.10"), v4("10.70.9.9"), PROTO_TCP, 0, 0, &tcp(sport, 80, TCP_SYN));
    let truncated = &full[..40];
    let before = env.counter(stat::DROPPED_MALFORMED);
    for hook in [Some(Direction::Ingress), None] {
        // Deferred from an address no local pod holds: nobody's egress to
        // judge it by, so it drops (service-unattributed).
        assert_eq!(env.run_marked(hook, 1, DEFER_MARK, &full), DROP, "{hook:?}: unattributed, deferred");
        assert_eq!(env.run_marked(hook, 1, DEFER_MARK, truncated), DROP, "{hook:?}: truncated, deferred");
        assert_eq!(env.run_marked(hook, 1, 0, &full), PASS, "{hook:?}: not deferred, no endpoint: not judged");
    }
    assert_eq!(env.counter(stat::DROPPED_MALFORMED) - before, 2, "each malformed drop counted");
    println!("to-pod without an endpoint: deferred packets judged as by the host egress hook");
}
