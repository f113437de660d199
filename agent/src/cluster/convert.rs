//! Kubernetes objects -> the policy model, as the API server would accept
//! them: its defaulting and validation, one module per kind (each defines
//! the `from_k8s` constructor of its model type), every error naming the
//! field at fault as `kubectl` would. Every source goes through here, and so
//! should every test, benchmark and example: [`manifests_to_input`] and
//! [`objects_to_input`] run the agent's own parsing and validation.

pub mod cluster_policy;
mod fields;
mod namespace;
mod node;
mod pod;
mod policy;
mod service;

pub use cluster_policy::K8sClusterPolicy;
pub use namespace::AUDIT_ANNOTATION;

use super::objects::Validator;
use super::{InputError, files};
use crate::policy::model::{ClusterPolicy, Input, Namespace, NodeObject, Pod, Policy, Service};
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod, Service as K8sService};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sPolicy;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// Manifests (YAML or JSON text; multi-document, `kind: List`) validated
/// exactly as the agent validates them, as the compiler's input.
pub fn manifests_to_input(text: &str) -> Result<Input, Vec<InputError>> {
    const SOURCE: &str = "manifests";
    let (objects, _, errors) = files::parse(text, SOURCE, false).map_err(|message| {
        vec![InputError {
            source: SOURCE.into(),
            object: String::new(),
            field: String::new(),
            message,
            action: "ignored".into(),
        }]
    })?;
    strict_input(SOURCE, &objects, errors)
}

/// The same, from already-parsed objects (serde_json::Value each with
/// apiVersion/kind).
pub fn objects_to_input(objects: impl IntoIterator<Item = Value>) -> Result<Input, Vec<InputError>> {
    const SOURCE: &str = "objects";
    let (objects, _, errors) = check_documents(objects, SOURCE, false);
    strict_input(SOURCE, &objects, errors)
}

/// [`objects_to_input`], except that what the agent reports but still
/// reads (warnings: an unsupported peer, a node address that is not one)
/// comes back beside the input instead of failing.
pub fn objects_to_input_warned(
    objects: impl IntoIterator<Item = Value>,
) -> Result<(Input, Vec<InputError>), Vec<InputError>> {
    const SOURCE: &str = "objects";
    let (objects, _, mut errors) = check_documents(objects, SOURCE, false);
    let snap = Validator::default().snapshot(objects.iter().map(|o| (SOURCE, o)));
    let (warnings, others): (Vec<InputError>, Vec<InputError>) =
        snap.errors.into_iter().partition(|e| e.action.is_empty());
    errors.extend(others);
    if errors.is_empty() { Ok((snap.input, warnings)) } else { Err(errors) }
}

/// The input the agent would compile, unless anything at all was wrong.
fn strict_input(source: &str, objects: &[Checked], mut errors: Vec<InputError>) -> Result<Input, Vec<InputError>> {
    let snap = Validator::default().snapshot(objects.iter().map(|o| (source, o)));
    errors.extend(snap.errors);
    if errors.is_empty() { Ok(snap.input) } else { Err(errors) }
}

/// Checks the documents of one source (a file's, say). Documents of other
/// kinds (Deployments...) are skipped, `List`s unpacked; documents that are
/// not Kubernetes objects at all are reported. With `keep_raw`, also the
/// documents the objects came from (the file source saves them), as JSON
/// text (compact from a `Value`; a JSON file's as written): a tenth of the
/// memory of a `Value`, and they are kept until saved.
pub(super) fn check_documents(
    docs: impl IntoIterator<Item = Value>,
    source: &str,
    keep_raw: bool,
) -> super::files::Objects {
    let mut objects = Vec::new();
    let mut raw = Vec::new();
    let mut errors = Vec::new();
    let mut push = |value: Value, path: String| {
        let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if api.is_empty() || kind.is_empty() {
            errors.push(InputError {
                source: source.to_string(),
                object: path,
                field: if api.is_empty() { "apiVersion".into() } else { "kind".into() },
                message: "Required value: not a Kubernetes object".into(),
                action: "ignored".into(),
            });
            return;
        }
        if let Some(k) = Kind::of(api, kind) {
            if keep_raw {
                raw.push(value.to_string());
            }
            objects.push(Checked::new(&Raw::from_value(k, value)));
        }
    };
    for (i, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        if doc.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List")) {
            // Taken, not copied: a 1000-object list is megabytes of `Value`s,
            // and a copy of it would set the agent's peak memory at start.
            let items = match doc.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            for (j, item) in items.into_iter().enumerate() {
                push(item, format!("document {} items[{j}]", i + 1));
            }
        } else {
            push(doc, format!("document {}", i + 1));
        }
    }
    (objects, raw, errors)
}

