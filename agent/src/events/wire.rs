//! The compact event and its binary framing on the local socket.
//!
//! An event travels as a fixed-layout record ([`Compact`], [`RECORD_LEN`]
//! bytes) whose names (pods, CIDR cells, rules, isolating policies) are
//! symbol ids; each symbol is defined once per connection, before the first
//! record that uses it. Names are resolved once per flow in the agent and
//! turned into text or JSON only by the client that prints them.
//!
//! Frames: a tag byte, a little-endian u32 payload length, the payload.
//! - [`TAG_SYMBOL`]: u32 id, then the symbol as JSON.
//! - [`TAG_EVENTS`]: u64 sequence number of the first record, then records.
//! - [`TAG_LAGGED`]: u64 count of events this client fell behind and missed.

use super::record::{self, Peer, RuleRef, Verdict, VerdictEvent};
use crate::policy::{Direction, PolicyRef};
use ipnet::IpNet;
use palisade_common::{
    EVF_FRAGMENT, EVF_REDECIDED, FAMILY_V4, PROTO_SCTP, PROTO_TCP, PROTO_UDP, VERDICT_ALLOWED, VERDICT_AUDIT,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

pub const TAG_SYMBOL: u8 = 1;
pub const TAG_EVENTS: u8 = 2;
pub const TAG_LAGGED: u8 = 3;
/// Frame header: tag and payload length.
pub const HEADER_LEN: usize = 5;
/// Bytes of one encoded [`Compact`].
pub const RECORD_LEN: usize = 88;

/// What a peer is, when it is not named by a symbol alone.
pub const KIND_WORLD: u8 = 0;
pub const KIND_POD: u8 = 1;
pub const KIND_HOST: u8 = 2;

/// A name an event refers to by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Symbol {
    Pod {
        namespace: String,
        name: String,
    },
    /// The most specific ipBlock cell a world address falls in.
    Cidr(IpNet),
    Rule(RuleRef),
    /// The policies isolating a pod in a direction.
    Isolating(Vec<PolicyRef>),
}

/// One verdict event with its names resolved to symbol ids (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compact {
    /// Unix time, nanoseconds.
    pub time_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub count: u32,
    pub folded: u32,
    pub ifindex: u32,
    pub src_name: u32,
    pub dst_name: u32,
    pub rule: u32,
    pub isolated: u32,
    pub family: u8,
    pub protocol: u8,
    /// Kernel codes (`DIR_*`, `VERDICT_*`, `REASON_*`, `EVF_*`).
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    pub tcp_flags: u8,
    pub flags: u8,
    /// `KIND_*` of each end.
    pub src_kind: u8,
    pub dst_kind: u8,
}

impl Compact {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.time_ns.to_le_bytes());
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.sport.to_le_bytes());
        out.extend_from_slice(&self.dport.to_le_bytes());
        for v in [self.count, self.folded, self.ifindex, self.src_name, self.dst_name, self.rule, self.isolated] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[
            self.family,
            self.protocol,
            self.direction,
            self.verdict,
            self.reason,
            self.tcp_flags,
            self.flags,
            self.src_kind,
            self.dst_kind,
        ]);
        out.resize(start + RECORD_LEN, 0);
    }

    /// Reads one record; `b` holds at least [`RECORD_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Compact> {
        let b: &[u8; RECORD_LEN] = b.get(..RECORD_LEN)?.try_into().ok()?;
        let u32at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&b[8..24]);
        dst.copy_from_slice(&b[24..40]);
        Some(Compact {
            time_ns: u64::from_le_bytes(b[..8].try_into().ok()?),
            src,
            dst,
            sport: u16::from_le_bytes([b[40], b[41]]),
            dport: u16::from_le_bytes([b[42], b[43]]),
            count: u32at(44),
            folded: u32at(48),
            ifindex: u32at(52),
            src_name: u32at(56),
            dst_name: u32at(60),
            rule: u32at(64),
            isolated: u32at(68),
            family: b[72],
            protocol: b[73],
            direction: b[74],
            verdict: b[75],
            reason: b[76],
            tcp_flags: b[77],
            flags: b[78],
            src_kind: b[79],
            dst_kind: b[80],
        })
    }

    /// The symbol ids the record refers to.
    pub fn symbols(&self) -> [u32; 4] {
        [self.src_name, self.dst_name, self.rule, self.isolated]
    }

    pub fn verdict(&self) -> Verdict {
        match self.verdict {
            VERDICT_ALLOWED => Verdict::Allowed,
            VERDICT_AUDIT => Verdict::Audit,
            _ => Verdict::Dropped,
        }
    }

    pub fn direction(&self) -> Direction {
        Direction::from_code(self.direction)
    }

    pub fn has_ports(&self) -> bool {
        matches!(self.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
    }

    pub fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.time_ns)
    }
}

