//! `kubectl palisade`: the cluster's agents reached from one machine.
//! [`agents`] is the set of per-node connections and what is asked of
//! every node; [`merge`] merges their event streams into one.

pub mod agents;
pub mod merge;
