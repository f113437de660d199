//! Bad input never weakens enforcement: a manifest that breaks while the
//! agent is down, a 20,000-object file, the namespace audit annotation,
//! manifest paths others could write, and 10,000 mutated manifests fed to
//! a running (and restarted) agent.

use anyhow::{Context, Result, bail, ensure};
use palisade_e2e::agent::{Agent, binary};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::fake_api::FakeApi;
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{NODE, np};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Env(Cluster);

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        Ok(Env(Cluster::start("in", 5, &[])?))
    }

    fn reset(&self) -> Result<()> {
        self.0.reset()
    }
}

fn deny_y() -> String {
    np("y", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]\n")
}

/// x/a may reach y/b on 80; nothing else reaches y.
fn allow_xa_to_yb() -> String {
    np(
        "y",
        "allow-xa",
        "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80}]\n",
    )
}

impl Env {
    fn reaches(&self, from: &str, to: &str) -> bool {
        probe::probe(self.topo.pod(from), self.ip(to), 80, Proto::Tcp)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.agent().state_dir.join(name)
    }

    /// Writes a manifest's bytes atomically (a hidden temporary, renamed).
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.file(&format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.file(name))?;
        Ok(())
    }

    /// Kills the agent, then starts it again; the refusal when it does not start.
    fn respawn(&self, args: &[&str]) -> Result<Option<String>> {
        self.kill();
        Ok(match self.spawn(args) {
            Ok(()) => None,
            Err(e) => {
                // The agent's last words: its stderr is kept across restarts.
                let log = std::fs::read_to_string(&self.agent().stderr)?;
                let last = log.lines().rev().find(|l| l.starts_with("palisade: ")).unwrap_or_default().to_string();
                ensure!(!last.is_empty(), "the agent did not start, and did not say why: {e:#}");
                Some(last)
            }
        })
    }
}

