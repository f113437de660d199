//! ClusterNetworkPolicy conformance on the real kernel: the policy API's own
//! suite (sigs.k8s.io/network-policy-api, profile ClusterNetworkPolicy with
//! its named-ports and egress-node-peers features) ported step by step, and
//! the guide's uses.
//!
//! The upstream cluster is rebuilt as upstream's manifests describe it: the
//! houses gryffindor, slytherin, hufflepuff and ravenclaw with two pods each
//! (serving TCP 80 "web" and 8080, UDP 53 "dns" and 5353; SCTP 9003 and
//! 9005 are probed with crafted INITs, the kernel here has no SCTP stack),
//! and forbidden-forrest's host-network pods, whose servers (upstream's
//! default HostNetworkPorts, 34345..) run in the nodes' network namespaces.
//! Two nodes, one agent each, reading the in-process API server; pods spread
//! so that pokes cross nodes and stay on one. Each upstream test is one case
//! replaying `tests/cnp/upstream.steps` (extracted from upstream's Go
//! tests): its manifest, its policy edits in order, and every poke with the
//! verdict upstream expects, one by one.

use anyhow::{Context, Result, anyhow, bail, ensure};
use palisade::events::Verdict;
use palisade_e2e::agent::trace_agrees;
use palisade_e2e::cluster::Cluster;
use palisade_e2e::fake_api::FakeApi;
use palisade_e2e::netns::Netns;
use palisade_e2e::pods::{self, Pod, Port};
use palisade_e2e::probe::{self, Matrix, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{PodPlan, Topology, np};
use serde_json::{Value, json};
use socket2::Socket;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const TAG: &str = "cc";
const SUBNET: u8 = 14;
const PREFIX: &str = "network-policy-conformance-";
/// Upstream's houses: namespace suffix and the StatefulSet of its two pods.
const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];
/// The namespace of upstream's host-network pods (upstream's spelling).
const FOREST: &str = "network-policy-conformance-forbidden-forrest";
/// Upstream's default HostNetworkPorts start; [0],[1] are TCP, [2],[4] UDP,
/// [6],[7] SCTP (crafted).
const HOST_PORT: u16 = 34345;
/// The cloud metadata address, held by every node (as GKE's metadata
/// server does) and served on TCP 80.
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Upstream's containers serve these ports but declare only "web" and "dns".
const UNDECLARED: [(u16, &str); 2] = [(8080, "TCP"), (5353, "UDP")];

/// The upstream steps, and the manifests they apply.
const STEPS: &str = include_str!("../cnp/upstream.steps");
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cnp/");

struct Env(Cluster);

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

/// The pods: the houses' (i-th pod of house h on node h+i, so every house
/// has a pod on each node and pokes both cross nodes and stay on one), and
/// the guide's DNS server and monitoring pod.
fn plan() -> Vec<PodPlan> {
    let mut plan = Vec::new();
    for (h, (house, set)) in HOUSES.iter().enumerate() {
        for i in 0..2 {
            plan.push(PodPlan {
                namespace: format!("{PREFIX}{house}"),
                name: format!("{set}-{i}"),
                labels: vec![("conformance-house".into(), house.to_string())],
                ports: vec![Port::new("web", 80, "TCP"), Port::new("dns", 53, "UDP")],
                node: h + i,
            });
        }
    }
    plan.push(PodPlan {
        namespace: "kube-system".into(),
        name: "coredns-0".into(),
        labels: vec![("k8s-app".into(), "kube-dns".into())],
        ports: vec![Port::new("dns", 53, "UDP"), Port::new("dns-tcp", 53, "TCP"), Port::new("web", 80, "TCP")],
        node: 0,
    });
    plan.push(PodPlan {
        namespace: "monitoring".into(),
        name: "prometheus-0".into(),
        labels: vec![("app".into(), "prometheus".into())],
        ports: vec![Port::new("web", 80, "TCP"), Port::new("dns", 53, "UDP")],
        node: 1,
    });
    plan
}

