//! Crafted packets: Ethernet + IPv4/IPv6 + TCP/UDP/ICMP headers from
//! etherparse, SCTP and IPv6 option headers by hand (etherparse has no
//! SCTP, and the tests need option headers of exact shape). Lengths are
//! right; transport checksums are left zero (the classifier does not verify
//! them) except in [`valid`], whose packets a real stack would accept.
//! Tests that need malformed packets patch these bytes afterwards.

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset,
    IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, TcpHeader, UdpHeader,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_LEN: usize = Ethernet2Header::LEN;
pub const ETH_P_IP: u16 = EtherType::IPV4.0;
pub const ETH_P_IPV6: u16 = EtherType::IPV6.0;
pub const ETH_P_ARP: u16 = EtherType::ARP.0;

pub const PROTO_ICMP: u8 = IpNumber::ICMP.0;
pub const PROTO_TCP: u8 = IpNumber::TCP.0;
pub const PROTO_UDP: u8 = IpNumber::UDP.0;
pub const PROTO_ICMPV6: u8 = IpNumber::IPV6_ICMP.0;
pub const PROTO_SCTP: u8 = IpNumber::SCTP.0;
/// IPv6 next-header values of extension headers.
pub const NH_HOPOPTS: u8 = IpNumber::IPV6_HEADER_HOP_BY_HOP.0;
pub const NH_ROUTING: u8 = IpNumber::IPV6_ROUTE_HEADER.0;
pub const NH_FRAGMENT: u8 = IpNumber::IPV6_FRAGMENTATION_HEADER.0;
pub const NH_AUTH: u8 = IpNumber::AUTHENTICATION_HEADER.0;
pub const NH_DSTOPTS: u8 = IpNumber::IPV6_DESTINATION_OPTIONS.0;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const TTL: u8 = 64;

/// An Ethernet header of `ethertype`.
pub fn eth(ethertype: u16) -> Vec<u8> {
    Ethernet2Header { source: SRC_MAC, destination: DST_MAC, ether_type: EtherType(ethertype) }.to_bytes().to_vec()
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> Ipv4Header {
    let len = u16::try_from(payload_len).expect("an IPv4 payload fits 64k");
    Ipv4Header::new(len, TTL, IpNumber(proto), src.octets(), dst.octets()).expect("an IPv4 payload fits 64k")
}

/// Ethernet + IPv4 + `payload` of protocol `proto`; `frag` is the flags
/// and offset field as on the wire (0x2000 more fragments, low 13 bits the
/// offset in 8-byte units).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = ipv4_header(src, dst, proto, payload.len());
    h.identification = id;
    h.dont_fragment = frag & 0x4000 != 0;
    h.more_fragments = frag & 0x2000 != 0;
    h.fragment_offset = IpFragOffset::try_new(frag & 0x1fff).expect("13 bits");
    h.header_checksum = h.calc_header_checksum();
    let mut p = eth(ETH_P_IP);
    p.extend(h.to_bytes());
    p.extend(payload);
    p
}

/// Ethernet + IPv6 + `payload`, which includes any extension headers.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: u16::try_from(payload.len()).expect("an IPv6 payload fits 64k"),
        next_header: IpNumber(next),
        hop_limit: TTL,
        source: src.octets(),
        destination: dst.octets(),
    };
    let mut p = eth(ETH_P_IPV6);
    p.extend(h.to_bytes());
    p.extend(payload);
    p
}

/// Offset of the IPv6 hop limit in a packet from [`ipv6`].
pub const IPV6_HOP_LIMIT_AT: usize = ETH_LEN + 7;

pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, proto, 0, 0, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto, payload),
        _ => panic!("mixed families {src} {dst}"),
    }
}

fn tcp_header(sport: u16, dport: u16, flags: u8) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, 1, 0xffff);
    h.syn = flags & TCP_SYN != 0;
    h.ack = flags & TCP_ACK != 0;
    h.fin = flags & 0x01 != 0;
    h.rst = flags & 0x04 != 0;
    h.psh = flags & 0x08 != 0;
    if h.ack {
        h.acknowledgment_number = 1;
    }
    h
}

/// A 20-byte TCP header with `flags`.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp_header(sport, dport, flags).to_bytes().to_vec()
}

/// A UDP header and `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let h = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).expect("a UDP payload fits 64k");
    let mut p = h.to_bytes().to_vec();
    p.extend(payload);
    p
}

