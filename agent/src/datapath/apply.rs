//! The kernel half of a sync: makes the maps and links equal to a
//! [`plan::Plan`], writing only the differences, in an order that never
//! opens (see [`Datapath::sync`]).

use super::netlink::Interfaces;
use super::plan::{self, Hold, Hook, Plan};
use super::{Datapath, PolicyRecord, SyncReport, batch};
use crate::policy::compile::Changes;
use crate::policy::{Compiled, IpPrefix, PolicyPrefix};
use crate::state::Enforcement;
use anyhow::{Context, Result, anyhow};
use aya::maps::lpm_trie::Key as LpmKey;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use palisade_common::{EP_PENDING, EP_SKIPS, IpInfo, IpKey, PolicyValue, programs};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// What one sync's policy writes did (see [`Datapath::upsert_policy`]).
#[derive(Default)]
struct Upsert {
    /// Policy classes whose entries do not all fit.
    short: BTreeSet<u32>,
    /// Per class, the allowing entries written, with what each replaced.
    allowed: HashMap<u32, Vec<(PolicyPrefix, Option<PolicyValue>)>>,
}

/// What one sync does to the policy map: each entry compared once with
/// the agent's record, and sorted by what the sync's steps do with it.
#[derive(Default)]
struct PolicyWork {
    /// Entries no longer wanted, allowing and denying.
    stale_allows: Vec<PolicyPrefix>,
    stale_denies: Vec<PolicyPrefix>,
    /// Entries to write (new or changed), denying and allowing.
    denies: Vec<(PolicyPrefix, PolicyValue)>,
    allows: Vec<(PolicyPrefix, PolicyValue)>,
}

impl PolicyWork {
    /// The entries a compile changed alone, with their values now.
    fn of_changes(changed: &[(PolicyPrefix, Option<PolicyValue>)], have: &PolicyRecord) -> Self {
        let mut work = PolicyWork::default();
        for (k, want) in changed {
            work.compare(*k, want.as_ref(), have.get(k));
        }
        work
    }

    /// Every entry either side holds.
    fn of_all(want: &BTreeMap<PolicyPrefix, PolicyValue>, have: &PolicyRecord) -> Self {
        let mut work = PolicyWork::default();
        for (k, v) in want {
            work.compare(*k, Some(v), have.get(k));
        }
        for (k, v) in have {
            if !want.contains_key(k) {
                work.compare(*k, None, Some(v));
            }
        }
        // The record is unordered; removals go in key order, as the rest.
        work.stale_allows.sort_unstable();
        work.stale_denies.sort_unstable();
        work
    }

    fn compare(&mut self, k: PolicyPrefix, want: Option<&PolicyValue>, have: Option<&PolicyValue>) {
        match (want, have) {
            (None, Some(h)) if h.denies() => self.stale_denies.push(k),
            (None, Some(_)) => self.stale_allows.push(k),
            (Some(w), h) if h != Some(w) && w.denies() => self.denies.push((k, *w)),
            (Some(w), h) if h != Some(w) => self.allows.push((k, *w)),
            _ => {}
        }
    }
}

/// An address map entry.
type Address = (IpPrefix, IpInfo);

/// (program, TC hook, pin name suffix) of a hook.
fn program(hook: Hook) -> (&'static str, TcAttachType, &'static str) {
    match hook {
        Hook::FromPod => (programs::FROM_POD, TcAttachType::Ingress, "from-pod"),
        Hook::ToPod => (programs::TO_POD, TcAttachType::Egress, "to-pod"),
        Hook::HostEgress => (programs::HOST_EGRESS, TcAttachType::Egress, "host-egress"),
    }
}

const HOOKS: [Hook; 3] = [Hook::HostEgress, Hook::ToPod, Hook::FromPod];

