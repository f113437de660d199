//! `cargo xtask kind-e2e`: palisade in a real cluster. Builds the agent
//! image (deploy/Dockerfile), creates a kind cluster (deploy/kind.yaml:
//! kindnet, one control-plane node and two workers), loads the image,
//! installs deploy/, and runs upstream-style reachability cases: namespaces
//! x, y, z with pods a, b, c spread over the three nodes, agnhost servers on
//! 80 and 81 over TCP and UDP (deploy/kind-e2e/), probed with
//! `kubectl exec ... /agnhost connect` for the full 9x9 matrix. Prints every
//! matrix, reports pass/fail per case, and deletes the cluster at the end
//! unless `--keep`.
//!
//! It needs a Docker engine, kind and kubectl. The commands are built by
//! pure functions, so their sequence is unit-tested where none of those
//! exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use palisade_kit::matrix::comparison;
use palisade_kit::{Matrix, Proto};

use crate::util::{self, cmd, probe, render, target_dir, workspace_root};

/// The kind cluster (also named in deploy/kind.yaml and, through its node
/// names, in deploy/kind-e2e/workload.yaml).
pub const CLUSTER: &str = "palisade-e2e";
/// The agent image: built here, loaded into the nodes, and the image the
/// DaemonSet in deploy/palisade.yaml runs.
pub const IMAGE: &str = "ghcr.io/palisade-net/palisade:dev";
const AGENT_NAMESPACE: &str = "palisade-system";
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=palisade";
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// The container every probe runs in (any of the pod's would do).
const PROBE_CONTAINER: &str = "cont-80-tcp";
/// Attempts at a whole matrix before a case fails: a policy takes a moment
/// to travel from the API server through the agents' watches to the kernel.
const ATTEMPTS: u32 = 3;

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Options {
    /// Keep the cluster afterwards (by default it is deleted, pass or fail).
    #[arg(long)]
    pub keep: bool,
    /// Reuse a running palisade-e2e cluster (e.g. one kept with --keep)
    /// instead of recreating it; the agents restart on the new image.
    #[arg(long)]
    pub reuse: bool,
    /// Do not rebuild the image: load the one the Docker engine has.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(opts: Options) -> Result<()> {
    if let Some(e) = preflight_error(docker_engine(), tool_works("kind", &["version"]), kubectl_works()) {
        bail!("{e}");
    }
    let root = workspace_root();
    let work = target_dir().join("kind-e2e");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let kube = Kube { kubeconfig: work.join("kubeconfig") };
    let exists = cluster_exists()?;

    let _teardown = Teardown { kube: &kube, keep: opts.keep };
    for mut c in setup_plan(&kube, &opts, exists) {
        util::run(&mut c)?;
    }
    let pods = pod_ips(&kube)?;
    eprintln!("\npods:");
    for (id, ip) in &pods {
        eprintln!("  {id:<4} {ip}");
    }

    let mut results = Vec::new();
    for case in cases() {
        eprintln!("\n==> case {}", case.name);
        let passed = run_case(&kube, &root, &work, &case, &pods).unwrap_or_else(|e| {
            eprintln!("case {}: {e:#}", case.name);
            false
        });
        if !passed {
            show_agent_logs(&kube, 40);
        }
        eprintln!("{} {}", if passed { "PASS" } else { "FAIL" }, case.name);
        results.push((case.name, passed));
    }

    eprintln!("\nthe agents' latest log lines (kubectl logs -n {AGENT_NAMESPACE} -l {AGENT_SELECTOR} --prefix):");
    show_agent_logs(&kube, 8);
    eprintln!("\nkind-e2e summary:");
    for (name, passed) in &results {
        eprintln!("  {:<4}  {name}", if *passed { "ok" } else { "FAIL" });
    }
    let failed: Vec<&str> = results.iter().filter(|(_, p)| !p).map(|(n, _)| *n).collect();
    if !failed.is_empty() {
        bail!("kind-e2e: {} of {} cases failed: {}", failed.len(), results.len(), failed.join(", "));
    }
    Ok(())
}

/// What is missing to run at all, as one message; `None` when all is there.
fn preflight_error(docker_engine: bool, kind: bool, kubectl: bool) -> Option<String> {
    let mut missing = Vec::new();
    if !docker_engine {
        missing.push("no Docker engine (`docker info` failed)");
    }
    if !kind {
        missing.push("no `kind` on PATH (https://kind.sigs.k8s.io)");
    }
    if !kubectl {
        missing.push("no `kubectl` on PATH");
    }
    (!missing.is_empty())
        .then(|| format!("{}: kind-e2e needs docker (with a running engine), kind and kubectl", missing.join("; ")))
}

