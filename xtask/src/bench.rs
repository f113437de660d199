//! `cargo xtask bench`: builds the agent and the benchmark runner in
//! release mode and runs it; the runner writes the report.

use anyhow::{Result, bail};

use crate::util::is_root;

pub fn run(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and create network namespaces: run them as root");
    }
    crate::setup_task()?;
    bail!("benchmarks are not written yet (quick: {quick})")
}
