//! 7. ICMP errors about tracked flows.

use crate::fixture::*;

#[test]
fn icmp_errors_follow_their_flow() {
    let mut env = Env::new(settings());
    let router4 = addr("10.99.0.1");
    let router6 = addr("2001:db9::1");
    for (remote, router, unreachable) in
        [(addr("8.8.8.8"), router4, (3u8, 3u8)), (addr("2606:4700::1111"), router6, (1u8, 4u8))]
    {
        let solo = env.local("solo").ip_like(remote);
        // solo sends UDP to remote:53 (allowed); an error about it comes back.
        let l4 = L4::Udp(env.fresh(), 53);
        assert_eq!(env.egress("solo", remote, l4), PASS);
        let sent = packet(solo, remote, l4);
        for from in [remote, router] {
            let err = icmp_error(from, solo, unreachable.0, unreachable.1, &sent[ETH_LEN..]);
            assert_eq!(env.run(Direction::Ingress, "solo", &err), PASS, "error about a tracked flow from {from}");
        }
        // The same error about a flow that was never allowed.
        let untracked = packet(solo, remote, L4::Udp(env.fresh(), 53));
        let err = icmp_error(remote, solo, unreachable.0, unreachable.1, &untracked[ETH_LEN..]);
        assert_eq!(env.run(Direction::Ingress, "solo", &err), DROP, "error about an untracked flow");
        let denied = packet(solo, remote, L4::Udp(env.fresh(), 54));
        assert_eq!(env.run(Direction::Egress, "solo", &denied), DROP);
        let err = icmp_error(remote, solo, unreachable.0, unreachable.1, &denied[ETH_LEN..]);
        assert_eq!(env.run(Direction::Ingress, "solo", &err), DROP, "error about a dropped flow");
        // Errors quote as little as the first 8 bytes of the transport
        // header (here of a TCP SYN solo sent).
        let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
        assert_eq!(env.egress("solo", remote, l4), PASS);
        let mut short = packet(solo, remote, l4)[ETH_LEN..].to_vec();
        short.truncate(short.len() - 12);
        let err = icmp_error(router, solo, unreachable.0, unreachable.1, &short);
        assert_eq!(env.run(Direction::Ingress, "solo", &err), PASS, "error quoting 8 bytes of TCP");
    }

    // Outgoing errors: web (egress isolated, nothing allows ICMP) may tell
    // a client about a flow it accepted, not about anything else.
    let client = addr("10.70.2.5");
    let web = env.local("web").ip4;
    let l4 = L4::Tcp(env.fresh(), 80, TCP_SYN);
    assert_eq!(env.ingress("web", client, l4), PASS);
    let received = packet(client, web, l4);
    let err = icmp_error(web, client, 3, 3, &received[ETH_LEN..]);
    assert_eq!(env.run(Direction::Egress, "web", &err), PASS, "error about an accepted flow");
    let other = packet(client, web, L4::Tcp(env.fresh(), 80, TCP_SYN));
    let err = icmp_error(web, client, 3, 3, &other[ETH_LEN..]);
    assert_eq!(env.run(Direction::Egress, "web", &err), DROP, "error about an unknown flow");
    // A fragmentation-needed error (type 3 code 4) for a flow web opened.
    let l4 = L4::Tcp(env.fresh(), 5432, TCP_SYN);
    let db = addr("10.70.1.20");
    assert_eq!(env.egress("web", db, l4), PASS);
    let sent = packet(web, db, l4);
    let err = icmp_error(addr("10.70.0.1"), web, 3, 4, &sent[ETH_LEN..]);
    assert_eq!(env.run(Direction::Ingress, "web", &err), PASS, "PMTU error about a tracked flow");
}
