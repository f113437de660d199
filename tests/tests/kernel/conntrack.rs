//! 2. Connection tracking.

use crate::fixture::*;
use palisade_common::{CT_ALLOWED, CT_DENIED, CtEntry};

#[test]
fn conntrack_replies_state_and_redecision() {
    let mut env = Env::new(settings());
    let world = addr("8.8.8.8");
    let world6 = addr("2606:4700::1111");

    // solo: ingress isolated without rules; egress allows TCP 80 and UDP 53
    // to anyone. Replies to its allowed flows pass.
    for remote in [world, world6] {
        for l4 in [L4::Tcp(env.fresh(), 80, TCP_SYN), L4::Udp(env.fresh(), 53)] {
            assert_eq!(env.egress("solo", remote, l4), PASS, "{remote} {l4:?}");
            assert_eq!(env.ingress("solo", remote, l4.reply()), PASS, "reply of {remote} {l4:?}");
            assert_eq!(env.egress("solo", remote, l4), PASS, "second packet of {remote} {l4:?}");
        }
        // The same remote and port but another local port: no state.
        let l4 = L4::Tcp(80, env.fresh(), TCP_SYN | TCP_ACK);
        assert_eq!(env.ingress("solo", remote, l4), DROP, "unsolicited {remote} {l4:?}");
    }

    // Never-allowed packets leave nothing behind that passes, in either
    // direction (see `denied_flows_drop_on_their_entry_and_pass_nothing`).
    let l4 = L4::Tcp(env.fresh(), 81, TCP_SYN);
    assert_eq!(env.egress("solo", world, l4), DROP);
    assert_eq!(env.ingress("solo", world, l4.reply()), DROP, "reply to a dropped SYN");
    let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
    assert_eq!(env.ingress("solo", world, l4), DROP);
    assert_eq!(env.egress("solo", world, l4.reply()), DROP, "reply to a dropped inbound SYN");
    assert_eq!(env.ingress("solo", world, l4), DROP, "a retransmission is still dropped");

    // An inbound flow's replies pass the isolated egress of web.
    let client = addr("10.70.2.5");
    let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
    assert!(!env.decide("web", Direction::Egress, client, PROTO_TCP, l4.reply().port()).allowed);
    assert_eq!(env.ingress("web", client, l4), PASS);
    assert_eq!(env.egress("web", client, l4.reply()), PASS, "reply to an allowed inbound flow");

    // A policy change re-decides open flows: solo loses TCP 80 egress.
    let open_tcp = L4::Tcp(env.fresh(), 80, TCP_SYN);
    let open_tcp_reply_first = L4::Tcp(env.fresh(), 80, TCP_SYN);
    let open_udp = L4::Udp(env.fresh(), 53);
    for l4 in [open_tcp, open_tcp_reply_first, open_udp] {
        assert_eq!(env.egress("solo", world, l4), PASS);
        assert_eq!(env.ingress("solo", world, l4.reply()), PASS);
    }
    env.drain();
    let before = env.dp.revision();
    let after = env.apply(input(true));
    assert!(after != before, "a sync with changes bumps the revision ({before} -> {after})");

    let ack = L4::Tcp(open_tcp.port_pair().0, 80, TCP_ACK);
    assert_eq!(env.egress("solo", world, ack), DROP, "the open TCP flow is re-decided and dropped");
    assert_eq!(env.ingress("solo", world, ack.reply()), DROP, "and its state is gone");
    assert_eq!(
        env.ingress("solo", world, open_tcp_reply_first.reply()),
        DROP,
        "a reply is the first packet after the change: re-decided as the flow's origin (egress to 80)"
    );
    assert_eq!(env.egress("solo", world, open_udp), PASS, "UDP 53 is still allowed after re-decision");
    assert_eq!(env.ingress("solo", world, open_udp.reply()), PASS);
    let events = env.drain();
    let redecided: Vec<&Event> = events.iter().filter(|e| e.flags & EVF_REDECIDED != 0).collect();
    assert_eq!(redecided.len(), 2, "two re-decided drops reported: {events:#?}");
    for e in redecided {
        assert_eq!(e.verdict, VERDICT_DROPPED);
        assert_eq!(e.reason, REASON_NO_RULE);
        assert_eq!(e.revision, after);
    }

    // Back to the old policy: a new SYN on port 80 passes again.
    env.apply(input(false));
    let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
    assert_eq!(env.egress("solo", world, l4), PASS);
}

