//! Loading, pinning, attaching and diff-based map sync. The datapath never
//! interprets a NetworkPolicy: it makes the kernel maps equal to what the
//! compiler produced ([`plan`] decides what that is, without a kernel;
//! [`apply`] writes it), in an order that never opens a window for traffic
//! that neither the old nor the new state allows.
//!
//! bpffs layout under the agent's directory (default /sys/fs/bpf/palisade):
//! `v<LAYOUT_VERSION>/` holds the maps, `links/<ifindex>-{from,to}-pod` the
//! TCX links. Links do not depend on the map layout, so a new agent swaps
//! its programs into existing links atomically (no gap in enforcement).

pub mod apply;
pub mod batch;
pub mod bpffs;
pub mod netfilter;
pub mod netlink;
pub mod pinned;
pub mod plan;
pub mod policy_map;

use crate::policy::{IpPrefix, PolicyPrefix};
use crate::state::EndpointState;
use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, SocketFilter};
use aya::{Ebpf, EbpfLoader};
use palisade_common::{
    CFG_LOG_NEW_FLOWS, Config, Endpoint, IpInfo, IpKey, LAYOUT_VERSION, PolicyValue, capacity, ip_key_full_len, maps,
    programs,
};
use plan::Hook;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The classifier object, built by build.rs from the `palisade-ebpf` crate.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-classifier"));

/// Datapath knobs that are not policy.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Emit an event for every new allowed flow.
    pub log_new_flows: bool,
    /// At most one drop event per flow per interval.
    pub drop_event_interval: Duration,
    /// At most this many drop events per source address per interval
    /// (0: no bound); the rest are folded into its next event.
    pub drop_event_budget: u32,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub event_buffer_bytes: u32,
    /// skb mark bit for pod traffic to a Service whose egress verdict waits
    /// until kube-proxy has DNATed it to a backend.
    pub defer_mark: u32,
    /// skb mark bit the netfilter hooks put on Service traffic whose
    /// ingress they judged; 0: no netfilter hooks (Service traffic to the
    /// node itself, and traffic SNATed to a node address, go unjudged).
    pub judged_mark: u32,
    /// Which of the node's other interfaces judge that deferred egress.
    pub host_interfaces: HostInterfaces,
    /// Strict mode: interfaces whose name starts with one of these (the
    /// CNI's pod veths) drop all but link plumbing from the moment they
    /// appear until their pod's policy is in the kernel. Empty: off.
    pub strict_prefixes: Vec<String>,
}

/// The node's interfaces that get the host egress hook (never those with
/// the pod hooks, which judge DNATed traffic themselves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostInterfaces {
    /// Every interface but loopback and the pods' own.
    All,
    /// Only these, by name.
    Named(Vec<String>),
}

/// Entries of the maps the agent writes. The defaults are
/// [`palisade_common::capacity`]; smaller ones exist to exceed on purpose
/// (tests of what a full map does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub endpoints: u32,
    /// CIDRs.
    pub ips: u32,
    /// Single addresses.
    pub hosts: u32,
    /// Policy entries of no single port (any port, ranges, any protocol).
    pub policy: u32,
    /// Policy entries of one protocol and port.
    pub policy_ports: u32,
    /// Tracked flows, per address family (LRU tables: full, one forgets
    /// its least recent).
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            endpoints: capacity::ENDPOINTS,
            ips: capacity::IPS,
            hosts: capacity::HOSTS,
            policy: capacity::POLICY,
            policy_ports: capacity::POLICY,
            conntrack: capacity::CONNTRACK,
        }
    }
}

/// `policy=64,hosts=1024`: the defaults with these overrides.
impl FromStr for MapSizes {
    type Err = String;
    fn from_str(s: &str) -> Result<MapSizes, String> {
        let mut sizes = MapSizes::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, n) = item.split_once('=').ok_or_else(|| format!("{item}: expected map=entries"))?;
            let n: u32 = n.parse().map_err(|e| format!("{item}: {e}"))?;
            if n == 0 {
                return Err(format!("{item}: a map needs at least one entry"));
            }
            match name {
                "endpoints" => sizes.endpoints = n,
                "ips" => sizes.ips = n,
                "hosts" => sizes.hosts = n,
                "policy" => sizes.policy = n,
                "policy_ports" => sizes.policy_ports = n,
                "conntrack" => sizes.conntrack = n,
                _ => return Err(format!("{name}: not one of endpoints, ips, hosts, policy, policy_ports, conntrack")),
            }
        }
        Ok(sizes)
    }
}