/// Node index of upstream's host-network pod centaur-`i`: centaur-1 (the
/// one upstream pokes) on n1, so its client harry-potter-1 (on n2) crosses
/// the fabric.
fn centaur_node(i: usize) -> usize {
    1 - i
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        let c =
            Cluster::start_nodes_with(TAG, SUBNET, 2, &[], |nodes| Topology::planned_on(TAG, SUBNET, nodes, plan()))?;
        let extra: Vec<Port> = UNDECLARED.iter().map(|&(p, proto)| Port::new(&format!("x{p}"), p, proto)).collect();
        for pod in &c.topo.pods {
            pods::serve_in(&pod.netns, &extra)?;
        }
        let host: Vec<Port> = [(0, "TCP"), (1, "TCP"), (2, "UDP"), (4, "UDP")]
            .iter()
            .map(|&(i, proto)| Port::new(&format!("h{i}"), HOST_PORT + i, proto))
            .chain([Port::new("metadata", 80, "TCP")])
            .collect();
        for node in &c.nodes().context("nodes")?.nodes {
            node.netns.exec(&["ip", "addr", "add", &format!("{METADATA}/32"), "dev", "lo"])?;
            pods::serve_in(&node.netns, &host)?;
        }
        let env = Env(c);
        env.base()?;
        Ok(env)
    }

    fn reset(&self) -> Result<()> {
        self.0.reset()?;
        let api = self.api()?;
        for name in api.cluster_network_policy_names() {
            api.delete_cluster_network_policy(&name);
        }
        self.base()
    }
}

impl Env {
    fn api(&self) -> Result<&FakeApi> {
        self.0.api().context("the fixture runs on the API server")
    }

