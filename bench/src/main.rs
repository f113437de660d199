//! `palisade-bench`: the benchmarks behind `cargo xtask bench`. Measures
//! and reports, never fails on a number: packet verdict latency
//! (BPF_PROG_TEST_RUN), real traffic against iptables and nftables,
//! policy programming latency and footprint, verdict event throughput.
//! Writes report.md, report.json and PNG plots under bench/results/ (a
//! quick run under bench/results/quick/, so it never overwrites the
//! committed full report), and prints the headline.

mod agent;
mod cluster;
mod cpu;
mod engines;
mod env;
mod events;
mod flood;
mod kernel;
mod merged;
mod page;
mod plot;
mod probe;
mod programming;
mod rawbpf;
mod report;
mod stats;
mod traffic;

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "palisade-bench", about = "palisade's benchmarks (run as root)")]
struct Args {
    /// A short run (under two minutes) for CI smoke.
    #[arg(long)]
    quick: bool,
    /// Where the report and plots go (default: bench/results, or
    /// bench/results/quick for a quick run).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these sections (kernel, traffic, programming, events, merged).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The palisade binary (default: $PALISADE_BIN).
    #[arg(long, env = "PALISADE_BIN")]
    palisade: PathBuf,
    /// Override the number of repetitions (default: 3, quick: 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Override the traffic section's policy counts (comma-separated).
    #[arg(long, value_delimiter = ',')]
    traffic_policies: Vec<usize>,
    /// Override the kernel section's points (`PODSxPOLICIES` or
    /// `PODSxPOLICIESxCNPS`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    kernel_points: Vec<String>,
    /// Override the programming section's points (`PODSxPOLICIES`,
    /// comma-separated).
    #[arg(long, value_delimiter = ',')]
    programming_points: Vec<String>,
    /// The command line recorded in the report.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        env::cleanup_all();
        eprintln!("palisade-bench: {e:#}");
        std::process::exit(1);
    }
}

/// `PODSxPOLICIES[xCNPS]`.
fn kernel_point(p: &str) -> Result<(usize, usize, usize)> {
    let n: Vec<usize> =
        p.split('x').map(str::parse).collect::<Result<_, _>>().context("expected PODSxPOLICIES[xCNPS]")?;
    match n[..] {
        [pods, policies] => Ok((pods, policies, 0)),
        [pods, policies, cnps] => Ok((pods, policies, cnps)),
        _ => bail!("expected PODSxPOLICIES[xCNPS], got {p:?}"),
    }
}

/// A section that could not measure: say so now, report it, go on.
/// Runs one section once the CPUs are quiet, noting what else the machine
/// did around it in `load`; a section that fails is reported as such and
/// the next goes on.
fn section<T>(name: &str, load: &mut Vec<cpu::Section>, run: impl FnOnce() -> Result<T>) -> Option<Result<T, String>> {
    let watch = cpu::start(name);
    let out = run().map_err(|e| {
        eprintln!("  {name}: FAILED: {e:#}");
        env::cleanup_all();
        format!("{e:#}")
    });
    load.push(watch.finish());
    Some(out)
}

