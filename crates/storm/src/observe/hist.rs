//! HDR histograms of durations in µs, mergeable across processes without loss.
//!
//! Contract: a [`Hist`] records values in µs from 1 µs to one hour (larger values saturate at
//! the top); [`Hist::merge`] adds counts exactly, so percentiles of a merged histogram are those
//! of all recorded values (within the histogram's precision), never averages of percentiles.
//! It serializes (serde) as the HdrHistogram V2 encoding in base64, which any HdrHistogram
//! implementation can read.

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest value kept, µs (one hour).
pub const MAX_US: u64 = 3_600_000_000;

/// A histogram of durations in µs. See the module docs.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    /// Three significant digits (0.1 %): for run-wide figures.
    pub fn new() -> Self {
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }

    /// Two significant digits (1 %), a tenth of the memory: for per-second timelines.
    pub fn coarse() -> Self {
        Hist(Histogram::new_with_bounds(1, MAX_US, 2).expect("valid histogram bounds"))
    }

    /// Records one value, µs (0 is kept as 1 µs; values above an hour as an hour).
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds, so adding cannot fail; a coarser source is re-bucketed exactly.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1), µs; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// Largest value recorded, µs (its bucket's highest equivalent value).
    pub fn max(&self) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.max()
        }
    }

    /// Mean, µs.
    pub fn mean(&self) -> f64 {
        if self.0.is_empty() {
            0.0
        } else {
            self.0.mean()
        }
    }

    /// Clears every count.
    pub fn clear(&mut self) {
        self.0.reset();
    }

    /// Count of values at or below `us`.
    pub fn count_le(&self, us: u64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.count_between(0, us.min(MAX_US))
    }

    /// The usual percentiles, in ms.
    pub fn summary_ms(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: self.count(),
            p50: ms(self.quantile(0.50)),
            p90: ms(self.quantile(0.90)),
            p99: ms(self.quantile(0.99)),
            p999: ms(self.quantile(0.999)),
            max: ms(self.max()),
            mean: self.mean() / 1000.0,
        }
    }

    /// (value µs, count) of every non-empty bucket, for charts.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }
}

/// Percentiles of a [`Hist`] in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        Ok(Hist(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_give_the_percentiles_of_all_values() {
        // Process A saw 990 fast values, process B 10 slow ones: p99 of the union is slow-ish,
        // which averaging the two processes' p99 would never give.
        let mut a = Hist::new();
        let mut b = Hist::new();
        let mut all = Hist::new();
        for i in 0..990 {
            a.record(1_000 + i);
            all.record(1_000 + i);
        }
        for i in 0..10 {
            b.record(500_000 + i * 1000);
            all.record(500_000 + i * 1000);
        }
        let mut merged = Hist::new();
        merged.merge(&a);
        merged.merge(&b);
        for q in [0.5, 0.9, 0.99, 0.995, 0.999, 1.0] {
            assert_eq!(merged.quantile(q), all.quantile(q), "q {q}");
        }
        assert_eq!(merged.count(), 1000);
        assert!(merged.quantile(0.995) >= 500_000);
    }

    #[test]
    fn histograms_survive_serialization_exactly() {
        let mut h = Hist::new();
        for v in [0, 1, 17, 20_000, 20_001, 999_999, MAX_US * 2] {
            h.record(v);
        }
        let json = serde_json::to_string(&h).unwrap();
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(back.buckets(), h.buckets());
        assert_eq!(back.count(), 7);
        assert_eq!(back.max(), h.max());
        // A coarse histogram merges into a fine one.
        let mut c = Hist::coarse();
        c.record(12_345);
        let mut f = Hist::new();
        f.merge(&c);
        assert_eq!(f.count(), 1);
        assert!((12_000..=12_500).contains(&f.quantile(1.0)));
    }

    #[test]
    fn empty_histograms_report_zeros() {
        let h = Hist::new();
        assert_eq!(h.summary_ms(), Percentiles::default());
        assert_eq!(h.count_le(100), 0);
    }
}
