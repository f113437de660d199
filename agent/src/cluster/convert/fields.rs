//! Checks and defaults several kinds share, as the API server applies
//! them: object names, labels, port names and protocols.

use super::{FieldError, err};
use crate::policy::model::Protocol;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// An object's (namespace, name), checked with its labels; the namespace
/// defaults to `default` (empty for cluster-scoped objects).
pub(super) fn meta_names(meta: &ObjectMeta, namespaced: bool, errors: &mut Vec<FieldError>) -> (String, String) {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(err("metadata.name", "Required value"));
    } else if !is_dns_subdomain(&name) {
        errors.push(err("metadata.name", format!("{name:?} is not a valid DNS subdomain name")));
    }
    let namespace = if namespaced {
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
        if !is_dns_label(&ns) {
            errors.push(err("metadata.namespace", format!("{ns:?} is not a valid DNS label")));
        }
        ns
    } else {
        String::new()
    };
    for (k, v) in meta.labels.iter().flatten() {
        validate_label_key(k, "metadata.labels", errors);
        validate_label_value(v, &format!("metadata.labels[{k}]"), errors);
    }
    (namespace, name)
}

/// A port's protocol: TCP when omitted.
pub(super) fn port_protocol(s: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    s.map_or(Ok(Protocol::Tcp), Protocol::from_name).map_err(|m| err(field, m))
}

/// A port number: 1..=65535.
pub(super) fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// IANA_SVC_NAME: 1-15 lowercase alphanumerics or '-', at least one
/// letter, no leading, trailing or doubled '-'.
pub(super) fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name: 1-15 lowercase letters, digits or '-', with at least one letter"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

pub(super) fn validate_label_key(key: &str, field: &str, errors: &mut Vec<FieldError>) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok = is_label_name(name) && prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p));
    if !ok {
        errors.push(err(field, format!("{key:?} is not a valid label key")));
    }
}

pub(super) fn validate_label_value(value: &str, field: &str, errors: &mut Vec<FieldError>) {
    if !value.is_empty() && !is_label_name(value) {
        errors.push(err(field, format!("{value:?} is not a valid label value")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names() {
        assert!(validate_port_name("http").is_ok());
        assert!(validate_port_name("h2c-80").is_ok());
        assert!(validate_port_name("80").is_err());
        assert!(validate_port_name("a--b").is_err());
        assert!(validate_port_name("Http").is_err());
        assert!(validate_port_name("averyveryverylongname").is_err());
    }
}
