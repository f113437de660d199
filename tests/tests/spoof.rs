//! Source address spoofing: a pod with CAP_NET_RAW sends from another pod's
//! address to reach a pod whose ingress allows only that other pod. The
//! packet must drop as it leaves the sender (a DROPPED event, reason
//! spoofed-source) and never arrive; the genuine owner's identical packet
//! arrives. IPv4 and IPv6, crafted on raw sockets.

use anyhow::{Context, Result, bail, ensure};
use palisade::events::{Verdict, VerdictEvent};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::np;
use palisade_e2e::pods::Pod;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The port pod c listens on (datagrams only counted, not echoed).
const PORT: u16 = 9000;
const IPPROTO_RAW: i32 = 255;

/// A whole IP packet carrying one UDP datagram from `src` to `dst`:`PORT`.
fn udp_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    palisade_kit::packet::udp_datagram(src, dst, 40000, PORT, payload)
}

/// Sends `pkt` (IP header included) from inside `from`'s namespace.
fn send_raw(from: &Pod, dst: IpAddr, pkt: Vec<u8>) -> Result<()> {
    let v6 = dst.is_ipv6();
    let sock = from.netns.run(move || {
        Socket::new(if v6 { Domain::IPV6 } else { Domain::IPV4 }, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
    })?;
    sock.send_to(&pkt, &SockAddr::from(SocketAddr::new(dst, 0))).context("raw send")?;
    Ok(())
}

/// Payloads pod c receives on `PORT` until `wait` has passed.
fn received(sock: &UdpSocket, wait: Duration) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => out.insert(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
    }
    Ok(out)
}

/// The spoofed-source drop event for a datagram from `claimed` sent by x/a.
fn spoof_event(c: &Cluster, claimed: IpAddr) -> Result<VerdictEvent> {
    let started = Instant::now();
    loop {
        let found = c
            .agent()
            .events(&[])?
            .into_iter()
            .find(|e| e.reason == "spoofed-source" && e.source.ip == claimed && e.destination.port == Some(PORT));
        if let Some(e) = found {
            return Ok(e);
        }
        if started.elapsed() > Duration::from_secs(3) {
            bail!("no spoofed-source event for a datagram claiming {claimed}\n{}", c.agent().log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn spoofed_sources_drop_where_they_leave_the_pod() -> Result<()> {
    let c = Cluster::start("sp", 7, &[])?;
    c.reset()?;
    let (a, b, target) = (c.topo.pod("x/a"), c.topo.pod("x/b"), c.topo.pod("x/c"));
    // Reverse-path filtering would drop the IPv4 spoof on its own: off, so
    // only palisade stands between the spoofer and pod c.
    palisade_e2e::netns::sysctl(&format!("net.ipv4.conf.{}.rp_filter", a.host_if), "0")?;
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")?;
    ensure!(all.trim() == "0", "net.ipv4.conf.all.rp_filter is {}: the IPv4 case would prove nothing", all.trim());
    c.apply(&[np(
        "x",
        "c-from-b",
        "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
    )])?;
    let sink: UdpSocket = target
        .netns
        .run(|| -> std::io::Result<Socket> {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_only_v6(false)?;
            s.bind(&SockAddr::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT)))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?
        .into();

    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let (claimed, dst) = (b.ip(v6), target.ip(v6));
        let spoofed = format!("spoofed {family}");
        let genuine = format!("genuine {family}");
        for _ in 0..3 {
            send_raw(a, dst, udp_packet(claimed, dst, spoofed.as_bytes()))?;
        }
        // The same packet from its owner: the crafted datagram is
        // deliverable, and the owner keeps its address.
        send_raw(b, dst, udp_packet(claimed, dst, genuine.as_bytes()))?;
        let got = received(&sink, Duration::from_millis(1500))?;
        ensure!(got.contains(&genuine), "{family}: pod c did not receive b's own datagram: {got:?}");
        ensure!(!got.contains(&spoofed), "{family}: a's datagram claiming b's address reached pod c");

        let ev = spoof_event(&c, claimed)?;
        ensure!(ev.verdict == Verdict::Dropped, "{ev:?}");
        ensure!(
            ev.source.namespace.as_deref() == Some("x") && ev.source.pod.as_deref() == Some("a"),
            "the event names the sending interface's pod, x/a: {ev:?}"
        );
        ensure!(ev.destination.ip == dst && ev.protocol == "UDP", "{ev:?}");
        ensure!(ev.to_string().contains("spoofed source"), "readable line: {ev}");
    }

    // a's own address still works: its datagram reaches c's policy and is
    // dropped there for want of a rule, not as spoofed.
    let own = udp_packet(a.ip(false), target.ip(false), b"own address");
    send_raw(a, target.ip(false), own)?;
    std::thread::sleep(Duration::from_millis(500));
    let events = c.agent().events(&[])?;
    let mine: Vec<&VerdictEvent> = events.iter().filter(|e| e.source.ip == a.ip(false)).collect();
    ensure!(
        mine.iter().any(|e| e.reason == "no-rule" && e.destination.ip == target.ip(false)),
        "a's genuine datagram was not judged by c's ingress policy: {mine:?}"
    );
    ensure!(mine.iter().all(|e| e.reason != "spoofed-source"), "a's own address called spoofed: {mine:?}");
    Ok(())
}
