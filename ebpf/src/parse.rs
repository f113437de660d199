//! Packet parsing: Ethernet (TC) or none (netfilter, see [`Skb`]),
//! IPv4/IPv6 (with extension headers and fragments) and the first bytes of
//! TCP, UDP, SCTP and ICMP.
//!
//! Every read is bounds-checked against the packet; a packet whose headers
//! are truncated or inconsistent is `Malformed`, never read past its end.

use crate::skb::Skb;
use aya_ebpf::programs::TcContext;
use core::mem::MaybeUninit;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use palisade_common::{
    CtKey, CtKey4, DIR_EGRESS, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// IPv6 extension headers walked before giving up on finding the L4 header.
const MAX_IPV6_EXT: usize = 6;

/// The source and destination ports at the start of an L4 header.
const PORTS: usize = 4;

/// The parsed view of a packet the classifier needs.
pub struct Packet {
    pub family: u8,
    pub protocol: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host order. For ICMP echo both carry the identifier.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type (0 for other protocols).
    pub icmp_type: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
    pub frag: Frag,
    /// IP identification, for fragments.
    pub frag_id: u32,
    /// The protocol fragments are keyed by (IPv6: the fragment header's
    /// next header).
    pub frag_proto: u8,
    /// IPv6 hop limit (0 for IPv4).
    pub hop_limit: u8,
}

/// Where a packet stands in IP fragmentation.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    None,
    /// First fragment: carries the L4 header, more follow.
    First,
    /// A later fragment: no L4 header, ports unknown.
    Later,
}

impl Packet {
    #[inline(always)]
    pub const fn empty() -> Packet {
        Packet {
            family: FAMILY_V4,
            protocol: 0,
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            icmp_type: 0,
            l4_off: 0,
            frag: Frag::None,
            frag_id: 0,
            frag_proto: 0,
            hop_limit: 0,
        }
    }
}

/// What [`parse`] found. Fieldless rather than carrying the packet:
/// copies of partly-initialised enums upset the verifier.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// An IP packet, parsed into the `Packet`.
    Ip,
    /// Not IP (ARP, LLDP, ...): none of NetworkPolicy's business.
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// The fixed IPv4 header in whole words, for [`plain_key`]. Packet loads
/// need no alignment on the JITs and verifier settings palisade runs under
/// (x86-64, arm64: no strict alignment), so words are read as words
/// rather than byte by byte.
#[repr(C)]
struct Ip4Words {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frags: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    src: u32,
    dst: u32,
}

/// The IPv6 header in whole words, for [`plain_key`].
#[repr(C)]
struct Ip6Words {
    vcf: u32,
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    src: [u64; 2],
    dst: [u64; 2],
}

/// Minimal L4 header length of the protocols [`plain_key`] takes (0: not
/// one of them), as [`parse`] requires them.
#[inline(always)]
fn plain_l4_min(protocol: u8) -> usize {
    match protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        _ => 0,
    }
}

