//! `palisade advise`: least-privilege NetworkPolicies from the flow
//! records, checked with palisade's own compiler before they are printed.

pub mod cli;
pub mod sources;
