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
/// documents the objects came from (the file source saves them), as compact
/// JSON: a tenth of the memory of a `Value`, and they are kept until saved.
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
        ObjKey { kind, namespace, name: name.unwrap_or_default() }
    }
}

/// Identifies an object across versions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
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
