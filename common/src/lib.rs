//! Map keys, map values and the verdict event record shared by the kernel
//! classifier and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on
//! the layout byte for byte; `const` assertions below keep them in step.
//! Multi-byte fields inside LPM keys are big-endian byte arrays, because the
//! kernel's LPM trie matches prefixes bit by bit from the first byte.
#![no_std]

use core::mem::{offset_of, size_of};

/// Bumped whenever a map's key or value layout changes, so an agent never
/// adopts pinned maps (or runs a program against maps) it does not understand.
pub const LAYOUT_VERSION: u32 = 2;

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

/// Prefix length of a [`PolicyKey`] entry matching any protocol and port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Prefix length of an entry matching one protocol, any port.
pub const POLICY_PREFIX_PROTO: u32 = 80;
/// Prefix length of an entry matching one protocol and one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Value of the policy trie: which rule the entry came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyValue {
    /// Id of the allowing rule (see the agent's rule catalog).
    pub rule: u32,
}

/// Endpoint flag: some policy selects the pod for ingress.
pub const EP_INGRESS_ISOLATED: u32 = 1 << 0;
/// Endpoint flag: some policy selects the pod for egress.
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
/// Endpoint flag: would-be drops pass and are reported as AUDIT.
pub const EP_AUDIT: u32 = 1 << 2;
/// Endpoint flag (strict mode): a new pod interface whose pod and policy
/// are not known yet; everything but link-local plumbing is dropped.
pub const EP_PENDING: u32 = 1 << 3;

/// Value of the endpoint map, keyed by the host-side interface index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Identity of the pod behind the interface.
    pub identity: u32,
    /// `EP_*` flags.
    pub flags: u32,
}

/// Key of the connection tracking table: one entry per flow per local
/// endpoint, written from the endpoint's point of view so both hooks of the
/// interface find it without normalising the tuple.
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

/// Verdict stored with a tracked flow: the flow was allowed.
pub const CT_ALLOWED: u8 = 1;
/// Verdict stored with a tracked flow: policy denies it but audit let it pass.
pub const CT_AUDITED: u8 = 2;
/// Verdict stored with a tracked flow: the pod sent it to a Service cluster
/// IP; egress is judged after DNAT, on the packets the agent marks.
pub const CT_DEFERRED: u8 = 3;

/// Value of the connection tracking table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// Last time a packet of the flow was seen (bpf_ktime_get_ns), refreshed
    /// at most once a second to keep the hot path write-free.
    pub last_seen_ns: u64,
    /// Policy revision the verdict was taken under; a stale one is re-decided.
    pub revision: u32,
    /// Rule that allowed the flow (0: not isolated).
    pub rule: u32,
    /// Direction of the flow's first packet ([`DIR_INGRESS`]/[`DIR_EGRESS`]).
    pub origin: u8,
    /// [`CT_ALLOWED`], [`CT_AUDITED`] or [`CT_DEFERRED`].
    pub verdict: u8,
    /// Always zero.
    pub _pad: [u8; 6],
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
    /// Always zero.
    pub _pad: u32,
}

/// Event verdict: the packet passed because policy allows it.
pub const VERDICT_ALLOWED: u8 = 1;
/// Event verdict: the packet was dropped.
pub const VERDICT_DROPPED: u8 = 2;
/// Event verdict: policy would drop it; audit mode let it pass.
pub const VERDICT_AUDIT: u8 = 3;

/// Reason: the pod is not isolated in this direction.
pub const REASON_NOT_ISOLATED: u8 = 1;
/// Reason: a rule allows it.
pub const REASON_RULE: u8 = 2;
/// Reason: the pod is isolated and no rule allows it.
pub const REASON_NO_RULE: u8 = 3;
/// Reason: the packet could not be parsed.
pub const REASON_MALFORMED: u8 = 4;
/// Reason: reply or later packet of a tracked flow.
pub const REASON_TRACKED: u8 = 5;
/// Reason: ICMP error about a tracked flow.
pub const REASON_RELATED: u8 = 6;
/// Reason: strict mode, the pod's policy is not in the kernel yet.
pub const REASON_PENDING: u8 = 7;

/// Event flag: the flow was already tracked and a policy change re-decided it.
pub const EVF_REDECIDED: u8 = 1 << 0;
/// Event flag: the packet is a non-first IP fragment.
pub const EVF_FRAGMENT: u8 = 1 << 1;

/// One verdict event, written by the classifier into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// bpf_ktime_get_ns() of the packet.
    pub ts_ns: u64,
    /// Host-side interface of the local pod.
    pub ifindex: u32,
    /// Identity of the local pod.
    pub local_identity: u32,
    /// Identity of the peer address (0: unknown).
    pub peer_identity: u32,
    /// Deciding rule (0: none).
    pub rule: u32,
    /// Packets this event stands for (drops are rate limited per flow).
    pub count: u32,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `REASON_*`.
    pub reason: u8,
    /// TCP flags byte of the packet (0 for other protocols).
    pub tcp_flags: u8,
    /// `EVF_*` flags.
    pub flags: u8,
    /// Always zero.
    pub _pad: [u8; 1],
    /// Policy revision in force when the packet was judged.
    pub revision: u32,
    /// Always zero.
    pub _pad2: u32,
}

