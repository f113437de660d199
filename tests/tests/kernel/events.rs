//! 6. Events.

use crate::fixture::*;
use palisade::policy::PolicyRef;
use palisade::policy::compile::family_addr;
use palisade_common::CT_DENIED;

#[test]
fn events_describe_verdicts() {
    let interval = Duration::from_millis(1500);
    let mut env = Env::new(Settings { log_new_flows: true, drop_event_interval: interval, ..settings() });
    let web = env.local("web");
    let tool = addr("10.70.3.5");
    let revision = env.dp.revision();

    // A drop.
    let sport = env.fresh();
    let verdict = env.decide("web", Direction::Ingress, tool, PROTO_TCP, 80);
    assert!(!verdict.allowed && verdict.peer != 0);
    let syn = L4::Tcp(sport, 80, TCP_SYN);
    let started = Instant::now();
    assert_eq!(env.ingress("web", tool, syn), DROP);
    let events = env.drain();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    let expected = Event {
        ts_ns: e.ts_ns,
        ifindex: web.ifindex,
        local_class: web.class,
        peer_identity: verdict.peer,
        rule: 0,
        count: 1,
        src: family_addr(tool).1,
        dst: family_addr(web.ip4).1,
        sport,
        dport: 80,
        family: FAMILY_V4,
        protocol: PROTO_TCP,
        direction: DIR_INGRESS,
        verdict: VERDICT_DROPPED,
        reason: REASON_NO_RULE,
        tcp_flags: TCP_SYN,
        flags: 0,
        _pad: [0],
        revision,
        folded: 0,
    };
    assert_eq!(e, expected);
    assert!(e.ts_ns > 0);

    // Repeats within the interval are folded into the next event.
    let suppressed = env.counter(stat::EVENTS_SUPPRESSED);
    assert_eq!(env.ingress("web", tool, syn), DROP);
    assert_eq!(env.ingress("web", tool, syn), DROP);
    assert!(started.elapsed() < interval, "the machine is too slow for this test");
    assert!(env.drain().is_empty(), "suppressed");
    assert_eq!(env.counter(stat::EVENTS_SUPPRESSED), suppressed + 2);
    std::thread::sleep(interval + Duration::from_millis(100));
    assert_eq!(env.ingress("web", tool, syn), DROP);
    let events = env.drain();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].count, 3, "the event stands for itself and the two suppressed drops");

    // An IPv6 drop, egress.
    let sport = env.fresh();
    let remote = addr("2606:4700::1111");
    assert_eq!(env.egress("web", remote, L4::Sctp(sport, 9)), DROP);
    let e = env.drain()[0];
    let verdict = env.decide("web", Direction::Egress, remote, PROTO_SCTP, 9);
    assert_eq!(
        (e.family, e.direction, e.protocol, e.sport, e.dport, e.src, e.dst, e.peer_identity, e.tcp_flags),
        (FAMILY_V6, DIR_EGRESS, PROTO_SCTP, sport, 9, family_addr(web.ip6).1, family_addr(remote).1, verdict.peer, 0)
    );

    // New allowed flows name the rule `lookup::decide` names.
    for (local, dir, remote, l4, policy, index) in [
        ("web", Direction::Ingress, addr("10.70.2.5"), L4::Tcp(env.fresh(), 8042, TCP_SYN), "web-ingress", 0),
        ("web", Direction::Ingress, addr("fd00:70:0:4::5"), L4::Sctp(env.fresh(), 9000), "web-ingress", 1),
        ("web", Direction::Ingress, addr("2001:db8::7"), L4::Tcp(env.fresh(), 443, TCP_SYN), "web-ingress", 2),
        ("web", Direction::Egress, addr("10.70.1.20"), L4::Tcp(env.fresh(), 5432, TCP_SYN), "web-egress", 0),
        ("web", Direction::Egress, addr("10.70.3.5"), L4::Tcp(env.fresh(), 3003, TCP_SYN), "web-egress", 2),
        ("db", Direction::Ingress, addr("172.16.0.9"), L4::Echo(env.fresh()), "db-ingress", 1),
    ] {
        let l = env.local(local);
        let v = env.decide(local, dir, remote, l4.protocol(remote.is_ipv6()), l4.port());
        assert!(v.allowed && v.rule != 0, "{local} {dir:?} {remote} {l4:?}");
        let info = &env.compiled.catalog.rules[&v.rule];
        let want_ref = PolicyRef::new("prod", policy);
        assert_eq!((info.policy.as_ref(), info.direction, info.index), (Some(&want_ref), dir, index));
        let got = match dir {
            Direction::Ingress => env.ingress(local, remote, l4),
            Direction::Egress => env.egress(local, remote, l4),
        };
        assert_eq!(got, PASS);
        let events = env.drain();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = events[0];
        assert_eq!(
            (e.verdict, e.reason, e.rule, e.peer_identity, e.local_class, e.ifindex, e.count),
            (VERDICT_ALLOWED, REASON_RULE, v.rule, v.peer, l.class, l.ifindex, 1),
            "{local} {dir:?} {remote} {l4:?}"
        );
        assert_eq!(e.direction, dir.code());
        // Later packets and replies of the flow are tracked, and silent.
        let reply_verdict = match dir {
            Direction::Ingress => env.egress(local, remote, l4.reply()),
            Direction::Egress => env.ingress(local, remote, l4.reply()),
        };
        assert_eq!(reply_verdict, PASS);
        assert!(env.drain().is_empty(), "tracked packets emit nothing");
    }

    // Not isolated: allowed with no rule, the peer still identified.
    let remote = addr("8.8.8.8");
    let l4 = L4::Tcp(env.fresh(), 443, TCP_SYN);
    assert_eq!(env.egress("db", remote, l4), PASS);
    let e = env.drain()[0];
    let v = env.decide("db", Direction::Egress, remote, PROTO_TCP, 443);
    assert_eq!((e.verdict, e.reason, e.rule, e.peer_identity), (VERDICT_ALLOWED, REASON_NOT_ISOLATED, 0, v.peer));
    assert!(v.peer != 0, "8.8.8.8 falls in the 0.0.0.0/0 cell");

    // The node reaches its pods (--allow-host): the built-in rule.
    let l4 = L4::Tcp(env.fresh(), 10250, TCP_SYN);
    assert_eq!(env.ingress("solo", addr(HOST_V4), l4), PASS);
    let e = env.drain()[0];
    assert_eq!((e.reason, e.rule), (REASON_RULE, palisade::policy::compile::RULE_HOST));

    // Malformed.
    let mut bad = packet(tool, web.ip4, L4::Tcp(env.fresh(), 80, TCP_SYN));
    bad[ETH_LEN] = 0x43;
    assert_eq!(env.run(Direction::Ingress, "web", &bad), DROP);
    let e = env.drain()[0];
    assert_eq!(
        (e.verdict, e.reason, e.direction, e.ifindex, e.local_class, e.count),
        (VERDICT_DROPPED, REASON_MALFORMED, DIR_INGRESS, web.ifindex, web.class, 1)
    );
    let c = env.dp.counters();
    assert!(c[stat::EVENTS_SENT as usize] >= 12 && c[stat::EVENTS_LOST as usize] == 0, "{c:?}");
}

