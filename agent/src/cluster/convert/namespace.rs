//! Namespace: its labels (with the name label the API server adds) and the
//! audit annotation.

use super::fields::{is_dns_label, meta_names};
use super::{FieldError, err, finish};
use crate::policy::model::{Labels, NAMESPACE_NAME_LABEL, Namespace};
use k8s_openapi::api::core::v1::Namespace as K8sNamespace;

/// Namespace annotation that puts one namespace in audit mode.
pub const AUDIT_ANNOTATION: &str = "palisade.dev/audit";

impl Namespace {
    /// A Namespace as the API server validates it, with its name label.
    pub(crate) fn from_k8s(ns: &K8sNamespace) -> Result<Namespace, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (_, name) = meta_names(&ns.metadata, false, &mut errors);
        if !name.is_empty() && !is_dns_label(&name) {
            errors.push(err("metadata.name", format!("{name:?} is not a valid DNS label")));
        }
        let mut labels: Labels = ns.metadata.labels.iter().flatten().collect();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        let audit = match ns.metadata.annotations.as_ref().and_then(|a| a.get(AUDIT_ANNOTATION)) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                errors.push(err(
                    format!("metadata.annotations[{AUDIT_ANNOTATION}]"),
                    format!("must be \"true\" or \"false\", not {v:?}"),
                ));
                false
            }
        };
        finish(Namespace { name, labels, audit }, errors)
    }
}
