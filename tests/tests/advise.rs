//! `palisade advise` end to end: a small shop (frontend, api, db, coredns
//! and an external host) talks in a fixed pattern with no policy; the
//! agent's flow record is exported and advised on; the advice, applied,
//! lets exactly that pattern through (workload by workload) and blocks
//! every other pair, TCP and UDP, with real packets. Advice over the
//! record split in two (as two nodes would hold it) is the same.

use anyhow::{Context, Result, bail, ensure};
use palisade::flows::Snapshot;
use palisade_e2e::agent::binary;
use palisade_e2e::cluster::Cluster;
use palisade_e2e::probe::{self, Matrix, Proto};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The topology's pods as the shop: (pod id, role).
const ROLES: [(&str, &str); 6] =
    [("x/a", "frontend"), ("x/b", "frontend"), ("x/c", "api"), ("y/a", "db"), ("z/a", "dns"), ("z/c", "external")];

/// The pattern, by role: (from, to, protocol, port).
const PATTERN: [(&str, &str, Proto, u16); 5] = [
    ("frontend", "api", Proto::Tcp, 80),
    ("frontend", "api", Proto::Udp, 81),
    ("api", "db", Proto::Tcp, 81),
    ("api", "external", Proto::Tcp, 80),
    ("external", "frontend", Proto::Tcp, 80),
];

fn role(pod: &str) -> &'static str {
    ROLES.iter().find(|(p, _)| *p == pod).map(|(_, r)| *r).expect("a shop pod")
}

/// Allowed by the pattern (or DNS, which every shop pod uses).
fn allowed(from: &str, to: &str, proto: Proto, port: u16) -> bool {
    let (f, t) = (role(from), role(to));
    PATTERN.iter().any(|&(pf, pt, pp, port2)| pf == f && pt == t && pp == proto && port2 == port)
        || (t == "dns" && port == 53 && !matches!(f, "dns" | "external"))
}

/// Namespaces and pods of the shop on the topology's addresses; z/c (the
/// external host) is no pod of the cluster.
fn manifests(c: &Cluster) -> String {
    let pod = |id: &str, ns: &str, name: &str, labels: &str, owner: (&str, &str), ports: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}, ownerReferences: [{{apiVersion: apps/v1, kind: {}, name: {}, uid: u-{name}, controller: true}}]}}\nspec: {{nodeName: {}, containers: [{{name: c, ports: [{ports}]}}]}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n",
            owner.0,
            owner.1,
            palisade_e2e::NODE,
            ip = c.ip(id)
        )
    };
    let mut m = String::new();
    for ns in ["shop", "data", "kube-system"] {
        m += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    }
    let fe = "app: frontend, pod-template-hash: 7d9f8";
    m += &pod(
        "x/a",
        "shop",
        "frontend-7d9f8-aaaaa",
        fe,
        ("ReplicaSet", "frontend-7d9f8"),
        "{name: web, containerPort: 80}",
    );
    m += &pod(
        "x/b",
        "shop",
        "frontend-7d9f8-bbbbb",
        fe,
        ("ReplicaSet", "frontend-7d9f8"),
        "{name: web, containerPort: 80}",
    );
    m += &pod(
        "x/c",
        "shop",
        "api-5c6d7-ccccc",
        "app: api, pod-template-hash: 5c6d7",
        ("ReplicaSet", "api-5c6d7"),
        "{name: http, containerPort: 80}, {name: metrics, containerPort: 81, protocol: UDP}",
    );
    m += &pod(
        "y/a",
        "data",
        "db-0",
        "app: db, controller-revision-hash: db-6f7, statefulset.kubernetes.io/pod-name: db-0",
        ("StatefulSet", "db"),
        "{name: pg, containerPort: 81}",
    );
    m += &pod(
        "z/a",
        "kube-system",
        "coredns-6b8c9-ddddd",
        "k8s-app: kube-dns, pod-template-hash: 6b8c9",
        ("ReplicaSet", "coredns-6b8c9"),
        "{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}",
    );
    m
}

/// DNS on coredns: TCP and UDP echo on port 53.
fn serve_dns(c: &Cluster) -> Result<()> {
    let ns = &c.topo.pod("z/a").netns;
    let tcp = ns.run(|| std::net::TcpListener::bind(("::", 53)))?;
    let udp = ns.run(|| std::net::UdpSocket::bind(("::", 53)))?;
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    Ok(())
}

/// Sends the pattern: every pod pair it names, each probe answered.
fn talk(c: &Cluster) -> Result<()> {
    for (from, _) in ROLES {
        for (to, _) in ROLES {
            for (proto, port) in
                [(Proto::Tcp, 80), (Proto::Udp, 81), (Proto::Tcp, 81), (Proto::Udp, 53), (Proto::Tcp, 53)]
            {
                if from != to && allowed(from, to, proto, port) {
                    ensure!(
                        probe::probe(c.topo.pod(from), c.ip(to), port, proto),
                        "{from} -> {to} {proto}/{port} did not pass with no policy"
                    );
                }
            }
        }
    }
    Ok(())
}

fn palisade(args: &[&str]) -> Result<(String, String)> {
    let out = Command::new(binary()).args(args).output()?;
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    if !out.status.success() {
        bail!("palisade {}: {stderr}", args.join(" "));
    }
    Ok((stdout, stderr))
}

