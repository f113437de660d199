//! The `palisade` command.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use palisade::api::{self, Request};
use palisade::events::LogFormat;
use palisade::run;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Kubernetes NetworkPolicy enforcement in eBPF, with verdicts you can read"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: enforce policy on this node's pods and report verdicts.
    Run(RunArgs),
    /// Show what is enforced now.
    Status(StatusArgs),
    /// Stream verdict events from the running agent.
    Observe(ObserveArgs),
    /// Would a connection be allowed, and why: policy by policy, rule by
    /// rule, checked against the kernel when asked of the running agent.
    Trace(TraceArgs),
    /// Find the policy mistakes that break or open traffic (exit 1 on errors).
    Lint(LintArgs),
    /// The flow record of the running agent: who talked to whom.
    Flows(palisade::advise::cli::FlowsArgs),
    /// Least-privilege NetworkPolicies from the recorded flows, verified
    /// with palisade's compiler before they are printed.
    Advise(palisade::advise::cli::AdviseArgs),
    /// Remove everything palisade pinned: programs come off every interface.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/palisade")]
        bpffs: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Read Namespaces, Pods and NetworkPolicies from manifests in this
    /// directory (watched for changes) instead of the Kubernetes API.
    #[arg(long, env = "PALISADE_CLUSTER_STATE")]
    cluster_state: Option<PathBuf>,
    /// Pods with this spec.nodeName (or none) are local. Default: host name.
    #[arg(long, env = "PALISADE_NODE_NAME")]
    node_name: Option<String>,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/palisade")]
    bpffs: PathBuf,
    /// Unix socket of the local API.
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Audit mode for the whole node: would-be drops pass and are reported.
    #[arg(long)]
    audit: bool,
    /// Honour the `palisade.dev/audit: "true"` annotation on Namespaces.
    /// Off by default: whoever may annotate a Namespace could otherwise
    /// turn its enforcement off.
    #[arg(long)]
    allow_namespace_audit: bool,
    /// With --cluster-state: where the last good copy of each manifest file
    /// is kept, so that a file that does not read after a restart keeps
    /// what it enforced.
    #[arg(long, env = "PALISADE_STATE_DIR", default_value = "/var/lib/palisade")]
    state_dir: PathBuf,
    /// With --cluster-state: read a directory or files that users other
    /// than root (or the agent's user) could write, and symlinks out of it.
    #[arg(long)]
    allow_insecure_cluster_state: bool,
    /// Do not let the node itself (kubelet probes) reach isolated pods.
    #[arg(long)]
    deny_host: bool,
    /// How verdicts are written to stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Emit an event for every new allowed flow (true/false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log_new_flows: bool,
    /// At most one drop event per flow per this interval.
    #[arg(long, default_value = "1s")]
    drop_event_interval: humantime::Duration,
    /// At most this many drop events per source address per drop event
    /// interval (a scan across many flows); drops past it are counted and
    /// folded into the source's next event. 0: no bound.
    #[arg(long, default_value_t = 100)]
    drop_event_budget: u32,
    /// Size of the kernel's event ring buffer in bytes (power of two).
    #[arg(long, default_value_t = palisade_common::capacity::EVENTS_BYTES)]
    event_buffer_bytes: u32,
    /// skb mark bit carried by pod traffic to Service cluster IPs until
    /// kube-proxy's DNAT picks the backend that egress policy judges.
    #[arg(long, default_value = "0x400000", value_parser = parse_mark)]
    defer_mark: u32,
    /// skb mark bit the netfilter hooks (xt_bpf rules in the mangle
    /// table) put on Service traffic whose ingress they judged against its
    /// real client. 0 turns the hooks off, and with them the judgement of
    /// Service traffic to the node itself and of traffic SNATed to a node
    /// address (NodePort, --masquerade-all).
    #[arg(long, default_value = "0x800000", value_parser = parse_mark_or_off)]
    judged_mark: u32,
    /// Interfaces (besides pods') that judge the egress of DNATed pod
    /// traffic: "all" (but loopback), or a comma-separated list of names.
    #[arg(long, default_value = "all")]
    host_interfaces: String,
    /// Strict mode: pod interfaces (names starting with one of these
    /// comma-separated prefixes, e.g. "veth,cali,lxc") drop everything but
    /// link plumbing from the moment they appear until their pod's policy
    /// is in the kernel. Off when empty.
    #[arg(long, default_value = "")]
    strict: String,
    /// Full resync period (changes are applied as they happen regardless).
    #[arg(long, default_value = "30s")]
    resync: humantime::Duration,
    /// Serve /metrics, /healthz and /readyz here; empty: do not serve.
    #[arg(long, env = "PALISADE_METRICS_ADDR", default_value = "127.0.0.1:9469")]
    metrics_addr: String,
    /// Serve the browser view (flow map, verdicts, reachability, policies)
    /// here; empty: do not serve. Loopback only (reach it with `kubectl
    /// port-forward`): the page names every workload and its traffic.
    #[arg(long, env = "PALISADE_UI_ADDR", default_value = palisade::ui::DEFAULT_ADDR)]
    ui_addr: String,
    /// Let --ui-addr be an address other hosts can reach.
    #[arg(long)]
    ui_allow_remote: bool,
    /// Test only: smaller maps, to exceed on purpose (e.g. "policy=64";
    /// maps: endpoints, ips, hosts, policy, policy_ports, conntrack).
    #[arg(long, hide = true, default_value = "")]
    map_entries: palisade::datapath::MapSizes,
    /// Test only: interface discovery fails while this file says "fail",
    /// sees no links while it says "partial", no routes while "routes".
    #[arg(long, hide = true)]
    test_fault_interfaces: Option<PathBuf>,
    /// Start although kube-proxy runs in IPVS mode (unsupported: Service
    /// traffic it delivers locally escapes the hooks).
    #[arg(long)]
    allow_ipvs: bool,
    /// Distinct flow keys the flow record keeps (oldest go first).
    #[arg(long, default_value_t = palisade::flows::Settings::default().capacity)]
    flow_keys: usize,
    /// Flow keys not seen for this long are forgotten.
    #[arg(long, default_value = "7d")]
    flow_retention: humantime::Duration,
    /// How often the flow record is saved under --state-dir (and at exit).
    #[arg(long, default_value = "1m")]
    flow_save_interval: humantime::Duration,
}

