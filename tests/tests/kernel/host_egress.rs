//! 4. The node's host egress hook: a deferred (marked) packet it cannot
//!    parse drops, counted, since no hook after it would judge it. A pod
//!    interface whose pod is not known yet carries the pod hooks instead,
//!    and its `to-pod` hook judges deferred packets the same way.
//!    A known pod's `to-pod` hook judges a deferred packet twice: by its
//!    sender's egress first (the sender found by source address; finding
//!    it by `tc_index` after SNAT is left to the e2e Service tests, since
//!    BPF_PROG_TEST_RUN takes no `tc_index`), then by the pod's ingress.

use crate::fixture::*;
use palisade_common::REASON_UNATTRIBUTED;

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

#[test]
fn a_known_pods_hook_judges_a_deferred_packet_by_its_senders_egress_then_its_own_ingress() {
    let mut env = Env::new(settings());
    let (web, db, solo) = (env.local("web"), env.local("db"), env.local("solo"));
    let remote_ops = addr("10.70.4.5");
    env.drain();
    // (what, source, TCP destination port, verdict with the mark, the drop
    // event's reason and local class: the sender's or the receiver's)
    let cases = [
        ("web -> db 5432: both allow", web.ip4, 5432, PASS, None),
        ("web -> db 5433: web's egress denies", web.ip4, 5433, DROP, Some((REASON_NO_RULE, web.class))),
        (
            "solo -> db 80: solo's egress allows, db's ingress denies",
            solo.ip4,
            80,
            DROP,
            Some((REASON_NO_RULE, db.class)),
        ),
    ];
    for (what, src, dport, expect, event) in cases {
        let sport = env.fresh();
        let pkt = packet(src, db.ip4, L4::Tcp(sport, dport, TCP_SYN));
        assert_eq!(env.run_marked(Some(Direction::Ingress), db.ifindex, DEFER_MARK, &pkt), expect, "{what}");
        let events = env.drain();
        let drop = events.iter().find(|e| e.verdict == VERDICT_DROPPED && e.dport == dport);
        match event {
            None => assert!(drop.is_none(), "{what}: unexpected drop event {drop:?}"),
            Some((reason, identity)) => {
                let e = drop.unwrap_or_else(|| panic!("{what}: no drop event in {events:?}"));
                assert_eq!((e.reason, e.local_class), (reason, identity), "{what}: {e:?}");
            }
        }
    }
    // From an address no local pod holds: web's ingress alone would let ops
    // in on UDP 53, but nobody's egress can judge it, so it drops.
    let sport = env.fresh();
    let pkt = packet(remote_ops, web.ip4, L4::Udp(sport, 53));
    assert_eq!(env.run_marked(Some(Direction::Ingress), web.ifindex, 0, &pkt), PASS, "ops -> web 53, not deferred");
    let sport = env.fresh();
    let pkt = packet(remote_ops, web.ip4, L4::Udp(sport, 53));
    assert_eq!(
        env.run_marked(Some(Direction::Ingress), web.ifindex, DEFER_MARK, &pkt),
        DROP,
        "ops -> web 53, deferred"
    );
    let events = env.drain();
    assert!(
        events.iter().any(|e| e.verdict == VERDICT_DROPPED && e.reason == REASON_UNATTRIBUTED),
        "unattributed drop event in {events:?}"
    );
    println!("to-pod of a known pod: deferred packets judged by the sender's egress, then the pod's ingress");
}

/// A flow the sender's own hook denied is tracked as denied; the host hook
/// judging the same flow deferred (its sender's egress, after DNAT picked
/// this backend) must not take that entry for a verdict that passes.
#[test]
fn a_denied_flows_entry_never_passes_its_deferred_twin() {
    let mut env = Env::new(settings());
    let web = env.local("web");
    let backend = addr("10.70.9.9");
    assert!(!env.decide("web", Direction::Egress, backend, PROTO_TCP, 81).allowed, "web may not reach it");
    let l4 = L4::Tcp(env.fresh(), 81, TCP_SYN);
    assert_eq!(env.egress("web", backend, l4), DROP, "sent directly: web's egress denies it");
    assert!(env.flows().iter().any(|(k, v)| k.ifindex == web.ifindex && v.verdict == palisade_common::CT_DENIED));
    let pkt = packet(web.ip4, backend, l4);
    for _ in 0..2 {
        assert_eq!(env.run_host_egress(DEFER_MARK, &pkt), DROP, "deferred, after DNAT: still denied");
    }
}
