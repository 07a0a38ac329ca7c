//! A stable hash for deterministic generated data.
//!
//! `std`'s default hasher may change between Rust releases, which would change the
//! generated menus and prices; FNV-1a (64-bit, offset basis 0xcbf29ce484222325, prime
//! 0x100000001b3, as published by Fowler, Noll and Vo) never does.

/// Hashes `key` with 64-bit FNV-1a.
pub fn fnv1a64(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64("foobar"), 0x8594_4171_f739_67e8);
    }
}
