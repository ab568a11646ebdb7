//! Admission: the waiting room of a space, as two counters.
//!
//! Contract: every caller gets a number, in arrival order; the line admits numbers below its
//! `head`, and the head advances at the configured outflow (never past the numbers handed out
//! plus a burst, and not while the space is at capacity). A caller's place is therefore
//! `number − head`, its ETA `place ÷ measured outflow`, and the line itself holds no
//! per-caller state: its length is bounded by `max_waiting` only to keep promises honest.
//! Numbers live in signed queue tokens (`ticket::QueueToken`) held by the callers.
//!
//! Before a scheduled start the line can open early (a pre-queue). Callers who arrive then
//! draw a lottery number; at the start they are ordered by it, so arriving in the last second
//! before the start gives no advantage over arriving an hour early. Time is a parameter.

/// Settings of one line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineConfig {
    /// Admissions per second (the outflow).
    pub rate_per_s: f64,
    /// Admissions allowed at once when the line is empty.
    pub burst: u64,
    /// Callers the line holds before it answers "full, try later".
    pub max_waiting: u64,
    /// Listeners the space may have; the line stops while it is full.
    pub capacity: u64,
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig {
            rate_per_s: 2_000.0,
            burst: 2_000,
            max_waiting: 1_000_000,
            capacity: 1_000_000,
        }
    }
}

/// Marks a number drawn in the pre-queue lottery (the low 32 bits are the draw).
pub const LOTTERY: u64 = 1 << 63;

/// What a caller is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// In: issue a ticket.
    Admit,
    /// In line: present `number` again after `retry_after_ms`.
    Wait {
        /// The caller's number (to put in its queue token).
        number: u64,
        /// Callers ahead of it.
        position: u64,
        /// Estimated wait, ms.
        eta_ms: u64,
        /// When to ask again, ms (jittered).
        retry_after_ms: u64,
    },
    /// The line is full: ask again after `retry_after_ms`.
    Full {
        /// When to ask again, ms (jittered).
        retry_after_ms: u64,
    },
}

/// One space's line. See the module docs for the contract.
#[derive(Debug, Clone)]
pub struct Line {
    cfg: LineConfig,
    head: f64,
    tail: u64,
    last_us: u64,
    /// Start time before which callers join the pre-queue lottery.
    start_us: Option<u64>,
    pre_count: u64,
    /// Exponentially weighted advance of the head, numbers per second, as measured.
    outflow: f64,
    head_at_window_start: f64,
    window_start_us: u64,
}

/// Bounds of the advice to come back: never hammer, never wait blind too long.
const MIN_RETRY_MS: u64 = 500;
const MAX_RETRY_MS: u64 = 10_000;

fn jitter(ms: u64, rand01: f64) -> u64 {
    // ±25 %: a herd told the same thing does not come back in lockstep.
    (ms as f64 * (0.75 + 0.5 * rand01.clamp(0.0, 1.0))) as u64
}

