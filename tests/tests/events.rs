//! Verdict events end to end: real traffic between network-namespace pods,
//! and what the agent reports about it (log, observe, metrics, status),
//! audit mode, floods and loss accounting.

use anyhow::{Context, Result, bail, ensure};
use palisade::events::{Verdict, VerdictEvent};
use palisade_e2e::agent::{Agent, binary};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::np;
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use socket2::SockAddr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Env(Cluster);

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

const METRICS: &str = "127.0.0.1:19469";
const ARGS: [&str; 3] = ["--metrics-addr", METRICS, "--allow-namespace-audit"];

impl Fixture for Env {
    fn setup() -> Result<Env> {
        Ok(Env(Cluster::start("ev", 2, &ARGS)?))
    }

    fn reset(&self) -> Result<()> {
        self.0.reset()
    }
}

impl Env {
    fn counters(&self) -> Result<serde_json::Value> {
        Ok(self.agent().status()?["counters"].clone())
    }
}

/// Events of one flow, identified by the client's source port.
fn flow_events(agent: &Agent, sport: u16) -> Result<Vec<VerdictEvent>> {
    Ok(agent.events(&[])?.into_iter().filter(|e| e.source.port == Some(sport)).collect())
}

/// Starts a TCP connection attempt without waiting for it; returns the
/// socket (keep it alive) and its source port.
fn syn(from: &palisade_e2e::pods::Pod, to: SocketAddr) -> Result<(socket2::Socket, u16)> {
    let s = probe::socket_in(from, to.is_ipv6(), Proto::Tcp)?;
    s.set_nonblocking(true)?;
    let _ = s.connect(&SockAddr::from(to));
    let port = s.local_addr()?.as_socket().context("local address")?.port();
    Ok((s, port))
}

