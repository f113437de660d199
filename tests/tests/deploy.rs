//! deploy/ checked without a cluster: every manifest parses as its
//! Kubernetes type (k8s-openapi) with no field the type does not know, and
//! the DaemonSet, RBAC, kind config, kind-e2e workload and Dockerfile say
//! what palisade needs and no more. The DaemonSet's arguments are parsed by
//! the real `palisade` binary.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "palisade-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(path: &str) -> String {
    let p = repo().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every object in a (multi-document) YAML file, `kind: List` items
/// included, as the agent's own file source reads manifests.
fn documents(path: &str, text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{path}: {e}"));
    docs.into_iter()
        .filter(|d| !d.is_null())
        .flat_map(|d| match d["kind"].as_str() {
            Some("List") => d["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![d],
        })
        .collect()
}

/// Parses `value` as `T` and checks that serializing it back gives the same
/// document: k8s-openapi ignores fields it does not know, so a misspelt or
/// misplaced field would otherwise pass silently.
fn typed<T: DeserializeOwned + Serialize>(what: &str, value: &Value) -> T {
    let t: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).expect("serialize");
    let mut lost = Vec::new();
    diff("", value, &back, &mut lost);
    assert!(lost.is_empty(), "{what}: fields the Kubernetes type does not have (or changed): {lost:?}");
    t
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(&format!("{path}.{k}"), v, w, out),
                    // An explicit null is an absent field (the CRD's status).
                    None if v.is_null() => {}
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        // JSON Schema bounds are floats in the type: 1 and 1.0 are one value.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// The objects `kubectl apply -k deploy/` installs.
struct Install {
    namespace: Namespace,
    service_account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    daemonset: DaemonSet,
    crds: Vec<CustomResourceDefinition>,
}

/// The roles `kubectl palisade` users are bound to (installed, not bound).
const PLUGIN_RBAC: &str = "kubectl-palisade-rbac.yaml";

fn install() -> Install {
    let kustomization = documents("deploy/kustomization.yaml", &read("deploy/kustomization.yaml"));
    let resources: Vec<String> = kustomization[0]["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_string())
        .collect();
    let (mut ns, mut sa, mut role, mut binding, mut ds) = (None, None, None, None, None);
    let mut crds = Vec::new();
    // The plugin users' roles are not the agent's: checked apart.
    for file in resources.iter().filter(|f| *f != PLUGIN_RBAC) {
        let path = format!("deploy/{file}");
        for doc in documents(&path, &read(&path)) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let what = format!("{path}: {kind} {}", doc["metadata"]["name"]);
            let dup = |set: bool| assert!(!set, "{what}: more than one {kind}");
            match kind.as_str() {
                "Namespace" => {
                    dup(ns.is_some());
                    ns = Some(typed::<Namespace>(&what, &doc));
                }
                "ServiceAccount" => {
                    dup(sa.is_some());
                    sa = Some(typed::<ServiceAccount>(&what, &doc));
                }
                "ClusterRole" => {
                    dup(role.is_some());
                    role = Some(typed::<ClusterRole>(&what, &doc));
                }
                "ClusterRoleBinding" => {
                    dup(binding.is_some());
                    binding = Some(typed::<ClusterRoleBinding>(&what, &doc));
                }
                "DaemonSet" => {
                    dup(ds.is_some());
                    ds = Some(typed::<DaemonSet>(&what, &doc));
                }
                "CustomResourceDefinition" => crds.push(typed::<CustomResourceDefinition>(&what, &doc)),
                other => panic!("{what}: unexpected kind {other:?} (nothing else is installed)"),
            }
        }
    }
    Install {
        namespace: ns.expect("a Namespace"),
        service_account: sa.expect("a ServiceAccount"),
        role: role.expect("a ClusterRole"),
        binding: binding.expect("a ClusterRoleBinding"),
        daemonset: ds.expect("a DaemonSet"),
        crds,
    }
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod template spec")
}

fn agent(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one long-running container");
    &spec.containers[0]
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

/// The value of `--flag value` or `--flag=value` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name { args.get(i + 1).cloned() } else { a.strip_prefix(&format!("{name}=")).map(str::to_string) }
    })
}

