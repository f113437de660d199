//! Section 4: verdict event throughput. The client pod's egress
//! classifier (the program the agent attached to its interface) is run
//! through BPF_PROG_TEST_RUN on a UDP packet its policy denies, at
//! increasing rates, with drop events unsuppressed (interval 0, no source
//! budget): every run is a drop and an event, written into the agent's
//! ring buffer as a real packet's would be. One sender of real packets
//! cannot reach these rates on this machine; the classifier's cost per
//! packet is section 1's. `palisade observe --count` follows the stream,
//! decoding every event (it prints only the count); the kernel's counters
//! say how many events were written and lost, the agent says how many it
//! read.

use crate::agent::Agent;
use crate::cluster::{self, Cluster};
use crate::env::{self, Node, Pod};
use crate::page;
use crate::rawbpf;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::BufRead;
use std::net::IpAddr;
use std::os::fd::AsFd;
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
    /// CPUs the flat-out step generates on (one thread each).
    pub cpus: usize,
    pub palisade: PathBuf,
    /// The rate at which the page's cost is measured (one step without a
    /// page polling, one with); None: not measured.
    pub page_rate: Option<u64>,
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
    /// Agent CPU time per event read, ns.
    pub agent_ns_per_event: f64,
    /// Observer CPU time per event decoded, ns.
    pub observer_ns_per_event: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub pods: usize,
    pub policies: usize,
    pub steps: Vec<Step>,
    pub max_lossless_ps: f64,
    pub page: Option<Page>,
}

/// The browser view under load: the same rate four times in one run,
/// without a page, twice with a client polling what the page polls, and
/// without again.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    /// The mean of the two steps each way.
    pub closed: Step,
    pub open: Step,
    /// The four steps in order: closed, open, open, closed.
    pub runs: Vec<Step>,
    /// Agent CPU the open page added, % of one core (open − closed).
    pub added_cpu_pct: f64,
    /// open / closed agent CPU.
    pub cpu_ratio: f64,
    /// Polls made (each `/api/flows` and `/api/events`) and those failed.
    pub polls: u64,
    pub poll_errors: u64,
    /// How far the newest event the tail returned was behind the moment
    /// its answer arrived (the kernel writes events continuously), ms.
    pub lag_median_ms: f64,
    pub lag_max_ms: f64,
    /// The slowest of the two requests, ms.
    pub request_max_ms: f64,
    /// The map's summed edge counts at the first and the last poll.
    pub edge_count_first: u64,
    pub edge_count_last: u64,
    /// Bytes per poll (both answers).
    pub bytes_per_poll: f64,
}

impl Page {
    /// The page kept up: every poll answered, the tail within 1 s of the
    /// kernel, the map's counts growing.
    pub fn current(&self) -> bool {
        self.polls > 0
            && self.poll_errors == 0
            && self.lag_max_ms < 1000.0
            && self.edge_count_last > self.edge_count_first
    }
}

fn counters(agent: &Agent) -> Result<(f64, f64, f64, f64)> {
    let st = agent.status()?;
    let c = &st["counters"];
    let g = |k: &str| c[k].as_f64().unwrap_or(0.0);
    Ok((g("events_sent"), g("events_lost"), g("events_received"), g("packets_dropped_no_rule")))
}

