//! Fixtures: veth pairs left down (nothing but our packets reaches the
//! programs), a private bpffs directory, and a freshly loaded datapath
//! enforcing the cluster, each torn down on drop, pass or fail. Every test
//! module takes what it needs from here (`use crate::fixture::*`).

pub use crate::cluster::*;
pub use palisade::datapath::Settings;
pub use palisade::policy::Direction;
pub use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, EVF_FRAGMENT, EVF_REDECIDED, Event, FAMILY_V4, FAMILY_V6, REASON_MALFORMED,
    REASON_NO_RULE, REASON_NOT_ISOLATED, REASON_RULE, VERDICT_ALLOWED, VERDICT_DROPPED, stat,
};
pub use palisade_kit::packet::*;
pub use palisade_kit::tc::{DROP, PASS, Verdict, kernel_accepts, verdict};
pub use std::net::{IpAddr, Ipv6Addr};
pub use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, RingBuf};
use aya::programs::{ProgramError, TestRun, TestRunOptions};
use palisade::datapath::netlink::Interfaces;
use palisade::datapath::{self, Datapath, HostInterfaces, MapSizes};
use palisade::policy::{Compiled, Input, compile, lookup};
use palisade_common::{CtEntry, CtKey, CtKey4, PolicyKey, PolicyValue, maps};
use palisade_e2e::netns::ip;
use palisade_kit::tc::skb_ctx;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A policy map entry: (prefix length, key, value).
pub type PolicyEntry = (u32, PolicyKey, PolicyValue);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A veth pair in the root namespace, left down; deleted on drop.
struct Veth {
    host: String,
    ifindex: u32,
    /// The other end: an interface with no endpoint.
    peer_ifindex: u32,
}

fn ifindex_of(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}: {}", std::io::Error::last_os_error());
    i
}

impl Veth {
    fn create() -> Veth {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("plkt{}-{n}", std::process::id() % 100_000);
        let (host, peer) = (format!("{base}a"), format!("{base}b"));
        let _ = ip(&["link", "del", &host]);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]).expect("creating a veth pair");
        let mut v = Veth { host, ifindex: 0, peer_ifindex: 0 };
        v.ifindex = ifindex_of(&v.host);
        v.peer_ifindex = ifindex_of(&peer);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host]);
    }
}

/// A private bpffs directory, removed (maps and links with it) on drop.
pub struct BpfDir(pub PathBuf);

impl BpfDir {
    pub fn new() -> BpfDir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        BpfDir(PathBuf::from(format!("/sys/fs/bpf/palisade-kt-{}-{n}", std::process::id())))
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        if let Err(e) = datapath::uninstall(&self.0) {
            eprintln!("cleaning up {}: {e:#}", self.0.display());
        }
    }
}

#[derive(Clone, Debug)]
pub struct Local {
    pub name: &'static str,
    pub ifindex: u32,
    pub peer_ifindex: u32,
    pub class: u32,
    pub parent: u32,
    pub flags: u32,
    pub ip4: IpAddr,
    pub ip6: IpAddr,
}

impl Local {
    /// Its entry in the kernel's endpoint map.
    pub fn kernel(&self) -> palisade_common::Endpoint {
        palisade_common::Endpoint { class: self.class, flags: self.flags, parent: self.parent }
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { self.ip6 } else { self.ip4 }
    }

    pub fn ip_like(&self, remote: IpAddr) -> IpAddr {
        self.ip(remote.is_ipv6())
    }
}

/// A loaded datapath enforcing [`input`] on three veths. Field order is
/// drop order: the datapath goes before its pins and interfaces.
pub struct Env {
    pub dp: Datapath,
    events: RingBuf<MapData>,
    pub compiled: Compiled,
    ifaces: Interfaces,
    locals: Vec<Local>,
    next_port: u16,
    _dir: BpfDir,
    _veths: Vec<Veth>,
}

/// Ring buffer bytes: room for every event any test here provokes.
const EVENT_BUFFER_BYTES: u32 = 4 << 20;

pub fn settings() -> Settings {
    Settings {
        log_new_flows: false,
        drop_event_interval: Duration::from_secs(30),
        drop_event_budget: 0,
        event_buffer_bytes: EVENT_BUFFER_BYTES,
        defer_mark: DEFER_MARK,
        judged_mark: 0,
        // Only the test's own veths: never the machine's real interfaces.
        host_interfaces: HostInterfaces::Named(vec![]),
        strict_prefixes: vec![],
    }
}

