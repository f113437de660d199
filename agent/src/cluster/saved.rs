//! The last good objects of each manifest file, on disk. The files source
//! remembers them in memory while it runs; this copy is that memory across
//! restarts, so a file that does not read at start keeps what it held
//! before instead of opening the pods it isolated.
//!
//! Layout: `<state dir>/files/<hash of the manifest directory>/<hash of the
//! file's relative path>.json`, each `{"path": ..., "objects": [...]}`,
//! written atomically (temporary file, fsync, rename, fsync of the
//! directory) and readable by root (or the agent's user) only.

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
struct Copy {
    /// Relative to the manifest directory.
    path: String,
    objects: Vec<Value>,
}

/// Each copy's outcome, by the file's relative path.
pub type Outcomes = Vec<(String, Result<()>)>;

#[derive(Clone)]
pub struct Saved {
    dir: PathBuf,
}

/// Writes a [`Copy`] of objects already in JSON (as the files source keeps
/// them, see `convert::check_documents`) to `tmp`, readable by its owner alone.
/// A copy that is not JSON would be refused whole when read back, and a
/// broken file would then hold nothing.
fn write_copy(tmp: &Path, rel: &str, objects: &[String]) -> Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp)?;
    let mut w = std::io::BufWriter::new(&mut f);
    write!(w, "{{\"path\":{},\"objects\":[", serde_json::to_string(rel)?)?;
    for (i, o) in objects.iter().enumerate() {
        debug_assert!(serde_json::from_str::<Value>(o).is_ok(), "a saved object is JSON");
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(o.as_bytes())?;
    }
    w.write_all(b"]}")?;
    w.flush()?;
    drop(w);
    Ok(f)
}

/// FNV-1a: a hash that never changes between builds (file names depend on it).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Saved {
    /// The copies of `manifests` (canonical path) under `state_dir`, which is
    /// created owner-only if missing. Unless `allow_insecure`, the state
    /// directory must be as safe as the manifests themselves.
    pub fn open(state_dir: &Path, manifests: &Path, allow_insecure: bool) -> Result<Saved> {
        let dir = state_dir.join("files").join(format!("{:016x}", stable_hash(&manifests.to_string_lossy())));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("--state-dir: creating {}", dir.display()))?;
        if !allow_insecure {
            super::trust::check_dir(&dir).map_err(|(path, why)| {
                anyhow::anyhow!(
                    "--state-dir: {}: {why}: others could change what is enforced; {}",
                    path.display(),
                    super::trust::HINT
                )
            })?;
        }
        Ok(Saved { dir })
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(format!("{:016x}.json", stable_hash(rel)))
    }

    /// The saved objects of `rel`, and where they are.
    pub fn read(&self, rel: &str) -> Option<(Vec<Value>, PathBuf)> {
        let path = self.file(rel);
        let text = std::fs::read(&path).ok()?;
        let copy: Copy = serde_json::from_slice(&text).ok()?;
        (copy.path == rel).then_some((copy.objects, path))
    }

    /// Replaces the copy of `rel` (its objects as JSON), atomically.
    pub fn write(&self, rel: &str, objects: Vec<String>) -> Result<()> {
        let path = self.file(rel);
        let tmp = path.with_extension("tmp");
        write_copy(&tmp, rel, &objects)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Replaces the copies of several files: each written to a temporary
    /// file, one sync of the filesystem for them all (a burst of changed
    /// files would otherwise wait on an fsync each), then each renamed in
    /// place and the directory synced once. Returns each file's outcome.
    pub fn write_many(&self, copies: Vec<(String, Vec<String>)>) -> Outcomes {
        // Nothing to write must not sync: a sync of the filesystem waits for
        // everyone's writes (it took most of a pass on a busy node).
        if copies.is_empty() {
            return Vec::new();
        }
        if copies.len() == 1 {
            return copies.into_iter().map(|(rel, objects)| (rel.clone(), self.write(&rel, objects))).collect();
        }
        let mut out = Vec::new();
        let mut written = Vec::new();
        for (rel, objects) in copies {
            let path = self.file(&rel);
            let tmp = path.with_extension("tmp");
            match write_copy(&tmp, &rel, &objects) {
                Ok(_) => written.push((rel, tmp, path)),
                Err(e) => out.push((rel, Err(e))),
            }
        }
        let synced = std::fs::File::open(&self.dir).map_err(anyhow::Error::from).and_then(|d| {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs on a file descriptor we own.
            match unsafe { libc::syncfs(d.as_raw_fd()) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()).context("syncfs"),
            }
        });
        let mut renamed = Vec::new();
        for (rel, tmp, path) in written {
            match synced.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(|()| Ok(std::fs::rename(&tmp, &path)?))
            {
                Ok(()) => renamed.push(rel),
                Err(e) => out.push((rel, Err(e))),
            }
        }
        let dir = std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| e.to_string());
        out.extend(renamed.into_iter().map(|rel| (rel, dir.clone().map_err(anyhow::Error::msg))));
        out
    }

    /// Forgets `rel`: the file was deleted on purpose and must not come back.
    pub fn remove(&self, rel: &str) {
        let _ = std::fs::remove_file(self.file(rel));
    }

    /// Removes the copies of files not in `present` (deleted while the agent
    /// was down).
    pub fn retain(&self, present: &std::collections::BTreeSet<String>) {
        #[derive(serde::Deserialize)]
        struct PathOnly {
            path: String,
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let keep = std::fs::read(e.path())
                .ok()
                .and_then(|t| serde_json::from_slice::<PathOnly>(&t).ok())
                .is_some_and(|c| present.contains(&c.path));
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Every saved copy, by relative path (for a directory that cannot be listed).
    pub fn all(&self) -> BTreeMap<String, (Vec<Value>, PathBuf)> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if let Some(copy) = std::fs::read(e.path()).ok().and_then(|t| serde_json::from_slice::<Copy>(&t).ok()) {
                out.insert(copy.path, (copy.objects, e.path()));
            }
        }
        out
    }
}
