//! `cargo xtask setup`: installs whatever is missing, idempotently. When
//! everything is present it only runs a handful of quick probes.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, cmd, is_root, probe, run, which};

/// Debian packages: LLVM for building bpf-linker, the network tools the
/// end-to-end tests, demo and benchmarks drive, and the browser the page's
/// test drives (chromium through chromedriver).
const DEB_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "iperf3",
    "iptables",
    "nftables",
    "ipset",
    "fonts-dejavu-core",
    "chromium",
    "chromium-driver",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The toolchain aya-build compiles the eBPF crate with.
const NIGHTLY: &str = "nightly";

fn report(what: &str, status: &str) {
    eprintln!("  {what:<28} {status}");
}

pub fn setup() -> Result<()> {
    debian_packages()?;
    let nightly_sysroot = nightly_toolchain()?;
    rustup_component(NIGHTLY, &nightly_sysroot, "rust-src")?;
    rustup_component(NIGHTLY, &nightly_sysroot, "clippy")?;
    let default_sysroot = sysroot(None).context("cannot run `rustc --print sysroot`")?;
    rustup_component("default", &default_sysroot, "clippy")?;
    rustup_component("default", &default_sysroot, "rustfmt")?;
    bpf_linker()?;
    Ok(())
}

/// Packages not in dpkg's "install ok installed" state.
fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits non-zero if any package is unknown, but still prints
    // the known ones, so read stdout whatever the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(DEB_PACKAGES)
        .output()
        .context("running dpkg-query (is this a Debian-based system?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(DEB_PACKAGES.iter().copied().filter(|p| !installed.contains(p)).collect())
}

fn debian_packages() -> Result<()> {
    let missing = missing_packages()?;
    for p in DEB_PACKAGES.iter().filter(|p| !missing.contains(p)) {
        report(&format!("apt: {p}"), "ok");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {list}\n\
             installing them needs root; run:\n    \
             sudo apt-get update && sudo apt-get install -y {list}\n\
             then run `cargo xtask setup` again",
            list = missing.join(" ")
        );
    }
    let apt_install = || {
        let mut c = cmd("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q"])
            .args(&missing);
        c
    };
    let apt_update = || {
        let mut c = cmd("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args(["-o", "DPkg::Lock::Timeout=300", "update", "-q"]);
        c
    };
    // Skip `apt-get update` when the package lists are usable; refresh them
    // and retry if the install fails (unknown package, stale mirror).
    if !have_apt_lists() {
        run(&mut apt_update())?;
        run(&mut apt_install())?;
    } else if run(&mut apt_install()).is_err() {
        eprintln!("apt-get install failed; refreshing package lists and retrying");
        run(&mut apt_update())?;
        run(&mut apt_install())?;
    }
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    for p in &missing {
        report(&format!("apt: {p}"), "installed");
    }
    Ok(())
}

fn have_apt_lists() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|entries| entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains("_Packages")))
        .unwrap_or(false)
}

/// `rustc --print sysroot` for `toolchain` (the active one if `None`),
/// never letting rustup auto-install a toolchain.
fn sysroot(toolchain: Option<&str>) -> Option<PathBuf> {
    let mut c = Command::new("rustc");
    if let Some(t) = toolchain {
        c.arg(format!("+{t}"));
    }
    c.args(["--print", "sysroot"]).env("RUSTUP_AUTO_INSTALL", "0");
    probe(&mut c).map(|s| PathBuf::from(s.trim()))
}

fn nightly_toolchain() -> Result<PathBuf> {
    if which("rustup").is_none() {
        bail!(
            "rustup not found on PATH; palisade builds its eBPF program with a rustup-managed \
             nightly toolchain (install rustup from https://rustup.rs)"
        );
    }
    let listed = probe(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    // `nightly-<host>`, not a dated `nightly-YYYY-MM-DD-<host>`: aya-build
    // runs `rustup run nightly`.
    let present = listed.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name == NIGHTLY
            || name.strip_prefix("nightly-").is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    let sysroot = present.then(|| sysroot(Some(NIGHTLY))).flatten();
    match sysroot {
        Some(s) => {
            report("toolchain: nightly", "ok");
            Ok(s)
        }
        None => bail!(
            "the nightly Rust toolchain is missing (the eBPF crate is built with it); run:\n    \
             rustup toolchain install nightly --profile minimal --component rust-src,clippy"
        ),
    }
}

/// Ensures a rustup component, detected by the files it puts in the sysroot
/// (much faster than `rustup component list`).
fn rustup_component(toolchain: &str, sysroot: &std::path::Path, component: &str) -> Result<()> {
    let marker = match component {
        "rust-src" => sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml"),
        "clippy" => sysroot.join("bin/cargo-clippy"),
        "rustfmt" => sysroot.join("bin/rustfmt"),
        other => unreachable!("no marker known for component {other}"),
    };
    let label = format!("{toolchain}: {component}");
    if marker.exists() {
        report(&label, "ok");
        return Ok(());
    }
    let mut c = cmd("rustup");
    c.args(["component", "add", component]);
    if toolchain != "default" {
        c.args(["--toolchain", toolchain]);
    }
    run(&mut c)?;
    report(&label, "installed");
    Ok(())
}

/// The bpf-linker that would run: `$CARGO_HOME/bin` is first on PATH (see
/// `init_env`), so that is the copy we check.
fn bpf_linker_ok() -> bool {
    which("bpf-linker")
        .and_then(|bin| probe(Command::new(bin).arg("--version")))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn bpf_linker() -> Result<()> {
    let label = format!("bpf-linker {BPF_LINKER_VERSION}");
    if bpf_linker_ok() {
        report(&label, "ok");
        return Ok(());
    }
    // LLVM_PREFIX is required: without it the llvm-sys build cannot find
    // libLLVM ("unable to find library -lLLVM").
    run(cargo()
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features"])
        .args(["--features", "llvm-22"]))?;
    if !bpf_linker_ok() {
        bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but `bpf-linker --version` on PATH \
             still does not report it (is another bpf-linker earlier on PATH?)"
        );
    }
    report(&label, "installed");
    Ok(())
}