    /// The objects beyond the pods: Namespaces (labelled as upstream's and
    /// as the API server labels them), the Node objects with their
    /// addresses and upstream's node labels, and the host-network pods.
    fn base(&self) -> Result<()> {
        let mut docs = Vec::new();
        for (house, _) in HOUSES {
            docs.push(namespace(&format!("{PREFIX}{house}"), &[("conformance-house", house)]));
        }
        docs.push(namespace(FOREST, &[("conformance-house", "forbidden-forrest")]));
        docs.push(namespace("kube-system", &[]));
        docs.push(namespace("monitoring", &[]));
        let nodes = &self.nodes().context("nodes")?.nodes;
        for node in nodes {
            docs.push(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node.name, "labels": {
                    "kubernetes.io/os": "linux", "kubernetes.io/hostname": node.name}},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": node.ip4.to_string()},
                    {"type": "InternalIP", "address": node.ip6.to_string()},
                    {"type": "Hostname", "address": node.name}]}
            }));
        }
        for i in 0..2 {
            let node = &nodes[centaur_node(i)];
            let ports: Vec<Value> = [(0, "TCP"), (1, "TCP"), (2, "UDP"), (4, "UDP"), (6, "SCTP"), (7, "SCTP")]
                .iter()
                .map(|&(k, proto)| {
                    let name = format!("{}-{}", if proto == "UDP" { "dns" } else { "web" }, HOST_PORT + k);
                    json!({"name": name, "containerPort": HOST_PORT + k, "protocol": proto})
                })
                .collect();
            docs.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("centaur-{i}"), "namespace": FOREST,
                    "labels": {"conformance-house": "forbidden-forrest"}},
                "spec": {"nodeName": node.name, "hostNetwork": true,
                    "containers": [{"name": "server", "image": "agnhost", "ports": ports}]},
                "status": {"phase": "Running", "podIP": node.ip4.to_string(),
                    "podIPs": [{"ip": node.ip4.to_string()}, {"ip": node.ip6.to_string()}]}
            }));
        }
        for d in &docs {
            self.api()?.apply_manifests(&d.to_string())?;
        }
        self.wait_in_sync()?;
        Ok(())
    }

    /// Where a poke to `id` (namespace/name) goes: the pod's address and
    /// namespace, or for a host-network pod its node's.
    fn target(&self, id: &str) -> Result<(IpAddr, &Netns)> {
        if let Some(i) = id.strip_prefix(&format!("{FOREST}/centaur-")) {
            let node = &self.nodes().context("nodes")?.nodes[centaur_node(i.parse()?)];
            return Ok((IpAddr::V4(node.ip4), &node.netns));
        }
        let pod = self.topo.pods.iter().find(|p| p.id() == id).with_context(|| format!("no pod {id}"))?;
        Ok((pod.ip(false), &pod.netns))
    }

    /// Runs `pokes` at once; the ones whose verdict is not the expected one,
    /// described.
    fn poke_all(&self, pokes: &[Poke]) -> Result<Vec<String>> {
        let mut runs = Vec::new();
        for p in pokes {
            let client = self.topo.pods.iter().find(|c| c.id() == p.client).with_context(|| p.client.clone())?;
            let (ip, netns) = self.target(&p.server)?;
            runs.push(Attempt::prepare(client, ip, netns, p)?);
        }
        let got: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = runs.into_iter().map(|r| s.spawn(move || r.run())).collect();
            handles.into_iter().map(|h| h.join().expect("poke thread")).collect()
        });
        Ok(pokes
            .iter()
            .zip(got)
            .filter(|(p, got)| *got != p.allow)
            .map(|(p, got)| {
                let verdict = |b: bool| if b { "allowed" } else { "denied" };
                format!(
                    "[{}] {} -> {} {}/{}: upstream expects {}, got {}",
                    p.sub,
                    p.client,
                    p.server,
                    p.proto,
                    p.port,
                    verdict(p.allow),
                    verdict(got)
                )
            })
            .collect())
    }

    /// Replaces every policy with `docs` (ClusterNetworkPolicies and
    /// NetworkPolicies) and waits until every agent enforces them.
    fn put_policies(&self, docs: &[Value]) -> Result<()> {
        let api = self.api()?;
        let keep: Vec<&str> = docs.iter().filter(|d| d["kind"] == "ClusterNetworkPolicy").filter_map(name_of).collect();
        for name in api.cluster_network_policy_names() {
            if !keep.contains(&name.as_str()) {
                api.delete_cluster_network_policy(&name);
            }
        }
        let texts: Vec<String> = docs.iter().map(Value::to_string).collect();
        self.apply(&texts).map_err(|e| anyhow!("{e:#}\n{}", self.log_tail()))
    }

    /// [`Env::put_policies`] from manifests.
    fn set(&self, manifests: &[String]) -> Result<()> {
        let docs = manifests
            .iter()
            .map(|m| serde_saphyr::from_str(m).map_err(|e| anyhow!("{m}: {e}")))
            .collect::<Result<Vec<Value>>>()?;
        self.put_policies(&docs)
    }

    /// Replays upstream test `name` from the steps file.
    fn upstream(&self, name: &str) -> Result<()> {
        let test = upstream_tests()?.into_iter().find(|t| t.name == name).with_context(|| format!("no test {name}"))?;
        let path = format!("{MANIFESTS}{}", test.manifest);
        let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| anyhow!("{path}: {e}"))?;
        let (mut sub, mut pending, mut failures, mut dirty, mut pokes) =
            (String::new(), Vec::new(), Vec::new(), true, 0);
        for line in test.steps.iter().map(String::as_str).chain(["end"]) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w[0] == "poke" {
                pending.push(Poke {
                    sub: sub.clone(),
                    client: w[1].into(),
                    server: w[2].into(),
                    proto: w[3].parse().map_err(|e| anyhow!("{line}: {e}"))?,
                    port: w[4].parse()?,
                    allow: w[5] == "allow",
                });
                continue;
            }
            // Pokes run together, against the policies as edited so far.
            if !pending.is_empty() {
                if std::mem::take(&mut dirty) {
                    self.put_policies(&docs)?;
                }
                failures.extend(self.poke_all(&pending)?);
                pokes += pending.len();
                pending.clear();
            }
            match w[0] {
                "sub" => sub = line[4..].to_string(),
                "end" => {}
                _ => {
                    edit(&mut docs, self.api()?, &w, self)?;
                    dirty = true;
                }
            }
        }
        ensure!(
            failures.is_empty(),
            "{} of {pokes} pokes differ from upstream:\n{}\n{}",
            failures.len(),
            failures.join("\n"),
            self.log_tail()
        );
        Ok(())
    }

    /// Checks the full reachability matrix of every pod to every pod, then
    /// that `palisade trace` (asked of both ends' agents, kernel check
    /// included: each checks the side it enforces) agrees on every pair.
    fn matrix(&self, port: u16, proto: Proto, allowed: impl Fn(&str, &str) -> bool) -> Result<()> {
        let expected = Matrix::expected(&self.topo.names(), allowed).with_self_reachable();
        probe::check(&self.topo.all(), port, proto, false, &expected)
            .map_err(|e| anyhow!("{e}\n{}", self.log_tail()))?;
        let proto_name = proto.to_string();
        for from in &expected.names {
            for to in expected.names.iter().filter(|t| *t != from) {
                let at_source = self.agent_of(from).trace(from, to, port, &proto_name, false)?;
                let at_destination = self.agent_of(to).trace(from, to, port, &proto_name, false)?;
                let what = format!("{from} -> {to} {proto}/{port}");
                trace_agrees(&at_source, &at_destination, expected.get(from, to), &what)?;
            }
        }
        Ok(())
    }

    /// The tier walk `palisade trace` shows for the ingress of `from` -> `to`
    /// on TCP 80, asked of the destination's agent.
    fn ingress_walk(&self, from: &str, to: &str) -> Result<Vec<String>> {
        Ok(self.agent_of(to).trace(from, to, 80, "TCP", false)?.ingress.tiers)
    }

    /// Waits for the agent of `at` (a pod) to report a drop of `from`'s
    /// traffic to `to` decided by the ClusterNetworkPolicy rule that
    /// `description` names (policy, rule, tier, priority, action).
    fn expect_drop(&self, at: &str, from: &str, to: IpAddr, policy: &str, tier: &str, description: &str) -> Result<()> {
        let (ns, pod) = from.split_once('/').context("ns/pod")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.agent_of(at).events(&[])?;
            let drops: Vec<_> = events
                .iter()
                .filter(|ev| ev.verdict == Verdict::Dropped && ev.destination.ip == to)
                .filter(|ev| ev.source.namespace.as_deref() == Some(ns) && ev.source.pod.as_deref() == Some(pod))
                .collect();
            let named = drops.iter().any(|ev| {
                ev.policy.as_ref().is_some_and(|r| {
                    r.name.as_deref() == Some(policy) && r.tier.as_deref() == Some(tier) && r.description == description
                })
            });
            if named {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no drop of {from} -> {to} naming \"{description}\" at {at}'s node; its drops: {drops:#?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Every pod's verdict connecting to the metadata address.
    fn metadata_reachable(&self) -> Vec<(String, bool)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .topo
                .pods
                .iter()
                .map(|p| (p.id(), s.spawn(move || probe::probe(p, IpAddr::V4(METADATA), 80, Proto::Tcp))))
                .collect();
            handles.into_iter().map(|(id, h)| (id, h.join().expect("probe"))).collect()
        })
    }
}

