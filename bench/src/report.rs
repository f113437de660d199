//! report.md, report.json, the plots and the headline table.

use crate::plot::{self, Series};
use crate::stats::{Sample, fmt, fmt_ratio, fmt_sample};
use crate::{cpu, events, kernel, merged, programming, traffic};
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub iptables: String,
    pub nft: String,
    pub iperf3: String,
    /// Where the benchmark's files went (see `env::scratch`).
    pub scratch: String,
}

#[derive(Serialize)]
pub struct Report {
    pub quick: bool,
    /// The profile this runner (and so the agent: xtask builds both
    /// alike) was built with; a dev build's figures are not palisade's.
    pub build: &'static str,
    pub command: String,
    pub date: String,
    pub git_rev: String,
    pub machine: Machine,
    pub duration_s: f64,
    /// Other work on the machine around each section.
    pub load: Vec<cpu::Section>,
    pub kernel: Option<Result<kernel::Results, String>>,
    pub traffic: Option<Result<traffic::Results, String>>,
    pub programming: Option<Result<programming::Results, String>>,
    pub events: Option<Result<events::Results, String>>,
    pub merged: Option<Result<merged::Results, String>>,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: f64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpu: cpu.unwrap_or_default(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        memory_gib: kb / 1024.0 / 1024.0,
        iptables: sh("iptables", &["--version"]),
        nft: sh("nft", &["--version"]),
        iperf3: sh("iperf3", &["--version"]),
        scratch: {
            let dir = std::env::temp_dir();
            let tmpfs = crate::env::scratch().is_some_and(|s| s == dir);
            format!(
                "manifests in {} ({}), the agents' saved copies in {}",
                dir.display(),
                if tmpfs { "tmpfs" } else { "not tmpfs" },
                crate::env::disk_dir().display()
            )
        },
    }
}

fn human_n(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() }
}

/// NetworkPolicies, and ClusterNetworkPolicies if any.
fn policies_label(policies: usize, cnps: usize) -> String {
    if cnps == 0 { human_n(policies) } else { format!("{} + {} CNPs", human_n(policies), human_n(cnps)) }
}

/// How far per-packet cost with ClusterNetworkPolicies may stray from the
/// same cluster without them, as a fraction of the latter: the flatness
/// target's 10%.
const CNP_TOLERANCE: f64 = 0.10;

/// The Targets rows of the ClusterNetworkPolicy points (issue 12): per
/// packet, each case's total ns against the same cluster without them,
/// measured in the same run.
fn cluster_policy_targets(k: &kernel::Results) -> Vec<(String, String, &'static str)> {
    let mut rows = Vec::new();
    for p in k.points.iter().filter(|p| p.cluster_policies > 0) {
        let at = |cnps: usize, case: &str, fam: &str, proto: &str| {
            k.measurements
                .iter()
                .find(|m| {
                    m.pods == p.pods
                        && m.policies == p.policies
                        && m.cluster_policies == cnps
                        && m.case == case
                        && m.family == fam
                        && m.protocol == proto
                })
                .map(|m| m.ns.median)
        };
        // (|relative difference|, signed, what, with, without)
        let mut worst: Option<(f64, f64, String, f64, f64)> = None;
        for case in kernel::CASES {
            for fam in ["IPv4", "IPv6"] {
                for proto in ["TCP", "UDP"] {
                    let (Some(with), Some(without)) =
                        (at(p.cluster_policies, case, fam, proto), at(0, case, fam, proto))
                    else {
                        continue;
                    };
                    let d = with / without - 1.0;
                    if worst.as_ref().is_none_or(|w| d.abs() > w.0) {
                        worst = Some((d.abs(), d, format!("{case} {fam} {proto}"), with, without));
                    }
                }
            }
        }
        let ipv4_tcp: Vec<String> = ["ct_hit", "new_specific", "new_denied"]
            .iter()
            .filter_map(|c| {
                Some(format!(
                    "{} {} vs {}",
                    c.replace('_', " "),
                    fmt(at(p.cluster_policies, c, "IPv4", "TCP")?),
                    fmt(at(0, c, "IPv4", "TCP")?)
                ))
            })
            .collect();
        let target = format!(
            "per-packet cost independent of ClusterNetworkPolicies: {} CNPs ({} select the server) beside {} \
             policies, {} pods, within ±{:.0}% of the policies-only row, every case (issue 12)",
            human_n(p.cluster_policies),
            p.server_cluster_policies,
            human_n(p.policies),
            human_n(p.pods),
            CNP_TOLERANCE * 100.0
        );
        rows.push(match worst {
            None => (target, "not measured (no policies-only row)".into(), yes(false)),
            Some((abs, d, what, with, without)) => (
                target,
                format!(
                    "worst {:+.1}% ({what}: {} vs {} ns); IPv4 TCP ns with vs without: {}",
                    d * 100.0,
                    fmt(with),
                    fmt(without),
                    ipv4_tcp.join(", ")
                ),
                yes(abs <= CNP_TOLERANCE),
            ),
        });
    }
    rows
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0)
}

fn engine_label(e: &str) -> &'static str {
    match e {
        "none" => "no enforcement",
        "palisade" => "palisade",
        "iptables" => "iptables + ipset",
        "nftables" => "nftables",
        "palisade-nolog" => "palisade, --log-new-flows false",
        _ => "?",
    }
}

fn metric_label(m: &str) -> &'static str {
    match m {
        "tcp_gbps" => "TCP throughput, Gbit/s",
        "rr_per_s" => "request/response, transactions/s",
        "rr_p50_us" => "request/response latency p50, µs",
        "rr_p99_us" => "request/response latency p99, µs",
        "rr_p999_us" => "request/response latency p99.9, µs",
        "cps" => "new connections/s",
        "agent_cpu_pct" => "agent CPU during the measurements, % of one core",
        "agent_revisions" => "policy revisions the agent wrote during the measurements (no policy changed)",
        "flood_kpps" => "denied flood: 64-byte UDP packets dropped, thousands/s (one sending core)",
        "flood_kpps_per_core" => "denied flood: thousands of packets dropped per second per busy core",
        "flood_softirq_pct" => "denied flood: softirq time on the sending core, %",
        "scan_syn_ps" => "scan: SYNs sent per second to distinct denied ports",
        "scan_softirq_pct" => "scan: softirq time on the sending core, %",
        "scan_agent_cpu_pct" => "scan: agent CPU, % of one core",
        "scan_events_ps" => "scan: drop events emitted per second (the rest folded per source)",
        _ => "?",
    }
}

fn higher_is_better(m: &str) -> bool {
    !m.ends_with("_us") && !m.starts_with("agent_") && !m.ends_with("_pct") && m != "scan_events_ps"
}

fn yes(b: bool) -> &'static str {
    if b { "met" } else { "**missed**" }
}

/// The Targets row of section 5.
fn merged_target(m: &merged::Results) -> (String, String, &'static str) {
    (
        format!("merged observe, {} agents × {}k ev/s: keeps up", m.agents, m.rate_per_agent / 1000),
        format!(
            "{:.0} of {:.0} ev/s delivered, {:.3}% lost, {:.0}% of a core ({:.0} ns/event), worst delay {:.0} ms, \
             peak memory +{:.1} MiB",
            m.delivered_ps,
            m.offered_ps,
            m.loss_pct,
            m.merge_cpu_pct,
            m.ns_per_event,
            m.delay_max_ms,
            m.peak_rss_growth_kib as f64 / 1024.0
        ),
        yes(m.keeps_up()),
    )
}

