//! The agent under test: the real `palisade` binary, run against a
//! directory of manifests or an API server, with its own bpffs directory and
//! socket, on this host or inside a node's network namespace. Stopped and
//! uninstalled on drop, so a failed test leaves nothing pinned.

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
    /// The network namespace the process runs in (None: the caller's).
    pub netns: Option<String>,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The agent's `--state-dir` (its saved copies of the manifests);
    /// removed with the agent.
    pub saved_dir: PathBuf,
    work: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    pidfile: PathBuf,
}

impl Agent {
    /// Starts an agent named `tag` with extra `palisade run` arguments.
    pub fn start(tag: &str, node: &str, extra: &[&str]) -> Result<Agent> {
        Agent::start_with(tag, node, None, None, extra)
    }

    /// Starts an agent that reads the Kubernetes API at `kubeconfig`.
    pub fn start_kube(tag: &str, node: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Agent> {
        Agent::start_with(tag, node, Some(kubeconfig.to_path_buf()), None, extra)
    }

    /// Starts an agent inside the network namespace `netns` (a node) that
    /// reads the Kubernetes API at `kubeconfig`. It enters the namespace
    /// with setns before exec, not `ip netns exec`, which would remount
    /// /sys and hide the bpffs under it.
    pub fn start_in(tag: &str, node: &str, netns: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Agent> {
        Agent::start_with(tag, node, Some(kubeconfig.to_path_buf()), Some(netns.to_string()), extra)
    }

    fn start_with(
        tag: &str,
        node: &str,
        kubeconfig: Option<PathBuf>,
        netns: Option<String>,
        extra: &[&str],
    ) -> Result<Agent> {
        let mut agent = Agent::prepare(tag)?;
        agent.kubeconfig = kubeconfig;
        agent.netns = netns;
        agent.spawn(node, extra)?;
        Ok(agent)
    }

    /// An agent named `tag`, not started: its state directory is empty and
    /// nothing is pinned. For callers that set it up (manifests, `netns`,
    /// `stdout`) before [`Agent::spawn`].
    pub fn prepare(tag: &str) -> Result<Agent> {
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
        let agent = Agent {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/palisade-e2e-{tag}")),
            socket: work.join("palisade.sock"),
            stdout: work.join("agent.out"),
            stderr: work.join("agent.err"),
            state_dir,
            saved_dir: work.join("saved"),
            kubeconfig: None,
            netns: None,
            work,
            child: None,
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            pidfile,
        };
        let _ = Command::new(binary()).args(["uninstall", "--bpffs"]).arg(&agent.bpffs).status();
        Ok(agent)
    }

    /// (Re)starts the agent process on the same state, bpffs and socket.
    pub fn spawn(&mut self, node: &str, extra: &[&str]) -> Result<()> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.stdout)?;
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr)?;
        let mut cmd = match &self.netns {
            Some(ns) => crate::netns::command_in(ns, &binary())?,
            None => Command::new(binary()),
        };
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
            .arg(&self.saved_dir)
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

    /// SIGTERM, and SIGKILL if it has not exited within 10 s (a clean
    /// stop: enforcement stays pinned).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes a manifest file atomically (write, then rename).
    pub fn apply(&self, file: &str, yaml: &str) -> Result<()> {
        self.apply_at(file, yaml).map(drop)
    }

    /// Like [`Agent::apply`]; returns the instant just before the rename,
    /// which is when the change happened as far as the agent can know.
    pub fn apply_at(&self, file: &str, text: &str) -> Result<Instant> {
        let tmp = self.work.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        let t = Instant::now();
        std::fs::rename(&tmp, self.state_dir.join(file))?;
        Ok(t)
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
        self.remove_prefixed_except(prefix, &[])
    }

    /// Removes every manifest whose name starts with `prefix`, but those in
    /// `keep`.
    pub fn remove_prefixed_except(&self, prefix: &str, keep: &[String]) -> Result<()> {
        for e in std::fs::read_dir(&self.state_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && !keep.contains(&name) {
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
        self.wait_in_sync_for(Duration::from_secs(20))
    }

    /// [`Agent::wait_in_sync`], waiting up to `timeout`.
    pub fn wait_in_sync_for(&self, timeout: Duration) -> Result<Value> {
        let t = format!("{}ms", timeout.as_millis());
        Ok(serde_json::from_str(&self.cli(&["status", "--wait", "--timeout", &t, "-o", "json"])?)?)
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
        cpu_seconds_of(self.pid().context("agent not running")?)
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
        let _ = std::fs::remove_dir_all(&self.saved_dir);
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// CPU time process `pid` has used (user + system), in seconds.
pub fn cpu_seconds_of(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// Checks `palisade trace` of one pair, asked of the agent at each end
/// (the same trace twice when both ends share a node), against the real
/// verdict `allowed`: each end's agent checked in its kernel the side it
/// enforces, and every kernel check agrees with the compiled rules.
pub fn trace_agrees(at_source: &Trace, at_destination: &Trace, allowed: bool, what: &str) -> Result<()> {
    let enforced = at_source.egress.kernel.is_some() && at_destination.ingress.kernel.is_some();
    for t in [at_source, at_destination] {
        let sides = [&t.egress, &t.ingress];
        let kernel_agrees = sides.iter().filter_map(|s| s.kernel.as_ref()).all(|k| k.differences.is_empty());
        if t.allowed != allowed || !kernel_agrees || !enforced {
            anyhow::bail!("trace disagrees with the real verdict for {what}:\n{t}");
        }
    }
    Ok(())
}