/// A plain packet at a TC hook, keyed for its family's connection
/// tracking table: IPv4 without options or IPv6 without extension headers,
/// not a fragment, TCP, UDP or SCTP, with headers and lengths [`parse`]
/// accepts, read in a few word loads in place. Any other packet
/// ([`Plain::No`]) takes the full parse. For a packet it takes, the key is
/// the one the full pipeline builds (`conntrack::ct_key`, `CtKey::v4`), so
/// a lookup with it stands for the pipeline's own. Each key is written
/// whole, only for its family.
#[inline(always)]
pub fn plain_key(
    ctx: &TcContext,
    ifindex: u32,
    dir: u8,
    key4: &mut MaybeUninit<CtKey4>,
    key6: &mut MaybeUninit<Aligned<CtKey>>,
) -> Plain {
    const L3: usize = TcContext::L3;
    let egress = dir == DIR_EGRESS;
    match ctx.l3_protocol() {
        Some(ETH_P_IP) => {
            ctx.pull(L3 + Ipv4Hdr::LEN + PORTS);
            let len = ctx.pkt_len();
            let ip = ctx.with_header(L3, |ip: &Ip4Words| {
                let tot_len = u16::from_be(ip.tot_len) as usize;
                // No options; neither a fragment nor more to come (DF may
                // be set). A zero total length (BIG TCP) is left to the
                // full parse.
                if ip.vihl != 0x45
                    || u16::from_be(ip.frags) & 0x3fff != 0
                    || tot_len < Ipv4Hdr::LEN
                    || L3 + tot_len > len
                {
                    return None;
                }
                let (local, remote) = if egress { (ip.src, ip.dst) } else { (ip.dst, ip.src) };
                Some((ip.proto, local, remote, tot_len - Ipv4Hdr::LEN))
            });
            let Some(Some((protocol, local, remote, l4_len))) = ip else {
                return Plain::No;
            };
            let Some((local_port, remote_port)) = plain_ports(ctx, protocol, L3 + Ipv4Hdr::LEN, l4_len, egress) else {
                return Plain::No;
            };
            key4.write(CtKey4 {
                ifindex,
                local_port,
                remote_port,
                local: local.to_ne_bytes(),
                remote: remote.to_ne_bytes(),
                protocol,
                _pad: [0; 3],
            });
            Plain::V4
        }
        Some(ETH_P_IPV6) => {
            ctx.pull(L3 + Ipv6Hdr::LEN + PORTS);
            let len = ctx.pkt_len();
            let ip = ctx.with_header(L3, |ip: &Ip6Words| {
                let payload_len = u16::from_be(ip.payload_len) as usize;
                // Version 6 (the first nibble, in network order); a zero
                // payload length (BIG TCP) fails the L4 length check.
                if ip.vcf.to_ne_bytes()[0] >> 4 != 6 || L3 + Ipv6Hdr::LEN + payload_len > len {
                    return None;
                }
                let (local, remote) = if egress { (ip.src, ip.dst) } else { (ip.dst, ip.src) };
                Some((ip.next_hdr, local, remote, payload_len))
            });
            let Some(Some((protocol, local, remote, l4_len))) = ip else {
                return Plain::No;
            };
            let Some((local_port, remote_port)) = plain_ports(ctx, protocol, L3 + Ipv6Hdr::LEN, l4_len, egress) else {
                return Plain::No;
            };
            key6.write(Aligned(CtKey {
                ifindex,
                local_port,
                remote_port,
                local: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(local) },
                remote: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(remote) },
                protocol,
                family: FAMILY_V6,
                _pad: [0; 2],
            }));
            Plain::V6
        }
        _ => Plain::No,
    }
}

/// A key on an 8-byte boundary: an IPv6 key's addresses (at offsets 8
/// and 24) are then written as 8-byte words, where a 4-byte aligned key
/// takes twice the loads and stores (the verifier wants stack stores
/// aligned).
#[repr(C, align(8))]
pub struct Aligned<T>(pub T);

/// Which key [`plain_key`] wrote, if any.
#[derive(Clone, Copy)]
pub enum Plain {
    No,
    V4,
    V6,
}

/// A plain packet's (local, remote) ports, for [`plain_key`]: TCP, UDP or
/// SCTP whose L4 header fits its length.
#[inline(always)]
fn plain_ports(ctx: &TcContext, protocol: u8, l4_off: usize, l4_len: usize, egress: bool) -> Option<(u16, u16)> {
    let min = plain_l4_min(protocol);
    if min == 0 || l4_len < min {
        return None;
    }
    let ports = ctx.header::<[u16; 2]>(l4_off)?;
    let (sport, dport) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
    Some(if egress { (sport, dport) } else { (dport, sport) })
}

