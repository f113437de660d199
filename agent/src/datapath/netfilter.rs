//! The netfilter hooks (see the ebpf crate's `netfilter` module and
//! DESIGN.md, Hooks): three pinned socket filters, run by xt_bpf rules in
//! the mangle table, in chains the agent owns and jumps to first from
//! INPUT and FORWARD, for IPv4 and IPv6. mangle runs after kube-proxy's
//! DNAT and before its SNAT, and before the filter table's ACCEPTs.
//!
//! The rules go in with `iptables-restore --noflush` (each chain replaced
//! whole, atomically), which also moves them onto the programs this agent
//! pinned. They are checked again on syncs, at most every [`RECHECK`], and
//! put back if anything took them away; until then the sync reports the
//! error (status, metrics, `/readyz`).

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The chains the agent owns in the mangle table.
pub const INPUT_CHAIN: &str = "PALISADE-INPUT";
pub const FORWARD_CHAIN: &str = "PALISADE-FORWARD";

/// Pin names of the programs, under [`pin_dir`].
pub const LOCAL: &str = "local";
pub const FORWARD: &str = "forward";
pub const REPLY: &str = "reply";

/// (listing tool, restore tool) per family.
const TOOLS: [(&str, &str); 2] = [("iptables", "iptables-restore"), ("ip6tables", "ip6tables-restore")];

/// How often a sync looks at the rules when they were whole last time.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Where an agent with bpffs directory `dir` pins the programs.
pub fn pin_dir(dir: &Path) -> PathBuf {
    dir.join("netfilter")
}

/// The rules of one agent, and when they were last seen whole.
pub struct Hooks {
    pins: PathBuf,
    defer_mark: u32,
    judged_mark: u32,
    checked: Option<Instant>,
}

impl Hooks {
    /// Hooks on the programs pinned under `pins`; nothing is installed
    /// until [`Hooks::ensure`].
    pub fn new(pins: PathBuf, defer_mark: u32, judged_mark: u32) -> Hooks {
        Hooks { pins, defer_mark, judged_mark, checked: None }
    }

    fn pin(&self, name: &str) -> String {
        self.pins.join(name).display().to_string()
    }

    /// The chains, in iptables-restore's format.
    fn rules(&self) -> String {
        let (d, j) = (self.defer_mark, self.judged_mark);
        let dnat = "-m conntrack --ctstate DNAT --ctdir";
        format!(
            "*mangle\n:{INPUT_CHAIN} - [0:0]\n:{FORWARD_CHAIN} - [0:0]\n\
             -A {INPUT_CHAIN} -m mark --mark {d:#x}/{d:#x} -m bpf --object-pinned {local} -j DROP\n\
             -A {FORWARD_CHAIN} {dnat} ORIGINAL -m bpf --object-pinned {forward} -j DROP\n\
             -A {FORWARD_CHAIN} {dnat} ORIGINAL -j MARK --set-xmark {j:#x}/{j:#x}\n\
             -A {FORWARD_CHAIN} {dnat} REPLY -m bpf --object-pinned {reply} -j DROP\n\
             COMMIT\n",
            local = self.pin(LOCAL),
            forward = self.pin(FORWARD),
            reply = self.pin(REPLY),
        )
    }

