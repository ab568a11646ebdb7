//! What joins through the join API did: one [`JoinRecord`] per listener attempt (requests,
//! answers, time in line, proof of work), and [`JoinStats`], which adds records up exactly (it
//! travels in [`crate::observe::stats::Aggregate`] from agents to the parent).

use crate::observe::hist::Hist;
use crate::observe::measure::Failure;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one listener's join did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinRecord {
    /// Scheduled join, Unix µs.
    pub scheduled_us: u64,
    /// The `200`, Unix µs.
    pub admitted_us: Option<u64>,
    /// Requests sent.
    pub requests: u32,
    /// Answers by status (`"202"`) or network failure (`"error_reset"`).
    pub answers: BTreeMap<String, u32>,
    /// Waited in line at least once.
    pub queued: bool,
    /// Asked for proof of work at least once.
    pub challenged: bool,
    /// Challenges solved.
    pub pow_solved: u32,
    /// Time spent solving, µs.
    pub pow_us: u64,
    /// Time spent waiting for a free core to solve on, µs (a generator artefact: a real
    /// audience solves on its own devices, in parallel).
    pub pow_wait_us: u64,
    /// Hardest challenge met.
    pub max_difficulty: u8,
    /// First `202`: (Unix µs, the server's `eta_ms`).
    pub first_queued: Option<(u64, u64)>,
    /// Why the join failed.
    pub failure: Option<Failure>,
    /// Stream paths (Ogg, WebSocket) with the ticket.
    pub paths: Option<(String, String)>,
}

impl JoinRecord {
    pub(crate) fn count(&mut self, key: String) {
        *self.answers.entry(key).or_default() += 1;
    }
}

/// Join figures added up over listeners. See the module docs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinStats {
    /// Joins (one per listener attempt through the API).
    pub joins: u64,
    /// Joins that got a ticket.
    pub admitted: u64,
    /// Joins that did not.
    pub failed: u64,
    /// Failed joins by reason.
    pub failures: BTreeMap<String, u64>,
    /// Requests sent.
    pub requests: u64,
    /// Answers by status or network failure.
    pub answers: BTreeMap<String, u64>,
    /// Joins that waited in line.
    pub queued: u64,
    /// Joins asked for proof of work.
    pub challenged: u64,
    /// Challenges solved.
    pub pow_solved: u64,
    /// Hardest challenge met.
    pub pow_max_difficulty: u64,
    /// Scheduled → `200`, µs.
    pub join: Hist,
    /// First `202` → `200`, µs.
    pub queue_wait: Hist,
    /// Time to solve one challenge (on a free core), µs.
    pub pow: Hist,
    /// Per challenged join: time waited for a free core to solve on, µs.
    pub pow_wait: Hist,
    /// Scheduled → `200` less the time waited for a core, µs: the join a listener solving on
    /// its own device would see.
    pub join_net: Hist,
    /// |actual wait − the first `202`'s `eta_ms`|, µs.
    pub eta_error: Hist,
    /// Sum of (actual wait − `eta_ms`), ms, for the mean bias.
    pub eta_bias_sum_ms: f64,
    /// Time spent solving challenges in all, µs (about the CPU it took).
    pub pow_us_total: u64,
}

impl JoinStats {
    /// Adds one join.
    pub fn record(&mut self, r: &JoinRecord) {
        self.joins += 1;
        self.requests += r.requests as u64;
        for (k, v) in &r.answers {
            *self.answers.entry(k.clone()).or_default() += *v as u64;
        }
        self.queued += r.queued as u64;
        self.challenged += r.challenged as u64;
        self.pow_solved += r.pow_solved as u64;
        self.pow_max_difficulty = self.pow_max_difficulty.max(r.max_difficulty as u64);
        if r.pow_solved > 0 {
            self.pow.record(r.pow_us / r.pow_solved as u64);
            self.pow_wait.record(r.pow_wait_us);
            self.pow_us_total += r.pow_us;
        }
        match r.admitted_us {
            Some(t) => {
                self.admitted += 1;
                self.join.record(t.saturating_sub(r.scheduled_us));
                self.join_net.record(
                    t.saturating_sub(r.scheduled_us)
                        .saturating_sub(r.pow_wait_us),
                );
                if let Some((q, eta_ms)) = r.first_queued {
                    let waited = t.saturating_sub(q);
                    self.queue_wait.record(waited);
                    let eta_us = eta_ms * 1000;
                    self.eta_error.record(waited.abs_diff(eta_us));
                    self.eta_bias_sum_ms += (waited as f64 - eta_us as f64) / 1000.0;
                }
            }
            None => {
                self.failed += 1;
                let why = r.failure.as_ref().map_or("unknown".into(), Failure::label);
                *self.failures.entry(why).or_default() += 1;
            }
        }
    }

    /// Adds everything `o` counted.
    pub fn merge(&mut self, o: &JoinStats) {
        self.joins += o.joins;
        self.admitted += o.admitted;
        self.failed += o.failed;
        self.requests += o.requests;
        self.queued += o.queued;
        self.challenged += o.challenged;
        self.pow_solved += o.pow_solved;
        self.pow_max_difficulty = self.pow_max_difficulty.max(o.pow_max_difficulty);
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.answers {
            *self.answers.entry(k.clone()).or_default() += v;
        }
        self.join.merge(&o.join);
        self.queue_wait.merge(&o.queue_wait);
        self.pow.merge(&o.pow);
        self.pow_wait.merge(&o.pow_wait);
        self.join_net.merge(&o.join_net);
        self.eta_error.merge(&o.eta_error);
        self.eta_bias_sum_ms += o.eta_bias_sum_ms;
        self.pow_us_total += o.pow_us_total;
    }
}