fn counter(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

fn http_get(path: &str) -> Result<(u16, String)> {
    probe::http_get(METRICS, path)
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("drop_event_names_pods_and_policy_within_a_second", |e| {
            e.apply(&[np("y", "deny-b", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n")])?;
            let agent = e.agent();
            let started = Instant::now();
            let (_sock, sport) = syn(e.topo.pod("x/a"), SocketAddr::new(e.ip("y/b"), 80))?;
            loop {
                let drop = flow_events(&agent, sport)?.into_iter().find(|ev| ev.verdict == Verdict::Dropped);
                if let Some(ev) = drop {
                    ensure!(
                        ev.source.namespace.as_deref() == Some("x") && ev.source.pod.as_deref() == Some("a"),
                        "{ev:?}"
                    );
                    ensure!(
                        ev.destination.namespace.as_deref() == Some("y") && ev.destination.pod.as_deref() == Some("b")
                    );
                    ensure!(ev.isolated_by.iter().any(|p| p.to_string() == "y/deny-b"), "{ev:?}");
                    ensure!(ev.reason == "no-rule" && ev.protocol == "TCP" && ev.destination.port == Some(80));
                    ensure!(ev.tcp_flags.as_deref() == Some("SYN"));
                    let line = std::fs::read_to_string(&agent.stdout)?;
                    ensure!(
                        line.lines().any(|l| l.contains("DROPPED") && l.contains("(x/a)") && l.contains("y/deny-b")),
                        "the agent's log has no readable drop line:\n{line}"
                    );
                    return Ok(());
                }
                if started.elapsed() > Duration::from_secs(1) {
                    bail!("no DROPPED event within one second\n{}", agent.log_tail());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }),
        ("allowed_connection_yields_one_event_naming_the_rule", |e| {
            e.apply(&[np(
                "y",
                "allow-a",
                "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80}]\n",
            )])?;
            let sock = probe::socket_in(e.topo.pod("x/a"), false, Proto::Tcp)?;
            let to = SocketAddr::new(e.ip("y/b"), 80);
            sock.connect_timeout(&to.into(), probe::TIMEOUT)?;
            let sport = sock.local_addr()?.as_socket().context("addr")?.port();
            let mut conn: std::net::TcpStream = sock.into();
            for _ in 0..20 {
                conn.write_all(b"ping")?;
                let mut buf = [0u8; 4];
                conn.read_exact(&mut buf)?;
            }
            drop(conn);
            std::thread::sleep(Duration::from_millis(200));
            let agent = e.agent();
            let events = flow_events(&agent, sport)?;
            let by_rule: Vec<_> = events.iter().filter(|ev| ev.policy.is_some()).collect();
            ensure!(by_rule.len() == 1, "expected one event naming a rule, got {events:#?}");
            let rule = by_rule[0].policy.as_ref().expect("policy");
            ensure!(by_rule[0].verdict == Verdict::Allowed && by_rule[0].direction.to_string() == "ingress");
            ensure!(
                rule.namespace.as_deref() == Some("y") && rule.name.as_deref() == Some("allow-a") && rule.rule == 0
            );
            // The other hook (x/a's egress, not isolated) reports its new flow once.
            ensure!(events.len() == 2, "a connection yields one event per hook, not per packet: {events:#?}");
            Ok(())
        }),
        ("audit_namespace_lets_traffic_through_and_reports_it", |e| {
            e.agent().apply(
                "base.yaml",
                &e.topo.manifests().replace(
                    "metadata: {name: \"y\", labels: {ns: \"y\"}}",
                    "metadata: {name: \"y\", labels: {ns: \"y\"}, annotations: {palisade.dev/audit: \"true\"}}",
                ),
            )?;
            e.apply(&[np("y", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            let st = e.agent().status()?;
            let yb = st["pods"].as_array().into_iter().flatten().find(|p| p["namespace"] == "y" && p["name"] == "b");
            ensure!(yb.is_some_and(|p| p["audit"] == true), "status does not show y/b in audit mode: {st}");
            let sock = probe::socket_in(e.topo.pod("x/a"), false, Proto::Tcp)?;
            ensure!(
                probe::talk(sock.try_clone()?, SocketAddr::new(e.ip("y/b"), 80), Proto::Tcp, probe::TIMEOUT),
                "audit mode must let the traffic pass"
            );
            let sport = sock.local_addr()?.as_socket().context("addr")?.port();
            std::thread::sleep(Duration::from_millis(200));
            let events = flow_events(&e.agent(), sport)?;
            let audit: Vec<_> = events.iter().filter(|ev| ev.verdict == Verdict::Audit).collect();
            ensure!(audit.len() == 1, "expected one AUDIT event: {events:#?}");
            ensure!(audit[0].isolated_by.iter().any(|p| p.to_string() == "y/deny-all"));
            // Namespace x is not in audit mode: its drops stay drops.
            e.apply(&[np("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            ensure!(!probe::probe(e.topo.pod("y/a"), e.ip("x/a"), 80, Proto::Tcp), "x is not in audit mode");
            Ok(())
        }),
        ("audit_flag_for_the_whole_node_after_a_restart", |e| {
            e.apply(&[np("y", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            ensure!(!probe::probe(e.topo.pod("x/a"), e.ip("y/b"), 80, Proto::Tcp));
            e.restart(&[&ARGS[..], &["--audit"]].concat())?;
            let result = (|| {
                let sock = probe::socket_in(e.topo.pod("x/a"), false, Proto::Tcp)?;
                ensure!(probe::talk(sock.try_clone()?, SocketAddr::new(e.ip("y/b"), 80), Proto::Tcp, probe::TIMEOUT));
                let sport = sock.local_addr()?.as_socket().context("addr")?.port();
                std::thread::sleep(Duration::from_millis(200));
                let events = flow_events(&e.agent(), sport)?;
                ensure!(events.iter().any(|ev| ev.verdict == Verdict::Audit), "no AUDIT event: {events:#?}");
                Ok(())
            })();
            e.restart(&ARGS)?;
            result?;
            ensure!(!probe::probe(e.topo.pod("x/a"), e.ip("y/b"), 80, Proto::Tcp), "audit must end with the flag");
            Ok(())
        }),
        ("observe_filters_and_follows", |e| {
            e.apply(&[np("y", "deny-b", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n")])?;
            let agent = e.agent();
            let mut follow = Command::new(binary())
                .args(["observe", "--verdict", "dropped", "--pod", "y/b", "-o", "json", "--socket"])
                .arg(&agent.socket)
                .stdout(Stdio::piped())
                .spawn()?;
            let mut lines = BufReader::new(follow.stdout.take().context("stdout")?).lines();
            std::thread::sleep(Duration::from_millis(300));
            ensure!(!probe::probe(e.topo.pod("x/a"), e.ip("y/b"), 80, Proto::Tcp));
            ensure!(probe::probe(e.topo.pod("x/a"), e.ip("y/c"), 81, Proto::Udp));
            let first: VerdictEvent = serde_json::from_str(&lines.next().context("observe ended")??)?;
            let _ = follow.kill();
            ensure!(first.verdict == Verdict::Dropped && first.destination.pod.as_deref() == Some("b"));
            let dropped = agent.events(&["--verdict", "dropped"])?;
            ensure!(!dropped.is_empty() && dropped.iter().all(|ev| ev.verdict == Verdict::Dropped));
            // The agent drains the ring every 20 ms: the UDP flow's events
            // may not be in its history yet (a query 11 ms after the probe
            // missed them about one run in three).
            let deadline = Instant::now() + Duration::from_secs(2);
            let udp = loop {
                let udp = agent.events(&["--protocol", "udp", "--port", "81", "--pod", "y/c"])?;
                if !udp.is_empty() || Instant::now() > deadline {
                    break udp;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            ensure!(!udp.is_empty(), "the UDP flow to y/c:81 is missing");
            ensure!(udp.iter().all(|ev| {
                ev.protocol == "UDP"
                    && (ev.source.port == Some(81) || ev.destination.port == Some(81))
                    && [&ev.source, &ev.destination]
                        .iter()
                        .any(|p| p.pod.as_deref() == Some("c") && p.namespace.as_deref() == Some("y"))
            }));
            let z = agent.events(&["--namespace", "z"])?;
            ensure!(
                z.iter().all(|ev| ev.source.namespace.as_deref() == Some("z")
                    || ev.destination.namespace.as_deref() == Some("z"))
            );
            let egress = agent.events(&["--direction", "egress", "--last", "3"])?;
            ensure!(egress.len() <= 3 && egress.iter().all(|ev| ev.direction.to_string() == "egress"));
            Ok(())
        }),
        ("metrics_and_health_endpoints", |e| {
            e.apply(&[np("y", "deny-b", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n")])?;
            ensure!(!probe::probe(e.topo.pod("x/a"), e.ip("y/b"), 80, Proto::Tcp));
            std::thread::sleep(Duration::from_millis(1200));
            let (code, body) = http_get("/metrics")?;
            ensure!(code == 200, "metrics: {code}");
            for needle in [
                "palisade_verdicts_total{direction=\"ingress\",verdict=\"DROPPED\",policy=\"\"}",
                "palisade_drops_by_isolating_policy_total{direction=\"ingress\",policy=\"y/deny-b\"}",
                "palisade_kernel_packets_total{reason=\"dropped_no_rule\"}",
                "palisade_events_lost_total",
                "palisade_map_entries{map=\"policy\"}",
                "palisade_sync_duration_seconds_bucket",
                "palisade_pods{state=\"enforced\"} 9",
            ] {
                ensure!(body.contains(needle), "metrics lack {needle}:\n{body}");
            }
            ensure!(http_get("/healthz")?.0 == 200 && http_get("/readyz")?.0 == 200);
            Ok(())
        }),
        ("idle_agent_stays_idle", |e| {
            // The agent reads the manifest directory it watches: waking on
            // its own reads would recompile in a loop and take the CPU the
            // workload needs.
            let syncs = || -> Result<u64> {
                let (_, body) = http_get("/metrics")?;
                let line = body
                    .lines()
                    .find(|l| l.starts_with("palisade_sync_duration_seconds_count"))
                    .context("no sync count in metrics")?;
                Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
            };
            // New veths' IPv6 addresses settle for a second or two after
            // the topology is built; those are real changes.
            std::thread::sleep(Duration::from_secs(2));
            let (syncs_before, cpu_before) = (syncs()?, e.agent().cpu_seconds()?);
            std::thread::sleep(Duration::from_secs(3));
            let (syncs_after, cpu_after) = (syncs()?, e.agent().cpu_seconds()?);
            ensure!(
                syncs_after - syncs_before <= 1,
                "{} syncs in 3 s with nothing changing",
                syncs_after - syncs_before
            );
            ensure!(cpu_after - cpu_before < 0.15, "the idle agent used {:.2} s of CPU in 3 s", cpu_after - cpu_before);
            Ok(())
        }),
        ("single_flow_flood_is_summarised_and_counted_exactly", |e| {
            e.apply(&[np("y", "deny-b", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n")])?;
            let before = e.counters()?;
            let sock = probe::socket_in(e.topo.pod("x/a"), false, Proto::Udp)?;
            let to: SockAddr = SocketAddr::new(e.ip("y/b"), 80).into();
            let started = Instant::now();
            for _ in 0..100_000 {
                sock.send_to(b"flood", &to)?;
            }
            let secs = started.elapsed().as_secs();
            // One more packet after the interval reports what was folded.
            std::thread::sleep(Duration::from_millis(1200));
            sock.send_to(b"flood", &to)?;
            std::thread::sleep(Duration::from_millis(300));
            let sport = sock.local_addr()?.as_socket().context("addr")?.port();
            let after = e.counters()?;
            let drops: Vec<_> =
                flow_events(&e.agent(), sport)?.into_iter().filter(|ev| ev.verdict == Verdict::Dropped).collect();
            let represented: u64 = drops.iter().map(|ev| u64::from(ev.count)).sum();
            let kernel = counter(&after, "packets_dropped_no_rule") - counter(&before, "packets_dropped_no_rule");
            ensure!(kernel > 50_000, "the flood did not reach the classifier: {kernel} drops");
            ensure!(drops.len() as u64 <= secs + 3, "{} events for one flow in {secs}s", drops.len());
            ensure!(represented == kernel, "events stand for {represented} packets, the kernel dropped {kernel}");
            Ok(())
        }),
        ("many_flow_flood_loses_events_and_says_so", |e| {
            // No per-source budget: every flow is due an event here.
            let extra = ["--event-buffer-bytes", "65536", "--log-new-flows", "false", "--drop-event-budget", "0"];
            e.restart(&[&ARGS[..], &extra].concat())?;
            let result = (|| {
                e.apply(&[np("y", "deny-b", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n")])?;
                let before = e.counters()?;
                // Crafted UDP headers on a raw socket: 100,000 distinct flows.
                let raw = e.topo.pod("x/a").netns.run(|| {
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::UDP))
                })?;
                let to: SockAddr = SocketAddr::new(e.ip("y/b"), 0).into();
                // The agent stalls (stopped) while the flood fills its buffer.
                let pid = e.agent().pid().context("agent pid")? as i32;
                // SAFETY: signals our own child process.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                let sent = (|| -> Result<()> {
                    for i in 0..100_000u32 {
                        let sport = 1024 + (i % 60_000) as u16;
                        let dport = 80 + (i / 60_000) as u16;
                        raw.send_to(&palisade_kit::packet::udp(sport, dport, b"floo"), &to)?;
                    }
                    Ok(())
                })();
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
                sent?;
                std::thread::sleep(Duration::from_millis(1500));
                let after = e.counters()?;
                let d = |n: &str| counter(&after, n) - counter(&before, n);
                let (drops, sent, lost, folded, received) = (
                    d("packets_dropped_no_rule"),
                    d("events_sent"),
                    d("events_lost"),
                    d("events_suppressed"),
                    d("events_received"),
                );
                ensure!(lost > 0, "a 64 KiB buffer cannot hold {drops} drop events, yet none was lost");
                ensure!(received == sent, "user space read {received} events, the kernel wrote {sent}");
                ensure!(
                    sent + lost + folded == drops,
                    "every drop is an event, a lost event or a folded one: {sent} + {lost} + {folded} != {drops}"
                );
                let st = e.agent().status()?;
                ensure!(counter(&st["counters"], "events_lost") >= lost);
                let (_, body) = http_get("/metrics")?;
                ensure!(!body.contains("palisade_events_lost_total 0\n"), "metrics do not report the loss");
                Ok(())
            })();
            e.restart(&ARGS)?;
            result
        }),
        ("port_scan_is_folded_per_source_and_counted_exactly", |e| {
            // x/a may send nothing: its drops are the only events.
            e.apply(&[np("x", "deny-a", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n")])?;
            let before = e.counters()?;
            // One pod probes 10,000 ports of another: 10,000 new flows.
            let raw = e.topo.pod("x/a").netns.run(|| {
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::UDP))
            })?;
            let to: SockAddr = SocketAddr::new(e.ip("y/b"), 0).into();
            const SPORT: u16 = 4321;
            let started = Instant::now();
            for port in 20_000..30_000u16 {
                raw.send_to(&palisade_kit::packet::udp(SPORT, port, b"scan"), &to)?;
            }
            let secs = started.elapsed().as_secs();
            // One more after the interval carries what was folded.
            std::thread::sleep(Duration::from_millis(1200));
            raw.send_to(&palisade_kit::packet::udp(SPORT, 30_000, b"scan"), &to)?;
            std::thread::sleep(Duration::from_millis(300));
            let after = e.counters()?;
            let d = |n: &str| counter(&after, n) - counter(&before, n);
            let (drops, sent, lost, suppressed, folded) = (
                d("packets_dropped_no_rule"),
                d("events_sent"),
                d("events_lost"),
                d("events_suppressed"),
                d("events_folded"),
            );
            ensure!(drops == 10_001, "every probe drops: {drops} of 10001");
            ensure!(lost == 0, "{lost} events lost");
            ensure!(
                sent + lost + suppressed + folded == drops,
                "every drop is an event, a lost event, a suppressed or a folded one: {sent} + {lost} + {suppressed} + {folded} != {drops}"
            );
            // The default budget: 100 events per source per second.
            let scan: Vec<_> = e
                .agent()
                .events(&["--pod", "x/a", "--verdict", "dropped"])?
                .into_iter()
                .filter(|ev| ev.source.port == Some(SPORT))
                .collect();
            ensure!(scan.len() as u64 == sent, "observe shows {} events, the kernel sent {sent}", scan.len());
            ensure!(sent <= 100 * (secs + 2), "{sent} events for a scan of {secs} s");
            ensure!(folded >= 10_001 - 100 * (secs + 2), "only {folded} drops folded");
            let reported: u64 = scan.iter().map(|ev| u64::from(ev.count) + u64::from(ev.folded)).sum();
            ensure!(reported == drops, "the events stand for {reported} drops, the kernel dropped {drops}");
            let last = scan.last().context("no event")?;
            ensure!(last.destination.port == Some(30_000) && last.folded > 0, "{last:?}");
            let (_, body) = http_get("/metrics")?;
            ensure!(body.contains("palisade_events_folded_total"), "metrics lack the folded count");
            Ok(())
        }),
    ]
}

fn main() {
    palisade_e2e::suite::run(cases())
}
