//! Map writes in batches: one bpf(2) call (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`) for up to [`BATCH`] entries. A pod with labels
//! of its own brings tens of thousands of policy entries at 10k pods x 10k
//! policies, and a call per entry cost as much as compiling them.
//!
//! The kernel applies a batch in order and stops at the first entry it
//! cannot write or remove, saying how many went before it: the caller
//! handles that entry as it would a single write, then goes on after it,
//! so the maps end as the same writes one by one would leave them. Every
//! kernel with TCX links (6.6) has batches on hash and LPM trie maps (5.6).

use aya::Pod;
use aya::maps::IterableMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Entries per call: large enough that the call's own cost vanishes,
/// small enough to bound the kernel's copy of keys and values.
pub const BATCH: usize = 4096;

// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct Attr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch that stopped: the entries before `done` took effect, entry
/// `done` failed with `error`, those after it were not tried.
#[derive(Debug)]
pub struct Stopped {
    pub done: usize,
    pub error: io::Error,
}

/// Writes `values[i]` at `keys[i]`, in order (`BPF_ANY`). The map's own
/// key and value types: the kernel reads entries at its sizes.
pub fn update<K: Pod, V: Pod>(map: &impl IterableMap<K, V>, keys: &[K], values: &[V]) -> Result<(), Stopped> {
    let map = map.map().fd().as_fd();
    assert_eq!(keys.len(), values.len(), "a value per key");
    let mut done = 0;
    for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = Attr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr)
            .map_err(|error| Stopped { done: done + stopped_at(&attr, keys), error })?;
        done += keys.len();
    }
    Ok(())
}

/// Removes `keys`, in order.
pub fn delete<K: Pod, V: Pod>(map: &impl IterableMap<K, V>, keys: &[K]) -> Result<(), Stopped> {
    let map = map.map().fd().as_fd();
    let mut done = 0;
    for keys in keys.chunks(BATCH) {
        let mut attr = Attr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        call(BPF_MAP_DELETE_BATCH, &mut attr)
            .map_err(|error| Stopped { done: done + stopped_at(&attr, keys), error })?;
        done += keys.len();
    }
    Ok(())
}

/// Where a failed batch of `given` stopped: the kernel writes back how
/// many entries went before the one that failed, always fewer than it was
/// given. A count left as given means it refused the batch before the
/// first entry: none went.
fn stopped_at<K>(attr: &Attr, given: &[K]) -> usize {
    let done = attr.count as usize;
    if done < given.len() { done } else { 0 }
}

/// One bpf(2) call; the kernel writes back `attr.count`.
fn call(cmd: libc::c_long, attr: &mut Attr) -> io::Result<()> {
    // SAFETY: `attr` is the `batch` member of `bpf_attr`, its key and
    // value pointers cover `count` entries of the map's sizes (the
    // callers' slices of the map's key and value types), and the kernel
    // reads no further than the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
