//! Who can change what the agent enforces. A manifest directory is policy:
//! if a user other than root (or the agent's own user) can write it, a file
//! in it, or any directory above it, that user can open the network. The
//! files source refuses such paths unless `--allow-insecure-cluster-state`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Why someone other than root or us could change `meta`'s file or
/// directory, if anyone could. `ancestor`: a directory above the manifest
/// directory, where a sticky bit keeps others from replacing our entries.
pub fn weakness(meta: &std::fs::Metadata, ancestor: bool) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Some(format!("owned by uid {} (only root or uid {euid} may own it)", meta.uid()));
    }
    let mode = meta.permissions().mode();
    let sticky = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(ancestor && sticky) {
        let who = if mode & 0o002 != 0 { "everyone" } else { "its group" };
        return Some(format!("writable by {who} (mode {:04o})", mode & 0o7777));
    }
    None
}

/// Checks `dir` and every directory above it.
pub fn check_dir(dir: &Path) -> Result<(), (std::path::PathBuf, String)> {
    let dir = dir.canonicalize().map_err(|e| (dir.to_path_buf(), e.to_string()))?;
    for (i, d) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(d).map_err(|e| (d.to_path_buf(), e.to_string()))?;
        if let Some(why) = weakness(&meta, i > 0) {
            return Err((d.to_path_buf(), why));
        }
    }
    Ok(())
}

/// How to fix a refused path.
pub const HINT: &str = "fix the owner or mode, or run with --allow-insecure-cluster-state";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_and_world_writable_paths_are_weak_sticky_ancestors_are_not() {
        let d = std::env::temp_dir().join(format!("palisade-trust-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("p.yaml");
        std::fs::write(&f, "").unwrap();
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let meta = |p: &Path| std::fs::metadata(p).unwrap();
        set(&f, 0o644);
        assert_eq!(weakness(&meta(&f), false), None);
        set(&f, 0o664);
        assert!(weakness(&meta(&f), false).unwrap().contains("group"));
        set(&f, 0o646);
        assert!(weakness(&meta(&f), false).unwrap().contains("everyone"));
        set(&d, 0o1777);
        assert!(weakness(&meta(&d), false).is_some(), "others may add files to the manifest directory itself");
        assert_eq!(weakness(&meta(&d), true), None, "a sticky directory above it is fine (like /tmp)");
        set(&d, 0o755);
        assert_eq!(check_dir(&d), Ok(()));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