/// Starts a frame; returns where its length goes (see [`end_frame`]).
pub fn begin_frame(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

/// Writes the length of the frame begun at `at`.
pub fn end_frame(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

pub fn symbol_frame(out: &mut Vec<u8>, id: u32, sym: &Symbol) {
    let at = begin_frame(out, TAG_SYMBOL);
    out.extend_from_slice(&id.to_le_bytes());
    // Symbols are few and sent once per connection: JSON is fine here.
    let _ = serde_json::to_writer(&mut *out, sym);
    end_frame(out, at);
}

/// Every symbol the agent has named, by id (from 1); ids never change, so
/// a client's table stays valid across policy changes.
#[derive(Default)]
pub struct Symbols {
    by_id: RwLock<Vec<Arc<Symbol>>>,
    ids: Mutex<std::collections::HashMap<String, u32>>,
}

impl Symbols {
    /// The id of `sym`, defining it if new.
    pub fn intern(&self, sym: Symbol) -> u32 {
        let key = serde_json::to_string(&sym).unwrap_or_default();
        let Ok(mut ids) = self.ids.lock() else { return 0 };
        if let Some(id) = ids.get(&key) {
            return *id;
        }
        let Ok(mut by_id) = self.by_id.write() else { return 0 };
        by_id.push(Arc::new(sym));
        let id = by_id.len() as u32;
        ids.insert(key, id);
        id
    }

    pub fn get(&self, id: u32) -> Option<Arc<Symbol>> {
        let i = (id as usize).checked_sub(1)?;
        self.by_id.read().ok()?.get(i).cloned()
    }

    /// The event in Kubernetes terms, named by this table.
    pub fn expand(&self, c: &Compact) -> VerdictEvent {
        to_event(c, |id| self.get(id).map(|s| (*s).clone()))
    }
}

/// A client's table of the symbols its connection defined.
#[derive(Default)]
pub struct Table(Vec<Option<Symbol>>);

impl Table {
    pub fn define(&mut self, id: u32, sym: Symbol) {
        let i = id as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(sym);
    }

    pub fn get(&self, id: u32) -> Option<&Symbol> {
        self.0.get(id as usize).and_then(|s| s.as_ref())
    }

    /// Whether every symbol the record names was defined before it.
    pub fn resolves(&self, c: &Compact) -> bool {
        c.symbols().iter().all(|&id| id == 0 || self.get(id).is_some())
    }
}

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 { IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]) } else { IpAddr::from(*bytes) }
}

fn peer(ip: IpAddr, port: Option<u16>, kind: u8, name: Option<&Symbol>) -> Peer {
    let mut p = Peer {
        ip,
        port,
        kind: match kind {
            KIND_POD => "pod",
            KIND_HOST => "host",
            _ => "world",
        }
        .into(),
        namespace: None,
        pod: None,
        cidr: None,
    };
    match name {
        Some(Symbol::Pod { namespace, name }) => {
            p.namespace = Some(namespace.clone());
            p.pod = Some(name.clone());
        }
        Some(Symbol::Cidr(c)) => p.cidr = Some(*c),
        _ => {}
    }
    p
}

/// The event in Kubernetes terms, for printing.
pub fn to_event(c: &Compact, names: impl Fn(u32) -> Option<Symbol>) -> VerdictEvent {
    let ports = c.has_ports();
    let (sport, dport) = if ports { (Some(c.sport), Some(c.dport)) } else { (None, None) };
    let source = peer(addr(c.family, &c.src), sport, c.src_kind, names(c.src_name).as_ref());
    let destination = peer(addr(c.family, &c.dst), dport, c.dst_kind, names(c.dst_name).as_ref());
    let policy = match names(c.rule) {
        Some(Symbol::Rule(r)) => Some(r),
        _ => None,
    };
    let isolated_by = match names(c.isolated) {
        Some(Symbol::Isolating(v)) => v,
        _ => Vec::new(),
    };
    VerdictEvent {
        time: record::rfc3339(c.time()),
        verdict: c.verdict(),
        direction: c.direction(),
        protocol: record::protocol_name(c.protocol).into_owned(),
        source,
        destination,
        reason: record::reason_name(c.reason).into(),
        policy,
        isolated_by,
        count: c.count,
        folded: c.folded,
        tcp_flags: (c.protocol == PROTO_TCP && c.tcp_flags != 0).then(|| record::tcp_flags(c.tcp_flags)),
        redecided: c.flags & EVF_REDECIDED != 0,
        fragment: c.flags & EVF_FRAGMENT != 0,
        ifindex: c.ifindex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let c = Compact {
            time_ns: 1_700_000_000_123_456_789,
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [7; 16],
            sport: 40000,
            dport: 443,
            count: 3,
            folded: 9,
            ifindex: 17,
            src_name: 1,
            dst_name: 2,
            rule: 3,
            isolated: 4,
            family: FAMILY_V4,
            protocol: PROTO_TCP,
            direction: 2,
            verdict: 2,
            reason: 3,
            tcp_flags: 2,
            flags: 1,
            src_kind: KIND_POD,
            dst_kind: KIND_WORLD,
        };
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(out.len(), RECORD_LEN);
        assert_eq!(Compact::decode(&out), Some(c));
        assert_eq!(Compact::decode(&out[..RECORD_LEN - 1]), None);
    }

    #[test]
    fn symbols_are_interned_once() {
        let s = Symbols::default();
        let a = s.intern(Symbol::Pod { namespace: "x".into(), name: "a".into() });
        let b = s.intern(Symbol::Pod { namespace: "x".into(), name: "b".into() });
        assert_eq!((a, b), (1, 2));
        assert_eq!(s.intern(Symbol::Pod { namespace: "x".into(), name: "a".into() }), a);
        assert_eq!(s.get(b).as_deref(), Some(&Symbol::Pod { namespace: "x".into(), name: "b".into() }));
        assert!(s.get(0).is_none() && s.get(3).is_none());
    }
}
