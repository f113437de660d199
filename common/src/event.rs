//! The verdict event the classifier writes into the ring buffer.

use core::mem::{offset_of, size_of};

/// Event verdict: the packet passed because policy allows it.
pub const VERDICT_ALLOWED: u8 = 1;
/// Event verdict: the packet was dropped.
pub const VERDICT_DROPPED: u8 = 2;
/// Event verdict: policy would drop it; audit mode let it pass.
pub const VERDICT_AUDIT: u8 = 3;

/// Reason: the pod is not isolated in this direction.
pub const REASON_NOT_ISOLATED: u8 = 1;
/// Reason: a rule decides it (allows it; or, as a drop, a
/// ClusterNetworkPolicy Deny rule).
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
/// Reason: the packet left a pod from an address that is not the pod's.
pub const REASON_SPOOFED: u8 = 8;
/// Reason: a packet deferred to a Service left the node, or reached a pod,
/// still addressed to the Service (no endpoint translated it).
pub const REASON_UNTRANSLATED: u8 = 9;
/// Reason: a packet deferred to a Service reached a hook with no way to
/// tell which local pod sent it.
pub const REASON_UNATTRIBUTED: u8 = 10;

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
    /// Policy class of the local pod.
    pub local_class: u32,
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
    /// Drops of other flows from the same source folded (no event of their
    /// own: the per-source budget was spent) since its previous event.
    pub folded: u32,
}

const _: () = {
    assert!(size_of::<Event>() == 80);
    assert!(offset_of!(Event, src) == 28);
    assert!(offset_of!(Event, family) == 64);
    assert!(offset_of!(Event, revision) == 72);
    assert!(offset_of!(Event, folded) == 76);
};
