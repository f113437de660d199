//! Between one map write and the next: the kernel as a packet finds it in
//! the middle of a sync. A chain of cluster states is synced one after
//! another; each sync writes every entry on its own (`batch::watch`), and
//! after each write a second copy of the classifier, on the same pinned
//! maps, judges a grid of first packets. No packet may pass there that
//! neither the state before nor the state after passes: the order of
//! `Datapath::sync` (DESIGN.md, Sync order) promises it.

use crate::fixture::*;
use aya::maps::HashMap as BpfHashMap;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use palisade::datapath::{self, MapSizes, batch};
use palisade::policy::compile;
use palisade::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, ClusterSubject, Protocol, Selector, Tier,
};
use palisade_common::{CtEntry, CtKey, CtKey4, PROTO_TCP, PROTO_UDP, maps, programs};
use palisade_kit::manifest;
use palisade_kit::tc::skb_ctx;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// A remote pod: (namespace, name, app label, IPv4, IPv6).
type Remote = (&'static str, &'static str, &'static str, &'static str, &'static str);

const CLIENT: Remote = ("prod", "client", "client", "10.70.2.5", "fd00:70:0:2::5");
const TOOL: Remote = ("dev", "tool", "tool", "10.70.3.5", "fd00:70:0:3::5");
const MON: Remote = ("ops", "mon", "mon", "10.70.4.5", "fd00:70:0:4::5");
/// A dev pod on the address MON had.
const TOOL_ON_MONS: Remote = ("dev", "tool2", "tool", "10.70.4.5", "fd00:70:0:4::5");
const NEWCOMER: Remote = ("prod", "new", "client", "10.70.2.9", "fd00:70:0:2::9");

/// Remote addresses of the grid: every remote pod's, two no pod has (in
/// an ipBlock rule's CIDR, one in its except or the other's), one outside.
const REMOTE_ADDRESSES: [&str; 14] = [
    "10.70.2.5",
    "10.70.3.5",
    "10.70.4.5",
    "10.70.2.9",
    "10.70.2.77",
    "10.70.3.77",
    "8.8.8.8",
    "fd00:70:0:2::5",
    "fd00:70:0:3::5",
    "fd00:70:0:4::5",
    "fd00:70:0:2::9",
    "fd00:70:0:2::77",
    "fd00:70:0:3::77",
    "2606:4700::1111",
];

const PORTS: [(u8, u16); 4] = [(PROTO_TCP, 80), (PROTO_TCP, 81), (PROTO_TCP, 5432), (PROTO_UDP, 80)];

/// One cluster state.
struct State {
    what: &'static str,
    /// Team labels of dev and ops.
    teams: (&'static str, &'static str),
    remotes: Vec<Remote>,
    /// db's app label.
    db_app: &'static str,
    policies: Vec<Value>,
    /// The team whose namespaces an Admin ClusterNetworkPolicy denies
    /// web on TCP 80 and 81, if any.
    denied_team: Option<&'static str>,
}

fn ingress_rule(peer: Value, port: u16) -> Value {
    json!({"from": [peer], "ports": [{"protocol": "TCP", "port": port}]})
}

fn pods(app: &str) -> Value {
    json!({"podSelector": {"matchLabels": {"app": app}}})
}

fn team(t: &str) -> Value {
    json!({"namespaceSelector": {"matchLabels": {"team": t}}})
}

/// From 10.70.0.0/16 and fd00:70::/32 but `except`, on TCP 81.
fn cidrs_but(except: &[(&str, &str)]) -> Value {
    let (v4, v6): (Vec<&str>, Vec<&str>) = except.iter().copied().unzip();
    json!({"from": [
        {"ipBlock": {"cidr": "10.70.0.0/16", "except": v4}},
        {"ipBlock": {"cidr": "fd00:70::/32", "except": v6}}
    ], "ports": [{"protocol": "TCP", "port": 81}]})
}

/// The tool's /24 and /64.
const TOOLS_NET: [(&str, &str); 1] = [("10.70.3.0/24", "fd00:70:0:3::/64")];
/// The same addresses in halves, and the client's: an address in the
/// tool's net is excepted before and after, and judged by the broader
/// CIDR if the whole goes before the halves come.
const HALVES_AND_CLIENTS_NET: [(&str, &str); 3] = [
    ("10.70.3.0/25", "fd00:70:0:3::/65"),
    ("10.70.3.128/25", "fd00:70:0:3:8000::/65"),
    ("10.70.2.0/24", "fd00:70:0:2::/64"),
];

/// web's ingress rules, db's (from web on 5432), and solo's egress to
/// team dev on 80.
fn policies(web: Vec<Value>) -> Vec<Value> {
    vec![
        manifest::policy(
            "prod",
            "web-in",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"], "ingress": web}),
        ),
        manifest::policy(
            "prod",
            "db-in",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                   "ingress": [ingress_rule(pods("web"), 5432)]}),
        ),
        manifest::policy(
            "prod",
            "solo-out",
            json!({"podSelector": {"matchLabels": {"app": "solo"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [team("dev")], "ports": [{"protocol": "TCP", "port": 80}]}]}),
        ),
    ]
}