/// A flow policy denies is tracked as `CT_DENIED` while its drop event's
/// interval lasts: its next packets that way drop on that entry, counted
/// in it for the flow's next event, and the entry passes nothing: not a
/// packet the other way, not an ICMP error about the flow, not the flow's
/// next packet once a policy change allows it (which passes and is
/// tracked as allowed).
#[test]
fn denied_flows_drop_on_their_entry_and_pass_nothing() {
    let mut env = Env::new(settings());
    let world = addr("8.8.8.8");
    let solo = env.local("solo");
    let solo_ip = solo.ip_like(world);
    // Under the tight policy solo's egress to TCP 80 is denied; its
    // ingress is isolated without rules.
    env.apply(input(true));
    let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
    let (lp, rp) = l4.port_pair();
    let entry = |env: &Env| {
        env.flows()
            .into_iter()
            .find(|(k, _)| k.ifindex == solo.ifindex && k.local_port == lp && k.remote_port == rp)
            .map(|(_, v)| v)
    };
    let drops = env.counter(stat::DROPPED_NO_RULE);
    assert_eq!(env.egress("solo", world, l4), DROP);
    assert_eq!(env.drain().len(), 1, "the flow's event");
    let e = entry(&env).expect("the denied flow is tracked");
    assert_eq!((e.verdict, e.origin, e.suppressed, e.revision), (CT_DENIED, DIR_EGRESS, 0, env.dp.revision()));
    for _ in 0..3 {
        assert_eq!(env.egress("solo", world, l4), DROP);
    }
    assert_eq!(entry(&env).map(|e| e.suppressed), Some(3), "three drops counted on the entry");
    assert_eq!(env.counter(stat::DROPPED_NO_RULE) - drops, 4);
    assert!(env.drain().is_empty(), "suppressed within the interval");

    // An ICMP error about the flow (solo's ingress allows no ICMP), and a
    // packet the other way (nor anything else): judged by policy.
    let sent = packet(solo_ip, world, l4);
    let err = icmp_error(world, solo_ip, 3, 3, &sent[ETH_LEN..]);
    assert_eq!(env.run(Direction::Ingress, "solo", &err), DROP, "an error about a denied flow");
    assert_eq!(env.ingress("solo", world, l4.reply()), DROP, "a packet the other way");

    // The old policy allows TCP 80 again: the flow's next packet passes,
    // on the revision bump, and its reply with it.
    env.apply(input(false));
    let ack = L4::Tcp(lp, rp, TCP_ACK);
    assert_eq!(env.egress("solo", world, ack), PASS, "allowed after the policy change");
    assert_eq!(entry(&env).map(|e| e.verdict), Some(CT_ALLOWED));
    assert_eq!(env.ingress("solo", world, ack.reply()), PASS, "and its reply");
}

