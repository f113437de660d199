//! What the node's network looks like: which interface each pod address is
//! routed to (ptp-style CNIs such as kindnet and Calico put a /32 or /128
//! route on the pod's host veth), the node's own addresses, and a stream of
//! link, address and route changes so pods are enforced as they come.

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

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
    /// Interfaces that are one end of a veth or netkit pair: where CNIs
    /// put pods (with a host route, a pod's interface before its pod is
    /// known; see [`super::plan::plan`]).
    pub veths: BTreeSet<u32>,
}

impl Interfaces {
    /// Fails unless the view is whole: every host route leads to a listed
    /// link, and every interface enforced now (`in_force`: its index and
    /// the addresses of the pod enforced there) is either really gone
    /// (`exists` asks the kernel) or listed with a route to one of those
    /// addresses. A partial view applied would take enforcement off the
    /// interfaces it misses.
    pub fn check(&self, in_force: &[(u32, Vec<IpAddr>)], exists: impl Fn(u32) -> bool) -> Result<()> {
        if let Some((ip, i)) = self.routes.iter().find(|(_, i)| !self.names.contains_key(i)) {
            bail!("incomplete view: the route to {ip} leads to interface {i}, which the link dump lacks");
        }
        for (i, ips) in in_force {
            if !self.names.contains_key(i) {
                if exists(*i) {
                    bail!("incomplete view: enforced interface {i} exists but the link dump lacks it");
                }
            } else if !ips.is_empty() && !ips.iter().any(|ip| self.routes.contains_key(ip)) {
                bail!("incomplete view: enforced interface {i} is listed but no route leads to its pod");
            }
        }
        Ok(())
    }
}

/// Whether an interface index exists in this network namespace.
pub fn exists(ifindex: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null()
}

/// A complete view of the node's interfaces, or why there is none.
/// `fault` is a test-only hook (`palisade run --test-fault-interfaces`):
/// while that file says `fail` the dump fails, while it says `partial`
/// the links are missing from it, while it says `routes` the routes are.
pub async fn discover(handle: &Handle, in_force: &[(u32, Vec<IpAddr>)], fault: Option<&Path>) -> Result<Interfaces> {
    let injected = fault.and_then(|f| std::fs::read_to_string(f).ok()).map(|s| s.trim().to_string());
    if injected.as_deref() == Some("fail") {
        bail!("dumping links: injected fault");
    }
    let mut view = snapshot(handle).await?;
    match injected.as_deref() {
        Some("partial") => view.names.clear(),
        Some("routes") => view.routes.clear(),
        _ => {}
    }
    view.check(in_force, exists)?;
    Ok(view)
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
            match attr {
                LinkAttribute::IfName(name) => {
                    out.names.insert(msg.header.index, name.clone());
                }
                LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth | InfoKind::Netkit))) =>
                {
                    out.veths.insert(msg.header.index);
                }
                _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(links: &[u32], routes: &[(&str, u32)]) -> Interfaces {
        Interfaces {
            routes: routes.iter().map(|(a, i)| (a.parse().unwrap(), *i)).collect(),
            names: links.iter().map(|i| (*i, format!("if{i}"))).collect(),
            ..Default::default()
        }
    }

    fn enforced(i: u32, ip: &str) -> (u32, Vec<IpAddr>) {
        (i, vec![ip.parse().unwrap()])
    }

    #[test]
    fn a_whole_view_passes() {
        let v = view(&[1, 10], &[("10.0.0.1", 10)]);
        assert!(v.check(&[enforced(10, "10.0.0.1")], |_| true).is_ok());
        // An enforced interface that is really gone: the pod went away.
        assert!(v.check(&[enforced(10, "10.0.0.1"), enforced(11, "10.0.0.2")], |i| i != 11).is_ok());
    }

    #[test]
    fn routes_to_unlisted_links_mean_a_partial_view() {
        let v = view(&[1], &[("10.0.0.1", 10)]);
        let e = v.check(&[], |_| true).unwrap_err().to_string();
        assert!(e.contains("incomplete view") && e.contains("interface 10"), "{e}");
    }

    #[test]
    fn a_missing_enforced_interface_that_exists_means_a_partial_view() {
        let v = view(&[1], &[]);
        assert!(v.check(&[enforced(10, "10.0.0.1")], |_| true).is_err());
        let empty = Interfaces::default();
        assert!(empty.check(&[enforced(10, "10.0.0.1")], |_| true).is_err(), "an empty dump never passes");
    }

    #[test]
    fn an_enforced_interface_without_its_route_means_a_partial_view() {
        let v = view(&[1, 10], &[]);
        let e = v.check(&[enforced(10, "10.0.0.1")], |_| true).unwrap_err().to_string();
        assert!(e.contains("no route"), "{e}");
    }
}
