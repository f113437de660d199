//! The standalone source: a directory of Kubernetes manifests (YAML or JSON,
//! multi-document, `kind: List` too), watched for changes. Files that did
//! not change since the last load are not parsed again; a file that no
//! longer reads keeps its last objects in force.
//!
//! The agent reads the directory as policy, so it also
//! - refuses paths someone other than root (or its own user) could change
//!   ([`super::trust`]): at start it does not start, later such a file keeps
//!   what it held before;
//! - saves the objects in force from each file ([`super::saved`]), so that
//!   after a restart a file that does not read keeps them rather than
//!   opening the pods it isolated. A file deleted while the agent was down
//!   was deleted on purpose: its copy goes with it.

use super::convert::{Checked, ObjKey, check_documents, check_json_documents, json_documents};
use super::objects::{Patched, Validator};
use super::saved::{Outcomes, Saved};
use super::{InputError, Snapshot, trust};
use anyhow::{Result, bail};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest manifest file read. With the parser limits below it bounds
/// the memory a file can take, far above a whole 50k-pod cluster in one file
/// (about 50 MB of YAML).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// YAML parser limits, set for Kubernetes manifests rather than left at
/// serde-saphyr's defaults (1,024 documents, 250,000 nodes per file, which
/// reject a legitimate 20,000-object file): documents and nodes are capped
/// well above the largest cluster palisade is built for, depth at what no
/// Kubernetes object needs (a NetworkPolicy nests about 10 deep), aliases
/// at the library's defaults (they multiply work, manifests hardly use them).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 20_000_000,
            max_events: 50_000_000,
            max_total_scalar_bytes: MAX_FILE_BYTES as usize,
            max_depth: 64,
        },
    }
}

/// What tells us a file changed without reading it (owner and mode too:
/// they decide whether it may be read at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
    mode: u32,
    uid: u32,
}

struct FileState {
    stamp: Stamp,
    /// Parsed and validated when the file was read.
    objects: Vec<Checked>,
    /// Problems with the file as a whole, or with documents of unknown shape.
    errors: Vec<InputError>,
}

/// How the agent reads the directory (`palisade run` flags).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where the last good copy of each file is kept (None: nowhere).
    pub state_dir: Option<PathBuf>,
    /// Read paths others could write (`--allow-insecure-cluster-state`).
    pub allow_insecure: bool,
    /// Honour `palisade.dev/audit` on Namespaces (`--allow-namespace-audit`).
    pub allow_namespace_audit: bool,
}

pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    validator: Validator,
    fingerprint: u64,
    /// Refuse paths others could write.
    check: bool,
    saved: Option<Saved>,
    loaded_once: bool,
    /// Where each object is defined: (file, position in it), in order.
    index: HashMap<ObjKey, Vec<(Arc<Path>, usize)>>,
    /// Keys whose objects changed since the last snapshot, and whether
    /// all did (nothing built yet).
    dirty: HashSet<ObjKey>,
    all_dirty: bool,
    /// The last snapshot.
    last: Patched,
    /// Files read since their copies were last saved, with their
    /// documents as JSON (see [`FileSource::save_pending`]).
    unsaved: Vec<(PathBuf, Vec<String>)>,
    /// Files deleted since, whose copies go then too (relative paths).
    unsaved_gone: Vec<String>,
    /// The save writing copies off the agent's loop, if one is running:
    /// each copy's outcome.
    saving: Option<std::thread::JoinHandle<Outcomes>>,
    /// The directory as last listed, kept current by [`FileSource::reload`].
    listing: Listing,
    /// The last walk failed: the next load walks again.
    walk_next: bool,
    /// Walks of the directory so far.
    #[cfg(test)]
    pub(super) walks: usize,
}

/// What a path named by the watcher now is.
enum Noted {
    /// Not a manifest: nothing listed depends on it.
    Ignored,
    Gone,
    File(Stamp),
    Refused(String),
}

fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext))
}

/// A directory's manifests, sorted, with their stamps, and the paths
/// refused as unsafe (files, or directories whose files are all refused).
#[derive(Default)]
struct Listing {
    files: Vec<(PathBuf, Stamp)>,
    refused: Vec<(PathBuf, String)>,
    /// The directories walked (the top one too).
    dirs: HashSet<PathBuf>,
    /// Whether any entry is a symlink: a file listed through one changes
    /// with no notification naming it.
    symlinks: bool,
}

/// What one entry of the directory is to the listing.
enum Entry {
    Skip,
    /// A directory to walk.
    Dir,
    File(Stamp),
    Refused(String),
}