impl Report {
    /// Section 5.
    fn merged_md(&self) -> String {
        let mut s = String::from("## 5. Merged observe\n\n");
        let m = match &self.merged {
            None => return String::new(),
            Some(Err(e)) => return format!("{s}Failed: {e}\n\n"),
            Some(Ok(m)) => m,
        };
        let _ = writeln!(
            s,
            "{} synthetic agents (a thread each) write the local socket's event framing at {} events/s each (a frame \
             every 10 ms, stamped as written) into socket pairs; the merge (`remote::merge`, reorder window {} ms) \
             reads them all on one thread, with a consumer that counts the events. {} s measured after 1 s of \
             warm-up; CPU is the merge thread's; loss counts events written and never delivered once the agents \
             close their streams; memory is the process's resident peak over its size before.\n",
            m.agents, m.rate_per_agent, m.window_ms, m.secs
        );
        let _ = writeln!(
            s,
            "| offered ev/s | written ev/s | delivered ev/s | lost | merge CPU | ns/event | delay p50 / max (batch) | \
             late | forced | peak held | peak memory |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            s,
            "| {:.0} | {:.0} | {:.0} | {:.3}% | {:.1}% | {:.0} | {:.0} / {:.0} ms | {} | {} | {} | +{:.1} MiB |\n",
            m.offered_ps,
            m.written_ps,
            m.delivered_ps,
            m.loss_pct,
            m.merge_cpu_pct,
            m.ns_per_event,
            m.delay_p50_ms,
            m.delay_max_ms,
            m.late,
            m.forced,
            m.peak_held,
            m.peak_rss_growth_kib as f64 / 1024.0
        );
        s
    }

    pub fn new(quick: bool, command: &str) -> Report {
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let git_rev = sh("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        Report {
            quick,
            build: if cfg!(debug_assertions) { "dev" } else { "release" },
            command: command.to_string(),
            date,
            git_rev: if dirty { format!("{git_rev} (with local changes)") } else { git_rev },
            machine: machine(),
            duration_s: 0.0,
            load: Vec::new(),
            kernel: None,
            traffic: None,
            programming: None,
            events: None,
            merged: None,
        }
    }

    fn traffic_ok(&self) -> Option<&traffic::Results> {
        self.traffic.as_ref().and_then(|r| r.as_ref().ok())
    }

    fn kernel_ok(&self) -> Option<&kernel::Results> {
        self.kernel.as_ref().and_then(|r| r.as_ref().ok())
    }

    fn prog_ok(&self) -> Option<&programming::Results> {
        self.programming.as_ref().and_then(|r| r.as_ref().ok())
    }

    fn events_ok(&self) -> Option<&events::Results> {
        self.events.as_ref().and_then(|r| r.as_ref().ok())
    }