/// One policy edit of an upstream test, applied to its documents (or, for
/// namespace labels, to the cluster).
fn edit(docs: &mut Vec<Value>, api: &FakeApi, w: &[&str], env: &Env) -> Result<()> {
    let policy = |docs: &mut Vec<Value>, name: &str| -> Result<usize> {
        docs.iter()
            .position(|d| d["kind"] == "ClusterNetworkPolicy" && name_of(d) == Some(name))
            .with_context(|| format!("no ClusterNetworkPolicy {name}"))
    };
    match w {
        ["swap", p, gress, i, j] => {
            let k = policy(docs, p)?;
            let rules = docs[k]["spec"][*gress].as_array_mut().context("no rules")?;
            rules.swap(i.parse()?, j.parse()?);
        }
        ["priority", p, n] => {
            let k = policy(docs, p)?;
            docs[k]["spec"]["priority"] = json!(n.parse::<u32>()?);
        }
        ["action", p, gress, i, action] => {
            let k = policy(docs, p)?;
            docs[k]["spec"][*gress][i.parse::<usize>()?]["action"] = json!(action);
        }
        ["named-port", p, gress, i, port] => {
            let k = policy(docs, p)?;
            docs[k]["spec"][*gress][i.parse::<usize>()?]["protocols"] = json!([{"destinationNamedPort": port}]);
        }
        ["prepend-egress-networks", p, rule, pods @ ..] => {
            let k = policy(docs, p)?;
            let nets: Vec<String> =
                pods.iter().map(|id| Ok(format!("{}/32", env.target(id)?.0))).collect::<Result<_>>()?;
            let rule = json!({"name": rule, "action": "Accept", "to": [{"networks": nets}]});
            docs[k]["spec"]["egress"].as_array_mut().context("no egress")?.insert(0, rule);
        }
        ["ns-labels", ns, label] => {
            let (key, value) = label.split_once('=').context("key=value")?;
            api.apply_manifests(&namespace(ns, &[(key, value)]).to_string())?;
        }
        ["delete-np", id] => {
            let (ns, name) = id.split_once('/').context("ns/name")?;
            let before = docs.len();
            docs.retain(|d| {
                !(d["kind"] == "NetworkPolicy" && d["metadata"]["namespace"] == *ns && name_of(d) == Some(name))
            });
            ensure!(docs.len() < before, "no NetworkPolicy {id}");
        }
        _ => bail!("unknown step {w:?}"),
    }
    Ok(())
}

