//! The pure half of a sync: from the compiled state and the node's
//! interfaces to what the kernel should hold (endpoint entries, addresses,
//! which interface gets which programs) and where each local pod stands.
//! No kernel here, so every decision is unit-tested.

use super::HostInterfaces;
use super::netlink::Interfaces;
use crate::policy::{Compiled, IpPrefix};
use crate::state::{EndpointState, Enforcement};
use palisade_common::{EP_AUDIT, EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED, EP_PENDING, Endpoint, IpInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What an interface is to palisade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A local pod's host-side veth: both directions of its policy.
    Pod,
    /// Another interface of the node: egress of DNATed pod traffic.
    Host,
}

/// The desired kernel state (the policy map's contents are the compiled
/// ones, as they are) and each local pod's standing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub endpoints: Vec<EndpointState>,
    /// The endpoint map: host interface index -> entry.
    pub entries: BTreeMap<u32, Endpoint>,
    /// The address maps (single addresses and CIDRs together); empty
    /// until [`Plan::add_addresses`] (a sync that knows they did not
    /// change skips them).
    pub ips: BTreeMap<IpPrefix, IpInfo>,
    pub roles: BTreeMap<u32, Role>,
    /// Strict mode: pod interfaces held closed until their pod is known.
    pub pending: Vec<String>,
}

/// Which interfaces get which programs, and what they enforce.
pub fn plan(compiled: &Compiled, ifaces: &Interfaces, host: &HostInterfaces, strict_prefixes: &[String]) -> Plan {
    let mut plan = Plan::default();
    for ep in &compiled.endpoints {
        let ifindex = ep.ips.iter().find_map(|ip| ifaces.routes.get(ip).copied());
        let state = match ifindex {
            None => Enforcement::NoInterface,
            Some(i) if plan.entries.contains_key(&i) => Enforcement::Conflict { ifindex: i },
            Some(i) => {
                plan.entries.insert(i, Endpoint { identity: ep.identity, flags: ep.flags });
                Enforcement::Enforced
            }
        };
        plan.endpoints.push(EndpointState {
            namespace: ep.namespace.clone(),
            name: ep.name.clone(),
            ips: ep.ips.clone(),
            interface: ifindex.and_then(|i| ifaces.names.get(&i).cloned()),
            ifindex,
            identity: ep.identity,
            ingress_isolated: ep.flags & EP_INGRESS_ISOLATED != 0,
            egress_isolated: ep.flags & EP_EGRESS_ISOLATED != 0,
            audit: ep.flags & EP_AUDIT != 0,
            state,
        });
    }

    // Strict mode: a pod interface seen before its pod is held closed.
    for (ifindex, name) in &ifaces.names {
        if !plan.entries.contains_key(ifindex) && strict_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            plan.entries.insert(*ifindex, Endpoint { identity: 0, flags: EP_PENDING });
            plan.pending.push(name.clone());
        }
    }

    plan.roles = plan.entries.keys().map(|i| (*i, Role::Pod)).collect();
    for (ifindex, name) in &ifaces.names {
        let wanted = match host {
            HostInterfaces::All => name != "lo",
            HostInterfaces::Named(names) => names.contains(name),
        };
        if wanted {
            plan.roles.entry(*ifindex).or_insert(Role::Host);
        }
    }
    plan
}

/// Which pods to hold closed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Pods of these local identities (their policy entries are incomplete).
    Identities(BTreeSet<u32>),
    /// Every pod (peer addresses are incomplete, so any verdict may be wrong).
    All,
}

impl Plan {
    /// The addresses of enforced local pods, with their interfaces: what
    /// [`Plan::add_addresses`] adds to the compiled address map.
    pub fn local_addresses(&self) -> Vec<(IpAddr, u32)> {
        let enforced = self.endpoints.iter().filter(|st| st.state == Enforcement::Enforced);
        enforced.filter_map(|st| st.ifindex.map(|i| st.ips.iter().map(move |ip| (*ip, i)))).flatten().collect()
    }

    /// The address maps: the compiled ones, local pods' addresses carrying
    /// their interface, so a hook that sees a pod's packet elsewhere (after
    /// DNAT) finds the pod's endpoint.
    pub fn add_addresses(&mut self, compiled: &Compiled) {
        self.ips = compiled.ips.clone();
        for (ip, ifindex) in self.local_addresses() {
            if let Some(info) = self.ips.get_mut(&IpPrefix::from_net(ipnet::IpNet::from(ip))) {
                info.ifindex = ifindex;
            }
        }
    }

