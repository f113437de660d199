//! `kubectl palisade` against two nodes as kind runs them (each a network
//! namespace with its agent reading the in-process API server) and a
//! third node with no agent. The agent pods are registered in the API
//! server, which port-forwards to each one's loopback inside its node as
//! kubelet would; the plugin (the palisade binary as `kubectl-palisade`)
//! runs in the fabric namespace with only the kubeconfig, as on a laptop.

use anyhow::{Context, Result, bail, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::np;
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The nodes with an agent; n3 has none.
const NODES: [&str; 2] = ["n1", "n2"];
const AGENT_NS: &str = "palisade-system";

struct Env {
    c: Cluster,
    /// Holds `kubectl-palisade`, a symlink to the palisade binary.
    plugin_dir: PathBuf,
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        let c = Cluster::start_nodes("kc", 15, 2, &[])?;
        let plugin_dir = std::env::temp_dir().join(format!("palisade-kubectl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&plugin_dir);
        std::fs::create_dir_all(&plugin_dir)?;
        std::os::unix::fs::symlink(palisade_e2e::agent::binary(), plugin_dir.join("kubectl-palisade"))?;
        let env = Env { c, plugin_dir };
        env.register()?;
        Ok(env)
    }

    fn reset(&self) -> Result<()> {
        // A case that failed half way may have left an agent down.
        for (i, node) in NODES.iter().enumerate() {
            let mut agent = self.c.node_agent(i);
            if agent.pid().is_none() {
                agent.spawn(node, &[])?;
            }
        }
        // Reset deletes the pods the topology does not have: ours too.
        self.c.reset()?;
        self.register()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.plugin_dir);
    }
}

/// An agent pod as the DaemonSet makes it: host network, on its node.
fn agent_pod(name: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {AGENT_NS}
  labels: {{app.kubernetes.io/name: palisade, app.kubernetes.io/component: agent}}
spec:
  nodeName: {node}
  hostNetwork: true
  containers: [{{name: agent, image: palisade}}]
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
"
    )
}

impl Env {
    fn api(&self) -> &palisade_e2e::fake_api::FakeApi {
        self.c.api().expect("the cluster reads the API server")
    }

    /// The agent pods (forwarded into their nodes) and the Nodes, n3 too.
    fn register(&self) -> Result<()> {
        let nodes = self.c.nodes().context("nodes")?;
        self.api().apply_manifests(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {AGENT_NS}}}\n"))?;
        for n in &nodes.nodes {
            let pod = format!("palisade-{}", n.name);
            self.api().apply_manifests(&agent_pod(&pod, &n.name, &n.ip4.to_string()))?;
            self.api().forward_pod(AGENT_NS, &pod, Some(&n.netns.name));
        }
        for n in ["n1", "n2", "n3"] {
            self.api().add_node(n);
        }
        self.c.wait_in_sync()?;
        Ok(())
    }

    /// `kubectl-palisade <args>` in the fabric namespace, with the kubeconfig.
    fn command(&self, program: &std::path::Path) -> Result<Command> {
        let fabric = &self.c.nodes().context("nodes")?.fabric.name;
        let mut cmd = palisade_e2e::netns::command_in(fabric, program)?;
        cmd.env("KUBECONFIG", self.api().kubeconfig_path()).env("RUST_LOG", "warn");
        Ok(cmd)
    }

    fn plugin(&self, args: &[&str]) -> Result<Output> {
        Ok(self.command(&self.plugin_dir.join("kubectl-palisade"))?.args(args).output()?)
    }

    fn plugin_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.plugin(args)?;
        ensure!(
            out.status.success(),
            "kubectl-palisade {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.c.log_tail()
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `kubectl-palisade observe <args> -o json`, followed in the background.
    fn observe(&self, args: &[&str]) -> Result<Observer> {
        let mut child = self
            .command(&self.plugin_dir.join("kubectl-palisade"))?
            .arg("observe")
            .args(args)
            .args(["-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Ok(Observer { child, lines, seen: Vec::new(), stderr })
    }

    /// Sends a TCP probe `from` -> `to` on port 80; true if it got through.
    fn probe(&self, from: &str, to: &str) -> bool {
        probe::probe(self.c.topo.pod(from), self.c.ip(to), 80, Proto::Tcp)
    }

    /// Probes `from` -> `to` (expected dropped) until `obs` shows the drop
    /// reported by `node`'s agent at the destination's ingress.
    fn see_drop(&self, obs: &mut Observer, from: &str, to: &str, node: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            ensure!(!self.probe(from, to), "{from} -> {to} got through a deny-all ingress policy");
            obs.read(Duration::from_millis(500));
            if obs.seen.iter().any(|e| is_drop(e, from, to, node)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no drop {from} -> {to} from node {node} in the merged stream; got {:#?}\nstderr: {}\n{}",
                    obs.seen,
                    obs.stderr(),
                    self.c.log_tail()
                );
            }
        }
    }
}

/// A drop of `from` -> `to` on its ingress, reported by `node`.
fn is_drop(e: &Value, from: &str, to: &str, node: &str) -> bool {
    let pod = |p: &Value| format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["pod"].as_str().unwrap_or(""));
    e["node"] == node
        && e["verdict"] == "DROPPED"
        && e["direction"] == "ingress"
        && pod(&e["source"]) == from
        && pod(&e["destination"]) == to
}

