//! The agent under measurement: the e2e kit's agent process
//! (`palisade_e2e::agent::Agent`) run inside the bench node's namespace,
//! with its verdict lines discarded, plus what the benchmark reads off it.
//! Registered with [`crate::env`] so Ctrl-C and errors take it down too.

use crate::cluster;
use crate::env::{self, Node};
use anyhow::{Result, bail};
use serde_json::Value;
use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Agent(palisade_e2e::agent::Agent);

impl Deref for Agent {
    type Target = palisade_e2e::agent::Agent;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Agent {
    /// Prepares (does not start) an agent named `tag` inside `node`.
    pub fn new(node: &Node, tag: &str) -> Result<Agent> {
        let mut a = palisade_e2e::agent::Agent::prepare(&format!("{}{tag}", env::AGENT_TAG_PREFIX))?;
        a.netns = Some(node.netns.clone());
        // Verdict lines go nowhere: a container runtime would take them
        // from a pipe; here their cost is the write, not the storage.
        a.stdout = PathBuf::from("/dev/null");
        // The agent's own saved copies stay on disk, where a node keeps them
        // (their one sync per burst is the agent's cost); only the
        // manifests, the stand-in for an API server, go on tmpfs.
        a.saved_dir = env::disk_dir().join(format!("palisade-bench-saved-{tag}-{}", std::process::id()));
        env::track_bpffs(&a.bpffs);
        Ok(Agent(a))
    }

    /// Starts the process; returns when it was started, once its API
    /// answers (not once in sync).
    pub fn start(&mut self, extra: &[&str]) -> Result<Instant> {
        let started = Instant::now();
        let spawned = self.0.spawn(cluster::NODE, extra);
        if let Some(pid) = self.0.pid() {
            env::track_pid(pid as i32);
        }
        spawned.map(|()| started)
    }

    /// Waits until the kernel holds the latest manifests and every local
    /// pod is enforced.
    pub fn wait_in_sync(&self, timeout: Duration) -> Result<Value> {
        let st = self.0.wait_in_sync_for(timeout)?;
        let enforced = st["pods"].as_array().is_some_and(|p| p.iter().all(|p| p["state"] == "enforced"));
        if !enforced {
            bail!("not every local pod is enforced: {}", st["pods"]);
        }
        Ok(st)
    }

    /// Writes a manifest file atomically; returns the instant just before
    /// the rename.
    pub fn apply(&self, file: &str, value: &Value) -> Result<Instant> {
        self.0.apply_at(file, &serde_json::to_string(value)?)
    }

    /// Removes a manifest file; returns the instant just before.
    pub fn remove(&self, file: &str) -> Result<Instant> {
        let t = Instant::now();
        self.0.remove(file)?;
        Ok(t)
    }

    /// SIGTERM and wait: enforcement stays pinned.
    pub fn stop(&mut self) {
        if let Some(pid) = self.0.pid() {
            self.0.stop();
            env::untrack_pid(pid as i32);
        }
    }

    /// Stops the agent and removes everything it pinned.
    pub fn uninstall(&mut self) {
        self.stop();
        let _ = palisade::datapath::uninstall(&self.0.bpffs);
    }

    pub fn pid(&self) -> Option<i32> {
        self.0.pid().map(|p| p as i32)
    }

    fn status_field(&self, key: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = s.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// Peak resident memory, bytes.
    pub fn hwm(&self) -> Option<u64> {
        self.status_field("VmHWM:")
    }

    /// Kernel memory of the BPF maps the agent holds (sum of `memlock` over
    /// its map file descriptors), bytes.
    pub fn map_memory(&self) -> Option<u64> {
        map_memory_of(self.pid()?)
    }
}

fn map_memory_of(pid: i32) -> Option<u64> {
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