/// The chain: each state differs from the one before in ways whose
/// writes, in the wrong order, would pass a packet neither state passes.
fn states() -> Vec<State> {
    let base_web = vec![ingress_rule(pods("client"), 80), ingress_rule(team("ops"), 81)];
    let with_dev = || {
        let mut web = base_web.clone();
        web.push(ingress_rule(team("dev"), 80));
        web
    };
    let swapped = vec![ingress_rule(pods("tool"), 80), ingress_rule(team("ops"), 81)];
    let with_cidrs = |except: &[(&str, &str)]| {
        let mut web = swapped.clone();
        web.push(cidrs_but(except));
        web
    };
    let state = |what, teams, remotes: &[Remote], db_app, web: Vec<Value>, denied_team| State {
        what,
        teams,
        remotes: remotes.to_vec(),
        db_app,
        policies: policies(web),
        denied_team,
    };
    let moved = [CLIENT, TOOL_ON_MONS, TOOL];
    let added = [CLIENT, TOOL_ON_MONS, TOOL, NEWCOMER];
    vec![
        state("the start", ("dev", "ops"), &[CLIENT, TOOL, MON], "db", base_web.clone(), None),
        state(
            "a pod deleted while a rule comes that admits its namespace",
            ("dev", "ops"),
            &[CLIENT, MON],
            "db",
            with_dev(),
            None,
        ),
        state(
            "an address leaving one namespace for another",
            ("dev", "ops"),
            &[CLIENT, TOOL_ON_MONS],
            "db",
            with_dev(),
            None,
        ),
        state("two namespaces swapping their labels", ("ops", "dev"), &moved, "db", with_dev(), None),
        state("a rule's peer swapped", ("ops", "dev"), &moved, "db", swapped.clone(), None),
        state("a local pod taking another's labels, a pod added", ("ops", "dev"), &added, "web", swapped.clone(), None),
        state("an ipBlock rule with an except", ("ops", "dev"), &added, "web", with_cidrs(&TOOLS_NET), None),
        state("the except moved", ("ops", "dev"), &added, "web", with_cidrs(&HALVES_AND_CLIENTS_NET), None),
        state(
            "a ClusterNetworkPolicy denying a namespace",
            ("ops", "dev"),
            &added,
            "web",
            with_cidrs(&HALVES_AND_CLIENTS_NET),
            Some("ops"),
        ),
        state(
            "the deny moved to another namespace",
            ("ops", "dev"),
            &added,
            "web",
            with_cidrs(&HALVES_AND_CLIENTS_NET),
            Some("prod"),
        ),
        state("all of it back at once", ("dev", "ops"), &[CLIENT, TOOL, MON], "db", base_web, None),
    ]
}