fn advise(state: &Path, files: &[&Path], extra: &[&str]) -> Result<(String, String)> {
    let mut args = vec!["advise".to_string(), "--cluster-state".into(), state.display().to_string(), "--flows".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    palisade(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn advice_from_recorded_flows_lets_exactly_the_pattern_through() -> Result<()> {
    // Saved every second, so a crash loses at most a second of it.
    let args = ["--flow-save-interval", "1s"];
    let c = Cluster::start("ad", 12, &args)?;
    let agent = c.agent();
    agent.apply("base.yaml", &manifests(&c))?;
    let st = agent.wait_in_sync()?;
    ensure!(st["errors"].as_array().is_none_or(|e| e.is_empty()), "the shop does not validate: {}", st["errors"]);
    serve_dns(&c)?;

    // Observe: the pattern with no policy at all (no pod is isolated).
    talk(&c)?;
    // The record is read once it holds the last flows talk() sent (the
    // external host to both frontend pods): events reach it in order, so
    // then it holds them all. A fixed pause read it early once in CI, and
    // the advice lacked that rule.
    let socket = agent.socket.display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (json, record) = loop {
        let (json, _) = palisade(&["flows", "-o", "json", "--socket", &socket])?;
        let record: Snapshot = serde_json::from_str(&json).context("flows -o json")?;
        let last = record.flows.iter().any(|f| {
            f.key.workload.name == "frontend"
                && f.key.direction.to_string() == "ingress"
                && f.key.protocol == "TCP"
                && f.key.port == Some(80)
                && f.stats.count >= 2
        });
        if last {
            break (json, record);
        }
        ensure!(std::time::Instant::now() < deadline, "the record never held external -> frontend TCP/80:\n{json}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let fe_api = record.flows.iter().find(|f| {
        f.key.workload.name == "frontend"
            && f.key.direction.to_string() == "egress"
            && f.key.port_name.as_deref() == Some("http")
    });
    ensure!(fe_api.is_some_and(|f| f.stats.count >= 2), "no frontend -> api http flow of two pods in {json}");
    let (text, _) = palisade(&["flows", "--socket", &socket])?;
    ensure!(text.contains("shop/deployment/frontend"), "{text}");

    let work = std::env::temp_dir().join(format!("palisade-e2e-advise-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let all = work.join("all.json");
    std::fs::write(&all, &json)?;

    // Advise, as one node's record and split as two nodes' records.
    let (yaml, stderr) = advise(&agent.state_dir, &[&all], &[])?;
    let n = record.flows.iter().filter(|f| f.key.protocol != "ICMP" && f.key.protocol != "ICMPv6").count();
    ensure!(yaml.contains(&format!("# {n} of {n} observed flows allowed")), "{stderr}\n{yaml}");
    ensure!(!yaml.contains("pod-template-hash") && !yaml.contains("db-0"), "{yaml}");
    let split: Vec<PathBuf> = (0..2)
        .map(|half| -> Result<PathBuf> {
            let mut s = record.clone();
            s.flows.retain(|f| (f.key.namespace == "shop") == (half == 0));
            s.node = format!("{}{}", palisade_e2e::NODE, if half == 0 { "" } else { "-b" });
            let p = work.join(format!("half{half}.json"));
            std::fs::write(&p, serde_json::to_string(&s)?)?;
            Ok(p)
        })
        .collect::<Result<_>>()?;
    let (yaml2, _) = advise(&agent.state_dir, &[&split[0], &split[1]], &[])?;
    ensure!(yaml2 == yaml, "two records give other advice than one:\n{yaml2}\n---- one record:\n{yaml}");

    // What a change would break, before it goes in.
    let deny_db = work.join("deny-db.yaml");
    std::fs::write(
        &deny_db,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: data}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )?;
    let (check, _) = advise(&agent.state_dir, &[&all], &["--check", &deny_db.display().to_string()])?;
    ensure!(
        check.contains("1 newly denied") && check.contains("data/statefulset/db <- shop/deployment/api TCP/81 (pg)"),
        "{check}"
    );

    // Enforce the advice: the pattern passes, nothing else does.
    agent.apply("policy-advice.yaml", &yaml)?;
    let st = agent.wait_in_sync()?;
    ensure!(st["errors"].as_array().is_none_or(|e| e.is_empty()), "the advice does not validate: {}", st["errors"]);
    let pods: Vec<_> = ROLES.iter().map(|(p, _)| c.topo.pod(p)).collect();
    let names: Vec<String> = pods.iter().map(|p| p.id()).collect();
    let mut failures = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        for port in [53, 80, 81] {
            // Only coredns serves 53.
            let mut expected =
                Matrix::expected(&names, |f, t| allowed(f, t, proto, port) && (port != 53 || t == "z/a"));
            if port == 53 {
                for p in names.iter().filter(|p| *p != "z/a") {
                    expected.set(p, p, false); // nothing there to answer
                }
            }
            if let Err(e) = probe::check(&pods, port, proto, false, &expected) {
                failures.push(e);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if !failures.is_empty() {
        bail!("{}\nthe advice:\n{yaml}\n{}", failures.join("\n"), c.log_tail());
    }

    // The record outlives the agent (SIGKILLed: its last periodic save).
    drop(agent);
    c.restart(&args)?;
    let (json, _) = palisade(&["flows", "-o", "json", "--socket", &socket])?;
    let after: Snapshot = serde_json::from_str(&json)?;
    let kept = record.flows.iter().filter(|f| after.flows.iter().any(|g| g.key == f.key)).count();
    ensure!(kept == record.flows.len(), "{kept} of {} flow keys survived a restart: {json}", record.flows.len());
    ensure!(after.observing_since_ms == record.observing_since_ms, "the window restarted with the agent");
    println!("advise: {n} flows advised on; 6 pods x 6 ports matched the pattern exactly");
    Ok(())
}
