//! Randomness from the operating system. A leaf module.

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// A random u64.
pub fn u64() -> u64 {
    u64::from_le_bytes(bytes())
}

/// A random f64 in [0, 1).
pub fn unit() -> f64 {
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}
