//! 7. ClusterNetworkPolicy tiers.
//!
//! The compiled entries decide real packets in the classifier (Admin
//! before NetworkPolicy, Baseline after it), and drop events name the
//! deciding cluster rule.

use crate::fixture::*;
use palisade::datapath::MapSizes;
use palisade::policy::compile;
use palisade::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, ClusterSubject, Protocol, Selector, Tier,
};
use std::sync::Arc;

fn sel(k: &str, v: &str) -> Selector {
    Selector { match_labels: [(k.to_string(), v.to_string())].into(), requirements: vec![] }
}

/// Pods labelled app=`app` in any namespace.
fn app(app: &str) -> ClusterPeer {
    ClusterPeer::Pods { namespaces: Selector::default(), pods: sel("app", app) }
}

fn tcp(port: u16) -> Vec<ClusterPort> {
    vec![ClusterPort::Ports { protocol: Protocol::Tcp, first: port, last: port }]
}

fn rule(name: &str, action: Action, peers: Vec<ClusterPeer>, ports: Vec<ClusterPort>) -> ClusterRule {
    ClusterRule { name: name.into(), action, peers, ports }
}

/// A cluster policy: (name, tier, priority, subject pod app label,
/// ingress, egress).
type Spec<'a> = (&'a str, Tier, u32, &'a str, Vec<ClusterRule>, Vec<ClusterRule>);

/// The kernel test cluster plus cluster policies.
fn with(policies: Vec<Spec>) -> palisade::policy::Input {
    let mut input = input(false);
    for (name, tier, priority, subject, ingress, egress) in policies {
        let subject = ClusterSubject::Pods { namespaces: sel("team", "prod"), pods: sel("app", subject) };
        let p = ClusterPolicy { name: name.into(), tier, priority, subject, ingress, egress };
        input.cluster_policies.insert(name.into(), Arc::new(p));
    }
    input
}

/// The rule id the catalog gives a cluster policy's named rule.
fn rule_id(env: &Env, policy: &str, name: &str) -> u32 {
    let found = env
        .compiled
        .catalog
        .rules
        .iter()
        .find(|(_, r)| r.cluster.as_ref().is_some_and(|c| c.policy == policy && c.rule == name));
    *found.unwrap_or_else(|| panic!("no rule {policy}/{name}")).0
}

/// Sends a fresh flow's first packet and returns the kernel's verdict with
/// its event, after checking it against `lookup` over the compiled entries.
fn first_packet(env: &mut Env, local: &str, dir: Direction, remote: &str, l4: L4) -> (Verdict, Event) {
    let remote = addr(remote);
    let want = env.decide(local, dir, remote, l4.protocol(remote.is_ipv6()), l4.port());
    let got = match dir {
        Direction::Ingress => env.ingress(local, remote, l4),
        Direction::Egress => env.egress(local, remote, l4),
    };
    assert_eq!(got == PASS, want.allowed, "{local} {dir:?} {remote} {l4:?}: kernel and lookup differ");
    let events = env.drain();
    assert_eq!(events.len(), 1, "{local} {dir:?} {remote} {l4:?}: {events:?}");
    assert_eq!(events[0].rule, want.rule, "the event names the rule lookup names");
    (got, events[0])
}

fn logging() -> Settings {
    Settings { log_new_flows: true, ..settings() }
}

#[test]
fn admin_deny_beats_a_networkpolicy_allow_and_its_drop_names_the_rule() {
    let mut env = Env::new(logging());
    let deny = rule("deny-80", Action::Deny, vec![app("client")], tcp(80));
    env.apply(with(vec![("deny-client", Tier::Admin, 10, "web", vec![deny], vec![])]));
    let id = rule_id(&env, "deny-client", "deny-80");
    for client in ["10.70.2.5", "fd00:70:0:2::5", "10.70.4.6"] {
        let port = env.fresh();
        let (v, e) = first_packet(&mut env, "web", Direction::Ingress, client, L4::Tcp(port, 80, TCP_SYN));
        assert_eq!((v, e.verdict, e.reason, e.rule), (DROP, VERDICT_DROPPED, REASON_RULE, id), "{client}");
    }
    // Where the Admin rule does not match, NetworkPolicy still decides.
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "web", Direction::Ingress, "10.70.2.5", L4::Tcp(port, 8042, TCP_SYN));
    assert_eq!((v, e.verdict, e.reason), (PASS, VERDICT_ALLOWED, REASON_RULE));
    assert!(env.compiled.catalog.rules[&e.rule].cluster.is_none(), "a NetworkPolicy rule");
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "web", Direction::Ingress, "10.70.3.5", L4::Tcp(port, 80, TCP_SYN));
    assert_eq!((v, e.reason, e.rule), (DROP, REASON_NO_RULE, 0), "not matched: NetworkPolicy's own deny");
    let text = env.compiled.catalog.rules[&id].to_string();
    assert_eq!(text, "ClusterNetworkPolicy deny-client rule deny-80 (Admin, priority 10, Deny)");
}