/// A `const NAME: &str = "...";` in one of xtask's sources, so the
/// manifests are checked against what xtask really uses.
fn xtask_const(file: &str, name: &str) -> String {
    let text = read(&format!("xtask/src/{file}"));
    text.lines()
        .find_map(|l| {
            let rest = l.trim().trim_start_matches("pub ").strip_prefix(&format!("const {name}: &str = \""))?;
            rest.strip_suffix("\";").map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no `const {name}: &str` in xtask/src/{file}"))
}

#[test]
fn namespace_and_rbac() {
    let i = install();
    assert_eq!(i.namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let labels = i.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some("privileged"),
        "hostNetwork, hostPath and capabilities need the privileged Pod Security level"
    );
    assert_eq!(i.service_account.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(i.daemonset.metadata.namespace.as_deref(), Some(NAMESPACE));
    let sa = i.service_account.metadata.name.clone().expect("service account name");
    assert_eq!(pod_spec(&i.daemonset).service_account_name.as_deref(), Some(sa.as_str()));

    // Exactly get/list/watch on pods, namespaces, services, nodes,
    // networkpolicies and clusternetworkpolicies: nothing written, nothing
    // else read.
    let mut granted = BTreeSet::new();
    for rule in i.role.rules.clone().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut expected = BTreeSet::new();
    for (group, resource) in [
        ("", "pods"),
        ("", "namespaces"),
        ("", "services"),
        ("", "nodes"),
        ("networking.k8s.io", "networkpolicies"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
    ] {
        for verb in ["get", "list", "watch"] {
            expected.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, expected);
    assert!(i.role.aggregation_rule.is_none());

    let role = i.role.metadata.name.clone().expect("role name");
    assert_eq!(i.binding.role_ref.kind, "ClusterRole");
    assert_eq!(i.binding.role_ref.name, role);
    let subjects = i.binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        ("ServiceAccount", sa.as_str(), Some(NAMESPACE))
    );
}

/// The ClusterNetworkPolicy CRD is upstream's experimental one (it has the
/// `nodes` egress peer), served at the version and resource the agent
/// watches (`cluster::kube`).
#[test]
fn cluster_network_policy_crd_is_upstreams_experimental_one() {
    let crds = install().crds;
    assert_eq!(crds.len(), 1, "one CRD");
    let crd = &crds[0];
    assert_eq!(crd.metadata.name.as_deref(), Some("clusternetworkpolicies.policy.networking.k8s.io"));
    let annotations = crd.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("policy.networking.k8s.io/channel").map(String::as_str), Some("experimental"));
    assert_eq!(annotations.get("policy.networking.k8s.io/bundle-version").map(String::as_str), Some("v0.2.0"));
    let spec = &crd.spec;
    assert_eq!((spec.group.as_str(), spec.scope.as_str()), ("policy.networking.k8s.io", "Cluster"));
    assert_eq!(
        (spec.names.kind.as_str(), spec.names.plural.as_str()),
        ("ClusterNetworkPolicy", "clusternetworkpolicies")
    );
    let served: Vec<&str> = spec.versions.iter().filter(|v| v.served).map(|v| v.name.as_str()).collect();
    assert_eq!(served, ["v1alpha2"]);
    let schema = serde_json::to_value(&spec.versions[0].schema).expect("schema");
    let peer =
        &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["egress"]["items"]["properties"]["to"]["items"];
    let peers: BTreeSet<&str> =
        peer["properties"].as_object().expect("egress peer").keys().map(String::as_str).collect();
    assert_eq!(peers, BTreeSet::from(["domainNames", "namespaces", "networks", "nodes", "pods"]));
    assert_eq!(peer["maxProperties"], 1);
}

/// `kubectl kustomize deploy/` renders what `install()` reads, objects in
/// the order kubectl applies them (the CRD first).
#[test]
fn kustomize_renders_the_install() {
    let out = match Command::new("kubectl").args(["kustomize", "deploy/"]).current_dir(repo()).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("kubectl not available ({e}): skipped; install() checks the same files");
            return;
        }
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = documents("kubectl kustomize deploy/", &String::from_utf8(out.stdout).expect("UTF-8"));
    let kinds: Vec<&str> = rendered.iter().map(|d| d["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "Role",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet"
        ]
    );
    let i = install();
    let role = rendered
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "palisade")
        .expect("the agent's ClusterRole");
    assert_eq!(typed::<ClusterRole>("rendered ClusterRole", role), i.role);
    let crd = rendered.iter().find(|d| d["kind"] == "CustomResourceDefinition").expect("CRD");
    assert_eq!(typed::<CustomResourceDefinition>("rendered CRD", crd), i.crds[0]);
}

#[test]
fn daemonset_runs_on_every_node_and_updates_in_place() {
    let ds = install().daemonset;
    let spec = ds.spec.as_ref().expect("spec");
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    assert!(!selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)));

    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true), "pods' host-side veths are in the node's network namespace");
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    // One toleration with operator Exists and no key or effect tolerates
    // every taint.
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "{tolerations:?}"
    );

    let update = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)), "two agents on one node would share its pins");
}

