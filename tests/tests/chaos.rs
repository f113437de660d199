//! Issue 9's proof that enforcement outlives the agent: the agent SIGKILLed
//! at random moments during syncs, 100 times, while policies change and
//! traffic flows. No denied packet may pass (counted at the receivers) and
//! no allowed exchange may break (1.5 s per exchange, retransmits allowed).
//!
//! `PALISADE_CHAOS_SEED=<n>` replays a run's kill delays and policy writes.

use anyhow::{Result, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::pods::Pod;
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use palisade_e2e::{Topology, np};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How many times the agent is killed.
const KILLS: usize = 100;
/// Every this many kills, the agent is left to reach in sync and the
/// policies' verdicts are checked exactly.
const CHECK_EVERY: usize = 10;
/// Kills land this long (at most) after the agent answers or a change is
/// written: inside its first sync, or just after it.
const MAX_KILL_DELAY_MS: u64 = 300;
const EARLY_KILL_MS: u64 = 30;
/// An allowed exchange must complete within this, retransmits included.
const EXCHANGE: Duration = Duration::from_millis(1500);
/// A UDP request is resent after this long without an answer.
const RETRANSMIT: Duration = Duration::from_millis(200);
/// Ports nothing allows, where receivers count what arrives.
const DENIED_UDP: u16 = 7777;
const DENIED_TCP: u16 = 7778;

struct Env(Cluster);

impl Fixture for Env {
    fn setup() -> Result<Env> {
        Ok(Env(Cluster::start("ch", 8, &[])?))
    }

    fn reset(&self) -> Result<()> {
        self.0.reset()
    }
}

/// Policies both sets hold, written once: x/a admits only x/b; z/a may
/// talk only inside namespace z. They keep the live traffic's verdicts
/// fixed whatever the agent is doing.
fn fixed() -> String {
    [
        np("x", "a-from-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n"),
        np(
            "z",
            "a-within-z",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: \"z\"}}}]\n",
        ),
    ]
    .join("---\n")
}

/// The policies that alternate (one file, replaced atomically): set B
/// adds allows, isolates other pods and drops set A's, so every switch
/// adds and removes kernel entries.
fn varying(b: bool) -> String {
    let docs = if b {
        vec![
            np(
                "x",
                "a-from-c-81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]\n    ports: [{port: 81, protocol: UDP}]\n",
            ),
            np(
                "y",
                "c-from-z",
                "  podSelector: {matchLabels: {pod: c}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"z\"}}}]\n",
            ),
            np(
                "z",
                "b-to-y",
                "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n",
            ),
        ]
    } else {
        vec![
            np(
                "y",
                "b-from-x",
                "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"x\"}}}]\n",
            ),
            np("z", "c-no-egress", "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n"),
        ]
    };
    docs.join("---\n")
}

/// Verdicts that differ between the sets: (from, to, UDP port, allowed
/// under set A, allowed under set B).
const DIFFERENCES: [(&str, &str, u16, bool, bool); 4] = [
    ("x/c", "x/a", 81, false, true),
    ("z/b", "y/b", 80, false, true),
    ("z/c", "x/b", 80, false, true),
    ("z/b", "x/b", 80, true, false),
];

/// xorshift64*: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// One UDP exchange from a fresh socket (a new flow, judged afresh),
/// resending until an echo comes back or `budget` runs out.
fn udp_exchange(from: &Pod, to: SocketAddr, budget: Duration) -> bool {
    let Ok(sock) = probe::socket_in(from, to.is_ipv6(), Proto::Udp) else { return false };
    let sock: UdpSocket = sock.into();
    let _ = sock.set_read_timeout(Some(RETRANSMIT));
    let msg = b"palisade-chaos";
    let mut buf = [0u8; 64];
    let started = Instant::now();
    while started.elapsed() < budget {
        if sock.send_to(msg, to).is_err() {
            std::thread::sleep(RETRANSMIT);
            continue;
        }
        let wait = started.elapsed();
        while started.elapsed() < budget && started.elapsed() - wait < RETRANSMIT {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == msg => return true,
                _ => {}
            }
        }
    }
    false
}

/// Counters of the live traffic.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    allowed: AtomicUsize,
    allowed_failed: AtomicUsize,
    denied_sent: AtomicUsize,
    denied_passed: AtomicUsize,
}

impl Traffic {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    fn exchanged(&self, ok: bool, what: &str) {
        self.allowed.fetch_add(1, Ordering::SeqCst);
        if !ok {
            self.allowed_failed.fetch_add(1, Ordering::SeqCst);
            eprintln!("allowed exchange failed: {what}");
        }
    }
}

