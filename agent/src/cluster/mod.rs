//! Where cluster state comes from. Every source produces the same
//! [`Snapshot`]: validated objects for the compiler, and the errors of the
//! objects it could not use. [`convert`] turns one Kubernetes object into
//! the policy model, [`objects`] a source's objects into a snapshot.

pub mod convert;
pub mod files;
pub mod kube;
pub mod objects;
mod saved;
mod trust;

use crate::policy::Input;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// One object (or file) the agent could not use as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InputError {
    /// Where it came from: a file path, or the API.
    pub source: String,
    /// `Kind namespace/name`, or empty when the file itself is unreadable.
    pub object: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
    /// What the agent does instead, e.g. "keeping the last valid version".
    pub action: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.action.is_empty() {
            write!(f, " ({})", self.action)?;
        }
        Ok(())
    }
}

/// The state a source currently holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub input: Input,
    pub errors: Vec<InputError>,
}

/// Something that wakes the agent loop.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Where the agent reads cluster state from.
#[allow(clippy::large_enum_variant)] // one per agent
pub enum Source {
    /// A directory of manifests, watched.
    Files { source: files::FileSource, _watcher: notify::RecommendedWatcher },
    /// The Kubernetes API.
    Kube(kube::KubeSource),
}

impl Source {
    /// Starts reading from `dir`, or from the Kubernetes API when None.
    pub async fn start(dir: Option<PathBuf>, opts: files::Options, wake: Wake) -> Result<Source> {
        use notify::Watcher;
        let Some(dir) = dir else {
            return Ok(Source::Kube(kube::KubeSource::start(wake, opts.allow_namespace_audit).await?));
        };
        if !dir.is_dir() {
            bail!("--cluster-state {}: not a directory", dir.display());
        }
        let source = files::FileSource::enforcing(&dir, &opts)?;
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own reads of the directory raise access events; waking on
            // them would resync in a loop.
            if !matches!(&res, Ok(ev) if ev.kind.is_access()) {
                wake();
            }
        })
        .context("watching the cluster state directory")?;
        watcher.watch(&dir, notify::RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
        Ok(Source::Files { source, _watcher: watcher })
    }

    pub fn load(&mut self) -> Snapshot {
        match self {
            Source::Files { source, .. } => source.load(),
            Source::Kube(k) => k.load(),
        }
    }

    /// Saves what the last load read and the kernel now holds (the files
    /// source's copies, [`files::FileSource::save_pending`]).
    pub fn save_pending(&mut self) -> Vec<InputError> {
        match self {
            Source::Files { source, .. } => source.save_pending(),
            Source::Kube(_) => Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Files { source, .. } => format!("files:{}", source.dir().display()),
            Source::Kube(_) => "kubernetes".into(),
        }
    }

    /// The input version the last load saw.
    pub fn loaded_version(&self) -> u64 {
        match self {
            Source::Files { source, .. } => source.loaded_fingerprint(),
            Source::Kube(k) => k.versions().0,
        }
    }

    /// Reads the input version as it is now: when it differs from what was
    /// loaded, the kernel is not in sync with the input.
    pub fn current_version(&self) -> Box<dyn Fn() -> u64 + Send + Sync> {
        match self {
            Source::Files { source, .. } => {
                let (dir, check) = (source.dir().to_path_buf(), source.checks());
                Box::new(move || files::fingerprint(&dir, check))
            }
            Source::Kube(k) => {
                let generation = k.versions().1;
                Box::new(move || generation.load(Ordering::SeqCst))
            }
        }
    }

    /// What the source cannot read because the API does not serve it (the
    /// ClusterNetworkPolicy CRD not installed): not an error, enforcement
    /// goes on without it.
    pub fn unavailable(&self) -> Option<&'static str> {
        match self {
            Source::Files { .. } => None,
            Source::Kube(k) => k.unavailable(),
        }
    }

    /// Why the state in force may be stale.
    pub fn stale(&self) -> Option<String> {
        match self {
            Source::Files { .. } => None,
            Source::Kube(k) => k.stale(),
        }
    }
}
