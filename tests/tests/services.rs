//! Service traffic that kube-proxy's rules could carry past judgement
//! (issue 9.3): a cluster IP nothing translates, a Service connection
//! SNATed on its way out (masquerade), a pod reaching itself through its
//! own Service (hairpin), a Service whose backend is the node itself, a
//! NodePort that masquerades its external clients, a masquerade-all
//! connection seen by its backend, and a node in IPVS mode. Real packets
//! through a kube-proxy-like iptables rule set in the host's nat table.

use anyhow::{Context, Result, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::netns::{Netns, ip};
use palisade_e2e::pods::{Pod, Port, cni_pod};
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{agent, np};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 9, 10);
/// The node address kube-proxy's masquerade puts on Service traffic.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 9, 254);
const CHAIN: &str = "PLE2E-SV";
/// Subnet 11 (this file's later cases): a node address on a bridge of the
/// host, a Service whose backend is a server there, a NodePort on it, and
/// an external host (outside every pod address) with two addresses.
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 241, 11, 1);
const NODE_BRIDGE: &str = "plsvnode11";
const HOST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 11, 10);
const NODE_PORT: u16 = 30011;
const EXT_DENIED: Ipv4Addr = Ipv4Addr::new(10, 241, 11, 7);
const EXT_ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 241, 11, 8);
const NODE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0x241, 11, 0, 0, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0x96, 11, 0, 0, 0, 0, 10);
const CHAIN6: &str = "PLE2E-SV6";

struct Env {
    cluster: Cluster,
    /// A pod behind another interface of the node, as on another node.
    remote: Pod,
    /// A host outside the cluster, routed through the node.
    external: Netns,
}

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        let cluster = Cluster::start("sv", 9, &[])?;
        let remote = cni_pod(
            "z/remote",
            "plsvnode2",
            Ipv4Addr::new(10, 241, 9, 5),
            "other-node",
            ("app", "remote"),
            Port::new("http", 80, "TCP"),
        )?;
        // The node's own address, and a host-network server on it.
        let _ = ip(&["link", "del", NODE_BRIDGE]);
        ip(&["link", "add", NODE_BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", NODE_BRIDGE])?;
        ip(&["addr", "add", &format!("{NODE_ADDR6}/128"), "dev", NODE_BRIDGE, "nodad"])?;
        ip(&["link", "set", NODE_BRIDGE, "up"])?;
        let server = std::net::TcpListener::bind((NODE_ADDR, 80)).context("host-network server")?;
        std::thread::spawn(move || {
            for mut s in server.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s.try_clone().expect("clone"), &mut s);
                });
            }
        });
        let _ = ip(&["link", "del", "plsvext11"]);
        let external = Netns::create("pl-sv-ext11")?;
        let ext6 = Ipv6Addr::new(0xfd10, 0x241, 11, 0, 0, 0, 0, 7);
        palisade_e2e::pods::wire(None, &external.name, "plsvext11", EXT_DENIED, ext6)?;
        external.exec(&["ip", "addr", "add", &format!("{EXT_ALLOWED}/32"), "dev", "eth0"])?;
        ip(&["route", "add", &format!("{EXT_ALLOWED}/32"), "dev", "plsvext11"])?;
        Ok(Env { cluster, remote, external })
    }

    /// Back to the pods, the remote pod and the Service, with no policy.
    fn reset(&self) -> Result<()> {
        Nat::clean();
        let _ = ip(&["route", "del", &format!("{VIP}/32")]);
        self.cluster.reset()?;
        let agent = self.cluster.agent();
        agent.apply("extra-remote.yaml", &self.remote.manifest())?;
        agent.apply("extra-svc.yaml", &service_manifest())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", NODE_BRIDGE]);
        let _ = ip(&["link", "del", "plsvext11"]);
    }
}

/// A kube-proxy-like rule set in the host's nat table (removed on drop):
/// Service DNAT in PREROUTING and, optionally, masquerade in POSTROUTING.
struct Nat;