struct Observer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every event line so far.
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Observer {
    /// Takes what arrived within `wait`.
    fn read(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v.get("lagged").is_none()
            {
                self.seen.push(v);
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until stderr says `what`.
    fn wait_stderr(&mut self, what: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.stderr().contains(what) {
            ensure!(Instant::now() < deadline, "observe never said {what:?}; stderr: {}", self.stderr());
            self.read(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Events are printed oldest first.
    fn check_order(&self) -> Result<()> {
        let times: Vec<&str> = self.seen.iter().filter_map(|e| e["time"].as_str()).collect();
        for w in times.windows(2) {
            ensure!(w[0] <= w[1], "the merged stream is out of order: {} before {}", w[0], w[1]);
        }
        Ok(())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deny_ingress_in_x() -> String {
    np("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")
}

/// Every node listed, with its agent's state; n3, which has no agent pod,
/// flagged; the same through `kubectl palisade` (plugin discovery on PATH).
fn status_lists_every_node(e: &Env) -> Result<()> {
    let v: Value = serde_json::from_str(&e.plugin_ok(&["status", "-o", "json"])?)?;
    let nodes = v["nodes"].as_array().context("nodes")?;
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
    ensure!(names == ["n1", "n2", "n3"], "status lists {names:?}");
    for n in &nodes[..2] {
        let node = n["node"].as_str().unwrap_or_default();
        ensure!(n["pod"] == format!("palisade-{node}").as_str(), "{n:#}");
        ensure!(n["problems"].as_array().is_some_and(|p| p.is_empty()), "{node} has problems: {}", n["problems"]);
        let st = &n["status"];
        ensure!(st["node"] == node && st["in_sync"] == true, "{node}'s agent: {st:#}");
        ensure!(st["version"] == env!("CARGO_PKG_VERSION"), "version: {}", st["version"]);
        ensure!(st["counters"]["events_lost"].is_u64(), "no event loss counter: {st:#}");
    }
    ensure!(nodes[2]["pod"].is_null() && nodes[2]["problems"] == serde_json::json!(["no agent pod"]), "{:#}", nodes[2]);
    // kubectl finds the plugin on PATH.
    let path = format!("{}:{}", e.plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out =
        e.command(std::path::Path::new("/usr/bin/kubectl"))?.env("PATH", path).args(["palisade", "status"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "kubectl palisade status: {}", String::from_utf8_lossy(&out.stderr));
    for want in ["NODE", "palisade-n1", "palisade-n2", "no agent pod"] {
        ensure!(text.contains(want), "kubectl palisade status does not say {want:?}:\n{text}");
    }
    ensure!(text.lines().filter(|l| l.starts_with("n3")).count() == 1, "n3 missing:\n{text}");
    Ok(())
}

/// One stream: a drop at x/b's ingress (node n2) and one at x/a's (n1),
/// oldest first; `--node` keeps to one node's agent.
fn merged_observe_sees_drops_on_either_node(e: &Env) -> Result<()> {
    e.c.apply(&[deny_ingress_in_x()])?;
    let mut obs = e.observe(&["--verdict", "dropped", "--namespace", "x"])?;
    e.see_drop(&mut obs, "x/a", "x/b", "n2")?;
    e.see_drop(&mut obs, "x/b", "x/a", "n1")?;
    e.see_drop(&mut obs, "x/a", "x/b", "n2")?;
    obs.read(Duration::from_millis(500));
    obs.check_order()?;
    ensure!(obs.seen.iter().all(|ev| ev["verdict"] == "DROPPED"), "a filtered-out event: {:#?}", obs.seen);
    // History, one node only.
    let out = e.plugin_ok(&["observe", "--no-follow", "--last", "1000", "--node", "n1", "-o", "json"])?;
    let events: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    ensure!(events.iter().any(|ev| is_drop(ev, "x/b", "x/a", "n1")), "n1's history lacks its drop: {out}");
    ensure!(events.iter().all(|ev| ev["node"] == "n1"), "--node n1 let another node through: {out}");
    Ok(())
}

/// Each side asked of the agent that enforces it, each checked in its own
/// kernel, and agreeing with real packets.
fn trace_checks_both_kernels(e: &Env) -> Result<()> {
    e.c.apply(&[np("x", "deny-b", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n")])?;
    for (from, to, allowed, egress_node, ingress_node) in
        [("x/a", "x/b", false, "n1", "n2"), ("x/b", "x/a", true, "n2", "n1")]
    {
        ensure!(e.probe(from, to) == allowed, "{from} -> {to}: real traffic is not {allowed}");
        let t: Value =
            serde_json::from_str(&e.plugin_ok(&["trace", "--from", from, "--to", to, "--port", "80", "-o", "json"])?)?;
        ensure!(t["allowed"] == allowed, "{from} -> {to}: {t:#}");
        ensure!(t["egress_node"] == egress_node && t["ingress_node"] == ingress_node, "nodes: {t:#}");
        for side in ["egress", "ingress"] {
            let k = &t[side]["kernel"];
            ensure!(k.is_object(), "{from} -> {to}: {side} not checked in its node's kernel: {t:#}");
            ensure!(k["differences"].as_array().is_some_and(|d| d.is_empty()), "kernel differs: {k:#}");
            ensure!(k["allowed"] == t[side]["allowed"], "{side}: kernel {k:#} vs {}", t[side]["allowed"]);
        }
        ensure!(t["ingress"]["allowed"] == allowed && t["egress"]["allowed"] == true, "{t:#}");
        let text = e.plugin_ok(&["trace", "--from", from, "--to", to, "--port", "80"])?;
        ensure!(
            text.contains(&format!("egress judged on node {egress_node}, ingress on node {ingress_node}")),
            "{text}"
        );
    }
    Ok(())
}

/// An agent killed mid-stream is reported and the other node's events keep
/// coming; status flags it; its replacement (a new pod) is picked up.
fn a_lost_agent_is_reported_and_observe_continues(e: &Env) -> Result<()> {
    e.c.apply(&[deny_ingress_in_x()])?;
    let mut obs = e.observe(&["--verdict", "dropped", "--namespace", "x"])?;
    e.see_drop(&mut obs, "x/a", "x/b", "n2")?;
    e.see_drop(&mut obs, "x/b", "x/a", "n1")?;
    e.c.node_agent(1).kill();
    obs.wait_stderr("node n2", Duration::from_secs(15))?;
    let before = obs.seen.len();
    e.see_drop(&mut obs, "x/b", "x/a", "n1")?;
    ensure!(obs.seen[before..].iter().any(|ev| is_drop(ev, "x/b", "x/a", "n1")), "n1 went quiet");
    let v: Value = serde_json::from_str(&e.plugin_ok(&["status", "-o", "json"])?)?;
    let n2 = v["nodes"].as_array().and_then(|n| n.iter().find(|n| n["node"] == "n2")).context("n2")?;
    ensure!(
        n2["problems"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.as_str().is_some_and(|p| p.starts_with("no answer")))),
        "status does not flag n2: {n2:#}"
    );
    // A new agent pod on n2, as a DaemonSet would make it.
    let api = e.api();
    api.delete::<k8s_openapi::api::core::v1::Pod>(Some(AGENT_NS), "palisade-n2");
    let ip = e.c.nodes().context("nodes")?.get("n2").ip4.to_string();
    api.apply_manifests(&agent_pod("palisade-n2-b", "n2", &ip))?;
    api.forward_pod(AGENT_NS, "palisade-n2-b", Some(&e.c.nodes().context("nodes")?.get("n2").netns.name));
    e.c.node_agent(1).spawn("n2", &[])?;
    e.c.wait_in_sync()?;
    obs.wait_stderr("node n2: following again", Duration::from_secs(20))?;
    e.see_drop(&mut obs, "x/a", "x/b", "n2")?;
    api.delete::<k8s_openapi::api::core::v1::Pod>(Some(AGENT_NS), "palisade-n2-b");
    Ok(())
}

/// `kubectl kustomize deploy/` renders, and every object parses as its
/// Kubernetes type; the plugin's RBAC is among them.
fn kustomize_renders_kubernetes_objects(_: &Env) -> Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = Command::new("kubectl").arg("kustomize").arg(&deploy).output().context("running kubectl")?;
    ensure!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| anyhow::anyhow!("kustomize output: {e}"))?;
    fn typed<K: serde::de::DeserializeOwned>(v: &Value) -> Result<K> {
        serde_json::from_value(v.clone()).with_context(|| format!("{}", v["metadata"]["name"]))
    }
    let mut roles = Vec::new();
    for d in docs.iter().filter(|d| !d.is_null()) {
        match (d["apiVersion"].as_str().unwrap_or(""), d["kind"].as_str().unwrap_or("")) {
            ("v1", "Namespace") => drop(typed::<Namespace>(d)?),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(d)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => roles.push(typed::<ClusterRole>(d)?.rules),
            ("rbac.authorization.k8s.io/v1", "Role") => roles.push(typed::<Role>(d)?.rules),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => drop(typed::<ClusterRoleBinding>(d)?),
            ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(d)?),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => drop(typed::<CustomResourceDefinition>(d)?),
            (v, k) => bail!("kustomize renders {v} {k}, which this test does not know"),
        }
    }
    // Port-forward over WebSocket is a GET, and since Kubernetes 1.35 also
    // needs create: the plugin's role grants both.
    let grants = |resource: &str, verb: &str| {
        roles
            .iter()
            .flatten()
            .flatten()
            .any(|r| r.resources.iter().flatten().any(|x| x == resource) && r.verbs.iter().any(|v| v == verb))
    };
    for (resource, verb) in
        [("pods/portforward", "get"), ("pods/portforward", "create"), ("nodes", "list"), ("pods", "list")]
    {
        ensure!(grants(resource, verb), "no role grants {verb} on {resource}");
    }
    Ok(())
}

fn main() {
    palisade_e2e::suite::run::<Env>(vec![
        ("kustomize_renders_kubernetes_objects", kustomize_renders_kubernetes_objects),
        ("status_lists_every_node", status_lists_every_node),
        ("merged_observe_sees_drops_on_either_node", merged_observe_sees_drops_on_either_node),
        ("trace_checks_both_kernels", trace_checks_both_kernels),
        ("a_lost_agent_is_reported_and_observe_continues", a_lost_agent_is_reported_and_observe_continues),
    ]);
}
