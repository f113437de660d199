//! Checked objects -> the compiler's input, the same way for every source:
//! invalid objects are reported field by field, the last valid version of a
//! broken object stays in force, and a NetworkPolicy or
//! ClusterNetworkPolicy that was never valid fails closed.

use super::convert::{Checked, Kind, ObjKey, Valid};
use super::{InputError, Snapshot};
use crate::policy::model::{ClusterPolicy, Input, Namespace, Policy};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Remembers the last valid version of every object across snapshots.
#[derive(Default)]
pub struct Validator {
    last_good: HashMap<ObjKey, Valid>,
    /// Honour the audit annotation on Namespaces (`--allow-namespace-audit`).
    /// Off, whoever may annotate a Namespace could otherwise turn its
    /// enforcement off; the annotation is then reported and ignored.
    pub allow_namespace_audit: bool,
}

impl Validator {
    /// Takes `checked`, if valid, as the last valid version of its object
    /// unless one is known: a saved copy stands in for a previous run's memory.
    pub fn remember(&mut self, checked: &Checked) {
        if let Ok(v) = &checked.result {
            self.last_good.entry(checked.key.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Builds a snapshot from (source, checked object) pairs. The first of
    /// two objects with the same kind/namespace/name wins.
    pub fn snapshot<'a>(&mut self, objects: impl IntoIterator<Item = (&'a str, &'a Checked)>) -> Snapshot {
        self.snapshot_within(None, objects)
    }

    /// [`Validator::snapshot`] of the objects of `keys` alone (every object
    /// with one of those keys, in order): the other keys' last valid
    /// versions stay remembered. A source that knows which keys a change
    /// touched patches its last snapshot with this ([`replace`]).
    pub fn snapshot_of<'a>(
        &mut self,
        keys: &HashSet<ObjKey>,
        objects: impl IntoIterator<Item = (&'a str, &'a Checked)>,
    ) -> Snapshot {
        self.snapshot_within(Some(keys), objects)
    }

    fn snapshot_within<'a>(
        &mut self,
        scope: Option<&HashSet<ObjKey>>,
        objects: impl IntoIterator<Item = (&'a str, &'a Checked)>,
    ) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut seen: HashMap<&ObjKey, &str> = HashMap::new();
        for (source, checked) in objects {
            let key = &checked.key;
            if let Some(first) = seen.get(key) {
                snap.errors.push(InputError {
                    source: source.to_string(),
                    object: key.to_string(),
                    field: "metadata.name".into(),
                    message: format!("also defined in {first}"),
                    action: format!("using the one in {first}"),
                });
                continue;
            }
            seen.insert(key, source);
            for w in &checked.warnings {
                snap.errors.push(InputError {
                    source: source.to_string(),
                    object: key.to_string(),
                    field: w.field.clone(),
                    message: w.message.clone(),
                    action: String::new(),
                });
            }
            let chosen = match &checked.result {
                Ok(v) => {
                    // Overwrite in place: most objects are there already.
                    match self.last_good.get_mut(key) {
                        Some(good) => *good = v.clone(),
                        None => {
                            self.last_good.insert(key.clone(), v.clone());
                        }
                    }
                    Some(v.clone())
                }
                Err(errors) => {
                    let (action, fallback) = match (self.last_good.get(key), &checked.fail_closed) {
                        (Some(v), _) => ("keeping the last valid version".to_string(), Some(v.clone())),
                        (None, Some(v)) => (fail_closed_action(v), Some(v.clone())),
                        (None, None) => ("ignored".to_string(), None),
                    };
                    for e in errors {
                        snap.errors.push(InputError {
                            source: source.to_string(),
                            object: key.to_string(),
                            field: e.field.clone(),
                            message: e.message.clone(),
                            action: action.clone(),
                        });
                    }
                    fallback
                }
            };
            let chosen = match chosen {
                Some(Valid::Namespace(n)) if n.audit && !self.allow_namespace_audit => {
                    snap.errors.push(ignored_audit(source, key));
                    Some(Valid::Namespace(Arc::new(Namespace { audit: false, ..(*n).clone() })))
                }
                chosen => chosen,
            };
            match chosen {
                Some(Valid::Namespace(n)) => {
                    snap.input.namespaces.insert(n.name.clone(), n);
                }
                Some(Valid::Pod(p)) => {
                    snap.input.pods.insert((p.namespace.clone(), p.name.clone()), p);
                }
                Some(Valid::Policy(p)) => {
                    snap.input.policies.insert((p.namespace.clone(), p.name.clone()), p);
                }
                Some(Valid::Service(s)) => {
                    snap.input.services.insert((s.namespace.clone(), s.name.clone()), s);
                }
                Some(Valid::ClusterPolicy(c)) => {
                    snap.input.cluster_policies.insert(c.name.clone(), c);
                }
                Some(Valid::Node(n)) => {
                    snap.input.nodes.insert(n.name.clone(), n);
                }
                None => {}
            }
        }
        // Objects gone forget their last valid version (only those in
        // scope: a small change does not walk every object).
        match scope {
            None => self.last_good.retain(|k, _| seen.contains_key(k)),
            Some(scope) => scope.iter().filter(|k| !seen.contains_key(k)).for_each(|k| drop(self.last_good.remove(k))),
        }
        snap
    }
}