    fn row<'a>(&'a self, layout: &str, policies: usize, engine: &str, metric: &str) -> Option<&'a traffic::Row> {
        self.traffic_ok()?
            .rows
            .iter()
            .find(|r| r.layout == layout && r.policies == policies && r.engine == engine && r.metric == metric)
    }

    fn cell(&self, layout: &str, policies: usize, engine: &str, metric: &str) -> String {
        match self.row(layout, policies, engine, metric) {
            None => "–".into(),
            Some(r) if engine == "none" => fmt_sample(&r.value),
            Some(r) => format!("{} ({})", fmt_sample(&r.value), fmt_ratio(r.ratio.median)),
        }
    }

    /// The headline table (markdown).
    pub fn headline(&self) -> String {
        let mut s = String::new();
        if let Some(t) = self.traffic_ok() {
            let (layout, c, sv) = t.layouts.first().cloned().unwrap_or_default();
            let scales: Vec<usize> = {
                let mut v: Vec<usize> = t.rows.iter().map(|r| r.policies).collect();
                v.sort();
                v.dedup();
                v
            };
            let _ = writeln!(
                s,
                "Real traffic between two pods over veth, {} pods in the cluster; layout: {layout} (client on CPU {c}, \
                 server on CPU {sv}). Median of {} ±spread (×ratio to no enforcement, same run).\n",
                t.pods,
                match t.rows.first().map(|r| r.value.samples.len()).unwrap_or(1) {
                    1 => "1 run".to_string(),
                    n => format!("{n} runs"),
                }
            );
            let _ = writeln!(s, "| measure | policies | no enforcement | palisade | iptables + ipset | nftables |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
            for metric in ["tcp_gbps", "rr_per_s", "rr_p99_us", "cps"] {
                for &p in &scales {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} |",
                        metric_label(metric),
                        human_n(p),
                        self.cell(&layout, p, "none", metric),
                        self.cell(&layout, p, "palisade", metric),
                        self.cell(&layout, p, "iptables", metric),
                        self.cell(&layout, p, "nftables", metric)
                    );
                }
            }
            s.push('\n');
        }
        let mut lines = Vec::new();
        if let Some(k) = self.kernel_ok() {
            let worst = |case: &str| {
                k.measurements.iter().filter(|m| m.case == case).map(|m| m.added_ns.median).fold(f64::MIN, f64::max)
            };
            let base = k
                .measurements
                .iter()
                .filter(|m| m.mode == "repeat")
                .map(|m| m.baseline_ns.median)
                .fold(f64::MAX, f64::min);
            lines.push(format!(
                "| verdict, conntrack hit: ns added over an empty TC program ({} ns), worst case over the sweep | {} |",
                fmt(base),
                fmt(worst("ct_hit"))
            ));
            lines.push(format!(
                "| verdict, new flow (most specific / wildcard rule / wildcard from many pods / denied): ns added, worst case | {} / {} / {} / {} |",
                fmt(worst("new_specific")),
                fmt(worst("new_wildcard")),
                fmt(worst("new_many_peers")),
                fmt(worst("new_denied"))
            ));
            lines.push(format!(
                "| verdict, a denied flow's later packets (a flood, on its conntrack entry): ns added, worst case | {} |",
                fmt(worst("denied_repeat"))
            ));
        }
        if let Some(p) = self.prog_ok()
            && let Some(big) =
                p.points.iter().filter(|x| !x.at_scale()).max_by_key(|x| (x.pods.min(x.policies), x.pods + x.policies))
        {
            lines.push(format!(
                "| one policy added → in force (first packet), {} pods / {} policies | {} ms |",
                human_n(big.pods),
                human_n(big.policies),
                fmt_sample(&big.policy_added_ms)
            ));
            lines.push(format!(
                "| cold start → enforcing (first packet dropped), {} pods / {} policies | {} ms |",
                human_n(big.pods),
                human_n(big.policies),
                fmt_sample(&big.cold_ms)
            ));
            lines.push(format!("| agent resident memory (peak), same cluster | {} |", mib(big.rss_peak_bytes)));
        }
        if let Some(e) = self.events_ok() {
            lines
                .push(format!("| verdict events to `palisade observe` without loss | {} /s |", fmt(e.max_lossless_ps)));
        }
        if !lines.is_empty() {
            s.push_str("| palisade alone | |\n|---|---:|\n");
            for l in lines {
                s.push_str(&l);
                s.push('\n');
            }
        }
        s
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        let fonts = plot::init_fonts();
        let mut md = String::new();
        let _ = writeln!(md, "# palisade benchmarks\n");
        let _ = writeln!(
            md,
            "Produced by `{}` on {} (palisade {}), {} mode, {}, in {:.0} s. Machine: Linux {}, {} × {}, {:.0} GiB; {}; {}; {}; \
             {}. \
             The machine is shared and noisy: compare figures within this report (every figure stands beside its \
             baseline from the same run), not across machines.\n",
            self.command,
            self.date,
            self.git_rev,
            if self.quick { "quick (few points, one run each)" } else { "full" },
            if self.build == "release" {
                "release build"
            } else {
                "**dev build** (unoptimised, as the tests build it: these figures show that the benchmarks run, \
                 not what palisade does)"
            },
            self.duration_s,
            self.machine.kernel,
            self.machine.cpus,
            self.machine.cpu,
            self.machine.memory_gib,
            self.machine.iptables,
            self.machine.nft,
            self.machine.iperf3,
            self.machine.scratch
        );
        if !self.load.is_empty() {
            let l: Vec<String> = self
                .load
                .iter()
                .map(|w| {
                    format!(
                        "{} {} → {} (started after {:.0} s, the CPUs {:.1}% busy over the second before; steal {:.1}%)",
                        w.name,
                        w.loadavg_before,
                        w.loadavg_after,
                        w.waited_s,
                        w.busy_before * 100.0,
                        w.steal * 100.0
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "Other work on the machine, per section: load average (1, 5, 15 min) before → after, {} CPUs; each \
                 section starts once the CPUs are under 5% busy for a second (waiting at most a minute), and steal is \
                 the CPU time the hypervisor gave to others while it ran: {}. The load average lags a minute and more \
                 behind (a build just before a section still shows); busy and steal are what competed.\n",
                self.machine.cpus,
                l.join("; ")
            );
        }
        let _ = writeln!(md, "## Headline\n\n{}", self.headline());
        md.push_str(&self.targets());
        md.push_str(&self.kernel_md(out, fonts));
        md.push_str(&self.traffic_md(out, fonts));
        md.push_str(&self.programming_md(out, fonts));
        md.push_str(&self.events_md(out, fonts));
        md.push_str(&self.merged_md());
        md.push_str(METHOD);
        std::fs::write(out.join("report.md"), md)?;
        Ok(())
    }

    fn targets(&self) -> String {
        let mut rows: Vec<(String, String, &'static str)> = Vec::new();
        if let Some(k) = self.kernel_ok() {
            // Flatness: per (family, protocol, case), total ns across each sweep.
            let mut worst = (0.0f64, String::new());
            let mut compared = false;
            for sweep in ["policies", "pods"] {
                let fixed: Vec<&kernel::Measurement> = k
                    .measurements
                    .iter()
                    .filter(|m| m.cluster_policies == 0)
                    .filter(|m| if sweep == "policies" { m.pods == 1000 } else { m.policies == 100 })
                    .collect();
                for case in kernel::CASES {
                    for fam in ["IPv4", "IPv6"] {
                        for proto in ["TCP", "UDP"] {
                            let v: Vec<f64> = fixed
                                .iter()
                                .filter(|m| m.case == case && m.family == fam && m.protocol == proto)
                                .map(|m| m.ns.median)
                                .collect();
                            if v.len() < 2 {
                                continue;
                            }
                            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |a, x| (a.0.min(*x), a.1.max(*x)));
                            let growth = (hi - lo) / lo * 100.0;
                            if !compared || growth > worst.0 {
                                compared = true;
                                worst = (growth, format!("{case} {fam} {proto} across the {sweep} sweep"));
                            }
                        }
                    }
                }
            }
            // Only when some sweep had two points to compare.
            if compared {
                rows.push((
                    "per-packet cost flat across the sweep (within 10%)".into(),
                    format!("worst spread {:.0}% ({})", worst.0, worst.1),
                    yes(worst.0 <= 10.0),
                ));
            }
            rows.extend(cluster_policy_targets(k));
            // Issue 10's packet-path targets, each the worst over the
            // NetworkPolicy sweeps (the ClusterNetworkPolicy row has its own).
            let w = |case: &str| {
                k.measurements
                    .iter()
                    .filter(|m| m.case == case && m.cluster_policies == 0)
                    .map(|m| m.added_ns.median)
                    .fold(f64::MIN, f64::max)
            };
            for (target, case, limit) in [
                ("conntrack hit ≤ +60 ns over the empty program", "ct_hit", 60.0),
                ("new flow by the most specific rule ≤ +400 ns", "new_specific", 400.0),
                ("new flow, a different peer pod per flow (cold caches) ≤ +600 ns", "new_many_peers", 600.0),
                ("new flow denied ≤ +250 ns", "new_denied", 250.0),
            ] {
                let mut measured = format!("+{} ns worst", fmt(w(case)));
                if case.starts_with("new_")
                    && let Some(f) = &k.floor
                {
                    let _ = write!(
                        measured,
                        " (floor: +{} ns, a conntrack lookup missing and an insert",
                        fmt(f.conntrack_ns.median)
                    );
                    if case == "new_denied" {
                        let _ = write!(measured, "; +{} ns with a drop event", fmt(f.denied_ns.median));
                    }
                    measured.push(')');
                }
                rows.push((target.into(), measured, yes(w(case) <= limit)));
            }
        }
        if let Some(t) = self.traffic_ok() {
            for (layout, _, _) in &t.layouts {
                let mut worst: (f64, String) = (f64::MAX, String::new());
                for r in t.rows.iter().filter(|r| r.layout == layout && r.engine == "palisade") {
                    if ["tcp_gbps", "rr_per_s"].contains(&r.metric) && r.ratio.median < worst.0 {
                        worst = (r.ratio.median, format!("{} at {} policies", r.metric, human_n(r.policies)));
                    }
                }
                rows.push((
                    format!("palisade within 5% of no enforcement on throughput and request/response ({layout})"),
                    format!("worst ratio {} ({})", fmt_ratio(worst.0), worst.1),
                    yes(worst.0 >= 0.95),
                ));
                let mut behind = Vec::new();
                let scales: Vec<usize> = {
                    let mut v: Vec<usize> = t.rows.iter().map(|r| r.policies).collect();
                    v.sort();
                    v.dedup();
                    v
                };
                for metric in ["tcp_gbps", "rr_per_s", "cps"] {
                    for &p in &scales {
                        let get = |e: &str| self.row(layout, p, e, metric).map(|r| r.value.median).unwrap_or(f64::NAN);
                        let pal = get("palisade");
                        for other in ["iptables", "nftables"] {
                            if pal.partial_cmp(&get(other)) != Some(std::cmp::Ordering::Greater) {
                                behind.push(format!("{metric} at {} vs {other}", human_n(p)));
                            }
                        }
                    }
                }
                rows.push((
                    format!("palisade ahead of iptables and nftables at every scale ({layout})"),
                    if behind.is_empty() {
                        "ahead everywhere".into()
                    } else {
                        format!("not ahead: {}", behind.join(", "))
                    },
                    yes(behind.is_empty()),
                ));
                if scales.len() > 1 {
                    let margin = |p: usize, other: &str| {
                        let g = |e: &str| self.row(layout, p, e, "cps").map(|r| r.value.median).unwrap_or(f64::NAN);
                        g("palisade") / g(other)
                    };
                    let (lo, hi) = (scales[0], scales[scales.len() - 1]);
                    let growing = ["iptables", "nftables"].iter().all(|o| margin(hi, o) > margin(lo, o));
                    rows.push((
                        format!("margin over iptables/nftables grows with policies (new connections/s, {layout})"),
                        format!(
                            "palisade/iptables {} → {}, palisade/nftables {} → {} ({} → {} policies)",
                            fmt_ratio(margin(lo, "iptables")),
                            fmt_ratio(margin(hi, "iptables")),
                            fmt_ratio(margin(lo, "nftables")),
                            fmt_ratio(margin(hi, "nftables")),
                            human_n(lo),
                            human_n(hi)
                        ),
                        yes(growing),
                    ));
                }
                let mut worst_log: (f64, String) = (f64::MAX, String::new());
                for r in t.rows.iter().filter(|r| r.layout == layout && r.engine == "palisade") {
                    if ["rr_per_s", "cps"].contains(&r.metric)
                        && let Some(off) = self.row(layout, r.policies, "palisade-nolog", r.metric)
                    {
                        let ratio = r.value.median / off.value.median;
                        if ratio < worst_log.0 {
                            worst_log = (ratio, format!("{} at {} policies", r.metric, human_n(r.policies)));
                        }
                    }
                }
                if worst_log.0.is_finite() && worst_log.0 != f64::MAX {
                    rows.push((
                        format!("every new flow logged costs ≤ 5% vs logging off (issue 3; {layout})"),
                        format!("worst on/off ratio {} ({})", fmt_ratio(worst_log.0), worst_log.1),
                        yes(worst_log.0 >= 0.95),
                    ));
                }
            }
        }
        if let Some(p) = self.prog_ok() {
            // Issue 10's programming targets.
            if let Some(big) = p.points.iter().find(|x| x.pods == 10_000 && x.policies == 10_000) {
                let changes = big.single_changes();
                rows.push((
                    "single change in force ≤ 20 ms at 10k pods × 10k policies".into(),
                    changes.iter().map(|(c, m)| format!("{c} {} ms", fmt_sample(m))).collect::<Vec<_>>().join(", "),
                    yes(changes.iter().all(|(_, m)| m.median <= 20.0)),
                ));
                rows.push((
                    format!("burst of {} policies all in force ≤ 1 s at 10k pods × 10k policies", programming::BURST),
                    format!(
                        "added {} ms (writing the files: {} ms), removed {} ms",
                        fmt_sample(&big.burst_added_ms),
                        fmt_sample(&big.burst_written_ms),
                        fmt_sample(&big.burst_removed_ms)
                    ),
                    yes(big.burst_added_ms.median <= 1000.0 && big.burst_removed_ms.median <= 1000.0),
                ));
            }
            let huge = p.points.iter().find(|x| x.at_scale());
            let target =
                "at 50k pods × 50k policies: cold start ≤ 5 s, every single change ≤ 50 ms, agent RSS ≤ 250 MiB";
            rows.push(match huge {
                Some(h) => {
                    let changes = h.single_changes();
                    (
                        target.into(),
                        format!(
                            "cold {} ms; {}; RSS peak {} (BPF maps {})",
                            fmt_sample(&h.cold_ms),
                            changes
                                .iter()
                                .map(|(c, m)| format!("{c} {} ms", fmt_sample(m)))
                                .collect::<Vec<_>>()
                                .join(", "),
                            mib(h.rss_peak_bytes),
                            mib(h.map_bytes)
                        ),
                        yes(h.cold_ms.median <= 5000.0
                            && changes.iter().all(|(_, m)| m.median <= 50.0)
                            && h.rss_peak_bytes <= 250 << 20),
                    )
                }
                None => {
                    (target.into(), "not measured in this run (`--programming-points 50000x50000`)".into(), yes(false))
                }
            });
            match p.points.iter().filter(|x| !x.at_scale()).max_by_key(|x| x.pods + x.policies) {
                Some(big) => {
                    let cluster = format!("{} pods, {} policies", human_n(big.pods), human_n(big.policies));
                    rows.push((
                        format!("cold full sync < 2 s ({cluster})"),
                        format!("{} ms to the first packet dropped", fmt_sample(&big.cold_ms)),
                        yes(big.cold_ms.median < 2000.0),
                    ));
                    rows.push((
                        format!("agent resident memory < 150 MiB ({cluster})"),
                        format!("peak {}", mib(big.rss_peak_bytes)),
                        yes(big.rss_peak_bytes < 150 << 20),
                    ));
                }
                None => {
                    for target in ["cold full sync < 2 s", "agent resident memory < 150 MiB"] {
                        rows.push((
                            target.into(),
                            "not measured in this run (no cluster below 50k pods × 50k policies)".into(),
                            yes(false),
                        ));
                    }
                }
            }
        }
        if let Some(t) = self.traffic_ok() {
            let layout = t.layouts.first().map(|l| l.0.clone()).unwrap_or_default();
            let mut scales: Vec<usize> =
                t.rows.iter().filter(|r| r.metric == "flood_kpps_per_core").map(|r| r.policies).collect();
            scales.sort();
            scales.dedup();
            if !scales.is_empty() {
                let mut behind = Vec::new();
                for &p in &scales {
                    let get = |e: &str| {
                        self.row(&layout, p, e, "flood_kpps_per_core").map(|r| r.value.median).unwrap_or(f64::NAN)
                    };
                    for other in ["iptables", "nftables"] {
                        if get("palisade").partial_cmp(&get(other)) != Some(std::cmp::Ordering::Greater) {
                            behind.push(format!("{other} at {}", human_n(p)));
                        }
                    }
                }
                rows.push((
                    "denied flood: palisade drops more packets per core than iptables and nftables at every scale"
                        .into(),
                    if behind.is_empty() {
                        "ahead everywhere".into()
                    } else {
                        format!("not ahead of {}", behind.join(", "))
                    },
                    yes(behind.is_empty()),
                ));
                let worst = scales
                    .iter()
                    .filter_map(|&p| self.row(&layout, p, "palisade", "scan_events_ps").map(|r| r.value.median))
                    .fold(0.0, f64::max);
                // A budget of 100 per interval (1 s): a scan of n seconds
                // spans at most n + 1 intervals.
                let bound = 100.0 * (t.flood_secs + 1.0) / t.flood_secs;
                rows.push((
                    format!(
                        "scan of {} denied ports/s for {} s: drop events within the per-source budget (100 per \
                         second, ≤ {} /s over the scan)",
                        human_n(traffic::SCAN_RATE as usize),
                        fmt(t.flood_secs),
                        fmt(bound)
                    ),
                    format!("at most {} events/s", fmt(worst)),
                    yes(worst <= bound),
                ));
            }
        }
        if let Some(e) = self.events_ok() {
            let at = e
                .steps
                .iter()
                .filter(|x| x.loss_pct < 0.1)
                .max_by(|a, b| a.events_observed_ps.total_cmp(&b.events_observed_ps));
            rows.push((
                "≥ 1,000,000 verdict events/s decoded by `palisade observe` without loss (issue 10)".into(),
                match at {
                    Some(x) => format!(
                        "{} events/s; agent {} ns of CPU per event there ({:.0}% of a core)",
                        fmt(x.events_observed_ps),
                        fmt(x.agent_ns_per_event),
                        x.agent_cpu_pct
                    ),
                    None => "loss at every rate".into(),
                },
                yes(e.max_lossless_ps >= 1e6),
            ));
            if let Some(p) = &e.page {
                rows.push((
                    format!(
                        "page open at {} events/s: agent CPU added ≤ 10% of a core, the page current (issue 13)",
                        fmt(p.open.offered_pps as f64)
                    ),
                    format!(
                        "{:+.1}% of a core ({:.0}% → {:.0}%, ×{:.2}); tail {:.0} ms behind at worst; {}",
                        p.added_cpu_pct,
                        p.closed.agent_cpu_pct,
                        p.open.agent_cpu_pct,
                        p.cpu_ratio,
                        p.lag_max_ms,
                        if p.current() { "current" } else { "**not current**" }
                    ),
                    yes(p.added_cpu_pct <= 10.0 && p.current()),
                ));
            }
        }
        if let Some(m) = self.merged.as_ref().and_then(|r| r.as_ref().ok()) {
            rows.push(merged_target(m));
        }
        if rows.is_empty() {
            return String::new();
        }
        let mut s = String::from("## Targets\n\n| target | measured | |\n|---|---|---|\n");
        for (t, m, y) in rows {
            let _ = writeln!(s, "| {t} | {m} | {y} |");
        }
        s.push('\n');
        s
    }

    fn kernel_md(&self, out: &Path, fonts: bool) -> String {
        let mut s = String::from("## 1. Packet verdict latency\n\n");
        let k = match &self.kernel {
            None => return String::new(),
            Some(Err(e)) => return format!("{s}Failed: {e}\n\n"),
            Some(Ok(k)) => k,
        };
        let _ = writeln!(
            s,
            "BPF_PROG_TEST_RUN of the pod-ingress classifier (`palisade_to_pod`) on valid Ethernet/IP/TCP|UDP packets \
             (right lengths and checksums) with `__sk_buff.ifindex` naming the server pod's host veth, pinned to CPU {}. \
             Repeat mode: one call with repeat = {} (conntrack hit; a denied flow's later packets; unmanaged interface). \
             Single mode: one run per call on a fresh flow, median \
             over {} flows (a repeated packet would hit the conntrack entry its first run created), each case in a pass \
             of its own with the empty program run just before every flow (its baseline, in single mode, which \
             includes the kernel's per-call timer overhead); one packet per syscall also leaves caches colder than \
             repeat mode does. Cases: conntrack hit (a packet of an allowed \
             flow, repeated); new flow by the most specific rule (from the client pod to a port the rule naming the \
             client allows: the first policy probe hits); by the wildcard rule only (the client to a port only an \
             any-peer rule allows: the first probe misses, the second hits); the same from a different cluster pod \
             per flow (IP lookups spread over the whole cluster); new, denied (a cluster pod to a port no rule allows: \
             both probes miss; the flow's drop event is sent, and drained as the agent would); a denied flow's later \
             packets (the same packet repeated, a flood: it drops on the flow's `CT_DENIED` conntrack entry, counted \
             there for the flow's next event, one lookup like a conntrack hit); unmanaged interface (no endpoint: the \
             first lookup exits). Events for new allowed flows are off here (`log_new_flows = false`); their cost is in sections 2 and 4. Cells: ns per \
             packet added over the empty TC program of the same mode and repetition (palisade total / empty), median \
             of {} ±spread. The points are loaded side by side (a datapath each) and measured a repetition at a \
             time in turn, each repetition starting one point further on, so the machine's drift falls on every row \
             alike.\n",
            k.cpu,
            k.repeat,
            k.flows,
            if k.reps == 1 { "1 run".to_string() } else { format!("{} runs", k.reps) }
        );
        if let Some(p) = k.points.iter().find(|p| p.cluster_policies > 0) {
            let _ = writeln!(
                s,
                "Rows with ClusterNetworkPolicies (`+ n CNPs`) measure the same packets with generated \
                 ClusterNetworkPolicies added to the cluster of the row above them (Admin and Baseline, Accept, Deny \
                 and Pass rules from namespaces and pods, egress to networks, single ports, ranges and named ports, \
                 priorities over 0..1000; {} of the {} select the server): the tiers are resolved at compile time \
                 into the same two lookups, and Admin Accept and Deny rules stay off the measured ports, so the \
                 bench policies still decide every measured flow.\n",
                p.server_cluster_policies,
                human_n(p.cluster_policies)
            );
        }
        let _ = writeln!(
            s,
            "| pods | policies | IP entries | policy entries | compile ms | sync ms |\n|---:|---:|---:|---:|---:|---:|"
        );
        for p in &k.points {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                human_n(p.pods),
                policies_label(p.policies, p.cluster_policies),
                p.ip_entries,
                p.policy_entries,
                fmt(p.compile_ms),
                fmt(p.sync_ms)
            );
        }
        s.push('\n');
        for fam in ["IPv4", "IPv6"] {
            for proto in ["TCP", "UDP"] {
                let _ = writeln!(s, "**{fam} {proto}**\n");
                let _ = writeln!(
                    s,
                    "| pods | policies | empty (repeat / single) | conntrack hit | new, most specific rule | new, wildcard rule only | new, wildcard, a different pod per flow | new, denied | denied, later packets | unmanaged interface |"
                );
                let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                for p in &k.points {
                    let m = |case: &str| {
                        k.measurements.iter().find(|m| {
                            m.pods == p.pods
                                && m.policies == p.policies
                                && m.cluster_policies == p.cluster_policies
                                && m.family == fam
                                && m.protocol == proto
                                && m.case == case
                        })
                    };
                    let c = |case: &str| match m(case) {
                        Some(m) => format!("+{} ({})", fmt_sample(&m.added_ns), fmt_ratio(m.ratio)),
                        None => "–".into(),
                    };
                    let base = format!(
                        "{} / {}",
                        m("ct_hit").map(|m| fmt(m.baseline_ns.median)).unwrap_or_default(),
                        m("new_specific").map(|m| fmt(m.baseline_ns.median)).unwrap_or_default()
                    );
                    let _ = writeln!(
                        s,
                        "| {} | {} | {base} | {} | {} | {} | {} | {} | {} | {} |",
                        human_n(p.pods),
                        policies_label(p.policies, p.cluster_policies),
                        c("ct_hit"),
                        c("new_specific"),
                        c("new_wildcard"),
                        c("new_many_peers"),
                        c("new_denied"),
                        c("denied_repeat"),
                        c("unmanaged")
                    );
                }
                s.push('\n');
            }
        }
        if let Some(f) = &k.floor {
            let _ = writeln!(
                s,
                "**The floor of a new flow.** Programs doing only the conntrack work every new flow does, timed the \
                 same way in single mode once per repetition: a random IPv4 flow key drawn (two \
                 `bpf_get_prandom_u32`), looked up in a table made as the IPv4 conntrack table is (LRU hash, {} \
                 entries), where it misses, then entered. Added over the empty program: key alone +{} ns; key and \
                 lookup +{} ns; key, lookup and insert +{} ns. The conntrack work alone, +{} ns, is what no new flow \
                 of any case above can go below while conntrack is a kernel hash table: the key's bucket is a \
                 random one, cold in cache, and the insert takes an element off the LRU's free list. The rest of a \
                 new flow is the policy decision (its map lookups) and, for a denied one, its drop event. The same \
                 program sending a drop event as well (an 80-byte event reserved in a ring buffer of {} MiB, \
                 stamped with `bpf_ktime_get_ns`, submitted without a wake-up, drained after every flow as the \
                 agent would): +{} ns, so +{} ns with the key's cost taken off, under which no denied flow that \
                 is tracked and reported can go.\n",
                palisade_common::capacity::CONNTRACK,
                fmt_sample(&f.key_ns),
                fmt_sample(&f.miss_ns),
                fmt_sample(&f.insert_ns),
                fmt_sample(&f.conntrack_ns),
                palisade_common::capacity::EVENTS_BYTES >> 20,
                fmt_sample(&f.event_ns),
                fmt_sample(&f.denied_ns)
            );
        }
        if fonts {
            for (sweep, file, xl) in [
                ("policies", "kernel_policies.png", "policies (1k pods)"),
                ("pods", "kernel_pods.png", "pods (100 policies)"),
            ] {
                let series: Vec<Series> = kernel::CASES
                    .iter()
                    .map(|case| Series {
                        name: case.replace('_', " "),
                        points: k
                            .measurements
                            .iter()
                            .filter(|m| m.case == *case && m.family == "IPv4" && m.protocol == "TCP")
                            .filter(|m| m.cluster_policies == 0)
                            .filter(|m| if sweep == "policies" { m.pods == 1000 } else { m.policies == 100 })
                            .map(|m| {
                                ((if sweep == "policies" { m.policies } else { m.pods }) as f64, m.added_ns.median)
                            })
                            .collect(),
                    })
                    .collect();
                if series.iter().all(|s| s.points.len() > 1)
                    && plot::lines(
                        &out.join(file),
                        &format!("verdict cost vs {sweep} (IPv4 TCP)"),
                        xl,
                        "ns added over empty TC program",
                        &series,
                        false,
                    )
                    .is_ok()
                {
                    let _ = writeln!(s, "![verdict cost against {sweep}]({file})\n");
                }
            }
        }
        s
    }

    fn traffic_md(&self, out: &Path, fonts: bool) -> String {
        let mut s = String::from("## 2. Real traffic between pods\n\n");
        let t = match &self.traffic {
            None => return String::new(),
            Some(Err(e)) => return format!("{s}Failed: {e}\n\n"),
            Some(Ok(t)) => t,
        };
        let _ = writeln!(
            s,
            "Two pods (network namespaces) behind veths with /32 routes into a node namespace that forwards between \
             them; the cluster has {} pods (the rest on other nodes) and the given number of generated policies, plus \
             the two bench policies isolating client (egress) and server (ingress). Engines enforce the same policy \
             set; one at a time, set up and torn down around each run; runs of all engines interleave. iperf3 single \
             stream ({}); request/response: one TCP connection, 64-byte ping-pong, TCP_NODELAY; new connections: \
             connect, one byte each way, close with RST. `palisade` logs every new flow (the default); \
             `palisade, --log-new-flows false` only for request/response and connections. Cells: median ±spread \
             (×ratio to no enforcement in the same repetition).\n",
            t.pods, self.machine.iperf3
        );
        let scales: Vec<usize> = {
            let mut v: Vec<usize> = t.rows.iter().map(|r| r.policies).collect();
            v.sort();
            v.dedup();
            v
        };
        for (layout, c, sv) in &t.layouts {
            let _ = writeln!(s, "### Layout: {layout} (client on CPU {c}, server on CPU {sv})\n");
            for metric in traffic::METRICS {
                let _ = writeln!(
                    s,
                    "**{}**{}\n",
                    metric_label(metric),
                    if higher_is_better(metric) { "" } else { " (lower is better)" }
                );
                let _ = writeln!(
                    s,
                    "| policies | {} |",
                    traffic::ENGINES.iter().map(|e| engine_label(e)).collect::<Vec<_>>().join(" | ")
                );
                let _ = writeln!(s, "|---:|{}", "---:|".repeat(traffic::ENGINES.len()));
                for &p in &scales {
                    let cells: Vec<String> = traffic::ENGINES.iter().map(|e| self.cell(layout, p, e, metric)).collect();
                    let _ = writeln!(s, "| {} | {} |", human_n(p), cells.join(" | "));
                }
                s.push('\n');
            }
            if fonts && scales.len() > 1 {
                for (metric, file) in [("tcp_gbps", "tcp"), ("rr_per_s", "rr"), ("cps", "cps")] {
                    let slug: String = layout.chars().filter(|c| c.is_alphanumeric()).collect();
                    let file = format!("traffic_{file}_{}.png", slug.to_lowercase());
                    let series: Vec<Series> = ["none", "palisade", "iptables", "nftables"]
                        .iter()
                        .map(|e| Series {
                            name: engine_label(e).to_string(),
                            points: scales
                                .iter()
                                .filter_map(|&p| self.row(layout, p, e, metric).map(|r| (p as f64, r.value.median)))
                                .collect(),
                        })
                        .collect();
                    if plot::lines(
                        &out.join(&file),
                        &format!("{} vs policies ({layout})", metric_label(metric)),
                        "policies",
                        metric_label(metric),
                        &series,
                        false,
                    )
                    .is_ok()
                    {
                        let _ = writeln!(s, "![{} against policies, {layout}]({file})\n", metric_label(metric));
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "**Time to put the policy set in force** (palisade: agent start to `status --wait`; iptables: `ipset restore` + `iptables-restore`; nftables: `nft -f`), ms\n"
        );
        let _ = writeln!(
            s,
            "| policies | palisade | iptables + ipset (rules / sets) | nftables (rules / sets) |\n|---:|---:|---:|---:|"
        );
        for &p in &scales {
            let g = |e: &str| t.setups.iter().find(|x| x.policies == p && x.engine == e);
            let cell = |e: &str| match g(e) {
                Some(x) if e == "palisade" => fmt_sample(&x.program_ms),
                Some(x) => format!("{} ({} / {})", fmt_sample(&x.program_ms), x.rules, x.sets),
                None => "–".into(),
            };
            let _ =
                writeln!(s, "| {} | {} | {} | {} |", human_n(p), cell("palisade"), cell("iptables"), cell("nftables"));
        }
        s.push('\n');
        if t.notes.is_empty() {
            s.push_str("Every engine answered every probe set as palisade did (see Method).\n\n");
        } else {
            for n in &t.notes {
                let _ = writeln!(s, "- {n}");
            }
            s.push('\n');
        }
        s
    }

    fn programming_md(&self, out: &Path, fonts: bool) -> String {
        let mut s = String::from("## 3. Policy programming latency and footprint\n\n");
        let p = match &self.programming {
            None => return String::new(),
            Some(Err(e)) => return format!("{s}Failed: {e}\n\n"),
            Some(Ok(p)) => p,
        };
        for e in &p.failed {
            let _ = writeln!(s, "Not measured: {e}\n");
        }
        let _ = writeln!(
            s,
            "From the change written to the source (a manifest renamed into the watched directory, on tmpfs when \
             there is one: see the header; or the agent process spawned) to the change in force in the kernel, proved by a packet: a client pod sends a UDP \
             probe to the server pod every {} µs and the server notes which arrive; the latency is the send time of \
             the first probe with the new verdict (resolution: one probe interval). Added/removed: one NetworkPolicy \
             allowing the probe port, both ends. Label: the client pod gains (loses) the label a policy pair \
             selects. Pod added/deleted: a third local pod, its interface already there, is written into (removed \
             from) the manifests; a policy pair admits it to the server. Its labels are new, its policies the \
             client's, so it joins the client's policy class. A pod of a new class carries the label gate's \
             label, which no local pod has then, and not the web tier's label, so its policies are those of no \
             local pod: its class's entries (the client's policy's and the gate's) are written for it, and its \
             parent is its namespace's root, which holds the namespace-wide policies' entries already. The first \
             pod of its namespace is added in ns-10, where no local pod is and namespace-wide policies are (from 1k \
             policies up): the namespace's root comes with it, every entry of those policies written, the worst \
             case of a pod added. The same, scheduled first: as Kubernetes shows a pod, its manifest is written \
             first without an address (scheduled to the node; the agent writes its namespace's root then), and \
             once that is in force, with the address the kubelet reports when the pod's network is up: from the \
             address written. Terminal, deleted after: then its phase Succeeded, its addresses still reported, as \
             the kubelet reports a deleted pod's before the object goes (the root goes with the object, after): \
             from the phase written. Namespace label: the local pods' namespace \
             gains (loses) the label a policy's namespaceSelector admits. Restart: the agent is stopped (enforcement stays pinned), a policy is added while it is down, a \
             new agent starts: spawn to the new policy in force. Cold: nothing pinned, traffic flowing unenforced: \
             spawn to the first probe dropped (and to `status --wait`). Memory: agent VmRSS after the cold start (VmHWM after the single changes, before the burst); BPF maps: the sum \
             of `memlock` over the agent's map file descriptors; fill: entries / capacity.\n",
            p.probe_interval_us
        );
        let _ = writeln!(
            s,
            "| pods | policies | policy added | policy removed | label added | label removed | pod added | pod deleted | pod of a new class added | deleted | first pod of its namespace added | deleted | the same, scheduled first: addressed | terminal, deleted after | namespace label added | namespace label removed | restart + change | cold → first drop | cold → status in sync | RSS (peak) | BPF maps | fill: IPs / policy / endpoints |"
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for x in &p.points {
            let f = |k: &str| {
                let v = &x.fill[k];
                format!("{}/{}", v[0], v[1])
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} / {} / {} |",
                human_n(x.pods),
                human_n(x.policies),
                fmt_sample(&x.policy_added_ms),
                fmt_sample(&x.policy_removed_ms),
                fmt_sample(&x.label_added_ms),
                fmt_sample(&x.label_removed_ms),
                fmt_sample(&x.pod_added_ms),
                fmt_sample(&x.pod_deleted_ms),
                fmt_sample(&x.pod_new_class_added_ms),
                fmt_sample(&x.pod_new_class_deleted_ms),
                fmt_sample(&x.pod_first_of_namespace_added_ms),
                fmt_sample(&x.pod_first_of_namespace_deleted_ms),
                fmt_sample(&x.pod_first_of_namespace_scheduled_ms),
                fmt_sample(&x.pod_first_of_namespace_terminated_ms),
                fmt_sample(&x.namespace_label_added_ms),
                fmt_sample(&x.namespace_label_removed_ms),
                fmt_sample(&x.restart_ms),
                fmt_sample(&x.cold_ms),
                fmt_sample(&x.cold_status_ms),
                mib(x.rss_bytes),
                mib(x.rss_peak_bytes),
                mib(x.map_bytes),
                f("ips"),
                f("policy"),
                f("endpoints")
            );
        }
        s.push_str("\nAll latencies in ms, median ±spread.\n\n");
        let _ = writeln!(
            s,
            "Where a change's time goes, measured in-process on the same manifests (one run): the file source's \
             first load, its reload after one new policy file, named as the directory's watcher names it (no \
             walk of the directory; only that file is read and only its objects validated); the Kubernetes \
             source on the same objects served by the in-process API server (what an agent in a cluster reads): \
             its first load once every watch has listed, and the load that brings one pod relabelled; and one \
             full compile.\n"
        );
        let _ = writeln!(
            s,
            "| pods | policies | files: first load | files: reload after one new file | Kubernetes: first load | \
             Kubernetes: load after one pod relabelled | compile |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        for x in &p.points {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                human_n(x.pods),
                human_n(x.policies),
                fmt(x.source_load_ms),
                fmt(x.source_reload_ms),
                fmt(x.kube_load_ms),
                fmt(x.kube_change_ms),
                fmt(x.compile_ms)
            );
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "Where a single change's time goes in the agent (its log of the pass, median): reading the source, \
             compiling (only what the change touches), writing the maps (only the entries that changed), the \
             whole pass; then the first packet with the new verdict, from the change written (the rest is the \
             file notification, publishing and the probe interval); and how many passes changed the kernel from \
             the change written to the agent in sync.\n"
        );
        let _ = writeln!(
            s,
            "| pods | policies | change | source | compile | map writes | pass | first packet | passes |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        );
        for x in &p.points {
            for c in &x.changes {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    human_n(x.pods),
                    human_n(x.policies),
                    c.change,
                    fmt(c.source_ms),
                    fmt(c.compile_ms),
                    fmt(c.maps_ms),
                    fmt(c.pass_ms),
                    fmt(c.first_packet_ms),
                    fmt(c.passes)
                );
            }
        }
        s.push('\n');
        if fonts {
            let diag: Vec<&programming::PointResult> = p.points.iter().filter(|x| x.pods == x.policies).collect();
            if diag.len() > 1 {
                let mk = |name: &str, f: &dyn Fn(&programming::PointResult) -> &Sample| Series {
                    name: name.to_string(),
                    points: diag.iter().map(|x| (x.pods as f64, f(x).median)).collect(),
                };
                let series = vec![
                    mk("policy added", &|x| &x.policy_added_ms),
                    mk("label added", &|x| &x.label_added_ms),
                    mk("restart + change", &|x| &x.restart_ms),
                    mk("cold start", &|x| &x.cold_ms),
                ];
                if plot::lines(
                    &out.join("programming.png"),
                    "change in force (first packet) vs cluster size",
                    "pods = policies",
                    "ms",
                    &series,
                    true,
                )
                .is_ok()
                {
                    s.push_str("![programming latency against cluster size](programming.png)\n\n");
                }
            }
        }
        s
    }

    fn events_md(&self, out: &Path, fonts: bool) -> String {
        let mut s = String::from("## 4. Verdict event throughput\n\n");
        let e = match &self.events {
            None => return String::new(),
            Some(Err(err)) => return format!("{s}Failed: {err}\n\n"),
            Some(Ok(e)) => e,
        };
        let _ = writeln!(
            s,
            "The client pod's egress classifier, as the agent attached it to the pod's interface, runs through \
             BPF_PROG_TEST_RUN on a UDP packet its policy denies, at each offered rate, with drop events \
             unsuppressed (`--drop-event-interval 0s --drop-event-budget 0`): every run is a drop and one event in \
             the agent's ring buffer, as a real packet's would be (one sender of real packets cannot reach these \
             rates here; the classifier's own cost is section 1's). `palisade observe --count` follows the agent \
             ({} pods, {} policies), decoding every event from the socket's binary frames and printing only the \
             count; the agent's verdict log is off (`--log-format none`). Written/lost: the kernel's ring buffer \
             counters; read: events the agent took from the ring; observed: events `observe` decoded. Loss = \
             (written + lost − observed) / (written + lost). CPU: user + system time over the step, % of one core; \
             per event: CPU time over events read (agent) or decoded (observe).\n",
            e.pods, e.policies
        );
        let _ = writeln!(
            s,
            "| offered/s | runs/s | dropped/s | events written/s | lost in kernel/s | read by agent/s | observed/s | loss | agent CPU | agent ns/event | observe CPU | observe ns/event |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in &e.steps {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1}% | {:.0}% | {} | {:.0}% | {} |",
                if x.offered_pps == 0 { "max".into() } else { x.offered_pps.to_string() },
                fmt(x.sent_pps),
                fmt(x.dropped_pps),
                fmt(x.events_written_ps),
                fmt(x.events_lost_ps),
                fmt(x.events_read_ps),
                fmt(x.events_observed_ps),
                x.loss_pct,
                x.agent_cpu_pct,
                fmt(x.agent_ns_per_event),
                x.observer_cpu_pct,
                fmt(x.observer_ns_per_event)
            );
        }
        let _ = writeln!(s, "\nHighest event rate delivered without loss: **{} events/s**.\n", fmt(e.max_lossless_ps));
        // A step that ran short of its rate with nothing lost was limited
        // by the generator (on the same CPUs as the agent), not the agent.
        let short: Vec<String> = e
            .steps
            .iter()
            .filter(|x| x.offered_pps > 0 && x.loss_pct < 0.1 && x.sent_pps < 0.95 * x.offered_pps as f64)
            .map(|x| format!("{}/s (ran {}/s)", x.offered_pps, fmt(x.sent_pps)))
            .collect();
        if !short.is_empty() {
            let _ = writeln!(
                s,
                "The generator fell short of {} with nothing lost: it shares the machine's CPUs with the agent and \
                 the rest of the machine's load, so there the limit was the generator, not the agent; the agent's \
                 CPU per event is the figure that carries over.\n",
                short.join(", ")
            );
        }
        if let Some(p) = &e.page {
            s.push_str(&page_md(p));
        }
        if fonts && e.steps.len() > 1 {
            let pts = |f: &dyn Fn(&events::Step) -> f64| e.steps.iter().map(|x| (x.sent_pps, f(x))).collect::<Vec<_>>();
            let series = vec![
                Series { name: "events written by the kernel".into(), points: pts(&|x| x.events_written_ps) },
                Series { name: "read by the agent".into(), points: pts(&|x| x.events_read_ps) },
                Series { name: "observed".into(), points: pts(&|x| x.events_observed_ps) },
                Series { name: "lost in the kernel".into(), points: pts(&|x| x.events_lost_ps.max(1.0)) },
            ];
            if plot::lines(
                &out.join("events.png"),
                "verdict events vs offered drops",
                "classifier runs/s (each a drop and an event)",
                "events/s",
                &series,
                true,
            )
            .is_ok()
            {
                s.push_str("![events against offered rate](events.png)\n\n");
            }
        }
        s
    }
}

