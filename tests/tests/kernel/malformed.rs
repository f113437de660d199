//! 3. Malformed and odd packets.

use crate::fixture::*;

#[test]
fn truncated_packets_drop() {
    let mut env = Env::new(settings());
    let client4 = v4("10.70.2.5");
    let client6 = v6("fd00:70:0:2::5");
    let web = env.local("web");
    let sport = env.fresh();
    let full4 = ipv4(client4, v4("10.70.1.10"), PROTO_TCP, 0, 0, &tcp(sport, 80, TCP_SYN));
    let full6 = ipv6(client6, v6("fd00:70:0:1::10"), PROTO_TCP, &tcp(sport, 80, TCP_SYN));
    let (_, chain) = ext_chain(2, PROTO_TCP, &tcp(sport, 80, TCP_SYN));
    let full6_ext = ipv6(client6, v6("fd00:70:0:1::10"), NH_HOPOPTS, &chain);
    let (mut refused, mut judged) = (0u64, 0u64);
    for round in ["before", "after"] {
        for full in [&full4, &full6, &full6_ext] {
            for len in 0..full.len() {
                let cut = &full[..len];
                match env.try_run(Direction::Ingress, web.ifindex, cut) {
                    Err(_) if !kernel_accepts(cut) => refused += 1,
                    Err(e) => panic!("{len} bytes: {e}"),
                    Ok(_) if !kernel_accepts(cut) => panic!("the kernel ran a {len}-byte packet"),
                    Ok(v) => {
                        assert_eq!(verdict(v), Some(DROP), "{round}: {len} of {} bytes", full.len());
                        judged += 1;
                    }
                }
            }
        }
        // The whole packet is allowed (client -> web:80), and then tracked:
        // truncations drop before and after the flow exists.
        for full in [&full4, &full6, &full6_ext] {
            assert_eq!(env.run(Direction::Ingress, "web", full), PASS, "{round}: the full packet");
        }
    }
    // Trailing bytes beyond the IP length (Ethernet padding) are fine.
    let mut padded = full4.clone();
    padded.extend([0; 10]);
    assert_eq!(env.run(Direction::Ingress, "web", &padded), PASS);
    assert_eq!(refused, 2 * (34 + 54 + 54), "refused: shorter than Ethernet + IP header");
    assert_eq!(judged, 2 * (20 + 20 + 36), "judged: every cut into the IP payload");
    assert_eq!(env.counter(stat::DROPPED_MALFORMED), judged, "every truncation counted as malformed");
}

