//! Exact anti-replay for proof-of-work solutions in fixed memory, as DTLS and IPsec do it.
//!
//! Contract: every challenge a node signs carries the node's identity (`origin`, random at
//! start) and the next value of its counter. A node remembers spent counters in a sliding
//! bitmap of the last [`REPLAY_WINDOW`] (W) counters of each origin: a counter in the window
//! and not yet set is accepted and set; one already set is a replay; one below the window is
//! refused as expired. Nothing is approximate: unlike a sketch used as a set, no number of
//! spent solutions makes an honest one look spent.
//!
//! No honest refusal: a node issues at most W challenges in any [`IssueBudget`] span (a
//! challenge's lifetime plus slack), so while a challenge is unexpired fewer than W counters
//! of its origin were issued after it, and it cannot have left the window. Beyond the budget
//! the node says when to ask again instead of issuing.
//!
//! Memory: W bits (512 KiB) for the node's own challenges, allocated at start, plus as much per
//! other node whose challenges this one redeems (a cluster sharing the ticket secret), at most
//! [`MAX_ORIGINS`] in all. Time is a parameter: wall seconds for the budget (as in the
//! challenge's expiry), any monotonic µs for forgetting idle origins.

/// W: the counters each origin's window remembers (2^22 bits = 512 KiB), and so the most
/// challenges a node issues per [`IssueBudget`] span.
pub const REPLAY_WINDOW: u64 = 1 << 22;

/// Origins whose windows a node holds at most (itself included): 4 MiB at most.
pub const MAX_ORIGINS: usize = 8;

/// Seconds added to a challenge's lifetime in the issuing budget, for clock differences
/// between the node that issues a challenge and the one that redeems it.
pub const CLOCK_SLACK_S: u64 = 2;

/// Why a spent counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This counter was already spent.
    Replayed,
    /// The counter is below the window: too old to tell, so refused.
    Expired,
    /// The challenge comes from another node and this node holds [`MAX_ORIGINS`] windows
    /// already, all in use: nothing is remembered for it, so it is not accepted.
    TooManyOrigins,
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplayError::Replayed => "that challenge was already used",
            ReplayError::Expired => "that challenge is too old",
            ReplayError::TooManyOrigins => "that challenge was issued by another node",
        })
    }
}

impl std::error::Error for ReplayError {}

/// A sliding bitmap over the last `W` counters of one origin (W a power of two).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    bits: Box<[u64]>,
    mask: u64,
    /// Highest counter spent, if any.
    top: Option<u64>,
}

impl ReplayWindow {
    /// A window of [`REPLAY_WINDOW`] counters.
    pub fn new() -> Self {
        Self::with_size(REPLAY_WINDOW)
    }

    /// A window of `w` counters (rounded up to a power of two, at least 64).
    pub fn with_size(w: u64) -> Self {
        let w = w.max(64).next_power_of_two();
        ReplayWindow {
            bits: vec![0u64; (w / 64) as usize].into_boxed_slice(),
            mask: w - 1,
            top: None,
        }
    }

    /// Counters remembered (W).
    pub fn size(&self) -> u64 {
        self.mask + 1
    }

    /// Bytes of bitmap held.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// Highest counter spent so far.
    pub fn top(&self) -> Option<u64> {
        self.top
    }

