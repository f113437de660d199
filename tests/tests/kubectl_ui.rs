//! `kubectl palisade ui`: the browser view on this machine fed by every
//! node's agent. Two nodes (network namespaces, an agent each); traffic
//! dropped on each node (ingress on the destination's node); the page,
//! served by the plugin (the palisade binary as `kubectl-palisade`), shows
//! both drops on its flow map and in its event tail, and each node's pods
//! as enforced by their own node's agent. The agents are reached through
//! their unix sockets here (`kubectl palisade` reaches the same protocol
//! through the Kubernetes API's port-forward; tests/tests/kubectl.rs covers
//! that transport).

use anyhow::{Context, Result, bail, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::np;
use palisade_e2e::probe::{self, Proto};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UI: &str = "127.0.0.1:19476";

/// The page's JSON at `path`.
fn get(path: &str) -> Result<Value> {
    let (status, raw) = probe::http_get(UI, path)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    ensure!(status == 200, "GET {path}: {status} {body}");
    serde_json::from_str(body).with_context(|| format!("GET {path}: {body}"))
}

/// Polls until `check` passes on the page's answer at `path`.
fn wait_for(path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(v) = get(path) {
            if check(&v) {
                return Ok(v);
            }
            last = v;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("{what}: not seen within 30 s; last {path}: {last}")
}

struct Plugin(Child, std::path::PathBuf);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn the_cluster_fed_page_shows_drops_on_every_node() -> Result<()> {
    let c = Cluster::start_nodes("ku", 16, 2, &[])?;
    // Every pod of y isolated for ingress: y/b is on n1, y/a on n2.
    let deny = np("y", "deny-in", "  podSelector: {}\n  policyTypes: [Ingress]\n");
    c.apply(std::slice::from_ref(&deny))?;
    let (on1, on2) = (c.topo.pod("y/b"), c.topo.pod("y/a"));
    ensure!(on1.spec.node != on2.spec.node, "y/a and y/b on different nodes");

    // The plugin, with the agents' sockets and the same cluster state.
    let work = std::env::temp_dir().join(format!("palisade-kubectl-ui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("state"))?;
    std::fs::write(work.join("state/base.yaml"), format!("{}---\n{deny}", c.topo.manifests()))?;
    std::os::unix::fs::symlink(palisade_e2e::agent::binary(), work.join("kubectl-palisade"))?;
    let mut cmd = Command::new(work.join("kubectl-palisade"));
    cmd.args(["ui", "--addr", UI, "--cluster-state"]).arg(work.join("state"));
    for pod in [on1, on2] {
        let socket = c.agent_of(&pod.id()).socket.clone();
        cmd.arg("--agent-socket").arg(format!("{}={}", pod.spec.node, socket.display()));
    }
    let child = cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).spawn().context("starting kubectl-palisade ui")?;
    let _plugin = Plugin(child, work.clone());
    wait_for("/api/cluster", "the cluster state", |v| v["pods"].as_array().is_some_and(|p| p.len() == 9))?;

    // x/a (on n1) to y/b (n1) and to y/a (n2): dropped at each target's node.
    for to in [on1, on2] {
        ensure!(
            !probe::probe(c.topo.pod("x/a"), to.ip(false), 80, Proto::Tcp),
            "x/a -> {} connected despite the deny",
            to.id()
        );
    }

    let dropped_to = |v: &Value, target: &str| {
        v["edges"].as_array().into_iter().flatten().any(|e| {
            e["verdict"] == "DROPPED"
                && e["source"] == "x/pod/a"
                && e["target"] == target
                && e["count"].as_u64() > Some(0)
        })
    };
    let flows = wait_for("/api/flows", "a dropped edge to y/a and to y/b", |v| {
        dropped_to(v, "y/pod/a") && dropped_to(v, "y/pod/b")
    })?;
    // The merged record names both nodes' agents.
    ensure!(flows["edges"].as_array().is_some_and(|e| !e.is_empty()));

    // The event tail is the merged stream: both drops, whichever node.
    wait_for("/api/events?verdict=dropped&limit=500", "both drops in the event tail", |v| {
        let to = |pod: &str| {
            v["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["event"]["destination"]["namespace"] == "y" && e["event"]["destination"]["pod"] == pod)
        };
        to("a") && to("b")
    })?;

    // Each pod's enforcement comes from its own node's agent.
    for pod in ["y/a", "y/b"] {
        let p = get(&format!("/api/pod?pod={pod}"))?;
        let state = p["state"].as_str().unwrap_or("");
        ensure!(state.starts_with("enforced"), "{pod}: {p}");
        ensure!(p["ingress"]["isolated"] == true, "{pod}: {p}");
    }

    // Trace through the agents: the deny on y/b's node.
    let t = get("/api/trace?from=x/a&to=y/b&port=80&protocol=TCP")?;
    ensure!(t["trace"]["allowed"] == false && t["trace"]["ingress"]["allowed"] == false, "{t}");
    Ok(())
}
