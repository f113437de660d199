//! Pods made of network namespaces, wired the way ptp CNIs (kindnet,
//! Calico) wire them: a veth whose host side has a /32 and /128 route to
//! the pod, proxy ARP and a link-local IPv6 gateway, and a default route in
//! the pod. Each pod serves TCP and UDP echo on ports 80 and 81.

use crate::netns::{Netns, ip_batch, sysctl, sysctl_in};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A container port the pod declares (and serves, for TCP and UDP: an
/// echo server; nothing here terminates SCTP).
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub port: u16,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: &'static str,
}

impl Port {
    pub fn new(name: &str, port: u16, protocol: &'static str) -> Port {
        Port { name: name.into(), port, protocol }
    }
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// spec.nodeName: [`crate::NODE`] on the single-node topology, the
    /// node's name on a multi-node one.
    pub node: String,
    pub ports: Vec<Port>,
}

/// Wires the existing namespace `pod_ns` to the node namespace `node_ns`
/// (None: the calling thread's) the ptp-CNI way: a veth (`host_if` on the
/// node, eth0 in the pod) with proxy ARP and the link-local gateway on the
/// host side, /32 and /128 routes to the pod, default routes in the pod
/// through 169.254.1.1 and fe80::1.
pub fn wire(node_ns: Option<&str>, pod_ns: &str, host_if: &str, ip4: Ipv4Addr, ip6: Ipv6Addr) -> Result<()> {
    for key in ["net.ipv6.conf.default.accept_dad", "net.ipv6.conf.all.accept_dad"] {
        sysctl_in(Some(pod_ns), key, "0")?;
    }
    ip_batch(
        node_ns,
        &[
            format!("link add {host_if} type veth peer name eth0 netns {pod_ns}"),
            format!("link set {host_if} up"),
            format!("addr add fe80::1/64 dev {host_if} nodad"),
        ],
    )
    .context("host side")?;
    sysctl_in(node_ns, &format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
    // Proxy ARP answers a broadcast request after a random delay of up to
    // proxy_delay (0.8 s by default), which held a pod's first replies: a
    // probe through a Service failed about one run in 16 (4 of 66), none in
    // 100 with it zeroed. Calico zeroes it on its host-side veths too.
    sysctl_in(node_ns, &format!("net.ipv4.neigh.{host_if}.proxy_delay"), "0")?;
    let inside = [
        "link set lo up".to_string(),
        "link set eth0 up".to_string(),
        format!("addr add {ip4}/32 dev eth0"),
        format!("addr add {ip6}/128 dev eth0 nodad"),
        "route add 169.254.1.1 dev eth0 scope link".to_string(),
        "route add default via 169.254.1.1 dev eth0".to_string(),
        "route add default via fe80::1 dev eth0".to_string(),
    ];
    ip_batch(Some(pod_ns), &inside).context("pod side")?;
    ip_batch(node_ns, &[format!("route add {ip4}/32 dev {host_if}"), format!("route add {ip6}/128 dev {host_if}")])
        .context("host routes")
}

/// The IPv6 address the fixtures pair with 10.B.C.D (as the topology's
/// pods): fd10:B:C::D, B's decimal digits the group (10.240.3.60 is
/// fd10:240:3::3c).
fn ip6_twin(ip4: Ipv4Addr) -> Ipv6Addr {
    let [_, b, c, d] = ip4.octets();
    let b = u16::from_str_radix(&b.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd10, b, c.into(), 0, 0, 0, 0, d.into())
}

/// The pod `id` (namespace/name) as a CNI makes one on this host, outside
/// any topology: the host side of its veth named `host_if` (its network
/// namespace `pl-<host_if>`), addressed `ip4` and [`ip6_twin`], labelled
/// `label`, on `node`, declaring and serving `port`.
pub fn cni_pod(id: &str, host_if: &str, ip4: Ipv4Addr, node: &str, label: (&str, &str), port: Port) -> Result<Pod> {
    let (namespace, name) = id.split_once('/').context("a pod id is namespace/name")?;
    let spec = PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        labels: vec![(label.0.into(), label.1.into())],
        ip4,
        ip6: ip6_twin(ip4),
        node: node.into(),
        ports: vec![port],
    };
    Pod::create(&format!("pl-{host_if}"), host_if, spec)
}

pub struct Pod {
    pub spec: PodSpec,
    pub netns: Netns,
    /// Host side of the veth.
    pub host_if: String,
}

impl Pod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.name)
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.spec.ip6) } else { IpAddr::V4(self.spec.ip4) }
    }

    /// Creates the namespace, the veth and the routes on this host, and
    /// starts servers.
    pub fn create(netns_name: &str, host_if: &str, spec: PodSpec) -> Result<Pod> {
        Pod::create_on(None, netns_name, host_if, spec)
    }

    /// [`Pod::create`] with the host side in the node namespace `node_ns`
    /// (None: this host).
    pub fn create_on(node_ns: Option<&str>, netns_name: &str, host_if: &str, spec: PodSpec) -> Result<Pod> {
        // Leftovers of a run that was killed: deleting the host side of a
        // veth removes both ends at once (a namespace's go asynchronously).
        if node_ns.is_none() {
            let _ = crate::netns::ip(&["link", "del", host_if]);
        }
        let netns = Netns::create(netns_name)?;
        wire(node_ns, netns_name, host_if, spec.ip4, spec.ip6)?;
        let pod = Pod { spec, netns, host_if: host_if.to_string() };
        pod.serve()?;
        Ok(pod)
    }

    fn serve(&self) -> Result<()> {
        serve_in(&self.netns, &self.spec.ports)
    }

    /// The Pod manifest, with its named container ports.
    pub fn manifest(&self) -> String {
        let s = &self.spec;
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| format!("{{name: {}, containerPort: {}, protocol: {}}}", p.name, p.port, p.protocol))
            .collect();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: \"{}\", labels: {{{}}}}}\nspec:\n{}  containers: [{{name: server, image: agnhost, ports: [{}]}}]\nstatus:\n  phase: Running\n  podIP: {}\n  podIPs: [{{ip: {}}}, {{ip: \"{}\"}}]\n",
            s.name,
            s.namespace,
            labels.join(", "),
            if s.node.is_empty() { String::new() } else { format!("  nodeName: {}\n", s.node) },
            ports.join(", "),
            s.ip4,
            s.ip4,
            s.ip6
        )
    }
}

/// Serves TCP and UDP echo on `ports` in `netns` (a pod's, or a node's
/// for host-network servers); SCTP ports are left to crafted probes.
pub fn serve_in(netns: &Netns, ports: &[Port]) -> Result<()> {
    for p in ports {
        let port = p.port;
        match p.protocol {
            "TCP" => {
                let tcp = netns.run(move || std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))?;
                std::thread::spawn(move || {
                    for stream in tcp.incoming().flatten() {
                        std::thread::spawn(move || echo_tcp(stream));
                    }
                });
            }
            "UDP" => {
                let udp = netns.run(move || std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)))?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn echo_tcp(mut s: std::net::TcpStream) {
    let mut buf = [0u8; 2048];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Host settings pods need: forwarding in both families.
pub fn prepare_host() -> Result<()> {
    sysctl("net.ipv4.ip_forward", "1")?;
    sysctl("net.ipv6.conf.all.forwarding", "1")?;
    Ok(())
}