fn errors(st: &Value) -> Vec<Value> {
    st["errors"].as_array().cloned().unwrap_or_default()
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("a_file_broken_while_the_agent_is_down_keeps_its_policy", |e| {
            e.apply(&[deny_y()])?;
            ensure!(!e.reaches("x/a", "y/b"));
            e.kill();
            // Cut inside a quoted string: no YAML reader can take it.
            let text = deny_y();
            let cut = text.find("namespace: \"").context("namespace")? + 12;
            e.write("policy-0.yaml", &text.as_bytes()[..cut])?;
            e.spawn(&[])?;
            let st = e.agent().wait_in_sync()?;
            let file = e.file("policy-0.yaml").display().to_string();
            let errs = errors(&st);
            ensure!(
                errs.iter().any(|x| x["source"] == file.as_str()
                    && x["action"].as_str().is_some_and(|a| a.contains("last good copy, saved in"))),
                "status does not name the broken file and its saved copy: {errs:#?}"
            );
            ensure!(!e.reaches("x/a", "y/b"), "the policy of the broken file must stay in force");
            // Fixed: the new content is in force.
            e.agent().apply("policy-0.yaml", &np("y", "deny-all", "  podSelector: {matchLabels: {pod: c}}\n"))?;
            let st = e.agent().wait_in_sync()?;
            ensure!(errors(&st).is_empty(), "{:#?}\n{}", errors(&st), e.agent().log_tail());
            ensure!(e.reaches("x/a", "y/b"), "the fixed file no longer isolates y/b");
            ensure!(!e.reaches("x/a", "y/c"), "the fixed file isolates y/c");
            Ok(())
        }),
        ("a_20000_object_yaml_file_loads", |e| {
            // Pods of another node and policies of another namespace, then
            // the one policy that decides a probe, last.
            let mut text = String::new();
            for i in 0..10_000u32 {
                text.push_str(&format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: bulk, labels: {{app: a{}}}}}\nspec: {{nodeName: elsewhere, containers: [{{name: c}}]}}\nstatus: {{podIP: 10.201.{}.{}}}\n---\n",
                    i % 50,
                    i / 256,
                    i % 256
                ));
            }
            for i in 0..9_999u32 {
                text.push_str(&np("bulk", &format!("p{i}"), &format!("  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}], ports: [{{port: {}}}]}}]\n", i % 50, (i + 1) % 50, 1000 + i % 5000)));
                text.push_str("---\n");
            }
            text.push_str(&deny_y());
            ensure!(text.matches("\nkind: ").count() == 20_000);
            let started = Instant::now();
            e.agent().apply("extra-bulk.yaml", &text)?;
            // A debug build compiles this in ~10 s on an idle machine: the
            // wait is a hang detector, with room for a loaded one.
            let st = e.agent().wait_in_sync_for(Duration::from_secs(60))?;
            println!("20,000 objects ({} bytes) in force in {:?}", text.len(), started.elapsed());
            ensure!(errors(&st).is_empty(), "{:#?}", errors(&st).first());
            ensure!(!e.reaches("x/a", "y/b"), "the 20,000th object is not in force");
            Ok(())
        }),
        ("namespace_audit_annotation_needs_the_agent_flag", |e| {
            let annotated = e.topo.manifests().replace(
                "metadata: {name: \"y\", labels: {ns: \"y\"}}",
                "metadata: {name: \"y\", labels: {ns: \"y\"}, annotations: {palisade.dev/audit: \"true\"}}",
            );
            ensure!(annotated != e.topo.manifests());
            e.agent().apply("base.yaml", &annotated)?;
            e.agent().apply("policy-0.yaml", &deny_y())?;
            let st = e.agent().wait_in_sync()?;
            let errs = errors(&st);
            ensure!(
                errs.iter().any(|x| x["object"] == "Namespace y"
                    && x["field"] == "metadata.annotations[palisade.dev/audit]"
                    && x["action"].as_str().is_some_and(|a| a.contains("--allow-namespace-audit"))),
                "status does not say the annotation is ignored: {errs:#?}"
            );
            ensure!(!e.reaches("x/a", "y/b"), "an annotation alone must not turn enforcement off");
            e.restart(&["--allow-namespace-audit"])?;
            let result = (|| {
                let st = e.agent().status()?;
                ensure!(errors(&st).is_empty(), "{:#?}", errors(&st));
                let yb =
                    st["pods"].as_array().into_iter().flatten().find(|p| p["namespace"] == "y" && p["name"] == "b");
                ensure!(yb.is_some_and(|p| p["audit"] == true), "status does not show y/b in audit mode: {st}");
                ensure!(e.reaches("x/a", "y/b"), "with the flag, the annotated namespace is in audit mode");
                Ok(())
            })();
            e.restart(&[])?;
            result
        }),
        ("manifest_paths_others_could_write_are_refused", |e| {
            e.apply(&[deny_y()])?;
            let dir = e.agent().state_dir.clone();
            let file = e.file("policy-0.yaml");
            let outside = std::env::temp_dir().join(format!("palisade-e2e-in-outside-{}.yaml", std::process::id()));
            let link = e.file("link.yaml");
            let result = (|| {
                let refused = |what: &Path, how: &str| -> Result<()> {
                    let Some(why) = e.respawn(&[])? else { bail!("the agent started with {} {how}", what.display()) };
                    ensure!(
                        why.contains(&what.display().to_string()),
                        "the refusal does not name {}: {why}",
                        what.display()
                    );
                    ensure!(!e.reaches("x/a", "y/b"), "the pinned policy stays in force while the agent refuses");
                    Ok(())
                };
                chmod(&dir, 0o775)?;
                refused(&dir, "group-writable")?;
                chmod(&dir, 0o755)?;
                chmod(&file, 0o646)?;
                refused(&file, "world-writable")?;
                // Unless told otherwise.
                ensure!(e.respawn(&["--allow-insecure-cluster-state"])?.is_none());
                e.agent().wait_in_sync()?;
                chmod(&file, 0o644)?;
                std::fs::write(&outside, deny_y())?;
                std::os::unix::fs::symlink(&outside, &link)?;
                refused(&link, "a symlink out of the directory")?;
                Ok(())
            })();
            let _ = chmod(&dir, 0o755);
            let _ = chmod(&file, 0o644);
            let _ = std::fs::remove_file(&link);
            let _ = std::fs::remove_file(&outside);
            e.restart(&[])?;
            result
        }),
        ("kube_source_without_a_first_list_keeps_the_pinned_state", |e| {
            // The files agent steps aside, its pinned state with it.
            e.kill();
            Command::new(binary()).args(["uninstall", "--bpffs"]).arg(&e.agent().bpffs).status()?;
            let result = (|| {
                let api = FakeApi::start()?;
                api.apply_manifests(&e.topo.manifests())?;
                api.apply_manifests(&deny_y())?;
                let mut agent = Agent::start_kube("inkube", NODE, api.kubeconfig_path(), &[])?;
                agent.wait_in_sync()?;
                ensure!(!e.reaches("x/a", "y/b"));
                // Restarted while the API server is away: no first list.
                api.stop();
                agent.kill();
                ensure!(agent.spawn(NODE, &[]).is_err(), "the agent came up without a first list");
                let log = std::fs::read_to_string(&agent.stderr)?;
                ensure!(
                    log.contains("still waiting for the first complete list"),
                    "the agent does not say why it waits"
                );
                ensure!(!e.reaches("x/a", "y/b"), "the pinned policy must stay in force until the first list");
                api.restart()?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while agent.status().is_err() {
                    ensure!(Instant::now() < deadline, "no status after the API server came back");
                    std::thread::sleep(Duration::from_millis(100));
                }
                agent.wait_in_sync()?;
                ensure!(!e.reaches("x/a", "y/b"));
                ensure!(e.reaches("x/a", "z/b"));
                Ok(())
            })();
            e.spawn(&[])?;
            e.agent().wait_in_sync()?;
            result
        }),
        ("ten_thousand_mutated_manifests", mutated_manifests),
    ]
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the agent must report about a mutated manifest: the object with
/// the field at fault, or (when the file does not read) the file.
#[derive(Debug)]
enum Expect {
    Object(String),
    File,
}

