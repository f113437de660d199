//! Map writes in batches: one bpf(2) call (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`) for up to [`BATCH`] entries. A pod with labels
//! of its own brings tens of thousands of policy entries at 10k pods x 10k
//! policies, and a call per entry cost as much as compiling them.
//!
//! The kernel applies a batch in order and stops at the first entry it
//! cannot write or remove, saying how many went before it. That entry is
//! tried once more on its own (a batch refused as a whole, by an LSM or a
//! kernel quirk, must not fail what a single write does); if it fails
//! again, the caller learns where, handles it as it would a single write's
//! failure, and goes on after it; but a key a removal does not find is
//! removed already ([`delete`]). Every kernel with TCX links (6.6) has
//! batches on hash (5.6) and LPM trie (5.13) maps.

use aya::Pod;
use aya::maps::IterableMap;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Entries per call: large enough that the call's own cost vanishes,
/// small enough to bound the kernel's copy of keys and values.
pub const BATCH: usize = 4096;

thread_local! {
    static WATCH: RefCell<Option<Box<dyn FnMut()>>> = const { RefCell::new(None) };
}

/// Has `f` called after each entry this thread writes to or removes from
/// a map, every entry then in a call of its own (None: stop). For tests
/// that look at the kernel as a packet finds it between two writes of a
/// sync: the kernel applies a batch an entry at a time in the same order,
/// so these are the states a batch passes through too.
pub fn watch(f: Option<Box<dyn FnMut()>>) {
    WATCH.with(|w| *w.borrow_mut() = f);
}

/// Entries per call: one while watched.
fn per_call() -> usize {
    if WATCH.with(|w| w.borrow().is_some()) { 1 } else { BATCH }
}

fn written() {
    WATCH.with(|w| {
        if let Some(f) = w.borrow_mut().as_mut() {
            f();
        }
    });
}

// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct Batch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `map_elem` member of `union bpf_attr` (value 0: a removal).
#[repr(C)]
#[derive(Default)]
struct Elem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Writing or removing stopped: the entries before `done` took effect,
/// entry `done` failed (on its own too) with `error`, those after it were
/// not tried.
#[derive(Debug)]
pub struct Stopped {
    pub done: usize,
    pub error: io::Error,
}

/// Writes `values[i]` at `keys[i]`, in order (`BPF_ANY`). The map's own
/// key and value types: the kernel reads entries at its sizes.
pub fn update<K: Pod, V: Pod>(map: &impl IterableMap<K, V>, keys: &[K], values: &[V]) -> Result<(), Stopped> {
    assert_eq!(keys.len(), values.len(), "a value per key");
    let map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
    let per_call = per_call();
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(per_call);
        let mut batch = Batch {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd,
            ..Default::default()
        };
        if call(BPF_MAP_UPDATE_BATCH, &mut batch).is_ok() {
            done += n;
            written();
            continue;
        }
        done += stopped_at(&batch, n);
        let mut one = Elem { map_fd, key: addr(&keys[done]), value: addr(&values[done]), ..Default::default() };
        call(BPF_MAP_UPDATE_ELEM, &mut one).map_err(|error| Stopped { done, error })?;
        done += 1;
        written();
    }
    Ok(())
}

/// Removes `keys`, in order. A key the map does not hold is removed
/// already: the agent's record of the map said otherwise (someone else
/// removed it), and failing on it would fail every sync after, the record
/// never corrected, for an entry that is gone as wanted.
pub fn delete<K: Pod, V: Pod>(map: &impl IterableMap<K, V>, keys: &[K]) -> Result<(), Stopped> {
    let map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
    let per_call = per_call();
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(per_call);
        let mut batch = Batch { keys: keys[done..].as_ptr() as u64, count: n as u32, map_fd, ..Default::default() };
        if call(BPF_MAP_DELETE_BATCH, &mut batch).is_ok() {
            done += n;
            written();
            continue;
        }
        done += stopped_at(&batch, n);
        let mut one = Elem { map_fd, key: addr(&keys[done]), ..Default::default() };
        match call(BPF_MAP_DELETE_ELEM, &mut one) {
            Err(error) if error.raw_os_error() != Some(libc::ENOENT) => return Err(Stopped { done, error }),
            _ => done += 1,
        }
        written();
    }
    Ok(())
}

/// Every entry of a hash map, [`BATCH`] at a time
/// (`BPF_MAP_LOOKUP_BATCH`): one entry at a time (next key, then its
/// value: two calls) took 2 µs an entry, 0.3 s for the 150k entries of
/// 50k pods x 50k policies, which the agent reads back at every resync.
/// The hash maps have batches since 5.6; an LPM trie has none (iterate it).
pub fn entries<K: Pod, V: Pod>(map: &impl IterableMap<K, V>) -> io::Result<Vec<(K, V)>> {
    let map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
    let (mut keys, mut values) = (Vec::<K>::with_capacity(BATCH), Vec::<V>::with_capacity(BATCH));
    let mut out = Vec::new();
    // The position between calls: a bucket number, opaque to us.
    let (mut token, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut batch = Batch {
            in_batch: if first { 0 } else { addr(&token) },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd,
            ..Default::default()
        };
        let r = call(BPF_MAP_LOOKUP_BATCH, &mut batch);
        let n = (batch.count as usize).min(BATCH);
        // SAFETY: the kernel wrote `n` whole keys and values of the map's
        // sizes, which are those of K and V.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match r {
            Ok(()) => {}
            // The end of the map (with the last entries, if any).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}

/// Where a failed batch of `given` entries stopped: the kernel writes back
/// how many went before the one that failed, always fewer than it was
/// given. A count left as given means it refused the batch before the
/// first entry: none went.
fn stopped_at(batch: &Batch, given: usize) -> usize {
    let done = batch.count as usize;
    if done < given { done } else { 0 }
}

fn addr<T>(x: &T) -> u64 {
    x as *const T as u64
}

/// One bpf(2) call with `attr`, the member of `bpf_attr` that `cmd` reads
/// (a batch's count is written back).
fn call<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is that member, its key and value pointers cover its
    // count of entries (one for a single entry) of the map's sizes (the
    // callers' slices of the map's own key and value types), and the
    // kernel reads no further than the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
