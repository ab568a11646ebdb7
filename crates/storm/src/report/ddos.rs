//! The `ddos-during-broadcast` report: the legitimate listeners' figures (measured) beside the
//! attackers' (counted), judged against the objectives, as text and HTML.

use crate::observe::hist::Percentiles;
use crate::observe::stats::HostStats;
use crate::plan::objective::evaluate;
use crate::plan::objective::flatten;
use crate::plan::objective::Objective;
use crate::plan::scenario::JoinMode;
use crate::report::attack::AttackReport;
use crate::report::Report;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What the legitimate listeners got, in one place (the same figures as the report's top
/// level, which are about them alone).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LegitSummary {
    /// Their space.
    pub space: String,
    /// How they joined: `api` or `direct`.
    pub join_mode: String,
    /// Listeners planned.
    pub planned: u64,
    /// Listeners that got audio.
    pub joined: u64,
    /// Listeners that never got audio.
    pub failed: u64,
    /// Sessions lost before their planned end.
    pub dropped: u64,
    /// `joined` as % of the listeners that ran.
    pub joined_pct: f64,
    /// Joins that got a ticket (join API).
    pub join_admitted: u64,
    /// Joins that waited in line.
    pub join_queued: u64,
    /// Joins asked for proof of work.
    pub join_challenged: u64,
    /// Join answers by status (join API).
    pub join_answers: BTreeMap<String, u64>,
    /// Scheduled time → ticket, ms (join API).
    pub join_ms: Percentiles,
    /// `join_ms` less the wait for a free generator core to solve proof of work on, ms.
    pub join_net_ms: Percentiles,
    /// Hardest proof of work met, bits.
    pub pow_max_difficulty: u64,
    /// The generator's proof-of-work queue made `join_ms` its own figure (see
    /// `join.pow_saturated`): read `join_net_ms`.
    pub pow_saturated: bool,
    /// Scheduled time → first audio, ms.
    pub ttfa_ms: Percentiles,
    /// Capture → arrival of every frame, ms.
    pub e2e_latency_ms: Percentiles,
    /// Audio received / (received + missing).
    pub delivered_ratio: f64,
    /// Gaps.
    pub gaps: u64,
    /// Missing audio, ms.
    pub gap_ms_total: f64,
    /// Each listener's longest gap, ms.
    pub worst_gap_ms: Percentiles,
    /// % of joined sessions with a stall.
    pub listeners_with_stall_pct: f64,
    /// Failed joins by reason.
    pub failures: BTreeMap<String, u64>,
    /// Dropped sessions by reason.
    pub drops: BTreeMap<String, u64>,
}

/// The report of a `ddos-during-broadcast` run: the usual report, flattened, plus `legit`,
/// `attack` and `attack_host`. See `docs/storm.md`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DdosReport {
    /// The usual report (about the legitimate listeners only).
    #[serde(flatten)]
    pub base: Report,
    /// What the legitimate listeners got.
    pub legit: LegitSummary,
    /// What the attackers got.
    pub attack: AttackReport,
    /// The synthetic host of the attacked space, when it is another space the run created.
    pub attack_host: Option<HostStats>,
}

/// The `legit` section, from the report of the legitimate listeners.
pub fn legit_summary(r: &Report, mode: JoinMode) -> LegitSummary {
    let j = r.join.clone().unwrap_or_default();
    LegitSummary {
        space: r.space.clone(),
        join_mode: match mode {
            JoinMode::Api => "api",
            JoinMode::Direct => "direct",
        }
        .into(),
        planned: r.listeners.planned,
        joined: r.listeners.joined,
        failed: r.listeners.failed,
        dropped: r.listeners.dropped,
        joined_pct: r.listeners.joined_pct,
        join_admitted: j.admitted,
        join_queued: j.queued,
        join_challenged: j.challenged,
        join_answers: j.answers,
        join_ms: j.join_ms,
        join_net_ms: j.join_net_ms,
        pow_max_difficulty: j.pow_max_difficulty,
        pow_saturated: j.pow_saturated,
        ttfa_ms: r.ttfa_ms,
        e2e_latency_ms: r.e2e_latency_ms,
        delivered_ratio: r.delivered_ratio,
        gaps: r.gaps,
        gap_ms_total: r.gap_ms_total,
        worst_gap_ms: r.worst_gap_ms,
        listeners_with_stall_pct: r.listeners_with_stall_pct,
        failures: r.failures.clone(),
        drops: r.drops.clone(),
    }
}

