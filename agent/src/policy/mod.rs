//! NetworkPolicy model -> compiled, kernel-ready map entries. Pure Rust: no
//! kernel, no I/O. The contract: [`model`] is what goes in (validated by
//! `cluster::convert`), [`compiled`] is what comes out (what the datapath
//! writes and user space reads back), [`compile()`] turns one into the
//! other, and [`lookup`] replays the kernel's decision on the output.

pub mod chunked;
pub mod compile;
pub mod compiled;
pub mod labels;
pub mod lookup;
pub mod model;

pub use compile::compile;
pub use compiled::{Catalog, Compiled, IdentityInfo, IpPrefix, LocalEndpoint, PolicyPrefix, RuleInfo};
pub use model::{Direction, Input, Namespace, Node, Pod, Policy, PolicyRef, Service, Workload};
