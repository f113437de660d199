//! Keys and values of the kernel maps, and the numbers they hold.

use core::mem::{offset_of, size_of};
use core::net::IpAddr;

/// Directions in NetworkPolicy terms, seen from the local pod.
pub const DIR_INGRESS: u8 = 0;
/// Traffic leaving the local pod.
pub const DIR_EGRESS: u8 = 1;

/// Address families as stored in keys (IPv4 addresses use the first 4 bytes).
pub const FAMILY_V4: u8 = 4;
/// IPv6.
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the classifier knows.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// The wildcard peer identity in a [`PolicyKey`]: any source or destination.
pub const PEER_ANY: u32 = 0;

/// Direction bit of a policy entry keyed by the peer's namespace (its peer
/// field a namespace number, [`IpInfo::namespace`]), not its identity: a
/// rule admitting every pod of some namespaces costs an entry per
/// namespace, not one per pod identity in them.
pub const DIR_BY_NAMESPACE: u8 = 1 << 7;

/// Key of the IP-to-identity maps: a family byte then the address, so an
/// IPv6 prefix never covers IPv4 addresses. In the LPM trie the prefix
/// length is 8 + CIDR bits; single addresses go in the exact-match hash map,
/// with the bytes past an IPv4 address zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Address bytes in network order; IPv4 uses the first four.
    pub addr: [u8; 16],
}

impl IpKey {
    /// The key of a single address.
    pub const fn from_ip(ip: IpAddr) -> IpKey {
        let (family, addr) = family_addr(ip);
        IpKey { family, addr }
    }
}

/// The family byte and 16 address bytes of an address, as keys hold them.
pub const fn family_addr(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let mut a = [0u8; 16];
            a[0] = o[0];
            a[1] = o[1];
            a[2] = o[2];
            a[3] = o[3];
            (FAMILY_V4, a)
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    }
}

/// Bits of an [`IpKey`] taken by the family byte.
pub const IP_KEY_FAMILY_BITS: u32 = 8;

/// The LPM prefix length of a single address of `family`.
pub const fn ip_key_full_len(family: u8) -> u32 {
    IP_KEY_FAMILY_BITS + if family == FAMILY_V4 { 32 } else { 128 }
}

/// Map flag: allocate hash entries as they are inserted (the kernel's
/// BPF_F_NO_PREALLOC), so a large capacity costs memory only when used.
pub const MAP_NO_PREALLOC: u32 = 1;

/// Value of the IP-to-identity maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// Peer identity: what policy rules are compiled against.
    pub identity: u32,
    /// `IP_*` flags.
    pub flags: u32,
    /// For a local pod's address: the host interface it is enforced on.
    pub ifindex: u32,
    /// For a pod's address: its namespace's number (0: none), which the
    /// entries of rules admitting whole namespaces are keyed by.
    pub namespace: u32,
}

/// IP flag: a Service cluster IP. kube-proxy DNATs traffic to it after the
/// source pod's egress hook, so egress is judged where the backend is known.
pub const IP_SERVICE: u32 = 1 << 0;

/// Key of the policy LPM trie. A rule's entry is a prefix of it: the peer
/// and everything before it are always complete; protocol and port are
/// cut off where the rule does not restrict them, and port ranges become a
/// handful of power-of-two prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Identity of the local (selected) pod, big-endian.
    pub local: [u8; 4],
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// Peer identity, big-endian; [`PEER_ANY`] for rules without peers.
    pub peer: [u8; 4],
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port, big-endian.
    pub port: [u8; 2],
}

impl PolicyKey {
    /// The full key of a flow: multi-byte fields go in big-endian.
    #[inline(always)]
    pub const fn new(local: u32, direction: u8, peer: u32, protocol: u8, port: u16) -> PolicyKey {
        PolicyKey {
            local: local.to_be_bytes(),
            direction,
            peer: peer.to_be_bytes(),
            protocol,
            port: port.to_be_bytes(),
        }
    }
}

