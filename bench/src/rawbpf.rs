//! The bpf(2) commands the kernel benchmark needs beyond aya: loading the
//! empty TC program (the baseline: `r0 = TC_ACT_UNSPEC; exit`) and the
//! floor programs (the conntrack work every new flow does, and a drop
//! event, alone), and BPF_PROG_TEST_RUN on any program fd, so the
//! baselines and palisade's classifier are timed through exactly the same
//! call.

use anyhow::{Result, bail};
use aya::maps::{Map, MapData, RingBuf};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: attr points to a properly laid out bpf_attr prefix of the
    // size we pass; the kernel zero-extends the rest.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// Loads `r0 = -1 (TC_ACT_UNSPEC); exit` as a TC classifier.
pub fn empty_tc_program() -> Result<OwnedFd> {
    load(&[mov_imm(0, -1), EXIT], "plb_empty")
}

/// The programs that time a new flow's conntrack work alone (and a denied
/// one's drop event), each ending as the empty program does: `key` draws
/// a random IPv4 flow key (two `bpf_get_prandom_u32` calls into a zeroed
/// key); `miss` also looks it up
/// in a table made as the classifier's IPv4 conntrack table is (an LRU
/// hash of `capacity::CONNTRACK` entries, `CtKey4` to `CtEntry`), where it
/// is all but never found; `insert` then also enters it, as a new flow's
/// entry is. Every new flow does at least the last two: `insert` minus
/// `key` is the floor under the classifier's new-flow cases. `event` also
/// sends a drop event as small as the classifier's (an `Event`, reserved
/// in a ring buffer of `capacity::EVENTS_BYTES`, stamped with
/// `bpf_ktime_get_ns`, the rest zeroed, submitted without a wake-up): what
/// a denied flow's first packet adds at the least.
pub struct Floor {
    pub key: OwnedFd,
    pub miss: OwnedFd,
    pub insert: OwnedFd,
    pub event: OwnedFd,
    /// The ring `event` writes to; drained as the agent would.
    pub events: RingBuf<MapData>,
}

/// Creates the floor programs' table and ring and loads them (see
/// [`Floor`]).
pub fn floor_programs() -> Result<Floor> {
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: std::mem::size_of::<palisade_common::CtKey4>() as u32,
        value_size: std::mem::size_of::<palisade_common::CtEntry>() as u32,
        max_entries: palisade_common::capacity::CONNTRACK,
        map_flags: 0,
    };
    if attr.key_size > 24 || attr.value_size > 24 {
        bail!("conntrack key or entry larger than the floor programs' stack slots");
    }
    let table = create_map(&mut attr)?;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let mut ring_attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        max_entries: palisade_common::capacity::EVENTS_BYTES,
        ..Default::default()
    };
    let ring = create_map(&mut ring_attr)?;
    // The key at fp-24, the entry at fp-48, both zeroed, the key's first
    // eight bytes random.
    let mut key = vec![st_dw(-24), st_dw(-16), st_dw(-8), st_dw(-48), st_dw(-40), st_dw(-32)];
    key.extend([call(7), stx_w(-24, 0), call(7), stx_w(-20, 0)]);
    let map = |reg: u8| ld_map_fd(reg, table.as_raw_fd());
    let mut miss = key.clone();
    miss.extend(map(1));
    miss.extend([mov_reg(2, 10), add_imm(2, -24), call(1)]);
    let mut insert = miss.clone();
    insert.extend(map(1));
    insert.extend([mov_reg(2, 10), add_imm(2, -24), mov_reg(3, 10), add_imm(3, -48), mov_imm(4, 0), call(2)]);
    let mut event = insert.clone();
    const EVENT: i32 = std::mem::size_of::<palisade_common::Event>() as i32;
    const BPF_RB_NO_WAKEUP: i32 = 1;
    event.extend(ld_map_fd(1, ring.as_raw_fd()));
    // r0 = bpf_ringbuf_reserve(ring, EVENT, 0), kept in r6 across the
    // calls after it; the writes are skipped when the ring is full.
    event.extend([mov_imm(2, EVENT), mov_imm(3, 0), call(131)]);
    let mut write = vec![mov_reg(6, 0), call(5), stx_dw(6, 0, 0)];
    write.extend((8..EVENT as i16).step_by(8).map(|off| st_dw_at(6, off)));
    write.extend([mov_reg(1, 6), mov_imm(2, BPF_RB_NO_WAKEUP), call(132)]);
    event.push(jeq_imm(0, 0, write.len() as i16));
    event.extend(write);
    let end = [mov_imm(0, -1), EXIT];
    let finish = |mut v: Vec<u64>| {
        v.extend(end);
        v
    };
    Ok(Floor {
        key: load(&finish(key), "plb_floor_key")?,
        miss: load(&finish(miss), "plb_floor_miss")?,
        insert: load(&finish(insert), "plb_floor_ins")?,
        event: load(&finish(event), "plb_floor_event")?,
        events: RingBuf::try_from(Map::RingBuf(MapData::from_fd(ring)?))?,
    })
}

