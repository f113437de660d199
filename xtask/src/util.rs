//! Small helpers shared by every subcommand: locating the workspace,
//! running commands, timing steps.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set (made absolute by
/// [`init_env`]), otherwise `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target"),
    }
}

/// `$CARGO_HOME`, defaulting to `~/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")),
    }
}

/// Prepares the environment every child process inherits:
/// - `$CARGO_HOME/bin` goes first on `PATH`, so a freshly `cargo install`ed
///   bpf-linker is found (also by aya-build inside the agent's build script);
/// - a relative `CARGO_TARGET_DIR` is made absolute, since children run from
///   the workspace root rather than the caller's directory.
pub fn init_env() -> Result<()> {
    if let Some(bin) = cargo_home().map(|home| home.join("bin")) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if !std::env::split_paths(&path).any(|p| p == bin) {
            let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
                .context("building PATH")?;
            // SAFETY: called first thing in main, before any thread exists.
            unsafe { std::env::set_var("PATH", joined) };
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_relative() {
            let abs = std::env::current_dir().context("reading the current directory")?.join(dir);
            // SAFETY: called first thing in main, before any thread exists.
            unsafe { std::env::set_var("CARGO_TARGET_DIR", abs) };
        }
    }
    Ok(())
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// A `Command` for `program` that runs from the workspace root.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c
}

/// A `cargo` command (the rustup proxy on `PATH`, so `+nightly` works)
/// running from the workspace root.
pub fn cargo() -> Command {
    cmd("cargo")
}

/// The command line as a shell-like string, with the variables set on it.
pub fn render(c: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in c.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(&value.to_string_lossy())));
        }
    }
    parts.push(quote(&c.get_program().to_string_lossy()));
    parts.extend(c.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_./=+:,@%^".contains(ch));
    if plain { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// Echoes the command, runs it with inherited stdio, and fails (naming the
/// command) unless it exits successfully.
pub fn run(c: &mut Command) -> Result<()> {
    let line = render(c);
    eprintln!("$ {line}");
    let status = c
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a probe quietly and returns its stdout, or `None` if it could not
/// start or exited unsuccessfully.
pub fn probe(c: &mut Command) -> Option<String> {
    let out = c.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Times named steps and prints a summary.
#[derive(Default)]
pub struct Steps {
    done: Vec<(String, Duration, bool)>,
    setup_done: bool,
}

impl Steps {
    /// Runs the `setup` step unless it already ran (`ci` = lint + test).
    pub fn setup_once(&mut self, setup: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.setup_done {
            return Ok(());
        }
        self.run("setup", setup)?;
        self.setup_done = true;
        Ok(())
    }

    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        eprintln!("\n==> {name}");
        let start = Instant::now();
        let result = f();
        self.done.push((name.to_string(), start.elapsed(), result.is_ok()));
        result.with_context(|| format!("step `{name}` failed"))
    }

    pub fn print_summary(&self) {
        if self.done.is_empty() {
            return;
        }
        let width = self.done.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
        let total: Duration = self.done.iter().map(|(_, d, _)| *d).sum();
        eprintln!("\nsummary:");
        for (name, took, ok) in &self.done {
            let verdict = if *ok { "ok" } else { "FAILED" };
            eprintln!("  {name:<width$}  {verdict:<6}  {}", fmt_duration(*took));
        }
        eprintln!("  {:<width$}          {}", "total", fmt_duration(total));
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 { format!("{secs:.1}s") } else { format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60) }
}
