//! Network namespaces as pods: each has a thread living inside it that runs
//! closures there, so sockets can be made in the pod and used from anywhere.

use anyhow::{Context, Result, bail};
use std::process::Command;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// Runs `ip` with arguments, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Feeds many `ip` commands to one process (`ip -batch`), which is much
/// faster than one process per command; in `netns` if given.
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut args = vec!["-force", "-batch", "-"];
    if let Some(ns) = netns {
        args.splice(0..0, ["-n", ns]);
    }
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child.stdin.take().context("stdin")?.write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))
}

/// Sets a sysctl inside the named namespace (None: the calling thread's).
pub fn sysctl_in(netns: Option<&str>, key: &str, value: &str) -> Result<()> {
    let Some(ns) = netns else { return sysctl(key, value) };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            sysctl(key, value)
        })
        .join()
        .expect("sysctl thread")
    })
}

/// Enters the named network namespace on the calling thread.
pub fn enter(name: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A network namespace with a resident thread. Deleted on drop.
pub struct Netns {
    pub name: String,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        Netns::attach(name)
    }

    /// Attaches to a namespace that exists; it is still deleted on drop.
    pub fn attach(name: &str) -> Result<Netns> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = name.to_string();
        let thread = std::thread::spawn(move || {
            let _ = ready_tx.send(enter(&ns).map_err(|e| e.to_string()));
            for job in rx {
                job();
            }
        });
        ready_rx.recv().context("netns thread")?.map_err(anyhow::Error::msg)?;
        Ok(Netns { name: name.to_string(), jobs: Some(tx), thread: Some(thread) })
    }

    /// Runs `f` inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.as_ref().expect("netns alive").send(job).expect("netns thread alive");
        rx.recv().expect("netns job finished")
    }

    /// Spawns a long-lived thread inside the namespace (servers).
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            if enter(&name).is_ok() {
                f();
            }
        });
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).output()?;
        if !out.status.success() {
            bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A command that runs `program` inside the named namespace (keeping this
/// mount namespace, unlike `ip netns exec`).
pub fn command_in(netns: &str, program: &std::path::Path) -> Result<Command> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
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
