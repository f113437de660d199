//! The agent's Kubernetes source (`cluster::kube::KubeSource`, the code
//! `palisade run` and `palisade lint` read the API with) against the
//! in-process API server, without root: Nodes and ClusterNetworkPolicies
//! arrive validated; the ClusterNetworkPolicy CRD missing at start does not
//! hold the rest back, is said, and is picked up when it is installed (and
//! let go when it is removed); an invalid ClusterNetworkPolicy is reported
//! and fails closed; after the API server was away, the source says stale
//! until every watch is back.

use palisade::cluster::Snapshot;
use palisade::cluster::kube::{CRD_NOT_INSTALLED, KubeSource};
use palisade::policy::model::{Action, ClusterPeer};
use palisade_e2e::fake_api::{CNP_API_VERSION, FakeApi, Options};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OBJECTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {podIP: 10.9.0.1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {role: infra}}\nspec: {podCIDR: 10.9.0.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.1}, {type: Hostname, address: n1}, {type: InternalIP, address: 'fd00::1'}]}\n";

fn cnp(name: &str, action: &str) -> serde_json::Value {
    json!({
        "apiVersion": CNP_API_VERSION, "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                 "egress": [{"name": "to-infra", "action": action, "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]}]}
    })
}

/// Loads until `done` holds (the watches deliver asynchronously), within `secs`.
fn until(source: &mut KubeSource, secs: u64, what: &str, done: impl Fn(&Snapshot, &KubeSource) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let snap = source.load();
        if done(&snap, source) {
            return snap;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s: {:?} {:?}", snap.errors, source.unavailable());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_and_cluster_network_policies_through_the_api() {
    let api = FakeApi::start_with(Options { cluster_network_policy_crd: false, ..Options::default() }).unwrap();
    api.apply_manifests(OBJECTS).unwrap();
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("KUBECONFIG", api.kubeconfig_path()) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _guard = rt.enter();

    // Not installed: the first complete state comes anyway, and says so.
    let start = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), KubeSource::start(Arc::new(|| {}), false)).await
    });
    let mut source = start.expect("the missing CRD does not hold the first sync back").unwrap();
    let snap = until(&mut source, 10, "first state", |s, _| s.input.nodes.contains_key("n1"));
    assert_eq!(source.unavailable(), Some(CRD_NOT_INSTALLED));
    assert!(source.stale().is_none(), "a CRD not installed is not a failing watch: {:?}", source.stale());
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(snap.input.pods.len(), 1);
    let n1 = &snap.input.nodes["n1"];
    assert_eq!(n1.labels["role"], "infra");
    assert_eq!(n1.ips, ["192.0.2.1".parse::<std::net::IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
    assert!(snap.input.cluster_policies.is_empty());

    // Installed later: picked up within the watcher's backoff (30 s at most).
    api.set_cluster_network_policy_crd(true);
    api.apply_cluster_network_policy(cnp("deny-infra", "Deny"));
    let snap = until(&mut source, 40, "CRD picked up", |s, _| s.input.cluster_policies.contains_key("deny-infra"));
    assert_eq!(source.unavailable(), None);
    let c = &snap.input.cluster_policies["deny-infra"];
    assert_eq!((c.egress[0].name.as_str(), c.egress[0].action), ("to-infra", Action::Deny));
    assert!(matches!(&c.egress[0].peers[0], ClusterPeer::Nodes(s) if s.match_labels["role"] == "infra"));

    // Broken (an older or newer CRD let it through): reported, last valid kept.
    let mut broken = cnp("deny-infra", "Deny");
    broken["spec"]["priority"] = json!(5000);
    api.apply_cluster_network_policy(broken.clone());
    let snap = until(&mut source, 10, "broken reported", |s, _| !s.errors.is_empty());
    let e = &snap.errors[0];
    assert_eq!((e.object.as_str(), e.field.as_str()), ("ClusterNetworkPolicy deny-infra", "spec.priority"));
    assert!(e.action.contains("last valid"), "{e:?}");
    assert_eq!(snap.input.cluster_policies["deny-infra"].priority, 10);
    // Never valid: it denies all egress of every pod (its subject) at its place.
    broken["metadata"]["name"] = json!("never-valid");
    api.apply_cluster_network_policy(broken);
    let snap = until(&mut source, 10, "never valid", |s, _| s.input.cluster_policies.contains_key("never-valid"));
    let c = &snap.input.cluster_policies["never-valid"];
    assert_eq!((c.priority, c.egress.len(), c.egress[0].action), (0, 1, Action::Deny));
    assert!(
        snap.errors.iter().any(|e| e.object == "ClusterNetworkPolicy never-valid" && e.action.contains("never valid"))
    );
    // A peer palisade does not evaluate: reported, and the rule fails closed.
    let mut domains = cnp("domains", "Accept");
    domains["spec"]["egress"][0]["to"] = json!([{"domainNames": ["example.com"]}]);
    api.apply_cluster_network_policy(domains);
    let snap = until(&mut source, 10, "domainNames", |s, _| s.input.cluster_policies.contains_key("domains"));
    assert!(matches!(snap.input.cluster_policies["domains"].egress[0].peers.as_slice(), [ClusterPeer::Unsupported(_)]));
    assert!(snap.errors.iter().any(|e| e.field == "spec.egress[0].to[0]" && e.message.starts_with("unsupported peer")));

    // The resource briefly not served (404) while its objects exist: they
    // stay in force (their Denies with them), and the source says so.
    let held = snap.input.cluster_policies.len();
    api.set_cluster_network_policy_served(false);
    let snap = until(&mut source, 40, "404 with objects", |_, src| src.unavailable().is_some());
    assert_eq!(snap.input.cluster_policies.len(), held, "a 404 drops no ClusterNetworkPolicy");
    let watched = api.requests().watches("clusternetworkpolicies");
    api.set_cluster_network_policy_served(true);
    until(&mut source, 65, "served again", |_, src| src.unavailable().is_none());
    // Said served once the watch is answered again, not before (the
    // watcher may be waiting out its backoff): what is applied now arrives.
    assert!(api.requests().watches("clusternetworkpolicies") > watched, "served said before the watch resumed");
    api.apply_cluster_network_policy(cnp("after-404", "Accept"));
    until(&mut source, 10, "the watch after the 404", |s, _| s.input.cluster_policies.contains_key("after-404"));

    // The CRD removed: its objects go with it, and the source says so.
    api.set_cluster_network_policy_crd(false);
    let snap = until(&mut source, 40, "CRD removed", |s, src| {
        s.input.cluster_policies.is_empty() && src.unavailable().is_some()
    });
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert!(source.stale().is_none(), "{:?}", source.stale());
    assert_eq!(snap.input.nodes.len(), 1, "the rest stays");

    // Installed again, with nothing in it yet: said once the watch
    // resumes (silently: no event comes until an object changes), and
    // what comes next arrives.
    let watched = api.requests().watches("clusternetworkpolicies");
    api.set_cluster_network_policy_crd(true);
    until(&mut source, 65, "CRD back", |_, src| src.unavailable().is_none());
    assert!(api.requests().watches("clusternetworkpolicies") > watched, "installed said before the watch resumed");
    api.apply_cluster_network_policy(cnp("again", "Accept"));
    until(&mut source, 10, "a policy after the CRD came back", |s, _| s.input.cluster_policies.contains_key("again"));

    // Created anew, its old versions compacted away: the resumed watch is
    // answered OK, then 410, and relists. Said read and not stale means
    // relisted, with what was created meanwhile (the state is asked
    // before the load, so the load is at least as new).
    api.set_cluster_network_policy_crd(false);
    until(&mut source, 40, "CRD removed again", |_, src| src.unavailable().is_some());
    api.set_cluster_network_policy_crd(true);
    api.expire_watches();
    api.apply_cluster_network_policy(cnp("anew", "Accept"));
    let deadline = Instant::now() + Duration::from_secs(65);
    loop {
        let current = source.unavailable().is_none() && source.stale().is_none();
        let snap = source.load();
        if current {
            assert!(snap.input.cluster_policies.contains_key("anew"), "read and not stale before the relist");
            break;
        }
        assert!(Instant::now() < deadline, "the CRD created anew: not read within 65 s");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The API server away, and the version the watches resume from gone
    // when it comes back (a compaction): each resumed watch is answered
    // OK, then 410, and relists. Not stale means relisted, with the change
    // made while it was away.
    api.stop();
    until(&mut source, 30, "the API server away said", |_, src| src.stale().is_some());
    api.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata: {name: while-away}\n").unwrap();
    api.expire_watches();
    api.restart().unwrap();
    until(&mut source, 60, "stale no more after a compaction", |_, src| src.stale().is_none());
    until(&mut source, 1, "a change made while away, once relisted", |s, _| {
        s.input.namespaces.contains_key("while-away")
    });

    // Away again, long enough for the watchers' backoff to grow (0.8 s
    // doubling), then back, and a change made at once. The state is
    // stale until each watch is answered again: the API server answering
    // (the probe, every 2 s) is not enough, as a watcher may still be
    // waiting out its backoff for seconds. So once the source no longer
    // says stale, the change is there to load.
    api.stop();
    until(&mut source, 30, "the API server away said again", |_, src| src.stale().is_some());
    std::thread::sleep(Duration::from_secs(12));
    api.restart().unwrap();
    api.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata: {name: later}\n").unwrap();
    until(&mut source, 60, "stale no more after the API server came back", |_, src| src.stale().is_none());
    until(&mut source, 1, "a change made while a watcher waited, once not stale", |s, _| {
        s.input.namespaces.contains_key("later")
    });

    // Loads patch the last state where objects changed: a pod relabelled,
    // then deleted; what did not change stays the same object.
    let before = source.load();
    let relabelled = OBJECTS.split("---\n").nth(1).unwrap().replace("app: a", "app: b");
    api.apply_manifests(&relabelled).unwrap();
    let key = ("x".to_string(), "a".to_string());
    let snap = until(&mut source, 10, "relabelled", |s, _| s.input.pods[&key].labels["app"] == "b");
    assert!(Arc::ptr_eq(&snap.input.nodes["n1"], &before.input.nodes["n1"]), "an unchanged object is kept");
    assert!(api.delete::<k8s_openapi::api::core::v1::Pod>(Some("x"), "a"));
    let snap = until(&mut source, 10, "deleted", |s, _| !s.input.pods.contains_key(&key));
    assert_eq!((snap.input.namespaces.len(), snap.input.nodes.len()), (before.input.namespaces.len(), 1));
}
