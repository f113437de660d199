//! Section 1: packet verdict latency of the kernel program alone, with
//! BPF_PROG_TEST_RUN on crafted, valid Ethernet/IP/TCP|UDP packets (right
//! lengths and checksums), against an empty TC program timed the same way.
//!
//! Two timing modes, both reporting the kernel's own per-run nanoseconds:
//! - repeat mode (`repeat` = 1e6 in one call) for paths a repeated packet
//!   keeps taking: conntrack hit, a denied flow's later packets (a flood:
//!   they drop on the flow's `CT_DENIED` entry, no event per packet),
//!   unmanaged interface;
//! - single mode (one run per call, a fresh flow each time) for new flows,
//!   allowed and denied, since a repeated packet would hit the conntrack
//!   entry its first run created. Its baseline is the empty program timed
//!   in single mode. A new denied flow sends its drop event; the bench
//!   drains them as the agent would, so the ring never fills.
//!
//! Every point is loaded at once, each in a datapath of its own, and the
//! repetitions go round the points in turn: rows measured minutes apart
//! differed by a third where nothing of theirs could (an unmanaged
//! interface's packets with and without ClusterNetworkPolicies).
//!
//! The floor: programs doing only the conntrack work every new flow does
//! (a lookup that misses, an insert), then also a denied flow's drop event
//! (`rawbpf::Floor`), timed in single mode beside the empty program, once
//! per repetition, so the new-flow cases can be read against what no
//! classifier with a kernel hash table for conntrack (and an event per
//! denied flow) can go below.
//!
//! A point with ClusterNetworkPolicies measures the same packets on the
//! cluster of a policies-only point plus generated CNPs (`cluster.rs`),
//! after checking that they validate, select the server and make its
//! ingress tiered; report.rs compares the two (issue 12).

use crate::cluster::{self, Cluster};
use crate::env::{self, BPFFS_PREFIX, Node, Pod};
use crate::rawbpf;
use crate::stats::Sample;
use anyhow::{Context, Result, bail};
use aya::maps::{MapData, RingBuf};
use palisade::datapath::netlink::Interfaces;
use palisade::datapath::{Datapath, HostInterfaces, Settings};
use palisade::policy::{Direction, compile};
use palisade_common::EP_INGRESS_TIERED;
use palisade_kit::packet::{L4, TCP_ACK, TCP_SYN, valid};
use palisade_kit::tc::{TC_ACT_SHOT, TC_ACT_UNSPEC, skb_ctx};
use serde::Serialize;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Config {
    pub repeat: u32,
    /// Fresh flows per single-mode measurement.
    pub flows: usize,
    pub reps: usize,
    /// (pods, policies, ClusterNetworkPolicies) points.
    pub points: Vec<(usize, usize, usize)>,
    pub cpu: usize,
}

pub const CASES: [&str; 7] =
    ["ct_hit", "new_specific", "new_wildcard", "new_many_peers", "new_denied", "denied_repeat", "unmanaged"];

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub pods: usize,
    pub policies: usize,
    pub cluster_policies: usize,
    pub family: &'static str,
    pub protocol: &'static str,
    pub case: &'static str,
    pub mode: &'static str,
    /// ns per packet, palisade.
    pub ns: Sample,
    /// ns per packet, the empty program in the same mode, same repetition.
    pub baseline_ns: Sample,
    /// palisade minus baseline, per repetition.
    pub added_ns: Sample,
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub pods: usize,
    pub policies: usize,
    pub cluster_policies: usize,
    /// How many of them select the server (whose ingress is measured).
    pub server_cluster_policies: usize,
    pub compile_ms: f64,
    pub sync_ms: f64,
    pub ip_entries: usize,
    pub policy_entries: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub cpu: usize,
    pub repeat: u32,
    pub flows: usize,
    /// Repetitions of every case at every point.
    pub reps: usize,
    pub points: Vec<Point>,
    pub measurements: Vec<Measurement>,
    /// What the conntrack work of a new flow costs alone, and with a drop
    /// event (None: not measured).
    pub floor: Option<Floor>,
}

