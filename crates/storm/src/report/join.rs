//! The report's `join` section, from [`crate::observe::join::JoinStats`]: join latency, time in
//! line, proof of work, and whether the generator's own cores were the limit.

use crate::observe::hist::Hist;
use crate::observe::hist::Percentiles;
use crate::observe::join::JoinStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The report's `join` section (runs that join through the API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinReport {
    /// Joins (one per listener attempt).
    pub joins: u64,
    /// Joins that got a ticket.
    pub admitted: u64,
    /// Joins that did not.
    pub failed: u64,
    /// Failed joins by reason (`timeout_join`, `http_403`, `protocol_pow_too_hard`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Join requests sent.
    pub requests: u64,
    /// Answers by status (`"200"`, `"202"`, `"401"`, `"429"`, `"503"`) or network failure
    /// (`"error_reset"`, `"error_closed"`, ...).
    pub answers: BTreeMap<String, u64>,
    /// Joins that waited in line at least once.
    pub queued: u64,
    /// Joins asked for proof of work.
    pub challenged: u64,
    /// Challenges solved.
    pub pow_solved: u64,
    /// Hardest challenge met, bits.
    pub pow_max_difficulty: u64,
    /// Scheduled time → `200` (the ticket), ms.
    pub join_ms: Percentiles,
    /// `join_ms` less the time spent waiting for a free generator core to solve a proof of work
    /// on (the solving itself included): what a listener solving on its own device would see.
    pub join_net_ms: Percentiles,
    /// First `202` → `200`, ms.
    pub queue_wait_ms: Percentiles,
    /// Time to solve one challenge on a free core, ms.
    pub pow_ms: Percentiles,
    /// Per challenged join, time waited for a free generator core to solve on, ms (a generator
    /// artefact: it solves every listener's challenges on the cores of one machine).
    pub pow_queue_ms: Percentiles,
    /// Time spent solving challenges in all, s (wall time on a core; about the CPU it took
    /// when the machine is not busy).
    pub pow_cpu_s: f64,
    /// The generator could not solve challenges as fast as listeners arrived: `pow_queue_ms`
    /// p99 over [`POW_QUEUE_LIMIT`]. `join_ms` (and `ttfa_ms`) then measure the generator's
    /// queue; `join_net_ms` does not.
    pub pow_saturated: bool,
    /// |actual wait in line − the first `202`'s `eta_ms`|, ms.
    pub eta_error_ms: Percentiles,
    /// Mean of (actual wait − `eta_ms`), ms: positive when the server promised too little.
    pub eta_bias_ms: f64,
}

/// The `join` section, or `None` when no listener joined through the API.
pub fn report(s: &JoinStats) -> Option<JoinReport> {
    if s.joins == 0 {
        return None;
    }
    let p = |h: &Hist| {
        if h.count() == 0 {
            Percentiles::default()
        } else {
            h.summary_ms()
        }
    };
    let queued_admitted = s.queue_wait.count();
    Some(JoinReport {
        joins: s.joins,
        admitted: s.admitted,
        failed: s.failed,
        failures: s.failures.clone(),
        requests: s.requests,
        answers: s.answers.clone(),
        queued: s.queued,
        challenged: s.challenged,
        pow_solved: s.pow_solved,
        pow_max_difficulty: s.pow_max_difficulty,
        join_ms: p(&s.join),
        join_net_ms: p(&s.join_net),
        queue_wait_ms: p(&s.queue_wait),
        pow_ms: p(&s.pow),
        pow_queue_ms: p(&s.pow_wait),
        pow_cpu_s: s.pow_us_total as f64 / 1e6,
        pow_saturated: s.pow_wait.count() > 0
            && s.pow_wait.quantile(0.99) > POW_QUEUE_LIMIT.as_micros() as u64,
        eta_error_ms: p(&s.eta_error),
        eta_bias_ms: if queued_admitted > 0 {
            s.eta_bias_sum_ms / queued_admitted as f64
        } else {
            0.0
        },
    })
}

/// Wait for a free core to solve proof of work on (p99) beyond which `join_ms` measures the
/// generator rather than the server: the report then says so (`join.pow_saturated`).
pub const POW_QUEUE_LIMIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::join::JoinRecord;
    use crate::observe::measure::Failure;

    #[test]
    fn join_stats_add_up_latency_queueing_pow_and_eta_error() {
        let t0 = 1_000_000_000;
        let mut a = JoinStats::default();
        a.record(&JoinRecord {
            scheduled_us: t0,
            admitted_us: Some(t0 + 50_000),
            requests: 1,
            answers: [("200".into(), 1)].into(),
            ..JoinRecord::default()
        });
        // Queued at +10 ms with an ETA of 300 ms, admitted at +510 ms (200 ms late), after a
        // 20 ms challenge.
        a.record(&JoinRecord {
            scheduled_us: t0,
            admitted_us: Some(t0 + 510_000),
            requests: 4,
            answers: [("401".into(), 1), ("202".into(), 2), ("200".into(), 1)].into(),
            queued: true,
            challenged: true,
            pow_solved: 1,
            pow_us: 20_000,
            pow_wait_us: 100_000,
            max_difficulty: 12,
            first_queued: Some((t0 + 10_000, 300)),
            ..JoinRecord::default()
        });
        let mut b = JoinStats::default();
        b.record(&JoinRecord {
            scheduled_us: t0,
            requests: 3,
            answers: [("429".into(), 3)].into(),
            failure: Some(Failure::Timeout("join")),
            ..JoinRecord::default()
        });
        let b: JoinStats = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b);
        let r = report(&a).unwrap();
        assert_eq!((r.joins, r.admitted, r.failed), (3, 2, 1));
        assert_eq!(r.failures["timeout_join"], 1);
        assert_eq!(r.requests, 8);
        assert_eq!(r.answers["200"], 2);
        assert_eq!(r.answers["429"], 3);
        assert_eq!((r.queued, r.challenged, r.pow_solved), (1, 1, 1));
        assert_eq!(r.pow_max_difficulty, 12);
        assert!((r.join_ms.max - 510.0).abs() < 1.0, "{:?}", r.join_ms);
        assert!((r.queue_wait_ms.p50 - 500.0).abs() < 1.0);
        assert!((r.eta_error_ms.p50 - 200.0).abs() < 0.5);
        assert!((r.eta_bias_ms - 200.0).abs() < 1e-9);
        assert!((r.pow_ms.p50 - 20.0).abs() < 0.1);
        assert!((r.pow_queue_ms.p50 - 100.0).abs() < 0.1);
        assert!((r.pow_cpu_s - 0.02).abs() < 1e-9);
        assert!(!r.pow_saturated);
        // Two seconds waiting for a core: join_ms measures the generator, and says so.
        let mut q = JoinStats::default();
        q.record(&JoinRecord {
            scheduled_us: t0,
            admitted_us: Some(t0 + 2_100_000),
            challenged: true,
            pow_solved: 1,
            pow_us: 50_000,
            pow_wait_us: 2_000_000,
            ..JoinRecord::default()
        });
        let rq = report(&q).unwrap();
        assert!(rq.pow_saturated);
        assert!(
            (rq.join_net_ms.p50 - 100.0).abs() < 0.5,
            "{:?}",
            rq.join_net_ms
        );
        // Net of the wait for a core: 510 ms − 100 ms.
        assert!(
            (r.join_net_ms.max - 410.0).abs() < 1.0,
            "{:?}",
            r.join_net_ms
        );
        assert!(report(&JoinStats::default()).is_none());
    }
}
