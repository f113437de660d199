//! The fake Kubernetes API server against real kube-rs clients: plain list
//! and watch calls, and `kube::runtime::watcher` + reflector (as the agent
//! runs it) through changes, pagination, a forced 410 relist and server
//! stop/restart. Pure loopback HTTP: no root needed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use palisade_e2e::fake_api::{FakeApi, Options};

const WAIT: Duration = Duration::from_secs(30);

async fn client(api: &FakeApi) -> Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig_path()).expect("kubeconfig parses");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig loads");
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), api.url());
    Client::try_from(config).expect("client")
}

fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
        status: Some(PodStatus { pod_ip: Some(format!("10.0.0.{}", name.len())), ..Default::default() }),
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("ns".to_string(), name.to_string())])),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn policy(ns: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
        spec: Some(NetworkPolicySpec { pod_selector: Some(LabelSelector::default()), ..Default::default() }),
    }
}

fn names(store: &Store<Pod>) -> BTreeSet<String> {
    store.state().iter().map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reflector over pods, driven on its own task; returns its store.
fn reflect_pods(client: Client, config: watcher::Config) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Pod>::all(client), config).default_backoff().reflect(writer);
    let task = tokio::spawn(stream.for_each(|_| async {}));
    (reader, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_pagination_and_metadata() {
    let api = FakeApi::start().unwrap();
    let client = client(&api).await;
    api.apply(&namespace("x"));
    api.apply(&namespace("y"));
    api.apply(&pod("x", "a", "node-a", &[("app", "web")]));
    api.apply(&pod("x", "b", "node-b", &[("app", "db")]));
    api.apply(&pod("y", "c", "node-a", &[("app", "web"), ("tier", "front")]));
    api.apply(&policy("x", "deny-all"));

    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.types.kind, "PodList");
    assert_eq!(list.metadata.resource_version.as_deref(), Some(api.resource_version().to_string().as_str()));
    let listed: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(listed, ["a", "b", "c"]);
    assert!(list.items.iter().all(|p| p.resource_version().is_some()));
    let nss = Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(nss.items.iter().map(|n| n.name_any()).collect::<Vec<_>>(), ["x", "y"]);
    let nps = Api::<NetworkPolicy>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(nps.types.api_version, "networking.k8s.io/v1");
    assert_eq!(nps.items[0].namespace().as_deref(), Some("x"));
    // What neither the agent nor `kubectl palisade` asks for is not served.
    let err = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "x")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 404), "{err:?}");

    // Pagination over a consistent snapshot, even across a change.
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    api.delete::<Pod>(Some("y"), "c");
    let second = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(second.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    assert!(second.metadata.continue_.is_none());
    // ...and continue tokens expire with the history.
    api.expire_watches();
    let err = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 410), "{err:?}");

    // Metadata-only lists: the agent's probe.
    let meta = Api::<Namespace>::all(client.clone()).list_metadata(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(meta.items.iter().map(|n| n.name_any()).collect::<Vec<_>>(), ["x"]);
    assert!(meta.metadata.continue_.is_some());

    // Re-applying an identical object is a no-op; a change bumps the version.
    let rv = api.resource_version();
    let stored = api.get::<Pod>(Some("x"), "a").unwrap();
    assert_eq!(api.apply(&pod("x", "a", "node-a", &[("app", "web")])), stored.resource_version().unwrap());
    assert_eq!(api.resource_version(), rv);
    api.apply(&pod("x", "a", "node-a", &[("app", "web2")]));
    assert_eq!(api.resource_version(), rv + 1);
    assert_eq!(api.names::<Pod>(), [("x".to_string(), "a".to_string()), ("x".into(), "b".into())]);

    let requests = api.requests();
    assert_eq!(requests.lists("pods"), 4);
    assert_eq!(requests.lists("namespaces"), 2);
    assert_eq!(requests.watches("pods"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_events_bookmarks_timeout_and_resume() {
    let api = FakeApi::start().unwrap();
    let client = client(&api).await;
    api.apply(&pod("x", "a", "node-a", &[]));
    let pods: Api<Pod> = Api::all(client.clone());
    let rv = pods.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    let started = Instant::now();
    let mut stream = pods.watch(&WatchParams::default().timeout(3), &rv).await.unwrap().boxed();
    api.apply(&pod("x", "b", "node-a", &[]));
    api.apply(&pod("x", "b", "node-a", &[("v", "2")]));
    api.apply(&namespace("x")); // another kind: nothing
    api.delete::<Pod>(Some("x"), "b");
    api.delete::<Pod>(Some("x"), "a");
    let final_rv = api.resource_version().to_string();
    api.wait_delivered(1).unwrap();

    let mut seen = Vec::new();
    let mut bookmarks = Vec::new();
    while let Some(event) = stream.try_next().await.unwrap() {
        match event {
            WatchEvent::Added(p) => seen.push(format!("ADDED {} {}", p.name_any(), p.resource_version().unwrap())),
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.name_any())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {} {}", p.name_any(), p.resource_version().unwrap())),
            WatchEvent::Bookmark(b) => bookmarks.push(b.metadata.resource_version),
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        }
    }
    let elapsed = started.elapsed();
    let rv: u64 = rv.parse().unwrap();
    assert_eq!(
        seen,
        [
            format!("ADDED b {}", rv + 1),
            "MODIFIED b".into(),
            format!("DELETED b {}", rv + 4),
            format!("DELETED a {}", rv + 5),
        ]
    );
    assert!(elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(6), "timeoutSeconds: {elapsed:?}");
    assert!(bookmarks.len() >= 2, "a bookmark about every second: {bookmarks:?}");
    assert!(bookmarks.iter().all(|b| *b == final_rv), "{bookmarks:?} vs {final_rv}");

    // Resuming from an old version replays the history after it.
    let mut stream =
        pods.watch(&WatchParams::default().timeout(1).disable_bookmarks(), &rv.to_string()).await.unwrap().boxed();
    let mut replay = Vec::new();
    while let Some(event) = stream.try_next().await.unwrap() {
        match event {
            WatchEvent::Added(p) => replay.push(format!("ADDED {}", p.name_any())),
            WatchEvent::Modified(p) => replay.push(format!("MODIFIED {}", p.name_any())),
            WatchEvent::Deleted(p) => replay.push(format!("DELETED {}", p.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(replay, ["ADDED b", "MODIFIED b", "DELETED b", "DELETED a"]);

    // Watching from "0" starts with the current state as ADDED events.
    api.apply(&pod("y", "c", "node-a", &[]));
    let mut stream = pods.watch(&WatchParams::default().timeout(1), "0").await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Added(p)) => assert_eq!(p.name_any(), "c"),
        other => panic!("expected ADDED c, got {other:?}"),
    }

    // An open watch ends with 410 Expired when the server expires watches,
    // and resuming from before that is refused the same way.
    let before = api.resource_version().to_string();
    let mut stream = pods.watch(&WatchParams::default(), &before).await.unwrap().boxed();
    api.expire_watches();
    let mut expired = false;
    while let Some(event) = stream.try_next().await.unwrap() {
        match event {
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
                expired = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(expired);
    let mut stream = pods.watch(&WatchParams::default(), &(rv + 1).to_string()).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR, got {other:?}"),
    }
    assert!(stream.try_next().await.unwrap().is_none(), "the stream ends after the 410");
    assert_eq!(api.requests().watches("pods"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_before_the_history_window_is_gone() {
    let api = FakeApi::start_with(Options { history_limit: 3, ..Options::default() }).unwrap();
    let client = client(&api).await;
    let start = api.resource_version();
    for i in 0..5 {
        api.apply(&pod("x", "a", "node-a", &[("i", &i.to_string())]));
    }
    let pods: Api<Pod> = Api::all(client);
    let mut stream = pods.watch(&WatchParams::default(), &start.to_string()).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR, got {other:?}"),
    }
    // The last three changes are still there.
    let mut stream = pods.watch(&WatchParams::default(), &(start + 2).to_string()).await.unwrap().boxed();
    for i in 2..5 {
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Modified(p)) => assert_eq!(p.labels()["i"], i.to_string()),
            other => panic!("expected MODIFIED, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_changes_relists_and_server_restarts() {
    let api = FakeApi::start().unwrap();
    let client = client(&api).await;
    api.apply(&namespace("x"));
    api.apply(&pod("x", "a", "node-a", &[("app", "web")]));
    api.apply(&pod("x", "b", "node-a", &[]));
    api.apply(&pod("x", "c", "node-b", &[]));

    // What the agent does: all pods, the watcher's default configuration.
    let (store, task) = reflect_pods(client.clone(), watcher::Config::default());
    tokio::time::timeout(WAIT, store.wait_until_ready()).await.unwrap().unwrap();
    assert_eq!(names(&store), set(&["x/a", "x/b", "x/c"]));
    assert_eq!(api.requests().lists("pods"), 1);

    // Create, modify, delete.
    api.apply(&pod("x", "d", "node-a", &[]));
    api.apply(&pod("x", "a", "node-a", &[("app", "db")]));
    api.delete::<Pod>(Some("x"), "b");
    api.delete::<Pod>(Some("x"), "d");
    eventually("changes reach the store", || names(&store) == set(&["x/a", "x/c"])).await;
    eventually("the modification reaches the store", || {
        store.state().iter().any(|p| p.name_any() == "a" && p.labels().get("app").map(String::as_str) == Some("db"))
    })
    .await;

    // A forced 410: the watcher relists and carries on.
    api.expire_watches();
    eventually("a relist after 410", || api.requests().lists("pods") == 2).await;
    api.apply(&pod("x", "e", "node-a", &[]));
    eventually("changes after the relist", || names(&store) == set(&["x/a", "x/c", "x/e"])).await;

    // The server goes away; changes happen meanwhile; it comes back on the
    // same port. The watcher reconnects (with backoff) and resumes from its
    // resourceVersion: the missed changes are replayed, no relist.
    let watches = api.requests().watches("pods");
    api.stop();
    assert!(std::net::TcpStream::connect(api.addr()).is_err(), "nothing listens while stopped");
    api.apply(&pod("x", "f", "node-a", &[]));
    api.delete::<Pod>(Some("x"), "c");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(names(&store), set(&["x/a", "x/c", "x/e"]), "nothing served while stopped");
    api.restart().unwrap();
    eventually("the missed changes after restart", || names(&store) == set(&["x/a", "x/e", "x/f"])).await;
    assert_eq!(api.requests().lists("pods"), 2, "resumed without a relist");
    assert!(api.requests().watches("pods") > watches);

    // Down again, and the history is compacted meanwhile: after the restart
    // the resumed watch gets 410 and the watcher relists.
    api.stop();
    api.apply(&pod("x", "g", "node-a", &[]));
    api.expire_watches();
    api.restart().unwrap();
    eventually("a relist after restart + 410", || names(&store) == set(&["x/a", "x/e", "x/f", "x/g"])).await;
    assert_eq!(api.requests().lists("pods"), 3);
    api.apply(&pod("x", "h", "node-a", &[]));
    eventually("changes after all that", || names(&store).contains("x/h")).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_renews_timed_out_watches() {
    let api = FakeApi::start().unwrap();
    let client = client(&api).await;
    api.apply(&pod("x", "a", "node-a", &[]));
    api.apply(&pod("y", "b", "node-a", &[]));
    let (store, task) = reflect_pods(client.clone(), watcher::Config::default().timeout(1));
    tokio::time::timeout(WAIT, store.wait_until_ready()).await.unwrap().unwrap();
    assert_eq!(names(&store), set(&["x/a", "y/b"]));
    // The 1 s watches time out and are resumed, without a relist.
    let watches = api.requests().watches("pods");
    eventually("watches renewed after timeoutSeconds", || api.requests().watches("pods") >= watches + 2).await;
    api.apply(&pod("x", "c", "node-a", &[]));
    api.delete::<Pod>(Some("y"), "b");
    eventually("changes across renewed watches", || names(&store) == set(&["x/a", "x/c"])).await;
    assert_eq!(api.requests().lists("pods"), 1, "a timed-out watch resumes");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_pages_through_the_initial_list() {
    let api = FakeApi::start().unwrap();
    let client = client(&api).await;
    for ns in ["x", "y", "z"] {
        api.apply(&namespace(ns));
    }
    let (store, writer) = reflector::store::<Namespace>();
    let stream = watcher(Api::all(client), watcher::Config::default().page_size(1)).default_backoff().reflect(writer);
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, store.wait_until_ready()).await.unwrap().unwrap();
    assert_eq!(store.state().iter().map(|n| n.name_any()).collect::<BTreeSet<_>>(), set(&["x", "y", "z"]));
    assert_eq!(api.requests().lists("namespaces"), 3, "one LIST per page");
    api.delete::<Namespace>(None, "y");
    eventually("the deletion", || store.len() == 2).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_as_the_e2e_fixtures_write_them() {
    let api = FakeApi::start().unwrap();
    let client = client(&api).await;
    // The shapes `Topology::manifests` and `np` produce.
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: \"x\", labels: {ns: \"x\"}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: \"x\", labels: {pod: a}}\nspec:\n  nodeName: e2e-node\n\
        \x20 containers: [{name: server, image: agnhost, ports: [{name: serve-80-tcp, containerPort: 80, protocol: TCP}]}]\n\
        status:\n  phase: Running\n  podIP: 10.240.1.1\n  podIPs: [{ip: 10.240.1.1}, {ip: \"fd10:240:1::1\"}]\n---\n\
        apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: \"x\"\nspec:\n\
        \x20 podSelector: {}\n  policyTypes: [Ingress]\n---\n\
        apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: \"y\"}}\n";
    assert_eq!(api.apply_manifests(text).unwrap(), 4);
    let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let pod = pods.items.into_iter().next().unwrap();
    assert_eq!(pod.status.unwrap().pod_ips.unwrap()[1].ip, "fd10:240:1::1");
    assert_eq!(pod.spec.unwrap().containers[0].ports.as_ref().unwrap()[0].container_port, 80);
    let nps = Api::<NetworkPolicy>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(nps.items[0].spec.as_ref().unwrap().policy_types.as_ref().unwrap(), &["Ingress"]);
    assert_eq!(Api::<Namespace>::all(client).list(&ListParams::default()).await.unwrap().items.len(), 2);
    assert!(api.get::<Namespace>(None, "y").is_some());
    // Bad input is an error, not a panic.
    assert!(api.apply_manifests("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n").is_err());
    assert!(api.apply_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: 5\n").is_err());
    assert!(api.apply_manifests("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").is_err(), "not served");
}

#[test]
fn stop_restart_from_sync_code() {
    let api = FakeApi::start().unwrap();
    let addr = api.addr();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    assert!(std::fs::read_to_string(api.kubeconfig_path()).unwrap().contains(&api.url()));
    api.stop();
    assert!(!api.is_serving());
    assert!(std::net::TcpStream::connect(addr).is_err());
    api.restart().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    let path = api.kubeconfig_path().to_path_buf();
    drop(api);
    assert!(!path.exists(), "the kubeconfig goes with the server");
    assert!(std::net::TcpStream::connect(addr).is_err());
}
