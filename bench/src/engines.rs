//! The iptables and nftables baselines, generated from the same validated
//! NetworkPolicy model palisade compiles, and built the way their projects
//! build them (not as linear straw men):
//!
//! - iptables + ipset, as kube-router enforces: FORWARD jumps to
//!   KUBE-ROUTER-FORWARD, which sends each local pod's traffic (by address)
//!   to its KUBE-POD-FW chain; that chain accepts RELATED,ESTABLISHED first,
//!   drops INVALID, then jumps to the KUBE-NWPLCY chain of every policy
//!   selecting the pod; policy chains match `hash:ip` (pods) and `hash:net`
//!   (ipBlocks, excepts as `nomatch`) ipsets plus ports and set a mark;
//!   unmarked traffic of an isolated pod is rejected. Chains and sets exist
//!   for every policy in the cluster, as kube-router keeps them; each
//!   policy has one chain per direction, so its egress rules are never
//!   consulted for traffic to its pods.
//! - nftables with sets and verdict maps: one table; the forward chain
//!   accepts established,related, drops invalid, then dispatches on the pod
//!   address through verdict maps (`ip saddr vmap @egress`, `ip daddr vmap
//!   @ingress`) to a per-pod chain whose rules match named sets of peer
//!   addresses (interval sets for ipBlocks) and ports, returning on allow
//!   and dropping at the end. (kube-network-policies itself sends the first
//!   packet of each new connection to a userspace evaluator over NFQUEUE,
//!   selected by nftables sets; this baseline keeps the whole decision in
//!   the kernel, which only makes new connections cheaper.)
//!
//! IPv4 only: the traffic measurements run over IPv4.

use crate::cluster::NODE;
use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use palisade::policy::model::{Labels, NamespaceMatch, Peer, PortMatch, Rule};
use palisade::policy::{Input, Pod, Policy};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Iptables,
    Nftables,
}

fn v4s(pod: &Pod) -> impl Iterator<Item = Ipv4Addr> + '_ {
    pod.ips.iter().filter_map(|ip| match ip {
        IpAddr::V4(v) => Some(*v),
        _ => None,
    })
}

fn live(input: &Input) -> Vec<&Pod> {
    input.pods.values().filter(|p| !p.terminated && !p.host_network && !p.ips.is_empty()).map(|p| &**p).collect()
}

static NO_LABELS: Labels = Labels::new();

/// A namespace's labels (undeclared namespaces: none; the bench declares all).
fn ns_labels<'a>(input: &'a Input, ns: &str) -> &'a Labels {
    input.namespaces.get(ns).map(|n| &n.labels).unwrap_or(&NO_LABELS)
}

fn selects(policy: &Policy, pod: &Pod) -> bool {
    pod.namespace == policy.namespace && policy.pod_selector.matches(&pod.labels)
}

/// Peer addresses of a rule: pods (IPv4) and CIDRs (IPv4) with excepts.
/// None: any peer.
struct Peers {
    pods: Vec<Ipv4Addr>,
    nets: Vec<(IpNet, Vec<IpNet>)>,
}

fn peers_of(input: &Input, policy: &Policy, rule: &Rule, pods: &[&Pod]) -> Option<Peers> {
    if rule.peers.is_empty() {
        return None;
    }
    let mut out = Peers { pods: Vec::new(), nets: Vec::new() };
    for peer in &rule.peers {
        match peer {
            Peer::Pods { namespaces, pods: sel } => {
                for p in pods {
                    let ns_ok = match namespaces {
                        NamespaceMatch::Own => p.namespace == policy.namespace,
                        NamespaceMatch::Selector(s) => s.matches(ns_labels(input, &p.namespace)),
                    };
                    if ns_ok && sel.matches(&p.labels) {
                        out.pods.extend(v4s(p));
                    }
                }
            }
            Peer::IpBlock { cidr, except } => {
                if cidr.addr().is_ipv4() {
                    out.nets.push((*cidr, except.clone()));
                }
            }
        }
    }
    out.pods.sort();
    out.pods.dedup();
    Some(out)
}

/// (protocol name, port range) of a rule's ports; empty: any.
fn ports_of(rule: &Rule) -> Vec<(&'static str, Option<(u16, u16)>)> {
    rule.ports
        .iter()
        .filter_map(|p| {
            let proto = match p.protocol {
                palisade::policy::model::Protocol::Tcp => "tcp",
                palisade::policy::model::Protocol::Udp => "udp",
                palisade::policy::model::Protocol::Sctp => "sctp",
            };
            match &p.port {
                PortMatch::Any => Some((proto, None)),
                PortMatch::Range(a, b) => Some((proto, Some((*a, *b)))),
                // Named ports are resolved per destination pod; the bench's
                // policy set does not use them.
                PortMatch::Named(_) => None,
            }
        })
        .collect()
}

fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012X}", h & 0xffff_ffff_ffff)
}

/// Generated rule files for one engine.
pub struct Ruleset {
    pub kind: Kind,
    /// iptables-restore input, or nft -f input.
    pub rules: String,
    /// ipset restore input (iptables only).
    pub sets: String,
    pub rule_count: usize,
    pub set_count: usize,
}

pub fn generate(kind: Kind, input: &Input) -> Ruleset {
    match kind {
        Kind::Iptables => kube_router(input),
        Kind::Nftables => nftables(input),
    }
}

fn kube_router(input: &Input) -> Ruleset {
    let pods = live(input);
    let locals: Vec<&Pod> = pods.iter().copied().filter(|p| p.node_name.as_deref() == Some(NODE)).collect();
    let mut sets = String::new();
    let mut chains = String::from("*filter\n:KUBE-ROUTER-FORWARD - [0:0]\n");
    let mut rules = String::new();
    let (mut rule_count, mut set_count) = (0usize, 0usize);
    let mut add_set = |sets: &mut String, name: &str, kind: &str, members: &[String], nomatch: &[String]| {
        let _ = writeln!(sets, "create {name} {kind} family inet hashsize 1024 maxelem 1048576");
        for m in members {
            let _ = writeln!(sets, "add {name} {m}");
        }
        for m in nomatch {
            let _ = writeln!(sets, "add {name} {m} nomatch");
        }
        set_count += 1;
    };
    let mut pol_chain = BTreeMap::new();
    for policy in input.policies.values() {
        let key = format!("{}/{}", policy.namespace, policy.name);
        let h = short_hash(&key);
        // One chain per direction: a policy's egress rules must never be
        // consulted for traffic to its pods (they could over-allow it).
        let dir_chain = |dir: &str| format!("KUBE-NWPLCY-{h}-{}", if dir == "in" { "I" } else { "E" });
        for dir in ["in", "eg"] {
            let _ = writeln!(chains, ":{} - [0:0]", dir_chain(dir));
        }
        pol_chain.insert(key, (dir_chain("in"), dir_chain("eg")));
        let targets: Vec<String> =
            pods.iter().filter(|p| selects(policy, p)).flat_map(|p| v4s(p)).map(|a| a.to_string()).collect();
        let target_set = format!("KUBE-DST-{h}");
        add_set(&mut sets, &target_set, "hash:ip", &targets, &[]);
        for (dir, list) in [("in", &policy.ingress), ("eg", &policy.egress)] {
            let chain = dir_chain(dir);
            for (ri, rule) in list.iter().flatten().enumerate() {
                let (tgt_dir, peer_dir) = if dir == "in" { ("dst", "src") } else { ("src", "dst") };
                let mut peer_matches: Vec<String> = Vec::new();
                match peers_of(input, policy, rule, &pods) {
                    None => peer_matches.push(String::new()),
                    Some(peers) => {
                        let ps = format!("KUBE-{}-{h}{ri}", if dir == "in" { "SRC" } else { "DST" });
                        let ps = format!("{}{}", &ps[..ps.len().min(27)], if dir == "in" { "" } else { "e" });
                        let members: Vec<String> = peers.pods.iter().map(|a| a.to_string()).collect();
                        add_set(&mut sets, &ps, "hash:ip", &members, &[]);
                        peer_matches.push(format!(" -m set --match-set {ps} {peer_dir}"));
                        if !peers.nets.is_empty() {
                            let ns = format!("{}n", &ps[..ps.len().min(30)]);
                            let members: Vec<String> = peers.nets.iter().map(|(c, _)| c.to_string()).collect();
                            let nomatch: Vec<String> =
                                peers.nets.iter().flat_map(|(_, e)| e.iter().map(|x| x.to_string())).collect();
                            add_set(&mut sets, &ns, "hash:net", &members, &nomatch);
                            peer_matches.push(format!(" -m set --match-set {ns} {peer_dir}"));
                        }
                    }
                }
                let ports = ports_of(rule);
                let port_matches: Vec<String> = if rule.ports.is_empty() {
                    vec![String::new()]
                } else {
                    ports
                        .iter()
                        .map(|(proto, range)| match range {
                            None => format!(" -p {proto}"),
                            Some((a, b)) if a == b => format!(" -p {proto} --dport {a}"),
                            Some((a, b)) => format!(" -p {proto} --dport {a}:{b}"),
                        })
                        .collect()
                };
                for pm in &peer_matches {
                    for port in &port_matches {
                        let _ = writeln!(
                            rules,
                            "-A {chain}{port} -m set --match-set {target_set} {tgt_dir}{pm} -j MARK --set-xmark 0x10000/0x10000"
                        );
                        let _ = writeln!(rules, "-A {chain} -m mark --mark 0x10000/0x10000 -j RETURN");
                        rule_count += 2;
                    }
                }
            }
        }
    }
    let _ = writeln!(rules, "-I FORWARD 1 -j KUBE-ROUTER-FORWARD");
    for pod in &locals {
        let h = short_hash(&format!("{}/{}", pod.namespace, pod.name));
        let fw = format!("KUBE-POD-FW-{h}");
        let _ = writeln!(chains, ":{fw} - [0:0]");
        for ip in v4s(pod) {
            let _ = writeln!(rules, "-A KUBE-ROUTER-FORWARD -d {ip}/32 -j {fw}");
            let _ = writeln!(rules, "-A KUBE-ROUTER-FORWARD -s {ip}/32 -j {fw}");
            let _ = writeln!(rules, "-A {fw} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
            let _ = writeln!(rules, "-A {fw} -m conntrack --ctstate INVALID -j DROP");
            let _ = writeln!(rules, "-A {fw} -d {ip}/32 -m addrtype --src-type LOCAL -j ACCEPT");
            rule_count += 5;
            let (mut ing, mut eg) = (false, false);
            for policy in input.policies.values().filter(|p| selects(p, pod)) {
                let (chain_in, chain_eg) = &pol_chain[&format!("{}/{}", policy.namespace, policy.name)];
                if policy.ingress.is_some() {
                    let _ = writeln!(rules, "-A {fw} -d {ip}/32 -j {chain_in}");
                    ing = true;
                    rule_count += 1;
                }
                if policy.egress.is_some() {
                    let _ = writeln!(rules, "-A {fw} -s {ip}/32 -j {chain_eg}");
                    eg = true;
                    rule_count += 1;
                }
            }
            if ing {
                let _ = writeln!(rules, "-A {fw} -d {ip}/32 -m mark ! --mark 0x10000/0x10000 -j REJECT");
                rule_count += 1;
            }
            if eg {
                let _ = writeln!(rules, "-A {fw} -s {ip}/32 -m mark ! --mark 0x10000/0x10000 -j REJECT");
                rule_count += 1;
            }
            // Clear the mark for the other end's chain.
            let _ = writeln!(rules, "-A {fw} -j MARK --set-xmark 0x0/0x10000");
            rule_count += 1;
        }
    }
    chains.push_str(&rules);
    chains.push_str("COMMIT\n");
    Ruleset { kind: Kind::Iptables, rules: chains, sets, rule_count, set_count }
}

fn nftables(input: &Input) -> Ruleset {
    let pods = live(input);
    let locals: Vec<&Pod> = pods.iter().copied().filter(|p| p.node_name.as_deref() == Some(NODE)).collect();
    let mut out = String::from("table ip plb_netpol {\n");
    let mut body = String::new();
    let (mut rule_count, mut set_count) = (0usize, 0usize);
    let mut peer_sets: BTreeMap<String, String> = BTreeMap::new();
    let mut set_for = |out: &mut String, key: String, peers: &Peers| -> (Option<String>, Option<String>) {
        let h = short_hash(&key);
        let mut names = (None, None);
        if !peers.pods.is_empty() {
            let name = format!("p_{h}");
            if !peer_sets.contains_key(&name) {
                let els: Vec<String> = peers.pods.iter().map(|a| a.to_string()).collect();
                let _ =
                    writeln!(out, "  set {name} {{\n    type ipv4_addr\n    elements = {{ {} }}\n  }}", els.join(", "));
                peer_sets.insert(name.clone(), key.clone());
                set_count += 1;
            }
            names.0 = Some(name);
        }
        if !peers.nets.is_empty() {
            let name = format!("n_{h}");
            if !peer_sets.contains_key(&name) {
                // Excepts carve holes: the set holds the CIDRs minus them.
                let mut els = Vec::new();
                for (cidr, except) in &peers.nets {
                    els.extend(subtract(*cidr, except).iter().map(|n| n.to_string()));
                }
                let _ = writeln!(
                    out,
                    "  set {name} {{\n    type ipv4_addr\n    flags interval\n    auto-merge\n    elements = {{ {} }}\n  }}",
                    els.join(", ")
                );
                peer_sets.insert(name.clone(), key);
                set_count += 1;
            }
            names.1 = Some(name);
        }
        names
    };
    let mut ingress_map = Vec::new();
    let mut egress_map = Vec::new();
    for pod in &locals {
        let h = short_hash(&format!("{}/{}", pod.namespace, pod.name));
        for (dir, peer_expr) in [("in", "ip saddr"), ("out", "ip daddr")] {
            let mut chain_rules = Vec::new();
            let mut isolated = false;
            for policy in input.policies.values().filter(|p| selects(p, pod)) {
                let list = if dir == "in" { &policy.ingress } else { &policy.egress };
                let Some(list) = list else { continue };
                isolated = true;
                for (ri, rule) in list.iter().enumerate() {
                    let key = format!("{}/{}/{dir}/{ri}", policy.namespace, policy.name);
                    let peer_terms: Vec<String> = match peers_of(input, policy, rule, &pods) {
                        None => vec![String::new()],
                        Some(peers) => {
                            let (p, n) = set_for(&mut body, key, &peers);
                            p.iter().chain(n.iter()).map(|s| format!("{peer_expr} @{s} ")).collect()
                        }
                    };
                    let port_terms: Vec<String> = if rule.ports.is_empty() {
                        vec![String::new()]
                    } else {
                        ports_of(rule)
                            .iter()
                            .map(|(proto, range)| match range {
                                None => format!("meta l4proto {proto} "),
                                Some((a, b)) if a == b => format!("{proto} dport {a} "),
                                Some((a, b)) => format!("{proto} dport {a}-{b} "),
                            })
                            .collect()
                    };
                    for pt in &peer_terms {
                        for port in &port_terms {
                            chain_rules.push(format!("    {pt}{port}return"));
                        }
                    }
                }
            }
            if !isolated {
                continue;
            }
            let chain = format!("{dir}_{h}");
            let _ = writeln!(body, "  chain {chain} {{\n{}\n    drop\n  }}", chain_rules.join("\n"));
            rule_count += chain_rules.len() + 1;
            for ip in v4s(pod) {
                if dir == "in" {
                    ingress_map.push(format!("{ip} : jump {chain}"));
                } else {
                    egress_map.push(format!("{ip} : jump {chain}"));
                }
            }
        }
    }
    out.push_str(&body);
    for (name, els) in [("ingress", &ingress_map), ("egress", &egress_map)] {
        let elements =
            if els.is_empty() { String::new() } else { format!("\n    elements = {{ {} }}", els.join(", ")) };
        let _ = writeln!(out, "  map {name} {{\n    type ipv4_addr : verdict{elements}\n  }}");
    }
    out.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    ct state invalid drop\n    ip saddr vmap @egress\n    ip daddr vmap @ingress\n  }\n}\n",
    );
    rule_count += 4;
    Ruleset { kind: Kind::Nftables, rules: out, sets: String::new(), rule_count, set_count }
}

