//! Between one map write and the next: the kernel as a packet finds it in
//! the middle of a sync. A chain of cluster states is synced one after
//! another; each sync writes every entry on its own (`batch::watch`), and
//! after each write a second copy of the classifier, on the same pinned
//! maps, judges a grid of first packets. No packet may pass there that
//! neither the state before nor the state after passes: the order of
//! `Datapath::sync` (DESIGN.md, Sync order) promises it.

use crate::fixture::*;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use palisade::datapath::{self, MapSizes, batch};
use palisade_common::{PROTO_TCP, PROTO_UDP, maps, programs};
use palisade_kit::manifest;
use palisade_kit::tc::skb_ctx;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::rc::Rc;

/// A remote pod: (namespace, name, app label, IPv4, IPv6).
type Remote = (&'static str, &'static str, &'static str, &'static str, &'static str);

const CLIENT: Remote = ("prod", "client", "client", "10.70.2.5", "fd00:70:0:2::5");
const TOOL: Remote = ("dev", "tool", "tool", "10.70.3.5", "fd00:70:0:3::5");
const MON: Remote = ("ops", "mon", "mon", "10.70.4.5", "fd00:70:0:4::5");
/// A dev pod on the address MON had.
const TOOL_ON_MONS: Remote = ("dev", "tool2", "tool", "10.70.4.5", "fd00:70:0:4::5");
const NEWCOMER: Remote = ("prod", "new", "client", "10.70.2.9", "fd00:70:0:2::9");

/// Remote addresses of the grid: every remote pod's, one outside.
const REMOTE_ADDRESSES: [&str; 10] = [
    "10.70.2.5",
    "10.70.3.5",
    "10.70.4.5",
    "10.70.2.9",
    "8.8.8.8",
    "fd00:70:0:2::5",
    "fd00:70:0:3::5",
    "fd00:70:0:4::5",
    "fd00:70:0:2::9",
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
    vec![
        State {
            what: "the start",
            teams: ("dev", "ops"),
            remotes: vec![CLIENT, TOOL, MON],
            db_app: "db",
            policies: policies(base_web.clone()),
        },
        State {
            what: "a pod deleted while a rule comes that admits its namespace",
            teams: ("dev", "ops"),
            remotes: vec![CLIENT, MON],
            db_app: "db",
            policies: policies(with_dev()),
        },
        State {
            what: "an address leaving one namespace for another",
            teams: ("dev", "ops"),
            remotes: vec![CLIENT, TOOL_ON_MONS],
            db_app: "db",
            policies: policies(with_dev()),
        },
        State {
            what: "two namespaces swapping their labels",
            teams: ("ops", "dev"),
            remotes: vec![CLIENT, TOOL_ON_MONS, TOOL],
            db_app: "db",
            policies: policies(with_dev()),
        },
        State {
            what: "a rule's peer swapped",
            teams: ("ops", "dev"),
            remotes: vec![CLIENT, TOOL_ON_MONS, TOOL],
            db_app: "db",
            policies: policies(vec![ingress_rule(pods("tool"), 80), ingress_rule(team("ops"), 81)]),
        },
        State {
            what: "a local pod taking another's labels, a pod added",
            teams: ("ops", "dev"),
            remotes: vec![CLIENT, TOOL_ON_MONS, TOOL, NEWCOMER],
            db_app: "web",
            policies: policies(vec![ingress_rule(pods("tool"), 80), ingress_rule(team("ops"), 81)]),
        },
        State {
            what: "all of it back at once",
            teams: ("dev", "ops"),
            remotes: vec![CLIENT, TOOL, MON],
            db_app: "db",
            policies: policies(base_web),
        },
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
    palisade::cluster::convert::objects_to_input(objects).unwrap_or_else(|errors| panic!("{errors:?}"))
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

    /// Which probes pass, each as a flow no earlier packet began.
    fn passes(&mut self, probes: &[Probe]) -> Vec<bool> {
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

#[test]
fn no_packet_passes_between_two_writes_that_neither_state_passes() {
    let states = states();
    let mut env = Env::sized_from(settings(), MapSizes::default(), input(&states[0]));
    let probes = Rc::new(grid(&env));
    let judge = Rc::new(RefCell::new(Judge::new(&env)));
    let mut before = judge.borrow_mut().passes(&probes);
    let mut failures = Vec::new();
    for step in &states[1..] {
        let seen: Rc<RefCell<Vec<Vec<bool>>>> = Rc::default();
        let (j, p, s) = (judge.clone(), probes.clone(), seen.clone());
        batch::watch(Some(Box::new(move || s.borrow_mut().push(j.borrow_mut().passes(&p)))));
        env.apply(input(step));
        batch::watch(None);
        let after = judge.borrow_mut().passes(&probes);
        let seen = seen.take();
        assert!(!seen.is_empty(), "{}: the sync wrote nothing", step.what);
        assert!(before != after, "{}: no probe's verdict changed; the step tests nothing", step.what);
        for (write, passes) in seen.iter().enumerate() {
            for (i, p) in probes.iter().enumerate() {
                if passes[i] && !before[i] && !after[i] {
                    failures.push(format!(
                        "{}: after write {} of {}: {} passed",
                        step.what,
                        write + 1,
                        seen.len(),
                        p.what
                    ));
                }
            }
        }
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