#[test]
fn agent_is_not_privileged_and_has_exactly_its_capabilities() {
    let ds = install().daemonset;
    let c = agent(&ds);
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));
    assert_eq!(sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));

    // The one privileged container is the init container that mounts bpffs
    // where the node has none: it mounts and does nothing else.
    let inits = pod_spec(&ds).init_containers.clone().unwrap_or_default();
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(init.name, "mount-bpffs");
    let script = init.command.clone().unwrap_or_default().join(" ");
    assert!(script.contains("mount -t bpf") && script.contains("/sys/fs/bpf"), "{script}");
    assert!(init.args.is_none());
    let mounts = init.volume_mounts.clone().unwrap_or_default();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/sys/fs/bpf");
    assert_eq!(mounts[0].mount_propagation.as_deref(), Some("Bidirectional"));
}

#[test]
fn agent_arguments_probes_and_volumes() {
    let ds = install().daemonset;
    let c = agent(&ds);
    let args = args(c);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert_eq!(flag(&args, "--cluster-state"), None, "in the cluster the agent reads the Kubernetes API");
    assert_eq!(flag(&args, "--log-format").as_deref(), Some("text"));
    let metrics: SocketAddr = flag(&args, "--metrics-addr").expect("--metrics-addr").parse().expect("socket address");
    assert!(metrics.ip().is_unspecified(), "the kubelet probes the node's address, not loopback");

    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.clone(), field.field_path.clone()))
        })
        .collect();
    assert_eq!(env.get("PALISADE_NODE_NAME").map(String::as_str), Some("spec.nodeName"));

    // Both probes on the port the agent serves them on.
    let port_of = |p: &IntOrString| -> i32 {
        match p {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                c.ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("no container port named {name}"))
                    .container_port
            }
        }
    };
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(port_of(&get.port), i32::from(metrics.port()), "{path} probe port");
        assert!(get.host.is_none(), "the kubelet probes the pod IP (the node's, with hostNetwork)");
    }

    let resources = c.resources.as_ref().expect("resources");
    let quantity = |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
    };
    assert_eq!(quantity(&resources.requests, "cpu").as_deref(), Some("50m"));
    assert_eq!(quantity(&resources.requests, "memory").as_deref(), Some("64Mi"));
    assert_eq!(quantity(&resources.limits, "memory").as_deref(), Some("320Mi"));
    assert_eq!(quantity(&resources.limits, "cpu"), None, "a throttled agent delays enforcement");

    // Where the agent pins and where it puts its socket are host paths,
    // mounted in the container.
    let volumes: BTreeMap<String, (String, Option<String>)> = pod_spec(&ds)
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let hp = v.host_path.as_ref().unwrap_or_else(|| panic!("volume {} is not a hostPath", v.name));
            (v.name.clone(), (hp.path.clone(), hp.type_.clone()))
        })
        .collect();
    let mounted_from_host = |container_path: &str| -> (String, Option<String>) {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| Path::new(container_path).starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{container_path} is not on a volume"));
        assert_ne!(m.read_only, Some(true), "{container_path}");
        let (host, _) = &volumes[&m.name];
        assert_eq!(host, &m.mount_path, "mounted at the same path as on the node");
        (m.name.clone(), m.mount_propagation.clone())
    };
    let bpffs = flag(&args, "--bpffs").unwrap_or_else(|| "/sys/fs/bpf/palisade".to_string());
    let (bpf_volume, propagation) = mounted_from_host(&bpffs);
    assert_eq!(volumes[&bpf_volume], ("/sys/fs/bpf".to_string(), Some("DirectoryOrCreate".to_string())));
    assert_eq!(propagation.as_deref(), Some("HostToContainer"));
    let socket = flag(&args, "--socket").unwrap_or_else(|| palisade::api::DEFAULT_SOCKET.to_string());
    let (run_volume, _) = mounted_from_host(&socket);
    assert_eq!(volumes[&run_volume], ("/run/palisade".to_string(), Some("DirectoryOrCreate".to_string())));
    // The flow record (and saved copies) must outlive the container.
    let state = flag(&args, "--state-dir").unwrap_or_else(|| "/var/lib/palisade".to_string());
    let (state_volume, _) = mounted_from_host(&state);
    assert_eq!(volumes[&state_volume], ("/var/lib/palisade".to_string(), Some("DirectoryOrCreate".to_string())));
}

