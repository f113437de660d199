//! Cells. A cell is the most specific ipBlock CIDR (or except) that
//! contains an address; each family's /0 is the "world" cell. "Is this
//! address in the ipBlock, outside its excepts" becomes "is its cell inside
//! the CIDR, outside the excepts", answered once per identity at compile
//! time instead of per packet.

use crate::policy::model::{ClusterPeer, ClusterPolicy, Peer, Policy};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

/// The cells of a set of policies, and which one an address falls in.
pub(super) struct Cells {
    /// Every cell: each ipBlock CIDR and except, and both /0s.
    pub all: BTreeSet<IpNet>,
    /// (family is v4, prefix length) -> cells of that length, longest first.
    by_len: Vec<(bool, u8, HashSet<IpNet>)>,
}

impl Cells {
    pub fn new<'a>(
        policies: impl IntoIterator<Item = &'a Policy>,
        cluster: impl IntoIterator<Item = &'a ClusterPolicy>,
    ) -> Cells {
        let mut all: BTreeSet<IpNet> = [root(true), root(false)].into();
        // ClusterNetworkPolicy `networks` peers are cells too.
        for p in cluster {
            for rule in p.ingress.iter().chain(&p.egress) {
                for peer in &rule.peers {
                    if let ClusterPeer::Networks(nets) = peer {
                        all.extend(nets.iter().map(IpNet::trunc));
                    }
                }
            }
        }
        for p in policies {
            for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
                for peer in &rule.peers {
                    if let Peer::IpBlock { cidr, except } = peer {
                        all.insert(*cidr);
                        all.extend(except.iter().copied());
                    }
                }
            }
        }
        let mut map: BTreeMap<(bool, u8), HashSet<IpNet>> = BTreeMap::new();
        for c in &all {
            map.entry((c.addr().is_ipv4(), c.prefix_len())).or_default().insert(*c);
        }
        let mut by_len: Vec<_> = map.into_iter().map(|((v4, len), set)| (v4, len, set)).collect();
        by_len.sort_by_key(|c| std::cmp::Reverse(c.1));
        Cells { all, by_len }
    }

    /// The cell an address falls in.
    pub fn of(&self, ip: IpAddr) -> IpNet {
        for (v4, len, set) in &self.by_len {
            if *v4 != ip.is_ipv4() {
                continue;
            }
            if let Ok(net) = IpNet::new(ip, *len) {
                let net = net.trunc();
                if set.contains(&net) {
                    return net;
                }
            }
        }
        unreachable!("both /0 cells are always present")
    }
}

fn root(v4: bool) -> IpNet {
    if v4 { "0.0.0.0/0".parse().expect("cidr") } else { "::/0".parse().expect("cidr") }
}
