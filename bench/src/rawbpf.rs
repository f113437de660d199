//! The two bpf(2) commands the kernel benchmark needs beyond aya: loading
//! the empty TC program (the baseline: `r0 = TC_ACT_UNSPEC; exit`) and
//! BPF_PROG_TEST_RUN on any program fd, so the baseline and palisade's
//! classifier are timed through exactly the same call.

use anyhow::{Result, bail};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: attr points to a properly laid out bpf_attr prefix of the
    // size we pass; the kernel zero-extends the rest.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// Loads `r0 = -1 (TC_ACT_UNSPEC); exit` as a TC classifier.
pub fn empty_tc_program() -> Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm -1; then BPF_JMP | BPF_EXIT.
    let insns: [u64; 2] = [0xb7 | ((-1i32 as u32 as u64) << 32), 0x95];
    let license = b"GPL\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..9].copy_from_slice(b"plb_empty");
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
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