/// `palisade run <the DaemonSet's args> --help` exits 0 only if clap
/// accepts every flag and value before `--help`.
#[test]
fn agent_arguments_parse_with_the_real_cli() {
    let ds = install().daemonset;
    let bin = palisade_e2e::agent::binary();
    assert!(
        bin.is_file(),
        "{} not found: build the agent first (cargo build -p palisade) or set PALISADE_BIN",
        bin.display()
    );
    let args = args(agent(&ds));
    let out = Command::new(&bin).args(&args).arg("--help").output().expect("running palisade");
    assert!(
        out.status.success(),
        "palisade rejects the DaemonSet's arguments {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let name = a.split('=').next().unwrap_or(a);
        assert!(help.contains(name), "`palisade run --help` does not list {name}");
    }
    // The environment the DaemonSet sets is read by the CLI.
    for e in agent(&ds).env.iter().flatten().filter(|e| e.name.starts_with("PALISADE_")) {
        assert!(help.contains(&format!("[env: {}", e.name)), "palisade run does not read ${}", e.name);
    }
}

#[test]
fn image_is_the_one_kind_e2e_builds_and_loads() {
    let ds = install().daemonset;
    let image = xtask_const("kind.rs", "IMAGE");
    let pod = pod_spec(&ds);
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        assert_eq!(c.image.as_deref(), Some(image.as_str()), "{}", c.name);
        // A loaded image must not be pulled (`:latest` would default to Always).
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"), "{}", c.name);
    }
}

