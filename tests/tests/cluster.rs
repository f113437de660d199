//! What running in a cluster demands: Service traffic DNATed by a
//! kube-proxy-like rule set judged against the real backend, restarts
//! without an enforcement gap, pinned state of other builds, and strict mode
//! (a new pod's interface held closed from when the agent sees it until
//! its policy is in force).

use anyhow::{Context, Result, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::pods::{Port, cni_pod};
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{NODE, np};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 3, 10);
const STRICT_PREFIX: &str = "plclnew";

struct Env(Cluster);

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        Ok(Env(Cluster::start("cl", 3, &["--strict", STRICT_PREFIX])?))
    }

    fn reset(&self) -> Result<()> {
        self.0.reset()
    }
}

/// A kube-proxy-like DNAT rule set in the host's nat table: the Service's
/// cluster IP to one backend. Removed on drop.
struct Dnat;

impl Dnat {
    fn to(backend: IpAddr) -> Result<Dnat> {
        let _ = Dnat::clean();
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("iptables").args(args).output().context("iptables (is it installed?)")?;
            ensure!(out.status.success(), "iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        run(&["-t", "nat", "-N", "PLE2E-SERVICES"])?;
        run(&["-t", "nat", "-I", "PREROUTING", "-j", "PLE2E-SERVICES"])?;
        let dest = format!("{backend}:80");
        let vip = format!("{VIP}/32");
        run(&[
            "-t",
            "nat",
            "-A",
            "PLE2E-SERVICES",
            "-d",
            &vip,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &dest,
        ])?;
        Ok(Dnat)
    }

    fn clean() -> Result<()> {
        for args in [
            &["-t", "nat", "-D", "PREROUTING", "-j", "PLE2E-SERVICES"][..],
            &["-t", "nat", "-F", "PLE2E-SERVICES"],
            &["-t", "nat", "-X", "PLE2E-SERVICES"],
        ] {
            let _ = Command::new("iptables").args(args).output();
        }
        Ok(())
    }
}

impl Drop for Dnat {
    fn drop(&mut self) {
        let _ = Dnat::clean();
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

/// x/a may reach only y/b (and pods labelled app=remote) on port 80.
fn egress_to_yb() -> String {
    np(
        "x",
        "egress-yb",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n      podSelector: {matchLabels: {pod: b}}\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {app: remote}}\n    ports: [{port: 80}]\n",
    )
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("service_traffic_is_judged_against_the_local_backend", |e| {
            e.agent().apply("extra-svc.yaml", &service_manifest())?;
            e.apply(&[egress_to_yb()])?;
            let dnat = Dnat::to(e.ip("y/b"))?;
            ensure!(to_vip(e, "x/a"), "x/a may reach y/b, and reaches it through the Service");
            // Replies come back from the cluster IP (un-DNATed) and pass,
            // even with ingress to x/a denied.
            let deny_in = np("x", "deny-in", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n");
            e.apply(&[egress_to_yb(), deny_in])?;
            ensure!(to_vip(e, "x/a"), "replies of a DNATed connection must pass");
            drop(dnat);
            let _dnat = Dnat::to(e.ip("y/c"))?;
            ensure!(!to_vip(e, "x/a"), "x/a may not reach y/c, even through a Service");
            let events = e.agent().events(&["--verdict", "dropped", "--direction", "egress", "--pod", "x/a"])?;
            let named = events.iter().any(|ev| {
                ev.destination.pod.as_deref() == Some("c")
                    && ev.destination.namespace.as_deref() == Some("y")
                    && ev.isolated_by.iter().any(|p| p.to_string() == "x/egress-yb")
            });
            ensure!(named, "the drop names the real backend y/c: {events:#?}");
            // Pods whose egress is not isolated are untouched by deferral.
            ensure!(to_vip(e, "z/a"));
            Ok(())
        }),
        ("service_traffic_is_judged_against_a_backend_on_another_node", |e| {
            // A backend behind another interface of the node (as on another
            // node): only the host egress hook sees the packet after DNAT.
            let remote = cni_pod(
                "z/remote",
                "plclnode2",
                Ipv4Addr::new(10, 241, 3, 5),
                "other-node",
                ("app", "remote"),
                Port::new("http", 80, "TCP"),
            )?;
            let agent = e.agent();
            agent.apply("extra-remote.yaml", &remote.manifest())?;
            agent.apply("extra-svc.yaml", &service_manifest())?;
            drop(agent);
            e.apply(&[egress_to_yb()])?;
            let _dnat = Dnat::to(remote.ip(false))?;
            ensure!(to_vip(e, "x/a"), "x/a may reach pods labelled app=remote");
            let only_yb = np(
                "x",
                "egress-yb",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]\n",
            );
            e.apply(&[only_yb])?;
            ensure!(!to_vip(e, "x/a"), "x/a may no longer reach z/remote");
            let events = e.agent().events(&["--verdict", "dropped", "--pod", "z/remote"])?;
            ensure!(!events.is_empty(), "the drop names z/remote");
            Ok(())
        }),
        ("restart_leaves_no_window_either_way", |e| {
            let only_xb = np(
                "x",
                "only-xb",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
            );
            e.apply(&[only_xb])?;
            let stop = Arc::new(AtomicBool::new(false));
            let (allowed_ok, allowed_failed, denied_passed) =
                (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let target = SocketAddr::new(e.ip("x/a"), 80);
            let topo = &e.topo;
            std::thread::scope(|s| -> Result<()> {
                s.spawn(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let ok = probe::socket_in(topo.pod("x/b"), false, Proto::Udp)
                            // A dropped exchange never answers; a slow one (the
                            // machine is busy loading programs) still does.
                            .is_ok_and(|sock| probe::talk(sock, target, Proto::Udp, Duration::from_millis(1500)));
                        if ok { &allowed_ok } else { &allowed_failed }.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                });
                s.spawn(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let passed = probe::socket_in(topo.pod("y/a"), false, Proto::Udp)
                            .is_ok_and(|sock| probe::talk(sock, target, Proto::Udp, Duration::from_millis(100)));
                        if passed {
                            denied_passed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                std::thread::sleep(Duration::from_millis(500));
                // SIGKILL: no chance to clean anything up.
                e.kill();
                std::thread::sleep(Duration::from_millis(1000));
                let started = Instant::now();
                e.spawn(&["--strict", STRICT_PREFIX])?;
                e.agent().wait_in_sync()?;
                eprintln!("restarted agent in sync after {:?}", started.elapsed());
                std::thread::sleep(Duration::from_millis(1000));
                stop.store(true, Ordering::SeqCst);
                Ok(())
            })?;
            let (ok, failed, passed) = (
                allowed_ok.load(Ordering::SeqCst),
                allowed_failed.load(Ordering::SeqCst),
                denied_passed.load(Ordering::SeqCst),
            );
            eprintln!("across the restart: {ok} allowed exchanges, {failed} failed; {passed} denied packets passed");
            ensure!(passed == 0, "{passed} denied exchanges got through while the agent was down or restarting");
            ensure!(failed == 0 && ok > 50, "allowed traffic broke across the restart: {failed} failed, {ok} worked");
            Ok(())
        }),
        ("pinned_maps_of_another_layout_are_refused_and_old_layouts_collected", |e| {
            // A second agent directory: run once, then swap two pinned maps
            // so their sizes no longer match what the build expects.
            let dir = std::path::PathBuf::from("/sys/fs/bpf/palisade-e2e-layout");
            let _ = palisade::datapath::uninstall(&dir);
            let bin = palisade_e2e::agent::binary();
            let work = tempdir("layout")?;
            let start = |dir: &std::path::Path| {
                Command::new(&bin)
                    .args(["run", "--cluster-state"])
                    .arg(&work)
                    .arg("--bpffs")
                    .arg(dir)
                    .args(["--socket"])
                    .arg(work.join("s.sock"))
                    .args(["--metrics-addr", "", "--host-interfaces", ""])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
            };
            let mut first = start(&dir)?;
            std::thread::sleep(Duration::from_millis(1500));
            first.kill()?;
            first.wait()?;
            let v = dir.join(format!("v{}", palisade_common::LAYOUT_VERSION));
            std::fs::rename(v.join("PALISADE_CT6"), v.join("swap"))?;
            std::fs::rename(v.join("PALISADE_FRAGS"), v.join("PALISADE_CT6"))?;
            std::fs::rename(v.join("swap"), v.join("PALISADE_FRAGS"))?;
            let refused = start(&dir)?.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&refused.stderr);
            ensure!(!refused.status.success() && stderr.contains("incompatible"), "expected a refusal, got: {stderr}");
            // Maps of another layout version are collected after the first sync.
            let _ = palisade::datapath::uninstall(&dir);
            std::fs::create_dir_all(&dir)?;
            let mut again = start(&dir)?;
            std::thread::sleep(Duration::from_millis(1500));
            again.kill()?;
            again.wait()?;
            std::fs::rename(&v, dir.join("v0"))?;
            let mut upgraded = start(&dir)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while dir.join("v0").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            upgraded.kill()?;
            upgraded.wait()?;
            let collected = !dir.join("v0").exists() && v.exists();
            palisade::datapath::uninstall(&dir)?;
            let _ = std::fs::remove_dir_all(&work);
            let _ = e;
            ensure!(collected, "the maps of layout v0 were not collected");
            Ok(())
        }),
        ("deny_host_keeps_the_node_out_of_isolated_pods", |e| {
            e.apply(&[np("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            let from_node = |pod: &str| {
                std::net::TcpStream::connect_timeout(&SocketAddr::new(e.ip(pod), 80), probe::TIMEOUT).is_ok()
            };
            ensure!(from_node("x/a"), "by default the node reaches isolated pods (kubelet probes)");
            e.kill();
            e.spawn(&["--strict", STRICT_PREFIX, "--deny-host"])?;
            let result = (|| {
                e.agent().wait_in_sync()?;
                ensure!(!from_node("x/a"), "with --deny-host the node is judged like any other peer");
                ensure!(from_node("y/a"), "pods that are not isolated stay reachable");
                Ok(())
            })();
            e.kill();
            e.spawn(&["--strict", STRICT_PREFIX])?;
            result
        }),
        ("strict_mode_holds_a_new_pod_closed_from_when_the_agent_sees_its_interface", |e| {
            // Namespace z admits ingress from y only.
            e.apply(&[np(
                "z",
                "from-y",
                "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n",
            )])?;
            // The CNI's work: interface, addresses, routes. The agent does
            // not know the pod yet.
            let created = Instant::now();
            let pod = cni_pod(
                "z/new",
                &format!("{STRICT_PREFIX}0"),
                Ipv4Addr::new(10, 240, 3, 60),
                NODE,
                ("pod", "new"),
                Port::new("udp", 80, "UDP"),
            )?;
            let wired = created.elapsed();
            let target = SocketAddr::new(pod.ip(false), 80);
            let stop = AtomicBool::new(false);
            let allowed_ok = AtomicUsize::new(0);
            // When each denied probe started, and whether it passed.
            let probes: Mutex<Vec<(Instant, bool)>> = Mutex::new(Vec::new());
            let mut held_at = None;
            let mut pending_after = None;
            let mut enforced_after = None;
            let topo = &e.topo;
            std::thread::scope(|s| -> Result<()> {
                s.spawn(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let start = Instant::now();
                        let passed = probe::socket_in(topo.pod("x/a"), false, Proto::Udp)
                            .is_ok_and(|sock| probe::talk(sock, target, Proto::Udp, Duration::from_millis(50)));
                        probes.lock().expect("probes").push((start, passed));
                    }
                });
                let agent = e.agent();
                let deadline = Instant::now() + Duration::from_secs(10);
                while pending_after.is_none() && Instant::now() < deadline {
                    let st = agent.status()?;
                    if st["pending_interfaces"].as_array().is_some_and(|a| a.iter().any(|i| i == "plclnew0")) {
                        pending_after = Some(created.elapsed());
                        held_at = Some(Instant::now());
                    }
                }
                // Hold the window open: the pod exists, the agent does not
                // know it yet.
                std::thread::sleep(Duration::from_millis(700));
                let written = Instant::now();
                agent.apply("extra-new.yaml", &pod.manifest())?;
                agent.wait_in_sync()?;
                enforced_after = Some(written.elapsed());
                for _ in 0..20 {
                    if probe::probe(e.topo.pod("y/a"), pod.ip(false), 80, Proto::Udp) {
                        allowed_ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::SeqCst);
                Ok(())
            })?;
            let pending_after = pending_after.context("the new interface never became pending")?;
            let held_at = held_at.context("the new interface never became pending")?;
            // Probes that started once status showed the hold: none may pass.
            // Before it the agent has not seen the interface yet (a link
            // event, then a pass): what reaches the pod then is reported,
            // the gap strict mode leaves (README, Options).
            let probes = probes.into_inner().expect("probes");
            let (before, after): (Vec<_>, Vec<_>) = probes.iter().partition(|(start, _)| *start < held_at);
            let passed_before = before.iter().filter(|(_, passed)| *passed).count();
            let passed_after = after.iter().filter(|(_, passed)| *passed).count();
            eprintln!(
                "strict mode: routes in place {wired:?} and the interface held closed {pending_after:?} after the CNI began; {passed_before} of {} denied probes before the hold reached the pod; pod enforced {:?} after its manifest was written; {} denied probes after the hold, {passed_after} passed",
                before.len(),
                enforced_after.unwrap_or_default(),
                after.len(),
            );
            ensure!(after.len() > 10, "the held window was not exercised");
            ensure!(passed_after == 0, "denied traffic reached the new pod after it was held closed");
            ensure!(allowed_ok.load(Ordering::SeqCst) == 20, "allowed traffic (from y) must flow once enforced");
            // Before the pod is known its address names no pod yet.
            let drops = e.agent().events(&["--verdict", "dropped"])?;
            ensure!(
                drops.iter().any(|ev| ev.reason == "pending" && ev.destination.ip == pod.ip(false)),
                "drops at pod start are reported with reason pending: {:#?}",
                drops.iter().filter(|ev| ev.destination.ip == pod.ip(false)).take(3).collect::<Vec<_>>()
            );
            Ok(())
        }),
        ("a_pods_interface_is_attached_before_its_manifest_and_enforced_from_its_first_packet", |e| {
            // Default mode (the interface's name is not a strict prefix).
            // Namespace z admits ingress from y only; the CNI's work:
            // interface, addresses, routes.
            let pod = from_y_only(e, "z/early", "plcldef0", Ipv4Addr::new(10, 240, 3, 61))?;
            let ifindex = if_index("plcldef0")?;
            let agent = e.agent();
            let links = agent.bpffs.join("links");
            let pinned = |hook: &str| links.join(format!("{ifindex}-{hook}")).exists();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !(pinned("from-pod") && pinned("to-pod")) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            ensure!(
                pinned("from-pod") && pinned("to-pod"),
                "the pod hooks were not attached to the routed veth before its pod was known"
            );
            // Unknown, the pod is not enforced: its traffic passes, both ways,
            // as with no hook at all.
            let st = agent.status()?;
            ensure!(
                !st["pods"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "early")),
                "the pod is not known yet: {}",
                st["pods"]
            );
            ensure!(probe::probe(e.topo.pod("x/a"), pod.ip(false), 80, Proto::Udp), "unknown pods are not judged");
            // Its manifest: the next pass attaches nothing, and the first
            // probe after it is judged by the pod's policy.
            agent.apply("extra-early.yaml", &pod.manifest())?;
            let st = agent.wait_in_sync()?;
            let early = st["pods"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "early")).cloned();
            ensure!(
                early.as_ref().is_some_and(|p| p["state"] == "enforced"),
                "the pod is enforced once its manifest is in: {early:?}"
            );
            ensure!(!probe::probe(e.topo.pod("x/a"), pod.ip(false), 80, Proto::Udp), "x may not reach z/early");
            ensure!(probe::probe(e.topo.pod("y/a"), pod.ip(false), 80, Proto::Udp), "y may reach z/early");
            let log = plain(&std::fs::read_to_string(&agent.stderr)?);
            let last = log.lines().rev().find(|l| l.contains("policy in force")).unwrap_or_default();
            ensure!(last.contains(" attaches=0 "), "the manifest's pass attached programs: {last}");
            // The pod gone from the manifests (its veth still there): its
            // hooks stay, nothing judges it any more.
            agent.remove("extra-early.yaml")?;
            agent.wait_in_sync()?;
            ensure!(pinned("from-pod") && pinned("to-pod"), "the hooks stay on the pod's interface");
            ensure!(
                probe::probe(e.topo.pod("x/a"), pod.ip(false), 80, Proto::Udp),
                "a pod no longer known is not judged"
            );
            drop(pod);
            Ok(())
        }),
        ("a_pods_namespace_root_is_in_the_kernel_from_its_scheduling_to_its_objects_end", |e| {
            // Namespace w, where no local pod is, admits ingress from y.
            let pod = from_y_only(e, "w/first", "plcldef1", Ipv4Addr::new(10, 240, 3, 62))?;
            let agent = e.agent();
            let entries = |_: serde_json::Value| kernel_policy_entries(&agent.bpffs);
            let before = entries(agent.wait_in_sync()?)?;
            // Scheduled here, its address not reported yet: the root of w
            // (the policy's entries, one per peer identity of y) goes in.
            let addressed = pod.manifest();
            let (head, _) = addressed.split_once("status:").context("a status")?;
            agent.apply("extra-first.yaml", &format!("{head}status:\n  phase: Pending\n"))?;
            let scheduled = entries(agent.wait_in_sync()?)?;
            ensure!(scheduled > before, "the root's entries are in before the address: {before} -> {scheduled}");
            // Its address: the pod is enforced by the root's entries.
            agent.apply("extra-first.yaml", &addressed)?;
            let st = agent.wait_in_sync()?;
            let first = st["pods"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "first")).cloned();
            ensure!(first.as_ref().is_some_and(|p| p["state"] == "enforced"), "w/first is enforced: {first:?}");
            ensure!(probe::probe(e.topo.pod("y/a"), pod.ip(false), 80, Proto::Udp), "y may reach w/first");
            ensure!(!probe::probe(e.topo.pod("x/a"), pod.ip(false), 80, Proto::Udp), "x may not reach w/first");
            ensure!(!probe::probe(e.topo.pod("x/a"), pod.ip(true), 80, Proto::Udp), "nor over IPv6");
            // Its phase terminal (its addresses still reported), as the
            // kubelet reports a deleted pod's before the object goes: no
            // longer enforced, its root still there.
            agent.apply("extra-first.yaml", &addressed.replace("phase: Running", "phase: Succeeded"))?;
            let st = agent.wait_in_sync()?;
            ensure!(
                !st["pods"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "first")),
                "a pod done is not enforced: {}",
                st["pods"]
            );
            let done = entries(st)?;
            ensure!(done == scheduled, "the root stays while the object does: {scheduled} -> {done}");
            // The object gone: so is the root.
            agent.remove("extra-first.yaml")?;
            let after = entries(agent.wait_in_sync()?)?;
            ensure!(after == before, "the root went with the pod: {before} -> {after}");
            drop(pod);
            Ok(())
        }),
    ]
}

