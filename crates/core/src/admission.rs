//! Admission: the waiting room of a space, as two counters.
//!
//! Contract: every caller gets a number, in arrival order; the line admits numbers below its
//! `head`, and the head advances at the configured outflow (never past the numbers handed out
//! plus a burst, and not while the space is at capacity). A caller's place is therefore
//! `number − head`, its ETA `place ÷ measured outflow`, and the line itself holds no
//! per-caller state: its length is bounded by `max_waiting` only to keep promises honest.
//! Numbers live in signed queue tokens (`ticket::QueueToken`) held by the callers.
//!
//! In a cluster each node runs its own line for a space, with a share of the space's outflow
//! ([`Line::set_share`]): the nodes' shares follow their demand ([`Line::demand`], exchanged
//! every second), so the space's configured rate and burst hold for the whole cluster.
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
    /// The settings in force: the configured ones scaled by this node's share.
    cfg: LineConfig,
    /// The configured settings (the whole space's, in a cluster).
    base: LineConfig,
    /// This node's share of the outflow, (0, 1].
    share: f64,
    /// Callers that arrived in the current window, and in the last whole one.
    arrivals: u64,
    arrivals_last: u64,
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

/// The smallest share of a space's outflow a node's line takes: a node with no demand a
/// moment ago still admits its first callers (at 2,000 a second configured, 10 a second).
pub const MIN_SHARE: f64 = 0.005;