#[test]
fn kind_cluster_config() {
    let docs = documents("deploy/kind.yaml", &read("deploy/kind.yaml"));
    assert_eq!(docs.len(), 1);
    let cluster = &docs[0];
    assert_eq!(cluster["kind"], "Cluster");
    assert_eq!(cluster["apiVersion"], "kind.x-k8s.io/v1alpha4");
    assert_eq!(cluster["name"].as_str(), Some(xtask_const("kind.rs", "CLUSTER").as_str()));
    assert_ne!(cluster["networking"]["disableDefaultCNI"], true, "palisade relies on kindnet's /32 routes");
    let roles: Vec<&str> =
        cluster["nodes"].as_array().expect("nodes").iter().map(|n| n["role"].as_str().unwrap_or("")).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
}

/// The kind-e2e workload and policies are valid objects (placeholders
/// filled in), shaped like upstream's netpol suite.
#[test]
fn kind_e2e_manifests() {
    let cluster = xtask_const("kind.rs", "CLUSTER");
    let dir = repo().join("deploy/kind-e2e");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kind-e2e")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut namespaces, mut pods, mut policies) = (Vec::new(), Vec::new(), Vec::new());
    for file in &files {
        let name = format!("deploy/kind-e2e/{}", file.file_name().expect("name").to_string_lossy());
        let mut text = read(&name);
        for ns in ["x", "y", "z"] {
            for pod in ["a", "b", "c"] {
                text = text.replace(&format!("@IP:{ns}/{pod}@"), "10.244.1.6");
            }
        }
        assert!(!text.contains("@IP:"), "{name}: unknown placeholder");
        for doc in documents(&name, &text) {
            let what = format!("{name}: {} {}/{}", doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"]);
            match doc["kind"].as_str() {
                Some("Namespace") => namespaces.push(typed::<Namespace>(&what, &doc)),
                Some("Pod") => pods.push(typed::<Pod>(&what, &doc)),
                Some("NetworkPolicy") => policies.push(typed::<NetworkPolicy>(&what, &doc)),
                other => panic!("{what}: unexpected kind {other:?}"),
            }
        }
    }
    let ns_names: Vec<String> = namespaces.iter().filter_map(|n| n.metadata.name.clone()).collect();
    assert_eq!(ns_names, ["x", "y", "z"]);
    for n in &namespaces {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("ns"), n.metadata.name.as_ref());
    }
    assert_eq!(pods.len(), 9);
    let mut nodes_of = BTreeMap::<String, BTreeSet<String>>::new();
    for p in &pods {
        let name = p.metadata.name.clone().expect("pod name");
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("pod"), Some(&name));
        let spec = p.spec.as_ref().expect("pod spec");
        let node = spec.node_selector.as_ref().and_then(|s| s.get("kubernetes.io/hostname")).expect("node");
        assert!(node.starts_with(&format!("{cluster}-")), "{node} is not a node of {cluster}");
        nodes_of.entry(name.clone()).or_default().insert(node.clone());
        let mut served = BTreeSet::new();
        for c in &spec.containers {
            let port = &c.ports.as_ref().expect("ports")[0];
            let proto = port.protocol.clone().unwrap_or_default();
            assert_eq!(c.name, format!("cont-{}-{}", port.container_port, proto.to_lowercase()));
            assert_eq!(
                port.name.as_deref(),
                Some(format!("serve-{}-{}", port.container_port, proto.to_lowercase()).as_str())
            );
            assert_eq!(c.image.as_deref(), Some("registry.k8s.io/e2e-test-images/agnhost:2.53"));
            served.insert((port.container_port, proto));
        }
        let expected: BTreeSet<(i32, String)> =
            [80, 81].iter().flat_map(|p| ["TCP", "UDP"].map(|proto| (*p, proto.to_string()))).collect();
        assert_eq!(served, expected);
        if node.ends_with("-control-plane") {
            let tolerates = spec.tolerations.iter().flatten().any(|t| {
                t.key.as_deref() == Some("node-role.kubernetes.io/control-plane")
                    && t.operator.as_deref() == Some("Exists")
            });
            assert!(tolerates, "{name} cannot run on {node}");
        }
    }
    // a, b and c each on a node of their own, the same in every namespace.
    let placements: BTreeSet<&String> = nodes_of
        .values()
        .map(|n| {
            assert_eq!(n.len(), 1, "{n:?}");
            n.first().expect("node")
        })
        .collect();
    assert_eq!(placements.len(), 3);
    assert!(!policies.is_empty());
}

