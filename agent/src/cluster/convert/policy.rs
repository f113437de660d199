//! NetworkPolicy: the API server's defaulting (policyTypes, protocol TCP)
//! and validation, and what a policy that never validated still enforces.

use super::fields::{
    meta_names, port_protocol, valid_port, validate_label_key, validate_label_value, validate_port_name,
};
use super::{FieldError, err, finish};
use crate::policy::model::{NamespaceMatch, Operator, Peer, Policy, PortMatch, PortSpec, Requirement, Rule, Selector};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy as K8sPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeSet;

impl Policy {
    /// A NetworkPolicy as the API server defaults and validates it.
    pub(crate) fn from_k8s(np: &K8sPolicy) -> Result<Policy, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (namespace, name) = meta_names(&np.metadata, true, &mut errors);
        let Some(spec) = np.spec.as_ref() else {
            errors.push(err("spec", "Required value"));
            return Err(errors);
        };
        let pod_selector =
            spec.pod_selector.as_ref().map(|s| selector_from(s, "spec.podSelector", &mut errors)).unwrap_or_default();
        let (mut ingress_type, mut egress_type) = (false, false);
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                ingress_type = true;
                egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                if types.len() > 2 {
                    errors.push(err("spec.policyTypes", "may not specify more than two policyTypes"));
                }
                for (i, t) in types.iter().enumerate() {
                    let f = format!("spec.policyTypes[{i}]");
                    let slot = match t.as_str() {
                        "Ingress" => &mut ingress_type,
                        "Egress" => &mut egress_type,
                        other => {
                            errors.push(err(
                                f,
                                format!("Unsupported value: {other:?}: supported values: \"Ingress\", \"Egress\""),
                            ));
                            continue;
                        }
                    };
                    if *slot {
                        errors.push(err(f, format!("Duplicate value: {t:?}")));
                    }
                    *slot = true;
                }
            }
        }
        let ingress = spec.ingress.as_ref().map(|rules| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    rule_from(r.from.as_deref(), r.ports.as_deref(), &format!("spec.ingress[{i}]"), "from", &mut errors)
                })
                .collect::<Vec<_>>()
        });
        let egress = spec.egress.as_ref().map(|rules| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    rule_from(r.to.as_deref(), r.ports.as_deref(), &format!("spec.egress[{i}]"), "to", &mut errors)
                })
                .collect::<Vec<_>>()
        });
        let policy = Policy {
            namespace,
            name,
            pod_selector,
            ingress: ingress_type.then(|| ingress.unwrap_or_default()),
            egress: egress_type.then(|| egress.unwrap_or_default()),
        };
        finish(policy, errors)
    }

    /// What an invalid policy that was never valid still does: it isolates
    /// the pods it selects (all pods of its namespace if even the selector
    /// is broken), in the directions it names, and allows nothing. Bad input
    /// never opens traffic, and a policy meant to restrict does not silently
    /// leave pods open either. `raw` is the object as JSON.
    pub(crate) fn fail_closed(raw: &serde_json::Value, namespace: &str, name: &str) -> Policy {
        let spec = &raw["spec"];
        let pod_selector = serde_json::from_value::<K8sSelector>(spec["podSelector"].clone())
            .ok()
            .and_then(|s| {
                let mut errors = Vec::new();
                let sel = selector_from(&s, "", &mut errors);
                errors.is_empty().then_some(sel)
            })
            .unwrap_or_default();
        let types: Vec<&str> =
            spec["policyTypes"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
        let has_egress_rules = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
        let egress = types.contains(&"Egress") || has_egress_rules;
        let unknown_type = types.iter().any(|t| *t != "Ingress" && *t != "Egress");
        let ingress = types.contains(&"Ingress") || types.is_empty() || unknown_type || !spec["ingress"].is_null();
        Policy {
            namespace: namespace.to_string(),
            name: name.to_string(),
            pod_selector,
            ingress: ingress.then(Vec::new),
            egress: egress.then(Vec::new),
        }
    }
}