fn input(s: &State) -> palisade::policy::Input {
    let namespaces = [("prod", "prod"), ("dev", s.teams.0), ("ops", s.teams.1)]
        .map(|(name, team)| manifest::namespace(name, json!({"team": team})));
    let locals = LOCALS.iter().map(|&(name, ip4, ip6)| {
        let app = if name == "db" { s.db_app } else { name };
        manifest::pod("prod", name, json!({"app": app}), NODE, (v4(ip4), v6(ip6)), &[])
    });
    let remotes = s.remotes.iter().map(|&(ns, name, app, ip4, ip6)| {
        manifest::pod(ns, name, json!({"app": app}), OTHER_NODE, (v4(ip4), v6(ip6)), &[])
    });
    let objects = namespaces.into_iter().chain(locals).chain(remotes).chain(s.policies.iter().cloned());
    let mut input = palisade::cluster::convert::objects_to_input(objects).unwrap_or_else(|errors| panic!("{errors:?}"));
    if let Some(team) = s.denied_team {
        let peers = vec![ClusterPeer::Namespaces(selector("team", team))];
        deny_web(&mut input, "deny-team", Direction::Ingress, peers, (80, 81));
    }
    input
}

/// A first packet: through `hook` on `ifindex`, from `src` to `dst`.
struct Probe {
    what: String,
    hook: Direction,
    ifindex: u32,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    port: u16,
}

/// Every local pod, both directions, against every remote address and
/// every other local pod of its family, on every port.
fn grid(env: &Env) -> Vec<Probe> {
    let locals: Vec<Local> = LOCALS.iter().map(|(name, _, _)| env.local(name)).collect();
    let mut out = Vec::new();
    for l in &locals {
        let peers = REMOTE_ADDRESSES
            .iter()
            .map(|a| addr(a))
            .chain(locals.iter().filter(|o| o.name != l.name).flat_map(|o| [o.ip4, o.ip6]));
        for peer in peers {
            let own = l.ip_like(peer);
            for (protocol, port) in PORTS {
                for (hook, src, dst) in [(Direction::Ingress, peer, own), (Direction::Egress, own, peer)] {
                    let what = format!("{hook:?} of {}: {src} -> {dst} proto {protocol} port {port}", l.name);
                    out.push(Probe { what, hook, ifindex: l.ifindex, src, dst, protocol, port });
                }
            }
        }
    }
    out
}

/// The classifiers loaded once more, on the datapath's pinned maps: they
/// judge while the datapath is in the middle of writing them.
struct Judge {
    ebpf: Ebpf,
    next_port: u16,
}

impl Judge {
    fn new(env: &Env) -> Judge {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(datapath::maps_dir(env.bpffs()))
            .map_max_entries(maps::EVENTS, 1 << 16)
            .load(datapath::OBJECT)
            .expect("loading the classifier again");
        for name in [programs::FROM_POD, programs::TO_POD] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).expect("program").try_into().expect("a classifier");
            prog.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        Judge { ebpf, next_port: 1024 }
    }

    /// Which probes pass, each as a flow no earlier packet began (the
    /// connection tracking tables emptied first).
    fn passes(&mut self, probes: &[Probe]) -> Vec<bool> {
        clear::<CtKey4>(&mut self.ebpf, maps::CONNTRACK4);
        clear::<CtKey>(&mut self.ebpf, maps::CONNTRACK6);
        probes
            .iter()
            .map(|p| {
                self.next_port = if self.next_port == u16::MAX { 1024 } else { self.next_port + 1 };
                let l4 = if p.protocol == PROTO_TCP {
                    L4::Tcp(self.next_port, p.port, TCP_SYN)
                } else {
                    L4::Udp(self.next_port, p.port)
                };
                let pkt = packet(p.src, p.dst, l4);
                let name = match p.hook {
                    Direction::Egress => programs::FROM_POD,
                    Direction::Ingress => programs::TO_POD,
                };
                let prog: &SchedClassifier = self.ebpf.program(name).expect("program").try_into().expect("classifier");
                let ctx = skb_ctx(p.ifindex);
                let opts = TestRunOptions { data_in: Some(&pkt), ctx_in: Some(&ctx), ..TestRunOptions::new() };
                let raw = prog.test_run(opts).unwrap_or_else(|e| panic!("{}: {e}", p.what)).return_value;
                verdict(raw).unwrap_or_else(|| panic!("{}: return value {raw:#x}", p.what)) == PASS
            })
            .collect()
    }
}

/// Empties one of the classifier's hash maps.
fn clear<K: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
    let mut map: BpfHashMap<_, K, CtEntry> =
        BpfHashMap::try_from(ebpf.map_mut(name).expect("the map")).expect("a hash map");
    let keys: Vec<K> = map.keys().map(|k| k.expect("a key")).collect();
    for k in &keys {
        map.remove(k).expect("removing an entry");
    }
}

