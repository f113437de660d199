//! The kit palisade's tests, benchmarks and xtask share: the facts about
//! protocols, reachability matrices, manifests, crafted packets and the
//! kernel's test-run interface, each in one place.
//!
//! This crate does not depend on the agent, so xtask can use it before
//! `cargo xtask setup` has installed what building the agent needs. What
//! needs the agent (its process, in-kernel fixtures) lives in the
//! `palisade-e2e` crate (tests/src), which builds on this one.

pub mod manifest;
pub mod matrix;
pub mod packet;
pub mod proto;
pub mod tc;

pub use matrix::Matrix;
pub use proto::Proto;
