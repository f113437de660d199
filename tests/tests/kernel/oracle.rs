//! The oracle of the random-packet test: what the classifier must do with
//! a packet, written from its specification (the pipeline in the docs of
//! ebpf/src/main.rs, the parser's rules in those of ebpf/src/parse.rs)
//! over raw bytes, without the classifier's code. Policy verdicts come from
//! the compiled maps (`lookup::decide`); connection tracking and first
//! fragments are kept in plain maps, keyed as the kernel keys them, so the
//! test can also compare them with the kernel's tables.

use crate::fixture::*;
use palisade::policy::{Compiled, lookup};
use palisade_common::{CtKey, FragKey, FragPorts};
use std::collections::{HashMap, HashSet};

/// IPv6 extension headers the parser walks before judging what follows
/// as the transport protocol.
const MAX_IPV6_EXT: usize = 6;

/// Why the oracle expects its verdict: the stage of the pipeline that
/// decides the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Not an interface with an endpoint: PASS.
    NoEndpoint,
    /// Not IP: PASS.
    NotIp,
    /// Truncated or inconsistent headers: DROP.
    Malformed,
    /// IPv6 neighbour discovery or MLD on the link: PASS.
    LinkControl,
    /// A packet of a flow policy allowed earlier: PASS.
    Tracked,
    /// Leaving the pod from an address not its own: DROP.
    Spoofed,
    /// An ICMP error about a tracked flow: PASS.
    Related,
    /// A new flow policy allows: PASS (and tracked).
    Allowed,
    /// A new flow policy denies: DROP.
    Denied,
}