#[derive(Args)]
struct TraceArgs {
    /// Source: namespace/pod or an IP address.
    #[arg(long)]
    from: palisade::trace::EndpointRef,
    /// Destination: namespace/pod or an IP address.
    #[arg(long)]
    to: palisade::trace::EndpointRef,
    /// Destination port.
    #[arg(long)]
    port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    protocol: palisade::policy::model::Protocol,
    /// Use the pods' IPv6 addresses.
    #[arg(long)]
    ipv6: bool,
    /// Trace offline against the manifests in this directory instead of
    /// asking the running agent.
    #[arg(long)]
    cluster_state: Option<PathBuf>,
    /// With --cluster-state: the node the trace is evaluated for
    /// (default: each pod's own node).
    #[arg(long)]
    node_name: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
struct LintArgs {
    /// Lint the manifests in this directory instead of the Kubernetes API.
    #[arg(long)]
    cluster_state: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Exit 1 when a finding is at least this severe.
    #[arg(long, value_enum, default_value_t = palisade::lint::Severity::Error)]
    fail_on: palisade::lint::Severity,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Wait until the kernel holds the latest input (in_sync), then print.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30s")]
    timeout: humantime::Duration,
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
struct ObserveArgs {
    #[command(flatten)]
    filter: api::ObserveOptions,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Decode events without printing them; print the running count of
    /// events decoded every 100 ms instead (for benchmarks).
    #[arg(long, hide = true)]
    count: bool,
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// A mark bit, or 0 (off).
fn parse_mark_or_off(s: &str) -> Result<u32, String> {
    if s == "0" { Ok(0) } else { parse_mark(s) }
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))?;
    if v.count_ones() != 1 {
        return Err(format!("{s}: the mark must be a single bit"));
    }
    Ok(v)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() {
    if palisade::remote::cli::invoked_as_plugin() {
        // SAFETY: restoring the default disposition of SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        if let Err(e) = palisade::remote::cli::main().await {
            eprintln!("{}: {e:#}", palisade::remote::cli::PLUGIN_NAME);
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run(_)) {
        // A CLI piped into `head` should stop quietly, not panic.
        // SAFETY: restoring the default disposition of SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.cmd {
        Cmd::Run(a) => {
            init_logging(a.log_format == LogFormat::Json);
            run::run(run::Options {
                cluster_state: a.cluster_state,
                node_name: a.node_name.unwrap_or_else(run::hostname),
                bpffs: a.bpffs,
                socket: a.socket,
                audit: a.audit,
                allow_host: !a.deny_host,
                log_format: a.log_format,
                log_new_flows: a.log_new_flows,
                drop_event_interval: a.drop_event_interval.into(),
                drop_event_budget: a.drop_event_budget,
                event_buffer_bytes: a.event_buffer_bytes,
                defer_mark: a.defer_mark,
                judged_mark: a.judged_mark,
                strict_prefixes: a
                    .strict
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                host_interfaces: match a.host_interfaces.as_str() {
                    "all" => palisade::datapath::HostInterfaces::All,
                    list => palisade::datapath::HostInterfaces::Named(
                        list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
                    ),
                },
                resync: a.resync.into(),
                source: palisade::cluster::files::Options {
                    state_dir: Some(a.state_dir),
                    allow_insecure: a.allow_insecure_cluster_state,
                    allow_namespace_audit: a.allow_namespace_audit,
                },
                metrics_addr: match a.metrics_addr.as_str() {
                    "" => None,
                    s => match s.parse() {
                        Ok(addr) => Some(addr),
                        Err(e) => {
                            eprintln!("palisade: --metrics-addr {s}: {e}");
                            std::process::exit(2);
                        }
                    },
                },
                ui_addr: match a.ui_addr.as_str() {
                    "" => None,
                    s => match s
                        .parse()
                        .map_err(|e| format!("{e}"))
                        .and_then(|addr| palisade::ui::check_addr(addr, a.ui_allow_remote).map(|_| addr))
                    {
                        Ok(addr) => Some(addr),
                        Err(e) => {
                            eprintln!("palisade: --ui-addr {s}: {e}");
                            std::process::exit(2);
                        }
                    },
                },
                ui_allow_remote: a.ui_allow_remote,
                map_sizes: a.map_entries,
                interfaces_fault: a.test_fault_interfaces,
                allow_ipvs: a.allow_ipvs,
                flows: palisade::flows::Settings { capacity: a.flow_keys, retention: a.flow_retention.into() },
                flows_save_every: a.flow_save_interval.into(),
            })
            .await
        }
        Cmd::Status(a) => status(a).await,
        Cmd::Observe(a) => observe(a).await,
        Cmd::Trace(a) => trace(a).await,
        Cmd::Lint(a) => lint(a).await,
        Cmd::Flows(a) => palisade::advise::cli::flows(a).await,
        Cmd::Advise(a) => palisade::advise::cli::advise(a).await,
        Cmd::Uninstall { bpffs } => palisade::datapath::uninstall(&bpffs),
    };
    if let Err(e) = result {
        eprintln!("palisade: {e:#}");
        std::process::exit(1);
    }
}

async fn fetch_status(socket: &std::path::Path) -> Result<serde_json::Value> {
    let mut lines = api::request(socket, &Request::Status).await?;
    let line = lines.next_line().await?.context("the agent closed the connection")?;
    Ok(serde_json::from_str(&line)?)
}

async fn status(a: StatusArgs) -> Result<()> {
    let deadline = Instant::now() + Duration::from(a.timeout);
    let st = loop {
        let st = fetch_status(&a.socket).await;
        match st {
            Ok(st) if !a.wait || st["in_sync"] == true => break st,
            Err(e) if !a.wait => return Err(e),
            _ if Instant::now() >= deadline => bail!("not in sync after {}", a.timeout),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
        Output::Text => print_status(&st),
    }
    Ok(())
}

fn print_status(st: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "node {}  source {}  in sync: {}  applied at {}  revision {}",
        s(&st["node"]),
        s(&st["source"]),
        st["in_sync"],
        s(&st["applied_at"]),
        st["revision"]
    );
    println!();
    println!("{:<32} {:<16} {:<9} {:<8} {:<8} STATE", "POD", "INTERFACE", "IDENTITY", "INGRESS", "EGRESS");
    let iso = |v: &serde_json::Value| if v == true { "isolated" } else { "open" };
    for p in st["pods"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<16} {:<9} {:<8} {:<8} {}{}",
            format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
            s(&p["interface"]),
            p["identity"],
            iso(&p["ingress_isolated"]),
            iso(&p["egress_isolated"]),
            s(&p["state"]),
            if p["audit"] == true { " (audit)" } else { "" }
        );
    }
    let errors = st["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        println!("\ninvalid input:");
        for e in errors {
            println!(
                "  {}: {}: {}: {} ({})",
                s(&e["source"]),
                s(&e["object"]),
                s(&e["field"]),
                s(&e["message"]),
                s(&e["action"])
            );
        }
    }
    for e in st["sync_errors"].as_array().into_iter().flatten() {
        println!("sync error: {}", s(e));
    }
    if let Some(e) = st["interfaces_error"].as_str() {
        println!("interfaces: {e}");
    }
    if let Some(d) = st["drift"].as_str() {
        println!("drift: {d}");
    }
    for u in st["unavailable"].as_array().into_iter().flatten() {
        println!("unavailable: {}", s(u));
    }
    if let Some(c) = st["counters"].as_object() {
        let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("\ncounters: {}", parts.join(" "));
    }
}

