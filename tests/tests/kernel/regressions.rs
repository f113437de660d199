//! Classifier bugs these tests found (now fixed), kept as regressions.

use crate::fixture::*;

/// ICMPv6 types 130-137 and 143 once passed before any policy, whatever
/// their scope: an egress-isolated pod could send (and an ingress-isolated
/// pod receive) arbitrary payload to/from any global address as long as the
/// ICMPv6 type byte said "neighbour solicitation" or "MLD report". Real NDP
/// is link-scoped (hop limit 255, RFC 4861 section 7.1) and MLD uses hop
/// limit 1 with a link-local source; a forwarded, global-scoped message of
/// those types is not plumbing and should be judged by policy.
#[test]
fn ndp_typed_icmpv6_off_the_link_is_judged_by_policy() {
    let env = Env::new(settings());
    let world6 = v6("2606:4700::1111");
    let solo6 = v6("fd00:70:0:1::30");
    let mut failures = Vec::new();
    for ty in [130u8, 133, 135, 136, 143] {
        let mut msg = vec![ty, 0, 0, 0];
        msg.extend([0x42; 64]);
        let out = ipv6(solo6, world6, PROTO_ICMPV6, &msg);
        let inbound = ipv6(world6, solo6, PROTO_ICMPV6, &msg);
        for (what, hook, pkt) in [("out of", Direction::Egress, out), ("into", Direction::Ingress, inbound)] {
            let v = env.run(hook, "solo", &pkt);
            if v != DROP {
                failures.push(format!("ICMPv6 type {ty} {what} isolated solo: {v:?}\n  {}", hex(&pkt)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 8200 lets a destination options header follow the fragment header
/// (it belongs to the fragmentable part). The first fragment's ports are
/// stored under the protocol found after walking the chain (UDP), but later
/// fragments look them up under the fragment header's next header (60), so
/// they miss and are judged as protocol 60 with no ports: dropped although
/// the first fragment was allowed. Fails closed.
#[test]
fn ipv6_fragments_with_extension_headers_after_the_fragment_header() {
    let mut env = Env::new(settings());
    let mon6 = v6("fd00:70:0:4::5");
    let web6 = v6("fd00:70:0:1::10");
    let id = 0x00ab_cdefu32;
    let mut first = vec![NH_DSTOPTS, 0, 0, 1];
    first.extend(id.to_be_bytes());
    first.extend(opts_header(PROTO_UDP));
    first.extend(udp(env.fresh(), 53, &[0; 16]));
    assert_eq!(env.run(Direction::Ingress, "web", &ipv6(mon6, web6, NH_FRAGMENT, &first)), PASS, "first");
    let mut later = vec![NH_DSTOPTS, 0, 0, 4 << 3];
    later.extend(id.to_be_bytes());
    later.extend([0; 16]);
    let later = ipv6(mon6, web6, NH_FRAGMENT, &later);
    assert_eq!(env.run(Direction::Ingress, "web", &later), PASS, "later fragment\n  {}", hex(&later));
}

/// Conntrack keys ICMP echo by identifier only, without the message type:
/// after a pod pings a remote host with identifier X, that host's echo
/// *requests* with identifier X match the pod's flow and pass its isolated
/// ingress (Linux conntrack only admits the echo reply).
#[test]
fn echo_request_does_not_ride_on_the_pods_own_ping() {
    let mut env = Env::new(settings());
    let world = addr("8.8.8.8");
    let ident = env.fresh();
    assert_eq!(env.egress("db", world, L4::Echo(ident)), PASS, "db's egress is not isolated");
    assert_eq!(env.ingress("db", world, L4::EchoReply(ident)), PASS, "the reply");
    assert_eq!(env.ingress("db", world, L4::Echo(ident)), DROP, "a request from the remote into isolated db");
}

/// ICMP errors are related to tracked TCP, UDP and SCTP flows only: a time
/// exceeded or unreachable about a pod's own echo request (traceroute -I,
/// mtr, ping's error reporting) is judged as plain ICMP and dropped by an
/// isolated pod, although the echo flow is tracked.
#[test]
fn icmp_errors_about_echo_flows_are_related() {
    let mut env = Env::new(settings());
    let world = addr("8.8.8.8");
    let db4 = addr("10.70.1.20");
    let ident = env.fresh();
    assert_eq!(env.egress("db", world, L4::Echo(ident)), PASS);
    let sent = packet(db4, world, L4::Echo(ident));
    let err = icmp_error(addr("10.99.0.1"), db4, 11, 0, &sent[ETH_LEN..]);
    assert_eq!(env.run(Direction::Ingress, "db", &err), PASS, "time exceeded\n  {}", hex(&err));
}