/// A node's share of a space's outflow: its demand over the cluster's (`others`: the other
/// nodes' demands); with no demand anywhere, an equal part for each of the `nodes`.
pub fn share_of(mine: u64, others: &[u64], nodes: usize) -> f64 {
    let total = mine + others.iter().sum::<u64>();
    if total == 0 {
        return 1.0 / nodes.max(1) as f64;
    }
    mine as f64 / total as f64
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
            base: cfg,
            share: 1.0,
            arrivals: 0,
            arrivals_last: 0,
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

    /// Takes `share` of the configured outflow and burst (a node's part of a cluster's line;
    /// clamped to [[`MIN_SHARE`], 1]). The burst is at least one caller. Numbers already
    /// handed out keep their places; the head only moves slower or faster from now on.
    pub fn set_share(&mut self, share: f64, now_us: u64, listeners: u64) {
        let share = if share.is_finite() {
            share.clamp(MIN_SHARE, 1.0)
        } else {
            1.0
        };
        // Time so far runs at the old rate.
        self.advance(now_us, listeners);
        self.share = share;
        self.cfg.rate_per_s = self.base.rate_per_s * share;
        self.cfg.burst = ((self.base.burst as f64 * share).round() as u64).max(1);
        let limit = (self.tail + self.cfg.burst) as f64;
        self.head = self.head.min(limit);
    }

    /// This node's share of the outflow.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// What this line asks of the outflow: callers waiting now plus those that arrived in the
    /// last whole second.
    pub fn demand(&self) -> u64 {
        self.waiting() + self.arrivals_last
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
            // A window longer than a second (a quiet line) holds no arrivals of the last one.
            self.arrivals_last = if window < 2_000_000 { self.arrivals } else { 0 };
            self.arrivals = 0;
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
        self.arrivals += 1;
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

    /// A caller who waited in another node's line of the space (a cluster) asks here with
    /// `remaining_us` of its wait left: it takes the place as far from this line's head as
    /// this line admits in that time (at least the head, at most the end of the line), not the
    /// end. Numbers are not identities: two callers may share one and are admitted together.
    pub fn adopt(
        &mut self,
        remaining_us: u64,
        now_us: u64,
        listeners: u64,
        rand01: f64,
    ) -> Decision {
        self.advance(now_us, listeners);
        if self.pre_queue_open(now_us) {
            // Before the start every caller of this line draws; this one too.
            return self.arrive(now_us, listeners, (rand01 * u32::MAX as f64) as u32, rand01);
        }
        let ahead = (remaining_us as f64 / 1e6 * self.cfg.rate_per_s) as u64;
        let head = self.head as u64;
        let number = if head + ahead >= self.tail {
            self.tail += 1;
            self.tail - 1
        } else {
            // The last number the head has passed, plus the wait: a caller already due is in.
            (head + ahead).saturating_sub(1)
        };
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

    /// Callers a line admits between `from_us` and `to_us` when 5 arrive every 10 ms (more
    /// than it admits) and every one waiting asks again each 10 ms.
    fn admitted(l: &mut Line, from_us: u64, to_us: u64) -> u64 {
        let mut n = 0;
        let mut waiting = std::collections::VecDeque::new();
        let mut t = from_us;
        while t < to_us {
            for _ in 0..5 {
                match l.arrive(t, 0, 0, 0.5) {
                    Decision::Admit => n += 1,
                    Decision::Wait { number, .. } => waiting.push_back(number),
                    Decision::Full { .. } => panic!("an unbounded line is never full"),
                }
            }
            t += 10_000;
            while let Some(&number) = waiting.front() {
                if l.recheck(number, t, 0, 0.5) != Decision::Admit {
                    break;
                }
                waiting.pop_front();
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_share_of_the_outflow_admits_that_share() {
        // Two nodes of a cluster, each with half of 100 a second and half of the burst of 10:
        // together they admit what one line of 100 a second admits.
        let mut whole = Line::new(
            LineConfig {
                max_waiting: u64::MAX,
                ..cfg(100.0, 10)
            },
            0,
            None,
        );
        let mut halves = [0, 1].map(|_| {
            let mut l = Line::new(
                LineConfig {
                    max_waiting: u64::MAX,
                    ..cfg(100.0, 10)
                },
                0,
                None,
            );
            l.set_share(0.5, 0, 0);
            l
        });
        assert_eq!(halves[0].config().burst, 5);
        assert_eq!(halves[0].share(), 0.5);
        let one = admitted(&mut whole, 0, 10 * S);
        let two: u64 = halves.iter_mut().map(|l| admitted(l, 0, 10 * S)).sum();
        assert!(
            (1_000..=1_020).contains(&one),
            "one line admitted {one} in 10 s"
        );
        assert!(
            two.abs_diff(one) <= 10,
            "two half lines admitted {two}, one whole {one}"
        );
    }

    #[test]
    fn a_changed_share_keeps_places_and_changes_the_pace() {
        let mut l = Line::new(cfg(100.0, 0), 0, None);
        let numbers: Vec<u64> = (0..300)
            .map(|_| match l.arrive(0, 0, 0, 0.5) {
                Decision::Wait { number, .. } => number,
                d => panic!("{d:?}"),
            })
            .collect();
        // 1 s at the full rate, then a quarter share: number 100 is in, 150 needs 2 s more.
        assert_eq!(l.recheck(numbers[99], S, 0, 0.5), Decision::Admit);
        l.set_share(0.25, S, 0);
        assert!(matches!(
            l.recheck(numbers[149], 2 * S, 0, 0.5),
            Decision::Wait { .. }
        ));
        assert_eq!(
            l.recheck(numbers[149], 3 * S + 10_000, 0, 0.5),
            Decision::Admit
        );
        // The burst is at least one caller, and a share is clamped.
        l.set_share(0.0, 3 * S, 0);
        assert_eq!(l.share(), MIN_SHARE);
        assert_eq!(l.config().burst, 1);
        l.set_share(f64::NAN, 3 * S, 0);
        assert_eq!(l.share(), 1.0);
    }

    #[test]
    fn a_caller_from_another_nodes_line_keeps_its_remaining_wait() {
        let mut l = Line::new(cfg(100.0, 0), 0, None);
        for _ in 0..1_000 {
            l.arrive(0, 0, 0, 0.5);
        }
        // 1 s left at 100 a second: 100 places behind the head, not behind 1,000 callers.
        match l.adopt(S, 0, 0, 0.5) {
            Decision::Wait {
                number, position, ..
            } => {
                assert_eq!((number, position), (99, 99));
                assert_eq!(l.recheck(number, S + 10_000, 0, 0.5), Decision::Admit);
            }
            d => panic!("{d:?}"),
        }
        // Due already: in at once. Longer than the line: at its end.
        assert_eq!(l.adopt(0, 2 * S, 0, 0.5), Decision::Admit);
        assert!(matches!(
            l.adopt(3_600 * S, 2 * S, 0, 0.5),
            Decision::Wait { number: 1_000, .. }
        ));
        assert_eq!(l.waiting(), 1_001 - 200);
    }

    #[test]
    fn demand_is_who_waits_and_who_came_in_the_last_second() {
        let mut l = Line::new(cfg(10.0, 5), 0, None);
        for _ in 0..20 {
            l.arrive(0, 0, 0, 0.5);
        }
        assert_eq!(l.demand(), 15, "15 waiting, no whole second yet");
        l.recheck(0, S, 0, 0.5);
        assert_eq!(
            l.demand(),
            5 + 20,
            "5 still waiting, 20 arrived in the last second"
        );
        l.recheck(0, 5 * S, 0, 0.5);
        assert_eq!(l.demand(), 0, "nobody waits or came");
        assert_eq!(share_of(30, &[10, 0], 3), 0.75);
        assert_eq!(share_of(0, &[0, 0], 3), 1.0 / 3.0);
        assert_eq!(share_of(0, &[], 0), 1.0);
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
