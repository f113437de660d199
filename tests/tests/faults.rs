//! Faults must never open the node: interface discovery that fails or sees
//! only part of the node keeps what is in force and says so, and a policy
//! map too small for the state holds the pods whose entries do not fit
//! closed, while revoked allows still go. Map entries another tool
//! removes are rewritten by the next full resync.

use anyhow::{Context, Result, bail, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::np;
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const METRICS: &str = "127.0.0.1:19471";
/// Policy map entries: the base policies fit, a policy on ten ports from
/// three peers does not.
const POLICY_ENTRIES: &str = "policy=16,policy_ports=16";

struct Env {
    cluster: Cluster,
    /// The agent's interface discovery fails while this file says so.
    fault: PathBuf,
}

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        let fault = std::env::temp_dir().join("palisade-e2e-ft-interfaces-fault");
        let _ = std::fs::remove_file(&fault);
        let fault_arg = fault.to_string_lossy().to_string();
        // A full resync every 2 s, for entries changed behind the agent's
        // back to be rewritten within the test's patience.
        let args = [
            "--metrics-addr",
            METRICS,
            "--map-entries",
            POLICY_ENTRIES,
            "--test-fault-interfaces",
            &fault_arg,
            "--resync",
            "2s",
        ];
        Ok(Env { cluster: Cluster::start("ft", 7, &args)?, fault })
    }

    fn reset(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.fault);
        self.cluster.reset()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fault);
    }
}

fn http_get(path: &str) -> Result<(u16, String)> {
    probe::http_get(METRICS, path)
}

/// The value of the agent's counter `name` (its line in /metrics).
fn counter(name: &str) -> Result<u64> {
    let (_, metrics) = http_get("/metrics")?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in metrics:\n{metrics}"))
}

impl Env {
    /// Polls the agent's status until `done` holds (20 s at most).
    fn status_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.agent().status()?;
            if done(&st) {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("waiting for {what}; status: {st:#}\n{}", self.agent().log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts one probe's verdict; an allowed probe that failed is tried
    /// once more, as [`probe::check`] does (a packet lost under load must
    /// not fail a test), a denied one that connected never is.
    fn expect(&self, from: &str, to: &str, port: u16, allowed: bool) -> Result<()> {
        let once = || probe::probe(self.topo.pod(from), self.ip(to), port, Proto::Tcp);
        let got = once() || (allowed && once());
        ensure!(got == allowed, "{from} -> {to}:{port}: expected {}, got {}", verdict(allowed), verdict(got));
        Ok(())
    }

    /// Makes the agent take another pass (a manifest it reads changes).
    fn nudge(&self, n: u32) -> Result<()> {
        let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"nudge-{n}\"}}\n");
        self.agent().apply("extra-nudge.yaml", &ns)
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "dropped" }
}

fn pod<'a>(st: &'a Value, ns: &str, name: &str) -> Option<&'a Value> {
    st["pods"].as_array().into_iter().flatten().find(|p| p["namespace"] == ns && p["name"] == name)
}

fn state_of(st: &Value, ns: &str, name: &str) -> String {
    pod(st, ns, name).and_then(|p| p["state"].as_str()).unwrap_or("").to_string()
}

