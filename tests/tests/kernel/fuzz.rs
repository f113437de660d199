//! 9. A million random and malformed packets.
//!
//! Each verdict is compared with the oracle's (`oracle.rs`): IPv4 and
//! IPv6, every protocol number, IPv4 options, IPv6 extension header chains,
//! fragments, ICMP errors, link control, replies to earlier packets, and all
//! of them mutated, truncated or padded. Every few thousand packets the kernel's connection tracking
//! and fragment tables are compared with the oracle's, entry by entry, and
//! emptied: far from full, and younger than any timeout, they hold exactly
//! what the packets put there.

use crate::fixture::*;
use crate::oracle::{Oracle, Stage};
use palisade_common::{CT_DENIED, FragKey, FragPorts, maps};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Test runs (a packet on one hook).
const RUNS: u64 = 1_000_000;
/// Runs between two comparisons of the kernel's tables with the oracle's.
const BATCH: u64 = 2_000;

const REMOTES4: [&str; 20] = [
    "10.70.2.5",
    "10.70.3.5",
    "10.70.4.5",
    "10.70.4.6",
    "10.70.1.20",
    "10.70.1.30",
    "192.168.1.1",
    "192.168.10.7",
    "192.168.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "172.32.0.1",
    "10.1.2.3",
    "10.70.3.99",
    "8.8.8.8",
    "172.18.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "224.0.0.1",
];

const REMOTES6: [&str; 18] = [
    "fd00:70:0:2::5",
    "fd00:70:0:3::5",
    "fd00:70:0:4::5",
    "fd00:70:0:4::6",
    "fd00:70:0:1::20",
    "2001:db8::1",
    "2001:db8:bad::1",
    "2001:db9::1",
    "fd00:99::1",
    "fd00::1",
    "fd00:70:0:3::99",
    "2606:4700::1111",
    "fc00::1",
    "fe80::1",
    "::",
    "ff02::1",
    "ff02::1:ff00:10",
    "::1",
];

const PORTS: [u16; 22] = [
    0, 1, 53, 54, 80, 81, 443, 444, 2999, 3000, 3010, 3011, 5432, 7999, 8000, 8050, 8080, 8100, 8101, 9000, 9001, 65535,
];

/// What each generated packet is, for the breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    /// A packet of a flow, well formed (options, extension headers and
    /// fragments included).
    Flow,
    /// The reply to, or a repeat of, a recent flow packet.
    Reply,
    /// A later fragment of a recent first fragment.
    LaterFragment,
    /// An ICMP error quoting a recent packet.
    IcmpError,
    /// IPv6 neighbour discovery and MLD, genuine or not.
    LinkControl,
    /// A flow packet with a few bytes changed.
    Mutated,
    /// A flow packet cut short.
    Truncated,
    /// A flow packet with bytes past its IP length.
    Padded,
    /// Random bytes behind an IPv4, IPv6 or random ethertype.
    Random,
    /// A flow packet on an interface without an endpoint.
    NoEndpoint,
}

/// A flow packet before it is put in bytes.
#[derive(Clone, Copy)]
struct Spec {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
    /// ICMP type and code (echo: the identifier is the ports).
    icmp: (u8, u8),
    tcp_flags: u8,
    /// The hook it is run on.
    hook: Direction,
    ifindex: u32,
}

struct Gen {
    rng: Rng,
    locals: Vec<Local>,
    /// Recent flow packets (spec and bytes) for replies, fragments, errors.
    recent: Vec<(Spec, Vec<u8>)>,
}

impl Gen {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.below(from.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.rng.below(100) < percent
    }

    fn port(&mut self) -> u16 {
        if self.chance(80) { self.pick(&PORTS) } else { self.rng.next_u64() as u16 }
    }

    fn remote(&mut self, v6: bool) -> IpAddr {
        if v6 { addr(self.pick(&REMOTES6)) } else { addr(self.pick(&REMOTES4)) }
    }