impl Datapath {
    /// Makes the kernel hold `compiled`, with each local pod enforced on the
    /// interface its address is routed to.
    ///
    /// Order, so that no packet is judged more openly than both the old and
    /// the new state would:
    /// 1. Revoked allows (stale policy entries) go first, whatever else
    ///    fails: a revoked allow never stays in force. A rule whose entries
    ///    merely move may drop a packet until step 4 rewrites them: briefly
    ///    closed, never open.
    /// 2. New denying policy entries (a broad entry turning to allow never
    ///    goes in before the narrower deny that carves it out). The pods of
    ///    a class whose revoked allow stays or whose denies do not fit are
    ///    held closed in the kernel now, before any address moves.
    /// 3. New addresses, then stale ones go: a peer is judged by its old
    ///    or its new identity, never by neither (a removed exception would
    ///    fall back to a broader, allowed CIDR). If the new ones do not
    ///    fit, every pod is held closed in the kernel, stale ones go and
    ///    the rest is retried; if they still do not fit, or a stale one
    ///    cannot be removed, every pod is held closed. Then endpoint
    ///    entries (flags, class, holds); those that change are held
    ///    closed while the addresses move. All before any new allow: when
    ///    a group splits, the number its pods had may go to the other
    ///    part, and the pods and addresses leaving it must not be judged
    ///    by that part's allows meanwhile; an address whose pod is gone
    ///    keeps its numbers until it goes, and a new allow may admit
    ///    them. On their new numbers, the denies are in force and the
    ///    allows not yet: briefly closed, never open.
    /// 4. New allowing policy entries. A policy class whose entries
    ///    cannot all be written (the map is full) has the allows this sync
    ///    wrote for it taken back and its pods held closed
    ///    ([`palisade_common::EP_PENDING`]), never left half-enforced. Then
    ///    links, then the netfilter hooks' rules.
    /// 5. Endpoints and links of pods that are gone (their endpoint
    ///    entries in step 3 when the map refuses a new one: gone, an
    ///    interface is not judged, as after the sync).
    /// 6. Revoked denies (ClusterNetworkPolicy Deny entries: a missing
    ///    entry means what the endpoint's flags, written in step 3, say),
    ///    except those of classes held closed; then the revision bump that
    ///    re-judges tracked flows, after any change (rewritten by every
    ///    sync until the kernel has it).
    pub fn sync(&mut self, compiled: &Compiled, ifaces: &Interfaces) -> SyncReport {
        self.sync_changes(compiled, ifaces, None)
    }

