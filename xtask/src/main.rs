//! palisade's task runner: `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`). Each subcommand is a function below; shared
//! plumbing (command runner, step timing) is in `util`, prerequisite
//! installation in `setup`.

mod bench;
mod kind;
mod setup;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use util::{Steps, cargo, is_root, run, target_dir};

#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "palisade development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites (Debian packages, nightly rust-src,
    /// bpf-linker); quick no-op when everything is present.
    Setup,
    /// Build the `palisade` agent (and, through its build script, the eBPF
    /// classifier).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// The kubectl plugin: builds palisade (release) and installs it as
    /// `kubectl-palisade` in DIR, for `kubectl palisade` on PATH.
    Plugin {
        /// Where to put `kubectl-palisade` (default: ~/.local/bin).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The full test suite: unit and property tests, then the privileged
    /// end-to-end tests (needs root).
    Test {
        /// Passed to the end-to-end test binaries, e.g. a test-name filter.
        #[arg(last = true)]
        e2e_args: Vec<String>,
    },
    /// rustfmt check and clippy (-D warnings) for the workspace and the eBPF
    /// crate.
    Lint,
    /// What CI runs: setup, lint, test.
    Ci,
    /// Benchmarks: verdict latency, throughput against iptables and
    /// nftables, policy programming latency, event throughput (needs root).
    /// Writes bench/results/report.md, report.json and plots (--quick: under
    /// bench/results/quick/).
    Bench {
        /// A short run (under two minutes).
        #[arg(long)]
        quick: bool,
        /// CI's smoke run: the quick run on the test build (dev profile),
        /// which proves the benchmarks still run without a release build
        /// of everything (12 minutes on 2 cores); its figures are not
        /// palisade's, and the report says so.
        #[arg(long)]
        smoke: bool,
    },
    /// palisade in a kind cluster: builds the image, creates the cluster
    /// (deploy/kind.yaml), installs deploy/, and checks the upstream-style
    /// x/y/z reachability matrices (needs Docker, kind and kubectl).
    KindE2e(kind::Options),
    /// The demo: pods in network namespaces, a deny-by-default policy set,
    /// live traffic and palisade's verdicts streaming (needs root).
    Demo {
        /// Stop after this many traffic rounds instead of at Ctrl-C.
        #[arg(long)]
        rounds: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors are printed here rather than returned from main, so that a
    // RUST_BACKTRACE in the environment does not bury them in a backtrace.
    match util::init_env().and_then(|()| dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup_task(),
        Task::Build { release } => build(release),
        Task::Plugin { dir } => plugin(dir),
        Task::Test { e2e_args } => with_summary(|steps| test(steps, &e2e_args)),
        Task::Lint => with_summary(lint),
        Task::Demo { rounds } => demo(rounds),
        Task::Bench { quick, smoke } => bench::run(quick || smoke, smoke),
        Task::KindE2e(opts) => kind::run(opts),
        Task::Ci => with_summary(|steps| {
            require_root()?;
            lint(steps)?;
            test(steps, &[])
        }),
    }
}

/// Runs `f` with a step timer and prints the summary whether or not it
/// succeeded.
fn with_summary(f: impl FnOnce(&mut Steps) -> Result<()>) -> Result<()> {
    let mut steps = Steps::default();
    let result = f(&mut steps);
    steps.print_summary();
    result
}

fn setup_task() -> Result<()> {
    eprintln!("checking prerequisites:");
    setup::setup()
}

fn build(release: bool) -> Result<()> {
    setup_task()?;
    let mut c = cargo();
    c.args(["build", "-p", "palisade"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    let profile = if release { "release" } else { "debug" };
    eprintln!("built {}", target_dir().join(profile).join("palisade").display());
    Ok(())
}

/// The plugin is the palisade binary under another name (it dispatches on
/// argv[0]): a copy, so rebuilding the target does not break it.
fn plugin(dir: Option<PathBuf>) -> Result<()> {
    build(true)?;
    let dir = match dir {
        Some(d) => d,
        None => {
            PathBuf::from(std::env::var("HOME").map_err(|_| anyhow::anyhow!("no HOME: pass --dir"))?).join(".local/bin")
        }
    };
    std::fs::create_dir_all(&dir)?;
    let to = dir.join("kubectl-palisade");
    let tmp = dir.join(".kubectl-palisade.tmp");
    std::fs::copy(target_dir().join("release").join("palisade"), &tmp)?;
    std::fs::rename(&tmp, &to)?;
    eprintln!("installed {} (kubectl palisade, if {} is on PATH)", to.display(), dir.display());
    Ok(())
}

/// Path of the debug agent binary the end-to-end tests run.
fn agent_bin() -> PathBuf {
    target_dir().join("debug").join("palisade")
}

/// The end-to-end tests are part of the suite and are never skipped
/// silently: without root, fail before spending minutes on anything else.
fn require_root() -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` includes the privileged end-to-end tests (network namespaces, \
             eBPF, TC), which need root. Run it as root, e.g.\n    \
             sudo -E env \"PATH=$PATH\" cargo xtask test\n\
             For the unprivileged unit and property tests only:\n    \
             cargo test --workspace --exclude palisade-e2e --exclude palisade-ebpf"
        );
    }
    Ok(())
}

fn test(steps: &mut Steps, e2e_args: &[String]) -> Result<()> {
    require_root()?;
    steps.setup_once(setup_task)?;
    // palisade-ebpf is excluded as well: it is a `no_std`/`no_main` BPF
    // program that cannot link as a host test binary (`--workspace` would
    // otherwise include this non-default member).
    steps.run("unit + property tests", || {
        run(cargo().args(["test", "--workspace", "--exclude", "palisade-e2e", "--exclude", "palisade-ebpf"]))
    })?;
    steps.run("build agent", || run(cargo().args(["build", "-p", "palisade"])))?;
    let bin = agent_bin();
    if !bin.is_file() {
        bail!("agent binary not found at {} after build", bin.display());
    }
    steps.run("end-to-end tests", || {
        run(cargo()
            .env("PALISADE_BIN", &bin)
            .args(["test", "-p", "palisade-e2e", "--", "--test-threads=1"])
            .args(e2e_args))
    })
}

fn demo(rounds: Option<u32>) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    setup_task()?;
    run(cargo().args(["build", "-p", "palisade", "-p", "palisade-e2e", "--bin", "palisade-demo"]))?;
    let mut cmd = std::process::Command::new(target_dir().join("debug").join("palisade-demo"));
    cmd.env("PALISADE_BIN", agent_bin());
    if let Some(n) = rounds {
        cmd.args(["--rounds", &n.to_string()]);
    }
    run(&mut cmd)
}

fn lint(steps: &mut Steps) -> Result<()> {
    steps.setup_once(setup_task)?;
    // Run every linter, then report all failures together.
    let mut failed = Vec::new();
    let mut check = |steps: &mut Steps, name: &'static str, f: &dyn Fn() -> Result<()>| {
        if let Err(e) = steps.run(name, f) {
            eprintln!("{name}: {e:#}");
            failed.push(name);
        }
    };
    check(steps, "rustfmt", &|| run(cargo().args(["fmt", "--all", "--", "--check"])));
    // Not AYA_BUILD_SKIP: the agent include_bytes!es the eBPF object, so its
    // build script must really build it for clippy to get through.
    check(steps, "clippy (workspace)", &|| {
        run(cargo().args(["clippy", "--workspace", "--exclude", "palisade-ebpf"]).args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    // The classifier only compiles for the BPF target, with nightly and a
    // rebuilt core, exactly as aya-build compiles it.
    check(steps, "clippy (eBPF, nightly)", &|| {
        run(cargo()
            .args(["+nightly", "clippy", "-p", "palisade-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--release", "--", "-D", "warnings"]))
    });
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}
