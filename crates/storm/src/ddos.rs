//! The `ddos-during-broadcast` scenario: legitimate listeners join through the join API and
//! listen (measured, as in every storm run) while attackers hit the same space, or another one
//! (counted, not measured).
//!
//! Contract: [`run`] creates the space(s) it needs (with the `[attack] access` mode) and drives
//! a synthetic host on each, starts the attackers in their own process
//! ([`crate::attackers::spawn_agent`]) over the attack's window, runs the legitimate listeners
//! with [`crate::run::run`], then stops everything and returns a [`DdosReport`]: the usual
//! report (every figure of it is about the legitimate listeners only), plus `legit` (what the
//! legitimate listeners got, in one place) and `attack` (what the attackers got). Objectives
//! are judged on the whole of it, so `delivered_ratio > 0.999` and
//! `attack.total.refused > 0` both gate the exit code. Every wait is bounded by the run's
//! length plus fixed margins.

use crate::attack::{self, AttackReport, AttackResult, AttackTarget, Module, ModuleConfig};
use crate::attackers::{self, AttackPlan};
use crate::client::now_us;
use crate::hist::Percentiles;
use crate::host::{self, HostStats};
use crate::http::{self, Target};
use crate::joinapi::{self, JoinMode};
use crate::report::{evaluate, flatten, Objective, Report};
use crate::run::{self, Output};
use crate::scenario::{Kind, Scenario};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::watch;

/// Checks what only this scenario may use: attackers need `kind = "ddos-during-broadcast"`.
pub fn validate(sc: &Scenario) -> Result<(), String> {
    sc.attack.validate()?;
    if sc.kind != Kind::DdosDuringBroadcast && !sc.attack.active().is_empty() {
        return Err("attack: attackers run only in the ddos-during-broadcast scenario".into());
    }
    if sc.kind == Kind::DdosDuringBroadcast && sc.mount.is_some() {
        return Err("ddos-during-broadcast runs against levee's API, not a raw mount".into());
    }
    Ok(())
}

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

/// Creates a space with an access mode; returns (id, host key).
async fn create_space(
    target: &Target,
    title: &str,
    access: attack::Access,
) -> Result<(String, String), String> {
    let info = http::create_space(target, title, Some(access.label())).await?;
    let key = info.host_key.ok_or("no host key in answer")?;
    Ok((info.id, key))
}

