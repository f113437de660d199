//! The compiler: cluster state in, the exact contents of the kernel maps out.
//!
//! It works in three steps, one module each: `cells` (the ipBlock CIDRs
//! addresses are judged by), `identities` (local and peer identities,
//! numbered, and the address map), and `rules` (policy entries keyed by
//! them). Selectors, named ports and CIDR containment are all resolved here,
//! so the kernel only looks entries up.

mod cells;
mod identities;
mod ids;
mod ports;
mod rules;

use super::compiled::LocalEndpoint;
use super::model::{Input, Node};
use cells::Cells;
use identities::Identities;
use palisade_common::EP_AUDIT;
use std::collections::BTreeSet;

/// What the compiler produces, also reachable from here.
pub use super::compiled::{Compiled, IpPrefix, PolicyPrefix, RULE_HOST, family_addr};

/// Compiles the whole cluster for one node. The same input always gives the
/// same output, numbers included.
pub fn compile(input: &Input, node: &Node) -> Compiled {
    let mut out = Compiled::default();
    let cells = Cells::new(input.policies.values().map(|p| p.as_ref()));
    let ids = Identities::new(input, node, &cells, &mut out);
    ids.address_entries(input, &cells, &mut out);
    let local = ids.local(node);
    let local_labels: BTreeSet<usize> = local.iter().map(|&(_, li)| li).collect();
    let (policy, flags) = rules::compile(input, node, &ids, &local_labels, &mut out.catalog);
    out.policy = policy;
    // Local endpoints: isolated as their policies say, audited as the node
    // or their namespace says.
    for (pi, li) in local {
        let pod = ids.pods[pi];
        let mut f = flags.get(&li).copied().unwrap_or(0);
        if node.audit || ids.labels[li].ns.audit {
            f |= EP_AUDIT;
        }
        out.endpoints.push(LocalEndpoint {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ips: pod.ips.clone(),
            identity: ids.label_ids[li],
            flags: f,
        });
    }
    out
}