/// Parses the packet into `pkt` (which starts out [`Packet::empty`]).
#[inline(always)]
pub fn parse<C: Skb>(ctx: &C, pkt: &mut Packet) -> Parsed {
    match ctx.l3_protocol() {
        Some(ETH_P_IP) => {
            ctx.pull(C::L3 + Ipv4Hdr::LEN);
            parse_v4(ctx, pkt)
        }
        Some(ETH_P_IPV6) => {
            ctx.pull(C::L3 + Ipv6Hdr::LEN);
            parse_v6(ctx, pkt)
        }
        Some(_) => Parsed::NotIp,
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_v4<C: Skb>(ctx: &C, pkt: &mut Packet) -> Parsed {
    let fields = ctx.with_header(C::L3, |ip: &Ipv4Hdr| {
        pkt.protocol = ip.proto;
        pkt.src[..4].copy_from_slice(&ip.src_addr);
        pkt.dst[..4].copy_from_slice(&ip.dst_addr);
        (ip.vihl, u16::from_be_bytes(ip.tot_len), u16::from_be_bytes(ip.frags), u16::from_be_bytes(ip.id))
    });
    let Some((vihl, tot_len, frags, id)) = fields else {
        return Parsed::Malformed;
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Parsed::Malformed;
    }
    let mut tot_len = tot_len as usize;
    // BIG TCP (GSO packets over 64 KiB) carries a zero total length.
    if tot_len == 0 && ctx.pkt_len() > 0xffff {
        tot_len = ctx.pkt_len() - C::L3;
    }
    if tot_len < ihl || C::L3 + tot_len > ctx.pkt_len() {
        return Parsed::Malformed;
    }
    let more = frags & 0x2000 != 0;
    let offset = frags & 0x1fff;
    pkt.frag_id = id as u32;
    pkt.frag = if offset != 0 {
        Frag::Later
    } else if more {
        Frag::First
    } else {
        Frag::None
    };
    pkt.family = FAMILY_V4;
    pkt.frag_proto = pkt.protocol;
    pkt.l4_off = C::L3 + ihl;
    // A fragment offset of 8 bytes can only come from a tiny-fragment
    // attack that overwrites the TCP header (RFC 1858).
    if offset == 1 && pkt.protocol == PROTO_TCP {
        return Parsed::Malformed;
    }
    if pkt.frag == Frag::Later {
        return Parsed::Ip;
    }
    let l4_len = tot_len - ihl;
    if parse_l4(ctx, pkt, l4_len) { Parsed::Ip } else { Parsed::Malformed }
}

#[inline(always)]
fn parse_v6<C: Skb>(ctx: &C, pkt: &mut Packet) -> Parsed {
    let fields = ctx.with_header(C::L3, |ip: &Ipv6Hdr| {
        pkt.protocol = ip.next_hdr;
        pkt.hop_limit = ip.hop_limit;
        pkt.src = ip.src_addr;
        pkt.dst = ip.dst_addr;
        (ip.vcf[0], u16::from_be_bytes(ip.payload_len))
    });
    let Some((vcf0, payload_len)) = fields else {
        return Parsed::Malformed;
    };
    if vcf0 >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_len = payload_len as usize;
    // BIG TCP (GSO packets over 64 KiB) carries a zero payload length.
    let end =
        if payload_len == 0 && ctx.pkt_len() > 0xffff { ctx.pkt_len() } else { C::L3 + Ipv6Hdr::LEN + payload_len };
    if end > ctx.pkt_len() {
        return Parsed::Malformed;
    }
    pkt.family = FAMILY_V6;
    pkt.l4_off = C::L3 + Ipv6Hdr::LEN;
    // Extension headers are rare: read them with bpf_skb_load_bytes so the
    // variable offsets stay simple for the verifier.
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        i += 1;
        let nh = pkt.protocol;
        let off = pkt.l4_off;
        match nh {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some(hdr) = ctx.fetch::<[u8; 2]>(off) else {
                    return Parsed::Malformed;
                };
                pkt.protocol = hdr[0];
                pkt.l4_off = off + (hdr[1] as usize + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let Some(hdr) = ctx.fetch::<[u8; 2]>(off) else {
                    return Parsed::Malformed;
                };
                pkt.protocol = hdr[0];
                pkt.l4_off = off + (hdr[1] as usize + 2) * 4;
            }
            // Fragment header: 8 bytes.
            44 => {
                let Some(hdr) = ctx.fetch::<[u8; 8]>(off) else {
                    return Parsed::Malformed;
                };
                pkt.protocol = hdr[0];
                pkt.l4_off = off + 8;
                let offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                let more = hdr[3] & 1 != 0;
                let id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                pkt.frag_id = id;
                pkt.frag_proto = hdr[0];
                // Inside the payload, like every other header.
                if pkt.l4_off > end {
                    return Parsed::Malformed;
                }
                if offset != 0 {
                    pkt.frag = Frag::Later;
                    return Parsed::Ip;
                }
                if more {
                    pkt.frag = Frag::First;
                }
            }
            _ => break,
        }
        if pkt.l4_off > end {
            return Parsed::Malformed;
        }
    }
    let l4_len = end - pkt.l4_off;
    if parse_l4(ctx, pkt, l4_len) { Parsed::Ip } else { Parsed::Malformed }
}

/// Reads ports (and TCP flags, ICMP type/identifier). `l4_len` is what the
/// IP header says the L4 part holds. Returns false if it is too short.
#[inline(always)]
fn parse_l4<C: Skb>(ctx: &C, pkt: &mut Packet, l4_len: usize) -> bool {
    let min = match pkt.protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        PROTO_ICMP | PROTO_ICMPV6 => 8,
        // Unknown protocols carry no ports NetworkPolicy can name.
        _ => return true,
    };
    // A first fragment must carry the whole minimal L4 header (RFC 1858).
    if l4_len < min {
        return false;
    }
    let Ok(head) = load_l4(ctx, pkt.l4_off) else {
        return false;
    };
    match pkt.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            pkt.sport = u16::from_be_bytes([head[0], head[1]]);
            pkt.dport = u16::from_be_bytes([head[2], head[3]]);
            if pkt.protocol == PROTO_TCP {
                pkt.tcp_flags = head[13];
            }
        }
        _ => {
            pkt.icmp_type = head[0];
            if is_echo(pkt.protocol, head[0]) {
                let ident = u16::from_be_bytes([head[4], head[5]]);
                pkt.sport = ident;
                pkt.dport = ident;
            }
        }
    }
    true
}