/// The walk has one line per expected step, each starting as given.
fn walk_is(walk: &[String], steps: &[&str]) -> Result<()> {
    let ok = walk.len() == steps.len() && walk.iter().zip(steps).all(|(line, step)| line.starts_with(step));
    ensure!(ok, "trace walks the tiers as {walk:#?}, expected steps {steps:#?}");
    Ok(())
}

fn name_of(d: &Value) -> Option<&str> {
    d["metadata"]["name"].as_str()
}

/// A Namespace with `labels` and the name label the API server sets.
fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/metadata.name".into(), json!(name));
    for (k, v) in labels {
        l.insert(k.to_string(), json!(v));
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": l}})
}

/// One upstream PokeServer call.
struct Poke {
    sub: String,
    client: String,
    server: String,
    proto: Proto,
    port: u16,
    allow: bool,
}

/// A poke with its sockets made in the right namespaces, ready to run on
/// any thread.
enum Attempt {
    /// Two sockets: a lost packet under load must not fail an expected
    /// connection (as [`probe::check`] re-probes), an unexpected one always does.
    Stream { socks: Vec<Socket>, to: SocketAddr, proto: Proto },
    /// A crafted INIT, and a raw socket in the destination watching for it.
    Sctp { tx: Socket, rx: Socket, to: IpAddr, sport: u16, dport: u16 },
}

/// Distinct SCTP source ports, so no poke sees another's INIT (or a flow
/// conntrack remembers from an earlier step).
static SCTP_SPORT: AtomicU16 = AtomicU16::new(30000);

impl Attempt {
    fn prepare(client: &Pod, ip: IpAddr, server: &Netns, p: &Poke) -> Result<Attempt> {
        Ok(match p.proto {
            Proto::Sctp => {
                let rx = server.run(raw_sctp)?;
                rx.set_read_timeout(Some(Duration::from_millis(50)))?;
                let tx = probe::socket_in(client, false, Proto::Sctp)?;
                Attempt::Sctp { tx, rx, to: ip, sport: SCTP_SPORT.fetch_add(1, Ordering::Relaxed), dport: p.port }
            }
            proto => {
                let tries = if p.allow { 2 } else { 1 };
                let socks = (0..tries).map(|_| probe::socket_in(client, false, proto)).collect::<Result<_, _>>()?;
                Attempt::Stream { socks, to: SocketAddr::new(ip, p.port), proto }
            }
        })
    }

    fn run(self) -> bool {
        match self {
            Attempt::Stream { socks, to, proto } => {
                socks.into_iter().any(|s| probe::talk(s, to, proto, probe::TIMEOUT))
            }
            Attempt::Sctp { tx, rx, to, sport, dport } => {
                let init = palisade_kit::packet::sctp_init(sport, dport);
                let start = Instant::now();
                // Sent again later: a first packet can be lost while the
                // path's neighbours resolve (as probe.rs sends twice).
                let mut resend = Some(start + Duration::from_millis(300));
                let _ = tx.send_to(&init, &SocketAddr::new(to, 0).into());
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
                while start.elapsed() < Duration::from_millis(900) {
                    if resend.is_some_and(|t| Instant::now() >= t) {
                        resend = None;
                        let _ = tx.send_to(&init, &SocketAddr::new(to, 0).into());
                    }
                    let Ok(n) = rx.recv(&mut buf) else { continue };
                    // SAFETY: recv initialised the first n bytes.
                    let data: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                    // IPv4 raw sockets hand over the IP header.
                    let off = usize::from(data.first().map_or(0, |b| b & 0x0f)) * 4;
                    if data.len() >= off + 4
                        && u16::from_be_bytes([data[off], data[off + 1]]) == sport
                        && u16::from_be_bytes([data[off + 2], data[off + 3]]) == dport
                    {
                        return true;
                    }
                }
                false
            }
        }
    }
}

fn raw_sctp() -> std::io::Result<Socket> {
    use socket2::{Domain, Protocol, Type};
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(Proto::Sctp.number()))))
}

/// An upstream test: its manifest and steps (the lines after its `test`).
struct UpstreamTest {
    name: String,
    manifest: String,
    steps: Vec<String>,
}