/// Syncs with every write watched (`sync` does it): which probes pass
/// after each write, and after the sync.
fn watched(
    env: &mut Env,
    judge: &Rc<RefCell<Judge>>,
    probes: &Rc<Vec<Probe>>,
    sync: impl FnOnce(&mut Env),
) -> (Vec<Vec<bool>>, Vec<bool>) {
    let seen: Rc<RefCell<Vec<Vec<bool>>>> = Rc::default();
    let (j, p, s) = (judge.clone(), probes.clone(), seen.clone());
    batch::watch(Some(Box::new(move || s.borrow_mut().push(j.borrow_mut().passes(&p)))));
    sync(env);
    batch::watch(None);
    let after = judge.borrow_mut().passes(probes);
    (seen.take(), after)
}

/// A datapath enforcing a first state, the grid of probes, the second
/// classifier that judges them, and which pass in that state.
struct Watching {
    env: Env,
    probes: Rc<Vec<Probe>>,
    judge: Rc<RefCell<Judge>>,
    before: Vec<bool>,
}

/// [`Watching`] a datapath sized `sizes` enforcing `first`.
fn watching(sizes: MapSizes, first: palisade::policy::Input) -> Watching {
    let env = Env::sized_from(settings(), sizes, first);
    let probes = Rc::new(grid(&env));
    let judge = Rc::new(RefCell::new(Judge::new(&env)));
    let before = judge.borrow_mut().passes(&probes);
    Watching { env, probes, judge, before }
}

/// Fails with every probe [`opened`] lists.
fn assert_none_opened(what: &str, probes: &[Probe], before: &[bool], seen: &[Vec<bool>], after: &[bool]) {
    let failures = opened(what, probes, before, seen, after);
    assert!(failures.is_empty(), "{} packets passed between writes:\n{}", failures.len(), failures.join("\n"));
}

/// The probes that passed after some write though neither the state
/// before nor the one after passes them.
fn opened(what: &str, probes: &[Probe], before: &[bool], seen: &[Vec<bool>], after: &[bool]) -> Vec<String> {
    let mut out = Vec::new();
    for (write, passes) in seen.iter().enumerate() {
        for (i, p) in probes.iter().enumerate() {
            if passes[i] && !before[i] && !after[i] {
                out.push(format!("{what}: after write {} of {}: {} passed", write + 1, seen.len(), p.what));
            }
        }
    }
    out
}

#[test]
fn no_packet_passes_between_two_writes_that_neither_state_passes() {
    let states = states();
    let Watching { mut env, probes, judge, mut before } = watching(MapSizes::default(), input(&states[0]));
    let mut failures = Vec::new();
    for step in &states[1..] {
        let (seen, after) = watched(&mut env, &judge, &probes, |env| {
            env.apply(input(step));
        });
        assert!(!seen.is_empty(), "{}: the sync wrote nothing", step.what);
        assert!(before != after, "{}: no probe's verdict changed; the step tests nothing", step.what);
        failures.extend(opened(step.what, &probes, &before, &seen, &after));
        eprintln!(
            "{}: {} writes, {} of {} probes changed",
            step.what,
            seen.len(),
            before.iter().zip(&after).filter(|(b, a)| b != a).count(),
            probes.len()
        );
        before = after;
    }
    assert!(failures.is_empty(), "{} packets passed between writes:\n{}", failures.len(), failures.join("\n"));
}

/// The remote pods given, no NetworkPolicy, and an Admin
/// ClusterNetworkPolicy denying web's egress to `peers` on TCP 80 (web's
/// egress tiered, not isolated: a miss allows).
fn web_out(remotes: &[Remote], peers: Vec<ClusterPeer>) -> palisade::policy::Input {
    let state = State {
        what: "",
        teams: ("dev", "ops"),
        remotes: remotes.to_vec(),
        db_app: "db",
        policies: vec![],
        denied_team: None,
    };
    let mut input = input(&state);
    deny_web(&mut input, "web-out", Direction::Egress, peers, (80, 80));
    input
}

