//! Section 5: merged observe (`kubectl palisade observe`, the cluster
//! page's event tail). Synthetic agents (one thread each) write the local
//! socket's binary event framing ([`palisade::events::wire`]: symbols
//! first, then a frame of events every 10 ms, stamped with the time they
//! are written) at a fixed rate each into socket pairs; the merge
//! ([`palisade::remote::merge`]) reads them all on one thread (a
//! current-thread runtime: the readers, the reorder window and the
//! consumer, which counts the events and how late each batch arrives).
//! That thread's CPU time is the merge's cost; the agents' threads are not
//! counted. Peak memory is the process's resident peak during the run over
//! its resident size before.

use anyhow::Result;
use palisade::events::wire::{self, Compact, Symbol};
use palisade::remote::merge::{self, Item};
use serde::Serialize;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Config {
    pub agents: usize,
    /// Events per second each agent writes.
    pub rate: u64,
    pub secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub agents: usize,
    pub rate_per_agent: u64,
    pub secs: f64,
    pub window_ms: u64,
    /// Events per second the agents were to write, and wrote.
    pub offered_ps: f64,
    pub written_ps: f64,
    /// Events per second the merged stream delivered.
    pub delivered_ps: f64,
    /// Events written but never delivered, of those written (%).
    pub loss_pct: f64,
    /// Events delivered older than one delivered before them.
    pub late: u64,
    /// Events let out before their window because the heap was full.
    pub forced: u64,
    /// The merge thread's CPU, % of one core, and per event delivered.
    pub merge_cpu_pct: f64,
    pub ns_per_event: f64,
    /// How long after it was stamped an event was delivered: the median
    /// and worst batch, ms.
    pub delay_p50_ms: f64,
    pub delay_max_ms: f64,
    pub peak_held: u64,
    /// Resident memory peak over the resident size before, KiB.
    pub peak_rss_growth_kib: u64,
}

impl Results {
    /// All offered events written and delivered, none lost, and the
    /// delivery no later than twice the window.
    pub fn keeps_up(&self) -> bool {
        self.written_ps >= 0.99 * self.offered_ps
            && self.delivered_ps >= 0.99 * self.offered_ps
            && self.loss_pct <= 0.01
            && self.delay_max_ms <= 2.0 * self.window_ms as f64
    }
}

fn now_ns() -> u64 {
    merge::now_ns()
}

/// A synthetic agent: writes `rate` events per second to `out` until
/// `stop`; returns how many it wrote.
fn agent(index: usize, mut out: UnixStream, rate: u64, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut buf = Vec::with_capacity(1 << 16);
    const PODS: u32 = 40;
    for i in 0..PODS {
        let sym = Symbol::Pod { namespace: format!("ns{}", i % 4), name: format!("pod-{index}-{i}") };
        wire::symbol_frame(&mut buf, i + 1, &sym);
    }
    out.write_all(&buf)?;
    let tick = Duration::from_millis(10);
    let per_tick = rate / 100;
    let start = Instant::now();
    let mut written = 0u64;
    let (mut k, mut last) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let due = start + tick * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        buf.clear();
        let at = wire::begin_frame(&mut buf, wire::TAG_EVENTS);
        // Stamped in order, spread since the last frame (an agent's stream
        // is in time order, as the ring's is, nearly).
        let t = now_ns();
        let from = last.max(t.saturating_sub(10_000_000));
        last = t;
        for j in 0..per_tick {
            let n = written + j;
            let c = Compact {
                time_ns: from + (t - from) * (j + 1) / per_tick.max(1),
                src: [10, 0, (n % 200) as u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                dst: [10, 0, 1, (n % 250) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport: 30000 + (n % 20000) as u16,
                dport: 80,
                count: 1,
                src_name: (n % u64::from(PODS)) as u32 + 1,
                dst_name: ((n / 3) % u64::from(PODS)) as u32 + 1,
                family: palisade_common::FAMILY_V4,
                protocol: palisade_common::PROTO_TCP,
                direction: 1,
                verdict: 2,
                src_kind: wire::KIND_POD,
                dst_kind: wire::KIND_POD,
                ..Default::default()
            };
            c.encode(&mut buf);
        }
        wire::end_frame(&mut buf, at);
        out.write_all(&buf)?;
        written += per_tick;
    }
    Ok(written)
}

fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(r.ru_utime) + us(r.ru_stime)) * 1000
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// What the merge thread measured.
struct Merged {
    /// In the measurement, and over the whole run.
    delivered: u64,
    total: u64,
    cpu_ns: u64,
    delays_ms: Vec<f64>,
    late: u64,
    forced: u64,
    peak_held: u64,
}

