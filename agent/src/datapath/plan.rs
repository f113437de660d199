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

/// A program on one of an interface's TC hooks: the pod hooks, or (on
/// other node interfaces) the host egress hook, never both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC egress of a node interface: the egress of DNATed pod traffic.
    HostEgress,
    /// TC egress of a pod interface: the pod's ingress.
    ToPod,
    /// TC ingress of a pod interface: the pod's egress.
    FromPod,
}

impl Hook {
    /// Whether the pod's policy depends on it.
    pub fn is_pod(self) -> bool {
        self != Hook::HostEgress
    }
}

/// The desired kernel state (the policy map's contents are the compiled
/// ones, as they are) and each local pod's standing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub endpoints: Vec<EndpointState>,
    /// The endpoint map: host interface index -> entry.
    pub entries: BTreeMap<u32, Endpoint>,
    /// The programs each interface should carry.
    pub hooks: BTreeMap<u32, BTreeSet<Hook>>,
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
                plan.entries.insert(i, ep.kernel());
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
            plan.entries.insert(*ifindex, Endpoint { class: 0, flags: EP_PENDING, parent: 0 });
            plan.pending.push(name.clone());
        }
    }

    // The pod hooks go on every interface with an endpoint entry, and on
    // every veth a host route leads to: a CNI creates a pod's veth and
    // route before the pod's address reaches the API, and an interface
    // without an endpoint entry passes through both hooks untouched (the
    // classifier judges nothing there), so attaching early changes no
    // verdict. The pod's manifest then costs map writes only: each attach
    // waits for RCU grace periods under the RTNL lock (tens of ms).
    let routed: BTreeSet<u32> = ifaces.routes.values().copied().filter(|i| ifaces.veths.contains(i)).collect();
    for ifindex in plan.entries.keys().chain(&routed) {
        plan.hooks.insert(*ifindex, [Hook::FromPod, Hook::ToPod].into());
    }
    // The host egress hook goes on the other node interfaces: on a pod
    // interface, known pod or not, the pod's own ingress hook judges
    // DNATed traffic to it (a third program there would cost every packet
    // delivered to a pod).
    for (ifindex, name) in &ifaces.names {
        let wanted = match host {
            HostInterfaces::All => name != "lo",
            HostInterfaces::Named(names) => names.contains(name),
        };
        if wanted && !plan.hooks.contains_key(ifindex) {
            plan.hooks.entry(*ifindex).or_default().insert(Hook::HostEgress);
        }
    }
    plan
}

/// The address maps (single addresses and CIDRs together, in key order):
/// the compiled ones, the `local` addresses ([`Plan::local_addresses`])
/// carrying their interface, so a hook that sees a pod's packet elsewhere
/// (after DNAT) finds the pod's endpoint. Read as they go: a copy was 7 MB
/// of the first sync's peak at 50k pods.
pub fn addresses<'a>(compiled: &'a Compiled, local: &[(IpAddr, u32)]) -> impl Iterator<Item = (IpPrefix, IpInfo)> + 'a {
    let local = interfaces(local);
    compiled.ips.iter().map(move |(k, v)| with_interface(&local, k, v))
}

/// The entries of [`addresses`] at `keys` (those not in the compiled map
/// are not wanted).
pub fn addresses_at<'a>(
    compiled: &'a Compiled,
    local: &[(IpAddr, u32)],
    keys: &'a BTreeSet<IpPrefix>,
) -> impl Iterator<Item = (IpPrefix, IpInfo)> + 'a {
    let local = interfaces(local);
    keys.iter().filter_map(move |k| compiled.ips.get_key_value(k).map(|(k, v)| with_interface(&local, k, v)))
}

/// The prefix of each local address and its interface.
fn interfaces(local: &[(IpAddr, u32)]) -> BTreeMap<IpPrefix, u32> {
    local.iter().map(|(ip, ifindex)| (IpPrefix::from_net(ipnet::IpNet::from(*ip)), *ifindex)).collect()
}

fn with_interface(local: &BTreeMap<IpPrefix, u32>, k: &IpPrefix, v: &IpInfo) -> (IpPrefix, IpInfo) {
    let mut v = *v;
    if let Some(ifindex) = local.get(k) {
        v.ifindex = *ifindex;
    }
    (*k, v)
}