/// The image's build steps are `cargo xtask setup`'s (xtask/src/setup.rs)
/// and `cargo xtask build --release`'s.
#[test]
fn dockerfile_builds_like_xtask() {
    let dockerfile = read("deploy/Dockerfile");
    let linker = xtask_const("setup.rs", "BPF_LINKER_VERSION");
    let prefix = xtask_const("setup.rs", "LLVM_PREFIX");
    let llvm = prefix.rsplit('-').next().expect("LLVM major version").to_string();
    let joined = dockerfile.replace("\\\n", " ");
    let normalized: String = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        format!("apt-get -o DPkg::Lock::Timeout=300 install -y -q llvm-{llvm}-dev"),
        "rustup toolchain install nightly --profile minimal --component rust-src".to_string(),
        format!(
            "LLVM_PREFIX={prefix} cargo install bpf-linker --version {linker} --locked --force \
             --no-default-features --features llvm-{llvm}"
        ),
        "cargo build --release --locked -p palisade".to_string(),
        "FROM debian:bookworm-slim".to_string(),
        "ENTRYPOINT [\"/usr/local/bin/palisade\"]".to_string(),
    ] {
        assert!(normalized.contains(&needle), "deploy/Dockerfile lacks `{needle}`");
    }
    assert!(read("xtask/src/setup.rs").contains(&format!("\"llvm-{llvm}-dev\"")));
    let ignored: Vec<String> = read(".dockerignore").lines().map(|l| l.trim().to_string()).collect();
    for must in ["target/", ".git/"] {
        assert!(ignored.iter().any(|l| l == must), ".dockerignore lacks {must}");
    }
}

/// (apiGroup, resource, verb) triples a role's rules grant.
fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

#[test]
fn kubectl_plugin_roles_read_and_port_forward_to_the_agents_only() {
    let resources: Vec<Value> =
        documents("deploy/kustomization.yaml", &read("deploy/kustomization.yaml"))[0]["resources"]
            .as_array()
            .expect("kustomization resources")
            .clone();
    assert!(resources.iter().any(|r| r.as_str() == Some(PLUGIN_RBAC)), "installed by `kubectl apply -k deploy/`");
    let path = format!("deploy/{PLUGIN_RBAC}");
    let t = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    let (mut cluster, mut local) = (None, None);
    for doc in documents(&path, &read(&path)) {
        let what = format!("{path}: {} {}", doc["kind"], doc["metadata"]["name"]);
        match doc["kind"].as_str() {
            Some("ClusterRole") => cluster = Some(typed::<ClusterRole>(&what, &doc)),
            Some("Role") => local = Some(typed::<k8s_openapi::api::rbac::v1::Role>(&what, &doc)),
            other => panic!("{what}: unexpected kind {other:?} (roles only: no binding is made)"),
        }
    }
    let cluster = cluster.expect("a ClusterRole");
    let want: BTreeSet<_> =
        [t("", "nodes", "get"), t("", "nodes", "list"), t("", "pods", "get"), t("", "pods", "list")].into();
    assert_eq!(grants(&cluster.rules.unwrap_or_default()), want, "cluster-wide: read nodes and pods");
    let local = local.expect("a Role");
    assert_eq!(local.metadata.namespace.as_deref(), Some(NAMESPACE), "port-forward to the agents' namespace only");
    let want: BTreeSet<_> = [
        t("", "pods", "get"),
        t("", "pods", "list"),
        t("", "pods/portforward", "get"),
        t("", "pods/portforward", "create"),
    ]
    .into();
    assert_eq!(grants(&local.rules.unwrap_or_default()), want);
}
