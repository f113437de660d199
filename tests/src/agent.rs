//! The agent under test: the real `palisade` binary, run against a
//! directory of manifests, with its own bpffs directory and socket. Stopped
//! and uninstalled on drop, so a failed test leaves nothing pinned.

use anyhow::{Context, Result, bail};
use palisade::api::{self, Request};
use palisade::events::VerdictEvent;
use palisade::trace::{EndpointRef, Query, Trace};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The palisade binary: $PALISADE_BIN, or next to the test binary's
/// target directory.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("PALISADE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/palisade
    exe.parent().and_then(Path::parent).map(|d| d.join("palisade")).expect("target dir")
}

pub struct Agent {
    /// Manifests the agent watches (unless it reads a Kubernetes API).
    pub state_dir: PathBuf,
    /// When set, the agent reads this API server (KUBECONFIG) instead of
    /// `state_dir`.
    pub kubeconfig: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    work: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    pidfile: PathBuf,
}

impl Agent {
    /// Starts an agent named `tag` with extra `palisade run` arguments.
    pub fn start(tag: &str, node: &str, extra: &[&str]) -> Result<Agent> {
        Agent::start_with(tag, node, None, extra)
    }

    /// Starts an agent that reads the Kubernetes API at `kubeconfig`.
    pub fn start_kube(tag: &str, node: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Agent> {
        Agent::start_with(tag, node, Some(kubeconfig.to_path_buf()), extra)
    }

    fn start_with(tag: &str, node: &str, kubeconfig: Option<PathBuf>, extra: &[&str]) -> Result<Agent> {
        // An agent left running by a test run that was killed would fight
        // this one over the same interfaces.
        let pidfile = std::env::temp_dir().join(format!("palisade-e2e-{tag}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            // SAFETY: signalling a process id; at worst it no longer exists.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let work = std::env::temp_dir().join(format!("palisade-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let state_dir = work.join("state");
        std::fs::create_dir_all(&state_dir)?;
        let mut agent = Agent {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/palisade-e2e-{tag}")),
            socket: work.join("palisade.sock"),
            stdout: work.join("agent.out"),
            stderr: work.join("agent.err"),
            state_dir,
            kubeconfig,
            work,
            child: None,
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            pidfile,
        };
        let _ = Command::new(binary()).args(["uninstall", "--bpffs"]).arg(&agent.bpffs).status();
        agent.spawn(node, extra)?;
        Ok(agent)
    }

    /// (Re)starts the agent process on the same state, bpffs and socket.
    pub fn spawn(&mut self, node: &str, extra: &[&str]) -> Result<()> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.stdout)?;
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr)?;
        let mut cmd = Command::new(binary());
        cmd.arg("run");
        match &self.kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            None => cmd.arg("--cluster-state").arg(&self.state_dir),
        };
        let child = cmd
            .args(["--node-name", node, "--bpffs"])
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.socket)
            .args(if extra.contains(&"--metrics-addr") { &[][..] } else { &["--metrics-addr", ""][..] })
            // Saved copies of the manifests live and die with the test.
            .arg("--state-dir")
            .arg(self.work.join("saved"))
            .args(extra)
            .env("RUST_LOG", std::env::var("PALISADE_E2E_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        std::fs::write(&self.pidfile, child.id().to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status().is_err() {
            if let Some(Ok(Some(code))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("agent exited with {code}:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("agent did not come up:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the agent process (like a crash or OOM kill).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes a manifest file atomically (write, then rename).
    pub fn apply(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.work.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.state_dir.join(file))?;
        Ok(())
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        let p = self.state_dir.join(file);
        if p.exists() {
            std::fs::remove_file(p)?;
        }
        Ok(())
    }

    /// Removes every manifest whose name starts with `prefix`.
    pub fn remove_prefixed(&self, prefix: &str) -> Result<()> {
        for e in std::fs::read_dir(&self.state_dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(binary()).args(args).arg("--socket").arg(&self.socket).output()?;
        if !out.status.success() {
            bail!("palisade {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "-o", "json"])?)?)
    }

    /// Waits until the kernel holds the latest manifests.
    pub fn wait_in_sync(&self) -> Result<Value> {
        let st: Value = serde_json::from_str(&self.cli(&["status", "--wait", "--timeout", "20s", "-o", "json"])?)?;
        Ok(st)
    }

    /// Past events from the agent's history (newest last).
    pub fn events(&self, extra: &[&str]) -> Result<Vec<VerdictEvent>> {
        let mut args = vec!["observe", "--no-follow", "-o", "json"];
        if !extra.contains(&"--last") {
            args.extend_from_slice(&["--last", "100000"]);
        }
        args.extend_from_slice(extra);
        let out = self.cli(&args)?;
        out.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
    }

    /// Asks the running agent to trace a connection (the local API, as
    /// `palisade trace` does).
    pub fn trace(&self, from: &str, to: &str, port: u16, protocol: &str, ipv6: bool) -> Result<Trace> {
        let query = Query {
            from: from.parse::<EndpointRef>().map_err(anyhow::Error::msg)?,
            to: to.parse::<EndpointRef>().map_err(anyhow::Error::msg)?,
            port,
            protocol: protocol.parse().map_err(anyhow::Error::msg)?,
            ipv6,
        };
        self.rt.block_on(async {
            let mut lines = api::request(&self.socket, &Request::Trace { query }).await?;
            let line = lines.next_line().await?.context("no reply")?;
            let mut v: Value = serde_json::from_str(&line)?;
            if let Some(e) = v.get("error") {
                bail!("trace {from} -> {to}: {e}");
            }
            Ok(serde_json::from_value(v["trace"].take())?)
        })
    }

    /// CPU time the agent process has used (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.child.as_ref().context("agent not running")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
        // SAFETY: sysconf has no preconditions.
        Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
    }

    pub fn log_tail(&self) -> String {
        let tail = |p: &Path| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!("--- stderr ---\n{}\n--- stdout ---\n{}", tail(&self.stderr), tail(&self.stdout))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new(binary()).args(["uninstall", "--bpffs"]).arg(&self.bpffs).status();
        let _ = std::fs::remove_dir_all(&self.work);
        let _ = std::fs::remove_file(&self.pidfile);
    }
}
