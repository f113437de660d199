//! Loading, pinning, attaching and diff-based map sync. The datapath never
//! interprets a NetworkPolicy: it makes the kernel maps equal to what the
//! compiler produced, in an order that never opens a window for traffic
//! that neither the old nor the new state allows.
//!
//! bpffs layout under the agent's directory (default /sys/fs/bpf/palisade):
//! `v<LAYOUT_VERSION>/` holds the maps, `links/<ifindex>-{from,to}-pod` the
//! TCX links. Links do not depend on the map layout, so a new agent swaps
//! its programs into existing links atomically (no gap in enforcement).

pub mod bpffs;
pub mod netlink;
pub mod pinned;

use crate::policy::{Compiled, IpPrefix, PolicyPrefix};
use anyhow::{Context, Result, anyhow, bail};
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use netlink::Interfaces;
use palisade_common::{
    CFG_LOG_NEW_FLOWS, Config, Endpoint, IpInfo, IpKey, LAYOUT_VERSION, PolicyKey, PolicyValue, capacity,
    ip_key_full_len, maps, programs,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub event_buffer_bytes: u32,
    /// skb mark bit for pod traffic to a Service whose egress verdict waits
    /// until kube-proxy has DNATed it to a backend.
    pub defer_mark: u32,
    /// Which of the node's other interfaces judge that deferred egress.
    pub host_interfaces: HostInterfaces,
    /// Strict mode: interfaces whose name starts with one of these (the
    /// CNI's pod veths) drop all but link plumbing from the moment they
    /// appear until their pod's policy is in the kernel. Empty: off.
    pub strict_prefixes: Vec<String>,
}

/// The node's interfaces (other than pods') that get the host egress hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostInterfaces {
    /// Every interface but loopback and the pods' own.
    All,
    /// Only these, by name.
    Named(Vec<String>),
}

/// What an interface is to palisade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A local pod's host-side veth: both directions of its policy.
    Pod,
    /// Another interface of the node: egress of DNATed pod traffic.
    Host,
}

impl Role {
    /// (program, TC hook, pin name suffix) per hook.
    fn hooks(self) -> &'static [(&'static str, TcAttachType, &'static str)] {
        match self {
            Role::Pod => &[
                (programs::FROM_POD, TcAttachType::Ingress, "from-pod"),
                (programs::TO_POD, TcAttachType::Egress, "to-pod"),
            ],
            Role::Host => &[(programs::HOST_EGRESS, TcAttachType::Egress, "host-egress")],
        }
    }
}

/// What the agent last wrote (and so believes the kernel holds).
#[derive(Default)]
struct Realized {
    ips: BTreeMap<IpPrefix, IpInfo>,
    policy: BTreeMap<PolicyPrefix, PolicyValue>,
    endpoints: BTreeMap<u32, Endpoint>,
    /// Interfaces whose links carry this agent's programs, and as what.
    attached: BTreeMap<u32, Role>,
}