/// The floor programs' ns added over the empty program in single mode,
/// each the median over the flows of a repetition, then over repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct Floor {
    /// Drawing the random key alone.
    pub key_ns: Sample,
    /// The key, and a lookup that misses.
    pub miss_ns: Sample,
    /// The key, the lookup, and the insert.
    pub insert_ns: Sample,
    /// `insert_ns` minus `key_ns` per repetition: the conntrack work alone.
    pub conntrack_ns: Sample,
    /// The key, the lookup, the insert and a drop event.
    pub event_ns: Sample,
    /// `event_ns` minus `key_ns` per repetition: a denied flow's floor.
    pub denied_ns: Sample,
}

/// A valid packet of `proto` (TCP or UDP) with `tcp_flags` (TCP only).
fn packet(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let l4 = if proto == palisade_common::PROTO_TCP { L4::Tcp(sport, dport, tcp_flags) } else { L4::Udp(sport, dport) };
    valid(src, dst, l4)
}

// ---------------------------------------------------------------------------

pub fn run(cfg: &Config) -> Result<Results> {
    let node = Node::create("k")?;
    let (c4, c6) = cluster::client_ips();
    let (s4, s6) = cluster::server_ips();
    let client = Pod::create(&node, "kcli", c4, c6)?;
    let server = Pod::create(&node, "ksrv", s4, s6)?;
    let spare = node.spare_veth("plbkspare")?;
    let mut ifaces = Interfaces::default();
    for (pod, name) in [(&client, &client.host_if), (&server, &server.host_if)] {
        let i = node.ifindex(name)?;
        ifaces.routes.insert(IpAddr::V4(pod.ip4), i);
        ifaces.routes.insert(IpAddr::V6(pod.ip6), i);
        ifaces.names.insert(i, name.clone());
    }
    let server_if = node.ifindex(&server.host_if)?;
    let points = cfg.points.clone();
    let (repeat, flows, reps, cpu) = (cfg.repeat, cfg.flows, cfg.reps, cfg.cpu);
    let res = env::run_in(&node.netns, Some(cpu), move || -> Result<Results> {
        let empty = rawbpf::empty_tc_program().context("loading the empty TC program")?;
        let mut floor = rawbpf::floor_programs().context("loading the floor programs")?;
        let mut floor_reps = Vec::with_capacity(reps);
        let mut out = Results { cpu, repeat, flows, reps, ..Default::default() };
        // Every point loaded side by side (a pin directory each), then
        // measured a repetition at a time in turn, each repetition starting
        // one point further on: the machine's drift over the section falls
        // on every point alike, so rows compare within one run.
        let mut loaded = Vec::with_capacity(points.len());
        for (i, &(pods, policies, cnps)) in points.iter().enumerate() {
            eprintln!("  kernel: loading {pods} pods, {policies} policies, {cnps} ClusterNetworkPolicies");
            loaded.push(Loaded::new(i, Size { pods, policies, cnps }, &ifaces)?);
        }
        let pc = PointCfg { repeat, flows };
        for rep in 0..reps {
            eprintln!("  kernel: repetition {} of {reps}", rep + 1);
            floor_reps.push(measure_floor(&empty, &mut floor, server_if, flows)?);
            for k in 0..loaded.len() {
                let at = (rep + k) % loaded.len();
                loaded[at].measure(&empty, server_if, spare, pc)?;
            }
        }
        for l in loaded {
            let (point, ms) = l.finish();
            out.points.push(point);
            out.measurements.extend(ms);
        }
        let of = |f: fn(&[f64; 4]) -> f64| Sample::of(&floor_reps.iter().map(f).collect::<Vec<_>>());
        out.floor = Some(Floor {
            key_ns: of(|r| r[0]),
            miss_ns: of(|r| r[1]),
            insert_ns: of(|r| r[2]),
            conntrack_ns: of(|r| r[2] - r[0]),
            event_ns: of(|r| r[3]),
            denied_ns: of(|r| r[3] - r[0]),
        });
        Ok(out)
    })??;
    drop((client, server));
    drop(node);
    Ok(res)
}

