//! `palisade lint --cluster-state DIR` as CI runs it: the real binary, its
//! exit status and its JSON, without privileges.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHOP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.53}
";

const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";

const ALLOW_DNS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str, files: &[(&str, &str)]) -> Dir {
    let d = std::env::temp_dir().join(format!("palisade-lint-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    for (f, text) in files {
        std::fs::write(d.join(f), text).unwrap();
    }
    Dir(d)
}

/// Exit status and parsed JSON of `palisade lint --cluster-state DIR -o json ARGS`.
fn lint(dir: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lint", "--cluster-state"])
        .arg(dir)
        .args(["-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (code, json)
}

fn checks(report: &Value, severity: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == severity)
        .map(|f| format!("{} {}", f["check"].as_str().unwrap(), f["object"].as_str().unwrap()))
        .collect()
}

#[test]
fn errors_fail_the_run_and_the_json_names_them() {
    let d = dir("deny", &[("shop.yaml", SHOP), ("deny.yaml", DENY_ALL)]);
    let (code, report) = lint(&d.0, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(checks(&report, "error"), ["dns Pod shop/api"], "{report:#}");
    assert_eq!(report["summary"]["errors"], 1);
    let f = &report["findings"][0];
    assert!(f["message"].as_str().unwrap().contains("UDP 53"), "{f:#}");
    assert!(!f["why"].as_str().unwrap().is_empty(), "{f:#}");
}

#[test]
fn a_clean_state_exits_zero_unless_asked_to_fail_on_less() {
    let d = dir("clean", &[("shop.yaml", SHOP), ("deny.yaml", DENY_ALL), ("dns.yaml", ALLOW_DNS)]);
    let (code, report) = lint(&d.0, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["summary"]["errors"], 0);
    // kube-system's CoreDNS may reach the metadata address: info.
    assert_eq!(checks(&report, "info"), ["metadata Namespace kube-system"], "{report:#}");
    let (code, _) = lint(&d.0, &["--fail-on", "warning"]);
    assert_eq!(code, 0);
    let (code, _) = lint(&d.0, &["--fail-on", "info"]);
    assert_eq!(code, 1);
}

#[test]
fn invalid_manifests_are_errors_with_their_file_and_a_missing_directory_exits_two() {
    let bad = DENY_ALL.replace("podSelector: {}", "podSelector: {matchLabels: {canary: on}}");
    let d = dir("bad", &[("shop.yaml", SHOP), ("deny.yaml", &bad), ("dns.yaml", ALLOW_DNS)]);
    let (code, report) = lint(&d.0, &[]);
    assert_eq!(code, 1, "{report:#}");
    let invalid: Vec<&Value> =
        report["findings"].as_array().unwrap().iter().filter(|f| f["check"] == "invalid").collect();
    assert_eq!(invalid.len(), 1, "{report:#}");
    assert_eq!(invalid[0]["object"], "NetworkPolicy shop/deny-all");
    assert!(invalid[0]["field"].as_str().unwrap().starts_with("spec.podSelector.matchLabels"), "{report:#}");
    assert!(invalid[0]["source"].as_str().unwrap().ends_with("deny.yaml"), "{report:#}");

    let (code, report) = lint(&d.0.join("missing"), &[]);
    assert_eq!((code, report), (2, Value::Null));
}
