//! `palisade trace`: would this connection be allowed, and why. The verdict
//! of each side comes from the compiled entries through the same lookup the
//! kernel does; the explanation walks the policies that concern the pod and
//! says, rule by rule, what matched and what did not.

use crate::policy::compile::compile_with_hints;
use crate::policy::lookup;
use crate::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, ClusterSubject, NamespaceMatch, Peer, PortMatch,
    Protocol, Rule, Tier, named_port,
};
use crate::policy::{Compiled, Direction, Input, Namespace, Node, Pod, Policy, compile};
use palisade_common::peer_info;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One end of the traced connection, as the user named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointRef {
    /// namespace/name
    Pod(String, String),
    Ip(IpAddr),
}

impl std::str::FromStr for EndpointRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(EndpointRef::Ip(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(EndpointRef::Pod(ns.into(), name.into())),
            _ => Err(format!("{s}: expected namespace/pod or an IP address")),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Query {
    pub from: EndpointRef,
    pub to: EndpointRef,
    pub port: u16,
    pub protocol: Protocol,
    /// Use the pods' IPv6 addresses.
    #[serde(default)]
    pub ipv6: bool,
}

/// An end of the connection, resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct End {
    pub ip: IpAddr,
    /// namespace/name when the address is a pod's.
    pub pod: Option<String>,
}

/// A rule that allows the connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: String,
    pub rule: usize,
}

/// Why one policy does or does not decide this side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyTrace {
    pub policy: String,
    /// The policy selects the pod and names this direction.
    pub applies: bool,
    /// One line per rule (or why the policy does not apply).
    pub notes: Vec<String>,
}

/// Kernel state for one side, compared with what the compiler expects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KernelCheck {
    /// Interface the pod is enforced on.
    pub interface: Option<String>,
    /// The verdict the kernel maps give for this flow.
    pub allowed: Option<bool>,
    /// Differences between kernel maps and compiler output (empty: agree).
    pub differences: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Side {
    pub direction: Direction,
    /// The pod whose policy decides this side; None for non-pod ends.
    pub pod: Option<String>,
    pub isolated: bool,
    pub allowed: bool,
    pub summary: String,
    pub allowed_by: Vec<RuleRef>,
    pub policies: Vec<PolicyTrace>,
    /// The walk through the tiers, as the policy API's policy-assistant
    /// shows it: `[Admin]` rules of the ClusterNetworkPolicies selecting the
    /// pod, `[NetworkPolicy]`, `[Baseline]`, `[default]`, up to the step
    /// that decided. Empty when no ClusterNetworkPolicy selects the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCheck>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trace {
    pub allowed: bool,
    pub source: End,
    pub destination: End,
    pub port: u16,
    pub protocol: Protocol,
    pub egress: Side,
    pub ingress: Side,
}

fn find_pod<'a>(input: &'a Input, r: &EndpointRef, ipv6: bool) -> Result<(Option<&'a Pod>, IpAddr), String> {
    match r {
        EndpointRef::Pod(ns, name) => {
            let pod = input.pods.get(&(ns.clone(), name.clone())).ok_or_else(|| format!("no pod {ns}/{name}"))?;
            let ip = pod
                .ips
                .iter()
                .find(|ip| ip.is_ipv6() == ipv6)
                .copied()
                .ok_or_else(|| format!("pod {ns}/{name} has no IPv{} address", if ipv6 { 6 } else { 4 }))?;
            Ok((Some(pod), ip))
        }
        EndpointRef::Ip(ip) => {
            let pod = input.pods.values().find(|p| !p.terminated && !p.host_network && p.ips.contains(ip));
            Ok((pod.map(|p| p.as_ref()), *ip))
        }
    }
}

fn ns(input: &Input, name: &str) -> Namespace {
    input.namespaces.get(name).map(|n| n.as_ref().clone()).unwrap_or_else(|| Namespace::implicit(name))
}

