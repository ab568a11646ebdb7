//! The server's audience numbers held against what the run did (`docs/audience.md`,
//! `docs/storm.md` "Audience check"), as pure code: each figure the server serves is given
//! the range the run's own accounting allows, widened by the server's stated error bound when
//! its count is an estimate.

use crate::observe::attack::AttackResult;
use crate::observe::stats::AudienceTally;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One figure: what the server served and the range the run allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The figure, as the audience API names it.
    pub figure: String,
    /// What the server served.
    pub served: f64,
    /// Lowest value the run allows.
    pub low: f64,
    /// Highest value the run allows.
    pub high: f64,
    /// `low <= served <= high`.
    pub ok: bool,
    /// Where the range comes from.
    pub why: String,
}

/// The `audience` section of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudienceReport {
    /// The server's view rule, s.
    pub view_after_s: Option<f64>,
    /// Whether the server's views and uniques were exact (else estimates within
    /// `error_bound`).
    pub exact: bool,
    /// The bound applied to estimates (0 when exact).
    pub error_bound: f64,
    /// What the run's stream listeners did.
    pub did: Did,
    /// What the server served (`GET /api/spaces/{id}/audience`, after the run).
    pub served: Value,
    /// Every figure checked.
    pub checks: Vec<Check>,
    /// Every check held.
    pub passed: bool,
}

/// What the run knows of its own stream listeners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Did {
    /// Identities, views, sessions and listen time.
    #[serde(flatten)]
    pub tally: AudienceTally,
    /// Stream attempts that failed before audio (the server may have admitted them).
    pub failed_sessions: u64,
    /// Listeners that never got audio.
    pub failed_listeners: u64,
    /// Most listeners with audio at once, as the run's timeline saw it (per second).
    pub peak_seen: u64,
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(f64::NAN)
}

fn check(figure: &str, served: f64, low: f64, high: f64, why: String) -> Check {
    let tenth = |x: f64| (x * 10.0).round() / 10.0;
    let (low, high) = (
        tenth(low),
        if high.is_finite() { tenth(high) } else { high },
    );
    Check {
        figure: figure.to_owned(),
        served,
        low,
        high,
        // NaN (the figure missing) fails.
        ok: served >= low && served <= high,
        why,
    }
}

/// Holds `served` (the server's `GET /api/spaces/{id}/audience`, taken after the run) against
/// `did` (what the listeners did) and, when the run attacked the same space, `attack`.
pub fn judge(served: Value, did: Did, attack: Option<&AttackResult>) -> AudienceReport {
    let served = &served;
    let t = &did.tally;
    let peak_seen = did.peak_seen;
    let exact = served["exact"].as_bool().unwrap_or(false);
    let bound = if exact {
        0.0
    } else {
        served["error_bound"].as_f64().unwrap_or(0.025)
    };
    let (lo, hi) = (1.0 - bound, 1.0 + bound);
    let view_after_s = served["view_after_s"].as_f64();
    let module = |name: &str| attack.and_then(|a| a.modules.get(name));
    let status = |name: &str, code: &str| {
        module(name)
            .and_then(|m| m.statuses.get(code))
            .copied()
            .unwrap_or(0) as f64
    };
    // Attackers that opened streams the server admitted (they are sessions there, filtered).
    let accepted = |name: &str| module(name).map_or(0.0, |m| m.accepted as f64);
    let garbage_ws = accepted("garbage_ws");
    let attack_streams = accepted("slow_reader") + garbage_ws;
    let failed_streams = did.failed_sessions as f64;
    let mut checks = vec![
        check(
            "sessions",
            num(served, &["sessions"]),
            t.sessions as f64,
            t.sessions as f64 + failed_streams + attack_streams,
            format!(
                "{} sessions got audio; up to {failed_streams} more were admitted but failed before audio, {attack_streams} attackers' streams were answered",
                t.sessions
            ),
        ),
        check(
            "uniques",
            num(served, &["uniques"]),
            (t.identities as f64 * lo).floor(),
            ((t.identities + did.failed_listeners) as f64 * hi).ceil() + garbage_ws,
            format!(
                "{} listeners (one address each) got audio; {} never did; {garbage_ws} garbage WebSocket listeners were upgraded",
                t.identities, did.failed_listeners
            ),
        ),
        check(
            "views",
            num(served, &["views"]),
            (t.viewers_sure as f64 * lo).floor(),
            (t.viewers_maybe as f64 * hi).ceil(),
            format!(
                "{} listeners listened past the view rule by a margin, {} came within it",
                t.viewers_sure, t.viewers_maybe
            ),
        ),
        check(
            "peak.listeners",
            num(served, &["peak", "listeners"]),
            (peak_seen as f64 * 0.98 - 2.0).max(0.0),
            num(served, &["sessions"]),
            format!("{peak_seen} listeners had audio at once in one second of the run's timeline"),
        ),
        check(
            "listen_time_s",
            num(served, &["listen_time_s"]),
            t.listen_us as f64 / 1e6 * 0.9 - 1.0,
            t.listen_us as f64 / 1e6 * 1.1 + 1.0 + 60.0 * failed_streams,
            format!(
                "the listeners' sessions lasted {:.1} s from first audio to their end",
                t.listen_us as f64 / 1e6
            ),
        ),
    ];
    // Attackers' streams are filtered: slow readers held long enough to be found out (a
    // median hold past the view rule and the grace of `docs/audience.md`), garbage WebSocket
    // listeners closed for what they sent.
    let slow = module("slow_reader").map_or(0.0, |m| {
        let held_s = m
            .held
            .as_ref()
            .map_or(0.0, |h| h.quantile(0.5) as f64 / 1e6);
        let found_out = view_after_s.is_some_and(|v| held_s >= v + 2.0);
        if found_out {
            m.accepted as f64
        } else {
            0.0
        }
    });
    // Garbage WebSocket listeners are filtered when what they sent was broken; random bytes
    // now and then make a valid frame, and such a one is a (short) listener.
    let garbage = accepted("garbage_ws");
    if slow + garbage > 0.0 {
        checks.push(check(
            "filtered.sessions",
            num(served, &["filtered", "sessions"]),
            slow,
            attack_streams + failed_streams,
            format!(
                "{slow} slow readers that never read held their streams past the view rule; {garbage} garbage WebSocket listeners were upgraded"
            ),
        ));
    }
    let forged = status("forged_ticket", "403");
    if forged > 0.0 {
        checks.push(check(
            "filtered.refused_automated",
            num(served, &["filtered", "refused_automated"]),
            forged,
            f64::INFINITY,
            format!("{forged} stream requests with forged tickets were answered 403 (join floods add forged tokens)"),
        ));
    }
    let passed = checks.iter().all(|c| c.ok);
    AudienceReport {
        view_after_s,
        exact,
        error_bound: bound,
        did,
        served: served.clone(),
        checks,
        passed,
    }
}

