//! 1. Verdicts agree with the compiler.

use crate::fixture::*;

const GRID_PEERS: [&str; 30] = [
    // Pods (remote and local), the node, ipBlock cells and excepts, world.
    "10.70.2.5",
    "10.70.3.5",
    "10.70.4.5",
    "10.70.4.6",
    "10.70.1.10",
    "10.70.1.20",
    "10.70.1.30",
    HOST_V4,
    "192.168.1.1",
    "192.168.10.5",
    "10.1.2.3",
    "10.70.3.99",
    "172.16.5.5",
    "8.8.8.8",
    "fd00:70:0:2::5",
    "fd00:70:0:3::5",
    "fd00:70:0:4::5",
    "fd00:70:0:4::6",
    "fd00:70:0:1::10",
    "fd00:70:0:1::20",
    "fd00:70:0:1::30",
    HOST_V6,
    "2001:db8::1",
    "2001:db8:bad::1",
    "2001:db8:bad:1::1",
    "2001:db9::1",
    "fd00:99::1",
    "fd00:abcd::1",
    "fd00:70:0:3::99",
    "2606:4700::1111",
];

const GRID_PORTS: [u16; 20] =
    [1, 53, 79, 80, 81, 443, 2999, 3000, 3005, 3010, 3011, 5432, 7999, 8000, 8050, 8080, 8100, 8101, 9000, 65535];

/// Runs the grid (every local pod, both directions, every peer and port,
/// TCP, UDP, SCTP and a ping) through the kernel and the compiler: how many
/// packets passed and dropped, and every disagreement.
fn grid(env: &mut Env) -> (usize, usize, Vec<String>) {
    let mut failures = Vec::new();
    let (mut passed, mut dropped) = (0usize, 0usize);
    let started = Instant::now();
    for local in LOCALS.map(|l| l.0) {
        for dir in [Direction::Ingress, Direction::Egress] {
            for peer in GRID_PEERS.map(addr) {
                let mut flows = Vec::new();
                for port in GRID_PORTS {
                    flows.push(L4::Tcp(env.fresh(), port, TCP_SYN));
                    flows.push(L4::Udp(env.fresh(), port));
                    flows.push(L4::Sctp(env.fresh(), port));
                }
                flows.push(L4::Echo(env.fresh()));
                for l4 in flows {
                    let got = match dir {
                        Direction::Ingress => env.ingress(local, peer, l4),
                        Direction::Egress => env.egress(local, peer, l4),
                    };
                    let want = env.decide(local, dir, peer, l4.protocol(peer.is_ipv6()), l4.port());
                    let want = if want.allowed { PASS } else { DROP };
                    if got == PASS {
                        passed += 1;
                    } else {
                        dropped += 1;
                    }
                    if got != want {
                        failures
                            .push(format!("{local} {dir:?} peer {peer} {l4:?}: kernel {:?}, compiler {:?}", got, want));
                    }
                }
            }
        }
    }
    eprintln!("grid: {passed} passed, {dropped} dropped in {:?}", started.elapsed());
    (passed, dropped, failures)
}

#[test]
fn verdicts_agree_with_the_compiler() {
    let mut env = Env::new(settings());
    let (passed, dropped, failures) = grid(&mut env);
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    // The grid exercises both outcomes in quantity, so agreement means something.
    assert!(passed > 500 && dropped > 500, "{passed} passed, {dropped} dropped");
    // Entries of one port are in the hash map, the rest (ranges, rules
    // without ports) in the trie: both in use, neither holding the other's.
    let (trie, ports) = env.policy_maps();
    let full = palisade_common::POLICY_PREFIX_FULL;
    assert!(ports.len() > 10 && trie.len() > 10, "{} one-port entries, {} others", ports.len(), trie.len());
    assert!(trie.iter().all(|(len, ..)| *len < full), "the trie holds no full key");
    // And a few hand-checked rows, so the compiler and kernel cannot agree on nonsense.
    let client = addr("10.70.2.5");
    for (port, want) in [(80, PASS), (81, DROP), (7999, DROP), (8000, PASS), (8100, PASS), (8101, DROP)] {
        let l4 = L4::Tcp(env.fresh(), port, TCP_SYN);
        assert_eq!(env.ingress("web", client, l4), want, "client -> web:{port}");
    }
    let l4 = L4::Tcp(env.fresh(), 443, TCP_SYN);
    assert_eq!(env.ingress("web", addr("192.168.1.1"), l4), PASS);
    let l4 = L4::Tcp(env.fresh(), 443, TCP_SYN);
    assert_eq!(env.ingress("web", addr("192.168.10.5"), l4), DROP, "the except carves 192.168.10.0/24 out");
    let l4 = L4::Udp(env.fresh(), 53);
    assert_eq!(env.ingress("web", addr("fd00:70:0:4::6"), l4), PASS, "namespaceSelector team=ops");
    let l4 = L4::Tcp(env.fresh(), 8080, TCP_SYN);
    assert_eq!(env.ingress("web", addr("10.70.3.5"), l4), PASS, "named port http-alt");
    let l4 = L4::Echo(env.fresh());
    assert_eq!(env.ingress("db", addr("172.16.5.5"), l4), PASS, "rule without ports admits ICMP");
    let l4 = L4::Echo(env.fresh());
    assert_eq!(env.ingress("db", addr("10.70.1.10"), l4), DROP);
}