#[test]
fn admin_pass_hands_the_decision_to_networkpolicy() {
    let mut env = Env::new(logging());
    env.apply(with(vec![
        ("a-pass", Tier::Admin, 1, "web", vec![rule("pass", Action::Pass, vec![app("client")], vec![])], vec![]),
        ("b-deny", Tier::Admin, 2, "web", vec![rule("deny", Action::Deny, vec![app("client")], vec![])], vec![]),
    ]));
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "web", Direction::Ingress, "10.70.2.5", L4::Tcp(port, 80, TCP_SYN));
    assert_eq!((v, e.reason), (PASS, REASON_RULE), "NetworkPolicy allows it");
    assert!(env.compiled.catalog.rules[&e.rule].cluster.is_none());
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "web", Direction::Ingress, "10.70.2.5", L4::Tcp(port, 81, TCP_SYN));
    assert_eq!((v, e.reason, e.rule), (DROP, REASON_NO_RULE, 0), "NetworkPolicy denies it");
    // Without the Pass, the Deny decides.
    env.apply(with(vec![(
        "b-deny",
        Tier::Admin,
        2,
        "web",
        vec![rule("deny", Action::Deny, vec![app("client")], vec![])],
        vec![],
    )]));
    let id = rule_id(&env, "b-deny", "deny");
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "web", Direction::Ingress, "10.70.2.5", L4::Tcp(port, 80, TCP_SYN));
    assert_eq!((v, e.reason, e.rule), (DROP, REASON_RULE, id));
}

#[test]
fn baseline_denies_where_networkpolicy_does_not_isolate_and_only_there() {
    let mut env = Env::new(logging());
    let world = || vec![ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()])];
    env.apply(with(vec![
        // db's egress is not isolated: the Baseline decides.
        ("db-out", Tier::Baseline, 5, "db", vec![], vec![rule("no-443", Action::Deny, world(), tcp(443))]),
        // web's egress is isolated: NetworkPolicy decides, the Baseline
        // Accept never applies.
        ("web-out", Tier::Baseline, 5, "web", vec![], vec![rule("all", Action::Accept, world(), vec![])]),
    ]));
    assert_eq!(env.local("db").flags & palisade_common::EP_EGRESS_TIERED, palisade_common::EP_EGRESS_TIERED);
    let id = rule_id(&env, "db-out", "no-443");
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "db", Direction::Egress, "8.8.8.8", L4::Tcp(port, 443, TCP_SYN));
    assert_eq!((v, e.verdict, e.reason, e.rule, e.direction), (DROP, VERDICT_DROPPED, REASON_RULE, id, DIR_EGRESS));
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "db", Direction::Egress, "8.8.8.8", L4::Tcp(port, 80, TCP_SYN));
    assert_eq!((v, e.reason, e.rule), (PASS, REASON_NOT_ISOLATED, 0), "the default allow");
    let port = env.fresh();
    let (v, _) = first_packet(&mut env, "db", Direction::Egress, "2606:4700::1111", L4::Tcp(port, 443, TCP_SYN));
    assert_eq!(v, PASS, "IPv6 is outside 0.0.0.0/0");
    let port = env.fresh();
    let (v, e) = first_packet(&mut env, "web", Direction::Egress, "8.8.8.8", L4::Tcp(port, 443, TCP_SYN));
    assert_eq!((v, e.reason, e.rule), (DROP, REASON_NO_RULE, 0), "NetworkPolicy isolation beats the Baseline");
}