/// An SCTP common header (12 bytes) and an INIT chunk (20 bytes); the
/// checksum is zero (nothing on the way verifies it, nothing here
/// terminates SCTP).
pub fn sctp_init(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend([0; 8]); // verification tag 0 (INIT), checksum
    h.extend([1, 0, 0, 20]); // INIT chunk, length 20
    h.extend([0xca, 0xfe, 0xba, 0xbe, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
    h
}

/// An ICMP (or ICMPv6) echo request or reply with identifier `ident`.
pub fn icmp_echo(v6: bool, reply: bool, ident: u16) -> Vec<u8> {
    let echo = IcmpEchoHeader { id: ident, seq: 1 };
    let payload = b"palisade";
    let mut m = if v6 {
        let ty = if reply { Icmpv6Type::EchoReply(echo) } else { Icmpv6Type::EchoRequest(echo) };
        Icmpv6Header::new(ty).to_bytes().to_vec()
    } else {
        let ty = if reply { Icmpv4Type::EchoReply(echo) } else { Icmpv4Type::EchoRequest(echo) };
        Icmpv4Header::with_checksum(ty, payload).to_bytes().to_vec()
    };
    m.extend(payload);
    m
}

/// An ICMP(v6) error of `ty`/`code` from `from` to `to` quoting `quoted`
/// (an IP packet without its Ethernet header).
pub fn icmp_error(from: IpAddr, to: IpAddr, ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let (proto, mut m) = if from.is_ipv6() {
        let t = Icmpv6Type::Unknown { type_u8: ty, code_u8: code, bytes5to8: [0; 4] };
        (PROTO_ICMPV6, Icmpv6Header::new(t).to_bytes().to_vec())
    } else {
        let t = Icmpv4Type::Unknown { type_u8: ty, code_u8: code, bytes5to8: [0; 4] };
        (PROTO_ICMP, Icmpv4Header::with_checksum(t, quoted).to_bytes().to_vec())
    };
    m.extend(quoted);
    ip_packet(from, to, proto, &m)
}

/// An 8-byte IPv6 option header (hop-by-hop or destination options) with
/// PadN filling it.
pub fn opts_header(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// `n` IPv6 option headers (the first hop-by-hop, the rest destination
/// options) followed by `l4` whose protocol is `proto`; returns the IPv6
/// next-header value and the payload.
pub fn ext_chain(n: usize, proto: u8, l4: &[u8]) -> (u8, Vec<u8>) {
    let mut payload = Vec::new();
    for i in 0..n {
        let next = if i + 1 == n { proto } else { NH_DSTOPTS };
        payload.extend(opts_header(next));
    }
    payload.extend(l4);
    let first = if n == 0 { proto } else { NH_HOPOPTS };
    (first, payload)
}

/// The first bytes of a flow's packet above IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// Source port, destination port, TCP flags.
    Tcp(u16, u16, u8),
    Udp(u16, u16),
    Sctp(u16, u16),
    /// ICMP/ICMPv6 echo request with this identifier.
    Echo(u16),
    /// ICMP/ICMPv6 echo reply.
    EchoReply(u16),
}

impl L4 {
    pub fn protocol(self, v6: bool) -> u8 {
        match self {
            L4::Tcp(..) => PROTO_TCP,
            L4::Udp(..) => PROTO_UDP,
            L4::Sctp(..) => PROTO_SCTP,
            L4::Echo(_) | L4::EchoReply(_) if v6 => PROTO_ICMPV6,
            L4::Echo(_) | L4::EchoReply(_) => PROTO_ICMP,
        }
    }

    pub fn bytes(self, v6: bool) -> Vec<u8> {
        match self {
            L4::Tcp(s, d, f) => tcp(s, d, f),
            L4::Udp(s, d) => udp(s, d, &[]),
            L4::Sctp(s, d) => sctp_init(s, d),
            L4::Echo(i) => icmp_echo(v6, false, i),
            L4::EchoReply(i) => icmp_echo(v6, true, i),
        }
    }

    /// The port a policy judges the flow's first packet on (for ICMP echo
    /// the identifier, as the classifier keys it).
    pub fn port(self) -> u16 {
        self.port_pair().1
    }

    /// (source, destination) ports; an echo's identifier twice.
    pub fn port_pair(self) -> (u16, u16) {
        match self {
            L4::Tcp(s, d, _) | L4::Udp(s, d) | L4::Sctp(s, d) => (s, d),
            L4::Echo(i) | L4::EchoReply(i) => (i, i),
        }
    }

    /// The reply's first bytes.
    pub fn reply(self) -> L4 {
        match self {
            L4::Tcp(s, d, _) => L4::Tcp(d, s, TCP_SYN | TCP_ACK),
            L4::Udp(s, d) => L4::Udp(d, s),
            L4::Sctp(s, d) => L4::Sctp(d, s),
            L4::Echo(i) => L4::EchoReply(i),
            L4::EchoReply(i) => L4::Echo(i),
        }
    }
}

/// A flow's packet from `src` to `dst`.
pub fn packet(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    ip_packet(src, dst, l4.protocol(src.is_ipv6()), &l4.bytes(src.is_ipv6()))
}

/// A packet a real stack would accept: Ethernet, IPv4/IPv6 and TCP (no
/// payload) or UDP (32 bytes), every checksum right.
pub fn valid(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), TTL),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), TTL),
        _ => panic!("mixed families {src} {dst}"),
    };
    let mut out = Vec::new();
    let written = match l4 {
        L4::Tcp(s, d, f) => ip.tcp_header(tcp_header(s, d, f)).write(&mut out, &[]),
        L4::Udp(s, d) => ip.udp(s, d).write(&mut out, &[0x5a; 32]),
        other => panic!("valid packets are TCP or UDP, not {other:?}"),
    };
    written.expect("writing to a Vec");
    out
}

