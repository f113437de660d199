//! Service: its cluster IPs (traffic to them is DNATed to a backend, and
//! egress policy must judge the backend), and for `lint` its selector and
//! ports.

use super::fields::{meta_names, port_protocol, valid_port, validate_port_name};
use super::{FieldError, err, finish};
use crate::policy::model::{PortMatch, Service, ServicePort};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::IpAddr;

impl Service {
    /// A Service's cluster IPs (`None` and empty ones are skipped), selector
    /// and ports. Ports are only read by `lint`: one it cannot read is
    /// skipped rather than reported, so a Service's cluster IPs (what
    /// enforcement needs) never depend on them.
    pub(crate) fn from_k8s(svc: &K8sService) -> Result<Service, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (namespace, name) = meta_names(&svc.metadata, true, &mut errors);
        let spec = svc.spec.as_ref();
        let mut cluster_ips = Vec::new();
        let listed = spec.and_then(|s| s.cluster_ips.clone()).filter(|l| !l.is_empty());
        let ips = listed.or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip])).unwrap_or_default();
        for (i, ip) in ips.iter().enumerate() {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            match ip.parse::<IpAddr>() {
                Ok(a) => cluster_ips.push(a),
                Err(_) => {
                    errors.push(err(format!("spec.clusterIPs[{i}]"), format!("{ip:?} is not a valid IP address")))
                }
            }
        }
        let selector = spec.and_then(|s| s.selector.as_ref()).into_iter().flatten().collect();
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = valid_port(p.port)?;
                let protocol = port_protocol(p.protocol.as_deref(), "").ok()?;
                let target = match &p.target_port {
                    None => PortMatch::Range(port, port),
                    Some(IntOrString::Int(n)) => valid_port(*n).map(|n| PortMatch::Range(n, n))?,
                    Some(IntOrString::String(s)) => match s.parse::<i32>() {
                        Ok(n) => valid_port(n).map(|n| PortMatch::Range(n, n))?,
                        Err(_) => validate_port_name(s).ok().map(|_| PortMatch::Named(s.clone()))?,
                    },
                };
                Some(ServicePort { port, protocol, target })
            })
            .collect();
        finish(Service { namespace, name, cluster_ips, selector, ports }, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Protocol;

    #[test]
    fn selector_and_ports_lead_to_the_backends_port() {
        let svc: K8sService = serde_saphyr::from_str(
            "metadata: {name: web, namespace: x}\nspec:\n  clusterIP: 10.96.0.1\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: http}\n  - {port: 443, targetPort: 8443}\n  - {port: 53, protocol: UDP}\n  - {port: 0}\n  - {port: 81, targetPort: '9090'}\n",
        )
        .unwrap();
        let s = Service::from_k8s(&svc).unwrap();
        assert_eq!(s.selector.get("app").map(String::as_str), Some("web"));
        let ports: Vec<(u16, Protocol, PortMatch)> =
            s.ports.iter().map(|p| (p.port, p.protocol, p.target.clone())).collect();
        assert_eq!(
            ports,
            [
                (80, Protocol::Tcp, PortMatch::Named("http".into())),
                (443, Protocol::Tcp, PortMatch::Range(8443, 8443)),
                (53, Protocol::Udp, PortMatch::Range(53, 53)),
                (81, Protocol::Tcp, PortMatch::Range(9090, 9090)),
            ],
            "a port it cannot read is skipped, not an error"
        );
    }
}
