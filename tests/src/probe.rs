//! Real connections between pods, and the reachability matrix the upstream
//! Kubernetes netpol suite checks: every pod to every pod on a port and
//! protocol, all probes at once.

use crate::pods::Pod;
use palisade_kit::matrix::comparison;
use palisade_kit::packet::sctp_init;
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use palisade_kit::{Matrix, Proto};

/// How long a probe waits before calling the path blocked.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// A socket made inside the source pod, ready to be used from any thread.
pub fn socket_in(pod: &Pod, v6: bool, proto: Proto) -> std::io::Result<Socket> {
    pod.netns.run(move || {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        match proto {
            Proto::Tcp => Socket::new(domain, Type::STREAM, Some(SockProto::TCP)),
            Proto::Udp => Socket::new(domain, Type::DGRAM, Some(SockProto::UDP)),
            Proto::Sctp => Socket::new(domain, Type::RAW, Some(SockProto::from(i32::from(Proto::Sctp.number())))),
        }
    })
}

/// Connects and exchanges a message; true if the echo came back.
pub fn talk(sock: Socket, to: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    let msg = b"palisade-probe";
    let mut buf = [0u8; 64];
    match proto {
        Proto::Tcp => {
            if sock.connect_timeout(&SockAddr::from(to), timeout).is_err() {
                return false;
            }
            let mut s: std::net::TcpStream = sock.into();
            let _ = s.set_read_timeout(Some(timeout));
            s.write_all(msg).is_ok() && s.read(&mut buf).map(|n| &buf[..n] == msg).unwrap_or(false)
        }
        Proto::Udp => {
            let s: std::net::UdpSocket = sock.into();
            let _ = s.set_read_timeout(Some(timeout));
            s.send_to(msg, to).is_ok() && s.recv_from(&mut buf).map(|(n, _)| &buf[..n] == msg).unwrap_or(false)
        }
        Proto::Sctp => unreachable!("SCTP probes go through sctp_reachability"),
    }
}

/// Who can reach whom with SCTP to `port`: every pod sends a crafted SCTP
/// INIT to every pod, and raw sockets in the destinations record arrivals
/// (the kernel here has no SCTP stack to connect with).
pub fn sctp_reachability(pods: &[&Pod], port: u16, v6: bool) -> Matrix {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let names: Vec<String> = pods.iter().map(|p| p.id()).collect();
    let mut m = Matrix::new(&names, false);
    let seen: Arc<Mutex<Vec<(usize, u16, u16)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (j, pod) in pods.iter().enumerate() {
        let Ok(sock) = socket_in(pod, v6, Proto::Sctp) else { continue };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
        let (seen, stop) = (seen.clone(), stop.clone());
        receivers.push(std::thread::spawn(move || {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                // SAFETY: recv initialised the first n bytes.
                let data: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                // IPv4 raw sockets hand over the IP header, IPv6 ones do not.
                let off = if v6 { 0 } else { usize::from(data.first().map_or(0, |b| b & 0x0f)) * 4 };
                if data.len() >= off + 4 {
                    let sport = u16::from_be_bytes([data[off], data[off + 1]]);
                    let dport = u16::from_be_bytes([data[off + 2], data[off + 3]]);
                    seen.lock().expect("lock").push((j, sport, dport));
                }
            }
        }));
    }
    let sport = |i: usize, j: usize| 20000 + (i * 32 + j) as u16;
    for _ in 0..2 {
        for (i, from) in pods.iter().enumerate() {
            let Ok(sock) = socket_in(from, v6, Proto::Sctp) else { continue };
            for (j, to) in pods.iter().enumerate() {
                let _ = sock.send_to(&sctp_init(sport(i, j), port), &SocketAddr::new(to.ip(v6), 0).into());
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    let seen = seen.lock().expect("lock");
    for i in 0..pods.len() {
        for j in 0..pods.len() {
            m.put(i, j, Some(seen.iter().any(|&(at, sp, dp)| at == j && sp == sport(i, j) && dp == port)));
        }
    }
    m
}

/// One probe from a pod to an address.
pub fn probe(from: &Pod, to: IpAddr, port: u16, proto: Proto) -> bool {
    match socket_in(from, to.is_ipv6(), proto) {
        Ok(s) => talk(s, SocketAddr::new(to, port), proto, TIMEOUT),
        Err(_) => false,
    }
}

/// Probes every pair of pods at once.
pub fn reachability(pods: &[&Pod], port: u16, proto: Proto, v6: bool) -> Matrix {
    if proto == Proto::Sctp {
        return sctp_reachability(pods, port, v6);
    }
    let names: Vec<String> = pods.iter().map(|p| p.id()).collect();
    let mut m = Matrix::new(&names, false);
    let results: Vec<(usize, usize, bool)> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, from) in pods.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                let target = SocketAddr::new(to.ip(v6), port);
                let sock = socket_in(from, v6, proto);
                handles.push(scope.spawn(move || {
                    let ok = match sock {
                        Ok(s) => talk(s, target, proto, TIMEOUT),
                        Err(_) => false,
                    };
                    (i, j, ok)
                }));
            }
        }
        handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
    });
    for (i, j, ok) in results {
        m.put(i, j, Some(ok));
    }
    m
}

/// Probes until the matrix matches `expected`, re-probing (once) only the
/// pairs that were expected to connect and did not: a lost packet under
/// load must not fail a test, but an unexpected connection always does.
pub fn check(pods: &[&Pod], port: u16, proto: Proto, v6: bool, expected: &Matrix) -> Result<(), String> {
    let mut got = reachability(pods, port, proto, v6);
    for i in 0..got.names.len() {
        for j in 0..got.names.len() {
            if expected.at(i, j) == Some(true) && got.at(i, j) != Some(true) && proto != Proto::Sctp {
                got.put(i, j, Some(probe(pods[i], pods[j].ip(v6), port, proto)));
            }
        }
    }
    if got == *expected {
        Ok(())
    } else {
        Err(comparison(&format!("reachability on {proto}/{port} over IPv{}", if v6 { 6 } else { 4 }), expected, &got))
    }
}

/// GETs `path` from the agent's HTTP listener at `addr` (metrics, health):
/// the status code and the whole response.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out))
}