    fn spec(&mut self) -> Spec {
        let v6 = self.chance(50);
        let local = self.locals[self.rng.below(self.locals.len())].clone();
        let egress = self.chance(50);
        let mut local_ip = local.ip(v6);
        if self.chance(10) {
            // Spoofed, link-local, unspecified, another pod's.
            local_ip = self.remote(v6);
        }
        let remote = self.remote(v6);
        let (icmp4, icmp6) = (PROTO_ICMP, PROTO_ICMPV6);
        let protocol = match self.rng.below(12) {
            0..=2 => PROTO_TCP,
            3..=5 => PROTO_UDP,
            6 => PROTO_SCTP,
            7 | 8 => {
                if v6 {
                    icmp6
                } else {
                    icmp4
                }
            }
            9 => self.pick(&[icmp4, icmp6]),
            _ => self.rng.next_u64() as u8,
        };
        let icmp_type = if self.chance(60) {
            self.pick(&[0u8, 8, 128, 129, 3, 11, 12, 1, 2, 4, 5, 133, 135, 136, 143])
        } else {
            self.rng.next_u64() as u8
        };
        let ident = self.pick(&[7u16, 8, 80, 1000]);
        let (sport, dport) =
            if matches!(protocol, PROTO_ICMP | PROTO_ICMPV6) { (ident, ident) } else { (self.port(), self.port()) };
        let tcp_flags = self.pick(&[TCP_SYN, TCP_ACK, TCP_SYN | TCP_ACK, 0x11, 0x04, 0]);
        let (src, dst) = if egress { (local_ip, remote) } else { (remote, local_ip) };
        let hook = if egress { Direction::Egress } else { Direction::Ingress };
        Spec { src, dst, protocol, sport, dport, icmp: (icmp_type, 0), tcp_flags, hook, ifindex: local.ifindex }
    }

    /// The transport bytes of a spec.
    fn l4(&mut self, s: &Spec) -> Vec<u8> {
        match s.protocol {
            PROTO_TCP => tcp(s.sport, s.dport, s.tcp_flags),
            PROTO_UDP => {
                let n = self.rng.below(24);
                udp(s.sport, s.dport, &self.rng.bytes(n))
            }
            PROTO_SCTP => sctp_init(s.sport, s.dport),
            PROTO_ICMP | PROTO_ICMPV6 => {
                let mut m = vec![s.icmp.0, s.icmp.1, 0, 0];
                m.extend(s.sport.to_be_bytes());
                m.extend([0, 1]);
                let n = self.rng.below(16);
                m.extend(self.rng.bytes(n));
                m
            }
            _ => {
                let n = self.rng.below(40);
                self.rng.bytes(n)
            }
        }
    }

