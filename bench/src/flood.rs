//! Denied traffic, where an in-kernel verdict before routing should win:
//! a denied flood (one pod sends small UDP packets as fast as it can to a
//! port its policy denies) and a scan (one pod sends SYNs to many distinct
//! ports, all denied). Also the probe set every engine must answer as
//! palisade does before its figures count.

use crate::cluster::{PORT_ANY_PEER, PORT_CPS, PORT_DENIED, PORT_RR};
use crate::cpu::{self, Ticks};
use crate::env::{self, Pod};
use anyhow::{Context, Result, bail};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Ports probed in both directions (client → server, server → client):
/// the bench policies allow some from client to server, deny the rest.
pub const PROBE_PORTS: [u16; 12] =
    [PORT_RR, PORT_CPS, 7003, PORT_ANY_PEER, 7004, 7099, 7101, PORT_DENIED, 8080, 443, 53, 22];

/// Ports the scan sweeps on the server (all denied to the client).
pub const SCAN_PORTS: (u16, u16) = (10_000, 19_999);

/// Listening sockets for the probes that no server already listens on.
pub struct Listeners {
    _open: Vec<TcpListener>,
}

impl Listeners {
    pub fn open(client: &Pod, server: &Pod) -> Result<Listeners> {
        let mut v = Vec::new();
        for (pod, skip) in [(server, &[PORT_RR, PORT_CPS, PORT_DENIED][..]), (client, &[][..])] {
            for port in PROBE_PORTS.iter().copied().filter(|p| !skip.contains(p)) {
                let l = env::run_in(&pod.netns, None, move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
                    .with_context(|| format!("probe listener on {port}"))?;
                v.push(l);
            }
        }
        Ok(Listeners { _open: v })
    }
}

/// Whether each probe connects (client → server ports, then server →
/// client ports), all at once.
pub fn probes(client: &Pod, server: &Pod) -> Result<Vec<bool>> {
    let mut threads = Vec::new();
    for (from, to) in [(client, server.ip4), (server, client.ip4)] {
        for port in PROBE_PORTS {
            threads.push(env::spawn_in(&from.netns, None, move || {
                TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_millis(700)).is_ok()
            }));
        }
    }
    threads.into_iter().map(|t| t.join().map_err(|_| anyhow::anyhow!("probe panicked"))?).collect()
}