    /// [`Datapath::sync`], told what changed since the state the last
    /// sync was given (the compiler knows): when that sync left the policy
    /// map whole, only the changed policy entries are compared and
    /// written, not the whole map; when it left the address maps whole,
    /// likewise the changed address entries and those of local addresses
    /// whose interface changed (none: the address maps are not looked
    /// at). None: compare everything.
    pub fn sync_changes(&mut self, compiled: &Compiled, ifaces: &Interfaces, changes: Option<&Changes>) -> SyncReport {
        let mut plan = plan::plan(compiled, ifaces, &self.host_interfaces, &self.strict_prefixes);
        let local = plan.local_addresses();
        // The address entries to look at: those the compiler changed and
        // those of local addresses whose interface changed, when the last
        // sync left the maps whole; else (None) all.
        let ip_keys: Option<BTreeSet<IpPrefix>> = match (changes.and_then(|c| c.ips.as_ref()), &self.ips_whole) {
            (Some(keys), Some(was)) => {
                let (was, now): (BTreeSet<_>, BTreeSet<_>) = (was.iter().collect(), local.iter().collect());
                let moved = was.symmetric_difference(&now).map(|(ip, _)| IpPrefix::from_net(ipnet::IpNet::from(*ip)));
                Some(keys.iter().copied().chain(moved).collect())
            }
            _ => None,
        };
        let ips_same = ip_keys.as_ref().is_some_and(BTreeSet::is_empty);
        let mut report = SyncReport::default();
        let changed = changes.and_then(|c| c.policy.as_ref()).filter(|_| self.policy_whole);
        let errors = report.errors.len();
        let work = match changed {
            Some(changed) => PolicyWork::of_changes(changed, &self.realized.entries.policy),
            None => PolicyWork::of_all(&compiled.policy, &self.realized.entries.policy),
        };
        // A class whose stale allow stays (its removal failed) is held
        // closed: an address about to take a number that allow names
        // (a group's, a namespace's) must not pass by it. So is a class
        // whose new denies do not fit: an address moving to its new
        // number, or judged by its CIDR once its stale entry goes, must
        // not pass where the missing deny would stop it (a tiered class's
        // miss allows). Both holds are in the kernel before any address
        // moves.
        let stuck = self.remove_policy(work.stale_allows, &mut report);
        let mut up = Upsert::default();
        self.upsert_policy(work.denies, &mut up, &mut report);
        let mut policy_errors = report.errors.len() - errors;
        if !stuck.is_empty() {
            plan.hold_closed(&Hold::Classes(stuck), "a stale policy entry could not be removed");
        }
        const FULL: &str = "the policy map is full";
        if !up.short.is_empty() {
            plan.hold_closed(&Hold::Classes(up.short.clone()), FULL);
        }
        // Addresses and endpoints take their new numbers before any allow
        // goes in: a number a group leaves may now stand for another group,
        // whose allows must not judge the pods and addresses still on it.
        // Endpoints that change are held while the addresses move: with
        // their old flags, a peer on a new number that no entry names yet
        // could pass.
        self.hold_endpoints(&plan, false, &mut report);
        let mut ips_whole = ips_same
            || match &ip_keys {
                Some(keys) => self.upsert_ips(plan::addresses_at(compiled, &local, keys), &mut report),
                None => self.upsert_ips(plan::addresses(compiled, &local), &mut report),
            };
        if !ips_whole {
            // Room first: every stale entry goes, then all are tried again.
            // Every pod is held meanwhile: a stale exception gone before
            // the entry that replaces it is written would leave its
            // addresses to a broader CIDR.
            self.hold_endpoints(&plan, true, &mut report);
            self.remove_stale_ips(&compiled.ips, None, &mut report);
            ips_whole = self.upsert_ips(plan::addresses(compiled, &local), &mut report);
        }
        if !ips_whole {
            report.errors.push(format!(
                "address maps full ({} CIDRs, {} addresses): every pod is held closed",
                self.sizes.ips, self.sizes.hosts
            ));
            plan.hold_closed(&Hold::All, "the address maps are full");
        }
        // Addresses leaving go before any allow is written: until they go
        // they keep their numbers, which a new allow may admit (a pod that
        // is gone would pass by a rule that now admits its group or its
        // namespace). Gone, an address is judged by its CIDR, as the new
        // state judges it. One that stays holds every pod closed.
        if !ips_same {
            let errors = report.errors.len();
            self.remove_stale_ips(&compiled.ips, ip_keys.as_ref(), &mut report);
            let removed = report.errors.len() == errors;
            if !removed {
                plan.hold_closed(&Hold::All, "a leaving address could not be removed");
            }
            self.ips_whole = (ips_whole && removed).then_some(local);
        }
        self.write_endpoints(&plan, &mut report);
        let short_of_denies = up.short.len();
        let before_allows = report.errors.len();
        self.upsert_policy(work.allows, &mut up, &mut report);
        policy_errors += report.errors.len() - before_allows;
        let short = up.short;
        let mut policy_whole = short.is_empty() && policy_errors == 0;
        if !short.is_empty() {
            let ids: Vec<String> = short.iter().map(u32::to_string).collect();
            report.errors.push(format!(
                "policy map full ({} entries of one port, {} others): the entries of policy classes {} do not fit; \
                 their pods are held closed",
                self.sizes.policy_ports,
                self.sizes.policy,
                ids.join(", ")
            ));
        }
        // Classes short of allows: those allows were taken back, so their
        // pods were never open; now they are held.
        if short.len() > short_of_denies {
            plan.hold_closed(&Hold::Classes(short.clone()), FULL);
            self.write_endpoints(&plan, &mut report);
        }
        self.write_links(&mut plan, ifaces, &mut report);
        if let Some(hooks) = &mut self.netfilter
            && let Err(e) = hooks.ensure()
        {
            report.errors.push(format!(
                "netfilter hooks: {e:#}; Service traffic to the node itself and Service traffic SNATed to a node \
                 address are not judged"
            ));
        }
        let errors = report.errors.len();
        let held = |k: &PolicyPrefix| short.contains(&u32::from_be_bytes(k.key.local));
        // (A stale deny that stays only closes.)
        self.remove_policy(work.stale_denies.into_iter().filter(|k| !held(k)).collect(), &mut report);
        policy_whole &= report.errors.len() == errors;
        self.policy_whole = policy_whole;

        // Tracked flows decided under the old state get decided again.
        if report.changes > 0 || self.config_stale {
            self.config.revision = self.config.revision.wrapping_add(1);
            let written = self.write_config();
            self.config_stale = written.is_err();
            if let Err(e) = written {
                report.errors.push(format!("{e:#}"));
            }
        }
        report.revision = self.config.revision;
        report.endpoints = plan.endpoints;
        // A pending interface whose hold the kernel refused is not held
        // (its error is in the report).
        let held = |name: &String| ifaces.names.iter().any(|(i, n)| n == name && self.entry_written(&plan.entries, *i));
        report.pending = plan.pending.iter().filter(|n| held(n)).cloned().collect();
        report
    }

