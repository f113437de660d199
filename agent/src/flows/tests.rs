use super::*;
use crate::events::record::{Peer, VerdictEvent};
use crate::events::{Verdict, View};
use crate::policy::Direction;
use crate::policy::model::{NamedPort, Pod, Protocol, Workload};
use std::sync::Arc;
use std::time::Duration;

fn wl(kind: &str, name: &str) -> Workload {
    Workload { kind: kind.into(), name: name.into() }
}

fn key(ns: &str, w: &str, dir: Direction, peer: &str, port: u16) -> FlowKey {
    FlowKey {
        namespace: ns.into(),
        workload: wl("Deployment", w),
        direction: dir,
        peer: Remote::Pod { namespace: ns.into(), workload: wl("Deployment", peer) },
        protocol: "TCP".into(),
        port: Some(port),
        port_name: None,
        verdict: Seen::Allowed,
    }
}

fn settings(capacity: usize) -> Settings {
    Settings { capacity, retention: Duration::from_secs(3600) }
}

#[test]
fn counts_first_and_last_seen_add_up_per_key() {
    let r = Record::new("n1", settings(10), 1000);
    let k = key("shop", "frontend", Direction::Egress, "api", 80);
    r.add(k.clone(), 1, 2000);
    r.add(k.clone(), 3, 1500);
    r.add(key("shop", "api", Direction::Ingress, "frontend", 80), 1, 2500);
    let s = r.snapshot(3000);
    assert_eq!(s.flows.len(), 2);
    let f = s.flows.iter().find(|f| f.key == k).unwrap();
    assert_eq!(f.stats, Stats { count: 4, first_seen_ms: 1500, last_seen_ms: 2000 });
    assert_eq!((s.observing_since_ms, s.node.as_str()), (1000, "n1"));
}

#[test]
fn a_full_record_drops_the_least_recently_seen_and_counts_them() {
    let r = Record::new("n1", settings(100), 0);
    for i in 0..100u16 {
        r.add(key("a", "w", Direction::Egress, "p", i), 1, 1000 + u64::from(i));
    }
    // Key 0 is seen again: now the freshest.
    r.add(key("a", "w", Direction::Egress, "p", 0), 1, 5000);
    assert_eq!((r.len(), r.losses().0), (100, 0));
    r.add(key("a", "w", Direction::Egress, "p", 1000), 1, 6000);
    assert_eq!(r.len(), 100, "one batch (1% of the capacity) made room");
    assert_eq!(r.losses().0, 1);
    let ports: Vec<u16> = r.snapshot(0).flows.iter().filter_map(|f| f.key.port).collect();
    assert!(ports.contains(&0) && ports.contains(&1000) && !ports.contains(&1), "{ports:?}");
}

#[test]
fn retention_forgets_old_keys_and_narrows_the_window() {
    let r = Record::new("n1", settings(10), 0);
    r.add(key("a", "w", Direction::Egress, "p", 1), 1, 1000);
    r.add(key("a", "w", Direction::Egress, "p", 2), 1, 3_600_000 + 5000);
    r.expire(3_600_000 + 2000);
    assert_eq!(r.len(), 1);
    assert_eq!(r.losses().1, 1);
    assert_eq!(r.snapshot(0).observing_since_ms, 2000);
}

