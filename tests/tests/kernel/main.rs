//! Kernel-level tests of the TC classifier: BPF_PROG_TEST_RUN on crafted
//! packets, run through the real object with maps written by the real
//! datapath sync. No traffic flows: every packet is handed to one program
//! with `__sk_buff.ifindex` naming a host-side veth, which is how the
//! classifier finds the endpoint it judges for.
//!
//! Each test builds its own environment (veth pairs left down so nothing
//! but our packets reaches the programs, a private bpffs directory, a
//! freshly loaded datapath) and tears it down on drop, pass or fail.
//!
//! The kernel's test-run interface (which contexts and packet lengths it
//! takes) is described in `palisade_kit::tc`; the truncation and
//! random-packet (`fuzz`) tests check that exactly the lengths it refuses are
//! refused.
//!
//! One binary, one file per section: `cluster` and `fixture` are the
//! shared setup.

mod cluster;
mod fixture;
mod oracle;

mod batch;
mod between_writes;
mod conntrack;
mod ct_full;
mod drift;
mod endpoint_map_full;
mod events;
mod fragments;
mod fuzz;
mod hold;
mod host_egress;
mod icmp_errors;
mod malformed;
mod regressions;
mod tiers;
mod unmanaged;
mod verdicts;
mod verifier;