/// What `path` is to the listing. `root`: the directory, canonical (where
/// symlinks may point); `link`: whether `path` is a symlink.
fn entry(path: &Path, root: &Path, check: bool, link: bool) -> Entry {
    let Ok(meta) = std::fs::metadata(path) else { return Entry::Skip };
    if !(meta.is_dir() || meta.is_file() && is_manifest(path)) {
        return Entry::Skip;
    }
    let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    if link {
        let target = path.canonicalize().unwrap_or_default();
        if check && !target.starts_with(root) && !(meta.is_dir() && hidden) {
            return Entry::Refused(format!("a symlink to {}, outside {}", target.display(), root.display()));
        }
        if meta.is_dir() {
            // Its files are listed where they are (or hidden on
            // purpose, as in a ConfigMap volume); following it could loop.
            return Entry::Skip;
        }
    }
    if check
        && !(meta.is_dir() && hidden)
        && let Some(why) = trust::weakness(&meta, false)
    {
        return Entry::Refused(why);
    }
    if meta.is_dir() {
        return if hidden { Entry::Skip } else { Entry::Dir };
    }
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Entry::File(Stamp { len: meta.len(), mtime_ns, ino: meta.ino(), mode: meta.mode(), uid: meta.uid() })
}

impl Listing {
    /// Whether `path` is listed, or lies in a refused path.
    fn holds(&self, path: &Path) -> bool {
        self.files.binary_search_by(|(p, _)| p.as_path().cmp(path)).is_ok()
            || self.refused.iter().any(|(r, _)| path.starts_with(r))
    }
}

/// Manifest files under `dir` (recursively). With `check`, files and
/// directories others could write, and symlinks out of `dir`, are refused.
fn list(dir: &Path, check: bool) -> std::io::Result<Listing> {
    let root = dir.canonicalize()?;
    let mut out = Listing::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let link = e.file_type().is_ok_and(|t| t.is_symlink());
            out.symlinks |= link;
            let path = e.path();
            match entry(&path, &root, check, link) {
                Entry::Skip => {}
                Entry::Dir => stack.push(path),
                Entry::File(stamp) => out.files.push((path, stamp)),
                Entry::Refused(why) => out.refused.push((path, why)),
            }
        }
        out.dirs.insert(d);
    }
    out.files.sort();
    out.refused.sort();
    Ok(out)
}

fn fingerprint_of(listing: &Listing) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    listing.files.hash(&mut h);
    listing.refused.hash(&mut h);
    h.finish()
}

/// A cheap digest of the directory's manifests (names, sizes, mtimes,
/// modes): when it differs from the one of the last load, the kernel is not
/// in sync.
pub fn fingerprint(dir: &Path, check: bool) -> u64 {
    list(dir, check).map(|l| fingerprint_of(&l)).unwrap_or(0)
}

fn save_error(path: &Path, e: &anyhow::Error) -> InputError {
    let message = format!("cannot save its last good copy: {e:#}");
    let action = "enforcing it; after a restart, a broken copy of this file would hold nothing".into();
    file_error(path, message, action)
}

fn file_error(source: &Path, message: String, action: String) -> InputError {
    InputError { source: source.display().to_string(), object: String::new(), field: String::new(), message, action }
}

impl FileSource {
    /// Reads `dir` as it is, nothing more (offline `trace`, benchmarks).
    pub fn new(dir: impl Into<PathBuf>) -> FileSource {
        FileSource {
            dir: dir.into(),
            files: BTreeMap::new(),
            validator: Validator::default(),
            fingerprint: 0,
            check: false,
            saved: None,
            loaded_once: false,
            index: HashMap::new(),
            dirty: HashSet::new(),
            all_dirty: true,
            last: Patched::default(),
            unsaved: Vec::new(),
            unsaved_gone: Vec::new(),
            saving: None,
            listing: Listing::default(),
            walk_next: true,
            #[cfg(test)]
            walks: 0,
        }
    }