/// One repetition of the floor programs: ns added over the empty program
/// (key, miss, insert, event), each the median over `flows` single runs,
/// the five programs run in turn on every flow, the event drained after
/// each. The packet is a valid one; they never read it.
fn measure_floor(
    empty: &std::os::fd::OwnedFd,
    floor: &mut rawbpf::Floor,
    ifindex: u32,
    flows: usize,
) -> Result<[f64; 4]> {
    let ctx = skb_ctx(ifindex);
    let (c4, s4) = (cluster::client_ips().0, cluster::server_ips().0);
    let p = packet(IpAddr::V4(c4), IpAddr::V4(s4), palisade_common::PROTO_UDP, 40000, cluster::PORT_DENIED, 0);
    let mut ns: [Vec<f64>; 5] = Default::default();
    for _ in 0..flows {
        let progs = [empty, &floor.key, &floor.miss, &floor.insert, &floor.event];
        for (prog, v) in progs.iter().zip(ns.iter_mut()) {
            let (ret, d) = rawbpf::test_run(prog.as_fd(), &p, &ctx, 1)?;
            if ret != TC_ACT_UNSPEC {
                bail!("a floor program returned {ret:#x}");
            }
            v.push(f64::from(d));
        }
        let mut sent = 0;
        while floor.events.next().is_some() {
            sent += 1;
        }
        if sent != 1 {
            bail!("the event floor program sent {sent} events, not 1");
        }
    }
    let [mut base, mut key, mut miss, mut insert, mut event] = ns;
    let med = |v: &mut Vec<f64>| crate::stats::quantile(v, 0.5);
    let base = med(&mut base);
    Ok([med(&mut key) - base, med(&mut miss) - base, med(&mut insert) - base, med(&mut event) - base])
}