#[test]
fn admin_accept_overrides_a_networkpolicy_deny_all() {
    let mut env = Env::new(logging());
    let ops = ClusterPeer::Namespaces(sel("team", "ops"));
    env.apply(with(vec![(
        "scrape",
        Tier::Admin,
        0,
        "solo",
        vec![rule("metrics", Action::Accept, vec![ops], tcp(9100))],
        vec![],
    )]));
    let id = rule_id(&env, "scrape", "metrics");
    for mon in ["10.70.4.5", "fd00:70:0:4::5"] {
        let port = env.fresh();
        let (v, e) = first_packet(&mut env, "solo", Direction::Ingress, mon, L4::Tcp(port, 9100, TCP_SYN));
        assert_eq!((v, e.verdict, e.reason, e.rule), (PASS, VERDICT_ALLOWED, REASON_RULE, id), "{mon}");
        // The reply rides on the tracked flow.
        assert_eq!(env.egress("solo", addr(mon), L4::Tcp(9100, port, TCP_SYN | TCP_ACK)), PASS);
        assert!(env.drain().is_empty());
    }
    let port = env.fresh();
    let (v, _) = first_packet(&mut env, "solo", Direction::Ingress, "10.70.4.5", L4::Tcp(port, 9101, TCP_SYN));
    assert_eq!(v, DROP, "solo's deny-all elsewhere");
    let port = env.fresh();
    let (v, _) = first_packet(&mut env, "solo", Direction::Ingress, "10.70.3.5", L4::Tcp(port, 9100, TCP_SYN));
    assert_eq!(v, DROP, "dev is not ops");
}

/// Every local pod, direction, peer and port under a mix of tiers: the
/// classifier agrees with `lookup` over the compiled entries packet by
/// packet.
#[test]
fn tiered_verdicts_agree_with_the_compiler() {
    let mut env = Env::new(settings());
    let world = || vec![ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()])];
    let named = vec![ClusterPort::Named("http-alt".into())];
    env.apply(with(vec![
        (
            "a",
            Tier::Admin,
            1,
            "web",
            vec![rule("pass-ops", Action::Pass, vec![ClusterPeer::Namespaces(sel("team", "ops"))], vec![])],
            vec![],
        ),
        (
            "b",
            Tier::Admin,
            1,
            "web",
            vec![rule("deny-alt", Action::Deny, vec![app("client"), app("mon")], named.clone())],
            vec![],
        ),
        (
            "c",
            Tier::Admin,
            3,
            "db",
            vec![],
            vec![rule(
                "meta",
                Action::Deny,
                vec![ClusterPeer::Networks(vec!["169.254.169.254/32".parse().unwrap()])],
                vec![],
            )],
        ),
        ("d", Tier::Admin, 3, "solo", vec![], vec![rule("to-alt", Action::Accept, vec![app("tool")], named)]),
        (
            "e",
            Tier::Baseline,
            9,
            "db",
            vec![rule("in", Action::Deny, world(), tcp(22))],
            vec![
                rule(
                    "dns",
                    Action::Accept,
                    world(),
                    vec![ClusterPort::Ports { protocol: Protocol::Udp, first: 53, last: 53 }],
                ),
                rule("rest", Action::Deny, world(), vec![]),
            ],
        ),
    ]));
    let peers = [
        "10.70.2.5",
        "10.70.3.5",
        "10.70.4.5",
        "10.70.4.6",
        "10.70.1.10",
        HOST_V4,
        "8.8.8.8",
        "169.254.169.254",
        "fd00:70:0:2::5",
        "fd00:70:0:4::5",
        "2606:4700::1111",
    ];
    let ports = [22, 53, 80, 443, 8080, 8081, 9100];
    let (mut passed, mut dropped) = (0, 0);
    for local in LOCALS.map(|l| l.0) {
        for dir in [Direction::Ingress, Direction::Egress] {
            for peer in peers.map(addr) {
                let mut flows: Vec<L4> = Vec::new();
                for port in ports {
                    flows.push(L4::Tcp(env.fresh(), port, TCP_SYN));
                    flows.push(L4::Udp(env.fresh(), port));
                }
                flows.push(L4::Echo(env.fresh()));
                for l4 in flows {
                    let want = env.decide(local, dir, peer, l4.protocol(peer.is_ipv6()), l4.port());
                    let got = match dir {
                        Direction::Ingress => env.ingress(local, peer, l4),
                        Direction::Egress => env.egress(local, peer, l4),
                    };
                    assert_eq!(got == PASS, want.allowed, "{local} {dir:?} {peer} {l4:?}");
                    if got == PASS { passed += 1 } else { dropped += 1 }
                }
            }
        }
    }
    assert!(passed > 50 && dropped > 100, "{passed} passed, {dropped} dropped");
    let denies = env.compiled.policy.values().filter(|v| v.denies()).count();
    assert!(denies > 0, "deny entries in the map");
}