/// BPF_MAP_CREATE, the new map's descriptor owned.
fn create_map(attr: &mut MapCreateAttr) -> Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own (the
    // programs keep the map once loaded).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

// Instruction encodings: opcode, dst | src << 4, 16-bit offset, 32-bit
// immediate, little-endian in one u64.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code) | u64::from(dst | (src << 4)) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
}
const EXIT: u64 = 0x95;
fn mov_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}
fn mov_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}
fn add_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}
/// `*(u64 *)(r10 + off) = 0`
fn st_dw(off: i16) -> u64 {
    st_dw_at(10, off)
}
/// `*(u64 *)(dst + off) = 0`
fn st_dw_at(dst: u8, off: i16) -> u64 {
    insn(0x7a, dst, 0, off, 0)
}
/// `*(u64 *)(dst + off) = src`
fn stx_dw(dst: u8, off: i16, src: u8) -> u64 {
    insn(0x7b, dst, src, off, 0)
}
/// `if dst == imm goto pc + off`
fn jeq_imm(dst: u8, imm: i32, off: i16) -> u64 {
    insn(0x15, dst, 0, off, imm)
}
/// `*(u32 *)(r10 + off) = src`
fn stx_w(off: i16, src: u8) -> u64 {
    insn(0x63, 10, src, off, 0)
}
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}
/// `dst = map fd` (a two-slot load, BPF_PSEUDO_MAP_FD).
fn ld_map_fd(dst: u8, fd: i32) -> [u64; 2] {
    [insn(0x18, dst, 1, 0, fd), 0]
}

/// Loads `insns` as a TC classifier named `name`.
fn load(insns: &[u64], name: &str) -> Result<OwnedFd> {
    let license = b"GPL\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| anyhow::anyhow!("loading {name}: {e}"))?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF_PROG_TEST_RUN: (return value, kernel-measured ns per run).
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], ctx: &[u8], repeat: u32) -> Result<(u32, u32)> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_PROG_TEST_RUN, &mut attr) {
        Ok(_) => Ok((attr.retval, attr.duration)),
        Err(e) => bail!("BPF_PROG_TEST_RUN ({} bytes, repeat {repeat}): {e}", data.len()),
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The program behind a link pinned at `path` (the agent pins one per
/// pod interface and hook), as a file descriptor we can test-run.
pub fn program_of_pinned_link(path: &std::path::Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut get = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    let link = bpf(BPF_OBJ_GET, &mut get).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    // struct bpf_link_info starts with type, id, prog_id (u32 each).
    let mut info = [0u32; 4];
    let mut attr = InfoAttr { bpf_fd: link.as_raw_fd() as u32, info_len: 16, info: info.as_mut_ptr() as u64 };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let mut by_id = GetFdByIdAttr { id: info[2], ..Default::default() };
    let prog = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(prog as i32) })
}
