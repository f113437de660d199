use super::*;
use crate::flows::{Flow, Snapshot, merge};
use crate::policy::Direction;
use crate::policy::model::Workload;

/// frontend (2 pods, shop) -> api (shop, declares http 8080) -> db (data,
/// declares pg 5432); everyone asks coredns (kube-system); api calls an
/// external host; the external host calls frontend; batch (shop) has no
/// flows.
fn shop() -> Input {
    let pod = |ns: &str, name: &str, ip: &str, node: &str, labels: &str, owner: (&str, &str), ports: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}, ownerReferences: [{{apiVersion: apps/v1, kind: {}, name: {}, uid: u1, controller: true}}]}}\nspec: {{nodeName: {node}, containers: [{{name: c, ports: [{ports}]}}]}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n",
            owner.0, owner.1
        )
    };
    let mut m = String::new();
    for ns in ["shop", "data", "kube-system"] {
        m.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n"));
    }
    m += &pod(
        "shop",
        "frontend-7d9f8-aaaaa",
        "10.0.0.1",
        "n1",
        "app: frontend, pod-template-hash: 7d9f8",
        ("ReplicaSet", "frontend-7d9f8"),
        "",
    );
    m += &pod(
        "shop",
        "frontend-7d9f8-bbbbb",
        "10.0.0.2",
        "n2",
        "app: frontend, pod-template-hash: 7d9f8",
        ("ReplicaSet", "frontend-7d9f8"),
        "",
    );
    m += &pod(
        "shop",
        "api-5c6d7-ccccc",
        "10.0.0.3",
        "n2",
        "app: api, pod-template-hash: 5c6d7",
        ("ReplicaSet", "api-5c6d7"),
        "{name: http, containerPort: 8080}",
    );
    m += &pod(
        "shop",
        "batch-28000000-xxxxx",
        "10.0.0.6",
        "n1",
        "app: batch, job-name: batch-28000000",
        ("Job", "batch-28000000"),
        "",
    );
    m += &pod(
        "data",
        "db-0",
        "10.0.0.4",
        "n1",
        "app: db, controller-revision-hash: db-6f7, statefulset.kubernetes.io/pod-name: db-0",
        ("StatefulSet", "db"),
        "{name: pg, containerPort: 5432}",
    );
    m += &pod(
        "kube-system",
        "coredns-6b8c9-ddddd",
        "10.0.0.5",
        "n2",
        "k8s-app: kube-dns, pod-template-hash: 6b8c9",
        ("ReplicaSet", "coredns-6b8c9"),
        "{name: dns, containerPort: 53, protocol: UDP}",
    );
    crate::cluster::convert::manifests_to_input(&m).expect("valid shop")
}

fn wl(kind: &str, name: &str) -> Workload {
    Workload { kind: kind.into(), name: name.into() }
}

const HOUR: u64 = 3_600_000;
const T0: u64 = 1_790_000_000_000;