async fn observe(a: ObserveArgs) -> Result<()> {
    let req = a.filter.request();
    let stream = api::observe(&a.socket, &req)?;
    let (output, count) = (a.output, a.count);
    tokio::task::spawn_blocking(move || decode_events(stream, output, count)).await?
}

/// Reads the agent's event frames; prints each event (JSON or text), or
/// only counts them.
fn decode_events(stream: std::os::unix::net::UnixStream, output: Output, count: bool) -> Result<()> {
    use palisade::events::wire::{self, Compact, Symbol, Table};
    use std::io::{BufWriter, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut r = std::io::BufReader::with_capacity(1 << 20, stream);
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout());
    let decoded = Arc::new(AtomicU64::new(0));
    if count {
        let d = decoded.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                println!("{}", d.load(Ordering::Relaxed));
            }
        });
    }
    let mut table = Table::default();
    let (mut header, mut buf) = ([0u8; wire::HEADER_LEN], Vec::new());
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        buf.resize(len, 0);
        r.read_exact(&mut buf)?;
        match header[0] {
            wire::TAG_SYMBOL if len >= 4 => {
                let id = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let sym: Symbol = serde_json::from_slice(&buf[4..]).context("a symbol frame")?;
                table.define(id, sym);
            }
            wire::TAG_EVENTS => {
                let mut n = 0u64;
                for rec in buf.chunks_exact(wire::RECORD_LEN) {
                    let c = Compact::decode(rec).context("an event record")?;
                    if !table.resolves(&c) {
                        bail!("an event names a symbol the agent never defined");
                    }
                    n += 1;
                    if count {
                        continue;
                    }
                    let ev = wire::to_event(&c, |id| table.get(id).cloned());
                    match output {
                        Output::Json => writeln!(out, "{}", serde_json::to_string(&ev)?)?,
                        Output::Text => writeln!(out, "{} {}", ev.time, ev)?,
                    }
                }
                decoded.fetch_add(n, Ordering::Relaxed);
            }
            wire::TAG_LAGGED if len >= 8 => {
                let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                writeln!(out, "{}", serde_json::json!({ "lagged": n }))?;
            }
            _ => {}
        }
        // Followers see each frame's events as soon as they arrive.
        if r.buffer().is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    if count {
        println!("{}", decoded.load(Ordering::Relaxed));
    }
    Ok(())
}

