//! The benchmark's world: one network namespace standing in for the node
//! (nothing in it reaches the machine's real network), pods as namespaces
//! wired to it over veths with /32 and /128 host routes (ptp CNI style,
//! the e2e kit's wiring), CPU pinning, and a cleanup registry that removes
//! everything on success, failure and Ctrl-C alike. The agent process is
//! the e2e kit's too (see [`crate::agent`]).

use anyhow::Result;
use palisade_e2e::netns::{enter, ip, ip_batch, sysctl_in};
use palisade_e2e::pods::wire;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
/// Prefix of the benchmark's agent names (the e2e kit's agent pins under
/// /sys/fs/bpf/palisade-e2e-<name>).
pub const AGENT_TAG_PREFIX: &str = "bench-";
/// Prefix of the bpffs directories the benchmark pins under.
pub const BPFFS_PREFIX: &str = "/sys/fs/bpf/palisade-e2e-bench-";
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

/// Where the benchmark's files go (its manifests, the agents' working
/// directories; not the agents' saved copies, see [`disk_dir`]): tmpfs
/// when `/dev/shm` is one. On a disk a manifest's write and rename took
/// about 0.5 ms on the machine this was built on, so the burst's 1,000
/// files took 0.4-1.1 s to write by themselves, and every change began
/// with a disk's rename; an API server hands an agent its changes without
/// a disk in the way.
pub fn scratch() -> Option<PathBuf> {
    const SHM: &str = "/dev/shm";
    let c = std::ffi::CString::new(SHM).ok()?;
    // SAFETY: a valid C string and a zeroed statfs for the call to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut fs) } == 0;
    (ok && fs.f_type == libc::TMPFS_MAGIC).then(|| PathBuf::from(SHM))
}

/// A directory on disk (the machine's temporary directory for files kept
/// across reboots, whatever `TMPDIR` says).
pub fn disk_dir() -> PathBuf {
    PathBuf::from("/var/tmp")
}

/// Removes what an earlier, killed run may have left: its processes (by
/// the pids it recorded), namespaces named `plb-*`, pins under our prefix,
/// its files (which may hold memory, on tmpfs).
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
    // After the kill: a leftover agent would still write into its directory.
    for dir in [std::env::temp_dir(), disk_dir()] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("palisade-bench-") || name.starts_with(&format!("palisade-e2e-{AGENT_TAG_PREFIX}")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
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

pub use palisade_e2e::netns::command_in;

/// CPU time a process has used (user + system), seconds.
pub fn cpu_seconds_of(pid: i32) -> Option<f64> {
    palisade_e2e::agent::cpu_seconds_of(u32::try_from(pid).ok()?).ok()
}