/// The shop's pattern as each node's record holds it: (node, key).
fn pattern() -> Vec<(&'static str, FlowKey)> {
    let fe = ("shop", wl("Deployment", "frontend"));
    let api = ("shop", wl("Deployment", "api"));
    let db = ("data", wl("StatefulSet", "db"));
    let dns = ("kube-system", wl("Deployment", "coredns"));
    let k = |local: &(&str, Workload), dir, peer: Remote, proto: &str, port: u16, name: Option<&str>| FlowKey {
        namespace: local.0.into(),
        workload: local.1.clone(),
        direction: dir,
        peer,
        protocol: proto.into(),
        port: Some(port),
        port_name: name.map(String::from),
        verdict: Seen::Allowed,
    };
    let pod = |w: &(&str, Workload)| Remote::Pod { namespace: w.0.into(), workload: w.1.clone() };
    let ext = Remote::External { ip: "203.0.113.7".parse().unwrap() };
    use Direction::{Egress, Ingress};
    let mut out = vec![
        // frontend pods on n1 and n2, api on n2, db on n1, coredns on n2.
        ("n1", k(&fe, Egress, pod(&api), "TCP", 8080, Some("http"))),
        ("n2", k(&fe, Egress, pod(&api), "TCP", 8080, Some("http"))),
        ("n2", k(&api, Ingress, pod(&fe), "TCP", 8080, Some("http"))),
        ("n2", k(&api, Egress, pod(&db), "TCP", 5432, Some("pg"))),
        ("n1", k(&db, Ingress, pod(&api), "TCP", 5432, Some("pg"))),
        ("n2", k(&api, Egress, ext.clone(), "TCP", 443, None)),
        ("n1", k(&fe, Ingress, ext, "TCP", 8080, None)),
        ("n1", k(&fe, Ingress, Remote::Node { ip: "172.18.0.2".parse().unwrap() }, "TCP", 8080, None)),
    ];
    for (node, w) in [("n1", &fe), ("n2", &fe), ("n2", &api), ("n1", &db)] {
        for proto in ["UDP", "TCP"] {
            out.push((node, k(w, Egress, pod(&dns), proto, 53, (proto == "UDP").then_some("dns"))));
            out.push(("n2", k(&dns, Ingress, pod(w), proto, 53, (proto == "UDP").then_some("dns"))));
        }
    }
    out
}

/// A record built the way the agent builds it: each key seen 3 times
/// between T0 and T0 + 47h, per node that saw it.
fn record(node: &str, keys: &[&FlowKey], observing: u64) -> Snapshot {
    let r = crate::flows::Record::new(node, crate::flows::Settings::default(), observing);
    for k in keys {
        r.add((*k).clone(), 2, T0);
        r.add((*k).clone(), 1, T0 + 47 * HOUR);
    }
    r.snapshot(T0 + 48 * HOUR)
}

fn by_node(node: &str) -> Snapshot {
    let p = pattern();
    let keys: Vec<&FlowKey> = p.iter().filter(|(n, _)| *n == node).map(|(_, k)| k).collect();
    record(node, &keys, T0)
}

fn yaml(a: &Advice) -> String {
    manifest::yaml(&cli::summary(&a.report), &a.docs)
}