/// A namespace-wide policy's entries are held once, by the namespace's
/// root, a class no pod has here, which every local pod's class takes as
/// its parent: the kernel judges each pod by its own entries, then the
/// root's, as the compiler does, and the namespace-wide rule admits its
/// flows to and from every pod.
#[test]
fn a_namespaces_root_without_members_judges_its_pods() {
    let mut env = Env::new(settings());
    env.apply(crate::cluster::input_namespace_wide());
    let locals = LOCALS.map(|l| env.local(l.0));
    let root = locals[0].parent;
    assert!(root != 0 && locals.iter().all(|l| l.parent == root && l.class != root), "{locals:?}");
    let entries = env.policy_entries();
    let of = |class: u32| entries.iter().filter(|(_, k, _)| u32::from_be_bytes(k.local) == class).count();
    // The dev namespace (by its number: every pod of it) on two TCP
    // ports, and 8.8.8.8 on UDP 1.
    assert_eq!(of(root), 3, "the root holds the namespace-wide rules' entries");
    let at_2999 = entries.iter().filter(|(_, k, _)| k.port == 2999u16.to_be_bytes());
    let holders: Vec<(u32, u8)> = at_2999.map(|(_, k, _)| (u32::from_be_bytes(k.local), k.direction)).collect();
    let by_namespace = palisade_common::DIR_INGRESS | palisade_common::DIR_BY_NAMESPACE;
    assert_eq!(holders, [(root, by_namespace)], "the root's alone, no pod's class's, keyed by namespace");
    // The root's entries are all of one port and a peer: every pod's
    // lookups of the root skip the trie and the wildcard peer, which the
    // grid checks against the compiler's whole lookups.
    use palisade_common::{EP_PARENT_NO_ANY, EP_PARENT_NO_SHORT};
    let skips = EP_PARENT_NO_SHORT | EP_PARENT_NO_ANY;
    assert!(locals.iter().all(|l| l.flags & skips == skips), "{locals:?}");
    let (passed, dropped, failures) = grid(&mut env);
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    assert!(passed > 500 && dropped > 500, "{passed} passed, {dropped} dropped");
    for local in LOCALS.map(|l| l.0) {
        for port in [2999, 65535] {
            let l4 = L4::Tcp(env.fresh(), port, TCP_SYN);
            assert_eq!(env.ingress(local, addr("10.70.3.5"), l4), PASS, "dev -> {local}:{port}, by the root");
        }
        let l4 = L4::Tcp(env.fresh(), 2999, TCP_SYN);
        assert_eq!(env.ingress(local, addr("10.70.4.5"), l4), DROP, "ops -> {local}:2999");
        let l4 = L4::Udp(env.fresh(), 1);
        assert_eq!(env.egress(local, addr("8.8.8.8"), l4), PASS, "{local} -> 8.8.8.8, by the root");
        let l4 = L4::Udp(env.fresh(), 1);
        assert_eq!(env.egress(local, addr("8.8.4.4"), l4), DROP, "{local} -> 8.8.4.4");
    }
}

/// A class with a parent (db relabelled as a canary web pod, with one
/// canary policy more) holds the canary policy's entries alone, and the
/// kernel judges it by them, then by web's class's: every packet passes or
/// drops as it does for web, but the canary's egress to ops on TCP 9000.
#[test]
fn a_class_with_a_parent_is_judged_by_its_own_entries_then_the_parents() {
    let mut env = Env::new(settings());
    env.apply(crate::cluster::input_canary());
    let (web, canary) = (env.local("web"), env.local("db"));
    assert_eq!((canary.parent, web.parent), (web.class, 0), "web's class is the canary's parent");
    let entries = env.policy_entries();
    let of = |class: u32| entries.iter().filter(|(_, k, _)| u32::from_be_bytes(k.local) == class).count();
    assert!(of(web.class) > 20, "web's class holds web's entries ({})", of(web.class));
    // The canary rule to the ops namespace (by its number: every pod of
    // it), and the node's allowance to its ingress (the node's two
    // addresses).
    assert_eq!(of(canary.class), 3, "the canary's class holds its one rule's entries");

    let (mut same, mut own, mut passed) = (0, 0, 0);
    let mut failures = Vec::new();
    // Local pods' own addresses aside: a pod reaching itself is not a peer.
    let peers = GRID_PEERS
        .map(addr)
        .into_iter()
        .filter(|p| !p.to_string().starts_with("10.70.1.") && !p.to_string().starts_with("fd00:70:0:1:"));
    for peer in peers {
        for dir in [Direction::Ingress, Direction::Egress] {
            for port in GRID_PORTS {
                for tcp in [true, false] {
                    let mut judge = |local: &str| {
                        let l4 = if tcp { L4::Tcp(env.fresh(), port, TCP_SYN) } else { L4::Udp(env.fresh(), port) };
                        match dir {
                            Direction::Ingress => env.ingress(local, peer, l4),
                            Direction::Egress => env.egress(local, peer, l4),
                        }
                    };
                    let (w, c) = (judge("web"), judge("db"));
                    let ops = peer.to_string().starts_with("10.70.4.") || peer.to_string().starts_with("fd00:70:0:4:");
                    if dir == Direction::Egress && ops && tcp && port == 9000 {
                        own += 1;
                        if (w, c) != (DROP, PASS) {
                            failures.push(format!("canary rule, {peer} TCP {port}: web {w:?}, canary {c:?}"));
                        }
                    } else {
                        same += 1;
                        passed += usize::from(c == PASS);
                        if w != c {
                            failures.push(format!("{dir:?} {peer} {port} tcp={tcp}: web {w:?}, canary {c:?}"));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} differ:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(own, 4, "the canary's own flows");
    assert!(passed > 10 && passed < same, "{passed} of {same} flows pass by web's entries");
}
