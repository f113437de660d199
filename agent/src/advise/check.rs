//! `advise --check`: the recorded flows replayed against the policies in
//! force and against the policies in force plus proposed manifests; what
//! the change would newly deny or newly allow.

use super::verify::{Outcome, Verifier};
use super::{window, workloads};
use crate::flows::{FlowKey, Merged, Stats};
use crate::policy::Input;
use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Flows the policies in force allow and the change would deny (or
    /// allow only for some pods).
    pub newly_denied: Vec<(FlowKey, Stats)>,
    /// Flows the policies in force deny and the change would allow.
    pub newly_allowed: Vec<(FlowKey, Stats)>,
    /// Flows replayed.
    pub replayed: usize,
}

/// `proposed` holds the manifests to add (their NetworkPolicies replace
/// those of the same name).
pub fn check(input: &Input, proposed: &Input, merged: &Merged, since: Duration) -> Change {
    let mut after_input = input.clone();
    after_input.policies.extend(proposed.policies.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (bi, ai) = (workloads::index(input), workloads::index(&after_input));
    let hosts = super::node_ips(merged);
    let (before, after) = (Verifier::new(input, &bi, hosts.clone()), Verifier::new(&after_input, &ai, hosts));
    let mut out = Change::default();
    for (key, st) in window(merged, since) {
        let (b, a) = (before.flow(&key), after.flow(&key));
        if matches!(b, Outcome::Unknown(_)) {
            continue;
        }
        out.replayed += 1;
        match (b == Outcome::Allowed, a == Outcome::Allowed) {
            (true, false) => out.newly_denied.push((key, st)),
            (false, true) => out.newly_allowed.push((key, st)),
            _ => {}
        }
    }
    out
}