pub(super) fn selector_from(sel: &K8sSelector, field: &str, errors: &mut Vec<FieldError>) -> Selector {
    let mut out = Selector::default();
    for (k, v) in sel.match_labels.iter().flatten() {
        validate_label_key(k, &format!("{field}.matchLabels"), errors);
        validate_label_value(v, &format!("{field}.matchLabels[{k}]"), errors);
    }
    // Built at once: a label set is copied on every insert.
    out.match_labels = sel.match_labels.iter().flatten().collect();
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        validate_label_key(&req.key, &format!("{f}.key"), errors);
        let values: BTreeSet<String> = req.values.iter().flatten().cloned().collect();
        let operator = match req.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                errors.push(err(
                    format!("{f}.operator"),
                    format!("not a valid selector operator: {other:?} (In, NotIn, Exists, DoesNotExist)"),
                ));
                continue;
            }
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errors.push(err(format!("{f}.values"), "must be specified when `operator` is 'In' or 'NotIn'"))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errors
                .push(err(format!("{f}.values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")),
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            validate_label_value(v, &format!("{f}.values[{j}]"), errors);
        }
        out.requirements.push(Requirement { key: req.key.clone(), operator, values });
    }
    out
}

fn rule_from(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
    errors: &mut Vec<FieldError>,
) -> Rule {
    let (peers, ports) = (peers.unwrap_or_default(), ports.unwrap_or_default());
    // Sized exactly: rules are held for the policy's life, and a list
    // grown from empty keeps room for four.
    let mut rule = Rule { peers: Vec::with_capacity(peers.len()), ports: Vec::with_capacity(ports.len()) };
    for (i, p) in peers.iter().enumerate() {
        if let Some(peer) = peer_from(p, &format!("{field}.{peers_name}[{i}]"), errors) {
            rule.peers.push(peer);
        }
    }
    for (i, p) in ports.iter().enumerate() {
        if let Some(port) = port_from(p, &format!("{field}.ports[{i}]"), errors) {
            rule.ports.push(port);
        }
    }
    rule
}