/// Prefix length of a [`PolicyKey`] entry matching any protocol and port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Prefix length of an entry matching one protocol, any port.
pub const POLICY_PREFIX_PROTO: u32 = 80;
/// Prefix length of an entry matching one protocol and one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Value of the policy trie: the verdict and the rule it came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    /// Id of the deciding rule (see the agent's rule catalog); 0 on a
    /// tiered endpoint's entry that restores the default (NetworkPolicy's
    /// implicit deny, or the default allow).
    pub rule: u32,
    /// `POLICY_*` flags.
    pub flags: u32,
}

impl PolicyValue {
    /// An entry that allows, by `rule`.
    pub const fn allow(rule: u32) -> PolicyValue {
        PolicyValue { rule, flags: 0 }
    }

    /// An entry that denies, by `rule` (0: NetworkPolicy's implicit deny).
    pub const fn deny(rule: u32) -> PolicyValue {
        PolicyValue { rule, flags: POLICY_DENY }
    }

    /// Whether the entry denies.
    #[inline(always)]
    pub const fn denies(&self) -> bool {
        self.flags & POLICY_DENY != 0
    }
}

/// Policy entry flag: the entry denies (a ClusterNetworkPolicy Deny, or a
/// tiered endpoint's NetworkPolicy implicit deny); without it, it allows.
pub const POLICY_DENY: u32 = 1 << 0;

/// Endpoint flag: some policy selects the pod for ingress.
pub const EP_INGRESS_ISOLATED: u32 = 1 << 0;
/// Endpoint flag: some policy selects the pod for egress.
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
/// Endpoint flag: would-be drops pass and are reported as AUDIT.
pub const EP_AUDIT: u32 = 1 << 2;
/// Endpoint flag (strict mode): a new pod interface whose pod and policy
/// are not known yet; everything but link-local plumbing is dropped.
pub const EP_PENDING: u32 = 1 << 3;
/// Endpoint flag: some ClusterNetworkPolicy selects the pod for ingress:
/// its policy entries are looked up even when no NetworkPolicy isolates
/// it, and they hold the whole tiered verdict (allow or deny).
pub const EP_INGRESS_TIERED: u32 = 1 << 4;
/// Endpoint flag: the same for egress.
pub const EP_EGRESS_TIERED: u32 = 1 << 5;
/// Endpoint flag: the class's parent holds no entry shorter than a full
/// key (none in the POLICY trie), so its lookups skip the trie. Set from
/// the entries the compiler gives the parent; a parent is a class no
/// ClusterNetworkPolicy selects, so its entries all allow and one skipped
/// could only have allowed.
pub const EP_PARENT_NO_SHORT: u32 = 1 << 6;
/// Endpoint flag: the parent holds no any-peer entry, so its wildcard
/// lookup is skipped (same conditions).
pub const EP_PARENT_NO_ANY: u32 = 1 << 7;
/// Endpoint flag: the class holds no entry keyed by namespace
/// ([`DIR_BY_NAMESPACE`]), so that lookup of its own is skipped. A class
/// holds none in a direction a ClusterNetworkPolicy selects it for (its
/// tiers resolve per peer), and those it holds all allow.
pub const EP_NO_NAMESPACE: u32 = 1 << 8;
/// Endpoint flag: the same for the class's parent.
pub const EP_PARENT_NO_NAMESPACE: u32 = 1 << 9;
/// The flags that only skip lookups: an endpoint whose entry changes in
/// these alone is judged safely by either (what they skip could only
/// allow), so sync does not hold it closed while addresses move.
pub const EP_SKIPS: u32 = EP_PARENT_NO_SHORT | EP_PARENT_NO_ANY | EP_NO_NAMESPACE | EP_PARENT_NO_NAMESPACE;

/// Value of the endpoint map, keyed by the host-side interface index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Policy class of the pod behind the interface: the local field of
    /// the policy entries that judge its traffic (pods whose policies are
    /// alike share a class, and so their entries).
    pub class: u32,
    /// `EP_*` flags.
    pub flags: u32,
    /// The class whose entries judge what the class's own entries do not
    /// (0: none): a class selected by another class's NetworkPolicies and
    /// more holds only the entries of the more.
    pub parent: u32,
}