    /// IP around `l4`: IPv4 with options and fragment fields, IPv6 behind
    /// a chain of extension headers (fragment headers among them).
    fn ip(&mut self, s: &Spec, l4: &[u8]) -> Vec<u8> {
        let ids = [0x11u32, 0x22, 0x33];
        match (s.src, s.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ihl = if self.chance(75) { 5 } else { 6 + self.rng.below(10) };
                let mut payload = self.rng.bytes((ihl - 5) * 4);
                payload.extend(l4);
                let frag = match self.rng.below(10) {
                    0 => 0x2000,
                    1 => (self.rng.next_u64() as u16) & 0x3fff,
                    2 => 0x2000 | self.pick(&[1u16, 2, 3]),
                    3 => 0x4000,
                    _ => 0,
                };
                let id = self.pick(&ids) as u16;
                let mut p = ipv4(src, dst, s.protocol, id, frag, &payload);
                p[ETH_LEN] = 0x40 | ihl as u8;
                p
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let n = if self.chance(60) { 0 } else { 1 + self.rng.below(8) };
                let mut headers: Vec<(u8, Vec<u8>)> = Vec::new();
                for _ in 0..n {
                    let h = match self.rng.below(5) {
                        0 | 1 => {
                            let len = self.rng.below(3);
                            (self.pick(&[NH_HOPOPTS, NH_DSTOPTS, NH_ROUTING]), self.rng.bytes((len + 1) * 8), len)
                        }
                        2 => {
                            let len = self.pick(&[1usize, 4]);
                            (NH_AUTH, self.rng.bytes((len + 2) * 4), len)
                        }
                        _ => {
                            let mut f = vec![0, 0];
                            let offset: u16 = match self.rng.below(4) {
                                0 => self.pick(&[1u16, 2, 3]) << 3,
                                1 => (self.rng.next_u64() as u16) & 0xfff9,
                                _ => 0,
                            };
                            let more = u16::from(self.chance(50));
                            f.extend((offset | more).to_be_bytes());
                            f.extend(self.pick(&ids).to_be_bytes());
                            (NH_FRAGMENT, f, 0)
                        }
                    };
                    let (nh, mut bytes, len) = h;
                    bytes[1] = len as u8;
                    headers.push((nh, bytes));
                }
                let mut payload = Vec::new();
                let first = headers.first().map_or(s.protocol, |h| h.0);
                for i in 0..headers.len() {
                    let next = headers.get(i + 1).map_or(s.protocol, |h| h.0);
                    let mut h = headers[i].1.clone();
                    h[0] = next;
                    payload.extend(h);
                }
                payload.extend(l4);
                let mut p = ipv6(src, dst, first, &payload);
                p[IPV6_HOP_LIMIT_AT] = self.pick(&[64, 255, 1]);
                p
            }
            _ => unreachable!("one family per spec"),
        }
    }

    fn flow(&mut self) -> (Spec, Vec<u8>) {
        let s = self.spec();
        let l4 = self.l4(&s);
        let p = self.ip(&s, &l4);
        if self.recent.len() < 64 {
            self.recent.push((s, p.clone()));
        } else {
            let at = self.rng.below(64);
            self.recent[at] = (s, p.clone());
        }
        (s, p)
    }

    fn recent(&mut self) -> (Spec, Vec<u8>) {
        if self.recent.is_empty() {
            return self.flow();
        }
        let at = self.rng.below(self.recent.len());
        self.recent[at].clone()
    }

    fn reply(&mut self) -> (Spec, Vec<u8>) {
        let (mut s, p) = self.recent();
        if self.chance(25) {
            return (s, p);
        }
        (s.src, s.dst, s.sport, s.dport) = (s.dst, s.src, s.dport, s.sport);
        s.hook = if s.hook == Direction::Egress { Direction::Ingress } else { Direction::Egress };
        s.icmp.0 = match s.icmp.0 {
            8 => 0,
            0 => 8,
            128 => 129,
            129 => 128,
            t => t,
        };
        s.tcp_flags = TCP_SYN | TCP_ACK;
        let l4 = self.l4(&s);
        let p = self.ip(&s, &l4);
        (s, p)
    }

    /// A later fragment with the addresses, protocol and id of a recent
    /// packet (a first fragment's, often enough).
    fn later_fragment(&mut self) -> (Spec, Vec<u8>) {
        let (s, p) = self.recent();
        let n = 8 + self.rng.below(24);
        let body = self.rng.bytes(n);
        let offset = self.pick(&[1u16, 2, 3, 185]);
        let p = match (s.src, s.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let id = u16::from_be_bytes([p[ETH_LEN + 4], p[ETH_LEN + 5]]);
                let frag = offset | if self.chance(50) { 0x2000 } else { 0 };
                ipv4(src, dst, s.protocol, id, frag, &body)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let id = self.pick(&[0x11u32, 0x22, 0x33]);
                let mut f = vec![s.protocol, 0];
                f.extend((offset << 3 | u16::from(self.chance(50))).to_be_bytes());
                f.extend(id.to_be_bytes());
                f.extend(body);
                ipv6(src, dst, NH_FRAGMENT, &f)
            }
            _ => unreachable!(),
        };
        (s, p)
    }

    /// An ICMP error about a recent packet, going the other way, from its
    /// destination or a router.
    fn icmp_error(&mut self) -> (Spec, Vec<u8>) {
        let (s, p) = self.recent();
        let v6 = s.src.is_ipv6();
        let from = if self.chance(50) { s.dst } else { self.remote(v6) };
        let (ty, code) = if v6 {
            self.pick(&[(1u8, 4u8), (2, 0), (3, 0), (4, 1), (5, 0)])
        } else {
            self.pick(&[(3u8, 3u8), (3, 4), (11, 0), (12, 0), (5, 1)])
        };
        let mut quoted = p[ETH_LEN..].to_vec();
        if self.chance(30) {
            let keep = self.rng.below(quoted.len() + 1);
            quoted.truncate(keep);
        }
        let pkt = icmp_error(from, s.src, ty, code, &quoted);
        let hook = if s.hook == Direction::Egress { Direction::Ingress } else { Direction::Egress };
        (Spec { src: from, dst: s.src, protocol: 0, hook, ..s }, pkt)
    }

    fn link_control(&mut self) -> (Spec, Vec<u8>) {
        let local = self.locals[self.rng.below(self.locals.len())].clone();
        let me = match local.ip6 {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => unreachable!(),
        };
        let other = match self.remote(true) {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => unreachable!(),
        };
        let egress = self.chance(50);
        let (src, dst) = if egress { (me, other) } else { (other, me) };
        let (src, dst) = if self.chance(50) { (v6("fe80::30"), dst) } else { (src, dst) };
        let ty = self.pick(&[130u8, 131, 132, 133, 134, 135, 136, 137, 143, 128, 1]);
        let mut msg = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        msg.extend(me.octets());
        let mut p = ipv6(src, dst, PROTO_ICMPV6, &msg);
        p[IPV6_HOP_LIMIT_AT] = self.pick(&[255, 1, 64]);
        let hook = if egress { Direction::Egress } else { Direction::Ingress };
        let s = Spec {
            src: IpAddr::V6(src),
            dst: IpAddr::V6(dst),
            protocol: PROTO_ICMPV6,
            sport: 0,
            dport: 0,
            icmp: (ty, 0),
            tcp_flags: 0,
            hook,
            ifindex: local.ifindex,
        };
        (s, p)
    }

    fn random(&mut self) -> (Spec, Vec<u8>) {
        let (s, _) = self.recent();
        let ethertype = self.pick(&[ETH_P_IP, ETH_P_IPV6, ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, 0x8100, 0x88cc]);
        let mut p = eth(ethertype);
        let n = self.rng.below(160);
        p.extend(self.rng.bytes(n));
        if p.len() > ETH_LEN && self.chance(70) {
            p[ETH_LEN] = match ethertype {
                ETH_P_IP => 0x40 | (p[ETH_LEN] & 0x0f),
                _ => 0x60,
            };
            if ethertype == ETH_P_IPV6 && p.len() >= ETH_LEN + 40 && self.chance(50) {
                let len = (p.len() - ETH_LEN - 40) as u16;
                p[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&len.to_be_bytes());
            }
        }
        let hook = if self.chance(50) { Direction::Egress } else { Direction::Ingress };
        (Spec { hook, ..s }, p)
    }

    fn packet(&mut self) -> (Class, Spec, Vec<u8>) {
        let class = match self.rng.below(100) {
            0..=21 => Class::Flow,
            22..=36 => Class::Reply,
            37..=41 => Class::LaterFragment,
            42..=48 => Class::IcmpError,
            49..=52 => Class::LinkControl,
            53..=67 => Class::Mutated,
            68..=77 => Class::Truncated,
            78..=85 => Class::Padded,
            86..=97 => Class::Random,
            _ => Class::NoEndpoint,
        };
        let (mut s, mut p) = match class {
            Class::Flow | Class::Mutated | Class::Truncated | Class::Padded => self.flow(),
            Class::Reply => self.reply(),
            Class::LaterFragment => self.later_fragment(),
            Class::IcmpError => self.icmp_error(),
            Class::LinkControl => self.link_control(),
            Class::Random => self.random(),
            Class::NoEndpoint => {
                let (mut s, p) = self.flow();
                s.ifindex = self.locals.iter().find(|l| l.ifindex == s.ifindex).expect("local").peer_ifindex;
                (s, p)
            }
        };
        match class {
            Class::Mutated => {
                for _ in 0..1 + self.rng.below(4) {
                    let at = ETH_LEN - 2 + self.rng.below(p.len() - ETH_LEN + 2);
                    p[at] = if self.chance(20) { p[at] ^ 1 } else { self.rng.next_u64() as u8 };
                }
            }
            Class::Truncated => {
                let keep = ETH_LEN + self.rng.below(p.len() - ETH_LEN);
                p.truncate(keep);
            }
            Class::Padded => {
                let n = 1 + self.rng.below(32);
                p.extend(self.rng.bytes(n));
                if self.chance(50) {
                    // Shrink the IP length instead: the frame holds more.
                    let at = if p[12..14] == ETH_P_IP.to_be_bytes() { ETH_LEN + 2 } else { ETH_LEN + 4 };
                    let len = u16::from_be_bytes([p[at], p[at + 1]]);
                    let cut = (self.rng.below(24) as u16).min(len);
                    p[at..at + 2].copy_from_slice(&(len - cut).to_be_bytes());
                }
            }
            _ => {}
        }
        if self.chance(3) {
            s.hook = if s.hook == Direction::Egress { Direction::Ingress } else { Direction::Egress };
        }
        (class, s, p)
    }
}

