//! The report's `attack` section: each module's counts turned into its entry
//! ([`summarize`], refusals sorted by reason) and the section as a whole ([`report`]).

use crate::observe::attack::AttackResult;
use crate::observe::attack::ModuleStats;
use crate::observe::hist::Percentiles;
use crate::plan::attack::AttackConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One module in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleSummary {
    /// Workers that ran.
    pub workers: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts per second over the module's wall time.
    pub rate: f64,
    /// Attempts whose TCP connection was established.
    pub connected: u64,
    /// Attempts the server refused or cut, all reasons together (sum of `refusals`).
    pub refused: u64,
    /// Refusals by reason: `http_<status>` (4xx and 5xx answers), `ws_close_<code>`,
    /// `refused_at_connect`, `closed_unanswered`, `reset`, `stream_cut`.
    pub refusals: BTreeMap<String, u64>,
    /// Attempts that got what they asked for (a ticket, a stream, an upgrade).
    pub accepted: u64,
    /// Tickets obtained from the join API by this module's attackers.
    pub tickets: u64,
    /// HTTP answers by status code.
    pub statuses: BTreeMap<String, u64>,
    /// HTTP answers by class (`1xx` … `5xx`).
    pub status_classes: BTreeMap<String, u64>,
    /// WebSocket close codes received.
    pub close_codes: BTreeMap<String, u64>,
    /// Connections refused at connect.
    pub refused_at_connect: u64,
    /// Connections reset by the server.
    pub resets: u64,
    /// Connections closed by the server without an answer.
    pub closed_unanswered: u64,
    /// Attempts still held by the server when their own bound expired.
    pub held_to_bound: u64,
    /// Slow reader: streams still served at the end of the hold.
    pub still_served: u64,
    /// Connects that took longer than their bound.
    pub connect_timeouts: u64,
    /// Failures on the attacker's own limits.
    pub local_failures: u64,
    /// Other errors.
    pub other_errors: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Connect → end of the connection, ms (holding modules).
    pub held_ms: Percentiles,
    /// CPU the module's thread spent, s.
    pub cpu_s: f64,
    /// CPU per attempt, µs.
    pub cpu_us_per_attempt: f64,
}

/// A module's report entry. See the module docs.
pub fn summarize(s: &ModuleStats) -> ModuleSummary {
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for (code, n) in &s.statuses {
        let class = code.chars().next().map_or("?".into(), |c| format!("{c}xx"));
        *classes.entry(class).or_default() += n;
        if code.starts_with('4') || code.starts_with('5') {
            *refusals.entry(format!("http_{code}")).or_default() += n;
        }
    }
    for (code, n) in &s.close_codes {
        *refusals.entry(format!("ws_close_{code}")).or_default() += n;
    }
    for (k, n) in [
        ("refused_at_connect", s.refused_at_connect),
        ("closed_unanswered", s.closed_unanswered),
        ("reset", s.resets),
        ("stream_cut", s.cut),
    ] {
        if n > 0 {
            refusals.insert(k.into(), n);
        }
    }
    let held_ms = match &s.held {
        Some(h) if h.count() > 0 => h.summary_ms(),
        _ => Percentiles::default(),
    };
    ModuleSummary {
        workers: s.workers,
        attempts: s.attempts,
        rate: if s.wall_s > 0.0 {
            s.attempts as f64 / s.wall_s
        } else {
            0.0
        },
        connected: s.connected,
        refused: refusals.values().sum(),
        refusals,
        accepted: s.accepted,
        tickets: s.tickets,
        statuses: s.statuses.clone(),
        status_classes: classes,
        close_codes: s.close_codes.clone(),
        refused_at_connect: s.refused_at_connect,
        resets: s.resets,
        closed_unanswered: s.closed_unanswered,
        held_to_bound: s.held_to_bound,
        still_served: s.still_served,
        connect_timeouts: s.connect_timeouts,
        local_failures: s.local_failures,
        other_errors: s.other_errors,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        held_ms,
        cpu_s: s.cpu_s,
        cpu_us_per_attempt: if s.attempts > 0 {
            s.cpu_s * 1e6 / s.attempts as f64
        } else {
            0.0
        },
    }
}

/// The report's `attack` section: what the attackers got, counted not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// The space attacked.
    pub target_space: String,
    /// Whether it is the legitimate listeners' space.
    pub same_space: bool,
    /// Source CIDR of the attackers.
    pub sources: String,
    /// Source addresses used.
    pub addresses: u64,
    /// Attack window, s after the run's start.
    pub from_s: f64,
    /// End of the attack window, s after the run's start.
    pub to_s: f64,
    /// All modules together.
    pub total: ModuleSummary,
    /// Per module, keyed by its name.
    pub modules: BTreeMap<String, ModuleSummary>,
    /// CPU of the attack process, s.
    pub cpu_s: f64,
    /// CPU of the attack process, % of the machine over the attack window.
    pub cpu_pct: f64,
    /// Peak resident memory of the attack process, MiB.
    pub rss_peak_mb: f64,
    /// Why the attack process failed, if it did.
    pub error: Option<String>,
}

