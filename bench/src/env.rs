//! The benchmark's world: one network namespace standing in for the node
//! (nothing in it reaches the machine's real network), pods as namespaces
//! wired to it over veths with /32 and /128 host routes (ptp CNI style),
//! the agent process, CPU pinning, and a cleanup registry that removes
//! everything on success, failure and Ctrl-C alike.

use anyhow::{Context, Result, bail};
use palisade_e2e::netns::{enter, ip, ip_batch, sysctl_in};
use palisade_e2e::pods::wire;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Everything that must go when the run ends, however it ends.
#[derive(Default)]
struct Registry {
    netns: BTreeSet<String>,
    pids: BTreeSet<i32>,
    bpffs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { netns: BTreeSet::new(), pids: BTreeSet::new(), bpffs: BTreeSet::new() });

/// Prefix of every namespace and interface the benchmark creates.
pub const PREFIX: &str = "plb";
/// Prefix of the bpffs directories the benchmark pins under.
pub const BPFFS_PREFIX: &str = "/sys/fs/bpf/palisade-bench-";
const PIDFILE: &str = "/tmp/palisade-bench.pids";

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn save_pids(r: &Registry) {
    let s: Vec<String> = r.pids.iter().map(|p| p.to_string()).collect();
    let _ = std::fs::write(PIDFILE, s.join("\n"));
}

pub fn track_pid(pid: i32) {
    let mut r = registry();
    r.pids.insert(pid);
    save_pids(&r);
}

pub fn untrack_pid(pid: i32) {
    let mut r = registry();
    r.pids.remove(&pid);
    save_pids(&r);
}

pub fn track_bpffs(p: &Path) {
    registry().bpffs.insert(p.to_path_buf());
}