/// A UDP datagram as a raw IP socket sends it (IP header, no Ethernet),
/// every checksum right.
pub fn udp_datagram(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), TTL),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), TTL),
        _ => panic!("mixed families {src} {dst}"),
    };
    let mut out = Vec::new();
    ip.udp(sport, dport).write(&mut out, payload).expect("writing to a Vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    fn ports(p: &[u8]) -> (u16, u16) {
        match SlicedPacket::from_ethernet(p).expect("parses").transport {
            Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
            Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flows_parse_back() {
        for (s, d) in [(IpAddr::V4(A4), IpAddr::V4(B4)), (IpAddr::V6(A6), IpAddr::V6(B6))] {
            let p = packet(s, d, L4::Tcp(1000, 80, TCP_SYN));
            assert_eq!(p.len(), ETH_LEN + if s.is_ipv6() { 40 } else { 20 } + 20);
            assert_eq!(ports(&p), (1000, 80));
            assert_eq!(ports(&packet(s, d, L4::Udp(53, 1000).reply())), (1000, 53));
            let sctp = packet(s, d, L4::Sctp(5, 9000));
            assert_eq!(&sctp[sctp.len() - 32..sctp.len() - 28], &[0, 5, 0x23, 0x28]);
            let echo = packet(s, d, L4::Echo(77));
            let want = IcmpEchoHeader { id: 77, seq: 1 };
            match SlicedPacket::from_ethernet(&echo).expect("echo parses").transport {
                Some(TransportSlice::Icmpv4(i)) => assert_eq!(i.icmp_type(), Icmpv4Type::EchoRequest(want)),
                Some(TransportSlice::Icmpv6(i)) => assert_eq!(i.icmp_type(), Icmpv6Type::EchoRequest(want)),
                other => panic!("{other:?}"),
            }
        }
        let syn_ack = L4::Tcp(1000, 80, TCP_SYN).reply();
        assert_eq!(syn_ack, L4::Tcp(80, 1000, TCP_SYN | TCP_ACK));
        assert_eq!((L4::Echo(7).port(), L4::Udp(1, 2).port()), (7, 2));
    }

    #[test]
    fn fragments_and_extension_headers() {
        let p = ipv4(A4, B4, PROTO_UDP, 0x4242, 0x2000 | 3, &[0; 16]);
        let Some(NetSlice::Ipv4(ip)) = SlicedPacket::from_ethernet(&p).expect("parses").net else { panic!() };
        let h = ip.header();
        assert_eq!((h.identification(), h.more_fragments(), h.fragments_offset().value()), (0x4242, true, 3));
        assert_eq!(u16::from_be_bytes([p[ETH_LEN + 6], p[ETH_LEN + 7]]), 0x2003, "flags and offset as given");
        let (first, payload) = ext_chain(3, PROTO_TCP, &tcp(1, 80, TCP_SYN));
        let p = ipv6(A6, B6, first, &payload);
        assert_eq!(ports(&p), (1, 80), "three option headers, then TCP");
        assert_eq!(p[IPV6_HOP_LIMIT_AT], TTL);
        let err = icmp_error(IpAddr::V4(B4), IpAddr::V4(A4), 3, 3, &p[ETH_LEN..ETH_LEN + 28]);
        assert_eq!(&err[ETH_LEN + 20..ETH_LEN + 22], &[3, 3]);
        assert_eq!(err.len(), ETH_LEN + 20 + 8 + 28);
    }

    #[test]
    fn valid_packets_have_right_checksums() {
        for l4 in [L4::Tcp(40000, 7001, TCP_ACK), L4::Udp(40000, 7000)] {
            let p = valid(IpAddr::V4(A4), IpAddr::V4(B4), l4);
            let s = SlicedPacket::from_ethernet(&p).expect("parses");
            let Some(NetSlice::Ipv4(ip)) = &s.net else { panic!() };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            match s.transport {
                Some(TransportSlice::Tcp(t)) => {
                    assert_eq!(t.checksum(), t.to_header().calc_checksum_ipv4(&h, &[]).unwrap());
                    assert!(t.ack() && !t.syn());
                }
                Some(TransportSlice::Udp(u)) => {
                    let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                    assert_eq!((u.checksum(), u.payload().len()), (want, 32));
                }
                other => panic!("{other:?}"),
            }
            let p6 = valid(IpAddr::V6(A6), IpAddr::V6(B6), l4);
            assert_eq!(ports(&p6), l4.port_pair());
        }
    }
}