/// The agent's record of the policy map: a hash, since a sync looks up
/// every entry a change touched (a namespace's root is tens of thousands;
/// in a tree of the whole map each lookup was a walk of cache misses).
/// foldhash, seeded per process.
type PolicyRecord = std::collections::HashMap<PolicyPrefix, PolicyValue, foldhash::fast::RandomState>;

/// What the agent last wrote (and so believes the kernel holds).
#[derive(Default)]
struct Realized {
    entries: Entries,
    /// Interfaces whose links carry this agent's programs, and which.
    attached: BTreeMap<u32, BTreeSet<Hook>>,
}

/// The entries of the endpoint, address and policy maps.
#[derive(Default)]
struct Entries {
    ips: BTreeMap<IpPrefix, IpInfo>,
    policy: PolicyRecord,
    endpoints: BTreeMap<u32, Endpoint>,
}

impl Entries {
    /// How many entries differ between `self` and `other` (in one and not
    /// the other, or with another value).
    fn differences(&self, other: &Entries) -> usize {
        /// Entries of `a` that `b` lacks or holds otherwise, and of `b`
        /// that `a` lacks.
        fn differing<'a, K: 'a, V: PartialEq + 'a>(
            a: impl Iterator<Item = (&'a K, &'a V)>,
            b: impl Iterator<Item = (&'a K, &'a V)>,
            in_a: impl Fn(&K) -> Option<&'a V>,
            in_b: impl Fn(&K) -> Option<&'a V>,
        ) -> usize {
            a.filter(|(k, v)| in_b(k) != Some(*v)).count() + b.filter(|(k, _)| in_a(k).is_none()).count()
        }
        let (a, b) = (self, other);
        differing(a.endpoints.iter(), b.endpoints.iter(), |k| a.endpoints.get(k), |k| b.endpoints.get(k))
            + differing(a.ips.iter(), b.ips.iter(), |k| a.ips.get(k), |k| b.ips.get(k))
            + differing(a.policy.iter(), b.policy.iter(), |k| a.policy.get(k), |k| b.policy.get(k))
    }
}

/// Reads the endpoint, address and policy maps whole.
fn read_entries(
    endpoints: &HashMap<MapData, u32, Endpoint>,
    ips: &LpmTrie<MapData, IpKey, IpInfo>,
    hosts: &HashMap<MapData, IpKey, IpInfo>,
    policy: &policy_map::PolicyMap,
) -> Result<Entries> {
    let mut out = Entries { endpoints: batch::entries(endpoints)?.into_iter().collect(), ..Default::default() };
    for item in ips.iter() {
        let (k, v) = item?;
        out.ips.insert(IpPrefix { prefix_len: k.prefix_len(), key: k.data() }, v);
    }
    for (k, v) in batch::entries(hosts)? {
        out.ips.insert(IpPrefix { prefix_len: ip_key_full_len(k.family), key: k }, v);
    }
    out.policy.extend(policy.entries()?);
    Ok(out)
}

/// The outcome of one sync.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub endpoints: Vec<EndpointState>,
    /// Map entries written or removed.
    pub changes: usize,
    pub revision: u32,
    pub errors: Vec<String>,
    /// Strict mode: pod interfaces held closed until their pod is known.
    pub pending: Vec<String>,
    /// Attaches tried (each waits for RCU grace periods), and the time
    /// spent attaching and detaching (µs).
    pub attaches: usize,
    pub links_us: u64,
}

/// Fill levels of the kernel maps.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MapFill {
    pub endpoints: (usize, u32),
    pub ips: (usize, u32),
    pub policy: (usize, u32),
    pub conntrack: (usize, u32),
}

