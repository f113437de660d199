//! The record on disk: `<state dir>/flows.json`, one [`Snapshot`], written
//! atomically (temporary file, fsync, rename, fsync of the directory) and
//! readable by root (or the agent's user) only, like the saved manifests.

use super::Snapshot;
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("flows.json")
}

/// The record saved under `state_dir`, if there is a readable one.
pub fn load(state_dir: &Path) -> Result<Option<Snapshot>> {
    let path = file(state_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let snap = serde_json::from_slice(&text).with_context(|| format!("{} does not parse", path.display()))?;
    Ok(Some(snap))
}

/// Replaces the saved record, atomically.
pub fn save(state_dir: &Path, snap: &Snapshot) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = file(state_dir);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    serde_json::to_writer(std::io::BufWriter::new(&mut f), snap)?;
    f.flush()?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}