/// Where a local pod stands after a sync.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointState {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub identity: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub audit: bool,
    /// "enforced", "no-interface", or what went wrong.
    pub state: String,
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
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    config_map: Array<MapData, Config>,
    stats: PerCpuArray<MapData, u64>,
    config: Config,
    realized: Realized,
    host_interfaces: HostInterfaces,
    strict_prefixes: Vec<String>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Datapath {
    /// Loads the classifier, creating or adopting the pinned maps under
    /// `dir`, and reads back what the maps already hold.
    pub fn open(dir: &Path, settings: &Settings) -> Result<Datapath> {
        if OBJECT.is_empty() {
            bail!("this build has no eBPF classifier (built with AYA_BUILD_SKIP=1); rebuild without it");
        }
        bpffs::ensure(dir)?;
        let maps_dir = dir.join(format!("v{LAYOUT_VERSION}"));
        std::fs::create_dir_all(&maps_dir)?;
        check_pinned_layout(&maps_dir)?;
        std::fs::create_dir_all(dir.join("links"))?;
        let buffer = settings.event_buffer_bytes;
        if !buffer.is_power_of_two() || buffer < 4096 {
            bail!("the event buffer size must be a power of two of at least 4096 bytes, not {buffer}");
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(maps::EVENTS, buffer)
            .load(OBJECT)
            .context("loading the classifier (is this a 6.6+ kernel with BTF, and are we root?)")?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::HOST_EGRESS] {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        let endpoints: HashMap<_, u32, Endpoint> = take(&mut ebpf, maps::ENDPOINTS)?;
        let ips: LpmTrie<_, IpKey, IpInfo> = take(&mut ebpf, maps::IPS)?;
        let hosts: HashMap<_, IpKey, IpInfo> = take(&mut ebpf, maps::HOSTS)?;
        let policy: LpmTrie<_, PolicyKey, PolicyValue> = take(&mut ebpf, maps::POLICY)?;
        let config_map: Array<_, Config> = take(&mut ebpf, maps::CONFIG)?;
        let stats = take(&mut ebpf, maps::STATS)?;
        let mut realized = Realized::default();
        for item in endpoints.iter() {
            let (k, v) = item?;
            realized.endpoints.insert(k, v);
        }
        for item in ips.iter() {
            let (k, v) = item?;
            realized.ips.insert(IpPrefix { prefix_len: k.prefix_len(), key: k.data() }, v);
        }
        for item in hosts.iter() {
            let (k, v) = item?;
            realized.ips.insert(IpPrefix { prefix_len: ip_key_full_len(k.family), key: k }, v);
        }
        for item in policy.iter() {
            let (k, v) = item?;
            realized.policy.insert(PolicyPrefix { prefix_len: k.prefix_len(), key: k.data() }, v);
        }
        let mut config = config_map.get(&0, 0).unwrap_or_default();
        config.flags =
            if settings.log_new_flows { config.flags | CFG_LOG_NEW_FLOWS } else { config.flags & !CFG_LOG_NEW_FLOWS };
        config.drop_event_interval_ns = settings.drop_event_interval.as_nanos() as u64;
        config.defer_mark = settings.defer_mark;
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
            host_interfaces: settings.host_interfaces.clone(),
            strict_prefixes: settings.strict_prefixes.clone(),
        };
        dp.write_config()?;
        Ok(dp)
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

    /// Makes the kernel hold `compiled`, with each local pod enforced on the
    /// interface its address is routed to.
    pub fn sync(&mut self, compiled: &Compiled, ifaces: &Interfaces) -> SyncReport {
        let mut report = SyncReport::default();
        let mut desired_eps: BTreeMap<u32, Endpoint> = BTreeMap::new();
        for ep in &compiled.endpoints {
            let ifindex = ep.ips.iter().find_map(|ip| ifaces.routes.get(ip).copied());
            let mut state = EndpointState {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                ips: ep.ips.clone(),
                interface: ifindex.and_then(|i| ifaces.names.get(&i).cloned()),
                ifindex,
                identity: ep.identity,
                ingress_isolated: ep.flags & palisade_common::EP_INGRESS_ISOLATED != 0,
                egress_isolated: ep.flags & palisade_common::EP_EGRESS_ISOLATED != 0,
                audit: ep.flags & palisade_common::EP_AUDIT != 0,
                state: "enforced".into(),
            };
            match ifindex {
                None => state.state = "no-interface: no host route to the pod's address".into(),
                Some(i) if desired_eps.contains_key(&i) => {
                    state.state = format!("conflict: interface {i} already serves another pod");
                }
                Some(i) => {
                    desired_eps.insert(i, Endpoint { identity: ep.identity, flags: ep.flags });
                }
            }
            report.endpoints.push(state);
        }

        // Strict mode: a pod interface seen before its pod is held closed.
        for (ifindex, name) in &ifaces.names {
            if !desired_eps.contains_key(ifindex) && self.strict_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                desired_eps.insert(*ifindex, Endpoint { identity: 0, flags: palisade_common::EP_PENDING });
                report.pending.push(name.clone());
            }
        }

        // Local pods' addresses carry their interface, so a hook that sees
        // a pod's packet elsewhere (after DNAT) finds the pod's endpoint.
        let mut desired_ips = compiled.ips.clone();
        for st in &report.endpoints {
            let Some(ifindex) = st.ifindex.filter(|i| desired_eps.contains_key(i)) else { continue };
            for ip in &st.ips {
                if let Some(info) = desired_ips.get_mut(&IpPrefix::from_net(ipnet::IpNet::from(*ip))) {
                    info.ifindex = ifindex;
                }
            }
        }
        let mut roles: BTreeMap<u32, Role> = desired_eps.keys().map(|i| (*i, Role::Pod)).collect();
        for (ifindex, name) in &ifaces.names {
            let wanted = match &self.host_interfaces {
                HostInterfaces::All => name != "lo",
                HostInterfaces::Named(names) => names.contains(name),
            };
            if wanted {
                roles.entry(*ifindex).or_insert(Role::Host);
            }
        }

        // Additions and changes first, deletions last: a packet judged in
        // between sees old and new entries side by side, never neither.
        self.upsert_policy(&compiled.policy, &mut report);
        self.upsert_ips(&desired_ips, &mut report);
        for (ifindex, ep) in &desired_eps {
            if self.realized.endpoints.get(ifindex) != Some(ep) {
                match self.endpoints.insert(ifindex, ep, 0) {
                    Ok(()) => {
                        self.realized.endpoints.insert(*ifindex, *ep);
                        report.changes += 1;
                    }
                    Err(e) => report.errors.push(format!("endpoint map, interface {ifindex}: {e}")),
                }
            }
        }
        let mut failed_attach = BTreeMap::new();
        for (ifindex, role) in &roles {
            let current = self.realized.attached.get(ifindex).copied();
            if current == Some(*role) {
                continue;
            }
            if current.is_some() {
                // The interface changed role (its pod came or went).
                if let Err(e) = self.detach(*ifindex) {
                    report.errors.push(format!("detaching from interface {ifindex}: {e:#}"));
                }
            }
            let name = ifaces.names.get(ifindex).cloned().unwrap_or_default();
            match self.attach(*ifindex, &name, *role) {
                Ok(()) => {
                    self.realized.attached.insert(*ifindex, *role);
                }
                Err(e) if *role == Role::Pod => {
                    report.errors.push(format!("attaching to {name} ({ifindex}): {e:#}"));
                    failed_attach.insert(*ifindex, format!("error: attaching failed: {e:#}"));
                }
                // Interfaces come and go under our feet (a veth being
                // deleted); the next sync settles it.
                Err(e) => tracing::debug!("host egress hook on {name} ({ifindex}): {e:#}"),
            }
        }
        for st in &mut report.endpoints {
            if let Some(msg) = st.ifindex.and_then(|i| failed_attach.get(&i)) {
                st.state = msg.clone();
            }
        }
        let gone: Vec<u32> = self.realized.attached.keys().copied().filter(|i| !roles.contains_key(i)).collect();
        for ifindex in gone {
            if let Err(e) = self.detach(ifindex) {
                report.errors.push(format!("detaching from interface {ifindex}: {e:#}"));
            }
            self.realized.attached.remove(&ifindex);
        }
        let stale_eps: Vec<u32> =
            self.realized.endpoints.keys().copied().filter(|i| !desired_eps.contains_key(i)).collect();
        for ifindex in stale_eps {
            match self.endpoints.remove(&ifindex) {
                Ok(()) => report.changes += 1,
                Err(e) => report.errors.push(format!("endpoint map, interface {ifindex}: {e}")),
            }
            self.realized.endpoints.remove(&ifindex);
        }
        // If the new state could not be written in full, keep the old one
        // beside it rather than enforce half of the new one.
        if report.errors.is_empty() {
            self.remove_stale(compiled, &mut report);
        }

        // Tracked flows decided under the old state get decided again.
        if report.changes > 0 {
            self.config.revision = self.config.revision.wrapping_add(1);
            if let Err(e) = self.write_config() {
                report.errors.push(format!("{e:#}"));
            }
        }
        report.revision = self.config.revision;
        report
    }

    fn upsert_policy(&mut self, desired: &BTreeMap<PolicyPrefix, PolicyValue>, report: &mut SyncReport) {
        for (k, v) in desired {
            if self.realized.policy.get(k) == Some(v) {
                continue;
            }
            match self.policy.insert(&LpmKey::new(k.prefix_len, k.key), v, 0) {
                Ok(()) => {
                    self.realized.policy.insert(*k, *v);
                    report.changes += 1;
                }
                Err(e) => {
                    report.errors.push(format!("policy map: {e}"));
                    return;
                }
            }
        }
    }

    fn upsert_ips(&mut self, desired: &BTreeMap<IpPrefix, IpInfo>, report: &mut SyncReport) {
        for (k, v) in desired {
            if self.realized.ips.get(k) == Some(v) {
                continue;
            }
            let written = if k.is_address() {
                self.hosts.insert(k.key, v, 0)
            } else {
                self.ips.insert(&LpmKey::new(k.prefix_len, k.key), v, 0)
            };
            match written {
                Ok(()) => {
                    self.realized.ips.insert(*k, *v);
                    report.changes += 1;
                }
                Err(e) => {
                    report.errors.push(format!("address map: {e}"));
                    return;
                }
            }
        }
    }

    fn remove_stale(&mut self, compiled: &Compiled, report: &mut SyncReport) {
        let stale: Vec<PolicyPrefix> =
            self.realized.policy.keys().filter(|k| !compiled.policy.contains_key(k)).copied().collect();
        for k in stale {
            match self.policy.remove(&LpmKey::new(k.prefix_len, k.key)) {
                Ok(()) => report.changes += 1,
                Err(e) => report.errors.push(format!("policy map: {e}")),
            }
            self.realized.policy.remove(&k);
        }
        let stale: Vec<IpPrefix> =
            self.realized.ips.keys().filter(|k| !compiled.ips.contains_key(k)).copied().collect();
        for k in stale {
            let removed = if k.is_address() {
                self.hosts.remove(&k.key)
            } else {
                self.ips.remove(&LpmKey::new(k.prefix_len, k.key))
            };
            match removed {
                Ok(()) => report.changes += 1,
                Err(e) => report.errors.push(format!("address map: {e}")),
            }
            self.realized.ips.remove(&k);
        }
    }

    fn link_path(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{ifindex}-{hook}"))
    }

    /// Puts this agent's programs on an interface: into the links pinned
    /// there by an earlier agent (an atomic swap), or into new pinned links
    /// that run before any other TCX program.
    fn attach(&mut self, ifindex: u32, name: &str, role: Role) -> Result<()> {
        for &(prog_name, attach_type, hook) in role.hooks() {
            let path = self.link_path(ifindex, hook);
            let prog: &mut SchedClassifier =
                self.ebpf.program_mut(prog_name).ok_or_else(|| anyhow!("program {prog_name} missing"))?.try_into()?;
            if path.exists() {
                let adopted = PinnedLink::from_pin(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(anyhow::Error::from))
                    .and_then(|link| prog.attach_to_link(link).map_err(anyhow::Error::from));
                match adopted {
                    Ok(id) => {
                        // The pin keeps the link; our handle can go.
                        drop(prog.take_link(id)?);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("pinned link {} unusable ({e:#}); attaching anew", path.display());
                        std::fs::remove_file(&path).ok();
                    }
                }
            }
            let id = prog
                .attach_with_options(name, attach_type, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .with_context(|| format!("attaching {prog_name}"))?;
            let link = prog.take_link(id)?;
            let fd: FdLink = link.try_into().context("TCX link")?;
            fd.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    /// Takes this agent's programs off an interface.
    fn detach(&mut self, ifindex: u32) -> Result<()> {
        for hook in ["from-pod", "to-pod", "host-egress"] {
            let path = self.link_path(ifindex, hook);
            if path.exists() {
                // Removing the last reference to a link detaches it.
                std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Removes pinned links for interfaces this agent does not enforce on
    /// (left by an earlier agent for pods that are gone).
    /// Also removes the maps of other layout versions: once this agent's
    /// programs run in every link, nothing uses them.
    pub fn collect_garbage(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.join("links")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let ifindex = name.split('-').next().and_then(|s| s.parse::<u32>().ok());
                if ifindex.is_none_or(|i| !self.realized.attached.contains_key(&i)) {
                    std::fs::remove_file(entry.path()).ok();
                }
            }
        }
        let current = format!("v{LAYOUT_VERSION}");
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let other_version = name.starts_with('v') && name[1..].parse::<u32>().is_ok() && name != current;
                if other_version {
                    tracing::info!("removing maps of layout {name}, replaced by {current}");
                    std::fs::remove_dir_all(entry.path()).ok();
                }
            }
        }
    }

    /// Sums of the per-CPU counters, indexed by [`palisade_common::stat`].
    pub fn counters(&self) -> Vec<u64> {
        pinned::sum_counters(&self.stats)
    }

    pub fn fill(&self) -> MapFill {
        MapFill {
            endpoints: (self.realized.endpoints.len(), capacity::ENDPOINTS),
            ips: (self.realized.ips.len(), capacity::IPS + capacity::HOSTS),
            policy: (self.realized.policy.len(), capacity::POLICY),
            // Counting the tracked flows walks the whole table: the agent
            // does it on a slow timer (see `pinned::Pinned::tracked_flows`).
            conntrack: (0, capacity::CONNTRACK),
        }
    }
}

/// Refuses maps pinned by a build whose layout differs from this one's
/// (same LAYOUT_VERSION, different sizes): aya would adopt them blindly, and
/// the programs would read them wrong.
fn check_pinned_layout(maps_dir: &Path) -> Result<()> {
    use palisade_common::*;
    use std::mem::size_of;
    let lpm = |data: usize| 4 + data;
    let expected: [(&str, usize, usize, u32); 9] = [
        (maps::ENDPOINTS, size_of::<u32>(), size_of::<Endpoint>(), capacity::ENDPOINTS),
        (maps::IPS, lpm(size_of::<IpKey>()), size_of::<IpInfo>(), capacity::IPS),
        (maps::HOSTS, size_of::<IpKey>(), size_of::<IpInfo>(), capacity::HOSTS),
        (maps::POLICY, lpm(size_of::<PolicyKey>()), size_of::<PolicyValue>(), capacity::POLICY),
        (maps::CONNTRACK, size_of::<CtKey>(), size_of::<CtEntry>(), capacity::CONNTRACK),
        (maps::SUPPRESS, size_of::<SuppressKey>(), size_of::<SuppressEntry>(), capacity::SUPPRESS),
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
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