pub struct Datapath {
    dir: PathBuf,
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, Endpoint>,
    ips: LpmTrie<MapData, IpKey, IpInfo>,
    hosts: HashMap<MapData, IpKey, IpInfo>,
    policy: policy_map::PolicyMap,
    config_map: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    config: Config,
    realized: Realized,
    /// The last sync left the policy map equal to what it was given (so
    /// the next may write only what changed since).
    policy_whole: bool,
    /// The last sync left the address maps equal to what it was given,
    /// with these local pod addresses on these interfaces (so the next may
    /// skip them when neither changed).
    ips_whole: Option<Vec<(std::net::IpAddr, u32)>>,
    /// The kernel may not have `config` (a write failed): the next sync
    /// writes it whatever changed, or tracked flows would keep the
    /// verdicts of a revision that never reached the kernel.
    config_stale: bool,
    host_interfaces: HostInterfaces,
    strict_prefixes: Vec<String>,
    sizes: MapSizes,
    /// The netfilter hooks' rules (None: `judged_mark` 0).
    netfilter: Option<netfilter::Hooks>,
    /// This process's hold on `dir` ([`bpffs::hold`]); last, so it is let
    /// go after everything else.
    _hold: std::fs::File,
}

/// The kernel's tick in nanoseconds, for the programs' clock (see
/// `Config::tick_ns`): the resolution of the coarse monotonic clock, which
/// the kernel reports as exactly one tick. 0, the programs' fallback to the
/// coarse clock itself, should the kernel not say.
fn tick_ns() -> u32 {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } == 0;
    if ok && res.tv_sec == 0 { u32::try_from(res.tv_nsec).unwrap_or(0) } else { 0 }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Datapath {
    /// Loads the classifier, creating or adopting the pinned maps under
    /// `dir`, and reads back what the maps already hold.
    pub fn open(dir: &Path, settings: &Settings) -> Result<Datapath> {
        Datapath::open_sized(dir, settings, MapSizes::default())
    }

    /// [`Datapath::open`] with maps of other sizes.
    pub fn open_sized(dir: &Path, settings: &Settings, sizes: MapSizes) -> Result<Datapath> {
        if OBJECT.is_empty() {
            bail!("this build has no eBPF classifier (built with AYA_BUILD_SKIP=1); rebuild without it");
        }
        bpffs::ensure(dir)?;
        let hold = bpffs::hold(dir)?;
        let maps_dir = maps_dir(dir);
        std::fs::create_dir_all(&maps_dir)?;
        check_pinned_layout(&maps_dir, &sizes)?;
        std::fs::create_dir_all(dir.join("links"))?;
        let buffer = settings.event_buffer_bytes;
        if !buffer.is_power_of_two() || buffer < 4096 {
            bail!("the event buffer size must be a power of two of at least 4096 bytes, not {buffer}");
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(maps::EVENTS, buffer)
            .map_max_entries(maps::ENDPOINTS, sizes.endpoints)
            .map_max_entries(maps::IPS, sizes.ips)
            .map_max_entries(maps::HOSTS, sizes.hosts)
            .map_max_entries(maps::POLICY, sizes.policy)
            .map_max_entries(maps::POLICY_PORTS, sizes.policy_ports)
            .map_max_entries(maps::CONNTRACK4, sizes.conntrack)
            .map_max_entries(maps::CONNTRACK6, sizes.conntrack)
            .load(OBJECT)
            .context("loading the classifier (is this a 6.6+ kernel with BTF, and are we root?)")?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::HOST_EGRESS] {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            verify(name, || prog.load())?;
        }
        let netfilter = load_netfilter(&mut ebpf, dir, settings)?;
        let endpoints: HashMap<_, u32, Endpoint> = take(&mut ebpf, maps::ENDPOINTS)?;
        let ips: LpmTrie<_, IpKey, IpInfo> = take(&mut ebpf, maps::IPS)?;
        let hosts: HashMap<_, IpKey, IpInfo> = take(&mut ebpf, maps::HOSTS)?;
        let policy = policy_map::PolicyMap::new(take(&mut ebpf, maps::POLICY)?, take(&mut ebpf, maps::POLICY_PORTS)?);
        let config_map: Array<_, Config> = take(&mut ebpf, maps::CONFIG)?;
        let stats = take(&mut ebpf, maps::STATS)?;
        let realized = Realized { entries: read_entries(&endpoints, &ips, &hosts, &policy)?, ..Default::default() };
        let mut config = config_map.get(&0, 0).unwrap_or_default();
        // An agent killed between writing entries and bumping the revision
        // left tracked flows that look current but were decided under the
        // state before those writes (and a tracked packet reads no
        // endpoint): every agent start makes them all decide again.
        config.revision = config.revision.wrapping_add(1);
        config.flags =
            if settings.log_new_flows { config.flags | CFG_LOG_NEW_FLOWS } else { config.flags & !CFG_LOG_NEW_FLOWS };
        config.drop_event_interval_ns = settings.drop_event_interval.as_nanos() as u64;
        config.drop_event_budget = settings.drop_event_budget;
        config.defer_mark = settings.defer_mark;
        config.judged_mark = settings.judged_mark;
        config.tick_ns = tick_ns();
        let mut dp = Datapath {
            dir: dir.to_path_buf(),
            ebpf,
            endpoints,
            ips,
            hosts,
            policy,
            config_map,
            stats,
            config,
            realized,
            policy_whole: false,
            ips_whole: None,
            config_stale: false,
            host_interfaces: settings.host_interfaces.clone(),
            strict_prefixes: settings.strict_prefixes.clone(),
            sizes,
            netfilter,
            _hold: hold,
        };
        dp.write_config()?;
        Ok(dp)
    }

    /// Reads the maps back and takes what they hold as the record the
    /// next sync compares with, so that sync rewrites what was changed
    /// behind the agent's back (`bpftool`, another tool): an endpoint entry
    /// removed would leave its pod's traffic unjudged until then. Returns
    /// how many entries differed from the record (the configuration
    /// counts as one). On an error the record stays as it was.
    pub fn reread(&mut self) -> Result<usize> {
        let entries = read_entries(&self.endpoints, &self.ips, &self.hosts, &self.policy)?;
        let mut drifted = entries.differences(&self.realized.entries);
        // A config the last sync failed to write is rewritten anyway, and
        // is no drift.
        if !self.config_stale && self.config_map.get(&0, 0).ok() != Some(self.config) {
            self.config_stale = true;
            drifted += 1;
        }
        if drifted > 0 {
            self.realized.entries = entries;
            self.policy_whole = false;
            self.ips_whole = None;
        }
        Ok(drifted)
    }

    /// The ring buffer verdict events arrive on.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        take(&mut self.ebpf, maps::EVENTS)
    }

    fn write_config(&mut self) -> Result<()> {
        self.config_map.set(0, self.config, 0).context("writing the config map")
    }

    pub fn revision(&self) -> u32 {
        self.config.revision
    }

    /// The loaded classifier of one hook, for BPF_PROG_TEST_RUN in tests
    /// and benchmarks.
    pub fn classifier(&self, dir: crate::policy::Direction) -> Result<&SchedClassifier> {
        let name = match dir {
            crate::policy::Direction::Egress => programs::FROM_POD,
            crate::policy::Direction::Ingress => programs::TO_POD,
        };
        let prog = self.ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing"))?;
        Ok(prog.try_into()?)
    }

    /// The loaded host egress classifier, for BPF_PROG_TEST_RUN in tests.
    pub fn host_egress(&self) -> Result<&SchedClassifier> {
        let name = programs::HOST_EGRESS;
        let prog = self.ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing"))?;
        Ok(prog.try_into()?)
    }

    /// The per-CPU counters, summed.
    pub fn counters(&self) -> Vec<u64> {
        pinned::sum_counters(&self.stats)
    }

    pub fn fill(&self) -> MapFill {
        MapFill {
            endpoints: (self.realized.entries.endpoints.len(), self.sizes.endpoints),
            ips: (self.realized.entries.ips.len(), self.sizes.ips + self.sizes.hosts),
            policy: (self.realized.entries.policy.len(), self.sizes.policy + self.sizes.policy_ports),
            // Counting the tracked flows walks the whole table: the agent
            // does it on a slow timer (see `pinned::Pinned::tracked_flows`).
            conntrack: (0, self.sizes.conntrack),
        }
    }
}

