//! Node: what ClusterNetworkPolicy `nodes` peers select (its labels) and
//! mean (the IPs of its status.addresses).

use super::fields::meta_names;
use super::{FieldError, err};
use crate::policy::model::NodeObject;
use k8s_openapi::api::core::v1::Node as K8sNode;
use std::net::IpAddr;

/// The address types that are IPs (Hostname, InternalDNS and ExternalDNS
/// are names).
const IP_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

impl NodeObject {
    /// A Node's name, labels and IP addresses. An address that does not
    /// parse is skipped and reported (the others still count): a valid
    /// Node's addresses never depend on one broken entry.
    pub(crate) fn from_k8s(node: &K8sNode) -> Result<(NodeObject, Vec<FieldError>), Vec<FieldError>> {
        let mut errors = Vec::new();
        let (_, name) = meta_names(&node.metadata, false, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut warnings = Vec::new();
        let mut ips = Vec::new();
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in addresses.into_iter().flatten().enumerate() {
            if !IP_TYPES.contains(&a.type_.as_str()) {
                continue;
            }
            match a.address.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => warnings.push(err(
                    format!("status.addresses[{i}].address"),
                    format!("{:?} is not an IP address: skipped (nodes peers do not match it)", a.address),
                )),
            }
        }
        let labels = node.metadata.labels.iter().flatten().collect();
        Ok((NodeObject { name, labels, ips }, warnings))
    }
}