/// Traces a connection. `node` is the agent's node (host addresses,
/// host allowance); each side is compiled for its pod's own node.
pub fn trace(input: &Input, node: &Node, q: &Query) -> Result<Trace, String> {
    let (src_pod, src_ip) = find_pod(input, &q.from, q.ipv6)?;
    let (dst_pod, dst_ip) = find_pod(input, &q.to, q.ipv6 || matches!(q.from, EndpointRef::Ip(ip) if ip.is_ipv6()))?;
    if src_ip.is_ipv6() != dst_ip.is_ipv6() {
        return Err(format!("{src_ip} and {dst_ip} are of different address families"));
    }
    let egress = side(input, node, src_pod, Direction::Egress, dst_ip, dst_pod, q);
    let ingress = side(input, node, dst_pod, Direction::Ingress, src_ip, src_pod, q);
    let id = |p: Option<&Pod>| p.map(|p| format!("{}/{}", p.namespace, p.name));
    Ok(Trace {
        allowed: egress.allowed && ingress.allowed,
        source: End { ip: src_ip, pod: id(src_pod) },
        destination: End { ip: dst_ip, pod: id(dst_pod) },
        port: q.port,
        protocol: q.protocol,
        egress,
        ingress,
    })
}

/// The compiled entries that judge `pod`: compiled for its node.
pub fn compiled_for(input: &Input, node: &Node, pod: &Pod) -> Compiled {
    compile(input, &node_of(input, node, pod))
}

/// The node that judges `pod`, seen from `node`: a pod elsewhere is judged
/// by its own node, whose addresses (its Node object's) are host addresses
/// there, not this node's.
fn node_of(input: &Input, node: &Node, pod: &Pod) -> Node {
    match pod.node_name.as_deref() {
        Some(name) if name != node.name => Node {
            name: name.to_string(),
            host_ips: input.nodes.get(name).map(|n| n.ips.clone()).unwrap_or_else(|| node.host_ips.clone()),
            ..node.clone()
        },
        _ => node.clone(),
    }
}

fn side(
    input: &Input,
    node: &Node,
    local: Option<&Pod>,
    dir: Direction,
    remote_ip: IpAddr,
    remote_pod: Option<&Pod>,
    q: &Query,
) -> Side {
    let Some(pod) = local.filter(|p| !p.host_network) else {
        let what = if local.is_some() { "a host-network pod" } else { "not a pod" };
        return Side {
            direction: dir,
            pod: local.map(|p| format!("{}/{}", p.namespace, p.name)),
            isolated: false,
            allowed: true,
            summary: format!("{what}: NetworkPolicy does not apply on this side"),
            allowed_by: vec![],
            policies: vec![],
            tiers: vec![],
            kernel: None,
        };
    };
    let id = format!("{}/{}", pod.namespace, pod.name);
    let node = &node_of(input, node, pod);
    let compiled = compile(input, node);
    let ep = compiled.endpoints.iter().find(|e| e.namespace == pod.namespace && e.name == pod.name);
    let verdict = ep.map(|e| lookup::decide(&compiled, &e.kernel(), dir, remote_ip, q.protocol.number(), q.port));
    let mut policies = Vec::new();
    let mut allowed_by = Vec::new();
    let remote_ns = remote_pod.map(|p| ns(input, &p.namespace));
    for policy in input.policies.values().filter(|p| p.namespace == pod.namespace) {
        let pt = explain_policy(policy, pod, dir, remote_ip, remote_pod, remote_ns.as_ref(), q);
        for (i, matched) in pt.1.iter().enumerate() {
            if *matched {
                allowed_by.push(RuleRef { policy: format!("{}/{}", policy.namespace, policy.name), rule: i });
            }
        }
        policies.push(pt.0);
    }
    let isolating: Vec<String> = policies.iter().filter(|p| p.applies).map(|p| p.policy.clone()).collect();
    let host_allowed = dir == Direction::Ingress
        && node.allow_host
        && node.host_ips.contains(&remote_ip)
        && remote_pod.is_none_or(|p| p.host_network);
    // The node allowance comes before every tier.
    let walk = if host_allowed {
        Walk::default()
    } else {
        walk_tiers(input, node, pod, dir, remote_ip, remote_pod, remote_ns.as_ref(), q)
    };
    let np_allowed = isolating.is_empty() || !allowed_by.is_empty();
    let explained_allowed = match (&walk.admin, isolating.is_empty(), &walk.baseline) {
        (Some(d), _, _) => d.allowed,
        (None, true, Some(d)) => d.allowed,
        _ => np_allowed,
    };
    let allowed = match verdict {
        Some(v) => v.allowed,
        None => explained_allowed || host_allowed,
    };
    let deferred = verdict.is_some_and(|v| v.deferred);
    let summary = if deferred {
        format!(
            "{remote_ip} is a Service cluster IP: egress passes here and is judged after DNAT, against the backend (trace the backend pod)"
        )
    } else if let Some(d) = &walk.admin {
        d.text.clone()
    } else if isolating.is_empty() {
        match &walk.baseline {
            Some(d) => d.text.clone(),
            None => format!("{id} is not isolated for {dir}: no policy selects it for {dir}"),
        }
    } else if !allowed_by.is_empty() {
        let rules: Vec<String> = allowed_by.iter().map(|r| format!("{} rule {}", r.policy, r.rule)).collect();
        format!("allowed by {}", rules.join(", "))
    } else if host_allowed {
        "allowed: traffic from the node itself to its pods (kubelet probes)".to_string()
    } else {
        format!("{id} is isolated for {dir} by {}, and no rule allows this", isolating.join(", "))
    };
    let mut summary = summary;
    if explained_allowed != allowed && !host_allowed && !deferred {
        summary.push_str(" [the compiled rules say otherwise: please report this as a bug]");
    }
    let mut tiers = walk.lines;
    if walk.selected && walk.admin.is_none() {
        tiers.push(if isolating.is_empty() {
            format!("[NetworkPolicy] {id} is not isolated for {dir}: on to Baseline")
        } else if np_allowed {
            format!("[NetworkPolicy] {summary}")
        } else {
            format!("[NetworkPolicy] isolated by {}, no rule allows this: denied", isolating.join(", "))
        });
        if isolating.is_empty() {
            tiers.extend(walk.baseline_lines);
            if walk.baseline.is_none() {
                tiers.push("[default] allowed".to_string());
            }
        }
    }
    Side {
        direction: dir,
        pod: Some(id),
        isolated: !isolating.is_empty(),
        allowed,
        summary,
        allowed_by,
        policies,
        tiers,
        kernel: None,
    }
}