/// Judges `objectives` on the whole report (legitimate and attack figures) and sets
/// `passed`.
pub fn judge(d: &mut DdosReport, objectives: &[Objective]) {
    let fields = flatten(&serde_json::to_value(&*d).unwrap_or(serde_json::Value::Null));
    d.base.objectives = evaluate(objectives, &fields);
    d.base.passed = d.base.objectives.iter().all(|o| o.passed);
}

/// The short human summary: the usual one, then the legitimate listeners against the
/// attackers.
pub fn summary_text(d: &DdosReport) -> String {
    let mut s = crate::report::summary_text(&d.base);
    let l = &d.legit;
    let _ = writeln!(
        s,
        "legit: {}/{} listeners joined ({} join), {} waited in line, {} solved a challenge (up to {} bits); join ms p50 {:.1} p99 {:.1} max {:.1} (net of the generator's proof-of-work queue: p50 {:.1} p99 {:.1}); ttfa p99 {:.1} ms; delivered {:.5}, gaps {} ({:.0} ms)",
        l.joined,
        l.planned,
        l.join_mode,
        l.join_queued,
        l.join_challenged,
        l.pow_max_difficulty,
        l.join_ms.p50,
        l.join_ms.p99,
        l.join_ms.max,
        l.join_net_ms.p50,
        l.join_net_ms.p99,
        l.ttfa_ms.p99,
        l.delivered_ratio,
        l.gaps,
        l.gap_ms_total
    );
    if l.pow_saturated {
        let _ = writeln!(
            s,
            "legit: WARNING the generator could not solve proof of work as fast as the listeners arrived (join.pow_queue_ms p99 over {:?}): join_ms and ttfa_ms include that queue; join_net_ms does not",
            crate::report::join::POW_QUEUE_LIMIT
        );
    }
    let at = &d.attack;
    let t = &at.total;
    let _ = writeln!(
        s,
        "attack on space {} ({}) from {} ({} addresses), {:.0}–{:.0} s: {} attempts ({:.0}/s), {} refused {:?}, {} accepted, {} tickets, {} B received; attacker cpu {:.1} s ({:.1}% of the machine){}",
        at.target_space,
        if at.same_space { "the listeners' space" } else { "another space" },
        at.sources,
        at.addresses,
        at.from_s,
        at.to_s,
        t.attempts,
        t.rate,
        t.refused,
        t.refusals,
        t.accepted,
        t.tickets,
        t.bytes_received,
        at.cpu_s,
        at.cpu_pct,
        at.error.as_ref().map_or(String::new(), |e| format!(" — ERROR: {e}"))
    );
    for (name, m) in &at.modules {
        let _ = writeln!(
            s,
            "  {name:<14} attempts {:>7} ({:>6.0}/s) refused {:>7} accepted {:>6} still served {:>4} held p50 {:>7.0} ms | {:.1} µs cpu/attempt | {:?}",
            m.attempts, m.rate, m.refused, m.accepted, m.still_served, m.held_ms.p50, m.cpu_us_per_attempt, m.refusals
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn map_text(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{}: {v}", esc(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The HTML section that sets what the legitimate listeners got beside what the attackers got.
pub fn html_section(d: &DdosReport) -> String {
    let l = &d.legit;
    let a = &d.attack;
    let t = &a.total;
    let mut s = String::new();
    s.push_str("<h2>Legitimate listeners and attackers</h2><div class=\"grid\"><table>");
    let _ = write!(
        s,
        "<tr><th colspan=\"2\">legitimate listeners (measured), space <code>{}</code></th></tr>",
        esc(&l.space)
    );
    let rows: Vec<(&str, String)> = vec![
        ("joined / planned", format!("{} / {}", l.joined, l.planned)),
        ("failed, dropped", format!("{}, {}", l.failed, l.dropped)),
        ("join", l.join_mode.clone()),
        (
            "waited in line, solved a challenge",
            format!("{}, {}", l.join_queued, l.join_challenged),
        ),
        ("join answers", map_text(&l.join_answers)),
        (
            "join ms p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1}",
                l.join_ms.p50, l.join_ms.p99, l.join_ms.max
            ),
        ),
        (
            "join ms net of the proof-of-work queue, p50 / p99",
            format!("{:.1} / {:.1}", l.join_net_ms.p50, l.join_net_ms.p99),
        ),
        (
            "hardest proof of work, bits",
            if l.pow_saturated {
                format!(
                    "{} <span class=\"bad\">(the generator's proof-of-work queue saturated: read the net join time)</span>",
                    l.pow_max_difficulty
                )
            } else {
                l.pow_max_difficulty.to_string()
            },
        ),
        (
            "time to first audio ms p50 / p99",
            format!("{:.1} / {:.1}", l.ttfa_ms.p50, l.ttfa_ms.p99),
        ),
        (
            "end-to-end latency ms p50 / p99",
            format!("{:.1} / {:.1}", l.e2e_latency_ms.p50, l.e2e_latency_ms.p99),
        ),
        ("delivered ratio", format!("{:.6}", l.delivered_ratio)),
        (
            "gaps (total ms)",
            format!("{} ({:.0})", l.gaps, l.gap_ms_total),
        ),
        ("failures", map_text(&l.failures)),
    ];
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    s.push_str("</table><table>");
    let _ = write!(
        s,
        "<tr><th colspan=\"2\">attackers (counted), space <code>{}</code> ({})</th></tr>",
        esc(&a.target_space),
        if a.same_space {
            "the listeners' space"
        } else {
            "another space"
        }
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "sources",
            format!("{} ({} addresses)", esc(&a.sources), a.addresses),
        ),
        ("window, s", format!("{:.1} – {:.1}", a.from_s, a.to_s)),
        (
            "attempts (per second)",
            format!("{} ({:.0})", t.attempts, t.rate),
        ),
        ("refused", t.refused.to_string()),
        ("refusals by reason", map_text(&t.refusals)),
        ("accepted (what they asked for)", t.accepted.to_string()),
        ("tickets obtained", t.tickets.to_string()),
        ("answers by class", map_text(&t.status_classes)),
        ("bytes received", t.bytes_received.to_string()),
        (
            "attacker CPU",
            format!("{:.2} s ({:.1} % of the machine)", a.cpu_s, a.cpu_pct),
        ),
    ];
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    if let Some(e) = &a.error {
        let _ = write!(
            s,
            "<tr><th>error</th><td class=\"bad\">{}</td></tr>",
            esc(e)
        );
    }
    s.push_str("</table></div><h2>Attack modules</h2><table><tr><th>module</th><th>workers</th><th>attempts</th><th>per s</th><th>connected</th><th>refused</th><th>refusals by reason</th><th>accepted</th><th>tickets</th><th>statuses</th><th>close codes</th><th>bytes received</th><th>held ms p50 / max</th><th>CPU s</th><th>µs per attempt</th></tr>");
    for (name, m) in &a.modules {
        let _ = write!(
            s,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0} / {:.0}</td><td>{:.2}</td><td>{:.1}</td></tr>",
            esc(name),
            m.workers,
            m.attempts,
            m.rate,
            m.connected,
            m.refused,
            map_text(&m.refusals),
            m.accepted,
            m.tickets,
            map_text(&m.statuses),
            map_text(&m.close_codes),
            m.bytes_received,
            m.held_ms.p50,
            m.held_ms.max,
            m.cpu_s,
            m.cpu_us_per_attempt
        );
    }
    s.push_str("</table>");
    s
}

/// The HTML report: the usual one with the legitimate/attacker section before the
/// listeners' figures.
pub fn render_html(d: &DdosReport) -> String {
    let page = crate::report::html::render(&d.base);
    let section = html_section(d);
    let anchor = "<h2>What the listeners got</h2>";
    match page.find(anchor) {
        Some(at) => format!("{}{section}{}", &page[..at], &page[at..]),
        None => page.replacen("</body>", &format!("{section}</body>"), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::attack::ModuleStats;
    use crate::observe::attack::Outcome;
    use crate::report::attack::summarize;

    fn ddos_report() -> DdosReport {
        let mut base = Report {
            space: "listen".into(),
            delivered_ratio: 0.9995,
            valid: true,
            ..Report::default()
        };
        base.listeners.planned = 10;
        base.listeners.joined = 10;
        base.join = Some(crate::report::join::JoinReport {
            joins: 10,
            admitted: 10,
            queued: 3,
            ..Default::default()
        });
        let mut jf = ModuleStats {
            workers: 2,
            wall_s: 1.0,
            ..Default::default()
        };
        for _ in 0..50 {
            jf.record(&crate::observe::attack::Attempt {
                connected: true,
                ..crate::observe::attack::Attempt::failed(Outcome::Status(429))
            });
        }
        let mut d = DdosReport {
            legit: legit_summary(&base, JoinMode::Api),
            base,
            ..DdosReport::default()
        };
        d.attack.total = summarize(&jf);
        d.attack.modules.insert("join_flood".into(), summarize(&jf));
        d.attack.target_space = "listen".into();
        d.attack.same_space = true;
        d
    }

    #[test]
    fn the_report_keeps_legit_and_attack_figures_apart_and_judges_both() {
        let mut d = ddos_report();
        let objs: Vec<Objective> = [
            "delivered_ratio > 0.999",
            "legit.joined == 10",
            "attack.total.refused > 0",
            "attack.modules.join_flood.accepted == 0",
            "listeners.failed == 0",
        ]
        .iter()
        .map(|e| Objective::parse(e).unwrap())
        .collect();
        judge(&mut d, &objs);
        assert!(d.base.passed, "{:?}", d.base.objectives);
        let v = serde_json::to_value(&d).unwrap();
        // The usual report stays at the top level, about legitimate listeners only.
        assert_eq!(v["listeners"]["joined"], 10);
        assert_eq!(v["legit"]["join_queued"], 3);
        assert_eq!(v["attack"]["total"]["refusals"]["http_429"], 50);
        assert_eq!(v["attack"]["modules"]["join_flood"]["attempts"], 50);
        // And it reads back.
        let back: DdosReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.attack.total.attempts, 50);
        let objs = [Objective::parse("attack.total.accepted > 0").unwrap()];
        judge(&mut d, &objs);
        assert!(!d.base.passed);
    }

    #[test]
    fn the_html_report_shows_both_sides_escaped() {
        let mut d = ddos_report();
        d.attack.error = Some("<boom>".into());
        let page = render_html(&d);
        assert!(page.contains("Legitimate listeners and attackers"));
        assert!(page.contains("Attack modules"));
        assert!(page.contains("join_flood"));
        assert!(page.contains("&lt;boom&gt;"));
        assert!(!page.contains("<boom>"));
        let at = page.find("Legitimate listeners and attackers").unwrap();
        let listeners = page.find("What the listeners got").unwrap();
        assert!(at < listeners);
        assert!(!page.contains("src=\"http"), "no external resource");
    }
}