pub fn run(cfg: &Config) -> Result<Results> {
    let opts = merge::Options::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..cfg.agents {
        let (w, r) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        readers.push((format!("node-{i}"), r));
        let stop = stop.clone();
        let rate = cfg.rate;
        writers.push(std::thread::spawn(move || agent(i, w, rate, stop)));
    }
    // Reset the resident peak (Linux: "5" clears VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kib("VmRSS:");
    let secs = cfg.secs;
    let merge_thread = std::thread::spawn(move || -> Result<Merged> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let streams = readers
                .into_iter()
                .map(|(name, r)| (name, async move { Ok(tokio::net::UnixStream::from_std(r)?) }))
                .collect();
            let mut m = merge::merge(streams, opts);
            let warmup = Instant::now() + Duration::from_secs(1);
            let (mut started, mut cpu0, mut delivered, mut delays) = (false, 0, 0u64, Vec::new());
            let (mut cpu_ns, mut total, mut done) = (0, 0u64, false);
            let end = warmup + Duration::from_secs_f64(secs);
            // Until every agent's stream ends: what was written and not
            // delivered is lost.
            while let Some(items) = m.recv().await {
                let now = Instant::now();
                if !started && now >= warmup {
                    (started, cpu0) = (true, thread_cpu_ns());
                }
                if started && !done && now >= end {
                    (done, cpu_ns) = (true, thread_cpu_ns() - cpu0);
                }
                let t = now_ns();
                let mut n = 0u64;
                let mut oldest = u64::MAX;
                for i in &items {
                    if let Item::Event { event, .. } = i {
                        n += 1;
                        oldest = oldest.min(event.time_ns);
                    }
                }
                total += n;
                if started && !done {
                    delivered += n;
                    if n > 0 {
                        delays.push(t.saturating_sub(oldest) as f64 / 1e6);
                    }
                }
            }
            let c = &m.counters;
            Ok(Merged {
                delivered,
                total,
                cpu_ns,
                delays_ms: delays,
                late: c.late.load(Ordering::Relaxed),
                forced: c.forced.load(Ordering::Relaxed),
                peak_held: c.peak_buffered.load(Ordering::Relaxed),
            })
        })
    });
    // The agents write through the warm-up and the measurement, a little
    // longer, and then close their streams, which ends the merge.
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(1.2 + cfg.secs));
    stop.store(true, Ordering::Relaxed);
    let mut written = 0u64;
    for w in writers {
        written += w.join().map_err(|_| anyhow::anyhow!("an agent thread panicked"))??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let merged = merge_thread.join().map_err(|_| anyhow::anyhow!("the merge thread panicked"))??;
    let peak = status_kib("VmHWM:");
    let mut delays = merged.delays_ms.clone();
    delays.sort_by(f64::total_cmp);
    let p50 = delays.get(delays.len() / 2).copied().unwrap_or(0.0);
    let max = delays.last().copied().unwrap_or(0.0);
    let offered_ps = (cfg.agents as u64 * cfg.rate) as f64;
    let delivered_ps = merged.delivered as f64 / cfg.secs;
    let written_ps = written as f64 / elapsed;
    Ok(Results {
        agents: cfg.agents,
        rate_per_agent: cfg.rate,
        secs: cfg.secs,
        window_ms: opts.window.as_millis() as u64,
        offered_ps,
        written_ps,
        delivered_ps,
        loss_pct: 100.0 * written.saturating_sub(merged.total) as f64 / written.max(1) as f64,
        late: merged.late,
        forced: merged.forced,
        merge_cpu_pct: 100.0 * merged.cpu_ns as f64 / 1e9 / cfg.secs,
        ns_per_event: merged.cpu_ns as f64 / merged.delivered.max(1) as f64,
        delay_p50_ms: p50,
        delay_max_ms: max,
        peak_held: merged.peak_held,
        peak_rss_growth_kib: peak.saturating_sub(rss_before),
    })
}
