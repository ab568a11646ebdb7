//! How often listeners are written to: the chunk duration as a function of load.
//!
//! A send costs a few µs whatever its size, so the cost of fan-out is set by how many writes
//! each listener gets per second, not by bytes. levee keeps chunks short (low latency) while a
//! space has few listeners and lengthens them as the audience grows, so that the writes of one
//! space stay within a CPU budget instead of falling behind.

/// Chunk duration policy. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Shortest chunk, ms (the latency floor).
    pub min_ms: u32,
    /// Longest chunk, ms (the latency ceiling under load).
    pub max_ms: u32,
    /// CPU a space's fan-out may spend, µs per second.
    pub budget_us_per_s: u64,
    /// Estimated cost of one write to one listener, µs.
    pub write_cost_us: u64,
}

impl Default for Cadence {
    /// 20–500 ms chunks; a quarter of a core per space at 6 µs per write to a listener (a
    /// wake-up and a loopback send; 80 % of it is the kernel's TCP work). `bench/fanout.sh`
    /// measured 8–13.5 µs per write on a shared 2-core VM, the larger figure for larger
    /// chunks, so large spaces spend up to about half a core: see `docs/benchmarks.md`.
    fn default() -> Self {
        Cadence {
            min_ms: 20,
            max_ms: 500,
            budget_us_per_s: 250_000,
            write_cost_us: 6,
        }
    }
}

impl Cadence {
    /// Chunk duration for a space with `listeners` listeners, ms.
    pub fn chunk_ms(&self, listeners: u64) -> u32 {
        let ms = (listeners.saturating_mul(self.write_cost_us) * 1000)
            .div_ceil(self.budget_us_per_s.max(1));
        ms.clamp(self.min_ms as u64, self.max_ms.max(self.min_ms) as u64) as u32
    }

    /// Chunk duration in 48 kHz samples.
    pub fn chunk_samples(&self, listeners: u64) -> u32 {
        self.chunk_ms(listeners) * 48
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_grows_with_the_audience_within_bounds() {
        let c = Cadence::default();
        assert_eq!(c.chunk_ms(0), 20);
        assert_eq!(c.chunk_ms(800), 20);
        assert_eq!(c.chunk_ms(1_000), 24);
        assert_eq!(c.chunk_ms(10_000), 240);
        assert_eq!(c.chunk_ms(15_000), 360);
        assert_eq!(c.chunk_ms(10_000_000), 500);
        let mut prev = 0;
        for n in (0..100_000).step_by(997) {
            let ms = c.chunk_ms(n);
            assert!(ms >= prev);
            prev = ms;
        }
    }
}
