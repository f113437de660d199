//! Service: only its cluster IPs matter (traffic to them is DNATed to a
//! backend, and egress policy must judge the backend).

use super::fields::meta_names;
use super::{FieldError, err, finish};
use crate::policy::model::Service;
use k8s_openapi::api::core::v1::Service as K8sService;
use std::net::IpAddr;

impl Service {
    /// A Service's cluster IPs (`None` and empty ones are skipped).
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
        finish(Service { namespace, name, cluster_ips }, errors)
    }
}