    /// Makes sure the rules are in force: looks at most every [`RECHECK`]
    /// (always after a failure) and installs them when they are not whole.
    pub fn ensure(&mut self) -> Result<()> {
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return Ok(());
        }
        self.checked = None;
        if !self.whole()? {
            self.install()?;
            if !self.whole()? {
                bail!("the rules installed are not the ones read back (another tool rewriting the mangle table?)");
            }
        }
        self.checked = Some(Instant::now());
        Ok(())
    }

    /// Installs the rules on this agent's programs.
    pub fn install(&mut self) -> Result<()> {
        let rules = self.rules();
        for (tool, restore) in TOOLS {
            run(restore, &["-w", "--noflush"], Some(&rules))?;
            for (parent, chain) in [("INPUT", INPUT_CHAIN), ("FORWARD", FORWARD_CHAIN)] {
                jump_first(tool, parent, chain)?;
            }
        }
        Ok(())
    }

    /// Whether both families hold the rules on this agent's programs, with
    /// the jumps to them first in INPUT and FORWARD.
    fn whole(&self) -> Result<bool> {
        for (tool, _) in TOOLS {
            if !self.holds(&run(tool, &["-w", "-t", "mangle", "-S"], None)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a mangle table listing (`iptables -S`) holds the rules.
    fn holds(&self, listing: &str) -> bool {
        let rules = |chain: &str| -> Vec<&str> {
            let prefix = format!("-A {chain} ");
            listing.lines().filter(|l| l.starts_with(&prefix)).collect()
        };
        let first =
            |parent: &str, chain: &str| rules(parent).first() == Some(&format!("-A {parent} -j {chain}").as_str());
        let (input, forward) = (rules(INPUT_CHAIN), rules(FORWARD_CHAIN));
        let judged = format!("--set-xmark {:#x}/{:#x}", self.judged_mark, self.judged_mark);
        input.len() == 1
            && forward.len() == 3
            && input[0].contains(&self.pin(LOCAL))
            && forward[0].contains(&self.pin(FORWARD))
            && forward[1].contains(&judged)
            && forward[2].contains(&self.pin(REPLY))
            && first("INPUT", INPUT_CHAIN)
            && first("FORWARD", FORWARD_CHAIN)
    }
}

/// Puts `-j chain` first in `parent` (mangle), and only there. The new
/// jump goes in before any other is taken out, so the chain is never
/// without one (an agent killed half-way leaves an extra jump, harmless).
fn jump_first(tool: &str, parent: &str, chain: &str) -> Result<()> {
    let positions = || -> Result<Vec<usize>> {
        let listing = run(tool, &["-w", "-t", "mangle", "-S", parent], None)?;
        let jump = format!("-A {parent} -j {chain}");
        let rules = listing.lines().filter(|l| l.starts_with(&format!("-A {parent} ")));
        Ok(rules.enumerate().filter(|(_, l)| *l == jump).map(|(i, _)| i + 1).collect())
    };
    if positions()? == [1] {
        return Ok(());
    }
    run(tool, &["-w", "-t", "mangle", "-I", parent, "1", "-j", chain], None)?;
    for n in positions()?.into_iter().filter(|&n| n > 1).rev() {
        run(tool, &["-w", "-t", "mangle", "-D", parent, &n.to_string()], None)?;
    }
    Ok(())
}

/// Takes out the rules of the agent whose programs are pinned under
/// `pins` (another agent's stay), for `palisade uninstall`.
pub fn remove(pins: &Path) -> Result<()> {
    let pins = pins.display().to_string();
    for (tool, _) in TOOLS {
        let Ok(listing) = run(tool, &["-w", "-t", "mangle", "-S"], None) else {
            // No iptables here: nothing of ours can be installed either.
            continue;
        };
        let ours = listing.lines().any(|l| {
            (l.starts_with(&format!("-A {INPUT_CHAIN} ")) || l.starts_with(&format!("-A {FORWARD_CHAIN} ")))
                && l.contains(&pins)
        });
        if !ours {
            continue;
        }
        for (parent, chain) in [("INPUT", INPUT_CHAIN), ("FORWARD", FORWARD_CHAIN)] {
            while run(tool, &["-w", "-t", "mangle", "-D", parent, "-j", chain], None).is_ok() {}
            run(tool, &["-w", "-t", "mangle", "-F", chain], None)?;
            run(tool, &["-w", "-t", "mangle", "-X", chain], None)?;
        }
    }
    Ok(())
}

/// Runs an iptables tool, feeding it `stdin`; its stdout, or why it failed.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (is iptables installed?)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).with_context(|| format!("writing to {tool}"))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `iptables-nft -t mangle -S` prints once the rules are in.
    const LISTING: &str = "-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P FORWARD ACCEPT
-N PALISADE-FORWARD
-N PALISADE-INPUT
-A INPUT -j PALISADE-INPUT
-A INPUT -j OTHER
-A FORWARD -j PALISADE-FORWARD
-A PALISADE-FORWARD -m conntrack --ctstate DNAT --ctdir ORIGINAL -m bpf --object-pinned /b/netfilter/forward -j DROP
-A PALISADE-FORWARD -m conntrack --ctstate DNAT --ctdir ORIGINAL -j MARK --set-xmark 0x800000/0x800000
-A PALISADE-FORWARD -m conntrack --ctstate DNAT --ctdir REPLY -m bpf --object-pinned /b/netfilter/reply -j DROP
-A PALISADE-INPUT -m mark --mark 0x400000/0x400000 -m bpf --object-pinned /b/netfilter/local -j DROP
";

    #[test]
    fn a_listing_holds_the_rules_only_whole_first_and_on_our_programs() {
        let hooks = Hooks::new(PathBuf::from("/b/netfilter"), 0x40_0000, 0x80_0000);
        assert!(hooks.holds(LISTING));
        for rule in hooks.rules().lines().filter(|l| l.starts_with("-A ")) {
            assert!(LISTING.contains(rule), "installed as listed: {rule}");
        }
        let other_agent = Hooks::new(PathBuf::from("/c/netfilter"), 0x40_0000, 0x80_0000);
        assert!(!other_agent.holds(LISTING), "another agent's programs");
        let not_first = LISTING
            .replace("-A INPUT -j PALISADE-INPUT\n-A INPUT -j OTHER", "-A INPUT -j OTHER\n-A INPUT -j PALISADE-INPUT");
        assert!(!hooks.holds(&not_first), "a rule before the jump");
        let flushed: String =
            LISTING.lines().filter(|l| !l.starts_with("-A PALISADE-FORWARD")).map(|l| format!("{l}\n")).collect();
        assert!(!hooks.holds(&flushed), "a flushed chain");
        assert!(!hooks.holds(&LISTING.replace("-A FORWARD -j PALISADE-FORWARD\n", "")), "no jump");
    }
}
