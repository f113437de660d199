//! The BPF filesystem: pinned maps and links live there, so enforcement
//! outlives the agent process. A fresh machine may not have it mounted.

use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` exists on a bpffs, mounting /sys/fs/bpf if needed.
pub fn ensure(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).context("creating /sys/fs/bpf")?;
        let src = CString::new("bpf").expect("static");
        let target = CString::new(root.as_os_str().as_bytes()).expect("static");
        // SAFETY: all pointers are valid NUL-terminated strings; data is null.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            bail!("mounting bpffs on /sys/fs/bpf: {}", std::io::Error::last_os_error());
        }
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!("{} is not on a BPF filesystem (mount -t bpf bpf <dir>)", dir.display());
    }
    Ok(())
}

/// Holds `dir` for this process alone: an exclusive `flock` on the
/// directory, released when the returned file closes (on drop, exit or a
/// crash). Two agents writing one set of pinned maps would each sync
/// against its own record of what the kernel holds, and one could put
/// back an allow the other revoked. A second one waits for the first to
/// exit (a restart's new process may start while the old one is still
/// going away), saying so once.
pub fn hold(dir: &Path) -> Result<File> {
    let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut said = false;
    loop {
        // SAFETY: the descriptor is open for as long as `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if said {
                tracing::info!("{}: the agent before this one is gone; going on", dir.display());
            }
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("locking {}", dir.display()));
        }
        if !said {
            tracing::warn!("another palisade agent holds {}: waiting for it to exit", dir.display());
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