fn tool_works(program: &str, args: &[&str]) -> bool {
    probe(cmd(program).args(args)).is_some()
}

/// The CLI alone is not enough: kind needs a daemon to create nodes in.
fn docker_engine() -> bool {
    tool_works("docker", &["info", "--format", "{{.ServerVersion}}"])
}

fn kubectl_works() -> bool {
    tool_works("kubectl", &["version", "--client"])
}

fn cluster_exists() -> Result<bool> {
    let out = capture(cmd("kind").args(["get", "clusters"]))?;
    Ok(out.lines().any(|l| l.trim() == CLUSTER))
}

/// kubectl and kind with a kubeconfig of their own, so the user's current
/// context is neither used nor changed.
struct Kube {
    kubeconfig: PathBuf,
}

impl Kube {
    fn kubectl(&self) -> Command {
        let mut c = cmd("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// `kind <args> --kubeconfig <ours>` (a flag of kind's subcommands, not
    /// a global one).
    fn kind(&self, args: &[&str]) -> Command {
        let mut c = cmd("kind");
        c.args(args).arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    fn agents(&self) -> Command {
        let mut c = self.kubectl();
        c.args(["-n", AGENT_NAMESPACE]);
        c
    }
}

fn kind_delete(k: &Kube) -> Command {
    k.kind(&["delete", "cluster", "--name", CLUSTER])
}

/// Deletes the cluster when the run ends, however it ends (but Ctrl-C: the
/// next run deletes a leftover cluster before creating its own).
struct Teardown<'a> {
    kube: &'a Kube,
    keep: bool,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "\nkeeping the cluster {CLUSTER}:\n    export KUBECONFIG={}\n    \
                 kind delete cluster --name {CLUSTER}    # when done",
                self.kube.kubeconfig.display()
            );
        } else if let Err(e) = util::run(&mut kind_delete(self.kube)) {
            eprintln!("deleting the cluster: {e:#}");
        }
    }
}

/// Every command from nothing to palisade installed and the x/y/z workload
/// running, in order. Paths are relative to the workspace root (where
/// `cmd` runs them).
fn setup_plan(k: &Kube, opts: &Options, cluster_exists: bool) -> Vec<Command> {
    let mut plan = Vec::new();
    if !opts.no_build {
        let mut c = cmd("docker");
        // BuildKit: the Dockerfile's cache mounts need it.
        c.env("DOCKER_BUILDKIT", "1").args(["build", "-f", "deploy/Dockerfile", "-t", IMAGE, "."]);
        plan.push(c);
    }
    let reuse = opts.reuse && cluster_exists;
    if reuse {
        plan.push(k.kind(&["export", "kubeconfig", "--name", CLUSTER]));
    } else {
        if cluster_exists {
            plan.push(kind_delete(k));
        }
        plan.push(k.kind(&["create", "cluster", "--name", CLUSTER, "--config", "deploy/kind.yaml", "--wait", "180s"]));
    }
    let mut c = cmd("kind");
    c.args(["load", "docker-image", IMAGE, "--name", CLUSTER]);
    plan.push(c);
    let mut c = k.kubectl();
    c.args(["wait", "--for=condition=Ready", "nodes", "--all", "--timeout=180s"]);
    plan.push(c);
    let mut c = k.kubectl();
    c.args(["apply", "-k", "deploy"]);
    plan.push(c);
    if reuse {
        // Same tag, new image: the pods must restart to run it.
        let mut c = k.agents();
        c.args(["rollout", "restart", "daemonset/palisade"]);
        plan.push(c);
    }
    let mut c = k.agents();
    c.args(["rollout", "status", "daemonset/palisade", "--timeout=300s"]);
    plan.push(c);
    let mut c = k.kubectl();
    c.args(["apply", "-f", "deploy/kind-e2e/workload.yaml"]);
    plan.push(c);
    for ns in NAMESPACES {
        let mut c = k.kubectl();
        c.args(["wait", "-n", ns, "--for=condition=Ready", "pods", "--all", "--timeout=300s"]);
        plan.push(c);
    }
    plan
}

