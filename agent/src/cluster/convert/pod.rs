//! Pod: its addresses, node, phase and named container ports.

use super::fields::{meta_names, port_protocol, valid_port, validate_port_name};
use super::{FieldError, err, finish};
use crate::policy::model::{Labels, NamedPort, Pod, Workload};
use k8s_openapi::api::core::v1::Pod as K8sPod;
use std::net::IpAddr;

impl Pod {
    /// A Pod as the API server validates it: addresses, node, phase and
    /// named ports (first one of a name and protocol wins).
    pub(crate) fn from_k8s(pod: &K8sPod) -> Result<Pod, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (namespace, name) = meta_names(&pod.metadata, true, &mut errors);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()).filter(|l| !l.is_empty()) {
            for (i, ip) in list.iter().enumerate() {
                match ip.ip.parse::<IpAddr>() {
                    Ok(a) if !ips.contains(&a) => ips.push(a),
                    Ok(_) => {
                        errors.push(err(format!("status.podIPs[{i}].ip"), format!("Duplicate value: {:?}", ip.ip)))
                    }
                    Err(_) => errors
                        .push(err(format!("status.podIPs[{i}].ip"), format!("{:?} is not a valid IP address", ip.ip))),
                }
            }
            if let Some(primary) = status.and_then(|s| s.pod_ip.as_ref())
                && primary.parse::<IpAddr>().ok() != ips.first().copied()
            {
                errors.push(err("status.podIP", format!("{primary:?} must equal status.podIPs[0].ip")));
            }
        } else if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).filter(|s| !s.is_empty()) {
            match ip.parse::<IpAddr>() {
                Ok(a) => ips.push(a),
                Err(_) => errors.push(err("status.podIP", format!("{ip:?} is not a valid IP address"))),
            }
        }
        if ips.len() > 2 || (ips.len() == 2 && ips[0].is_ipv4() == ips[1].is_ipv4()) {
            errors.push(err("status.podIPs", "at most one IPv4 and one IPv6 address"));
        }
        let mut ports = Vec::new();
        if let Some(spec) = spec {
            let sidecars = spec.init_containers.iter().flatten().enumerate().filter_map(|(i, c)| {
                (c.restart_policy.as_deref() == Some("Always")).then_some((format!("spec.initContainers[{i}]"), c))
            });
            let containers = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
            for (cfield, c) in containers.chain(sidecars) {
                let mut names = std::collections::HashSet::new();
                for (j, p) in c.ports.iter().flatten().enumerate() {
                    let f = format!("{cfield}.ports[{j}]");
                    let protocol = match port_protocol(p.protocol.as_deref(), &format!("{f}.protocol")) {
                        Ok(p) => p,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    let Some(port) = valid_port(p.container_port) else {
                        errors.push(err(
                            format!("{f}.containerPort"),
                            format!("{} must be between 1 and 65535, inclusive", p.container_port),
                        ));
                        continue;
                    };
                    if let Some(pname) = &p.name {
                        if let Err(m) = validate_port_name(pname) {
                            errors.push(err(format!("{f}.name"), m));
                            continue;
                        }
                        if !names.insert(pname.as_str()) {
                            errors.push(err(format!("{f}.name"), format!("Duplicate value: {pname:?}")));
                            continue;
                        }
                        ports.push(NamedPort { name: pname.clone(), port, protocol });
                    }
                }
            }
        }
        // Declaration order is kept: a named port resolves to the first
        // container port with that name and protocol, as kube-proxy's
        // targetPort lookup does.
        let mut seen = std::collections::HashSet::new();
        ports.retain(|p| seen.insert(p.clone()));
        let phase = status.and_then(|s| s.phase.as_deref());
        let labels: Labels = pod.metadata.labels.iter().flatten().collect();
        let owners = pod.metadata.owner_references.iter().flatten();
        let controller = owners.clone().find(|o| o.controller == Some(true)).or_else(|| owners.clone().next());
        let workload = Workload::resolve(&name, controller.map(|o| (o.kind.as_str(), o.name.as_str())), &labels);
        // Held for the pod's life, 50k of them in a large cluster: no room
        // left from growing the lists.
        ips.shrink_to_fit();
        ports.shrink_to_fit();
        let out = Pod {
            namespace,
            name,
            labels,
            node_name: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            ports,
            terminated: matches!(phase, Some("Succeeded") | Some("Failed")),
            workload,
        };
        finish(out, errors)
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::model::{Labels, Workload};

    fn resolve(owner: Option<(&str, &str)>, hash: Option<&str>) -> String {
        let mut labels = Labels::new();
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), h.into());
        }
        Workload::resolve("web-7d4b9c-x2x", owner, &labels).to_string()
    }

    #[test]
    fn workloads_are_named_by_their_controller() {
        assert_eq!(resolve(Some(("ReplicaSet", "web-7d4b9c")), Some("7d4b9c")), "deployment/web");
        assert_eq!(resolve(Some(("ReplicaSet", "web-7d4b9c")), None), "replicaset/web-7d4b9c");
        assert_eq!(resolve(Some(("ReplicaSet", "web-7d4b9c")), Some("ffff")), "replicaset/web-7d4b9c");
        assert_eq!(resolve(Some(("Job", "backup-29012345")), None), "cronjob/backup");
        assert_eq!(resolve(Some(("Job", "migrate-v2")), None), "job/migrate-v2");
        assert_eq!(resolve(Some(("StatefulSet", "db")), None), "statefulset/db");
        assert_eq!(resolve(Some(("DaemonSet", "agent")), None), "daemonset/agent");
        assert_eq!(resolve(None, Some("7d4b9c")), "pod/web-7d4b9c-x2x");
    }
}