/// Verifies and pins the netfilter hooks' programs (replacing an earlier
/// agent's pins: its rules keep its programs until [`Datapath::sync`]
/// installs ours), or, with the hooks off, takes out this directory's
/// rules, which would otherwise keep judging with an earlier agent's
/// programs and marking packets this one does not read.
fn load_netfilter(ebpf: &mut Ebpf, dir: &Path, settings: &Settings) -> Result<Option<netfilter::Hooks>> {
    let pins = netfilter::pin_dir(dir);
    if settings.judged_mark == 0 {
        netfilter::remove(&pins)?;
        return Ok(None);
    }
    let (d, j) = (settings.defer_mark, settings.judged_mark);
    if !j.is_power_of_two() || j & d != 0 {
        bail!("the judged mark ({j:#x}) must be one bit, other than the defer mark ({d:#x})");
    }
    std::fs::create_dir_all(&pins)?;
    for (name, pin) in [
        (programs::NF_LOCAL, netfilter::LOCAL),
        (programs::NF_FORWARD, netfilter::FORWARD),
        (programs::NF_REPLY, netfilter::REPLY),
    ] {
        let prog: &mut SocketFilter =
            ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
        verify(name, || prog.load())?;
        let path = pins.join(pin);
        let _ = std::fs::remove_file(&path);
        prog.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
    }
    Ok(Some(netfilter::Hooks::new(pins, d, j)))
}