/// `<ns>/<pod>` -> pod IP for the nine workload pods, in x/a..z/c order.
fn pod_ips(k: &Kube) -> Result<Vec<(String, String)>> {
    let out = capture(
        k.kubectl()
            .args(["get", "pods", "-A", "-l", "pod", "-o"])
            .arg("jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {.status.podIP}{\"\\n\"}{end}"),
    )?;
    parse_pod_ips(&out)
}

fn parse_pod_ips(out: &str) -> Result<Vec<(String, String)>> {
    let found: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.trim().split_once(' ')).collect();
    pod_ids()
        .into_iter()
        .map(|id| match found.get(id.as_str()) {
            Some(ip) if !ip.is_empty() => Ok((id.clone(), ip.to_string())),
            _ => bail!("pod {id} has no IP yet:\n{out}"),
        })
        .collect()
}

fn pod_ids() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

fn ns_of(id: &str) -> &str {
    id.split_once('/').map_or(id, |(ns, _)| ns)
}

/// One matrix to check: every pod to every pod on `port`/`proto`.
struct Check {
    port: u16,
    proto: Proto,
    /// Whether `from` may reach `to` (pod ids `ns/name`). A pod reaching
    /// itself never leaves its network namespace, so the diagonal is always
    /// reachable, whatever this says.
    allowed: fn(&str, &str) -> bool,
}

struct Case {
    name: &'static str,
    /// File in deploy/kind-e2e/ with the case's NetworkPolicies; `None`: no
    /// policy at all. `@IP:<ns>/<pod>@` is replaced with that pod's IP.
    policies: Option<&'static str>,
    checks: Vec<Check>,
    /// Then delete every agent pod and check again while the DaemonSet
    /// brings them back (enforcement is pinned: no gap), and once they are
    /// back.
    restart_agents: bool,
}

fn cases() -> Vec<Case> {
    let tcp = |port, allowed| Check { port, proto: Proto::Tcp, allowed };
    vec![
        Case { name: "no_policies", policies: None, checks: vec![tcp(80, |_, _| true)], restart_agents: false },
        Case {
            name: "default_deny_ingress",
            policies: Some("default-deny-ingress.yaml"),
            checks: vec![
                tcp(80, |_, to| ns_of(to) != "x"),
                Check { port: 80, proto: Proto::Udp, allowed: |_, to| ns_of(to) != "x" },
            ],
            restart_agents: false,
        },
        Case {
            name: "allow_from_namespace_y",
            policies: Some("allow-from-y.yaml"),
            checks: vec![tcp(80, |from, to| ns_of(to) != "x" || ns_of(from) == "y")],
            restart_agents: false,
        },
        Case {
            name: "default_deny_egress",
            policies: Some("default-deny-egress.yaml"),
            checks: vec![tcp(80, |from, _| ns_of(from) != "x")],
            restart_agents: false,
        },
        Case {
            name: "ingress_on_named_port",
            policies: Some("named-port.yaml"),
            checks: vec![tcp(80, |_, to| to != "x/a"), tcp(81, |_, _| true)],
            restart_agents: false,
        },
        Case {
            name: "egress_ip_block_except",
            policies: Some("ipblock-except.yaml"),
            checks: vec![tcp(80, |from, to| !(from == "x/a" && to == "y/b"))],
            restart_agents: false,
        },
        Case {
            name: "agent_restart_keeps_enforcement",
            policies: Some("default-deny-ingress.yaml"),
            checks: vec![tcp(80, |_, to| ns_of(to) != "x")],
            restart_agents: true,
        },
    ]
}

/// Replaces every `@IP:<ns>/<pod>@` with the pod's IP.
fn substitute(text: &str, pods: &[(String, String)]) -> Result<String> {
    let mut out = text.to_string();
    for (id, ip) in pods {
        out = out.replace(&format!("@IP:{id}@"), ip);
    }
    if let Some(at) = out.find("@IP:") {
        let rest = &out[at..];
        bail!("unknown placeholder {}", rest.split_whitespace().next().unwrap_or(rest));
    }
    Ok(out)
}

