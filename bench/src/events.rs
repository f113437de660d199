//! Section 4: verdict event throughput. A pod floods distinct denied flows
//! (each packet a new 5-tuple, so each drop is an event) at increasing
//! rates while `palisade observe -o json` follows the stream; the kernel's
//! counters say how many events were written and lost, the agent says how
//! many it read, the observer counts what it got.

use crate::agent::Agent;
use crate::cluster::{self, Cluster};
use crate::env::{self, Node, Pod};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Config {
    pub pods: usize,
    pub policies: usize,
    /// Offered packets per second; 0 = as fast as one sender can.
    pub rates: Vec<u64>,
    pub secs: f64,
    pub sender_cpu: usize,
    pub palisade: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub offered_pps: u64,
    pub sent_pps: f64,
    pub dropped_pps: f64,
    pub events_written_ps: f64,
    pub events_lost_ps: f64,
    pub events_read_ps: f64,
    pub events_observed_ps: f64,
    /// Events the observer did not get, of those the kernel tried to write.
    pub loss_pct: f64,
    pub agent_cpu_pct: f64,
    pub observer_cpu_pct: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub pods: usize,
    pub policies: usize,
    pub steps: Vec<Step>,
    pub max_lossless_ps: f64,
}

fn counters(agent: &Agent) -> Result<(f64, f64, f64, f64)> {
    let st = agent.status()?;
    let c = &st["counters"];
    let g = |k: &str| c[k].as_f64().unwrap_or(0.0);
    Ok((g("events_sent"), g("events_lost"), g("events_received"), g("packets_dropped_no_rule")))
}

/// Sends `rate` pps (0: flat out) of distinct UDP flows for `secs`.
fn flood(client: &Pod, cpu: usize, dst: Ipv4Addr, rate: u64, secs: f64) -> Result<u64> {
    env::run_in(&client.netns, Some(cpu), move || -> Result<u64> {
        let socks: Vec<UdpSocket> =
            (0..4).map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).collect::<std::io::Result<_>>()?;
        let payload = [0u8; 16];
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        let mut port = 10_000u16;
        let mut sock = 0usize;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let due = if rate == 0 { u64::MAX } else { (now - start).as_secs_f64().mul_add(rate as f64, 1.0) as u64 };
            let burst = due.saturating_sub(sent).min(256);
            if burst == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            for _ in 0..burst {
                let _ = socks[sock].send_to(&payload, SocketAddr::from((dst, port)));
                sent += 1;
                port = if port >= 59_999 { 10_000 } else { port + 1 };
                if port == 10_000 {
                    sock = (sock + 1) % socks.len();
                }
            }
        }
        Ok(sent)
    })?
}

pub fn run(cfg: &Config) -> Result<Results> {
    let node = Node::create("e")?;
    let (c4, c6) = cluster::client_ips();
    let (s4, s6) = cluster::server_ips();
    let client = Pod::create(&node, "ecli", c4, c6)?;
    let _server = Pod::create(&node, "esrv", s4, s6)?;
    let cluster = Cluster::new(cfg.pods, cfg.policies);
    let mut agent = Agent::new(&node, "events")?;
    cluster.write(&agent.state_dir)?;
    agent.start(&[])?;
    agent.wait_in_sync(Duration::from_secs(120))?;
    let agent_pid = agent.pid().context("agent pid")?;

    let mut observer = std::process::Command::new(&cfg.palisade)
        .args(["observe", "-o", "json", "--socket"])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting palisade observe")?;
    env::track_pid(observer.id() as i32);
    let observer_pid = observer.id() as i32;
    let seen = Arc::new(AtomicU64::new(0));
    let stdout = observer.stdout.take().context("observe stdout")?;
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::with_capacity(1 << 20, stdout);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            s.fetch_add(1, Ordering::Relaxed);
            line.clear();
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let mut out = Results { pods: cfg.pods, policies: cfg.policies, ..Default::default() };
    for &rate in &cfg.rates {
        eprintln!("  events: offered {}", if rate == 0 { "max".to_string() } else { format!("{rate}/s") });
        let (w0, l0, r0, d0) = counters(&agent)?;
        let o0 = seen.load(Ordering::Relaxed) as f64;
        let a0 = env::cpu_seconds_of(agent_pid).unwrap_or(0.0);
        let b0 = env::cpu_seconds_of(observer_pid).unwrap_or(0.0);
        let t = Instant::now();
        let sent = flood(&client, cfg.sender_cpu, s4, rate, cfg.secs)?;
        let secs = t.elapsed().as_secs_f64();
        let a1 = env::cpu_seconds_of(agent_pid).unwrap_or(0.0);
        let b1 = env::cpu_seconds_of(observer_pid).unwrap_or(0.0);
        // Let the agent drain what is buffered, then read the totals.
        std::thread::sleep(Duration::from_millis(600));
        let (w1, l1, r1, d1) = counters(&agent)?;
        let o1 = seen.load(Ordering::Relaxed) as f64;
        let attempted = (w1 - w0) + (l1 - l0);
        let observed = o1 - o0;
        out.steps.push(Step {
            offered_pps: rate,
            sent_pps: sent as f64 / secs,
            dropped_pps: (d1 - d0) / secs,
            events_written_ps: (w1 - w0) / secs,
            events_lost_ps: (l1 - l0) / secs,
            events_read_ps: (r1 - r0) / secs,
            events_observed_ps: observed / secs,
            loss_pct: if attempted > 0.0 { (attempted - observed).max(0.0) / attempted * 100.0 } else { 0.0 },
            agent_cpu_pct: (a1 - a0) / secs * 100.0,
            observer_cpu_pct: (b1 - b0) / secs * 100.0,
        });
    }
    out.max_lossless_ps =
        out.steps.iter().filter(|s| s.loss_pct < 0.1).map(|s| s.events_observed_ps).fold(0.0, f64::max);
    let _ = observer.kill();
    let _ = observer.wait();
    env::untrack_pid(observer_pid);
    agent.uninstall();
    Ok(out)
}
