//! 5. Interfaces without an endpoint.

use crate::fixture::*;

#[test]
fn unmanaged_interfaces_pass_everything() {
    let mut env = Env::new(settings());
    let denied = packet(addr("8.8.8.8"), addr("10.70.1.30"), L4::Tcp(env.fresh(), 22, TCP_SYN));
    let mut malformed = denied.clone();
    malformed[ETH_LEN] = 0x41;
    let garbage = vec![0xff; 60];
    let solo = env.local("solo");
    // The denied packet really is denied where an endpoint exists.
    assert_eq!(env.run(Direction::Ingress, "solo", &denied), DROP);
    let before = env.dp.counters();
    env.drain();
    for ifindex in [solo.peer_ifindex, env.local("web").peer_ifindex, 1, 0] {
        for hook in [Direction::Ingress, Direction::Egress] {
            for pkt in [&denied, &malformed, &garbage] {
                assert_eq!(env.run_on(hook, ifindex, pkt), PASS, "ifindex {ifindex} {hook:?}");
            }
        }
    }
    assert_eq!(env.dp.counters(), before, "nothing counted for unmanaged interfaces");
    assert!(env.drain().is_empty(), "no events for unmanaged interfaces");
    // An interface that does not exist at all is refused by the kernel.
    assert!(env.try_run(Direction::Ingress, u32::MAX - 7, &denied).is_err());
}