fn peer_from(p: &NetworkPolicyPeer, field: &str, errors: &mut Vec<FieldError>) -> Option<Peer> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (None, None, None) => {
            errors.push(err(field, "must specify a peer"));
            None
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            errors.push(err(
                field,
                "may not specify more than 1 peer type (ipBlock with podSelector or namespaceSelector)",
            ));
            None
        }
        (Some(block), None, None) => ip_block(block, &format!("{field}.ipBlock"), errors),
        (None, pods, namespaces) => {
            let pods =
                pods.as_ref().map(|s| selector_from(s, &format!("{field}.podSelector"), errors)).unwrap_or_default();
            let namespaces = match namespaces {
                None => NamespaceMatch::Own,
                Some(s) => NamespaceMatch::Selector(selector_from(s, &format!("{field}.namespaceSelector"), errors)),
            };
            Some(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn ip_block(block: &IPBlock, field: &str, errors: &mut Vec<FieldError>) -> Option<Peer> {
    let Some(cidr) = parse_cidr(&block.cidr) else {
        errors.push(err(format!("{field}.cidr"), format!("{:?} is not a valid CIDR", block.cidr)));
        return None;
    };
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        match parse_cidr(e) {
            None => errors.push(err(f, format!("{e:?} is not a valid CIDR"))),
            Some(ex) if !cidr.contains(&ex) || ex.prefix_len() <= cidr.prefix_len() => {
                errors.push(err(f, format!("{e:?} must be a strict subset of `cidr` {}", block.cidr)))
            }
            Some(ex) => except.push(ex),
        }
    }
    except.sort();
    except.dedup();
    Some(Peer::IpBlock { cidr, except })
}

fn port_from(p: &NetworkPolicyPort, field: &str, errors: &mut Vec<FieldError>) -> Option<PortSpec> {
    let protocol = match port_protocol(p.protocol.as_deref(), &format!("{field}.protocol")) {
        Ok(v) => v,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => {
            errors.push(err(format!("{field}.endPort"), "may not be specified when `port` is not specified"));
            return None;
        }
        (Some(IntOrString::Int(n)), end) => {
            let Some(start) = valid_port(*n) else {
                errors.push(err(format!("{field}.port"), format!("{n} must be between 1 and 65535, inclusive")));
                return None;
            };
            let end = match end {
                None => start,
                Some(e) => match valid_port(e) {
                    Some(e) if e >= start => e,
                    Some(_) => {
                        errors.push(err(
                            format!("{field}.endPort"),
                            format!("{e} must be greater than or equal to `port` ({start})"),
                        ));
                        return None;
                    }
                    None => {
                        errors.push(err(
                            format!("{field}.endPort"),
                            format!("{e} must be between 1 and 65535, inclusive"),
                        ));
                        return None;
                    }
                },
            };
            PortMatch::Range(start, end)
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                errors.push(err(format!("{field}.endPort"), "may not be specified when `port` is non-numeric"));
                return None;
            }
            // A numeric string is still a number to the API server's
            // int-or-string, but not a valid port name.
            if let Err(m) = validate_port_name(name) {
                errors.push(err(format!("{field}.port"), m));
                return None;
            }
            PortMatch::Named(name.clone())
        }
    };
    Some(PortSpec { protocol, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Labels;

    fn policy(yaml: &str) -> Result<Policy, Vec<FieldError>> {
        let np: K8sPolicy = serde_saphyr::from_str(yaml).expect("test yaml");
        Policy::from_k8s(&np)
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let p = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}}").unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{}]}").unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        // An empty egress list is no egress section, as the API server defaults it.
        let p = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: []}").unwrap();
        assert!(p.egress.is_none());
        let p =
            policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}")
                .unwrap();
        assert!(p.ingress.is_none() && p.egress == Some(vec![]));
    }

    #[test]
    fn errors_name_the_field() {
        let e = policy(
            "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 80}]\n    from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n",
        )
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.ingress[0].from[0].ipBlock.except[0]", "spec.ingress[0].ports[0].endPort"]);
        let e = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {matchExpressions: [{key: a, operator: In}]}, policyTypes: [Ingres]}").unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.podSelector.matchExpressions[0].values", "spec.policyTypes[0]"]);
        let e = policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{to: [{}], ports: [{protocol: ICMP}, {port: 'HTTP'}]}]}").unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.egress[0].to[0]", "spec.egress[0].ports[0].protocol", "spec.egress[0].ports[1].port"]
        );
    }

    #[test]
    fn a_selector_is_interned_once_however_many_labels() {
        // Label by label, each set on the way was hashed and interned too:
        // quadratic in a hostile manifest's 10,000 labels.
        let labels: String = (0..3000).map(|i| format!("palisade.test/many-{i:04}: v, ")).collect();
        let s: K8sSelector = serde_saphyr::from_str(&format!("{{matchLabels: {{{labels}}}}}")).unwrap();
        let sel = selector_from(&s, "s", &mut vec![]);
        assert_eq!(sel.match_labels.iter().count(), 3000);
        assert_eq!(crate::policy::labels::interned_with_first_key("palisade.test/many-0000"), 1);
    }

    #[test]
    fn selector_semantics() {
        let labels: Labels = [("app".to_string(), "web".to_string())].into();
        let sel = |y: &str| {
            let s: K8sSelector = serde_saphyr::from_str(y).unwrap();
            let mut e = vec![];
            let s = selector_from(&s, "s", &mut e);
            assert!(e.is_empty(), "{e:?}");
            s
        };
        assert!(sel("{}").matches(&labels));
        assert!(sel("{matchLabels: {app: web}}").matches(&labels));
        assert!(!sel("{matchLabels: {app: db}}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: app, operator: In, values: [db, web]}]}").matches(&labels));
        assert!(!sel("{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: app, operator: Exists}]}").matches(&labels));
        assert!(sel("{matchExpressions: [{key: tier, operator: DoesNotExist}]}").matches(&labels));
        assert!(!sel("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: Exists}]}").matches(&labels));
    }

    #[test]
    fn fail_closed_isolates_and_allows_nothing() {
        let np: K8sPolicy = serde_saphyr::from_str(
            "metadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, egress: [{ports: [{port: 0}]}]}",
        )
        .unwrap();
        assert!(Policy::from_k8s(&np).is_err());
        let p = Policy::fail_closed(&serde_json::to_value(&np).unwrap(), "x", "p");
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, Some(vec![]));
        assert_eq!(p.pod_selector.match_labels.get("app").map(String::as_str), Some("a"));
    }
}