/// One mutated manifest: its bytes and what must be reported.
struct Mutant {
    bytes: Vec<u8>,
    expect: Expect,
}

/// A rule no API server accepts.
fn bad_rule(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!({"ports": [{"port": 70000}]}),
        1 => json!({"ports": [{"port": -(1 + rng.below(100_000) as i64)}]}),
        2 => json!({"ports": [{"port": "Bad_Name!"}]}),
        3 => json!({"ports": [{"protocol": "ICMP"}]}),
        4 => json!({"ports": [{"port": 90, "endPort": 80}]}),
        5 => {
            let cidr = ["10.0.0.0/33", "not-a-cidr", "300.1.2.3/8", "fd00::/129"][rng.below(4)];
            json!({"from": [{"ipBlock": {"cidr": cidr}}]})
        }
        6 => json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["192.168.0.0/24"]}}]}),
        7 => {
            json!({"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near", "values": ["a"]}]}}]})
        }
        8 => json!({"from": [{"podSelector": {"matchLabels": {"ключ/ü": "wert-ü"}}}]}),
        _ => json!({"ports": [{"port": [80]}]}),
    }
}

/// `policy` with one thing wrong, its namespace and name kept.
fn mutate_policy(mut policy: Value, rng: &mut Rng) -> Mutant {
    let object = format!(
        "NetworkPolicy {}/{}",
        policy["metadata"]["namespace"].as_str().unwrap_or_default(),
        policy["metadata"]["name"].as_str().unwrap_or_default()
    );
    let obj = |policy: &Value| Mutant {
        bytes: serde_json::to_vec(policy).unwrap_or_default(),
        expect: Expect::Object(object.clone()),
    };
    let file = |bytes: Vec<u8>| Mutant { bytes, expect: Expect::File };
    match rng.below(12) {
        0..=3 => {
            policy["spec"]["ingress"] = json!([bad_rule(rng)]);
            obj(&policy)
        }
        4 => {
            policy["spec"]["policyTypes"] = json!(["Sideways"]);
            obj(&policy)
        }
        5 => {
            // 10,000 labels, one of them not a label.
            let mut labels: serde_json::Map<String, Value> =
                (0..10_000).map(|i| (format!("k{i}"), json!("v"))).collect();
            labels.insert("bad key!".into(), json!("v"));
            policy["spec"]["podSelector"] = json!({"matchLabels": labels});
            obj(&policy)
        }
        6 => {
            // Wrong types, missing fields.
            match rng.below(3) {
                0 => policy["spec"]["podSelector"] = json!("everything"),
                1 => policy["spec"] = json!("deny"),
                _ => {
                    policy.as_object_mut().map(|o| o.remove("spec"));
                }
            }
            obj(&policy)
        }
        7 => {
            // Nested far deeper than any object needs.
            let deep = (0..300).fold(json!(1), |v, _| json!([v]));
            policy["spec"]["ingress"] = json!([{"from": deep}]);
            file(serde_json::to_vec(&policy).unwrap_or_default())
        }
        8 => {
            // Duplicate keys.
            let text = serde_json::to_string(&policy).unwrap_or_default();
            file(text.replacen('{', "{\"kind\": \"NetworkPolicy\", ", 1).into_bytes())
        }
        9 => {
            // Not UTF-8.
            let mut bytes = serde_json::to_vec(&policy).unwrap_or_default();
            let at = rng.below(bytes.len());
            bytes.insert(at, 0xff);
            file(bytes)
        }
        _ => {
            // Truncated: a flow mapping cut anywhere never closes.
            let bytes = serde_json::to_vec(&policy).unwrap_or_default();
            let at = 1 + rng.below(bytes.len() - 1);
            file(bytes[..at].to_vec())
        }
    }
}

