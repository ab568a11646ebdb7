//! Escalation under attack: from signals to a proof-of-work difficulty, and back.
//!
//! Contract: [`Pressure::update`] takes the signals of the last interval and returns the
//! difficulty in force (0 = no challenge). A score of 1 or more (any signal at its threshold)
//! raises one level at most every `step_us`; a score under one half for `calm_us` lowers one
//! level. The hysteresis keeps it from flapping; the step limit keeps one burst from jumping
//! straight to the top.

/// Signals measured over the last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// Join requests per second.
    pub join_rate: f64,
    /// Fraction of requests refused (limits, bad tickets, failed challenges).
    pub reject_ratio: f64,
    /// Process CPU use, in cores (1.0 = one core busy).
    pub cpu: f64,
}

/// Thresholds and levels.
#[derive(Debug, Clone, PartialEq)]
pub struct PressureConfig {
    /// Join requests per second that count as pressure.
    pub join_rate_high: f64,
    /// Refused fraction that counts as pressure.
    pub reject_ratio_high: f64,
    /// CPU (cores) that counts as pressure.
    pub cpu_high: f64,
    /// Difficulty (leading zero bits) of each level above 0.
    pub levels: Vec<u8>,
    /// Least time between two raises, µs.
    pub step_us: u64,
    /// Calm time before one level is dropped, µs.
    pub calm_us: u64,
}

impl Default for PressureConfig {
    /// Levels of 12, 15 and 17 bits: about 4 k, 33 k and 131 k hashes; a browser worker on a
    /// small machine does about 80–100 k SHA-256 per second, so about 0.05 s, 0.4 s and 1.5 s.
    fn default() -> Self {
        PressureConfig {
            join_rate_high: 5_000.0,
            reject_ratio_high: 0.5,
            cpu_high: f64::INFINITY,
            levels: vec![12, 15, 17],
            step_us: 2_000_000,
            calm_us: 10_000_000,
        }
    }
}

/// The escalation state of a space or a node.
#[derive(Debug, Clone)]
pub struct Pressure {
    cfg: PressureConfig,
    level: usize,
    last_raise_us: Option<u64>,
    calm_since_us: Option<u64>,
}

impl Pressure {
    /// Calm, level 0.
    pub fn new(cfg: PressureConfig) -> Self {
        Pressure {
            cfg,
            level: 0,
            last_raise_us: None,
            calm_since_us: None,
        }
    }

    /// How far the signals are from the thresholds (1.0 = at a threshold).
    pub fn score(&self, s: Signals) -> f64 {
        let r = |v: f64, hi: f64| {
            if hi.is_finite() && hi > 0.0 {
                v / hi
            } else {
                0.0
            }
        };
        r(s.join_rate, self.cfg.join_rate_high)
            .max(r(s.reject_ratio, self.cfg.reject_ratio_high))
            .max(r(s.cpu, self.cfg.cpu_high))
    }

    /// The level in force (0 = calm).
    pub fn level(&self) -> usize {
        self.level
    }

    /// The difficulty in force (0 = no challenge).
    pub fn difficulty(&self) -> u8 {
        match self.level {
            0 => 0,
            l => self.cfg.levels[(l - 1).min(self.cfg.levels.len() - 1)],
        }
    }

    /// Feeds the last interval's signals at `now_us`; returns the difficulty in force.
    pub fn update(&mut self, s: Signals, now_us: u64) -> u8 {
        let score = self.score(s);
        if score >= 1.0 {
            self.calm_since_us = None;
            let may_raise = self
                .last_raise_us
                .is_none_or(|t| now_us >= t + self.cfg.step_us);
            if may_raise && self.level < self.cfg.levels.len() {
                self.level += 1;
                self.last_raise_us = Some(now_us);
            }
        } else if score < 0.5 {
            let since = *self.calm_since_us.get_or_insert(now_us);
            if self.level > 0 && now_us >= since + self.cfg.calm_us {
                self.level -= 1;
                self.calm_since_us = Some(now_us);
            }
        } else {
            self.calm_since_us = None;
        }
        self.difficulty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn flood() -> Signals {
        Signals {
            join_rate: 20_000.0,
            ..Default::default()
        }
    }

    #[test]
    fn attack_escalates_step_by_step_and_relaxes_when_calm() {
        let mut p = Pressure::new(PressureConfig::default());
        assert_eq!(p.update(Signals::default(), 0), 0);
        assert_eq!(p.update(flood(), S), 12);
        // One burst a second later does not jump a level: at most one raise per 2 s.
        assert_eq!(p.update(flood(), 2 * S), 12);
        assert_eq!(p.update(flood(), 3 * S), 15);
        assert_eq!(p.update(flood(), 5 * S), 17);
        assert_eq!(p.update(flood(), 7 * S), 17, "top level holds");
        // Calm: one level down per 10 s of calm.
        assert_eq!(p.update(Signals::default(), 8 * S), 17);
        assert_eq!(p.update(Signals::default(), 17 * S), 17);
        assert_eq!(p.update(Signals::default(), 18 * S), 15);
        assert_eq!(p.update(Signals::default(), 28 * S), 12);
        assert_eq!(p.update(Signals::default(), 38 * S), 0);
    }

    #[test]
    fn middling_signals_neither_raise_nor_relax() {
        let mut p = Pressure::new(PressureConfig::default());
        p.update(flood(), 0);
        let half = Signals {
            join_rate: 3_000.0,
            ..Default::default()
        };
        for s in 1..100 {
            assert_eq!(p.update(half, s * S), 12);
        }
    }

    #[test]
    fn any_signal_counts() {
        let p = Pressure::new(PressureConfig {
            cpu_high: 1.5,
            ..Default::default()
        });
        assert!(
            p.score(Signals {
                reject_ratio: 0.6,
                ..Default::default()
            }) >= 1.0
        );
        assert!(
            p.score(Signals {
                cpu: 1.6,
                ..Default::default()
            }) >= 1.0
        );
        assert!(
            p.score(Signals {
                join_rate: 100.0,
                cpu: 0.2,
                reject_ratio: 0.01
            }) < 0.5
        );
    }
}
