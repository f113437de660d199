//! The standalone source: a directory of Kubernetes manifests (YAML or JSON,
//! multi-document, `kind: List` too), watched for changes. Files that did
//! not change since the last load are not parsed again; a file that no
//! longer parses keeps its last parsed objects in force.

use super::convert::{Checked, check_documents};
use super::objects::Validator;
use super::{InputError, Snapshot};
use serde_json::Value;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What tells us a file changed without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

struct FileState {
    stamp: Stamp,
    /// Parsed and validated when the file was read.
    objects: Vec<Checked>,
    /// Problems with the file as a whole, or with documents of unknown shape.
    errors: Vec<InputError>,
}

pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    validator: Validator,
    fingerprint: u64,
}

fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext))
}

/// Manifest files under `dir` (recursively), sorted, with their stamps.
fn list(dir: &Path) -> std::io::Result<Vec<(PathBuf, Stamp)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                    stack.push(path);
                }
            } else if meta.is_file() && is_manifest(&path) {
                let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
                out.push((path, Stamp { len: meta.len(), mtime_ns, ino: meta.ino() }));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn fingerprint_of(files: &[(PathBuf, Stamp)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

/// A cheap digest of the directory's manifests (names, sizes, mtimes): when
/// it differs from the one of the last load, the kernel is not in sync.
pub fn fingerprint(dir: &Path) -> u64 {
    list(dir).map(|f| fingerprint_of(&f)).unwrap_or(0)
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> FileSource {
        FileSource { dir: dir.into(), files: BTreeMap::new(), validator: Validator::default(), fingerprint: 0 }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fingerprint of what the last [`FileSource::load`] read.
    pub fn loaded_fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Reads what changed and returns the whole current state.
    pub fn load(&mut self) -> Snapshot {
        let listing = match list(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                // An unreadable directory changes nothing that is enforced.
                let mut snap = self.build();
                snap.errors.push(InputError {
                    source: self.dir.display().to_string(),
                    object: String::new(),
                    field: String::new(),
                    message: format!("cannot read the directory: {e}"),
                    action: "keeping the state read before".into(),
                });
                return snap;
            }
        };
        self.fingerprint = fingerprint_of(&listing);
        let present: std::collections::BTreeSet<&PathBuf> = listing.iter().map(|(p, _)| p).collect();
        self.files.retain(|p, _| present.contains(p));
        for (path, stamp) in &listing {
            if self.files.get(path).is_some_and(|f| f.stamp == *stamp) {
                continue;
            }
            let source = path.display().to_string();
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| parse(&text, &source));
            match parsed {
                Ok((objects, errors)) => {
                    self.files.insert(path.clone(), FileState { stamp: *stamp, objects, errors });
                }
                Err(message) => {
                    // Keep what the file held before; report the file.
                    let objects = self.files.remove(path).map(|f| f.objects).unwrap_or_default();
                    let action = if objects.is_empty() {
                        "ignored".to_string()
                    } else {
                        "keeping the objects it held before".to_string()
                    };
                    let errors =
                        vec![InputError { source, object: String::new(), field: String::new(), message, action }];
                    self.files.insert(path.clone(), FileState { stamp: *stamp, objects, errors });
                }
            }
        }
        self.build()
    }

    fn build(&mut self) -> Snapshot {
        let sources: Vec<String> = self.files.keys().map(|p| p.display().to_string()).collect();
        let pairs =
            sources.iter().zip(self.files.values()).flat_map(|(s, f)| f.objects.iter().map(move |o| (s.as_str(), o)));
        let mut snap = self.validator.snapshot(pairs);
        let file_errors: Vec<InputError> = self.files.values().flat_map(|f| f.errors.iter().cloned()).collect();
        snap.errors.splice(0..0, file_errors);
        snap
    }
}

/// Parses one file into the objects palisade reads (see
/// [`check_documents`]).
pub(super) fn parse(text: &str, source: &str) -> Result<(Vec<Checked>, Vec<InputError>), String> {
    let docs: Vec<Value> = if source.ends_with(".json") {
        // JSON is YAML too, but a JSON parser reads it many times faster.
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| {
            let first = e.to_string();
            first.lines().next().unwrap_or("invalid YAML").to_string()
        })?
    };
    Ok(check_documents(docs, source))
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
        assert_eq!(src.loaded_fingerprint(), fingerprint(&d));

        // A file that stops parsing keeps its objects, and says so.
        std::fs::write(d.join("b.json"), r#"{"apiVersion": "#).unwrap();
        assert_ne!(src.loaded_fingerprint(), fingerprint(&d));
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
}