/// A tier's decision.
#[derive(Debug)]
struct Decided {
    allowed: bool,
    text: String,
}

/// The walk through the ClusterNetworkPolicy tiers for one side.
#[derive(Debug, Default)]
struct Walk {
    /// Some ClusterNetworkPolicy selects the pod for this direction.
    selected: bool,
    /// `[Admin]` lines (and the decision, if one decided).
    lines: Vec<String>,
    admin: Option<Decided>,
    /// `[Baseline]` lines, shown when NetworkPolicy does not isolate.
    baseline_lines: Vec<String>,
    baseline: Option<Decided>,
}

#[allow(clippy::too_many_arguments)]
fn walk_tiers(
    input: &Input,
    node: &Node,
    pod: &Pod,
    dir: Direction,
    remote_ip: IpAddr,
    remote_pod: Option<&Pod>,
    remote_ns: Option<&Namespace>,
    q: &Query,
) -> Walk {
    let mut walk = Walk::default();
    let own_ns = ns(input, &pod.namespace);
    let mut order: Vec<&ClusterPolicy> = input.cluster_policies.values().map(|p| p.as_ref()).collect();
    order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let dst_pod = if dir == Direction::Ingress { Some(pod) } else { remote_pod };
    for tier in [Tier::Admin, Tier::Baseline] {
        let mut lines = Vec::new();
        let mut decided = None;
        'tier: for p in order.iter().filter(|p| p.tier == tier) {
            let rules = if dir == Direction::Ingress { &p.ingress } else { &p.egress };
            if rules.is_empty() || !subject_selects(&p.subject, pod, &own_ns) {
                continue;
            }
            walk.selected = true;
            for (i, r) in rules.iter().enumerate() {
                let name = if r.name.is_empty() { format!("{dir} rule {i}") } else { format!("rule {}", r.name) };
                let head = format!("[{tier}] {} (priority {}) {name}", p.name, p.priority);
                let (peer_ok, peer_note) = cluster_peers_match(r, input, node, remote_ip, remote_pod, remote_ns);
                let (port_ok, port_note) = cluster_ports_match(r, dst_pod, q);
                if !(peer_ok && port_ok) {
                    lines.push(format!("{head}: no match: {peer_note}; {port_note}"));
                    continue;
                }
                let text = format!(
                    "{} by ClusterNetworkPolicy {} {name} ({tier}, priority {}, {})",
                    if r.action == Action::Accept { "allowed" } else { "denied" },
                    p.name,
                    p.priority,
                    r.action
                );
                match r.action {
                    Action::Pass => {
                        let next = if tier == Tier::Admin { "NetworkPolicy" } else { "the default" };
                        lines.push(format!("{head}: matches ({peer_note}; {port_note}): Pass, on to {next}"));
                        break 'tier;
                    }
                    _ => {
                        lines.push(format!("{head}: matches ({peer_note}; {port_note}): {}", r.action));
                        decided = Some(Decided { allowed: r.action == Action::Accept, text });
                        break 'tier;
                    }
                }
            }
        }
        match tier {
            Tier::Admin => {
                walk.lines = lines;
                walk.admin = decided;
            }
            Tier::Baseline => {
                walk.baseline_lines = lines;
                walk.baseline = decided;
            }
        }
    }
    walk
}

