//! What the kernel classifier and the agent share: map keys and values
//! ([`keys`]), the verdict event record ([`event`]), the per-packet policy
//! decision ([`decide`]), and map and program names.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on
//! the layout byte for byte; `const` assertions next to each type keep them
//! in step. Multi-byte fields inside LPM keys are big-endian byte arrays,
//! because the kernel's LPM trie matches prefixes bit by bit from the first
//! byte.
#![cfg_attr(not(test), no_std)]

pub mod decide;
pub mod event;
pub mod keys;
#[cfg(feature = "user")]
mod user;

pub use decide::{Decision, PolicyMaps, decide, peer_info};
pub use event::*;
pub use keys::*;

/// Bumped whenever a map's key or value layout, or which map holds which
/// entries, changes, so an agent never adopts pinned maps (or runs a
/// program against maps) it does not understand.
pub const LAYOUT_VERSION: u32 = 9;

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
    /// Drops with no event of their own because their source spent its
    /// event budget (counted in its next event's `folded`).
    pub const EVENTS_FOLDED: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
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
        "events_folded",
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
    /// LPM [`super::PolicyKey`] -> [`super::PolicyValue`]: entries shorter
    /// than a full key (any port, port ranges, any protocol).
    pub const POLICY: &str = "PALISADE_POLICY";
    /// Hash [`super::PolicyKey`] -> [`super::PolicyValue`]: entries of one
    /// protocol and port (full keys). Looked up first, as `HOSTS` is: a
    /// full-length match is always the longest, and a hash lookup or write
    /// costs a fraction of the trie's.
    pub const POLICY_PORTS: &str = "PALISADE_POLICY_PORTS";
    /// LRU [`super::CtKey4`] -> [`super::CtEntry`]: IPv4 flows.
    pub const CONNTRACK4: &str = "PALISADE_CT4";
    /// LRU [`super::CtKey`] -> [`super::CtEntry`]: IPv6 flows.
    pub const CONNTRACK6: &str = "PALISADE_CT6";
    /// LRU [`super::SuppressKey`] -> [`super::SuppressEntry`].
    pub const SUPPRESS: &str = "PALISADE_SUPPRESS";
    /// LRU [`super::SourceKey`] -> [`super::SourceBudget`].
    pub const SOURCES: &str = "PALISADE_SOURCES";
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
    /// Socket filter netfilter runs (xt_bpf) in mangle INPUT on deferred
    /// packets: judges the egress of pod traffic DNATed to the node itself.
    pub const NF_LOCAL: &str = "palisade_nf_local";
    /// Socket filter in mangle FORWARD on DNATed packets (original
    /// direction): judges the ingress of the local pod they go to against
    /// the real client, before any SNAT.
    pub const NF_FORWARD: &str = "palisade_nf_forward";
    /// Socket filter in mangle FORWARD on DNATed packets (reply
    /// direction): judges the replies of the local pod that served them.
    pub const NF_REPLY: &str = "palisade_nf_reply";
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
    /// Policy entries for the node's identities, in each policy map.
    pub const POLICY: u32 = 1024 * 1024;
    /// Tracked flows, per address family.
    pub const CONNTRACK: u32 = 256 * 1024;
    /// Flows with a recent drop event.
    pub const SUPPRESS: u32 = 64 * 1024;
    /// Sources with a recent drop event.
    pub const SOURCES: u32 = 16 * 1024;
    /// First fragments in flight.
    pub const FRAGS: u32 = 8 * 1024;
    /// Ring buffer bytes (power of two, multiple of the page size).
    pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;
}
