//! The verdict event in Kubernetes terms, and how a kernel record becomes one.

use crate::policy::{Direction, PolicyRef};
use ipnet::IpNet;
use palisade_common::{
    Event, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, REASON_MALFORMED, REASON_NO_RULE,
    REASON_NOT_ISOLATED, REASON_PENDING, REASON_RELATED, REASON_RULE, REASON_SPOOFED, REASON_TRACKED,
    REASON_UNATTRIBUTED, REASON_UNTRANSLATED,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Allowed,
    Dropped,
    Audit,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allowed => "ALLOWED",
            Verdict::Dropped => "DROPPED",
            Verdict::Audit => "AUDIT",
        })
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// "pod", "host" (the node itself), or "world" (anything else).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// For world addresses: the most specific ipBlock CIDR they fall in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<IpNet>,
}

impl Peer {
    /// `namespace/pod` for pods, else the kind.
    pub fn name(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(p)) => format!("{ns}/{p}"),
            _ => match self.cidr {
                Some(c) if self.kind == "world" && c.prefix_len() > 0 => format!("world in {c}"),
                _ => self.kind.clone(),
            },
        }
    }
}

/// The rule that decided a flow: the allowing rule, or for a drop a
/// ClusterNetworkPolicy Deny rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// Absent for the built-in node allowance and ClusterNetworkPolicy
    /// rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The NetworkPolicy's, or the ClusterNetworkPolicy's, name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub direction: Direction,
    pub rule: usize,
    pub description: String,
    /// "Admin" or "Baseline" for a ClusterNetworkPolicy rule (absent:
    /// NetworkPolicy, or the node allowance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictEvent {
    /// RFC 3339 with milliseconds.
    pub time: String,
    pub verdict: Verdict,
    /// Seen from the local pod: ingress (to it) or egress (from it).
    pub direction: Direction,
    pub protocol: String,
    pub source: Peer,
    pub destination: Peer,
    /// "rule", "not-isolated", "no-rule", "malformed", "tracked", "related",
    /// "pending", "spoofed-source", "service-untranslated",
    /// "service-unattributed".
    pub reason: String,
    /// The allowing rule, for ALLOWED events decided by a rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<RuleRef>,
    /// For drops and audits: the policies isolating the local pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<PolicyRef>,
    /// Packets this event stands for (drops are summarised per flow).
    pub count: u32,
    /// Drops of the same source's other flows that had no event of their
    /// own (its event budget was spent) since its previous event.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folded: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// The flow was open and a policy change re-decided it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redecided: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    pub ifindex: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl VerdictEvent {
    /// The local pod's end of the flow.
    pub fn local(&self) -> &Peer {
        if self.direction == Direction::Ingress { &self.destination } else { &self.source }
    }
}

fn endpoint(p: &Peer) -> String {
    match p.port {
        Some(port) if p.ip.is_ipv6() => format!("[{}]:{port}", p.ip),
        Some(port) => format!("{}:{port}", p.ip),
        None => p.ip.to_string(),
    }
}

impl fmt::Display for VerdictEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} ({}) -> {} ({})",
            self.verdict,
            self.direction,
            self.protocol,
            endpoint(&self.source),
            self.source.name(),
            endpoint(&self.destination),
            self.destination.name()
        )?;
        if let Some(flags) = &self.tcp_flags {
            write!(f, " [{flags}]")?;
        }
        match (self.verdict, &self.policy) {
            (Verdict::Allowed, Some(rule)) => write!(f, ": allowed by {}", rule.description)?,
            (_, Some(rule)) => write!(f, ": dropped by {}", rule.description)?,
            (Verdict::Allowed, None) => write!(f, ": {} is not isolated for {}", self.local().name(), self.direction)?,
            _ if self.reason == "malformed" => f.write_str(": malformed packet")?,
            _ if self.reason == "pending" => {
                f.write_str(": new pod interface, its policy is not in force yet (strict mode)")?
            }
            _ if self.reason == "spoofed-source" => {
                write!(f, ": spoofed source, {} is not an address of {}", self.source.ip, self.local().name())?
            }
            _ if self.reason == "service-untranslated" => {
                write!(f, ": {} is a Service address no endpoint translated", self.destination.ip)?
            }
            _ if self.reason == "service-unattributed" => {
                f.write_str(": Service traffic whose sending pod is unknown after NAT")?
            }
            _ => write!(f, ": {}", super::isolation_text(&self.local().name(), self.direction, &self.isolated_by))?,
        }
        if self.verdict == Verdict::Audit {
            f.write_str(" (audit: passed)")?;
        }
        if self.redecided {
            f.write_str(" (open flow re-decided after a policy change)")?;
        }
        if self.count > 1 {
            write!(f, " (x{})", self.count)?;
        }
        if self.folded > 0 {
            write!(f, " (+{} drops of this source's other flows without events)", self.folded)?;
        }
        Ok(())
    }
}

/// Converts kernel monotonic timestamps to wall-clock time.
pub struct Clock {
    offset: Duration,
}

fn monotonic_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Clock {
    /// Unix time in nanoseconds of a kernel timestamp.
    pub fn unix_ns(&self, ktime_ns: u64) -> u64 {
        (self.offset.as_nanos() as u64).wrapping_add(ktime_ns)
    }

    pub fn new() -> Clock {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Clock { offset: wall.saturating_sub(monotonic_now()) }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.offset + Duration::from_nanos(ktime_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads a record out of ring buffer bytes.
pub fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data; read_unaligned
    // copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// The protocol's name in events and filters.
pub fn protocol_name(p: u8) -> Cow<'static, str> {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        PROTO_ICMP => "ICMP".into(),
        PROTO_ICMPV6 => "ICMPv6".into(),
        other => format!("proto-{other}").into(),
    }
}

/// The kernel's `REASON_*` code in words.
pub fn reason_name(reason: u8) -> &'static str {
    match reason {
        REASON_NOT_ISOLATED => "not-isolated",
        REASON_RULE => "rule",
        REASON_NO_RULE => "no-rule",
        REASON_MALFORMED => "malformed",
        REASON_TRACKED => "tracked",
        REASON_RELATED => "related",
        REASON_PENDING => "pending",
        REASON_SPOOFED => "spoofed-source",
        REASON_UNTRANSLATED => "service-untranslated",
        REASON_UNATTRIBUTED => "service-unattributed",
        _ => "unknown",
    }
}

pub fn tcp_flags(f: u8) -> String {
    let names = [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x20, "URG")];
    names.iter().filter(|(bit, _)| f & bit != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}