/// A flow's key, as the pipeline and drop suppression use it and as the
/// IPv6 connection tracking table holds it (IPv4 flows: [`CtKey4`]): one
/// entry per flow per local endpoint, written from the endpoint's point of
/// view so both hooks of the interface find it without normalising the
/// tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Host-side interface of the local pod.
    pub ifindex: u32,
    /// Port of the local pod (ICMP echo: the identifier).
    pub local_port: u16,
    /// Port of the peer (ICMP echo: the identifier).
    pub remote_port: u16,
    /// Local pod address.
    pub local: [u8; 16],
    /// Peer address.
    pub remote: [u8; 16],
    /// IP protocol number.
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// Key of the IPv4 connection tracking table: a [`CtKey`] of an IPv4
/// flow, with only the addresses' four bytes. A hash table hashes its
/// whole key on every lookup (jhash, about a third of a tracked packet's
/// cost at 44 bytes), so IPv4 flows get a table of their own, keyed by 20.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub ifindex: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub local: [u8; 4],
    pub remote: [u8; 4],
    pub protocol: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The key of an IPv4 flow in its own table.
    #[inline(always)]
    pub fn v4(&self) -> CtKey4 {
        let (l, r) = (&self.local, &self.remote);
        CtKey4 {
            ifindex: self.ifindex,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local: [l[0], l[1], l[2], l[3]],
            remote: [r[0], r[1], r[2], r[3]],
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

impl CtKey4 {
    /// The same flow as the pipeline keys it.
    pub fn wide(&self) -> CtKey {
        let mut key = CtKey {
            ifindex: self.ifindex,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local: [0; 16],
            remote: [0; 16],
            protocol: self.protocol,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        key.local[..4].copy_from_slice(&self.local);
        key.remote[..4].copy_from_slice(&self.remote);
        key
    }
}

/// What the pod hooks' conntrack fast path leaves in the skb's `cb[0]`
/// when it looked the packet's key up and found no entry, so the pipeline
/// after it does not look the same key up again. A distinctive value, and
/// written (this or 0) on every packet that goes on to the pipeline, so
/// whatever else was left in `cb` never reads as a miss.
pub const CB_FAST_MISSED: u32 = 0x7061_6c31;

/// Verdict stored with a tracked flow: the flow was allowed.
pub const CT_ALLOWED: u8 = 1;
/// Verdict stored with a tracked flow: policy denies it but audit let it pass.
pub const CT_AUDITED: u8 = 2;
/// Verdict stored with a tracked flow: the pod sent it to a Service cluster
/// IP; egress is judged after DNAT, on the packets the agent marks.
pub const CT_DEFERRED: u8 = 3;
/// Verdict stored with a tracked flow: the netfilter hooks judged it
/// against the real peer before kube-proxy SNATed it to a node address
/// (the key holds that address); its replies leaving the pod are judged
/// there again, after netfilter has undone the SNAT.
pub const CT_UPSTREAM: u8 = 4;
/// Verdict stored with a flow policy denies, for the drop-event interval
/// after its last event: its next packets in the denied direction drop on
/// the fast path's one lookup, counted in the entry (`suppressed`) for its
/// next event. In every other respect it stands for no entry: nothing
/// passes on it, and a packet it does not drop is judged as a new flow.
pub const CT_DENIED: u8 = 5;

/// Value of the connection tracking table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// Last time a packet of the flow was seen (the programs' clock, see
    /// [`Config::tick_ns`]), refreshed at most once a second to keep the
    /// hot path write-free.
    pub last_seen_ns: u64,
    /// Policy revision the verdict was taken under; a stale one is re-decided.
    pub revision: u32,
    /// Rule that decided the flow (0: not isolated, or no rule).
    pub rule: u32,
    /// Direction of the flow's first packet ([`DIR_INGRESS`]/[`DIR_EGRESS`]);
    /// of a [`CT_DENIED`] one, the direction denied.
    pub origin: u8,
    /// [`CT_ALLOWED`], [`CT_AUDITED`], [`CT_DEFERRED`], [`CT_UPSTREAM`] or
    /// [`CT_DENIED`].
    pub verdict: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// [`CT_DENIED`]: packets dropped since the flow's last event (its
    /// `last_seen_ns`), without an event of their own.
    pub suppressed: u32,
}

/// Key of the drop-event suppression table (same tuple as connection
/// tracking, seen from the endpoint).
pub type SuppressKey = CtKey;

/// Value of the drop-event suppression table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuppressEntry {
    /// When the last event for this flow was emitted.
    pub last_event_ns: u64,
    /// Packets dropped since then without an event of their own.
    pub suppressed: u32,
    /// Always zero.
    pub _pad: u32,
}

/// Key of the per-source drop event budget: for a pod's egress, the pod
/// (its host interface index in `addr[..4]`, family 0: forged source
/// addresses share it); for its ingress, the packet's source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Value of the per-source drop event budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceBudget {
    /// Start of the current interval.
    pub window_ns: u64,
    /// Drop events emitted in the current interval.
    pub events: u32,
    /// Drops folded since this source's last event (carried by the next).
    pub folded: u32,
}