#[derive(Default)]
struct Tally {
    runs: u64,
    refused: u64,
    passed: u64,
    dropped: u64,
    mismatches: u64,
}

#[test]
fn a_million_packets_match_the_oracle() {
    let env = Env::new(settings());
    let locals: Vec<Local> = LOCALS.iter().map(|(name, ..)| env.local(name)).collect();
    let mut packets = Gen { rng: Rng(0x0ac1_e5ee_d000_0009), locals: locals.clone(), recent: Vec::new() };
    let mut oracle = Oracle::new(&env.compiled, locals);
    let mut classes: BTreeMap<Class, Tally> = BTreeMap::new();
    let mut stages: BTreeMap<Stage, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut state_checks, mut state_entries) = (0u64, 0u64);
    // Empties the kernel's tables and the oracle's, reporting a difference.
    let mut reset = |oracle: &mut Oracle, failures: &mut Vec<String>, when: String| {
        let (mut tracked, mut denied) = (HashSet::new(), HashSet::new());
        for (k, v) in env.take_flows() {
            if v.verdict == CT_DENIED { &mut denied } else { &mut tracked }.insert(k);
        }
        let frags: HashMap<FragKey, FragPorts> = env.take_entries(maps::FRAGS).into_iter().collect();
        if (tracked != oracle.tracked || denied != oracle.denied || frags != oracle.frags) && failures.len() < 20 {
            let ct: Vec<_> = tracked.symmetric_difference(&oracle.tracked).collect();
            let dn: Vec<_> = denied.symmetric_difference(&oracle.denied).collect();
            let kf: Vec<_> = frags.iter().filter(|(k, v)| oracle.frags.get(k) != Some(v)).collect();
            let of: Vec<_> = oracle.frags.iter().filter(|(k, v)| frags.get(k) != Some(v)).collect();
            failures.push(format!(
                "{when}: tables differ; flows only one side tracks: {ct:?}; denied flows only one side tracks: {dn:?}; kernel frags {kf:?}; oracle frags {of:?}"
            ));
        }
        state_checks += 1;
        state_entries += (tracked.len() + denied.len() + frags.len()) as u64;
        oracle.tracked.clear();
        oracle.denied.clear();
        oracle.frags.clear();
    };
    let start = Instant::now();
    for run in 1..=RUNS {
        let (class, s, p) = packets.packet();
        let t = classes.entry(class).or_default();
        t.runs += 1;
        let got = env.try_run(s.hook, s.ifindex, &p);
        if !kernel_accepts(&p) {
            t.refused += 1;
            if got.is_ok() {
                t.mismatches += 1;
                failures.push(format!("{class:?}: the kernel ran a {}-byte frame", p.len()));
            }
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("test run of {}: {e}", hex(&p)));
        let got = verdict(got).unwrap_or_else(|| panic!("return value {got:#x} for {}", hex(&p)));
        let stage = oracle.judge(s.hook, s.ifindex, &p);
        if got == PASS {
            t.passed += 1;
        } else {
            t.dropped += 1;
        }
        *stages.entry(stage).or_default() += 1;
        if got != stage.verdict() {
            t.mismatches += 1;
            if failures.len() < 20 {
                failures.push(format!(
                    "{class:?} on {:?} ({}): expected {stage:?}, got {got:?}\n  {}",
                    s.hook,
                    s.ifindex,
                    hex(&p)
                ));
            }
            // Start both over, so that one mismatch counts once.
            env.take_flows();
            env.take_entries::<FragKey, FragPorts>(maps::FRAGS);
            oracle.tracked.clear();
            oracle.denied.clear();
            oracle.frags.clear();
        }
        if run.is_multiple_of(BATCH) {
            reset(&mut oracle, &mut failures, format!("after {run} runs"));
        }
    }
    let took = start.elapsed();
    let total = classes.values().fold(Tally::default(), |a, t| Tally {
        runs: a.runs + t.runs,
        refused: a.refused + t.refused,
        passed: a.passed + t.passed,
        dropped: a.dropped + t.dropped,
        mismatches: a.mismatches + t.mismatches,
    });
    eprintln!(
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "class", "packets", "refused", "passed", "dropped", "mismatches"
    );
    for (c, t) in classes.iter().map(|(c, t)| (format!("{c:?}"), t)).chain([("total".to_string(), &total)]) {
        eprintln!("{c:<14} {:>8} {:>8} {:>8} {:>8} {:>10}", t.runs, t.refused, t.passed, t.dropped, t.mismatches);
    }
    eprintln!("decided by: {stages:?}");
    eprintln!(
        "{} packets in {:.1} s; tables compared {state_checks} times ({state_entries} entries); {} mismatches",
        total.runs,
        took.as_secs_f64(),
        total.mismatches
    );
    assert_eq!(total.runs, RUNS);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(total.mismatches, 0);
    // Every stage of the pipeline decided a good share of the packets.
    for stage in [
        Stage::NoEndpoint,
        Stage::NotIp,
        Stage::Malformed,
        Stage::LinkControl,
        Stage::Tracked,
        Stage::Spoofed,
        Stage::Related,
        Stage::Allowed,
        Stage::Denied,
    ] {
        assert!(stages.get(&stage).copied().unwrap_or(0) >= 1000, "{stage:?}: {stages:?}");
    }
}
