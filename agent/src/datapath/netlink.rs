//! What the node's network looks like: which interface each pod address is
//! routed to (ptp-style CNIs such as kindnet and Calico put a /32 or /128
//! route on the pod's host veth), the node's own addresses, and a stream of
//! link, address and route changes so pods are enforced as they come.

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const RT_TABLE_MAIN: u32 = 254;

/// A snapshot of the node's interfaces and host routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// Address -> interface index, from host routes in the main table.
    pub routes: BTreeMap<IpAddr, u32>,
    /// Interface index -> name.
    pub names: BTreeMap<u32, String>,
    /// The node's own addresses (not loopback, not link-local).
    pub host_ips: Vec<IpAddr>,
}

/// A netlink handle with its connection driven on the runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

pub async fn snapshot(handle: &Handle) -> Result<Interfaces> {
    let mut out = Interfaces::default();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("dumping links")? {
        for attr in &msg.attributes {
            if let LinkAttribute::IfName(name) = attr {
                out.names.insert(msg.header.index, name.clone());
            }
        }
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.context("dumping addresses")? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attr {
                let usable = match ip {
                    IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                    IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
                };
                if usable && !out.host_ips.contains(ip) {
                    out.host_ips.push(*ip);
                }
            }
        }
    }
    out.host_ips.sort();
    for route in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
        let mut routes = handle.route().get(route).execute();
        while let Some(msg) = routes.try_next().await.context("dumping routes")? {
            if msg.header.kind != RouteType::Unicast {
                continue;
            }
            let mut table = u32::from(msg.header.table);
            let (mut dst, mut oif) = (None, None);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let (Some(dst), Some(oif)) = (dst, oif) else { continue };
            let full = if dst.is_ipv4() { 32 } else { 128 };
            if table == RT_TABLE_MAIN && msg.header.destination_prefix_length == full {
                out.routes.insert(dst, oif);
            }
        }
    }
    Ok(out)
}

/// Calls `changed` whenever links, addresses or routes change.
pub async fn watch(changed: impl Fn() + Send + 'static) -> Result<()> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .context("subscribing to netlink link and route events")?;
    tokio::spawn(conn);
    while messages.next().await.is_some() {
        changed();
    }
    Ok(())
}