/// Key of the fragment table: enough to tie a non-first fragment to the
/// ports its first fragment carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// IP identification (IPv4: 16 bits, IPv6: 32 bits).
    pub id: u32,
    /// IPv4: the protocol; IPv6: the fragment header's next header, which
    /// every fragment of a packet carries alike.
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// Value of the fragment table: what the first fragment's L4 header said.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragPorts {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// L4 protocol (IPv6 extension headers may follow the fragment header).
    pub protocol: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Config flag: emit an event for the first packet of every allowed flow.
pub const CFG_LOG_NEW_FLOWS: u32 = 1 << 0;

/// The single entry of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Bumped by the agent after every map change; tracked flows decided
    /// under an older revision are decided again.
    pub revision: u32,
    /// `CFG_*` flags.
    pub flags: u32,
    /// Minimum nanoseconds between two drop events of one flow.
    pub drop_event_interval_ns: u64,
    /// skb mark bit on packets whose egress verdict waits for DNAT.
    pub defer_mark: u32,
    /// Most drop events one source address gets per interval (0: no
    /// bound); drops past it are folded into its next event.
    pub drop_event_budget: u32,
    /// skb mark bit the netfilter hooks put on DNATed packets whose
    /// ingress they judged (0: no netfilter hooks).
    pub judged_mark: u32,
    /// Nanoseconds per kernel tick, the resolution of the coarse
    /// monotonic clock: the programs' clock is jiffies times this, a load
    /// where the coarse clock is a helper call (0: not written yet, the
    /// coarse clock itself).
    pub tick_ns: u32,
}

const _: () = {
    assert!(size_of::<IpKey>() == 17);
    assert!(size_of::<IpInfo>() == 16);
    assert!(size_of::<PolicyKey>() == 12);
    assert!(POLICY_PREFIX_FULL as usize == size_of::<PolicyKey>() * 8);
    assert!(POLICY_PREFIX_PROTO as usize == offset_of!(PolicyKey, port) * 8);
    assert!(POLICY_PREFIX_ANY_PROTO as usize == offset_of!(PolicyKey, protocol) * 8);
    assert!(size_of::<PolicyValue>() == 8);
    assert!(size_of::<Endpoint>() == 12);
    assert!(size_of::<CtKey>() == 44);
    assert!(offset_of!(CtKey, local) == 8);
    assert!(size_of::<CtKey4>() == 20);
    assert!(size_of::<CtEntry>() == 24);
    assert!(size_of::<SuppressEntry>() == 16);
    assert!(size_of::<SourceKey>() == 20);
    assert!(size_of::<SourceBudget>() == 16);
    assert!(size_of::<FragKey>() == 40);
    assert!(size_of::<FragPorts>() == 8);
    assert!(size_of::<Config>() == 32);
};
