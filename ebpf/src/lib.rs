//! The classifier is the `palisade-classifier` binary of this crate; this
//! library target only lets the agent's build script depend on the crate,
//! so cargo rebuilds the agent when the classifier changes.
#![no_std]
