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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

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

/// The paths the directory's watcher named since the last load, or that
/// it could not say (its queue overflowed, an error): then all is walked.
#[derive(Default)]
pub struct Noted {
    paths: Vec<PathBuf>,
    all: bool,
}

/// Beyond this many paths named between two loads, walking the directory
/// is as cheap as reading them one by one.
const MAX_NOTED: usize = 100_000;

impl Noted {
    fn note(&mut self, res: &notify::Result<notify::Event>) {
        use notify::EventKind;
        match res {
            Ok(ev)
                if !ev.need_rescan()
                    && !ev.paths.is_empty()
                    && !matches!(ev.kind, EventKind::Any | EventKind::Other) =>
            {
                self.paths.extend(ev.paths.iter().cloned())
            }
            _ => self.all = true,
        }
        if self.all || self.paths.len() > MAX_NOTED {
            self.all = true;
            self.paths = Vec::new();
        }
    }
}

/// Where the agent reads cluster state from.
#[allow(clippy::large_enum_variant)] // one per agent
pub enum Source {
    /// A directory of manifests, watched: what the watcher names is read.
    Files { source: files::FileSource, noted: Arc<Mutex<Noted>>, _watcher: notify::RecommendedWatcher },
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
        let noted = Arc::new(Mutex::new(Noted { paths: Vec::new(), all: true }));
        let to_note = noted.clone();
        // The watcher names paths under the directory made absolute: named
        // again under `dir` as given, they are the paths the source lists.
        let (absolute, given) = (std::path::absolute(&dir)?, dir.clone());
        let mut watcher = notify::recommended_watcher(move |mut res: notify::Result<notify::Event>| {
            // Our own reads of the directory raise access events; waking on
            // them would resync in a loop.
            if !matches!(&res, Ok(ev) if ev.kind.is_access()) {
                for p in res.iter_mut().flat_map(|ev| ev.paths.iter_mut()) {
                    if let Ok(rel) = p.strip_prefix(&absolute) {
                        *p = given.join(rel);
                    }
                }
                to_note.lock().expect("noted lock").note(&res);
                wake();
            }
        })
        .context("watching the cluster state directory")?;
        watcher.watch(&dir, notify::RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
        Ok(Source::Files { source, noted, _watcher: watcher })
    }

    /// The current state, reading what changed since the last load: for
    /// the files source, the paths its watcher named (or, when it cannot
    /// say, the whole directory).
    pub fn load(&mut self) -> Snapshot {
        self.load_walking(false)
    }

    /// [`Source::load`]; `walk`: the files source walks the whole
    /// directory whatever its watcher said (the resync timer heals a
    /// notification lost or never sent).
    pub fn load_walking(&mut self, walk: bool) -> Snapshot {
        match self {
            Source::Files { source, noted, .. } => {
                // Taken before anything is read: a change made while this
                // load reads is named again for the next one.
                let Noted { mut paths, all } = std::mem::take(&mut *noted.lock().expect("noted lock"));
                if walk || all {
                    return source.load();
                }
                paths.sort();
                paths.dedup();
                source.reload(&paths)
            }
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

    /// Saves everything still to save and waits for it (the agent
    /// stopping).
    pub fn finish_saving(&mut self) -> Vec<InputError> {
        match self {
            Source::Files { source, .. } => source.finish_saving(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn what_the_watcher_cannot_name_is_walked() {
        use notify::event::{Event, EventKind, Flag, ModifyKind};
        let mut noted = Noted::default();
        let modified = || Event::new(EventKind::Modify(ModifyKind::Any)).add_path("/m/a.yaml".into());
        noted.note(&Ok(modified()));
        assert_eq!((noted.paths.len(), noted.all), (1, false));
        noted.note(&Ok(modified().set_flag(Flag::Rescan)));
        assert!(noted.all && noted.paths.is_empty(), "a queue overflow walks");
        let mut noted = Noted::default();
        noted.note(&Err(notify::Error::generic("lost")));
        assert!(noted.all);
        let mut noted = Noted::default();
        noted.note(&Ok(Event::new(EventKind::Other)));
        assert!(noted.all);
        let mut noted = Noted::default();
        (0..=MAX_NOTED).for_each(|_| noted.note(&Ok(modified())));
        assert!(noted.all && noted.paths.is_empty(), "too many paths walk, bounded");
    }

    /// A change the watcher names is read at the next load, whenever it
    /// happens relative to the loads; the first load walks.
    #[tokio::test]
    async fn the_files_source_reads_what_its_watcher_names() {
        let d = std::env::temp_dir().join(format!("palisade-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let policy = |name: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {{podSelector: {{}}}}\n"
            )
        };
        std::fs::write(d.join("a.yaml"), policy("a")).unwrap();
        let (tx, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let wake: Wake = Arc::new(move || {
            let _ = tx.send(());
        });
        // Named relative to the working directory (the watcher names
        // absolute paths).
        let up: PathBuf = std::env::current_dir().unwrap().components().skip(1).map(|_| "..").collect();
        let relative = up.join(d.strip_prefix("/").unwrap());
        let mut source = Source::start(Some(relative), files::Options::default(), wake).await.unwrap();
        let walks = |s: &Source| match s {
            Source::Files { source, .. } => source.walks,
            Source::Kube(_) => unreachable!(),
        };
        let names = |s: &Snapshot| s.input.policies.keys().map(|(_, n)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&source.load()), ["a"]);
        // Loads until `want` is read: the watcher's events come when they
        // come, and a load with nothing named reads and walks nothing.
        async fn until(source: &mut Source, want: &[&str], names: impl Fn(&Snapshot) -> Vec<String>) {
            for _ in 0..100 {
                if names(&source.load()) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{want:?} never read");
        }
        for (name, want) in [("b", vec!["a", "b"]), ("c", vec!["a", "b", "c"])] {
            std::fs::write(d.join(format!("{name}.yaml")), policy(name)).unwrap();
            tokio::time::timeout(Duration::from_secs(5), woken.recv()).await.expect("woken");
            until(&mut source, &want, names).await;
        }
        assert_eq!(walks(&source), 1, "a named file is read without a walk");
        std::fs::remove_file(d.join("a.yaml")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/d.yaml"), policy("d")).unwrap();
        until(&mut source, &["b", "c", "d"], names).await;
        assert_eq!(walks(&source), 2, "a new directory is walked");
        assert_eq!(names(&source.load_walking(true)), ["b", "c", "d"]);
        assert_eq!(walks(&source), 3);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
