//! The kernel's BPF_PROG_TEST_RUN interface for TC programs, as the kernel
//! tests and the verdict-latency benchmark use it.
//!
//! Findings this relies on: a zeroed 192-byte `struct __sk_buff` context
//! with only `ifindex` (offset 40) set is accepted on 6.18. The kernel
//! refuses (EINVAL, before the program runs) packets shorter than an
//! Ethernet header, and IPv4/IPv6 frames shorter than Ethernet + the fixed
//! IP header (34/54 bytes): those cannot be fed to a classifier this way.

use crate::packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6};

/// Size of the `struct __sk_buff` context handed to the test run.
pub const SKB_CTX_LEN: usize = 192;
/// Offset of `ifindex` in `struct __sk_buff`.
const SKB_CTX_IFINDEX: usize = 40;

/// TC_ACT_UNSPEC (-1) as the test run reports it: let the packet pass.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// TC_ACT_SHOT: drop the packet.
pub const TC_ACT_SHOT: u32 = 2;

/// A context that runs the program as if the packet crossed `ifindex`
/// (which is how the classifier finds the endpoint it judges for).
pub fn skb_ctx(ifindex: u32) -> [u8; SKB_CTX_LEN] {
    let mut c = [0u8; SKB_CTX_LEN];
    c[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// What a classifier did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

pub const PASS: Verdict = Verdict::Pass;
pub const DROP: Verdict = Verdict::Drop;

/// The verdict a program's return value stands for, if any.
pub fn verdict(raw: u32) -> Option<Verdict> {
    match raw {
        TC_ACT_UNSPEC => Some(PASS),
        TC_ACT_SHOT => Some(DROP),
        _ => None,
    }
}

/// Whether the kernel's test run takes `pkt` at all (see the module docs).
pub fn kernel_accepts(pkt: &[u8]) -> bool {
    if pkt.len() < ETH_LEN {
        return false;
    }
    match u16::from_be_bytes([pkt[12], pkt[13]]) {
        ETH_P_IP => pkt.len() >= ETH_LEN + 20,
        ETH_P_IPV6 => pkt.len() >= ETH_LEN + 40,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_and_lengths() {
        let c = skb_ctx(0x0102_0304);
        assert_eq!(u32::from_ne_bytes(c[40..44].try_into().unwrap()), 0x0102_0304);
        assert_eq!(c.iter().filter(|b| **b != 0).count(), 4);
        assert_eq!((verdict(TC_ACT_UNSPEC), verdict(TC_ACT_SHOT), verdict(0)), (Some(PASS), Some(DROP), None));
        let mut v4 = crate::packet::eth(ETH_P_IP);
        v4.resize(33, 0);
        assert!(!kernel_accepts(&v4));
        v4.push(0);
        assert!(kernel_accepts(&v4));
        assert!(kernel_accepts(&crate::packet::eth(0x0806)) && !kernel_accepts(&[0; 13]));
    }
}