fn real_main(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF programs and create network namespaces: run them as root");
    }
    if !args.palisade.is_file() {
        bail!("no palisade binary at {}", args.palisade.display());
    }
    let palisade = std::fs::canonicalize(&args.palisade)?;
    // The e2e kit's agent launcher runs $PALISADE_BIN.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("PALISADE_BIN", &palisade) };
    if let Some(dir) = env::scratch() {
        // Every temporary directory (the kit's agents' too) goes there.
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("TMPDIR", dir) };
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(if args.quick { "bench/results/quick" } else { "bench/results" }));
    // The machine is shared: run everything (threads, iperf3, the agent:
    // they inherit it) at the highest priority of the normal scheduler so
    // other work disturbs the measurements less. Not real-time: the agent
    // still competes with the workload on equal terms, as on a node.
    // SAFETY: setpriority on the calling thread, before any other exists.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } != 0 {
        eprintln!("note: could not raise priority: {}", std::io::Error::last_os_error());
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        env::cleanup_all();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    env::clean_leftovers(&palisade);
    let work = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&out)?;
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let quick = args.quick;
    let started = Instant::now();
    let mut rep = report::Report::new(quick, &args.command);

    if want("kernel") {
        eprintln!("1. packet verdict latency (BPF_PROG_TEST_RUN)");
        // (pods, policies, ClusterNetworkPolicies). The CNP point comes
        // right after the NetworkPolicy-only point it is compared with.
        let points = if !args.kernel_points.is_empty() {
            args.kernel_points.iter().map(|p| kernel_point(p)).collect::<Result<_>>()?
        } else if quick {
            vec![(1000, 1, 0), (1000, 100, 0), (1000, 100, 100), (10, 100, 0), (10_000, 100, 0)]
        } else {
            let mut p: Vec<(usize, usize, usize)> = [1, 10, 100, 1000, 10_000].iter().map(|&n| (1000, n, 0)).collect();
            p.push((1000, 10_000, 1000));
            p.extend([10, 10_000, 50_000].iter().map(|&n| (n, 100, 0)));
            p
        };
        let cfg = kernel::Config {
            repeat: 1_000_000,
            flows: if quick { 2000 } else { 8000 },
            reps: args.reps.unwrap_or(if quick { 1 } else { 3 }),
            points,
            cpu: 1,
        };
        rep.kernel = section("kernel", &mut rep.load, || kernel::run(&cfg));
    }
    if want("traffic") {
        eprintln!("2. real traffic between pods");
        let cfg = traffic::Config {
            pods: 1000,
            scales: if !args.traffic_policies.is_empty() {
                args.traffic_policies.clone()
            } else if quick {
                vec![10]
            } else {
                vec![10, 1000, 10_000]
            },
            reps: args.reps.unwrap_or(if quick { 1 } else { 3 }),
            layouts: if quick { vec![("across CPUs", 0, 1)] } else { vec![("across CPUs", 0, 1), ("same CPU", 1, 1)] },
            iperf_secs: if quick { 2 } else { 3 },
            rr_secs: if quick { 1.0 } else { 2.0 },
            cps_secs: if quick { 1.0 } else { 2.0 },
            flood_secs: if quick { 1.0 } else { 2.0 },
            work: work.clone(),
        };
        rep.traffic = section("traffic", &mut rep.load, || traffic::run(&cfg));
    }
    if want("programming") {
        eprintln!("3. policy programming latency and footprint");
        let cfg = programming::Config {
            points: if !args.programming_points.is_empty() {
                let point = |p: &String| -> Result<(usize, usize)> {
                    let (a, b) = p.split_once('x').context("expected PODSxPOLICIES")?;
                    Ok((a.parse()?, b.parse()?))
                };
                args.programming_points.iter().map(point).collect::<Result<_>>()?
            } else if quick {
                vec![(10, 10), (1000, 1000)]
            } else {
                vec![(10, 10), (1000, 1000), (10_000, 10_000), (10_000, 10), (10, 10_000), (50_000, 50_000)]
            },
            reps: args.reps.unwrap_or(if quick { 1 } else { 3 }),
        };
        rep.programming = section("programming", &mut rep.load, || programming::run(&cfg));
    }
    if want("events") {
        eprintln!("4. verdict event throughput");
        let cfg = events::Config {
            pods: 1000,
            policies: if quick { 100 } else { 1000 },
            rates: if quick {
                vec![100_000, 1_000_000, 1_500_000, 0]
            } else {
                vec![100_000, 250_000, 500_000, 1_000_000, 1_500_000, 0]
            },
            secs: if quick { 2.0 } else { 3.0 },
            sender_cpu: 0,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            palisade: palisade.clone(),
            page_rate: Some(100_000),
        };
        rep.events = section("events", &mut rep.load, || events::run(&cfg));
    }
    if want("merged") {
        eprintln!("5. merged observe: 10 agents' event streams into one");
        let cfg = merged::Config { agents: 10, rate: 10_000, secs: if quick { 3.0 } else { 10.0 } };
        rep.merged = section("merged", &mut rep.load, || merged::run(&cfg));
    }
    env::cleanup_all();
    let _ = std::fs::remove_dir_all(&work);
    rep.duration_s = started.elapsed().as_secs_f64();
    rep.write(&out)?;
    println!("{}", rep.headline());
    println!("report: {}", out.join("report.md").display());
    Ok(())
}
