//! The Kubernetes API source end to end: the real agent (no --cluster-state)
//! reading an in-process API server that speaks real list/watch with
//! k8s-openapi objects; enforcement follows pods, labels, addresses and
//! policies as they change, across watch expiry (410 Gone, relist) and
//! across the API server going away and coming back. Checked with real
//! traffic between network-namespace pods.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod as K8sPod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_e2e::agent::Agent;
use palisade_e2e::fake_api::FakeApi;
use palisade_e2e::probe::{self, Matrix, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{NODE, Topology, np, require_root};
use std::time::{Duration, Instant};

struct Env {
    topo: Topology,
    api: FakeApi,
    agent: Agent,
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        require_root()?;
        let topo = Topology::xyz("kb", 4)?;
        let api = FakeApi::start()?;
        api.apply_manifests(&topo.manifests())?;
        let agent = Agent::start_kube("kube", NODE, api.kubeconfig_path(), &[])?;
        Ok(Env { topo, api, agent })
    }

    /// The topology's objects as created, no policies.
    fn reset(&self) -> Result<()> {
        if !self.api.is_serving() {
            self.api.restart()?;
        }
        self.api.set_cluster_network_policy_crd(true);
        for name in self.api.cluster_network_policy_names() {
            self.api.delete_cluster_network_policy(&name);
        }
        for p in self.api_policies() {
            self.api.delete::<NetworkPolicy>(Some(&p.0), &p.1);
        }
        self.api.apply_manifests(&self.topo.manifests())?;
        self.sync()?;
        Ok(())
    }
}

impl Env {
    fn api_policies(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for ns in ["x", "y", "z"] {
            for name in ["deny-x", "from-db", "from-a", "isolate-a"] {
                if self.api.get::<NetworkPolicy>(Some(ns), name).is_some() {
                    out.push((ns.to_string(), name.to_string()));
                }
            }
        }
        out
    }

    /// Waits until the agent's watches (one per kind, the CRD's too) have
    /// been sent every change, then until its kernel holds them.
    fn sync(&self) -> Result<serde_json::Value> {
        self.api.wait_delivered(6)?;
        self.agent.wait_in_sync()
    }

    /// Polls the agent's status until `done` holds.
    fn status_until(
        &self,
        secs: u64,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let st = self.agent.status()?;
            if done(&st) {
                return Ok(st);
            }
            ensure!(Instant::now() < deadline, "{what}: not within {secs} s: {st}\n{}", self.agent.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        self.api.apply_manifests(yaml)?;
        let st = self.sync()?;
        ensure!(st["errors"].as_array().is_none_or(|a| a.is_empty()), "rejected: {}", st["errors"]);
        Ok(())
    }

    fn expect(&self, build: impl Fn(&mut Matrix)) -> Result<()> {
        let mut m = Matrix::new(&self.topo.names(), true);
        build(&mut m);
        let expected = m.with_self_reachable();
        probe::check(&self.topo.all(), 80, Proto::Tcp, false, &expected)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.agent.log_tail()))
    }

    /// Rewrites one pod object with `edit` applied to its manifest.
    fn edit_pod(&self, id: &str, edit: impl Fn(String) -> String) -> Result<()> {
        self.apply(&edit(self.topo.pod(id).manifest()))
    }
}

fn ns_of(pod: &str) -> &str {
    pod.split('/').next().unwrap_or("")
}