    /// Interfaces whose endpoint entry is in the kernel now.
    pub fn enforced_interfaces(&self) -> Vec<u32> {
        self.realized.entries.endpoints.keys().copied().collect()
    }

    /// The policy class of each interface's endpoint entry in the kernel
    /// (what an earlier agent left, or the last sync wrote).
    pub fn endpoint_classes(&self) -> BTreeMap<u32, u32> {
        self.realized.entries.endpoints.iter().map(|(i, e)| (*i, e.class)).collect()
    }

    /// Removes `stale` entries; the classes of those it could not remove.
    fn remove_policy(&mut self, stale: Vec<PolicyPrefix>, report: &mut SyncReport) -> BTreeSet<u32> {
        let mut stuck = BTreeSet::new();
        let mut next = 0;
        while next < stale.len() {
            let result = self.policy.delete(&stale[next..]);
            let done = result.as_ref().map_or_else(|s| s.done, |()| stale.len() - next);
            for k in &stale[next..next + done] {
                self.realized.entries.policy.remove(k);
            }
            report.changes += done;
            next += done;
            if let Err(s) = result {
                report.errors.push(format!("policy map: removing an entry: {}", s.error));
                stuck.insert(u32::from_be_bytes(stale[next].key.local));
                next += 1;
            }
        }
        stuck
    }

    /// Writes `todo` (entries that differ from the record), in batches. A policy class
    /// whose entries cannot all be written goes in `up.short`; the
    /// allowing entries this sync wrote for it are taken back (new ones
    /// removed, changed ones restored): its pods are held closed anyway,
    /// nothing it allowed stays open until the hold is written, and the
    /// room goes to classes that fit. Its denies stay: they only close.
    fn upsert_policy(&mut self, todo: Vec<(PolicyPrefix, PolicyValue)>, up: &mut Upsert, report: &mut SyncReport) {
        let class = |k: &PolicyPrefix| u32::from_be_bytes(k.key.local);
        let mut next = 0;
        while next < todo.len() {
            // The next batch: entries of classes not found short yet.
            let mut picked = Vec::new();
            while next < todo.len() && picked.len() < batch::BATCH {
                if !up.short.contains(&class(&todo[next].0)) {
                    picked.push(next);
                }
                next += 1;
            }
            let entries: Vec<(PolicyPrefix, PolicyValue)> = picked.iter().map(|&i| todo[i]).collect();
            let result = self.policy.update(&entries);
            let done = result.as_ref().map_or_else(|s| s.done, |()| picked.len());
            for &i in &picked[..done] {
                let (k, v) = todo[i];
                let old = self.realized.entries.policy.insert(k, v);
                if !v.denies() {
                    up.allowed.entry(class(&k)).or_default().push((k, old));
                }
            }
            report.changes += done;
            let Err(stopped) = result else { continue };
            // The entry that failed: its class is short. Those after it
            // in this batch go again (less the short class's).
            let failed = class(&todo[picked[done]].0);
            next = picked[done] + 1;
            tracing::debug!("policy map, class {failed}: {}", stopped.error);
            up.short.insert(failed);
            for (k, old) in up.allowed.remove(&failed).unwrap_or_default() {
                let undone = match old {
                    Some(old) => self.policy.update(&[(k, old)]),
                    None => self.policy.delete(&[k]),
                };
                match (undone, old) {
                    (Ok(()), Some(old)) => {
                        self.realized.entries.policy.insert(k, old);
                    }
                    (Ok(()), None) => {
                        self.realized.entries.policy.remove(&k);
                    }
                    (Err(s), _) => report.errors.push(format!("policy map: taking back an entry: {}", s.error)),
                }
            }
        }
    }

