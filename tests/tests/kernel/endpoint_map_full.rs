//! The endpoint map full: a local pod whose entry the kernel refuses is
//! not reported enforced (its interface has no entry, so nothing judges
//! it), the sync says why, and a later sync with room enforces it.

use crate::fixture::*;
use palisade::datapath::MapSizes;
use palisade::state::Enforcement;

#[test]
fn a_pod_whose_endpoint_entry_is_refused_is_not_reported_enforced() {
    let sizes = MapSizes { endpoints: LOCALS.len() as u32, ..MapSizes::default() };
    let mut env = Env::sized(settings(), sizes);
    let (ip4, ip6) = ("10.70.1.40", "fd00:70:0:1::40");
    let ifindex = env.add_interface(ip4, ip6);
    let all: Vec<&str> = LOCALS.iter().map(|l| l.0).collect();
    let denied = |env: &mut Env, dst: &str| packet(addr("8.8.8.8"), addr(dst), L4::Tcp(env.fresh(), 22, TCP_SYN));
    let to_web = denied(&mut env, "10.70.1.10");
    assert_eq!(env.run(Direction::Ingress, "web", &to_web), DROP, "web's policy denies it");

    let report = env.try_apply(&input_with_local(&all, "web2", "web", ip4, ip6));
    assert!(report.errors.iter().any(|e| e.contains("endpoint map")), "{:?}", report.errors);
    let state = |report: &palisade::datapath::SyncReport, name: &str| {
        report.endpoints.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name}")).state.clone()
    };
    assert_eq!(state(&report, "web2"), Enforcement::EntryRefused);
    for name in &all {
        assert_eq!(state(&report, name), Enforcement::Enforced, "{name}");
    }
    // What the state says: no entry, nothing judges its interface.
    let to_web2 = denied(&mut env, ip4);
    assert_eq!(env.run_on(Direction::Ingress, ifindex, &to_web2), PASS, "unjudged, as reported");

    // solo leaves: room for web2's entry.
    let report = env.try_apply(&input_with_local(&["web", "db"], "web2", "web", ip4, ip6));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(state(&report, "web2"), Enforcement::Enforced);
    let to_web2 = denied(&mut env, ip4);
    assert_eq!(env.run_on(Direction::Ingress, ifindex, &to_web2), DROP, "judged by web's policy once written");
}

/// Strict mode: an interface no pod is known for is held closed by an
/// entry of its own; refused, it is not held, and not listed as pending.
#[test]
fn a_pending_interface_whose_hold_is_refused_is_not_listed_as_held() {
    let strict = Settings { strict_prefixes: vec!["plkt".into()], ..settings() };
    let sizes = MapSizes { endpoints: LOCALS.len() as u32, ..MapSizes::default() };
    let mut env = Env::sized(strict, sizes);
    let ifindex = env.add_interface("10.70.1.40", "fd00:70:0:1::40");
    let report = env.try_apply(&input(false));
    assert!(report.errors.iter().any(|e| e.contains("endpoint map")), "{:?}", report.errors);
    assert!(report.pending.is_empty(), "listed as held though refused: {:?}", report.pending);
    let pkt = packet(addr("8.8.8.8"), addr("10.70.1.40"), L4::Tcp(env.fresh(), 22, TCP_SYN));
    assert_eq!(env.run_on(Direction::Ingress, ifindex, &pkt), PASS, "no entry: not judged, as reported");
}
