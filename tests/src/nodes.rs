//! Nodes the way kind runs them: each node a network namespace holding its
//! pods' host-side veths and /32 routes, joined to the other nodes by an
//! uplink on a bridge in a "fabric" namespace, with routes to every other
//! node's pods through that node. The fabric also carries the API server's
//! address, so an agent inside any node can reach it.

use crate::netns::{Netns, ip_batch, sysctl_in};
use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Interface name of a node's link to the fabric.
pub const UPLINK: &str = "uplink";

/// One node: its namespace, name (spec.nodeName) and uplink addresses.
pub struct Node {
    /// The Kubernetes node name, e.g. `n1`.
    pub name: String,
    pub netns: Netns,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

/// The nodes and the fabric namespace between them.
pub struct Nodes {
    /// Dropped before the fabric (their uplinks go with them).
    pub nodes: Vec<Node>,
    pub fabric: Netns,
    /// The fabric's own address, reachable from every node (the API server's).
    pub fabric_ip: Ipv4Addr,
}

impl Nodes {
    /// `count` nodes named n1, n2, ... on 10.239.`subnet`.0/24 and
    /// fd10:239:`subnet`::/64; `tag` keeps namespace names unique.
    pub fn create(tag: &str, subnet: u8, count: usize) -> Result<Nodes> {
        let fabric = Netns::create(&format!("pl-{tag}-fab"))?;
        let fabric_ip = Ipv4Addr::new(10, 239, subnet, 254);
        let fab_ip6 = Ipv6Addr::new(0xfd10, 0x239, u16::from(subnet), 0, 0, 0, 0, 0xfe);
        sysctl_in(Some(&fabric.name), "net.ipv6.conf.default.accept_dad", "0")?;
        ip_batch(
            Some(&fabric.name),
            &[
                "link set lo up".into(),
                "link add br0 type bridge".into(),
                "link set br0 up".into(),
                format!("addr add {fabric_ip}/24 dev br0"),
                format!("addr add {fab_ip6}/64 dev br0 nodad"),
            ],
        )
        .context("fabric bridge")?;
        let mut nodes = Vec::new();
        for i in 1..=count {
            let name = format!("n{i}");
            let netns = Netns::create(&format!("pl-{tag}-{name}"))?;
            let ip4 = Ipv4Addr::new(10, 239, subnet, i as u8);
            let ip6 = Ipv6Addr::new(0xfd10, 0x239, u16::from(subnet), 0, 0, 0, 0, i as u16);
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
            ] {
                sysctl_in(Some(&netns.name), key, value)?;
            }
            ip_batch(
                Some(&fabric.name),
                &[
                    format!("link add {name} type veth peer name {UPLINK} netns {}", netns.name),
                    format!("link set {name} master br0"),
                    format!("link set {name} up"),
                ],
            )
            .with_context(|| format!("uplink of {name}"))?;
            ip_batch(
                Some(&netns.name),
                &[
                    "link set lo up".into(),
                    format!("link set {UPLINK} up"),
                    format!("addr add {ip4}/24 dev {UPLINK}"),
                    format!("addr add {ip6}/64 dev {UPLINK} nodad"),
                    // Also what proxy ARP needs to answer for the pods'
                    // gateway (169.254.1.1): a route to it elsewhere.
                    format!("route add default via {fabric_ip} dev {UPLINK}"),
                    format!("route add default via {fab_ip6} dev {UPLINK}"),
                ],
            )
            .with_context(|| format!("node {name}"))?;
            nodes.push(Node { name, netns, ip4, ip6 });
        }
        Ok(Nodes { nodes, fabric, fabric_ip })
    }

    pub fn get(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Routes every other node's traffic for `addrs` (a pod's addresses on
    /// node `on`) through `on`, as a CNI's per-node routes do.
    pub fn route_to(&self, on: &str, addrs: &[IpAddr]) -> Result<()> {
        let via = self.get(on);
        for node in self.nodes.iter().filter(|n| n.name != on) {
            let lines: Vec<String> = addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(a) => format!("route add {a}/32 via {} dev {UPLINK}", via.ip4),
                    IpAddr::V6(a) => format!("route add {a}/128 via {} dev {UPLINK}", via.ip6),
                })
                .collect();
            ip_batch(Some(&node.netns.name), &lines).with_context(|| format!("routes on {}", node.name))?;
        }
        Ok(())
    }
}