fn run_case(k: &Kube, root: &Path, work: &Path, case: &Case, pods: &[(String, String)]) -> Result<bool> {
    for ns in NAMESPACES {
        util::run(k.kubectl().args(["delete", "networkpolicies", "--all", "-n", ns]))?;
    }
    if let Some(file) = case.policies {
        let src = root.join("deploy/kind-e2e").join(file);
        let text = std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        let rendered = work.join(file);
        std::fs::write(&rendered, substitute(&text, pods)?)
            .with_context(|| format!("writing {}", rendered.display()))?;
        util::run(k.kubectl().arg("apply").arg("-f").arg(&rendered))?;
    }
    wait_agents_in_sync(k)?;
    let mut passed = true;
    for check in &case.checks {
        passed &= check_matrix(k, pods, check, ATTEMPTS, "");
    }
    if case.restart_agents {
        util::run(k.agents().args(["delete", "pods", "-l", AGENT_SELECTOR, "--wait=false"]))?;
        // Once, no retry: any allowed packet that policy denies here is a gap.
        for check in &case.checks {
            passed &= check_matrix(k, pods, check, 1, " while the agents restart");
        }
        util::run(k.agents().args(["rollout", "status", "daemonset/palisade", "--timeout=300s"]))?;
        wait_agents_in_sync(k)?;
        for check in &case.checks {
            passed &= check_matrix(k, pods, check, ATTEMPTS, " after the restart");
        }
    }
    Ok(passed)
}

/// Waits until every agent's kernel state matches what it has read from
/// the API (`palisade status --wait`). An agent whose watch has not yet
/// delivered the change is "in sync" with the old state: `check_matrix`
/// retries for that.
fn wait_agents_in_sync(k: &Kube) -> Result<()> {
    let names = capture(k.agents().args(["get", "pods", "-l", AGENT_SELECTOR, "-o", "name"]))?;
    for pod in names.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut c = status_wait_command(k, pod);
        capture(&mut c).with_context(|| format!("{pod} never got in sync"))?;
    }
    Ok(())
}

fn status_wait_command(k: &Kube, pod: &str) -> Command {
    let mut c = k.agents();
    c.args(["exec", pod, "-c", "agent", "--", "palisade", "status", "--wait", "--timeout", "60s", "-o", "json"]);
    c
}

/// Probes the matrix (up to `attempts` times until it matches) and prints
/// it; true when it matched.
fn check_matrix(k: &Kube, pods: &[(String, String)], check: &Check, attempts: u32, when: &str) -> bool {
    let expected = Matrix::expected(&pod_ids(), check.allowed);
    let title = format!("{}/{}{when}", check.proto, check.port);
    let mut observed = probe_matrix(k, pods, check.port, check.proto);
    for attempt in 2..=attempts {
        if observed == expected {
            break;
        }
        eprintln!("{title}: {} cells differ, probing again ({attempt}/{attempts})", expected.mismatches(&observed));
        std::thread::sleep(Duration::from_secs(3));
        observed = probe_matrix(k, pods, check.port, check.proto);
    }
    let ok = observed == expected;
    eprintln!("\n{}", comparison(&title, &expected, &observed));
    ok
}

/// What one `agnhost connect` said.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Connected,
    /// Timed out, refused or unreachable: agnhost's own verdict.
    Blocked,
    /// kubectl or the exec failed: no verdict.
    Error(String),
}

/// Upstream's probe: `kubectl exec` into the source pod, `/agnhost connect`
/// to the destination with a one second timeout.
fn probe_command(k: &Kube, from: &str, to_ip: &str, port: u16, proto: Proto) -> Command {
    let (ns, pod) = from.split_once('/').unwrap_or(("default", from));
    let target = if to_ip.contains(':') { format!("[{to_ip}]:{port}") } else { format!("{to_ip}:{port}") };
    let mut c = k.kubectl();
    c.args(["exec", "-n", ns, pod, "-c", PROBE_CONTAINER, "--", "/agnhost", "connect", &target])
        .args(["--timeout=1s", &format!("--protocol={}", proto.lower())]);
    c
}

/// agnhost connect exits 0 when connected, and otherwise prints one of its
/// fixed prefixes on stderr (TIMEOUT, REFUSED, OTHER; UNKNOWN and DNS mean
/// a broken probe); kubectl adds its own errors when the exec itself fails.
fn classify(success: bool, stderr: &str) -> Outcome {
    if success {
        return Outcome::Connected;
    }
    if stderr.lines().any(|l| ["TIMEOUT", "REFUSED", "OTHER"].iter().any(|p| l.trim_start().starts_with(p))) {
        return Outcome::Blocked;
    }
    Outcome::Error(stderr.trim().to_string())
}

