//! `kubectl palisade`: the cluster's agents reached from one machine.
//! [`nodes`] is the set of per-node connections and what is asked of
//! every node; [`merge`] merges their event streams into one.

pub mod nodes;
pub mod merge;