/// A JSON document read through, as `serde_json::Value` would read it
/// (strings and their escapes, numbers in range, nesting depth), with
/// nothing kept: what [`check_json_documents`] may take.
pub(super) struct JsonChecked;

impl<'de> serde::Deserialize<'de> for JsonChecked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonChecked;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<JsonChecked, E> {
                Ok(JsonChecked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<JsonChecked, E> {
                Ok(JsonChecked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<JsonChecked, E> {
                Ok(JsonChecked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<JsonChecked, E> {
                Ok(JsonChecked)
            }
            fn visit_str<E>(self, _: &str) -> Result<JsonChecked, E> {
                Ok(JsonChecked)
            }
            fn visit_unit<E>(self) -> Result<JsonChecked, E> {
                Ok(JsonChecked)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonChecked, A::Error> {
                while seq.next_element::<JsonChecked>()?.is_some() {}
                Ok(JsonChecked)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonChecked, A::Error> {
                while map.next_entry::<JsonChecked, JsonChecked>()?.is_some() {}
                Ok(JsonChecked)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The documents of a JSON text, as text, if every one reads as a `Value`
/// would read it ([`JsonChecked`]); None if one does not (the `Value` way
/// then says why).
pub(super) fn json_documents(text: &str) -> Option<Vec<&str>> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<JsonChecked>();
    let mut docs = Vec::new();
    let mut start = 0;
    while let Some(doc) = stream.next() {
        doc.ok()?;
        let end = stream.byte_offset();
        docs.push(text.get(start..end)?.trim_start());
        start = end;
    }
    Some(docs)
}

/// The elements of the `"items"` array of a JSON object's text (one that
/// reads as a `Value`), each as text; None where the key is not written
/// plainly or holds no array (the `Value` way reads those).
fn list_items(doc: &str) -> Option<Vec<&str>> {
    let b = doc.as_bytes();
    let mut i = ws(b, 0);
    (b.get(i) == Some(&b'{')).then_some(())?;
    i += 1;
    loop {
        i = ws(b, i);
        let key_end = string_end(b, i)?;
        let key = doc.get(i + 1..key_end - 1)?;
        i = ws(b, key_end);
        (b.get(i) == Some(&b':')).then_some(())?;
        i = ws(b, i + 1);
        if key == "items" {
            (b.get(i) == Some(&b'[')).then_some(())?;
            let mut items = Vec::new();
            i = ws(b, i + 1);
            if b.get(i) == Some(&b']') {
                return Some(items);
            }
            loop {
                let end = value_end(b, i)?;
                items.push(doc.get(i..end)?);
                i = ws(b, end);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b']' => return Some(items),
                    _ => return None,
                }
            }
        }
        i = ws(b, value_end(b, i)?);
        (b.get(i) == Some(&b',')).then_some(())?;
        i += 1;
    }
}

/// The first index at or after `i` that is not JSON whitespace.
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the string that starts at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    (b.get(i) == Some(&b'"')).then_some(())?;
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Just past the value that starts at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            loop {
                match b.get(j)? {
                    b'"' => j = string_end(b, j)?,
                    b'{' | b'[' => {
                        depth += 1;
                        j += 1;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => j += 1,
                }
            }
        }
        _ => {
            let mut j = i;
            while !matches!(b.get(j), None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// [`check_documents`] for JSON documents still as text (that read as
/// [`JsonChecked`]): each object is read from its text into its type, with
/// no `Value` tree in between (building and dropping those was a third of
/// a 50k-pod first load). Anything else (not an object, no apiVersion or
/// kind, a field that does not read) goes the `Value` way, so what it
/// reports is the same. Err: a document that does not read as a `Value`
/// (none that [`json_documents`] gave; the caller reads the file the
/// `Value` way then).
pub(super) fn check_json_documents(
    docs: &[&str],
    source: &str,
    keep_raw: bool,
) -> Result<super::files::Objects, serde_json::Error> {
    /// What is needed of an object before reading it whole.
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "apiVersion", default, borrow)]
        api_version: Option<std::borrow::Cow<'a, str>>,
        #[serde(default, borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        /// Read through only (a repeated key is an error, as a `Value`
        /// would keep the last); [`list_items`] finds them.
        #[serde(rename = "items", default)]
        _items: Option<serde::de::IgnoredAny>,
    }
    /// Only an object's text (a `Head` would read an array too).
    fn head(text: &str) -> Option<Head<'_>> {
        text.trim_start().starts_with('{').then(|| serde_json::from_str(text).ok()).flatten()
    }
    let (mut objects, mut raw, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    // Document `i` (item `j` of its list) the `Value` way, named as
    // `check_documents` names it among all of them.
    let slow = |text: &str, i: usize, j: Option<usize>| -> Result<super::files::Objects, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        let (doc, named, name) = match j {
            None => (value, "document 1".to_string(), format!("document {}", i + 1)),
            Some(j) => (
                serde_json::json!({"kind": "List", "items": [value]}),
                "document 1 items[0]".to_string(),
                format!("document {} items[{j}]", i + 1),
            ),
        };
        let (o, r, mut e) = check_documents([doc], source, keep_raw);
        for e in &mut e {
            e.object = e.object.replacen(&named, &name, 1);
        }
        Ok((o, r, e))
    };
    let mut take = |(o, r, e): super::files::Objects| {
        objects.extend(o);
        raw.extend(r);
        errors.extend(e);
    };
    let named = |h: &Head| -> Option<Option<Kind>> {
        let api = h.api_version.as_deref().filter(|s| !s.is_empty())?;
        let kind = h.kind.as_deref().filter(|s| !s.is_empty())?;
        Some(Kind::of(api, kind))
    };
    for (i, &doc) in docs.iter().enumerate() {
        let Some(list) = head(doc) else {
            take(slow(doc, i, None)?);
            continue;
        };
        let items: Vec<(&str, Option<usize>)> = match list.kind.as_deref() {
            Some(k) if k == "List" || k.ends_with("List") => match list_items(doc) {
                Some(items) => items.into_iter().enumerate().map(|(j, item)| (item, Some(j))).collect(),
                None => {
                    take(slow(doc, i, None)?);
                    continue;
                }
            },
            _ => vec![(doc, None)],
        };
        for (item, j) in items {
            match head(item).as_ref().and_then(named) {
                // Not an object, or no apiVersion or kind: reported.
                None => take(slow(item, i, j)?),
                // A kind palisade does not read.
                Some(None) => {}
                Some(Some(kind)) => match Raw::from_json(kind, item) {
                    Some(object) => {
                        let r = if keep_raw { vec![item.to_string()] } else { Vec::new() };
                        take((vec![Checked::new(&object)], r, Vec::new()));
                    }
                    None => take(slow(item, i, j)?),
                },
            }
        }
    }
    Ok((objects, raw, errors))
}

/// One problem with one field of an object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, Vec<FieldError>> {
    if errors.is_empty() { Ok(value) } else { Err(errors) }
}

/// The kinds palisade reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    ClusterNetworkPolicy,
    Node,
}

impl Kind {
    /// The kind an object's apiVersion/kind names, if palisade reads it.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        match (api_version, kind) {
            ("v1", "Namespace") => Some(Kind::Namespace),
            ("v1", "Pod") => Some(Kind::Pod),
            ("networking.k8s.io/v1", "NetworkPolicy") => Some(Kind::NetworkPolicy),
            ("v1", "Service") => Some(Kind::Service),
            (cluster_policy::API_VERSION, cluster_policy::KIND) => Some(Kind::ClusterNetworkPolicy),
            ("v1", "Node") => Some(Kind::Node),
            _ => None,
        }
    }

    /// Cluster-scoped kinds have no namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::ClusterNetworkPolicy | Kind::Node)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::Node => "Node",
        })
    }
}