/// Which pods to hold closed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Pods of these policy classes (their policy entries are incomplete).
    Classes(BTreeSet<u32>),
    /// Every pod (peer addresses are incomplete, so any verdict may be wrong).
    All,
}

impl Plan {
    /// The addresses of enforced local pods, with their interfaces: what
    /// [`addresses`] adds to the compiled address map.
    pub fn local_addresses(&self) -> Vec<(IpAddr, u32)> {
        let enforced = self.endpoints.iter().filter(|st| st.state == Enforcement::Enforced);
        enforced.filter_map(|st| st.ifindex.map(|i| st.ips.iter().map(move |ip| (*ip, i)))).flatten().collect()
    }

    /// Holds pods closed whose entries could not be written whole: their
    /// endpoint entries get [`EP_PENDING`] (the classifier drops all but
    /// link plumbing) instead of enforcing a partial state.
    pub fn hold_closed(&mut self, hold: &Hold, why: &str) {
        for st in &mut self.endpoints {
            if st.state != Enforcement::Enforced {
                continue;
            }
            let Some(entry) = st.ifindex.and_then(|i| self.entries.get_mut(&i)) else { continue };
            let held = match hold {
                Hold::All => true,
                Hold::Classes(classes) => classes.contains(&entry.class) || classes.contains(&entry.parent),
            };
            if !held {
                continue;
            }
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
        LocalEndpoint {
            namespace: "x".into(),
            name: name.into(),
            ips: vec![ip(addr)],
            identity,
            class: identity,
            parent: 0,
            flags,
        }
    }

    fn compiled(pods: Vec<LocalEndpoint>) -> Compiled {
        let mut c = Compiled::default();
        for p in &pods {
            let key = IpPrefix::from_net(ipnet::IpNet::from(p.ips[0]));
            c.ips.insert(key, IpInfo { identity: p.identity, flags: 0, ifindex: 0, namespace: 0 });
        }
        c.endpoints = pods;
        c
    }

    fn ifaces(links: &[(u32, &str)], routes: &[(&str, u32)]) -> Interfaces {
        Interfaces {
            routes: routes.iter().map(|(a, i)| (ip(a), *i)).collect(),
            names: links.iter().map(|(i, n)| (*i, n.to_string())).collect(),
            veths: links.iter().filter(|(_, n)| n.starts_with("veth")).map(|(i, _)| *i).collect(),
            host_ips: vec![],
        }
    }

    fn hooks(p: &Plan) -> Vec<(u32, Vec<Hook>)> {
        p.hooks.iter().map(|(i, h)| (*i, h.iter().copied().collect())).collect()
    }

    #[test]
    fn pods_are_enforced_on_the_interface_their_address_is_routed_to() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, EP_INGRESS_ISOLATED), pod("b", "10.0.0.2", 8, 0)]);
        let i =
            ifaces(&[(1, "lo"), (2, "eth0"), (10, "veth-a"), (11, "veth-b")], &[("10.0.0.1", 10), ("10.0.0.2", 11)]);
        let p = plan(&c, &i, &HostInterfaces::All, &[]);
        let ips: BTreeMap<IpPrefix, IpInfo> = addresses(&c, &p.local_addresses()).collect();
        assert_eq!(p.entries[&10], Endpoint { class: 7, flags: EP_INGRESS_ISOLATED, parent: 0 });
        assert_eq!(p.entries[&11], Endpoint { class: 8, flags: 0, parent: 0 });
        assert_eq!(p.endpoints[0].state, Enforcement::Enforced);
        assert_eq!(p.endpoints[0].interface.as_deref(), Some("veth-a"));
        assert!(p.endpoints[0].ingress_isolated && !p.endpoints[0].egress_isolated);
        let pod = vec![Hook::ToPod, Hook::FromPod];
        assert_eq!(hooks(&p), vec![(2, vec![Hook::HostEgress]), (10, pod.clone()), (11, pod)], "loopback gets nothing");
        // The pod's own address names its interface, for DNATed traffic.
        assert_eq!(ips[&IpPrefix::from_net(ipnet::IpNet::from(ip("10.0.0.1")))].ifindex, 10);
    }

    #[test]
    fn unrouted_and_conflicting_pods_get_no_entry() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, 0), pod("b", "10.0.0.2", 8, 0), pod("c", "10.0.0.3", 9, 0)]);
        let i = ifaces(&[(10, "veth-a")], &[("10.0.0.1", 10), ("10.0.0.2", 10)]);
        let p = plan(&c, &i, &HostInterfaces::Named(vec![]), &[]);
        let ips: BTreeMap<IpPrefix, IpInfo> = addresses(&c, &p.local_addresses()).collect();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[&10].class, 7, "the first pod keeps the interface");
        assert_eq!(p.endpoints[1].state, Enforcement::Conflict { ifindex: 10 });
        assert_eq!(p.endpoints[2].state, Enforcement::NoInterface);
        assert_eq!(p.endpoints[2].state.kind(), "no-interface");
        let b = IpPrefix::from_net(ipnet::IpNet::from(ip("10.0.0.2")));
        assert_eq!(ips[&b].ifindex, 0, "a conflicting pod's address does not lead to another pod's endpoint");
    }

    #[test]
    fn strict_mode_holds_unknown_pod_interfaces_closed() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, 0)]);
        let i = ifaces(&[(2, "eth0"), (10, "veth-a"), (12, "veth-new")], &[("10.0.0.1", 10)]);
        let p = plan(&c, &i, &HostInterfaces::Named(vec!["eth0".into()]), &["veth".into()]);
        assert_eq!(p.entries[&12], Endpoint { class: 0, flags: EP_PENDING, parent: 0 });
        assert_eq!(p.entries[&10].flags & EP_PENDING, 0);
        assert_eq!(p.pending, vec!["veth-new".to_string()]);
        assert_eq!(
            hooks(&p),
            vec![
                (2, vec![Hook::HostEgress]),
                (10, vec![Hook::ToPod, Hook::FromPod]),
                (12, vec![Hook::ToPod, Hook::FromPod])
            ]
        );
    }

    #[test]
    fn holding_closes_only_the_named_identities_and_says_so() {
        let c = compiled(vec![pod("a", "10.0.0.1", 7, EP_INGRESS_ISOLATED), pod("b", "10.0.0.2", 8, 0)]);
        let i = ifaces(&[(10, "veth-a"), (11, "veth-b")], &[("10.0.0.1", 10), ("10.0.0.2", 11)]);
        let mut p = plan(&c, &i, &HostInterfaces::All, &[]);
        p.hold_closed(&Hold::Classes([7].into()), "policy map full");
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
        assert!(p.entries.is_empty() && p.hooks.is_empty());
        assert_eq!(p.endpoints[0].state, Enforcement::NoInterface);
    }

    #[test]
    fn a_routed_veth_gets_the_pod_hooks_before_its_pod_is_known() {
        // The CNI made the veth and its route; the pod's manifest has not
        // come. The hooks go on now (no endpoint entry: nothing judged
        // there yet), so the manifest costs no attach. A route to a node
        // interface that is no veth (a gateway on eth0) gets none.
        let c = compiled(vec![]);
        let i = ifaces(&[(2, "eth0"), (12, "veth-new"), (13, "veth-bare")], &[("10.0.0.9", 12), ("10.0.0.1", 2)]);
        let p = plan(&c, &i, &HostInterfaces::Named(vec!["eth0".into()]), &[]);
        assert!(p.entries.is_empty() && p.pending.is_empty(), "nothing is enforced or held");
        assert_eq!(hooks(&p), vec![(2, vec![Hook::HostEgress]), (12, vec![Hook::ToPod, Hook::FromPod])]);
        // Its pod arrives: the same hooks, and now an endpoint entry.
        let c = compiled(vec![pod("new", "10.0.0.9", 7, EP_INGRESS_ISOLATED)]);
        let q = plan(&c, &i, &HostInterfaces::Named(vec!["eth0".into()]), &[]);
        assert_eq!(q.hooks, p.hooks);
        assert_eq!(q.entries[&12].class, 7);
        // Every other node interface gets the host hook; a pod interface
        // has its pod's hooks only (they judge DNATed traffic to it).
        let p = plan(&compiled(vec![]), &i, &HostInterfaces::All, &[]);
        assert_eq!(p.hooks[&12], [Hook::ToPod, Hook::FromPod].into());
        assert_eq!(p.hooks[&13], [Hook::HostEgress].into());
    }
}