/// A source's last snapshot, patched with the objects of the keys that
/// changed ([`Validator::snapshot_of`]): its other objects stay the same
/// `Arc`s, and a clone shares the maps' chunks (see `ChunkedMap`).
#[derive(Default)]
pub struct Patched {
    input: Input,
    /// Errors by object (as errors name it).
    errors: BTreeMap<String, Vec<InputError>>,
}

impl Patched {
    /// Replaces the objects and errors of `keys` with `part`'s (a snapshot
    /// of those keys alone).
    pub fn patch(&mut self, keys: &HashSet<ObjKey>, part: Snapshot) {
        replace(&mut self.input, keys, part.input);
        for key in keys {
            self.errors.remove(&key.to_string());
        }
        for e in part.errors {
            self.errors.entry(e.object.clone()).or_default().push(e);
        }
    }

    /// The snapshot, with `errors` before the objects' own.
    pub fn snapshot(&self, mut errors: Vec<InputError>) -> Snapshot {
        errors.extend(self.errors.values().flatten().cloned());
        Snapshot { input: self.input.clone(), errors }
    }
}

/// Replaces the objects of `keys` in `input` with those `with` holds (a
/// snapshot of those keys alone, [`Validator::snapshot_of`]).
fn replace<'a>(input: &mut Input, keys: impl IntoIterator<Item = &'a ObjKey>, with: Input) {
    for key in keys {
        let nn = || (key.namespace.to_string(), key.name.to_string());
        match key.kind {
            Kind::Namespace => input.namespaces.remove(&*key.name).map(drop),
            Kind::Pod => input.pods.remove(&nn()).map(drop),
            Kind::NetworkPolicy => input.policies.remove(&nn()).map(drop),
            Kind::Service => input.services.remove(&nn()).map(drop),
            Kind::ClusterNetworkPolicy => input.cluster_policies.remove(&*key.name).map(drop),
            Kind::Node => input.nodes.remove(&*key.name).map(drop),
        };
    }
    let Input { namespaces, pods, policies, services, cluster_policies, nodes } = with;
    input.namespaces.extend(namespaces);
    input.pods.extend(pods);
    input.policies.extend(policies);
    input.services.extend(services);
    input.cluster_policies.extend(cluster_policies);
    input.nodes.extend(nodes);
}

fn ignored_audit(source: &str, key: &ObjKey) -> InputError {
    InputError {
        source: source.to_string(),
        object: key.to_string(),
        field: format!("metadata.annotations[{}]", super::convert::AUDIT_ANNOTATION),
        message: "per-namespace audit is not allowed on this node".into(),
        action: "ignored: enforcing (the agent honours it only with --allow-namespace-audit)".into(),
    }
}

fn fail_closed_action(v: &Valid) -> String {
    match v {
        Valid::Policy(p) => policy_fail_closed_action(p),
        Valid::ClusterPolicy(c) => cluster_policy_fail_closed_action(c),
        _ => "ignored".into(),
    }
}

fn cluster_policy_fail_closed_action(c: &ClusterPolicy) -> String {
    let dirs: Vec<&str> = [("ingress", !c.ingress.is_empty()), ("egress", !c.egress.is_empty())]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(d, _)| *d)
        .collect();
    let subject = match &c.subject {
        crate::policy::model::ClusterSubject::Namespaces(s) if s.is_empty() => "every pod".to_string(),
        crate::policy::model::ClusterSubject::Namespaces(s) => format!("the pods of namespaces {s}"),
        crate::policy::model::ClusterSubject::Pods { namespaces, pods } => {
            format!("pods {pods} of namespaces {namespaces}")
        }
    };
    if dirs.is_empty() {
        return "never valid: it has no rules, so it changes nothing".into();
    }
    format!(
        "never valid: denying all {} traffic of {subject} ({} tier, priority {}) until it is fixed",
        dirs.join(" and "),
        c.tier,
        c.priority
    )
}