fn upstream_tests() -> Result<Vec<UpstreamTest>> {
    let mut tests: Vec<UpstreamTest> = Vec::new();
    for line in STEPS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("test ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            ensure!(w.len() >= 2, "bad test line {line}");
            tests.push(UpstreamTest { name: w[0].into(), manifest: w[1].into(), steps: Vec::new() });
        } else {
            tests.last_mut().context("a step before any test")?.steps.push(line.to_string());
        }
    }
    Ok(tests)
}

/// A ClusterNetworkPolicy manifest; `spec` is YAML indented by two spaces.
fn cnp(name: &str, tier: &str, priority: u32, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  tier: {tier}\n  priority: {priority}\n{spec}"
    )
}

fn ns_of(pod: &str) -> &str {
    pod.split('/').next().unwrap_or("")
}

fn house(pod: &str) -> &str {
    ns_of(pod).strip_prefix(PREFIX).unwrap_or("")
}

const DNS: &str = "kube-system/coredns-0";
const MONITORING: &str = "monitoring/prometheus-0";

/// Every subject pod's namespace but kube-system.
const ALL_BUT_KUBE_SYSTEM: &str = "  subject:\n    namespaces:\n      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}]\n";
const EVERY_NAMESPACE: &str = "  subject:\n    namespaces: {}\n";
const FROM_SLYTHERIN: &str = "    from: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]\n";