/// Starts the attackers: in their own process, or on threads of this one if that process
/// cannot be started.
fn start_attack(
    plan: AttackPlan,
    exe: Option<&std::path::Path>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<AttackResult, String>> {
    let exe = exe
        .map(|p| p.to_path_buf())
        .or_else(|| std::env::current_exe().ok());
    if let Some(exe) = exe {
        match attackers::spawn_agent(&exe, &plan, stop.clone()) {
            Ok(h) => return h,
            Err(e) => eprintln!("storm: {e}; running the attackers in this process"),
        }
    }
    tokio::task::spawn_blocking(move || Ok(attackers::run_attack(&plan, stop)))
}

/// Runs the scenario. See the module docs.
pub async fn run(sc: Scenario, out: Output) -> Result<DdosReport, String> {
    sc.validate()?;
    if sc.kind != Kind::DdosDuringBroadcast {
        return Err("not a ddos-during-broadcast scenario".into());
    }
    let target = Target::parse(&sc.server)?;
    let objectives = if sc.objectives.is_empty() {
        run::DEFAULT_OBJECTIVES
            .iter()
            .map(|e| e.to_string())
            .collect()
    } else {
        sc.objectives.clone()
    }
    .iter()
    .map(|e| Objective::parse(e))
    .collect::<Result<Vec<_>, _>>()?;
    let a = sc.attack.clone();
    // The spaces: given, or created (each then with its own synthetic host).
    let mut created: Vec<(String, String)> = Vec::new();
    let listen = match &sc.space {
        Some(id) => {
            http::get_space(&target, id).await?;
            id.clone()
        }
        None => {
            let (id, key) = create_space(&target, &format!("storm {}", sc.name), a.access).await?;
            created.push((id.clone(), key));
            id
        }
    };
    let attacked = match (a.target, &a.space) {
        (AttackTarget::Same, _) => listen.clone(),
        (AttackTarget::Other, Some(id)) => {
            http::get_space(&target, id).await?;
            id.clone()
        }
        (AttackTarget::Other, None) => {
            let (id, key) = create_space(&target, "storm attack target", a.access).await?;
            created.push((id.clone(), key));
            id
        }
    };
    // run::run starts its schedule 1 s (2 s with agents) after it is called; the hosts and the
    // attackers are anchored the same way (a few ms apart at most).
    let procs = sc.procs.max(1);
    let anchor = now_us() + if procs > 1 { 2_000_000 } else { 1_000_000 };
    let run_len = sc.run_length();
    let host_end = anchor + run_len.as_micros() as u64 + 1_000_000;
    let (stop_tx, stop_rx) = watch::channel(false);
    let hosts: Vec<(String, tokio::task::JoinHandle<HostStats>)> = created
        .iter()
        .map(|(id, key)| {
            (
                id.clone(),
                tokio::spawn(host::run_host(
                    target.clone(),
                    id.clone(),
                    key.clone(),
                    sc.host.clone(),
                    anchor,
                    host_end,
                    stop_rx.clone(),
                )),
            )
        })
        .collect();
    let window = a.window(run_len);
    let attack_task = (!a.active().is_empty()).then(|| {
        let plan = AttackPlan {
            server: sc.server.clone(),
            space: attacked.clone(),
            start_us: anchor + window.0.as_micros() as u64,
            end_us: anchor + window.1.as_micros() as u64,
            config: a.clone(),
            seed: sc.seed ^ 0xA77A_C4ED,
        };
        start_attack(plan, out.exe.as_deref(), stop_rx.clone())
    });

    let mut legit_sc = sc.clone();
    legit_sc.space = Some(listen.clone());
    let legit = run::run(
        legit_sc,
        Output {
            json: None,
            html: None,
            quiet: out.quiet,
            exe: out.exe.clone(),
        },
    )
    .await;
    // The listeners are done: stop the attackers still holding connections and the hosts.
    let _ = stop_tx.send(true);
    let attack_result = match attack_task {
        Some(h) => Some(h.await.map_err(|e| e.to_string()).and_then(|r| r)),
        None => None,
    };
    let mut host_stats: BTreeMap<String, HostStats> = BTreeMap::new();
    for (id, h) in hosts {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), h).await {
            host_stats.insert(id, s);
        }
    }
    if sc.host.end_space {
        for (id, key) in &created {
            if let Err(e) = http::end_space(&target, id, key).await {
                eprintln!("storm: could not end space {id}: {e}");
            }
        }
    }
    let base = legit?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mut attack_report = attack::report(
        &a,
        &attacked,
        attacked == listen,
        window,
        attack_result.as_ref().and_then(|r| r.as_ref().ok()),
        cores,
    );
    let mut d = DdosReport {
        legit: legit_summary(&base, joinapi::mode(&sc)),
        base,
        attack_host: (attacked != listen)
            .then(|| host_stats.get(&attacked).cloned())
            .flatten(),
        attack: AttackReport::default(),
    };
    if let Some(h) = host_stats.get(&listen) {
        d.base.host = Some(h.clone());
        if let Some(e) = &h.error {
            d.base.valid = false;
            d.base
                .invalid_reasons
                .push(format!("synthetic host failed: {e}"));
        }
    }
    if let Some(Err(e)) = &attack_result {
        attack_report.error = Some(e.clone());
        d.base.valid = false;
        d.base
            .invalid_reasons
            .push(format!("the attackers did not report: {e}"));
    }
    if attack_report.total.local_failures > 0 {
        d.base.invalid_reasons.push(format!(
            "{} attack attempts failed on the generator's own limits (addresses, ports, descriptors)",
            attack_report.total.local_failures
        ));
        d.base.valid = false;
    }
    d.attack = attack_report;
    judge(&mut d, &objectives);
    if let Some(p) = &out.json {
        let text = serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    if let Some(p) = &out.html {
        std::fs::write(p, render_html(&d)).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    Ok(d)
}

/// The short human summary: the usual one, then the legitimate listeners against the
/// attackers.
pub fn summary_text(d: &DdosReport) -> String {
    let mut s = run::summary_text(&d.base);
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
            joinapi::POW_QUEUE_LIMIT
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
    let page = crate::html::render(&d.base);
    let section = html_section(d);
    let anchor = "<h2>What the listeners got</h2>";
    match page.find(anchor) {
        Some(at) => format!("{}{section}{}", &page[..at], &page[at..]),
        None => page.replacen("</body>", &format!("{section}</body>"), 1),
    }
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Command-line options of `levee storm ddos` (besides those every quick form has).
#[derive(Debug, Clone, clap::Args)]
pub struct DdosFlags {
    /// Legitimate listeners' joins spread over this much.
    #[arg(long, value_parser = parse_dur, default_value = "10s")]
    pub ramp: Duration,
    /// Access mode of the spaces the run creates.
    #[arg(long, default_value = "ticketed", value_parser = ["open", "ticketed", "challenge"])]
    pub access: String,
    /// Attack the listeners' space (same) or another one (other: the bulkhead case).
    #[arg(long, default_value = "same", value_parser = ["same", "other"])]
    pub attack_target: String,
    /// With --attack-target other: the space to attack (default: one the run creates).
    #[arg(long)]
    pub attack_space: Option<String>,
    /// Source addresses of the attackers (a CIDR inside 127.0.0.0/8).
    #[arg(long, default_value = "127.66.0.0/16")]
    pub attack_sources: String,
    /// When the attack starts, after the run's start.
    #[arg(long, value_parser = parse_dur, default_value = "0s")]
    pub attack_at: Duration,
    /// How long the attack lasts (default: until the run ends).
    #[arg(long, value_parser = parse_dur)]
    pub attack_for: Option<Duration>,
    /// Join-request flood, requests per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub join_flood: f64,
    /// Connection flood, connections per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub conn_flood: f64,
    /// Connection flood: hold each connection silently this long (0s: close at once).
    #[arg(long, value_parser = parse_dur, default_value = "0s")]
    pub conn_hold: Duration,
    /// Slowloris connections held at once (0: off).
    #[arg(long, default_value_t = 0)]
    pub slowloris: u32,
    /// Slow readers held at once (0: off).
    #[arg(long, default_value_t = 0)]
    pub slow_readers: u32,
    /// Stream requests with forged tickets per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub forged_tickets: f64,
    /// WebSocket connections sending garbage, per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub garbage_ws: f64,
    /// Workers of each rate-driven module (join flood, connection flood, forged tickets,
    /// garbage WebSocket): connections in flight at once.
    #[arg(long, default_value_t = 64)]
    pub attack_workers: u32,
}

impl DdosFlags {
    /// Applies the options to a scenario of kind `ddos-during-broadcast`.
    pub fn apply(&self, sc: &mut Scenario) {
        sc.ramp = self.ramp;
        let a = &mut sc.attack;
        a.access = match self.access.as_str() {
            "open" => attack::Access::Open,
            "challenge" => attack::Access::Challenge,
            _ => attack::Access::Ticketed,
        };
        a.target = if self.attack_target == "other" {
            AttackTarget::Other
        } else {
            AttackTarget::Same
        };
        a.space = self.attack_space.clone();
        a.sources = self.attack_sources.clone();
        a.at = self.attack_at;
        a.duration = self.attack_for;
        let w = self.attack_workers;
        for (m, rate) in [
            (Module::JoinFlood, self.join_flood),
            (Module::ConnFlood, self.conn_flood),
            (Module::ForgedTicket, self.forged_tickets),
            (Module::GarbageWs, self.garbage_ws),
        ] {
            if rate > 0.0 {
                *a.module_mut(m) = ModuleConfig::new(w, rate);
            }
        }
        if self.conn_flood > 0.0 && !self.conn_hold.is_zero() {
            a.conn_flood.hold = Some(self.conn_hold);
        }
        for (m, n) in [
            (Module::Slowloris, self.slowloris),
            (Module::SlowReader, self.slow_readers),
        ] {
            if n > 0 {
                // Open up to n connections a second until n are held.
                *a.module_mut(m) = ModuleConfig::new(n, n as f64);
            }
        }
    }
}

/// Runs the scenario on `rt`, prints the summary, writes the files; the exit code is that of
/// every storm run (see [`crate::cli`]).
pub fn main(rt: &tokio::runtime::Runtime, sc: Scenario, out: Output) -> ExitCode {
    let (json, html) = (out.json.clone(), out.html.clone());
    match rt.block_on(run(sc, out)) {
        Ok(d) => {
            print!("{}", summary_text(&d));
            if let Some(p) = &json {
                println!("json: {}", p.display());
            }
            if let Some(p) = &html {
                println!("html: {}", p.display());
            }
            ExitCode::from(crate::cli::exit_code(&d.base))
        }
        Err(e) => {
            eprintln!("levee storm: {e}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::{summarize, ModuleStats, Outcome};

    fn ddos_report() -> DdosReport {
        let mut base = Report {
            space: "listen".into(),
            delivered_ratio: 0.9995,
            valid: true,
            ..Report::default()
        };
        base.listeners.planned = 10;
        base.listeners.joined = 10;
        base.join = Some(crate::joinapi::JoinReport {
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
            jf.record(&crate::attack::Attempt {
                connected: true,
                ..crate::attack::Attempt::failed(Outcome::Status(429))
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

    #[test]
    fn command_line_modules_become_attack_tables() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            f: DdosFlags,
        }
        let t = T::parse_from([
            "t",
            "--join-flood",
            "2000",
            "--slowloris",
            "100",
            "--forged-tickets",
            "300",
            "--attack-target",
            "other",
            "--attack-workers",
            "32",
            "--conn-flood",
            "100",
            "--conn-hold",
            "4s",
        ]);
        let mut sc = Scenario::new(Kind::DdosDuringBroadcast, 100);
        t.f.apply(&mut sc);
        sc.validate().unwrap();
        assert_eq!(sc.attack.target, AttackTarget::Other);
        assert_eq!(sc.attack.join_flood, ModuleConfig::new(32, 2000.0));
        assert_eq!(sc.attack.slowloris.workers, 100);
        assert_eq!(sc.attack.conn_flood.hold, Some(Duration::from_secs(4)));
        assert_eq!(sc.attack.slow_reader.workers, 0);
        assert_eq!(
            sc.attack.active(),
            [
                Module::JoinFlood,
                Module::ConnFlood,
                Module::Slowloris,
                Module::ForgedTicket
            ]
        );
        assert_eq!(joinapi::mode(&sc), JoinMode::Api);
        // Attackers belong to this scenario only.
        let mut other = Scenario::new(Kind::Capacity, 100);
        other.attack = sc.attack.clone();
        assert!(other.validate().is_err());
    }

    #[test]
    fn the_shipped_scenario_parses_and_validates() {
        let sc = Scenario::from_toml(include_str!(
            "../../../scenarios/ddos-during-broadcast.toml"
        ))
        .unwrap();
        sc.validate().unwrap();
        assert_eq!(sc.kind, Kind::DdosDuringBroadcast);
        assert_eq!(joinapi::mode(&sc), JoinMode::Api);
        assert_eq!(sc.attack.active().len(), 6);
        for o in &sc.objectives {
            Objective::parse(o).unwrap();
        }
    }
}