impl Nat {
    fn rule(table_chain: &[&str], spec: &[&str]) -> Result<()> {
        let mut args = vec!["-t", "nat"];
        args.extend_from_slice(table_chain);
        args.extend_from_slice(spec);
        let out = Command::new("iptables").args(&args).output().context("iptables (is it installed?)")?;
        ensure!(out.status.success(), "iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// The cluster IP to `backend`; with `snat`, Service traffic to the
    /// backend leaves with the node's address (as `--masquerade-all`, or
    /// kube-proxy's hairpin masquerade, do).
    fn service(backend: IpAddr, snat: bool) -> Result<Nat> {
        let nat = Nat::chains()?;
        let (vip, dest) = (format!("{VIP}/32"), format!("{backend}:80"));
        Nat::rule(
            &["-A", CHAIN],
            &["-d", &vip, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", &dest],
        )?;
        if snat {
            let (to, node) = (format!("{backend}/32"), NODE_IP.to_string());
            Nat::rule(&["-A", &format!("{CHAIN}-POST")], &["-d", &to, "-j", "SNAT", "--to-source", &node])?;
        }
        Ok(nat)
    }

    /// The Service `vip`:80 to `backend`:80, and, with `snat`, what
    /// `--masquerade-all` does: Service traffic to the backend leaves with
    /// the node's address.
    fn service_at(vip: Ipv4Addr, backend: Ipv4Addr, snat: bool) -> Result<Nat> {
        let nat = Nat::chains()?;
        let (vip, dest) = (format!("{vip}/32"), format!("{backend}:80"));
        Nat::rule(
            &["-A", CHAIN],
            &["-d", &vip, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", &dest],
        )?;
        if snat {
            Nat::masquerade(backend)?;
        }
        Ok(nat)
    }

    /// A NodePort on the node's address to `backend`:80, masquerading its
    /// clients as kube-proxy does with `externalTrafficPolicy: Cluster`.
    fn node_port(backend: Ipv4Addr) -> Result<Nat> {
        let nat = Nat::chains()?;
        let (node, port, dest) = (format!("{NODE_ADDR}/32"), NODE_PORT.to_string(), format!("{backend}:80"));
        Nat::rule(
            &["-A", CHAIN],
            &["-d", &node, "-p", "tcp", "--dport", &port, "-j", "DNAT", "--to-destination", &dest],
        )?;
        Nat::masquerade(backend)?;
        Ok(nat)
    }

    /// Empty chains hooked into PREROUTING and POSTROUTING.
    fn chains() -> Result<Nat> {
        Nat::clean();
        Nat::rule(&["-N", CHAIN], &[])?;
        Nat::rule(&["-N", &format!("{CHAIN}-POST")], &[])?;
        Nat::rule(&["-I", "PREROUTING"], &["-j", CHAIN])?;
        Nat::rule(&["-I", "POSTROUTING"], &["-j", &format!("{CHAIN}-POST")])?;
        Ok(Nat)
    }

    /// DNATed traffic to `backend` leaves with the node's address.
    fn masquerade(backend: Ipv4Addr) -> Result<()> {
        let (to, node) = (format!("{backend}/32"), NODE_ADDR.to_string());
        Nat::rule(
            &["-A", &format!("{CHAIN}-POST")],
            &["-d", &to, "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", &node],
        )
    }

    fn clean() {
        let post = format!("{CHAIN}-POST");
        for args in [
            &["-D", "PREROUTING", "-j", CHAIN][..],
            &["-D", "POSTROUTING", "-j", &post],
            &["-F", CHAIN],
            &["-X", CHAIN],
            &["-F", &post],
            &["-X", &post],
        ] {
            let _ = Command::new("iptables").args(["-t", "nat"]).args(args).output();
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        Nat::clean();
    }
}

/// `--masquerade-all` over IPv6 (removed on drop): the cluster IP
/// [`VIP6`]:80 to `backend`:80, leaving with the node's address.
struct Nat6;

impl Nat6 {
    fn masquerade_all(backend: Ipv6Addr) -> Result<Nat6> {
        Nat6::clean();
        let (vip, dest, to, node) =
            (format!("{VIP6}/128"), format!("[{backend}]:80"), format!("{backend}/128"), NODE_ADDR6.to_string());
        let post = format!("{CHAIN6}-POST");
        for args in [
            &["-N", CHAIN6][..],
            &["-N", &post],
            &["-I", "PREROUTING", "-j", CHAIN6],
            &["-I", "POSTROUTING", "-j", &post],
            &["-A", CHAIN6, "-d", &vip, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", &dest],
            &["-A", &post, "-d", &to, "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", &node],
        ] {
            let out = Command::new("ip6tables").args(["-t", "nat"]).args(args).output()?;
            ensure!(out.status.success(), "ip6tables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(Nat6)
    }

    fn clean() {
        let post = format!("{CHAIN6}-POST");
        for args in [
            &["-D", "PREROUTING", "-j", CHAIN6][..],
            &["-D", "POSTROUTING", "-j", &post],
            &["-F", CHAIN6],
            &["-X", CHAIN6],
            &["-F", &post],
            &["-X", &post],
        ] {
            let _ = Command::new("ip6tables").args(["-t", "nat"]).args(args).output();
        }
    }
}

impl Drop for Nat6 {
    fn drop(&mut self) {
        Nat6::clean();
    }
}

fn service_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: \"y\"}}\nspec:\n  clusterIP: {VIP}\n  clusterIPs: [{VIP}]\n  ports: [{{port: 80, protocol: TCP}}]\n"
    )
}

/// A Service whose backend is the node itself (no endpoint objects
/// needed: only its cluster IP matters here).
fn host_service_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kubernetes, namespace: \"y\"}}\nspec:\n  clusterIP: {HOST_VIP}\n  clusterIPs: [{HOST_VIP}]\n  ports: [{{port: 80, protocol: TCP}}]\n"
    )
}

/// A connection from the external host, from `src`, to the NodePort.
fn from_outside(e: &Env, src: Ipv4Addr) -> bool {
    let sock = e.external.run(move || -> std::io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&std::net::SocketAddr::new(IpAddr::V4(src), 0).into())?;
        Ok(s)
    });
    let to = std::net::SocketAddr::new(IpAddr::V4(NODE_ADDR), NODE_PORT);
    sock.is_ok_and(|s| probe::talk(s, to, Proto::Tcp, probe::TIMEOUT))
}

/// x/b admits port 80 from `peers` only.
fn ingress_of_xb(peers: &str) -> String {
    np(
        "x",
        "ingress-b",
        &format!(
            "  podSelector: {{matchLabels: {{pod: b}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: {peers}\n    ports: [{{port: 80}}]\n"
        ),
    )
}

/// x/b's ingress drops.
fn drops_of_xb(e: &Env) -> Result<Vec<palisade::events::VerdictEvent>> {
    e.agent().events(&["--verdict", "dropped", "--direction", "ingress", "--pod", "x/b"])
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("the topology's first addresses are IPv4"),
    }
}

fn to_vip(e: &Env, from: &str) -> bool {
    probe::probe(e.topo.pod(from), IpAddr::V4(VIP), 80, Proto::Tcp)
}

/// x/a may reach `peers` (a YAML list of peers) on port 80.
fn egress_of_xa(peers: &str) -> String {
    np(
        "x",
        "egress-a",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: {peers}\n    ports: [{{port: 80}}]\n"
        ),
    )
}