/// Builds the `attack` section from the attack process's result.
pub fn report(
    cfg: &AttackConfig,
    target_space: &str,
    same_space: bool,
    window: (Duration, Duration),
    result: Option<&AttackResult>,
    cores: u32,
) -> AttackReport {
    let mut total = ModuleStats::default();
    let mut modules = BTreeMap::new();
    if let Some(r) = result {
        for (name, s) in &r.modules {
            total.merge(s);
            modules.insert(name.clone(), summarize(s));
        }
    }
    let mut t = summarize(&total);
    // Modules ran side by side: the total's rate is the sum of theirs.
    t.rate = modules.values().map(|m| m.rate).sum();
    let wall = result.map_or(0.0, |r| r.wall_s).max(1e-9);
    AttackReport {
        target_space: target_space.to_owned(),
        same_space,
        sources: cfg.sources.clone(),
        addresses: result.map_or(0, |r| r.addresses),
        from_s: window.0.as_secs_f64(),
        to_s: window.1.as_secs_f64(),
        total: t,
        modules,
        cpu_s: result.map_or(0.0, |r| r.cpu_s),
        cpu_pct: result.map_or(0.0, |r| r.cpu_s * 100.0 / wall / cores.max(1) as f64),
        rss_peak_mb: result.map_or(0.0, |r| r.rss_peak_kb as f64 / 1024.0),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::attack::Attempt;
    use crate::observe::attack::Outcome;

    fn attempt(outcome: Outcome) -> Attempt {
        Attempt {
            connected: !matches!(outcome, Outcome::Refused | Outcome::ConnectTimeout),
            ..Attempt::failed(outcome)
        }
    }

    #[test]
    fn the_attack_section_adds_modules_and_survives_json() {
        let mut js = ModuleStats {
            workers: 4,
            wall_s: 10.0,
            cpu_s: 1.0,
            ..Default::default()
        };
        for _ in 0..100 {
            js.record(&attempt(Outcome::Status(429)));
        }
        let mut sl = ModuleStats {
            workers: 10,
            wall_s: 10.0,
            cpu_s: 0.1,
            ..Default::default()
        };
        for _ in 0..10 {
            sl.record(&Attempt {
                held_us: Some(5_000_000),
                ..attempt(Outcome::Status(408))
            });
        }
        let res = AttackResult {
            modules: [("join_flood".into(), js), ("slowloris".into(), sl)].into(),
            addresses: 254,
            cpu_s: 1.2,
            wall_s: 10.0,
            rss_peak_kb: 10_240,
        };
        // Through JSON, as from the attack process.
        let res: AttackResult =
            serde_json::from_str(&serde_json::to_string(&res).unwrap()).unwrap();
        let cfg = AttackConfig::default();
        let w = (Duration::from_secs(1), Duration::from_secs(11));
        let r = report(&cfg, "sp", true, w, Some(&res), 2);
        assert_eq!(r.total.attempts, 110);
        assert_eq!(r.total.refusals["http_429"], 100);
        assert_eq!(r.total.refusals["http_408"], 10);
        assert!((r.total.rate - 11.0).abs() < 1e-9);
        assert!((r.modules["slowloris"].held_ms.p50 - 5000.0).abs() < 5.0);
        assert!((r.cpu_pct - 6.0).abs() < 1e-9);
        assert_eq!(r.rss_peak_mb, 10.0);
        assert_eq!((r.from_s, r.to_s), (1.0, 11.0));
        let none = report(&cfg, "sp", true, w, None, 2);
        assert_eq!(none.total.attempts, 0);
    }

    #[test]
    fn attempts_add_up_into_refusals_by_reason_and_status_class() {
        let mut a = ModuleStats::default();
        let mut b = ModuleStats::default();
        for o in [
            Outcome::Status(429),
            Outcome::Status(429),
            Outcome::Status(200),
            Outcome::Status(503),
            Outcome::Close(1002),
            Outcome::Unanswered,
            Outcome::Reset,
        ] {
            a.record(&Attempt {
                bytes_received: 10,
                ..attempt(o)
            });
        }
        for o in [
            Outcome::Refused,
            Outcome::Cut,
            Outcome::StillServed,
            Outcome::Held,
        ] {
            b.record(&Attempt {
                held_us: Some(2_000_000),
                ..attempt(o)
            });
        }
        a.cpu_s = 0.5;
        b.cpu_s = 0.25;
        a.wall_s = 10.0;
        b.wall_s = 8.0;
        a.merge(&b);
        let s = summarize(&a);
        assert_eq!(s.attempts, 11);
        assert_eq!(s.connected, 10);
        assert_eq!(s.bytes_received, 70);
        assert_eq!(s.statuses["429"], 2);
        assert_eq!(s.status_classes["2xx"], 1);
        assert_eq!(s.status_classes["4xx"], 2);
        assert_eq!(s.status_classes["5xx"], 1);
        let want: BTreeMap<String, u64> = [
            ("http_429", 2),
            ("http_503", 1),
            ("ws_close_1002", 1),
            ("closed_unanswered", 1),
            ("reset", 1),
            ("refused_at_connect", 1),
            ("stream_cut", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(s.refusals, want);
        assert_eq!(s.refused, 8);
        assert_eq!((s.still_served, s.held_to_bound), (1, 1));
        assert_eq!(s.held_ms.count, 4);
        assert!((s.cpu_s - 0.75).abs() < 1e-9);
        assert!((s.rate - 1.1).abs() < 1e-9);
        assert!((s.cpu_us_per_attempt - 0.75e6 / 11.0).abs() < 1e-6);
    }
}