    fn bit(&self, c: u64) -> (usize, u64) {
        let i = c & self.mask;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Clears the bits of counters `from..=to` (fewer than W of them).
    fn clear(&mut self, from: u64, to: u64) {
        let mut c = from;
        while c <= to {
            let (w, b) = self.bit(c);
            if c & 63 == 0 && to - c >= 63 {
                self.bits[w] = 0;
                c += 64;
            } else {
                self.bits[w] &= !b;
                c += 1;
            }
        }
    }

    /// Spends `counter`: `Ok` the first time it is seen while in the window.
    pub fn check_and_set(&mut self, counter: u64) -> Result<(), ReplayError> {
        let w = self.size();
        match self.top {
            Some(top) if counter <= top => {
                if top - counter >= w {
                    return Err(ReplayError::Expired);
                }
            }
            Some(top) => {
                // The window slides up to `counter`: forget what falls out of it.
                if counter - top >= w {
                    self.bits.iter_mut().for_each(|b| *b = 0);
                } else {
                    self.clear(top + 1, counter);
                }
                self.top = Some(counter);
            }
            None => self.top = Some(counter),
        }
        let (i, b) = self.bit(counter);
        if self.bits[i] & b != 0 {
            return Err(ReplayError::Replayed);
        }
        self.bits[i] |= b;
        Ok(())
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

/// How many challenges a node issued per wall second, over a span of seconds: the issuing side
/// of the no-honest-refusal guarantee. Also hands out the counters.
#[derive(Debug, Clone)]
pub struct IssueBudget {
    next: u64,
    limit: u64,
    span_s: u64,
    /// `(second, challenges issued in it)`, indexed by second modulo the span.
    slots: Vec<(u64, u64)>,
}

impl IssueBudget {
    /// At most `limit` counters in any `ttl_s + 1 + CLOCK_SLACK_S` consecutive seconds: a
    /// challenge issued at second `s` and valid through `s + ttl_s` sees at most `limit`
    /// counters issued from its own to the last one while it can be redeemed.
    pub fn new(limit: u64, ttl_s: u64) -> Self {
        let span_s = ttl_s + 1 + CLOCK_SLACK_S;
        IssueBudget {
            next: 0,
            limit,
            span_s,
            slots: vec![(0, 0); span_s as usize],
        }
    }

    /// The span of seconds over which at most `limit` counters are issued.
    pub fn span_s(&self) -> u64 {
        self.span_s
    }

    fn counted(&self, now_s: u64) -> impl Iterator<Item = &(u64, u64)> + '_ {
        // Slots of the last `span_s` seconds, and any "future" ones left by a clock that went
        // back (counted: the bound must hold on whatever clock the expiry is read with).
        self.slots
            .iter()
            .filter(move |(s, n)| *n > 0 && s + self.span_s > now_s)
    }

    /// Counters issued in the span ending at `now_s`.
    pub fn issued(&self, now_s: u64) -> u64 {
        self.counted(now_s).map(|(_, n)| n).sum()
    }

    /// The next counter, or `Err(seconds)` to wait when `limit` were issued within the span.
    pub fn issue(&mut self, now_s: u64) -> Result<u64, u64> {
        if self.issued(now_s) >= self.limit {
            let oldest = self.counted(now_s).map(|(s, _)| *s).min().unwrap_or(now_s);
            return Err((oldest + self.span_s).saturating_sub(now_s).max(1));
        }
        let slot = &mut self.slots[(now_s % self.span_s) as usize];
        if slot.0 != now_s {
            *slot = (now_s, 0);
        }
        slot.1 += 1;
        let c = self.next;
        self.next += 1;
        Ok(c)
    }
}

#[derive(Debug)]
struct Origin {
    id: u64,
    window: ReplayWindow,
    last_us: u64,
}

/// The spent counters of this node's challenges and of other nodes' (see the module docs).
#[derive(Debug)]
pub struct AntiReplay {
    /// This node's window first, then other origins' as they appear.
    origins: Vec<Origin>,
    window: u64,
    idle_us: u64,
}

impl AntiReplay {
    /// Windows of `window` counters for origin `own` (allocated now) and for up to
    /// `MAX_ORIGINS − 1` other origins (allocated when their first challenge is spent, dropped
    /// after `idle_us` without one: by then all that window remembered has expired).
    pub fn new(own: u64, window: u64, idle_us: u64, now_us: u64) -> Self {
        AntiReplay {
            origins: vec![Origin {
                id: own,
                window: ReplayWindow::with_size(window),
                last_us: now_us,
            }],
            window,
            idle_us,
        }
    }

    /// This node's origin.
    pub fn own(&self) -> u64 {
        self.origins[0].id
    }

    /// Bytes of bitmap held now (W/8 per origin).
    pub fn bytes(&self) -> usize {
        self.origins.iter().map(|o| o.window.bytes()).sum()
    }

    /// Spends `counter` of `origin` at `now_us`.
    pub fn spend(&mut self, origin: u64, counter: u64, now_us: u64) -> Result<(), ReplayError> {
        let i = match self.origins.iter().position(|o| o.id == origin) {
            Some(i) => i,
            None => {
                self.forget_idle(now_us);
                if self.origins.len() >= MAX_ORIGINS {
                    return Err(ReplayError::TooManyOrigins);
                }
                self.origins.push(Origin {
                    id: origin,
                    window: ReplayWindow::with_size(self.window),
                    last_us: now_us,
                });
                self.origins.len() - 1
            }
        };
        let o = &mut self.origins[i];
        o.last_us = o.last_us.max(now_us);
        o.window.check_and_set(counter)
    }

    /// Drops other origins' windows unused for `idle_us` (never this node's own).
    fn forget_idle(&mut self, now_us: u64) {
        let own = self.origins[0].id;
        let idle = self.idle_us;
        self.origins
            .retain(|o| o.id == own || now_us.saturating_sub(o.last_us) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_accepted_once_while_in_the_window() {
        let mut w = ReplayWindow::with_size(64);
        assert_eq!(w.check_and_set(10), Ok(()));
        assert_eq!(w.check_and_set(10), Err(ReplayError::Replayed));
        assert_eq!(
            w.check_and_set(3),
            Ok(()),
            "an older unspent counter in the window"
        );
        assert_eq!(w.check_and_set(3), Err(ReplayError::Replayed));
        assert_eq!(w.check_and_set(73), Ok(()));
        assert_eq!(
            w.check_and_set(9),
            Err(ReplayError::Expired),
            "73 - 9 >= 64"
        );
        assert_eq!(
            w.check_and_set(10),
            Err(ReplayError::Replayed),
            "10 is the oldest counter still remembered"
        );
        assert_eq!(w.check_and_set(11), Ok(()));
        // Sliding clears what falls out, so a slot's new counter is not mistaken for its old one.
        assert_eq!(w.check_and_set(74), Ok(()));
        assert_eq!(w.check_and_set(1_000), Ok(()));
        for c in 937..1_000 {
            assert_eq!(w.check_and_set(c), Ok(()), "{c}");
        }
        assert_eq!(w.check_and_set(936), Err(ReplayError::Expired));
        assert_eq!(w.bytes(), 8);
        assert_eq!(ReplayWindow::new().bytes(), 512 * 1024);
    }

    #[test]
    fn sliding_by_whole_words_and_partial_words_forgets_exactly_the_counters_that_left() {
        let mut w = ReplayWindow::with_size(256);
        for c in 0..256 {
            w.check_and_set(c).unwrap();
        }
        // Slide by 130 (two whole words and a bit): 130..=255 stay spent, 256..=385 are new.
        w.check_and_set(385).unwrap();
        for c in 130..256 {
            assert_eq!(w.check_and_set(c), Err(ReplayError::Replayed), "{c}");
        }
        for c in 256..385 {
            assert_eq!(w.check_and_set(c), Ok(()), "{c}");
        }
        assert_eq!(w.check_and_set(129), Err(ReplayError::Expired));
    }

    #[test]
    fn the_budget_issues_at_most_its_limit_per_span_and_says_when_to_come_back() {
        let mut b = IssueBudget::new(5, 10); // span 13 s
        assert_eq!(b.span_s(), 13);
        for i in 0..3 {
            assert_eq!(b.issue(100), Ok(i));
        }
        assert_eq!(b.issue(105), Ok(3));
        assert_eq!(b.issue(110), Ok(4));
        // Five within 13 s: the next waits until second 100 leaves the span (at 113).
        assert_eq!(b.issue(111), Err(2));
        assert_eq!(b.issued(111), 5);
        assert_eq!(b.issue(113), Ok(5), "the three of second 100 left the span");
        assert_eq!(b.issue(113), Ok(6));
        assert_eq!(b.issue(113), Ok(7));
        assert_eq!(b.issue(113), Err(5), "second 105 leaves at 118");
        // A clock that goes back still counts what was issued "later".
        assert_eq!(b.issue(90), Err(28));
    }

    #[test]
    fn no_honest_counter_leaves_the_window_while_the_budget_holds() {
        // Issue at the budget's limit every second; redeem each counter at the last second of
        // its validity, after everything issued since: never expired, never a replay.
        let (w, ttl) = (1_024, 10);
        let mut budget = IssueBudget::new(w, ttl);
        let mut seen = AntiReplay::new(1, w, 1, 0);
        let mut issued: Vec<(u64, u64)> = Vec::new();
        for now in 1_000..1_100u64 {
            while let Ok(c) = budget.issue(now) {
                issued.push((now, c));
            }
            // Everything issued at `now - ttl` is redeemed now (its last valid second).
            for &(_, c) in issued.iter().filter(|(s, _)| *s + ttl == now) {
                assert_eq!(seen.spend(1, c, now), Ok(()), "counter {c} at {now}");
                assert_eq!(seen.spend(1, c, now), Err(ReplayError::Replayed));
            }
        }
        assert!(issued.len() as u64 > 5 * w, "{} issued", issued.len());
    }

    #[test]
    fn other_nodes_challenges_have_their_own_windows_bounded_in_number() {
        let mut a = AntiReplay::new(7, 64, 1_000, 0);
        assert_eq!(a.own(), 7);
        assert_eq!(a.spend(7, 5, 0), Ok(()));
        assert_eq!(a.spend(8, 5, 0), Ok(()), "the same counter of another node");
        assert_eq!(a.spend(8, 5, 1), Err(ReplayError::Replayed));
        for o in 9..(9 + MAX_ORIGINS as u64 - 2) {
            assert_eq!(a.spend(o, 0, 10), Ok(()));
        }
        assert_eq!(a.bytes(), MAX_ORIGINS * 8);
        assert_eq!(a.spend(100, 0, 20), Err(ReplayError::TooManyOrigins));
        // Idle windows are forgotten (all they held has expired); the node's own never is.
        assert_eq!(a.spend(100, 0, 2_000), Ok(()));
        assert_eq!(a.bytes(), 2 * 8);
        assert_eq!(a.spend(7, 5, 2_000), Err(ReplayError::Replayed));
    }
}
