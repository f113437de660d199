//! 4. Fragments.

use crate::fixture::*;

#[test]
fn fragments_inherit_the_first_fragments_ports() {
    let mut env = Env::new(settings());
    let mon4 = v4("10.70.4.5");
    let web4 = v4("10.70.1.10");
    let mon6 = v6("fd00:70:0:4::5");
    let web6 = v6("fd00:70:0:1::10");

    // IPv4: UDP 53 from namespace ops is allowed to web; 54 is not.
    for (port, id, want) in [(53u16, 0x4242u16, PASS), (54, 0x4343, DROP)] {
        let sport = env.fresh();
        let mut first = udp(sport, port, &[0xab; 16]);
        first[4..6].copy_from_slice(&40u16.to_be_bytes());
        let first = ipv4(mon4, web4, PROTO_UDP, id, 0x2000, &first);
        assert_eq!(env.run(Direction::Ingress, "web", &first), want, "first to {port}");
        let later = ipv4(mon4, web4, PROTO_UDP, id, 3, &[0xcd; 16]);
        assert_eq!(env.run(Direction::Ingress, "web", &later), want, "later to {port}");
        let middle = ipv4(mon4, web4, PROTO_UDP, id, 0x2000 | 2, &[0xcd; 8]);
        assert_eq!(env.run(Direction::Ingress, "web", &middle), want, "middle {port}");
    }
    env.drain();
    let stray = ipv4(mon4, web4, PROTO_UDP, 0x4244, 3, &[0xcd; 16]);
    assert_eq!(env.run(Direction::Ingress, "web", &stray), DROP, "a later fragment of an unknown datagram");
    let events = env.drain();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.sport, e.dport, e.flags & EVF_FRAGMENT), (0, 0, EVF_FRAGMENT), "{e:?}");
    // The same id from another source is another datagram.
    let other = ipv4(v4("10.70.4.6"), web4, PROTO_UDP, 0x4242, 3, &[0xcd; 16]);
    assert_eq!(env.run(Direction::Ingress, "web", &other), DROP, "same id, other source");
    // Port 0 is allowed where a rule allows every port.
    let trusted = ipv4(v4("172.16.5.5"), v4("10.70.1.20"), PROTO_UDP, 0x99, 3, &[0xcd; 16]);
    assert_eq!(env.run(Direction::Ingress, "db", &trusted), PASS, "unknown datagram, rule without ports");

    // IPv6: the fragment header carries a 32-bit id.
    for (port, id, want) in [(53u16, 0xdead_beefu32, PASS), (54, 0xdead_bef0, DROP)] {
        let sport = env.fresh();
        let mut first = vec![PROTO_UDP, 0, 0, 1];
        first.extend(id.to_be_bytes());
        let mut u = udp(sport, port, &[0xab; 16]);
        u[4..6].copy_from_slice(&40u16.to_be_bytes());
        first.extend(u);
        let first = ipv6(mon6, web6, NH_FRAGMENT, &first);
        assert_eq!(env.run(Direction::Ingress, "web", &first), want, "v6 first {port}");
        let mut later = vec![PROTO_UDP, 0, 0, 3 << 3];
        later.extend(id.to_be_bytes());
        later.extend([0xcd; 16]);
        let later = ipv6(mon6, web6, NH_FRAGMENT, &later);
        assert_eq!(env.run(Direction::Ingress, "web", &later), want, "v6 later {port}");
    }
    let mut stray = vec![PROTO_UDP, 0, 0, 3 << 3];
    stray.extend(0x1234_5678u32.to_be_bytes());
    stray.extend([0xcd; 16]);
    assert_eq!(env.run(Direction::Ingress, "web", &ipv6(mon6, web6, NH_FRAGMENT, &stray)), DROP, "v6 stray");

    // Egress too: web may send UDP 53 into 10/8.
    let sport = env.fresh();
    let first = ipv4(web4, v4("10.1.2.3"), PROTO_UDP, 0x77, 0x2000, &udp(sport, 53, &[0; 16]));
    assert_eq!(env.run(Direction::Egress, "web", &first), PASS);
    let later = ipv4(web4, v4("10.1.2.3"), PROTO_UDP, 0x77, 3, &[0; 8]);
    assert_eq!(env.run(Direction::Egress, "web", &later), PASS);
    let stray = ipv4(web4, v4("10.1.2.3"), PROTO_UDP, 0x78, 3, &[0; 8]);
    assert_eq!(env.run(Direction::Egress, "web", &stray), DROP);
}
