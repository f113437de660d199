//! Section 2: real traffic between two network-namespace pods over veths,
//! through the node namespace, with each engine enforcing the same policy
//! set: TCP throughput (iperf3, one stream), request/response (one TCP
//! connection, 64-byte ping-pong) and new connections per second (connect,
//! one byte each way, close with RST so no TIME_WAIT piles up).

use crate::agent::Agent;
use crate::cluster::{self, Cluster, PORT_CPS, PORT_DENIED, PORT_IPERF, PORT_RR};
use crate::engines::{self, Kind};
use crate::env::{self, Node, Pod};
use crate::flood;
use crate::stats::{Sample, quantile};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Config {
    pub pods: usize,
    pub scales: Vec<usize>,
    pub reps: usize,
    /// (name, client cpu, server cpu)
    pub layouts: Vec<(&'static str, usize, usize)>,
    pub iperf_secs: u64,
    pub rr_secs: f64,
    pub cps_secs: f64,
    /// Length of the denied flood and of the scan.
    pub flood_secs: f64,
    pub work: PathBuf,
}

pub const ENGINES: [&str; 5] = ["none", "palisade", "iptables", "nftables", "palisade-nolog"];

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub layout: &'static str,
    pub policies: usize,
    pub engine: &'static str,
    pub metric: &'static str,
    pub value: Sample,
    /// value / the no-enforcement value of the same repetition.
    pub ratio: Sample,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub policies: usize,
    pub engine: &'static str,
    /// Time to put the ruleset in force (palisade: agent start to in sync).
    pub program_ms: Sample,
    pub rules: usize,
    pub sets: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub pods: usize,
    pub layouts: Vec<(String, usize, usize)>,
    pub rows: Vec<Row>,
    pub setups: Vec<Setup>,
    pub notes: Vec<String>,
    /// Length of the denied flood and of the scan, seconds.
    pub flood_secs: f64,
}

pub const METRICS: [&str; 15] = [
    "tcp_gbps",
    "rr_per_s",
    "rr_p50_us",
    "rr_p99_us",
    "rr_p999_us",
    "cps",
    "agent_cpu_pct",
    "agent_revisions",
    "flood_kpps",
    "flood_kpps_per_core",
    "flood_softirq_pct",
    "scan_syn_ps",
    "scan_softirq_pct",
    "scan_agent_cpu_pct",
    "scan_events_ps",
];

/// SYNs per second the scan offers (distinct server ports).
pub const SCAN_RATE: u64 = 10_000;

/// A small xorshift generator: the engines' order, shuffled per repetition.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
        Rng(seed.unwrap_or(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

struct Servers {
    stop: Arc<AtomicBool>,
    netns: String,
    iperf: Option<std::process::Child>,
}

fn serve(pod: &Pod, cpu: usize) -> Result<Servers> {
    let stop = Arc::new(AtomicBool::new(false));
    let bind = |port: u16| -> Result<TcpListener> {
        env::run_in(&pod.netns, None, move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("listening on {port}"))
    };
    let rr = bind(PORT_RR)?;
    let cps = bind(PORT_CPS)?;
    let denied = bind(PORT_DENIED)?;
    let s = stop.clone();
    env::spawn_in(&pod.netns, Some(cpu), move || {
        for conn in rr.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 64];
                while c.read_exact(&mut buf).is_ok() {
                    if c.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let s = stop.clone();
    env::spawn_in(&pod.netns, Some(cpu), move || {
        for conn in cps.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
        }
    });
    let s = stop.clone();
    env::spawn_in(&pod.netns, Some(cpu), move || {
        for _ in denied.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
        }
    });
    let iperf = env::command_in(&pod.netns, Path::new("taskset"))?
        .args(["-c", &cpu.to_string(), "iperf3", "-s", "-p", &PORT_IPERF.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    env::track_pid(iperf.id() as i32);
    std::thread::sleep(Duration::from_millis(200));
    Ok(Servers { stop, netns: pod.netns.clone(), iperf: Some(iperf) })
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = env::run_in(&self.netns, None, || {
            for port in [PORT_RR, PORT_CPS, PORT_DENIED] {
                let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1));
            }
        });
        if let Some(mut c) = self.iperf.take() {
            let _ = c.kill();
            let _ = c.wait();
            env::untrack_pid(c.id() as i32);
        }
    }
}

fn iperf(client: &Pod, cpu: usize, server: Ipv4Addr, secs: u64) -> Result<f64> {
    let out = env::command_in(&client.netns, Path::new("taskset"))?
        .args(["-c", &cpu.to_string(), "iperf3", "-c", &server.to_string(), "-p", &PORT_IPERF.to_string()])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "2000"])
        .output()
        .context("running iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")?;
    Ok(bps / 1e9)
}