/// x/a and x/b take ingress on TCP 80 from y/b only.
fn from_yb(target: &str) -> String {
    np(
        "x",
        &format!("from-yb-{target}"),
        &format!(
            "  podSelector: {{matchLabels: {{pod: {target}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}, namespaceSelector: {{matchLabels: {{ns: \"y\"}}}}}}]\n    ports: [{{protocol: TCP, port: 80}}]\n"
        ),
    )
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("interface_discovery_failure_keeps_enforcement", |e| {
            e.apply(&[from_yb("a")])?;
            e.expect("y/b", "x/a", 80, true)?;
            e.expect("z/c", "x/a", 80, false)?;
            ensure!(http_get("/readyz")?.0 == 200, "ready before the fault");
            for (n, fault) in ["fail", "partial", "routes"].into_iter().enumerate() {
                std::fs::write(&e.fault, fault)?;
                e.nudge(n as u32)?;
                let st = e.status_until(&format!("the {fault} fault reported"), |st| {
                    st["interfaces_error"].as_str().is_some_and(|s| s.contains("interfaces"))
                })?;
                ensure!(st["in_sync"] == false, "{fault}: not in sync while the view is incomplete");
                for p in e.topo.names() {
                    let (ns, name) = p.split_once('/').context("pod id")?;
                    let state = state_of(&st, ns, name);
                    ensure!(state == "enforced", "{fault}: {p} is {state:?}, enforcement must stay");
                }
                // The kernel still judges: nothing was detached or removed.
                e.expect("y/b", "x/a", 80, true)?;
                e.expect("z/c", "x/a", 80, false)?;
                e.expect("x/b", "x/a", 80, false)?;
                let (code, body) = http_get("/readyz")?;
                ensure!(code == 503 && body.contains("interfaces"), "{fault}: readyz: {code} {body}");
                let failures = counter("palisade_interface_discovery_errors_total")?;
                ensure!(failures > 0, "{fault}: the failure is counted");
            }
            // Lifted: the agent retries on its own and catches up.
            std::fs::remove_file(&e.fault)?;
            e.status_until("recovery", |st| st["in_sync"] == true && st["interfaces_error"].is_null())?;
            ensure!(http_get("/readyz")?.0 == 200, "ready again");
            e.expect("y/b", "x/a", 80, true)?;
            e.expect("z/c", "x/a", 80, false)?;
            Ok(())
        }),
        ("full_policy_map_holds_pods_closed_and_drops_revoked_allows", |e| {
            // Both in one file, so that the change below is one rename: a
            // pass that read one file of two would see half of it.
            e.apply(&[format!("{}\n---\n{}", from_yb("a"), from_yb("b"))])?;
            e.expect("y/b", "x/a", 80, true)?;
            e.expect("y/b", "x/b", 80, true)?;
            e.expect("y/c", "x/b", 80, false)?;
            // One change: x/b now takes y/c instead of y/b (it fits), and
            // x/a takes pods c of every namespace on ten ports (3 x 10
            // entries: more than the whole map).
            let ports: Vec<String> = [81u16, 1001, 2001, 3001, 4001, 5001, 6001, 7001, 8001, 9001]
                .iter()
                .map(|p| format!("{{protocol: TCP, port: {p}}}"))
                .collect();
            let too_big = np(
                "x",
                "from-yb-a",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: c}}}}, namespaceSelector: {{}}}}]\n    ports: [{}]\n",
                    ports.join(", ")
                ),
            );
            let yc_to_xb = np(
                "x",
                "from-yb-b",
                "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}, namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n    ports: [{protocol: TCP, port: 80}]\n",
            );
            let agent = e.agent();
            agent.apply("policy-0.yaml", &format!("{too_big}\n---\n{yc_to_xb}"))?;
            let st = e.status_until("x/a held closed", |st| state_of(st, "x", "a").starts_with("held-closed"))?;
            ensure!(st["in_sync"] == false, "not in sync while a pod is held closed");
            ensure!(state_of(&st, "x", "b") == "enforced", "x/b fits: {}", state_of(&st, "x", "b"));
            let errors = st["sync_errors"].to_string();
            ensure!(errors.contains("policy map full"), "the error is reported: {errors}");
            // The revoked allow is gone although the map overflowed, and
            // the new one that fits is in force.
            e.expect("y/b", "x/b", 80, false)?;
            e.expect("y/c", "x/b", 80, true)?;
            // The held pod is closed: neither its old nor its new allows.
            e.expect("y/b", "x/a", 80, false)?;
            e.expect("z/c", "x/a", 81, false)?;
            e.expect("x/b", "x/a", 80, false)?;
            // Not isolated pods are untouched.
            e.expect("y/b", "z/a", 80, true)?;
            let (_, metrics) = http_get("/metrics")?;
            for needle in
                ["palisade_endpoint_held_closed{namespace=\"x\",pod=\"a\"} 1", "palisade_pods{state=\"held-closed\"} 1"]
            {
                ensure!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
            }
            let (code, body) = http_get("/readyz")?;
            ensure!(code == 503 && body.contains("policy map full"), "readyz: {code} {body}");
            // A policy that fits releases the pod.
            agent.apply("policy-0.yaml", &format!("{}\n---\n{yc_to_xb}", from_yb("a")))?;
            let st = e.status_until("x/a released", |st| st["in_sync"] == true)?;
            ensure!(state_of(&st, "x", "a") == "enforced", "x/a: {}", state_of(&st, "x", "a"));
            e.expect("y/b", "x/a", 80, true)?;
            let (_, metrics) = http_get("/metrics")?;
            ensure!(!metrics.contains("palisade_endpoint_held_closed{"), "no pod held any more:\n{metrics}");
            Ok(())
        }),
        ("entries_removed_behind_the_agents_back_are_rewritten_by_the_resync", |e| {
            e.apply(&[from_yb("a")])?;
            e.expect("y/b", "x/a", 80, true)?;
            e.expect("z/c", "x/a", 80, false)?;
            // Another tool removes every endpoint entry: the pods' traffic
            // goes unjudged until the agent's next full resync.
            let pinned = e.agent().bpffs.join(format!("v{}", palisade_common::LAYOUT_VERSION));
            let path = pinned.join(palisade_common::maps::ENDPOINTS);
            let data = aya::maps::MapData::from_pin(&path).with_context(|| path.display().to_string())?;
            let mut endpoints: aya::maps::HashMap<_, u32, palisade_common::Endpoint> =
                aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data)?)?;
            let taken: Vec<(u32, palisade_common::Endpoint)> = endpoints.iter().collect::<Result<_, _>>()?;
            ensure!(!taken.is_empty(), "endpoint entries to remove");
            for (k, _) in &taken {
                endpoints.remove(k)?;
            }
            let st = e.status_until("the drift noticed", |st| st["drift"].as_str().is_some())?;
            let note = st["drift"].as_str().unwrap_or_default();
            ensure!(note.contains(&format!("{} map entries differed", taken.len())), "drift: {note}");
            for (k, v) in &taken {
                ensure!(endpoints.get(k, 0).ok() == Some(*v), "interface {k}'s endpoint entry rewritten as it was");
            }
            e.expect("y/b", "x/a", 80, true)?;
            e.expect("z/c", "x/a", 80, false)?;
            let drifted = counter("palisade_map_drift_total")?;
            ensure!(
                drifted == taken.len() as u64,
                "palisade_map_drift_total {drifted}, {} entries removed",
                taken.len()
            );
            Ok(())
        }),
    ]
}

fn main() {
    palisade_e2e::suite::run(cases());
}