fn subject_selects(subject: &ClusterSubject, pod: &Pod, ns: &Namespace) -> bool {
    !pod.host_network
        && match subject {
            ClusterSubject::Namespaces(s) => s.matches(&ns.labels),
            ClusterSubject::Pods { namespaces, pods } => namespaces.matches(&ns.labels) && pods.matches(&pod.labels),
        }
}

fn cluster_peers_match(
    rule: &ClusterRule,
    input: &Input,
    node: &Node,
    remote_ip: IpAddr,
    remote_pod: Option<&Pod>,
    remote_ns: Option<&Namespace>,
) -> (bool, String) {
    let pod = remote_pod.filter(|p| !p.host_network).zip(remote_ns);
    let mut notes = Vec::new();
    for peer in &rule.peers {
        match peer {
            ClusterPeer::Namespaces(s) => match pod {
                Some((p, n)) if s.matches(&n.labels) => {
                    return (true, format!("namespaces {s} match {}", p.namespace));
                }
                Some((p, _)) => notes.push(format!("namespaces {s} do not match {}", p.namespace)),
                None => notes.push(format!("{remote_ip} is not a pod")),
            },
            ClusterPeer::Pods { namespaces, pods } => match pod {
                Some((p, n)) if namespaces.matches(&n.labels) && pods.matches(&p.labels) => {
                    return (true, format!("pods {namespaces} / {pods} match {}/{}", p.namespace, p.name));
                }
                Some((p, _)) => {
                    notes.push(format!("pods {namespaces} / {pods} do not match {}/{}", p.namespace, p.name))
                }
                None => notes.push(format!("{remote_ip} is not a pod")),
            },
            ClusterPeer::Nodes(s) => {
                // A pod's address is the pod's, even on a node's network.
                let owned = remote_pod.is_some_and(|p| !p.host_network);
                let own = node.host_ips.contains(&remote_ip);
                let hit = !owned
                    && ((s.is_empty() && own)
                        || input.nodes.values().any(|n| {
                            s.matches(&n.labels) && (n.ips.contains(&remote_ip) || (n.name == node.name && own))
                        }));
                if hit {
                    return (true, format!("nodes {s} have address {remote_ip}"));
                }
                notes.push(format!("no node {s} has address {remote_ip}"));
            }
            ClusterPeer::Networks(nets) => {
                if let Some(n) = nets.iter().find(|n| n.trunc().contains(&remote_ip)) {
                    return (true, format!("network {n} contains {remote_ip}"));
                }
                notes.push(format!("networks do not contain {remote_ip}"));
            }
            ClusterPeer::Unsupported(what) => {
                if rule.action != Action::Accept {
                    return (true, format!("unsupported peer ({what}) matches everything in a {}", rule.action));
                }
                notes.push(format!("unsupported peer ({what}) matches nothing in an Accept"));
            }
        }
    }
    (false, notes.join("; "))
}

fn cluster_ports_match(rule: &ClusterRule, dst_pod: Option<&Pod>, q: &Query) -> (bool, String) {
    if rule.ports.is_empty() {
        return (true, "all traffic".into());
    }
    let mut notes = Vec::new();
    for port in &rule.ports {
        match port {
            ClusterPort::Ports { protocol, first, last } => {
                let range = if first == last { first.to_string() } else { format!("{first}-{last}") };
                if *protocol == q.protocol && (*first..=*last).contains(&q.port) {
                    return (true, format!("{protocol} {range}"));
                }
                notes.push(format!("not {protocol} {range}"));
            }
            ClusterPort::Named(name) => {
                let declared = dst_pod.map(|p| {
                    p.ports.iter().any(|np| np.name == *name && np.protocol == q.protocol && np.port == q.port)
                });
                if declared == Some(true) {
                    return (true, format!("named port {name}"));
                }
                notes.push(format!("not named port {name} of the destination"));
            }
        }
    }
    (false, notes.join("; "))
}