pub const DEFER_MARK: u32 = 0x40_0000;
/// Offset of `mark` in `struct __sk_buff` (after `len` and `pkt_type`).
const SKB_MARK: usize = 8;
/// Offset of `cb[0]` in `struct __sk_buff`.
const SKB_CB: usize = 48;

impl Env {
    pub fn new(settings: Settings) -> Env {
        Env::sized(settings, MapSizes::default())
    }

    /// [`Env::new`] with maps of other sizes (to fill one on purpose).
    pub fn sized(settings: Settings, sizes: MapSizes) -> Env {
        Env::sized_from(settings, sizes, input(false))
    }

    /// [`Env::sized`] enforcing `first` from the start.
    pub fn sized_from(settings: Settings, sizes: MapSizes, first: Input) -> Env {
        palisade_e2e::require_root().expect("root");
        let dir = BpfDir::new();
        let mut dp =
            Datapath::open_sized(&dir.0, &settings, sizes).unwrap_or_else(|e| panic!("opening the datapath: {e:#}"));
        let events = dp.take_events().expect("ring buffer");
        let mut env = Env {
            dp,
            events,
            compiled: Compiled::default(),
            ifaces: Interfaces::default(),
            locals: Vec::new(),
            next_port: 20_000,
            _dir: dir,
            _veths: Vec::new(),
        };
        for (_, ip4, ip6) in LOCALS {
            env.add_interface(ip4, ip6);
        }
        env.apply(first);
        env
    }

    /// One more pod interface, routed to `ip4` and `ip6`: its host side's
    /// ifindex.
    pub fn add_interface(&mut self, ip4: &str, ip6: &str) -> u32 {
        let veth = Veth::create();
        let i = veth.ifindex;
        self.ifaces.routes.insert(addr(ip4), i);
        self.ifaces.routes.insert(addr(ip6), i);
        self.ifaces.names.insert(i, veth.host.clone());
        self._veths.push(veth);
        i
    }

    /// Compiles `input` and syncs it into the kernel; returns the revision.
    pub fn apply(&mut self, input: Input) -> u32 {
        let compiled = compile(&input, &node());
        assert!(compiled.warnings.is_empty(), "compiler warnings: {:?}", compiled.warnings);
        let report = self.dp.sync(&compiled, &self.ifaces);
        assert!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
        for ep in &report.endpoints {
            assert_eq!(ep.state, palisade::state::Enforcement::Enforced, "{}/{}", ep.namespace, ep.name);
        }
        self.locals = LOCALS
            .iter()
            .zip(&self._veths)
            .map(|((name, ip4, ip6), veth)| {
                let ep = compiled.endpoints.iter().find(|e| e.name == *name).expect("local endpoint");
                Local {
                    name,
                    ifindex: veth.ifindex,
                    peer_ifindex: veth.peer_ifindex,
                    class: ep.class,
                    parent: ep.parent,
                    flags: ep.flags,
                    ip4: addr(ip4),
                    ip6: addr(ip6),
                }
            })
            .collect();
        self.compiled = compiled;
        report.revision
    }

    /// The datapath's bpffs directory.
    pub fn bpffs(&self) -> &std::path::Path {
        &self._dir.0
    }

    pub fn local(&self, name: &str) -> Local {
        self.locals.iter().find(|l| l.name == name).cloned().unwrap_or_else(|| panic!("no local pod {name}"))
    }

    /// A source port (or ICMP identifier) no earlier packet used.
    pub fn fresh(&mut self) -> u16 {
        self.next_port = self.next_port.checked_add(1).expect("out of fresh ports");
        self.next_port
    }

    /// Runs one hook's program on `pkt` as if it crossed interface `ifindex`.
    pub fn try_run(&self, hook: Direction, ifindex: u32, pkt: &[u8]) -> Result<u32, ProgramError> {
        let ctx = skb_ctx(ifindex);
        let prog = self.dp.classifier(hook).expect("classifier");
        let opts = TestRunOptions { data_in: Some(pkt), ctx_in: Some(&ctx), ..TestRunOptions::new() };
        prog.test_run(opts).map(|r| r.return_value)
    }