/// Indexes into the per-CPU counter array.
pub mod stat {
    /// Packets allowed (any reason).
    pub const ALLOWED: u32 = 0;
    /// Packets dropped because no rule allows them.
    pub const DROPPED_NO_RULE: u32 = 1;
    /// Packets dropped as malformed.
    pub const DROPPED_MALFORMED: u32 = 2;
    /// Packets that audit mode let pass.
    pub const AUDITED: u32 = 3;
    /// Events the ring buffer had no room for.
    pub const EVENTS_LOST: u32 = 4;
    /// Events written.
    pub const EVENTS_SENT: u32 = 5;
    /// Drop events folded into a later event by per-flow suppression.
    pub const EVENTS_SUPPRESSED: u32 = 6;
    /// New flows entered into connection tracking.
    pub const FLOWS_NEW: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
    /// Each counter's name (status keys, metric names), by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets_allowed",
        "packets_dropped_no_rule",
        "packets_dropped_malformed",
        "packets_audited",
        "events_lost",
        "events_sent",
        "events_suppressed",
        "flows_new",
    ];
}

/// Map names, as pinned under the agent's bpffs directory.
pub mod maps {
    /// ifindex -> [`super::Endpoint`].
    pub const ENDPOINTS: &str = "PALISADE_ENDPOINTS";
    /// LPM [`super::IpKey`] -> [`super::IpInfo`]: CIDRs shorter than a
    /// single address.
    pub const IPS: &str = "PALISADE_IPS";
    /// Hash [`super::IpKey`] -> [`super::IpInfo`]: single addresses (pods,
    /// Services, nodes). Looked up first: a full-length match is always the
    /// longest, and a hash lookup costs a fraction of a trie walk.
    pub const HOSTS: &str = "PALISADE_HOSTS";
    /// LPM [`super::PolicyKey`] -> [`super::PolicyValue`].
    pub const POLICY: &str = "PALISADE_POLICY";
    /// LRU [`super::CtKey`] -> [`super::CtEntry`].
    pub const CONNTRACK: &str = "PALISADE_CT";
    /// LRU [`super::SuppressKey`] -> [`super::SuppressEntry`].
    pub const SUPPRESS: &str = "PALISADE_SUPPRESS";
    /// LRU [`super::FragKey`] -> [`super::FragPorts`].
    pub const FRAGS: &str = "PALISADE_FRAGS";
    /// Array of one [`super::Config`].
    pub const CONFIG: &str = "PALISADE_CONFIG";
    /// Per-CPU array of u64 counters, see [`super::stat`].
    pub const STATS: &str = "PALISADE_STATS";
    /// Ring buffer of [`super::Event`].
    pub const EVENTS: &str = "PALISADE_EVENTS";
}

/// Program names in the object file.
pub mod programs {
    /// Attached to the host veth's TC ingress: traffic leaving the pod.
    pub const FROM_POD: &str = "palisade_from_pod";
    /// Attached to the host veth's TC egress: traffic entering the pod.
    pub const TO_POD: &str = "palisade_to_pod";
    /// Attached to the TC egress of the node's other interfaces: judges the
    /// egress of pod traffic DNATed to a backend elsewhere.
    pub const HOST_EGRESS: &str = "palisade_host_egress";
}

/// Map sizes: the kernel allocates hash tables up front, so these bound
/// memory; the agent reports fill levels against them.
pub mod capacity {
    /// Local endpoints on one node.
    pub const ENDPOINTS: u32 = 16 * 1024;
    /// CIDR entries (ipBlocks and their exceptions).
    pub const IPS: u32 = 512 * 1024;
    /// Single addresses (every pod and Service in the cluster).
    pub const HOSTS: u32 = 512 * 1024;
    /// Policy entries for the node's identities.
    pub const POLICY: u32 = 1024 * 1024;
    /// Tracked flows.
    pub const CONNTRACK: u32 = 256 * 1024;
    /// Flows with a recent drop event.
    pub const SUPPRESS: u32 = 64 * 1024;
    /// First fragments in flight.
    pub const FRAGS: u32 = 8 * 1024;
    /// Ring buffer bytes (power of two, multiple of the page size).
    pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;
}

const _: () = {
    assert!(size_of::<IpKey>() == 17);
    assert!(size_of::<IpInfo>() == 12);
    assert!(size_of::<PolicyKey>() == 12);
    assert!(POLICY_PREFIX_FULL as usize == size_of::<PolicyKey>() * 8);
    assert!(POLICY_PREFIX_PROTO as usize == offset_of!(PolicyKey, port) * 8);
    assert!(POLICY_PREFIX_ANY_PROTO as usize == offset_of!(PolicyKey, protocol) * 8);
    assert!(size_of::<PolicyValue>() == 4);
    assert!(size_of::<Endpoint>() == 8);
    assert!(size_of::<CtKey>() == 44);
    assert!(offset_of!(CtKey, local) == 8);
    assert!(size_of::<CtEntry>() == 24);
    assert!(size_of::<SuppressEntry>() == 16);
    assert!(size_of::<FragKey>() == 40);
    assert!(size_of::<FragPorts>() == 8);
    assert!(size_of::<Config>() == 24);
    assert!(size_of::<Event>() == 80);
    assert!(offset_of!(Event, src) == 28);
    assert!(offset_of!(Event, family) == 64);
    assert!(offset_of!(Event, revision) == 72);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are plain-old-data `repr(C)` structs whose padding
    // is explicit, so any byte pattern is a valid value.
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for IpInfo {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for SuppressEntry {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Event {}
}