fn explain_policy(
    policy: &Policy,
    pod: &Pod,
    dir: Direction,
    remote_ip: IpAddr,
    remote_pod: Option<&Pod>,
    remote_ns: Option<&Namespace>,
    q: &Query,
) -> (PolicyTrace, Vec<bool>) {
    let name = format!("{}/{}", policy.namespace, policy.name);
    let mut pt = PolicyTrace { policy: name, applies: false, notes: vec![] };
    if !policy.pod_selector.matches(&pod.labels) {
        pt.notes.push(format!("does not select {} (podSelector {})", pod.name, policy.pod_selector));
        return (pt, vec![]);
    }
    let rules = match dir {
        Direction::Ingress => &policy.ingress,
        Direction::Egress => &policy.egress,
    };
    let Some(rules) = rules else {
        pt.notes.push(format!("selects {} but does not cover {dir} (policyTypes)", pod.name));
        return (pt, vec![]);
    };
    pt.applies = true;
    if rules.is_empty() {
        pt.notes.push(format!("selects {} for {dir} and has no {dir} rules: allows nothing", pod.name));
        return (pt, vec![]);
    }
    // The destination pod resolves named ports.
    let dst_pod = if dir == Direction::Ingress { Some(pod) } else { remote_pod };
    let mut matched = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let (peer_ok, peer_note) = peers_match(rule, policy, remote_ip, remote_pod, remote_ns);
        let (port_ok, port_note) = ports_match(rule, dst_pod, q);
        let ok = peer_ok && port_ok;
        matched.push(ok);
        pt.notes.push(format!("rule {i}: {} {peer_note}; {port_note}", if ok { "matches:" } else { "no match:" }));
    }
    (pt, matched)
}

fn peers_match(
    rule: &Rule,
    policy: &Policy,
    remote_ip: IpAddr,
    remote_pod: Option<&Pod>,
    remote_ns: Option<&Namespace>,
) -> (bool, String) {
    if rule.peers.is_empty() {
        return (true, "any peer".into());
    }
    let mut notes = Vec::new();
    for peer in &rule.peers {
        match peer {
            Peer::IpBlock { cidr, except } => {
                if !cidr.contains(&remote_ip) {
                    notes.push(format!("ipBlock {cidr} does not contain {remote_ip}"));
                } else if let Some(e) = except.iter().find(|e| e.contains(&remote_ip)) {
                    notes.push(format!("{remote_ip} is in ipBlock {cidr} but excepted by {e}"));
                } else {
                    return (true, format!("ipBlock {cidr} contains {remote_ip}"));
                }
            }
            Peer::Pods { namespaces, pods } => {
                let (Some(rp), Some(rns)) = (remote_pod, remote_ns) else {
                    notes.push(format!("{remote_ip} is not a pod, so pod selectors cannot match it"));
                    continue;
                };
                let ns_ok = match namespaces {
                    NamespaceMatch::Own => rp.namespace == policy.namespace,
                    NamespaceMatch::Selector(s) => s.matches(&rns.labels),
                };
                let ns_text = match namespaces {
                    NamespaceMatch::Own => format!("namespace {}", policy.namespace),
                    NamespaceMatch::Selector(s) => format!("namespaceSelector {s}"),
                };
                if !ns_ok {
                    notes.push(format!("{ns_text} does not match namespace {}", rp.namespace));
                } else if !pods.matches(&rp.labels) {
                    notes.push(format!("podSelector {pods} does not match {}/{}", rp.namespace, rp.name));
                } else {
                    return (true, format!("{ns_text}, podSelector {pods} match {}/{}", rp.namespace, rp.name));
                }
            }
        }
    }
    (false, notes.join("; "))
}

