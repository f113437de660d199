//! The verifier's cost of the classifiers, which every agent start pays
//! (start → policy in force). The conntrack fast path once doubled it: its
//! inlined key parse left the full pipeline to be verified once per way of
//! leaving it (155k and 705k instructions, 2.4 s; since it is a call of
//! its own, 53k and 171k, 0.5 s). The ingress pipeline also held the
//! deferred-egress check, verified again on each of its paths; since that
//! is a call of its own before the pipeline, 53k and 71k; with a
//! conntrack table per address family (each lookup picks one), 69k and
//! 91k; with denied flows on the fast path, 82k and 112k; with a class's
//! parent looked up when its own entries miss (two more trie lookups on
//! every policy decision), 89k and 123k; with the parent's lookups its
//! entries let a child skip (two endpoint flags; the same for the class's
//! own lookups had it at 108k and 150k), 90k and 122k; with a lookup
//! by the peer's namespace, the class's own and the parent's, each
//! skipped by a flag where the class holds no such entry, 104k and 142k;
//! with headers pulled only as far as they are read in place, 102k and 141k.
//! Bounds: about 1.13× those.

use crate::fixture::*;
use std::os::fd::AsFd;

/// Instructions the verifier processed per program, at most.
const BUDGET: [(&str, u32); 2] = [("pod egress (from pod)", FROM_POD_MAX), ("pod ingress (to pod)", TO_POD_MAX)];
const FROM_POD_MAX: u32 = 118_000;
const TO_POD_MAX: u32 = 160_000;

#[test]
fn classifiers_verify_within_budget() {
    let env = Env::new(settings());
    let mut failures = Vec::new();
    for ((what, max), dir) in BUDGET.into_iter().zip([Direction::Egress, Direction::Ingress]) {
        let prog = env.dp.classifier(dir).expect("classifier");
        let insns = prog.info().expect("program info").verified_instruction_count().expect("verified_insns");
        eprintln!("{what}: {insns} instructions verified");
        if insns > max {
            failures.push(format!("{what}: {insns} instructions verified, budget {max}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every map lookup in the classifiers names one map at its call, so the
/// verifier inlines it (hash, LRU and array maps). A call the compiler
/// shares between two maps (one call with either map in its register)
/// goes through the generic helper instead, an indirect call: the
/// conntrack fast path's lookup did, on every tracked packet, until it
/// was written once per table (`conntrack::fast_in`). Updates and deletes
/// (once per new or forgotten flow, never inlined) still share a call
/// between the two conntrack tables. Read from the programs as the kernel
/// rewrote them (their xlated instructions), calls resolved by
/// /proc/kallsyms.
#[test]
fn map_lookups_name_their_map() {
    let env = Env::new(settings());
    let syms = kallsyms(&["__bpf_call_base", "__htab_map_lookup_elem", "bpf_map_lookup_elem"]);
    let (base, inlined, generic) = (syms[0], syms[1], syms[2]);
    let progs = [
        ("pod egress", env.dp.classifier(Direction::Egress).expect("classifier")),
        ("pod ingress", env.dp.classifier(Direction::Ingress).expect("classifier")),
        ("host egress", env.dp.host_egress().expect("classifier")),
    ];
    let mut failures = Vec::new();
    for (what, prog) in progs {
        let calls = helper_calls(prog.fd().expect("program fd").as_fd(), base);
        // The decoding holds: the hash lookups the verifier inlined are there.
        let inlined = calls.iter().filter(|&&a| a == inlined).count();
        assert!(inlined > 0, "{what}: no inlined hash lookup among {} calls", calls.len());
        let shared = calls.iter().filter(|&&a| a == generic).count();
        eprintln!("{what}: {} helper calls, {inlined} inlined hash lookups, {shared} generic lookups", calls.len());
        if shared > 0 {
            failures.push(format!("{what}: {shared} lookups through the generic helper"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The addresses of kernel symbols, in the order asked.
fn kallsyms(names: &[&str]) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    names
        .iter()
        .map(|name| {
            let addr = text
                .lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
                    (sym == *name).then(|| u64::from_str_radix(addr, 16).ok()).flatten()
                })
                .unwrap_or_else(|| panic!("{name} not in /proc/kallsyms"));
            assert!(addr != 0, "/proc/kallsyms hides addresses (kptr_restrict)");
            addr
        })
        .collect()
}

/// The kernel functions a loaded program calls (helpers, and what the
/// verifier put in their place), from its xlated instructions.
fn helper_calls(fd: std::os::fd::BorrowedFd<'_>, base: u64) -> Vec<u64> {
    use std::os::fd::AsRawFd;
    // The head of struct bpf_prog_info, up to xlated_prog_insns.
    #[repr(C)]
    #[derive(Default)]
    struct Info {
        kind: u32,
        id: u32,
        tag: [u8; 8],
        jited_prog_len: u32,
        xlated_prog_len: u32,
        jited_prog_insns: u64,
        xlated_prog_insns: u64,
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let get = |info: &mut Info| {
        let mut attr = GetInfo {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: size_of::<Info>() as u32,
            info: info as *mut Info as u64,
        };
        // SAFETY: attr is the get-info prefix of bpf_attr, pointing at a
        // bpf_prog_info prefix of the length given.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr as *mut GetInfo, size_of::<GetInfo>())
        };
        assert!(r == 0, "BPF_OBJ_GET_INFO_BY_FD: {}", std::io::Error::last_os_error());
    };
    let mut info = Info::default();
    get(&mut info);
    assert!(info.xlated_prog_len > 0, "no xlated instructions to read");
    let mut insns = vec![0u64; info.xlated_prog_len as usize / 8];
    let len = info.xlated_prog_len;
    info = Info { xlated_prog_len: len, xlated_prog_insns: insns.as_mut_ptr() as u64, ..Info::default() };
    get(&mut info);
    // struct bpf_insn: code, dst/src registers, offset, imm (little-endian).
    const BPF_CALL: u8 = 0x85;
    insns
        .iter()
        .filter(|&&i| i as u8 == BPF_CALL && (i >> 12) & 0xf == 0)
        .map(|&i| base.wrapping_add((i >> 32) as i32 as i64 as u64))
        .collect()
}