/// One source scanning many ports: each probe is a new flow, so per-flow
/// suppression cannot help. Its drop events stop at the budget; every drop
/// is still a drop, and each one is accounted for exactly: as an event, as
/// a suppressed or a folded drop, and the folded ones reappear in the
/// source's next event.
#[test]
fn port_scan_is_bounded_per_source_and_counted_exactly() {
    const BUDGET: u32 = 50;
    const PORTS: u16 = 10_000;
    let interval = Duration::from_secs(4);
    let mut env = Env::new(Settings { drop_event_interval: interval, drop_event_budget: BUDGET, ..settings() });
    let totals = |env: &Env| {
        let c = env.dp.counters();
        let g = |i: u32| c[i as usize];
        (
            g(stat::DROPPED_NO_RULE),
            g(stat::EVENTS_SENT) + g(stat::EVENTS_LOST) + g(stat::EVENTS_SUPPRESSED) + g(stat::EVENTS_FOLDED),
            g(stat::EVENTS_FOLDED),
        )
    };
    // Ingress: a remote address scans a pod; egress: a pod scans a remote
    // address. Both are isolated in that direction on these ports.
    for (dir, remote) in [(Direction::Ingress, addr("10.70.3.5")), (Direction::Egress, addr("10.99.0.1"))] {
        let (drops0, accounted0, folded0) = totals(&env);
        let sport = env.fresh();
        let started = Instant::now();
        let mut drops = 0u64;
        for port in 20_000..20_000 + PORTS {
            assert!(!env.decide("web", dir, remote, PROTO_UDP, port).allowed, "{dir:?} {port} must be denied");
            let l4 = L4::Udp(sport, port);
            let v = match dir {
                Direction::Ingress => env.ingress("web", remote, l4),
                Direction::Egress => env.egress("web", remote, l4),
            };
            assert_eq!(v, DROP, "{dir:?} port {port}: the packet drops whatever happens to its event");
            drops += 1;
        }
        assert!(started.elapsed() < interval, "the machine is too slow for this test");
        let events = env.drain();
        let (drops1, accounted1, folded1) = totals(&env);
        assert_eq!(drops1 - drops0, drops);
        assert_eq!(events.len() as u32, BUDGET, "{dir:?}: events stop at the budget");
        assert!(events.iter().all(|e| e.verdict == VERDICT_DROPPED && e.count == 1 && e.folded == 0));
        assert_eq!(folded1 - folded0, drops - u64::from(BUDGET), "{dir:?}: the rest are folded");
        assert_eq!(accounted1 - accounted0, drops, "{dir:?}: sent + lost + suppressed + folded = dropped");
        // Only the flows whose events were sent are tracked as denied: the
        // scan past the budget leaves nothing in connection tracking.
        let (remote_key, web_if) = (family_addr(remote).1, env.local("web").ifindex);
        let denied = env
            .flows()
            .iter()
            .filter(|(k, v)| k.ifindex == web_if && k.remote == remote_key && v.verdict == CT_DENIED)
            .count();
        assert_eq!(denied as u32, BUDGET, "{dir:?}: denied flows tracked");
        // The next interval's first event carries what was folded.
        std::thread::sleep(interval + Duration::from_millis(100));
        let l4 = L4::Udp(sport, 20_000 + PORTS);
        let v = match dir {
            Direction::Ingress => env.ingress("web", remote, l4),
            Direction::Egress => env.egress("web", remote, l4),
        };
        assert_eq!(v, DROP);
        let next = env.drain();
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!((next[0].count, u64::from(next[0].folded)), (1, drops - u64::from(BUDGET)));
        let reported: u64 = events.iter().chain(&next).map(|e| u64::from(e.count) + u64::from(e.folded)).sum();
        assert_eq!(reported, drops + 1, "{dir:?}: the events stand for every drop");
    }
}
