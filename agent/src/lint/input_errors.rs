//! Objects the agent could not use as written: the errors its own loading
//! reports (`cluster::convert`, the file source), as findings. Manifest
//! files are read as `kubectl apply` reads them (YAML 1.1: an unquoted
//! `yes`, `no`, `on`, `off`, `y` or `n` is a boolean), so a boolean where a
//! string belongs is an error naming the field, as the API server would
//! reject the object.

use super::{Finding, Severity};
use crate::cluster::InputError;
use crate::cluster::convert::AUDIT_ANNOTATION;

pub fn check(errors: &[InputError]) -> Vec<Finding> {
    errors.iter().map(finding).collect()
}

fn finding(e: &InputError) -> Finding {
    let (object, source) = match e.object.as_str() {
        "" => (e.source.clone(), String::new()),
        o => (o.to_string(), if e.source == "kubernetes" { String::new() } else { e.source.clone() }),
    };
    let mut message = e.message.clone();
    let (severity, why) =
        if e.field == format!("metadata.annotations[{AUDIT_ANNOTATION}]") && e.action.starts_with("ignored") {
            (Severity::Info, "the annotation only takes effect on agents started with --allow-namespace-audit")
        } else if e.message.starts_with("unsupported peer") {
            (Severity::Warning, "the API accepts this peer but palisade does not evaluate it: the rule fails closed")
        } else if e.action.is_empty() {
            (Severity::Warning, "palisade reads this object without the value at fault")
        } else if e.message.starts_with("also defined in") {
            (Severity::Warning, "two manifests define the same object: only one of them is in force")
        } else {
            if e.message.contains("invalid type: boolean") {
                message.push_str(
                    " (YAML 1.1, as kubectl reads it, makes an unquoted yes/no/on/off/y/n a boolean: quote the value)",
                );
            }
            (Severity::Error, "the API server rejects this object; palisade does not enforce it as written")
        };
    if !e.action.is_empty() && severity == Severity::Error {
        message = format!("{message}; palisade: {}", e.action);
    }
    Finding { severity, object, field: e.field.clone(), check: "invalid", message, why: why.into(), source }
}