/// An object as a source read it.
#[derive(Clone, Debug)]
pub enum Raw {
    Namespace(K8sNamespace),
    Pod(Box<K8sPod>),
    Policy(K8sPolicy),
    Service(Box<K8sService>),
    ClusterPolicy(Box<K8sClusterPolicy>),
    Node(Box<K8sNode>),
    /// It did not even deserialize as its kind.
    Broken {
        kind: Kind,
        value: Value,
        error: FieldError,
    },
}

impl Raw {
    /// Deserializes a JSON value of a known kind, naming the failing field.
    pub fn from_value(kind: Kind, value: Value) -> Raw {
        fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, FieldError> {
            serde_path_to_error::deserialize(v)
                .map_err(|e| FieldError { field: e.path().to_string(), message: e.inner().to_string() })
        }
        let parsed = match kind {
            Kind::Namespace => de(&value).map(Raw::Namespace),
            Kind::Pod => de(&value).map(|p| Raw::Pod(Box::new(p))),
            Kind::NetworkPolicy => de(&value).map(Raw::Policy),
            Kind::Service => de(&value).map(|s| Raw::Service(Box::new(s))),
            Kind::ClusterNetworkPolicy => de(&value).map(|c| Raw::ClusterPolicy(Box::new(c))),
            Kind::Node => de(&value).map(|n| Raw::Node(Box::new(n))),
        };
        parsed.unwrap_or_else(|error| Raw::Broken { kind, value, error })
    }

