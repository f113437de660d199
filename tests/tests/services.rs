//! Service traffic that kube-proxy's rules could carry past judgement
//! (issue 9.3): a cluster IP nothing translates, a Service connection
//! SNATed on its way out (masquerade), a pod reaching itself through its
//! own Service (hairpin), and a node in IPVS mode. Real packets through a
//! kube-proxy-like iptables rule set in the host's nat table.

use anyhow::{Context, Result, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::netns::{Netns, ip};
use palisade_e2e::pods::{Pod, PodSpec, Port};
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{agent, np};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 9, 10);
/// The node address kube-proxy's masquerade puts on Service traffic.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 9, 254);
const CHAIN: &str = "PLE2E-SV";

struct Env {
    cluster: Cluster,
    /// A pod behind another interface of the node, as on another node.
    remote: Pod,
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
        let spec = PodSpec {
            namespace: "z".into(),
            name: "remote".into(),
            labels: vec![("app".into(), "remote".into())],
            ip4: Ipv4Addr::new(10, 241, 9, 5),
            ip6: Ipv6Addr::new(0xfd10, 0x241, 9, 0, 0, 0, 0, 5),
            node: "other-node".into(),
            ports: vec![Port::new("http", 80, "TCP")],
        };
        let remote = Pod::create("pl-sv-node2", "plsvnode2", spec)?;
        Ok(Env { cluster, remote })
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
        Nat::clean();
        Nat::rule(&["-N", CHAIN], &[])?;
        Nat::rule(&["-N", &format!("{CHAIN}-POST")], &[])?;
        Nat::rule(&["-I", "PREROUTING"], &["-j", CHAIN])?;
        Nat::rule(&["-I", "POSTROUTING"], &["-j", &format!("{CHAIN}-POST")])?;
        let (vip, dest) = (format!("{VIP}/32"), format!("{backend}:80"));
        Nat::rule(
            &["-A", CHAIN],
            &["-d", &vip, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", &dest],
        )?;
        if snat {
            let (to, node) = (format!("{backend}/32"), NODE_IP.to_string());
            Nat::rule(&["-A", &format!("{CHAIN}-POST")], &["-d", &to, "-j", "SNAT", "--to-source", &node])?;
        }
        Ok(Nat)
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

fn service_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: \"y\"}}\nspec:\n  clusterIP: {VIP}\n  clusterIPs: [{VIP}]\n  ports: [{{port: 80, protocol: TCP}}]\n"
    )
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
            ensure!(to_vip(e, "z/a"), "the untranslated path works for a pod whose egress is not isolated");
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