/// A new object of namespace `m` (no pods) with one thing wrong.
fn mutant_object(name: &str, rng: &mut Rng) -> Mutant {
    let pod = |labels: Value, ip: &str, port: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "m", "labels": labels},
               "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "ports": [port]}]}, "status": {"podIP": ip}})
    };
    let good_port = json!({"name": "http", "containerPort": 80});
    let obj = |v: Value, object: String| Mutant {
        bytes: serde_json::to_vec(&v).unwrap_or_default(),
        expect: Expect::Object(object),
    };
    let pod_key = format!("Pod m/{name}");
    match rng.below(10) {
        0..=3 => {
            let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                "metadata": {"name": name, "namespace": "m"}, "spec": {"podSelector": {}}});
            mutate_policy(policy, rng)
        }
        4 => obj(pod(json!({}), ["999.1.1.1", "10.1.2", "fe80::1::2"][rng.below(3)], good_port), pod_key),
        5 => obj(pod(json!({}), "10.202.0.1", json!({"name": "Bad_Name!", "containerPort": 70000})), pod_key),
        6 => obj(pod(json!({"ключ": "ü".repeat(64)}), "10.202.0.1", good_port), pod_key),
        7 => {
            let ns = format!("Bad_NS-{name}");
            obj(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}), format!("Namespace {ns}"))
        }
        8 => {
            let v = json!({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "annotations": {"palisade.dev/audit": "maybe"}}});
            obj(v, format!("Namespace {name}"))
        }
        _ => {
            let mut v = pod(json!({}), "10.202.0.1", good_port);
            v["metadata"].as_object_mut().map(|m| m.remove("name"));
            obj(v, "Pod m/".into())
        }
    }
}