    /// Reads `dir` for enforcement: fails, naming the path, if `dir` does
    /// not list, or if others could change it (unless allowed).
    pub fn enforcing(dir: impl Into<PathBuf>, opts: &Options) -> Result<FileSource> {
        let dir = dir.into();
        let mut source = FileSource::new(&dir);
        source.check = !opts.allow_insecure;
        source.validator.allow_namespace_audit = opts.allow_namespace_audit;
        if source.check
            && let Err((path, why)) = trust::check_dir(&dir)
        {
            bail!(
                "--cluster-state {}: {}: {why}: others could change what is enforced; {}",
                dir.display(),
                path.display(),
                trust::HINT
            );
        }
        let listing =
            list(&dir, source.check).map_err(|e| anyhow::anyhow!("--cluster-state {}: {e}", dir.display()))?;
        if let Some((path, why)) = listing.refused.first() {
            let more = match listing.refused.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            bail!(
                "--cluster-state: refusing {}: {why}{more}: others could change what is enforced; {}",
                path.display(),
                trust::HINT
            );
        }
        if let Some(state_dir) = &opts.state_dir {
            source.saved = Some(Saved::open(state_dir, &dir.canonicalize()?, opts.allow_insecure)?);
        }
        Ok(source)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether paths others could write are refused.
    pub fn checks(&self) -> bool {
        self.check
    }

    /// Fingerprint of what the last [`FileSource::load`] read.
    pub fn loaded_fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir).unwrap_or(path).to_string_lossy().into_owned()
    }

    /// The saved copy of `path`, checked, and where it is kept.
    fn saved_copy(&self, path: &Path) -> Option<(Vec<Checked>, PathBuf)> {
        let (values, at) = self.saved.as_ref()?.read(&self.rel(path))?;
        Some((check_documents(values, &path.display().to_string(), false).0, at))
    }

    /// Walks the whole directory, reads the files that changed and returns
    /// the whole current state.
    pub fn load(&mut self) -> Snapshot {
        #[cfg(test)]
        {
            self.walks += 1;
        }
        let first = !self.loaded_once;
        self.loaded_once = true;
        let listing = match self.check.then(|| trust::check_dir(&self.dir)) {
            Some(Err((path, why))) => Err(format!("{}: {why}; {}", path.display(), trust::HINT)),
            _ => list(&self.dir, self.check).map_err(|e| format!("cannot read the directory: {e}")),
        };
        let listing = match listing {
            Ok(l) => l,
            Err(message) => {
                // Nothing read changes what is enforced; at start the saved
                // copies stand for what was.
                self.walk_next = true;
                let mut action = "keeping the state read before".to_string();
                if first && let Some(saved) = &self.saved {
                    for (rel, (values, at)) in saved.all() {
                        let path = self.dir.join(&rel);
                        let objects = check_documents(values, &path.display().to_string(), false).0;
                        let stamp = Stamp { len: 0, mtime_ns: 0, ino: 0, mode: 0, uid: 0 };
                        self.set_file(&path, Some(FileState { stamp, objects, errors: vec![] }));
                        action =
                            format!("keeping the last good copies saved in {}", at.parent().unwrap_or(&at).display());
                    }
                }
                let mut snap = self.build();
                snap.errors.insert(0, file_error(&self.dir, message, action));
                return snap;
            }
        };
        self.walk_next = false;
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !listing.holds(p)).cloned().collect();
        let changed: Vec<(PathBuf, Stamp)> =
            listing.files.iter().filter(|(p, s)| self.files.get(p).is_none_or(|f| f.stamp != *s)).cloned().collect();
        self.listing = listing;
        self.update(first, gone, changed)
    }

    /// Reads only `paths` (what the directory's watcher named since the
    /// last load), without walking the directory: a change costs what its
    /// files cost. Walks the whole directory ([`FileSource::load`]) when a
    /// path is not a plain manifest of a directory already walked (a
    /// directory, a symlink, one under a hidden or refused directory), when
    /// the directory holds symlinks (a file read through one changes with
    /// no notification naming it), and before the first walk succeeded.
    pub fn reload(&mut self, paths: &[PathBuf]) -> Snapshot {
        if !self.loaded_once || self.walk_next || self.listing.symlinks {
            return self.load();
        }
        if self.check && trust::check_dir(&self.dir).is_err() {
            return self.load();
        }
        let mut touched: Vec<&Path> = Vec::new();
        for path in paths {
            let Some(noted) = self.noted(path) else { return self.load() };
            let listing = &mut self.listing;
            if let Ok(i) = listing.files.binary_search_by(|(p, _)| p.as_path().cmp(path)) {
                listing.files.remove(i);
            }
            listing.refused.retain(|(p, _)| p != path);
            match noted {
                Noted::Ignored => continue,
                Noted::Gone => {}
                Noted::File(stamp) => {
                    let i = listing.files.binary_search_by(|(p, _)| p.as_path().cmp(path)).unwrap_or_else(|i| i);
                    listing.files.insert(i, (path.clone(), stamp));
                }
                Noted::Refused(why) => {
                    let i = listing.refused.binary_search_by(|(p, _)| p.as_path().cmp(path)).unwrap_or_else(|i| i);
                    listing.refused.insert(i, (path.clone(), why));
                }
            }
            touched.push(path);
        }
        let gone = touched.iter().filter(|p| self.files.contains_key(**p) && !self.listing.holds(p));
        let gone: Vec<PathBuf> = gone.map(|p| p.to_path_buf()).collect();
        let changed: Vec<(PathBuf, Stamp)> = touched
            .iter()
            .filter_map(|p| {
                let i = self.listing.files.binary_search_by(|(q, _)| q.as_path().cmp(p)).ok()?;
                let (path, stamp) = &self.listing.files[i];
                self.files.get(path).is_none_or(|f| f.stamp != *stamp).then(|| (path.clone(), *stamp))
            })
            .collect();
        self.update(false, gone, changed)
    }

    /// What `path`, named by the watcher, now is; None when only a walk
    /// can tell.
    fn noted(&self, path: &Path) -> Option<Noted> {
        let parent = path.parent().filter(|_| path.starts_with(&self.dir) && path != self.dir)?;
        if !self.listing.dirs.contains(parent) {
            return None;
        }
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.listing.dirs.contains(path) || self.listing.refused.iter().any(|(p, _)| p == path) {
                    None
                } else if is_manifest(path) {
                    Some(Noted::Gone)
                } else {
                    // Not a manifest nor a directory walked (a temporary
                    // file): with no symlinks, nothing listed depends on it.
                    Some(Noted::Ignored)
                }
            }
            Err(_) => None,
            Ok(meta) if meta.is_dir() || meta.file_type().is_symlink() => None,
            Ok(_) if !is_manifest(path) => Some(Noted::Ignored),
            Ok(_) => match entry(path, Path::new(""), self.check, false) {
                Entry::File(stamp) => Some(Noted::File(stamp)),
                Entry::Refused(why) => Some(Noted::Refused(why)),
                Entry::Skip => Some(Noted::Gone),
                Entry::Dir => None,
            },
        }
    }

    /// Takes the files gone and the files changed (with their stamps in
    /// the listing) into the state, and returns the snapshot.
    fn update(&mut self, first: bool, gone: Vec<PathBuf>, changed: Vec<(PathBuf, Stamp)>) -> Snapshot {
        self.fingerprint = fingerprint_of(&self.listing);
        for path in gone {
            self.unsaved.retain(|(p, _)| *p != path);
            self.set_file(&path, None);
            if let Some(saved) = &self.saved {
                if first {
                    saved.remove(&self.rel(&path));
                } else {
                    self.unsaved_gone.push(self.rel(&path));
                }
            }
        }
        if first
            && self.listing.refused.is_empty()
            && let Some(saved) = &self.saved
        {
            saved.retain(&self.listing.files.iter().map(|(p, _)| self.rel(p)).collect());
        }
        let mut save_errors = self.save_pending();
        for (path, stamp) in &changed {
            let stamp = *stamp;
            let source = path.display().to_string();
            let parsed = read_file(path, stamp).and_then(|text| parse(&text, &source, self.saved.is_some()));
            match parsed {
                Ok((objects, raw, errors)) => {
                    if first && objects.iter().any(|o| o.result.is_err()) {
                        // The last valid version of an object that no
                        // longer validates was in memory before the
                        // restart: its saved copy stands in.
                        if let Some((saved, _)) = self.saved_copy(path) {
                            saved.iter().for_each(|o| self.validator.remember(o));
                        }
                    }
                    self.set_file(path, Some(FileState { stamp, objects, errors }));
                    if first {
                        // Saved file by file: the documents read are
                        // dropped at once (held for every file, a first
                        // load's transient memory would stay in the
                        // agent's heap).
                        save_errors.extend(self.save_or_say(path, raw));
                    } else if self.saved.is_some() {
                        self.unsaved.push((path.clone(), raw));
                    }
                }
                Err(message) => {
                    // Keep what the file held before (in memory, or at
                    // start its saved copy); report the file.
                    let (objects, action) = match self.set_file(path, None) {
                        Some(f) if !f.objects.is_empty() => {
                            (f.objects, "keeping the objects it held before".to_string())
                        }
                        _ => match first.then(|| self.saved_copy(path)).flatten() {
                            Some((objects, at)) => {
                                (objects, format!("keeping its last good copy, saved in {}", at.display()))
                            }
                            None => (vec![], "ignored".to_string()),
                        },
                    };
                    let errors = vec![file_error(path, message, action)];
                    self.set_file(path, Some(FileState { stamp, objects, errors }));
                }
            }
        }
        // Refused paths (files, directories, symlinks out) keep what their
        // files held before, unchanged.
        let held: Vec<InputError> = self
            .listing
            .refused
            .iter()
            .map(|(path, why)| {
                let held = self.files.keys().any(|p| p.starts_with(path));
                let action = if held { "keeping what it held before" } else { "ignored" };
                file_error(path, format!("refused: {why}; {}", trust::HINT), action.into())
            })
            .collect();
        let mut snap = self.build();
        snap.errors.splice(0..0, held);
        snap.errors.extend(save_errors);
        snap
    }

    /// Puts the state of `path` (None: takes it out), noting the keys of
    /// the objects it held and holds as changed. Returns the state it had.
    fn set_file(&mut self, path: &Path, state: Option<FileState>) -> Option<FileState> {
        let old = self.files.remove(path);
        for o in old.iter().flat_map(|f| &f.objects) {
            if let Some(at) = self.index.get_mut(&o.key) {
                at.retain(|(p, _)| **p != *path);
                if at.is_empty() {
                    self.index.remove(&o.key);
                }
            }
            self.dirty.insert(o.key.clone());
        }
        if let Some(mut state) = state {
            // Kept until the file changes: no room left from reading it
            // (up to half the list, 6 MB for a file of 50k objects).
            state.objects.shrink_to_fit();
            let shared: Arc<Path> = Arc::from(path);
            for (i, o) in state.objects.iter().enumerate() {
                // Nearly every key is defined once: room for one, not four.
                let at = self.index.entry(o.key.clone()).or_insert_with(|| Vec::with_capacity(1));
                at.push((shared.clone(), i));
                at.sort();
                self.dirty.insert(o.key.clone());
            }
            self.files.insert(path.to_path_buf(), state);
        }
        old
    }

    /// Saves the copies of the files read since the last save: the agent
    /// calls it once the kernel holds what they put in force. The writes
    /// (and their sync) run on a thread of their own, one save at a time,
    /// so they are not on the way of the next change either: the 1,000
    /// copies of a burst held the agent's loop for hundreds of ms on a
    /// disk. While one runs, what is read meanwhile waits for the next
    /// call (the next pass; the resync's at the latest). A crash before a
    /// save ends leaves the copies one version behind, as a crash before
    /// the change was read would. Returns what the saves finished since
    /// the last call could not save.
    pub fn save_pending(&mut self) -> Vec<InputError> {
        let errors = self.finished_save(false);
        let Some(saved) = self.saved.as_ref().filter(|_| self.saving.is_none()) else { return errors };
        // A crash before this leaves the copy of a deleted file, which the
        // next start removes (its file is not there).
        let gone = std::mem::take(&mut self.unsaved_gone);
        let unsaved = std::mem::take(&mut self.unsaved);
        // Nothing writes the copies now, so the last valid versions read
        // for the copies of broken objects are the last saved.
        let copies: Vec<(String, Vec<String>)> = unsaved
            .into_iter()
            .filter(|(path, _)| self.files.contains_key(path))
            .map(|(path, raw)| (self.rel(&path), self.copy_of(saved, &path, raw)))
            .collect();
        if !gone.is_empty() || !copies.is_empty() {
            let saved = saved.clone();
            self.saving = Some(std::thread::spawn(move || {
                for rel in gone {
                    saved.remove(&rel);
                }
                saved.write_many(copies)
            }));
        }
        errors
    }

    /// Waits for the save running, then saves what is left and waits for
    /// that too (the agent stopping). Returns what could not be saved.
    pub fn finish_saving(&mut self) -> Vec<InputError> {
        let mut errors = self.finished_save(true);
        errors.extend(self.save_pending());
        errors.extend(self.finished_save(true));
        errors
    }

    /// What the save running could not save, once it has ended (or after
    /// waiting for it).
    fn finished_save(&mut self, wait: bool) -> Vec<InputError> {
        if !self.saving.as_ref().is_some_and(|h| wait || h.is_finished()) {
            return Vec::new();
        }
        let results = self.saving.take().expect("a save").join().unwrap_or_else(|_| {
            tracing::error!("saving the manifests' copies failed (the thread panicked); they stay a version behind");
            Vec::new()
        });
        results.into_iter().filter_map(|(rel, r)| r.err().map(|e| save_error(&self.dir.join(rel), &e))).collect()
    }

    fn save_or_say(&self, path: &Path, raw: Vec<String>) -> Option<InputError> {
        let saved = self.saved.as_ref()?;
        let e = saved.write(&self.rel(path), self.copy_of(saved, path, raw)).err()?;
        Some(save_error(path, &e))
    }

    /// The objects `path` puts in force, to save: each object as read if it
    /// is valid, else its last valid version if the saved copy has one, else
    /// as read (it fails the same way again).
    fn copy_of(&self, saved: &Saved, path: &Path, raw: Vec<String>) -> Vec<String> {
        let rel = self.rel(path);
        let objects = &self.files[path].objects;
        let mut before: Option<HashMap<super::convert::ObjKey, String>> = None;
        let mut out = Vec::with_capacity(raw.len());
        for (checked, value) in objects.iter().zip(raw) {
            if checked.result.is_ok() {
                out.push(value);
                continue;
            }
            let before = before.get_or_insert_with(|| {
                let values = saved.read(&rel).map(|(v, _)| v).unwrap_or_default();
                let source = path.display().to_string();
                let (checked, values, _) = check_documents(values, &source, true);
                checked.into_iter().zip(values).filter(|(c, _)| c.result.is_ok()).map(|(c, v)| (c.key, v)).collect()
            });
            out.push(before.get(&checked.key).cloned().unwrap_or(value));
        }
        out
    }

    /// The snapshot, validating again only the keys whose objects changed
    /// (every object of such a key, in file order: the first one wins) and
    /// patching the last snapshot with them. Unchanged objects stay the
    /// same `Arc`s, which the compiler's memo compares by pointer.
    fn build(&mut self) -> Snapshot {
        let dirty = std::mem::take(&mut self.dirty);
        let mut at: Vec<&(Arc<Path>, usize)> = dirty.iter().filter_map(|k| self.index.get(k)).flatten().collect();
        at.sort();
        let mut sources: Vec<String> = Vec::new();
        let mut pairs: Vec<(usize, &Checked)> = Vec::with_capacity(at.len());
        for (i, (path, pos)) in at.iter().enumerate() {
            if i == 0 || at[i - 1].0 != *path {
                sources.push(path.display().to_string());
            }
            pairs.push((sources.len() - 1, &self.files[&**path].objects[*pos]));
        }
        let pairs = pairs.iter().map(|(s, o)| (sources[*s].as_str(), *o));
        let part = if std::mem::take(&mut self.all_dirty) {
            self.last = Patched::default();
            self.validator.snapshot(pairs)
        } else {
            self.validator.snapshot_of(&dirty, pairs)
        };
        self.last.patch(&dirty, part);
        self.last.snapshot(self.files.values().flat_map(|f| f.errors.iter().cloned()).collect())
    }
}