const TO_REMOTE: &str = "[{namespaceSelector: {}, podSelector: {matchLabels: {app: remote}}}]";
const TO_YB: &str = "[{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]";
const TO_ITSELF: &str = "[{podSelector: {matchLabels: {pod: a}}}]";

/// x/a's drop events with this reason.
fn drops(e: &Env, reason: &str) -> Result<Vec<palisade::events::VerdictEvent>> {
    let events = e.agent().events(&["--verdict", "dropped", "--direction", "egress", "--pod", "x/a"])?;
    Ok(events.into_iter().filter(|ev| ev.reason == reason).collect())
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("a_cluster_ip_nothing_translates_does_not_pass_unjudged", |e| {
            // The cluster IP is routed out of the node untranslated, to a
            // server that answers on it: only the defer mark tells.
            e.remote.netns.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "eth0"]).ok();
            ip(&["route", "replace", &format!("{VIP}/32"), "dev", &e.remote.host_if])?;
            e.apply(&[egress_of_xa(TO_REMOTE)])?;
            // A first probe right after the route change may miss (neighbour
            // resolution): the precondition gets retries, the denial none.
            ensure!(
                (0..3).any(|_| to_vip(e, "z/a")),
                "the untranslated path works for a pod whose egress is not isolated"
            );
            ensure!(!to_vip(e, "x/a"), "an untranslated deferred packet must not pass unjudged");
            let named = drops(e, "service-untranslated")?;
            ensure!(
                named.iter().any(|ev| ev.destination.ip == IpAddr::V4(VIP)),
                "the drop says no endpoint translated {VIP}: {:#?}",
                e.agent().events(&[])
            );
            // Translated, the same policy lets it through.
            ip(&["route", "del", &format!("{VIP}/32")])?;
            let _nat = Nat::service(e.remote.ip(false), false)?;
            ensure!(to_vip(e, "x/a"), "x/a may reach z/remote through the Service");
            Ok(())
        }),
        ("service_traffic_snated_on_its_way_out_is_judged_against_its_sender", |e| {
            // --masquerade-all: the packet leaves with the node's address,
            // which names no pod; the sender is known from its own hook.
            let _nat = Nat::service(e.remote.ip(false), true)?;
            e.apply(&[egress_of_xa(TO_REMOTE)])?;
            ensure!(
                to_vip(e, "x/a"),
                "x/a may reach z/remote through a masqueraded Service: {:#?}",
                e.agent().events(&[])
            );
            e.apply(&[egress_of_xa(TO_YB)])?;
            ensure!(!to_vip(e, "x/a"), "x/a may not reach z/remote, masqueraded or not");
            let events = e.agent().events(&["--verdict", "dropped", "--pod", "z/remote"])?;
            ensure!(
                events.iter().any(|ev| ev.reason == "no-rule" && ev.destination.pod.as_deref() == Some("remote")),
                "the drop names z/remote: {events:#?}"
            );
            ensure!(to_vip(e, "z/a"), "a pod whose egress is not isolated is untouched");
            Ok(())
        }),
        ("a_pod_reaching_itself_through_its_service_is_judged", |e| {
            // Hairpin: kube-proxy masquerades it, or the reply would not
            // come back through the Service.
            let _nat = Nat::service(e.ip("x/a"), true)?;
            e.apply(&[egress_of_xa(TO_YB)])?;
            ensure!(!to_vip(e, "x/a"), "x/a's egress does not allow itself");
            e.apply(&[egress_of_xa(TO_ITSELF)])?;
            ensure!(to_vip(e, "x/a"), "x/a's egress allows itself");
            Ok(())
        }),
        ("a_service_whose_backend_is_the_node_itself_is_judged", |e| {
            // kube-proxy DNATs to a host-network server on this node (the
            // API server's cluster IP on a control-plane node): delivered
            // locally, it meets no TC hook after DNAT.
            e.cluster.add("svc-host", &host_service_manifest())?;
            let _nat = Nat::service_at(HOST_VIP, NODE_ADDR, false)?;
            let to_host_vip = |from: &str| probe::probe(e.topo.pod(from), IpAddr::V4(HOST_VIP), 80, Proto::Tcp);
            ensure!(to_host_vip("z/a"), "a pod whose egress is not isolated reaches the node's server");
            e.apply(&[egress_of_xa(TO_YB)])?;
            ensure!(!to_host_vip("x/a"), "x/a's egress does not allow the node's address");
            let named = drops(e, "no-rule")?;
            ensure!(
                named.iter().any(|ev| ev.destination.ip == IpAddr::V4(NODE_ADDR) && ev.destination.port == Some(80)),
                "the drop names the node's address as the destination: {named:#?}"
            );
            let node = format!("[{{ipBlock: {{cidr: {NODE_ADDR}/32}}}}]");
            e.apply(&[egress_of_xa(&node)])?;
            ensure!(to_host_vip("x/a"), "x/a's egress allows the node's address: {:#?}", e.agent().events(&[]));
            Ok(())
        }),
        ("an_external_client_through_a_masqueraded_node_port_is_judged_as_itself", |e| {
            // externalTrafficPolicy: Cluster: the backend sees the node's
            // address, which its ingress policy would let in as the node.
            let _nat = Nat::node_port(v4(e.ip("x/b")))?;
            // The precondition right after the NAT rules go in gets retries
            // (a first probe may miss, as above); the denial below none.
            ensure!((0..3).any(|_| from_outside(e, EXT_DENIED)), "the NodePort works while x/b is not isolated");
            e.apply(&[ingress_of_xb(&format!("[{{ipBlock: {{cidr: {EXT_ALLOWED}/32}}}}]"))])?;
            ensure!(!from_outside(e, EXT_DENIED), "x/b's ingress policy does not admit {EXT_DENIED}");
            let events = drops_of_xb(e)?;
            ensure!(
                events.iter().any(|ev| ev.source.ip == IpAddr::V4(EXT_DENIED) && ev.reason == "no-rule"),
                "the drop names the real client: {events:#?}"
            );
            ensure!(
                from_outside(e, EXT_ALLOWED),
                "x/b's ingress policy admits {EXT_ALLOWED}: {:#?}",
                e.agent().events(&[])
            );
            Ok(())
        }),
        ("a_masquerade_all_connection_is_judged_against_its_client_by_the_backend", |e| {
            let _nat = Nat::service_at(VIP, v4(e.ip("x/b")), true)?;
            e.apply(&[ingress_of_xb(TO_YB)])?;
            ensure!(!to_vip(e, "x/a"), "x/b's ingress does not admit x/a, masqueraded or not");
            let events = drops_of_xb(e)?;
            ensure!(
                events.iter().any(|ev| ev.source.pod.as_deref() == Some("a") && ev.reason == "no-rule"),
                "the drop names x/a: {events:#?}"
            );
            let from_xa = "[{podSelector: {matchLabels: {pod: a}}}]";
            e.apply(&[ingress_of_xb(from_xa)])?;
            ensure!(
                to_vip(e, "x/a"),
                "x/b's ingress admits x/a: {:#?}\n{}",
                e.agent().events(&[]),
                e.agent().log_tail()
            );
            ensure!(!to_vip(e, "z/a"), "and still not z/a");
            // The same over IPv6.
            let backend6 = match e.topo.pod("x/b").ip(true) {
                IpAddr::V6(a) => a,
                IpAddr::V4(_) => unreachable!("an IPv6 address"),
            };
            let _nat6 = Nat6::masquerade_all(backend6)?;
            let to_vip6 = |from: &str| probe::probe(e.topo.pod(from), IpAddr::V6(VIP6), 80, Proto::Tcp);
            ensure!(to_vip6("x/a"), "x/b admits x/a over IPv6: {:#?}", e.agent().events(&[]));
            ensure!(!to_vip6("z/a"), "x/b does not admit z/a over IPv6, masqueraded or not");
            let events = drops_of_xb(e)?;
            ensure!(
                events.iter().any(|ev| ev.source.ip == e.topo.pod("z/a").ip(true) && ev.reason == "no-rule"),
                "the IPv6 drop names z/a: {events:#?}"
            );
            // With --deny-host the node's address is refused at x/b, but the
            // connection was judged against x/a: it passes.
            e.cluster.restart(&["--deny-host"])?;
            let outcome = (|| -> Result<()> {
                e.apply(&[ingress_of_xb(from_xa)])?;
                ensure!(to_vip(e, "x/a"), "judged against x/a, not as the node: {:#?}", e.agent().events(&[]));
                ensure!(!to_vip(e, "z/a"), "z/a is still refused");
                Ok(())
            })();
            e.cluster.restart(&[])?;
            outcome
        }),
        ("netfilter_hooks_are_installed_and_put_back", |e| {
            let listing = |tool: &str| -> Result<String> {
                let out = Command::new(tool).args(["-t", "mangle", "-S"]).output()?;
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            };
            for tool in ["iptables", "ip6tables"] {
                let rules = listing(tool)?;
                ensure!(
                    rules.lines().find(|l| l.starts_with("-A FORWARD")) == Some("-A FORWARD -j PALISADE-FORWARD")
                        && rules.lines().find(|l| l.starts_with("-A INPUT")) == Some("-A INPUT -j PALISADE-INPUT"),
                    "{tool}: the jumps come first: {rules}"
                );
                ensure!(
                    rules.contains(&e.agent().bpffs.display().to_string()),
                    "{tool}: on this agent's programs: {rules}"
                );
            }
            // Someone flushes them: the next sync after the recheck interval
            // puts them back.
            Command::new("iptables").args(["-t", "mangle", "-F", "PALISADE-FORWARD"]).status()?;
            std::thread::sleep(std::time::Duration::from_secs(11));
            e.apply(&[egress_of_xa(TO_YB)])?;
            ensure!(listing("iptables")?.contains("-A PALISADE-FORWARD"), "put back: {}", listing("iptables")?);
            Ok(())
        }),
        ("ipvs_mode_is_refused_at_start", |_| {
            let ns = Netns::create("pl-sv-ipvs")?;
            // Any link type will do (this kernel may lack dummy).
            ns.exec(&["ip", "link", "add", "kube-ipvs0", "type", "bridge"])?;
            let run = |extra: &[&str]| -> Result<std::process::Output> {
                let dir = std::env::temp_dir().join(format!("palisade-e2e-sv-ipvs-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let mut cmd = palisade_e2e::netns::command_in(&ns.name, &agent::binary())?;
                cmd.arg("run").arg("--cluster-state").arg(&dir).arg("--bpffs").arg(dir.join("bpf"));
                cmd.arg("--socket").arg(dir.join("sock")).args(["--metrics-addr", ""]).args(extra);
                let mut child =
                    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
                // With --allow-ipvs the agent runs: stop it after a moment.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
                while child.try_wait()?.is_none() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                let _ = child.kill();
                let out = child.wait_with_output()?;
                let _ = Command::new(agent::binary()).args(["uninstall", "--bpffs"]).arg(dir.join("bpf")).status();
                let _ = std::fs::remove_dir_all(&dir);
                Ok(out)
            };
            let refused = run(&[])?;
            let err = String::from_utf8_lossy(&refused.stderr);
            ensure!(!refused.status.success() && err.contains("IPVS mode"), "refused with a clear error: {err}");
            ensure!(err.contains("kube-ipvs0") && err.contains("--allow-ipvs"), "the error says why and how: {err}");
            let allowed = run(&["--allow-ipvs"])?;
            let err = String::from_utf8_lossy(&allowed.stderr);
            ensure!(!err.contains("IPVS mode"), "--allow-ipvs starts anyway: {err}");
            Ok(())
        }),
    ]
}

fn main() {
    palisade_e2e::suite::run(cases())
}