#[test]
fn the_record_survives_a_restart_through_its_file() {
    let dir = std::env::temp_dir().join(format!("palisade-flows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = Record::new("n1", settings(10), 100);
    r.add(key("a", "w", Direction::Egress, "p", 1), 2, 1000);
    assert!(r.take_dirty());
    save(&dir, &r.snapshot(2000)).unwrap();
    let back = load(&dir).unwrap().unwrap();
    let r2 = Record::restore("n1", settings(10), back, 2500);
    assert_eq!(r2.snapshot(2000), r.snapshot(2000));
    assert!(!dir.join("flows.tmp").exists());
    assert_eq!(load(&dir.join("nothing")).unwrap(), None);
    std::fs::write(dir.join("flows.json"), "{").unwrap();
    assert!(load(&dir).is_err(), "a broken file is an error the agent reports, then starts afresh");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn merging_two_nodes_equals_one_node_that_saw_everything() {
    // frontend (node 1) -> api (node 2): egress on node 1, ingress on node 2.
    let eg = key("shop", "frontend", Direction::Egress, "api", 80);
    let ing = key("shop", "api", Direction::Ingress, "frontend", 80);
    let one = Record::new("solo", settings(10), 0);
    one.add(eg.clone(), 1, 10);
    one.add(ing.clone(), 1, 11);
    let (n1, n2) = (Record::new("n1", settings(10), 0), Record::new("n2", settings(10), 0));
    n1.add(eg.clone(), 1, 10);
    n2.add(ing.clone(), 1, 11);
    let (s1, s2, solo) = (n1.snapshot(20), n2.snapshot(20), one.snapshot(20));
    assert_eq!(merge([&s1, &s2]).flows, merge([&solo]).flows);
    // The same node's record twice (a file and the live agent) counts once.
    assert_eq!(merge([&s1, &s2, &s1]).flows, merge([&solo]).flows);
    // A workload with pods on both nodes: the nodes' packets add up.
    n2.add(eg.clone(), 2, 30);
    let m = merge([&n1.snapshot(40), &n2.snapshot(40)]);
    assert_eq!(m.flows[&eg], Stats { count: 3, first_seen_ms: 10, last_seen_ms: 30 });
    assert_eq!(m.nodes, vec!["n1".to_string(), "n2".to_string()]);
}

fn pod(ns: &str, name: &str, ip: &str, workload: Workload, ports: Vec<NamedPort>) -> Arc<Pod> {
    Arc::new(Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: Default::default(),
        node_name: None,
        host_network: false,
        ips: vec![ip.parse().unwrap()],
        ports,
        terminated: false,
        workload,
    })
}

fn peer(ip: &str, port: Option<u16>, kind: &str, ns: Option<&str>, pod: Option<&str>) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        port,
        kind: kind.into(),
        namespace: ns.map(String::from),
        pod: pod.map(String::from),
        cidr: None,
    }
}

fn event(direction: Direction, source: Peer, destination: Peer, reason: &str) -> VerdictEvent {
    VerdictEvent {
        time: "2026-11-30T10:00:00.000Z".into(),
        verdict: Verdict::Allowed,
        direction,
        protocol: "TCP".into(),
        source,
        destination,
        reason: reason.into(),
        policy: None,
        isolated_by: vec![],
        count: 1,
        tcp_flags: None,
        redecided: false,
        fragment: false,
        ifindex: 7,
    }
}

#[test]
fn events_are_keyed_by_workload_with_the_destination_port_name() {
    let mut view = View::default();
    let http = NamedPort { name: "http".into(), port: 8080, protocol: Protocol::Tcp };
    for p in [
        pod("shop", "frontend-5d8f-abcde", "10.0.0.1", wl("Deployment", "frontend"), vec![]),
        pod("shop", "api-0", "10.0.0.2", wl("StatefulSet", "api"), vec![http]),
    ] {
        view.catalog.pods_by_ip.insert(p.ips[0], p);
    }
    let fe = peer("10.0.0.1", Some(40000), "pod", Some("shop"), Some("frontend-5d8f-abcde"));
    let api = peer("10.0.0.2", Some(8080), "pod", Some("shop"), Some("api-0"));
    let k = key::of_event(&event(Direction::Egress, fe.clone(), api.clone(), "not-isolated"), &view).unwrap();
    assert_eq!(k.workload, wl("Deployment", "frontend"));
    assert_eq!(k.peer, Remote::Pod { namespace: "shop".into(), workload: wl("StatefulSet", "api") });
    assert_eq!((k.port, k.port_name.as_deref(), k.verdict), (Some(8080), Some("http"), Seen::Allowed));
    let k = key::of_event(&event(Direction::Ingress, fe.clone(), api.clone(), "rule"), &view).unwrap();
    assert_eq!((k.workload.name.as_str(), k.port_name.as_deref()), ("api", Some("http")));
    let world = peer("203.0.113.7", Some(443), "world", None, None);
    let k = key::of_event(&event(Direction::Egress, fe.clone(), world, "not-isolated"), &view).unwrap();
    assert_eq!((k.peer, k.port_name), (Remote::External { ip: "203.0.113.7".parse().unwrap() }, None));
    let node = peer("172.18.0.2", Some(50000), "host", None, None);
    let k = key::of_event(&event(Direction::Ingress, node, api.clone(), "rule"), &view).unwrap();
    assert_eq!(k.peer, Remote::Node { ip: "172.18.0.2".parse().unwrap() });
    assert_eq!(key::of_event(&event(Direction::Egress, fe, api, "spoofed-source"), &view), None);
}

#[test]
fn the_export_format_reads_back() {
    let r = Record::new("n1", settings(10), 0);
    r.add(key("a", "w", Direction::Egress, "p", 1), 1, 1000);
    let s = r.snapshot(2000);
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("\"workload\":{\"kind\":\"Deployment\",\"name\":\"w\"}"), "{text}");
    assert!(text.contains("\"peer\":{\"kind\":\"pod\""), "{text}");
    assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
}
