//! `cargo xtask bench`: builds the agent and the benchmark runner in
//! release mode (`--smoke`: as the tests build them) and runs the runner (`bench/src/main.rs`), which writes
//! report.md, report.json and the plots under bench/results/ (a quick run
//! under bench/results/quick/, which git ignores), and prints the headline
//! table. Benchmarks measure and report: they never fail on a
//! number, only when they cannot measure.

use anyhow::{Result, bail};

use crate::util::{self, cargo, is_root, target_dir, workspace_root};

pub fn run(quick: bool, smoke: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and create network namespaces: run them as root");
    }
    crate::setup_task()?;
    for tool in ["iperf3", "iptables-restore", "ipset", "nft", "taskset"] {
        if util::which(tool).is_none() {
            bail!("`{tool}` is missing: `cargo xtask setup` installs the benchmark's tools");
        }
    }
    let profile = if smoke { "dev" } else { "release" };
    util::run(cargo().args(["build", "--profile", profile, "-p", "palisade", "-p", "palisade-bench"]))?;
    let bin = target_dir().join(if smoke { "debug" } else { "release" });
    let mut c = std::process::Command::new(bin.join("palisade-bench"));
    c.current_dir(workspace_root()).env("PALISADE_BIN", bin.join("palisade")).arg("--command").arg(if smoke {
        "cargo xtask bench --smoke"
    } else if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    });
    if quick {
        c.arg("--quick");
    }
    util::run(&mut c)
}