/// Section 4's page paragraph: the same rate with the page closed, then open.
fn page_md(p: &events::Page) -> String {
    let mut s = format!(
        "**The browser view under load.** In the same run, at {} events/s, four steps: no page open, then two \
         with a client polling what the page polls, as it does (twice a second on one kept-alive connection: \
         `/api/flows` (the map, all namespaces) and `/api/events?after=SEQ&limit=200` (the tail, following its \
         sequence number); the page polls one of the two per view, this both), then no page again; each \
         side is the mean of its two steps. The agent serves the page (its default `--ui-addr`) and folds every event \
         into the map either way: the difference is what answering the page costs. Lag: the wall clock when the tail's \
         answer arrived minus the newest event's time in it, while the kernel writes events continuously.\n\n",
        fmt(p.open.offered_pps as f64)
    );
    s.push_str("| page | events read by agent/s | loss | agent CPU | agent ns/event |\n|---|---:|---:|---:|---:|\n");
    let names = ["closed", "open", "open", "closed"];
    let runs = names.iter().zip(&p.runs).map(|(n, x)| (n.to_string(), x));
    let means = [("**closed, mean**".to_string(), &p.closed), ("**open, mean**".to_string(), &p.open)];
    for (name, x) in runs.chain(means) {
        let _ = writeln!(
            s,
            "| {name} | {} | {:.1}% | {:.1}% | {} |",
            fmt(x.events_read_ps),
            x.loss_pct,
            x.agent_cpu_pct,
            fmt(x.agent_ns_per_event)
        );
    }
    let _ = writeln!(
        s,
        "\nThe open page added **{:+.1}% of a core** to the agent (×{:.2}). {} polls, {} failed, slowest request {:.0} ms, \
         {} bytes a poll; the tail's newest event was {:.0} ms behind (median), {:.0} ms at worst; the map's edge \
         counts went from {} to {}: the page {}.\n",
        p.added_cpu_pct,
        p.cpu_ratio,
        p.polls,
        p.poll_errors,
        p.request_max_ms,
        fmt(p.bytes_per_poll),
        p.lag_median_ms,
        p.lag_max_ms,
        p.edge_count_first,
        p.edge_count_last,
        if p.current() { "stayed current" } else { "**fell behind**" }
    );
    s
}