/// The file's text, if it is no larger than [`MAX_FILE_BYTES`] and did not
/// change size since it was listed.
fn read_file(path: &Path, stamp: Stamp) -> Result<String, String> {
    if stamp.len > MAX_FILE_BYTES {
        return Err(format!("too large: {} bytes, more than the {MAX_FILE_BYTES} palisade reads", stamp.len));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("too large: more than the {MAX_FILE_BYTES} bytes palisade reads"));
    }
    String::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))
}

/// A file's objects, the documents they came from (if kept, as JSON), and
/// the documents that are not Kubernetes objects.
pub(super) type Objects = (Vec<Checked>, Vec<String>, Vec<InputError>);

/// Parses one file into the objects palisade reads (with the documents they
/// came from when `keep_raw`).
pub(super) fn parse(text: &str, source: &str, keep_raw: bool) -> Result<Objects, String> {
    let docs: Vec<Value> = if source.ends_with(".json") {
        // JSON is YAML too, but a JSON parser reads it many times faster,
        // and straight from the text into the objects' types. The text is
        // checked first as a `Value` would be (strings, numbers, depth),
        // with no tree built; a file that does not check is read the
        // `Value` way, for the same error.
        if let Some(docs) = json_documents(text)
            && let Ok(objects) = check_json_documents(&docs, source, keep_raw)
        {
            return Ok(objects);
        }
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(|e| {
            let first = e.to_string();
            first.lines().next().unwrap_or("invalid YAML").to_string()
        })?
    };
    Ok(check_documents(docs, source, keep_raw))
}