/// Repeated short UDP exchanges between pods every policy set allows.
fn allowed_udp(t: &Traffic, from: &Pod, to: SocketAddr, what: &str) {
    while t.running() {
        t.exchanged(udp_exchange(from, to, EXCHANGE), what);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One long-lived TCP connection (reopened only if it breaks): each
/// request must be echoed within [`EXCHANGE`]; TCP retransmits on its own.
fn allowed_tcp(t: &Traffic, from: &Pod, to: SocketAddr) {
    let connect = || -> Option<TcpStream> {
        let sock = probe::socket_in(from, false, Proto::Tcp).ok()?;
        sock.connect_timeout(&to.into(), EXCHANGE).ok()?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(EXCHANGE)).ok()?;
        Some(s)
    };
    let mut conn = None;
    let mut seq = 0u64;
    while t.running() {
        let Some(s) = conn.as_mut() else {
            conn = connect();
            if conn.is_none() {
                t.exchanged(false, "tcp connect x/b -> x/a:81");
            }
            continue;
        };
        seq += 1;
        let msg = seq.to_be_bytes();
        let mut got = [0u8; 8];
        let ok = s.write_all(&msg).is_ok() && s.read_exact(&mut got).is_ok() && got == msg;
        t.exchanged(ok, "tcp x/b -> x/a:81 (long-lived)");
        if !ok {
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Datagrams to a port no policy opens, as fast as the loop goes.
fn denied_udp(t: &Traffic, from: &Pod, to: SocketAddr) {
    let Ok(sock) = probe::socket_in(from, to.is_ipv6(), Proto::Udp) else { return };
    let sock: UdpSocket = sock.into();
    while t.running() {
        if sock.send_to(b"denied", to).is_ok() {
            t.denied_sent.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// TCP connection attempts (SYNs) to a port no policy opens.
fn denied_tcp(t: &Traffic, from: &Pod, to: SocketAddr) {
    while t.running() {
        if let Ok(sock) = probe::socket_in(from, false, Proto::Tcp) {
            t.denied_sent.fetch_add(1, Ordering::SeqCst);
            let _ = sock.connect_timeout(&to.into(), Duration::from_millis(20));
        }
    }
}

/// Counts datagrams arriving at `sock` (bound inside the destination pod).
fn count_udp(t: &Traffic, sock: UdpSocket) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 64];
    while t.running() {
        if let Ok((_, from)) = sock.recv_from(&mut buf)
            && t.denied_passed.fetch_add(1, Ordering::SeqCst) < 10
        {
            eprintln!("denied datagram from {from} arrived");
        }
    }
}

/// Counts connections completed to `listener` (inside the destination pod).
fn count_tcp(t: &Traffic, listener: TcpListener) {
    let _ = listener.set_nonblocking(true);
    while t.running() {
        match listener.accept() {
            Ok((_, from)) => {
                if t.denied_passed.fetch_add(1, Ordering::SeqCst) < 10 {
                    eprintln!("denied connection from {from} arrived");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => {}
        }
    }
}

/// Checks every verdict that differs between the sets, all at once.
fn check_set(topo: &Topology, b: bool) -> Result<()> {
    let wrong: Vec<String> = std::thread::scope(|s| {
        let probes: Vec<_> = DIFFERENCES
            .iter()
            .map(|&(from, to, port, in_a, in_b)| {
                let want = if b { in_b } else { in_a };
                let (from_pod, target) = (topo.pod(from), SocketAddr::new(topo.pod(to).ip(false), port));
                // A denial shows within a short wait; an allow gets the
                // whole exchange budget.
                let budget = if want { EXCHANGE } else { Duration::from_millis(500) };
                s.spawn(move || {
                    let got = udp_exchange(from_pod, target, budget);
                    (got != want).then(|| format!("{from} -> {to}:{port}/UDP: want allowed={want}, got {got}"))
                })
            })
            .collect();
        probes.into_iter().filter_map(|h| h.join().expect("probe thread")).collect()
    });
    ensure!(wrong.is_empty(), "set {} is not in force exactly: {}", if b { "B" } else { "A" }, wrong.join("; "));
    Ok(())
}

/// Whether the agent reports in sync right now; asked in-process, so the
/// kill that follows lands within a millisecond of the answer.
fn in_sync_now(rt: &tokio::runtime::Runtime, socket: &std::path::Path) -> bool {
    rt.block_on(async {
        let mut lines = palisade::api::request(socket, &palisade::api::Request::Status).await.ok()?;
        let line = lines.next_line().await.ok()??;
        let st: serde_json::Value = serde_json::from_str(&line).ok()?;
        Some(st["in_sync"] == true)
    })
    .unwrap_or(false)
}

fn bind_in<T: Send + 'static>(pod: &Pod, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    Ok(pod.netns.run(f)?)
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![("sigkill_during_syncs_lets_no_denied_packet_pass_and_breaks_no_allowed_exchange", |env| {
        let e = &env.0;
        let seed = std::env::var("PALISADE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
        });
        eprintln!("chaos seed {seed} (PALISADE_CHAOS_SEED replays it)");
        let mut rng = Rng(seed);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        e.agent().apply("policy-fixed.yaml", &fixed())?;
        e.agent().apply("policy-varying.yaml", &varying(false))?;
        e.wait_in_sync()?;
        check_set(&e.topo, false)?;

        let topo = &e.topo;
        let pod = |id: &str| topo.pod(id);
        let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let udp_xa = bind_in(pod("x/a"), move || UdpSocket::bind(any(DENIED_UDP)))?;
        let udp_yc = bind_in(pod("y/c"), move || UdpSocket::bind(any(DENIED_UDP)))?;
        let tcp_xa = bind_in(pod("x/a"), move || TcpListener::bind(any(DENIED_TCP)))?;
        let t = Traffic::default();
        let started = Instant::now();
        let (mut kills, mut before_sync, mut changes) = (0, 0, 0);
        let mut b = false;
        std::thread::scope(|s| -> Result<()> {
            let t = &t;
            let at = |id: &str, port| SocketAddr::new(pod(id).ip(false), port);
            let at6 = |id: &str, port| SocketAddr::new(pod(id).ip(true), port);
            s.spawn(move || allowed_udp(t, pod("x/b"), at("x/a", 80), "udp x/b -> x/a:80"));
            s.spawn(move || allowed_udp(t, pod("x/b"), at6("x/a", 80), "udp x/b -> x/a:80 over IPv6"));
            s.spawn(move || allowed_udp(t, pod("z/a"), at("z/b", 81), "udp z/a -> z/b:81 (egress-isolated)"));
            s.spawn(move || allowed_tcp(t, pod("x/b"), at("x/a", 81)));
            s.spawn(move || denied_udp(t, pod("y/a"), at("x/a", DENIED_UDP)));
            s.spawn(move || denied_udp(t, pod("y/a"), at6("x/a", DENIED_UDP)));
            s.spawn(move || denied_udp(t, pod("z/a"), at("y/c", DENIED_UDP)));
            s.spawn(move || denied_tcp(t, pod("y/a"), at("x/a", DENIED_TCP)));
            s.spawn(move || count_udp(t, udp_xa));
            s.spawn(move || count_udp(t, udp_yc));
            s.spawn(move || count_tcp(t, tcp_xa));
            let result = (|| -> Result<()> {
                for i in 1..=KILLS {
                    if i % CHECK_EVERY == 0 {
                        e.wait_in_sync()?;
                        check_set(&e.topo, b)?;
                    } else {
                        // Half the kills within the first tens of
                        // milliseconds, where the syncs are.
                        let max = if rng.below(2) == 0 { EARLY_KILL_MS } else { MAX_KILL_DELAY_MS };
                        std::thread::sleep(Duration::from_millis(rng.below(max + 1)));
                    }
                    if !in_sync_now(&rt, &e.agent().socket) {
                        before_sync += 1;
                    }
                    e.kill();
                    kills += 1;
                    // Where the next policy change lands: while no agent
                    // runs, just after the new one answers (so the kill
                    // lands in the sync of the change), or nowhere (the
                    // kill lands in the new agent's first sync).
                    let when = rng.below(3);
                    if when == 0 {
                        b = !b;
                        changes += 1;
                        e.agent().apply("policy-varying.yaml", &varying(b))?;
                    }
                    e.spawn(&[])?;
                    if when == 1 {
                        b = !b;
                        changes += 1;
                        e.agent().apply("policy-varying.yaml", &varying(b))?;
                    }
                }
                // The last word: the agent after the last kill enforces
                // the last set exactly.
                e.wait_in_sync()?;
                check_set(&e.topo, b)?;
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            })();
            t.stop.store(true, Ordering::SeqCst);
            result
        })?;
        let load = |c: &AtomicUsize| c.load(Ordering::SeqCst);
        let (allowed, failed) = (load(&t.allowed), load(&t.allowed_failed));
        let (sent, passed) = (load(&t.denied_sent), load(&t.denied_passed));
        eprintln!(
            "chaos: {kills} kills ({before_sync} before the agent reported in sync), {changes} policy changes; \
             allowed exchanges {allowed} attempted, {failed} failed; denied probes {sent} sent, {passed} passed; \
             {:.1} s",
            started.elapsed().as_secs_f64()
        );
        ensure!(passed == 0, "{passed} denied packets reached their destination");
        ensure!(failed == 0, "{failed} of {allowed} allowed exchanges failed");
        ensure!(
            allowed > 1000 && sent > 1000,
            "too little traffic to prove anything: {allowed} allowed, {sent} denied"
        );
        ensure!(before_sync > 0, "no kill landed before the agent was in sync");
        Ok(())
    })]
}

fn main() {
    palisade_e2e::suite::run(cases())
}
