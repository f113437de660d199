//! The workloads of the cluster state, and the labels that select each of
//! them: those every pod of the workload carries, minus the ones that
//! change with every rollout or name a single pod.

use crate::policy::Input;
use crate::policy::model::{Labels, Pod, Selector, Workload};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Labels a controller sets per revision, per pod or per run: a selector
/// on them stops matching at the next rollout or restart.
pub const UNSTABLE: [&str; 10] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// A workload with its running pods.
#[derive(Clone, Debug)]
pub struct Info {
    pub pods: Vec<Arc<Pod>>,
    /// Stable labels all its pods carry (empty: it cannot be selected).
    pub labels: Labels,
}

/// (namespace, workload) -> its pods and stable labels. Host-network and
/// terminated pods are left out: policy does not apply to them.
pub fn index(input: &Input) -> BTreeMap<(String, Workload), Info> {
    let mut out: BTreeMap<(String, Workload), Info> = BTreeMap::new();
    for pod in input.pods.values().filter(|p| !p.host_network && !p.terminated) {
        out.entry((pod.namespace.clone(), pod.workload.clone()))
            .or_insert_with(|| Info { pods: Vec::new(), labels: Labels::new() })
            .pods
            .push(pod.clone());
    }
    for info in out.values_mut() {
        let first = &info.pods[0];
        info.labels = first
            .labels
            .iter()
            .filter(|(k, v)| {
                !UNSTABLE.contains(&k.as_str())
                    && info.pods.iter().all(|p| p.labels.get(k) == Some(*v) && **v != p.name)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    out
}

/// The selector for a workload's stable labels.
pub fn selector(labels: &Labels) -> Selector {
    Selector { match_labels: labels.clone(), requirements: Vec::new() }
}

/// Other workloads of the namespace whose pods the labels also select.
pub fn also_selected(
    index: &BTreeMap<(String, Workload), Info>,
    namespace: &str,
    workload: &Workload,
    labels: &Labels,
) -> Vec<Workload> {
    let sel = selector(labels);
    index
        .iter()
        .filter(|((ns, w), info)| ns == namespace && w != workload && info.pods.iter().any(|p| sel.matches(&p.labels)))
        .map(|((_, w), _)| w.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)], w: &str) -> Arc<Pod> {
        Arc::new(Pod {
            namespace: "shop".into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            node_name: None,
            host_network: false,
            ips: vec![],
            ports: vec![],
            terminated: false,
            workload: Workload { kind: "Deployment".into(), name: w.into() },
        })
    }

    #[test]
    fn stable_labels_are_the_common_ones_without_revision_or_pod_names() {
        let mut input = Input::default();
        for p in [
            pod("fe-1", &[("app", "fe"), ("pod-template-hash", "abc"), ("version", "1")], "fe"),
            pod("fe-2", &[("app", "fe"), ("pod-template-hash", "def"), ("version", "2")], "fe"),
            pod("db-0", &[("app", "db"), ("statefulset.kubernetes.io/pod-name", "db-0"), ("me", "db-0")], "db"),
        ] {
            input.pods.insert((p.namespace.clone(), p.name.clone()), p);
        }
        let idx = index(&input);
        let fe = &idx[&("shop".to_string(), Workload { kind: "Deployment".into(), name: "fe".into() })];
        assert_eq!(fe.labels, [("app".to_string(), "fe".to_string())].into());
        let db = &idx[&("shop".to_string(), Workload { kind: "Deployment".into(), name: "db".into() })];
        assert_eq!(db.labels, [("app".to_string(), "db".to_string())].into());
        let w = Workload { kind: "Deployment".into(), name: "fe".into() };
        assert!(also_selected(&idx, "shop", &w, &fe.labels).is_empty());
        assert_eq!(also_selected(&idx, "shop", &w, &Labels::new()).len(), 1, "an empty selector selects db too");
    }
}