    /// Holds pods closed whose entries could not be written whole: their
    /// endpoint entries get [`EP_PENDING`] (the classifier drops all but
    /// link plumbing) instead of enforcing a partial state.
    pub fn hold_closed(&mut self, hold: &Hold, why: &str) {
        let held = |identity: u32| match hold {
            Hold::All => true,
            Hold::Identities(ids) => ids.contains(&identity),
        };
        for st in &mut self.endpoints {
            if st.state != Enforcement::Enforced || !held(st.identity) {
                continue;
            }
            let Some(entry) = st.ifindex.and_then(|i| self.entries.get_mut(&i)) else { continue };
            entry.flags |= EP_PENDING;
            st.state = Enforcement::HeldClosed(why.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LocalEndpoint;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(name: &str, addr: &str, identity: u32, flags: u32) -> LocalEndpoint {
        LocalEndpoint { namespace: "x".into(), name: name.into(), ips: vec![ip(addr)], identity, flags }
    }

    fn compiled(pods: Vec<LocalEndpoint>) -> Compiled {
        let mut c = Compiled::default();
        for p in &pods {
            let key = IpPrefix::from_net(ipnet::IpNet::from(p.ips[0]));
            c.ips.insert(key, IpInfo { identity: p.identity, flags: 0, ifindex: 0 });
        }
        c.endpoints = pods;
        c
    }

    fn ifaces(links: &[(u32, &str)], routes: &[(&str, u32)]) -> Interfaces {
        Interfaces {
            routes: routes.iter().map(|(a, i)| (ip(a), *i)).collect(),
            names: links.iter().map(|(i, n)| (*i, n.to_string())).collect(),
            host_ips: vec![],
        }
    }

    #[test]
    fn pods_are_enforced_on_the_interface_their_address_is_routed_to() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, EP_INGRESS_ISOLATED), pod("b", "10.0.0.2", 8, 0)]);
        let i =
            ifaces(&[(1, "lo"), (2, "eth0"), (10, "veth-a"), (11, "veth-b")], &[("10.0.0.1", 10), ("10.0.0.2", 11)]);
        let mut p = plan(&c, &i, &HostInterfaces::All, &[]);
        p.add_addresses(&c);
        assert_eq!(p.entries[&10], Endpoint { identity: 7, flags: EP_INGRESS_ISOLATED });
        assert_eq!(p.entries[&11], Endpoint { identity: 8, flags: 0 });
        assert_eq!(p.endpoints[0].state, Enforcement::Enforced);
        assert_eq!(p.endpoints[0].interface.as_deref(), Some("veth-a"));
        assert!(p.endpoints[0].ingress_isolated && !p.endpoints[0].egress_isolated);
        let roles: Vec<(u32, Role)> = p.roles.into_iter().collect();
        assert_eq!(roles, vec![(2, Role::Host), (10, Role::Pod), (11, Role::Pod)], "loopback gets nothing");
        // The pod's own address names its interface, for DNATed traffic.
        assert_eq!(p.ips[&IpPrefix::from_net(ipnet::IpNet::from(ip("10.0.0.1")))].ifindex, 10);
    }

    #[test]
    fn unrouted_and_conflicting_pods_get_no_entry() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, 0), pod("b", "10.0.0.2", 8, 0), pod("c", "10.0.0.3", 9, 0)]);
        let i = ifaces(&[(10, "veth-a")], &[("10.0.0.1", 10), ("10.0.0.2", 10)]);
        let mut p = plan(&c, &i, &HostInterfaces::Named(vec![]), &[]);
        p.add_addresses(&c);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[&10].identity, 7, "the first pod keeps the interface");
        assert_eq!(p.endpoints[1].state, Enforcement::Conflict { ifindex: 10 });
        assert_eq!(p.endpoints[2].state, Enforcement::NoInterface);
        assert_eq!(p.endpoints[2].state.kind(), "no-interface");
        let b = IpPrefix::from_net(ipnet::IpNet::from(ip("10.0.0.2")));
        assert_eq!(p.ips[&b].ifindex, 0, "a conflicting pod's address does not lead to another pod's endpoint");
    }

    #[test]
    fn strict_mode_holds_unknown_pod_interfaces_closed() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, 0)]);
        let i = ifaces(&[(2, "eth0"), (10, "veth-a"), (12, "veth-new")], &[("10.0.0.1", 10)]);
        let p = plan(&c, &i, &HostInterfaces::Named(vec!["eth0".into()]), &["veth".into()]);
        assert_eq!(p.entries[&12], Endpoint { identity: 0, flags: EP_PENDING });
        assert_eq!(p.entries[&10].flags & EP_PENDING, 0);
        assert_eq!(p.pending, vec!["veth-new".to_string()]);
        assert_eq!(p.roles[&12], Role::Pod);
        assert_eq!(p.roles[&2], Role::Host);
    }

    #[test]
    fn holding_closes_only_the_named_identities_and_says_so() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, EP_INGRESS_ISOLATED), pod("b", "10.0.0.2", 8, 0)]);
        let i = ifaces(&[(10, "veth-a"), (11, "veth-b")], &[("10.0.0.1", 10), ("10.0.0.2", 11)]);
        let mut p = plan(&c, &i, &HostInterfaces::All, &[]);
        p.hold_closed(&Hold::Identities([7].into()), "policy map full");
        assert_eq!(p.entries[&10].flags, EP_INGRESS_ISOLATED | EP_PENDING);
        assert_eq!(p.entries[&11].flags, 0);
        assert_eq!(p.endpoints[0].state, Enforcement::HeldClosed("policy map full".into()));
        assert_eq!(p.endpoints[0].state.kind(), "held-closed");
        assert_eq!(p.endpoints[1].state, Enforcement::Enforced);
        p.hold_closed(&Hold::All, "address map full");
        assert_eq!(p.entries[&11].flags, EP_PENDING);
        assert_eq!(p.endpoints[0].state, Enforcement::HeldClosed("policy map full".into()), "the first reason stays");
    }

    #[test]
    fn an_empty_view_enforces_nothing() {
        // Why an incomplete view must never reach the plan: applied, it
        // would take every pod's endpoint away (see `netlink::Interfaces::check`).
        let c = compiled(vec![pod("a", "10.0.0.1", 7, EP_INGRESS_ISOLATED)]);
        let p = plan(&c, &Interfaces::default(), &HostInterfaces::All, &[]);
        assert!(p.entries.is_empty() && p.roles.is_empty());
        assert_eq!(p.endpoints[0].state, Enforcement::NoInterface);
    }
}