    /// Runs one hook's program on `pkt` as if it crossed interface
    /// `ifindex`, with `cb` in the skb's control buffer (as an earlier
    /// program or layer might have left it).
    pub fn run_with_cb(&self, hook: Direction, ifindex: u32, pkt: &[u8], cb: [u32; 5]) -> Verdict {
        let mut ctx = skb_ctx(ifindex);
        for (i, w) in cb.iter().enumerate() {
            ctx[SKB_CB + 4 * i..SKB_CB + 4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let prog = self.dp.classifier(hook).expect("classifier");
        let opts = TestRunOptions { data_in: Some(pkt), ctx_in: Some(&ctx), ..TestRunOptions::new() };
        let v = prog.test_run(opts).unwrap_or_else(|e| panic!("{hook:?}, {} bytes: {e}", pkt.len())).return_value;
        verdict(v).unwrap_or_else(|| panic!("{hook:?}: unexpected return value {v:#x}\n{}", hex(pkt)))
    }

    /// Runs the node's host egress hook on `pkt` carrying skb mark `mark`.
    pub fn run_host_egress(&self, mark: u32, pkt: &[u8]) -> Verdict {
        self.run_marked(None, 1, mark, pkt)
    }

    /// Runs a pod hook (`Some`) or the host egress hook (`None`) on `pkt`
    /// carrying skb mark `mark`, as if it crossed interface `ifindex`.
    pub fn run_marked(&self, hook: Option<Direction>, ifindex: u32, mark: u32, pkt: &[u8]) -> Verdict {
        let mut ctx = skb_ctx(ifindex);
        ctx[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        let prog = match hook {
            Some(hook) => self.dp.classifier(hook).expect("classifier"),
            None => self.dp.host_egress().expect("host egress classifier"),
        };
        let opts = TestRunOptions { data_in: Some(pkt), ctx_in: Some(&ctx), ..TestRunOptions::new() };
        let v = prog.test_run(opts).unwrap_or_else(|e| panic!("{hook:?}, {} bytes: {e}", pkt.len())).return_value;
        verdict(v).unwrap_or_else(|| panic!("{hook:?}: unexpected return value {v:#x}\n{}", hex(pkt)))
    }

    /// Like [`Env::try_run`], insisting on PASS or DROP.
    pub fn run_on(&self, hook: Direction, ifindex: u32, pkt: &[u8]) -> Verdict {
        let v = self
            .try_run(hook, ifindex, pkt)
            .unwrap_or_else(|e| panic!("test run of {} bytes on {hook:?}: {e}\n{}", pkt.len(), hex(pkt)));
        verdict(v).unwrap_or_else(|| panic!("{hook:?}: unexpected return value {v:#x}\n{}", hex(pkt)))
    }

    /// Runs the `hook` program of local pod `local`.
    pub fn run(&self, hook: Direction, local: &str, pkt: &[u8]) -> Verdict {
        self.run_on(hook, self.local(local).ifindex, pkt)
    }

    /// A packet from `remote` to local pod `local` through its TC egress hook.
    pub fn ingress(&self, local: &str, remote: IpAddr, l4: L4) -> Verdict {
        let l = self.local(local);
        self.run(Direction::Ingress, local, &packet(remote, l.ip_like(remote), l4))
    }

    /// A packet from local pod `local` to `remote` through its TC ingress hook.
    pub fn egress(&self, local: &str, remote: IpAddr, l4: L4) -> Verdict {
        let l = self.local(local);
        self.run(Direction::Egress, local, &packet(l.ip_like(remote), remote, l4))
    }

    /// What the compiled maps say about a first packet.
    pub fn decide(&self, local: &str, dir: Direction, remote: IpAddr, protocol: u8, port: u16) -> lookup::Verdict {
        let l = self.local(local);
        lookup::decide(&self.compiled, &l.kernel(), dir, remote, protocol, port)
    }

    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(palisade::events::record::parse(&item).expect("event record"));
        }
        out
    }

    /// What one of the pinned hash maps (connection tracking, fragments)
    /// holds.
    pub fn entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Vec<(K, V)> {
        self.hash_map(name).iter().map(|e| e.expect("reading an entry")).collect()
    }

    /// Compiles `input` and syncs it without checking the outcome (to
    /// provoke a failing sync): the report.
    pub fn try_apply(&mut self, input: &Input) -> datapath::SyncReport {
        let compiled = compile(input, &node());
        self.dp.sync(&compiled, &self.ifaces)
    }

    /// What the kernel's policy maps hold: (prefix length, key, value).
    pub fn policy_entries(&self) -> Vec<PolicyEntry> {
        let (trie, ports) = self.policy_maps();
        trie.into_iter().chain(ports.into_iter().map(|(k, v)| (palisade_common::POLICY_PREFIX_FULL, k, v))).collect()
    }

    /// Each policy map's entries: the trie's, and the one-port hash
    /// map's (key, value).
    pub fn policy_maps(&self) -> (Vec<PolicyEntry>, Vec<(PolicyKey, PolicyValue)>) {
        let path = datapath::maps_dir(&self._dir.0).join(palisade_common::maps::POLICY);
        let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let trie: LpmTrie<MapData, PolicyKey, PolicyValue> =
            LpmTrie::try_from(Map::from_map_data(data).expect("map")).expect("an LPM trie");
        let trie = trie.iter().map(|e| e.expect("reading an entry")).map(|(k, v)| (k.prefix_len(), k.data(), v));
        (trie.collect(), self.entries(palisade_common::maps::POLICY_PORTS))
    }

    /// The flows connection tracking holds, both families' tables, keyed
    /// as the pipeline keys them.
    pub fn flows(&self) -> Vec<(CtKey, CtEntry)> {
        let v4 = self.entries::<CtKey4, CtEntry>(maps::CONNTRACK4).into_iter().map(|(k, v)| (k.wide(), v));
        v4.chain(self.entries::<CtKey, CtEntry>(maps::CONNTRACK6)).collect()
    }

    /// Empties both connection tracking tables, returning what they held.
    pub fn take_flows(&self) -> Vec<(CtKey, CtEntry)> {
        let v4 = self.take_entries::<CtKey4, CtEntry>(maps::CONNTRACK4).into_iter().map(|(k, v)| (k.wide(), v));
        v4.chain(self.take_entries::<CtKey, CtEntry>(maps::CONNTRACK6)).collect()
    }

    /// The config entry the agent wrote for the programs.
    pub fn config(&self) -> palisade_common::Config {
        self.config_array().get(&0, 0).expect("the config entry")
    }

    /// Writes the config entry, as another tool would.
    pub fn set_config(&self, config: palisade_common::Config) {
        self.config_array().set(0, config, 0).expect("writing the config");
    }

    fn config_array(&self) -> aya::maps::Array<MapData, palisade_common::Config> {
        let path = datapath::maps_dir(&self._dir.0).join(maps::CONFIG);
        let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        aya::maps::Array::try_from(Map::from_map_data(data).expect("map")).expect("an array")
    }

    /// Overwrites a tracked flow's entry, in its family's table.
    pub fn set_flow(&self, key: &CtKey, entry: &CtEntry) {
        let written = if key.family == FAMILY_V4 {
            self.hash_map::<CtKey4, CtEntry>(maps::CONNTRACK4).insert(key.v4(), entry, 0)
        } else {
            self.hash_map::<CtKey, CtEntry>(maps::CONNTRACK6).insert(key, entry, 0)
        };
        written.expect("writing a flow's entry");
    }

    /// Empties one of the pinned hash maps, returning what it held.
    pub fn take_entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Vec<(K, V)> {
        let mut map = self.hash_map::<K, V>(name);
        let entries: Vec<(K, V)> = map.iter().map(|e| e.expect("reading an entry")).collect();
        for (k, _) in &entries {
            map.remove(k).expect("removing an entry");
        }
        entries
    }

    /// Writes one entry of a pinned hash map, as another tool would.
    pub fn put_entry<K: aya::Pod, V: aya::Pod>(&self, name: &str, key: K, value: V) {
        self.hash_map::<K, V>(name).insert(key, value, 0).expect("writing an entry");
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> BpfHashMap<MapData, K, V> {
        let path = datapath::maps_dir(&self._dir.0).join(name);
        let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        BpfHashMap::try_from(Map::from_map_data(data).expect("map")).expect("a hash map")
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.dp.counters()[index as usize]
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join("")
}

/// A neighbour discovery message as RFC 4861 sends it: hop limit 255.
pub fn ndp(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> Vec<u8> {
    let mut p = ipv6(src, dst, PROTO_ICMPV6, msg);
    p[IPV6_HOP_LIMIT_AT] = 255;
    p
}

/// A deterministic generator for the random-packet test (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