/// Removes what an earlier, killed run may have left: its processes (by
/// the pids it recorded), namespaces named `plb-*`, pins under our prefix.
pub fn clean_leftovers(palisade: &Path) {
    if let Ok(s) = std::fs::read_to_string(PIDFILE) {
        for pid in s.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // Only if it still is one of ours (a palisade or iperf3 process).
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if ["palisade", "iperf3"].contains(&comm.trim()) {
                // SAFETY: signalling a process id we started earlier.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(PIDFILE);
    }
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("{PREFIX}-")) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let p = e.path();
            if p.to_string_lossy().starts_with(BPFFS_PREFIX) {
                let _ = Command::new(palisade).arg("uninstall").arg("--bpffs").arg(&p).status();
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

/// Tears down everything still registered (Ctrl-C, errors, the end).
pub fn cleanup_all() {
    let r = std::mem::take(&mut *registry());
    for pid in &r.pids {
        // SAFETY: signalling processes this run started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(PIDFILE);
    for ns in r.netns.iter().rev() {
        let _ = ip(&["netns", "del", ns]);
    }
    for p in &r.bpffs {
        let _ = palisade::datapath::uninstall(p);
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; we set one bit and apply it to
    // the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on a new thread inside namespace `ns`, pinned to `cpu`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    cpu: Option<usize>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns)?;
        if let Some(c) = cpu {
            pin_to(c);
        }
        Ok(f())
    })
}

/// Runs `f` inside namespace `ns` (pinned to `cpu`) and waits for it.
pub fn run_in<T: Send + 'static>(ns: &str, cpu: Option<usize>, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in(ns, cpu, f).join().map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

fn netns_add(name: &str) -> Result<()> {
    let _ = ip(&["netns", "del", name]);
    ip(&["netns", "add", name])?;
    registry().netns.insert(name.to_string());
    Ok(())
}

fn netns_del(name: &str) {
    let _ = ip(&["netns", "del", name]);
    registry().netns.remove(name);
}

/// The node: a namespace of its own, with forwarding on. Deleted on drop
/// (its veths, routes, iptables rules, ipsets and nftables tables go with it).
pub struct Node {
    pub netns: String,
}

impl Node {
    pub fn create(tag: &str) -> Result<Node> {
        let netns = format!("{PREFIX}-node-{tag}");
        netns_add(&netns)?;
        // The pods' gateway address is the node's own (on lo), so the node
        // answers their ARP for it on every veth.
        ip_batch(Some(&netns), &["link set lo up".to_string(), "addr add 169.254.1.1/32 dev lo".to_string()])?;
        sysctl_in(Some(&netns), "net.ipv4.ip_forward", "1")?;
        sysctl_in(Some(&netns), "net.ipv6.conf.all.forwarding", "1")?;
        Ok(Node { netns })
    }

    /// Index of an interface in the node's namespace.
    pub fn ifindex(&self, name: &str) -> Result<u32> {
        let name = name.to_string();
        run_in(&self.netns, None, move || {
            let c = std::ffi::CString::new(name.clone()).expect("interface name");
            // SAFETY: c is a valid NUL-terminated string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if i == 0 { Err(anyhow::anyhow!("no interface {name}")) } else { Ok(i) }
        })?
    }

    /// A veth pair inside the node with no pod behind it (left down).
    pub fn spare_veth(&self, name: &str) -> Result<u32> {
        ip_batch(Some(&self.netns), &[format!("link add {name} type veth peer name {name}p")])?;
        self.ifindex(name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        netns_del(&self.netns);
    }
}

/// A pod: a namespace behind a veth whose host side is in the node.
pub struct Pod {
    pub netns: String,
    pub host_if: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

impl Pod {
    pub fn create(node: &Node, name: &str, ip4: Ipv4Addr, ip6: Ipv6Addr) -> Result<Pod> {
        let netns = format!("{PREFIX}-{name}");
        let host_if = format!("{PREFIX}{name}");
        netns_add(&netns)?;
        wire(Some(&node.netns), &netns, &host_if, ip4, ip6)?;
        Ok(Pod { netns, host_if, ip4, ip6 })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        netns_del(&self.netns);
    }
}

/// Runs a command inside a namespace (keeping this mount namespace, unlike
/// `ip netns exec`), returning the child.
pub fn command_in(netns: &str, program: &Path) -> Result<Command> {
    let f = std::fs::File::open(format!("/var/run/netns/{netns}")).with_context(|| format!("netns {netns}"))?;
    let mut c = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd stays open in the child
    // until exec (the File lives in the closure).
    unsafe {
        c.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

/// A `palisade run` process inside the node.
pub struct Agent {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Prepares (does not start) an agent over `state_dir`.
    pub fn new(bin: &Path, work: &Path, tag: &str) -> Result<Agent> {
        let bpffs = PathBuf::from(format!("{BPFFS_PREFIX}{tag}"));
        track_bpffs(&bpffs);
        let _ = palisade::datapath::uninstall(&bpffs);
        let state_dir = work.join(format!("state-{tag}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir)?;
        Ok(Agent {
            bin: bin.to_path_buf(),
            socket: work.join(format!("agent-{tag}.sock")),
            log: work.join(format!("agent-{tag}.log")),
            state_dir,
            bpffs,
            child: None,
        })
    }

    /// Starts the process; returns once its API answers (not once in sync).
    pub fn start(&mut self, node: &Node, extra: &[&str]) -> Result<Instant> {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut c = command_in(&node.netns, &self.bin)?;
        c.arg("run")
            .arg("--cluster-state")
            .arg(&self.state_dir)
            .args(["--node-name", crate::cluster::NODE, "--bpffs"])
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--metrics-addr", ""])
            .args(extra)
            .env("RUST_LOG", "info")
            // Verdict lines go nowhere: a container runtime would take them
            // from a pipe; here their cost is the write, not the storage.
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        let started = Instant::now();
        let child = c.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        track_pid(child.id() as i32);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status().is_err() {
            if let Some(Ok(Some(code))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("agent exited with {code}:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("agent did not come up:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(started)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGTERM and wait: enforcement stays pinned.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            untrack_pid(c.id() as i32);
        }
    }

    /// Stops the agent and removes everything it pinned.
    pub fn uninstall(&mut self) {
        self.stop();
        let _ = palisade::datapath::uninstall(&self.bpffs);
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin).args(args).arg("--socket").arg(&self.socket).output()?;
        if !out.status.success() {
            bail!("palisade {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "-o", "json"])?)?)
    }

    /// Waits until the kernel holds the latest manifests.
    pub fn wait_in_sync(&self, timeout: Duration) -> Result<Value> {
        let t = format!("{}ms", timeout.as_millis());
        let st: Value = serde_json::from_str(&self.cli(&["status", "--wait", "--timeout", &t, "-o", "json"])?)?;
        let enforced = st["pods"].as_array().map(|p| p.iter().all(|p| p["state"] == "enforced")).unwrap_or(false);
        if !enforced {
            bail!("not every local pod is enforced: {}", st["pods"]);
        }
        Ok(st)
    }

    /// Writes a manifest file atomically (write aside, then rename); returns
    /// the instant just before the rename.
    pub fn apply(&self, file: &str, value: &Value) -> Result<Instant> {
        let tmp = self.state_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(value)?)?;
        let t = Instant::now();
        std::fs::rename(&tmp, self.state_dir.join(file))?;
        Ok(t)
    }

    pub fn remove(&self, file: &str) -> Result<Instant> {
        let t = Instant::now();
        std::fs::remove_file(self.state_dir.join(file))?;
        Ok(t)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Peak resident memory, bytes.
    pub fn hwm(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Kernel memory of the BPF maps the agent holds (sum of `memlock` over
    /// its map file descriptors), bytes.
    pub fn map_memory(&self) -> Option<u64> {
        map_memory_of(self.pid()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.uninstall();
    }
}

pub fn map_memory_of(pid: i32) -> Option<u64> {
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
        let Ok(s) = std::fs::read_to_string(e.path()) else { continue };
        let field = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
        if let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:"))
            && seen.insert(id)
        {
            total += mem.parse::<u64>().unwrap_or(0);
        }
    }
    Some(total)
}

pub fn cpu_seconds_of(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}