/// The guide's uses.
fn guide_cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("guide_baseline_default_deny_with_dns", |e| {
            let default_deny = cnp(
                "default-deny",
                "Baseline",
                100,
                &format!(
                    "{ALL_BUT_KUBE_SYSTEM}  ingress:\n  - name: deny-all\n    action: Deny\n    from: [{{namespaces: {{}}}}]\n  egress:\n  - name: allow-dns\n    action: Accept\n    to: [{{pods: {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}, podSelector: {{matchLabels: {{k8s-app: kube-dns}}}}}}}}]\n    protocols: [{{udp: {{destinationPort: {{number: 53}}}}}}, {{tcp: {{destinationPort: {{number: 53}}}}}}]\n  - name: deny-all\n    action: Deny\n    to: [{{networks: [0.0.0.0/0, \"::/0\"]}}]\n"
                ),
            );
            e.set(std::slice::from_ref(&default_deny))?;
            // DNS only, to the DNS server only (every house pod serves 53 too).
            e.matrix(53, Proto::Udp, |_, to| to == DNS)?;
            e.matrix(80, Proto::Tcp, |_, _| false)?;
            // NetworkPolicies decide before Baseline: slytherin opens its
            // egress to gryffindor's web, gryffindor its ingress. Slytherin's
            // egress is then isolated by its own policy, so Baseline's DNS
            // allowance no longer applies to it.
            e.set(&[
                default_deny,
                np(
                    &format!("{PREFIX}gryffindor"),
                    "web-from-slytherin",
                    "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {conformance-house: slytherin}}}]\n    ports: [{port: 80}]\n",
                ),
                np(
                    &format!("{PREFIX}slytherin"),
                    "web-to-gryffindor",
                    "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {conformance-house: gryffindor}}}]\n    ports: [{port: 80}]\n",
                ),
            ])?;
            e.matrix(80, Proto::Tcp, |from, to| house(from) == "slytherin" && house(to) == "gryffindor")?;
            e.matrix(53, Proto::Udp, |from, to| to == DNS && house(from) != "slytherin")
        }),
        ("guide_admin_accept_monitoring_holds_against_deny_all", |e| {
            let deny_all =
                np(&format!("{PREFIX}gryffindor"), "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n");
            e.set(std::slice::from_ref(&deny_all))?;
            let gryffindor_closed = |from: &str, to: &str| house(from) != "gryffindor" && house(to) != "gryffindor";
            e.matrix(8080, Proto::Tcp, gryffindor_closed)?;
            e.set(&[
                deny_all,
                cnp(
                    "monitoring-scrapes",
                    "Admin",
                    10,
                    &format!(
                        "{EVERY_NAMESPACE}  ingress:\n  - name: allow-monitoring\n    action: Accept\n    from: [{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: monitoring}}}}}}]\n    protocols: [{{tcp: {{destinationPort: {{number: 8080}}}}}}]\n"
                    ),
                ),
            ])?;
            // Monitoring scrapes 8080 everywhere, gryffindor included; its
            // own deny-all still holds for everything else.
            e.matrix(8080, Proto::Tcp, |from, to| from == MONITORING || gryffindor_closed(from, to))?;
            e.matrix(80, Proto::Tcp, gryffindor_closed)
        }),
        ("guide_admin_deny_metadata_no_network_policy_reopens", |e| {
            let denied: Vec<_> = e.metadata_reachable().into_iter().filter(|(_, ok)| !ok).collect();
            ensure!(denied.is_empty(), "without policies the metadata address must be reachable: {denied:?}");
            e.set(&[
                cnp(
                    "deny-metadata",
                    "Admin",
                    0,
                    &format!(
                        "{EVERY_NAMESPACE}  egress:\n  - name: deny-metadata\n    action: Deny\n    to: [{{networks: [{METADATA}/32]}}]\n"
                    ),
                ),
                np(
                    &format!("{PREFIX}gryffindor"),
                    "allow-metadata",
                    &format!(
                        "  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {METADATA}/32}}}}]\n"
                    ),
                ),
                np(
                    &format!("{PREFIX}hufflepuff"),
                    "allow-all-egress",
                    "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n",
                ),
            ])?;
            let reached: Vec<_> = e.metadata_reachable().into_iter().filter(|(_, ok)| *ok).collect();
            ensure!(reached.is_empty(), "the Admin Deny must hold against every NetworkPolicy: {reached:?}");
            let g = format!("{PREFIX}gryffindor/harry-potter-0");
            let why = "ClusterNetworkPolicy deny-metadata rule deny-metadata (Admin, priority 0, Deny)";
            e.expect_drop(&g, &g, IpAddr::V4(METADATA), "deny-metadata", "Admin", why)?;
            // The rest of egress is untouched.
            e.matrix(80, Proto::Tcp, |from, _| house(from) != "gryffindor")
        }),
        ("node_peer_deny_covers_the_pods_own_node_and_the_other", |e| {
            // Upstream pokes only centaur-1 from harry-potter-1, across
            // nodes; a node peer means every address of the node, the
            // pod's own node included.
            let pokes = |allow: bool| -> Vec<Poke> {
                let mut v = Vec::new();
                for i in 0..2 {
                    for c in 0..2 {
                        v.push(Poke {
                            sub: "nodes".into(),
                            client: format!("{PREFIX}gryffindor/harry-potter-{i}"),
                            server: format!("{FOREST}/centaur-{c}"),
                            proto: Proto::Tcp,
                            port: HOST_PORT,
                            allow,
                        });
                    }
                }
                v
            };
            let f = e.poke_all(&pokes(true))?;
            ensure!(f.is_empty(), "without policies:\n{}", f.join("\n"));
            e.set(&[cnp(
                "deny-nodes",
                "Admin",
                1,
                &format!(
                    "  subject:\n    namespaces: {{matchLabels: {{conformance-house: gryffindor}}}}\n  egress:\n  - name: deny-nodes\n    action: Deny\n    to: [{{nodes: {{matchLabels: {{kubernetes.io/os: linux}}}}}}]\n    protocols: [{{tcp: {{destinationPort: {{number: {HOST_PORT}}}}}}}]\n"
                ),
            )])?;
            let f = e.poke_all(&pokes(false))?;
            ensure!(f.is_empty(), "with an Admin Deny to the nodes:\n{}\n{}", f.join("\n"), e.log_tail());
            Ok(())
        }),
        ("guide_pass_leaves_namespace_policies_in_charge", |e| {
            let pass = cnp(
                "pass-slytherin",
                "Admin",
                5,
                &format!("{EVERY_NAMESPACE}  ingress:\n  - name: pass-slytherin\n    action: Pass\n{FROM_SLYTHERIN}"),
            );
            let rest = [
                cnp(
                    "deny-slytherin",
                    "Admin",
                    20,
                    &format!(
                        "{EVERY_NAMESPACE}  ingress:\n  - name: deny-slytherin\n    action: Deny\n{FROM_SLYTHERIN}"
                    ),
                ),
                cnp(
                    "baseline-deny-slytherin",
                    "Baseline",
                    10,
                    &format!(
                        "{EVERY_NAMESPACE}  ingress:\n  - name: deny-slytherin\n    action: Deny\n{FROM_SLYTHERIN}"
                    ),
                ),
                np(
                    &format!("{PREFIX}gryffindor"),
                    "allow-slytherin",
                    "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {conformance-house: slytherin}}}]\n",
                ),
            ];
            let mut all = vec![pass];
            all.extend(rest.iter().cloned());
            e.set(&all)?;
            // Pass skips the Admin Deny: gryffindor's own policy admits
            // slytherin (and isolates it from the rest); where no
            // NetworkPolicy speaks, Baseline denies slytherin.
            e.matrix(80, Proto::Tcp, |from, to| match (house(from), house(to)) {
                (_, "gryffindor") => house(from) == "slytherin",
                ("slytherin", _) => false,
                _ => true,
            })?;
            let (draco, cedric) =
                (format!("{PREFIX}slytherin/draco-malfoy-0"), format!("{PREFIX}hufflepuff/cedric-diggory-0"));
            let why = "ClusterNetworkPolicy baseline-deny-slytherin rule deny-slytherin (Baseline, priority 10, Deny)";
            e.expect_drop(&cedric, &draco, e.ip(&cedric), "baseline-deny-slytherin", "Baseline", why)?;
            // The walk through the tiers: Pass, then gryffindor's own
            // policy decides; where none speaks, on to Baseline.
            let harry = format!("{PREFIX}gryffindor/harry-potter-0");
            walk_is(
                &e.ingress_walk(&draco, &harry)?,
                &["[Admin] pass-slytherin (priority 5) rule pass-slytherin: matches", "[NetworkPolicy] allowed by"],
            )?;
            walk_is(
                &e.ingress_walk(&draco, &cedric)?,
                &[
                    "[Admin] pass-slytherin (priority 5) rule pass-slytherin: matches",
                    "[NetworkPolicy]",
                    "[Baseline] baseline-deny-slytherin (priority 10) rule deny-slytherin: matches",
                ],
            )?;
            // Without the Pass, the Admin Deny decides before any NetworkPolicy.
            e.set(&rest)?;
            e.matrix(80, Proto::Tcp, |from, to| house(from) != "slytherin" && house(to) != "gryffindor")?;
            let (draco, harry) =
                (format!("{PREFIX}slytherin/draco-malfoy-0"), format!("{PREFIX}gryffindor/harry-potter-0"));
            let why = "ClusterNetworkPolicy deny-slytherin rule deny-slytherin (Admin, priority 20, Deny)";
            e.expect_drop(&harry, &draco, e.ip(&harry), "deny-slytherin", "Admin", why)?;
            walk_is(
                &e.ingress_walk(&draco, &harry)?,
                &["[Admin] deny-slytherin (priority 20) rule deny-slytherin: matches"],
            )
        }),
    ]
}