/// The first 14 bytes of the L4 header, by direct access when the offset is
/// the common one, by a helper load otherwise.
#[inline(always)]
fn load_l4<C: Skb>(ctx: &C, off: usize) -> Result<[u8; 14], ()> {
    if off <= C::L3 + 60
        && let Some(head) = ctx.header::<[u8; 14]>(off)
    {
        return Ok(head);
    }
    // Short packets (ICMP, UDP) may hold fewer than 14 bytes of L4.
    let mut buf = [0u8; 14];
    match ctx.fetch::<[u8; 8]>(off) {
        Some(b) => buf[..8].copy_from_slice(&b),
        None => return Err(()),
    }
    if let Some(b) = ctx.fetch::<[u8; 6]>(off + 8) {
        buf[8..].copy_from_slice(&b);
    }
    Ok(buf)
}

/// ICMP echo request/reply: the identifier plays the role of a port.
#[inline(always)]
pub fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        PROTO_ICMP => icmp_type == 0 || icmp_type == 8,
        PROTO_ICMPV6 => icmp_type == 128 || icmp_type == 129,
        _ => false,
    }
}

/// ICMP echo request (as opposed to reply).
#[inline(always)]
pub fn is_echo_request(protocol: u8, icmp_type: u8) -> bool {
    (protocol == PROTO_ICMP && icmp_type == 8) || (protocol == PROTO_ICMPV6 && icmp_type == 128)
}

/// ICMP errors that quote the packet they are about.
#[inline(always)]
pub fn is_icmp_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        PROTO_ICMP => icmp_type == 3 || icmp_type == 11 || icmp_type == 12,
        PROTO_ICMPV6 => (1..=4).contains(&icmp_type),
        _ => false,
    }
}

/// Neighbour discovery and multicast listener messages between the pod and
/// the host: link-local plumbing IPv6 cannot work without, never subject to
/// policy. Only the genuine article passes: NDP with hop limit 255, MLD with
/// hop limit 1, and a link-local source or a link-local (unicast or
/// link-scope multicast) destination, so nothing that can be routed off the
/// link gets through on an ICMPv6 type.
#[inline(always)]
pub fn is_ipv6_link_control(pkt: &Packet) -> bool {
    if pkt.family != FAMILY_V6 || pkt.protocol != PROTO_ICMPV6 {
        return false;
    }
    let hops_ok = match pkt.icmp_type {
        133..=137 => pkt.hop_limit == 255,
        130..=132 | 143 => pkt.hop_limit == 1,
        _ => return false,
    };
    let link_local = |a: &[u8; 16]| a[0] == 0xfe && a[1] & 0xc0 == 0x80;
    let link_multicast = pkt.dst[0] == 0xff && pkt.dst[1] & 0x0f == 0x02;
    hops_ok && (link_local(&pkt.src) || link_local(&pkt.dst) || link_multicast)
}

/// The flow an ICMP error quotes: (src, dst, protocol, sport, dport) of the
/// original packet. TCP, UDP, SCTP and ICMP echo are looked at.
pub struct Quoted {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub protocol: u8,
    /// For a quoted ping: its ICMP type.
    pub icmp_type: u8,
    pub sport: u16,
    pub dport: u16,
}

#[inline(always)]
pub fn quoted_flow<C: Skb>(ctx: &C, pkt: &Packet) -> Option<Quoted> {
    let inner = pkt.l4_off + 8;
    let mut q = Quoted { src: [0; 16], dst: [0; 16], protocol: 0, icmp_type: 0, sport: 0, dport: 0 };
    let l4 = if pkt.family == FAMILY_V4 {
        let h = ctx.fetch::<[u8; 20]>(inner)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        q.protocol = h[9];
        q.src[..4].copy_from_slice(&h[12..16]);
        q.dst[..4].copy_from_slice(&h[16..20]);
        inner + ((h[0] & 0x0f) as usize) * 4
    } else {
        let h = ctx.fetch::<[u8; 40]>(inner)?;
        q.protocol = h[6];
        q.src.copy_from_slice(&h[8..24]);
        q.dst.copy_from_slice(&h[24..40]);
        inner + 40
    };
    match q.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let ports = ctx.fetch::<[u8; 4]>(l4)?;
            q.sport = u16::from_be_bytes([ports[0], ports[1]]);
            q.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        // An error about a ping (traceroute -I, mtr): the echo identifier.
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h = ctx.fetch::<[u8; 6]>(l4)?;
            if !is_echo(q.protocol, h[0]) {
                return None;
            }
            q.icmp_type = h[0];
            q.sport = u16::from_be_bytes([h[4], h[5]]);
            q.dport = q.sport;
        }
        _ => return None,
    }
    Some(q)
}