/// (transactions/s, p50 µs, p99 µs, p99.9 µs)
fn rr(client: &Pod, cpu: usize, server: Ipv4Addr, secs: f64) -> Result<(f64, f64, f64, f64)> {
    env::run_in(&client.netns, Some(cpu), move || -> Result<(f64, f64, f64, f64)> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((server, PORT_RR)), Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let msg = [0x42u8; 64];
        let mut buf = [0u8; 64];
        let mut lat: Vec<f64> = Vec::with_capacity(200_000);
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        loop {
            let t = Instant::now();
            if t >= end {
                break;
            }
            s.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        let p50 = quantile(&mut lat, 0.5);
        let p99 = quantile(&mut lat, 0.99);
        let p999 = quantile(&mut lat, 0.999);
        Ok((rate, p50, p99, p999))
    })?
}

/// New connections per second.
fn cps(client: &Pod, cpu: usize, server: Ipv4Addr, secs: f64) -> Result<f64> {
    env::run_in(&client.netns, Some(cpu), move || -> Result<f64> {
        let addr = SocketAddr::from((server, PORT_CPS));
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let mut failures = 0u64;
        while Instant::now() < end {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut b = [1u8; 1];
                    if s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok() {
                        n += 1;
                    } else {
                        failures += 1;
                    }
                    let _ = socket_linger_zero(&s);
                }
                Err(_) => failures += 1,
            }
            if failures > 100 {
                bail!("new connections keep failing");
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?
}

fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a properly sized linger struct.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether the client can open a connection to the server's denied port.
fn denied_port_open(client: &Pod, server: Ipv4Addr) -> Result<bool> {
    env::run_in(&client.netns, None, move || {
        TcpStream::connect_timeout(&SocketAddr::from((server, PORT_DENIED)), Duration::from_millis(300)).is_ok()
    })
}

enum Active {
    None,
    Palisade(Box<Agent>),
    Rules(Kind),
}

fn engine_up(
    engine: &'static str,
    node: &Node,
    cfg: &Config,
    state: &Path,
    rulesets: &[(Kind, engines::Ruleset)],
) -> Result<(Active, f64)> {
    Ok(match engine {
        "none" => (Active::None, 0.0),
        "palisade" | "palisade-nolog" => {
            let mut agent = Agent::new(node, "traffic")?;
            copy_dir(state, &agent.state_dir)?;
            let extra: &[&str] = if engine == "palisade" { &[] } else { &["--log-new-flows", "false"] };
            let t = agent.start(extra)?;
            agent.wait_in_sync(Duration::from_secs(120))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            (Active::Palisade(Box::new(agent)), ms)
        }
        "iptables" | "nftables" => {
            let kind = if engine == "iptables" { Kind::Iptables } else { Kind::Nftables };
            let rs = &rulesets.iter().find(|r| r.0 == kind).context("ruleset")?.1;
            let d = engines::install(&node.netns, rs, &cfg.work)?;
            (Active::Rules(kind), d.as_secs_f64() * 1e3)
        }
        _ => bail!("unknown engine {engine}"),
    })
}

fn engine_down(node: &Node, active: Active) {
    match active {
        Active::None => {}
        Active::Palisade(mut a) => a.uninstall(),
        Active::Rules(kind) => {
            let _ = engines::uninstall(&node.netns, kind);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from)?.flatten() {
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// The denied flood and the scan against the active engine; for no
/// enforcement, both are blackholed by policy routing in the node.
fn denied_traffic(
    node: &Node,
    client: &Pod,
    server: &Pod,
    cpu: usize,
    secs: f64,
    engine: &str,
    active: &Active,
) -> Result<Vec<(&'static str, f64)>> {
    let _blackhole =
        if engine == "none" { Some(flood::Blackhole::new(&node.netns, client.ip4, server.ip4)?) } else { None };
    let f = flood::denied_flood(client, server, cpu, secs)?;
    if f.delivered > 0 {
        bail!("{engine}: {} packets of the denied flood reached the server", f.delivered);
    }
    let mut m = vec![
        ("flood_kpps", f.pps / 1e3),
        ("flood_kpps_per_core", f.pps / 1e3 / (f.cpu.busy_pct / 100.0).max(0.01)),
        ("flood_softirq_pct", f.cpu.softirq_pct),
    ];
    let agent = match active {
        Active::Palisade(a) => a.pid().map(|pid| (a, pid, env::cpu_seconds_of(pid).unwrap_or(0.0))),
        _ => None,
    };
    let counters = |a: &Agent| -> (f64, f64) {
        let st = a.status().unwrap_or_default();
        let g = |k: &str| st["counters"][k].as_f64().unwrap_or(f64::NAN);
        (g("events_sent"), g("events_folded"))
    };
    let before = agent.map(|(a, _, _)| counters(a));
    let t = Instant::now();
    let sc = flood::scan(client, server, cpu, SCAN_RATE, secs)?;
    m.extend([("scan_syn_ps", sc.syn_ps), ("scan_softirq_pct", sc.cpu.softirq_pct)]);
    if let (Some((a, pid, cpu0)), Some((sent0, _))) = (agent, before) {
        let secs = t.elapsed().as_secs_f64();
        m.push(("scan_agent_cpu_pct", (env::cpu_seconds_of(pid).unwrap_or(0.0) - cpu0) / secs * 100.0));
        // Events written for the scan's drops (the rest were folded).
        std::thread::sleep(Duration::from_millis(100));
        let (sent1, _) = counters(a);
        m.push(("scan_events_ps", (sent1 - sent0) / secs));
    }
    Ok(m)
}

/// (metric, value) of one engine's run.
type Measured = Vec<(&'static str, f64)>;

/// (layout, policies, engine, metric, per repetition (rep, value)).
type Values = (&'static str, usize, &'static str, &'static str, Vec<(usize, f64)>);

pub fn run(cfg: &Config) -> Result<Results> {
    let mut out = Results {
        pods: cfg.pods,
        flood_secs: cfg.flood_secs,
        layouts: cfg.layouts.iter().map(|(n, c, s)| (n.to_string(), *c, *s)).collect(),
        ..Default::default()
    };
    let node = Node::create("t")?;
    let (c4, c6) = cluster::client_ips();
    let (s4, s6) = cluster::server_ips();
    let client = Pod::create(&node, "tcli", c4, c6)?;
    let server = Pod::create(&node, "tsrv", s4, s6)?;
    // (layout, policies, engine, metric) -> per rep values; and the none
    // baseline per (layout, policies, metric, rep).
    let mut values: Vec<Values> = Vec::new();
    let mut setups: Vec<(usize, &'static str, Vec<f64>, usize, usize)> = Vec::new();
    let mut rng = Rng::new();
    for &(layout, ccpu, scpu) in &cfg.layouts {
        let servers = serve(&server, scpu)?;
        let _listeners = flood::Listeners::open(&client, &server)?;
        // Denied floods and scans: once, in the first layout.
        let floods = layout == cfg.layouts[0].0;
        for &policies in &cfg.scales {
            eprintln!("  traffic: layout {layout}, {policies} policies");
            let cluster = Cluster::new(cfg.pods, policies);
            let state = cfg.work.join(format!("traffic-state-{policies}"));
            let _ = std::fs::remove_dir_all(&state);
            std::fs::create_dir_all(&state)?;
            cluster.write(&state)?;
            let input = cluster.input()?;
            let rulesets: Vec<(Kind, engines::Ruleset)> =
                [Kind::Iptables, Kind::Nftables].iter().map(|k| (*k, engines::generate(*k, &input))).collect();
            for rep in 0..cfg.reps {
                let mut order = ENGINES;
                rng.shuffle(&mut order);
                // (engine, metrics, probe verdicts), kept until the probes
                // of every engine in this repetition are compared.
                let mut this_rep: Vec<(&'static str, Measured, Vec<bool>)> = Vec::new();
                let mut setup_ms: Vec<(&'static str, f64)> = Vec::new();
                for engine in order {
                    let (active, program_ms) = engine_up(engine, &node, cfg, &state, &rulesets)?;
                    setup_ms.push((engine, program_ms));
                    let watch = match &active {
                        Active::Palisade(a) => a.pid().map(|pid| {
                            let rev = a.status().ok().and_then(|s| s["revision"].as_f64()).unwrap_or(f64::NAN);
                            (pid, env::cpu_seconds_of(pid).unwrap_or(0.0), Instant::now(), rev)
                        }),
                        _ => None,
                    };
                    let result = (|| -> Result<(Measured, Vec<bool>)> {
                        // Give an engine just taken down a moment to be gone.
                        let mut open = denied_port_open(&client, s4)?;
                        for _ in 0..20 {
                            if open == (engine == "none") {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                            open = denied_port_open(&client, s4)?;
                        }
                        if open != (engine == "none") {
                            bail!("{engine}: the denied port is {}", if open { "open" } else { "closed" });
                        }
                        let probes = flood::probes(&client, &server)?;
                        let mut m = Vec::new();
                        if !engine.ends_with("nolog") {
                            m.push(("tcp_gbps", iperf(&client, ccpu, s4, cfg.iperf_secs)?));
                        }
                        let (rate, p50, p99, p999) = rr(&client, ccpu, s4, cfg.rr_secs)?;
                        m.extend([("rr_per_s", rate), ("rr_p50_us", p50), ("rr_p99_us", p99), ("rr_p999_us", p999)]);
                        m.push(("cps", cps(&client, ccpu, s4, cfg.cps_secs)?));
                        if let (Some((pid, cpu0, t0, rev0)), Active::Palisade(a)) = (watch, &active) {
                            let cpu = env::cpu_seconds_of(pid).unwrap_or(0.0) - cpu0;
                            m.push(("agent_cpu_pct", cpu / t0.elapsed().as_secs_f64() * 100.0));
                            let rev = a.status().ok().and_then(|s| s["revision"].as_f64()).unwrap_or(f64::NAN);
                            m.push(("agent_revisions", rev - rev0));
                        }
                        if floods && engine != "palisade-nolog" {
                            m.extend(denied_traffic(&node, &client, &server, ccpu, cfg.flood_secs, engine, &active)?);
                        }
                        Ok((m, probes))
                    })();
                    engine_down(&node, active);
                    let (m, probes) = result.with_context(|| format!("{engine} at {policies} policies ({layout})"))?;
                    this_rep.push((engine, m, probes));
                }
                // An engine's figures count only if it answers every probe
                // as palisade does.
                let reference = this_rep.iter().find(|r| r.0 == "palisade").map(|r| r.2.clone()).unwrap_or_default();
                if !(reference.contains(&true) && reference.contains(&false)) {
                    out.notes.push(format!(
                        "{policies} policies, repetition {rep} ({layout}): palisade's probe verdicts do not mix \
                         allowed and denied: {}",
                        flood::describe(&reference)
                    ));
                }
                for (engine, m, probes) in this_rep {
                    if engine != "none" && probes != reference {
                        out.notes.push(format!(
                            "{engine} at {policies} policies, repetition {rep} ({layout}): not counted, its probe \
                             verdicts differ from palisade's: {} (palisade: {})",
                            flood::describe(&probes),
                            flood::describe(&reference)
                        ));
                        continue;
                    }
                    for (metric, v) in m {
                        match values
                            .iter_mut()
                            .find(|e| e.0 == layout && e.1 == policies && e.2 == engine && e.3 == metric)
                        {
                            Some(e) => e.4.push((rep, v)),
                            None => values.push((layout, policies, engine, metric, vec![(rep, v)])),
                        }
                    }
                }
                for engine in order {
                    let program_ms = setup_ms.iter().find(|s| s.0 == engine).map(|s| s.1).unwrap_or(f64::NAN);
                    if layout == cfg.layouts[0].0 {
                        let (rules, sets) = rulesets
                            .iter()
                            .find(|r| engine == if r.0 == Kind::Iptables { "iptables" } else { "nftables" })
                            .map(|r| (r.1.rule_count, r.1.set_count))
                            .unwrap_or((0, 0));
                        match setups.iter_mut().find(|s| s.0 == policies && s.1 == engine) {
                            Some(s) => s.2.push(program_ms),
                            None => setups.push((policies, engine, vec![program_ms], rules, sets)),
                        }
                    }
                }
            }
        }
        drop(servers);
    }
    for (layout, policies, engine, metric, v) in &values {
        let base = values.iter().find(|e| e.0 == *layout && e.1 == *policies && e.2 == "none" && e.3 == *metric);
        let ratios: Vec<f64> = v
            .iter()
            .filter_map(|(rep, x)| base.and_then(|b| b.4.iter().find(|(r, _)| r == rep)).map(|(_, b)| x / b))
            .collect();
        out.rows.push(Row {
            layout,
            policies: *policies,
            engine,
            metric,
            value: Sample::of(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
            ratio: Sample::of(&ratios),
        });
    }
    out.setups = setups
        .into_iter()
        .map(|(policies, engine, ms, rules, sets)| Setup { policies, engine, program_ms: Sample::of(&ms), rules, sets })
        .collect();
    drop((client, server));
    drop(node);
    Ok(out)
}