impl Stage {
    pub fn verdict(self) -> Verdict {
        match self {
            Stage::NoEndpoint
            | Stage::NotIp
            | Stage::LinkControl
            | Stage::Tracked
            | Stage::Related
            | Stage::Allowed => PASS,
            Stage::Malformed | Stage::Spoofed | Stage::Denied => DROP,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frag {
    None,
    First,
    Later,
}

/// What the parser reads from an IP packet.
#[derive(Clone, Copy)]
struct Pkt {
    family: u8,
    protocol: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    /// ICMP type; 0 where there is none (other protocols, later fragments).
    icmp_type: u8,
    hop_limit: u8,
    l4_off: usize,
    frag: Frag,
    frag_id: u32,
    frag_proto: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// `n` bytes at `at`, if the buffer has them.
fn get(b: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(n)?)
}

fn is_echo(protocol: u8, ty: u8) -> bool {
    matches!((protocol, ty), (PROTO_ICMP, 0 | 8) | (PROTO_ICMPV6, 128 | 129))
}

fn is_echo_request(protocol: u8, ty: u8) -> bool {
    matches!((protocol, ty), (PROTO_ICMP, 8) | (PROTO_ICMPV6, 128))
}

fn is_icmp_error(protocol: u8, ty: u8) -> bool {
    matches!((protocol, ty), (PROTO_ICMP, 3 | 11 | 12) | (PROTO_ICMPV6, 1..=4))
}

/// `None`: not IP. `Some(None)`: malformed.
fn parse(p: &[u8]) -> Option<Option<Pkt>> {
    match be16(p, 12) {
        ETH_P_IP => Some(parse_v4(p)),
        ETH_P_IPV6 => Some(parse_v6(p)),
        _ => None,
    }
}

fn empty(family: u8, protocol: u8) -> Pkt {
    Pkt {
        family,
        protocol,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        icmp_type: 0,
        hop_limit: 0,
        l4_off: 0,
        frag: Frag::None,
        frag_id: 0,
        frag_proto: protocol,
    }
}

/// IPv4: version 4, a header of at least 20 bytes, a total length that
/// holds the header and fits the frame. A fragment at offset 8 bytes of
/// TCP is an attack (RFC 1858); later fragments carry no transport header.
fn parse_v4(p: &[u8]) -> Option<Pkt> {
    let ip = &p[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return None;
    }
    let frags = be16(ip, 6);
    let offset = frags & 0x1fff;
    let mut k = empty(FAMILY_V4, ip[9]);
    k.src[..4].copy_from_slice(&ip[12..16]);
    k.dst[..4].copy_from_slice(&ip[16..20]);
    k.frag_id = u32::from(be16(ip, 4));
    if offset == 1 && k.protocol == PROTO_TCP {
        return None;
    }
    k.frag = match (offset, frags & 0x2000 != 0) {
        (0, false) => Frag::None,
        (0, true) => Frag::First,
        _ => Frag::Later,
    };
    if k.frag == Frag::Later {
        return Some(k);
    }
    transport(p, k, ETH_LEN + ihl, ETH_LEN + total)
}

/// IPv6: version 6, a payload length that fits the frame, then up to six
/// extension headers, each inside the payload.
fn parse_v6(p: &[u8]) -> Option<Pkt> {
    let ip = &p[ETH_LEN..];
    let end = ETH_LEN + 40 + usize::from(be16(ip, 4));
    if ip[0] >> 4 != 6 || end > p.len() {
        return None;
    }
    let payload = &p[..end];
    let mut k = empty(FAMILY_V6, ip[6]);
    k.hop_limit = ip[7];
    k.src.copy_from_slice(&ip[8..24]);
    k.dst.copy_from_slice(&ip[24..40]);
    let mut off = ETH_LEN + 40;
    for _ in 0..MAX_IPV6_EXT {
        let len = match k.protocol {
            0 | 43 | 60 => (usize::from(get(payload, off, 2)?[1]) + 1) * 8,
            51 => (usize::from(get(payload, off, 2)?[1]) + 2) * 4,
            NH_FRAGMENT => {
                let h = get(payload, off, 8)?;
                k.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                k.frag_proto = h[0];
                if be16(h, 2) >> 3 != 0 {
                    k.protocol = h[0];
                    k.frag = Frag::Later;
                    return Some(k);
                }
                if h[3] & 1 != 0 {
                    k.frag = Frag::First;
                }
                8
            }
            _ => break,
        };
        k.protocol = payload[off];
        off += len;
        if off > end {
            return None;
        }
    }
    transport(p, k, off, end)
}

/// The transport header's minimum must fit the IP payload; ports, TCP
/// flags, ICMP type and echo identifier are read from it.
fn transport(p: &[u8], mut k: Pkt, off: usize, end: usize) -> Option<Pkt> {
    k.l4_off = off;
    let min = match k.protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => return Some(k),
    };
    if end < off + min {
        return None;
    }
    let h = &p[off..];
    if matches!(k.protocol, PROTO_ICMP | PROTO_ICMPV6) {
        k.icmp_type = h[0];
        if is_echo(k.protocol, h[0]) {
            k.sport = be16(h, 4);
            k.dport = k.sport;
        }
    } else {
        k.sport = be16(h, 0);
        k.dport = be16(h, 2);
    }
    Some(k)
}

/// Neighbour discovery (hop limit 255) and MLD (hop limit 1) with a
/// link-local source or destination, or a link-scope multicast one.
fn link_control(k: &Pkt) -> bool {
    let hops_ok = match k.icmp_type {
        133..=137 => k.hop_limit == 255,
        130..=132 | 143 => k.hop_limit == 1,
        _ => false,
    };
    let link_local = |a: &[u8; 16]| a[0] == 0xfe && a[1] & 0xc0 == 0x80;
    k.family == FAMILY_V6
        && k.protocol == PROTO_ICMPV6
        && hops_ok
        && (link_local(&k.src) || link_local(&k.dst) || (k.dst[0] == 0xff && k.dst[1] & 0x0f == 2))
}

fn ip_of(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 { IpAddr::from([a[0], a[1], a[2], a[3]]) } else { IpAddr::from(*a) }
}

fn bytes_of(ip: IpAddr) -> [u8; 16] {
    palisade_common::family_addr(ip).1
}

/// The remote "port" of a ping: 0 if the local pod started it.
fn echo_role(local_initiated: bool) -> u16 {
    u16::from(!local_initiated)
}

/// The flow's key from the local endpoint's point of view.
fn ct_key(ifindex: u32, egress: bool, k: &Pkt) -> CtKey {
    let (local, remote) = if egress { (k.src, k.dst) } else { (k.dst, k.src) };
    let (local_port, remote_port) = if is_echo(k.protocol, k.icmp_type) {
        (k.sport, echo_role(is_echo_request(k.protocol, k.icmp_type) == egress))
    } else if egress {
        (k.sport, k.dport)
    } else {
        (k.dport, k.sport)
    };
    CtKey { ifindex, local_port, remote_port, local, remote, protocol: k.protocol, family: k.family, _pad: [0; 2] }
}

fn frag_key(k: &Pkt) -> FragKey {
    FragKey { id: k.frag_id, protocol: k.frag_proto, family: k.family, _pad: [0; 2], src: k.src, dst: k.dst }
}

/// The classifier's expected behaviour, with the state it keeps.
pub struct Oracle<'a> {
    compiled: &'a Compiled,
    locals: Vec<Local>,
    /// Flows policy allowed, as connection tracking keys them.
    pub tracked: HashSet<CtKey>,
    /// Flows policy denied, which connection tracking keeps as `CT_DENIED`
    /// (with no budget, every denied flow's event is sent): they change
    /// no verdict, only where the kernel drops their next packets.
    pub denied: HashSet<CtKey>,
    /// First fragments seen.
    pub frags: HashMap<FragKey, FragPorts>,
    decisions: HashMap<(u32, bool, IpAddr, u8, u16), bool>,
}

impl<'a> Oracle<'a> {
    pub fn new(compiled: &'a Compiled, locals: Vec<Local>) -> Oracle<'a> {
        Oracle {
            compiled,
            locals,
            tracked: HashSet::new(),
            denied: HashSet::new(),
            frags: HashMap::new(),
            decisions: HashMap::new(),
        }
    }

    /// What the `hook` program on `ifindex` must do with `p` (a frame the
    /// kernel's test run accepts), updating the state as the kernel must.
    pub fn judge(&mut self, hook: Direction, ifindex: u32, p: &[u8]) -> Stage {
        let Some(local) = self.locals.iter().find(|l| l.ifindex == ifindex).cloned() else {
            return Stage::NoEndpoint;
        };
        let mut k = match parse(p) {
            None => return Stage::NotIp,
            Some(None) => return Stage::Malformed,
            Some(Some(k)) => k,
        };
        if link_control(&k) {
            return Stage::LinkControl;
        }
        match k.frag {
            Frag::First => {
                let ports = FragPorts { sport: k.sport, dport: k.dport, protocol: k.protocol, _pad: [0; 3] };
                self.frags.insert(frag_key(&k), ports);
            }
            Frag::Later => {
                if let Some(f) = self.frags.get(&frag_key(&k)) {
                    (k.sport, k.dport, k.protocol) = (f.sport, f.dport, f.protocol);
                }
            }
            Frag::None => {}
        }
        let egress = hook == Direction::Egress;
        let key = ct_key(ifindex, egress, &k);
        if self.tracked.contains(&key) {
            return Stage::Tracked;
        }
        if egress && !own_source(&local, &k) {
            return Stage::Spoofed;
        }
        if self.related(egress, &key, &k, p) {
            return Stage::Related;
        }
        let remote = ip_of(k.family, &key.remote);
        let memo = (local.class, egress, remote, k.protocol, k.dport);
        let compiled = self.compiled;
        let allowed = *self
            .decisions
            .entry(memo)
            .or_insert_with(|| lookup::decide(compiled, &local.kernel(), hook, remote, k.protocol, k.dport).allowed);
        if allowed {
            self.denied.remove(&key);
            self.tracked.insert(key);
            Stage::Allowed
        } else {
            self.denied.insert(key);
            Stage::Denied
        }
    }

    /// An ICMP error quoting (IP header, then 4 bytes of ports or an echo
    /// header) a packet of a tracked flow, which went the other way.
    fn related(&self, egress: bool, key: &CtKey, k: &Pkt, p: &[u8]) -> bool {
        if !is_icmp_error(k.protocol, k.icmp_type) {
            return false;
        }
        let inner = k.l4_off + 8;
        let mut q = *key;
        let (src, dst, l4) = if k.family == FAMILY_V4 {
            let Some(h) = get(p, inner, 20).filter(|h| h[0] >> 4 == 4) else { return false };
            q.protocol = h[9];
            let (mut s, mut d) = ([0; 16], [0; 16]);
            s[..4].copy_from_slice(&h[12..16]);
            d[..4].copy_from_slice(&h[16..20]);
            (s, d, inner + usize::from(h[0] & 0x0f) * 4)
        } else {
            let Some(h) = get(p, inner, 40) else { return false };
            q.protocol = h[6];
            (h[8..24].try_into().unwrap(), h[24..40].try_into().unwrap(), inner + 40)
        };
        let (sport, dport, echo) = match q.protocol {
            PROTO_TCP | PROTO_UDP | PROTO_SCTP => match get(p, l4, 4) {
                Some(h) => (be16(h, 0), be16(h, 2), None),
                None => return false,
            },
            PROTO_ICMP | PROTO_ICMPV6 => match get(p, l4, 6) {
                Some(h) if is_echo(q.protocol, h[0]) => (be16(h, 4), be16(h, 4), Some(h[0])),
                _ => return false,
            },
            _ => return false,
        };
        // Coming in, the quoted packet left the pod: the pod is its source.
        (q.local, q.remote, q.local_port, q.remote_port) =
            if egress { (dst, src, dport, sport) } else { (src, dst, sport, dport) };
        if let Some(ty) = echo {
            q.remote_port = echo_role(is_echo_request(q.protocol, ty) != egress);
        }
        self.tracked.contains(&q)
    }
}

/// A pod may send from its own addresses, the unspecified address and
/// (IPv6) link-local ones.
fn own_source(local: &Local, k: &Pkt) -> bool {
    let unspecified = k.src == [0; 16];
    let link_local = k.family == FAMILY_V6 && k.src[0] == 0xfe && k.src[1] & 0xc0 == 0x80;
    unspecified || link_local || k.src == bytes_of(local.ip(k.family == FAMILY_V6))
}
