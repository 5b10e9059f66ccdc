//! The deterministic pattern `objfill NAME SEED` writes, so a host test can
//! regenerate it: byte `i` of the object is byte `i % 8` (little-endian) of
//! `splitmix64(seed + i / 8)`.

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf`, which holds the object's bytes from `offset` (a multiple
/// of 8).
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = splitmix64(seed.wrapping_add(offset / 8 + i as u64)).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_is_position_independent() {
        let mut whole = vec![0u8; 64];
        super::fill(7, 0, &mut whole);
        let mut tail = vec![0u8; 32];
        super::fill(7, 32, &mut tail);
        assert_eq!(&whole[32..], &tail[..]);
        assert_eq!(super::splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }
}