const METHOD: &str = "## Method\n\n\
- Everything runs inside network namespaces the benchmark creates (`plb-*`): a node namespace with forwarding on, \
  and pods behind veths with /32 and /128 routes on the host side (the ptp CNI wiring). No traffic leaves them. \
  iptables, ipset and nftables state lives in the node namespace and goes with it; palisade pins under \
  `/sys/fs/bpf/palisade-e2e-bench-*` (`env::BPFFS_PREFIX`). Only one engine is active at a time; everything is removed at the end, on \
  failure and on Ctrl-C.\n\
- The policy set is generated (see `bench/src/cluster.rs`): 100 namespaces; remote pods with app and tier labels; \
  policy j is namespace-wide ingress (every 10th), namespace-wide egress with an ipBlock (every 10th, offset 5) or \
  an app's ingress from another app and a team's web tier on a port or a 32-port range. The local pods are selected \
  by 1, 10 and 100 namespace-wide policies at 10, 1k and 10k policies. iptables + ipset follows kube-router's \
  layout (KUBE-ROUTER-FORWARD → KUBE-POD-FW-* with RELATED,ESTABLISHED accepted first → KUBE-NWPLCY-* per policy \
  and direction, so egress rules never over-allow ingress, with hash:ip / hash:net sets and a mark), with chains and sets for every policy in the cluster; nftables uses \
  one table with verdict maps keyed by pod address dispatching to per-pod chains of set lookups, \
  established,related accepted first. kube-network-policies itself decides the first packet of each new \
  connection in user space (NFQUEUE, with nftables sets selecting what to queue); the in-kernel nftables \
  baseline here is the faster form of that design. Both baselines are IPv4 (the traffic is IPv4).\n\
- Checked baselines: in every repetition each engine answers a probe set of 24 TCP connections (client → server \
  and server → client, 12 ports each, allowed and denied, listeners on all); an engine's figures of that \
  repetition count only if its answers equal palisade's (a note says when they did not). Engines run in a new \
  random order every repetition.\n\
- Denied traffic (first layout only): the denied flood sends 64-byte IPv4 packets (36-byte UDP payload) with \
  sendmmsg from one thread on the client's CPU to the server's denied port for the step; the veth hands each \
  packet to the node's receive path on that CPU, so the drop's whole cost lands there: packets/s, packets/s per \
  busy core, and that CPU's softirq time (/proc/stat) are reported, and none may reach the server. The scan sends \
  10,000 SYNs/s (crafted, valid checksums, raw socket) to distinct denied server ports. No enforcement drops both \
  by a policy-routing blackhole rule in the node (`ip rule … blackhole`).\n\
- Pinning: pod-side client and server threads (and iperf3 via taskset) are pinned to the CPUs named per layout; \
  softirq work of a veth transfer runs on the sending CPU. The agent is not pinned. Everything the benchmark runs \
  (its threads, iperf3, the agent) runs at nice -20, so other work on the shared machine disturbs it less; each \
  section waits for the CPUs to go quiet first, and the line above the headline says how busy they were and how \
  much the hypervisor took (steal).\n\
- Repetition: full mode repeats every measurement 3 times (quick: once) and reports the median and the spread \
  (±half the min–max range, % of the median); ratios are taken within a repetition, then their median reported.\n\
- Benchmarks measure and report; nothing here fails on a number.\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn results(with_cnps: f64) -> kernel::Results {
        let point = |cnps| kernel::Point {
            pods: 1000,
            policies: 10_000,
            cluster_policies: cnps,
            server_cluster_policies: cnps / 3,
            compile_ms: 1.0,
            sync_ms: 1.0,
            ip_entries: 1,
            policy_entries: 1,
        };
        let m = |cnps, case, ns: f64| kernel::Measurement {
            pods: 1000,
            policies: 10_000,
            cluster_policies: cnps,
            family: "IPv4",
            protocol: "TCP",
            case,
            mode: "repeat",
            ns: Sample::of(&[ns]),
            baseline_ns: Sample::of(&[30.0]),
            added_ns: Sample::of(&[ns - 30.0]),
            ratio: ns / 30.0,
        };
        kernel::Results {
            points: vec![point(0), point(1000)],
            measurements: vec![
                m(0, "ct_hit", 100.0),
                m(1000, "ct_hit", 101.0),
                m(0, "new_denied", 300.0),
                m(1000, "new_denied", with_cnps),
            ],
            ..Default::default()
        }
    }

    /// The CNP row is compared case by case with the policies-only row of
    /// the same cluster, within ±10% either way.
    #[test]
    fn cluster_policy_target_compares_with_the_policies_only_row() {
        for (denied, want) in [(320.0, "met"), (260.0, "**missed**"), (340.0, "**missed**")] {
            let rows = cluster_policy_targets(&results(denied));
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].2, want, "{denied}: {}", rows[0].1);
            assert!(rows[0].0.contains("1k CNPs (333 select the server) beside 10k policies"), "{}", rows[0].0);
        }
        let rows = cluster_policy_targets(&results(320.0));
        assert!(rows[0].1.starts_with("worst +6.7% (new_denied IPv4 TCP: 320 vs 300 ns)"), "{}", rows[0].1);
    }

    /// The new-flow targets name the floor measured beside them; the
    /// conntrack hit's does not.
    #[test]
    fn new_flow_targets_name_the_floor() {
        let mut k = results(320.0);
        let s = |v: f64| Sample::of(&[v]);
        k.floor = Some(kernel::Floor {
            key_ns: s(9.0),
            miss_ns: s(115.0),
            insert_ns: s(156.0),
            conntrack_ns: s(147.0),
            event_ns: s(221.0),
            denied_ns: s(212.0),
        });
        let mut rep = Report::new(true, "test");
        rep.kernel = Some(Ok(k));
        let t = rep.targets();
        let row = |start: &str| t.lines().find(|l| l.starts_with(start)).unwrap_or_default().to_string();
        let denied = row("| new flow denied ≤ +250 ns");
        assert!(
            denied.contains(
                "+270 ns worst (floor: +147 ns, a conntrack lookup missing and an insert; +212 ns with a drop event)"
            ),
            "{t}"
        );
        let specific = row("| new flow by the most specific rule");
        assert!(specific.contains("(floor: +147 ns, a conntrack lookup missing and an insert)"), "{t}");
        let hit = row("| conntrack hit ≤ +60 ns");
        assert!(hit.contains("+70.0 ns worst") && !hit.contains("floor"), "{t}");
    }

    /// A rate the generator could not reach, with nothing lost, is said
    /// to be the generator's limit; a rate it reached is not named.
    #[test]
    fn events_name_the_rates_the_generator_fell_short_of() {
        let step = |offered: u64, sent: f64, loss_pct: f64| events::Step {
            offered_pps: offered,
            sent_pps: sent,
            dropped_pps: sent,
            events_written_ps: sent,
            events_lost_ps: 0.0,
            events_read_ps: sent,
            events_observed_ps: sent,
            loss_pct,
            agent_cpu_pct: 8.0,
            observer_cpu_pct: 2.0,
            agent_ns_per_event: 86.0,
            observer_ns_per_event: 20.0,
        };
        let mut rep = Report::new(true, "test");
        rep.events = Some(Ok(events::Results {
            steps: vec![
                step(1_000_000, 984_218.0, 0.0),
                step(1_500_000, 675_247.0, 0.0),
                step(2_000_000, 900_000.0, 5.0),
            ],
            ..Default::default()
        }));
        let md = rep.events_md(Path::new("/nonexistent"), false);
        assert!(md.contains("The generator fell short of 1500000/s (ran 675247/s) with nothing lost"), "{md}");
        assert!(!md.contains("1000000/s (ran") && !md.contains("2000000/s (ran"), "{md}");
    }
}