    /// Writes the address entries that differ (single addresses in the
    /// hash map, shorter prefixes in the trie), in batches; false if some
    /// did not fit.
    fn upsert_ips(&mut self, desired: impl Iterator<Item = Address>, report: &mut SyncReport) -> bool {
        let (hosts, cidrs): (Vec<Address>, Vec<Address>) =
            desired.filter(|(k, v)| self.realized.entries.ips.get(k) != Some(v)).partition(|(k, _)| k.is_address());
        let values = |todo: &[Address]| todo.iter().map(|(_, v)| *v).collect::<Vec<_>>();
        let host_keys: Vec<IpKey> = hosts.iter().map(|(k, _)| k.key).collect();
        let written = batch::update(&self.hosts, &host_keys, &values(&hosts));
        let cidr_keys: Vec<LpmKey<IpKey>> = cidrs.iter().map(|(k, _)| LpmKey::new(k.prefix_len, k.key)).collect();
        let written = written.and_then(|()| {
            batch::update(&self.ips, &cidr_keys, &values(&cidrs))
                .map_err(|s| batch::Stopped { done: hosts.len() + s.done, error: s.error })
        });
        let done = written.as_ref().map_or_else(|s| s.done, |()| hosts.len() + cidrs.len());
        for (k, v) in hosts.iter().chain(&cidrs).take(done) {
            self.realized.entries.ips.insert(*k, *v);
        }
        report.changes += done;
        match written {
            Ok(()) => true,
            Err(s) => {
                tracing::debug!("address map: {}", s.error);
                false
            }
        }
    }