/// One case per upstream test, named as upstream names it.
macro_rules! upstream {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|e: &Env| e.upstream(stringify!($name))) as fn(&Env) -> Result<()>)),*]
    };
}

fn main() {
    let mut cases: Vec<palisade_e2e::suite::Case<Env>> = upstream![
        CNPAdminTierEgressNamedPort,
        CNPAdminTierEgressNodePeers,
        CNPAdminTierIngressNamedPort,
        CNPAdminTierEgressInlineCIDRPeers,
        CNPAdminTierEgressSCTP,
        CNPAdminTierEgressTCP,
        CNPAdminTierEgressUDP,
        CNPAdminTierGress,
        CNPAdminTierIngressSCTP,
        CNPAdminTierIngressTCP,
        CNPAdminTierIngressUDP,
        CNPAdminTierIntegration,
        CNPAdminTierPriorityField,
        CNPBaselineTierEgressNamedPort,
        CNPBaselineTierEgressNodePeers,
        CNPBaselineTierIngressNamedPort,
        CNPBaselineTierEgressInlineCIDRPeers,
        CNPBaselineTierEgressSCTP,
        CNPBaselineTierEgressTCP,
        CNPBaselineTierEgressUDP,
        CNPBaselineTierGress,
        CNPBaselineTierIngressSCTP,
        CNPBaselineTierIngressTCP,
        CNPBaselineTierIngressUDP,
    ];
    // Every upstream test in the steps file has its case, and no other.
    let listed: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let in_file: Vec<String> = upstream_tests().expect("upstream.steps").into_iter().map(|t| t.name).collect();
    assert_eq!(listed, in_file, "the cases and tests/cnp/upstream.steps disagree");
    cases.extend(guide_cases());
    palisade_e2e::suite::run(cases)
}