impl Line {
    /// An empty line at `now_us`; with `start_us`, callers before it join the pre-queue.
    pub fn new(cfg: LineConfig, now_us: u64, start_us: Option<u64>) -> Self {
        Line {
            cfg,
            head: cfg.burst as f64,
            tail: 0,
            last_us: now_us,
            start_us: start_us.filter(|&s| s > now_us),
            pre_count: 0,
            outflow: cfg.rate_per_s,
            head_at_window_start: cfg.burst as f64,
            window_start_us: now_us,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> LineConfig {
        self.cfg
    }

    /// Callers waiting now (numbers handed out and not yet reached by the head).
    pub fn waiting(&self) -> u64 {
        self.tail.saturating_sub(self.head as u64)
    }

    /// The measured outflow: how fast the head advances, numbers per second.
    pub fn outflow(&self) -> f64 {
        self.outflow
    }

    fn pre_queue_open(&self, now_us: u64) -> bool {
        self.start_us.is_some_and(|s| now_us < s)
    }

    fn advance(&mut self, now_us: u64, listeners: u64) {
        if let Some(start) = self.start_us {
            if now_us < start {
                self.last_us = now_us;
                return;
            }
            // The start: pre-queue callers hold the first numbers, ordered by their draw.
            self.start_us = None;
            self.tail = self.tail.max(self.pre_count);
            self.head = self.cfg.burst as f64;
            self.head_at_window_start = self.head;
            self.window_start_us = start;
            self.last_us = start;
        }
        let dt = now_us.saturating_sub(self.last_us) as f64 / 1e6;
        self.last_us = now_us;
        if listeners < self.cfg.capacity {
            let limit = (self.tail + self.cfg.burst) as f64;
            self.head = (self.head + dt * self.cfg.rate_per_s).min(limit);
        }
        // The head is what admits: its measured speed is the honest outflow (the configured
        // rate, or less while the space is at capacity).
        let window = now_us.saturating_sub(self.window_start_us);
        if window >= 1_000_000 {
            let advanced = (self.head - self.head_at_window_start).max(0.0);
            let measured = advanced * 1e6 / window as f64;
            // When nobody is waiting the head is held at the burst limit: the configured rate
            // is then the honest estimate.
            let sample = if self.waiting() > 0 {
                measured
            } else {
                self.cfg.rate_per_s
            };
            self.outflow = 0.5 * self.outflow + 0.5 * sample;
            self.head_at_window_start = self.head;
            self.window_start_us = now_us;
        }
    }

    fn place(&self, number: u64) -> u64 {
        if number & LOTTERY != 0 {
            let draw = number & 0xffff_ffff;
            (draw * self.pre_count) >> 32
        } else {
            number
        }
    }

    fn wait(&self, number: u64, now_us: u64, rand01: f64) -> Decision {
        let (position, eta_ms) = if let Some(start) = self.start_us.filter(|&s| now_us < s) {
            let ahead = self.place(number).saturating_sub(self.cfg.burst);
            let eta = (start - now_us) / 1000 + (ahead as f64 / self.cfg.rate_per_s * 1e3) as u64;
            (self.place(number), eta)
        } else {
            let position = self.place(number).saturating_sub(self.head as u64);
            let rate = self.outflow.max(self.cfg.rate_per_s * 0.01).max(0.1);
            (position, (position as f64 / rate * 1e3) as u64)
        };
        let retry = (eta_ms / 2).clamp(MIN_RETRY_MS, MAX_RETRY_MS);
        Decision::Wait {
            number,
            position,
            eta_ms,
            retry_after_ms: jitter(retry, rand01),
        }
    }

    /// A new caller at `now_us`, while the space has `listeners`. `draw` is a random u32 (the
    /// lottery number if the pre-queue is open); `rand01` a random number in [0, 1) for jitter.
    pub fn arrive(&mut self, now_us: u64, listeners: u64, draw: u32, rand01: f64) -> Decision {
        self.advance(now_us, listeners);
        if self.pre_queue_open(now_us) {
            if self.pre_count >= self.cfg.max_waiting {
                return Decision::Full {
                    retry_after_ms: jitter(MAX_RETRY_MS, rand01),
                };
            }
            self.pre_count += 1;
            return self.wait(LOTTERY | draw as u64, now_us, rand01);
        }
        if self.waiting() >= self.cfg.max_waiting {
            return Decision::Full {
                retry_after_ms: jitter(MAX_RETRY_MS, rand01),
            };
        }
        let number = self.tail;
        self.tail += 1;
        self.check(number, now_us, rand01)
    }

    /// A caller presents its `number` again.
    pub fn recheck(&mut self, number: u64, now_us: u64, listeners: u64, rand01: f64) -> Decision {
        self.advance(now_us, listeners);
        self.check(number, now_us, rand01)
    }

    fn check(&mut self, number: u64, now_us: u64, rand01: f64) -> Decision {
        if !self.pre_queue_open(now_us) && (self.place(number) as f64) < self.head {
            Decision::Admit
        } else {
            self.wait(number, now_us, rand01)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn cfg(rate: f64, burst: u64) -> LineConfig {
        LineConfig {
            rate_per_s: rate,
            burst,
            max_waiting: 1_000,
            capacity: u64::MAX,
        }
    }

    #[test]
    fn a_quiet_line_admits_at_once() {
        let mut l = Line::new(cfg(10.0, 5), 0, None);
        for i in 0..5 {
            assert_eq!(l.arrive(i, 0, 0, 0.5), Decision::Admit);
        }
    }

    #[test]
    fn a_storm_gets_places_in_order_with_honest_etas() {
        let mut l = Line::new(cfg(100.0, 10), 0, None);
        let mut waits = Vec::new();
        for _ in 0..1_000 {
            match l.arrive(0, 0, 0, 0.5) {
                Decision::Admit => {}
                Decision::Wait {
                    number,
                    position,
                    eta_ms,
                    retry_after_ms,
                } => {
                    waits.push((number, position, eta_ms));
                    assert!((MIN_RETRY_MS * 3 / 4..=MAX_RETRY_MS * 5 / 4).contains(&retry_after_ms));
                }
                Decision::Full { .. } => panic!("line of 1,000 must hold 990 waiting"),
            }
        }
        assert_eq!(waits.len(), 990);
        // Positions are 0.., ETAs position / rate.
        assert_eq!(waits[0].1, 0);
        assert_eq!(waits[989].1, 989);
        assert_eq!(waits[500].2, 5_000);
        // After 5 s at 100/s, number 500 is in and number 600 is 90 places away.
        let (n500, n600) = (waits[490].0, waits[590].0);
        assert_eq!(l.recheck(n500, 5 * S, 0, 0.5), Decision::Admit);
        assert!(matches!(
            l.recheck(n600, 5 * S, 0, 0.5),
            Decision::Wait { position: 90, .. }
        ));
    }

    #[test]
    fn a_full_line_says_so_and_keeps_no_one() {
        let mut l = Line::new(
            LineConfig {
                max_waiting: 3,
                ..cfg(1.0, 0)
            },
            0,
            None,
        );
        for _ in 0..3 {
            assert!(matches!(l.arrive(0, 0, 0, 0.0), Decision::Wait { .. }));
        }
        assert!(matches!(l.arrive(0, 0, 0, 0.0), Decision::Full { .. }));
        assert_eq!(l.waiting(), 3);
    }

    #[test]
    fn a_space_at_capacity_stops_the_line() {
        let mut l = Line::new(
            LineConfig {
                capacity: 10,
                ..cfg(100.0, 0)
            },
            0,
            None,
        );
        let Decision::Wait { number, .. } = l.arrive(0, 10, 0, 0.0) else {
            panic!()
        };
        assert!(matches!(
            l.recheck(number, 10 * S, 10, 0.0),
            Decision::Wait { .. }
        ));
        assert_eq!(l.recheck(number, 10 * S + 20_000, 9, 0.0), Decision::Admit);
    }

    #[test]
    fn pre_queue_order_is_a_lottery_not_a_race() {
        let start = 60 * S;
        let mut l = Line::new(cfg(10.0, 0), 0, Some(start));
        // Early bird draws high, last-second caller draws low.
        let Decision::Wait {
            number: early,
            eta_ms,
            ..
        } = l.arrive(S, 0, u32::MAX, 0.0)
        else {
            panic!()
        };
        assert!(eta_ms >= 59_000, "the ETA counts the time to the start");
        for i in 0..98 {
            l.arrive(2 * S + i, 0, (i as u32) << 24, 0.0);
        }
        let Decision::Wait { number: late, .. } = l.arrive(start - 1, 0, 0, 0.0) else {
            panic!()
        };
        // Nobody is admitted before the start.
        assert!(matches!(
            l.recheck(late, start - 1, 0, 0.0),
            Decision::Wait { .. }
        ));
        // After the start, the line runs at 10/s: the low draw gets in within 0.2 s, the high
        // draw waits for nearly all 100.
        assert_eq!(l.recheck(late, start + S / 5, 0, 0.0), Decision::Admit);
        assert!(
            matches!(l.recheck(early, start + S, 0, 0.0), Decision::Wait { position, .. } if position > 80)
        );
        assert_eq!(l.recheck(early, start + 11 * S, 0, 0.0), Decision::Admit);
        // Newcomers after the start queue behind the whole pre-queue.
        assert!(matches!(
            l.arrive(start + 11 * S, 0, 0, 0.0),
            Decision::Admit | Decision::Wait { .. }
        ));
    }

    #[test]
    fn measured_outflow_drives_the_eta_when_capacity_holds_the_line() {
        let mut l = Line::new(
            LineConfig {
                capacity: 5,
                ..cfg(100.0, 0)
            },
            0,
            None,
        );
        let mut last = 0;
        for _ in 0..50 {
            if let Decision::Wait { number, .. } = l.arrive(0, 5, 0, 0.0) {
                last = number;
            }
        }
        for s in 1..6 {
            l.recheck(last, s * S, 5, 0.0);
        }
        assert!(
            l.outflow() < 10.0,
            "nobody left: measured outflow {}",
            l.outflow()
        );
        let Decision::Wait {
            position, eta_ms, ..
        } = l.recheck(last, 6 * S, 5, 0.0)
        else {
            panic!()
        };
        assert_eq!(position, 49);
        // At the configured 100/s the ETA would be 0.49 s; nobody is leaving, so it is far longer.
        assert!(eta_ms > 5_000, "eta {eta_ms} ms");
        // Room again: the head moves at the configured rate, and so does the estimate.
        for s in 7..12 {
            l.recheck(last, s * S, 0, 0.0);
        }
        assert!(l.outflow() > 90.0, "outflow {}", l.outflow());
    }

    #[test]
    fn eta_is_honest_at_a_slow_outflow() {
        // Two seconds per admission; callers re-ask every second.
        let mut l = Line::new(cfg(0.5, 0), 0, None);
        let numbers: Vec<u64> = (0..6)
            .map(|_| match l.arrive(0, 0, 0, 0.0) {
                Decision::Wait { number, .. } => number,
                other => panic!("{other:?}"),
            })
            .collect();
        let mut t = 0;
        for _ in 0..4 {
            t += S;
            for &n in &numbers {
                l.recheck(n, t, 0, 0.0);
            }
        }
        let Decision::Wait {
            position, eta_ms, ..
        } = l.recheck(numbers[5], t, 0, 0.0)
        else {
            panic!()
        };
        assert_eq!(position, 3);
        assert!(
            (5_500..=6_500).contains(&eta_ms),
            "position 3 at 0.5/s: told {eta_ms} ms"
        );
    }
}