    /// The address entries in the kernel no longer wanted (among `keys`,
    /// if given).
    fn leaving_ips<'a>(
        &'a self,
        desired: &'a BTreeMap<IpPrefix, IpInfo>,
        keys: Option<&'a BTreeSet<IpPrefix>>,
    ) -> impl Iterator<Item = (&'a IpPrefix, &'a IpInfo)> + 'a {
        let held: Box<dyn Iterator<Item = (&IpPrefix, &IpInfo)>> = match keys {
            Some(keys) => Box::new(keys.iter().filter_map(|k| self.realized.entries.ips.get_key_value(k))),
            None => Box::new(self.realized.entries.ips.iter()),
        };
        held.filter(|(k, _)| !desired.contains_key(k))
    }

    /// Removes the address entries no longer wanted (among `keys`, if
    /// given): CIDRs first, then single addresses (the classifier looks
    /// for an address before its CIDR, so an address is never judged by a
    /// stale CIDR in between).
    fn remove_stale_ips(
        &mut self,
        desired: &BTreeMap<IpPrefix, IpInfo>,
        keys: Option<&BTreeSet<IpPrefix>>,
        report: &mut SyncReport,
    ) {
        let (hosts, cidrs): (Vec<IpPrefix>, Vec<IpPrefix>) =
            self.leaving_ips(desired, keys).map(|(k, _)| *k).partition(IpPrefix::is_address);
        let cidr_keys: Vec<LpmKey<IpKey>> = cidrs.iter().map(|k| LpmKey::new(k.prefix_len, k.key)).collect();
        let mut next = 0;
        while next < cidrs.len() {
            let result = batch::delete(&self.ips, &cidr_keys[next..]);
            next += self.removed_ips(&cidrs[next..], result, report);
        }
        let host_keys: Vec<IpKey> = hosts.iter().map(|k| k.key).collect();
        let mut next = 0;
        while next < hosts.len() {
            let result = batch::delete(&self.hosts, &host_keys[next..]);
            next += self.removed_ips(&hosts[next..], result, report);
        }
    }

    /// Notes a batch of `stale` addresses removed; how many were tried
    /// (those removed, and the one that failed).
    fn removed_ips(
        &mut self,
        stale: &[IpPrefix],
        result: Result<(), batch::Stopped>,
        report: &mut SyncReport,
    ) -> usize {
        let done = result.as_ref().map_or_else(|s| s.done, |()| stale.len());
        for k in &stale[..done] {
            self.realized.entries.ips.remove(k);
        }
        report.changes += done;
        match result {
            Ok(()) => done,
            Err(s) => {
                report.errors.push(format!("address map: removing an entry: {}", s.error));
                done + 1
            }
        }
    }

    /// Holds closed ([`EP_PENDING`], its class kept) each endpoint entry
    /// in the kernel that the plan changes (but in [`EP_SKIPS`] alone; a
    /// hold the plan adds is a change), or with `all` every one, until
    /// [`Datapath::write_endpoints`] writes the new one. Plain packets of
    /// tracked flows still pass (the revision is bumped at the end of the
    /// sync); new flows drop meanwhile.
    fn hold_endpoints(&mut self, plan: &Plan, all: bool, report: &mut SyncReport) {
        use palisade_common::Endpoint;
        let changes = |ifindex: &u32, old: &Endpoint| {
            let skips_alone = |ep: &Endpoint| Endpoint { flags: ep.flags & !EP_SKIPS | old.flags & EP_SKIPS, ..*ep };
            plan.entries.get(ifindex).is_some_and(|ep| *old != skips_alone(ep))
        };
        let held: Vec<(u32, Endpoint)> = (self.realized.entries.endpoints.iter())
            .filter(|(ifindex, old)| old.flags & EP_PENDING == 0 && (all || changes(ifindex, old)))
            .map(|(ifindex, old)| (*ifindex, Endpoint { flags: old.flags | EP_PENDING, ..*old }))
            .collect();
        for (ifindex, ep) in held {
            self.write_endpoint(ifindex, ep, report);
        }
    }

    /// Writes the endpoint entries that differ (those of interfaces no pod
    /// is enforced on go in [`Datapath::write_links`]). If the map refuses
    /// some (it is full), those of interfaces no pod is enforced on go
    /// first, as they would at the end of the sync, and the refused are
    /// tried again: a new pod's interface is not left unjudged for a sync
    /// while a gone pod's entry takes its room.
    fn write_endpoints(&mut self, plan: &Plan, report: &mut SyncReport) {
        let errors = report.errors.len();
        self.write_differing_endpoints(plan, report);
        if report.errors.len() > errors {
            report.errors.truncate(errors);
            self.remove_stale_endpoints(plan, report);
            self.write_differing_endpoints(plan, report);
        }
    }

    fn write_differing_endpoints(&mut self, plan: &Plan, report: &mut SyncReport) {
        for (ifindex, ep) in &plan.entries {
            if !self.entry_written(&plan.entries, *ifindex) {
                self.write_endpoint(*ifindex, *ep, report);
            }
        }
    }

    /// The kernel holds the planned endpoint entry for `ifindex` (`planned`:
    /// the plan's entries; none planned, none held).
    fn entry_written(&self, planned: &BTreeMap<u32, palisade_common::Endpoint>, ifindex: u32) -> bool {
        self.realized.entries.endpoints.get(&ifindex) == planned.get(&ifindex)
    }

    /// Removes the endpoint entries of interfaces no pod is enforced on.
    fn remove_stale_endpoints(&mut self, plan: &Plan, report: &mut SyncReport) {
        let stale: Vec<u32> =
            self.realized.entries.endpoints.keys().copied().filter(|i| !plan.entries.contains_key(i)).collect();
        for ifindex in stale {
            // Kept in the record if it is still there: tried again.
            match batch::delete(&self.endpoints, &[ifindex]) {
                Ok(()) => {
                    report.changes += 1;
                    self.realized.entries.endpoints.remove(&ifindex);
                }
                Err(s) => report.errors.push(format!("endpoint map, interface {ifindex}: {}", s.error)),
            }
        }
    }

    /// One endpoint entry, in the kernel and in what is realized, counted
    /// as a change (each bumps the revision, a hold included: tracked
    /// flows pass on the revision alone); an error in the report if the
    /// kernel refused it.
    fn write_endpoint(&mut self, ifindex: u32, ep: palisade_common::Endpoint, report: &mut SyncReport) {
        match batch::update(&self.endpoints, &[ifindex], &[ep]) {
            Ok(()) => {
                self.realized.entries.endpoints.insert(ifindex, ep);
                report.changes += 1;
            }
            Err(s) => {
                // Once per sync: a refused entry is tried again by a later
                // step of the same sync.
                let e = format!("endpoint map, interface {ifindex}: {}", s.error);
                if !report.errors.contains(&e) {
                    report.errors.push(e);
                }
            }
        }
    }

    /// Puts each interface's programs in place, takes off those it should
    /// not carry (all of them from interfaces that are gone), and removes
    /// the endpoint entries of interfaces no pod is enforced on.
    ///
    /// Only hooks missing or unwanted are touched: an attach (and a
    /// detach) waits for RCU grace periods under the RTNL lock, tens of
    /// ms each, so a pod's interface keeps its hooks whether its pod is
    /// known or not (see [`plan::plan`]) and the pod's manifest costs map
    /// writes only. A pod whose hooks are not all on is `AttachFailed`
    /// (its endpoint entry is written, but what lacks a hook is not
    /// judged), an error in the report until an attach succeeds; one
    /// whose endpoint entry the kernel refused is `EntryRefused`.
    fn write_links(&mut self, plan: &mut Plan, ifaces: &Interfaces, report: &mut SyncReport) {
        let started = std::time::Instant::now();
        let mut failed_attach: BTreeMap<u32, String> = BTreeMap::new();
        // Missing hooks, those that enforce a pod (or hold one closed)
        // first: each attach takes tens of ms.
        let mut missing: Vec<(bool, u32, Hook)> = Vec::new();
        // Taken off only once the missing ones are on: a host egress hook
        // making way for the pod hooks judges DNATed traffic meanwhile.
        let mut unwanted: Vec<(u32, Hook)> = Vec::new();
        for (ifindex, wanted) in &plan.hooks {
            let have = self.realized.attached.get(ifindex).cloned().unwrap_or_default();
            for &hook in wanted.difference(&have) {
                missing.push((!(hook.is_pod() && plan.entries.contains_key(ifindex)), *ifindex, hook));
            }
            unwanted.extend(have.difference(wanted).map(|h| (*ifindex, *h)));
        }
        missing.sort();
        for (later, ifindex, hook) in missing {
            let name = ifaces.names.get(&ifindex).cloned().unwrap_or_default();
            let t = std::time::Instant::now();
            let attached = self.attach(ifindex, &name, hook);
            tracing::debug!(ifindex, hook = ?hook, us = t.elapsed().as_micros() as u64, ok = attached.is_ok(), "attach");
            report.attaches += 1;
            match attached {
                Ok(()) => {
                    self.realized.attached.entry(ifindex).or_default().insert(hook);
                }
                // A pod's (or a pending interface's) missing hook is an
                // error; any other is retried by the next sync
                // (interfaces come and go under our feet: a veth being
                // deleted).
                Err(e) if !later => {
                    report.errors.push(format!("attaching to {name} ({ifindex}): {e:#}"));
                    failed_attach.insert(ifindex, format!("{e:#}"));
                }
                Err(e) => tracing::debug!("{hook:?} hook on {name} ({ifindex}): {e:#}"),
            }
        }
        for (ifindex, hook) in unwanted {
            self.detach_hooks(ifindex, &[hook], report);
        }
        for st in &mut plan.endpoints {
            if !matches!(st.state, Enforcement::Enforced | Enforcement::HeldClosed(_)) {
                continue;
            }
            let Some(i) = st.ifindex else { continue };
            let on = self.realized.attached.get(&i);
            let whole = [Hook::FromPod, Hook::ToPod].iter().all(|h| on.is_some_and(|on| on.contains(h)));
            if !self.entry_written(&plan.entries, i) {
                st.state = Enforcement::EntryRefused;
            } else if let Some(msg) = failed_attach.get(&i) {
                st.state = Enforcement::AttachFailed(msg.clone());
            } else if !whole {
                let msg = "the pod hooks are not attached";
                report.errors.push(format!("interface {i}: {msg}"));
                st.state = Enforcement::AttachFailed(msg.into());
            }
        }
        let gone: Vec<u32> = self.realized.attached.keys().copied().filter(|i| !plan.hooks.contains_key(i)).collect();
        for ifindex in gone {
            self.detach_hooks(ifindex, &HOOKS, report);
        }
        report.links_us = started.elapsed().as_micros() as u64;
        self.remove_stale_endpoints(plan, report);
    }

    /// Takes hooks off an interface, and out of what is realized once off.
    fn detach_hooks(&mut self, ifindex: u32, hooks: &[Hook], report: &mut SyncReport) {
        for &hook in hooks {
            match self.detach(ifindex, hook) {
                Ok(()) => {
                    if let Some(on) = self.realized.attached.get_mut(&ifindex) {
                        on.remove(&hook);
                    }
                }
                Err(e) => report.errors.push(format!("detaching from interface {ifindex}: {e:#}")),
            }
        }
        if self.realized.attached.get(&ifindex).is_some_and(BTreeSet::is_empty) {
            self.realized.attached.remove(&ifindex);
        }
    }

    fn link_path(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{ifindex}-{hook}"))
    }

    /// Puts one of this agent's programs on an interface: into the link
    /// pinned there by an earlier agent (an atomic swap), or into a new
    /// pinned link that runs before any other TCX program.
    fn attach(&mut self, ifindex: u32, name: &str, hook: Hook) -> Result<()> {
        let (prog_name, attach_type, pin) = program(hook);
        let path = self.link_path(ifindex, pin);
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
                    return Ok(());
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
        Ok(())
    }

    /// Takes one of this agent's programs off an interface. Removing the
    /// last reference to a link detaches it; the kernel does that (and
    /// waits for its grace periods) in a work queue, not in this call.
    fn detach(&mut self, ifindex: u32, hook: Hook) -> Result<()> {
        let path = self.link_path(ifindex, program(hook).2);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
        Ok(())
    }

    /// Removes pinned links this agent does not hold (left by an earlier
    /// agent for pods that are gone, or for hooks no longer wanted).
    /// Also removes the maps of other layout versions: once this agent's
    /// programs run in every link, nothing uses them.
    pub fn collect_garbage(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.join("links")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let (ifindex, pin) = name.split_once('-').unwrap_or((&name, ""));
                let ours = ifindex.parse::<u32>().ok().and_then(|i| self.realized.attached.get(&i));
                if ours.is_none_or(|on| !on.iter().any(|h| program(*h).2 == pin)) {
                    std::fs::remove_file(entry.path()).ok();
                }
            }
        }
        let current = super::maps_dir(&self.dir);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let other_version =
                    name.starts_with('v') && name[1..].parse::<u32>().is_ok() && entry.path() != current;
                if other_version {
                    tracing::info!("removing maps of layout {name}, replaced by {}", current.display());
                    std::fs::remove_dir_all(entry.path()).ok();
                }
            }
        }
    }
}