const DENY_X: &str = "  podSelector: {}\n  policyTypes: [Ingress]\n";

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("policies_created_edited_deleted", |e| {
            e.apply(&np("x", "deny-x", DENY_X))?;
            e.expect(|m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })?;
            let from_y = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n";
            e.apply(&np("x", "deny-x", from_y))?;
            e.expect(|m| {
                m.each(|from, to| (ns_of(to) == "x").then_some(ns_of(from) == "y"));
            })?;
            e.api.delete::<NetworkPolicy>(Some("x"), "deny-x");
            e.sync()?;
            e.expect(|_| {})
        }),
        ("pod_label_changes_move_selection", |e| {
            let from_db = "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: db}}, namespaceSelector: {}}]\n";
            e.apply(&np("x", "from-db", from_db))?;
            e.expect(|m| {
                m.to("x/a", false);
            })?;
            // y/b becomes a database: it may now reach x/a.
            e.edit_pod("y/b", |s| s.replace("labels: {pod: b}", "labels: {pod: b, role: db}"))?;
            e.expect(|m| {
                m.to("x/a", false).set("y/b", "x/a", true);
            })?;
            // And x/a itself leaves the policy's podSelector.
            e.edit_pod("x/a", |s| s.replace("labels: {pod: a}", "labels: {pod: a-renamed}"))?;
            e.expect(|_| {})
        }),
        ("pod_addresses_moving_between_pods", |e| {
            // Only pods labelled pod=a may reach z/c.
            let from_a = "  podSelector: {matchLabels: {pod: c}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}]\n";
            e.apply(&np("z", "from-a", from_a))?;
            e.expect(|m| {
                m.to("z/c", false).set("x/a", "z/c", true).set("y/a", "z/c", true).set("z/a", "z/c", true);
            })?;
            // The API now says y/a and y/b swapped addresses: the netns at
            // y/a's address is now "y/b" (not allowed) and vice versa.
            let (ya, yb) = (e.topo.pod("y/a"), e.topo.pod("y/b"));
            let swap = |s: String, from: &palisade_e2e::pods::Pod, to: &palisade_e2e::pods::Pod| {
                s.replace(&from.spec.ip4.to_string(), "SWAP4")
                    .replace(&to.spec.ip4.to_string(), &from.spec.ip4.to_string())
                    .replace("SWAP4", &to.spec.ip4.to_string())
                    .replace(&from.spec.ip6.to_string(), "SWAP6")
                    .replace(&to.spec.ip6.to_string(), &from.spec.ip6.to_string())
                    .replace("SWAP6", &to.spec.ip6.to_string())
            };
            e.apply(&format!("{}---\n{}", swap(ya.manifest(), ya, yb), swap(yb.manifest(), ya, yb)))?;
            e.expect(|m| {
                m.to("z/c", false).set("x/a", "z/c", true).set("y/b", "z/c", true).set("z/a", "z/c", true);
            })
        }),
        ("pods_disappearing_are_no_longer_enforced", |e| {
            let isolate = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n";
            e.apply(&np("z", "isolate-a", isolate))?;
            e.expect(|m| {
                m.to("z/a", false);
            })?;
            e.api.delete::<K8sPod>(Some("z"), "a");
            let st = e.sync()?;
            ensure!(
                !st["pods"].as_array().into_iter().flatten().any(|p| p["namespace"] == "z" && p["name"] == "a"),
                "z/a is gone from the API, so from the agent's pods"
            );
            // Nothing selects the interface any more: it is no longer ours.
            e.expect(|_| {})
        }),
        ("watch_expiry_forces_a_relist_and_nothing_is_missed", |e| {
            let before = e.api.requests().lists("networkpolicies");
            e.api.expire_watches();
            // A change made while watches are being re-established: the
            // agent is not in sync until the relist has brought it in.
            e.api.apply_manifests(&np("x", "deny-x", DENY_X))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while e.agent.status()?["in_sync"] == true {
                ensure!(Instant::now() < deadline, "the agent did not notice its watches expire");
                std::thread::sleep(Duration::from_millis(20));
            }
            e.agent.wait_in_sync()?;
            ensure!(e.api.requests().lists("networkpolicies") > before, "in sync before relisting after 410 Gone");
            e.expect(|m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })
        }),
        ("cluster_network_policy_crd_missing_installed_and_invalid_objects", |e| {
            let unavailable = |st: &serde_json::Value| st["unavailable"].as_array().is_some_and(|a| !a.is_empty());
            // Removed: said in status (not stale), NetworkPolicies go on.
            e.api.set_cluster_network_policy_crd(false);
            let st = e.status_until(40, "CRD missing said", unavailable)?;
            ensure!(
                st["unavailable"][0].as_str().is_some_and(|u| u.contains("ClusterNetworkPolicy CRD not installed")),
                "{st}"
            );
            ensure!(st["stale"].is_null(), "a CRD not installed is not a stale state: {st}");
            e.api.apply_manifests(&np("x", "deny-x", DENY_X))?;
            e.api.wait_delivered(5)?;
            let st = e.agent.wait_in_sync()?;
            ensure!(st["errors"].as_array().is_none_or(|a| a.is_empty()), "{st}");
            e.expect(|m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })?;
            // Installed: picked up (the watcher asks again within a minute).
            e.api.set_cluster_network_policy_crd(true);
            e.status_until(65, "CRD picked up", |st| !unavailable(st))?;
            // An invalid one (a CRD of another version let it through): reported by field.
            e.api.apply_cluster_network_policy(serde_json::json!({
                "apiVersion": palisade_e2e::fake_api::CNP_API_VERSION, "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "bad"},
                "spec": {"tier": "Admin", "priority": 5000, "subject": {"namespaces": {"matchLabels": {"ns": "z"}}},
                         "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
            }));
            let st = e.sync()?;
            let errors = st["errors"].as_array().cloned().unwrap_or_default();
            ensure!(
                errors.iter().any(|x| x["object"] == "ClusterNetworkPolicy bad" && x["field"] == "spec.priority"),
                "{st}"
            );
            e.api.delete_cluster_network_policy("bad");
            let st = e.sync()?;
            ensure!(st["errors"].as_array().is_none_or(|a| a.is_empty()), "{st}");
            Ok(())
        }),
        ("cluster_network_policy_from_the_api_is_enforced", |e| {
            // An Admin Deny holds against a NetworkPolicy that allows everything.
            e.apply(&np("x", "deny-x", "  podSelector: {}\n  ingress: [{}]\n"))?;
            e.api.apply_cluster_network_policy(serde_json::json!({
                "apiVersion": palisade_e2e::fake_api::CNP_API_VERSION, "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "x-not-from-y"},
                "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
                         "ingress": [{"name": "deny-from-y", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}
            }));
            let st = e.sync()?;
            ensure!(st["errors"].as_array().is_none_or(|a| a.is_empty()), "{st}");
            e.expect(|m| {
                m.each(|from, to| (ns_of(to) == "x" && ns_of(from) == "y").then_some(false));
            })?;
            // Deleted: open again.
            e.api.delete_cluster_network_policy("x-not-from-y");
            e.sync()?;
            e.expect(|_| {})
        }),
        ("api_server_away_keeps_enforcement_and_reports_stale", |e| {
            e.apply(&np("x", "deny-x", DENY_X))?;
            e.api.stop();
            let deadline = Instant::now() + Duration::from_secs(30);
            let stale = loop {
                let st = e.agent.status()?;
                if !st["stale"].is_null() {
                    break st;
                }
                ensure!(Instant::now() < deadline, "status never reported the API server gone");
                std::thread::sleep(Duration::from_millis(100));
            };
            ensure!(stale["in_sync"] == false, "a stale state is not in sync");
            // The last state stays in force.
            e.expect(|m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })?;
            e.api.restart()?;
            // Changes made after it comes back take effect.
            e.api.delete::<NetworkPolicy>(Some("x"), "deny-x");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = e.agent.status()?;
                if st["stale"].is_null() && st["in_sync"] == true {
                    break;
                }
                ensure!(Instant::now() < deadline, "the agent did not catch up after the API server came back: {st}");
                std::thread::sleep(Duration::from_millis(100));
            }
            e.agent.wait_in_sync().context("in sync again")?;
            e.expect(|_| {})
        }),
    ]
}

fn main() {
    palisade_e2e::suite::run(cases())
}