/// The report's text lines for the audience check.
pub fn text(a: &AudienceReport) -> String {
    let mut out = format!(
        "audience check: {} (views and uniques {}; a view is {} s)\n",
        if a.passed { "PASS" } else { "FAIL" },
        if a.exact {
            "exact".to_owned()
        } else {
            format!("estimates within {:.1} %", a.error_bound * 100.0)
        },
        a.view_after_s.map_or("?".into(), |v| v.to_string())
    );
    for c in &a.checks {
        out += &format!(
            "  {} {}: served {} (run allows {}..{}): {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.figure,
            c.served,
            c.low,
            if c.high.is_finite() {
                c.high.to_string()
            } else {
                "∞".into()
            },
            c.why
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn did(peak_seen: u64) -> Did {
        Did {
            tally: AudienceTally {
                identities: 100,
                viewers_sure: 80,
                viewers_maybe: 82,
                sessions: 100,
                listen_us: 1_000_000_000,
            },
            failed_sessions: 5,
            failed_listeners: 2,
            peak_seen,
        }
    }

    fn served(views: u64, uniques: u64, exact: bool) -> Value {
        json!({
            "exact": exact, "error_bound": if exact { 0.0 } else { 0.025 },
            "view_after_s": 10.0, "views": views, "uniques": uniques, "sessions": 101,
            "peak": { "listeners": 99 }, "listen_time_s": 1010.0,
            "filtered": { "never_read": 0, "refused_automated": 0 },
        })
    }

    #[test]
    fn matching_numbers_pass_and_each_mismatch_fails_its_own_check() {
        let r = judge(served(81, 100, true), did(100), None);
        assert!(r.passed, "{}", text(&r));
        // Exact counts leave no slack: one view too many or one unique too few fails.
        let r = judge(served(83, 100, true), did(100), None);
        assert!(!r.passed);
        assert_eq!(
            r.checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.figure.as_str())
                .collect::<Vec<_>>(),
            ["views"]
        );
        let r = judge(served(81, 99, true), did(100), None);
        assert!(!r.checks.iter().find(|c| c.figure == "uniques").unwrap().ok);
        // Estimates get the stated bound.
        let r = judge(served(83, 99, false), did(100), None);
        assert!(r.passed, "{}", text(&r));
        // A peak far under what the run saw fails.
        let r = judge(served(81, 100, true), did(150), None);
        assert!(
            !r.checks
                .iter()
                .find(|c| c.figure == "peak.listeners")
                .unwrap()
                .ok
        );
        // A missing figure fails.
        let mut s = served(81, 100, true);
        s["views"] = Value::Null;
        assert!(!judge(s.clone(), did(100), None).passed);
        assert!(text(&judge(s, did(100), None)).contains("FAIL views"));
    }
}