/// Adds Admin ClusterNetworkPolicy `name` on web: one Deny rule, in
/// direction `dir`, to `peers` on TCP `ports` (first, last).
fn deny_web(
    input: &mut palisade::policy::Input,
    name: &str,
    dir: Direction,
    peers: Vec<ClusterPeer>,
    (first, last): (u16, u16),
) {
    let deny = ClusterRule {
        name: "deny".into(),
        action: Action::Deny,
        peers,
        ports: vec![ClusterPort::Ports { protocol: Protocol::Tcp, first, last }],
    };
    let (ingress, egress) = match dir {
        Direction::Ingress => (vec![deny], vec![]),
        Direction::Egress => (vec![], vec![deny]),
    };
    let subject = ClusterSubject::Pods { namespaces: selector("team", "prod"), pods: selector("app", "web") };
    let p = ClusterPolicy { name: name.into(), tier: Tier::Admin, priority: 10, subject, ingress, egress };
    input.cluster_policies.insert(name.into(), Arc::new(p));
}

fn selector(k: &str, v: &str) -> Selector {
    Selector { match_labels: [(k.to_string(), v.to_string())].into(), requirements: vec![] }
}

/// Pods labelled app=`app`, in any namespace.
fn pods_of(app: &str) -> ClusterPeer {
    ClusterPeer::Pods { namespaces: Selector::default(), pods: selector("app", app) }
}

/// Map sizes whose one-port policy map holds `input`'s entries and no more.
fn policy_ports_for(input: &palisade::policy::Input) -> MapSizes {
    let ports = compile(input, &node()).policy.keys().filter(|k| k.is_port()).count();
    assert!(ports > 0, "entries of one port");
    MapSizes { policy_ports: ports as u32, ..MapSizes::default() }
}

/// A class whose new denies do not fit is held closed before any
/// address moves. web's egress is tiered and not isolated (a miss
/// allows); its deny to the tool's pods becomes one to 10.70.0.0/16 and
/// fd00:70::/32 as the tool's pod goes. The new entries do not fit beside
/// the old one, and the tool's address, gone, is judged by that CIDR, for
/// which web holds no entry.
#[test]
fn a_class_short_of_its_denies_is_held_before_any_address_moves() {
    let nets = ClusterPeer::Networks(vec!["10.70.0.0/16".parse().expect("net"), "fd00:70::/32".parse().expect("net")]);
    let (old, new) = (web_out(&[CLIENT, TOOL], vec![pods_of("tool")]), web_out(&[CLIENT], vec![nets]));
    let sizes = policy_ports_for(&old);
    let Watching { mut env, probes, judge, before } = watching(sizes, old);
    let (seen, after) = watched(&mut env, &judge, &probes, |env| {
        let report = env.try_apply(&new);
        assert!(report.errors.iter().any(|e| e.contains("policy map full")), "{:?}", report.errors);
        let web = report.endpoints.iter().find(|e| e.name == "web").expect("web");
        assert!(matches!(web.state, palisade::state::Enforcement::HeldClosed(_)), "{:?}", web.state);
    });
    let to_tool = probes.iter().position(|p| p.what == "Egress of web: 10.70.1.10 -> 10.70.3.5 proto 6 port 80");
    let to_tool = to_tool.expect("the probe to the tool's address");
    assert!(!before[to_tool] && !after[to_tool], "denied before and after: {} / {}", before[to_tool], after[to_tool]);
    assert_none_opened("denies short", &probes, &before, &seen, &after);
}

/// A hold alone is a change: a class held because its new denies do not
/// fit has its tracked flows judged again (the revision bumped), and they
/// drop. Nothing else changes here: web's egress is tiered already, and
/// no address moves.
#[test]
fn a_hold_alone_cuts_tracked_flows() {
    let old = web_out(&[CLIENT, TOOL], vec![pods_of("tool")]);
    let new = web_out(&[CLIENT, TOOL], vec![pods_of("tool"), pods_of("client")]);
    let mut env = Env::sized_from(settings(), policy_ports_for(&old), old);
    let client = addr(CLIENT.3);
    let sport = env.fresh();
    assert_eq!(env.egress("web", client, L4::Tcp(sport, 80, TCP_SYN)), PASS, "allowed before");
    assert_eq!(env.egress("web", client, L4::Tcp(sport, 80, TCP_ACK)), PASS, "tracked");
    let revision = env.dp.revision();
    let report = env.try_apply(&new);
    assert!(report.errors.iter().any(|e| e.contains("policy map full")), "{:?}", report.errors);
    assert_ne!(env.dp.revision(), revision, "a hold alone bumps the revision");
    assert_eq!(env.egress("web", client, L4::Tcp(sport, 80, TCP_ACK)), DROP, "the tracked flow is cut");
}

