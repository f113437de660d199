//! `cargo xtask demo`: palisade enforcing a deny-by-default policy set on
//! network namespaces standing in for pods (a frontend and an api in
//! namespace `shop`, a database in `data`, CoreDNS in `kube-system`), with
//! traffic flowing and every verdict streaming live. Ctrl-C cleans up.

use anyhow::{Context, Result};
use palisade::events::{Verdict, VerdictEvent};
use palisade_e2e::agent::{Agent, binary};
use palisade_e2e::pods::{self, Pod, PodSpec, Port};
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::require_root;
use std::io::{BufRead, BufReader, IsTerminal};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const POLICIES: &str = r#"# Deny everything by default in the application namespaces.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: data}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
# Every pod may resolve names (the SRE guide's critical gotcha).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
---
# The frontend serves anyone on port 80 and calls the api.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: frontend}}
  ingress:
  - ports: [{port: http}]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 8080}]
---
# The api accepts the frontend, and talks to the database.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 8080}]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}
      podSelector: {matchLabels: {app: db}}
    ports: [{port: postgres}]
---
# The database only takes connections from the api.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: data}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
      podSelector: {matchLabels: {app: api}}
    ports: [{port: 5432}]
"#;

struct Flow {
    from: &'static str,
    to: &'static str,
    port: u16,
    proto: Proto,
    what: &'static str,
}

/// One round of traffic: what the application does, and what an attacker
/// on the frontend or the database would try.
const FLOWS: &[Flow] = &[
    Flow { from: "shop/frontend", to: "shop/api", port: 8080, proto: Proto::Tcp, what: "frontend calls the api" },
    Flow { from: "shop/api", to: "data/db", port: 5432, proto: Proto::Tcp, what: "api queries the database" },
    Flow { from: "shop/api", to: "kube-system/coredns", port: 53, proto: Proto::Udp, what: "api resolves a name" },
    Flow {
        from: "shop/frontend",
        to: "data/db",
        port: 5432,
        proto: Proto::Tcp,
        what: "frontend reaches for the database",
    },
    Flow { from: "data/db", to: "shop/api", port: 8080, proto: Proto::Tcp, what: "database opens a connection out" },
    Flow { from: "shop/frontend", to: "world", port: 443, proto: Proto::Tcp, what: "frontend phones home" },
];

fn pod(ns: &str, name: &str, label: (&str, &str), host: u8, ports: Vec<Port>) -> PodSpec {
    PodSpec {
        namespace: ns.into(),
        name: name.into(),
        labels: vec![(label.0.into(), label.1.into())],
        ip4: Ipv4Addr::new(10, 250, 0, host),
        ip6: Ipv6Addr::new(0xfd10, 0x250, 0, 0, 0, 0, 0, u16::from(host)),
        node: String::new(),
        ports,
    }
}

fn paint(color: &str, s: &str) -> String {
    if std::io::stdout().is_terminal() { format!("\x1b[{color}m{s}\x1b[0m") } else { s.to_string() }
}

fn main() -> Result<()> {
    require_root()?;
    let rounds: Option<u32> = std::env::args().skip_while(|a| a != "--rounds").nth(1).and_then(|n| n.parse().ok());
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    pods::prepare_host()?;
    println!("{}", paint("1", "palisade demo: NetworkPolicy enforced in the kernel, verdicts live"));
    println!("creating pods (network namespaces)...");
    let specs = [
        pod("shop", "frontend", ("app", "frontend"), 10, vec![Port::new("http", 80, "TCP")]),
        pod("shop", "api", ("app", "api"), 20, vec![Port::new("http", 8080, "TCP")]),
        pod("data", "db", ("app", "db"), 30, vec![Port::new("postgres", 5432, "TCP")]),
        pod(
            "kube-system",
            "coredns",
            ("k8s-app", "kube-dns"),
            53,
            vec![Port::new("dns", 53, "UDP"), Port::new("dns-tcp", 53, "TCP")],
        ),
    ];
    let mut pods: Vec<Pod> = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let netns = format!("pl-demo-{}-{}", spec.namespace, spec.name);
        pods.push(Pod::create(&netns, &format!("pldemo{i}"), spec)?);
    }
    let find = |id: &str| pods.iter().find(|p| p.id() == id);

    let agent = Agent::start("demo", &palisade::run::hostname(), &[])?;
    let mut objects = String::new();
    for ns in ["shop", "data", "kube-system"] {
        objects.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n"));
    }
    for p in &pods {
        objects.push_str(&p.manifest());
        objects.push_str("---\n");
    }
    agent.apply("pods.yaml", &objects)?;
    agent.apply("policies.yaml", POLICIES)?;
    agent.wait_in_sync()?;

    println!();
    for p in &pods {
        println!("  {:<22} {:<12} on {}", p.id(), p.spec.ip4.to_string(), p.host_if);
    }
    println!();
    println!("manifests the agent watches (edit them and watch verdicts change):");
    println!("  {}", agent.state_dir.display());
    println!("try, in another terminal:");
    println!("  {} status --socket {}", binary().display(), agent.socket.display());
    println!("  {} observe --socket {} --verdict dropped", binary().display(), agent.socket.display());
    println!("or open the browser view: http://127.0.0.1:9470/");
    println!();

    // Stream every verdict from the agent's local API as it happens.
    let mut observe = Command::new(binary())
        .args(["observe", "-o", "json", "--socket"])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting palisade observe")?;
    let out = observe.stdout.take().context("observe stdout")?;
    let printer = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(ev) = serde_json::from_str::<VerdictEvent>(&line) else { continue };
            let color = match ev.verdict {
                Verdict::Allowed => "32",
                Verdict::Dropped => "31;1",
                Verdict::Audit => "33",
            };
            println!("{} {}", paint("2", &ev.time[11..23]), paint(color, &ev.to_string()));
        }
    });

    let world = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut round = 0;
    while !stop.load(Ordering::SeqCst) && rounds.is_none_or(|n| round < n) {
        round += 1;
        println!("{}", paint("2", &format!("--- traffic round {round} (Ctrl-C to stop) ---")));
        for f in FLOWS {
            let (Some(from), to) = (find(f.from), find(f.to)) else { continue };
            let ip = to.map(|p| p.ip(false)).unwrap_or(world);
            let ok = probe::probe(from, ip, f.port, f.proto);
            let verdict = if ok { paint("32", "connected") } else { paint("31", "blocked") };
            println!("{}", paint("2", &format!("    client: {} ({} {}:{}) -> {verdict}", f.what, f.proto, ip, f.port)));
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..20 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\ncleaning up...");
    let _ = observe.kill();
    let _ = observe.wait();
    let _ = printer.join();
    drop(agent);
    drop(pods);
    println!("done: pods, programs and pinned maps removed");
    Ok(())
}