async fn trace(a: TraceArgs) -> Result<()> {
    let query = palisade::trace::Query { from: a.from, to: a.to, port: a.port, protocol: a.protocol, ipv6: a.ipv6 };
    let t = match &a.cluster_state {
        Some(dir) => {
            let snap = palisade::cluster::files::FileSource::new(dir).load();
            for e in &snap.errors {
                eprintln!("warning: {e}");
            }
            let node = palisade::policy::Node {
                name: a.node_name.clone().unwrap_or_else(run::hostname),
                host_ips: vec![],
                allow_host: true,
                audit: false,
            };
            palisade::trace::trace(&snap.input, &node, &query).map_err(anyhow::Error::msg)?
        }
        None => {
            let mut lines = api::request(&a.socket, &Request::Trace { query }).await?;
            let line = lines.next_line().await?.context("the agent closed the connection")?;
            let mut v: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                bail!("{e}");
            }
            serde_json::from_value(v["trace"].take())?
        }
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
        Output::Text => print!("{t}"),
    }
    Ok(())
}

/// Exit status: 0 clean, 1 findings at --fail-on or worse, 2 no state read.
async fn lint(a: LintArgs) -> Result<()> {
    let snap = match palisade::lint::load::load(a.cluster_state.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            std::process::exit(2);
        }
    };
    let report = palisade::lint::lint(&snap);
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{report}"),
    }
    if report.fails(a.fail_on) {
        std::process::exit(1);
    }
    Ok(())
}