#[test]
fn the_advice_allows_exactly_what_was_seen_and_says_so() {
    let input = shop();
    let merged = merge(&[by_node("n1"), by_node("n2")]);
    let a = advise(&input, &merged, &Options::default()).unwrap();
    let r = &a.report;
    assert_eq!((r.allowed, r.observed), (19, 19), "{:#?}", r.denied);
    assert!(r.denied.is_empty());
    let text = yaml(&a);
    assert!(text.contains("# 19 of 19 observed flows allowed"), "{text}");
    for want in [
        "name: \"default-deny-all\"",
        "name: \"allow-dns\"",
        "name: \"allow-deployment-frontend\"",
        "name: \"allow-statefulset-db\"",
        "cidr: \"203.0.113.7/32\"",
        "port: \"http\"",
        "port: \"pg\"",
        "kubernetes.io/metadata.name: \"data\"",
        "# TCP/http: seen 3 times, first ",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
    for never in [
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "frontend-7d9f8-aaaaa",
        "172.18.0.2",
    ] {
        assert!(!text.contains(never), "{never} in:\n{text}");
    }
    // The pairs closed: before every pair of the 6 pods reaches every
    // other on some port; after, only what was seen.
    assert_eq!((r.reachable_before, r.pairs), (Some(30), Some(30)));
    // fe (2) -> api, api -> db, and the 5 pods of shop and data -> coredns.
    assert_eq!(r.reachable_after, Some(8), "{r:?}");
    assert!(r.warnings.iter().any(|w| w.contains("shop/cronjob/batch has no recorded flows")), "{:?}", r.warnings);
    assert!(!r.warnings.iter().any(|w| w.contains("observed for only")), "a 48h window is not short");
}

#[test]
fn two_nodes_records_give_the_advice_of_one_that_saw_everything() {
    let input = shop();
    let p = pattern();
    // One node that saw every pod: each (node, key) observation lands in
    // its record, so a key seen on two nodes is counted twice, as there.
    let solo = crate::flows::Record::new("solo", crate::flows::Settings::default(), T0);
    for (_, k) in &p {
        solo.add(k.clone(), 2, T0);
        solo.add(k.clone(), 1, T0 + 47 * HOUR);
    }
    let solo = merge(&[solo.snapshot(T0 + 48 * HOUR)]);
    let split = merge(&[by_node("n1"), by_node("n2")]);
    assert_eq!(solo.flows, split.flows);
    let (a1, a2) =
        (advise(&input, &solo, &Options::default()).unwrap(), advise(&input, &split, &Options::default()).unwrap());
    assert_eq!(a1.docs, a2.docs);
    assert_eq!((a1.report.observed, a1.report.allowed), (a2.report.observed, a2.report.allowed));
    assert!(yaml(&a1).contains("TCP/http: seen 6 times"), "two frontend pods, 3 each");
    // Deterministic, and the same node's record twice changes nothing.
    let again = merge(&[by_node("n2"), by_node("n1"), by_node("n1")]);
    assert_eq!(yaml(&advise(&input, &again, &Options::default()).unwrap()), yaml(&a2));
}

#[test]
fn dropped_flows_stay_denied_and_short_windows_warn() {
    let input = shop();
    let mut k = pattern()[0].1.clone();
    k.verdict = Seen::Dropped;
    k.peer = Remote::Pod { namespace: "data".into(), workload: wl("StatefulSet", "db") };
    k.port = Some(5432);
    let mut snaps = [by_node("n1"), by_node("n2")];
    for s in &mut snaps {
        s.observing_since_ms = s.taken_ms - HOUR;
    }
    snaps[0]
        .flows
        .push(Flow { key: k.clone(), stats: Stats { count: 1, first_seen_ms: T0, last_seen_ms: snaps[0].taken_ms } });
    let a = advise(&input, &merge(&snaps), &Options::default()).unwrap();
    assert!(a.report.dropped_now_allowed.is_empty());
    assert!(a.report.warnings.iter().any(|w| w.contains("observed for only")), "{:?}", a.report.warnings);
    let check = check::check(
        &input,
        &with_policies(&Input::default(), &a.docs).unwrap(),
        &merge(&[by_node("n1"), by_node("n2")]),
        Duration::from_secs(48 * 3600),
    );
    assert!(check.newly_denied.is_empty(), "{:?}", check.newly_denied);
}

#[test]
fn check_lists_what_a_change_would_break() {
    let input = shop();
    let merged = merge(&[by_node("n1"), by_node("n2")]);
    let deny = crate::cluster::convert::manifests_to_input(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: data}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    let c = check::check(&input, &deny, &merged, Duration::from_secs(48 * 3600));
    let denied: Vec<String> = c.newly_denied.iter().map(|(k, _)| describe(k)).collect();
    assert_eq!(denied, vec!["data/statefulset/db <- shop/deployment/api TCP/5432 (pg) [ALLOWED]".to_string()]);
    assert!(c.newly_allowed.is_empty());
}

#[test]
fn audit_marks_the_namespaces_and_external_peers_aggregate() {
    let input = shop();
    let merged = merge(&[by_node("n1"), by_node("n2")]);
    let opts = Options { audit: true, ipv4_prefix: 24, namespaces: ["shop".to_string()].into(), ..Default::default() };
    let text = yaml(&advise(&input, &merged, &opts).unwrap());
    assert!(text.contains("palisade.dev/audit: \"true\""), "{text}");
    assert!(text.contains("--allow-namespace-audit"));
    assert!(text.contains("cidr: \"203.0.113.0/24\""));
    assert!(!text.contains("namespace: \"data\""), "only shop: {text}");
}