#[test]
fn malformed_headers_drop() {
    let mut env = Env::new(settings());
    let client4 = v4("10.70.2.5");
    let client6 = v6("fd00:70:0:2::5");
    let web4 = v4("10.70.1.10");
    let web6 = v6("fd00:70:0:1::10");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    let good4 = |sport: u16| ipv4(client4, web4, PROTO_TCP, 0, 0, &tcp(sport, 80, TCP_SYN));
    let good6 = |sport: u16| ipv6(client6, web6, PROTO_TCP, &tcp(sport, 80, TCP_SYN));
    for ihl in [0u8, 1, 4] {
        let mut p = good4(env.fresh());
        p[ETH_LEN] = 0x40 | ihl;
        cases.push(("IPv4 IHL < 5", p));
    }
    for version in [0u8, 5, 6, 15] {
        let mut p = good4(env.fresh());
        p[ETH_LEN] = (version << 4) | 5;
        cases.push(("IPv4 ethertype, other IP version", p));
    }
    for version in [0u8, 4, 7] {
        let mut p = good6(env.fresh());
        p[ETH_LEN] = version << 4;
        cases.push(("IPv6 ethertype, other IP version", p));
    }
    for extra in [1u16, 100, 0xffff - 40] {
        let mut p = good4(env.fresh());
        let tot = 40 + extra;
        p[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
        cases.push(("IPv4 total length beyond the packet", p));
    }
    for tot in [0u16, 19] {
        let mut p = good4(env.fresh());
        p[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
        cases.push(("IPv4 total length below the header", p));
    }
    for extra in [1u16, 1000] {
        let mut p = good6(env.fresh());
        p[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(20 + extra).to_be_bytes());
        cases.push(("IPv6 payload length beyond the packet", p));
    }
    // L4 headers shorter than their minimum, with consistent IP lengths.
    let short_tcp = tcp(env.fresh(), 80, TCP_SYN)[..16].to_vec();
    cases.push(("TCP header of 16 bytes (v4)", ipv4(client4, web4, PROTO_TCP, 0, 0, &short_tcp)));
    cases.push(("TCP header of 16 bytes (v6)", ipv6(client6, web6, PROTO_TCP, &short_tcp)));
    let short_udp = udp(env.fresh(), 53, &[])[..6].to_vec();
    cases.push(("UDP header of 6 bytes", ipv4(client4, web4, PROTO_UDP, 0, 0, &short_udp)));
    let short_sctp = sctp_init(env.fresh(), 9000)[..10].to_vec();
    cases.push(("SCTP header of 10 bytes", ipv4(client4, web4, PROTO_SCTP, 0, 0, &short_sctp)));
    cases.push(("ICMP header of 4 bytes", ipv4(client4, web4, PROTO_ICMP, 0, 0, &[8, 0, 0, 0])));
    // RFC 1858: a first fragment too short for the TCP header, and a second
    // fragment at offset 8 that would rewrite the first's TCP flags.
    let tiny = tcp(env.fresh(), 80, TCP_SYN)[..8].to_vec();
    cases.push(("tiny first TCP fragment", ipv4(client4, web4, PROTO_TCP, 7, 0x2000, &tiny)));
    cases.push(("TCP fragment at offset 1", ipv4(client4, web4, PROTO_TCP, 7, 0x0001, &[0; 12])));
    cases.push(("TCP fragment at offset 1, MF", ipv4(client4, web4, PROTO_TCP, 7, 0x2001, &[0; 16])));
    // An IPv6 extension header longer than the payload.
    let mut overrun = opts_header(PROTO_TCP);
    overrun[1] = 10;
    overrun.extend(tcp(env.fresh(), 80, TCP_SYN));
    cases.push(("IPv6 extension header overrunning the payload", ipv6(client6, web6, NH_DSTOPTS, &overrun)));
    // A first IPv6 fragment too short for the TCP header.
    let mut frag = vec![PROTO_TCP, 0, 0, 1, 0, 0, 0, 9];
    frag.extend(&tcp(env.fresh(), 80, TCP_SYN)[..8]);
    cases.push(("tiny first IPv6 TCP fragment", ipv6(client6, web6, NH_FRAGMENT, &frag)));

    let mut failures = Vec::new();
    for (what, pkt) in &cases {
        for hook in [Direction::Ingress, Direction::Egress] {
            let v = env.run(hook, "web", pkt);
            if v != DROP {
                failures.push(format!("{what} on {hook:?}: {v:?}\n  {}", hex(pkt)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let events = env.drain();
    assert_eq!(events.len(), cases.len() * 2, "one event per malformed packet");
    for e in &events {
        assert_eq!((e.verdict, e.reason), (VERDICT_DROPPED, REASON_MALFORMED), "{e:?}");
    }
    assert_eq!(env.counter(stat::DROPPED_MALFORMED), (cases.len() * 2) as u64);
}

#[test]
fn odd_but_valid_packets() {
    let mut env = Env::new(settings());
    let client6 = v6("fd00:70:0:2::5");
    let web6 = v6("fd00:70:0:1::10");

    // Not IP: none of NetworkPolicy's business, even fully isolated.
    let mut arp = eth(ETH_P_ARP);
    arp.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend([2, 0, 0, 0, 0, 2, 10, 70, 1, 1, 0, 0, 0, 0, 0, 0, 10, 70, 1, 30]);
    for local in ["web", "solo"] {
        for hook in [Direction::Ingress, Direction::Egress] {
            assert_eq!(env.run(hook, local, &arp), PASS, "ARP {local} {hook:?}");
        }
    }
    let mut lldp = eth(0x88cc);
    lldp.extend([0; 32]);
    assert_eq!(env.run(Direction::Ingress, "solo", &lldp), PASS, "LLDP");

    // Neighbour discovery passes where an echo request does not.
    let solo6 = v6("fd00:70:0:1::30");
    let router = v6("fe80::1");
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend(solo6.octets());
    ns.extend([1, 1, 2, 0, 0, 0, 0, 1]);
    let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend(solo6.octets());
    let solicited = v6("ff02::1:ff00:30");
    assert_eq!(env.run(Direction::Ingress, "solo", &ndp(router, solicited, &ns)), PASS, "NS in");
    assert_eq!(env.run(Direction::Egress, "solo", &ndp(solo6, router, &na)), PASS, "NA out");
    let mut ns_out = ns.clone();
    ns_out[8..24].copy_from_slice(&router.octets());
    assert_eq!(env.run(Direction::Egress, "solo", &ndp(solo6, router, &ns_out)), PASS, "NS out");
    let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0];
    rs.extend([1, 1, 2, 0, 0, 0, 0, 1]);
    assert_eq!(env.run(Direction::Egress, "solo", &ndp(solo6, v6("ff02::2"), &rs)), PASS, "RS");
    // An MLDv2 report (hop limit 1, link-local source, router alert).
    let mut mld = vec![PROTO_ICMPV6, 0, 5, 2, 0, 0, 1, 0];
    mld.extend([143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0]);
    mld.extend(solicited.octets());
    let mut report = ipv6(v6("fe80::30"), v6("ff02::16"), NH_HOPOPTS, &mld);
    report[ETH_LEN + 7] = 1;
    assert_eq!(env.run(Direction::Egress, "solo", &report), PASS, "MLDv2 report behind hop-by-hop");
    let echo = icmp_echo(true, false, env.fresh());
    assert_eq!(env.run(Direction::Ingress, "solo", &ipv6(router, solo6, PROTO_ICMPV6, &echo)), DROP, "echo in");

    // Extension headers before TCP: judged on the TCP port like the plain
    // packet, up to the parser's limit of 6 headers.
    for n in [0usize, 1, 2, 6] {
        for (port, want) in [(80, PASS), (81, DROP), (8050, PASS)] {
            let (first, payload) = ext_chain(n, PROTO_TCP, &tcp(env.fresh(), port, TCP_SYN));
            let pkt = ipv6(client6, web6, first, &payload);
            assert_eq!(env.run(Direction::Ingress, "web", &pkt), want, "{n} extension headers, port {port}");
        }
    }
    // Authentication and routing headers too.
    for (port, want) in [(80, PASS), (81, DROP)] {
        let mut ah = vec![PROTO_TCP, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        ah.extend([0; 12]);
        ah.extend(tcp(env.fresh(), port, TCP_SYN));
        let got = env.run(Direction::Ingress, "web", &ipv6(client6, web6, 51, &ah));
        assert_eq!(got, want, "AH, port {port}");
        let mut rh = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
        rh.extend(tcp(env.fresh(), port, TCP_SYN));
        let got = env.run(Direction::Ingress, "web", &ipv6(client6, web6, 43, &rh));
        assert_eq!(got, want, "routing header, port {port}");
    }
    // IPv4 options: the transport header starts after them.
    let client4 = v4("10.70.2.5");
    let web4 = v4("10.70.1.10");
    for ihl in [6usize, 10, 15] {
        for (port, want) in [(80, PASS), (81, DROP)] {
            let mut payload = vec![1u8; (ihl - 5) * 4];
            payload.extend(tcp(env.fresh(), port, TCP_SYN));
            let mut pkt = ipv4(client4, web4, PROTO_TCP, 0, 0, &payload);
            pkt[ETH_LEN] = 0x40 | ihl as u8;
            let got = env.run(Direction::Ingress, "web", &pkt);
            assert_eq!(got, want, "IHL {ihl}, port {port}");
        }
    }

    // A fragment header (atomic fragment: offset 0, no MF) is an extension
    // header like the others.
    let mut atomic = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 1];
    atomic.extend(tcp(env.fresh(), 80, TCP_SYN));
    assert_eq!(env.run(Direction::Ingress, "web", &ipv6(client6, web6, NH_FRAGMENT, &atomic)), PASS);

    // More than 6 extension headers: the parser stops walking and judges
    // the packet as the protocol of the 7th header (60, destination
    // options) with no ports. The verdict is defined: DROP (no rule), where
    // only port rules exist, not malformed...
    env.drain();
    for n in [7usize, 8, 20] {
        let (first, payload) = ext_chain(n, PROTO_TCP, &tcp(env.fresh(), 80, TCP_SYN));
        let pkt = ipv6(client6, web6, first, &payload);
        assert_eq!(env.run(Direction::Ingress, "web", &pkt), DROP, "{n} extension headers");
    }
    // All three are one flow (protocol 60, no ports): one event, two suppressed.
    let events = env.drain();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(
        (e.verdict, e.reason, e.protocol, e.sport, e.dport),
        (VERDICT_DROPPED, REASON_NO_RULE, NH_DSTOPTS, 0, 0)
    );
    // ...and PASS where a rule allows the peer every protocol and port.
    let trusted = v6("fd00:99::1");
    let db6 = v6("fd00:70:0:1::20");
    let (first, payload) = ext_chain(7, PROTO_TCP, &tcp(env.fresh(), 22, TCP_SYN));
    assert_eq!(env.run(Direction::Ingress, "db", &ipv6(trusted, db6, first, &payload)), PASS);
    let (first, payload) = ext_chain(7, PROTO_TCP, &tcp(env.fresh(), 5432, TCP_SYN));
    assert_eq!(env.run(Direction::Ingress, "db", &ipv6(web6, db6, first, &payload)), DROP, "web's rule names a port");
}