/// The fast path tells the pipeline that its lookup missed through the
/// skb's `cb[0]`; whatever an earlier layer left there must never make the
/// pipeline skip the lookup of a flow that is tracked. A flow into web,
/// its entry made stale by a revision bump (the fast path does not pass
/// it): web's reply passes only on that entry (web's egress allows nothing
/// to the client), whatever `cb` held on the way in.
#[test]
fn leftover_cb_never_stands_for_a_miss() {
    let mut env = Env::new(settings());
    let client = addr("10.70.2.5");
    let web = env.local("web");
    let leftovers = [[0; 5], [palisade_common::CB_FAST_MISSED; 5], [palisade_common::CB_FAST_MISSED, 1, 2, 3, 4]];
    let mut tight = false;
    for cb in leftovers {
        let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
        assert!(!env.decide("web", Direction::Egress, client, PROTO_TCP, l4.reply().port()).allowed);
        assert_eq!(env.run_with_cb(Direction::Ingress, web.ifindex, &packet(client, web.ip4, l4), cb), PASS);
        let before = env.dp.revision();
        tight = !tight;
        let after = env.apply(input(tight));
        assert!(after != before, "the revision moves");
        let reply = packet(web.ip4, client, l4.reply());
        assert_eq!(env.run_with_cb(Direction::Egress, web.ifindex, &reply, cb), PASS, "reply, cb {cb:x?}");
        assert_eq!(env.run_with_cb(Direction::Egress, web.ifindex, &reply, cb), PASS, "again, current, cb {cb:x?}");
    }
}

/// Tracked flows live by the programs' clock (jiffies times the tick the
/// agent writes): an entry's stamp moves in nanoseconds, and a flow idle
/// past its protocol's timeout (UDP a minute, TCP six hours) is a new
/// flow again, while one idle just under it is not. Per family, since
/// each has a table of its own.
#[test]
fn tracked_flows_expire_on_the_programs_clock() {
    let mut env = Env::new(settings());
    let solo = env.local("solo");
    // The programs read jiffies only once the agent wrote the tick (else
    // the coarse clock, which would pass the rest of this test as well).
    let tick = env.config().tick_ns;
    assert!((100_000..=10_000_000).contains(&tick), "a tick of 0.1 to 10 ms (HZ 100 to 10k), got {tick} ns");
    for remote in [addr("8.8.8.8"), addr("2606:4700::1111")] {
        // solo's egress allows UDP 53 and TCP 80; its ingress nothing.
        let flow = |env: &Env, l4: L4| {
            let (lp, rp) = l4.port_pair();
            env.flows()
                .into_iter()
                .find(|(k, _)| k.local_port == lp && k.remote_port == rp && k.ifindex == solo.ifindex)
                .unwrap_or_else(|| panic!("no entry for {l4:?} to {remote}"))
        };
        let udp = L4::Udp(env.fresh(), 53);
        assert_eq!(env.egress("solo", remote, udp), PASS);
        let (key, first) = flow(&env, udp);
        std::thread::sleep(Duration::from_millis(1300));
        assert_eq!(env.egress("solo", remote, udp), PASS);
        let (_, later) = flow(&env, udp);
        let moved = later.last_seen_ns.wrapping_sub(first.last_seen_ns);
        assert!(
            (1_200_000_000..1_600_000_000).contains(&moved),
            "{remote}: a packet 1.3 s later stamps the entry {moved} ns later (refreshed after a second)"
        );

        let aged = |by_ns: u64| CtEntry { last_seen_ns: later.last_seen_ns.wrapping_sub(by_ns), ..later };
        env.set_flow(&key, &aged(59_000_000_000));
        assert_eq!(env.ingress("solo", remote, udp.reply()), PASS, "{remote}: UDP idle 59 s: its reply passes");
        env.set_flow(&key, &aged(61_000_000_000));
        assert_eq!(env.ingress("solo", remote, udp.reply()), DROP, "{remote}: UDP idle 61 s: its reply is a new flow");

        let tcp = L4::Tcp(env.fresh(), 80, TCP_SYN);
        assert_eq!(env.egress("solo", remote, tcp), PASS);
        let (key, entry) = flow(&env, tcp);
        let hours = |h: u64, s: u64| CtEntry {
            last_seen_ns: entry.last_seen_ns.wrapping_sub((h * 3600 + s) * 1_000_000_000),
            ..entry
        };
        env.set_flow(&key, &hours(5, 3599));
        assert_eq!(env.ingress("solo", remote, tcp.reply()), PASS, "{remote}: TCP idle 6 h less a second");
        env.set_flow(&key, &hours(6, 1));
        assert_eq!(env.ingress("solo", remote, tcp.reply()), DROP, "{remote}: TCP idle 6 h and a second");
    }
}