#[test]
fn audit_mode_passes_cluster_policy_denies_and_reports_them() {
    let mut env = Env::new(logging());
    let deny = rule("deny-80", Action::Deny, vec![app("client")], tcp(80));
    let mut input = with(vec![("deny-client", Tier::Admin, 10, "web", vec![deny], vec![])]);
    // The namespace in audit mode (as `--allow-namespace-audit` allows).
    let mut prod = (*input.namespaces["prod"]).clone();
    prod.audit = true;
    input.namespaces.insert("prod".into(), Arc::new(prod));
    env.apply(input);
    let id = rule_id(&env, "deny-client", "deny-80");
    let port = env.fresh();
    let syn = L4::Tcp(port, 80, TCP_SYN);
    assert!(!env.decide("web", Direction::Ingress, addr("10.70.2.5"), PROTO_TCP, 80).allowed);
    assert_eq!(env.ingress("web", addr("10.70.2.5"), syn), PASS, "audit: the packet passes");
    let events = env.drain();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!((e.verdict, e.reason, e.rule), (palisade_common::VERDICT_AUDIT, REASON_RULE, id));
}

/// A change whose entries do not fit: what that sync allowed for the
/// identity that does not fit is taken back (here a broad Admin Deny
/// narrowed to one peer: the broad entry turns Accept, and the narrower
/// Deny that must carve it out does not fit), its pods are held closed,
/// and the error is reported. Before the fix the broad Accept stayed.
#[test]
fn a_change_that_does_not_fit_takes_back_what_it_allowed() {
    let everywhere = || ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
    let accept = || rule("all", Action::Accept, vec![everywhere()], vec![]);
    let before = with(vec![
        ("deny", Tier::Admin, 5, "web", vec![rule("all", Action::Deny, vec![everywhere()], vec![])], vec![]),
        ("accept", Tier::Admin, 10, "web", vec![accept()], vec![]),
    ]);
    let after = with(vec![
        ("deny", Tier::Admin, 5, "web", vec![rule("client", Action::Deny, vec![app("client")], vec![])], vec![]),
        ("accept", Tier::Admin, 10, "web", vec![accept()], vec![]),
    ]);
    // Room for the first state's entries alone.
    let (ports, rest): (Vec<_>, Vec<_>) = compile(&before, &node()).policy.into_keys().partition(|k| k.is_port());
    let sizes = MapSizes { policy: rest.len() as u32, policy_ports: ports.len() as u32, ..MapSizes::default() };
    let mut env = Env::sized_from(settings(), sizes, before);
    let web = env.local("web").class.to_be_bytes();
    let client = "10.70.2.5";
    let port = env.fresh();
    assert_eq!(env.ingress("web", addr(client), L4::Tcp(port, 80, TCP_SYN)), DROP, "denied before");
    let was = env.policy_entries();

    let report = env.try_apply(&after);
    assert!(report.errors.iter().any(|e| e.contains("policy map full")), "{:?}", report.errors);
    for (len, key, value) in env.policy_entries() {
        if key.local == web && !value.denies() {
            assert!(was.contains(&(len, key, value)), "an allow this sync wrote for web stayed: {key:?} {value:?}");
        }
    }
    for remote in [client, "10.70.3.5", "192.0.2.1"] {
        let port = env.fresh();
        assert_eq!(env.ingress("web", addr(remote), L4::Tcp(port, 80, TCP_SYN)), DROP, "{remote}: held closed");
    }
}