/// Loads one program through the verifier. The verifier gives up with
/// EAGAIN when a signal is pending for the thread (a child exiting under a
/// SIGCHLD handler is enough; a kernel test saw it); libbpf retries that,
/// and so does this.
fn verify(name: &str, mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>) -> Result<()> {
    let mut tries = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            done => return done.with_context(|| format!("verifying {name}")),
        }
    }
}

/// Where an agent with bpffs directory `dir` pins its maps (a directory
/// per layout: an agent of another layout leaves these alone).
pub fn maps_dir(dir: &Path) -> PathBuf {
    dir.join(format!("v{LAYOUT_VERSION}"))
}

/// Refuses maps pinned by a build whose layout differs from this one's
/// (same LAYOUT_VERSION, different sizes): aya would adopt them blindly, and
/// the programs would read them wrong.
fn check_pinned_layout(maps_dir: &Path, sizes: &MapSizes) -> Result<()> {
    use palisade_common::*;
    use std::mem::size_of;
    let lpm = |data: usize| 4 + data;
    let expected: [(&str, usize, usize, u32); 12] = [
        (maps::ENDPOINTS, size_of::<u32>(), size_of::<Endpoint>(), sizes.endpoints),
        (maps::IPS, lpm(size_of::<IpKey>()), size_of::<IpInfo>(), sizes.ips),
        (maps::HOSTS, size_of::<IpKey>(), size_of::<IpInfo>(), sizes.hosts),
        (maps::POLICY, lpm(size_of::<PolicyKey>()), size_of::<PolicyValue>(), sizes.policy),
        (maps::POLICY_PORTS, size_of::<PolicyKey>(), size_of::<PolicyValue>(), sizes.policy_ports),
        (maps::CONNTRACK4, size_of::<CtKey4>(), size_of::<CtEntry>(), sizes.conntrack),
        (maps::CONNTRACK6, size_of::<CtKey>(), size_of::<CtEntry>(), sizes.conntrack),
        (maps::SUPPRESS, size_of::<SuppressKey>(), size_of::<SuppressEntry>(), capacity::SUPPRESS),
        (maps::SOURCES, size_of::<SourceKey>(), size_of::<SourceBudget>(), capacity::SOURCES),
        (maps::FRAGS, size_of::<FragKey>(), size_of::<FragPorts>(), capacity::FRAGS),
        (maps::CONFIG, size_of::<u32>(), size_of::<Config>(), 1),
        (maps::STATS, size_of::<u32>(), size_of::<u64>(), stat::COUNT),
    ];
    for (name, key, value, entries) in expected {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapData::from_pin(&path)?.info()?;
        let got = (info.key_size() as usize, info.value_size() as usize, info.max_entries());
        if got != (key, value, entries) {
            bail!(
                "{} was pinned by an incompatible palisade build (key {} value {} entries {}, expected {key} {value} \
                 {entries}); `palisade uninstall --bpffs {}` removes it (and enforcement with it)",
                path.display(),
                got.0,
                got.1,
                got.2,
                maps_dir.parent().unwrap_or(maps_dir).display()
            );
        }
    }
    Ok(())
}

/// Removes everything palisade pinned under `dir`: programs come off every
/// interface and the maps go away with the last reference.
pub fn uninstall(dir: &Path) -> Result<()> {
    netfilter::remove(&netfilter::pin_dir(dir))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