/// The probes as text, for notes: `c→s:7001 ✓`.
pub fn describe(verdicts: &[bool]) -> String {
    let names = ["c→s", "s→c"];
    verdicts
        .iter()
        .enumerate()
        .map(|(i, ok)| {
            format!(
                "{}:{} {}",
                names[i / PROBE_PORTS.len()],
                PROBE_PORTS[i % PROBE_PORTS.len()],
                if *ok { "open" } else { "closed" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One CPU's time from /proc/stat.
fn cpu_ticks(cpu: usize) -> Result<Ticks> {
    cpu::ticks(&format!("cpu{cpu}"))
}

/// What one CPU did over a measurement.
#[derive(Clone, Copy, Debug)]
pub struct CpuShare {
    /// Busy, % of the CPU.
    pub busy_pct: f64,
    /// Of which in softirq, % of the CPU.
    pub softirq_pct: f64,
}

fn share(before: Ticks, after: Ticks) -> CpuShare {
    let total = (after.total - before.total).max(1) as f64;
    CpuShare {
        busy_pct: (after.busy - before.busy) as f64 / total * 100.0,
        softirq_pct: (after.softirq - before.softirq) as f64 / total * 100.0,
    }
}

/// Blackholes the flood and scan traffic in the node by policy routing,
/// for the no-enforcement baseline; removed on drop.
pub struct Blackhole(String, Vec<String>);

impl Blackhole {
    pub fn new(node_ns: &str, client: Ipv4Addr, server: Ipv4Addr) -> Result<Blackhole> {
        let (from, to) = (client.to_string(), server.to_string());
        let udp = format!("{PORT_DENIED}");
        let tcp = format!("{}-{}", SCAN_PORTS.0, SCAN_PORTS.1);
        let rules: Vec<Vec<String>> = [("udp", udp, "101"), ("tcp", tcp, "102")]
            .into_iter()
            .map(|(proto, ports, prio)| {
                ["priority", prio, "from", &from, "to", &to, "ipproto", proto, "dport", &ports, "blackhole"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .collect();
        let bh = Blackhole(node_ns.to_string(), vec!["101".into(), "102".into()]);
        for r in rules {
            let mut args = vec!["-n", node_ns, "rule", "add"];
            args.extend(r.iter().map(|s| s.as_str()));
            let out = std::process::Command::new("ip").args(&args).output()?;
            if !out.status.success() {
                bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        Ok(bh)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for prio in &self.1 {
            let _ = std::process::Command::new("ip").args(["-n", &self.0, "rule", "del", "priority", prio]).output();
        }
    }
}

/// A denied flood's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// Packets sent (and dropped) per second.
    pub pps: f64,
    pub cpu: CpuShare,
    /// Packets that reached the server (must be 0).
    pub delivered: u64,
}

/// 64-byte IPv4 packets (36 bytes of UDP payload), sent with sendmmsg in
/// batches of 64 from one thread pinned to `cpu`, to the server's denied
/// port, for `secs`. The veth hands each packet to the node's receive path
/// on the sending CPU, so everything the drop costs lands on that CPU.
pub fn denied_flood(client: &Pod, server: &Pod, cpu: usize, secs: f64) -> Result<Flood> {
    let rx = env::run_in(&server.netns, None, || std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT_DENIED)))??;
    rx.set_nonblocking(true)?;
    let dst = server.ip4;
    let before = cpu_ticks(cpu)?;
    let (sent, elapsed) = env::run_in(&client.netns, Some(cpu), move || -> Result<(u64, f64)> {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let payload = [0x5au8; 36];
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = PORT_DENIED.to_be();
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        let mut msgs: Vec<libc::mmsghdr> = (0..64)
            .map(|_| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = &mut addr as *mut libc::sockaddr_in as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            // SAFETY: msgs, their names and iovecs outlive the call.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
            if n > 0 {
                sent += n as u64;
            }
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    })??;
    let after = cpu_ticks(cpu)?;
    std::thread::sleep(Duration::from_millis(100));
    let mut delivered = 0u64;
    let mut buf = [0u8; 128];
    while rx.recv(&mut buf).is_ok() {
        delivered += 1;
    }
    Ok(Flood { pps: sent as f64 / elapsed, cpu: share(before, after), delivered })
}

/// A scan's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    pub syn_ps: f64,
    pub cpu: CpuShare,
}

/// SYNs from the client to `rate` distinct server ports per second (of
/// [`SCAN_PORTS`], cycling), crafted whole (valid checksums) on a raw
/// socket from a thread pinned to `cpu`, for `secs`.
pub fn scan(client: &Pod, server: &Pod, cpu: usize, rate: u64, secs: f64) -> Result<Scan> {
    let (src, dst) = (client.ip4, server.ip4);
    let before = cpu_ticks(cpu)?;
    let (sent, elapsed) = env::run_in(&client.netns, Some(cpu), move || -> Result<(u64, f64)> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let sock: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let (mut sent, mut port) = (0u64, SCAN_PORTS.0);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let due = ((now - start).as_secs_f64() * rate as f64) as u64;
            if due <= sent {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            while sent < due {
                let frame = palisade_kit::packet::valid(
                    IpAddr::V4(src),
                    IpAddr::V4(dst),
                    palisade_kit::packet::L4::Tcp(40_000 + (sent % 20_000) as u16, port, 0x02),
                );
                let ip = &frame[palisade_kit::packet::ETH_LEN..];
                // SAFETY: valid buffer and address for the call.
                unsafe {
                    libc::sendto(
                        sock.as_raw_fd(),
                        ip.as_ptr() as *const libc::c_void,
                        ip.len(),
                        0,
                        &to as *const libc::sockaddr_in as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                sent += 1;
                port = if port >= SCAN_PORTS.1 { SCAN_PORTS.0 } else { port + 1 };
            }
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    })??;
    let after = cpu_ticks(cpu)?;
    Ok(Scan { syn_ps: sent as f64 / elapsed, cpu: share(before, after) })
}
