//! CPU time from /proc/stat: one CPU's share of a measurement (the flood),
//! and the machine's other work around a section: each section starts
//! once the CPUs have gone quiet, and reports the time the hypervisor gave
//! them to someone else while it ran (steal), which no waiting avoids.

use anyhow::{Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Clock ticks from one line of /proc/stat (`cpu` for the machine,
/// `cpuN` for one CPU).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ticks {
    /// All but idle and iowait (steal included: the CPU was not ours).
    pub busy: u64,
    pub softirq: u64,
    pub steal: u64,
    pub total: u64,
}

/// The ticks of `line` ("cpu", "cpu1", ...).
pub fn ticks(line: &str) -> Result<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(line))
        .with_context(|| format!("no {line} line in /proc/stat"))?;
    let v: Vec<u64> = fields.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    Ok(Ticks { busy: total - at(3) - at(4), softirq: at(6), steal: at(7), total })
}

/// Busy and steal between two readings, as fractions of the time elapsed.
fn fractions(a: Ticks, b: Ticks) -> (f64, f64) {
    let total = b.total.saturating_sub(a.total).max(1) as f64;
    (b.busy.saturating_sub(a.busy) as f64 / total, b.steal.saturating_sub(a.steal) as f64 / total)
}

/// What else the machine did around one section.
#[derive(Serialize, Clone, Debug)]
pub struct Section {
    pub name: String,
    /// /proc/loadavg (1, 5, 15 min) before and after.
    pub loadavg_before: String,
    pub loadavg_after: String,
    /// Seconds waited for the CPUs to go quiet before it started.
    pub waited_s: f64,
    /// The CPUs' busy share over the last second before it started (the
    /// runner itself idle then), 0..1.
    pub busy_before: f64,
    /// Steal over the section, 0..1 of the CPUs' time.
    pub steal: f64,
}

/// A section being watched ([`start`] .. [`Watch::finish`]).
pub struct Watch {
    name: String,
    loadavg: String,
    waited_s: f64,
    busy_before: f64,
    at: Ticks,
}

/// Other work may take this share of the CPUs over a second before a
/// section starts (the agents of a section before it take a little while
/// to exit).
const QUIET: f64 = 0.05;
/// Waiting gives up after this long, and the section starts anyway (the
/// report says how busy the machine was).
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until the CPUs have been quiet for a second (at most
/// [`PATIENCE`]), then starts watching the section `name`.
pub fn start(name: &str) -> Watch {
    let began = Instant::now();
    let mut busy_before = 1.0;
    while let Ok(a) = ticks("cpu") {
        std::thread::sleep(Duration::from_secs(1));
        let Ok(b) = ticks("cpu") else { break };
        busy_before = fractions(a, b).0;
        if busy_before < QUIET || began.elapsed() >= PATIENCE {
            break;
        }
    }
    Watch {
        name: name.into(),
        loadavg: loadavg(),
        waited_s: began.elapsed().as_secs_f64(),
        busy_before,
        at: ticks("cpu").unwrap_or_default(),
    }
}

impl Watch {
    pub fn finish(self) -> Section {
        let steal = ticks("cpu").map(|b| fractions(self.at, b).1).unwrap_or(0.0);
        Section {
            name: self.name,
            loadavg_before: self.loadavg,
            loadavg_after: loadavg(),
            waited_s: self.waited_s,
            busy_before: self.busy_before,
            steal,
        }
    }
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
