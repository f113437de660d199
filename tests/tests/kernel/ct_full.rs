//! 10. A full connection tracking table.
//!
//! A flood of distinct allowed flows, sixteen times its size, with denied
//! packets in between, in each family's table. The
//! table only ever holds flows policy allowed; full, the kernel's LRU
//! forgets some to admit new ones. Nothing denied passes, a flow in use
//! survives, and a forgotten one is decided again by policy, as a new flow,
//! on its next packet.

use crate::fixture::*;
use palisade::datapath::MapSizes;
use std::net::Ipv4Addr;

#[test]
fn a_full_ipv4_conntrack_table_fails_closed() {
    flood(false);
}

#[test]
fn a_full_ipv6_conntrack_table_fails_closed() {
    flood(true);
}

const ENTRIES: u32 = 1024;
const FLOOD: u32 = 16 * ENTRIES;

/// The flood in one family (each has a table of its own, of `ENTRIES`).
fn flood(v6: bool) {
    let mut env = Env::sized(settings(), MapSizes { conntrack: ENTRIES, ..MapSizes::default() });
    let pick = |a4: &str, a6: &str| addr(if v6 { a6 } else { a4 });
    let family = if v6 { "IPv6" } else { "IPv4" };
    let world = pick("8.8.8.8", "2606:4700::1111");
    let client = pick("10.70.2.5", "fd00:70:0:2::5");
    let tool = pick("10.70.3.5", "fd00:70:0:3::5");
    // Flows whose reply, judged as a new flow, policy denies: solo's
    // egress to TCP 80 (solo's ingress is closed) and client's requests to
    // web's port 80 (web's egress allows no TCP back to client).
    let out: Vec<L4> = (0..32).map(|_| L4::Tcp(env.fresh(), 80, TCP_SYN)).collect();
    let inc: Vec<L4> = (0..32).map(|_| L4::Tcp(env.fresh(), 80, TCP_SYN)).collect();
    let origin = |env: &Env, i: usize| {
        if i < 32 { env.egress("solo", world, out[i]) } else { env.ingress("web", client, inc[i - 32]) }
    };
    let reply = |env: &Env, i: usize| {
        if i < 32 { env.ingress("solo", world, out[i].reply()) } else { env.egress("web", client, inc[i - 32].reply()) }
    };
    for i in 0..64 {
        assert_eq!(origin(&env, i), PASS, "flow {i}");
        assert_eq!(reply(&env, i), PASS, "reply of flow {i}");
    }
    // Half of them (even i) stay in use during the flood, the rest idle.
    let active = |i: usize| i.is_multiple_of(2);

    // Denied packets, each a new flow: solo's closed ingress, a port solo
    // may not reach, a peer web does not accept, UDP 53 from web outside
    // 10/8 (fd00::/8), and solo claiming web's address.
    let (web, solo) = (env.local("web"), env.local("solo"));
    let (web_ip, solo_ip) = if v6 { (web.ip6, solo.ip6) } else { (web.ip4, solo.ip4) };
    let denied = |env: &mut Env, n: u32| -> Verdict {
        let port = env.fresh();
        match n % 5 {
            0 => env.ingress("solo", world, L4::Tcp(port, 80, TCP_SYN)),
            1 => env.egress("solo", world, L4::Tcp(port, 81, TCP_SYN)),
            2 => env.ingress("web", tool, L4::Tcp(port, 80, TCP_SYN)),
            3 => env.egress("web", world, L4::Udp(port, 53)),
            _ => env.run(Direction::Egress, "solo", &packet(web_ip, world, L4::Udp(port, 53))),
        }
    };
    let (mut probes, mut probes_passed) = (0u32, 0u32);
    let mut flood_dropped = 0u32;
    let flows_before = env.counter(stat::FLOWS_NEW);
    for n in 0..FLOOD {
        // solo may send UDP 53 anywhere: each destination a new flow.
        // Its reply, right away, passes on the fresh entry (and marks it
        // used, so the flood competes with established flows as equals).
        let remote = if v6 {
            IpAddr::V6(Ipv6Addr::from(0x2a00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(n)))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + n))
        };
        let l4 = L4::Udp(5353, 53);
        if env.run(Direction::Egress, "solo", &packet(solo_ip, remote, l4)) != PASS
            || env.run(Direction::Ingress, "solo", &packet(remote, solo_ip, l4.reply())) != PASS
        {
            flood_dropped += 1;
        }
        if n.is_multiple_of(4) {
            probes += 1;
            if denied(&mut env, n / 4) != DROP {
                probes_passed += 1;
            }
        }
        if n.is_multiple_of(64) {
            for i in (0..64).filter(|i| active(*i)) {
                assert_eq!(reply(&env, i), PASS, "flow {i} in use, {n} flood flows in");
            }
        }
    }
    let new_flows = env.counter(stat::FLOWS_NEW) - flows_before;
    let own = if v6 { FAMILY_V6 } else { FAMILY_V4 };
    let held = env.flows().iter().filter(|(k, _)| k.family == own).count();
    // After the flood: replies of the flows in use pass. An idle flow the
    // table kept passes too; one it forgot has its reply judged as a new
    // flow, which policy denies, until the flow's next packet in its first
    // direction is decided again (allowed) and tracks it anew.
    let (mut kept, mut forgotten) = (0, 0);
    for i in 0..64 {
        let r = reply(&env, i);
        if active(i) {
            assert_eq!(r, PASS, "{family}: flow {i} in use survives the flood");
        } else if r == PASS {
            kept += 1;
        } else {
            forgotten += 1;
            assert_eq!(origin(&env, i), PASS, "forgotten flow {i} decided again");
            assert_eq!(reply(&env, i), PASS, "and tracked again");
        }
    }
    eprintln!(
        "{family} conntrack of {ENTRIES} entries: {FLOOD} allowed flows flooded ({flood_dropped} dropped, {new_flows} new \
         flows tracked, {held} held at the end); {probes} denied probes, {probes_passed} passed; flows in use kept \
         32/32; idle flows kept {kept}/32, forgotten and decided again {forgotten}/32"
    );
    assert_eq!(flood_dropped, 0, "allowed flows pass whatever the table holds");
    assert_eq!(probes_passed, 0, "no denied packet passes");
    assert!(held <= ENTRIES as usize, "{held} entries in a table of {ENTRIES}");
    assert!(new_flows >= u64::from(FLOOD), "every flood flow was tracked when it began");
}