/// Runs the classifier `rate` times a second (0: flat out) for `secs`,
/// in slices; returns the runs made and the seconds they took.
fn generate(prog: std::os::fd::BorrowedFd<'_>, pkt: &[u8], ctx: &[u8], rate: u64, secs: f64) -> Result<(u64, f64)> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut runs = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = if rate == 0 { runs + 20_000 } else { ((now - start).as_secs_f64() * rate as f64) as u64 };
        let n = due.saturating_sub(runs).min(50_000) as u32;
        if n == 0 {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        rawbpf::test_run(prog, pkt, ctx, n)?;
        runs += u64::from(n);
    }
    Ok((runs, start.elapsed().as_secs_f64()))
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
    // Every drop an event; verdict lines off (the sinks measured are
    // observe and metrics).
    agent.start(&["--drop-event-interval", "0s", "--drop-event-budget", "0", "--log-format", "none"])?;
    agent.wait_in_sync(Duration::from_secs(120))?;
    let agent_pid = agent.pid().context("agent pid")?;

    let mut observer = std::process::Command::new(&cfg.palisade)
        .args(["observe", "--count", "--socket"])
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
            // The running count of events decoded.
            if let Ok(n) = line.trim().parse::<u64>() {
                s.store(n, Ordering::Relaxed);
            }
            line.clear();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let client_if = node.ifindex(&client.host_if)?;
    let prog = rawbpf::program_of_pinned_link(&agent.bpffs.join("links").join(format!("{client_if}-from-pod")))?;
    let pkt = palisade_kit::packet::valid(
        IpAddr::V4(client.ip4),
        IpAddr::V4(s4),
        palisade_kit::packet::L4::Udp(40_000, 10_000),
    );
    let ctx = palisade_kit::tc::skb_ctx(client_if);
    let verdict = rawbpf::test_run(prog.as_fd(), &pkt, &ctx, 1)?.0;
    anyhow::ensure!(verdict == palisade_kit::tc::TC_ACT_SHOT, "the flood packet is not denied");

    let mut out = Results { pods: cfg.pods, policies: cfg.policies, ..Default::default() };
    // One step: `rate` for `secs`; returns it and when generation started
    // and ended.
    let measure = |rate: u64, secs: f64| -> Result<(Step, Instant, Instant)> {
        let (w0, l0, r0, d0) = counters(&agent)?;
        let o0 = seen.load(Ordering::Relaxed) as f64;
        let a0 = env::cpu_seconds_of(agent_pid).unwrap_or(0.0);
        let b0 = env::cpu_seconds_of(observer_pid).unwrap_or(0.0);
        let began = Instant::now();
        // Flat out: one generator per CPU; else one on the sender's CPU.
        let cpus: Vec<usize> = if rate == 0 { (0..cfg.cpus).collect() } else { vec![cfg.sender_cpu] };
        let threads: Vec<_> = cpus
            .iter()
            .map(|&cpu| -> Result<_> {
                let (pkt, ctx) = (pkt.clone(), ctx);
                let fd = prog.try_clone()?;
                Ok(env::spawn_in(&client.netns, Some(cpu), move || generate(fd.as_fd(), &pkt, &ctx, rate, secs)))
            })
            .collect::<Result<_>>()?;
        let (mut sent, mut secs) = (0u64, 0f64);
        for t in threads {
            let (n, s) = t.join().map_err(|_| anyhow::anyhow!("generator panicked"))???;
            sent += n;
            secs = secs.max(s);
        }
        let ended = Instant::now();
        // Let the agent drain what is buffered, then read the totals (and
        // the CPU time all of this step's events cost).
        std::thread::sleep(Duration::from_millis(600));
        let a1 = env::cpu_seconds_of(agent_pid).unwrap_or(0.0);
        let b1 = env::cpu_seconds_of(observer_pid).unwrap_or(0.0);
        let (w1, l1, r1, d1) = counters(&agent)?;
        let o1 = seen.load(Ordering::Relaxed) as f64;
        let attempted = (w1 - w0) + (l1 - l0);
        let observed = o1 - o0;
        let step = Step {
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
            agent_ns_per_event: if r1 > r0 { (a1 - a0) / (r1 - r0) * 1e9 } else { 0.0 },
            observer_ns_per_event: if observed > 0.0 { (b1 - b0) / observed * 1e9 } else { 0.0 },
        };
        Ok((step, began, ended))
    };
    if let Some(rate) = cfg.page_rate {
        // Before the sweep, on an idle agent: the flat-out step leaves a
        // backlog. Closed, open, open, closed: a drift in the machine's
        // load over the four steps weighs on both sides alike.
        settle(agent_pid);
        eprintln!("  events: offered {rate}/s, the page closed, open, open, closed");
        let (closed_a, _, _) = measure(rate, cfg.secs)?;
        let poller = page::Poller::start(&node.netns, page::ADDR);
        let measured = (|| Ok::<_, anyhow::Error>((measure(rate, cfg.secs)?, measure(rate, cfg.secs)?)))();
        let polls = poller.stop()?;
        let ((open_a, a0, a1), (open_b, b0, b1)) = measured?;
        let (closed_b, _, _) = measure(rate, cfg.secs)?;
        let mut page = page_result(mean(&closed_a, &closed_b), mean(&open_a, &open_b), &polls, &[(a0, a1), (b0, b1)]);
        page.runs = vec![closed_a, open_a, open_b, closed_b];
        out.page = Some(page);
    }
    for &rate in &cfg.rates {
        eprintln!("  events: offered {}", if rate == 0 { "max".to_string() } else { format!("{rate}/s") });
        out.steps.push(measure(rate, cfg.secs)?.0);
    }
    out.max_lossless_ps =
        out.steps.iter().filter(|s| s.loss_pct < 0.1).map(|s| s.events_observed_ps).fold(0.0, f64::max);
    let _ = observer.kill();
    let _ = observer.wait();
    env::untrack_pid(observer_pid);
    agent.uninstall();
    Ok(out)
}

