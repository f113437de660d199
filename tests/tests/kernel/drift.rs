//! Map entries changed behind the agent's back (`bpftool`, another tool):
//! a sync compares with the agent's record of what it wrote, so it does
//! not see them; the agent's full resync reads the maps back first
//! (`Datapath::reread`) and the sync after it rewrites them.

use crate::fixture::*;
use palisade_common::{Endpoint, PolicyKey, PolicyValue, maps};

#[test]
fn a_full_resync_rewrites_entries_changed_behind_the_agents_back() {
    let mut env = Env::new(settings());
    let world = addr("93.184.216.34");
    // solo may send to TCP 80 anywhere and takes nothing in.
    let allowed = |env: &mut Env| {
        let port = env.fresh();
        env.egress("solo", world, L4::Tcp(port, 80, TCP_SYN))
    };
    let denied = |env: &mut Env| {
        let port = env.fresh();
        env.ingress("solo", world, L4::Tcp(port, 22, TCP_SYN))
    };
    assert_eq!((allowed(&mut env), denied(&mut env)), (PASS, DROP));
    assert_eq!(env.dp.reread().expect("reading the maps back"), 0, "the maps hold what the agent wrote");

    // Someone removes every endpoint entry and every one-port policy
    // entry, and opens one pod's endpoint (no isolation flags).
    let endpoints = env.take_entries::<u32, Endpoint>(maps::ENDPOINTS);
    let policy = env.take_entries::<PolicyKey, PolicyValue>(maps::POLICY_PORTS);
    assert!(!endpoints.is_empty() && !policy.is_empty());
    let web = env.local("web");
    let open = Endpoint { class: web.class, flags: 0, parent: web.parent };
    env.put_entry(maps::ENDPOINTS, web.ifindex, open);
    assert_eq!(denied(&mut env), PASS, "an interface without its endpoint entry is not judged");
    // A sync against the record alone sees nothing to do.
    env.apply(input(false));
    assert_eq!(denied(&mut env), PASS, "the record says the entries are there");

    // The resync: read back, then sync.
    let drifted = env.dp.reread().expect("reading the maps back");
    assert_eq!(drifted, endpoints.len() + policy.len(), "each entry removed or changed counts once");
    env.apply(input(false));
    assert_eq!((allowed(&mut env), denied(&mut env)), (PASS, DROP), "solo is judged again");
    let now = env.entries::<u32, Endpoint>(maps::ENDPOINTS);
    assert_eq!(now.len(), endpoints.len());
    assert!(endpoints.iter().all(|e| now.contains(e)), "every endpoint entry as the agent wrote it");
    let now = env.entries::<PolicyKey, PolicyValue>(maps::POLICY_PORTS);
    assert_eq!(now.len(), policy.len());
    assert!(policy.iter().all(|e| now.contains(e)), "every policy entry as the agent wrote it");
    assert_eq!(env.dp.reread().expect("reading the maps back"), 0, "nothing left to rewrite");

    // The config: an older revision written back would let flows tracked
    // since pass on their old verdicts; it counts once and is rewritten
    // with a new revision.
    let config = env.config();
    env.set_config(palisade_common::Config { revision: config.revision.wrapping_sub(1), ..config });
    assert_eq!(env.dp.reread().expect("reading the maps back"), 1, "the config changed behind the agent's back");
    env.apply(input(false));
    assert_eq!(env.config().revision, config.revision.wrapping_add(1), "rewritten, with a revision never used");
    assert_eq!(env.dp.reread().expect("reading the maps back"), 0, "nothing left to rewrite");
}