/// A source dropped leaves no save writing behind it (its outcomes were
/// for a status no one reads now).
impl Drop for FileSource {
    fn drop(&mut self) {
        if let Some(h) = self.saving.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("palisade-files-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }

    #[test]
    fn reads_multi_document_lists_and_json_and_reports_broken_files() {
        let d = tmpdir();
        std::fs::write(
            d.join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ignored}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x}\n  spec: {containers: [{name: c}]}\n  status: {podIP: 10.0.0.1}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("b.json"),
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"x"},"spec":{"podSelector":{}}}"#,
        )
        .unwrap();
        std::fs::write(d.join(".hidden.yaml"), "not: [valid").unwrap();
        let mut src = FileSource::new(&d);
        let s = src.load();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.input.namespaces.len(), 1);
        assert_eq!(s.input.pods.len(), 1);
        assert_eq!(s.input.policies.len(), 1);
        assert_eq!(src.loaded_fingerprint(), fingerprint(&d, false));

        // A file that stops parsing keeps its objects, and says so.
        std::fs::write(d.join("b.json"), r#"{"apiVersion": "#).unwrap();
        assert_ne!(src.loaded_fingerprint(), fingerprint(&d, false));
        let s = src.load();
        assert_eq!(s.input.policies.len(), 1);
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].source.ends_with("b.json"));
        assert!(s.errors[0].action.contains("before"), "{:?}", s.errors[0]);

        // Deleting the file removes its objects.
        std::fs::remove_file(d.join("b.json")).unwrap();
        let s = src.load();
        assert!(s.input.policies.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";

    /// A manifest directory and a state directory, as the agent reads them.
    fn enforcing(d: &Path) -> FileSource {
        let opts = Options { state_dir: Some(d.join(".state")), ..Default::default() };
        FileSource::enforcing(d.join("m"), &opts).unwrap()
    }

    fn setup() -> PathBuf {
        let d = tmpdir();
        std::fs::create_dir_all(d.join("m")).unwrap();
        std::fs::set_permissions(d.join("m"), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn ports(s: &Snapshot) -> Vec<usize> {
        s.input.policies.values().map(|p| p.ingress.as_ref().map_or(0, Vec::len)).collect()
    }

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn after_a_restart_a_file_that_does_not_read_keeps_its_saved_copy() {
        let d = setup();
        let f = d.join("m/p.yaml");
        std::fs::write(&f, POLICY).unwrap();
        let s = enforcing(&d).load();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(ports(&s), [1]);

        // Down; the file breaks; up again: the saved copy is in force.
        std::fs::write(&f, "apiVersion: networking.k8s.io/v1\nkind: [").unwrap();
        let mut src = enforcing(&d);
        let s = src.load();
        assert_eq!(ports(&s), [1], "the saved copy stays in force");
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].source, f.display().to_string());
        assert!(s.errors[0].action.contains("last good copy, saved in"), "{:?}", s.errors[0]);

        // Fixed: the new content is in force, and saved once in force.
        std::fs::write(&f, POLICY.replace("ingress: [{ports: [{port: 80}]}]", "ingress: []")).unwrap();
        let s = src.load();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(ports(&s), [0]);
        assert!(src.save_pending().is_empty());
        assert!(src.finish_saving().is_empty());
        std::fs::write(&f, "{").unwrap();
        assert_eq!(ports(&enforcing(&d).load()), [0], "the copy follows the last good content");

        // Deleted while down: gone for good, copy too.
        std::fs::remove_file(&f).unwrap();
        assert!(enforcing(&d).load().input.policies.is_empty());
        std::fs::write(&f, "{").unwrap();
        let s = enforcing(&d).load();
        assert!(s.input.policies.is_empty(), "a deleted file must not come back");
        assert_eq!(s.errors[0].action, "ignored");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn after_a_restart_an_object_that_no_longer_validates_keeps_its_saved_version() {
        let d = setup();
        let f = d.join("m/p.yaml");
        std::fs::write(&f, POLICY).unwrap();
        enforcing(&d).load();
        std::fs::write(&f, POLICY.replace("port: 80", "port: 70000")).unwrap();
        let s = enforcing(&d).load();
        assert_eq!(ports(&s), [1]);
        assert!(s.errors[0].action.contains("last valid"), "{:?}", s.errors[0]);
        // Saved as the valid version, not the broken one.
        let s = enforcing(&d).load();
        assert!(s.errors[0].action.contains("last valid"), "{:?}", s.errors[0]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_read_at_start_keeps_the_saved_copies() {
        let d = setup();
        std::fs::write(d.join("m/p.yaml"), POLICY).unwrap();
        enforcing(&d).load();
        let mut src = enforcing(&d);
        std::fs::rename(d.join("m"), d.join("gone")).unwrap();
        let s = src.load();
        assert_eq!(ports(&s), [1]);
        assert!(s.errors[0].action.contains("saved"), "{:?}", s.errors[0]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    impl FileSource {
        /// Forgets which keys changed: the next snapshot validates all.
        fn validate_all_again(&mut self) {
            self.all_dirty = true;
            self.dirty = self.index.keys().cloned().collect();
        }
    }

    #[test]
    fn a_change_validates_only_its_keys_and_gives_what_validating_all_gives() {
        let d = tmpdir();
        let put = |name: &str, text: &str| {
            std::fs::write(d.join(".tmp"), text).unwrap();
            std::fs::rename(d.join(".tmp"), d.join(name)).unwrap();
        };
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n";
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n---\n";
        let other = POLICY.replace("port: 80", "port: 81");
        let broken = POLICY.replace("port: 80", "port: 70000");
        let steps: Vec<(&str, Option<String>)> = vec![
            ("a.yaml", Some(format!("{ns}{pod}{POLICY}"))),
            (
                "b.yaml",
                Some(format!(
                    "{other}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: x}}\nspec: {{clusterIP: 10.96.0.9}}\n"
                )),
            ),
            ("a.yaml", Some(format!("{ns}{pod}{broken}"))),
            ("a.yaml", None),
            ("a.yaml", Some(format!("{ns}{pod}{POLICY}"))),
            ("b.yaml", Some("{".into())),
            ("b.yaml", Some(broken.clone())),
            ("c.yaml", Some(format!("{ns}{broken}"))),
            ("a.yaml", Some(pod.into())),
        ];
        let (mut incremental, mut whole) = (FileSource::new(&d), FileSource::new(&d));
        let mut last: Option<Snapshot> = None;
        for (i, (file, text)) in steps.into_iter().enumerate() {
            match &text {
                Some(t) => put(file, t),
                None => std::fs::remove_file(d.join(file)).unwrap(),
            }
            let got = incremental.load();
            whole.validate_all_again();
            let want = whole.load();
            assert_eq!(got.input, want.input, "step {i}");
            assert_eq!(got.errors, want.errors, "step {i}");
            // Objects of files that did not change are the same objects.
            if let Some(last) = last.filter(|_| file == "b.yaml") {
                let (a, b) = (&last.input.pods[&("x".into(), "q".into())], &got.input.pods[&("x".into(), "q".into())]);
                assert!(Arc::ptr_eq(a, b), "step {i}");
            }
            last = Some(got);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_reload_reads_only_the_named_paths_and_agrees_with_a_walk() {
        let d = setup();
        let m = d.join("m");
        let (mut noted, mut walked) = (enforcing(&d), enforcing(&d));
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        std::fs::write(m.join("ns.yaml"), ns).unwrap();
        noted.load();
        // Written the way editors and the tests do: a hidden file renamed.
        let put = |name: &str, text: &str| -> Vec<PathBuf> {
            std::fs::write(m.join(".tmp"), text).unwrap();
            std::fs::rename(m.join(".tmp"), m.join(name)).unwrap();
            vec![m.join(".tmp"), m.join(name)]
        };
        let set = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        type Step<'a> = Box<dyn Fn() -> Vec<PathBuf> + 'a>;
        let steps: Vec<(&str, Step)> = vec![
            ("a new file", Box::new(|| put("p.yaml", POLICY))),
            ("an edit", Box::new(|| put("p.yaml", &POLICY.replace("[{port: 80}]", "[{port: 80}, {port: 81}]")))),
            ("a file that breaks", Box::new(|| put("p.yaml", "{"))),
            ("a file fixed", Box::new(|| put("p.yaml", POLICY))),
            (
                "a file others may write",
                Box::new(|| {
                    set(&m.join("p.yaml"), 0o666);
                    vec![m.join("p.yaml")]
                }),
            ),
            (
                "refused, then edited",
                Box::new(|| {
                    std::fs::write(m.join("p.yaml"), POLICY.replace("port: 80", "port: 82")).unwrap();
                    vec![m.join("p.yaml")]
                }),
            ),
            (
                "trusted again",
                Box::new(|| {
                    set(&m.join("p.yaml"), 0o644);
                    vec![m.join("p.yaml")]
                }),
            ),
            (
                "a new directory",
                Box::new(|| {
                    std::fs::create_dir(m.join("sub")).unwrap();
                    std::fs::write(m.join("sub/q.yaml"), POLICY.replace("name: p", "name: q")).unwrap();
                    vec![m.join("sub")]
                }),
            ),
            (
                "a file in it",
                Box::new(|| {
                    std::fs::write(m.join("sub/q.yaml"), POLICY.replace("name: p", "name: q").replace("80", "83"))
                        .unwrap();
                    vec![m.join("sub/q.yaml")]
                }),
            ),
            (
                "a file deleted",
                Box::new(|| {
                    std::fs::remove_file(m.join("p.yaml")).unwrap();
                    vec![m.join("p.yaml")]
                }),
            ),
            (
                "a directory deleted",
                Box::new(|| {
                    std::fs::remove_dir_all(m.join("sub")).unwrap();
                    vec![m.join("sub/q.yaml"), m.join("sub")]
                }),
            ),
        ];
        for (what, step) in steps {
            let paths = step();
            let walks = noted.walks;
            let got = noted.reload(&paths);
            // Both keep their copies in one directory: one save at a time.
            assert!(noted.finish_saving().is_empty(), "{what}: saved");
            // Only a directory named (new or gone) takes a walk.
            let walked_here = matches!(what, "a new directory" | "a directory deleted");
            assert_eq!(noted.walks - walks, usize::from(walked_here), "{what}: walks");
            let want = walked.load();
            assert!(walked.finish_saving().is_empty(), "{what}: saved");
            assert_eq!(got.input, want.input, "{what}");
            assert_eq!(got.errors, want.errors, "{what}");
            assert_eq!(noted.loaded_fingerprint(), fingerprint(&m, true), "{what}");
        }

        // Nothing is walked: a change no path names waits for the walk.
        std::fs::write(m.join("unnamed.yaml"), POLICY).unwrap();
        assert!(noted.reload(&[]).input.policies.is_empty());
        assert_eq!(noted.load().input.policies.len(), 1);
        // A symlink anywhere: every load walks.
        std::os::unix::fs::symlink(m.join("unnamed.yaml"), m.join("link.yaml")).unwrap();
        noted.load();
        std::fs::write(m.join("unnamed.yaml"), POLICY.replace("name: p", "name: r")).unwrap();
        let s = noted.reload(&[]);
        assert!(s.input.policies.contains_key(&("x".into(), "r".into())), "walked, read through the symlink");
        drop((noted, walked));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_20000_object_yaml_file_loads() {
        let d = tmpdir();
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: a{}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]}}\nstatus: {{podIP: 10.{}.{}.{}}}\n---\n",
                i % 100,
                i / 65536,
                (i / 256) % 256,
                i % 256
            ));
        }
        std::fs::write(d.join("pods.yaml"), text).unwrap();
        let s = FileSource::new(&d).load();
        assert!(s.errors.is_empty(), "{:?}", s.errors.first());
        assert_eq!(s.input.pods.len(), 20_000);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn paths_others_could_write_are_refused_by_name() {
        let d = setup();
        let f = d.join("m/p.yaml");
        std::fs::write(&f, POLICY).unwrap();
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let refused = |d: &Path| match FileSource::enforcing(d.join("m"), &Options::default()) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        set(&f, 0o664);
        let e = refused(&d);
        assert!(e.contains(&f.display().to_string()) && e.contains("group"), "{e}");
        set(&f, 0o644);
        set(&d.join("m"), 0o777);
        let e = refused(&d);
        assert!(e.contains(&d.join("m").display().to_string()) && e.contains("everyone"), "{e}");
        set(&d.join("m"), 0o755);
        std::fs::write(d.join("outside.yaml"), POLICY).unwrap();
        std::os::unix::fs::symlink(d.join("outside.yaml"), d.join("m/link.yaml")).unwrap();
        let e = refused(&d);
        assert!(e.contains("link.yaml") && e.contains("outside"), "{e}");
        let opts = Options { allow_insecure: true, ..Default::default() };
        assert!(FileSource::enforcing(d.join("m"), &opts).is_ok());
        std::fs::remove_file(d.join("m/link.yaml")).unwrap();
        assert_eq!(refused(&d), "");

        // Later: a file that turns group-writable keeps what it held.
        let mut src = FileSource::enforcing(d.join("m"), &Options::default()).unwrap();
        assert_eq!(ports(&src.load()), [1]);
        std::fs::write(&f, POLICY.replace("ingress: [{ports: [{port: 80}]}]", "ingress: [{}, {}]")).unwrap();
        set(&f, 0o666);
        let s = src.load();
        assert_eq!(ports(&s), [1]);
        assert_eq!(s.errors[0].source, f.display().to_string());
        assert!(s.errors[0].message.contains("everyone") && s.errors[0].action.contains("before"), "{:?}", s.errors);
        set(&f, 0o644);
        assert_eq!(ports(&src.load()), [2]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