/// 10,000 mutated manifests, 100 per batch: the two policy files in force
/// broken in place (their namespace and name kept), and 98 new broken
/// objects. After each batch: the agent answers, every bad object is
/// reported with its file, object and field (or the file, when it does not
/// read), and a fixed set of connections the good state denies stays
/// denied. The agent is killed and restarted every 20 batches.
fn mutated_manifests(e: &Env) -> Result<()> {
    const BATCHES: usize = 100;
    const PER_BATCH: usize = 100;
    e.apply(&[deny_y(), allow_xa_to_yb()])?;
    let denied = [("x/b", "y/b"), ("x/a", "y/c"), ("z/a", "y/a"), ("y/a", "y/b")];
    for (from, to) in denied {
        ensure!(!e.reaches(from, to), "{from} -> {to} must be denied by the good state");
    }
    ensure!(e.reaches("x/a", "y/b"));
    let good: Vec<Value> = [deny_y(), allow_xa_to_yb()]
        .iter()
        .map(|t| serde_saphyr::from_str::<Value>(t).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    let mut rng = Rng(0x5eed_2026_0009);
    let (mut files, mut objects, mut reported, mut probes, mut leaks, mut restarts, mut allowed_kept) =
        (0, 0, 0, 0, 0, 0, 0);
    let started = Instant::now();
    for batch in 0..BATCHES {
        let mut expected: Vec<(PathBuf, Expect)> = Vec::new();
        for i in 0..PER_BATCH {
            let (name, m) = match good.get(i) {
                Some(policy) => (format!("policy-{i}.yaml"), mutate_policy(policy.clone(), &mut rng)),
                None => (format!("extra-{i}.yaml"), mutant_object(&format!("m{batch}-{i}"), &mut rng)),
            };
            e.write(&name, &m.bytes)?;
            expected.push((e.file(&name), m.expect));
        }
        if batch % 20 == 19 {
            e.restart(&[])?;
            restarts += 1;
        }
        let st = e.agent().wait_in_sync().with_context(|| format!("batch {batch}: {}", e.agent().log_tail()))?;
        let errs = errors(&st);
        for (path, expect) in &expected {
            let source = path.display().to_string();
            let found = errs.iter().any(|x| {
                x["source"] == source.as_str()
                    && match expect {
                        Expect::File => true,
                        Expect::Object(o) => {
                            x["object"] == o.as_str() && x["field"].as_str().is_some_and(|f| !f.is_empty())
                        }
                    }
            });
            match expect {
                Expect::File => files += 1,
                Expect::Object(_) => objects += 1,
            }
            if found {
                reported += 1;
            } else {
                let about: Vec<&Value> = errs.iter().filter(|x| x["source"] == source.as_str()).collect();
                let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
                    .chars()
                    .take(600)
                    .collect::<String>();
                bail!(
                    "batch {batch}: {source}: expected {expect:?} to be reported; status has {about:#?}\n{text}\n{}",
                    e.agent().log_tail()
                );
            }
        }
        // The fixed probe set, at once (a drop is a timeout).
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = denied
                .iter()
                .map(|&(from, to)| {
                    let sock = probe::socket_in(e.topo.pod(from), false, Proto::Tcp);
                    let to = SocketAddr::new(e.ip(to), 80);
                    s.spawn(move || {
                        sock.is_ok_and(|sock| probe::talk(sock, to, Proto::Tcp, Duration::from_millis(300)))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(true)).collect()
        });
        probes += results.len();
        for (&(from, to), passed) in denied.iter().zip(&results) {
            if *passed {
                leaks += 1;
                eprintln!("batch {batch}: {from} -> {to} got through");
            }
        }
        allowed_kept += usize::from(e.reaches("x/a", "y/b"));
        e.agent().remove_prefixed("extra-")?;
    }
    println!(
        "{} mutated manifests in {BATCHES} batches ({:?}, {restarts} agent restarts): {objects} bad objects and {files} unreadable files, {reported} reported (object and field, or the file); {probes} probes of denied connections, {leaks} got through; x/a -> y/b (allowed by the good state) still allowed after {allowed_kept} of {BATCHES} batches",
        BATCHES * PER_BATCH,
        started.elapsed()
    );
    ensure!(reported == BATCHES * PER_BATCH);
    ensure!(leaks == 0, "{leaks} denied connections got through");
    Ok(())
}

fn main() {
    palisade_e2e::suite::run(cases())
}