/// The start's namespaces and policies, with these remote pods, and web
/// admitting 10.70.0.0/16 and fd00:70::/32 but `except` on TCP 81.
fn with_remotes(remotes: &[Remote], except: &[(&str, &str)]) -> palisade::policy::Input {
    let web = vec![ingress_rule(pods("client"), 80), ingress_rule(team("ops"), 81), cidrs_but(except)];
    let state = State {
        what: "",
        teams: ("dev", "ops"),
        remotes: remotes.to_vec(),
        db_app: "db",
        policies: policies(web),
        denied_team: None,
    };
    input(&state)
}

/// Map sizes whose address maps hold `input`'s addresses and CIDRs and
/// no more.
fn addresses_for(input: &palisade::policy::Input) -> MapSizes {
    let ips = compile(input, &node()).ips;
    let hosts = ips.keys().filter(|k| k.is_address()).count() as u32;
    MapSizes { hosts, ips: ips.len() as u32 - hosts, ..MapSizes::default() }
}

/// Every endpoint of the report enforced (else: every one held closed).
fn every_pod(report: &datapath::SyncReport, enforced: bool) -> bool {
    !report.endpoints.is_empty()
        && report.endpoints.iter().all(|e| {
            let held = matches!(e.state, palisade::state::Enforcement::HeldClosed(_));
            held != enforced
        })
}

/// New CIDRs that fit only once the stale ones are gone: every pod is
/// held while they go, the new ones go in on the retry, and the sync ends
/// with every pod enforced. The CIDR map holds the start's and no more;
/// web's except of the tool's net in halves becomes one of the whole: with
/// the halves gone and the whole not yet in, an address of the tool's net
/// would pass by the broader CIDR.
#[test]
fn new_cidrs_make_room_with_every_pod_held() {
    let halves = &HALVES_AND_CLIENTS_NET[..2];
    let old = with_remotes(&[CLIENT, TOOL, MON], halves);
    let new = with_remotes(&[CLIENT, TOOL, MON], &TOOLS_NET);
    let Watching { mut env, probes, judge, before } = watching(addresses_for(&old), old);
    let (seen, after) = watched(&mut env, &judge, &probes, |env| {
        let report = env.try_apply(&new);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(every_pod(&report, true), "{:?}", report.endpoints);
    });
    assert!(seen.iter().any(|passes| !passes.contains(&true)), "no write held every pod: room first did not run");
    assert_none_opened("room first", &probes, &before, &seen, &after);
    assert_eq!(before, after, "the same verdicts, the except written another way");
}

/// New addresses that do not fit even with the stale ones gone: every
/// pod is held closed and the sync says why; nothing passes meanwhile.
/// Once the addresses fit again, the next sync enforces every pod as
/// before.
#[test]
fn addresses_that_do_not_fit_hold_every_pod_until_they_do() {
    let old = with_remotes(&[CLIENT, TOOL, MON], &TOOLS_NET);
    let more = with_remotes(&[CLIENT, TOOL, MON, NEWCOMER], &TOOLS_NET);
    let Watching { mut env, probes, judge, before } = watching(addresses_for(&old), old.clone());
    let (seen, after) = watched(&mut env, &judge, &probes, |env| {
        let report = env.try_apply(&more);
        assert!(report.errors.iter().any(|e| e.contains("address maps full")), "{:?}", report.errors);
        assert!(every_pod(&report, false), "{:?}", report.endpoints);
    });
    assert!(!after.contains(&true), "a probe passed with every pod held");
    assert_none_opened("addresses short", &probes, &before, &seen, &after);
    let report = env.try_apply(&old);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(every_pod(&report, true), "{:?}", report.endpoints);
    assert_eq!(judge.borrow_mut().passes(&probes), before, "the verdicts of the start, once the addresses fit");
}
