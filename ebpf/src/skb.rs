//! What judging a packet needs from its hook, so one parser and one
//! judgement serve both kinds: the TC classifiers (the packet from its
//! Ethernet header, headers read directly) and the socket filters that
//! netfilter runs through xt_bpf (the packet from its IP header, read with
//! bpf_skb_load_bytes: socket filters get no direct packet access, and may
//! not write the mark or `tc_index`).

use aya_ebpf::programs::{SkBuffContext, TcContext};
use core::mem::size_of;
use palisade_common::CB_FAST_MISSED;

pub trait Skb {
    /// Offset of the IP header.
    const L3: usize;
    /// Bytes from the start of the packet as the hook sees it.
    fn pkt_len(&self) -> usize;
    /// The EtherType of the packet (host order), if it can be told.
    fn l3_protocol(&self) -> Option<u16>;
    /// A copy of the `T` at `off`, where headers usually are.
    fn header<T: Copy>(&self, off: usize) -> Option<T>;
    /// `f` of the `T` at `off` (in place where the hook allows it: the
    /// classifiers have no stack to spare for copies of IP headers).
    fn with_header<T, R>(&self, off: usize, f: impl FnOnce(&T) -> R) -> Option<R>;
    /// A copy of the `T` at `off`, anywhere in the packet.
    fn fetch<T>(&self, off: usize) -> Option<T>;
    /// Makes the first `want` bytes readable by [`Skb::header`], if they
    /// are not already: ask only for headers read in place. A pull
    /// reallocates and copies the head of a cloned buffer, which every TCP
    /// segment is (its sender keeps the original to retransmit), and
    /// payload bytes asked for sit in its pages: asking for 114 bytes past
    /// the Ethernet header once made the fast path copy every segment a
    /// pod sent (forwarding copies it anyway; a bridge or local delivery
    /// does not).
    fn pull(&self, want: usize);
    fn mark(&self) -> u32;
    fn tc_index(&self) -> u32;
    /// Adds `bits` to the mark and sets `tc_index` (TC only: a socket
    /// filter never defers, see `policy::mark_deferred`).
    fn set_deferred(&self, bits: u32, tc_index: u32);
    /// The conntrack fast path looked this packet's key up and found no
    /// entry (TC only: see [`note_fast_path`]).
    fn fast_missed(&self) -> bool;
}

/// Records what the conntrack fast path found, for [`Skb::fast_missed`]:
/// in `__sk_buff.cb[0]` (the packet's scratch space, which TC programs may
/// use as they like) rather than as an argument of the pipeline's call,
/// since the egress pipeline's frame has no 8 bytes left to keep it in.
#[inline(always)]
pub fn note_fast_path(ctx: &TcContext, missed: bool) {
    unsafe { (*ctx.skb.skb).cb[0] = if missed { CB_FAST_MISSED } else { 0 } };
}

impl Skb for TcContext {
    const L3: usize = network_types::eth::EthHdr::LEN;

    #[inline(always)]
    fn pkt_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn l3_protocol(&self) -> Option<u16> {
        let ether_type: [u8; 2] = self.header(12)?;
        Some(u16::from_be_bytes(ether_type))
    }

    #[inline(always)]
    fn header<T: Copy>(&self, off: usize) -> Option<T> {
        let (start, end) = (self.data(), self.data_end());
        if start + off + size_of::<T>() > end {
            return None;
        }
        Some(unsafe { *((start + off) as *const T) })
    }

    #[inline(always)]
    fn with_header<T, R>(&self, off: usize, f: impl FnOnce(&T) -> R) -> Option<R> {
        let (start, end) = (self.data(), self.data_end());
        if start + off + size_of::<T>() > end {
            return None;
        }
        Some(f(unsafe { &*((start + off) as *const T) }))
    }

    #[inline(always)]
    fn fetch<T>(&self, off: usize) -> Option<T> {
        self.load(off).ok()
    }

    #[inline(always)]
    fn pull(&self, want: usize) {
        let linear = self.data_end() - self.data();
        let len = self.len() as usize;
        if linear < want && linear < len {
            let n = if len < want { len } else { want };
            let _ = self.pull_data(n as u32);
        }
    }

    #[inline(always)]
    fn mark(&self) -> u32 {
        unsafe { (*self.skb.skb).mark }
    }

    #[inline(always)]
    fn tc_index(&self) -> u32 {
        unsafe { (*self.skb.skb).tc_index }
    }

    #[inline(always)]
    fn set_deferred(&self, bits: u32, tc_index: u32) {
        let mark = self.mark();
        self.set_mark(mark | bits);
        unsafe { (*self.skb.skb).tc_index = tc_index };
    }

    #[inline(always)]
    fn fast_missed(&self) -> bool {
        unsafe { (*self.skb.skb).cb[0] == CB_FAST_MISSED }
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

impl Skb for SkBuffContext {
    const L3: usize = 0;

    #[inline(always)]
    fn pkt_len(&self) -> usize {
        self.len() as usize
    }

    /// From the IP version: netfilter hands over IP packets only.
    #[inline(always)]
    fn l3_protocol(&self) -> Option<u16> {
        let first: u8 = self.fetch(0)?;
        match first >> 4 {
            4 => Some(ETH_P_IP),
            6 => Some(ETH_P_IPV6),
            _ => None,
        }
    }

    #[inline(always)]
    fn header<T: Copy>(&self, off: usize) -> Option<T> {
        self.fetch(off)
    }

    #[inline(always)]
    fn with_header<T, R>(&self, off: usize, f: impl FnOnce(&T) -> R) -> Option<R> {
        let h: T = self.fetch(off)?;
        Some(f(&h))
    }

    #[inline(always)]
    fn fetch<T>(&self, off: usize) -> Option<T> {
        self.load(off).ok()
    }

    #[inline(always)]
    fn pull(&self, _want: usize) {}

    #[inline(always)]
    fn mark(&self) -> u32 {
        unsafe { (*self.skb.skb).mark }
    }

    #[inline(always)]
    fn tc_index(&self) -> u32 {
        unsafe { (*self.skb.skb).tc_index }
    }

    #[inline(always)]
    fn set_deferred(&self, _bits: u32, _tc_index: u32) {}

    #[inline(always)]
    fn fast_missed(&self) -> bool {
        false
    }
}