/// A new pod `id` of this node (UDP 80, labelled pod=<name>) behind
/// `host_if`, as a CNI wires it, in a namespace whose policy admits
/// ingress from namespace y only.
fn from_y_only(e: &Env, id: &str, host_if: &str, ip: Ipv4Addr) -> Result<palisade_e2e::pods::Pod> {
    let (ns, name) = id.split_once('/').context("a pod id is namespace/name")?;
    let from_y = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n";
    e.apply(&[np(ns, "from-y", from_y)])?;
    cni_pod(id, host_if, ip, NODE, ("pod", name), Port::new("udp", 80, "UDP"))
}

/// How many entries the kernel's policy maps hold (the trie and the
/// one-port hash), read from the agent's pins.
fn kernel_policy_entries(bpffs: &std::path::Path) -> Result<usize> {
    use aya::maps::{HashMap, LpmTrie, Map, MapData};
    use palisade_common::{PolicyKey, PolicyValue, maps};
    let dir = bpffs.join(format!("v{}", palisade_common::LAYOUT_VERSION));
    let map = |name: &str| -> Result<Map> { Ok(Map::from_map_data(MapData::from_pin(dir.join(name))?)?) };
    let trie: LpmTrie<MapData, PolicyKey, PolicyValue> = map(maps::POLICY)?.try_into()?;
    let ports: HashMap<MapData, PolicyKey, PolicyValue> = map(maps::POLICY_PORTS)?.try_into()?;
    Ok(trie.keys().count() + ports.keys().count())
}

/// A log line without its ANSI styles.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn if_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "no interface {name}");
    Ok(i)
}

fn tempdir(tag: &str) -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("palisade-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn main() {
    palisade_e2e::suite::run(cases())
}
