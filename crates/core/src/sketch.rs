//! Fixed-size counters for unbounded key spaces: count-min sketches.
//!
//! Contract: memory is set at construction and never grows, however many distinct sources
//! appear (an attacker rotating through millions of addresses costs nothing extra). Estimates
//! never under-count; hash collisions can only over-count, and the per-process random seeds
//! keep an attacker from choosing colliding keys on purpose. Counters are atomics: any thread
//! may add without a lock.

use crate::source::SourceKey;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Rows of every sketch: the error probability falls exponentially with depth.
pub const DEPTH: usize = 4;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A count-min sketch of signed counters (so in-flight counts can go down).
#[derive(Debug)]
pub struct CountMin {
    rows: Vec<Box<[AtomicI32]>>,
    mask: usize,
    seeds: [u64; DEPTH],
}

impl CountMin {
    /// A sketch of `DEPTH` rows of `width` counters (rounded up to a power of two), hashed with
    /// `seeds`.
    pub fn new(width: usize, seeds: [u64; DEPTH]) -> Self {
        let width = width.max(16).next_power_of_two();
        CountMin {
            rows: (0..DEPTH)
                .map(|_| (0..width).map(|_| AtomicI32::new(0)).collect())
                .collect(),
            mask: width - 1,
            seeds,
        }
    }

    /// Bytes of counters held.
    pub fn bytes(&self) -> usize {
        DEPTH * (self.mask + 1) * 4
    }

    fn slot(&self, row: usize, key: SourceKey) -> usize {
        (mix(key.0 ^ self.seeds[row]) as usize) & self.mask
    }

    /// Adds `delta` to `key`; returns the new estimate.
    pub fn add(&self, key: SourceKey, delta: i32) -> i32 {
        (0..DEPTH)
            .map(|r| self.rows[r][self.slot(r, key)].fetch_add(delta, Relaxed) + delta)
            .min()
            .unwrap_or(0)
    }

    /// The estimate for `key` (never below the true count while counts stay non-negative).
    pub fn estimate(&self, key: SourceKey) -> i32 {
        (0..DEPTH)
            .map(|r| self.rows[r][self.slot(r, key)].load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Sets every counter to zero.
    pub fn clear(&self) {
        for row in &self.rows {
            for c in row.iter() {
                c.store(0, Relaxed);
            }
        }
    }
}

/// Events per key over a sliding window, from two alternating count-min sketches.
///
/// The rate is `previous × (1 − elapsed fraction) + current`, the usual sliding-window
/// estimate; windows roll over when an observation arrives after the window ends.
#[derive(Debug)]
pub struct RateSketch {
    halves: [CountMin; 2],
    current: AtomicU64,
    window_start_us: AtomicU64,
    window_us: u64,
    roll: Mutex<()>,
}

impl RateSketch {
    /// A sketch over windows of `window_us`, `width` counters per row.
    pub fn new(width: usize, window_us: u64, seeds: [u64; DEPTH], now_us: u64) -> Self {
        RateSketch {
            halves: [CountMin::new(width, seeds), CountMin::new(width, seeds)],
            current: AtomicU64::new(0),
            window_start_us: AtomicU64::new(now_us),
            window_us: window_us.max(1),
            roll: Mutex::new(()),
        }
    }

    /// Bytes of counters held.
    pub fn bytes(&self) -> usize {
        2 * self.halves[0].bytes()
    }

    fn roll(&self, now_us: u64) {
        let start = self.window_start_us.load(Relaxed);
        if now_us < start + self.window_us {
            return;
        }
        let _g = self.roll.lock().expect("rate sketch lock");
        let start = self.window_start_us.load(Relaxed);
        if now_us < start + self.window_us {
            return;
        }
        let cur = self.current.load(Relaxed) as usize;
        let next = 1 - cur;
        self.halves[next].clear();
        if now_us >= start + 2 * self.window_us {
            // A whole window passed in silence: the old counts are stale too.
            self.halves[cur].clear();
        }
        self.current.store(next as u64, Relaxed);
        let periods = (now_us - start) / self.window_us;
        self.window_start_us
            .store(start + periods * self.window_us, Relaxed);
    }

    fn weighted(&self, cur_count: i32, prev_count: i32, now_us: u64) -> f64 {
        let start = self.window_start_us.load(Relaxed);
        let frac = (now_us.saturating_sub(start) as f64 / self.window_us as f64).min(1.0);
        cur_count.max(0) as f64 + prev_count.max(0) as f64 * (1.0 - frac)
    }

    /// Counts one event for `key` at `now_us`; returns the estimated events in the last window.
    pub fn observe(&self, key: SourceKey, now_us: u64) -> f64 {
        self.roll(now_us);
        let cur = self.current.load(Relaxed) as usize;
        let c = self.halves[cur].add(key, 1);
        let p = self.halves[1 - cur].estimate(key);
        self.weighted(c, p, now_us)
    }

    /// The estimated events for `key` in the last window, without counting one.
    pub fn rate(&self, key: SourceKey, now_us: u64) -> f64 {
        self.roll(now_us);
        let cur = self.current.load(Relaxed) as usize;
        let c = self.halves[cur].estimate(key);
        let p = self.halves[1 - cur].estimate(key);
        self.weighted(c, p, now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: [u64; DEPTH] = [1, 2, 3, 4];

    #[test]
    fn counts_go_up_and_down_and_never_under_count() {
        let s = CountMin::new(1024, SEEDS);
        for i in 0..5000u64 {
            s.add(SourceKey(i), 1);
        }
        for i in 0..5000u64 {
            assert!(s.estimate(SourceKey(i)) >= 1);
        }
        let k = SourceKey(42);
        s.add(k, 10);
        assert!(s.estimate(k) >= 11);
        s.add(k, -11);
        assert!(s.estimate(k) >= 0);
    }

    #[test]
    fn memory_is_fixed_whatever_the_number_of_keys() {
        let s = CountMin::new(4096, SEEDS);
        let before = s.bytes();
        for i in 0..1_000_000u64 {
            s.add(SourceKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 1);
        }
        assert_eq!(s.bytes(), before);
        assert_eq!(before, 4 * 4096 * 4);
    }

    #[test]
    fn collisions_stay_rare_at_the_intended_load() {
        // 10,000 distinct sources, one event each, in the width levee uses: almost no key
        // looks bigger than it is.
        let s = CountMin::new(32_768, SEEDS);
        for i in 0..10_000u64 {
            s.add(SourceKey(i), 1);
        }
        let inflated = (0..10_000u64)
            .filter(|&i| s.estimate(SourceKey(i)) > 2)
            .count();
        assert!(inflated < 5, "{inflated} keys over-estimated");
    }

    #[test]
    fn sliding_rate_follows_the_window() {
        let r = RateSketch::new(1024, 1_000_000, SEEDS, 0);
        let k = SourceKey(7);
        for i in 0..10 {
            r.observe(k, i * 10_000);
        }
        assert_eq!(r.rate(k, 100_000), 10.0);
        // Halfway through the next window, half of the old window still counts.
        assert!((r.rate(k, 1_500_000) - 5.0).abs() < 0.01);
        // Two windows later it is forgotten.
        assert_eq!(r.rate(k, 3_100_000), 0.0);
        assert_eq!(r.rate(SourceKey(8), 100_000), 0.0);
    }
}