    /// An object of a known kind read straight from its JSON text; None
    /// if it does not read (its `Value` says why: [`Raw::from_value`]).
    pub fn from_json(kind: Kind, text: &str) -> Option<Raw> {
        fn de<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
            serde_json::from_str(text).ok()
        }
        match kind {
            Kind::Namespace => de(text).map(Raw::Namespace),
            Kind::Pod => de(text).map(|p| Raw::Pod(Box::new(p))),
            Kind::NetworkPolicy => de(text).map(Raw::Policy),
            Kind::Service => de(text).map(|s| Raw::Service(Box::new(s))),
            Kind::ClusterNetworkPolicy => de(text).map(|c| Raw::ClusterPolicy(Box::new(c))),
            Kind::Node => de(text).map(|n| Raw::Node(Box::new(n))),
        }
    }

    pub fn key(&self) -> ObjKey {
        let (kind, ns, name) = match self {
            Raw::Namespace(o) => (Kind::Namespace, None, o.metadata.name.clone()),
            Raw::Pod(o) => (Kind::Pod, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Raw::Policy(o) => (Kind::NetworkPolicy, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Raw::Service(o) => (Kind::Service, o.metadata.namespace.clone(), o.metadata.name.clone()),
            Raw::ClusterPolicy(o) => (Kind::ClusterNetworkPolicy, None, o.metadata.name.clone()),
            Raw::Node(o) => (Kind::Node, None, o.metadata.name.clone()),
            Raw::Broken { kind, value, .. } => {
                let s = |p: &str| value.pointer(p).and_then(Value::as_str).map(str::to_string);
                (*kind, s("/metadata/namespace"), s("/metadata/name"))
            }
        };
        let namespace = if kind.namespaced() { ns.unwrap_or_else(|| "default".to_string()) } else { String::new() };
        ObjKey { kind, namespace: namespace.into(), name: name.unwrap_or_default().into() }
    }
}

/// Identifies an object across versions. Sources hold it several times
/// per object (the object, where it is defined, its last valid version):
/// the names are shared, not copied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub kind: Kind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A validated object.
#[derive(Clone, Debug)]
pub enum Valid {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Policy(Arc<Policy>),
    Service(Arc<Service>),
    ClusterPolicy(Arc<ClusterPolicy>),
    Node(Arc<NodeObject>),
}

/// An object as read and checked, once: sources keep these instead of the
/// raw objects, so an unchanged object is never parsed or validated again.
#[derive(Clone, Debug)]
pub struct Checked {
    pub key: ObjKey,
    pub result: Result<Valid, Vec<FieldError>>,
    /// For a NetworkPolicy or ClusterNetworkPolicy that does not validate:
    /// what it enforces if it never was valid (see their `fail_closed`).
    pub fail_closed: Option<Valid>,
    /// What a valid object says that palisade reads differently (a peer it
    /// does not evaluate, an address that is not one): reported.
    pub warnings: Vec<FieldError>,
}

impl Checked {
    pub fn new(raw: &Raw) -> Checked {
        let key = raw.key();
        let mut warnings = Vec::new();
        let result = match raw {
            Raw::Namespace(o) => Namespace::from_k8s(o).map(|v| Valid::Namespace(Arc::new(v))),
            Raw::Pod(o) => Pod::from_k8s(o).map(|v| Valid::Pod(Arc::new(v))),
            Raw::Policy(o) => Policy::from_k8s(o).map(|v| Valid::Policy(Arc::new(v))),
            Raw::Service(o) => Service::from_k8s(o).map(|v| Valid::Service(Arc::new(v))),
            Raw::ClusterPolicy(o) => ClusterPolicy::from_k8s(o).map(|(v, w)| {
                warnings = w;
                Valid::ClusterPolicy(Arc::new(v))
            }),
            Raw::Node(o) => NodeObject::from_k8s(o).map(|(v, w)| {
                warnings = w;
                Valid::Node(Arc::new(v))
            }),
            Raw::Broken { error, .. } => Err(vec![error.clone()]),
        };
        let policy = |value: &Value| Valid::Policy(Arc::new(Policy::fail_closed(value, &key.namespace, &key.name)));
        let cluster_policy =
            |value: &Value| Valid::ClusterPolicy(Arc::new(ClusterPolicy::fail_closed(value, &key.name)));
        let fail_closed = match (&result, raw) {
            (Ok(_), _) => None,
            (Err(_), Raw::Policy(o)) => Some(policy(&serde_json::to_value(o).unwrap_or(Value::Null))),
            (Err(_), Raw::Broken { kind: Kind::NetworkPolicy, value, .. }) => Some(policy(value)),
            (Err(_), Raw::ClusterPolicy(o)) => Some(cluster_policy(&serde_json::to_value(o).unwrap_or(Value::Null))),
            (Err(_), Raw::Broken { kind: Kind::ClusterNetworkPolicy, value, .. }) => Some(cluster_policy(value)),
            _ => None,
        };
        Checked { key, result, fail_closed, warnings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const GOOD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: skipped}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x, labels: {app: a}}\n  spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\n  status: {podIP: 10.0.0.1}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: p, namespace: x}\n  spec: {podSelector: {}, ingress: [{ports: [{port: http}]}]}\n";

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_string(), name.to_string())
    }

    #[test]
    fn json_read_straight_from_its_text_is_what_the_value_way_reads() {
        let pod = |name: &str, port: &str| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"x","labels":{{"app":"a"}}}},"spec":{{"containers":[{{"name":"c","ports":[{{"name":"http","containerPort":{port}}}]}}]}},"status":{{"podIP":"10.0.0.1"}}}}"#
            )
        };
        let policy = |name: &str, port: &str| {
            format!(
                r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{{"name":"{name}","namespace":"x"}},"spec":{{"podSelector":{{}},"ingress":[{{"ports":[{{"port":{port}}}]}}]}}}}"#
            )
        };
        let items = [
            pod("a", "8080"),
            "null".into(),
            "5".into(),
            r#"{"kind":"Pod","metadata":{"name":"no-api"}}"#.into(),
            r#"{"apiVersion":"","kind":"Pod","metadata":{"name":"empty-api"}}"#.into(),
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"skipped"}}"#.into(),
            pod("wrong-type", r#""x""#),
            pod("out-of-range", "70000"),
            policy("p", r#""http""#),
            policy("bad-port", "0"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"dup"},"metadata":{"name":"dup2"}}"#.into(),
        ];
        let docs = [
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","labels":{"team":"a"}}}"#.to_string(),
            "null".into(),
            format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, items.join(",")),
            "[1, 2]".into(),
            r#"{"kind":"Service","metadata":{"name":"no-api"}}"#.into(),
            r#"{"apiVersion":"v1","kind":"PodList","items":"not a list"}"#.into(),
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"q","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"a":5}}}}"#.into(),
        ];
        // The straight way reads the valid ones (the rest fall back).
        assert!(Raw::from_json(Kind::Pod, &pod("a", "8080")).is_some());
        assert!(Raw::from_json(Kind::NetworkPolicy, &policy("p", r#""http""#)).is_some());
        assert!(Raw::from_json(Kind::Pod, &pod("wrong-type", r#""x""#)).is_none());
        let text = docs.join("\n");
        for keep_raw in [false, true] {
            let values: Vec<Value> =
                serde_json::Deserializer::from_str(&text).into_iter().collect::<Result<_, _>>().unwrap();
            let raws = json_documents(&text).unwrap();
            let (o1, r1, e1) = check_documents(values, "f.json", keep_raw);
            let (o2, r2, e2) = check_json_documents(&raws, "f.json", keep_raw).unwrap();
            assert_eq!(format!("{o1:#?}"), format!("{o2:#?}"), "objects");
            assert_eq!(e1, e2, "errors");
            let parsed = |r: &[String]| r.iter().map(|s| serde_json::from_str::<Value>(s).unwrap()).collect::<Vec<_>>();
            assert_eq!(parsed(&r1), parsed(&r2), "documents kept");
            assert_eq!(r2.len(), if keep_raw { o2.len() } else { 0 });
            // Both ways met every case: valid, broken and reported.
            assert_eq!(o2.len(), 8, "{o2:#?}");
            assert_eq!(o2.iter().filter(|o| o.result.is_err()).count(), 4, "{o2:#?}");
            assert_eq!(e2.len(), 6, "{e2:#?}");
        }
    }

    /// How a JSON file read before it was read straight from its text.
    fn parse_values(text: &str, keep_raw: bool) -> Result<files::Objects, String> {
        let docs: Vec<Value> = serde_json::Deserializer::from_str(text)
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid JSON: {e}"))?;
        Ok(check_documents(docs, "f.json", keep_raw))
    }

    #[test]
    fn json_the_value_way_refuses_is_refused_and_arrays_are_not_objects() {
        let policy = |port: &str, extra: &str| {
            format!(
                r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{{"name":"deny","namespace":"x"{extra}}},"spec":{{"podSelector":{{}},"ingress":[{{"ports":[{{"port":{port}}}]}}]}}}}"#
            )
        };
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let files = [
            // Values a Value refuses, in a field read and in one ignored.
            policy("1e999", ""),
            policy("80", r#","x":1e999"#),
            policy(r#""\ud800""#, ""),
            policy("80", r#","note":"\udc00""#),
            policy(&deep(130), ""),
            policy("80", &format!(r#","deep":{}"#, deep(130))),
            format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, policy("1e999", "")),
            // Syntax errors.
            "[1,]".into(),
            r#"{"a":1,}"#.into(),
            // Arrays are not objects, however they line up.
            format!(r#"["v1","List",[{}]]"#, policy("80", "")),
            r#"["apps/v1","Deployment"]"#.into(),
            format!(r#"{{"apiVersion":"v1","kind":"List","items":[["apps/v1","Deployment"],{}]}}"#, policy("80", "")),
            // And what reads: Lists however their items are written.
            format!("{}\n{}", policy("80", ""), policy(r#""http""#, r#","labels":{"a":"\u00e9"}"#)),
            format!(r#"{{"it\u0065ms":[{}],"kind":"List","apiVersion":"v1"}}"#, policy("80", "")),
            format!(r#"{{"items":[{}],"kind":"List","items":[]}}"#, policy("80", "")),
            r#"{"kind":"List","items":[]} {"kind":"List","items": [ ]}"#.to_string(),
            format!(
                r#" {{ "kind" : "List" , "x" : [ "]" , {{ "\"]" : "}}" }} ] , "items" : [ {} , null , [ "a" ] , "\\" , {} ] }} "#,
                policy("81", r#","labels":{"a":"[{\"}]"}"#),
                policy("82", "")
            ),
            serde_json::to_string_pretty(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
                serde_json::from_str::<Value>(&policy("80", "")).unwrap(),
                serde_json::from_str::<Value>(&policy(r#""http""#, "")).unwrap(),
            ]}))
            .unwrap(),
        ];
        let mut refused = 0;
        for (n, text) in files.iter().enumerate() {
            for keep_raw in [false, true] {
                let old = parse_values(text, keep_raw);
                let new = files::parse(text, "f.json", keep_raw);
                match (old, new) {
                    (Err(a), Err(b)) => {
                        assert_eq!(a, b, "file {n}: the same error");
                        refused += 1;
                    }
                    (Ok((o1, r1, e1)), Ok((o2, r2, e2))) => {
                        assert_eq!(format!("{o1:#?}"), format!("{o2:#?}"), "file {n}: objects");
                        assert_eq!(e1, e2, "file {n}: errors");
                        let parsed = |r: &[String]| {
                            r.iter().map(|s| serde_json::from_str::<Value>(s).unwrap()).collect::<Vec<_>>()
                        };
                        assert_eq!(parsed(&r1), parsed(&r2), "file {n}: documents kept");
                    }
                    (old, new) => panic!("file {n}: {old:?} against {new:?}"),
                }
            }
        }
        assert_eq!(refused, 2 * 9, "the files a Value refuses");
        // The straight way is only as good as `Value` being the plain one:
        // serde_json's `raw_value` feature makes it read a token key.
        assert!(serde_json::from_str::<Value>(r#"{"$serde_json::private::RawValue":1}"#).is_ok());
        // Lists were split, not read the `Value` way.
        let docs = json_documents(&files[16]).unwrap();
        assert_eq!(list_items(docs[0]).map(|i| i.len()), Some(5));
        assert_eq!(list_items(docs[0]).unwrap()[3], r#""\\""#);
        assert_eq!(list_items(&files[13]), None, "an escaped key goes the Value way");
        assert_eq!(json_documents(&files[15]).map(|d| d.len()), Some(2));
    }

    #[test]
    fn manifests_become_what_the_agent_reads_from_a_file() {
        let input = manifests_to_input(GOOD).unwrap();
        assert_eq!(input.namespaces["x"].labels["team"], "a");
        assert_eq!(input.pods[&key("x", "a")].ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(input.policies[&key("x", "p")].ingress.as_ref().map(Vec::len), Some(1));
        let dir = std::env::temp_dir().join(format!("palisade-convert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), GOOD).unwrap();
        let snap = files::FileSource::new(&dir).load();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(snap.input, input);
    }

    #[test]
    fn objects_and_a_json_list_give_the_same_input() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(GOOD).unwrap();
        let want = manifests_to_input(GOOD).unwrap();
        // Lists do not nest: one List of every object.
        let items: Vec<&Value> =
            docs.iter().flat_map(|d| d["items"].as_array().map_or(vec![d], |i| i.iter().collect())).collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        assert_eq!(manifests_to_input(&list.to_string()).unwrap(), want);
        assert_eq!(objects_to_input(docs).unwrap(), want);
    }

    #[test]
    fn cluster_network_policies_and_nodes_in_a_list_like_the_other_kinds() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1, labels: {role: infra}}\n  status: {addresses: [{type: InternalIP, address: 10.1.0.1}]}\n- apiVersion: policy.networking.k8s.io/v1alpha2\n  kind: ClusterNetworkPolicy\n  metadata: {name: c}\n  spec: {tier: Baseline, priority: 3, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}\n";
        let input = manifests_to_input(text).unwrap();
        assert_eq!(input.nodes["n1"].ips, ["10.1.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(input.cluster_policies["c"].priority, 3);
        // Cluster-scoped: a namespace in the manifest does not make two objects.
        let twice = format!("{text}---\n{}", text.replace("metadata: {name: c}", "metadata: {name: c, namespace: x}"));
        let e = manifests_to_input(&twice).unwrap_err();
        assert!(e.iter().all(|e| e.message.starts_with("also defined in")), "{e:?}");
        // Another version of the API is not read.
        assert!(Kind::of("policy.networking.k8s.io/v1alpha1", "ClusterNetworkPolicy").is_none());
    }

    #[test]
    fn anything_the_agent_would_report_is_an_error() {
        let policy = |port: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {port}}}]}}]}}\n"
            )
        };
        // The agent would fail this one closed; a test wants to hear of it.
        let e = manifests_to_input(&policy("70000")).unwrap_err();
        assert_eq!((e.len(), e[0].field.as_str()), (1, "spec.ingress[0].ports[0].port"));
        let e = manifests_to_input(&policy("[80]")).unwrap_err();
        assert!(e[0].field.starts_with("spec.ingress[0].ports[0].port"), "{e:?}");
        let e = manifests_to_input(&format!("{}---\n{}", policy("80"), policy("81"))).unwrap_err();
        assert_eq!((e.len(), e[0].message.as_str()), (1, "also defined in manifests"));
        let e = manifests_to_input("kind: Pod\nmetadata: {name: a}\n").unwrap_err();
        assert_eq!((e[0].object.as_str(), e[0].field.as_str()), ("document 1", "apiVersion"));
        assert_eq!(manifests_to_input("a: [b").unwrap_err().len(), 1);
        let e =
            objects_to_input([serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "X"}})])
                .unwrap_err();
        assert_eq!((e[0].object.as_str(), e[0].field.as_str()), ("Namespace X", "metadata.name"));
    }
}
