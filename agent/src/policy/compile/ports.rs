//! Port ranges as LPM prefixes: an `endPort` range becomes the few aligned
//! power-of-two blocks that cover it exactly, so the kernel matches a range
//! with the same single trie lookup as a single port.

/// Splits `start..=end` into (first port, prefix bits out of 16) blocks.
pub fn prefixes(start: u16, end: u16) -> Vec<(u16, u32)> {
    blocks(u32::from(start), u32::from(end), 16).into_iter().map(|(v, bits)| (v as u16, bits)).collect()
}

/// Splits `start..=end` of a `width`-bit space (at most 31 bits) into
/// (first value, prefix bits out of `width`) aligned blocks.
pub fn blocks(start: u32, end: u32, width: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let (mut s, e) = (u64::from(start), u64::from(end));
    while s <= e {
        let mut k = s.trailing_zeros().min(width);
        while s + (1 << k) - 1 > e {
            k -= 1;
        }
        out.push((s as u32, width - k));
        s += 1 << k;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covers(blocks: &[(u16, u32)], port: u16) -> bool {
        blocks.iter().any(|&(v, bits)| {
            let mask = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
            port & mask == v
        })
    }

    #[test]
    fn known_splits() {
        assert_eq!(prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(prefixes(1, 65535).len(), 16);
        assert_eq!(prefixes(32000, 32767), vec![(32000, 8), (32256, 7)]);
    }

    proptest! {
        #[test]
        fn blocks_cover_exactly_the_range(a in 1u16.., b in 1u16.., probe in 0u16..) {
            let (s, e) = (a.min(b), a.max(b));
            let blocks = prefixes(s, e);
            prop_assert!(blocks.len() <= 30);
            prop_assert_eq!(covers(&blocks, probe), (s..=e).contains(&probe));
            prop_assert!(covers(&blocks, s) && covers(&blocks, e));
        }
    }
}