fn ports_match(rule: &Rule, dst_pod: Option<&Pod>, q: &Query) -> (bool, String) {
    if rule.ports.is_empty() {
        return (true, "any port".into());
    }
    let mut notes = Vec::new();
    for spec in &rule.ports {
        if spec.protocol != q.protocol {
            notes.push(format!("{} is not {}", spec.protocol, q.protocol));
            continue;
        }
        let ok = match &spec.port {
            PortMatch::Any => return (true, format!("any {} port", spec.protocol)),
            PortMatch::Range(a, b) => {
                if (*a..=*b).contains(&q.port) {
                    return (true, format!("port {}", if a == b { a.to_string() } else { format!("{a}-{b}") }));
                }
                format!("port {} is not {}", q.port, if a == b { a.to_string() } else { format!("{a}-{b}") })
            }
            PortMatch::Named(name) => match dst_pod.and_then(|p| named_port(&p.ports, name, spec.protocol)) {
                Some(p) if p == q.port => return (true, format!("named port {name} is {p}")),
                Some(p) => format!("named port {name} is {p}, not {}", q.port),
                None => format!("named port {name}/{} is not declared by the destination", spec.protocol),
            },
        };
        notes.push(ok);
    }
    (false, notes.join("; "))
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = |e: &End| match &e.pod {
            Some(p) => format!("{p} ({})", e.ip),
            None => e.ip.to_string(),
        };
        writeln!(
            f,
            "{} -> {} {}/{}: {}",
            end(&self.source),
            end(&self.destination),
            self.protocol,
            self.port,
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )?;
        for side in [&self.egress, &self.ingress] {
            let who = side.pod.as_deref().unwrap_or("-");
            writeln!(
                f,
                "\n{} of {who}: {}\n  {}",
                side.direction,
                if side.allowed { "ALLOWED" } else { "DENIED" },
                side.summary
            )?;
            for line in &side.tiers {
                writeln!(f, "  {line}")?;
            }
            for p in &side.policies {
                writeln!(f, "  {}:", p.policy)?;
                for n in &p.notes {
                    writeln!(f, "    {n}")?;
                }
            }
            if let Some(k) = &side.kernel {
                if k.differences.is_empty() {
                    writeln!(f, "  kernel: agrees ({})", k.interface.as_deref().unwrap_or("-"))?;
                } else {
                    writeln!(f, "  kernel: DIFFERS from the compiled state:")?;
                    for d in &k.differences {
                        writeln!(f, "    {d}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Compares what the kernel holds for one side with the compiled state:
/// the pod's endpoint entry on the interface it is `enforced` on, the
/// remote address's identity, and the verdict the kernel's policy entries
/// give.
pub fn check_kernel(
    side: &mut Side,
    applied: &crate::state::Applied,
    pinned: &crate::datapath::pinned::Pinned,
    enforced: &crate::state::EndpointState,
    remote_ip: IpAddr,
    q: &Query,
) {
    let Some(ifindex) = enforced.ifindex else { return };
    let mut check = KernelCheck { interface: enforced.interface.clone(), ..Default::default() };
    let Some((ns, name)) = side.pod.as_deref().and_then(|p| p.split_once('/')) else { return };
    let (input, node) = (applied.input.as_ref(), &applied.node);
    if !input.pods.contains_key(&(ns.to_string(), name.to_string())) {
        return;
    }
    // The agent's numbering, not a fresh one: numbers depend on history.
    let compiled = compile_with_hints(input, node, &applied.hints);
    let Some(want) = compiled.endpoints.iter().find(|e| e.namespace == ns && e.name == name) else { return };
    let got = pinned.endpoint(ifindex);
    match got {
        None => check.differences.push(format!("no endpoint entry for interface {ifindex}")),
        Some(e) if e != want.kernel() => check.differences.push(format!(
            "endpoint entry: class {} parent {} flags {:#x}, compiled class {} parent {} flags {:#x}",
            e.class, e.parent, e.flags, want.class, want.parent, want.flags
        )),
        Some(_) => {}
    }
    let key = palisade_common::IpKey::from_ip(remote_ip);
    let (want_peer, got_peer) = (peer_info(&compiled, &key), peer_info(pinned, &key));
    if want_peer.identity != got_peer.identity {
        check.differences.push(format!(
            "address {remote_ip}: kernel identity {}, compiled {}",
            got_peer.identity, want_peer.identity
        ));
    }
    if want_peer.namespace != got_peer.namespace {
        check.differences.push(format!(
            "address {remote_ip}: kernel namespace number {}, compiled {}",
            got_peer.namespace, want_peer.namespace
        ));
    }
    if let Some(e) = got {
        let v = lookup::decide(pinned, &e, side.direction, remote_ip, q.protocol.number(), q.port);
        let allowed = v.allowed;
        if allowed != side.allowed {
            check.differences.push(format!(
                "the kernel's entries {} this flow, the compiled rules {} it",
                if allowed { "allow" } else { "deny" },
                if side.allowed { "allow" } else { "deny" }
            ));
        }
        check.allowed = Some(allowed);
    }
    side.kernel = Some(check);
}