/// ((v6, protocol), case, per repetition (palisade ns, baseline ns)).
type Acc = ((bool, u8), &'static str, Vec<(f64, f64)>);

/// The generated cluster of a point.
#[derive(Clone, Copy)]
struct Size {
    pods: usize,
    policies: usize,
    cnps: usize,
}

#[derive(Clone, Copy)]
struct PointCfg {
    repeat: u32,
    flows: usize,
}

/// The source port of the repeat-mode flows: below the fresh flows' (see
/// `Loaded::flows_used`), so no fresh flow is one of them.
const REPEAT_SPORT: u16 = 1000;

/// A point's cluster compiled and in force in a datapath of its own,
/// with what its repetitions measured so far.
struct Loaded {
    /// Its size is the point's (pods, policies, cluster_policies).
    point: Point,
    dir: PathBuf,
    // Before `dp`: the ring buffer is the datapath's map.
    events: RingBuf<MapData>,
    dp: Datapath,
    /// (family, proto) -> case -> per-rep (palisade ns, baseline ns)
    acc: Vec<Acc>,
    /// Fresh flows used so far per (family, protocol), each case's flow
    /// `n` from source port 1024 + n: none is used twice in a run, or a
    /// "new" flow would hit the conntrack entry an earlier repetition
    /// left (a TCP entry lives six hours).
    flows_used: [u32; 4],
}

impl Loaded {
    /// Compiles the point's cluster and syncs it into a datapath pinned
    /// under a directory of its own (the `index`th).
    fn new(index: usize, size: Size, ifaces: &Interfaces) -> Result<Loaded> {
        let Size { pods, policies, cnps } = size;
        let cluster = Cluster::new(pods, policies).with_cluster_policies(cnps);
        // Strict: any input error or warning (a CNP that does not validate) fails.
        let input = cluster.input()?;
        let server_cnps = cluster::cluster_policies_selecting_server(&input);
        if cnps > 0 && server_cnps == 0 {
            bail!("none of the {cnps} ClusterNetworkPolicies selects the server");
        }
        let t = Instant::now();
        let compiled = compile(&input, &cluster::policy_node());
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let dir = PathBuf::from(format!("{BPFFS_PREFIX}kernel-{index}"));
        env::track_bpffs(&dir);
        let _ = palisade::datapath::uninstall(&dir);
        let settings = Settings {
            log_new_flows: false,
            drop_event_interval: Duration::from_secs(1),
            drop_event_budget: 0,
            event_buffer_bytes: 1 << 22,
            defer_mark: 0,
            judged_mark: 0,
            host_interfaces: HostInterfaces::Named(vec![]),
            strict_prefixes: vec![],
        };
        let mut dp = Datapath::open(&dir, &settings)?;
        let events = dp.take_events()?;
        let t = Instant::now();
        let report = dp.sync(&compiled, ifaces);
        let sync_ms = t.elapsed().as_secs_f64() * 1e3;
        if !report.errors.is_empty() {
            bail!("sync: {:?}", report.errors);
        }
        if report.endpoints.iter().any(|e| e.state != palisade::state::Enforcement::Enforced) {
            bail!("endpoints not enforced: {:?}", report.endpoints);
        }
        let tiered = compiled.endpoints.iter().find(|e| e.name == "server").map(|e| e.flags & EP_INGRESS_TIERED != 0);
        if tiered != Some(cnps > 0) {
            bail!("the server's ingress tiered: {tiered:?}, with {cnps} ClusterNetworkPolicies");
        }
        let point = Point {
            pods,
            policies,
            cluster_policies: cnps,
            server_cluster_policies: server_cnps,
            compile_ms,
            sync_ms,
            ip_entries: compiled.ips.len(),
            policy_entries: compiled.policy.len(),
        };
        Ok(Loaded { point, dir, events, dp, acc: Vec::new(), flows_used: [0; 4] })
    }

    /// One repetition of every case.
    fn measure(&mut self, empty: &std::os::fd::OwnedFd, server_if: u32, spare_if: u32, pc: PointCfg) -> Result<()> {
        let prog = self.dp.classifier(Direction::Ingress)?;
        let prog_fd = prog.fd()?.as_fd();
        let empty_fd = empty.as_fd();
        let server_ctx = skb_ctx(server_if);
        let spare_ctx = skb_ctx(spare_if);
        let remote_count = self.point.pods.saturating_sub(2).max(1);
        let (acc, events) = (&mut self.acc, &mut self.events);
        let mut push = |key: (bool, u8), case: &'static str, v: (f64, f64)| {
            if let Some(e) = acc.iter_mut().find(|e| e.0 == key && e.1 == case) {
                e.2.push(v);
            } else {
                acc.push((key, case, vec![v]));
            }
        };
        for v6 in [false, true] {
            for proto in [palisade_common::PROTO_TCP, palisade_common::PROTO_UDP] {
                let key = (v6, proto);
                let cli = cluster::ip_of(cluster::client_ips(), v6);
                let srv = cluster::ip_of(cluster::server_ips(), v6);
                let remote0 = cluster::ip_of(cluster::remote_ips(0), v6);
                let run = |fd, c: &[u8], p: &[u8], n: u32, want: Option<u32>| -> Result<f64> {
                    let (ret, d) = rawbpf::test_run(fd, p, c, n)?;
                    if let Some(w) = want
                        && ret != w
                    {
                        bail!("unexpected verdict {ret:#x} (wanted {w:#x})");
                    }
                    Ok(f64::from(d))
                };
                // Repeat mode.
                let established = packet(cli, srv, proto, REPEAT_SPORT, cluster::PORT_RR, TCP_ACK);
                let base = run(empty_fd, &server_ctx, &established, pc.repeat, Some(TC_ACT_UNSPEC))?;
                run(prog_fd, &server_ctx, &established, 1, Some(TC_ACT_UNSPEC))?;
                let hit = run(prog_fd, &server_ctx, &established, pc.repeat, Some(TC_ACT_UNSPEC))?;
                push(key, "ct_hit", (hit, base));
                let denied = packet(remote0, srv, proto, REPEAT_SPORT, cluster::PORT_DENIED, TCP_SYN);
                let base = run(empty_fd, &server_ctx, &denied, pc.repeat, None)?;
                run(prog_fd, &server_ctx, &denied, 1, Some(TC_ACT_SHOT))?;
                let d = run(prog_fd, &server_ctx, &denied, pc.repeat, Some(TC_ACT_SHOT))?;
                push(key, "denied_repeat", (d, base));
                let base = run(empty_fd, &spare_ctx, &denied, pc.repeat, None)?;
                let u = run(prog_fd, &spare_ctx, &denied, pc.repeat, Some(TC_ACT_UNSPEC))?;
                push(key, "unmanaged", (u, base));
                // Single mode: one fresh flow per call, each case in a pass
                // of its own over the flows, every run just after the empty
                // program's (its baseline): run after another case, a case
                // met the caches that one left (the denied case after a
                // different peer per flow: +65 ns at 10k and 50k pods,
                // nothing at 10, where those peers stay in cache).
                let used = &mut self.flows_used[usize::from(v6) * 2 + usize::from(proto != palisade_common::PROTO_TCP)];
                let first = *used;
                *used += pc.flows as u32;
                if *used > 64000 {
                    bail!("more fresh flows than source ports: lower the repetitions or the flows");
                }
                // (case, the client (None: a different cluster pod per
                // flow), the port, the verdict): the client to a port the
                // rule naming it allows; to a port only the wildcard rule
                // allows; the same from a different pod every flow; a
                // cluster pod to a port no rule allows (both policy probes
                // miss, and the flow's drop event is sent).
                let single = [
                    ("new_specific", Some(cli), cluster::PORT_IPERF, TC_ACT_UNSPEC),
                    ("new_wildcard", Some(cli), cluster::PORT_ANY_PEER, TC_ACT_UNSPEC),
                    ("new_many_peers", None, cluster::PORT_ANY_PEER, TC_ACT_UNSPEC),
                    ("new_denied", Some(remote0), cluster::PORT_DENIED, TC_ACT_SHOT),
                ];
                for (case, client, dport, verdict) in single {
                    let mut base_s = Vec::with_capacity(pc.flows);
                    let mut case_s = Vec::with_capacity(pc.flows);
                    for i in 0..pc.flows {
                        let sport = (1024 + first + i as u32) as u16;
                        let src = client.unwrap_or_else(|| cluster::ip_of(cluster::remote_ips(i % remote_count), v6));
                        let p = packet(src, srv, proto, sport, dport, TCP_SYN);
                        base_s.push(run(empty_fd, &server_ctx, &p, 1, None)?);
                        case_s.push(run(prog_fd, &server_ctx, &p, 1, Some(verdict))?);
                        while events.next().is_some() {}
                    }
                    let med = |mut v: Vec<f64>| crate::stats::quantile(&mut v, 0.5);
                    push(key, case, (med(case_s), med(base_s)));
                }
            }
        }
        Ok(())
    }

    /// The point and its measurements; its datapath unloaded and unpinned.
    fn finish(self) -> (Point, Vec<Measurement>) {
        let Loaded { point, dir, events, dp, acc, .. } = self;
        let (pods, policies, cnps) = (point.pods, point.policies, point.cluster_policies);
        drop(events);
        drop(dp);
        let _ = palisade::datapath::uninstall(&dir);
        let mut out = Vec::new();
        for ((v6, proto), case, v) in acc {
            let ns = Sample::of(&v.iter().map(|x| x.0).collect::<Vec<_>>());
            let baseline_ns = Sample::of(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            let added_ns = Sample::of(&v.iter().map(|x| x.0 - x.1).collect::<Vec<_>>());
            let ratio = ns.median / baseline_ns.median;
            out.push(Measurement {
                pods,
                policies,
                cluster_policies: cnps,
                family: if v6 { "IPv6" } else { "IPv4" },
                protocol: if proto == palisade_common::PROTO_TCP { "TCP" } else { "UDP" },
                case,
                mode: if case.starts_with("new_") { "single" } else { "repeat" },
                ns,
                baseline_ns,
                added_ns,
                ratio,
            });
        }
        (point, out)
    }
}