fn probe_once(k: &Kube, from: &str, to_ip: &str, port: u16, proto: Proto) -> Outcome {
    // An exec that fails for reasons of its own (API hiccup) is retried; a
    // verdict is not.
    let mut last = Outcome::Error(String::new());
    for _ in 0..3 {
        let out = probe_command(k, from, to_ip, port, proto).stdin(Stdio::null()).output();
        last = match out {
            Ok(o) => classify(o.status.success(), &String::from_utf8_lossy(&o.stderr)),
            Err(e) => Outcome::Error(format!("running kubectl: {e}")),
        };
        if !matches!(last, Outcome::Error(_)) {
            break;
        }
    }
    last
}

/// Every pod to every pod, nine sources in parallel.
fn probe_matrix(k: &Kube, pods: &[(String, String)], port: u16, proto: Proto) -> Matrix {
    let names: Vec<String> = pods.iter().map(|(id, _)| id.clone()).collect();
    let rows: Vec<Vec<Option<bool>>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(from, _)| {
                s.spawn(move || {
                    pods.iter()
                        .map(|(to, ip)| match probe_once(k, from, ip, port, proto) {
                            Outcome::Connected => Some(true),
                            Outcome::Blocked => Some(false),
                            Outcome::Error(e) => {
                                eprintln!("probe {from} -> {to} {}/{port}: {e}", proto.lower());
                                None
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| vec![None; pods.len()])).collect()
    });
    Matrix::from_rows(&names, rows)
}

fn show_agent_logs(k: &Kube, lines: u32) {
    let mut c = k.agents();
    c.args(["logs", "-l", AGENT_SELECTOR, "-c", "agent", "--prefix", &format!("--tail={lines}")]);
    let _ = util::run(&mut c);
}

/// Runs `c` quietly and returns its stdout; on failure the error carries
/// the command line and its stderr.
fn capture(c: &mut Command) -> Result<String> {
    let line = render(c);
    let Output { status, stdout, stderr } =
        c.stdin(Stdio::null()).output().with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status}): {}", String::from_utf8_lossy(&stderr).trim());
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube() -> Kube {
        Kube { kubeconfig: PathBuf::from("/t/kind-e2e/kubeconfig") }
    }

    fn rendered(plan: &[Command]) -> Vec<String> {
        plan.iter().map(render).collect()
    }

    fn deploy_file(path: &str) -> String {
        let p = workspace_root().join("deploy").join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The workload's server image (deploy/kind-e2e/workload.yaml).
    const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
    const K: &str = "kubectl --kubeconfig /t/kind-e2e/kubeconfig";
    const KC: &str = "--kubeconfig /t/kind-e2e/kubeconfig";

    #[test]
    fn fresh_cluster_plan() {
        let plan = rendered(&setup_plan(&kube(), &Options::default(), false));
        let expected = [
            "DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile -t ghcr.io/palisade-net/palisade:dev .".to_string(),
            format!("kind create cluster --name palisade-e2e --config deploy/kind.yaml --wait 180s {KC}"),
            "kind load docker-image ghcr.io/palisade-net/palisade:dev --name palisade-e2e".to_string(),
            format!("{K} wait --for=condition=Ready nodes --all --timeout=180s"),
            format!("{K} apply -k deploy"),
            format!("{K} -n palisade-system rollout status daemonset/palisade --timeout=300s"),
            format!("{K} apply -f deploy/kind-e2e/workload.yaml"),
            format!("{K} wait -n x --for=condition=Ready pods --all --timeout=300s"),
            format!("{K} wait -n y --for=condition=Ready pods --all --timeout=300s"),
            format!("{K} wait -n z --for=condition=Ready pods --all --timeout=300s"),
        ];
        assert_eq!(plan, expected);
    }

    #[test]
    fn leftover_cluster_is_recreated_unless_reused() {
        let plan = rendered(&setup_plan(&kube(), &Options { no_build: true, ..Default::default() }, true));
        assert_eq!(plan[0], format!("kind delete cluster --name palisade-e2e {KC}"));
        assert!(plan[1].starts_with("kind create cluster"), "{plan:?}");
        assert!(!plan.iter().any(|c| c.contains("docker build")), "--no-build still builds: {plan:?}");
        assert!(!plan.iter().any(|c| c.contains("rollout restart")), "{plan:?}");

        let plan = rendered(&setup_plan(&kube(), &Options { reuse: true, ..Default::default() }, true));
        assert!(plan[0].contains("docker build"), "{plan:?}");
        assert_eq!(plan[1], format!("kind export kubeconfig --name palisade-e2e {KC}"));
        assert!(!plan.iter().any(|c| c.contains("delete cluster") || c.contains("create cluster")), "{plan:?}");
        let restart = plan.iter().position(|c| c.contains("rollout restart daemonset/palisade")).expect("restart");
        let status = plan.iter().position(|c| c.contains("rollout status daemonset/palisade")).expect("status");
        let load = plan.iter().position(|c| c.contains("load docker-image")).expect("load");
        assert!(load < restart && restart < status, "{plan:?}");

        // --reuse without a cluster to reuse creates one.
        let plan = rendered(&setup_plan(&kube(), &Options { reuse: true, ..Default::default() }, false));
        assert!(plan.iter().any(|c| c.contains("create cluster")), "{plan:?}");
    }

    #[test]
    fn teardown_and_probe_commands() {
        assert_eq!(render(&kind_delete(&kube())), format!("kind delete cluster --name palisade-e2e {KC}"));
        assert_eq!(
            render(&probe_command(&kube(), "x/a", "10.244.1.5", 80, Proto::Tcp)),
            format!("{K} exec -n x a -c cont-80-tcp -- /agnhost connect 10.244.1.5:80 --timeout=1s --protocol=tcp")
        );
        assert_eq!(
            render(&probe_command(&kube(), "z/c", "fd00:10:244::5", 81, Proto::Udp)),
            format!(
                "{K} exec -n z c -c cont-80-tcp -- /agnhost connect '[fd00:10:244::5]:81' --timeout=1s --protocol=udp"
            )
        );
        assert_eq!(
            render(&status_wait_command(&kube(), "pod/palisade-abcde")),
            format!(
                "{K} -n palisade-system exec pod/palisade-abcde -c agent -- palisade status --wait --timeout 60s -o json"
            )
        );
    }

    #[test]
    fn preflight_names_what_is_missing() {
        assert_eq!(preflight_error(true, true, true), None);
        let e = preflight_error(false, true, true).expect("error");
        assert!(e.starts_with("no Docker engine"), "{e}");
        assert!(e.contains("kind-e2e needs docker (with a running engine), kind and kubectl"), "{e}");
        let e = preflight_error(true, false, false).expect("error");
        assert!(e.contains("no `kind`") && e.contains("no `kubectl`") && !e.contains("Docker"), "{e}");
    }

    #[test]
    fn agnhost_outcomes() {
        assert_eq!(classify(true, ""), Outcome::Connected);
        assert_eq!(classify(false, "TIMEOUT\ncommand terminated with exit code 1\n"), Outcome::Blocked);
        assert_eq!(classify(false, "REFUSED\ncommand terminated with exit code 1\n"), Outcome::Blocked);
        assert_eq!(
            classify(false, "TIMEOUT: read udp 10.244.1.5:4000->10.244.2.7:80: i/o timeout\n"),
            Outcome::Blocked
        );
        assert_eq!(classify(false, "OTHER: dial tcp: connect: no route to host\n"), Outcome::Blocked);
        assert!(matches!(
            classify(false, "error: unable to upgrade connection: container not found"),
            Outcome::Error(_)
        ));
        assert!(matches!(classify(false, "UNKNOWN: missing port in address"), Outcome::Error(_)));
    }

    #[test]
    fn pod_ips_parse_and_order() {
        let out = "z/c 10.244.2.9\nx/a 10.244.0.5\nx/b 10.244.1.5\nx/c 10.244.2.5\ny/a 10.244.0.6\n\
                   y/b 10.244.1.6\ny/c 10.244.2.6\nz/a 10.244.0.7\nz/b 10.244.1.7\nkube-system/x 10.0.0.1\n";
        let pods = parse_pod_ips(out).expect("parse");
        assert_eq!(pods.len(), 9);
        assert_eq!(pods[0], ("x/a".to_string(), "10.244.0.5".to_string()));
        assert_eq!(pods[8], ("z/c".to_string(), "10.244.2.9".to_string()));
        let e = parse_pod_ips("x/a 10.244.0.5\nx/b \n").expect_err("missing pods");
        assert!(e.to_string().contains("x/b has no IP"), "{e}");
    }

    #[test]
    fn expected_matrices() {
        let names = pod_ids();
        let at = |m: &Matrix, from: &str, to: &str| {
            let i = names.iter().position(|n| n == from).expect("from");
            let j = names.iter().position(|n| n == to).expect("to");
            m.at(i, j)
        };
        let cases = cases();
        let case = |name: &str| cases.iter().find(|c| c.name == name).expect("case");

        let deny_in = Matrix::expected(&names, case("default_deny_ingress").checks[0].allowed);
        assert_eq!(at(&deny_in, "y/a", "x/b"), Some(false));
        assert_eq!(at(&deny_in, "x/a", "x/b"), Some(false));
        assert_eq!(at(&deny_in, "x/a", "x/a"), Some(true), "a pod always reaches itself");
        assert_eq!(at(&deny_in, "x/a", "y/b"), Some(true));
        assert_eq!(deny_in.count(Some(false)), 9 * 3 - 3);

        let from_y = Matrix::expected(&names, case("allow_from_namespace_y").checks[0].allowed);
        assert_eq!(at(&from_y, "y/c", "x/a"), Some(true));
        assert_eq!(at(&from_y, "z/c", "x/a"), Some(false));
        assert_eq!(at(&from_y, "x/b", "x/a"), Some(false));

        let deny_out = Matrix::expected(&names, case("default_deny_egress").checks[0].allowed);
        assert_eq!(at(&deny_out, "x/a", "y/a"), Some(false));
        assert_eq!(at(&deny_out, "y/a", "x/a"), Some(true));

        let named = case("ingress_on_named_port");
        assert_eq!((named.checks[0].port, named.checks[1].port), (80, 81));
        let named80 = Matrix::expected(&names, named.checks[0].allowed);
        assert_eq!(at(&named80, "x/b", "x/a"), Some(false));
        assert_eq!(at(&named80, "x/b", "x/c"), Some(true));
        let named81 = Matrix::expected(&names, named.checks[1].allowed);
        assert_eq!(named81.count(Some(true)), 81);

        let except = Matrix::expected(&names, case("egress_ip_block_except").checks[0].allowed);
        assert_eq!(except.count(Some(false)), 1);
        assert_eq!(at(&except, "x/a", "y/b"), Some(false));

        assert!(cases.iter().filter(|c| c.restart_agents).count() == 1);
    }

    #[test]
    fn placeholders() {
        let pods = vec![("y/b".to_string(), "10.244.1.6".to_string())];
        assert_eq!(substitute("except: [\"@IP:y/b@/32\"]", &pods).expect("ok"), "except: [\"10.244.1.6/32\"]");
        let e = substitute("cidr: @IP:q/q@/32", &pods).expect_err("unknown pod");
        assert!(e.to_string().contains("@IP:q/q@/32"), "{e}");
    }

    /// The files the run reads exist, fill in, and agree with the constants
    /// here (image, cluster and node names, agnhost).
    #[test]
    fn deploy_files_agree() {
        let all_pods: Vec<(String, String)> = pod_ids().into_iter().map(|id| (id, "10.0.0.1".to_string())).collect();
        for case in cases() {
            if let Some(file) = case.policies {
                let text = deploy_file(&format!("kind-e2e/{file}"));
                let filled = substitute(&text, &all_pods).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert!(filled.contains("kind: NetworkPolicy"), "{file}");
            }
        }
        let daemonset = deploy_file("palisade.yaml");
        let images: Vec<&str> =
            daemonset.lines().filter_map(|l| l.trim().strip_prefix("image: ")).map(str::trim).collect();
        assert!(!images.is_empty());
        assert!(images.iter().all(|i| *i == IMAGE), "deploy/palisade.yaml runs {images:?}, kind-e2e loads {IMAGE}");
        assert!(deploy_file("kind.yaml").lines().any(|l| l.trim() == format!("name: {CLUSTER}")));
        let workload = deploy_file("kind-e2e/workload.yaml");
        for node in ["control-plane", "worker", "worker2"] {
            assert!(workload.contains(&format!("kubernetes.io/hostname: {CLUSTER}-{node}}}")), "{node}");
        }
        assert!(workload.lines().filter(|l| l.contains("image:")).all(|l| l.trim() == format!("image: {AGNHOST}")));
        assert!(workload.contains(&format!("- name: {PROBE_CONTAINER}\n")));
        let kustomization = deploy_file("kustomization.yaml");
        assert!(kustomization.contains("  - palisade.yaml\n"));
    }
}