/// `cidr` minus `except`, as CIDRs.
fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![cidr];
    for e in except {
        let mut next = Vec::new();
        for p in parts {
            if !p.contains(&e.network()) && !e.contains(&p.network()) {
                next.push(p);
            } else if e.contains(&p.network()) && e.prefix_len() <= p.prefix_len() {
                // Entirely excluded.
            } else {
                // Split p until e is carved out.
                let mut stack = vec![p];
                while let Some(q) = stack.pop() {
                    if !q.contains(&e.network()) {
                        next.push(q);
                    } else if q.prefix_len() < e.prefix_len()
                        && let Ok(subs) = q.subnets(q.prefix_len() + 1)
                    {
                        stack.extend(subs);
                    }
                }
            }
        }
        parts = next;
    }
    parts
}

fn pipe(netns: &str, args: &[&str], stdin: &str) -> Result<()> {
    use std::io::Write;
    let mut c = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", args.join(" ")))?;
    c.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Loads a ruleset into the node; returns how long it took.
pub fn install(netns: &str, rs: &Ruleset, scratch: &Path) -> Result<Duration> {
    let t = Instant::now();
    match rs.kind {
        Kind::Iptables => {
            pipe(netns, &["ipset", "restore"], &rs.sets)?;
            pipe(netns, &["iptables-restore", "--noflush"], &rs.rules)?;
        }
        Kind::Nftables => {
            let f = scratch.join("nftables.nft");
            std::fs::write(&f, &rs.rules)?;
            let fs = f.to_string_lossy().to_string();
            pipe(netns, &["nft", "-f", &fs], "")?;
        }
    }
    Ok(t.elapsed())
}

/// Removes a ruleset from the node.
pub fn uninstall(netns: &str, kind: Kind) -> Result<()> {
    match kind {
        Kind::Iptables => {
            pipe(netns, &["iptables", "-F"], "")?;
            pipe(netns, &["iptables", "-X"], "")?;
            pipe(netns, &["ipset", "destroy"], "")?;
        }
        Kind::Nftables => {
            let _ = pipe(netns, &["nft", "delete", "table", "ip", "plb_netpol"], "");
        }
    }
    Ok(())
}