/// The page's figures from the closed and open steps and the polls made
/// during the open ones. Lag counts only polls answered while the kernel
/// was writing events (after the first half second of generation).
fn page_result(closed: Step, open: Step, polls: &[page::Poll], generating: &[(Instant, Instant)]) -> Page {
    let settled = Duration::from_millis(500);
    let during: Vec<&page::Poll> =
        polls.iter().filter(|p| generating.iter().any(|&(a, b)| p.at >= a + settled && p.at <= b)).collect();
    let mut lags: Vec<f64> = during.iter().filter_map(|p| p.lag_ms).collect();
    lags.sort_by(f64::total_cmp);
    let ok: Vec<&page::Poll> = polls.iter().filter(|p| p.error.is_none()).collect();
    Page {
        added_cpu_pct: open.agent_cpu_pct - closed.agent_cpu_pct,
        cpu_ratio: if closed.agent_cpu_pct > 0.0 { open.agent_cpu_pct / closed.agent_cpu_pct } else { 0.0 },
        polls: polls.len() as u64,
        poll_errors: polls.iter().filter(|p| p.error.is_some()).count() as u64,
        // No answer with an event while generating counts as behind.
        lag_median_ms: lags.get(lags.len() / 2).copied().unwrap_or(f64::INFINITY),
        lag_max_ms: if lags.len() == during.len() {
            lags.last().copied().unwrap_or(f64::INFINITY)
        } else {
            f64::INFINITY
        },
        request_max_ms: ok.iter().map(|p| p.request_ms).fold(0.0, f64::max),
        edge_count_first: ok.first().map_or(0, |p| p.edge_count),
        edge_count_last: ok.last().map_or(0, |p| p.edge_count),
        bytes_per_poll: if ok.is_empty() {
            0.0
        } else {
            ok.iter().map(|p| p.bytes as f64).sum::<f64>() / ok.len() as f64
        },
        closed,
        open,
        runs: Vec::new(),
    }
}

/// Waits (up to 10 s) until the agent uses under 5% of a core: done with
/// what earlier steps left it.
fn settle(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let c0 = env::cpu_seconds_of(pid).unwrap_or(0.0);
        std::thread::sleep(Duration::from_millis(300));
        if (env::cpu_seconds_of(pid).unwrap_or(0.0) - c0) / 0.3 < 0.05 {
            return;
        }
    }
}

/// The mean of two steps at the same rate.
fn mean(a: &Step, b: &Step) -> Step {
    let m = |f: fn(&Step) -> f64| (f(a) + f(b)) / 2.0;
    Step {
        offered_pps: a.offered_pps,
        sent_pps: m(|x| x.sent_pps),
        dropped_pps: m(|x| x.dropped_pps),
        events_written_ps: m(|x| x.events_written_ps),
        events_lost_ps: m(|x| x.events_lost_ps),
        events_read_ps: m(|x| x.events_read_ps),
        events_observed_ps: m(|x| x.events_observed_ps),
        loss_pct: m(|x| x.loss_pct),
        agent_cpu_pct: m(|x| x.agent_cpu_pct),
        observer_cpu_pct: m(|x| x.observer_cpu_pct),
        agent_ns_per_event: m(|x| x.agent_ns_per_event),
        observer_ns_per_event: m(|x| x.observer_ns_per_event),
    }
}