fn policy_fail_closed_action(p: &Policy) -> String {
    let dirs: Vec<&str> = [("ingress", p.ingress.is_some()), ("egress", p.egress.is_some())]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(d, _)| *d)
        .collect();
    format!(
        "never valid: isolating the pods it selects ({}) for {} and allowing nothing until it is fixed",
        if p.pod_selector.is_empty() { "all pods of its namespace".to_string() } else { p.pod_selector.to_string() },
        dirs.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::convert::{Kind, Raw};
    use serde_json::Value;

    fn raw(yaml: &str) -> Checked {
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        let kind = Kind::of(v["apiVersion"].as_str().unwrap(), v["kind"].as_str().unwrap()).unwrap();
        Checked::new(&Raw::from_value(kind, v))
    }

    const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}";
    const BAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}";
    const UNDESERIALIZABLE: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, ingress: [{ports: [{port: [80]}]}]}";

    #[test]
    fn last_good_version_stays_in_force() {
        let mut v = Validator::default();
        let good = raw(GOOD);
        let s = v.snapshot([("f.yaml", &good)]);
        assert!(s.errors.is_empty());
        let before = s.input.policies.clone();
        let bad = raw(BAD);
        let s = v.snapshot([("f.yaml", &bad)]);
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].field, "spec.ingress[0].ports[0].port");
        assert_eq!(s.errors[0].object, "NetworkPolicy x/p");
        assert!(s.errors[0].action.contains("last valid"));
        assert_eq!(s.input.policies, before);
    }

    #[test]
    fn never_valid_policy_fails_closed() {
        let mut v = Validator::default();
        let bad = raw(UNDESERIALIZABLE);
        let s = v.snapshot([("f.yaml", &bad)]);
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].field.starts_with("spec.ingress[0].ports[0].port"), "{:?}", s.errors[0]);
        let p = &s.input.policies[&("x".to_string(), "p".to_string())];
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);
        assert_eq!(p.pod_selector.match_labels.get("app").map(String::as_str), Some("a"));
    }

    #[test]
    fn namespace_audit_needs_the_agent_to_allow_it() {
        let ns =
            raw("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, annotations: {palisade.dev/audit: \"true\"}}");
        let mut v = Validator::default();
        let s = v.snapshot([("n.yaml", &ns)]);
        assert!(!s.input.namespaces["x"].audit);
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].field, "metadata.annotations[palisade.dev/audit]");
        assert!(s.errors[0].action.contains("--allow-namespace-audit"), "{:?}", s.errors[0]);
        v.allow_namespace_audit = true;
        let s = v.snapshot([("n.yaml", &ns)]);
        assert!(s.input.namespaces["x"].audit);
        assert!(s.errors.is_empty());
    }

    #[test]
    fn a_remembered_version_stands_in_for_the_last_valid_one() {
        let mut v = Validator::default();
        v.remember(&raw(GOOD));
        let s = v.snapshot([("f.yaml", &raw(BAD))]);
        assert!(s.errors[0].action.contains("last valid"), "{:?}", s.errors[0]);
        assert_eq!(s.input.policies[&("x".to_string(), "p".to_string())].ingress.as_ref().map(Vec::len), Some(1));
    }

    const CNP: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{name: yes, action: Deny, to: [{nodes: {}}]}]}";

    #[test]
    fn cluster_policies_and_nodes_keep_their_last_valid_version_or_fail_closed() {
        let node = raw(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {role: infra}}\nstatus: {addresses: [{type: InternalIP, address: 10.1.0.1}, {type: Hostname, address: n1}, {type: ExternalIP, address: bad}]}",
        );
        let good = raw(&CNP.replace("name: yes", "name: deny-nodes"));
        let mut v = Validator::default();
        let s = v.snapshot([("f.yaml", &good), ("n.yaml", &node)]);
        assert_eq!(s.input.cluster_policies["c"].egress[0].name, "deny-nodes");
        assert_eq!(s.input.nodes["n1"].ips, ["10.1.0.1".parse::<std::net::IpAddr>().unwrap()]);
        // The node's bad address is reported, the node still counts.
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert_eq!(
            (s.errors[0].object.as_str(), s.errors[0].field.as_str()),
            ("Node n1", "status.addresses[2].address")
        );
        // An unquoted `yes` is a boolean (YAML 1.1): invalid; the last valid version stays.
        let bad = raw(CNP);
        let s = v.snapshot([("f.yaml", &bad)]);
        assert_eq!(s.errors[0].object, "ClusterNetworkPolicy c");
        assert_eq!(s.errors[0].field, "spec.egress[0].name");
        assert!(s.errors[0].message.contains("invalid type: boolean"), "{:?}", s.errors[0]);
        assert!(s.errors[0].action.contains("last valid"), "{:?}", s.errors[0]);
        assert_eq!(s.input.cluster_policies["c"].egress[0].name, "deny-nodes");
        // Never valid: it denies all egress of its subject, at its place.
        let s = Validator::default().snapshot([("f.yaml", &bad)]);
        let c = &s.input.cluster_policies["c"];
        assert_eq!((c.priority, c.ingress.len(), c.egress[0].action), (5, 0, crate::policy::model::Action::Deny));
        assert!(
            s.errors[0]
                .action
                .contains("never valid: denying all egress traffic of every pod (Admin tier, priority 5)"),
            "{:?}",
            s.errors[0]
        );
    }

    #[test]
    fn duplicates_are_reported_and_deleted_objects_forgotten() {
        let mut v = Validator::default();
        let a = raw(GOOD);
        let s = v.snapshot([("a.yaml", &a), ("b.yaml", &a)]);
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].source, "b.yaml");
        let s = v.snapshot([]);
        assert!(s.input.policies.is_empty());
        // Forgotten: a broken version now fails closed instead of reviving it.
        let bad = raw(BAD);
        let s = v.snapshot([("a.yaml", &bad)]);
        assert!(s.errors[0].action.contains("never valid"));
    }
}
