//! The verifier's cost of the classifiers, which every agent start pays
//! (start → policy in force). The conntrack fast path once doubled it: its
//! inlined key parse left the full pipeline to be verified once per way of
//! leaving it (155k and 705k instructions, 2.4 s; since it is a call of
//! its own, 53k and 171k, 0.5 s). The ingress pipeline also held the
//! deferred-egress check, verified again on each of its paths; since that
//! is a call of its own before the pipeline, 53k and 71k; with a
//! conntrack table per address family (each lookup picks one), 69k and
//! 91k; with denied flows on the fast path, 82k and 112k; with a class's
//! parent looked up when its own entries miss (two more trie lookups on
//! every policy decision), 89k and 123k; with the parent's lookups its
//! entries let a child skip (two endpoint flags; the same for the class's
//! own lookups had it at 108k and 150k), 90k and 122k. Bounds: about
//! 1.13× those.

use crate::fixture::*;

/// Instructions the verifier processed per program, at most.
const BUDGET: [(&str, u32); 2] = [("pod egress (from pod)", FROM_POD_MAX), ("pod ingress (to pod)", TO_POD_MAX)];
const FROM_POD_MAX: u32 = 100_000;
const TO_POD_MAX: u32 = 140_000;

#[test]
fn classifiers_verify_within_budget() {
    let env = Env::new(settings());
    let mut failures = Vec::new();
    for ((what, max), dir) in BUDGET.into_iter().zip([Direction::Egress, Direction::Ingress]) {
        let prog = env.dp.classifier(dir).expect("classifier");
        let insns = prog.info().expect("program info").verified_instruction_count().expect("verified_insns");
        eprintln!("{what}: {insns} instructions verified");
        if insns > max {
            failures.push(format!("{what}: {insns} instructions verified, budget {max}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
